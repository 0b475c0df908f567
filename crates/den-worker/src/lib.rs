//! den's worker runtime.
//!
//! A [`WorkerPool`] claims jobs from one queue in batches, runs each with the
//! [`JobHandler`] registered for its kind under a timeout and a concurrency
//! limit, acks it on success, retries it with exponential backoff and jitter
//! on failure, and dead-letters it when retrying cannot help. [`JobQueue`] is
//! the sending side.

mod backoff;
mod pool;
mod sender;

use async_trait::async_trait;
use den_core::Job;
use tokio_util::sync::CancellationToken;

pub use backoff::Backoff;
pub use pool::{Handlers, JobRunner, Outcome, WorkerConfig, WorkerPool};
pub use sender::JobQueue;

/// Runs jobs of one kind.
#[async_trait]
pub trait JobHandler: Send + Sync {
    /// Runs `job`. It may run more than once (at-least-once delivery), so its
    /// side effects must be idempotent.
    async fn run(&self, job: &Job, cx: &JobContext) -> Result<(), JobError>;
}

/// What a handler may ask of the runtime while it runs.
#[derive(Clone, Debug)]
pub struct JobContext {
    /// Cancelled when the process is shutting down and the grace period has
    /// run out; long handlers may check it to stop early.
    pub cancelled: CancellationToken,
}

/// Whether a failed job may succeed if tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum JobErrorKind {
    /// A passing failure (a timeout, a 5xx, a 429): retry with backoff.
    Retry,
    /// A failure no retry can fix (bad input): dead-letter now.
    Permanent,
}

/// A job's failure.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct JobError {
    kind: JobErrorKind,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl JobError {
    /// A failure worth retrying.
    pub fn retry(message: impl Into<String>) -> Self {
        Self { kind: JobErrorKind::Retry, message: message.into(), source: None }
    }

    /// A failure that retrying cannot fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self { kind: JobErrorKind::Permanent, message: message.into(), source: None }
    }

    /// Attaches the underlying error.
    #[must_use]
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Whether to retry.
    #[must_use]
    pub fn kind(&self) -> JobErrorKind {
        self.kind
    }
}
