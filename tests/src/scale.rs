//! Duplicates and reordering at scale, through a hub's real Telegram webhook: `conversations`
//! chats send `events` messages each; every update is delivered `copies` times at once, and
//! one more copy of it arrives late, after the chat's next update (as a provider retrying a
//! timed-out delivery would). Exactly one answer per update must reach Telegram, in each
//! chat's order. The CI test runs a small plan; `baton-bench duplicates` the large one.

use baton_core::agent::FaqEntry;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One word per event of a chat; the FAQ answers each with its own answer.
pub const WORDS: [&str; 10] =
    ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliett"];

#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub conversations: usize,
    /// At most [`WORDS`]`.len()`.
    pub events: usize,
    pub copies: usize,
    /// Chats delivering at the same time.
    pub concurrency: usize,
}

/// The FAQ that answers `WORDS[i]` with `answer(i)`.
pub fn faq() -> Vec<FaqEntry> {
    WORDS
        .iter()
        .enumerate()
        .map(|(i, w)| FaqEntry {
            question: format!("Tell me about {w}"),
            answer: answer(i),
            keywords: vec![w.to_string()],
        })
        .collect()
}

pub fn answer(i: usize) -> String {
    format!("The answer about {}.", WORDS[i])
}

fn chat_id(c: usize) -> i64 {
    1_000_000 + c as i64
}

/// What the deliveries did.
#[derive(Debug, Default)]
pub struct Delivered {
    pub requests: usize,
    pub acknowledged: usize,
    pub refused: usize,
    pub elapsed: Duration,
}

/// Deliver the plan to `webhook_url` with Telegram's secret-token header.
pub async fn deliver(webhook_url: &str, secret: &str, plan: Plan) -> Delivered {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let (url, secret) = (webhook_url.to_string(), secret.to_string());
    deliver_with(plan, move |update: Value| {
        let (http, url, secret) = (http.clone(), url.clone(), secret.clone());
        async move {
            let sent = http.post(&url).header("X-Telegram-Bot-Api-Secret-Token", &secret).json(&update).send().await;
            matches!(sent, Ok(r) if r.status() == 200)
        }
    })
    .await
}

/// Deliver the plan through `post`, which sends one update and says whether it was
/// acknowledged (an HTTP server, or a Lambda handler invoked directly).
pub async fn deliver_with<P, F>(plan: Plan, post: P) -> Delivered
where
    P: Fn(Value) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = bool> + Send + 'static,
{
    assert!(plan.events <= WORDS.len());
    let (acked, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let slots = Arc::new(tokio::sync::Semaphore::new(plan.concurrency.max(1)));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..plan.conversations {
        let (acked, refused, slots, post) = (acked.clone(), refused.clone(), slots.clone(), post.clone());
        tasks.push(tokio::spawn(async move {
            let _slot = slots.acquire().await.unwrap();
            let update = |i: usize| {
                crate::telegram::text_update(
                    (c * WORDS.len() + i + 1) as i64,
                    chat_id(c),
                    &format!("Tell me about {}", WORDS[i]),
                )
            };
            for i in 0..plan.events {
                // The copies race each other; the next update starts once one was acknowledged.
                let results = join_all((0..plan.copies).map(|_| post(update(i)))).await;
                let ok = results.iter().filter(|r| **r).count();
                acked.fetch_add(ok, Ordering::Relaxed);
                refused.fetch_add(results.len() - ok, Ordering::Relaxed);
                assert!(ok > 0, "no copy of chat {c}'s update {i} was acknowledged");
                if i > 0 {
                    // A late copy of the previous update, after this one.
                    let ok = post(update(i - 1)).await;
                    acked.fetch_add(usize::from(ok), Ordering::Relaxed);
                    refused.fetch_add(usize::from(!ok), Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("delivery task");
    }
    let requests = plan.conversations * (plan.events * (plan.copies + 1)).saturating_sub(1);
    Delivered {
        requests,
        acknowledged: acked.load(Ordering::Relaxed),
        refused: refused.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    }
}

async fn join_all<F: std::future::Future<Output = bool> + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<bool> {
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap_or(false));
    }
    out
}

/// The check: every chat got exactly its answers, once each, in order.
#[derive(Debug)]
pub struct Verdict {
    pub answers: usize,
    pub expected: usize,
    /// Chats whose answers are exactly the expected sequence.
    pub chats_exact: usize,
    /// The first few chats that are not, with what they got.
    pub wrong: Vec<String>,
}

impl Verdict {
    pub fn ok(&self) -> bool {
        self.wrong.is_empty() && self.answers == self.expected
    }
}

/// Judge the `sendMessage` bodies Telegram received.
pub fn verdict(sent: &[Value], plan: Plan) -> Verdict {
    let mut by_chat: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for m in sent {
        let chat = m["chat_id"].as_i64().or_else(|| m["chat_id"].as_str().and_then(|s| s.parse().ok())).unwrap_or(0);
        by_chat.entry(chat).or_default().push(m["text"].as_str().unwrap_or_default().to_string());
    }
    let expected: Vec<String> = (0..plan.events).map(answer).collect();
    let mut wrong = Vec::new();
    let mut exact = 0;
    for c in 0..plan.conversations {
        let got = by_chat.remove(&chat_id(c)).unwrap_or_default();
        if got == expected {
            exact += 1;
        } else if wrong.len() < 5 {
            wrong.push(format!("chat {}: {got:?}", chat_id(c)));
        }
    }
    for (chat, got) in by_chat.into_iter().take(5usize.saturating_sub(wrong.len())) {
        wrong.push(format!("unexpected chat {chat}: {got:?}"));
    }
    Verdict { answers: sent.len(), expected: plan.conversations * plan.events, chats_exact: exact, wrong }
}
