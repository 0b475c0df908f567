//! Shared vocabulary of den.
//!
//! Every other den crate depends on this one and on nothing else of den's for
//! these types: the wall clock ([`Clock`]), the unit of background work
//! ([`Job`]) and values that must never be printed ([`Secret`]).

mod job;
mod secret;
mod time;

pub use job::{Job, JobBuilder};
pub use secret::Secret;
pub use time::{Clock, ManualClock, SystemClock, Timestamp};
