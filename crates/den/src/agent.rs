//! `den agent`: the coding agent's loop in the terminal, and its doctor.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use den_agent::run::{End, Progress, RunConfig};
use den_agent::sandbox::{Backend, Limits, Sandbox};
use den_agent::tools::Tools;
use serde_json::Value;

use crate::cli::AgentCommand;
use crate::config::Config;

/// The sandbox user of terminal runs (Discord sessions get one each).
const CLI_SESSION_UID: u32 = 63_000;

/// `den agent ...`
pub async fn command(command: AgentCommand, c: &Config, env: &[(String, String)]) -> anyhow::Result<()> {
    match command {
        AgentCommand::Doctor => doctor().await,
        AgentCommand::Run { workspace, branch, max_turns, task } => {
            run(c, env, &workspace, branch, max_turns, &task).await
        }
    }
}

async fn doctor() -> anyhow::Result<()> {
    let sandbox = Sandbox::probe(Limits::default()).await;
    println!("sandbox: {}", sandbox.describe());
    let git = tokio::process::Command::new("git").arg("--version").output().await;
    match git {
        Ok(out) if out.status.success() => print!("git: {}", String::from_utf8_lossy(&out.stdout)),
        _ => println!("git: not found (den needs git for workspaces)"),
    }
    match sandbox.backend() {
        Backend::Bubblewrap { .. } => Ok(()),
        Backend::Disabled(why) => anyhow::bail!("the agent cannot run commands here: {why}"),
    }
}

/// Prints each tool call on one line.
struct Lines;

impl Progress for Lines {
    fn calling(&self, turn: u32, max: u32, tool: &str, input: &Value) {
        let arg = ["path", "command", "regex", "glob", "summary", "question"]
            .iter()
            .find_map(|k| input[*k].as_str())
            .unwrap_or_default();
        let arg: String = arg.chars().take(80).collect();
        eprintln!("turn {turn}/{max}: {tool} {arg}");
    }
}

async fn run(
    c: &Config,
    env: &[(String, String)],
    workspace: &std::path::Path,
    branch: Option<String>,
    max_turns: u32,
    task: &str,
) -> anyhow::Result<()> {
    // The primary first; the fallback, when configured, is the next rung of the ladder.
    let mut ladder = Vec::new();
    for name in std::iter::once(&c.llm.primary).chain(c.llm.fallback.as_ref()) {
        let section = c.llm.provider(name).map_err(anyhow::Error::msg)?;
        ladder.push(crate::llm::provider(section, env, &c.models_dir()).await?);
    }
    let ladder: Vec<&dyn den_llm::ChatModel> = ladder.iter().map(AsRef::as_ref).collect();
    std::fs::create_dir_all(workspace).with_context(|| format!("cannot create {}", workspace.display()))?;
    let git = den_agent::git::Git::open(workspace).await?;
    let base = git.branch().await.unwrap_or_else(|_| "main".into());
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let branch = branch.unwrap_or_else(|| format!("den/cli-{stamp}"));
    let sandbox = Sandbox::probe(Limits::default()).await;
    eprintln!("workspace {} on {branch} (from {base}); {}", workspace.display(), sandbox.describe());
    let tools = Tools {
        workspace: den_agent::workspace::Workspace::open(workspace)?,
        git,
        sandbox,
        session_uid: CLI_SESSION_UID,
    };
    let config = RunConfig { max_turns, ..RunConfig::new(&branch, &base) };
    // Ctrl-C stops the model call or the command under way, and the run with it.
    let stop = den_agent::controls::Controls::default();
    let on_ctrl_c = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_ctrl_c.stop();
        }
    });
    let report = den_agent::run::run(&ladder, &tools, &config, vec![], task, &Lines, &stop).await?;
    for e in &report.escalations {
        eprintln!("after turn {}: {} → {} ({})", e.turn, e.from, e.to, e.reason);
    }
    // The run, its turn log and its events, in den's store as a Discord session's would be.
    let store = crate::roles::open_store(c).await?;
    let clock: std::sync::Arc<dyn den_core::Clock> = std::sync::Arc::new(den_core::SystemClock);
    let records = den_agent::records::Records::open(store.as_ref(), clock).await?;
    records.report("terminal", &branch, &report).await?;
    store.close().await?;
    let tokens = report.usage.input_tokens + report.usage.output_tokens;
    match report.end {
        End::Finished { summary, confidence, commit } => {
            println!("{summary}\n(confidence {confidence}%, {} turns, {tokens} tokens)", report.turns);
            match commit {
                Some(commit) => {
                    println!("committed {} on {branch}\n{}", &commit[..12.min(commit.len())], report.diffstat)
                }
                None => println!("nothing changed: no commit"),
            }
            Ok(())
        }
        End::AskedUser { question } => {
            println!("The agent asks: {question}\n(run again with the answer in the task)");
            Ok(())
        }
        End::OutOfTurns => {
            anyhow::bail!("the agent used its {max_turns} turns without finishing; nothing was committed")
        }
        End::Stopped => anyhow::bail!("stopped; the changes so far are in the workspace, uncommitted"),
        End::Aborted(limit) => {
            anyhow::bail!("aborted at {limit}; the changes so far are in the workspace, uncommitted")
        }
    }
}
