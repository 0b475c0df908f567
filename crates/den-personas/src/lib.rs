//! AI Roast Den: personas that roast, remember, and know when to stop.
//!
//! - [`persona`]: persona files (TOML), validated, reloaded when they change.
//! - [`prompt`]: a persona's prompt inside a token budget.
//! - [`memory`]: the transcript and long-term facts: one trait, SQLite (FTS5) and den-table backends.
//! - [`state`]: runtime state in den's store (brakes, limits, mutes, Higher Self).
//! - [`safety`]: input cleaning and the output filter.
//! - [`consolidate`]: the model turns conversation into long-term facts.
//! - [`card`]: Character Card V2/V3 import and export (JSON, PNG).
//! - [`module`]: the Discord module: triggers, streamed replies, commands.

pub mod card;
pub mod consolidate;
pub mod memory;
pub mod module;
pub mod persona;
pub mod prompt;
pub mod safety;
pub mod state;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use den_llm::ChatModel;

pub use module::PersonasModule;
pub use persona::{Persona, PersonaSet};

/// How the personas behave; `[personas]` in den.toml.
#[derive(Clone, Debug)]
pub struct PersonasConfig {
    /// Prefix of the text commands (`!ask`, `!roast`).
    pub prefix: String,
    /// Persona messages in a row without a person before personas stop answering each other.
    pub max_persona_streak: u32,
    /// Least time between persona-to-persona replies in a channel.
    pub persona_gap: Duration,
    /// Most persona-to-persona replies per channel per hour.
    pub hourly_persona_cap: u32,
    /// Requests per person per minute.
    pub user_per_minute: u32,
    /// Persona replies per channel per minute.
    pub channel_per_minute: u32,
    /// Least time between edits of a streaming reply; `None`: post only the finished reply.
    pub stream_edit_interval: Option<Duration>,
    /// Transcript lines offered to the prompt.
    pub transcript_lines: usize,
    /// Most tokens of prompt.
    pub prompt_budget_tokens: usize,
    /// Most tokens of reply.
    pub max_reply_tokens: u32,
    /// How much prompts tell the model.
    pub prompt_style: prompt::PromptStyle,
    /// Extra deny patterns for the output filter (regular expressions).
    pub deny_patterns: Vec<String>,
    /// Replies a Higher Self `/influence` directive lasts.
    pub directive_turns: u32,
    /// Daily token budgets.
    pub budget: den_llm::ledger::Budget,
    /// Messages of people per channel between memory consolidations (0: never).
    pub consolidate_every: u64,
}

impl Default for PersonasConfig {
    fn default() -> Self {
        Self {
            prefix: "!".into(),
            max_persona_streak: 3,
            persona_gap: Duration::from_secs(5),
            hourly_persona_cap: 30,
            user_per_minute: 5,
            channel_per_minute: 20,
            stream_edit_interval: Some(Duration::from_secs(1)),
            transcript_lines: 30,
            prompt_budget_tokens: 3_000,
            max_reply_tokens: 300,
            prompt_style: prompt::PromptStyle::Full,
            deny_patterns: Vec::new(),
            directive_turns: 3,
            budget: den_llm::ledger::Budget::default(),
            consolidate_every: 50,
        }
    }
}

/// The models personas speak with: the default, and others by provider name.
#[derive(Clone)]
pub struct Models {
    /// Used unless a persona names a provider.
    pub default: Arc<dyn ChatModel>,
    /// Providers a persona may name.
    pub by_provider: HashMap<String, Arc<dyn ChatModel>>,
}

impl std::fmt::Debug for Models {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Models").field("default", &self.default.name()).finish_non_exhaustive()
    }
}

impl Models {
    /// The model for `persona`.
    #[must_use]
    pub fn for_persona(&self, persona: &Persona) -> Arc<dyn ChatModel> {
        persona.provider.as_ref().and_then(|p| self.by_provider.get(p)).cloned().unwrap_or_else(|| self.default.clone())
    }
}

/// Where the personas' files live.
#[derive(Clone, Debug)]
pub struct Paths {
    /// The persona directory.
    pub personas: PathBuf,
    /// The memory database.
    pub memory: PathBuf,
}
