//! Durable event queue with per-conversation order and at-least-once delivery.
//!
//! `enqueue` writes its rows through the database's group-commit writer and returns after
//! the commit: concurrent webhooks share fsyncs without any of them being acknowledged
//! before its event is on disk.
//!
//! Consumers: [`EmbeddedQueue::subscribe`] yields the conversation of every newly queued
//! event after its commit; the dispatcher then drains that conversation in order: it reads
//! its oldest events with [`EmbeddedQueue::heads`], and the commit that applies them takes
//! them off the queue (an event not applied, a duplicate, leaves with
//! [`EmbeddedQueue::ack`]). At start-up, [`EmbeddedQueue::conversations_with_events`] finds
//! what was queued before a crash. An event stays queued until it is applied or acked: at
//! least once.

use crate::{decode, encode, limit_param, parse_key, sql, Db};
use async_trait::async_trait;
use baton_core::event::Event;
use baton_core::model::ConversationKey;
use baton_core::ports::{EventQueue, QueueError, StoreError};
use rusqlite::{params, Connection};
use std::sync::Arc;
use tokio::sync::mpsc;

/// One event, encoded by the caller so the writer thread only does SQL.
pub(crate) struct EventRow {
    pub id: String,
    pub key: ConversationKey,
    pub conversation: String,
    pub json: String,
    pub at: i64,
}

impl EventRow {
    pub fn new(event: &Event) -> Result<EventRow, StoreError> {
        Ok(EventRow {
            id: event.id.clone(),
            key: event.conversation.clone(),
            conversation: event.conversation.to_string(),
            json: encode(event)?,
            at: event.at.0,
        })
    }
}

/// Insert one event unless an event with its id is still queued for its conversation; true
/// when inserted. The queue is keyed by (conversation, seq): the id is looked for among the
/// conversation's few queued rows, not in an index of every id (a random page per insert).
/// (A copy queued for another conversation is turned away by the commit's seen ids.)
pub(crate) fn insert_event(c: &Connection, row: &EventRow) -> Result<bool, StoreError> {
    let queued = c
        .prepare_cached("SELECT EXISTS(SELECT 1 FROM queue WHERE conversation = ?1 AND event_id = ?2)")
        .map_err(sql)?
        .query_row(params![row.conversation, row.id], |r| r.get::<_, bool>(0))
        .map_err(sql)?;
    if queued {
        return Ok(false);
    }
    c.prepare_cached(
        "INSERT INTO queue(conversation, seq, event_id, json, at)
         VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM queue WHERE conversation = ?1), ?2, ?3, ?4)",
    )
    .map_err(sql)?
    .execute(params![row.conversation, row.id, row.json, row.at])
    .map_err(sql)?;
    Ok(true)
}

/// Take one event off a conversation's queue; how many rows went (0 or 1).
pub(crate) fn unqueue(c: &Connection, conversation: &str, event_id: &str) -> Result<usize, StoreError> {
    c.prepare_cached("DELETE FROM queue WHERE conversation = ?1 AND event_id = ?2")
        .map_err(sql)?
        .execute(params![conversation, event_id])
        .map_err(sql)
}

/// The durable queue: a view of the database's `queue` table. Cheap to clone.
#[derive(Clone, Debug)]
pub struct EmbeddedQueue {
    db: Arc<Db>,
}

impl EmbeddedQueue {
    pub fn new(db: Arc<Db>) -> EmbeddedQueue {
        EmbeddedQueue { db }
    }

