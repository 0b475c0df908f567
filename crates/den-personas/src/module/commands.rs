//! The personas' slash commands: declared to Discord, acknowledged at ingress
//! (permissions checked there), and carried out by a `personas.command` job
//! dispatched through a table of handlers, one per command. Every handler is
//! safe to run twice: facts are stored under the interaction's id, posts are
//! made once per interaction, audit lines are keyed by it.

use std::sync::Arc;
use std::time::Duration;

use den_core::{Job, Timestamp};
use den_discord::events::{ADMINISTRATOR, InboundInteraction, MANAGE_GUILD};
use den_discord::router::{Fallback, finish_interaction_or};
use den_discord::{Ack, CommandSpec, IngressCx, InteractionRef, OptionKind, OptionSpec, Reaction};
use den_llm::ledger::BudgetCheck;
use den_worker::JobError;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};

use super::{COMMAND, MEMORY_LEDGER, PersonasModule, REPLY, ReplyRequest, retry};
use crate::memory::{Line, NewFact, Subject};
use crate::persona::Persona;
use crate::safety::{MAX_INPUT_CHARS, clean_input};
use crate::state::GuildLimits;

/// The longest mute: 28 days, in minutes.
const MAX_MUTE_MINUTES: i64 = 40_320;

fn persona_option(required: bool) -> OptionSpec {
    OptionSpec::new("persona", "The persona (name or id)", OptionKind::String, required)
}

fn is_admin(permissions: u64) -> bool {
    permissions & (ADMINISTRATOR | MANAGE_GUILD) != 0
}

/// The commands, as Discord shows them.
pub(super) fn specs() -> Vec<CommandSpec> {
    let admin = |c: CommandSpec| CommandSpec { default_member_permissions: Some(MANAGE_GUILD), ..c };
    let text = |d: &str| OptionSpec::new("text", d, OptionKind::String, true);
    let per_minute = |name: &str, d: &str| OptionSpec::integer(name, d, false, 1, 1_000);
    vec![
        CommandSpec::new("ask", "Ask a persona something").option(persona_option(true)).option(OptionSpec::new(
            "question",
            "Your question",
            OptionKind::String,
            true,
        )),
        CommandSpec::new("roast", "Have a persona roast someone")
            .option(OptionSpec::new("target", "Who gets roasted", OptionKind::User, true))
            .option(persona_option(false)),
        CommandSpec::new("remember", "Tell den something to remember about you")
            .option(text("What to remember"))
            .option(OptionSpec::new("user", "Admins: about this member", OptionKind::User, false))
            .option(persona_option(false)),
        CommandSpec::new("forget", "Make den forget what it remembers about you")
            .option(OptionSpec::new("text", "Only memories containing this (default: all)", OptionKind::String, false))
            .option(OptionSpec::new("user", "Admins: forget this member", OptionKind::User, false)),
        CommandSpec::new("memories", "See what den remembers about you").option(persona_option(false)),
        admin(
            CommandSpec::new("mute", "Silence a persona")
                .option(persona_option(true))
                .option(OptionSpec::integer(
                    "minutes",
                    "For how long (default: until unmuted)",
                    false,
                    1,
                    MAX_MUTE_MINUTES,
                ))
                .option(OptionSpec::new("channel", "Only in this channel", OptionKind::Channel, false)),
        ),
        admin(CommandSpec::new("unmute", "Let a persona speak again").option(persona_option(true))),
        admin(
            CommandSpec::new("chime-in", "Let personas join conversations unprompted in a channel")
                .option(OptionSpec::new("on", "On or off", OptionKind::Boolean, true))
                .option(OptionSpec::new("channel", "The channel (default: this one)", OptionKind::Channel, false)),
        ),
        CommandSpec::new("influence", "Owner: steer your persona's next replies")
            .option(persona_option(true))
            .option(text("The direction to follow")),
        CommandSpec::new("takeover", "Owner: say exactly this as your persona")
            .option(persona_option(true))
            .option(text("What to post")),
        CommandSpec::new("higherself", "Owner: switch Higher Self mode").option(persona_option(true)).option(
            OptionSpec {
                choices: vec![("on".into(), "on".into()), ("off".into(), "off".into())],
                ..OptionSpec::new("mode", "on or off", OptionKind::String, true)
            },
        ),
        admin(CommandSpec::new("persona-audit", "Admins: the Higher Self and moderation log")),
        admin(
            CommandSpec::new("persona-settings", "Admins: this server's persona limits (no options: show them)")
                .option(per_minute("user-per-minute", "Requests per person per minute"))
                .option(per_minute("channel-per-minute", "Persona replies per channel per minute"))
                .option(OptionSpec::integer(
                    "daily-tokens",
                    "Model tokens per day (0: den's default)",
                    false,
                    0,
                    1_000_000_000,
                )),
        ),
    ]
}

