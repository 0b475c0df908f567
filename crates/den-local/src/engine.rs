//! [`LocalModel`]: one thread that owns the weights and generates for one
//! request at a time, streaming tokens to den like any provider.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use candle_core::quantized::gguf_file;
use den_llm::{ChatModel, ChatRequest, ChatStream, FinishReason, LlmError, LlmErrorKind, StreamEvent, Usage};
use tokio::sync::mpsc;

use crate::LoadError;
use crate::chat::Chat;
use crate::llama::{Cache, Llama};
use crate::sampler::Sampler;

/// Requests that may wait for the model before new ones are refused.
const QUEUE: usize = 32;

/// How a local model runs.
#[derive(Clone, Debug)]
pub struct LocalOptions {
    /// Name in logs, metrics and the token ledger.
    pub name: String,
    /// Positions (prompt and reply) the model keeps: its memory use grows
    /// with this, about 46 KiB per position for SmolLM2-135M.
    /// Brief persona prompts and a reply fit in 1,024.
    pub context: usize,
    /// Temperature when a request sets none.
    pub temperature: f32,
    /// Seed of the sampler, for reproducible replies; random when `None`.
    pub seed: Option<u64>,
}

impl Default for LocalOptions {
    fn default() -> Self {
        Self { name: "local".into(), context: 1024, temperature: 0.7, seed: None }
    }
}

/// What was loaded.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    /// The model's own name (`general.name`), else the file's.
    pub model: String,
    /// The file.
    pub path: PathBuf,
    /// Weights, in parameters.
    pub parameters: u64,
    /// Positions kept (prompt and reply).
    pub context: usize,
    /// How long loading took (reading, requantising, warming up).
    pub load_time: Duration,
}

struct Job {
    request: ChatRequest,
    events: mpsc::Sender<Result<StreamEvent, LlmError>>,
}

/// A GGUF model running on den's CPU.
pub struct LocalModel {
    name: String,
    info: ModelInfo,
    jobs: std_mpsc::SyncSender<Job>,
    generated: Arc<AtomicU64>,
}

impl std::fmt::Debug for LocalModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalModel").field("name", &self.name).field("info", &self.info).finish_non_exhaustive()
    }
}

impl LocalModel {
    /// Loads `path` and starts the model's thread. Blocks for a second or
    /// two; [`LocalModel::open`] does it off the async runtime.
    pub fn load(path: &Path, options: LocalOptions) -> Result<Self, LoadError> {
        let started = Instant::now();
        let mut file = std::fs::File::open(path).map_err(|e| LoadError::not_found(path, &e))?;
        let ct = gguf_file::Content::read(&mut file)
            .map_err(|e| LoadError::unreadable(format!("{} is not a GGUF model: {e}", path.display())))?;
        let chat = Chat::load(&ct)?;
        let llama = Llama::load(&ct, &mut file, options.context)?;
        let parameters = ct.tensor_infos.values().map(|t| t.shape.elem_count() as u64).sum();
        let model = ct
            .metadata
            .get("general.name")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default());
        let mut engine = Engine {
            chat,
            llama,
            cache: Cache::default(),
            cached: Vec::new(),
            sampler: Sampler::new(options.seed),
            temperature: options.temperature,
            generated: Arc::default(),
        };
        // The first pass through the weights is slow (page faults, lazy setup): pay it now.
        engine.warm_up().map_err(|e| LoadError::unreadable(format!("the model does not run: {e}")))?;
        let info = ModelInfo {
            model,
            path: path.to_path_buf(),
            parameters,
            context: engine.llama.positions(),
            load_time: started.elapsed(),
        };
        let generated = engine.generated.clone();
        let (jobs, queue) = std_mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name(format!("den-local-{}", options.name))
            .spawn(move || engine.serve(&queue))
            .map_err(|e| LoadError::unreadable(format!("cannot start the model's thread: {e}")))?;
        Ok(Self { name: options.name, info, jobs, generated })
    }

    /// [`LocalModel::load`] on a blocking thread.
    pub async fn open(path: &Path, options: LocalOptions) -> Result<Self, LoadError> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || Self::load(&path, options))
            .await
            .map_err(|e| LoadError::unreadable(format!("loading the model failed: {e}")))?
    }

    /// What was loaded.
    #[must_use]
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Tokens generated since loading, abandoned replies included.
    #[must_use]
    pub fn tokens_generated(&self) -> u64 {
        self.generated.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl ChatModel for LocalModel {
    fn name(&self) -> &str {
        &self.name
    }

    async fn stream(&self, request: &ChatRequest) -> Result<ChatStream, LlmError> {
        let (events, mut rx) = mpsc::channel(256);
        self.jobs.try_send(Job { request: request.clone(), events }).map_err(|e| match e {
            std_mpsc::TrySendError::Full(_) => LlmError::new(
                LlmErrorKind::RateLimited { retry_after: None },
                &self.name,
                format!("{QUEUE} requests are already waiting for the local model"),
            ),
            std_mpsc::TrySendError::Disconnected(_) => {
                LlmError::new(LlmErrorKind::Unavailable, &self.name, "the local model stopped")
            }
        })?;
        Ok(Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))))
    }
}

