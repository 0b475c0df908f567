//! `den-bench ingest` and `den-bench interactions`: den's Discord ingress
//! against the fake Discord.

use std::sync::Arc;
use std::time::{Duration, Instant};

use den_core::{Clock, Secret, SystemClock};
use den_discord::gateway::{Gateway, GatewayConfig, ShardStatus, StoreIdentifyQueue};
use den_discord::{Egress, EgressConfig, Module, Router};
use den_ops::Metrics;
use den_storage::sqlite::{SqliteOptions, SqliteStore};
use den_storage::{Queue, QueueSpec, Store, TableSpec};
use den_testkit::discord::RateLimits;
use den_testkit::{FakeConfig, FakeDiscord};
use den_worker::{Handlers, JobQueue, WorkerConfig, WorkerPool};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Jobs each `!ping` makes with every module on: status answers it, personas records it.
const JOBS_PER_EVENT: u64 = 2;

/// Options of `ingest`.
#[derive(Debug, clap::Args)]
pub struct IngestOptions {
    /// Events per run.
    #[arg(long, default_value_t = 100_000)]
    events: usize,
}

/// Options of `interactions`.
#[derive(Debug, clap::Args)]
pub struct InteractionsOptions {
    /// Interactions per second offered.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// Seconds to offer them for.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Let the fake check every request against the OpenAPI spec (its CPU then counts against den).
    #[arg(long)]
    check_schemas: bool,
    /// Run no workers: measure the acknowledgement path alone.
    #[arg(long)]
    no_workers: bool,
    /// Worker concurrency (den's default is 16).
    #[arg(long, default_value_t = 16)]
    workers: usize,
}

struct Rig {
    _dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
    queue: Arc<dyn Queue>,
    router: Arc<Router>,
    egress: Arc<Egress>,
    modules: Vec<Arc<dyn Module>>,
    spec: QueueSpec,
    metrics: Metrics,
}

async fn rig(fake: &FakeDiscord) -> anyhow::Result<Rig> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(SqliteStore::open(&SqliteOptions::new(dir.path().join("den.db")), Arc::new(SystemClock))?);
    let queue: Arc<dyn Queue> = Arc::new(store.queue());
    let spec = QueueSpec::with_dlq("den-jobs");
    queue.create_queue(&spec).await?;
    let metrics = Metrics::new();
    let config = EgressConfig {
        token: Some(Secret::new(fake.bot_token())),
        api_proxy: Some(fake.rest_addr()),
        timeout: Duration::from_secs(10),
    };
    let egress = Arc::new(Egress::new(&config, fake.app_id(), None));
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let jobs = JobQueue::new(queue.clone(), spec.name.clone(), metrics.clone());
    let store_dyn: Arc<dyn Store> = store.clone();
    let modules = every_module(&store_dyn, dir.path(), &egress, &config, &jobs, &clock).await?;
    let router = Arc::new(Router::new(modules.clone(), jobs, clock, metrics.clone()));
    router.set_bot_user_id(fake.bot_user_id());
    Ok(Rig { _dir: dir, store, queue, router, egress, modules, spec, metrics })
}

/// Every module `den run` runs, as it builds them: status, the personas (the
/// three shipped examples, no model needed to take messages in) and campaigns.
async fn every_module(
    store: &Arc<dyn Store>,
    dir: &std::path::Path,
    egress: &Arc<Egress>,
    egress_config: &EgressConfig,
    jobs: &JobQueue,
    clock: &Arc<dyn Clock>,
) -> anyhow::Result<Vec<Arc<dyn Module>>> {
    let personas_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../personas");
    let personas = Arc::new(den_personas::PersonaSet::open(&personas_dir));
    anyhow::ensure!(personas.all().len() == 3, "the shipped personas in {}", personas_dir.display());
    let personas = den_personas::PersonasModule::new(den_personas::module::Deps {
        egress: egress.clone(),
        bot_egress: EgressConfig { token: None, ..egress_config.clone() },
        env: Vec::new(),
        posts: den_discord::posts::PostLedger::new(store.table(den_discord::posts::table_spec()).await?),
        personas,
        memory: den_personas::memory::MemoryStore::open(&dir.join("memory.db"))?,
        state: den_personas::state::State::new(store.table(den_personas::state::table_spec()).await?),
        ledger: den_llm::ledger::Ledger::new(store.table(den_llm::ledger::table_spec()).await?, clock.clone()),
        models: None,
        jobs: jobs.clone(),
        clock: clock.clone(),
        config: den_personas::PersonasConfig::default(),
    })
    .map_err(anyhow::Error::msg)?;
    let plans = den_campaigns::plan::Plans::new(store.table(den_campaigns::plan::table_spec()).await?);
    let campaigns = den_campaigns::CampaignsModule::new(egress.clone(), plans, clock.clone(), vec![], None, vec![]);
    Ok(vec![den_status::StatusModule::new(egress.clone(), store.queue(), clock.clone()), personas, campaigns])
}

