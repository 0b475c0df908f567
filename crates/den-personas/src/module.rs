//! The personas module: who answers which message, streamed replies under the
//! persona's name, and the slash commands.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use den_core::{Clock, Job, Timestamp};
use den_discord::events::{ADMINISTRATOR, InboundInteraction, InboundMessage, MANAGE_GUILD};
use den_discord::router::{Fallback, finish_interaction_or};
use den_discord::split::{MAX_MESSAGE_CHARS, split_message};
use den_discord::{
    Ack, CommandSpec, Egress, Identity, IngressCx, InteractionRef, Module, OptionKind, OptionSpec, Reaction,
};
use den_llm::ledger::{BudgetCheck, Ledger};
use den_llm::{ChatStream, LlmError, StreamEvent, Usage};
use den_worker::{JobContext, JobError, JobHandler, JobQueue};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::memory::{Line, MemoryStore, Subject};
use crate::persona::{Persona, PersonaSet};
use crate::prompt::{Cue, PromptParts, RULES};
use crate::safety::{MAX_INPUT_CHARS, OutputFilter, clean_input};
use crate::state::{State, Window};
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
    /// Egresses of personas with their own bot account, by persona id.
    pub bots: HashMap<String, Arc<Egress>>,
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
}

impl std::fmt::Debug for PersonasModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PersonasModule").field("personas", &self.d.personas.all().len()).finish_non_exhaustive()
    }
}

fn retry(e: impl std::fmt::Display) -> JobError {
    JobError::retry(e.to_string())
}

fn is_admin(permissions: u64) -> bool {
    permissions & (ADMINISTRATOR | MANAGE_GUILD) != 0
}

impl PersonasModule {
    /// The module; fails on a bad deny pattern.
    pub fn new(deps: Deps) -> Result<Arc<Self>, String> {
        let markers = RULES.iter().map(|r| (*r).to_owned()).collect();
        let filter = OutputFilter::new(&deps.config.deny_patterns, markers)?;
        Ok(Arc::new(Self { d: deps, filter }))
    }

    /// The personas.
    #[must_use]
    pub fn personas(&self) -> &Arc<PersonaSet> {
        &self.d.personas
    }

    fn identity(p: &Persona) -> Identity {
        Identity { name: p.name.clone(), avatar_url: p.avatar_url.clone() }
    }

    /// Posts `text` as the persona; returns the message ids.
    async fn post(&self, p: &Persona, channel: u64, text: &str) -> Result<Vec<u64>, den_discord::DiscordError> {
        match self.d.bots.get(&p.id) {
            Some(bot) => bot.send_text(channel, text, None).await,
            None => self.d.egress.send_as(channel, &Self::identity(p), text).await,
        }
    }

    async fn edit(&self, p: &Persona, channel: u64, message: u64, text: &str) -> Result<(), den_discord::DiscordError> {
        match self.d.bots.get(&p.id) {
            Some(bot) => bot.edit_text(channel, message, text).await,
            None => self.d.egress.edit_as(channel, message, text).await,
        }
    }

    /// A short line in character, posted without the model (limits, failures).
    async fn notice(&self, p: &Persona, channel: u64, text: &str) -> Result<(), JobError> {
        let ids = self.post(p, channel, text).await.map_err(retry)?;
        let now = self.d.clock.now();
        for id in ids {
            self.d.state.mark_persona_message(id, &p.id, now).await.map_err(retry)?;
        }
        Ok(())
    }

    /// Who, if anyone, answers a person's message: the persona named (the
    /// least recently heard when several are), else the one replied to,
    /// else, where chime-ins are on, one that feels like it.
    async fn choose(&self, m: &InboundMessage, text: &str) -> Result<Option<(Arc<Persona>, bool)>, JobError> {
        let all = self.d.personas.all();
        let named: Vec<&Arc<Persona>> = all.iter().filter(|p| p.is_named_in(text)).collect();
        let replied = match &m.referenced_message {
            Some(r) if r.webhook_id.is_some() || r.author.bot => {
                match self.d.state.persona_of(r.id).await.map_err(retry)? {
                    Some(id) => all.iter().find(|p| p.id == id),
                    // Not marked yet (a reply faster than den's bookkeeping): its webhook name tells.
                    None => r.webhook_id.and(self.by_webhook_name(&all, &r.author.username)),
                }
            }
            _ => None,
        };
        let guild = m.guild_id.unwrap_or(0);
        let run = self.d.state.channel(m.channel_id).await.map_err(retry)?;
        let least_recent = |ps: Vec<&Arc<Persona>>| {
            ps.into_iter().min_by_key(|p| run.last_spoke.get(&p.id).and_then(Value::as_i64).unwrap_or(0)).cloned()
        };
        if named.len() == 1 {
            return Ok(Some((named[0].clone(), false)));
        }
        if !named.is_empty() {
            return Ok(least_recent(named).map(|p| (p, false)));
        }
        if let Some(p) = replied {
            return Ok(Some((p.clone(), false)));
        }
        if self.d.state.chime_in(guild, m.channel_id).await.map_err(retry)? {
            let willing: Vec<&Arc<Persona>> = all.iter().filter(|p| rand::random::<f64>() < p.talkativeness).collect();
            return Ok(least_recent(willing).map(|p| (p, true)));
        }
        Ok(None)
    }

