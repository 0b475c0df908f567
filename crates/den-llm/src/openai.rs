//! OpenAI-compatible chat completions, streaming: LiteLLM, Ollama, vLLM,
//! llama.cpp server, OpenRouter, OpenAI.

use async_trait::async_trait;
use futures_util::StreamExt as _;
use serde_json::{Value, json};

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
            let role = match m.role {
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            messages.push(json!({"role": role, "content": spoken(m)}));
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
        body
    }
}

fn finish(reason: &str) -> FinishReason {
    match reason {
        "stop" => FinishReason::Stop,
        "length" => FinishReason::Length,
        "content_filter" => FinishReason::Refused,
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
                    if let Some(r) = choice["finish_reason"].as_str() {
                        reason = Some(finish(r));
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
