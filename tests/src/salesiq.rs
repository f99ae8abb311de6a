//! A fake Zoho: the SalesIQ REST API and Zoho Accounts on one loopback port (so a test's
//! `salesiq.server` and `salesiq.accounts_server` are both [`FakeZoho::url`]), plus a webhook
//! signer that builds and signs notifications the way SalesIQ does.
//!
//! Accounts: `POST /oauth/v2/token` checks `grant_type=refresh_token`, the client id and secret
//! and the refresh token against [`CLIENT_ID`], [`CLIENT_SECRET`] and [`REFRESH_TOKEN`], and
//! issues `tok-1`, `tok-2`, ... valid for an hour; refused refreshes are answered HTTP 200
//! `{"error": "invalid_code"}` like Zoho does.
//!
//! SalesIQ: the endpoints the connector uses (visitor open conversation and message, operator
//! message, transfer, close, department and app lookups) require `Authorization:
//! Zoho-oauthtoken <current token>` and the portal [`SCREEN_NAME`]; every request is recorded
//! in arrival order, and conversation and message ids are assigned.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use baton_core::agent::SalesiqConfig;
use baton_core::model::Secret;
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use rsa::signature::{SignatureEncoding, Signer};
use rsa::RsaPrivateKey;
use serde_json::{json, Map, Value};
use sha2::Sha256;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const CLIENT_ID: &str = "1000.FAKECLIENTID0123456789";
pub const CLIENT_SECRET: &str = "fake-client-secret-5f2b9c";
pub const REFRESH_TOKEN: &str = "1000.fake-refresh-token-8d41e7";
pub const SCREEN_NAME: &str = "zylker";
pub const APP_ID: &str = "40526000000002040";
pub const DEPARTMENT_ID: &str = "40526000000002013";
/// The operator the fake's tokens post as.
pub const OPERATOR_ID: &str = "40526000000009001";

/// What a recorded request was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `POST /oauth/v2/token`
    Token,
    /// `POST /api/visitor/v1/{screen}/conversations`
    OpenConversation,
    /// `POST /api/visitor/v1/{screen}/conversations/{id}/messages`
    VisitorMessage,
    /// `POST /api/v2/{screen}/conversations/{id}/messages`
    OperatorMessage,
    /// `PUT /api/v2/{screen}/conversations/{id}/transfer`
    Transfer,
    /// `PUT /api/v2/{screen}/conversations/{id}/close`
    Close,
    /// `GET /api/v2/{screen}/departments/{id}` or `/apps/{id}`
    Lookup,
    Unknown,
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub at: Instant,
    pub kind: Kind,
    pub method: String,
    pub path: String,
    /// The JSON body (the token endpoint's form, as an object); `Null` when there is none.
    pub body: Value,
    pub authorization: Option<String>,
    /// The conversation id in the path, if any.
    pub conversation_id: Option<String>,
    /// What the fake answered.
    pub status: u16,
}

#[derive(Default)]
struct Zoho {
    requests: Vec<Recorded>,
    token_requests: usize,
    /// Tokens `tok-1..=issued` were issued; those below `valid_from` are expired.
    issued: u64,
    valid_from: u64,
    revoked: bool,
    refresh_delay: Duration,
    /// Answer this many API requests with this status.
    fail_next: usize,
    fail_status: u16,
    omit_message_ids: bool,
    /// Answer 401 to every token (a grant without the needed scopes).
    reject_tokens: bool,
    next_id: u64,
    closed: BTreeSet<String>,
}

type Shared = Arc<Mutex<Zoho>>;

pub struct FakeZoho {
    pub addr: SocketAddr,
    state: Shared,
}