    async fn on_message_job(&self, job_id: &str, payload: &Value) -> Result<(), JobError> {
        let m: InboundMessage = serde_json::from_value(payload["message"].clone())
            .map_err(|e| JobError::permanent(format!("bad message payload: {e}")))?;
        let Some(guild) = m.guild_id else { return Ok(()) };
        let now = self.d.clock.now();
        let text = clean_input(&m.content, MAX_INPUT_CHARS);
        if text.is_empty() {
            return Ok(());
        }
        // Bots and webhooks, personas included, are neither remembered nor
        // answered here: a persona's reply records itself and cues the next
        // persona when it is complete (its MESSAGE_CREATE holds only the
        // first streamed words).
        if m.webhook_id.is_some() || m.author.bot {
            return Ok(());
        }
        let line = Line {
            message_id: m.id,
            user_id: m.author.id,
            persona: None,
            author: m.author.display_name().to_owned(),
            text: text.clone(),
            at: now,
            about_user: 0,
        };
        self.d.memory.record(guild, m.channel_id, line).await.map_err(retry)?;
        let seen = self.d.state.human_spoke(m.channel_id).await.map_err(retry)?;
        let every = self.d.config.consolidate_every;
        if every > 0 && seen % every == 0 && self.d.models.is_some() {
            let payload = json!({"guild": guild, "channel": m.channel_id, "lines": every});
            let job = Job::builder(CONSOLIDATE, now)
                .guild(guild)
                .dedup_key(format!("consolidate:{}:{}", m.channel_id, seen / every))
                .payload(payload)
                .build();
            self.d.jobs.send(&job).await.map_err(retry)?;
        }
        let mut req = ReplyRequest {
            guild,
            channel: m.channel_id,
            persona: String::new(),
            user_id: m.author.id,
            user_name: m.author.display_name().to_owned(),
            text: text.clone(),
            message_id: Some(m.id),
            replied_to: m.referenced_message.as_ref().map(|r| r.id),
            replied_text: m
                .referenced_message
                .as_ref()
                .map(|r| (r.author.display_name().to_owned(), clean_input(&r.content, MAX_INPUT_CHARS))),
            roast: None,
            to_persona: false,
            chime_in: false,
        };
        // Text commands: `!ask <persona> <question>`, `!roast <name> [persona]`.
        if let Some(rest) = text.strip_prefix(self.d.config.prefix.as_str()) {
            let (cmd, args) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            let args = args.trim();
            match cmd {
                "ask" => {
                    let (who, question) = args.split_once(char::is_whitespace).unwrap_or((args, ""));
                    let Some(p) = self.d.personas.find(who) else { return Ok(()) };
                    req.persona = p.id.clone();
                    req.text = question.trim().to_owned();
                    return self.speak(job_id, req).await;
                }
                "roast" => {
                    let mut words: Vec<&str> = args.split_whitespace().collect();
                    let p = match words.last().and_then(|w| self.d.personas.find(w)) {
                        Some(p) if words.len() > 1 => {
                            words.pop();
                            Some(p)
                        }
                        _ => self.d.personas.all().into_iter().next(),
                    };
                    let Some(p) = p else { return Ok(()) };
                    let target = words.join(" ");
                    req.persona = p.id.clone();
                    req.roast = Some(if target.is_empty() { req.user_name.clone() } else { target });
                    return self.speak(job_id, req).await;
                }
                _ => {}
            }
        }
        let Some((chosen, chime_in)) = self.choose(&m, &text).await? else { return Ok(()) };
        req.persona = chosen.id.clone();
        req.chime_in = chime_in;
        self.speak(job_id, req).await
    }

