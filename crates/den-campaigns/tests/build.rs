//! Building campaigns against the fake Discord with rate limits on: the
//! whole template, GM-only privacy, and resuming after a crash at any step
//! without duplicates.

use std::sync::Arc;
use std::time::Duration;

use den_campaigns::build::{self, Builder, Stop};
use den_campaigns::plan::{self, Gm, Plan, Plans, Status};
use den_campaigns::template::Template;
use den_core::{Secret, SystemClock};
use den_discord::guild::{ChannelKind, NewChannel, VIEW_CHANNEL};
use den_discord::{Egress, EgressConfig};
use den_storage::Store;
use den_storage::sqlite::{SqliteOptions, SqliteStore};
use den_testkit::discord::{Bucket, RateLimits};
use den_testkit::{FakeConfig, FakeDiscord};
use serde_json::Value;

struct Rig {
    fake: FakeDiscord,
    egress: Egress,
    plans: Plans,
    guild: u64,
    _dir: tempfile::TempDir,
}

async fn rig(rate_limits: RateLimits) -> Rig {
    let fake = FakeDiscord::start(FakeConfig { rate_limits, ..FakeConfig::default() }).await.unwrap();
    let owner = fake.add_user("ada");
    let guild = fake.add_guild("tavern", owner);
    let config = EgressConfig {
        token: Some(Secret::new(fake.bot_token())),
        api_proxy: Some(fake.rest_addr()),
        timeout: Duration::from_secs(10),
    };
    let egress = Egress::new(&config, fake.app_id(), None);
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&SqliteOptions::new(dir.path().join("den.db")), Arc::new(SystemClock)).unwrap();
    let plans = Plans::new(Store::table(&store, plan::table_spec()).await.unwrap());
    Rig { fake, egress, plans, guild, _dir: dir }
}

/// Builds the rest of `plan` as a worker would, stopping at `stop`.
async fn run(
    r: &Rig,
    plan: Plan,
    version: u64,
    stop: Option<Stop>,
    report: &(dyn Fn(&Plan, &str) + Send + Sync),
) -> Plan {
    let builder = Builder {
        egress: &r.egress,
        plans: &r.plans,
        bot: r.fake.bot_user_id(),
        clock: &SystemClock,
        progress: report,
    };
    builder.run(plan, version, stop).await.unwrap()
}

fn fast() -> RateLimits {
    RateLimits { guild_writes: Bucket::new(50, Duration::from_secs(1)), ..RateLimits::default() }
}

async fn planned(r: &Rig, name: &str, gm: Gm) -> (Plan, u64) {
    let mut plan = Plan::new(r.guild, name, gm, &Template::default_template(), den_core::Timestamp(0));
    // Asked for now: the interaction's snowflake dates the campaign by Discord's clock.
    let now = den_core::Clock::now(&SystemClock);
    plan.interaction = Some(den_discord::InteractionRef {
        id: den_discord::snowflake_at(now),
        token: "t".into(),
        channel_id: None,
        guild_id: Some(r.guild),
        user_id: None,
        created_at: now,
    });
    assert!(r.plans.create(&plan).await.unwrap());
    r.plans.get(r.guild, name).await.unwrap().unwrap()
}

fn overwrite(overwrites: &[Value], id: u64) -> Option<(u64, u64)> {
    let o = overwrites.iter().find(|o| o["id"].as_str().and_then(|s| s.parse::<u64>().ok()) == Some(id))?;
    Some((o["allow"].as_str()?.parse().ok()?, o["deny"].as_str()?.parse().ok()?))
}

