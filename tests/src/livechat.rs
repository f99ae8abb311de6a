//! A fake LiveChat: the accounts server and the Chat / Configuration APIs on one loopback port
//! (so a test's `livechat.api_base` and `livechat.accounts_base` are both [`FakeLivechat::url`]),
//! plus builders for webhook bodies in LiveChat's envelope.
//!
//! Accounts:
//! - `POST /v2/token` (form or JSON): `grant_type=refresh_token` checks the client id, secret and
//!   [`REFRESH_TOKEN`] and issues `dal:agent-<n>` valid 8 h (the refresh token does not rotate,
//!   as for server-side apps); `grant_type=authorization_code` takes [`AUTH_CODE`] and answers
//!   with [`REFRESH_TOKEN`]. Refusals are HTTP 400 `{"error": "invalid_grant", ...}`.
//! - `POST /v2/customer/token` (JSON, agent-token grant) needs `Authorization: Bearer <valid agent
//!   token>`; without `entity_id` it creates a customer, with one it issues a token for it
//!   (`dal:customer-<n>`).
//!
//! API (`/v3.6/...`): customer `start_chat`, `send_event`, `deactivate_chat` need
//! `?organization_id=` [`ORGANIZATION_ID`] and a valid customer token; agent `transfer_chat`,
//! `send_event`, `deactivate_chat`, `list_chats` need an agent or bot token; configuration
//! `issue_bot_token` checks [`BOT_ID`] / [`BOT_SECRET`] and issues `dal:bot-<n>`. Errors use
//! LiveChat's `{"error": {"type", "message"}}`. Every request is recorded in arrival order.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use baton_core::agent::LivechatConfig;
use baton_core::model::Secret;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const ORGANIZATION_ID: &str = "390e44e6-f1e6-0368c-z6ddb-74g14508c2ex";
pub const CLIENT_ID: &str = "9cbf3a968289727cb3cdfe83ab1d9836";
pub const CLIENT_SECRET: &str = "fake-lc-client-secret-d7MEp1YYo3";
pub const REFRESH_TOKEN: &str = "dal:fake-refresh-gfalskcakg2347";
pub const WEBHOOK_SECRET: &str = "fake-lc-webhook-secret-41c9";
pub const BOT_ID: &str = "5c9871d5372c824cbf22d860a707a578";
pub const BOT_SECRET: &str = "fake-lc-bot-secret-641e2ae6";
/// The code the fake's authorization step would hand out.
pub const AUTH_CODE: &str = "dal:test_tnlRmy73mg9eaFESA";
/// The group handed-off chats go to.
pub const GROUP_ID: u64 = 19;
/// The agent whose refresh token the fake issues tokens for (a LiveChat agent id is a login).
pub const AGENT_LOGIN: &str = "hub-agent@example.com";

/// What a recorded request was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `POST /v2/token`, `grant_type=refresh_token`
    Refresh,
    /// `POST /v2/token`, `grant_type=authorization_code`
    CodeExchange,
    /// `POST /v2/customer/token`
    CustomerToken,
    /// `POST /v3.6/customer/action/start_chat`
    StartChat,
    /// `POST /v3.6/customer/action/send_event`
    CustomerEvent,
    /// `POST /v3.6/customer/action/deactivate_chat`
    CustomerDeactivate,
    /// `POST /v3.6/agent/action/transfer_chat`
    Transfer,
    /// `POST /v3.6/agent/action/send_event`
    AgentEvent,
    /// `POST /v3.6/agent/action/deactivate_chat`
    AgentDeactivate,
    /// `POST /v3.6/agent/action/list_chats`
    ListChats,
    /// `POST /v3.6/configuration/action/issue_bot_token`
    IssueBotToken,
    Unknown,
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub at: Instant,
    pub kind: Kind,
    pub path: String,
    pub query: Option<String>,
    /// The JSON body (a form, as an object of strings); `Null` when there is none.
    pub body: Value,
    pub authorization: Option<String>,
    /// The `X-Region` header, if any.
    pub region: Option<String>,
    /// What the fake answered.
    pub status: u16,
}

