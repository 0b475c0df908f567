//! A fake AWS Lambda service for one function: the Runtime API a custom
//! runtime polls (version 2018-06-01: `invocation/next` with the request-id,
//! deadline, function ARN and trace headers; `invocation/{id}/response`,
//! `invocation/{id}/error`, `init/error`), a function URL in front of it,
//! and the events Lambda builds (HTTP API and function-URL requests in
//! payload format 2.0, SQS batches).
//!
//! Like Lambda, it hands out one invocation per `next` call and times an
//! invocation from the moment it is handed out. Unlike Lambda, it cannot
//! stop the process when the deadline passes: the invocation is recorded
//! as [`Outcome::TimedOut`], and a later answer to it is refused.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::{Notify, oneshot};

const API: &str = "/2018-06-01/runtime";

/// How an invocation ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The function answered with this body.
    Response(Vec<u8>),
    /// The function reported an error.
    Error {
        /// `Lambda-Runtime-Function-Error-Type`.
        error_type: String,
        /// The error document.
        body: Value,
    },
    /// No answer came before the deadline.
    TimedOut,
    /// No runtime asked for the invocation in time.
    NotTaken,
}

impl Outcome {
    /// The response body as JSON.
    ///
    /// # Panics
    /// When the invocation did not end in a JSON response (a test failure).
    #[must_use]
    pub fn json(&self) -> Value {
        match self {
            Outcome::Response(body) => serde_json::from_slice(body).expect("the function answered JSON"),
            other => panic!("the invocation ended in {other:?}, not a response"),
        }
    }
}

struct Pending {
    event: Vec<u8>,
    timeout: Duration,
    reply: oneshot::Sender<Outcome>,
}

struct Shared {
    pending: Mutex<VecDeque<Pending>>,
    arrived: Notify,
    in_flight: Mutex<HashMap<String, (oneshot::Sender<Outcome>, std::time::Instant)>>,
    /// How long each answered invocation took, from hand-out to answer (what Lambda bills).
    durations: Mutex<Vec<Duration>>,
    init_error: Mutex<Option<(String, Value)>>,
    next_id: AtomicU64,
    handed_out: AtomicU64,
    /// Bumped when the function's process ends: a `next` still waiting from it must take nothing.
    process: AtomicU64,
    function_arn: String,
    url_timeout: Mutex<Duration>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One function's Lambda service, on 127.0.0.1.
pub struct FakeLambda {
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeLambda {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeLambda {
    /// Starts the service of function `name`.
    pub async fn start(name: &str) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(VecDeque::new()),
            arrived: Notify::new(),
            in_flight: Mutex::new(HashMap::new()),
            durations: Mutex::new(Vec::new()),
            init_error: Mutex::new(None),
            next_id: AtomicU64::new(1),
            handed_out: AtomicU64::new(0),
            process: AtomicU64::new(0),
            function_arn: format!("arn:aws:lambda:us-east-1:123456789012:function:{name}"),
            url_timeout: Mutex::new(Duration::from_secs(3)),
        });
        let app = Router::new()
            .route(&format!("{API}/invocation/next"), get(next))
            .route(&format!("{API}/invocation/{{id}}/response"), post(response))
            .route(&format!("{API}/invocation/{{id}}/error"), post(error))
            .route(&format!("{API}/init/error"), post(init_error))
            .fallback(function_url)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, shared, task })
    }

    /// The value of `AWS_LAMBDA_RUNTIME_API` for the function's process.
    #[must_use]
    pub fn runtime_api(&self) -> String {
        self.addr.to_string()
    }

    /// The function's URL: a request to any path under it becomes a
    /// function-URL event, and the function's answer the HTTP response.
    #[must_use]
    pub fn function_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The function's timeout for requests through its URL (3 s by default).
    pub fn set_url_timeout(&self, timeout: Duration) {
        *lock(&self.shared.url_timeout) = timeout;
    }

    /// Invokes the function with `event`, allowing it `timeout` once a
    /// runtime takes the event; waits up to 30 s for a runtime to take it.
    pub async fn invoke(&self, event: &Value, timeout: Duration) -> Outcome {
        invoke(&self.shared, event.to_string().into_bytes(), timeout).await
    }

    /// What the process reported through `init/error`: the error type and document.
    #[must_use]
    pub fn init_error(&self) -> Option<(String, Value)> {
        lock(&self.shared.init_error).clone()
    }

    /// How long each answered invocation took, from the runtime taking it to
    /// its answer (what Lambda bills), in the order they were answered; cleared.
    pub fn take_durations(&self) -> Vec<Duration> {
        std::mem::take(&mut *lock(&self.shared.durations))
    }

    /// Says the function's process ended (a test killed it): a request for
    /// the next invocation it left waiting takes nothing, so the next event
    /// goes to the next process, as Lambda would hand it.
    pub fn process_ended(&self) {
        self.shared.process.fetch_add(1, Ordering::SeqCst);
        self.shared.arrived.notify_waiters();
    }

    /// How many invocations runtimes have taken.
    #[must_use]
    pub fn handed_out(&self) -> u64 {
        self.shared.handed_out.load(Ordering::SeqCst)
    }
}

