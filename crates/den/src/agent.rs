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
        AgentCommand::Doctor => doctor(c).await,
        AgentCommand::Run { workspace, branch, max_turns, task } => {
            run(c, env, &workspace, branch, max_turns, &task).await
        }
    }
}

/// The operator's MCP servers, connected; what failed is logged.
async fn mcp(c: &Config) -> Option<den_agent::mcp::SharedMcp> {
    if c.agent.mcp.is_empty() {
        return None;
    }
    let (mcp, problems) = den_agent::mcp::Mcp::connect(&c.agent.mcp).await;
    for p in problems {
        tracing::warn!(problem = %p, "agent: an MCP server is left out");
    }
    Some(std::sync::Arc::new(mcp))
}

async fn doctor(c: &Config) -> anyhow::Result<()> {
    let sandbox = Sandbox::probe(Limits::default()).await;
    println!("sandbox: {}", sandbox.describe());
    if !c.agent.mcp.is_empty() {
        let (mcp, problems) = den_agent::mcp::Mcp::connect(&c.agent.mcp).await;
        for line in mcp.describe() {
            println!("mcp: {line} (runs outside den's sandbox)");
        }
        for p in problems {
            println!("mcp: {p}");
        }
    }
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

type Model = std::sync::Arc<dyn den_llm::ChatModel>;

/// The agent's models, each provider built once: the ladder (weakest first,
/// each tier behind the resilience layer with its second provider as
/// fallback; without `[agent] tiers`, the primary then the fallback) and every
/// configured model a server's admins may pick for their tiers.
struct Models {
    ladder: Vec<Model>,
    pickable: Vec<Model>,
}

async fn models(c: &Config, env: &[(String, String)], metrics: Option<&den_ops::Metrics>) -> anyhow::Result<Models> {
    let tiers: Vec<Vec<String>> = if c.agent.tiers.is_empty() {
        std::iter::once(c.llm.primary.clone()).chain(c.llm.fallback.clone()).map(|n| vec![n]).collect()
    } else {
        c.agent.tiers.clone()
    };
    // Models in den's process cannot call tools well, and loading one again beside the personas' would cost
    // its whole size: the agent leaves them out.
    let mut raw: Vec<(String, Result<Model, String>)> = Vec::new();
    for section in &c.llm.provider {
        let built = if section.is_in_process() {
            Err(format!("{} runs in den's process and is too small to use tools", section.name))
        } else {
            crate::llm::provider(section, env, &c.models_dir()).await.map_err(|e| format!("{e:#}"))
        };
        raw.push((section.name.clone(), built));
    }
    let get = |name: &str| -> anyhow::Result<Model> {
        match raw.iter().find(|(n, _)| n == name) {
            Some((_, Ok(m))) => Ok(m.clone()),
            Some((_, Err(e))) => anyhow::bail!("{e}"),
            None => anyhow::bail!("no provider called {name:?} in [[llm.provider]]"),
        }
    };
    let clock: std::sync::Arc<dyn den_core::Clock> = std::sync::Arc::new(den_core::SystemClock);
    let wrap = |first: Model, fallback: Option<Model>| -> Model {
        let mut r = den_llm::resilience::Resilient::new(first, fallback, crate::personas::policy(c), clock.clone());
        if let Some(m) = metrics {
            r = r.with_observer(std::sync::Arc::new(crate::llm::LlmMetrics(m.clone())));
        }
        std::sync::Arc::new(r)
    };
    let mut ladder = Vec::new();
    for tier in tiers.iter().filter(|t| !t.is_empty()) {
        let fallback = tier.get(1).map(|n| get(n)).transpose()?;
        ladder.push(wrap(get(&tier[0])?, fallback));
    }
    let pickable = raw.iter().filter_map(|(_, m)| m.as_ref().ok().map(|m| wrap(m.clone(), None))).collect();
    Ok(Models { ladder, pickable })
}

/// The agent's Discord module.
pub async fn module(cx: &crate::roles::ModuleCx<'_>) -> anyhow::Result<std::sync::Arc<dyn den_discord::Module>> {
    use den_agent::discord::{AgentIngress, AgentModule, AgentParts, AgentSettings, sessions::Sessions};
    let c = cx.config;
    let sandbox = Sandbox::probe(Limits::default()).await;
    tracing::info!(sandbox = %sandbox.describe(), "agent: sandbox chosen");
    let git = tokio::process::Command::new("git").arg("--version").output().await;
    // A model without its key (or no git) leaves den running: the agent says why it takes no task.
    let (models, pickable, no_model) = match self::models(c, cx.env, Some(cx.metrics)).await {
        Ok(m) if !m.ladder.is_empty() => (m.ladder, m.pickable, None),
        Ok(m) => (vec![], m.pickable, Some("no model is configured for it (`[agent] tiers`)".to_owned())),
        Err(e) => (vec![], vec![], Some(format!("its model is not usable: {e}"))),
    };
    let unavailable = if git.is_ok_and(|o| o.status.success()) {
        no_model
    } else {
        Some("git is not installed where den runs (see `den agent doctor`)".to_owned())
    };
    if let Some(why) = &unavailable {
        tracing::warn!(reason = %why, "agent: tasks will be refused");
    }
    let dir = c.agent.workspaces_dir.clone().unwrap_or_else(|| c.beside_store("agent-workspaces"));
    let tiers = models.len();
    let aliases = c
        .agent
        .aliases
        .iter()
        .map(|(a, t)| (a.trim_start_matches('@').to_owned(), t.saturating_sub(1).min(tiers.saturating_sub(1))))
        .collect();
    let parts = AgentParts {
        egress: cx.egress.clone(),
        sessions: Sessions::open(cx.store.as_ref()).await?,
        records: den_agent::records::Records::open(cx.store.as_ref(), cx.clock.clone()).await?,
        jobs: cx.jobs.clone(),
        clock: cx.clock.clone(),
        ladder: models,
        models: pickable,
        mcp: mcp(c).await,
        // A plain-HTTP stand-in for Discord (a proxy, or the test double) also serves attachments.
        attachments: den_discord::attachments::Attachments::new(c.discord.api_proxy.iter().cloned().collect()),
        sandbox,
        workspaces: den_agent::discord::workspaces::Workspaces::new(dir, &c.agent.base_branch)
            .scoped(c.agent.workspace),
        ledger: den_llm::ledger::Ledger::new(cx.store.table(den_llm::ledger::table_spec()).await?, cx.clock.clone()),
        settings: AgentSettings {
            turns: c.agent.max_turns,
            daily_tokens: c.agent.daily_tokens,
            approver_role: c.agent.approver_role,
            aliases,
            wall_time: std::time::Duration::from_secs(c.agent.max_minutes.saturating_mul(60)),
            lease: std::time::Duration::from_secs(c.agent.lease_secs.max(1)),
            first_uid: c.agent.first_uid.max(1000),
            channels: c.agent.channels.clone(),
            seed_roots: c.agent.seed_roots.clone(),
            // A turn is a job: its commands end in time for the model call and bookkeeping around them.
            command_limit: std::time::Duration::from_secs(c.worker.job_timeout_secs.saturating_sub(30).max(5)),
            unavailable,
            ..AgentSettings::default()
        },
    };
    Ok(std::sync::Arc::new(AgentIngress(AgentModule::new(parts))))
}

async fn run(
    c: &Config,
    env: &[(String, String)],
    workspace: &std::path::Path,
    branch: Option<String>,
    max_turns: u32,
    task: &str,
) -> anyhow::Result<()> {
    let ladder = self::models(c, env, None).await?.ladder;
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
        mcp: mcp(c).await,
        run_limit: den_agent::tools::MAX_RUN,
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
        End::Failed { reason } => anyhow::bail!("the run failed: {reason}"),
        End::Aborted(limit) => {
            anyhow::bail!("aborted at {limit}; the changes so far are in the workspace, uncommitted")
        }
    }
}
