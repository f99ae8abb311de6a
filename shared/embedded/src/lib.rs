//! Embedded adapters for `baton serve`: one SQLite file in WAL mode holds the store
//! (sessions, seen ids, outbox, trace, agents, tokens, desk links), the durable event queue,
//! the timers, the user-facing message log, settings and the operator console's own tables.
//!
//! Durability: every write is an fsync'd transaction (`synchronous=FULL`); callers are told
//! "done" only after the commit. Throughput comes from group commit, not from weaker
//! syncing: one writer thread owns the writer connection (SQLite has one writer anyway)
//! and commits the writes that arrive together in one transaction (`writer.rs`). Reads use a
//! pool of reader connections (WAL readers do not block the writer): point reads run on the
//! caller's thread when an idle connection is at hand (`Db::lookup`), scans on blocking
//! threads (`Db::read`). A thread of its own copies the WAL into the database file as the
//! writer goes on, and has the WAL start over when it is long (`checkpoint.rs`), so the
//! writer's own checkpoints have little to do.

mod checkpoint;
mod console;
mod kv;
mod messages;
mod queue;
mod settings;
mod store;
mod timers;
mod trace;
mod writer;

pub use checkpoint::{CHECKPOINT_EVERY, CHECKPOINT_THREAD, WAL_RESTART_FRAMES};
pub use console::{ConsoleConversation, ConsoleMessage, ConsoleStore};
pub use queue::EmbeddedQueue;
pub use timers::EmbeddedTimers;
pub use writer::{WriterStats, MAX_GROUP, WRITER_THREAD};

use baton_core::model::ConversationKey;
use baton_core::ports::StoreError;
use checkpoint::Checkpointer;
use rusqlite::{Connection, OpenFlags};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use writer::Writer;

/// How long seen event ids are kept at least: WhatsApp retries for up to 7 days.
pub const SEEN_RETENTION_MS: i64 = 8 * 24 * 60 * 60 * 1000;

/// How long a connection waits for another process's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Idle reader connections kept for reuse. Opening one costs a schema parse and a fresh
/// statement cache; the serve dispatcher runs up to 64 conversations at once.
const MAX_IDLE_READERS: usize = 64;

/// WAL pages at which the writer checkpoints on its own (about 200 MB of 4 KB pages): a
/// backstop. The checkpoint thread has the WAL start over at [`WAL_RESTART_FRAMES`] first
/// (`checkpoint.rs`); this one runs inside a commit and copies whatever is left.
const WAL_CHECKPOINT_PAGES: i64 = 50_000;
/// Bytes the WAL file is truncated to when it starts over: above the size it starts over at
/// (about 80 MB, and what a busy writer adds while the thread catches up), so the truncation,
/// which held the writer for 35-45 ms each time at 160 MB, only follows the backstop.
const WAL_SIZE_LIMIT: i64 = 128 * 1024 * 1024;

/// Schema migrations; migration `i` moves `PRAGMA user_version` from `i` to `i + 1`.
/// Append new steps, never edit old ones: databases in the field are at some version.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE agents (
    id   TEXT PRIMARY KEY,
    json TEXT NOT NULL
);
CREATE TABLE tokens (
    agent      TEXT NOT NULL,
    hash       TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);
