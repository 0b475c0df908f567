use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Metrics;

/// Longest a readiness check or scrape hook may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Something `/ready` asks before it says yes: the store, the queue, later
/// the gateway shards.
#[async_trait]
pub trait ReadinessCheck: Send + Sync {
    /// Short name shown in the `/ready` answer.
    fn name(&self) -> &str;
    /// `Ok` when ready; otherwise why not, in a few words (never a secret).
    async fn check(&self) -> Result<(), String>;
}

/// Work to do before `/metrics` is encoded, such as reading queue depths.
#[async_trait]
pub trait ScrapeHook: Send + Sync {
    /// Brings gauges up to date.
    async fn before_scrape(&self);
}

/// What the ops server serves.
#[derive(Clone)]
pub struct OpsState {
    metrics: Metrics,
    checks: Arc<Vec<Arc<dyn ReadinessCheck>>>,
    hooks: Arc<Vec<Arc<dyn ScrapeHook>>>,
}

impl OpsState {
    /// State serving `metrics`, with no checks or hooks yet.
    #[must_use]
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics, checks: Arc::default(), hooks: Arc::default() }
    }

    /// Adds a readiness check.
    #[must_use]
    pub fn with_check(mut self, check: Arc<dyn ReadinessCheck>) -> Self {
        Arc::make_mut(&mut self.checks).push(check);
        self
    }

    /// Adds a scrape hook.
    #[must_use]
    pub fn with_hook(mut self, hook: Arc<dyn ScrapeHook>) -> Self {
        Arc::make_mut(&mut self.hooks).push(hook);
        self
    }
}

/// Serves `/health`, `/ready` and `/metrics` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, state: OpsState, shutdown: CancellationToken) -> std::io::Result<()> {
    let app = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state);
    axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
}

async fn health() -> &'static str {
    "ok\n"
}

async fn ready(State(state): State<OpsState>) -> Response {
    let mut ready = true;
    let mut checks = serde_json::Map::new();
    for check in state.checks.iter() {
        let verdict = match tokio::time::timeout(CHECK_TIMEOUT, check.check()).await {
            Ok(Ok(())) => "ok".to_owned(),
            Ok(Err(why)) => why,
            Err(_) => "timed out".to_owned(),
        };
        ready &= verdict == "ok";
        checks.insert(check.name().to_owned(), verdict.into());
    }
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = serde_json::json!({ "ready": ready, "checks": checks });
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn metrics(State(state): State<OpsState>) -> Response {
    for hook in state.hooks.iter() {
        let _ = tokio::time::timeout(CHECK_TIMEOUT, hook.before_scrape()).await;
    }
    let body = state.metrics.encode();
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
}
