//! Timeouts, retries, the circuit breaker and fallback, against fake providers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use den_core::SystemClock;
use den_llm::openai::OpenAiCompatible;
use den_llm::resilience::{BreakerState, Policy, Resilient};
use den_llm::{ChatModel, ChatRequest, LlmErrorKind, ProviderConfig, collect};
use den_testkit::llm::{FakeLlm, Fault, Script, Wire};

fn provider(fake: &FakeLlm, name: &str) -> Arc<dyn ChatModel> {
    Arc::new(
        OpenAiCompatible::new(ProviderConfig {
            name: name.into(),
            base_url: fake.base_url(),
            api_key: None,
            model: "m".into(),
            extra_headers: vec![],
            connect_timeout: Duration::from_secs(1),
        })
        .unwrap(),
    )
}

fn policy() -> Policy {
    Policy {
        first_token_timeout: Duration::from_millis(300),
        total_timeout: Duration::from_secs(5),
        max_attempts: 3,
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_secs(2),
        breaker_threshold: 3,
        breaker_cooldown: Duration::from_millis(400),
    }
}

fn request() -> ChatRequest {
    ChatRequest::simple("system", "hello")
}

#[tokio::test]
async fn server_errors_and_hangs_are_retried_until_an_answer_comes() {
    let fake = FakeLlm::start(Wire::OpenAi, None).await.unwrap();
    fake.push(Script::fault(Fault::Status(500)));
    fake.push(Script::fault(Fault::Hang));
    fake.push(Script::reply("third time lucky"));
    let m = Resilient::new(provider(&fake, "primary"), None, policy(), Arc::new(SystemClock));
    let (text, _, _) = collect(m.stream(&request()).await.unwrap()).await.unwrap();
    assert_eq!(text, "third time lucky");
    assert_eq!(fake.requests().len(), 3);
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let fake = FakeLlm::start(Wire::OpenAi, None).await.unwrap();
    fake.push(Script::fault(Fault::RateLimited(1)));
    let m = Resilient::new(provider(&fake, "primary"), None, policy(), Arc::new(SystemClock));
    let start = Instant::now();
    collect(m.stream(&request()).await.unwrap()).await.unwrap();
    assert!(start.elapsed() >= Duration::from_secs(1), "waited the full Retry-After");
    assert_eq!(fake.requests().len(), 2);
}

#[tokio::test]
async fn a_bad_request_is_not_retried() {
    let fake = FakeLlm::start(Wire::OpenAi, None).await.unwrap();
    fake.set_default(Script::fault(Fault::Status(400)));
    let m = Resilient::new(provider(&fake, "primary"), None, policy(), Arc::new(SystemClock));
    let e = m.stream(&request()).await.err().unwrap();
    assert_eq!(e.kind(), &LlmErrorKind::BadRequest);
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn a_failing_primary_falls_back_then_its_open_circuit_is_skipped_until_the_cooldown() {
    let primary = FakeLlm::start(Wire::OpenAi, None).await.unwrap();
    primary.set_default(Script::fault(Fault::Status(503)));
    let backup = FakeLlm::start(Wire::OpenAi, None).await.unwrap();
    backup.set_default(Script::reply("from the backup"));
    let m = Resilient::new(
        provider(&primary, "primary"),
        Some(provider(&backup, "backup")),
        policy(),
        Arc::new(SystemClock),
    );

    let (text, _, _) = collect(m.stream(&request()).await.unwrap()).await.unwrap();
    assert_eq!(text, "from the backup");
    assert_eq!(primary.requests().len(), 3, "three attempts on the primary");
    assert!(matches!(m.breakers()[0].1, BreakerState::Open { .. }), "three failures opened its circuit");

    collect(m.stream(&request()).await.unwrap()).await.unwrap();
    assert_eq!(primary.requests().len(), 3, "an open circuit sends nothing to the primary");

    tokio::time::sleep(Duration::from_millis(450)).await;
    primary.set_default(Script::reply("primary is back"));
    let (text, _, _) = collect(m.stream(&request()).await.unwrap()).await.unwrap();
    assert_eq!(text, "primary is back", "after the cooldown a trial call goes through and closes the circuit");
    assert_eq!(m.breakers()[0].1, BreakerState::Closed { failures: 0 });
}

#[tokio::test]
async fn an_answer_slower_than_the_total_timeout_ends_with_a_timeout_error() {
    let fake = FakeLlm::start(Wire::OpenAi, None).await.unwrap();
    fake.push(Script::reply("one two three four five six seven eight nine ten").rate(5.0));
    let policy = Policy { total_timeout: Duration::from_millis(600), ..policy() };
    let m = Resilient::new(provider(&fake, "primary"), None, policy, Arc::new(SystemClock));
    let e = collect(m.stream(&request()).await.unwrap()).await.unwrap_err();
    assert_eq!(e.kind(), &LlmErrorKind::Timeout);
    assert_eq!(fake.requests().len(), 1, "no retry once text has been delivered");
}
