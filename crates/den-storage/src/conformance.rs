//! Conformance suites for [`Table`] and [`Queue`] backends.
//!
//! Each case is a function over a [`Harness`]; [`conformance_tests!`]
//! expands to one `#[tokio::test]` per case, so a backend's test file is:
//!
//! ```text
//! den_storage::conformance_tests!(MyHarness::new().await);
//! ```
//!
//! Time moves through [`Harness::advance`]: a backend with an injectable
//! clock moves it; one on a real service sleeps. Cases keep the times they
//! need short (seconds) so both work.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use crate::{
    Condition, DeadLetterSpec, IndexSpec, OutgoingMessage, Put, Query, Queue, QueueSpec, Receipt, ReceiveOptions,
    SkCondition, Store, StoreErrorKind, TableSpec,
};

/// What a backend's test provides to the suites.
#[async_trait]
pub trait Harness: Send + Sync {
    /// The store under test.
    fn store(&self) -> Arc<dyn Store>;
    /// The store's current time.
    fn now(&self) -> den_core::Timestamp;
    /// Moves the store's notion of time forward by `d`.
    async fn advance(&self, d: Duration);
    /// Simulates a crash and restart: the store is dropped and opened again on
    /// the same data. Backends that cannot do this reopen a client.
    async fn reopen(&self);
    /// A name unique to this run, so cases sharing a backend do not collide.
    fn unique(&self, base: &str) -> String;
    /// How many random interleavings the property case runs:
    /// `DEN_PROPTEST_CASES`, else 64. Backends on real time, whose
    /// [`advance`](Harness::advance) sleeps, may choose fewer.
    fn interleaving_cases(&self) -> u32 {
        std::env::var("DEN_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
    }
}

/// Expands to one `#[tokio::test]` per conformance case; `$make` is an
/// expression (it may `.await`) producing a [`Harness`].
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::__conformance_cases!($make;
            table_put_get_delete_round_trip,
            table_versions_count_writes,
            table_conditions_guard_writes_and_deletes,
            table_query_selects_sort_key_ranges,
            table_query_pages_cover_every_item_once,
            table_index_finds_items_by_attribute_and_follows_updates,
            table_index_declared_later_covers_existing_items,
            table_expired_items_are_invisible_and_swept,
            table_rejects_oversized_items_and_bad_cursors,
            table_tables_do_not_share_items,
            queue_send_receive_ack,
            queue_rejects_out_of_range_arguments,
            queue_unknown_queue_is_reported,
            queue_visibility_timeout_redelivers_and_stales_old_receipts,
            queue_change_visibility_extends_or_releases,
            queue_delay_hides_message_until_due,
            queue_dedup_key_collapses_repeated_sends,
            queue_max_receive_count_moves_to_dlq_and_redrive_returns,
            queue_dead_letter_moves_now_and_keeps_source,
            queue_dlq_must_outlive_source,
            queue_retention_drops_old_messages,
            queue_depth_counts_visible_in_flight_delayed,
            queue_purge_and_delete_message,
            queue_long_poll_wakes_on_send,
            queue_messages_survive_reopen,
            queue_random_interleavings_lose_nothing_and_ack_once,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let harness = $make;
                $crate::conformance::$case(&harness).await;
            }
        )*
    };
}

