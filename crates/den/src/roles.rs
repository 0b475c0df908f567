//! The long-running roles: `run` (all in one), `gateway`, `worker`, `interactions`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use den_core::{Clock, SystemClock};
use den_discord::gateway::{Gateway, GatewayConfig, ShardStatus, StoreIdentifyQueue};
use den_discord::{Egress, EgressConfig, Module, Router};
use den_ops::{Metrics, OpsState, QueueDepthCollector, ReadinessCheck};
use den_storage::sqlite::{SqliteOptions, SqliteStore};
use den_storage::{Metered, Queue, Store, TableSpec};
use den_worker::{Handlers, JobQueue, WorkerPool};
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

    /// The interactions endpoint answers in its HTTP response and verifies
    /// signatures with the public key; it needs no bot token.
    fn needs_token(self) -> bool {
        !matches!(self, Role::Interactions)
    }

    fn runs_workers(self) -> bool {
        matches!(self, Role::All | Role::Worker)
    }

    fn runs_gateway(self) -> bool {
        matches!(self, Role::All | Role::Gateway)
    }

    fn runs_interactions(self, c: &Config) -> bool {
        self == Role::Interactions || (self == Role::All && c.interactions.enabled)
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
        "aws" => crate::aws::open_store(c, true).await,
        other => anyhow::bail!("store.backend {other:?} is unknown: sqlite or aws"),
    }
}

/// What modules are built from.
pub struct ModuleCx<'a> {
    /// The configuration.
    pub config: &'a Config,
    /// The process environment (API keys, persona bot tokens).
    pub env: &'a [(String, String)],
    /// The store.
    pub store: &'a Arc<dyn Store>,
    /// The one egress.
    pub egress: &'a Arc<Egress>,
    /// The job queue.
    pub jobs: &'a JobQueue,
    /// Its backend.
    pub queue: &'a Arc<dyn Queue>,
    /// The clock.
    pub clock: &'a Arc<dyn Clock>,
    /// Metrics.
    pub metrics: &'a Metrics,
    /// The senders of the gateway shards, in a process that runs them.
    pub shards: Option<&'a den_discord::gateway::ShardSenders>,
    /// Cancelled when the process shuts down.
    pub shutdown: &'a CancellationToken,
    /// Whether modules may run loops of their own between jobs (persona file
    /// reloads, expiry); not in a Lambda function, which sleeps between
    /// invocations.
    pub background: bool,
}

/// Every module den runs, wired to the process's egress and queue.
pub async fn modules(cx: &ModuleCx<'_>) -> anyhow::Result<Vec<Arc<dyn Module>>> {
    let mut modules: Vec<Arc<dyn Module>> =
        vec![den_status::StatusModule::new(cx.egress.clone(), cx.queue.clone(), cx.clock.clone())];
    if cx.config.personas.enabled {
        modules.push(crate::personas::module(cx).await?);
    }
    if cx.config.campaigns.enabled {
        let plans = den_campaigns::plan::Plans::new(cx.store.table(den_campaigns::plan::table_spec()).await?);
        let (templates, broken) = cx.config.campaigns.templates();
        for e in broken {
            tracing::warn!(error = %e, "campaign template skipped");
        }
        let manager = cx.config.campaigns.manager_role;
        // A plain-HTTP stand-in for Discord (a proxy, or the test double) also serves attachments.
        let hosts = cx.config.discord.api_proxy.iter().cloned().collect();
        modules.push(den_campaigns::CampaignsModule::new(
            cx.egress.clone(),
            plans,
            cx.clock.clone(),
            templates,
            manager,
            hosts,
        ));
    }
    if cx.config.agent.enabled {
        modules.push(crate::agent::module(cx).await?);
    }
    if cx.config.music.enabled {
        modules.push(crate::music::module(cx, cx.shards, cx.shutdown).await?);
    }
    Ok(modules)
}

