//! The gateway shard survives what Discord's gateway does to it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use den_core::{Clock, Job, Secret, SystemClock};
use den_discord::events::InboundMessage;
use den_discord::gateway::{Gateway, GatewayConfig, ShardStatus, StoreIdentifyQueue};
use den_discord::{Egress, EgressConfig, IngressCx, Module, Router};
use den_ops::Metrics;
use den_storage::sqlite::{SqliteOptions, SqliteStore};
use den_storage::{Queue, QueueSpec, Store, TableSpec};
use den_testkit::discord::GatewayMode;
use den_testkit::{FakeConfig, FakeDiscord, StoreFaults};
use den_worker::JobQueue;
use tokio_util::sync::CancellationToken;

/// Counts the messages it sees; wants bot messages when told to.
struct Counter {
    seen: AtomicUsize,
    wants_bots: bool,
}

#[async_trait]
impl Module for Counter {
    fn name(&self) -> &'static str {
        "counter"
    }
    fn wants_bot_messages(&self) -> bool {
        self.wants_bots
    }
    async fn on_message(&self, m: &InboundMessage, cx: &IngressCx) -> Vec<Job> {
        self.seen.fetch_add(1, Ordering::SeqCst);
        vec![Job::builder("counter.seen", cx.now).payload(serde_json::json!({"id": m.id})).build()]
    }
}

struct Rig {
    fake: FakeDiscord,
    channel: u64,
    user: u64,
    counter: Arc<Counter>,
    queue: Arc<dyn Queue>,
    status: ShardStatus,
    router: Arc<Router>,
    faults: StoreFaults,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), den_discord::gateway::FatalClose>>,
    _dir: tempfile::TempDir,
}

async fn rig(config: FakeConfig, wants_bots: bool) -> Rig {
    let fake = FakeDiscord::start(config).await.unwrap();
    let user = fake.add_user("ada");
    let guild = fake.add_guild("g", user);
    let channel = fake.add_text_channel(guild, "c");
    let dir = tempfile::tempdir().unwrap();
    let sqlite: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&SqliteOptions::new(dir.path().join("den.db")), Arc::new(SystemClock)).unwrap());
    let faults = StoreFaults::new();
    let store = faults.wrap(sqlite);
    let queue: Arc<dyn Queue> = store.queue();
    queue.create_queue(&QueueSpec::with_dlq("jobs")).await.unwrap();
    let counter = Arc::new(Counter { seen: AtomicUsize::new(0), wants_bots });
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let router = Arc::new(Router::new(
        vec![counter.clone()],
        JobQueue::new(queue.clone(), "jobs", Metrics::new()),
        clock.clone(),
        Metrics::new(),
    ));
    let egress = Arc::new(Egress::new(
        &EgressConfig {
            token: Some(Secret::new(fake.bot_token())),
            api_proxy: Some(fake.rest_addr()),
            timeout: Duration::from_secs(5),
        },
        fake.app_id(),
        None,
    ));
    let status = ShardStatus::default();
    let stop = CancellationToken::new();
    let gw = Gateway {
        config: GatewayConfig {
            token: Secret::new(fake.bot_token()),
            intents: den_discord::gateway::intents_from_names(&["guilds", "guild_messages", "message_content"])
                .unwrap_or(0),
            shards: 1,
            shard_ids: None,
            gateway_url: Some(fake.gateway_url()),
        },
        identify: StoreIdentifyQueue::new(store.table(TableSpec::new("identify")).await.unwrap(), clock, 1),
        sessions: store.table(TableSpec::new("sessions")).await.unwrap(),
        router: router.clone(),
        egress,
        status: status.clone(),
        senders: den_discord::gateway::ShardSenders::default(),
    };
    let task = tokio::spawn(gw.run(stop.clone()));
    let r = Rig { fake, channel, user, counter, queue, status, router, faults, stop, task, _dir: dir };
    wait(&r, "ready", |r| r.status.all_ready()).await;
    r
}

