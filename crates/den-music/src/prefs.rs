//! What each person keeps for themselves: preferences (`/music-prefs`) and
//! personal playlists (`/playlist`), in the `music` table under `user:<id>`.

use std::sync::Arc;

use den_storage::{Condition, Put, Query, SkCondition, StoreResult, Table};
use serde::{Deserialize, Serialize};

use crate::track::Track;

/// Playlists one person may keep.
pub const MAX_PLAYLISTS: usize = 25;
/// Tracks one playlist may hold.
pub const MAX_PLAYLIST_TRACKS: usize = 200;

/// Where words in `/play` are looked up first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PreferredSource {
    /// The server's music library.
    #[default]
    Library,
    /// yt-dlp's search (YouTube), where the operator enabled it.
    Ytdlp,
}

impl PreferredSource {
    /// Its name in commands.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            PreferredSource::Library => "library",
            PreferredSource::Ytdlp => "ytdlp",
        }
    }

    /// Reads a name given by [`PreferredSource::as_str`].
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        [PreferredSource::Library, PreferredSource::Ytdlp].into_iter().find(|p| p.as_str() == s)
    }
}

/// One person's preferences.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Prefs {
    /// Volume a queue they start plays at.
    pub volume: Option<u16>,
    /// Whether den announces the tracks they queued as they start.
    pub announce: Option<bool>,
    /// Where their words are looked up.
    pub source: PreferredSource,
}

impl Prefs {
    /// Lines describing them, as `/music-prefs` shows them.
    #[must_use]
    pub fn describe(&self, playlists: &[(String, usize)]) -> String {
        let lists = if playlists.is_empty() {
            "none".to_owned()
        } else {
            playlists.iter().map(|(n, c)| format!("{n} ({c})")).collect::<Vec<_>>().join(", ")
        };
        [
            format!(
                "Volume when you start the music: {}",
                self.volume.map_or("the server's".to_owned(), |v| format!("{v}%"))
            ),
            format!("Announce your tracks: {}", if self.announce.unwrap_or(true) { "yes" } else { "no" }),
            format!("Words are looked up in: {}", self.source.as_str()),
            format!("Playlists: {lists}"),
        ]
        .join("\n")
    }
}

/// A saved playlist.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Playlist {
    /// Its tracks, in order.
    pub tracks: Vec<Track>,
}

/// People's preferences and playlists.
#[derive(Clone, Debug)]
pub struct People {
    table: Arc<dyn Table>,
}

fn pk(user: u64) -> String {
    format!("user:{user}")
}

fn object<T: Serialize>(value: &T) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    }
}

/// A playlist name as stored: trimmed, lower case, at most 50 characters.
#[must_use]
pub fn playlist_key(name: &str) -> String {
    name.trim().to_lowercase().chars().take(50).collect()
}

impl People {
    /// Kept in `table` (the `music` table).
    #[must_use]
    pub fn new(table: Arc<dyn Table>) -> Self {
        Self { table }
    }

    /// `user`'s preferences (the defaults when they have none).
    pub async fn prefs(&self, user: u64) -> StoreResult<Prefs> {
        let item = self.table.get(&pk(user), "prefs").await?;
        Ok(item.and_then(|i| serde_json::from_value(serde_json::Value::Object(i.attrs)).ok()).unwrap_or_default())
    }

    /// Replaces `user`'s preferences.
    pub async fn save_prefs(&self, user: u64, prefs: &Prefs) -> StoreResult<()> {
        self.table.put(Put::new(pk(user), "prefs", object(prefs))).await.map(drop)
    }

    /// `user`'s playlists: name and number of tracks.
    pub async fn playlists(&self, user: u64) -> StoreResult<Vec<(String, usize)>> {
        let query = Query::pk(pk(user)).sk(SkCondition::Prefix("playlist:".into())).limit(MAX_PLAYLISTS * 2);
        let page = self.table.query(query).await?;
        Ok(page
            .items
            .iter()
            .map(|i| {
                let name = i.sk.trim_start_matches("playlist:").to_owned();
                (name, i.attrs.get("tracks").and_then(|t| t.as_array()).map_or(0, Vec::len))
            })
            .collect())
    }

    /// One of `user`'s playlists.
    pub async fn playlist(&self, user: u64, name: &str) -> StoreResult<Option<Playlist>> {
        let item = self.table.get(&pk(user), &format!("playlist:{}", playlist_key(name))).await?;
        Ok(item.and_then(|i| serde_json::from_value(serde_json::Value::Object(i.attrs)).ok()))
    }

    /// Saves a playlist (replacing one of that name); `Err` with a line when
    /// `user` already keeps as many as they may.
    pub async fn save_playlist(&self, user: u64, name: &str, tracks: Vec<Track>) -> StoreResult<Result<usize, String>> {
        let key = playlist_key(name);
        let existing = self.playlists(user).await?;
        if existing.len() >= MAX_PLAYLISTS && !existing.iter().any(|(n, _)| *n == key) {
            return Ok(Err(format!("You keep {MAX_PLAYLISTS} playlists already; delete one first.")));
        }
        let tracks: Vec<Track> = tracks.into_iter().take(MAX_PLAYLIST_TRACKS).collect();
        let count = tracks.len();
        self.table.put(Put::new(pk(user), format!("playlist:{key}"), object(&Playlist { tracks }))).await?;
        Ok(Ok(count))
    }

    /// Deletes a playlist; `false` when there was none of that name.
    pub async fn delete_playlist(&self, user: u64, name: &str) -> StoreResult<bool> {
        self.table.delete(&pk(user), &format!("playlist:{}", playlist_key(name)), Condition::None).await
    }
}
