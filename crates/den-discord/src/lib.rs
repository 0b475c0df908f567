//! den's Discord I/O.
//!
//! - [`egress`]: the one rate-limited REST client of a process, with webhooks
//!   and interaction responses.
//! - [`events`]: the small types den parses from Discord's events.
//! - [`split`]: long text into Discord-sized messages.

pub mod attachments;
pub mod egress;
pub mod events;
pub mod gateway;
pub mod guild;
pub mod interactions;
pub mod module;
pub mod posts;
pub mod rest;
pub mod router;
pub mod split;

pub use egress::{
    Ack, Button, ButtonStyle, DiscordError, DiscordErrorKind, DiscordResult, Egress, EgressConfig, Identity, Outgoing,
    Poster,
};
pub use module::{CommandSpec, IngressCx, InteractionRef, Module, OptionKind, OptionSpec, Reaction};
pub use router::Router;

/// Discord's epoch (2015-01-01) in Unix milliseconds: snowflakes count from it.
pub const DISCORD_EPOCH_MS: u64 = 1_420_070_400_000;

/// When Discord made the object with snowflake `id`, by Discord's clock (its
/// top 42 bits are milliseconds since Discord's epoch).
#[must_use]
pub fn snowflake_time(id: u64) -> den_core::Timestamp {
    den_core::Timestamp(i64::try_from((id >> 22) + DISCORD_EPOCH_MS).unwrap_or(i64::MAX))
}

/// The smallest snowflake Discord could give an object made at `t`.
#[must_use]
pub fn snowflake_at(t: den_core::Timestamp) -> u64 {
    u64::try_from(t.0).unwrap_or(0).saturating_sub(DISCORD_EPOCH_MS) << 22
}

/// Installs ring as rustls's crypto provider, once; twilight panics without one,
/// even for plain `ws://` and `http://`.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
