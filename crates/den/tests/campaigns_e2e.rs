//! Channelwright end to end: `/add-campaign` through the real `den run`
//! against the fake Discord with its Discord-like rate limits.

mod support;

use std::time::Duration;

use den_testkit::discord::CommandOption;
use support::{Discord, Scratch};

const WAIT: Duration = Duration::from_secs(60);

/// `den run` against `discord`, ready.
fn start_den(discord: &Discord, env: &[(&str, &str)]) -> (Scratch, support::Running) {
    let scratch = Scratch::new();
    let den = scratch.start_with(discord, "run", env);
    den.wait_ready(WAIT);
    (scratch, den)
}

/// Invokes a command as the test's user in the test's channel; the interaction token.
fn invoke(discord: &Discord, name: &str, options: &[CommandOption]) -> String {
    discord.fake.invoke_command(discord.user, discord.channel, name, options)
}

fn ack(discord: &Discord, token: &str) -> (u8, serde_json::Value) {
    discord.wait_until("acknowledged", WAIT, |f| f.interaction(token).is_some_and(|i| i.callback.is_some()));
    discord.fake.interaction(token).unwrap().callback.unwrap()
}

#[test]
fn add_campaign_answers_at_once_then_builds_everything_with_progress_and_a_summary() {
    let discord = Discord::start();
    let (_scratch, _den) = start_den(&discord, &[]);
    let token = invoke(&discord, "add-campaign", &[CommandOption::string("name", "Dragonfall")]);
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

    let again = invoke(&discord, "add-campaign", &[CommandOption::string("name", "dragonfall")]);
    discord.wait_until("the duplicate is refused", WAIT, |f| {
        f.interaction(&again)
            .and_then(|i| i.original)
            .and_then(|m| f.message(m))
            .is_some_and(|m| m.content.contains("already a campaign"))
    });
    let listed = invoke(&discord, "list-campaigns", &[]);
    let (_, data) = ack(&discord, &listed);
    assert!(data["content"].as_str().unwrap().contains("**Dragonfall** (ready)"), "{data}");
    assert!(discord.fake.violations().is_empty());
}

#[test]
fn add_campaign_says_which_permissions_den_lacks_and_checks_the_name() {
    let discord = Discord::start();
    discord.fake.set_app_permissions(1 << 4); // Manage Channels only
    let (_scratch, _den) = start_den(&discord, &[]);
    let t = invoke(&discord, "add-campaign", &[CommandOption::string("name", "X")]);
    let (kind, data) = ack(&discord, &t);
    assert_eq!(kind, 4);
    let text = data["content"].as_str().unwrap();
    assert!(text.contains("Manage Roles") && !text.contains("Manage Channels"), "{text}");
    let t = invoke(&discord, "add-campaign", &[CommandOption::string("name", "<@everyone>")]);
    let (_, data) = ack(&discord, &t);
    assert!(data["content"].as_str().unwrap().contains("cannot contain"), "{data}");
    assert!(discord.fake.channels(discord.guild).iter().all(|c| c.kind != 4), "nothing was built");
}

fn fast_discord() -> Discord {
    Discord::with_config(den_testkit::FakeConfig {
        bot_token: support::TOKEN.into(),
        rate_limits: den_testkit::discord::RateLimits {
            guild_writes: den_testkit::discord::Bucket::new(50, Duration::from_secs(1)),
            ..den_testkit::discord::RateLimits::default()
        },
        ..den_testkit::FakeConfig::default()
    })
}

fn build(discord: &Discord, name: &str) {
    let token = invoke(discord, "add-campaign", &[CommandOption::string("name", name)]);
    discord.wait_until("built", WAIT, |f| {
        f.interaction(&token)
            .and_then(|i| i.original)
            .and_then(|m| f.message(m))
            .is_some_and(|m| m.content.contains("is ready"))
    });
}

fn answer(discord: &Discord, token: &str, needle: &str) -> String {
    discord.wait_until(needle, WAIT, |f| {
        f.interaction(token)
            .and_then(|i| i.original)
            .and_then(|m| f.message(m))
            .is_some_and(|m| m.content.contains(needle))
    });
    discord.fake.message(discord.fake.interaction(token).unwrap().original.unwrap()).unwrap().content
}

