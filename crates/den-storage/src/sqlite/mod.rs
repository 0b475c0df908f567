//! The SQLite backend: one database file holding every table and queue.
//!
//! Writes go to one writer thread that owns the only writing connection and
//! commits whatever has queued up in one transaction (group commit); each
//! caller hears back only after the commit, so an `Ok` means the write is in
//! the WAL. Reads use a small pool of read-only connections on the blocking
//! thread pool; WAL lets them run beside the writer.

mod queue;
mod table;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use den_core::Clock;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::{Notify, oneshot};

use crate::{StoreError, StoreErrorKind, StoreResult};

pub use queue::SqliteQueue;
pub use table::SqliteTable;

/// How hard SQLite works to keep a commit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// fsync on every commit: survives power loss and OS crashes.
    Full,
    /// fsync at checkpoints (WAL `synchronous=NORMAL`): survives a crash of
    /// den's process; the last commits may be lost on power loss.
    #[default]
    Normal,
    /// Never fsync: fastest; an OS crash may corrupt the file.
    Off,
}

impl Durability {
    fn pragma(self) -> &'static str {
        match self {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
            Durability::Off => "OFF",
        }
    }
}

/// How to open an SQLite store.
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    /// The database file; its folder is created when missing.
    pub path: PathBuf,
    /// Commit durability.
    pub durability: Durability,
    /// Read connections, opened on demand and kept; reads beyond this many wait.
    pub readers: usize,
}

impl SqliteOptions {
    /// Defaults for the file at `path`.
    #[must_use]
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), durability: Durability::default(), readers: 4 }
    }
}

type Completion = Box<dyn FnOnce(Result<(), String>) + Send>;
/// Runs in the writer's transaction; `None` when no transaction could be begun
/// (the op then only reports the failure).
type WriteOp = Box<dyn FnOnce(Option<&Connection>) -> Completion + Send>;

/// Most operations folded into one transaction.
const MAX_GROUP: usize = 256;

/// How often the checkpointer looks for new commits to fold into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// Transactions committed so far, read by the checkpointer to skip idle rounds.
#[derive(Debug, Default)]
struct WalState {
    commits: AtomicU64,
}

pub(crate) struct Shared {
    path: PathBuf,
    clock: Arc<dyn Clock>,
    writer: Mutex<Option<mpsc::Sender<WriteOp>>>,
    writer_thread: Mutex<Option<JoinHandle<()>>>,
    checkpointer: Mutex<Option<JoinHandle<()>>>,
    /// Dropped at close, which wakes and stops the checkpointer.
    stop_checkpointer: Mutex<Option<mpsc::Sender<()>>>,
    readers: Mutex<Vec<Connection>>,
    /// Bounds concurrent reads, so a burst waits for a connection instead of
    /// opening (and parsing the schema of) a new one each time.
    read_slots: tokio::sync::Semaphore,
    notifiers: Mutex<HashMap<String, Arc<Notify>>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish_non_exhaustive()
    }
}

