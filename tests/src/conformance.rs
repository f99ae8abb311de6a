//! The conformance suite: what every `Store`, `EventQueue` and `Timers` implementation
//! must do, checked the same way against SQLite (`baton-embedded`) and DynamoDB/SQS
//! (`baton-aws` on moto). Each check takes a fresh, empty store.
//!
//! Run the store checks with [`store_conformance_tests!`](crate::store_conformance_tests),
//! which turns each into its own `#[tokio::test]`:
//!
//! ```ignore
//! async fn fresh() -> baton_tests::conformance::Fixture { ... }
//! baton_tests::store_conformance_tests!(fresh());
//! ```
//!
//! One documented difference is allowed: trace lines are in write order on SQLite and in
//! `at` order (then write order) on DynamoDB, so the checks write them with
//! non-decreasing times.

use baton_core::agent::Agent;
use baton_core::effect::{Effect, PendingEffect};
use baton_core::event::{Event, EventKind};
use baton_core::model::{Channel, ConversationKey, Millis, OutMessage, Role, ServiceStatus, Turn};
use baton_core::ports::{
    Commit, CommitOutcome, Completion, DeskLink, DeskStatusRecord, EventQueue, KeyValue, OutboxItem, Store, StoreError,
    Timers, TraceEntry,
};
use baton_core::session::{ArmedTimer, Session, State};
use baton_core::TimerKind;
use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

/// A fresh store plus whatever must live as long as it (a temp dir, a table name).
pub struct Fixture {
    pub store: Arc<dyn Store>,
    _guard: Box<dyn Any + Send>,
}

impl Fixture {
    pub fn new(store: Arc<dyn Store>, guard: impl Any + Send) -> Fixture {
        Fixture { store, _guard: Box::new(guard) }
    }
}

/// One `#[tokio::test]` per store check; `$make` is an expression evaluating to a future
/// of a fresh [`Fixture`] (evaluated once per test).
#[macro_export]
macro_rules! store_conformance_tests {
    ($make:expr) => {
        $crate::store_conformance_tests!(@cases $make;
            commit_versions_conflicts_and_seen,
            failed_commit_leaves_nothing_behind,
            completions_ride_with_a_commit_and_stay_when_it_is_refused,
            session_round_trips,
            outbox_order_complete_defer_and_due,
            agents_put_get_list,
            tokens_add_revoke,
            desk_links,
            desk_status,
            trace_order,
        );
    };
    (@cases $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let fixture: $crate::conformance::Fixture = $make.await;
                $crate::conformance::$name(&*fixture.store).await;
            }
        )*
    };
}

pub fn key(user: &str) -> ConversationKey {
    ConversationKey::new("demo", Channel::Widget, user).expect("key")
}

fn trace(at: i64, id: &str) -> TraceEntry {
    TraceEntry { at: Millis(at), what: "event".into(), id: id.into(), detail: format!("detail of {id}") }
}

fn send(text: &str) -> Effect {
    Effect::SendToUser { message: OutMessage::new(Role::Bot, text), reply_token: None, outside_window: false }
}

fn commit_of(k: &ConversationKey, expected: u64, event: &str, texts: &[&str]) -> Commit {
    let mut session = Session::new(k.clone());
    session.updated_at = Millis(1000 + expected as i64);
    session.unanswered = expected as u32;
    Commit {
        expected_version: expected,
        session,
        event_id: event.into(),
        effects: texts.iter().enumerate().map(|(i, t)| PendingEffect::for_event(event, i, send(t))).collect(),
        trace: trace(1000, event),
        keep_until: Millis(i64::MAX),
    }
}

fn texts(items: &[OutboxItem]) -> Vec<String> {
    items
        .iter()
        .map(|i| match &i.effect.effect {
            Effect::SendToUser { message, .. } => message.text.clone(),
            other => other.name().to_string(),
        })
        .collect()
}

async fn trace_ids(store: &dyn Store, k: &ConversationKey) -> Vec<String> {
    store.trace(k).await.expect("trace").into_iter().map(|t| t.id).collect()
}

