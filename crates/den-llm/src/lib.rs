//! den's language models.
//!
//! A [`ChatModel`] turns a [`ChatRequest`] into a stream of text deltas that
//! ends with token usage and a finish reason. Dropping the stream cancels the
//! request. Providers: [`anthropic::Anthropic`] (Messages API) and
//! [`openai::OpenAiCompatible`] (LiteLLM, Ollama, vLLM, llama.cpp server,
//! OpenRouter, OpenAI), and with the `aws` feature `bedrock::Bedrock`
//! (AWS Bedrock's ConverseStream).
//!
//! A request may offer tools ([`ToolSpec`]); a model that calls one streams
//! a whole [`ToolCall`] and finishes with [`FinishReason::ToolUse`]; the
//! caller runs it and sends a [`ToolResult`] back in the next user message.

pub mod anthropic;
#[cfg(feature = "aws")]
pub mod bedrock;
pub mod ledger;
pub mod openai;
pub mod resilience;
mod sse;
pub mod tools;

use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::Stream;
use serde::{Deserialize, Serialize};
pub use tools::{ToolCall, ToolResult, ToolSpec};

/// Who said a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A person (or anything that is not the model).
    User,
    /// The model.
    Assistant,
}

/// One message of the conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who said it.
    pub role: Role,
    /// The speaker's name, in multi-person conversations.
    pub name: Option<String>,
    /// The text.
    pub content: String,
    /// The model's calls (assistant messages).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// Results of the previous message's calls (user messages), one per call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_results: Vec<ToolResult>,
}

impl ChatMessage {
    /// A user message.
    #[must_use]
    pub fn user(name: Option<&str>, content: impl Into<String>) -> Self {
        Self { role: Role::User, name: name.map(str::to_owned), content: content.into(), ..Self::empty() }
    }

    /// A model message.
    #[must_use]
    pub fn assistant(content: impl Into<String>) -> Self {
        Self { role: Role::Assistant, content: content.into(), ..Self::empty() }
    }

    /// A model message that called tools (with what it said first, maybe nothing).
    #[must_use]
    pub fn assistant_calls(content: impl Into<String>, calls: Vec<ToolCall>) -> Self {
        Self { role: Role::Assistant, content: content.into(), tool_calls: calls, ..Self::empty() }
    }

    /// The results of the model's calls, as the next user message.
    #[must_use]
    pub fn results(results: Vec<ToolResult>) -> Self {
        Self { role: Role::User, tool_results: results, ..Self::empty() }
    }

    fn empty() -> Self {
        Self { role: Role::User, name: None, content: String::new(), tool_calls: Vec::new(), tool_results: Vec::new() }
    }

    /// Whether it carries tool calls or results.
    #[must_use]
    pub fn has_tools(&self) -> bool {
        !self.tool_calls.is_empty() || !self.tool_results.is_empty()
    }
}

/// What to ask a model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// Instructions (persona, rules); providers that cache prompts cache this.
    pub system: String,
    /// The conversation, oldest first.
    pub messages: Vec<ChatMessage>,
    /// Most tokens to generate.
    pub max_tokens: u32,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Stop sequences.
    pub stop: Vec<String>,
    /// A model other than the provider's default.
    pub model: Option<String>,
    /// Tools the model may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolSpec>,
}

impl ChatRequest {
    /// A request with `system` and one user message.
    #[must_use]
    pub fn simple(system: impl Into<String>, user: impl Into<String>) -> Self {
        Self {
            system: system.into(),
            messages: vec![ChatMessage::user(None, user)],
            max_tokens: 256,
            temperature: None,
            stop: vec![],
            model: None,
            tools: vec![],
        }
    }

    /// Whether tools are offered or were used in the conversation: the
    /// providers then send structured turns instead of plain text.
    #[must_use]
    pub fn uses_tools(&self) -> bool {
        !self.tools.is_empty() || self.messages.iter().any(ChatMessage::has_tools)
    }
}

/// Tokens a call used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Generated tokens.
    pub output_tokens: u64,
    /// Prompt tokens served from the provider's cache.
    pub cache_read_tokens: u64,
}

/// Why generation stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FinishReason {
    /// The model finished.
    Stop,
    /// `max_tokens` was reached.
    Length,
    /// A stop sequence was produced.
    StopSequence,
    /// The provider refused (content filter).
    Refused,
    /// The model called tools and waits for their results.
    ToolUse,
    /// Something else the provider said.
    Other(String),
}