impl FakeZoho {
    /// Start on a free loopback port.
    pub async fn start() -> FakeZoho {
        let state: Shared = Arc::new(Mutex::new(Zoho { valid_from: 1, next_id: 1, ..Zoho::default() }));
        let app = Router::new().fallback(handle).with_state(state.clone());
        let addr = crate::serve_on_loopback(app).await;
        FakeZoho { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A `[salesiq]` section pointing both servers at the fake, with its credentials.
    pub fn config(&self) -> SalesiqConfig {
        SalesiqConfig {
            server: self.url(),
            accounts_server: format!("{}/", self.url()),
            screen_name: SCREEN_NAME.into(),
            app_id: APP_ID.into(),
            client_id: CLIENT_ID.into(),
            client_secret: Secret(CLIENT_SECRET.into()),
            refresh_token: Secret(REFRESH_TOKEN.into()),
            webhook_public_keys: Vec::new(),
            bot_operator_id: None,
            answer_visitors: true,
        }
    }

    /// Every request, token requests included, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn requests_of(&self, kind: Kind) -> Vec<Recorded> {
        self.requests().into_iter().filter(|r| r.kind == kind).collect()
    }

    /// How many refreshes were asked for (granted or not).
    pub fn token_requests(&self) -> usize {
        self.state.lock().unwrap().token_requests
    }

    /// Refuse every refresh from now on (`{"error":"invalid_code"}`).
    pub fn revoke_refresh_token(&self) {
        self.state.lock().unwrap().revoked = true;
    }

    /// Every access token issued so far is answered 401 from now on.
    pub fn expire_access_tokens(&self) {
        let mut st = self.state.lock().unwrap();
        st.valid_from = st.issued + 1;
    }

    /// Answer 401 to every token, even new ones (as SalesIQ does for a grant without the
    /// needed scopes).
    pub fn reject_all_tokens(&self) {
        self.state.lock().unwrap().reject_tokens = true;
    }

    /// Answer refreshes only after `delay` (to make concurrent callers overlap).
    pub fn set_refresh_delay(&self, delay: Duration) {
        self.state.lock().unwrap().refresh_delay = delay;
    }

    /// Answer the next `n` SalesIQ API requests with `status` (503: a desk outage; 429 and 503
    /// carry `Retry-After: 2`).
    pub fn fail_next(&self, n: usize, status: u16) {
        let mut st = self.state.lock().unwrap();
        st.fail_next = n;
        st.fail_status = status;
    }

    /// Answer posted messages without their id (the docs do not promise one).
    pub fn omit_message_ids(&self) {
        self.state.lock().unwrap().omit_message_ids = true;
    }

    pub fn is_closed(&self, conversation_id: &str) -> bool {
        self.state.lock().unwrap().closed.contains(conversation_id)
    }

    /// The first `n` requests of `kind`, waiting up to `timeout`; panics with what did arrive.
    pub async fn wait_for(&self, kind: Kind, n: usize, timeout: Duration) -> Vec<Recorded> {
        self.wait_until(&format!("{n} request(s) of kind {kind:?}"), n, timeout, |r| r.kind == kind).await
    }

    /// The first `n` requests whose path ends with `suffix`, waiting up to `timeout`.
    pub async fn wait_for_path(&self, suffix: &str, n: usize, timeout: Duration) -> Vec<Recorded> {
        self.wait_until(&format!("{n} request(s) to *{suffix}"), n, timeout, |r| r.path.ends_with(suffix)).await
    }

    async fn wait_until(
        &self,
        what: &str,
        n: usize,
        timeout: Duration,
        matches: impl Fn(&Recorded) -> bool,
    ) -> Vec<Recorded> {
        let start = Instant::now();
        loop {
            let found: Vec<Recorded> = self.requests().into_iter().filter(|r| matches(r)).collect();
            if found.len() >= n {
                return found.into_iter().take(n).collect();
            }
            if start.elapsed() > timeout {
                let arrived: Vec<String> =
                    self.requests().iter().map(|r| format!("{} {} -> {}", r.method, r.path, r.status)).collect();
                panic!("timed out after {timeout:?} waiting for {what}; arrived:\n  {}", arrived.join("\n  "));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn json_response(status: u16, body: Value) -> Response {
    let mut resp =
        (StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), Json(body)).into_response();
    if status == 429 || status == 503 {
        resp.headers_mut().insert("retry-after", HeaderValue::from_static("2"));
    }
    resp
}

/// `application/x-www-form-urlencoded` pairs.
fn form_pairs(s: &str) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                        Ok(b) => {
                            out.push(b);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn token_number(authorization: Option<&str>) -> Option<u64> {
    authorization?.strip_prefix("Zoho-oauthtoken tok-")?.parse().ok()
}

async fn handle(State(st): State<Shared>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().to_string();
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
    if method == Method::POST && path == "/oauth/v2/token" {
        return token(st, uri.query().unwrap_or(""), &body, authorization).await;
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (kind, screen, conversation_id) = match (method.as_str(), parts.as_slice()) {
        ("POST", ["api", "visitor", "v1", s, "conversations"]) => (Kind::OpenConversation, *s, None),
        ("POST", ["api", "visitor", "v1", s, "conversations", id, "messages"]) => (Kind::VisitorMessage, *s, Some(*id)),
        ("POST", ["api", "v2", s, "conversations", id, "messages"]) => (Kind::OperatorMessage, *s, Some(*id)),
        ("PUT", ["api", "v2", s, "conversations", id, "transfer"]) => (Kind::Transfer, *s, Some(*id)),
        ("PUT", ["api", "v2", s, "conversations", id, "close"]) => (Kind::Close, *s, Some(*id)),
        ("GET", ["api", "v2", s, "departments" | "apps", _]) => (Kind::Lookup, *s, None),
        _ => (Kind::Unknown, "", None),
    };
    let value: Value = if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).unwrap_or(Value::Null) };
    let mut z = st.lock().unwrap();
    let (status, answer) = api_answer(&mut z, kind, screen, conversation_id, &value, authorization.as_deref(), &body);
    z.requests.push(Recorded {
        at: Instant::now(),
        kind,
        method: method.to_string(),
        path: path.clone(),
        body: value,
        authorization,
        conversation_id: conversation_id.map(str::to_string),
        status,
    });
    json_response(status, answer)
}

fn api_answer(
    z: &mut Zoho,
    kind: Kind,
    screen: &str,
    conversation_id: Option<&str>,
    body: &Value,
    authorization: Option<&str>,
    raw: &[u8],
) -> (u16, Value) {
    if kind == Kind::Unknown {
        return (404, json!({"error": {"code": 1006, "message": "Invalid URL"}}));
    }
    match token_number(authorization) {
        Some(n) if n >= z.valid_from && n <= z.issued && !z.reject_tokens => {}
        Some(_) => return (401, json!({"error": {"code": 1008, "message": "Invalid OAuth token"}})),
        None => return (401, json!({"error": {"code": 1002, "message": "Invalid authorization header."}})),
    }
    if z.fail_next > 0 {
        z.fail_next -= 1;
        return (z.fail_status, json!({"error": {"code": 500, "message": "Service temporarily unavailable"}}));
    }
    // SalesIQ answers portal and payload errors with HTTP 200 and an error object.
    if screen != SCREEN_NAME {
        return (200, json!({"error": {"code": 1005, "message": "Invalid portal or wrong screen name."}}));
    }
    let needs_body =
        matches!(kind, Kind::OpenConversation | Kind::VisitorMessage | Kind::OperatorMessage | Kind::Transfer);
    if needs_body && !body.is_object() {
        return (400, json!({"error": {"code": 1009, "message": format!("Invalid JSON body ({} bytes)", raw.len())}}));
    }
    let field = |k: &str| body.get(k).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty());
    let id = z.next_id;
    z.next_id += 1;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis().to_string();
    match kind {
        Kind::OpenConversation => {
            for k in ["app_id", "department_id", "question"] {
                if field(k).is_none() {
                    return (400, json!({"error": {"code": 1018, "message": format!("{k} is mandatory")}}));
                }
            }
            if body.pointer("/visitor/user_id").and_then(Value::as_str).is_none_or(|s| s.is_empty()) {
                return (400, json!({"error": {"code": 1018, "message": "visitor.user_id is mandatory"}}));
            }
            let conv = format!("405260000001{id:05}");
            (
                200,
                json!({
                    "url": format!("/api/visitor/v1/{SCREEN_NAME}/conversations"),
                    "object": "conversations",
                    "data": {
                        "id": conv,
                        "visitor_conversation_id": format!("vc{id:08x}"),
                        "question": field("question"),
                        "department": {"id": field("department_id")},
                        "app_id": field("app_id"),
                        "start_time": now,
                        "chat_status": {"status_code": 1, "state": 1, "label": "Waiting"},
                    }
                }),
            )
        }
        Kind::VisitorMessage | Kind::OperatorMessage => {
            let conv = conversation_id.unwrap_or_default();
            if z.closed.contains(conv) {
                return (400, json!({"error": {"code": 1403, "message": "The conversation has already ended."}}));
            }
            if field("text").is_none() {
                return (400, json!({"error": {"code": 1018, "message": "text is mandatory"}}));
            }
            let sender = if kind == Kind::OperatorMessage {
                json!({"id": OPERATOR_ID, "name": "Baton", "type": "operator"})
            } else {
                json!({"type": "visitor"})
            };
            let mut data = json!({"text": field("text"), "sender": sender, "time": now});
            if !z.omit_message_ids {
                data["id"] = json!(format!("msg-{id}"));
            }
            (200, json!({"url": "", "object": "message", "data": data}))
        }
        Kind::Transfer => {
            if field("department_id").is_none() {
                return (400, json!({"error": {"code": 1018, "message": "department_id is mandatory"}}));
            }
            (
                200,
                json!({"object": "conversations", "data": {"id": conversation_id, "department": {"id": field("department_id")}}}),
            )
        }
        Kind::Close => {
            let conv = conversation_id.unwrap_or_default().to_string();
            z.closed.insert(conv.clone());
            (200, json!({"object": "conversations", "data": {"id": conv, "end_time": now, "status": "Closed"}}))
        }
        Kind::Lookup => (200, json!({"object": "department", "data": {"id": DEPARTMENT_ID, "name": "Support"}})),
        Kind::Token | Kind::Unknown => unreachable!(),
    }
}

async fn token(st: Shared, query: &str, body: &[u8], authorization: Option<String>) -> Response {
    let mut pairs = form_pairs(query);
    pairs.extend(form_pairs(&String::from_utf8_lossy(body)));
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let delay = {
        let mut z = st.lock().unwrap();
        z.token_requests += 1;
        z.refresh_delay
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut z = st.lock().unwrap();
    let answer = if get("grant_type") != Some("refresh_token") {
        json!({"error": "unsupported_grant_type"})
    } else if get("client_id") != Some(CLIENT_ID) || get("client_secret") != Some(CLIENT_SECRET) {
        json!({"error": "invalid_client"})
    } else if z.revoked || get("refresh_token") != Some(REFRESH_TOKEN) {
        json!({"error": "invalid_code"})
    } else {
        z.issued += 1;
        json!({
            "access_token": format!("tok-{}", z.issued),
            "expires_in": 3600,
            "api_domain": "https://www.zohoapis.com",
            "token_type": "Bearer",
        })
    };
    let form: Map<String, Value> = pairs.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    z.requests.push(Recorded {
        at: Instant::now(),
        kind: Kind::Token,
        method: "POST".into(),
        path: "/oauth/v2/token".into(),
        body: Value::Object(form),
        authorization,
        conversation_id: None,
        status: 200,
    });
    // Zoho Accounts answers refused refreshes with HTTP 200 too.
    json_response(200, answer)
}

// -------------------------------------------------------------------------------------------
// Webhooks

/// Signs webhook bodies like SalesIQ's "Secure your webhook": RSA PKCS#1 v1.5 / SHA-256,
/// Base64. Keys are 1024 bits (fast to generate in debug builds; SalesIQ's are larger).
pub struct WebhookSigner {
    key: RsaPrivateKey,
}

impl Default for WebhookSigner {
    fn default() -> Self {
        WebhookSigner::new()
    }
}

impl WebhookSigner {
    pub fn new() -> Self {
        WebhookSigner { key: RsaPrivateKey::new(&mut rand::thread_rng(), 1024).expect("RSA key generation") }
    }

    /// `-----BEGIN PUBLIC KEY-----` (X.509 SubjectPublicKeyInfo), as SalesIQ hands it out.
    pub fn public_key_pem(&self) -> String {
        self.key.to_public_key().to_public_key_pem(LineEnding::LF).expect("PEM")
    }

    /// The same key as bare Base64 DER.
    pub fn public_key_der_base64(&self) -> String {
        STANDARD.encode(self.key.to_public_key().to_public_key_der().expect("DER").as_bytes())
    }

    /// The `x-siqsignature` value for `body`.
    pub fn sign(&self, body: &[u8]) -> String {
        STANDARD.encode(SigningKey::<Sha256>::new(self.key.clone()).sign(body).to_bytes())
    }
}

fn envelope(event: &str, conversation_id: &str, entity: Value) -> Value {
    json!({
        "entity_type": "conversation",
        "event": event,
        "org_id": "55778119",
        "entity_id": conversation_id,
        "app_id": APP_ID,
        "attempt": 1,
        "version": "1",
        "event_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis().to_string(),
        "webhook": {"id": "40526000000123001"},
        "entity": entity,
    })
}

fn visitor(email: Option<&str>) -> Value {
    json!({
        "id": "40526000000090034",
        "name": "Tricia",
        "email_id": email,
        "channel": "website",
        "type": if email.is_some() { "contact" } else { "lead" },
    })
}

/// `conversation.created`: a visitor started a chat with `question`.
pub fn created(conversation_id: &str, question: &str, email: Option<&str>) -> Vec<u8> {
    let entity = json!({
        "id": conversation_id,
        "visitor_conversation_id": format!("vc-{conversation_id}"),
        "reference_id": "151",
        "opened_time": "1556866331533",
        "app_id": APP_ID,
        "department_id": DEPARTMENT_ID,
        "question": question,
        "visitor": visitor(email),
        "status": "Waiting",
    });
    envelope("conversation.created", conversation_id, entity).to_string().into_bytes()
}

fn replied(event: &str, conversation_id: &str, msgid: &str, sender: Value, text: &str) -> Vec<u8> {
    let entity = json!({
        "id": conversation_id,
        "visitor_conversation_id": format!("vc-{conversation_id}"),
        "message": {"msgid": msgid, "text": text, "sender": sender, "meta": {}},
        "visitor": visitor(Some("tricia@zylker.com")),
    });
    envelope(event, conversation_id, entity).to_string().into_bytes()
}

/// `conversation.visitor.replied`.
pub fn visitor_replied(conversation_id: &str, msgid: &str, text: &str) -> Vec<u8> {
    let sender = json!({"id": "40526000000090034", "name": "Tricia", "type": "visitor"});
    replied("conversation.visitor.replied", conversation_id, msgid, sender, text)
}

/// `conversation.operator.replied` by operator `sender_id`.
pub fn operator_replied(conversation_id: &str, msgid: &str, sender_id: &str, text: &str) -> Vec<u8> {
    let sender = json!({"id": sender_id, "name": "Patricia", "type": "operator"});
    replied("conversation.operator.replied", conversation_id, msgid, sender, text)
}

/// `conversation.completed`.
pub fn completed(conversation_id: &str) -> Vec<u8> {
    let entity = json!({
        "id": conversation_id,
        "visitor_conversation_id": format!("vc-{conversation_id}"),
        "end_time": "1556866331929",
        "ended_by": "operator",
        "department_id": DEPARTMENT_ID,
        "owner": {"id": OPERATOR_ID, "name": "Patricia", "email_id": "patricia@zylker.com"},
        "visitor": visitor(Some("tricia@zylker.com")),
        "status": "Closed",
    });
    envelope("conversation.completed", conversation_id, entity).to_string().into_bytes()
}

/// `body` delivered again: the same notification with another `attempt` (and event time).
pub fn redelivered(body: &[u8], attempt: u32) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(body).expect("a webhook body");
    v["attempt"] = json!(attempt);
    v["event_time"] = json!(format!("{}", 1_700_000_000_000u64 + attempt as u64));
    v.to_string().into_bytes()
}
