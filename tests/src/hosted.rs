//! A fake hosted AI agent speaking seed 003's contract (Zendesk AI agents - Advanced): it
//! serves `POST /converse/chat` (checking `botid` and the raw `Authorization` key, answering
//! 200/401/404 as the contract says) and, like the real one, answers asynchronously by calling
//! the integration's converse and actions webhooks. Its dialogue is a small script:
//!
//! - `startSession`: a welcome message;
//! - a message containing "human": an `escalate` with `escalateTo: "tier-2"`;
//! - "team online?": asks `isTeamOnline` and says the answer;
//! - "my account": triggers the action `get_account` with the `email` it was given by
//!   metadata, and says the `tier` the action returned;
//! - "menu": a carousel with buttons;
//! - anything else: "You said: <text>".

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

pub const BOT_ID: &str = "64f1c0ffee0000000000abcd";

#[derive(Default)]
struct Shared {
    /// Bodies of accepted converse calls.
    calls: Vec<Value>,
    /// Answers of the hub's webhooks: (event, HTTP status, body).
    webhook_answers: Vec<(String, u16, Value)>,
    /// Session parameters set by metadata, per conversation.
    params: std::collections::HashMap<String, Vec<(String, String)>>,
    webhook_base: String,
    sequence: u64,
}

#[derive(Clone)]
struct St {
    shared: Arc<Mutex<Shared>>,
    key: String,
    http: reqwest::Client,
}

pub struct FakeHostedAgent {
    pub addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
}

impl FakeHostedAgent {
    /// Start on a free loopback port, accepting `key`.
    pub async fn start(key: &str) -> FakeHostedAgent {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let st = St { shared: shared.clone(), key: key.to_string(), http: reqwest::Client::new() };
        let app = Router::new().route("/converse/chat", post(converse)).with_state(st);
        let addr = crate::serve_on_loopback(app).await;
        FakeHostedAgent { addr, shared }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where its webhooks go: `{base}/converse` and `{base}/actions`.
    pub fn set_webhook_base(&self, base: &str) {
        self.shared.lock().unwrap().webhook_base = base.to_string();
    }

    pub fn calls(&self) -> Vec<Value> {
        self.shared.lock().unwrap().calls.clone()
    }

    /// What the hub answered to its webhook calls.
    pub fn webhook_answers(&self) -> Vec<(String, u16, Value)> {
        self.shared.lock().unwrap().webhook_answers.clone()
    }

    /// Call the hub's converse webhook with a raw body, as the agent would.
    pub async fn call_webhook(&self, path: &str, body: Value) -> (u16, Value) {
        let base = self.shared.lock().unwrap().webhook_base.clone();
        post_json(&reqwest::Client::new(), &format!("{base}/{path}"), &body).await
    }
}

async fn post_json(http: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    match http.post(url).json(body).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(Value::Null))
        }
        Err(e) => (0, json!({"transport": e.to_string()})),
    }
}

async fn converse(State(st): State<St>, headers: HeaderMap, body: Bytes) -> (StatusCode, Json<Value>) {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    if h("authorization") != st.key {
        return (StatusCode::UNAUTHORIZED, Json(json!({"message": "Unauthorized"})));
    }
    if h("botid") != BOT_ID {
        return (StatusCode::NOT_FOUND, Json(json!({"message": "Bot not found"})));
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, Json(json!({"message": "invalid JSON"})));
    };
    let Some(conv) = body["platformConversationId"].as_str().map(str::to_string) else {
        return (StatusCode::BAD_REQUEST, Json(json!({"message": "platformConversationId is required"})));
    };
    st.shared.lock().unwrap().calls.push(body.clone());
    match body["eventType"].as_str() {
        Some("metadata") => {
            let items: Vec<(String, String)> = body["metaData"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| Some((m["key"].as_str()?.to_string(), m["value"].as_str()?.to_string())))
                .collect();
            st.shared.lock().unwrap().params.entry(conv).or_default().extend(items);
        }
        Some("startSession") => {
            tokio::spawn(say(
                st,
                conv,
                json!({"type": "text", "text": "Welcome from the hosted agent", "buttons": []}),
            ));
        }
        Some("message") => {
            let text = body["text"].as_str().unwrap_or_default().to_string();
            tokio::spawn(dialogue(st, conv, text));
        }
        Some("endSession") => {}
        _ => return (StatusCode::BAD_REQUEST, Json(json!({"message": "unknown eventType"}))),
    }
    (StatusCode::OK, Json(Value::Null))
}