/// What a command's job knows.
struct CommandCx<'a> {
    iref: InteractionRef,
    command: &'a str,
    guild: u64,
    user: u64,
    admin: bool,
    options: &'a Value,
    persona: Option<Arc<Persona>>,
    now: Timestamp,
}

impl CommandCx<'_> {
    fn text(&self, key: &str) -> Option<String> {
        self.options.get(key).and_then(Value::as_str).map(str::to_owned)
    }

    fn id(&self, key: &str) -> Option<u64> {
        self.options.get(key).and_then(|v| v.as_str().and_then(|s| s.parse().ok()).or_else(|| v.as_u64()))
    }

    /// An integer option within `min..=max` (Discord enforces the declared range; a
    /// forged payload is clamped, never overflowed).
    fn number(&self, key: &str, min: i64, max: i64) -> Option<i64> {
        self.options.get(key).and_then(Value::as_i64).map(|n| n.clamp(min, max))
    }

    /// The person a command is about: the `user` option, else the invoker.
    fn about(&self) -> u64 {
        self.id("user").unwrap_or(self.user)
    }

    /// Writes the audit line of this command (one per interaction).
    async fn audit(&self, m: &PersonasModule, action: &str, detail: &str) -> Result<(), JobError> {
        m.d.state.audit(self.guild, self.user, action, detail, self.iref.created_at, self.iref.id).await.map_err(retry)
    }
}

type Handler = for<'a> fn(&'a PersonasModule, &'a CommandCx<'a>) -> BoxFuture<'a, Result<String, JobError>>;

/// Each command's handler; the answer it returns is the person's reply.
const HANDLERS: &[(&str, Handler)] = &[
    ("remember", |m, c| Box::pin(m.remember(c))),
    ("forget", |m, c| Box::pin(m.forget(c))),
    ("memories", |m, c| Box::pin(m.memories(c))),
    ("mute", |m, c| Box::pin(m.mute(c))),
    ("unmute", |m, c| Box::pin(m.unmute(c))),
    ("chime-in", |m, c| Box::pin(m.chime_in(c))),
    ("influence", |m, c| Box::pin(m.influence(c))),
    ("takeover", |m, c| Box::pin(m.takeover(c))),
    ("higherself", |m, c| Box::pin(m.higher_self(c))),
    ("persona-settings", |m, c| Box::pin(m.settings(c))),
    ("persona-audit", |m, c| Box::pin(m.audit_log(c))),
];

/// Commands only a persona's owner may use.
const OWNER_ONLY: &[&str] = &["influence", "takeover", "higherself"];
/// Commands only members with Manage Server may use.
const ADMIN_ONLY: &[&str] = &["mute", "unmute", "chime-in", "persona-audit", "persona-settings"];