fn message_payload(seq: usize, channel: u64, guild: u64, user: u64) -> String {
    json!({"op": 0, "t": "MESSAGE_CREATE", "s": seq, "d": {
        "id": (1_000_000_000_000 + seq as u64).to_string(), "channel_id": channel.to_string(), "guild_id": guild.to_string(),
        "content": "!ping", "type": 0, "tts": false, "pinned": false, "mention_everyone": false,
        "mentions": [], "mention_roles": [], "attachments": [], "embeds": [], "components": [], "flags": 0,
        "timestamp": "2026-11-22T05:00:00.000000+00:00", "edited_timestamp": null,
        "author": {"id": user.to_string(), "username": "ada", "global_name": "Ada", "avatar": null, "discriminator": "0"},
        "member": {"roles": [], "joined_at": "2026-01-01T00:00:00.000000+00:00", "deaf": false, "mute": false, "flags": 0},
    }})
    .to_string()
}

/// Feeds `events` raw MESSAGE_CREATE payloads through the router from `lanes` concurrent loops.
async fn feed(rig: &Rig, payloads: Arc<Vec<String>>, lanes: usize) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for lane in 0..lanes {
        let (router, egress, payloads) = (rig.router.clone(), rig.egress.clone(), payloads.clone());
        tasks.push(tokio::spawn(async move {
            for p in payloads.iter().skip(lane).step_by(lanes) {
                router.on_gateway_payload(p, &egress).await;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(start.elapsed().as_secs_f64())
}

pub fn ingest(o: &IngestOptions) -> anyhow::Result<serde_json::Value> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let fake = FakeDiscord::start(FakeConfig { check_schemas: false, ..FakeConfig::default() }).await?;
        let user = fake.add_user("ada");
        let guild = fake.add_guild("g", user);
        let channel = fake.add_text_channel(guild, "c");
        let mut results = serde_json::Map::new();
        results.insert("gateway".into(), through_gateway(&fake, o.events, channel, user).await?);
        for lanes in [1, 4, 16] {
            let rig = rig(&fake).await?;
            let payloads: Arc<Vec<String>> =
                Arc::new((0..o.events).map(|i| message_payload(i + 1, channel, guild, user)).collect());
            let secs = feed(&rig, payloads, lanes).await?;
            let enqueued = rig.queue.depth(&rig.spec.name).await?.total();
            anyhow::ensure!(
                enqueued == JOBS_PER_EVENT * o.events as u64,
                "enqueued {enqueued} jobs of {} events",
                o.events
            );
            results.insert(
                format!("router_only_{lanes}_lanes"),
                json!({"events": o.events, "seconds": secs, "per_sec": (o.events as f64 / secs).round()}),
            );
            rig.store.close().await?;
        }
        Ok(json!({
            "scenario": "ingest",
            "what": "MESSAGE_CREATE events (`!ping`) parsed, offered to every module `den run` runs (status, personas \
                     with the three shipped personas, campaigns) and their jobs (two per event) durably enqueued; \
                     `gateway` goes fake Discord -> WebSocket -> den's shard -> router -> SQLite queue (the fake's own \
                     work shares the 2 cores); `router_only_N_lanes` feeds raw payloads to the router from N loops",
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "results": results,
            "target_per_sec": 20_000,
        }))
    })
}

/// Starts one shard on `rig` against `fake`; returns the stop token, the task and the status.
async fn gateway(
    fake: &FakeDiscord,
    rig: &Rig,
) -> anyhow::Result<(
    CancellationToken,
    tokio::task::JoinHandle<Result<(), den_discord::gateway::FatalClose>>,
    ShardStatus,
)> {
    let store: Arc<dyn Store> = rig.store.clone();
    shard(fake, &store, rig.router.clone(), rig.egress.clone()).await
}

/// One shard feeding `router`, once it is ready; for other scenarios.
pub(crate) async fn start_gateway(
    fake: &FakeDiscord,
    store: &Arc<dyn Store>,
    router: Arc<Router>,
    egress: Arc<Egress>,
) -> anyhow::Result<(CancellationToken, tokio::task::JoinHandle<Result<(), den_discord::gateway::FatalClose>>)> {
    let (stop, task, _) = shard(fake, store, router, egress).await?;
    Ok((stop, task))
}

async fn shard(
    fake: &FakeDiscord,
    store: &Arc<dyn Store>,
    router: Arc<Router>,
    egress: Arc<Egress>,
) -> anyhow::Result<(
    CancellationToken,
    tokio::task::JoinHandle<Result<(), den_discord::gateway::FatalClose>>,
    ShardStatus,
)> {
    let stop = CancellationToken::new();
    let status = ShardStatus::default();
    let gw = Gateway {
        config: GatewayConfig {
            token: Secret::new(fake.bot_token()),
            intents: den_discord::gateway::intents_from_names(&["guilds", "guild_messages", "message_content"])
                .unwrap_or(0),
            shards: 1,
            shard_ids: None,
            gateway_url: Some(fake.gateway_url()),
        },
        identify: StoreIdentifyQueue::new(
            store.table(TableSpec::new("discord_identify")).await?,
            Arc::new(SystemClock),
            1,
        ),
        sessions: store.table(TableSpec::new("discord_sessions")).await?,
        router,
        egress,
        status: status.clone(),
        senders: den_discord::gateway::ShardSenders::default(),
    };
    let task = tokio::spawn(gw.run(stop.clone()));
    while !status.all_ready() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((stop, task, status))
}

async fn through_gateway(
    fake: &FakeDiscord,
    events: usize,
    channel: u64,
    user: u64,
) -> anyhow::Result<serde_json::Value> {
    let rig = rig(fake).await?;
    let (stop, task, _status) = gateway(fake, &rig).await?;
    let start = Instant::now();
    for _ in 0..events {
        fake.post_as(user, channel, "!ping");
    }
    let dispatched = start.elapsed().as_secs_f64();
    loop {
        let queued = rig.queue.depth(&rig.spec.name).await?.total();
        if queued >= JOBS_PER_EVENT * events as u64 {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(300),
            "{queued} jobs of {} events arrived in 300 s",
            events
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    stop.cancel();
    let _ = task.await;
    rig.store.close().await?;
    Ok(
        json!({"events": events, "seconds": secs, "fake_dispatch_seconds": dispatched, "per_sec": (events as f64 / secs).round()}),
    )
}

pub fn interactions(o: &InteractionsOptions) -> anyhow::Result<serde_json::Value> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let mut results = serde_json::Map::new();
        for path in [Path::Http, Path::Gateway] {
            results.insert(path.name().into(), interactions_through(o, path).await?);
        }
        Ok(json!({
            "scenario": "interactions",
            "what": "a slash command to its first response, with den's workers finishing each /status: `http` is \
                     Discord's POST to den's endpoint (Ed25519 verified, routed, job enqueued, deferral in the HTTP \
                     answer) to the answer's arrival; `gateway` is INTERACTION_CREATE over the WebSocket to the \
                     callback POST's arrival; the fake rate-limits the callback and webhook routes as Discord does",
            "offered_per_sec": o.rate, "seconds": o.seconds, "workers": !o.no_workers,
            "fake_checks_schemas": o.check_schemas,
            "results": results,
            "target_p99_ms": 5.0, "discord_allows_ms": 3000,
        }))
    })
}

