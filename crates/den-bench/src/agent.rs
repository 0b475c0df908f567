//! `den-bench agent`: den's own time per agent turn (tool dispatch, sandbox
//! start, bookkeeping; the model answers at once) and the sandbox's start.
//! Turns are measured twice: in one process without a store, and as the
//! Discord module runs them, the run's state and turn log saved to den's
//! SQLite store after the model's answer and after each call.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use den_agent::run::{Progress, RunConfig};
use den_agent::sandbox::{Backend, Limits, Sandbox};
use den_agent::tools::Tools;
use den_llm::{ChatModel, ChatRequest, ChatStream, FinishReason, LlmError, StreamEvent, ToolCall, Usage};
use serde_json::{Value, json};

use crate::quantile;

/// Options of the agent scenario.
#[derive(Debug, clap::Args)]
pub struct AgentOptions {
    /// Turns of the loop measured.
    #[arg(long, default_value_t = 200)]
    turns: u32,
    /// Sandbox starts measured.
    #[arg(long, default_value_t = 100)]
    starts: u32,
}

/// A model that answers at once, cycling a file read, a sandboxed `true` and a file write.
struct Instant0 {
    calls: AtomicU64,
}

#[async_trait]
impl ChatModel for Instant0 {
    fn name(&self) -> &str {
        "instant"
    }

    async fn stream(&self, _: &ChatRequest) -> Result<ChatStream, LlmError> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        // Inputs differ every turn and a file changes every third, as in real work: den's escalation
        // rules (the same call four times, five turns without a change) would otherwise end the run.
        let (name, input) = match n % 3 {
            0 => ("read_file", json!({"path": "src/lib.rs", "offset": n % 100, "limit": 50})),
            1 => ("run", json!({"command": format!("true {n}")})),
            _ => ("write_file", json!({"path": format!("notes/{n}.txt"), "content": "x\n"})),
        };
        let call = ToolCall { id: format!("c{n}"), name: name.into(), input };
        let events = vec![
            Ok(StreamEvent::ToolCall(call)),
            Ok(StreamEvent::Done { usage: Usage::default(), finish: FinishReason::ToolUse }),
        ];
        Ok(Box::pin(futures_util::stream::iter(events)))
    }
}

/// The time between one tool call and the next: a whole turn.
struct Stamps(Mutex<Vec<Instant>>);

impl Progress for Stamps {
    fn calling(&self, _: u32, _: u32, _: &str, _: &Value) {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(Instant::now());
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn summary(mut samples: Vec<f64>) -> Value {
    samples.sort_by(f64::total_cmp);
    json!({"p50_ms": quantile(&samples, 0.5), "p99_ms": quantile(&samples, 0.99), "n": samples.len()})
}

/// Runs the scenario.
pub fn run(o: &AgentOptions) -> anyhow::Result<Value> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let sandbox = Sandbox::probe(Limits::default()).await;
        if let Backend::Disabled(why) = sandbox.backend() {
            anyhow::bail!("the sandbox does not work here: {why}");
        }
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("src"))?;
        std::fs::write(dir.path().join("src/lib.rs"), "pub fn answer() -> u32 { 42 }\n".repeat(200))?;
        let git = den_agent::git::Git::open(dir.path()).await?;
        git.commit_all("base").await?;

        let mut starts = Vec::new();
        for _ in 0..o.starts {
            let ran = sandbox.run(dir.path(), 64_500, "true", Duration::from_secs(10)).await?;
            anyhow::ensure!(ran.code == Some(0), "true failed in the sandbox: {}", ran.stderr);
            starts.push(ms(ran.took));
        }

