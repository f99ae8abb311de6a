//! A fake WhatsApp Cloud API (Meta Graph): `POST /{version}/{phone_number_id}/messages` with
//! `Authorization: Bearer {token}`. Like Meta it refuses a wrong token (401, code 190), an
//! unknown phone number id (400, code 100), and bodies Meta would refuse (code 100 with
//! `error_data.details`): `messaging_product` must be `whatsapp`, `to` a phone number, `type`
//! `text` (body 1-4096 characters), `interactive` of type `button` (body 1-1024 characters, 1-3
//! reply buttons, ids 1-256 characters, titles 1-20 characters, both unique) or `template`
//! (name, language code, body text parameters without newlines, tabs or more than 4
//! consecutive spaces (132018), at most 1024 characters (132005)). A user whose window was
//! closed with [`FakeWhatsapp::close_window_for`] gets 131047 for free-form messages while
//! templates still go through. Accepted messages are answered `{messaging_product, contacts:
//! [{input, wa_id}], messages:[{id:"wamid.N"}]}`. Every request is recorded, and the fake can be
//! told to fail. Also: webhook bodies in Meta's envelope and their `X-Hub-Signature-256`, for
//! driving the hub's WhatsApp webhook. Media put with [`FakeWhatsapp::put_media`] are described
//! by `GET /{version}/{media_id}` (`{messaging_product, url, mime_type, sha256, file_size, id}`)
//! and downloaded from that url (`/whatsapp_business/attachments/?mid=..`, as Meta's lookaside
//! host), both with the Bearer token only.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The display number the builders put in `metadata`.
pub const DISPLAY_PHONE_NUMBER: &str = "15550783881";
/// The WhatsApp Business Account id the builders put in `entry[].id`.
pub const WABA_ID: &str = "102290129340398";

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct WhatsappRequest {
    /// When the fake received it.
    pub at: Instant,
    pub path: String,
    pub body: Value,
    pub authorization: Option<String>,
    /// The HTTP status the fake answered.
    pub status: u16,
    /// The JSON the fake answered.
    pub answer: Value,
}

#[derive(Default)]
struct WhatsappLog {
    requests: Vec<WhatsappRequest>,
    /// wa_ids (digits only) whose customer-service window is closed.
    closed: HashSet<String>,
    /// Answer the next `fail_count` authorized requests with `fail_with` (an HTTP status from
    /// 400 to 599, else a Graph error code).
    fail_count: usize,
    fail_with: u32,
    next_id: u64,
    /// media id -> (mime type, bytes)
    media: HashMap<String, (String, Vec<u8>)>,
    /// Media ids downloaded, in order.
    downloads: Vec<String>,
}

#[derive(Clone)]
struct WhatsappState {
    token: Arc<str>,
    /// This server's own URL (media download links point here).
    base: Arc<str>,
    phone_number_id: Arc<str>,
    log: Arc<Mutex<WhatsappLog>>,
}

pub struct FakeWhatsapp {
    pub addr: SocketAddr,
    log: Arc<Mutex<WhatsappLog>>,
}

