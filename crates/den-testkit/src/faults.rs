//! A store that fails on demand: den's real store behind a switch, for tests
//! that show nothing is lost or done twice when the store hiccups.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use den_storage::{MessageEvent, Metered, Store, StoreError, StoreErrorKind, StoreObserver, StoreResult};

/// The switch: [`StoreFaults::wrap`] a store, then [`StoreFaults::fail`] it.
#[derive(Clone, Debug, Default)]
pub struct StoreFaults {
    failing: Arc<AtomicBool>,
    only_sends: Arc<AtomicBool>,
    refused: Arc<AtomicU64>,
}

impl StoreFaults {
    /// A switch, off.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// `store` behind this switch.
    #[must_use]
    pub fn wrap(&self, store: Arc<dyn Store>) -> Arc<dyn Store> {
        Arc::new(Metered::new(store, Arc::new(self.clone())))
    }

    /// Every call fails while `on` (a backend error, as when the disk or DynamoDB fails).
    pub fn fail(&self, on: bool) {
        self.only_sends.store(false, Ordering::SeqCst);
        self.failing.store(on, Ordering::SeqCst);
    }

    /// Only queue sends fail while `on`: ingress cannot enqueue, the rest works.
    pub fn fail_sends(&self, on: bool) {
        self.only_sends.store(true, Ordering::SeqCst);
        self.failing.store(on, Ordering::SeqCst);
    }

    /// Calls refused so far.
    #[must_use]
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }
}

impl StoreObserver for StoreFaults {
    fn admit(&self, target: &'static str, op: &'static str) -> StoreResult<()> {
        let applies = !self.only_sends.load(Ordering::SeqCst) || (target == "queue" && op == "send");
        if applies && self.failing.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::new(StoreErrorKind::Backend, format!("injected store failure ({target} {op})")));
        }
        Ok(())
    }

    fn operation(&self, _: &'static str, _: &'static str, _: Duration, _: bool) {}

    fn messages(&self, _: &str, _: MessageEvent, _: u64) {}
}
