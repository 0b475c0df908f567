//! Channelwright end to end: `/add-campaign` through the real `den run`
//! against the fake Discord with its Discord-like rate limits.

mod support;

use std::time::Duration;

use den_testkit::discord::CommandOption;
use support::{Discord, Scratch};

const WAIT: Duration = Duration::from_secs(60);

fn ack(discord: &Discord, token: &str) -> (u8, serde_json::Value) {
    discord.wait_until("acknowledged", WAIT, |f| f.interaction(token).is_some_and(|i| i.callback.is_some()));
    discord.fake.interaction(token).unwrap().callback.unwrap()
}

#[test]
fn add_campaign_answers_at_once_then_builds_everything_with_progress_and_a_summary() {
    let discord = Discord::start();
    let scratch = Scratch::new();
    let den = scratch.start_with(&discord, "run", &[]);
    den.wait_ready(WAIT);
    let token = discord.fake.invoke_command(
        discord.user,
        discord.channel,
        "add-campaign",
        &[CommandOption::string("name", "Dragonfall")],
    );
    let (kind, _) = ack(&discord, &token);
    assert_eq!(kind, 5, "deferred");
    let i = discord.fake.interaction(&token).unwrap();
    assert!(i.responded_at.unwrap().duration_since(i.created).unwrap() < Duration::from_secs(3));
    discord.wait_until("the summary", WAIT, |f| {
        f.interaction(&token)
            .and_then(|i| i.original)
            .and_then(|m| f.message(m))
            .is_some_and(|m| m.content.contains("is ready"))
    });
    let original = discord.fake.message(discord.fake.interaction(&token).unwrap().original.unwrap()).unwrap();
    assert!(original.edits >= 2, "progress, then the summary ({} edits)", original.edits);
    assert!(original.content.contains("🔒") && original.content.contains("**Forums:**"), "{}", original.content);
    let channels = discord.fake.channels(discord.guild);
    assert_eq!(channels.iter().filter(|c| c.name == "gm-notes").count(), 1);
    assert_eq!(discord.fake.rate_limited(), 0, "paced, never refused");

    let again = discord.fake.invoke_command(
        discord.user,
        discord.channel,
        "add-campaign",
        &[CommandOption::string("name", "dragonfall")],
    );
    discord.wait_until("the duplicate is refused", WAIT, |f| {
        f.interaction(&again)
            .and_then(|i| i.original)
            .and_then(|m| f.message(m))
            .is_some_and(|m| m.content.contains("already a campaign"))
    });
    let listed = discord.fake.invoke_command(discord.user, discord.channel, "list-campaigns", &[]);
    let (_, data) = ack(&discord, &listed);
    assert!(data["content"].as_str().unwrap().contains("**Dragonfall** (ready)"), "{data}");
    assert!(discord.fake.violations().is_empty());
}

#[test]
fn add_campaign_says_which_permissions_den_lacks_and_checks_the_name() {
    let discord = Discord::start();
    discord.fake.set_app_permissions(1 << 4); // Manage Channels only
    let scratch = Scratch::new();
    let den = scratch.start_with(&discord, "run", &[]);
    den.wait_ready(WAIT);
    let t = discord.fake.invoke_command(
        discord.user,
        discord.channel,
        "add-campaign",
        &[CommandOption::string("name", "X")],
    );
    let (kind, data) = ack(&discord, &t);
    assert_eq!(kind, 4);
    let text = data["content"].as_str().unwrap();
    assert!(text.contains("Manage Roles") && !text.contains("Manage Channels"), "{text}");
    let t = discord.fake.invoke_command(
        discord.user,
        discord.channel,
        "add-campaign",
        &[CommandOption::string("name", "<@everyone>")],
    );
    let (_, data) = ack(&discord, &t);
    assert!(data["content"].as_str().unwrap().contains("cannot contain"), "{data}");
    assert!(discord.fake.channels(discord.guild).iter().all(|c| c.kind != 4), "nothing was built");
}
