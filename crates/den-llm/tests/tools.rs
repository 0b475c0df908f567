//! Tool calling in each wire format: tools offered, calls streamed in pieces
//! and assembled, calls and results sent back in the provider's own shape.

use std::time::Duration;

use den_core::Secret;
use den_llm::anthropic::Anthropic;
use den_llm::openai::OpenAiCompatible;
use den_llm::{
    ChatMessage, ChatModel, ChatRequest, FinishReason, ProviderConfig, ToolCall, ToolResult, ToolSpec, collect_turn,
};
use den_testkit::llm::{FakeLlm, Script, Wire};
use serde_json::{Value, json};

fn config(fake: &FakeLlm) -> ProviderConfig {
    ProviderConfig {
        name: "test".into(),
        base_url: fake.base_url(),
        api_key: Some(Secret::new("sk-tools")),
        model: "fake-model".into(),
        extra_headers: vec![],
        connect_timeout: Duration::from_secs(2),
    }
}

async fn model(wire: Wire, fake: &FakeLlm) -> Box<dyn ChatModel> {
    match wire {
        Wire::Anthropic => Box::new(Anthropic::new(config(fake)).unwrap()),
        Wire::OpenAi => Box::new(OpenAiCompatible::new(config(fake)).unwrap()),
        Wire::Bedrock => bedrock(fake).await,
    }
}

#[cfg(feature = "aws")]
async fn bedrock(fake: &FakeLlm) -> Box<dyn ChatModel> {
    let options = den_llm::bedrock::BedrockOptions {
        region: "eu-west-1".into(),
        static_credentials: Some(("AKIDTOOLS".into(), Secret::new("secret"))),
    };
    let config = ProviderConfig { api_key: None, ..config(fake) };
    Box::new(den_llm::bedrock::Bedrock::new(config, options).await.unwrap())
}

#[cfg(not(feature = "aws"))]
async fn bedrock(_: &FakeLlm) -> Box<dyn ChatModel> {
    unreachable!("Bedrock is built with the aws feature")
}

fn wires() -> Vec<Wire> {
    let mut w = vec![Wire::Anthropic, Wire::OpenAi];
    if cfg!(feature = "aws") {
        w.push(Wire::Bedrock);
    }
    w
}

fn read_file() -> ToolSpec {
    ToolSpec {
        name: "read_file".into(),
        description: "Read a file of the workspace".into(),
        input_schema: json!({"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}),
    }
}

fn request(messages: Vec<ChatMessage>) -> ChatRequest {
    ChatRequest { tools: vec![read_file()], messages, ..ChatRequest::simple("You fix code.", "") }
}

#[tokio::test]
async fn a_tool_call_streamed_in_pieces_reaches_the_caller_whole_in_every_wire_format() {
    for wire in wires() {
        let fake = FakeLlm::start(wire, None).await.unwrap();
        fake.push(
            Script::call("Let me look.", "read_file", json!({"path": "src/lib.rs", "note": "ünïcode ✓"}))
                .and_call("read_file", json!({"path": "Cargo.toml"})),
        );
        let m = model(wire, &fake).await;
        let turn = collect_turn(m.stream(&request(vec![ChatMessage::user(None, "fix it")])).await.unwrap()).await;
        let turn = turn.unwrap_or_else(|e| panic!("{wire:?}: {e}"));
        assert_eq!(turn.text.trim(), "Let me look.", "{wire:?}");
        assert_eq!(turn.finish, FinishReason::ToolUse, "{wire:?}");
        let inputs: Vec<&Value> = turn.calls.iter().map(|c| &c.input).collect();
        assert_eq!(inputs, [&json!({"path": "src/lib.rs", "note": "ünïcode ✓"}), &json!({"path": "Cargo.toml"})]);
        assert!(turn.calls.iter().all(|c| c.name == "read_file" && !c.id.is_empty()), "{wire:?}");
        assert_ne!(turn.calls[0].id, turn.calls[1].id);

        let body = &fake.requests()[0].body;
        let offered = match wire {
            Wire::Anthropic => body["tools"][0]["input_schema"]["required"][0].clone(),
            Wire::OpenAi => body["tools"][0]["function"]["parameters"]["required"][0].clone(),
            Wire::Bedrock => body["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"]["required"][0].clone(),
        };
        assert_eq!(offered, "path", "{wire:?} offers the tool with its schema: {body}");
    }
}

#[tokio::test]
async fn calls_and_their_results_go_back_in_the_providers_own_shape() {
    for wire in wires() {
        let fake = FakeLlm::start(wire, None).await.unwrap();
        let m = model(wire, &fake).await;
        let call = ToolCall { id: "call_7".into(), name: "read_file".into(), input: json!({"path": "a.rs"}) };
        let history = vec![
            ChatMessage::user(Some("ada"), "fix the test"),
            ChatMessage::assistant_calls("Reading.", vec![call]),
            ChatMessage::results(vec![ToolResult::error("call_7", "no such file: a.rs")]),
        ];
        collect_turn(m.stream(&request(history)).await.unwrap()).await.unwrap();
        let body = &fake.requests()[0].body;
        let messages = body["messages"].as_array().unwrap();
        match wire {
            Wire::Anthropic => {
                assert_eq!(
                    messages[1]["content"][1],
                    json!({"type": "tool_use", "id": "call_7", "name": "read_file", "input": {"path": "a.rs"}})
                );
                assert_eq!(messages[2]["content"][0]["type"], "tool_result");
                assert_eq!(messages[2]["content"][0]["tool_use_id"], "call_7");
                assert_eq!(messages[2]["content"][0]["is_error"], true);
            }
            Wire::OpenAi => {
                let assistant = &messages[2];
                assert_eq!(assistant["tool_calls"][0]["function"]["arguments"], "{\"path\":\"a.rs\"}");
                assert_eq!(messages[3]["role"], "tool");
                assert_eq!(messages[3]["tool_call_id"], "call_7");
                assert_eq!(messages[3]["content"], "error: no such file: a.rs");
                assert_eq!(messages.len(), 4, "no empty user message after the result: {body}");
            }
            Wire::Bedrock => {
                assert_eq!(messages[1]["content"][1]["toolUse"]["toolUseId"], "call_7");
                assert_eq!(messages[1]["content"][1]["toolUse"]["input"]["path"], "a.rs");
                assert_eq!(messages[2]["content"][0]["toolResult"]["toolUseId"], "call_7");
                assert_eq!(messages[2]["content"][0]["toolResult"]["status"], "error");
            }
        }
    }
}

#[tokio::test]
async fn a_conversation_without_tools_is_sent_as_plain_text_as_before() {
    let fake = FakeLlm::start(Wire::Anthropic, None).await.unwrap();
    let m = model(Wire::Anthropic, &fake).await;
    let plain = ChatRequest::simple("sys", "hello");
    collect_turn(m.stream(&plain).await.unwrap()).await.unwrap();
    let body = &fake.requests()[0].body;
    assert_eq!(body["messages"][0]["content"], "hello");
    assert!(body.get("tools").is_none());
}
