//! `baton-bench soak`: steady mixed traffic against a separate `baton serve` process for a
//! number of minutes, sampling the server's memory (RSS), open file descriptors and threads
//! from /proc, its live tokio tasks (the console's status), and the acknowledgement latency
//! of the widget route, once per interval. Each
//! conversation of the traffic: an FAQ question and its answer, a handoff to a fake desk, a
//! human reply, the user's reply relayed to the desk, the user ending the chat.

use crate::server::Server;
use baton_tests::desk::FakeDesk;
use baton_tests::widget::WidgetClient;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// The operator key the server is started with, to read the console's status.
const CONSOLE_KEY: &str = "soak-operator-key-0123456789";

/// One sample of the server process.
struct Sample {
    minute: f64,
    rss_kb: u64,
    fds: usize,
    threads: u64,
    tasks: u64,
    conversations: usize,
    p50_ms: f64,
    p99_ms: f64,
}

fn proc_status(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field).map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0)))
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Live tokio tasks of the server (0 when the status cannot be read).
async fn live_tasks(http: &reqwest::Client, base: &str, cookie: &str) -> u64 {
    let status: serde_json::Value =
        match http.get(format!("{base}/console/api/status")).header("cookie", cookie).send().await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => return 0,
        };
    status["runtime"]["tasks"].as_u64().unwrap_or(0)
}

fn agents_toml(desk_url: &str) -> String {
    format!(
        r#"[[agent]]
id = "soak"
name = "Soak"
[agent.brain]
kind = "faq"
faq = [{{ question = "What are your opening hours?", answer = "We are open 9-17 on weekdays." }}]
[agent.desk]
kind = "webhook"
url = "{desk_url}"
signing_secret = "{SECRET}"
[agent.policy]
require_email = false
wait_timeout_secs = 3600
session_timeout_secs = 3600
"#
    )
}

