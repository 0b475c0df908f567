//! The playground's page in a real browser (headless Chromium through
//! chromedriver): what a newcomer does first, step by step, with a
//! screenshot of each step in `target/playground-screenshots/` (and in
//! `docs/playground/` with `DEN_UPDATE_SCREENSHOTS=1`).

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use den_testkit::llm::{FakeLlm, Script, Wire};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use support::Scratch;

const KEY: &str = "sk-browser-test";
const WAIT: Duration = Duration::from_secs(30);
const ENTER: &str = "\u{E007}";

/// chromedriver on a free port of 127.0.0.1, stopped on drop.
struct Driver(Child, u16);

impl Driver {
    fn start() -> Self {
        let binary = std::env::var("DEN_TEST_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(&binary)
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {binary} ({e}): install chromium and chromium-driver (.ci/run does)")
            });
        Self(child, port)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn browser(driver: &Driver) -> Client {
    let mut args = vec!["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1440,900", "--lang=en-US"];
    if std::env::var("DEN_TEST_CHROMIUM_NO_SHM").is_ok() {
        args.push("--disable-dev-shm-usage");
    }
    let mut options = json!({"args": args});
    if let Ok(binary) = std::env::var("DEN_TEST_CHROMIUM") {
        options["binary"] = binary.into();
    }
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".into(), options);
    let url = format!("http://127.0.0.1:{}", driver.1);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector).capabilities(caps.clone()).connect(&url).await {
            Ok(c) => return c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("chromedriver at {url} gave no browser: {e}"),
        }
    }
}

/// Runs `script` until it returns true.
async fn until(c: &Client, what: &str, script: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        if c.execute(script, vec![]).await.unwrap() == Value::Bool(true) {
            return;
        }
        if Instant::now() > deadline {
            screenshot(c, "failure").await;
            let html = c.source().await.unwrap_or_default();
            panic!("the page never showed {what}; it has:\n{}", &html[html.len().saturating_sub(6000)..]);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// JavaScript: whether a message whose text contains `needle` is shown.
fn shows(needle: &str) -> String {
    format!(
        "return [...document.querySelectorAll('#messages .msg')].some(m => m.textContent.includes({}))",
        serde_json::to_string(needle).unwrap()
    )
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut dirs = vec![root.join("target/playground-screenshots")];
    if std::env::var("DEN_UPDATE_SCREENSHOTS").is_ok() {
        dirs.push(root.join("docs/playground"));
    }
    for dir in dirs {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), &png).unwrap();
    }
}

async fn be(c: &Client, name: &str) {
    let who = c.find(Locator::Id("who")).await.unwrap();
    who.select_by_label(name).await.unwrap();
    until(c, &format!("{name}'s view"), &format!("return document.querySelector('#me-title') && document.querySelector('#who').selectedOptions[0].textContent === '{name}' && document.querySelector('#members .member.me') !== null")).await;
}

async fn type_in(c: &Client, text: &str) {
    let input = c.find(Locator::Id("input")).await.unwrap();
    input.send_keys(text).await.unwrap();
}

/// Picks `/name` from the picker, fills `fields` and sends it.
async fn run_command(c: &Client, name: &str, fields: &[(&str, &str)]) {
    type_in(c, &format!("/{}", &name[..3])).await;
    let item = format!("#picker .cmd[data-command='{name}']");
    until(c, &format!("/{name} in the picker"), &format!("return document.querySelector(\"{item}\") !== null")).await;
    c.find(Locator::Css(&item)).await.unwrap().click().await.unwrap();
    for (field, value) in fields {
        let input = c.find(Locator::Css(&format!("#options-form [name='{field}']"))).await.unwrap();
        if input.tag_name().await.unwrap() == "select" {
            input.select_by_label(value).await.unwrap();
        } else {
            input.send_keys(value).await.unwrap();
        }
    }
    c.find(Locator::Id("run-command")).await.unwrap().click().await.unwrap();
    until(c, "the options form closing", "return document.getElementById('options-form').hidden").await;
}

async fn open_channel(c: &Client, name: &str) {
    let script = format!(
        "const li = [...document.querySelectorAll('#channels li[data-channel]')].find(l => l.textContent.includes({0})); \
         if (li) li.click(); return !!li && li.classList.contains('selected')",
        serde_json::to_string(name).unwrap()
    );
    until(c, &format!("#{name}"), &script).await;
}

