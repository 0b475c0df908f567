//! den's queues on SQS, made exact by a ledger in DynamoDB.
//!
//! SQS standard queues deliver at least once, but a stale receipt handle may
//! still delete a message, there is no peek, no delete by id, no dedup, and
//! receive counts are approximate. den's [`Queue`] promises all of those, so
//! every message also has a **ledger item** in the DynamoDB table:
//!
//! - `pk = "__q#<queue>#<shard>"` (16 shards per queue, so a busy queue is
//!   not one hot partition), `sk = <message id>` (sent time first, so ids
//!   sort oldest first);
//! - `b` body, `n` receive count, `l` the lease of the latest delivery,
//!   `va` when it is visible again, `sent`, `exp`/`ttl` retention, `src` the
//!   source queue of a dead-lettered message, `g` the message group.
//!
//! The ledger is the truth about whether a message exists; SQS is how it
//! reaches a worker. A send writes the ledger item, then the SQS message. A
//! receive claims each SQS message by bumping its ledger item's count and
//! lease; a message whose ledger item is gone (acked, deleted, purged) is
//! deleted from SQS and skipped. An ack deletes the ledger item only if its
//! lease is the receipt's, so a stale receipt is refused even where SQS would
//! accept it. den moves a message to the DLQ itself on receive number
//! `max_receive_count + 1`; the queue's SQS redrive policy, one receive
//! later, is a safety net for a den that crashed mid-move.
//!
//! Bodies are limited to 256 KiB here, so a ledger item stays inside
//! DynamoDB's 400 KB.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, DeleteRequest, PutRequest, ReturnValue, WriteRequest};
use aws_sdk_sqs::error::ProvideErrorMetadata;
use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName, SendMessageBatchRequestEntry};
use base64::Engine as _;
use den_core::{Clock, Timestamp};
use serde::{Deserialize, Serialize};

use super::dynamo::{Attrs, get_n, get_s, is_condition_failure, n, s};
use super::{AwsOptions, aws_error};
use crate::queue::{validate_queue_name, validate_receive, validate_send};
use crate::{
    DEDUP_WINDOW, DeadLetterSpec, Delivery, HandedMessage, MAX_VISIBILITY, OutgoingMessage, PeekedMessage, Queue,
    QueueDepth, QueueSpec, Receipt, ReceiveOptions, Sent, StoreError, StoreErrorKind, StoreResult,
};

/// Largest body on this backend (a ledger item must fit DynamoDB's 400 KB).
pub const MAX_AWS_BODY_BYTES: usize = 256 * 1024;
/// Ledger partitions per queue.
const SHARDS: u64 = 16;
/// Partition key of queue declarations.
const META_PK: &str = "__qmeta";
/// The SQS message attribute carrying den's message id.
const ID_ATTR: &str = crate::SQS_ID_ATTRIBUTE;

/// A queue's declaration as stored in the ledger.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredSpec {
    name: String,
    visibility_ms: u64,
    retention_s: u64,
    dlq: Option<(String, u32, u64)>,
}

impl StoredSpec {
    fn from_spec(spec: &QueueSpec) -> Self {
        Self {
            name: spec.name.clone(),
            visibility_ms: u64::try_from(spec.visibility_timeout.as_millis()).unwrap_or(u64::MAX),
            retention_s: spec.retention.as_secs(),
            dlq: spec.dead_letter.as_ref().map(|d| (d.name.clone(), d.max_receive_count, d.retention.as_secs())),
        }
    }

    fn to_spec(&self) -> QueueSpec {
        QueueSpec {
            name: self.name.clone(),
            visibility_timeout: Duration::from_millis(self.visibility_ms),
            retention: Duration::from_secs(self.retention_s),
            dead_letter: self.dlq.as_ref().map(|(name, max, retention)| DeadLetterSpec {
                name: name.clone(),
                max_receive_count: *max,
                retention: Duration::from_secs(*retention),
            }),
        }
    }
}

/// What a receive needs to know about a queue.
#[derive(Clone, Debug)]
struct Meta {
    spec: StoredSpec,
    url: String,
}

/// den's [`Queue`] on SQS standard queues with a DynamoDB ledger.
#[derive(Debug)]
pub struct SqsQueue {
    dynamo: aws_sdk_dynamodb::Client,
    sqs: aws_sdk_sqs::Client,
    table: String,
    prefix: String,
    clock: Arc<dyn Clock>,
    metas: Mutex<HashMap<String, Meta>>,
}

/// A received message's handle: SQS's receipt handle, den's id and the lease.
#[derive(Serialize, Deserialize)]
struct Handle(String, String, String);

impl Handle {
    fn encode(&self) -> Receipt {
        Receipt(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default()))
    }

    fn decode(receipt: &Receipt) -> StoreResult<Self> {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&receipt.0)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| StoreError::new(StoreErrorKind::ReceiptInvalid, "the receipt is not one den issued"))
    }
}

