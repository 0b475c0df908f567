//! In-process fakes for den's tests and benchmarks, on 127.0.0.1: Discord
//! (the [`den_standin`] stand-in, strict about Discord's OpenAPI spec) and
//! its voice server (which decrypts and decodes what a bot plays), LLM
//! servers (Anthropic, OpenAI-compatible and Bedrock wire formats), tone
//! files, a store that fails on demand, and AWS Lambda's Runtime API.

/// Tone files for den to play.
pub mod audio {
    pub use den_standin::voice::tones::*;
}
pub mod faults;
pub mod lambda;
pub mod llm;

/// The Discord stand-in, under the names den's tests use.
pub mod discord {
    pub use den_standin::*;

    /// The stand-in as tests use it: strict, so a spec breach fails the test.
    pub type FakeDiscord = Standin;
    /// How a test's stand-in is set up.
    pub type FakeConfig = StandinConfig;
    /// The stand-in's voice server: the voice gateway and the UDP peer that hears what a bot sends.
    pub type FakeVoice = voice::VoiceServer;
}

pub use discord::{FakeConfig, FakeDiscord, FakeVoice};
pub use faults::StoreFaults;
