//! One shard's connection loop: connect, HELLO, IDENTIFY or RESUME,
//! heartbeats, dispatches into the router's pipeline, and every way a
//! connection ends, each followed by a reconnect after a backoff with jitter.
//!
//! Why den runs its own loop rather than twilight-gateway's: twilight
//! reconnects at once when a connection that was accepted closes again (a
//! gateway or proxy that accepts and drops makes it reconnect hundreds of
//! times a second), sends no User-Agent, and cannot stop reading while den's
//! queue is down. Here every reconnect path backs off, and backpressure
//! closes the connection (resumably) until events can be enqueued again, so
//! Discord replays what den has not taken.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use den_worker::Backoff;
use futures_util::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use super::{DISCORD_GATEWAY, FatalClose, Gateway, ShardState, fatal_close_advice};
use crate::router::Routed;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How often a shard's session (id and sequence) is written to the store.
const SESSION_SAVE_EVERY: Duration = Duration::from_secs(1);
/// Events of one shard routed at once. Routing waits on the queue's commit;
/// overlapping events lets the store commit them in groups. When all are
/// taken (the queue is failing), the shard stops reading.
const PIPELINE_DEPTH: usize = 64;
/// A connection that lived this long with a session resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// Waits before reconnecting: 0.5-1 s, doubling up to 30-60 s.
const RECONNECT: Backoff = Backoff { base: Duration::from_secs(1), max: Duration::from_secs(60) };
/// Waits between attempts to enqueue an event's jobs while the store fails.
const ENQUEUE_RETRY: Backoff = Backoff { base: Duration::from_millis(200), max: Duration::from_secs(10) };
/// Time allowed for the TCP + TLS + WebSocket handshake, and for HELLO.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Gateway sends allowed per minute (Discord: 120), less room kept for heartbeats.
const COMMANDS_PER_MINUTE: usize = 110;
/// How long shutdown waits for events still being enqueued before giving up on
/// them (the stored sequence stays below them, so the next start replays them).
const DRAIN: Duration = Duration::from_secs(5);
/// A close that keeps the session resumable (1000 and 1001 would end it).
const RESUMABLE: u16 = 4000;

/// The User-Agent den's gateway connections send.
pub const USER_AGENT: &str = concat!("DiscordBot (https://example.invalid/den, ", env!("CARGO_PKG_VERSION"), ") den");

/// A gateway session den can resume.
#[derive(Clone, Debug)]
struct Session {
    id: String,
    seq: u64,
    resume_url: Option<String>,
}

/// The envelope of a gateway frame; `d` stays raw until needed.
#[derive(Deserialize)]
struct Envelope<'a> {
    op: u8,
    #[serde(default)]
    s: Option<u64>,
    #[serde(default, borrow)]
    t: Option<&'a str>,
    #[serde(default, borrow)]
    d: Option<&'a RawValue>,
}

/// How a connection ended.
enum End {
    /// den is shutting down.
    Shutdown,
    /// Reconnecting cannot help.
    Fatal(FatalClose),
    /// Connect again; `fresh` drops the session (identify instead of resume).
    Reconnect { fresh: bool, reason: &'static str, code: Option<u16> },
    /// The queue took events again after backpressure: resume at once.
    Backpressure,
}

/// Sequences of events still being routed, so the stored session never
/// claims an event that is not yet enqueued: after a crash, RESUME replays
/// from the lowest unfinished one, and dedup keys drop what was done twice.
/// Frames that are not dispatches (heartbeat ACKs) carry the previous
/// sequence, so one sequence can be in flight more than once: counts, not a set.
#[derive(Debug, Default)]
pub(super) struct InFlight {
    seqs: BTreeMap<u64, u32>,
}

impl InFlight {
    fn start(&mut self, seq: u64) {
        *self.seqs.entry(seq).or_default() += 1;
    }

    fn finish(&mut self, seq: u64) {
        if let Some(n) = self.seqs.get_mut(&seq) {
            *n -= 1;
            if *n == 0 {
                self.seqs.remove(&seq);
            }
        }
    }

