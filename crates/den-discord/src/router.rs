//! The router: turns Discord events into module reactions and jobs, on the
//! fast path (no model calls, no Discord calls but the interaction ACK).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use den_core::{Clock, Job};
use den_ops::Metrics;
use den_storage::StoreResult;
use den_worker::Backoff;
use den_worker::JobQueue;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::events::{InboundInteraction, InboundMessage, InboundReaction, InteractionKind, VoiceEvent};
use crate::module::{IngressCx, InteractionRef, Module, Reaction};
use crate::{Ack, Egress};

/// Discord waits this long for the first response to an interaction.
pub const ACK_WINDOW: Duration = Duration::from_secs(3);
/// Waits between attempts to enqueue an interaction's jobs while the store fails.
const ENQUEUE_RETRY: Backoff = Backoff { base: Duration::from_millis(100), max: Duration::from_millis(400) };

/// Interaction tokens last 15 minutes; answer by other means a little before.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);
const TOKEN_MARGIN: Duration = Duration::from_secs(30);

/// The part of a gateway payload the router reads; `d` stays raw until needed.
#[derive(Debug, Deserialize)]
pub struct GatewayPayload<'a> {
    /// Opcode.
    pub op: u8,
    /// Event name of a dispatch.
    #[serde(default, borrow)]
    pub t: Option<&'a str>,
    /// Sequence number of a dispatch.
    #[serde(default)]
    pub s: Option<u64>,
    /// Event data.
    #[serde(borrow)]
    pub d: Option<&'a RawValue>,
}

/// Routes events to modules.
pub struct Router {
    modules: Vec<Arc<dyn Module>>,
    jobs: JobQueue,
    /// Queues of their own for jobs whose kind starts with a prefix.
    routes: Vec<(&'static str, JobQueue)>,
    clock: Arc<dyn Clock>,
    bot_user_id: AtomicU64,
    metrics: Metrics,
    enqueue_failing_since: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").field("modules", &self.modules.iter().map(|m| m.name()).collect::<Vec<_>>()).finish()
    }
}

/// What happened to one gateway payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routed {
    /// Not an event den acts on.
    Ignored,
    /// A message, with this many jobs enqueued.
    Message(usize),
    /// A message or interaction whose jobs could not be enqueued (the store
    /// failed): route it again later.
    NotEnqueued,
    /// An interaction, answered.
    Interaction,
    /// READY: den learned its user id.
    Ready,
    /// A voice state or voice server update, handed to the modules.
    Voice,
    /// Malformed, logged and dropped.
    Malformed,
}

impl Router {
    /// A router over `modules`, enqueueing to `jobs`.
    pub fn new(modules: Vec<Arc<dyn Module>>, jobs: JobQueue, clock: Arc<dyn Clock>, metrics: Metrics) -> Self {
        Self {
            modules,
            jobs,
            routes: Vec::new(),
            clock,
            bot_user_id: AtomicU64::new(0),
            metrics,
            enqueue_failing_since: Mutex::new(None),
        }
    }

    /// Sends jobs whose kind starts with `prefix` to `queue` instead of the
    /// job queue (music's jobs go where the voice connections are).
    #[must_use]
    pub fn route_kind(mut self, prefix: &'static str, queue: JobQueue) -> Self {
        self.routes.push((prefix, queue));
        self
    }

    /// Enqueues `jobs`, each on its kind's queue.
    async fn enqueue(&self, jobs: &[Job]) -> StoreResult<Vec<den_storage::Sent>> {
        let queue_of = |job: &Job| {
            self.routes.iter().find(|(prefix, _)| job.kind.starts_with(prefix)).map_or(&self.jobs, |(_, q)| q)
        };
        if jobs.iter().all(|j| std::ptr::eq(queue_of(j), &self.jobs)) {
            return self.jobs.send_all(jobs).await;
        }
        let mut sent = Vec::with_capacity(jobs.len());
        for job in jobs {
            sent.push(queue_of(job).send(job).await?);
        }
        Ok(sent)
    }

    /// How long enqueueing has been failing, if it is (for `/ready`).
    #[must_use]
    pub fn enqueue_failing_for(&self) -> Option<Duration> {
        self.enqueue_failing_since.lock().unwrap_or_else(PoisonError::into_inner).map(|t| t.elapsed())
    }

