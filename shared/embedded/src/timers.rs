//! Durable timers: one row per conversation (its single timer). A timer loop sleeps until
//! `next_due` or until `changed` is notified, then calls `fire_due`, which moves due timers
//! into the queue as `TimerFired` events in one transaction, so a timer is neither lost
//! nor fired twice across a crash. A stale generation is ignored by the session itself.

use crate::queue::{insert_event, EventRow};
use crate::{parse_key, sql, to_i64, Db};
use async_trait::async_trait;
use baton_core::event::{Event, EventKind};
use baton_core::model::{ConversationKey, Millis};
use baton_core::ports::{StoreError, Timers};
use rusqlite::params;
use std::sync::Arc;
use tokio::sync::Notify;

#[derive(Clone, Debug)]
pub struct EmbeddedTimers {
    db: Arc<Db>,
}

impl EmbeddedTimers {
    pub fn new(db: Arc<Db>) -> EmbeddedTimers {
        EmbeddedTimers { db }
    }

    /// Notified (with a stored permit, so no wake-up is lost) whenever a timer is scheduled:
    /// the timer loop waits on it next to its sleep and then re-reads `next_due`.
    pub fn changed(&self) -> Arc<Notify> {
        self.db.timers_changed()
    }

    /// Fire every timer due at `now`: delete it and queue
    /// `TimerFired { generation }` with id `timer:{conversation}:{generation}`, all in one
    /// transaction; then notify queue subscribers. Returns the fired conversations.
    pub async fn fire_due(&self, now: Millis) -> Result<Vec<ConversationKey>, StoreError> {
        let (fired, inserted) = self
            .db
            .write(move |c| {
                let tx = c.savepoint().map_err(sql)?;
                let due: Vec<(String, i64)> = {
                    let mut stmt = tx
                        .prepare_cached("SELECT conversation, generation FROM timers WHERE due <= ?1 ORDER BY due")
                        .map_err(sql)?;
                    let rows = stmt.query_map([now.0], |r| Ok((r.get(0)?, r.get(1)?))).map_err(sql)?;
                    rows.collect::<Result<_, _>>().map_err(sql)?
                };
                let mut fired = Vec::new();
                let mut inserted = Vec::new();
                for (conv, generation) in due {
                    tx.prepare_cached("DELETE FROM timers WHERE conversation = ?1")
                        .map_err(sql)?
                        .execute([&conv])
                        .map_err(sql)?;
                    let (key, generation) = match (parse_key(&conv), u64::try_from(generation)) {
                        (Ok(k), Ok(g)) => (k, g),
                        _ => {
                            // Only this crate writes the row; drop it rather than wedge every timer.
                            tracing::error!(conversation = %conv, generation, "dropping an unreadable timer");
                            continue;
                        }
                    };
                    let event = Event::new(
                        format!("timer:{conv}:{generation}"),
                        key.clone(),
                        now,
                        EventKind::TimerFired { generation },
                    );
                    if insert_event(&tx, &EventRow::new(&event)?)? {
                        inserted.push(key.clone());
                    }
                    fired.push(key);
                }
                tx.commit().map_err(sql)?;
                Ok((fired, inserted))
            })
            .await?;
        self.db.notify_enqueued(&inserted, inserted.len() as u64);
        Ok(fired)
    }

    /// The earliest due time of any timer.
    pub async fn next_due(&self) -> Result<Option<Millis>, StoreError> {
        self.db
            .read(|c| {
                let due: Option<i64> = c.query_row("SELECT MIN(due) FROM timers", [], |r| r.get(0)).map_err(sql)?;
                Ok(due.map(Millis))
            })
            .await
    }
}

#[async_trait]
impl Timers for EmbeddedTimers {
    /// Replace the conversation's timer.
    async fn schedule(&self, key: &ConversationKey, generation: u64, due: Millis) -> Result<(), StoreError> {
        let conv = key.to_string();
        let generation = to_i64(generation, "timer generation")?;
        self.db
            .write(move |c| {
                c.prepare_cached(
                    "INSERT INTO timers(conversation, generation, due) VALUES (?1, ?2, ?3)
                     ON CONFLICT(conversation) DO UPDATE SET generation = excluded.generation, due = excluded.due",
                )
                .map_err(sql)?
                .execute(params![conv, generation, due.0])
                .map_err(sql)?;
                Ok(())
            })
            .await?;
        self.db.timers_changed().notify_one();
        Ok(())
    }

