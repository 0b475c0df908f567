//! A server's queue: what plays, what comes next, what played, where in the
//! track it was, and how it loops; one item in den's `music` table, written
//! with a version check so two people adding at once both land.

use std::sync::Arc;
use std::time::Duration;

use den_core::Clock;
use den_storage::{Condition, IndexSpec, Put, Query, StoreErrorKind, StoreResult, Table, TableSpec};
use rand::seq::SliceRandom as _;
use serde::{Deserialize, Serialize};

use crate::track::Track;

/// A queue nobody touched for this long is dropped.
pub const ABANDONED_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);
/// Tracks kept for `/previous`.
const HISTORY: usize = 50;

/// One track in a queue, with who asked for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Unique in its queue for the queue's whole life: removals never make two entries share one.
    pub id: u64,
    /// The track.
    pub track: Track,
    /// Who asked for it.
    pub requested_by: u64,
}

/// How a queue repeats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoopMode {
    /// Play each track once.
    #[default]
    Off,
    /// Repeat the current track.
    Track,
    /// Put each finished track at the end of the queue.
    Queue,
}

impl LoopMode {
    /// Its name in commands and answers.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            LoopMode::Off => "off",
            LoopMode::Track => "track",
            LoopMode::Queue => "queue",
        }
    }

    /// Reads a name given by [`LoopMode::as_str`].
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        [LoopMode::Off, LoopMode::Track, LoopMode::Queue].into_iter().find(|m| m.as_str() == s)
    }
}

/// A server's queue as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Queue {
    /// What plays now.
    pub current: Option<Entry>,
    /// What comes next, in order.
    pub upcoming: Vec<Entry>,
    /// What played, the latest last.
    pub history: Vec<Entry>,
    /// Where in `current` playback was when last saved.
    pub position_ms: u64,
    /// Paused by someone.
    pub paused: bool,
    /// How it repeats.
    pub loop_mode: LoopMode,
    /// Volume in percent.
    pub volume: u16,
    /// The voice channel den plays in; `None` once stopped.
    pub voice_channel: Option<u64>,
    /// Where den answers and announces.
    pub text_channel: Option<u64>,
    /// The next entry id.
    pub next_id: u64,
    /// Bumped whenever the current track or its position is set from outside
    /// playback (skip, seek, a new track): the player starts the track again
    /// at `position_ms` when it sees a generation it has not played.
    pub generation: u64,
    /// The latest commands' keys and answers: a command delivered twice changes the queue once.
    pub answered: Vec<(String, String)>,
    /// Who voted to skip the current track.
    pub skip_votes: Vec<u64>,
}

impl Default for Queue {
    fn default() -> Self {
        Self {
            current: None,
            upcoming: Vec::new(),
            history: Vec::new(),
            position_ms: 0,
            paused: false,
            loop_mode: LoopMode::Off,
            volume: 100,
            voice_channel: None,
            text_channel: None,
            next_id: 1,
            generation: 0,
            answered: Vec::new(),
            skip_votes: Vec::new(),
        }
    }
}

impl Queue {
    /// Adds tracks at the end; the first becomes current when nothing plays.
    /// Returns the ids given.
    pub fn add(&mut self, tracks: Vec<Track>, by: u64) -> Vec<u64> {
        let mut ids = Vec::with_capacity(tracks.len());
        for track in tracks {
            let id = self.next_id;
            self.next_id += 1;
            ids.push(id);
            self.upcoming.push(Entry { id, track, requested_by: by });
        }
        if self.current.is_none() {
            self.start_next();
        }
        ids
    }

    /// Entries queued by `user` and not yet played.
    #[must_use]
    pub fn queued_by(&self, user: u64) -> usize {
        self.upcoming.iter().filter(|e| e.requested_by == user).count()
    }

    /// The current track ended on its own: loop it, or move on.
    pub fn finished(&mut self) {
        if self.loop_mode == LoopMode::Track && self.current.is_some() {
            self.restart(0);
            return;
        }
        self.move_on();
    }

