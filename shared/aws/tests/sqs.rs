//! SQS specifics on moto: FIFO group and deduplication ids, order, batching, and timers
//! that re-arm beyond SQS's 900 s delay limit.

mod common;

use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use baton_aws::{
    dedup_id, group_id, parse_event, ArmedTimers, SqsEventQueue, SqsTimers, StoredTimer, TimerError, TimerMessage,
    TimerOutcome,
};
use baton_core::event::{Event, EventKind};
use baton_core::model::{Channel, ConversationKey, Millis};
use baton_core::ports::{EventQueue, StoreError, Timers};
use common::{drain_events, queue_attribute, queues, receive_all, wall_now, FixedClock};
use std::sync::Arc;

fn key(user: &str) -> ConversationKey {
    ConversationKey::new("demo", Channel::Telegram, user).unwrap()
}

fn ev(id: &str, k: &ConversationKey, text: &str) -> Event {
    Event::new(
        id,
        k.clone(),
        Millis(1),
        EventKind::UserMessage { text: text.into(), email: None, language: None, reply: None, name: None },
    )
}

#[tokio::test]
async fn fifo_messages_carry_group_and_dedup_ids_in_order() {
    let (sqs, url, _) = queues().await;
    let q = SqsEventQueue::new(sqs.clone(), url.clone());
    let long_user = "u".repeat(200);
    let (a, b) = (key("1"), key(&long_user));
    let events = vec![ev("tg:1", &a, "one"), ev("tg:2", &b, "two"), ev("tg:3", &a, "three")];
    q.enqueue(events.clone()).await.unwrap();
    // A provider's fast retry: dropped by the deduplication id.
    q.enqueue(vec![ev("tg:1", &a, "one")]).await.unwrap();

    let messages = receive_all(&sqs, &url).await;
    assert_eq!(messages.len(), 3);
    let mut per_group: std::collections::BTreeMap<String, Vec<Event>> = Default::default();
    for m in &messages {
        let event = parse_event(m.body().unwrap()).unwrap();
        let attrs = m.attributes().unwrap();
        assert_eq!(attrs.get(&MessageSystemAttributeName::MessageGroupId), Some(&group_id(&event.conversation)));
        assert_eq!(attrs.get(&MessageSystemAttributeName::MessageDeduplicationId), Some(&dedup_id(&event.id)));
        per_group.entry(group_id(&event.conversation)).or_default().push(event);
    }
    assert_eq!(per_group[&group_id(&a)], vec![events[0].clone(), events[2].clone()]);
    assert_eq!(per_group[&group_id(&b)], vec![events[1].clone()]);
    assert!(group_id(&b).len() <= 128);
}

#[tokio::test]
async fn more_than_ten_events_go_out_in_several_batches_in_order() {
    let (sqs, url, _) = queues().await;
    let q = SqsEventQueue::new(sqs.clone(), url.clone());
    let k = key("batch");
    let events: Vec<Event> = (0..25).map(|i| ev(&format!("w:{i}"), &k, &format!("m{i}"))).collect();
    q.enqueue(events.clone()).await.unwrap();
    assert_eq!(drain_events(&sqs, &url).await, events);

    // Large events are split by size as well as by count.
    let big: Vec<Event> = (0..4).map(|i| ev(&format!("big:{i}"), &k, &"x".repeat(100 * 1024))).collect();
    q.enqueue(big.clone()).await.unwrap();
    assert_eq!(drain_events(&sqs, &url).await, big);
}

#[tokio::test]
async fn enqueue_to_a_missing_queue_fails() {
    let (sqs, url, _) = queues().await;
    let q = SqsEventQueue::new(sqs, format!("{url}-missing.fifo"));
    let err = q.enqueue(vec![ev("x", &key("1"), "t")]).await.unwrap_err();
    assert!(err.0.starts_with("sqs send batch"), "{err}");
}

fn timer_body(k: &ConversationKey, generation: u64, due: Millis) -> String {
    serde_json::to_string(&TimerMessage {
        schema: baton_aws::TIMER_SCHEMA,
        conversation: k.clone(),
        generation,
        due,
        wake: false,
    })
    .unwrap()
}

#[tokio::test]
async fn a_far_timer_is_rearmed_with_the_delay_capped() {
    let (sqs, events, timer_url) = queues().await;
    let now = wall_now();
    let q = SqsEventQueue::new(sqs.clone(), events.clone());
    let t = SqsTimers::new(sqs.clone(), timer_url.clone(), Arc::new(FixedClock(now)));
    let k = key("far");

    // An hour away: sent again with the longest delay SQS allows.
    let out = t.fire_or_rearm(&timer_body(&k, 1, Millis(now.0 + 3_600_000)), now, &q, None).await.unwrap();
    assert_eq!(out, TimerOutcome::Rearmed { delay_seconds: 900 });
    // 5.5 s away: re-armed for 6 s (rounded up, never early).
    let out = t.fire_or_rearm(&timer_body(&k, 2, Millis(now.0 + 5_500)), now, &q, None).await.unwrap();
    assert_eq!(out, TimerOutcome::Rearmed { delay_seconds: 6 });
    assert_eq!(queue_attribute(&sqs, &timer_url, QueueAttributeName::ApproximateNumberOfMessagesDelayed).await, "2");
    assert!(receive_all(&sqs, &timer_url).await.is_empty());
    assert!(drain_events(&sqs, &events).await.is_empty());

    // `schedule` computes the delay from its clock in the same way.
    t.schedule(&k, 3, Millis(now.0 + 2 * 3_600_000)).await.unwrap();
    assert_eq!(queue_attribute(&sqs, &timer_url, QueueAttributeName::ApproximateNumberOfMessagesDelayed).await, "3");
}

