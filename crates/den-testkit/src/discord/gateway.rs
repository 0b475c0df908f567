//! The fake gateway v10: HELLO, IDENTIFY → READY → GUILD_CREATE, heartbeats,
//! RESUME with replay, INVALID_SESSION, RECONNECT, and injected faults.

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket};
use axum::extract::{State, WebSocketUpgrade};
use axum::response::Response;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use std::sync::Arc;
use tokio::sync::mpsc;

use super::Shared;

/// MESSAGE_CONTENT, the privileged intent that gates message text.
pub const MESSAGE_CONTENT: u64 = 1 << 15;
/// GUILD_MESSAGES.
pub const GUILD_MESSAGES: u64 = 1 << 9;
/// GUILD_MEMBERS (privileged).
pub const GUILD_MEMBERS: u64 = 1 << 1;
/// GUILD_PRESENCES (privileged).
pub const GUILD_PRESENCES: u64 = 1 << 8;

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

/// One gateway session (it outlives its connection, for RESUME).
#[derive(Debug)]
pub(crate) struct GwSession {
    pub id: String,
    pub shard: (u32, u32),
    pub intents: u64,
    pub seq: u64,
    /// Every dispatch sent in this session, for replay on RESUME.
    pub log: Vec<(u64, String)>,
    pub tx: Option<mpsc::UnboundedSender<Ctl>>,
    pub resumed: u32,
}

/// How the fake gateway treats new connections.
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

/// The gateway side of the fake.
#[derive(Debug, Default)]
pub(crate) struct Hub {
    /// How new connections are treated.
    pub mode: GatewayMode,
    /// The User-Agent of every connection, in order.
    pub user_agents: Vec<Option<String>>,
    pub sessions: Vec<GwSession>,
    /// When false, heartbeats get no ACK (a zombied connection).
    pub withhold_acks: bool,
    /// Shards that identified, in order, with the fake time of each.
    pub identifies: Vec<(u32, std::time::Instant)>,
    pub connections: u32,
}

