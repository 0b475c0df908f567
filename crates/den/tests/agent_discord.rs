//! The coding agent end to end: `den run` against the fake Discord with a
//! scripted model. A mention in an enabled channel opens a thread and a
//! session; the model fixes a failing test in the server's workspace; den
//! commits, posts the diff and merges it when the person who asked presses 👍.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use den_testkit::discord::CommandOption;
use den_testkit::llm::{FakeLlm, Script, Wire};
use serde_json::json;
use support::{Discord, Scratch};

const WAIT: Duration = Duration::from_secs(60);

fn git(dir: &Path, args: &[&str]) -> String {
    // The clone belongs to the session's sandbox user, not to the test.
    let out = Command::new("git").args(["-c", "safe.directory=*", "-C"]).arg(dir).args(args).output().unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The server's workspace, seeded with a script and its failing test.
fn seed_workspace(scratch: &Scratch, guild: u64) -> std::path::PathBuf {
    let base = scratch.path().join("den-data/agent-workspaces").join(guild.to_string()).join("base");
    std::fs::create_dir_all(&base).unwrap();
    std::fs::write(base.join("add.sh"), "echo $(($1 - $2))\n").unwrap();
    std::fs::write(base.join("test.sh"), "[ \"$(sh add.sh 2 3)\" = 5 ] && echo PASS || { echo FAIL; exit 1; }\n")
        .unwrap();
    git(&base, &["init", "--quiet", "--initial-branch=main"]);
    git(&base, &["add", "."]);
    git(&base, &["-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-m", "the base"]);
    base
}

/// `den run` with the agent on, its model the fake, ready; the agent enabled in the test's channel.
fn start(discord: &Discord, llm: &FakeLlm, more: &str) -> (Scratch, support::Running, std::path::PathBuf) {
    let scratch = Scratch::new();
    let base = seed_workspace(&scratch, discord.guild);
    let first_uid = uid_range();
    let more = if more.contains("[agent]") {
        more.replace("[agent]\n", &format!("[agent]\nenabled = true\nfirst_uid = {first_uid}\n"))
    } else {
        format!("{more}\n[agent]\nenabled = true\nfirst_uid = {first_uid}\n")
    };
    scratch.use_model(&llm.base_url(), "coder", &format!("[personas]\nenabled = false\n\n{more}"));
    let den = scratch.start_with(discord, "run", &[("FAKE_LLM_KEY", "k")]);
    den.wait_ready(WAIT);
    let enable = CommandOption::sub(1, "enable", vec![]);
    let token = discord.fake.invoke_command(discord.user, discord.channel, "agent-channel", &[enable]);
    discord.wait_until("the channel is enabled", WAIT, |f| {
        f.interaction(&token)
            .and_then(|i| i.original)
            .and_then(|m| f.message(m))
            .is_some_and(|m| m.content.contains("takes tasks here"))
    });
    (scratch, den, base)
}

/// Sandbox users of this test's own, as two dens on one machine need: by process (two test runs at
/// once) and by test; a test opens fewer than 100 sessions.
fn uid_range() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let test = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    1_000_000 + (std::process::id() % 10_000) * 1_000 + test * 100
}

/// Mentions den with `task` in the test's channel as its user; the thread den opens.
fn mention(discord: &Discord, task: &str) -> u64 {
    let bot = discord.fake.bot_user_id();
    discord.fake.post_as(discord.user, discord.channel, &format!("<@{bot}> {task}"));
    thread_of(discord)
}

/// The thread den opened in the test's channel.
fn thread_of(discord: &Discord) -> u64 {
    discord.wait_until("a thread", WAIT, |f| {
        f.channels(discord.guild).iter().any(|c| c.parent_id == Some(discord.channel) && c.kind == 11)
    });
    discord
        .fake
        .channels(discord.guild)
        .iter()
        .find(|c| c.parent_id == Some(discord.channel) && c.kind == 11)
        .unwrap()
        .id
}

