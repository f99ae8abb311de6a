//! The trace: what happened to each conversation, line by line, in a database file of its
//! own beside the main one (`<data>-trace`), written by a thread of its own.
//!
//! Lines are diagnostics, written after the write they describe was committed; a crash may
//! lose the last batch of them, never state. In the main file they were a random insert into
//! a per-conversation index for every line, which the one writer had to copy into the WAL
//! and fsync with the acknowledgements waiting behind it: a quarter of all WAL frames under
//! load, and the groups that carried a batch of lines were the slowest (BENCHMARKS.md, "The
//! trace in a file of its own"). Here they are batched ([`BATCH_DELAY`], [`BATCH_LINES`])
//! and committed without an fsync (`synchronous=NORMAL`: a power cut may lose the last
//! batches, the file stays sound); an erasure is synced.

use crate::sql;
use baton_core::ports::StoreError;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Longest a line waits for its batch.
pub const BATCH_DELAY: Duration = Duration::from_millis(100);

/// Lines that make a batch without waiting for [`BATCH_DELAY`].
pub const BATCH_LINES: usize = 512;

/// Name of the trace thread (as `/proc` shows it: at most 15 bytes).
pub const TRACE_THREAD: &str = "baton-db-trace";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS trace (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation TEXT NOT NULL,
    at           INTEGER NOT NULL,
    json         TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS trace_by_conversation ON trace(conversation, seq);
";

/// The layout this build writes (`PRAGMA user_version` of the trace file).
const LAYOUT: i64 = 1;

/// One trace line: its conversation, when, and the entry as JSON.
pub(crate) struct Line {
    pub conversation: String,
    pub at: i64,
    pub json: String,
}

enum Msg {
    Line(Line),
    /// Write the waiting lines now and say so.
    Flush(oneshot::Sender<()>),
    /// Write the waiting lines, then delete these conversations' lines (synced); answers
    /// how many went.
    Erase(Vec<String>, oneshot::Sender<Result<u64, StoreError>>),
}

/// Handle to the trace thread; dropping it writes the waiting lines and waits for the thread.
pub(crate) struct TraceLog {
    path: PathBuf,
    tx: Option<mpsc::Sender<Msg>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The trace file of the database at `main`.
pub(crate) fn path_beside(main: &Path) -> PathBuf {
    let mut name = main.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push("-trace");
    main.with_file_name(name)
}

/// A connection as the main file's (`crate::open_connection`), without an fsync per commit.
fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = crate::open_connection(path)?;
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(sql)?;
    Ok(conn)
}

impl TraceLog {
    /// Open (or create) the trace file at `path` and start its thread.
    pub fn open(path: &Path) -> Result<TraceLog, StoreError> {
        let conn = open_connection(path)?;
        crate::switch_to_wal(&conn, path)?;
        let layout: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(sql)?;
        if layout > LAYOUT {
            return Err(StoreError::Unavailable(format!(
                "trace file layout {layout} is newer than this build supports ({LAYOUT})"
            )));
        }
        if layout < LAYOUT {
            conn.execute_batch(SCHEMA).map_err(sql)?;
            conn.pragma_update(None, "user_version", LAYOUT).map_err(sql)?;
        }
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(TRACE_THREAD.into())
            .spawn(move || trace_loop(&conn, &rx))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the trace writer: {e}")))?;
        Ok(TraceLog { path: path.to_path_buf(), tx: Some(tx), thread: Some(thread) })
    }

    /// Queue a line; it is written within [`BATCH_DELAY`].
    pub fn line(&self, line: Line) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Msg::Line(line));
        }
    }

    /// Wait until every line queued so far is written.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (done, written) = oneshot::channel();
        self.send(Msg::Flush(done))?;
        written.await.map_err(|_| stopped())
    }

    /// Delete the lines of `conversations`, those still queued included; how many went.
    pub async fn erase(&self, conversations: Vec<String>) -> Result<u64, StoreError> {
        if conversations.is_empty() {
            return Ok(0);
        }
        let (done, erased) = oneshot::channel();
        self.send(Msg::Erase(conversations, done))?;
        erased.await.map_err(|_| stopped())?
    }

    /// A conversation's lines in the order they were written, as `(seq, json)`.
    pub async fn lines(&self, conversation: &str) -> Result<Vec<(i64, String)>, StoreError> {
        self.flush().await?;
        let (path, conv) = (self.path.clone(), conversation.to_string());
        tokio::task::spawn_blocking(move || {
            let conn = open_connection(&path)?;
            let mut stmt =
                conn.prepare_cached("SELECT seq, json FROM trace WHERE conversation = ?1 ORDER BY seq").map_err(sql)?;
            let rows = stmt.query_map([&conv], |r| Ok((r.get(0)?, r.get(1)?))).map_err(sql)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(sql)
        })
        .await
        .map_err(|_| StoreError::Unavailable("a trace read failed unexpectedly".into()))?
    }

    fn send(&self, msg: Msg) -> Result<(), StoreError> {
        self.tx.as_ref().ok_or_else(stopped)?.send(msg).map_err(|_| stopped())
    }
}

