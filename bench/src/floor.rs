//! Floors for `load`: the same load generator, on the same route, against servers that do
//! less than the hub, so that a hub figure can be read against what this machine gives any
//! server of the kind while the generator and the desk share its cores.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use baton_core::ports::{Clock, EventQueue};
use baton_core::{Channel, ConversationKey, Event, EventKind};
use baton_embedded::{Db, EmbeddedQueue};
use serde_json::{json, Value};
use std::sync::Arc;

/// What answers the load generator's `POST /api/widget/{agent}/messages`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Target {
    /// `baton serve`: each message queued or stepped durably, then relayed to the desk.
    Hub,
    /// A route that reads the bearer token, parses the body and answers 202: the HTTP floor.
    Bare,
    /// `bare`, answering after the event is queued durably in the embedded store (its group
    /// commit, `synchronous=FULL`); the conversation's event before it is taken off the queue
    /// behind the answer: the floor of the hub's durable acknowledgement.
    Queue,
    /// `bare`, answering after the event's JSON is appended to a file and that file synced
    /// (`fdatasync`), by one thread that writes and syncs whatever is waiting as one group;
    /// nothing reads it back, and it is no queue (no order per conversation, no replay): the
    /// floor of any durable acknowledgement on this disk.
    Journal,
    /// `bare`, posting each message to the desk after answering; nothing stored: the floor of
    /// a relay over HTTP.
    Relay,
}

impl Target {
    /// What the run's first line says answers.
    pub fn describe(self) -> &'static str {
        match self {
            Target::Hub => "baton serve, relaying to a fake desk on loopback; embedded SQLite (synchronous=FULL)",
            Target::Bare => "floor `bare`: a route that parses the request and answers 202, nothing stored or relayed",
            Target::Queue => {
                "floor `queue`: a route that queues the event in the embedded store (synchronous=FULL) and answers 202, taking the conversation's event before off the queue; nothing relayed"
            }
            Target::Journal => {
                "floor `journal`: a route that appends the event to a file, syncs it (group commit) and answers 202, nothing relayed"
            }
            Target::Relay => "floor `relay`: a route that answers 202 and posts the message to a fake desk on loopback, nothing stored",
        }
    }
}

/// The hub's conversation workers (`WORKERS` in cli/src/serve.rs).
const RELAYS_IN_FLIGHT: usize = 64;

/// A floor server on this runtime, on a free loopback port.
pub struct Floor {
    pub base: String,
    /// The store of `Target::Queue`.
    pub db: Option<Arc<Db>>,
    /// Where its files are, removed with it.
    _dir: tempfile::TempDir,
}

/// Where a floor keeps each event before it answers.
#[derive(Clone)]
enum Keep {
    Nothing,
    /// The embedded queue, and each conversation's newest event in it.
    Queue {
        queue: Arc<EmbeddedQueue>,
        newest: Arc<std::sync::Mutex<std::collections::HashMap<ConversationKey, String>>>,
    },
    Journal(Journal),
}

/// Where `Target::Relay` posts each message: the desk's `/chat` URL.
#[derive(Clone)]
struct Relay {
    url: Arc<String>,
    http: reqwest::Client,
    /// Posts to the desk in flight at most, as many as the hub's conversation workers
    /// (unbounded, a burst opened a connection per post and stalled the desk).
    slots: Arc<tokio::sync::Semaphore>,
}

#[derive(Clone)]
struct FloorState {
    keep: Keep,
    relay: Option<Relay>,
}

