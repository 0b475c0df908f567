//! Fake LLM servers on 127.0.0.1 speaking Anthropic's Messages API or the
//! OpenAI-compatible chat-completions API (server-sent events), or AWS
//! Bedrock's ConverseStream (the AWS event-stream binary framing).
//!
//! Tests script replies (text, time to first token, tokens per second) and
//! faults (429 with Retry-After, 500, a hang, a stream cut mid-way, malformed
//! events), and read back every request to assert on prompts.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// Which API the fake speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// `POST /v1/messages`.
    Anthropic,
    /// `POST /v1/chat/completions`.
    OpenAi,
    /// `POST /model/{model}/converse-stream`; the "API key" is the AWS access
    /// key id the request must be signed with (the signature is not checked).
    Bedrock,
}

/// A failure to inject.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// 429 with this `Retry-After` (seconds).
    RateLimited(u64),
    /// An HTTP error status, such as 500 or 400.
    Status(u16),
    /// Headers, then nothing: the first token never comes.
    Hang,
    /// The stream stops after this many tokens, without its final events.
    CutAfter(usize),
    /// An event whose data is not JSON.
    Malformed,
}

/// One scripted answer.
#[derive(Clone, Debug)]
pub struct Script {
    /// The reply text.
    pub reply: String,
    /// Delay before the first token.
    pub time_to_first_token: Duration,
    /// Pace of the following tokens (0 = as fast as possible).
    pub tokens_per_sec: f64,
    /// A failure instead of (or in the middle of) the reply.
    pub fault: Option<Fault>,
    /// Makes the reply from the request's JSON body instead of `reply`.
    pub reply_from: Option<fn(&Value) -> String>,
    /// Tools called after the reply, by name and input; the answer then
    /// finishes as the wire format says a tool call does. Each input is sent
    /// in two pieces cut mid-JSON, as providers stream it.
    pub tool_calls: Vec<(String, Value)>,
}

impl Script {
    /// A reply sent as fast as possible.
    #[must_use]
    pub fn reply(text: &str) -> Self {
        Self {
            reply: text.into(),
            time_to_first_token: Duration::ZERO,
            tokens_per_sec: 0.0,
            fault: None,
            reply_from: None,
            tool_calls: Vec::new(),
        }
    }

    /// An answer that says `text` (maybe nothing), then calls `tool` with `input`.
    #[must_use]
    pub fn call(text: &str, tool: &str, input: Value) -> Self {
        Self { tool_calls: vec![(tool.to_owned(), input)], ..Self::reply(text) }
    }

    /// Adds another tool call.
    #[must_use]
    pub fn and_call(mut self, tool: &str, input: Value) -> Self {
        self.tool_calls.push((tool.to_owned(), input));
        self
    }

    /// A reply made from each request's JSON body (so that answers can be told apart).
    #[must_use]
    pub fn from_request(make: fn(&Value) -> String) -> Self {
        Self { reply_from: Some(make), ..Self::reply("") }
    }

    /// A failure.
    #[must_use]
    pub fn fault(fault: Fault) -> Self {
        Self { fault: Some(fault), ..Self::reply("partial answer that will be cut off here") }
    }

    /// The same reply, failing with `fault` (a stream cut after some tokens, say).
    #[must_use]
    pub fn with_fault(mut self, fault: Fault) -> Self {
        self.fault = Some(fault);
        self
    }

    /// Sets the time to first token.
    #[must_use]
    pub fn ttft(mut self, d: Duration) -> Self {
        self.time_to_first_token = d;
        self
    }

    /// Sets the token rate.
    #[must_use]
    pub fn rate(mut self, tokens_per_sec: f64) -> Self {
        self.tokens_per_sec = tokens_per_sec;
        self
    }
}

/// A request the fake received.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// The request path (Bedrock names the model there).
    pub path: String,
    /// The JSON body.
    pub body: Value,
    /// Whether it carried the expected API key.
    pub authorized: bool,
}

