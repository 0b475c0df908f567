use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use den_storage::{MessageEvent, Queue, StoreObserver};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::ScrapeHook;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    queue: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DepthLabels {
    queue: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    target: &'static str,
    op: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// How a job ended, for the job counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobOutcome {
    /// The handler succeeded and the job was acked.
    Succeeded,
    /// The handler failed; the job will be retried.
    Failed,
    /// The job was moved to the dead-letter queue.
    DeadLettered,
}

/// Every metric den exports, registered in one registry.
///
/// Cheap to clone; clones share the same series.
#[derive(Clone)]
pub struct Metrics {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    registry: Registry,
    heartbeat: Gauge<f64, std::sync::atomic::AtomicU64>,
    jobs_sent: Family<JobLabels, Counter>,
    jobs_received: Family<JobLabels, Counter>,
    jobs_succeeded: Family<JobLabels, Counter>,
    jobs_failed: Family<JobLabels, Counter>,
    jobs_dead_lettered: Family<JobLabels, Counter>,
    job_duration: HistogramFamily<JobLabels>,
    queue_messages: Family<DepthLabels, Gauge>,
    queue_events: Family<QueueEventLabels, Counter>,
    store_duration: HistogramFamily<OpLabels>,
    store_errors: Family<OpLabels, Counter>,
    llm_ttft: HistogramFamily<ProviderLabels>,
    llm_duration: HistogramFamily<ProviderLabels>,
    llm_tokens: Family<TokenLabels, Counter>,
    llm_errors: Family<LlmErrorLabels, Counter>,
    llm_breaker: Family<ProviderLabels, Gauge>,
    agent_events: Family<KindLabels, Counter>,
    agent_tool_calls: Family<OutcomeLabels, Counter>,
    agent_tokens: Counter,
    pub(crate) music: crate::music::MusicFamilies,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    provider: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LlmErrorLabels {
    provider: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueEventLabels {
    queue: String,
    event: &'static str,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn job_buckets() -> Histogram {
    // 1 ms to ~65 s: jobs range from a no-op to a long model call.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

fn store_buckets() -> Histogram {
    // 50 µs to ~0.8 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 15))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every den metric, all at zero.
    #[must_use]
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("den");
        let heartbeat = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "heartbeat_timestamp_seconds",
            "Unix time of the last heartbeat; stale by more than two intervals means the process is stuck",
            heartbeat.clone(),
        );
        let jobs_sent = Family::<JobLabels, Counter>::default();
        registry.register("jobs_sent", "Jobs enqueued, by queue and kind", jobs_sent.clone());
        let jobs_received = Family::<JobLabels, Counter>::default();
        registry.register("jobs_received", "Jobs delivered to a worker, by queue and kind", jobs_received.clone());
        let jobs_succeeded = Family::<JobLabels, Counter>::default();
        registry.register("jobs_succeeded", "Jobs whose handler succeeded", jobs_succeeded.clone());
        let jobs_failed = Family::<JobLabels, Counter>::default();
        registry.register("jobs_failed", "Job runs that failed or timed out (each retry counts)", jobs_failed.clone());
        let jobs_dead_lettered = Family::<JobLabels, Counter>::default();
        registry.register("jobs_dead_lettered", "Jobs moved to the dead-letter queue", jobs_dead_lettered.clone());
        let job_duration: HistogramFamily<JobLabels> = Family::new_with_constructor(job_buckets);
        registry.register("job_duration_seconds", "Time a handler took to run a job", job_duration.clone());
        let queue_messages = Family::<DepthLabels, Gauge>::default();
        registry.register(
            "queue_messages",
            "Approximate messages held per queue (DLQs included) and state",
            queue_messages.clone(),
        );
        let queue_events = Family::<QueueEventLabels, Counter>::default();
        registry.register(
            "queue_message_events",
            "Queue messages sent, received, acked, dead-lettered",
            queue_events.clone(),
        );
        let store_duration: HistogramFamily<OpLabels> = Family::new_with_constructor(store_buckets);
        registry.register(
            "store_operation_duration_seconds",
            "Latency of table and queue calls",
            store_duration.clone(),
        );
        let store_errors = Family::<OpLabels, Counter>::default();
        registry.register("store_operation_errors", "Table and queue calls that failed", store_errors.clone());
        let llm_ttft: HistogramFamily<ProviderLabels> = Family::new_with_constructor(job_buckets);
        registry.register(
            "llm_time_to_first_token_seconds",
            "Time from a model call to its first token",
            llm_ttft.clone(),
        );
        let llm_duration: HistogramFamily<ProviderLabels> = Family::new_with_constructor(job_buckets);
        registry.register(
            "llm_request_duration_seconds",
            "Time from a model call to its last token",
            llm_duration.clone(),
        );
        let llm_tokens = Family::<TokenLabels, Counter>::default();
        registry.register("llm_tokens", "Tokens sent to (in) and generated by (out) models", llm_tokens.clone());
        let llm_errors = Family::<LlmErrorLabels, Counter>::default();
        registry.register("llm_errors", "Failed model call attempts, by kind", llm_errors.clone());
        let llm_breaker = Family::<ProviderLabels, Gauge>::default();
        registry.register(
            "llm_breaker_state",
            "Circuit breaker per provider: 0 closed, 1 half-open, 2 open",
            llm_breaker.clone(),
        );
        let agent_events = Family::<KindLabels, Counter>::default();
        registry.register(
            "agent_events",
            "Coding agent events delivered: runs (execution_started), turns, escalations, ends, merges",
            agent_events.clone(),
        );
        let agent_tool_calls = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "agent_tool_calls",
            "Coding agent tool calls by outcome (ok, failed, killed: a command the sandbox killed at its timeout)",
            agent_tool_calls.clone(),
        );
        let agent_tokens = Counter::default();
        registry.register("agent_tokens", "Tokens the coding agent's models read and wrote", agent_tokens.clone());
        let music = crate::music::MusicFamilies::register(&mut registry);
        Self {
            inner: Arc::new(Inner {
                registry,
                heartbeat,
                jobs_sent,
                jobs_received,
                jobs_succeeded,
                jobs_failed,
                jobs_dead_lettered,
                job_duration,
                queue_messages,
                queue_events,
                store_duration,
                store_errors,
                llm_ttft,
                llm_duration,
                llm_tokens,
                llm_errors,
                llm_breaker,
                agent_events,
                agent_tool_calls,
                agent_tokens,
                music,
            }),
        }
    }