impl PersonasModule {
    /// The first response to one of the personas' commands (ingress: no model, no Discord).
    pub(super) fn acknowledge(&self, i: &InboundInteraction, cx: &IngressCx) -> Option<Reaction> {
        let command = i.command.as_deref()?;
        if command != "ask" && command != "roast" && !HANDLERS.iter().any(|(name, _)| *name == command) {
            return None;
        }
        let Some(guild) = i.guild_id else { return Some(Reaction::reply("Personas live in servers, not DMs.", true)) };
        let persona = match i.option_str("persona").map(|k| self.d.personas.find(k)) {
            Some(None) => {
                let asked = i.option_str("persona").unwrap_or("");
                return Some(Reaction::reply(
                    format!("No persona called {asked:?}. Try one of: {}.", self.names()),
                    true,
                ));
            }
            found => found.flatten(),
        };
        let admin = is_admin(i.permissions);
        let uid = i.user.as_ref().map_or(0, |u| u.id);
        if command == "ask" || command == "roast" {
            return self.ask_or_roast(i, command, persona, guild, cx);
        }
        if OWNER_ONLY.contains(&command) {
            let p = persona?;
            if p.owner != Some(uid) {
                return Some(Reaction::reply(format!("Only {}'s owner can do that.", p.name), true));
            }
        }
        if ADMIN_ONLY.contains(&command) && !admin {
            return Some(Reaction::reply("Only members with Manage Server can do that.", true));
        }
        let payload = json!({
            "interaction": InteractionRef::of(i, cx.now),
            "command": command,
            "options": i.options,
            "admin": admin,
        });
        // The job carries what the person wrote; it is about them, or about the member named.
        let people = [uid, i.option_user("user").unwrap_or(0)];
        Some(Reaction::defer(Job::builder(COMMAND, cx.now).guild(guild).people(people).payload(payload).build(), true))
    }

    fn ask_or_roast(
        &self,
        i: &InboundInteraction,
        command: &str,
        persona: Option<Arc<Persona>>,
        guild: u64,
        cx: &IngressCx,
    ) -> Option<Reaction> {
        let p = persona.or_else(|| self.d.personas.all().into_iter().next())?;
        let channel = i.channel_id?;
        let user = i.user.as_ref();
        let user_name = user.map(|u| u.display_name().to_owned()).unwrap_or_default();
        let (ack, text, roast) = if command == "ask" {
            let q = clean_input(i.option_str("question").unwrap_or_default(), MAX_INPUT_CHARS);
            (format!("**{user_name}** asks {}: {q}", p.name), q, None)
        } else {
            let target = i.option_user("target").unwrap_or(0);
            let name = i
                .resolved_users
                .iter()
                .find(|u| u.id == target)
                .map_or_else(|| "someone".to_owned(), |u| u.display_name().to_owned());
            (format!("**{user_name}** asks {} to roast **{name}**.", p.name), String::new(), Some(name))
        };
        let user_id = user.map_or(0, |u| u.id);
        let req = ReplyRequest {
            guild,
            channel,
            persona: p.id.clone(),
            user_id,
            user_name,
            text,
            message_id: None,
            replied_to: None,
            replied_text: None,
            roast,
            to_persona: false,
            chime_in: false,
        };
        let job = Job::builder(REPLY, cx.now).guild(guild).people([user_id]).payload(json!(req)).build();
        Some(Reaction { ack: Ack::Message { content: ack, ephemeral: false }, jobs: vec![job] })
    }

    /// Runs a command's job and answers the person privately.
    pub(super) async fn command_job(&self, payload: &Value) -> Result<(), JobError> {
        let iref = serde_json::from_value::<InteractionRef>(payload["interaction"].clone())
            .map_err(|e| JobError::permanent(format!("bad interaction payload: {e}")))?;
        let command = payload["command"].as_str().unwrap_or_default();
        let Some((_, handler)) = HANDLERS.iter().find(|(name, _)| *name == command) else {
            return Err(JobError::permanent(format!("personas has no command {command}")));
        };
        let cx = CommandCx {
            guild: iref.guild_id.unwrap_or(0),
            user: iref.user_id.unwrap_or(0),
            admin: payload["admin"].as_bool().unwrap_or(false),
            options: &payload["options"],
            persona: payload["options"].get("persona").and_then(Value::as_str).and_then(|k| self.d.personas.find(k)),
            now: self.d.clock.now(),
            command,
            iref,
        };
        let answer = handler(self, &cx).await?;
        // Answers about memories and settings are private: never posted in the channel.
        finish_interaction_or(&self.d.egress, &*self.d.clock, &cx.iref, &answer, Fallback::Drop).await.map_err(retry)
    }

