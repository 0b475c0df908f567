//! Music: TimmyBot as a den module.
//!
//! Each server has a queue in den's `music` table (what plays, what comes
//! next, where in the track, how it loops, which voice channel). Playback
//! lives in the process that holds the server's gateway shard, because only
//! that process can send Discord the voice state updates a voice connection
//! needs: music's jobs go on a queue of their own (`music`) that only such
//! processes consume, wherever the command arrived (gateway or HTTP
//! interactions). A restarted gateway process resumes each server's queue
//! from the store when Discord says the server is available again.
//!
//! - [`commands`]: slash commands, buttons and `!` messages read into a [`commands::Command`].
//! - [`handle`]: running a command against the queue and the player.
//! - [`queue`]: the stored queue and what can be done to it.
//! - [`settings`]: a server's music settings, who may do what, the operator's allowlist.
//! - [`prefs`]: people's own preferences and playlists; [`cache`]: resolved requests; [`tables`]: all of them.
//! - [`player`]: the queue made audible on the driver.
//! - [`voice`]: voice connections over den's gateway (songbird, DAVE on).
//! - [`sources`], [`library`], [`track`]: what plays and where it comes from.

pub mod cache;
pub mod commands;
pub mod handle;
pub mod library;
pub mod player;
pub mod prefs;
pub mod queue;
pub mod settings;
pub mod sources;
pub mod tables;
pub mod track;
pub mod voice;

use std::sync::Arc;

use async_trait::async_trait;
use den_core::{Clock, Job};
use den_discord::events::{InboundInteraction, InboundMessage, VoiceEvent};
use den_discord::{CommandSpec, IngressCx, Module, Reaction};
use den_worker::{JobHandler, JobQueue};
use serde_json::json;

use crate::commands::Command;
use crate::handle::{Origin, Request};

/// The queue music's jobs travel on, consumed where the voice connections are.
pub const QUEUE: &str = "music";
/// Job kind: run a command.
pub const COMMAND: &str = "music.command";
/// Job kind: a server is available on this process's gateway; play its queue if it was playing.
pub const RESUME: &str = "music.resume";

/// The queue's spec: commands are short, so a delivery is retried after 60 s
/// and dead-lettered after 5; nothing waits there longer than a day.
#[must_use]
pub fn queue_spec() -> den_storage::QueueSpec {
    let day = std::time::Duration::from_secs(24 * 3600);
    den_storage::QueueSpec {
        name: QUEUE.into(),
        visibility_timeout: std::time::Duration::from_secs(60),
        retention: day,
        dead_letter: Some(den_storage::DeadLetterSpec {
            name: format!("{QUEUE}-dlq"),
            max_receive_count: 5,
            retention: 14 * day,
        }),
    }
}

/// The music module.
pub struct MusicModule {
    clock: Arc<dyn Clock>,
    /// Where resume jobs go (processes with a gateway only).
    jobs: Option<JobQueue>,
    /// The player, in processes that hold gateway shards.
    handler: Option<Arc<handle::Music>>,
}

impl std::fmt::Debug for MusicModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MusicModule").field("plays", &self.handler.is_some()).finish_non_exhaustive()
    }
}

impl MusicModule {
    /// The module for a process without voice (HTTP interactions, workers):
    /// it reads commands and queues them for the gateway processes.
    #[must_use]
    pub fn ingress_only(clock: Arc<dyn Clock>) -> Arc<Self> {
        Arc::new(Self { clock, jobs: None, handler: None })
    }

    /// The module for a process that holds gateway shards and plays.
    #[must_use]
    pub fn playing(clock: Arc<dyn Clock>, jobs: JobQueue, music: Arc<handle::Music>) -> Arc<Self> {
        Arc::new(Self { clock, jobs: Some(jobs), handler: Some(music) })
    }

    /// Queues a resume for every server whose stored queue was playing on a
    /// shard this process holds (after a restart); how many.
    ///
    /// # Errors
    /// When the store cannot be read or the jobs not queued.
    pub async fn resume_active(&self) -> Result<usize, den_storage::StoreError> {
        let (Some(music), Some(jobs)) = (&self.handler, &self.jobs) else { return Ok(0) };
        let guilds = music.player().tables().queues.active().await?;
        let held: Vec<Job> = guilds
            .into_iter()
            .filter(|g| music.player().voice().holds(*g))
            .map(|g| self.job(RESUME, g, json!({})))
            .collect();
        jobs.send_all(&held).await?;
        Ok(held.len())
    }

    fn job(&self, kind: &str, guild: u64, payload: serde_json::Value) -> Job {
        let mut job = Job::builder(kind, self.clock.now()).payload(payload).build();
        job.guild = Some(guild);
        job
    }
}

#[async_trait]
impl Module for MusicModule {
    fn name(&self) -> &'static str {
        "music"
    }

    fn commands(&self) -> Vec<CommandSpec> {
        commands::specs()
    }

    async fn on_message(&self, m: &InboundMessage, _cx: &IngressCx) -> Vec<Job> {
        let (Some(guild), Some(parsed)) = (m.guild_id, commands::from_message(m)) else { return Vec::new() };
        let origin = Origin::Message { channel: m.channel_id, message: m.id };
        let request = Request::new(guild, m.channel_id, m.author.id, parsed, origin);
        vec![self.job(COMMAND, guild, json!({"request": request}))]
    }

    async fn on_interaction(&self, i: &InboundInteraction, _cx: &IngressCx) -> Option<Reaction> {
        let parsed = commands::from_interaction(i)?;
        let (Some(guild), Some(channel), Some(user)) = (i.guild_id, i.channel_id, i.user.as_ref()) else {
            return Some(Reaction::reply("Music plays in servers, not in direct messages.", true));
        };
        let parsed = match parsed {
            Ok(c) => c,
            Err(line) => return Some(Reaction::reply(line, true)),
        };
        let private = matches!(parsed, Command::Queue { .. } | Command::NowPlaying) && i.custom_id.is_some();
        let mut request = Request::new(guild, channel, user.id, Ok(parsed), Origin::Interaction);
        request.manager = i.has_permission(den_discord::events::MANAGE_GUILD);
        request.roles.clone_from(&i.roles);
        Some(Reaction::defer(self.job(COMMAND, guild, json!({"request": request})), private))
    }

    fn on_voice(&self, event: &VoiceEvent) {
        let Some(music) = &self.handler else { return };
        music.player().voice().on_event(event);
        if let (VoiceEvent::GuildAvailable { guild }, Some(jobs)) = (event, &self.jobs) {
            let job = self.job(RESUME, *guild, json!({}));
            let jobs = jobs.clone();
            tokio::spawn(async move {
                if let Err(e) = jobs.send(&job).await {
                    tracing::warn!(error = %e, "could not queue a music resume");
                }
            });
        }
    }

    fn handlers(self: Arc<Self>) -> Vec<(String, Arc<dyn JobHandler>)> {
        let Some(music) = &self.handler else { return Vec::new() };
        let jobs: Arc<dyn JobHandler> = music.clone();
        vec![(COMMAND.into(), jobs.clone()), (RESUME.into(), jobs)]
    }
}