/// Versions count up from 1; a stale version conflicts; a seen event id wins over a
/// version conflict; refused commits leave no effects and no trace.
pub async fn commit_versions_conflicts_and_seen(store: &dyn Store) {
    let k = key("u1");
    assert_eq!(store.load_session(&k).await.unwrap(), None);
    assert!(!store.is_seen(&k, "e1").await.unwrap());
    assert_eq!(store.commit(commit_of(&k, 0, "e1", &["a"])).await.unwrap(), CommitOutcome::Committed { version: 1 });
    let loaded = store.load_session(&k).await.unwrap().expect("stored");
    assert_eq!(loaded.version, 1);
    assert_eq!(loaded.session.updated_at, Millis(1000));
    assert!(store.is_seen(&k, "e1").await.unwrap());
    assert!(!store.is_seen(&k, "e2").await.unwrap());

    // Stale version: a session exists, so expecting 0 (or 5) conflicts.
    assert_eq!(store.commit(commit_of(&k, 0, "e2", &["b"])).await.unwrap(), CommitOutcome::VersionConflict);
    assert_eq!(store.commit(commit_of(&k, 5, "e2", &["b"])).await.unwrap(), CommitOutcome::VersionConflict);
    // The seen check comes first, even with a wrong version.
    assert_eq!(store.commit(commit_of(&k, 7, "e1", &["c"])).await.unwrap(), CommitOutcome::AlreadySeen);
    assert_eq!(store.commit(commit_of(&k, 1, "e1", &["c"])).await.unwrap(), CommitOutcome::AlreadySeen);
    // Expecting a version for a session that was never stored conflicts.
    assert_eq!(store.commit(commit_of(&key("new"), 3, "e9", &["c"])).await.unwrap(), CommitOutcome::VersionConflict);
    assert!(!store.is_seen(&key("new"), "e9").await.unwrap());
    assert_eq!(store.commit(commit_of(&k, 1, "e2", &["b"])).await.unwrap(), CommitOutcome::Committed { version: 2 });
    let loaded = store.load_session(&k).await.unwrap().expect("stored");
    assert_eq!((loaded.version, loaded.session.unanswered), (2, 1));
    // Only the two committed events left effects and trace lines.
    assert_eq!(texts(&store.pending_effects(&k).await.unwrap()), ["a", "b"]);
    assert_eq!(trace_ids(store, &k).await, ["e1", "e2"]);
    assert!(store.trace(&key("new")).await.unwrap().is_empty());
}

/// A commit the store rejects (two effects with one id) writes nothing at all; the same
/// event then commits cleanly.
pub async fn failed_commit_leaves_nothing_behind(store: &dyn Store) {
    let k = key("u1");
    let mut c = commit_of(&k, 0, "e1", &["a", "b"]);
    c.effects[1].id = c.effects[0].id.clone();
    assert!(matches!(store.commit(c).await, Err(StoreError::Unavailable(_))));
    assert_eq!(store.load_session(&k).await.unwrap(), None);
    assert!(!store.is_seen(&k, "e1").await.unwrap());
    assert!(store.pending_effects(&k).await.unwrap().is_empty());
    assert!(store.trace(&k).await.unwrap().is_empty());
    assert_eq!(
        store.commit(commit_of(&k, 0, "e1", &["a", "b"])).await.unwrap(),
        CommitOutcome::Committed { version: 1 }
    );
    assert_eq!(texts(&store.pending_effects(&k).await.unwrap()), ["a", "b"]);
}

fn done(id: &str, at: i64) -> Completion {
    Completion { effect_id: id.into(), trace: trace(at, id), keep_until: Millis(i64::MAX) }
}

