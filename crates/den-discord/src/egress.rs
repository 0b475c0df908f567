//! Egress: every Discord REST call of a process goes through one [`Egress`]
//! and its twilight-http client, whose rate limiter paces requests by the
//! `X-RateLimit-*` headers Discord sends.
//!
//! On top of the client: retries that obey 429 `retry_after` and back off on
//! 5xx, `allowed_mentions` empty on everything den posts, splitting of long
//! text, den-owned webhooks per channel, and interaction responses.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use den_core::Secret;
use den_storage::{Put, Table};
use serde_json::Value;
use twilight_http::Client;
use twilight_http::api_error::ApiError;
use twilight_http::error::ErrorType;
use twilight_model::channel::message::{AllowedMentions, MessageFlags};
use twilight_model::http::interaction::{InteractionResponse, InteractionResponseData, InteractionResponseType};
use twilight_model::id::Id;

use crate::split::{MAX_MESSAGE_CHARS, split_message};

/// Attempts per call before giving up on 429s and 5xx.
const MAX_ATTEMPTS: u32 = 5;

/// What went wrong talking to Discord.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiscordErrorKind {
    /// 401: the token is wrong or revoked.
    Unauthorized,
    /// 403: den lacks a permission.
    Forbidden,
    /// 404: the channel, message, webhook or interaction is gone.
    NotFound,
    /// 429 persisted through the retries.
    RateLimited,
    /// 5xx persisted through the retries.
    Server,
    /// Discord refused the request as malformed (400).
    Invalid,
    /// The request never got an answer (connection, timeout).
    Transport,
    /// den refused to send it (a zero id, a name that cannot be used).
    Local,
}

/// An error from Discord or from talking to it.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {message}")]
pub struct DiscordError {
    kind: DiscordErrorKind,
    what: String,
    message: String,
    /// Discord's JSON error code, when it sent one.
    pub code: Option<u64>,
    retry_after: Option<Duration>,
    #[source]
    source: Option<Box<twilight_http::Error>>,
}

impl DiscordError {
    /// The kind.
    #[must_use]
    pub fn kind(&self) -> DiscordErrorKind {
        self.kind
    }

    pub(crate) fn local(what: &str, message: impl Into<String>) -> Self {
        Self {
            kind: DiscordErrorKind::Local,
            what: what.into(),
            message: message.into(),
            code: None,
            retry_after: None,
            source: None,
        }
    }

    pub(crate) fn from_twilight(what: &str, e: twilight_http::Error) -> Self {
        let (kind, code, retry_after, message) = match e.kind() {
            ErrorType::Response { status, error, .. } => {
                let status = status.get();
                let (code, retry_after) = match error {
                    ApiError::General(g) => (Some(g.code), None),
                    ApiError::Ratelimited(r) => (None, Some(Duration::from_secs_f64(r.retry_after.clamp(0.0, 3600.0)))),
                    ApiError::Message(_) => (None, None),
                    _ => (None, None),
                };
                let kind = match status {
                    401 => DiscordErrorKind::Unauthorized,
                    403 => DiscordErrorKind::Forbidden,
                    404 => DiscordErrorKind::NotFound,
                    429 => DiscordErrorKind::RateLimited,
                    500..=599 => DiscordErrorKind::Server,
                    _ => DiscordErrorKind::Invalid,
                };
                (kind, code, retry_after, format!("HTTP {status}: {error}"))
            }
            ErrorType::Unauthorized => (DiscordErrorKind::Unauthorized, None, None, "the bot token was refused".into()),
            ErrorType::Validation => (DiscordErrorKind::Local, None, None, e.to_string()),
            _ => (DiscordErrorKind::Transport, None, None, e.to_string()),
        };
        Self { kind, what: what.into(), message, code, retry_after, source: Some(Box::new(e)) }
    }
}

pub(crate) fn local(what: &str, message: impl Into<String>) -> DiscordError {
    DiscordError::local(what, message)
}

pub(crate) fn from_twilight(what: &str, e: twilight_http::Error) -> DiscordError {
    DiscordError::from_twilight(what, e)
}

/// Result of an egress call.
pub type DiscordResult<T> = Result<T, DiscordError>;

fn id<T>(n: u64, what: &str) -> DiscordResult<Id<T>> {
    Id::new_checked(n).ok_or_else(|| DiscordError::local(what, "id 0 is not a Discord id"))
}