/// A chat as the fake keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeChat {
    pub id: String,
    /// The customer who started it (`None` for chats of LiveChat's own, created on first use).
    pub customer: Option<String>,
    pub active: bool,
    pub group_ids: Vec<u64>,
    /// Every event sent into it, in order: `{author, event, attach_to_last_thread?}`.
    pub events: Vec<Value>,
    /// Transfers: the targets.
    pub transfers: Vec<Value>,
}

#[derive(Default)]
struct Lc {
    requests: Vec<Recorded>,
    /// Tokens `*-1..=issued` were issued (one counter for every kind); those below
    /// `valid_from` are expired.
    issued: u64,
    valid_from: u64,
    /// Token -> owner: "agent", "bot" or the customer's entity id.
    tokens: BTreeMap<String, String>,
    customers: Vec<String>,
    chats: BTreeMap<String, FakeChat>,
    revoked: bool,
    refresh_delay: Duration,
    /// Answer this many API requests with this status.
    fail_next: usize,
    fail_status: u16,
    /// Answer API requests without this `X-Region` with `misdirected_request`.
    require_region: Option<String>,
    /// Answer 401 to every API token, even new ones (a grant without the needed scopes).
    reject_tokens: bool,
    next_id: u64,
}

type Shared = Arc<Mutex<Lc>>;

pub struct FakeLivechat {
    pub addr: SocketAddr,
    state: Shared,
}

