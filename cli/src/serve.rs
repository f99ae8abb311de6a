//! `baton serve`: every route, the worker, the timers and the operator console in one
//! process on loopback, with state in one SQLite file.

use crate::{assets, console, demo};
use baton_brains::Brains;
pub use baton_connectors::outbound::Targets;
use baton_core::model::ServiceStatus;
use baton_core::ports::{Clock, Completion, EventQueue, OutboxItem, QueueError, Store, VersionedSession};
use baton_core::{ConversationKey, Event};
use baton_embedded::{ConsoleStore, Db, EmbeddedQueue, EmbeddedTimers};
use baton_runtime::http::{AppState, Limits, RateLimitConfig};
use baton_runtime::widget::{MessageLog, TokenSigner};
use baton_runtime::worker::{
    apply_event, apply_event_after, apply_events_after, drain_items, drain_outbox, After, Applied, Processed,
    WorkerError, MAX_BATCH,
};
use baton_runtime::{Connectors, Ports};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, Semaphore};

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub addr: SocketAddr,
    pub data: PathBuf,
    pub agents_file: Option<PathBuf>,
    pub body_limit: usize,
    /// Create the example agent and the console desk when the store has no agents.
    pub example_agent: bool,
    pub rate_limits: RateLimitConfig,
    /// The hub's public URL for media links; `None`: the host a webhook reached.
    pub public_url: Option<String>,
    /// Check every agent's desk at start and every 10 minutes (the service status).
    pub desk_probe: bool,
    /// Which hosts the agents' endpoints may be; with `PublicOnly` agents that name a
    /// private address are refused at start and no example agent (its desk is this hub).
    pub targets: Targets,
    /// The console's operator key; `None`: the stored one, created on first start.
    pub console_key: Option<String>,
}

impl ServeOptions {
    /// On a free loopback port, default limits, no example agent, no agents file, the
    /// desk probe on and any outbound target allowed (every local endpoint is loopback):
    /// what tests and benchmarks start from, changing only what they are about.
    pub fn loopback(data: PathBuf) -> Self {
        ServeOptions {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            data,
            agents_file: None,
            body_limit: 64 * 1024,
            example_agent: false,
            rate_limits: RateLimitConfig::default(),
            public_url: None,
            desk_probe: true,
            targets: Targets::Any,
            console_key: None,
        }
    }
}

/// A running server (tests start it in-process; `main` runs it until Ctrl-C).
pub struct Running {
    pub addr: SocketAddr,
    pub ports: Ports,
    pub db: Arc<Db>,
    /// Token of the example agent when this start created it (shown once).
    pub example_token: Option<String>,
    /// The console's operator key, and whether this start created it (then shown once).
    pub console_key: (String, bool),
    shutdown: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The conversation workers' runtime: it ends when the server is dropped.
    _workers: WorkerRuntime,
}

impl Running {
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

/// The runtime the conversation workers run on, apart from the one serving HTTP. On one
/// runtime an ingress request waited in the same run queue as the workers' steps (each
/// with its SQLite reads on the runtime's threads); on two, the OS shares the cores between
/// acknowledging and working. At 2,000 events/s on two cores this took the ack's median p50
/// from 9.4 to 3.0 ms and its p99 from 47 to 22 ms (BENCHMARKS.md).
struct WorkerRuntime(Option<tokio::runtime::Runtime>);

impl WorkerRuntime {
    fn start() -> anyhow::Result<(WorkerRuntime, tokio::runtime::Handle)> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(WORKER_THREADS)
            .enable_all()
            .build()
            .map_err(|e| anyhow::anyhow!("cannot start the conversation workers: {e}"))?;
        let handle = rt.handle().clone();
        Ok((WorkerRuntime(Some(rt)), handle))
    }
}

