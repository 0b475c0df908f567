use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use den_core::Job;
use den_ops::{JobOutcome, Metrics};
use den_storage::{Delivery, MAX_BATCH, Queue, QueueSpec, ReceiveOptions, StoreErrorKind};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{Backoff, JobContext, JobError, JobErrorKind, JobHandler};

/// The handlers of a pool, by job kind.
#[derive(Clone, Default)]
pub struct Handlers {
    by_kind: HashMap<String, Arc<dyn JobHandler>>,
}

impl std::fmt::Debug for Handlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.by_kind.keys()).finish()
    }
}

impl Handlers {
    /// No handlers.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `handler` for jobs of `kind`, replacing any earlier one.
    #[must_use]
    pub fn with(mut self, kind: impl Into<String>, handler: Arc<dyn JobHandler>) -> Self {
        self.by_kind.insert(kind.into(), handler);
        self
    }

    /// The kinds handled.
    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.by_kind.keys().map(String::as_str)
    }
}

/// How a pool runs.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Most jobs running at once.
    pub concurrency: usize,
    /// Longest a job may run before it counts as failed.
    pub job_timeout: Duration,
    /// Longest wait of one long poll.
    pub poll_wait: Duration,
    /// Retry delays.
    pub backoff: Backoff,
    /// On shutdown, how long in-flight jobs may take to finish before they
    /// are stopped and released to the queue.
    pub grace: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 16,
            job_timeout: Duration::from_secs(120),
            poll_wait: Duration::from_secs(20),
            backoff: Backoff::default(),
            grace: Duration::from_secs(20),
        }
    }
}

/// Claims jobs from one queue and runs them.
#[derive(Debug)]
pub struct WorkerPool {
    queue: Arc<dyn Queue>,
    spec: QueueSpec,
    handlers: Handlers,
    metrics: Metrics,
    config: WorkerConfig,
}

struct Shared {
    runner: JobRunner,
    queue: Arc<dyn Queue>,
    job_timeout: Duration,
    /// Fired when the grace period is over: running jobs stop and are released.
    stop_now: CancellationToken,
}

impl WorkerPool {
    /// A pool working the queue declared by `spec` (which must exist).
    pub fn new(
        queue: Arc<dyn Queue>,
        spec: QueueSpec,
        handlers: Handlers,
        metrics: Metrics,
        config: WorkerConfig,
    ) -> Self {
        Self { queue, spec, handlers, metrics, config }
    }

    /// Runs until `shutdown` is cancelled, then stops claiming, lets running
    /// jobs finish within the grace period, and releases the rest (they
    /// become visible again at once).
    pub async fn run(self, shutdown: CancellationToken) {
        let config = self.config.clone();
        let concurrency = config.concurrency.max(1);
        let permits = Arc::new(Semaphore::new(concurrency));
        let runner = JobRunner::new(self.queue.clone(), self.spec, self.handlers, self.metrics, config.backoff);
        let shared = Arc::new(Shared {
            runner,
            queue: self.queue,
            job_timeout: config.job_timeout,
            stop_now: CancellationToken::new(),
        });
        let name = shared.runner.spec().name.clone();
        // The lease must outlast the job's timeout, so a running job is never
        // handed to a second worker.
        let visibility = config.job_timeout + Duration::from_secs(30);
        let mut running = JoinSet::new();
        tracing::info!(queue = %name, concurrency, "worker pool started");
        loop {
            while running.try_join_next().is_some() {}
            let first = tokio::select! {
                permit = permits.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => break },
                () = shutdown.cancelled() => break,
            };
            let room = (1 + permits.available_permits()).min(MAX_BATCH);
            let options =
                ReceiveOptions { max_messages: room, wait: config.poll_wait, visibility_timeout: Some(visibility) };
            let received = tokio::select! {
                r = shared.queue.receive(&name, options) => r,
                () = shutdown.cancelled() => break,
            };
            let deliveries = match received {
                Ok(d) => d,
                Err(e) if e.kind() == StoreErrorKind::Closed => break,
                Err(e) => {
                    tracing::warn!(queue = %name, error = %e, "receive failed; retrying in 1 s");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        () = shutdown.cancelled() => break,
                    }
                }
            };
            let mut first = Some(first);
            for delivery in deliveries {
                let permit = match first.take() {
                    Some(p) => p,
                    None => match permits.clone().try_acquire_owned() {
                        Ok(p) => p,
                        // Cannot happen (only this loop takes permits), but never drop a delivery:
                        // wait for room instead.
                        Err(_) => match permits.clone().acquire_owned().await {
                            Ok(p) => p,
                            Err(_) => break,
                        },
                    },
                };
                let shared = shared.clone();
                running.spawn(async move {
                    shared.runner.run(delivery, shared.job_timeout, &shared.stop_now).await;
                    drop(permit);
                });
            }
        }

        tracing::info!(queue = %name, in_flight = running.len(), "worker pool stopping");
        let finished = tokio::time::timeout(config.grace, async { while running.join_next().await.is_some() {} }).await;
        if finished.is_err() {
            tracing::warn!(queue = %name, left = running.len(), "grace period over; releasing unfinished jobs");
            shared.stop_now.cancel();
            while running.join_next().await.is_some() {}
        }
        tracing::info!(queue = %name, "worker pool stopped");
    }
}

