//! `den-bench campaign`: the default campaign template built against the
//! fake Discord with its Discord-like rate limits, next to the least time
//! those limits allow any client.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use den_campaigns::plan::{self, Gm, Plan, Plans};
use den_campaigns::template::Template;
use den_core::{Secret, SystemClock};
use den_discord::{Egress, EgressConfig};
use den_storage::Store;
use den_storage::sqlite::{SqliteOptions, SqliteStore};
use den_testkit::discord::RateLimits;
use den_testkit::{FakeConfig, FakeDiscord};
use serde_json::json;

/// Options of `campaign`.
#[derive(Debug, clap::Args)]
pub struct CampaignOptions {
    /// Campaigns to build, one after another (each in its own guild).
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

pub fn run(o: &CampaignOptions) -> anyhow::Result<serde_json::Value> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let limits = RateLimits::default();
        let bucket = limits.guild_writes;
        let fake = FakeDiscord::start(FakeConfig { rate_limits: limits, ..FakeConfig::default() }).await?;
        let config = EgressConfig {
            token: Some(Secret::new(fake.bot_token())),
            api_proxy: Some(fake.rest_addr()),
            timeout: Duration::from_secs(10),
        };
        let egress = Arc::new(Egress::new(&config, fake.app_id(), None));
        let dir = tempfile::tempdir()?;
        let store = SqliteStore::open(&SqliteOptions::new(dir.path().join("den.db")), Arc::new(SystemClock))?;
        let plans = Plans::new(Store::table(&store, plan::table_spec()).await?);
        let template = Template::default_template();
        let mut runs = Vec::new();
        for r in 0..o.runs.max(1) {
            let owner = fake.add_user("gm");
            let guild = fake.add_guild(&format!("g{r}"), owner);
            let status_channel = fake.add_text_channel(guild, "status");
            let p = Plan::new(guild, "Dragonfall", Gm::Role, &template, den_core::Timestamp(0));
            let writes = p.steps.len();
            anyhow::ensure!(plans.create(&p).await?, "plan exists");
            let (p, v) = plans.get(guild, "Dragonfall").await?.ok_or_else(|| anyhow::anyhow!("plan vanished"))?;
            // Progress as the module draws it: a reporter edits at most once a second, apart from the building.
            let progress_msg = egress.send_text(status_channel, "🏗️ starting", None).await?[0];
            let latest: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
            let stop = tokio_util::sync::CancellationToken::new();
            let edits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let reporter = {
                let (latest, stop, egress, edits) = (latest.clone(), stop.clone(), egress.clone(), edits.clone());
                tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            () = stop.cancelled() => break,
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                        let text = latest.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
                        if let Some(t) = text
                            && egress.edit_text(status_channel, progress_msg, &t).await.is_ok()
                        {
                            edits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                })
            };
            let report = |p: &Plan, last: &str| {
                *latest.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(plan::progress_text(p, last));
            };
            let limited_before = fake.rate_limited();
            let start = Instant::now();
            let builder = den_campaigns::build::Builder {
                egress: &egress,
                plans: &plans,
                bot: fake.bot_user_id(),
                clock: &den_core::SystemClock,
                progress: &report,
            };
            builder.run(p, v, None).await?;
            let wall = start.elapsed().as_secs_f64();
            stop.cancel();
            reporter.await?;
            // The least time any client could take: every full bucket of guild writes but the first waits a window.

            let windows = writes.div_ceil(bucket.limit as usize).saturating_sub(1);
            let floor = windows as f64 * bucket.window.as_secs_f64();
            runs.push(json!({
                "guild_writes": writes, "wall_seconds": wall, "floor_seconds": floor,
                "over_floor_ms": ((wall - floor) * 1000.0).round(),
                "discord_429s": fake.rate_limited() - limited_before,
                "progress_edits": edits.load(std::sync::atomic::Ordering::Relaxed),
            }));
        }
        anyhow::ensure!(fake.violations().is_empty(), "spec violations: {:?}", fake.violations());
        Ok(json!({
            "scenario": "campaign",
            "what": "the default template (2 roles, a category, 7 text, 1 voice, 3 forum channels) built by den-campaigns' \
                     idempotent builder against the fake with Discord-like limits (guild writes 10 per 10 s), a progress \
                     reporter editing a message once a second beside it; the floor is what those limits allow any client",
            "runs": runs,
            "target": "wall within 10% of the floor + 200 ms, zero 429s; the original bot took 10-15 s",
        }))
    })
}
