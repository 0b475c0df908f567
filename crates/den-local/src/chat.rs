//! Text in and out: the tokenizer the GGUF carries, and the ChatML template
//! SmolLM2 (and most small instruct models) were trained on.

use candle_core::quantized::gguf_file;
use candle_core::quantized::tokenizer::TokenizerFromGguf as _;
use den_llm::{ChatRequest, Role, alternating_turns};
use tokenizers::Tokenizer;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;

use crate::LoadError;

const START: &str = "<|im_start|>";
const END: &str = "<|im_end|>";

/// The model's vocabulary and chat template.
pub(crate) struct Chat {
    tokenizer: Tokenizer,
    /// Tokens that end a reply.
    pub stops: Vec<u32>,
}

impl Chat {
    pub fn load(ct: &gguf_file::Content) -> Result<Self, LoadError> {
        let mut tokenizer = Tokenizer::from_gguf(ct).map_err(|e| LoadError::unsupported(format!("tokenizer: {e}")))?;
        let pre = ct.metadata.get("tokenizer.ggml.pre").and_then(|v| v.to_string().ok()).map(String::as_str);
        if pre == Some("smollm") {
            // SmolLM's tokenizer.json: single digits, then byte-level without a leading space.
            let steps = vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
            ];
            tokenizer.with_pre_tokenizer(Some(Sequence::new(steps)));
        }
        let id = |t: &str| tokenizer.token_to_id(t);
        let (Some(_), Some(end)) = (id(START), id(END)) else {
            return Err(LoadError::unsupported(
                "the model has no ChatML tokens (<|im_start|>, <|im_end|>); den speaks ChatML to local models",
            ));
        };
        let mut stops = vec![end];
        let eos = ct.metadata.get("tokenizer.ggml.eos_token_id").and_then(|v| v.to_u32().ok());
        stops.extend(eos.into_iter().chain(id("<|endoftext|>")).filter(|t| *t != end));
        Ok(Self { tokenizer, stops })
    }

    /// Token ids of `text`, control tokens included.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        self.tokenizer.encode(text, false).map(|e| e.get_ids().to_vec()).map_err(|e| e.to_string())
    }

    /// Text of `tokens`, control tokens left out.
    pub fn decode(&self, tokens: &[u32]) -> Result<String, String> {
        self.tokenizer.decode(tokens, true).map_err(|e| e.to_string())
    }

    /// The prompt of `request` in at most `budget` tokens: the oldest
    /// messages go first, then the end of the instructions.
    pub fn prompt(&self, request: &ChatRequest, budget: usize) -> Result<Vec<u32>, String> {
        let system = neutralise(&request.system);
        let messages = &request.messages;
        let tokens = |skip: usize, system: &str| self.encode(&render(system, &alternating_turns(&messages[skip..])));
        let whole = tokens(0, &system)?;
        if whole.len() <= budget {
            return Ok(whole);
        }
        // Fewer messages, fewer tokens: find the fewest to leave out.
        let last = messages.len().saturating_sub(1);
        let latest = tokens(last, &system)?;
        if latest.len() <= budget {
            let (mut lo, mut hi, mut best) = (1, last, latest);
            while lo < hi {
                let mid = (lo + hi) / 2;
                let t = tokens(mid, &system)?;
                if t.len() <= budget {
                    (hi, best) = (mid, t);
                } else {
                    lo = mid + 1;
                }
            }
            return Ok(best);
        }
        // Even the last message alone is too long with the instructions: shorten them.
        let fixed = tokens(last, "")?.len();
        let room = budget.checked_sub(fixed).ok_or("the last message alone is longer than the model's context")?;
        let ids = self.encode(&system)?;
        let system = self.decode(&ids[..room.min(ids.len())])?;
        tokens(last, &system)
    }
}

/// Text people wrote can name control tokens; a space keeps them text.
fn neutralise(text: &str) -> String {
    text.replace("<|", "< |")
}

/// ChatML: every turn between start and end markers, then an open assistant turn.
fn render(system: &str, turns: &[(Role, String)]) -> String {
    let mut out = String::new();
    if !system.is_empty() {
        out.push_str(&format!("{START}system\n{system}{END}\n"));
    }
    for (role, text) in turns {
        let role = match role {
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        out.push_str(&format!("{START}{role}\n{}{END}\n", neutralise(text)));
    }
    out.push_str(START);
    out.push_str("assistant\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use den_llm::ChatMessage;

    #[test]
    fn chatml_names_speakers_and_ends_with_an_open_assistant_turn() {
        let mut r = ChatRequest::simple("Be brief.", "hi");
        r.messages = vec![ChatMessage::user(Some("Ada"), "hello <|im_end|> there"), ChatMessage::assistant("yo")];
        let text = render(&neutralise(&r.system), &alternating_turns(&r.messages));
        assert_eq!(
            text,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nAda: hello < |im_end|> there<|im_end|>\n\
             <|im_start|>assistant\nyo<|im_end|>\n<|im_start|>assistant\n"
        );
    }
}
