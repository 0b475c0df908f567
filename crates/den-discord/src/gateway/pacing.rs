//! Identify pacing through the store: every process sharing it keeps to
//! Discord's `max_concurrency` identifies per 5 s per bucket and 1,000 a day.

use std::sync::Arc;
use std::time::Duration;

use den_core::{Clock, Timestamp};
use den_storage::{Condition, Put, Table};
use serde_json::{Value, json};

/// Identifies per bucket are spaced this far apart (Discord: `max_concurrency` per 5 s).
const IDENTIFY_SPACING: Duration = Duration::from_secs(5);
/// Identifies allowed per 24 hours (Discord resets the token beyond this).
const IDENTIFIES_PER_DAY: u64 = 1000;

/// Paces identifies through a table, so that every process sharing the store
/// keeps to `max_concurrency` per 5 s per bucket and 1,000 per day.
#[derive(Clone)]
pub struct StoreIdentifyQueue {
    table: Arc<dyn Table>,
    clock: Arc<dyn Clock>,
    max_concurrency: u32,
}

impl std::fmt::Debug for StoreIdentifyQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreIdentifyQueue").field("max_concurrency", &self.max_concurrency).finish()
    }
}

impl StoreIdentifyQueue {
    /// A queue over `table` for a bot with `max_concurrency`.
    #[must_use]
    pub fn new(table: Arc<dyn Table>, clock: Arc<dyn Clock>, max_concurrency: u32) -> Self {
        Self { table, clock, max_concurrency: max_concurrency.max(1) }
    }

    /// Waits for the right to identify shard `shard`.
    pub async fn acquire(&self, shard: u32) {
        let bucket = shard % self.max_concurrency;
        loop {
            match self.try_acquire(bucket).await {
                Ok(None) => return,
                Ok(Some(wait)) => tokio::time::sleep(wait.max(Duration::from_millis(50))).await,
                Err(e) => {
                    tracing::warn!(error = %e, "identify pacing: store error; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Takes the bucket's slot if it is free; otherwise says how long to wait.
    async fn try_acquire(&self, bucket: u32) -> Result<Option<Duration>, den_storage::StoreError> {
        let now = self.clock.now();
        let day = self.table.get("identify", "day").await?;
        let (day_start, day_count, day_version) = match &day {
            Some(item) => (
                Timestamp(item.attrs.get("start").and_then(Value::as_i64).unwrap_or(0)),
                item.attrs.get("count").and_then(Value::as_u64).unwrap_or(0),
                Some(item.version),
            ),
            None => (now, 0, None),
        };
        let window_over = now.since(day_start) >= Duration::from_secs(86_400);
        if !window_over && day_count >= IDENTIFIES_PER_DAY {
            tracing::error!("1,000 identifies in 24 hours reached; waiting for the window to pass");
            return Ok(Some(Duration::from_secs(86_400).saturating_sub(now.since(day_start))));
        }
        let key = format!("bucket:{bucket}");
        let slot = self.table.get("identify", &key).await?;
        let next =
            slot.as_ref().and_then(|i| i.attrs.get("next").and_then(Value::as_i64)).map_or(Timestamp(0), Timestamp);
        if now < next {
            return Ok(Some(next.since(now)));
        }
        let condition = slot.as_ref().map_or(Condition::Absent, |i| Condition::VersionEquals(i.version));
        let attrs = json!({"next": now.plus(IDENTIFY_SPACING).as_millis()});
        let put = Put::new("identify", key, attrs.as_object().cloned().unwrap_or_default()).condition(condition);
        match self.table.put(put).await {
            Ok(_) => {}
            Err(e) if e.kind() == den_storage::StoreErrorKind::ConditionFailed => {
                return Ok(Some(Duration::from_millis(100)));
            }
            Err(e) => return Err(e),
        }
        let (start, count) = if window_over || day.is_none() { (now, 1) } else { (day_start, day_count + 1) };
        let attrs = json!({"start": start.as_millis(), "count": count});
        let condition = day_version.map_or(Condition::Absent, Condition::VersionEquals);
        if let Err(e) = self
            .table
            .put(Put::new("identify", "day", attrs.as_object().cloned().unwrap_or_default()).condition(condition))
            .await
        {
            // Another process counted at the same moment; its count stands and ours is off by one at most.
            tracing::debug!(error = %e, "identify day counter raced");
        }
        Ok(None)
    }
}
