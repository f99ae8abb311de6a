//! WAL checkpoints beside the writer: a thread with a connection of its own copies what the
//! writer committed into the database file every [`CHECKPOINT_EVERY`], while the writer goes
//! on committing, and has the WAL start over when it has grown past [`WAL_RESTART_FRAMES`].
//!
//! SQLite starts the WAL over only when a write transaction begins with every frame copied,
//! which a checkpoint running beside a busy writer never sees: the writer commits more while
//! it copies. So once the WAL is that long, the thread copies again at once until a pass
//! finds little new (a few milliseconds of commits), then asks the writer to checkpoint
//! between two of its transactions ([`HANDOVER_FRAMES`] or so left to copy, and the file's
//! sync); the writer's next transaction starts the WAL over. Left to the writer's automatic
//! checkpoint, that copy and sync ran inside a commit with up to a tenth of a second to copy,
//! 10-20 ms that every queued write waited out (BENCHMARKS.md, "Checkpoints beside the
//! writer"). The automatic checkpoint stays as a backstop at a larger size.

use crate::sql;
use rusqlite::Connection;
use std::sync::mpsc;
use std::time::Duration;

/// How often the thread copies the WAL's new frames. Shorter spreads the copying more
/// evenly and leaves the writer's own checkpoint less; each run copies every page that
/// changed since the last one, so shorter also copies the busiest pages more often.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// Name of the checkpoint thread (as `/proc` shows it: at most 15 bytes).
pub const CHECKPOINT_THREAD: &str = "baton-db-ckpt";

/// WAL length (in frames of one page: about 80 MB) from which the thread has the WAL start
/// over. Each start over holds the writer for a few milliseconds (its checkpoint's sync), so
/// it is not done often; a longer WAL needs a larger file (`WAL_SIZE_LIMIT`).
pub const WAL_RESTART_FRAMES: i64 = 20_000;

/// Frames a pass may have found new and still let the writer copy the rest: about what the
/// writer commits during one pass under load (a few milliseconds). The writer's checkpoint
/// copies about this much and syncs the file while every write waits.
const HANDOVER_FRAMES: i64 = 512;

/// Passes run back to back to get there; after them the writer is asked anyway, so the WAL
/// stays bounded when the copying cannot catch up.
const MAX_CATCH_UP: u32 = 10;

/// Handle to the checkpoint thread; dropping it stops the thread and waits for it (so the
/// file can be reopened at once).
pub(crate) struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    /// Start checkpointing through `conn` whenever `commits` (the writer's count of
    /// transactions) has moved since the last run: an idle database is left alone. When the
    /// WAL holds `restart_at` frames or more, `ask_writer` asks the writer for a checkpoint
    /// between its transactions.
    pub fn start(
        conn: Connection,
        restart_at: i64,
        commits: impl Fn() -> u64 + Send + 'static,
        ask_writer: impl Fn() + Send + 'static,
    ) -> Result<Checkpointer, baton_core::ports::StoreError> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(CHECKPOINT_THREAD.into())
            .spawn(move || {
                let (mut last, mut failing) = (commits(), false);
                let (mut copied_to, mut catch_up, mut wait) = (0, 0, CHECKPOINT_EVERY);
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(wait) {
                    wait = CHECKPOINT_EVERY;
                    let now = commits();
                    if now == last {
                        continue;
                    }
                    last = now;
                    // The writer's automatic checkpoint is the backstop; this one tries again
                    // next time, and says so once per run of failures, not ten times a second.
                    match checkpoint(&conn) {
                        Ok(wal) => {
                            if failing {
                                failing = false;
                                tracing::info!("background WAL checkpoints work again");
                            }
                            if wal.frames >= restart_at {
                                // What this pass found beyond the last one's end: about what
                                // the writer would find beyond this one's.
                                let fresh = wal.frames - copied_to;
                                if fresh <= HANDOVER_FRAMES || catch_up >= MAX_CATCH_UP {
                                    catch_up = 0;
                                    ask_writer();
                                } else {
                                    catch_up += 1;
                                    wait = Duration::ZERO;
                                }
                            } else {
                                catch_up = 0;
                            }
                            copied_to = wal.copied;
                        }
                        Err(e) if !failing => {
                            failing = true;
                            tracing::warn!(error = %e, "background WAL checkpoint failed");
                        }
                        Err(_) => {}
                    }
                }
            })
            .map_err(|e| {
                baton_core::ports::StoreError::Unavailable(format!("cannot start the checkpoint thread: {e}"))
            })?;
        Ok(Checkpointer { stop: Some(stop), thread: Some(thread) })
    }
}

/// What a checkpoint saw: frames in the WAL, and how many of them are in the database file.
pub(crate) struct Wal {
    frames: i64,
    copied: i64,
}

/// One `PASSIVE` checkpoint: copies the frames no reader still needs, waits for nobody.
/// Run by this thread, and by the writer between its transactions when asked.
pub(crate) fn checkpoint(conn: &Connection) -> Result<Wal, baton_core::ports::StoreError> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok(Wal { frames: r.get(1)?, copied: r.get(2)? }))
        .map_err(sql)
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Checkpointer;
    use crate::{open_connection, sql, writer::Writer};
    use std::time::Duration;

    #[tokio::test]
    async fn a_long_wal_starts_over_through_the_writers_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ckpt.db");
        let conn = open_connection(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        // No automatic checkpoint: only the thread's request can have the WAL start over.
        conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        conn.execute("CREATE TABLE t(x BLOB)", []).unwrap();
        let writer = Writer::start(conn).unwrap();
        let _checkpointer = Checkpointer::start(
            open_connection(&path).unwrap(),
            200,
            writer.commit_count(),
            writer.checkpoint_requests(),
        )
        .unwrap();
        // Rows of 4,000 bytes (a page each), written back to back for two seconds: the
        // thread's own checkpoints hardly ever end between two of the writer's transactions.
        let (started, mut rows) = (std::time::Instant::now(), 0);
        while started.elapsed() < Duration::from_secs(2) || rows < 1_000 {
            writer
                .write(|c| c.execute("INSERT INTO t(x) VALUES (zeroblob(4000))", []).map(drop).map_err(sql))
                .await
                .unwrap();
            rows += 1;
        }
        // Never starting over, the file holds every frame (about 12 KB per row here: 62-66 MB
        // for 5,000 rows); starting over, about 200 frames and what came while the thread
        // caught up (5 MB for 7,300 rows).
        let wal = std::fs::metadata(dir.path().join("ckpt.db-wal")).unwrap().len();
        assert!(wal < rows * 4096, "the WAL grew to {wal} bytes for {rows} rows");
        assert!(writer.stats().checkpoints >= 1);
        let count: u64 =
            writer.write(|c| c.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).map_err(sql)).await.unwrap();
        assert_eq!(count, rows);
    }
}