fn attrs(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

async fn table(h: &dyn Harness, base: &str, indexes: Vec<IndexSpec>) -> Arc<dyn crate::Table> {
    let mut spec = TableSpec::new(h.unique(base).to_lowercase());
    spec.indexes = indexes;
    h.store().table(spec).await.expect("open table")
}

/// put, get and delete of one item.
pub async fn table_put_get_delete_round_trip(h: &dyn Harness) {
    let t = table(h, "rt", vec![]).await;
    assert_eq!(t.get("p", "s").await.unwrap(), None);
    t.put(Put::new("p", "s", attrs(json!({"n": 1, "name": "ada", "tags": ["a", "b"]})))).await.unwrap();
    let item = t.get("p", "s").await.unwrap().expect("item");
    assert_eq!(item.attrs, attrs(json!({"n": 1, "name": "ada", "tags": ["a", "b"]})));
    assert_eq!((item.pk.as_str(), item.sk.as_str(), item.version), ("p", "s", 1));
    assert!(t.delete("p", "s", Condition::None).await.unwrap());
    assert!(!t.delete("p", "s", Condition::None).await.unwrap(), "second delete finds nothing");
    assert_eq!(t.get("p", "s").await.unwrap(), None);
}

/// Every put bumps the version; a fresh item starts at 1.
pub async fn table_versions_count_writes(h: &dyn Harness) {
    let t = table(h, "ver", vec![]).await;
    for expected in 1..=3 {
        assert_eq!(t.put(Put::new("p", "s", attrs(json!({"i": expected})))).await.unwrap(), expected);
    }
    t.delete("p", "s", Condition::None).await.unwrap();
    assert_eq!(t.put(Put::new("p", "s", Map::new())).await.unwrap(), 1, "a deleted item starts over");
}

/// Absent, Exists and VersionEquals hold or fail as DynamoDB's conditions do.
pub async fn table_conditions_guard_writes_and_deletes(h: &dyn Harness) {
    let t = table(h, "cond", vec![]).await;
    let put = |c| Put::new("p", "s", attrs(json!({"v": 1}))).condition(c);
    let kind = |r: Result<u64, crate::StoreError>| r.unwrap_err().kind();
    assert_eq!(kind(t.put(put(Condition::Exists)).await), StoreErrorKind::ConditionFailed);
    assert_eq!(kind(t.put(put(Condition::VersionEquals(1))).await), StoreErrorKind::ConditionFailed);
    assert_eq!(t.put(put(Condition::Absent)).await.unwrap(), 1);
    assert_eq!(kind(t.put(put(Condition::Absent)).await), StoreErrorKind::ConditionFailed);
    assert_eq!(kind(t.put(put(Condition::VersionEquals(7))).await), StoreErrorKind::ConditionFailed);
    assert_eq!(t.put(put(Condition::VersionEquals(1))).await.unwrap(), 2);
    assert_eq!(t.put(put(Condition::Exists)).await.unwrap(), 3);
    let del = t.delete("p", "s", Condition::VersionEquals(2)).await.unwrap_err();
    assert_eq!(del.kind(), StoreErrorKind::ConditionFailed);
    assert_eq!(t.get("p", "s").await.unwrap().unwrap().version, 3, "a failed delete deletes nothing");
    assert!(t.delete("p", "s", Condition::VersionEquals(3)).await.unwrap());
}

/// Each sort-key condition selects what DynamoDB's would, in both directions.
pub async fn table_query_selects_sort_key_ranges(h: &dyn Harness) {
    let t = table(h, "range", vec![]).await;
    for sk in ["a#1", "a#2", "a#3", "b#1", "b#2", "c"] {
        t.put(Put::new("p", sk, attrs(json!({"sk": sk})))).await.unwrap();
    }
    t.put(Put::new("other", "a#1", Map::new())).await.unwrap();
    let sks = |q: Query| {
        let t = t.clone();
        async move { t.query(q).await.unwrap().items.into_iter().map(|i| i.sk).collect::<Vec<_>>() }
    };
    assert_eq!(sks(Query::pk("p")).await, ["a#1", "a#2", "a#3", "b#1", "b#2", "c"]);
    assert_eq!(sks(Query::pk("p").sk(SkCondition::Prefix("a#".into()))).await, ["a#1", "a#2", "a#3"]);
    assert_eq!(sks(Query::pk("p").sk(SkCondition::Prefix("b#".into())).reverse()).await, ["b#2", "b#1"]);
    assert_eq!(sks(Query::pk("p").sk(SkCondition::Between("a#2".into(), "b#1".into()))).await, ["a#2", "a#3", "b#1"]);
    assert_eq!(sks(Query::pk("p").sk(SkCondition::Eq("c".into()))).await, ["c"]);
    assert_eq!(sks(Query::pk("p").sk(SkCondition::Lt("a#2".into()))).await, ["a#1"]);
    assert_eq!(sks(Query::pk("p").sk(SkCondition::Le("a#2".into()))).await, ["a#1", "a#2"]);
    assert_eq!(sks(Query::pk("p").sk(SkCondition::Gt("b#2".into()))).await, ["c"]);
    assert_eq!(sks(Query::pk("p").sk(SkCondition::Ge("b#2".into()))).await, ["b#2", "c"]);
    assert_eq!(sks(Query::pk("p").reverse().limit(2)).await, ["c", "b#2"]);
    assert!(sks(Query::pk("nobody")).await.is_empty());
}

/// Following cursors visits every item exactly once, forward and reverse.
pub async fn table_query_pages_cover_every_item_once(h: &dyn Harness) {
    let t = table(h, "pages", vec![]).await;
    for i in 0..23 {
        t.put(Put::new("p", format!("{i:03}"), Map::new())).await.unwrap();
    }
    for reverse in [false, true] {
        let mut seen = Vec::new();
        let mut cursor = None;
        let mut pages = 0;
        loop {
            let mut q = Query::pk("p").limit(5).cursor(cursor.take());
            q.reverse = reverse;
            let page = t.query(q).await.unwrap();
            pages += 1;
            assert!(page.items.len() <= 5);
            seen.extend(page.items.into_iter().map(|i| i.sk));
            match page.cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        let mut expected: Vec<String> = (0..23).map(|i| format!("{i:03}")).collect();
        if reverse {
            expected.reverse();
        }
        assert_eq!(seen, expected);
        assert_eq!(pages, 5);
    }
}

/// A secondary index finds items by attribute, is sparse, and follows updates and deletes.
pub async fn table_index_finds_items_by_attribute_and_follows_updates(h: &dyn Harness) {
    let t = table(h, "idx", vec![IndexSpec::new("by_user", "user", Some("at"))]).await;
    for (sk, user, at) in [("m1", "u1", "003"), ("m2", "u2", "001"), ("m3", "u1", "001"), ("m4", "u1", "002")] {
        t.put(Put::new("chan", sk, attrs(json!({"user": user, "at": at})))).await.unwrap();
    }
    t.put(Put::new("chan", "m5", attrs(json!({"text": "no user"})))).await.unwrap();
    let by_user = |user: &'static str, reverse: bool| {
        let t = t.clone();
        async move {
            let mut q = Query::pk(user).on_index("by_user");
            q.reverse = reverse;
            t.query(q).await.unwrap().items.into_iter().map(|i| i.sk).collect::<Vec<_>>()
        }
    };
    assert_eq!(by_user("u1", false).await, ["m3", "m4", "m1"]);
    assert_eq!(by_user("u1", true).await, ["m1", "m4", "m3"]);
    let page = t.query(Query::pk("u1").on_index("by_user").limit(2)).await.unwrap();
    assert_eq!(page.items.len(), 2);
    let rest = t.query(Query::pk("u1").on_index("by_user").limit(2).cursor(page.cursor)).await.unwrap();
    assert_eq!(rest.items.iter().map(|i| i.sk.as_str()).collect::<Vec<_>>(), ["m1"]);
    assert!(rest.cursor.is_none());
    let ranged = t.query(Query::pk("u1").on_index("by_user").sk(SkCondition::Ge("002".into()))).await.unwrap();
    assert_eq!(ranged.items.len(), 2);

    t.put(Put::new("chan", "m1", attrs(json!({"user": "u2", "at": "000"})))).await.unwrap();
    assert_eq!(by_user("u1", false).await, ["m3", "m4"], "an update moves the item out of its old index key");
    assert_eq!(by_user("u2", false).await, ["m1", "m2"]);
    t.delete("chan", "m2", Condition::None).await.unwrap();
    assert_eq!(by_user("u2", false).await, ["m1"]);
    let err = t.query(Query::pk("u1").on_index("missing")).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::InvalidArgument);
}

