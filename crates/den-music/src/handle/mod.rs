//! Running a command: the queue changed once per job (a redelivered job
//! finds its change made and answers as before), the player told, and the
//! answer sent where the command came from.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use den_core::{Clock, Job};
use den_discord::egress::{Button, ButtonStyle, Outgoing, SelectMenu, button_rows};
use den_discord::router::finish_interaction;
use den_discord::{Egress, InteractionRef};
use den_worker::{JobContext, JobError, JobHandler, JobQueue};
use serde::{Deserialize, Serialize};

use crate::commands::{AdminAction, Attached, BUTTON_PREFIX, Command, SettingsChange};
use crate::player::{PlayError, Player};
use crate::prefs::{PreferredSource, Prefs};
use crate::queue::Queue;
use crate::settings::Settings;
use crate::sources::ResolveError;
use crate::track::{Track, clock};

/// Where a command came from, so the answer goes back there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "via", rename_all = "snake_case")]
pub enum Origin {
    /// A slash command or a button: the deferred response is edited.
    Interaction,
    /// A `!` message: den replies to it.
    Message {
        /// Its channel.
        channel: u64,
        /// The message.
        message: u64,
    },
}

/// A command with who asked, where.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The server.
    pub guild: u64,
    /// The text channel it was asked in.
    pub channel: u64,
    /// Who asked.
    pub user: u64,
    /// Their roles.
    #[serde(default)]
    pub roles: Vec<u64>,
    /// Whether they may manage the server.
    #[serde(default)]
    pub manager: bool,
    /// The command, or the line explaining why it could not be read.
    pub command: Result<Command, String>,
    /// Where to answer.
    pub origin: Origin,
    /// Times it was passed on to find the process holding the server's voice.
    #[serde(default)]
    pub hops: u32,
}

impl Request {
    /// A request with no roles and no management rights.
    #[must_use]
    pub fn new(guild: u64, channel: u64, user: u64, command: Result<Command, String>, origin: Origin) -> Self {
        Self { guild, channel, user, roles: Vec::new(), manager: false, command, origin, hops: 0 }
    }
}

mod controls;
mod own;

use controls::{EditCx, edit};

/// The components under an answer.
enum Rows {
    /// Buttons (none: a plain answer).
    Buttons(Vec<Button>),
    /// A select menu.
    Menu(SelectMenu),
}

impl Rows {
    /// The action rows, when there are any.
    fn json(&self) -> Option<serde_json::Value> {
        match self {
            Rows::Buttons(b) if b.is_empty() => None,
            Rows::Buttons(b) => Some(button_rows(b)),
            Rows::Menu(m) => Some(serde_json::Value::Array(vec![m.row()])),
        }
    }
}

/// Passes on a command whose server is on another gateway process at most this often.
const MAX_HOPS: u32 = 16;
/// Answers a request remembers, so a redelivered job answers as the first delivery did.
const REMEMBERED: usize = 32;

/// Who may use music, and who runs den.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// Only servers the operator approved may use music.
    pub allowlist: bool,
    /// Users who may approve servers with `/music-admin`.
    pub operators: Vec<u64>,
    /// The server `/music-admin` works in.
    pub operator_guild: Option<u64>,
}

/// Runs music's jobs in a process that holds gateway shards.
pub struct Music {
    player: Arc<Player>,
    egress: Arc<Egress>,
    clock: Arc<dyn Clock>,
    jobs: JobQueue,
    metrics: den_ops::Metrics,
    access: Access,
}

impl std::fmt::Debug for Music {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Music").finish_non_exhaustive()
    }
}

/// A command's answer, or the line that says why it was refused.
type Answer = Result<String, String>;

fn store(e: impl std::fmt::Display) -> JobError {
    JobError::retry(format!("music store: {e}"))
}

impl Music {
    /// Music over `player`, answering through `egress`; `jobs` is music's own queue.
    #[must_use]
    pub fn new(
        player: Arc<Player>,
        egress: Arc<Egress>,
        clock: Arc<dyn Clock>,
        jobs: JobQueue,
        metrics: den_ops::Metrics,
        access: Access,
    ) -> Arc<Self> {
        Arc::new(Self { player, egress, clock, jobs, metrics, access })
    }

