//! `den queue`, `den store sweep` and `den config check` as an operator uses them.

mod support;

use std::sync::Arc;
use std::time::Duration;

use den_core::{Clock, Job, SystemClock};
use den_storage::sqlite::{SqliteOptions, SqliteStore};
use den_storage::{DeadLetterSpec, OutgoingMessage, Put, Queue, QueueSpec, ReceiveOptions, TableSpec};
use support::{Discord, Scratch, TOKEN, stderr, stdout};

/// den's default queue, as `den.toml` defaults declare it.
fn default_spec() -> QueueSpec {
    QueueSpec {
        name: "den-jobs".into(),
        visibility_timeout: Duration::from_secs(150),
        retention: Duration::from_secs(96 * 3600),
        dead_letter: Some(DeadLetterSpec {
            name: "den-jobs-dlq".into(),
            max_receive_count: 5,
            retention: Duration::from_secs(336 * 3600),
        }),
    }
}

fn with_store<T>(scratch: &Scratch, f: impl AsyncFnOnce(&SqliteStore) -> T) -> T {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = SqliteStore::open(&SqliteOptions::new(scratch.db()), Arc::new(SystemClock)).unwrap();
        let out = f(&store).await;
        store.close().await.unwrap();
        out
    })
}

fn depths(scratch: &Scratch) -> serde_json::Value {
    let out = scratch.output(&["queue", "stats", "--json"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: Vec<serde_json::Value> = serde_json::from_str(&stdout(&out)).unwrap();
    let mut map = serde_json::Map::new();
    for row in rows {
        map.insert(row["queue"].as_str().unwrap().to_owned(), row);
    }
    map.into()
}

#[test]
fn queue_stats_and_the_dlq_commands_inspect_and_repair_dead_letters() {
    let scratch = Scratch::new();
    let ids: Vec<String> = with_store(&scratch, async |store| {
        let q = store.queue();
        q.create_queue(&default_spec()).await.unwrap();
        let jobs: Vec<OutgoingMessage> = ["persona.reply", "campaign.step", "persona.reply"]
            .iter()
            .map(|kind| {
                let job = Job::builder(*kind, SystemClock.now()).payload(serde_json::json!({"why": kind})).build();
                OutgoingMessage::new(serde_json::to_string(&job).unwrap())
            })
            .collect();
        q.send_batch("den-jobs", jobs).await.unwrap();
        let got = q.receive("den-jobs", ReceiveOptions { max_messages: 3, ..ReceiveOptions::default() }).await.unwrap();
        for d in &got[..2] {
            q.dead_letter("den-jobs", &d.receipt).await.unwrap();
        }
        got[..2].iter().map(|d| d.message_id.clone()).collect()
    });

    let d = depths(&scratch);
    assert_eq!(d["den-jobs"]["in_flight"], 1);
    assert_eq!(d["den-jobs-dlq"]["visible"], 2);
    let table = stdout(&scratch.output(&["queue", "stats"], &[]));
    assert!(table.lines().next().unwrap().contains("VISIBLE"), "{table}");

    let listed = scratch.output(&["queue", "dlq", "list", "--json"], &[]);
    let lines: Vec<serde_json::Value> = stdout(&listed).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines.iter().map(|l| l["id"].as_str().unwrap().to_owned()).collect::<Vec<_>>(), ids);
    assert!(lines.iter().all(|l| l["from"] == "den-jobs"));
    let human = stdout(&scratch.output(&["queue", "dlq", "list"], &[]));
    assert!(human.contains("persona.reply") && human.contains("campaign.step"), "{human}");

    let shown = scratch.output(&["queue", "dlq", "show", &ids[1]], &[]);
    let shown: serde_json::Value = serde_json::from_str(&stdout(&shown)).unwrap();
    assert_eq!(shown["body"]["kind"], "campaign.step");
    assert_eq!(shown["body"]["payload"]["why"], "campaign.step");
    let missing = scratch.output(&["queue", "dlq", "show", "nope"], &[]);
    assert!(!missing.status.success() && stderr(&missing).contains("no message nope"));

    let refused = scratch.output(&["queue", "dlq", "purge"], &[]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("--yes") && stderr(&refused).contains("2 message"), "{}", stderr(&refused));
    assert_eq!(depths(&scratch)["den-jobs-dlq"]["visible"], 2, "a refused purge deletes nothing");

    let redriven = scratch.output(&["queue", "dlq", "redrive", "--limit", "1"], &[]);
    assert!(stdout(&redriven).contains("moved 1"), "{}", stdout(&redriven));
    let d = depths(&scratch);
    assert_eq!((d["den-jobs"]["visible"].as_u64(), d["den-jobs-dlq"]["visible"].as_u64()), (Some(1), Some(1)));

    let purged = scratch.output(&["queue", "dlq", "purge", "--yes"], &[]);
    assert!(stdout(&purged).contains("deleted 1"), "{}", stdout(&purged));
    assert_eq!(depths(&scratch)["den-jobs-dlq"]["visible"], 0);
}

#[test]
fn a_job_nobody_handles_is_dead_lettered_by_a_running_den_and_listed() {
    let discord = Discord::start();
    let scratch = Scratch::new();
    let mut den = scratch.start_with(&discord, "run", &[]);
    with_store(&scratch, async |store| {
        let job = Job::builder("nobody.handles.this", SystemClock.now()).build();
        store
            .queue()
            .send_batch("den-jobs", vec![OutgoingMessage::new(serde_json::to_string(&job).unwrap())])
            .await
            .unwrap();
    });
    den.wait_for_log("no handler for this job kind", Duration::from_secs(20));
    let listed = stdout(&scratch.output(&["queue", "dlq", "list"], &[]));
    assert!(listed.contains("nobody.handles.this"), "{listed}");
    den.signal("TERM");
    assert!(den.wait(Duration::from_secs(30)).success());
}

#[test]
fn store_sweep_deletes_expired_items_now() {
    let scratch = Scratch::new();
    with_store(&scratch, async |store| {
        let t = store.table(TableSpec::new("notes")).await.unwrap();
        use den_storage::Table as _;
        let past = SystemClock.now().plus(Duration::ZERO);
        t.put(Put::new("p", "old", serde_json::Map::new()).expires_at(den_core::Timestamp(past.as_millis() - 1000)))
            .await
            .unwrap();
        t.put(Put::new("p", "kept", serde_json::Map::new())).await.unwrap();
    });
    let out = scratch.output(&["store", "sweep"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("deleted 1 expired item(s)"), "{}", stdout(&out));
    let again = scratch.output(&["store", "sweep"], &[]);
    assert!(stdout(&again).contains("deleted 0 expired item(s)"));
}

#[test]
fn config_check_prints_the_effective_config_with_the_token_redacted() {
    let scratch = Scratch::new();
    std::fs::write(scratch.path().join("den.toml"), "[worker]\nconcurrency = 4\n").unwrap();
    let out = scratch.output(&["config", "check"], &[("DISCORD_TOKEN", TOKEN), ("DEN_OPS__HEARTBEAT_SECS", "10")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(!text.contains(TOKEN), "the token is never printed");
    assert!(text.contains("[redacted] (from the environment variable DISCORD_TOKEN)"), "{text}");
    assert!(text.contains("concurrency = 4"), "the file's value: {text}");
    assert!(text.contains("heartbeat_secs = 10"), "the override's value: {text}");
    assert!(text.contains("DEN_OPS__HEARTBEAT_SECS"), "overrides are listed: {text}");
}

#[test]
fn a_bad_config_file_is_reported_with_the_file_line_and_field() {
    let scratch = Scratch::new();
    std::fs::write(scratch.path().join("den.toml"), "[ops]\nlisten = \"127.0.0.1:0\"\n\n[worker]\ngrace_secs = -5\n")
        .unwrap();
    for args in [&["config", "check"][..], &["run"][..]] {
        let out = scratch.output(args, &[("DISCORD_TOKEN", TOKEN)]);
        assert_eq!(out.status.code(), Some(2));
        let err = stderr(&out);
        assert!(err.contains("den.toml") && err.contains("line 5") && err.contains("worker.grace_secs"), "{err}");
    }
    let out = scratch.output(&["config", "check"], &[("DEN_CONFIG", "elsewhere.toml")]);
    assert!(stderr(&out).contains("elsewhere.toml"), "DEN_CONFIG names the file: {}", stderr(&out));
}
