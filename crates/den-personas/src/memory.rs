//! What personas remember: the channel transcript (short-term, kept 30 days)
//! and facts (long-term) about people and personas, with full-text recall.
//!
//! On one machine everything personal lives in one SQLite file, so that
//! forgetting a person is one transaction: rows, full-text index and free
//! pages (`secure_delete`) are scrubbed, and the WAL is truncated afterwards.
//! On a store shared by several processes (the AWS backend) memory lives in a
//! den table instead ([`MemoryStore::on_table`]), so every worker remembers
//! the same things.

use std::path::Path;
use std::sync::{Arc, Mutex};

use den_core::Timestamp;
use rusqlite::{Connection, OptionalExtension, params};

use crate::memory_table::TableMemory;
pub use crate::memory_table::table_spec;

/// How long the transcript keeps a message.
pub const TRANSCRIPT_DAYS: i64 = 30;

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

/// A long-term fact.
#[derive(Clone, Debug, PartialEq)]
pub struct Fact {
    /// Row id.
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
    pub(crate) fn new(message: String) -> Self {
        Self(message)
    }
}

impl From<rusqlite::Error> for MemoryError {
    fn from(e: rusqlite::Error) -> Self {
        Self(e.to_string())
    }
}

/// Weights of the recall score (after Generative Agents: recency 0.5,
/// relevance 3, importance 2).
const W_RECENCY: f64 = 0.5;
const W_RELEVANCE: f64 = 3.0;
const W_IMPORTANCE: f64 = 2.0;

/// The memory store.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    conn: Arc<Mutex<Connection>>,
    /// When set, memory lives in this den table and `conn` is unused.
    shared: Option<TableMemory>,
}

