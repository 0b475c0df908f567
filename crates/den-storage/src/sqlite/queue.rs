use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use den_core::Timestamp;
use rusqlite::{Connection, OptionalExtension, params};

use super::Shared;
use crate::queue::{DEDUP_WINDOW, validate_queue_name, validate_receive, validate_send};
use crate::{
    DeadLetterSpec, Delivery, OutgoingMessage, PeekedMessage, Queue, QueueDepth, QueueSpec, Receipt, ReceiveOptions,
    Sent, StoreError, StoreErrorKind, StoreResult,
};

/// Longest a long poll sleeps between looks at the database, so that messages
/// written by another process (an operator's redrive) are still seen quickly.
const CROSS_PROCESS_POLL: Duration = Duration::from_millis(200);

/// The queues of an [`SqliteStore`](super::SqliteStore).
#[derive(Clone, Debug)]
pub struct SqliteQueue {
    shared: Arc<Shared>,
    specs: Arc<RwLock<HashMap<String, QueueSpec>>>,
}

impl SqliteQueue {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self { shared, specs: Arc::default() }
    }

    /// The spec of `queue`, from the cache or the database.
    async fn spec(&self, queue: &str) -> StoreResult<QueueSpec> {
        if let Some(spec) = self.specs.read().map_err(|_| poisoned())?.get(queue) {
            return Ok(spec.clone());
        }
        validate_queue_name(queue)?;
        let name = queue.to_owned();
        let json: Option<String> = self
            .shared
            .read(move |c| {
                Ok(c.query_row("SELECT spec FROM q_queues WHERE name = ?1", [name], |r| r.get(0)).optional()?)
            })
            .await?;
        let spec = json
            .as_deref()
            .and_then(spec_from_json)
            .ok_or_else(|| StoreError::new(StoreErrorKind::QueueNotFound, format!("no queue named {queue}")))?;
        self.specs.write().map_err(|_| poisoned())?.insert(queue.to_owned(), spec.clone());
        Ok(spec)
    }

    async fn receive_once(&self, spec: &QueueSpec, options: &ReceiveOptions) -> StoreResult<Vec<Delivery>> {
        let now = self.shared.now();
        let visibility = options.visibility_timeout.unwrap_or(spec.visibility_timeout);
        let max = options.max_messages;
        let queue = spec.name.clone();
        let dead_letter = spec.dead_letter.clone();
        let (deliveries, moved) =
            self.shared.write(move |c| receive_in_tx(c, &queue, dead_letter.as_ref(), now, visibility, max)).await?;
        if moved > 0
            && let Some(dlq) = &spec.dead_letter
        {
            self.shared.notifier(&dlq.name).notify_waiters();
        }
        Ok(deliveries)
    }

    /// When the next message of `queue` becomes visible, if any is waiting.
    async fn next_visible(&self, queue: &str) -> StoreResult<Option<Timestamp>> {
        let queue = queue.to_owned();
        self.shared
            .read(move |c| {
                let at: Option<i64> =
                    c.query_row("SELECT MIN(visible_at) FROM q_messages WHERE queue = ?1", [queue], |r| r.get(0))?;
                Ok(at.map(Timestamp))
            })
            .await
    }
}

fn poisoned() -> StoreError {
    StoreError::new(StoreErrorKind::Backend, "a queue lock was poisoned by a panic")
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn spec_to_json(spec: &QueueSpec) -> String {
    serde_json::json!({
        "name": spec.name,
        "visibility_ms": millis(spec.visibility_timeout),
        "retention_ms": millis(spec.retention),
        "dead_letter": spec.dead_letter.as_ref().map(|d| serde_json::json!({
            "name": d.name, "max_receive_count": d.max_receive_count, "retention_ms": millis(d.retention),
        })),
    })
    .to_string()
}

fn spec_from_json(json: &str) -> Option<QueueSpec> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let ms = |v: &serde_json::Value, k: &str| v.get(k).and_then(serde_json::Value::as_u64).map(Duration::from_millis);
    let dead_letter = match v.get("dead_letter") {
        Some(d) if !d.is_null() => Some(DeadLetterSpec {
            name: d.get("name")?.as_str()?.to_owned(),
            max_receive_count: u32::try_from(d.get("max_receive_count")?.as_u64()?).ok()?,
            retention: ms(d, "retention_ms")?,
        }),
        _ => None,
    };
    Some(QueueSpec {
        name: v.get("name")?.as_str()?.to_owned(),
        visibility_timeout: ms(&v, "visibility_ms")?,
        retention: ms(&v, "retention_ms")?,
        dead_letter,
    })
}

