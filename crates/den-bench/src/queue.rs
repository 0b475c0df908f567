//! `den-bench queue`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use den_core::{Clock, Job, SystemClock};
use den_ops::Metrics;
use den_storage::sqlite::{Durability, SqliteOptions, SqliteStore};
use den_storage::{Queue, QueueSpec};
use den_worker::{Handlers, JobContext, JobError, JobHandler, JobQueue, WorkerConfig, WorkerPool};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Options of the queue scenario.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Messages sent in the throughput phases.
    #[arg(long, default_value_t = 200_000)]
    messages: usize,
    /// Concurrent senders.
    #[arg(long, default_value_t = 4)]
    senders: usize,
    /// Seconds of the latency phase.
    #[arg(long, default_value_t = 10)]
    latency_seconds: u64,
    /// Jobs per second offered in the latency phase.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// SQLite durability: full, normal or off.
    #[arg(long, default_value = "normal")]
    durability: String,
}

const BODY_BYTES: usize = 1024;

fn open(dir: &std::path::Path, durability: Durability) -> anyhow::Result<SqliteStore> {
    let mut options = SqliteOptions::new(dir.join("bench.db"));
    options.durability = durability;
    Ok(SqliteStore::open(&options, Arc::new(SystemClock))?)
}

/// Worker concurrency of `den run` (`worker.concurrency`).
const DEFAULT_CONCURRENCY: usize = 16;

/// A job as ingress makes one: a dedup key unique to its event, and a
/// payload padded so the serialised body is about 1 KiB.
fn job(payload: serde_json::Value) -> Job {
    static EVENT: AtomicU64 = AtomicU64::new(0);
    let event = EVENT.fetch_add(1, Ordering::Relaxed);
    let mut job = Job::builder("bench.noop", SystemClock.now())
        .dedup_key(format!("msg:{event}:bench.noop"))
        .payload(payload)
        .build();
    let size = serde_json::to_string(&job).map(|s| s.len()).unwrap_or(0);
    if let serde_json::Value::Object(map) = &mut job.payload {
        map.insert("pad".into(), "x".repeat(BODY_BYTES.saturating_sub(size + 10)).into());
    }
    job
}

pub fn run(o: &Options) -> anyhow::Result<serde_json::Value> {
    let durability = match o.durability.as_str() {
        "full" => Durability::Full,
        "normal" => Durability::Normal,
        "off" => Durability::Off,
        other => anyhow::bail!("unknown durability {other}"),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let sends = sends_per_second(o, durability).await?;
        let end_to_end = jobs_per_second(o, durability).await?;
        let latency = latency_at_rate(o, durability).await?;
        Ok(json!({
            "scenario": "queue",
            "backend": "sqlite",
            "durability": o.durability,
            "body_bytes": BODY_BYTES,
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "sends": sends,
            "end_to_end": end_to_end,
            "latency": latency,
            "targets": { "sends_per_sec": 30_000, "jobs_per_sec": 10_000, "p99_ms": 5.0 },
        }))
    })
}