/// `commit_after` completes effects that ran and commits the next event; the completions
/// are written even when the commit is refused, and one already gone writes no trace line.
pub async fn completions_ride_with_a_commit_and_stay_when_it_is_refused(store: &dyn Store) {
    let k = key("u1");
    store.commit(commit_of(&k, 0, "e1", &["a", "b"])).await.unwrap();
    let outcome = store.commit_after(vec![done("e1/0", 1100)], commit_of(&k, 1, "e2", &["c"])).await.unwrap();
    assert_eq!(outcome, CommitOutcome::Committed { version: 2 });
    assert_eq!(texts(&store.pending_effects(&k).await.unwrap()), ["b", "c"]);

    // A stale version: the event is not applied, the completion is written.
    let outcome = store.commit_after(vec![done("e1/1", 1200)], commit_of(&k, 1, "e3", &["d"])).await.unwrap();
    assert_eq!(outcome, CommitOutcome::VersionConflict);
    assert_eq!(texts(&store.pending_effects(&k).await.unwrap()), ["c"]);
    assert!(!store.is_seen(&k, "e3").await.unwrap());

    // A seen event: the same; e1/1 is gone already and writes nothing again.
    let outcome =
        store.commit_after(vec![done("e1/1", 1300), done("e2/0", 1300)], commit_of(&k, 2, "e1", &["e"])).await.unwrap();
    assert_eq!(outcome, CommitOutcome::AlreadySeen);
    assert!(store.pending_effects(&k).await.unwrap().is_empty());
    assert_eq!(store.load_session(&k).await.unwrap().expect("stored").version, 2);
    let mut ids = trace_ids(store, &k).await;
    ids.sort();
    assert_eq!(ids, ["e1", "e1/0", "e1/1", "e2", "e2/0"]);
}

/// Everything on a session survives the store, including an armed timer and its
/// removal; keys with `#`, non-ASCII and long user ids work; event ids with `:`, `#`, `/`.
pub async fn session_round_trips(store: &dyn Store) {
    let user = format!("u#1/é:{}", "x".repeat(150));
    let k = ConversationKey::new("demo", Channel::Telegram, &user).expect("key");
    let mut s = Session::new(k.clone());
    s.state = State::CollectingEmail { question: "Can I talk to a person?".into(), reason: "user asked".into() };
    s.history.push(Turn { role: Role::User, text: "Grüß Gott 你好 🚀".into(), at: Millis(5) });
    s.email = Some("a@example.com".into());
    s.language = Some("de".into());
    s.timer = Some(ArmedTimer { generation: 4, kind: TimerKind::Wait, due: Millis(60_000) });
    s.next_timer_generation = 5;
    s.summary = Some("summary".into());
    s.updated_at = Millis(7);
    let event_id = "tg:update#42/x:1";
    let commit = Commit {
        expected_version: 0,
        session: s.clone(),
        event_id: event_id.into(),
        effects: vec![PendingEffect::for_event(
            event_id,
            0,
            Effect::ScheduleTimer { generation: 4, due: Millis(60_000), kind: TimerKind::Wait },
        )],
        trace: trace(7, event_id),
        keep_until: Millis(i64::MAX),
    };
    assert_eq!(store.commit(commit).await.unwrap(), CommitOutcome::Committed { version: 1 });
    let loaded = store.load_session(&k).await.unwrap().expect("stored");
    assert_eq!(loaded.session, s);
    assert!(store.is_seen(&k, event_id).await.unwrap());
    let pending = store.pending_effects(&k).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].effect.id, format!("{event_id}/0"));
    assert_eq!(pending[0].attempts, 0);

    let mut s2 = s.clone();
    s2.timer = None;
    s2.state = State::Bot;
    let commit = Commit {
        expected_version: 1,
        session: s2.clone(),
        event_id: "tg:update#43".into(),
        effects: vec![],
        trace: trace(8, "tg:update#43"),
        keep_until: Millis(i64::MAX),
    };
    assert_eq!(store.commit(commit).await.unwrap(), CommitOutcome::Committed { version: 2 });
    assert_eq!(store.load_session(&k).await.unwrap().expect("stored").session, s2);
}

