//! `baton-bench`: measurements of `baton serve` on this machine, printed as medians and
//! percentiles with the parameters used, so a figure can be reproduced.
//!
//! `baton-bench timers`: how late wait and session timeouts fire. N widget conversations
//! are handed to a fake desk at once; half get a human reply (arming the session timeout),
//! half wait for nobody (the wait timeout). The delay of each timeout is the time the hub
//! delivered the resulting message to the user minus the timer's due time, both stamped
//! by the hub's clock, so the measurement adds no load of its own while timers fire.

use baton::serve::{start, ServeOptions};
use baton_core::agent::{Agent, DeskConfig, Policy};
use baton_core::ports::Clock;
use baton_core::{Channel, ConversationKey};
use baton_tests::desk::FakeDesk;
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

#[tokio::main]
async fn main() {
    match Cli::parse().command {
        Command::Timers { conversations, timeout_secs } => timers(conversations, timeout_secs).await,
    }
}

async fn timers(n: usize, timeout_secs: u64) {
    let desk = FakeDesk::start(None).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let opts = ServeOptions {
        addr: "127.0.0.1:0".parse().expect("addr"),
        data: dir.path().join("bench.sqlite"),
        agents_file: None,
        body_limit: 64 * 1024,
        example_agent: false,
        // Every simulated user comes from 127.0.0.1.
        rate_limits: baton_runtime::http::RateLimitConfig {
            per_ip_per_sec: 1e6,
            per_ip_burst: 1_000_000,
            ..Default::default()
        },
    };
    let clock: Arc<dyn Clock> = Arc::new(baton_runtime::clock::SystemClock);
    let running = start(opts, clock).await.expect("server starts");
    let mut agent: Agent = baton::demo::example_agent(&desk.url(), "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    agent.id = "bench".into();
    agent.desk = DeskConfig::Webhook { url: desk.url(), username: None, password: None, signing_secret: None };
    agent.policy = Policy {
        wait_timeout_secs: timeout_secs,
        wait_reply_timeout_secs: 3600,
        session_timeout_secs: timeout_secs,
        ..Policy::default()
    };
    running.ports.store.put_agent(&agent).await.expect("agent stored");
    let token = baton_runtime::auth::generate_token();
    running
        .ports
        .store
        .add_token("bench", &baton_runtime::auth::hash_token(&token), baton_core::Millis(0))
        .await
        .expect("token");
    let base = format!("http://{}", running.addr);
    println!("timers: {n} conversations, timeouts of {timeout_secs} s, embedded SQLite (synchronous=FULL)");

    // Hand every conversation to the desk.
    let mut clients = Vec::new();
    for i in 0..n {
        let w = WidgetClient::start(&base, "bench", Some(&format!("u{i}@example.com"))).await;
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
    // Half of them get a human reply: their session timeout runs from that reply.
    let http = reqwest::Client::new();
    for (i, e) in establishes.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        let conv = e.body["conversation_id"].as_str().unwrap_or_default();
        let body = serde_json::json!({"conversation_id": conv, "timestamp": i, "body": "hello"});
        let url = format!("{base}/desks/webhook/bench/v1/human/message/receive");
        let _ = http.post(url).bearer_auth(&token).json(&body).send().await;
    }
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
