//! [`Standin`]: the REST and gateway servers over one shared world, and
//! what tests and pages read back or break on purpose.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::serve::ListenerExt as _;
use ed25519_dalek::SigningKey;
use serde_json::Value;
use tokio::sync::Notify;

use crate::events::{Event, Feed, Part};
use crate::gateway::{self, GatewayMode, Hub};
use crate::openapi::Checker;
use crate::ratelimit::{Limiter, RateLimits};
use crate::world::{Channel, Interaction, Message, Role, User, Webhook, World};
use crate::{conn, rest};

/// How the stand-in behaves.
#[derive(Clone, Debug)]
pub struct StandinConfig {
    /// The token of the application's bot.
    pub bot_token: String,
    /// Rate-limit buckets.
    pub rate_limits: RateLimits,
    /// Shards `/gateway/bot` recommends.
    pub shards: u32,
    /// `max_concurrency` of `/gateway/bot`.
    pub max_concurrency: u32,
    /// Privileged intents enabled in the developer portal.
    pub privileged_intents: u64,
    /// Heartbeat interval sent in HELLO.
    pub heartbeat_interval: Duration,
    /// Check requests and responses against the OpenAPI spec. Benchmarks
    /// turn it off so the checker's CPU is not charged to den.
    pub check_schemas: bool,
    /// A request that breaks the spec is refused with 400 and fails the test
    /// when the stand-in is dropped (tests); otherwise it is reported as an
    /// [`Event::Violation`] and carried out, as Discord mostly does.
    pub strict: bool,
    /// Unknown bot tokens become new bot accounts, so any bot can connect.
    pub open_door: bool,
    /// Report every REST call and gateway frame as an [`Event`] (a page shows them).
    pub wire_log: bool,
    /// Address of the REST API.
    pub rest_listen: SocketAddr,
    /// Address of the gateway.
    pub gateway_listen: SocketAddr,
}

impl Default for StandinConfig {
    fn default() -> Self {
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            bot_token: "fake-bot-token".into(),
            rate_limits: RateLimits::default(),
            shards: 1,
            max_concurrency: 1,
            privileged_intents: gateway::MESSAGE_CONTENT,
            heartbeat_interval: Duration::from_millis(41_250),
            check_schemas: true,
            strict: true,
            open_door: false,
            wire_log: false,
            rest_listen: any_port,
            gateway_listen: any_port,
        }
    }
}

/// One REST call the stand-in received.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// Path after `/api/v10`.
    pub path: String,
    /// The spec's `operationId`.
    pub operation: String,
    /// JSON body (null when none).
    pub body: Value,
    /// Status answered.
    pub status: u16,
    /// When it arrived.
    pub at: Instant,
}

/// Counters of what happened.
#[derive(Debug, Default)]
pub struct Stats {
    /// Every request, in order.
    pub requests: Vec<RequestRecord>,
    /// 429 answers.
    pub rate_limited: u64,
    /// 401, 403 and 429 answers (Discord bans an IP after 10,000 per 10 minutes).
    pub invalid_requests: u64,
    /// Requests or responses that broke the spec.
    pub violations: Vec<String>,
}

/// A failure to inject into the next call of an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injected {
    /// Answer 429 with this `Retry-After`.
    RateLimited(Duration),
    /// Answer with this status (500, 502...) without doing anything.
    Status(u16),
    /// Do the request's work, then answer with this status instead (a
    /// gateway timing out in front of a backend that did commit).
    StatusAfterCommit(u16),
    /// Do the request's work, then drop the connection without answering.
    DropAfterCommit,
}

