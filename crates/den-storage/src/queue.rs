//! The SQS-shaped queue API.

use std::time::Duration;

use async_trait::async_trait;
use den_core::Timestamp;

use crate::{StoreError, StoreResult};

/// Most messages in one send or receive call (SQS: 10).
pub const MAX_BATCH: usize = 10;
/// Longest long poll (SQS: 20 s).
pub const MAX_WAIT: Duration = Duration::from_secs(20);
/// Longest send delay (SQS: 900 s).
pub const MAX_DELAY: Duration = Duration::from_secs(900);
/// Longest visibility timeout (SQS: 12 h).
pub const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);
/// Largest message body (SQS: 1 MiB).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Shortest and longest retention (SQS: 60 s to 14 days).
pub const RETENTION_RANGE: (Duration, Duration) = (Duration::from_secs(60), Duration::from_secs(14 * 86_400));
/// How long a dedup key suppresses repeated sends (as SQS FIFO's window).
pub const DEDUP_WINDOW: Duration = Duration::from_secs(300);

/// The declaration of a queue and, optionally, its dead-letter queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueSpec {
    /// Queue name: `[A-Za-z0-9_-]{1,80}`.
    pub name: String,
    /// Visibility timeout applied when a receive does not give one.
    pub visibility_timeout: Duration,
    /// How long an unreceived message is kept.
    pub retention: Duration,
    /// Where messages go after too many receives.
    pub dead_letter: Option<DeadLetterSpec>,
}

/// Redrive policy of a queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetterSpec {
    /// Name of the dead-letter queue.
    pub name: String,
    /// On receive number `max_receive_count + 1` the message moves to the DLQ.
    pub max_receive_count: u32,
    /// Retention of the DLQ; counted from the original enqueue time, so it
    /// must be longer than the source's.
    pub retention: Duration,
}

impl QueueSpec {
    /// A queue named `name` with SQS's defaults (30 s visibility, 4 days
    /// retention) and a DLQ `<name>-dlq` after 5 receives, kept 14 days.
    #[must_use]
    pub fn with_dlq(name: impl Into<String>) -> Self {
        let name = name.into();
        Self {
            dead_letter: Some(DeadLetterSpec {
                name: format!("{name}-dlq"),
                max_receive_count: 5,
                retention: RETENTION_RANGE.1,
            }),
            name,
            visibility_timeout: Duration::from_secs(30),
            retention: Duration::from_secs(4 * 86_400),
        }
    }

    /// Checks the spec against SQS's limits.
    pub fn validate(&self) -> StoreResult<()> {
        validate_queue_name(&self.name)?;
        if self.visibility_timeout > MAX_VISIBILITY {
            return Err(StoreError::invalid("visibility timeout is longer than 12 h"));
        }
        check_retention(&self.name, self.retention)?;
        if let Some(dlq) = &self.dead_letter {
            validate_queue_name(&dlq.name)?;
            check_retention(&dlq.name, dlq.retention)?;
            if dlq.name == self.name {
                return Err(StoreError::invalid("a queue cannot be its own dead-letter queue"));
            }
            if !(1..=1000).contains(&dlq.max_receive_count) {
                return Err(StoreError::invalid("max_receive_count must be 1..=1000"));
            }
            if dlq.retention <= self.retention {
                return Err(StoreError::invalid(format!(
                    "dead-letter queue {} must keep messages longer than {} does ({}s <= {}s): \
                     messages keep their original enqueue time",
                    dlq.name,
                    self.name,
                    dlq.retention.as_secs(),
                    self.retention.as_secs()
                )));
            }
        }
        Ok(())
    }
}

fn check_retention(name: &str, retention: Duration) -> StoreResult<()> {
    if retention < RETENTION_RANGE.0 || retention > RETENTION_RANGE.1 {
        return Err(StoreError::invalid(format!("retention of {name} must be between 60 s and 14 days")));
    }
    Ok(())
}

pub(crate) fn validate_queue_name(name: &str) -> StoreResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 80
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok { Ok(()) } else { Err(StoreError::invalid(format!("queue name {name:?} must match [A-Za-z0-9_-]{{1,80}}"))) }
}