    /// The highest sequence below which everything is routed.
    fn watermark(&self, latest: u64) -> u64 {
        self.seqs.keys().next().map_or(latest, |lowest| lowest.saturating_sub(1))
    }
}

/// One shard: its session, its pipeline of events being routed, and its connection loop.
struct ShardLoop {
    gw: Arc<Gateway>,
    number: u32,
    total: u32,
    key: String,
    session: Option<Session>,
    in_flight: Arc<Mutex<InFlight>>,
    permits: Arc<Semaphore>,
    routing: tokio::task::JoinSet<()>,
    commands: mpsc::Receiver<Value>,
    sent_commands: std::collections::VecDeque<Instant>,
    saved_seq: u64,
    last_save: Instant,
    shutdown: CancellationToken,
}

/// Runs shard `number` of `total` until shutdown or a fatal close.
pub(super) async fn run(
    gw: Arc<Gateway>,
    number: u32,
    total: u32,
    commands: mpsc::Receiver<Value>,
    shutdown: CancellationToken,
) -> Result<(), FatalClose> {
    let key = format!("shard:{number}/{total}");
    let session = load_session(&*gw.sessions, &key).await;
    let mut shard = ShardLoop {
        gw,
        number,
        total,
        key,
        session,
        in_flight: Arc::default(),
        permits: Arc::new(Semaphore::new(PIPELINE_DEPTH)),
        routing: tokio::task::JoinSet::new(),
        commands,
        sent_commands: std::collections::VecDeque::new(),
        saved_seq: 0,
        last_save: Instant::now(),
        shutdown,
    };
    let outcome = shard.connect_loop().await;
    shard.drain().await;
    shard.gw.status.set(number, ShardState::Closed);
    outcome
}

impl ShardLoop {
    async fn connect_loop(&mut self) -> Result<(), FatalClose> {
        let mut failures = 0u32;
        loop {
            if failures > 0 {
                let wait = RECONNECT.delay(failures);
                self.gw.status.set(self.number, ShardState::Reconnecting);
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = self.shutdown.cancelled() => return Ok(()),
                }
            }
            if self.permits.available_permits() == 0 && !self.wait_for_room().await {
                return Ok(());
            }
            self.gw.status.set(self.number, ShardState::Connecting);
            let url = self.url();
            let ws = tokio::select! {
                ws = connect(&url) => ws,
                () = self.shutdown.cancelled() => return Ok(()),
            };
            let mut ws = match ws {
                Ok(ws) => ws,
                Err(e) => {
                    failures += 1;
                    tracing::warn!(shard = self.number, attempt = failures, error = %e, "cannot connect to the gateway");
                    // A resume URL that does not answer is not tried again.
                    if let Some(s) = &mut self.session {
                        s.resume_url = None;
                    }
                    continue;
                }
            };
            let started = Instant::now();
            let mut live_since = None;
            let end = self.connection(&mut ws, &mut live_since).await;
            let stable = live_since.is_some_and(|t: Instant| t.elapsed() >= STABLE_AFTER);
            if matches!(end, End::Backpressure) {
                // Not the gateway's fault: den waited for its queue, and resumes now.
                tracing::info!(shard = self.number, "the queue takes events again; resuming");
                continue;
            }
            failures = if stable { 0 } else { failures + 1 };
            match end {
                End::Shutdown => {
                    close(&mut ws, RESUMABLE).await;
                    return Ok(());
                }
                End::Fatal(f) => return Err(f),
                End::Backpressure => {}
                End::Reconnect { fresh, reason, code } => {
                    if fresh {
                        self.session = None;
                    }
                    tracing::info!(
                        shard = self.number,
                        reason,
                        code,
                        lived_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                        attempt = failures,
                        "gateway connection ended; reconnecting"
                    );
                }
            }
        }
    }

    fn url(&self) -> String {
        let base = self
            .session
            .as_ref()
            .and_then(|s| s.resume_url.clone())
            .or_else(|| self.gw.config.gateway_url.clone())
            .unwrap_or_else(|| DISCORD_GATEWAY.to_owned());
        format!("{}/?v=10&encoding=json", base.trim_end_matches('/'))
    }

    /// Waits until the pipeline has room again (the queue recovered); `false` on shutdown.
    async fn wait_for_room(&mut self) -> bool {
        self.gw.status.set(self.number, ShardState::Backpressured);
        tracing::warn!(shard = self.number, "events cannot be enqueued; the shard stops reading until they can");
        loop {
            self.save_session(false).await;
            tokio::select! {
                permit = self.permits.clone().acquire_owned() => {
                    drop(permit);
                    return true;
                }
                Some(_) = self.routing.join_next() => {}
                () = self.shutdown.cancelled() => return false,
            }
        }
    }

