//! Fault injection against a separate `baton serve` process (embedded SQLite in a temp dir,
//! an FAQ brain, a fake webhook desk that checks Standard Webhooks signatures and drops
//! repeated `webhook-id`s). Widget users post every message until the hub acknowledges it,
//! always with the same `client_id`, as the widget does; the hub drops the copies.
//!
//! `baton-bench kill`: users ask the FAQ bot 5 questions (each answer awaited: an answer
//! that arrives after a handoff request is deliberately dropped), ask for a human, and write
//! 4 messages that the hub relays to the desk, while the server is SIGKILLed at random
//! points and restarted on the same port and data file. Checks that every user got exactly
//! its answers and every message reached the desk, once each, in order.
//!
//! `baton-bench outage`: users handed to the desk keep writing while the desk answers every
//! request with 503 for some minutes; then it recovers. Reports how fast the backlog reaches
//! the desk and whether every message got there once, in order.

use crate::server::Server;
use baton_tests::desk::{DeskRequest, FakeDesk};
use baton_tests::scale::{answer, WORDS};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const AGENT: &str = "faults";
/// FAQ questions each user of `kill` asks before the handoff.
const FAQ_STEPS: usize = 5;
/// Messages each user of `kill` writes to the desk.
const DESK_MESSAGES: usize = 4;
/// Pause between retries of a call the server did not acknowledge.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// A call still unacknowledged after this long is given up (and reported as lost).
const GIVE_UP_AFTER: Duration = Duration::from_secs(120);
/// How often a user polls for the bot's answer.
const POLL: Duration = Duration::from_millis(250);
/// Longest wait for the backlog after the desk recovers. The hub retries a conversation's
/// first undelivered desk message after 2, 4, 8, ... s, at most a minute (+12.5 % jitter)
/// apart, so any outage shorter than the dead-letter horizon (about 2 h) drains well within this.
const DRAIN_LIMIT: Duration = Duration::from_secs(15 * 60);

/// The agents file: an FAQ that answers `Tell me about <word>`, the fake desk, no e-mail
/// asked, timeouts far beyond a run.
fn agents_toml(desk_url: &str) -> String {
    let faq: Vec<String> = WORDS
        .iter()
        .enumerate()
        .map(|(i, w)| {
            // JSON string escapes are valid TOML basic-string escapes.
            let s = |v: &str| serde_json::to_string(v).expect("a string");
            format!("{{ question = {}, answer = {}, keywords = [{}] }}", s(&question(i)), s(&answer(i)), s(w))
        })
        .collect();
    format!(
        r#"[[agent]]
id = "{AGENT}"
name = "Faults"
[agent.brain]
kind = "faq"
faq = [{}]
[agent.desk]
kind = "webhook"
url = "{desk_url}"
signing_secret = "{SECRET}"
[agent.policy]
require_email = false
wait_timeout_secs = 86400
wait_reply_timeout_secs = 86400
session_timeout_secs = 86400
"#,
        faq.join(", ")
    )
}

fn question(i: usize) -> String {
    format!("Tell me about {}", WORDS[i])
}

/// One widget user: its conversation token and id (the desk sees the id as `user_id`).
struct User {
    token: String,
    conversation_id: String,
}

/// Counts over every call of a run.
#[derive(Default)]
struct Stats {
    /// Messages acknowledged (each once, however many attempts it took).
    acked: AtomicUsize,
    /// Calls that needed more than one attempt, and the extra attempts in all.
    retried_calls: AtomicUsize,
    retries: AtomicUsize,
    /// Attempts answered with a status other than the acknowledgement (also retried).
    other_statuses: AtomicUsize,
    /// Calls given up after [`GIVE_UP_AFTER`].
    given_up: AtomicUsize,
}

/// The widget API of one hub, with retries.
#[derive(Clone)]
struct Hub {
    http: reqwest::Client,
    base: String,
    stats: Arc<Stats>,
}

impl Hub {
    fn new(base: String) -> Hub {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
        Hub { http, base, stats: Arc::default() }
    }

    fn url(&self, what: &str) -> String {
        format!("{}/api/widget/{AGENT}/{what}", self.base)
    }