/// A message to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// The body, at most [`MAX_BODY_BYTES`].
    pub body: String,
    /// Delay before the message becomes visible, at most [`MAX_DELAY`].
    pub delay: Duration,
    /// Sends with the same key within [`DEDUP_WINDOW`] enqueue one message.
    pub dedup_key: Option<String>,
    /// Fairness group (a guild id): backends that support message groups use
    /// it so one busy guild cannot starve the others.
    pub group: Option<String>,
}

impl OutgoingMessage {
    /// A message with `body`, no delay and no dedup key.
    #[must_use]
    pub fn new(body: impl Into<String>) -> Self {
        Self { body: body.into(), delay: Duration::ZERO, dedup_key: None, group: None }
    }

    /// Sets the delay.
    #[must_use]
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Sets the dedup key.
    #[must_use]
    pub fn dedup_key(mut self, key: impl Into<String>) -> Self {
        self.dedup_key = Some(key.into());
        self
    }
}

/// The result of sending one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    /// Id of the stored message (of the earlier one, for a duplicate).
    pub message_id: String,
    /// True when the dedup key matched an earlier send and nothing was enqueued.
    pub duplicate: bool,
}

/// How to receive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiveOptions {
    /// Most messages to return, 1..=[`MAX_BATCH`].
    pub max_messages: usize,
    /// How long to wait for a first message, at most [`MAX_WAIT`].
    pub wait: Duration,
    /// Visibility timeout for these messages; the queue's default when `None`.
    pub visibility_timeout: Option<Duration>,
}

impl Default for ReceiveOptions {
    fn default() -> Self {
        Self { max_messages: MAX_BATCH, wait: Duration::ZERO, visibility_timeout: None }
    }
}

/// A handle that acknowledges or extends one delivery of a message.
///
/// Each receive issues a new receipt; a receipt from an earlier delivery is
/// stale once the message has been received again.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Receipt(pub String);

/// A received message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The message id.
    pub message_id: String,
    /// The body.
    pub body: String,
    /// Handle for ack and visibility changes.
    pub receipt: Receipt,
    /// How many times the message has been received, this time included.
    pub receive_count: u32,
    /// When it was first sent.
    pub sent_at: Timestamp,
}

/// The SQS message attribute in which den sends each message's id, so a
/// consumer that receives on den's behalf can hand it over (see [`Queue::adopt`]).
pub const SQS_ID_ATTRIBUTE: &str = "den-id";

/// A message as a queue's own consumer handed it over (see [`Queue::adopt`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandedMessage {
    /// The backend's receipt for this delivery (SQS's receipt handle).
    pub handle: String,
    /// den's id of the message, as sent with it.
    pub message_id: String,
    /// The body as delivered.
    pub body: String,
}

/// A message looked at without receiving it (for operators' DLQ tools).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeekedMessage {
    /// The message id.
    pub message_id: String,
    /// The body.
    pub body: String,
    /// Receives so far.
    pub receive_count: u32,
    /// When it was first sent.
    pub sent_at: Timestamp,
    /// The queue it was dead-lettered from, for DLQ messages.
    pub source_queue: Option<String>,
}

/// Approximate counts of a queue's messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Ready to be received.
    pub visible: u64,
    /// Received and not yet acked or timed out.
    pub in_flight: u64,
    /// Sent with a delay that has not passed yet.
    pub delayed: u64,
}

impl QueueDepth {
    /// All messages held.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.visible + self.in_flight + self.delayed
    }
}

/// Named queues with SQS standard-queue semantics: at-least-once delivery,
/// visibility timeouts, long polling, batches, dead-letter queues with
/// redrive, retention, approximate depths.
#[async_trait]
pub trait Queue: Send + Sync + std::fmt::Debug {
    /// Creates the queue and its DLQ if missing, or updates their settings.
    async fn create_queue(&self, spec: &QueueSpec) -> StoreResult<()>;

    /// Every queue known to the store, DLQs included.
    async fn list_queues(&self) -> StoreResult<Vec<QueueSpec>>;

    /// Sends up to [`MAX_BATCH`] messages. When it returns `Ok`, each message
    /// is durable (it survives a crash of the process).
    async fn send_batch(&self, queue: &str, messages: Vec<OutgoingMessage>) -> StoreResult<Vec<Sent>>;

    /// Receives up to `max_messages`, waiting up to `wait` for the first.
    async fn receive(&self, queue: &str, options: ReceiveOptions) -> StoreResult<Vec<Delivery>>;

