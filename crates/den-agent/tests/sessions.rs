//! The agent's session tables: one run per thread through the lease, and a
//! saved run that stays within what a store item holds.

use std::sync::Arc;
use std::time::Duration;

use den_agent::discord::sessions::{Session, Sessions};
use den_agent::run::RunState;
use den_core::SystemClock;
use den_llm::{ChatMessage, ToolResult};
use den_storage::sqlite::{SqliteOptions, SqliteStore};

fn store(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(&SqliteOptions::new(dir.path().join("den.db")), Arc::new(SystemClock)).unwrap()
}

#[tokio::test]
async fn a_threads_lease_keeps_a_second_worker_out_until_it_runs_out_or_is_given_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let sessions = Sessions::open(&store).await.unwrap();
    let session = Session { thread: 7, guild: 1, ..Session::default() };
    assert!(sessions.put(&session, 0).await.unwrap());
    let lease = Duration::from_secs(2);
    assert!(sessions.take_lease(7, "a", 1_000, lease).await.unwrap());
    assert!(!sessions.take_lease(7, "b", 2_000, lease).await.unwrap(), "a's lease is live");
    assert!(sessions.take_lease(7, "a", 2_500, lease).await.unwrap(), "a renews its own");
    assert!(!sessions.take_lease(7, "b", 4_000, lease).await.unwrap(), "renewed until 4,500");
    assert!(sessions.take_lease(7, "b", 4_600, lease).await.unwrap(), "a crashed: b takes over");
    sessions.release(7, "a").await.unwrap();
    assert!(!sessions.take_lease(7, "c", 5_000, lease).await.unwrap(), "a cannot give up b's lease");
    sessions.release(7, "b").await.unwrap();
    assert!(sessions.take_lease(7, "c", 5_000, lease).await.unwrap());
    // Sandbox users are never handed out twice.
    let (u1, u2) = (sessions.next_uid(100_000).await.unwrap(), sessions.next_uid(100_000).await.unwrap());
    assert_eq!((u1, u2), (100_000, 100_001));
}

#[tokio::test]
async fn a_long_runs_saved_state_is_cut_to_fit_a_store_item_keeping_its_latest_turns_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let sessions = Sessions::open(&store).await.unwrap();
    let mut state = RunState::start(vec![], "a long task", 0);
    for i in 0..100 {
        let big = format!("{i}:{}", "x".repeat(8_000));
        state.messages.push(ChatMessage::results(vec![ToolResult::ok(format!("c{i}"), &big)]));
        // The calls' records are saved without what the model saw: the conversation has it.
        let outcome = den_agent::tools::Outcome { shown: big.clone(), full: String::new(), ok: true };
        state.calls.push(den_agent::run::CallRecord {
            tool: "read_file".into(),
            input: serde_json::json!({}),
            outcome,
        });
    }
    sessions.save_state(7, "7-1", &state).await.unwrap();
    let back = sessions.state(7, "7-1").await.unwrap().unwrap();
    let size = serde_json::to_string(&back).unwrap().len();
    assert!(size <= 300 * 1024, "{size} bytes");
    assert_eq!(back.messages.len(), state.messages.len(), "no message is dropped");
    assert_eq!(back.messages.last(), state.messages.last(), "the latest turns are whole");
    assert!(back.messages[1].tool_results[0].content.len() < 2_000, "older results are shortened");
}
