//! The spine through the real Lambda handlers against moto: widget-api and desk-webhook
//! invoked with API Gateway v2 events, conversation-worker and timeout-check with SQS
//! events of the messages actually queued.
//!
//! widget -> FAQ answer -> "I want a human" -> the desk receives establish with the history
//! -> the desk's reply reaches the user -> the user ends -> the desk receives close
//! USER_CLOSED -> the bot answers again. And the wait timer: no human in time -> "keep
//! waiting or end?".

mod common;

use common::{hub, run_timers, run_worker, ApiRequest, Widget, HOURS, SHIPPING};
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn widget_faq_handoff_reply_end_and_back_to_bot() {
    let hub = hub(|_| {}).await;
    let mut w = Widget::start(&hub, Some("ana@example.com")).await;

    w.send("What are your opening hours?").await;
    // Nothing is answered before the worker runs: the HTTP function only queues.
    assert!(w.all().await.is_empty());
    run_worker(&hub).await;
    let a = w.next("FAQ answer", |m| m["from"] == "bot").await;
    assert_eq!(a["text"], HOURS);

    w.send("I want to talk to a human").await;
    run_worker(&hub).await;
    w.next("waiting notice", |m| m["from"] == "system" && m["text"].as_str().unwrap().contains("connecting")).await;
    let establish = hub.desk.requests_to("/conversation/establish");
    assert_eq!(establish.len(), 1, "{:#?}", hub.desk.requests());
    let est = &establish[0];
    let b = &est.body;
    assert_eq!(b["bot_id"], "shop");
    assert_eq!(b["email"], "ana@example.com");
    let turns: Vec<(&str, &str)> = b["body"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["message_type"].as_str().unwrap(), t["text"].as_str().unwrap()))
        .collect();
    assert_eq!(
        turns,
        vec![
            ("QUESTION", "What are your opening hours?"),
            ("ANSWER", HOURS),
            ("QUESTION", "I want to talk to a human"),
        ]
    );
    assert!(est.webhook_id.as_deref().unwrap().starts_with("msg_"));
    let conv = b["conversation_id"].as_str().unwrap().to_string();

    // The human answers through the desk-webhook function; the body arrives base64-encoded,
    // as API Gateway sends content it does not treat as text.
    let body = json!({"conversation_id": conv, "timestamp": 1700000000000i64, "body": "Hi, I am Ana from support."});
    let r = ApiRequest::new("POST", "/desks/webhook/shop/v1/human/message/receive")
        .bearer(&hub.token)
        .header("webhook-id", "msg_reply_1")
        .json(&body)
        .base64()
        .send(&hub.desk_api)
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["code"], 200);
    assert!(r.headers["content-type"].as_str().unwrap().starts_with("application/json"), "{r:?}");
    // A wrong token is refused before anything is queued.
    let bad = ApiRequest::new("POST", "/desks/webhook/shop/v1/human/message/receive")
        .bearer("baton_wrong")
        .json(&body)
        .send(&hub.desk_api)
        .await;
    assert_eq!(bad.status, 401, "{bad:?}");
    run_worker(&hub).await;
    let h = w.next("human reply", |m| m["from"] == "human").await;
    assert_eq!(h["text"], "Hi, I am Ana from support.");
    assert_eq!(h["buttons"][0]["value"], "/end");

    // The user's next message goes to the desk.
    w.send("My parcel has not arrived").await;
    run_worker(&hub).await;
    let chat = hub.desk.requests_to("/chat");
    assert_eq!(chat.len(), 1);
    assert_eq!(chat[0].body["conversation_id"], conv.as_str());
    assert_eq!(chat[0].body["body"], "My parcel has not arrived");

    // The user ends; the desk is told USER_CLOSED.
    w.end().await;
    run_worker(&hub).await;
    let close = hub.desk.requests_to("/conversation/close");
    assert_eq!(close.len(), 1, "{:#?}", hub.desk.requests());
    assert_eq!(close[0].body["conversation_id"], conv.as_str());
    assert_eq!(close[0].body["type"], "USER_CLOSED");
    w.next("ended notice", |m| m["from"] == "system" && m["text"].as_str().unwrap().contains("ended")).await;

    // The bot answers again.
    w.send("How long does shipping take?").await;
    run_worker(&hub).await;
    let a = w.next("FAQ answer after the handoff", |m| m["from"] == "bot").await;
    assert_eq!(a["text"], SHIPPING);

    assert_eq!(w.texts_from("human").await.len(), 1);
    assert_eq!(hub.desk.requests_to("/conversation/establish").len(), 1);
    assert_eq!(hub.desk.bad_signatures(), 0);
    assert_eq!(hub.desk.duplicates(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_with_the_end_button_text_closes_the_desk_conversation() {
    let hub = hub(|_| {}).await;
    let mut w = Widget::start(&hub, Some("bo@example.com")).await;
    w.send("I want to talk to a human").await;
    run_worker(&hub).await;
    let conv = hub.desk.requests_to("/conversation/establish")[0].body["conversation_id"].as_str().unwrap().to_string();
    assert_eq!(hub.desk_reply(&conv, "Hello!", Some("msg_1")).await.status, 200);
    run_worker(&hub).await;
    w.next("human reply", |m| m["from"] == "human").await;
    // The human's message offers an end button whose value is sent as text.
    w.send("/end").await;
    run_worker(&hub).await;
    let close = hub.desk.requests_to("/conversation/close");
    assert_eq!(close.len(), 1);
    assert_eq!(close[0].body["type"], "USER_CLOSED");
    assert!(hub.desk.requests_to("/chat").is_empty(), "/end is not relayed as chat");
    w.send("What are your opening hours?").await;
    run_worker(&hub).await;
    assert_eq!(w.next("bot answer", |m| m["from"] == "bot").await["text"], HOURS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_human_in_time_asks_keep_waiting_or_end_through_the_timer_queue() {
    let hub = hub(|a| a.policy.wait_timeout_secs = 1).await;
    let mut w = Widget::start(&hub, Some("cy@example.com")).await;
    w.send("I want to talk to a human").await;
    run_worker(&hub).await;
    assert_eq!(hub.desk.requests_to("/conversation/establish").len(), 1);
    w.next("waiting notice", |m| m["from"] == "system").await;

    // moto delays the timer message on the wall clock (DelaySeconds 1).
    let started = std::time::Instant::now();
    let mut fired = 0;
    while fired == 0 {
        assert!(started.elapsed() < Duration::from_secs(5), "the timer message never became visible");
        tokio::time::sleep(Duration::from_millis(100)).await;
        fired = run_timers(&hub).await;
    }
    assert_eq!(fired, 1);
    run_worker(&hub).await;
    let q = w.next("keep waiting or end?", |m| m["text"].as_str().unwrap().contains("keep waiting or end")).await;
    let buttons: Vec<(&str, &str)> = q["buttons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b: &Value| (b["label"].as_str().unwrap(), b["value"].as_str().unwrap()))
        .collect();
    assert_eq!(buttons, vec![("Keep waiting", "/keep_waiting"), ("End request", "/end")]);

    // Pressing "End request" closes the request at the desk.
    w.send("/end").await;
    run_worker(&hub).await;
    let close = hub.desk.requests_to("/conversation/close");
    assert_eq!(close.len(), 1, "{:#?}", hub.desk.requests());
}

/// The widget's per-address rate limit keys on the caller's IP from API Gateway's request
/// context (there is no socket peer on Lambda): one address runs out, another does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_is_per_api_gateway_source_ip() {
    let hub = hub(|_| {}).await;
    let session = |ip: &'static str| {
        ApiRequest::new("POST", "/api/widget/shop/session").source_ip(ip).json(&json!({})).send(&hub.widget_api)
    };
    assert!(rate_limited(|| session("203.0.113.1")).await, "one address is rate limited");
    assert_eq!(session("203.0.113.2").await.status, 200, "another address is not");
}

/// Whether calls from one address, up to 200, reach the rate limit (429); every call before
/// it is answered 200.
async fn rate_limited<F: std::future::Future<Output = common::Reply>>(mut call: impl FnMut() -> F) -> bool {
    for _ in 0..200 {
        let r = call().await;
        if r.status == 429 {
            return true;
        }
        assert_eq!(r.status, 200, "{r:?}");
    }
    false
}

/// widget-api at its own function URL (template parameter `FunctionUrls`): no API Gateway
/// in front answers the browser's preflight, so the function does, and the rate limit keys
/// on the caller's address from the function URL's request context.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_widget_api_answers_preflights_and_limits_per_address_at_its_function_url() {
    let hub = hub(|a| a.widget.allowed_origins = vec!["https://shop.example".into()]).await;
    let preflight = |origin: &'static str| {
        ApiRequest::new("OPTIONS", "/api/widget/shop/messages")
            .through_function_url(true)
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .send(&hub.widget_api)
    };
    let ok = preflight("https://shop.example").await;
    assert_eq!(ok.status, 204, "{ok:?}");
    assert_eq!(ok.headers["access-control-allow-origin"], "https://shop.example", "{ok:?}");
    assert!(ok.headers["access-control-allow-methods"].as_str().unwrap_or_default().contains("POST"), "{ok:?}");
    assert_eq!(preflight("https://elsewhere.example").await.status, 403);

    let session = |ip: &'static str| {
        ApiRequest::new("POST", "/api/widget/shop/session")
            .through_function_url(true)
            .source_ip(ip)
            .json(&json!({}))
            .send(&hub.widget_api)
    };
    let first = session("198.51.100.1").await;
    assert_eq!(first.status, 200, "{first:?}");
    assert!(rate_limited(|| session("198.51.100.1")).await, "one address is rate limited");
    assert_eq!(session("198.51.100.2").await.status, 200, "another address is not");
    // The widget's conversation works at that URL: a message is accepted and queued.
    let token = first.body["token"].as_str().expect("a conversation token");
    let sent = ApiRequest::new("POST", "/api/widget/shop/messages")
        .through_function_url(true)
        .source_ip("198.51.100.3")
        .bearer(token)
        .json(&json!({"text": "How long does shipping take?", "client_id": "c1"}))
        .send(&hub.widget_api)
        .await;
    assert_eq!(sent.status, 202, "{sent:?}");
    run_worker(&hub).await;
    let poll = ApiRequest::new("GET", "/api/widget/shop/messages?after=0")
        .through_function_url(true)
        .source_ip("198.51.100.3")
        .bearer(token)
        .send(&hub.widget_api)
        .await;
    assert_eq!(poll.status, 200, "{poll:?}");
    assert!(poll.body.to_string().contains(SHIPPING), "the bot's answer is there to poll: {poll:?}");
}
