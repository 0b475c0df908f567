//! A language model in den's own process, so personas, memory consolidation
//! and `den chat` work with no API key and no server.
//!
//! [`LocalModel`] runs a small llama-architecture GGUF model on the CPU
//! (SmolLM2-135M-Instruct by default, fetched by [`fetch`]) behind den's
//! [`den_llm::ChatModel`]: it streams tokens, stops when the stream is
//! dropped, and reports token counts like the remote providers. [`Canned`]
//! is the last resort when there is no model at all: it answers, labelled
//! as canned.
//!
//! Threads: candle sizes its thread pool from `RAYON_NUM_THREADS` once per
//! process, so den sets it before anything starts (one thread by default:
//! spinning worker threads collapse throughput on shared small machines).

mod canned;
mod chat;
mod engine;
pub mod fetch;
mod llama;
mod sampler;
pub mod testing;

use std::path::Path;

pub use canned::{CANNED_LABEL, Canned};
pub use engine::{LocalModel, LocalOptions, ModelInfo};

/// Why a model could not be loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LoadErrorKind {
    /// The file is not there.
    NotFound,
    /// The file is not a readable GGUF model.
    Unreadable,
    /// A GGUF model den cannot run (architecture, tokenizer, chat template).
    Unsupported,
}

/// A model that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct LoadError {
    kind: LoadErrorKind,
    message: String,
}

impl LoadError {
    /// What went wrong.
    #[must_use]
    pub fn kind(&self) -> LoadErrorKind {
        self.kind
    }

    pub(crate) fn not_found(path: &Path, e: &std::io::Error) -> Self {
        Self {
            kind: LoadErrorKind::NotFound,
            message: format!("cannot open the model {}: {e} (run `den model fetch`)", path.display()),
        }
    }

    pub(crate) fn unreadable(message: impl Into<String>) -> Self {
        Self { kind: LoadErrorKind::Unreadable, message: message.into() }
    }

    pub(crate) fn unsupported(message: impl Into<String>) -> Self {
        Self { kind: LoadErrorKind::Unsupported, message: format!("unsupported model: {}", message.into()) }
    }
}
