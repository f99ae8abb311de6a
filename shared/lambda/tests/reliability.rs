//! Reliability of the Lambda handlers on SQS (moto): redelivered records, partial batch
//! failures within FIFO message groups, dead-lettering and redrive, and the sweeper.

mod common;

use baton_aws::aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use baton_aws::{dedup_id, group_id, parse_event};
use baton_core::ports::{Clock, DrainLeases, Store};
use baton_core::{EventKind, Millis};
use baton_lambda::{sweep, wire, Swept};
use baton_runtime::clock::ManualClock;
use baton_tests::moto;
use common::*;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// (a) A record delivered three times (three invocations, and a batch holding it three
/// times) has one effect: one human message for the user, one chat message at the desk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_delivered_three_times_has_one_effect() {
    let hub = hub(|_| {}).await;
    let arn = queue_arn(&hub.sqs, &hub.queues.events).await;
    let mut w = Widget::start(&hub, Some("ana@example.com")).await;
    w.send("I want to talk to a human").await;
    run_worker(&hub).await;
    let conv = hub.desk.requests_to("/conversation/establish")[0].body["conversation_id"].as_str().unwrap().to_string();

    // The desk's reply, queued once, delivered to the worker three times.
    assert_eq!(hub.desk_reply(&conv, "Hello, Ana here.", Some("msg_r1")).await.status, 200);
    let messages = receive(&hub.sqs, &hub.queues.events).await;
    assert_eq!(messages.len(), 1);
    let r = record(&messages[0], &arn);
    assert!(invoke_worker(&hub.aws, vec![r.clone(), r.clone(), r.clone()]).await.is_empty());
    assert!(invoke_worker(&hub.aws, vec![r.clone()]).await.is_empty());
    assert!(invoke_worker(&hub.aws, vec![r]).await.is_empty());
    delete(&hub.sqs, &hub.queues.events, &messages[0]).await;
    run_worker(&hub).await;
    assert_eq!(w.texts_from("human").await, vec!["Hello, Ana here."]);

    // The widget retries its send with the same client id: one message on the queue.
    for _ in 0..3 {
        assert_eq!(w.send_with_id("My parcel has not arrived", "retry-1").await.status, 202);
    }
    let messages = receive(&hub.sqs, &hub.queues.events).await;
    assert_eq!(messages.len(), 1, "deduplicated by the FIFO queue");
    let r = record(&messages[0], &arn);
    for _ in 0..3 {
        assert!(invoke_worker(&hub.aws, vec![r.clone()]).await.is_empty());
    }
    delete(&hub.sqs, &hub.queues.events, &messages[0]).await;
    run_worker(&hub).await;
    let chat = hub.desk.requests_to("/chat");
    assert_eq!(chat.len(), 1, "{chat:#?}");
    assert_eq!(chat[0].body["body"], "My parcel has not arrived");
    assert_eq!(hub.desk.duplicates(), 0, "the hub did not even send it twice");
    w.next("human reply", |m| m["from"] == "human").await;
}

/// (b) In one batch, a record of conversation A fails: every later record of A is reported
/// failed too, A's earlier record and B's records go through, and once the bad record is
/// gone A's records are applied in their order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_record_holds_back_only_its_own_conversation() {
    let hub = hub(|_| {}).await;
    let url = hub.queues.events.clone();
    let arn = queue_arn(&hub.sqs, &url).await;
    let mut a = Widget::start(&hub, None).await;
    let mut b = Widget::start(&hub, None).await;

    let a1 = a.send("What are your opening hours?").await;
    b.send("How long does shipping take?").await;
    // A record no build can read, in A's message group.
    hub.sqs
        .send_message()
        .queue_url(&url)
        .message_body("{\"not\": \"an event\"")
        .message_group_id(group_id(&a.key()))
        .message_deduplication_id("poison-1")
        .send()
        .await
        .unwrap();
    let a2 = a.send("How long does shipping take?").await;
    b.send("What are your opening hours?").await;
    let a3 = a.send("Do you ship abroad to other countries?").await;

    let messages = receive(&hub.sqs, &url).await;
    assert_eq!(messages.len(), 6, "one batch");
    let event_id = |m: &baton_aws::aws_sdk_sqs::types::Message| parse_event(m.body().unwrap()).ok().map(|e| e.id);
    let id_of = |event: &str| {
        messages
            .iter()
            .find(|m| event_id(m).as_deref() == Some(event))
            .and_then(|m| m.message_id())
            .unwrap()
            .to_string()
    };
    let poison = messages.iter().find(|m| event_id(m).is_none()).unwrap();
    let group_a = group_id(&a.key());
    let in_a: Vec<Option<String>> = messages
        .iter()
        .filter(|m| attribute(m, MessageSystemAttributeName::MessageGroupId).as_deref() == Some(group_a.as_str()))
        .map(event_id)
        .collect();
    assert_eq!(in_a, vec![Some(a1.clone()), None, Some(a2.clone()), Some(a3.clone())]);

    let failed = invoke_worker(&hub.aws, messages.iter().map(|m| record(m, &arn)).collect()).await;
    let failed: HashSet<String> = failed.into_iter().collect();
    let expected: HashSet<String> = [poison.message_id().unwrap().to_string(), id_of(&a2), id_of(&a3)].into();
    assert_eq!(failed, expected);

    // The event source deletes the rest; the failed ones stay in flight, holding A's group.
    for m in &messages {
        if !failed.contains(m.message_id().unwrap()) {
            delete(&hub.sqs, &url, m).await;
        }
    }
    run_worker(&hub).await;
    assert_eq!(b.texts_from("bot").await, vec![SHIPPING, HOURS]);
    // A's first record went through (its answer is applied in the drain that asked the
    // brain, not queued behind the bad record); the later ones wait behind their group.
    assert_eq!(a.texts_from("bot").await, vec![HOURS], "A's later answers wait behind its group");

    // The bad record goes (to the dead-letter queue); the others come back, in order.
    delete(&hub.sqs, &url, poison).await;
    for m in &messages {
        if failed.contains(m.message_id().unwrap()) && m.message_id() != poison.message_id() {
            release(&hub.sqs, &url, m).await;
        }
    }
    run_worker(&hub).await;
    assert_eq!(a.texts_from("bot").await, vec![HOURS, SHIPPING, ABROAD]);
    assert_eq!(b.texts_from("bot").await, vec![SHIPPING, HOURS]);
    a.next("last answer", |m| m["text"] == ABROAD).await;
}

