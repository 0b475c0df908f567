//! Egress: every Discord REST call of a process (of each bot account) goes
//! through one [`Egress`] and its [`RestClient`], which paces requests by the
//! `X-RateLimit-*` headers Discord sends and obeys 429s.
//!
//! On top of the transport: retries that wait out 429s and back off on 5xx
//! and lost answers (looking first, for posts that may have landed),
//! `allowed_mentions` empty on everything den posts, nonces on channel
//! messages, splitting of long text, den-owned webhooks per channel, and
//! interaction responses within Discord's 3 s.
//!
//! - `error`: [`DiscordError`] and its kinds.
//! - `ack`: [`Ack`], the first response to an interaction.
//! - `webhooks`: den's webhook of each channel, and posting as a persona.
//! - `rich`: messages with buttons and a file, threads, den's reactions.

mod ack;
mod error;
mod rich;
mod webhooks;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use den_core::Secret;
use den_storage::Table;
use reqwest::Method;
use serde_json::{Value, json};

pub use ack::Ack;
pub(crate) use error::local;
pub use error::{DiscordError, DiscordErrorKind};
pub use rich::{Button, ButtonStyle, Outgoing, SelectMenu, button_rows};
pub use webhooks::sanitize_webhook_name;

use crate::rest::{Call, RestClient};
use crate::split::{MAX_MESSAGE_CHARS, split_message};

/// Attempts per call before giving up on 429s and 5xx.
const MAX_ATTEMPTS: u32 = 5;

/// Requests per second one process sends under Discord's global limit (50 per bot).
const GLOBAL_PER_SECOND: u32 = 50;

/// Result of an egress call.
pub type DiscordResult<T> = Result<T, DiscordError>;

/// How a persona (or any identity) appears when posting through a webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Display name.
    pub name: String,
    /// Avatar image URL.
    pub avatar_url: Option<String>,
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

/// The process's one way to Discord's REST API (per bot account).
#[derive(Debug)]
pub struct Egress {
    rest: RestClient,
    app_id: AtomicU64,
    bot_user_id: AtomicU64,
    webhooks: Mutex<HashMap<u64, webhooks::WebhookRef>>,
    /// Held while a webhook is looked up or created, so two replies racing
    /// into a fresh channel do not both create one (Discord allows 15).
    webhook_setup: tokio::sync::Mutex<()>,
    webhook_table: Option<Arc<dyn Table>>,
}

fn no_zero(n: u64, what: &str) -> DiscordResult<u64> {
    if n == 0 { Err(local(what, "id 0 is not a Discord id")) } else { Ok(n) }
}

/// Mentions den allows in what it posts: none.
fn no_pings() -> Value {
    json!({"parse": []})
}

impl Egress {
    /// A client for the application `app_id`. `webhook_table`, when given,
    /// remembers webhooks across restarts.
    #[must_use]
    pub fn new(config: &EgressConfig, app_id: u64, webhook_table: Option<Arc<dyn Table>>) -> Self {
        Self {
            rest: RestClient::new(config.token.clone(), config.api_proxy.as_deref(), config.timeout, GLOBAL_PER_SECOND),
            app_id: app_id.into(),
            bot_user_id: 0.into(),
            webhooks: Mutex::default(),
            webhook_setup: tokio::sync::Mutex::new(()),
            webhook_table,
        }
    }

    /// The application id (0 until known).
    #[must_use]
    pub fn app_id(&self) -> u64 {
        self.app_id.load(Ordering::Relaxed)
    }

    /// Sets the application id once it is known.
    pub fn set_app_id(&self, app_id: u64) {
        self.app_id.store(app_id, Ordering::Relaxed);
    }

    /// den's bot user id (0 until known). It differs from the application id
    /// for applications made before 2019: permission overwrites must name the user.
    #[must_use]
    pub fn bot_user_id(&self) -> u64 {
        self.bot_user_id.load(Ordering::Relaxed)
    }

    /// Sets den's bot user id.
    pub fn set_bot_user_id(&self, id: u64) {
        self.bot_user_id.store(id, Ordering::Relaxed);
    }

    /// Asks Discord who den's bot user is (`GET /users/@me`) and remembers it.
    pub async fn learn_bot_user(&self) -> DiscordResult<u64> {
        let v = self.call("get current user", Call::new(Method::GET, "/users/@me")).await?;
        let id = snowflake(&v["id"]).ok_or_else(|| local("get current user", "no id"))?;
        self.set_bot_user_id(id);
        Ok(id)
    }