impl MemoryStore {
    /// Opens (creating) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, MemoryError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| MemoryError(format!("{}: {e}", dir.display())))?;
        }
        Self::init(Connection::open(path)?)
    }

    /// A store in memory (tests, `den chat --ephemeral`).
    pub fn in_memory() -> Result<Self, MemoryError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self, MemoryError> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(
            r"
            PRAGMA journal_mode = WAL;
            PRAGMA synchronous = NORMAL;
            PRAGMA secure_delete = ON;
            CREATE TABLE IF NOT EXISTS facts(
                id INTEGER PRIMARY KEY,
                guild INTEGER NOT NULL,
                user_id INTEGER,
                persona TEXT,
                text TEXT NOT NULL,
                importance REAL NOT NULL,
                source TEXT NOT NULL,
                updated_ms INTEGER NOT NULL,
                scope TEXT NOT NULL
            );
            CREATE INDEX IF NOT EXISTS facts_by_user ON facts(guild, user_id);
            CREATE INDEX IF NOT EXISTS facts_by_persona ON facts(guild, persona);
            -- `scope` holds one token naming whose fact it is, so that a recall
            -- ranks only the facts it may use instead of every match in the guild.
            CREATE VIRTUAL TABLE IF NOT EXISTS facts_fts USING fts5(
                text, scope, content = 'facts', content_rowid = 'id', tokenize = 'porter unicode61', detail = column
            );
            CREATE TRIGGER IF NOT EXISTS facts_ai AFTER INSERT ON facts BEGIN
                INSERT INTO facts_fts(rowid, text, scope) VALUES (new.id, new.text, new.scope);
            END;
            CREATE TRIGGER IF NOT EXISTS facts_ad AFTER DELETE ON facts BEGIN
                INSERT INTO facts_fts(facts_fts, rowid, text, scope) VALUES ('delete', old.id, old.text, old.scope);
            END;
            CREATE TRIGGER IF NOT EXISTS facts_au AFTER UPDATE OF text ON facts BEGIN
                INSERT INTO facts_fts(facts_fts, rowid, text, scope) VALUES ('delete', old.id, old.text, old.scope);
                INSERT INTO facts_fts(rowid, text, scope) VALUES (new.id, new.text, new.scope);
            END;
            CREATE TABLE IF NOT EXISTS transcript(
                guild INTEGER NOT NULL,
                channel INTEGER NOT NULL,
                message_id INTEGER NOT NULL,
                user_id INTEGER NOT NULL,
                persona TEXT,
                author TEXT NOT NULL,
                text TEXT NOT NULL,
                at_ms INTEGER NOT NULL,
                about_user INTEGER NOT NULL DEFAULT 0,
                PRIMARY KEY (guild, channel, message_id)
            ) WITHOUT ROWID;
            CREATE INDEX IF NOT EXISTS transcript_by_user ON transcript(guild, user_id);
            CREATE INDEX IF NOT EXISTS transcript_by_about ON transcript(guild, about_user);
            CREATE INDEX IF NOT EXISTS transcript_by_age ON transcript(at_ms);
            ",
        )?;
        Ok(Self { conn: Arc::new(Mutex::new(conn)), shared: None })
    }

    /// Memory in a den table (declared by [`table_spec`]), shared by every
    /// process on the same store.
    pub fn on_table(table: Arc<dyn den_storage::Table>) -> Result<Self, MemoryError> {
        let mut store = Self::in_memory()?;
        store.shared = Some(TableMemory::new(table));
        Ok(store)
    }

    /// Runs `f` on the SQLite connection off the async threads (bulk loads
    /// in benchmarks); a store on a den table refuses.
    pub async fn run<T, F>(&self, f: F) -> Result<T, MemoryError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, MemoryError> + Send + 'static,
    {
        if self.shared.is_some() {
            return Err(MemoryError("this memory lives in a den table, not an SQLite file".into()));
        }
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&mut c)
        })
        .await
        .map_err(|e| MemoryError(format!("memory task failed: {e}")))?
    }

    /// Records a transcript line (again: replaces it, for edits).
    pub async fn record(&self, guild: u64, channel: u64, line: Line) -> Result<(), MemoryError> {
        if let Some(t) = &self.shared {
            return t.record(guild, channel, line).await;
        }
        self.run(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO transcript VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    guild as i64,
                    channel as i64,
                    line.message_id as i64,
                    line.user_id as i64,
                    line.persona,
                    line.author,
                    line.text,
                    line.at.0,
                    line.about_user as i64
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// The last `n` lines of a channel newer than 30 days before `now`, oldest first.
    pub async fn recent(&self, guild: u64, channel: u64, n: usize, now: Timestamp) -> Result<Vec<Line>, MemoryError> {
        if let Some(t) = &self.shared {
            return t.recent(guild, channel, n, now).await;
        }
        let since = now.0 - TRANSCRIPT_DAYS * 86_400_000;
        self.run(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {LINE_COLUMNS} FROM transcript
                 WHERE guild = ?1 AND channel = ?2 AND at_ms >= ?3 ORDER BY message_id DESC LIMIT ?4"
            ))?;
            let mut lines = stmt
                .query_map(params![guild as i64, channel as i64, since, n as i64], line_row)?
                .collect::<Result<Vec<_>, _>>()?;
            lines.reverse();
            Ok(lines)
        })
        .await
    }

    /// One transcript line.
    pub async fn line(&self, guild: u64, channel: u64, message_id: u64) -> Result<Option<Line>, MemoryError> {
        if let Some(t) = &self.shared {
            return t.line_at(guild, channel, message_id).await;
        }
        self.run(move |c| {
            Ok(c.query_row(
                &format!("SELECT {LINE_COLUMNS} FROM transcript WHERE guild = ?1 AND channel = ?2 AND message_id = ?3"),
                params![guild as i64, channel as i64, message_id as i64],
                line_row,
            )
            .optional()?)
        })
        .await
    }

    /// Drops transcript lines older than 30 days; returns how many. (In a
    /// den table the store's TTL does it: nothing to do here.)
    pub async fn expire(&self, now: Timestamp) -> Result<usize, MemoryError> {
        if self.shared.is_some() {
            return Ok(0);
        }
        let before = now.0 - TRANSCRIPT_DAYS * 86_400_000;
        self.run(move |c| Ok(c.execute("DELETE FROM transcript WHERE at_ms < ?1", [before])?)).await
    }

    /// Stores a fact; returns its id.
    pub async fn remember(
        &self,
        guild: u64,
        subject: Subject,
        text: String,
        importance: f64,
        source: &str,
        now: Timestamp,
    ) -> Result<i64, MemoryError> {
        if let Some(t) = &self.shared {
            return t.remember(guild, subject, text, importance, source, now).await;
        }
        let scope = scope_token(guild, &subject);
        let (user, persona) = match subject {
            Subject::User(u) => (Some(u as i64), None),
            Subject::Persona(p) => (None, Some(p)),
            Subject::PersonaUser(p, u) => (Some(u as i64), Some(p)),
        };
        let source = source.to_owned();
        self.run(move |c| {
            c.execute(
                "INSERT INTO facts(guild, user_id, persona, text, importance, source, updated_ms, scope)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![guild as i64, user, persona, text, importance.clamp(0.0, 1.0), source, now.0, scope],
            )?;
            Ok(c.last_insert_rowid())
        })
        .await
    }

    /// Rewrites a fact (consolidation's UPDATE).
    pub async fn update(&self, id: i64, text: String, importance: f64, now: Timestamp) -> Result<bool, MemoryError> {
        if let Some(t) = &self.shared {
            return t.update(id, text, importance, now).await;
        }
        self.run(move |c| {
            Ok(c.execute(
                "UPDATE facts SET text = ?2, importance = ?3, updated_ms = ?4 WHERE id = ?1",
                params![id, text, importance.clamp(0.0, 1.0), now.0],
            )? == 1)
        })
        .await
    }

    /// Deletes one fact (consolidation's DELETE).
    pub async fn delete(&self, id: i64) -> Result<bool, MemoryError> {
        if let Some(t) = &self.shared {
            return t.delete(id).await;
        }
        self.run(move |c| Ok(c.execute("DELETE FROM facts WHERE id = ?1", [id])? == 1)).await
    }

    /// Every fact about `user` in `guild` (theirs and what personas know of them).
    pub async fn about_user(&self, guild: u64, user: u64) -> Result<Vec<Fact>, MemoryError> {
        if let Some(t) = &self.shared {
            return t.about_user(guild, user).await;
        }
        self.run(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {FACT_COLUMNS} FROM facts WHERE guild = ?1 AND user_id = ?2 ORDER BY updated_ms DESC"
            ))?;
            Ok(stmt.query_map(params![guild as i64, user as i64], fact)?.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Forgets `user` in `guild`: facts about them (those containing `text`,
    /// or all) and, when forgetting all, their transcript lines and the
    /// personas' lines that answered them. Returns how
    /// many rows went. The full-text index is rebuilt without them and the WAL
    /// truncated, so their words remain nowhere in the files.
    pub async fn forget_user(&self, guild: u64, user: u64, text: Option<String>) -> Result<usize, MemoryError> {
        if let Some(t) = &self.shared {
            return t.forget_user(guild, user, text).await;
        }
        self.run(move |c| {
            let tx = c.transaction()?;
            let mut gone = match &text {
                Some(t) => tx.execute(
                    "DELETE FROM facts WHERE guild = ?1 AND user_id = ?2 AND instr(lower(text), lower(?3)) > 0",
                    params![guild as i64, user as i64, t],
                )?,
                None => tx.execute(
                    "DELETE FROM facts WHERE guild = ?1 AND user_id = ?2",
                    params![guild as i64, user as i64],
                )?,
            };
            if text.is_none() {
                gone += tx.execute(
                    "DELETE FROM transcript WHERE guild = ?1 AND (user_id = ?2 OR about_user = ?2)",
                    params![guild as i64, user as i64],
                )?;
            }
            tx.commit()?;
            scrub(c)?;
            Ok(gone)
        })
        .await
    }

    /// Facts for a reply by `persona` to `user`: the person's facts, the
    /// persona's own, and what the persona knows of the person, scored by
    /// relevance to `query` (BM25), importance and recency; best first.
    /// Facts about anyone else are never candidates.
    ///
    /// The candidates are the person's and the persona's most recent facts
    /// plus older ones the full-text index matches. BM25 is computed by den
    /// over those candidates: FTS5's own `bm25()` derives its IDF by scanning
    /// each term's whole doclist, which for common words in a big guild costs
    /// milliseconds, and the person's own facts are the right corpus anyway.
    pub async fn recall(
        &self,
        guild: u64,
        persona: &str,
        user: u64,
        query: &str,
        limit: usize,
        now: Timestamp,
    ) -> Result<Vec<Recalled>, MemoryError> {
        if let Some(t) = &self.shared {
            return t.recall(guild, persona, user, query, limit, now).await;
        }
        let scopes = [
            scope_token(guild, &Subject::User(user)),
            scope_token(guild, &Subject::PersonaUser(persona.to_owned(), user)),
            scope_token(guild, &Subject::Persona(persona.to_owned())),
        ];
        let persona = persona.to_owned();
        let fts = fts_query(query).map(|q| format!("text : ({q}) AND scope : ({})", scopes.join(" OR ")));
        let query = query.to_owned();
        self.run(move |c| {
            let mut by_user = c.prepare_cached(&format!(
                "SELECT {FACT_COLUMNS_F} FROM facts f WHERE f.guild = ?1 AND f.user_id = ?2
                 AND (f.persona IS NULL OR f.persona = ?3) ORDER BY f.updated_ms DESC LIMIT {RECENT}"
            ))?;
            let mut by_persona = c.prepare_cached(&format!(
                "SELECT {FACT_COLUMNS_F} FROM facts f WHERE f.guild = ?1 AND f.persona = ?2 AND f.user_id IS NULL
                 ORDER BY f.updated_ms DESC LIMIT {RECENT}"
            ))?;
            let mut corpus: Vec<Fact> =
                by_user.query_map(params![guild as i64, user as i64, persona], fact)?.collect::<Result<_, _>>()?;
            corpus.extend(by_persona.query_map(params![guild as i64, persona], fact)?.collect::<Result<Vec<_>, _>>()?);
            if let Some(q) = &fts {
                // Older facts beyond the recent window that still match.
                let mut matched = c.prepare_cached(&format!(
                    "SELECT {FACT_COLUMNS_F} FROM facts_fts JOIN facts f ON f.id = facts_fts.rowid
                     WHERE facts_fts MATCH ?1 AND f.guild = ?2
                       AND ((f.user_id = ?3 AND (f.persona IS NULL OR f.persona = ?4))
                            OR (f.user_id IS NULL AND f.persona = ?4))
                     LIMIT 200"
                ))?;
                let known: std::collections::HashSet<i64> = corpus.iter().map(|f| f.id).collect();
                for f in matched.query_map(params![q, guild as i64, user as i64, persona], fact)? {
                    let f = f?;
                    if !known.contains(&f.id) {
                        corpus.push(f);
                    }
                }
            }
            Ok(rank(corpus, &query, limit, now))
        })
        .await
    }

    /// Counts rows mentioning `needle` anywhere (facts, index, transcript), for checks.
    pub async fn mentions(&self, needle: &str) -> Result<usize, MemoryError> {
        if self.shared.is_some() {
            return Err(MemoryError("mentions reads the SQLite memory file only".into()));
        }
        let needle = needle.to_owned();
        self.run(move |c| {
            let facts: i64 =
                c.query_row("SELECT count(*) FROM facts WHERE instr(text, ?1) > 0", [&needle], |r| r.get(0))?;
            let lines: i64 =
                c.query_row("SELECT count(*) FROM transcript WHERE instr(text, ?1) > 0", [&needle], |r| r.get(0))?;
            let quoted = format!("\"{}\"", needle.replace('"', "\"\""));
            let indexed: i64 =
                c.query_row("SELECT count(*) FROM facts_fts WHERE facts_fts MATCH ?1", [quoted], |r| r.get(0))?;
            Ok((facts + lines + indexed) as usize)
        })
        .await
    }
}

/// Rebuilds the full-text index and truncates the WAL, so deleted text is
/// gone from every page of the files (with `secure_delete` zeroing freed pages).
/// Scores candidate facts for `query`: BM25 over the candidates (normalised
/// to the best), importance and recency; best first, at most `limit`.
pub(crate) fn rank(corpus: Vec<Fact>, query: &str, limit: usize, now: Timestamp) -> Vec<Recalled> {
    let terms = query_terms(query);
    let relevance = bm25(&corpus, &terms);
    let best = relevance.iter().copied().fold(0.0_f64, f64::max);
    let mut scored: Vec<Recalled> = corpus
        .into_iter()
        .zip(relevance)
        .map(|(fact, relevance)| {
            let hours = ((now.0 - fact.updated.0).max(0) as f64) / 3_600_000.0;
            let recency = 0.995_f64.powf(hours);
            let relevance = if best > 0.0 { relevance / best } else { 0.0 };
            let score = W_RELEVANCE * relevance + W_IMPORTANCE * fact.importance + W_RECENCY * recency;
            Recalled { fact, score }
        })
        .collect();
    scored.sort_by(|a, b| b.score.total_cmp(&a.score));
    scored.truncate(limit);
    scored
}

fn scrub(c: &Connection) -> Result<(), MemoryError> {
    c.execute("INSERT INTO facts_fts(facts_fts) VALUES ('rebuild')", [])?;
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
    Ok(())
}

/// Most recent facts per scope that a recall scores.
const RECENT: usize = 300;

/// Words of `text` as scoring compares them: lowercase, stemmed.
fn words(text: &str, stemmer: &rust_stemmers::Stemmer) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 2)
        .map(|w| stemmer.stem(&w.to_lowercase()).into_owned())
        .collect()
}