/// How interactions reach den.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// Signed HTTP POSTs to den's interactions endpoint.
    Http,
    /// INTERACTION_CREATE over the gateway, answered with a callback POST.
    Gateway,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Http => "http",
            Path::Gateway => "gateway",
        }
    }
}

async fn interactions_through(o: &InteractionsOptions, path: Path) -> anyhow::Result<serde_json::Value> {
    let fake = FakeDiscord::start(FakeConfig {
        rate_limits: RateLimits::default(),
        check_schemas: o.check_schemas,
        ..FakeConfig::default()
    })
    .await?;
    let user = fake.add_user("ada");
    let guild = fake.add_guild("g", user);
    let channel = fake.add_text_channel(guild, "c");
    let rig = rig(&fake).await?;
    let stop = CancellationToken::new();
    // Workers run too, as in `den run`: they finish each /status while ingress keeps acknowledging.
    let mut handlers = Handlers::new();
    for m in &rig.modules {
        for (kind, h) in m.clone().handlers() {
            handlers = handlers.with(kind, h);
        }
    }
    let config = WorkerConfig { concurrency: o.workers, ..WorkerConfig::default() };
    let pool = WorkerPool::new(rig.queue.clone(), rig.spec.clone(), handlers, rig.metrics.clone(), config);
    let workers = if o.no_workers { tokio::spawn(async {}) } else { tokio::spawn(pool.run(stop.clone())) };
    let ingress = match path {
        Path::Gateway => Ingress::Gateway(gateway(&fake, &rig).await?),
        Path::Http => {
            endpoint(&fake, &rig, stop.clone()).await?;
            Ingress::Http
        }
    };
    let total = o.rate * o.seconds;
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / o.rate as f64));
    let mut tokens = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        ticks.tick().await;
        tokens.push(fake.invoke_command(user, channel, "status", &[]));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let finished = |t: &String| {
        fake.interaction(t).and_then(|i| i.original).and_then(|m| fake.message(m)).is_some_and(|m| m.edits > 0)
    };
    while (tokens.iter().any(|t| fake.interaction(t).is_none_or(|i| i.callback.is_none()))
        || (!o.no_workers && !tokens.iter().all(finished)))
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut samples: Vec<f64> = tokens
        .iter()
        .filter_map(|t| fake.interaction(t))
        .filter_map(|i| i.responded_at.and_then(|r| r.duration_since(i.created).ok()))
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    let answered = samples.len();
    let completed = tokens.iter().filter(|t| finished(t)).count();
    samples.sort_by(f64::total_cmp);
    stop.cancel();
    if let Ingress::Gateway((gw_stop, task, _)) = ingress {
        gw_stop.cancel();
        let _ = task.await;
    }
    workers.await?;
    rig.store.close().await?;
    anyhow::ensure!(fake.violations().is_empty(), "spec violations: {:?}", fake.violations());
    Ok(json!({
        "interactions": total, "answered": answered, "completed_by_workers": completed,
        "p50_ms": crate::quantile(&samples, 0.5), "p99_ms": crate::quantile(&samples, 0.99),
        "max_ms": samples.last().copied().unwrap_or(f64::NAN),
        "discord_429s": fake.rate_limited(),
    }))
}

/// How a run's interactions come in (kept alive for the run).
enum Ingress {
    Gateway((CancellationToken, tokio::task::JoinHandle<Result<(), den_discord::gateway::FatalClose>>, ShardStatus)),
    Http,
}

/// den's HTTP interactions endpoint on 127.0.0.1, registered with the fake as
/// the application's Interactions Endpoint URL.
async fn endpoint(fake: &FakeDiscord, rig: &Rig, stop: CancellationToken) -> anyhow::Result<()> {
    let key = den_discord::interactions::parse_public_key(&fake.public_key_hex()).map_err(anyhow::Error::msg)?;
    let app = den_discord::interactions::endpoint("/interactions", key, rig.router.clone(), Arc::new(SystemClock));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let listener = axum::serve::ListenerExt::tap_io(listener, |s| {
        let _ = s.set_nodelay(true);
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await;
    });
    fake.set_interactions_endpoint(Some(format!("http://{addr}/interactions")));
    Ok(())
}
