//! The backend-independent conformance suites, run against the AWS backend
//! (DynamoDB and SQS) on the local emulator whose address is in
//! `DEN_TEST_AWS_ENDPOINT` (`scripts/test.sh` starts moto and sets it).
#![cfg(feature = "aws")]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use den_core::{Clock, Secret, SystemClock, Timestamp};
use den_storage::Store;
use den_storage::aws::{AwsOptions, AwsStore};
use den_storage::conformance::Harness;

/// The emulator's address; the suites cannot run without it.
pub fn endpoint() -> String {
    std::env::var("DEN_TEST_AWS_ENDPOINT").expect(
        "DEN_TEST_AWS_ENDPOINT is not set: the AWS backend's tests need moto on 127.0.0.1 \
         (run `bash scripts/test.sh`, which starts it)",
    )
}

fn options() -> AwsOptions {
    let mut options = AwsOptions::new("us-east-1");
    options.endpoint = Some(endpoint());
    options.table = "den-conformance".into();
    options.queue_prefix = format!("c{}-", std::process::id());
    options.static_credentials = Some(("testing".into(), Secret::new("testing")));
    options
}

struct AwsHarness {
    options: AwsOptions,
    store: Mutex<Arc<AwsStore>>,
    names: AtomicU32,
    salt: u32,
}

impl AwsHarness {
    async fn new() -> Self {
        let options = options();
        AwsStore::bootstrap_table(&options).await.expect("create the DynamoDB table on the emulator");
        let store = AwsStore::connect(options.clone(), Arc::new(SystemClock)).await.expect("connect");
        Self { options, store: Mutex::new(Arc::new(store)), names: AtomicU32::new(0), salt: rand::random() }
    }
}

#[async_trait]
impl Harness for AwsHarness {
    fn store(&self) -> Arc<dyn Store> {
        self.store.lock().unwrap().clone()
    }
    fn now(&self) -> Timestamp {
        SystemClock.now()
    }
    async fn advance(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }
    async fn reopen(&self) {
        let fresh = AwsStore::connect(self.options.clone(), Arc::new(SystemClock)).await.expect("reconnect");
        *self.store.lock().unwrap() = Arc::new(fresh);
    }
    fn unique(&self, base: &str) -> String {
        // Every test shares the emulator: names are unique per harness too.
        format!("{base}{:x}x{}", self.salt, self.names.fetch_add(1, Ordering::Relaxed))
    }
    fn interleaving_cases(&self) -> u32 {
        // Time here is real: each case sleeps ~13 s in total.
        std::env::var("DEN_AWS_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(6)
    }
}

den_storage::conformance_tests!(AwsHarness::new().await);
