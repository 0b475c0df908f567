//! In-process fakes for den's tests and benchmarks: Discord (REST v10 checked
//! against Discord's OpenAPI spec, gateway v10) on 127.0.0.1.

pub mod discord;
pub mod openapi;

pub use discord::{FakeConfig, FakeDiscord};