/// What became of one delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The job succeeded and is acked.
    Done,
    /// The job succeeded but its ack failed: it may run again.
    DoneNotAcked,
    /// The job failed and returns after the backoff delay.
    Retrying(Duration),
    /// The job failed for good (or ran out of attempts) and is in the DLQ.
    DeadLettered,
    /// The job was stopped unfinished and handed back to the queue.
    Released,
    /// The queue would not take the job's result (ack, retry or dead-letter
    /// failed): it returns when its lease ends.
    Unsettled,
}

impl Outcome {
    /// Whether the message is still in its queue, to be delivered again.
    #[must_use]
    pub fn comes_back(self) -> bool {
        !matches!(self, Outcome::Done | Outcome::DeadLettered)
    }
}

/// Runs single deliveries with the handlers of one queue: what a pool does
/// with each message it receives, and what a serverless worker does with
/// each message handed to it.
#[derive(Clone, Debug)]
pub struct JobRunner {
    queue: Arc<dyn Queue>,
    spec: QueueSpec,
    handlers: Handlers,
    metrics: Metrics,
    backoff: Backoff,
}

impl JobRunner {
    /// A runner for deliveries of the queue declared by `spec`.
    pub fn new(queue: Arc<dyn Queue>, spec: QueueSpec, handlers: Handlers, metrics: Metrics, backoff: Backoff) -> Self {
        Self { queue, spec, handlers, metrics, backoff }
    }

    /// The queue's declaration.
    #[must_use]
    pub fn spec(&self) -> &QueueSpec {
        &self.spec
    }

    /// Runs `delivery` for at most `limit` (longer counts as a failure worth
    /// retrying), then acks, retries or dead-letters it. When `stop` fires
    /// first, the job is dropped where it is and released to the queue.
    pub async fn run(&self, delivery: Delivery, limit: Duration, stop: &CancellationToken) -> Outcome {
        let queue = &self.spec.name;
        let job = match serde_json::from_str::<Job>(&delivery.body) {
            Ok(mut job) => {
                job.attempt = delivery.receive_count;
                job
            }
            Err(e) => {
                tracing::error!(%queue, message_id = %delivery.message_id, error = %e, "malformed job; dead-lettering it");
                return self.dead_letter(&delivery, "malformed").await;
            }
        };
        let span =
            tracing::info_span!("job", id = %job.id, kind = %job.kind, trace_id = %job.trace_id, attempt = job.attempt);
        self.run_job(&job, &delivery, limit, stop).instrument(span).await
    }

    async fn run_job(&self, job: &Job, delivery: &Delivery, limit: Duration, stop: &CancellationToken) -> Outcome {
        let queue = &self.spec.name;
        self.metrics.job_received(queue, &job.kind);
        let Some(handler) = self.handlers.by_kind.get(&job.kind) else {
            tracing::error!("no handler for this job kind; dead-lettering it");
            return self.dead_letter(delivery, &job.kind).await;
        };
        let cx = JobContext { cancelled: stop.clone() };
        let start = Instant::now();
        let result = tokio::select! {
            r = tokio::time::timeout(limit, handler.run(job, &cx)) => r,
            () = stop.cancelled() => {
                // Stopped before it finished: hand the job back untouched.
                if let Err(e) = self.queue.change_visibility(queue, &delivery.receipt, Duration::ZERO).await {
                    tracing::warn!(error = %e, "could not release the job; it returns when its lease ends");
                }
                return Outcome::Released;
            }
        };
        let elapsed = start.elapsed();
        let error = match result {
            Ok(Ok(())) => {
                self.metrics.job_finished(queue, &job.kind, JobOutcome::Succeeded, elapsed);
                return match self.queue.ack(queue, &delivery.receipt).await {
                    Ok(()) => {
                        tracing::debug!(elapsed_ms = elapsed.as_secs_f64() * 1000.0, "job done");
                        Outcome::Done
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "job done but its ack failed; it may run again");
                        Outcome::DoneNotAcked
                    }
                };
            }
            Ok(Err(e)) => e,
            Err(_) => JobError::retry(format!("timed out after {limit:?}")),
        };
        let last_attempt =
            self.spec.dead_letter.as_ref().is_some_and(|d| delivery.receive_count >= d.max_receive_count);
        if error.kind() == JobErrorKind::Permanent || last_attempt {
            tracing::error!(error = %error, permanent = error.kind() == JobErrorKind::Permanent, "job failed; dead-lettering it");
            return match self.queue.dead_letter(queue, &delivery.receipt).await {
                Ok(()) => {
                    self.metrics.job_finished(queue, &job.kind, JobOutcome::DeadLettered, elapsed);
                    Outcome::DeadLettered
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not dead-letter the job");
                    Outcome::Unsettled
                }
            };
        }
        let delay = self.backoff.delay(delivery.receive_count);
        tracing::warn!(error = %error, retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), "job failed; will retry");
        self.metrics.job_finished(queue, &job.kind, JobOutcome::Failed, elapsed);
        match self.queue.change_visibility(queue, &delivery.receipt, delay).await {
            Ok(()) => Outcome::Retrying(delay),
            Err(e) => {
                tracing::warn!(error = %e, "could not schedule the retry; it returns when its lease ends");
                Outcome::Unsettled
            }
        }
    }

    async fn dead_letter(&self, delivery: &Delivery, kind: &str) -> Outcome {
        match self.queue.dead_letter(&self.spec.name, &delivery.receipt).await {
            Ok(()) => {
                self.metrics.job_dead_lettered(&self.spec.name, kind);
                Outcome::DeadLettered
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not dead-letter the message");
                Outcome::Unsettled
            }
        }
    }
}