/// Effects stay in commit order; complete and defer touch only their own item and are
/// no-ops (no trace line) once it is gone; only a conversation's outbox head decides
/// whether it is due; deferred and watched effects are found when due.
pub async fn outbox_order_complete_defer_and_due(store: &dyn Store) {
    let k1 = key("u1");
    let k2 = key("u2");
    let k3 = key("u3");
    store.commit(commit_of(&k1, 0, "a", &["1", "2", "3"])).await.unwrap();
    store.commit(commit_of(&k2, 0, "b", &["x"])).await.unwrap();
    store.commit(commit_of(&k1, 1, "c", &["4"])).await.unwrap();
    let items = store.pending_effects(&k1).await.unwrap();
    assert_eq!(texts(&items), ["1", "2", "3", "4"]);
    assert_eq!(items[0].attempts, 0);
    assert_eq!(items[0].next_attempt_at, Millis(1000));
    assert_eq!(items[0].effect.id, "a/0");

    store.complete_effect(&k1, "a/0", trace(2000, "a/0"), Millis(i64::MAX)).await.unwrap();
    assert_eq!(texts(&store.pending_effects(&k1).await.unwrap()), ["2", "3", "4"]);
    // Completing again (or with the wrong conversation) writes nothing.
    store.complete_effect(&k1, "a/0", trace(2001, "again"), Millis(i64::MAX)).await.unwrap();
    store.complete_effect(&k2, "a/1", trace(2001, "wrong"), Millis(i64::MAX)).await.unwrap();
    store.defer_effect(&k1, "gone", 1, Millis(1), trace(2001, "gone"), Millis(i64::MAX)).await.unwrap();
    assert_eq!(store.pending_effects(&k1).await.unwrap().len(), 3);
    assert_eq!(trace_ids(store, &k1).await, ["a", "c", "a/0"]);
    assert_eq!(trace_ids(store, &k2).await, ["b"]);

    // Defer k1's head to 5000: k1 is not due before then, k2 is.
    store.defer_effect(&k1, "a/1", 1, Millis(5000), trace(2002, "a/1"), Millis(i64::MAX)).await.unwrap();
    let items = store.pending_effects(&k1).await.unwrap();
    assert_eq!((items[0].attempts, items[0].next_attempt_at), (1, Millis(5000)));
    assert_eq!((items[1].attempts, items[1].next_attempt_at), (0, Millis(1000)));
    assert_eq!(trace_ids(store, &k1).await.last().map(String::as_str), Some("a/1"));
    // k2's effect is new: a store may leave it unlisted until someone asks to watch it
    // (DynamoDB does); watching twice is the same as once.
    store.watch_pending(&k2).await.unwrap();
    store.watch_pending(&k2).await.unwrap();
    assert_eq!(store.conversations_with_due_effects(Millis(3000), 10).await.unwrap(), vec![k2.clone()]);
    assert!(store.conversations_with_due_effects(Millis(999), 10).await.unwrap().is_empty());
    // Deferring a later effect of k2 does not matter: only the head counts.
    store.commit(commit_of(&k2, 1, "d", &["y"])).await.unwrap();
    store.defer_effect(&k2, "d/0", 1, Millis(9000), trace(3000, "d/0"), Millis(i64::MAX)).await.unwrap();
    assert_eq!(store.conversations_with_due_effects(Millis(3000), 10).await.unwrap(), vec![k2.clone()]);
    let mut due = store.conversations_with_due_effects(Millis(5000), 10).await.unwrap();
    due.sort();
    assert_eq!(due, [k1.clone(), k2.clone()]);
    assert_eq!(store.conversations_with_due_effects(Millis(5000), 1).await.unwrap().len(), 1);
    assert!(store.conversations_with_due_effects(Millis(5000), 0).await.unwrap().is_empty());
    // A conversation with an empty outbox is never due; once k2's head is done, its
    // deferred second effect decides.
    assert!(!store.conversations_with_due_effects(Millis(i64::MAX), 10).await.unwrap().contains(&k3));
    store.complete_effect(&k2, "b/0", trace(3001, "b/0"), Millis(i64::MAX)).await.unwrap();
    assert_eq!(store.conversations_with_due_effects(Millis(5000), 10).await.unwrap(), vec![k1.clone()]);
    assert!(store.conversations_with_due_effects(Millis(9000), 10).await.unwrap().contains(&k2));
    for id in ["a/1", "a/2", "c/0"] {
        store.complete_effect(&k1, id, trace(4000, id), Millis(i64::MAX)).await.unwrap();
    }
    assert!(store.pending_effects(&k1).await.unwrap().is_empty());
    assert!(!store.conversations_with_due_effects(Millis(i64::MAX), 10).await.unwrap().contains(&k1));
}