    /// Conversation keys of newly queued events, sent after their commit (by `enqueue` and
    /// by [`crate::EmbeddedTimers::fire_due`]), at most once per conversation per commit.
    /// A key means "this conversation has queued events": drain it with `head`/`ack`.
    /// Events that were already queued when subscribing are found with
    /// `conversations_with_events`. Dropping the receiver unsubscribes.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<ConversationKey> {
        self.db.subscribe()
    }

    /// The oldest queued event of `key`. A stored event that cannot be decoded is reported
    /// as `Corrupt` with the event id as key, so the caller can log and `ack` it.
    pub async fn head(&self, key: &ConversationKey) -> Result<Option<Event>, StoreError> {
        Ok(self.heads(key, 1).await?.pop())
    }

    /// The oldest `n` queued events of `key`, in order. An event that cannot be decoded ends
    /// the list before it, or is reported as [`EmbeddedQueue::head`] does when it is first.
    pub async fn heads(&self, key: &ConversationKey, n: usize) -> Result<Vec<Event>, StoreError> {
        let conv = key.to_string();
        let limit = limit_param(n);
        self.db
            .lookup(move |c| {
                let mut stmt = c
                    .prepare_cached("SELECT event_id, json FROM queue WHERE conversation = ?1 ORDER BY seq LIMIT ?2")
                    .map_err(sql)?;
                let rows = stmt
                    .query_map(params![conv, limit], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                    .map_err(sql)?;
                let mut out = Vec::new();
                for row in rows {
                    let (id, json) = row.map_err(sql)?;
                    match decode(&id, &json) {
                        Ok(event) => out.push(event),
                        Err(e) if out.is_empty() => return Err(e),
                        Err(_) => break,
                    }
                }
                Ok(out)
            })
            .await
    }

    /// Remove a processed event of `key`. Acking an unknown id is a no-op.
    pub async fn ack(&self, key: &ConversationKey, event_id: &str) -> Result<(), StoreError> {
        let (conv, id) = (key.to_string(), event_id.to_string());
        self.db.write(move |c| unqueue(c, &conv, &id).map(|_| ())).await
    }

    /// Conversations with queued events, the one with the oldest event first.
    pub async fn conversations_with_events(&self, limit: usize) -> Result<Vec<ConversationKey>, StoreError> {
        let limit = limit_param(limit);
        self.db
            .read(move |c| {
                let mut stmt = c
                    .prepare_cached(
                        "SELECT conversation FROM queue GROUP BY conversation ORDER BY MIN(at), conversation LIMIT ?1",
                    )
                    .map_err(sql)?;
                let rows = stmt.query_map([limit], |r| r.get::<_, String>(0)).map_err(sql)?;
                let mut out = Vec::new();
                for row in rows {
                    out.push(parse_key(&row.map_err(sql)?)?);
                }
                Ok(out)
            })
            .await
    }

    /// Events queued and not yet acked.
    pub async fn depth(&self) -> Result<u64, StoreError> {
        self.db
            .read(|c| {
                let n: i64 = c.query_row("SELECT COUNT(*) FROM queue", [], |r| r.get(0)).map_err(sql)?;
                Ok(n.max(0) as u64)
            })
            .await
    }
}