/// Declaring an index on a table that already holds items covers those items.
pub async fn table_index_declared_later_covers_existing_items(h: &dyn Harness) {
    let name = h.unique("later").to_lowercase();
    let plain = h.store().table(TableSpec::new(name.clone())).await.unwrap();
    plain.put(Put::new("p", "1", attrs(json!({"colour": "red"})))).await.unwrap();
    plain.put(Put::new("p", "2", attrs(json!({"colour": "blue"})))).await.unwrap();
    let indexed =
        h.store().table(TableSpec::new(name).with_index(IndexSpec::new("by_colour", "colour", None))).await.unwrap();
    let red = indexed.query(Query::pk("red").on_index("by_colour")).await.unwrap();
    assert_eq!(red.items.iter().map(|i| i.sk.as_str()).collect::<Vec<_>>(), ["1"]);
}

/// Expired items vanish from every read and from conditions, then a sweep deletes them.
pub async fn table_expired_items_are_invisible_and_swept(h: &dyn Harness) {
    let t = table(h, "ttl", vec![IndexSpec::new("by_kind", "kind", None)]).await;
    let base = h.now();
    t.put(Put::new("p", "short", attrs(json!({"kind": "k"}))).expires_at(base.plus(Duration::from_secs(2))))
        .await
        .unwrap();
    t.put(Put::new("p", "long", attrs(json!({"kind": "k"}))).expires_at(base.plus(Duration::from_secs(3600))))
        .await
        .unwrap();
    assert!(t.get("p", "short").await.unwrap().is_some());
    h.advance(Duration::from_secs(3)).await;
    assert_eq!(t.get("p", "short").await.unwrap(), None, "get hides an expired item");
    let q = t.query(Query::pk("p")).await.unwrap();
    assert_eq!(q.items.iter().map(|i| i.sk.as_str()).collect::<Vec<_>>(), ["long"], "query hides it");
    let qi = t.query(Query::pk("k").on_index("by_kind")).await.unwrap();
    assert_eq!(qi.items.len(), 1, "index query hides it");
    assert_eq!(
        t.put(Put::new("p", "short", Map::new()).condition(Condition::Absent)).await.unwrap(),
        1,
        "an expired item counts as absent"
    );
    t.put(Put::new("p", "gone", Map::new()).expires_at(base)).await.unwrap();
    h.advance(Duration::from_secs(1)).await;
    let swept = t.sweep_expired(100).await.unwrap();
    assert!(swept >= 1, "the sweep deleted the expired item");
    assert_eq!(t.sweep_expired(100).await.unwrap(), 0);
}

