//! Identify pacing through the store, and answers to expired interactions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use den_core::{Clock, ManualClock, Secret, SystemClock};
use den_discord::gateway::StoreIdentifyQueue;
use den_discord::router::{Fallback, finish_interaction, finish_interaction_or};
use den_discord::{Ack, Egress, EgressConfig, InteractionRef};
use den_storage::sqlite::{SqliteOptions, SqliteStore};
use den_storage::{Store, TableSpec};
use den_testkit::{FakeConfig, FakeDiscord};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_sharing_a_store_never_identify_one_bucket_twice_in_5_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("den.db");
    // Two stores on one file stand for two gateway processes.
    let mut queues = Vec::new();
    let mut stores = Vec::new();
    for _ in 0..2 {
        let store = Arc::new(SqliteStore::open(&SqliteOptions::new(&path), Arc::new(SystemClock)).unwrap());
        let table = Store::table(&*store, TableSpec::new("discord_identify")).await.unwrap();
        queues.push(StoreIdentifyQueue::new(table, Arc::new(SystemClock), 2));
        stores.push(store);
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for shard in 0..4u32 {
        let q = queues[shard as usize % 2].clone();
        tasks.push(tokio::spawn(async move {
            q.acquire(shard).await;
            (shard, start.elapsed())
        }));
    }
    let mut grants = Vec::new();
    for t in tasks {
        grants.push(t.await.unwrap());
    }
    for bucket in 0..2 {
        let mut times: Vec<Duration> = grants.iter().filter(|(s, _)| s % 2 == bucket).map(|(_, t)| *t).collect();
        times.sort();
        assert_eq!(times.len(), 2);
        // The store's clock has millisecond resolution: allow 10 ms of rounding.
        assert!(
            times[1] - times[0] >= Duration::from_millis(4990),
            "bucket {bucket}: identifies {:?} apart",
            times[1] - times[0]
        );
    }
    let first_two: Vec<_> = grants.iter().filter(|(_, t)| *t < Duration::from_secs(1)).collect();
    assert_eq!(first_two.len(), 2, "max_concurrency 2: two shards identify at once");
}

/// A fake Discord with one guild, one member and one channel, and den's egress to it.
struct Tavern {
    fake: FakeDiscord,
    egress: Egress,
    user: u64,
    guild: u64,
    channel: u64,
}

impl Tavern {
    async fn open() -> Self {
        let fake = FakeDiscord::start(FakeConfig::default()).await.unwrap();
        let user = fake.add_user("ada");
        let guild = fake.add_guild("tavern", user);
        let channel = fake.add_text_channel(guild, "general");
        let config = EgressConfig {
            token: Some(Secret::new(fake.bot_token())),
            api_proxy: Some(fake.rest_addr()),
            timeout: Duration::from_secs(10),
        };
        let egress = Egress::new(&config, fake.app_id(), None);
        Self { fake, egress, user, guild, channel }
    }
}

#[tokio::test]
async fn a_job_finishing_after_the_token_expired_posts_in_the_channel() {
    let Tavern { fake, egress, user, guild, channel } = Tavern::open().await;
    let token = fake.invoke_command(user, channel, "status", &[]);
    let interaction = fake.interaction(&token).unwrap();
    egress.respond(interaction.id, &token, &Ack::Defer { ephemeral: false }).await.unwrap();
    let clock = ManualClock::new(SystemClock.now());
    let iref = InteractionRef {
        id: interaction.id,
        token: token.clone(),
        channel_id: Some(channel),
        guild_id: Some(guild),
        user_id: Some(user),
        created_at: clock.now(),
    };

    // Within 15 minutes: the original response is edited.
    finish_interaction(&egress, &clock, &iref, "first answer").await.unwrap();
    let original = fake.message(fake.interaction(&token).unwrap().original.unwrap()).unwrap();
    assert_eq!(original.content, "first answer");

    // A retry 20 minutes later: the token is dead, so den posts in the channel.
    clock.advance(Duration::from_secs(20 * 60));
    fake.advance(Duration::from_secs(20 * 60));
    let before = fake.requests().len();
    finish_interaction(&egress, &clock, &iref, "late answer").await.unwrap();
    let late: Vec<_> = fake.messages(channel).into_iter().filter(|m| m.content.ends_with("late answer")).collect();
    assert_eq!(late.len(), 1);
    assert!(late[0].pinged_users.is_empty(), "names the person without pinging");
    let ops: Vec<String> = fake.requests()[before..].iter().map(|r| r.operation.clone()).collect();
    assert_eq!(ops, ["create_message"], "no doomed call with the expired token");
}

/// Ingress enqueues a job before it acknowledges the interaction, so a fast
/// worker can finish before the acknowledgement lands: the answer waits for
/// the original response instead of taking the expired-token path.
#[tokio::test]
async fn a_worker_faster_than_the_acknowledgement_still_edits_the_original() {
    let Tavern { fake, egress, user, guild, channel } = Tavern::open().await;
    let egress = Arc::new(egress);
    for fallback in [Fallback::Channel, Fallback::Drop] {
        let token = fake.invoke_command(user, channel, "memories", &[]);
        let interaction = fake.interaction(&token).unwrap();
        let iref = InteractionRef {
            id: interaction.id,
            token: token.clone(),
            channel_id: Some(channel),
            guild_id: Some(guild),
            user_id: Some(user),
            created_at: SystemClock.now(),
        };
        let late_ack = {
            let (egress, token) = (egress.clone(), token.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                egress.respond(interaction.id, &token, &Ack::Defer { ephemeral: true }).await.unwrap();
            })
        };
        finish_interaction_or(&egress, &SystemClock, &iref, "private answer", fallback).await.unwrap();
        late_ack.await.unwrap();
        let original = fake.message(fake.interaction(&token).unwrap().original.unwrap()).unwrap();
        assert_eq!(original.content, "private answer", "{fallback:?}");
        assert!(fake.messages(channel).iter().all(|m| m.flags & 64 != 0 || !m.content.contains("private answer")));
    }
}

#[tokio::test]
async fn a_private_answer_is_dropped_not_posted_when_the_token_is_dead() {
    let Tavern { fake, egress, user, guild, channel } = Tavern::open().await;
    let token = fake.invoke_command(user, channel, "memories", &[]);
    let interaction = fake.interaction(&token).unwrap();
    egress.respond(interaction.id, &token, &Ack::Defer { ephemeral: true }).await.unwrap();
    let clock = ManualClock::new(SystemClock.now());
    let iref = InteractionRef {
        id: interaction.id,
        token,
        channel_id: Some(channel),
        guild_id: Some(guild),
        user_id: Some(user),
        created_at: clock.now(),
    };
    clock.advance(Duration::from_secs(20 * 60));
    fake.advance(Duration::from_secs(20 * 60));
    finish_interaction_or(&egress, &clock, &iref, "your secrets", Fallback::Drop).await.unwrap();
    assert!(fake.messages(channel).iter().all(|m| !m.content.contains("your secrets")));
}
