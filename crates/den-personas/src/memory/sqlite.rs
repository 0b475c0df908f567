//! Persona memory in one SQLite file: facts with an FTS5 index, the
//! transcript, and who was forgotten when. `secure_delete` is on, so
//! forgetting is a transaction, an index rebuild and a WAL truncation, after
//! which the words are in no page of the files.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use den_core::Timestamp;
use rusqlite::{Connection, OptionalExtension, params};

use super::rank::{STOP, rank};
use super::{FORGOTTEN_DAYS, Fact, Line, Memory, MemoryError, NewFact, Recalled, Subject, TRANSCRIPT_DAYS, said_at};

/// Most recent facts per scope that a recall scores.
const RECENT: usize = 300;

const DAY_MS: i64 = 86_400_000;

/// Persona memory in an SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteMemory {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteMemory {
    /// Opens (creating) the memory at `path`.
    pub fn open(path: &Path) -> Result<Self, MemoryError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| MemoryError::new(format!("{}: {e}", dir.display())))?;
        }
        Self::init(Connection::open(path)?)
    }

    /// A memory in RAM.
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
            CREATE TABLE IF NOT EXISTS forgotten(
                guild INTEGER NOT NULL,
                user_id INTEGER NOT NULL,
                at_ms INTEGER NOT NULL,
                PRIMARY KEY (guild, user_id)
            ) WITHOUT ROWID;
            ",
        )?;
        // Added after the first release: files made before have no `key`.
        let has_key: bool =
            conn.query_row("SELECT count(*) FROM pragma_table_info('facts') WHERE name = 'key'", [], |r| {
                r.get::<_, i64>(0)
            })? > 0;
        if !has_key {
            conn.execute_batch("ALTER TABLE facts ADD COLUMN key TEXT;")?;
        }
        conn.execute_batch("CREATE UNIQUE INDEX IF NOT EXISTS facts_by_key ON facts(key) WHERE key IS NOT NULL;")?;
        Ok(Self { conn: Arc::new(Mutex::new(conn)) })
    }

    /// Runs `f` on the connection off the async threads (bulk loads in benchmarks).
    pub async fn run<T, F>(&self, f: F) -> Result<T, MemoryError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, MemoryError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&mut c)
        })
        .await
        .map_err(|e| MemoryError::new(format!("memory task failed: {e}")))?
    }

    /// Counts rows mentioning `needle` anywhere (facts, index, transcript), for checks.
    pub async fn mentions(&self, needle: &str) -> Result<usize, MemoryError> {
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

#[async_trait]
impl Memory for SqliteMemory {
    async fn record(&self, guild: u64, channel: u64, line: Line) -> Result<(), MemoryError> {
        self.run(move |c| {
            if line.user_id != 0 {
                let forgotten: Option<i64> = c
                    .query_row(
                        "SELECT at_ms FROM forgotten WHERE guild = ?1 AND user_id = ?2",
                        params![guild as i64, line.user_id as i64],
                        |r| r.get(0),
                    )
                    .optional()?;
                if forgotten.is_some_and(|at| said_at(line.message_id).0 <= at) {
                    return Ok(());
                }
            }
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

    async fn recent(&self, guild: u64, channel: u64, n: usize, now: Timestamp) -> Result<Vec<Line>, MemoryError> {
        let since = now.0 - TRANSCRIPT_DAYS * DAY_MS;
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

    async fn line(&self, guild: u64, channel: u64, message_id: u64) -> Result<Option<Line>, MemoryError> {
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

    async fn expire(&self, now: Timestamp) -> Result<usize, MemoryError> {
        let before = now.0 - TRANSCRIPT_DAYS * DAY_MS;
        let forgotten_before = now.0 - FORGOTTEN_DAYS * DAY_MS;
        self.run(move |c| {
            c.execute("DELETE FROM forgotten WHERE at_ms < ?1", [forgotten_before])?;
            Ok(c.execute("DELETE FROM transcript WHERE at_ms < ?1", [before])?)
        })
        .await
    }

    async fn remember(&self, guild: u64, fact: NewFact, now: Timestamp) -> Result<i64, MemoryError> {
        let scope = scope_token(guild, &fact.subject);
        let (user, persona) = fact.subject.parts();
        let (user, persona) = (user.map(|u| u as i64), persona.map(str::to_owned));
        self.run(move |c| {
            let inserted = c.execute(
                "INSERT INTO facts(guild, user_id, persona, text, importance, source, updated_ms, scope, key)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT(key) WHERE key IS NOT NULL DO NOTHING",
                params![
                    guild as i64,
                    user,
                    persona,
                    fact.text,
                    fact.importance.clamp(0.0, 1.0),
                    fact.source,
                    now.0,
                    scope,
                    fact.key
                ],
            )?;
            if inserted == 1 {
                return Ok(c.last_insert_rowid());
            }
            Ok(c.query_row("SELECT id FROM facts WHERE key = ?1", [&fact.key], |r| r.get(0))?)
        })
        .await
    }

    async fn update(&self, id: i64, text: String, importance: f64, now: Timestamp) -> Result<bool, MemoryError> {
        self.run(move |c| {
            Ok(c.execute(
                "UPDATE facts SET text = ?2, importance = ?3, updated_ms = ?4 WHERE id = ?1",
                params![id, text, importance.clamp(0.0, 1.0), now.0],
            )? == 1)
        })
        .await
    }

    async fn delete(&self, id: i64) -> Result<bool, MemoryError> {
        self.run(move |c| Ok(c.execute("DELETE FROM facts WHERE id = ?1", [id])? == 1)).await
    }

    async fn about_user(&self, guild: u64, user: u64) -> Result<Vec<Fact>, MemoryError> {
        self.run(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {FACT_COLUMNS} FROM facts WHERE guild = ?1 AND user_id = ?2 ORDER BY updated_ms DESC"
            ))?;
            Ok(stmt.query_map(params![guild as i64, user as i64], fact_row)?.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn forget_user(
        &self,
        guild: u64,
        user: u64,
        text: Option<String>,
        now: Timestamp,
    ) -> Result<usize, MemoryError> {
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
                tx.execute(
                    "INSERT OR REPLACE INTO forgotten VALUES (?1, ?2, ?3)",
                    params![guild as i64, user as i64, now.0],
                )?;
            }
            tx.commit()?;
            scrub(c)?;
            Ok(gone)
        })
        .await
    }

    async fn forgotten_at(&self, guild: u64, user: u64) -> Result<Option<Timestamp>, MemoryError> {
        self.run(move |c| {
            Ok(c.query_row(
                "SELECT at_ms FROM forgotten WHERE guild = ?1 AND user_id = ?2",
                params![guild as i64, user as i64],
                |r| r.get(0).map(Timestamp),
            )
            .optional()?)
        })
        .await
    }

    /// The candidates are the person's and the persona's most recent facts
    /// plus older ones the full-text index matches. BM25 is computed by den
    /// over those candidates: FTS5's own `bm25()` derives its IDF by scanning
    /// each term's whole doclist, which for common words in a big guild costs
    /// milliseconds, and the person's own facts are the right corpus anyway.
    async fn recall(
        &self,
        guild: u64,
        persona: &str,
        user: u64,
        query: &str,
        limit: usize,
        now: Timestamp,
    ) -> Result<Vec<Recalled>, MemoryError> {
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
                by_user.query_map(params![guild as i64, user as i64, persona], fact_row)?.collect::<Result<_, _>>()?;
            corpus.extend(
                by_persona.query_map(params![guild as i64, persona], fact_row)?.collect::<Result<Vec<_>, _>>()?,
            );
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
                for f in matched.query_map(params![q, guild as i64, user as i64, persona], fact_row)? {
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
}

/// Rebuilds the full-text index and truncates the WAL, so deleted text is
/// gone from every page of the files (with `secure_delete` zeroing freed pages).
fn scrub(c: &Connection) -> Result<(), MemoryError> {
    c.execute("INSERT INTO facts_fts(facts_fts) VALUES ('rebuild')", [])?;
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
    Ok(())
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

fn fact_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Fact> {
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