    async fn remember(&self, c: &CommandCx<'_>) -> Result<String, JobError> {
        let text = clean_input(&c.text("text").unwrap_or_default(), 300);
        let about = c.about();
        if about != c.user && !c.admin {
            return Ok("Only admins can make den remember things about someone else.".into());
        }
        if text.is_empty() {
            return Ok("Nothing to remember.".into());
        }
        let subject = match &c.persona {
            Some(p) => Subject::PersonaUser(p.id.clone(), about),
            None => Subject::User(about),
        };
        let source = if about == c.user { "remember" } else { "admin" };
        let fact = NewFact::new(subject, text.clone(), 0.8, source).key(format!("int:{}", c.iref.id));
        self.d.memory.remember(c.guild, fact, c.now).await.map_err(retry)?;
        Ok(format!("Noted: \"{text}\"."))
    }

    async fn forget(&self, c: &CommandCx<'_>) -> Result<String, JobError> {
        let about = c.about();
        if about != c.user && !c.admin {
            return Ok("Only admins can make den forget someone else.".into());
        }
        let text = c.text("text").map(|t| clean_input(&t, 300)).filter(|t| !t.is_empty() && t != "all");
        let all = text.is_none();
        let n = self.d.memory.forget_user(c.guild, about, text, c.now).await.map_err(retry)?;
        if !all {
            return Ok(format!("Forgotten: {n} matching memories."));
        }
        // Their words waiting in the queue or kept in the dead-letter queue go too.
        let jobs = self.d.jobs.forget_person(c.guild, about).await.map_err(retry)?;
        let redacted = self.d.state.redact_audit(c.guild, about).await.map_err(retry)?;
        tracing::info!(guild = c.guild, rows = n, jobs, audit = redacted, "a person was forgotten");
        if about != c.user {
            c.audit(self, "forget", &format!("user {about}: {n} rows, {jobs} queued jobs")).await?;
        }
        Ok(format!("Forgotten: everything den remembered ({n} items), including what it saw you say."))
    }

    async fn memories(&self, c: &CommandCx<'_>) -> Result<String, JobError> {
        let facts = self.d.memory.about_user(c.guild, c.user).await.map_err(retry)?;
        let persona = c.persona.as_ref().map(|p| p.id.as_str());
        let facts: Vec<_> = facts
            .into_iter()
            .filter(|f| persona.is_none_or(|p| f.persona.as_deref().is_none_or(|fp| fp == p)))
            .collect();
        if facts.is_empty() {
            return Ok("den remembers nothing about you here.".into());
        }
        let mut out = format!("What den remembers about you ({}):\n", facts.len());
        for f in facts.iter().take(25) {
            let whose = f.persona.as_deref().map(|p| format!(" ({p})")).unwrap_or_default();
            out.push_str(&format!("- {}{whose}\n", f.text));
        }
        out.push_str("`/forget` removes them.");
        Ok(out)
    }

