//! What the stand-in tells a page watching it: every REST call and gateway
//! frame (tokens hidden), and which part of the world changed.

use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;

/// Wire events kept for a page that opens late.
pub const KEPT: usize = 500;

/// Which way a gateway frame went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// From the stand-in to the bot.
    Sent,
    /// From the bot to the stand-in.
    Received,
}

/// A part of the world a view shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    /// Messages of a channel.
    Messages,
    /// Channels, categories and threads.
    Channels,
    /// Roles.
    Roles,
    /// Members and their roles.
    Members,
    /// Registered commands.
    Commands,
    /// Who is in which voice channel.
    Voice,
    /// Everything (a reset or a load).
    All,
}

/// One thing that happened.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A REST call and its answer.
    Rest {
        /// Sequence number.
        id: u64,
        /// Milliseconds since the Unix epoch.
        at_ms: u64,
        /// The account that called.
        account: String,
        /// HTTP method.
        method: String,
        /// Path after `/api/v10`, tokens hidden.
        path: String,
        /// The spec's operation id.
        operation: String,
        /// Status answered.
        status: u16,
        /// The request body.
        request: Value,
        /// The response body.
        response: Value,
    },
    /// A gateway frame.
    Gateway {
        /// Sequence number.
        id: u64,
        /// Milliseconds since the Unix epoch.
        at_ms: u64,
        /// The account of the session.
        account: String,
        /// Which way it went.
        direction: Direction,
        /// The event (`MESSAGE_CREATE`) or opcode (`HEARTBEAT`).
        name: String,
        /// The frame, tokens hidden.
        payload: Value,
    },
    /// A part of the world changed.
    Changed {
        /// Which part.
        part: Part,
        /// The channel, for messages.
        channel: Option<u64>,
    },
    /// A request that breaks Discord's published spec.
    Violation {
        /// What is wrong.
        message: String,
    },
}

impl Event {
    /// Whether it is a REST call or gateway frame (kept for late pages).
    #[must_use]
    pub fn is_wire(&self) -> bool {
        matches!(self, Self::Rest { .. } | Self::Gateway { .. } | Self::Violation { .. })
    }
}

/// Milliseconds since the Unix epoch.
#[must_use]
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// The broadcast and the recent wire events.
#[derive(Debug)]
pub(crate) struct Feed {
    sender: tokio::sync::broadcast::Sender<Event>,
    recent: std::sync::Mutex<VecDeque<Event>>,
    next: std::sync::atomic::AtomicU64,
}

impl Default for Feed {
    fn default() -> Self {
        Self {
            sender: tokio::sync::broadcast::channel(1024).0,
            recent: std::sync::Mutex::default(),
            next: std::sync::atomic::AtomicU64::new(1),
        }
    }
}

impl Feed {
    pub fn next_id(&self) -> u64 {
        self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    pub fn send(&self, event: Event) {
        if event.is_wire() {
            let mut recent = self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if recent.len() == KEPT {
                recent.pop_front();
            }
            recent.push_back(event.clone());
        }
        let _ = self.sender.send(event);
    }

    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.sender.subscribe()
    }

    pub fn recent(&self) -> Vec<Event> {
        self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().cloned().collect()
    }
}

/// A path with its token segments hidden: webhook and interaction tokens are secrets.
#[must_use]
pub fn hide_tokens(path: &str, token_params: &[&str]) -> String {
    let mut out = path.to_owned();
    for t in token_params {
        if !t.is_empty() {
            out = out.replace(t, "[token]");
        }
    }
    out
}

/// A gateway payload with its `token` hidden.
#[must_use]
pub fn hide_token(mut payload: Value) -> Value {
    if payload["d"].get("token").is_some() {
        payload["d"]["token"] = "[token]".into();
    }
    payload
}
