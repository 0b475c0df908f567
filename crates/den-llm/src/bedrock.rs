//! AWS Bedrock through the Converse API, streaming (`ConverseStream`).
//!
//! Credentials come from the standard AWS chain (environment, profile, web
//! identity, ECS task role, instance metadata) unless static keys are given;
//! the region always comes from configuration. The SDK's own retries and
//! stalled-stream checks are off: den's resilience layer owns retries and
//! timeouts for every provider alike.

use async_trait::async_trait;
use aws_sdk_bedrockruntime::config::retry::RetryConfig;
use aws_sdk_bedrockruntime::config::timeout::TimeoutConfig;
use aws_sdk_bedrockruntime::config::{BehaviorVersion, Credentials, Region, StalledStreamProtectionConfig};
use aws_sdk_bedrockruntime::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_bedrockruntime::types::{
    ContentBlock, ContentBlockDelta, ContentBlockStart, ConversationRole, ConverseStreamOutput, InferenceConfiguration,
    Message, StopReason, SystemContentBlock, Tool, ToolConfiguration, ToolInputSchema, ToolResultBlock,
    ToolResultContentBlock, ToolResultStatus, ToolSpecification, ToolUseBlock,
};
use aws_smithy_types::{Document, Number};
use serde_json::Value;

use crate::tools::PendingCalls;
use crate::{
    ChatModel, ChatRequest, ChatStream, FinishReason, LlmError, LlmErrorKind, ProviderConfig, Role, StreamEvent, Usage,
    alternating_turns, channel_stream,
};

/// Where and how Bedrock is reached, beyond the common [`ProviderConfig`].
#[derive(Clone, Debug)]
pub struct BedrockOptions {
    /// The AWS region (`us-east-1`...): from configuration, never assumed.
    pub region: String,
    /// Static keys (access key id, secret) instead of the standard chain.
    pub static_credentials: Option<(String, den_core::Secret)>,
}

/// The Bedrock provider. `ProviderConfig::base_url`, when not empty,
/// overrides the endpoint (a VPC endpoint, or a fake in tests);
/// `ProviderConfig::model` is the model or inference-profile id.
#[derive(Debug)]
pub struct Bedrock {
    name: String,
    model: String,
    client: aws_sdk_bedrockruntime::Client,
}

impl Bedrock {
    /// A provider; resolves the AWS configuration (not the credentials,
    /// which are fetched on the first call).
    pub async fn new(config: ProviderConfig, options: BedrockOptions) -> Result<Self, LlmError> {
        if options.region.trim().is_empty() {
            return Err(LlmError::new(LlmErrorKind::BadRequest, &config.name, "no AWS region configured"));
        }
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(options.region.clone()))
            .http_client(http)
            .retry_config(RetryConfig::disabled())
            .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
            .timeout_config(TimeoutConfig::builder().connect_timeout(config.connect_timeout).build());
        if let Some((id, secret)) = &options.static_credentials {
            loader = loader.credentials_provider(Credentials::new(id, secret.expose(), None, None, "den-config"));
        }
        if !config.base_url.trim().is_empty() {
            loader = loader.endpoint_url(config.base_url.trim_end_matches('/'));
        }
        let sdk = loader.load().await;
        Ok(Self { name: config.name, model: config.model, client: aws_sdk_bedrockruntime::Client::new(&sdk) })
    }

    fn messages(r: &ChatRequest) -> Result<Vec<Message>, String> {
        if r.uses_tools() {
            return block_messages(&r.messages);
        }
        alternating_turns(&r.messages)
            .into_iter()
            .map(|(role, text)| {
                Message::builder()
                    .role(conversation_role(role))
                    .content(ContentBlock::Text(text))
                    .build()
                    .map_err(|e| e.to_string())
            })
            .collect()
    }

    fn tool_config(r: &ChatRequest) -> Result<Option<ToolConfiguration>, String> {
        if r.tools.is_empty() {
            return Ok(None);
        }
        let tools = r
            .tools
            .iter()
            .map(|t| {
                let spec = ToolSpecification::builder()
                    .name(&t.name)
                    .description(&t.description)
                    .input_schema(ToolInputSchema::Json(document(&t.input_schema)))
                    .build()
                    .map_err(|e| e.to_string())?;
                Ok(Tool::ToolSpec(spec))
            })
            .collect::<Result<Vec<_>, String>>()?;
        ToolConfiguration::builder().set_tools(Some(tools)).build().map(Some).map_err(|e| e.to_string())
    }
}

