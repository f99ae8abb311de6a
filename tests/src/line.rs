//! A fake LINE Messaging API: `POST /v2/bot/message/reply` and `/v2/bot/message/push` with
//! `Authorization: Bearer {token}`. Like LINE it accepts each reply token once, dedupes
//! pushes on `X-Line-Retry-Key` (a repeat of an accepted key answers 409 with
//! `x-line-accepted-request-id` and is not delivered again), refuses a retry key on reply
//! (400), and checks the message limits (1-5 messages, text 1-5000 UTF-16 units, at most 13
//! quick replies, labels ≤ 20 characters, postback data ≤ 300). It records every request and
//! every delivered message in order, and can be told to fail. Also: webhook bodies and their
//! `x-line-signature` for driving the hub's LINE webhook. Content put with
//! [`FakeLine::put_content`] is served at `GET /v2/bot/message/{id}/content` (Bearer token; 404
//! `{"message":"Not found"}` otherwise), as LINE's data host serves it.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use base64::prelude::{Engine as _, BASE64_STANDARD};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const PATH_REPLY: &str = "/v2/bot/message/reply";
pub const PATH_PUSH: &str = "/v2/bot/message/push";

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct LineRequest {
    /// When the fake received it.
    pub at: Instant,
    pub path: String,
    pub body: Value,
    pub retry_key: Option<String>,
    pub authorization: Option<String>,
    /// The HTTP status the fake answered.
    pub status: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveredBy {
    Reply,
    Push,
}

/// One message that reached the user.
#[derive(Debug, Clone)]
pub struct LineMessage {
    pub at: Instant,
    pub by: DeliveredBy,
    /// The push's `to`; for a reply, the user the token was issued for (if it was).
    pub to: Option<String>,
    /// The message object (`{"type":"text","text":...,"quickReply":...}`).
    pub message: Value,
    pub retry_key: Option<String>,
}

#[derive(Default)]
struct LineLog {
    requests: Vec<LineRequest>,
    delivered: Vec<LineMessage>,
    /// Unused reply tokens and the user each was issued for.
    reply_tokens: HashMap<String, Option<String>>,
    /// Accepted retry keys and the request id that was accepted with each.
    accepted_keys: HashMap<String, String>,
    /// Answer the next `fail_count` requests with `fail_status`; when `fail_after_delivery`,
    /// the request is processed (delivered, key accepted) first, as when the answer is lost.
    fail_count: usize,
    fail_status: u16,
    fail_after_delivery: bool,
    /// message id -> (content type, bytes)
    content: HashMap<String, (String, Vec<u8>)>,
}

#[derive(Clone)]
struct LineState {
    token: Arc<str>,
    log: Arc<Mutex<LineLog>>,
}

pub struct FakeLine {
    pub addr: SocketAddr,
    log: Arc<Mutex<LineLog>>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

impl FakeLine {
    /// Start on a free loopback port, accepting `access_token` only.
    pub async fn start(access_token: &str) -> FakeLine {
        let log = Arc::new(Mutex::new(LineLog::default()));
        let state = LineState { token: access_token.into(), log: log.clone() };
        let app = Router::new()
            .route("/v2/bot/message/{id}/content", axum::routing::get(content))
            .fallback(handle)
            .with_state(state);
        let addr = crate::serve_on_loopback(app).await;
        FakeLine { addr, log }
    }

    /// The `api_base` to configure (`line.api_base`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The content of message `message_id` (an image, video, audio or file a user sent).
    pub fn put_content(&self, message_id: &str, content_type: &str, bytes: &[u8]) {
        self.log.lock().unwrap().content.insert(message_id.into(), (content_type.into(), bytes.to_vec()));
    }

    /// A fresh reply token, valid for one reply.
    pub fn issue_reply_token(&self) -> String {
        self.issue(None)
    }

    /// A fresh reply token for `user_id` (delivered replies then name that user in `to`).
    pub fn issue_reply_token_for(&self, user_id: &str) -> String {
        self.issue(Some(user_id.to_string()))
    }

    fn issue(&self, user: Option<String>) -> String {
        let token = format!("{:032x}", u128::from(next_id()) * 0x9e37_79b9_7f4a_7c15);
        self.log.lock().unwrap().reply_tokens.insert(token.clone(), user);
        token
    }

    /// Every request with the right token or not, in arrival order.
    pub fn requests(&self) -> Vec<LineRequest> {
        self.log.lock().unwrap().requests.clone()
    }

    /// Messages delivered so far, in order (a retried push counts once).
    pub fn delivered(&self) -> Vec<LineMessage> {
        self.log.lock().unwrap().delivered.clone()
    }

    /// Wait until at least `n` messages were delivered and return them; panics after
    /// `timeout` listing every request that arrived.
    pub async fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<LineMessage> {
        let start = Instant::now();
        loop {
            let delivered = self.delivered();
            if delivered.len() >= n {
                return delivered;
            }
            if start.elapsed() > timeout {
                let requests: Vec<String> = self
                    .requests()
                    .iter()
                    .map(|r| format!("  {} -> {} (retry key {:?}): {}", r.path, r.status, r.retry_key, r.body))
                    .collect();
                panic!(
                    "timed out after {timeout:?} waiting for {n} delivered LINE messages; {} delivered. Requests:\n{}",
                    delivered.len(),
                    requests.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Answer the next `n` requests with `status` without processing them.
    pub fn fail_next(&self, n: usize, status: u16) {
        self.set_failures(n, status, false);
    }

    /// Process the next `n` requests (deliver, accept the retry key) but answer `status`, as
    /// when LINE's answer is lost: a correct client retries the push and gets 409.
    pub fn fail_next_after_delivery(&self, n: usize, status: u16) {
        self.set_failures(n, status, true);
    }

    fn set_failures(&self, n: usize, status: u16, after_delivery: bool) {
        let mut log = self.log.lock().unwrap();
        log.fail_count = n;
        log.fail_status = status;
        log.fail_after_delivery = after_delivery;
    }
}

fn line_error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"message": message}))).into_response()
}

fn bad_request(message: &str, property: &str) -> Response {
    let body =
        json!({"message": "The request body has 1 error(s)", "details": [{"message": message, "property": property}]});
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

fn failure(status: u16) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let message = match status.as_u16() {
        401 => "Authentication failed. Confirm that the access token in the authorization header is valid.",
        403 => "Access to this API is not available for your account",
        429 => "Too many requests",
        _ => "Internal server error",
    };
    line_error(status, message)
}

async fn handle(State(st): State<LineState>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    let path = uri.path().to_string();
    let authorization = h("authorization");
    let retry_key = h("x-line-retry-key");
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut log = st.log.lock().unwrap();
    let response = answer(&st, &mut log, &path, authorization.as_deref(), retry_key.as_deref(), &body);
    log.requests.push(LineRequest {
        at: Instant::now(),
        path,
        body,
        retry_key,
        authorization,
        status: response.status().as_u16(),
    });
    response
}

fn answer(
    st: &LineState,
    log: &mut LineLog,
    path: &str,
    authorization: Option<&str>,
    retry_key: Option<&str>,
    body: &Value,
) -> Response {
    if path != PATH_REPLY && path != PATH_PUSH {
        return line_error(StatusCode::NOT_FOUND, "Not found");
    }
    if authorization != Some(format!("Bearer {}", st.token).as_str()) {
        return failure(401);
    }
    let fail = (log.fail_count > 0).then(|| {
        log.fail_count -= 1;
        (log.fail_status, log.fail_after_delivery)
    });
    if let Some((status, false)) = fail {
        return failure(status);
    }
    if let Err((problem, property)) = check_messages(body) {
        return bad_request(problem, &property);
    }
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let response =
        if path == PATH_REPLY { reply(log, retry_key, body, messages) } else { push(log, retry_key, body, messages) };
    match fail {
        Some((status, true)) => failure(status),
        _ => response,
    }
}

fn reply(log: &mut LineLog, retry_key: Option<&str>, body: &Value, messages: Vec<Value>) -> Response {
    if retry_key.is_some() {
        return line_error(StatusCode::BAD_REQUEST, "The retry key is not supported for this API");
    }
    let token = body["replyToken"].as_str().unwrap_or_default();
    let Some(user) = log.reply_tokens.remove(token) else {
        return line_error(StatusCode::BAD_REQUEST, "Invalid reply token");
    };
    let sent = deliver(log, DeliveredBy::Reply, user, None, messages);
    (StatusCode::OK, Json(json!({"sentMessages": sent}))).into_response()
}

fn push(log: &mut LineLog, retry_key: Option<&str>, body: &Value, messages: Vec<Value>) -> Response {
    let to = match body["to"].as_str() {
        Some(to) if !to.is_empty() => to.to_string(),
        _ => return bad_request("May not be empty", "to"),
    };
    if let Some(key) = retry_key {
        if !is_uuid(key) {
            return line_error(StatusCode::BAD_REQUEST, "The value for the 'X-Line-Retry-Key' header is invalid");
        }
        if let Some(accepted) = log.accepted_keys.get(key) {
            let mut response = (
                StatusCode::CONFLICT,
                Json(json!({"message": "The retry key is already accepted", "sentMessages": []})),
            )
                .into_response();
            if let Ok(value) = HeaderValue::from_str(accepted) {
                response.headers_mut().insert("x-line-accepted-request-id", value);
            }
            return response;
        }
        log.accepted_keys.insert(key.to_string(), format!("req-{}", next_id()));
    }
    let sent = deliver(log, DeliveredBy::Push, Some(to), retry_key.map(str::to_string), messages);
    (StatusCode::OK, Json(json!({"sentMessages": sent}))).into_response()
}

fn deliver(
    log: &mut LineLog,
    by: DeliveredBy,
    to: Option<String>,
    retry_key: Option<String>,
    messages: Vec<Value>,
) -> Vec<Value> {
    let mut sent = Vec::new();
    for message in messages {
        sent.push(json!({"id": next_id().to_string(), "quoteToken": format!("q{}", next_id())}));
        log.delivered.push(LineMessage {
            at: Instant::now(),
            by,
            to: to.clone(),
            message,
            retry_key: retry_key.clone(),
        });
    }
    sent
}

/// 8-4-4-4-12 hexadecimal digits.
fn is_uuid(key: &str) -> bool {
    let parts: Vec<&str> = key.split('-').collect();
    parts.len() == 5
        && parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// What LINE would refuse in the `messages` of a reply or push: the problem and the property.
fn check_messages(body: &Value) -> Result<(), (&'static str, String)> {
    let Some(messages) = body["messages"].as_array() else {
        return Err(("Must be specified", "messages".into()));
    };
    if messages.is_empty() || messages.len() > 5 {
        return Err(("Size must be between 1 and 5", "messages".into()));
    }
    for (i, m) in messages.iter().enumerate() {
        if m["type"] != "text" {
            continue;
        }
        let units = m["text"].as_str().map(|t| t.encode_utf16().count()).unwrap_or(0);
        if units == 0 || units > 5000 {
            return Err(("Length must be between 1 and 5000", format!("messages[{i}].text")));
        }
        let Some(quick_reply) = m.get("quickReply") else {
            continue;
        };
        let items = quick_reply["items"].as_array().cloned().unwrap_or_default();
        if items.is_empty() || items.len() > 13 {
            return Err(("Size must be between 1 and 13", format!("messages[{i}].quickReply.items")));
        }
        for (j, item) in items.iter().enumerate() {
            let action = &item["action"];
            let at = format!("messages[{i}].quickReply.items[{j}].action");
            let label = action["label"].as_str().unwrap_or_default().chars().count();
            if !(1..=20).contains(&label) {
                return Err(("Length must be between 1 and 20", format!("{at}.label")));
            }
            if action["type"] == "postback" {
                let data = action["data"].as_str().map(|d| d.encode_utf16().count()).unwrap_or(0);
                if !(1..=300).contains(&data) {
                    return Err(("Length must be between 1 and 300", format!("{at}.data")));
                }
            }
        }
    }
    Ok(())
}

/// The `x-line-signature` LINE would send with `body`: Base64(HMAC-SHA256(channel secret, body)).
pub fn sign(channel_secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(channel_secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    BASE64_STANDARD.encode(mac.finalize().into_bytes())
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn user_event(kind: &str, webhook_event_id: &str, user_id: &str, reply_token: Option<&str>) -> Value {
    let mut event = json!({
        "type": kind,
        "mode": "active",
        "timestamp": now_ms(),
        "source": {"type": "user", "userId": user_id},
        "webhookEventId": webhook_event_id,
        "deliveryContext": {"isRedelivery": false},
    });
    if let Some(token) = reply_token {
        event["replyToken"] = json!(token);
    }
    event
}

/// A text message event from a user in a one-on-one chat, timestamped now.
pub fn text_event(webhook_event_id: &str, user_id: &str, text: &str, reply_token: Option<&str>) -> Value {
    let mut event = user_event("message", webhook_event_id, user_id, reply_token);
    event["message"] = json!({"id": next_id().to_string(), "type": "text", "quoteToken": "q", "text": text});
    event
}

/// An image a user sent (kept by LINE under `message_id`), timestamped now.
pub fn image_event(webhook_event_id: &str, user_id: &str, message_id: &str, reply_token: Option<&str>) -> Value {
    let mut event = user_event("message", webhook_event_id, user_id, reply_token);
    event["message"] =
        json!({"id": message_id, "type": "image", "quoteToken": "q", "contentProvider": {"type": "line"}});
    event
}

/// A quick-reply (postback) press from a user in a one-on-one chat, timestamped now.
pub fn postback_event(webhook_event_id: &str, user_id: &str, data: &str, reply_token: Option<&str>) -> Value {
    let mut event = user_event("postback", webhook_event_id, user_id, reply_token);
    event["postback"] = json!({"data": data});
    event
}

/// The webhook body carrying `events` (sign it with [`sign`]).
pub fn webhook_body(events: &[Value]) -> Vec<u8> {
    let body = json!({"destination": "U00000000000000000000000000000000", "events": events});
    serde_json::to_vec(&body).expect("JSON")
}

/// `GET /v2/bot/message/{id}/content` with the access token.
async fn content(
    State(st): State<LineState>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok());
    if authorization != Some(format!("Bearer {}", st.token).as_str()) {
        return (StatusCode::UNAUTHORIZED, Json(json!({"message": "Authentication failed"}))).into_response();
    }
    match st.log.lock().unwrap().content.get(&id) {
        Some((content_type, bytes)) => {
            ([(axum::http::header::CONTENT_TYPE, content_type.clone())], bytes.clone()).into_response()
        }
        None => (StatusCode::NOT_FOUND, Json(json!({"message": "Not found"}))).into_response(),
    }
}
