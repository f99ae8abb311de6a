//! Bad input gets a clear JSON error with the right status, and nothing is stored.

mod common;

use baton_tests::widget::WidgetClient;
use serde_json::{json, Value};

async fn error_of(r: reqwest::Response) -> (u16, String, String) {
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    (status, v["error"]["code"].as_str().unwrap().to_string(), v["error"]["message"].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_json_with_the_right_status() {
    let hub = common::hub().await;
    let http = reqwest::Client::new();
    let w = WidgetClient::start(&hub.base, "shop", None).await;

    // Unknown agent.
    let r = http.post(format!("{}/api/widget/nobody/session", hub.base)).json(&json!({})).send().await.unwrap();
    assert_eq!(error_of(r).await.0, 404);

    // Missing and forged conversation tokens.
    let url = format!("{}/api/widget/shop/messages", hub.base);
    let r = http.post(&url).json(&json!({"text": "hi"})).send().await.unwrap();
    assert_eq!(error_of(r).await.0, 401);
    let forged = format!("{}x", w.token);
    let r = http.post(&url).bearer_auth(forged).json(&json!({"text": "hi"})).send().await.unwrap();
    assert_eq!(error_of(r).await.0, 401);

    // Malformed JSON names the problem.
    let r = http
        .post(&url)
        .bearer_auth(&w.token)
        .header("content-type", "application/json")
        .body("{\"txt\": 1}")
        .send()
        .await
        .unwrap();
    let (status, code, message) = error_of(r).await;
    assert_eq!((status, code.as_str()), (400, "invalid_json"));
    assert!(message.contains("txt") || message.contains("text"), "{message}");

    // Oversized body.
    let big = "x".repeat(70 * 1024);
    let r = http.post(&url).bearer_auth(&w.token).json(&json!({"text": big})).send().await.unwrap();
    assert_eq!(error_of(r).await.0, 413);

    // Desk routes: missing and wrong agent tokens are refused and nothing is stored.
    let desk_url = format!("{}/desks/webhook/shop/v1/human/message/receive", hub.base);
    let body = json!({"conversation_id": "ho_x", "timestamp": 1, "body": "hi"});
    let r = http.post(&desk_url).json(&body).send().await.unwrap();
    assert_eq!(error_of(r).await.0, 401);
    let r = http.post(&desk_url).bearer_auth("bat_wrong").json(&body).send().await.unwrap();
    assert_eq!(error_of(r).await.0, 401);
    // Right token, unknown conversation.
    let r = http.post(&desk_url).bearer_auth(&hub.token).json(&body).send().await.unwrap();
    assert_eq!(error_of(r).await.0, 404);
    // A probe is answered without acting.
    let r = http.post(&desk_url).bearer_auth(&hub.token).json(&json!({"istest": true})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Missing field.
    let r =
        http.post(&desk_url).bearer_auth(&hub.token).json(&json!({"conversation_id": "ho_x"})).send().await.unwrap();
    let (status, _, message) = error_of(r).await;
    assert_eq!(status, 400);
    assert!(message.contains("body"), "{message}");

    // Unknown route.
    let r = http.get(format!("{}/nope/nope", hub.base)).send().await.unwrap();
    assert_eq!(error_of(r).await.0, 404);

    // Nothing of the refused requests was queued or stored.
    let key = baton_core::ConversationKey::new("shop", baton_core::Channel::Widget, &w.conversation_id).unwrap();
    assert!(hub.running.ports.store.load_session(&key).await.unwrap().is_none());
    hub.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_agents_token_does_not_open_anothers_desk_routes() {
    let hub = common::hub().await;
    let mut other = common::shop_agent(&hub.desk.url());
    other.id = "other".into();
    hub.running.ports.store.put_agent(&other).await.unwrap();
    let r = reqwest::Client::new()
        .post(format!("{}/desks/webhook/other/v1/human/close", hub.base))
        .bearer_auth(&hub.token)
        .json(&json!({"conversation_id": "ho_x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // And a widget token of one agent is not valid for another.
    let w = WidgetClient::start(&hub.base, "shop", None).await;
    let r = reqwest::Client::new()
        .post(format!("{}/api/widget/other/messages", hub.base))
        .bearer_auth(&w.token)
        .json(&json!({"text": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    hub.running.stop().await;
}
