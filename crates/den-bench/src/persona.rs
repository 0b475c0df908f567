//! `den-bench persona` and `den-bench recall`: the personas module's
//! reply latency against the fake Discord and a fake model, and memory
//! recall over a large guild.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use den_core::{Clock, Secret, SystemClock};
use den_discord::{Egress, EgressConfig, Module, Router};
use den_llm::openai::OpenAiCompatible;
use den_llm::{ChatModel, ProviderConfig};
use den_ops::Metrics;
use den_personas::memory::{Memory as _, MemoryStore, SqliteMemory};
use den_personas::module::Deps;
use den_personas::{Models, Persona, PersonaSet, PersonasConfig, PersonasModule};
use den_storage::sqlite::{SqliteOptions, SqliteStore};
use den_storage::{Queue, QueueSpec, Store, TableSpec};
use den_testkit::llm::{FakeLlm, Script, Wire};
use den_testkit::{FakeConfig, FakeDiscord};
use den_worker::{Handlers, JobQueue, WorkerConfig, WorkerPool};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Options of `persona`.
#[derive(Debug, clap::Args)]
pub struct PersonaOptions {
    /// Messages that address a persona.
    #[arg(long, default_value_t = 500)]
    messages: usize,
    /// Messages per second offered (spread over the channels).
    #[arg(long, default_value_t = 10)]
    rate: u64,
    /// Channels (each has its own webhook and rate-limit bucket).
    #[arg(long, default_value_t = 20)]
    channels: usize,
    /// The fake model's time to first token, in milliseconds.
    #[arg(long, default_value_t = 200)]
    ttft_ms: u64,
}

/// Options of `recall`.
#[derive(Debug, clap::Args)]
pub struct RecallOptions {
    /// Facts stored in the guild.
    #[arg(long, default_value_t = 100_000)]
    facts: usize,
    /// People they are about.
    #[arg(long, default_value_t = 2_000)]
    people: usize,
    /// Recall queries to time.
    #[arg(long, default_value_t = 2_000)]
    queries: usize,
}

const WORDS: &[&str] = &[
    "garden",
    "tortoise",
    "violin",
    "marathon",
    "sourdough",
    "chess",
    "kayak",
    "jazz",
    "pottery",
    "origami",
    "cheese",
    "volcano",
    "bicycle",
    "telescope",
    "cactus",
    "saxophone",
    "knitting",
    "rugby",
    "sushi",
    "lighthouse",
    "parrot",
    "tango",
    "crossword",
    "hamster",
    "espresso",
    "canoe",
    "museum",
    "poetry",
    "skateboard",
    "dumpling",
    "glacier",
    "karaoke",
    "lasagna",
    "meteor",
    "noodle",
    "orchestra",
    "penguin",
    "quilt",
    "robot",
    "sailing",
    "trombone",
    "unicycle",
    "waffle",
    "yoga",
    "zeppelin",
    "archery",
    "banjo",
    "climbing",
    "dragon",
    "falconry",
];

fn sentence(seed: u64, n: usize) -> String {
    let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        out.push(WORDS[(x % WORDS.len() as u64) as usize]);
    }
    format!("likes {} and {}", out[..n / 2].join(" "), out[n / 2..].join(" "))
}

