//! The loop end to end with a scripted model in each wire format: a tiny
//! repository with a failing test; the model reads, runs the test, edits,
//! runs it again and finishes; den commits once on the session's branch.

use std::time::Duration;

use den_agent::controls::{Controls, Interrupt};
use den_agent::escalation::Reason;
use den_agent::git::Git;
use den_agent::run::{End, Escalation, Limit, Quiet, RunConfig, run};
use den_agent::sandbox::{Limits, Sandbox};
use den_agent::tools::Tools;
use den_agent::workspace::Workspace;
use den_core::Secret;
use den_llm::anthropic::Anthropic;
use den_llm::openai::OpenAiCompatible;
use den_llm::{ChatModel, ProviderConfig};
use den_testkit::llm::{FakeLlm, Fault, Script, Wire};
use serde_json::json;

async fn repository() -> (tempfile::TempDir, Git) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("add.sh"), "echo $(($1 - $2))\n").unwrap();
    std::fs::write(dir.path().join("test.sh"), "[ \"$(sh add.sh 2 3)\" = 5 ] && echo PASS || { echo FAIL; exit 1; }\n")
        .unwrap();
    let git = Git::open(dir.path()).await.unwrap();
    git.commit_all("the base").await.unwrap();
    (dir, git)
}

/// The tools of the test's workspace, running commands in `sandbox` as `uid`.
fn tools(dir: &tempfile::TempDir, git: &Git, sandbox: Sandbox, uid: u32) -> Tools {
    Tools {
        workspace: Workspace::open(dir.path()).unwrap(),
        git: git.clone(),
        sandbox,
        session_uid: uid,
        mcp: None,
        run_limit: den_agent::tools::MAX_RUN,
    }
}

fn provider(wire: Wire, fake: &FakeLlm) -> Box<dyn ChatModel> {
    named(wire, fake, "scripted")
}

fn named(wire: Wire, fake: &FakeLlm, name: &str) -> Box<dyn ChatModel> {
    let config = ProviderConfig {
        name: name.into(),
        base_url: fake.base_url(),
        api_key: Some(Secret::new("k")),
        model: "m".into(),
        extra_headers: vec![],
        connect_timeout: Duration::from_secs(2),
    };
    match wire {
        Wire::Anthropic => Box::new(Anthropic::new(config).unwrap()),
        _ => Box::new(OpenAiCompatible::new(config).unwrap()),
    }
}

#[tokio::test]
async fn a_scripted_model_fixes_a_failing_test_and_den_commits_it_once() {
    for (n, wire) in [Wire::OpenAi, Wire::Anthropic].into_iter().enumerate() {
        let (dir, git) = repository().await;
        let fake = FakeLlm::start(wire, None).await.unwrap();
        fake.push(Script::call("Looking first.", "read_file", json!({"path": "add.sh"})));
        fake.push(Script::call("", "run", json!({"command": "sh test.sh"})));
        fake.push(Script::call("", "edit_file", json!({"path": "add.sh", "old": "$1 - $2", "new": "$1 + $2"})));
        fake.push(Script::call("", "run", json!({"command": "sh test.sh"})));
        fake.push(Script::call("Done.", "finish", json!({"summary": "Fix add.sh: it subtracted", "confidence": 92})));
        let tools = tools(&dir, &git, Sandbox::probe(Limits::default()).await, 62_000 + n as u32);
        let config = RunConfig { max_turns: 10, max_tokens: 1000, ..RunConfig::new("den/42", "main") };
        let model = provider(wire, &fake);
        let report =
            run(&[model.as_ref()], &tools, &config, vec![], "Make test.sh pass.", &Quiet, &Controls::default())
                .await
                .unwrap();

        let End::Finished { summary, confidence, commit } = &report.end else { panic!("{wire:?}: {:?}", report.end) };
        assert_eq!((summary.as_str(), *confidence), ("Fix add.sh: it subtracted", 92));
        assert_eq!(report.turns, 5);
        let outcomes: Vec<(&str, bool)> = report.calls.iter().map(|c| (c.tool.as_str(), c.outcome.ok)).collect();
        assert_eq!(outcomes, [("read_file", true), ("run", false), ("edit_file", true), ("run", true)], "{wire:?}");
        assert!(report.calls[1].outcome.full.contains("FAIL") && report.calls[3].outcome.full.contains("PASS"));
        assert!(report.diffstat.contains("add.sh"), "{}", report.diffstat);

        // One commit on the branch, the base untouched, and the fix in it.
        assert_eq!(git.branch().await.unwrap(), "den/42");
        assert_eq!(git.run(&["rev-list", "--count", "main..den/42"]).await.unwrap().trim(), "1");
        assert_eq!(git.run(&["rev-parse", "HEAD"]).await.unwrap().trim(), commit.as_deref().unwrap());
        assert!(git.run(&["show", "main:add.sh"]).await.unwrap().contains("$1 - $2"));
        assert!(std::fs::read_to_string(dir.path().join("add.sh")).unwrap().contains("$1 + $2"));

        // The model read each result: the failing run came back as an error it could act on.
        let third = fake.requests()[2].body.to_string();
        assert!(third.contains("exit code 1") && third.contains("FAIL"), "{wire:?}: {third}");
    }
}