    fn enqueued(&self, result: &StoreResult<Vec<den_storage::Sent>>) {
        let mut since = self.enqueue_failing_since.lock().unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(_) => *since = None,
            Err(_) => {
                since.get_or_insert_with(Instant::now);
            }
        }
    }

    /// Sets den's own user id (also learned from READY).
    pub fn set_bot_user_id(&self, id: u64) {
        self.bot_user_id.store(id, Ordering::Relaxed);
    }

    fn cx(&self) -> IngressCx {
        IngressCx { now: self.clock.now(), bot_user_id: self.bot_user_id.load(Ordering::Relaxed) }
    }

    /// Handles one raw gateway payload. Interactions are acknowledged through `egress`.
    pub async fn on_gateway_payload(&self, text: &str, egress: &Egress) -> Routed {
        let Ok(payload) = serde_json::from_str::<GatewayPayload<'_>>(text) else {
            tracing::warn!("gateway payload is not JSON; dropped");
            return Routed::Malformed;
        };
        if payload.op != 0 {
            return Routed::Ignored;
        }
        let Some(d) = payload.d else { return Routed::Ignored };
        match payload.t {
            Some("MESSAGE_CREATE") => match InboundMessage::parse(d.get()) {
                Ok(m) => match self.route_message(&m).await {
                    Ok(n) => Routed::Message(n),
                    Err(_) => Routed::NotEnqueued,
                },
                Err(e) => {
                    tracing::warn!(error = %e, "malformed MESSAGE_CREATE dropped");
                    Routed::Malformed
                }
            },
            Some("INTERACTION_CREATE") => match InboundInteraction::parse(d.get()) {
                Ok(i) => {
                    let Ok(ack) = self.route_interaction(&i).await else { return Routed::NotEnqueued };
                    // Discord takes the first response within 3 s of the interaction; retrying past that is pointless.
                    let deadline = tokio::time::Instant::now() + self.time_left_to_ack(i.id);
                    if let Err(e) = egress.respond_by(i.id, &i.token, &ack, deadline).await {
                        tracing::warn!(error = %e, interaction = i.id, "could not acknowledge the interaction in time");
                    }
                    Routed::Interaction
                }
                Err(e) => {
                    tracing::warn!(error = %e, "malformed INTERACTION_CREATE dropped");
                    Routed::Malformed
                }
            },
            Some("MESSAGE_REACTION_ADD") => match InboundReaction::parse(d.get()) {
                Ok(r) => match self.route_reaction(&r).await {
                    Ok(n) => Routed::Message(n),
                    Err(_) => Routed::NotEnqueued,
                },
                Err(e) => {
                    tracing::warn!(error = %e, "malformed MESSAGE_REACTION_ADD dropped");
                    Routed::Malformed
                }
            },
            Some(t @ ("VOICE_STATE_UPDATE" | "VOICE_SERVER_UPDATE")) => {
                let event = if t == "VOICE_STATE_UPDATE" {
                    VoiceEvent::parse_state(d.get())
                } else {
                    VoiceEvent::parse_server(d.get()).map(Some)
                };
                match event {
                    Ok(Some(e)) => {
                        for module in &self.modules {
                            module.on_voice(&e);
                        }
                        Routed::Voice
                    }
                    Ok(None) => Routed::Ignored,
                    Err(e) => {
                        tracing::warn!(error = %e, event = t, "malformed voice event dropped");
                        Routed::Malformed
                    }
                }
            }
            Some("GUILD_CREATE") => {
                // Who is already in voice when den (re)connects.
                for e in VoiceEvent::parse_guild_states(d.get()) {
                    for module in &self.modules {
                        module.on_voice(&e);
                    }
                }
                Routed::Ignored
            }
            Some("READY") => {
                #[derive(Deserialize)]
                struct Ready {
                    user: crate::events::Author,
                }
                if let Ok(r) = serde_json::from_str::<Ready>(d.get()) {
                    self.set_bot_user_id(r.user.id);
                }
                Routed::Ready
            }
            _ => Routed::Ignored,
        }
    }

    /// Offers a message to every module; enqueues their jobs; returns how many.
    /// den's own messages are dropped, and other bots' unless a module wants them.
    /// An error means nothing was enqueued for sure: route the message again.
    pub async fn route_message(&self, m: &InboundMessage) -> StoreResult<usize> {
        let cx = self.cx();
        if m.author.id == cx.bot_user_id {
            return Ok(0);
        }
        let from_bot = m.author.bot || m.webhook_id.is_some();
        let mut jobs = Vec::new();
        for module in &self.modules {
            if from_bot && !module.wants_bot_messages() {
                continue;
            }
            for mut job in module.on_message(m, &cx).await {
                // A replayed event (after a resume or restart) enqueues nothing new.
                job.dedup_key.get_or_insert_with(|| format!("msg:{}:{}", m.id, job.kind));
                jobs.push(job);
            }
        }
        self.send_jobs(&jobs, "message", m.id).await
    }

    /// Enqueues the jobs an event (`what` `id`) caused; how many were new.
    /// An error means nothing was enqueued for sure: route the event again.
    async fn send_jobs(&self, jobs: &[Job], what: &str, id: u64) -> StoreResult<usize> {
        if jobs.is_empty() {
            return Ok(0);
        }
        let result = self.enqueue(jobs).await;
        self.enqueued(&result);
        match result {
            Ok(sent) => {
                let fresh = sent.iter().filter(|s| !s.duplicate).count();
                tracing::debug!(what, id, jobs = jobs.len(), fresh, "event routed");
                Ok(fresh)
            }
            Err(e) => {
                tracing::warn!(error = %e, what, id, "could not enqueue the jobs of an event; will retry");
                Err(e)
            }
        }
    }

    /// Offers a reaction to every module; enqueues their jobs; returns how many.
    /// Reactions by bots (den's own included) are dropped.
    pub async fn route_reaction(&self, r: &InboundReaction) -> StoreResult<usize> {
        let cx = self.cx();
        if r.user_id == cx.bot_user_id || r.by_bot() {
            return Ok(0);
        }
        let mut jobs = Vec::new();
        for module in &self.modules {
            for mut job in module.on_reaction(r, &cx).await {
                job.dedup_key
                    .get_or_insert_with(|| format!("react:{}:{}:{}:{}", r.message_id, r.user_id, r.emoji, job.kind));
                jobs.push(job);
            }
        }
        self.send_jobs(&jobs, "reaction", r.message_id).await
    }

    /// Time left of Discord's 3 s for the first response to interaction `id`
    /// (its creation time is in the snowflake), at least enough for one try.
    fn time_left_to_ack(&self, id: u64) -> Duration {
        let created = crate::snowflake_time(id);
        ACK_WINDOW.saturating_sub(self.clock.now().since(created)).max(Duration::from_millis(500))
    }

    /// Decides the first response to an interaction, enqueueing its jobs
    /// first. An error means its jobs are not durably queued: a gateway
    /// interaction is then routed again later (its stored sequence stays
    /// below it, so a restart replays it too) and its jobs finish it through
    /// the channel or not at all ([`Fallback`]); an HTTP one can only be
    /// answered that den cannot take it on now.
    pub async fn route_interaction(&self, i: &InboundInteraction) -> StoreResult<Ack> {
        if i.kind == InteractionKind::Ping {
            return Ok(Ack::Pong);
        }
        let cx = self.cx();
        let mut reaction: Option<Reaction> = None;
        for module in &self.modules {
            if let Some(r) = module.on_interaction(i, &cx).await {
                reaction = Some(r);
                break;
            }
        }
        let Some(mut reaction) = reaction else {
            return Ok(Ack::Message { content: "den does not know that command (yet).".into(), ephemeral: true });
        };
        if reaction.jobs.is_empty() {
            return Ok(reaction.ack);
        }
        let iref = InteractionRef::of(i, cx.now);
        for job in &mut reaction.jobs {
            if let serde_json::Value::Object(map) = &mut job.payload {
                map.entry("interaction").or_insert_with(|| serde_json::to_value(&iref).unwrap_or_default());
            } else if job.payload.is_null() {
                job.payload = serde_json::json!({ "interaction": iref });
            }
            job.dedup_key.get_or_insert_with(|| format!("int:{}:{}", i.id, job.kind));
            if job.guild.is_none() {
                job.guild = i.guild_id;
            }
        }
        // A store hiccup is retried while there is time to answer (about 2 of Discord's 3 s).
        let give_up = tokio::time::Instant::now() + self.time_left_to_ack(i.id).saturating_sub(Duration::from_secs(1));
        let mut attempt = 0;
        let result = loop {
            let result = self.enqueue(&reaction.jobs).await;
            self.enqueued(&result);
            attempt += 1;
            let wait = ENQUEUE_RETRY.delay(attempt);
            if result.is_ok() || tokio::time::Instant::now() + wait > give_up {
                break result;
            }
            tokio::time::sleep(wait).await;
        };
        match result {
            Ok(_) => Ok(reaction.ack),
            Err(e) => {
                tracing::warn!(error = %e, interaction = i.id, "could not enqueue an interaction's jobs");
                Err(e)
            }
        }
    }

    /// What the HTTP endpoint answers when an interaction's jobs could not be
    /// queued in time (there is no replay to fall back on), counting it.
    #[must_use]
    pub fn cannot_take_it_on(&self) -> Ack {
        self.metrics.job_dead_lettered(self.jobs.name(), "ingress.enqueue_failed");
        Ack::Message {
            content: "den could not take that on right now; please try again in a minute.".into(),
            ephemeral: true,
        }
    }
}