/// Items over the size limit and forged cursors are refused with a clear error.
pub async fn table_rejects_oversized_items_and_bad_cursors(h: &dyn Harness) {
    let t = table(h, "limits", vec![]).await;
    let big = "x".repeat(crate::MAX_ITEM_BYTES + 1);
    let err = t.put(Put::new("p", "s", attrs(json!({"big": big})))).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::InvalidArgument);
    assert!(err.to_string().contains("limit"), "{err}");
    let err = t.query(Query::pk("p").cursor(Some("not a cursor".into()))).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::InvalidArgument);
    let err = t.query(Query::pk("p").limit(0)).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::InvalidArgument);
}

/// Two tables with the same keys hold separate items.
pub async fn table_tables_do_not_share_items(h: &dyn Harness) {
    let a = table(h, "a", vec![]).await;
    let b = table(h, "b", vec![]).await;
    a.put(Put::new("p", "s", attrs(json!({"in": "a"})))).await.unwrap();
    assert_eq!(b.get("p", "s").await.unwrap(), None);
    assert!(b.query(Query::pk("p")).await.unwrap().items.is_empty());
}

fn spec(h: &dyn Harness, base: &str, max_receive: u32) -> QueueSpec {
    let name = h.unique(base);
    QueueSpec {
        dead_letter: Some(DeadLetterSpec {
            name: format!("{name}-dlq"),
            max_receive_count: max_receive,
            retention: Duration::from_secs(14 * 86_400),
        }),
        name,
        visibility_timeout: Duration::from_secs(30),
        retention: Duration::from_secs(4 * 86_400),
    }
}

async fn make_queue(h: &dyn Harness, base: &str, max_receive: u32) -> (Arc<dyn Queue>, QueueSpec) {
    let q = h.store().queue();
    let s = spec(h, base, max_receive);
    q.create_queue(&s).await.expect("create queue");
    (q, s)
}

fn recv(max: usize, vis_secs: u64) -> ReceiveOptions {
    ReceiveOptions { max_messages: max, wait: Duration::ZERO, visibility_timeout: Some(Duration::from_secs(vis_secs)) }
}

async fn send(q: &dyn Queue, queue: &str, bodies: &[&str]) -> Vec<String> {
    let msgs = bodies.iter().map(|b| OutgoingMessage::new(*b)).collect();
    q.send_batch(queue, msgs).await.unwrap().into_iter().map(|s| s.message_id).collect()
}

/// Sent messages are received once each, then acked away.
pub async fn queue_send_receive_ack(h: &dyn Harness) {
    let (q, s) = make_queue(h, "basic", 5).await;
    let ids = send(&*q, &s.name, &["a", "b", "c"]).await;
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 3);
    let got = q.receive(&s.name, recv(10, 30)).await.unwrap();
    assert_eq!(got.iter().map(|d| d.body.as_str()).collect::<BTreeSet<_>>(), BTreeSet::from(["a", "b", "c"]));
    assert!(got.iter().all(|d| d.receive_count == 1));
    assert!(q.receive(&s.name, recv(10, 30)).await.unwrap().is_empty(), "in-flight messages are hidden");
    for d in &got {
        q.ack(&s.name, &d.receipt).await.unwrap();
    }
    let again = q.ack(&s.name, &got[0].receipt).await.unwrap_err();
    assert_eq!(again.kind(), StoreErrorKind::ReceiptInvalid, "a message is acked once");
    assert_eq!(q.depth(&s.name).await.unwrap().total(), 0);
}