fn conversation_role(role: Role) -> ConversationRole {
    if role == Role::User { ConversationRole::User } else { ConversationRole::Assistant }
}

/// Messages as content blocks (`toolResult` first in a user turn), one turn per run of a role, the user's first.
fn block_messages(messages: &[crate::ChatMessage]) -> Result<Vec<Message>, String> {
    let mut turns: Vec<(Role, Vec<ContentBlock>)> = Vec::new();
    for m in messages {
        let mut blocks = Vec::new();
        for r in &m.tool_results {
            let result = ToolResultBlock::builder()
                .tool_use_id(&r.call_id)
                .content(ToolResultContentBlock::Text(r.content.clone()))
                .set_status(r.is_error.then_some(ToolResultStatus::Error))
                .build()
                .map_err(|e| e.to_string())?;
            blocks.push(ContentBlock::ToolResult(result));
        }
        let text = crate::spoken(m);
        if !text.is_empty() {
            blocks.push(ContentBlock::Text(text));
        }
        for c in &m.tool_calls {
            let call = ToolUseBlock::builder()
                .tool_use_id(&c.id)
                .name(&c.name)
                .input(document(&c.input))
                .build()
                .map_err(|e| e.to_string())?;
            blocks.push(ContentBlock::ToolUse(call));
        }
        match turns.last_mut() {
            Some((role, acc)) if *role == m.role => {
                let (results, rest): (Vec<_>, Vec<_>) =
                    acc.drain(..).chain(blocks).partition(|b| matches!(b, ContentBlock::ToolResult(_)));
                acc.extend(results.into_iter().chain(rest));
            }
            _ => turns.push((m.role, blocks)),
        }
    }
    if turns.first().is_none_or(|(role, _)| *role == Role::Assistant) {
        turns.insert(0, (Role::User, vec![ContentBlock::Text("(the conversation continues)".into())]));
    }
    turns
        .into_iter()
        .map(|(role, content)| {
            Message::builder()
                .role(conversation_role(role))
                .set_content(Some(content))
                .build()
                .map_err(|e| e.to_string())
        })
        .collect()
}

/// JSON as the SDK's document type.
fn document(v: &Value) -> Document {
    match v {
        Value::Null => Document::Null,
        Value::Bool(b) => Document::Bool(*b),
        Value::Number(n) => Document::Number(if let Some(u) = n.as_u64() {
            Number::PosInt(u)
        } else if let Some(i) = n.as_i64() {
            Number::NegInt(i)
        } else {
            Number::Float(n.as_f64().unwrap_or(0.0))
        }),
        Value::String(s) => Document::String(s.clone()),
        Value::Array(a) => Document::Array(a.iter().map(document).collect()),
        Value::Object(o) => Document::Object(o.iter().map(|(k, v)| (k.clone(), document(v))).collect()),
    }
}

fn finish(reason: &StopReason) -> FinishReason {
    match reason {
        StopReason::EndTurn => FinishReason::Stop,
        StopReason::MaxTokens | StopReason::ModelContextWindowExceeded => FinishReason::Length,
        StopReason::StopSequence => FinishReason::StopSequence,
        StopReason::ContentFiltered | StopReason::GuardrailIntervened => FinishReason::Refused,
        StopReason::ToolUse => FinishReason::ToolUse,
        other => FinishReason::Other(other.as_str().to_owned()),
    }
}

/// The kind of an error Bedrock named, by its exception code.
fn code_kind(code: Option<&str>) -> Option<LlmErrorKind> {
    Some(match code? {
        "ThrottlingException" | "TooManyRequestsException" => LlmErrorKind::RateLimited { retry_after: None },
        "InternalServerException" | "ServiceUnavailableException" | "ModelNotReadyException" => LlmErrorKind::Server,
        "ModelStreamErrorException" => LlmErrorKind::BrokenStream,
        "ModelTimeoutException" => LlmErrorKind::Timeout,
        "AccessDeniedException"
        | "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "ExpiredTokenException"
        | "MissingAuthenticationTokenException" => LlmErrorKind::Unauthorized,
        _ => return None,
    })
}