    /// The application's id and public key (`GET /applications/@me`).
    pub async fn application(&self) -> DiscordResult<(u64, String)> {
        let v = self.call("get application", Call::new(Method::GET, "/applications/@me")).await?;
        let id = snowflake(&v["id"]).ok_or_else(|| local("get application", "no id"))?;
        Ok((id, v["verify_key"].as_str().unwrap_or_default().to_owned()))
    }

    /// `GET /gateway/bot`: the gateway URL, shard count and identify limits.
    pub async fn gateway_bot(&self) -> DiscordResult<Value> {
        self.call("get gateway", Call::new(Method::GET, "/gateway/bot")).await
    }

    /// Runs `attempt` until it succeeds, Discord refuses it, `deadline` passes or
    /// the attempts run out. 429s are waited out (the request did not land);
    /// after a 5xx or a lost answer the request may have landed, so `landed`
    /// is asked before trying again: what it finds is the answer, and when it
    /// cannot tell, the error is.
    async fn retry<T, F, Fut, L, LFut>(
        &self,
        what: &str,
        deadline: Option<tokio::time::Instant>,
        mut attempt: F,
        mut landed: L,
    ) -> DiscordResult<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = DiscordResult<T>>,
        L: FnMut() -> LFut,
        LFut: Future<Output = Landed<T>>,
    {
        let mut tries = 0;
        loop {
            tries += 1;
            let error = match attempt().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let wait = match error.kind {
                DiscordErrorKind::RateLimited => error.retry_after.unwrap_or(Duration::from_secs(1)),
                DiscordErrorKind::Server | DiscordErrorKind::Transport => {
                    Duration::from_millis(250u64.saturating_mul(1 << (tries - 1).min(6)))
                }
                _ => return Err(error),
            };
            if tries >= MAX_ATTEMPTS || deadline.is_some_and(|d| tokio::time::Instant::now() + wait >= d) {
                return Err(error);
            }
            tokio::time::sleep(wait).await;
            if error.kind != DiscordErrorKind::RateLimited {
                match landed().await {
                    Landed::Yes(v) => {
                        tracing::info!(%what, "the failed request had landed; not sending it again");
                        return Ok(v);
                    }
                    Landed::No => {}
                    Landed::Unknown => return Err(error),
                }
            }
            let waited_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
            tracing::warn!(%what, attempt = tries, waited_ms, error = %error, "Discord call failed; retrying");
        }
    }

