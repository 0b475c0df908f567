//! The music library: audio files under a folder the operator names, their
//! tags read once, indexed in SQLite FTS5 for `/play` and `/search`. Words
//! match as prefixes ("bohem rhaps"); when nothing matches, trigrams of the
//! words find names with a typo in them ("bohemain").

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, params};
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::{MetadataOptions, StandardTagKey};
use symphonia::core::probe::Hint;

use crate::track::{Source, Track};

/// File extensions the library indexes.
pub const AUDIO_EXTENSIONS: &[&str] = &["mp3", "ogg", "opus", "oga", "flac", "wav", "m4a", "mp4", "aac", "webm"];
/// Files indexed at most (a folder of a whole disk is not a library).
const MAX_FILES: usize = 100_000;

/// An indexed folder of audio files.
pub struct Library {
    root: PathBuf,
    db: Mutex<Connection>,
    files: usize,
}

impl std::fmt::Debug for Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Library").field("root", &self.root).field("files", &self.files).finish_non_exhaustive()
    }
}

/// Why the library could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    /// The folder cannot be read.
    #[error("the music library {path} cannot be read: {source}")]
    Folder {
        /// The folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// SQLite failed (it should not: the index is in memory).
    #[error("the library index failed: {0}")]
    Index(#[from] rusqlite::Error),
}

impl Library {
    /// Indexes every audio file under `root` (blocking: run it off the async threads).
    ///
    /// # Errors
    /// When `root` cannot be read.
    pub fn open(root: &Path) -> Result<Self, LibraryError> {
        let folder_error = |source| LibraryError::Folder { path: root.to_owned(), source };
        let root = root.canonicalize().map_err(folder_error)?;
        let db = Connection::open_in_memory()?;
        db.execute_batch(
            "CREATE TABLE tracks (id INTEGER PRIMARY KEY, path TEXT NOT NULL, title TEXT NOT NULL, artist TEXT, duration_ms INTEGER);
             CREATE VIRTUAL TABLE words USING fts5(title, artist, name, content='', tokenize='unicode61 remove_diacritics 2');
             CREATE VIRTUAL TABLE grams USING fts5(text, content='', tokenize='trigram');",
        )?;
        let mut files = Vec::new();
        walk(&root, &mut files).map_err(folder_error)?;
        files.truncate(MAX_FILES);
        for path in &files {
            let relative = path.strip_prefix(&root).unwrap_or(path).to_string_lossy().into_owned();
            let tags = read_tags(path);
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let title = tags.title.clone().unwrap_or_else(|| stem.clone());
            db.execute(
                "INSERT INTO tracks (path, title, artist, duration_ms) VALUES (?1, ?2, ?3, ?4)",
                params![relative, title, tags.artist, tags.duration_ms.map(|d| d as i64)],
            )?;
            let id = db.last_insert_rowid();
            let name = relative.replace(['/', '_', '-', '.'], " ");
            db.execute(
                "INSERT INTO words (rowid, title, artist, name) VALUES (?1, ?2, ?3, ?4)",
                params![id, title, tags.artist, name],
            )?;
            let all = format!("{title} {} {name}", tags.artist.as_deref().unwrap_or_default()).to_lowercase();
            db.execute("INSERT INTO grams (rowid, text) VALUES (?1, ?2)", params![id, all])?;
        }
        Ok(Self { root, db: Mutex::new(db), files: files.len() })
    }

    /// How many files it holds.
    #[must_use]
    pub fn len(&self) -> usize {
        self.files
    }

    /// Whether it holds no file.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.files == 0
    }

    /// The file of a track's relative path, when it is still inside the library.
    #[must_use]
    pub fn path_of(&self, relative: &str) -> Option<PathBuf> {
        let path = self.root.join(relative).canonicalize().ok()?;
        path.starts_with(&self.root).then_some(path)
    }

    /// Up to `limit` tracks matching `query`, best first.
    #[must_use]
    pub fn search(&self, query: &str, limit: usize) -> Vec<Track> {
        let words: Vec<String> = query
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(|w| format!("\"{}\"*", w.to_lowercase()))
            .collect();
        if words.is_empty() {
            return Vec::new();
        }
        let db = self.db.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let exact = rows(
            &db,
            "SELECT t.path, t.title, t.artist, t.duration_ms FROM words w JOIN tracks t ON t.id = w.rowid
             WHERE words MATCH ?1 ORDER BY bm25(words, 4.0, 2.0, 1.0) LIMIT ?2",
            &words.join(" "),
            limit,
        );
        if !exact.is_empty() {
            return exact;
        }
        // Typos: any trigram of the query's words, ranked by how many match.
        let grams: Vec<String> = query
            .to_lowercase()
            .split(|c: char| !c.is_alphanumeric())
            .flat_map(|w| {
                let chars: Vec<char> = w.chars().collect();
                chars.windows(3).map(|g| format!("\"{}\"", g.iter().collect::<String>())).collect::<Vec<_>>()
            })
            .collect();
        if grams.is_empty() {
            return Vec::new();
        }
        rows(
            &db,
            "SELECT t.path, t.title, t.artist, t.duration_ms FROM grams g JOIN tracks t ON t.id = g.rowid
             WHERE grams MATCH ?1 ORDER BY bm25(grams) LIMIT ?2",
            &grams.join(" OR "),
            limit,
        )
    }
}

