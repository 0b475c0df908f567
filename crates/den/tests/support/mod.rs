//! Runs the real `den` binary in a scratch folder.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const TOKEN: &str = "test-token-7f3a9c";

/// A small persona for tests that need one.
pub const GRAN: &str = r#"
id = "grumpy-gran"
name = "Grumpy Gran"
nickname = "Gran"
modelled_on = "an invented grandmother"
traits = ["blunt"]
"#;

/// The AWS endpoint of the tests (moto, started by `scripts/test.sh`).
pub fn aws_endpoint() -> String {
    std::env::var("DEN_TEST_AWS_ENDPOINT")
        .expect("DEN_TEST_AWS_ENDPOINT is not set: run `bash scripts/test.sh`, which starts moto")
}

/// A fake Discord on its own runtime, so blocking tests can drive den processes.
pub struct Discord {
    pub fake: den_testkit::FakeDiscord,
    pub user: u64,
    pub guild: u64,
    pub channel: u64,
    // Declared last: dropped after the fake, whose servers run on it.
    pub rt: tokio::runtime::Runtime,
}

impl Discord {
    pub fn start() -> Self {
        Self::with_config(den_testkit::FakeConfig { bot_token: TOKEN.into(), ..den_testkit::FakeConfig::default() })
    }

    pub fn with_config(config: den_testkit::FakeConfig) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let fake = rt.block_on(den_testkit::FakeDiscord::start(config)).unwrap();
        let user = fake.add_user("ada");
        let guild = fake.add_guild("tavern", user);
        let channel = fake.add_text_channel(guild, "general");
        Self { fake, user, guild, channel, rt }
    }

    /// The environment that points den at this fake.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("DISCORD_TOKEN".into(), TOKEN.into()),
            ("DEN_DISCORD__API_PROXY".into(), self.fake.rest_addr()),
            ("DEN_DISCORD__GATEWAY_URL".into(), self.fake.gateway_url()),
        ]
    }

    /// Waits (blocking) until `check` holds.
    pub fn wait_until(&self, what: &str, timeout: Duration, check: impl FnMut(&den_testkit::FakeDiscord) -> bool) {
        self.rt.block_on(self.fake.wait_until(what, timeout, check));
    }
}

/// A scratch working directory with den's default layout.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap() }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a den.toml whose primary model is an OpenAI-compatible server at
    /// `base_url` named `model`, its key in `FAKE_LLM_KEY`, then `more` (TOML).
    pub fn use_model(&self, base_url: &str, model: &str, more: &str) {
        let config = format!(
            "[llm]\nprimary = \"fake\"\n\n[[llm.provider]]\nname = \"fake\"\nkind = \"openai\"\n\
             base_url = \"{base_url}\"\nmodel = \"{model}\"\nkey_env = \"FAKE_LLM_KEY\"\n\n{more}"
        );
        std::fs::write(self.path().join("den.toml"), config).unwrap();
    }

    pub fn db(&self) -> PathBuf {
        self.path().join("den-data/den.db")
    }

    /// `den ARGS` with `env` plus the variables that point den at `discord`.
    pub fn output_with(&self, discord: &Discord, args: &[&str], env: &[(&str, &str)]) -> Output {
        let pairs = discord.env();
        let mut all: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        all.extend_from_slice(env);
        self.output(args, &all)
    }

    /// Starts a role pointed at `discord`.
    pub fn start_with(&self, discord: &Discord, role: &str, env: &[(&str, &str)]) -> Running {
        let pairs = discord.env();
        let mut all: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        all.extend_from_slice(env);
        self.start(role, &all)
    }

    /// `den ARGS` in this folder, with a clean environment plus `env`.
    pub fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_den"));
        cmd.current_dir(self.path()).args(args).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
        // `RUST_LOG=den_music=debug cargo test ...` reaches the den a test starts.
        if let Ok(filter) = std::env::var("RUST_LOG") {
            cmd.env("RUST_LOG", filter);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    pub fn output(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.command(args, env).output().unwrap()
    }

    /// Starts `den ARGS` with JSON logs and waits for a log line containing
    /// `ready` (a process without an ops server: `ops` is empty).
    pub fn spawn(&self, args: &[&str], env: &[(&str, &str)], ready: &str) -> Running {
        let mut all = vec![("DEN_LOG__FORMAT", "json")];
        all.extend_from_slice(env);
        let mut child = self.command(args, &all).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let lines = read_lines(child.stderr.take().unwrap());
        let mut running = Running { child, lines, log: Vec::new(), ops: String::new(), interactions: None };
        running.wait_for_log(ready, Duration::from_secs(20));
        running
    }

    /// Starts a long-running role with JSON logs and a random ops port, and
    /// waits until it says it started.
    pub fn start(&self, role: &str, env: &[(&str, &str)]) -> Running {
        let mut all = vec![
            ("DEN_OPS__LISTEN", "127.0.0.1:0"),
            ("DEN_INTERACTIONS__LISTEN", "127.0.0.1:0"),
            ("DEN_WORKER__POLL_WAIT_SECS", "1"),
        ];
        all.extend_from_slice(env);
        let mut child = self
            .command(&["--log-format", "json", role], &all)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = read_lines(child.stderr.take().unwrap());
        let mut running = Running { child, lines, log: Vec::new(), ops: String::new(), interactions: None };
        let started = running.wait_for_log("den started", Duration::from_secs(20));
        let ops = started["ops"].as_str().expect("the start line names the ops address").to_owned();
        running.ops = format!("http://{ops}");
        if let Some(line) = running
            .log
            .iter()
            .find(|l| l["message"].as_str().is_some_and(|m| m.contains("interactions endpoint listening")))
        {
            running.interactions = Some(format!(
                "http://{}{}",
                line["addr"].as_str().unwrap_or_default(),
                line["path"].as_str().unwrap_or_default()
            ));
        }
        running
    }
}