async fn wait(r: &Rig, what: &str, check: impl Fn(&Rig) -> bool) {
    for _ in 0..1200 {
        if check(r) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn jobs(r: &Rig) -> u64 {
    r.queue.depth("jobs").await.unwrap().total()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_heartbeats_go_unanswered_is_replaced_and_resumed() {
    let r = rig(FakeConfig { heartbeat_interval: Duration::from_millis(300), ..FakeConfig::default() }, false).await;
    r.fake.gateway_withhold_acks(true);
    // Two heartbeats without an ACK: twilight closes the zombie and resumes.
    wait(&r, "a resume", |r| r.fake.resumes() >= 1).await;
    r.fake.gateway_withhold_acks(false);
    r.fake.post_as(r.user, r.channel, "after the zombie");
    wait(&r, "the message", |r| r.counter.seen.load(Ordering::SeqCst) == 1).await;
    assert_eq!(r.fake.identifies().len(), 1);
    r.stop.cancel();
    r.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_resumes_and_invalid_session_identifies_again() {
    let r = rig(FakeConfig::default(), false).await;
    r.fake.gateway_reconnect();
    wait(&r, "a resume after RECONNECT", |r| r.fake.resumes() >= 1).await;
    r.fake.gateway_invalidate(false);
    wait(&r, "a fresh identify after INVALID_SESSION", |r| r.fake.identifies().len() == 2).await;
    wait(&r, "ready again", |r| r.status.all_ready() && r.fake.connected_sessions() == 1).await;
    r.fake.post_as(r.user, r.channel, "hello");
    wait(&r, "the message", |r| r.counter.seen.load(Ordering::SeqCst) == 1).await;
    for _ in 0..100 {
        if jobs(&r).await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(jobs(&r).await, 1, "its job was enqueued once");
    r.stop.cancel();
    r.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bot_messages_reach_only_modules_that_ask_and_dens_own_never() {
    for wants_bots in [false, true] {
        let r = rig(FakeConfig::default(), wants_bots).await;
        let bot = r.fake.add_bot_user("otherbot");
        r.fake.post_as(bot, r.channel, "from another bot");
        r.fake.post_as(r.fake.bot_user_id(), r.channel, "from den itself");
        r.fake.post_as(r.user, r.channel, "from a person");
        let expected = if wants_bots { 2 } else { 1 };
        wait(&r, "the person's message", |r| r.counter.seen.load(Ordering::SeqCst) >= 1).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(r.counter.seen.load(Ordering::SeqCst), expected, "wants_bots = {wants_bots}");
        r.stop.cancel();
        r.task.await.unwrap().unwrap();
    }
}

/// Every message's job is in the queue exactly once.
async fn assert_each_message_enqueued_once(r: &Rig, messages: &[u64]) {
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = r.queue.peek("jobs", 100, after.as_deref()).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.message_id.clone());
        for m in &page {
            let job: Job = serde_json::from_str(&m.body).unwrap();
            seen.push(job.payload["id"].as_u64().unwrap());
        }
    }
    seen.sort_unstable();
    let mut want = messages.to_vec();
    want.sort_unstable();
    assert_eq!(seen, want, "each message's job, once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_accepts_and_closes_gets_a_handful_of_connections_not_a_storm() {
    // A proxy that accepts and drops, and a gateway that closes with 4008 (rate limited).
    let runs = [None, Some(4008)].map(|code| {
        tokio::spawn(async move {
            let r = rig(FakeConfig::default(), false).await;
            r.fake.gateway_mode(GatewayMode::AcceptAndClose(code));
            r.fake.gateway_drop_connections();
            let before = r.fake.gateway_connections();
            tokio::time::sleep(Duration::from_secs(10)).await;
            let made = r.fake.gateway_connections() - before;
            r.stop.cancel();
            r.task.await.unwrap().unwrap();
            (code, made)
        })
    });
    for run in runs {
        let (code, made) = run.await.unwrap();
        // Backoff doubling from 0.5-1 s: about five in 10 s (twilight's loop made ~8,500).
        assert!((2..=8).contains(&made), "close {code:?}: {made} connections in 10 s");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_fails_within_a_heartbeat_interval_while_the_gateway_is_unreachable_and_recovers() {
    let r = rig(FakeConfig { heartbeat_interval: Duration::from_millis(500), ..FakeConfig::default() }, false).await;
    assert!(r.status.all_ready());
    r.fake.gateway_mode(GatewayMode::AcceptAndClose(None));
    r.fake.gateway_withhold_acks(true);
    let down = std::time::Instant::now();
    wait(&r, "not ready", |r| !r.status.all_ready()).await;
    assert!(down.elapsed() < Duration::from_millis(1500), "noticed after {:?}", down.elapsed());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!r.status.all_ready(), "still down: {:?}", r.status.states());
    r.fake.gateway_withhold_acks(false);
    r.fake.gateway_mode(GatewayMode::Normal);
    wait(&r, "ready again", |r| r.status.all_ready()).await;
    assert!(r.fake.resumes() >= 1, "the session was resumed");
    r.stop.cancel();
    r.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_connection_says_who_it_is_with_a_user_agent() {
    let r = rig(FakeConfig::default(), false).await;
    let agents = r.fake.gateway_user_agents();
    assert!(!agents.is_empty());
    for agent in agents {
        let agent = agent.expect("a User-Agent header");
        assert!(agent.starts_with("DiscordBot (") && agent.contains("den"), "{agent}");
    }
    r.stop.cancel();
    r.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_message_is_lost_or_doubled_while_enqueueing_fails_for_a_while() {
    let r = rig(FakeConfig::default(), false).await;
    r.faults.fail_sends(true);
    let sent: Vec<u64> = (0..20).map(|i| r.fake.post_as(r.user, r.channel, &format!("m{i}"))).collect();
    wait(&r, "enqueue failures", |r| r.faults.refused() >= 20).await;
    assert!(r.router.enqueue_failing_for().is_some(), "ingress reports it cannot enqueue");
    r.faults.fail_sends(false);
    for _ in 0..600 {
        if jobs(&r).await >= 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_each_message_enqueued_once(&r, &sent).await;
    assert!(r.router.enqueue_failing_for().is_none());
    r.stop.cancel();
    r.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_outage_stops_the_shard_reading_and_discord_replays_what_it_missed() {
    let r = rig(FakeConfig::default(), false).await;
    r.faults.fail_sends(true);
    // More than the 64 events a shard routes at once.
    let sent: Vec<u64> = (0..150).map(|i| r.fake.post_as(r.user, r.channel, &format!("m{i}"))).collect();
    wait(&r, "the shard stops reading", |r| r.status.states().values().any(|s| *s == "backpressured")).await;
    assert!(!r.status.all_ready());
    tokio::time::sleep(Duration::from_secs(1)).await;
    r.faults.fail_sends(false);
    wait(&r, "ready again", |r| r.status.all_ready()).await;
    for _ in 0..600 {
        if jobs(&r).await >= 150 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(r.fake.resumes() >= 1, "resumed: Discord replayed the events den had not taken");
    assert_each_message_enqueued_once(&r, &sent).await;
    r.stop.cancel();
    r.task.await.unwrap().unwrap();
}