pub fn recall(o: &RecallOptions) -> anyhow::Result<serde_json::Value> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let dir = tempfile::tempdir()?;
        let memory = SqliteMemory::open(&dir.path().join("memory.db"))?;
        let now = SystemClock.now();
        let (facts, people) = (o.facts, o.people.max(1));
        let load = Instant::now();
        memory
            .run(move |c| {
                let tx = c.transaction()?;
                {
                    let mut stmt = tx.prepare(
                        "INSERT INTO facts(guild, user_id, persona, text, importance, source, updated_ms, scope)
                         VALUES (1, ?1, NULL, ?2, ?3, 'remember', ?4, 'sg1u' || ?1)",
                    )?;
                    for i in 0..facts {
                        let user = (i % people) as i64 + 1;
                        let importance = (i % 10) as f64 / 10.0;
                        stmt.execute(rusqlite::params![
                            user,
                            sentence(i as u64, 8),
                            importance,
                            now.0 - i as i64 * 1000
                        ])?;
                    }
                }
                tx.commit()?;
                Ok(())
            })
            .await?;
        let loaded = load.elapsed().as_secs_f64();
        let mut samples = Vec::with_capacity(o.queries);
        let mut returned = 0usize;
        for q in 0..o.queries {
            let user = (q % people) as u64 + 1;
            let query = format!("what about {}?", sentence(q as u64 * 7919, 4));
            let start = Instant::now();
            let r = memory.recall(1, "grumpy-gran", user, &query, 8, now).await?;
            samples.push(start.elapsed().as_secs_f64() * 1000.0);
            returned += r.len();
        }
        samples.sort_by(f64::total_cmp);
        Ok(json!({
            "scenario": "recall",
            "what": "MemoryStore::recall for one person of a guild holding all the facts: the person's recent facts \
                     plus older FTS5 matches, scored with BM25, importance and recency; measured from the caller \
                     (blocking-pool hop included); a 50-word vocabulary, so every query word is in ~16% of facts",
            "facts": facts, "people": people, "queries": o.queries, "load_seconds": loaded,
            "mean_returned": returned as f64 / o.queries as f64,
            "p50_ms": crate::quantile(&samples, 0.5), "p99_ms": crate::quantile(&samples, 0.99),
            "max_ms": samples.last().copied().unwrap_or(f64::NAN),
            "target_p99_ms": 5.0,
        }))
    })
}

