//! Group commit for every write: one thread owns the writer connection, takes every write
//! that is waiting (up to [`MAX_GROUP`]), runs each in a savepoint of its own inside ONE
//! transaction, commits (one fsync for the whole group) and only then answers each caller.
//!
//! Concurrent writers (webhooks acknowledging events, workers committing sessions and
//! completing effects) thus share fsyncs, and none of them hears "done" before its write
//! is on disk. A write that fails rolls back to its savepoint and leaves the others in the
//! group alone; a failed commit fails the whole group.
//!
//! [`Writer::stats`] tells how busy the thread is and how long writes wait for their commit:
//! with every write of the process behind one thread, that wait is most of a webhook's
//! answer time under load (BENCHMARKS.md).

use crate::sql;
use baton_core::ports::StoreError;
use rusqlite::Connection;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Most writes in one transaction. Bounds how long one group holds the write lock.
pub const MAX_GROUP: usize = 256;

/// Name of the writer thread (as `/proc` shows it: at most 15 bytes).
pub const WRITER_THREAD: &str = "baton-db-writer";

/// Width of one bucket of the histogram of waits for a commit.
const WAIT_BUCKET_US: u64 = 250;

/// Buckets of that histogram: waits up to 50 ms, and one for every longer wait.
const WAIT_BUCKETS: usize = 201;

/// What the writer thread counts as it goes (read by [`Writer::stats`]).
struct Counters {
    commits: AtomicU64,
    /// Writes answered (committed or not).
    writes: AtomicU64,
    /// Time spent running groups, from taking a group's first write to answering its last.
    busy_us: AtomicU64,
    /// Each write's wait from being queued to being answered, by [`WAIT_BUCKET_US`].
    waits: [AtomicU64; WAIT_BUCKETS],
    /// Checkpoints run between groups when the checkpoint thread asked for one.
    checkpoints: AtomicU64,
    /// Time those took.
    checkpoint_us: AtomicU64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            commits: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            busy_us: AtomicU64::new(0),
            waits: std::array::from_fn(|_| AtomicU64::new(0)),
            checkpoints: AtomicU64::new(0),
            checkpoint_us: AtomicU64::new(0),
        }
    }
}

impl Counters {
    fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    fn answered(&self, queued: Instant) {
        let bucket = (queued.elapsed().as_micros() as u64 / WAIT_BUCKET_US).min(WAIT_BUCKETS as u64 - 1);
        self.waits[bucket as usize].fetch_add(1, Ordering::Relaxed);
        self.writes.fetch_add(1, Ordering::Relaxed);
    }
}

/// The writer's counters at one moment; subtract two with [`WriterStats::since`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriterStats {
    /// Transactions committed (one per group).
    pub commits: u64,
    /// Writes answered.
    pub writes: u64,
    /// Time the thread spent running groups (CPU, fsyncs and waits for a core alike).
    pub busy: Duration,
    /// Checkpoints the thread ran between groups when asked (the WAL starts over after
    /// each that reaches its end), and the time they took (part of `busy`).
    pub checkpoints: u64,
    pub checkpoint_time: Duration,
    waits: Vec<u64>,
}

impl WriterStats {
    /// What happened between `earlier` and this snapshot.
    pub fn since(&self, earlier: &WriterStats) -> WriterStats {
        WriterStats {
            commits: self.commits.saturating_sub(earlier.commits),
            writes: self.writes.saturating_sub(earlier.writes),
            busy: self.busy.saturating_sub(earlier.busy),
            checkpoints: self.checkpoints.saturating_sub(earlier.checkpoints),
            checkpoint_time: self.checkpoint_time.saturating_sub(earlier.checkpoint_time),
            waits: self.waits.iter().zip(&earlier.waits).map(|(a, b)| a.saturating_sub(*b)).collect(),
        }
    }

    /// The `q` quantile (0 to 1) of the writes' waits from being queued to being answered,
    /// to the [`WAIT_BUCKET_US`] above it; `None` when no write was answered or the quantile
    /// is past the histogram's last bound (50 ms).
    pub fn wait_quantile(&self, q: f64) -> Option<Duration> {
        let total: u64 = self.waits.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64 * q.clamp(0.0, 1.0)).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.waits.iter().enumerate().take(WAIT_BUCKETS - 1) {
            seen += n;
            if seen >= rank {
                return Some(Duration::from_micros((i as u64 + 1) * WAIT_BUCKET_US));
            }
        }
        None
    }
}

