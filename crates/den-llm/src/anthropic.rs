//! Anthropic's Messages API, streaming, with the system prompt cached.

use async_trait::async_trait;
use futures_util::StreamExt as _;
use serde_json::{Value, json};

use crate::tools::PendingCalls;
use crate::{
    ChatMessage, ChatModel, ChatRequest, ChatStream, FinishReason, LlmError, LlmErrorKind, ProviderConfig, Role,
    StreamEvent, Usage, alternating_turns, channel_stream, http_client, open_events, spoken,
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
        let messages = if r.uses_tools() {
            block_turns(&r.messages)
        } else {
            alternating_turns(&r.messages)
                .into_iter()
                .map(|(role, text)| json!({"role": role_name(role), "content": text}))
                .collect()
        };
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
        if !r.tools.is_empty() {
            let tools: Vec<Value> = r
                .tools
                .iter()
                .map(|t| json!({"name": t.name, "description": t.description, "input_schema": t.input_schema}))
                .collect();
            body["tools"] = tools.into();
        }
        body
    }
}

fn role_name(role: Role) -> &'static str {
    if role == Role::User { "user" } else { "assistant" }
}

/// Messages as content blocks: text, `tool_use` in the model's turns,
/// `tool_result` (first, as the API requires) in the user's; consecutive
/// messages of one role are one turn, and the first turn is the user's.
fn block_turns(messages: &[ChatMessage]) -> Vec<Value> {
    let mut turns: Vec<(Role, Vec<Value>)> = Vec::new();
    for m in messages {
        let mut blocks: Vec<Value> = m
            .tool_results
            .iter()
            .map(|r| json!({"type": "tool_result", "tool_use_id": r.call_id, "content": r.content, "is_error": r.is_error}))
            .collect();
        let text = spoken(m);
        if !text.is_empty() {
            blocks.push(json!({"type": "text", "text": text}));
        }
        blocks.extend(
            m.tool_calls.iter().map(|c| json!({"type": "tool_use", "id": c.id, "name": c.name, "input": c.input})),
        );
        match turns.last_mut() {
            Some((role, acc)) if *role == m.role => {
                // Results lead the turn whatever order the messages came in.
                let (results, rest): (Vec<Value>, Vec<Value>) =
                    acc.drain(..).chain(blocks).partition(|b| b["type"] == "tool_result");
                acc.extend(results.into_iter().chain(rest));
            }
            _ => turns.push((m.role, blocks)),
        }
    }
    if turns.first().is_none_or(|(role, _)| *role == Role::Assistant) {
        turns.insert(0, (Role::User, vec![json!({"type": "text", "text": "(the conversation continues)"})]));
    }
    turns.into_iter().map(|(role, content)| json!({"role": role_name(role), "content": content})).collect()
}

fn finish(reason: &str) -> FinishReason {
    match reason {
        "end_turn" => FinishReason::Stop,
        "max_tokens" => FinishReason::Length,
        "stop_sequence" => FinishReason::StopSequence,
        "refusal" => FinishReason::Refused,
        "tool_use" => FinishReason::ToolUse,
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
            let mut calls = PendingCalls::default();
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
                    "content_block_start" if v["content_block"]["type"] == "tool_use" => {
                        let block = &v["content_block"];
                        let index = v["index"].as_u64().unwrap_or(0);
                        calls.start(index, block["id"].as_str(), block["name"].as_str());
                    }
                    "content_block_delta" if v["delta"]["type"] == "input_json_delta" => {
                        let piece = v["delta"]["partial_json"].as_str().unwrap_or_default();
                        calls.append(v["index"].as_u64().unwrap_or(0), piece);
                    }
                    "content_block_delta" => {
                        if let Some(text) = v["delta"]["text"].as_str().filter(|t| !t.is_empty())
                            && tx.send(Ok(StreamEvent::Delta(text.to_owned()))).await.is_err()
                        {
                            return;
                        }
                    }
                    "content_block_stop" => {
                        if let Some(call) = calls.take(v["index"].as_u64().unwrap_or(0)) {
                            let event = call.finish(&name).map(StreamEvent::ToolCall);
                            let failed = event.is_err();
                            if tx.send(event).await.is_err() || failed {
                                return;
                            }
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
                    _ => {} // ping, a text block's start
                }
            }
            let _ = tx.send(fail(LlmErrorKind::BrokenStream, "the stream ended before message_stop".into())).await;
        }))
    }
}