struct LlmState {
    wire: Wire,
    api_key: Option<String>,
    scripts: Mutex<VecDeque<Script>>,
    default: Mutex<Script>,
    requests: Mutex<Vec<RecordedRequest>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A running fake LLM server.
pub struct FakeLlm {
    addr: SocketAddr,
    state: Arc<LlmState>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for FakeLlm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeLlm").field("addr", &self.addr).field("wire", &self.state.wire).finish()
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeLlm {
    /// Starts a fake that expects `api_key` (any key when `None`).
    pub async fn start(wire: Wire, api_key: Option<&str>) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(LlmState {
            wire,
            api_key: api_key.map(str::to_owned),
            scripts: Mutex::default(),
            default: Mutex::new(Script::reply("Hello from the fake model.")),
            requests: Mutex::default(),
        });
        let path = match wire {
            Wire::Anthropic => "/v1/messages",
            Wire::OpenAi => "/v1/chat/completions",
            Wire::Bedrock => "/model/{model}/converse-stream",
        };
        let app = axum::Router::new().route(path, post(handle)).with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, state, task })
    }

    /// The base URL a provider is configured with.
    #[must_use]
    pub fn base_url(&self) -> String {
        match self.state.wire {
            Wire::Anthropic | Wire::Bedrock => format!("http://{}", self.addr),
            Wire::OpenAi => format!("http://{}/v1", self.addr),
        }
    }

    /// Queues a scripted answer for the next request.
    pub fn push(&self, script: Script) {
        lock(&self.state.scripts).push_back(script);
    }

    /// The answer used when no script is queued.
    pub fn set_default(&self, script: Script) {
        *lock(&self.state.default) = script;
    }

    /// Every request so far.
    #[must_use]
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state.requests).clone()
    }
}

fn tokens(text: &str) -> Vec<String> {
    // Words with their trailing space: close enough to tokens for pacing and counting.
    text.split_inclusive(' ').map(str::to_owned).collect()
}

fn words(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.split_whitespace().count() as u64,
        Value::Array(a) => a.iter().map(words).sum(),
        Value::Object(o) => o
            .iter()
            .filter(|(k, _)| matches!(k.as_str(), "content" | "text" | "system" | "messages"))
            .map(|(_, v)| words(v))
            .sum(),
        _ => 0,
    }
}

async fn handle(State(state): State<Arc<LlmState>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let presented = match state.wire {
        Wire::Anthropic => header("x-api-key"),
        Wire::OpenAi => header("authorization").and_then(|a| a.strip_prefix("Bearer ").map(str::to_owned)),
        Wire::Bedrock => header("authorization").and_then(|a| {
            let scope = a.strip_prefix("AWS4-HMAC-SHA256 Credential=")?;
            scope.split('/').next().map(str::to_owned)
        }),
    };
    let authorized = state.api_key.as_ref().is_none_or(|k| presented.as_deref() == Some(k.as_str()));
    let Ok(json) = serde_json::from_slice::<Value>(&body) else {
        return error(state.wire, 400, "invalid_request_error", "body is not JSON");
    };
    lock(&state.requests).push(RecordedRequest { path: uri.path().to_owned(), body: json.clone(), authorized });
    if !authorized {
        return error(state.wire, 401, "authentication_error", "invalid x-api-key");
    }
    let mut script = lock(&state.scripts).pop_front().unwrap_or_else(|| lock(&state.default).clone());
    if let Some(make) = script.reply_from {
        script.reply = make(&json);
    }
    match &script.fault {
        Some(Fault::RateLimited(secs)) => {
            let mut r = error(state.wire, 429, "rate_limit_error", "rate limited");
            r.headers_mut().insert(
                "retry-after",
                secs.to_string().parse().unwrap_or_else(|_| axum::http::HeaderValue::from_static("1")),
            );
            return r;
        }
        Some(Fault::Status(status)) => return error(state.wire, *status, "api_error", "injected failure"),
        _ => {}
    }
    let input_tokens = words(&json);
    let wire = state.wire;
    let stream = futures_util::stream::unfold(Plan::new(script, input_tokens), move |mut plan| async move {
        plan.next(wire).await.map(|chunk| (Ok::<Bytes, Infallible>(Bytes::from(chunk)), plan))
    });
    let content_type = match wire {
        Wire::Bedrock => "application/vnd.amazon.eventstream",
        _ => "text/event-stream",
    };
    ([("content-type", content_type), ("cache-control", "no-cache")], Body::from_stream(stream)).into_response()
}

fn error(wire: Wire, status: u16, kind: &str, message: &str) -> Response {
    let body = match wire {
        Wire::Anthropic => json!({"type": "error", "error": {"type": kind, "message": message}}),
        Wire::OpenAi => json!({"error": {"message": message, "type": kind, "code": status}}),
        Wire::Bedrock => json!({"message": message}),
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, axum::Json(body)).into_response();
    if wire == Wire::Bedrock {
        let exception = match status.as_u16() {
            429 => "ThrottlingException",
            401 | 403 => "UnrecognizedClientException",
            503 => "ServiceUnavailableException",
            500..=599 => "InternalServerException",
            _ => "ValidationException",
        };
        response.headers_mut().insert("x-amzn-errortype", axum::http::HeaderValue::from_static(exception));
    }
    response
}