/// An SQLite database holding den's tables and queues.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    shared: Arc<Shared>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `options.path`.
    pub fn open(options: &SqliteOptions, clock: Arc<dyn Clock>) -> StoreResult<Self> {
        if let Some(dir) = options.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::backend(format!("cannot create the data folder {}", dir.display()), e))?;
        }
        let conn = open_connection(&options.path, false)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", options.durability.pragma())?;
        // Checkpoints (the only fsyncs in WAL mode with synchronous=NORMAL) run on
        // their own thread, so a commit never waits for one.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
        // Deleted rows are zeroed on their pages, not left in free space: a
        // forgotten person's queued words must not survive their deletion.
        conn.pragma_update(None, "secure_delete", "ON")?;
        conn.execute_batch(SCHEMA)?;

        let wal = Arc::new(WalState::default());
        let (tx, rx) = mpsc::channel::<WriteOp>();
        let writer_wal = wal.clone();
        let thread = std::thread::Builder::new()
            .name("den-sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, &writer_wal))
            .map_err(|e| StoreError::backend("cannot start the SQLite writer thread", e))?;
        let checkpoint_conn = open_connection(&options.path, false)?;
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let checkpointer = std::thread::Builder::new()
            .name("den-sqlite-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpoint_conn, &wal, &stop_rx))
            .map_err(|e| StoreError::backend("cannot start the SQLite checkpoint thread", e))?;

        Ok(Self {
            shared: Arc::new(Shared {
                path: options.path.clone(),
                clock,
                writer: Mutex::new(Some(tx)),
                writer_thread: Mutex::new(Some(thread)),
                checkpointer: Mutex::new(Some(checkpointer)),
                stop_checkpointer: Mutex::new(Some(stop_tx)),
                readers: Mutex::new(Vec::new()),
                read_slots: tokio::sync::Semaphore::new(options.readers.max(1)),
                notifiers: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The file this store lives in.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// A handle on the table declared by `spec`, creating its indexes (and
    /// back-filling a newly declared index) when needed.
    pub async fn table(&self, spec: crate::TableSpec) -> StoreResult<SqliteTable> {
        SqliteTable::open(self.shared.clone(), spec).await
    }

    /// The store's queues.
    #[must_use]
    pub fn queue(&self) -> SqliteQueue {
        SqliteQueue::new(self.shared.clone())
    }

    /// Deletes every expired item of every table; returns how many.
    pub async fn sweep_items(&self) -> StoreResult<u64> {
        let now = self.shared.clock.now().as_millis();
        self.shared
            .write(move |c| {
                c.execute(
                    "DELETE FROM kv_index WHERE (tbl, pk, sk) IN \
                     (SELECT tbl, pk, sk FROM kv_items WHERE expires_at <= ?1)",
                    [now],
                )?;
                Ok(c.execute("DELETE FROM kv_items WHERE expires_at <= ?1", [now])? as u64)
            })
            .await
    }

    /// Checks that the database answers a read and a write.
    pub async fn ping(&self) -> StoreResult<()> {
        self.shared.read(|c| Ok(c.query_row("SELECT 1", [], |_| Ok(()))?)).await?;
        self.shared.write(|_| Ok(())).await
    }

    /// Finishes queued writes, checkpoints the WAL and closes the file.
    /// Later calls on any handle fail with `Closed`.
    pub async fn close(&self) -> StoreResult<()> {
        let sender = self.shared.writer.lock().map_err(poisoned)?.take();
        drop(sender);
        drop(self.shared.stop_checkpointer.lock().map_err(poisoned)?.take());
        let checkpointer = self.shared.checkpointer.lock().map_err(poisoned)?.take();
        if let Some(checkpointer) = checkpointer {
            tokio::task::spawn_blocking(move || checkpointer.join())
                .await
                .map_err(|e| StoreError::backend("checkpoint thread join failed", e))?
                .map_err(|_| StoreError::new(StoreErrorKind::Backend, "the SQLite checkpoint thread panicked"))?;
        }
        let thread = self.shared.writer_thread.lock().map_err(poisoned)?.take();
        if let Some(thread) = thread {
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .map_err(|e| StoreError::backend("writer thread join failed", e))?
                .map_err(|_| StoreError::new(StoreErrorKind::Backend, "the SQLite writer thread panicked"))?;
        }
        self.shared.readers.lock().map_err(poisoned)?.clear();
        Ok(())
    }
}

impl Shared {
    pub(crate) fn now(&self) -> den_core::Timestamp {
        self.clock.now()
    }

    /// Folds the write-ahead log into the database and truncates it, so
    /// deleted data lives on in no frame of it.
    pub(crate) async fn truncate_wal(&self) -> StoreResult<()> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = open_connection(&path, false)?;
            for _ in 0..50 {
                // (busy, frames in the log, frames checkpointed); busy = 1 while a reader holds an old snapshot.
                let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
                if busy == 0 {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(StoreError::new(StoreErrorKind::Backend, "the write-ahead log stayed busy; not truncated"))
        })
        .await
        .map_err(|e| StoreError::backend("checkpoint task failed", e))?
    }

    /// Runs `f` in the writer's current transaction and returns after commit.
    pub(crate) async fn write<R, F>(&self, f: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<StoreResult<R>>();
        let op: WriteOp = Box::new(move |conn| {
            let result = match conn {
                Some(conn) => in_savepoint(conn, f),
                None => Err(StoreError::new(StoreErrorKind::Backend, "sqlite could not begin a transaction")),
            };
            Box::new(move |commit| {
                let outcome = match commit {
                    Ok(()) => result,
                    Err(e) => Err(StoreError::new(StoreErrorKind::Backend, format!("sqlite commit failed: {e}"))),
                };
                let _ = tx.send(outcome);
            })
        });
        {
            let guard = self.writer.lock().map_err(poisoned)?;
            let sender = guard.as_ref().ok_or_else(closed)?;
            sender.send(op).map_err(|_| closed())?;
        }
        rx.await.map_err(|_| closed())?
    }

    /// Runs `f` on a read connection on the blocking pool.
    pub(crate) async fn read<R, F>(self: &Arc<Self>, f: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
    {
        if self.writer.lock().map_err(poisoned)?.is_none() {
            return Err(closed());
        }
        let _slot = self.read_slots.acquire().await.map_err(|_| closed())?;
        let shared = self.clone();
        tokio::task::spawn_blocking(move || {
            let conn = match shared.readers.lock().map_err(poisoned)?.pop() {
                Some(c) => c,
                None => open_connection(&shared.path, true)?,
            };
            let result = f(&conn);
            shared.readers.lock().map_err(poisoned)?.push(conn);
            result
        })
        .await
        .map_err(|e| StoreError::backend("read task failed", e))?
    }

    pub(crate) fn notifier(&self, queue: &str) -> Arc<Notify> {
        let mut map = self.notifiers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(queue.to_owned()).or_default().clone()
    }
}

fn in_savepoint<R>(conn: &Connection, f: impl FnOnce(&Connection) -> StoreResult<R>) -> StoreResult<R> {
    conn.prepare_cached("SAVEPOINT op")?.execute([])?;
    let result = f(conn);
    if result.is_err() {
        conn.prepare_cached("ROLLBACK TO op")?.execute([])?;
    }
    conn.prepare_cached("RELEASE op")?.execute([])?;
    result
}

/// Folds the WAL into the database file in the background. PASSIVE never
/// blocks the writer; the WAL restarts from its beginning once a checkpoint
/// has caught up, which keeps it small.
fn checkpoint_loop(conn: Connection, wal: &WalState, stop: &mpsc::Receiver<()>) {
    let mut seen = 0;
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        let commits = wal.commits.load(Ordering::Relaxed);
        if commits == seen {
            continue;
        }
        seen = commits;
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "background checkpoint failed");
        }
    }
}

fn writer_loop(conn: Connection, rx: mpsc::Receiver<WriteOp>, wal: &WalState) {
    while let Ok(first) = rx.recv() {
        let mut ops = vec![first];
        while ops.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        if let Err(e) = conn.prepare_cached("BEGIN IMMEDIATE").and_then(|mut s| s.execute([])) {
            let message = e.to_string();
            for op in ops {
                op(None)(Err(message.clone()));
            }
            continue;
        }
        let completions: Vec<Completion> = ops.into_iter().map(|op| op(Some(&conn))).collect();
        let commit = conn.prepare_cached("COMMIT").and_then(|mut s| s.execute([])).map(|_| ()).map_err(|e| {
            let _ = conn.execute_batch("ROLLBACK");
            e.to_string()
        });
        wal.commits.fetch_add(1, Ordering::Relaxed);
        for completion in completions {
            completion(commit.clone());
        }
    }
    // Every sender is gone: leave a clean file behind.
    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); PRAGMA optimize;") {
        tracing::warn!(error = %e, "checkpoint at close failed");
    }
}

