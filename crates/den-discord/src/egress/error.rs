//! What went wrong talking to Discord.

use std::time::Duration;

use serde_json::Value;

use crate::rest::{Reply, TransportError};

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
    pub(crate) kind: DiscordErrorKind,
    what: String,
    message: String,
    /// Discord's JSON error code, when it sent one.
    pub code: Option<u64>,
    pub(crate) retry_after: Option<Duration>,
    #[source]
    source: Option<TransportError>,
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

    /// An answer that did not come.
    pub(crate) fn transport(what: &str, e: TransportError) -> Self {
        let kind = match e {
            TransportError::Network(_) => DiscordErrorKind::Transport,
            TransportError::TokenRefused | TransportError::NoToken => DiscordErrorKind::Unauthorized,
        };
        Self { kind, what: what.into(), message: e.to_string(), code: None, retry_after: None, source: Some(e) }
    }

    /// A non-2xx answer: its status, Discord's error code and message.
    pub(crate) fn answer(what: &str, reply: &Reply) -> Self {
        let kind = match reply.status {
            401 => DiscordErrorKind::Unauthorized,
            403 => DiscordErrorKind::Forbidden,
            404 => DiscordErrorKind::NotFound,
            429 => DiscordErrorKind::RateLimited,
            500..=599 => DiscordErrorKind::Server,
            _ => DiscordErrorKind::Invalid,
        };
        let body: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        let code = body["code"].as_u64().filter(|c| *c != 0);
        let text = body["message"].as_str().unwrap_or("no message");
        let message = match code {
            Some(c) => format!("HTTP {}: Error code {c}: {text}", reply.status),
            None => format!("HTTP {}: {text}", reply.status),
        };
        Self { kind, what: what.into(), message, code, retry_after: reply.retry_after, source: None }
    }
}

pub(crate) fn local(what: &str, message: impl Into<String>) -> DiscordError {
    DiscordError::local(what, message)
}
