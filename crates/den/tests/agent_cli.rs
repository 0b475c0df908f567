//! `den agent run` and `den agent doctor`, the real binary with a scripted model.

mod support;

use den_testkit::llm::{FakeLlm, Script, Wire};
use serde_json::json;
use support::Scratch;

#[test]
fn den_agent_run_works_a_task_in_the_terminal_and_commits_on_its_branch() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let llm = rt.block_on(FakeLlm::start(Wire::OpenAi, Some("k"))).unwrap();
    llm.push(Script::call("", "write_file", json!({"path": "hello.txt", "content": "hello\n"})));
    llm.push(Script::call("", "run", json!({"command": "cat hello.txt"})));
    llm.push(Script::call("", "finish", json!({"summary": "Add hello.txt", "confidence": 88})));
    let scratch = Scratch::new();
    scratch.use_model(&llm.base_url(), "m", "");
    let out = scratch.output(
        &["agent", "run", "--workspace", "ws", "--branch", "den/cli-test", "Say hello in a file."],
        &[("FAKE_LLM_KEY", "k")],
    );
    let (stdout, stderr) = (support::stdout(&out), support::stderr(&out));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("Add hello.txt") && stdout.contains("confidence 88%") && stdout.contains("committed"),
        "{stdout}"
    );
    assert!(stderr.contains("turn 2/20: run cat hello.txt"), "progress lines: {stderr}");
    let log = std::process::Command::new("git")
        .current_dir(scratch.path().join("ws"))
        .args(["-c", "safe.directory=*", "log", "--format=%s", "den/cli-test"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&log.stdout).trim(), "Add hello.txt");
    let events = scratch.output(&["queue", "stats", "--json"], &[]);
    assert!(support::stdout(&events).contains("agent-events"), "{}", support::stdout(&events));
    // The run's output came back to the model.
    assert!(llm.requests()[2].body.to_string().contains("hello"), "the model saw cat's output");
}

#[test]
fn den_agent_doctor_names_the_sandbox() {
    let scratch = Scratch::new();
    let out = scratch.output(&["agent", "doctor"], &[]);
    let stdout = support::stdout(&out);
    assert!(out.status.success(), "{stdout}{}", support::stderr(&out));
    assert!(stdout.contains("sandbox: bubblewrap") && stdout.contains("git: git version"), "{stdout}");
}
