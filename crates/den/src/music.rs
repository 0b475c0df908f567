//! The music module from config: in a process that holds gateway shards, a
//! player on songbird drivers fed by den's gateway; elsewhere, only the part
//! that reads commands and queues them for such a process.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use den_discord::gateway::ShardSenders;
use den_music::tables::Tables;
use den_music::voice::{GatewayCommands, Voice};
use den_music::{MusicModule, handle, library, player, queue, settings, sources};
use den_worker::JobQueue;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::roles::ModuleCx;

/// Sends voice state updates on den's own shards.
struct Shards(ShardSenders);

impl GatewayCommands for Shards {
    fn send(&self, guild: u64, frame: Value) -> bool {
        self.0.send(guild, frame)
    }

    fn holds(&self, guild: u64) -> bool {
        self.0.holds(guild)
    }
}

/// Music's own queue, for the router and the pool that plays.
#[must_use]
pub fn jobs(cx: &ModuleCx<'_>) -> JobQueue {
    JobQueue::new(cx.queue.clone(), den_music::QUEUE, cx.metrics.clone())
}

/// The module; `shards` is `Some` in a process that runs the gateway (it plays there).
pub async fn module(
    cx: &ModuleCx<'_>,
    shards: Option<&ShardSenders>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Arc<MusicModule>> {
    cx.queue.create_queue(&den_music::queue_spec()).await.context("cannot create the music queue")?;
    let Some(shards) = shards else { return Ok(MusicModule::ingress_only(cx.clock.clone())) };
    let c = &cx.config.music;
    let library = match &c.library {
        Some(path) => {
            let path = path.clone();
            let opened = tokio::task::spawn_blocking(move || library::Library::open(&path)).await?;
            let library = opened.context("[music] library")?;
            tracing::info!(files = library.len(), "music library indexed");
            Some(Arc::new(library))
        }
        None => None,
    };
    let (voice, notices) =
        Voice::new(Arc::new(Shards(shards.clone())), songbird::Config::default(), cx.metrics.clone());
    voice.set_me(cx.egress.bot_user_id());
    let tables = Tables::open(cx.store.as_ref(), cx.clock.clone(), cx.metrics.clone()).await?;
    let player = player::Player::start(
        voice,
        notices,
        tables,
        if c.ytdlp {
            sources::Sources::new(library, c.allow_private_urls).with_ytdlp(&c.ytdlp_path)
        } else {
            sources::Sources::new(library, c.allow_private_urls)
        },
        cx.egress.clone(),
        cx.metrics.clone(),
        Duration::from_secs(c.leave_after_secs),
        shutdown.clone(),
    );
    let access =
        handle::Access { allowlist: c.allowlist, operators: c.operators.clone(), operator_guild: c.operator_guild };
    let music = handle::Music::new(player, cx.egress.clone(), cx.clock.clone(), jobs(cx), cx.metrics.clone(), access);
    let module = MusicModule::playing(cx.clock.clone(), jobs(cx), music);
    tokio::spawn(resume_when_started(module.clone(), shards.clone(), shutdown.clone()));
    Ok(module)
}

/// Once the shards start, resumes the queues that were playing when the
/// process last stopped (a resumed gateway session sends no GUILD_CREATE).
async fn resume_when_started(module: Arc<MusicModule>, shards: ShardSenders, shutdown: CancellationToken) {
    while !shards.started() {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    match module.resume_active().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(servers = n, "resuming music that was playing"),
        Err(e) => tracing::warn!(error = %e, "could not look for music to resume"),
    }
}

/// `den music ...`
pub async fn command(command: crate::cli::MusicCommand, c: &crate::config::Config) -> anyhow::Result<()> {
    use crate::cli::MusicCommand;
    if let MusicCommand::Search { words } = command {
        let path = c.music.library.clone().context("[music] library is not set")?;
        let library = tokio::task::spawn_blocking(move || library::Library::open(&path)).await??;
        println!("{} files indexed", library.len());
        for track in library.search(&words, 5) {
            println!("{}", track.label());
        }
        return Ok(());
    }
    let store = crate::roles::open_store(c).await?;
    let policies = settings::Policies::new(store.table(queue::table_spec()).await?);
    let result = async {
        match command {
            MusicCommand::Allow { guild } => {
                let new =
                    policies.allow(guild, "den music allow", den_core::Clock::now(&den_core::SystemClock)).await?;
                println!("server {guild} {}", if new { "may use music now" } else { "was already approved" });
            }
            MusicCommand::Revoke { guild } => {
                let was = policies.revoke(guild).await?;
                println!("server {guild} {}", if was { "may no longer use music" } else { "was not approved" });
            }
            MusicCommand::List => {
                for (guild, by) in policies.allowlist().await? {
                    println!("{guild}\t{by}");
                }
                if !c.music.allowlist {
                    println!("(the allowlist is off: every server may use music; set [music] allowlist = true)");
                }
            }
            MusicCommand::Search { .. } => unreachable!("handled above"),
        }
        anyhow::Ok(())
    }
    .await;
    store.close().await?;
    result
}
