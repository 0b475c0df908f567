//! A fake Discord on 127.0.0.1: REST v10 over an in-memory model, every
//! request and response checked against Discord's OpenAPI spec, Discord-like
//! rate limits, and gateway v10 over WebSocket with fault injection.
//!
//! Tests act as people through [`FakeDiscord`] (post a message, invoke a
//! command, press a button) and read back what den did. A request that does
//! not match the spec is answered 400 and recorded as a violation; dropping a
//! `FakeDiscord` with violations fails the test with the schema errors.

mod conn;
mod gateway;
pub mod model;
pub mod ratelimit;
mod rest;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::serve::ListenerExt as _;
use ed25519_dalek::{Signer as _, SigningKey};
use serde_json::{Value, json};
use tokio::sync::Notify;

pub use gateway::{GUILD_MEMBERS, GUILD_MESSAGES, GUILD_PRESENCES, GatewayMode, MESSAGE_CONTENT};
pub use model::{Channel, Guild, Interaction, Message, Role, User, Webhook};
pub use ratelimit::{Bucket, RateLimits};

use crate::openapi::Checker;

/// How the fake behaves.
#[derive(Clone, Debug)]
pub struct FakeConfig {
    /// The token den must present.
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
    /// Check requests and responses against the OpenAPI spec. Always on in
    /// tests; benchmarks turn it off so the checker's CPU is not charged to den.
    pub check_schemas: bool,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            bot_token: "fake-bot-token".into(),
            rate_limits: RateLimits::default(),
            shards: 1,
            max_concurrency: 1,
            privileged_intents: MESSAGE_CONTENT,
            heartbeat_interval: Duration::from_millis(41_250),
            check_schemas: true,
        }
    }
}

/// One REST call the fake received.
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
    config: FakeConfig,
    checker: Checker,
    model: Mutex<model::Model>,
    limiter: Mutex<ratelimit::Limiter>,
    hub: Mutex<gateway::Hub>,
    stats: Mutex<Stats>,
    injected: Mutex<HashMap<String, Vec<Injected>>>,
    changed: Notify,
    gateway_url: String,
    public_key_hex: String,
    /// Where interactions go when the application has an Interactions Endpoint URL.
    endpoint: Mutex<Option<String>>,
    runtime: tokio::runtime::Handle,
    http: reqwest::Client,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    fn model(&self) -> MutexGuard<'_, model::Model> {
        lock(&self.model)
    }
    fn hub(&self) -> MutexGuard<'_, gateway::Hub> {
        lock(&self.hub)
    }
    fn stats(&self) -> MutexGuard<'_, Stats> {
        lock(&self.stats)
    }
    fn violation(&self, v: String) {
        tracing::error!(target: "den_testkit", "{v}");
        self.stats().violations.push(v);
    }
    fn take_injected(&self, op: &str) -> Option<Injected> {
        let mut map = lock(&self.injected);
        let list = map.get_mut(op)?;
        if list.is_empty() { None } else { Some(list.remove(0)) }
    }
    fn dispatch_message(&self, message: &Value, guild: u64) {
        let mut data = message.clone();
        data["guild_id"] = guild.to_string().into();
        self.hub().dispatch("MESSAGE_CREATE", &data, Some(guild), GUILD_MESSAGES);
    }
}

/// What a guild looks like in GUILD_CREATE.
fn guild_create_json(model: &model::Model, guild: u64) -> Value {
    let Some(g) = model.guilds.get(&guild) else { return Value::Null };
    let channels: Vec<Value> =
        model.channels.values().filter(|c| c.guild_id == guild).map(model::channel_json).collect();
    let roles: Vec<Value> = model.roles.values().filter(|r| r.guild_id == guild).map(model::role_json).collect();
    json!({
        "id": g.id.to_string(), "name": g.name, "icon": null, "owner_id": g.owner_id.to_string(),
        "afk_channel_id": null, "afk_timeout": 300, "verification_level": 0, "default_message_notifications": 0,
        "explicit_content_filter": 0, "roles": roles, "emojis": [], "stickers": [], "features": [], "mfa_level": 0,
        "system_channel_id": null, "system_channel_flags": 0, "rules_channel_id": null, "vanity_url_code": null,
        "description": null, "banner": null, "premium_tier": 0, "preferred_locale": "en-US",
        "public_updates_channel_id": null, "nsfw_level": 0, "premium_progress_bar_enabled": false,
        "joined_at": model::iso8601(model.now()), "large": false, "unavailable": false,
        "member_count": g.members.len(), "members": [], "channels": channels, "threads": [], "presences": [],
        "voice_states": [], "stage_instances": [], "guild_scheduled_events": [],
    })
}