fn stale() -> StoreError {
    StoreError::new(StoreErrorKind::ReceiptInvalid, "the receipt is stale: the message was acked or received again")
}

fn new_id(now: Timestamp) -> String {
    format!("{:013}{:016x}", now.0.max(0), rand::random::<u64>())
}

fn shard_of(id: &str) -> Option<u64> {
    id.chars().last().and_then(|c| c.to_digit(16)).map(u64::from).filter(|_| id.len() == 29)
}

fn secs_ceil(d: Duration) -> i32 {
    i32::try_from(d.as_millis().div_ceil(1000)).unwrap_or(i32::MAX)
}

impl SqsQueue {
    pub(crate) fn new(
        dynamo: aws_sdk_dynamodb::Client,
        sqs: aws_sdk_sqs::Client,
        options: &AwsOptions,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            dynamo,
            sqs,
            table: options.table.clone(),
            prefix: options.queue_prefix.clone(),
            clock,
            metas: Mutex::new(HashMap::new()),
        }
    }

    fn physical(&self, name: &str) -> StoreResult<String> {
        let physical = format!("{}{name}", self.prefix);
        validate_queue_name(&physical).map_err(|_| {
            StoreError::invalid(format!("SQS queue name {physical:?} must match [A-Za-z0-9_-]{{1,80}}"))
        })?;
        Ok(physical)
    }

    fn ledger_pk(queue: &str, shard: u64) -> String {
        format!("__q#{queue}#{shard:x}")
    }

    fn ledger_key(queue: &str, id: &str) -> Option<(AttributeValue, AttributeValue)> {
        shard_of(id).map(|shard| (s(Self::ledger_pk(queue, shard)), s(id)))
    }

    async fn meta(&self, queue: &str) -> StoreResult<Meta> {
        if let Some(meta) = self.metas.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(queue) {
            return Ok(meta.clone());
        }
        let item = self
            .dynamo
            .get_item()
            .table_name(&self.table)
            .key("pk", s(META_PK))
            .key("sk", s(queue))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| aws_error("GetItem", e))?
            .item
            .ok_or_else(|| StoreError::new(StoreErrorKind::QueueNotFound, format!("no queue named {queue:?}")))?;
        let spec: StoredSpec = serde_json::from_str(get_s(&item, "spec").unwrap_or_default())
            .map_err(|e| StoreError::backend(format!("declaration of queue {queue}"), e))?;
        let meta = Meta { spec, url: get_s(&item, "url").unwrap_or_default().to_owned() };
        self.metas.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(queue.to_owned(), meta.clone());
        Ok(meta)
    }

    /// Creates an SQS queue, or sets the attributes of an existing one; returns its URL.
    async fn ensure_sqs(&self, physical: &str, attributes: Vec<(QueueAttributeName, String)>) -> StoreResult<String> {
        let mut create = self.sqs.create_queue().queue_name(physical);
        for (k, v) in &attributes {
            create = create.attributes(k.clone(), v.clone());
        }
        match create.send().await {
            Ok(out) => Ok(out.queue_url.unwrap_or_default()),
            Err(e) if matches!(e.code(), Some("QueueAlreadyExists" | "QueueNameExists")) => {
                let url = self
                    .sqs
                    .get_queue_url()
                    .queue_name(physical)
                    .send()
                    .await
                    .map_err(|e| aws_error("GetQueueUrl", e))?
                    .queue_url
                    .unwrap_or_default();
                let mut set = self.sqs.set_queue_attributes().queue_url(&url);
                for (k, v) in attributes {
                    set = set.attributes(k, v);
                }
                set.send().await.map_err(|e| aws_error("SetQueueAttributes", e))?;
                Ok(url)
            }
            Err(e) => Err(aws_error("CreateQueue", e)),
        }
    }

    async fn store_meta(&self, spec: &StoredSpec, url: &str) -> StoreResult<()> {
        let json = serde_json::to_string(spec).map_err(|e| StoreError::backend("queue declaration", e))?;
        self.dynamo
            .put_item()
            .table_name(&self.table)
            .item("pk", s(META_PK))
            .item("sk", s(&spec.name))
            .item("spec", s(json))
            .item("url", s(url))
            .send()
            .await
            .map_err(|e| aws_error("PutItem", e))?;
        self.metas
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(spec.name.clone(), Meta { spec: spec.clone(), url: url.to_owned() });
        Ok(())
    }

    /// Every ledger item of `queue` (one query per shard, all run at once).
    async fn ledger(&self, queue: &str, after: Option<&str>, limit: Option<usize>) -> StoreResult<Vec<Attrs>> {
        let shards = (0..SHARDS).map(|shard| self.ledger_shard(queue, shard, after, limit));
        let mut all = Vec::new();
        for items in futures_util::future::join_all(shards).await {
            all.extend(items?);
        }
        all.sort_by(|a, b| get_s(a, "sk").cmp(&get_s(b, "sk")));
        Ok(all)
    }

    async fn ledger_shard(
        &self,
        queue: &str,
        shard: u64,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> StoreResult<Vec<Attrs>> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let mut req = self
                .dynamo
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .expression_attribute_values(":pk", s(Self::ledger_pk(queue, shard)))
                .set_exclusive_start_key(start.take());
            req = match after {
                Some(after) => req
                    .key_condition_expression("pk = :pk AND sk > :after")
                    .expression_attribute_values(":after", s(after)),
                None => req.key_condition_expression("pk = :pk"),
            };
            if let Some(limit) = limit {
                req = req.limit(i32::try_from(limit).unwrap_or(i32::MAX));
            }
            let out = req.send().await.map_err(|e| aws_error("Query", e))?;
            items.extend(out.items().iter().cloned());
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() && limit.is_none_or(|l| items.len() < l) => start = Some(key),
                _ => return Ok(items),
            }
        }
    }

    fn live(&self, item: &Attrs) -> bool {
        get_n(item, "exp").is_none_or(|exp| exp > self.clock.now().0)
    }

    /// Writes ledger items in batches of 25, retrying what DynamoDB leaves unprocessed.
    async fn write_batch(&self, mut requests: Vec<WriteRequest>) -> StoreResult<()> {
        while !requests.is_empty() {
            let rest = requests.split_off(requests.len().min(25));
            let mut batch = std::mem::replace(&mut requests, rest);
            for attempt in 0..8u32 {
                let out = self
                    .dynamo
                    .batch_write_item()
                    .request_items(&self.table, batch)
                    .send()
                    .await
                    .map_err(|e| aws_error("BatchWriteItem", e))?;
                batch = out.unprocessed_items.and_then(|mut m| m.remove(&self.table)).unwrap_or_default();
                if batch.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
            }
            if !batch.is_empty() {
                return Err(StoreError::new(StoreErrorKind::Backend, "DynamoDB kept throttling a batch write"));
            }
        }
        Ok(())
    }

    fn ledger_item(queue: &str, id: &str, body: &str, sent: i64, visible_at: i64, exp: i64) -> Option<Attrs> {
        let (pk, sk) = Self::ledger_key(queue, id)?;
        Some(HashMap::from([
            ("pk".to_owned(), pk),
            ("sk".to_owned(), sk),
            ("b".to_owned(), s(body)),
            ("n".to_owned(), n(0)),
            ("va".to_owned(), n(visible_at)),
            ("sent".to_owned(), n(sent)),
            ("exp".to_owned(), n(exp)),
            ("ttl".to_owned(), n(exp.div_euclid(1000) + 1)),
        ]))
    }

    async fn sqs_send(&self, url: &str, entries: Vec<(String, String, i32, Option<String>)>) -> StoreResult<Vec<bool>> {
        let mut req = self.sqs.send_message_batch().queue_url(url);
        for (i, (id, body, delay, group)) in entries.iter().enumerate() {
            let attr = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(id)
                .build()
                .map_err(|e| StoreError::backend("message attribute", e))?;
            let entry = SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(body)
                .delay_seconds(*delay)
                .message_attributes(ID_ATTR, attr)
                .set_message_group_id(group.clone())
                .build()
                .map_err(|e| StoreError::backend("send entry", e))?;
            req = req.entries(entry);
        }
        let out = req.send().await.map_err(|e| aws_error("SendMessageBatch", e))?;
        let mut ok = vec![false; entries.len()];
        for entry in out.successful() {
            if let Some(slot) = entry.id().parse::<usize>().ok().and_then(|i| ok.get_mut(i)) {
                *slot = true;
            }
        }
        for failed in out.failed() {
            tracing::warn!(code = failed.code(), reason = failed.message(), "SQS refused a message");
        }
        Ok(ok)
    }

    async fn sqs_delete(&self, url: &str, handle: &str) {
        if let Err(e) = self.sqs.delete_message().queue_url(url).receipt_handle(handle).send().await {
            // The ledger already says the message is gone; a copy left in SQS
            // is discarded when it is next received.
            tracing::debug!(error = %aws_error("DeleteMessage", e), "SQS copy left for the next receive");
        }
    }

    async fn delete_ledger(&self, queue: &str, id: &str) -> StoreResult<Option<Attrs>> {
        let Some((pk, sk)) = Self::ledger_key(queue, id) else { return Ok(None) };
        let out = self
            .dynamo
            .delete_item()
            .table_name(&self.table)
            .key("pk", pk)
            .key("sk", sk)
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| aws_error("DeleteItem", e))?;
        Ok(out.attributes.filter(|a| !a.is_empty()))
    }

    /// Moves a delivered message to the DLQ: the DLQ's copy first, then the
    /// source's ledger item, only while `lease` is still the latest.
    async fn move_to_dlq(&self, meta: &Meta, item: &Attrs, id: &str, lease: &str, handle: &str) -> StoreResult<bool> {
        let Some((dlq, _, _)) = &meta.spec.dlq else {
            return Err(StoreError::invalid(format!("queue {} has no dead-letter queue", meta.spec.name)));
        };
        let dlq_meta = self.meta(dlq).await?;
        let body = get_s(item, "b").unwrap_or_default();
        let sent = get_n(item, "sent").unwrap_or(0);
        let exp = sent + i64::try_from(dlq_meta.spec.retention_s).unwrap_or(i64::MAX / 2000) * 1000;
        let now = self.clock.now().0;
        let Some(mut copy) = Self::ledger_item(dlq, id, body, sent, now, exp) else { return Ok(false) };
        copy.insert("n".into(), n(get_n(item, "n").unwrap_or(0)));
        copy.insert("src".into(), s(&meta.spec.name));
        if let Some(g) = item.get("g") {
            copy.insert("g".into(), g.clone());
        }
        self.dynamo
            .put_item()
            .table_name(&self.table)
            .set_item(Some(copy))
            .send()
            .await
            .map_err(|e| aws_error("PutItem", e))?;
        self.sqs_send(&dlq_meta.url, vec![(id.to_owned(), body.to_owned(), 0, None)]).await?;
        let (pk, sk) = Self::ledger_key(&meta.spec.name, id).ok_or_else(stale)?;
        let claimed = self
            .dynamo
            .delete_item()
            .table_name(&self.table)
            .key("pk", pk)
            .key("sk", sk)
            .condition_expression("l = :l")
            .expression_attribute_values(":l", s(lease))
            .send()
            .await;
        match claimed {
            Ok(_) => {
                self.sqs_delete(&meta.url, handle).await;
                Ok(true)
            }
            Err(e) if is_condition_failure(&e) => {
                // Someone else moved or acked it first: take back the DLQ copy.
                self.delete_ledger(dlq, id).await?;
                Ok(false)
            }
            Err(e) => Err(aws_error("DeleteItem", e)),
        }
    }

    /// Gives a message that SQS dead-lettered on its own, whose ledger item is
    /// still in a source queue of `dlq`, fresh retries in that queue; false
    /// when no source holds it (it was acked or deleted).
    async fn return_to_source(&self, dlq: &str, id: &str) -> StoreResult<bool> {
        for spec in self.list_queues().await? {
            if spec.dead_letter.as_ref().is_none_or(|d| d.name != dlq) {
                continue;
            }
            let Some((pk, sk)) = Self::ledger_key(&spec.name, id) else { continue };
            let out = self
                .dynamo
                .update_item()
                .table_name(&self.table)
                .key("pk", pk)
                .key("sk", sk)
                .condition_expression("attribute_exists(pk)")
                .update_expression("SET n = :zero, va = :now REMOVE l")
                .expression_attribute_values(":zero", n(0))
                .expression_attribute_values(":now", n(self.clock.now().0))
                .return_values(ReturnValue::AllNew)
                .send()
                .await;
            let item = match out {
                Ok(out) => out.attributes.unwrap_or_default(),
                Err(e) if is_condition_failure(&e) => continue,
                Err(e) => return Err(aws_error("UpdateItem", e)),
            };
            let source = self.meta(&spec.name).await?;
            let body = get_s(&item, "b").unwrap_or_default().to_owned();
            let group = get_s(&item, "g").map(str::to_owned);
            let sent = self.sqs_send(&source.url, vec![(id.to_owned(), body, 0, group)]).await?;
            return Ok(sent.first() == Some(&true));
        }
        Ok(false)
    }

    /// Claims one SQS delivery in the ledger; `None` when it must not be delivered.
    async fn claim(
        &self,
        meta: &Meta,
        msg: &aws_sdk_sqs::types::Message,
        visibility: Duration,
    ) -> StoreResult<Option<Delivery>> {
        let handle = msg.receipt_handle().unwrap_or_default();
        let Some(id) = msg.message_attributes().and_then(|a| a.get(ID_ATTR)).and_then(|v| v.string_value()) else {
            tracing::warn!(queue = %meta.spec.name, "a message without den's id is left in SQS");
            return Ok(None);
        };
        self.claim_id(meta, handle, id, msg.body().unwrap_or_default(), visibility).await
    }

    /// Claims the ledger item of message `id`, delivered with `handle`.
    async fn claim_id(
        &self,
        meta: &Meta,
        handle: &str,
        id: &str,
        body: &str,
        visibility: Duration,
    ) -> StoreResult<Option<Delivery>> {
        let handle = handle.to_owned();
        let Some((pk, sk)) = Self::ledger_key(&meta.spec.name, id) else {
            self.sqs_delete(&meta.url, &handle).await;
            return Ok(None);
        };
        let lease = format!("{:016x}", rand::random::<u64>());
        let now = self.clock.now();
        let visible_at = now.plus(visibility).0;
        let out = self
            .dynamo
            .update_item()
            .table_name(&self.table)
            .key("pk", pk)
            .key("sk", sk)
            .condition_expression("attribute_exists(pk)")
            .update_expression("SET n = n + :one, l = :l, va = :va")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":l", s(&lease))
            .expression_attribute_values(":va", n(visible_at))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        let item = match out {
            Ok(out) => out.attributes.unwrap_or_default(),
            Err(e) if is_condition_failure(&e) => {
                self.sqs_delete(&meta.url, &handle).await;
                return Ok(None);
            }
            Err(e) => return Err(aws_error("UpdateItem", e)),
        };
        if !self.live(&item) {
            self.delete_ledger(&meta.spec.name, id).await?;
            self.sqs_delete(&meta.url, &handle).await;
            return Ok(None);
        }
        let count = u32::try_from(get_n(&item, "n").unwrap_or(1)).unwrap_or(u32::MAX);
        if let Some((_, max, _)) = &meta.spec.dlq
            && count > *max
        {
            self.move_to_dlq(meta, &item, id, &lease, &handle).await?;
            return Ok(None);
        }
        Ok(Some(Delivery {
            message_id: id.to_owned(),
            body: body.to_owned(),
            receipt: Handle(handle, id.to_owned(), lease).encode(),
            receive_count: count,
            sent_at: Timestamp(get_n(&item, "sent").unwrap_or(0)),
        }))
    }
}