/// Names of the channels the list marks as private.
async fn private_channels(c: &Client) -> Vec<String> {
    let script = "return [...document.querySelectorAll('#channels li[data-channel]')] \
                  .filter(l => l.querySelector('.lock')).map(l => l.querySelector('.name').textContent)";
    let names = c.execute(script, vec![]).await.unwrap();
    names.as_array().unwrap().iter().filter_map(Value::as_str).map(str::to_owned).collect()
}

#[test]
fn a_newcomer_talks_to_a_persona_builds_a_campaign_and_tries_memory_in_the_browser() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let llm = rt.block_on(FakeLlm::start(Wire::OpenAi, Some(KEY))).unwrap();
    llm.set_default(Script {
        tokens_per_sec: 12.0,
        ..Script::reply("My day? I outlived three kettles and your taste in hats. Sit up straight, dear.")
    });
    let scratch = Scratch::new();
    scratch.use_model(&llm.base_url(), "claude-sonnet-4-5", "[personas]\nstream_edit_ms = 250\n");
    let pg = scratch.playground(&[], &[("FAKE_LLM_KEY", KEY)]);
    let driver = Driver::start();

    rt.block_on(async {
        let c = browser(&driver).await;
        c.goto(&pg.page).await.unwrap();
        c.execute("localStorage.clear()", vec![]).await.unwrap();
        c.goto(&pg.page).await.unwrap();
        until(&c, "the channel list", "return document.querySelectorAll('#channels li[data-channel]').length >= 5").await;
        be(&c, "Ada").await;

        // A persona answers, its reply streaming in by edits.
        type_in(&c, &format!("Gran, how was your day?{ENTER}")).await;
        until(&c, "the reply starting", &shows("My day?")).await;
        until(&c, "the whole reply", &shows("Sit up straight, dear.")).await;
        screenshot(&c, "1-persona-reply").await;

        // Memory is per person: Ada's is hers, Ben has none.
        run_command(&c, "remember", &[("text", "I collect vintage hats")]).await;
        until(&c, "the ephemeral confirmation", "return document.querySelectorAll('#messages .only-you').length >= 1").await;
        run_command(&c, "memories", &[]).await;
        until(&c, "Ada's memories", &shows("I collect vintage hats")).await;
        screenshot(&c, "2-memory-is-yours").await;
        be(&c, "Ben").await;
        until(&c, "Ben's view without Ada's ephemeral answers", &format!("return !({})", &shows("I collect vintage hats")[7..])).await;
        run_command(&c, "memories", &[]).await;
        until(&c, "Ben's empty memories", &shows("den remembers nothing about you here.")).await;

        // A game master builds a campaign; its GM-only channels are private.
        be(&c, "Cleo").await;
        run_command(&c, "add-campaign", &[("name", "Dragon Hunt"), ("gm", "Cleo")]).await;
        // Discord's 10 guild writes per 10 s make the build take seconds: the progress bar shows it.
        until(&c, "the progress bar", &shows("Creating Campaign: Dragon Hunt")).await;
        screenshot(&c, "3-campaign-progress").await;
        until(&c, "the campaign summary", &shows("is ready")).await;
        screenshot(&c, "4-campaign-built").await;
        let cleo_private = private_channels(&c).await;
        assert!(cleo_private.iter().any(|n| n.contains("gm")), "Cleo sees the GM channels as private: {cleo_private:?}");
        be(&c, "Ben").await;
        let ben_private = private_channels(&c).await;
        assert!(!ben_private.iter().any(|n| n.contains("gm")), "a member does not see GM-only channels: {ben_private:?}");

        // Buttons: the delete question, answered with "Keep it".
        be(&c, "Cleo").await;
        open_channel(&c, "general").await;
        run_command(&c, "delete-campaign", &[("name", "Dragon Hunt")]).await;
        tokio::task::block_in_place(|| {
            let general = pg.channel("Cleo", "general").unwrap();
            pg.wait_for_message("Cleo", &general, WAIT, |m| m["den_view"]["interaction"]["name"] == "delete-campaign");
        });
        until(&c, "the question's buttons", "return [...document.querySelectorAll('#messages button.btn')].some(b => b.textContent === 'Keep it')").await;
        screenshot(&c, "5-buttons").await;
        c.execute("[...document.querySelectorAll('#messages button.btn')].find(b => b.textContent === 'Keep it').click()", vec![])
            .await
            .unwrap();
        until(&c, "the question turning into 'Kept.'", &shows("Kept.")).await;

        // The wire: every REST call and gateway event, filtered.
        c.find(Locator::Id("wire-toggle")).await.unwrap().click().await.unwrap();
        c.find(Locator::Id("wire-filter")).await.unwrap().send_keys("webhooks").await.unwrap();
        until(&c, "webhook calls in the wire", "return document.querySelectorAll('#wire-list li').length > 0 && [...document.querySelectorAll('#wire-list li')].every(l => l.textContent.includes('webhooks'))").await;
        c.execute("document.querySelector('#wire-list li').click()", vec![]).await.unwrap();
        until(&c, "a call's JSON", "return document.querySelector('#wire-list pre') !== null").await;
        let shown: String = c.find(Locator::Id("wire-list")).await.unwrap().text().await.unwrap();
        assert!(!shown.contains(support::TOKEN) && !shown.contains("playground-bot-token"), "no token on the page");
        screenshot(&c, "6-wire").await;

        // A bot's link button with a javascript: URL is not followed.
        let general = tokio::task::block_in_place(|| pg.channel("Ada", "general").unwrap());
        let evil = json!({"content": "click me", "components": [{"type": 1, "components": [
            {"type": 2, "style": 5, "label": "evil", "url": "javascript:alert(1)"}]}]});
        let posted = reqwest::Client::new()
            .post(format!("{}/channels/{general}/messages", pg.rest))
            .header("authorization", "Bot some-other-bot")
            .json(&evil)
            .send()
            .await
            .unwrap();
        assert!(posted.status().is_success(), "{}", posted.text().await.unwrap_or_default());
        open_channel(&c, "general").await;
        until(&c, "the link button", "return [...document.querySelectorAll('#messages a.btn')].some(a => a.textContent.includes('evil'))").await;
        let href = c
            .execute("return [...document.querySelectorAll('#messages a.btn')].find(a => a.textContent.includes('evil')).getAttribute('href')", vec![])
            .await
            .unwrap();
        assert_eq!(href, "#", "a javascript: link is not followed");

        // The coding agent: a task in #workshop, worked in a thread, merged by a 👍 reaction.
        llm.push(Script::call("", "write_file", json!({"path": "GREETING.md", "content": "Hello from den.\n"})));
        llm.push(Script::call("Done.", "finish", json!({"summary": "Add a greeting for newcomers", "confidence": 88})));
        c.find(Locator::Id("wire-toggle")).await.unwrap().click().await.unwrap();
        be(&c, "Ada").await;
        open_channel(&c, "workshop").await;
        type_in(&c, &format!("@den add a greeting file for newcomers{ENTER}")).await;
        open_channel(&c, "add a greeting file").await;
        until(&c, "the agent's result", &shows("Committed")).await;
        until(&c, "the merge button", "return [...document.querySelectorAll('#messages button.btn')].some(b => b.textContent.includes('Merge'))").await;
        screenshot(&c, "7-agent-result").await;
        c.execute("const m = [...document.querySelectorAll('#messages .msg')].find(m => m.textContent.includes('Committed')); \
                   m.querySelector('.actions button[title=React]').click()", vec![]).await.unwrap();
        c.execute("[...document.querySelectorAll('.reaction-picker button')].find(b => b.textContent === '👍').click()", vec![])
            .await
            .unwrap();
        until(&c, "the merge", &shows("merged")).await;
        screenshot(&c, "8-agent-merged").await;

        // Music: Ada joins the Lounge, asks for a tune in #general, and the Lounge shows den playing there.
        open_channel(&c, "Lounge").await;
        c.find(Locator::Id("voice-join")).await.unwrap().click().await.unwrap();
        until(&c, "Ada in the Lounge", "return [...document.querySelectorAll('#channels li.in-voice')].some(l => l.textContent.includes('Ada'))").await;
        open_channel(&c, "general").await;
        type_in(&c, &format!("!play arpeggio{ENTER}")).await;
        until(&c, "den playing", &shows("Now playing Arpeggio in C")).await;
        screenshot(&c, "9-music-playing").await;
        open_channel(&c, "Lounge").await;
        until(&c, "den playing in the Lounge", "return document.querySelector('#channels li.in-voice.speaking') !== null && document.querySelector('#messages .playing') !== null").await;
        c.execute("document.querySelector('#channels li.in-voice.speaking').scrollIntoView()", vec![]).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        screenshot(&c, "10-music-lounge").await;
        c.close().await.unwrap();
    });
}
