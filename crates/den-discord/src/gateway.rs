//! Gateway ingress: shards of the Discord gateway, their sessions kept in the
//! store so a restarted process resumes, and identifies paced through the
//! store so several gateway processes never exceed Discord's limits.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use den_core::{Clock, Secret, Timestamp};
use den_storage::{Condition, Put, Table};
use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use twilight_gateway::{CloseFrame, ConfigBuilder, Intents, Message, Session, Shard, ShardId};

use crate::Egress;
use crate::router::Router;

/// How often a shard's session (id and sequence) is written to the store.
const SESSION_SAVE_EVERY: Duration = Duration::from_secs(1);
/// Events of one shard routed at once. Routing waits on the queue's commit;
/// overlapping events lets the store commit them in groups.
const PIPELINE_DEPTH: usize = 64;
/// Identifies per bucket are spaced this far apart (Discord: `max_concurrency` per 5 s).
const IDENTIFY_SPACING: Duration = Duration::from_secs(5);
/// Identifies allowed per 24 hours (Discord resets the token beyond this).
const IDENTIFIES_PER_DAY: u64 = 1000;

/// Gateway intents by the names Discord's docs use (lower case), with their bits.
pub const INTENTS: &[(&str, u64)] = &[
    ("guilds", 1 << 0),
    ("guild_members", 1 << 1),
    ("guild_moderation", 1 << 2),
    ("guild_expressions", 1 << 3),
    ("guild_integrations", 1 << 4),
    ("guild_webhooks", 1 << 5),
    ("guild_invites", 1 << 6),
    ("guild_voice_states", 1 << 7),
    ("guild_presences", 1 << 8),
    ("guild_messages", 1 << 9),
    ("guild_message_reactions", 1 << 10),
    ("guild_message_typing", 1 << 11),
    ("direct_messages", 1 << 12),
    ("direct_message_reactions", 1 << 13),
    ("direct_message_typing", 1 << 14),
    ("message_content", 1 << 15),
    ("guild_scheduled_events", 1 << 16),
];

/// The bits of intents named as in [`INTENTS`]; an unknown name is an error naming it.
pub fn intents_from_names<S: AsRef<str>>(names: &[S]) -> Result<u64, String> {
    names.iter().try_fold(0, |bits, name| {
        let name = name.as_ref().to_lowercase();
        INTENTS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, b)| bits | b)
            .ok_or_else(|| format!("unknown intent {name:?}"))
    })
}

/// A close code after which reconnecting cannot help, with what to do about it.
#[must_use]
pub fn fatal_close_advice(code: u16) -> Option<&'static str> {
    Some(match code {
        4004 => {
            "Discord rejected the bot token (close code 4004): check DISCORD_TOKEN, or reset the token in the developer portal"
        }
        4010 => "Discord refused the shard number (close code 4010): check discord.shards and discord.shard_ids",
        4011 => {
            "Discord requires more shards for this bot (close code 4011): set discord.shards = 0 to use Discord's recommendation"
        }
        4012 => "Discord refused the gateway API version (close code 4012): upgrade den",
        4013 => "Discord refused the intents (close code 4013): check discord.intents",
        4014 => {
            "a privileged intent is not enabled for this bot (close code 4014): open the Discord developer portal, \
             select the application, go to Bot, and enable Message Content Intent (and Server Members Intent \
             if discord.intents asks for it); or remove it from discord.intents"
        }
        _ => return None,
    })
}

/// The state of den's shards, for `/ready`.
#[derive(Clone, Debug, Default)]
pub struct ShardStatus {
    inner: Arc<Mutex<BTreeMap<u32, &'static str>>>,
}

impl ShardStatus {
    fn set(&self, shard: u32, state: &'static str) {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(shard, state);
    }

    /// Each shard's state: `connecting`, `ready`, `resumed`, `reconnecting`, `closed`.
    #[must_use]
    pub fn states(&self) -> BTreeMap<u32, &'static str> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// True when every shard has a live session.
    #[must_use]
    pub fn all_ready(&self) -> bool {
        let states = self.states();
        !states.is_empty() && states.values().all(|s| *s == "ready" || *s == "resumed")
    }
}

/// Which shards a process runs and how it connects.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Bot token.
    pub token: Secret,
    /// Gateway intents bits.
    pub intents: u64,
    /// Total shards (ask Discord with [`recommended_shards`]).
    pub shards: u32,
    /// The shards this process runs, `[first, last)`; `None` runs all.
    pub shard_ids: Option<(u32, u32)>,
    /// Gateway URL to use instead of Discord's (tests, proxies).
    pub gateway_url: Option<String>,
}

