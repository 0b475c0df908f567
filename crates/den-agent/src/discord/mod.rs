//! The coding agent in Discord: each thread is a session with its own branch
//! in a clone of the server's workspace.
//!
//! Mention den (or use `/agent task:`) in a channel an admin enabled
//! (`/agent-channel enable`): den opens a thread on the message and starts a
//! run. A run is a chain of `agent.turn` jobs, one per turn, each saving the
//! run's state, so any worker may take the next turn and a killed worker's
//! run goes on from its last kept step. People steer it with buttons,
//! reactions or words in the thread (stop, retry, wrong, escalate,
//! clarify: ...); when the model finishes, den commits, posts the diff and
//! offers 👍 merge (only when clean) and 👎 reject.
//!
//! - [`sessions`]: the tables (sessions, enabled channels, saved runs, controls) and the thread's lease.
//! - [`workspaces`]: the server's base repository and the threads' clones; merges and rejections.
//! - `turns`: starting a run, one turn, the progress message; `results`: how a run ends in its thread.
//! - `commands` (the table of slash commands), `info`, `workspace_commands`; `steering`: messages,
//!   reactions and buttons, merge and reject.

mod commands;
mod info;
mod results;
pub mod sessions;
mod steering;
mod turns;
mod workspace_commands;
pub mod workspaces;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use den_core::{Clock, Job};
use den_discord::events::{InboundInteraction, InboundMessage, InboundReaction, InteractionKind};
use den_discord::{Ack, CommandSpec, Egress, IngressCx, Module, Reaction};
use den_llm::ChatModel;
use den_llm::ledger::Ledger;
use den_worker::{JobContext, JobError, JobHandler, JobQueue};
use serde_json::{Value, json};

use crate::records::Records;
use crate::sandbox::Sandbox;
use sessions::Sessions;
use workspaces::Workspaces;

/// Job kinds, all handled by the module's table.
pub mod kinds {
    /// A message in an enabled channel or a session's thread.
    pub const MESSAGE: &str = "agent.message";
    /// A reaction on one of den's messages in a session's thread.
    pub const REACTION: &str = "agent.reaction";
    /// A button on one of den's messages.
    pub const BUTTON: &str = "agent.button";
    /// A slash command.
    pub const COMMAND: &str = "agent.command";
    /// One turn of a run.
    pub const TURN: &str = "agent.turn";
}

/// Emoji that steer a run or decide its result.
pub const EMOJI: [&str; 6] = ["🛑", "🔄", "❌", "🚀", "👍", "👎"];

/// How the module behaves.
#[derive(Clone, Debug)]
pub struct AgentSettings {
    /// Turns per run at most, by the task's size.
    pub turns: crate::size::Turns,
    /// Tokens per server per UTC day (none: no limit).
    pub daily_tokens: Option<u64>,
    /// Members of this role may approve any session's merge.
    pub approver_role: Option<u64>,
    /// `@alias` at the start of a task starts the run on that rung of the ladder.
    pub aliases: Vec<(String, usize)>,
    /// Least time between edits of a progress message.
    pub progress_every: Duration,
    /// Longest a run may take.
    pub wall_time: Duration,
    /// How long a turn holds its thread (renewed while it works); a killed
    /// worker's run is taken up by another after this.
    pub lease: Duration,
    /// The first sandbox user id of this den's sessions (den on the same
    /// machine as another den gives each its own range).
    pub first_uid: u32,
    /// Channels where the agent takes tasks from the start (the operator's).
    pub channels: Vec<u64>,
    /// Folders under which `/workspace seed path:` may read.
    pub seed_roots: Vec<std::path::PathBuf>,
    /// Longest a command may run: a turn is a job, and must end within the worker's job timeout.
    pub command_limit: Duration,
    /// Why the agent cannot work on this host (git missing), said to whoever asks for a task.
    pub unavailable: Option<String>,
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            turns: crate::size::Turns::default(),
            daily_tokens: None,
            approver_role: None,
            aliases: vec![],
            progress_every: Duration::from_secs(1),
            wall_time: Duration::from_secs(30 * 60),
            lease: Duration::from_secs(60),
            first_uid: 100_000,
            channels: vec![],
            seed_roots: vec![],
            command_limit: Duration::from_secs(90),
            unavailable: None,
        }
    }
}

