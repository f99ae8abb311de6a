//! A fake Intercom REST API on a loopback port, plus a webhook signer and builders for
//! notification bodies shaped like Intercom's.
//!
//! REST: the endpoints the connector uses (`GET /me`, `GET /admins/{id}`, contact search,
//! create and unarchive, conversation create, get, reply and parts) require `Authorization:
//! Bearer <token>` (anything else: 401 `unauthorized`, like Intercom) and an `Intercom-Version`
//! header (the real API falls back to the app's version; the fake refuses, so tests see that
//! it is sent). Errors are Intercom's `error.list`. Every request is recorded in arrival order
//! with the headers of interest and the status answered. Like Intercom, a contact created
//! while [`FakeIntercom::search_lags`] is on is not found by search (a duplicate create is
//! answered 409 naming the existing id), and `POST /conversations` answers a Message object,
//! not the conversation.
//!
//! Webhooks: [`sign`] computes `X-Hub-Signature`; [`user_replied`], [`user_created`],
//! [`admin_replied`], [`admin_noted`], [`bot_replied`], [`admin_closed`], [`admin_assigned`]
//! and [`ping`] build notification bodies (each with a new `notif_...` id), [`redelivered`]
//! the same notification delivered again.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use baton_core::agent::IntercomConfig;
use baton_core::model::Secret;
use hmac::{Hmac, Mac};
use rand::Rng;
use serde_json::{json, Value};
use sha1::Sha1;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The version [`FakeIntercom::config`] pins.
pub const API_VERSION: &str = "2.11";
/// The app's client secret (the webhook signing key) in [`FakeIntercom::config`].
pub const CLIENT_SECRET: &str = "fake-intercom-client-secret-3e9d41";
pub const APP_ID: &str = "ecahpwf5";
/// The teammate the hub writes as (`bot_admin_id`); also the token's admin (`GET /me`).
pub const BOT_ADMIN_ID: &str = "814860";
/// A human teammate.
pub const HUMAN_ADMIN_ID: &str = "991267";
/// Fin, as it appears in `author` of bot parts.
pub const FIN_BOT_ID: &str = "6827949";
/// The support team.
pub const TEAM_ID: &str = "5017691";
/// The e-mail address webhook builders give the user unless told otherwise.
pub const USER_EMAIL: &str = "ann@example.com";

/// What a recorded request was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `GET /me`
    Me,
    /// `GET /admins/{id}`
    Admin,
    /// `POST /contacts/search`
    SearchContacts,
    /// `POST /contacts`
    CreateContact,
    /// `POST /contacts/{id}/unarchive`
    UnarchiveContact,
    /// `POST /conversations`
    CreateConversation,
    /// `GET /conversations/{id}`
    GetConversation,
    /// `POST /conversations/{id}/reply` with `type: "user"`
    UserReply,
    /// `POST /conversations/{id}/reply` with `type: "admin"`, `message_type: "comment"`
    AdminReply,
    /// `POST /conversations/{id}/reply` with `type: "admin"`, `message_type: "note"`
    Note,
    /// `POST /conversations/{id}/parts` with `message_type: "assignment"`
    Assign,
    /// `POST /conversations/{id}/parts` with `message_type: "close"`
    Close,
    /// Other `/parts` (open, snoozed) or replies of another type.
    OtherPart,
    Unknown,
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub at: Instant,
    pub kind: Kind,
    pub method: String,
    pub path: String,
    /// The JSON body; `Null` when there is none.
    pub body: Value,
    pub authorization: Option<String>,
    pub intercom_version: Option<String>,
    pub accept: Option<String>,
    pub content_type: Option<String>,
    /// The conversation id in the path, if any.
    pub conversation_id: Option<String>,
    /// What the fake answered.
    pub status: u16,
}