fn open_connection(path: &Path, read_only: bool) -> StoreResult<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| StoreError::backend(format!("cannot open {}", path.display()), e))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    if read_only {
        conn.pragma_update(None, "query_only", "ON")?;
    }
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

fn closed() -> StoreError {
    StoreError::new(StoreErrorKind::Closed, "the store is closed")
}

fn poisoned<T>(_: std::sync::PoisonError<T>) -> StoreError {
    StoreError::new(StoreErrorKind::Backend, "a store lock was poisoned by a panic")
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kv_tables (
    tbl  TEXT PRIMARY KEY,
    spec TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS kv_items (
    tbl        TEXT NOT NULL,
    pk         TEXT NOT NULL,
    sk         TEXT NOT NULL,
    attrs      TEXT NOT NULL,
    version    INTEGER NOT NULL,
    expires_at INTEGER,
    PRIMARY KEY (tbl, pk, sk)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_items_expiry ON kv_items (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS kv_index (
    tbl TEXT NOT NULL,
    idx TEXT NOT NULL,
    ipk TEXT NOT NULL,
    isk TEXT NOT NULL,
    pk  TEXT NOT NULL,
    sk  TEXT NOT NULL,
    PRIMARY KEY (tbl, idx, ipk, isk, pk, sk)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_index_item ON kv_index (tbl, pk, sk);
CREATE TABLE IF NOT EXISTS q_queues (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS q_messages (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    queue         TEXT NOT NULL,
    body          TEXT NOT NULL,
    sent_at       INTEGER NOT NULL,
    visible_at    INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt       TEXT,
    expires_at    INTEGER NOT NULL,
    source_queue  TEXT
);
CREATE INDEX IF NOT EXISTS q_messages_ready ON q_messages (queue, visible_at, id);
CREATE TABLE IF NOT EXISTS q_dedup (
    queue      TEXT NOT NULL,
    dedup_key  TEXT NOT NULL,
    id         INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (queue, dedup_key)
) WITHOUT ROWID;
";
