//! DynamoDB specifics on moto: the table definition, the sparse `due` index, TTLs, keys
//! for long ids, server-side rejections and the widget's message log.

mod common;

use aws_sdk_dynamodb::types::{AttributeValue, TimeToLiveStatus};
use baton_aws::{create_table, table, ArmedTimers, DynamoStore, StoredTimer};
use baton_core::effect::{Effect, PendingEffect, TimerKind};
use baton_core::model::{Button, Channel, ConversationKey, Millis, OutMessage, Role};
use baton_core::ports::{Commit, CommitOutcome, Completion, DeskLink, DrainLeases, Store, StoreError, TraceEntry};
use baton_core::session::{ArmedTimer, Session};
use std::collections::HashMap;

fn key(user: &str) -> ConversationKey {
    ConversationKey::new("demo", Channel::Widget, user).unwrap()
}

fn trace(at: i64, id: &str) -> TraceEntry {
    TraceEntry { at: Millis(at), what: "event".into(), id: id.into(), detail: String::new() }
}

fn commit(k: &ConversationKey, expected: u64, event: &str, timer: Option<(u64, i64)>, at: i64) -> Commit {
    let mut session = Session::new(k.clone());
    session.timer = timer.map(|(generation, due)| ArmedTimer { generation, kind: TimerKind::Wait, due: Millis(due) });
    Commit {
        expected_version: expected,
        session,
        event_id: event.into(),
        effects: vec![],
        trace: trace(at, event),
        keep_until: Millis(at + 86_400_000),
    }
}