/// A FIFO events queue with a dead-letter queue after `max_receives` receives, as in
/// template.yaml (which uses 5): (queues, dlq url).
async fn queues_with_dlq(sqs: &baton_aws::aws_sdk_sqs::Client, max_receives: u32) -> (Queues, String) {
    let dlq = sqs
        .create_queue()
        .queue_name(format!("{}.fifo", moto::unique_name("dlq")))
        .attributes(QueueAttributeName::FifoQueue, "true")
        .attributes(QueueAttributeName::ContentBasedDeduplication, "false")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let dlq_arn = queue_arn(sqs, &dlq).await;
    let policy = serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receives.to_string()});
    let events = sqs
        .create_queue()
        .queue_name(format!("{}.fifo", moto::unique_name("ev")))
        .attributes(QueueAttributeName::FifoQueue, "true")
        .attributes(QueueAttributeName::ContentBasedDeduplication, "false")
        .attributes(QueueAttributeName::DeduplicationScope, "messageGroup")
        .attributes(QueueAttributeName::FifoThroughputLimit, "perMessageGroupId")
        .attributes(QueueAttributeName::RedrivePolicy, policy.to_string())
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let timers = baton_aws::create_timer_queue(sqs, &moto::unique_name("tm")).await.unwrap();
    (Queues { events, timers }, dlq)
}

/// Receive and invoke until nothing is visible, returning every failed record's message to
/// the queue at once; returns how many times each message id was received.
async fn fail_until_dead_lettered(
    aws: &baton_lambda::Aws,
    sqs: &baton_aws::aws_sdk_sqs::Client,
    url: &str,
) -> std::collections::BTreeMap<String, usize> {
    let arn = queue_arn(sqs, url).await;
    let mut receives = std::collections::BTreeMap::new();
    for _ in 0..20 {
        let messages = receive(sqs, url).await;
        if messages.is_empty() {
            return receives;
        }
        for m in &messages {
            *receives.entry(m.message_id().unwrap().to_string()).or_default() += 1;
        }
        let failed = invoke_worker(aws, messages.iter().map(|m| record(m, &arn)).collect()).await;
        settle(sqs, url, &messages, &failed).await;
    }
    panic!("the queue never emptied");
}