/// A message id is its row id in hex. Row ids come from AUTOINCREMENT, so an
/// id is never reused, and a look-up by id is a primary-key look-up.
fn message_id(id: i64) -> String {
    format!("{id:016x}")
}

fn row_id(message_id: &str) -> Option<i64> {
    i64::from_str_radix(message_id, 16).ok().filter(|_| message_id.len() == 16)
}

/// A receipt is `<row id>:<token>`; the token changes on every receive.
fn parse_receipt(receipt: &Receipt) -> StoreResult<(i64, &str)> {
    receipt
        .0
        .split_once(':')
        .and_then(|(id, token)| Some((id.parse().ok()?, token)))
        .ok_or_else(|| StoreError::new(StoreErrorKind::ReceiptInvalid, "malformed receipt"))
}

fn invalid_receipt() -> StoreError {
    StoreError::new(
        StoreErrorKind::ReceiptInvalid,
        "the receipt is unknown or stale (the message was acked or received again)",
    )
}

fn receive_in_tx(
    c: &Connection,
    queue: &str,
    dead_letter: Option<&DeadLetterSpec>,
    now: Timestamp,
    visibility: Duration,
    max: usize,
) -> StoreResult<(Vec<Delivery>, u64)> {
    let now_ms = now.as_millis();
    // Look a little past `max`: some rows may be expired or dead-lettered.
    let candidates: Vec<(i64, String, u32, i64, i64)> = c
        .prepare_cached(
            "SELECT id, body, receive_count, sent_at, expires_at FROM q_messages \
             WHERE queue = ?1 AND visible_at <= ?2 ORDER BY visible_at, id LIMIT ?3",
        )?
        .query_map(params![queue, now_ms, i64::try_from(max + 16).unwrap_or(64)], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(max);
    let mut moved = 0;
    for (id, body, count, sent_at, expires_at) in candidates {
        if out.len() == max {
            break;
        }
        if expires_at <= now_ms {
            c.prepare_cached("DELETE FROM q_messages WHERE id = ?1")?.execute([id])?;
            continue;
        }
        let count = count + 1;
        if let Some(dlq) = dead_letter.filter(|d| count > d.max_receive_count) {
            move_to_dlq(c, id, queue, dlq, now_ms, sent_at)?;
            moved += 1;
            continue;
        }
        let token = format!("{:016x}", rand::random::<u64>());
        c.prepare_cached("UPDATE q_messages SET visible_at = ?2, receive_count = ?3, receipt = ?4 WHERE id = ?1")?
            .execute(params![id, now.plus(visibility).as_millis(), count, token])?;
        out.push(Delivery {
            message_id: message_id(id),
            body,
            receipt: Receipt(format!("{id}:{token}")),
            receive_count: count,
            sent_at: Timestamp(sent_at),
        });
    }
    Ok((out, moved))
}

fn move_to_dlq(
    c: &Connection,
    id: i64,
    from: &str,
    dlq: &DeadLetterSpec,
    now_ms: i64,
    sent_at: i64,
) -> StoreResult<()> {
    c.prepare_cached(
        "UPDATE q_messages SET queue = ?2, source_queue = ?3, visible_at = ?4, receipt = NULL, expires_at = ?5 \
         WHERE id = ?1",
    )?
    .execute(params![id, dlq.name, from, now_ms, sent_at.saturating_add(millis(dlq.retention))])?;
    Ok(())
}

#[async_trait]
impl Queue for SqliteQueue {
    async fn create_queue(&self, spec: &QueueSpec) -> StoreResult<()> {
        spec.validate()?;
        let mut specs = vec![spec.clone()];
        if let Some(dlq) = &spec.dead_letter {
            specs.push(QueueSpec {
                name: dlq.name.clone(),
                visibility_timeout: spec.visibility_timeout,
                retention: dlq.retention,
                dead_letter: None,
            });
        }
        let rows: Vec<(String, String)> = specs.iter().map(|s| (s.name.clone(), spec_to_json(s))).collect();
        self.shared
            .write(move |c| {
                for (name, json) in &rows {
                    c.execute(
                        "INSERT INTO q_queues (name, spec) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET spec = ?2",
                        params![name, json],
                    )?;
                }
                Ok(())
            })
            .await?;
        let mut cache = self.specs.write().map_err(|_| poisoned())?;
        for s in specs {
            cache.insert(s.name.clone(), s);
        }
        Ok(())
    }

    async fn list_queues(&self) -> StoreResult<Vec<QueueSpec>> {
        self.shared
            .read(|c| {
                let mut stmt = c.prepare("SELECT spec FROM q_queues ORDER BY name")?;
                let specs = stmt
                    .query_map([], |r| r.get::<_, String>(0))?
                    .filter_map(|r| r.ok().as_deref().and_then(spec_from_json))
                    .collect();
                Ok(specs)
            })
            .await
    }

    async fn send_batch(&self, queue: &str, messages: Vec<OutgoingMessage>) -> StoreResult<Vec<Sent>> {
        validate_send(&messages)?;
        let spec = self.spec(queue).await?;
        let now = self.shared.now();
        let queue_name = spec.name.clone();
        let sent =
            self.shared
                .write(move |c| {
                    let now_ms = now.as_millis();
                    let mut out = Vec::with_capacity(messages.len());
                    for m in messages {
                        if let Some(key) = &m.dedup_key {
                            let earlier: Option<i64> = c
                                .prepare_cached(
                                    "SELECT id FROM q_dedup WHERE queue = ?1 AND dedup_key = ?2 AND expires_at > ?3",
                                )?
                                .query_row(params![queue_name, key, now_ms], |r| r.get(0))
                                .optional()?;
                            if let Some(id) = earlier {
                                out.push(Sent { message_id: message_id(id), duplicate: true });
                                continue;
                            }
                        }
                        c.prepare_cached(
                            "INSERT INTO q_messages (queue, body, sent_at, visible_at, expires_at) \
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                        )?
                        .execute(params![
                            queue_name,
                            m.body,
                            now_ms,
                            now.plus(m.delay).as_millis(),
                            now.plus(spec.retention).as_millis()
                        ])?;
                        let id = c.last_insert_rowid();
                        if let Some(key) = &m.dedup_key {
                            c.prepare_cached(
                            "INSERT OR REPLACE INTO q_dedup (queue, dedup_key, id, expires_at) VALUES (?1, ?2, ?3, ?4)",
                        )?
                        .execute(params![queue_name, key, id, now.plus(DEDUP_WINDOW).as_millis()])?;
                        }
                        out.push(Sent { message_id: message_id(id), duplicate: false });
                    }
                    Ok(out)
                })
                .await?;
        self.shared.notifier(queue).notify_waiters();
        Ok(sent)
    }

    async fn receive(&self, queue: &str, options: ReceiveOptions) -> StoreResult<Vec<Delivery>> {
        validate_receive(&options)?;
        let spec = self.spec(queue).await?;
        let deadline = tokio::time::Instant::now() + options.wait;
        let notify = self.shared.notifier(queue);
        loop {
            // Register for wake-ups before looking, so a send that commits
            // between the look and the wait is not missed.
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let got = self.receive_once(&spec, &options).await?;
            let now = tokio::time::Instant::now();
            if !got.is_empty() || now >= deadline {
                return Ok(got);
            }
            let mut sleep_for = (deadline - now).min(CROSS_PROCESS_POLL);
            if let Some(next) = self.next_visible(queue).await? {
                let until = next.since(self.shared.now());
                sleep_for = sleep_for.min(until.max(Duration::from_millis(1)));
            }
            let _ = tokio::time::timeout(sleep_for, notified).await;
        }
    }

    async fn ack(&self, queue: &str, receipt: &Receipt) -> StoreResult<()> {
        let (id, token) = parse_receipt(receipt)?;
        let (queue, token) = (queue.to_owned(), token.to_owned());
        let deleted = self
            .shared
            .write(move |c| {
                Ok(c.prepare_cached("DELETE FROM q_messages WHERE id = ?1 AND queue = ?2 AND receipt = ?3")?
                    .execute(params![id, queue, token])?)
            })
            .await?;
        if deleted == 1 { Ok(()) } else { Err(invalid_receipt()) }
    }

    async fn change_visibility(&self, queue: &str, receipt: &Receipt, timeout: Duration) -> StoreResult<()> {
        if timeout > crate::queue::MAX_VISIBILITY {
            return Err(StoreError::invalid("visibility timeout is longer than 12 h"));
        }
        let (id, token) = parse_receipt(receipt)?;
        let (queue_name, token) = (queue.to_owned(), token.to_owned());
        let visible_at = self.shared.now().plus(timeout).as_millis();
        let updated = self
            .shared
            .write(move |c| {
                Ok(c.prepare_cached(
                    "UPDATE q_messages SET visible_at = ?4 WHERE id = ?1 AND queue = ?2 AND receipt = ?3",
                )?
                .execute(params![id, queue_name, token, visible_at])?)
            })
            .await?;
        if updated != 1 {
            return Err(invalid_receipt());
        }
        if timeout.is_zero() {
            self.shared.notifier(queue).notify_waiters();
        }
        Ok(())
    }

    async fn peek(&self, queue: &str, limit: usize, after: Option<&str>) -> StoreResult<Vec<PeekedMessage>> {
        self.spec(queue).await?;
        let queue = queue.to_owned();
        let after = after.map(str::to_owned);
        let now = self.shared.now().as_millis();
        let limit = i64::try_from(limit.min(1000)).unwrap_or(1000);
        self.shared
            .read(move |c| {
                let after_id: i64 = match after {
                    Some(id) => row_id(&id).unwrap_or(i64::MAX),
                    None => 0,
                };
                let mut stmt = c.prepare_cached(
                    "SELECT id, body, receive_count, sent_at, source_queue FROM q_messages \
                     WHERE queue = ?1 AND id > ?2 AND expires_at > ?3 ORDER BY id LIMIT ?4",
                )?;
                let rows = stmt
                    .query_map(params![queue, after_id, now, limit], |r| {
                        Ok(PeekedMessage {
                            message_id: message_id(r.get(0)?),
                            body: r.get(1)?,
                            receive_count: r.get(2)?,
                            sent_at: Timestamp(r.get(3)?),
                            source_queue: r.get(4)?,
                        })
                    })?
                    .collect::<Result<_, _>>()?;
                Ok(rows)
            })
            .await
    }

    async fn redrive(&self, dlq: &str, limit: Option<usize>) -> StoreResult<u64> {
        self.spec(dlq).await?;
        let specs: HashMap<String, QueueSpec> =
            self.list_queues().await?.into_iter().map(|s| (s.name.clone(), s)).collect();
        let dlq_name = dlq.to_owned();
        let now = self.shared.now().as_millis();
        let limit = limit.map_or(i64::MAX, |l| i64::try_from(l).unwrap_or(i64::MAX));
        let targets = self
            .shared
            .write(move |c| {
                let rows: Vec<(i64, Option<String>)> = c
                    .prepare_cached("SELECT id, source_queue FROM q_messages WHERE queue = ?1 ORDER BY id LIMIT ?2")?
                    .query_map(params![dlq_name, limit], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()?;
                let mut targets = Vec::new();
                for (id, source) in rows {
                    let Some(target) = source.as_deref().and_then(|s| specs.get(s)) else {
                        // The source queue is gone or unknown: leave the message for an operator.
                        continue;
                    };
                    c.prepare_cached(
                        "UPDATE q_messages SET queue = ?2, source_queue = NULL, receive_count = 0, receipt = NULL, \
                         sent_at = ?3, visible_at = ?3, expires_at = ?4 WHERE id = ?1",
                    )?
                    .execute(params![
                        id,
                        target.name,
                        now,
                        now.saturating_add(millis(target.retention))
                    ])?;
                    targets.push(target.name.clone());
                }
                Ok(targets)
            })
            .await?;
        for target in &targets {
            self.shared.notifier(target).notify_waiters();
        }
        Ok(targets.len() as u64)
    }

    async fn purge(&self, queue: &str) -> StoreResult<u64> {
        self.spec(queue).await?;
        let queue = queue.to_owned();
        self.shared
            .write(move |c| {
                c.execute("DELETE FROM q_dedup WHERE queue = ?1", [&queue])?;
                Ok(c.execute("DELETE FROM q_messages WHERE queue = ?1", [&queue])? as u64)
            })
            .await
    }

    async fn delete_message(&self, queue: &str, message_id: &str) -> StoreResult<bool> {
        self.spec(queue).await?;
        let Some(id) = row_id(message_id) else { return Ok(false) };
        let queue = queue.to_owned();
        self.shared
            .write(move |c| {
                Ok(c.execute("DELETE FROM q_messages WHERE queue = ?1 AND id = ?2", params![queue, id])? == 1)
            })
            .await
    }

    async fn dead_letter(&self, queue: &str, receipt: &Receipt) -> StoreResult<()> {
        let spec = self.spec(queue).await?;
        let dlq = spec
            .dead_letter
            .clone()
            .ok_or_else(|| StoreError::invalid(format!("queue {queue} has no dead-letter queue")))?;
        let (id, token) = parse_receipt(receipt)?;
        let (queue_name, token) = (queue.to_owned(), token.to_owned());
        let now = self.shared.now().as_millis();
        let dlq_for_tx = dlq.clone();
        let moved = self
            .shared
            .write(move |c| {
                let sent_at: Option<i64> = c
                    .prepare_cached("SELECT sent_at FROM q_messages WHERE id = ?1 AND queue = ?2 AND receipt = ?3")?
                    .query_row(params![id, queue_name, token], |r| r.get(0))
                    .optional()?;
                let Some(sent_at) = sent_at else { return Ok(false) };
                move_to_dlq(c, id, &queue_name, &dlq_for_tx, now, sent_at)?;
                Ok(true)
            })
            .await?;
        if !moved {
            return Err(invalid_receipt());
        }
        self.shared.notifier(&dlq.name).notify_waiters();
        Ok(())
    }

    async fn depth(&self, queue: &str) -> StoreResult<QueueDepth> {
        self.spec(queue).await?;
        let queue = queue.to_owned();
        let now = self.shared.now().as_millis();
        self.shared
            .read(move |c| {
                let (visible, in_flight, delayed): (i64, i64, i64) = c.query_row(
                    "SELECT COALESCE(SUM(visible_at <= ?2), 0), \
                            COALESCE(SUM(visible_at > ?2 AND receipt IS NOT NULL), 0), \
                            COALESCE(SUM(visible_at > ?2 AND receipt IS NULL), 0) \
                     FROM q_messages WHERE queue = ?1 AND expires_at > ?2",
                    params![queue, now],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )?;
                let n = |v: i64| u64::try_from(v).unwrap_or(0);
                Ok(QueueDepth { visible: n(visible), in_flight: n(in_flight), delayed: n(delayed) })
            })
            .await
    }

    async fn sweep_expired(&self) -> StoreResult<u64> {
        let now = self.shared.now().as_millis();
        self.shared
            .write(move |c| {
                c.execute("DELETE FROM q_dedup WHERE expires_at <= ?1", [now])?;
                Ok(c.execute("DELETE FROM q_messages WHERE expires_at <= ?1", [now])? as u64)
            })
            .await
    }

    async fn scrub(&self) -> StoreResult<()> {
        self.shared.truncate_wal().await
    }
}
