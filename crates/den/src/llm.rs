//! Building den's models from configuration, and `den llm ping`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use den_llm::anthropic::Anthropic;
use den_llm::openai::OpenAiCompatible;
use den_llm::{ChatModel, ChatRequest, ProviderConfig, StreamEvent};
use futures_util::StreamExt as _;

use crate::cli::LlmCommand;
use crate::config::{self, Config, ProviderSection};

/// The provider a section describes.
pub fn provider(p: &ProviderSection, env: &[(String, String)]) -> anyhow::Result<Arc<dyn ChatModel>> {
    let config = ProviderConfig {
        name: p.name.clone(),
        base_url: p.base_url.clone(),
        api_key: config::provider_key(p, env)?,
        model: p.model.clone(),
        extra_headers: p.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        connect_timeout: Duration::from_secs(10),
    };
    Ok(match p.kind.as_str() {
        "anthropic" => Arc::new(Anthropic::new(config)?),
        _ => Arc::new(OpenAiCompatible::new(config)?),
    })
}

/// `den llm ...`
pub async fn command(command: LlmCommand, c: &Config, env: &[(String, String)]) -> anyhow::Result<()> {
    match command {
        LlmCommand::Ping { provider: name } => {
            let name = name.unwrap_or_else(|| c.llm.primary.clone());
            let section = c.llm.provider(&name).map_err(anyhow::Error::msg)?;
            let model = provider(section, env)?;
            let request = ChatRequest::simple(
                "You are a health check. Answer in one short sentence.",
                "Say that you are working, in one short sentence.",
            );
            let start = Instant::now();
            let timeout = Duration::from_secs(c.llm.first_token_timeout_secs.max(1));
            let mut stream = tokio::time::timeout(timeout, model.stream(&request))
                .await
                .map_err(|_| anyhow::anyhow!("{name}: no answer within {timeout:?}"))??;
            let mut text = String::new();
            let mut first_token = None;
            let total = Duration::from_secs(c.llm.total_timeout_secs.max(1));
            let (usage, finish) = loop {
                let event = tokio::time::timeout(total.saturating_sub(start.elapsed()), stream.next())
                    .await
                    .map_err(|_| anyhow::anyhow!("{name}: the answer took longer than {total:?}"))?;
                match event {
                    Some(Ok(StreamEvent::Delta(d))) => {
                        first_token.get_or_insert_with(|| start.elapsed());
                        text.push_str(&d);
                    }
                    Some(Ok(StreamEvent::Done { usage, finish })) => break (usage, finish),
                    Some(Err(e)) => return Err(e.into()),
                    None => anyhow::bail!("{name}: the stream ended early"),
                }
            };
            let ms = |d: Duration| d.as_millis();
            println!("{name} ({}): {}", section.model, text.trim());
            println!(
                "first token {} ms, total {} ms, tokens in {} out {} (cached {}), finish {finish:?}",
                first_token.map_or(0, ms),
                ms(start.elapsed()),
                usage.input_tokens,
                usage.output_tokens,
                usage.cache_read_tokens
            );
            Ok(())
        }
    }
}
