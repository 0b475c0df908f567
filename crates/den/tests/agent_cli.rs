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

/// The test MCP server, over stdio or (with a port) over streamable HTTP.
fn mcp_server() -> String {
    format!("{}/tests/data/mcp_server.py", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_model_calls_a_tool_of_an_mcp_server_over_stdio_and_over_http_and_doctor_lists_them() {
    // An HTTP server on a free port.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut http = KillOnDrop(
        std::process::Command::new("python3")
            .args([mcp_server().as_str(), "--http", &port.to_string()])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut ready = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(http.0.stdout.take().unwrap()), &mut ready).unwrap();
    assert_eq!(ready.trim(), "ready");

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let llm = rt.block_on(FakeLlm::start(Wire::OpenAi, Some("k"))).unwrap();
    llm.push(Script::call("", "words__word_count", json!({"text": "one two three"})));
    llm.push(Script::call("", "remote__word_count", json!({"text": "four five"})));
    llm.push(Script::call("", "finish", json!({"summary": "Counted", "confidence": 90})));
    let scratch = Scratch::new();
    let servers = format!(
        "[[agent.mcp]]\nname = \"words\"\ncommand = [\"python3\", \"{}\"]\n\n[[agent.mcp]]\nname = \"remote\"\n\
         url = \"http://127.0.0.1:{port}/mcp\"\n",
        mcp_server()
    );
    scratch.use_model(&llm.base_url(), "m", &servers);

    let doctor = scratch.output(&["agent", "doctor"], &[]);
    let listed = support::stdout(&doctor);
    assert!(listed.contains("mcp: words (python3") && listed.contains("word_count"), "{listed}");
    assert!(listed.contains("mcp: remote (http://127.0.0.1") && listed.contains("outside den's sandbox"), "{listed}");

    let out = scratch.output(&["agent", "run", "--workspace", "ws", "Count words."], &[("FAKE_LLM_KEY", "k")]);
    assert!(out.status.success(), "{:?}\n{}\n{}", out.status, support::stdout(&out), support::stderr(&out));
    let offered = llm.requests()[0].body.to_string();
    assert!(offered.contains("words__word_count") && offered.contains("remote__word_count"), "{offered}");
    assert!(llm.requests()[1].body.to_string().contains("3 words"), "the stdio server's answer reached the model");
    assert!(llm.requests()[2].body.to_string().contains("2 words"), "the HTTP server's answer reached the model");
}

/// A child process killed when the test ends, passed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