#[async_trait]
impl Queue for SqsQueue {
    async fn create_queue(&self, spec: &QueueSpec) -> StoreResult<()> {
        spec.validate()?;
        let physical = self.physical(&spec.name)?;
        let mut attributes = vec![
            (QueueAttributeName::VisibilityTimeout, secs_ceil(spec.visibility_timeout).to_string()),
            (QueueAttributeName::MessageRetentionPeriod, spec.retention.as_secs().to_string()),
        ];
        if let Some(dlq) = &spec.dead_letter {
            let dlq_physical = self.physical(&dlq.name)?;
            let dlq_url = self
                .ensure_sqs(
                    &dlq_physical,
                    vec![(QueueAttributeName::MessageRetentionPeriod, dlq.retention.as_secs().to_string())],
                )
                .await?;
            let arn = self
                .sqs
                .get_queue_attributes()
                .queue_url(&dlq_url)
                .attribute_names(QueueAttributeName::QueueArn)
                .send()
                .await
                .map_err(|e| aws_error("GetQueueAttributes", e))?
                .attributes
                .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
                .unwrap_or_default();
            // One receive beyond den's own count: den moves the message itself.
            let backstop = (dlq.max_receive_count + 1).min(1000);
            let policy = serde_json::json!({"deadLetterTargetArn": arn, "maxReceiveCount": backstop});
            attributes.push((QueueAttributeName::RedrivePolicy, policy.to_string()));
            let dlq_spec = StoredSpec {
                name: dlq.name.clone(),
                visibility_ms: 30_000,
                retention_s: dlq.retention.as_secs(),
                dlq: None,
            };
            self.store_meta(&dlq_spec, &dlq_url).await?;
        }
        let url = self.ensure_sqs(&physical, attributes).await?;
        self.store_meta(&StoredSpec::from_spec(spec), &url).await
    }