/// Batches over 10, bodies over 1 MiB, long waits and delays are refused.
pub async fn queue_rejects_out_of_range_arguments(h: &dyn Harness) {
    let (q, s) = make_queue(h, "limits", 5).await;
    let kind = |r: crate::StoreResult<Vec<crate::Sent>>| r.unwrap_err().kind();
    let eleven = (0..11).map(|i| OutgoingMessage::new(i.to_string())).collect();
    assert_eq!(kind(q.send_batch(&s.name, eleven).await), StoreErrorKind::InvalidArgument);
    assert_eq!(kind(q.send_batch(&s.name, vec![]).await), StoreErrorKind::InvalidArgument);
    let huge = OutgoingMessage::new("x".repeat(crate::MAX_BODY_BYTES + 1));
    assert_eq!(kind(q.send_batch(&s.name, vec![huge]).await), StoreErrorKind::InvalidArgument);
    let late = OutgoingMessage::new("x").delay(Duration::from_secs(901));
    assert_eq!(kind(q.send_batch(&s.name, vec![late]).await), StoreErrorKind::InvalidArgument);
    let long_wait = ReceiveOptions { wait: Duration::from_secs(21), ..ReceiveOptions::default() };
    assert_eq!(q.receive(&s.name, long_wait).await.unwrap_err().kind(), StoreErrorKind::InvalidArgument);
    let too_many = ReceiveOptions { max_messages: 11, ..ReceiveOptions::default() };
    assert_eq!(q.receive(&s.name, too_many).await.unwrap_err().kind(), StoreErrorKind::InvalidArgument);
    let forged = q.ack(&s.name, &Receipt("forged".into())).await.unwrap_err();
    assert_eq!(forged.kind(), StoreErrorKind::ReceiptInvalid);
    assert_eq!(q.depth(&s.name).await.unwrap().total(), 0, "nothing from a refused batch was enqueued");
}

/// Calls on a queue that was never created say so.
pub async fn queue_unknown_queue_is_reported(h: &dyn Harness) {
    let q = h.store().queue();
    let name = h.unique("nosuch");
    let err = q.send_batch(&name, vec![OutgoingMessage::new("x")]).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::QueueNotFound);
    assert_eq!(q.depth(&name).await.unwrap_err().kind(), StoreErrorKind::QueueNotFound);
    assert_eq!(q.probe(&name).await.unwrap_err().kind(), StoreErrorKind::QueueNotFound);
    let (q, s) = make_queue(h, "probed", 3).await;
    q.probe(&s.name).await.expect("a declared queue answers its probe");
}

/// After the visibility timeout a message comes back with a higher receive
/// count, and the earlier receipt can no longer ack it.
pub async fn queue_visibility_timeout_redelivers_and_stales_old_receipts(h: &dyn Harness) {
    let (q, s) = make_queue(h, "vis", 5).await;
    send(&*q, &s.name, &["m"]).await;
    let first = q.receive(&s.name, recv(1, 2)).await.unwrap().remove(0);
    h.advance(Duration::from_secs(1)).await;
    assert!(q.receive(&s.name, recv(1, 2)).await.unwrap().is_empty());
    h.advance(Duration::from_secs(2)).await;
    let second = q.receive(&s.name, recv(1, 30)).await.unwrap().remove(0);
    assert_eq!(second.message_id, first.message_id);
    assert_eq!(second.receive_count, 2);
    assert_eq!(q.ack(&s.name, &first.receipt).await.unwrap_err().kind(), StoreErrorKind::ReceiptInvalid);
    q.ack(&s.name, &second.receipt).await.unwrap();
}

/// Changing visibility extends a lease, or releases the message at once with 0.
pub async fn queue_change_visibility_extends_or_releases(h: &dyn Harness) {
    let (q, s) = make_queue(h, "chvis", 5).await;
    send(&*q, &s.name, &["m"]).await;
    let d = q.receive(&s.name, recv(1, 2)).await.unwrap().remove(0);
    q.change_visibility(&s.name, &d.receipt, Duration::from_secs(10)).await.unwrap();
    h.advance(Duration::from_secs(3)).await;
    assert!(q.receive(&s.name, recv(1, 2)).await.unwrap().is_empty(), "the lease was extended");
    q.change_visibility(&s.name, &d.receipt, Duration::ZERO).await.unwrap();
    let again = q.receive(&s.name, recv(1, 30)).await.unwrap();
    assert_eq!(again.len(), 1, "visibility 0 releases the message");
    let stale = q.change_visibility(&s.name, &d.receipt, Duration::from_secs(5)).await.unwrap_err();
    assert_eq!(stale.kind(), StoreErrorKind::ReceiptInvalid);
}

/// A delayed message is invisible until its delay has passed.
pub async fn queue_delay_hides_message_until_due(h: &dyn Harness) {
    let (q, s) = make_queue(h, "delay", 5).await;
    q.send_batch(&s.name, vec![OutgoingMessage::new("later").delay(Duration::from_secs(2))]).await.unwrap();
    assert!(q.receive(&s.name, recv(1, 30)).await.unwrap().is_empty());
    assert_eq!(q.depth(&s.name).await.unwrap().delayed, 1);
    h.advance(Duration::from_secs(3)).await;
    assert_eq!(q.receive(&s.name, recv(1, 30)).await.unwrap()[0].body, "later");
}