#[tokio::test]
async fn a_model_that_never_finishes_stops_at_the_turn_limit_and_commits_nothing() {
    let (dir, git) = repository().await;
    let fake = FakeLlm::start(Wire::OpenAi, None).await.unwrap();
    fake.set_default(Script::call("", "git_status", json!({})));
    let tools = tools(&dir, &git, Sandbox::disabled("not needed here"), 62_100);
    let config = RunConfig { max_turns: 3, max_tokens: 100, ..RunConfig::new("den/7", "main") };
    let model = provider(Wire::OpenAi, &fake);
    let report =
        run(&[model.as_ref()], &tools, &config, vec![], "Loop forever.", &Quiet, &Controls::default()).await.unwrap();
    assert_eq!((report.end, report.turns), (End::OutOfTurns, 3));
    assert_eq!(git.run(&["rev-list", "--count", "main..den/7"]).await.unwrap().trim(), "0");
}

#[tokio::test]
async fn with_commands_disabled_run_says_why_and_the_model_can_go_on() {
    let (dir, git) = repository().await;
    let tools = tools(&dir, &git, Sandbox::disabled("bubblewrap is not installed"), 62_200);
    let outcome = tools.call("run", &json!({"command": "echo hi"})).await;
    assert!(!outcome.ok && outcome.shown.contains("bubblewrap is not installed"), "{}", outcome.shown);
    let edit = tools.call("edit_file", &json!({"path": "test.sh", "old": "echo", "new": "printf"})).await;
    assert!(!edit.ok && edit.shown.contains("occurs 2 times"), "{}", edit.shown);
    let outside = tools.call("read_file", &json!({"path": "../../etc/passwd"})).await;
    assert!(!outside.ok && outside.shown.contains("outside the workspace"));
    let listed = tools.call("list_files", &json!({"glob": "*.sh"})).await;
    assert_eq!(listed.shown, "add.sh\ntest.sh");
    let found = tools.call("search", &json!({"regex": "\\$1 - "})).await;
    assert_eq!(found.shown, "add.sh:1: echo $(($1 - $2))");
}

#[tokio::test]
async fn a_runaway_loop_moves_to_the_next_model_and_at_the_top_den_asks_the_user() {
    let (dir, git) = repository().await;
    let weak = FakeLlm::start(Wire::OpenAi, None).await.unwrap();
    weak.set_default(Script::call("", "run", json!({"command": "make it work"})));
    let strong = FakeLlm::start(Wire::OpenAi, None).await.unwrap();
    strong.set_default(Script::call("", "git_status", json!({})));
    let tools = tools(&dir, &git, Sandbox::disabled("not here"), 62_300);
    let config = RunConfig { max_turns: 20, max_tokens: 100, ..RunConfig::new("den/9", "main") };
    let (a, b) = (named(Wire::OpenAi, &weak, "weak"), named(Wire::OpenAi, &strong, "strong"));
    let report =
        run(&[a.as_ref(), b.as_ref()], &tools, &config, vec![], "Do it.", &Quiet, &Controls::default()).await.unwrap();
    let moved =
        Escalation { turn: 3, from: "weak".into(), to: "strong".into(), reason: Reason::RepeatedFailure("run".into()) };
    assert_eq!(report.escalations, [moved]);
    assert_eq!((weak.requests().len(), strong.requests().len(), report.turns), (3, 4, 7));
    let End::AskedUser { question } = &report.end else { panic!("{:?}", report.end) };
    assert!(question.contains("git_status gave the same result four times"), "{question}");
    assert_eq!(report.confidence.len(), 7);
    // The stronger model saw the whole history, failures included.
    assert!(strong.requests()[0].body.to_string().contains("commands cannot run here"));
}