/// One message of the AWS event-stream framing: a prelude (total length,
/// headers length, CRC-32 of both), string headers, the payload, and a CRC-32
/// of everything before it.
fn event_frame(event_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut headers = Vec::new();
    for (name, value) in
        [(":event-type", event_type), (":content-type", "application/json"), (":message-type", "event")]
    {
        headers.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
        headers.extend_from_slice(name.as_bytes());
        headers.push(7); // string
        headers.extend_from_slice(&u16::try_from(value.len()).unwrap_or(u16::MAX).to_be_bytes());
        headers.extend_from_slice(value.as_bytes());
    }
    let total = 12 + headers.len() + payload.len() + 4;
    let mut frame = Vec::with_capacity(total);
    frame.extend_from_slice(&u32::try_from(total).unwrap_or(u32::MAX).to_be_bytes());
    frame.extend_from_slice(&u32::try_from(headers.len()).unwrap_or(u32::MAX).to_be_bytes());
    frame.extend_from_slice(&crc32fast::hash(&frame).to_be_bytes());
    frame.extend_from_slice(&headers);
    frame.extend_from_slice(payload);
    frame.extend_from_slice(&crc32fast::hash(&frame).to_be_bytes());
    frame
}

fn bedrock_event(event_type: &str, payload: &Value) -> Vec<u8> {
    event_frame(event_type, payload.to_string().as_bytes())
}

/// Where a scripted stream is.
struct Plan {
    script: Script,
    tokens: Vec<String>,
    sent: usize,
    stage: u8,
    input_tokens: u64,
}

impl Plan {
    /// Bedrock's last two events: messageStop with `stop_reason`, then metadata with usage.
    fn bedrock_end(&self, stop_reason: &str, out: u64) -> Vec<u8> {
        let mut frames = bedrock_event("messageStop", &json!({"stopReason": stop_reason}));
        frames.extend(bedrock_event(
            "metadata",
            &json!({"usage": {"inputTokens": self.input_tokens, "outputTokens": out,
                "totalTokens": self.input_tokens + out}, "metrics": {"latencyMs": 1}}),
        ));
        frames
    }