    /// Runs one connection until it ends.
    async fn connection(&mut self, ws: &mut Ws, live_since: &mut Option<Instant>) -> End {
        let interval = match tokio::time::timeout(CONNECT_TIMEOUT, hello(ws)).await {
            Ok(Ok(i)) => i,
            Ok(Err(end)) => return end,
            Err(_) => return End::Reconnect { fresh: false, reason: "no HELLO", code: None },
        };
        self.gw.status.set(self.number, ShardState::Identifying);
        self.gw.status.frame(self.number, interval);
        if let Err(end) = self.authenticate(ws).await {
            return end;
        }
        // The first heartbeat after interval × random[0, 1), as Discord asks.
        let mut next_beat = Instant::now() + interval.mul_f64(rand::random::<f64>());
        let mut acked = true;
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return End::Shutdown,
                () = tokio::time::sleep_until(next_beat) => {
                    if !acked {
                        close(ws, RESUMABLE).await;
                        return End::Reconnect { fresh: false, reason: "heartbeat not acknowledged", code: None };
                    }
                    if send(ws, &self.heartbeat()).await.is_err() {
                        return End::Reconnect { fresh: false, reason: "send failed", code: None };
                    }
                    acked = false;
                    next_beat = Instant::now() + interval;
                }
                Some(command) = self.commands.recv() => {
                    if self.command_allowed() && send(ws, &command).await.is_err() {
                        return End::Reconnect { fresh: false, reason: "send failed", code: None };
                    }
                }
                Some(_) = self.routing.join_next(), if !self.routing.is_empty() => {}
                frame = ws.next() => {
                    self.gw.status.frame(self.number, interval);
                    let text = match frame {
                        Some(Ok(WsMessage::Text(t))) => t,
                        Some(Ok(WsMessage::Close(frame))) => return self.closed(frame.map(|f| u16::from(f.code))),
                        Some(Ok(_)) => continue,
                        Some(Err(_)) | None => return End::Reconnect { fresh: false, reason: "connection lost", code: None },
                    };
                    match self.frame(ws, text.as_str(), live_since).await {
                        Frame::Continue => {}
                        Frame::Ack => acked = true,
                        Frame::BeatNow => next_beat = Instant::now(),
                        Frame::End(end) => return end,
                    }
                }
            }
            self.save_session(false).await;
        }
    }

    /// Sends RESUME when there is a session, else IDENTIFY once pacing allows.
    async fn authenticate(&mut self, ws: &mut Ws) -> Result<(), End> {
        let config = &self.gw.config;
        let payload = match &self.session {
            Some(s) => {
                tracing::info!(shard = self.number, seq = s.seq, "resuming the gateway session");
                json!({"op": 6, "d": {"token": config.token.expose(), "session_id": s.id, "seq": s.seq}})
            }
            None => {
                tokio::select! {
                    () = self.gw.identify.acquire(self.number) => {}
                    () = self.shutdown.cancelled() => return Err(End::Shutdown),
                }
                json!({"op": 2, "d": {
                    "token": config.token.expose(),
                    "intents": config.intents,
                    "properties": {"os": std::env::consts::OS, "browser": "den", "device": "den"},
                    "shard": [self.number, self.total],
                }})
            }
        };
        send(ws, &payload).await.map_err(|_| End::Reconnect { fresh: false, reason: "send failed", code: None })
    }

    fn heartbeat(&self) -> Value {
        json!({"op": 1, "d": self.session.as_ref().map(|s| s.seq)})
    }

    /// Whether another command fits in Discord's 120 sends a minute.
    fn command_allowed(&mut self) -> bool {
        let now = Instant::now();
        while self.sent_commands.front().is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60)) {
            self.sent_commands.pop_front();
        }
        if self.sent_commands.len() >= COMMANDS_PER_MINUTE {
            tracing::warn!(shard = self.number, "gateway command dropped: 120 sends a minute reached");
            return false;
        }
        self.sent_commands.push_back(now);
        true
    }

    fn closed(&self, code: Option<u16>) -> End {
        if let Some(advice) = code.and_then(fatal_close_advice) {
            tracing::error!(shard = self.number, code, "{advice}");
            return End::Fatal(FatalClose { code: code.unwrap_or(0), advice });
        }
        // 4007 (invalid sequence) and 4009 (session timed out) cannot be resumed.
        let fresh = matches!(code, Some(4007 | 4009));
        End::Reconnect { fresh, reason: "closed by the gateway", code }
    }

    async fn frame(&mut self, ws: &mut Ws, text: &str, live_since: &mut Option<Instant>) -> Frame {
        let Ok(envelope) = serde_json::from_str::<Envelope<'_>>(text) else {
            tracing::warn!(shard = self.number, "gateway frame is not JSON; ignored");
            return Frame::Continue;
        };
        match envelope.op {
            0 => {
                let seq = envelope.s.unwrap_or(0);
                tracing::debug!(shard = self.number, seq, event = envelope.t, "dispatch");
                match envelope.t {
                    Some("READY") => {
                        let ready: ReadyData =
                            envelope.d.and_then(|d| serde_json::from_str(d.get()).ok()).unwrap_or_default();
                        self.session =
                            Some(Session { id: ready.session_id, seq, resume_url: ready.resume_gateway_url });
                        self.gw.status.set(self.number, ShardState::Ready);
                        *live_since = Some(Instant::now());
                    }
                    Some("RESUMED") => {
                        self.gw.status.set(self.number, ShardState::Resumed);
                        *live_since = Some(Instant::now());
                    }
                    _ => {}
                }
                if let Some(s) = &mut self.session {
                    s.seq = s.seq.max(seq);
                }
                let started = matches!(envelope.t, Some("READY" | "RESUMED"));
                let routed = self.route(ws, text.to_owned(), seq).await;
                if started {
                    // Stored at once: a process killed a moment after connecting must still resume.
                    self.save_session(true).await;
                }
                routed
            }
            1 => Frame::BeatNow,
            7 => {
                close(ws, RESUMABLE).await;
                Frame::End(End::Reconnect { fresh: false, reason: "RECONNECT requested", code: None })
            }
            9 => {
                let resumable = envelope.d.is_some_and(|d| d.get() == "true");
                // Discord asks for a random wait of 1-5 s before identifying again.
                let wait = Duration::from_millis(1000 + rand::random::<u64>() % 4000);
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = self.shutdown.cancelled() => return Frame::End(End::Shutdown),
                }
                close(ws, RESUMABLE).await;
                Frame::End(End::Reconnect { fresh: !resumable, reason: "INVALID_SESSION", code: None })
            }
            11 => Frame::Ack,
            _ => Frame::Continue,
        }
    }

    /// Hands a dispatch to the router in the pipeline. A full pipeline while
    /// the queue works is flow control: wait for a slot. A full pipeline while
    /// enqueueing fails is backpressure: end the connection resumably and read
    /// nothing until den can take events again (Discord replays the rest).
    async fn route(&mut self, ws: &mut Ws, text: String, seq: u64) -> Frame {
        let mut backpressure = false;
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) if self.gw.router.enqueue_failing_for().is_none() => {
                match self.permits.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => return Frame::End(End::Shutdown),
                }
            }
            Err(_) => {
                backpressure = true;
                close(ws, RESUMABLE).await;
                if !self.wait_for_room().await {
                    return Frame::End(End::Shutdown);
                }
                match self.permits.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => return Frame::End(End::Shutdown),
                }
            }
        };
        self.in_flight.lock().unwrap_or_else(PoisonError::into_inner).start(seq);
        self.spawn_route(text, seq, permit);
        if backpressure { Frame::End(End::Backpressure) } else { Frame::Continue }
    }

    fn spawn_route(&mut self, text: String, seq: u64, permit: OwnedSemaphorePermit) {
        let (router, egress, in_flight) = (self.gw.router.clone(), self.gw.egress.clone(), self.in_flight.clone());
        let stop = self.shutdown.clone();
        self.routing.spawn(async move {
            let mut attempt = 0;
            loop {
                if router.on_gateway_payload(&text, &egress).await != Routed::NotEnqueued {
                    break;
                }
                attempt += 1;
                tokio::select! {
                    () = tokio::time::sleep(ENQUEUE_RETRY.delay(attempt)) => {}
                    // Not finished: the stored sequence stays below it, and the next start replays it.
                    () = stop.cancelled() => return,
                }
            }
            in_flight.lock().unwrap_or_else(PoisonError::into_inner).finish(seq);
            drop(permit);
        });
    }

    /// Stores the session up to the watermark, at most once per second unless `now`.
    async fn save_session(&mut self, now: bool) {
        if !now && self.last_save.elapsed() < SESSION_SAVE_EVERY {
            return;
        }
        self.last_save = Instant::now();
        let Some(session) = &self.session else { return };
        let mark = self.in_flight.lock().unwrap_or_else(PoisonError::into_inner).watermark(session.seq);
        if mark == self.saved_seq && !now {
            return;
        }
        let mut attrs = serde_json::Map::new();
        attrs.insert("id".into(), session.id.clone().into());
        attrs.insert("seq".into(), mark.into());
        if let Some(url) = &session.resume_url {
            attrs.insert("resume_url".into(), url.clone().into());
        }
        // Sessions die a while after their connection does; an old one only costs a failed RESUME.
        let expires = den_core::Clock::now(&den_core::SystemClock).plus(Duration::from_secs(24 * 3600));
        let put = den_storage::Put::new(self.key.clone(), "session", attrs).expires_at(expires);
        match self.gw.sessions.put(put).await {
            Ok(_) => self.saved_seq = mark,
            Err(e) => tracing::warn!(shard = self.number, error = %e, "could not store the gateway session"),
        }
    }

    /// Lets events being routed finish (for a while), then records where to resume.
    async fn drain(&mut self) {
        let deadline = Instant::now() + DRAIN;
        while !self.routing.is_empty() {
            match tokio::time::timeout_at(deadline, self.routing.join_next()).await {
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!(
                        shard = self.number,
                        pending = self.routing.len(),
                        "events not yet enqueued at shutdown; they are replayed on the next start"
                    );
                    self.routing.abort_all();
                    break;
                }
            }
        }
        self.save_session(true).await;
    }
}