impl Recorded {
    /// A string field of the body.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.body.get(name).and_then(Value::as_str)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct FakeContact {
    pub id: String,
    pub role: String,
    pub email: Option<String>,
    pub external_id: Option<String>,
    /// Found by search (false while search lags behind its creation).
    pub searchable: bool,
    pub archived: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FakeConversation {
    pub id: String,
    pub contact_id: String,
    /// `open` or `closed`.
    pub state: String,
    pub admin_assignee_id: Option<String>,
    pub team_assignee_id: Option<String>,
    /// The first message.
    pub source_body: String,
    /// `{part_type, author:{type,id}, body}` of every part after the first message.
    pub parts: Vec<Value>,
}

#[derive(Default)]
struct Intercom {
    requests: Vec<Recorded>,
    contacts: Vec<FakeContact>,
    conversations: BTreeMap<String, FakeConversation>,
    search_lags: bool,
    fail_next: usize,
    fail_status: u16,
    next_id: u64,
}

impl Intercom {
    fn next(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

type Shared = Arc<Mutex<Intercom>>;

pub struct FakeIntercom {
    pub addr: SocketAddr,
    token: String,
    state: Shared,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl FakeIntercom {
    /// Start on a free loopback port, accepting `access_token` only.
    pub async fn start(access_token: &str) -> FakeIntercom {
        let state: Shared = Arc::new(Mutex::new(Intercom::default()));
        let token = access_token.to_string();
        let app = Router::new().fallback(handle).with_state((state.clone(), Arc::new(token.clone())));
        let addr = crate::serve_on_loopback(app).await;
        FakeIntercom { addr, token, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// An `[intercom]` section pointing at the fake (with a trailing `/`, as people paste it).
    pub fn config(&self) -> IntercomConfig {
        IntercomConfig {
            api_base: format!("{}/", self.url()),
            access_token: Secret(self.token.clone()),
            client_secret: Secret(CLIENT_SECRET.into()),
            api_version: API_VERSION.into(),
            bot_admin_id: BOT_ADMIN_ID.into(),
            answer_users: true,
        }
    }

    /// Every request, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn requests_of(&self, kind: Kind) -> Vec<Recorded> {
        self.requests().into_iter().filter(|r| r.kind == kind).collect()
    }

    /// While on, contacts created are not found by search (Intercom indexes them minutes
    /// later); turning it off makes every contact searchable.
    pub fn search_lags(&self, on: bool) {
        let mut st = self.state.lock().unwrap();
        st.search_lags = on;
        if !on {
            st.contacts.iter_mut().for_each(|c| c.searchable = true);
        }
    }

    /// Answer the next `n` authenticated requests with `status` (429 carries
    /// `X-RateLimit-Reset` one second ahead, like Intercom's 10-second windows do).
    pub fn fail_next(&self, n: usize, status: u16) {
        let mut st = self.state.lock().unwrap();
        st.fail_next = n;
        st.fail_status = status;
    }

    /// A contact that already exists (and is searchable); returns its id.
    pub fn seed_contact(&self, role: &str, email: &str) -> String {
        let mut st = self.state.lock().unwrap();
        let id = format!("6762f0{:018x}", st.next());
        st.contacts.push(FakeContact {
            id: id.clone(),
            role: role.into(),
            email: Some(email.into()),
            external_id: None,
            searchable: true,
            archived: false,
        });
        id
    }

    pub fn archive_contact(&self, contact_id: &str) {
        let mut st = self.state.lock().unwrap();
        st.contacts.iter_mut().filter(|c| c.id == contact_id).for_each(|c| c.archived = true);
    }

    /// Forget a contact (as after a merge or deletion): conversations from it are refused.
    pub fn delete_contact(&self, contact_id: &str) {
        self.state.lock().unwrap().contacts.retain(|c| c.id != contact_id);
    }

    pub fn contacts(&self) -> Vec<FakeContact> {
        self.state.lock().unwrap().contacts.clone()
    }

    /// A conversation a user started in Messenger; returns its id.
    pub fn messenger_conversation(&self, contact_id: &str, text: &str) -> String {
        let mut st = self.state.lock().unwrap();
        let id = format!("{}", 215_474_343_849_000u64 + st.next());
        st.conversations.insert(
            id.clone(),
            FakeConversation {
                id: id.clone(),
                contact_id: contact_id.into(),
                state: "open".into(),
                admin_assignee_id: None,
                team_assignee_id: None,
                source_body: text.into(),
                parts: Vec::new(),
            },
        );
        id
    }

    /// Set who holds the admin assignment (e.g. the bot teammate after it answered).
    pub fn set_admin_assignee(&self, conversation_id: &str, admin_id: Option<&str>) {
        let mut st = self.state.lock().unwrap();
        if let Some(c) = st.conversations.get_mut(conversation_id) {
            c.admin_assignee_id = admin_id.map(str::to_string);
        }
    }

    pub fn conversation(&self, conversation_id: &str) -> Option<FakeConversation> {
        self.state.lock().unwrap().conversations.get(conversation_id).cloned()
    }

    pub fn conversations(&self) -> Vec<FakeConversation> {
        self.state.lock().unwrap().conversations.values().cloned().collect()
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
                let arrived: Vec<String> = self
                    .requests()
                    .iter()
                    .map(|r| format!("{} {} ({:?}) -> {}", r.method, r.path, r.kind, r.status))
                    .collect();
                panic!("timed out after {timeout:?} waiting for {what}; arrived:\n  {}", arrived.join("\n  "));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn error_list(code: &str, message: &str) -> Value {
    let request_id = format!("{:032x}", rand::thread_rng().gen::<u128>());
    json!({"type": "error.list", "request_id": request_id, "errors": [{"code": code, "message": message}]})
}

fn respond(status: u16, body: Value) -> Response {
    let mut resp =
        (StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), Json(body)).into_response();
    let headers = resp.headers_mut();
    headers.insert("x-ratelimit-limit", HeaderValue::from_static("167"));
    let reset = HeaderValue::from_str(&(now_secs() + 1).to_string()).expect("header");
    headers.insert("x-ratelimit-reset", reset);
    let remaining = if status == 429 { "0" } else { "166" };
    headers.insert("x-ratelimit-remaining", HeaderValue::from_static(remaining));
    resp
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

fn kind_of(method: &Method, parts: &[&str], body: &Value) -> (Kind, Option<String>) {
    let text = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or("");
    match (method.as_str(), parts) {
        ("GET", ["me"]) => (Kind::Me, None),
        ("GET", ["admins", _]) => (Kind::Admin, None),
        ("POST", ["contacts", "search"]) => (Kind::SearchContacts, None),
        ("POST", ["contacts"]) => (Kind::CreateContact, None),
        ("POST", ["contacts", _, "unarchive"]) => (Kind::UnarchiveContact, None),
        ("POST", ["conversations"]) => (Kind::CreateConversation, None),
        ("GET", ["conversations", id]) => (Kind::GetConversation, Some(id.to_string())),
        ("POST", ["conversations", id, "reply"]) => {
            let kind = match (text("type"), text("message_type")) {
                ("user", _) => Kind::UserReply,
                ("admin", "comment") => Kind::AdminReply,
                ("admin", "note") => Kind::Note,
                _ => Kind::OtherPart,
            };
            (kind, Some(id.to_string()))
        }
        ("POST", ["conversations", id, "parts"]) => {
            let kind = match text("message_type") {
                "assignment" => Kind::Assign,
                "close" => Kind::Close,
                _ => Kind::OtherPart,
            };
            (kind, Some(id.to_string()))
        }
        _ => (Kind::Unknown, None),
    }
}

async fn handle(
    State((st, token)): State<(Shared, Arc<String>)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let value: Value = if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).unwrap_or(Value::Null) };
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (kind, conversation_id) = kind_of(&method, &segments, &value);
    let authorization = header(&headers, "authorization");
    let intercom_version = header(&headers, "intercom-version");
    let mut z = st.lock().unwrap();
    let (status, answer) = if kind == Kind::Unknown {
        (404, error_list("not_found", "Resource Not Found"))
    } else if authorization.as_deref() != Some(&format!("Bearer {token}")) {
        (401, error_list("unauthorized", "Access Token Invalid"))
    } else if intercom_version.as_deref().is_none_or(|v| v.trim().is_empty()) {
        (400, error_list("intercom_version_invalid", "Intercom-Version header is required by this fake"))
    } else if z.fail_next > 0 {
        z.fail_next -= 1;
        match z.fail_status {
            429 => (429, error_list("rate_limit_exceeded", "Exceeded rate limit of 167 in 10_seconds")),
            503 => (503, error_list("service_unavailable", "Sorry, the API service is temporarily unavailable")),
            s => (s, error_list("server_error", "Something went wrong")),
        }
    } else if !body.is_empty() && !value.is_object() {
        (400, error_list("parameter_invalid", "The request body is not valid JSON"))
    } else {
        answer(&mut z, kind, &segments, conversation_id.as_deref(), &value)
    };
    z.requests.push(Recorded {
        at: Instant::now(),
        kind,
        method: method.to_string(),
        path: path.clone(),
        body: value,
        authorization,
        intercom_version,
        accept: header(&headers, "accept"),
        content_type: header(&headers, "content-type"),
        conversation_id,
        status,
    });
    respond(status, answer)
}

fn admin_json(id: &str) -> Option<Value> {
    let (name, email) = match id {
        BOT_ADMIN_ID => ("Assistant", "assistant@example.com"),
        HUMAN_ADMIN_ID => ("Patricia", "patricia@example.com"),
        _ => return None,
    };
    Some(json!({
        "type": "admin", "id": id, "name": name, "email": email, "job_title": "", "away_mode_enabled": false,
        "away_mode_reassign": false, "has_inbox_seat": true, "team_ids": [TEAM_ID.parse::<u64>().unwrap_or(0)],
    }))
}

fn contact_json(c: &FakeContact) -> Value {
    json!({
        "type": "contact", "id": c.id, "workspace_id": APP_ID, "external_id": c.external_id, "role": c.role,
        "email": c.email, "name": null, "created_at": now_secs(), "archived": c.archived,
    })
}

fn conversation_json(c: &FakeConversation, contacts: &[FakeContact]) -> Value {
    let external_id = contacts.iter().find(|x| x.id == c.contact_id).and_then(|x| x.external_id.clone());
    let parts: Vec<Value> = c
        .parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut p = p.clone();
            p["type"] = json!("conversation_part");
            p["id"] = json!(format!("{}", 45_763_812_000u64 + i as u64));
            p
        })
        .collect();
    json!({
        "type": "conversation",
        "id": c.id,
        "created_at": now_secs(),
        "updated_at": now_secs(),
        "source": {"type": "conversation", "id": format!("src-{}", c.id), "delivered_as": "customer_initiated",
            "body": c.source_body, "author": {"type": "user", "id": c.contact_id}, "attachments": [], "redacted": false},
        "contacts": {"type": "contact.list", "contacts": [{"type": "contact", "id": c.contact_id, "external_id": external_id}]},
        "admin_assignee_id": c.admin_assignee_id.as_deref().and_then(|a| a.parse::<u64>().ok()),
        "team_assignee_id": c.team_assignee_id,
        "open": c.state == "open",
        "state": c.state,
        "conversation_parts": {"type": "conversation_part.list", "total_count": parts.len(), "conversation_parts": parts},
    })
}

/// Whether `contact` matches one search filter (`=` / `!=` / `~`, or `AND` / `OR` groups).
fn matches_query(contact: &FakeContact, query: &Value) -> bool {
    let op = query.get("operator").and_then(Value::as_str).unwrap_or("");
    if let Some(group) = query.get("value").and_then(Value::as_array) {
        return match op {
            "AND" => group.iter().all(|q| matches_query(contact, q)),
            "OR" => group.iter().any(|q| matches_query(contact, q)),
            _ => false,
        };
    }
    let wanted = query.get("value").and_then(Value::as_str).unwrap_or("").to_lowercase();
    let actual = match query.get("field").and_then(Value::as_str) {
        Some("email") => contact.email.clone(),
        Some("external_id") => contact.external_id.clone(),
        Some("id") => Some(contact.id.clone()),
        Some("role") => Some(contact.role.clone()),
        _ => None,
    }
    .unwrap_or_default()
    .to_lowercase();
    match op {
        "=" => actual == wanted,
        "!=" => actual != wanted,
        "~" => actual.contains(&wanted),
        _ => false,
    }
}

fn answer(
    z: &mut Intercom,
    kind: Kind,
    segments: &[&str],
    conversation_id: Option<&str>,
    body: &Value,
) -> (u16, Value) {
    let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty());
    match kind {
        Kind::Me => {
            let mut me = admin_json(BOT_ADMIN_ID).expect("bot admin");
            me["app"] = json!({"type": "app", "id_code": APP_ID, "name": "Shop", "region": "US"});
            (200, me)
        }
        Kind::Admin => match admin_json(segments[1]) {
            Some(admin) => (200, admin),
            None => (404, error_list("admin_not_found", "Admin not found")),
        },
        Kind::SearchContacts => {
            let Some(query) = body.get("query").filter(|q| q.is_object()) else {
                return (400, error_list("parameter_not_found", "query is required"));
            };
            let per_page = body.pointer("/pagination/per_page").and_then(Value::as_u64).unwrap_or(50) as usize;
            let found: Vec<Value> = z
                .contacts
                .iter()
                .filter(|c| c.searchable && !c.archived && matches_query(c, query))
                .map(contact_json)
                .collect();
            let total = found.len();
            let page: Vec<Value> = found.into_iter().take(per_page.max(1)).collect();
            (
                200,
                json!({"type": "list", "data": page, "total_count": total,
                    "pages": {"type": "pages", "page": 1, "per_page": per_page, "total_pages": total.div_ceil(per_page.max(1)).max(1)}}),
            )
        }
        Kind::CreateContact => {
            let role = text("role").unwrap_or("");
            if role != "user" && role != "lead" {
                return (400, error_list("parameter_invalid", "role must be user or lead"));
            }
            let (email, external_id) = (text("email").map(str::to_string), text("external_id").map(str::to_string));
            if role == "user" && email.is_none() && external_id.is_none() {
                return (400, error_list("parameter_not_found", "An email or external_id is required for a user"));
            }
            let same = |c: &&FakeContact| {
                c.role == "user"
                    && role == "user"
                    && ((email.is_some()
                        && c.email.as_deref().map(str::to_lowercase) == email.as_deref().map(str::to_lowercase))
                        || (external_id.is_some() && c.external_id == external_id))
            };
            if let Some(existing) = z.contacts.iter().find(same) {
                let article = if existing.archived { "An archived contact" } else { "A contact" };
                let message = format!("{article} matching those details already exists with id={}", existing.id);
                return (409, error_list("conflict", &message));
            }
            let id = format!("6762f0{:018x}", z.next());
            let contact =
                FakeContact { id, role: role.into(), email, external_id, searchable: !z.search_lags, archived: false };
            let answer = contact_json(&contact);
            z.contacts.push(contact);
            (200, answer)
        }
        Kind::UnarchiveContact => match z.contacts.iter_mut().find(|c| c.id == segments[1]) {
            Some(c) => {
                c.archived = false;
                (200, json!({"type": "contact", "id": c.id, "external_id": c.external_id, "archived": false}))
            }
            None => (404, error_list("not_found", "Contact Not Found")),
        },
        Kind::CreateConversation => {
            let from_type = body.pointer("/from/type").and_then(Value::as_str).unwrap_or("");
            let from_id = body.pointer("/from/id").and_then(Value::as_str).unwrap_or("");
            if !matches!(from_type, "user" | "lead" | "contact") {
                return (400, error_list("parameter_invalid", "from.type must be user, lead or contact"));
            }
            let Some(contact) = z.contacts.iter().find(|c| c.id == from_id && !c.archived) else {
                return (404, error_list("not_found", "User Not Found"));
            };
            if from_type != "contact" && contact.role != from_type {
                return (400, error_list("parameter_invalid", "from.type does not match the contact's role"));
            }
            let Some(text) = text("body").map(str::to_string) else {
                return (400, error_list("parameter_not_found", "Body is required"));
            };
            let contact_id = contact.id.clone();
            let id = format!("{}", 36_000_324_000u64 + z.next());
            let message_id = format!("{}", 2_000 + z.next());
            z.conversations.insert(
                id.clone(),
                FakeConversation {
                    id: id.clone(),
                    contact_id,
                    state: "open".into(),
                    admin_assignee_id: None,
                    team_assignee_id: None,
                    source_body: text.clone(),
                    parts: Vec::new(),
                },
            );
            (
                200,
                json!({"type": "user_message", "id": message_id, "created_at": now_secs(), "body": text,
                    "message_type": "inapp", "conversation_id": id}),
            )
        }
        Kind::GetConversation
        | Kind::UserReply
        | Kind::AdminReply
        | Kind::Note
        | Kind::Assign
        | Kind::Close
        | Kind::OtherPart => {
            let id = conversation_id.unwrap_or_default().to_string();
            if !z.conversations.contains_key(&id) {
                return (404, error_list("not_found", "Resource Not Found"));
            }
            if kind != Kind::GetConversation {
                if let Err(e) = change(z, kind, &id, body) {
                    return e;
                }
            }
            let c = z.conversations.get(&id).expect("checked");
            (200, conversation_json(c, &z.contacts))
        }
        Kind::Unknown => (404, error_list("not_found", "Resource Not Found")),
    }
}

/// Apply a reply or a part to a conversation, checking what Intercom checks.
fn change(z: &mut Intercom, kind: Kind, id: &str, body: &Value) -> Result<(), (u16, Value)> {
    let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty());
    let known_admin = |k: &str| text(k).is_some_and(|a| admin_json(a).is_some());
    let conversation = z.conversations.get_mut(id).expect("checked by the caller");
    match kind {
        Kind::UserReply => {
            if text("message_type") != Some("comment") {
                return Err((400, error_list("parameter_invalid", "message_type must be comment for a user")));
            }
            let Some(user) = text("intercom_user_id") else {
                return Err((400, error_list("parameter_not_found", "intercom_user_id, user_id or email is required")));
            };
            if user != conversation.contact_id {
                return Err((404, error_list("not_found", "User Not Found")));
            }
            let Some(b) = text("body") else {
                return Err((400, error_list("parameter_not_found", "Body is required")));
            };
            conversation.state = "open".into();
            conversation.parts.push(json!({"part_type": "comment", "author": {"type": "user", "id": user}, "body": b}));
        }
        Kind::AdminReply | Kind::Note => {
            if !known_admin("admin_id") {
                return Err((404, error_list("admin_not_found", "Admin not found")));
            }
            let Some(b) = text("body") else {
                return Err((400, error_list("parameter_not_found", "Body is required")));
            };
            let part_type = if kind == Kind::Note { "note" } else { "comment" };
            conversation
                .parts
                .push(json!({"part_type": part_type, "author": {"type": "admin", "id": text("admin_id")}, "body": b}));
        }
        Kind::Assign => {
            if !known_admin("admin_id") {
                return Err((404, error_list("admin_not_found", "Admin not found")));
            }
            let assignee = text("assignee_id").unwrap_or("");
            match text("type") {
                Some("admin") if assignee == "0" || admin_json(assignee).is_some() => {
                    conversation.admin_assignee_id = (assignee != "0").then(|| assignee.to_string());
                }
                Some("team") if assignee == "0" || assignee == TEAM_ID => {
                    conversation.team_assignee_id = (assignee != "0").then(|| assignee.to_string());
                }
                Some("admin" | "team") => {
                    return Err((400, error_list("parameter_invalid", "Assignee not found")));
                }
                _ => return Err((400, error_list("parameter_invalid", "type must be admin or team"))),
            }
            conversation
                .parts
                .push(json!({"part_type": "assignment", "author": {"type": "admin", "id": text("admin_id")},
                "body": text("body"), "assigned_to": {"type": text("type"), "id": assignee}}));
        }
        Kind::Close => {
            if text("type") != Some("admin") || !known_admin("admin_id") {
                return Err((400, error_list("parameter_invalid", "type must be admin with a known admin_id")));
            }
            conversation.state = "closed".into();
            conversation.parts.push(
                json!({"part_type": "close", "author": {"type": "admin", "id": text("admin_id")}, "body": text("body")}),
            );
        }
        _ => return Err((400, error_list("parameter_invalid", "unsupported message_type"))),
    }
    Ok(())
}

// -------------------------------------------------------------------------------------------
// Webhooks

/// `X-Hub-Signature` for `body`: `sha1=` + hex HMAC-SHA1 with the app's client secret.
pub fn sign(client_secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(client_secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha1={}", hex::encode(mac.finalize().into_bytes()))
}

fn notification_id() -> String {
    let n: u128 = rand::thread_rng().gen();
    let h = format!("{n:032x}");
    format!("notif_{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

fn envelope(topic: &str, item: Value) -> Vec<u8> {
    let now = now_secs();
    json!({
        "type": "notification_event",
        "app_id": APP_ID,
        "data": {"type": "notification_event_data", "item": item},
        "links": {},
        "id": notification_id(),
        "topic": topic,
        "delivery_status": "pending",
        "delivery_attempts": 1,
        "delivered_at": 0,
        "first_sent_at": now,
        "created_at": now,
        "self": null,
    })
    .to_string()
    .into_bytes()
}

/// `text` as Intercom (up to 2.14) renders a comment: a paragraph, HTML-escaped.
pub fn html_paragraph(text: &str) -> String {
    format!("<p>{}</p>", escape_html(text))
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn conversation_item(conversation_id: &str, contact_id: &str, source_body: &str, parts: Vec<Value>) -> Value {
    let now = now_secs();
    json!({
        "type": "conversation",
        "id": conversation_id,
        "created_at": now,
        "updated_at": now,
        "waiting_since": now,
        "snoozed_until": null,
        "title": null,
        "open": true,
        "state": "open",
        "read": false,
        "priority": "not_priority",
        "admin_assignee_id": null,
        "team_assignee_id": null,
        "source": {
            "type": "conversation", "id": format!("src-{conversation_id}"), "delivered_as": "customer_initiated",
            "subject": "", "body": source_body, "url": null, "redacted": false, "attachments": [],
            "author": {"type": "user", "id": contact_id, "name": "Ann", "email": USER_EMAIL},
        },
        "contacts": {"type": "contact.list", "contacts": [{"type": "contact", "id": contact_id, "external_id": null}]},
        "teammates": {"type": "admin.list", "admins": []},
        "custom_attributes": {},
        "tags": {"type": "tag.list", "tags": []},
        "conversation_rating": null,
        "statistics": null,
        "conversation_parts": {"type": "conversation_part.list", "conversation_parts": parts.clone(), "total_count": parts.len()},
    })
}

fn part(part_id: &str, part_type: &str, author: Value, body: Value) -> Value {
    let now = now_secs();
    json!({
        "type": "conversation_part", "id": part_id, "part_type": part_type, "body": body,
        "created_at": now, "updated_at": now, "notified_at": now, "assigned_to": null, "author": author,
        "attachments": [], "external_id": null, "redacted": false, "metadata": {}, "email_message_metadata": null,
        "state": "open", "tags": [], "event_details": {}, "app_package_code": null,
    })
}

fn user_author(contact_id: &str) -> Value {
    json!({"type": "user", "id": contact_id, "name": "Ann", "email": USER_EMAIL})
}

fn admin_author(admin_id: &str) -> Value {
    let name = if admin_id == BOT_ADMIN_ID { "Assistant" } else { "Patricia" };
    json!({"type": "admin", "id": admin_id, "name": name, "email": format!("{admin_id}@example.com"),
        "from_ai_agent": false, "is_ai_answer": false})
}

/// `conversation.user.replied` with `text` as an HTML paragraph.
pub fn user_replied(conversation_id: &str, part_id: &str, contact_id: &str, text: &str) -> Vec<u8> {
    user_replied_body(conversation_id, part_id, contact_id, &html_paragraph(text))
}

/// `conversation.user.replied` with the part's `body` exactly as given (HTML or plain text).
pub fn user_replied_body(conversation_id: &str, part_id: &str, contact_id: &str, body: &str) -> Vec<u8> {
    let p = part(part_id, "comment", user_author(contact_id), json!(body));
    envelope("conversation.user.replied", conversation_item(conversation_id, contact_id, "<p>Hi</p>", vec![p]))
}

/// `conversation.user.created`: the user's first message (`source`), no parts yet.
pub fn user_created(conversation_id: &str, message_id: &str, contact_id: &str, email: &str, text: &str) -> Vec<u8> {
    let mut item = conversation_item(conversation_id, contact_id, &html_paragraph(text), vec![]);
    item["source"]["id"] = json!(message_id);
    item["source"]["author"]["email"] = json!(email);
    envelope("conversation.user.created", item)
}

/// `conversation.admin.replied` by teammate `admin_id`.
pub fn admin_replied(conversation_id: &str, part_id: &str, admin_id: &str, text: &str) -> Vec<u8> {
    let p = part(part_id, "comment", admin_author(admin_id), json!(html_paragraph(text)));
    envelope("conversation.admin.replied", conversation_item(conversation_id, "c-1", "<p>Hi</p>", vec![p]))
}

/// `conversation.admin.noted`: an internal note by `admin_id`.
pub fn admin_noted(conversation_id: &str, part_id: &str, admin_id: &str, text: &str) -> Vec<u8> {
    let p = part(part_id, "note", admin_author(admin_id), json!(html_paragraph(text)));
    envelope("conversation.admin.noted", conversation_item(conversation_id, "c-1", "<p>Hi</p>", vec![p]))
}

/// A Fin/bot reply inside `conversation.admin.replied` (`author.type: "bot"`), as Intercom
/// sends it besides `conversation.operator.replied`.
pub fn bot_replied(conversation_id: &str, part_id: &str, bot_id: &str, text: &str) -> Vec<u8> {
    let author = json!({"type": "bot", "id": bot_id, "name": "Fin", "email": format!("operator+{APP_ID}@intercom.io"),
        "from_ai_agent": true, "is_ai_answer": true});
    let p = part(part_id, "comment", author, json!(format!("<p class=\"no-margin\">{}</p>", escape_html(text))));
    envelope("conversation.admin.replied", conversation_item(conversation_id, "c-1", "<p>Hi</p>", vec![p]))
}

/// `conversation.admin.closed` by `admin_id`.
pub fn admin_closed(conversation_id: &str, admin_id: &str) -> Vec<u8> {
    let p = part(&format!("close-{conversation_id}"), "close", admin_author(admin_id), Value::Null);
    let mut item = conversation_item(conversation_id, "c-1", "<p>Hi</p>", vec![p]);
    item["open"] = json!(false);
    item["state"] = json!("closed");
    envelope("conversation.admin.closed", item)
}

/// `conversation.admin.assigned`: `admin_id` assigned the conversation to `assignee_id`.
pub fn admin_assigned(conversation_id: &str, admin_id: &str, assignee_id: &str) -> Vec<u8> {
    let mut p = part(&format!("assign-{conversation_id}"), "assignment", admin_author(admin_id), Value::Null);
    p["assigned_to"] = json!({"type": "admin", "id": assignee_id});
    envelope("conversation.admin.assigned", conversation_item(conversation_id, "c-1", "<p>Hi</p>", vec![p]))
}

/// `ping`, sent when a subscription is saved (its `id` is null).
pub fn ping() -> Vec<u8> {
    let now = now_secs();
    json!({
        "type": "notification_event", "app_id": APP_ID,
        "data": {"type": "notification_event_data", "item": {"type": "ping", "message": "something something interzen"}},
        "links": {}, "id": null, "topic": "ping", "delivery_status": null, "delivery_attempts": 1,
        "delivered_at": 0, "first_sent_at": now, "created_at": now, "self": null,
    })
    .to_string()
    .into_bytes()
}

/// `body` delivered again: the same notification (same id) with `delivery_attempts` + 1.
pub fn redelivered(body: &[u8]) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(body).expect("a notification body");
    let attempts = v.get("delivery_attempts").and_then(Value::as_u64).unwrap_or(1);
    v["delivery_attempts"] = json!(attempts + 1);
    v["delivery_status"] = json!("retry");
    v.to_string().into_bytes()
}
