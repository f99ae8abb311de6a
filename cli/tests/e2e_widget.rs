//! The spine end to end over real HTTP on loopback: widget -> FAQ answer -> "I want a
//! human" -> desk receives establish with the history -> desk reply reaches the user ->
//! user ends -> desk receives close USER_CLOSED -> the bot answers again.

mod common;

use baton_tests::eventually;
use baton_tests::widget::WidgetClient;
use serde_json::Value;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn widget_faq_handoff_reply_end_and_back_to_bot() {
    let hub = common::hub().await;
    let mut w = WidgetClient::start(&hub.base, "shop", Some("ana@example.com")).await;

    w.send("What are your opening hours?").await;
    let a = w.wait_for("FAQ answer", |m| m["from"] == "bot").await;
    assert_eq!(a["text"], "We are open 9-17 on weekdays.");

    w.send("I want to talk to a human").await;
    w.wait_for("waiting notice", |m| m["from"] == "system" && m["text"].as_str().unwrap().contains("connecting")).await;
    let est = eventually(WAIT, "establish at the desk", || async {
        hub.desk.requests_to("/conversation/establish").into_iter().next()
    })
    .await;
    let b = &est.body;
    assert_eq!(b["bot_id"], "shop");
    assert_eq!(b["email"], "ana@example.com");
    assert!(b["timestamp"].as_i64().unwrap() > 1_600_000_000_000, "timestamp in ms");
    let turns: Vec<(String, String)> = b["body"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["message_type"].as_str().unwrap().to_string(), t["text"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(
        turns,
        vec![
            ("QUESTION".to_string(), "What are your opening hours?".to_string()),
            ("ANSWER".to_string(), "We are open 9-17 on weekdays.".to_string()),
            ("QUESTION".to_string(), "I want to talk to a human".to_string()),
        ]
    );
    assert!(est.webhook_id.as_deref().unwrap().starts_with("msg_"));
    let conv = b["conversation_id"].as_str().unwrap().to_string();

    // The human answers; the same reply delivered three times reaches the user once.
    for _ in 0..3 {
        let r = hub.desk_reply(&conv, "Hi, I am Ana from support.", Some("msg_reply_1")).await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["code"], 200);
    }
    let h = w.wait_for("human reply", |m| m["from"] == "human").await;
    assert_eq!(h["text"], "Hi, I am Ana from support.");
    assert_eq!(h["buttons"][0]["value"], "/end", "the human's message offers an end button");

    // The user's next message is relayed to the desk.
    w.send("My parcel has not arrived").await;
    let chat =
        eventually(WAIT, "chat at the desk", || async { hub.desk.requests_to("/chat").into_iter().next() }).await;
    assert_eq!(chat.body["conversation_id"], conv.as_str());
    assert_eq!(chat.body["body"], "My parcel has not arrived");

    // The user ends; the desk is told USER_CLOSED.
    w.end().await;
    let close = eventually(WAIT, "close at the desk", || async {
        hub.desk.requests_to("/conversation/close").into_iter().next()
    })
    .await;
    assert_eq!(close.body["conversation_id"], conv.as_str());
    assert_eq!(close.body["type"], "USER_CLOSED");
    w.wait_for("ended notice", |m| m["from"] == "system" && m["text"].as_str().unwrap().contains("ended")).await;

    // A late human reply after the close is dropped, not relayed.
    let r = hub.desk_reply(&conv, "Are you still there?", Some("msg_reply_late")).await;
    assert_eq!(r.status(), 200);

    // The bot answers again.
    w.send("How long does shipping take?").await;
    let a = w.wait_for("FAQ answer after handoff", |m| m["from"] == "bot").await;
    assert_eq!(a["text"], "Shipping takes 2-4 days.");

    let all = w.all().await;
    let humans: Vec<_> = all.iter().filter(|m| m["from"] == "human").collect();
    assert_eq!(humans.len(), 1, "one human message in total: {all:#?}");
    assert_eq!(hub.desk.requests_to("/conversation/establish").len(), 1);
    assert_eq!(hub.desk.bad_signatures(), 0);
    hub.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn desk_reply_without_webhook_id_is_deduplicated_by_content() {
    let hub = common::hub().await;
    let mut w = WidgetClient::start(&hub.base, "shop", Some("bo@example.com")).await;
    w.send("human").await;
    let est =
        eventually(WAIT, "establish", || async { hub.desk.requests_to("/conversation/establish").into_iter().next() })
            .await;
    let conv = est.body["conversation_id"].as_str().unwrap().to_string();
    for _ in 0..3 {
        assert_eq!(hub.desk_reply(&conv, "Hello!", None).await.status(), 200);
    }
    assert_eq!(hub.desk_reply(&conv, "Second message", None).await.status(), 200);
    w.wait_for("second human message", |m| m["text"] == "Second message").await;
    let humans = w.all().await.into_iter().filter(|m| m["from"] == "human").count();
    assert_eq!(humans, 2);
    hub.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_is_collected_in_chat_when_not_preset() {
    let hub = common::hub().await;
    let mut w = WidgetClient::start(&hub.base, "shop", None).await;
    w.send("I want to talk to a human").await;
    w.wait_for("e-mail request", |m| m["text"].as_str().unwrap().contains("e-mail address")).await;
    w.send("it is not-an-address").await;
    w.wait_for("invalid e-mail notice", |m| m["text"].as_str().unwrap().contains("does not look like")).await;
    w.send("sure: cy@example.org").await;
    let est =
        eventually(WAIT, "establish", || async { hub.desk.requests_to("/conversation/establish").into_iter().next() })
            .await;
    assert_eq!(est.body["email"], "cy@example.org");
    let last = est.body["body"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["text"], "I want to talk to a human", "the current question ends the history");
    hub.running.stop().await;
}