    /// Sends `call` once: its JSON answer (null for 204), or the error.
    async fn once(&self, what: &str, call: &Call<'_>) -> DiscordResult<Value> {
        let reply = self.rest.send(call).await.map_err(|e| DiscordError::transport(what, e))?;
        if !(200..300).contains(&reply.status) {
            return Err(DiscordError::answer(what, &reply));
        }
        if reply.body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&reply.body).map_err(|e| {
            // An answer cut off mid-body counts as lost: the request may have landed.
            let mut lost = local(what, format!("unreadable answer: {e}"));
            lost.kind = DiscordErrorKind::Transport;
            lost
        })
    }

    /// Sends `call`, retrying 429s, 5xx and lost answers: for requests that
    /// do the same thing however often they land (reads, edits, deletes, PUTs).
    pub(crate) async fn call(&self, what: &str, call: Call<'_>) -> DiscordResult<Value> {
        self.retry(what, None, || self.once(what, &call), || async { Landed::No }).await
    }

    /// Sends a POST that makes something (a role, a channel, a webhook),
    /// retried after a 429, which made nothing. After a 5xx or a lost answer
    /// the thing may exist: `landed` looks for it, and the POST is sent again
    /// only when it finds nothing. A caller that cannot look (roles and
    /// channels, whose names are not unique) gets the error and decides.
    pub(crate) async fn create<L, LFut>(&self, what: &str, call: Call<'_>, mut landed: L) -> DiscordResult<Value>
    where
        L: FnMut() -> LFut,
        LFut: Future<Output = Landed<Value>>,
    {
        self.retry(what, None, || self.once(what, &call), &mut landed).await
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
        no_zero(channel, "send message")?;
        let mut ids = Vec::new();
        for (i, piece) in split_message(text, MAX_MESSAGE_CHARS).iter().enumerate() {
            let mut body = json!({
                "content": piece,
                "nonce": nonce(key, i),
                "enforce_nonce": true,
                "allowed_mentions": no_pings(),
            });
            if let (0, Some(r)) = (i, reply_to) {
                body["message_reference"] = json!({"message_id": r.to_string(), "fail_if_not_exists": false});
            }
            let v = self
                .call("send message", Call::new(Method::POST, format!("/channels/{channel}/messages")).json(&body))
                .await?;
            ids.push(snowflake(&v["id"]).ok_or_else(|| local("send message", "no message id"))?);
        }
        Ok(ids)
    }

    /// Replaces the text of one of den's messages (at most 2,000 characters).
    pub async fn edit_text(&self, channel: u64, message: u64, text: &str) -> DiscordResult<()> {
        no_zero(channel, "edit message")?;
        no_zero(message, "edit message")?;
        let body = json!({"content": clip(text), "allowed_mentions": no_pings()});
        let call = Call::new(Method::PATCH, format!("/channels/{channel}/messages/{message}"))
            .bucket(format!("PATCH /channels/{channel}/messages"))
            .json(&body);
        self.call("edit message", call).await.map(|_| ())
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
        let call = Call::new(Method::GET, format!("/channels/{channel}/messages?limit=50"));
        let list = self.call("look for a posted message", call).await?;
        let earliest = since.as_millis().saturating_sub(2_000);
        Ok(list.as_array().into_iter().flatten().find_map(|m| {
            let mid = snowflake(&m["id"])?;
            let by = match poster {
                Poster::Webhook { id, name } => {
                    snowflake(&m["webhook_id"]) == Some(*id) && m["author"]["username"] == *name
                }
                Poster::Bot(bot) => m["webhook_id"].is_null() && snowflake(&m["author"]["id"]) == Some(*bot),
            };
            let same = content.is_none_or(|c| m["content"].as_str() == Some(c));
            (crate::snowflake_time(mid).as_millis() >= earliest && by && same).then_some(mid)
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
        no_zero(interaction_id, "interaction response")?;
        let body = ack.to_json();
        let call = Call::new(Method::POST, format!("/interactions/{interaction_id}/{token}/callback"))
            .unauthenticated()
            .json(&body);
        let what = "interaction response";
        match self.retry(what, Some(deadline), || self.once(what, &call), || async { Landed::No }).await {
            Ok(_) => Ok(()),
            // A retry after a lost answer finds the interaction already acknowledged: it landed.
            Err(e) if e.code == Some(40060) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Replaces the text of an interaction's original response.
    pub async fn edit_original(&self, token: &str, text: &str) -> DiscordResult<()> {
        let app = no_zero(self.app_id(), "edit original response")?;
        let body = json!({"content": clip(text), "allowed_mentions": no_pings()});
        let call = Call::new(Method::PATCH, format!("/webhooks/{app}/{token}/messages/@original"))
            .unauthenticated()
            .json(&body);
        self.call("edit original response", call).await.map(|_| ())
    }

    /// Sends a follow-up message to an interaction.
    pub async fn followup(&self, token: &str, text: &str, ephemeral: bool) -> DiscordResult<u64> {
        let app = no_zero(self.app_id(), "follow-up")?;
        let mut body = json!({"content": clip(text), "allowed_mentions": no_pings()});
        if ephemeral {
            body["flags"] = 64.into();
        }
        let call = Call::new(Method::POST, format!("/webhooks/{app}/{token}?wait=true")).unauthenticated().json(&body);
        // A follow-up takes no nonce and den cannot look for it: sent again only after a 429.
        let v = self.create("follow-up", call, || async { Landed::Unknown }).await?;
        snowflake(&v["id"]).ok_or_else(|| local("follow-up", "no message id"))
    }
}

/// Whether a request whose answer was lost (or was a 5xx) did its work.
pub(crate) enum Landed<T> {
    /// It did: here is what it made.
    Yes(T),
    /// It did not: sending it again is safe.
    No,
    /// There is no telling: do not send it again.
    Unknown,
}

/// A snowflake, as Discord writes it (a string) or as a number.
pub(crate) fn snowflake(v: &Value) -> Option<u64> {
    v.as_str().and_then(|s| s.parse().ok()).or_else(|| v.as_u64())
}

/// Cuts text to Discord's limit (for edits, which cannot be split).
pub(crate) fn clip(text: &str) -> String {
    if text.chars().count() <= MAX_MESSAGE_CHARS {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(MAX_MESSAGE_CHARS - 1).collect();
    out.push('…');
    out
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