impl Drop for WorkerRuntime {
    /// Without waiting (a runtime may not block inside another): a step cut off here is
    /// one a crash could cut off too, and its event is still queued or its effects pending.
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Name of the conversation workers' threads.
pub const WORKER_THREADS: &str = "baton-worker";

/// Per-request timeout of calls to desks, tickets and other providers.
const OUTBOUND_TIMEOUT: Duration = Duration::from_secs(15);

/// Concurrent conversations being worked on at once.
const WORKERS: usize = 64;

/// Events are applied at ingress only while fewer conversations than this are being
/// worked on (see [`Dispatcher::apply_if_idle`]).
const APPLY_AT_INGRESS_BELOW: usize = 8;

pub async fn start(opts: ServeOptions, clock: Arc<dyn Clock>) -> anyhow::Result<Running> {
    if let Some(dir) = opts.data.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    let db = Db::open(&opts.data)?;
    let queue = Arc::new(EmbeddedQueue::new(db.clone()));
    let timers = Arc::new(EmbeddedTimers::new(db.clone()));
    let listener = TcpListener::bind(opts.addr).await?;
    let addr = listener.local_addr()?;

    let secret = db.get_or_insert_setting("widget_token_secret", baton_runtime::auth::generate_token).await?;
    let (live, _) = broadcast::channel(4096);
    let log: Arc<dyn MessageLog> = db.clone();
    let connectors = Connectors::new(
        OUTBOUND_TIMEOUT,
        opts.targets,
        db.clone(),
        clock.clone(),
        log.clone(),
        Arc::new(baton_runtime::widget::LiveStreams(live.clone())),
    );
    let ports = Ports {
        store: db.clone(),
        queue: queue.clone(),
        timers: timers.clone(),
        clock: clock.clone(),
        brain: Arc::new(Brains::new(connectors.http.clone(), db.clone(), clock.clone())),
        channels: connectors.channels.clone(),
        desk: connectors.desk.clone(),
        fallback: connectors.fallback.clone(),
        secrets: Arc::new(baton_runtime::PlainSecrets),
        kv: db.clone(),
        alerts: Default::default(),
        targets: opts.targets,
        // The dispatcher runs one task per conversation.
        drain_lease: None,
    };

    if let Some(file) = &opts.agents_file {
        let agents = crate::config::load_file(file)?;
        if opts.targets == Targets::PublicOnly {
            crate::config::refuse_private_targets(&agents)?;
        }
        for a in &agents {
            db.put_agent(a).await?;
        }
    }
    let console_store = ConsoleStore::new(db.clone());
    let hub_base = format!("http://{addr}");
    let example_token = if opts.example_agent && opts.targets == Targets::Any {
        demo::ensure_example_agent(&db, &console_store, &hub_base, clock.now()).await?
    } else {
        None
    };

    // Polling has no request to take a host from: links point at the public URL or here.
    let media_files = baton_runtime::media::MediaFiles {
        links: baton_runtime::media::MediaLinks::new(secret.as_bytes(), opts.public_url.clone()),
        fetcher: connectors.media.clone(),
    };
    let poll_link_base = media_files.links.public_base().map(str::to_string).unwrap_or_else(|| hub_base.clone());
    let (workers, on_workers) = WorkerRuntime::start()?;
    let dispatcher = Dispatcher::new(ports.clone(), queue.clone(), on_workers);
    // The routes apply an event whose conversation is idle at once (`ApplyWhenIdle`).
    let ingress = Ports { queue: Arc::new(ApplyWhenIdle(dispatcher.clone())), ..ports.clone() };
    let state = AppState {
        ports: ingress,
        log,
        live,
        signer: TokenSigner::new(secret.as_bytes()),
        limits: Arc::new(Limits::new(opts.rate_limits)),
        body_limit: opts.body_limit,
        salesiq: connectors.salesiq.clone(),
        intercom: connectors.intercom.clone(),
        livechat: connectors.livechat.clone(),
        media: Arc::new(media_files.clone()),
        http: connectors.http.clone(),
    };
    let console_state =
        console::ConsoleState::new(console_store, db.clone(), hub_base, ports.alerts.clone(), clock.clone());
    let console_key = crate::console_login::ensure_key(&db, opts.console_key.clone()).await?;
    let login = crate::console_login::OperatorLogin::new(console_key.0.clone(), clock.clone());
    let app = baton_runtime::http::router(state).merge(assets::routes()).merge(console::routes(
        console_state,
        login,
        opts.body_limit,
    ));

    let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();

    // Work that was accepted before a crash or restart.
    for key in queue.conversations_with_events(usize::MAX).await? {
        dispatcher.wake(key);
    }
    let mut rx = queue.subscribe();
    let d = dispatcher.clone();
    let mut stop = shutdown_rx.clone();
    tasks.push(tokio::spawn(async move {
        loop {
            tokio::select! {
                k = rx.recv() => match k { Some(k) => d.wake(k), None => break },
                _ = stop.changed() => break,
            }
        }
    }));
    tasks.push(tokio::spawn(timer_loop(timers.clone(), clock.clone(), shutdown_rx.clone())));
    tasks.push(tokio::spawn(retry_loop(db.clone(), dispatcher.clone(), clock.clone(), shutdown_rx.clone())));
    housekeep(&db, clock.now()).await;
    tasks.push(tokio::spawn(housekeeping_loop(db.clone(), clock.clone(), shutdown_rx.clone())));
    if opts.desk_probe {
        tasks.push(tokio::spawn(probe_loop(ports.clone(), shutdown_rx.clone())));
    }
    tasks.push(tokio::spawn(crate::telegram_poll::supervise(
        ports.clone(),
        connectors.telegram.clone(),
        (media_files.links.clone(), poll_link_base),
        shutdown_rx.clone(),
    )));

    let mut stop = shutdown_rx.clone();
    let server = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).with_graceful_shutdown(
        async move {
            let _ = stop.changed().await;
        },
    );
    tasks.push(tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "http server stopped");
        }
    }));
    tracing::info!(%addr, data = %opts.data.display(), "baton is serving");
    Ok(Running { addr, ports, db, example_token, console_key, shutdown, tasks, _workers: workers })
}

