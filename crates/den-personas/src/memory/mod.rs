//! What personas remember: the channel transcript (short-term, kept 30 days)
//! and facts (long-term) about people and personas, with recall scored by
//! relevance (BM25), importance and recency.
//!
//! One trait, [`Memory`], and two backends:
//! - [`SqliteMemory`]: everything personal in one SQLite file with FTS5, so
//!   forgetting a person is one transaction after which the index, freed
//!   pages and write-ahead log hold nothing of them (one machine);
//! - [`TableMemory`]: a den table, for stores shared by several processes
//!   (the AWS backend), so every worker remembers the same things.
//!
//! Both pass the same tests (`tests` below run each case on both).

mod rank;
mod sqlite;
mod table;

use std::sync::Arc;

use async_trait::async_trait;
use den_core::Timestamp;

pub use sqlite::SqliteMemory;
pub use table::{TableMemory, table_spec};

/// How long the transcript keeps a message.
pub const TRANSCRIPT_DAYS: i64 = 30;

/// How long den remembers that it forgot someone: longer than any job that
/// carries their words can wait in a queue (4 days) or a dead-letter queue
/// (14), so a late job cannot bring their words back.
pub const FORGOTTEN_DAYS: i64 = 15;

/// One message of a channel's transcript.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// Discord message id.
    pub message_id: u64,
    /// Author: a person's user id, or 0 for a persona.
    pub user_id: u64,
    /// The persona that said it, if one did.
    pub persona: Option<String>,
    /// For a persona's line, the person it answered (0: nobody): forgetting
    /// that person removes it too, since it may echo what they said.
    pub about_user: u64,
    /// The name shown for the author.
    pub author: String,
    /// The text (already cleaned).
    pub text: String,
    /// When it was said.
    pub at: Timestamp,
}

/// Whom a fact is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    /// A person in a guild.
    User(u64),
    /// A persona in a guild.
    Persona(String),
    /// What a persona knows about a person.
    PersonaUser(String, u64),
}

impl Subject {
    /// The person and the persona it names.
    fn parts(&self) -> (Option<u64>, Option<&str>) {
        match self {
            Subject::User(u) => (Some(*u), None),
            Subject::Persona(p) => (None, Some(p)),
            Subject::PersonaUser(p, u) => (Some(*u), Some(p)),
        }
    }
}

/// A fact to store.
#[derive(Clone, Debug, PartialEq)]
pub struct NewFact {
    /// Whom it is about.
    pub subject: Subject,
    /// The fact.
    pub text: String,
    /// 0 (trivia) to 1 (core).
    pub importance: f64,
    /// `remember`, `consolidation`, `admin`.
    pub source: String,
    /// Stores it at most once: a second fact with the same key is the first
    /// (a redelivered `/remember` job, a replayed consolidation).
    pub key: Option<String>,
}

impl NewFact {
    /// A fact about `subject` from `source`, without a key.
    #[must_use]
    pub fn new(subject: Subject, text: impl Into<String>, importance: f64, source: &str) -> Self {
        Self { subject, text: text.into(), importance, source: source.into(), key: None }
    }

    /// The same fact, stored at most once under `key`.
    #[must_use]
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }
}

/// A long-term fact.
#[derive(Clone, Debug, PartialEq)]
pub struct Fact {
    /// Its id.
    pub id: i64,
    /// Guild.
    pub guild: u64,
    /// The person it is about (if any).
    pub user_id: Option<u64>,
    /// The persona it belongs to (if any).
    pub persona: Option<String>,
    /// The fact.
    pub text: String,
    /// 0 (trivia) to 1 (core).
    pub importance: f64,
    /// `remember`, `consolidation`, `admin`.
    pub source: String,
    /// Last written.
    pub updated: Timestamp,
}

/// A recalled fact and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Recalled {
    /// The fact.
    pub fact: Fact,
    /// Combined score: relevance, importance and recency.
    pub score: f64,
}

/// An error of the memory store.
#[derive(Debug, thiserror::Error)]
#[error("memory store: {0}")]
pub struct MemoryError(String);

impl MemoryError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl From<rusqlite::Error> for MemoryError {
    fn from(e: rusqlite::Error) -> Self {
        Self(e.to_string())
    }
}

impl From<den_storage::StoreError> for MemoryError {
    fn from(e: den_storage::StoreError) -> Self {
        Self(e.to_string())
    }
}

