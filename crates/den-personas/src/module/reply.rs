//! A persona's reply: the brakes and limits first, then the prompt, then a
//! stream into Discord through the output filter, posted once per job.

use std::sync::Arc;
use std::time::Instant;

use den_core::{Job, Timestamp};
use den_discord::split::{MAX_MESSAGE_CHARS, split_message};
use den_llm::ledger::BudgetCheck;
use den_llm::{ChatStream, LlmError, StreamEvent, Usage};
use den_worker::JobError;
use futures_util::StreamExt as _;
use serde_json::{Value, json};

use super::{PersonasModule, REPLY, ReplyRequest, retry};
use crate::PersonasConfig;
use crate::memory::{Line, MemoryStore};
use crate::persona::Persona;
use crate::prompt::{Cue, PromptParts, RULES};
use crate::state::Window;

impl PersonasModule {
    /// Rate limits for a person's request; `Ok(false)` when it must not be answered.
    async fn within_limits(&self, job: &str, p: &Persona, req: &ReplyRequest) -> Result<bool, JobError> {
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
                        self.notice(p, req.channel, &text, &format!("{job}:limit")).await?;
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
                    self.notice(p, req.channel, &text, &format!("{job}:budget")).await?;
                }
                Ok(false)
            }
        }
    }

    /// A persona answers, once per job: a redelivered job whose reply already
    /// started to appear does nothing.
    pub(super) async fn speak(&self, job_id: &str, req: ReplyRequest) -> Result<(), JobError> {
        let Some(p) = self.d.personas.find(&req.persona) else { return Ok(()) };
        let s = &self.d.state;
        if self.speakers.posted_before(&p, req.channel, &piece_key(job_id, 0)).await.map_err(retry)? {
            tracing::info!(job = job_id, "reply already posted by an earlier delivery");
            return Ok(());
        }
        if s.is_muted(req.guild, &p.id, req.channel).await.map_err(retry)?
            || s.higher_self(req.guild, &p.id).await.map_err(retry)?
            || self.cue_forgotten(&req).await?
        {
            return Ok(());
        }
        if !self.within_limits(job_id, &p, &req).await? {
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
                self.notice(&p, req.channel, &text, &format!("{job_id}:apology")).await?;
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
        // The cue carries the persona's line, which may echo the person it answered.
        let job = Job::builder(REPLY, now)
            .guild(req.guild)
            .people([req.user_id, line.about_user])
            .payload(json!(cue))
            .build();
        self.d.jobs.send_delayed(&job, self.d.config.persona_gap).await.map_err(retry)?;
        Ok(())
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
                // Personas offer no tools; a call made anyway is not speech.
                Ok(StreamEvent::ToolCall(_)) => {}
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

    /// Makes Discord show `text`: edits the pieces that changed, posts new
    /// ones (each once per job, whatever happens to the job).
    async fn flush(&self, p: &Persona, channel: u64, shown: &mut Shown, text: &str) -> Result<(), ReplyFailure> {
        let pieces = split_message(text, MAX_MESSAGE_CHARS);
        for (i, piece) in pieces.iter().enumerate() {
            if let Some(id) = shown.ids.get(i) {
                if shown.texts[i] != *piece {
                    self.speakers.edit(p, channel, *id, piece).await.map_err(ReplyFailure::Discord)?;
                    shown.texts[i].clone_from(piece);
                }
                continue;
            }
            let now = self.d.clock.now();
            let posted = self
                .speakers
                .post_once(p, channel, piece, &piece_key(&shown.job, i), now)
                .await
                .map_err(ReplyFailure::Discord)?;
            for id in posted.ids() {
                // Marked at once, so a quick reply to it finds its persona.
                if let Err(e) = self.d.state.mark_persona_message(*id, &p.id, now).await {
                    tracing::warn!(error = %e, "cannot mark a persona message");
                }
                shown.ids.push(*id);
                shown.texts.push(piece.clone());
            }
        }
        Ok(())
    }

    /// A short line in character, posted without the model (limits,
    /// failures), once per `key` however often the job runs.
    async fn notice(&self, p: &Persona, channel: u64, text: &str, key: &str) -> Result<(), JobError> {
        let now = self.d.clock.now();
        let posted = self.speakers.post_once(p, channel, text, key, now).await.map_err(retry)?;
        for id in posted.ids() {
            self.d.state.mark_persona_message(*id, &p.id, now).await.map_err(retry)?;
        }
        Ok(())
    }

    /// Whether the person this answers was forgotten after saying it (the
    /// job waited in the queue meanwhile): then it is not answered at all.
    async fn cue_forgotten(&self, req: &ReplyRequest) -> Result<bool, JobError> {
        let (Some(message), true) = (req.message_id, req.user_id != 0) else { return Ok(false) };
        let forgotten = self.d.memory.forgotten_at(req.guild, req.user_id).await.map_err(retry)?;
        Ok(forgotten.is_some_and(|at| den_discord::snowflake_time(message) <= at))
    }
}

/// The post key of piece `i` of job `job`'s reply.
fn piece_key(job: &str, i: usize) -> String {
    format!("reply:{job}:{i}")
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
        style: config.prompt_style,
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
