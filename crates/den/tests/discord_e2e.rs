//! den's real process against the fake Discord: gateway, commands, HTTP
//! interactions, resume, fatal closes. Every REST call den makes is checked
//! against Discord's OpenAPI spec by the fake (a violation fails the test).

mod support;

use std::time::Duration;

use den_testkit::FakeConfig;
use den_testkit::discord::{Message, SignedInteraction};
use support::{Discord, Scratch, TOKEN, stderr, stdout};

const WAIT: Duration = Duration::from_secs(20);

fn bot_replies(discord: &Discord) -> Vec<Message> {
    let bot = discord.fake.bot_user_id();
    discord.fake.messages(discord.channel).into_iter().filter(|m| m.author_id == bot).collect()
}

#[test]
fn a_message_is_received_over_the_gateway_and_answered() {
    let discord = Discord::start();
    let scratch = Scratch::new();
    let den = scratch.start_with(&discord, "run", &[]);
    den.wait_ready(WAIT);
    let asked = discord.fake.post_as(discord.user, discord.channel, "!ping");
    discord.wait_until("den replies pong", WAIT, |_| !bot_replies(&discord).is_empty());
    let replies = bot_replies(&discord);
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].content, "pong");
    assert_eq!(replies[0].reply_to, Some(asked), "a reply to the message that asked");
    // Other text is not answered, and den's own "pong" (which Discord echoes over the gateway) is ignored.
    discord.fake.post_as(discord.user, discord.channel, "hello there");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(bot_replies(&discord).len(), 1);
    assert!(discord.fake.violations().is_empty());
}

#[test]
fn other_bots_are_ignored_unless_a_module_asks_for_them() {
    let discord = Discord::start();
    let other_bot = discord.fake.add_bot_user("otherbot");
    let scratch = Scratch::new();
    let den = scratch.start_with(&discord, "run", &[]);
    den.wait_ready(WAIT);
    discord.fake.post_as(other_bot, discord.channel, "!ping");
    discord.fake.post_as(discord.user, discord.channel, "!ping");
    discord.wait_until("den answers the person", WAIT, |_| !bot_replies(&discord).is_empty());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(bot_replies(&discord).len(), 1, "only the person got a pong");
}

#[test]
fn a_quick_command_is_answered_at_once_and_a_slow_one_deferred_then_completed() {
    let discord = Discord::start();
    let scratch = Scratch::new();
    let den = scratch.start_with(&discord, "run", &[]);
    den.wait_ready(WAIT);

    let ping = discord.fake.invoke_command(discord.user, discord.channel, "ping", &[]);
    discord.wait_until("/ping answered", WAIT, |f| f.interaction(&ping).is_some_and(|i| i.callback.is_some()));
    let i = discord.fake.interaction(&ping).unwrap();
    let (kind, data) = i.callback.unwrap();
    assert_eq!(kind, 4, "answered with a message, not deferred");
    assert_eq!(data["content"], "Pong!");

    let status = discord.fake.invoke_command(discord.user, discord.channel, "status", &[]);
    discord.wait_until("/status completed", WAIT, |f| {
        f.interaction(&status).and_then(|i| i.original).and_then(|m| f.message(m)).is_some_and(|m| m.edits > 0)
    });
    let i = discord.fake.interaction(&status).unwrap();
    let (kind, data) = i.callback.clone().unwrap();
    assert_eq!(kind, 5, "deferred");
    assert_eq!(data["flags"], 64, "ephemeral");
    let answered = i.responded_at.unwrap().duration_since(i.created).unwrap();
    assert!(answered < Duration::from_secs(3), "first response within Discord's 3 s: {answered:?}");
    let original = discord.fake.message(i.original.unwrap()).unwrap();
    assert!(original.content.contains("is up") && original.content.contains("den-jobs"), "{}", original.content);
    assert!(discord.fake.violations().is_empty());
}

