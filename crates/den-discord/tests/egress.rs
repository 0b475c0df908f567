//! Egress against the fake Discord: every request is checked against the OpenAPI spec.

use std::time::{Duration, Instant};

use den_core::Secret;
use den_discord::{Ack, Egress, EgressConfig, Identity};
use den_testkit::discord::{Bucket, FakeConfig, FakeDiscord, Injected, RateLimits};

struct World {
    fake: FakeDiscord,
    egress: Egress,
    guild: u64,
    channel: u64,
    user: u64,
}

async fn world(rate_limits: RateLimits) -> World {
    let fake = FakeDiscord::start(FakeConfig { rate_limits, ..FakeConfig::default() }).await.unwrap();
    let user = fake.add_user("ada");
    let guild = fake.add_guild("tavern", user);
    let channel = fake.add_text_channel(guild, "general");
    let config = EgressConfig {
        token: Some(Secret::new(fake.bot_token())),
        api_proxy: Some(fake.rest_addr()),
        timeout: Duration::from_secs(10),
    };
    let egress = Egress::new(&config, fake.app_id(), None);
    World { fake, egress, guild, channel, user }
}

#[tokio::test]
async fn long_text_is_split_into_messages_of_at_most_2000_characters() {
    let w = world(RateLimits::unlimited()).await;
    let text: String = (0..300).map(|i| format!("Line {i} of a long answer.\n")).collect();
    let ids = w.egress.send_text(w.channel, &text, None).await.unwrap();
    let posted = w.fake.messages(w.channel);
    assert_eq!(posted.len(), ids.len());
    assert!(posted.len() >= 4);
    assert!(posted.iter().all(|m| m.content.chars().count() <= 2000));
    assert_eq!(posted.iter().map(|m| m.content.lines().count()).sum::<usize>(), 300);
}

#[tokio::test]
async fn nothing_den_posts_pings_anyone() {
    let w = world(RateLimits::unlimited()).await;
    let text = format!("hey <@{}> and @everyone and @here", w.user);
    w.egress.send_text(w.channel, &text, None).await.unwrap();
    w.egress.send_as(w.channel, &Identity { name: "Gran".into(), avatar_url: None }, &text).await.unwrap();
    for m in w.fake.messages(w.channel) {
        assert!(m.pinged_users.is_empty() && !m.pinged_everyone, "{m:?}");
    }
}

#[tokio::test]
async fn two_hundred_messages_to_one_channel_get_no_429() {
    let limits = RateLimits { channel_messages: Bucket::new(50, Duration::from_secs(1)), ..RateLimits::default() };
    let w = world(limits).await;
    let start = Instant::now();
    for i in 0..200 {
        w.egress.send_text(w.channel, &format!("message {i}"), None).await.unwrap();
    }
    assert_eq!(w.fake.messages(w.channel).len(), 200);
    assert_eq!(w.fake.rate_limited(), 0, "the limiter waited instead of hitting 429s");
    assert!(
        start.elapsed() >= Duration::from_secs(3),
        "200 at 50/s cannot take under 3 s: the limiter really paced them"
    );
}

#[tokio::test]
async fn an_injected_429_is_obeyed_and_a_500_is_retried() {
    let w = world(RateLimits::unlimited()).await;
    w.fake.inject("create_message", Injected::RateLimited(Duration::from_millis(600)));
    let start = Instant::now();
    w.egress.send_text(w.channel, "after the wait", None).await.unwrap();
    assert!(start.elapsed() >= Duration::from_millis(600), "waited for retry_after");
    assert_eq!(w.fake.rate_limited(), 1);
    w.fake.inject("create_message", Injected::Status(500));
    w.egress.send_text(w.channel, "after a 500", None).await.unwrap();
    let contents: Vec<String> = w.fake.messages(w.channel).into_iter().map(|m| m.content).collect();
    assert_eq!(contents, ["after the wait", "after a 500"], "each sent once");
}

#[tokio::test]
async fn a_persona_posts_through_one_reused_webhook_under_its_own_name() {
    let w = world(RateLimits::unlimited()).await;
    let gran = Identity { name: "Grumpy Gran".into(), avatar_url: Some("https://example.com/gran.png".into()) };
    let bot = Identity { name: "Discord Clyde".into(), avatar_url: None };
    w.egress.send_as(w.channel, &gran, "back in my day").await.unwrap();
    w.egress.send_as(w.channel, &bot, "beep").await.unwrap();
    assert_eq!(w.fake.webhooks(w.channel).len(), 1, "one den webhook per channel");
    let posted = w.fake.messages(w.channel);
    assert_eq!(posted[0].author_name, "Grumpy Gran");
    assert_eq!(posted[0].author_avatar.as_deref(), Some("https://example.com/gran.png"));
    assert!(posted[0].webhook_id.is_some());
    let lower = posted[1].author_name.to_lowercase();
    assert!(!lower.contains("discord") && !lower.contains("clyde"));

    let id = posted[0].id;
    w.egress.edit_as(w.channel, id, "back in MY day").await.unwrap();
    assert_eq!(w.fake.message(id).unwrap().content, "back in MY day");
}

#[tokio::test]
async fn a_deleted_webhook_is_recreated() {
    let w = world(RateLimits::unlimited()).await;
    let gran = Identity { name: "Gran".into(), avatar_url: None };
    w.egress.send_as(w.channel, &gran, "one").await.unwrap();
    let first = w.fake.webhooks(w.channel)[0].id;
    // Someone deletes it in the server settings.
    let client = reqwest::Client::new();
    let url = format!("http://{}/api/v10/webhooks/{first}", w.fake.rest_addr());
    let r = client.delete(url).header("authorization", format!("Bot {}", w.fake.bot_token())).send().await.unwrap();
    assert_eq!(r.status(), 204);
    w.egress.send_as(w.channel, &gran, "two").await.unwrap();
    let hooks = w.fake.webhooks(w.channel);
    assert_eq!(hooks.len(), 1);
    assert_ne!(hooks[0].id, first);
    assert_eq!(w.fake.messages(w.channel).iter().filter(|m| m.webhook_id.is_some()).count(), 2);
}