async fn sends_per_second(o: &Options, durability: Durability) -> anyhow::Result<serde_json::Value> {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path(), durability)?;
    let queue: Arc<dyn Queue> = Arc::new(store.queue());
    queue.create_queue(&QueueSpec::with_dlq("bench")).await?;
    let jobs = JobQueue::new(queue.clone(), "bench", Metrics::new());
    let batches = o.messages / 10;
    let per_sender = batches / o.senders.max(1);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..o.senders.max(1) {
        let jobs = jobs.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_sender {
                // Each job with its own dedup key, as ingress sends them.
                let batch: Vec<Job> = (0..10).map(|_| job(json!({}))).collect();
                jobs.send_all(&batch).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let sent = per_sender * o.senders.max(1) * 10;
    anyhow::ensure!(queue.depth("bench").await?.total() == sent as u64, "every job was stored");
    store.close().await?;
    Ok(json!({
        "messages": sent, "batch": 10, "senders": o.senders, "dedup_keys": true, "seconds": elapsed,
        "per_sec": (sent as f64 / elapsed).round(),
    }))
}

struct Noop {
    done: AtomicU64,
    started: Instant,
    /// Microseconds from send to handler start, when the payload carries a send time.
    latencies: Mutex<Vec<f64>>,
}

#[async_trait]
impl JobHandler for Noop {
    async fn run(&self, job: &Job, _cx: &JobContext) -> Result<(), JobError> {
        if let Some(sent) = job.payload.get("sent_us").and_then(serde_json::Value::as_u64) {
            let now = self.started.elapsed().as_micros() as u64;
            self.latencies
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(now.saturating_sub(sent) as f64);
        }
        self.done.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn pool(queue: Arc<dyn Queue>, handler: Arc<Noop>) -> WorkerPool {
    let config =
        WorkerConfig { concurrency: DEFAULT_CONCURRENCY, poll_wait: Duration::from_secs(1), ..WorkerConfig::default() };
    WorkerPool::new(
        queue,
        QueueSpec::with_dlq("bench"),
        Handlers::new().with("bench.noop", handler),
        Metrics::new(),
        config,
    )
}

async fn jobs_per_second(o: &Options, durability: Durability) -> anyhow::Result<serde_json::Value> {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path(), durability)?;
    let queue: Arc<dyn Queue> = Arc::new(store.queue());
    queue.create_queue(&QueueSpec::with_dlq("bench")).await?;
    let handler = Arc::new(Noop { done: AtomicU64::new(0), started: Instant::now(), latencies: Mutex::default() });
    let stop = CancellationToken::new();
    let worker = tokio::spawn(pool(queue.clone(), handler.clone()).run(stop.clone()));
    let jobs = JobQueue::new(queue.clone(), "bench", Metrics::new());
    let total = (o.messages / 2 / 10) * 10;
    let start = Instant::now();
    let mut senders = Vec::new();
    for _ in 0..o.senders.max(1) {
        let jobs = jobs.clone();
        let count = total / o.senders.max(1);
        senders.push(tokio::spawn(async move {
            for _ in 0..count / 10 {
                let batch: Vec<Job> = (0..10).map(|_| job(json!({}))).collect();
                jobs.send_all(&batch).await?;
            }
            anyhow::Ok(count / 10 * 10)
        }));
    }
    let mut sent = 0;
    for s in senders {
        sent += s.await??;
    }
    // The clock stops when every ack is committed: the queue holds nothing, in flight or not.
    while handler.done.load(Ordering::Relaxed) < sent as u64 || queue.depth("bench").await?.total() > 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
        anyhow::ensure!(start.elapsed() < Duration::from_secs(600), "jobs did not finish");
    }
    let elapsed = start.elapsed().as_secs_f64();
    stop.cancel();
    worker.await?;
    let left = queue.depth("bench").await?.total();
    store.close().await?;
    Ok(json!({
        "jobs": sent, "seconds": elapsed, "per_sec": (sent as f64 / elapsed).round(),
        "left_in_queue": left, "worker_concurrency": DEFAULT_CONCURRENCY, "dedup_keys": true, "until": "acks committed",
    }))
}

async fn latency_at_rate(o: &Options, durability: Durability) -> anyhow::Result<serde_json::Value> {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path(), durability)?;
    let queue: Arc<dyn Queue> = Arc::new(store.queue());
    queue.create_queue(&QueueSpec::with_dlq("bench")).await?;
    let started = Instant::now();
    let handler = Arc::new(Noop { done: AtomicU64::new(0), started, latencies: Mutex::default() });
    let stop = CancellationToken::new();
    let worker = tokio::spawn(pool(queue.clone(), handler.clone()).run(stop.clone()));
    let jobs = JobQueue::new(queue.clone(), "bench", Metrics::new());
    let total = o.rate * o.latency_seconds;
    let interval = Duration::from_secs_f64(1.0 / o.rate as f64);
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    // Each job is sent on its own task so a slow send does not delay the next offer.
    let mut sends = tokio::task::JoinSet::new();
    for _ in 0..total {
        ticks.tick().await;
        let jobs = jobs.clone();
        let sent_us = started.elapsed().as_micros() as u64;
        sends.spawn(async move { jobs.send(&job(json!({ "sent_us": sent_us }))).await });
    }
    while let Some(r) = sends.join_next().await {
        r??;
    }
    while handler.done.load(Ordering::Relaxed) < total {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let offered_secs = started.elapsed().as_secs_f64();
    stop.cancel();
    worker.await?;
    store.close().await?;
    let mut samples = std::mem::take(&mut *handler.latencies.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    samples.sort_by(f64::total_cmp);
    Ok(json!({
        "offered_per_sec": o.rate, "jobs": total, "seconds": offered_secs,
        "p50_ms": crate::quantile(&samples, 0.50) / 1000.0,
        "p99_ms": crate::quantile(&samples, 0.99) / 1000.0,
        "max_ms": samples.last().copied().unwrap_or(f64::NAN) / 1000.0,
    }))
}
