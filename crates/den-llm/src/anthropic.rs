//! Anthropic's Messages API, streaming, with the system prompt cached.

use async_trait::async_trait;
use futures_util::StreamExt as _;
use serde_json::{Value, json};

use crate::{
    ChatModel, ChatRequest, ChatStream, FinishReason, LlmError, LlmErrorKind, ProviderConfig, Role, StreamEvent, Usage,
    alternating_turns, channel_stream, http_client, open_events,
};

/// The API version den speaks.
pub const API_VERSION: &str = "2023-06-01";

/// The Anthropic provider.
#[derive(Debug)]
pub struct Anthropic {
    config: ProviderConfig,
    http: reqwest::Client,
}

impl Anthropic {
    /// A provider reached as `config` says (base URL `https://api.anthropic.com`).
    pub fn new(config: ProviderConfig) -> Result<Self, LlmError> {
        let http = http_client(config.connect_timeout)?;
        Ok(Self { config, http })
    }

    /// The request body; messages alternate and start with the user.
    fn body(&self, r: &ChatRequest) -> Value {
        let turns = alternating_turns(&r.messages);
        let messages: Vec<Value> = turns
            .into_iter()
            .map(|(role, text)| json!({"role": if role == Role::User { "user" } else { "assistant" }, "content": text}))
            .collect();
        let mut body = json!({
            "model": r.model.clone().unwrap_or_else(|| self.config.model.clone()),
            "max_tokens": r.max_tokens,
            // The persona prompt is long and stable: cache it.
            "system": [{"type": "text", "text": r.system, "cache_control": {"type": "ephemeral"}}],
            "messages": messages,
            "stream": true,
        });
        if let Some(t) = r.temperature {
            body["temperature"] = json!(t);
        }
        if !r.stop.is_empty() {
            body["stop_sequences"] = json!(r.stop);
        }
        body
    }
}

fn finish(reason: &str) -> FinishReason {
    match reason {
        "end_turn" => FinishReason::Stop,
        "max_tokens" => FinishReason::Length,
        "stop_sequence" => FinishReason::StopSequence,
        "refusal" => FinishReason::Refused,
        other => FinishReason::Other(other.to_owned()),
    }
}

fn stream_error_kind(error_type: &str) -> LlmErrorKind {
    match error_type {
        "rate_limit_error" => LlmErrorKind::RateLimited { retry_after: None },
        "overloaded_error" | "api_error" => LlmErrorKind::Server,
        "authentication_error" | "permission_error" => LlmErrorKind::Unauthorized,
        _ => LlmErrorKind::BadRequest,
    }
}

#[async_trait]
impl ChatModel for Anthropic {
    fn name(&self) -> &str {
        &self.config.name
    }

    async fn stream(&self, request: &ChatRequest) -> Result<ChatStream, LlmError> {
        let name = self.config.name.clone();
        let url = format!("{}/v1/messages", self.config.base_url.trim_end_matches('/'));
        let mut req = self.http.post(url).header("anthropic-version", API_VERSION).json(&self.body(request));
        if let Some(key) = &self.config.api_key {
            req = req.header("x-api-key", key.expose());
        }
        let events = open_events(&name, req, &self.config.extra_headers).await?;
        Ok(channel_stream(move |tx| async move {
            let mut events = std::pin::pin!(events);
            let mut usage = Usage::default();
            let mut reason: Option<FinishReason> = None;
            let fail = |kind, message: String| Err(LlmError::new(kind, name.clone(), message));
            while let Some(v) = events.next().await {
                let v = match v {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                match v["type"].as_str().unwrap_or_default() {
                    "message_start" => {
                        let u = &v["message"]["usage"];
                        usage.input_tokens = u["input_tokens"].as_u64().unwrap_or(0);
                        usage.cache_read_tokens = u["cache_read_input_tokens"].as_u64().unwrap_or(0);
                        usage.output_tokens = u["output_tokens"].as_u64().unwrap_or(0);
                    }
                    "content_block_delta" => {
                        if let Some(text) = v["delta"]["text"].as_str().filter(|t| !t.is_empty())
                            && tx.send(Ok(StreamEvent::Delta(text.to_owned()))).await.is_err()
                        {
                            return;
                        }
                    }
                    "message_delta" => {
                        if let Some(r) = v["delta"]["stop_reason"].as_str() {
                            reason = Some(finish(r));
                        }
                        if let Some(n) = v["usage"]["output_tokens"].as_u64() {
                            usage.output_tokens = n;
                        }
                    }
                    "message_stop" => {
                        let end = Ok(StreamEvent::Done { usage, finish: reason.take().unwrap_or(FinishReason::Stop) });
                        let _ = tx.send(end).await;
                        return;
                    }
                    "error" => {
                        let kind = stream_error_kind(v["error"]["type"].as_str().unwrap_or_default());
                        let message = v["error"]["message"].as_str().unwrap_or("error in stream").to_owned();
                        let _ = tx.send(fail(kind, message)).await;
                        return;
                    }
                    _ => {} // ping, content_block_start, content_block_stop
                }
            }
            let _ = tx.send(fail(LlmErrorKind::BrokenStream, "the stream ended before message_stop".into())).await;
        }))
    }
}