/// (c) A poison message (unreadable) and an event that fails while the table is
/// unreachable both reach the FIFO dead-letter queue after maxReceiveCount receives;
/// `baton_aws::redrive` moves them back with their group and deduplication ids, and once
/// the cause is fixed the event is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_records_reach_the_dlq_and_redrive_moves_them_back() {
    let (_, sqs) = clients().await;
    let (queues, dlq) = queues_with_dlq(&sqs, 2).await;
    let hub = hub_with(Arc::new(baton_runtime::clock::SystemClock), Some(queues.clone()), |_| {}).await;
    let url = queues.events.clone();
    // A deploy pointing at a table that does not exist: every event fails in the store.
    let broken = wire(
        config("no-such-table", &queues),
        Arc::new(baton_runtime::clock::SystemClock),
        hub.dynamo.clone(),
        sqs.clone(),
        Arc::new(baton_runtime::PlainSecrets),
    );

    let mut w = Widget::start(&hub, None).await;
    let event = w.send("What are your opening hours?").await;
    sqs.send_message()
        .queue_url(&url)
        .message_body("not json at all")
        .message_group_id("poison-group")
        .message_deduplication_id("poison-dedup")
        .send()
        .await
        .unwrap();
    let first = receive(&sqs, &url).await;
    assert_eq!(first.len(), 2);
    let ids = |m: &baton_aws::aws_sdk_sqs::types::Message| {
        (
            m.body().unwrap().to_string(),
            attribute(m, MessageSystemAttributeName::MessageGroupId).unwrap(),
            attribute(m, MessageSystemAttributeName::MessageDeduplicationId).unwrap(),
        )
    };
    let mut originals: Vec<_> = first.iter().map(ids).collect();
    originals.sort();
    for m in &first {
        release(&sqs, &url, m).await;
    }
    let dedup = dedup_id(&event);
    assert!(originals.iter().any(|(_, g, d)| *g == group_id(&w.key()) && *d == dedup));

    // Received twice (once above, once here), failed twice: dead-lettered.
    let receives = fail_until_dead_lettered(&broken, &sqs, &url).await;
    assert_eq!(receives.len(), 2);
    assert!(receives.values().all(|n| *n == 1), "{receives:?}");
    assert_eq!(queue_depth(&sqs, &url).await, 0);
    assert_eq!(queue_depth(&sqs, &dlq).await, 2);
    assert!(w.all().await.is_empty());

    // Redrive, a limited number first.
    assert_eq!(baton_aws::redrive(&sqs, &dlq, &url, 1).await.unwrap(), 1);
    assert_eq!(queue_depth(&sqs, &dlq).await, 1);
    assert_eq!(baton_aws::redrive(&sqs, &dlq, &url, 100).await.unwrap(), 1);
    assert_eq!(queue_depth(&sqs, &dlq).await, 0);
    assert_eq!(baton_aws::redrive(&sqs, &dlq, &url, 100).await.unwrap(), 0);
    let back = receive(&sqs, &url).await;
    let mut moved: Vec<_> = back.iter().map(ids).collect();
    moved.sort();
    assert_eq!(moved, originals, "bodies, group and deduplication ids kept");
    for m in &back {
        release(&sqs, &url, m).await;
    }

    // With the cause fixed, the event is applied; the poison fails on and goes back.
    let receives = fail_until_dead_lettered(&hub.aws, &sqs, &url).await;
    assert_eq!(w.texts_from("bot").await, vec![HOURS]);
    assert_eq!(queue_depth(&sqs, &dlq).await, 1, "{receives:?}");
    let left = receive(&sqs, &dlq).await;
    assert_eq!(left[0].body(), Some("not json at all"));

    let same = baton_aws::redrive(&sqs, &dlq, &dlq, 10).await.unwrap_err();
    assert_eq!(same.moved, 0);
}

/// A standard queue (the timers' dead-letter queue is one) is redriven without group ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_between_standard_queues() {
    let (_, sqs) = clients().await;
    let dlq = baton_aws::create_timer_queue(&sqs, &moto::unique_name("tdlq")).await.unwrap();
    let timers = baton_aws::create_timer_queue(&sqs, &moto::unique_name("tm")).await.unwrap();
    for i in 0..3 {
        sqs.send_message().queue_url(&dlq).message_body(format!("timer {i}")).send().await.unwrap();
    }
    // A destination that cannot take them: nothing is lost, everything is visible again.
    let missing = format!("{}-missing", timers);
    let err = baton_aws::redrive(&sqs, &dlq, &missing, 100).await.unwrap_err();
    assert_eq!(err.moved, 0, "{err}");
    assert_eq!(queue_attribute(&sqs, &dlq, QueueAttributeName::ApproximateNumberOfMessages).await, "3");
    assert_eq!(baton_aws::redrive(&sqs, &dlq, &timers, 100).await.unwrap(), 3);
    let mut bodies: Vec<String> = receive(&sqs, &timers).await.iter().map(|m| m.body().unwrap().to_string()).collect();
    bodies.sort();
    assert_eq!(bodies, ["timer 0", "timer 1", "timer 2"]);
    assert_eq!(queue_depth(&sqs, &dlq).await, 0);
}

/// (d) A session whose timer is overdue (its timer message never consumed) is found by the
/// sweeper; two sweeps queue its `TimerFired` once, and the timer message arriving late
/// is applied zero times more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_fires_an_overdue_timer_once() {
    let clock = Arc::new(ManualClock::new(wall_now()));
    let hub = hub_with(clock.clone(), None, |a| a.policy.wait_timeout_secs = 1).await;
    let url = hub.queues.events.clone();
    let arn = queue_arn(&hub.sqs, &url).await;
    let mut w = Widget::start(&hub, Some("dee@example.com")).await;
    w.send("I want to talk to a human").await;
    run_worker(&hub).await;
    assert_eq!(hub.desk.requests_to("/conversation/establish").len(), 1);

    assert_eq!(sweep(&hub.aws).await.unwrap(), Swept::default(), "not due yet");
    clock.advance_secs(2);
    let swept = sweep(&hub.aws).await.unwrap();
    assert_eq!(swept, Swept { timers: 1, wakes: 0 });
    assert_eq!(sweep(&hub.aws).await.unwrap(), swept, "still due: found again");

    let messages = receive(&hub.sqs, &url).await;
    assert_eq!(messages.len(), 1, "queued once: {messages:#?}");
    let event = parse_event(messages[0].body().unwrap()).unwrap();
    assert_eq!(event.conversation, w.key());
    let EventKind::TimerFired { generation } = event.kind else {
        panic!("not a timer: {event:?}");
    };
    assert_eq!(event.id, format!("timer:{}:{generation}", w.key()));
    assert!(invoke_worker(&hub.aws, vec![record(&messages[0], &arn)]).await.is_empty());
    delete(&hub.sqs, &url, &messages[0]).await;
    run_worker(&hub).await;
    let question = |m: &serde_json::Value| m["text"].as_str().unwrap().contains("keep waiting or end");
    w.next("keep waiting or end?", question).await;
    assert_eq!(sweep(&hub.aws).await.unwrap(), Swept::default(), "the next timer is a minute away");

    // The timer's own message (delayed on the wall clock) comes for a timer the session no
    // longer has: timeout-check drops it, and the worker gets nothing.
    let started = std::time::Instant::now();
    while run_timers(&hub).await == 0 {
        assert!(started.elapsed() < Duration::from_secs(5), "no timer message");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(run_worker(&hub).await, 0);
    let questions = w.all().await.into_iter().filter(|m| question(m)).count();
    assert_eq!(questions, 1);
}