async fn raw_item(store: &DynamoStore, pk: &str, sk: &str) -> Option<HashMap<String, AttributeValue>> {
    store
        .client()
        .get_item()
        .table_name(store.table_name())
        .key("pk", AttributeValue::S(pk.into()))
        .key("sk", AttributeValue::S(sk.into()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
}

fn number(item: &HashMap<String, AttributeValue>, name: &str) -> i64 {
    match item.get(name) {
        Some(AttributeValue::N(v)) => v.parse().unwrap(),
        other => panic!("{name}: {other:?}"),
    }
}

#[tokio::test]
async fn create_table_is_idempotent_and_matches_production() {
    let (dynamo, _) = common::clients().await;
    let name = baton_tests::moto::unique_name("tbl");
    create_table(&dynamo, &name).await.unwrap();
    create_table(&dynamo, &name).await.unwrap();
    let ttl = dynamo.describe_time_to_live().table_name(&name).send().await.unwrap();
    let ttl = ttl.time_to_live_description().unwrap();
    assert_eq!(ttl.time_to_live_status(), Some(&TimeToLiveStatus::Enabled));
    assert_eq!(ttl.attribute_name(), Some(table::EXPIRES_AT));
    let described = dynamo.describe_table().table_name(&name).send().await.unwrap();
    let t = described.table().unwrap();
    let mut indexes: Vec<_> = t
        .global_secondary_indexes()
        .iter()
        .map(|g| {
            let keys: Vec<_> = g.key_schema().iter().map(|k| k.attribute_name().to_string()).collect();
            // As template.yaml has them: the sweeper reads candidates back from the table.
            let projection = g.projection().and_then(|p| p.projection_type()).map(|p| p.as_str());
            assert_eq!(projection, Some("KEYS_ONLY"), "{:?}", g.index_name());
            (g.index_name().unwrap().to_string(), keys)
        })
        .collect();
    indexes.sort();
    assert_eq!(
        indexes,
        [
            ("due".to_string(), vec!["due_shard".to_string(), "due_at".to_string()]),
            ("outbox_due".to_string(), vec!["obx_shard".to_string(), "obx_due".to_string()]),
        ]
    );
    assert_eq!(t.billing_mode_summary().and_then(|b| b.billing_mode()).map(|m| m.as_str()), Some("PAY_PER_REQUEST"));
}

#[tokio::test]
async fn sessions_due_reads_the_sparse_index() {
    let store = common::store().await;
    let (k1, k2, k3) = (key("d1"), key("d2"), key("d3"));
    assert_eq!(
        store.commit(commit(&k1, 0, "a", Some((2, 1000)), 1)).await.unwrap(),
        CommitOutcome::Committed { version: 1 }
    );
    store.commit(commit(&k2, 0, "b", Some((3, 5000)), 1)).await.unwrap();
    store.commit(commit(&k3, 0, "c", None, 1)).await.unwrap();
    // Sessions spread over the shards; the result is merged by due time.
    for i in 0..12 {
        store.commit(commit(&key(&format!("late{i}")), 0, &format!("l{i}"), Some((1, 100_000 + i)), 1)).await.unwrap();
    }

    assert_eq!(store.sessions_due(Millis(999), 10).await.unwrap(), vec![]);
    assert_eq!(store.sessions_due(Millis(3000), 10).await.unwrap(), vec![(k1.clone(), 2)]);
    assert_eq!(store.sessions_due(Millis(10_000), 10).await.unwrap(), vec![(k1.clone(), 2), (k2.clone(), 3)]);
    assert_eq!(store.sessions_due(Millis(10_000), 1).await.unwrap(), vec![(k1.clone(), 2)]);
    assert_eq!(store.sessions_due(Millis(10_000), 0).await.unwrap(), vec![]);
    let all = store.sessions_due(Millis(1_000_000), 100).await.unwrap();
    assert_eq!(all.len(), 14);
    assert_eq!(all[13], (key("late11"), 1));

    // Only sessions with an armed timer are in the index.
    let item = raw_item(&store, &format!("CONV#{k3}"), "SESSION").await.unwrap();
    assert!(!item.contains_key("due_at") && !item.contains_key("due_shard"));
    let item = raw_item(&store, &format!("CONV#{k1}"), "SESSION").await.unwrap();
    assert_eq!(number(&item, "due_at"), 1000);
    assert_eq!(number(&item, "version"), 1);
    // The item's layout, with the document's own schema beside it.
    assert_eq!(number(&item, "schema"), 5);
    assert_eq!(number(&item, "doc_schema"), 1);

    // Disarming leaves the index key (a timer armed again soon needs no index write) and
    // takes the timer away; the sweep that finds it takes it out of the index.
    // The message the worker sends for it comes back when it is due.
    let armed = StoredTimer { generation: 2, due: Some(Millis(1000)), message_due: Some(Millis(1000)) };
    assert_eq!(store.armed_timer(&k1).await.unwrap(), Some(armed));
    assert_eq!(store.armed_timer(&key("nobody")).await.unwrap(), None);
    store.commit(commit(&k1, 1, "a2", None, 2)).await.unwrap();
    assert_eq!(store.armed_timer(&k1).await.unwrap(), None, "timeout-check drops its message");
    let item = raw_item(&store, &format!("CONV#{k1}"), "SESSION").await.unwrap();
    assert!(!item.contains_key("due_gen") && !item.contains_key("timer_due"));
    assert_eq!(number(&item, "due_at"), 1000);
    assert_eq!(store.sessions_due(Millis(10_000), 10).await.unwrap(), vec![(k2.clone(), 3)]);
    let item = raw_item(&store, &format!("CONV#{k1}"), "SESSION").await.unwrap();
    assert!(!item.contains_key("due_at") && !item.contains_key("due_shard"), "out of the index");
    // Armed again while its key is still there: the key stays, being no later.
    store.commit(commit(&k3, 1, "c2", Some((4, 7000)), 2)).await.unwrap();
    store.commit(commit(&k3, 2, "c3", None, 3)).await.unwrap();
    store.commit(commit(&k3, 3, "c4", Some((6, 9000)), 4)).await.unwrap();
    let item = raw_item(&store, &format!("CONV#{k3}"), "SESSION").await.unwrap();
    assert_eq!((number(&item, "due_at"), number(&item, "timer_due"), number(&item, "due_gen")), (7000, 9000, 6));
    assert_eq!(store.sessions_due(Millis(8000), 10).await.unwrap(), vec![(k2.clone(), 3)]);
    assert_eq!(store.sessions_due(Millis(9000), 10).await.unwrap(), vec![(k2.clone(), 3), (k3.clone(), 6)]);
    store.commit(commit(&k3, 4, "c5", None, 5)).await.unwrap();
    store.commit(commit(&k2, 1, "b2", Some((4, 20_000)), 2)).await.unwrap();
    // A later timer leaves the index key where it was (no index write); the sweep that
    // finds it early moves it and reports nothing.
    let item = raw_item(&store, &format!("CONV#{k2}"), "SESSION").await.unwrap();
    assert_eq!((number(&item, "due_at"), number(&item, "timer_due")), (5000, 20_000));
    assert_eq!(store.sessions_due(Millis(10_000), 10).await.unwrap(), vec![]);
    let item = raw_item(&store, &format!("CONV#{k2}"), "SESSION").await.unwrap();
    assert_eq!(number(&item, "due_at"), 20_000);
    // The commit that kept the old key is refused once the sweep moved it (the worker then
    // loads the item again), so an earlier timer never hides behind the moved key.
    assert_eq!(store.commit(commit(&k2, 2, "b3", Some((5, 15_000)), 3)).await.unwrap(), CommitOutcome::VersionConflict);
    store.load_session(&k2).await.unwrap();
    store.commit(commit(&k2, 2, "b3", Some((5, 15_000)), 3)).await.unwrap();
    let item = raw_item(&store, &format!("CONV#{k2}"), "SESSION").await.unwrap();
    assert_eq!((number(&item, "due_at"), number(&item, "timer_due")), (15_000, 15_000));
    assert_eq!(store.sessions_due(Millis(15_000), 10).await.unwrap(), vec![(k2.clone(), 5)]);

    // A session of an earlier build has no `timer_due`: its index key is its timer's.
    set_on_session(&store, &k2, vec![("due_at", AttributeValue::N("12000".into()))]).await;
    remove_from_session(&store, &k2, "timer_due").await;
    assert_eq!(store.sessions_due(Millis(11_999), 10).await.unwrap(), vec![]);
    assert_eq!(store.sessions_due(Millis(12_000), 10).await.unwrap(), vec![(k2, 5)]);
}

#[tokio::test]
async fn a_sweep_reads_past_sessions_whose_timers_moved_later() {
    let store = common::store().await;
    // Five sessions whose timers were pushed back, and one really due behind them.
    for i in 0..5 {
        let k = key(&format!("pushed{i}"));
        store.commit(commit(&k, 0, &format!("p{i}"), Some((1, 1000 + i)), 1)).await.unwrap();
        store.commit(commit(&k, 1, &format!("q{i}"), Some((2, 900_000)), 2)).await.unwrap();
    }
    let due = key("due");
    store.commit(commit(&due, 0, "d", Some((7, 2000)), 1)).await.unwrap();
    assert_eq!(store.sessions_due(Millis(3000), 2).await.unwrap(), vec![(due.clone(), 7)]);
    for i in 0..5 {
        let item = raw_item(&store, &format!("CONV#{}", key(&format!("pushed{i}"))), "SESSION").await.unwrap();
        assert_eq!(number(&item, "due_at"), 900_000, "moved to its timer");
    }
    assert_eq!(store.sessions_due(Millis(3000), 10).await.unwrap(), vec![(due, 7)]);
}

#[tokio::test]
async fn a_timer_armed_while_a_message_is_on_its_way_rides_on_it() {
    let store = common::store().await;
    let k = key("carried");
    let carried = |version| store.timer_carried(&k, version);
    let armed = |generation, due: i64, message: i64| {
        Some(StoredTimer { generation, due: Some(Millis(due)), message_due: Some(Millis(message)) })
    };
    // A human's message arms the session timeout: its message is sent.
    store.commit(commit(&k, 0, "h1", Some((1, 10_000)), 1)).await.unwrap();
    assert!(!carried(1));
    assert_eq!(store.armed_timer(&k).await.unwrap(), armed(1, 10_000, 10_000));
    // The user's reply disarms it; the message is still on its way.
    store.load_session(&k).await.unwrap();
    store.commit(commit(&k, 1, "u1", None, 2)).await.unwrap();
    // The next human message arms it later: no message of its own (asked once).
    store.load_session(&k).await.unwrap();
    store.commit(commit(&k, 2, "h2", Some((2, 20_000)), 3)).await.unwrap();
    assert!(carried(3));
    assert!(!carried(3), "asked once");
    assert_eq!(store.armed_timer(&k).await.unwrap(), armed(2, 20_000, 10_000));
    // Armed earlier than the message comes back: a message of its own.
    store.load_session(&k).await.unwrap();
    store.commit(commit(&k, 3, "h3", Some((3, 5_000)), 4)).await.unwrap();
    assert!(!carried(4));
    assert_eq!(store.armed_timer(&k).await.unwrap(), armed(3, 5_000, 5_000));
    // The same timer kept by a later commit changes nothing.
    store.load_session(&k).await.unwrap();
    store.commit(commit(&k, 4, "x", Some((3, 5_000)), 5)).await.unwrap();
    assert!(!carried(5));
    assert_eq!(store.armed_timer(&k).await.unwrap(), armed(3, 5_000, 5_000));
    // Armed after the last message came back: a message of its own.
    store.load_session(&k).await.unwrap();
    store.commit(commit(&k, 5, "h4", Some((4, 30_000)), 6_000)).await.unwrap();
    assert!(!carried(6));
    assert_eq!(store.armed_timer(&k).await.unwrap(), armed(4, 30_000, 30_000));
    // The commit remembers what it wrote, so the next needs no load to tell.
    store.commit(commit(&k, 6, "h5", Some((5, 40_000)), 6_001)).await.unwrap();
    assert!(carried(7));
    // Another instance that did not load the item cannot tell: its worker sends a message,
    // and the item keeps the one it knows of.
    let other = DynamoStore::new(store.client().clone(), store.table_name());
    other.commit(commit(&k, 7, "h6", Some((6, 50_000)), 6_002)).await.unwrap();
    assert!(!other.timer_carried(&k, 8));
    assert_eq!(store.armed_timer(&k).await.unwrap(), armed(6, 50_000, 30_000));
}

#[tokio::test]
async fn seen_ids_carry_an_eight_day_ttl() {
    let store = common::store().await;
    let at = 1_700_000_000_123;
    let k = key("s");
    store.commit(commit(&k, 0, "wa:wamid.1", None, at)).await.unwrap();
    let item = raw_item(&store, &format!("CONV#{k}"), "SEEN#wa:wamid.1").await.unwrap();
    assert_eq!(number(&item, "expires_at"), 1_700_000_000 + 8 * 24 * 3600);
}

#[tokio::test]
async fn a_transaction_the_server_rejects_writes_nothing() {
    let store = common::store().await;
    let k = key("big");
    let mut c = commit(&k, 0, "e1", Some((1, 5)), 1);
    c.effects = vec![
        PendingEffect::for_event(
            "e1",
            0,
            Effect::SendToUser {
                message: OutMessage::new(Role::Bot, "small"),
                reply_token: None,
                outside_window: false,
            },
        ),
        // Over DynamoDB's 400 KB item limit even deflated (too large for the session item,
        // so an outbox item of its own): the whole transaction is refused.
        PendingEffect::for_event(
            "e1",
            1,
            Effect::SendToUser {
                message: OutMessage::new(Role::Bot, incompressible(640 * 1024)),
                reply_token: None,
                outside_window: false,
            },
        ),
    ];
    match store.commit(c).await {
        Err(StoreError::Unavailable(m)) => assert!(m.contains("commit"), "{m}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert_eq!(store.load_session(&k).await.unwrap(), None);
    assert!(!store.is_seen(&k, "e1").await.unwrap());
    assert!(store.pending_effects(&k).await.unwrap().is_empty());
    assert!(store.trace(&k).await.unwrap().is_empty());
    assert!(store.sessions_due(Millis(10), 10).await.unwrap().is_empty());

    // Too many effects for one transaction is refused before anything is sent.
    let mut c = commit(&k, 0, "e2", None, 1);
    c.effects = (0..99).map(|i| PendingEffect::for_event("e2", i, Effect::CancelTimer)).collect();
    assert!(matches!(store.commit(c).await, Err(StoreError::Unavailable(_))));
    let mut c = commit(&k, 0, "e3", None, 1);
    c.effects = (0..98).map(|i| PendingEffect::for_event("e3", i, Effect::CancelTimer)).collect();
    assert_eq!(store.commit(c).await.unwrap(), CommitOutcome::Committed { version: 1 });
    let pending = store.pending_effects(&k).await.unwrap();
    assert_eq!(pending.len(), 98);
    assert_eq!(pending[97].effect.id, "e3/97");
}

#[tokio::test]
async fn ids_longer_than_a_key_allows_are_hashed() {
    let store = common::store().await;
    let k = key("long");
    let event = format!("fx:{}", "e/0/".repeat(700));
    let mut c = commit(&k, 0, &event, None, 1);
    c.effects = vec![PendingEffect::for_event(&event, 0, Effect::CancelTimer)];
    assert_eq!(store.commit(c).await.unwrap(), CommitOutcome::Committed { version: 1 });
    assert!(store.is_seen(&k, &event).await.unwrap());
    assert!(!store.is_seen(&k, &format!("{event}x")).await.unwrap());
    let pending = store.pending_effects(&k).await.unwrap();
    assert_eq!(pending[0].effect.id, format!("{event}/0"));
    store.complete_effect(&k, &format!("{event}/0"), trace(2, "done"), Millis(i64::MAX)).await.unwrap();
    assert!(store.pending_effects(&k).await.unwrap().is_empty());

    let link = DeskLink {
        agent: "demo".into(),
        desk_conversation_id: "d".repeat(3000),
        handoff_id: "h".repeat(3000),
        conversation: k.clone(),
    };
    store.put_desk_link(&link, Millis(i64::MAX)).await.unwrap();
    assert_eq!(store.desk_link("demo", &link.desk_conversation_id).await.unwrap(), Some(link.clone()));
    assert_eq!(store.desk_link_for_handoff(&link.handoff_id).await.unwrap(), Some(link));
}

#[tokio::test]
async fn corrupt_records_are_reported_without_their_content() {
    let store = common::store().await;
    store
        .client()
        .put_item()
        .table_name(store.table_name())
        .item("pk", AttributeValue::S("AGENT#demo".into()))
        .item("sk", AttributeValue::S("CONFIG".into()))
        .item("schema", AttributeValue::N("1".into()))
        .item("doc", AttributeValue::S(r#"{"id": 5, "password": "hunter2"}"#.into()))
        .send()
        .await
        .unwrap();
    match store.get_agent("demo").await {
        Err(StoreError::Corrupt { key, message }) => {
            assert_eq!(key, "agent demo");
            assert!(!message.contains("hunter2"), "{message}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[tokio::test]
async fn message_log_dedupes_orders_and_tolerates_gaps() {
    let store = common::store().await;
    let (a, b) = (key("a"), key("b"));
    let mut hello = OutMessage::new(Role::Bot, "hello");
    hello.buttons.push(Button { label: "End".into(), value: "/end".into() });
    let at = 1_700_000_000_000;
    // The agent's retention: an hour.
    let keep = Millis(at + 3_600_000);
    let s1 = store.append_user_message(&a, "k1", &hello, Millis(at), keep).await.unwrap().unwrap();
    let other = OutMessage::new(Role::Human, "for b");
    assert_eq!(store.append_user_message(&b, "k2", &other, Millis(at + 1), keep).await.unwrap(), Some(1));
    // The re-run effect with the same key: not shown twice.
    assert_eq!(store.append_user_message(&a, "k1", &hello, Millis(at + 2), keep).await.unwrap(), None);
    let second = OutMessage::new(Role::Human, "second");
    let s2 = store.append_user_message(&a, "k3", &second, Millis(at + 3), keep).await.unwrap().unwrap();
    assert_eq!((s1, s2), (1, 2));

    // An append that died between the counter and its message: the effect's re-run writes
    // the message under the number it took.
    let take_number = |key: &'static str| {
        store
            .client()
            .update_item()
            .table_name(store.table_name())
            .key("pk", AttributeValue::S(format!("CONV#{a}")))
            .key("sk", AttributeValue::S("MSGSEQ".into()))
            .update_expression("ADD #s :one SET #l = :k")
            .expression_attribute_names("#s", "seq")
            .expression_attribute_names("#l", "last_idem")
            .expression_attribute_values(":one", AttributeValue::N("1".into()))
            .expression_attribute_values(":k", AttributeValue::S(key.into()))
            .send()
    };
    take_number("k-died").await.unwrap();
    let died = OutMessage::new(Role::Bot, "written by the re-run");
    assert_eq!(store.append_user_message(&a, "k-died", &died, Millis(at + 4), keep).await.unwrap(), Some(3));
    assert_eq!(store.append_user_message(&a, "k-died", &died, Millis(at + 4), keep).await.unwrap(), None);
    // One whose effect never ran again leaves its number unused; cursors skip it.
    take_number("k-gone").await.unwrap();
    let third = OutMessage::new(Role::Bot, "third");
    let s4 = store.append_user_message(&a, "k4", &third, Millis(at + 5), keep).await.unwrap().unwrap();
    assert_eq!(s4, 5);

    let all = store.user_messages_after(&a, 0, 10).await.unwrap();
    assert_eq!(
        all,
        vec![
            (s1, Millis(at), hello.clone()),
            (s2, Millis(at + 3), second.clone()),
            (3, Millis(at + 4), died.clone()),
            (s4, Millis(at + 5), third.clone())
        ]
    );
    assert_eq!(
        store.user_messages_after(&a, s1, 10).await.unwrap(),
        vec![(s2, Millis(at + 3), second), (3, Millis(at + 4), died), (s4, Millis(at + 5), third.clone())]
    );
    assert_eq!(store.user_messages_after(&a, 4, 10).await.unwrap(), vec![(s4, Millis(at + 5), third)]);
    assert_eq!(store.user_messages_after(&a, -5, 1).await.unwrap().len(), 1);
    assert!(store.user_messages_after(&a, s4, 10).await.unwrap().is_empty());
    assert!(store.user_messages_after(&a, i64::MAX, 10).await.unwrap().is_empty());
    assert_eq!(store.user_messages_after(&b, 0, 10).await.unwrap().len(), 1);

    // Messages and the counter expire with the retention.
    let item = raw_item(&store, &format!("CONV#{a}"), &format!("MSG#{s1:020}")).await.unwrap();
    assert_eq!(number(&item, "expires_at"), at / 1000 + 3600);
    assert!(raw_item(&store, "IDEM#k1", "-").await.is_none(), "no marker items any more");
    let counter = raw_item(&store, &format!("CONV#{a}"), "MSGSEQ").await.unwrap();
    assert_eq!(number(&counter, "expires_at"), at / 1000 + 3600);
}

/// The agent's retention reaches the table as TTL: the session and its trace lines expire
/// `keep_until` after the event, and a later event moves the session's expiry on.
#[tokio::test]
async fn sessions_and_trace_lines_expire_with_the_agents_retention() {
    let store = common::store().await;
    let k = key("ttl");
    let at = 1_700_000_000_000;
    store.commit(commit(&k, 0, "t1", None, at)).await.unwrap();
    let session = raw_item(&store, &format!("CONV#{k}"), "SESSION").await.unwrap();
    assert_eq!(number(&session, "expires_at"), at / 1000 + 86_400);
    store.flush_trace().await.unwrap();
    let lines = trace_items(&store, &k).await;
    assert_eq!(lines.len(), 1);
    assert_eq!(number(&lines[0], "expires_at"), at / 1000 + 86_400);

    store.commit(commit(&k, 1, "t2", None, at + 3_600_000)).await.unwrap();
    let session = raw_item(&store, &format!("CONV#{k}"), "SESSION").await.unwrap();
    assert_eq!(number(&session, "expires_at"), at / 1000 + 3600 + 86_400);
}

async fn trace_items(store: &DynamoStore, k: &ConversationKey) -> Vec<HashMap<String, AttributeValue>> {
    raw_items(store, k, "TRACE#").await
}

/// The conversation's items whose sort key starts with `prefix`, as stored.
async fn raw_items(store: &DynamoStore, k: &ConversationKey, prefix: &str) -> Vec<HashMap<String, AttributeValue>> {
    let found = store
        .client()
        .query()
        .table_name(store.table_name())
        .key_condition_expression("pk = :pk AND begins_with(sk, :p)")
        .expression_attribute_values(":pk", AttributeValue::S(format!("CONV#{k}")))
        .expression_attribute_values(":p", AttributeValue::S(prefix.into()))
        .consistent_read(true)
        .send()
        .await
        .unwrap();
    found.items().to_vec()
}

/// Trace lines are kept until `flush_trace` and then written as one item per conversation
/// (a step and its effects' results: one write instead of one per line); reading the trace
/// flushes first, and items of earlier builds (one line in plain attributes) still read.
#[tokio::test]
async fn trace_lines_are_written_one_item_per_conversation_and_flush() {
    let store = common::store().await;
    let (a, b) = (key("lines-a"), key("lines-b"));
    let at = 1_700_000_000_000;
    let mut first = commit(&a, 0, "a1", None, at);
    first.effects = vec![PendingEffect::for_event("a1", 0, Effect::CancelTimer)];
    store.commit(first).await.unwrap();
    store.commit(commit(&b, 0, "b1", None, at)).await.unwrap();
    let done = TraceEntry { at: Millis(at + 5), what: "effect".into(), id: "a1/0".into(), detail: "done".into() };
    store.complete_effect(&a, "a1/0", done, Millis(at + 86_400_000)).await.unwrap();
    assert!(trace_items(&store, &a).await.is_empty(), "kept until the flush");
    store.flush_trace().await.unwrap();
    assert_eq!(trace_items(&store, &a).await.len(), 1, "both lines of a in one item");
    assert_eq!(trace_items(&store, &b).await.len(), 1);

    // A line in the form of earlier builds, then one more kept line: read in order.
    let mut old = HashMap::new();
    old.insert("pk".to_string(), AttributeValue::S(format!("CONV#{a}")));
    old.insert("sk".to_string(), AttributeValue::S(format!("TRACE#{:020}#old", at + 6)));
    old.insert("at".to_string(), AttributeValue::N((at + 6).to_string()));
    for (name, value) in [("what", "event"), ("id", "old"), ("detail", "")] {
        old.insert(name.to_string(), AttributeValue::S(value.into()));
    }
    store.client().put_item().table_name(store.table_name()).set_item(Some(old)).send().await.unwrap();
    store.commit(commit(&a, 1, "a2", None, at + 7)).await.unwrap();
    let ids: Vec<String> = store.trace(&a).await.unwrap().into_iter().map(|t| t.id).collect();
    assert_eq!(ids, ["a1", "a1/0", "old", "a2"]);

    // A kept line does not outlive an erase.
    store.commit(commit(&b, 1, "b2", None, at + 8)).await.unwrap();
    store.erase_conversation(&b).await.unwrap();
    store.flush_trace().await.unwrap();
    assert!(trace_items(&store, &b).await.is_empty());
}

/// A cached agent config or desk status is reused for the cache's time: another process's
/// change shows once it is over (and at once on a store without the cache).
#[tokio::test]
async fn config_cache_reuses_reads_for_its_time() {
    use baton_core::agent::Agent;
    use baton_core::model::ServiceStatus;
    use baton_core::ports::DeskStatusRecord;
    let writer = common::store().await;
    let (dynamo, _) = common::clients().await;
    let ttl = std::time::Duration::from_millis(400);
    let cached = DynamoStore::new(dynamo.clone(), writer.table_name()).with_config_cache(ttl);
    let uncached = DynamoStore::new(dynamo, writer.table_name());

    let mut agent: Agent = serde_json::from_str(r#"{"id":"demo","name":"Before"}"#).unwrap();
    writer.put_agent(&agent).await.unwrap();
    let status = |detail: &str| DeskStatusRecord {
        status: ServiceStatus::Available,
        detail: detail.into(),
        checked_at: Millis(1),
    };
    writer.set_desk_status("demo", &status("before")).await.unwrap();
    assert_eq!(cached.get_agent("demo").await.unwrap().unwrap().name, "Before");
    assert_eq!(cached.desk_status("demo").await.unwrap().unwrap().detail, "before");
    // An unknown agent is cached as unknown too.
    assert_eq!(cached.get_agent("later").await.unwrap(), None);

    agent.name = "After".into();
    writer.put_agent(&agent).await.unwrap();
    writer.set_desk_status("demo", &status("after")).await.unwrap();
    writer.put_agent(&serde_json::from_str(r#"{"id":"later"}"#).unwrap()).await.unwrap();
    assert_eq!(uncached.get_agent("demo").await.unwrap().unwrap().name, "After");
    assert_eq!(cached.get_agent("demo").await.unwrap().unwrap().name, "Before");
    assert_eq!(cached.desk_status("demo").await.unwrap().unwrap().detail, "before");
    assert_eq!(cached.get_agent("later").await.unwrap(), None);

    tokio::time::sleep(ttl).await;
    assert_eq!(cached.get_agent("demo").await.unwrap().unwrap().name, "After");
    assert_eq!(cached.desk_status("demo").await.unwrap().unwrap().detail, "after");
    assert!(cached.get_agent("later").await.unwrap().is_some());
}

/// A store that keeps configs for a while reads them eventually consistent (half the read
/// units: they may be that stale anyway); one without reads them strongly consistent.
#[tokio::test]
async fn kept_configs_are_read_for_half_the_units() {
    use baton_core::model::ServiceStatus;
    use baton_core::ports::DeskStatusRecord;
    use baton_tests::aws_meter::AwsMeter;
    let writer = common::store().await;
    writer.put_agent(&serde_json::from_str(r#"{"id":"demo","name":"Demo"}"#).unwrap()).await.unwrap();
    let status = DeskStatusRecord { status: ServiceStatus::Available, detail: "ok".into(), checked_at: Millis(1) };
    writer.set_desk_status("demo", &status).await.unwrap();
    let meter = AwsMeter::start(&baton_tests::moto::endpoint(), Vec::new()).await;
    let sdk = baton_aws::sdk_config().await;
    let metered = || {
        let dynamo = aws_sdk_dynamodb::Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(&sdk).endpoint_url(meter.url()).build(),
        );
        DynamoStore::new(dynamo, writer.table_name())
    };
    let read_units = |from: usize| meter.calls()[from..].iter().map(|c| c.billed.read_units).sum::<f64>();

    let kept = metered().with_config_cache(std::time::Duration::from_secs(60));
    assert_eq!(kept.get_agent("demo").await.unwrap().unwrap().name, "Demo");
    assert_eq!(kept.desk_status("demo").await.unwrap().unwrap().detail, "ok");
    assert_eq!((meter.call_count(), read_units(0)), (2, 1.0), "two reads at half a unit each");

    let from = meter.call_count();
    let fresh = metered();
    assert_eq!(fresh.get_agent("demo").await.unwrap().unwrap().name, "Demo");
    assert_eq!(fresh.desk_status("demo").await.unwrap().unwrap().detail, "ok");
    assert_eq!((meter.call_count() - from, read_units(from)), (2, 2.0), "two reads at a full unit each");
}

/// A log written by an earlier build (an `IDEM#{key}` marker per message, a counter without
/// the last key): an effect run again across the upgrade is still caught.
#[tokio::test]
async fn message_log_of_an_earlier_build_still_catches_a_re_run() {
    let store = common::store().await;
    let a = key("old");
    let at = 1_700_000_000_000i64;
    let put = |pk: String, sk: &str, extra: Vec<(&str, AttributeValue)>| {
        let mut req = store
            .client()
            .put_item()
            .table_name(store.table_name())
            .item("pk", AttributeValue::S(pk))
            .item("sk", AttributeValue::S(sk.into()));
        for (k, v) in extra {
            req = req.item(k, v);
        }
        req.send()
    };
    put(format!("CONV#{a}"), "MSGSEQ", vec![("seq", AttributeValue::N("1".into()))]).await.unwrap();
    put("IDEM#k1".into(), "-", vec![("seq", AttributeValue::N("1".into()))]).await.unwrap();
    let hello = OutMessage::new(Role::Bot, "hello");
    assert_eq!(store.append_user_message(&a, "k1", &hello, Millis(at), Millis(at + 3_600_000)).await.unwrap(), None);
    let next = OutMessage::new(Role::Bot, "next");
    let s = store.append_user_message(&a, "k2", &next, Millis(at + 1), Millis(at + 3_600_000)).await.unwrap();
    assert_eq!(s, Some(3), "the re-run's number is left unused");
}

/// The seen id is written right after the commit, not in it (a transaction bills twice): a
/// worker that dies in between leaves its event to come back, and the session, which keeps
/// the id of the event it last applied, turns the copy away and writes the missing mark.
#[tokio::test]
async fn an_event_applied_without_its_seen_mark_is_still_a_duplicate() {
    let store = common::store().await;
    let k = key("mark");
    let at = 1_700_000_000_000;
    assert_eq!(store.commit(commit(&k, 0, "e1", None, at)).await.unwrap(), CommitOutcome::Committed { version: 1 });
    assert!(store.is_seen(&k, "e1").await.unwrap());
    // The worker died before the mark.
    store
        .client()
        .delete_item()
        .table_name(store.table_name())
        .key("pk", AttributeValue::S(format!("CONV#{k}")))
        .key("sk", AttributeValue::S("SEEN#e1".into()))
        .send()
        .await
        .unwrap();
    assert!(!store.is_seen(&k, "e1").await.unwrap());
    // Its event comes back: applied on the session it left, it is turned away.
    assert_eq!(store.commit(commit(&k, 1, "e1", None, at + 1)).await.unwrap(), CommitOutcome::AlreadySeen);
    assert!(store.is_seen(&k, "e1").await.unwrap(), "the mark is written now");
    assert_eq!(store.load_session(&k).await.unwrap().unwrap().version, 1);
    // The next event commits as usual.
    assert_eq!(store.commit(commit(&k, 1, "e2", None, at + 2)).await.unwrap(), CommitOutcome::Committed { version: 2 });
    assert_eq!(store.commit(commit(&k, 1, "e3", None, at + 3)).await.unwrap(), CommitOutcome::VersionConflict);
}

/// The Lambda worker's store writes an event's seen mark after its effects, in one item with
/// the trace lines of its step and effects (one write instead of two), in the conversation's
/// partition; a commit of the same conversation writes the marks still waiting first; lines
/// kept for less than a mark go to a trace item of their own; marks of earlier builds, at the
/// global key, are still found for sessions they may belong to; an erase keeps the marks and
/// drops their lines.
#[tokio::test]
async fn seen_marks_carry_their_events_trace_lines_and_earlier_marks_still_count() {
    let plain = common::store().await;
    let store = DynamoStore::new(plain.client().clone(), plain.table_name()).with_marks_behind_effects();
    let k = key("marks");
    let at = 1_700_000_000_000;
    let month = Millis(at + 30 * 86_400_000);
    let mut first = commit(&k, 0, "e1", None, at);
    first.keep_until = month;
    first.effects = vec![say("e1", 0, "hello")];
    store.commit(first).await.unwrap();
    let done = TraceEntry { at: Millis(at + 5), what: "effect".into(), id: "e1/0".into(), detail: "sent".into() };
    store.complete_effect(&k, "e1/0", done, month).await.unwrap();
    assert!(raw_items(&store, &k, "SEEN#").await.is_empty(), "kept until the flush");
    assert!(store.is_seen(&k, "e1").await.unwrap(), "a mark waiting for the flush counts");
    assert!(!plain.is_seen(&k, "e1").await.unwrap());
    store.flush_trace().await.unwrap();
    let marks = raw_items(&store, &k, "SEEN#").await;
    assert_eq!(marks.len(), 1);
    assert!(marks[0].contains_key("doc"));
    assert_eq!(number(&marks[0], "expires_at"), month.0 / 1000, "kept as long as its lines");
    assert!(trace_items(&store, &k).await.is_empty(), "no trace item of its own");
    assert!(plain.is_seen(&k, "e1").await.unwrap());
    let ids = |lines: Vec<TraceEntry>| lines.into_iter().map(|t| t.id).collect::<Vec<_>>();
    assert_eq!(ids(plain.trace(&k).await.unwrap()), ["e1", "e1/0"]);

    // Two commits without a flush between them: the first one's mark is written before the
    // second moves `last_event` on, so a worker dying now leaves only the second to it.
    let mut second = commit(&k, 1, "e2", None, at + 10);
    second.keep_until = month;
    store.commit(second).await.unwrap();
    let mut third = commit(&k, 2, "e3", None, at + 20);
    third.keep_until = month;
    store.commit(third).await.unwrap();
    assert!(plain.is_seen(&k, "e2").await.unwrap());
    assert!(!plain.is_seen(&k, "e3").await.unwrap());
    let mut again = commit(&k, 3, "e3", None, at + 30);
    again.keep_until = month;
    assert_eq!(plain.commit(again).await.unwrap(), CommitOutcome::AlreadySeen);
    assert!(plain.is_seen(&k, "e3").await.unwrap());
    store.flush_trace().await.unwrap();
    assert_eq!(ids(plain.trace(&k).await.unwrap()), ["e1", "e1/0", "e2", "e3"]);

    // Lines kept a day (less than a mark's 8): a bare mark and a trace item.
    let short = key("marks-short");
    store.commit(commit(&short, 0, "s1", None, at)).await.unwrap();
    store.flush_trace().await.unwrap();
    let marks = raw_items(&store, &short, "SEEN#").await;
    assert_eq!(marks.len(), 1);
    assert!(!marks[0].contains_key("doc"));
    assert_eq!(number(&marks[0], "expires_at"), at / 1000 + 8 * 86_400);
    assert_eq!(trace_items(&store, &short).await.len(), 1);

    // An erase keeps the marks, without their lines.
    assert!(store.erase_conversation(&k).await.unwrap() >= 3);
    let marks = raw_items(&store, &k, "SEEN#").await;
    assert_eq!(marks.len(), 3);
    assert!(marks.iter().all(|m| !m.contains_key("doc")));
    assert!(store.trace(&k).await.unwrap().is_empty());
    assert!(store.is_seen(&k, "e1").await.unwrap());
    assert_eq!(store.erase_conversation(&k).await.unwrap(), 0);

    // A session of layout 3, whose marks an earlier build wrote at the global key.
    let now = common::wall_now().0;
    let old = key("marks-old");
    plain.commit(commit(&old, 0, "o1", None, now)).await.unwrap();
    set_on_session(&plain, &old, vec![("schema", AttributeValue::N("3".into()))]).await;
    plain
        .client()
        .put_item()
        .table_name(plain.table_name())
        .item("pk", AttributeValue::S("SEEN#o0".into()))
        .item("sk", AttributeValue::S("-".into()))
        .send()
        .await
        .unwrap();
    let fresh = DynamoStore::new(plain.client().clone(), plain.table_name()).with_marks_behind_effects();
    assert!(fresh.is_seen(&old, "o0").await.unwrap(), "not loaded here: the global key is read");
    fresh.load_session(&old).await.unwrap().unwrap();
    assert!(fresh.is_seen(&old, "o0").await.unwrap(), "a layout 3 session");
    assert_eq!(fresh.commit(commit(&old, 1, "o0", None, now + 1)).await.unwrap(), CommitOutcome::AlreadySeen);
    fresh.commit(commit(&old, 1, "o2", None, now + 2)).await.unwrap();
    fresh.flush_trace().await.unwrap();
    let session = raw_item(&plain, &format!("CONV#{old}"), "SESSION").await.unwrap();
    assert_eq!(number(&session, "legacy_marks_until"), now + 2 + 8 * 86_400_000);
    assert_eq!(number(&session, "schema"), 5);
    fresh.load_session(&old).await.unwrap().unwrap();
    assert!(fresh.is_seen(&old, "o0").await.unwrap(), "within 8 days of the upgrade");
    // 8 days on, its next commit drops the bound, and global marks are no longer read.
    let later = now + 9 * 86_400_000;
    fresh.commit(commit(&old, 2, "o3", None, later)).await.unwrap();
    fresh.flush_trace().await.unwrap();
    let session = raw_item(&plain, &format!("CONV#{old}"), "SESSION").await.unwrap();
    assert!(!session.contains_key("legacy_marks_until"));
    let reloaded = DynamoStore::new(plain.client().clone(), plain.table_name());
    reloaded.load_session(&old).await.unwrap().unwrap();
    assert!(!reloaded.is_seen(&old, "o0").await.unwrap());
    assert!(reloaded.is_seen(&old, "o3").await.unwrap());
    // A new session of this build has no bound: only its own partition is read.
    assert!(!raw_item(&plain, &format!("CONV#{}", key("marks-short")), "SESSION")
        .await
        .unwrap()
        .contains_key("legacy_marks_until"));
}

/// A session keeps the highest Telegram update it applied, from its first commit on: asked
/// right after a load about an update numbered higher, the store answers without reading a
/// mark. Updates applied out of order keep the highest; a session begun by another kind of
/// event, or committed by a store that did not load it, has no such bound.
#[tokio::test]
async fn a_telegram_update_newer_than_every_applied_one_needs_no_mark_read() {
    let store = common::store().await;
    let k = key("numbered");
    let tg = |n: i64| baton_core::event::telegram_event_id("demo", n);
    store.commit(commit(&k, 0, &tg(105), None, 1)).await.unwrap();
    store.load_session(&k).await.unwrap().unwrap();
    store.commit(commit(&k, 1, &tg(103), None, 2)).await.unwrap();
    let item = raw_item(&store, &format!("CONV#{k}"), "SESSION").await.unwrap();
    assert_eq!(number(&item, "tg_max"), 105, "the highest, not the last");
    // A mark no store would write for an unapplied update shows whether the mark was read.
    let plant = |id: String| {
        store
            .client()
            .put_item()
            .table_name(store.table_name())
            .item("pk", AttributeValue::S(format!("CONV#{k}")))
            .item("sk", AttributeValue::S(format!("SEEN#{id}")))
            .send()
    };
    plant(tg(106)).await.unwrap();
    store.load_session(&k).await.unwrap().unwrap();
    assert!(!store.is_seen(&k, &tg(106)).await.unwrap(), "newer than 105: not read");
    assert!(store.is_seen(&k, &tg(106)).await.unwrap(), "read again without a load in between");
    store.load_session(&k).await.unwrap().unwrap();
    assert!(store.is_seen(&k, &tg(105)).await.unwrap());
    store.load_session(&k).await.unwrap().unwrap();
    assert!(store.is_seen(&k, &tg(103)).await.unwrap());

    // Committed by a store that did not load the session: the bound is dropped.
    let other = DynamoStore::new(store.client().clone(), store.table_name());
    other.commit(commit(&k, 2, &tg(107), None, 3)).await.unwrap();
    let item = raw_item(&store, &format!("CONV#{k}"), "SESSION").await.unwrap();
    assert!(!item.contains_key("tg_max"));
    store.load_session(&k).await.unwrap().unwrap();
    assert!(store.is_seen(&k, &tg(106)).await.unwrap(), "no bound: the mark is read");

    // Begun by another kind of event: no bound, then or later.
    let desk = key("numbered-desk");
    store.commit(commit(&desk, 0, "wh:demo:m1", None, 1)).await.unwrap();
    store.load_session(&desk).await.unwrap().unwrap();
    store.commit(commit(&desk, 1, &tg(200), None, 2)).await.unwrap();
    let item = raw_item(&store, &format!("CONV#{desk}"), "SESSION").await.unwrap();
    assert!(!item.contains_key("tg_max"));
}

fn say(event: &str, index: usize, text: &str) -> PendingEffect {
    let message = OutMessage::new(Role::Bot, text);
    PendingEffect::for_event(event, index, Effect::SendToUser { message, reply_token: None, outside_window: false })
}

fn ids(items: &[baton_core::ports::OutboxItem]) -> Vec<&str> {
    items.iter().map(|i| i.effect.id.as_str()).collect()
}

/// Attribute names of the session item that hold inline effects.
async fn inline_names(store: &DynamoStore, k: &ConversationKey) -> Vec<String> {
    let item = raw_item(store, &format!("CONV#{k}"), "SESSION").await.unwrap();
    let mut names: Vec<String> = item.keys().filter(|n| n.starts_with("e#") || n.starts_with("ob#")).cloned().collect();
    names.sort();
    names
}

async fn outbox_item_count(store: &DynamoStore, k: &ConversationKey) -> usize {
    raw_items(store, k, "OUTBOX#").await.len()
}

#[tokio::test]
async fn effects_live_on_the_session_item_until_they_would_make_it_large() {
    let store = common::store().await;
    let k = key("inline");
    let mut c = commit(&k, 0, "e1", None, 1);
    c.effects = vec![say("e1", 0, "one"), say("e1", 1, "two")];
    store.commit(c).await.unwrap();
    // On the session item, written by the commit's one UpdateItem: no outbox items.
    assert_eq!(inline_names(&store, &k).await, ["e#1000", "e#1001"]);
    assert_eq!(outbox_item_count(&store, &k).await, 0);
    store.complete_effect(&k, "e1/0", trace(2, "e1/0"), Millis(i64::MAX)).await.unwrap();
    assert_eq!(inline_names(&store, &k).await, ["e#1001"]);

    // An effect too large for the session item gets an item of its own (in one transaction
    // with the session), and the session says so.
    store.load_session(&k).await.unwrap();
    let mut c = commit(&k, 1, "e2", None, 3);
    c.effects = vec![say("e2", 0, &incompressible(6000))];
    store.commit(c).await.unwrap();
    assert_eq!(outbox_item_count(&store, &k).await, 1);
    let item = raw_item(&store, &format!("CONV#{k}"), "SESSION").await.unwrap();
    assert_eq!(item.get("outbox_spilled"), Some(&AttributeValue::Bool(true)));
    // A commit after a load knows what the session holds and writes small effects inline
    // again; a store that did not load it cannot know, and uses an item.
    store.load_session(&k).await.unwrap();
    let mut c = commit(&k, 2, "e3", None, 4);
    c.effects = vec![say("e3", 0, "three")];
    store.commit(c).await.unwrap();
    let other = DynamoStore::new(store.client().clone(), store.table_name());
    let mut c = commit(&k, 3, "e4", None, 5);
    c.effects = vec![say("e4", 0, "four")];
    other.commit(c).await.unwrap();
    assert_eq!(inline_names(&store, &k).await, ["e#1001", "e#3000"]);
    assert_eq!(outbox_item_count(&store, &k).await, 2);
    // Both kinds are one outbox, in commit order.
    let pending = store.pending_effects(&k).await.unwrap();
    assert_eq!(ids(&pending), ["e1/1", "e2/0", "e3/0", "e4/0"]);
    for id in ["e1/1", "e2/0", "e3/0", "e4/0"] {
        store.complete_effect(&k, id, trace(6, id), Millis(i64::MAX)).await.unwrap();
    }
    assert!(store.pending_effects(&k).await.unwrap().is_empty());
    assert!(inline_names(&store, &k).await.is_empty());
    assert_eq!(outbox_item_count(&store, &k).await, 0);
    // The session itself is untouched by completions.
    assert_eq!(store.load_session(&k).await.unwrap().unwrap().version, 4);
}

#[tokio::test]
async fn a_session_of_an_earlier_build_keeps_its_outbox_items_and_takes_inline_effects() {
    let store = common::store().await;
    let k = key("earlier");
    let pk = format!("CONV#{k}");
    let session = serde_json::to_string(&Session::new(k.clone())).unwrap();
    let effect = serde_json::to_string(&say("e1", 0, "from before")).unwrap();
    let put = |sk: &str, attrs: Vec<(&str, AttributeValue)>| {
        let mut request = store
            .client()
            .put_item()
            .table_name(store.table_name())
            .item("pk", AttributeValue::S(pk.clone()))
            .item("sk", AttributeValue::S(sk.into()));
        for (name, value) in attrs {
            request = request.item(name, value);
        }
        request.send()
    };
    let n = |v: i64| AttributeValue::N(v.to_string());
    // As earlier builds wrote them: JSON documents, `schema` the document's, no marker.
    put(
        "SESSION",
        vec![
            ("version", n(1)),
            ("schema", n(1)),
            ("doc", AttributeValue::S(session)),
            ("last_event", AttributeValue::S("e1".into())),
        ],
    )
    .await
    .unwrap();
    put(
        "OUTBOX#00000000000000001000#e1/0",
        vec![
            ("effect_id", AttributeValue::S("e1/0".into())),
            ("doc", AttributeValue::S(effect)),
            ("schema", n(1)),
            ("attempts", n(0)),
            ("next_attempt_at", n(1)),
        ],
    )
    .await
    .unwrap();

    assert_eq!(store.load_session(&k).await.unwrap().unwrap().version, 1);
    let mut c = commit(&k, 1, "e2", None, 2);
    c.effects = vec![say("e2", 0, "now")];
    store.commit(c).await.unwrap();
    assert_eq!(inline_names(&store, &k).await, ["e#2000"]);
    let item = raw_item(&store, &pk, "SESSION").await.unwrap();
    assert_eq!((number(&item, "schema"), number(&item, "doc_schema")), (5, 1));
    assert_eq!(ids(&store.pending_effects(&k).await.unwrap()), ["e1/0", "e2/0"]);
    store.complete_effect(&k, "e1/0", trace(3, "e1/0"), Millis(i64::MAX)).await.unwrap();
    assert_eq!(outbox_item_count(&store, &k).await, 0);
    assert_eq!(ids(&store.pending_effects(&k).await.unwrap()), ["e2/0"]);
}

/// A commit's inline effect is short: its deflated document and its due time (what a
/// failure adds is its attempts), so a commit with an effect stays under 1 KB. Entries of
/// layout 2 (`ob#{seq:020}`, with the effect's id, schema, attempts and time spelt out) are
/// read, deferred and completed in order with the new ones.
#[tokio::test]
async fn inline_effects_are_compact_and_layout_two_entries_still_run() {
    let store = common::store().await;
    let k = key("compact");
    let pk = format!("CONV#{k}");
    let mut c = commit(&k, 0, "e1", None, 100);
    c.effects = vec![say("e1", 0, "Shipping takes 2-3 working days within the country.")];
    store.commit(c).await.unwrap();
    // As layout 2 wrote an inline effect, next to the new one (sequence 500 sorts first).
    let old = serde_json::to_string(&say("e0", 0, "from layout 2")).unwrap();
    let entry = AttributeValue::M(
        [
            ("effect_id", AttributeValue::S("e0/0".into())),
            ("doc", AttributeValue::S(old)),
            ("schema", AttributeValue::N("1".into())),
            ("attempts", AttributeValue::N("0".into())),
            ("next_attempt_at", AttributeValue::N("50".into())),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect(),
    );
    set_on_session(&store, &k, vec![("ob#00000000000000000500", entry)]).await;

    let item = raw_item(&store, &pk, "SESSION").await.unwrap();
    let AttributeValue::M(new) = &item["e#1000"] else { panic!("a map: {:?}", item["e#1000"]) };
    let mut fields: Vec<&str> = new.keys().map(String::as_str).collect();
    fields.sort();
    assert_eq!(fields, ["d", "t"]);
    assert!(!item.contains_key("updated_at"), "the document has it");
    let pending = store.pending_effects(&k).await.unwrap();
    assert_eq!(ids(&pending), ["e0/0", "e1/0"]);
    assert_eq!((pending[0].attempts, pending[0].next_attempt_at), (0, Millis(50)));
    assert_eq!((pending[1].attempts, pending[1].next_attempt_at), (0, Millis(100)));

    // Each kind is deferred with its own field names.
    store.defer_effect(&k, "e0/0", 1, Millis(5000), trace(101, "e0/0"), Millis(i64::MAX)).await.unwrap();
    store.defer_effect(&k, "e1/0", 2, Millis(6000), trace(102, "e1/0"), Millis(i64::MAX)).await.unwrap();
    let pending = store.pending_effects(&k).await.unwrap();
    assert_eq!((pending[0].attempts, pending[0].next_attempt_at), (1, Millis(5000)));
    assert_eq!((pending[1].attempts, pending[1].next_attempt_at), (2, Millis(6000)));
    let item = raw_item(&store, &pk, "SESSION").await.unwrap();
    let AttributeValue::M(new) = &item["e#1000"] else { panic!() };
    let mut fields: Vec<&str> = new.keys().map(String::as_str).collect();
    fields.sort();
    assert_eq!(fields, ["a", "d", "t"]);

    store.complete_effect(&k, "e0/0", trace(103, "e0/0"), Millis(i64::MAX)).await.unwrap();
    store.complete_effect(&k, "e1/0", trace(104, "e1/0"), Millis(i64::MAX)).await.unwrap();
    assert!(store.pending_effects(&k).await.unwrap().is_empty());
    assert!(inline_names(&store, &k).await.is_empty());
}

#[tokio::test]
async fn a_session_item_of_a_later_layout_is_refused() {
    let store = common::store().await;
    let k = key("later");
    store.commit(commit(&k, 0, "e1", None, 1)).await.unwrap();
    set_on_session(&store, &k, vec![("schema", AttributeValue::N("6".into()))]).await;
    match store.load_session(&k).await {
        Err(StoreError::Corrupt { message, .. }) => assert!(message.contains("layout 6"), "{message}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[tokio::test]
async fn a_session_leaves_the_outbox_index_when_its_inline_effects_are_done() {
    let store = common::store().await;
    let k = key("watched");
    let mut c = commit(&k, 0, "e1", None, 100);
    c.effects = vec![say("e1", 0, "a"), say("e1", 1, "b")];
    store.commit(c).await.unwrap();
    assert!(!in_outbox_index(&store, &k).await, "new effects stay out of the index");
    store.watch_pending(&k).await.unwrap();
    assert!(in_outbox_index(&store, &k).await);
    assert_eq!(store.conversations_with_due_effects(Millis(100), 10).await.unwrap(), vec![k.clone()]);
    store.complete_effect(&k, "e1/0", trace(101, "e1/0"), Millis(i64::MAX)).await.unwrap();
    assert!(in_outbox_index(&store, &k).await, "one effect is left");
    // A deferred effect keeps the earlier time, so the sweeper is never late for the head.
    store.defer_effect(&k, "e1/1", 1, Millis(9000), trace(102, "e1/1"), Millis(i64::MAX)).await.unwrap();
    assert_eq!(store.conversations_with_due_effects(Millis(100), 10).await.unwrap(), vec![]);
    assert_eq!(store.conversations_with_due_effects(Millis(9000), 10).await.unwrap(), vec![k.clone()]);
    store.complete_effect(&k, "e1/1", trace(9001, "e1/1"), Millis(i64::MAX)).await.unwrap();
    assert!(!in_outbox_index(&store, &k).await, "the last completion takes it out");

    // Left in with nothing pending (its tidying lost to a commit): the sweep takes it out.
    let index = vec![("obx_due", AttributeValue::N("1".into())), ("obx_shard", AttributeValue::S(table::shard_of(&k)))];
    set_on_session(&store, &k, index).await;
    assert!(in_outbox_index(&store, &k).await);
    assert!(store.conversations_with_due_effects(Millis(i64::MAX), 10).await.unwrap().is_empty());
    assert!(!in_outbox_index(&store, &k).await);
}

#[tokio::test]
async fn a_commit_claims_the_drain_lease_its_drain_starts_from() {
    let base = common::store().await;
    let lease = std::time::Duration::from_secs(90);
    let store = DynamoStore::new(base.client().clone(), base.table_name()).with_drain_lease(lease);
    let other = DynamoStore::new(base.client().clone(), base.table_name()).with_drain_lease(lease);
    let k = key("claimed");
    let at = 1_700_000_000_000;
    let mut c = commit(&k, 0, "e1", None, at);
    c.effects = vec![say("e1", 0, "one"), say("e1", 1, "two")];
    store.commit(c).await.unwrap();
    // Held from the commit on: another process cannot take it.
    let item = raw_item(&store, &format!("CONV#{k}"), "SESSION").await.unwrap();
    assert_eq!(number(&item, "drain_until"), at + 90_000);
    assert!(DrainLeases::take(&other, &k, Millis(at + 1), Millis(at + 90_001)).await.unwrap().is_none());
    // Whatever this store writes before its drain comes, the claim waits for that drain (it
    // is never left held with nobody to give it back).
    store.load_session(&k).await.unwrap();
    store.commit(commit(&k, 1, "e1b", None, at + 1)).await.unwrap();
    // The committing store starts from the outbox its commit left.
    let (held, pending) = DrainLeases::take(&store, &k, Millis(at + 1), Millis(at + 90_001)).await.unwrap().unwrap();
    assert_eq!(ids(&pending), ["e1/0", "e1/1"]);
    store.complete_effect(&k, "e1/0", trace(at + 2, "e1/0"), Millis(i64::MAX)).await.unwrap();
    // Another commit meanwhile leaves the lease with its holder; the release reads it.
    other.load_session(&k).await.unwrap();
    let mut c = commit(&k, 2, "e2", None, at + 3);
    c.effects = vec![say("e2", 0, "three")];
    other.commit(c).await.unwrap();
    let after = DrainLeases::release(&store, &k, &held, None).await.unwrap();
    assert_eq!(ids(&after), ["e1/1", "e2/0"]);
    let item = raw_item(&store, &format!("CONV#{k}"), "SESSION").await.unwrap();
    assert!(!item.contains_key("drain_by") && !item.contains_key("drain_until"));
    // Released twice: nothing to give back.
    assert!(DrainLeases::release(&store, &k, &held, None).await.unwrap().is_empty());

    // A lease whose holder died is taken once it has run out, not before.
    let (dead, _) = DrainLeases::take(&other, &k, Millis(at + 10), Millis(at + 90_010)).await.unwrap().unwrap();
    assert!(DrainLeases::take(&store, &k, Millis(at + 90_009), Millis(at + 180_000)).await.unwrap().is_none());
    let (late, pending) =
        DrainLeases::take(&store, &k, Millis(at + 90_011), Millis(at + 180_011)).await.unwrap().unwrap();
    assert_eq!(ids(&pending), ["e1/1", "e2/0"]);
    // The dead holder's release, should it come back, takes nothing from the new one.
    assert!(DrainLeases::release(&other, &k, &dead, None).await.unwrap().is_empty());
    assert_eq!(ids(&DrainLeases::release(&store, &k, &late, None).await.unwrap()), ["e1/1", "e2/0"]);
}

#[tokio::test]
async fn the_release_completes_the_drains_last_effect_in_the_same_write() {
    let base = common::store().await;
    let lease = std::time::Duration::from_secs(90);
    let store = DynamoStore::new(base.client().clone(), base.table_name()).with_drain_lease(lease);
    let other = DynamoStore::new(base.client().clone(), base.table_name()).with_drain_lease(lease);
    let done =
        |id: &str, at: i64| Completion { effect_id: id.into(), trace: trace(at, id), keep_until: Millis(i64::MAX) };
    let k = key("folded");
    let at = 1_700_000_000_000;
    let mut c = commit(&k, 0, "e1", None, at);
    c.effects = vec![say("e1", 0, "one"), say("e1", 1, "two")];
    store.commit(c).await.unwrap();
    let (held, _) = DrainLeases::take(&store, &k, Millis(at + 1), Millis(at + 90_001)).await.unwrap().unwrap();
    store.complete_effect(&k, "e1/0", trace(at + 2, "e1/0"), Millis(i64::MAX)).await.unwrap();
    assert!(DrainLeases::release(&store, &k, &held, Some(done("e1/1", at + 3))).await.unwrap().is_empty());
    let item = raw_item(&store, &format!("CONV#{k}"), "SESSION").await.unwrap();
    assert!(!item.contains_key("drain_by"), "released");
    assert!(!item.keys().any(|name| name.starts_with("e#")), "completed: {:?}", item.keys());
    let lines: Vec<String> = store.trace(&k).await.unwrap().into_iter().map(|t| t.id).collect();
    assert_eq!(lines.iter().filter(|id| id.starts_with("e1/")).collect::<Vec<_>>(), ["e1/0", "e1/1"]);

    // A holder whose lease ran out still completes its effect, and leaves the new holder's
    // lease alone.
    store.load_session(&k).await.unwrap();
    let mut c = commit(&k, 1, "e2", None, at + 10);
    c.effects = vec![say("e2", 0, "three"), say("e2", 1, "four")];
    store.commit(c).await.unwrap();
    let (dead, _) = DrainLeases::take(&store, &k, Millis(at + 11), Millis(at + 90_011)).await.unwrap().unwrap();
    let (late, pending) =
        DrainLeases::take(&other, &k, Millis(at + 90_012), Millis(at + 180_012)).await.unwrap().unwrap();
    assert_eq!(ids(&pending), ["e2/0", "e2/1"]);
    assert!(DrainLeases::release(&store, &k, &dead, Some(done("e2/0", at + 90_013))).await.unwrap().is_empty());
    let item = raw_item(&store, &format!("CONV#{k}"), "SESSION").await.unwrap();
    assert_eq!(item.get("drain_by").and_then(|v| v.as_s().ok()), Some(&late.holder));
    assert_eq!(ids(&DrainLeases::release(&other, &k, &late, None).await.unwrap()), ["e2/1"]);

    // An effect too large for the session item is deleted, then the lease given back.
    other.load_session(&k).await.unwrap();
    let mut c = commit(&k, 2, "e3", None, at + 100_000);
    c.effects = vec![say("e3", 0, &incompressible(6000))];
    other.commit(c).await.unwrap();
    assert_eq!(outbox_item_count(&other, &k).await, 1);
    let (held, pending) =
        DrainLeases::take(&other, &k, Millis(at + 100_001), Millis(at + 190_001)).await.unwrap().unwrap();
    assert_eq!(ids(&pending), ["e2/1", "e3/0"]);
    other.complete_effect(&k, "e2/1", trace(at + 100_002, "e2/1"), Millis(i64::MAX)).await.unwrap();
    assert!(DrainLeases::release(&other, &k, &held, Some(done("e3/0", at + 100_003))).await.unwrap().is_empty());
    assert_eq!(outbox_item_count(&other, &k).await, 0);
    let item = raw_item(&store, &format!("CONV#{k}"), "SESSION").await.unwrap();
    assert!(!item.contains_key("drain_by"));
}

/// The Lambda worker's store records a drain's release (and the effects it completed) with
/// the event's seen mark instead of writing it to the session item: the item shows the lease
/// and the effects until its next write, which takes them out, and every reader sees
/// through them meanwhile.
#[tokio::test]
async fn a_release_recorded_at_the_seen_mark_is_seen_through_and_taken_out_by_the_next_write() {
    let base = common::store().await;
    let lease = std::time::Duration::from_secs(90);
    let worker = || {
        DynamoStore::new(base.client().clone(), base.table_name()).with_drain_lease(lease).with_marks_behind_effects()
    };
    let (store, other, third) = (worker(), worker(), worker());
    let done = |id: &str, at: i64| Completion { effect_id: id.into(), trace: trace(at, id), keep_until: Millis(at) };
    let k = key("settled");
    let pk = format!("CONV#{k}");
    let at = common::wall_now().0;
    let mut c = commit(&k, 0, "e1", None, at);
    c.effects = vec![say("e1", 0, "one"), say("e1", 1, "two")];
    store.commit(c.clone()).await.unwrap();
    let (held, _) = DrainLeases::take(&store, &k, Millis(at + 1), Millis(at + 90_001)).await.unwrap().unwrap();
    // The step's first effect is completed as it runs; the last waits for the mark.
    store.complete_effect(&k, "e1/0", trace(at + 2, "e1/0"), Millis(at + 2)).await.unwrap();
    assert!(DrainLeases::release(&store, &k, &held, Some(done("e1/1", at + 3))).await.unwrap().is_empty());
    let item = raw_item(&store, &pk, "SESSION").await.unwrap();
    assert_eq!(item.get("drain_by").and_then(|v| v.as_s().ok()), Some(&held.holder), "no write yet");
    assert_eq!(inline_names(&store, &k).await.len(), 1);
    assert!(store.pending_effects(&k).await.unwrap().is_empty(), "this store knows");
    store.flush_trace().await.unwrap();
    let mark = raw_item(&store, &pk, "SEEN#e1").await.unwrap();
    assert_eq!(mark.get("rel_by").and_then(|v| v.as_s().ok()), Some(&held.holder));
    let places = mark.get("rel_done").and_then(|v| v.as_ss().ok()).unwrap();
    assert_eq!(places.len(), 1);
    // Kept 8 days past the conversation's retention (here the completion's `keep_until`).
    assert!(number(&mark, "expires_at") >= at / 1000 + baton_aws::SEEN_RETENTION_SECS);
    let lines: Vec<String> = store.trace(&k).await.unwrap().into_iter().map(|t| t.id).collect();
    assert_eq!(lines, ["e1", "e1/0", "e1/1"]);

    // Another process reads the mark: nothing pending, and the lease is free.
    assert!(other.pending_effects(&k).await.unwrap().is_empty());
    // A copy of the event found applied there marks it without writing over the record.
    assert_eq!(other.commit(c).await.unwrap(), CommitOutcome::AlreadySeen);
    other.flush_trace().await.unwrap();
    let mark = raw_item(&store, &pk, "SEEN#e1").await.unwrap();
    assert_eq!(mark.get("rel_by").and_then(|v| v.as_s().ok()), Some(&held.holder));
    // Its next commit takes the lease and the effects out, and claims the lease anew.
    other.load_session(&k).await.unwrap();
    let mut c = commit(&k, 1, "e2", None, at + 10);
    c.effects = vec![say("e2", 0, "three")];
    other.commit(c).await.unwrap();
    assert_eq!(inline_names(&store, &k).await, ["e#2000"]);
    let (held, pending) = DrainLeases::take(&other, &k, Millis(at + 11), Millis(at + 90_011)).await.unwrap().unwrap();
    assert_eq!(ids(&pending), ["e2/0"]);
    let item = raw_item(&store, &pk, "SESSION").await.unwrap();
    assert_eq!(item.get("drain_by").and_then(|v| v.as_s().ok()), Some(&held.holder), "claimed by the commit");
    assert!(DrainLeases::release(&other, &k, &held, Some(done("e2/0", at + 12))).await.unwrap().is_empty());
    other.flush_trace().await.unwrap();

    // A drain without a commit takes a lease given back before it runs out, with its effects.
    assert!(third.pending_effects(&k).await.unwrap().is_empty());
    let (taken, pending) = DrainLeases::take(&third, &k, Millis(at + 13), Millis(at + 90_013)).await.unwrap().unwrap();
    assert!(pending.is_empty());
    assert!(inline_names(&store, &k).await.is_empty());
    assert!(DrainLeases::release(&third, &k, &taken, None).await.unwrap().is_empty());
    let item = raw_item(&store, &pk, "SESSION").await.unwrap();
    assert!(!item.contains_key("drain_by"));

    // Without the mark (the worker died before it), the effects stay pending under the lease
    // until it runs out: a crash between an effect and its completion runs it again.
    store.load_session(&k).await.unwrap();
    let mut c = commit(&k, 2, "e3", None, at + 20);
    c.effects = vec![say("e3", 0, "four")];
    store.commit(c).await.unwrap();
    let (held, _) = DrainLeases::take(&store, &k, Millis(at + 21), Millis(at + 90_021)).await.unwrap().unwrap();
    assert!(DrainLeases::release(&store, &k, &held, Some(done("e3/0", at + 22))).await.unwrap().is_empty());
    assert_eq!(ids(&third.pending_effects(&k).await.unwrap()), ["e3/0"]);
    assert!(DrainLeases::take(&third, &k, Millis(at + 23), Millis(at + 90_023)).await.unwrap().is_none());
    let (_, pending) = DrainLeases::take(&third, &k, Millis(at + 90_022), Millis(at + 180_022)).await.unwrap().unwrap();
    assert_eq!(ids(&pending), ["e3/0"]);
}

#[tokio::test]
async fn outbox_items_are_run_under_the_earlier_builds_lease_too() {
    use baton_core::ports::KeyValue;
    let store = common::store().await;
    let k = key("items");
    let at = 1_700_000_000_000;
    let mut c = commit(&k, 0, "e1", None, at);
    c.effects = vec![say("e1", 0, &incompressible(6000))];
    store.commit(c).await.unwrap();
    assert_eq!(outbox_item_count(&store, &k).await, 1);
    // A worker of the previous build holds its lease on the conversation.
    let earlier = format!("drain:{k}");
    assert!(store.put_if_absent(&earlier, "draining", Millis(at), Millis(at + 90_000)).await.unwrap());
    assert!(DrainLeases::take(&store, &k, Millis(at + 1), Millis(at + 90_001)).await.unwrap().is_none());
    let item = raw_item(&store, &format!("CONV#{k}"), "SESSION").await.unwrap();
    assert!(!item.contains_key("drain_by"), "the session's lease is given back at once");
    // Once that worker is done, both leases are taken and given back together.
    store.delete(&earlier).await.unwrap();
    let (held, pending) = DrainLeases::take(&store, &k, Millis(at + 2), Millis(at + 90_002)).await.unwrap().unwrap();
    assert_eq!(ids(&pending), ["e1/0"]);
    assert!(store.get(&earlier, Millis(at + 3)).await.unwrap().is_some());
    DrainLeases::release(&store, &k, &held, None).await.unwrap();
    assert!(store.get(&earlier, Millis(at + 4)).await.unwrap().is_none());
}

/// Set attributes of the session item as stored, behind the store's back.
async fn set_on_session(store: &DynamoStore, k: &ConversationKey, attrs: Vec<(&str, AttributeValue)>) {
    let mut update = store
        .client()
        .update_item()
        .table_name(store.table_name())
        .key("pk", AttributeValue::S(format!("CONV#{k}")))
        .key("sk", AttributeValue::S("SESSION".into()));
    let mut sets = Vec::new();
    for (i, (name, value)) in attrs.into_iter().enumerate() {
        sets.push(format!("#a{i} = :a{i}"));
        update = update
            .expression_attribute_names(format!("#a{i}"), name)
            .expression_attribute_values(format!(":a{i}"), value);
    }
    update.update_expression(format!("SET {}", sets.join(", "))).send().await.unwrap();
}

/// Remove an attribute of the session item as stored, behind the store's back.
async fn remove_from_session(store: &DynamoStore, k: &ConversationKey, name: &str) {
    let update = store.client().update_item().table_name(store.table_name());
    let update =
        update.key("pk", AttributeValue::S(format!("CONV#{k}"))).key("sk", AttributeValue::S("SESSION".into()));
    update.update_expression("REMOVE #a").expression_attribute_names("#a", name).send().await.unwrap();
}

async fn in_outbox_index(store: &DynamoStore, k: &ConversationKey) -> bool {
    raw_item(store, &format!("CONV#{k}"), "SESSION").await.unwrap().contains_key("obx_due")
}

/// Text that deflate cannot shrink much (letters and digits from a fixed pseudo-random walk).
fn incompressible(len: usize) -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            CHARS[(state >> 33) as usize % CHARS.len()] as char
        })
        .collect()
}
