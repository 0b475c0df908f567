//! What a module is to den's Discord I/O: the commands it declares, the jobs
//! it makes of events at ingress, and the handlers that run those jobs.

use std::sync::Arc;

use async_trait::async_trait;
use den_core::{Job, Timestamp};
use den_worker::JobHandler;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::Ack;
use crate::events::{InboundInteraction, InboundMessage, InboundReaction, VoiceEvent};

/// The type of a slash-command option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptionKind {
    /// A subcommand (holds options).
    SubCommand,
    /// Text.
    String,
    /// A whole number.
    Integer,
    /// True or false.
    Boolean,
    /// A user.
    User,
    /// A channel.
    Channel,
    /// A role.
    Role,
    /// A file.
    Attachment,
}

impl OptionKind {
    fn code(self) -> u8 {
        match self {
            OptionKind::SubCommand => 1,
            OptionKind::String => 3,
            OptionKind::Integer => 4,
            OptionKind::Boolean => 5,
            OptionKind::User => 6,
            OptionKind::Channel => 7,
            OptionKind::Role => 8,
            OptionKind::Attachment => 11,
        }
    }
}

/// One option of a slash command.
#[derive(Clone, Debug, PartialEq)]
pub struct OptionSpec {
    /// Name (1-32 lowercase characters).
    pub name: String,
    /// What it is for (1-100 characters).
    pub description: String,
    /// Its type.
    pub kind: OptionKind,
    /// Whether it must be given.
    pub required: bool,
    /// Fixed choices (name, value), for string options.
    pub choices: Vec<(String, String)>,
    /// Options of a subcommand.
    pub options: Vec<OptionSpec>,
    /// Least and greatest value of an integer option, which Discord enforces in its picker.
    pub range: Option<(i64, i64)>,
}

impl OptionSpec {
    /// An option.
    #[must_use]
    pub fn new(name: &str, description: &str, kind: OptionKind, required: bool) -> Self {
        Self {
            name: name.into(),
            description: description.into(),
            kind,
            required,
            choices: vec![],
            options: vec![],
            range: None,
        }
    }

    /// An integer option between `min` and `max`, both included.
    #[must_use]
    pub fn integer(name: &str, description: &str, required: bool, min: i64, max: i64) -> Self {
        Self { range: Some((min, max)), ..Self::new(name, description, OptionKind::Integer, required) }
    }

    fn to_json(&self) -> Value {
        let mut v = json!({"type": self.kind.code(), "name": self.name, "description": self.description});
        if self.kind != OptionKind::SubCommand {
            v["required"] = self.required.into();
        }
        if !self.choices.is_empty() {
            v["choices"] = self.choices.iter().map(|(n, val)| json!({"name": n, "value": val})).collect();
        }
        if !self.options.is_empty() {
            v["options"] = self.options.iter().map(OptionSpec::to_json).collect();
        }
        if let Some((min, max)) = self.range {
            v["min_value"] = min.into();
            v["max_value"] = max.into();
        }
        v
    }
}

/// A slash command a module declares.
#[derive(Clone, Debug, PartialEq)]
pub struct CommandSpec {
    /// Name (1-32 lowercase characters, `-` and `_` allowed).
    pub name: String,
    /// What it does (1-100 characters).
    pub description: String,
    /// Its options.
    pub options: Vec<OptionSpec>,
    /// Permission bits a member needs to see it (admins configure further).
    pub default_member_permissions: Option<u64>,
}

impl CommandSpec {
    /// A command without options, usable by everyone.
    #[must_use]
    pub fn new(name: &str, description: &str) -> Self {
        Self { name: name.into(), description: description.into(), options: vec![], default_member_permissions: None }
    }

    /// Adds an option.
    #[must_use]
    pub fn option(mut self, option: OptionSpec) -> Self {
        self.options.push(option);
        self
    }

    /// The body Discord's bulk-overwrite endpoint takes for this command.
    #[must_use]
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "type": 1, "name": self.name, "description": self.description,
            "options": self.options.iter().map(OptionSpec::to_json).collect::<Vec<_>>(),
            "contexts": [0],
        });
        if let Some(p) = self.default_member_permissions {
            v["default_member_permissions"] = p.into();
        }
        v
    }
}

/// What ingress knows when it hands an event to a module.
#[derive(Clone, Copy, Debug)]
pub struct IngressCx {
    /// Now.
    pub now: Timestamp,
    /// den's bot user id.
    pub bot_user_id: u64,
}

/// A module's decision about an interaction it owns. Ingress sends the
/// acknowledgement within Discord's 3 s and enqueues the jobs first, so the
/// slow work survives a crash.
#[derive(Clone, Debug, PartialEq)]
pub struct Reaction {
    /// The first response.
    pub ack: Ack,
    /// Jobs to enqueue before acknowledging.
    pub jobs: Vec<Job>,
}