pub(crate) struct Shared {
    pub config: StandinConfig,
    pub checker: Checker,
    world: Mutex<World>,
    pub limiter: Mutex<Limiter>,
    hub: Mutex<Hub>,
    stats: Mutex<Stats>,
    injected: Mutex<HashMap<String, Vec<Injected>>>,
    pub changed: Notify,
    pub gateway_url: String,
    /// `http://127.0.0.1:PORT`: the REST API, and the CDN of attachments.
    pub rest_url: String,
    pub public_key_hex: String,
    pub signing_key: SigningKey,
    /// Where interactions go when the application has an Interactions Endpoint URL.
    pub endpoint: Mutex<Option<String>>,
    pub runtime: tokio::runtime::Handle,
    pub http: reqwest::Client,
    pub feed: Feed,
    /// The world changed since it was last saved.
    dirty: AtomicBool,
    /// The voice server bots are sent to when they join a voice channel.
    pub voice: crate::voice::VoiceServer,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Writes the world to `path` whole or not at all (a partial file, then a rename).
fn write_world(shared: &Shared, path: &Path) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(&*shared.world()).map_err(std::io::Error::other)?;
    let partial = path.with_extension("partial");
    std::fs::write(&partial, bytes)?;
    std::fs::rename(&partial, path)
}

impl Shared {
    /// The bot account a token names; with an open door, an unknown token
    /// becomes a new bot account ("guest-bot-N") in every guild.
    pub(crate) fn account(&self, token: &str) -> Option<User> {
        let mut world = self.world();
        if let Some(user) = world.account(token, &self.config.bot_token) {
            return Some(user);
        }
        if !self.config.open_door || token.is_empty() {
            return None;
        }
        let n = world.other_bots.len() + 1;
        let user = world.add_bot(&format!("guest-bot-{n}"), token);
        drop(world);
        self.touch(Part::Members, None);
        Some(user)
    }

    pub fn world(&self) -> MutexGuard<'_, World> {
        lock(&self.world)
    }
    pub fn hub(&self) -> MutexGuard<'_, Hub> {
        lock(&self.hub)
    }
    pub fn stats(&self) -> MutexGuard<'_, Stats> {
        lock(&self.stats)
    }
    pub fn violation(&self, v: String) {
        tracing::warn!(target: "den_standin", "{v}");
        self.stats().violations.push(v.clone());
        self.feed.send(Event::Violation { message: v });
    }
    pub fn take_injected(&self, op: &str) -> Option<Injected> {
        let mut map = lock(&self.injected);
        let list = map.get_mut(op)?;
        if list.is_empty() { None } else { Some(list.remove(0)) }
    }
    /// Records that `part` changed: waiters wake, pages refresh, the world is saved.
    pub fn touch(&self, part: Part, channel: Option<u64>) {
        self.dirty.store(true, Ordering::Relaxed);
        self.feed.send(Event::Changed { part, channel });
        self.changed.notify_waiters();
    }
    /// Sends MESSAGE_CREATE for a message in `guild`.
    pub fn dispatch_message(&self, message: &Value, guild: u64) {
        let mut data = message.clone();
        data["guild_id"] = guild.to_string().into();
        self.hub().dispatch("MESSAGE_CREATE", &data, Some(guild), gateway::GUILD_MESSAGES, None);
    }
}

/// A running stand-in for Discord.
pub struct Standin {
    pub(crate) shared: Arc<Shared>,
    rest_addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Standin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Standin").field("rest", &self.rest_addr).finish_non_exhaustive()
    }
}

impl Standin {
    /// Starts REST and gateway listeners with an empty world.
    pub async fn start(config: StandinConfig) -> std::io::Result<Self> {
        Self::start_with(config, World::new()).await
    }

