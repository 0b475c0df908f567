//! Split roles on the AWS backend: `den gateway` and two `den worker`
//! processes share DynamoDB and SQS (jobs, state and persona memory) (moto, at `DEN_TEST_AWS_ENDPOINT`), with
//! the bot token and model key read from Secrets Manager, against the fake
//! Discord and a fake model.
#![cfg(feature = "aws")]

mod support;

use std::time::Duration;

use den_storage::aws::{AwsOptions, sdk_config};
use den_testkit::discord::{CommandOption, Message};
use den_testkit::llm::{FakeLlm, Script, Wire};
use support::{Discord, Scratch};

const WAIT: Duration = Duration::from_secs(60);
const KEY: &str = "sk-split-roles";

/// The AWS credentials den finds in its environment (moto accepts any).
const AWS_ENV: [(&str, &str); 2] = [("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")];

struct Split {
    discord: Discord,
    llm: FakeLlm,
    scratch: Scratch,
    env: Vec<(String, String)>,
}

impl Split {
    fn new() -> Self {
        // Guild writes at 50/s, so a campaign build fits well inside a job's timeout.
        let discord = Discord::with_config(den_testkit::FakeConfig {
            bot_token: support::TOKEN.into(),
            rate_limits: den_testkit::discord::RateLimits {
                guild_writes: den_testkit::discord::Bucket::new(50, Duration::from_secs(1)),
                ..den_testkit::discord::RateLimits::default()
            },
            ..den_testkit::FakeConfig::default()
        });
        let llm = discord.rt.block_on(FakeLlm::start(Wire::OpenAi, Some(KEY))).unwrap();
        let scratch = Scratch::new();
        let run = format!("{:08x}", rand_u32());
        let secret = format!("den/split-{run}");
        discord
            .rt
            .block_on(put_secret(&secret, &serde_json::json!({"DISCORD_TOKEN": support::TOKEN, "FAKE_LLM_KEY": KEY})));
        let dir = scratch.path().join("personas");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("grumpy-gran.toml"), support::GRAN).unwrap();
        let config = format!(
            "[store]\nbackend = \"aws\"\n\n[aws]\nregion = \"us-east-1\"\nendpoint = \"{}\"\ntable = \"den-split-{run}\"\n\
             queue_prefix = \"split-{run}-\"\nsecret = \"{secret}\"\n\n[llm]\nprimary = \"fake\"\nmax_attempts = 1\n\n\
             [[llm.provider]]\nname = \"fake\"\nkind = \"openai\"\nbase_url = \"{}\"\nmodel = \"fake-1\"\n\
             key_env = \"FAKE_LLM_KEY\"\n",
            support::aws_endpoint(),
            llm.base_url()
        );
        std::fs::write(scratch.path().join("den.toml"), config).unwrap();
        // No DISCORD_TOKEN here: it comes from the secret.
        let mut env: Vec<(String, String)> = discord.env().into_iter().filter(|(k, _)| k != "DISCORD_TOKEN").collect();
        env.extend(AWS_ENV.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        env.push(("DEN_PERSONAS__STREAM_EDIT_MS".into(), "0".into()));
        // Jobs time out (and are redelivered) soon, so a killed worker's job comes back in the test's time.
        env.push(("DEN_WORKER__JOB_TIMEOUT_SECS".into(), "6".into()));
        Self { discord, llm, scratch, env }
    }

    fn env(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    fn start(&self, role: &str) -> support::Running {
        let running = self.scratch.start(role, &self.env());
        running.wait_ready(WAIT);
        running
    }

    fn gran(&self) -> Vec<Message> {
        self.discord
            .fake
            .messages(self.discord.channel)
            .into_iter()
            .filter(|m| m.webhook_id.is_some() && m.author_name == "Grumpy Gran")
            .collect()
    }
}

fn rand_u32() -> u32 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    nanos ^ std::process::id().rotate_left(16)
}

async fn put_secret(name: &str, value: &serde_json::Value) {
    let mut options = AwsOptions::new("us-east-1");
    options.endpoint = Some(support::aws_endpoint());
    options.static_credentials = Some(("testing".into(), den_core::Secret::new("testing")));
    let client = aws_sdk_secretsmanager::Client::new(&sdk_config(&options).await);
    client.create_secret().name(name).secret_string(value.to_string()).send().await.expect("create the secret");
}