    /// Skips the current track (looping a track does not hold a skip back).
    pub fn skip(&mut self) {
        self.move_on();
    }

    fn move_on(&mut self) {
        if let Some(done) = self.current.take() {
            if self.loop_mode == LoopMode::Queue {
                self.upcoming.push(done.clone());
            }
            self.history.push(done);
            let excess = self.history.len().saturating_sub(HISTORY);
            self.history.drain(..excess);
        }
        self.start_next();
    }

    fn start_next(&mut self) {
        self.current = (!self.upcoming.is_empty()).then(|| self.upcoming.remove(0));
        self.restart(0);
    }

    /// Plays the current track again from `position_ms`.
    pub fn restart(&mut self, position_ms: u64) {
        self.position_ms = position_ms;
        self.generation += 1;
        self.skip_votes.clear();
    }

    /// Skips to the `n`th upcoming entry (1-based), dropping those before it.
    /// `false` when there is no such entry.
    pub fn skip_to(&mut self, n: usize) -> bool {
        if n == 0 || n > self.upcoming.len() {
            return false;
        }
        let skipped: Vec<Entry> = self.upcoming.drain(..n - 1).collect();
        self.history.extend(skipped);
        self.move_on();
        true
    }

    /// Plays the last finished track again, the current one going back to
    /// the front of the queue. `false` when nothing played before.
    pub fn previous(&mut self) -> bool {
        let Some(last) = self.history.pop() else { return false };
        if let Some(current) = self.current.take() {
            self.upcoming.insert(0, current);
        }
        self.current = Some(last);
        self.restart(0);
        true
    }

    /// Removes the `n`th upcoming entry (1-based).
    pub fn remove(&mut self, n: usize) -> Option<Entry> {
        (n >= 1 && n <= self.upcoming.len()).then(|| self.upcoming.remove(n - 1))
    }

    /// Moves the `from`th upcoming entry to place `to` (both 1-based).
    pub fn move_entry(&mut self, from: usize, to: usize) -> Option<&Entry> {
        let len = self.upcoming.len();
        if from == 0 || from > len || to == 0 || to > len {
            return None;
        }
        let e = self.upcoming.remove(from - 1);
        self.upcoming.insert(to - 1, e);
        self.upcoming.get(to - 1)
    }

    /// Shuffles what comes next.
    pub fn shuffle(&mut self) {
        self.upcoming.shuffle(&mut rand::rng());
    }

    /// Drops upcoming entries whose source is already current or earlier in
    /// the queue; returns how many went.
    pub fn remove_dupes(&mut self) -> usize {
        let before = self.upcoming.len();
        let mut seen: Vec<crate::track::Source> = self.current.iter().map(|e| e.track.source.clone()).collect();
        self.upcoming.retain(|e| {
            let dupe = seen.contains(&e.track.source);
            if !dupe {
                seen.push(e.track.source.clone());
            }
            !dupe
        });
        before - self.upcoming.len()
    }

    /// Empties what comes next (the current track plays on).
    pub fn clear(&mut self) -> usize {
        std::mem::take(&mut self.upcoming).len()
    }

    /// Stops: nothing current, nothing upcoming (den stays in the voice
    /// channel until it has been idle a while).
    pub fn stop(&mut self) {
        if let Some(done) = self.current.take() {
            self.history.push(done);
        }
        self.upcoming.clear();
        self.paused = false;
        self.restart(0);
    }
}

/// The index of queues den plays (or should play) in a voice channel.
const ACTIVE_INDEX: &str = "active";

/// The `music` table's spec: queues by server, and the sparse index of the
/// ones playing, which a restarted process resumes.
#[must_use]
pub fn table_spec() -> TableSpec {
    TableSpec::new("music").with_index(IndexSpec::new(ACTIVE_INDEX, "active", Some("guild")))
}

/// Servers' queues in the store.
#[derive(Clone, Debug)]
pub struct Queues {
    table: Arc<dyn Table>,
    clock: Arc<dyn Clock>,
}

const QUEUE_SK: &str = "queue";