    /// POST until the server answers `ack`; the response, or `None` when given up.
    async fn post_until(&self, ack: u16, request: impl Fn() -> reqwest::RequestBuilder) -> Option<reqwest::Response> {
        let started = Instant::now();
        let mut attempts = 0;
        let result = loop {
            attempts += 1;
            match request().send().await {
                Ok(r) if r.status().as_u16() == ack => break Some(r),
                Ok(_) => {
                    self.stats.other_statuses.fetch_add(1, Ordering::Relaxed);
                }
                // The server is down or was killed mid-request.
                Err(_) => {}
            }
            if started.elapsed() > GIVE_UP_AFTER {
                self.stats.given_up.fetch_add(1, Ordering::Relaxed);
                break None;
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        };
        if attempts > 1 {
            self.stats.retried_calls.fetch_add(1, Ordering::Relaxed);
            self.stats.retries.fetch_add(attempts - 1, Ordering::Relaxed);
        }
        result
    }

    /// Start a widget conversation. A retried start may leave an unused conversation
    /// behind, which holds no events.
    async fn session(&self) -> Option<User> {
        let started = Instant::now();
        while started.elapsed() < GIVE_UP_AFTER {
            let r = self.post_until(200, || self.http.post(self.url("session")).json(&json!({}))).await?;
            // The body can be cut off by a kill: start again.
            if let Ok(v) = r.json::<Value>().await {
                if let (Some(t), Some(c)) = (v["token"].as_str(), v["conversation_id"].as_str()) {
                    return Some(User { token: t.to_string(), conversation_id: c.to_string() });
                }
            }
        }
        None
    }

    /// Send a message until acknowledged (202), always with the same client id.
    async fn send(&self, user: &User, text: &str, client_id: &str) -> bool {
        let body = json!({"text": text, "client_id": client_id});
        let acked =
            self.post_until(202, || self.http.post(self.url("messages")).bearer_auth(&user.token).json(&body)).await;
        if acked.is_some() {
            self.stats.acked.fetch_add(1, Ordering::Relaxed);
        }
        acked.is_some()
    }

    /// One page of the user's messages after `cursor`; `None` when the server did not answer.
    async fn messages_after(&self, user: &User, cursor: i64) -> Option<Vec<Value>> {
        let r = self
            .http
            .get(format!("{}?after={cursor}", self.url("messages")))
            .bearer_auth(&user.token)
            .send()
            .await
            .ok()?;
        if r.status() != 200 {
            return None;
        }
        let v: Value = r.json().await.ok()?;
        Some(v["messages"].as_array().cloned().unwrap_or_default())
    }

    /// Every message of the user's conversation, page by page.
    async fn all_messages(&self, user: &User) -> Option<Vec<Value>> {
        let mut all: Vec<Value> = Vec::new();
        let mut failures = 0;
        loop {
            let cursor = all.last().and_then(|m| m["seq"].as_i64()).unwrap_or(0);
            match self.messages_after(user, cursor).await {
                Some(page) if page.is_empty() => return Some(all),
                Some(page) => all.extend(page),
                None if failures < 50 => {
                    failures += 1;
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                None => return None,
            }
        }
    }

    /// Wait for a bot message with exactly `text` after `cursor`, moving the cursor past it.
    async fn wait_for_bot(&self, user: &User, cursor: &mut i64, text: &str) -> bool {
        let started = Instant::now();
        loop {
            for m in self.messages_after(user, *cursor).await.unwrap_or_default() {
                *cursor = m["seq"].as_i64().unwrap_or(*cursor);
                if m["from"] == "bot" && m["text"] == text {
                    return true;
                }
            }
            if started.elapsed() > GIVE_UP_AFTER {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// The desk conversation (handoff) id of each widget user, from the establish requests.
/// One task copies the desk's log when it grew, rather than every waiting user copying it
/// (which would steal CPU from the hub).
#[derive(Default)]
struct Handoffs {
    ids: Mutex<HashMap<String, String>>,
}

impl Handoffs {
    fn watch(desk: Arc<FakeDesk>) -> (Arc<Handoffs>, tokio::task::JoinHandle<()>) {
        let handoffs = Arc::new(Handoffs::default());
        let h = handoffs.clone();
        let task = tokio::spawn(async move {
            let mut seen = 0;
            loop {
                let n = desk.count_to("/conversation/establish");
                if n != seen {
                    seen = n;
                    let mut ids = h.ids.lock().expect("handoffs");
                    for r in desk.requests_to("/conversation/establish") {
                        if let (Some(u), Some(c)) =
                            (r.body["user_info"]["user_id"].as_str(), r.body["conversation_id"].as_str())
                        {
                            ids.insert(u.to_string(), c.to_string());
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        (handoffs, task)
    }

    /// Wait until the desk heard of `user`'s handoff.
    async fn wait_for(&self, user: &User) -> bool {
        let started = Instant::now();
        while started.elapsed() < GIVE_UP_AFTER {
            if self.ids.lock().expect("handoffs").contains_key(&user.conversation_id) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

/// The desk's view of the users, judged against what each of them wrote.
#[derive(Default)]
struct DeskVerdict {
    opened_once: usize,
    never_opened: usize,
    /// Users whose conversation was opened by more than one distinct establish request.
    opened_more: usize,
    /// Users whose desk messages were exactly theirs, once each, in order.
    exact: usize,
    /// Desk messages that arrived at all (of those expected, duplicates included).
    chats: usize,
    wrong: Vec<String>,
}

/// `users`: each user's widget conversation id and the texts the desk must get, in order.
fn judge_desk(requests: &[DeskRequest], users: &[(String, Vec<String>)]) -> DeskVerdict {
    let mut opened: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut chats: HashMap<&str, Vec<&str>> = HashMap::new();
    for r in requests {
        let conv = r.body["conversation_id"].as_str().unwrap_or_default();
        match r.path.as_str() {
            "/conversation/establish" => {
                opened.entry(r.body["user_info"]["user_id"].as_str().unwrap_or_default()).or_default().push(conv)
            }
            "/chat" => chats.entry(conv).or_default().push(r.body["body"].as_str().unwrap_or_default()),
            _ => {}
        }
    }
    let mut v = DeskVerdict::default();
    for (user, want) in users {
        let handoffs = opened.get(user.as_str()).cloned().unwrap_or_default();
        match handoffs.len() {
            0 => v.never_opened += 1,
            1 => v.opened_once += 1,
            _ => v.opened_more += 1,
        }
        if handoffs.len() > 1 {
            v.wrong.push(format!("{user}: opened {} times: {handoffs:?}", handoffs.len()));
        }
        // Each desk conversation once, even when it was opened twice.
        let mut ids = handoffs.clone();
        ids.sort_unstable();
        ids.dedup();
        let got: Vec<&str> = ids.iter().flat_map(|h| chats.get(h).cloned().unwrap_or_default()).collect();
        v.chats += got.len();
        if got == *want {
            v.exact += 1;
        } else {
            v.wrong.push(format!("{user}: desk got {got:?}, want {want:?}"));
        }
    }
    v
}

fn print_wrong(wrong: &[String]) {
    for w in wrong.iter().take(10) {
        println!("  wrong: {w}");
    }
    if wrong.len() > 10 {
        println!("  ... and {} more", wrong.len() - 10);
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// What `kill` was asked to do.
pub struct KillPlan {
    pub users: usize,
    pub kills: usize,
    /// Users running at the same time.
    pub concurrency: usize,
    /// Seed of the kill points; random (and printed) by default.
    pub seed: Option<u64>,
}

/// One kill of the server.
struct Kill {
    at: Duration,
    acked: usize,
    restart: Duration,
}

/// What one user of `kill` got done.
struct KillUser {
    user: Option<User>,
    acked: usize,
    answers_missed: usize,
    establish_seen: bool,
}

/// SIGKILL the server whenever the acknowledged messages pass the next threshold, until
/// the thresholds run out or `done` is set; returns the server and the kills.
async fn killer(
    mut server: Server,
    thresholds: Vec<usize>,
    stats: Arc<Stats>,
    done: Arc<AtomicBool>,
    t0: Instant,
) -> (Server, Vec<Kill>) {
    let mut kills = Vec::new();
    for t in thresholds {
        while stats.acked.load(Ordering::Relaxed) < t {
            if done.load(Ordering::Relaxed) {
                return (server, kills);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let at = t0.elapsed();
        let acked = stats.acked.load(Ordering::Relaxed);
        let restart = server.kill_and_restart().await;
        kills.push(Kill { at, acked, restart });
    }
    (server, kills)
}

/// `kills` thresholds of acknowledged messages out of `total`: one drawn in each of
/// `kills` equal slices of the run (after the first), so the kills spread over it.
fn kill_points(total: usize, kills: usize, seed: u64) -> Vec<usize> {
    let mut rng = StdRng::seed_from_u64(seed);
    let slice = (total / (kills + 1)).max(1);
    (1..=kills).map(|k| (slice * k + rng.gen_range(0..slice)).min(total.saturating_sub(1)).max(1)).collect()
}

/// One user of `kill`: 5 FAQ questions (each answer awaited), a handoff, 4 desk messages.
async fn kill_user(hub: &Hub, handoffs: &Handoffs, n: usize) -> KillUser {
    let mut run = KillUser { user: None, acked: 0, answers_missed: 0, establish_seen: false };
    let Some(user) = hub.session().await else { return run };
    let mut cursor = 0;
    for k in 0..FAQ_STEPS {
        if hub.send(&user, &question(k), &format!("u{n}-q{k}")).await {
            run.acked += 1;
        }
        // The next question (or the handoff) must wait for this answer, which the hub
        // would otherwise drop on purpose.
        if !hub.wait_for_bot(&user, &mut cursor, &answer(k)).await {
            run.answers_missed += 1;
        }
    }
    if hub.send(&user, "human", &format!("u{n}-h")).await {
        run.acked += 1;
    }
    // The conversation is with the desk once the desk heard of it.
    run.establish_seen = handoffs.wait_for(&user).await;
    for k in 0..DESK_MESSAGES {
        if hub.send(&user, &desk_text(n, k), &format!("u{n}-d{k}")).await {
            run.acked += 1;
        }
    }
    run.user = Some(user);
    run
}

fn desk_text(user: usize, k: usize) -> String {
    format!("Message {k} from user {user}")
}

/// `baton-bench kill`: see the module documentation.
pub async fn kill(baton: &Path, plan: KillPlan) {
    let desk = Arc::new(FakeDesk::start(Some(SECRET)).await);
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(baton, dir.path(), &agents_toml(&desk.url()), &[]).await;
    let hub = Hub::new(server.base());
    let per_user = FAQ_STEPS + 1 + DESK_MESSAGES;
    let total = plan.users * per_user;
    let seed = plan.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    let points = kill_points(total, plan.kills, seed);
    println!(
        "kill: {} widget users x ({FAQ_STEPS} FAQ questions + handoff + {DESK_MESSAGES} desk messages) = {total} \
         messages, {} users at a time, against `baton serve` ({}, embedded SQLite); SIGKILL {} times after \
         {points:?} acknowledged messages (--seed {seed})",
        plan.users,
        plan.concurrency,
        baton.display(),
        plan.kills
    );

    let (handoffs, watcher) = Handoffs::watch(desk.clone());
    let done = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let killing = tokio::spawn(killer(server, points, hub.stats.clone(), done.clone(), t0));
    let runs = each_user(plan.concurrency, plan.users, {
        let (hub, handoffs) = (hub.clone(), handoffs.clone());
        move |n| {
            let (hub, handoffs) = (hub.clone(), handoffs.clone());
            async move { Some(kill_user(&hub, &handoffs, n).await) }
        }
    })
    .await;
    let elapsed = t0.elapsed();
    done.store(true, Ordering::Relaxed);
    let (server, kills) = killing.await.expect("killer task");
    watcher.abort();

    // Let the hub relay what it accepted: until every desk message arrived, or nothing
    // arrived for a minute.
    let expected_chats = plan.users * DESK_MESSAGES;
    let (mut last, mut last_change) = (desk.count_to("/chat"), Instant::now());
    while last < expected_chats && last_change.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let n = desk.count_to("/chat");
        if n != last {
            (last, last_change) = (n, Instant::now());
        }
    }
    // Anything doubled would arrive shortly after.
    tokio::time::sleep(Duration::from_secs(3)).await;

    for (i, k) in kills.iter().enumerate() {
        println!(
            "  kill {:>2} at {:>7.2} s into the run (after {:>6} acknowledged messages): /healthz answered {} after the kill",
            i + 1,
            k.at.as_secs_f64(),
            k.acked,
            secs(k.restart)
        );
    }
    let mut restarts: Vec<Duration> = kills.iter().map(|k| k.restart).collect();
    restarts.sort_unstable();
    if let (Some(min), Some(max)) = (restarts.first(), restarts.last()) {
        println!(
            "kills: {} of {}; restart until /healthz: min {}, median {}, max {}",
            kills.len(),
            plan.kills,
            secs(*min),
            secs(restarts[restarts.len() / 2]),
            secs(*max)
        );
    } else {
        println!("kills: 0 of {}", plan.kills);
    }

    let stats = &hub.stats;
    let acked_users = runs.iter().filter(|(_, r)| r.acked == per_user).count();
    println!(
        "users acknowledged: {acked_users}/{} ({} of {total} messages in {}; {} calls retried, {} retries in all, \
         {} answered with another status, {} given up)",
        plan.users,
        stats.acked.load(Ordering::Relaxed),
        secs(elapsed),
        stats.retried_calls.load(Ordering::Relaxed),
        stats.retries.load(Ordering::Relaxed),
        stats.other_statuses.load(Ordering::Relaxed),
        stats.given_up.load(Ordering::Relaxed)
    );

    // The bot's answers, as the widget lists them.
    let want: Vec<String> = (0..FAQ_STEPS).map(answer).collect();
    let mut wrong = Vec::new();
    let mut exact_answers = 0;
    for (n, r) in &runs {
        let Some(user) = &r.user else {
            wrong.push(format!("user {n}: no conversation"));
            continue;
        };
        let Some(messages) = hub.all_messages(user).await else {
            wrong.push(format!("user {n}: messages could not be read"));
            continue;
        };
        let got: Vec<&str> =
            messages.iter().filter(|m| m["from"] == "bot").map(|m| m["text"].as_str().unwrap_or_default()).collect();
        if got == want {
            exact_answers += 1;
        } else {
            wrong.push(format!("user {n}: bot said {got:?}"));
        }
    }
    let missed: usize = runs.iter().map(|(_, r)| r.answers_missed).sum();
    let unseen = runs.iter().filter(|(_, r)| r.user.is_some() && !r.establish_seen).count();
    println!(
        "bot answers: {exact_answers}/{} users got exactly their {FAQ_STEPS} answers once each, in order \
         ({missed} answers not seen within {} while running)",
        plan.users,
        secs(GIVE_UP_AFTER)
    );

    let expected: Vec<(String, Vec<String>)> = runs
        .iter()
        .filter_map(|(n, r)| {
            let user = r.user.as_ref()?;
            Some((user.conversation_id.clone(), (0..DESK_MESSAGES).map(|k| desk_text(*n, k)).collect()))
        })
        .collect();
    let verdict = judge_desk(&desk.requests(), &expected);
    println!(
        "desk messages: {}/{} users' {DESK_MESSAGES} messages reached the desk exactly once each, in order \
         ({} of {expected_chats} arrived)",
        verdict.exact, plan.users, verdict.chats
    );
    println!(
        "desk conversations: {}/{} opened exactly once ({} more than once, {} never; {unseen} not seen by the user \
         within {}); re-sent copies (same webhook-id, dropped by the desk's dedupe): {}",
        verdict.opened_once,
        plan.users,
        verdict.opened_more,
        verdict.never_opened,
        secs(GIVE_UP_AFTER),
        desk.duplicates()
    );
    let (dead, panics) = server.log_findings();
    println!(
        "bad signatures at the desk: {}; server log: {dead} dead-lettered effects, {panics} panics",
        desk.bad_signatures()
    );
    wrong.extend(verdict.wrong);
    print_wrong(&wrong);
    server.stop().await;
    let ok = acked_users == plan.users
        && exact_answers == plan.users
        && verdict.exact == plan.users
        && verdict.opened_once == plan.users
        && desk.bad_signatures() == 0
        && kills.len() == plan.kills;
    if !ok {
        println!("FAILED: something was lost, doubled or out of order");
        std::process::exit(1);
    }
}

/// `baton-bench outage`: see the module documentation.
pub async fn outage(baton: &Path, users: usize, minutes: f64, interval_secs: u64) {
    let desk = Arc::new(FakeDesk::start(Some(SECRET)).await);
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(baton, dir.path(), &agents_toml(&desk.url()), &[]).await;
    let hub = Hub::new(server.base());
    let outage = Duration::from_secs_f64(minutes * 60.0);
    let interval = Duration::from_secs(interval_secs.max(1));
    // Every message is sent within the outage.
    let per_user = ((outage.as_secs_f64() / interval.as_secs_f64()).ceil() as usize).max(1);
    println!(
        "outage: {users} widget users handed to a fake desk that then answers 503 to everything for {minutes} min; \
         each user writes every {interval_secs} s meanwhile ({per_user} messages each); against `baton serve` ({}, \
         embedded SQLite)",
        baton.display()
    );

    // Hand everybody to the desk: a question to the bot, its answer, a handoff.
    let (handoffs, watcher) = Handoffs::watch(desk.clone());
    let ready = each_user(50, users, {
        let (hub, handoffs) = (hub.clone(), handoffs.clone());
        move |n| {
            let (hub, handoffs) = (hub.clone(), handoffs.clone());
            async move {
                let user = hub.session().await?;
                let mut cursor = 0;
                let handed = hub.send(&user, &question(0), &format!("u{n}-q0")).await
                    && hub.wait_for_bot(&user, &mut cursor, &answer(0)).await
                    && hub.send(&user, "human", &format!("u{n}-h")).await
                    && handoffs.wait_for(&user).await;
                handed.then_some(user)
            }
        }
    })
    .await;
    watcher.abort();
    println!("handed to the desk: {}/{users}", ready.len());

    // The outage: users spread their messages over each interval.
    desk.fail_next(usize::MAX);
    let down = Instant::now();
    let ready = Arc::new(ready);
    let mut tasks = Vec::new();
    for i in 0..ready.len() {
        let (hub, ready) = (hub.clone(), ready.clone());
        let offset = interval.mul_f64(i as f64 / ready.len() as f64);
        tasks.push(tokio::spawn(async move {
            let (n, user) = &ready[i];
            let mut acked = 0;
            for k in 0..per_user {
                tokio::time::sleep_until((down + offset + interval * k as u32).into()).await;
                if hub.send(user, &outage_text(*n, k), &format!("u{n}-o{k}")).await {
                    acked += 1;
                }
            }
            acked
        }));
    }
    let mut accepted = 0;
    for t in tasks {
        accepted += t.await.expect("user task");
    }
    tokio::time::sleep_until((down + outage).into()).await;
    let at_desk_during = desk.count_to("/chat");
    desk.fail_next(0);
    let up = Instant::now();
    println!(
        "desk down for {}: {accepted} of {} messages accepted by the hub meanwhile, {at_desk_during} reached the desk",
        secs(up - down),
        ready.len() * per_user
    );

    // The backlog drains on each conversation's next retry.
    let mut report_at = Duration::from_secs(30);
    while desk.count_to("/chat") < accepted && up.elapsed() < DRAIN_LIMIT {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if up.elapsed() >= report_at {
            println!(
                "  {:>4.0} s after recovery: {}/{accepted} at the desk",
                report_at.as_secs_f64(),
                desk.count_to("/chat")
            );
            report_at += Duration::from_secs(30);
        }
    }
    // Anything doubled would arrive shortly after.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let requests = desk.requests();
    let mut arrivals: Vec<Duration> =
        requests.iter().filter(|r| r.path == "/chat").map(|r| r.at.saturating_duration_since(up)).collect();
    arrivals.sort_unstable();
    let reached = |share: f64| {
        let need = ((accepted as f64 * share).ceil() as usize).max(1);
        arrivals.get(need - 1).map_or_else(|| format!("not within {}", secs(DRAIN_LIMIT)), |d| secs(*d))
    };
    println!(
        "backlog at the desk after recovery: 50% in {}, 90% in {}, all in {} ({} of {accepted} arrived)",
        reached(0.5),
        reached(0.9),
        reached(1.0),
        arrivals.len()
    );

    let expected: Vec<(String, Vec<String>)> = ready
        .iter()
        .map(|(n, u)| (u.conversation_id.clone(), (0..per_user).map(|k| outage_text(*n, k)).collect()))
        .collect();
    let verdict = judge_desk(&requests, &expected);
    let (dead, panics) = server.log_findings();
    println!(
        "desk messages: {}/{} users' messages reached the desk exactly once each, in order; re-sent copies \
         (same webhook-id, dropped by the desk's dedupe): {}; bad signatures: {}; server log: {dead} dead-lettered \
         effects, {panics} panics",
        verdict.exact,
        users,
        desk.duplicates(),
        desk.bad_signatures()
    );
    print_wrong(&verdict.wrong);
    server.stop().await;
    let ok = ready.len() == users
        && accepted == users * per_user
        && verdict.exact == users
        && desk.bad_signatures() == 0
        && dead == 0;
    if !ok {
        println!("FAILED: something was lost, doubled or out of order");
        std::process::exit(1);
    }
}

fn outage_text(user: usize, k: usize) -> String {
    format!("Outage message {k} from user {user}")
}

/// Run `job(n)` for every user `n` in `0..users` on `workers` tasks, each taking the next
/// user as it finishes one; returns the users whose job gave a result, in user order.
async fn each_user<T, F, Fut>(workers: usize, users: usize, job: F) -> Vec<(usize, T)>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Option<T>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..workers.clamp(1, users.max(1)))
        .map(|_| {
            let (job, next) = (job.clone(), next.clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= users {
                        break out;
                    }
                    if let Some(r) = job(n).await {
                        out.push((n, r));
                    }
                }
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.extend(t.await.expect("user task"));
    }
    out.sort_by_key(|(n, _)| *n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str, body: Value) -> DeskRequest {
        DeskRequest { at: Instant::now(), path: path.into(), body, webhook_id: None, authorization: None }
    }

    fn establish(user: &str, handoff: &str) -> DeskRequest {
        request("/conversation/establish", json!({"conversation_id": handoff, "user_info": {"user_id": user}}))
    }

    fn chat(handoff: &str, text: &str) -> DeskRequest {
        request("/chat", json!({"conversation_id": handoff, "body": text}))
    }

    #[test]
    fn the_desk_verdict_sees_loss_doubles_and_reordering() {
        let want = |u: &str| (u.to_string(), vec!["a".to_string(), "b".to_string()]);
        let users = [want("ok"), want("lost"), want("doubled"), want("swapped"), want("twice"), want("never")];
        let requests = [
            establish("ok", "h1"),
            chat("h1", "a"),
            chat("h1", "b"),
            establish("lost", "h2"),
            chat("h2", "a"),
            establish("doubled", "h3"),
            chat("h3", "a"),
            chat("h3", "a"),
            chat("h3", "b"),
            establish("swapped", "h4"),
            chat("h4", "b"),
            chat("h4", "a"),
            // Opened twice with the same handoff id: counted once for the messages.
            establish("twice", "h5"),
            establish("twice", "h5"),
            chat("h5", "a"),
            chat("h5", "b"),
        ];
        let v = judge_desk(&requests, &users);
        assert_eq!(v.exact, 2, "{:?}", v.wrong);
        assert_eq!((v.opened_once, v.opened_more, v.never_opened), (4, 1, 1));
        assert_eq!(v.wrong.len(), 5, "{:?}", v.wrong);
    }

    #[test]
    fn kill_points_rise_within_the_run_and_repeat_with_the_seed() {
        let points = kill_points(10_000, 10, 7);
        assert_eq!(points.len(), 10);
        assert!(points.windows(2).all(|w| w[0] < w[1]), "{points:?}");
        assert!(points.iter().all(|p| (1..10_000).contains(p)), "{points:?}");
        assert_eq!(points, kill_points(10_000, 10, 7));
        assert_eq!(kill_points(3, 10, 1).len(), 10);
    }
}
