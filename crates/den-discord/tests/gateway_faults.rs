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
use den_testkit::{FakeConfig, FakeDiscord};
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
    let store =
        Arc::new(SqliteStore::open(&SqliteOptions::new(dir.path().join("den.db")), Arc::new(SystemClock)).unwrap());
    let queue: Arc<dyn Queue> = Arc::new(store.queue());
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
        identify: StoreIdentifyQueue::new(Store::table(&*store, TableSpec::new("identify")).await.unwrap(), clock, 1),
        sessions: Store::table(&*store, TableSpec::new("sessions")).await.unwrap(),
        router,
        egress,
        status: status.clone(),
    };
    let task = tokio::spawn(gw.run(stop.clone()));
    let r = Rig { fake, channel, user, counter, queue, status, stop, task, _dir: dir };
    wait(&r, "ready", |r| r.status.all_ready()).await;
    r
}

async fn wait(r: &Rig, what: &str, check: impl Fn(&Rig) -> bool) {
    for _ in 0..400 {
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
        r.fake.post_as(r.fake.app_id(), r.channel, "from den itself");
        r.fake.post_as(r.user, r.channel, "from a person");
        let expected = if wants_bots { 2 } else { 1 };
        wait(&r, "the person's message", |r| r.counter.seen.load(Ordering::SeqCst) >= 1).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(r.counter.seen.load(Ordering::SeqCst), expected, "wants_bots = {wants_bots}");
        r.stop.cancel();
        r.task.await.unwrap().unwrap();
    }
}
