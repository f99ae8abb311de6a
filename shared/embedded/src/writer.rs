//! Group commit for every write: one thread owns the writer connection, takes every write
//! that is waiting (up to [`MAX_GROUP`]), runs each in a savepoint of its own inside ONE
//! transaction, commits (one fsync for the whole group) and only then answers each caller.
//!
//! Concurrent writers (webhooks acknowledging events, workers committing sessions and
//! completing effects) thus share fsyncs, and none of them hears "done" before its write
//! is on disk. A write that fails rolls back to its savepoint and leaves the others in the
//! group alone; a failed commit fails the whole group.

use crate::sql;
use baton_core::ports::StoreError;
use rusqlite::Connection;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use tokio::sync::oneshot;

/// Most writes in one transaction. Bounds how long one group holds the write lock.
pub const MAX_GROUP: usize = 256;

/// One caller's write, type-erased so writes of any result type share the queue.
trait Job: Send {
    /// Run the write on the connection (inside its savepoint); true when it succeeded.
    fn run(&mut self, c: &mut Connection) -> bool;
    /// Answer the caller once the group's fate is known: `Ok` when it was committed.
    fn finish(self: Box<Self>, committed: Result<(), &StoreError>);
}

struct Pending<T, F> {
    write: Option<F>,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Job for Pending<T, F>
where
    T: Send + 'static,
    F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
{
    fn run(&mut self, c: &mut Connection) -> bool {
        let Some(write) = self.write.take() else { return false };
        let result = write(c);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, committed: Result<(), &StoreError>) {
        let answer = match (self.result, committed) {
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(_)) | None, Err(e)) => Err(e.clone()),
            (Some(Ok(v)), Ok(())) => Ok(v),
            // Started but never returned: it panicked.
            (None, Ok(())) => Err(StoreError::Unavailable("a database write failed unexpectedly".into())),
        };
        let _ = self.reply.send(answer);
    }
}

/// Handle to the writer thread. The thread stops, and closes the connection, when the
/// handle is dropped (after finishing the writes already sent); dropping waits for that so
/// the file can be reopened at once.
pub(crate) struct Writer {
    jobs: Option<mpsc::Sender<Box<dyn Job>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    commits: Arc<AtomicU64>,
}

