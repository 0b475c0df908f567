use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::{
    Condition, Delivery, HandedMessage, Item, OutgoingMessage, Page, PeekedMessage, Put, Query, Queue, QueueDepth,
    QueueSpec, Receipt, ReceiveOptions, Sent, Store, StoreResult, SweepReport, Table, TableSpec,
};

/// What happened to queue messages, for counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageEvent {
    /// Enqueued (duplicates suppressed by a dedup key are not counted).
    Sent,
    /// Delivered by a receive.
    Received,
    /// Acknowledged and deleted.
    Acked,
    /// Moved to the dead-letter queue by a consumer.
    DeadLettered,
}

/// Receives the timings and counts of storage calls (den-ops turns them into
/// metrics), and may refuse calls (tests use that to make the store fail).
pub trait StoreObserver: Send + Sync + std::fmt::Debug {
    /// Whether the call `op` on `target` may go ahead; an error is what the caller gets instead.
    fn admit(&self, _target: &'static str, _op: &'static str) -> StoreResult<()> {
        Ok(())
    }
    /// A call on a table (`target = "table"`) or queue (`"queue"`) took `elapsed`.
    fn operation(&self, target: &'static str, op: &'static str, elapsed: Duration, ok: bool);
    /// `count` messages of `queue` went through `event`.
    fn messages(&self, queue: &str, event: MessageEvent, count: u64);
}

/// A [`Store`] whose tables and queues report every call to an observer.
#[derive(Debug)]
pub struct Metered {
    inner: Arc<dyn Store>,
    observer: Arc<dyn StoreObserver>,
}

impl Metered {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>, observer: Arc<dyn StoreObserver>) -> Self {
        Self { inner, observer }
    }
}

async fn timed<T>(
    observer: &dyn StoreObserver,
    target: &'static str,
    op: &'static str,
    fut: impl Future<Output = StoreResult<T>>,
) -> StoreResult<T> {
    observer.admit(target, op)?;
    let start = Instant::now();
    let result = fut.await;
    observer.operation(target, op, start.elapsed(), result.is_ok());
    result
}

#[async_trait]
impl Store for Metered {
    async fn table(&self, spec: TableSpec) -> StoreResult<Arc<dyn Table>> {
        self.observer.admit("table", "declare")?;
        let inner = self.inner.table(spec).await?;
        Ok(Arc::new(MeteredTable { inner, observer: self.observer.clone() }))
    }

    fn queue(&self) -> Arc<dyn Queue> {
        Arc::new(MeteredQueue { inner: self.inner.queue(), observer: self.observer.clone() })
    }

    async fn ping(&self) -> StoreResult<()> {
        self.observer.admit("table", "ping")?;
        self.inner.ping().await
    }

    async fn sweep(&self) -> StoreResult<SweepReport> {
        timed(&*self.observer, "table", "sweep", self.inner.sweep()).await
    }