    async fn mute(&self, c: &CommandCx<'_>) -> Result<String, JobError> {
        let Some(p) = &c.persona else { return Ok("No such persona.".into()) };
        let minutes = c.number("minutes", 1, MAX_MUTE_MINUTES);
        let until = minutes.map(|m| c.now.plus(Duration::from_secs(m.unsigned_abs() * 60)));
        let channel = c.id("channel").unwrap_or(0);
        self.d.state.mute(c.guild, &p.id, channel, until).await.map_err(retry)?;
        c.audit(self, "mute", &format!("{} channel {channel} minutes {minutes:?}", p.id)).await?;
        let place = if channel == 0 { "everywhere".to_owned() } else { format!("in <#{channel}>") };
        let time = minutes.map(|m| format!(" for {m} min")).unwrap_or_default();
        Ok(format!("{} is muted {place}{time}.", p.name))
    }

    async fn unmute(&self, c: &CommandCx<'_>) -> Result<String, JobError> {
        let Some(p) = &c.persona else { return Ok("No such persona.".into()) };
        let n = self.d.state.unmute(c.guild, &p.id).await.map_err(retry)?;
        c.audit(self, "unmute", &p.id).await?;
        Ok(if n == 0 { format!("{} was not muted.", p.name) } else { format!("{} may speak again.", p.name) })
    }

    async fn chime_in(&self, c: &CommandCx<'_>) -> Result<String, JobError> {
        let channel = c.id("channel").or(c.iref.channel_id).unwrap_or(0);
        let on = c.options.get("on").and_then(Value::as_bool).unwrap_or(true);
        self.d.state.set_chime_in(c.guild, channel, on).await.map_err(retry)?;
        c.audit(self, "chime-in", &format!("channel {channel} {on}")).await?;
        Ok(format!("Unprompted chime-ins are {} in <#{channel}>.", if on { "on" } else { "off" }))
    }

    async fn influence(&self, c: &CommandCx<'_>) -> Result<String, JobError> {
        let Some(p) = &c.persona else { return Ok("No such persona.".into()) };
        let text = clean_input(&c.text("text").unwrap_or_default(), MAX_INPUT_CHARS);
        c.audit(self, c.command, &format!("{}: {text}", p.id)).await?;
        let turns = self.d.config.directive_turns;
        self.d.state.set_directive(c.guild, &p.id, &text, turns).await.map_err(retry)?;
        Ok(format!("{} will follow that for its next {turns} replies.", p.name))
    }

    /// Posts the owner's words as the persona, through the output filter like
    /// every other persona line (an owner can be wrong, or impersonated).
    async fn takeover(&self, c: &CommandCx<'_>) -> Result<String, JobError> {
        let Some(p) = &c.persona else { return Ok("No such persona.".into()) };
        let text = clean_input(&c.text("text").unwrap_or_default(), MAX_INPUT_CHARS);
        if let Err(why) = self.filter.check(&text) {
            c.audit(self, c.command, &format!("{}: refused by the output filter", p.id)).await?;
            return Ok(format!("den will not post that as {}: {why}.", p.name));
        }
        c.audit(self, c.command, &format!("{}: {text}", p.id)).await?;
        let channel = c.iref.channel_id.unwrap_or(0);
        let key = format!("takeover:{}", c.iref.id);
        let posted = self.speakers.post_once(p, channel, &text, &key, c.now).await.map_err(retry)?;
        for id in posted.ids() {
            self.d.state.mark_persona_message(*id, &p.id, c.now).await.map_err(retry)?;
        }
        if let Some(last) = posted.ids().last() {
            let line = Line {
                message_id: *last,
                user_id: 0,
                persona: Some(p.id.clone()),
                author: p.name.clone(),
                text,
                at: c.now,
                about_user: 0,
            };
            self.d.memory.record(c.guild, channel, line).await.map_err(retry)?;
        }
        Ok(format!("Posted as {}.", p.name))
    }

    async fn higher_self(&self, c: &CommandCx<'_>) -> Result<String, JobError> {
        let Some(p) = &c.persona else { return Ok("No such persona.".into()) };
        let on = c.text("mode").as_deref() != Some("off");
        c.audit(self, c.command, &format!("{}: {}", p.id, if on { "on" } else { "off" })).await?;
        self.d.state.set_higher_self(c.guild, &p.id, on).await.map_err(retry)?;
        Ok(if on {
            format!("Higher Self is on: {} stays quiet unless you speak through it.", p.name)
        } else {
            format!("Higher Self is off: {} speaks for itself again.", p.name)
        })
    }