impl Writer {
    pub fn start(conn: Connection) -> Result<Writer, StoreError> {
        let (tx, rx) = mpsc::channel::<Box<dyn Job>>();
        let commits = Arc::new(AtomicU64::new(0));
        let thread = std::thread::Builder::new()
            .name("baton-db-writer".into())
            .spawn({
                let commits = commits.clone();
                move || writer_loop(conn, rx, commits)
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start the database writer: {e}")))?;
        Ok(Writer { jobs: Some(tx), thread: Some(thread), commits })
    }

    /// Queue `write` for the next group and wait until its group is committed.
    pub async fn write<T, F>(&self, write: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(Pending { write: Some(write), result: None, reply });
        let stopped = || StoreError::Unavailable("the database writer has stopped".into());
        self.jobs.as_ref().ok_or_else(stopped)?.send(job).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Transactions committed so far (one per group).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn writer_loop(mut conn: Connection, jobs: mpsc::Receiver<Box<dyn Job>>, commits: Arc<AtomicU64>) {
    while let Ok(first) = jobs.recv() {
        let mut group = Vec::with_capacity(16);
        group.push(first);
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(j) => group.push(j),
                Err(_) => break,
            }
        }
        if run_group(&mut conn, group) {
            commits.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn exec(c: &Connection, statement: &str) -> Result<(), StoreError> {
    c.prepare_cached(statement).map_err(sql)?.execute([]).map_err(sql)?;
    Ok(())
}

/// Run one group; true when a transaction was committed.
fn run_group(conn: &mut Connection, group: Vec<Box<dyn Job>>) -> bool {
    // Jobs whose writes are in the open transaction, waiting for its commit.
    let mut done: Vec<Box<dyn Job>> = Vec::with_capacity(group.len());
    for mut job in group {
        if conn.is_autocommit() {
            if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
                job.finish(Err(&e));
                continue;
            }
        }
        if let Err(e) = exec(conn, "SAVEPOINT job") {
            job.finish(Err(&e));
            continue;
        }
        let ok = catch_unwind(AssertUnwindSafe(|| job.run(conn))).unwrap_or(false);
        if conn.is_autocommit() {
            // SQLite rolled the whole transaction back (a full disk, an I/O error): the
            // writes of the jobs before this one are gone too.
            let e = StoreError::Unavailable("sqlite: the transaction was rolled back by an error".into());
            for j in done.drain(..) {
                j.finish(Err(&e));
            }
            job.finish(if ok { Err(&e) } else { Ok(()) });
            continue;
        }
        let closed = if ok {
            exec(conn, "RELEASE job")
        } else {
            exec(conn, "ROLLBACK TO job").and_then(|()| exec(conn, "RELEASE job"))
        };
        match closed {
            // A failed job is answered now with its own error; it wrote nothing.
            Ok(()) if !ok => job.finish(Ok(())),
            Ok(()) => done.push(job),
            Err(e) => {
                // The savepoint could not be closed: give up the transaction.
                let _ = exec(conn, "ROLLBACK");
                for j in done.drain(..) {
                    j.finish(Err(&e));
                }
                job.finish(Err(&e));
            }
        }
    }
    if conn.is_autocommit() {
        return false;
    }
    let committed = exec(conn, "COMMIT");
    if committed.is_err() && !conn.is_autocommit() {
        let _ = exec(conn, "ROLLBACK");
    }
    for j in done {
        j.finish(committed.as_ref().map(|_| ()));
    }
    committed.is_ok()
}

#[cfg(test)]
mod tests {
    use crate::testutil::open_temp;
    use crate::{sql, Db};
    use baton_core::ports::StoreError;
    use std::sync::Arc;
    use std::time::Duration;

    fn put(
        db: &Arc<Db>,
        name: &'static str,
        outcome: Result<(), &'static str>,
    ) -> tokio::task::JoinHandle<Result<(), StoreError>> {
        let db = db.clone();
        tokio::spawn(async move {
            db.write(move |c| {
                c.execute("INSERT INTO settings(name, value) VALUES (?1, 'v')", [name]).map_err(sql)?;
                match outcome {
                    Ok(()) => Ok(()),
                    Err("panic") => panic!("a write that panics"),
                    Err(why) => Err(StoreError::Unavailable(why.into())),
                }
            })
            .await
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_transaction_per_group_and_a_failed_write_undoes_only_itself() {
        let (_dir, db) = open_temp();
        // Hold the writer inside a first write until the others are queued behind it.
        let (entered_tx, entered) = tokio::sync::oneshot::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let first = tokio::spawn({
            let db = db.clone();
            async move {
                db.write(move |c| {
                    let _ = entered_tx.send(());
                    let _ = released.recv();
                    c.execute("INSERT INTO settings(name, value) VALUES ('first', 'v')", []).map_err(sql)?;
                    Ok(())
                })
                .await
            }
        });
        entered.await.unwrap();
        let before = db.group_commits();
        let writes = [
            put(&db, "ok1", Ok(())),
            put(&db, "bad", Err("refused")),
            put(&db, "boom", Err("panic")),
            put(&db, "ok2", Ok(())),
        ];
        tokio::time::sleep(Duration::from_millis(200)).await;
        release.send(()).unwrap();
        first.await.unwrap().unwrap();
        let [ok1, bad, boom, ok2] = writes;
        assert_eq!(ok1.await.unwrap(), Ok(()));
        assert_eq!(bad.await.unwrap(), Err(StoreError::Unavailable("refused".into())));
        assert!(matches!(boom.await.unwrap(), Err(StoreError::Unavailable(m)) if m.contains("unexpectedly")));
        assert_eq!(ok2.await.unwrap(), Ok(()));
        // The first write's transaction, then one for the four queued behind it.
        assert_eq!(db.group_commits() - before, 2);
        let names: Vec<String> = db
            .read(|c| {
                let mut s = c.prepare("SELECT name FROM settings ORDER BY name").map_err(sql)?;
                let rows = s.query_map([], |r| r.get(0)).map_err(sql)?;
                rows.collect::<Result<_, _>>().map_err(sql)
            })
            .await
            .unwrap();
        assert_eq!(names, ["first", "ok1", "ok2"]);
        // The writer carries on after a panic.
        put(&db, "later", Ok(())).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_write_that_opens_its_own_transaction_is_refused_and_harmless() {
        let (_dir, db) = open_temp();
        let r = db
            .write(|c| {
                let tx = c.transaction().map_err(sql)?;
                tx.commit().map_err(sql)
            })
            .await;
        assert!(matches!(r, Err(StoreError::Unavailable(ref m)) if m.contains("transaction")), "{r:?}");
        put(&db, "after", Ok(())).await.unwrap().unwrap();
    }
}
