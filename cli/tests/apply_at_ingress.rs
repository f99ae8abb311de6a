//! `baton serve` applies an event whose conversation is idle at once, before it answers the
//! request, and never writes it to the queue; events of a busy conversation are queued and
//! keep their order.

mod common;

use baton_core::model::{Channel, ConversationKey};
use baton_tests::eventually;
use baton_tests::widget::WidgetClient;
use serde_json::Value;
use std::time::Duration;

/// How many events were ever written to the queue (counted by the store).
fn events_ever_queued(hub: &common::Hub) -> u64 {
    hub.running.db.events_queued()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_conversations_event_is_applied_before_its_acknowledgement_and_never_queued() {
    let hub = common::hub().await;
    // Each conversation new, so idle: nothing of it is being worked on.
    for i in 0..3 {
        let mut w = WidgetClient::start(&hub.base, "shop", None).await;
        let key = ConversationKey::new("shop", Channel::Widget, &w.conversation_id).unwrap();
        let r = w.send_with_id("What are your opening hours?", &format!("c{i}")).await;
        assert_eq!(r.status(), 202);
        let event_id = r.json::<Value>().await.unwrap()["event_id"].as_str().unwrap().to_string();
        // Applied when acknowledged: seen, and in the session, with no wait.
        assert!(hub.running.ports.store.is_seen(&key, &event_id).await.unwrap(), "{event_id} not applied at its 202");
        let session = hub.running.ports.store.load_session(&key).await.unwrap().expect("a session");
        assert!(session.session.history.iter().any(|t| t.text == "What are your opening hours?"));
        w.wait_for("the FAQ answer", |m| m["from"] == "bot" && m["text"] == "We are open 9-17 on weekdays.").await;
    }
    assert_eq!(events_ever_queued(&hub), 0, "nothing went through the queue");
}

/// A widget user handed to the desk, where a human has answered.
async fn talking_to_a_human(hub: &common::Hub, email: &str) -> WidgetClient {
    let w = WidgetClient::start(&hub.base, "shop", Some(email)).await;
    w.send("I want to talk to a human").await;
    let est = hub.desk.first_to("/conversation/establish").await;
    let conv = est.body["conversation_id"].as_str().unwrap().to_string();
    assert_eq!(hub.desk_reply(&conv, "Hello", Some("h1")).await.status(), 200);
    w
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_a_busy_conversation_are_queued_and_keep_their_order() {
    let hub = common::hub().await;
    let w = talking_to_a_human(&hub, "q@example.com").await;
    // The desk now takes a while to take each message: the conversation stays busy with
    // the first one while the next arrive, and those are queued behind it.
    hub.desk.answer_after(Duration::from_millis(150));
    let before = events_ever_queued(&hub);
    let key = ConversationKey::new("shop", Channel::Widget, &w.conversation_id).unwrap();
    let store = hub.running.ports.store.clone();
    let version = |s: Option<baton_core::ports::VersionedSession>| s.expect("a session").version;
    let version_before = version(store.load_session(&key).await.unwrap());
    let texts: Vec<String> = (0..6).map(|i| format!("m{i}")).collect();
    for t in &texts {
        w.send(t).await;
    }
    let got = eventually(Duration::from_secs(20), "every message at the desk", || async {
        let got: Vec<String> = hub
            .desk
            .requests_to("/chat")
            .iter()
            .filter_map(|r| r.body["body"].as_str().map(str::to_string))
            .filter(|b| b.starts_with('m'))
            .collect();
        (got.len() >= texts.len()).then_some(got)
    })
    .await;
    assert_eq!(got, texts, "each once, in order");
    assert!(events_ever_queued(&hub) - before >= 4, "the busy conversation's events were queued");
    // Those waiting behind the first were stepped together: fewer session writes than events.
    let writes = version(store.load_session(&key).await.unwrap()) - version_before;
    assert!(writes < 4, "{writes} session writes for {} events", texts.len());

    // A relay's completion rides in the next event's commit, the last one's is written
    // alone: every effect ends completed once, none is left to run again.
    eventually(Duration::from_secs(10), "the outbox empty", || async {
        store.pending_effects(&key).await.unwrap().is_empty().then_some(())
    })
    .await;
    let trace = store.trace(&key).await.unwrap();
    let posts = trace.iter().filter(|t| t.what == "effect" && t.detail.starts_with("post_to_desk:")).count();
    let mut ids: Vec<&str> = trace.iter().filter(|t| t.what == "effect").map(|t| t.id.as_str()).collect();
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "no effect completed twice: {trace:#?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hub.desk.requests_to("/chat").len(), posts, "one completion per message relayed");
    assert_eq!(hub.desk.duplicates(), 0, "nothing sent again");
    assert!(posts >= texts.len());
}

fn user_message(key: &ConversationKey, id: &str, text: &str) -> baton_core::Event {
    let kind =
        baton_core::EventKind::UserMessage { text: text.into(), email: None, language: None, name: None, reply: None };
    baton_core::Event::new(id, key.clone(), baton_core::model::Millis(1), kind)
}

/// What the user said, as the session's history keeps it.
fn user_said(stored: &baton_core::ports::VersionedSession) -> Vec<&str> {
    let turns = stored.session.history.iter().filter(|t| t.role == baton_core::model::Role::User);
    turns.map(|t| t.text.as_str()).collect()
}

/// The conversation task steps on the session it committed instead of reading it back.
/// Should anything else have written the session meanwhile, the version check refuses the
/// step and it is taken again on the stored session; an event already applied is refused
/// by the commit, though its seen id was not read first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_on_the_session_as_last_committed_loses_no_other_write_and_applies_nothing_twice() {
    use baton_runtime::worker::{apply_event, apply_event_after, After, Processed};
    let hub = common::hub().await;
    let ports = &hub.running.ports;
    let key = ConversationKey::new("shop", Channel::Widget, "known-session").unwrap();

    let first = apply_event_after(ports, &user_message(&key, "k1", "one"), After { keep: true, ..After::default() })
        .await
        .unwrap();
    let kept = first.session.expect("the session as committed");
    assert_eq!(kept.version, 1);
    assert_eq!(ports.store.load_session(&key).await.unwrap().expect("stored"), kept);

    // Another writer steps the conversation on: what the task kept is now stale.
    assert!(matches!(apply_event(ports, &user_message(&key, "k2", "two")).await.unwrap(), Processed::Applied { .. }));
    let after = After { done: Vec::new(), session: Some(kept.clone()), keep: true };
    let third = apply_event_after(ports, &user_message(&key, "k3", "three"), after).await.unwrap();
    assert!(matches!(third.processed, Processed::Applied { .. }));
    let stored = ports.store.load_session(&key).await.unwrap().expect("stored");
    assert_eq!(third.session.as_ref(), Some(&stored));
    let said = user_said(&stored);
    assert_eq!(said, ["one", "two", "three"], "no write lost");

    // An event already applied, stepped on the session as last committed: refused.
    let again = After { done: Vec::new(), session: third.session.clone(), keep: true };
    let dup = apply_event_after(ports, &user_message(&key, "k2", "two"), again).await.unwrap();
    assert_eq!(dup.processed, Processed::Duplicate);
    assert_eq!(ports.store.load_session(&key).await.unwrap().expect("stored"), stored);
}

/// A conversation's backlog is stepped together on the session in memory and committed as
/// one write, up to an event whose effect's result steps the conversation on (here a desk
/// to open): the events after it wait for that result, as they would one at a time. A
/// batch holding an event applied before is refused as a whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_events_are_committed_together_up_to_one_that_waits_for_an_effects_result() {
    use baton_runtime::worker::{apply_events_after, After};
    let hub = common::hub().await;
    let ports = &hub.running.ports;
    let key = ConversationKey::new("shop", Channel::Widget, "backlog").unwrap();
    let mut ask = user_message(&key, "b3", "I want to talk to a human");
    if let baton_core::EventKind::UserMessage { email, .. } = &mut ask.kind {
        *email = Some("b@example.com".into());
    }
    let events = [
        user_message(&key, "b1", "What are your opening hours?"),
        user_message(&key, "b2", "Thanks"),
        ask,
        user_message(&key, "b4", "Are you there?"),
    ];
    let (n, applied) = apply_events_after(ports, &key, &events, After::default()).await.unwrap().expect("committed");
    assert_eq!(n, 3, "up to the request for a human");
    let stored = ports.store.load_session(&key).await.unwrap().expect("stored");
    assert_eq!(stored.version, 1, "one write");
    assert_eq!(applied.session.as_ref(), Some(&stored));
    let said = user_said(&stored);
    assert_eq!(said, ["What are your opening hours?", "Thanks", "I want to talk to a human"]);
    for (id, seen) in [("b1", true), ("b2", true), ("b3", true), ("b4", false)] {
        assert_eq!(ports.store.is_seen(&key, id).await.unwrap(), seen, "{id}");
    }
    let names: Vec<&str> = applied.committed.iter().map(|e| e.effect.name()).collect();
    assert_eq!(names.first(), Some(&"send_to_user"), "the FAQ answer: {names:?}");
    assert!(names.contains(&"open_desk"), "{names:?}");

    // b2 was applied: a batch holding it commits nothing, though b4 was not.
    let again = [events[3].clone(), events[1].clone()];
    assert!(apply_events_after(ports, &key, &again, After::default()).await.unwrap().is_none());
    assert!(!ports.store.is_seen(&key, "b4").await.unwrap());
    assert_eq!(ports.store.load_session(&key).await.unwrap().expect("stored").version, 1);
}

