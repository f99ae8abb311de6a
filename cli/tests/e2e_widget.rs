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

/// A desk may answer inside its establish call, before the hub has its response: the reply
/// finds the conversation (the hub chose the id and linked it first) and reaches the user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desk_answering_during_establish_reaches_the_user() {
    let hub = common::hub().await;
    hub.desk.reply_during_establish(baton_tests::desk::InstantReply {
        url: format!("{}/desks/webhook/shop/v1/human/message/receive", hub.base),
        token: hub.token.clone(),
        text: "Already here!".into(),
    });
    let mut w = WidgetClient::start(&hub.base, "shop", Some("fast@example.com")).await;
    w.send("I want to talk to a human").await;
    w.wait_for("the instant reply", |m| m["from"] == "human" && m["text"] == "Already here!").await;
    assert_eq!(hub.desk.instant_reply_statuses(), vec![200]);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_llm_agent_answers_survives_a_rate_limit_and_hands_over_with_its_reason() {
    use baton_tests::openai::{FakeOpenai, Turn};
    let llm = FakeOpenai::start("sk-e2e-openai-key").await;
    let url = llm.url();
    let hub = common::hub_with(std::sync::Arc::new(baton_runtime::clock::SystemClock), move |a| {
        a.brain = baton_tests::openai::brain(url, "sk-e2e-openai-key")
    })
    .await;
    let mut w = WidgetClient::start(&hub.base, "shop", Some("ana@example.com")).await;

    // Rate limited once (Retry-After: 1): the answer comes after the retry, once.
    llm.script([Turn::error(429, "rate_limit_error", "Rate limit reached"), Turn::text("We ship in 2-4 days.")]);
    w.send("How long does shipping take?").await;
    let a = w.wait_for("LLM answer", |m| m["from"] == "bot").await;
    assert_eq!(a["text"], "We ship in 2-4 days.");
    assert_eq!(llm.requests().len(), 2);

    // The model calls its handoff tool: the desk gets the conversation with the model's reason.
    llm.script([Turn::ToolCall {
        name: "handoff".into(),
        arguments: serde_json::json!({"reason": "the customer wants a refund for order 1234"}),
        content: Some("Let me get a colleague for the refund.".into()),
    }]);
    w.send("I want my money back for order 1234").await;
    w.wait_for("the model's words", |m| m["text"] == "Let me get a colleague for the refund.").await;
    let est = eventually(WAIT, "establish at the desk", || async {
        hub.desk.requests_to("/conversation/establish").into_iter().next()
    })
    .await;
    assert_eq!(est.body["reason"], "the customer wants a refund for order 1234");
    hub.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_refuses_hands_the_user_to_a_human_instead_of_going_quiet() {
    use baton_tests::openai::{FakeOpenai, Turn};
    let llm = FakeOpenai::start("sk-e2e-openai-key").await;
    llm.always(Turn::error(404, "invalid_request_error", "The model `gpt-4o-mini` does not exist"));
    let url = llm.url();
    let hub = common::hub_with(std::sync::Arc::new(baton_runtime::clock::SystemClock), move |a| {
        a.brain = baton_tests::openai::brain(url, "sk-e2e-openai-key")
    })
    .await;
    let mut w = WidgetClient::start(&hub.base, "shop", Some("ana@example.com")).await;
    w.send("How long does shipping take?").await;
    w.wait_for("waiting notice", |m| m["from"] == "system" && m["text"].as_str().unwrap().contains("connecting")).await;
    let est = eventually(WAIT, "establish at the desk", || async {
        hub.desk.requests_to("/conversation/establish").into_iter().next()
    })
    .await;
    assert!(est.body["reason"].as_str().unwrap().contains("does not exist"), "{}", est.body["reason"]);
    hub.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_model_key_hands_the_user_over_and_alerts_without_showing_the_key() {
    use baton_tests::openai::FakeOpenai;
    let llm = FakeOpenai::start("sk-the-right-key").await;
    let url = llm.url();
    let hub = common::hub_with(std::sync::Arc::new(baton_runtime::clock::SystemClock), move |a| {
        a.brain = baton_tests::openai::brain(url, "sk-e2e-openai-key")
    })
    .await;
    let w = WidgetClient::start(&hub.base, "shop", Some("ana@example.com")).await;
    w.send("How long does shipping take?").await;
    let est = eventually(WAIT, "establish at the desk", || async {
        hub.desk.requests_to("/conversation/establish").into_iter().next()
    })
    .await;
    assert!(est.body["reason"].as_str().unwrap().contains("HTTP 401"), "{}", est.body["reason"]);
    let alerts = hub.running.ports.alerts.recent();
    assert!(alerts.iter().any(|a| a.contains("rejected the agent's credentials")), "{alerts:?}");
    assert!(alerts.iter().chain([est.body.to_string()].iter()).all(|a| !a.contains("sk-e2e-openai-key")));
    hub.running.stop().await;
}