impl Drop for TraceLog {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the trace writer has stopped".into())
}

fn trace_loop(conn: &Connection, rx: &mpsc::Receiver<Msg>) {
    let mut waiting: Vec<Line> = Vec::new();
    let mut since: Option<Instant> = None;
    loop {
        let msg = match since {
            None => rx.recv().ok(),
            Some(t) => match rx.recv_timeout((t + BATCH_DELAY).saturating_duration_since(Instant::now())) {
                Ok(msg) => Some(msg),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    write(conn, &mut waiting, &mut since);
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => None,
            },
        };
        match msg {
            Some(Msg::Line(line)) => {
                waiting.push(line);
                since.get_or_insert_with(Instant::now);
                if waiting.len() >= BATCH_LINES {
                    write(conn, &mut waiting, &mut since);
                }
            }
            Some(Msg::Flush(done)) => {
                write(conn, &mut waiting, &mut since);
                let _ = done.send(());
            }
            Some(Msg::Erase(conversations, done)) => {
                write(conn, &mut waiting, &mut since);
                let _ = done.send(erase(conn, &conversations));
            }
            None => {
                // The handle was dropped: what is waiting is written before the thread ends.
                write(conn, &mut waiting, &mut since);
                return;
            }
        }
    }
}

/// Write the waiting lines in one transaction; a failure is logged and the batch dropped.
fn write(conn: &Connection, waiting: &mut Vec<Line>, since: &mut Option<Instant>) {
    *since = None;
    if waiting.is_empty() {
        return;
    }
    let lines = std::mem::take(waiting);
    let written = (|| {
        let tx = conn.unchecked_transaction().map_err(sql)?;
        {
            let mut insert =
                tx.prepare_cached("INSERT INTO trace(conversation, at, json) VALUES (?1, ?2, ?3)").map_err(sql)?;
            for l in &lines {
                insert.execute(params![l.conversation, l.at, l.json]).map_err(sql)?;
            }
        }
        tx.commit().map_err(sql)
    })();
    if let Err(e) = written {
        tracing::error!(error = %e, lines = lines.len(), "a batch of trace lines was lost");
    }
}

/// Delete the conversations' lines in one transaction, synced: an erasure must hold.
fn erase(conn: &Connection, conversations: &[String]) -> Result<u64, StoreError> {
    conn.pragma_update(None, "synchronous", "FULL").map_err(sql)?;
    let erased = (|| {
        let tx = conn.unchecked_transaction().map_err(sql)?;
        let mut n = 0;
        {
            let mut delete = tx.prepare_cached("DELETE FROM trace WHERE conversation = ?1").map_err(sql)?;
            for c in conversations {
                n += delete.execute([c]).map_err(sql)? as u64;
            }
        }
        tx.commit().map_err(sql)?;
        Ok(n)
    })();
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(sql)?;
    erased
}

