//! Gateway ingress: den's own shard loop over the Discord gateway v10, with
//! sessions kept in the store so a restarted process resumes, identifies
//! paced through the store so several gateway processes never exceed
//! Discord's limits, backoff with jitter on every reconnect path, and
//! backpressure when events cannot be enqueued.
//!
//! - [`pacing`]: identify pacing ([`StoreIdentifyQueue`]).
//! - `shard`: one shard's connection loop.

mod pacing;
mod shard;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use den_core::Secret;
use den_storage::Table;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use pacing::StoreIdentifyQueue;
pub use shard::USER_AGENT;

use crate::Egress;
use crate::router::Router;

/// Discord's gateway, when neither the config nor `GET /gateway/bot` says otherwise.
pub const DISCORD_GATEWAY: &str = "wss://gateway.discord.gg";

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

/// Where a shard stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardState {
    /// Opening a connection (or waiting out a backoff before it).
    Connecting,
    /// Connected; identifying or resuming.
    Identifying,
    /// READY received: a live session.
    Ready,
    /// RESUMED received: a live session.
    Resumed,
    /// The connection ended; a new one follows after a backoff.
    Reconnecting,
    /// Events cannot be enqueued: the shard stopped reading until they can.
    Backpressured,
    /// Stopped for good (shutdown or a fatal close).
    Closed,
}

impl ShardState {
    /// Its name in `/ready`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Identifying => "identifying",
            Self::Ready => "ready",
            Self::Resumed => "resumed",
            Self::Reconnecting => "reconnecting",
            Self::Backpressured => "backpressured",
            Self::Closed => "closed",
        }
    }

    fn is_live(self) -> bool {
        matches!(self, Self::Ready | Self::Resumed)
    }
}

#[derive(Clone, Copy, Debug)]
struct ShardHealth {
    state: ShardState,
    /// When the last frame of any kind arrived.
    last_frame: Instant,
    /// The connection's heartbeat interval (from HELLO).
    heartbeat: Duration,
}

/// The state of den's shards, for `/ready`.
#[derive(Clone, Debug, Default)]
pub struct ShardStatus {
    inner: Arc<Mutex<BTreeMap<u32, ShardHealth>>>,
}

impl ShardStatus {
    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<u32, ShardHealth>) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn set(&self, shard: u32, state: ShardState) {
        self.with(|m| {
            let h = m.entry(shard).or_insert(ShardHealth {
                state,
                last_frame: Instant::now(),
                heartbeat: Duration::from_secs(45),
            });
            h.state = state;
        });
    }

    fn frame(&self, shard: u32, heartbeat: Duration) {
        self.with(|m| {
            if let Some(h) = m.get_mut(&shard) {
                h.last_frame = Instant::now();
                h.heartbeat = heartbeat;
            }
        });
    }

    /// Each shard's state: `connecting`, `identifying`, `ready`, `resumed`,
    /// `reconnecting`, `backpressured`, `closed`; a ready shard that has heard
    /// nothing for longer than a heartbeat interval shows as `silent`.
    #[must_use]
    pub fn states(&self) -> BTreeMap<u32, &'static str> {
        self.with(|m| m.iter().map(|(n, h)| (*n, if h.is_live() { h.state.as_str() } else { describe(h) })).collect())
    }

    /// True when every shard has a live session that spoke within its heartbeat interval.
    #[must_use]
    pub fn all_ready(&self) -> bool {
        self.with(|m| !m.is_empty() && m.values().all(ShardHealth::is_live))
    }
}

impl ShardHealth {
    /// Live: a session, and a frame (at least a heartbeat ACK) within an interval and some slack.
    fn is_live(&self) -> bool {
        self.state.is_live()
            && self.last_frame.elapsed() <= self.heartbeat + self.heartbeat / 4 + Duration::from_secs(1)
    }
}

fn describe(h: &ShardHealth) -> &'static str {
    if h.state.is_live() { "silent" } else { h.state.as_str() }
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

/// A shard ended for good.
#[derive(Debug, thiserror::Error)]
#[error("{advice}")]
pub struct FatalClose {
    /// The close code.
    pub code: u16,
    /// What to do about it.
    pub advice: &'static str,
}

/// Sends gateway commands (voice state updates, presence) on the shard that
/// holds a guild. Cloned freely; empty until the shards start.
#[derive(Clone, Debug, Default)]
pub struct ShardSenders {
    inner: Arc<Mutex<Senders>>,
}

/// The total shard count, and the sender of each shard this process runs.
type Senders = (u32, BTreeMap<u32, mpsc::Sender<Value>>);

impl ShardSenders {
    fn register(&self, total: u32, shard: u32, tx: mpsc::Sender<Value>) {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        g.0 = total;
        g.1.insert(shard, tx);
    }

    fn sender_of(&self, guild: u64) -> Option<mpsc::Sender<Value>> {
        let g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let total = u64::from(g.0.max(1));
        let shard = u32::try_from((guild >> 22) % total).unwrap_or(0);
        g.1.get(&shard).cloned()
    }

    /// Queues `payload` (a whole gateway frame, `{"op": 4, "d": ...}`) on the
    /// shard of `guild`; `false` when this process does not run that shard.
    pub fn send(&self, guild: u64, payload: Value) -> bool {
        self.sender_of(guild).is_some_and(|tx| tx.try_send(payload).is_ok())
    }

    /// Whether any shard has started in this process.
    #[must_use]
    pub fn started(&self) -> bool {
        !self.inner.lock().unwrap_or_else(PoisonError::into_inner).1.is_empty()
    }

    /// Whether this process runs the shard of `guild`.
    #[must_use]
    pub fn holds(&self, guild: u64) -> bool {
        self.sender_of(guild).is_some()
    }
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
    /// Senders of gateway commands, filled as shards start.
    pub senders: ShardSenders,
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
            let (tx, rx) = mpsc::channel(64);
            this.senders.register(total, number, tx);
            this.status.set(number, ShardState::Connecting);
            set.spawn(shard::run(this.clone(), number, total, rx, shutdown.clone()));
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

/// Asks Discord how many shards to run and how many may identify at once.
pub async fn recommended_shards(egress: &Egress) -> Result<(u32, u32), crate::DiscordError> {
    let v = egress.gateway_bot().await?;
    let shards = v["shards"].as_u64().and_then(|n| u32::try_from(n).ok()).unwrap_or(1).max(1);
    let max_concurrency =
        v["session_start_limit"]["max_concurrency"].as_u64().and_then(|n| u32::try_from(n).ok()).unwrap_or(1).max(1);
    Ok((shards, max_concurrency))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fatal_close_codes_come_with_advice_and_others_do_not() {
        assert!(fatal_close_advice(4014).unwrap().contains("Message Content Intent"));
        assert!(fatal_close_advice(4004).unwrap().contains("DISCORD_TOKEN"));
        assert!(fatal_close_advice(4000).is_none() && fatal_close_advice(1000).is_none());
    }

    #[test]
    fn a_ready_shard_that_hears_nothing_for_a_heartbeat_interval_is_not_ready() {
        let status = ShardStatus::default();
        assert!(!status.all_ready(), "no shard yet");
        status.set(0, ShardState::Ready);
        status.frame(0, Duration::from_millis(100));
        assert!(status.all_ready());
        std::thread::sleep(Duration::from_millis(1300));
        assert!(!status.all_ready());
        assert_eq!(status.states()[&0], "silent");
        status.frame(0, Duration::from_millis(100));
        assert!(status.all_ready());
        status.set(0, ShardState::Reconnecting);
        assert!(!status.all_ready());
        assert_eq!(status.states()[&0], "reconnecting");
    }
}
