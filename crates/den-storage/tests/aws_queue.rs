//! Behaviour of the SQS queue beyond the shared conformance suites, on moto
//! (`DEN_TEST_AWS_ENDPOINT`, started by `scripts/test.sh`).
#![cfg(feature = "aws")]

use std::sync::Arc;
use std::time::Duration;

use den_core::{Secret, SystemClock};
use den_storage::aws::{AwsOptions, AwsStore, sdk_config};
use den_storage::{
    HandedMessage, OutgoingMessage, Queue as _, QueueSpec, ReceiveOptions, SQS_ID_ATTRIBUTE, Store, StoreErrorKind,
};

async fn store() -> (AwsOptions, AwsStore) {
    let mut options = AwsOptions::new("us-east-1");
    options.endpoint = Some(
        std::env::var("DEN_TEST_AWS_ENDPOINT")
            .expect("DEN_TEST_AWS_ENDPOINT is not set: run `bash scripts/test.sh`, which starts moto on 127.0.0.1"),
    );
    options.table = "den-queue-tests".into();
    options.queue_prefix = format!("q{:08x}-", rand::random::<u32>());
    options.static_credentials = Some(("testing".into(), Secret::new("testing")));
    AwsStore::bootstrap_table(&options).await.unwrap();
    let store = AwsStore::connect(options.clone(), Arc::new(SystemClock)).await.unwrap();
    (options, store)
}

fn now() -> ReceiveOptions {
    ReceiveOptions { max_messages: 10, wait: Duration::ZERO, visibility_timeout: Some(Duration::from_secs(30)) }
}

#[tokio::test]
async fn a_message_sqs_dead_lettered_on_its_own_is_redriven_to_its_source_not_lost() {
    let (options, store) = store().await;
    let queue = store.queue();
    let mut spec = QueueSpec::with_dlq("jobs");
    spec.dead_letter.as_mut().unwrap().max_receive_count = 1;
    queue.create_queue(&spec).await.unwrap();
    let sent = queue.send_batch("jobs", vec![OutgoingMessage::new("precious")]).await.unwrap();

    // A den that died mid-move: SQS counted receives that the ledger never saw,
    // until its redrive policy (one past den's count) moved the message itself.
    let sqs = aws_sdk_sqs::Client::new(&sdk_config(&options).await);
    let url = sqs.get_queue_url().queue_name(format!("{}jobs", options.queue_prefix)).send().await.unwrap();
    let url = url.queue_url.unwrap();
    for _ in 0..3 {
        sqs.receive_message().queue_url(&url).visibility_timeout(0).send().await.unwrap();
    }
    assert!(queue.receive("jobs", now()).await.unwrap().is_empty(), "SQS moved it to the DLQ");
    let held = queue.peek("jobs", 10, None).await.unwrap();
    assert_eq!(held.len(), 1, "the ledger still holds it in the source");

    assert_eq!(queue.redrive("jobs-dlq", None).await.unwrap(), 1);
    let back = queue.receive("jobs", now()).await.unwrap();
    assert_eq!(back.len(), 1, "back in its queue");
    assert_eq!((back[0].message_id.as_str(), back[0].body.as_str()), (sent[0].message_id.as_str(), "precious"));
    assert_eq!(back[0].receive_count, 1, "with its retries again");
}

#[tokio::test]
async fn bodies_over_the_backends_256_kib_are_refused_and_nothing_is_enqueued() {
    let (_options, store) = store().await;
    let queue = store.queue();
    queue.create_queue(&QueueSpec::with_dlq("big")).await.unwrap();
    let body = "x".repeat(256 * 1024 + 1);
    let err = queue.send_batch("big", vec![OutgoingMessage::new(body)]).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::InvalidArgument);
    assert!(err.to_string().contains("AWS backend's limit"), "{err}");
    assert_eq!(queue.depth("big").await.unwrap().total(), 0);
}