/// The one egress of a process, with the application id known.
pub async fn egress(
    c: &Config,
    token: Option<den_core::Secret>,
    store: &Arc<dyn Store>,
) -> anyhow::Result<(Arc<Egress>, Option<String>)> {
    let webhooks = store.table(TableSpec::new("discord_webhooks")).await?;
    let has_token = token.is_some();
    let config = EgressConfig { token, api_proxy: c.discord.api_proxy.clone(), timeout: Duration::from_secs(15) };
    let egress = Arc::new(Egress::new(&config, c.discord.application_id.unwrap_or(0), Some(webhooks)));
    let mut public_key = c.discord.public_key.clone();
    if has_token {
        // Overwrites name den's bot user, which differs from the application id for old applications.
        egress.learn_bot_user().await.context("cannot ask Discord who den's bot user is (GET /users/@me)")?;
    }
    if has_token && (egress.app_id() == 0 || public_key.is_none()) {
        let (app, key) = egress
            .application()
            .await
            .context("cannot ask Discord for the application id (set discord.application_id to skip this)")?;
        if egress.app_id() == 0 {
            egress.set_app_id(app);
        }
        public_key.get_or_insert(key);
    }
    Ok((egress, public_key))
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
        self.queue.probe(&self.queue_name).await.map_err(|e| format!("queue unreachable: {e}"))
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

/// Not ready while events cannot be enqueued (the shards stop reading meanwhile).
struct IngressReady(Arc<Router>);

#[async_trait]
impl ReadinessCheck for IngressReady {
    fn name(&self) -> &str {
        "ingress"
    }
    async fn check(&self) -> Result<(), String> {
        match self.0.enqueue_failing_for() {
            Some(d) => Err(format!("events cannot be enqueued (failing for {} s)", d.as_secs())),
            None => Ok(()),
        }
    }
}

/// Ready when every shard this process runs has a live session.
struct ShardsReady(ShardStatus);

#[async_trait]
impl ReadinessCheck for ShardsReady {
    fn name(&self) -> &str {
        "gateway"
    }
    async fn check(&self) -> Result<(), String> {
        if self.0.all_ready() {
            Ok(())
        } else {
            let states: Vec<String> = self.0.states().iter().map(|(n, s)| format!("shard {n}: {s}")).collect();
            Err(if states.is_empty() { "no shard started yet".into() } else { states.join(", ") })
        }
    }
}

/// Cancels the returned token on SIGINT or SIGTERM.
pub fn shutdown_on_signal() -> anyhow::Result<CancellationToken> {
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

/// Runs `role` until SIGINT/SIGTERM (or a fatal gateway close), then shuts
/// down in order: stop taking work, drain the workers, stop the ops server,
/// close the store.
pub async fn run(role: Role, loaded: &Loaded, env: &[(String, String)]) -> anyhow::Result<()> {
    // Before anything is opened or bound, so a missing token fails at once.
    if role.needs_token() {
        config::discord_token(&loaded.config.discord, env)?;
    }
    run_until(role, &loaded.config, env, shutdown_on_signal()?).await
}

/// Runs `role` until `shutdown` is cancelled (or a fatal gateway close).
pub async fn run_until(
    role: Role,
    c: &Config,
    env: &[(String, String)],
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let token = match config::discord_token(&c.discord, env) {
        Ok(t) => Some(t),
        Err(e) if role.needs_token() => return Err(e.into()),
        Err(_) => None,
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let metrics = Metrics::new();
    let raw_store = open_store(c).await?;
    let store: Arc<dyn Store> = Arc::new(Metered::new(raw_store, Arc::new(metrics.clone())));
    let process = Process { env, clock: &clock, metrics: &metrics, store: &store };
    let result = serve(role, c, token, &shutdown, &process).await;
    shutdown.cancel();
    store.close().await.context("closing the store")?;
    tracing::info!(role = role.name(), "den stopped");
    result
}

/// What a running process shares with its parts.
struct Process<'a> {
    env: &'a [(String, String)],
    clock: &'a Arc<dyn Clock>,
    metrics: &'a Metrics,
    store: &'a Arc<dyn Store>,
}

async fn serve(
    role: Role,
    c: &Config,
    token: Option<den_core::Secret>,
    shutdown: &CancellationToken,
    process: &Process<'_>,
) -> anyhow::Result<()> {
    let Process { env, clock, metrics, store } = *process;
    let queue = store.queue();
    let spec = c.queue.spec(&c.worker);
    queue.create_queue(&spec).await.context("cannot create the job queue")?;
    let (egress, public_key) = egress(c, token.clone(), store).await?;
    let jobs = JobQueue::new(queue.clone(), spec.name.clone(), metrics.clone());
    let senders = den_discord::gateway::ShardSenders::default();
    let cx = ModuleCx {
        config: c,
        env,
        store,
        egress: &egress,
        jobs: &jobs,
        queue: &queue,
        clock,
        metrics,
        shards: role.runs_gateway().then_some(&senders),
        shutdown,
        background: true,
    };
    let modules = modules(&cx).await?;
    let music_jobs = crate::music::jobs(&cx);
    let mut router = Router::new(modules.clone(), jobs.clone(), clock.clone(), metrics.clone());
    if c.music.enabled {
        router = router.route_kind(MUSIC_KINDS, music_jobs);
    }
    let router = Arc::new(router);

    if role == Role::All && c.discord.sync_commands {
        let commands: Vec<_> = modules.iter().flat_map(|m| m.commands()).collect();
        let n = den_discord::module::sync_commands(&egress, &commands, c.discord.sync_guild)
            .await
            .context("registering slash commands")?;
        tracing::info!(commands = n, guild = ?c.discord.sync_guild, "slash commands registered");
    }

    let listener = tokio::net::TcpListener::bind(&c.ops.listen)
        .await
        .with_context(|| format!("cannot listen on {} (set ops.listen or DEN_OPS__LISTEN)", c.ops.listen))?;
    let ops_addr = listener.local_addr()?;
    let shard_status = ShardStatus::default();
    let mut state = OpsState::new(metrics.clone())
        .with_check(Arc::new(StoreReady { store: store.clone(), queue: queue.clone(), queue_name: spec.name.clone() }))
        .with_check(Arc::new(NotShuttingDown(shutdown.clone())))
        .with_hook(Arc::new(QueueDepthCollector::new(queue.clone(), metrics.clone())));
    if role.runs_gateway() {
        state = state.with_check(Arc::new(ShardsReady(shard_status.clone())));
    }
    if role.runs_gateway() || role.runs_interactions(c) {
        state = state.with_check(Arc::new(IngressReady(router.clone())));
    }
    // The ops server outlives the drain, so /health answers until the end.
    let ops_stop = CancellationToken::new();
    let ops = tokio::spawn(den_ops::serve(listener, state, ops_stop.clone()));
    let heartbeat =
        den_ops::spawn_heartbeat(metrics.clone(), Duration::from_secs(c.ops.heartbeat_secs), ops_stop.clone());
    let emf = c.ops.emf_encoder().map(|encoder| {
        let depths: Arc<dyn den_ops::ScrapeHook> = Arc::new(QueueDepthCollector::new(queue.clone(), metrics.clone()));
        den_ops::emf::spawn_emf(
            metrics.clone(),
            encoder,
            vec![depths],
            Duration::from_secs(c.ops.emf_interval_secs),
            ops_stop.clone(),
        )
    });

    let mut tasks = JoinSet::new();
    let mut gateway = None;
    if role.runs_gateway() {
        let (recommended, max_concurrency) = den_discord::gateway::recommended_shards(&egress)
            .await
            .context("cannot ask Discord for the gateway (GET /gateway/bot)")?;
        let total = if c.discord.shards == 0 { recommended } else { c.discord.shards };
        let (first, last) = c.discord.shard_range().map_err(anyhow::Error::msg)?.unwrap_or((0, total));
        anyhow::ensure!(last <= total, "discord.shard_ids goes past the {total} shards in use");
        let identify = StoreIdentifyQueue::new(
            store.table(TableSpec::new("discord_identify")).await?,
            clock.clone(),
            max_concurrency,
        );
        let sessions = store.table(TableSpec::new("discord_sessions")).await?;
        let gw = Gateway {
            config: GatewayConfig {
                token: token.clone().context("the gateway needs the bot token")?,
                intents: c.discord.intent_bits().map_err(anyhow::Error::msg)?,
                shards: total,
                shard_ids: Some((first, last)),
                gateway_url: c.discord.gateway_url.clone(),
            },
            identify,
            sessions,
            router: router.clone(),
            egress: egress.clone(),
            status: shard_status.clone(),
            senders: senders.clone(),
        };
        tracing::info!(shards = total, first, last = last - 1, max_concurrency, "connecting to the gateway");
        gateway = Some(tokio::spawn(gw.run(shutdown.clone())));
    }
    if role.runs_interactions(c) {
        let key = public_key
            .context("the interactions endpoint needs discord.public_key (or a bot token to ask Discord for it)")?;
        let key = den_discord::interactions::parse_public_key(&key)
            .map_err(|e| anyhow::anyhow!("discord.public_key: {e}"))?;
        let app = den_discord::interactions::endpoint(&c.interactions.path, key, router.clone(), clock.clone());
        let listener = tokio::net::TcpListener::bind(&c.interactions.listen)
            .await
            .with_context(|| format!("cannot listen on {} (set interactions.listen)", c.interactions.listen))?;
        let addr = listener.local_addr()?;
        // Discord waits 3 s for the answer; Nagle's algorithm would add up to 40 ms to it.
        let listener = axum::serve::ListenerExt::tap_io(listener, |s| {
            let _ = s.set_nodelay(true);
        });
        tracing::info!(%addr, path = %c.interactions.path, "interactions endpoint listening");
        let stop = shutdown.clone();
        tasks.spawn(async move {
            if let Err(e) =
                axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await
            {
                tracing::error!(error = %e, "interactions endpoint failed");
            }
        });
    }
    if role.runs_gateway() && c.music.enabled {
        // Music plays where the voice connections are: its jobs run beside the shards.
        let handlers = handlers_of(&modules, |kind| kind.starts_with(MUSIC_KINDS));
        let config = den_worker::WorkerConfig { concurrency: 16, ..c.worker.pool_config() };
        let pool = WorkerPool::new(queue.clone(), den_music::queue_spec(), handlers, metrics.clone(), config);
        tasks.spawn(pool.run(shutdown.clone()));
    }
    if role.runs_workers() {
        let handlers = handlers_of(&modules, |kind| !kind.starts_with(MUSIC_KINDS));
        let pool = WorkerPool::new(queue.clone(), spec.clone(), handlers, metrics.clone(), c.worker.pool_config());
        tasks.spawn(pool.run(shutdown.clone()));
        if c.agent.enabled {
            // The agent's events: a small pool of their own, so a slow webhook never holds up jobs.
            let sink = den_agent::sink::EventSink::new(metrics.clone(), c.agent.events_webhook.clone());
            let handlers = Handlers::new().with(den_agent::records::EVENT, Arc::new(sink));
            let config = den_worker::WorkerConfig { concurrency: 4, ..c.worker.pool_config() };
            let events = den_agent::records::events_queue();
            let pool = WorkerPool::new(queue.clone(), events, handlers, metrics.clone(), config);
            tasks.spawn(pool.run(shutdown.clone()));
        }
        tasks.spawn(sweep_periodically(
            store.clone(),
            Duration::from_secs(c.store.sweep_interval_secs.max(1)),
            shutdown.clone(),
        ));
    }
    tracing::info!(role = role.name(), ops = %ops_addr, store = %store.describe(), queue = %spec.name, application = egress.app_id(), "den started");

    shutdown.cancelled().await;
    let mut result = Ok(());
    if let Some(gateway) = gateway {
        match gateway.await {
            Ok(Err(fatal)) => result = Err(anyhow::anyhow!("{fatal}")),
            Ok(Ok(())) => {}
            Err(e) => tracing::error!(error = %e, "the gateway task failed"),
        }
    }
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done {
            tracing::error!(error = %e, "a task failed during shutdown");
        }
    }
    ops_stop.cancel();
    let _ = heartbeat.await;
    if let Some(emf) = emf {
        let _ = emf.await;
    }
    match ops.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "ops server ended with an error"),
        Err(e) => tracing::warn!(error = %e, "ops server task failed"),
    }
    result
}

/// Job kinds that travel on music's own queue.
pub(crate) const MUSIC_KINDS: &str = "music.";

/// The modules' handlers of the job kinds `wanted` picks.
pub(crate) fn handlers_of(modules: &[Arc<dyn Module>], wanted: impl Fn(&str) -> bool) -> Handlers {
    let all = modules.iter().flat_map(|m| m.clone().handlers());
    all.filter(|(kind, _)| wanted(kind)).fold(Handlers::new(), |h, (kind, handler)| h.with(kind, handler))
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