    /// The player.
    #[must_use]
    pub fn player(&self) -> &Arc<Player> {
        &self.player
    }

    async fn command(&self, job: &Job) -> Result<(), JobError> {
        let request: Request = serde_json::from_value(job.payload["request"].clone())
            .map_err(|e| JobError::permanent(format!("malformed music request: {e}")))?;
        if !self.player.voice().holds(request.guild) {
            return self.pass_on(job, request).await;
        }
        let answer = match &request.command {
            Err(line) => line.clone(),
            Ok(command) => {
                let settings = self.player.policies().settings(request.guild).await.map_err(store)?;
                let refused = self.refusal(command, &request, &settings).await?;
                let answer = match refused {
                    Some(line) => Err(line),
                    None => self.run(command, &request, &settings, &job.id).await?,
                };
                answer.unwrap_or_else(|refused| refused)
            }
        };
        let rows = match &request.command {
            Ok(Command::NowPlaying) => Rows::Buttons(self.controls(request.guild).await?),
            Ok(Command::Queue { page }) => Rows::Buttons(self.pages(request.guild, *page).await?),
            Ok(Command::Search { query }) => self.search_menu(query).await,
            _ => Rows::Buttons(Vec::new()),
        };
        self.answer(job, &request, &answer, &rows).await
    }

    /// The buttons under a now-playing answer, when something plays.
    async fn controls(&self, guild: u64) -> Result<Vec<Button>, JobError> {
        let q = self.player.queues().get(guild).await.map_err(store)?;
        if q.current.is_none() {
            return Ok(Vec::new());
        }
        let id = |c: &str| format!("{BUTTON_PREFIX}{c}");
        Ok(vec![
            Button::new(id("toggle"), if q.paused { "Resume" } else { "Pause" }).emoji(if q.paused {
                "▶️"
            } else {
                "⏸️"
            }),
            Button::new(id("skip"), "Skip").emoji("⏭️"),
            Button::new(id("stop"), "Stop").emoji("⏹️").style(ButtonStyle::Danger),
            Button::new(id("loop"), format!("Loop: {}", q.loop_mode.as_str())).emoji("🔁"),
            Button::new(id("shuffle"), "Shuffle").emoji("🔀"),
        ])
    }

    /// Previous and next page buttons under a queue answer, when it has pages.
    async fn pages(&self, guild: u64, page: usize) -> Result<Vec<Button>, JobError> {
        let q = self.player.queues().get(guild).await.map_err(store)?;
        let pages = q.upcoming.len().div_ceil(10).max(1);
        if pages == 1 {
            return Ok(Vec::new());
        }
        let page = page.clamp(1, pages);
        let mut previous =
            Button::new(format!("{BUTTON_PREFIX}queue:{}", page.saturating_sub(1).max(1)), "Previous").emoji("◀️");
        let mut next = Button::new(format!("{BUTTON_PREFIX}queue:{}", (page + 1).min(pages)), "Next").emoji("▶️");
        previous.disabled = page == 1;
        next.disabled = page == pages;
        Ok(vec![previous, next])
    }

    /// Why a command is not taken here at all: the server is not approved,
    /// or music commands go in another channel.
    async fn refusal(&self, command: &Command, req: &Request, settings: &Settings) -> Result<Option<String>, JobError> {
        if matches!(command, Command::Admin { .. }) {
            return Ok(None);
        }
        if self.access.allowlist && !self.player.policies().allowed(req.guild).await.map_err(store)? {
            return Ok(Some(format!(
                "Music is not turned on for this server yet. A server admin can ask den's operator to approve server `{}`.",
                req.guild
            )));
        }
        Ok(settings
            .channel
            .filter(|c| *c != req.channel && !matches!(command, Command::Settings(_)))
            .map(|c| format!("Music commands go in <#{c}>.")))
    }

    /// Another gateway process holds the server: put the job back for it.
    async fn pass_on(&self, job: &Job, mut request: Request) -> Result<(), JobError> {
        if request.hops >= MAX_HOPS {
            let line = "den's music player for this server is not running right now; try again in a minute.";
            return self.answer(job, &request, line, &Rows::Buttons(Vec::new())).await;
        }
        request.hops += 1;
        let mut next = job.clone();
        next.payload["request"] = serde_json::to_value(&request).unwrap_or_default();
        next.dedup_key = Some(format!("{}:hop{}", job.id, request.hops));
        self.jobs.send_delayed(&next, Duration::from_millis(100)).await.map_err(store)?;
        Ok(())
    }

