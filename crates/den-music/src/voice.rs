//! Voice connections: one songbird driver per server, joined through den's
//! own gateway (op 4 on the server's shard) and connected once both halves of
//! Discord's answer are in (VOICE_STATE_UPDATE with den's session,
//! VOICE_SERVER_UPDATE with the endpoint and token). A new endpoint or token
//! (Discord moved the call) connects again; a connection Discord ends
//! (session invalidated, den kicked, the voice server gone past resuming) is
//! joined again with backoff while den still wants to be there.
//!
//! The driver negotiates DAVE, Discord's end-to-end encryption, as it ships:
//! den never turns it off.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use den_discord::events::VoiceEvent;
use serde_json::{Value, json};
use songbird::events::context_data::{DisconnectKind, DisconnectReason};
use songbird::{ConnectionInfo, CoreEvent, Driver, Event, EventContext, EventHandler};
use tokio::sync::watch;

/// Sends gateway commands on the shard that holds a server.
pub trait GatewayCommands: Send + Sync {
    /// Queues a whole gateway frame (`{"op": 4, ...}`) on `guild`'s shard;
    /// `false` when this process does not run that shard.
    fn send(&self, guild: u64, frame: Value) -> bool;

    /// Whether this process runs `guild`'s shard (and so plays its music).
    fn holds(&self, guild: u64) -> bool;
}

/// Where den's voice connection to a server stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Asked Discord to join; waiting for its answer or the connection.
    Joining,
    /// Connected: audio flows.
    Connected,
    /// Not connected (never joined, left, or lost until a rejoin).
    Down,
}

/// Why den could not join a voice channel.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// This process does not run the server's gateway shard.
    #[error("this den process does not hold the server's gateway connection")]
    NotHere,
    /// Discord did not answer, or the voice server did not connect, in time.
    #[error("the voice connection did not come up within {} s", .0.as_secs())]
    Timeout(Duration),
}

/// What happened to a voice connection, for whoever plays into it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notice {
    /// Connected (first time, or again after a loss).
    Connected(u64),
    /// den was removed from the channel (kicked, or the channel went away).
    Removed(u64),
}

/// Who is in voice in one server: user → (channel, is a bot).
type InVoice = HashMap<u64, (u64, bool)>;

/// One server's call.
struct Call {
    driver: Driver,
    /// The channel den wants to be in.
    want: Option<u64>,
    /// den's voice session: (channel, session id), from VOICE_STATE_UPDATE.
    session: Option<(u64, String)>,
    /// (endpoint, token), from VOICE_SERVER_UPDATE.
    server: Option<(String, String)>,
    link: watch::Sender<Link>,
    /// Bumped by every connection attempt; a late result of an older one is ignored.
    attempt: u64,
    /// Rejoins since the last good connection (for the backoff).
    rejoins: u32,
}

/// den's voice connections in this process, and who is in which voice channel.
pub struct Voice {
    me: AtomicU64,
    gateway: Arc<dyn GatewayCommands>,
    config: songbird::Config,
    calls: Mutex<HashMap<u64, Call>>,
    people: Mutex<HashMap<u64, InVoice>>,
    notices: tokio::sync::mpsc::UnboundedSender<Notice>,
    metrics: den_ops::Metrics,
    this: Weak<Voice>,
}

impl std::fmt::Debug for Voice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Voice").field("me", &self.me).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How long to wait before the `n`th rejoin in a row: 1, 2, 4 ... 30 s.
fn rejoin_delay(n: u32) -> Duration {
    Duration::from_secs((1u64 << n.min(5)).min(30))
}

impl Voice {
    /// Voice over `gateway`, with notices of connections and people on the returned receiver.
    pub fn new(
        gateway: Arc<dyn GatewayCommands>,
        config: songbird::Config,
        metrics: den_ops::Metrics,
    ) -> (Arc<Self>, tokio::sync::mpsc::UnboundedReceiver<Notice>) {
        let (notices, rx) = tokio::sync::mpsc::unbounded_channel();
        let voice = Arc::new_cyclic(|this| Self {
            me: AtomicU64::new(0),
            gateway,
            config,
            calls: Mutex::new(HashMap::new()),
            people: Mutex::new(HashMap::new()),
            notices,
            metrics,
            this: this.clone(),
        });
        (voice, rx)
    }

    /// Sets den's own user id (its voice states are the ones that connect).
    pub fn set_me(&self, user: u64) {
        self.me.store(user, Ordering::Relaxed);
    }

    /// Whether this process holds `guild`'s gateway shard.
    #[must_use]
    pub fn holds(&self, guild: u64) -> bool {
        self.gateway.holds(guild)
    }