    /// Records a heartbeat now.
    pub fn beat(&self) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        self.inner.heartbeat.set(now.as_secs_f64());
    }

    /// Counts a job enqueued.
    pub fn job_sent(&self, queue: &str, kind: &str) {
        self.inner.jobs_sent.get_or_create(&labels(queue, kind)).inc();
    }

    /// Counts a job delivered to a worker.
    pub fn job_received(&self, queue: &str, kind: &str) {
        self.inner.jobs_received.get_or_create(&labels(queue, kind)).inc();
    }

    /// Records how a job run ended and how long its handler ran.
    pub fn job_finished(&self, queue: &str, kind: &str, outcome: JobOutcome, elapsed: Duration) {
        let l = labels(queue, kind);
        self.inner.job_duration.get_or_create(&l).observe(elapsed.as_secs_f64());
        let family = match outcome {
            JobOutcome::Succeeded => &self.inner.jobs_succeeded,
            JobOutcome::Failed => &self.inner.jobs_failed,
            JobOutcome::DeadLettered => &self.inner.jobs_dead_lettered,
        };
        family.get_or_create(&l).inc();
    }

    /// Counts a job moved to the DLQ without a handler run (malformed or of an unknown kind).
    pub fn job_dead_lettered(&self, queue: &str, kind: &str) {
        self.inner.jobs_dead_lettered.get_or_create(&labels(queue, kind)).inc();
    }

    /// Sets the depth gauges of one queue.
    pub fn set_queue_depth(&self, queue: &str, depth: den_storage::QueueDepth) {
        for (state, value) in [("visible", depth.visible), ("in_flight", depth.in_flight), ("delayed", depth.delayed)] {
            let l = DepthLabels { queue: queue.to_owned(), state };
            self.inner.queue_messages.get_or_create(&l).set(i64::try_from(value).unwrap_or(i64::MAX));
        }
    }

    /// Records a model's time to first token.
    pub fn llm_first_token(&self, provider: &str, ttft: Duration) {
        self.inner
            .llm_ttft
            .get_or_create(&ProviderLabels { provider: provider.to_owned() })
            .observe(ttft.as_secs_f64());
    }

    /// Records a finished model answer: its latency and tokens.
    pub fn llm_finished(&self, provider: &str, total: Duration, tokens_in: u64, tokens_out: u64) {
        let p = provider.to_owned();
        self.inner.llm_duration.get_or_create(&ProviderLabels { provider: p.clone() }).observe(total.as_secs_f64());
        self.inner.llm_tokens.get_or_create(&TokenLabels { provider: p.clone(), direction: "in" }).inc_by(tokens_in);
        self.inner.llm_tokens.get_or_create(&TokenLabels { provider: p, direction: "out" }).inc_by(tokens_out);
    }

    /// Counts a failed model call attempt.
    pub fn llm_error(&self, provider: &str, kind: &str) {
        self.inner
            .llm_errors
            .get_or_create(&LlmErrorLabels { provider: provider.to_owned(), kind: kind.to_owned() })
            .inc();
    }

    /// Sets a provider's breaker state: 0 closed, 1 half-open, 2 open.
    pub fn llm_breaker(&self, provider: &str, state: i64) {
        self.inner.llm_breaker.get_or_create(&ProviderLabels { provider: provider.to_owned() }).set(state);
    }

    /// Counts a delivered agent event of `kind`.
    pub fn agent_event(&self, kind: &str) {
        self.inner.agent_events.get_or_create(&KindLabels { kind: kind.to_owned() }).inc();
    }

    /// Counts an agent turn's tool calls: all of them, the failed ones, the killed ones (among the failed).
    pub fn agent_tool_calls(&self, calls: u64, failures: u64, killed: u64) {
        let ok = calls.saturating_sub(failures);
        for (outcome, n) in [("ok", ok), ("failed", failures.saturating_sub(killed)), ("killed", killed)] {
            self.inner.agent_tool_calls.get_or_create(&OutcomeLabels { outcome }).inc_by(n);
        }
    }

    /// Counts tokens the agent used.
    pub fn agent_tokens(&self, tokens: u64) {
        self.inner.agent_tokens.inc_by(tokens);
    }

    /// The registry in the OpenMetrics text format that Prometheus scrapes.
    #[must_use]
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.inner.registry).is_err() {
            let _ = writeln!(out, "# encoding failed");
        }
        out
    }
}