#[tokio::test]
async fn a_due_timer_fires_into_the_fifo_queue_once() {
    let (sqs, events, timer_url) = queues().await;
    let now = wall_now();
    let q = SqsEventQueue::new(sqs.clone(), events.clone());
    let t = SqsTimers::new(sqs.clone(), timer_url.clone(), Arc::new(FixedClock(now)));
    let k = key("due");

    // Due in the past: visible at once, with the agreed body.
    t.schedule(&k, 4, Millis(now.0 - 10)).await.unwrap();
    let received = receive_all(&sqs, &timer_url).await;
    assert_eq!(received.len(), 1);
    let body = received[0].body().unwrap().to_string();
    let msg = TimerMessage::parse(&body).unwrap();
    assert_eq!((msg.conversation.clone(), msg.generation, msg.due), (k.clone(), 4, Millis(now.0 - 10)));
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["schema"], 1);

    // Due within a second counts as due.
    let soon = timer_body(&k, 5, Millis(now.0 + 900));
    let out = t.fire_or_rearm(&soon, now, &q, None).await.unwrap();
    let id = format!("timer:{k}:5");
    assert_eq!(out, TimerOutcome::Fired { event_id: id.clone() });
    // The same timer message delivered twice (at-least-once) queues one event.
    t.fire_or_rearm(&soon, now, &q, None).await.unwrap();
    let fired = drain_events(&sqs, &events).await;
    assert_eq!(fired, vec![Event::new(id, k.clone(), now, EventKind::TimerFired { generation: 5 })]);
    assert!(receive_all(&sqs, &timer_url).await.is_empty());

    // Cancel is a no-op; the stale timer's generation makes the session ignore it.
    t.cancel(&k).await.unwrap();
}

/// A session's armed timer as timeout-check reads it: a timer, none, or a failed read.
struct Armed(Result<Option<StoredTimer>, ()>);

impl Armed {
    /// Generation `generation`, due when its own message is.
    fn generation(generation: u64) -> Armed {
        Armed(Ok(Some(StoredTimer { generation, due: None, message_due: None })))
    }
}

#[async_trait::async_trait]
impl ArmedTimers for Armed {
    async fn armed_timer(&self, _key: &ConversationKey) -> Result<Option<StoredTimer>, StoreError> {
        self.0.map_err(|()| StoreError::Unavailable("table unreachable".into()))
    }
}

#[tokio::test]
async fn a_timer_the_session_no_longer_has_is_dropped_before_the_queue() {
    let (sqs, events, timer_url) = queues().await;
    let now = wall_now();
    let q = SqsEventQueue::new(sqs.clone(), events.clone());
    let t = SqsTimers::new(sqs.clone(), timer_url.clone(), Arc::new(FixedClock(now)));
    let k = key("stale");
    let due = timer_body(&k, 3, Millis(now.0 - 5));
    let far = timer_body(&k, 3, Millis(now.0 + 3_600_000));
    // Replaced by a later generation, or disarmed: dropped, due or not, nothing sent on.
    for armed in [Armed::generation(4), Armed(Ok(None))] {
        assert_eq!(t.fire_or_rearm(&due, now, &q, Some(&armed)).await.unwrap(), TimerOutcome::Stale);
        assert_eq!(t.fire_or_rearm(&far, now, &q, Some(&armed)).await.unwrap(), TimerOutcome::Stale);
    }
    assert!(drain_events(&sqs, &events).await.is_empty());
    assert!(receive_all(&sqs, &timer_url).await.is_empty());
    // Still armed, or the read failed: it fires (the worker tells a stale one).
    for armed in [Armed::generation(3), Armed(Err(()))] {
        let out = t.fire_or_rearm(&due, now, &q, Some(&armed)).await.unwrap();
        assert_eq!(out, TimerOutcome::Fired { event_id: format!("timer:{k}:3") });
    }
    assert_eq!(drain_events(&sqs, &events).await.len(), 1, "one event: the same id twice");
    // A wake-up is not the session's timer: it never asks.
    let wake = serde_json::to_string(&TimerMessage { wake: true, ..TimerMessage::parse(&due).unwrap() }).unwrap();
    let out = t.fire_or_rearm(&wake, now, &q, Some(&Armed(Ok(None)))).await.unwrap();
    assert_eq!(out, TimerOutcome::Fired { event_id: format!("wake:{k}:{}", now.0 - 5) });
}

