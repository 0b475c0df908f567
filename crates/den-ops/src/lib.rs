//! den's operations surface: metrics, logs, and the HTTP server that answers
//! `/health`, `/ready` and `/metrics`.
//!
//! Nothing here is global: the binary builds one [`Metrics`] and passes it to
//! whatever records into it.

pub mod emf;
mod logging;
mod metrics;
mod music;
mod server;

pub use logging::{LogFormat, init_logging};
pub use metrics::{JobOutcome, Metrics, QueueDepthCollector, spawn_heartbeat};
pub use server::{OpsState, ReadinessCheck, ScrapeHook, serve};