    /// The scripted tool calls and the end of the answer, in `wire`'s format.
    fn tool_call_frames(&self, wire: Wire, out: u64) -> Vec<u8> {
        let calls: Vec<(String, &String, String)> = self
            .script
            .tool_calls
            .iter()
            .enumerate()
            .map(|(i, (name, input))| (format!("call_{}_{i}", self.input_tokens), name, input.to_string()))
            .collect();
        let halves = |json: &str| {
            let cut = json.char_indices().map(|(i, _)| i).nth(json.chars().count() / 2).unwrap_or(0);
            [json[..cut].to_owned(), json[cut..].to_owned()]
        };
        match wire {
            Wire::Anthropic => {
                let mut text =
                    Self::sse(Some("content_block_stop"), &json!({"type": "content_block_stop", "index": 0}));
                for (i, (id, name, input)) in calls.iter().enumerate() {
                    let index = i + 1;
                    let block = json!({"type": "tool_use", "id": id, "name": name, "input": {}});
                    text += &Self::sse(
                        Some("content_block_start"),
                        &json!({"type": "content_block_start", "index": index, "content_block": block}),
                    );
                    for piece in halves(input) {
                        let delta = json!({"type": "input_json_delta", "partial_json": piece});
                        text += &Self::sse(
                            Some("content_block_delta"),
                            &json!({"type": "content_block_delta", "index": index, "delta": delta}),
                        );
                    }
                    text +=
                        &Self::sse(Some("content_block_stop"), &json!({"type": "content_block_stop", "index": index}));
                }
                text += &Self::sse(
                    Some("message_delta"),
                    &json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": out}}),
                );
                (text + &Self::sse(Some("message_stop"), &json!({"type": "message_stop"}))).into_bytes()
            }
            Wire::OpenAi => {
                let mut text = String::new();
                for (i, (id, name, input)) in calls.iter().enumerate() {
                    let start =
                        json!({"index": i, "id": id, "type": "function", "function": {"name": name, "arguments": ""}});
                    text += &Self::sse(None, &json!({"choices": [{"index": 0, "delta": {"tool_calls": [start]}}]}));
                    for piece in halves(input) {
                        let more = json!({"index": i, "function": {"arguments": piece}});
                        text += &Self::sse(None, &json!({"choices": [{"index": 0, "delta": {"tool_calls": [more]}}]}));
                    }
                }
                text +=
                    &Self::sse(None, &json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}));
                text += &Self::sse(
                    None,
                    &json!({"choices": [], "usage": {"prompt_tokens": self.input_tokens, "completion_tokens": out}}),
                );
                (text + "data: [DONE]\n\n").into_bytes()
            }
            Wire::Bedrock => {
                let mut frames = bedrock_event("contentBlockStop", &json!({"contentBlockIndex": 0}));
                for (i, (id, name, input)) in calls.iter().enumerate() {
                    let index = i + 1;
                    frames.extend(bedrock_event(
                        "contentBlockStart",
                        &json!({"contentBlockIndex": index, "start": {"toolUse": {"toolUseId": id, "name": name}}}),
                    ));
                    for piece in halves(input) {
                        frames.extend(bedrock_event(
                            "contentBlockDelta",
                            &json!({"contentBlockIndex": index, "delta": {"toolUse": {"input": piece}}}),
                        ));
                    }
                    frames.extend(bedrock_event("contentBlockStop", &json!({"contentBlockIndex": index})));
                }
                frames.extend(self.bedrock_end("tool_use", out));
                frames
            }
        }
    }

    fn new(script: Script, input_tokens: u64) -> Self {
        let tokens = tokens(&script.reply);
        Self { script, tokens, sent: 0, stage: 0, input_tokens }
    }

    fn sse(event: Option<&str>, data: &Value) -> String {
        match event {
            Some(e) => format!("event: {e}\ndata: {data}\n\n"),
            None => format!("data: {data}\n\n"),
        }
    }

    async fn next(&mut self, wire: Wire) -> Option<Vec<u8>> {
        // Stage 0: the opening event (after the time to first token).
        if self.stage == 0 {
            self.stage = 1;
            if self.script.fault == Some(Fault::Hang) {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return None;
            }
            tokio::time::sleep(self.script.time_to_first_token).await;
            if self.script.fault == Some(Fault::Malformed) {
                return Some(match wire {
                    Wire::Bedrock => event_frame("messageStart", b"{this is not json"),
                    _ => b"data: {this is not json\n\n".to_vec(),
                });
            }
            if wire == Wire::Bedrock {
                return Some(bedrock_event("messageStart", &json!({"role": "assistant"})));
            }
            if wire == Wire::Anthropic {
                let start = json!({"type": "message_start", "message": {"id": "msg_fake", "type": "message", "role": "assistant",
                    "content": [], "model": "fake", "usage": {"input_tokens": self.input_tokens, "output_tokens": 1, "cache_read_input_tokens": 0}}});
                return Some(
                    (Self::sse(Some("message_start"), &start)
                        + &Self::sse(
                            Some("content_block_start"),
                            &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                        ))
                    .into_bytes(),
                );
            }
        }
        if self.stage == 1 {
            if let Some(Fault::CutAfter(n)) = self.script.fault
                && self.sent >= n
            {
                return None;
            }
            if self.script.fault == Some(Fault::Malformed) {
                return None;
            }
            if self.sent < self.tokens.len() {
                if self.sent > 0 && self.script.tokens_per_sec > 0.0 {
                    tokio::time::sleep(Duration::from_secs_f64(1.0 / self.script.tokens_per_sec)).await;
                }
                let t = &self.tokens[self.sent];
                self.sent += 1;
                return Some(match wire {
                    Wire::Anthropic => Self::sse(
                        Some("content_block_delta"),
                        &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}}),
                    )
                    .into_bytes(),
                    Wire::OpenAi => Self::sse(
                        None,
                        &json!({"choices": [{"index": 0, "delta": {"content": t}, "finish_reason": null}]}),
                    )
                    .into_bytes(),
                    Wire::Bedrock => {
                        bedrock_event("contentBlockDelta", &json!({"contentBlockIndex": 0, "delta": {"text": t}}))
                    }
                });
            }
            self.stage = 2;
            let out = self.sent as u64;
            if !self.script.tool_calls.is_empty() {
                return Some(self.tool_call_frames(wire, out));
            }
            return Some(match wire {
                Wire::Anthropic => {
                    Self::sse(Some("content_block_stop"), &json!({"type": "content_block_stop", "index": 0}))
                        + &Self::sse(
                            Some("message_delta"),
                            &json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": out}}),
                        )
                        + &Self::sse(Some("message_stop"), &json!({"type": "message_stop"}))
                }
                .into_bytes(),
                Wire::OpenAi => {
                    Self::sse(None, &json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
                        + &Self::sse(
                            None,
                            &json!({"choices": [], "usage": {"prompt_tokens": self.input_tokens, "completion_tokens": out, "total_tokens": self.input_tokens + out}}),
                        )
                        + "data: [DONE]\n\n"
                }
                .into_bytes(),
                Wire::Bedrock => {
                    let mut frames = bedrock_event("contentBlockStop", &json!({"contentBlockIndex": 0}));
                    frames.extend(self.bedrock_end("end_turn", out));
                    frames
                }
            });
        }
        None
    }
}