#[tokio::test]
async fn a_message_the_session_counts_on_carries_the_timer_armed_after_it() {
    let (sqs, events, timer_url) = queues().await;
    let now = wall_now();
    let q = SqsEventQueue::new(sqs.clone(), events.clone());
    let t = SqsTimers::new(sqs.clone(), timer_url.clone(), Arc::new(FixedClock(now)));
    let k = key("carrier");
    let sent_due = Millis(now.0 - 5);
    let body = timer_body(&k, 3, sent_due);
    let moved = |due: i64, message_due: Millis| {
        Armed(Ok(Some(StoredTimer { generation: 4, due: Some(Millis(due)), message_due: Some(message_due) })))
    };

    // The session's timer moved 5.5 s later and no message was sent for it: this one goes
    // on as that timer, with its generation and due time.
    let out = t.fire_or_rearm(&body, now, &q, Some(&moved(now.0 + 5_500, sent_due))).await.unwrap();
    assert_eq!(out, TimerOutcome::Carried { generation: 4, delay_seconds: 6 });
    assert_eq!(queue_attribute(&sqs, &timer_url, QueueAttributeName::ApproximateNumberOfMessagesDelayed).await, "1");
    assert!(drain_events(&sqs, &events).await.is_empty());
    // Already due: it fires as the moved timer.
    let out = t.fire_or_rearm(&body, now, &q, Some(&moved(now.0 - 1, sent_due))).await.unwrap();
    assert_eq!(out, TimerOutcome::Fired { event_id: format!("timer:{k}:4") });
    let fired = drain_events(&sqs, &events).await;
    assert_eq!(
        fired,
        vec![Event::new(format!("timer:{k}:4"), k.clone(), now, EventKind::TimerFired { generation: 4 })]
    );

    // The session counts on another message (one sent later), or its item does not say
    // (an earlier build's): dropped as stale.
    let out = t.fire_or_rearm(&body, now, &q, Some(&moved(now.0 + 5_500, Millis(now.0 + 5_500)))).await.unwrap();
    assert_eq!(out, TimerOutcome::Stale);
    let unknown = Armed(Ok(Some(StoredTimer { generation: 4, due: None, message_due: Some(sent_due) })));
    assert_eq!(t.fire_or_rearm(&body, now, &q, Some(&unknown)).await.unwrap(), TimerOutcome::Stale);
    assert!(drain_events(&sqs, &events).await.is_empty());
    assert_eq!(queue_attribute(&sqs, &timer_url, QueueAttributeName::ApproximateNumberOfMessagesDelayed).await, "1");
}

#[tokio::test]
async fn a_wake_up_fires_as_a_wake_event_and_leaves_the_timer_alone() {
    let (sqs, events, timer_url) = queues().await;
    let now = wall_now();
    let q = SqsEventQueue::new(sqs.clone(), events.clone());
    let t = SqsTimers::new(sqs.clone(), timer_url.clone(), Arc::new(FixedClock(now)));
    let k = key("wake");
    let due = Millis(now.0 - 1);
    t.schedule_wake(&k, due).await.unwrap();
    t.schedule(&k, 2, due).await.unwrap();
    let mut outcomes = Vec::new();
    for m in receive_all(&sqs, &timer_url).await {
        outcomes.push(t.fire_or_rearm(m.body().unwrap(), now, &q, None).await.unwrap());
    }
    let wake_id = format!("wake:{k}:{}", due.0);
    let timer_id = format!("timer:{k}:2");
    // A standard queue has no order: compare sorted by id ("timer:" < "wake:").
    outcomes.sort_by_key(|o| format!("{o:?}"));
    assert_eq!(
        outcomes,
        [TimerOutcome::Fired { event_id: timer_id.clone() }, TimerOutcome::Fired { event_id: wake_id.clone() }]
    );
    let mut fired = drain_events(&sqs, &events).await;
    fired.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(
        fired,
        vec![
            Event::new(timer_id, k.clone(), now, EventKind::TimerFired { generation: 2 }),
            Event::new(wake_id, k.clone(), now, EventKind::Wake),
        ]
    );
    // A far wake-up is re-armed like a timer.
    t.schedule_wake(&k, Millis(now.0 + 7_200_000)).await.unwrap();
    assert_eq!(queue_attribute(&sqs, &timer_url, QueueAttributeName::ApproximateNumberOfMessagesDelayed).await, "1");
}

#[tokio::test]
async fn malformed_timer_messages_are_reported_as_such() {
    let (sqs, events, timer_url) = queues().await;
    let q = SqsEventQueue::new(sqs.clone(), events);
    let t = SqsTimers::new(sqs, timer_url, Arc::new(FixedClock(Millis(0))));
    for body in
        ["", "{}", r#"{"schema":9,"conversation":{"agent":"demo","channel":"line","user":"u"},"generation":1,"due":0}"#]
    {
        assert!(matches!(t.fire_or_rearm(body, Millis(0), &q, None).await, Err(TimerError::Malformed(_))), "{body}");
    }
}