/// The model's thread: the weights, the cache of the last prompt, the sampler.
struct Engine {
    chat: Chat,
    llama: Llama,
    cache: Cache,
    /// The tokens `cache` holds, so a prompt that starts the same skips them.
    cached: Vec<u32>,
    sampler: Sampler,
    temperature: f32,
    generated: Arc<AtomicU64>,
}

impl Engine {
    fn warm_up(&mut self) -> candle_core::Result<()> {
        let tokens = self.chat.encode("Hello").map_err(candle_core::Error::Msg)?;
        self.llama.forward(&tokens, &mut self.cache)?;
        self.cache = Cache::default();
        Ok(())
    }

    fn serve(mut self, jobs: &std_mpsc::Receiver<Job>) {
        for job in jobs {
            if job.events.is_closed() {
                continue; // abandoned while it waited
            }
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| self.generate(&job)));
            let error = match outcome {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => e,
                Err(_) => LlmError::new(LlmErrorKind::Server, "local", "the model failed on this request"),
            };
            // A failed pass may have left the cache half-written.
            self.cache = Cache::default();
            self.cached.clear();
            let _ = job.events.blocking_send(Err(error));
        }
    }

    fn generate(&mut self, job: &Job) -> Result<(), LlmError> {
        let request = &job.request;
        let fail = |kind: LlmErrorKind, message: String| LlmError::new(kind, "local", message);
        let positions = self.llama.positions();
        let max_new = (request.max_tokens.max(1) as usize).min(positions / 2);
        let prompt = self.chat.prompt(request, positions - max_new).map_err(|e| fail(LlmErrorKind::BadRequest, e))?;

        // Reuse the cached positions this prompt starts with (a persona's instructions).
        let shared = self.cached.iter().zip(&prompt).take_while(|(a, b)| a == b).count().min(prompt.len() - 1);
        self.cache.truncate(shared).map_err(|e| fail(LlmErrorKind::Server, e.to_string()))?;
        self.cached.truncate(shared);
        let run = |engine: &mut Self, tokens: &[u32]| -> Result<Vec<f32>, LlmError> {
            let logits = engine
                .llama
                .forward(tokens, &mut engine.cache)
                .map_err(|e| fail(LlmErrorKind::Server, e.to_string()))?;
            engine.cached.extend_from_slice(tokens);
            Ok(logits)
        };
        let mut logits = run(self, &prompt[shared..])?;

        let temperature = request.temperature.unwrap_or(self.temperature);
        let mut text = TextOut::new(&request.stop);
        let mut generated: Vec<u32> = Vec::new();
        let finish = loop {
            let next = self.sampler.sample(&mut logits, &generated, temperature);
            if self.chat.stops.contains(&next) {
                break FinishReason::Stop;
            }
            generated.push(next);
            self.generated.fetch_add(1, Ordering::Relaxed);
            let decoded = self.chat.decode(&generated).map_err(|e| fail(LlmErrorKind::Malformed, e))?;
            let (delta, stopped) = text.advance(&decoded);
            if !delta.is_empty() && job.events.blocking_send(Ok(StreamEvent::Delta(delta))).is_err() {
                return Ok(()); // the reply was abandoned: stop spending CPU on it
            }
            if stopped {
                break FinishReason::StopSequence;
            }
            if generated.len() >= max_new || self.cache.len() + 1 >= positions {
                break FinishReason::Length;
            }
            if job.events.is_closed() {
                return Ok(());
            }
            logits = run(self, &[next])?;
        };
        let rest = text.finish();
        if !rest.is_empty() {
            let _ = job.events.blocking_send(Ok(StreamEvent::Delta(rest)));
        }
        let usage = Usage {
            input_tokens: prompt.len() as u64,
            output_tokens: generated.len() as u64,
            cache_read_tokens: shared as u64,
        };
        let _ = job.events.blocking_send(Ok(StreamEvent::Done { usage, finish }));
        Ok(())
    }
}

