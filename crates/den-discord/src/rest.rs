//! den's REST transport to Discord: one HTTP client, per-route buckets
//! learned from `X-RateLimit-*` headers, the global limit, and 429s obeyed.
//!
//! Why not twilight-http: on a 429 it retries at once, in a loop, and a
//! 429 with global scope teaches its limiter nothing, so several processes
//! sharing a bot token (split roles) hammered Discord with dozens of
//! requests a millisecond, each an invalid request counting toward
//! Cloudflare's ban. Here a 429 pauses its bucket (or, global, every request
//! of the process) for `retry_after`, and the caller decides whether to try again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use den_core::Secret;
use reqwest::Method;
use serde_json::Value;
use tokio::time::Instant;

/// The User-Agent of den's REST calls, in the form Discord asks bots to use.
pub const USER_AGENT: &str = concat!("DiscordBot (https://example.invalid/den, ", env!("CARGO_PKG_VERSION"), ") den");

/// Discord's REST API.
const DISCORD_API: &str = "https://discord.com/api/v10";

/// One request to Discord.
#[derive(Clone, Debug)]
pub struct Call<'a> {
    /// HTTP method.
    pub method: Method,
    /// Path after `/api/v10`, with query (`/channels/1/messages?limit=50`).
    pub path: String,
    /// The rate-limit bucket it falls in: method, route and major parameter
    /// (`POST /channels/1/messages`). Requests of one bucket go one at a time.
    pub bucket: String,
    /// JSON body.
    pub body: Option<&'a Value>,
    /// A file sent with the JSON body (multipart: `payload_json` and `files[0]`).
    pub file: Option<(&'a str, &'a [u8])>,
    /// Whether it carries the bot token (webhook and interaction-token routes do not).
    pub auth: bool,
}

impl<'a> Call<'a> {
    /// A request on `path`, bucketed by the path itself (every id in it a major parameter).
    #[must_use]
    pub fn new(method: Method, path: impl Into<String>) -> Self {
        let path = path.into();
        let route = path.split('?').next().unwrap_or_default().to_owned();
        Self { bucket: format!("{method} {route}"), method, path, body: None, file: None, auth: true }
    }

    /// With a JSON body.
    #[must_use]
    pub fn json(mut self, body: &'a Value) -> Self {
        self.body = Some(body);
        self
    }

    /// With a file named `name` (the JSON body then travels as `payload_json`).
    #[must_use]
    pub fn file(mut self, name: &'a str, bytes: &'a [u8]) -> Self {
        self.file = Some((name, bytes));
        self
    }

    /// In the bucket `bucket` instead of one of its own.
    #[must_use]
    pub fn bucket(mut self, bucket: impl Into<String>) -> Self {
        self.bucket = bucket.into();
        self
    }

    /// Without the bot token (the route's own token authorises it).
    #[must_use]
    pub fn unauthenticated(mut self) -> Self {
        self.auth = false;
        self
    }

    /// Interaction callbacks and interaction webhooks are outside the global limit.
    fn global(&self) -> bool {
        self.auth && !self.path.starts_with("/interactions/")
    }
}

/// Discord's answer.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The body (empty for 204).
    pub body: Vec<u8>,
    /// For 429s: how long to wait.
    pub retry_after: Option<Duration>,
}

/// Why no answer came.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Connecting, sending or reading failed, or the request timed out.
    #[error("no answer from Discord: {0}")]
    Network(#[source] reqwest::Error),
    /// A 401 taught den that the token is wrong: no more authenticated calls.
    #[error("the bot token was refused earlier; den sends no more authenticated requests")]
    TokenRefused,
    /// The call needs a token and den has none.
    #[error("no bot token")]
    NoToken,
}

/// What den knows of one bucket.
#[derive(Debug)]
struct Bucket {
    /// Held while a request of the bucket is on its way, so the headers of
    /// one answer are known before the next request goes.
    turn: tokio::sync::Mutex<()>,
    state: Mutex<BucketState>,
}

#[derive(Clone, Copy, Debug, Default)]
struct BucketState {
    remaining: Option<u64>,
    reset_at: Option<Instant>,
}

/// The process's global limit: `per_second` requests a second, and a pause
/// after a global 429.
#[derive(Debug)]
struct Global {
    per_second: u32,
    window: Mutex<(Instant, u32)>,
    paused_until: Mutex<Option<Instant>>,
}

impl Global {
    /// Waits until a request may go.
    async fn take(&self) {
        loop {
            let wait = {
                let now = Instant::now();
                let paused = *self.paused_until.lock().unwrap_or_else(PoisonError::into_inner);
                match paused.filter(|t| *t > now) {
                    Some(t) => Some(t - now),
                    None => {
                        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
                        if now.duration_since(w.0) >= Duration::from_secs(1) {
                            *w = (now, 0);
                        }
                        if w.1 < self.per_second {
                            w.1 += 1;
                            None
                        } else {
                            Some(Duration::from_secs(1).saturating_sub(now.duration_since(w.0)))
                        }
                    }
                }
            };
            match wait {
                None => return,
                Some(d) => tokio::time::sleep(d.max(Duration::from_millis(1))).await,
            }
        }
    }

