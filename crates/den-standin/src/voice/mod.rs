//! A stand-in for Discord's voice servers on 127.0.0.1: the voice gateway
//! (`wss://`, JSON opcodes: hello, identify → ready, select protocol →
//! session description, heartbeats, speaking, resume) and the UDP peer (IP
//! discovery, RTP under `aead_aes256_gcm_rtpsize`), which decrypts what a bot
//! sends and decodes its Opus so a test hears it ([`audio`]).
//!
//! The gateway hands out a call when a bot sends op 4 (a voice state update)
//! and tells it where to connect in VOICE_SERVER_UPDATE. The session
//! description always says DAVE protocol version 0: the protocol lets a voice
//! server choose transport encryption only, and the stand-in has no MLS
//! group to run. What the bot asked for (`max_dave_protocol_version`) is kept.

pub mod audio;
mod rtp;
mod tls;
pub mod tones;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

pub use audio::{HeardFrame, Segment, segments};

/// How often a voice client is asked to heartbeat, in ms.
const HEARTBEAT_MS: f64 = 13_750.0;

/// A call the gateway granted: who may connect for which guild, with what.
#[derive(Clone, Debug)]
struct Grant {
    channel: u64,
    user: u64,
    session_id: String,
    token: String,
}

/// One bot's connection to a guild's voice, as the server saw it.
#[derive(Clone, Debug)]
pub struct CallInfo {
    /// The guild.
    pub guild: u64,
    /// The voice channel.
    pub channel: u64,
    /// The bot's user id.
    pub user: u64,
    /// The SSRC the server gave it.
    pub ssrc: u32,
    /// The highest DAVE protocol version the bot said it speaks (identify's `max_dave_protocol_version`).
    pub max_dave_protocol_version: Option<u64>,
    /// The `v` query parameter the client connected with.
    pub gateway_version: Option<String>,
    /// Connections made for this call (identify or resume), including the first.
    pub connections: u32,
    /// Resumes among them.
    pub resumes: u32,
    /// Whether a voice gateway connection is open now.
    pub connected: bool,
    /// Connections that have ended, whether they held the call or had been replaced.
    pub ended: u32,
    /// RTP packets received and decrypted.
    pub packets: u64,
    /// Packets whose tag did not verify, or that were not RTP.
    pub refused: u64,
    /// The last speaking flags the bot sent.
    pub speaking: Option<u64>,
    /// When its first RTP packet arrived.
    pub first_packet: Option<std::time::Instant>,
}

struct Call {
    info: CallInfo,
    key: Option<[u8; 32]>,
    /// Where its UDP packets come from, learned at IP discovery.
    peer: Option<SocketAddr>,
    heard: audio::Heard,
    /// Closes the open connection with a code.
    close: Option<mpsc::UnboundedSender<u16>>,
    /// Which connection holds the call now: one that ends after another took
    /// over (a resume or a new identify) leaves the call as it is.
    connection: u64,
}

#[derive(Default)]
struct State {
    grants: HashMap<u64, Grant>,
    calls: HashMap<u64, Call>,
    next_ssrc: u32,
    next_connection: u64,
}

/// Told when a bot starts or stops sending audio: guild, user, speaking.
type SpeakingWatcher = Box<dyn Fn(u64, u64, bool) + Send + Sync>;

struct Shared {
    state: Mutex<State>,
    speaking: Mutex<Vec<SpeakingWatcher>>,
    decode: std::sync::atomic::AtomicBool,
    changed: Notify,
    udp_port: u16,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The voice server: one TLS listener for the voice gateway and one UDP socket.
pub struct VoiceServer {
    shared: Arc<Shared>,
    endpoint: String,
    ca_pem: String,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for VoiceServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoiceServer").field("endpoint", &self.endpoint).finish_non_exhaustive()
    }
}

