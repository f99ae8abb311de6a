//! The action framework's call over real HTTP: the hub's own format (signed, retried under one
//! webhook-id, outputs picked by JSON pointer) and the contract format of seed 003's actions
//! webhook (results saved as they come, sanitize flags kept).

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use baton_connectors::actions;
use baton_core::agent::{ActionConfig, ActionFormat};
use baton_core::model::Secret;
use baton_core::{Channel, ConversationKey};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

type Seen = Arc<Mutex<Vec<(HeaderMap, Value)>>>;

/// An endpoint that fails `fail` times with 503, then answers `answer`.
async fn endpoint(fail: usize, answer: Value) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let failures = Arc::new(Mutex::new(fail));
    let app = Router::new().route(
        "/action",
        post(move |headers: HeaderMap, body: Bytes| {
            let (log, failures, answer) = (log.clone(), failures.clone(), answer.clone());
            async move {
                log.lock().unwrap().push((headers, serde_json::from_slice(&body).unwrap()));
                let mut f = failures.lock().unwrap();
                if *f > 0 {
                    *f -= 1;
                    return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({})));
                }
                (StatusCode::OK, axum::Json(answer))
            }
        }),
    );
    let addr = baton_tests::serve_on_loopback(app).await;
    (format!("http://{addr}/action"), seen)
}

fn action(url: String, format: ActionFormat) -> ActionConfig {
    ActionConfig {
        name: "get_account".into(),
        description: "Look the customer up".into(),
        inputs: vec!["email".into()],
        url,
        signing_secret: Some(Secret(SECRET.into())),
        outputs: [("tier".to_string(), "/customer/tier".to_string())].into(),
        sanitize: vec![],
        timeout_secs: 5,
        retries: 2,
        format,
    }
}

#[tokio::test]
async fn the_hub_format_is_signed_retried_under_one_id_and_picks_outputs() {
    let (url, seen) = endpoint(1, json!({"customer": {"tier": "gold", "id": 9}})).await;
    let key = ConversationKey::new("shop", Channel::Telegram, "42").unwrap();
    let result =
        actions::call(&reqwest::Client::new(), &action(url, ActionFormat::Baton), &key, json!({"email": "a@x.hr"}))
            .await
            .unwrap();
    assert_eq!(result.outputs, [("tier".to_string(), "gold".to_string())].into());
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "one retry after the 503");
    assert_eq!(
        seen[0].1,
        json!({"action": "get_account", "conversation": "shop#telegram#42", "inputs": {"email": "a@x.hr"}})
    );
    let id = |h: &HeaderMap| h["webhook-id"].to_str().unwrap().to_string();
    assert_eq!(id(&seen[0].0), id(&seen[1].0), "the retry carries the same webhook-id");
    let h = &seen[1].0;
    let expected = baton_tests::integration::spec_signature(
        SECRET,
        &id(h),
        h["webhook-timestamp"].to_str().unwrap(),
        &serde_json::to_vec(&seen[1].1).unwrap(),
    );
    assert_eq!(h["webhook-signature"].to_str().unwrap(), expected);
}

#[tokio::test]
async fn the_contract_format_sends_the_trigger_and_keeps_every_result() {
    let answer = json!({"results": [
        {"key": "tier", "value": "gold"},
        {"key": "national_id", "value": "0101990", "sanitize": true},
        {"key": "open_orders", "value": 3}
    ]});
    let (url, seen) = endpoint(0, answer).await;
    let key = ConversationKey::new("shop", Channel::Api, "call-1").unwrap();
    let result =
        actions::call(&reqwest::Client::new(), &action(url, ActionFormat::Contract), &key, json!({"email": "a@x.hr"}))
            .await
            .unwrap();
    let body = seen.lock().unwrap()[0].1.clone();
    assert_eq!(
        body,
        json!({"botId": "shop", "platformConversationId": "call-1", "name": "get_account",
            "data": [{"key": "email", "value": ["a@x.hr"]}]})
    );
    assert_eq!(result.outputs.get("tier").map(String::as_str), Some("gold"));
    assert_eq!(result.outputs.get("open_orders").map(String::as_str), Some("3"));
    assert_eq!(result.sanitize, ["national_id".to_string()].into());

    // A refusal is final and says so.
    let (url, _) = endpoint(5, json!({})).await;
    let mut failing = action(url, ActionFormat::Contract);
    failing.retries = 1;
    let err = actions::call(&reqwest::Client::new(), &failing, &key, json!({})).await.unwrap_err();
    assert!(err.contains("503"), "{err}");
}
