//! `baton-bench`: measurements of `baton serve` on this machine, printed as medians and
//! percentiles with the parameters used, so a figure can be reproduced.
//!
//! `baton-bench timers`: how late wait and session timeouts fire. N widget conversations
//! are handed to a fake desk at once; half get a human reply (arming the session timeout),
//! half wait for nobody (the wait timeout). The delay of each timeout is the time the hub
//! delivered the resulting message to the user minus the timer's due time, both stamped
//! by the hub's clock, so the measurement adds no load of its own while timers fire.
//!
//! `baton-bench kill` and `baton-bench outage`: fault injection (see `faults`).

mod faults;
mod floor;
mod server;
mod soak;

use baton::serve::{start, ServeOptions};
use baton_core::agent::{Agent, BrainConfig, DeskConfig, Policy, TelegramConfig};
use baton_core::model::Secret;
use baton_core::ports::Clock;
use baton_core::{Channel, ConversationKey};
use baton_tests::desk::FakeDesk;
use baton_tests::scale::{self, Plan};
use baton_tests::telegram::FakeTelegram;
use baton_tests::widget::WidgetClient;
use clap::{Parser, Subcommand};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Ingress latency, end-to-end latency and sustained throughput of the widget route:
    /// users already talking to a human send messages that the hub relays to a fake desk.
    Load {
        #[arg(long, default_value_t = 100)]
        users: usize,
        #[arg(long, default_value_t = 50)]
        messages: usize,
        /// Requests in flight at once (with --rate: at most, a request waits for a slot).
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Open loop: start requests at this many per second, whatever the answers do, and
        /// measure each latency from its scheduled start (no coordinated omission). Without
        /// it, `concurrency` requests are kept in flight back to back (closed loop).
        #[arg(long)]
        rate: Option<f64>,
        /// What answers: `baton serve`, or one of the floors that do less (`floor.rs`), to
        /// read the hub's figures against what the machine gives any server of the kind.
        #[arg(long, value_enum, default_value_t = floor::Target::Hub)]
        target: floor::Target,
    },
    /// Duplicates and reordering at scale: Telegram chats whose every update is delivered
    /// `copies` times at once plus a late copy after the chat's next update. Prints what was
    /// delivered and whether every chat got exactly its answers, once each, in order.
    Duplicates {
        #[arg(long, default_value_t = 1000)]
        conversations: usize,
        /// Updates per chat (at most 10).
        #[arg(long, default_value_t = 10)]
        events: usize,
        #[arg(long, default_value_t = 3)]
        copies: usize,
        /// Chats delivering at the same time.
        #[arg(long, default_value_t = 200)]
        concurrency: usize,
    },
    /// Steady mixed traffic against a separate `baton serve` process, sampling its memory,
    /// file descriptors, threads and ack latency (build it first: cargo build --release -p baton).
    Soak {
        #[arg(long, default_value_t = 30.0)]
        minutes: f64,
        #[arg(long, default_value_t = 60)]
        conversations_per_minute: usize,
        /// Seconds between samples.
        #[arg(long, default_value_t = 60)]
        interval: u64,
        /// The `baton` binary to run.
        #[arg(long, default_value = "target/release/baton")]
        baton: std::path::PathBuf,
    },
    /// Crash safety under load: widget users ask the FAQ bot, are handed to a fake desk and
    /// write to it while a separate `baton serve` process is SIGKILLed and restarted `kills`
    /// times. Prints restart times and whether every answer and every desk message arrived
    /// exactly once, in order (build it first: cargo build -p baton).
    Kill {
        #[arg(long, default_value_t = 1000)]
        users: usize,
        #[arg(long, default_value_t = 10)]
        kills: usize,
        /// Users running at the same time.
        #[arg(long, default_value_t = 200)]
        concurrency: usize,
        /// Seed of the random kill points (printed when not given).
        #[arg(long)]
        seed: Option<u64>,
        /// The `baton` binary to run.
        #[arg(long, default_value = "target/release/baton")]
        baton: std::path::PathBuf,
    },
    /// Desk outage: users handed to a fake desk keep writing while the desk answers 503 to
    /// everything for `minutes`; prints how fast the backlog reaches the desk after it
    /// recovers and whether every message arrived exactly once, in order.
    Outage {
        #[arg(long, default_value_t = 100)]
        users: usize,
        #[arg(long, default_value_t = 5.0)]
        minutes: f64,
        /// Seconds between two messages of one user during the outage.
        #[arg(long, default_value_t = 10)]
        interval: u64,
        /// The `baton` binary to run.
        #[arg(long, default_value = "target/release/baton")]
        baton: std::path::PathBuf,
    },
    /// Firing delay of wait and session timeouts after their due time.
    Timers {
        #[arg(long, default_value_t = 200)]
        conversations: usize,
        /// Wait and session timeout, in seconds.
        #[arg(long, default_value_t = 2)]
        timeout_secs: u64,
    },
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn report(name: &str, mut delays: Vec<i64>) {
    delays.sort_unstable();
    println!(
        "{name}: n={} p50={} ms p90={} ms p99={} ms max={} ms",
        delays.len(),
        percentile(&delays, 0.5),
        percentile(&delays, 0.9),
        percentile(&delays, 0.99),
        delays.last().copied().unwrap_or(0)
    );
}