impl Queues {
    /// Queues kept in `table` (the `music` table).
    pub fn new(table: Arc<dyn Table>, clock: Arc<dyn Clock>) -> Self {
        Self { table, clock }
    }

    /// `guild`'s queue (empty when it has none).
    pub async fn get(&self, guild: u64) -> StoreResult<Queue> {
        Ok(self.load(guild).await?.0)
    }

    async fn load(&self, guild: u64) -> StoreResult<(Queue, Option<u64>)> {
        let Some(item) = self.table.get(&guild.to_string(), QUEUE_SK).await? else {
            return Ok((Queue::default(), None));
        };
        let queue = serde_json::from_value(serde_json::Value::Object(item.attrs)).unwrap_or_else(|e| {
            tracing::warn!(guild, error = %e, "a stored queue could not be read; starting it again empty");
            Queue::default()
        });
        Ok((queue, Some(item.version)))
    }

    /// Changes `guild`'s queue with `change`, again on a fresh copy when
    /// someone else wrote it meanwhile, so no edit is lost. Returns what
    /// `change` returned and the queue as written.
    pub async fn update<T>(&self, guild: u64, mut change: impl FnMut(&mut Queue) -> T) -> StoreResult<(T, Queue)> {
        for _ in 0..32 {
            let (mut queue, version) = self.load(guild).await?;
            let out = change(&mut queue);
            let serde_json::Value::Object(mut attrs) = serde_json::to_value(&queue).unwrap_or_default() else {
                unreachable!("a queue serializes to an object")
            };
            if queue.voice_channel.is_some() && queue.current.is_some() {
                attrs.insert("active".into(), "1".into());
                attrs.insert("guild".into(), guild.to_string().into());
            }
            let condition = version.map_or(Condition::Absent, Condition::VersionEquals);
            let expires = self.clock.now().plus(ABANDONED_AFTER);
            let put = Put::new(guild.to_string(), QUEUE_SK, attrs).condition(condition).expires_at(expires);
            match self.table.put(put).await {
                Ok(_) => return Ok((out, queue)),
                Err(e) if e.kind() == StoreErrorKind::ConditionFailed => {}
                Err(e) => return Err(e),
            }
        }
        Err(den_storage::StoreError::new(StoreErrorKind::ConditionFailed, "the queue kept changing"))
    }

