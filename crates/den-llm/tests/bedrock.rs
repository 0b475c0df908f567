//! AWS Bedrock (ConverseStream) against the fake's event-stream wire:
//! normal streams, request shape, and every fault.
#![cfg(feature = "aws")]

use std::sync::Arc;
use std::time::Duration;

use den_core::{Secret, SystemClock};
use den_llm::bedrock::{Bedrock, BedrockOptions};
use den_llm::resilience::{Policy, Resilient};
use den_llm::{ChatMessage, ChatModel, ChatRequest, FinishReason, LlmErrorKind, ProviderConfig, StreamEvent, collect};
use den_testkit::llm::{FakeLlm, Fault, Script, Wire};
use futures_util::StreamExt as _;

const ACCESS_KEY_ID: &str = "AKIDEXAMPLE0000";
const SECRET_KEY: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY";

async fn bedrock(fake: &FakeLlm, access_key_id: &str) -> Bedrock {
    let config = ProviderConfig {
        name: "bedrock".into(),
        base_url: fake.base_url(),
        api_key: None,
        model: "anthropic.claude-sonnet-4-v1:0".into(),
        extra_headers: vec![],
        connect_timeout: Duration::from_secs(2),
    };
    let options = BedrockOptions {
        region: "eu-west-1".into(),
        static_credentials: Some((access_key_id.into(), Secret::new(SECRET_KEY))),
    };
    Bedrock::new(config, options).await.unwrap()
}

fn conversation() -> ChatRequest {
    ChatRequest {
        system: "You are Grumpy Gran.".into(),
        messages: vec![
            ChatMessage::assistant("Who woke me?"),
            ChatMessage::user(Some("ada"), "hi gran"),
            ChatMessage::user(Some("bob"), "roast ada"),
            ChatMessage::assistant("Back in my day..."),
            ChatMessage::user(Some("ada"), "go on"),
        ],
        max_tokens: 120,
        temperature: Some(0.5),
        stop: vec!["\nada:".into()],
        model: None,
        tools: vec![],
    }
}

#[tokio::test]
async fn a_bedrock_reply_streams_in_pieces_and_ends_with_usage() {
    let fake = FakeLlm::start(Wire::Bedrock, Some(ACCESS_KEY_ID)).await.unwrap();
    fake.push(Script::reply("You call that a roast? I have knitted sharper comebacks.").rate(200.0));
    let m = bedrock(&fake, ACCESS_KEY_ID).await;
    let mut stream = m.stream(&conversation()).await.unwrap();
    let mut deltas = Vec::new();
    let mut done = None;
    while let Some(e) = stream.next().await {
        match e.unwrap() {
            StreamEvent::Delta(d) => deltas.push(d),
            StreamEvent::Done { usage, finish } => done = Some((usage, finish)),
            StreamEvent::ToolCall(c) => panic!("no tools were offered: {c:?}"),
        }
    }
    assert!(deltas.len() > 3, "streamed in pieces");
    assert_eq!(deltas.concat(), "You call that a roast? I have knitted sharper comebacks.");
    let (usage, finish) = done.expect("a final event");
    assert_eq!(finish, FinishReason::Stop);
    assert_eq!(usage.output_tokens, deltas.len() as u64);
    assert!(usage.input_tokens > 5, "{usage:?}");
}

#[tokio::test]
async fn bedrock_requests_name_the_model_in_the_path_and_alternate_turns() {
    let fake = FakeLlm::start(Wire::Bedrock, Some(ACCESS_KEY_ID)).await.unwrap();
    let m = bedrock(&fake, ACCESS_KEY_ID).await;
    collect(m.stream(&conversation()).await.unwrap()).await.unwrap();
    let recorded = &fake.requests()[0];
    assert!(recorded.authorized, "signed with the configured access key id");
    assert!(recorded.path.contains("anthropic.claude-sonnet-4-v1"), "{}", recorded.path);
    assert!(recorded.path.ends_with("/converse-stream"));
    let body = &recorded.body;
    assert_eq!(body["system"][0]["text"], "You are Grumpy Gran.");
    let messages = body["messages"].as_array().unwrap();
    let roles: Vec<&str> = messages.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "assistant", "user", "assistant", "user"], "starts with the user and alternates");
    assert_eq!(messages[2]["content"][0]["text"], "ada: hi gran\nbob: roast ada");
    assert_eq!(body["inferenceConfig"]["maxTokens"], 120);
    assert_eq!(body["inferenceConfig"]["stopSequences"][0], "\nada:");

    let mut other = conversation();
    other.model = Some("meta.llama3-70b".into());
    collect(m.stream(&other).await.unwrap()).await.unwrap();
    assert!(fake.requests()[1].path.contains("meta.llama3-70b"), "a per-request model override");
}