impl Drop for VoiceServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl VoiceServer {
    /// Binds both sockets on 127.0.0.1 (any free ports).
    pub async fn start() -> std::io::Result<Self> {
        let (ca_pem, acceptor) = tls::authority_and_acceptor().map_err(std::io::Error::other)?;
        let tcp = TcpListener::bind("127.0.0.1:0").await?;
        let udp = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let shared = Arc::new(Shared {
            state: Mutex::new(State { next_ssrc: 1000, ..State::default() }),
            decode: std::sync::atomic::AtomicBool::new(true),
            speaking: Mutex::new(Vec::new()),
            changed: Notify::new(),
            udp_port: udp.local_addr()?.port(),
        });
        let endpoint = tcp.local_addr()?.to_string();
        let accept = {
            let shared = shared.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = tcp.accept().await {
                    let _ = stream.set_nodelay(true);
                    let (shared, acceptor) = (shared.clone(), acceptor.clone());
                    tokio::spawn(async move {
                        if let Ok(tls) = acceptor.accept(stream).await {
                            serve_connection(shared, tls).await;
                        }
                    });
                }
            })
        };
        let media = tokio::spawn(receive_media(shared.clone(), udp));
        Ok(Self { shared, endpoint, ca_pem, tasks: vec![accept, media] })
    }

    /// `127.0.0.1:PORT`, as VOICE_SERVER_UPDATE's `endpoint` gives it.
    #[must_use]
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The PEM of the authority that signed the server's certificate; a
    /// client must trust it (`SSL_CERT_FILE` for native-roots rustls clients).
    #[must_use]
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Grants `user` a call in `guild`'s `channel`, replacing any earlier
    /// grant (a move): the connection of an earlier call is closed with 4014
    /// (disconnected) only when the channel changed or `session_id` did.
    pub fn grant(&self, guild: u64, channel: u64, user: u64, session_id: &str, token: &str) {
        let mut state = self.shared.state();
        state.grants.insert(guild, Grant { channel, user, session_id: session_id.into(), token: token.into() });
    }

    /// Ends `guild`'s call (the bot left the channel): its connection is closed with 4014.
    pub fn end(&self, guild: u64) {
        let mut state = self.shared.state();
        state.grants.remove(&guild);
        if let Some(call) = state.calls.get_mut(&guild)
            && let Some(close) = call.close.take()
        {
            let _ = close.send(4014);
        }
        drop(state);
        self.shared.changed.notify_waiters();
    }

    /// Closes `guild`'s voice connection with `code` (4015: the voice server
    /// crashed, resume; 4006: session no longer valid), as Discord may.
    pub fn close(&self, guild: u64, code: u16) {
        if let Some(call) = self.shared.state().calls.get_mut(&guild)
            && let Some(close) = call.close.take()
        {
            let _ = close.send(code);
        }
    }

    /// Whether to decode what arrives (on by default); off, frames are only
    /// counted and timed, so a load test measures the bot, not the listener.
    pub fn set_decode(&self, decode: bool) {
        self.shared.decode.store(decode, std::sync::atomic::Ordering::Relaxed);
    }

    /// Calls `watcher` whenever a bot starts or stops sending audio (its speaking flags).
    pub fn on_speaking(&self, watcher: impl Fn(u64, u64, bool) + Send + Sync + 'static) {
        self.shared.speaking.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(Box::new(watcher));
    }

    /// The call in `guild`, if a bot connected.
    #[must_use]
    pub fn call(&self, guild: u64) -> Option<CallInfo> {
        self.shared.state().calls.get(&guild).map(|c| c.info.clone())
    }

    /// Every frame heard in `guild`'s call, in arrival order.
    #[must_use]
    pub fn heard(&self, guild: u64) -> Vec<HeardFrame> {
        self.shared.state().calls.get(&guild).map(|c| c.heard.frames()).unwrap_or_default()
    }

    /// Decoded audio of `guild`'s call as it arrives: 48 kHz interleaved stereo.
    #[must_use]
    pub fn listen(&self, guild: u64) -> Option<tokio::sync::broadcast::Receiver<Arc<[i16]>>> {
        self.shared.state().calls.get(&guild).map(|c| c.heard.pcm.subscribe())
    }

    /// Waits until `check` holds for the server, or panics naming `what` after `timeout`.
    pub async fn wait_until(&self, what: &str, timeout: std::time::Duration, mut check: impl FnMut(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            if check(self) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            let _ = tokio::time::timeout(std::time::Duration::from_millis(50), notified).await;
        }
    }
}