fn labels(queue: &str, kind: &str) -> JobLabels {
    JobLabels { queue: queue.to_owned(), kind: kind.to_owned() }
}

impl StoreObserver for Metrics {
    fn operation(&self, target: &'static str, op: &'static str, elapsed: Duration, ok: bool) {
        let l = OpLabels { target, op };
        self.inner.store_duration.get_or_create(&l).observe(elapsed.as_secs_f64());
        if !ok {
            self.inner.store_errors.get_or_create(&l).inc();
        }
    }

    fn messages(&self, queue: &str, event: MessageEvent, count: u64) {
        let event = match event {
            MessageEvent::Sent => "sent",
            MessageEvent::Received => "received",
            MessageEvent::Acked => "acked",
            MessageEvent::DeadLettered => "dead_lettered",
        };
        self.inner.queue_events.get_or_create(&QueueEventLabels { queue: queue.to_owned(), event }).inc_by(count);
    }
}

/// Beats the heartbeat gauge now and every `interval` until `shutdown`.
pub fn spawn_heartbeat(
    metrics: Metrics,
    interval: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    metrics.beat();
                    tracing::debug!("heartbeat");
                }
                () = shutdown.cancelled() => break,
            }
        }
    })
}

/// Refreshes the queue depth gauges of every queue before each scrape.
#[derive(Debug)]
pub struct QueueDepthCollector {
    queue: Arc<dyn Queue>,
    metrics: Metrics,
}

impl QueueDepthCollector {
    /// A collector reading `queue`'s depths into `metrics`.
    #[must_use]
    pub fn new(queue: Arc<dyn Queue>, metrics: Metrics) -> Self {
        Self { queue, metrics }
    }
}

#[async_trait]
impl ScrapeHook for QueueDepthCollector {
    async fn before_scrape(&self) {
        let Ok(specs) = self.queue.list_queues().await else { return };
        for spec in specs {
            if let Ok(depth) = self.queue.depth(&spec.name).await {
                self.metrics.set_queue_depth(&spec.name, depth);
            }
        }
    }
}