#[tokio::test]
async fn den_tables_share_one_dynamodb_table_and_den_says_when_it_is_missing() {
    let (mut options, store) = store().await;
    store.ping().await.unwrap();
    assert!(store.describe().contains("den-queue-tests"), "{}", store.describe());
    options.table = format!("missing-{:08x}", rand::random::<u32>());
    let err = AwsStore::connect(options, Arc::new(SystemClock)).await.unwrap_err();
    assert!(err.to_string().contains("den aws bootstrap"), "{err}");
}

/// Receives from SQS directly, as Lambda's event source mapping does for a function.
async fn handed(options: &AwsOptions, queue: &str) -> Vec<HandedMessage> {
    let sqs = aws_sdk_sqs::Client::new(&sdk_config(options).await);
    let url = sqs.get_queue_url().queue_name(format!("{}{queue}", options.queue_prefix)).send().await.unwrap();
    let out = sqs
        .receive_message()
        .queue_url(url.queue_url.unwrap())
        .max_number_of_messages(10)
        .visibility_timeout(0)
        .message_attribute_names("All")
        .send()
        .await
        .unwrap();
    out.messages()
        .iter()
        .map(|m| HandedMessage {
            handle: m.receipt_handle().unwrap().to_owned(),
            message_id: m.message_attributes().unwrap()[SQS_ID_ATTRIBUTE].string_value().unwrap().to_owned(),
            body: m.body().unwrap().to_owned(),
        })
        .collect()
}

#[tokio::test]
async fn a_message_an_event_source_hands_over_is_claimed_like_a_receive_counted_and_dead_lettered() {
    let (options, store) = store().await;
    let queue = store.queue();
    let mut spec = QueueSpec::with_dlq("handed");
    spec.dead_letter.as_mut().unwrap().max_receive_count = 2;
    queue.create_queue(&spec).await.unwrap();
    let sent = queue.send_batch("handed", vec![OutgoingMessage::new("job")]).await.unwrap();

    for count in 1..=2 {
        let messages = handed(&options, "handed").await;
        assert_eq!(messages.len(), 1);
        let delivery = queue.adopt("handed", &messages[0]).await.unwrap().expect("claimed");
        assert_eq!((delivery.message_id.as_str(), delivery.receive_count), (sent[0].message_id.as_str(), count));
        // Its receipt works as a received message's: the job fails and comes back at once.
        queue.change_visibility("handed", &delivery.receipt, Duration::ZERO).await.unwrap();
    }
    // A third delivery is past the DLQ's count: den moves it there and it must not run.
    let messages = handed(&options, "handed").await;
    assert!(queue.adopt("handed", &messages[0]).await.unwrap().is_none());
    assert_eq!(queue.peek("handed-dlq", 10, None).await.unwrap().len(), 1);

    // A copy of a message that was acked meanwhile is skipped, not run again.
    queue.send_batch("handed", vec![OutgoingMessage::new("again")]).await.unwrap();
    let first = handed(&options, "handed").await;
    let copy = first[0].clone();
    let delivery = queue.adopt("handed", &first[0]).await.unwrap().unwrap();
    queue.ack("handed", &delivery.receipt).await.unwrap();
    assert!(queue.adopt("handed", &copy).await.unwrap().is_none());
}

#[tokio::test]
async fn the_sqlite_queue_refuses_to_adopt_what_it_did_not_hand_out() {
    let dir = tempfile::tempdir().unwrap();
    let store = den_storage::sqlite::SqliteStore::open(
        &den_storage::sqlite::SqliteOptions::new(dir.path().join("den.db")),
        Arc::new(SystemClock),
    )
    .unwrap();
    let queue = store.queue();
    queue.create_queue(&QueueSpec::with_dlq("local")).await.unwrap();
    let handed = HandedMessage { handle: "h".into(), message_id: "m".into(), body: "b".into() };
    assert_eq!(queue.adopt("local", &handed).await.unwrap_err().kind(), StoreErrorKind::InvalidArgument);
}