/// The distinct, stemmed content words of a query.
fn query_terms(query: &str) -> Vec<String> {
    let stemmer = rust_stemmers::Stemmer::create(rust_stemmers::Algorithm::English);
    let mut terms: Vec<String> = Vec::new();
    for w in query.split(|c: char| !c.is_alphanumeric()).map(str::to_lowercase) {
        if w.chars().count() >= 3 && !STOP.contains(&w.as_str()) {
            let t = stemmer.stem(&w).into_owned();
            if !terms.contains(&t) {
                terms.push(t);
            }
        }
        if terms.len() == 16 {
            break;
        }
    }
    terms
}

/// Okapi BM25 (k1 = 1.2, b = 0.75) of each fact for `terms`, with the
/// facts themselves as the corpus.
fn bm25(facts: &[Fact], terms: &[String]) -> Vec<f64> {
    if terms.is_empty() || facts.is_empty() {
        return vec![0.0; facts.len()];
    }
    let stemmer = rust_stemmers::Stemmer::create(rust_stemmers::Algorithm::English);
    let docs: Vec<Vec<String>> = facts.iter().map(|f| words(&f.text, &stemmer)).collect();
    let n = docs.len() as f64;
    let avgdl = (docs.iter().map(Vec::len).sum::<usize>() as f64 / n).max(1.0);
    let idf: Vec<f64> = terms
        .iter()
        .map(|t| {
            let df = docs.iter().filter(|d| d.contains(t)).count() as f64;
            (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
        })
        .collect();
    docs.iter()
        .map(|d| {
            let dl = d.len() as f64;
            terms
                .iter()
                .zip(&idf)
                .map(|(t, idf)| {
                    let tf = d.iter().filter(|w| *w == t).count() as f64;
                    idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * dl / avgdl))
                })
                .sum()
        })
        .collect()
}