/// Whether a member holding only `roles` (besides @everyone) may see a channel, from its overwrites.
fn visible_to(overwrites: &[Value], guild: u64, roles: &[u64], member: u64) -> bool {
    let mut view = true; // @everyone may view by default
    if let Some((allow, deny)) = overwrite(overwrites, guild) {
        view = (view && deny & VIEW_CHANNEL == 0) || allow & VIEW_CHANNEL != 0;
    }
    let (mut allow, mut deny) = (0, 0);
    for r in roles {
        if let Some((a, d)) = overwrite(overwrites, *r) {
            allow |= a;
            deny |= d;
        }
    }
    if deny & VIEW_CHANNEL != 0 {
        view = false;
    }
    if allow & VIEW_CHANNEL != 0 {
        view = true;
    }
    if let Some((a, d)) = overwrite(overwrites, member) {
        if d & VIEW_CHANNEL != 0 {
            view = false;
        }
        if a & VIEW_CHANNEL != 0 {
            view = true;
        }
    }
    view
}

#[tokio::test]
async fn the_default_template_is_built_whole_under_a_private_category_without_a_429() {
    let r = rig(RateLimits::default()).await;
    let (p, v) = planned(&r, "Dragonfall", Gm::Role).await;
    let reports = std::sync::Mutex::new(Vec::new());
    let report = |p: &Plan, last: &str| reports.lock().unwrap().push(plan::progress_text(p, last));
    let done = run(&r, p, v, None, &report).await;
    assert_eq!(done.status, Status::Done);
    assert_eq!(r.fake.rate_limited(), 0);
    let reports = reports.into_inner().unwrap();
    assert_eq!(reports.len(), 14, "2 roles, 1 category, 11 channels");
    assert!(reports.last().unwrap().contains("[████████████████████] 100% (14/14)"), "{}", reports.last().unwrap());
    assert!(reports[6].contains("50% (7/14)"), "{}", reports[6]);

    let channels = r.fake.channels(r.guild);
    let category = channels.iter().find(|c| c.kind == 4 && c.name == "Dragonfall").unwrap();
    let under: Vec<_> = channels.iter().filter(|c| c.parent_id == Some(category.id)).collect();
    let count = |k: u8| under.iter().filter(|c| c.kind == k).count();
    assert_eq!((count(0), count(2), count(15)), (7, 1, 3));
    assert!(under.iter().find(|c| c.name == "session-recaps").unwrap().topic.is_some());
    assert_eq!(under.iter().find(|c| c.name == "campaign-lore").unwrap().tags.len(), 4);

    let roles = r.fake.roles(r.guild);
    let members = roles.iter().find(|x| x.name == "Dragonfall Members").unwrap().id;
    let gm = roles.iter().find(|x| x.name == "Dragonfall GM").unwrap().id;
    let player = 999_001;
    let gm_user = 999_002;
    for c in &under {
        let private = c.name == "gm-notes" || c.name == "gm-planning";
        assert_eq!(visible_to(&c.overwrites, r.guild, &[members], player), !private, "{} for a player", c.name);
        assert!(visible_to(&c.overwrites, r.guild, &[gm], gm_user), "{} for the GM", c.name);
        assert!(!visible_to(&c.overwrites, r.guild, &[], 999_003), "{} for someone outside", c.name);
        assert!(visible_to(&c.overwrites, r.guild, &[], r.fake.bot_user_id()), "{} for den itself", c.name);
    }
    assert!(!visible_to(&category.overwrites, r.guild, &[], 999_003), "the category is hidden from @everyone");
    assert!(
        plan::summary(&done).contains(&format!("<#{}> 🔒", under.iter().find(|c| c.name == "gm-notes").unwrap().id))
    );
}

#[tokio::test]
async fn a_named_gm_member_gets_the_private_channels_instead_of_a_role() {
    let r = rig(fast()).await;
    let gm_user = r.fake.add_user("gm");
    let (p, v) = planned(&r, "Solo", Gm::User(gm_user)).await;
    run(&r, p, v, None, &|_, _| {}).await;
    assert!(r.fake.roles(r.guild).iter().all(|x| x.name != "Solo GM"), "no GM role");
    let channels = r.fake.channels(r.guild);
    let notes = channels.iter().find(|c| c.name == "gm-notes").unwrap();
    assert!(visible_to(&notes.overwrites, r.guild, &[], gm_user));
    let members = r.fake.roles(r.guild).iter().find(|x| x.name == "Solo Members").unwrap().id;
    assert!(!visible_to(&notes.overwrites, r.guild, &[members], 5));
}