/// Sends that share a dedup key inside the window enqueue one message.
pub async fn queue_dedup_key_collapses_repeated_sends(h: &dyn Harness) {
    let (q, s) = make_queue(h, "dedup", 5).await;
    let one = q.send_batch(&s.name, vec![OutgoingMessage::new("a").dedup_key("k1")]).await.unwrap();
    let two = q
        .send_batch(
            &s.name,
            vec![OutgoingMessage::new("a again").dedup_key("k1"), OutgoingMessage::new("b").dedup_key("k2")],
        )
        .await
        .unwrap();
    assert!(!one[0].duplicate);
    assert!(two[0].duplicate);
    assert_eq!(two[0].message_id, one[0].message_id);
    assert!(!two[1].duplicate);
    let got = q.receive(&s.name, recv(10, 30)).await.unwrap();
    assert_eq!(got.iter().map(|d| d.body.as_str()).collect::<BTreeSet<_>>(), BTreeSet::from(["a", "b"]));
}

/// On receive number max+1 the message goes to the DLQ; a redrive brings it back.
pub async fn queue_max_receive_count_moves_to_dlq_and_redrive_returns(h: &dyn Harness) {
    let (q, s) = make_queue(h, "redrive", 2).await;
    let dlq = s.dead_letter.clone().unwrap().name;
    let id = send(&*q, &s.name, &["poison"]).await.remove(0);
    for expected in 1..=2 {
        let d = q.receive(&s.name, recv(1, 1)).await.unwrap();
        assert_eq!(d[0].receive_count, expected);
        h.advance(Duration::from_secs(2)).await;
    }
    assert!(q.receive(&s.name, recv(1, 1)).await.unwrap().is_empty(), "the third receive dead-letters it");
    let peeked = q.peek(&dlq, 10, None).await.unwrap();
    assert_eq!(peeked.len(), 1);
    assert_eq!(peeked[0].message_id, id);
    assert_eq!(peeked[0].body, "poison");
    assert_eq!(peeked[0].source_queue.as_deref(), Some(s.name.as_str()));
    assert_eq!(q.depth(&s.name).await.unwrap().total(), 0);

    assert_eq!(q.redrive(&dlq, None).await.unwrap(), 1);
    assert_eq!(q.depth(&dlq).await.unwrap().total(), 0);
    let back = q.receive(&s.name, recv(1, 30)).await.unwrap();
    assert_eq!(back[0].body, "poison");
    assert_eq!(back[0].receive_count, 1, "a redriven message gets its retries again");
}

/// An explicit dead-letter moves a message at once and remembers its source.
pub async fn queue_dead_letter_moves_now_and_keeps_source(h: &dyn Harness) {
    let (q, s) = make_queue(h, "deadnow", 5).await;
    let dlq = s.dead_letter.clone().unwrap().name;
    send(&*q, &s.name, &["bad"]).await;
    let d = q.receive(&s.name, recv(1, 30)).await.unwrap().remove(0);
    q.dead_letter(&s.name, &d.receipt).await.unwrap();
    assert_eq!(q.ack(&s.name, &d.receipt).await.unwrap_err().kind(), StoreErrorKind::ReceiptInvalid);
    let peeked = q.peek(&dlq, 10, None).await.unwrap();
    assert_eq!(peeked.len(), 1);
    assert_eq!(peeked[0].source_queue.as_deref(), Some(s.name.as_str()));
}

/// A DLQ that would drop messages before its source refuses to be created.
pub async fn queue_dlq_must_outlive_source(h: &dyn Harness) {
    let mut s = spec(h, "shortdlq", 3);
    s.retention = Duration::from_secs(14 * 86_400);
    let err = h.store().queue().create_queue(&s).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::InvalidArgument);
    assert!(err.to_string().contains("longer"), "{err}");
}

/// Messages older than the queue's retention are never delivered, and a sweep deletes them.
pub async fn queue_retention_drops_old_messages(h: &dyn Harness) {
    let q = h.store().queue();
    let mut s = spec(h, "retain", 5);
    s.retention = Duration::from_secs(60);
    q.create_queue(&s).await.unwrap();
    send(&*q, &s.name, &["old"]).await;
    h.advance(Duration::from_secs(61)).await;
    assert!(q.receive(&s.name, recv(1, 30)).await.unwrap().is_empty());
    assert_eq!(q.depth(&s.name).await.unwrap().total(), 0);
    q.sweep_expired().await.unwrap();
    assert!(q.peek(&s.name, 10, None).await.unwrap().is_empty());
}