    async fn cancel(&self, key: &ConversationKey) -> Result<(), StoreError> {
        let conv = key.to_string();
        self.db
            .write(move |c| {
                c.prepare_cached("DELETE FROM timers WHERE conversation = ?1")
                    .map_err(sql)?
                    .execute([&conv])
                    .map_err(sql)?;
                Ok(())
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{key, open_temp};
    use crate::EmbeddedQueue;
    use baton_core::ports::EventQueue;
    use std::time::Duration;

    #[tokio::test]
    async fn fire_due_moves_due_timers_into_the_queue_once() {
        let (_d, db) = open_temp();
        let q = EmbeddedQueue::new(db.clone());
        let t = EmbeddedTimers::new(db);
        let mut rx = q.subscribe();
        let (a, b, c) = (key("a"), key("b"), key("c"));
        assert_eq!(t.next_due().await.unwrap(), None);
        t.schedule(&a, 1, Millis(100)).await.unwrap();
        t.schedule(&a, 2, Millis(150)).await.unwrap(); // re-armed: replaces gen 1
        t.schedule(&b, 7, Millis(120)).await.unwrap();
        t.schedule(&c, 3, Millis(500)).await.unwrap();
        t.schedule(&key("d"), 1, Millis(50)).await.unwrap();
        t.cancel(&key("d")).await.unwrap();
        assert_eq!(t.next_due().await.unwrap(), Some(Millis(120)));

        assert!(t.fire_due(Millis(110)).await.unwrap().is_empty());
        let fired = t.fire_due(Millis(200)).await.unwrap();
        assert_eq!(fired, [b.clone(), a.clone()]);
        assert_eq!(t.fire_due(Millis(200)).await.unwrap(), [] as [ConversationKey; 0]);
        assert_eq!(t.next_due().await.unwrap(), Some(Millis(500)));
        assert_eq!(q.depth().await.unwrap(), 2);
        let ev = q.head(&a).await.unwrap().unwrap();
        assert_eq!(ev.id, format!("timer:{a}:2"));
        assert_eq!(ev.at, Millis(200));
        assert_eq!(ev.kind, EventKind::TimerFired { generation: 2 });
        assert_eq!(q.head(&b).await.unwrap().unwrap().kind, EventKind::TimerFired { generation: 7 });
        let mut heard = vec![rx.try_recv().unwrap(), rx.try_recv().unwrap()];
        heard.sort();
        assert_eq!(heard, [a.clone(), b.clone()]);

        // Same timer armed again and fired while its event is still queued: one copy.
        t.schedule(&a, 2, Millis(300)).await.unwrap();
        assert_eq!(t.fire_due(Millis(300)).await.unwrap(), vec![a.clone()]);
        assert_eq!(q.depth().await.unwrap(), 2);
        assert!(rx.try_recv().is_err());
        // Events queued by enqueue and by timers share one order per conversation.
        let later = Event::new("x", a.clone(), Millis(400), EventKind::UserEnded);
        q.enqueue(vec![later]).await.unwrap();
        q.ack(&a, &format!("timer:{a}:2")).await.unwrap();
        assert_eq!(q.head(&a).await.unwrap().unwrap().id, "x");
    }

    #[tokio::test]
    async fn schedule_wakes_the_timer_loop() {
        let (_d, db) = open_temp();
        let t = EmbeddedTimers::new(db);
        let changed = t.changed();
        // Scheduled before anyone waits: the stored permit still wakes the next wait.
        t.schedule(&key("a"), 1, Millis(5)).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), changed.notified()).await.expect("woken");
        // Nothing new: no wake-up.
        assert!(tokio::time::timeout(Duration::from_millis(50), changed.notified()).await.is_err());
    }
}
