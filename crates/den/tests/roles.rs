//! Every long-running role starts, reports health and shuts down cleanly.

mod support;

use std::time::{Duration, Instant};

use support::{Scratch, TOKEN, stderr};

#[test]
fn run_without_a_token_exits_non_zero_with_one_line_naming_the_variable() {
    let scratch = Scratch::new();
    let start = Instant::now();
    let out = scratch.output(&["run"], &[]);
    let took = start.elapsed();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("DISCORD_TOKEN"), "{err}");
    assert!(!scratch.path().join("den-data").exists(), "nothing is opened before the token check");
    // A hang guard, not a benchmark: the check runs before any I/O.
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn the_token_file_named_in_config_is_used_and_a_missing_one_is_named() {
    let scratch = Scratch::new();
    std::fs::write(scratch.path().join("den.toml"), "[discord]\ntoken_file = \"missing-token\"\n").unwrap();
    let out = scratch.output(&["run"], &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("missing-token"), "{}", stderr(&out));
}

fn exercise_role(role: &str, signal: &str) {
    let scratch = Scratch::new();
    let mut den = scratch.start(role, &[("DISCORD_TOKEN", TOKEN)]);

    let health = reqwest::blocking_get(&format!("{}/health", den.ops));
    assert_eq!(health.0, 200, "{role} /health");
    let (status, body) = reqwest::blocking_get(&format!("{}/ready", den.ops));
    assert_eq!(status, 200, "{role} /ready: {body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["checks"]["store"], "ok");
    let (status, metrics) = reqwest::blocking_get(&format!("{}/metrics", den.ops));
    assert_eq!(status, 200);
    assert!(metrics.contains("den_heartbeat_timestamp_seconds "), "{metrics}");
    assert!(metrics.contains(r#"den_queue_messages{queue="den-jobs",state="visible"} 0"#), "{metrics}");

    den.signal(signal);
    let status = den.wait(Duration::from_secs(30));
    assert!(status.success(), "{role} exits 0 after SIG{signal}: {status:?}");
    den.wait_for_log("den stopped", Duration::from_secs(1));
    let wal = scratch.db().with_extension("db-wal");
    assert!(!wal.exists() || std::fs::metadata(&wal).unwrap().len() == 0, "the store was closed and checkpointed");
    for line in &den.log {
        assert!(!line.to_string().contains(TOKEN), "the token leaked into a log line: {line}");
    }
}

#[test]
fn den_run_starts_serves_ops_and_stops_cleanly_on_sigterm() {
    exercise_role("run", "TERM");
}

#[test]
fn den_run_stops_cleanly_on_sigint() {
    exercise_role("run", "INT");
}

#[test]
fn den_gateway_starts_serves_ops_and_stops_cleanly() {
    exercise_role("gateway", "TERM");
}

#[test]
fn den_worker_starts_serves_ops_and_stops_cleanly() {
    exercise_role("worker", "TERM");
}

#[test]
fn den_interactions_starts_without_a_bot_token_and_stops_cleanly() {
    let scratch = Scratch::new();
    let mut den = scratch.start("interactions", &[]);
    assert_eq!(reqwest::blocking_get(&format!("{}/health", den.ops)).0, 200);
    den.signal("TERM");
    assert!(den.wait(Duration::from_secs(30)).success());
}

#[test]
fn a_second_process_on_a_taken_ops_port_says_which_setting_to_change() {
    let scratch = Scratch::new();
    let den = scratch.start("worker", &[("DISCORD_TOKEN", TOKEN)]);
    let taken = den.ops.trim_start_matches("http://").to_owned();
    let other = Scratch::new();
    let out = other.output(&["worker"], &[("DISCORD_TOKEN", TOKEN), ("DEN_OPS__LISTEN", &taken)]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("DEN_OPS__LISTEN"), "{}", stderr(&out));
}

/// A tiny blocking HTTP GET for these tests (the ops server speaks plain HTTP/1.1).
mod reqwest {
    pub fn blocking_get(url: &str) -> (u16, String) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let r = ::reqwest::get(url).await.unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        })
    }
}
