//! The gateway v10: HELLO, IDENTIFY → READY → GUILD_CREATE, heartbeats,
//! RESUME with replay, INVALID_SESSION, RECONNECT, `zlib-stream` transport
//! compression, sessions of any bot account, and injected faults.

mod hub;
pub(crate) mod voice;
mod zlib;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket};
use axum::extract::{Query, State, WebSocketUpgrade};
use axum::response::{IntoResponse as _, Response};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::sync::mpsc;

pub(crate) use hub::{Ctl, GwSession};
pub use hub::{GatewayMode, Hub};

use crate::events::{self, Direction, Event};
use crate::server::Shared;
use crate::world::User;

/// GUILDS.
pub const GUILDS: u64 = 1;
/// GUILD_MEMBERS (privileged).
pub const GUILD_MEMBERS: u64 = 1 << 1;
/// GUILD_PRESENCES (privileged).
pub const GUILD_PRESENCES: u64 = 1 << 8;
/// GUILD_VOICE_STATES.
pub const GUILD_VOICE_STATES: u64 = 1 << 7;
/// GUILD_MESSAGES.
pub const GUILD_MESSAGES: u64 = 1 << 9;
/// GUILD_MESSAGE_REACTIONS.
pub const GUILD_MESSAGE_REACTIONS: u64 = 1 << 10;
/// MESSAGE_CONTENT, the privileged intent that gates message text.
pub const MESSAGE_CONTENT: u64 = 1 << 15;

const OP_NAMES: [&str; 12] = [
    "DISPATCH",
    "HEARTBEAT",
    "IDENTIFY",
    "PRESENCE_UPDATE",
    "VOICE_STATE_UPDATE",
    "5",
    "RESUME",
    "RECONNECT",
    "REQUEST_GUILD_MEMBERS",
    "INVALID_SESSION",
    "HELLO",
    "HEARTBEAT_ACK",
];

/// The name a page shows for a frame: its event, or its opcode's name.
pub(crate) fn frame_name(frame: &Value) -> String {
    match frame["t"].as_str() {
        Some(t) => t.to_owned(),
        None => {
            let op = frame["op"].as_u64().unwrap_or(99) as usize;
            OP_NAMES.get(op).map_or_else(|| format!("op {op}"), |n| (*n).to_owned())
        }
    }
}

pub(crate) async fn upgrade(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
    headers: axum::http::HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let agent = headers.get("user-agent").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let compressed = match query.get("compress").map(String::as_str) {
        None => false,
        Some("zlib-stream") => true,
        Some(other) => {
            let message = format!("the stand-in compresses with zlib-stream only, not {other}");
            return (axum::http::StatusCode::BAD_REQUEST, message).into_response();
        }
    };
    if query.get("encoding").is_some_and(|e| e != "json") {
        return (axum::http::StatusCode::BAD_REQUEST, "the stand-in speaks encoding=json only").into_response();
    }
    let mode = {
        let mut hub = shared.hub();
        hub.connections += 1;
        hub.user_agents.push(agent);
        hub.mode
    };
    ws.on_upgrade(move |socket| async move {
        match mode {
            GatewayMode::Normal => run(shared, socket, compressed).await,
            GatewayMode::AcceptAndClose(code) => {
                let mut socket = socket;
                if let Some(code) = code {
                    let _ =
                        socket.send(WsMessage::Close(Some(CloseFrame { code, reason: "stand-in close".into() }))).await;
                }
                drop(socket);
            }
        }
    })
}

/// A connection's outgoing side: text frames, or zlib-stream binary frames.
struct Outgoing {
    zlib: Option<zlib::Stream>,
}

impl Outgoing {
    fn frame(&mut self, text: String) -> WsMessage {
        match &mut self.zlib {
            Some(z) => WsMessage::Binary(z.compress(text.as_bytes()).into()),
            None => WsMessage::Text(text.into()),
        }
    }
}