/// den's message in `thread` whose text contains `needle` (the thread shown when it never comes).
fn wait_for(discord: &Discord, thread: u64, needle: &str) -> den_testkit::discord::Message {
    let deadline = Instant::now() + WAIT;
    loop {
        let messages = discord.fake.messages(thread);
        if let Some(m) = messages.iter().find(|m| m.author_bot && m.content.contains(needle)) {
            return m.clone();
        }
        let shown: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
        assert!(
            Instant::now() < deadline,
            "no message with {needle:?} in the thread: {shown:#?}\nbreaches of Discord's spec: {:#?}",
            discord.fake.violations()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn button(m: &den_testkit::discord::Message, prefix: &str) -> String {
    m.components
        .iter()
        .flat_map(|row| row["components"].as_array().cloned().unwrap_or_default())
        .filter_map(|b| b["custom_id"].as_str().map(str::to_owned))
        .find(|id| id.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} button on {:?}", m.components))
}

#[test]
fn a_mention_opens_a_thread_where_the_agent_fixes_a_test_and_thumbs_up_merges_it_once() {
    let discord = Discord::start();
    let llm = discord.rt.block_on(FakeLlm::start(Wire::OpenAi, None)).unwrap();
    llm.push(Script::call("Looking first.", "read_file", json!({"path": "add.sh"})));
    llm.push(Script::call("", "run", json!({"command": "sh test.sh"})));
    llm.push(Script::call("", "edit_file", json!({"path": "add.sh", "old": "$1 - $2", "new": "$1 + $2"})));
    llm.push(Script::call("", "run", json!({"command": "sh test.sh"})));
    llm.push(Script::call("Done.", "finish", json!({"summary": "Fix add.sh: it subtracted", "confidence": 92})));
    let (scratch, mut den, base) = start(&discord, &llm, "");

    let thread = mention(&discord, "make test.sh pass");
    let result = wait_for(&discord, thread, "Done");

    // One progress message, edited as the run went, and finished without its buttons.
    let progress = wait_for(&discord, thread, "Finished");
    let result = discord.fake.message(result.id).unwrap();
    assert!(progress.edits >= 3, "edited as it went ({} edits)", progress.edits);
    assert!(progress.components.is_empty(), "{:?}", progress.components);
    // The result: summary, diffstat, the diff, and the verdict buttons and reactions.
    assert!(result.content.contains("Fix add.sh") && result.content.contains("add.sh | 2"), "{}", result.content);
    assert!(result.content.contains("+echo $(($1 + $2))"), "{}", result.content);
    assert_eq!(result.reactions.iter().map(|(e, _)| e.as_str()).collect::<Vec<_>>(), ["👍", "👎"]);
    let clone = scratch
        .path()
        .join("den-data/agent-workspaces")
        .join(discord.guild.to_string())
        .join("threads")
        .join(thread.to_string());
    let branch = format!("den/{thread}");
    assert_eq!(git(&clone, &["rev-list", "--count", &format!("main..{branch}")]).trim(), "1", "one commit");
    assert!(git(&base, &["show", "main:add.sh"]).contains("$1 - $2"), "the base is untouched until 👍");

    // Someone else may not merge; the person who asked may, once.
    let other = discord.fake.add_user("mallory");
    discord.fake.add_member(discord.guild, other);
    let merge = button(&result, "agent:merge:");
    discord.fake.press_button(other, thread, result.id, &merge);
    wait_for(&discord, thread, "only <@");
    discord.fake.press_button(discord.user, thread, result.id, &merge);
    wait_for(&discord, thread, "merged");
    assert!(git(&base, &["show", "main:add.sh"]).contains("$1 + $2"), "merged into the base");
    discord.fake.press_button(discord.user, thread, result.id, &merge);
    wait_for(&discord, thread, "no finished branch");
    assert_eq!(git(&base, &["rev-list", "--count", "--merges", "main"]).trim(), "1", "merged once");

    // What people ask about the session, in its thread.
    let status = ask(&discord, thread, "agent", "status", vec![]);
    assert!(status.contains("**Closed**") && status.contains(&branch) && status.contains("bubblewrap"), "{status}");
    let logs = ask(&discord, thread, "agent", "logs", vec![CommandOption::of(4, "count", json!(2))]);
    assert_eq!(logs.lines().count(), 2, "{logs}");
    assert!(logs.contains("✅ `edit_file`") && logs.contains("✅ `run`"), "{logs}");
    let confidence = ask(&discord, thread, "agent", "confidence", vec![]);
    assert!(confidence.contains("Last turns:") && confidence.matches('→').count() == 3, "{confidence}");
    assert!(ask(&discord, thread, "agent", "escalations", vec![]).contains("No escalations"));
    assert!(ask(&discord, thread, "agent", "stop", vec![]).contains("Nothing is running"));
    let listed = ask(&discord, discord.channel, "workspace", "list", vec![]);
    assert!(listed.contains(&format!("<#{thread}>")) && listed.contains("Closed"), "{listed}");
    let files = ask(&discord, thread, "workspace", "files", vec![]);
    assert!(files.contains("`add.sh`") && files.contains("`test.sh`"), "{files}");
    assert!(ask(&discord, thread, "workspace", "download", vec![]).contains("as a zip"));
    let zip =
        discord.fake.messages(thread).into_iter().find(|m| m.attachments.iter().any(|a| a.filename.ends_with(".zip")));
    assert!(zip.is_some(), "the zip was posted in the thread");
    let capped = ask(&discord, thread, "agent", "settings", vec![CommandOption::of(4, "max_turns", json!(5))]);
    assert!(capped.contains("Saved.") && capped.contains("capped at 5 here"), "{capped}");
    let unknown = ask(&discord, thread, "agent", "settings", vec![CommandOption::string("tiers", "fake, nope")]);
    assert!(unknown.contains("no model `nope`") && unknown.contains("fake"), "{unknown}");
    let picked = ask(&discord, thread, "agent", "settings", vec![CommandOption::string("tiers", "fake, fake")]);
    assert!(picked.contains("tier 1: `fake`, tier 2: `fake`"), "this server's own tiers: {picked}");
    assert!(ask(&discord, thread, "workspace", "clean", vec![]).contains("is removed"));
    assert!(!clone.exists(), "the thread's clone is gone");

    // Each event reached the default sink (a log line and a metric) once.
    let (scrape, done) = (Instant::now(), "den_agent_events_total{kind=\"branch_merged\"} 1");
    let metrics = loop {
        let (_, metrics) = den.get("/metrics");
        if metrics.contains(done) || scrape.elapsed() > WAIT {
            break metrics;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    den.signal("TERM");
    den.wait(WAIT);
    let kinds: Vec<&str> =
        den.log.iter().filter(|l| l["message"] == "agent event").filter_map(|l| l["kind"].as_str()).collect();
    for (kind, n) in [
        ("execution_started", 1),
        ("turn_completed", 5),
        ("execution_completed", 1),
        ("commit_created", 1),
        ("branch_merged", 1),
    ] {
        assert_eq!(kinds.iter().filter(|k| **k == kind).count(), n, "{kind} in {kinds:?}");
        assert!(metrics.contains(&format!("den_agent_events_total{{kind=\"{kind}\"}} {n}")), "{kind}: {metrics}");
    }
    assert!(metrics.contains("den_agent_tool_calls_total{outcome=\"ok\"} 3"), "{metrics}");
    assert!(metrics.contains("den_agent_tool_calls_total{outcome=\"failed\"} 1"), "{metrics}");
    assert!(support::queue_bodies(&scratch, "agent-events").is_empty(), "nothing left undelivered");
    assert!(discord.fake.violations().is_empty(), "{:?}", discord.fake.violations());
}

#[test]
fn a_stop_reaction_cancels_a_long_command_within_five_seconds_and_the_thread_goes_on_to_a_rejection() {
    let discord = Discord::start();
    let llm = discord.rt.block_on(FakeLlm::start(Wire::OpenAi, None)).unwrap();
    llm.push(Script::call("Waiting.", "run", json!({"command": "sleep 120", "timeout": 300})));
    // Long enough that the diff goes as a file.
    llm.push(Script::call("", "write_file", json!({"path": "notes.txt", "content": "kept\n".repeat(400)})));
    llm.push(Script::call("Done.", "finish", json!({"summary": "Notes", "confidence": 70})));
    let hook = Webhook::start();
    let (scratch, _den, base) = start(&discord, &llm, &format!("[agent]\nevents_webhook = \"{}\"\n", hook.url));

    let thread = mention(&discord, "wait a while");
    let progress = wait_for(&discord, thread, "`sleep 120`");
    let asked = Instant::now();
    discord.fake.react(discord.user, thread, progress.id, "🛑").unwrap();
    wait_for(&discord, thread, "Stopped");
    assert!(asked.elapsed() < Duration::from_secs(5), "stopped in {:?}", asked.elapsed());

    // The next message in the thread continues the session, its history included.
    discord.fake.post_as(discord.user, thread, "write notes instead");
    let result = wait_for(&discord, thread, "Done");
    assert!(
        result.attachments.iter().any(|a| a.filename == format!("den-{thread}.diff")),
        "a long diff is attached: {:?}",
        result.attachments
    );
    let history = llm.requests().last().unwrap().body.to_string();
    assert!(history.contains("cancelled by the user") && history.contains("write notes instead"), "{history}");
    discord.fake.react(discord.user, thread, result.id, "👎").unwrap();
    wait_for(&discord, thread, "rejected");
    let clone = scratch
        .path()
        .join("den-data/agent-workspaces")
        .join(discord.guild.to_string())
        .join("threads")
        .join(thread.to_string());
    assert!(git(&clone, &["branch", "--list", &format!("den/{thread}")]).trim().is_empty(), "the branch is gone");
    assert!(!base.join("notes.txt").exists());

    // The webhook refused the first event; it came again, and every event arrived once.
    hook.wait_until("the rejection", |got| got.iter().any(|e| e["kind"] == "branch_rejected"));
    hook.wait_until("the refused event again", |got| got[1..].iter().any(|e| e["id"] == got[0]["id"]));
    let got = hook.bodies.lock().unwrap().clone();
    let mut ids: Vec<&str> = got[1..].iter().filter_map(|e| e["id"].as_str()).collect();
    let count = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), count, "each accepted once: {got:?}");
    assert!(got.iter().any(|e| e["kind"] == "execution_aborted" && e["data"]["reason"] == "stopped by the user"));
}

/// An events webhook on 127.0.0.1 that answers 500 to its first request and 200 after.
struct Webhook {
    url: String,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl Webhook {
    fn start() -> Self {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/events", listener.local_addr().unwrap());
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                let mut all = seen.lock().unwrap();
                all.push(serde_json::from_slice(&body).unwrap_or_default());
                let status = if all.len() == 1 { "500 Internal Server Error" } else { "200 OK" };
                let _ = write!(stream, "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            }
        });
        Self { url, bodies }
    }

    fn wait_until(&self, what: &str, check: impl Fn(&[serde_json::Value]) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !check(&self.bodies.lock().unwrap()) {
            assert!(Instant::now() < deadline, "the webhook never saw {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn a_run_whose_worker_is_killed_mid_command_resumes_in_the_next_process_and_commits_once() {
    let discord = Discord::start();
    let llm = discord.rt.block_on(FakeLlm::start(Wire::OpenAi, None)).unwrap();
    llm.push(Script::call("", "run", json!({"command": "echo one >> ran.log"})));
    // The first try sleeps (and is killed with its worker); the resumed try writes at once.
    let second = "if [ -e started ]; then echo two >> ran.log; else touch started; sleep 120; echo late >> ran.log; fi";
    llm.push(Script::call("", "run", json!({"command": second, "timeout": 300})));
    llm.push(Script::call("Done.", "finish", json!({"summary": "Logged", "confidence": 80})));
    // Short job timeouts and leases, so the killed worker's turn comes back within the test.
    let more = "[worker]\njob_timeout_secs = 5\n\n[agent]\nlease_secs = 2\n";
    let (scratch, mut first, _base) = start(&discord, &llm, more);
    let thread = mention(&discord, "log twice");
    wait_for(&discord, thread, "started");
    std::thread::sleep(Duration::from_millis(500));
    first.signal("KILL");
    first.wait(WAIT);

    let second = scratch.start_with(&discord, "run", &[("FAKE_LLM_KEY", "k")]);
    second.wait_ready(WAIT);
    let result = wait_for(&discord, thread, "Done");
    let clone = scratch
        .path()
        .join("den-data/agent-workspaces")
        .join(discord.guild.to_string())
        .join("threads")
        .join(thread.to_string());
    assert_eq!(std::fs::read_to_string(clone.join("ran.log")).unwrap(), "one\ntwo\n", "no recorded call ran twice");
    assert_eq!(git(&clone, &["rev-list", "--count", &format!("main..den/{thread}")]).trim(), "1", "one commit");
    assert_eq!(llm.requests().len(), 3, "the model was not asked the interrupted turn again");
    assert_eq!(discord.fake.messages(thread).iter().filter(|m| m.content.contains("Done")).count(), 1);
    assert!(result.content.contains("ran.log"), "{}", result.content);
    let sleeping = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .any(|p| std::fs::read_to_string(p.path().join("cmdline")).is_ok_and(|c| c.contains("sleep\u{0}120")));
    assert!(!sleeping, "the killed worker's command was killed before the run went on");
}

/// A zip at `path` holding `entries` (name, text) as written, climbing names included; its path.
fn zip_of(path: &Path, entries: &[(&str, &str)]) -> std::path::PathBuf {
    let script = "import json, sys, zipfile\nwith zipfile.ZipFile(sys.argv[1], 'w') as z:\n    for name, text in json.loads(sys.argv[2]):\n        z.writestr(name, text)";
    let list = serde_json::to_string(entries).unwrap();
    let made = Command::new("python3").args(["-c", script, path.to_str().unwrap(), &list]).status().unwrap();
    assert!(made.success(), "python3 made no zip");
    path.to_owned()
}

/// Runs `/workspace seed` with `options` as the test's user; den's answer.
fn seed(discord: &Discord, options: Vec<CommandOption>) -> String {
    ask(discord, discord.channel, "workspace", "seed", options)
}

/// Runs `/command sub` with `options` in `channel` as the test's user; den's answer.
fn ask(discord: &Discord, channel: u64, command: &str, sub: &str, options: Vec<CommandOption>) -> String {
    let token = discord.fake.invoke_command(discord.user, channel, command, &[CommandOption::sub(1, sub, options)]);
    discord.wait_until(&format!("den's answer to /{command} {sub}"), WAIT, |f| {
        f.interaction(&token).and_then(|i| i.original).and_then(|m| f.message(m)).is_some_and(|m| !m.content.is_empty())
    });
    let i = discord.fake.interaction(&token).unwrap();
    discord.fake.message(i.original.unwrap()).unwrap().content
}

#[test]
fn an_admin_seeds_the_workspace_from_a_zip_or_an_allowed_folder_and_nothing_lands_outside_it() {
    let discord = Discord::start();
    let llm = discord.rt.block_on(FakeLlm::start(Wire::OpenAi, None)).unwrap();
    let allowed = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(allowed.path().join("app/src")).unwrap();
    std::fs::write(allowed.path().join("app/src/main.sh"), "echo from a folder\n").unwrap();
    let more = format!("[agent]\nseed_roots = [\"{}\"]\n", allowed.path().display());
    let (scratch, _den, base) = start(&discord, &llm, &more);

    // A repository's "Download ZIP": one top folder, which becomes the workspace's root.
    let zip =
        zip_of(&scratch.path().join("repo.zip"), &[("repo-main/hello.txt", "hi\n"), ("repo-main/docs/a.md", "# a\n")]);
    let archive = discord.fake.add_attachment("repo.zip", &std::fs::read(&zip).unwrap());
    let answer = seed(&discord, vec![CommandOption::attachment("archive", archive)]);
    assert!(answer.contains("seeded"), "{answer}");
    assert_eq!(git(&base, &["show", "main:hello.txt"]), "hi\n");
    assert!(
        git(&base, &["ls-tree", "-r", "--name-only", "main"]).lines().eq(["docs/a.md", "hello.txt"]),
        "only the seed's files"
    );
    assert!(git(&base, &["log", "-1", "--format=%s", "main"]).contains("Seed the workspace from repo.zip"));

    // A zip whose entry climbs out of the folder is refused whole.
    let evil = zip_of(&scratch.path().join("evil.zip"), &[("ok.txt", "x"), ("../../escaped.txt", "x")]);
    let archive = discord.fake.add_attachment("evil.zip", &std::fs::read(&evil).unwrap());
    let answer = seed(&discord, vec![CommandOption::attachment("archive", archive)]);
    assert!(answer.contains("outside the workspace"), "{answer}");
    assert!(!scratch.path().join("den-data/escaped.txt").exists() && !scratch.path().join("escaped.txt").exists());
    assert_eq!(git(&base, &["show", "main:hello.txt"]), "hi\n", "the base is as it was");

    // A .tar.gz unpacks the same way.
    let tree = scratch.path().join("tree/proj-1.0");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("VERSION"), "1.0\n").unwrap();
    let tgz = scratch.path().join("proj.tar.gz");
    let made =
        Command::new("tar").arg("-czf").arg(&tgz).arg("-C").arg(scratch.path().join("tree")).arg("proj-1.0").status();
    assert!(made.unwrap().success());
    let archive = discord.fake.add_attachment("proj.tar.gz", &std::fs::read(&tgz).unwrap());
    let answer = seed(&discord, vec![CommandOption::attachment("archive", archive)]);
    assert!(answer.contains("seeded"), "{answer}");
    assert_eq!(git(&base, &["ls-tree", "-r", "--name-only", "main"]).trim(), "VERSION");

    // Folders: only under the allowed roots.
    let answer = seed(&discord, vec![CommandOption::string("path", "/etc")]);
    assert!(answer.contains("not a folder under one the operator allows"), "{answer}");
    let inside = allowed.path().join("app");
    let answer = seed(&discord, vec![CommandOption::string("path", inside.to_str().unwrap())]);
    assert!(answer.contains("seeded"), "{answer}");
    assert_eq!(git(&base, &["show", "main:src/main.sh"]), "echo from a folder\n");

    // Someone without Manage Server may not.
    let member = discord.fake.add_user("ben");
    discord.fake.add_member(discord.guild, member);
    let token =
        discord.fake.invoke_command(member, discord.channel, "workspace", &[CommandOption::sub(1, "seed", vec![])]);
    discord.wait_until("refused", WAIT, |f| f.interaction(&token).is_some_and(|i| i.callback.is_some()));
    let (_, data) = discord.fake.interaction(&token).unwrap().callback.unwrap();
    assert!(data["content"].as_str().unwrap().contains("Manage Server"), "{data}");
}

#[test]
fn a_model_that_keeps_failing_ends_the_run_with_a_message_instead_of_leaving_it_hanging() {
    let discord = Discord::start();
    let llm = discord.rt.block_on(FakeLlm::start(Wire::OpenAi, None)).unwrap();
    llm.set_default(Script::fault(den_testkit::llm::Fault::Status(400)));
    let (_scratch, _den, _base) = start(&discord, &llm, "[worker]\nbackoff_base_ms = 100\n");
    let thread = mention(&discord, "do something");
    let failed = wait_for(&discord, thread, "execution_aborted");
    assert!(failed.content.contains("the model failed"), "{}", failed.content);
    // The session is free again: the next message starts a new run.
    llm.set_default(Script::call("Done.", "finish", json!({"summary": "Nothing to do", "confidence": 60})));
    discord.fake.post_as(discord.user, thread, "try again");
    wait_for(&discord, thread, "Done");
}

#[test]
fn a_servers_daily_token_budget_ends_a_run_and_says_so() {
    let discord = Discord::start();
    let llm = discord.rt.block_on(FakeLlm::start(Wire::OpenAi, None)).unwrap();
    llm.push(Script::call("", "write_file", json!({"path": "a.txt", "content": "a\n"})));
    llm.push(Script::call("Done.", "finish", json!({"summary": "never reached", "confidence": 90})));
    let (_scratch, _den, _base) = start(&discord, &llm, "[agent]\ndaily_tokens = 10\n");
    let thread = mention(&discord, "write a");
    let aborted = wait_for(&discord, thread, "execution_aborted");
    assert!(aborted.content.contains("the server's daily token budget"), "{}", aborted.content);
    assert_eq!(llm.requests().len(), 1, "no model call after the budget was spent");
}

#[test]
fn without_a_usable_model_den_still_starts_and_the_agent_says_why_it_takes_no_task() {
    let discord = Discord::start();
    let llm = discord.rt.block_on(FakeLlm::start(Wire::OpenAi, None)).unwrap();
    let scratch = Scratch::new();
    // The agent's only tier names a provider that is not configured.
    let more = "[personas]\nenabled = false\n\n[agent]\nenabled = true\ntiers = [[\"missing\"]]\n";
    scratch.use_model(&llm.base_url(), "coder", more);
    let den = scratch.start_with(&discord, "run", &[("FAKE_LLM_KEY", "k")]);
    den.wait_ready(WAIT);
    let enable = CommandOption::sub(1, "enable", vec![]);
    discord.fake.invoke_command(discord.user, discord.channel, "agent-channel", &[enable]);
    let answer = ask(&discord, discord.channel, "agent", "task", vec![CommandOption::string("task", "fix it")]);
    assert!(answer.contains("cannot work on this den") && answer.contains("missing"), "{answer}");
    assert!(llm.requests().is_empty());
}

#[test]
fn a_runs_turns_land_on_two_workers_sharing_the_store_and_the_workspaces() {
    let discord = Discord::start();
    let llm = discord.rt.block_on(FakeLlm::start(Wire::OpenAi, None)).unwrap();
    llm.push(Script::call("", "run", json!({"command": "echo one >> ran.log"})));
    // Long enough for the second worker to start and the first to be told to stop while it holds this turn.
    llm.push(Script::call("", "run", json!({"command": "sleep 4 && echo two >> ran.log"})));
    llm.push(Script::call("", "run", json!({"command": "echo three >> ran.log"})));
    llm.push(Script::call("Done.", "finish", json!({"summary": "Logged three times", "confidence": 80})));
    let scratch = Scratch::new();
    let base = seed_workspace(&scratch, discord.guild);
    let more = format!("[personas]\nenabled = false\n\n[agent]\nenabled = true\nfirst_uid = {}\n", uid_range());
    scratch.use_model(&llm.base_url(), "coder", &more);
    let env = [("FAKE_LLM_KEY", "k")];
    let gateway = scratch.start_with(&discord, "gateway", &env);
    gateway.wait_ready(WAIT);
    let mut first = scratch.start_with(&discord, "worker", &env);
    first.wait_ready(WAIT);
    let enable = CommandOption::sub(1, "enable", vec![]);
    discord.fake.invoke_command(discord.user, discord.channel, "agent-channel", &[enable]);
    std::thread::sleep(Duration::from_millis(500));

    let thread = mention(&discord, "log three times");
    wait_for(&discord, thread, "sleep 4");
    // A second worker joins; the first leaves, finishing the turn it holds: the next turns are the second's.
    let joined = Instant::now();
    let second = scratch.start_with(&discord, "worker", &env);
    second.wait_ready(WAIT);
    first.signal("TERM");
    assert!(joined.elapsed() < Duration::from_secs(3), "the first worker was told to stop during turn 2");
    assert!(first.wait(WAIT).success());
    let result = wait_for(&discord, thread, "Done");
    assert!(result.content.contains("ran.log"), "{}", result.content);
    let clone = base.parent().unwrap().join("threads").join(thread.to_string());
    assert_eq!(std::fs::read_to_string(clone.join("ran.log")).unwrap(), "one\ntwo\nthree\n");
    assert_eq!(git(&clone, &["rev-list", "--count", &format!("main..den/{thread}")]).trim(), "1");
    drop(second);
    drop(gateway);
}
