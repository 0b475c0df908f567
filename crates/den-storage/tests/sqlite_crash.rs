//! A send that returned Ok survives a SIGKILL of the process (the default durability).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;

use den_core::SystemClock;
use den_storage::sqlite::{SqliteOptions, SqliteStore};
use den_storage::{OutgoingMessage, Queue, QueueSpec};

const CHILD_ENV: &str = "DEN_STORAGE_CRASH_CHILD_DB";
const TEST_NAME: &str = "sends_that_returned_ok_survive_sigkill";

/// In the child: send batches forever, printing each id once its send returned Ok.
fn child(path: &str) -> ! {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let store = SqliteStore::open(&SqliteOptions::new(path), Arc::new(SystemClock)).unwrap();
        let queue = store.queue();
        queue.create_queue(&QueueSpec::with_dlq("jobs")).await.unwrap();
        let mut n = 0u64;
        loop {
            let batch = (0..10)
                .map(|_| {
                    n += 1;
                    OutgoingMessage::new(format!("job {n}"))
                })
                .collect();
            for sent in queue.send_batch("jobs", batch).await.unwrap() {
                println!("sent {}", sent.message_id);
            }
        }
    })
}

#[test]
fn sends_that_returned_ok_survive_sigkill() {
    if let Ok(path) = std::env::var(CHILD_ENV) {
        child(&path);
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("den.db");
    let mut proc = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &db)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acknowledged = Vec::new();
    for line in BufReader::new(proc.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(id) = line.strip_prefix("sent ") {
            acknowledged.push(id.to_owned());
            if acknowledged.len() >= 2_000 {
                break;
            }
        }
    }
    proc.kill().unwrap(); // SIGKILL: no destructor, no checkpoint, no clean close
    proc.wait().unwrap();
    assert!(acknowledged.len() >= 2_000, "the child stopped early");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = SqliteStore::open(&SqliteOptions::new(&db), Arc::new(SystemClock)).unwrap();
        let queue = store.queue();
        let mut held = std::collections::HashSet::new();
        let mut after: Option<String> = None;
        loop {
            let page = queue.peek("jobs", 1000, after.as_deref()).await.unwrap();
            let Some(last) = page.last() else { break };
            after = Some(last.message_id.clone());
            held.extend(page.into_iter().map(|m| m.message_id));
        }
        let lost: Vec<_> = acknowledged.iter().filter(|id| !held.contains(*id)).collect();
        assert!(lost.is_empty(), "{} of {} acknowledged sends were lost", lost.len(), acknowledged.len());
    });
}
