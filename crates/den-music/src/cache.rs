//! The track cache: what a request resolved to (title, artist, length, where
//! to play it from), kept for a while, so the same request again resolves
//! without touching the library or the link. Its hit rate is in
//! `den_music_track_cache_total`.

use std::sync::Arc;
use std::time::Duration;

use den_core::Clock;
use den_storage::{Put, StoreResult, Table};

use crate::track::Track;

/// How long a resolved request is kept (resolved stream addresses expire).
pub const TTL: Duration = Duration::from_secs(6 * 3600);
/// Partitions the cache is spread over (no hot key in DynamoDB).
const SHARDS: u64 = 64;

/// Resolved requests, in the `music` table.
#[derive(Clone, Debug)]
pub struct TrackCache {
    table: Arc<dyn Table>,
    clock: Arc<dyn Clock>,
    metrics: den_ops::Metrics,
}

/// A request as the cache keys it: trimmed, lower case, one space between
/// words, with its FNV-1a hash (which picks the partition, and names a long request).
fn key(request: &str) -> (String, String) {
    let normal = request.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
    let hash = normal.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    let sk = if normal.len() <= 200 { normal } else { format!("#{hash:016x}") };
    (format!("cache:{:02x}", hash % SHARDS), sk)
}

impl TrackCache {
    /// A cache in `table` (the `music` table), counting hits in `metrics`.
    #[must_use]
    pub fn new(table: Arc<dyn Table>, clock: Arc<dyn Clock>, metrics: den_ops::Metrics) -> Self {
        Self { table, clock, metrics }
    }

    /// What `request` resolved to, if it did lately.
    pub async fn get(&self, request: &str) -> StoreResult<Option<Track>> {
        let (pk, sk) = key(request);
        let found =
            self.table.get(&pk, &sk).await?.and_then(|i| serde_json::from_value(i.attrs.get("track")?.clone()).ok());
        self.metrics.music_cache(found.is_some());
        Ok(found)
    }

    /// Keeps what `request` resolved to.
    pub async fn put(&self, request: &str, track: &Track) -> StoreResult<()> {
        let (pk, sk) = key(request);
        let mut attrs = serde_json::Map::new();
        attrs.insert("track".into(), serde_json::to_value(track).unwrap_or_default());
        let put = Put::new(pk, sk, attrs).expires_at(self.clock.now().plus(TTL));
        self.table.put(put).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_that_differ_only_in_case_and_spacing_share_a_key() {
        assert_eq!(key("  Concert   A "), key("concert a"));
        assert_ne!(key("concert a"), key("concert b"));
        let long = "x".repeat(300);
        assert!(key(&long).1.starts_with('#') && key(&long).1.len() == 17);
    }
}