    /// Rate limits for a person's request; `Ok(false)` when it must not be answered.
    async fn within_limits(&self, p: &Persona, req: &ReplyRequest) -> Result<bool, JobError> {
        let now = self.d.clock.now();
        let s = &self.d.state;
        let c = &self.d.config;
        let own = s.guild_limits(req.guild).await.map_err(retry)?;
        let windows = [
            (
                format!("user:{}:{}", req.guild, req.user_id),
                own.user_per_minute.unwrap_or(c.user_per_minute),
                req.user_id != 0,
            ),
            (format!("chan:{}", req.channel), own.channel_per_minute.unwrap_or(c.channel_per_minute), true),
        ];
        for (key, limit, applies) in windows {
            if !applies {
                continue;
            }
            match s.take_minute(&key, limit, now).await.map_err(retry)? {
                Window::Allowed => {}
                Window::JustExceeded => {
                    if !req.chime_in && !req.to_persona {
                        let text = format!("*{} waves you off.* Give me a minute, I'm only one persona.", p.name);
                        self.notice(p, req.channel, &text).await?;
                    }
                    return Ok(false);
                }
                Window::Silenced => return Ok(false),
            }
        }
        let mut budget = c.budget;
        if let Some(n) = own.daily_tokens.filter(|n| *n > 0) {
            budget.per_guild = Some(n);
        }
        match self.d.ledger.check(req.guild, &p.id, &budget).await.map_err(retry)? {
            BudgetCheck::Allowed { .. } => Ok(true),
            BudgetCheck::Exhausted => {
                if s.first_today(&format!("budget:{}", req.guild), now).await.map_err(retry)? {
                    let text = format!("*{} yawns.* I've talked myself hoarse today. Back tomorrow.", p.name);
                    self.notice(p, req.channel, &text).await?;
                }
                Ok(false)
            }
        }
    }

    /// A persona answers, once per job: a redelivered job whose reply already
    /// started to appear does nothing.
    async fn speak(&self, job_id: &str, req: ReplyRequest) -> Result<(), JobError> {
        let Some(p) = self.d.personas.find(&req.persona) else { return Ok(()) };
        let s = &self.d.state;
        if s.reply_posted(job_id).await.map_err(retry)? {
            tracing::info!(job = job_id, "reply already posted by an earlier delivery");
            return Ok(());
        }
        if s.is_muted(req.guild, &p.id, req.channel).await.map_err(retry)?
            || s.higher_self(req.guild, &p.id).await.map_err(retry)?
        {
            return Ok(());
        }
        if !self.within_limits(&p, &req).await? {
            return Ok(());
        }
        let Some(models) = &self.d.models else {
            return Err(JobError::permanent("no language model is configured for personas"));
        };
        let now = self.d.clock.now();
        // Counted now, not when done, so the brakes hold while replies stream.
        s.persona_spoke(req.channel, &p.id, now).await.map_err(retry)?;
        let directive = s.take_directive(req.guild, &p.id).await.map_err(retry)?;
        let directives: Vec<String> = directive.into_iter().map(|d| d.text).collect();
        let request = compose(&self.d.memory, &self.d.config, &p, &req, &directives, now).await.map_err(retry)?;
        let model = models.for_persona(&p);
        let outcome = self.stream_reply(job_id, &p, req.channel, model.stream(&request).await).await;
        let (posted, text, usage) = match outcome {
            Ok(done) => done,
            Err(ReplyFailure::Model(e)) => {
                tracing::warn!(persona = %p.id, error = %e, "model failed; apologising");
                let text = format!("*{} loses the thread.* Sorry, my head's not in it. Ask me again in a bit.", p.name);
                self.notice(&p, req.channel, &text).await?;
                return Err(JobError::permanent(format!("model failed: {e}")));
            }
            Err(ReplyFailure::Discord(e)) => return Err(retry(e)),
        };
        if let Some(usage) = usage {
            self.d.ledger.record(req.guild, &p.id, usage).await.map_err(retry)?;
        }
        let now = self.d.clock.now();
        let Some(last) = posted.last().copied() else { return Ok(()) };
        let line = Line {
            message_id: last,
            user_id: 0,
            persona: Some(p.id.clone()),
            author: p.name.clone(),
            text,
            at: now,
            about_user: req.user_id,
        };
        self.d.memory.record(req.guild, req.channel, line.clone()).await.map_err(retry)?;
        self.cue_next_persona(&p, &req, &line).await
    }

