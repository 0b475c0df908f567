//! den on AWS Lambda.
//!
//! A Lambda function with a custom runtime is a process that asks the
//! [Runtime API](runtime) for one invocation at a time and posts back its
//! answer. This crate holds that client, the loop that drives a [`Handler`],
//! and the two event shapes den answers: HTTP requests from an API Gateway
//! HTTP API or a function URL ([`http`]) and SQS batches from an event source
//! mapping ([`sqs`]). What den does with them lives in the `den` binary.

pub mod http;
pub mod runtime;
pub mod sqs;

use std::future::Future;

pub use runtime::{ErrorReport, Invocation, RuntimeClient, RuntimeError};

/// Answers invocations.
pub trait Handler: Send + Sync {
    /// The response body for `invocation`, or an error Lambda records as the
    /// invocation's failure.
    fn handle(&self, invocation: &Invocation) -> impl Future<Output = Result<Vec<u8>, ErrorReport>> + Send;
}

/// Answers invocations one at a time until the Runtime API stops answering
/// (Lambda freezes the process between invocations and ends it when it
/// retires the execution environment, so this normally never returns).
pub async fn serve(client: &RuntimeClient, handler: &impl Handler) -> Result<(), RuntimeError> {
    loop {
        let invocation = client.next().await?;
        let trace_id = invocation.trace_id.as_deref().unwrap_or_default();
        let span = tracing::info_span!("invocation", request_id = %invocation.request_id, trace_id);
        let answer = tracing::Instrument::instrument(handler.handle(&invocation), span.clone()).await;
        match answer {
            Ok(body) => client.respond(&invocation.request_id, body).await?,
            Err(report) => {
                tracing::warn!(parent: &span, error_type = %report.error_type, error = %report.message, "invocation failed");
                client.fail(&invocation.request_id, &report).await?;
            }
        }
    }
}