#[async_trait]
impl EventQueue for EmbeddedQueue {
    /// Returns once the events are committed. An event whose id is still queued is
    /// accepted without a second copy.
    async fn enqueue(&self, events: Vec<Event>) -> Result<(), QueueError> {
        if events.is_empty() {
            return Ok(());
        }
        let rows =
            events.iter().map(EventRow::new).collect::<Result<Vec<_>, _>>().map_err(|e| QueueError(e.to_string()))?;
        let (inserted, events) = self
            .db
            .write(move |c| {
                let tx = c.savepoint().map_err(sql)?;
                let mut inserted: Vec<ConversationKey> = Vec::new();
                let mut events = 0;
                for row in &rows {
                    if insert_event(&tx, row)? {
                        events += 1;
                        if !inserted.contains(&row.key) {
                            inserted.push(row.key.clone());
                        }
                    }
                }
                tx.commit().map_err(sql)?;
                Ok((inserted, events))
            })
            .await
            .map_err(|e| QueueError(e.to_string()))?;
        self.db.notify_enqueued(&inserted, events);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{key, open_temp};
    use baton_core::event::EventKind;
    use baton_core::model::Millis;
    use baton_core::ports::{Commit, CommitOutcome, Store, TraceEntry};
    use baton_core::session::Session;

    fn msg(id: &str, k: &ConversationKey, text: &str) -> Event {
        Event::new(
            id,
            k.clone(),
            Millis(1),
            EventKind::UserMessage { text: text.into(), email: None, language: None, reply: None, name: None },
        )
    }

    async fn drain(q: &EmbeddedQueue, k: &ConversationKey) -> Vec<String> {
        let mut ids = Vec::new();
        while let Some(e) = q.head(k).await.unwrap() {
            q.ack(k, &e.id).await.unwrap();
            ids.push(e.id);
        }
        ids
    }

    #[tokio::test]
    async fn per_conversation_order_and_dedupe() {
        let (_d, db) = open_temp();
        let q = EmbeddedQueue::new(db.clone());
        let (a, b) = (key("a"), key("b"));
        q.enqueue(vec![msg("a1", &a, "x"), msg("b1", &b, "x"), msg("a2", &a, "y")]).await.unwrap();
        q.enqueue(vec![msg("a3", &a, "z"), msg("b2", &b, "z")]).await.unwrap();
        // A retried webhook while the first copy is still queued: no second copy, and the
        // original keeps its place.
        q.enqueue(vec![msg("a1", &a, "retried")]).await.unwrap();
        q.enqueue(vec![]).await.unwrap();
        assert_eq!(q.depth().await.unwrap(), 5);
        assert_eq!(db.events_queued(), 5, "the copy is not counted");
        assert_eq!(q.conversations_with_events(10).await.unwrap(), [a.clone(), b.clone()]);
        assert_eq!(q.conversations_with_events(1).await.unwrap(), vec![a.clone()]);
        let head = q.head(&a).await.unwrap().unwrap();
        assert_eq!(head.id, "a1");
        assert!(matches!(head.kind, EventKind::UserMessage { ref text, .. } if text == "x"));
        assert_eq!(drain(&q, &a).await, ["a1", "a2", "a3"]);
        assert_eq!(drain(&q, &b).await, ["b1", "b2"]);
        assert_eq!(q.depth().await.unwrap(), 0);
        assert!(q.conversations_with_events(10).await.unwrap().is_empty());
        // Once acked, the same id may be queued again (the worker's seen set drops it).
        q.enqueue(vec![msg("a1", &a, "late")]).await.unwrap();
        assert_eq!(q.depth().await.unwrap(), 1);
    }

    /// Events queued in the layout of an earlier build (a rowid table with a unique index on
    /// the event id) keep their order after the upgrade; the conversation with the oldest
    /// event still comes first, and a copy of a queued event is still turned away.
    #[tokio::test]
    async fn events_queued_by_an_earlier_layout_keep_their_order() {
        let (dir, db) = open_temp();
        drop(db);
        let path = dir.path().join("baton.db");
        let (a, b) = (key("a"), key("b"));
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "DROP TABLE queue;
                 CREATE TABLE queue (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE,
                                     conversation TEXT NOT NULL, json TEXT NOT NULL, at INTEGER NOT NULL);
                 CREATE INDEX queue_by_conversation ON queue(conversation, seq);",
            )
            .unwrap();
            for (seq, id, k, at) in [(3, "a1", &a, 20), (4, "b1", &b, 10), (5, "a2", &a, 30)] {
                let mut event = msg(id, k, id);
                event.at = Millis(at);
                c.execute(
                    "INSERT INTO queue(seq, event_id, conversation, json, at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![seq, id, k.to_string(), encode(&event).unwrap(), at],
                )
                .unwrap();
            }
            c.pragma_update(None, "user_version", 5).unwrap();
        }
        let q = EmbeddedQueue::new(Db::open(&path).unwrap());
        assert_eq!(q.conversations_with_events(10).await.unwrap(), [b.clone(), a.clone()], "oldest event first");
        q.enqueue(vec![msg("a1", &a, "again"), msg("a3", &a, "new")]).await.unwrap();
        assert_eq!(q.depth().await.unwrap(), 4, "the copy of a1 was not queued");
        assert_eq!(q.head(&a).await.unwrap().unwrap().id, "a1");
        assert_eq!(drain(&q, &a).await, ["a1", "a2", "a3"]);
        assert_eq!(drain(&q, &b).await, ["b1"]);
    }

    fn commit_of(event: &Event, expected_version: u64) -> Commit {
        Commit {
            expected_version,
            session: Session::new(event.conversation.clone()),
            event_id: event.id.clone(),
            effects: Vec::new(),
            trace: TraceEntry { at: Millis(1), what: "event".into(), id: event.id.clone(), detail: String::new() },
            keep_until: Millis(i64::MAX),
        }
    }

    #[tokio::test]
    async fn a_commit_takes_its_event_off_the_queue_and_a_refused_one_does_not() {
        let (_d, db) = open_temp();
        let q = EmbeddedQueue::new(db.clone());
        let a = key("a");
        let (a1, a2) = (msg("a1", &a, "x"), msg("a2", &a, "y"));
        q.enqueue(vec![a1.clone(), a2.clone()]).await.unwrap();
        assert_eq!(db.commit(commit_of(&a1, 0)).await.unwrap(), CommitOutcome::Committed { version: 1 });
        assert_eq!(q.head(&a).await.unwrap().map(|e| e.id).as_deref(), Some("a2"));
        // A stale version and an event already seen are refused: the event stays queued.
        assert_eq!(db.commit(commit_of(&a2, 0)).await.unwrap(), CommitOutcome::VersionConflict);
        q.enqueue(vec![a1.clone()]).await.unwrap();
        assert_eq!(db.commit(commit_of(&a1, 1)).await.unwrap(), CommitOutcome::AlreadySeen);
        assert_eq!(q.depth().await.unwrap(), 2);
        assert_eq!(db.commit(commit_of(&a2, 1)).await.unwrap(), CommitOutcome::Committed { version: 2 });
        assert_eq!(drain(&q, &a).await, ["a1"]);
    }

    #[tokio::test]
    async fn subscribers_hear_only_new_events_after_commit() {
        let (_d, db) = open_temp();
        let q = EmbeddedQueue::new(db);
        let mut rx = q.subscribe();
        let (a, b) = (key("a"), key("b"));
        q.enqueue(vec![msg("a1", &a, "x"), msg("a2", &a, "y"), msg("b1", &b, "x")]).await.unwrap();
        // enqueue returned after the commit, and notification precedes the reply.
        assert_eq!(rx.try_recv().unwrap(), a);
        assert_eq!(rx.try_recv().unwrap(), b);
        assert!(rx.try_recv().is_err());
        q.enqueue(vec![msg("a1", &a, "dup")]).await.unwrap();
        assert!(rx.try_recv().is_err(), "a duplicate is not news");
        drop(rx);
        // A dropped subscriber does not break enqueue.
        q.enqueue(vec![msg("a3", &a, "z")]).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_enqueues_share_commits() {
        let (_d, db) = open_temp();
        let q = EmbeddedQueue::new(db.clone());
        let start = Arc::new(tokio::sync::Barrier::new(200));
        let mut tasks = Vec::new();
        for i in 0..200 {
            let q = q.clone();
            let start = start.clone();
            tasks.push(tokio::spawn(async move {
                let k = key(&format!("u{}", i % 7));
                start.wait().await;
                q.enqueue(vec![msg(&format!("e{i}"), &k, "hi")]).await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(()));
        }
        let commits = db.group_commits();
        assert!((1..200).contains(&commits), "expected group commit, got {commits} commits");
        assert_eq!(q.depth().await.unwrap(), 200);
        let mut seen = std::collections::HashSet::new();
        for u in 0..7 {
            for id in drain(&q, &key(&format!("u{u}"))).await {
                assert!(seen.insert(id));
            }
        }
        assert_eq!(seen.len(), 200);
    }
}