    /// The voice channel `user` is in, in `guild`.
    #[must_use]
    pub fn channel_of(&self, guild: u64, user: u64) -> Option<u64> {
        lock(&self.people).get(&guild).and_then(|p| p.get(&user)).map(|(c, _)| *c)
    }

    /// The people (not bots) in `channel` of `guild`.
    #[must_use]
    pub fn listeners(&self, guild: u64, channel: u64) -> Vec<u64> {
        let people = lock(&self.people);
        let in_channel = people.get(&guild).into_iter().flatten();
        in_channel.filter(|(_, (c, bot))| *c == channel && !bot).map(|(u, _)| *u).collect()
    }

    /// The channel den is connected to (or joining) in `guild`.
    #[must_use]
    pub fn joined(&self, guild: u64) -> Option<u64> {
        lock(&self.calls).get(&guild).and_then(|c| c.want)
    }

    /// Every server den is in (or joining) a voice channel of, with the channel.
    #[must_use]
    pub fn joined_all(&self) -> Vec<(u64, u64)> {
        lock(&self.calls).iter().filter_map(|(g, c)| c.want.map(|w| (*g, w))).collect()
    }

    /// Where the connection to `guild` stands.
    #[must_use]
    pub fn link(&self, guild: u64) -> Link {
        lock(&self.calls).get(&guild).map_or(Link::Down, |c| *c.link.borrow())
    }

    /// Runs `f` on `guild`'s driver (made on first use).
    pub fn with_driver<T>(&self, guild: u64, f: impl FnOnce(&mut Driver) -> T) -> T {
        let mut calls = lock(&self.calls);
        let call = calls.entry(guild).or_insert_with(|| self.new_call(guild));
        f(&mut call.driver)
    }

    fn new_call(&self, guild: u64) -> Call {
        let mut driver = Driver::new(self.config.clone());
        let watcher = Disconnects { voice: self.this.clone(), guild };
        driver.add_global_event(Event::Core(CoreEvent::DriverDisconnect), watcher);
        Call {
            driver,
            want: None,
            session: None,
            server: None,
            link: watch::channel(Link::Down).0,
            attempt: 0,
            rejoins: 0,
        }
    }

    /// Joins `channel` of `guild` (or moves there) and waits until audio can
    /// flow, up to `timeout`.
    ///
    /// # Errors
    /// [`JoinError::NotHere`] when this process does not hold the server's
    /// shard; [`JoinError::Timeout`] when the connection did not come up.
    pub async fn join(&self, guild: u64, channel: u64, timeout: Duration) -> Result<(), JoinError> {
        let mut link = {
            let mut calls = lock(&self.calls);
            let call = calls.entry(guild).or_insert_with(|| self.new_call(guild));
            // Connected, or joining that channel already: wait, do not ask Discord again.
            let already = call.want == Some(channel) && *call.link.borrow() != Link::Down;
            if !already {
                call.want = Some(channel);
                call.link.send_replace(Link::Joining);
                if !self.gateway.send(guild, voice_state(guild, Some(channel))) {
                    call.want = None;
                    call.link.send_replace(Link::Down);
                    return Err(JoinError::NotHere);
                }
            }
            call.link.subscribe()
        };
        let connected = tokio::time::timeout(timeout, link.wait_for(|l| *l == Link::Connected)).await;
        match connected {
            Ok(Ok(_)) => Ok(()),
            _ => Err(JoinError::Timeout(timeout)),
        }
    }

    /// Leaves `guild`'s voice channel and drops its driver (and what it played).
    pub fn leave(&self, guild: u64) {
        let call = lock(&self.calls).remove(&guild);
        if let Some(mut call) = call {
            call.want = None;
            call.driver.leave();
            self.gateway.send(guild, voice_state(guild, None));
        }
    }

    /// Takes a voice event from the gateway.
    pub fn on_event(&self, event: &VoiceEvent) {
        match event {
            VoiceEvent::State { guild, channel, user, session_id, bot } => {
                self.person(*guild, *user, *channel, *bot);
                if *user == self.me.load(Ordering::Relaxed) && *user != 0 {
                    self.own_state(*guild, *channel, session_id);
                }
            }
            VoiceEvent::GuildAvailable { .. } => {}
            VoiceEvent::Server { guild, token, endpoint } => {
                let mut calls = lock(&self.calls);
                let Some(call) = calls.get_mut(guild) else { return };
                call.server = endpoint.as_ref().map(|e| (e.clone(), token.clone()));
                self.try_connect(*guild, call);
            }
        }
    }