#[test]
fn an_unknown_command_gets_a_clear_ephemeral_answer() {
    let discord = Discord::start();
    let scratch = Scratch::new();
    let den = scratch.start_with(&discord, "run", &[]);
    den.wait_ready(WAIT);
    let t = discord.fake.invoke_command(discord.user, discord.channel, "nonsense", &[]);
    discord.wait_until("answered", WAIT, |f| f.interaction(&t).is_some_and(|i| i.callback.is_some()));
    let (kind, data) = discord.fake.interaction(&t).unwrap().callback.unwrap();
    assert_eq!((kind, data["flags"].as_u64()), (4, Some(64)));
}

fn post(url: &str, signed: &SignedInteraction, signature: Option<&str>, timestamp: Option<&str>) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut req =
            reqwest::Client::new().post(url).header("content-type", "application/json").body(signed.body.clone());
        if let Some(s) = signature {
            req = req.header("x-signature-ed25519", s);
        }
        if let Some(t) = timestamp {
            req = req.header("x-signature-timestamp", t);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.text().await.unwrap())
    })
}

#[test]
fn http_interactions_are_verified_answered_and_forgeries_refused() {
    let discord = Discord::start();
    let scratch = Scratch::new();
    let key = discord.fake.public_key_hex();
    let den = scratch.start("interactions", &[("DEN_DISCORD__PUBLIC_KEY", &key)]);
    let url = den.interactions.clone().expect("the endpoint's address is logged");

    let ping = discord.fake.signed_ping();
    let (status, body) = post(&url, &ping, Some(&ping.signature), Some(&ping.timestamp));
    assert_eq!((status, body.as_str()), (200, r#"{"type":1}"#));

    let cmd = discord.fake.signed_command(discord.user, discord.channel, "ping", &[]);
    let (status, body) = post(&url, &cmd, Some(&cmd.signature), Some(&cmd.timestamp));
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((answer["type"].as_u64(), answer["data"]["content"].as_str()), (Some(4), Some("Pong!")));

    // A forged signature: right shape, wrong key.
    let mut forged = cmd.signature.clone();
    forged.replace_range(0..2, if &forged[0..2] == "00" { "11" } else { "00" });
    assert_eq!(post(&url, &cmd, Some(&forged), Some(&cmd.timestamp)).0, 401);
    // Missing headers.
    assert_eq!(post(&url, &cmd, None, None).0, 401);
    // A body changed after signing.
    let tampered = SignedInteraction { body: cmd.body.replace("ping", "pong"), ..cmd.clone() };
    assert_eq!(post(&url, &tampered, Some(&cmd.signature), Some(&cmd.timestamp)).0, 401);
    // A replay of a correctly signed request, six minutes old.
    let old = (cmd.timestamp.parse::<i64>().unwrap() - 360).to_string();
    let stale = discord.fake.sign_at(cmd.token.clone(), cmd.body.clone(), &old);
    assert_eq!(post(&url, &stale, Some(&stale.signature), Some(&stale.timestamp)).0, 401);
    // An oversized body.
    let big = discord.fake.sign("x".into(), format!("{{\"pad\":\"{}\"}}", "x".repeat(100_000)));
    assert_eq!(post(&url, &big, Some(&big.signature), Some(&big.timestamp)).0, 413);
}

#[test]
fn a_dropped_connection_is_resumed_and_no_event_is_lost_or_handled_twice() {
    let discord = Discord::start();
    let scratch = Scratch::new();
    let den = scratch.start_with(&discord, "run", &[]);
    den.wait_ready(WAIT);
    for _ in 0..3 {
        discord.fake.post_as(discord.user, discord.channel, "!ping");
    }
    discord.fake.gateway_drop_connections();
    // Sent while den is disconnected: replayed on RESUME.
    for _ in 0..3 {
        discord.fake.post_as(discord.user, discord.channel, "!ping");
    }
    discord.wait_until("den resumed", WAIT, |f| f.resumes() >= 1);
    for _ in 0..2 {
        discord.fake.post_as(discord.user, discord.channel, "!ping");
    }
    discord.wait_until("eight pongs", WAIT, |_| bot_replies(&discord).len() >= 8);
    std::thread::sleep(Duration::from_millis(700));
    let replies = bot_replies(&discord);
    assert_eq!(replies.len(), 8, "one pong per ping, none lost, none doubled");
    let mut answered: Vec<u64> = replies.iter().filter_map(|m| m.reply_to).collect();
    answered.sort_unstable();
    answered.dedup();
    assert_eq!(answered.len(), 8);
    assert_eq!(discord.fake.identifies().len(), 1, "resumed, not re-identified");
}

#[test]
fn a_restarted_den_resumes_its_stored_session_instead_of_identifying() {
    let discord = Discord::start();
    let scratch = Scratch::new();
    let mut den = scratch.start_with(&discord, "run", &[]);
    den.wait_ready(WAIT);
    den.signal("TERM");
    assert!(den.wait(WAIT).success());
    let den = scratch.start_with(&discord, "run", &[]);
    den.wait_ready(WAIT);
    assert_eq!(discord.fake.identifies().len(), 1, "the second process resumed");
    assert_eq!(discord.fake.resumes(), 1);
    discord.fake.post_as(discord.user, discord.channel, "!ping");
    discord.wait_until("answered after the restart", WAIT, |_| bot_replies(&discord).len() == 1);
}

#[test]
fn a_disallowed_privileged_intent_stops_den_with_what_to_enable() {
    let discord =
        Discord::with_config(FakeConfig { bot_token: TOKEN.into(), privileged_intents: 0, ..FakeConfig::default() });
    let scratch = Scratch::new();
    let mut den = scratch.start_with(&discord, "run", &[]);
    let status = den.wait(WAIT);
    assert!(!status.success(), "den exits non-zero");
    let error = den.log.iter().filter_map(|l| l["message"].as_str()).find(|m| m.contains("4014")).map(str::to_owned);
    let error = error.expect("a log line names the close code");
    assert!(error.contains("Message Content Intent") && error.contains("developer portal"), "{error}");
}

#[test]
fn commands_sync_registers_every_module_command_in_one_request() {
    let discord = Discord::start();
    let scratch = Scratch::new();
    let guild = discord.guild.to_string();
    let out = scratch.output_with(&discord, &["commands", "sync", "--guild", &guild], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let commands = discord.fake.commands(Some(discord.guild));
    let names: Vec<&str> = commands.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert!(stdout(&out).contains(&format!("registered {} command(s) in guild", names.len())), "{}", stdout(&out));
    for expected in
        ["ping", "status", "ask", "roast", "remember", "forget", "memories", "mute", "influence", "add-campaign"]
    {
        assert!(names.contains(&expected), "/{expected} missing from {names:?}");
    }
    let mute = commands.iter().find(|c| c["name"] == "mute").unwrap();
    let permissions = mute["default_member_permissions"].to_string();
    assert_eq!(permissions.trim_matches('"'), "32", "admin commands are for Manage Server by default");
    let bulk = discord.fake.requests().iter().filter(|r| r.operation == "bulk_set_guild_application_commands").count();
    assert_eq!(bulk, 1);
    assert!(discord.fake.violations().is_empty());
}

#[test]
fn split_roles_two_gateways_with_one_shard_each_and_a_worker_answer_every_guild() {
    let discord = Discord::with_config(FakeConfig {
        bot_token: TOKEN.into(),
        shards: 2,
        max_concurrency: 1,
        ..FakeConfig::default()
    });
    let guilds: Vec<(u64, u64)> = (0..2)
        .map(|shard| {
            let g = discord.fake.add_guild_on_shard(&format!("guild on shard {shard}"), discord.user, shard, 2);
            (g, discord.fake.add_text_channel(g, "general"))
        })
        .collect();
    let scratch = Scratch::new();
    let gateway0 = scratch.start_with(&discord, "gateway", &[("DEN_DISCORD__SHARD_IDS", "0")]);
    let gateway1 = scratch.start_with(&discord, "gateway", &[("DEN_DISCORD__SHARD_IDS", "1")]);
    let worker = scratch.start_with(&discord, "worker", &[]);
    gateway0.wait_ready(WAIT);
    gateway1.wait_ready(WAIT);
    worker.wait_ready(WAIT);

    let identifies = discord.fake.identifies();
    assert_eq!(
        identifies.iter().map(|(s, _)| *s).collect::<std::collections::BTreeSet<_>>().len(),
        2,
        "each shard once"
    );
    let gap = identifies[1].1.duration_since(identifies[0].1);
    assert!(
        gap >= Duration::from_millis(4900),
        "max_concurrency 1: identifies 5 s apart across processes, got {gap:?}"
    );

    for (_, channel) in &guilds {
        discord.fake.post_as(discord.user, *channel, "!ping");
    }
    let bot = discord.fake.bot_user_id();
    discord.wait_until("both guilds answered", WAIT, |f| {
        guilds.iter().all(|(_, c)| f.messages(*c).iter().any(|m| m.author_id == bot && m.content == "pong"))
    });
    assert!(discord.fake.violations().is_empty());
}

#[test]
fn den_run_registers_commands_at_start_when_configured() {
    let discord = Discord::start();
    let scratch = Scratch::new();
    let guild = discord.guild.to_string();
    let den = scratch.start_with(
        &discord,
        "run",
        &[
            ("DEN_DISCORD__SYNC_COMMANDS", "true"),
            ("DEN_DISCORD__SYNC_GUILD", &guild),
            ("DEN_PERSONAS__ENABLED", "false"),
            ("DEN_CAMPAIGNS__ENABLED", "false"),
            ("DEN_AGENT__ENABLED", "false"),
        ],
    );
    den.wait_ready(WAIT);
    let names: Vec<String> =
        discord.fake.commands(Some(discord.guild)).iter().map(|c| c["name"].as_str().unwrap().to_owned()).collect();
    assert_eq!(names, ["ping", "status"], "only the enabled modules' commands");
    assert!(discord.fake.commands(None).is_empty(), "nothing registered globally");
}

#[test]
fn an_acknowledgement_discord_never_got_is_given_up_at_three_seconds_and_the_answer_goes_to_the_channel_or_nowhere() {
    let discord = Discord::start();
    let scratch = Scratch::new();
    let den = scratch.start_with(&discord, "run", &[]);
    den.wait_ready(WAIT);
    // Every first response fails: den stops retrying at Discord's 3 s.
    for _ in 0..20 {
        discord.fake.inject("create_interaction_response", den_testkit::discord::Injected::Status(500));
    }
    let status = discord.fake.invoke_command(discord.user, discord.channel, "status", &[]);
    discord.wait_until("the status answer in the channel", WAIT, |f| {
        f.messages(discord.channel).iter().any(|m| m.content.contains("is up") && m.content.contains("den-jobs"))
    });
    let tries = discord.fake.requests().iter().filter(|r| r.operation == "create_interaction_response").count();
    let posted = bot_replies(&discord);
    assert_eq!(posted.len(), 1, "the public answer, once, in the channel");
    assert!(posted[0].content.starts_with(&format!("<@{}>", discord.user)), "naming who asked");
    assert!(posted[0].pinged_users.is_empty(), "without pinging them");
    assert!((2..=5).contains(&tries), "{tries} tries inside the 3 s window");
    assert!(discord.fake.interaction(&status).unwrap().callback.is_none());

    // A private answer has nowhere else to go: it is dropped, never posted.
    let memories = discord.fake.invoke_command(discord.user, discord.channel, "memories", &[]);
    std::thread::sleep(Duration::from_secs(8));
    assert!(discord.fake.interaction(&memories).unwrap().callback.is_none());
    assert_eq!(bot_replies(&discord).len(), 1, "nothing more in the channel");
}