/// The same allocator as `baton serve` (cli/src/main.rs): the hub runs in this process.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    match Cli::parse().command {
        Command::Timers { conversations, timeout_secs } => timers(conversations, timeout_secs).await,
        Command::Load { users, messages, concurrency, rate, target } => {
            load(users, messages, concurrency, rate, target).await
        }
        Command::Soak { minutes, conversations_per_minute, interval, baton } => {
            soak::soak(&baton, minutes, conversations_per_minute, interval).await
        }
        Command::Duplicates { conversations, events, copies, concurrency } => {
            duplicates(Plan { conversations, events, copies, concurrency }).await
        }
        Command::Kill { users, kills, concurrency, seed, baton } => {
            faults::kill(&baton, faults::KillPlan { users, kills, concurrency, seed }).await
        }
        Command::Outage { users, minutes, interval, baton } => faults::outage(&baton, users, minutes, interval).await,
    }
}

async fn duplicates(plan: Plan) {
    const BOT_TOKEN: &str = "4242:bench-bot-token";
    const SECRET: &str = "bench-hook-secret";
    let tg = FakeTelegram::start(BOT_TOKEN).await;
    let (running, _desk, base, _token, _dir) = hub(Policy::default(), FakeDesk::start(None).await).await;
    let mut agent = running.ports.store.get_agent("bench").await.expect("store").expect("agent");
    agent.channels.telegram = Some(TelegramConfig {
        bot_token: Secret(BOT_TOKEN.into()),
        secret_token: Secret(SECRET.into()),
        api_base: tg.url(),
        poll: false,
    });
    agent.brain = BrainConfig::Faq { faq: scale::faq(), min_score: 1.0 };
    running.ports.store.put_agent(&agent).await.expect("agent stored");
    println!(
        "duplicates: {} chats x {} updates, each delivered {} times at once plus once late; {} chats at a time; \
         embedded SQLite (synchronous=FULL)",
        plan.conversations, plan.events, plan.copies, plan.concurrency
    );
    let delivered = scale::deliver(&format!("{base}/channels/telegram/bench"), SECRET, plan).await;
    println!(
        "delivered: {} requests in {:.1} s, {} acknowledged, {} refused",
        delivered.requests,
        delivered.elapsed.as_secs_f64(),
        delivered.acknowledged,
        delivered.refused
    );
    let expected = plan.conversations * plan.events;
    let started = Instant::now();
    while tg.sent_messages().len() < expected && started.elapsed() < Duration::from_secs(600) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Anything doubled would arrive shortly after the last expected answer.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let verdict = scale::verdict(&tg.sent_messages(), plan);
    println!(
        "answers: {} of {} expected; chats with exactly their answers in order: {} of {}",
        verdict.answers, verdict.expected, verdict.chats_exact, plan.conversations
    );
    for w in &verdict.wrong {
        println!("  wrong: {w}");
    }
    running.stop().await;
    if !verdict.ok() {
        std::process::exit(1);
    }
}