async fn invoke(shared: &Arc<Shared>, event: Vec<u8>, timeout: Duration) -> Outcome {
    let (reply, answer) = oneshot::channel();
    lock(&shared.pending).push_back(Pending { event, timeout, reply });
    shared.arrived.notify_one();
    // Taken within 30 s, then the function's own timeout: the answer always comes by then.
    match tokio::time::timeout(Duration::from_secs(30) + timeout, answer).await {
        Ok(Ok(outcome)) => outcome,
        _ => Outcome::NotTaken,
    }
}

async fn next(State(shared): State<Arc<Shared>>) -> Response {
    let process = shared.process.load(Ordering::SeqCst);
    let pending = loop {
        let notified = shared.arrived.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if shared.process.load(Ordering::SeqCst) != process {
            return StatusCode::GONE.into_response();
        }
        if let Some(p) = lock(&shared.pending).pop_front() {
            break p;
        }
        notified.await;
    };
    let id = format!("req-{:06}", shared.next_id.fetch_add(1, Ordering::SeqCst));
    let deadline = SystemTime::now() + pending.timeout;
    let deadline_ms = deadline.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
    lock(&shared.in_flight).insert(id.clone(), (pending.reply, std::time::Instant::now()));
    shared.handed_out.fetch_add(1, Ordering::SeqCst);
    let timer = shared.clone();
    let timed = id.clone();
    tokio::spawn(async move {
        tokio::time::sleep(pending.timeout).await;
        if let Some((reply, _)) = lock(&timer.in_flight).remove(&timed) {
            let _ = reply.send(Outcome::TimedOut);
        }
    });
    let headers = [
        ("lambda-runtime-aws-request-id", id.clone()),
        ("lambda-runtime-deadline-ms", deadline_ms.to_string()),
        ("lambda-runtime-invoked-function-arn", shared.function_arn.clone()),
        ("lambda-runtime-trace-id", format!("Root=1-00000000-{id};Sampled=0")),
        ("content-type", "application/json".to_owned()),
    ];
    let mut response = pending.event.into_response();
    for (name, value) in headers {
        if let Ok(v) = value.parse() {
            response.headers_mut().insert(name, v);
        }
    }
    response
}

fn invalid_request_id() -> Response {
    let body = json!({"errorMessage": "Invalid request ID", "errorType": "InvalidRequestID"});
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

fn accepted() -> Response {
    (StatusCode::ACCEPTED, axum::Json(json!({"status": "OK"}))).into_response()
}

/// Takes invocation `id` off the in-flight list, recording how long it took.
fn answered(shared: &Shared, id: &str) -> Option<oneshot::Sender<Outcome>> {
    let (reply, handed_out) = lock(&shared.in_flight).remove(id)?;
    lock(&shared.durations).push(handed_out.elapsed());
    Some(reply)
}

async fn response(State(shared): State<Arc<Shared>>, Path(id): Path<String>, body: Bytes) -> Response {
    let Some(reply) = answered(&shared, &id) else { return invalid_request_id() };
    let _ = reply.send(Outcome::Response(body.to_vec()));
    accepted()
}

fn error_of(headers: &HeaderMap, body: &Bytes) -> (String, Value) {
    let kind = headers.get("lambda-runtime-function-error-type").and_then(|v| v.to_str().ok()).unwrap_or("Unhandled");
    (kind.to_owned(), serde_json::from_slice(body).unwrap_or(Value::Null))
}

async fn error(State(shared): State<Arc<Shared>>, Path(id): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(reply) = answered(&shared, &id) else { return invalid_request_id() };
    let (error_type, body) = error_of(&headers, &body);
    let _ = reply.send(Outcome::Error { error_type, body });
    accepted()
}

async fn init_error(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    *lock(&shared.init_error) = Some(error_of(&headers, &body));
    accepted()
}

/// A request through the function URL: an event in, the function's answer out.
async fn function_url(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let pairs: Vec<(String, String)> =
        headers.iter().filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned()))).collect();
    let event = url_event(method.as_str(), uri.path(), &pairs, &body);
    let timeout = *lock(&shared.url_timeout);
    match invoke(&shared, event.to_string().into_bytes(), timeout).await {
        Outcome::Response(bytes) => http_response(&bytes),
        // What a function URL answers when its function fails.
        _ => (StatusCode::BAD_GATEWAY, axum::Json(json!({"Message": "Internal Server Error"}))).into_response(),
    }
}