impl FakeLivechat {
    /// Start on a free loopback port.
    pub async fn start() -> FakeLivechat {
        let state: Shared = Arc::new(Mutex::new(Lc { valid_from: 1, next_id: 1, ..Lc::default() }));
        let app = Router::new().fallback(handle).with_state(state.clone());
        let addr = crate::serve_on_loopback(app).await;
        FakeLivechat { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A `[livechat]` section pointing both servers at the fake, with its credentials and the
    /// bot.
    pub fn config(&self) -> LivechatConfig {
        LivechatConfig {
            api_base: self.url(),
            accounts_base: format!("{}/", self.url()),
            organization_id: ORGANIZATION_ID.into(),
            client_id: CLIENT_ID.into(),
            client_secret: Secret(CLIENT_SECRET.into()),
            refresh_token: Secret(REFRESH_TOKEN.into()),
            webhook_secret: Secret(WEBHOOK_SECRET.into()),
            bot_agent_id: Some(BOT_ID.into()),
            bot_secret: Some(Secret(BOT_SECRET.into())),
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
    pub fn refresh_requests(&self) -> usize {
        self.requests_of(Kind::Refresh).len()
    }

    /// The customers created so far (entity ids), oldest first.
    pub fn customers(&self) -> Vec<String> {
        self.state.lock().unwrap().customers.clone()
    }

    pub fn chat(&self, chat_id: &str) -> Option<FakeChat> {
        self.state.lock().unwrap().chats.get(chat_id).cloned()
    }

    /// A chat of LiveChat's own (a customer wrote on the website): active, in group 0.
    pub fn add_chat(&self, chat_id: &str) {
        let chat = FakeChat {
            id: chat_id.into(),
            customer: None,
            active: true,
            group_ids: vec![0],
            events: Vec::new(),
            transfers: Vec::new(),
        };
        self.state.lock().unwrap().chats.insert(chat_id.into(), chat);
    }

    /// Close a chat from the agents' side.
    pub fn deactivate(&self, chat_id: &str) {
        if let Some(c) = self.state.lock().unwrap().chats.get_mut(chat_id) {
            c.active = false;
        }
    }

    /// Refuse every refresh from now on (`invalid_grant`).
    pub fn revoke_refresh_token(&self) {
        self.state.lock().unwrap().revoked = true;
    }

    /// Every token issued so far (agent, customer, bot) is answered `authentication` from now on.
    pub fn expire_tokens(&self) {
        let mut st = self.state.lock().unwrap();
        st.valid_from = st.issued + 1;
    }

    /// Answer refreshes only after `delay` (to make concurrent callers overlap).
    pub fn set_refresh_delay(&self, delay: Duration) {
        self.state.lock().unwrap().refresh_delay = delay;
    }

    /// Answer the next `n` Chat / Configuration API requests with `status` (after the token
    /// check): 429 is `too_many_requests`, 5xx `internal`, 403 `authorization`, other statuses
    /// `validation`. 429 and 503 carry `Retry-After: 2`.
    pub fn fail_next(&self, n: usize, status: u16) {
        let mut st = self.state.lock().unwrap();
        st.fail_next = n;
        st.fail_status = status;
    }

    /// Answer `authentication` (401) to every Chat API token, even new ones.
    pub fn reject_all_tokens(&self) {
        self.state.lock().unwrap().reject_tokens = true;
    }

    /// Answer API requests without `X-Region: <region>` with `misdirected_request` (HTTP 421).
    pub fn require_region(&self, region: Option<&str>) {
        self.state.lock().unwrap().require_region = region.map(str::to_string);
    }

    /// The first `n` requests of `kind`, waiting up to `timeout`; panics listing what arrived.
    pub async fn wait_for(&self, kind: Kind, n: usize, timeout: Duration) -> Vec<Recorded> {
        let start = Instant::now();
        loop {
            let found = self.requests_of(kind);
            if found.len() >= n {
                return found.into_iter().take(n).collect();
            }
            if start.elapsed() > timeout {
                panic!(
                    "timed out after {timeout:?} waiting for {n} request(s) of kind {kind:?}; arrived:\n  {}",
                    self.arrived().join("\n  ")
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// What arrived, one line per request.
    pub fn arrived(&self) -> Vec<String> {
        self.requests().iter().map(|r| format!("{:?} {} -> {}", r.kind, r.path, r.status)).collect()
    }
}

fn error(status: u16, kind: &str, message: &str) -> (u16, Value) {
    (status, json!({"error": {"type": kind, "message": message}}))
}

fn respond(status: u16, body: Value) -> Response {
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

/// The body as JSON, or a form as an object of strings.
fn body_value(raw: &[u8]) -> Value {
    if raw.is_empty() {
        return Value::Null;
    }
    if let Ok(v) = serde_json::from_slice::<Value>(raw) {
        return v;
    }
    let pairs = form_pairs(&String::from_utf8_lossy(raw));
    Value::Object(pairs.into_iter().map(|(k, v)| (k, Value::String(v))).collect::<Map<String, Value>>())
}

fn bearer(authorization: Option<&str>) -> Option<&str> {
    authorization?.strip_prefix("Bearer ")
}

impl Lc {
    fn issue(&mut self, kind: &str, owner: &str) -> String {
        self.issued += 1;
        let token = format!("dal:{kind}-{}", self.issued);
        self.tokens.insert(token.clone(), owner.to_string());
        token
    }

    /// The owner of a valid token.
    fn owner(&self, authorization: Option<&str>) -> Option<String> {
        let token = bearer(authorization)?;
        let n: u64 = token.rsplit('-').next()?.parse().ok()?;
        if n < self.valid_from {
            return None;
        }
        self.tokens.get(token).cloned()
    }

    fn id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}{:08X}", self.next_id)
    }
}

async fn handle(State(st): State<Shared>, method: Method, uri: Uri, headers: HeaderMap, raw: Bytes) -> Response {
    let path = uri.path().to_string();
    let query = uri.query().map(str::to_string);
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
    let region = headers.get("x-region").and_then(|v| v.to_str().ok()).map(str::to_string);
    let body = body_value(&raw);
    let grant = body.get("grant_type").and_then(Value::as_str).unwrap_or_default().to_string();
    let kind = match (method.as_str(), path.as_str()) {
        ("POST", "/v2/token") if grant == "authorization_code" => Kind::CodeExchange,
        ("POST", "/v2/token") => Kind::Refresh,
        ("POST", "/v2/customer/token") => Kind::CustomerToken,
        ("POST", "/v3.6/customer/action/start_chat") => Kind::StartChat,
        ("POST", "/v3.6/customer/action/send_event") => Kind::CustomerEvent,
        ("POST", "/v3.6/customer/action/deactivate_chat") => Kind::CustomerDeactivate,
        ("POST", "/v3.6/agent/action/transfer_chat") => Kind::Transfer,
        ("POST", "/v3.6/agent/action/send_event") => Kind::AgentEvent,
        ("POST", "/v3.6/agent/action/deactivate_chat") => Kind::AgentDeactivate,
        ("POST", "/v3.6/agent/action/list_chats") => Kind::ListChats,
        ("POST", "/v3.6/configuration/action/issue_bot_token") => Kind::IssueBotToken,
        _ => Kind::Unknown,
    };
    if kind == Kind::Refresh {
        let delay = st.lock().unwrap().refresh_delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
    let mut lc = st.lock().unwrap();
    let (status, answer) = match kind {
        Kind::Refresh | Kind::CodeExchange => token(&mut lc, kind, &body),
        Kind::CustomerToken => customer_token(&mut lc, &body, authorization.as_deref()),
        Kind::Unknown => error(404, "not_found", "Not found"),
        _ => api(&mut lc, kind, query.as_deref(), &body, authorization.as_deref(), region.as_deref()),
    };
    lc.requests.push(Recorded { at: Instant::now(), kind, path, query, body, authorization, region, status });
    respond(status, answer)
}

fn text<'a>(body: &'a Value, key: &str) -> Option<&'a str> {
    body.get(key).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty())
}

fn oauth_error(code: &str, description: &str) -> (u16, Value) {
    (400, json!({"error": code, "error_description": description}))
}

fn token(lc: &mut Lc, kind: Kind, body: &Value) -> (u16, Value) {
    if text(body, "client_id") != Some(CLIENT_ID) {
        return oauth_error("unauthorized_client", "client_id_not_found");
    }
    if text(body, "client_secret") != Some(CLIENT_SECRET) {
        return oauth_error("unauthorized_client", "invalid client secret");
    }
    match kind {
        Kind::Refresh => {
            if text(body, "grant_type") != Some("refresh_token") {
                return oauth_error("unsupported_grant_type", "");
            }
            if lc.revoked || text(body, "refresh_token") != Some(REFRESH_TOKEN) {
                return oauth_error("invalid_grant", "refresh token not found");
            }
        }
        _ => {
            if text(body, "code") != Some(AUTH_CODE) {
                return oauth_error("invalid_grant", "code not found");
            }
            if text(body, "redirect_uri").is_none() {
                return oauth_error("invalid_request", "redirect_uri is required");
            }
        }
    }
    let access = lc.issue("agent", "agent");
    (
        200,
        json!({
            "access_token": access,
            "account_id": "b7eff798-f8df-4364-8059-649c35c9ed0c",
            "expires_in": 28800,
            "organization_id": ORGANIZATION_ID,
            "refresh_token": REFRESH_TOKEN,
            "scope": "chats--all:rw,customers:own,customers:rw,agents-bot--my:rw",
            "token_type": "Bearer",
        }),
    )
}

fn customer_token(lc: &mut Lc, body: &Value, authorization: Option<&str>) -> (u16, Value) {
    if lc.owner(authorization).as_deref() != Some("agent") {
        return (401, json!({"error": "unauthorized", "error_description": "invalid agent access token"}));
    }
    if text(body, "grant_type") != Some("agent_token") || text(body, "response_type") != Some("token") {
        return oauth_error("invalid_request", "grant_type agent_token and response_type token are required");
    }
    if text(body, "client_id") != Some(CLIENT_ID) {
        return oauth_error("unauthorized_client", "client_id_not_found");
    }
    let entity = match text(body, "entity_id") {
        Some(e) if lc.customers.iter().any(|c| c == e) => e.to_string(),
        Some(_) => return oauth_error("invalid_request", "entity_id not found"),
        None => {
            let n = lc.customers.len() + 1;
            let e = format!("b7eff798-f8df-4364-8059-{n:012x}");
            lc.customers.push(e.clone());
            e
        }
    };
    let access = lc.issue("customer", &entity);
    (
        200,
        json!({
            "access_token": access,
            "client_id": CLIENT_ID,
            "entity_id": entity,
            "expires_in": 28800,
            "token_type": "Bearer",
            "organization_id": ORGANIZATION_ID,
        }),
    )
}

fn api(
    lc: &mut Lc,
    kind: Kind,
    query: Option<&str>,
    body: &Value,
    authorization: Option<&str>,
    region: Option<&str>,
) -> (u16, Value) {
    if let Some(required) = lc.require_region.clone() {
        if region != Some(required.as_str()) {
            return (
                421,
                json!({"error": {"type": "misdirected_request", "message": "Wrong region", "data": {"region": required}}}),
            );
        }
    }
    let customer_api = matches!(kind, Kind::StartChat | Kind::CustomerEvent | Kind::CustomerDeactivate);
    if customer_api {
        let org = query.map(form_pairs).unwrap_or_default().into_iter().find(|(k, _)| k == "organization_id");
        match org {
            Some((_, o)) if o == ORGANIZATION_ID => {}
            Some(_) => return error(404, "license_not_found", "License not found"),
            None => return error(400, "validation", "`organization_id` is required"),
        }
    }
    let owner = if kind == Kind::IssueBotToken { Some("agent".to_string()) } else { lc.owner(authorization) };
    let Some(owner) = owner else {
        return error(401, "authentication", "Invalid access token");
    };
    let owner_ok = match kind {
        Kind::StartChat | Kind::CustomerEvent | Kind::CustomerDeactivate => lc.customers.contains(&owner),
        Kind::IssueBotToken => true,
        _ => owner == "agent" || owner == "bot",
    };
    if !owner_ok || (lc.reject_tokens && kind != Kind::IssueBotToken) {
        return error(401, "authentication", "Invalid access token");
    }
    if lc.fail_next > 0 {
        lc.fail_next -= 1;
        let status = lc.fail_status;
        return match status {
            429 => error(429, "too_many_requests", "Too many requests"),
            403 => error(403, "authorization", "Agent is not allowed to perform this action"),
            500..=599 => error(status, "internal", "Internal server error"),
            _ => error(status, "validation", "Simulated validation failure"),
        };
    }
    if !body.is_object() {
        return error(400, "validation", "Wrong format of request");
    }
    let author = if owner == "agent" {
        AGENT_LOGIN.to_string()
    } else if owner == "bot" {
        BOT_ID.to_string()
    } else {
        owner.clone()
    };
    match kind {
        Kind::IssueBotToken => {
            if text(body, "bot_id") != Some(BOT_ID)
                || text(body, "client_id") != Some(CLIENT_ID)
                || text(body, "organization_id") != Some(ORGANIZATION_ID)
            {
                return error(400, "validation", "bot_id, client_id and organization_id must match");
            }
            if text(body, "bot_secret") != Some(BOT_SECRET) {
                return error(400, "validation", "Invalid bot secret");
            }
            let token = lc.issue("bot", "bot");
            (200, json!({"token": token}))
        }
        Kind::StartChat => {
            let group_ids: Vec<u64> = body
                .pointer("/chat/access/group_ids")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_else(|| vec![0]);
            let chat_id = lc.id("PJ");
            let thread_id = lc.id("K6");
            let mut chat = FakeChat {
                id: chat_id.clone(),
                customer: Some(owner.clone()),
                active: true,
                group_ids,
                events: Vec::new(),
                transfers: Vec::new(),
            };
            let mut event_ids = Vec::new();
            for (i, e) in body
                .pointer("/chat/thread/events")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .enumerate()
            {
                event_ids.push(format!("{thread_id}_{}", i + 1));
                chat.events.push(json!({"author": author, "event": e}));
            }
            lc.chats.insert(chat_id.clone(), chat);
            let mut answer = json!({"chat_id": chat_id, "thread_id": thread_id});
            if !event_ids.is_empty() {
                answer["event_ids"] = json!(event_ids);
            }
            (200, answer)
        }
        Kind::CustomerEvent | Kind::AgentEvent => {
            let Some(chat_id) = text(body, "chat_id").map(str::to_string) else {
                return error(400, "validation", "`chat_id` is required");
            };
            let event = body.get("event").cloned().unwrap_or(Value::Null);
            if event.get("type").and_then(Value::as_str) != Some("message") || text(&event, "text").is_none() {
                return error(400, "validation", "`event.text` is required");
            }
            if event.get("text").and_then(Value::as_str).map(str::len).unwrap_or(0) > 16 * 1024 {
                return error(400, "validation", "`event.text` is too long");
            }
            let attach = body.get("attach_to_last_thread").and_then(Value::as_bool).unwrap_or(false);
            let id = lc.id("EV");
            let Some(chat) = chat_for(lc, kind, &chat_id, &owner) else {
                return error(404, "not_found", "Chat not found");
            };
            if !chat.active && !attach {
                return error(400, "chat_inactive", "No active chat thread");
            }
            chat.events.push(json!({"author": author, "event": event, "attach_to_last_thread": attach}));
            (200, json!({"event_id": id}))
        }
        Kind::CustomerDeactivate | Kind::AgentDeactivate => {
            let Some(chat_id) = text(body, "id").map(str::to_string) else {
                return error(400, "validation", "`id` is required");
            };
            let Some(chat) = chat_for(lc, kind, &chat_id, &owner) else {
                return error(404, "not_found", "Chat not found");
            };
            if !chat.active {
                return error(400, "chat_inactive", "No active chat thread");
            }
            chat.active = false;
            (200, json!({}))
        }
        Kind::Transfer => {
            let Some(chat_id) = text(body, "id").map(str::to_string) else {
                return error(400, "validation", "`id` is required");
            };
            let target = body.get("target").cloned().unwrap_or(Value::Null);
            let ids: Vec<u64> = target
                .get("ids")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default();
            if target.get("type").and_then(Value::as_str) != Some("group") || ids.is_empty() {
                return error(400, "validation", "`target` must name groups");
            }
            let Some(chat) = chat_for(lc, kind, &chat_id, &owner) else {
                return error(404, "not_found", "Chat not found");
            };
            if !chat.active {
                return error(400, "chat_inactive", "No active chat thread");
            }
            chat.group_ids = ids;
            chat.transfers.push(target);
            (200, json!({}))
        }
        Kind::ListChats => {
            let summaries: Vec<Value> = lc
                .chats
                .values()
                .take(body.get("limit").and_then(Value::as_u64).unwrap_or(10) as usize)
                .map(|c| json!({"id": c.id}))
                .collect();
            (200, json!({"chats_summary": summaries, "found_chats": lc.chats.len()}))
        }
        _ => error(404, "not_found", "Not found"),
    }
}

/// The chat a request may touch: a customer only its own; agents any (chats of LiveChat's
/// own are created on first use).
fn chat_for<'a>(lc: &'a mut Lc, kind: Kind, chat_id: &str, owner: &str) -> Option<&'a mut FakeChat> {
    let customer_api = matches!(kind, Kind::CustomerEvent | Kind::CustomerDeactivate);
    if !customer_api && !lc.chats.contains_key(chat_id) {
        lc.chats.insert(
            chat_id.to_string(),
            FakeChat {
                id: chat_id.into(),
                customer: None,
                active: true,
                group_ids: vec![0],
                events: Vec::new(),
                transfers: Vec::new(),
            },
        );
    }
    let chat = lc.chats.get_mut(chat_id)?;
    if customer_api && chat.customer.as_deref() != Some(owner) {
        return None;
    }
    Some(chat)
}

// -------------------------------------------------------------------------------------------
// Webhooks

fn envelope(action: &str, payload: Value) -> Vec<u8> {
    json!({
        "webhook_id": "1188f559c4bae6c4b9a87a1b32d78202",
        "secret_key": WEBHOOK_SECRET,
        "action": action,
        "organization_id": ORGANIZATION_ID,
        "payload": payload,
        "additional_data": {},
    })
    .to_string()
    .into_bytes()
}

fn now_stamp() -> String {
    let micros = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros();
    format!("{micros}")
}

/// `incoming_event`: a message by `author_id` (an agent login, a customer id or the bot).
pub fn incoming_event(chat_id: &str, event_id: &str, author_id: &str, text: &str, custom_id: Option<&str>) -> Vec<u8> {
    let mut event = json!({
        "id": event_id,
        "type": "message",
        "text": text,
        "author_id": author_id,
        "created_at": now_stamp(),
        "visibility": "all",
    });
    if let Some(c) = custom_id {
        event["custom_id"] = json!(c);
    }
    envelope("incoming_event", json!({"chat_id": chat_id, "thread_id": format!("T-{chat_id}"), "event": event}))
}

/// `incoming_event` of a file.
pub fn incoming_file(chat_id: &str, event_id: &str, author_id: &str, name: &str, url: &str) -> Vec<u8> {
    let event = json!({
        "id": event_id,
        "type": "file",
        "name": name,
        "url": url,
        "content_type": "application/pdf",
        "author_id": author_id,
        "created_at": now_stamp(),
        "visibility": "all",
    });
    envelope("incoming_event", json!({"chat_id": chat_id, "thread_id": format!("T-{chat_id}"), "event": event}))
}

/// `incoming_chat`: a customer started a chat with `first_text` (the group's bot is in it).
pub fn incoming_chat(chat_id: &str, customer_id: &str, email: Option<&str>, first_text: &str) -> Vec<u8> {
    let mut customer = json!({"id": customer_id, "type": "customer", "name": "Ann", "present": true});
    if let Some(e) = email {
        customer["email"] = json!(e);
    }
    let thread_id = format!("T-{chat_id}");
    let payload = json!({"chat": {
        "id": chat_id,
        "users": [customer, {"id": BOT_ID, "type": "agent", "name": "Baton", "present": true}],
        "thread": {
            "id": thread_id,
            "active": true,
            "user_ids": [customer_id, BOT_ID],
            "events": [{
                "id": format!("{thread_id}_1"),
                "type": "message",
                "text": first_text,
                "author_id": customer_id,
                "created_at": now_stamp(),
                "visibility": "all",
            }],
            "access": {"group_ids": [0]},
        },
        "access": {"group_ids": [0]},
        "properties": {},
    }});
    envelope("incoming_chat", payload)
}

/// `chat_deactivated`, closed by an agent.
pub fn chat_deactivated(chat_id: &str) -> Vec<u8> {
    envelope(
        "chat_deactivated",
        json!({"chat_id": chat_id, "thread_id": format!("T-{chat_id}"), "user_id": AGENT_LOGIN}),
    )
}

/// `body` with another `secret_key` (or none).
pub fn with_secret(body: &[u8], secret: Option<&str>) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(body).expect("a webhook body");
    match secret {
        Some(s) => v["secret_key"] = json!(s),
        None => {
            v.as_object_mut().expect("an object").remove("secret_key");
        }
    }
    v.to_string().into_bytes()
}