    /// After a persona spoke: another persona it named answers, within the
    /// brakes (streak without a person, hourly cap, never itself), after the gap.
    async fn cue_next_persona(&self, speaker: &Persona, req: &ReplyRequest, line: &Line) -> Result<(), JobError> {
        let now = self.d.clock.now();
        let all = self.d.personas.all();
        let named: Vec<&Arc<Persona>> =
            all.iter().filter(|p| p.id != speaker.id && p.is_named_in(&line.text)).collect();
        if named.is_empty() {
            return Ok(());
        }
        let run = self.d.state.channel(req.channel).await.map_err(retry)?;
        if run.persona_streak >= self.d.config.max_persona_streak {
            return Ok(());
        }
        let next = named
            .into_iter()
            .min_by_key(|p| run.last_spoke.get(&p.id).and_then(Value::as_i64).unwrap_or(0))
            .map(|p| p.id.clone());
        let Some(next) = next else { return Ok(()) };
        if !self.d.state.take_hourly(req.channel, self.d.config.hourly_persona_cap, now).await.map_err(retry)? {
            return Ok(());
        }
        let cue = ReplyRequest {
            guild: req.guild,
            channel: req.channel,
            persona: next,
            user_id: 0,
            user_name: speaker.name.clone(),
            text: line.text.clone(),
            message_id: Some(line.message_id),
            replied_to: None,
            replied_text: None,
            roast: None,
            to_persona: true,
            chime_in: false,
        };
        let job = Job::builder(REPLY, now).guild(req.guild).payload(json!(cue)).build();
        self.d.jobs.send_delayed(&job, self.d.config.persona_gap).await.map_err(retry)?;
        Ok(())
    }

