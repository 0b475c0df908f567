//! Playback: each server's stored queue made audible on its voice
//! connection. The queue in the store says what should play; [`Player::sync`]
//! makes the driver agree (join, start the current track at its position,
//! pause, volume, leave). A track that ends moves the queue on, once: the end
//! counts only for the generation it played.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use den_discord::Egress;
use songbird::tracks::{PlayMode, Track, TrackHandle};
use songbird::{Event, EventContext, EventHandler, TrackEvent};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::queue::{Queue, Queues};
use crate::settings::Policies;
use crate::sources::Sources;
use crate::tables::Tables;
use crate::voice::{JoinError, Link, Notice, Voice};

/// How long a join may take before the command says so.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often playing positions are saved (a restart resumes within this).
pub const SAVE_EVERY: Duration = Duration::from_secs(2);
/// How long a track may take to open and seek before it plays from where it is.
const SEEK_TIMEOUT: Duration = Duration::from_secs(15);

/// Why playback could not start.
#[derive(Debug, thiserror::Error)]
pub enum PlayError {
    /// Joining the voice channel failed.
    #[error(transparent)]
    Join(#[from] JoinError),
    /// The store failed.
    #[error("den's store failed: {0}")]
    Store(#[from] den_storage::StoreError),
}

/// The track a server's driver plays now.
struct Playing {
    handle: TrackHandle,
    generation: u64,
    paused: bool,
    volume: u16,
    /// The driver's play time of the track at the last look, and when that was.
    looked: Option<(Duration, std::time::Instant)>,
    /// Play time already counted in the frames metric.
    counted: Duration,
}

/// A track ended (or failed) in some generation of a server's queue.
#[derive(Debug)]
struct Ended {
    guild: u64,
    generation: u64,
    how: EndKind,
    /// The driver's play time of the track when it ended.
    played: Duration,
}

/// How a track ended.
#[derive(Debug)]
enum EndKind {
    /// It played to its end.
    Finished,
    /// It could not be played, or broke off.
    Failed(String),
    /// It was stopped at this position (by den, or by the driver losing its connection).
    Stopped(u64),
}

/// Plays servers' queues on this process's voice connections.
pub struct Player {
    voice: Arc<Voice>,
    tables: Tables,
    sources: Sources,
    egress: Arc<Egress>,
    metrics: den_ops::Metrics,
    playing: Mutex<HashMap<u64, Playing>>,
    ended: mpsc::UnboundedSender<Ended>,
    /// Serialises syncs per server, so two commands never start two tracks.
    syncing: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>,
    /// Since when each joined server has had nothing playing, or nobody listening.
    idle: Mutex<HashMap<u64, std::time::Instant>>,
    /// Leave after this long idle or alone, unless a server says otherwise; zero stays.
    leave_after: Duration,
}

impl std::fmt::Debug for Player {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Player").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Player {
    /// A player, and the task that moves queues on when tracks end, saves
    /// positions, follows the voice connections' notices and leaves idle
    /// channels after `leave_after` (zero: never), until `shutdown`.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        voice: Arc<Voice>,
        notices: mpsc::UnboundedReceiver<Notice>,
        tables: Tables,
        sources: Sources,
        egress: Arc<Egress>,
        metrics: den_ops::Metrics,
        leave_after: Duration,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let (ended, rx) = mpsc::unbounded_channel();
        let player = Arc::new(Self {
            voice,
            tables,
            sources,
            egress,
            metrics,
            playing: Mutex::new(HashMap::new()),
            ended,
            syncing: Mutex::new(HashMap::new()),
            idle: Mutex::new(HashMap::new()),
            leave_after,
        });
        tokio::spawn(player.clone().run(rx, notices, shutdown));
        player
    }

    /// The sources tracks come from.
    #[must_use]
    pub fn sources(&self) -> &Sources {
        &self.sources
    }

    /// The voice connections.
    #[must_use]
    pub fn voice(&self) -> &Arc<Voice> {
        &self.voice
    }

    /// The stored queues.
    #[must_use]
    pub fn queues(&self) -> &Queues {
        &self.tables.queues
    }

    /// Servers' settings and the allowlist.
    #[must_use]
    pub fn policies(&self) -> &Policies {
        &self.tables.policies
    }

    /// Everything music keeps in the store.
    #[must_use]
    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// Seconds idle or alone before leaving, where a server has not chosen.
    #[must_use]
    pub fn default_leave_secs(&self) -> u64 {
        self.leave_after.as_secs()
    }

    /// Servers with a track playing or paused now.
    #[must_use]
    pub fn active(&self) -> usize {
        lock(&self.playing).len()
    }

    /// Where the current track of `guild` is, from the driver (or the stored position).
    pub async fn position(&self, guild: u64, stored: &Queue) -> Duration {
        let handle =
            lock(&self.playing).get(&guild).filter(|p| p.generation == stored.generation).map(|p| p.handle.clone());
        match handle {
            Some(h) => h.get_info().await.map_or(Duration::from_millis(stored.position_ms), |i| i.position),
            None => Duration::from_millis(stored.position_ms),
        }
    }

    /// Makes `guild`'s driver agree with its stored queue.
    ///
    /// # Errors
    /// When den cannot join the channel, or the store fails.
    pub async fn sync(&self, guild: u64) -> Result<(), PlayError> {
        let gate = lock(&self.syncing).entry(guild).or_default().clone();
        let _one_at_a_time = gate.lock().await;
        let queue = self.queues().get(guild).await?;
        let Some(channel) = queue.voice_channel else {
            self.stop_track(guild);
            if self.voice.joined(guild).is_some() {
                self.voice.leave(guild);
            }
            return Ok(());
        };
        if self.voice.joined(guild) != Some(channel) || self.voice.link(guild) != Link::Connected {
            self.voice.join(guild, channel, JOIN_TIMEOUT).await?;
        }
        let Some(entry) = &queue.current else {
            self.stop_track(guild);
            return Ok(());
        };
        let same = lock(&self.playing).get(&guild).is_some_and(|p| p.generation == queue.generation);
        if !same {
            self.start_track(guild, &queue, entry).await;
        }
        if let Some(p) = lock(&self.playing).get_mut(&guild) {
            if p.paused != queue.paused {
                let _ = if queue.paused { p.handle.pause() } else { p.handle.play() };
                p.paused = queue.paused;
            }
            if p.volume != queue.volume {
                let _ = p.handle.set_volume(f32::from(queue.volume) / 100.0);
                p.volume = queue.volume;
            }
        }
        Ok(())
    }

    async fn start_track(&self, guild: u64, queue: &Queue, entry: &crate::queue::Entry) {
        let input = match self.sources.input(&entry.track) {
            Ok(input) => input,
            Err(e) => {
                let _ = self.ended.send(Ended {
                    guild,
                    generation: queue.generation,
                    how: EndKind::Failed(e.to_string()),
                    played: Duration::ZERO,
                });
                return;
            }
        };
        // A track that starts part-way is held until the seek lands, so it never sounds from its start.
        let later = queue.position_ms > 0;
        let mut track = Track::new(input).volume(f32::from(queue.volume) / 100.0);
        if later || queue.paused {
            track = track.pause();
        }
        let handle = self.voice.with_driver(guild, |d| d.play_only(track));
        for event in [TrackEvent::End, TrackEvent::Error] {
            let watch = Watch { guild, generation: queue.generation, ended: self.ended.clone() };
            let _ = handle.add_event(Event::Track(event), watch);
        }
        self.metrics.music_track(false);
        tracing::info!(guild, track = %entry.track.title, generation = queue.generation, at_ms = queue.position_ms, "playing");
        lock(&self.playing).insert(
            guild,
            Playing {
                handle: handle.clone(),
                generation: queue.generation,
                paused: queue.paused,
                volume: queue.volume,
                looked: None,
                counted: Duration::ZERO,
            },
        );
        if later {
            let at = Duration::from_millis(queue.position_ms);
            match tokio::time::timeout(SEEK_TIMEOUT, handle.seek_async(at)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(guild, error = %e, "could not start the track part-way; it plays from the start")
                }
                Err(_) => tracing::warn!(guild, "the track took too long to seek; it plays from where it is"),
            }
            if !queue.paused {
                let _ = handle.play();
            }
        }
    }