/// A failing effect does not fail its record: the worker defers it and re-arms a wake-up;
/// the sweeper (and the wake-up's timer message) run it again, and the desk gets it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_desk_call_is_retried_by_wake_ups_not_by_redelivery() {
    let clock = Arc::new(ManualClock::new(wall_now()));
    let hub = hub_with(clock.clone(), None, |_| {}).await;
    let mut w = Widget::start(&hub, Some("eve@example.com")).await;
    hub.desk.fail_next(1);
    w.send("I want to talk to a human").await;
    // run_worker fails the test on any failed record.
    run_worker(&hub).await;
    assert!(hub.desk.requests_to("/conversation/establish").is_empty());
    w.next("waiting notice", |m| m["from"] == "system").await;
    assert_eq!(sweep(&hub.aws).await.unwrap(), Swept::default(), "the retry is not due yet");

    clock.advance_secs(5);
    assert_eq!(sweep(&hub.aws).await.unwrap(), Swept { timers: 0, wakes: 1 });
    assert!(run_worker(&hub).await >= 1);
    assert_eq!(hub.desk.requests_to("/conversation/establish").len(), 1);
    assert_eq!(sweep(&hub.aws).await.unwrap(), Swept::default(), "nothing due any more");

    // The wake-up the worker armed on the timers queue (delayed on the wall clock) turns
    // into a Wake event that finds nothing left to do.
    let started = std::time::Instant::now();
    while run_timers(&hub).await == 0 {
        assert!(started.elapsed() < Duration::from_secs(5), "no wake-up message");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let messages = receive(&hub.sqs, &hub.queues.events).await;
    assert_eq!(messages.len(), 1);
    let event = parse_event(messages[0].body().unwrap()).unwrap();
    assert_eq!(event.kind, EventKind::Wake, "{event:?}");
    let arn = queue_arn(&hub.sqs, &hub.queues.events).await;
    assert!(invoke_worker(&hub.aws, vec![record(&messages[0], &arn)]).await.is_empty());
    delete(&hub.sqs, &hub.queues.events, &messages[0]).await;
    assert_eq!(hub.desk.requests_to("/conversation/establish").len(), 1);
    assert_eq!(hub.desk.duplicates(), 0);
}

/// Two workers run one conversation's effects at once (two events of it in flight, as when
/// SQS hands a redelivered batch to a second worker): the one that finds the drain lease
/// taken returns at once and queues no wake-up, and the holder, reading the outbox again
/// after releasing the lease, runs the effects committed meanwhile, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_finds_the_drain_lease_taken_leaves_its_effects_to_the_holder() {
    let hub = hub(|_| {}).await;
    let arn = queue_arn(&hub.sqs, &hub.queues.events).await;
    let mut w = handed_off(&hub).await;
    w.send("first").await;
    w.send("second").await;
    let messages = receive(&hub.sqs, &hub.queues.events).await;
    assert_eq!(messages.len(), 2);
    hub.desk.answer_after(Duration::from_millis(1500));

    let holder = invoke_worker(&hub.aws, vec![record(&messages[0], &arn)]);
    let latecomer = async {
        let started = std::time::Instant::now();
        while drain_lease_holder(&hub, &w.key()).await.is_none() {
            assert!(started.elapsed() < Duration::from_secs(5), "the first worker never took the lease");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let failed = invoke_worker(&hub.aws, vec![record(&messages[1], &arn)]).await;
        (failed, hub.desk.count_to("/chat"))
    };
    let (holder_failed, (latecomer_failed, chats_when_latecomer_returned)) = tokio::join!(holder, latecomer);
    assert!(holder_failed.is_empty() && latecomer_failed.is_empty());
    assert_eq!(chats_when_latecomer_returned, 0, "the latecomer returned without waiting for the desk");
    for m in &messages {
        delete(&hub.sqs, &hub.queues.events, m).await;
    }

    let chat: Vec<_> = hub.desk.requests_to("/chat").iter().map(|r| r.body["body"].clone()).collect();
    assert_eq!(chat, vec!["first", "second"], "the holder ran both, in order");
    assert!(hub.aws.store.pending_effects(&w.key()).await.unwrap().is_empty());
    // A wake-up would have become visible on the timers queue after 2 s.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let wakes = receive(&hub.sqs, &hub.queues.timers)
        .await
        .iter()
        .filter(|m| serde_json::from_str::<serde_json::Value>(m.body().unwrap_or("{}")).unwrap()["wake"] == true)
        .count();
    assert_eq!(wakes, 0, "no wake-up was queued");
    assert_eq!(hub.desk.duplicates(), 0);
}