CREATE INDEX tokens_by_agent ON tokens(agent);
CREATE TABLE sessions (
    conversation TEXT PRIMARY KEY,
    version      INTEGER NOT NULL,
    json         TEXT NOT NULL,
    updated_at   INTEGER NOT NULL
);
CREATE TABLE seen (
    event_id     TEXT PRIMARY KEY,
    conversation TEXT NOT NULL,
    at           INTEGER NOT NULL
);
CREATE INDEX seen_by_at ON seen(at);
CREATE TABLE outbox (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    effect_id       TEXT NOT NULL UNIQUE,
    conversation    TEXT NOT NULL,
    schema          INTEGER NOT NULL,
    json            TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL
);
CREATE INDEX outbox_by_conversation ON outbox(conversation, seq);
CREATE TABLE desk_links (
    agent                TEXT NOT NULL,
    desk_conversation_id TEXT NOT NULL,
    handoff_id           TEXT NOT NULL UNIQUE,
    conversation         TEXT NOT NULL,
    PRIMARY KEY (agent, desk_conversation_id)
);
CREATE TABLE desk_status (
    agent TEXT PRIMARY KEY,
    json  TEXT NOT NULL
);
CREATE TABLE trace (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation TEXT NOT NULL,
    at           INTEGER NOT NULL,
    json         TEXT NOT NULL
);
CREATE INDEX trace_by_conversation ON trace(conversation, seq);
CREATE TABLE queue (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     TEXT NOT NULL UNIQUE,
    conversation TEXT NOT NULL,
    json         TEXT NOT NULL,
    at           INTEGER NOT NULL
);
CREATE INDEX queue_by_conversation ON queue(conversation, seq);
CREATE TABLE timers (
    conversation TEXT PRIMARY KEY,
    generation   INTEGER NOT NULL,
    due          INTEGER NOT NULL
);
CREATE INDEX timers_by_due ON timers(due);
CREATE TABLE user_messages (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation    TEXT NOT NULL,
    idempotency_key TEXT NOT NULL UNIQUE,
    at              INTEGER NOT NULL,
    json            TEXT NOT NULL
);
CREATE INDEX user_messages_by_conversation ON user_messages(conversation, seq);
CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE console_conversations (
    id         TEXT PRIMARY KEY,
    agent      TEXT NOT NULL,
    email      TEXT NOT NULL,
    user_info  TEXT NOT NULL,
    reason     TEXT NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('waiting', 'active', 'closed')),
    operator   TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX console_conversations_by_updated ON console_conversations(updated_at);
CREATE TABLE console_messages (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL,
    dedupe_key      TEXT NOT NULL UNIQUE,
    role            TEXT NOT NULL,
    text            TEXT NOT NULL,
    at              INTEGER NOT NULL
);
CREATE INDEX console_messages_by_conversation ON console_messages(conversation_id, seq);
CREATE TABLE console_credentials (
    agent TEXT PRIMARY KEY,
    token TEXT NOT NULL
);
"#,
    r#"
CREATE TABLE kv (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
"#,
    // Retention: a conversation is deleted after `keep_until` (its agent's retention after its
    // last event); sessions from before get the default 30 days after their last update.
    r#"
ALTER TABLE sessions ADD COLUMN keep_until INTEGER NOT NULL DEFAULT 0;
UPDATE sessions SET keep_until = updated_at + 2592000000;
CREATE INDEX sessions_by_keep_until ON sessions(keep_until);
CREATE INDEX desk_links_by_conversation ON desk_links(conversation);
"#,
    // A revision per agent row, new whenever its JSON is written (by any connection, even by
    // hand), so a reader can tell its decoded copy is current without reading the JSON.
    r#"
ALTER TABLE agents ADD COLUMN rev INTEGER NOT NULL DEFAULT 0;
UPDATE agents SET rev = random();
CREATE TRIGGER agents_rev_on_insert AFTER INSERT ON agents
BEGIN UPDATE agents SET rev = random() WHERE id = NEW.id; END;
CREATE TRIGGER agents_rev_on_update AFTER UPDATE OF json ON agents
BEGIN UPDATE agents SET rev = random() WHERE id = NEW.id; END;
"#,
    // The outbox as one B-tree keyed by conversation: a rowid table with a unique index on
    // the effect id and one on (conversation, seq) wrote three pages per effect put or
    // deleted, two of them at random places (BENCHMARKS.md, "The outbox in one tree").
    // `seq` now counts within a conversation; the rows keep theirs, so the order holds.
    r#"
CREATE TABLE outbox_keyed (
    conversation    TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    effect_id       TEXT NOT NULL,
    schema          INTEGER NOT NULL,
    json            TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    PRIMARY KEY (conversation, seq)
) WITHOUT ROWID;
INSERT INTO outbox_keyed(conversation, seq, effect_id, schema, json, attempts, next_attempt_at)
    SELECT conversation, seq, effect_id, schema, json, attempts, next_attempt_at FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_keyed RENAME TO outbox;
DELETE FROM sqlite_sequence WHERE name = 'outbox';
"#,
    // The queue the same way: one B-tree keyed by (conversation, seq) instead of a rowid
    // table with `AUTOINCREMENT` (a `sqlite_sequence` write per insert), a unique index on
    // the event id and one on (conversation, seq). Which conversation goes first is now by
    // its oldest event's time.
    r#"
CREATE TABLE queue_keyed (
    conversation TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    event_id     TEXT NOT NULL,
    json         TEXT NOT NULL,
    at           INTEGER NOT NULL,
    PRIMARY KEY (conversation, seq)
) WITHOUT ROWID;
INSERT INTO queue_keyed(conversation, seq, event_id, json, at)
    SELECT conversation, seq, event_id, json, at FROM queue;
DROP TABLE queue;
ALTER TABLE queue_keyed RENAME TO queue;
DELETE FROM sqlite_sequence WHERE name = 'queue';
"#,
];