#[tokio::test]
async fn a_crash_after_any_step_resumes_to_exactly_the_templates_channels() {
    for k in [0usize, 1, 2, 3, 6, 10, 13] {
        let r = rig(fast()).await;
        let name = format!("Crash {k}");
        let (p, v) = planned(&r, &name, Gm::Role).await;
        let partial = run(&r, p, v, Some(Stop::Before(k)), &|_, _| {}).await;
        assert_eq!(partial.progress().0, k);
        // The process died; a retried job reads the stored plan and goes on.
        let (stored, version) = r.plans.get(r.guild, &name).await.unwrap().unwrap();
        assert_eq!(stored.progress().0, k, "each id is stored as soon as it exists");
        let done = run(&r, stored, version, None, &|_, _| {}).await;
        assert_eq!(done.progress(), (14, 14));
        let channels = r.fake.channels(r.guild);
        assert_eq!(channels.iter().filter(|c| c.kind == 4).count(), 1, "k={k}: one category");
        assert_eq!(channels.iter().filter(|c| c.kind != 4).count(), 11, "k={k}: the template's 11 channels");
        for t in &Template::default_template().channels {
            assert_eq!(channels.iter().filter(|c| c.name == t.name).count(), 1, "k={k}: {} once", t.name);
        }
        let roles = r.fake.roles(r.guild);
        assert_eq!(roles.len(), 3, "k={k}: @everyone, members, GM");
    }
}

#[tokio::test]
async fn a_step_created_on_discord_but_not_recorded_is_found_by_name_not_made_twice() {
    for k in [0usize, 2, 5, 12] {
        let r = rig(fast()).await;
        let (p, v) = planned(&r, "Lost Ids", Gm::Role).await;
        // Step k+1 was created on Discord, then the process died before saving its id.
        let partial = run(&r, p, v, Some(Stop::AfterCreating(k)), &|_, _| {}).await;
        let lost = partial.steps.iter().find(|s| s.id.is_none()).unwrap().name.clone();
        let (stored, version) = r.plans.get(r.guild, "Lost Ids").await.unwrap().unwrap();
        assert!(
            stored.steps.iter().find(|s| s.name == lost).unwrap().attempted.is_some(),
            "the attempt was saved first"
        );
        let done = run(&r, stored, version, None, &|_, _| {}).await;
        assert_eq!(done.progress(), (14, 14));
        let channels = r.fake.channels(r.guild);
        let named = |n: &str| {
            channels.iter().filter(|c| c.name.eq_ignore_ascii_case(n)).count()
                + r.fake.roles(r.guild).iter().filter(|x| x.name == n).count()
        };
        assert_eq!(named(&lost), 1, "k={k}: {lost} adopted, not duplicated");
        assert_eq!(channels.len(), 12, "k={k}");
    }
}

#[tokio::test]
async fn a_campaign_never_adopts_a_role_or_category_the_server_already_had() {
    let r = rig(fast()).await;
    // The server's own objects, named as the plan's steps will be.
    let theirs_role = r.egress.create_role(r.guild, "Old Members").await.unwrap().id;
    let theirs_category = r
        .egress
        .create_channel(
            r.guild,
            &NewChannel { name: "Old".into(), kind: Some(ChannelKind::Category), ..NewChannel::default() },
        )
        .await
        .unwrap()
        .id;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (p, v) = planned(&r, "Old", Gm::Role).await;
    // A crash right after the category step's create, so the resumed run looks for it by name.
    let partial = run(&r, p, v, Some(Stop::AfterCreating(2)), &|_, _| {}).await;
    assert_eq!(partial.progress().0, 2);
    let (stored, version) = r.plans.get(r.guild, "Old").await.unwrap().unwrap();
    let done = run(&r, stored, version, None, &|_, _| {}).await;
    let mine: Vec<u64> = done.steps.iter().filter_map(|s| s.id).collect();
    assert!(!mine.contains(&theirs_role) && !mine.contains(&theirs_category), "the server's objects are not den's");
    let categories: Vec<_> = r.fake.channels(r.guild).into_iter().filter(|c| c.kind == 4).collect();
    assert_eq!(categories.len(), 2, "the server's category and den's one");
    let ours = categories.iter().find(|c| c.id != theirs_category).unwrap();
    assert_eq!(r.fake.channels(r.guild).iter().filter(|c| c.parent_id == Some(ours.id)).count(), 11);
    assert_eq!(r.fake.channels(r.guild).iter().filter(|c| c.parent_id == Some(theirs_category)).count(), 0);
    // Deleting the campaign deletes only what den made.
    build::tear_down(&r.egress, &done).await.unwrap();
    assert!(r.fake.roles(r.guild).iter().any(|x| x.id == theirs_role));
    assert_eq!(r.fake.channels(r.guild).iter().map(|c| c.id).collect::<Vec<_>>(), vec![theirs_category]);
}