/// A drain relaying a backlog to the desk reads the desk conversation's link once, not once
/// per message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_reads_the_desk_link_once_for_a_backlogs_messages() {
    use baton_core::effect::{Effect, PendingEffect};
    use baton_core::ports::OutboxItem;
    let hub = common::hub().await;
    let w = talking_to_a_human(&hub, "l@example.com").await;
    let key = ConversationKey::new("shop", Channel::Widget, &w.conversation_id).unwrap();
    let est = hub.desk.first_to("/conversation/establish").await;
    let desk_id = est.body["conversation_id"].as_str().unwrap();
    let store = &hub.running.ports.store;
    let handoff_id = store.desk_link("shop", desk_id).await.unwrap().expect("linked").handoff_id;
    let counting = std::sync::Arc::new(baton_tests::failing_store::FailingCommits::new(store.clone(), "none", 0));
    let ports = baton_runtime::Ports { store: counting.clone(), ..hub.running.ports.clone() };
    let items: Vec<OutboxItem> = ["b0", "b1", "b2"]
        .iter()
        .map(|t| OutboxItem {
            effect: PendingEffect::for_event(
                t,
                0,
                Effect::PostToDesk { handoff_id: handoff_id.clone(), text: t.to_string() },
            ),
            attempts: 0,
            next_attempt_at: baton_core::model::Millis(0),
        })
        .collect();
    let (drained, _last) = baton_runtime::worker::drain_items(&ports, &key, items, None).await.unwrap();
    assert_eq!(drained.done, 3);
    let posted: Vec<String> = hub
        .desk
        .requests_to("/chat")
        .iter()
        .filter_map(|r| r.body["body"].as_str().map(str::to_string))
        .filter(|b| b.starts_with('b') && b.len() == 2)
        .collect();
    assert_eq!(posted, ["b0", "b1", "b2"]);
    assert_eq!(counting.link_reads(), 1);
}