#[tokio::test]
async fn stop_cancels_a_running_command_within_seconds_and_answers_the_call() {
    let (dir, git) = repository().await;
    let fake = FakeLlm::start(Wire::OpenAi, None).await.unwrap();
    fake.push(Script::call("", "run", json!({"command": "sleep 120", "timeout": 300})));
    let tools = tools(&dir, &git, Sandbox::probe(Limits::default()).await, 62_400);
    let config = RunConfig { max_turns: 5, max_tokens: 100, ..RunConfig::new("den/stop", "main") };
    let model = provider(Wire::OpenAi, &fake);
    let stop = Controls::default();
    let stopper = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        stopper.stop();
    });
    let began = std::time::Instant::now();
    let report = run(&[model.as_ref()], &tools, &config, vec![], "Wait.", &Quiet, &stop).await.unwrap();
    assert_eq!(report.end, End::Stopped);
    assert!(began.elapsed() < Duration::from_secs(5), "stopped in {:?}", began.elapsed());
    let last = report.messages.last().unwrap();
    assert_eq!(last.tool_results[0].content, "cancelled by the user");
    assert!(last.tool_results[0].is_error);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ps = std::process::Command::new("ps").args(["-o", "stat=,args=", "-u", "62400"]).output().unwrap();
    let alive: Vec<String> = String::from_utf8_lossy(&ps.stdout)
        .lines()
        .filter(|l| !l.trim_start().starts_with('Z'))
        .map(str::to_owned)
        .collect();
    assert!(alive.is_empty(), "the command survived the stop: {alive:?}");
}