/// A function URL's rules for the function's answer: an object with
/// `statusCode` is a full response; anything else is a 200 JSON body.
fn http_response(bytes: &[u8]) -> Response {
    let Ok(Value::Object(answer)) = serde_json::from_slice::<Value>(bytes) else {
        return ([("content-type", "application/json")], bytes.to_vec()).into_response();
    };
    let Some(status) = answer.get("statusCode").and_then(Value::as_u64) else {
        return ([("content-type", "application/json")], bytes.to_vec()).into_response();
    };
    let text = answer.get("body").and_then(Value::as_str).unwrap_or_default();
    let body = if answer.get("isBase64Encoded").and_then(Value::as_bool) == Some(true) {
        base64::engine::general_purpose::STANDARD.decode(text).unwrap_or_default()
    } else {
        text.as_bytes().to_vec()
    };
    let mut response = body.into_response();
    *response.status_mut() =
        StatusCode::from_u16(u16::try_from(status).unwrap_or(500)).unwrap_or(StatusCode::BAD_GATEWAY);
    if let Some(Value::Object(headers)) = answer.get("headers") {
        for (name, value) in headers {
            if let (Ok(n), Some(Ok(v))) = (name.parse::<axum::http::HeaderName>(), value.as_str().map(str::parse)) {
                response.headers_mut().insert(n, v);
            }
        }
    }
    response
}

fn now_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()
}

/// Headers as payload format 2.0 carries them: lower-case names, repeated ones joined by commas.
fn header_map(headers: &[(String, String)]) -> serde_json::Map<String, Value> {
    let mut map = serde_json::Map::new();
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        let joined = match map.get(&name).and_then(Value::as_str) {
            Some(earlier) => format!("{earlier},{value}"),
            None => value.clone(),
        };
        map.insert(name, Value::String(joined));
    }
    map
}

fn body_fields(body: &[u8]) -> (Value, bool) {
    match std::str::from_utf8(body) {
        Ok(text) => (Value::String(text.to_owned()), false),
        Err(_) => (Value::String(base64::engine::general_purpose::STANDARD.encode(body)), true),
    }
}

/// Where a payload format 2.0 event came from.
struct Front {
    account: &'static str,
    api: &'static str,
    domain: &'static str,
    route: String,
}

fn http_event(front: &Front, method: &str, path: &str, headers: &[(String, String)], body: &[u8]) -> Value {
    let (body, is_base64) = body_fields(body);
    json!({
        "version": "2.0",
        "routeKey": front.route,
        "rawPath": path,
        "rawQueryString": "",
        "headers": header_map(headers),
        "requestContext": {
            "accountId": front.account,
            "apiId": front.api,
            "domainName": front.domain,
            "domainPrefix": front.api,
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "Discord-Interactions/1.0"},
            "requestId": format!("{}-{}", front.api, now_ms()),
            "routeKey": front.route,
            "stage": "$default",
            "time": "04/Dec/2026:12:00:00 +0000",
            "timeEpoch": now_ms(),
        },
        "body": body,
        "isBase64Encoded": is_base64,
    })
}

/// A function-URL request event (payload format 2.0).
#[must_use]
pub fn url_event(method: &str, path: &str, headers: &[(String, String)], body: &[u8]) -> Value {
    let front = Front {
        account: "anonymous",
        api: "den0url0id",
        domain: "den0url0id.lambda-url.us-east-1.on.aws",
        route: "$default".into(),
    };
    http_event(&front, method, path, headers, body)
}

/// An API Gateway HTTP API request event (payload format 2.0) for the route `method path`.
#[must_use]
pub fn http_api_event(method: &str, path: &str, headers: &[(String, String)], body: &[u8]) -> Value {
    let front = Front {
        account: "123456789012",
        api: "den0api",
        domain: "den0api.execute-api.us-east-1.amazonaws.com",
        route: format!("{method} {path}"),
    };
    http_event(&front, method, path, headers, body)
}

/// One SQS message as an event source mapping hands it to a function.
#[derive(Clone, Debug)]
pub struct SqsMessage {
    /// SQS's message id.
    pub message_id: String,
    /// The receipt handle of this receive.
    pub receipt_handle: String,
    /// The body.
    pub body: String,
    /// String message attributes.
    pub attributes: Vec<(String, String)>,
    /// How many times SQS has handed it out.
    pub receive_count: u32,
}