#[test]
fn gateway_and_two_workers_on_sqs_and_dynamodb_answer_build_and_survive_a_killed_worker() {
    let split = Split::new();
    let out = split.scratch.output(&["aws", "bootstrap"], &split.env());
    assert!(out.status.success(), "{}", support::stderr(&out));
    let said = support::stdout(&out);
    assert!(said.contains("created") && said.contains("-dlq"), "{said}");

    let _gateway = split.start("gateway");
    let mut first = split.start("worker");
    let mut second = split.start("worker");

    // A persona reply travels gateway → SQS → a worker → Discord.
    split.llm.push(Script::reply("Sit up straight, dear."));
    split.discord.fake.post_as(split.discord.user, split.discord.channel, "Gran, how do I look?");
    split
        .discord
        .wait_until("Gran's reply", WAIT, |_| split.gran().iter().any(|m| m.content == "Sit up straight, dear."));

    // A campaign is built by the workers, exactly the template's channels.
    let token = split.discord.fake.invoke_command(
        split.discord.user,
        split.discord.channel,
        "add-campaign",
        &[CommandOption::string("name", "Dragonfall")],
    );
    split.discord.wait_until("the campaign summary", WAIT, |f| {
        f.interaction(&token)
            .and_then(|i| i.original)
            .and_then(|m| f.message(m))
            .is_some_and(|m| m.content.contains("is ready"))
    });
    let channels = split.discord.fake.channels(split.discord.guild);
    let template = [
        "general-discussion",
        "session-recaps",
        "gm-notes",
        "maps-and-visuals",
        "session-zero",
        "safety",
        "dice-rolls",
        "campaign-main",
        "characters-and-npcs",
        "campaign-lore",
        "gm-planning",
    ];
    for name in template {
        assert_eq!(channels.iter().filter(|c| c.name == name).count(), 1, "one {name}");
    }
    assert_eq!(channels.len(), 1 + 1 + template.len(), "#general, the category and the template's channels");

    // A memory told to one worker is there for every other: it lives in DynamoDB, not in a worker's file.
    let remember = split.discord.fake.invoke_command(
        split.discord.user,
        split.discord.channel,
        "remember",
        &[CommandOption::string("text", "I keep a tortoise named Sheldon")],
    );
    split.discord.wait_until("/remember answered", WAIT, |f| {
        f.interaction(&remember).is_some_and(|i| {
            i.callback.as_ref().is_some_and(|(_, data)| data.to_string().contains("Noted"))
                || i.original.and_then(|m| f.message(m)).is_some_and(|m| m.content.contains("Noted"))
        })
    });

    // One worker stops; the other is killed while it waits for the model.
    second.signal("TERM");
    assert!(second.wait(WAIT).success());
    split.llm.push(Script::reply("Patience is a virtue.").ttft(Duration::from_secs(30)));
    split.llm.push(Script::reply("As I was saying: patience."));
    let before = split.llm.requests().len();
    split.discord.fake.post_as(split.discord.user, split.discord.channel, "Gran, are you there?");
    let deadline = std::time::Instant::now() + WAIT;
    while split.llm.requests().len() == before {
        assert!(std::time::Instant::now() < deadline, "the job never reached the model");
        std::thread::sleep(Duration::from_millis(20));
    }
    first.signal("KILL");
    first.wait(WAIT);
    let _third = split.start("worker");
    split.discord.wait_until("the redelivered reply", WAIT, |_| {
        split.gran().iter().any(|m| m.content == "As I was saying: patience.")
    });
    std::thread::sleep(Duration::from_secs(2));
    let replies: Vec<String> = split.gran().into_iter().map(|m| m.content).collect();
    assert_eq!(replies, ["Sit up straight, dear.", "As I was saying: patience."], "nothing lost, nothing twice");
    let last_prompt = split.llm.requests().last().unwrap().body.to_string();
    assert!(last_prompt.contains("Sheldon"), "the third worker recalls what another was told: {last_prompt}");
    assert!(!split.scratch.path().join("den-data/memory.db").exists(), "no worker keeps memory in a local file");
    assert!(split.discord.fake.violations().is_empty());
}