    fn stop_track(&self, guild: u64) {
        if let Some(p) = lock(&self.playing).remove(&guild) {
            let _ = p.handle.stop();
        }
    }

    async fn run(
        self: Arc<Self>,
        mut ended: mpsc::UnboundedReceiver<Ended>,
        mut notices: mpsc::UnboundedReceiver<Notice>,
        shutdown: CancellationToken,
    ) {
        let mut save = tokio::time::interval(SAVE_EVERY);
        save.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(e) = ended.recv() => self.on_ended(e).await,
                Some(n) = notices.recv() => self.on_notice(n).await,
                _ = save.tick() => {
                    self.save_positions().await;
                    self.leave_idle().await;
                }
            }
        }
        // Positions as of the stop, so the next start resumes where this one was.
        self.save_positions().await;
    }

    async fn on_ended(&self, e: Ended) {
        let Ended { guild, generation, how, played } = e;
        let ours = lock(&self.playing).get(&guild).is_some_and(|p| p.generation == generation);
        if ours && let Some(p) = lock(&self.playing).remove(&guild) {
            self.metrics.music_frames(frames_in(played.saturating_sub(p.counted)));
        }
        let error = match how {
            EndKind::Finished => None,
            EndKind::Failed(why) => Some(why),
            // den stops tracks only after taking them out of `playing`: this one the driver
            // dropped (its connection was made again). Play it on from where it was.
            EndKind::Stopped(at) if ours => {
                tracing::info!(guild, at_ms = at, "the driver stopped the track; playing it on");
                let saved = self.queues().update(guild, |q| {
                    if q.generation == generation {
                        q.position_ms = at;
                    }
                });
                if let Err(e) = saved.await {
                    tracing::warn!(guild, error = %e, "could not save where the track stopped");
                }
                if let Err(e) = self.sync(guild).await {
                    tracing::warn!(guild, error = %e, "could not play the track on");
                }
                return;
            }
            EndKind::Stopped(_) => return,
        };
        let moved = self
            .queues()
            .update(guild, |q| {
                let current = (q.generation == generation).then(|| q.current.clone()).flatten();
                if current.is_some() {
                    if error.is_some() { q.skip() } else { q.finished() }
                }
                current
            })
            .await;
        let (done, queue) = match moved {
            Ok((Some(done), queue)) => (done, queue),
            Ok((None, _)) => return,
            Err(e) => {
                tracing::warn!(guild, error = %e, "could not move the queue on");
                return;
            }
        };
        if let Some(why) = &error {
            self.metrics.music_track(true);
            tracing::warn!(guild, track = %done.track.title, error = %why, "track failed");
            self.announce(&queue, &format!("Could not play {}: {why}", done.track.label())).await;
        }
        if let Err(e) = self.sync(guild).await {
            tracing::warn!(guild, error = %e, "could not play the next track");
        }
        let Some(next) = queue.current.as_ref().filter(|n| n.id != done.id) else { return };
        let server = self.policies().settings(guild).await.is_ok_and(|s| s.announce);
        let asker = self.tables.people.prefs(next.requested_by).await.map_or(true, |p| p.announce != Some(false));
        if server && asker {
            self.announce(&queue, &format!("Now playing {}", next.track.label())).await;
        }
    }

    async fn on_notice(&self, notice: Notice) {
        match notice {
            Notice::Connected(guild) => {
                if let Err(e) = self.sync(guild).await {
                    tracing::warn!(guild, error = %e, "could not play after connecting");
                }
            }
            Notice::Removed(guild) => {
                if let Some(q) = self.record_leaving(guild).await {
                    self.announce(&q, "den was taken out of the voice channel; the queue is kept.").await;
                }
            }
        }
    }

    async fn current_position(&self, guild: u64) -> Option<u64> {
        let handle = lock(&self.playing).get(&guild).map(|p| p.handle.clone())?;
        let info = handle.get_info().await.ok()?;
        u64::try_from(info.position.as_millis()).ok()
    }

    /// Stops `guild`'s track and keeps where it was, with no voice channel in
    /// the queue (den left, or was taken out); the queue as written.
    async fn record_leaving(&self, guild: u64) -> Option<Queue> {
        let position = self.current_position(guild).await;
        self.stop_track(guild);
        let left = self.queues().update(guild, |q| {
            q.voice_channel = None;
            q.position_ms = position.unwrap_or(q.position_ms);
        });
        match left.await {
            Ok(((), q)) => Some(q),
            Err(e) => {
                tracing::warn!(guild, error = %e, "could not record leaving");
                None
            }
        }
    }

    /// Leaves the channels where nothing played, or nobody listened, for
    /// `leave_after` (or the server's own setting, read only for idle ones).
    async fn leave_idle(&self) {
        let joined: Vec<(u64, u64)> = self.voice.joined_all();
        let idle_now: Vec<u64> = {
            let playing = lock(&self.playing);
            let busy = |(g, c): &(u64, u64)| {
                playing.get(g).is_some_and(|p| !p.paused) && !self.voice.listeners(*g, *c).is_empty()
            };
            joined.iter().filter(|j| !busy(j)).map(|(g, _)| *g).collect()
        };
        let now = std::time::Instant::now();
        let mut leave = Vec::new();
        for guild in &idle_now {
            let chosen = self.policies().settings(*guild).await.ok().and_then(|s| s.leave_after_secs);
            let limit = chosen.map_or(self.leave_after, Duration::from_secs);
            let mut idle = lock(&self.idle);
            if limit.is_zero() {
                idle.remove(guild);
            } else if now.duration_since(*idle.entry(*guild).or_insert(now)) >= limit {
                idle.remove(guild);
                leave.push(*guild);
            }
        }
        lock(&self.idle).retain(|g, _| idle_now.contains(g));
        for guild in leave {
            self.record_leaving(guild).await;
            self.voice.leave(guild);
            tracing::info!(guild, "left an idle voice channel");
        }
    }

    async fn announce(&self, queue: &Queue, text: &str) {
        if let Some(channel) = queue.text_channel
            && let Err(e) = self.egress.send_text(channel, text, None).await
        {
            tracing::warn!(channel, error = %e, "could not post in the music channel");
        }
    }

    async fn save_positions(&self) {
        let handles: Vec<(u64, u64, TrackHandle)> =
            lock(&self.playing).iter().map(|(g, p)| (*g, p.generation, p.handle.clone())).collect();
        let (mut frames, mut worst) = (0u64, 0f64);
        for (guild, generation, handle) in handles {
            let Ok(info) = handle.get_info().await else { continue };
            if matches!(info.playing, PlayMode::End | PlayMode::Stop | PlayMode::Errored(_)) {
                continue;
            }
            // Pacing: the driver's play time against the wall clock, while the track plays.
            let now = std::time::Instant::now();
            let playing = matches!(info.playing, PlayMode::Play);
            let before = lock(&self.playing)
                .get_mut(&guild)
                .and_then(|p| std::mem::replace(&mut p.looked, playing.then_some((info.play_time, now))));
            if let Some(p) = lock(&self.playing).get_mut(&guild) {
                frames += frames_in(info.play_time.saturating_sub(p.counted));
                p.counted = info.play_time;
            }
            if let Some((played, at)) = before.filter(|_| playing) {
                let played = info.play_time.saturating_sub(played).as_secs_f64();
                let wall = now.duration_since(at).as_secs_f64();
                if wall > 0.5 {
                    worst = worst.max((1.0 - played / wall).clamp(0.0, 1.0));
                }
            }
            let at = u64::try_from(info.position.as_millis()).unwrap_or(u64::MAX);
            let saved = self
                .queues()
                .update(guild, |q| {
                    if q.generation == generation {
                        q.position_ms = at;
                    }
                })
                .await;
            if let Err(e) = saved {
                tracing::warn!(guild, error = %e, "could not save the playing position");
            }
        }
        self.metrics.music_players(self.active());
        self.metrics.music_frames(frames);
        self.metrics.music_deficit(worst);
    }
}

/// 20 ms frames (one packet each) in `played` of audio.
fn frames_in(played: Duration) -> u64 {
    u64::try_from(played.as_millis() / 20).unwrap_or(u64::MAX)
}

/// Hears a track's end or failure.
struct Watch {
    guild: u64,
    generation: u64,
    ended: mpsc::UnboundedSender<Ended>,
}

#[async_trait]
impl EventHandler for Watch {
    async fn act(&self, cx: &EventContext<'_>) -> Option<Event> {
        if let EventContext::Track(tracks) = cx {
            let how = match tracks.first().map(|(state, _)| (&state.playing, state.position)) {
                Some((PlayMode::Errored(e), _)) => EndKind::Failed(e.to_string()),
                Some((PlayMode::Stop, at)) => EndKind::Stopped(u64::try_from(at.as_millis()).unwrap_or(0)),
                _ => EndKind::Finished,
            };
            let played = tracks.first().map_or(Duration::ZERO, |(state, _)| state.play_time);
            let _ = self.ended.send(Ended { guild: self.guild, generation: self.generation, how, played });
        }
        None
    }
}
