//! Everything music keeps in den's `music` table: queues, server settings and
//! the allowlist, people's preferences and playlists, and the track cache.

use std::sync::Arc;

use den_core::Clock;
use den_storage::{Store, StoreResult};

use crate::cache::TrackCache;
use crate::prefs::People;
use crate::queue::{Queues, table_spec};
use crate::settings::Policies;

/// Music's views of the `music` table.
#[derive(Clone, Debug)]
pub struct Tables {
    /// Servers' queues.
    pub queues: Queues,
    /// Server settings and the allowlist.
    pub policies: Policies,
    /// People's preferences and playlists.
    pub people: People,
    /// Resolved requests.
    pub cache: TrackCache,
}

impl Tables {
    /// Opens (declaring it when new) the `music` table of `store`.
    pub async fn open(store: &dyn Store, clock: Arc<dyn Clock>, metrics: den_ops::Metrics) -> StoreResult<Self> {
        let table = store.table(table_spec()).await?;
        Ok(Self {
            queues: Queues::new(table.clone(), clock.clone()),
            policies: Policies::new(table.clone()),
            people: People::new(table.clone()),
            cache: TrackCache::new(table, clock, metrics),
        })
    }
}