/// The embedded database. Cheap to share: `Db::open` hands out an `Arc<Db>`, and the
/// queue, timers and console store each keep a clone.
pub struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// Held to be dropped (which stops its thread); declared before the writer, so it
    /// stops asking the writer for checkpoints before the writer stops.
    _checkpointer: Checkpointer,
    writer: Writer,
    trace: trace::TraceLog,
    readers: Mutex<Vec<Connection>>,
    /// Dispatchers told about conversations that got new queued events.
    subscribers: Mutex<Vec<mpsc::UnboundedSender<ConversationKey>>>,
    /// Woken when a timer is scheduled, so the timer loop re-reads the next due time.
    timers_changed: Arc<Notify>,
    /// Agents as last decoded, with the revision of the row they were decoded from.
    decoded_agents: Mutex<HashMap<String, (i64, baton_core::agent::Agent)>>,
    /// Events queued through this handle since it was opened (copies turned away not counted).
    events_queued: AtomicU64,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.inner.path).finish()
    }
}

impl Db {
    /// Open (or create) the database at `path`, switch it to WAL and run pending migrations.
    pub fn open(path: &Path) -> Result<Arc<Db>, StoreError> {
        let mut writer = open_connection(path)?;
        switch_to_wal(&writer, path)?;
        migrate(&mut writer)?;
        // The trace lives in a file of its own (trace.rs); lines of earlier builds move there.
        let trace_path = trace::path_beside(path);
        let trace = trace::TraceLog::open(&trace_path)?;
        trace::move_from_main(&writer, &trace_path)?;
        // The writer's automatic checkpoint at WAL_CHECKPOINT_PAGES instead of SQLite's 1,000
        // pages, as a backstop: the checkpoint thread copies the WAL and has it start over
        // well before (checkpoint.rs). The file is cut back to WAL_SIZE_LIMIT when it starts
        // over past that size.
        writer.pragma_update(None, "wal_autocheckpoint", WAL_CHECKPOINT_PAGES).map_err(sql)?;
        writer.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT).map_err(sql)?;
        let writer = Writer::start(writer)?;
        // Copies the WAL into the file as the writer goes, and has it start over (checkpoint.rs).
        let checkpointer = Checkpointer::start(
            open_connection(path)?,
            WAL_RESTART_FRAMES,
            writer.commit_count(),
            writer.checkpoint_requests(),
        )?;
        Ok(Arc::new(Db {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                _checkpointer: checkpointer,
                writer,
                trace,
                readers: Mutex::new(Vec::new()),
                subscribers: Mutex::new(Vec::new()),
                timers_changed: Arc::new(Notify::new()),
                decoded_agents: Mutex::new(HashMap::new()),
                events_queued: AtomicU64::new(0),
            }),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The schema version this build writes (`PRAGMA user_version` after `open`).
    pub fn schema_version() -> u32 {
        MIGRATIONS.len() as u32
    }

    /// Delete seen event ids older than [`SEEN_RETENTION_MS`] before `now`; returns how many.
    pub async fn prune_seen(&self, now: baton_core::model::Millis) -> Result<u64, StoreError> {
        let cutoff = now.0.saturating_sub(SEEN_RETENTION_MS);
        self.write(move |c| {
            let n = c.execute("DELETE FROM seen WHERE at < ?1", [cutoff]).map_err(sql)?;
            Ok(n as u64)
        })
        .await
    }

    /// Run `f` on the writer connection, inside a transaction shared with the writes that
    /// arrive at the same time; returns once that transaction is committed. `f` must not
    /// open a transaction of its own (use `Connection::savepoint` to group statements);
    /// when it returns an error, its writes are undone and the others' stay.
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.inner.writer.write(f).await
    }

