//! A client of the Lambda Runtime API (version 2018-06-01).
//!
//! `GET /runtime/invocation/next` blocks until an event arrives and carries
//! its request id, deadline, function ARN and trace id in headers; the answer
//! goes to `POST /runtime/invocation/{id}/response` or `.../error`; a process
//! that cannot start posts to `/runtime/init/error` and exits.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// The environment variable holding the Runtime API's `host:port`.
pub const RUNTIME_API_ENV: &str = "AWS_LAMBDA_RUNTIME_API";
const VERSION: &str = "2018-06-01";

/// One event to answer.
#[derive(Clone, Debug)]
pub struct Invocation {
    /// `Lambda-Runtime-Aws-Request-Id`.
    pub request_id: String,
    /// `Lambda-Runtime-Deadline-Ms`: when Lambda stops the invocation.
    pub deadline: SystemTime,
    /// `Lambda-Runtime-Invoked-Function-Arn`.
    pub function_arn: String,
    /// `Lambda-Runtime-Trace-Id`, when tracing is on.
    pub trace_id: Option<String>,
    /// The event.
    pub body: Vec<u8>,
}

impl Invocation {
    /// Time left before the deadline (zero once past it).
    #[must_use]
    pub fn remaining(&self) -> Duration {
        self.deadline.duration_since(SystemTime::now()).unwrap_or_default()
    }
}

/// A failure as Lambda records it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ErrorReport {
    /// A short category (`Runtime.InvalidEvent`, `den.Init`...).
    #[serde(rename = "errorType")]
    pub error_type: String,
    /// What went wrong, in one line.
    #[serde(rename = "errorMessage")]
    pub message: String,
}

impl ErrorReport {
    /// A report of `error_type` saying `message`.
    pub fn new(error_type: impl Into<String>, message: impl Into<String>) -> Self {
        Self { error_type: error_type.into(), message: message.into() }
    }
}

/// Why the Runtime API could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// `AWS_LAMBDA_RUNTIME_API` is not set: this process is not in Lambda.
    #[error("AWS_LAMBDA_RUNTIME_API is not set: `den lambda` runs inside AWS Lambda (or a runtime emulator)")]
    NotInLambda,
    /// The Runtime API did not answer.
    #[error("the Lambda Runtime API did not answer {call}")]
    Unreachable {
        /// The call.
        call: &'static str,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The Runtime API answered with an unexpected status or headers.
    #[error("the Lambda Runtime API refused {call}: {detail}")]
    Refused {
        /// The call.
        call: &'static str,
        /// Its status or the missing header.
        detail: String,
    },
}

/// Talks to the Runtime API of the execution environment.
#[derive(Clone, Debug)]
pub struct RuntimeClient {
    base: String,
    http: reqwest::Client,
}

impl RuntimeClient {
    /// A client of the Runtime API at `host_port` (`AWS_LAMBDA_RUNTIME_API`).
    #[must_use]
    pub fn new(host_port: &str) -> Self {
        // `next` blocks for as long as the function is idle: no timeout.
        let http = reqwest::Client::builder().tcp_nodelay(true).build().unwrap_or_default();
        Self { base: format!("http://{host_port}/{VERSION}/runtime"), http }
    }

    /// A client of the Runtime API named by the process environment.
    pub fn from_env(env: &[(String, String)]) -> Result<Self, RuntimeError> {
        let api = env.iter().find(|(k, _)| k == RUNTIME_API_ENV).map(|(_, v)| v.as_str());
        api.filter(|v| !v.is_empty()).map(Self::new).ok_or(RuntimeError::NotInLambda)
    }

    /// Waits for the next invocation.
    pub async fn next(&self) -> Result<Invocation, RuntimeError> {
        const CALL: &str = "GET /runtime/invocation/next";
        let unreachable = |source| RuntimeError::Unreachable { call: CALL, source };
        let response = self.http.get(format!("{}/invocation/next", self.base)).send().await.map_err(unreachable)?;
        if !response.status().is_success() {
            return Err(RuntimeError::Refused { call: CALL, detail: response.status().to_string() });
        }
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let missing = |name: &str| RuntimeError::Refused { call: CALL, detail: format!("no {name} header") };
        let request_id =
            header("lambda-runtime-aws-request-id").ok_or_else(|| missing("Lambda-Runtime-Aws-Request-Id"))?;
        let deadline_ms: u64 = header("lambda-runtime-deadline-ms")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| missing("Lambda-Runtime-Deadline-Ms"))?;
        let function_arn = header("lambda-runtime-invoked-function-arn").unwrap_or_default();
        let trace_id = header("lambda-runtime-trace-id");
        let body = response.bytes().await.map_err(unreachable)?.to_vec();
        Ok(Invocation {
            request_id,
            deadline: UNIX_EPOCH + Duration::from_millis(deadline_ms),
            function_arn,
            trace_id,
            body,
        })
    }

    /// Posts the answer to invocation `request_id`.
    pub async fn respond(&self, request_id: &str, body: Vec<u8>) -> Result<(), RuntimeError> {
        let url = format!("{}/invocation/{request_id}/response", self.base);
        self.post("POST /runtime/invocation/{id}/response", &url, body, None).await
    }

    /// Reports invocation `request_id` as failed.
    pub async fn fail(&self, request_id: &str, report: &ErrorReport) -> Result<(), RuntimeError> {
        let url = format!("{}/invocation/{request_id}/error", self.base);
        let body = serde_json::to_vec(report).unwrap_or_default();
        self.post("POST /runtime/invocation/{id}/error", &url, body, Some(&report.error_type)).await
    }

    /// Reports that the function could not start (the process then exits).
    pub async fn init_failed(&self, report: &ErrorReport) -> Result<(), RuntimeError> {
        let url = format!("{}/init/error", self.base);
        let body = serde_json::to_vec(report).unwrap_or_default();
        self.post("POST /runtime/init/error", &url, body, Some(&report.error_type)).await
    }

    async fn post(
        &self,
        call: &'static str,
        url: &str,
        body: Vec<u8>,
        error_type: Option<&str>,
    ) -> Result<(), RuntimeError> {
        let mut request = self.http.post(url).body(body);
        if let Some(kind) = error_type {
            request = request.header("Lambda-Runtime-Function-Error-Type", kind);
        }
        let response = request.send().await.map_err(|source| RuntimeError::Unreachable { call, source })?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(RuntimeError::Refused { call, detail: response.status().to_string() })
        }
    }
}