/// Paces identifies through a table, so that every process sharing the store
/// keeps to `max_concurrency` per 5 s per bucket and 1,000 per day.
#[derive(Clone)]
pub struct StoreIdentifyQueue {
    table: Arc<dyn Table>,
    clock: Arc<dyn Clock>,
    max_concurrency: u32,
}

impl std::fmt::Debug for StoreIdentifyQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreIdentifyQueue").field("max_concurrency", &self.max_concurrency).finish()
    }
}

impl StoreIdentifyQueue {
    /// A queue over `table` for a bot with `max_concurrency`.
    #[must_use]
    pub fn new(table: Arc<dyn Table>, clock: Arc<dyn Clock>, max_concurrency: u32) -> Self {
        Self { table, clock, max_concurrency: max_concurrency.max(1) }
    }

    /// Waits for the right to identify shard `shard`.
    pub async fn acquire(&self, shard: u32) {
        let bucket = shard % self.max_concurrency;
        loop {
            match self.try_acquire(bucket).await {
                Ok(None) => return,
                Ok(Some(wait)) => tokio::time::sleep(wait.max(Duration::from_millis(50))).await,
                Err(e) => {
                    tracing::warn!(error = %e, "identify pacing: store error; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Takes the bucket's slot if it is free; otherwise says how long to wait.
    async fn try_acquire(&self, bucket: u32) -> Result<Option<Duration>, den_storage::StoreError> {
        let now = self.clock.now();
        let day = self.table.get("identify", "day").await?;
        let (day_start, day_count, day_version) = match &day {
            Some(item) => (
                Timestamp(item.attrs.get("start").and_then(Value::as_i64).unwrap_or(0)),
                item.attrs.get("count").and_then(Value::as_u64).unwrap_or(0),
                Some(item.version),
            ),
            None => (now, 0, None),
        };
        let window_over = now.since(day_start) >= Duration::from_secs(86_400);
        if !window_over && day_count >= IDENTIFIES_PER_DAY {
            tracing::error!("1,000 identifies in 24 hours reached; waiting for the window to pass");
            return Ok(Some(Duration::from_secs(86_400).saturating_sub(now.since(day_start))));
        }
        let key = format!("bucket:{bucket}");
        let slot = self.table.get("identify", &key).await?;
        let next =
            slot.as_ref().and_then(|i| i.attrs.get("next").and_then(Value::as_i64)).map_or(Timestamp(0), Timestamp);
        if now < next {
            return Ok(Some(next.since(now)));
        }
        let condition = slot.as_ref().map_or(Condition::Absent, |i| Condition::VersionEquals(i.version));
        let attrs = json!({"next": now.plus(IDENTIFY_SPACING).as_millis()});
        let put = Put::new("identify", key, attrs.as_object().cloned().unwrap_or_default()).condition(condition);
        match self.table.put(put).await {
            Ok(_) => {}
            Err(e) if e.kind() == den_storage::StoreErrorKind::ConditionFailed => {
                return Ok(Some(Duration::from_millis(100)));
            }
            Err(e) => return Err(e),
        }
        let (start, count) = if window_over || day.is_none() { (now, 1) } else { (day_start, day_count + 1) };
        let attrs = json!({"start": start.as_millis(), "count": count});
        let condition = day_version.map_or(Condition::Absent, Condition::VersionEquals);
        if let Err(e) = self
            .table
            .put(Put::new("identify", "day", attrs.as_object().cloned().unwrap_or_default()).condition(condition))
            .await
        {
            // Another process counted at the same moment; its count stands and ours is off by one at most.
            tracing::debug!(error = %e, "identify day counter raced");
        }
        Ok(None)
    }
}

impl twilight_gateway::queue::Queue for StoreIdentifyQueue {
    fn enqueue(&self, shard: u32) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let this = self.clone();
        tokio::spawn(async move {
            this.acquire(shard).await;
            let _ = tx.send(());
        });
        rx
    }
}

/// A shard ended for good.
#[derive(Debug, thiserror::Error)]
#[error("{advice}")]
pub struct FatalClose {
    /// The close code.
    pub code: u16,
    /// What to do about it.
    pub advice: &'static str,
}

/// Everything a process needs to run its shards.
#[derive(Clone)]
pub struct Gateway {
    /// Which shards and how to connect.
    pub config: GatewayConfig,
    /// Identify pacing.
    pub identify: StoreIdentifyQueue,
    /// Where sessions are kept between runs.
    pub sessions: Arc<dyn Table>,
    /// Where events go.
    pub router: Arc<Router>,
    /// How interactions are acknowledged.
    pub egress: Arc<Egress>,
    /// Shard states, for `/ready`.
    pub status: ShardStatus,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("shards", &self.config.shards)
            .field("shard_ids", &self.config.shard_ids)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Runs the configured shards (`config.shard_ids` of `config.shards`)
    /// until `shutdown` or a fatal close, which also cancels `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), FatalClose> {
        crate::install_crypto_provider();
        let total = self.config.shards.max(1);
        let (first, last) = self.config.shard_ids.unwrap_or((0, total));
        let this = Arc::new(self);
        let mut set = tokio::task::JoinSet::new();
        for number in first..last.min(total) {
            let Some(id) = ShardId::new_checked(number, total) else { continue };
            let config = &this.config;
            let mut builder =
                ConfigBuilder::new(config.token.expose().to_owned(), Intents::from_bits_truncate(config.intents))
                    .queue(this.identify.clone());
            if let Some(url) = &config.gateway_url {
                builder = builder.proxy_url(url.clone());
            }
            let key = format!("shard:{number}/{total}");
            if let Ok(Some(saved)) = this.sessions.get(&key, "session").await
                && let (Some(sid), Some(seq)) =
                    (saved.attrs.get("id").and_then(Value::as_str), saved.attrs.get("seq").and_then(Value::as_u64))
            {
                tracing::info!(shard = number, seq, "resuming the stored gateway session");
                builder = builder.session(Session::new(seq, sid.to_owned()));
                if let Some(url) = saved.attrs.get("resume_url").and_then(Value::as_str) {
                    builder = builder.resume_url(url.to_owned());
                }
            }
            let shard = Shard::with_config(id, builder.build());
            this.status.set(number, "connecting");
            set.spawn(run_shard(this.clone(), shard, key, shutdown.clone()));
        }
        let mut result = Ok(());
        while let Some(done) = set.join_next().await {
            if let Ok(Err(fatal)) = done {
                shutdown.cancel();
                result = Err(fatal);
            }
        }
        result
    }
}

/// What must survive a restart to resume a shard's session, up to `seq`.
fn session_attrs(shard: &Shard<StoreIdentifyQueue>, seq: u64) -> Option<serde_json::Map<String, Value>> {
    let session = shard.session()?;
    let mut attrs = serde_json::Map::new();
    attrs.insert("id".into(), session.id().into());
    attrs.insert("seq".into(), seq.into());
    if let Some(url) = shard.resume_url() {
        attrs.insert("resume_url".into(), url.into());
    }
    Some(attrs)
}

async fn save_session(sessions: &dyn Table, key: &str, attrs: Option<serde_json::Map<String, Value>>) {
    let Some(attrs) = attrs else { return };
    // Sessions die a while after their connection does; an old one only costs a failed RESUME.
    let expires = den_core::SystemClock.now().plus(Duration::from_secs(24 * 3600));
    if let Err(e) = sessions.put(Put::new(key, "session", attrs).expires_at(expires)).await {
        tracing::warn!(error = %e, "could not store the gateway session");
    }
}

/// Sequences of events still being routed, so the stored session never
/// claims an event that is not yet enqueued: after a crash, RESUME replays
/// from the lowest unfinished one, and dedup keys drop what was done twice.
/// Frames that are not dispatches (heartbeat ACKs) carry the previous
/// sequence, so one sequence can be in flight more than once: counts, not a set.
#[derive(Debug, Default)]
struct InFlight {
    seqs: BTreeMap<u64, u32>,
}

impl InFlight {
    fn start(&mut self, seq: u64) {
        *self.seqs.entry(seq).or_default() += 1;
    }

    fn finish(&mut self, seq: u64) {
        if let Some(n) = self.seqs.get_mut(&seq) {
            *n -= 1;
            if *n == 0 {
                self.seqs.remove(&seq);
            }
        }
    }

    /// The highest sequence below which everything is routed.
    fn watermark(&self, latest: u64) -> u64 {
        self.seqs.keys().next().map_or(latest, |lowest| lowest.saturating_sub(1))
    }
}

async fn run_shard(
    gateway: Arc<Gateway>,
    mut shard: Shard<StoreIdentifyQueue>,
    key: String,
    shutdown: CancellationToken,
) -> Result<(), FatalClose> {
    let Gateway { sessions, router, egress, status, .. } = &*gateway;
    let number = shard.id().number();
    let mut last_save = tokio::time::Instant::now();
    let mut saved_seq = 0;
    let in_flight = Arc::new(Mutex::new(InFlight::default()));
    let permits = Arc::new(tokio::sync::Semaphore::new(PIPELINE_DEPTH));
    let mut routing = tokio::task::JoinSet::new();
    let outcome = loop {
        while routing.try_join_next().is_some() {}
        let message = tokio::select! {
            m = shard.next() => m,
            () = shutdown.cancelled() => {
                // Close as "resuming" so the session stays valid for the next process.
                shard.close(CloseFrame::RESUME);
                status.set(number, "closed");
                break Ok(());
            }
        };
        match message {
            Some(Ok(Message::Text(text))) => {
                if text.contains("\"t\":\"READY\"") {
                    status.set(number, "ready");
                } else if text.contains("\"t\":\"RESUMED\"") {
                    status.set(number, "resumed");
                }
                let seq = shard.session().map_or(0, Session::sequence);
                let Ok(permit) = permits.clone().acquire_owned().await else { break Ok(()) };
                in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner).start(seq);
                let (router, egress, in_flight) = (router.clone(), egress.clone(), in_flight.clone());
                routing.spawn(async move {
                    router.on_gateway_payload(&text, &egress).await;
                    in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner).finish(seq);
                    drop(permit);
                });
            }
            Some(Ok(Message::Close(frame))) => {
                let code = frame.as_ref().map(|f| f.code);
                if let Some(advice) = code.and_then(fatal_close_advice) {
                    status.set(number, "closed");
                    tracing::error!(shard = number, code, "{advice}");
                    break Err(FatalClose { code: code.unwrap_or(0), advice });
                }
                status.set(number, "reconnecting");
                tracing::info!(shard = number, ?code, "gateway connection closed; reconnecting");
            }
            Some(Err(e)) => tracing::warn!(shard = number, error = %e, "gateway receive error"),
            None => {
                status.set(number, "closed");
                break Ok(());
            }
        }
        if last_save.elapsed() >= SESSION_SAVE_EVERY {
            let latest = shard.session().map_or(0, Session::sequence);
            let mark = in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner).watermark(latest);
            if mark != saved_seq {
                save_session(&**sessions, &key, session_attrs(&shard, mark)).await;
                saved_seq = mark;
            }
            last_save = tokio::time::Instant::now();
        }
    };
    // Finish routing what was received, then record where to resume.
    while routing.join_next().await.is_some() {}
    if outcome.is_ok() {
        let latest = shard.session().map_or(0, Session::sequence);
        save_session(&**sessions, &key, session_attrs(&shard, latest)).await;
    }
    outcome
}