    fn person(&self, guild: u64, user: u64, channel: Option<u64>, bot: bool) {
        {
            let mut people = lock(&self.people);
            let in_guild = people.entry(guild).or_default();
            match channel {
                Some(c) => in_guild.insert(user, (c, bot)),
                None => in_guild.remove(&user),
            };
        }
    }

    fn own_state(&self, guild: u64, channel: Option<u64>, session_id: &str) {
        let mut calls = lock(&self.calls);
        let Some(call) = calls.get_mut(&guild) else { return };
        match channel {
            Some(c) => {
                // Moved by someone: follow, rather than fight over the channel.
                call.want = Some(c);
                let same = call.session.as_ref().is_some_and(|(ch, s)| *ch == c && s == session_id);
                call.session = Some((c, session_id.to_owned()));
                if !same {
                    self.try_connect(guild, call);
                }
            }
            None => {
                let wanted = call.want.take().is_some();
                call.session = None;
                call.server = None;
                call.driver.leave();
                call.link.send_replace(Link::Down);
                if wanted {
                    let _ = self.notices.send(Notice::Removed(guild));
                }
            }
        }
    }

    /// Connects when den knows both its session and the voice server.
    fn try_connect(&self, guild: u64, call: &mut Call) {
        let (Some((channel, session)), Some((endpoint, token))) = (&call.session, &call.server) else { return };
        let (Some(guild_id), Some(channel_id), Some(user_id)) =
            (NonZeroU64::new(guild), NonZeroU64::new(*channel), NonZeroU64::new(self.me.load(Ordering::Relaxed)))
        else {
            return;
        };
        let info = ConnectionInfo {
            channel_id: channel_id.into(),
            endpoint: endpoint.clone(),
            guild_id: guild_id.into(),
            session_id: session.clone(),
            token: token.clone(),
            user_id: user_id.into(),
        };
        call.attempt += 1;
        let attempt = call.attempt;
        let connecting = call.driver.connect(info);
        let this = self.this.clone();
        tokio::spawn(async move {
            let result = connecting.await;
            let Some(voice) = this.upgrade() else { return };
            let mut calls = lock(&voice.calls);
            let Some(call) = calls.get_mut(&guild) else { return };
            if call.attempt != attempt {
                return;
            }
            match result {
                Ok(()) => {
                    call.rejoins = 0;
                    call.link.send_replace(Link::Connected);
                    drop(calls);
                    let _ = voice.notices.send(Notice::Connected(guild));
                }
                Err(e) => {
                    tracing::warn!(guild, error = %e, "voice connection failed");
                    drop(calls);
                    voice.rejoin(guild);
                }
            }
        });
    }

    /// Asks Discord for a fresh voice session after a loss, with backoff.
    fn rejoin(&self, guild: u64) {
        let (channel, delay) = {
            let mut calls = lock(&self.calls);
            let Some(call) = calls.get_mut(&guild) else { return };
            let Some(channel) = call.want else { return };
            call.link.send_replace(Link::Joining);
            call.session = None;
            call.server = None;
            call.rejoins += 1;
            (channel, rejoin_delay(call.rejoins - 1))
        };
        self.metrics.music_voice_reconnect();
        let this = self.this.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let Some(voice) = this.upgrade() else { return };
            if voice.joined(guild) == Some(channel) && voice.link(guild) != Link::Connected {
                tracing::info!(guild, channel, "joining the voice channel again");
                voice.gateway.send(guild, voice_state(guild, Some(channel)));
            }
        });
    }
}

/// The op 4 frame that joins `channel` (or leaves, with `None`); den joins deafened: it never listens.
fn voice_state(guild: u64, channel: Option<u64>) -> Value {
    json!({"op": 4, "d": {
        "guild_id": guild.to_string(),
        "channel_id": channel.map(|c| c.to_string()),
        "self_mute": false,
        "self_deaf": true,
    }})
}

/// Hears the driver's disconnects: anything but den's own leaving is joined again.
struct Disconnects {
    voice: Weak<Voice>,
    guild: u64,
}

#[async_trait]
impl EventHandler for Disconnects {
    async fn act(&self, cx: &EventContext<'_>) -> Option<Event> {
        if let EventContext::DriverDisconnect(d) = cx {
            let requested = matches!(d.reason, Some(DisconnectReason::Requested));
            // A failed first connection is the connect call's to handle.
            let connecting = matches!(d.kind, DisconnectKind::Connect);
            tracing::info!(guild = self.guild, reason = ?d.reason, kind = ?d.kind, "voice connection ended");
            if !requested
                && !connecting
                && let Some(voice) = self.voice.upgrade()
            {
                voice.rejoin(self.guild);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejoins_back_off_to_thirty_seconds() {
        let delays: Vec<u64> = (0..8).map(|n| rejoin_delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
    }
}