/// When Discord made message `id` (its snowflake's time), to compare with
/// when a person was forgotten.
fn said_at(message_id: u64) -> Timestamp {
    Timestamp(i64::try_from((message_id >> 22).saturating_add(1_420_070_400_000)).unwrap_or(i64::MAX))
}

/// What personas remember, whatever keeps it.
#[async_trait]
pub trait Memory: Send + Sync + std::fmt::Debug {
    /// Records a transcript line (again: replaces it, for edits). A line by
    /// a person forgotten after they said it is not recorded.
    async fn record(&self, guild: u64, channel: u64, line: Line) -> Result<(), MemoryError>;

    /// The last `n` lines of a channel newer than 30 days before `now`, oldest first.
    async fn recent(&self, guild: u64, channel: u64, n: usize, now: Timestamp) -> Result<Vec<Line>, MemoryError>;

    /// One transcript line.
    async fn line(&self, guild: u64, channel: u64, message_id: u64) -> Result<Option<Line>, MemoryError>;

    /// Drops transcript lines older than 30 days and old records of who was
    /// forgotten; returns how many lines went (a store whose TTL does it: 0).
    async fn expire(&self, now: Timestamp) -> Result<usize, MemoryError>;

    /// Stores a fact (once per key); returns its id.
    async fn remember(&self, guild: u64, fact: NewFact, now: Timestamp) -> Result<i64, MemoryError>;

    /// Rewrites a fact (consolidation's UPDATE); `false` when it is gone.
    async fn update(&self, id: i64, text: String, importance: f64, now: Timestamp) -> Result<bool, MemoryError>;

    /// Deletes one fact (consolidation's DELETE); `false` when it was gone.
    async fn delete(&self, id: i64) -> Result<bool, MemoryError>;

    /// Every fact about `user` in `guild` (theirs and what personas know of them), newest first.
    async fn about_user(&self, guild: u64, user: u64) -> Result<Vec<Fact>, MemoryError>;

    /// Forgets `user` in `guild`: facts about them (those containing `text`,
    /// or all) and, when forgetting all, their transcript lines and the
    /// personas' lines that answered them, leaving nothing in the backend's
    /// files, and remembering when (see [`Memory::forgotten_at`]). Returns how many rows went.
    async fn forget_user(
        &self,
        guild: u64,
        user: u64,
        text: Option<String>,
        now: Timestamp,
    ) -> Result<usize, MemoryError>;

    /// When `user` was last forgotten in `guild` (within [`FORGOTTEN_DAYS`]).
    async fn forgotten_at(&self, guild: u64, user: u64) -> Result<Option<Timestamp>, MemoryError>;

    /// Facts for a reply by `persona` to `user`: the person's facts, the
    /// persona's own, and what the persona knows of the person, scored by
    /// relevance to `query` (BM25 over those facts), importance and recency;
    /// best first. Facts about anyone else are never candidates.
    async fn recall(
        &self,
        guild: u64,
        persona: &str,
        user: u64,
        query: &str,
        limit: usize,
        now: Timestamp,
    ) -> Result<Vec<Recalled>, MemoryError>;
}

/// The memory a process uses: one of the backends behind the trait.
#[derive(Clone, Debug)]
pub struct MemoryStore(Arc<dyn Memory>);

impl MemoryStore {
    /// Opens (creating) an SQLite memory at `path`.
    pub fn open(path: &std::path::Path) -> Result<Self, MemoryError> {
        Ok(Self(Arc::new(SqliteMemory::open(path)?)))
    }

    /// An SQLite memory in RAM (tests, `den chat --ephemeral`).
    pub fn in_memory() -> Result<Self, MemoryError> {
        Ok(Self(Arc::new(SqliteMemory::in_memory()?)))
    }

    /// Memory in a den table (declared by [`table_spec`]), shared by every
    /// process on the same store.
    #[must_use]
    pub fn on_table(table: Arc<dyn den_storage::Table>) -> Self {
        Self(Arc::new(TableMemory::new(table)))
    }

    /// Any backend.
    #[must_use]
    pub fn from_backend(memory: Arc<dyn Memory>) -> Self {
        Self(memory)
    }
}

impl std::ops::Deref for MemoryStore {
    type Target = dyn Memory;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

#[cfg(test)]
mod tests;