/// How a persona (or any identity) appears when posting through a webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Display name.
    pub name: String,
    /// Avatar image URL.
    pub avatar_url: Option<String>,
}

/// Makes a name Discord accepts for a webhook message: 1 to 80 characters,
/// without "clyde" or "discord" in any case (Discord refuses those; twilight
/// only checks the exact word "clyde").
#[must_use]
pub fn sanitize_webhook_name(name: &str) -> String {
    let mut out: String = name.chars().filter(|c| !c.is_control()).collect();
    for banned in ["clyde", "discord"] {
        loop {
            let lower = out.to_lowercase();
            let Some(at) = lower.find(banned) else { break };
            // Same byte length in lower case for these ASCII words; break the word with a zero-width joiner.
            let split = at + 1;
            if !out.is_char_boundary(split) {
                break;
            }
            out.insert(split, '\u{200d}');
            if out.to_lowercase().contains(banned) {
                // The lowercase mapping shifted bytes (non-ASCII before it): fall back to a plain name.
                return "den".into();
            }
        }
    }
    let trimmed: String = out.trim().chars().take(80).collect();
    if trimmed.is_empty() { "den".into() } else { trimmed }
}

/// A den-owned webhook of one channel.
#[derive(Clone, Debug, PartialEq, Eq)]
struct WebhookRef {
    id: u64,
    token: String,
}

/// How to reach Discord.
#[derive(Clone, Debug)]
pub struct EgressConfig {
    /// The bot token; without one only webhook and interaction-token routes work.
    pub token: Option<Secret>,
    /// `host:port` of a plain-HTTP stand-in for `discord.com` (tests and proxies).
    pub api_proxy: Option<String>,
    /// Timeout of one request.
    pub timeout: Duration,
}

/// The process's one way to Discord's REST API.
#[derive(Debug)]
pub struct Egress {
    http: Client,
    app_id: std::sync::atomic::AtomicU64,
    bot_user_id: std::sync::atomic::AtomicU64,
    no_pings: AllowedMentions,
    webhooks: Mutex<HashMap<u64, WebhookRef>>,
    /// Held while a webhook is looked up or created, so two replies racing
    /// into a fresh channel do not both create one (Discord allows 15).
    webhook_setup: tokio::sync::Mutex<()>,
    webhook_table: Option<Arc<dyn Table>>,
}

impl Egress {
    /// A client for the application `app_id`. `webhook_table`, when given,
    /// remembers webhooks across restarts.
    #[must_use]
    pub fn new(config: &EgressConfig, app_id: u64, webhook_table: Option<Arc<dyn Table>>) -> Self {
        crate::install_crypto_provider();
        let no_pings = AllowedMentions::default();
        let mut builder = Client::builder().timeout(config.timeout).default_allowed_mentions(no_pings.clone());
        if let Some(token) = &config.token {
            builder = builder.token(token.expose().to_owned());
        }
        if let Some(proxy) = &config.api_proxy {
            builder = builder.proxy(proxy.clone(), true);
        }
        Self {
            http: builder.build(),
            app_id: app_id.into(),
            bot_user_id: 0.into(),
            no_pings,
            webhooks: Mutex::default(),
            webhook_setup: tokio::sync::Mutex::new(()),
            webhook_table,
        }
    }

    /// The twilight client, for calls this type has no helper for.
    #[must_use]
    pub fn client(&self) -> &Client {
        &self.http
    }