    async fn answer(&self, job: &Job, request: &Request, text: &str, rows: &Rows) -> Result<(), JobError> {
        let sent = match (&request.origin, rows) {
            (Origin::Interaction, _) => {
                let iref =
                    InteractionRef::from_job(job).ok_or_else(|| JobError::permanent("no interaction in the job"))?;
                let answered = finish_interaction(&self.egress, &*self.clock, &iref, text).await;
                if answered.is_ok()
                    && let Some(rows) = rows.json()
                    && let Err(e) = self.egress.edit_original_rows(&iref.token, text, rows).await
                {
                    tracing::warn!(error = %e, "could not add the music controls");
                }
                answered
            }
            (Origin::Message { channel, .. }, Rows::Buttons(buttons)) if !buttons.is_empty() => {
                self.egress.post(*channel, &Outgoing::text(text).buttons(buttons.clone()), &job.id).await.map(drop)
            }
            (Origin::Message { channel, message }, _) => {
                self.egress.send_text_keyed(*channel, text, Some(*message), &job.id).await.map(drop)
            }
        };
        sent.map_err(|e| JobError::retry(e.to_string()).with_source(e))
    }

    async fn run(
        &self,
        command: &Command,
        request: &Request,
        settings: &Settings,
        key: &str,
    ) -> Result<Answer, JobError> {
        match command {
            Command::Play { query, file } => {
                let prefs = self.prefs_of(request.user).await?;
                match self.resolve(&prefs, query.as_deref(), file.as_ref()).await {
                    Ok(track) => self.play(request, settings, &prefs, key, vec![track]).await,
                    Err(e) => Ok(Err(e.to_string())),
                }
            }
            Command::Pick { query, n } => match self.pick(query, *n).await {
                Some(track) => {
                    self.play(request, settings, &self.prefs_of(request.user).await?, key, vec![track]).await
                }
                None => Ok(Err(format!("The search for \"{query}\" no longer finds a #{n}."))),
            },
            Command::Search { query } => Ok(self.search(query).await),
            Command::Playlist { action, name } => self.playlist(request, settings, key, *action, name.as_deref()).await,
            Command::Prefs(change) => self.prefs(request, change).await,
            Command::Queue { page } => Ok(Ok(self.show_queue(request.guild, *page).await?)),
            Command::NowPlaying => Ok(Ok(self.now_playing(request.guild).await?)),
            Command::Settings(change) => self.settings(request, settings, change).await,
            Command::Admin { action, guild } => self.admin(request, *action, *guild).await,
            other => self.control(request, settings, key, other).await,
        }
    }

    async fn settings(&self, req: &Request, current: &Settings, change: &SettingsChange) -> Result<Answer, JobError> {
        let default_leave = self.player.default_leave_secs();
        if change.is_empty() {
            return Ok(Ok(current.describe(default_leave)));
        }
        // Without a DJ role, only managers change settings (everyone else is a DJ then).
        let allowed = req.manager || current.dj_role.is_some_and(|r| req.roles.contains(&r));
        if !allowed {
            return Ok(Err("Only the DJ role or someone who may manage the server can change music settings.".into()));
        }
        let mut s = current.clone();
        match change.reset.as_deref() {
            Some("all") => s = Settings::default(),
            Some("dj-role") => s.dj_role = None,
            Some("channel") => s.channel = None,
            _ => {}
        }
        let nonzero = |n: u64| (n > 0).then_some(n);
        s.dj_role = change.dj_role.or(s.dj_role);
        s.vote_skip = change.vote_skip.map_or(s.vote_skip, |p| (p > 0).then_some(p));
        s.leave_after_secs = change.leave_after_secs.or(s.leave_after_secs);
        s.max_track_secs = change.max_track_secs.map_or(s.max_track_secs, nonzero);
        s.max_per_person = change.max_per_person.map_or(s.max_per_person, |n| (n > 0).then_some(n));
        s.default_volume = change.default_volume.unwrap_or(s.default_volume);
        s.announce = change.announce.unwrap_or(s.announce);
        s.channel = change.channel.or(s.channel);
        self.player.policies().save(req.guild, &s).await.map_err(store)?;
        Ok(Ok(format!("Saved.\n{}", s.describe(default_leave))))
    }

