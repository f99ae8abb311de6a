//! The shared conformance suite (`baton_tests::conformance`) against the SQLite adapters,
//! so the embedded and the AWS adapters are held to the same behaviour.

use baton_core::event::Event;
use baton_core::model::Millis;
use baton_embedded::{Db, EmbeddedQueue, EmbeddedTimers};
use baton_tests::conformance::{self, Fixture};
use std::sync::Arc;

fn open() -> (tempfile::TempDir, Arc<Db>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(&dir.path().join("baton.db")).expect("open");
    (dir, db)
}

async fn fresh() -> Fixture {
    let (dir, db) = open();
    Fixture::new(db, dir)
}

baton_tests::store_conformance_tests!(fresh());

/// Every queued event, conversation by conversation, acked as read.
async fn drain(queue: &EmbeddedQueue) -> Vec<Event> {
    let mut out = Vec::new();
    for key in queue.conversations_with_events(1000).await.expect("conversations") {
        while let Some(event) = queue.head(&key).await.expect("head") {
            queue.ack(&key, &event.id).await.expect("ack");
            out.push(event);
        }
    }
    out
}

#[tokio::test]
async fn queue_keeps_order_and_drops_duplicates() {
    let (_dir, db) = open();
    let queue = EmbeddedQueue::new(db);
    conformance::queue_keeps_order_and_drops_duplicates(&queue, || drain(&queue)).await;
}

#[tokio::test]
async fn due_timer_fires_once() {
    let (_dir, db) = open();
    let queue = EmbeddedQueue::new(db.clone());
    let timers = EmbeddedTimers::new(db);
    conformance::due_timer_fires_once(&timers, Millis(50_000), |now| {
        let (timers, queue) = (&timers, &queue);
        async move {
            timers.fire_due(now).await.expect("fire");
            drain(queue).await
        }
    })
    .await;
}

#[tokio::test]
async fn key_value_expires_and_leases() {
    let (_dir, db) = open();
    conformance::key_value_expires_and_leases(db).await;
}

#[tokio::test]
async fn export_and_erase_one_conversation() {
    let (_dir, db) = open();
    conformance::export_and_erase_one_conversation(db.as_ref(), db.as_ref()).await;
}

/// The hourly purge deletes conversations whose retention has ended, nothing else.
#[tokio::test]
async fn purge_deletes_conversations_past_their_retention() {
    use baton_core::ports::{Commit, EventQueue, Store, TraceEntry};
    use baton_core::session::Session;
    let (_dir, db) = open();
    for (user, keep_until) in [("old", 5_000), ("fresh", 50_000)] {
        let k = conformance::key(user);
        let commit = Commit {
            expected_version: 0,
            session: Session::new(k.clone()),
            event_id: format!("e-{user}"),
            effects: vec![],
            trace: TraceEntry { at: Millis(1), what: "event".into(), id: user.into(), detail: String::new() },
            keep_until: Millis(keep_until),
        };
        db.commit(commit).await.unwrap();
    }
    assert_eq!(db.purge_expired(Millis(4_999), 100).await.unwrap(), 0);
    // An accepted event waiting for "old" keeps it until the event is applied.
    let queue = EmbeddedQueue::new(db.clone());
    let waiting = Event::new("late", conformance::key("old"), Millis(9_000), baton_core::EventKind::UserEnded);
    queue.enqueue(vec![waiting]).await.unwrap();
    assert_eq!(db.purge_expired(Millis(10_000), 100).await.unwrap(), 0);
    assert_eq!(drain(&queue).await.len(), 1);
    assert_eq!(db.purge_expired(Millis(10_000), 100).await.unwrap(), 1);
    assert!(db.load_session(&conformance::key("old")).await.unwrap().is_none());
    assert!(db.trace(&conformance::key("old")).await.unwrap().is_empty());
    assert!(db.load_session(&conformance::key("fresh")).await.unwrap().is_some());
    assert_eq!(db.purge_expired(Millis(10_000), 100).await.unwrap(), 0);
}