    /// Starts with the world saved in `path` ([`Standin::save`]), or an empty
    /// one when there is no such file. A file that cannot be read is an error:
    /// it is never overwritten silently.
    pub async fn start_from(config: StandinConfig, path: &Path) -> std::io::Result<Self> {
        let world = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} is not a saved world ({e}); move it away or start fresh", path.display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => World::new(),
            Err(e) => return Err(e),
        };
        Self::start_with(config, world).await
    }

    async fn start_with(config: StandinConfig, world: World) -> std::io::Result<Self> {
        let rest = tokio::net::TcpListener::bind(config.rest_listen).await?;
        let gw = tokio::net::TcpListener::bind(config.gateway_listen).await?;
        let rest_addr = rest.local_addr()?;
        let gateway_url = format!("ws://{}", gw.local_addr()?);
        let signing_key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
        let voice = crate::voice::VoiceServer::start().await?;
        let shared = Arc::new(Shared {
            voice,
            public_key_hex: hex::encode(signing_key.verifying_key().to_bytes()),
            signing_key,
            config,
            checker: Checker::default(),
            world: Mutex::new(world),
            limiter: Mutex::default(),
            hub: Mutex::default(),
            stats: Mutex::default(),
            injected: Mutex::default(),
            changed: Notify::new(),
            gateway_url,
            rest_url: format!("http://{rest_addr}"),
            endpoint: Mutex::new(None),
            runtime: tokio::runtime::Handle::current(),
            http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_default(),
            feed: Feed::default(),
            dirty: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&shared);
        shared.voice.on_speaking(move |guild, user, speaking| {
            let Some(shared) = weak.upgrade() else { return };
            let changed = shared
                .world()
                .voice_states
                .get_mut(&guild)
                .and_then(|s| s.get_mut(&user))
                .map(|s| s.speaking = speaking);
            if changed.is_some() {
                shared.touch(Part::Voice, None);
            }
        });
        let rest_app = axum::Router::new()
            .route("/attachments/{id}/{file}", axum::routing::get(rest::attachment))
            .fallback(rest::handle)
            .with_state(shared.clone());
        let gw_app = axum::Router::new().fallback(gateway::upgrade).with_state(shared.clone());
        let gw = gw.tap_io(|s| {
            let _ = s.set_nodelay(true);
        });
        let rest = conn::CuttableListener(rest);
        let tasks = vec![
            tokio::spawn(async move {
                let service = rest_app.into_make_service_with_connect_info::<conn::Conn>();
                let _ = axum::serve(rest, service).await;
            }),
            tokio::spawn(async move {
                let _ = axum::serve(gw, gw_app).await;
            }),
        ];
        Ok(Self { shared, rest_addr, tasks })
    }

    /// The voice server: the calls bots made, and what they sent.
    #[must_use]
    pub fn voice(&self) -> &crate::voice::VoiceServer {
        &self.shared.voice
    }

    /// `127.0.0.1:PORT` of the REST API (den's `discord.api_proxy`).
    #[must_use]
    pub fn rest_addr(&self) -> String {
        self.rest_addr.to_string()
    }

    /// `http://127.0.0.1:PORT/api/v10`, the base URL other bots use.
    #[must_use]
    pub fn api_base(&self) -> String {
        format!("{}/api/v10", self.shared.rest_url)
    }

    /// `http://127.0.0.1:PORT`, where attachments are served (Discord's CDN, for the stand-in).
    #[must_use]
    pub fn cdn(&self) -> String {
        self.shared.rest_url.clone()
    }

    /// `ws://127.0.0.1:PORT` of the gateway.
    #[must_use]
    pub fn gateway_url(&self) -> String {
        self.shared.gateway_url.clone()
    }

    /// The token of the application's bot.
    #[must_use]
    pub fn bot_token(&self) -> String {
        self.shared.config.bot_token.clone()
    }

    /// The application id.
    #[must_use]
    pub fn app_id(&self) -> u64 {
        self.shared.world().app_id
    }

    /// The application's bot user id (not the application id: they differ for applications made before 2019).
    #[must_use]
    pub fn bot_user_id(&self) -> u64 {
        self.shared.world().bot.id
    }

    /// The application's Ed25519 public key, hex, as the developer portal shows it.
    #[must_use]
    pub fn public_key_hex(&self) -> String {
        self.shared.public_key_hex.clone()
    }

    // ----- saving and watching -----

    /// The world as JSON (live interactions left out).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        write_world(&self.shared, path)
    }

    /// Saves the world to `path` whenever it changed, at most every `every`.
    pub fn autosave(&self, path: PathBuf, every: Duration) -> tokio::task::JoinHandle<()> {
        let shared = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(shared) = shared.upgrade() else { return };
                if shared.dirty.swap(false, Ordering::Relaxed)
                    && let Err(e) = write_world(&shared, &path)
                {
                    tracing::warn!(target: "den_standin", error = %e, path = %path.display(), "cannot save the world");
                }
            }
        })
    }

    /// Replaces the world with an empty one; connected bots are told their
    /// sessions ended and identify again.
    pub fn reset(&self) {
        *self.shared.world() = World::new();
        self.shared.hub().forget_sessions();
        *lock(&self.shared.stats) = Stats::default();
        self.shared.touch(Part::All, None);
    }

    /// Every event from now on: REST calls, gateway frames, changes, violations.
    #[must_use]
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.shared.feed.subscribe()
    }

    /// The latest REST calls and gateway frames, oldest first.
    #[must_use]
    pub fn recent_wire(&self) -> Vec<Event> {
        self.shared.feed.recent()
    }

    /// Reads the world.
    pub fn read<R>(&self, f: impl FnOnce(&World) -> R) -> R {
        f(&self.shared.world())
    }

    // ----- reading what bots did -----

    /// Messages in `channel`, oldest first.
    #[must_use]
    pub fn messages(&self, channel: u64) -> Vec<Message> {
        self.shared.world().messages.values().filter(|m| m.channel_id == channel).cloned().collect()
    }

    /// One message.
    #[must_use]
    pub fn message(&self, id: u64) -> Option<Message> {
        self.shared.world().messages.get(&id).cloned()
    }

    /// The state of an interaction.
    #[must_use]
    pub fn interaction(&self, token: &str) -> Option<Interaction> {
        self.shared.world().interactions.get(token).cloned()
    }

    /// Every user the stand-in knows.
    #[must_use]
    pub fn users(&self) -> Vec<User> {
        self.shared.world().users.values().cloned().collect()
    }

    /// The interactions invoked in `channel`, oldest first.
    #[must_use]
    pub fn interactions_in(&self, channel: u64) -> Vec<Interaction> {
        self.interactions_where(|i| i.channel_id == channel)
    }

    /// The interactions `user` invoked, oldest first.
    #[must_use]
    pub fn interactions_by(&self, user: u64) -> Vec<Interaction> {
        self.interactions_where(|i| i.user_id == user)
    }

    fn interactions_where(&self, keep: impl Fn(&Interaction) -> bool) -> Vec<Interaction> {
        let mut list: Vec<Interaction> =
            self.shared.world().interactions.values().filter(|i| keep(i)).cloned().collect();
        list.sort_by_key(|i| i.id);
        list
    }

    /// Channels of a guild (threads included).
    #[must_use]
    pub fn channels(&self, guild: u64) -> Vec<Channel> {
        self.shared.world().channels.values().filter(|c| c.guild_id == guild).cloned().collect()
    }

    /// Roles of a guild.
    #[must_use]
    pub fn roles(&self, guild: u64) -> Vec<Role> {
        self.shared.world().roles.values().filter(|r| r.guild_id == guild).cloned().collect()
    }

    /// Webhooks of a channel.
    #[must_use]
    pub fn webhooks(&self, channel: u64) -> Vec<Webhook> {
        self.shared.world().webhooks.values().filter(|w| w.channel_id == channel).cloned().collect()
    }

    /// Registered commands (`None` for global).
    #[must_use]
    pub fn commands(&self, guild: Option<u64>) -> Vec<Value> {
        self.shared.world().commands.of(guild).to_vec()
    }

    /// Every REST request so far.
    #[must_use]
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.stats().requests.clone()
    }

    /// 429s answered so far.
    #[must_use]
    pub fn rate_limited(&self) -> u64 {
        self.shared.stats().rate_limited
    }

    /// 401/403/429 answers so far.
    #[must_use]
    pub fn invalid_requests(&self) -> u64 {
        self.shared.stats().invalid_requests
    }

    /// Spec violations so far.
    #[must_use]
    pub fn violations(&self) -> Vec<String> {
        self.shared.stats().violations.clone()
    }

    /// Spec violations so far, cleared: for tests that break the spec on purpose.
    pub fn take_violations(&self) -> Vec<String> {
        std::mem::take(&mut self.shared.stats().violations)
    }

    /// Waits until `check` holds, re-checking whenever the world changes.
    pub async fn wait_until(&self, what: &str, timeout: Duration, mut check: impl FnMut(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if check(self) {
                return;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(!left.is_zero(), "timed out after {timeout:?} waiting for: {what}");
            // Also poll: gateway-side changes do not always notify.
            let _ = tokio::time::timeout(left.min(Duration::from_millis(20)), changed).await;
        }
    }

    // ----- faults and time -----

    /// The next call of operation `op` (an OpenAPI operationId) fails this way.
    pub fn inject(&self, op: &str, failure: Injected) {
        lock(&self.shared.injected).entry(op.to_owned()).or_default().push(failure);
    }

    /// Sets the application's permissions as interactions will report them (`app_permissions`).
    pub fn set_app_permissions(&self, permissions: u64) {
        self.shared.world().app_permissions = Some(permissions);
    }

    /// Moves the stand-in's clock forward (interaction tokens age).
    pub fn advance(&self, d: Duration) {
        self.shared.world().time_offset += d;
    }

    /// Drops every gateway connection without a close frame.
    pub fn gateway_drop_connections(&self) {
        self.shared.hub().drop_connections();
    }

    /// Stops or resumes ACKing heartbeats.
    pub fn gateway_withhold_acks(&self, withhold: bool) {
        self.shared.hub().withhold_acks = withhold;
    }

    /// Closes every gateway connection with `code`.
    pub fn gateway_close(&self, code: u16) {
        self.shared.hub().close_all(code);
    }

    /// Sends RECONNECT (op 7).
    pub fn gateway_reconnect(&self) {
        self.shared.hub().reconnect_all();
    }

    /// Sends INVALID_SESSION (op 9).
    pub fn gateway_invalidate(&self, resumable: bool) {
        self.shared.hub().invalidate_all(resumable);
    }

    /// How the gateway treats new connections from now on.
    pub fn gateway_mode(&self, mode: GatewayMode) {
        self.shared.hub().mode = mode;
    }

    /// WebSocket connections made to the gateway so far.
    #[must_use]
    pub fn gateway_connections(&self) -> u32 {
        self.shared.hub().connections
    }

    /// The User-Agent of every gateway connection so far, in order.
    #[must_use]
    pub fn gateway_user_agents(&self) -> Vec<Option<String>> {
        self.shared.hub().user_agents.clone()
    }

    /// Shards that identified, in order.
    #[must_use]
    pub fn identifies(&self) -> Vec<(u32, Instant)> {
        self.shared.hub().identifies.clone()
    }

    /// Successful RESUMEs so far, over all sessions.
    #[must_use]
    pub fn resumes(&self) -> u32 {
        self.shared.hub().sessions.iter().map(|s| s.resumed).sum()
    }

    /// Gateway sessions with a live connection.
    #[must_use]
    pub fn connected_sessions(&self) -> usize {
        self.shared.hub().sessions.iter().filter(|s| s.tx.is_some()).count()
    }

    /// Accounts with a live gateway connection, by name.
    #[must_use]
    pub fn connected_accounts(&self) -> Vec<String> {
        let hub = self.shared.hub();
        let world = self.shared.world();
        let mut names: Vec<String> = hub
            .sessions
            .iter()
            .filter(|s| s.tx.is_some())
            .filter_map(|s| {
                let bot = std::iter::once(&world.bot).chain(world.other_bots.values()).find(|b| b.id == s.account);
                world.users.get(&s.account).or(bot).map(|u| u.name.clone())
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.shared.hub().drop_connections();
        let violations = self.violations();
        if self.shared.config.strict && !violations.is_empty() && !std::thread::panicking() {
            panic!("a bot sent Discord requests that break its OpenAPI spec:\n{}", violations.join("\n"));
        }
    }
}