#[tokio::test]
async fn bedrock_exceptions_map_to_kinds_and_retryability() {
    let fake = FakeLlm::start(Wire::Bedrock, Some(ACCESS_KEY_ID)).await.unwrap();
    let m = bedrock(&fake, ACCESS_KEY_ID).await;
    fake.push(Script::fault(Fault::RateLimited(7)));
    let e = m.stream(&conversation()).await.err().unwrap();
    assert!(matches!(e.kind(), LlmErrorKind::RateLimited { .. }), "{e}");
    assert!(e.kind().is_retryable());
    fake.push(Script::fault(Fault::Status(500)));
    assert_eq!(m.stream(&conversation()).await.err().unwrap().kind(), &LlmErrorKind::Server);
    fake.push(Script::fault(Fault::Status(503)));
    assert_eq!(m.stream(&conversation()).await.err().unwrap().kind(), &LlmErrorKind::Server);
    fake.push(Script::fault(Fault::Status(400)));
    let e = m.stream(&conversation()).await.err().unwrap();
    assert_eq!(e.kind(), &LlmErrorKind::BadRequest);
    assert!(!e.kind().is_retryable(), "a validation error is not retried");
    assert_eq!(fake.requests().len(), 4, "the SDK's own retries are off: one request per call");
}

#[tokio::test]
async fn an_unknown_access_key_is_unauthorized_and_the_secret_never_appears() {
    let fake = FakeLlm::start(Wire::Bedrock, Some(ACCESS_KEY_ID)).await.unwrap();
    let m = bedrock(&fake, "AKIDSOMEONEELSE").await;
    let e = m.stream(&conversation()).await.err().unwrap();
    assert_eq!(e.kind(), &LlmErrorKind::Unauthorized, "{e}");
    for text in [e.to_string(), format!("{e:?}"), format!("{m:?}")] {
        assert!(!text.contains(SECRET_KEY), "{text}");
    }
}

#[tokio::test]
async fn a_bedrock_stream_cut_mid_way_or_malformed_is_an_error_not_a_short_answer() {
    let fake = FakeLlm::start(Wire::Bedrock, None).await.unwrap();
    let m = bedrock(&fake, ACCESS_KEY_ID).await;
    fake.push(Script::fault(Fault::CutAfter(3)));
    let e = collect(m.stream(&conversation()).await.unwrap()).await.unwrap_err();
    assert_eq!(e.kind(), &LlmErrorKind::BrokenStream, "{e}");
    fake.push(Script::fault(Fault::Malformed));
    let e = collect(m.stream(&conversation()).await.unwrap()).await.unwrap_err();
    assert_eq!(e.kind(), &LlmErrorKind::Malformed, "{e}");
}

#[tokio::test]
async fn bedrock_behind_the_resilience_layer_retries_a_server_error_and_times_out_a_hang() {
    let fake = FakeLlm::start(Wire::Bedrock, None).await.unwrap();
    let policy = Policy {
        first_token_timeout: Duration::from_millis(300),
        backoff_base: Duration::from_millis(5),
        backoff_max: Duration::from_millis(20),
        ..Policy::default()
    };
    let m = Resilient::new(Arc::new(bedrock(&fake, ACCESS_KEY_ID).await), None, policy, Arc::new(SystemClock));
    fake.push(Script::fault(Fault::Status(500)));
    fake.push(Script::reply("second time lucky"));
    let (text, _, _) = collect(m.stream(&conversation()).await.unwrap()).await.unwrap();
    assert_eq!(text, "second time lucky");
    assert_eq!(fake.requests().len(), 2);

    fake.set_default(Script::fault(Fault::Hang));
    // The SDK waits for the first event before handing over the stream, so
    // the timeout may come from either step.
    let e = match m.stream(&conversation()).await {
        Ok(stream) => collect(stream).await.unwrap_err(),
        Err(e) => e,
    };
    assert_eq!(e.kind(), &LlmErrorKind::Timeout, "{e}");
}

#[tokio::test]
async fn a_missing_region_is_refused_up_front() {
    let config = ProviderConfig {
        name: "bedrock".into(),
        base_url: String::new(),
        api_key: None,
        model: "m".into(),
        extra_headers: vec![],
        connect_timeout: Duration::from_secs(1),
    };
    let e = Bedrock::new(config, BedrockOptions { region: " ".into(), static_credentials: None }).await.unwrap_err();
    assert!(e.to_string().contains("region"), "{e}");
}