/// Agents are upserted, read back whole, and listed by id.
pub async fn agents_put_get_list(store: &dyn Store) {
    assert!(store.list_agents().await.unwrap().is_empty());
    let a: Agent = serde_json::from_str(
        r#"{"id":"demo","name":"Demo","desk":{"kind":"webhook","url":"https://desk.example","username":"u","password":"p"}}"#,
    )
    .expect("agent");
    let b: Agent = serde_json::from_str(r#"{"id":"alpha"}"#).expect("agent");
    let c: Agent = serde_json::from_str(r#"{"id":"zulu","language":"de"}"#).expect("agent");
    store.put_agent(&a).await.unwrap();
    store.put_agent(&c).await.unwrap();
    store.put_agent(&b).await.unwrap();
    let mut a2 = a.clone();
    a2.name = "Renamed".into();
    store.put_agent(&a2).await.unwrap();
    assert_eq!(store.get_agent("demo").await.unwrap(), Some(a2.clone()));
    assert_eq!(store.get_agent("zulu").await.unwrap(), Some(c.clone()));
    assert_eq!(store.get_agent("none").await.unwrap(), None);
    assert_eq!(store.list_agents().await.unwrap(), vec![b, a2, c]);
}

/// Token hashes per agent in creation order; adding one again is fine, the same hash for
/// another agent is not; revoke keeps only `keep`.
pub async fn tokens_add_revoke(store: &dyn Store) {
    assert!(store.token_hashes("demo").await.unwrap().is_empty());
    store.add_token("demo", "h1", Millis(1)).await.unwrap();
    store.add_token("demo", "h3", Millis(3)).await.unwrap();
    store.add_token("demo", "h2", Millis(2)).await.unwrap();
    store.add_token("demo", "h1", Millis(4)).await.unwrap(); // idempotent
    store.add_token("alpha", "hb", Millis(1)).await.unwrap();
    assert!(store.add_token("alpha", "h2", Millis(5)).await.is_err());
    assert_eq!(store.token_hashes("demo").await.unwrap(), ["h1", "h2", "h3"]);
    assert_eq!(store.token_hashes("alpha").await.unwrap(), ["hb"]);
    assert_eq!(store.revoke_tokens("demo", Some("h2")).await.unwrap(), 2);
    assert_eq!(store.token_hashes("demo").await.unwrap(), ["h2"]);
    assert_eq!(store.token_hashes("alpha").await.unwrap(), ["hb"]);
    assert_eq!(store.revoke_tokens("alpha", None).await.unwrap(), 1);
    assert!(store.token_hashes("alpha").await.unwrap().is_empty());
    assert_eq!(store.revoke_tokens("alpha", None).await.unwrap(), 0);
    // A revoked hash is free again, for any agent.
    store.add_token("alpha", "h1", Millis(6)).await.unwrap();
    assert_eq!(store.token_hashes("alpha").await.unwrap(), ["h1"]);
}

/// Desk links are found by desk conversation (per agent) and by handoff; a link reusing
/// either replaces the old one completely.
pub async fn desk_links(store: &dyn Store) {
    let k = ConversationKey::new("demo", Channel::Telegram, "42").expect("key");
    let link = DeskLink {
        agent: "demo".into(),
        desk_conversation_id: "desk-1".into(),
        handoff_id: "h-1".into(),
        conversation: k.clone(),
    };
    store.put_desk_link(&link, Millis(i64::MAX)).await.unwrap();
    assert_eq!(store.desk_link("demo", "desk-1").await.unwrap(), Some(link.clone()));
    assert_eq!(store.desk_link("other", "desk-1").await.unwrap(), None);
    assert_eq!(store.desk_link_for_handoff("h-1").await.unwrap(), Some(link.clone()));
    assert_eq!(store.desk_link_for_handoff("h-2").await.unwrap(), None);
    store.put_desk_link(&link, Millis(i64::MAX)).await.unwrap(); // idempotent
    assert_eq!(store.desk_link("demo", "desk-1").await.unwrap(), Some(link.clone()));

    // The same desk conversation for a new handoff: the old handoff no longer finds it.
    let k2 = ConversationKey::new("demo", Channel::Line, "U2").expect("key");
    let relinked = DeskLink { handoff_id: "h-2".into(), conversation: k2.clone(), ..link.clone() };
    store.put_desk_link(&relinked, Millis(i64::MAX)).await.unwrap();
    assert_eq!(store.desk_link("demo", "desk-1").await.unwrap(), Some(relinked.clone()));
    assert_eq!(store.desk_link_for_handoff("h-2").await.unwrap(), Some(relinked.clone()));
    assert_eq!(store.desk_link_for_handoff("h-1").await.unwrap(), None);

    // The same handoff moved to a new desk conversation: the old one no longer finds it.
    let moved = DeskLink { desk_conversation_id: "desk/2#x".into(), ..relinked.clone() };
    store.put_desk_link(&moved, Millis(i64::MAX)).await.unwrap();
    assert_eq!(store.desk_link_for_handoff("h-2").await.unwrap(), Some(moved.clone()));
    assert_eq!(store.desk_link("demo", "desk/2#x").await.unwrap(), Some(moved.clone()));
    assert_eq!(store.desk_link("demo", "desk-1").await.unwrap(), None);

    // Another agent may use the same desk conversation id.
    let other = DeskLink {
        agent: "alpha".into(),
        desk_conversation_id: "desk/2#x".into(),
        handoff_id: "h-3".into(),
        conversation: ConversationKey::new("alpha", Channel::Widget, "w").expect("key"),
    };
    store.put_desk_link(&other, Millis(i64::MAX)).await.unwrap();
    assert_eq!(store.desk_link("alpha", "desk/2#x").await.unwrap(), Some(other));
    assert_eq!(store.desk_link("demo", "desk/2#x").await.unwrap(), Some(moved));
}

/// Desk status per agent; the last write wins.
pub async fn desk_status(store: &dyn Store) {
    assert_eq!(store.desk_status("demo").await.unwrap(), None);
    let st = DeskStatusRecord { status: ServiceStatus::Available, detail: "ok".into(), checked_at: Millis(9) };
    store.set_desk_status("demo", &st).await.unwrap();
    assert_eq!(store.desk_status("demo").await.unwrap(), Some(st.clone()));
    let st2 = DeskStatusRecord {
        status: ServiceStatus::Unavailable,
        detail: "401 from the desk".into(),
        checked_at: Millis(10),
    };
    store.set_desk_status("demo", &st2).await.unwrap();
    assert_eq!(store.desk_status("demo").await.unwrap(), Some(st2));
    assert_eq!(store.desk_status("alpha").await.unwrap(), None);
}

/// Trace lines come back whole, per conversation, in write order (with times that never
/// go backwards; several lines may share a millisecond).
pub async fn trace_order(store: &dyn Store) {
    let k = key("t");
    let mut expected = Vec::new();
    let mut version = 0;
    for (i, at) in [100, 100, 100, 250, 250, 1_000_000_000_000i64].into_iter().enumerate() {
        let id = format!("ev-{i}");
        let mut c = commit_of(&k, version, &id, &["m"]);
        c.trace = TraceEntry {
            at: Millis(at),
            what: "event".into(),
            id: id.clone(),
            detail: format!("user_message: bot -> bot; effects: [send_to_user] #{i}"),
        };
        expected.push(c.trace.clone());
        match store.commit(c).await.unwrap() {
            CommitOutcome::Committed { version: v } => version = v,
            other => panic!("commit {i}: {other:?}"),
        }
        let effect = TraceEntry {
            at: Millis(at),
            what: "effect".into(),
            id: format!("{id}/0"),
            detail: "send_to_user: delivered".into(),
        };
        store.complete_effect(&k, &format!("{id}/0"), effect.clone(), Millis(i64::MAX)).await.unwrap();
        expected.push(effect);
    }
    assert_eq!(store.trace(&k).await.unwrap(), expected);
    assert!(store.trace(&key("none")).await.unwrap().is_empty());
}

fn by_conversation(events: Vec<Event>) -> BTreeMap<ConversationKey, Vec<String>> {
    let mut out: BTreeMap<ConversationKey, Vec<String>> = BTreeMap::new();
    for e in events {
        out.entry(e.conversation).or_default().push(e.id);
    }
    out
}

/// Events come out per conversation in the order they went in, whole; an event enqueued
/// again while the first copy is still queued is not queued twice. `drain` must return
/// (and remove) every queued event, keeping each conversation's order.
pub async fn queue_keeps_order_and_drops_duplicates<F, Fut>(queue: &dyn EventQueue, mut drain: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Vec<Event>>,
{
    let (a, b) = (key("qa"), key("qb"));
    let ev = |id: &str, k: &ConversationKey, text: &str| {
        Event::new(
            id,
            k.clone(),
            Millis(10),
            EventKind::UserMessage {
                text: text.into(),
                email: None,
                language: Some("de".into()),
                reply: None,
                name: None,
            },
        )
    };
    let first = vec![ev("w:1", &a, "eins"), ev("w:2", &b, "zwei"), ev("w:3", &a, "drei")];
    queue.enqueue(first.clone()).await.unwrap();
    queue.enqueue(vec![ev("w:1", &a, "eins"), ev("w:4", &a, "vier")]).await.unwrap();
    queue.enqueue(Vec::new()).await.unwrap();
    let got = drain().await;
    assert!(got.contains(&first[0]) && got.contains(&first[1]) && got.contains(&first[2]), "{got:?}");
    let expected = BTreeMap::from([
        (a.clone(), vec!["w:1".to_string(), "w:3".into(), "w:4".into()]),
        (b.clone(), vec!["w:2".to_string()]),
    ]);
    assert_eq!(by_conversation(got), expected);
    assert!(drain().await.is_empty());
}

/// A due timer fires as `TimerFired { generation }` with the id
/// `timer:{conversation}:{generation}` at the firing time, once; `cancel` succeeds.
/// `fire(now)` must fire what is due at `now` and return (and remove) the queued events.
pub async fn due_timer_fires_once<F, Fut>(timers: &dyn Timers, now: Millis, mut fire: F)
where
    F: FnMut(Millis) -> Fut,
    Fut: Future<Output = Vec<Event>>,
{
    let k = key("timer");
    timers.schedule(&k, 7, Millis(now.0 - 1)).await.unwrap();
    let fired = fire(now).await;
    assert_eq!(
        fired,
        vec![Event::new(format!("timer:{k}:7"), k.clone(), now, EventKind::TimerFired { generation: 7 })]
    );
    assert!(fire(now).await.is_empty());
    timers.cancel(&k).await.unwrap();
    timers.cancel(&key("never-armed")).await.unwrap();
}

/// `KeyValue`: values expire, `put` overwrites, `put_if_absent` is a lease only one of many
/// concurrent callers gets, and it can be taken again once expired.
pub async fn key_value_expires_and_leases(kv: Arc<dyn KeyValue>) {
    let now = Millis(1_000_000);
    assert_eq!(kv.get("kv-a", now).await.unwrap(), None);
    kv.put("kv-a", "one", Millis(now.0 + 10)).await.unwrap();
    assert_eq!(kv.get("kv-a", now).await.unwrap().as_deref(), Some("one"));
    kv.put("kv-a", "two", Millis(now.0 + 10)).await.unwrap();
    assert_eq!(kv.get("kv-a", now).await.unwrap().as_deref(), Some("two"));
    assert_eq!(kv.get("kv-a", Millis(now.0 + 10)).await.unwrap(), None, "expired at expires_at");
    kv.delete("kv-a").await.unwrap();
    kv.delete("kv-never").await.unwrap();
    assert_eq!(kv.get("kv-a", now).await.unwrap(), None);

    // Ten concurrent takers: exactly one lease.
    let takers: Vec<_> = (0..10)
        .map(|i| {
            let kv = kv.clone();
            tokio::spawn(async move { kv.put_if_absent("kv-lease", &format!("p{i}"), now, Millis(now.0 + 30)).await })
        })
        .collect();
    let mut won = 0;
    for t in takers {
        if t.await.unwrap().unwrap() {
            won += 1;
        }
    }
    assert_eq!(won, 1);
    assert!(!kv.put_if_absent("kv-lease", "late", Millis(now.0 + 29), Millis(now.0 + 60)).await.unwrap());
    // Expired: the next taker gets it and its value.
    assert!(kv.put_if_absent("kv-lease", "next", Millis(now.0 + 30), Millis(now.0 + 60)).await.unwrap());
    assert_eq!(kv.get("kv-lease", Millis(now.0 + 31)).await.unwrap().as_deref(), Some("next"));
}

/// A data-subject export shows everything kept about one conversation; the erasure removes
/// it (session, messages, trace, pending effects, desk links) and nothing of any other
/// conversation, and running it again finds nothing. Seen event ids stay on purpose.
pub async fn export_and_erase_one_conversation(store: &dyn Store, log: &dyn baton_core::ports::MessageLog) {
    let keep = Millis(i64::MAX);
    let (gone, kept) = (key("erase-me"), key("keep-me"));
    for (k, event) in [(&gone, "e-gone"), (&kept, "e-kept")] {
        let mut session = Session::new(k.clone());
        session.history.push(Turn { role: Role::User, text: format!("my phone is +385 91 {event}"), at: Millis(5) });
        let commit = Commit {
            expected_version: 0,
            session,
            event_id: event.into(),
            effects: vec![PendingEffect::for_event(event, 0, send("pending answer"))],
            trace: trace(1000, event),
            keep_until: keep,
        };
        assert!(matches!(store.commit(commit).await.unwrap(), CommitOutcome::Committed { .. }));
        log.append(k, &format!("{event}/m"), &OutMessage::new(Role::Bot, "an answer"), Millis(1001), keep)
            .await
            .unwrap();
        let link = DeskLink {
            agent: "demo".into(),
            desk_conversation_id: format!("desk-{event}"),
            handoff_id: format!("h-{event}"),
            conversation: k.clone(),
        };
        store.put_desk_link(&link, keep).await.unwrap();
    }

    let data = store.export_conversation(&gone).await.unwrap();
    assert_eq!(data.conversation, gone.to_string());
    assert_eq!(data.session.as_ref().map(|s| s.history.len()), Some(1));
    assert_eq!(data.messages.len(), 1);
    assert_eq!(data.messages[0].message.text, "an answer");
    assert_eq!(data.trace.len(), 1);
    assert_eq!(data.desk_links.len(), 1);
    assert_eq!(data.desk_links[0].handoff_id, "h-e-gone");
    let json = serde_json::to_string(&data).unwrap();
    assert!(json.contains("+385 91 e-gone") && !json.contains("e-kept"), "{json}");

    // Session, message, trace line, pending effect, desk link (DynamoDB counts its lookup items too).
    assert!(store.erase_conversation(&gone).await.unwrap() >= 5);
    let after = store.export_conversation(&gone).await.unwrap();
    assert!(after.session.is_none(), "{after:?}");
    assert!(after.messages.is_empty() && after.trace.is_empty() && after.desk_links.is_empty(), "{after:?}");
    assert!(store.pending_effects(&gone).await.unwrap().is_empty());
    assert_eq!(store.desk_link("demo", "desk-e-gone").await.unwrap(), None);
    assert_eq!(store.desk_link_for_handoff("h-e-gone").await.unwrap(), None);
    assert!(store.is_seen(&gone, "e-gone").await.unwrap(), "a replayed event must not start it again");
    assert_eq!(store.erase_conversation(&gone).await.unwrap(), 0);

    let other = store.export_conversation(&kept).await.unwrap();
    assert!(other.session.is_some());
    assert_eq!((other.messages.len(), other.trace.len(), other.desk_links.len()), (1, 1, 1));
    assert_eq!(store.pending_effects(&kept).await.unwrap().len(), 1);
    assert!(store.desk_link_for_handoff("h-e-kept").await.unwrap().is_some());
}
