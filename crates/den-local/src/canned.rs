//! [`Canned`]: the model of last resort. When no provider is configured and
//! the local model cannot be fetched, den still answers, word by word like
//! a real model, and every answer says plainly that it is canned.

use std::time::Duration;

use async_trait::async_trait;
use den_llm::{ChatModel, ChatRequest, ChatStream, FinishReason, LlmError, Role, StreamEvent, Usage};
use futures_util::StreamExt as _;

/// The label every canned answer starts with.
pub const CANNED_LABEL: &str = "[canned reply: no language model here]";

/// Answers without a model, labelled as such.
#[derive(Clone, Debug)]
pub struct Canned {
    /// Pause between words, so streaming shows.
    pub word_gap: Duration,
}

impl Default for Canned {
    fn default() -> Self {
        Self { word_gap: Duration::from_millis(40) }
    }
}

impl Canned {
    /// The whole answer to `request`.
    #[must_use]
    pub fn answer(request: &ChatRequest) -> String {
        let last = request.messages.iter().rev().find(|m| m.role == Role::User);
        let said: String = last.map(|m| m.content.chars().take(80).collect()).unwrap_or_default();
        let openers = [
            "I would roast that properly if I had a brain to do it with.",
            "Bold words for someone talking to a canned reply.",
            "I heard you, I just cannot think about it yet.",
        ];
        let pick = said.bytes().fold(0usize, |a, b| a.wrapping_add(usize::from(b))) % openers.len();
        let quoted =
            if said.trim().is_empty() { String::new() } else { format!(" You said \u{201c}{}\u{201d}.", said.trim()) };
        format!(
            "{CANNED_LABEL} {}{quoted} Run `den model fetch` for a model that runs here, or configure a provider.",
            openers[pick]
        )
    }
}

#[async_trait]
impl ChatModel for Canned {
    fn name(&self) -> &str {
        "canned"
    }

    async fn stream(&self, request: &ChatRequest) -> Result<ChatStream, LlmError> {
        let text = Self::answer(request);
        let words: Vec<String> = text.split_inclusive(' ').map(str::to_owned).collect();
        let usage = Usage { input_tokens: 0, output_tokens: words.len() as u64, cache_read_tokens: 0 };
        let gap = self.word_gap;
        let deltas = futures_util::stream::iter(words).then(move |w| async move {
            tokio::time::sleep(gap).await;
            Ok(StreamEvent::Delta(w))
        });
        let done =
            futures_util::stream::once(async move { Ok(StreamEvent::Done { usage, finish: FinishReason::Stop }) });
        Ok(Box::pin(deltas.chain(done)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn canned_answers_stream_and_say_they_are_canned() {
        let model = Canned { word_gap: Duration::ZERO };
        let stream = model.stream(&ChatRequest::simple("You are Gran.", "nice hat?")).await.unwrap();
        let (text, usage, finish) = den_llm::collect(stream).await.unwrap();
        assert!(text.starts_with(CANNED_LABEL), "{text}");
        assert!(text.contains("nice hat?"), "{text}");
        assert_eq!(finish, FinishReason::Stop);
        assert!(usage.output_tokens > 5);
    }
}