/// The task runs a commit's effects without reading the outbox only when its previous
/// commit, after which the outbox held nothing else, is the one just before. An effect
/// another writer committed meanwhile is found and runs in its place, before the next
/// message's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_effect_another_writer_committed_meanwhile_runs_in_its_place() {
    let hub = common::hub().await;
    let w = talking_to_a_human(&hub, "f@example.com").await;
    let key = ConversationKey::new("shop", Channel::Widget, &w.conversation_id).unwrap();
    let chat = |hub: &common::Hub| -> Vec<String> {
        hub.desk.requests_to("/chat").iter().filter_map(|r| r.body["body"].as_str().map(str::to_string)).collect()
    };

    hub.desk.answer_after(Duration::from_millis(300));
    for t in ["m0", "m1", "m2"] {
        w.send(t).await;
    }
    // m1 is at the desk: the conversation's task is on m2 now.
    eventually(Duration::from_secs(10), "m1 at the desk", || async { chat(&hub).contains(&"m1".into()).then_some(()) })
        .await;
    // Another writer commits to the conversation behind the task's back.
    let foreign = baton_runtime::worker::apply_event(&hub.running.ports, &user_message(&key, "foreign-f", "f")).await;
    assert!(matches!(foreign.unwrap(), baton_runtime::worker::Processed::Applied { .. }));
    w.send("g").await;

    let got = eventually(Duration::from_secs(20), "every message at the desk", || async {
        let got: Vec<String> = chat(&hub).into_iter().filter(|b| b.len() <= 2).collect();
        (got.len() >= 5).then_some(got)
    })
    .await;
    let at = |m: &str| got.iter().position(|x| x == m).unwrap_or_else(|| panic!("{m} missing from {got:?}"));
    assert_eq!(got.len(), 5, "each once: {got:?}");
    assert!(at("m0") < at("m1") && at("m1") < at("m2") && at("m2") < at("g"), "{got:?}");
    assert!(at("f") < at("g"), "the foreign effect ran before the next message's: {got:?}");
}
