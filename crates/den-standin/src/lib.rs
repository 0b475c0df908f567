//! A stand-in for Discord on 127.0.0.1, for den's tests, its benchmarks and
//! its playground, and for any bot a developer points at it.
//!
//! It serves REST v10 (every request and response checked against Discord's
//! published OpenAPI spec, with Discord-like rate limits) and gateway v10
//! (identify, resume with replay, heartbeats, `zlib-stream` compression,
//! injected faults) over one [`World`]. People act in it through
//! [`Standin`]: post, reply, attach files, start threads, invoke commands,
//! press buttons, pick from menus. Pages watch it through [`Standin::subscribe`]
//! and draw it per person with [`view`].
//!
//! A strict stand-in (tests) fails when dropped if a bot broke the spec; a
//! lenient one (the playground) reports each breach as an [`Event::Violation`].

mod conn;
pub mod events;
pub mod gateway;
mod interact;
pub mod json;
pub mod openapi;
mod people;
pub mod perms;
pub mod ratelimit;
mod rest;
mod server;
mod setup;
pub mod view;
pub mod voice;
pub mod world;

pub use events::{Direction, Event, Part};
pub use gateway::{
    GUILD_MEMBERS, GUILD_MESSAGES, GUILD_PRESENCES, GUILD_VOICE_STATES, GUILDS, GatewayMode, MESSAGE_CONTENT,
};
pub use interact::{CommandOption, SignedInteraction};
pub use people::Upload;
pub use ratelimit::{Bucket, RateLimits};
pub use server::{Injected, RequestRecord, Standin, StandinConfig, Stats};
pub use world::{Channel, Guild, Interaction, Message, Role, User, Webhook, World};