    async fn list_queues(&self) -> StoreResult<Vec<QueueSpec>> {
        let mut specs = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .dynamo
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(META_PK))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| aws_error("Query", e))?;
            for item in out.items() {
                if let Ok(spec) = serde_json::from_str::<StoredSpec>(get_s(item, "spec").unwrap_or_default()) {
                    specs.push(spec.to_spec());
                }
            }
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok(specs),
            }
        }
    }

    async fn send_batch(&self, queue: &str, messages: Vec<OutgoingMessage>) -> StoreResult<Vec<Sent>> {
        validate_send(&messages)?;
        if let Some(big) = messages.iter().find(|m| m.body.len() > MAX_AWS_BODY_BYTES) {
            return Err(StoreError::invalid(format!(
                "message body is {} bytes; the AWS backend's limit is {MAX_AWS_BODY_BYTES}",
                big.body.len()
            )));
        }
        let meta = self.meta(queue).await?;
        let now = self.clock.now();
        let retention_ms = i64::try_from(meta.spec.retention_s).unwrap_or(i64::MAX / 2000) * 1000;
        let mut sent = Vec::with_capacity(messages.len());
        let mut fresh = Vec::new();
        let mut dedup_written = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            let id = new_id(now);
            if let Some(key) = &m.dedup_key {
                let dedup_pk = format!("__qd#{queue}#{key}");
                let until = now.plus(DEDUP_WINDOW).0;
                let put = self
                    .dynamo
                    .put_item()
                    .table_name(&self.table)
                    .item("pk", s(&dedup_pk))
                    .item("sk", s("d"))
                    .item("id", s(&id))
                    .item("exp", n(until))
                    .item("ttl", n(until.div_euclid(1000) + 1))
                    .condition_expression("attribute_not_exists(pk) OR #exp <= :now")
                    .expression_attribute_names("#exp", "exp")
                    .expression_attribute_values(":now", n(now.0))
                    .send()
                    .await;
                match put {
                    Ok(_) => dedup_written.push(dedup_pk),
                    Err(e) if is_condition_failure(&e) => {
                        let earlier = self
                            .dynamo
                            .get_item()
                            .table_name(&self.table)
                            .key("pk", s(&dedup_pk))
                            .key("sk", s("d"))
                            .consistent_read(true)
                            .send()
                            .await
                            .map_err(|e| aws_error("GetItem", e))?
                            .item
                            .and_then(|item| get_s(&item, "id").map(str::to_owned))
                            .unwrap_or_default();
                        sent.push(Sent { message_id: earlier, duplicate: true });
                        continue;
                    }
                    Err(e) => return Err(aws_error("PutItem", e)),
                }
            }
            sent.push(Sent { message_id: id.clone(), duplicate: false });
            fresh.push((i, id));
        }
        if fresh.is_empty() {
            return Ok(sent);
        }
        let mut writes = Vec::new();
        for (i, id) in &fresh {
            let m = &messages[*i];
            let visible_at = now.plus(m.delay).0;
            let Some(mut item) = Self::ledger_item(queue, id, &m.body, now.0, visible_at, now.0 + retention_ms) else {
                continue;
            };
            if let Some(g) = &m.group {
                item.insert("g".into(), s(g));
            }
            let put = PutRequest::builder().set_item(Some(item)).build().map_err(|e| StoreError::backend("put", e))?;
            writes.push(WriteRequest::builder().put_request(put).build());
        }
        self.write_batch(writes).await?;
        let entries = fresh
            .iter()
            .map(|(i, id)| {
                let m = &messages[*i];
                (id.clone(), m.body.clone(), secs_ceil(m.delay), m.group.clone())
            })
            .collect();
        let (delivered, failure) = match self.sqs_send(&meta.url, entries).await {
            Ok(ok) => (ok, None),
            Err(e) => (vec![false; fresh.len()], Some(e)),
        };
        if delivered.iter().all(|ok| *ok) {
            return Ok(sent);
        }
        // Take back what SQS refused, so nothing is recorded that no receive will see.
        let mut undo = Vec::new();
        for ((_, id), ok) in fresh.iter().zip(&delivered) {
            if !ok && let Some((pk, sk)) = Self::ledger_key(queue, id) {
                let key = HashMap::from([("pk".to_owned(), pk), ("sk".to_owned(), sk)]);
                let del = DeleteRequest::builder()
                    .set_key(Some(key))
                    .build()
                    .map_err(|e| StoreError::backend("delete", e))?;
                undo.push(WriteRequest::builder().delete_request(del).build());
            }
        }
        for pk in dedup_written {
            let key = HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s("d"))]);
            let del =
                DeleteRequest::builder().set_key(Some(key)).build().map_err(|e| StoreError::backend("delete", e))?;
            undo.push(WriteRequest::builder().delete_request(del).build());
        }
        self.write_batch(undo).await?;
        Err(failure.unwrap_or_else(|| {
            StoreError::new(StoreErrorKind::Backend, format!("SQS refused part of a batch sent to {queue}"))
        }))
    }

    async fn receive(&self, queue: &str, options: ReceiveOptions) -> StoreResult<Vec<Delivery>> {
        validate_receive(&options)?;
        let meta = self.meta(queue).await?;
        let visibility = options.visibility_timeout.unwrap_or(Duration::from_millis(meta.spec.visibility_ms));
        let deadline = tokio::time::Instant::now() + options.wait;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let out = self
                .sqs
                .receive_message()
                .queue_url(&meta.url)
                .max_number_of_messages(i32::try_from(options.max_messages).unwrap_or(10))
                .wait_time_seconds(secs_ceil(remaining).min(20))
                .visibility_timeout(secs_ceil(visibility))
                .message_attribute_names(ID_ATTR)
                .send()
                .await
                .map_err(|e| aws_error("ReceiveMessage", e))?;
            let mut deliveries = Vec::new();
            for msg in out.messages() {
                if let Some(d) = self.claim(&meta, msg, visibility).await? {
                    deliveries.push(d);
                }
            }
            if !deliveries.is_empty() || tokio::time::Instant::now() >= deadline || out.messages().is_empty() {
                return Ok(deliveries);
            }
        }
    }

    async fn adopt(&self, queue: &str, handed: &HandedMessage) -> StoreResult<Option<Delivery>> {
        let meta = self.meta(queue).await?;
        // The event source received it with the queue's visibility timeout.
        let visibility = Duration::from_millis(meta.spec.visibility_ms);
        self.claim_id(&meta, &handed.handle, &handed.message_id, &handed.body, visibility).await
    }

    async fn ack(&self, queue: &str, receipt: &Receipt) -> StoreResult<()> {
        let Handle(handle, id, lease) = Handle::decode(receipt)?;
        let meta = self.meta(queue).await?;
        let (pk, sk) = Self::ledger_key(queue, &id).ok_or_else(stale)?;
        let out = self
            .dynamo
            .delete_item()
            .table_name(&self.table)
            .key("pk", pk)
            .key("sk", sk)
            .condition_expression("l = :l")
            .expression_attribute_values(":l", s(&lease))
            .send()
            .await;
        match out {
            Ok(_) => {
                self.sqs_delete(&meta.url, &handle).await;
                Ok(())
            }
            Err(e) if is_condition_failure(&e) => Err(stale()),
            Err(e) => Err(aws_error("DeleteItem", e)),
        }
    }

    async fn change_visibility(&self, queue: &str, receipt: &Receipt, timeout: Duration) -> StoreResult<()> {
        if timeout > MAX_VISIBILITY {
            return Err(StoreError::invalid("visibility timeout is longer than 12 h"));
        }
        let Handle(handle, id, lease) = Handle::decode(receipt)?;
        let meta = self.meta(queue).await?;
        let (pk, sk) = Self::ledger_key(queue, &id).ok_or_else(stale)?;
        let out = self
            .dynamo
            .update_item()
            .table_name(&self.table)
            .key("pk", pk)
            .key("sk", sk)
            .condition_expression("l = :l")
            .update_expression("SET va = :va")
            .expression_attribute_values(":l", s(&lease))
            .expression_attribute_values(":va", n(self.clock.now().plus(timeout).0))
            .send()
            .await;
        match out {
            Ok(_) => {}
            Err(e) if is_condition_failure(&e) => return Err(stale()),
            Err(e) => return Err(aws_error("UpdateItem", e)),
        }
        let sqs = self
            .sqs
            .change_message_visibility()
            .queue_url(&meta.url)
            .receipt_handle(&handle)
            .visibility_timeout(secs_ceil(timeout))
            .send()
            .await;
        match sqs {
            Ok(_) => Ok(()),
            // Already visible again: the ledger's lease is still ours, so the
            // next receive sees the message either way.
            Err(e) if e.code() == Some("MessageNotInflight") => Ok(()),
            Err(e) if e.code() == Some("ReceiptHandleIsInvalid") => Err(stale()),
            Err(e) => Err(aws_error("ChangeMessageVisibility", e)),
        }
    }

    async fn dead_letter(&self, queue: &str, receipt: &Receipt) -> StoreResult<()> {
        let meta = self.meta(queue).await?;
        if meta.spec.dlq.is_none() {
            return Err(StoreError::invalid(format!("queue {queue} has no dead-letter queue")));
        }
        let Handle(handle, id, lease) = Handle::decode(receipt)?;
        let (pk, sk) = Self::ledger_key(queue, &id).ok_or_else(stale)?;
        let item = self
            .dynamo
            .get_item()
            .table_name(&self.table)
            .key("pk", pk)
            .key("sk", sk)
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| aws_error("GetItem", e))?
            .item
            .filter(|item| get_s(item, "l") == Some(lease.as_str()))
            .ok_or_else(stale)?;
        if self.move_to_dlq(&meta, &item, &id, &lease, &handle).await? { Ok(()) } else { Err(stale()) }
    }

    async fn peek(&self, queue: &str, limit: usize, after: Option<&str>) -> StoreResult<Vec<PeekedMessage>> {
        self.meta(queue).await?;
        let items = self.ledger(queue, after, Some(limit.max(1))).await?;
        Ok(items
            .iter()
            .filter(|item| self.live(item))
            .take(limit)
            .map(|item| PeekedMessage {
                message_id: get_s(item, "sk").unwrap_or_default().to_owned(),
                body: get_s(item, "b").unwrap_or_default().to_owned(),
                receive_count: u32::try_from(get_n(item, "n").unwrap_or(0)).unwrap_or(0),
                sent_at: Timestamp(get_n(item, "sent").unwrap_or(0)),
                source_queue: get_s(item, "src").map(str::to_owned),
            })
            .collect())
    }

    async fn redrive(&self, dlq: &str, limit: Option<usize>) -> StoreResult<u64> {
        let meta = self.meta(dlq).await?;
        let mut moved = 0u64;
        while limit.is_none_or(|l| usize::try_from(moved).unwrap_or(usize::MAX) < l) {
            let out = self
                .sqs
                .receive_message()
                .queue_url(&meta.url)
                .max_number_of_messages(10)
                .visibility_timeout(60)
                .message_attribute_names(ID_ATTR)
                .send()
                .await
                .map_err(|e| aws_error("ReceiveMessage", e))?;
            if out.messages().is_empty() {
                break;
            }
            for msg in out.messages() {
                if limit.is_some_and(|l| usize::try_from(moved).unwrap_or(usize::MAX) >= l) {
                    break;
                }
                let handle = msg.receipt_handle().unwrap_or_default();
                let id = msg.message_attributes().and_then(|a| a.get(ID_ATTR)).and_then(|v| v.string_value());
                let Some((id, (pk, sk))) = id.and_then(|id| Self::ledger_key(dlq, id).map(|k| (id, k))) else {
                    continue;
                };
                let item = self
                    .dynamo
                    .get_item()
                    .table_name(&self.table)
                    .key("pk", pk)
                    .key("sk", sk)
                    .consistent_read(true)
                    .send()
                    .await
                    .map_err(|e| aws_error("GetItem", e))?
                    .item;
                let Some(item) = item.filter(|i| self.live(i)) else {
                    // SQS's own redrive policy moved it (den stopped mid-move):
                    // its ledger item is still in the source queue; send it back there.
                    if self.return_to_source(dlq, id).await? {
                        moved += 1;
                    }
                    self.sqs_delete(&meta.url, handle).await;
                    continue;
                };
                let Some(source) = get_s(&item, "src").map(str::to_owned) else { continue };
                let source_meta = self.meta(&source).await?;
                let now = self.clock.now().0;
                let retention_ms = i64::try_from(source_meta.spec.retention_s).unwrap_or(i64::MAX / 2000) * 1000;
                let body = get_s(&item, "b").unwrap_or_default();
                let sent = get_n(&item, "sent").unwrap_or(now);
                let Some(mut back) = Self::ledger_item(&source, id, body, sent, now, now + retention_ms) else {
                    continue;
                };
                let group = get_s(&item, "g").map(str::to_owned);
                if let Some(g) = &group {
                    back.insert("g".into(), s(g));
                }
                self.dynamo
                    .put_item()
                    .table_name(&self.table)
                    .set_item(Some(back))
                    .send()
                    .await
                    .map_err(|e| aws_error("PutItem", e))?;
                let ok = self.sqs_send(&source_meta.url, vec![(id.to_owned(), body.to_owned(), 0, group)]).await?;
                if ok.first() != Some(&true) {
                    self.delete_ledger(&source, id).await?;
                    return Err(StoreError::new(StoreErrorKind::Backend, format!("SQS refused a redrive to {source}")));
                }
                self.delete_ledger(dlq, id).await?;
                self.sqs_delete(&meta.url, handle).await;
                moved += 1;
            }
        }
        Ok(moved)
    }

    async fn purge(&self, queue: &str) -> StoreResult<u64> {
        self.meta(queue).await?;
        // Only the ledger is cleared: purging SQS too could drop a message
        // sent during the purge whose ledger item was written after the scan.
        // SQS copies without a ledger item are discarded as they are received.
        let items = self.ledger(queue, None, None).await?;
        let live = items.iter().filter(|i| self.live(i)).count();
        let mut deletes = Vec::new();
        for item in &items {
            let key: Attrs =
                item.iter().filter(|(k, _)| *k == "pk" || *k == "sk").map(|(k, v)| (k.clone(), v.clone())).collect();
            let del =
                DeleteRequest::builder().set_key(Some(key)).build().map_err(|e| StoreError::backend("delete", e))?;
            deletes.push(WriteRequest::builder().delete_request(del).build());
        }
        self.write_batch(deletes).await?;
        Ok(u64::try_from(live).unwrap_or(u64::MAX))
    }

    async fn delete_message(&self, queue: &str, message_id: &str) -> StoreResult<bool> {
        self.meta(queue).await?;
        Ok(self.delete_ledger(queue, message_id).await?.is_some_and(|old| self.live(&old)))
    }

    async fn depth(&self, queue: &str) -> StoreResult<QueueDepth> {
        self.meta(queue).await?;
        let now = self.clock.now().0;
        let mut depth = QueueDepth::default();
        for item in self.ledger(queue, None, None).await? {
            if !self.live(&item) {
                continue;
            }
            let visible_at = get_n(&item, "va").unwrap_or(0);
            if visible_at <= now {
                depth.visible += 1;
            } else if get_n(&item, "n").unwrap_or(0) == 0 {
                depth.delayed += 1;
            } else {
                depth.in_flight += 1;
            }
        }
        Ok(depth)
    }

    /// One SQS request once the queue's declaration is cached, where
    /// [`Queue::depth`] reads every ledger shard.
    async fn probe(&self, queue: &str) -> StoreResult<()> {
        let meta = self.meta(queue).await?;
        self.sqs
            .get_queue_attributes()
            .queue_url(&meta.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .map_err(|e| aws_error("GetQueueAttributes", e))?;
        Ok(())
    }

    async fn sweep_expired(&self) -> StoreResult<u64> {
        let mut swept = 0u64;
        for spec in self.list_queues().await? {
            for item in self.ledger(&spec.name, None, None).await? {
                if self.live(&item) {
                    continue;
                }
                if let Some(id) = get_s(&item, "sk") {
                    self.delete_ledger(&spec.name, id).await?;
                    swept += 1;
                }
            }
        }
        Ok(swept)
    }
}
