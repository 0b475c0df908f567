//! In-process fakes for den's tests and benchmarks, on 127.0.0.1: Discord
//! (REST v10 checked against Discord's OpenAPI spec, gateway v10) and LLM
//! servers (Anthropic and OpenAI-compatible wire formats).

pub mod discord;
pub mod faults;
pub mod llm;
pub mod openapi;

pub use discord::{FakeConfig, FakeDiscord};
pub use faults::StoreFaults;