    fn pause(&self, d: Duration) {
        let until = Instant::now() + d;
        let mut p = self.paused_until.lock().unwrap_or_else(PoisonError::into_inner);
        if p.is_none_or(|t| t < until) {
            *p = Some(until);
        }
    }
}

/// The REST client.
#[derive(Debug)]
pub struct RestClient {
    http: reqwest::Client,
    base: String,
    token: Option<Secret>,
    token_refused: AtomicBool,
    buckets: Mutex<HashMap<String, Arc<Bucket>>>,
    global: Global,
}

impl RestClient {
    /// A client with `token`, talking to Discord or to `proxy` (`host:port`
    /// of a plain-HTTP stand-in), each request given `timeout`, at most
    /// `per_second` requests a second under the global limit.
    #[must_use]
    pub fn new(token: Option<Secret>, proxy: Option<&str>, timeout: Duration, per_second: u32) -> Self {
        crate::install_crypto_provider();
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .tcp_nodelay(true)
            .build()
            .unwrap_or_default();
        let base = proxy.map_or_else(|| DISCORD_API.to_owned(), |p| format!("http://{p}/api/v10"));
        Self {
            http,
            base,
            token,
            token_refused: AtomicBool::new(false),
            buckets: Mutex::default(),
            global: Global {
                per_second: per_second.max(1),
                window: Mutex::new((Instant::now(), 0)),
                paused_until: Mutex::new(None),
            },
        }
    }

    /// Whether it has a bot token.
    #[must_use]
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    fn bucket(&self, key: &str) -> Arc<Bucket> {
        let mut map = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(key.to_owned())
            .or_insert_with(|| Arc::new(Bucket { turn: tokio::sync::Mutex::new(()), state: Mutex::default() }))
            .clone()
    }

    /// Sends `call` once, after its bucket and the global limit allow it.
    /// A 429 comes back as a [`Reply`] with `retry_after`; the bucket (or,
    /// global, the process) waits that long before its next request.
    pub async fn send(&self, call: &Call<'_>) -> Result<Reply, TransportError> {
        if call.auth {
            if self.token.is_none() {
                return Err(TransportError::NoToken);
            }
            if self.token_refused.load(Ordering::Relaxed) {
                return Err(TransportError::TokenRefused);
            }
        }
        let bucket = self.bucket(&call.bucket);
        let _turn = bucket.turn.lock().await;
        let wait = {
            let s = *bucket.state.lock().unwrap_or_else(PoisonError::into_inner);
            match (s.remaining, s.reset_at) {
                (Some(0), Some(reset)) => Some(reset.saturating_duration_since(Instant::now())),
                _ => None,
            }
        };
        if let Some(d) = wait.filter(|d| !d.is_zero()) {
            tokio::time::sleep(d).await;
        }
        if call.global() {
            self.global.take().await;
        }
        let mut request = self.http.request(call.method.clone(), format!("{}{}", self.base, call.path));
        if call.auth
            && let Some(token) = &self.token
        {
            request = request.header("authorization", format!("Bot {}", token.expose()));
        }
        request = match (call.body, call.file) {
            (body, Some((name, bytes))) => {
                let payload = body.map_or_else(|| "{}".to_owned(), Value::to_string);
                let file = reqwest::multipart::Part::bytes(bytes.to_vec()).file_name(name.to_owned());
                let form = reqwest::multipart::Form::new().text("payload_json", payload).part("files[0]", file);
                request.multipart(form)
            }
            (Some(body), None) => request.json(body),
            (None, None) => request,
        };
        let response = request.send().await.map_err(TransportError::Network)?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(TransportError::Network)?;
        if status == 401 && call.auth {
            self.token_refused.store(true, Ordering::Relaxed);
        }
        let header = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
        let number = |k: &str| header(k).and_then(|v| v.parse::<f64>().ok()).filter(|n| n.is_finite() && *n >= 0.0);
        let mut state = bucket.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(remaining) = number("x-ratelimit-remaining") {
            state.remaining = Some(remaining as u64);
            state.reset_at = number("x-ratelimit-reset-after").map(|s| Instant::now() + seconds(s));
        }
        let mut retry_after = None;
        if status == 429 {
            let from_body = serde_json::from_slice::<Value>(&body).ok().and_then(|v| v["retry_after"].as_f64());
            let wait = seconds(from_body.or_else(|| number("retry-after")).unwrap_or(1.0));
            retry_after = Some(wait);
            if header("x-ratelimit-scope") == Some("global") || header("x-ratelimit-global") == Some("true") {
                tracing::warn!(wait_ms = millis(wait), "Discord's global rate limit reached; every request waits");
                self.global.pause(wait);
            } else {
                state.remaining = Some(0);
                state.reset_at = Some(Instant::now() + wait);
            }
        }
        Ok(Reply { status, body: body.to_vec(), retry_after })
    }
}

/// Seconds as a duration, kept within an hour (a header could say anything).
fn seconds(s: f64) -> Duration {
    Duration::from_secs_f64(s.clamp(0.0, 3600.0))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
