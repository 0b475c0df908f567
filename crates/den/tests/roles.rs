//! Every long-running role starts, reports health and shuts down cleanly.

mod support;

use std::time::{Duration, Instant};

use support::{Discord, Scratch, TOKEN, stderr};

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
    let discord = Discord::start();
    let scratch = Scratch::new();
    let mut den = scratch.start_with(&discord, role, &[]);

    let health = den.get("/health");
    assert_eq!(health.0, 200, "{role} /health");
    den.wait_ready(Duration::from_secs(20));
    let (status, body) = den.get("/ready");
    assert_eq!(status, 200, "{role} /ready: {body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["checks"]["store"], "ok");
    let (status, metrics) = den.get("/metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("den_heartbeat_timestamp_seconds "), "{metrics}");
    assert!(metrics.contains(r#"den_queue_messages{queue="den-jobs",state="visible"} 0"#), "{metrics}");

    // The container health check: `den health` against the running process.
    let ops_listen = den.ops.trim_start_matches("http://").to_owned();
    let probe = scratch.output(&["health"], &[("DEN_OPS__LISTEN", &ops_listen)]);
    assert!(probe.status.success(), "den health: {}", stderr(&probe));

    den.signal(signal);
    let status = den.wait(Duration::from_secs(30));
    assert!(status.success(), "{role} exits 0 after SIG{signal}: {status:?}");
    den.wait_for_log("den stopped", Duration::from_secs(1));
    let wal = scratch.db().with_extension("db-wal");
    assert!(!wal.exists() || std::fs::metadata(&wal).unwrap().len() == 0, "the store was closed and checkpointed");
    for line in &den.log {
        assert!(!line.to_string().contains(TOKEN), "the token leaked into a log line: {line}");
    }
    assert!(discord.fake.violations().is_empty());
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
    let discord = Discord::start();
    let scratch = Scratch::new();
    let key = discord.fake.public_key_hex();
    let mut den = scratch.start("interactions", &[("DEN_DISCORD__PUBLIC_KEY", &key)]);
    assert_eq!(den.get("/health").0, 200);
    den.wait_ready(Duration::from_secs(20));
    den.signal("TERM");
    assert!(den.wait(Duration::from_secs(30)).success());
}

#[test]
fn a_second_process_on_a_taken_ops_port_says_which_setting_to_change() {
    let discord = Discord::start();
    let scratch = Scratch::new();
    let den = scratch.start_with(&discord, "worker", &[]);
    let taken = den.ops.trim_start_matches("http://").to_owned();
    let other = Scratch::new();
    let out = other.output_with(&discord, &["worker"], &[("DEN_OPS__LISTEN", &taken)]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("DEN_OPS__LISTEN"), "{}", stderr(&out));
}

#[test]
fn metrics_go_to_stdout_as_cloudwatch_emf_lines_with_the_names_of_the_metrics_endpoint() {
    use std::io::{BufRead, BufReader};
    let discord = Discord::start();
    let scratch = Scratch::new();
    let pairs = discord.env();
    let mut env: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.extend([
        ("DEN_OPS__LISTEN", "127.0.0.1:0"),
        ("DEN_OPS__EMF_NAMESPACE", "den-test"),
        ("DEN_OPS__EMF_INTERVAL_SECS", "1"),
    ]);
    let mut child = scratch
        .command(&["--log-format", "json", "worker"], &env)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut heartbeat = None;
    let mut depth = None;
    for line in stdout.lines().map_while(Result::ok).take(40) {
        let value: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if value.get("den_heartbeat_timestamp_seconds").is_some() {
            heartbeat = Some(value);
        } else if value["queue"] == "den-jobs" && value["state"] == "visible" {
            depth = Some(value);
        }
        if heartbeat.is_some() && depth.is_some() {
            break;
        }
    }
    // Queue depths are measured for EMF too, with nobody scraping /metrics.
    assert_eq!(depth.expect("the job queue's depth")["den_queue_messages"], 0.0);
    let _ = child.kill();
    let _ = child.wait();
    let line = heartbeat.expect("an EMF line with the heartbeat");
    let definition = &line["_aws"]["CloudWatchMetrics"][0];
    assert_eq!(definition["Namespace"], "den-test");
    let names: Vec<&str> =
        definition["Metrics"].as_array().unwrap().iter().filter_map(|m| m["Name"].as_str()).collect();
    assert!(names.contains(&"den_heartbeat_timestamp_seconds"), "{names:?}");
    assert!(line["den_heartbeat_timestamp_seconds"].as_f64().unwrap() > 1.7e9, "{line}");
    assert!(line["_aws"]["Timestamp"].as_i64().unwrap() > 1_700_000_000_000);
}

#[test]
fn den_health_fails_with_one_line_when_nothing_answers() {
    let scratch = Scratch::new();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let out = scratch.output(&["health"], &[("DEN_OPS__LISTEN", &closed)]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot reach den's ops server"), "{err}");
}