/// An SQS batch event of `messages` from the queue `queue_name`.
#[must_use]
pub fn sqs_event(queue_name: &str, messages: &[SqsMessage]) -> Value {
    let records: Vec<Value> = messages
        .iter()
        .map(|m| {
            let attributes: serde_json::Map<String, Value> = m
                .attributes
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        json!({"stringValue": v, "stringListValues": [], "binaryListValues": [], "dataType": "String"}),
                    )
                })
                .collect();
            json!({
                "messageId": m.message_id,
                "receiptHandle": m.receipt_handle,
                "body": m.body,
                "attributes": {
                    "ApproximateReceiveCount": m.receive_count.to_string(),
                    "SentTimestamp": now_ms().to_string(),
                    "SenderId": "AIDAIENQZJOLO23YVJ4VO",
                    "ApproximateFirstReceiveTimestamp": now_ms().to_string(),
                },
                "messageAttributes": attributes,
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": format!("arn:aws:sqs:us-east-1:123456789012:{queue_name}"),
                "awsRegion": "us-east-1",
            })
        })
        .collect();
    json!({"Records": records})
}

/// Lambda's SQS event source mapping for one queue, worked by hand: it
/// receives as the mapping does, invokes the function with the batch and,
/// when the function answers, deletes every record the answer does not name
/// in `batchItemFailures`.
#[cfg(feature = "aws")]
#[derive(Clone, Debug)]
pub struct EventSource {
    sqs: aws_sdk_sqs::Client,
    url: String,
    name: String,
}

#[cfg(feature = "aws")]
impl EventSource {
    /// The mapping of the SQS queue named `queue_name`.
    ///
    /// # Panics
    /// When the queue does not exist (a test's setup is wrong).
    pub async fn new(sqs: aws_sdk_sqs::Client, queue_name: &str) -> Self {
        let url = sqs.get_queue_url().queue_name(queue_name).send().await.expect("the queue exists").queue_url;
        Self { sqs, url: url.unwrap_or_default(), name: queue_name.to_owned() }
    }

    /// Receives up to `want` messages, waiting up to `within` for them all.
    ///
    /// # Panics
    /// When SQS refuses (a test failure).
    pub async fn receive(&self, want: usize, within: Duration) -> Vec<SqsMessage> {
        let deadline = tokio::time::Instant::now() + within;
        let mut got = Vec::new();
        while got.len() < want && tokio::time::Instant::now() < deadline {
            let out = self
                .sqs
                .receive_message()
                .queue_url(&self.url)
                .max_number_of_messages(i32::try_from((want - got.len()).min(10)).unwrap_or(10))
                .wait_time_seconds(1)
                .message_attribute_names("All")
                .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount)
                .send()
                .await
                .expect("SQS answers a receive");
            got.extend(out.messages().iter().map(|m| {
                SqsMessage {
                    message_id: m.message_id().unwrap_or_default().to_owned(),
                    receipt_handle: m.receipt_handle().unwrap_or_default().to_owned(),
                    body: m.body().unwrap_or_default().to_owned(),
                    attributes: m
                        .message_attributes()
                        .into_iter()
                        .flatten()
                        .filter_map(|(k, v)| Some((k.clone(), v.string_value()?.to_owned())))
                        .collect(),
                    receive_count: m
                        .attributes()
                        .and_then(|a| a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount))
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(1),
                }
            }));
        }
        got
    }

    /// Invokes `function` with `batch` (allowing it `timeout`) and deletes
    /// what its answer does not name; returns the outcome and the names.
    /// A function that fails or times out has every record come back.
    pub async fn deliver(
        &self,
        function: &FakeLambda,
        batch: &[SqsMessage],
        timeout: Duration,
    ) -> (Outcome, Vec<String>) {
        let outcome = function.invoke(&sqs_event(&self.name, batch), timeout).await;
        let every = || batch.iter().map(|m| m.message_id.clone()).collect();
        let Outcome::Response(body) = &outcome else { return (outcome, every()) };
        let failed: Vec<String> = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|answer| answer["batchItemFailures"].as_array().cloned())
            .map(|items| items.iter().filter_map(|f| f["itemIdentifier"].as_str().map(str::to_owned)).collect())
            .unwrap_or_else(every);
        let done: Vec<&SqsMessage> = batch.iter().filter(|m| !failed.contains(&m.message_id)).collect();
        self.delete(done).await;
        (outcome, failed)
    }

    /// Deletes `messages` from the queue, as the mapping does with records that succeeded.
    ///
    /// # Panics
    /// When SQS refuses (a test failure).
    pub async fn delete<'a>(&self, messages: impl IntoIterator<Item = &'a SqsMessage>) {
        for m in messages {
            self.sqs
                .delete_message()
                .queue_url(&self.url)
                .receipt_handle(&m.receipt_handle)
                .send()
                .await
                .expect("SQS deletes");
        }
    }
}