/// Fires due timers into the queue. Sleeps until the next due timer, at most 200 ms, so a
/// timer fires well within a second of its due time; a newly armed timer wakes it early.
async fn timer_loop(timers: Arc<EmbeddedTimers>, clock: Arc<dyn Clock>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let changed = timers.changed();
    loop {
        if let Err(e) = timers.fire_due(clock.now()).await {
            tracing::error!(error = %e, "firing timers failed");
        }
        let wait = match timers.next_due().await.ok().flatten() {
            Some(due) => Duration::from_millis((due.0 - clock.now().0).clamp(0, 200) as u64),
            None => Duration::from_millis(200),
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = changed.notified() => {}
            _ = stop.changed() => return,
        }
    }
}

/// Wakes conversations whose deferred effects are due again (also after a restart).
async fn retry_loop(
    db: Arc<Db>,
    d: Arc<Dispatcher>,
    clock: Arc<dyn Clock>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        match db.conversations_with_due_effects(clock.now(), 1000).await {
            Ok(keys) => keys.into_iter().for_each(|k| d.wake(k)),
            Err(e) => tracing::error!(error = %e, "outbox sweep failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Delete conversations past their agent's retention and seen event ids past their eight
/// days. Runs before `start` returns, then every hour.
async fn housekeep(db: &Db, now: baton_core::Millis) {
    const BATCH: usize = 500;
    // Batches keep each write transaction short; another one only when this one was full.
    loop {
        match db.purge_expired(now, BATCH).await {
            Ok(n) => {
                if n > 0 {
                    tracing::info!(conversations = n, "deleted conversations past their retention");
                }
                if n < BATCH {
                    break;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "retention purge failed");
                break;
            }
        }
    }
    if let Err(e) = db.prune_seen(now).await {
        tracing::error!(error = %e, "pruning seen event ids failed");
    }
}

async fn housekeeping_loop(db: Arc<Db>, clock: Arc<dyn Clock>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = stop.changed() => return,
        }
        housekeep(&db, clock.now()).await;
    }
}

/// Re-checks every agent's desk credentials at start and every 10 minutes (seed 004's
/// service status); a desk that becomes unavailable raises an alert.
async fn probe_loop(ports: Ports, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        if let Ok(agents) = ports.store.list_agents().await {
            for agent in agents {
                let (status, detail) =
                    match baton_runtime::worker::refused_endpoint(&ports, &agent, baton_runtime::worker::DESK_FIELDS) {
                        Some(why) => (ServiceStatus::Unavailable, why),
                        None => ports.desk.probe(&agent).await,
                    };
                let before = ports.store.desk_status(&agent.id).await.ok().flatten().map(|r| r.status);
                if status == ServiceStatus::Unavailable && before != Some(ServiceStatus::Unavailable) {
                    ports.alerts.raise(format!("agent {}: the desk is unavailable: {detail}", agent.id));
                }
                let rec = baton_core::ports::DeskStatusRecord { status, detail, checked_at: ports.clock.now() };
                if let Err(e) = ports.store.set_desk_status(&agent.id, &rec).await {
                    tracing::warn!(agent = %agent.id, error = %e, "could not store desk status");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(600)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// The routes' event queue in `baton serve`: a single event whose conversation is idle is
/// applied at once and acknowledged after that commit, so it is never written to the queue,
/// read back and deleted (one fsync'd write per event instead of two before its effects
/// run); everything else is queued (see [`Dispatcher::apply_if_idle`]).
struct ApplyWhenIdle(Arc<Dispatcher>);

#[async_trait::async_trait]
impl EventQueue for ApplyWhenIdle {
    async fn enqueue(&self, events: Vec<Event>) -> Result<(), QueueError> {
        if events.len() == 1 && self.0.apply_if_idle(&events[0]).await {
            return Ok(());
        }
        self.0.queue.enqueue(events).await
    }
}

/// Starts the task of a conversation claimed at ingress when the claim's holder is done
/// with it, or dropped.
struct Handover {
    dispatcher: Arc<Dispatcher>,
    key: Option<ConversationKey>,
}

impl Drop for Handover {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let me = self.dispatcher.clone();
            self.dispatcher.runtime.spawn(async move { me.run(key).await });
        }
    }
}

/// Runs each conversation's queued events strictly in order, one task per busy
/// conversation, many conversations in parallel.
pub struct Dispatcher {
    ports: Ports,
    queue: Arc<EmbeddedQueue>,
    /// Busy conversations; `true` asks the running task to look again before it exits.
    busy: Mutex<HashMap<ConversationKey, bool>>,
    slots: Semaphore,
    /// Where conversation tasks run (see [`WorkerRuntime`]).
    runtime: tokio::runtime::Handle,
}

impl Dispatcher {
    fn new(ports: Ports, queue: Arc<EmbeddedQueue>, runtime: tokio::runtime::Handle) -> Arc<Self> {
        let busy = Mutex::new(HashMap::new());
        Arc::new(Dispatcher { ports, queue, busy, slots: Semaphore::new(WORKERS), runtime })
    }

    pub fn wake(self: &Arc<Self>, key: ConversationKey) {
        {
            let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(again) = busy.get_mut(&key) {
                *again = true;
                return;
            }
            busy.insert(key.clone(), false);
        }
        let me = self.clone();
        self.runtime.spawn(async move { me.run(key).await });
    }

    /// Apply `event` now, on the caller's task, when its conversation is idle: no task is
    /// at work on it and none of its events is queued (they would go first); true once its
    /// commit (or its finding that it is a duplicate) is durable. A conversation task then
    /// runs its effects. False: the caller queues it (the conversation is busy, the hub is
    /// busy, or the step failed).
    ///
    /// Only at light load (fewer than `APPLY_AT_INGRESS_BELOW` conversations at work): near
    /// the machine's limit, steps at ingress compete with the workers' for the cores and the
    /// database, and in minute-long runs at 3,000 events/s the hub relayed less with them
    /// (BENCHMARKS.md); a queued event costs a small insert there.
    pub async fn apply_if_idle(self: &Arc<Self>, event: &Event) -> bool {
        {
            let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
            if busy.len() >= APPLY_AT_INGRESS_BELOW || busy.contains_key(&event.conversation) {
                return false;
            }
            busy.insert(event.conversation.clone(), false);
        }
        // Claimed: a conversation task takes over when this ends, even if the request is
        // dropped half-way (it runs the effects and gives the claim back).
        let _handover = Handover { dispatcher: self.clone(), key: Some(event.conversation.clone()) };
        self.apply_unqueued(event).await
    }

    async fn apply_unqueued(&self, event: &Event) -> bool {
        let key = &event.conversation;
        match self.queue.head(key).await {
            Ok(None) => {}
            Ok(Some(_)) => return false,
            Err(e) => {
                tracing::warn!(conversation = %key, error = %e, "reading the queue failed; the event is queued");
                return false;
            }
        }
        match apply_event(&self.ports, event).await {
            Ok(outcome) => {
                tracing::debug!(conversation = %key, event = %event.id, ?outcome, "event applied at ingress");
                true
            }
            Err(e) => {
                tracing::warn!(conversation = %key, event = %event.id, error = %e, "event not applied at ingress; it is queued");
                false
            }
        }
    }

    async fn run(self: Arc<Self>, key: ConversationKey) {
        let Ok(_slot) = self.slots.acquire().await else { return };
        loop {
            let retry = self.work(&key).await;
            let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
            if busy.get(&key) == Some(&true) {
                busy.insert(key.clone(), false);
                continue;
            }
            busy.remove(&key);
            drop(busy);
            if let Some(delay) = retry {
                let me = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    me.wake(key);
                });
            }
            return;
        }
    }

    /// Apply the first of `events`, the conversation's oldest queued ones, or as many as can
    /// be stepped together (a backlog: one commit for them all, `apply_events_after`).
    /// Returns how many it applied.
    async fn apply(
        &self,
        key: &ConversationKey,
        events: &[Event],
        after: After,
    ) -> Result<(usize, Applied), WorkerError> {
        let after = if events.len() > 1 && self.ports.store.commits_batches() {
            match apply_events_after(&self.ports, key, events, after).await? {
                Some(applied) => return Ok(applied),
                // Refused (the completions are written): the first event alone finds out why.
                None => After { keep: true, ..After::default() },
            }
        } else {
            after
        };
        Ok((1, apply_event_after(&self.ports, &events[0], after).await?))
    }

    /// Apply every queued event of the conversation, running the effects of each commit
    /// (one event, or a backlog stepped together: [`Dispatcher::apply`]) after it. Returns
    /// when to look again (a failure or a deferred effect), if ever.
    ///
    /// The task alone runs the conversation, so it need not read back what it wrote: the
    /// last effect's completion rides in the next event's commit (`carried`); the session as
    /// committed is the next step's (`last`); and once a drain left nothing behind, the next
    /// commit's effects are all the outbox holds and run without reading it (`clean`: the
    /// version of the commit that drain followed; a commit that is not the next version
    /// means someone else wrote, and the outbox is read).
    async fn work(&self, key: &ConversationKey) -> Option<Duration> {
        let mut carried: Vec<Completion> = Vec::new();
        let mut last: Option<VersionedSession> = None;
        let mut clean: Option<u64> = None;
        let retry = loop {
            let events = match self.queue.heads(key, MAX_BATCH).await {
                Ok(events) if events.is_empty() => break None,
                Ok(events) => events,
                Err(e) => {
                    tracing::error!(conversation = %key, error = %e, "reading the queue failed");
                    break Some(Duration::from_secs(1));
                }
            };
            let event = &events[0];
            let after = After { done: carried.clone(), session: last.take(), keep: true };
            let (committed, agent, version) = match self.apply(key, &events, after).await {
                Ok((n, Applied { processed, committed, session, agent })) => {
                    carried.clear();
                    let version = session.as_ref().map(|s| s.version);
                    last = session;
                    tracing::debug!(conversation = %key, event = %event.id, events = n, outcome = ?processed, "events processed");
                    // A committed event left the queue in its commit; the others leave here.
                    let in_commit = matches!(processed, Processed::Applied { .. } | Processed::Ignored(_));
                    if !in_commit {
                        if let Err(e) = self.queue.ack(key, &event.id).await {
                            tracing::error!(conversation = %key, error = %e, "acknowledging an event failed");
                            break Some(Duration::from_secs(1));
                        }
                    }
                    (committed, agent, version)
                }
                Err(e) => {
                    tracing::error!(conversation = %key, event = %event.id, error = %e, "event failed; will retry");
                    break Some(Duration::from_secs(1));
                }
            };
            let follows_clean = matches!((clean, version), (Some(c), Some(v)) if c.checked_add(1) == Some(v));
            let items = if follows_clean {
                let at = self.ports.clock.now();
                committed.into_iter().map(|effect| OutboxItem { effect, attempts: 0, next_attempt_at: at }).collect()
            } else {
                match self.ports.store.pending_effects(key).await {
                    Ok(items) => items,
                    Err(e) => {
                        tracing::error!(conversation = %key, error = %e, "reading the outbox failed");
                        break Some(Duration::from_secs(1));
                    }
                }
            };
            match drain_items(&self.ports, key, items, agent).await {
                Ok((drained, unwritten)) => {
                    carried.extend(unwritten);
                    clean = version.filter(|_| drained.left_nothing());
                    if !drained.left_nothing() {
                        // An effect's result may have stepped the conversation on.
                        last = None;
                    }
                }
                Err(e) => {
                    tracing::error!(conversation = %key, error = %e, "running effects failed");
                    break Some(Duration::from_secs(1));
                }
            }
        };
        // Completing is idempotent: after a failed commit this may write what it wrote.
        if let Err(e) = self.ports.store.complete_effects(key, carried).await {
            tracing::error!(conversation = %key, error = %e, "completing an effect failed; it runs again");
            return Some(Duration::from_secs(1));
        }
        if retry.is_some() || clean.is_some() {
            return retry;
        }
        match drain_outbox(&self.ports, key).await {
            Ok(d) => d.next_due.map(|due| Duration::from_millis((due.0 - self.ports.clock.now().0).max(0) as u64)),
            Err(e) => {
                tracing::error!(conversation = %key, error = %e, "running effects failed");
                Some(Duration::from_secs(1))
            }
        }
    }
}