/// The holder of the drain lease dies before it runs what a latecomer committed: the lease
/// expires and the sweeper's next wake-up runs the effects, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn effects_left_under_a_dead_holders_lease_run_after_it_expires() {
    let clock = Arc::new(ManualClock::new(wall_now()));
    // No session timer falls due in the two minutes this test moves the clock.
    let hub = hub_with(clock.clone(), None, |a| a.policy.wait_timeout_secs = 3600).await;
    let mut w = handed_off(&hub).await;

    // A worker (another process) took the lease and died holding it.
    let other = baton_aws::DynamoStore::new(hub.aws.store.client().clone(), hub.aws.store.table_name());
    let now = clock.now();
    assert!(DrainLeases::take(&other, &w.key(), now, Millis(now.0 + 90_000)).await.unwrap().is_some());
    w.send("are you there?").await;
    run_worker(&hub).await;
    assert_eq!(hub.desk.count_to("/chat"), 0, "the lease is held");
    assert_eq!(hub.aws.store.pending_effects(&w.key()).await.unwrap().len(), 1);

    // The sweeper's wake-ups find the lease held until it expires.
    clock.advance_secs(60);
    assert_eq!(sweep(&hub.aws).await.unwrap(), Swept { timers: 0, wakes: 1 });
    run_worker(&hub).await;
    assert_eq!(hub.desk.count_to("/chat"), 0);
    clock.advance_secs(31);
    assert_eq!(sweep(&hub.aws).await.unwrap(), Swept { timers: 0, wakes: 1 });
    run_worker(&hub).await;
    let chat = hub.desk.requests_to("/chat");
    assert_eq!(chat.len(), 1);
    assert_eq!(chat[0].body["body"], "are you there?");
    assert!(hub.aws.store.pending_effects(&w.key()).await.unwrap().is_empty());
    assert_eq!(sweep(&hub.aws).await.unwrap(), Swept::default());
}

/// A worker dies after committing an event and before running its effects. New effects
/// stay out of the sweeper's index (two writes saved per effect): the record, never deleted,
/// comes back after its visibility timeout and the redelivery runs them, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn effects_of_a_worker_that_died_after_its_commit_run_on_redelivery() {
    let clock = Arc::new(ManualClock::new(wall_now()));
    let hub = hub_with(clock.clone(), None, |a| a.policy.wait_timeout_secs = 3600).await;
    let arn = queue_arn(&hub.sqs, &hub.queues.events).await;
    let mut w = handed_off(&hub).await;

    w.send("still there?").await;
    let messages = receive(&hub.sqs, &hub.queues.events).await;
    assert_eq!(messages.len(), 1);
    let event = parse_event(messages[0].body().unwrap()).unwrap();
    baton_runtime::worker::apply_event(&hub.aws.ports, &event).await.unwrap();
    // The worker is gone; the message stays on the queue.
    assert_eq!(hub.aws.store.pending_effects(&w.key()).await.unwrap().len(), 1);
    clock.advance_secs(120);
    assert_eq!(sweep(&hub.aws).await.unwrap(), Swept::default(), "new effects are not swept");

    release(&hub.sqs, &hub.queues.events, &messages[0]).await;
    let again = receive(&hub.sqs, &hub.queues.events).await;
    assert_eq!(again.len(), 1);
    assert!(invoke_worker(&hub.aws, vec![record(&again[0], &arn)]).await.is_empty());
    delete(&hub.sqs, &hub.queues.events, &again[0]).await;
    let chat = hub.desk.requests_to("/chat");
    assert_eq!(chat.len(), 1);
    assert_eq!(chat[0].body["body"], "still there?");
    assert!(hub.aws.store.pending_effects(&w.key()).await.unwrap().is_empty());
}

/// A widget user handed to the desk (its establish received), whose next messages are
/// relayed to the desk.
async fn handed_off(hub: &Hub) -> Widget {
    let mut w = Widget::start(hub, Some("ana@example.com")).await;
    w.send("I want to talk to a human").await;
    run_worker(hub).await;
    hub.desk.first_to("/conversation/establish").await;
    w
}

/// The desk conversation the hub's one handoff established.
fn desk_conversation(hub: &Hub) -> String {
    hub.desk.requests_to("/conversation/establish")[0].body["conversation_id"].as_str().unwrap().to_string()
}

/// Timer messages waiting out their delay.
async fn delayed_timers(hub: &Hub) -> usize {
    let n = queue_attribute(&hub.sqs, &hub.queues.timers, QueueAttributeName::ApproximateNumberOfMessagesDelayed);
    n.await.parse().unwrap()
}

