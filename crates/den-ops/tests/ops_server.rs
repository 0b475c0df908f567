//! The ops server answers health, readiness and metrics as an operator expects.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use den_core::SystemClock;
use den_ops::{Metrics, OpsState, QueueDepthCollector, ReadinessCheck, serve};
use den_storage::sqlite::{SqliteOptions, SqliteStore};
use den_storage::{Metered, OutgoingMessage, QueueSpec, Store};
use tokio_util::sync::CancellationToken;

struct Switch(Arc<AtomicBool>);

#[async_trait]
impl ReadinessCheck for Switch {
    fn name(&self) -> &str {
        "switch"
    }
    async fn check(&self) -> Result<(), String> {
        if self.0.load(Ordering::SeqCst) { Ok(()) } else { Err("switched off".into()) }
    }
}

async fn start(state: OpsState) -> (String, CancellationToken, tokio::task::JoinHandle<std::io::Result<()>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve(listener, state, shutdown.clone()));
    (base, shutdown, task)
}

#[tokio::test]
async fn health_is_ok_and_ready_follows_its_checks() {
    let on = Arc::new(AtomicBool::new(true));
    let state = OpsState::new(Metrics::new()).with_check(Arc::new(Switch(on.clone())));
    let (base, shutdown, task) = start(state).await;
    let health = reqwest::get(format!("{base}/health")).await.unwrap();
    assert_eq!(health.status(), 200);

    let ready = reqwest::get(format!("{base}/ready")).await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["checks"]["switch"], "ok");

    on.store(false, Ordering::SeqCst);
    let not_ready = reqwest::get(format!("{base}/ready")).await.unwrap();
    assert_eq!(not_ready.status(), 503);
    let body: serde_json::Value = not_ready.json().await.unwrap();
    assert_eq!(body["ready"], false);
    assert_eq!(body["checks"]["switch"], "switched off");

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("server stops on shutdown").unwrap().unwrap();
}

#[tokio::test]
async fn metrics_show_heartbeat_queue_depths_and_store_latency() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(&SqliteOptions::new(dir.path().join("den.db")), Arc::new(SystemClock)).unwrap();
    let metrics = Metrics::new();
    let store = Metered::new(Arc::new(sqlite), Arc::new(metrics.clone()));
    let queue = store.queue();
    queue.create_queue(&QueueSpec::with_dlq("jobs")).await.unwrap();
    queue.send_batch("jobs", vec![OutgoingMessage::new("a"), OutgoingMessage::new("b")]).await.unwrap();
    metrics.beat();
    metrics.job_sent("jobs", "test.echo");
    metrics.job_finished("jobs", "test.echo", den_ops::JobOutcome::Succeeded, Duration::from_millis(3));

    let state = OpsState::new(metrics.clone()).with_hook(Arc::new(QueueDepthCollector::new(queue, metrics)));
    let (base, shutdown, _task) = start(state).await;
    let response = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    let text = response.text().await.unwrap();
    let line = |prefix: &str| text.lines().find(|l| l.starts_with(prefix)).map(str::to_owned);
    let heartbeat: f64 = line("den_heartbeat_timestamp_seconds ").unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    assert!(heartbeat > 1.7e9, "heartbeat is a Unix time: {heartbeat}");
    assert_eq!(line(r#"den_queue_messages{queue="jobs",state="visible"}"#).unwrap().rsplit(' ').next(), Some("2"));
    assert_eq!(line(r#"den_queue_messages{queue="jobs-dlq",state="visible"}"#).unwrap().rsplit(' ').next(), Some("0"));
    assert!(line(r#"den_jobs_sent_total{queue="jobs",kind="test.echo"} 1"#).is_some(), "{text}");
    assert!(line(r#"den_jobs_succeeded_total{queue="jobs",kind="test.echo"} 1"#).is_some());
    assert!(line(r#"den_job_duration_seconds_count{queue="jobs",kind="test.echo"} 1"#).is_some());
    assert!(line(r#"den_queue_message_events_total{queue="jobs",event="sent"} 2"#).is_some(), "{text}");
    assert!(line(r#"den_store_operation_duration_seconds_count{target="queue",op="send"} 1"#).is_some(), "{text}");
    assert!(text.trim_end().ends_with("# EOF"));
    shutdown.cancel();
}
