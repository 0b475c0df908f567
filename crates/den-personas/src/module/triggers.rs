//! A person's message: recorded in the transcript, counted for
//! consolidation, and perhaps answered: by the persona named (the least
//! recently heard when several are), the one replied to, `!ask`/`!roast`, or
//! one that chimes in where an admin allowed it.

use std::sync::Arc;

use den_core::Job;
use den_discord::events::InboundMessage;
use den_worker::JobError;
use serde_json::{Value, json};

use super::{CONSOLIDATE, PersonasModule, ReplyRequest, retry};
use crate::memory::Line;
use crate::persona::Persona;
use crate::safety::{MAX_INPUT_CHARS, clean_input};

impl PersonasModule {
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

    pub(super) async fn on_message_job(&self, job_id: &str, payload: &Value) -> Result<(), JobError> {
        let m: InboundMessage = serde_json::from_value(payload["message"].clone())
            .map_err(|e| JobError::permanent(format!("bad message payload: {e}")))?;
        let Some(guild) = m.guild_id else { return Ok(()) };
        let text = clean_input(&m.content, MAX_INPUT_CHARS);
        // Bots and webhooks, personas included, are neither remembered nor
        // answered here: a persona's reply records itself and cues the next
        // persona when it is complete (its MESSAGE_CREATE holds only the
        // first streamed words).
        if text.is_empty() || m.webhook_id.is_some() || m.author.bot {
            return Ok(());
        }
        self.remember_line(guild, &m, &text).await?;
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
        if let Some(rest) = text.strip_prefix(self.d.config.prefix.as_str()) {
            if self.text_command(rest, &mut req) {
                return self.speak(job_id, req).await;
            }
            if rest.split_whitespace().next().is_some_and(|c| c == "ask" || c == "roast") {
                return Ok(());
            }
        }
        let Some((chosen, chime_in)) = self.choose(&m, &text).await? else { return Ok(()) };
        req.persona = chosen.id.clone();
        req.chime_in = chime_in;
        self.speak(job_id, req).await
    }

    /// Records a person's line and, every `consolidate_every` of them, asks for a consolidation.
    async fn remember_line(&self, guild: u64, m: &InboundMessage, text: &str) -> Result<(), JobError> {
        let line = Line {
            message_id: m.id,
            user_id: m.author.id,
            persona: None,
            author: m.author.display_name().to_owned(),
            text: text.to_owned(),
            at: self.d.clock.now(),
            about_user: 0,
        };
        self.d.memory.record(guild, m.channel_id, line).await.map_err(retry)?;
        let seen = self.d.state.human_spoke(m.channel_id).await.map_err(retry)?;
        let every = self.d.config.consolidate_every;
        if every > 0 && seen % every == 0 && self.d.models.is_some() {
            let payload = json!({"guild": guild, "channel": m.channel_id, "lines": every});
            let job = Job::builder(CONSOLIDATE, self.d.clock.now())
                .guild(guild)
                .dedup_key(format!("consolidate:{}:{}", m.channel_id, seen / every))
                .payload(payload)
                .build();
            self.d.jobs.send(&job).await.map_err(retry)?;
        }
        Ok(())
    }

    /// `!ask <persona> <question>` and `!roast <name> [persona]`: fills in
    /// `req` and says whether it is one of them (with a persona to answer).
    fn text_command(&self, rest: &str, req: &mut ReplyRequest) -> bool {
        let (cmd, args) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        let args = args.trim();
        match cmd {
            "ask" => {
                let (who, question) = args.split_once(char::is_whitespace).unwrap_or((args, ""));
                let Some(p) = self.d.personas.find(who) else { return false };
                req.persona = p.id.clone();
                req.text = question.trim().to_owned();
                true
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
                let Some(p) = p else { return false };
                let target = words.join(" ");
                req.persona = p.id.clone();
                req.roast = Some(if target.is_empty() { req.user_name.clone() } else { target });
                true
            }
            _ => false,
        }
    }

    fn by_webhook_name<'a>(&self, all: &'a [Arc<Persona>], name: &str) -> Option<&'a Arc<Persona>> {
        all.iter().find(|p| den_discord::egress::sanitize_webhook_name(&p.name) == name)
    }
}