impl Hub {
    /// Appends a dispatch to every session that should see it and sends it to connected ones.
    pub fn dispatch(&mut self, event: &str, data: &Value, guild_id: Option<u64>, intent: u64) {
        for s in &mut self.sessions {
            if let Some(g) = guild_id
                && (g >> 22) % u64::from(s.shard.1) != u64::from(s.shard.0)
            {
                continue;
            }
            if intent != 0 && s.intents & intent == 0 {
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
    pub fn drop_connections(&mut self) {
        self.each_connected(|s| {
            s.tx = None;
            Some(Ctl::Drop)
        });
    }

    /// Closes every connection with `code`.
    pub fn close_all(&mut self, code: u16) {
        self.each_connected(|_| Some(Ctl::Close(code)));
    }

    /// Sends op 7 RECONNECT to every connection.
    pub fn reconnect_all(&mut self) {
        self.each_connected(|_| Some(Ctl::Send(json!({"op": 7, "d": null}).to_string())));
    }

    /// Sends op 9 INVALID_SESSION to every connection.
    pub fn invalidate_all(&mut self, resumable: bool) {
        self.each_connected(|_| Some(Ctl::Send(json!({"op": 9, "d": resumable}).to_string())));
        if !resumable {
            self.sessions.retain(|s| s.tx.is_none());
        }
    }
}

pub(crate) async fn upgrade(
    State(shared): State<Arc<Shared>>,
    headers: axum::http::HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let agent = headers.get("user-agent").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mode = {
        let mut hub = shared.hub();
        hub.connections += 1;
        hub.user_agents.push(agent);
        hub.mode
    };
    ws.on_upgrade(move |socket| async move {
        match mode {
            GatewayMode::Normal => run(shared, socket).await,
            GatewayMode::AcceptAndClose(code) => {
                let mut socket = socket;
                if let Some(code) = code {
                    let _ = socket.send(WsMessage::Close(Some(CloseFrame { code, reason: "fake close".into() }))).await;
                }
                drop(socket);
            }
        }
    })
}

async fn run(shared: Arc<Shared>, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Ctl>();
    let hello = json!({"op": 10, "d": {"heartbeat_interval": shared.config.heartbeat_interval.as_millis() as u64}});
    if sink.send(WsMessage::Text(hello.to_string().into())).await.is_err() {
        return;
    }
    let mut session_id: Option<String> = None;
    loop {
        tokio::select! {
            ctl = rx.recv() => match ctl {
                Some(Ctl::Send(text)) => {
                    if sink.send(WsMessage::Text(text.into())).await.is_err() { break; }
                }
                Some(Ctl::Close(code)) => {
                    let _ = sink.send(WsMessage::Close(Some(CloseFrame { code, reason: "fake close".into() }))).await;
                    break;
                }
                Some(Ctl::Drop) | None => break,
            },
            frame = stream.next() => {
                let text = match frame {
                    Some(Ok(WsMessage::Text(t))) => t.to_string(),
                    Some(Ok(WsMessage::Binary(_))) => { let _ = tx.send(Ctl::Close(4002)); continue; }
                    Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => continue,
                };
                let Ok(payload) = serde_json::from_str::<Value>(&text) else {
                    let _ = tx.send(Ctl::Close(4002));
                    continue;
                };
                match payload["op"].as_u64() {
                    Some(1) => {
                        if !shared.hub().withhold_acks {
                            let _ = tx.send(Ctl::Send(json!({"op": 11}).to_string()));
                        }
                    }
                    Some(2) => match identify(&shared, &payload["d"], &tx) {
                        Ok(id) => session_id = Some(id),
                        Err(code) => { let _ = tx.send(Ctl::Close(code)); }
                    },
                    Some(6) => match resume(&shared, &payload["d"], &tx) {
                        Ok(id) => session_id = id.or(session_id.take()),
                        Err(code) => { let _ = tx.send(Ctl::Close(code)); }
                    },
                    Some(3 | 4 | 8) => {}
                    _ => { let _ = tx.send(Ctl::Close(4001)); }
                }
            }
        }
    }
    if let Some(id) = session_id {
        let mut hub = shared.hub();
        if let Some(s) = hub.sessions.iter_mut().find(|s| s.id == id) {
            s.tx = None;
        }
    }
    shared.changed.notify_waiters();
}

fn identify(shared: &Shared, d: &Value, tx: &mpsc::UnboundedSender<Ctl>) -> Result<String, u16> {
    if d["token"].as_str().map(|t| t.trim_start_matches("Bot ")) != Some(shared.config.bot_token.as_str()) {
        return Err(4004);
    }
    let intents = d["intents"].as_u64().ok_or(4013u16)?;
    let privileged = MESSAGE_CONTENT | GUILD_MEMBERS | GUILD_PRESENCES;
    if intents & privileged & !shared.config.privileged_intents != 0 {
        return Err(4014);
    }
    let shard = match d["shard"].as_array() {
        Some(a) if a.len() == 2 => (a[0].as_u64().unwrap_or(0) as u32, a[1].as_u64().unwrap_or(1) as u32),
        _ => (0, 1),
    };
    if shard.1 == 0 || shard.0 >= shard.1 {
        return Err(4010);
    }
    let model = shared.model();
    let mut hub = shared.hub();
    hub.identifies.push((shard.0, std::time::Instant::now()));
    let id = format!("session-{}-{}", shard.0, hub.identifies.len());
    let guilds: Vec<u64> =
        model.guilds.keys().copied().filter(|g| (g >> 22) % u64::from(shard.1) == u64::from(shard.0)).collect();
    let ready = json!({
        "v": 10,
        "user": super::model::user_json(model.bot.id, &model.bot.name, true, None),
        "guilds": guilds.iter().map(|g| json!({"id": g.to_string(), "unavailable": true})).collect::<Vec<_>>(),
        "session_id": id,
        "resume_gateway_url": shared.gateway_url.clone(),
        "shard": [shard.0, shard.1],
        "application": {"id": model.app_id.to_string(), "flags": 0},
    });
    hub.sessions.push(GwSession {
        id: id.clone(),
        shard,
        intents,
        seq: 0,
        log: Vec::new(),
        tx: Some(tx.clone()),
        resumed: 0,
    });
    hub.dispatch_to(&id, "READY", &ready);
    for g in guilds {
        let data = super::guild_create_json(&model, g);
        hub.dispatch_to(&id, "GUILD_CREATE", &data);
    }
    Ok(id)
}

/// Resumes a session; `Ok(None)` when it is unknown (op 9 was sent, the client re-identifies).
fn resume(shared: &Shared, d: &Value, tx: &mpsc::UnboundedSender<Ctl>) -> Result<Option<String>, u16> {
    if d["token"].as_str().map(|t| t.trim_start_matches("Bot ")) != Some(shared.config.bot_token.as_str()) {
        return Err(4004);
    }
    let wanted = d["session_id"].as_str().unwrap_or_default();
    let seq = d["seq"].as_u64().unwrap_or(0);
    let mut hub = shared.hub();
    let Some(s) = hub.sessions.iter_mut().find(|s| s.id == wanted) else {
        let _ = tx.send(Ctl::Send(json!({"op": 9, "d": false}).to_string()));
        return Ok(None);
    };
    s.tx = Some(tx.clone());
    s.resumed += 1;
    for (n, frame) in &s.log {
        if *n > seq {
            let _ = tx.send(Ctl::Send(frame.clone()));
        }
    }
    let id = s.id.clone();
    hub.dispatch_to(&id, "RESUMED", &Value::Null);
    Ok(Some(id))
}

impl Hub {
    fn dispatch_to(&mut self, session: &str, event: &str, data: &Value) {
        if let Some(s) = self.sessions.iter_mut().find(|s| s.id == session) {
            s.push(event, data);
        }
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
