//! den's storage: a DynamoDB-shaped [`Table`] and an SQS-shaped [`Queue`].
//!
//! Modules code against the traits; the binary picks a backend. The default
//! backend, [`sqlite`], keeps every table and queue in one SQLite file. The
//! semantics every backend must honour are pinned by the suites in
//! `conformance` (cargo feature `conformance`), which each backend's tests run
//! unchanged.

#[cfg(feature = "aws")]
pub mod aws;
mod error;
mod metered;
mod queue;
pub mod sqlite;
mod table;

#[cfg(feature = "conformance")]
pub mod conformance;

use std::sync::Arc;

use async_trait::async_trait;

pub use error::{StoreError, StoreErrorKind, StoreResult};
pub use metered::{MessageEvent, Metered, StoreObserver};
pub use queue::{
    DEDUP_WINDOW, DeadLetterSpec, Delivery, HandedMessage, MAX_BATCH, MAX_BODY_BYTES, MAX_DELAY, MAX_VISIBILITY,
    MAX_WAIT, OutgoingMessage, PeekedMessage, Queue, QueueDepth, QueueSpec, RETENTION_RANGE, Receipt, ReceiveOptions,
    SQS_ID_ATTRIBUTE, Sent,
};
pub use table::{
    Condition, IndexSpec, Item, MAX_ITEM_BYTES, MAX_QUERY_LIMIT, Page, Put, Query, SkCondition, Table, TableSpec,
};

/// What a sweep of expired data deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Expired table items deleted.
    pub items: u64,
    /// Queue messages past retention deleted.
    pub messages: u64,
}

/// A storage backend: where tables and queues live.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// A handle on the table declared by `spec`, created when missing.
    async fn table(&self, spec: TableSpec) -> StoreResult<Arc<dyn Table>>;

    /// The backend's queues.
    fn queue(&self) -> Arc<dyn Queue>;

    /// Checks that the backend's tables answer ([`Queue::probe`] checks a queue).
    async fn ping(&self) -> StoreResult<()>;

    /// Deletes expired items and messages now.
    async fn sweep(&self) -> StoreResult<SweepReport>;

    /// Finishes pending writes and releases the backend.
    async fn close(&self) -> StoreResult<()>;

    /// One line naming the backend and where its data is, for logs.
    fn describe(&self) -> String;
}

#[async_trait]
impl Store for sqlite::SqliteStore {
    async fn table(&self, spec: TableSpec) -> StoreResult<Arc<dyn Table>> {
        Ok(Arc::new(sqlite::SqliteStore::table(self, spec).await?))
    }

    fn queue(&self) -> Arc<dyn Queue> {
        Arc::new(sqlite::SqliteStore::queue(self))
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlite::SqliteStore::ping(self).await
    }

    async fn sweep(&self) -> StoreResult<SweepReport> {
        let items = self.sweep_items().await?;
        let messages = sqlite::SqliteStore::queue(self).sweep_expired().await?;
        Ok(SweepReport { items, messages })
    }

    async fn close(&self) -> StoreResult<()> {
        sqlite::SqliteStore::close(self).await
    }

    fn describe(&self) -> String {
        format!("sqlite {}", self.path().display())
    }
}
