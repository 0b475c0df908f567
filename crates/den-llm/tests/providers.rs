//! Each provider against its fake: normal streams and every fault.

use std::time::Duration;

use den_core::Secret;
use den_llm::anthropic::Anthropic;
use den_llm::openai::OpenAiCompatible;
use den_llm::{ChatMessage, ChatModel, ChatRequest, FinishReason, LlmErrorKind, ProviderConfig, StreamEvent, collect};
use den_testkit::llm::{FakeLlm, Fault, Script, Wire};
use futures_util::StreamExt as _;

const KEY: &str = "sk-test-5ecret-key";

fn config(fake: &FakeLlm, key: &str) -> ProviderConfig {
    ProviderConfig {
        name: "test".into(),
        base_url: fake.base_url(),
        api_key: Some(Secret::new(key)),
        model: "fake-model".into(),
        extra_headers: vec![],
        connect_timeout: Duration::from_secs(2),
    }
}

fn model(wire: Wire, fake: &FakeLlm, key: &str) -> Box<dyn ChatModel> {
    match wire {
        Wire::Anthropic => Box::new(Anthropic::new(config(fake, key)).unwrap()),
        Wire::OpenAi => Box::new(OpenAiCompatible::new(config(fake, key)).unwrap()),
        Wire::Bedrock => unreachable!("Bedrock has its own tests (tests/bedrock.rs)"),
    }
}

fn conversation() -> ChatRequest {
    ChatRequest {
        system: "You are Grumpy Gran.".into(),
        messages: vec![
            ChatMessage::user(Some("ada"), "hi gran"),
            ChatMessage::user(Some("bob"), "roast ada"),
            ChatMessage::assistant("Back in my day..."),
            ChatMessage::user(Some("ada"), "go on"),
        ],
        max_tokens: 100,
        temperature: Some(0.7),
        stop: vec![],
        model: None,
        tools: vec![],
    }
}

const WIRES: [Wire; 2] = [Wire::Anthropic, Wire::OpenAi];

#[tokio::test]
async fn a_reply_streams_in_pieces_and_ends_with_usage() {
    for wire in WIRES {
        let fake = FakeLlm::start(wire, Some(KEY)).await.unwrap();
        fake.push(Script::reply("You call that a roast? I have knitted sharper comebacks.").rate(200.0));
        let m = model(wire, &fake, KEY);
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
        assert!(deltas.len() > 3, "{wire:?}: streamed in pieces");
        assert_eq!(deltas.concat(), "You call that a roast? I have knitted sharper comebacks.");
        let (usage, finish) = done.expect("a final event");
        assert_eq!(finish, FinishReason::Stop);
        assert_eq!(usage.output_tokens, deltas.len() as u64, "{wire:?}");
        assert!(usage.input_tokens > 5, "{wire:?}: {usage:?}");
    }
}

#[tokio::test]
async fn prompts_name_speakers_and_anthropic_caches_the_system_prompt() {
    for wire in WIRES {
        let fake = FakeLlm::start(wire, Some(KEY)).await.unwrap();
        let m = model(wire, &fake, KEY);
        collect(m.stream(&conversation()).await.unwrap()).await.unwrap();
        let body = &fake.requests()[0].body;
        assert_eq!(body["stream"], true);
        assert_eq!(body["model"], "fake-model");
        let messages = body["messages"].as_array().unwrap();
        match wire {
            Wire::Anthropic => {
                assert_eq!(body["system"][0]["text"], "You are Grumpy Gran.");
                assert_eq!(body["system"][0]["cache_control"]["type"], "ephemeral");
                let roles: Vec<&str> = messages.iter().map(|m| m["role"].as_str().unwrap()).collect();
                assert_eq!(roles, ["user", "assistant", "user"], "consecutive user turns are joined");
                assert_eq!(messages[0]["content"], "ada: hi gran\nbob: roast ada");
            }
            Wire::OpenAi => {
                assert_eq!(messages[0]["role"], "system");
                assert_eq!(messages[1]["content"], "ada: hi gran");
                assert_eq!(body["stream_options"]["include_usage"], true);
            }
            Wire::Bedrock => unreachable!(),
        }
    }
}

#[tokio::test]
async fn http_errors_map_to_kinds_with_retry_after_and_retryability() {
    for wire in WIRES {
        let fake = FakeLlm::start(wire, Some(KEY)).await.unwrap();
        let m = model(wire, &fake, KEY);
        fake.push(Script::fault(Fault::RateLimited(7)));
        let e = m.stream(&conversation()).await.err().unwrap();
        assert_eq!(e.kind(), &LlmErrorKind::RateLimited { retry_after: Some(Duration::from_secs(7)) }, "{wire:?}");
        assert!(e.kind().is_retryable());
        fake.push(Script::fault(Fault::Status(500)));
        let e = m.stream(&conversation()).await.err().unwrap();
        assert_eq!(e.kind(), &LlmErrorKind::Server);
        fake.push(Script::fault(Fault::Status(400)));
        let e = m.stream(&conversation()).await.err().unwrap();
        assert_eq!(e.kind(), &LlmErrorKind::BadRequest);
        assert!(!e.kind().is_retryable(), "a bad request is not retried");
    }
}

#[tokio::test]
async fn a_wrong_key_is_unauthorized_and_never_echoed() {
    for wire in WIRES {
        let fake = FakeLlm::start(wire, Some(KEY)).await.unwrap();
        let m = model(wire, &fake, "sk-wrong-key-123");
        let e = m.stream(&conversation()).await.err().unwrap();
        assert_eq!(e.kind(), &LlmErrorKind::Unauthorized);
        assert!(!e.to_string().contains("sk-wrong-key-123") && !format!("{e:?}").contains("sk-wrong-key-123"));
        assert!(!fake.requests()[0].authorized);
    }
}

#[tokio::test]
async fn a_stream_cut_mid_way_or_malformed_is_an_error_not_a_short_answer() {
    for wire in WIRES {
        let fake = FakeLlm::start(wire, None).await.unwrap();
        let m = model(wire, &fake, KEY);
        fake.push(Script::fault(Fault::CutAfter(3)));
        let e = collect(m.stream(&conversation()).await.unwrap()).await.unwrap_err();
        assert_eq!(e.kind(), &LlmErrorKind::BrokenStream, "{wire:?}");
        fake.push(Script::fault(Fault::Malformed));
        let e = collect(m.stream(&conversation()).await.unwrap()).await.unwrap_err();
        assert_eq!(e.kind(), &LlmErrorKind::Malformed, "{wire:?}");
    }
}

#[tokio::test]
async fn an_unreachable_endpoint_is_a_transport_error() {
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = dead.local_addr().unwrap();
    drop(dead);
    let config = ProviderConfig {
        name: "nowhere".into(),
        base_url: format!("http://{addr}/v1"),
        api_key: None,
        model: "m".into(),
        extra_headers: vec![],
        connect_timeout: Duration::from_secs(1),
    };
    let e = OpenAiCompatible::new(config).unwrap().stream(&conversation()).await.err().unwrap();
    assert_eq!(e.kind(), &LlmErrorKind::Transport);
    assert!(e.to_string().contains("nowhere"));
}