async fn run(shared: Arc<Shared>, socket: WebSocket, compressed: bool) {
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Ctl>();
    let mut out = Outgoing { zlib: compressed.then(zlib::Stream::new) };
    let hello = json!({"op": 10, "d": {"heartbeat_interval": shared.config.heartbeat_interval.as_millis() as u64}});
    if sink.send(out.frame(hello.to_string())).await.is_err() {
        return;
    }
    let mut session: Option<(String, String)> = None; // (id, account name)
    loop {
        tokio::select! {
            ctl = rx.recv() => match ctl {
                Some(Ctl::Send(text)) => {
                    if shared.config.wire_log
                        && let (Some((_, account)), Ok(frame)) = (&session, serde_json::from_str::<Value>(&text))
                    {
                        log_frame(&shared, account, Direction::Sent, frame);
                    }
                    if sink.send(out.frame(text)).await.is_err() { break; }
                }
                Some(Ctl::Close(code)) => {
                    let _ = sink.send(WsMessage::Close(Some(CloseFrame { code, reason: "stand-in close".into() }))).await;
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
                if let Some((_, account)) = &session {
                    log_frame(&shared, account, Direction::Received, events::hide_token(payload.clone()));
                }
                match payload["op"].as_u64() {
                    Some(1) => {
                        if !shared.hub().withhold_acks {
                            let _ = tx.send(Ctl::Send(json!({"op": 11}).to_string()));
                        }
                    }
                    Some(2) => match identify(&shared, &payload["d"], &tx) {
                        Ok((id, account)) => {
                            log_frame(&shared, &account, Direction::Received, events::hide_token(payload.clone()));
                            session = Some((id, account));
                        }
                        Err(code) => { let _ = tx.send(Ctl::Close(code)); }
                    },
                    Some(6) => match resume(&shared, &payload["d"], &tx) {
                        Ok(Some(resumed)) => session = Some(resumed),
                        Ok(None) => {}
                        Err(code) => { let _ = tx.send(Ctl::Close(code)); }
                    },
                    Some(4) => {
                        if let Some((id, _)) = &session {
                            let account = shared.hub().sessions.iter().find(|s| &s.id == id).map(|s| s.account);
                            if let Some(account) = account {
                                voice::bot_update(&shared, id, account, &payload["d"]);
                            }
                        }
                    }
                    Some(3 | 8) => {}
                    _ => { let _ = tx.send(Ctl::Close(4001)); }
                }
            }
        }
    }
    if let Some((id, _)) = session {
        let mut hub = shared.hub();
        if let Some(s) = hub.sessions.iter_mut().find(|s| s.id == id) {
            s.tx = None;
        }
    }
    shared.changed.notify_waiters();
}

fn log_frame(shared: &Shared, account: &str, direction: Direction, payload: Value) {
    if !shared.config.wire_log {
        return;
    }
    // Heartbeats every 41 s are noise on a page; the rest is what a developer looks for.
    let name = frame_name(&payload);
    if matches!(name.as_str(), "HEARTBEAT" | "HEARTBEAT_ACK") {
        return;
    }
    shared.feed.send(Event::Gateway {
        id: shared.feed.next_id(),
        at_ms: events::now_ms(),
        account: account.to_owned(),
        direction,
        name,
        payload,
    });
}

/// The account a gateway token names.
fn account_of(shared: &Shared, token: Option<&str>) -> Option<User> {
    shared.account(token?.trim_start_matches("Bot "))
}

fn identify(shared: &Shared, d: &Value, tx: &mpsc::UnboundedSender<Ctl>) -> Result<(String, String), u16> {
    let account = account_of(shared, d["token"].as_str()).ok_or(4004u16)?;
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
    let world = shared.world();
    let mut hub = shared.hub();
    hub.identifies.push((shard.0, std::time::Instant::now()));
    let id = format!("session-{}-{}", shard.0, hub.identifies.len());
    let guilds: Vec<u64> = world
        .guilds
        .values()
        .filter(|g| g.members.contains_key(&account.id))
        .map(|g| g.id)
        .filter(|g| (g >> 22) % u64::from(shard.1) == u64::from(shard.0))
        .collect();
    // Another bot's application id is its user id, as for applications made since 2019.
    let app = if account.id == world.bot.id { world.app_id } else { account.id };
    let ready = json!({
        "v": 10,
        "user": crate::json::account(&account),
        "guilds": guilds.iter().map(|g| json!({"id": g.to_string(), "unavailable": true})).collect::<Vec<_>>(),
        "session_id": id,
        "resume_gateway_url": shared.gateway_url.clone(),
        "shard": [shard.0, shard.1],
        "application": {"id": app.to_string(), "flags": 0},
    });
    hub.sessions.push(GwSession {
        id: id.clone(),
        account: account.id,
        shard,
        intents,
        seq: 0,
        log: Vec::new(),
        tx: Some(tx.clone()),
        resumed: 0,
    });
    hub.dispatch_to(&id, "READY", &ready);
    for g in guilds {
        let data = crate::json::guild_create(&world, g);
        hub.dispatch_to(&id, "GUILD_CREATE", &data);
    }
    Ok((id, account.name))
}

/// Resumes a session; `Ok(None)` when it is unknown (op 9 was sent, the client re-identifies).
fn resume(shared: &Shared, d: &Value, tx: &mpsc::UnboundedSender<Ctl>) -> Result<Option<(String, String)>, u16> {
    let account = account_of(shared, d["token"].as_str()).ok_or(4004u16)?;
    let wanted = d["session_id"].as_str().unwrap_or_default();
    let seq = d["seq"].as_u64().unwrap_or(0);
    let mut hub = shared.hub();
    let Some(s) = hub.sessions.iter_mut().find(|s| s.id == wanted && s.account == account.id) else {
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
    Ok(Some((id, account.name)))
}