    /// Queue a trace line (`trace.rs`), written within a tenth of a second: call it once the
    /// write the line describes is committed.
    pub(crate) fn trace_line(&self, conversation: String, at: baton_core::model::Millis, json: String) {
        self.inner.trace.line(trace::Line { conversation, at: at.0, json });
    }

    /// Transactions the writer has committed so far (each holds a group of writes).
    pub fn group_commits(&self) -> u64 {
        self.inner.writer.commits()
    }

    /// How busy the writer thread has been and how long writes waited for their commit.
    pub fn writer_stats(&self) -> WriterStats {
        self.inner.writer.stats()
    }

    /// Run `f` on a reader connection on a blocking thread.
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.with_reader(f))
            .await
            .map_err(|e| StoreError::Unavailable(format!("database task failed: {e}")))?
    }

    /// A point read (a few rows found by key) run on the caller's thread when an idle reader
    /// connection is at hand. It takes microseconds; handing it to a blocking thread costs two
    /// thread wake-ups, which under load was a quarter of the worker's time per event. WAL
    /// readers do not wait for the writer. Without an idle connection (opening one parses
    /// the schema) it runs on a blocking thread like [`Db::read`]. Scans use `read`.
    pub(crate) async fn lookup<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let idle = lock(&self.inner.readers).pop();
        match idle {
            Some(conn) => {
                let out = f(&conn);
                self.inner.give_back(conn);
                out
            }
            None => self.read(f).await,
        }
    }

    /// Events queued through this handle since it was opened (by `enqueue` and by fired
    /// timers; copies of a queued event turned away are not counted).
    pub fn events_queued(&self) -> u64 {
        self.inner.events_queued.load(Ordering::Relaxed)
    }

    /// Count `events` newly queued and tell every live subscriber which conversations
    /// (`keys`) got them.
    pub(crate) fn notify_enqueued(&self, keys: &[ConversationKey], events: u64) {
        self.inner.events_queued.fetch_add(events, Ordering::Relaxed);
        if keys.is_empty() {
            return;
        }
        let mut subs = lock(&self.inner.subscribers);
        subs.retain(|s| keys.iter().all(|k| s.send(k.clone()).is_ok()));
    }

    pub(crate) fn subscribe(&self) -> mpsc::UnboundedReceiver<ConversationKey> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.inner.subscribers).push(tx);
        rx
    }

    pub(crate) fn timers_changed(&self) -> Arc<Notify> {
        self.inner.timers_changed.clone()
    }
}

impl Inner {
    fn with_reader<T>(&self, f: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let idle = lock(&self.readers).pop();
        let conn = match idle {
            Some(c) => c,
            None => {
                let c = open_connection(&self.path)?;
                c.pragma_update(None, "query_only", true).map_err(sql)?;
                c
            }
        };
        let out = f(&conn);
        self.give_back(conn);
        out
    }

    fn give_back(&self, conn: Connection) {
        let mut pool = lock(&self.readers);
        if pool.len() < MAX_IDLE_READERS && conn.is_autocommit() {
            pool.push(conn);
        }
    }
}

/// Lock a mutex that guards plain data; a panic elsewhere cannot leave that data half-written.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sql)?;
    conn.pragma_update(None, "synchronous", "FULL").map_err(sql)?;
    // Each write of a group commit runs in a savepoint (writer.rs), whose undo journal
    // spilled to a temporary file past 64 KiB: written on every group, never needed on disk
    // (it only rolls back a failed write within the open transaction).
    conn.pragma_update(None, "temp_store", "MEMORY").map_err(sql)?;
    Ok(conn)
}

/// Put the file behind `conn` in WAL mode (it stays so for every later connection).
pub(crate) fn switch_to_wal(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0)).map_err(sql)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Unavailable(format!("cannot switch {} to WAL mode (got {mode})", path.display())));
    }
    Ok(())
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(sql)?;
    let known = MIGRATIONS.len() as i64;
    if current > known {
        return Err(StoreError::Unavailable(format!(
            "database schema version {current} is newer than this build supports ({known})"
        )));
    }
    for (i, step) in MIGRATIONS.iter().enumerate().skip(current.max(0) as usize) {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(sql)?;
        tx.execute_batch(step).map_err(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64).map_err(sql)?;
        tx.commit().map_err(sql)?;
        tracing::info!(version = i + 1, "database schema migrated");
    }
    Ok(())
}