    fn by_webhook_name<'a>(&self, all: &'a [Arc<Persona>], name: &str) -> Option<&'a Arc<Persona>> {
        all.iter().find(|p| den_discord::egress::sanitize_webhook_name(&p.name) == name)
    }

    /// Streams a reply into Discord: posted with the first words, edited at
    /// most once per interval, split past 2,000 characters, and checked by
    /// the output filter before anything is shown. A reply that fails the
    /// filter is regenerated once, then replaced.
    async fn stream_reply(
        &self,
        job_id: &str,
        p: &Persona,
        channel: u64,
        opened: Result<ChatStream, LlmError>,
    ) -> Result<(Vec<u64>, String, Option<Usage>), ReplyFailure> {
        let mut stream = opened.map_err(ReplyFailure::Model)?;
        let mut shown = Shown { job: job_id.to_owned(), ..Shown::default() };
        let mut text = String::new();
        let mut last_flush = Instant::now();
        let interval = self.d.config.stream_edit_interval;
        let mut usage = None;
        let mut refused = false;
        while let Some(event) = stream.next().await {
            match event {
                Ok(StreamEvent::Delta(d)) => {
                    text.push_str(&d);
                    if self.filter.check(&text).is_err() {
                        refused = true;
                        break;
                    }
                    if let Some(every) = interval
                        && !text.trim().is_empty()
                        && (shown.ids.is_empty() || last_flush.elapsed() >= every)
                    {
                        self.flush(p, channel, &mut shown, &text).await?;
                        last_flush = Instant::now();
                    }
                }
                Ok(StreamEvent::Done { usage: u, .. }) => {
                    usage = Some(u);
                    break;
                }
                Err(e) => return Err(ReplyFailure::Model(e)),
            }
        }
        drop(stream);
        if refused {
            text = self.regenerate(p, &text).await;
        }
        let text = text.trim().to_owned();
        let text = if text.is_empty() { format!("*{} shrugs.*", p.name) } else { text };
        self.flush(p, channel, &mut shown, &text).await?;
        Ok((shown.ids, text, usage))
    }

    /// A reply that failed the filter: asked for once more, without the
    /// offending draft; replaced when that fails too.
    async fn regenerate(&self, p: &Persona, draft: &str) -> String {
        let fallback = format!("*{} starts to say something, then thinks better of it.*", p.name);
        let Some(models) = &self.d.models else { return fallback };
        tracing::info!(persona = %p.id, chars = draft.len(), "reply refused by the output filter; regenerating");
        let mut request = den_llm::ChatRequest::simple(
            crate::prompt::character(p) + "\n\nRules:\n- " + &RULES.join("\n- "),
            "(Your last answer broke the rules. Give a short, clean, funny line instead.)",
        );
        request.max_tokens = self.d.config.max_reply_tokens;
        match models.for_persona(p).stream(&request).await {
            Ok(s) => match den_llm::collect(s).await {
                Ok((t, _, _)) if self.filter.check(&t).is_ok() && !t.trim().is_empty() => t,
                _ => fallback,
            },
            Err(_) => fallback,
        }
    }

    /// Makes Discord show `text`: edits the pieces that changed, posts new ones.
    async fn flush(&self, p: &Persona, channel: u64, shown: &mut Shown, text: &str) -> Result<(), ReplyFailure> {
        let pieces = split_message(text, MAX_MESSAGE_CHARS);
        for (i, piece) in pieces.iter().enumerate() {
            if let Some(id) = shown.ids.get(i) {
                if shown.texts[i] != *piece {
                    self.edit(p, channel, *id, piece).await.map_err(ReplyFailure::Discord)?;
                    shown.texts[i].clone_from(piece);
                }
            } else {
                let ids = self.post(p, channel, piece).await.map_err(ReplyFailure::Discord)?;
                let now = self.d.clock.now();
                if shown.ids.is_empty()
                    && let Err(e) = self.d.state.mark_reply_posted(&shown.job, now).await
                {
                    tracing::warn!(error = %e, "cannot record that a reply was posted");
                }
                for id in ids {
                    // Marked at once, so a quick reply to it finds its persona.
                    if let Err(e) = self.d.state.mark_persona_message(id, &p.id, now).await {
                        tracing::warn!(error = %e, "cannot mark a persona message");
                    }
                    shown.ids.push(id);
                    shown.texts.push(piece.clone());
                }
            }
        }
        Ok(())
    }

    async fn consolidate_job(&self, payload: &Value) -> Result<(), JobError> {
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
        let outcome = crate::consolidate::run(&self.d.memory, &*models.default, &self.filter, guild, &lines, now)
            .await
            .map_err(|e| match e {
                crate::consolidate::ConsolidateError::Model(e) if e.kind().is_retryable() => retry(e),
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

    async fn command_job(&self, payload: &Value) -> Result<(), JobError> {
        let iref = serde_json::from_value::<InteractionRef>(payload["interaction"].clone())
            .map_err(|e| JobError::permanent(format!("bad interaction payload: {e}")))?;
        let guild = iref.guild_id.unwrap_or(0);
        let user = iref.user_id.unwrap_or(0);
        let admin = payload["admin"].as_bool().unwrap_or(false);
        let opt = |k: &str| payload["options"].get(k).and_then(Value::as_str).map(str::to_owned);
        let opt_id = |k: &str| {
            payload["options"].get(k).and_then(|v| v.as_str().and_then(|s| s.parse().ok()).or_else(|| v.as_u64()))
        };
        let now = self.d.clock.now();
        let s = &self.d.state;
        let mem = &self.d.memory;
        let persona = opt("persona").and_then(|k| self.d.personas.find(&k));
        let answer = match payload["command"].as_str().unwrap_or_default() {
            "remember" => {
                let text = clean_input(&opt("text").unwrap_or_default(), 300);
                let about = opt_id("user").unwrap_or(user);
                if about != user && !admin {
                    "Only admins can make den remember things about someone else.".to_owned()
                } else if text.is_empty() {
                    "Nothing to remember.".to_owned()
                } else {
                    let subject = match &persona {
                        Some(p) => Subject::PersonaUser(p.id.clone(), about),
                        None => Subject::User(about),
                    };
                    let source = if about == user { "remember" } else { "admin" };
                    mem.remember(guild, subject, text.clone(), 0.8, source, now).await.map_err(retry)?;
                    format!("Noted: \"{text}\".")
                }
            }
            "forget" => {
                let about = opt_id("user").unwrap_or(user);
                if about != user && !admin {
                    "Only admins can make den forget someone else.".to_owned()
                } else {
                    let text = opt("text").map(|t| clean_input(&t, 300)).filter(|t| !t.is_empty() && t != "all");
                    let all = text.is_none();
                    let n = mem.forget_user(guild, about, text).await.map_err(retry)?;
                    if about != user {
                        s.audit(guild, user, "forget", &format!("user {about}: {n} rows"), now).await.map_err(retry)?;
                    }
                    if all {
                        format!("Forgotten: everything den remembered ({n} items), including what it saw you say.")
                    } else {
                        format!("Forgotten: {n} matching memories.")
                    }
                }
            }
            "memories" => {
                let facts = mem.about_user(guild, user).await.map_err(retry)?;
                let facts: Vec<_> = facts
                    .into_iter()
                    .filter(|f| persona.as_ref().is_none_or(|p| f.persona.as_deref().is_none_or(|fp| fp == p.id)))
                    .collect();
                if facts.is_empty() {
                    "den remembers nothing about you here.".to_owned()
                } else {
                    let mut out = format!("What den remembers about you ({}):\n", facts.len());
                    for f in facts.iter().take(25) {
                        let whose = f.persona.as_deref().map(|p| format!(" ({p})")).unwrap_or_default();
                        out.push_str(&format!("- {}{whose}\n", f.text));
                    }
                    out.push_str("`/forget` removes them.");
                    out
                }
            }
            "mute" => {
                let Some(p) = persona else { return self.finish(&iref, "No such persona.").await };
                let minutes = payload["options"].get("minutes").and_then(Value::as_u64);
                let until = minutes.map(|m| Timestamp(now.0 + i64::try_from(m).unwrap_or(0).saturating_mul(60_000)));
                let channel = opt_id("channel").unwrap_or(0);
                s.mute(guild, &p.id, channel, until).await.map_err(retry)?;
                s.audit(guild, user, "mute", &format!("{} channel {channel} minutes {minutes:?}", p.id), now)
                    .await
                    .map_err(retry)?;
                let place = if channel == 0 { "everywhere".to_owned() } else { format!("in <#{channel}>") };
                let time = minutes.map(|m| format!(" for {m} min")).unwrap_or_default();
                format!("{} is muted {place}{time}.", p.name)
            }
            "unmute" => {
                let Some(p) = persona else { return self.finish(&iref, "No such persona.").await };
                let n = s.unmute(guild, &p.id).await.map_err(retry)?;
                s.audit(guild, user, "unmute", &p.id, now).await.map_err(retry)?;
                if n == 0 { format!("{} was not muted.", p.name) } else { format!("{} may speak again.", p.name) }
            }
            "chime-in" => {
                let channel = opt_id("channel").or(iref.channel_id).unwrap_or(0);
                let on = payload["options"].get("on").and_then(Value::as_bool).unwrap_or(true);
                s.set_chime_in(guild, channel, on).await.map_err(retry)?;
                s.audit(guild, user, "chime-in", &format!("channel {channel} {on}"), now).await.map_err(retry)?;
                format!("Unprompted chime-ins are {} in <#{channel}>.", if on { "on" } else { "off" })
            }
            "influence" | "takeover" | "higherself" => {
                let Some(p) = persona else { return self.finish(&iref, "No such persona.").await };
                let command = payload["command"].as_str().unwrap_or_default();
                let text = clean_input(&opt("text").unwrap_or_default(), MAX_INPUT_CHARS);
                s.audit(guild, user, command, &format!("{}: {text}", p.id), now).await.map_err(retry)?;
                match command {
                    "influence" => {
                        s.set_directive(guild, &p.id, &text, self.d.config.directive_turns).await.map_err(retry)?;
                        format!("{} will follow that for its next {} replies.", p.name, self.d.config.directive_turns)
                    }
                    "takeover" => {
                        let channel = iref.channel_id.unwrap_or(0);
                        let ids = self.post(&p, channel, &text).await.map_err(retry)?;
                        for id in &ids {
                            s.mark_persona_message(*id, &p.id, now).await.map_err(retry)?;
                        }
                        if let Some(last) = ids.last() {
                            let line = Line {
                                message_id: *last,
                                user_id: 0,
                                persona: Some(p.id.clone()),
                                author: p.name.clone(),
                                text: text.clone(),
                                at: now,
                                about_user: 0,
                            };
                            mem.record(guild, channel, line).await.map_err(retry)?;
                        }
                        format!("Posted as {}.", p.name)
                    }
                    _ => {
                        let on = opt("mode").as_deref() != Some("off");
                        s.set_higher_self(guild, &p.id, on).await.map_err(retry)?;
                        if on {
                            format!("Higher Self is on: {} stays quiet unless you speak through it.", p.name)
                        } else {
                            format!("Higher Self is off: {} speaks for itself again.", p.name)
                        }
                    }
                }
            }
            "persona-settings" => {
                let num = |k: &str| payload["options"].get(k).and_then(Value::as_u64);
                let change = crate::state::GuildLimits {
                    user_per_minute: num("user-per-minute").map(|n| n.min(1_000) as u32),
                    channel_per_minute: num("channel-per-minute").map(|n| n.min(1_000) as u32),
                    daily_tokens: num("daily-tokens"),
                };
                let limits = if change == crate::state::GuildLimits::default() {
                    s.guild_limits(guild).await.map_err(retry)?
                } else {
                    s.audit(guild, user, "persona-settings", &format!("{change:?}"), now).await.map_err(retry)?;
                    s.set_guild_limits(guild, change).await.map_err(retry)?
                };
                let c = &self.d.config;
                let tokens = match limits.daily_tokens.filter(|n| *n > 0).or(c.budget.per_guild) {
                    Some(n) => n.to_string(),
                    None => "unlimited".to_owned(),
                };
                format!(
                    "Limits here: {} requests per person per minute, {} persona replies per channel per minute, {} tokens a day.",
                    limits.user_per_minute.unwrap_or(c.user_per_minute),
                    limits.channel_per_minute.unwrap_or(c.channel_per_minute),
                    tokens
                )
            }
            "persona-audit" => {
                let entries = s.audit_log(guild, 20).await.map_err(retry)?;
                if entries.is_empty() {
                    "The audit log is empty.".to_owned()
                } else {
                    entries
                        .iter()
                        .map(|(at, who, action, detail)| format!("<t:{}:f> <@{who}> {action}: {detail}", at.as_secs()))
                        .collect::<Vec<_>>()
                        .join("\n")
                }
            }
            other => return Err(JobError::permanent(format!("personas has no command {other}"))),
        };
        self.finish(&iref, &answer).await
    }

    async fn finish(&self, iref: &InteractionRef, text: &str) -> Result<(), JobError> {
        // Answers about memories and settings are private: never posted in the channel.
        finish_interaction_or(&self.d.egress, &*self.d.clock, iref, text, Fallback::Drop).await.map_err(retry)
    }
}

/// The request for a persona's reply: its character, the channel's recent
/// transcript, the message replied to, recalled memories of the person it
/// answers, and memory triggers, inside the configured budget.
pub async fn compose(
    memory: &MemoryStore,
    config: &PersonasConfig,
    p: &Persona,
    req: &ReplyRequest,
    directives: &[String],
    now: Timestamp,
) -> Result<den_llm::ChatRequest, crate::memory::MemoryError> {
    let mut transcript = memory.recent(req.guild, req.channel, config.transcript_lines, now).await?;
    let replied_to = match req.replied_to {
        Some(id) => memory.line(req.guild, req.channel, id).await?.or_else(|| {
            req.replied_text.as_ref().map(|(author, text)| Line {
                message_id: id,
                user_id: 0,
                persona: None,
                author: author.clone(),
                text: text.clone(),
                at: now,
                about_user: 0,
            })
        }),
        None => None,
    };
    // Only the person it answers: never anyone else's memories.
    let memories = if req.user_id == 0 {
        Vec::new()
    } else {
        memory.recall(req.guild, &p.id, req.user_id, &req.text, 8, now).await?
    };
    let triggered = p.triggered_recalls(&req.text);
    let cue = match (&req.roast, req.to_persona, req.chime_in) {
        (Some(target), _, _) => Cue::Roast { target: target.clone() },
        (None, true, _) => Cue::PersonaTurn,
        (None, false, true) => Cue::ChimeIn,
        _ => Cue::Addressed,
    };
    // `/ask` questions are not in the channel: add them as the last line.
    if req.message_id.is_none() && !req.text.is_empty() {
        transcript.push(Line {
            message_id: u64::MAX,
            user_id: req.user_id,
            persona: None,
            author: req.user_name.clone(),
            text: req.text.clone(),
            at: now,
            about_user: 0,
        });
    }
    Ok(crate::prompt::build(&PromptParts {
        persona: p,
        directives,
        memories: &memories,
        triggered: &triggered,
        transcript: &transcript,
        replied_to: replied_to.as_ref(),
        cue,
        budget_tokens: config.prompt_budget_tokens,
        max_tokens: config.max_reply_tokens,
    }))
}

/// What a streaming reply has shown so far.
#[derive(Default)]
struct Shown {
    job: String,
    ids: Vec<u64>,
    texts: Vec<String>,
}

enum ReplyFailure {
    Model(LlmError),
    Discord(den_discord::DiscordError),
}

fn persona_option(required: bool) -> OptionSpec {
    OptionSpec::new("persona", "The persona (name or id)", OptionKind::String, required)
}

#[async_trait]
impl Module for PersonasModule {
    fn name(&self) -> &'static str {
        "personas"
    }

    fn commands(&self) -> Vec<CommandSpec> {
        let admin = Some(MANAGE_GUILD);
        let text = |d: &str| OptionSpec::new("text", d, OptionKind::String, true);
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
                .option(OptionSpec::new(
                    "text",
                    "Only memories containing this (default: all)",
                    OptionKind::String,
                    false,
                ))
                .option(OptionSpec::new("user", "Admins: forget this member", OptionKind::User, false)),
            CommandSpec::new("memories", "See what den remembers about you").option(persona_option(false)),
            CommandSpec {
                default_member_permissions: admin,
                ..CommandSpec::new("mute", "Silence a persona")
                    .option(persona_option(true))
                    .option(OptionSpec::new(
                        "minutes",
                        "For how long (default: until unmuted)",
                        OptionKind::Integer,
                        false,
                    ))
                    .option(OptionSpec::new("channel", "Only in this channel", OptionKind::Channel, false))
            },
            CommandSpec {
                default_member_permissions: admin,
                ..CommandSpec::new("unmute", "Let a persona speak again").option(persona_option(true))
            },
            CommandSpec {
                default_member_permissions: admin,
                ..CommandSpec::new("chime-in", "Let personas join conversations unprompted in a channel")
                    .option(OptionSpec::new("on", "On or off", OptionKind::Boolean, true))
                    .option(OptionSpec::new("channel", "The channel (default: this one)", OptionKind::Channel, false))
            },
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
            CommandSpec {
                default_member_permissions: admin,
                ..CommandSpec::new("persona-audit", "Admins: the Higher Self and moderation log")
            },
            CommandSpec {
                default_member_permissions: admin,
                ..CommandSpec::new("persona-settings", "Admins: this server's persona limits (no options: show them)")
                    .option(OptionSpec::new(
                        "user-per-minute",
                        "Requests per person per minute",
                        OptionKind::Integer,
                        false,
                    ))
                    .option(OptionSpec::new(
                        "channel-per-minute",
                        "Persona replies per channel per minute",
                        OptionKind::Integer,
                        false,
                    ))
                    .option(OptionSpec::new(
                        "daily-tokens",
                        "Model tokens per day (0: den's default)",
                        OptionKind::Integer,
                        false,
                    ))
            },
        ]
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
        vec![Job::builder(MESSAGE, cx.now).guild(guild).payload(payload).build()]
    }

    async fn on_interaction(&self, i: &InboundInteraction, cx: &IngressCx) -> Option<Reaction> {
        let command = i.command.as_deref()?;
        if !self.commands().iter().any(|c| c.name == command) {
            return None;
        }
        let Some(guild) = i.guild_id else { return Some(Reaction::reply("Personas live in servers, not DMs.", true)) };
        let user = i.user.as_ref();
        let user_name = user.map(|u| u.display_name().to_owned()).unwrap_or_default();
        let persona = i.option_str("persona").map(|k| self.d.personas.find(k));
        if let Some(None) = persona {
            return Some(Reaction::reply(
                format!("No persona called {:?}. Try one of: {}.", i.option_str("persona").unwrap_or(""), self.names()),
                true,
            ));
        }
        let persona = persona.flatten();
        let admin = is_admin(i.permissions);
        match command {
            "ask" | "roast" => {
                let p = persona.or_else(|| self.d.personas.all().into_iter().next())?;
                let channel = i.channel_id?;
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
                let req = ReplyRequest {
                    guild,
                    channel,
                    persona: p.id.clone(),
                    user_id: user.map_or(0, |u| u.id),
                    user_name,
                    text,
                    message_id: None,
                    replied_to: None,
                    replied_text: None,
                    roast,
                    to_persona: false,
                    chime_in: false,
                };
                let job = Job::builder(REPLY, cx.now).guild(guild).payload(json!(req)).build();
                Some(Reaction { ack: Ack::Message { content: ack, ephemeral: false }, jobs: vec![job] })
            }
            "influence" | "takeover" | "higherself" => {
                let p = persona?;
                let uid = user.map_or(0, |u| u.id);
                if p.owner != Some(uid) {
                    return Some(Reaction::reply(format!("Only {}'s owner can do that.", p.name), true));
                }
                Some(self.deferred(i, command, guild, admin, cx))
            }
            "mute" | "unmute" | "chime-in" | "persona-audit" | "persona-settings" if !admin => {
                Some(Reaction::reply("Only members with Manage Server can do that.", true))
            }
            _ => Some(self.deferred(i, command, guild, admin, cx)),
        }
    }

    fn handlers(self: Arc<Self>) -> Vec<(String, Arc<dyn JobHandler>)> {
        let h: Arc<dyn JobHandler> = Arc::new(PersonaJobs(self));
        vec![
            (MESSAGE.into(), h.clone()),
            (REPLY.into(), h.clone()),
            (COMMAND.into(), h.clone()),
            (CONSOLIDATE.into(), h),
        ]
    }
}

impl PersonasModule {
    fn names(&self) -> String {
        self.d.personas.all().iter().map(|p| p.name.clone()).collect::<Vec<_>>().join(", ")
    }

    fn deferred(&self, i: &InboundInteraction, command: &str, guild: u64, admin: bool, cx: &IngressCx) -> Reaction {
        let payload = json!({
            "interaction": InteractionRef::of(i, cx.now),
            "command": command,
            "options": i.options,
            "admin": admin,
        });
        Reaction::defer(Job::builder(COMMAND, cx.now).guild(guild).payload(payload).build(), true)
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
            CONSOLIDATE => m.consolidate_job(&job.payload).await,
            other => Err(JobError::permanent(format!("personas has no job {other}"))),
        }
    }
}
