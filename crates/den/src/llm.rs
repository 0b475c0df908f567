//! Building den's models from configuration, and `den llm ping`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use den_llm::anthropic::Anthropic;
use den_llm::openai::OpenAiCompatible;
use den_llm::{ChatModel, ChatRequest, ProviderConfig, StreamEvent};
use futures_util::StreamExt as _;

use crate::cli::LlmCommand;
use crate::config::{self, Config, ProviderSection};

/// The provider a section describes; `models_dir` holds fetched models.
pub async fn provider(
    p: &ProviderSection,
    env: &[(String, String)],
    models_dir: &std::path::Path,
) -> anyhow::Result<Arc<dyn ChatModel>> {
    match p.kind.as_str() {
        "local" => return local(p, models_dir).await,
        "canned" => return Ok(Arc::new(den_local::Canned::default())),
        _ => {}
    }
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
        "bedrock" => bedrock(config, p).await?,
        _ => Arc::new(OpenAiCompatible::new(config)?),
    })
}

/// The model file a `local` provider runs.
#[must_use]
pub fn local_path(p: &ProviderSection, models_dir: &std::path::Path) -> std::path::PathBuf {
    p.path.clone().unwrap_or_else(|| den_local::fetch::SMOLLM2_135M.path_in(models_dir))
}

async fn local(p: &ProviderSection, models_dir: &std::path::Path) -> anyhow::Result<Arc<dyn ChatModel>> {
    let path = local_path(p, models_dir);
    let defaults = den_local::LocalOptions::default();
    let options =
        den_local::LocalOptions { name: p.name.clone(), context: p.context.unwrap_or(defaults.context), ..defaults };
    let model = den_local::LocalModel::open(&path, options).await?;
    let info = model.info();
    tracing::info!(
        provider = %p.name,
        model = %info.model,
        path = %path.display(),
        load_ms = info.load_time.as_millis() as u64,
        "local model loaded"
    );
    Ok(Arc::new(model))
}

#[cfg(feature = "aws")]
async fn bedrock(config: ProviderConfig, p: &ProviderSection) -> anyhow::Result<Arc<dyn ChatModel>> {
    let options =
        den_llm::bedrock::BedrockOptions { region: p.region.clone().unwrap_or_default(), static_credentials: None };
    Ok(Arc::new(den_llm::bedrock::Bedrock::new(config, options).await?))
}

#[cfg(not(feature = "aws"))]
#[allow(clippy::unused_async)] // the same signature as the `aws` build's
async fn bedrock(_: ProviderConfig, p: &ProviderSection) -> anyhow::Result<Arc<dyn ChatModel>> {
    anyhow::bail!(
        "llm.provider {:?} is bedrock, but this den was built without AWS support: \
         build with `cargo build --release -p den --features aws`",
        p.name
    )
}

/// Feeds the resilience layer's observations into den's metrics. Modules
/// that call models attach it to their `Resilient` model.
#[derive(Debug)]
pub struct LlmMetrics(pub den_ops::Metrics);

impl den_llm::resilience::CallObserver for LlmMetrics {
    fn first_token(&self, provider: &str, ttft: Duration) {
        self.0.llm_first_token(provider, ttft);
    }
    fn finished(&self, provider: &str, total: Duration, usage: &den_llm::Usage) {
        self.0.llm_finished(provider, total, usage.input_tokens, usage.output_tokens);
    }
    fn error(&self, provider: &str, kind: &den_llm::LlmErrorKind) {
        let kind = match kind {
            den_llm::LlmErrorKind::RateLimited { .. } => "rate_limited",
            den_llm::LlmErrorKind::Server => "server",
            den_llm::LlmErrorKind::Timeout => "timeout",
            den_llm::LlmErrorKind::BrokenStream => "broken_stream",
            den_llm::LlmErrorKind::Malformed => "malformed",
            den_llm::LlmErrorKind::Unauthorized => "unauthorized",
            den_llm::LlmErrorKind::BadRequest => "bad_request",
            den_llm::LlmErrorKind::Transport => "transport",
            den_llm::LlmErrorKind::Unavailable => "unavailable",
            _ => "other",
        };
        self.0.llm_error(provider, kind);
    }
    fn breaker(&self, provider: &str, state: den_llm::resilience::BreakerState) {
        use den_llm::resilience::BreakerState;
        let n = match state {
            BreakerState::Closed { .. } => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open { .. } => 2,
        };
        self.0.llm_breaker(provider, n);
    }
}

/// `den llm ...`
pub async fn command(command: LlmCommand, c: &Config, env: &[(String, String)]) -> anyhow::Result<()> {
    match command {
        LlmCommand::Ping { provider: name } => {
            let name = name.unwrap_or_else(|| c.llm.primary.clone());
            let section = c.llm.provider(&name).map_err(anyhow::Error::msg)?;
            let model = provider(section, env, &c.models_dir()).await?;
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
                    // `den llm ping` offers no tools.
                    Some(Ok(StreamEvent::ToolCall(_))) => {}
                    Some(Err(e)) => return Err(e.into()),
                    None => anyhow::bail!("{name}: the stream ended early"),
                }
            };
            let ms = |d: Duration| d.as_millis();
            let model = if section.model.is_empty() { section.kind.as_str() } else { section.model.as_str() };
            println!("{name} ({model}): {}", text.trim());
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use den_core::SystemClock;
    use den_llm::resilience::{Policy, Resilient};
    use den_testkit::llm::{FakeLlm, Fault, Script, Wire};

    use super::*;

    #[tokio::test]
    async fn model_calls_show_up_in_metrics() {
        let fake = FakeLlm::start(Wire::OpenAi, None).await.unwrap();
        fake.push(Script::fault(Fault::Status(500)));
        fake.push(Script::reply("one two three"));
        let section = ProviderSection {
            name: "local".into(),
            kind: "openai".into(),
            base_url: fake.base_url(),
            model: "m".into(),
            key_env: None,
            key_file: None,
            region: None,
            headers: Default::default(),
            path: None,
            threads: None,
            context: None,
        };
        let metrics = den_ops::Metrics::new();
        let policy = Policy { backoff_base: Duration::from_millis(10), ..Policy::default() };
        let dir = std::path::Path::new("models");
        let model = Resilient::new(provider(&section, &[], dir).await.unwrap(), None, policy, Arc::new(SystemClock))
            .with_observer(Arc::new(LlmMetrics(metrics.clone())));
        den_llm::collect(model.stream(&ChatRequest::simple("s", "hi")).await.unwrap()).await.unwrap();
        let text = metrics.encode();
        for line in [
            r#"den_llm_errors_total{provider="local",kind="server"} 1"#,
            r#"den_llm_tokens_total{provider="local",direction="out"} 3"#,
            r#"den_llm_time_to_first_token_seconds_count{provider="local"} 1"#,
            r#"den_llm_request_duration_seconds_count{provider="local"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