/// What the module is made of.
pub struct AgentParts {
    /// den's account.
    pub egress: Arc<Egress>,
    /// Where runs are kept.
    pub sessions: Sessions,
    /// Run records, turn logs, events.
    pub records: Records,
    /// Where the next turn is queued.
    pub jobs: JobQueue,
    /// Now.
    pub clock: Arc<dyn Clock>,
    /// Models, weakest first.
    pub ladder: Vec<Arc<dyn ChatModel>>,
    /// Every configured model a server may pick for its tiers, by name.
    pub models: Vec<Arc<dyn ChatModel>>,
    /// Where commands run.
    pub sandbox: Sandbox,
    /// The servers' workspaces.
    pub workspaces: Workspaces,
    /// Daily tokens per server.
    pub ledger: Ledger,
    /// Limits and roles.
    pub settings: AgentSettings,
    /// Tools of the operator's MCP servers.
    pub mcp: Option<crate::mcp::SharedMcp>,
    /// Downloads files people attach (archives to seed from).
    pub attachments: den_discord::attachments::Attachments,
}

/// The agent module.
pub struct AgentModule {
    parts: AgentParts,
    /// Channels and threads ingress listens to, refreshed from the store.
    known: Mutex<(HashSet<u64>, Option<Instant>)>,
}

impl std::fmt::Debug for AgentModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentModule").field("models", &self.parts.ladder.len()).finish_non_exhaustive()
    }
}

/// How often ingress looks again at which channels the agent listens to.
const KNOWN_REFRESH: Duration = Duration::from_secs(5);

impl AgentModule {
    /// The module.
    #[must_use]
    pub fn new(parts: AgentParts) -> Arc<Self> {
        Arc::new(Self { parts, known: Mutex::new((HashSet::new(), None)) })
    }

    /// Whether ingress should pass on what happens in `channel`; refreshes
    /// the list in the background when it is old (never waits on the store).
    fn listens_to(self: &Arc<Self>, channel: u64) -> bool {
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        if known.1.is_none_or(|at| at.elapsed() >= KNOWN_REFRESH) {
            known.1 = Some(Instant::now());
            let me = self.clone();
            tokio::spawn(async move {
                match me.parts.sessions.known_channels().await {
                    Ok(list) => me.known.lock().unwrap_or_else(PoisonError::into_inner).0 = list.into_iter().collect(),
                    Err(e) => tracing::warn!(error = %e, "agent: cannot read its channels"),
                }
            });
        }
        known.0.contains(&channel) || self.parts.settings.channels.contains(&channel)
    }

    /// Ingress learns a new channel or thread at once in this process.
    fn learn(&self, channel: u64) {
        self.known.lock().unwrap_or_else(PoisonError::into_inner).0.insert(channel);
    }

    /// The ladder of a server: the models its admins picked, else den's.
    fn ladder_for(&self, server: &sessions::ServerSettings) -> Vec<Arc<dyn ChatModel>> {
        let picked: Vec<Arc<dyn ChatModel>> = server
            .tiers
            .iter()
            .filter_map(|name| self.parts.models.iter().find(|m| m.name() == name).cloned())
            .collect();
        if picked.is_empty() { self.parts.ladder.clone() } else { picked }
    }

    fn job(&self, kind: &str, guild: Option<u64>, payload: Value) -> Job {
        let mut job = Job::builder(kind, self.parts.clock.now()).payload(payload).build();
        job.guild = guild;
        job
    }
}

/// The module as ingress sees it; needs the `Arc` to refresh in the background.
pub struct AgentIngress(pub Arc<AgentModule>);