/// Run `conversations_per_minute` conversations a minute for `minutes`, sampling every
/// `interval_secs`; `baton` is the path of the `baton` binary (a release build).
pub async fn soak(baton: &Path, minutes: f64, conversations_per_minute: usize, interval_secs: u64) {
    let desk = FakeDesk::start(Some(SECRET)).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(baton, dir.path(), &agents_toml(&desk.url()), &["--console-key", CONSOLE_KEY]).await;
    let (token, base) = (server.token.clone(), server.base());
    let pid = server.pid().expect("pid");
    let http = reqwest::Client::new();
    let cookie = baton_tests::console_cookie(&base, CONSOLE_KEY).await;
    println!(
        "soak: {minutes} min of {conversations_per_minute} conversations/min against `baton serve` (pid {pid}, \
         {}, embedded SQLite); each: FAQ answer, handoff, human reply, user reply, end",
        baton.display()
    );

    let acks: Arc<Mutex<Vec<i64>>> = Arc::default();
    let done = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let started_n = Arc::new(AtomicUsize::new(0));
    let run_until = Instant::now() + Duration::from_secs_f64(minutes * 60.0);
    let gap = Duration::from_secs_f64(60.0 / conversations_per_minute.max(1) as f64);
    let traffic = {
        let (acks, done, failed, base, token) =
            (acks.clone(), done.clone(), failed.clone(), base.clone(), token.clone());
        let started_n = started_n.clone();
        let desk_log = Arc::new(desk);
        tokio::spawn(async move {
            let mut n = 0usize;
            while Instant::now() < run_until {
                let (acks, done, failed, base, token, desk) =
                    (acks.clone(), done.clone(), failed.clone(), base.clone(), token.clone(), desk_log.clone());
                n += 1;
                started_n.store(n, Ordering::Relaxed);
                tokio::spawn(async move {
                    let ok =
                        tokio::time::timeout(Duration::from_secs(60), conversation(&base, &token, &desk, n, &acks))
                            .await
                            .unwrap_or(false);
                    if ok { &done } else { &failed }.fetch_add(1, Ordering::Relaxed);
                });
                tokio::time::sleep(gap).await;
            }
        })
    };

    let mut samples = Vec::new();
    let t0 = Instant::now();
    loop {
        let mut lat = std::mem::take(&mut *acks.lock().unwrap());
        lat.sort_unstable();
        samples.push(Sample {
            minute: t0.elapsed().as_secs_f64() / 60.0,
            rss_kb: proc_status(pid, "VmRSS:"),
            fds: open_fds(pid),
            threads: proc_status(pid, "Threads:"),
            tasks: live_tasks(&http, &base, &cookie).await,
            conversations: done.load(Ordering::Relaxed),
            p50_ms: crate::percentile(&lat, 0.5) as f64 / 1000.0,
            p99_ms: crate::percentile(&lat, 0.99) as f64 / 1000.0,
        });
        let s = samples.last().unwrap();
        println!(
            "  {:>5.1} min  RSS {:>7} kB  fds {:>4}  threads {:>3}  tasks {:>5}  conversations {:>6}  ack p50 {:>6.2} ms  p99 {:>6.2} ms",
            s.minute, s.rss_kb, s.fds, s.threads, s.tasks, s.conversations, s.p50_ms, s.p99_ms
        );
        if Instant::now() >= run_until {
            break;
        }
        tokio::time::sleep(Duration::from_secs(interval_secs)).await;
    }
    let _ = traffic.await;
    // Let the last conversations finish.
    tokio::time::sleep(Duration::from_secs(5)).await;
    server.stop().await;

    // Judge from the first sample after warm-up (a quarter of the run) to the last.
    let warm = &samples[samples.len() / 4];
    let last = samples.last().unwrap();
    let rss_growth = last.rss_kb as f64 / warm.rss_kb.max(1) as f64;
    println!(
        "conversations started: {}, completed: {}; from {:.1} min to the end: RSS x{:.2} ({} -> {} kB), \
         fds {} -> {}, threads {} -> {}, tasks {} -> {}, ack p99 {:.2} -> {:.2} ms",
        started_n.load(Ordering::Relaxed),
        done.load(Ordering::Relaxed),
        warm.minute,
        rss_growth,
        warm.rss_kb,
        last.rss_kb,
        warm.fds,
        last.fds,
        warm.threads,
        last.threads,
        warm.tasks,
        last.tasks,
        warm.p99_ms,
        last.p99_ms
    );
}

/// One conversation; true when every step happened.
async fn conversation(base: &str, token: &str, desk: &FakeDesk, n: usize, acks: &Mutex<Vec<i64>>) -> bool {
    let mut w = WidgetClient::start(base, "soak", Some(&format!("soak{n}@example.com"))).await;
    let timed = |acks: &Mutex<Vec<i64>>, t: Instant| acks.lock().unwrap().push(t.elapsed().as_micros() as i64);
    let t = Instant::now();
    w.send("What are your opening hours?").await;
    timed(acks, t);
    w.wait_for("the FAQ answer", |m| m["from"] == "bot").await;
    let t = Instant::now();
    w.send("I want to talk to a human").await;
    timed(acks, t);
    let email = format!("soak{n}@example.com");
    let mut conv = None;
    for _ in 0..200 {
        conv = desk
            .requests_to("/conversation/establish")
            .iter()
            .rev()
            .find(|r| r.body["email"] == email.as_str())
            .and_then(|r| r.body["conversation_id"].as_str().map(str::to_string));
        if conv.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let Some(conv) = conv else { return false };
    let body = serde_json::json!({"conversation_id": conv, "timestamp": 1, "body": "Hello, how can I help?"});
    let reply = reqwest::Client::new()
        .post(format!("{base}/desks/webhook/soak/v1/human/message/receive"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await;
    if !matches!(reply, Ok(r) if r.status() == 200) {
        return false;
    }
    w.wait_for("the human reply", |m| m["from"] == "human").await;
    let t = Instant::now();
    w.send("Thanks, that is all.").await;
    timed(acks, t);
    w.end().await;
    true
}