impl FakeWhatsapp {
    /// Start on a free loopback port, accepting `access_token` for `phone_number_id` only.
    pub async fn start(access_token: &str, phone_number_id: &str) -> FakeWhatsapp {
        let log = Arc::new(Mutex::new(WhatsappLog::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = WhatsappState {
            token: access_token.into(),
            base: format!("http://{addr}").into(),
            phone_number_id: phone_number_id.into(),
            log: log.clone(),
        };
        let app = Router::new()
            .route("/whatsapp_business/attachments/", axum::routing::get(media_download))
            .route("/{version}/{media_id}", axum::routing::get(media_info))
            .fallback(handle)
            .with_state(state);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeWhatsapp { addr, log }
    }

    /// The `api_base` to configure (`whatsapp.api_base`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request, accepted or not, in arrival order.
    pub fn requests(&self) -> Vec<WhatsappRequest> {
        self.log.lock().unwrap().requests.clone()
    }

    /// Bodies of the accepted messages, in order.
    pub fn sent(&self) -> Vec<Value> {
        let log = self.log.lock().unwrap();
        log.requests.iter().filter(|r| r.status == 200).map(|r| r.body.clone()).collect()
    }

    /// Wait until at least `n` messages were accepted and return their bodies; panics after
    /// `timeout` listing every request that arrived.
    pub async fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let sent = self.sent();
            if sent.len() >= n {
                return sent;
            }
            if start.elapsed() > timeout {
                let requests: Vec<String> = self
                    .requests()
                    .iter()
                    .map(|r| format!("  POST {} -> {} {}: {}", r.path, r.status, r.answer, r.body))
                    .collect();
                panic!(
                    "timed out after {timeout:?} waiting for {n} accepted WhatsApp messages; {} accepted. Requests:\n{}",
                    sent.len(),
                    requests.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A file a user sent, kept by Meta under `media_id`.
    pub fn put_media(&self, media_id: &str, mime_type: &str, bytes: &[u8]) {
        self.log.lock().unwrap().media.insert(media_id.into(), (mime_type.into(), bytes.to_vec()));
    }

    /// Media ids downloaded so far, in order.
    pub fn downloads(&self) -> Vec<String> {
        self.log.lock().unwrap().downloads.clone()
    }

    /// The user's 24-hour window closes: free-form messages to `wa_id` fail with 131047 (HTTP
    /// 400) like Meta's; templates are still accepted.
    pub fn close_window_for(&self, wa_id: &str) {
        self.log.lock().unwrap().closed.insert(digits(wa_id));
    }

    /// The user wrote again: free-form messages to `wa_id` are accepted again.
    pub fn open_window_for(&self, wa_id: &str) {
        self.log.lock().unwrap().closed.remove(&digits(wa_id));
    }

    /// Answer the next `n` authorized requests without sending anything. `status_or_code` from
    /// 400 to 599 is an HTTP status (401 → code 190, 403 → code 10, 429 → code 4, 503 → code 2,
    /// other 5xx → code 1, other 4xx → code 100); any other value is a Graph error code (131047,
    /// 131026, 130429, 131056, 190, 10, 4, 2, ...) answered with the HTTP status Meta pairs with it.
    pub fn fail_next(&self, n: usize, status_or_code: u32) {
        let mut log = self.log.lock().unwrap();
        log.fail_count = n;
        log.fail_with = status_or_code;
    }
}

fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

fn fbtrace_id() -> String {
    static N: AtomicU64 = AtomicU64::new(1);
    format!("Afake{:016x}", N.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// A Graph API error answer.
struct GraphError {
    status: u16,
    code: u32,
    message: String,
    details: Option<String>,
}

impl GraphError {
    /// `(#code) title` with details, as the Cloud API words its errors.
    fn new(status: u16, code: u32, title: &str, details: Option<&str>) -> Self {
        GraphError { status, code, message: format!("(#{code}) {title}"), details: details.map(str::to_string) }
    }

    fn invalid(details: impl Into<String>) -> Self {
        let details = details.into();
        GraphError::new(400, 100, "Invalid parameter", Some(&details))
    }

    fn json(&self) -> Value {
        let mut error =
            json!({"message": self.message, "type": "OAuthException", "code": self.code, "fbtrace_id": fbtrace_id()});
        if let Some(details) = &self.details {
            error["error_data"] = json!({"messaging_product": "whatsapp", "details": details});
        }
        json!({ "error": error })
    }
}

fn bad_token() -> GraphError {
    GraphError {
        status: 401,
        code: 190,
        message: "Invalid OAuth access token - Cannot parse access token".into(),
        details: None,
    }
}

/// The answer for `fail_next(_, status_or_code)`.
fn failure(status_or_code: u32) -> GraphError {
    if (400..600).contains(&status_or_code) {
        let status = status_or_code as u16;
        return match status {
            401 => GraphError {
                status,
                code: 190,
                message: "Error validating access token: Session has expired.".into(),
                details: None,
            },
            403 => GraphError::new(status, 10, "Application does not have permission for this action", None),
            429 => GraphError::new(status, 4, "Application request limit reached", None),
            503 => GraphError::new(status, 2, "Service temporarily unavailable", None),
            500..=599 => GraphError::new(status, 1, "An unknown error occurred", None),
            _ => GraphError::invalid("The request was refused by the fake."),
        };
    }
    let code = status_or_code;
    let (status, title, details) = match code {
        190 => (401, "Error validating access token: Session has expired.", None),
        0 => (401, "AuthException", None),
        10 | 200..=299 => (403, "Permission denied", None),
        4 => (429, "Application request limit reached", None),
        2 | 133004 => (503, "Service temporarily unavailable", None),
        131047 => (
            400,
            "Re-engagement message",
            Some("Message failed to send because more than 24 hours have passed since the customer last replied to this number."),
        ),
        131026 => (400, "Message undeliverable", Some("Message Undeliverable.")),
        130429 => (
            400,
            "Rate limit hit",
            Some("Message failed to send because there were too many messages sent from this phone number in a short period of time."),
        ),
        131056 => (
            400,
            "(Business Account, Consumer Account) pair rate limit hit",
            Some("Message failed to send because there were too many messages sent from this phone number to the same phone number in a short period of time."),
        ),
        131048 => (400, "Spam rate limit hit", None),
        80007 => (400, "Rate limit issues", None),
        132001 => (404, "Template name does not exist in the translation", None),
        _ => (400, "Error", None),
    };
    if code == 190 || code == 0 {
        return GraphError { status, code, message: title.into(), details: None };
    }
    GraphError::new(status, code, title, details)
}

async fn handle(
    State(st): State<WhatsappState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
    let path = uri.path().to_string();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut log = st.log.lock().unwrap();
    let (status, answer) = match answer(&st, &mut log, &method, &path, authorization.as_deref(), &body) {
        Ok(answer) => (200, answer),
        Err(error) => (error.status, error.json()),
    };
    log.requests.push(WhatsappRequest {
        at: Instant::now(),
        path,
        body,
        authorization,
        status,
        answer: answer.clone(),
    });
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(answer)).into_response()
}

fn answer(
    st: &WhatsappState,
    log: &mut WhatsappLog,
    method: &Method,
    path: &str,
    authorization: Option<&str>,
    body: &Value,
) -> Result<Value, GraphError> {
    if authorization != Some(format!("Bearer {}", st.token).as_str()) {
        return Err(bad_token());
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let valid_version = parts.first().and_then(|v| v.strip_prefix('v')).is_some_and(|v| {
        let mut numbers = v.split('.');
        numbers.clone().count() <= 2 && numbers.all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    });
    if !valid_version {
        return Err(GraphError::new(400, 2500, "Unknown path components", None));
    }
    if method != Method::POST || parts.len() != 3 || parts[1] != &*st.phone_number_id || parts[2] != "messages" {
        let object = parts.get(1).copied().unwrap_or_default();
        return Err(GraphError::new(
            400,
            100,
            &format!("Unsupported {} request. Object with ID '{object}' does not exist, cannot be loaded due to missing permissions, or does not support this operation", method.as_str().to_lowercase()),
            None,
        ));
    }
    if log.fail_count > 0 {
        log.fail_count -= 1;
        return Err(failure(log.fail_with));
    }
    let kind = check_message(body)?;
    let to = body["to"].as_str().unwrap_or_default();
    let wa_id = digits(to);
    if kind != "template" && log.closed.contains(&wa_id) {
        return Err(failure(131047));
    }
    log.next_id += 1;
    Ok(json!({
        "messaging_product": "whatsapp",
        "contacts": [{"input": to, "wa_id": wa_id}],
        "messages": [{"id": format!("wamid.{}", log.next_id)}],
    }))
}

/// What Meta would refuse in a send body; the message type when it is fine.
fn check_message(body: &Value) -> Result<&'static str, GraphError> {
    if !body.is_object() {
        return Err(GraphError::invalid("The request body must be a JSON object."));
    }
    if body["messaging_product"] != "whatsapp" {
        return Err(GraphError::invalid("The parameter messaging_product is required and must be \"whatsapp\"."));
    }
    if !body["recipient_type"].is_null() && body["recipient_type"] != "individual" {
        return Err(GraphError::invalid("Param recipient_type must be \"individual\"."));
    }
    let to = body["to"].as_str().unwrap_or_default();
    let phone_chars = to.chars().all(|c| c.is_ascii_digit() || "+-() ".contains(c));
    if digits(to).is_empty() || !phone_chars {
        return Err(GraphError::invalid("The parameter to is required and must be a phone number."));
    }
    let kind = match body.get("type") {
        None => "text",
        Some(Value::String(t)) if t == "text" => "text",
        Some(Value::String(t)) if t == "interactive" => "interactive",
        Some(Value::String(t)) if t == "template" => "template",
        Some(_) => return Err(GraphError::invalid("The fake accepts type text, interactive and template only.")),
    };
    if !body[kind].is_object() {
        return Err(GraphError::invalid(format!("The parameter {kind} is required.")));
    }
    match kind {
        "text" => check_text(&body["text"])?,
        "interactive" => check_interactive(&body["interactive"])?,
        _ => check_template(&body["template"])?,
    }
    Ok(kind)
}

fn chars_between(value: &Value, min: usize, max: usize) -> bool {
    value.as_str().is_some_and(|s| (min..=max).contains(&s.chars().count()))
}

fn check_text(text: &Value) -> Result<(), GraphError> {
    if !chars_between(&text["body"], 1, 4096) {
        return Err(GraphError::invalid("Param text['body'] must be between 1 and 4096 characters long."));
    }
    if !text["preview_url"].is_null() && !text["preview_url"].is_boolean() {
        return Err(GraphError::invalid("Param text['preview_url'] must be a boolean."));
    }
    Ok(())
}

fn check_interactive(interactive: &Value) -> Result<(), GraphError> {
    if interactive["type"] != "button" {
        return Err(GraphError::invalid("The fake accepts interactive messages of type button only."));
    }
    if !chars_between(&interactive["body"]["text"], 1, 1024) {
        return Err(GraphError::invalid(
            "Param interactive['body']['text'] must be between 1 and 1024 characters long.",
        ));
    }
    for part in ["header", "footer"] {
        if interactive[part]["type"] == "text" && !chars_between(&interactive[part]["text"], 1, 60) {
            return Err(GraphError::invalid(format!(
                "Param interactive['{part}']['text'] must be at most 60 characters."
            )));
        }
    }
    let buttons = interactive["action"]["buttons"].as_array().cloned().unwrap_or_default();
    if buttons.is_empty() || buttons.len() > 3 {
        return Err(GraphError::invalid("Param interactive['action']['buttons'] must have between 1 and 3 elements."));
    }
    let (mut ids, mut titles) = (HashSet::new(), HashSet::new());
    for (i, button) in buttons.iter().enumerate() {
        let at = format!("interactive['action']['buttons'][{i}]");
        if button["type"] != "reply" {
            return Err(GraphError::invalid(format!("Param {at}['type'] must be \"reply\".")));
        }
        let (id, title) = (&button["reply"]["id"], &button["reply"]["title"]);
        if !chars_between(id, 1, 256) {
            return Err(GraphError::invalid(format!(
                "Param {at}['reply']['id'] must be between 1 and 256 characters long."
            )));
        }
        if !chars_between(title, 1, 20) {
            return Err(GraphError::invalid(format!(
                "Param {at}['reply']['title'] must be between 1 and 20 characters long."
            )));
        }
        if !ids.insert(id.as_str().unwrap_or_default().to_string()) {
            return Err(GraphError::invalid("Button ids must be unique."));
        }
        if !titles.insert(title.as_str().unwrap_or_default().to_string()) {
            return Err(GraphError::invalid("Button titles must be unique."));
        }
    }
    Ok(())
}

fn check_template(template: &Value) -> Result<(), GraphError> {
    if !chars_between(&template["name"], 1, 512) {
        return Err(GraphError::invalid("The parameter template['name'] is required."));
    }
    if !chars_between(&template["language"]["code"], 1, 32) {
        return Err(GraphError::invalid("The parameter template['language']['code'] is required."));
    }
    let components = match &template["components"] {
        Value::Null => return Ok(()),
        Value::Array(components) => components,
        _ => return Err(GraphError::invalid("Param template['components'] must be an array.")),
    };
    for component in components {
        let parameters = component["parameters"].as_array().cloned().unwrap_or_default();
        for parameter in parameters.iter().filter(|p| p["type"] == "text") {
            let text = parameter["text"].as_str().unwrap_or_default();
            if text.is_empty() {
                return Err(GraphError::invalid("Param text of a template parameter must not be empty."));
            }
            if text.contains(['\n', '\t']) || text.contains("     ") {
                return Err(GraphError::new(
                    400,
                    132018,
                    "There was an issue with the parameters in your template.",
                    Some("Param text cannot have new-line/tab characters or more than 4 consecutive spaces"),
                ));
            }
            if component["type"] == "body" && text.chars().count() > 1024 {
                return Err(GraphError::new(
                    400,
                    132005,
                    "Template Hydrated Text Too Long",
                    Some("Translated text too long"),
                ));
            }
        }
    }
    Ok(())
}

/// The `X-Hub-Signature-256` Meta would send with `body`: `sha256=` + hex HMAC-SHA256(app secret, body).
pub fn sign(app_secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(app_secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The profile name [`webhook_body`] gives the sender `wa_id`.
pub fn profile_name(wa_id: &str) -> String {
    format!("User {wa_id}")
}

fn now_secs() -> String {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0).to_string()
}

fn message(wamid: &str, from: &str, kind: &str) -> Value {
    json!({"from": from, "id": wamid, "timestamp": now_secs(), "type": kind})
}

/// A text message from `from`, timestamped now.
pub fn text_message(wamid: &str, from: &str, text: &str) -> Value {
    let mut m = message(wamid, from, "text");
    m["text"] = json!({ "body": text });
    m
}

/// A pressed interactive reply button (`button_reply` with the button's `id` and `title`).
pub fn button_reply(wamid: &str, from: &str, id: &str, title: &str) -> Value {
    let mut m = message(wamid, from, "interactive");
    m["context"] = json!({"from": DISPLAY_PHONE_NUMBER, "id": "wamid.context"});
    m["interactive"] = json!({"type": "button_reply", "button_reply": {"id": id, "title": title}});
    m
}

/// An image with media id `media_id` and an optional caption.
pub fn image_message(wamid: &str, from: &str, media_id: &str, caption: Option<&str>) -> Value {
    let mut m = message(wamid, from, "image");
    m["image"] = json!({"mime_type": "image/jpeg", "sha256": "IMAGE_HASH", "id": media_id});
    if let Some(caption) = caption {
        m["image"]["caption"] = json!(caption);
    }
    m
}

/// A shared location, with the place's name and address when given.
pub fn location_message(
    wamid: &str,
    from: &str,
    latitude: f64,
    longitude: f64,
    name: Option<&str>,
    address: Option<&str>,
) -> Value {
    let mut m = message(wamid, from, "location");
    m["location"] = json!({"latitude": latitude, "longitude": longitude});
    if let Some(name) = name {
        m["location"]["name"] = json!(name);
    }
    if let Some(address) = address {
        m["location"]["address"] = json!(address);
    }
    m
}

/// A delivery status (`sent`, `delivered`, `read`, `played`) of message `wamid`.
pub fn status_update(wamid: &str, recipient: &str, status: &str) -> Value {
    let mut s = json!({"id": wamid, "status": status, "timestamp": now_secs(), "recipient_id": recipient});
    if status == "sent" || status == "delivered" {
        s["pricing"] =
            json!({"billable": false, "pricing_model": "PMP", "type": "free_customer_service", "category": "service"});
    }
    s
}

/// A `failed` status of message `wamid` with one error, as Meta reports it.
pub fn failed_status(wamid: &str, recipient: &str, code: u32, title: &str) -> Value {
    let mut s = status_update(wamid, recipient, "failed");
    s["errors"] = json!([{
        "code": code,
        "title": title,
        "message": title,
        "error_data": {"details": format!("{title}.")},
        "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
    }]);
    s
}

fn value(phone_number_id: &str) -> Value {
    json!({
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": DISPLAY_PHONE_NUMBER, "phone_number_id": phone_number_id},
    })
}

/// The webhook body carrying `messages` (with a `contacts` entry named [`profile_name`] for
/// each sender) and `statuses` for `phone_number_id`, in Meta's envelope (sign it with [`sign`]).
pub fn webhook_body(phone_number_id: &str, messages: &[Value], statuses: &[Value]) -> Vec<u8> {
    let mut changes = Vec::new();
    if !messages.is_empty() {
        let mut senders: Vec<&str> = Vec::new();
        for from in messages.iter().filter_map(|m| m["from"].as_str()) {
            if !senders.contains(&from) {
                senders.push(from);
            }
        }
        let contacts: Vec<Value> =
            senders.iter().map(|w| json!({"profile": {"name": profile_name(w)}, "wa_id": w})).collect();
        let mut v = value(phone_number_id);
        v["contacts"] = json!(contacts);
        v["messages"] = json!(messages);
        changes.push(json!({"value": v, "field": "messages"}));
    }
    if !statuses.is_empty() || messages.is_empty() {
        let mut v = value(phone_number_id);
        if !statuses.is_empty() {
            v["statuses"] = json!(statuses);
        }
        changes.push(json!({"value": v, "field": "messages"}));
    }
    let body = json!({"object": "whatsapp_business_account", "entry": [{"id": WABA_ID, "changes": changes}]});
    serde_json::to_vec(&body).expect("JSON")
}

fn bearer_ok(st: &WhatsappState, headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(format!("Bearer {}", st.token).as_str())
}

/// `GET /{version}/{media_id}`: where to download a medium, valid for 5 minutes at Meta.
async fn media_info(
    State(st): State<WhatsappState>,
    axum::extract::Path((_version, media_id)): axum::extract::Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if !bearer_ok(&st, &headers) {
        let e = bad_token();
        return (StatusCode::from_u16(e.status).unwrap_or(StatusCode::UNAUTHORIZED), Json(e.json())).into_response();
    }
    let log = st.log.lock().unwrap();
    match log.media.get(&media_id) {
        Some((mime, bytes)) => Json(json!({
            "messaging_product": "whatsapp",
            "url": format!("{}/whatsapp_business/attachments/?mid={media_id}&ext=1&hash=ATtest", st.base),
            "mime_type": mime,
            "sha256": "HASH",
            "file_size": bytes.len(),
            "id": media_id,
        }))
        .into_response(),
        None => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"message": format!("Unsupported get request. Object with ID '{media_id}' does not exist"),
                "type": "GraphMethodException", "code": 100, "error_subcode": 33, "fbtrace_id": "Afake"}})),
        )
            .into_response(),
    }
}

/// The download url of a medium: its bytes, with the Bearer token only.
async fn media_download(
    State(st): State<WhatsappState>,
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if !bearer_ok(&st, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let id = q.get("mid").cloned().unwrap_or_default();
    let mut log = st.log.lock().unwrap();
    log.downloads.push(id.clone());
    match log.media.get(&id) {
        Some((mime, bytes)) => ([(axum::http::header::CONTENT_TYPE, mime.clone())], bytes.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