#[async_trait]
impl Module for AgentIngress {
    fn name(&self) -> &'static str {
        "agent"
    }

    fn commands(&self) -> Vec<CommandSpec> {
        commands::specs()
    }

    async fn on_message(&self, m: &InboundMessage, cx: &IngressCx) -> Vec<Job> {
        let Some(guild) = m.guild_id else { return vec![] };
        let mentioned = m.mentioned_users().contains(&cx.bot_user_id);
        if m.content.trim().is_empty() || !(mentioned || self.0.listens_to(m.channel_id)) {
            return vec![];
        }
        let payload = json!({"guild": guild, "channel": m.channel_id, "message": m.id, "user": m.author.id,
            "name": m.author.display_name(), "content": m.content, "mentioned": mentioned});
        let mut job = self.0.job(kinds::MESSAGE, Some(guild), payload);
        job.people = vec![m.author.id];
        vec![job]
    }

    async fn on_reaction(&self, r: &InboundReaction, _cx: &IngressCx) -> Vec<Job> {
        if !EMOJI.contains(&r.emoji.as_str()) || !self.0.listens_to(r.channel_id) {
            return vec![];
        }
        let payload = json!({"guild": r.guild_id, "channel": r.channel_id, "message": r.message_id,
            "user": r.user_id, "roles": r.roles(), "emoji": r.emoji});
        vec![self.0.job(kinds::REACTION, r.guild_id, payload)]
    }

    async fn on_interaction(&self, i: &InboundInteraction, cx: &IngressCx) -> Option<Reaction> {
        match i.kind {
            InteractionKind::Component => {
                let id = i.custom_id.as_deref()?.strip_prefix("agent:")?;
                let payload = json!({"guild": i.guild_id, "channel": i.channel_id, "action": id,
                    "user": i.user.as_ref().map(|u| u.id), "roles": i.roles, "permissions": i.permissions,
                    "interaction": den_discord::InteractionRef::of(i, cx.now)});
                let job = self.0.job(kinds::BUTTON, i.guild_id, payload);
                Some(Reaction { ack: Ack::DeferUpdate, jobs: vec![job] })
            }
            InteractionKind::Command => commands::on_command(&self.0, i, cx),
            _ => None,
        }
    }

    fn handlers(self: Arc<Self>) -> Vec<(String, Arc<dyn JobHandler>)> {
        let jobs: Arc<dyn JobHandler> = Arc::new(AgentJobs(self.0.clone()));
        [kinds::MESSAGE, kinds::REACTION, kinds::BUTTON, kinds::COMMAND, kinds::TURN]
            .into_iter()
            .map(|k| (k.to_owned(), jobs.clone()))
            .collect()
    }
}

type Handler = for<'a> fn(&'a Arc<AgentModule>, &'a Job) -> futures_util::future::BoxFuture<'a, Result<(), JobError>>;

/// Every job kind and its handler.
const HANDLERS: &[(&str, Handler)] = &[
    (kinds::MESSAGE, |m, j| Box::pin(steering::message(m, j))),
    (kinds::REACTION, |m, j| Box::pin(steering::reaction(m, j))),
    (kinds::BUTTON, |m, j| Box::pin(steering::button(m, j))),
    (kinds::COMMAND, |m, j| Box::pin(commands::command(m, j))),
    (kinds::TURN, |m, j| Box::pin(turns::turn(m, j))),
];

/// Runs the module's jobs.
pub struct AgentJobs(pub Arc<AgentModule>);

#[async_trait]
impl JobHandler for AgentJobs {
    async fn run(&self, job: &Job, _cx: &JobContext) -> Result<(), JobError> {
        match HANDLERS.iter().find(|(k, _)| *k == job.kind) {
            Some((_, handler)) => handler(&self.0, job).await,
            None => Err(JobError::permanent(format!("agent has no job {}", job.kind))),
        }
    }
}

fn retry(e: impl std::fmt::Display) -> JobError {
    JobError::retry(e.to_string())
}
