//! Gateway sessions: they outlive their connections (for RESUME), number
//! their dispatches, and take faults.

use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::MESSAGE_CONTENT;

/// An instruction to a connected socket.
#[derive(Debug)]
pub(crate) enum Ctl {
    /// Send this text frame.
    Send(String),
    /// Close with this code.
    Close(u16),
    /// Drop the TCP connection without a close frame.
    Drop,
}

/// One gateway session.
#[derive(Debug)]
pub(crate) struct GwSession {
    pub id: String,
    /// The bot account it belongs to.
    pub account: u64,
    pub shard: (u32, u32),
    pub intents: u64,
    pub seq: u64,
    /// Every dispatch sent in this session, for replay on RESUME.
    pub log: Vec<(u64, String)>,
    pub tx: Option<mpsc::UnboundedSender<Ctl>>,
    pub resumed: u32,
}

/// How the gateway treats new connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GatewayMode {
    /// As Discord does: HELLO, then identify or resume.
    #[default]
    Normal,
    /// Accept the WebSocket upgrade, then close at once with this code (or
    /// drop the connection without a close frame when `None`): a gateway or
    /// proxy that accepts and drops.
    AcceptAndClose(Option<u16>),
}

/// The gateway side of the stand-in.
#[derive(Debug, Default)]
pub struct Hub {
    /// How new connections are treated.
    pub mode: GatewayMode,
    /// The User-Agent of every connection, in order.
    pub(crate) user_agents: Vec<Option<String>>,
    pub(crate) sessions: Vec<GwSession>,
    /// When true, heartbeats get no ACK (a zombied connection).
    pub(crate) withhold_acks: bool,
    /// Shards that identified, in order, with the time of each.
    pub(crate) identifies: Vec<(u32, std::time::Instant)>,
    pub(crate) connections: u32,
}

impl Hub {
    /// Appends a dispatch to every session that should see it (its shard,
    /// its intents, `only` its account when set) and sends it to connected ones.
    pub(crate) fn dispatch(
        &mut self,
        event: &str,
        data: &Value,
        guild_id: Option<u64>,
        intent: u64,
        only: Option<u64>,
    ) {
        for s in &mut self.sessions {
            if let Some(g) = guild_id
                && (g >> 22) % u64::from(s.shard.1) != u64::from(s.shard.0)
            {
                continue;
            }
            if (intent != 0 && s.intents & intent == 0) || only.is_some_and(|a| a != s.account) {
                continue;
            }
            let mut data = data.clone();
            if event == "MESSAGE_CREATE" && s.intents & MESSAGE_CONTENT == 0 {
                // Without MESSAGE_CONTENT, text arrives empty (mentions of the bot aside).
                data["content"] = "".into();
            }
            s.push(event, &data);
        }
    }

    pub(crate) fn dispatch_to(&mut self, session: &str, event: &str, data: &Value) {
        if let Some(s) = self.sessions.iter_mut().find(|s| s.id == session) {
            s.push(event, data);
        }
    }

    fn each_connected(&mut self, mut f: impl FnMut(&mut GwSession) -> Option<Ctl>) {
        for s in &mut self.sessions {
            if let Some(tx) = s.tx.clone()
                && let Some(ctl) = f(s)
            {
                let _ = tx.send(ctl);
            }
        }
    }

    /// Drops every connection without a close frame.
    pub(crate) fn drop_connections(&mut self) {
        self.each_connected(|s| {
            s.tx = None;
            Some(Ctl::Drop)
        });
    }

    /// Closes every connection with `code`.
    pub(crate) fn close_all(&mut self, code: u16) {
        self.each_connected(|_| Some(Ctl::Close(code)));
    }

    /// Sends op 7 RECONNECT to every connection.
    pub(crate) fn reconnect_all(&mut self) {
        self.each_connected(|_| Some(Ctl::Send(json!({"op": 7, "d": null}).to_string())));
    }

    /// Sends op 9 INVALID_SESSION to every connection.
    pub(crate) fn invalidate_all(&mut self, resumable: bool) {
        self.each_connected(|_| Some(Ctl::Send(json!({"op": 9, "d": resumable}).to_string())));
        if !resumable {
            self.sessions.retain(|s| s.tx.is_none());
        }
    }

    /// Ends every session (the world was replaced): clients are closed with
    /// 4009, "session timed out", and identify again.
    pub(crate) fn forget_sessions(&mut self) {
        self.close_all(4009);
        self.sessions.clear();
    }
}

impl GwSession {
    /// Numbers a dispatch, keeps it for replay, and sends it if connected.
    fn push(&mut self, event: &str, data: &Value) {
        self.seq += 1;
        let frame = json!({"op": 0, "t": event, "s": self.seq, "d": data}).to_string();
        self.log.push((self.seq, frame.clone()));
        if let Some(tx) = &self.tx {
            let _ = tx.send(Ctl::Send(frame));
        }
    }
}