/// Depth tells visible, in-flight and delayed messages apart.
pub async fn queue_depth_counts_visible_in_flight_delayed(h: &dyn Harness) {
    let (q, s) = make_queue(h, "depth", 5).await;
    send(&*q, &s.name, &["1", "2", "3"]).await;
    q.send_batch(&s.name, vec![OutgoingMessage::new("d").delay(Duration::from_secs(60))]).await.unwrap();
    q.receive(&s.name, recv(1, 30)).await.unwrap();
    let d = q.depth(&s.name).await.unwrap();
    assert_eq!((d.visible, d.in_flight, d.delayed), (2, 1, 1));
}

/// Purge empties a queue; delete_message removes one message by id.
pub async fn queue_purge_and_delete_message(h: &dyn Harness) {
    let (q, s) = make_queue(h, "purge", 5).await;
    let ids = send(&*q, &s.name, &["a", "b", "c"]).await;
    assert!(q.delete_message(&s.name, &ids[0]).await.unwrap());
    assert!(!q.delete_message(&s.name, &ids[0]).await.unwrap());
    assert_eq!(q.depth(&s.name).await.unwrap().total(), 2);
    assert_eq!(q.purge(&s.name).await.unwrap(), 2);
    assert_eq!(q.depth(&s.name).await.unwrap().total(), 0);
}

/// A long poll returns as soon as a message arrives, well before its wait ends.
pub async fn queue_long_poll_wakes_on_send(h: &dyn Harness) {
    let (q, s) = make_queue(h, "poll", 5).await;
    let sender = q.clone();
    let name = s.name.clone();
    let task = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        sender.send_batch(&name, vec![OutgoingMessage::new("wake")]).await.unwrap();
    });
    let start = std::time::Instant::now();
    let opts = ReceiveOptions { max_messages: 1, wait: Duration::from_secs(10), visibility_timeout: None };
    let got = q.receive(&s.name, opts).await.unwrap();
    assert_eq!(got.len(), 1);
    assert!(start.elapsed() < Duration::from_secs(9), "the poll returned when the message came");
    task.await.unwrap();
    let empty = ReceiveOptions { max_messages: 1, wait: Duration::from_millis(300), visibility_timeout: None };
    assert!(q.receive(&s.name, empty).await.unwrap().is_empty(), "an empty poll ends at its wait");
}

/// Sent and in-flight messages are still there after the store is reopened.
pub async fn queue_messages_survive_reopen(h: &dyn Harness) {
    let (q, s) = make_queue(h, "reopen", 5).await;
    send(&*q, &s.name, &["a", "b"]).await;
    let d = q.receive(&s.name, recv(1, 30)).await.unwrap().remove(0);
    h.reopen().await;
    let q = h.store().queue();
    let depth = q.depth(&s.name).await.unwrap();
    assert_eq!((depth.visible, depth.in_flight), (1, 1));
    q.ack(&s.name, &d.receipt).await.expect("a receipt outlives a restart");
}

#[derive(Clone, Debug)]
enum Op {
    Send(u8),
    Receive { max: u8, vis: u8 },
    Ack(u8),
    AckStale(u8),
    Extend { which: u8, secs: u8 },
    DeadLetter(u8),
    Advance(u8),
    Reopen,
}

fn op_strategy() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        3 => (1u8..=3).prop_map(Op::Send),
        3 => (1u8..=4, 1u8..=4).prop_map(|(max, vis)| Op::Receive { max, vis }),
        3 => any::<u8>().prop_map(Op::Ack),
        2 => any::<u8>().prop_map(Op::AckStale),
        1 => (any::<u8>(), 0u8..=4).prop_map(|(which, secs)| Op::Extend { which, secs }),
        1 => any::<u8>().prop_map(Op::DeadLetter),
        2 => (1u8..=5).prop_map(Op::Advance),
        1 => Just(Op::Reopen),
    ]
}

/// Under random interleavings of send, receive, ack (with fresh and stale
/// receipts), visibility changes and expiry, dead-lettering, and
/// crash-and-reopen, every message sent is at every step exactly one of:
/// acked once, or held by the queue or its DLQ. Nothing is lost, nothing is
/// acked twice, and nothing is delivered past its max receive count.
pub async fn queue_random_interleavings_lose_nothing_and_ack_once(h: &dyn Harness) {
    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::{Config, TestRunner};

    let cases = h.interleaving_cases();
    let mut runner = TestRunner::new(Config { cases, ..Config::default() });
    let strategy = proptest::collection::vec(op_strategy(), 10..60);
    for case in 0..cases {
        let ops = strategy.new_tree(&mut runner).expect("strategy").current();
        run_interleaving(h, case, &ops).await;
    }
}

