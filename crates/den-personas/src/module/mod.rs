//! The personas module: who answers which message, streamed replies under the
//! persona's name, the slash commands, and the jobs behind them.
//!
//! - [`triggers`](self::triggers): a person's message, and which persona (if any) answers it.
//! - `reply`: a persona's reply: brakes, limits, the prompt, streaming, the output filter.
//! - `commands`: slash commands, acknowledged at ingress and done by a job.
//! - `speakers`: how a persona posts: den's webhook, or its own bot account.

mod commands;
mod reply;
mod speakers;
mod triggers;

use std::sync::Arc;

use async_trait::async_trait;
use den_core::{Clock, Job};
use den_discord::events::{InboundInteraction, InboundMessage};
use den_discord::posts::PostLedger;
use den_discord::{CommandSpec, Egress, EgressConfig, IngressCx, Module, Reaction};
use den_llm::ledger::Ledger;
use den_worker::{JobContext, JobError, JobHandler, JobQueue};
use serde::{Deserialize, Serialize};
use serde_json::json;

pub use reply::compose;

use crate::memory::MemoryStore;
use crate::persona::PersonaSet;
use crate::prompt::RULES;
use crate::safety::OutputFilter;
use crate::state::State;
use crate::{Models, PersonasConfig};

/// Job kind: a guild message to record and perhaps answer.
pub const MESSAGE: &str = "personas.message";
/// Job kind: a persona's reply (delayed, for persona-to-persona turns; `/ask`, `/roast`).
pub const REPLY: &str = "personas.reply";
/// Job kind: a slash command's work.
pub const COMMAND: &str = "personas.command";
/// Job kind: turn a channel's recent conversation into long-term facts.
pub const CONSOLIDATE: &str = "personas.consolidate";

/// The ledger's name for tokens spent on memory rather than on a persona.
pub const MEMORY_LEDGER: &str = "_memory";

/// What a reply job carries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplyRequest {
    /// Guild.
    pub guild: u64,
    /// Channel.
    pub channel: u64,
    /// Persona id.
    pub persona: String,
    /// The person it answers (0: a persona).
    pub user_id: u64,
    /// Their name.
    pub user_name: String,
    /// The text that cued it (for recall and triggers).
    pub text: String,
    /// The message it answers, if any.
    pub message_id: Option<u64>,
    /// The message that message replied to, if any.
    pub replied_to: Option<u64>,
    /// That message's author and text as Discord delivered them (used when
    /// the transcript does not have it, e.g. older than den's memory).
    #[serde(default)]
    pub replied_text: Option<(String, String)>,
    /// Roast this person.
    pub roast: Option<String>,
    /// Whether it answers another persona.
    pub to_persona: bool,
    /// Whether it chimes in unprompted.
    pub chime_in: bool,
}

/// Everything the module needs.
pub struct Deps {
    /// Discord egress (webhooks).
    pub egress: Arc<Egress>,
    /// How to reach Discord as a persona's own bot (the token comes from the
    /// persona's `token_env`, looked up in `env`).
    pub bot_egress: EgressConfig,
    /// The process environment, where persona bot tokens are found.
    pub env: Vec<(String, String)>,
    /// What jobs posted, so a redelivered job never posts twice.
    pub posts: PostLedger,
    /// The personas.
    pub personas: Arc<PersonaSet>,
    /// Transcript and facts.
    pub memory: MemoryStore,
    /// Runtime state.
    pub state: State,
    /// Token ledger.
    pub ledger: Ledger,
    /// Models.
    pub models: Option<Models>,
    /// Where follow-up jobs go.
    pub jobs: JobQueue,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// Behaviour.
    pub config: PersonasConfig,
}

/// The personas module.
pub struct PersonasModule {
    d: Deps,
    filter: OutputFilter,
    speakers: speakers::Speakers,
}

impl std::fmt::Debug for PersonasModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PersonasModule").field("personas", &self.d.personas.all().len()).finish_non_exhaustive()
    }
}

fn retry(e: impl std::fmt::Display) -> JobError {
    JobError::retry(e.to_string())
}

impl PersonasModule {
    /// The module; fails on a bad deny pattern.
    pub fn new(deps: Deps) -> Result<Arc<Self>, String> {
        let markers = RULES.iter().map(|r| (*r).to_owned()).collect();
        let filter = OutputFilter::new(&deps.config.deny_patterns, markers)?;
        let speakers = speakers::Speakers::new(&deps);
        Ok(Arc::new(Self { d: deps, filter, speakers }))
    }

    /// The personas.
    #[must_use]
    pub fn personas(&self) -> &Arc<PersonaSet> {
        &self.d.personas
    }

    fn names(&self) -> String {
        self.d.personas.all().iter().map(|p| p.name.clone()).collect::<Vec<_>>().join(", ")
    }
}

#[async_trait]
impl Module for PersonasModule {
    fn name(&self) -> &'static str {
        "personas"
    }

    fn commands(&self) -> Vec<CommandSpec> {
        commands::specs()
    }

    fn wants_bot_messages(&self) -> bool {
        true // personas answer personas (with brakes)
    }

    async fn on_message(&self, message: &InboundMessage, cx: &IngressCx) -> Vec<Job> {
        let Some(guild) = message.guild_id else { return Vec::new() };
        if message.content.trim().is_empty() || self.d.personas.all().is_empty() {
            return Vec::new();
        }
        let payload = json!({"message": message, "mentions": message.mentioned_users()});
        // The job carries the author's words and those of the message they replied to.
        let people = [Some(message.author.id), message.referenced_message.as_ref().map(|r| r.author.id)];
        vec![Job::builder(MESSAGE, cx.now).guild(guild).people(people.into_iter().flatten()).payload(payload).build()]
    }

    async fn on_interaction(&self, i: &InboundInteraction, cx: &IngressCx) -> Option<Reaction> {
        self.acknowledge(i, cx)
    }

    fn handlers(self: Arc<Self>) -> Vec<(String, Arc<dyn JobHandler>)> {
        let h: Arc<dyn JobHandler> = Arc::new(PersonaJobs(self));
        [MESSAGE, REPLY, COMMAND, CONSOLIDATE].into_iter().map(|kind| (kind.to_owned(), h.clone())).collect()
    }
}

/// Runs the module's jobs.
pub struct PersonaJobs(pub Arc<PersonasModule>);

#[async_trait]
impl JobHandler for PersonaJobs {
    async fn run(&self, job: &Job, _cx: &JobContext) -> Result<(), JobError> {
        let m = &self.0;
        match job.kind.as_str() {
            MESSAGE => m.on_message_job(&job.id, &job.payload).await,
            REPLY => {
                let req: ReplyRequest = serde_json::from_value(job.payload.clone())
                    .map_err(|e| JobError::permanent(format!("bad reply payload: {e}")))?;
                m.speak(&job.id, req).await
            }
            COMMAND => m.command_job(&job.payload).await,
            CONSOLIDATE => m.consolidate_job(&job.id, &job.payload).await,
            other => Err(JobError::permanent(format!("personas has no job {other}"))),
        }
    }
}