/// One answer to a user message, after the 200 (as the real agent does).
async fn dialogue(st: St, conv: String, text: String) {
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let lower = text.to_lowercase();
    if lower.contains("human") {
        let data = json!({"platformConversationId": conv, "eventType": "escalate", "escalateTo": "tier-2"});
        hook(&st, "converse", "escalate", json!({"botId": BOT_ID, "channel": "chat", "data": data})).await;
    } else if lower.contains("team online") {
        let data = json!({"platformConversationId": conv, "eventType": "isTeamOnline"});
        let (_, answer) =
            hook(&st, "converse", "isTeamOnline", json!({"botId": BOT_ID, "channel": "chat", "data": data})).await;
        let text = format!("team online: {}", answer["isOnline"]);
        say(st, conv, json!({"type": "text", "text": text, "buttons": []})).await;
    } else if lower.contains("my account") {
        let email = {
            let s = st.shared.lock().unwrap();
            s.params.get(&conv).and_then(|p| p.iter().rev().find(|(k, _)| k == "email").map(|(_, v)| v.clone()))
        };
        let data = json!([{"key": "email", "value": [email.unwrap_or_default()]}]);
        let trigger = json!({"botId": BOT_ID, "platformConversationId": conv, "name": "get_account", "data": data});
        let (status, answer) = hook(&st, "actions", "get_account", trigger).await;
        let tier = answer["results"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["key"] == "tier")
            .and_then(|r| r["value"].as_str())
            .map(str::to_string);
        let text = match tier {
            Some(t) => format!("Your tier is {t}."),
            None => format!("The account lookup failed (HTTP {status})."),
        };
        say(st, conv, json!({"type": "text", "text": text, "buttons": []})).await;
    } else if lower.contains("menu") {
        let cards = json!([
            {"title": "Flour", "description": "1 kg", "buttons": [{"text": "Buy flour", "type": "button"}]},
            {"title": "Salt", "buttons": [{"text": "Buy salt", "type": "button"}]}
        ]);
        say(st, conv, json!({"type": "carousel", "text": "Our products", "carouselCards": cards})).await;
    } else {
        let text = format!("You said: {text}");
        say(st, conv, json!({"type": "text", "text": text, "buttons": [{"text": "Thanks", "type": "button"}]})).await;
    }
}

/// A `sendMessage` with the given fields.
async fn say(st: St, conv: String, fields: Value) {
    let id = {
        let mut s = st.shared.lock().unwrap();
        s.sequence += 1;
        format!("m{}", s.sequence)
    };
    let mut data =
        json!({"platformConversationId": conv, "eventType": "sendMessage", "messageId": id, "confidence": 0.9});
    if let (Some(d), Some(f)) = (data.as_object_mut(), fields.as_object()) {
        d.extend(f.clone());
    }
    hook(&st, "converse", "sendMessage", json!({"botId": BOT_ID, "channel": "chat", "data": data})).await;
}

async fn hook(st: &St, path: &str, what: &str, body: Value) -> (u16, Value) {
    let base = st.shared.lock().unwrap().webhook_base.clone();
    let (status, answer) = post_json(&st.http, &format!("{base}/{path}"), &body).await;
    st.shared.lock().unwrap().webhook_answers.push((what.to_string(), status, answer.clone()));
    (status, answer)
}