/// An SDK error as a den error. Messages come from the service or the SDK's
/// error chain, which carry neither the secret key nor the signature.
fn sdk_error<E, R>(provider: &str, e: &SdkError<E, R>) -> LlmError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let kind = match e {
        SdkError::TimeoutError(_) => LlmErrorKind::Timeout,
        SdkError::DispatchFailure(d) if d.is_timeout() => LlmErrorKind::Timeout,
        SdkError::DispatchFailure(_) => LlmErrorKind::Transport,
        SdkError::ResponseError(_) => LlmErrorKind::Malformed,
        SdkError::ConstructionFailure(_) => LlmErrorKind::BadRequest,
        SdkError::ServiceError(s) => code_kind(s.err().code()).unwrap_or(LlmErrorKind::BadRequest),
        _ => code_kind(e.code()).unwrap_or(LlmErrorKind::Server),
    };
    let message = match e.message() {
        Some(m) => format!("{}: {m}", e.code().unwrap_or("error")),
        None => DisplayErrorContext(e).to_string(),
    };
    LlmError::new(kind, provider, message)
}

fn tokens(n: i32) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

#[async_trait]
impl ChatModel for Bedrock {
    fn name(&self) -> &str {
        &self.name
    }

    async fn stream(&self, request: &ChatRequest) -> Result<ChatStream, LlmError> {
        let name = self.name.clone();
        let bad = |m: String| LlmError::new(LlmErrorKind::BadRequest, &name, m);
        let mut inference = InferenceConfiguration::builder()
            .max_tokens(i32::try_from(request.max_tokens).unwrap_or(i32::MAX))
            .set_stop_sequences((!request.stop.is_empty()).then(|| request.stop.clone()));
        if let Some(t) = request.temperature {
            inference = inference.temperature(t);
        }
        let mut call = self
            .client
            .converse_stream()
            .model_id(request.model.clone().unwrap_or_else(|| self.model.clone()))
            .set_messages(Some(Self::messages(request).map_err(bad)?))
            .set_tool_config(Self::tool_config(request).map_err(bad)?)
            .inference_config(inference.build());
        if !request.system.is_empty() {
            call = call.system(SystemContentBlock::Text(request.system.clone()));
        }
        let output = call.send().await.map_err(|e| sdk_error(&name, &e))?;
        let mut events = output.stream;
        Ok(channel_stream(move |tx| async move {
            let mut usage = Usage::default();
            let mut reason: Option<FinishReason> = None;
            let mut calls = PendingCalls::default();
            loop {
                let event = match events.recv().await {
                    Ok(Some(event)) => event,
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx.send(Err(sdk_error(&name, &e))).await;
                        return;
                    }
                };
                match event {
                    ConverseStreamOutput::ContentBlockStart(start) => {
                        if let Some(ContentBlockStart::ToolUse(t)) = start.start {
                            let index = u64::try_from(start.content_block_index).unwrap_or(0);
                            calls.start(index, Some(&t.tool_use_id), Some(&t.name));
                        }
                    }
                    ConverseStreamOutput::ContentBlockDelta(d) => {
                        let index = u64::try_from(d.content_block_index).unwrap_or(0);
                        let text = match d.delta {
                            Some(ContentBlockDelta::Text(text)) if !text.is_empty() => Some(text),
                            Some(ContentBlockDelta::ToolUse(t)) => {
                                calls.append(index, &t.input);
                                None
                            }
                            _ => None,
                        };
                        if let Some(text) = text
                            && tx.send(Ok(StreamEvent::Delta(text))).await.is_err()
                        {
                            return;
                        }
                    }
                    ConverseStreamOutput::ContentBlockStop(stop) => {
                        if let Some(call) = calls.take(u64::try_from(stop.content_block_index).unwrap_or(0)) {
                            let event = call.finish(&name).map(StreamEvent::ToolCall);
                            let failed = event.is_err();
                            if tx.send(event).await.is_err() || failed {
                                return;
                            }
                        }
                    }
                    ConverseStreamOutput::MessageStop(stop) => reason = Some(finish(&stop.stop_reason)),
                    ConverseStreamOutput::Metadata(meta) => {
                        if let Some(u) = meta.usage {
                            usage.input_tokens = tokens(u.input_tokens);
                            usage.output_tokens = tokens(u.output_tokens);
                            usage.cache_read_tokens = u.cache_read_input_tokens.map_or(0, tokens);
                        }
                        // Metadata is the last event Bedrock sends.
                        if let Some(finish) = reason.take() {
                            let _ = tx.send(Ok(StreamEvent::Done { usage, finish })).await;
                            return;
                        }
                    }
                    _ => {} // messageStart
                }
            }
            let end = match reason {
                // Some models end after messageStop without metadata.
                Some(finish) => Ok(StreamEvent::Done { usage, finish }),
                None => Err(LlmError::new(LlmErrorKind::BrokenStream, name, "the stream ended before messageStop")),
            };
            let _ = tx.send(end).await;
        }))
    }
}