/// The lines of `stderr`, as a thread reads them.
fn read_lines(stderr: std::process::ChildStderr) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A den process under test.
pub struct Running {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    /// Every log line seen so far, parsed.
    pub log: Vec<serde_json::Value>,
    /// Base URL of the ops server.
    pub ops: String,
    /// URL of the interactions endpoint, when served.
    pub interactions: Option<String>,
}

impl Running {
    /// Waits for a log line whose message contains `needle`; every line must be JSON.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> serde_json::Value {
        if let Some(found) = self.log.iter().find(|l| l["message"].as_str().is_some_and(|m| m.contains(needle))) {
            return found.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line =
                self.lines.recv_timeout(left).unwrap_or_else(|_| panic!("no log line {needle:?}; saw {:#?}", self.log));
            let value: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
            self.log.push(value.clone());
            if value["message"].as_str().is_some_and(|m| m.contains(needle)) {
                return value;
            }
        }
    }

    /// GET on the ops server: status and body.
    pub fn get(&self, path: &str) -> (u16, String) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let r = reqwest::get(format!("{}{path}", self.ops)).await.unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        })
    }

    /// Polls `/ready` until it answers 200.
    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, body) = self.get("/ready");
            if status == 200 {
                return;
            }
            assert!(Instant::now() < deadline, "den never became ready: {body}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill").args([&format!("-{name}"), &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Drain what is left of the log.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    if let Ok(v) = serde_json::from_str(&line) {
                        self.log.push(v);
                    }
                }
                return status;
            }
            assert!(Instant::now() < deadline, "den did not exit in {timeout:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failed test shows what den said last, so a failure in CI can be read without a rerun.
        if std::thread::panicking() {
            let mut said: Vec<String> = self.log.iter().map(ToString::to_string).collect();
            while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(500)) {
                said.push(line);
            }
            let from = said.len().saturating_sub(80);
            eprintln!("--- den's last {} log lines ---\n{}", said.len() - from, said[from..].join("\n"));
        }
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `den playground` on free ports, in a scratch folder.
pub struct Playground {
    pub child: Child,
    /// `http://127.0.0.1:PORT` of the page.
    pub page: String,
    /// The stand-in's REST base (`.../api/v10`).
    pub rest: String,
    /// The stand-in's gateway URL.
    pub gateway: String,
    /// Where den's log goes.
    pub log: PathBuf,
    rt: tokio::runtime::Runtime,
}

impl Scratch {
    /// Starts `den playground ARGS` with `env`, waits until it prints its
    /// addresses and until den is connected to the stand-in's gateway.
    pub fn playground(&self, args: &[&str], env: &[(&str, &str)]) -> Playground {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let log = self.path().join(format!("playground-{nanos}.log"));
        let mut all = vec!["playground", "--listen", "127.0.0.1:0", "--dir", "pg"];
        all.extend_from_slice(args);
        let mut child = self
            .command(&all, env)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (mut page, mut rest, mut gateway) = (String::new(), String::new(), String::new());
        for line in stdout.lines().map_while(Result::ok) {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["page:", url, ..] => page = (*url).to_owned(),
                ["REST", url, ..] => rest = (*url).to_owned(),
                ["gateway", url, ..] => gateway = (*url).to_owned(),
                ["kept", ..] => break,
                _ => {}
            }
        }
        assert!(!page.is_empty(), "den playground printed no address; its log: {}", read(&log));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let pg = Playground { child, page, rest, gateway, log, rt };
        pg.wait_until_den_is_online();
        pg
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

impl Playground {
    /// Waits until den's bot has a live gateway session (a message posted
    /// before then is missed, as on Discord).
    pub fn wait_until_den_is_online(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, state) = self.get("/api/state");
            if state["online"].as_array().is_some_and(|o| o.iter().any(|n| n == "den")) {
                return;
            }
            assert!(Instant::now() < deadline, "den never connected; its log:\n{}", read(&self.log));
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// GET on the page's API.
    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        self.rt.block_on(async {
            let r = reqwest::get(format!("{}{path}", self.page)).await.unwrap();
            (r.status().as_u16(), r.json().await.unwrap_or(serde_json::Value::Null))
        })
    }