/// On AWS the session's commit is the timer's durable record (the sweeper fires overdue
/// sessions) and a delayed message cannot be taken back (the late one is stale by its
/// generation), so neither the `ScheduleTimer` a human's reply produces nor the `CancelTimer`
/// of the user's answer is recorded in the outbox: the timer is scheduled right after the
/// commit, and a cancel does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_cost_no_outbox_writes_on_aws() {
    // The session timeout due before the wait timer's message comes back, so it gets a
    // message of its own (see `a_timer_moved_later_rides_on_the_message_already_on_its_way`).
    let hub = hub(|a| a.policy.session_timeout_secs = 30).await;
    let mut w = handed_off(&hub).await;
    let conv = desk_conversation(&hub);
    let delayed = || delayed_timers(&hub);
    // Apply the one queued event (without running its effects): the event, whether the
    // session has a timer armed, and the pending effects as (name, id).
    let key = w.key();
    let step = || async {
        let messages = receive(&hub.sqs, &hub.queues.events).await;
        let event = parse_event(messages[0].body().unwrap()).unwrap();
        baton_runtime::worker::apply_event(&hub.aws.ports, &event).await.unwrap();
        delete(&hub.sqs, &hub.queues.events, &messages[0]).await;
        let armed = hub.aws.store.load_session(&key).await.unwrap().unwrap().session.timer.is_some();
        let pending = hub.aws.store.pending_effects(&key).await.unwrap();
        let pending: Vec<(&str, String)> =
            pending.iter().map(|i| (i.effect.effect.name(), i.effect.id.clone())).collect();
        (event, armed, pending)
    };
    let before = delayed().await;
    assert_eq!(hub.desk_reply(&conv, "Hello, Ana here.", Some("msg_1")).await.status, 200);
    let (_, armed, pending) = step().await;
    assert!(armed, "the step armed the session timer");
    let names: Vec<&str> = pending.iter().map(|(name, _)| *name).collect();
    assert!(names.contains(&"send_to_user") && !names.contains(&"schedule_timer"), "{names:?}");
    assert_eq!(delayed().await, before + 1, "scheduled with the commit");
    baton_runtime::worker::drain_outbox(&hub.aws.ports, &key).await.unwrap();
    w.next("the human's reply", |m| m["from"] == "human").await;

    w.send("thanks, one question").await;
    let (event, armed, pending) = step().await;
    assert!(!armed, "the step disarmed the session timer");
    // The effect keeps its place in the step in its id.
    assert_eq!(pending, [("post_to_desk", format!("{}/0", event.id))]);
}

/// Each message a human sends arms the session timeout again. While the timer message sent
/// for an earlier one is on its way and comes back no later than the new timer is due, no
/// message is sent for the new one: timeout-check sends that one on as the new timer, and
/// the session times out once, when the new timer says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_moved_later_rides_on_the_message_already_on_its_way() {
    let clock = Arc::new(ManualClock::new(wall_now()));
    // 5 s: the first message stays delayed (on the wall clock) while the test runs its steps.
    let hub = hub_with(clock.clone(), None, |a| a.policy.session_timeout_secs = 5).await;
    let mut w = handed_off(&hub).await;
    let conv = desk_conversation(&hub);
    let delayed = || delayed_timers(&hub);
    let key = w.key();
    let armed = || async { hub.aws.store.load_session(&key).await.unwrap().unwrap().session.timer };

    // The human's first message arms the timeout, due in 5 s: a message is sent for it.
    let before = delayed().await;
    assert_eq!(hub.desk_reply(&conv, "Hello, Ana here.", Some("msg_1")).await.status, 200);
    run_worker(&hub).await;
    assert_eq!(delayed().await, before + 1);
    w.send("thanks, one question").await;
    run_worker(&hub).await;
    assert_eq!(armed().await, None, "the user's reply disarmed it");

    // A second later the human writes again: the timer is armed anew, due in 5 s, and
    // rides on the first message, which comes back before it.
    clock.advance_secs(1);
    assert_eq!(hub.desk_reply(&conv, "Let me check.", Some("msg_2")).await.status, 200);
    run_worker(&hub).await;
    let timer = armed().await.expect("armed again");
    assert_eq!(delayed().await, before + 1, "no message of its own");

    // The first message comes back (its SQS delay runs on the wall clock) when the new
    // timer is due: it fires as the new timer, once.
    clock.advance_secs(5);
    let started = std::time::Instant::now();
    while run_timers(&hub).await == 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "the timer message never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fired = receive(&hub.sqs, &hub.queues.events).await;
    assert_eq!(fired.len(), 1, "{fired:#?}");
    let event = parse_event(fired[0].body().unwrap()).unwrap();
    assert_eq!(event.kind, EventKind::TimerFired { generation: timer.generation });
    release(&hub.sqs, &hub.queues.events, &fired[0]).await;
    assert_eq!(run_worker(&hub).await, 1);
    let session = hub.aws.store.load_session(&key).await.unwrap().unwrap().session;
    assert_ne!(session.state.name(), "with_human", "the session timed out: {:?}", session.state);
    assert_eq!(delayed().await, before, "only the wait timer's message is left");
}