    async fn close(&self) -> StoreResult<()> {
        self.inner.close().await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[derive(Debug)]
struct MeteredTable {
    inner: Arc<dyn Table>,
    observer: Arc<dyn StoreObserver>,
}

#[async_trait]
impl Table for MeteredTable {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn get(&self, pk: &str, sk: &str) -> StoreResult<Option<Item>> {
        timed(&*self.observer, "table", "get", self.inner.get(pk, sk)).await
    }
    async fn put(&self, put: Put) -> StoreResult<u64> {
        timed(&*self.observer, "table", "put", self.inner.put(put)).await
    }
    async fn delete(&self, pk: &str, sk: &str, condition: Condition) -> StoreResult<bool> {
        timed(&*self.observer, "table", "delete", self.inner.delete(pk, sk, condition)).await
    }
    async fn query(&self, query: Query) -> StoreResult<Page> {
        timed(&*self.observer, "table", "query", self.inner.query(query)).await
    }
    async fn sweep_expired(&self, limit: usize) -> StoreResult<u64> {
        timed(&*self.observer, "table", "sweep", self.inner.sweep_expired(limit)).await
    }
}

#[derive(Debug)]
struct MeteredQueue {
    inner: Arc<dyn Queue>,
    observer: Arc<dyn StoreObserver>,
}

#[async_trait]
impl Queue for MeteredQueue {
    async fn create_queue(&self, spec: &QueueSpec) -> StoreResult<()> {
        timed(&*self.observer, "queue", "create_queue", self.inner.create_queue(spec)).await
    }
    async fn list_queues(&self) -> StoreResult<Vec<QueueSpec>> {
        timed(&*self.observer, "queue", "list_queues", self.inner.list_queues()).await
    }
    async fn send_batch(&self, queue: &str, messages: Vec<OutgoingMessage>) -> StoreResult<Vec<Sent>> {
        let sent = timed(&*self.observer, "queue", "send", self.inner.send_batch(queue, messages)).await?;
        let fresh = sent.iter().filter(|s| !s.duplicate).count() as u64;
        self.observer.messages(queue, MessageEvent::Sent, fresh);
        Ok(sent)
    }
    async fn receive(&self, queue: &str, options: ReceiveOptions) -> StoreResult<Vec<Delivery>> {
        // A long poll's time is mostly waiting: only short receives are timed.
        let got = if options.wait.is_zero() {
            timed(&*self.observer, "queue", "receive", self.inner.receive(queue, options)).await?
        } else {
            self.observer.admit("queue", "receive")?;
            self.inner.receive(queue, options).await?
        };
        self.observer.messages(queue, MessageEvent::Received, got.len() as u64);
        Ok(got)
    }
    async fn ack(&self, queue: &str, receipt: &Receipt) -> StoreResult<()> {
        timed(&*self.observer, "queue", "ack", self.inner.ack(queue, receipt)).await?;
        self.observer.messages(queue, MessageEvent::Acked, 1);
        Ok(())
    }
    async fn change_visibility(&self, queue: &str, receipt: &Receipt, timeout: Duration) -> StoreResult<()> {
        timed(&*self.observer, "queue", "change_visibility", self.inner.change_visibility(queue, receipt, timeout))
            .await
    }
    async fn dead_letter(&self, queue: &str, receipt: &Receipt) -> StoreResult<()> {
        timed(&*self.observer, "queue", "dead_letter", self.inner.dead_letter(queue, receipt)).await?;
        self.observer.messages(queue, MessageEvent::DeadLettered, 1);
        Ok(())
    }
    async fn peek(&self, queue: &str, limit: usize, after: Option<&str>) -> StoreResult<Vec<PeekedMessage>> {
        timed(&*self.observer, "queue", "peek", self.inner.peek(queue, limit, after)).await
    }
    async fn redrive(&self, dlq: &str, limit: Option<usize>) -> StoreResult<u64> {
        timed(&*self.observer, "queue", "redrive", self.inner.redrive(dlq, limit)).await
    }
    async fn purge(&self, queue: &str) -> StoreResult<u64> {
        timed(&*self.observer, "queue", "purge", self.inner.purge(queue)).await
    }
    async fn delete_message(&self, queue: &str, message_id: &str) -> StoreResult<bool> {
        timed(&*self.observer, "queue", "delete_message", self.inner.delete_message(queue, message_id)).await
    }
    async fn depth(&self, queue: &str) -> StoreResult<QueueDepth> {
        timed(&*self.observer, "queue", "depth", self.inner.depth(queue)).await
    }
    async fn probe(&self, queue: &str) -> StoreResult<()> {
        timed(&*self.observer, "queue", "probe", self.inner.probe(queue)).await
    }
    async fn sweep_expired(&self) -> StoreResult<u64> {
        timed(&*self.observer, "queue", "sweep_expired", self.inner.sweep_expired()).await
    }
    async fn adopt(&self, queue: &str, handed: &HandedMessage) -> StoreResult<Option<Delivery>> {
        let got = timed(&*self.observer, "queue", "adopt", self.inner.adopt(queue, handed)).await?;
        self.observer.messages(queue, MessageEvent::Received, u64::from(got.is_some()));
        Ok(got)
    }
    async fn scrub(&self) -> StoreResult<()> {
        timed(&*self.observer, "queue", "scrub", self.inner.scrub()).await
    }
}
