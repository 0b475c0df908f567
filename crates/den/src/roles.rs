//! The long-running roles: `run` (all in one), `gateway`, `worker`, `interactions`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use den_core::SystemClock;
use den_ops::{Metrics, OpsState, QueueDepthCollector, ReadinessCheck};
use den_storage::sqlite::{SqliteOptions, SqliteStore};
use den_storage::{Metered, Queue, Store};
use den_worker::{Handlers, WorkerPool};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config, Loaded};

/// Which parts of den a process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Everything in one process.
    All,
    /// Gateway ingress.
    Gateway,
    /// Job workers.
    Worker,
    /// HTTP interactions ingress.
    Interactions,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::All => "run",
            Role::Gateway => "gateway",
            Role::Worker => "worker",
            Role::Interactions => "interactions",
        }
    }

    /// Roles that talk to Discord with the bot token. The interactions
    /// endpoint only verifies signatures with the public key.
    fn needs_token(self) -> bool {
        !matches!(self, Role::Interactions)
    }

    fn runs_workers(self) -> bool {
        matches!(self, Role::All | Role::Worker)
    }
}

/// Opens the configured backend.
pub async fn open_store(c: &Config) -> anyhow::Result<Arc<dyn Store>> {
    match c.store.backend.as_str() {
        "sqlite" => {
            let mut options = SqliteOptions::new(&c.store.path);
            options.durability = c.store.durability;
            let store = SqliteStore::open(&options, Arc::new(SystemClock))
                .with_context(|| format!("cannot open the store at {}", c.store.path.display()))?;
            Ok(Arc::new(store))
        }
        other => anyhow::bail!("store.backend {other:?} is not built into this den (it needs the `aws` cargo feature)"),
    }
}

struct StoreReady {
    store: Arc<dyn Store>,
    queue: Arc<dyn Queue>,
    queue_name: String,
}

#[async_trait]
impl ReadinessCheck for StoreReady {
    fn name(&self) -> &str {
        "store"
    }
    async fn check(&self) -> Result<(), String> {
        self.store.ping().await.map_err(|e| format!("store unreachable: {e}"))?;
        self.queue.depth(&self.queue_name).await.map(|_| ()).map_err(|e| format!("queue unreachable: {e}"))
    }
}

/// Not ready once shutdown began, so load balancers stop sending work.
struct NotShuttingDown(CancellationToken);

#[async_trait]
impl ReadinessCheck for NotShuttingDown {
    fn name(&self) -> &str {
        "running"
    }
    async fn check(&self) -> Result<(), String> {
        if self.0.is_cancelled() { Err("shutting down".into()) } else { Ok(()) }
    }
}

/// Cancels the returned token on SIGINT or SIGTERM.
fn shutdown_on_signal() -> anyhow::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
            _ = int.recv() => tracing::info!("SIGINT received; shutting down"),
        }
        cancel.cancel();
    });
    Ok(token)
}

/// Runs `role` until SIGINT/SIGTERM, then shuts down in order: stop taking
/// work, drain the workers, stop the ops server, close the store.
pub async fn run(role: Role, loaded: &Loaded, env: &[(String, String)]) -> anyhow::Result<()> {
    let c = &loaded.config;
    // Before anything is opened or bound, so a missing token fails at once.
    if role.needs_token() {
        let _token = config::discord_token(&c.discord, env)?;
    }
    let shutdown = shutdown_on_signal()?;
    let metrics = Metrics::new();
    let raw_store = open_store(c).await?;
    let store: Arc<dyn Store> = Arc::new(Metered::new(raw_store, Arc::new(metrics.clone())));
    let queue = store.queue();
    let spec = c.queue.spec(&c.worker);
    queue.create_queue(&spec).await.context("cannot create the job queue")?;

    let listener = tokio::net::TcpListener::bind(&c.ops.listen)
        .await
        .with_context(|| format!("cannot listen on {} (set ops.listen or DEN_OPS__LISTEN)", c.ops.listen))?;
    let ops_addr = listener.local_addr()?;
    let state = OpsState::new(metrics.clone())
        .with_check(Arc::new(StoreReady { store: store.clone(), queue: queue.clone(), queue_name: spec.name.clone() }))
        .with_check(Arc::new(NotShuttingDown(shutdown.clone())))
        .with_hook(Arc::new(QueueDepthCollector::new(queue.clone(), metrics.clone())));
    // The ops server outlives the drain, so /health answers until the end.
    let ops_stop = CancellationToken::new();
    let ops = tokio::spawn(den_ops::serve(listener, state, ops_stop.clone()));
    let heartbeat =
        den_ops::spawn_heartbeat(metrics.clone(), Duration::from_secs(c.ops.heartbeat_secs), ops_stop.clone());

    let mut tasks = JoinSet::new();
    if role.runs_workers() {
        let pool =
            WorkerPool::new(queue.clone(), spec.clone(), Handlers::new(), metrics.clone(), c.worker.pool_config());
        tasks.spawn(pool.run(shutdown.clone()));
        tasks.spawn(sweep_periodically(
            store.clone(),
            Duration::from_secs(c.store.sweep_interval_secs.max(1)),
            shutdown.clone(),
        ));
    }
    tracing::info!(role = role.name(), ops = %ops_addr, store = %store.describe(), queue = %spec.name, "den started");

    shutdown.cancelled().await;
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done {
            tracing::error!(error = %e, "a task failed during shutdown");
        }
    }
    ops_stop.cancel();
    let _ = heartbeat.await;
    match ops.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "ops server ended with an error"),
        Err(e) => tracing::warn!(error = %e, "ops server task failed"),
    }
    store.close().await.context("closing the store")?;
    tracing::info!(role = role.name(), "den stopped");
    Ok(())
}

async fn sweep_periodically(store: Arc<dyn Store>, every: Duration, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await; // the first tick is immediate; sweep after one interval
    loop {
        tokio::select! {
            _ = ticks.tick() => match store.sweep().await {
                Ok(r) if r.items + r.messages > 0 => tracing::info!(items = r.items, messages = r.messages, "swept expired data"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "sweep failed"),
            },
            () = shutdown.cancelled() => break,
        }
    }
}