/// One item of a response stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEvent {
    /// More text.
    Delta(String),
    /// A whole tool call (its input assembled from the pieces streamed).
    ToolCall(ToolCall),
    /// The end: usage and why it stopped. Always the last item of a successful stream.
    Done {
        /// Tokens used.
        usage: Usage,
        /// Why it stopped.
        finish: FinishReason,
    },
}

/// A response stream; drop it to cancel the request.
pub type ChatStream = Pin<Box<dyn Stream<Item = Result<StreamEvent, LlmError>> + Send>>;

/// What went wrong calling a model.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LlmErrorKind {
    /// 429: slow down; `retry_after` when the provider said.
    RateLimited {
        /// The provider's `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// 5xx or an overloaded provider.
    Server,
    /// No answer in time (connect, first token or total).
    Timeout,
    /// The stream ended or broke before its end event.
    BrokenStream,
    /// The provider sent something den cannot read.
    Malformed,
    /// 401/403: the key is wrong or lacks access.
    Unauthorized,
    /// Another 4xx: the request itself is wrong; retrying will not help.
    BadRequest,
    /// The connection failed.
    Transport,
    /// den is not calling this provider now (circuit open, budget spent).
    Unavailable,
}

impl LlmErrorKind {
    /// Whether trying again later may succeed.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::RateLimited { .. } | Self::Server | Self::Timeout | Self::BrokenStream | Self::Transport)
    }
}

/// An error from a model call. Its text never contains the API key.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{provider}: {message}")]
pub struct LlmError {
    kind: LlmErrorKind,
    provider: String,
    message: String,
}

impl LlmError {
    /// A new error.
    pub fn new(kind: LlmErrorKind, provider: impl Into<String>, message: impl Into<String>) -> Self {
        Self { kind, provider: provider.into(), message: message.into() }
    }

    /// What kind of error.
    #[must_use]
    pub fn kind(&self) -> &LlmErrorKind {
        &self.kind
    }

    /// The provider's name.
    #[must_use]
    pub fn provider(&self) -> &str {
        &self.provider
    }
}

/// A language model that streams.
#[async_trait]
pub trait ChatModel: Send + Sync {
    /// The provider's name, for logs and metrics.
    fn name(&self) -> &str;

    /// Starts a completion. Errors before the first token come from here;
    /// errors after it come through the stream.
    async fn stream(&self, request: &ChatRequest) -> Result<ChatStream, LlmError>;
}

/// Reads a whole stream into its text, usage and finish reason (tool calls are left out: see [`collect_turn`]).
pub async fn collect(stream: ChatStream) -> Result<(String, Usage, FinishReason), LlmError> {
    let turn = collect_turn(stream).await?;
    Ok((turn.text, turn.usage, turn.finish))
}

/// A whole answer: what the model said, the tools it called, and how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Turn {
    /// The text.
    pub text: String,
    /// Tool calls, in the order they came.
    pub calls: Vec<ToolCall>,
    /// Tokens used.
    pub usage: Usage,
    /// Why it stopped.
    pub finish: FinishReason,
}

/// Reads a whole stream into a [`Turn`].
pub async fn collect_turn(mut stream: ChatStream) -> Result<Turn, LlmError> {
    use futures_util::StreamExt as _;
    let mut text = String::new();
    let mut calls = Vec::new();
    while let Some(event) = stream.next().await {
        match event? {
            StreamEvent::Delta(d) => text.push_str(&d),
            StreamEvent::ToolCall(c) => calls.push(c),
            StreamEvent::Done { usage, finish } => return Ok(Turn { text, calls, usage, finish }),
        }
    }
    Err(LlmError::new(LlmErrorKind::BrokenStream, "stream", "ended without a final event"))
}

/// Maps an HTTP error status to a kind.
pub(crate) fn status_kind(status: u16, retry_after: Option<Duration>) -> LlmErrorKind {
    match status {
        429 => LlmErrorKind::RateLimited { retry_after },
        401 | 403 => LlmErrorKind::Unauthorized,
        408 => LlmErrorKind::Timeout,
        500..=599 => LlmErrorKind::Server,
        _ => LlmErrorKind::BadRequest,
    }
}

/// The `Retry-After` of a response, in seconds.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<f64>().ok().filter(|s| s.is_finite() && *s >= 0.0).map(|s| Duration::from_secs_f64(s.min(3600.0)))
}

/// A client for providers: rustls with ring, no system proxy surprises.
pub(crate) fn http_client(connect_timeout: Duration) -> Result<reqwest::Client, LlmError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| LlmError::new(LlmErrorKind::Transport, "http", e.to_string()))
}