    /// Deletes a received message. A stale or unknown receipt is an error of
    /// kind `ReceiptInvalid`.
    async fn ack(&self, queue: &str, receipt: &Receipt) -> StoreResult<()>;

    /// Makes a received message visible again after `timeout`, counted from now.
    async fn change_visibility(&self, queue: &str, receipt: &Receipt, timeout: Duration) -> StoreResult<()>;

    /// Moves a received message to its queue's dead-letter queue now, for a
    /// failure that retrying cannot fix. Errors with `InvalidArgument` when
    /// the queue has no DLQ.
    async fn dead_letter(&self, queue: &str, receipt: &Receipt) -> StoreResult<()>;

    /// Up to `limit` messages after message `after`, oldest first, without
    /// receiving them.
    async fn peek(&self, queue: &str, limit: usize, after: Option<&str>) -> StoreResult<Vec<PeekedMessage>>;

    /// Moves up to `limit` messages (all when `None`) from a dead-letter queue
    /// back to the queues they came from; returns how many moved.
    async fn redrive(&self, dlq: &str, limit: Option<usize>) -> StoreResult<u64>;

    /// Deletes every message of a queue; returns how many.
    async fn purge(&self, queue: &str) -> StoreResult<u64>;

    /// Deletes one message by id, wherever it is (operators' DLQ tool).
    async fn delete_message(&self, queue: &str, message_id: &str) -> StoreResult<bool>;

    /// Approximate depths.
    async fn depth(&self, queue: &str) -> StoreResult<QueueDepth>;

    /// Checks that the queue exists and its backend answers, as cheaply as
    /// the backend allows (readiness probes call this every few seconds).
    async fn probe(&self, queue: &str) -> StoreResult<()> {
        self.depth(queue).await.map(|_| ())
    }

    /// Deletes messages past retention and stale dedup keys; returns how many messages.
    async fn sweep_expired(&self) -> StoreResult<u64>;

    /// Claims a message that reached this process without a `receive`: AWS
    /// Lambda's SQS event source receives on den's behalf and hands each
    /// record to the function. The claim counts a receive as `receive` does
    /// (the same receive counts and dead-lettering); `None` when the message
    /// must not run (it was acked, deleted, or has just been dead-lettered).
    /// Backends whose messages only `receive` hands out refuse with
    /// `InvalidArgument`.
    async fn adopt(&self, queue: &str, _handed: &HandedMessage) -> StoreResult<Option<Delivery>> {
        Err(StoreError::invalid(format!("queue {queue}: this backend hands messages out only by receive")))
    }

    /// Makes deleted messages unrecoverable from the backend's own files
    /// (SQLite: freed pages are zeroed as they go, and this folds and
    /// truncates the write-ahead log). Backends that keep no files of their
    /// own do nothing.
    async fn scrub(&self) -> StoreResult<()> {
        Ok(())
    }
}

pub(crate) fn validate_send(messages: &[OutgoingMessage]) -> StoreResult<()> {
    if messages.is_empty() || messages.len() > MAX_BATCH {
        return Err(StoreError::invalid(format!(
            "a send batch holds 1..={MAX_BATCH} messages, not {}",
            messages.len()
        )));
    }
    for m in messages {
        if m.body.len() > MAX_BODY_BYTES {
            return Err(StoreError::invalid(format!(
                "message body is {} bytes; the limit is {MAX_BODY_BYTES}",
                m.body.len()
            )));
        }
        if m.delay > MAX_DELAY {
            return Err(StoreError::invalid("delay is longer than 900 s"));
        }
    }
    Ok(())
}

pub(crate) fn validate_receive(options: &ReceiveOptions) -> StoreResult<()> {
    if options.max_messages == 0 || options.max_messages > MAX_BATCH {
        return Err(StoreError::invalid(format!("max_messages must be 1..={MAX_BATCH}")));
    }
    if options.wait > MAX_WAIT {
        return Err(StoreError::invalid("long poll wait is longer than 20 s"));
    }
    if options.visibility_timeout.is_some_and(|v| v > MAX_VISIBILITY) {
        return Err(StoreError::invalid("visibility timeout is longer than 12 h"));
    }
    Ok(())
}
