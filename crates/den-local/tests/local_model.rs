//! The local model as den's personas use it: streaming, stopping, cancelling,
//! reusing a prompt's start, and refusing broken files clearly. These run a
//! tiny generated model; `den`'s tests run the real default one.

use std::time::Duration;

use den_llm::{ChatMessage, ChatModel, ChatRequest, FinishReason, StreamEvent};
use den_local::testing::{Says, write_tiny_model};
use den_local::{LoadErrorKind, LocalModel, LocalOptions};
use futures_util::StreamExt as _;

fn tiny(says: Says) -> (tempfile::TempDir, LocalModel) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_tiny_model(&path, says).unwrap();
    let model = LocalModel::load(&path, LocalOptions { seed: Some(1), ..LocalOptions::default() }).unwrap();
    (dir, model)
}

fn request(max_tokens: u32) -> ChatRequest {
    let mut r = ChatRequest::simple("You are Gran. Answer briefly.", "Gran, what do you think of my hat?");
    r.max_tokens = max_tokens;
    r
}

#[tokio::test]
async fn a_reply_streams_token_by_token_with_its_usage() {
    let (_dir, model) = tiny(Says::Laughter);
    let mut stream = model.stream(&request(6)).await.unwrap();
    let mut deltas = Vec::new();
    let done = loop {
        match stream.next().await.unwrap().unwrap() {
            StreamEvent::Delta(d) => deltas.push(d),
            done @ StreamEvent::Done { .. } => break done,
            call @ StreamEvent::ToolCall(_) => panic!("the local model calls no tools: {call:?}"),
        }
    };
    assert_eq!(deltas, vec!["ha"; 6], "one delta per token");
    let StreamEvent::Done { usage, finish } = done else { unreachable!() };
    assert_eq!(finish, FinishReason::Length);
    assert_eq!(usage.output_tokens, 6);
    assert!(usage.input_tokens > 20, "the prompt was counted: {usage:?}");
    assert_eq!(model.info().model, "den tiny test model");
}

#[tokio::test]
async fn a_model_that_ends_its_turn_at_once_gives_an_empty_reply() {
    let (_dir, model) = tiny(Says::Nothing);
    let (text, usage, finish) = den_llm::collect(model.stream(&request(50)).await.unwrap()).await.unwrap();
    assert_eq!((text.as_str(), usage.output_tokens, finish), ("", 0, FinishReason::Stop));
}

#[tokio::test]
async fn stop_sequences_end_the_reply_before_them() {
    let (_dir, model) = tiny(Says::Laughter);
    let mut r = request(40);
    // "ha" then "ha": the "a" of the first could start "ah", so it waits; the second completes it.
    r.stop = vec!["ah".into()];
    let (text, _, finish) = den_llm::collect(model.stream(&r).await.unwrap()).await.unwrap();
    assert_eq!((text.as_str(), finish), ("h", FinishReason::StopSequence));
}

#[tokio::test]
async fn dropping_the_stream_stops_generation() {
    let (_dir, model) = tiny(Says::Laughter);
    let mut stream = model.stream(&request(120)).await.unwrap();
    for _ in 0..2 {
        assert!(matches!(stream.next().await, Some(Ok(StreamEvent::Delta(_)))));
    }
    drop(stream);
    // The next request runs after the abandoned one has stopped.
    let (_, usage, _) = den_llm::collect(model.stream(&request(3)).await.unwrap()).await.unwrap();
    assert_eq!(usage.output_tokens, 3);
    let total = model.tokens_generated();
    assert!(total < 20, "the abandoned reply kept generating: {total} tokens in all");
}

#[tokio::test]
async fn a_prompt_that_starts_like_the_last_one_reuses_its_cache() {
    let (_dir, model) = tiny(Says::Laughter);
    let first = den_llm::collect(model.stream(&request(2)).await.unwrap()).await.unwrap().1;
    let mut next = request(2);
    next.messages.push(ChatMessage::assistant("hahaha"));
    next.messages.push(ChatMessage::user(Some("Ben"), "and mine?"));
    let second = den_llm::collect(model.stream(&next).await.unwrap()).await.unwrap().1;
    assert_eq!(first.cache_read_tokens, 0);
    assert!(
        second.cache_read_tokens >= first.input_tokens - 1,
        "the shared start was computed again: {first:?} then {second:?}"
    );
}

#[tokio::test]
async fn a_conversation_longer_than_the_context_keeps_its_latest_turns() {
    let (_dir, model) = tiny(Says::Laughter);
    let mut r = request(8);
    r.messages = (0..100).map(|i| ChatMessage::user(Some("Ben"), format!("message number {i}"))).collect();
    let (text, usage, _) = den_llm::collect(model.stream(&r).await.unwrap()).await.unwrap();
    assert_eq!(text, "ha".repeat(8));
    assert!(usage.input_tokens + 8 <= 256, "{usage:?}");
}

#[tokio::test]
async fn requests_wait_their_turn_and_all_finish() {
    let (_dir, model) = tiny(Says::Laughter);
    let model = std::sync::Arc::new(model);
    let runs = (0..4).map(|_| {
        let model = model.clone();
        tokio::spawn(async move { den_llm::collect(model.stream(&request(5)).await.unwrap()).await.unwrap().0 })
    });
    for run in runs {
        let text = tokio::time::timeout(Duration::from_secs(30), run).await.unwrap().unwrap();
        assert_eq!(text, "hahahahaha");
    }
}

#[test]
fn a_missing_or_broken_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = LocalModel::load(&dir.path().join("nope.gguf"), LocalOptions::default()).unwrap_err();
    assert_eq!(missing.kind(), LoadErrorKind::NotFound);
    assert!(missing.to_string().contains("den model fetch"), "{missing}");

    let broken = dir.path().join("broken.gguf");
    std::fs::write(&broken, b"this is not a model at all, only text").unwrap();
    let e = LocalModel::load(&broken, LocalOptions::default()).unwrap_err();
    assert_eq!(e.kind(), LoadErrorKind::Unreadable, "{e}");

    // A real model cut short, as an interrupted copy leaves it.
    let cut = dir.path().join("cut.gguf");
    write_tiny_model(&cut, Says::Laughter).unwrap();
    let bytes = std::fs::read(&cut).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = LocalModel::load(&cut, LocalOptions::default()).unwrap_err();
    assert_eq!(e.kind(), LoadErrorKind::Unreadable, "{e}");
}