/// Asks Discord how many shards to run and how many may identify at once.
pub async fn recommended_shards(egress: &Egress) -> Result<(u32, u32), crate::DiscordError> {
    let response =
        egress.client().gateway().authed().await.map_err(|e| crate::egress::from_twilight("get gateway", e))?;
    let bytes = response.bytes().await.map_err(|e| crate::egress::local("get gateway", e.to_string()))?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| crate::egress::local("get gateway", e.to_string()))?;
    let shards = v["shards"].as_u64().and_then(|n| u32::try_from(n).ok()).unwrap_or(1).max(1);
    let max_concurrency =
        v["session_start_limit"]["max_concurrency"].as_u64().and_then(|n| u32::try_from(n).ok()).unwrap_or(1).max(1);
    Ok((shards, max_concurrency))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_sequence_never_passes_an_event_still_being_routed() {
        let mut f = InFlight::default();
        assert_eq!(f.watermark(10), 10, "nothing in flight: everything up to the latest is done");
        f.start(11);
        f.start(12);
        f.start(12);
        assert_eq!(f.watermark(12), 10);
        f.finish(11);
        assert_eq!(f.watermark(12), 11);
        f.finish(12);
        assert_eq!(f.watermark(12), 11, "one of the two frames at 12 is still routing");
        f.finish(12);
        assert_eq!(f.watermark(12), 12);
    }

    #[test]
    fn fatal_close_codes_come_with_advice_and_others_do_not() {
        assert!(fatal_close_advice(4014).unwrap().contains("Message Content Intent"));
        assert!(fatal_close_advice(4004).unwrap().contains("DISCORD_TOKEN"));
        assert!(fatal_close_advice(4000).is_none() && fatal_close_advice(1000).is_none());
    }
}