/// A brain's answer is applied in the drain that asked the brain: one invocation answers
/// the user and leaves nothing on the queue. When the store cannot take that step, the
/// answer is queued as an event instead and reaches the user through the queue, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_is_stepped_on_in_its_drain_or_queued_when_the_store_cannot() {
    use baton_tests::openai::{FakeOpenai, Turn};
    let llm = FakeOpenai::start("sk-reliability-key").await;
    llm.script([Turn::text(HOURS), Turn::text(SHIPPING)]);
    let url = llm.url();
    let hub = hub(move |a| a.brain = baton_tests::openai::brain(url, "sk-reliability-key")).await;
    let url = hub.queues.events.clone();
    let arn = queue_arn(&hub.sqs, &url).await;
    let mut w = Widget::start(&hub, None).await;

    w.send("What are your opening hours?").await;
    let question = receive(&hub.sqs, &url).await;
    assert_eq!(question.len(), 1);
    assert!(invoke_worker(&hub.aws, vec![record(&question[0], &arn)]).await.is_empty());
    delete(&hub.sqs, &url, &question[0]).await;
    assert_eq!(w.texts_from("bot").await, vec![HOURS], "answered by the one invocation");
    assert!(receive(&hub.sqs, &url).await.is_empty(), "nothing queued for the answer");

    let failing = Arc::new(baton_tests::failing_store::FailingCommits::new(hub.aws.ports.store.clone(), "fx:", 1));
    let mut down = hub.aws.clone();
    down.ports.store = failing.clone();
    w.send("How long does shipping take?").await;
    let question = receive(&hub.sqs, &url).await;
    assert!(invoke_worker(&down, vec![record(&question[0], &arn)]).await.is_empty());
    delete(&hub.sqs, &url, &question[0]).await;
    assert_eq!(failing.left(), 0, "the answer's step was refused");
    assert_eq!(w.texts_from("bot").await, vec![HOURS], "not answered yet");
    let queued = receive(&hub.sqs, &url).await;
    assert_eq!(queued.len(), 1);
    let answer = parse_event(queued[0].body().unwrap()).unwrap();
    assert!(answer.id.starts_with("fx:") && matches!(answer.kind, EventKind::BrainReplied { .. }), "{answer:?}");
    release(&hub.sqs, &url, &queued[0]).await;
    run_worker(&hub).await;
    assert_eq!(w.texts_from("bot").await, vec![HOURS, SHIPPING]);
    assert_eq!(llm.requests().len(), 2, "each question asked once");
}

/// The FAQ brain answers without I/O, so it is asked within the step: the question and its
/// answer are one commit, and no `AskBrain` effect is stored or run. What the user sees is
/// the same; a re-delivered question is still a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faq_answer_is_committed_with_its_question() {
    let hub = hub(|_| {}).await;
    let url = hub.queues.events.clone();
    let arn = queue_arn(&hub.sqs, &url).await;
    let mut w = Widget::start(&hub, None).await;
    w.send("What are your opening hours?").await;
    let question = receive(&hub.sqs, &url).await;
    let event = parse_event(question[0].body().unwrap()).unwrap();
    // Applied, not drained: the answer is already pending with the question's commit.
    assert_eq!(
        baton_runtime::worker::apply_event(&hub.aws.ports, &event).await.unwrap(),
        baton_runtime::worker::Processed::Applied { effects: 1 }
    );
    let pending = hub.aws.store.pending_effects(&w.key()).await.unwrap();
    let names: Vec<&str> = pending.iter().map(|i| i.effect.effect.name()).collect();
    assert_eq!(names, ["send_to_user"], "no ask_brain stored");
    assert_eq!(pending[0].effect.id, format!("fx:{}/0/0", event.id), "the id it has as the answer's effect");
    let trace = hub.aws.store.trace(&w.key()).await.unwrap();
    assert_eq!(trace.len(), 1, "one step: {trace:#?}");
    assert!(trace[0].detail.contains("answered in the step"), "{trace:#?}");

    assert!(invoke_worker(&hub.aws, vec![record(&question[0], &arn)]).await.is_empty());
    delete(&hub.sqs, &url, &question[0]).await;
    assert_eq!(w.texts_from("bot").await, vec![HOURS], "answered once");
    assert!(receive(&hub.sqs, &url).await.is_empty(), "nothing queued for the answer");
}