#[test]
fn delete_campaign_asks_first_then_removes_everything_it_made() {
    let discord = fast_discord();
    let (_scratch, _den) = start_den(&discord, &[]);
    build(&discord, "Doomed");
    let before = discord.fake.channels(discord.guild).len();
    let ask = invoke(&discord, "delete-campaign", &[CommandOption::string("name", "Doomed")]);
    let (kind, data) = ack(&discord, &ask);
    assert_eq!(kind, 4);
    assert_eq!(data["flags"], 64, "only the asker sees the question");
    assert_eq!(data["components"][0]["components"][0]["custom_id"], "campaigns:delete:doomed", "{data}");
    assert_eq!(discord.fake.channels(discord.guild).len(), before, "nothing deleted before the button");
    let question = discord.fake.interaction(&ask).unwrap().original.unwrap_or(0);
    let press = discord.fake.press_button(discord.user, discord.channel, question, "campaigns:delete:doomed");
    let (kind, _) = ack(&discord, &press);
    assert_eq!(kind, 7, "the question turns into 'Deleting…'");
    discord.wait_until("everything gone", WAIT, |f| {
        f.channels(discord.guild).len() == before - 12
            && f.roles(discord.guild).iter().all(|r| !r.name.starts_with("Doomed"))
    });
    answer(&discord, &press, "Campaign **Doomed** deleted");
    let listed = invoke(&discord, "list-campaigns", &[]);
    let (_, data) = ack(&discord, &listed);
    assert!(data["content"].as_str().unwrap().contains("No campaigns yet"), "{data}");
    assert_eq!(discord.fake.violations(), Vec::<String>::new());
}

#[test]
fn archive_campaign_makes_it_read_only_under_the_archive_category() {
    let discord = fast_discord();
    let (_scratch, _den) = start_den(&discord, &[]);
    build(&discord, "Old Times");
    let members = discord.fake.roles(discord.guild).into_iter().find(|r| r.name == "Old Times Members").unwrap().id;
    let t = invoke(&discord, "archive-campaign", &[CommandOption::string("name", "Old Times")]);
    answer(&discord, &t, "archived");
    let channels = discord.fake.channels(discord.guild);
    assert!(channels.iter().all(|c| c.name != "Old Times"), "the campaign's own category is gone");
    let archive = channels.iter().find(|c| c.kind == 4 && c.name == "Archived Campaigns").unwrap();
    let moved: Vec<_> = channels.iter().filter(|c| c.parent_id == Some(archive.id)).collect();
    assert_eq!(moved.len(), 11);
    let perms = |c: &den_testkit::discord::Channel, id: u64| {
        let o = c.overwrites.iter().find(|o| o["id"] == serde_json::Value::String(id.to_string())).unwrap();
        let n = |k: &str| o[k].as_str().unwrap().parse::<u64>().unwrap();
        (n("allow"), n("deny"))
    };
    let general = moved.iter().find(|c| c.name == "general-discussion").unwrap();
    let (allow, deny) = perms(general, members);
    assert!(allow & (1 << 10) != 0 && deny & (1 << 11) != 0, "members still read, no longer write");
    let notes = moved.iter().find(|c| c.name == "gm-notes").unwrap();
    assert!(perms(notes, members).1 & (1 << 10) != 0, "GM notes stay hidden from players");
}

#[test]
fn templates_are_validated_listed_and_offered_to_add_campaign() {
    let scratch = Scratch::new();
    let dir = scratch.path().join("campaign-templates");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("one-shot.md"), "- table-talk: chatter\n- gm-screen (private)\n- voice-room (voice)\n")
        .unwrap();
    std::fs::write(dir.join("broken.toml"), "name = \"broken\"\n[[channel]]\nname = \"a\"\ntags = [\"x\"]\n").unwrap();
    let out = scratch.output(&["campaign", "template", "validate", "campaign-templates/one-shot.md"], &[]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    assert!(support::stdout(&out).contains("one-shot: 3 channels (2 text, 1 voice, 0 forum), 1 GM-only"));
    let out = scratch.output(&["campaign", "template", "validate", "campaign-templates/broken.toml"], &[]);
    assert!(!out.status.success());
    assert!(support::stderr(&out).contains("channel[0].tags: only forums have tags"), "{}", support::stderr(&out));
    let out = scratch.output(&["campaign", "template", "list"], &[]);
    let listed = support::stdout(&out);
    assert!(listed.contains("default: 11 channels") && listed.contains("one-shot:") && listed.contains("broken:"));

    let discord = fast_discord();
    let den = scratch.start_with(&discord, "run", &[]);
    den.wait_ready(WAIT);
    let t = invoke(
        &discord,
        "add-campaign",
        &[CommandOption::string("name", "Quick"), CommandOption::string("template", "one-shot")],
    );
    answer(&discord, &t, "is ready");
    let channels = discord.fake.channels(discord.guild);
    assert!(channels.iter().any(|c| c.name == "gm-screen") && channels.iter().all(|c| c.name != "gm-notes"));
}

#[test]
fn when_the_token_expires_during_the_build_the_summary_goes_to_the_channel() {
    let discord = Discord::start(); // Discord-like limits: the build takes about 10 s
    let (_scratch, _den) = start_den(&discord, &[]);
    let t = invoke(&discord, "add-campaign", &[CommandOption::string("name", "Slow")]);
    ack(&discord, &t);
    discord.fake.advance(Duration::from_secs(20 * 60)); // the interaction token is now dead
    discord.wait_until("the summary in the channel", WAIT, |f| {
        f.messages(discord.channel).iter().any(|m| m.author_id == f.bot_user_id() && m.content.contains("is ready"))
    });
    let posted = discord.fake.messages(discord.channel).into_iter().find(|m| m.content.contains("is ready")).unwrap();
    assert!(posted.content.starts_with(&format!("<@{}>", discord.user)), "names the person: {}", posted.content);
    assert!(posted.pinged_users.is_empty(), "without pinging them");
}

