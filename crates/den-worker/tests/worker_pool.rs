//! The worker pool runs, retries, dead-letters and stops as promised.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use den_core::{Clock, Job, SystemClock};
use den_ops::Metrics;
use den_storage::sqlite::{SqliteOptions, SqliteStore};
use den_storage::{DeadLetterSpec, OutgoingMessage, Queue, QueueSpec};
use den_worker::{Backoff, Handlers, JobContext, JobError, JobHandler, JobQueue, WorkerConfig, WorkerPool};
use tokio_util::sync::CancellationToken;

const MAX_RECEIVES: u32 = 3;

struct Fixture {
    _dir: tempfile::TempDir,
    queue: Arc<dyn Queue>,
    spec: QueueSpec,
    metrics: Metrics,
    jobs: JobQueue,
}

fn fixture_spec() -> QueueSpec {
    QueueSpec {
        name: "jobs".into(),
        visibility_timeout: Duration::from_secs(30),
        retention: Duration::from_secs(3600),
        dead_letter: Some(DeadLetterSpec {
            name: "jobs-dlq".into(),
            max_receive_count: MAX_RECEIVES,
            retention: Duration::from_secs(7200),
        }),
    }
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&SqliteOptions::new(dir.path().join("den.db")), Arc::new(SystemClock)).unwrap();
    let queue: Arc<dyn Queue> = Arc::new(store.queue());
    let spec = fixture_spec();
    queue.create_queue(&spec).await.unwrap();
    let metrics = Metrics::new();
    let jobs = JobQueue::new(queue.clone(), "jobs", metrics.clone());
    Fixture { _dir: dir, queue, spec, metrics, jobs }
}

fn fast_config() -> WorkerConfig {
    WorkerConfig {
        concurrency: 4,
        job_timeout: Duration::from_secs(5),
        poll_wait: Duration::from_millis(200),
        backoff: Backoff { base: Duration::from_millis(20), max: Duration::from_millis(100) },
        grace: Duration::from_secs(5),
    }
}

fn job(kind: &str, payload: serde_json::Value) -> Job {
    Job::builder(kind, SystemClock.now()).payload(payload).build()
}

fn start(f: &Fixture, handlers: Handlers, config: WorkerConfig) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let pool = WorkerPool::new(f.queue.clone(), f.spec.clone(), handlers, f.metrics.clone(), config);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(pool.run(shutdown.clone()));
    (shutdown, task)
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Fails until attempt `succeed_on`, recording each attempt number it saw.
#[derive(Default)]
struct Flaky {
    succeed_on: u32,
    permanent: bool,
    attempts: Mutex<Vec<u32>>,
    payloads: Mutex<Vec<serde_json::Value>>,
}

#[async_trait]
impl JobHandler for Flaky {
    async fn run(&self, job: &Job, _cx: &JobContext) -> Result<(), JobError> {
        self.attempts.lock().unwrap().push(job.attempt);
        self.payloads.lock().unwrap().push(job.payload.clone());
        if self.permanent {
            return Err(JobError::permanent("bad input"));
        }
        if job.attempt >= self.succeed_on { Ok(()) } else { Err(JobError::retry("flaky")) }
    }
}

async fn dlq_len(f: &Fixture) -> usize {
    f.queue.peek("jobs-dlq", 100, None).await.unwrap().len()
}