    /// The application id (0 until known).
    #[must_use]
    pub fn app_id(&self) -> u64 {
        self.app_id.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets the application id once it is known.
    pub fn set_app_id(&self, app_id: u64) {
        self.app_id.store(app_id, std::sync::atomic::Ordering::Relaxed);
    }

    /// den's bot user id (0 until known). It differs from the application id
    /// for applications made before 2019: permission overwrites must name the user.
    #[must_use]
    pub fn bot_user_id(&self) -> u64 {
        self.bot_user_id.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets den's bot user id.
    pub fn set_bot_user_id(&self, id: u64) {
        self.bot_user_id.store(id, std::sync::atomic::Ordering::Relaxed);
    }

    /// Asks Discord who den's bot user is (`GET /users/@me`) and remembers it.
    pub async fn learn_bot_user(&self) -> DiscordResult<u64> {
        let v = self.raw("get current user", &twilight_http::routing::Route::GetCurrentUser, None).await?;
        let id = v["id"].as_str().and_then(|s| s.parse().ok()).ok_or_else(|| local("get current user", "no id"))?;
        self.set_bot_user_id(id);
        Ok(id)
    }

    /// Runs `call` until it succeeds, waiting out 429s and backing off on 5xx.
    async fn retrying<T, F, Fut>(&self, what: &str, mut call: F) -> DiscordResult<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, twilight_http::Error>>,
    {
        self.retry(
            what,
            None,
            || {
                let f = call();
                async move { f.await.map_err(|e| DiscordError::from_twilight(what, e)) }
            },
            || async { None },
        )
        .await
    }

    /// Runs `call` until it succeeds, Discord refuses it, `deadline` passes or
    /// the attempts run out. 429s are waited out (the request did not land);
    /// after a 5xx or a lost connection the request may have landed, so
    /// `landed` is asked before trying again, and what it finds is the answer.
    async fn retry<T, F, Fut, L, LFut>(
        &self,
        what: &str,
        deadline: Option<tokio::time::Instant>,
        mut call: F,
        mut landed: L,
    ) -> DiscordResult<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = DiscordResult<T>>,
        L: FnMut() -> LFut,
        LFut: Future<Output = Option<T>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let error = match call().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let wait = match error.kind {
                DiscordErrorKind::RateLimited => error.retry_after.unwrap_or(Duration::from_secs(1)),
                DiscordErrorKind::Server | DiscordErrorKind::Transport => {
                    Duration::from_millis(250u64.saturating_mul(1 << (attempt - 1).min(6)))
                }
                _ => return Err(error),
            };
            if attempt >= MAX_ATTEMPTS || deadline.is_some_and(|d| tokio::time::Instant::now() + wait >= d) {
                return Err(error);
            }
            tracing::warn!(%what, attempt, wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX), error = %error, "Discord call failed; retrying");
            tokio::time::sleep(wait).await;
            if error.kind != DiscordErrorKind::RateLimited
                && let Some(v) = landed().await
            {
                tracing::info!(%what, "the failed request had landed; not sending it again");
                return Ok(v);
            }
        }
    }

    /// Sends a request with a JSON body den built itself, through the same
    /// client and retries as everything else; answers the JSON (null for 204).
    pub(crate) async fn raw(
        &self,
        what: &str,
        route: &twilight_http::routing::Route<'_>,
        body: Option<&Value>,
    ) -> DiscordResult<Value> {
        let response = self
            .retrying(what, || {
                let mut request = twilight_http::request::Request::builder(route);
                if let Some(b) = body {
                    request = request.json(b);
                }
                let built = request.build();
                async move {
                    match built {
                        Ok(r) => self.http.request::<Value>(r).await,
                        Err(e) => Err(e),
                    }
                }
            })
            .await?;
        let bytes = response.bytes().await.map_err(|e| local(what, e.to_string()))?;
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| local(what, format!("unreadable answer: {e}")))
    }

    /// Posts `text` in `channel` as den, split into as many messages as it
    /// takes; the first replies to `reply_to` when given. Returns the message ids.
    /// Each piece carries a nonce Discord enforces, so a retry after a lost
    /// answer never posts it twice.
    pub async fn send_text(&self, channel: u64, text: &str, reply_to: Option<u64>) -> DiscordResult<Vec<u64>> {
        let key = format!("{:016x}", rand::random::<u64>());
        self.send_text_keyed(channel, text, reply_to, &key).await
    }

    /// Like [`Egress::send_text`], with nonces derived from `key`: the same key
    /// posts the same message once, also from a redelivered job (while
    /// Discord remembers nonces, a few minutes).
    pub async fn send_text_keyed(
        &self,
        channel: u64,
        text: &str,
        reply_to: Option<u64>,
        key: &str,
    ) -> DiscordResult<Vec<u64>> {
        id::<twilight_model::id::marker::ChannelMarker>(channel, "send message")?;
        let mut ids = Vec::new();
        for (i, piece) in split_message(text, MAX_MESSAGE_CHARS).iter().enumerate() {
            let mut body = serde_json::json!({
                "content": piece,
                "nonce": nonce(key, i),
                "enforce_nonce": true,
                "allowed_mentions": {"parse": []},
            });
            if let (0, Some(r)) = (i, reply_to) {
                body["message_reference"] =
                    serde_json::json!({"message_id": r.to_string(), "fail_if_not_exists": false});
            }
            let v = self
                .raw("send message", &twilight_http::routing::Route::CreateMessage { channel_id: channel }, Some(&body))
                .await?;
            ids.push(
                v["id"].as_str().and_then(|s| s.parse().ok()).ok_or_else(|| local("send message", "no message id"))?,
            );
        }
        Ok(ids)
    }

    /// Replaces the text of one of den's messages (at most 2,000 characters).
    pub async fn edit_text(&self, channel: u64, message: u64, text: &str) -> DiscordResult<()> {
        let (channel_id, message_id) = (id(channel, "edit message")?, id(message, "edit message")?);
        let text = clip(text);
        self.retrying("edit message", || {
            self.http
                .update_message(channel_id, message_id)
                .content(Some(&text))
                .allowed_mentions(Some(&self.no_pings))
                .into_future()
        })
        .await?;
        Ok(())
    }

    /// den's webhook in `channel`: cached, else found among the channel's
    /// webhooks, else created.
    async fn webhook(&self, channel: u64) -> DiscordResult<WebhookRef> {
        if let Some(w) = self.cached_webhook(channel) {
            return Ok(w);
        }
        let _setup = self.webhook_setup.lock().await;
        // Someone may have set it up while we waited.
        if let Some(w) = self.cached_webhook(channel) {
            return Ok(w);
        }
        let key = format!("channel:{channel}");
        if let Some(table) = &self.webhook_table
            && let Ok(Some(item)) = table.get(&key, "webhook").await
            && let (Some(wid), Some(token)) =
                (item.attrs.get("id").and_then(Value::as_u64), item.attrs.get("token").and_then(Value::as_str))
        {
            let w = WebhookRef { id: wid, token: token.to_owned() };
            self.remember_webhook(channel, &w);
            return Ok(w);
        }
        let channel_id = id(channel, "find webhook")?;
        let response = self.retrying("list webhooks", || self.http.channel_webhooks(channel_id).into_future()).await?;
        let list: Value = body_json(response).await?;
        let app = self.app_id().to_string();
        let existing = list.as_array().into_iter().flatten().find_map(|w| {
            let owned = w["application_id"].as_str() == Some(app.as_str());
            let token = w["token"].as_str()?;
            let wid = w["id"].as_str()?.parse().ok()?;
            owned.then(|| WebhookRef { id: wid, token: token.to_owned() })
        });
        let w = match existing {
            Some(w) => w,
            None => {
                let response = self
                    .retrying("create webhook", || self.http.create_webhook(channel_id, "den").into_future())
                    .await?;
                let v: Value = body_json(response).await?;
                WebhookRef {
                    id: v["id"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| DiscordError::local("create webhook", "no id in answer"))?,
                    token: v["token"]
                        .as_str()
                        .ok_or_else(|| DiscordError::local("create webhook", "no token in answer"))?
                        .to_owned(),
                }
            }
        };
        if let Some(table) = &self.webhook_table {
            let mut attrs = serde_json::Map::new();
            attrs.insert("id".into(), w.id.into());
            attrs.insert("token".into(), w.token.clone().into());
            if let Err(e) = table.put(Put::new(key, "webhook", attrs)).await {
                tracing::warn!(error = %e, "could not store the webhook; it will be looked up again");
            }
        }
        self.remember_webhook(channel, &w);
        Ok(w)
    }

    fn cached_webhook(&self, channel: u64) -> Option<WebhookRef> {
        self.webhooks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&channel).cloned()
    }

    fn remember_webhook(&self, channel: u64, w: &WebhookRef) {
        self.webhooks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(channel, w.clone());
    }

    async fn forget_webhook(&self, channel: u64) {
        self.webhooks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&channel);
        if let Some(table) = &self.webhook_table {
            let _ = table.delete(&format!("channel:{channel}"), "webhook", den_storage::Condition::None).await;
        }
    }

    /// Posts `text` in `channel` under `identity` through den's webhook,
    /// split as needed. A deleted webhook is recreated once. Returns the message ids.
    pub async fn send_as(&self, channel: u64, identity: &Identity, text: &str) -> DiscordResult<Vec<u64>> {
        let mut ids = Vec::new();
        for piece in split_message(text, MAX_MESSAGE_CHARS) {
            ids.push(self.webhook_call(channel, |w| self.execute(channel, w, identity, &piece)).await?);
        }
        Ok(ids)
    }

    /// Who a post by `identity` through den's webhook in `channel` appears as,
    /// to find it again ([`Egress::find_posted`]).
    pub async fn webhook_poster(&self, channel: u64, identity: &Identity) -> DiscordResult<Poster> {
        let w = self.webhook(channel).await?;
        Ok(Poster::Webhook { id: w.id, name: sanitize_webhook_name(&identity.name) })
    }

    /// Replaces the text of a message den posted through its webhook in `channel`.
    pub async fn edit_as(&self, channel: u64, message: u64, text: &str) -> DiscordResult<()> {
        let text = clip(text);
        let text = text.as_str();
        let message_id = id(message, "edit webhook message")?;
        self.webhook_call(channel, |w| async move {
            let wid = id(w.id, "edit webhook message")?;
            self.retrying("edit webhook message", || {
                self.http
                    .update_webhook_message(wid, &w.token, message_id)
                    .content(Some(text))
                    .allowed_mentions(Some(&self.no_pings))
                    .into_future()
            })
            .await?;
            Ok(0)
        })
        .await?;
        Ok(())
    }

    /// Runs `call` with the channel's webhook; on 404 (deleted) recreates it and tries once more.
    async fn webhook_call<'a, F, Fut>(&'a self, channel: u64, call: F) -> DiscordResult<u64>
    where
        F: Fn(WebhookRef) -> Fut,
        Fut: Future<Output = DiscordResult<u64>> + 'a,
    {
        let w = self.webhook(channel).await?;
        match call(w).await {
            Err(e) if e.kind == DiscordErrorKind::NotFound && e.code == Some(10015) => {
                tracing::info!(channel, "den's webhook was deleted; creating a new one");
                self.forget_webhook(channel).await;
                let w = self.webhook(channel).await?;
                call(w).await
            }
            other => other,
        }
    }

    async fn execute(&self, channel: u64, w: WebhookRef, identity: &Identity, text: &str) -> DiscordResult<u64> {
        let wid = id(w.id, "execute webhook")?;
        let name = sanitize_webhook_name(&identity.name);
        let since = den_core::Clock::now(&den_core::SystemClock);
        let poster = Poster::Webhook { id: w.id, name: name.clone() };
        self.retry(
            "execute webhook",
            None,
            || {
                let mut req = self
                    .http
                    .execute_webhook(wid, &w.token)
                    .content(text)
                    .username(&name)
                    .allowed_mentions(Some(&self.no_pings));
                if let Some(avatar) = &identity.avatar_url {
                    req = req.avatar_url(avatar);
                }
                async move {
                    let response = req
                        .wait()
                        .into_future()
                        .await
                        .map_err(|e| DiscordError::from_twilight("execute webhook", e))?;
                    // An answer cut off mid-body counts as lost: the post may have landed.
                    message_id(response).await.map_err(|mut e| {
                        e.kind = DiscordErrorKind::Transport;
                        e
                    })
                }
            },
            // Webhooks take no nonce: a lost answer is checked against the channel instead.
            || async { self.find_posted(channel, &poster, Some(text), since).await.ok().flatten() },
        )
        .await
    }

    /// A message `poster` posted in `channel` at or after `since` (less two
    /// seconds for clocks that disagree), with `content` when given: how den
    /// learns whether a post whose answer was lost did land.
    pub async fn find_posted(
        &self,
        channel: u64,
        poster: &Poster,
        content: Option<&str>,
        since: den_core::Timestamp,
    ) -> DiscordResult<Option<u64>> {
        let route = twilight_http::routing::Route::GetMessages {
            channel_id: channel,
            after: None,
            around: None,
            before: None,
            limit: Some(50),
        };
        let list = self.raw("look for a posted message", &route, None).await?;
        let earliest = since.as_millis().saturating_sub(2_000);
        Ok(list.as_array().into_iter().flatten().find_map(|m| {
            let mid: u64 = m["id"].as_str()?.parse().ok()?;
            let created = crate::snowflake_time(mid).as_millis();
            let by = match poster {
                Poster::Webhook { id, name } => {
                    m["webhook_id"].as_str() == Some(id.to_string().as_str()) && m["author"]["username"] == *name
                }
                Poster::Bot(bot) => {
                    m["webhook_id"].is_null() && m["author"]["id"].as_str() == Some(bot.to_string().as_str())
                }
            };
            let same = content.is_none_or(|c| m["content"].as_str() == Some(c));
            (created >= earliest && by && same).then_some(mid)
        }))
    }

    /// Sends the first response to an interaction.
    pub async fn respond(&self, interaction_id: u64, token: &str, ack: &Ack) -> DiscordResult<()> {
        let deadline = tokio::time::Instant::now() + crate::router::ACK_WINDOW;
        self.respond_by(interaction_id, token, ack, deadline).await
    }

    /// Sends the first response to an interaction, retrying 5xx and lost
    /// answers only while a retry can land before `deadline` (Discord takes
    /// the first response within 3 s of the interaction, never later).
    pub async fn respond_by(
        &self,
        interaction_id: u64,
        token: &str,
        ack: &Ack,
        deadline: tokio::time::Instant,
    ) -> DiscordResult<()> {
        let iid = id(interaction_id, "interaction response")?;
        let app = id(self.app_id(), "interaction response")?;
        let response = ack.to_twilight(&self.no_pings);
        let result = self
            .retry(
                "interaction response",
                Some(deadline),
                || {
                    let f = self.http.interaction(app).create_response(iid, token, &response).into_future();
                    async move { f.await.map(|_| ()).map_err(|e| DiscordError::from_twilight("interaction response", e)) }
                },
                || async { None },
            )
            .await;
        match result {
            Ok(_) => Ok(()),
            // A retry after a lost answer finds the interaction already acknowledged: it landed.
            Err(e) if e.code == Some(40060) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Replaces the text of an interaction's original response.
    pub async fn edit_original(&self, token: &str, text: &str) -> DiscordResult<()> {
        let app = id(self.app_id(), "edit original response")?;
        let text = clip(text);
        self.retrying("edit original response", || {
            self.http
                .interaction(app)
                .update_response(token)
                .content(Some(&text))
                .allowed_mentions(Some(&self.no_pings))
                .into_future()
        })
        .await?;
        Ok(())
    }

    /// Sends a follow-up message to an interaction.
    pub async fn followup(&self, token: &str, text: &str, ephemeral: bool) -> DiscordResult<u64> {
        let app = id(self.app_id(), "follow-up")?;
        let text = clip(text);
        let interactions = self.http.interaction(app);
        let response = self
            .retrying("follow-up", || {
                let mut req = interactions.create_followup(token).content(&text).allowed_mentions(Some(&self.no_pings));
                if ephemeral {
                    req = req.flags(MessageFlags::EPHEMERAL);
                }
                req.into_future()
            })
            .await?;
        message_id(response).await
    }
}

/// Cuts text to Discord's limit (for edits, which cannot be split).
fn clip(text: &str) -> String {
    if text.chars().count() <= MAX_MESSAGE_CHARS {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(MAX_MESSAGE_CHARS - 1).collect();
    out.push('…');
    out
}

async fn body_json<T>(response: twilight_http::Response<T>) -> DiscordResult<Value> {
    let bytes = response.bytes().await.map_err(|e| DiscordError::local("read answer", e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| DiscordError::local("read answer", e.to_string()))
}

async fn message_id<T>(response: twilight_http::Response<T>) -> DiscordResult<u64> {
    let v = body_json(response).await?;
    v["id"].as_str().and_then(|s| s.parse().ok()).ok_or_else(|| DiscordError::local("read answer", "no message id"))
}

/// Who posted a message, to find it again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Poster {
    /// den's webhook `id`, under the display name `name`.
    Webhook {
        /// Webhook id.
        id: u64,
        /// The name it posted under.
        name: String,
    },
    /// A bot account (den's own, or a persona's).
    Bot(u64),
}

/// A Discord nonce (at most 25 characters) for piece `i` of the post `key`.
fn nonce(key: &str, i: usize) -> String {
    // FNV-1a: stable across processes and versions, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes().chain(i.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("den{h:016x}")
}

/// The first response to an interaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ack {
    /// Answer a PING.
    Pong,
    /// Answer with a message now.
    Message {
        /// Text (at most 2,000 characters).
        content: String,
        /// Only the invoker sees it.
        ephemeral: bool,
    },
    /// "den is thinking…": the real answer edits the original response later.
    Defer {
        /// Only the invoker sees the answer.
        ephemeral: bool,
    },
    /// For components: acknowledge without changing the message yet.
    DeferUpdate,
    /// For components: replace the message's text.
    UpdateMessage {
        /// New text.
        content: String,
    },
    /// Answer with a question and buttons (a confirmation).
    Ask {
        /// Text.
        content: String,
        /// Only the invoker sees it.
        ephemeral: bool,
        /// Buttons: custom id, label, whether it is the dangerous choice.
        buttons: Vec<(String, String, bool)>,
    },
}

impl Ack {
    fn kind_and_data(&self, no_pings: &AllowedMentions) -> (InteractionResponseType, Option<InteractionResponseData>) {
        let flags = |ephemeral: bool| ephemeral.then_some(MessageFlags::EPHEMERAL);
        match self {
            Ack::Pong => (InteractionResponseType::Pong, None),
            Ack::Message { content, ephemeral } => (
                InteractionResponseType::ChannelMessageWithSource,
                Some(InteractionResponseData {
                    content: Some(clip(content)),
                    flags: flags(*ephemeral),
                    allowed_mentions: Some(no_pings.clone()),
                    ..InteractionResponseData::default()
                }),
            ),
            Ack::Defer { ephemeral } => (
                InteractionResponseType::DeferredChannelMessageWithSource,
                Some(InteractionResponseData { flags: flags(*ephemeral), ..InteractionResponseData::default() }),
            ),
            Ack::DeferUpdate => (InteractionResponseType::DeferredUpdateMessage, None),
            Ack::Ask { content, ephemeral, buttons } => {
                use twilight_model::channel::message::Component;
                use twilight_model::channel::message::component::{ActionRow, Button, ButtonStyle};
                let row = ActionRow {
                    id: None,
                    components: buttons
                        .iter()
                        .take(5)
                        .map(|(custom_id, label, danger)| {
                            Component::Button(Button {
                                custom_id: Some(custom_id.clone()),
                                disabled: false,
                                emoji: None,
                                id: None,
                                label: Some(label.clone()),
                                sku_id: None,
                                style: if *danger { ButtonStyle::Danger } else { ButtonStyle::Secondary },
                                url: None,
                            })
                        })
                        .collect(),
                };
                (
                    InteractionResponseType::ChannelMessageWithSource,
                    Some(InteractionResponseData {
                        content: Some(clip(content)),
                        flags: flags(*ephemeral),
                        allowed_mentions: Some(no_pings.clone()),
                        components: Some(vec![Component::ActionRow(row)]),
                        ..InteractionResponseData::default()
                    }),
                )
            }
            Ack::UpdateMessage { content } => (
                InteractionResponseType::UpdateMessage,
                Some(InteractionResponseData {
                    content: Some(clip(content)),
                    allowed_mentions: Some(no_pings.clone()),
                    ..InteractionResponseData::default()
                }),
            ),
        }
    }

    fn to_twilight(&self, no_pings: &AllowedMentions) -> InteractionResponse {
        let (kind, data) = self.kind_and_data(no_pings);
        InteractionResponse { kind, data }
    }

    /// The response as the JSON body of an HTTP interactions answer.
    #[must_use]
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self.to_twilight(&AllowedMentions::default())).unwrap_or(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_names_never_contain_clyde_or_discord_and_fit_80_chars() {
        for name in ["Clyde", "my DISCORD pal", "discordclyde", "  ", "\u{7}x", &"n".repeat(100)] {
            let s = sanitize_webhook_name(name);
            let lower = s.to_lowercase();
            assert!(!lower.contains("clyde") && !lower.contains("discord"), "{name:?} -> {s:?}");
            assert!((1..=80).contains(&s.chars().count()), "{name:?} -> {s:?}");
        }
        assert_eq!(sanitize_webhook_name("Grumpy Gran"), "Grumpy Gran");
    }

    #[test]
    fn acks_serialise_as_discord_expects() {
        assert_eq!(Ack::Pong.to_json(), serde_json::json!({"type": 1}));
        assert_eq!(Ack::Defer { ephemeral: true }.to_json(), serde_json::json!({"type": 5, "data": {"flags": 64}}));
        let m = Ack::Message { content: "hi".into(), ephemeral: false }.to_json();
        assert_eq!(m["type"], 4);
        assert_eq!(m["data"]["content"], "hi");
        assert_eq!(m["data"]["allowed_mentions"]["parse"], serde_json::json!([]));
    }
}