    async fn settings(&self, c: &CommandCx<'_>) -> Result<String, JobError> {
        let per_minute = |k: &str| c.number(k, 1, 1_000).and_then(|n| u32::try_from(n).ok());
        let change = GuildLimits {
            user_per_minute: per_minute("user-per-minute"),
            channel_per_minute: per_minute("channel-per-minute"),
            daily_tokens: c.number("daily-tokens", 0, 1_000_000_000).and_then(|n| u64::try_from(n).ok()),
        };
        let s = &self.d.state;
        let limits = if change == GuildLimits::default() {
            s.guild_limits(c.guild).await.map_err(retry)?
        } else {
            c.audit(self, "persona-settings", &format!("{change:?}")).await?;
            s.set_guild_limits(c.guild, change).await.map_err(retry)?
        };
        let config = &self.d.config;
        let tokens = match limits.daily_tokens.filter(|n| *n > 0).or(config.budget.per_guild) {
            Some(n) => n.to_string(),
            None => "unlimited".to_owned(),
        };
        Ok(format!(
            "Limits here: {} requests per person per minute, {} persona replies per channel per minute, {} tokens a day.",
            limits.user_per_minute.unwrap_or(config.user_per_minute),
            limits.channel_per_minute.unwrap_or(config.channel_per_minute),
            tokens
        ))
    }

    async fn audit_log(&self, c: &CommandCx<'_>) -> Result<String, JobError> {
        let entries = self.d.state.audit_log(c.guild, 20).await.map_err(retry)?;
        if entries.is_empty() {
            return Ok("The audit log is empty.".into());
        }
        Ok(entries
            .iter()
            .map(|(at, who, action, detail)| format!("<t:{}:f> <@{who}> {action}: {detail}", at.as_secs()))
            .collect::<Vec<_>>()
            .join("\n"))
    }

    /// Turns a channel's recent conversation into facts, exactly once per job.
    pub(super) async fn consolidate_job(&self, job: &str, payload: &Value) -> Result<(), JobError> {
        let (Some(guild), Some(channel)) = (payload["guild"].as_u64(), payload["channel"].as_u64()) else {
            return Err(JobError::permanent("bad consolidation payload"));
        };
        let Some(models) = &self.d.models else { return Ok(()) };
        let now = self.d.clock.now();
        if self.d.ledger.check(guild, MEMORY_LEDGER, &self.d.config.budget).await.map_err(retry)?
            == BudgetCheck::Exhausted
        {
            tracing::info!(guild, "memory consolidation skipped: today's token budget is spent");
            return Ok(());
        }
        let n = usize::try_from(payload["lines"].as_u64().unwrap_or(50)).unwrap_or(50).clamp(5, 100);
        let lines = self.d.memory.recent(guild, channel, n, now).await.map_err(retry)?;
        let cx = crate::consolidate::Consolidation {
            memory: &self.d.memory,
            model: &*models.default,
            filter: &self.filter,
            decisions: &self.d.state,
            job,
        };
        let outcome = crate::consolidate::run(&cx, guild, &lines, now).await.map_err(|e| match e {
            crate::consolidate::ConsolidateError::Model(e) if e.kind().is_retryable() => retry(e),
            crate::consolidate::ConsolidateError::Store(e) => retry(e),
            e => JobError::permanent(e.to_string()),
        })?;
        self.d.ledger.record(guild, MEMORY_LEDGER, outcome.usage).await.map_err(retry)?;
        tracing::info!(
            guild,
            channel,
            added = outcome.added,
            updated = outcome.updated,
            deleted = outcome.deleted,
            refused = outcome.refused,
            "memory consolidated"
        );
        Ok(())
    }
}