async fn run_interleaving(h: &dyn Harness, case: u32, ops: &[Op]) {
    const MAX_RECEIVES: u32 = 3;
    let (_, s) = make_queue(h, &format!("prop{case}"), MAX_RECEIVES).await;
    let dlq = s.dead_letter.clone().unwrap().name;
    let mut sent: BTreeSet<String> = BTreeSet::new();
    let mut acked: BTreeSet<String> = BTreeSet::new();
    // Latest receipt of each message, and receipts made stale by a later receive.
    let mut latest: BTreeMap<String, Receipt> = BTreeMap::new();
    let mut stale: Vec<(String, Receipt)> = Vec::new();
    let mut counter = 0u32;
    let pick = |map: &BTreeMap<String, Receipt>, i: u8| -> Option<(String, Receipt)> {
        if map.is_empty() {
            return None;
        }
        map.iter().nth(usize::from(i) % map.len()).map(|(k, v)| (k.clone(), v.clone()))
    };
    for op in ops {
        let q = h.store().queue();
        match *op {
            Op::Send(n) => {
                let msgs = (0..n)
                    .map(|_| {
                        counter += 1;
                        OutgoingMessage::new(format!("m{counter}"))
                    })
                    .collect();
                for s in q.send_batch(&s.name, msgs).await.unwrap() {
                    assert!(sent.insert(s.message_id), "message ids are unique");
                }
            }
            Op::Receive { max, vis } => {
                let got = q.receive(&s.name, recv(usize::from(max), u64::from(vis))).await.unwrap();
                for d in got {
                    assert!(sent.contains(&d.message_id), "only sent messages are delivered");
                    assert!(!acked.contains(&d.message_id), "an acked message is never delivered again ({op:?})");
                    assert!(d.receive_count <= MAX_RECEIVES, "delivered past the max receive count");
                    if let Some(old) = latest.insert(d.message_id.clone(), d.receipt) {
                        stale.push((d.message_id, old));
                    }
                }
            }
            Op::Ack(i) => {
                if let Some((id, receipt)) = pick(&latest, i) {
                    match q.ack(&s.name, &receipt).await {
                        Ok(()) => {
                            assert!(acked.insert(id.clone()), "message {id} acked twice");
                            latest.remove(&id);
                        }
                        // The message may have moved on: redelivery made it stale (the model
                        // learns that at the next receive) or it was dead-lettered.
                        Err(e) => assert_eq!(e.kind(), StoreErrorKind::ReceiptInvalid),
                    }
                }
            }
            Op::AckStale(i) => {
                // Stale receipts of messages that are still held: the ones a buggy ack would delete.
                let live: Vec<&(String, Receipt)> = stale.iter().filter(|(id, _)| !acked.contains(id)).collect();
                if !live.is_empty() {
                    let (id, receipt) = live[usize::from(i) % live.len()].clone();
                    let err = q.ack(&s.name, &receipt).await.expect_err("a stale receipt must not ack");
                    assert_eq!(err.kind(), StoreErrorKind::ReceiptInvalid, "stale receipt for {id}");
                }
            }
            Op::Extend { which, secs } => {
                if let Some((_, receipt)) = pick(&latest, which) {
                    let r = q.change_visibility(&s.name, &receipt, Duration::from_secs(u64::from(secs))).await;
                    if let Err(e) = r {
                        assert_eq!(e.kind(), StoreErrorKind::ReceiptInvalid);
                    }
                }
            }
            Op::DeadLetter(i) => {
                if let Some((id, receipt)) = pick(&latest, i)
                    && q.dead_letter(&s.name, &receipt).await.is_ok()
                {
                    latest.remove(&id);
                }
            }
            Op::Advance(secs) => h.advance(Duration::from_secs(u64::from(secs))).await,
            Op::Reopen => h.reopen().await,
        }
        // The invariant, after every step: held ∪ acked = sent, and held ∩ acked = ∅.
        let q = h.store().queue();
        let mut held = BTreeSet::new();
        for name in [&s.name, &dlq] {
            for m in q.peek(name, 1000, None).await.unwrap() {
                assert!(held.insert(m.message_id), "a message is in two places");
            }
        }
        assert!(held.is_disjoint(&acked), "an acked message is still held (case {case}, {op:?})");
        let union: BTreeSet<String> = held.union(&acked).cloned().collect();
        assert_eq!(union, sent, "a message was lost (case {case}, after {op:?}; ops {ops:?})");
    }
}
