//! `den-bench chaos`: den's promises measured under faults.
//!
//! `den gateway` and two `den worker` processes share one SQLite store (by
//! file) and run against the fake Discord and a fake model. A mixed load of
//! trials (persona mentions, `/ask`, `/remember`, `/add-campaign`, `/status`)
//! goes in while, at moments drawn from a seeded generator, a worker or the
//! gateway is killed (SIGKILL) and restarted, the gateway connection drops,
//! the store refuses writes for a while, Discord answers 500 or loses its
//! answer after doing the work, and the model hangs or cuts its stream.
//! Afterwards the report counts, from the fake's world and den's store, what
//! every trial left behind: nothing lost, nothing twice, nothing adopted.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use den_core::{Job, SystemClock};
use den_storage::Queue as _;
use den_storage::sqlite::{SqliteOptions, SqliteStore};
use den_testkit::discord::{Bucket, CommandOption, Injected, RateLimits};
use den_testkit::llm::{FakeLlm, Fault, Script, Wire};
use den_testkit::{FakeConfig, FakeDiscord};
use serde_json::{Value, json};

/// Options of the chaos run.
#[derive(Clone, Debug, clap::Args)]
pub struct ChaosOptions {
    /// Trials (user actions) to run.
    #[arg(long, default_value_t = 200)]
    pub trials: usize,
    /// Seed of the generator that picks trials and faults.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Time between trials, in milliseconds.
    #[arg(long, default_value_t = 250)]
    pub spacing_ms: u64,
    /// A fault every this many trials, on average.
    #[arg(long, default_value_t = 6)]
    pub fault_every: usize,
    /// The den binary (default: beside this one).
    #[arg(long)]
    pub den: Option<PathBuf>,
    /// Write every log line of the den processes to this file (JSON lines).
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// The den processes' log filter.
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

/// A small deterministic generator (splitmix64): the same seed, the same run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// What a trial is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Trial {
    Mention,
    Ask,
    Remember,
    Campaign,
    Status,
}

impl Trial {
    fn name(self) -> &'static str {
        match self {
            Trial::Mention => "mention",
            Trial::Ask => "ask",
            Trial::Remember => "remember",
            Trial::Campaign => "add-campaign",
            Trial::Status => "status",
        }
    }

    fn draw(rng: &mut Rng) -> Self {
        match rng.below(100) {
            0..35 => Trial::Mention,
            35..55 => Trial::Ask,
            55..75 => Trial::Remember,
            75..85 => Trial::Campaign,
            _ => Trial::Status,
        }
    }
}

/// A fault the run injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum FaultKind {
    KillWorker,
    KillGateway,
    DropGateway,
    StoreDown,
    Discord500,
    DiscordLostAnswer,
    ModelHang,
    ModelCut,
}

impl FaultKind {
    const ALL: [FaultKind; 8] = [
        FaultKind::KillWorker,
        FaultKind::KillGateway,
        FaultKind::DropGateway,
        FaultKind::StoreDown,
        FaultKind::Discord500,
        FaultKind::DiscordLostAnswer,
        FaultKind::ModelHang,
        FaultKind::ModelCut,
    ];

    fn name(self) -> &'static str {
        match self {
            FaultKind::KillWorker => "sigkill_worker",
            FaultKind::KillGateway => "sigkill_gateway",
            FaultKind::DropGateway => "drop_gateway_connection",
            FaultKind::StoreDown => "store_refuses_writes",
            FaultKind::Discord500 => "discord_500",
            FaultKind::DiscordLostAnswer => "discord_lost_answer_after_commit",
            FaultKind::ModelHang => "model_hang",
            FaultKind::ModelCut => "model_cut_stream",
        }
    }
}

/// Discord operations den uses for side effects, where faults are injected.
const WRITES: &[&str] = &[
    "create_message",
    "execute_webhook",
    "create_guild_channel",
    "create_guild_role",
    "update_original_webhook_message",
    "create_interaction_response",
];