/// One voice gateway connection: identify or resume, then the session.
async fn serve_connection(shared: Arc<Shared>, tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>) {
    let mut version = None;
    // The callback's error type is tungstenite's, large but never built here.
    #[allow(clippy::result_large_err)]
    let callback = |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
        version = req.uri().query().and_then(|q| q.split('&').find_map(|p| p.strip_prefix("v=")).map(str::to_owned));
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tls, callback).await else { return };
    let hello = json!({"op": 8, "d": {"heartbeat_interval": HEARTBEAT_MS}});
    if ws.send(WsMessage::text(hello.to_string())).await.is_err() {
        return;
    }
    let (close_tx, mut close_rx) = mpsc::unbounded_channel::<u16>();
    let me = {
        let mut state = shared.state();
        state.next_connection += 1;
        state.next_connection
    };
    let mut guild: Option<u64> = None;
    loop {
        tokio::select! {
            code = close_rx.recv() => {
                let frame = CloseFrame { code: code.unwrap_or(4014).into(), reason: "stand-in close".into() };
                let _ = ws.send(WsMessage::Close(Some(frame))).await;
                break;
            }
            frame = ws.next() => {
                let text = match frame {
                    Some(Ok(WsMessage::Text(t))) => t.to_string(),
                    // DAVE's binary opcodes never come: the session is DAVE version 0.
                    Some(Ok(WsMessage::Binary(_) | WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => continue,
                    Some(Ok(WsMessage::Close(_)) | Err(_)) | None => break,
                };
                let Ok(payload) = serde_json::from_str::<Value>(&text) else { break };
                let reply = match payload["op"].as_u64() {
                    Some(0) => identify(&shared, &payload["d"], version.clone(), (me, &close_tx)).map(|(g, r)| { guild = Some(g); r }),
                    Some(1) => guild.ok_or(4003).and_then(|g| select_protocol(&shared, g, &payload["d"])),
                    Some(3) => Ok(heartbeat_ack(&payload["d"])),
                    Some(5) => {
                        let speaking = payload["d"]["speaking"].as_u64();
                        let changed = guild.and_then(|g| {
                            let mut state = shared.state();
                            let call = state.calls.get_mut(&g)?;
                            let before = call.info.speaking.replace(speaking.unwrap_or(0));
                            (before != speaking).then_some((g, call.info.user))
                        });
                        if let Some((g, user)) = changed {
                            let watchers = shared.speaking.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                            for w in watchers.iter() {
                                w(g, user, speaking.unwrap_or(0) != 0);
                            }
                        }
                        continue;
                    }
                    Some(7) => resume(&shared, &payload["d"], (me, &close_tx)).map(|(g, r)| { guild = Some(g); r }),
                    _ => continue,
                };
                match reply {
                    Ok(reply) => if ws.send(WsMessage::text(reply.to_string())).await.is_err() { break },
                    Err(code) => {
                        let frame = CloseFrame { code: code.into(), reason: "stand-in refused".into() };
                        let _ = ws.send(WsMessage::Close(Some(frame))).await;
                        break;
                    }
                }
                shared.changed.notify_waiters();
            }
        }
    }
    if let Some(g) = guild
        && let Some(c) = shared.state().calls.get_mut(&g)
    {
        c.info.ended += 1;
        if c.connection == me {
            c.info.connected = false;
            c.close = None;
        }
    }
    shared.changed.notify_waiters();
}

fn id_of(v: &Value) -> Option<u64> {
    v.as_str().and_then(|s| s.parse().ok()).or_else(|| v.as_u64())
}

/// Identify → READY with an SSRC, the UDP port and the one mode offered.
fn identify(
    shared: &Shared,
    d: &Value,
    version: Option<String>,
    (connection, close): (u64, &mpsc::UnboundedSender<u16>),
) -> Result<(u64, Value), u16> {
    let guild = id_of(&d["server_id"]).ok_or(4005u16)?;
    let user = id_of(&d["user_id"]).ok_or(4005u16)?;
    let mut state = shared.state();
    let grant = state.grants.get(&guild).cloned().ok_or(4004u16)?;
    if grant.user != user || d["token"].as_str() != Some(&grant.token) {
        return Err(4004);
    }
    if d["session_id"].as_str() != Some(&grant.session_id) {
        return Err(4006);
    }
    state.next_ssrc += 1;
    let ssrc = state.next_ssrc;
    let (connections, resumes, ended, packets, refused) = state.calls.get(&guild).map_or((0, 0, 0, 0, 0), |c| {
        (c.info.connections, c.info.resumes, c.info.ended, c.info.packets, c.info.refused)
    });
    if let Some(old) = state.calls.get_mut(&guild).and_then(|c| c.close.take()) {
        let _ = old.send(4006);
    }
    let heard = state.calls.remove(&guild).map(|c| c.heard).unwrap_or_default();
    let info = CallInfo {
        guild,
        channel: grant.channel,
        user,
        ssrc,
        max_dave_protocol_version: d["max_dave_protocol_version"].as_u64(),
        gateway_version: version,
        connections: connections + 1,
        resumes,
        connected: true,
        ended,
        packets,
        refused,
        speaking: None,
        first_packet: None,
    };
    state.calls.insert(guild, Call { info, key: None, peer: None, heard, close: Some(close.clone()), connection });
    let ready = json!({"op": 2, "d": {
        "ssrc": ssrc, "ip": "127.0.0.1", "port": shared.udp_port,
        "modes": [rtp::MODE], "heartbeat_interval": HEARTBEAT_MS,
    }});
    Ok((guild, ready))
}

/// Select protocol → the session description with a fresh key, DAVE version 0.
fn select_protocol(shared: &Shared, guild: u64, d: &Value) -> Result<Value, u16> {
    if d["protocol"].as_str() != Some("udp") {
        return Err(4002);
    }
    if d["data"]["mode"].as_str() != Some(rtp::MODE) {
        return Err(4016);
    }
    let key: [u8; 32] = rand::random();
    if let Some(call) = shared.state().calls.get_mut(&guild) {
        call.key = Some(key);
    }
    Ok(json!({"op": 4, "d": {"mode": rtp::MODE, "secret_key": key.to_vec(), "dave_protocol_version": 0}}))
}

/// v8 heartbeats carry `{t, seq_ack}` and are answered `{t}`; older ones carry a nonce, echoed.
fn heartbeat_ack(d: &Value) -> Value {
    let t = if d.is_object() { json!({"t": d["t"]}) } else { d.clone() };
    json!({"op": 6, "d": t})
}

/// Resume → RESUMED, when the session still holds the call.
fn resume(
    shared: &Shared,
    d: &Value,
    (connection, close): (u64, &mpsc::UnboundedSender<u16>),
) -> Result<(u64, Value), u16> {
    let guild = id_of(&d["server_id"]).ok_or(4005u16)?;
    let mut state = shared.state();
    let grant = state.grants.get(&guild).cloned().ok_or(4006u16)?;
    if d["session_id"].as_str() != Some(&grant.session_id) || d["token"].as_str() != Some(&grant.token) {
        return Err(4006);
    }
    let call = state.calls.get_mut(&guild).ok_or(4006u16)?;
    if let Some(old) = call.close.replace(close.clone()) {
        let _ = old.send(4006);
    }
    call.connection = connection;
    call.info.connections += 1;
    call.info.resumes += 1;
    call.info.connected = true;
    Ok((guild, json!({"op": 9, "d": null})))
}

/// The UDP side: discovery answered, RTP decrypted and heard.
async fn receive_media(shared: Arc<Shared>, udp: Arc<UdpSocket>) {
    let mut buf = vec![0u8; 2048];
    loop {
        let Ok((n, from)) = udp.recv_from(&mut buf).await else { continue };
        let packet = &buf[..n];
        if let Some(ssrc) = rtp::discovery_request(packet) {
            let known = shared.state().calls.values_mut().find(|c| c.info.ssrc == ssrc).map(|c| c.peer = Some(from));
            if known.is_some() {
                let _ = udp.send_to(&rtp::discovery_response(ssrc, from), from).await;
            }
            continue;
        }
        let Some(ssrc) = rtp::ssrc_of(packet) else { continue }; // keepalives and the like
        let mut state = shared.state();
        let Some(call) = state.calls.values_mut().find(|c| c.info.ssrc == ssrc) else { continue };
        let Some(key) = call.key else { continue };
        match rtp::decrypt(&key, packet) {
            Ok(p) => {
                call.info.packets += 1;
                call.info.first_packet.get_or_insert_with(std::time::Instant::now);
                call.heard.decode = shared.decode.load(std::sync::atomic::Ordering::Relaxed);
                call.heard.push(p.seq, p.timestamp, &p.payload);
            }
            Err(_) => call.info.refused += 1,
        }
        drop(state);
        shared.changed.notify_waiters();
    }
}