/// `baton serve` in-process on loopback with a fake desk and one agent; returns the pieces.
async fn hub(policy: Policy, desk: FakeDesk) -> (baton::serve::Running, FakeDesk, String, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let opts = ServeOptions {
        // Every simulated user comes from 127.0.0.1 and writes fast.
        rate_limits: baton_runtime::http::RateLimitConfig {
            per_ip_per_sec: 1e6,
            per_ip_burst: 1_000_000,
            per_conversation_per_sec: 1e6,
            per_conversation_burst: 1_000_000,
            ..Default::default()
        },
        ..ServeOptions::loopback(dir.path().join("bench.sqlite"))
    };
    let clock: Arc<dyn Clock> = Arc::new(baton_runtime::clock::SystemClock);
    let running = start(opts, clock).await.expect("server starts");
    let mut agent: Agent = baton::demo::example_agent(&desk.url(), "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    agent.id = "bench".into();
    agent.desk = DeskConfig::Webhook { url: desk.url(), username: None, password: None, signing_secret: None };
    agent.policy = policy;
    running.ports.store.put_agent(&agent).await.expect("agent stored");
    let token = baton_runtime::auth::generate_token();
    running
        .ports
        .store
        .add_token("bench", &baton_runtime::auth::hash_token(&token), baton_core::Millis(0))
        .await
        .expect("token");
    let base = format!("http://{}", running.addr);
    (running, desk, base, token, dir)
}

/// Hand `n` widget users to the desk and let a human answer those `answer` picks, so their
/// next messages are relayed to the desk (and their session timeout runs).
async fn handed_off(
    base: &str,
    desk: &FakeDesk,
    token: &str,
    n: usize,
    answer: impl Fn(usize) -> bool,
) -> Vec<WidgetClient> {
    let mut clients = Vec::new();
    for i in 0..n {
        let w = WidgetClient::start(base, "bench", Some(&format!("u{i}@example.com"))).await;
        w.send("human").await;
        clients.push(w);
    }
    let started = Instant::now();
    let establishes = loop {
        let e = desk.requests_to("/conversation/establish");
        if e.len() >= n || started.elapsed() > Duration::from_secs(60) {
            break e;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let http = reqwest::Client::new();
    for (i, e) in establishes.iter().enumerate().filter(|(i, _)| answer(*i)) {
        let conv = e.body["conversation_id"].as_str().unwrap_or_default();
        let body = serde_json::json!({"conversation_id": conv, "timestamp": i, "body": "hello"});
        let url = format!("{base}/desks/webhook/bench/v1/human/message/receive");
        let _ = http.post(url).bearer_auth(token).json(&body).send().await;
    }
    clients
}

async fn load(users: usize, messages: usize, concurrency: usize, rate: Option<f64>, target: floor::Target) {
    let policy = Policy { wait_timeout_secs: 3600, session_timeout_secs: 3600, ..Policy::default() };
    // The load generator and the fake desk run on a runtime of their own (threads named
    // `bench-load`), so the hub's own CPU per event can be told from theirs.
    let load_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(LOAD_THREADS)
        .enable_all()
        .build()
        .expect("load runtime");
    let mut desk = load_rt.spawn(FakeDesk::start(None)).await.expect("desk");
    let (server, base, tokens) = match target {
        floor::Target::Hub => {
            let (running, desk_back, base, token, dir) = hub(policy, desk).await;
            desk = desk_back;
            let clients = handed_off(&base, &desk, &token, users, |_| true).await;
            // Wait until every conversation is with a human.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let tokens: Vec<String> = clients.iter().map(|w| w.token.clone()).collect();
            (Server::Hub(Box::new(running), dir), base, tokens)
        }
        lesser => {
            let floor = floor::start(lesser, &desk.url()).await;
            let base = floor.base.clone();
            // Any bearer token: the floors take it as the user's id.
            (Server::Floor(floor), base, (0..users).map(|u| format!("user-{u}")).collect())
        }
    };
    let db = server.db();
    let relays = matches!(target, floor::Target::Hub | floor::Target::Relay);
    let chats_before = desk.count_to("/chat");
    let total = users * messages;
    let mode = match rate {
        Some(r) => format!("open loop at {r:.0} requests/s (at most {concurrency} in flight)"),
        None => format!("closed loop, {concurrency} in flight"),
    };
    println!(
        "load: {users} users x {messages} messages = {total} events through POST /api/widget/.../messages, \
         {mode}; {}",
        target.describe()
    );
    let http = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build().expect("client");
    // Message m of every user before message m + 1 of any: each conversation's messages are
    // spread over the run.
    let jobs: Vec<Job> = (0..messages)
        .flat_map(|m| {
            tokens.iter().enumerate().map(move |(u, t)| Job {
                token: t.clone(),
                text: format!("u{u}-m{m}"),
                client_id: format!("c{u}x{m}"),
            })
        })
        .collect();
    let sent_at = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let url = Arc::new(format!("{base}/api/widget/bench/messages"));
    let (proc_before, writer_before) = (ProcCounters::read(), db.as_ref().map(|db| db.writer_stats()));
    let started = Instant::now();
    let request = Request { http, url, sent_at: sent_at.clone() };
    let (tasks, offered) = load_rt
        .spawn(async move {
            let slots = Arc::new(tokio::sync::Semaphore::new(concurrency));
            let mut tasks = Vec::with_capacity(total);
            for (i, job) in jobs.into_iter().enumerate() {
                let request = request.clone();
                match rate {
                    // Open loop: start on schedule, whatever the answers do; the latency runs
                    // from the scheduled time, so waiting for a slot counts. tokio's timer
                    // ticks in whole milliseconds, so a request leaves up to about 1 ms late
                    // even on an idle machine (the "before sending" line).
                    Some(r) => {
                        let at = started + Duration::from_secs_f64(i as f64 / r);
                        tokio::time::sleep_until(at.into()).await;
                        let slots = slots.clone();
                        tasks.push(tokio::spawn(async move {
                            let _slot = slots.acquire_owned().await.expect("slots");
                            request.send(job, Some(at)).await
                        }));
                    }
                    // Closed loop: start when one of `concurrency` slots frees.
                    None => {
                        let slot = slots.clone().acquire_owned().await.expect("slots");
                        tasks.push(tokio::spawn(async move {
                            let _slot = slot;
                            request.send(job, None).await
                        }));
                    }
                }
            }
            (tasks, started.elapsed())
        })
        .await
        .expect("load generator");
    let generated = load_rt.spawn(async move {
        let (mut acks, mut lags) = (Vec::new(), Vec::new());
        let mut refused = 0;
        for t in tasks {
            match t.await.expect("task") {
                Some((a, l)) => {
                    acks.push(a);
                    lags.push(l);
                }
                None => refused += 1,
            }
        }
        (acks, lags, refused, offered)
    });
    let (acks, lags, refused, offered) = generated.await.expect("load generator");
    let ingest = started.elapsed();
    // Every accepted message must reach the desk exactly once.
    // Poll a count (copying the desk's log would steal CPU from the hub), then read once.
    let deadline = Instant::now() + Duration::from_secs(120);
    let before = chats_before;
    while relays && desk.count_to("/chat") < before + acks.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let done = started.elapsed();
    let proc_after = ProcCounters::read();
    let db_writer = db.as_ref().zip(writer_before).map(|(db, before)| db.writer_stats().since(&before));
    let chats: Vec<_> = desk.requests_to("/chat").into_iter().skip(before).collect();
    let sent = sent_at.lock().expect("sent").clone();
    let mut e2e = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for c in &chats {
        let text = c.body["body"].as_str().unwrap_or_default().to_string();
        if let Some(t0) = sent.get(&text) {
            e2e.push(c.at.duration_since(*t0).as_micros() as i64);
        }
        seen.insert(text);
    }
    let lost = if relays { sent.keys().filter(|k| !seen.contains(*k)).count() } else { 0 };
    let doubled = chats.len() - seen.len();
    println!("accepted {} of {total} (refused {refused}), lost {lost}, delivered twice {doubled}", acks.len());
    if rate.is_some() {
        println!(
            "offered: {:.0} requests/s ({total} started in {:.2} s)",
            total as f64 / offered.as_secs_f64(),
            offered.as_secs_f64()
        );
    }
    let relayed = if relays {
        format!(
            "; processed end to end: {:.0} events/s ({:.2} s); last desk delivery {:.2} s after the last acknowledgement",
            chats.len() as f64 / done.as_secs_f64(),
            done.as_secs_f64(),
            chats.last().map_or(0.0, |c| c.at.duration_since(started + ingest).as_secs_f64()),
        )
    } else {
        String::new()
    };
    println!(
        "ingest: {:.0} events/s acknowledged ({} in {:.2} s){relayed}",
        acks.len() as f64 / ingest.as_secs_f64(),
        acks.len(),
        ingest.as_secs_f64(),
    );
    let events = acks.len().max(1) as f64;
    let spread = rate.map(|r| slowest_spread(&acks, r));
    report_us("ingress ack latency (202)", acks);
    if let Some(spread) = spread {
        println!("{spread}");
    }
    if rate.is_some() {
        report_us("of which before sending (the load generator behind its schedule)", lags);
    }
    if relays {
        report_us("user -> desk latency", e2e);
    }
    let server_name = if target == floor::Target::Hub { "the hub" } else { "the server" };
    if let (Some(b), Some(a)) = (proc_before, proc_after) {
        let us = |ticks: u64| ticks as f64 * 1e6 / ProcCounters::TICKS_PER_SEC / events;
        let (all, load) = (a.cpu_ticks - b.cpu_ticks, a.load_ticks.saturating_sub(b.load_ticks));
        let writer = a.writer_ticks.saturating_sub(b.writer_ticks);
        let checkpoints = a.checkpoint_ticks.saturating_sub(b.checkpoint_ticks);
        let store = match &db_writer {
            Some(w) => format!(
                " (its database writer thread {:.0} us, its checkpoint thread {:.0} us); {:.1} events per group commit",
                us(writer),
                us(checkpoints),
                events / w.commits.max(1) as f64
            ),
            None => String::new(),
        };
        println!(
            "per event, this process ({server_name}, load generator and desk): {:.1} KB in {:.1} write calls \
             (files and sockets, /proc/self/io); {:.0} us CPU, of which {server_name} {:.0} us and the load \
             generator and desk {:.0} us (their own threads){store}",
            (a.wchar - b.wchar) as f64 / 1024.0 / events,
            (a.syscw - b.syscw) as f64 / events,
            us(all),
            us(all.saturating_sub(load)),
            us(load),
        );
    }
    // Every write of the hub, an acknowledgement's included, waits for this one thread.
    if let Some(db_writer) = db_writer {
        let ms = |q: f64| {
            db_writer
                .wait_quantile(q)
                .map_or_else(|| "over 50".to_string(), |d| format!("{:.2}", d.as_secs_f64() * 1e3))
        };
        println!(
            "database writer: running groups {:.0}% of the {:.2} s (fsyncs and waits for a core included); \
             {} writes, each waiting for its commit p50 {} ms, p99 {} ms (to 0.25 ms); \
             {} checkpoints between groups (the WAL starting over), {:.2} ms each on average",
            100.0 * db_writer.busy.as_secs_f64() / done.as_secs_f64(),
            done.as_secs_f64(),
            db_writer.writes,
            ms(0.5),
            ms(0.99),
            db_writer.checkpoints,
            db_writer.checkpoint_time.as_secs_f64() * 1e3 / db_writer.checkpoints.max(1) as f64,
        );
    }
    server.stop().await;
    load_rt.shutdown_background();
}

/// One message of `load`: a user's token, the text, the widget's client id.
struct Job {
    token: String,
    text: String,
    client_id: String,
}

/// Sends the jobs of `load` and notes when each accepted text was scheduled (or sent).
#[derive(Clone)]
struct Request {
    http: reqwest::Client,
    url: Arc<String>,
    sent_at: Arc<std::sync::Mutex<std::collections::HashMap<String, Instant>>>,
}

impl Request {
    /// Send `job`: its ack latency and how late it left, both from `scheduled` (open loop;
    /// closed loop: from now), in µs; `None` if it was not accepted.
    async fn send(&self, job: Job, scheduled: Option<Instant>) -> Option<(i64, i64)> {
        let t0 = scheduled.unwrap_or_else(Instant::now);
        // How late the request leaves against its schedule (open loop): the part of its
        // latency spent in the load generator, before any byte is sent.
        let lag = t0.elapsed().as_micros() as i64;
        let r = self
            .http
            .post(self.url.as_str())
            .bearer_auth(&job.token)
            .json(&serde_json::json!({"text": job.text, "client_id": job.client_id}))
            .send()
            .await;
        match r {
            Ok(r) if r.status() == 202 => {
                self.sent_at.lock().expect("sent").insert(job.text, t0);
                Some((t0.elapsed().as_micros() as i64, lag))
            }
            _ => None,
        }
    }
}

/// Name of the threads that run the load generator and the fake desk.
const LOAD_THREADS: &str = "bench-load";

/// What `load` runs against: the hub (with its data directory) or a floor.
enum Server {
    Hub(Box<baton::serve::Running>, tempfile::TempDir),
    Floor(floor::Floor),
}

impl Server {
    fn db(&self) -> Option<Arc<baton_embedded::Db>> {
        match self {
            Server::Hub(running, _) => Some(running.db.clone()),
            Server::Floor(floor) => floor.db.clone(),
        }
    }

    async fn stop(self) {
        if let Server::Hub(running, _dir) = self {
            running.stop().await;
        }
    }
}

/// What the kernel counts for this process: bytes and calls of `write` (files and sockets
/// alike) and CPU time (user + system).
struct ProcCounters {
    wchar: u64,
    syscw: u64,
    cpu_ticks: u64,
    /// CPU time of the live threads named [`LOAD_THREADS`].
    load_ticks: u64,
    /// CPU time of the embedded store's writer thread.
    writer_ticks: u64,
    /// CPU time of the embedded store's checkpoint thread.
    checkpoint_ticks: u64,
}

impl ProcCounters {
    /// `/proc/self/stat` counts in clock ticks: 100 a second on Linux.
    const TICKS_PER_SEC: f64 = 100.0;

    fn read() -> Option<ProcCounters> {
        let io = std::fs::read_to_string("/proc/self/io").ok()?;
        let field =
            |name: &str| io.lines().find_map(|l| l.split_once(':').filter(|(n, _)| *n == name)?.1.trim().parse().ok());
        let cpu_ticks = Self::stat_ticks(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
        let (mut load_ticks, mut writer_ticks, mut checkpoint_ticks) = (0, 0, 0);
        for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            let ticks = || Self::stat_ticks(&std::fs::read_to_string(task.path().join("stat")).unwrap_or_default());
            if comm.trim_end().starts_with(LOAD_THREADS) {
                load_ticks += ticks().unwrap_or(0);
            } else if comm.trim_end() == baton_embedded::WRITER_THREAD {
                writer_ticks += ticks().unwrap_or(0);
            } else if comm.trim_end() == baton_embedded::CHECKPOINT_THREAD {
                checkpoint_ticks += ticks().unwrap_or(0);
            }
        }
        Some(ProcCounters {
            wchar: field("wchar")?,
            syscw: field("syscw")?,
            cpu_ticks,
            load_ticks,
            writer_ticks,
            checkpoint_ticks,
        })
    }

    /// utime + stime of a `stat` file (fields 14 and 15; those after the command name, which
    /// may hold spaces, start at the state, field 3).
    fn stat_ticks(stat: &str) -> Option<u64> {
        let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks = |i: usize| rest.get(i - 3)?.parse::<u64>().ok();
        Some(ticks(14)? + ticks(15)?)
    }
}

/// Where in the run the slowest 1% of `acks` (in the order scheduled, `rate` a second)
/// started: bunched into a few windows, they are stalls (a checkpoint, say) rather than
/// the load itself.
fn slowest_spread(acks: &[i64], rate: f64) -> String {
    let mut sorted = acks.to_vec();
    sorted.sort_unstable();
    let threshold = percentile(&sorted, 0.99);
    let mut windows: std::collections::HashMap<i64, usize> = std::collections::HashMap::new();
    for (i, _) in acks.iter().enumerate().filter(|(_, a)| **a >= threshold) {
        *windows.entry((i as f64 / rate * 10.0) as i64).or_default() += 1;
    }
    let run = (acks.len() as f64 / rate * 10.0).ceil() as i64;
    let busiest = windows.values().max().copied().unwrap_or(0);
    format!(
        "  slowest 1% (from {:.2} ms): started in {} of the run's {run} windows of 100 ms, at most {busiest} in one",
        threshold as f64 / 1000.0,
        windows.len()
    )
}

fn report_us(name: &str, mut v: Vec<i64>) {
    v.sort_unstable();
    let ms = |x: i64| x as f64 / 1000.0;
    println!(
        "{name}: n={} p50={:.2} ms p90={:.2} ms p99={:.2} ms max={:.2} ms",
        v.len(),
        ms(percentile(&v, 0.5)),
        ms(percentile(&v, 0.9)),
        ms(percentile(&v, 0.99)),
        ms(v.last().copied().unwrap_or(0))
    );
}

async fn timers(n: usize, timeout_secs: u64) {
    let policy = Policy {
        wait_timeout_secs: timeout_secs,
        wait_reply_timeout_secs: 3600,
        session_timeout_secs: timeout_secs,
        ..Policy::default()
    };
    let (running, desk, base, token, _dir) = hub(policy, FakeDesk::start(None).await).await;
    println!("timers: {n} conversations, timeouts of {timeout_secs} s, embedded SQLite (synchronous=FULL)");

    // Half of them get a human reply: their session timeout runs from that reply.
    let clients = handed_off(&base, &desk, &token, n, |i| i % 2 == 0).await;
    tokio::time::sleep(Duration::from_secs(timeout_secs + 3)).await;

    // Due times come from the conversation's trace (the armed timer), delivery times from
    // the message log; both are stamped by the hub's clock.
    let (mut wait, mut session) = (Vec::new(), Vec::new());
    for w in &clients {
        let key = ConversationKey::new("bench", Channel::Widget, &w.conversation_id).expect("key");
        let trace = running.ports.store.trace(&key).await.unwrap_or_default();
        let due_of = |kind: &str| {
            trace.iter().find_map(|t| {
                let d = t.detail.strip_prefix("schedule_timer: ")?;
                d.starts_with(kind).then(|| d.rsplit("due at ").next()?.trim().parse::<i64>().ok()).flatten()
            })
        };
        let messages = w.all().await;
        let at_of = |pred: &dyn Fn(&serde_json::Value) -> bool| {
            messages.iter().find(|m| pred(m)).and_then(|m| m["at"].as_i64())
        };
        if let (Some(due), Some(at)) =
            (due_of("Wait "), at_of(&|m| m["buttons"].as_array().is_some_and(|b| b.len() == 2)))
        {
            wait.push(at - due);
        }
        let ended = |m: &serde_json::Value| m["text"].as_str().unwrap_or("").contains("no reply for a while");
        if let (Some(due), Some(at)) = (due_of("Session "), at_of(&ended)) {
            session.push(at - due);
        }
    }
    report("wait timeout    fired after due", wait);
    report("session timeout fired after due", session);
    running.stop().await;
}