/// A running fake Discord.
pub struct FakeDiscord {
    shared: Arc<Shared>,
    rest_addr: SocketAddr,
    signing_key: SigningKey,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for FakeDiscord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeDiscord").field("rest", &self.rest_addr).finish_non_exhaustive()
    }
}

/// A slash-command option for [`FakeDiscord::invoke_command`].
#[derive(Clone, Debug)]
pub struct CommandOption {
    /// Option name.
    pub name: String,
    /// Option value (string, integer, boolean, or a user id as a string).
    pub value: Value,
    /// Option type (3 string, 4 integer, 5 boolean, 6 user).
    pub kind: u8,
}

impl CommandOption {
    /// A string option.
    #[must_use]
    pub fn string(name: &str, value: &str) -> Self {
        Self { name: name.into(), value: value.into(), kind: 3 }
    }
    /// A user option.
    #[must_use]
    pub fn user(name: &str, user: u64) -> Self {
        Self { name: name.into(), value: user.to_string().into(), kind: 6 }
    }
    /// An attachment option (an id from [`FakeDiscord::add_attachment`]).
    #[must_use]
    pub fn attachment(name: &str, attachment: u64) -> Self {
        Self { name: name.into(), value: attachment.to_string().into(), kind: 11 }
    }
}

impl FakeDiscord {
    /// Starts REST and gateway listeners on 127.0.0.1 with random ports.
    pub async fn start(config: FakeConfig) -> std::io::Result<Self> {
        let rest = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let gw = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let rest_addr = rest.local_addr()?;
        let gateway_url = format!("ws://{}", gw.local_addr()?);
        let signing_key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
        let public_key_hex = hex::encode(signing_key.verifying_key().to_bytes());
        let shared = Arc::new(Shared {
            public_key_hex,
            config,
            checker: Checker::default(),
            model: Mutex::new(model::Model::new()),
            limiter: Mutex::default(),
            hub: Mutex::default(),
            stats: Mutex::default(),
            injected: Mutex::default(),
            changed: Notify::new(),
            gateway_url,
            endpoint: Mutex::new(None),
            runtime: tokio::runtime::Handle::current(),
            http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_default(),
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
        Ok(Self { shared, rest_addr, signing_key, tasks })
    }

    /// `127.0.0.1:PORT` of the REST API (den's `discord.api_proxy`).
    #[must_use]
    pub fn rest_addr(&self) -> String {
        self.rest_addr.to_string()
    }

    /// `ws://127.0.0.1:PORT` of the gateway.
    #[must_use]
    pub fn gateway_url(&self) -> String {
        self.shared.gateway_url.clone()
    }

    /// The bot token den must use.
    #[must_use]
    pub fn bot_token(&self) -> String {
        self.shared.config.bot_token.clone()
    }

    /// The application id.
    #[must_use]
    pub fn app_id(&self) -> u64 {
        self.shared.model().app_id
    }

    /// den's bot user id (not the application id: they differ for applications made before 2019).
    #[must_use]
    pub fn bot_user_id(&self) -> u64 {
        self.shared.model().bot.id
    }

    /// The application's Ed25519 public key, hex, as the developer portal shows it.
    #[must_use]
    pub fn public_key_hex(&self) -> String {
        self.shared.public_key_hex.clone()
    }

    // ----- building the world -----

    /// Adds a user.
    pub fn add_user(&self, name: &str) -> u64 {
        let mut m = self.shared.model();
        let id = m.snowflake();
        m.users.insert(id, User { id, name: name.into(), bot: false });
        id
    }

    /// Adds another bot account den may post as (multi-bot mode), a member of
    /// every guild; returns its user id and token.
    pub fn add_bot_account(&self, name: &str) -> (u64, String) {
        let mut m = self.shared.model();
        let id = m.snowflake();
        let token = format!("bot-token-{id}");
        let user = User { id, name: name.into(), bot: true };
        m.users.insert(id, user.clone());
        m.other_bots.insert(token.clone(), user);
        for g in m.guilds.values_mut() {
            g.members.insert(id, Vec::new());
        }
        (id, token)
    }

    /// Adds a bot account other than den's (another application's bot, seen in channels).
    pub fn add_bot_user(&self, name: &str) -> u64 {
        let mut m = self.shared.model();
        let id = m.snowflake();
        m.users.insert(id, User { id, name: name.into(), bot: true });
        id
    }

    /// Adds a guild owned by `owner`, with its @everyone role and den as a member.
    pub fn add_guild(&self, name: &str, owner: u64) -> u64 {
        let mut m = self.shared.model();
        let id = m.snowflake();
        let bot = m.bot.id;
        m.roles.insert(
            id,
            Role { id, guild_id: id, name: "@everyone".into(), permissions: "104324673".into(), position: 0 },
        );
        let members = [(owner, vec![]), (bot, vec![])].into_iter().collect();
        m.guilds.insert(id, Guild { id, name: name.into(), owner_id: owner, members });
        id
    }

    /// Adds `user` to `guild`.
    pub fn add_member(&self, guild: u64, user: u64) {
        if let Some(g) = self.shared.model().guilds.get_mut(&guild) {
            g.members.insert(user, Vec::new());
        }
    }

    /// Adds a guild that lands on shard `shard` of `total` (`(id >> 22) % total`).
    pub fn add_guild_on_shard(&self, name: &str, owner: u64, shard: u64, total: u64) -> u64 {
        loop {
            let id = self.add_guild(name, owner);
            if (id >> 22) % total == shard {
                return id;
            }
            // Not on that shard: drop it and draw another id.
            let mut m = self.shared.model();
            m.guilds.remove(&id);
            m.roles.remove(&id);
            drop(m);
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Adds a text channel.
    pub fn add_text_channel(&self, guild: u64, name: &str) -> u64 {
        self.add_channel(guild, name, 0)
    }

    /// Adds a category (channel type 4), as servers have ("Text Channels").
    pub fn add_category(&self, guild: u64, name: &str) -> u64 {
        self.add_channel(guild, name, 4)
    }

    /// Adds a role to a guild, as its admins would.
    pub fn add_role(&self, guild: u64, name: &str) -> u64 {
        let mut m = self.shared.model();
        let id = m.snowflake();
        let position = m.roles.values().filter(|r| r.guild_id == guild).count() as i64;
        m.roles.insert(id, Role { id, guild_id: guild, name: name.into(), permissions: "0".into(), position });
        id
    }

    fn add_channel(&self, guild: u64, name: &str, kind: u8) -> u64 {
        let mut m = self.shared.model();
        let id = m.snowflake();
        m.channels.insert(
            id,
            Channel {
                id,
                guild_id: guild,
                kind,
                name: name.into(),
                topic: None,
                parent_id: None,
                position: 0,
                overwrites: vec![],
                tags: vec![],
            },
        );
        id
    }

    // ----- acting as a person -----

    /// Posts `content` as `user` in `channel` and dispatches MESSAGE_CREATE.
    pub fn post_as(&self, user: u64, channel: u64, content: &str) -> u64 {
        self.post(user, channel, content, None)
    }

    /// Replies to `message` as `user`.
    pub fn reply_as(&self, user: u64, channel: u64, content: &str, message: u64) -> u64 {
        self.post(user, channel, content, Some(message))
    }

    fn post(&self, user: u64, channel: u64, content: &str, reply_to: Option<u64>) -> u64 {
        let (json, guild, id) = {
            let mut m = self.shared.model();
            let (name, bot) = m.users.get(&user).map(|u| (u.name.clone(), u.bot)).unwrap_or(("someone".into(), false));
            let guild = m.channels.get(&channel).map_or(0, |c| c.guild_id);
            let msg = Message {
                id: m.snowflake(),
                channel_id: channel,
                author_id: user,
                author_name: name,
                author_avatar: None,
                author_bot: bot,
                content: content.into(),
                webhook_id: None,
                reply_to,
                flags: 0,
                embeds: vec![],
                components: vec![],
                pinged_users: vec![],
                pinged_everyone: false,
                edits: 0,
                created: m.now(),
                nonce: None,
            };
            let mut json = model::message_json(&msg);
            if let Some(r) = reply_to.and_then(|r| m.messages.get(&r)) {
                json["referenced_message"] = model::message_json(r);
            }
            json["member"] =
                json!({"roles": [], "joined_at": model::iso8601(m.now()), "deaf": false, "mute": false, "flags": 0});
            let id = msg.id;
            m.messages.insert(id, msg);
            (json, guild, id)
        };
        self.shared.dispatch_message(&json, guild);
        id
    }

    fn new_interaction(&self, user: u64, channel: u64, kind: u8, data: Value, message: Option<u64>) -> (String, Value) {
        let mut m = self.shared.model();
        let id = m.snowflake();
        let token = format!("interaction-token-{id}");
        let guild = m.channels.get(&channel).map_or(0, |c| c.guild_id);
        let name = m.users.get(&user).map_or_else(|| "someone".to_owned(), |u| u.name.clone());
        let owner = m.guilds.get(&guild).is_some_and(|g| g.owner_id == user);
        let permissions = if owner { "2251799813685247" } else { "104324673" };
        let roles: Vec<String> = m
            .guilds
            .get(&guild)
            .and_then(|g| g.members.get(&user))
            .map(|r| r.iter().map(u64::to_string).collect())
            .unwrap_or_default();
        let app_permissions = m.app_permissions.unwrap_or(2_251_799_813_685_247).to_string();
        let mut payload = json!({
            "id": id.to_string(), "application_id": m.app_id.to_string(), "type": kind, "data": data,
            "guild_id": guild.to_string(), "channel_id": channel.to_string(),
            "channel": {"id": channel.to_string(), "type": 0, "guild_id": guild.to_string()},
            "member": {
                "user": model::user_json(user, &name, false, None), "roles": roles, "permissions": permissions,
                "joined_at": model::iso8601(m.now()), "deaf": false, "mute": false, "flags": 0,
            },
            "token": token, "version": 1, "app_permissions": app_permissions, "locale": "en-US",
            "guild_locale": "en-US", "entitlements": [], "authorizing_integration_owners": {"0": guild.to_string()},
            "context": 0, "attachment_size_limit": 10_485_760,
        });
        if let Some(mid) = message.and_then(|mid| m.messages.get(&mid)) {
            payload["message"] = model::message_json(mid);
        }
        let created = m.now();
        m.interactions.insert(
            token.clone(),
            Interaction {
                id,
                token: token.clone(),
                user_id: user,
                channel_id: channel,
                guild_id: guild,
                created,
                callback: None,
                responded_at: None,
                original: None,
                followups: vec![],
            },
        );
        (token, payload)
    }

    fn command_data(&self, name: &str, options: &[CommandOption]) -> Value {
        let opts: Vec<Value> =
            options.iter().map(|o| json!({"name": o.name, "type": o.kind, "value": o.value})).collect();
        let mut data =
            json!({"id": self.shared.model().snowflake().to_string(), "name": name, "type": 1, "options": opts});
        let users: serde_json::Map<String, Value> = options
            .iter()
            .filter(|o| o.kind == 6)
            .filter_map(|o| {
                let id: u64 = o.value.as_str()?.parse().ok()?;
                let m = self.shared.model();
                let u = m.users.get(&id)?;
                Some((id.to_string(), model::user_json(id, &u.name, u.bot, None)))
            })
            .collect();
        if !users.is_empty() {
            data["resolved"] = json!({"users": users});
        }
        let attachments: serde_json::Map<String, Value> = options
            .iter()
            .filter(|o| o.kind == 11)
            .filter_map(|o| {
                let id: u64 = o.value.as_str()?.parse().ok()?;
                let m = self.shared.model();
                let (filename, bytes) = m.attachments.get(&id)?;
                let url = format!("http://{}/attachments/{id}/{filename}", self.rest_addr);
                Some((
                    id.to_string(),
                    json!({"id": id.to_string(), "filename": filename, "size": bytes.len(), "url": url, "proxy_url": url}),
                ))
            })
            .collect();
        if !attachments.is_empty() {
            data["resolved"]["attachments"] = Value::Object(attachments);
        }
        data
    }

    /// A file a person attaches to a command; returns its attachment id.
    pub fn add_attachment(&self, filename: &str, bytes: &[u8]) -> u64 {
        let mut m = self.shared.model();
        let id = m.snowflake();
        m.attachments.insert(id, (filename.to_owned(), bytes.to_vec()));
        id
    }

    /// Invokes slash command `name` as `user`, delivered as Discord would: to
    /// the Interactions Endpoint URL when one is set, else over the gateway
    /// (INTERACTION_CREATE); returns the interaction token.
    pub fn invoke_command(&self, user: u64, channel: u64, name: &str, options: &[CommandOption]) -> String {
        let data = self.command_data(name, options);
        let (token, payload) = self.new_interaction(user, channel, 2, data, None);
        self.deliver(&token, payload);
        token
    }

    /// Presses the button `custom_id` on `message` as `user`; returns the token.
    pub fn press_button(&self, user: u64, channel: u64, message: u64, custom_id: &str) -> String {
        let data = json!({"custom_id": custom_id, "component_type": 2});
        let (token, payload) = self.new_interaction(user, channel, 3, data, Some(message));
        self.deliver(&token, payload);
        token
    }

    /// Sends interactions to `url` (signed, as Discord POSTs them) instead of
    /// over the gateway; `None` goes back to the gateway.
    pub fn set_interactions_endpoint(&self, url: Option<String>) {
        *lock(&self.shared.endpoint) = url;
    }

    fn deliver(&self, token: &str, payload: Value) {
        let Some(url) = lock(&self.shared.endpoint).clone() else {
            let guild = self.shared.model().interactions[token].guild_id;
            self.shared.hub().dispatch("INTERACTION_CREATE", &payload, Some(guild), 0);
            return;
        };
        let signed = self.sign(token.to_owned(), payload.to_string());
        let shared = self.shared.clone();
        self.shared.runtime.spawn(async move {
            let sent = shared
                .http
                .post(&url)
                .header("content-type", "application/json")
                .header("x-signature-ed25519", &signed.signature)
                .header("x-signature-timestamp", &signed.timestamp)
                .body(signed.body)
                .send()
                .await;
            let answer = match sent {
                Ok(r) if r.status().is_success() => r.json::<Value>().await.ok(),
                Ok(r) => {
                    tracing::warn!(target: "den_testkit", status = %r.status(), "the interactions endpoint refused");
                    None
                }
                Err(e) => {
                    tracing::warn!(target: "den_testkit", error = %e, "the interactions endpoint did not answer");
                    None
                }
            };
            // What den answered is the first response, as if posted to the callback route.
            if let Some(answer) = answer {
                let result = rest::respond(&shared, &mut shared.model(), &signed.token, None, &answer);
                if let Err(e) = result {
                    shared.violation(format!("interaction answer refused over HTTP: {}", e.message()));
                }
                shared.changed.notify_waiters();
            }
        });
    }

    /// Builds a slash-command interaction for the HTTP endpoint, signed with the
    /// application's key: returns (token, body, signature hex, timestamp).
    pub fn signed_command(&self, user: u64, channel: u64, name: &str, options: &[CommandOption]) -> SignedInteraction {
        let data = self.command_data(name, options);
        let (token, payload) = self.new_interaction(user, channel, 2, data, None);
        self.sign(token, payload.to_string())
    }

    /// A signed PING (type 1).
    pub fn signed_ping(&self) -> SignedInteraction {
        let body =
            json!({"id": "1", "application_id": self.app_id().to_string(), "type": 1, "token": "ping", "version": 1})
                .to_string();
        self.sign("ping".into(), body)
    }

    /// Signs `body` with the application's key at the current time.
    #[must_use]
    pub fn sign(&self, token: String, body: String) -> SignedInteraction {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        self.sign_at(token, body, &now.to_string())
    }

    /// Signs `body` as if sent at `timestamp` (Unix seconds), for replay tests.
    #[must_use]
    pub fn sign_at(&self, token: String, body: String, timestamp: &str) -> SignedInteraction {
        let signature = hex::encode(self.signing_key.sign(format!("{timestamp}{body}").as_bytes()).to_bytes());
        SignedInteraction { token, body, signature, timestamp: timestamp.to_owned() }
    }

    // ----- reading what den did -----

    /// Messages in `channel`, oldest first.
    #[must_use]
    pub fn messages(&self, channel: u64) -> Vec<Message> {
        self.shared.model().messages.values().filter(|m| m.channel_id == channel).cloned().collect()
    }

    /// One message.
    #[must_use]
    pub fn message(&self, id: u64) -> Option<Message> {
        self.shared.model().messages.get(&id).cloned()
    }

    /// The state of an interaction.
    #[must_use]
    pub fn interaction(&self, token: &str) -> Option<Interaction> {
        self.shared.model().interactions.get(token).cloned()
    }

    /// Every user the fake knows.
    #[must_use]
    pub fn users(&self) -> Vec<User> {
        self.shared.model().users.values().cloned().collect()
    }

    /// The interactions invoked in `channel`, oldest first.
    #[must_use]
    pub fn interactions_in(&self, channel: u64) -> Vec<Interaction> {
        let mut list: Vec<Interaction> =
            self.shared.model().interactions.values().filter(|i| i.channel_id == channel).cloned().collect();
        list.sort_by_key(|i| i.id);
        list
    }

    /// The interactions `user` invoked, oldest first.
    #[must_use]
    pub fn interactions_by(&self, user: u64) -> Vec<Interaction> {
        let mut list: Vec<Interaction> =
            self.shared.model().interactions.values().filter(|i| i.user_id == user).cloned().collect();
        list.sort_by_key(|i| i.id);
        list
    }

    /// Channels of a guild.
    #[must_use]
    pub fn channels(&self, guild: u64) -> Vec<Channel> {
        self.shared.model().channels.values().filter(|c| c.guild_id == guild).cloned().collect()
    }

    /// Roles of a guild.
    #[must_use]
    pub fn roles(&self, guild: u64) -> Vec<Role> {
        self.shared.model().roles.values().filter(|r| r.guild_id == guild).cloned().collect()
    }

    /// Webhooks of a channel.
    #[must_use]
    pub fn webhooks(&self, channel: u64) -> Vec<Webhook> {
        self.shared.model().webhooks.values().filter(|w| w.channel_id == channel).cloned().collect()
    }

    /// Registered commands (`None` for global).
    #[must_use]
    pub fn commands(&self, guild: Option<u64>) -> Vec<Value> {
        self.shared.model().commands.get(&guild).cloned().unwrap_or_default()
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

    /// Waits until `check` holds, re-checking whenever the fake's state changes.
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

    /// Gives a member a role (interactions then list it).
    pub fn add_member_role(&self, guild: u64, user: u64, role: u64) {
        if let Some(g) = self.shared.model().guilds.get_mut(&guild) {
            g.members.entry(user).or_default().push(role);
        }
    }

    /// Sets den's permissions as interactions will report them (`app_permissions`).
    pub fn set_app_permissions(&self, permissions: u64) {
        self.shared.model().app_permissions = Some(permissions);
    }

    /// Moves the fake's clock forward (interaction tokens age).
    pub fn advance(&self, d: Duration) {
        self.shared.model().time_offset += d;
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
}

/// A signed HTTP interaction, ready to POST to den's endpoint.
#[derive(Clone, Debug)]
pub struct SignedInteraction {
    /// The interaction token.
    pub token: String,
    /// The raw body.
    pub body: String,
    /// `X-Signature-Ed25519`.
    pub signature: String,
    /// `X-Signature-Timestamp`.
    pub timestamp: String,
}

impl Drop for FakeDiscord {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let violations = self.violations();
        if !violations.is_empty() && !std::thread::panicking() {
            panic!("den sent Discord requests that break its OpenAPI spec:\n{}", violations.join("\n"));
        }
    }
}