#[tokio::test]
async fn an_interaction_is_deferred_then_edited_and_followed_up() {
    let w = world(RateLimits::default()).await;
    let token = w.fake.invoke_command(w.user, w.channel, "status", &[]);
    let interaction = w.fake.interaction(&token).unwrap();
    w.egress.respond(interaction.id, &token, &Ack::Defer { ephemeral: true }).await.unwrap();
    w.egress.edit_original(&token, "all good").await.unwrap();
    w.egress.followup(&token, "one more thing", true).await.unwrap();
    let i = w.fake.interaction(&token).unwrap();
    assert_eq!(i.callback.as_ref().unwrap().0, 5);
    assert_eq!(i.callback.as_ref().unwrap().1["flags"], 64);
    assert_eq!(w.fake.message(i.original.unwrap()).unwrap().content, "all good");
    assert_eq!(i.followups.len(), 1);
    let _ = w.guild;
}

#[tokio::test]
async fn an_expired_interaction_token_is_reported_as_unauthorized() {
    let w = world(RateLimits::default()).await;
    let token = w.fake.invoke_command(w.user, w.channel, "status", &[]);
    let id = w.fake.interaction(&token).unwrap().id;
    w.egress.respond(id, &token, &Ack::Defer { ephemeral: false }).await.unwrap();
    w.fake.advance(Duration::from_secs(16 * 60));
    let err = w.egress.edit_original(&token, "too late").await.unwrap_err();
    assert_eq!(err.kind(), den_discord::DiscordErrorKind::Unauthorized, "{err}");
}

#[tokio::test]
async fn replies_racing_into_a_fresh_channel_share_one_webhook() {
    let w = world(RateLimits::unlimited()).await;
    let egress = std::sync::Arc::new(w.egress);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (egress, channel) = (egress.clone(), w.channel);
        tasks.push(tokio::spawn(async move {
            let who = Identity { name: format!("persona {i}"), avatar_url: None };
            egress.send_as(channel, &who, "hello").await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(w.fake.webhooks(w.channel).len(), 1);
    assert_eq!(w.fake.messages(w.channel).len(), 8);
}

fn requests_of(fake: &FakeDiscord, op: &str) -> usize {
    fake.requests().iter().filter(|r| r.operation == op).count()
}

#[tokio::test]
async fn a_message_whose_answer_was_lost_is_posted_once() {
    for fault in [Injected::DropAfterCommit, Injected::StatusAfterCommit(502)] {
        let w = world(RateLimits::unlimited()).await;
        w.fake.inject("create_message", fault);
        let ids = w.egress.send_text(w.channel, "only once", None).await.unwrap();
        let posted = w.fake.messages(w.channel);
        assert_eq!(requests_of(&w.fake, "create_message"), 2, "{fault:?}: the POST was retried");
        assert_eq!(posted.len(), 1, "{fault:?}: Discord's enforced nonce answered the first message");
        assert_eq!(ids, vec![posted[0].id]);
    }
}

#[tokio::test]
async fn a_webhook_post_whose_answer_was_lost_is_found_not_posted_again() {
    for fault in [Injected::DropAfterCommit, Injected::StatusAfterCommit(500)] {
        let w = world(RateLimits::unlimited()).await;
        let gran = Identity { name: "Gran".into(), avatar_url: None };
        w.egress.send_as(w.channel, &gran, "warming up").await.unwrap();
        w.fake.inject("execute_webhook", fault);
        let ids = w.egress.send_as(w.channel, &gran, "said once").await.unwrap();
        let said: Vec<_> = w.fake.messages(w.channel).into_iter().filter(|m| m.content == "said once").collect();
        assert_eq!(said.len(), 1, "{fault:?}");
        assert_eq!(ids, vec![said[0].id]);
        assert_eq!(requests_of(&w.fake, "execute_webhook"), 2, "{fault:?}: not sent a third time");
    }
}

#[tokio::test]
async fn an_acknowledgement_is_not_retried_past_discords_three_seconds() {
    let w = world(RateLimits::default()).await;
    let token = w.fake.invoke_command(w.user, w.channel, "status", &[]);
    let id = w.fake.interaction(&token).unwrap().id;
    for _ in 0..10 {
        w.fake.inject("create_interaction_response", Injected::Status(500));
    }
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let err = w.egress.respond_by(id, &token, &Ack::Defer { ephemeral: false }, deadline).await.unwrap_err();
    assert_eq!(err.kind(), den_discord::DiscordErrorKind::Server);
    assert!(start.elapsed() < Duration::from_secs(3), "gave up after {:?}", start.elapsed());
    let tries = requests_of(&w.fake, "create_interaction_response");
    assert!((3..=5).contains(&tries), "{tries} tries within the window");
}

#[tokio::test]
async fn an_acknowledgement_whose_answer_was_lost_counts_as_sent() {
    let w = world(RateLimits::default()).await;
    let token = w.fake.invoke_command(w.user, w.channel, "status", &[]);
    let id = w.fake.interaction(&token).unwrap().id;
    w.fake.inject("create_interaction_response", Injected::DropAfterCommit);
    w.egress.respond(id, &token, &Ack::Defer { ephemeral: false }).await.unwrap();
    assert_eq!(w.fake.interaction(&token).unwrap().callback.unwrap().0, 5);
}
