//! A fake help-desk implementing the webhook-desk contract (`/conversation/establish`,
//! `/chat`, `/conversation/close`); on other paths it plays a ticket system. It verifies the
//! hub's Standard Webhooks signature and
//! Basic credentials when configured, drops repeated `webhook-id`s like a careful desk
//! would (counting them), and can be told to fail for a while.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use baton_connectors::standard_webhooks::{SigningSecret, WebhookHeaders};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub struct DeskRequest {
    /// When the desk received it.
    pub at: std::time::Instant,
    pub path: String,
    pub body: Value,
    pub webhook_id: Option<String>,
    pub authorization: Option<String>,
}

#[derive(Default)]
pub struct DeskLog {
    /// Accepted requests, each webhook-id once, in arrival order.
    pub requests: Vec<DeskRequest>,
    /// The webhook-ids of `requests` (a linear search made long load runs quadratic).
    webhook_ids: std::collections::HashSet<String>,
    /// Requests whose webhook-id was seen before.
    pub duplicates: usize,
    pub bad_signatures: usize,
    /// Answer 503 to this many requests before accepting again.
    pub fail_next: usize,
    /// Expected `Authorization` header, if any.
    pub expect_auth: Option<String>,
    /// A human reply sent back to the hub from inside each establish call.
    pub reply_during_establish: Option<InstantReply>,
    /// The hub's HTTP status for each of those replies.
    pub instant_reply_statuses: Vec<u16>,
    /// How long each request takes before it is answered (a slow desk).
    pub delay: std::time::Duration,
}

/// Where and what the fastest possible desk answers: the hub's human-message endpoint,
/// the agent token, the text.
#[derive(Clone)]
pub struct InstantReply {
    pub url: String,
    pub token: String,
    pub text: String,
}

#[derive(Clone)]
struct DeskState {
    log: Arc<Mutex<DeskLog>>,
    secret: Option<Arc<SigningSecret>>,
}

pub struct FakeDesk {
    pub addr: SocketAddr,
    log: Arc<Mutex<DeskLog>>,
}

impl FakeDesk {
    /// Start on a free loopback port. With `signing_secret`, unsigned or wrongly signed
    /// requests are refused with 401.
    pub async fn start(signing_secret: Option<&str>) -> FakeDesk {
        let secret = signing_secret.map(|s| Arc::new(SigningSecret::parse(s).expect("valid whsec_ secret")));
        let log = Arc::new(Mutex::new(DeskLog::default()));
        let state = DeskState { log: log.clone(), secret };
        // Any path is accepted and recorded, so the same server also plays a ticket system.
        let app = Router::new().fallback(post(handle)).with_state(state);
        let addr = crate::serve_on_loopback(app).await;
        FakeDesk { addr, log }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<DeskRequest> {
        self.log.lock().unwrap().requests.clone()
    }

    pub fn requests_to(&self, path: &str) -> Vec<DeskRequest> {
        self.requests().into_iter().filter(|r| r.path == path).collect()
    }

    /// The first request to `path`, waiting up to 10 s for it.
    pub async fn first_to(&self, path: &str) -> DeskRequest {
        crate::eventually(std::time::Duration::from_secs(10), path, || async {
            self.requests_to(path).into_iter().next()
        })
        .await
    }

    /// How many requests reached `path`, without copying them (cheap to poll).
    pub fn count_to(&self, path: &str) -> usize {
        self.log.lock().unwrap().requests.iter().filter(|r| r.path == path).count()
    }

    pub fn duplicates(&self) -> usize {
        self.log.lock().unwrap().duplicates
    }

    pub fn bad_signatures(&self) -> usize {
        self.log.lock().unwrap().bad_signatures
    }

    pub fn fail_next(&self, n: usize) {
        self.log.lock().unwrap().fail_next = n;
    }

    pub fn expect_authorization(&self, value: &str) {
        self.log.lock().unwrap().expect_auth = Some(value.to_string());
    }

    /// Answer every establish with a human message to the hub before responding to it.
    pub fn reply_during_establish(&self, reply: InstantReply) {
        self.log.lock().unwrap().reply_during_establish = Some(reply);
    }

    /// Take `delay` to answer each request from now on.
    pub fn answer_after(&self, delay: std::time::Duration) {
        self.log.lock().unwrap().delay = delay;
    }

    pub fn instant_reply_statuses(&self) -> Vec<u16> {
        self.log.lock().unwrap().instant_reply_statuses.clone()
    }
}

async fn handle(
    State(st): State<DeskState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, Json<Value>) {
    if let Some(secret) = &st.secret {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        let ok = WebhookHeaders::from_header_map(&headers).and_then(|w| secret.verify(&w, &body, now));
        if ok.is_err() {
            st.log.lock().unwrap().bad_signatures += 1;
            return (StatusCode::UNAUTHORIZED, Json(json!({"code": 401, "message": "bad signature"})));
        }
    }
    let delay = st.log.lock().unwrap().delay;
    tokio::time::sleep(delay).await;
    let (status, response, instant) = record(&st, &uri, &headers, &body);
    if let Some((reply, conversation_id)) = instant {
        let body = json!({"conversation_id": conversation_id, "timestamp": 1700000000000i64, "body": reply.text});
        let sent = reqwest::Client::new().post(&reply.url).bearer_auth(&reply.token).json(&body).send().await;
        let code = sent.map_or(0, |r| r.status().as_u16());
        st.log.lock().unwrap().instant_reply_statuses.push(code);
    }
    (status, response)
}

type Recorded = (StatusCode, Json<Value>, Option<(InstantReply, String)>);

/// Check and log one request; for an establish with an instant reply configured, also what
/// to send back and for which conversation.
fn record(st: &DeskState, uri: &axum::http::Uri, headers: &HeaderMap, body: &Bytes) -> Recorded {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    let mut log = st.log.lock().unwrap();
    if let Some(expected) = &log.expect_auth {
        if h("authorization").as_deref() != Some(expected.as_str()) {
            return (StatusCode::UNAUTHORIZED, Json(json!({"code": 401, "message": "bad credentials"})), None);
        }
    }
    if log.fail_next > 0 {
        log.fail_next -= 1;
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"code": 503, "message": "down for maintenance"})), None);
    }
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return (StatusCode::BAD_REQUEST, Json(json!({"code": 400, "message": "not JSON"})), None);
    };
    let webhook_id = h("webhook-id");
    if let Some(id) = &webhook_id {
        if log.webhook_ids.contains(id) {
            log.duplicates += 1;
            return (StatusCode::OK, Json(json!({"code": 200, "message": "duplicate ignored"})), None);
        }
    }
    let mut instant = None;
    if value.get("istest").and_then(Value::as_bool) != Some(true) {
        if uri.path() == "/conversation/establish" {
            let conversation = value["conversation_id"].as_str().unwrap_or_default().to_string();
            instant = log.reply_during_establish.clone().map(|r| (r, conversation));
        }
        if let Some(id) = &webhook_id {
            log.webhook_ids.insert(id.clone());
        }
        log.requests.push(DeskRequest {
            at: std::time::Instant::now(),
            path: uri.path().to_string(),
            body: value,
            webhook_id,
            authorization: h("authorization"),
        });
    }
    let ticket = format!("T-{}", log.requests.len());
    (StatusCode::OK, Json(json!({"code": 200, "message": "success", "ticket_id": ticket})), instant)
}