/// The full-text token naming whose fact it is (letters and digits only, so
/// the tokenizer keeps it whole).
fn scope_token(guild: u64, subject: &Subject) -> String {
    let alnum = |p: &str| p.chars().filter(char::is_ascii_alphanumeric).collect::<String>();
    match subject {
        Subject::User(u) => format!("sg{guild}u{u}"),
        Subject::PersonaUser(p, u) => format!("sg{guild}u{u}p{}", alnum(p)),
        Subject::Persona(p) => format!("sg{guild}p{}", alnum(p)),
    }
}

const LINE_COLUMNS: &str = "message_id, user_id, persona, author, text, at_ms, about_user";

fn line_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Line> {
    Ok(Line {
        message_id: r.get::<_, i64>(0)? as u64,
        user_id: r.get::<_, i64>(1)? as u64,
        persona: r.get(2)?,
        author: r.get(3)?,
        text: r.get(4)?,
        at: Timestamp(r.get(5)?),
        about_user: r.get::<_, i64>(6)? as u64,
    })
}

const FACT_COLUMNS: &str = "id, guild, user_id, persona, text, importance, source, updated_ms";
const FACT_COLUMNS_F: &str = "f.id, f.guild, f.user_id, f.persona, f.text, f.importance, f.source, f.updated_ms";

