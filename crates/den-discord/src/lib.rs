//! den's Discord I/O.
//!
//! - [`egress`]: the one rate-limited REST client of a process, with webhooks
//!   and interaction responses.
//! - [`events`]: the small types den parses from Discord's events.
//! - [`split`]: long text into Discord-sized messages.

pub mod egress;
pub mod events;
pub mod gateway;
pub mod guild;
pub mod interactions;
pub mod module;
pub mod router;
pub mod split;

pub use egress::{Ack, DiscordError, DiscordErrorKind, Egress, EgressConfig, Identity};
pub use module::{CommandSpec, IngressCx, InteractionRef, Module, OptionKind, OptionSpec, Reaction};
pub use router::Router;

/// Installs ring as rustls's crypto provider, once; twilight panics without one,
/// even for plain `ws://` and `http://`.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