/// Turns the growing decoded text into deltas, holding back what could be
/// the start of a stop sequence or half a character.
struct TextOut<'a> {
    stops: &'a [String],
    sent: usize,
    text: String,
}

impl<'a> TextOut<'a> {
    fn new(stops: &'a [String]) -> Self {
        Self { stops, sent: 0, text: String::new() }
    }

    /// Bytes at the end of the text that a stop sequence, or another
    /// speaker's label, could start with.
    fn held(&self) -> usize {
        let text = self.text.as_bytes();
        let stop = self
            .stops
            .iter()
            .flat_map(|s| (1..s.len()).rev().filter(move |&k| text.ends_with(&s.as_bytes()[..k])).take(1))
            .max()
            .unwrap_or(0);
        let label = match self.text.rfind('\n') {
            Some(at) if label(&self.text[at + 1..]) == Label::Maybe => self.text.len() - at,
            _ => 0,
        };
        stop.max(label)
    }

    /// The new text safe to send, and whether a stop sequence appeared.
    fn advance(&mut self, decoded: &str) -> (String, bool) {
        // A token that ends inside a character decodes to U+FFFD until the rest comes.
        if decoded.ends_with('\u{FFFD}') || !decoded.starts_with(&self.text[..self.sent]) {
            return (String::new(), false);
        }
        self.text = decoded.to_owned();
        let stop = self.stops.iter().filter_map(|s| self.text.find(s.as_str())).chain(next_speaker(&self.text)).min();
        if let Some(at) = stop {
            self.text.truncate(at);
            let delta = self.text.get(self.sent..).unwrap_or_default().to_owned();
            self.sent = self.text.len();
            return (delta, true);
        }
        let mut safe = self.text.len().saturating_sub(self.held()).max(self.sent);
        while !self.text.is_char_boundary(safe) {
            safe -= 1;
        }
        let delta = self.text[self.sent..safe].to_owned();
        self.sent = safe;
        (delta, false)
    }

    /// What was held back, once no stop sequence can follow.
    fn finish(&mut self) -> String {
        let rest = self.text.get(self.sent..).unwrap_or_default().to_owned();
        self.sent = self.text.len();
        rest
    }
}

/// Whether text after a newline is a speaker's label (`Ben: `).
#[derive(Debug, PartialEq, Eq)]
enum Label {
    /// It is one.
    Complete,
    /// It may become one.
    Maybe,
    /// It is not.
    No,
}

fn label(line: &str) -> Label {
    for (n, c) in line.char_indices() {
        if c == ':' {
            return if n > 0 { Label::Complete } else { Label::No };
        }
        if n >= 32 || !(c.is_alphanumeric() || " -_.'".contains(c)) {
            return Label::No;
        }
    }
    Label::Maybe
}

/// Where a line opening another speaker's turn starts. The prompt shows
/// people as `Name: text`, and small models go on to write the next
/// person's line: the reply ends before it.
fn next_speaker(text: &str) -> Option<usize> {
    text.match_indices('\n').map(|(i, _)| i).find(|&i| label(&text[i + 1..]) == Label::Complete)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_in_another_speakers_name_ends_the_reply() {
        let mut out = TextOut::new(&[]);
        assert_eq!(out.advance("Nice hat, dear."), ("Nice hat, dear.".into(), false));
        assert_eq!(out.advance("Nice hat, dear.\nGun"), (String::new(), false), "could be a label: held");
        assert_eq!(out.advance("Nice hat, dear.\nGunnar: you too"), (String::new(), true));
        let mut out = TextOut::new(&[]);
        out.advance("Two lines.\nThe second, ");
        assert_eq!(out.finish(), "", "a plain second line is sent as it comes");
        assert_eq!(out.text, "Two lines.\nThe second, ");
    }

    #[test]
    fn stop_sequences_are_held_back_and_cut() {
        let stops = vec!["\nBen:".to_owned()];
        let mut out = TextOut::new(&stops);
        assert_eq!(out.advance("Hello"), ("Hello".into(), false));
        // "\nBe" could start the stop sequence: held back.
        assert_eq!(out.advance("Hello there\nBe"), (" there".into(), false));
        assert_eq!(out.advance("Hello there\nBen: hi"), (String::new(), true));
        assert_eq!(out.finish(), "");
    }

    #[test]
    fn half_characters_wait_for_the_rest() {
        let mut out = TextOut::new(&[]);
        assert_eq!(out.advance("caf\u{FFFD}"), (String::new(), false));
        assert_eq!(out.advance("café"), ("café".into(), false));
    }
}