    async fn admin(&self, req: &Request, action: AdminAction, guild: Option<u64>) -> Result<Answer, JobError> {
        let operator = self.access.operator_guild == Some(req.guild) && self.access.operators.contains(&req.user);
        if !operator {
            return Ok(Err("Only den's operator can do this, in den's operator server.".into()));
        }
        let by = format!("discord:{}", req.user);
        Ok(match (action, guild) {
            (AdminAction::Allow, Some(g)) => {
                match self.player.policies().allow(g, &by, self.clock.now()).await.map_err(store)? {
                    true => Ok(format!("Server `{g}` may use music now.")),
                    false => Ok(format!("Server `{g}` was already approved.")),
                }
            }
            (AdminAction::Revoke, Some(g)) => match self.player.policies().revoke(g).await.map_err(store)? {
                true => Ok(format!("Server `{g}` may no longer use music.")),
                false => Err(format!("Server `{g}` was not approved.")),
            },
            (AdminAction::List, _) => {
                let list = self.player.policies().allowlist().await.map_err(store)?;
                if list.is_empty() {
                    Ok("No server is approved yet.".into())
                } else {
                    Ok(list.iter().map(|(g, by)| format!("`{g}` (approved by {by})")).collect::<Vec<_>>().join("\n"))
                }
            }
            (_, None) => Err("Name the server.".into()),
        })
    }

    /// Changes the queue once for `key`; a second run finds the answer the first gave.
    async fn change(
        &self,
        guild: u64,
        key: &str,
        mut edit: impl FnMut(&mut Queue) -> Answer,
    ) -> Result<Answer, JobError> {
        let (answer, _) = self
            .player
            .queues()
            .update(guild, |q| {
                if let Some((_, earlier)) = q.answered.iter().find(|(k, _)| k == key) {
                    return Ok(earlier.clone());
                }
                let answer = edit(q);
                if let Ok(text) = &answer {
                    q.answered.push((key.to_owned(), text.clone()));
                    let excess = q.answered.len().saturating_sub(REMEMBERED);
                    q.answered.drain(..excess);
                }
                answer
            })
            .await
            .map_err(store)?;
        Ok(answer)
    }

    /// The asker's own preferences.
    async fn prefs_of(&self, user: u64) -> Result<Prefs, JobError> {
        self.player.tables().people.prefs(user).await.map_err(store)
    }

    /// Queues `tracks` (the first plays when nothing does), joining the asker's channel.
    async fn play(
        &self,
        req: &Request,
        settings: &Settings,
        prefs: &Prefs,
        key: &str,
        tracks: Vec<Track>,
    ) -> Result<Answer, JobError> {
        let Some(channel) = self.player.voice().channel_of(req.guild, req.user) else {
            return Ok(Err("Join a voice channel first, then ask again.".into()));
        };
        let current = self.player.queues().get(req.guild).await.map_err(store)?;
        if let Some(playing_in) = current.voice_channel.filter(|c| *c != channel && current.current.is_some()) {
            return Ok(Err(format!("den is playing in <#{playing_in}>: join it there to add music.")));
        }
        let too_long = |t: &Track| settings.max_track_secs.zip(t.duration_ms).is_some_and(|(max, ms)| ms > max * 1000);
        let (fit, long): (Vec<Track>, Vec<Track>) = tracks.into_iter().partition(|t| !too_long(t));
        if fit.is_empty() {
            let max = clock(settings.max_track_secs.unwrap_or(0) * 1000);
            let what = long.first().map(Track::label).unwrap_or_default();
            return Ok(Err(format!("{what} is longer than this server's limit of {max}.")));
        }
        let volume = prefs.volume;
        let answer = self
            .change(req.guild, key, |q| {
                let room = settings.max_per_person.map_or(usize::MAX, |max| max.saturating_sub(q.queued_by(req.user)));
                if room == 0 {
                    let max = settings.max_per_person.unwrap_or(0);
                    return Err(format!("You have {max} tracks queued, this server's limit: wait for one to play."));
                }
                if q.current.is_none() && q.upcoming.is_empty() {
                    q.volume = volume.unwrap_or(settings.default_volume);
                }
                q.voice_channel = Some(channel);
                q.text_channel = Some(req.channel);
                let was_idle = q.current.is_none();
                let adding: Vec<Track> = fit.iter().take(room).cloned().collect();
                let added = adding.len();
                q.add(adding, req.user);
                let first = fit[0].label();
                Ok(match (was_idle, added) {
                    (true, 1) => format!("Now playing {first}"),
                    (false, 1) => format!("Queued {first} at #{}", q.upcoming.len()),
                    (true, n) => format!("Now playing {first}, and {} more queued", n - 1),
                    (false, n) => format!("Queued {n} tracks, from #{}", q.upcoming.len() + 1 - n),
                })
            })
            .await?;
        match self.player.sync(req.guild).await {
            Ok(()) => Ok(answer),
            Err(PlayError::Join(e)) => Ok(Err(format!(
                "den could not join <#{channel}> ({e}): check that den may Connect and Speak there. The track is queued."
            ))),
            Err(PlayError::Store(e)) => Err(store(e)),
        }
    }