fn rows(db: &Connection, sql: &str, pattern: &str, limit: usize) -> Vec<Track> {
    let Ok(mut stmt) = db.prepare_cached(sql) else { return Vec::new() };
    let found = stmt.query_map(params![pattern, limit as i64], |r| {
        Ok(Track {
            source: Source::File { path: r.get(0)? },
            title: r.get(1)?,
            artist: r.get(2)?,
            duration_ms: r.get::<_, Option<i64>>(3)?.map(|d| d.max(0) as u64),
        })
    });
    found.map(|rows| rows.filter_map(Result::ok).collect()).unwrap_or_default()
}

/// Audio files under `dir`, symlinks not followed (a link could leave the library).
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.filter_map(Result::ok).collect();
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        if out.len() >= MAX_FILES {
            break;
        }
        let Ok(kind) = entry.file_type() else { continue };
        let path = entry.path();
        if kind.is_dir() {
            walk(&path, out)?;
        } else if kind.is_file() && is_audio(&path) {
            out.push(path);
        }
    }
    Ok(())
}

fn is_audio(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| AUDIO_EXTENSIONS.contains(&e.to_lowercase().as_str()))
}

/// What a file's tags and headers say.
#[derive(Debug, Default, PartialEq)]
pub struct Tags {
    /// Title tag.
    pub title: Option<String>,
    /// Artist tag.
    pub artist: Option<String>,
    /// Length from the container's frame count.
    pub duration_ms: Option<u64>,
}

/// Reads a file's tags and length; a file symphonia cannot read gives none.
#[must_use]
pub fn read_tags(path: &Path) -> Tags {
    let Ok(file) = std::fs::File::open(path) else { return Tags::default() };
    let mss = MediaSourceStream::new(Box::new(file), Default::default());
    let mut hint = Hint::new();
    if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
        hint.with_extension(ext);
    }
    let probe = symphonia::default::get_probe();
    let Ok(mut probed) = probe.format(&hint, mss, &FormatOptions::default(), &MetadataOptions::default()) else {
        return Tags::default();
    };
    let mut tags = Tags::default();
    let mut take = |rev: &symphonia::core::meta::MetadataRevision| {
        for tag in rev.tags() {
            match tag.std_key {
                Some(StandardTagKey::TrackTitle) if tags.title.is_none() => tags.title = Some(tag.value.to_string()),
                Some(StandardTagKey::Artist) if tags.artist.is_none() => tags.artist = Some(tag.value.to_string()),
                _ => {}
            }
        }
    };
    if let Some(rev) = probed.metadata.get().as_ref().and_then(|m| m.current()) {
        take(rev);
    }
    if let Some(rev) = probed.format.metadata().current() {
        take(rev);
    }
    tags.duration_ms = probed.format.default_track().and_then(|t| {
        let p = &t.codec_params;
        Some(p.n_frames? * 1000 / u64::from(p.sample_rate?))
    });
    tags
}
