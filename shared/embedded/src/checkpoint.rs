//! WAL checkpoints beside the writer: a thread with a connection of its own copies what the
//! writer committed into the database file every [`CHECKPOINT_EVERY`], while the writer goes
//! on committing.
//!
//! The writer's automatic checkpoint (every `WAL_CHECKPOINT_PAGES`) stays: only a checkpoint
//! run between the writer's transactions reaches the WAL's end, and only then does the next
//! transaction start the WAL over. But it runs inside a commit, and every write queued
//! behind that commit waits for it; run alone, its copy and the database file's fsync grew
//! with the tables to a stall every second that held the slowest 1% of acknowledgements
//! (BENCHMARKS.md, "Checkpoints beside the writer"). With this thread's `PASSIVE`
//! checkpoints (which wait for no reader or writer) having copied all but the last tenth of
//! a second, the writer's checkpoint has little left to copy and sync.

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

/// Handle to the checkpoint thread; dropping it stops the thread and waits for it (so the
/// file can be reopened at once).
pub(crate) struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    /// Start checkpointing through `conn` whenever `commits` (the writer's count of
    /// transactions) has moved since the last run: an idle database is left alone.
    pub fn start(
        conn: Connection,
        commits: impl Fn() -> u64 + Send + 'static,
    ) -> Result<Checkpointer, baton_core::ports::StoreError> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(CHECKPOINT_THREAD.into())
            .spawn(move || {
                let (mut last, mut failing) = (commits(), false);
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_EVERY) {
                    let now = commits();
                    if now == last {
                        continue;
                    }
                    last = now;
                    // The writer's own checkpoint still runs; this one tries again next time,
                    // and says so once per run of failures rather than ten times a second.
                    match checkpoint(&conn) {
                        Ok(()) if failing => {
                            failing = false;
                            tracing::info!("background WAL checkpoints work again");
                        }
                        Ok(()) => {}
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

/// One `PASSIVE` checkpoint: copies the frames no reader still needs, waits for nobody.
fn checkpoint(conn: &Connection) -> Result<(), baton_core::ports::StoreError> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())).map_err(sql)
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