    /// The track a request names: from the cache when it resolved lately, else from its source.
    async fn resolve(
        &self,
        prefs: &Prefs,
        query: Option<&str>,
        file: Option<&Attached>,
    ) -> Result<Track, ResolveError> {
        let prefer = if self.player.sources().has_ytdlp() { prefs.source } else { PreferredSource::Library };
        let cache = &self.player.tables().cache;
        // Words may find different tracks in different places: the place is part of the request.
        let request = query.map(|q| format!("{}:{q}", prefer.as_str()));
        let query_key = request.as_deref();
        let cached = match (file, query_key) {
            (None, Some(q)) => cache.get(q).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "the track cache could not be read");
                None
            }),
            _ => None,
        };
        if let Some(track) = cached {
            return Ok(track);
        }
        let found = self.resolve_fresh(query, file, prefer).await;
        if let (None, Some(q), Ok(track)) = (file, query_key, &found)
            && let Err(e) = cache.put(q, track).await
        {
            tracing::warn!(error = %e, "the track cache could not be written");
        }
        found
    }

    async fn resolve_fresh(
        &self,
        query: Option<&str>,
        file: Option<&Attached>,
        prefer: PreferredSource,
    ) -> Result<Track, ResolveError> {
        let started = Instant::now();
        let sources = self.player.sources().clone();
        let (source, found) = match (file, query) {
            (Some(f), _) => ("attachment", sources.link(&f.url, Some(&f.filename))),
            (None, Some(q)) if sources.is_ytdlp_page(q) => ("ytdlp", sources.ytdlp(q).await),
            (None, Some(q)) if q.starts_with("http://") || q.starts_with("https://") => ("link", sources.resolve(q)),
            (None, q) => {
                let words = q.unwrap_or_default().to_owned();
                let in_library = if prefer == PreferredSource::Ytdlp {
                    Err(ResolveError::NoLibrary)
                } else {
                    let (sources, words) = (sources.clone(), words.clone());
                    tokio::task::spawn_blocking(move || sources.resolve(&words))
                        .await
                        .unwrap_or(Err(ResolveError::NoLibrary))
                };
                match in_library {
                    // Not in the library (or not looked for there): yt-dlp's search, where it is on.
                    Err(ResolveError::NoLibrary | ResolveError::NotFound(_)) if sources.has_ytdlp() => {
                        ("ytdlp", sources.ytdlp(&format!("ytsearch1:{words}")).await)
                    }
                    other => ("library", other),
                }
            }
        };
        self.metrics.music_resolved(source, started.elapsed());
        found
    }

    async fn control(
        &self,
        req: &Request,
        settings: &Settings,
        key: &str,
        command: &Command,
    ) -> Result<Answer, JobError> {
        let stored = self.player.queues().get(req.guild).await.map_err(store)?;
        let listeners = match stored.voice_channel {
            Some(channel) if self.player.voice().channel_of(req.guild, req.user) != Some(channel) => {
                return Ok(Err(format!("Join <#{channel}> to control the music.")));
            }
            Some(channel) => self.player.voice().listeners(req.guild, channel).len(),
            None => 0,
        };
        let cx = EditCx {
            position: u64::try_from(self.player.position(req.guild, &stored).await.as_millis()).unwrap_or(0),
            user: req.user,
            dj: settings.is_dj(req),
            votes_needed: settings.votes_needed(listeners),
        };
        let answer = self.change(req.guild, key, |q| edit(q, command, &cx)).await?;
        if answer.is_ok()
            && let Err(e) = self.player.sync(req.guild).await
        {
            tracing::warn!(guild = req.guild, error = %e, "the player did not follow the queue");
        }
        Ok(answer)
    }

    async fn show_queue(&self, guild: u64, page: usize) -> Result<String, JobError> {
        let q = self.player.queues().get(guild).await.map_err(store)?;
        let Some(current) = &q.current else { return Ok("Nothing is playing, and the queue is empty.".into()) };
        let position = self.player.position(guild, &q).await;
        let pages = q.upcoming.len().div_ceil(10).max(1);
        let page = page.clamp(1, pages);
        let mut lines = vec![format!("Now: {} at {}", current.track.label(), clock(position.as_millis() as u64))];
        for (n, e) in q.upcoming.iter().enumerate().skip((page - 1) * 10).take(10) {
            lines.push(format!("{}. {} — <@{}>", n + 1, e.track.label(), e.requested_by));
        }
        let total: u64 = q.upcoming.iter().filter_map(|e| e.track.duration_ms).sum();
        lines.push(format!(
            "Page {page}/{pages} · {} queued · {} in all · loop: {}",
            q.upcoming.len(),
            clock(total),
            q.loop_mode.as_str()
        ));
        Ok(lines.join("\n"))
    }

    async fn now_playing(&self, guild: u64) -> Result<String, JobError> {
        let q = self.player.queues().get(guild).await.map_err(store)?;
        let Some(current) = &q.current else { return Ok("Nothing is playing.".into()) };
        let at = self.player.position(guild, &q).await.as_millis() as u64;
        let state = if q.paused { "⏸️ Paused" } else { "▶️ Playing" };
        Ok(format!(
            "{state} {}\n`{}` · loop: {} · volume {}%\nAsked for by <@{}> · {} more queued",
            current.track.label(),
            bar(at, current.track.duration_ms),
            q.loop_mode.as_str(),
            q.volume,
            current.requested_by,
            q.upcoming.len()
        ))
    }

    async fn resume(&self, job: &Job) -> Result<(), JobError> {
        let Some(guild) = job.guild else { return Err(JobError::permanent("a resume without a server")) };
        if !self.player.voice().holds(guild) {
            return Ok(());
        }
        let q = self.player.queues().get(guild).await.map_err(store)?;
        if q.voice_channel.is_none() || q.current.is_none() {
            return Ok(());
        }
        tracing::info!(guild, at_ms = q.position_ms, "resuming the server's music");
        self.player.sync(guild).await.map_err(|e| JobError::retry(format!("resuming music: {e}")))
    }
}