#[tokio::test]
async fn a_job_runs_once_with_its_payload_and_is_acked() {
    let f = fixture().await;
    let handler = Arc::new(Flaky { succeed_on: 1, ..Flaky::default() });
    let (stop, task) = start(&f, Handlers::new().with("test.ok", handler.clone()), fast_config());
    f.jobs.send(&job("test.ok", serde_json::json!({"n": 7}))).await.unwrap();
    eventually("the job is acked", async || {
        f.queue.depth("jobs").await.unwrap().total() == 0 && !handler.attempts.lock().unwrap().is_empty()
    })
    .await;
    stop.cancel();
    task.await.unwrap();
    assert_eq!(*handler.attempts.lock().unwrap(), [1]);
    assert_eq!(*handler.payloads.lock().unwrap(), [serde_json::json!({"n": 7})]);
    let text = f.metrics.encode();
    assert!(text.contains(r#"den_jobs_succeeded_total{queue="jobs",kind="test.ok"} 1"#), "{text}");
    assert!(text.contains(r#"den_jobs_sent_total{queue="jobs",kind="test.ok"} 1"#), "{text}");
}

#[tokio::test]
async fn a_failing_job_is_retried_with_rising_attempts_until_it_succeeds() {
    let f = fixture().await;
    let handler = Arc::new(Flaky { succeed_on: 3, ..Flaky::default() });
    let (stop, task) = start(&f, Handlers::new().with("test.flaky", handler.clone()), fast_config());
    f.jobs.send(&job("test.flaky", serde_json::Value::Null)).await.unwrap();
    eventually("the third attempt succeeds", async || {
        handler.attempts.lock().unwrap().len() == 3 && f.queue.depth("jobs").await.unwrap().total() == 0
    })
    .await;
    stop.cancel();
    task.await.unwrap();
    assert_eq!(*handler.attempts.lock().unwrap(), [1, 2, 3]);
    assert_eq!(dlq_len(&f).await, 0);
    let text = f.metrics.encode();
    assert!(text.contains(r#"den_jobs_failed_total{queue="jobs",kind="test.flaky"} 2"#), "{text}");
}

#[tokio::test]
async fn a_job_that_always_fails_is_dead_lettered_after_the_max_receive_count() {
    let f = fixture().await;
    let handler = Arc::new(Flaky { succeed_on: u32::MAX, ..Flaky::default() });
    let (stop, task) = start(&f, Handlers::new().with("test.broken", handler.clone()), fast_config());
    f.jobs.send(&job("test.broken", serde_json::Value::Null)).await.unwrap();
    eventually("the job reaches the DLQ", async || dlq_len(&f).await == 1).await;
    stop.cancel();
    task.await.unwrap();
    assert_eq!(*handler.attempts.lock().unwrap(), [1, 2, 3], "tried exactly max_receive_count times");
    assert_eq!(f.queue.depth("jobs").await.unwrap().total(), 0);
    assert!(f.metrics.encode().contains(r#"den_jobs_dead_lettered_total{queue="jobs",kind="test.broken"} 1"#));
}

#[tokio::test]
async fn a_permanent_failure_goes_to_the_dlq_without_retries() {
    let f = fixture().await;
    let handler = Arc::new(Flaky { permanent: true, ..Flaky::default() });
    let (stop, task) = start(&f, Handlers::new().with("test.bad", handler.clone()), fast_config());
    f.jobs.send(&job("test.bad", serde_json::Value::Null)).await.unwrap();
    eventually("the job reaches the DLQ", async || dlq_len(&f).await == 1).await;
    stop.cancel();
    task.await.unwrap();
    assert_eq!(*handler.attempts.lock().unwrap(), [1]);
}

#[tokio::test]
async fn malformed_messages_and_unknown_kinds_are_dead_lettered_untouched() {
    let f = fixture().await;
    let (stop, task) = start(&f, Handlers::new(), fast_config());
    f.queue.send_batch("jobs", vec![OutgoingMessage::new("{not json")]).await.unwrap();
    f.jobs.send(&job("nobody.handles.this", serde_json::Value::Null)).await.unwrap();
    eventually("both reach the DLQ", async || dlq_len(&f).await == 2).await;
    stop.cancel();
    task.await.unwrap();
    let bodies: Vec<String> = f.queue.peek("jobs-dlq", 10, None).await.unwrap().into_iter().map(|m| m.body).collect();
    assert!(bodies.contains(&"{not json".to_owned()), "the body is kept as it was for inspection");
}

struct Slow {
    delay: Duration,
    running: AtomicUsize,
    peak: AtomicUsize,
    done: AtomicU32,
}

#[async_trait]
impl JobHandler for Slow {
    async fn run(&self, _job: &Job, _cx: &JobContext) -> Result<(), JobError> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.done.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn slow(delay: Duration) -> Arc<Slow> {
    Arc::new(Slow { delay, running: AtomicUsize::new(0), peak: AtomicUsize::new(0), done: AtomicU32::new(0) })
}

#[tokio::test]
async fn no_more_jobs_run_at_once_than_the_concurrency_limit() {
    let f = fixture().await;
    let handler = slow(Duration::from_millis(50));
    let config = WorkerConfig { concurrency: 3, ..fast_config() };
    let (stop, task) = start(&f, Handlers::new().with("test.slow", handler.clone()), config);
    let jobs: Vec<Job> = (0..20).map(|_| job("test.slow", serde_json::Value::Null)).collect();
    f.jobs.send_all(&jobs).await.unwrap();
    eventually("all 20 ran", async || handler.done.load(Ordering::SeqCst) == 20).await;
    stop.cancel();
    task.await.unwrap();
    let peak = handler.peak.load(Ordering::SeqCst);
    assert!(peak <= 3, "peak concurrency {peak} is over the limit");
    assert!(peak >= 2, "jobs ran in parallel (peak {peak})");
}

#[tokio::test]
async fn a_job_over_its_timeout_counts_as_failed_and_is_retried() {
    let f = fixture().await;
    let handler = slow(Duration::from_secs(30));
    let config = WorkerConfig { job_timeout: Duration::from_millis(100), ..fast_config() };
    let (stop, task) = start(&f, Handlers::new().with("test.hang", handler.clone()), config);
    f.jobs.send(&job("test.hang", serde_json::Value::Null)).await.unwrap();
    eventually("the hung job is dead-lettered after its retries", async || dlq_len(&f).await == 1).await;
    stop.cancel();
    task.await.unwrap();
    assert!(f.metrics.encode().contains(r#"den_jobs_failed_total{queue="jobs",kind="test.hang"} 2"#));
}

#[tokio::test]
async fn shutdown_lets_a_short_job_finish_and_acks_it() {
    let f = fixture().await;
    let handler = slow(Duration::from_millis(300));
    let (stop, task) = start(&f, Handlers::new().with("test.short", handler.clone()), fast_config());
    f.jobs.send(&job("test.short", serde_json::Value::Null)).await.unwrap();
    eventually("the job started", async || handler.running.load(Ordering::SeqCst) == 1).await;
    stop.cancel();
    task.await.unwrap();
    assert_eq!(handler.done.load(Ordering::SeqCst), 1, "the in-flight job finished");
    assert_eq!(f.queue.depth("jobs").await.unwrap().total(), 0, "and was acked");
}

#[tokio::test]
async fn shutdown_releases_a_job_that_outlives_the_grace_period() {
    let f = fixture().await;
    let handler = slow(Duration::from_secs(60));
    let config = WorkerConfig { grace: Duration::from_millis(200), ..fast_config() };
    let (stop, task) = start(&f, Handlers::new().with("test.long", handler.clone()), config);
    f.jobs.send(&job("test.long", serde_json::Value::Null)).await.unwrap();
    eventually("the job started", async || handler.running.load(Ordering::SeqCst) == 1).await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("the pool stops after its grace").unwrap();
    assert_eq!(handler.done.load(Ordering::SeqCst), 0);
    let depth = f.queue.depth("jobs").await.unwrap();
    assert_eq!(depth.visible, 1, "the unfinished job is visible again at once: {depth:?}");
}

#[tokio::test]
async fn forgetting_a_person_deletes_their_waiting_and_dead_lettered_jobs_and_their_bytes() {
    let f = fixture().await;
    let secret = "Zanzibarquette";
    let theirs = |text: &str| {
        Job::builder("personas.message", SystemClock.now())
            .guild(1)
            .people([7])
            .payload(serde_json::json!({"text": text}))
            .build()
    };
    let mine = Job::builder("personas.message", SystemClock.now())
        .guild(1)
        .people([8])
        .payload(serde_json::json!({"text": "other"}))
        .build();
    let elsewhere = Job::builder("personas.message", SystemClock.now())
        .guild(2)
        .people([7])
        .payload(serde_json::json!({"text": "x"}))
        .build();
    // One of theirs dead-lettered, one waiting; someone else's and another guild's stay.
    f.jobs.send(&theirs(&format!("first {secret}"))).await.unwrap();
    let got = f.queue.receive("jobs", den_storage::ReceiveOptions::default()).await.unwrap();
    f.queue.dead_letter("jobs", &got[0].receipt).await.unwrap();
    f.jobs.send_all(&[theirs(&format!("second {secret}")), mine, elsewhere]).await.unwrap();

    assert_eq!(f.jobs.forget_person(1, 7).await.unwrap(), 2);
    let left: Vec<Job> =
        f.queue.peek("jobs", 10, None).await.unwrap().iter().map(|m| serde_json::from_str(&m.body).unwrap()).collect();
    assert_eq!(left.len(), 2);
    assert!(left.iter().all(|j| !(j.guild == Some(1) && j.people.contains(&7))));
    assert!(f.queue.peek("jobs-dlq", 10, None).await.unwrap().is_empty());
    for file in std::fs::read_dir(f._dir.path()).unwrap() {
        let path = file.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "{} still holds it", path.display());
    }
}