fn fact(r: &rusqlite::Row<'_>) -> rusqlite::Result<Fact> {
    Ok(Fact {
        id: r.get(0)?,
        guild: r.get::<_, i64>(1)? as u64,
        user_id: r.get::<_, Option<i64>>(2)?.map(|u| u as u64),
        persona: r.get(3)?,
        text: r.get(4)?,
        importance: r.get(5)?,
        source: r.get(6)?,
        updated: Timestamp(r.get(7)?),
    })
}

/// Words too common to search for.
const STOP: &[&str] = &[
    "the", "and", "for", "you", "your", "are", "was", "what", "that", "this", "with", "have", "has", "but", "not",
    "about", "does", "did", "can", "how", "who", "why", "when", "where", "they", "them", "his", "her", "she", "him",
    "our", "its", "just", "like", "from",
];

/// An FTS5 query of the words of `text`: quoted (so nothing in it is
/// syntax), OR-ed, short and common words dropped, at most 16 terms.
fn fts_query(text: &str) -> Option<String> {
    let mut terms: Vec<String> = Vec::new();
    for w in text.split(|c: char| !c.is_alphanumeric()).map(str::to_lowercase) {
        if w.chars().count() >= 3 && !STOP.contains(&w.as_str()) && !terms.contains(&w) {
            terms.push(w);
        }
        if terms.len() == 16 {
            break;
        }
    }
    (!terms.is_empty()).then(|| terms.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(" OR "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp(1_795_305_600_000);

    #[tokio::test]
    async fn recall_ranks_relevant_facts_first_and_never_returns_other_peoples() {
        let m = MemoryStore::in_memory().unwrap();
        let g = 1;
        m.remember(g, Subject::User(10), "Ada keeps bees on her roof".into(), 0.3, "remember", NOW).await.unwrap();
        m.remember(g, Subject::User(10), "Ada is learning the violin".into(), 0.9, "remember", NOW).await.unwrap();
        m.remember(g, Subject::User(11), "Bob is allergic to bees".into(), 0.9, "remember", NOW).await.unwrap();
        m.remember(g, Subject::Persona("gran".into()), "Gran won the bake-off in 1987".into(), 0.5, "admin", NOW)
            .await
            .unwrap();
        m.remember(2, Subject::User(10), "In another guild, Ada hates bees".into(), 1.0, "remember", NOW)
            .await
            .unwrap();
        let r = m.recall(g, "gran", 10, "tell me about the bees", 10, NOW).await.unwrap();
        let texts: Vec<&str> = r.iter().map(|x| x.fact.text.as_str()).collect();
        assert_eq!(texts[0], "Ada keeps bees on her roof", "relevance wins: {texts:?}");
        assert!(texts.contains(&"Ada is learning the violin"), "important facts are always there");
        assert!(texts.contains(&"Gran won the bake-off in 1987"), "the persona's own facts");
        assert!(!texts.iter().any(|t| t.contains("Bob") || t.contains("another guild")), "{texts:?}");
    }

    #[tokio::test]
    async fn an_old_fact_beyond_the_recent_window_is_found_by_the_full_text_index() {
        let m = MemoryStore::in_memory().unwrap();
        let old = Timestamp(NOW.0 - 400 * 86_400_000);
        m.remember(1, Subject::User(10), "Ada once rode a zeppelin over Bruges".into(), 0.2, "remember", old)
            .await
            .unwrap();
        for i in 0..(RECENT + 10) {
            let at = Timestamp(NOW.0 - i as i64);
            m.remember(1, Subject::User(10), format!("Ada fact number {i}"), 0.2, "remember", at).await.unwrap();
        }
        let r = m.recall(1, "gran", 10, "have you ever been on a zeppelin?", 5, NOW).await.unwrap();
        assert_eq!(r[0].fact.text, "Ada once rode a zeppelin over Bruges");
        let r = m.recall(1, "gran", 10, "zeppelins!", 5, NOW).await.unwrap();
        assert_eq!(r[0].fact.text, "Ada once rode a zeppelin over Bruges", "stemmed: plurals match");
    }

    #[tokio::test]
    async fn fts_syntax_in_user_text_is_inert() {
        let m = MemoryStore::in_memory().unwrap();
        m.remember(1, Subject::User(10), "likes NEAR things".into(), 0.5, "remember", NOW).await.unwrap();
        for q in ["\"unbalanced", "NEAR(likes things)", "text:* OR -", "*", ""] {
            m.recall(1, "p", 10, q, 5, NOW).await.unwrap();
        }
    }

    #[tokio::test]
    async fn forgetting_a_person_leaves_no_trace_in_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory.db");
        let m = MemoryStore::open(&path).unwrap();
        let secret = "Zanzibarquux";
        m.remember(1, Subject::User(10), format!("Ada's password hint is {secret}"), 0.9, "remember", NOW)
            .await
            .unwrap();
        m.remember(1, Subject::PersonaUser("gran".into(), 10), format!("{secret} again"), 0.4, "consolidation", NOW)
            .await
            .unwrap();
        m.remember(1, Subject::User(11), "Bob likes trains".into(), 0.5, "remember", NOW).await.unwrap();
        let line = |id, user, text: &str| Line {
            message_id: id,
            user_id: user,
            persona: None,
            author: "x".into(),
            text: text.into(),
            at: NOW,
            about_user: 0,
        };
        m.record(1, 5, line(100, 10, &format!("my hint is {secret}"))).await.unwrap();
        m.record(1, 5, line(101, 11, "choo choo")).await.unwrap();
        let echo = Line { persona: Some("gran".into()), about_user: 10, ..line(102, 0, &format!("{secret}, dear?")) };
        m.record(1, 5, echo).await.unwrap();
        assert_eq!(m.mentions(secret).await.unwrap(), 6, "two facts, two index entries, two lines");

        let gone = m.forget_user(1, 10, None).await.unwrap();
        assert_eq!(gone, 4, "two facts, ada's line and the persona's answer to her");
        assert_eq!(m.mentions(secret).await.unwrap(), 0);
        assert!(m.about_user(1, 10).await.unwrap().is_empty());
        assert_eq!(m.about_user(1, 11).await.unwrap().len(), 1, "others keep theirs");
        for file in ["memory.db", "memory.db-wal"] {
            let p = dir.path().join(file);
            if let Ok(bytes) = std::fs::read(&p) {
                let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
                assert!(!found, "{file} still holds the forgotten text");
            }
        }
    }

    #[tokio::test]
    async fn forgetting_by_text_removes_only_matching_facts() {
        let m = MemoryStore::in_memory().unwrap();
        m.remember(1, Subject::User(10), "likes jazz".into(), 0.5, "remember", NOW).await.unwrap();
        m.remember(1, Subject::User(10), "hates JAZZ hands".into(), 0.5, "remember", NOW).await.unwrap();
        m.remember(1, Subject::User(10), "owns a cat".into(), 0.5, "remember", NOW).await.unwrap();
        assert_eq!(m.forget_user(1, 10, Some("jazz".into())).await.unwrap(), 2);
        let left: Vec<String> = m.about_user(1, 10).await.unwrap().into_iter().map(|f| f.text).collect();
        assert_eq!(left, ["owns a cat"]);
    }

    #[tokio::test]
    async fn the_transcript_returns_recent_lines_oldest_first_and_expires() {
        let m = MemoryStore::in_memory().unwrap();
        for i in 0..5u64 {
            let at = Timestamp(NOW.0 - (40 - i as i64 * 10) * 86_400_000);
            let l = Line {
                message_id: i,
                user_id: 1,
                persona: None,
                author: "a".into(),
                text: format!("m{i}"),
                at,
                about_user: 0,
            };
            m.record(1, 2, l).await.unwrap();
        }
        let texts: Vec<String> = m.recent(1, 2, 10, NOW).await.unwrap().into_iter().map(|l| l.text).collect();
        assert_eq!(texts, ["m1", "m2", "m3", "m4"], "the 40-day-old line is past the window");
        assert_eq!(m.expire(NOW).await.unwrap(), 1);
        assert_eq!(m.recent(1, 2, 2, NOW).await.unwrap().len(), 2);
    }

    /// Memory in a den table of an SQLite store whose clock stands at `NOW`.
    async fn shared() -> (tempfile::TempDir, den_storage::sqlite::SqliteStore, MemoryStore) {
        let dir = tempfile::tempdir().unwrap();
        let clock = std::sync::Arc::new(den_core::ManualClock::new(NOW));
        let store = den_storage::sqlite::SqliteStore::open(
            &den_storage::sqlite::SqliteOptions::new(dir.path().join("d.db")),
            clock,
        )
        .unwrap();
        let table = store.table(table_spec()).await.unwrap();
        let memory = MemoryStore::on_table(std::sync::Arc::new(table)).unwrap();
        (dir, store, memory)
    }

    #[tokio::test]
    async fn shared_memory_ranks_the_same_way_and_never_returns_other_peoples_facts() {
        let (_d, _s, m) = shared().await;
        let g = 1;
        m.remember(g, Subject::User(10), "Ada keeps bees on her roof".into(), 0.3, "remember", NOW).await.unwrap();
        m.remember(g, Subject::User(10), "Ada is learning the violin".into(), 0.9, "remember", NOW).await.unwrap();
        m.remember(g, Subject::User(11), "Bob is allergic to bees".into(), 0.9, "remember", NOW).await.unwrap();
        m.remember(
            g,
            Subject::PersonaUser("quill".into(), 10),
            "Quill thinks Ada's bees are vulgar".into(),
            0.9,
            "c",
            NOW,
        )
        .await
        .unwrap();
        m.remember(g, Subject::Persona("gran".into()), "Gran won the bake-off in 1987".into(), 0.5, "admin", NOW)
            .await
            .unwrap();
        m.remember(2, Subject::User(10), "In another guild, Ada hates bees".into(), 1.0, "remember", NOW)
            .await
            .unwrap();
        let r = m.recall(g, "gran", 10, "tell me about the bees", 10, NOW).await.unwrap();
        let texts: Vec<&str> = r.iter().map(|x| x.fact.text.as_str()).collect();
        assert_eq!(texts[0], "Ada keeps bees on her roof", "relevance wins: {texts:?}");
        assert!(texts.contains(&"Ada is learning the violin"));
        assert!(texts.contains(&"Gran won the bake-off in 1987"), "the persona's own facts");
        assert!(
            !texts.iter().any(|t| t.contains("Bob") || t.contains("another guild") || t.contains("Quill")),
            "not another person's, guild's or persona's: {texts:?}"
        );
    }

    #[tokio::test]
    async fn two_processes_on_one_store_share_what_they_remember() {
        let (_d, store, worker_a) = shared().await;
        let worker_b = MemoryStore::on_table(std::sync::Arc::new(store.table(table_spec()).await.unwrap())).unwrap();
        let id = worker_a
            .remember(1, Subject::User(10), "Ada's cat is called Mr Biscuit".into(), 0.7, "remember", NOW)
            .await
            .unwrap();
        let r = worker_b.recall(1, "gran", 10, "what is my cat called?", 3, NOW).await.unwrap();
        assert_eq!(r[0].fact.text, "Ada's cat is called Mr Biscuit");
        assert_eq!(r[0].fact.id, id);
        assert!(worker_b.update(id, "Ada's cat is called Sir Biscuit".into(), 0.8, NOW).await.unwrap());
        assert_eq!(worker_a.about_user(1, 10).await.unwrap()[0].text, "Ada's cat is called Sir Biscuit");
        assert!(worker_a.delete(id).await.unwrap());
        assert!(!worker_b.delete(id).await.unwrap(), "deleted once");
        assert!(worker_b.about_user(1, 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn shared_memory_forgets_a_person_and_the_answers_to_them() {
        let (_d, _s, m) = shared().await;
        let secret = "Zanzibarquux";
        m.remember(1, Subject::User(10), format!("Ada's hint is {secret}"), 0.9, "remember", NOW).await.unwrap();
        m.remember(1, Subject::PersonaUser("gran".into(), 10), format!("{secret} again"), 0.4, "c", NOW).await.unwrap();
        m.remember(1, Subject::User(11), "Bob likes trains".into(), 0.5, "remember", NOW).await.unwrap();
        let line = |id, user, text: &str| Line {
            message_id: id,
            user_id: user,
            persona: None,
            author: "x".into(),
            text: text.into(),
            at: NOW,
            about_user: 0,
        };
        m.record(1, 5, line(100, 10, &format!("my hint is {secret}"))).await.unwrap();
        m.record(1, 5, line(101, 11, "choo choo")).await.unwrap();
        let echo = Line { persona: Some("gran".into()), about_user: 10, ..line(102, 0, &format!("{secret}, dear?")) };
        m.record(1, 5, echo).await.unwrap();
        assert_eq!(m.line(1, 5, 102).await.unwrap().unwrap().about_user, 10);

        assert_eq!(m.forget_user(1, 10, None).await.unwrap(), 4, "two facts, Ada's line and Gran's answer to her");
        assert!(m.about_user(1, 10).await.unwrap().is_empty());
        let left: Vec<String> = m.recent(1, 5, 10, NOW).await.unwrap().into_iter().map(|l| l.text).collect();
        assert_eq!(left, ["choo choo"]);
        assert_eq!(m.about_user(1, 11).await.unwrap().len(), 1, "others keep theirs");
    }

    #[tokio::test]
    async fn shared_transcript_lines_expire_after_thirty_days() {
        let (_d, _s, m) = shared().await;
        for i in 0..5u64 {
            let at = Timestamp(NOW.0 - (40 - i as i64 * 10) * 86_400_000);
            let l = Line {
                message_id: i,
                user_id: 1,
                persona: None,
                author: "a".into(),
                text: format!("m{i}"),
                at,
                about_user: 0,
            };
            m.record(1, 2, l).await.unwrap();
        }
        let texts: Vec<String> = m.recent(1, 2, 10, NOW).await.unwrap().into_iter().map(|l| l.text).collect();
        assert_eq!(texts, ["m1", "m2", "m3", "m4"], "the 40-day-old line is past the window");
        let last: Vec<String> = m.recent(1, 2, 2, NOW).await.unwrap().into_iter().map(|l| l.text).collect();
        assert_eq!(last, ["m3", "m4"], "the newest, oldest first");
    }
}
