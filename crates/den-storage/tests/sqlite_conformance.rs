//! The backend-independent conformance suites, run against the SQLite backend.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use den_core::{Clock, ManualClock, Timestamp};
use den_storage::Store;
use den_storage::conformance::Harness;
use den_storage::sqlite::{SqliteOptions, SqliteStore};

struct SqliteHarness {
    _dir: tempfile::TempDir,
    options: SqliteOptions,
    clock: ManualClock,
    store: Mutex<Arc<SqliteStore>>,
    names: AtomicU32,
}

impl SqliteHarness {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteOptions::new(dir.path().join("den.db"));
        let clock = ManualClock::new(Timestamp(1_700_000_000_000));
        let store = SqliteStore::open(&options, Arc::new(clock.clone())).unwrap();
        Self { _dir: dir, options, clock, store: Mutex::new(Arc::new(store)), names: AtomicU32::new(0) }
    }
}

#[async_trait]
impl Harness for SqliteHarness {
    fn store(&self) -> Arc<dyn Store> {
        self.store.lock().unwrap().clone()
    }
    fn now(&self) -> Timestamp {
        self.clock.now()
    }
    async fn advance(&self, d: Duration) {
        self.clock.advance(d);
    }
    async fn reopen(&self) {
        let old = self.store.lock().unwrap().clone();
        old.close().await.unwrap();
        let fresh = SqliteStore::open(&self.options, Arc::new(self.clock.clone())).unwrap();
        *self.store.lock().unwrap() = Arc::new(fresh);
    }
    fn unique(&self, base: &str) -> String {
        format!("{base}{}", self.names.fetch_add(1, Ordering::Relaxed))
    }
}

den_storage::conformance_tests!(SqliteHarness::new());
