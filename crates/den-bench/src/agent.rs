//! `den-bench agent`: den's own time per agent turn (tool dispatch, sandbox
//! start, bookkeeping; the model answers at once) and the sandbox's start.

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

/// A model that answers at once, alternating a file read and a sandboxed `true`.
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
        let (name, input) = if n.is_multiple_of(2) {
            ("read_file", json!({"path": "src/lib.rs", "limit": 50}))
        } else {
            ("run", json!({"command": "true"}))
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
        };
        let config = RunConfig { max_turns: o.turns, max_tokens: 100, ..RunConfig::new("den/bench", "main") };
        let stamps = Stamps(Mutex::new(Vec::new()));
        let model = Instant0 { calls: AtomicU64::new(0) };
        let began = Instant::now();
        let stop = den_agent::controls::Controls::default();
        den_agent::run::run(&[&model], &tools, &config, vec![], "bench", &stamps, &stop).await?;
        let total = began.elapsed();
        let stamps = stamps.0.into_inner().unwrap_or_default();
        let turns: Vec<f64> = stamps.windows(2).map(|w| ms(w[1] - w[0])).collect();
        // Turn i runs call i: even ones read a file, odd ones run `true` in the sandbox.
        let of_kind = |even: bool| -> Vec<f64> {
            turns.iter().enumerate().filter(|(i, _)| i.is_multiple_of(2) == even).map(|(_, t)| *t).collect()
        };
        Ok(json!({
            "scenario": "agent",
            "sandbox": sandbox.describe(),
            "sandbox_start": summary(starts),
            "turn": summary(turns.clone()),
            "turn_reading_a_file": summary(of_kind(true)),
            "turn_running_true_in_the_sandbox": summary(of_kind(false)),
            "turns": o.turns,
            "total_ms": ms(total),
        }))
    })
}