pub async fn start(target: Target, desk_url: &str) -> Floor {
    let dir = tempfile::tempdir().expect("temp dir");
    let (keep, db) = match target {
        Target::Queue => {
            let db = Db::open(&dir.path().join("floor.sqlite")).expect("store");
            let queue = Arc::new(EmbeddedQueue::new(db.clone()));
            (Keep::Queue { queue, newest: Arc::default() }, Some(db))
        }
        Target::Journal => (Keep::Journal(Journal::start(&dir.path().join("floor.journal"))), None),
        Target::Hub | Target::Bare | Target::Relay => (Keep::Nothing, None),
    };
    let relay = (target == Target::Relay).then(|| Relay {
        url: Arc::new(format!("{desk_url}/chat")),
        http: reqwest::Client::new(),
        slots: Arc::new(tokio::sync::Semaphore::new(RELAYS_IN_FLIGHT)),
    });
    let state = FloorState { keep, relay };
    let app = Router::new().route("/api/widget/{agent}/messages", post(send)).with_state(state);
    let addr = baton_tests::serve_on_loopback(app).await;
    Floor { base: format!("http://{addr}"), db, _dir: dir }
}

async fn send(
    State(st): State<FloorState>,
    Path(agent): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, Json<Value>) {
    let refuse = |status: StatusCode, message: &str| (status, Json(json!({"error": message})));
    let Some(user) = headers.get("authorization").and_then(|v| v.to_str().ok()?.strip_prefix("Bearer ")) else {
        return refuse(StatusCode::UNAUTHORIZED, "no bearer token");
    };
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return refuse(StatusCode::BAD_REQUEST, "not JSON");
    };
    let (Some(text), Some(client_id)) = (req["text"].as_str(), req["client_id"].as_str()) else {
        return refuse(StatusCode::BAD_REQUEST, "text and client_id wanted");
    };
    let Ok(key) = ConversationKey::new(&agent, Channel::Widget, user) else {
        return refuse(StatusCode::BAD_REQUEST, "bad agent or user");
    };
    let id = format!("widget:{key}:{client_id}");
    let event = || {
        let kind =
            EventKind::UserMessage { text: text.to_string(), email: None, language: None, name: None, reply: None };
        Event::new(id.clone(), key.clone(), baton_runtime::clock::SystemClock.now(), kind)
    };
    let kept = match &st.keep {
        Keep::Nothing => true,
        Keep::Queue { queue, newest } => {
            let queued = queue.enqueue(vec![event()]).await.is_ok();
            // The conversation's event before this one leaves the queue behind the answer,
            // as a step takes it off in the hub: the queue holds a row per conversation, not
            // every event of the run (a queue that only grew wrote 16 KB per event, not 2).
            let before = queued.then(|| newest.lock().expect("newest").insert(key.clone(), id.clone()));
            if let Some(before) = before.flatten() {
                let (queue, key) = (queue.clone(), key.clone());
                tokio::spawn(async move { queue.ack(&key, &before).await });
            }
            queued
        }
        Keep::Journal(journal) => journal.append(&event()).await,
    };
    if !kept {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "not stored");
    }
    if let Some(relay) = st.relay {
        let message = json!({"conversation_id": key.to_string(), "body": text});
        tokio::spawn(async move {
            let _slot = relay.slots.acquire_owned().await;
            relay.http.post(relay.url.as_str()).json(&message).send().await
        });
    }
    (StatusCode::ACCEPTED, Json(json!({"id": id})))
}

/// An append-only file with group commit: one thread takes every line waiting, writes them
/// in one call, syncs the file, and then answers each.
#[derive(Clone)]
struct Journal {
    lines: std::sync::mpsc::Sender<Line>,
}

/// A line for the journal, and where to say whether it is on disk.
type Line = (Vec<u8>, tokio::sync::oneshot::Sender<bool>);

/// Name of the journal's thread (its CPU is the server's).
const JOURNAL_THREAD: &str = "floor-journal";

impl Journal {
    fn start(path: &std::path::Path) -> Journal {
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("journal file");
        let (lines, waiting) = std::sync::mpsc::channel::<Line>();
        std::thread::Builder::new()
            .name(JOURNAL_THREAD.into())
            .spawn(move || {
                use std::io::Write;
                while let Ok(first) = waiting.recv() {
                    let mut group = vec![first];
                    group.extend(waiting.try_iter());
                    let bytes: Vec<u8> = group.iter().flat_map(|(line, _)| line.iter().copied()).collect();
                    let synced = file.write_all(&bytes).and_then(|()| file.sync_data()).is_ok();
                    for (_, answer) in group {
                        let _ = answer.send(synced);
                    }
                }
            })
            .expect("journal thread");
        Journal { lines }
    }