/// Move the lines an earlier build kept in the main file's `trace` table into the trace
/// file: copied first (each keeps its `seq`, so a copy cut short and done again adds none
/// twice), then deleted from the main file. Run at open, before any line is queued.
pub(crate) fn move_from_main(main: &Connection, trace: &Path) -> Result<u64, StoreError> {
    let any: Option<i64> = main.query_row("SELECT seq FROM trace LIMIT 1", [], |r| r.get(0)).optional().map_err(sql)?;
    if any.is_none() {
        return Ok(0);
    }
    main.execute("ATTACH DATABASE ?1 AS trace_file", [trace.to_string_lossy()]).map_err(sql)?;
    let moved = (|| {
        let copied = main
            .execute(
                "INSERT OR IGNORE INTO trace_file.trace(seq, conversation, at, json)
                 SELECT seq, conversation, at, json FROM main.trace",
                [],
            )
            .map_err(sql)?;
        // Its own transaction, after the copy's: never deleted before it is copied.
        main.execute("DELETE FROM main.trace", []).map_err(sql)?;
        Ok(copied as u64)
    })();
    main.execute("DETACH DATABASE trace_file", []).map_err(sql)?;
    moved
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(conv: &str, n: i64) -> Line {
        Line { conversation: conv.into(), at: n, json: format!("line {n}") }
    }

    fn count(path: &Path) -> i64 {
        open_connection(path).unwrap().query_row("SELECT count(*) FROM trace", [], |r| r.get(0)).unwrap()
    }

    #[tokio::test]
    async fn lines_are_written_in_one_batch_after_the_delay_and_read_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let log = TraceLog::open(&path).unwrap();
        let queued = Instant::now();
        for n in 0..3 {
            log.line(line("k", n));
        }
        log.line(line("other", 9));
        if queued.elapsed() < BATCH_DELAY / 2 {
            assert_eq!(count(&path), 0, "written before their batch was due");
        }
        let mut written = 0;
        while written == 0 && queued.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(10)).await;
            written = count(&path);
        }
        assert!(queued.elapsed() >= BATCH_DELAY);
        assert_eq!(written, 4, "one batch");
        let lines: Vec<String> = log.lines("k").await.unwrap().into_iter().map(|(_, json)| json).collect();
        assert_eq!(lines, ["line 0", "line 1", "line 2"]);
    }

    #[tokio::test]
    async fn a_full_batch_does_not_wait_and_a_read_sees_every_queued_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let log = TraceLog::open(&path).unwrap();
        for n in 0..BATCH_LINES as i64 + 1 {
            log.line(line("k", n));
        }
        let mut written = 0;
        let start = Instant::now();
        while written == 0 && start.elapsed() < BATCH_DELAY / 2 {
            std::thread::sleep(Duration::from_millis(5));
            written = count(&path);
        }
        if start.elapsed() < BATCH_DELAY / 2 {
            assert_eq!(written, BATCH_LINES as i64, "the full batch went at once, the last line waits");
        }
        assert_eq!(log.lines("k").await.unwrap().len(), BATCH_LINES + 1, "a read writes the waiting ones first");
    }

    #[tokio::test]
    async fn an_erasure_takes_queued_lines_too_and_dropping_writes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        {
            let log = TraceLog::open(&path).unwrap();
            log.line(line("gone", 1));
            log.flush().await.unwrap();
            log.line(line("gone", 2));
            log.line(line("kept", 3));
            assert_eq!(log.erase(vec!["gone".into()]).await.unwrap(), 2);
            log.line(line("kept", 4));
        }
        let log = TraceLog::open(&path).unwrap();
        assert!(log.lines("gone").await.unwrap().is_empty());
        let kept: Vec<String> = log.lines("kept").await.unwrap().into_iter().map(|(_, json)| json).collect();
        assert_eq!(kept, ["line 3", "line 4"], "the last line was written when the log was dropped");
    }

    #[test]
    fn lines_of_an_earlier_build_move_once_and_keep_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let trace = dir.path().join("t");
        drop(TraceLog::open(&trace).unwrap());
        let main = Connection::open(dir.path().join("m")).unwrap();
        main.execute_batch(
            "CREATE TABLE trace (seq INTEGER PRIMARY KEY AUTOINCREMENT, conversation TEXT NOT NULL,
                                 at INTEGER NOT NULL, json TEXT NOT NULL);
             INSERT INTO trace(seq, conversation, at, json) VALUES (7, 'k', 1, 'a'), (9, 'k', 2, 'b');",
        )
        .unwrap();
        assert_eq!(move_from_main(&main, &trace).unwrap(), 2);
        // A move cut short after its copy: done again, it adds nothing twice.
        main.execute("INSERT INTO trace(seq, conversation, at, json) VALUES (9, 'k', 2, 'b')", []).unwrap();
        assert_eq!(move_from_main(&main, &trace).unwrap(), 0);
        assert_eq!(main.query_row("SELECT count(*) FROM trace", [], |r| r.get::<_, i64>(0)).unwrap(), 0);
        let t = open_connection(&trace).unwrap();
        t.execute("INSERT INTO trace(conversation, at, json) VALUES ('k', 3, 'c')", []).unwrap();
        let rows: Vec<(i64, String)> = t
            .prepare("SELECT seq, json FROM trace ORDER BY seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows, [(7, "a".into()), (9, "b".into()), (10, "c".into())], "new lines follow the moved ones");
    }
}
