//! Guild structure through den's egress against the fake Discord, with
//! rate limits on: roles, a private category, text, voice and forum channels.

use std::time::Duration;

use den_core::Secret;
use den_discord::guild::{ChannelKind, NewChannel, Overwrite, SEND_MESSAGES, Target, VIEW_CHANNEL};
use den_discord::{Egress, EgressConfig};
use den_testkit::discord::{Bucket, RateLimits};
use den_testkit::{FakeConfig, FakeDiscord};
use serde_json::Value;

async fn setup(rate_limits: RateLimits) -> (FakeDiscord, Egress, u64) {
    let fake = FakeDiscord::start(FakeConfig { rate_limits, ..FakeConfig::default() }).await.unwrap();
    let owner = fake.add_user("ada");
    let guild = fake.add_guild("tavern", owner);
    let config = EgressConfig {
        token: Some(Secret::new(fake.bot_token())),
        api_proxy: Some(fake.rest_addr()),
        timeout: Duration::from_secs(10),
    };
    let egress = Egress::new(&config, fake.app_id(), None);
    (fake, egress, guild)
}

fn overwrite_of(overwrites: &[Value], id: u64) -> (u64, u64) {
    let o = overwrites
        .iter()
        .find(|o| o["id"].as_str().and_then(|s| s.parse::<u64>().ok()) == Some(id))
        .unwrap_or_else(|| panic!("no overwrite for {id}"));
    (o["allow"].as_str().unwrap().parse().unwrap(), o["deny"].as_str().unwrap().parse().unwrap())
}

#[tokio::test]
async fn a_private_category_with_text_voice_and_forum_channels_is_built_with_its_overwrites() {
    let (fake, egress, guild) = setup(RateLimits::default()).await;
    let members = egress.create_role(guild, "Dragonfall Members").await.unwrap();
    let role = fake.roles(guild).into_iter().find(|r| r.id == members.id).unwrap();
    assert_eq!(role.permissions, "0", "a new role holds no permissions of its own");

    let private = vec![
        Overwrite { target: Target::Role(guild), allow: 0, deny: VIEW_CHANNEL },
        Overwrite { target: Target::Role(members.id), allow: VIEW_CHANNEL | SEND_MESSAGES, deny: 0 },
        Overwrite { target: Target::Member(fake.bot_user_id()), allow: VIEW_CHANNEL, deny: 0 },
    ];
    let category = egress
        .create_channel(
            guild,
            &NewChannel {
                name: "Dragonfall".into(),
                kind: Some(ChannelKind::Category),
                overwrites: private.clone(),
                ..NewChannel::default()
            },
        )
        .await
        .unwrap();
    let text = NewChannel {
        name: "Session Recaps".into(),
        topic: Some("What happened last time".into()),
        parent: Some(category.id),
        overwrites: private.clone(),
        ..NewChannel::default()
    };
    let recaps = egress.create_channel(guild, &text).await.unwrap();
    assert_eq!(recaps.name, "session-recaps");
    let voice = NewChannel {
        name: "Campaign Main".into(),
        kind: Some(ChannelKind::Voice),
        topic: Some("ignored for voice".into()),
        parent: Some(category.id),
        ..NewChannel::default()
    };
    egress.create_channel(guild, &voice).await.unwrap();
    let forum = NewChannel {
        name: "Campaign Lore".into(),
        kind: Some(ChannelKind::Forum),
        parent: Some(category.id),
        tags: vec!["Location".into(), "NPC".into(), "A tag name that is far too long".into()],
        ..NewChannel::default()
    };
    egress.create_channel(guild, &forum).await.unwrap();

    let stored = fake.channels(guild);
    let cat = stored.iter().find(|c| c.id == category.id).unwrap();
    assert_eq!(cat.kind, 4);
    assert_eq!(overwrite_of(&cat.overwrites, guild), (0, VIEW_CHANNEL), "@everyone cannot see it");
    assert_eq!(overwrite_of(&cat.overwrites, members.id).0 & VIEW_CHANNEL, VIEW_CHANNEL);
    let lore = stored.iter().find(|c| c.name == "campaign-lore").unwrap();
    assert_eq!(lore.kind, 15);
    let tags: Vec<&str> = lore.tags.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(tags, ["Location", "NPC", "A tag name that is f"], "tag names cut to 20 characters");
    let listed = egress.list_channels(guild).await.unwrap();
    assert_eq!(listed.iter().filter(|c| c.parent == Some(category.id)).count(), 3);
    assert!(listed.iter().find(|c| c.id == recaps.id).unwrap().overwrites.contains(&private[0]));
    assert!(fake.violations().is_empty(), "{:?}", fake.take_violations());
}

#[tokio::test]
async fn deleting_twice_is_not_an_error_and_moving_changes_parent_and_overwrites() {
    let (fake, egress, guild) = setup(RateLimits::default()).await;
    let a = egress
        .create_channel(
            guild,
            &NewChannel { name: "A".into(), kind: Some(ChannelKind::Category), ..NewChannel::default() },
        )
        .await
        .unwrap();
    let b = egress
        .create_channel(
            guild,
            &NewChannel { name: "B".into(), kind: Some(ChannelKind::Category), ..NewChannel::default() },
        )
        .await
        .unwrap();
    let c = egress
        .create_channel(guild, &NewChannel { name: "c".into(), parent: Some(a.id), ..NewChannel::default() })
        .await
        .unwrap();
    let read_only = [Overwrite { target: Target::Role(guild), allow: 0, deny: SEND_MESSAGES }];
    let moved = egress.update_channel(c.id, Some(b.id), Some(&read_only)).await.unwrap();
    assert_eq!(moved.parent, Some(b.id));
    assert_eq!(moved.overwrites, read_only);
    assert!(egress.delete_channel(c.id).await.unwrap());
    assert!(!egress.delete_channel(c.id).await.unwrap(), "already gone");
    let role = egress.create_role(guild, "temp").await.unwrap();
    assert!(egress.delete_role(guild, role.id).await.unwrap());
    assert!(!egress.delete_role(guild, role.id).await.unwrap());
    assert!(egress.list_roles(guild).await.unwrap().iter().all(|r| r.id != role.id));
    assert!(fake.violations().is_empty());
}

#[tokio::test]
async fn many_channel_creates_are_paced_by_the_guild_bucket_without_a_single_429() {
    let rate_limits = RateLimits { guild_writes: Bucket::new(5, Duration::from_millis(500)), ..RateLimits::default() };
    let (fake, egress, guild) = setup(rate_limits).await;
    let start = std::time::Instant::now();
    for i in 0..15 {
        egress.create_channel(guild, &NewChannel { name: format!("c{i}"), ..NewChannel::default() }).await.unwrap();
    }
    assert_eq!(fake.rate_limited(), 0, "paced by the bucket headers, never refused");
    assert!(start.elapsed() >= Duration::from_millis(900), "15 creates at 5 per 500 ms take two windows");
    assert_eq!(fake.channels(guild).len(), 15);
}