#[test]
fn a_step_discord_refuses_marks_the_campaign_failed_and_offers_to_clean_up() {
    let discord = fast_discord();
    let (_scratch, _den) = start_den(&discord, &[]);
    // Creating the category is refused for good (a 403 is not retried); the two roles exist by then.
    discord.fake.inject("create_guild_channel", den_testkit::discord::Injected::Status(403));
    let t = invoke(&discord, "add-campaign", &[CommandOption::string("name", "Cursed")]);
    let text = answer(&discord, &t, "stopped at");
    assert!(text.contains("stopped at 2/14") && text.contains("**Cursed**"), "{text}");
    assert!(text.contains("/delete-campaign name:Cursed"), "{text}");
    let listed = invoke(&discord, "list-campaigns", &[]);
    let (_, data) = ack(&discord, &listed);
    assert!(data["content"].as_str().unwrap().contains("**Cursed** (failed at"), "{data}");
}

#[test]
fn only_managers_may_add_campaigns_unless_they_hold_the_configured_role() {
    let discord = fast_discord();
    let player = discord.fake.add_user("player");
    discord.fake.add_member(discord.guild, player);
    let helper = discord.fake.add_user("helper");
    discord.fake.add_member(discord.guild, helper);
    let role = 4_242;
    discord.fake.add_member_role(discord.guild, helper, role);
    let (_scratch, _den) = start_den(&discord, &[("DEN_CAMPAIGNS__MANAGER_ROLE", "4242")]);
    let t =
        discord.fake.invoke_command(player, discord.channel, "add-campaign", &[CommandOption::string("name", "Nope")]);
    let (kind, data) = ack(&discord, &t);
    assert_eq!(kind, 4);
    assert!(data["content"].as_str().unwrap().contains("You need Manage Channels"), "{data}");
    let t =
        discord.fake.invoke_command(helper, discord.channel, "add-campaign", &[CommandOption::string("name", "Yes")]);
    answer(&discord, &t, "is ready");
}

#[test]
fn a_template_attached_to_campaign_template_is_checked_saved_and_used() {
    let discord = fast_discord();
    let (_scratch, _den) = start_den(&discord, &[]);
    let md = "# Heist\n- planning-room: the plan\n- getaway-van (voice)\n- inside-man (private)\n";
    let file = discord.fake.add_attachment("heist.md", md.as_bytes());
    let t = invoke(&discord, "campaign-template", &[CommandOption::attachment("file", file)]);
    let text = answer(&discord, &t, "Template saved");
    assert!(text.contains("heist: 3 channels (2 text, 1 voice, 0 forum), 1 GM-only"), "{text}");

    let broken =
        discord.fake.add_attachment("broken.toml", b"name = \"x\"\n[[channel]]\nname = \"a\"\ntags = [\"t\"]\n");
    let t = invoke(&discord, "campaign-template", &[CommandOption::attachment("file", broken)]);
    let text = answer(&discord, &t, "broken.toml");
    assert!(text.contains("channel[0].tags: only forums have tags"), "{text}");

    let t = invoke(
        &discord,
        "add-campaign",
        &[CommandOption::string("name", "Big Score"), CommandOption::string("template", "heist")],
    );
    answer(&discord, &t, "is ready");
    let channels = discord.fake.channels(discord.guild);
    assert!(["planning-room", "getaway-van", "inside-man"].iter().all(|n| channels.iter().any(|c| c.name == *n)));
    assert!(discord.fake.violations().is_empty());
}

#[test]
fn a_campaign_named_like_the_servers_own_category_or_role_is_refused_and_nothing_is_built() {
    let discord = fast_discord();
    discord.fake.add_category(discord.guild, "Text Channels");
    let moderators = discord.fake.add_role(discord.guild, "Staff Members");
    let (_scratch, _den) = start_den(&discord, &[]);
    let before = (discord.fake.channels(discord.guild).len(), discord.fake.roles(discord.guild).len());
    for name in ["text channels", "Staff"] {
        let token = invoke(&discord, "add-campaign", &[CommandOption::string("name", name)]);
        let text = answer(&discord, &token, "already has a role or category");
        assert!(text.contains("pick another campaign name"), "{text}");
    }
    let after = (discord.fake.channels(discord.guild).len(), discord.fake.roles(discord.guild).len());
    assert_eq!(after, before, "nothing built, nothing adopted");
    // And deleting a campaign of that name finds nothing to delete.
    let t = invoke(&discord, "delete-campaign", &[CommandOption::string("name", "Staff")]);
    let (_, data) = ack(&discord, &t);
    assert!(data["content"].as_str().unwrap().contains("no campaign called"), "{data}");
    assert!(discord.fake.roles(discord.guild).iter().any(|r| r.id == moderators));
}