/// What a frame asks of the connection loop.
enum Frame {
    Continue,
    Ack,
    BeatNow,
    End(End),
}

#[derive(Default, Deserialize)]
struct ReadyData {
    #[serde(default)]
    session_id: String,
    #[serde(default)]
    resume_gateway_url: Option<String>,
}

async fn load_session(sessions: &dyn den_storage::Table, key: &str) -> Option<Session> {
    let saved = sessions.get(key, "session").await.ok()??;
    let id = saved.attrs.get("id").and_then(Value::as_str)?.to_owned();
    let seq = saved.attrs.get("seq").and_then(Value::as_u64)?;
    let resume_url = saved.attrs.get("resume_url").and_then(Value::as_str).map(str::to_owned);
    tracing::info!(shard = key, seq, "found a stored gateway session to resume");
    Some(Session { id, seq, resume_url })
}

async fn connect(url: &str) -> Result<Ws, tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let mut request = url.into_client_request()?;
    request
        .headers_mut()
        .insert("user-agent", tokio_tungstenite::tungstenite::http::HeaderValue::from_static(USER_AGENT));
    let (ws, _) =
        tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(request)).await.map_err(|_| {
            tungstenite::Error::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))
        })??;
    Ok(ws)
}

/// Reads HELLO; its heartbeat interval.
async fn hello(ws: &mut Ws) -> Result<Duration, End> {
    loop {
        match ws.next().await {
            Some(Ok(WsMessage::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                if v["op"] == 10 {
                    let ms = v["d"]["heartbeat_interval"].as_u64().unwrap_or(41_250).clamp(100, 600_000);
                    return Ok(Duration::from_millis(ms));
                }
            }
            Some(Ok(WsMessage::Close(frame))) => {
                let code = frame.map(|f| u16::from(f.code));
                if let Some(advice) = code.and_then(fatal_close_advice) {
                    return Err(End::Fatal(FatalClose { code: code.unwrap_or(0), advice }));
                }
                return Err(End::Reconnect {
                    fresh: matches!(code, Some(4007 | 4009)),
                    reason: "closed before HELLO",
                    code,
                });
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => {
                return Err(End::Reconnect { fresh: false, reason: "closed before HELLO", code: None });
            }
        }
    }
}

async fn send(ws: &mut Ws, payload: &Value) -> Result<(), tungstenite::Error> {
    ws.send(WsMessage::Text(payload.to_string().into())).await
}

async fn close(ws: &mut Ws, code: u16) {
    let frame = CloseFrame { code: CloseCode::from(code), reason: "".into() };
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(Some(frame))).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_sequence_never_passes_an_event_still_being_routed() {
        let mut f = InFlight::default();
        assert_eq!(f.watermark(10), 10, "nothing in flight: everything up to the latest is done");
        f.start(11);
        f.start(12);
        f.start(12);
        assert_eq!(f.watermark(12), 10);
        f.finish(11);
        assert_eq!(f.watermark(12), 11);
        f.finish(12);
        assert_eq!(f.watermark(12), 11, "one of the two frames at 12 is still routing");
        f.finish(12);
        assert_eq!(f.watermark(12), 12);
    }
}
