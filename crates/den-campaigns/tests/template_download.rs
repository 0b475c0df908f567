//! `/campaign-template` downloads: only from Discord's hosts (checked again by
//! the worker), no redirect away from them, and never more than 64 KiB read.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::response::Redirect;
use axum::routing::get;
use den_campaigns::plan::{self, Plans};
use den_campaigns::{CampaignsModule, IMPORT};
use den_core::{Job, Secret, SystemClock};
use den_discord::{Ack, Egress, EgressConfig, InteractionRef, Module};
use den_storage::Store;
use den_storage::sqlite::{SqliteOptions, SqliteStore};
use den_testkit::{FakeConfig, FakeDiscord};
use den_worker::JobContext;
use serde_json::json;

const TEMPLATE: &str = "name = \"heist\"\n[[channel]]\nname = \"planning\"\n";

/// Serves attachments on 127.0.0.1; counts the template requests it got.
async fn host(redirect_to: Option<String>) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let template = move || {
        counted.fetch_add(1, Ordering::SeqCst);
        async { TEMPLATE }
    };
    let big = || async {
        // A megabyte, sent in pieces without a Content-Length.
        let chunks = (0..256).map(|_| Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![b'#'; 4096])));
        axum::body::Body::from_stream(futures_util::stream::iter(chunks))
    };
    let to = redirect_to.unwrap_or_default();
    let app = axum::Router::new()
        .route("/attachments/1/heist.toml", get(template))
        .route("/attachments/2/big.toml", get(big))
        .route("/attachments/3/away.toml", get(move || async move { Redirect::temporary(&to) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, hits)
}

struct Rig {
    fake: FakeDiscord,
    module: Arc<CampaignsModule>,
    plans: Plans,
    user: u64,
    guild: u64,
    channel: u64,
    _dir: tempfile::TempDir,
}

async fn rig(allowed: Vec<String>) -> Rig {
    let fake = FakeDiscord::start(FakeConfig::default()).await.unwrap();
    let user = fake.add_user("ada");
    let guild = fake.add_guild("tavern", user);
    let channel = fake.add_text_channel(guild, "general");
    let config = EgressConfig {
        token: Some(Secret::new(fake.bot_token())),
        api_proxy: Some(fake.rest_addr()),
        timeout: Duration::from_secs(10),
    };
    let egress = Arc::new(Egress::new(&config, fake.app_id(), None));
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&SqliteOptions::new(dir.path().join("den.db")), Arc::new(SystemClock)).unwrap();
    let plans = Plans::new(Store::table(&store, plan::table_spec()).await.unwrap());
    let module = CampaignsModule::new(egress, plans.clone(), Arc::new(SystemClock), vec![], None, allowed);
    Rig { fake, module, plans, user, guild, channel, _dir: dir }
}

/// Runs the import job for `url` as a worker would; what the person was told.
async fn import(r: &Rig, url: &str, filename: &str) -> String {
    let token = r.fake.invoke_command(r.user, r.channel, "campaign-template", &[]);
    let i = r.fake.interaction(&token).unwrap();
    let egress = Egress::new(
        &EgressConfig { token: None, api_proxy: Some(r.fake.rest_addr()), timeout: Duration::from_secs(5) },
        r.fake.app_id(),
        None,
    );
    egress.respond(i.id, &token, &Ack::Defer { ephemeral: true }).await.unwrap();
    let iref = InteractionRef {
        id: i.id,
        token: token.clone(),
        channel_id: Some(r.channel),
        guild_id: Some(r.guild),
        user_id: Some(r.user),
        created_at: den_core::Clock::now(&SystemClock),
    };
    let job = Job::builder(IMPORT, den_core::Clock::now(&SystemClock))
        .payload(json!({"interaction": iref, "url": url, "filename": filename}))
        .build();
    let handlers = r.module.clone().handlers();
    let handler = &handlers.iter().find(|(k, _)| k == IMPORT).unwrap().1;
    handler.run(&job, &JobContext { cancelled: Default::default() }).await.unwrap();
    let original = r.fake.interaction(&token).unwrap().original.unwrap();
    r.fake.message(original).unwrap().content
}

#[tokio::test]
async fn a_template_from_an_allowed_host_is_saved() {
    let (addr, hits) = host(None).await;
    let r = rig(vec![addr.clone()]).await;
    let said = import(&r, &format!("http://{addr}/attachments/1/heist.toml"), "heist.toml").await;
    assert!(said.contains("Template saved"), "{said}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert!(r.plans.template(r.guild, "heist").await.unwrap().is_some());
}

#[tokio::test]
async fn the_worker_refuses_a_host_ingress_would_have_refused_without_fetching() {
    let (addr, hits) = host(None).await;
    let r = rig(vec![]).await;
    let said = import(&r, &format!("http://{addr}/attachments/1/heist.toml"), "heist.toml").await;
    assert!(said.contains("only downloads attachments from Discord"), "{said}");
    assert_eq!(hits.load(Ordering::SeqCst), 0, "nothing was fetched");
}

#[tokio::test]
async fn a_redirect_away_from_discords_hosts_is_not_followed() {
    let (elsewhere, elsewhere_hits) = host(None).await;
    let (addr, _) = host(Some(format!("http://{elsewhere}/attachments/1/heist.toml"))).await;
    let r = rig(vec![addr.clone()]).await;
    let said = import(&r, &format!("http://{addr}/attachments/3/away.toml"), "away.toml").await;
    assert!(said.contains("redirects away from Discord"), "{said}");
    assert_eq!(elsewhere_hits.load(Ordering::SeqCst), 0, "the other host was never asked");
}

#[tokio::test]
async fn a_body_over_64_kib_is_refused_without_reading_it_all() {
    let (addr, _) = host(None).await;
    let r = rig(vec![addr.clone()]).await;
    let said = import(&r, &format!("http://{addr}/attachments/2/big.toml"), "big.toml").await;
    assert!(said.contains("over 65536 bytes"), "{said}");
}