    /// Servers whose queue has den in a voice channel with something to play
    /// (what a restarted process resumes).
    pub async fn active(&self) -> StoreResult<Vec<u64>> {
        let mut out = Vec::new();
        let mut cursor = None;
        loop {
            let page = self.table.query(Query::pk("1").on_index(ACTIVE_INDEX).cursor(cursor)).await?;
            out.extend(page.items.iter().filter_map(|i| i.attrs.get("guild")?.as_str()?.parse::<u64>().ok()));
            cursor = page.cursor;
            if cursor.is_none() {
                return Ok(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::track::Source;

    fn t(name: &str) -> Track {
        Track { title: name.into(), artist: None, duration_ms: Some(1000), source: Source::File { path: name.into() } }
    }

    fn titles(q: &Queue) -> (Option<String>, Vec<String>) {
        (q.current.as_ref().map(|e| e.track.title.clone()), q.upcoming.iter().map(|e| e.track.title.clone()).collect())
    }

    #[tokio::test]
    async fn playing_queues_are_found_again_and_stopped_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let clock: Arc<dyn Clock> = Arc::new(den_core::SystemClock);
        let store = den_storage::sqlite::SqliteStore::open(
            &den_storage::sqlite::SqliteOptions::new(dir.path().join("s.db")),
            clock.clone(),
        )
        .unwrap();
        let queues = Queues::new(den_storage::Store::table(&store, table_spec()).await.unwrap(), clock);
        for guild in [1, 2, 3] {
            queues
                .update(guild, |q| {
                    q.voice_channel = Some(9);
                    q.add(vec![t("a")], 5);
                })
                .await
                .unwrap();
        }
        queues.update(2, Queue::stop).await.unwrap();
        queues.update(3, |q| q.voice_channel = None).await.unwrap();
        assert_eq!(queues.active().await.unwrap(), [1]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn twenty_people_adding_at_once_all_land_with_ids_of_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let clock: Arc<dyn Clock> = Arc::new(den_core::SystemClock);
        let options = den_storage::sqlite::SqliteOptions::new(dir.path().join("s.db"));
        let store = den_storage::sqlite::SqliteStore::open(&options, clock.clone()).unwrap();
        let queues = Queues::new(den_storage::Store::table(&store, table_spec()).await.unwrap(), clock);
        let adds = (0..20u64).map(|n| {
            let queues = queues.clone();
            tokio::spawn(async move { queues.update(7, |q| q.add(vec![t(&format!("t{n}"))], n)).await.unwrap().0 })
        });
        let mut ids: Vec<u64> =
            futures_util::future::join_all(adds).await.into_iter().flat_map(Result::unwrap).collect();
        ids.sort_unstable();
        assert_eq!(ids, (1..=20).collect::<Vec<_>>());
        let q = queues.get(7).await.unwrap();
        assert_eq!(q.upcoming.len() + usize::from(q.current.is_some()), 20, "no entry lost");
    }

    #[test]
    fn the_first_track_added_plays_and_the_rest_wait_in_order() {
        let mut q = Queue::default();
        assert_eq!(q.add(vec![t("a"), t("b")], 1), [1, 2]);
        assert_eq!(q.add(vec![t("c")], 2), [3]);
        assert_eq!(titles(&q), (Some("a".into()), vec!["b".into(), "c".into()]));
        q.finished();
        assert_eq!(titles(&q), (Some("b".into()), vec!["c".into()]));
    }

    #[test]
    fn loops_repeat_the_track_or_the_queue_and_skip_always_moves_on() {
        let mut q = Queue::default();
        q.add(vec![t("a"), t("b")], 1);
        q.loop_mode = LoopMode::Track;
        let g = q.generation;
        q.finished();
        assert_eq!(titles(&q).0.as_deref(), Some("a"));
        assert!(q.generation > g, "a looped track starts again");
        q.loop_mode = LoopMode::Queue;
        q.finished();
        assert_eq!(titles(&q), (Some("b".into()), vec!["a".into()]));
        q.finished();
        assert_eq!(titles(&q), (Some("a".into()), vec!["b".into()]));
        q.loop_mode = LoopMode::Track;
        q.skip();
        assert_eq!(titles(&q), (Some("b".into()), vec![]), "a skipped track does not come back");
    }

    #[test]
    fn ids_never_repeat_after_removals() {
        let mut q = Queue::default();
        q.add(vec![t("a"), t("b"), t("c")], 1);
        assert_eq!(q.remove(2).map(|e| e.id), Some(3));
        assert!(q.remove(5).is_none());
        assert_eq!(q.add(vec![t("d")], 1), [4]);
        let mut ids: Vec<u64> = q.upcoming.iter().map(|e| e.id).collect();
        ids.extend(q.current.iter().map(|e| e.id));
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 3);
    }

    #[test]
    fn skip_to_previous_move_dupes_and_stop() {
        let mut q = Queue::default();
        q.add(vec![t("a"), t("b"), t("c"), t("d"), t("b")], 1);
        assert!(q.skip_to(2));
        assert_eq!(titles(&q), (Some("c".into()), vec!["d".into(), "b".into()]));
        assert!(q.previous(), "back to the track that was playing");
        assert_eq!(titles(&q), (Some("a".into()), vec!["c".into(), "d".into(), "b".into()]));
        q.add(vec![t("d")], 2);
        assert_eq!(q.remove_dupes(), 1);
        assert_eq!(q.move_entry(3, 1).map(|e| e.track.title.clone()), Some("b".into()));
        assert_eq!(titles(&q), (Some("a".into()), vec!["b".into(), "c".into(), "d".into()]));
        assert!(!q.skip_to(9));
        q.voice_channel = Some(5);
        q.stop();
        assert_eq!(titles(&q), (None, vec![]));
        assert_eq!(q.voice_channel, Some(5), "den leaves when idle, not at once");
    }
}