/// Where a deferred answer goes when the interaction token no longer works.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// Post it in the channel, naming the person (for answers anyone may see).
    Channel,
    /// Drop it (for private answers: memories, settings).
    Drop,
}

/// How long after its creation an interaction's first response may still be
/// on its way (Discord wants it within 3 s): until then, an original message
/// that does not exist yet is waited for rather than given up on.
const ACK_GRACE: Duration = Duration::from_secs(5);

/// Finishes a deferred interaction from a worker: edits the original
/// response while the token is valid, else posts in the channel (the token
/// lasts 15 minutes; a retried job may run later than that).
pub async fn finish_interaction(
    egress: &Egress,
    clock: &dyn Clock,
    iref: &InteractionRef,
    text: &str,
) -> Result<(), crate::DiscordError> {
    finish_interaction_or(egress, clock, iref, text, Fallback::Channel).await
}

/// Like [`finish_interaction`], with a choice of what happens when the token
/// no longer works. A worker can be faster than the acknowledgement that
/// ingress sends after enqueueing the job: an original response that is not
/// there yet is waited for while the interaction is young.
pub async fn finish_interaction_or(
    egress: &Egress,
    clock: &dyn Clock,
    iref: &InteractionRef,
    text: &str,
    fallback: Fallback,
) -> Result<(), crate::DiscordError> {
    // Bounded in real time too, whatever the clock says.
    for attempt in 0.. {
        let age = clock.now().since(iref.created_at);
        if age + TOKEN_MARGIN >= TOKEN_LIFETIME {
            break;
        }
        match egress.edit_original(&iref.token, text).await {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == crate::DiscordErrorKind::NotFound && age < ACK_GRACE && attempt < 100 => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e)
                if e.kind() == crate::DiscordErrorKind::Unauthorized
                    || e.kind() == crate::DiscordErrorKind::NotFound =>
            {
                tracing::info!(error = %e, "interaction token no longer works");
                break;
            }
            Err(e) => return Err(e),
        }
    }
    if fallback == Fallback::Drop {
        tracing::warn!(interaction = iref.id, "private answer dropped: the interaction token no longer works");
        return Ok(());
    }
    let Some(channel) = iref.channel_id else {
        tracing::warn!(interaction = iref.id, "token expired and no channel to post in; the answer is dropped");
        return Ok(());
    };
    tracing::info!(interaction = iref.id, "posting the answer in the channel instead");
    let text = match iref.user_id {
        // Name the person without pinging them (allowed_mentions stays empty).
        Some(user) => format!("<@{user}> {text}"),
        None => text.to_owned(),
    };
    // Keyed by the interaction: a job run again posts the same message, once.
    egress.send_text_keyed(channel, &text, None, &format!("interaction:{}", iref.id)).await.map(|_| ())
}

/// Builds a job of `kind` for a module, with `payload`.
#[must_use]
pub fn job(kind: &str, clock: &dyn Clock, payload: serde_json::Value) -> Job {
    Job::builder(kind, clock.now()).payload(payload).build()
}