/// A den process and the log lines it wrote.
struct Proc {
    role: &'static str,
    child: Child,
}

impl Proc {
    /// Starts `den ROLE`, as a supervisor would: a process that exits before
    /// it is up (its store locked at that moment, say) is started again.
    fn start(
        den: &Path,
        dir: &Path,
        role: &'static str,
        env: &[(String, String)],
        log: Arc<Mutex<Vec<Value>>>,
    ) -> anyhow::Result<Self> {
        let mut last = anyhow::anyhow!("not started");
        for _ in 0..10 {
            match Self::start_once(den, dir, role, env, log.clone()) {
                Ok(p) => return Ok(p),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        Err(last)
    }

    fn start_once(
        den: &Path,
        dir: &Path,
        role: &'static str,
        env: &[(String, String)],
        log: Arc<Mutex<Vec<Value>>>,
    ) -> anyhow::Result<Self> {
        let mut child = Command::new(den)
            .current_dir(dir)
            .args(["--log-format", "json", role])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().ok_or_else(|| anyhow::anyhow!("no stderr"))?;
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let lines = log;
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
                if v["message"].as_str().is_some_and(|m| m.starts_with("den started")) {
                    let _ = started_tx.send(());
                }
                lines.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(v);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if started_rx.recv_timeout(Duration::from_millis(100)).is_ok() {
                return Ok(Self { role, child });
            }
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("den {role} exited before it started ({status})");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                anyhow::bail!("den {role} did not start in 30 s");
            }
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The fake model's answer: the trial's marker first, so even a stream cut
/// after one token shows whose answer it was.
fn echo_marker(request: &Value) -> String {
    let text = request.to_string();
    let marker = text
        .match_indices("chaos-")
        .last()
        .map(|(at, _)| text[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect::<String>())
        .unwrap_or_else(|| "no-marker".into());
    format!("{marker} heard you, dear. Now put the kettle on.")
}

const GRAN: &str = "id = \"grumpy-gran\"\nname = \"Grumpy Gran\"\nnickname = \"Gran\"\nmodelled_on = \"an invented grandmother\"\ntraits = [\"blunt\"]\n";

/// Runs the chaos scenario.
pub fn run(o: &ChaosOptions) -> anyhow::Result<Value> {
    let den = match &o.den {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("den"),
    };
    anyhow::ensure!(den.exists(), "no den binary at {} (build it, or pass --den)", den.display());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let _guard = rt.enter();
    let limits = RateLimits { guild_writes: Bucket::new(50, Duration::from_secs(1)), ..RateLimits::default() };
    let fake = rt.block_on(FakeDiscord::start(FakeConfig {
        bot_token: "chaos-token".into(),
        rate_limits: limits,
        ..FakeConfig::default()
    }))?;
    let llm = rt.block_on(FakeLlm::start(Wire::OpenAi, Some("chaos-key")))?;
    llm.set_default(Script::from_request(echo_marker).ttft(Duration::from_millis(30)));
    let world = World::new(&fake);
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("personas"))?;
    std::fs::write(dir.path().join("personas/grumpy-gran.toml"), GRAN)?;
    std::fs::write(
        dir.path().join("den.toml"),
        format!(
            "[llm]\nprimary = \"fake\"\nmax_attempts = 2\nfirst_token_timeout_secs = 2\ntotal_timeout_secs = 10\n\n\
             [[llm.provider]]\nname = \"fake\"\nkind = \"openai\"\nbase_url = \"{}\"\nmodel = \"m\"\nkey_env = \"FAKE_LLM_KEY\"\n",
            llm.base_url()
        ),
    )?;
    let env: Vec<(String, String)> = [
        ("DISCORD_TOKEN", "chaos-token".to_owned()),
        ("FAKE_LLM_KEY", "chaos-key".to_owned()),
        ("DEN_DISCORD__API_PROXY", fake.rest_addr()),
        ("DEN_DISCORD__GATEWAY_URL", fake.gateway_url()),
        ("DEN_OPS__LISTEN", "127.0.0.1:0".to_owned()),
        ("DEN_WORKER__POLL_WAIT_SECS", "1".to_owned()),
        ("DEN_WORKER__JOB_TIMEOUT_SECS", "20".to_owned()),
        ("DEN_WORKER__BACKOFF_BASE_MS", "300".to_owned()),
        ("DEN_WORKER__BACKOFF_MAX_SECS", "5".to_owned()),
        ("DEN_QUEUE__MAX_RECEIVE_COUNT", "10".to_owned()),
        ("DEN_PERSONAS__USER_PER_MINUTE", "1000".to_owned()),
        ("DEN_PERSONAS__CHANNEL_PER_MINUTE", "1000".to_owned()),
        ("DEN_PERSONAS__CONSOLIDATE_EVERY", "0".to_owned()),
        ("DEN_PERSONAS__STREAM_EDIT_MS", "0".to_owned()),
        ("DEN_LOG__LEVEL", o.log_level.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut procs = vec![
        Proc::start(&den, dir.path(), "gateway", &env, log.clone())?,
        Proc::start(&den, dir.path(), "worker", &env, log.clone())?,
        Proc::start(&den, dir.path(), "worker", &env, log.clone())?,
    ];
    rt.block_on(fake.wait_until("the gateway is connected", Duration::from_secs(30), |f| f.connected_sessions() == 1));

    let started = Instant::now();
    let mut rng = Rng(o.seed);
    let mut trials: Vec<(Trial, String)> = Vec::new();
    let mut faults: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut store_lock: Option<std::thread::JoinHandle<()>> = None;
    for i in 0..o.trials {
        let trial = Trial::draw(&mut rng);
        let marker = format!("chaos-{i}");
        world.act(&fake, trial, &marker);
        trials.push((trial, marker));
        if rng.below(o.fault_every.max(1) as u64) == 0 {
            let fault = FaultKind::ALL[rng.below(FaultKind::ALL.len() as u64) as usize];
            *faults.entry(fault.name()).or_default() += 1;
            match fault {
                FaultKind::KillWorker | FaultKind::KillGateway => {
                    let role = if fault == FaultKind::KillGateway { "gateway" } else { "worker" };
                    let which = procs.iter().position(|p| p.role == role).unwrap_or(0)
                        + usize::from(role == "worker" && rng.below(2) == 1);
                    procs[which].kill();
                    std::thread::sleep(Duration::from_millis(200 + rng.below(800)));
                    procs[which] = Proc::start(&den, dir.path(), role, &env, log.clone())?;
                }
                FaultKind::DropGateway => fake.gateway_drop_connections(),
                FaultKind::StoreDown => {
                    if store_lock.as_ref().is_none_or(std::thread::JoinHandle::is_finished) {
                        store_lock =
                            Some(hold_write_lock(dir.path().join("den-data/den.db"), Duration::from_millis(6_000)));
                    }
                }
                FaultKind::Discord500 | FaultKind::DiscordLostAnswer => {
                    let op = WRITES[rng.below(WRITES.len() as u64) as usize];
                    let injected =
                        if fault == FaultKind::Discord500 { Injected::Status(500) } else { Injected::DropAfterCommit };
                    fake.inject(op, injected);
                }
                FaultKind::ModelHang => llm.push(Script::fault(Fault::Hang)),
                FaultKind::ModelCut => llm.push(Script::from_request(echo_marker).with_fault(Fault::CutAfter(2))),
            }
        }
        std::thread::sleep(Duration::from_millis(o.spacing_ms));
    }
    let load_seconds = started.elapsed().as_secs_f64();
    if let Some(h) = store_lock {
        let _ = h.join();
    }
    let quiet = rt.block_on(settle(&dir.path().join("den-data/den.db")))?;
    let report = rt.block_on(world.report(&fake, &trials, dir.path(), &log))?;
    for p in &mut procs {
        p.kill();
    }
    if let Some(path) = &o.log {
        let lines = log.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        std::fs::write(path, lines.iter().map(|l| format!("{l}\n")).collect::<String>())?;
    }
    Ok(json!({
        "scenario": "chaos",
        "what": "den gateway + 2 den worker processes sharing one SQLite file, against the fake Discord and a fake model; \
                 a seeded mix of persona mentions, /ask, /remember, /add-campaign and /status while processes are \
                 SIGKILLed and restarted, the gateway connection drops, the store refuses writes, Discord answers 500 \
                 or loses answers after doing the work, and the model hangs or cuts its stream",
        "seed": o.seed, "trials": o.trials, "load_seconds": load_seconds, "settled": quiet,
        "faults": faults,
        "report": report,
        "goal": "zero lost, zero duplicated side effects",
    }))
}

/// Holds SQLite's write lock on `db` for `hold` from another connection:
/// den's writes wait out their 5 s busy timeout, then fail.
fn hold_write_lock(db: PathBuf, hold: Duration) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let Ok(conn) = rusqlite::Connection::open(&db) else { return };
        if conn.execute_batch("BEGIN IMMEDIATE").is_ok() {
            std::thread::sleep(hold);
            let _ = conn.execute_batch("ROLLBACK");
        }
    })
}

/// Waits until the job queue is empty (nothing waiting, running or delayed)
/// for two seconds in a row, or three minutes pass; whether it settled.
async fn settle(db: &Path) -> anyhow::Result<bool> {
    let store = SqliteStore::open(&SqliteOptions::new(db), Arc::new(SystemClock))?;
    let queue = store.queue();
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut quiet_since: Option<Instant> = None;
    let settled = loop {
        let depth = queue.depth("den-jobs").await?;
        if depth.total() == 0 {
            let since = *quiet_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= Duration::from_secs(2) {
                break true;
            }
        } else {
            quiet_since = None;
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    store.close().await?;
    Ok(settled)
}

/// The server the trials happen in, and what was there before them.
struct World {
    admin: u64,
    guild: u64,
    /// Each trial's own channel, so that what den says there is that trial's.
    channels: Mutex<Vec<u64>>,
    /// The server's own role and category, named as a campaign's would be.
    decoys: (u64, u64),
}

impl World {
    fn new(fake: &FakeDiscord) -> Self {
        let admin = fake.add_user("ada");
        let guild = fake.add_guild("chaos", admin);
        let decoys = (fake.add_role(guild, "Decoy Members"), fake.add_category(guild, "Decoy"));
        Self { admin, guild, channels: Mutex::default(), decoys }
    }

    fn act(&self, fake: &FakeDiscord, trial: Trial, marker: &str) {
        let channel = fake.add_text_channel(self.guild, marker);
        self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(channel);
        match trial {
            Trial::Mention => {
                fake.post_as(self.admin, channel, &format!("Gran, what do you make of {marker}?"));
            }
            Trial::Ask => {
                let options = [
                    CommandOption::string("persona", "gran"),
                    CommandOption::string("question", &format!("is {marker} real?")),
                ];
                fake.invoke_command(self.admin, channel, "ask", &options);
            }
            Trial::Remember => {
                fake.invoke_command(
                    self.admin,
                    channel,
                    "remember",
                    &[CommandOption::string("text", &format!("I collect {marker}"))],
                );
            }
            Trial::Campaign => {
                fake.invoke_command(
                    self.admin,
                    channel,
                    "add-campaign",
                    &[CommandOption::string("name", &campaign(marker))],
                );
            }
            Trial::Status => {
                // Each /status from its own person, so an answer posted in the channel names whose it is.
                let person = fake.add_user(marker);
                fake.add_member(self.guild, person);
                fake.invoke_command(person, channel, "status", &[]);
            }
        }
    }

    async fn report(
        &self,
        fake: &FakeDiscord,
        trials: &[(Trial, String)],
        dir: &Path,
        log: &Arc<Mutex<Vec<Value>>>,
    ) -> anyhow::Result<Value> {
        let dlq = dead_letters(&dir.join("den-data/den.db"), log).await?;
        let facts = rusqlite::Connection::open_with_flags(
            dir.join("den-data/memory.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        let mut messages = Vec::new();
        let trial_channels = self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        for c in &trial_channels {
            messages.extend(fake.messages(*c));
        }
        let channels = fake.channels(self.guild);
        let roles = fake.roles(self.guild);
        let mut by_kind: BTreeMap<&'static str, Counts> = BTreeMap::new();
        let mut lost_trials = Vec::new();
        let mut duplicated_trials = Vec::new();
        for (trial, marker) in trials {
            let in_dlq = dlq.iter().any(|d| d["marker"] == marker.as_str());
            let count = match trial {
                Trial::Mention | Trial::Ask => messages
                    .iter()
                    .filter(|m| m.webhook_id.is_some() && m.content.split_whitespace().any(|w| w == marker.as_str()))
                    .count(),
                Trial::Remember => facts.query_row(
                    "SELECT count(*) FROM facts WHERE text = ?1",
                    [format!("I collect {marker}")],
                    |r| r.get::<_, i64>(0),
                )? as usize,
                Trial::Campaign => {
                    let name = campaign(marker);
                    let categories: Vec<_> = channels.iter().filter(|c| c.kind == 4 && c.name == name).collect();
                    let complete = categories.len() == 1
                        && channels.iter().filter(|c| c.parent_id == Some(categories[0].id)).count() == 11
                        && roles.iter().filter(|r| r.name == format!("{name} Members")).count() == 1
                        && roles.iter().filter(|r| r.name == format!("{name} GM")).count() == 1;
                    if categories.len() > 1 || roles.iter().filter(|r| r.name == format!("{name} Members")).count() > 1
                    {
                        2
                    } else {
                        usize::from(complete)
                    }
                }
                Trial::Status => {
                    let person = fake_user_named(fake, marker);
                    let answered_in_place = fake_status_answered(fake, person);
                    let in_channel = messages
                        .iter()
                        .filter(|m| m.webhook_id.is_none() && m.content.starts_with(&format!("<@{person}>")))
                        .count();
                    usize::from(answered_in_place) + in_channel
                }
            };
            let c = by_kind.entry(trial.name()).or_default();
            c.sent += 1;
            match count {
                0 if in_dlq => c.dead_lettered += 1,
                0 => {
                    c.lost += 1;
                    lost_trials.push(marker.clone());
                }
                1 => c.once += 1,
                _ => {
                    c.duplicated += 1;
                    duplicated_trials.push(marker.clone());
                }
            }
        }
        let decoys_untouched = roles.iter().any(|r| r.id == self.decoys.0 && r.name == "Decoy Members")
            && channels.iter().any(|c| c.id == self.decoys.1 && c.name == "Decoy" && c.overwrites.is_empty());
        let adopted = channels.iter().filter(|c| c.parent_id == Some(self.decoys.1)).count();
        let lost: usize = by_kind.values().map(|c| c.lost).sum();
        // What the channels show of each trial that went wrong, to tell why.
        let shown = |marker: &String| -> Value {
            let seen: Vec<Value> = messages
                .iter()
                .filter(|m| m.content.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')).any(|w| w == marker.as_str()))
                .map(|m| json!({"id": m.id, "author": m.author_name, "webhook": m.webhook_id.is_some(), "content": m.content}))
                .collect();
            json!({"trial": marker, "messages": seen})
        };
        let campaign_state = |marker: &String| -> Value {
            let name = campaign(marker);
            let cats: Vec<u64> = channels.iter().filter(|c| c.kind == 4 && c.name == name).map(|c| c.id).collect();
            let under: Vec<usize> =
                cats.iter().map(|id| channels.iter().filter(|c| c.parent_id == Some(*id)).count()).collect();
            let roles: Vec<String> =
                roles.iter().filter(|r| r.name.starts_with(&name)).map(|r| r.name.clone()).collect();
            json!({"categories": cats, "channels_under": under, "roles": roles})
        };
        let kind_of = |marker: &String| trials.iter().find(|(_, m)| m == marker).map(|(t, _)| t.name()).unwrap_or("?");
        let details: Vec<Value> = lost_trials
            .iter()
            .chain(&duplicated_trials)
            .map(|m| {
                let mut d = shown(m);
                d["kind"] = kind_of(m).into();
                let channel = fake.channels(self.guild).into_iter().find(|c| c.name == *m).map_or(0, |c| c.id);
                d["interactions"] = fake
                    .interactions_in(channel)
                    .iter()
                    .map(|i| {
                        json!({"id": i.id, "callback": i.callback.as_ref().map(|c| c.0),
                               "original": i.original.and_then(|o| fake.message(o)).map(|o| o.content)})
                    })
                    .collect();
                d["campaign"] = campaign_state(m);
                d
            })
            .collect();
        let duplicated: usize = by_kind.values().map(|c| c.duplicated).sum();
        Ok(json!({
            "by_kind": by_kind.iter().map(|(k, c)| (k.to_string(), c.json())).collect::<serde_json::Map<_, _>>(),
            "lost": lost, "duplicated": duplicated,
            "lost_trials": lost_trials, "duplicated_trials": duplicated_trials, "details": details,
            "decoys_untouched": decoys_untouched, "channels_put_under_a_decoy": adopted,
            "dead_letters": dlq,
            "discord_requests": fake.requests().len(), "discord_429s": fake.rate_limited(),
            "spec_violations": fake.violations().len(),
        }))
    }
}

/// What one kind of trial left behind.
#[derive(Debug, Default)]
struct Counts {
    sent: usize,
    once: usize,
    lost: usize,
    duplicated: usize,
    dead_lettered: usize,
}

impl Counts {
    fn json(&self) -> Value {
        json!({"sent": self.sent, "once": self.once, "lost": self.lost, "duplicated": self.duplicated,
               "dead_lettered": self.dead_lettered})
    }
}

fn campaign(marker: &str) -> String {
    format!("Camp {}", marker.trim_start_matches("chaos-"))
}

fn fake_user_named(fake: &FakeDiscord, name: &str) -> u64 {
    fake.users().into_iter().find(|u| u.name == name).map_or(0, |u| u.id)
}

/// Whether the /status of `person` was answered in place (its deferred answer edited).
fn fake_status_answered(fake: &FakeDiscord, person: u64) -> bool {
    fake.interactions_by(person)
        .iter()
        .any(|i| i.original.and_then(|m| fake.message(m)).is_some_and(|m| m.edits > 0 && m.content.contains("is up")))
}

/// The dead-lettered jobs: kind, the trial marker their payload carries, and
/// why (the error the worker logged when it gave up on them).
async fn dead_letters(db: &Path, log: &Arc<Mutex<Vec<Value>>>) -> anyhow::Result<Vec<Value>> {
    let store = SqliteStore::open(&SqliteOptions::new(db), Arc::new(SystemClock))?;
    let queue = store.queue();
    let page = queue.peek("den-jobs-dlq", 1000, None).await?;
    store.close().await?;
    let log = log.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    Ok(page
        .iter()
        .filter_map(|m| serde_json::from_str::<Job>(&m.body).ok().map(|j| (j, m.receive_count)))
        .map(|(job, receives)| {
            let text = job.payload.to_string();
            let marker = text.match_indices("chaos-").next().map(|(at, _)| {
                text[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect::<String>()
            });
            let why = log
                .iter()
                .rev()
                .filter(|l| l["message"].as_str().is_some_and(|m| m.contains("dead-lettering")))
                .find(|l| l.to_string().contains(&job.id))
                .and_then(|l| l["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("{receives} deliveries"));
            json!({"kind": job.kind, "marker": marker, "receives": receives, "why": why})
        })
        .collect())
}