#[tokio::test]
async fn the_names_a_plan_would_take_from_the_server_are_found_before_anything_is_built() {
    let r = rig(fast()).await;
    r.egress.create_role(r.guild, "dragonfall members").await.unwrap();
    r.egress
        .create_channel(
            r.guild,
            &NewChannel { name: "Text Channels".into(), kind: Some(ChannelKind::Category), ..NewChannel::default() },
        )
        .await
        .unwrap();
    let plan = |name: &str| Plan::new(r.guild, name, Gm::Role, &Template::default_template(), den_core::Timestamp(0));
    assert_eq!(build::names_in_use(&r.egress, &plan("Dragonfall")).await.unwrap(), ["Dragonfall Members"]);
    assert_eq!(build::names_in_use(&r.egress, &plan("Text Channels")).await.unwrap(), ["Text Channels"]);
    assert!(build::names_in_use(&r.egress, &plan("Fresh")).await.unwrap().is_empty());
}

#[tokio::test]
async fn an_adopted_private_channel_gets_the_plans_overwrites_again() {
    let r = rig(fast()).await;
    let (p, v) = planned(&r, "Secrets", Gm::Role).await;
    let gm_notes = p.steps.iter().position(|s| s.name == "gm-notes").unwrap();
    let partial = run(&r, p, v, Some(Stop::AfterCreating(gm_notes)), &|_, _| {}).await;
    assert!(partial.steps[gm_notes].id.is_none());
    // Meanwhile someone opened the new channel to everyone.
    let made = r.fake.channels(r.guild).into_iter().find(|c| c.name == "gm-notes").unwrap();
    r.egress.update_channel(made.id, None, Some(&[])).await.unwrap();
    let (stored, version) = r.plans.get(r.guild, "Secrets").await.unwrap().unwrap();
    let done = run(&r, stored, version, None, &|_, _| {}).await;
    assert_eq!(done.steps[gm_notes].id, Some(made.id));
    let notes = r.fake.channels(r.guild).into_iter().find(|c| c.id == made.id).unwrap();
    let members = r.fake.roles(r.guild).iter().find(|x| x.name == "Secrets Members").unwrap().id;
    assert!(!visible_to(&notes.overwrites, r.guild, &[members], 5), "private again");
    assert!(visible_to(&notes.overwrites, r.guild, &[], r.fake.bot_user_id()), "den (its bot user) still sees it");
}

#[tokio::test]
async fn a_second_campaign_of_the_same_name_is_refused_whatever_its_case() {
    let r = rig(fast()).await;
    planned(&r, "Dragonfall", Gm::Role).await;
    let again = Plan::new(r.guild, "  dragonFALL ", Gm::Role, &Template::default_template(), den_core::Timestamp(0));
    assert!(!r.plans.create(&again).await.unwrap());
    assert!(plan::check_name("Bad <name>").unwrap_err().contains("'<'"));
    assert!(plan::check_name(&"x".repeat(51)).is_err());
    assert_eq!(plan::check_name("  The   Lost Mine ").unwrap(), "The Lost Mine");
}