pub fn persona(o: &PersonaOptions) -> anyhow::Result<serde_json::Value> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let fake = FakeDiscord::start(FakeConfig::default()).await?;
        let user = fake.add_user("ada");
        let guild = fake.add_guild("g", user);
        let channels: Vec<u64> = (0..o.channels.max(1)).map(|i| fake.add_text_channel(guild, &format!("c{i}"))).collect();
        let llm = FakeLlm::start(Wire::OpenAi, None).await?;
        let ttft = Duration::from_millis(o.ttft_ms);
        llm.set_default(Script::reply("Well, I never. That is the silliest thing I have heard all week, dear.").ttft(ttft));

        let dir = tempfile::tempdir()?;
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&SqliteOptions::new(dir.path().join("den.db")), Arc::new(SystemClock))?);
        let queue: Arc<dyn Queue> = store.queue();
        let spec = QueueSpec::with_dlq("den-jobs");
        queue.create_queue(&spec).await?;
        let metrics = Metrics::new();
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let egress_config = EgressConfig {
            token: Some(Secret::new(fake.bot_token())),
            api_proxy: Some(fake.rest_addr()),
            timeout: Duration::from_secs(10),
        };
        let webhooks = store.table(TableSpec::new("discord_webhooks")).await?;
        let egress = Arc::new(Egress::new(&egress_config, fake.app_id(), Some(webhooks)));
        let jobs = JobQueue::new(queue.clone(), spec.name.clone(), metrics.clone());
        let gran: Persona = toml::from_str(
            "id = \"grumpy-gran\"\nname = \"Grumpy Gran\"\nnickname = \"Gran\"\nmodelled_on = \"an invented grandmother\"\n",
        )?;
        let model: Arc<dyn ChatModel> = Arc::new(OpenAiCompatible::new(ProviderConfig {
            name: "fake".into(),
            base_url: llm.base_url(),
            api_key: None,
            model: "m".into(),
            extra_headers: vec![],
            connect_timeout: Duration::from_secs(2),
        })?);
        let config = PersonasConfig { user_per_minute: 100_000, channel_per_minute: 100_000, ..PersonasConfig::default() };
        let module = PersonasModule::new(Deps {
            egress: egress.clone(),
            bot_egress: EgressConfig { token: None, ..egress_config.clone() },
            env: Vec::new(),
            posts: den_discord::posts::PostLedger::new(store.table(den_discord::posts::table_spec()).await?),
            personas: Arc::new(PersonaSet::fixed(vec![gran])),
            memory: MemoryStore::open(&dir.path().join("memory.db"))?,
            state: den_personas::state::State::new(store.table(den_personas::state::table_spec()).await?),
            ledger: den_llm::ledger::Ledger::new(store.table(den_llm::ledger::table_spec()).await?, clock.clone()),
            models: Some(Models { default: model, by_provider: HashMap::new() }),
            jobs: jobs.clone(),
            clock: clock.clone(),
            config,
        })
        .map_err(anyhow::Error::msg)?;
        let modules: Vec<Arc<dyn Module>> = vec![module];
        let router = Arc::new(Router::new(modules.clone(), jobs, clock, metrics.clone()));
        router.set_bot_user_id(fake.bot_user_id());
        let mut handlers = Handlers::new();
        for m in &modules {
            for (kind, h) in m.clone().handlers() {
                handlers = handlers.with(kind, h);
            }
        }
        let stop = CancellationToken::new();
        let config = WorkerConfig { poll_wait: Duration::from_millis(500), ..WorkerConfig::default() };
        let workers = tokio::spawn(WorkerPool::new(queue.clone(), spec.clone(), handlers, metrics.clone(), config).run(stop.clone()));
        let (gw_stop, gateway) = crate::discord::start_gateway(&fake, &store, router.clone(), egress.clone()).await?;

        // Warm up: each channel's webhook is created once, as in a running den.
        for &c in &channels {
            fake.post_as(user, c, "Gran, hello");
        }
        wait_for_replies(&fake, &channels, channels.len()).await?;

        let before: usize = channels.iter().map(|c| persona_messages(&fake, *c).len()).sum();
        let mut asked = Vec::with_capacity(o.messages);
        let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / o.rate.max(1) as f64));
        for i in 0..o.messages {
            ticks.tick().await;
            let c = channels[i % channels.len()];
            let id = fake.post_as(user, c, &format!("Gran, what do you make of message {i}?"));
            asked.push((c, id));
        }
        wait_for_replies(&fake, &channels, before + o.messages).await?;
        let mut samples = Vec::with_capacity(o.messages);
        for (c, id) in &asked {
            let Some(trigger) = fake.message(*id) else { continue };
            let first = persona_messages(&fake, *c)
                .into_iter()
                .filter(|m| m.created >= trigger.created)
                .map(|m| m.created)
                .min();
            if let Some(at) = first {
                let total = at.duration_since(trigger.created).unwrap_or_default();
                samples.push((total.as_secs_f64() - ttft.as_secs_f64()) * 1000.0);
            }
        }
        samples.sort_by(f64::total_cmp);
        stop.cancel();
        gw_stop.cancel();
        let _ = gateway.await;
        workers.await?;
        let limited = fake.rate_limited();
        anyhow::ensure!(fake.violations().is_empty(), "spec violations: {:?}", fake.violations());
        Ok(json!({
            "scenario": "persona",
            "what": "fake Discord delivers MESSAGE_CREATE over the gateway -> shard -> router -> SQLite queue -> worker -> \
                     transcript, limits, recall, prompt -> fake model (streaming) -> first words posted through the \
                     channel's webhook; the time until the fake records that message, minus the model's time to first token",
            "messages": o.messages, "offered_per_sec": o.rate, "channels": channels.len(), "model_ttft_ms": o.ttft_ms,
            "measured": samples.len(),
            "p50_ms": crate::quantile(&samples, 0.5), "p99_ms": crate::quantile(&samples, 0.99),
            "max_ms": samples.last().copied().unwrap_or(f64::NAN),
            "discord_429s": limited,
            "target_p50_ms": 30.0,
        }))
    })
}

fn persona_messages(fake: &FakeDiscord, channel: u64) -> Vec<den_testkit::discord::Message> {
    fake.messages(channel).into_iter().filter(|m| m.webhook_id.is_some()).collect()
}

async fn wait_for_replies(fake: &FakeDiscord, channels: &[u64], n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let have: usize = channels.iter().map(|c| persona_messages(fake, *c).len()).sum();
        if have >= n {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "only {have} of {n} persona replies arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
