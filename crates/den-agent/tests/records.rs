//! A run's records in den's store: the run, its turn log, and events sent
//! once each even when the report is written again (a redelivered job).

use std::sync::Arc;
use std::time::Duration;

use den_agent::escalation::Reason;
use den_agent::records::{EVENTS, Records};
use den_agent::run::{CallRecord, End, Escalation, Report};
use den_agent::tools::Outcome;
use den_core::SystemClock;
use den_llm::Usage;
use den_storage::sqlite::{SqliteOptions, SqliteStore};
use den_storage::{Query, Queue as _, ReceiveOptions, Table as _, TableSpec};
use serde_json::{Value, json};

fn report() -> Report {
    let call = |tool: &str, ok: bool| CallRecord {
        tool: tool.into(),
        input: json!({"path": "a.rs"}),
        outcome: Outcome { shown: "x".into(), full: "x".repeat(40_000), ok },
    };
    Report {
        end: End::Finished { summary: "Fix it".into(), confidence: 88, commit: Some("abc123".into()) },
        turns: 3,
        usage: Usage { input_tokens: 900, output_tokens: 100, cache_read_tokens: 0 },
        calls: vec![call("read_file", true), call("run", false), call("edit_file", true)],
        messages: vec![],
        diffstat: String::new(),
        confidence: vec![50, 40, 90],
        escalations: vec![Escalation {
            turn: 2,
            from: "fast".into(),
            to: "strong".into(),
            reason: Reason::RepeatedFailure("run".into()),
        }],
    }
}

#[tokio::test]
async fn a_report_written_twice_keeps_one_record_one_log_and_sends_each_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&SqliteOptions::new(dir.path().join("den.db")), Arc::new(SystemClock)).unwrap();
    let records = Records::open(&store, Arc::new(SystemClock)).await.unwrap();
    records.report("thread-1", "run-1", &report()).await.unwrap();
    records.report("thread-1", "run-1", &report()).await.unwrap();

    let runs = store.table(TableSpec::new("agent_runs")).await.unwrap();
    let run = runs.get("thread-1", "run-1").await.unwrap().unwrap();
    assert_eq!((run.attrs["status"].as_str(), run.attrs["tokens"].as_u64()), (Some("completed"), Some(1000)));
    let turns = store.table(TableSpec::new("agent_turns")).await.unwrap();
    let log = turns.query(Query::pk("run-1")).await.unwrap().items;
    assert_eq!(log.len(), 3);
    assert!(log.iter().all(|l| l.expires_at.is_some()), "turn logs expire");
    assert_eq!(log[1].attrs["ok"], false);
    assert_eq!(log[1].attrs["output_bytes"], 40_000, "the size of the full output, not of what the model saw");

    let got = store
        .queue()
        .receive(
            EVENTS,
            ReceiveOptions { max_messages: 10, wait: Duration::from_millis(200), visibility_timeout: None },
        )
        .await
        .unwrap();
    let mut kinds: Vec<String> = got
        .iter()
        .map(|d| serde_json::from_str::<Value>(&d.body).unwrap()["payload"]["kind"].as_str().unwrap().to_owned())
        .collect();
    kinds.sort();
    assert_eq!(kinds, ["commit_created", "execution_completed", "model_escalated"], "each fact once");
}