    /// POST on the page's API.
    pub fn post(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        self.rt.block_on(async {
            let r = reqwest::Client::new().post(format!("{}{path}", self.page)).json(body).send().await.unwrap();
            (r.status().as_u16(), r.json().await.unwrap_or(serde_json::Value::Null))
        })
    }

    /// The page's state as `who` (a name of the cast) sees it.
    pub fn state_as(&self, who: &str) -> serde_json::Value {
        let id = self.person(who);
        let (status, state) = self.get(&format!("/api/state?as={id}"));
        assert_eq!(status, 200, "{state}");
        state
    }

    /// The id of a person of the cast.
    pub fn person(&self, name: &str) -> String {
        let (_, state) = self.get("/api/state");
        let cast = state["cast"].as_array().unwrap();
        cast.iter().find(|p| p["name"] == name).unwrap()["id"].as_str().unwrap().to_owned()
    }

    /// The id of a channel `who` sees, by name.
    pub fn channel(&self, who: &str, name: &str) -> Option<String> {
        let state = self.state_as(who);
        let channels = state["guild"]["channels"].as_array()?;
        channels.iter().find(|c| c["name"] == name).map(|c| c["id"].as_str().unwrap().to_owned())
    }

    /// The messages of `channel` as `who` sees them.
    pub fn messages(&self, who: &str, channel: &str) -> Vec<serde_json::Value> {
        let id = self.person(who);
        let (status, list) = self.get(&format!("/api/channels/{channel}/messages?as={id}"));
        assert_eq!(status, 200, "{list}");
        list.as_array().cloned().unwrap_or_default()
    }

    /// Posts as `who`.
    pub fn say(&self, who: &str, channel: &str, content: &str) {
        let body = serde_json::json!({"as": self.person(who), "channel": channel, "content": content});
        let (status, answer) = self.post("/api/messages", &body);
        assert_eq!(status, 200, "{answer}");
    }

    /// Waits until a message of `channel`, as `who` sees it, satisfies `check`; returns it.
    pub fn wait_for_message(
        &self,
        who: &str,
        channel: &str,
        timeout: Duration,
        mut check: impl FnMut(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages(who, channel);
            if let Some(m) = messages.iter().find(|m| check(m)) {
                return m.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no such message in time; saw {messages:#?}\nden's log:\n{}",
                read(&self.log)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the page's state, as Ada sees it, satisfies `check`.
    pub fn wait_until_state(&self, what: &str, mut check: impl FnMut(&serde_json::Value) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let state = self.state_as("Ada");
            if check(&state) {
                return;
            }
            assert!(Instant::now() < deadline, "never saw {what}; den's log:\n{}", read(&self.log));
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops it as Ctrl-C does and waits for it to exit.
    pub fn stop(mut self) -> ExitStatus {
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "den playground did not stop; log:\n{}", read(&self.log));
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Playground {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every message waiting on `queue` in the scratch folder's store, as JSON (den must be stopped).
pub fn queue_bodies(scratch: &Scratch, queue: &str) -> Vec<serde_json::Value> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let clock = std::sync::Arc::new(den_core::SystemClock);
        let store =
            den_storage::sqlite::SqliteStore::open(&den_storage::sqlite::SqliteOptions::new(scratch.db()), clock)
                .unwrap();
        let mut out = Vec::new();
        loop {
            let options = den_storage::ReceiveOptions {
                max_messages: 10,
                wait: Duration::ZERO,
                visibility_timeout: Some(Duration::from_secs(600)),
            };
            let got = den_storage::Store::queue(&store).receive(queue, options).await.unwrap();
            if got.is_empty() {
                break;
            }
            out.extend(got.iter().map(|d| serde_json::from_str(&d.body).unwrap()));
        }
        store.close().await.unwrap();
        out
    })
}
