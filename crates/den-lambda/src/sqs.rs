//! SQS batches from an event source mapping, and the partial batch answer.
//!
//! With `ReportBatchItemFailures` on the mapping, the function answers
//! `{"batchItemFailures": [{"itemIdentifier": <messageId>}...]}`: Lambda
//! deletes every other record of the batch from the queue and leaves the
//! named ones to come back when their visibility timeout ends.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A batch of SQS records.
#[derive(Debug, Deserialize)]
pub struct SqsEvent {
    /// The records, up to the mapping's batch size.
    #[serde(rename = "Records")]
    pub records: Vec<SqsRecord>,
}

/// One SQS message.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SqsRecord {
    /// SQS's message id (what a batch failure names).
    pub message_id: String,
    /// The receipt handle of this delivery.
    pub receipt_handle: String,
    /// The body.
    #[serde(default)]
    pub body: String,
    /// Message attributes by name.
    #[serde(default)]
    pub message_attributes: BTreeMap<String, MessageAttribute>,
    /// The queue's ARN.
    #[serde(rename = "eventSourceARN", default)]
    pub event_source_arn: String,
}

impl SqsRecord {
    /// The string value of message attribute `name`.
    #[must_use]
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.message_attributes.get(name).and_then(|a| a.string_value.as_deref())
    }

    /// The name of the queue the record came from (the ARN's last part).
    #[must_use]
    pub fn queue_name(&self) -> &str {
        self.event_source_arn.rsplit(':').next().unwrap_or_default()
    }
}

/// A message attribute.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageAttribute {
    /// Its value, for `String` and `Number` attributes.
    #[serde(default)]
    pub string_value: Option<String>,
}

/// The partial batch answer.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BatchResponse {
    /// The records that failed and must come back.
    pub batch_item_failures: Vec<ItemFailure>,
}

/// One record that failed.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ItemFailure {
    /// The record's `messageId`.
    pub item_identifier: String,
}

impl BatchResponse {
    /// An answer naming `failed` message ids.
    pub fn failing(failed: impl IntoIterator<Item = String>) -> Self {
        Self {
            batch_item_failures: failed.into_iter().map(|item_identifier| ItemFailure { item_identifier }).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_as_lambda_sends_it_gives_its_queue_and_attributes() {
        let event: SqsEvent = serde_json::from_value(serde_json::json!({"Records": [{
            "messageId": "m-1", "receiptHandle": "rh", "body": "{}", "attributes": {"ApproximateReceiveCount": "1"},
            "messageAttributes": {"den-id": {"stringValue": "0001", "dataType": "String"}},
            "md5OfBody": "x", "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:eu-west-1:123456789012:den-jobs",
            "awsRegion": "eu-west-1"
        }]}))
        .unwrap();
        let record = &event.records[0];
        assert_eq!(record.queue_name(), "den-jobs");
        assert_eq!(record.attribute("den-id"), Some("0001"));
        assert_eq!(record.attribute("other"), None);
    }

    #[test]
    fn the_answer_names_only_the_failed_records() {
        let json = serde_json::to_value(BatchResponse::failing(["m-2".to_owned()])).unwrap();
        assert_eq!(json, serde_json::json!({"batchItemFailures": [{"itemIdentifier": "m-2"}]}));
        assert_eq!(
            serde_json::to_value(BatchResponse::default()).unwrap(),
            serde_json::json!({"batchItemFailures": []})
        );
    }
}