/// A worker writes its event's seen mark after the effects, with the trace lines and the
/// record of its drain (the lease given back, the effects it completed). One that dies after
/// its effects and before that write leaves its record to come back. Nothing is applied
/// twice: with the FAQ brain, the session's last event turns the copy away and the mark is
/// written then; with a brain whose answer is applied in the drain, the question's mark was
/// written before that step's commit, so the copy is turned away by its mark, and the brain
/// is not asked again. The answer's completion died with the worker, as after any crash
/// between an effect and its completion: the answer runs again once the lease runs out, with
/// the same idempotency key, which the widget's message log takes as the same message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_dies_before_its_flush_applies_nothing_twice() {
    use baton_tests::openai::{FakeOpenai, Turn};
    let llm = FakeOpenai::start("sk-reliability-key").await;
    llm.script([Turn::text(HOURS)]);
    let url = llm.url();
    let clocks = [Arc::new(ManualClock::new(wall_now())), Arc::new(ManualClock::new(wall_now()))];
    let with_llm = hub_with(clocks[1].clone(), None, move |a| {
        a.brain = baton_tests::openai::brain(url, "sk-reliability-key");
        a.policy.session_timeout_secs = 3600;
    })
    .await;
    let with_faq = hub_with(clocks[0].clone(), None, |a| a.policy.session_timeout_secs = 3600).await;
    for (hub, clock) in [&with_faq, &with_llm].into_iter().zip(&clocks) {
        let events = hub.queues.events.clone();
        let arn = queue_arn(&hub.sqs, &events).await;
        let mut w = Widget::start(hub, None).await;
        w.send("What are your opening hours?").await;
        let question = receive(&hub.sqs, &events).await;
        assert_eq!(question.len(), 1);
        let event = parse_event(question[0].body().unwrap()).unwrap();

        // Another instance applies it, runs its effects and dies before its flush.
        let dying = another_worker(hub).await;
        baton_runtime::worker::apply_event(&dying.ports, &event).await.unwrap();
        baton_runtime::worker::drain_outbox(&dying.ports, &event.conversation).await.unwrap();
        drop(dying);
        assert_eq!(w.texts_from("bot").await, vec![HOURS]);
        let stepped = std::ptr::eq(hub, &with_llm);
        assert_eq!(
            hub.aws.store.is_seen(&w.key(), &event.id).await.unwrap(),
            stepped,
            "marked before the answer's step"
        );

        release(&hub.sqs, &events, &question[0]).await;
        let again = receive(&hub.sqs, &events).await;
        assert_eq!(again.len(), 1);
        assert!(invoke_worker(&hub.aws, vec![record(&again[0], &arn)]).await.is_empty());
        delete(&hub.sqs, &events, &again[0]).await;
        assert_eq!(w.texts_from("bot").await, vec![HOURS], "answered once");
        assert!(hub.aws.store.is_seen(&w.key(), &event.id).await.unwrap(), "marked now");
        assert!(receive(&hub.sqs, &events).await.is_empty());
        assert_eq!(hub.aws.store.pending_effects(&w.key()).await.unwrap().len(), 1, "its completion was lost");

        // The dead worker's lease (90 s by its own clock) runs out; the sweeper's wake-up
        // runs the answer again.
        clock.advance_secs(120);
        assert_eq!(sweep(&hub.aws).await.unwrap(), Swept { timers: 0, wakes: 1 });
        run_worker(hub).await;
        assert!(hub.aws.store.pending_effects(&w.key()).await.unwrap().is_empty());
        assert_eq!(w.texts_from("bot").await, vec![HOURS], "the repeat is the same message");
        assert_eq!(sweep(&hub.aws).await.unwrap(), Swept::default());
    }
    assert_eq!(llm.requests().len(), 1, "the brain asked once");
}

/// A conversation's events land on different worker instances. Each drain gives its lease
/// back at its event's seen mark, and the next instance, which did not, reads that mark: it
/// sees through the lease and the effect, and its commit takes them out. An instance whose
/// memory of an earlier release is out of date reads the mark too. Without the mark read the
/// second answer would wait for the first lease to run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_on_alternating_instances_see_through_releases_at_the_mark() {
    let hub = hub(|_| {}).await;
    let events = hub.queues.events.clone();
    let arn = queue_arn(&hub.sqs, &events).await;
    let other = another_worker(&hub).await;
    let mut w = Widget::start(&hub, None).await;
    for (i, aws) in [&hub.aws, &other, &hub.aws, &other, &hub.aws].into_iter().enumerate() {
        w.send("What are your opening hours?").await;
        let question = receive(&hub.sqs, &events).await;
        assert_eq!(question.len(), 1);
        assert!(invoke_worker(aws, vec![record(&question[0], &arn)]).await.is_empty());
        delete(&hub.sqs, &events, &question[0]).await;
        assert_eq!(w.texts_from("bot").await, vec![HOURS; i + 1], "answered at once, once");
        // Only the last drain's effect still shows on the item, under the lease it gave back.
        let item = session_item(&hub, &w.key()).await.unwrap();
        assert_eq!(item.keys().filter(|k| k.starts_with("e#")).count(), 1, "{:?}", item.keys());
        assert!(item.contains_key("drain_by"));
        assert!(other.store.pending_effects(&w.key()).await.unwrap().is_empty());
    }
    assert!(receive(&hub.sqs, &events).await.is_empty());
    assert_eq!(sweep(&hub.aws).await.unwrap(), Swept::default());
}

/// The session item of `key` as stored, if any.
async fn session_item(
    hub: &Hub,
    key: &baton_core::ConversationKey,
) -> Option<std::collections::HashMap<String, baton_aws::aws_sdk_dynamodb::types::AttributeValue>> {
    hub.aws
        .store
        .client()
        .get_item()
        .table_name(hub.aws.store.table_name())
        .key("pk", baton_aws::aws_sdk_dynamodb::types::AttributeValue::S(format!("CONV#{key}")))
        .key("sk", baton_aws::aws_sdk_dynamodb::types::AttributeValue::S("SESSION".into()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
}

/// A second instance of the functions on the hub's table and queues.
async fn another_worker(hub: &Hub) -> baton_lambda::Aws {
    let secrets = Arc::new(baton_aws::SsmSecrets::new(baton_aws::ssm_client_from_env().await));
    let clock = Arc::new(baton_runtime::clock::SystemClock);
    wire(config(hub.aws.store.table_name(), &hub.queues), clock, hub.dynamo.clone(), hub.sqs.clone(), secrets)
}

/// Who holds the conversation's drain lease (the session item's `drain_by`), if anyone.
async fn drain_lease_holder(hub: &Hub, key: &baton_core::ConversationKey) -> Option<String> {
    session_item(hub, key).await?.get("drain_by").and_then(|v| v.as_s().ok()).cloned()
}