impl Reaction {
    /// Answer now; nothing to do later.
    #[must_use]
    pub fn reply(content: impl Into<String>, ephemeral: bool) -> Self {
        Self { ack: Ack::Message { content: content.into(), ephemeral }, jobs: vec![] }
    }

    /// "Thinking…" now; `job` finishes the answer.
    #[must_use]
    pub fn defer(job: Job, ephemeral: bool) -> Self {
        Self { ack: Ack::Defer { ephemeral }, jobs: vec![job] }
    }
}

/// Where a deferred interaction's answer goes: a job carries this in its
/// payload under `"interaction"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InteractionRef {
    /// Interaction id.
    pub id: u64,
    /// Token (valid 15 minutes from `created_at`).
    pub token: String,
    /// Channel to post in when the token has expired.
    pub channel_id: Option<u64>,
    /// Guild.
    pub guild_id: Option<u64>,
    /// Invoker.
    pub user_id: Option<u64>,
    /// When Discord created the interaction.
    pub created_at: Timestamp,
}

impl InteractionRef {
    /// The reference of an inbound interaction received at `now`.
    #[must_use]
    pub fn of(i: &InboundInteraction, now: Timestamp) -> Self {
        // The interaction id is a snowflake: its creation time is in its top bits.
        let created = Timestamp(crate::snowflake_time(i.id).0.min(now.0));
        Self {
            id: i.id,
            token: i.token.clone(),
            channel_id: i.channel_id,
            guild_id: i.guild_id,
            user_id: i.user.as_ref().map(|u| u.id),
            created_at: created,
        }
    }

    /// Reads it back from a job's payload.
    #[must_use]
    pub fn from_job(job: &Job) -> Option<Self> {
        serde_json::from_value(job.payload.get("interaction")?.clone()).ok()
    }
}

/// A module of den: AI personas, campaigns, music, the coding agent...
///
/// Ingress calls `on_message` and `on_interaction` on its fast path: they
/// must decide quickly, never waiting on a model or on Discord, and put the
/// slow work in jobs. Workers run those jobs with the module's handlers.
#[async_trait]
pub trait Module: Send + Sync {
    /// Short name, also the prefix of its job kinds (`status.ping`).
    fn name(&self) -> &'static str;

    /// Slash commands it owns.
    fn commands(&self) -> Vec<CommandSpec> {
        Vec::new()
    }

    /// Whether it wants messages from other bots and webhooks (den's own
    /// messages are never delivered).
    fn wants_bot_messages(&self) -> bool {
        false
    }

    /// Jobs a message causes.
    async fn on_message(&self, _message: &InboundMessage, _cx: &IngressCx) -> Vec<Job> {
        Vec::new()
    }

    /// Jobs an emoji reaction to a message causes.
    async fn on_reaction(&self, _reaction: &InboundReaction, _cx: &IngressCx) -> Vec<Job> {
        Vec::new()
    }

    /// The reaction to an interaction with one of its commands or components;
    /// `None` when it is not this module's.
    async fn on_interaction(&self, _interaction: &InboundInteraction, _cx: &IngressCx) -> Option<Reaction> {
        None
    }

    /// A voice state or voice server update, on the gateway process that
    /// received it. It must not block: a voice driver takes it from here.
    fn on_voice(&self, _event: &VoiceEvent) {}

    /// The handlers of its job kinds.
    fn handlers(self: Arc<Self>) -> Vec<(String, Arc<dyn JobHandler>)> {
        Vec::new()
    }
}

/// Registers `commands` with Discord in one bulk overwrite: globally, or in
/// one guild (which shows changes at once; global changes can take a while).
/// Returns how many Discord now holds.
pub async fn sync_commands(
    egress: &crate::Egress,
    commands: &[CommandSpec],
    guild: Option<u64>,
) -> Result<usize, crate::DiscordError> {
    let body: Value = commands.iter().map(CommandSpec::to_json).collect();
    let app = egress.app_id();
    if app == 0 {
        return Err(crate::egress::local("sync commands", "no application id"));
    }
    let path = match guild {
        Some(0) => return Err(crate::egress::local("sync commands", "guild id 0")),
        Some(g) => format!("/applications/{app}/guilds/{g}/commands"),
        None => format!("/applications/{app}/commands"),
    };
    let call = crate::rest::Call::new(reqwest::Method::PUT, path).json(&body);
    let registered = egress.call("sync commands", call).await?;
    Ok(registered.as_array().map_or(0, Vec::len))
}
