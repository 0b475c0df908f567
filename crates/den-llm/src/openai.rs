//! OpenAI-compatible chat completions, streaming: LiteLLM, Ollama, vLLM,
//! llama.cpp server, OpenRouter, OpenAI.

use async_trait::async_trait;
use futures_util::StreamExt as _;
use serde_json::{Value, json};

use crate::tools::PendingCalls;
use crate::{
    ChatModel, ChatRequest, ChatStream, FinishReason, LlmError, LlmErrorKind, ProviderConfig, Role, StreamEvent, Usage,
    channel_stream, http_client, open_events, spoken,
};

/// An OpenAI-compatible provider.
#[derive(Debug)]
pub struct OpenAiCompatible {
    config: ProviderConfig,
    http: reqwest::Client,
}

impl OpenAiCompatible {
    /// A provider reached as `config` says.
    pub fn new(config: ProviderConfig) -> Result<Self, LlmError> {
        let http = http_client(config.connect_timeout)?;
        Ok(Self { config, http })
    }

    fn body(&self, r: &ChatRequest) -> Value {
        let mut messages = vec![json!({"role": "system", "content": r.system})];
        for m in &r.messages {
            // Results are `tool` messages of their own, before any text of the same turn.
            for result in &m.tool_results {
                let content =
                    if result.is_error { format!("error: {}", result.content) } else { result.content.clone() };
                messages.push(json!({"role": "tool", "tool_call_id": result.call_id, "content": content}));
            }
            let text = spoken(m);
            match m.role {
                Role::User if text.is_empty() && !m.tool_results.is_empty() => {}
                Role::User => messages.push(json!({"role": "user", "content": text})),
                Role::Assistant if m.tool_calls.is_empty() => {
                    messages.push(json!({"role": "assistant", "content": text}));
                }
                Role::Assistant => {
                    let calls: Vec<Value> = m
                        .tool_calls
                        .iter()
                        .map(|c| {
                            json!({"id": c.id, "type": "function",
                                "function": {"name": c.name, "arguments": c.input.to_string()}})
                        })
                        .collect();
                    let content = if text.is_empty() { Value::Null } else { text.into() };
                    messages.push(json!({"role": "assistant", "content": content, "tool_calls": calls}));
                }
            }
        }
        let mut body = json!({
            "model": r.model.clone().unwrap_or_else(|| self.config.model.clone()),
            "messages": messages,
            "max_tokens": r.max_tokens,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        if let Some(t) = r.temperature {
            body["temperature"] = json!(t);
        }
        if !r.stop.is_empty() {
            body["stop"] = json!(r.stop);
        }
        if !r.tools.is_empty() {
            let tools: Vec<Value> = r
                .tools
                .iter()
                .map(|t| {
                    json!({"type": "function",
                        "function": {"name": t.name, "description": t.description, "parameters": t.input_schema}})
                })
                .collect();
            body["tools"] = tools.into();
        }
        body
    }
}

fn finish(reason: &str) -> FinishReason {
    match reason {
        "stop" => FinishReason::Stop,
        "length" => FinishReason::Length,
        "content_filter" => FinishReason::Refused,
        "tool_calls" | "function_call" => FinishReason::ToolUse,
        other => FinishReason::Other(other.to_owned()),
    }
}

#[async_trait]
impl ChatModel for OpenAiCompatible {
    fn name(&self) -> &str {
        &self.config.name
    }

    async fn stream(&self, request: &ChatRequest) -> Result<ChatStream, LlmError> {
        let name = self.config.name.clone();
        let url = format!("{}/chat/completions", self.config.base_url.trim_end_matches('/'));
        let mut req = self.http.post(url).json(&self.body(request));
        if let Some(key) = &self.config.api_key {
            req = req.bearer_auth(key.expose());
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
                if let Some(err) = v.get("error") {
                    let message = err["message"].as_str().unwrap_or("error in stream").to_owned();
                    let _ = tx.send(fail(LlmErrorKind::Server, message)).await;
                    return;
                }
                if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                    usage.input_tokens = u["prompt_tokens"].as_u64().unwrap_or(usage.input_tokens);
                    usage.output_tokens = u["completion_tokens"].as_u64().unwrap_or(usage.output_tokens);
                    usage.cache_read_tokens =
                        u["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(usage.cache_read_tokens);
                }
                if let Some(choice) = v["choices"].get(0) {
                    if let Some(text) = choice["delta"]["content"].as_str().filter(|t| !t.is_empty())
                        && tx.send(Ok(StreamEvent::Delta(text.to_owned()))).await.is_err()
                    {
                        return;
                    }
                    for piece in choice["delta"]["tool_calls"].as_array().into_iter().flatten() {
                        let index = piece["index"].as_u64().unwrap_or(0);
                        calls.start(index, piece["id"].as_str(), piece["function"]["name"].as_str());
                        calls.append(index, piece["function"]["arguments"].as_str().unwrap_or_default());
                    }
                    if let Some(r) = choice["finish_reason"].as_str() {
                        reason = Some(finish(r));
                        // Calls end together, with the choice.
                        for call in calls.drain() {
                            let event = call.finish(&name).map(StreamEvent::ToolCall);
                            let failed = event.is_err();
                            if tx.send(event).await.is_err() || failed {
                                return;
                            }
                        }
                    }
                }
            }
            let end = match reason {
                Some(finish) => Ok(StreamEvent::Done { usage, finish }),
                None => fail(LlmErrorKind::BrokenStream, "the stream ended before a finish reason".into()),
            };
            let _ = tx.send(end).await;
        }))
    }
}
