//! In-process fakes for den's tests and benchmarks, on 127.0.0.1: Discord
//! (the [`den_standin`] stand-in, strict about Discord's OpenAPI spec) and
//! LLM servers (Anthropic, OpenAI-compatible and Bedrock wire formats), and
//! a store that fails on demand.

pub mod faults;
pub mod llm;

/// The Discord stand-in, under the names den's tests use.
pub mod discord {
    pub use den_standin::*;

    /// The stand-in as tests use it: strict, so a spec breach fails the test.
    pub type FakeDiscord = Standin;
    /// How a test's stand-in is set up.
    pub type FakeConfig = StandinConfig;
}

pub use discord::{FakeConfig, FakeDiscord};
pub use faults::StoreFaults;