/// `1:23 ▬▬▬🔘▬▬▬▬▬ 3:05`, or the time alone for a stream.
fn bar(at_ms: u64, length: Option<u64>) -> String {
    let Some(length) = length.filter(|l| *l > 0) else { return clock(at_ms) };
    let knob = usize::try_from((at_ms.min(length) * 12) / length).unwrap_or(0).min(11);
    let line: String = (0..12).map(|i| if i == knob { '🔘' } else { '▬' }).collect();
    format!("{} {line} {}", clock(at_ms), clock(length))
}

#[async_trait]
impl JobHandler for Music {
    async fn run(&self, job: &Job, _cx: &JobContext) -> Result<(), JobError> {
        match job.kind.as_str() {
            crate::COMMAND => self.command(job).await,
            crate::RESUME => self.resume(job).await,
            other => Err(JobError::permanent(format!("music has no job {other}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_position_bar_moves_along_the_track() {
        assert_eq!(bar(0, Some(100_000)), "0:00 🔘▬▬▬▬▬▬▬▬▬▬▬ 1:40");
        assert_eq!(bar(100_000, Some(100_000)), "1:40 ▬▬▬▬▬▬▬▬▬▬▬🔘 1:40");
        assert_eq!(bar(5_000, None), "0:05", "a stream, or a link before it plays");
    }
}