#[tokio::test]
async fn stop_cancels_a_model_call_that_hangs() {
    let (dir, git) = repository().await;
    let fake = FakeLlm::start(Wire::Anthropic, None).await.unwrap();
    fake.push(Script::fault(Fault::Hang));
    let tools = tools(&dir, &git, Sandbox::disabled("not here"), 62_500);
    let config = RunConfig { max_turns: 5, max_tokens: 100, ..RunConfig::new("den/hang", "main") };
    let model = provider(Wire::Anthropic, &fake);
    let stop = Controls::default();
    let stopper = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        stopper.stop();
    });
    let began = std::time::Instant::now();
    let report = run(&[model.as_ref()], &tools, &config, vec![], "Think.", &Quiet, &stop).await.unwrap();
    assert_eq!((report.end, report.turns), (End::Stopped, 1));
    assert!(began.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_run_over_its_token_budget_or_time_is_aborted_and_says_which() {
    let (dir, git) = repository().await;
    let fake = FakeLlm::start(Wire::OpenAi, None).await.unwrap();
    fake.set_default(Script::call("thinking out loud at length", "git_log", json!({"count": 3})));
    let tools = tools(&dir, &git, Sandbox::disabled("not here"), 62_600);
    let model = provider(Wire::OpenAi, &fake);
    let stop = Controls::default();
    // The fake counts a request's words as its input tokens: a few turns spend 50.
    let budget = RunConfig { token_budget: 50, ..RunConfig::new("den/budget", "main") };
    let report = run(&[model.as_ref()], &tools, &budget, vec![], "Spend.", &Quiet, &stop).await.unwrap();
    assert_eq!(report.end, End::Aborted(Limit::Tokens));
    assert!(report.turns < 20 && report.usage.input_tokens + report.usage.output_tokens >= 50);

    fake.set_default(Script::call("", "git_log", json!({})).ttft(Duration::from_secs(5)));
    let short = RunConfig { wall_time: Duration::from_millis(400), ..RunConfig::new("den/time", "main") };
    let began = std::time::Instant::now();
    let report = run(&[model.as_ref()], &tools, &short, vec![], "Slow.", &Quiet, &stop).await.unwrap();
    assert_eq!(report.end, End::Aborted(Limit::WallTime));
    assert!(began.elapsed() < Duration::from_secs(2), "the slow model call was cut at the limit");
}

/// Sends interrupts when the model's calls reach given turns.
struct Steer(Controls, Vec<(u32, Interrupt)>);

impl den_agent::run::Progress for Steer {
    fn calling(&self, turn: u32, _: u32, _: &str, _: &serde_json::Value) {
        for (at, interrupt) in &self.1 {
            if *at == turn {
                self.0.send(interrupt.clone());
            }
        }
    }
}

#[tokio::test]
async fn clarify_retry_wrong_and_escalate_act_before_the_next_model_call() {
    let (dir, git) = repository().await;
    let weak = FakeLlm::start(Wire::OpenAi, None).await.unwrap();
    weak.push(Script::call("", "read_file", json!({"path": "add.sh"})));
    weak.set_default(Script::call("", "list_files", json!({})));
    let strong = FakeLlm::start(Wire::OpenAi, None).await.unwrap();
    strong.set_default(Script::call("", "finish", json!({"summary": "nothing to do", "confidence": 70})));
    let tools = tools(&dir, &git, Sandbox::disabled("not here"), 62_700);
    let config = RunConfig::new("den/steer", "main");
    let controls = Controls::default();
    controls.hear("clarify: the tests are in test.sh");
    let steer = Steer(controls.clone(), vec![(1, Interrupt::Retry), (2, Interrupt::Escalate)]);
    let (a, b) = (named(Wire::OpenAi, &weak, "weak"), named(Wire::OpenAi, &strong, "strong"));
    let report =
        run(&[a.as_ref(), b.as_ref()], &tools, &config, vec![], "Look around.", &steer, &controls).await.unwrap();

    let first = weak.requests()[0].body.to_string();
    assert!(first.contains("Clarification: the tests are in test.sh"), "{first}");
    // Retry: the second request no longer holds the first turn's call.
    let second = weak.requests()[1].body.to_string();
    assert!(!second.contains("read_file\",\"arguments") && !second.contains("echo $(($1 - $2))"), "{second}");
    assert_eq!(report.escalations.len(), 1);
    assert_eq!(report.escalations[0].reason, den_agent::escalation::Reason::Asked);
    assert!(matches!(report.end, End::Finished { .. }), "{:?}", report.end);
    assert_eq!((weak.requests().len(), strong.requests().len()), (2, 1));
}

/// Keeps the state as JSON, as a store would, and fails once after the
/// first call's result is kept: a worker killed between two calls.
struct CrashAfterFirstCall {
    saved: std::sync::Mutex<Option<String>>,
    crashed: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl den_agent::run::Checkpoint for CrashAfterFirstCall {
    async fn save(
        &self,
        state: &den_agent::run::RunState,
        call: Option<&den_agent::run::CallRecord>,
    ) -> Result<(), String> {
        *self.saved.lock().unwrap() = Some(serde_json::to_string(state).unwrap());
        if call.is_some() && !self.crashed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err("the worker died".into());
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_run_resumed_from_its_saved_state_repeats_no_call_whose_result_was_kept() {
    use den_agent::run::{RunState, Step};
    let (dir, git) = repository().await;
    let fake = FakeLlm::start(Wire::OpenAi, None).await.unwrap();
    fake.push(
        Script::call("Two commands.", "run", json!({"command": "echo first >> ran.log"}))
            .and_call("run", json!({"command": "echo second >> ran.log"})),
    );
    fake.push(Script::call("Done.", "finish", json!({"summary": "Logged twice", "confidence": 80})));
    let tools = tools(&dir, &git, Sandbox::probe(Limits::default()).await, 62_100);
    let config = RunConfig { max_turns: 5, max_tokens: 500, ..RunConfig::new("den/9", "main") };
    git.checkout(&config.branch, &config.base).await.unwrap();
    let model = provider(Wire::OpenAi, &fake);
    let ladder = [model.as_ref()];
    let checkpoint = CrashAfterFirstCall { saved: Default::default(), crashed: Default::default() };
    let controls = Controls::default();
    let step = |now_ms| Step {
        ladder: &ladder,
        tools: &tools,
        config: &config,
        progress: &Quiet,
        controls: &controls,
        checkpoint: &checkpoint,
        now_ms,
    };

    let mut state = RunState::start(vec![], "Log twice.", den_agent::run::now_ms());
    assert!(step(den_agent::run::now_ms()).turn(&mut state).await.is_err(), "the first save after a call fails");
    // Another worker takes the run from the store.
    let saved = checkpoint.saved.lock().unwrap().clone().unwrap();
    let mut resumed: RunState = serde_json::from_str(&saved).unwrap();
    let end = loop {
        if let Some(end) = step(den_agent::run::now_ms()).turn(&mut resumed).await.unwrap() {
            break end;
        }
    };

    assert!(matches!(end, End::Finished { .. }), "{end:?}");
    assert_eq!(std::fs::read_to_string(dir.path().join("ran.log")).unwrap(), "first\nsecond\n");
    assert_eq!(fake.requests().len(), 2, "the interrupted turn was not asked again");
    assert_eq!(git.run(&["rev-list", "--count", "main..den/9"]).await.unwrap().trim(), "1");
    // The history ends with every call answered, so the session can go on.
    let last = resumed.messages.last().unwrap();
    assert_eq!(last.tool_results.len(), 1, "{last:?}");
}