    /// True once `event` is on disk.
    async fn append(&self, event: &Event) -> bool {
        let Ok(mut line) = serde_json::to_vec(event) else { return false };
        line.push(b'\n');
        let (done, synced) = tokio::sync::oneshot::channel();
        self.lines.send((line, done)).is_ok() && synced.await.unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_tests::desk::FakeDesk;
    use std::time::Duration;

    async fn post(floor: &Floor, token: Option<&str>, body: &str) -> (u16, Value) {
        let mut req = reqwest::Client::new()
            .post(format!("{}/api/widget/bench/messages", floor.base))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.expect("floor answers");
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    #[tokio::test]
    async fn every_floor_accepts_a_message_and_refuses_what_it_cannot_read() {
        let desk = FakeDesk::start(None).await;
        for target in [Target::Bare, Target::Queue, Target::Journal, Target::Relay] {
            let floor = start(target, &desk.url()).await;
            let (status, body) = post(&floor, Some("user-1"), r#"{"text": "hi", "client_id": "c1"}"#).await;
            assert_eq!((status, body["id"].as_str()), (202, Some("widget:bench#widget#user-1:c1")), "{target:?}");
            assert_eq!(post(&floor, None, r#"{"text": "hi", "client_id": "c2"}"#).await.0, 401, "{target:?}");
            assert_eq!(post(&floor, Some("user-1"), "{").await.0, 400, "{target:?}");
            assert_eq!(post(&floor, Some("user-1"), r#"{"text": "hi"}"#).await.0, 400, "{target:?}");
        }
    }

    #[tokio::test]
    async fn the_stored_floors_store_the_event_and_the_relay_delivers_it() {
        let desk = FakeDesk::start(None).await;
        let key = ConversationKey::new("bench", Channel::Widget, "user-7").expect("key");

        let queue = start(Target::Queue, &desk.url()).await;
        assert_eq!(post(&queue, Some("user-7"), r#"{"text": "queued", "client_id": "q1"}"#).await.0, 202);
        let store = EmbeddedQueue::new(queue.db.clone().expect("the queue floor's store"));
        let head = store.head(&key).await.expect("queue read").expect("an event");
        assert_eq!(head.id, "widget:bench#widget#user-7:q1");
        // The next event takes the one before off the queue.
        assert_eq!(post(&queue, Some("user-7"), r#"{"text": "queued too", "client_id": "q2"}"#).await.0, 202);
        let ids = baton_tests::eventually(Duration::from_secs(5), "the first event off the queue", || async {
            let ids: Vec<String> = store.heads(&key, 10).await.expect("queue read").into_iter().map(|e| e.id).collect();
            (ids.len() == 1).then_some(ids)
        })
        .await;
        assert_eq!(ids, ["widget:bench#widget#user-7:q2"]);

        let journal = start(Target::Journal, &desk.url()).await;
        assert_eq!(post(&journal, Some("user-7"), r#"{"text": "journaled", "client_id": "j1"}"#).await.0, 202);
        // Answered only after the sync: the line is in the file by now.
        let written = std::fs::read_to_string(journal._dir.path().join("floor.journal")).expect("journal");
        let event: Event = serde_json::from_str(written.trim_end()).expect("one event a line");
        assert_eq!((event.id.as_str(), event.conversation), ("widget:bench#widget#user-7:j1", key));

        let relay = start(Target::Relay, &desk.url()).await;
        assert_eq!(post(&relay, Some("user-7"), r#"{"text": "relayed", "client_id": "r1"}"#).await.0, 202);
        let chat = tokio::time::timeout(Duration::from_secs(5), desk.first_to("/chat")).await.expect("relayed");
        assert_eq!(chat.body["body"], "relayed");
        assert_eq!(desk.count_to("/chat"), 1, "nothing but the relay posts to the desk");
    }
}