/// One caller's write, type-erased so writes of any result type share the queue.
trait Job: Send {
    /// Run the write on the connection (inside its savepoint); true when it succeeded.
    fn run(&mut self, c: &mut Connection) -> bool;
    /// Answer the caller once the group's fate is known: `Ok` when it was committed.
    fn finish(self: Box<Self>, committed: Result<(), &StoreError>);
}

/// What reaches the writer thread.
enum Msg {
    Job(Box<dyn Job>),
    /// Checkpoint after the group at hand, between transactions (`checkpoint.rs`).
    Checkpoint,
    /// The handle was dropped: finish what was sent before and stop (the checkpoint thread
    /// may still hold a sender, so the channel alone would not say so).
    Stop,
}

struct Pending<T, F> {
    queued: Instant,
    counters: Arc<Counters>,
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
        self.counters.answered(self.queued);
        let _ = self.reply.send(answer);
    }
}

/// Handle to the writer thread. The thread stops, and closes the connection, when the
/// handle is dropped (after finishing the writes already sent); dropping waits for that so
/// the file can be reopened at once.
pub(crate) struct Writer {
    jobs: Option<mpsc::Sender<Msg>>,
    thread: Option<std::thread::JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl Writer {
    pub fn start(conn: Connection) -> Result<Writer, StoreError> {
        let (tx, rx) = mpsc::channel::<Msg>();
        let counters = Arc::new(Counters::default());
        let thread = std::thread::Builder::new()
            .name(WRITER_THREAD.into())
            .spawn({
                let counters = counters.clone();
                move || writer_loop(conn, rx, &counters)
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start the database writer: {e}")))?;
        Ok(Writer { jobs: Some(tx), thread: Some(thread), counters })
    }

    /// Queue `write` for the next group and wait until its group is committed.
    pub async fn write<T, F>(&self, write: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let counters = self.counters.clone();
        let job: Box<dyn Job> =
            Box::new(Pending { queued: Instant::now(), counters, write: Some(write), result: None, reply });
        let stopped = || StoreError::Unavailable("the database writer has stopped".into());
        self.jobs.as_ref().ok_or_else(stopped)?.send(Msg::Job(job)).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Transactions committed so far (one per group).
    pub fn commits(&self) -> u64 {
        self.counters.commits()
    }

    /// The number of commits so far, readable from another thread.
    pub fn commit_count(&self) -> impl Fn() -> u64 + Send + 'static {
        let counters = self.counters.clone();
        move || counters.commits()
    }

    /// Asks the thread for a checkpoint between two groups (nothing once it has stopped).
    pub fn checkpoint_requests(&self) -> impl Fn() + Send + 'static {
        let jobs = self.jobs.clone();
        move || {
            if let Some(jobs) = &jobs {
                let _ = jobs.send(Msg::Checkpoint);
            }
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> WriterStats {
        let c = &self.counters;
        WriterStats {
            commits: c.commits(),
            writes: c.writes.load(Ordering::Relaxed),
            busy: Duration::from_micros(c.busy_us.load(Ordering::Relaxed)),
            checkpoints: c.checkpoints.load(Ordering::Relaxed),
            checkpoint_time: Duration::from_micros(c.checkpoint_us.load(Ordering::Relaxed)),
            waits: c.waits.iter().map(|w| w.load(Ordering::Relaxed)).collect(),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(jobs) = self.jobs.take() {
            let _ = jobs.send(Msg::Stop);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn writer_loop(mut conn: Connection, jobs: mpsc::Receiver<Msg>, counters: &Counters) {
    let (mut stopping, mut checkpoint_failing) = (false, false);
    while !stopping {
        let mut group: Vec<Box<dyn Job>> = Vec::with_capacity(16);
        let mut checkpoint = false;
        let first = jobs.recv();
        let started = Instant::now();
        match first {
            Ok(Msg::Job(job)) => group.push(job),
            Ok(Msg::Checkpoint) => checkpoint = true,
            Ok(Msg::Stop) | Err(_) => break,
        }
        while group.len() < MAX_GROUP && !stopping {
            match jobs.try_recv() {
                Ok(Msg::Job(job)) => group.push(job),
                Ok(Msg::Checkpoint) => checkpoint = true,
                Ok(Msg::Stop) => stopping = true,
                Err(_) => break,
            }
        }
        if !group.is_empty() {
            run_group(&mut conn, group, counters);
        }
        if checkpoint {
            // After the group's answers went out, so none of its writes waits for the copy.
            let at = Instant::now();
            // Said once per run of failures: the thread asks again every tenth of a second.
            match crate::checkpoint::checkpoint(&conn) {
                Ok(_) => checkpoint_failing = false,
                Err(e) if !checkpoint_failing => {
                    checkpoint_failing = true;
                    tracing::warn!(error = %e, "the writer's WAL checkpoint failed");
                }
                Err(_) => {}
            }
            counters.checkpoints.fetch_add(1, Ordering::Relaxed);
            counters.checkpoint_us.fetch_add(at.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
        counters.busy_us.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    }
}

fn exec(c: &Connection, statement: &str) -> Result<(), StoreError> {
    c.prepare_cached(statement).map_err(sql)?.execute([]).map_err(sql)?;
    Ok(())
}

/// Run one group; a commit is counted before its writes are answered, so a caller that
/// heard back sees it in the stats.
fn run_group(conn: &mut Connection, group: Vec<Box<dyn Job>>, counters: &Counters) {
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
        return;
    }
    let committed = exec(conn, "COMMIT");
    if committed.is_ok() {
        counters.commits.fetch_add(1, Ordering::Relaxed);
    } else if !conn.is_autocommit() {
        let _ = exec(conn, "ROLLBACK");
    }
    for j in done {
        j.finish(committed.as_ref().map(|_| ()));
    }
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

    /// Start a write that holds the writer thread until the returned sender is used (then
    /// puts `name` when given); returns once the writer is inside it.
    async fn hold_writer(
        db: &Arc<Db>,
        name: Option<&'static str>,
    ) -> (tokio::task::JoinHandle<Result<(), StoreError>>, std::sync::mpsc::Sender<()>) {
        let (entered_tx, entered) = tokio::sync::oneshot::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let first = tokio::spawn({
            let db = db.clone();
            async move {
                db.write(move |c| {
                    let _ = entered_tx.send(());
                    let _ = released.recv();
                    if let Some(name) = name {
                        c.execute("INSERT INTO settings(name, value) VALUES (?1, 'v')", [name]).map_err(sql)?;
                    }
                    Ok(())
                })
                .await
            }
        });
        entered.await.unwrap();
        (first, release)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_transaction_per_group_and_a_failed_write_undoes_only_itself() {
        let (_dir, db) = open_temp();
        // Hold the writer inside a first write until the others are queued behind it.
        let (first, release) = hold_writer(&db, Some("first")).await;
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_stats_count_each_write_and_its_wait_for_the_commit() {
        let (_dir, db) = open_temp();
        let before = db.writer_stats();
        let (first, release) = hold_writer(&db, None).await;
        let behind = [put(&db, "a", Ok(())), put(&db, "b", Ok(())), put(&db, "c", Err("refused"))];
        tokio::time::sleep(Duration::from_millis(30)).await;
        release.send(()).unwrap();
        first.await.unwrap().unwrap();
        for w in behind {
            let _ = w.await.unwrap();
        }
        let stats = db.writer_stats().since(&before);
        assert_eq!(stats.writes, 4, "{stats:?}");
        // The held write's group, and one for the others (more if one was queued late).
        assert!((2..=4).contains(&stats.commits), "{stats:?}");
        assert!(stats.busy >= Duration::from_millis(30), "{stats:?}");
        // The held write waited out its own group (past the histogram's 50 ms on a slow machine).
        let longest = stats.wait_quantile(1.0);
        assert!(longest.is_none_or(|d| d >= Duration::from_millis(30)), "{longest:?}");
    }

    #[test]
    fn wait_quantiles_are_the_bounds_of_their_buckets() {
        let mut waits = vec![0; super::WAIT_BUCKETS];
        waits[0] = 98;
        waits[3] = 1;
        waits[super::WAIT_BUCKETS - 1] = 1;
        let stats = super::WriterStats {
            commits: 10,
            writes: 100,
            busy: Duration::from_millis(5),
            checkpoints: 0,
            checkpoint_time: Duration::ZERO,
            waits,
        };
        assert_eq!(stats.wait_quantile(0.5), Some(Duration::from_micros(250)));
        assert_eq!(stats.wait_quantile(0.98), Some(Duration::from_micros(250)));
        assert_eq!(stats.wait_quantile(0.99), Some(Duration::from_millis(1)));
        assert_eq!(stats.wait_quantile(1.0), None, "past 50 ms");
        let none = stats.since(&stats);
        assert_eq!((none.writes, none.commits, none.busy), (0, 0, Duration::ZERO));
        assert_eq!(none.wait_quantile(0.5), None);
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