        let tools = Tools {
            workspace: den_agent::workspace::Workspace::open(dir.path())?,
            git,
            sandbox: sandbox.clone(),
            session_uid: 64_501,
            mcp: None,
            run_limit: den_agent::tools::MAX_RUN,
        };
        let config = RunConfig { max_turns: o.turns, max_tokens: 100, ..RunConfig::new("den/bench", "main") };
        let stamps = Stamps(Mutex::new(Vec::new()));
        let model = Instant0 { calls: AtomicU64::new(0) };
        let began = Instant::now();
        let stop = den_agent::controls::Controls::default();
        den_agent::run::run(&[&model], &tools, &config, vec![], "bench", &stamps, &stop).await?;
        let total = began.elapsed();
        let stamps = stamps.0.into_inner().unwrap_or_default();
        let kept = turns_with_state_saved(&tools, o.turns, dir.path()).await?;
        let turns: Vec<f64> = stamps.windows(2).map(|w| ms(w[1] - w[0])).collect();
        // The window from call i to call i + 1 holds call i: reads, runs and writes in turn.
        let of_kind = |kind: usize| -> Vec<f64> {
            turns.iter().enumerate().filter(|(i, _)| i % 3 == kind).map(|(_, t)| *t).collect()
        };
        Ok(json!({
            "scenario": "agent",
            "sandbox": sandbox.describe(),
            "sandbox_start": summary(starts),
            "turn": summary(turns.clone()),
            "turn_reading_a_file": summary(of_kind(0)),
            "turn_running_true_in_the_sandbox": summary(of_kind(1)),
            "turn_writing_a_file": summary(of_kind(2)),
            "turn_with_state_saved": summary(kept),
            "turns": o.turns,
            "total_ms": ms(total),
        }))
    })
}

/// Keeps the state and each call's log line in den's store, as a thread's turns do.
struct Kept {
    sessions: den_agent::discord::sessions::Sessions,
    records: den_agent::records::Records,
}

#[async_trait]
impl den_agent::run::Checkpoint for Kept {
    async fn save(
        &self,
        state: &den_agent::run::RunState,
        call: Option<&den_agent::run::CallRecord>,
    ) -> Result<(), String> {
        if let Some(call) = call {
            self.records.log_call("bench-1", state.calls.len() - 1, call).await.map_err(|e| e.to_string())?;
        }
        self.sessions.save_state(1, "bench-1", state).await.map_err(|e| e.to_string())
    }
}

/// Times `turns` turns stepped one by one with their state saved to a SQLite store in `dir`.
async fn turns_with_state_saved(tools: &Tools, turns: u32, dir: &std::path::Path) -> anyhow::Result<Vec<f64>> {
    let clock: std::sync::Arc<dyn den_core::Clock> = std::sync::Arc::new(den_core::SystemClock);
    let options = den_storage::sqlite::SqliteOptions::new(dir.join("den.db"));
    let store = den_storage::sqlite::SqliteStore::open(&options, clock.clone())?;
    let kept = Kept {
        sessions: den_agent::discord::sessions::Sessions::open(&store).await?,
        records: den_agent::records::Records::open(&store, clock).await?,
    };
    let config = RunConfig { max_turns: turns, max_tokens: 100, ..RunConfig::new("den/bench-kept", "main") };
    tools.git.checkout(&config.branch, &config.base).await?;
    let model = Instant0 { calls: AtomicU64::new(0) };
    let ladder: [&dyn ChatModel; 1] = [&model];
    let controls = den_agent::controls::Controls::default();
    let mut state = den_agent::run::RunState::start(vec![], "bench", den_agent::run::now_ms());
    let mut took = Vec::new();
    loop {
        let step = den_agent::run::Step {
            ladder: &ladder,
            tools,
            config: &config,
            progress: &den_agent::run::Quiet,
            controls: &controls,
            checkpoint: &kept,
            now_ms: den_agent::run::now_ms(),
        };
        let began = Instant::now();
        let ended = step.turn(&mut state).await?;
        took.push(ms(began.elapsed()));
        if ended.is_some() {
            break;
        }
    }
    store.close().await?;
    Ok(took)
}