/// Map an SQLite error. Values are always bound as parameters, so SQLite's messages name
/// tables and columns but never contain stored data (tokens, secrets, user text).
pub(crate) fn sql(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(format!("sqlite: {e}"))
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Unavailable(format!("cannot encode a record: {e}")))
}

/// Decode a stored JSON record. The message keeps only the error's class and position:
/// serde's full message can quote the offending value, which may be a secret.
pub(crate) fn decode<T: DeserializeOwned>(key: &str, json: &str) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        message: format!("{:?} error at line {} column {}", e.classify(), e.line(), e.column()),
    })
}

/// Parse a conversation key column back.
pub(crate) fn parse_key(s: &str) -> Result<ConversationKey, StoreError> {
    ConversationKey::parse(s).map_err(|e| StoreError::Corrupt { key: s.to_string(), message: e.to_string() })
}

pub(crate) fn to_i64(v: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Unavailable(format!("{what} {v} does not fit in the database")))
}

pub(crate) fn limit_param(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;
    use baton_core::model::Channel;

    pub fn open_temp() -> (tempfile::TempDir, Arc<Db>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(&dir.path().join("baton.db")).expect("open");
        (dir, db)
    }

    pub fn key(user: &str) -> ConversationKey {
        ConversationKey::new("demo", Channel::Widget, user).expect("key")
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    #[tokio::test]
    async fn open_sets_wal_schema_version_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let db = Db::open(&path).unwrap();
        let (mode, version): (String, i64) = db
            .read(|c| {
                let m = c.pragma_query_value(None, "journal_mode", |r| r.get(0)).map_err(sql)?;
                let v = c.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(sql)?;
                Ok((m, v))
            })
            .await
            .unwrap();
        assert_eq!(mode.to_lowercase(), "wal");
        assert_eq!(version, Db::schema_version() as i64);
        let sync: i64 =
            db.write(|c| c.pragma_query_value(None, "synchronous", |r| r.get(0)).map_err(sql)).await.unwrap();
        assert_eq!(sync, 2, "synchronous=FULL");
        let temp: i64 =
            db.write(|c| c.pragma_query_value(None, "temp_store", |r| r.get(0)).map_err(sql)).await.unwrap();
        assert_eq!(temp, 2, "savepoint journals in memory");
        let checkpoint: i64 =
            db.write(|c| c.pragma_query_value(None, "wal_autocheckpoint", |r| r.get(0)).map_err(sql)).await.unwrap();
        assert_eq!(checkpoint, WAL_CHECKPOINT_PAGES);
        drop(db);
        // Reopening runs no migration again (it would fail on CREATE TABLE).
        Db::open(&path).unwrap();
    }

    #[tokio::test]
    async fn committed_writes_reach_the_database_file_long_before_the_writers_checkpoint() {
        let (dir, db) = open_temp();
        db.write(|c| c.execute("INSERT INTO settings(name, value) VALUES ('probe', 'x')", []).map_err(sql))
            .await
            .unwrap();
        // A copy of the database file without its WAL holds what checkpoints copied; the
        // writer's own would wait for WAL_CHECKPOINT_PAGES.
        let copy = dir.path().join("copy.db");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            std::fs::copy(db.path(), &copy).unwrap();
            let found = Connection::open(&copy)
                .and_then(|c| c.query_row("SELECT count(*) FROM settings WHERE name = 'probe'", [], |r| r.get(0)))
                .unwrap_or(0);
            if found == 1 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the row never reached the database file");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let db = Db::open(&path).unwrap();
        db.write(|c| c.pragma_update(None, "user_version", 999).map_err(sql)).await.unwrap();
        drop(db);
        match Db::open(&path) {
            Err(StoreError::Unavailable(m)) => assert!(m.contains("newer"), "{m}"),
            other => panic!("expected refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn prune_seen_keeps_eight_days() {
        use baton_core::model::Millis;
        let (_dir, db) = open_temp();
        let day = 24 * 60 * 60 * 1000;
        let now = 100 * day;
        db.write(move |c| {
            c.execute(
                "INSERT INTO seen(event_id, conversation, at) VALUES ('old', 'k', ?1), ('recent', 'k', ?2)",
                [now - 9 * day, now - 7 * day],
            )
            .map_err(sql)?;
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(db.prune_seen(Millis(now)).await.unwrap(), 1);
        use baton_core::ports::Store;
        let k = baton_core::ConversationKey::new("demo", baton_core::Channel::Widget, "k").unwrap();
        assert!(!db.is_seen(&k, "old").await.unwrap());
        assert!(db.is_seen(&k, "recent").await.unwrap());
    }

    /// A data file from before the agents' revision column: its agents get one on upgrade,
    /// and a later change by hand is still seen.
    #[tokio::test]
    async fn agents_of_an_older_schema_read_and_track_changes_after_the_upgrade() {
        use baton_core::ports::Store;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let agent = {
            let db = Db::open(&path).unwrap();
            let agent = db.get_agent("nobody").await.unwrap();
            assert!(agent.is_none());
            let mut a: baton_core::agent::Agent =
                serde_json::from_value(serde_json::json!({"id": "demo", "name": "first"})).unwrap();
            db.put_agent(&a).await.unwrap();
            a.name = "second".into();
            a
        };
        {
            // Back to the schema before the revision column, as an older build left it.
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "DROP TRIGGER agents_rev_on_insert; DROP TRIGGER agents_rev_on_update;
                 ALTER TABLE agents DROP COLUMN rev;",
            )
            .unwrap();
            // The version before the revision column's migration (the fourth).
            c.pragma_update(None, "user_version", 3).unwrap();
        }
        let db = Db::open(&path).unwrap();
        assert_eq!(db.get_agent("demo").await.unwrap().unwrap().name, "first");
        let other = Connection::open(&path).unwrap();
        other.execute("UPDATE agents SET json = ?1 WHERE id = 'demo'", [encode(&agent).unwrap()]).unwrap();
        assert_eq!(db.get_agent("demo").await.unwrap().unwrap().name, "second");
    }

    #[tokio::test]
    async fn everything_survives_a_reopen() {
        use baton_core::effect::{Effect, PendingEffect};
        use baton_core::event::{Event, EventKind};
        use baton_core::model::Millis;
        use baton_core::ports::{Commit, EventQueue, Store, Timers, TraceEntry};
        use baton_core::session::Session;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("baton.db");
        let k = key("u");
        {
            let db = Db::open(&path).unwrap();
            let q = EmbeddedQueue::new(db.clone());
            let t = EmbeddedTimers::new(db.clone());
            q.enqueue(vec![
                Event::new("e1", k.clone(), Millis(1), EventKind::UserEnded),
                Event::new("e2", k.clone(), Millis(2), EventKind::UserEnded),
            ])
            .await
            .unwrap();
            t.schedule(&k, 4, Millis(99)).await.unwrap();
            let commit = Commit {
                expected_version: 0,
                session: Session::new(k.clone()),
                event_id: "e0".into(),
                effects: vec![PendingEffect::for_event("e0", 0, Effect::CancelTimer)],
                trace: TraceEntry { at: Millis(5), what: "event".into(), id: "e0".into(), detail: String::new() },
                keep_until: Millis(i64::MAX),
            };
            db.commit(commit).await.unwrap();
            db.set_setting("s", "v").await.unwrap();
        }
        let db = Db::open(&path).unwrap();
        let q = EmbeddedQueue::new(db.clone());
        let t = EmbeddedTimers::new(db.clone());
        assert_eq!(q.depth().await.unwrap(), 2);
        assert_eq!(q.conversations_with_events(10).await.unwrap(), vec![k.clone()]);
        assert_eq!(q.head(&k).await.unwrap().unwrap().id, "e1");
        assert_eq!(t.next_due().await.unwrap(), Some(Millis(99)));
        let pending = db.pending_effects(&k).await.unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].effect.id, "e0/0");
        assert_eq!(db.load_session(&k).await.unwrap().unwrap().version, 1);
        assert!(db.is_seen(&k, "e0").await.unwrap());
        // Its trace line waited for a batch; closing the database wrote it.
        assert_eq!(db.trace(&k).await.unwrap().len(), 1);
        assert_eq!(db.setting("s").await.unwrap().as_deref(), Some("v"));
    }
}