/// Turns a failed response into an error with the provider's message (never the key).
pub(crate) async fn error_from_response(provider: &str, response: reqwest::Response) -> LlmError {
    let status = response.status().as_u16();
    let after = retry_after(response.headers());
    let body = response.text().await.unwrap_or_default();
    let detail = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            v["error"]["message"].as_str().or(v["error"].as_str()).or(v["message"].as_str()).map(str::to_owned)
        })
        .unwrap_or_else(|| body.chars().take(200).collect());
    LlmError::new(status_kind(status, after), provider, format!("HTTP {status}: {detail}"))
}

/// How a provider is reached.
#[derive(Clone, Debug)]
pub struct ProviderConfig {
    /// Name for logs and metrics (`anthropic`, `litellm`, `ollama`...).
    pub name: String,
    /// Base URL: `https://api.anthropic.com`, or an OpenAI-compatible `.../v1`.
    pub base_url: String,
    /// API key, when the provider wants one.
    pub api_key: Option<den_core::Secret>,
    /// Default model.
    pub model: String,
    /// Extra headers sent with every request (OpenRouter's `HTTP-Referer`, LiteLLM tags...).
    pub extra_headers: Vec<(String, String)>,
    /// Longest wait for a connection.
    pub connect_timeout: Duration,
}

/// Text of a message as the model sees it: a named speaker's name first, so
/// every provider, whatever it does with names, knows who said what.
pub(crate) fn spoken(m: &ChatMessage) -> String {
    match (&m.role, &m.name) {
        (Role::User, Some(name)) => format!("{name}: {}", m.content),
        _ => m.content.clone(),
    }
}

/// The conversation as alternating turns that start with the user, which
/// Anthropic, Bedrock and chat templates of small local models require:
/// consecutive messages of one role are joined, a named speaker's name leads
/// their text, and a conversation that starts with the model gets a short
/// user turn first.
#[must_use]
pub fn alternating_turns(messages: &[ChatMessage]) -> Vec<(Role, String)> {
    let mut turns: Vec<(Role, String)> = Vec::new();
    for m in messages {
        let text = spoken(m);
        match turns.last_mut() {
            Some((role, acc)) if *role == m.role => {
                acc.push('\n');
                acc.push_str(&text);
            }
            _ => turns.push((m.role, text)),
        }
    }
    if turns.first().is_none_or(|(role, _)| *role == Role::Assistant) {
        turns.insert(0, (Role::User, "(the conversation continues)".to_owned()));
    }
    turns
}

/// Sends a streaming request and yields its server-sent events as JSON:
/// a broken transport is a `BrokenStream` error, data that is not JSON a
/// `Malformed` one, and OpenAI's `[DONE]` ends the stream.
pub(crate) async fn open_events(
    provider: &str,
    request: reqwest::RequestBuilder,
    extra_headers: &[(String, String)],
) -> Result<impl futures_util::Stream<Item = Result<serde_json::Value, LlmError>> + Send + 'static, LlmError> {
    use futures_util::StreamExt as _;
    let mut request = request;
    for (k, v) in extra_headers {
        request = request.header(k.as_str(), v.as_str());
    }
    let response = request.send().await.map_err(|e| {
        let kind = if e.is_timeout() { LlmErrorKind::Timeout } else { LlmErrorKind::Transport };
        // reqwest's message names the URL, never headers: the key stays out.
        LlmError::new(kind, provider, format!("cannot reach the provider: {e}"))
    })?;
    if !response.status().is_success() {
        return Err(error_from_response(provider, response).await);
    }
    let name = provider.to_owned();
    Ok(sse::events(response.bytes_stream())
        .take_while(|e| std::future::ready(!matches!(e, Ok(ev) if ev.data == "[DONE]")))
        .map(move |event| match event {
            Err(e) => Err(LlmError::new(LlmErrorKind::BrokenStream, name.clone(), e)),
            Ok(ev) => serde_json::from_str(&ev.data).map_err(|_| {
                let head: String = ev.data.chars().take(80).collect();
                LlmError::new(LlmErrorKind::Malformed, name.clone(), format!("unreadable event: {head}"))
            }),
        }))
}

/// Runs `pump` on its own task, forwarding its events; the stream ends when
/// `pump` returns, and dropping the stream stops `pump` (cancelling the request).
pub(crate) fn channel_stream<F, Fut>(pump: F) -> ChatStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<StreamEvent, LlmError>>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let closed = tx.clone();
    let fut = pump(tx);
    tokio::spawn(async move {
        tokio::select! {
            () = fut => {}
            () = closed.closed() => {}
        }
    });
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }))
}
