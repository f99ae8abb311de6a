//! A fake Telegram Bot API: `POST /bot{token}/{method}` for the right token only (any other
//! token gets 401 like the real API), JSON bodies in and `{ok, result}` / `{ok:false,
//! error_code, description, parameters?}` out. It records every call in order, checks what
//! Telegram checks on `sendMessage` (text 1-4096 characters, callback_data 1-64 bytes), keeps
//! the webhook registration, refuses `getUpdates` while a webhook is set (409, as Telegram
//! does), serves queued updates to `getUpdates` honouring `offset`, and can be told to fail.
//! Files put with [`FakeTelegram::put_file`] are described by `getFile` (`file_path`,
//! `file_size`) and downloaded from `GET /file/bot{token}/{file_path}`, as Telegram serves them.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::Json;
use axum::Router;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

/// A long poll waits at most this long for an update, whatever `timeout` asks (tests stay fast).
const MAX_LONG_POLL: Duration = Duration::from_secs(2);

/// One call as the fake saw it.
#[derive(Debug, Clone)]
pub struct TelegramRequest {
    /// When the fake received it.
    pub at: Instant,
    /// `sendMessage`, `getUpdates`, ...
    pub method: String,
    pub body: Value,
    /// The HTTP status the fake answered.
    pub status: u16,
}

#[derive(Default)]
struct TelegramLog {
    /// Every call with the right token, in arrival order.
    requests: Vec<TelegramRequest>,
    /// Calls with a wrong token (answered 401, not recorded above).
    wrong_token: usize,
    /// Answer the next `fail_count` calls (except `getUpdates`) with `fail_status`.
    fail_count: usize,
    fail_status: u16,
    /// Updates not yet confirmed by a `getUpdates` offset.
    queued: Vec<Value>,
    /// The body of the last successful `setWebhook` with a non-empty url.
    webhook: Option<Value>,
    next_message_id: i64,
    /// file_id -> (file_path, content type, bytes)
    files: Vec<(String, String, String, Vec<u8>)>,
    /// Downloads from `/file/...` with the right token, by path.
    downloads: Vec<String>,
}

#[derive(Clone)]
struct TelegramState {
    token: Arc<str>,
    log: Arc<Mutex<TelegramLog>>,
    queued: Arc<Notify>,
}

pub struct FakeTelegram {
    pub addr: SocketAddr,
    log: Arc<Mutex<TelegramLog>>,
    queued: Arc<Notify>,
}

impl FakeTelegram {
    /// Start on a free loopback port, accepting `bot_token` only.
    pub async fn start(bot_token: &str) -> FakeTelegram {
        let log = Arc::new(Mutex::new(TelegramLog::default()));
        let queued = Arc::new(Notify::new());
        let state = TelegramState { token: bot_token.into(), log: log.clone(), queued: queued.clone() };
        let app = Router::new().route("/file/{*rest}", axum::routing::get(file)).fallback(handle).with_state(state);
        let addr = crate::serve_on_loopback(app).await;
        FakeTelegram { addr, log, queued }
    }

    /// The `api_base` to configure (`telegram.api_base`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every call with the right token, in order (failed ones included, see `status`).
    pub fn requests(&self) -> Vec<TelegramRequest> {
        self.log.lock().unwrap().requests.clone()
    }

    /// The calls of one method, in order (failed ones included).
    pub fn calls(&self, method: &str) -> Vec<TelegramRequest> {
        self.requests().into_iter().filter(|r| r.method == method).collect()
    }

    /// How many calls came with a wrong token.
    pub fn wrong_token_calls(&self) -> usize {
        self.log.lock().unwrap().wrong_token
    }

    /// Bodies of the accepted `sendMessage` calls, in order.
    pub fn sent_messages(&self) -> Vec<Value> {
        let log = self.log.lock().unwrap();
        log.requests.iter().filter(|r| r.method == "sendMessage" && r.status == 200).map(|r| r.body.clone()).collect()
    }

    /// Wait until at least `n` `sendMessage` calls were accepted and return their bodies;
    /// panics after `timeout` listing every call that arrived.
    pub async fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let sent = self.sent_messages();
            if sent.len() >= n {
                return sent;
            }
            if start.elapsed() > timeout {
                let calls: Vec<String> =
                    self.requests().iter().map(|r| format!("  {} -> {}: {}", r.method, r.status, r.body)).collect();
                panic!(
                    "timed out after {timeout:?} waiting for {n} accepted sendMessage calls; {} accepted. Calls:\n{}",
                    sent.len(),
                    calls.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A file users may have sent: `getFile` with `file_id` answers `file_path`, whose download
    /// serves `bytes` as `content_type`.
    pub fn put_file(&self, file_id: &str, file_path: &str, content_type: &str, bytes: &[u8]) {
        let mut log = self.log.lock().unwrap();
        log.files.push((file_id.into(), file_path.into(), content_type.into(), bytes.to_vec()));
    }

    /// The paths downloaded from `/file/bot{token}/...`, in order.
    pub fn downloads(&self) -> Vec<String> {
        self.log.lock().unwrap().downloads.clone()
    }

    /// Answer the next `n` calls (any method but `getUpdates`) with `status`: 429 comes with
    /// `parameters.retry_after = 1`, like Telegram's flood control.
    pub fn fail_next(&self, n: usize, status: u16) {
        let mut log = self.log.lock().unwrap();
        log.fail_count = n;
        log.fail_status = status;
    }

    /// Make `update` available to `getUpdates` (until an offset above its `update_id` confirms it).
    pub fn queue_update(&self, update: Value) {
        self.log.lock().unwrap().queued.push(update);
        self.queued.notify_waiters();
    }

    /// The current webhook registration: the last accepted `setWebhook` body, `None` after
    /// `deleteWebhook` or a `setWebhook` with an empty url.
    pub fn webhook_registration(&self) -> Option<Value> {
        self.log.lock().unwrap().webhook.clone()
    }
}

fn ok(result: Value) -> (StatusCode, Json<Value>) {
    (StatusCode::OK, Json(json!({"ok": true, "result": result})))
}

fn error(status: u16, description: &str) -> (StatusCode, Json<Value>) {
    let mut body = json!({"ok": false, "error_code": status, "description": description});
    if status == 429 {
        body["parameters"] = json!({"retry_after": 1});
    }
    (StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), Json(body))
}

fn description_of(status: u16) -> &'static str {
    match status {
        400 => "Bad Request: something is wrong",
        401 => "Unauthorized",
        403 => "Forbidden: bot was blocked by the user",
        404 => "Not Found",
        409 => "Conflict: terminated by other getUpdates request",
        429 => "Too Many Requests: retry after 1",
        502 => "Bad Gateway",
        _ => "Internal Server Error",
    }
}

async fn handle(State(st): State<TelegramState>, uri: Uri, body: Bytes) -> (StatusCode, Json<Value>) {
    let Some((token, method)) = uri.path().strip_prefix("/bot").and_then(|rest| rest.split_once('/')) else {
        return error(404, "Not Found");
    };
    if token != &*st.token {
        st.log.lock().unwrap().wrong_token += 1;
        return error(401, "Unauthorized");
    }
    let method = method.to_string();
    let body: Value = if body.is_empty() { json!({}) } else { serde_json::from_slice(&body).unwrap_or(Value::Null) };
    if method == "getUpdates" {
        return get_updates(&st, body).await;
    }
    let mut log = st.log.lock().unwrap();
    let answer = answer(&mut log, &method, &body);
    log.requests.push(TelegramRequest { at: Instant::now(), method, body, status: answer.0.as_u16() });
    answer
}

/// The answer to one call other than `getUpdates`.
fn answer(log: &mut TelegramLog, method: &str, body: &Value) -> (StatusCode, Json<Value>) {
    if log.fail_count > 0 {
        log.fail_count -= 1;
        let status = log.fail_status;
        return error(status, description_of(status));
    }
    if !body.is_object() {
        return error(400, "Bad Request: the request body must be a JSON object");
    }
    match method {
        "getFile" => {
            let id = body["file_id"].as_str().unwrap_or_default();
            match log.files.iter().find(|f| f.0 == id) {
                Some((file_id, path, _, bytes)) => ok(json!({
                    "file_id": file_id,
                    "file_unique_id": format!("u-{file_id}"),
                    "file_size": bytes.len(),
                    "file_path": path,
                })),
                None => error(400, "Bad Request: invalid file_id"),
            }
        }
        "sendMessage" => {
            if let Err(problem) = check_send_message(body) {
                return error(400, &format!("Bad Request: {problem}"));
            }
            log.next_message_id += 1;
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            ok(json!({
                "message_id": log.next_message_id,
                "date": now,
                "chat": {"id": body["chat_id"], "type": "private"},
                "text": body["text"],
            }))
        }
        "answerCallbackQuery" => match body["callback_query_id"].as_str() {
            Some(id) if !id.is_empty() => ok(json!(true)),
            _ => error(400, "Bad Request: query is too old and response timeout expired or query ID is invalid"),
        },
        "setWebhook" => match body["url"].as_str() {
            Some("") => {
                log.webhook = None;
                ok(json!(true))
            }
            Some(_) => {
                log.webhook = Some(body.clone());
                ok(json!(true))
            }
            None => error(400, "Bad Request: bad webhook: url is missing"),
        },
        "deleteWebhook" => {
            log.webhook = None;
            ok(json!(true))
        }
        _ => error(404, "Not Found: method not found"),
    }
}

/// What Telegram would refuse in a `sendMessage` body.
fn check_send_message(body: &Value) -> Result<(), String> {
    match &body["chat_id"] {
        Value::Number(n) if n.is_i64() => {}
        Value::String(s) if !s.is_empty() => {}
        _ => return Err("chat_id must be an integer or a non-empty string".into()),
    }
    let text = body["text"].as_str().ok_or("message text is empty")?;
    let chars = text.chars().count();
    if chars == 0 {
        return Err("message text is empty".into());
    }
    if chars > 4096 {
        return Err("message is too long".into());
    }
    if let Some(markup) = body.get("reply_markup") {
        let rows = markup["inline_keyboard"].as_array().ok_or("reply_markup must have inline_keyboard")?;
        for button in rows.iter().flat_map(|row| row.as_array().cloned().unwrap_or_default()) {
            let text = button["text"].as_str().unwrap_or_default();
            let data = button["callback_data"].as_str().unwrap_or_default();
            if text.is_empty() {
                return Err("text buttons are unallowed in the inline keyboard".into());
            }
            if data.is_empty() || data.len() > 64 {
                return Err("BUTTON_DATA_INVALID".into());
            }
        }
    }
    Ok(())
}

/// `getUpdates`: confirm (drop) updates below `offset`, then answer the rest, waiting up to
/// `timeout` (capped at [`MAX_LONG_POLL`]) for one to be queued.
async fn get_updates(st: &TelegramState, body: Value) -> (StatusCode, Json<Value>) {
    let offset = body["offset"].as_i64();
    let wait = Duration::from_secs(body["timeout"].as_u64().unwrap_or(0)).min(MAX_LONG_POLL);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        // Registered before looking, so a queue_update in between is not missed.
        let notified = st.queued.notified();
        let pending = {
            let mut log = st.log.lock().unwrap();
            let answer = if log.webhook.is_some() {
                Some(error(409, "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first"))
            } else {
                if let Some(offset) = offset {
                    log.queued.retain(|u| u["update_id"].as_i64().is_none_or(|id| id >= offset));
                }
                let pending: Vec<Value> = log.queued.iter().take(100).cloned().collect();
                (!pending.is_empty() || tokio::time::Instant::now() >= deadline).then(|| ok(Value::Array(pending)))
            };
            if let Some(answer) = &answer {
                let status = answer.0.as_u16();
                log.requests.push(TelegramRequest {
                    at: Instant::now(),
                    method: "getUpdates".into(),
                    body: body.clone(),
                    status,
                });
            }
            answer
        };
        if let Some(answer) = pending {
            return answer;
        }
        let _ = tokio::time::timeout_at(deadline, notified).await;
    }
}

fn test_user(chat_id: i64) -> Value {
    json!({
        "id": chat_id, "is_bot": false, "first_name": "Test", "last_name": "User",
        "username": "test_user", "language_code": "en"
    })
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A private-chat text message update, as Telegram sends it.
/// A photo (in two sizes, the larger `file_id` last) with a caption, as Telegram sends it.
pub fn photo_update(update_id: i64, chat_id: i64, file_id: &str, caption: &str) -> Value {
    let mut update = text_update(update_id, chat_id, "");
    let message = update["message"].as_object_mut().expect("a message");
    message.remove("text");
    message.insert(
        "photo".into(),
        json!([
            {"file_id": format!("{file_id}-small"), "file_unique_id": "s", "file_size": 1200, "width": 90, "height": 67},
            {"file_id": file_id, "file_unique_id": "l", "file_size": 48_000, "width": 1280, "height": 960},
        ]),
    );
    message.insert("caption".into(), json!(caption));
    update
}

pub fn text_update(update_id: i64, chat_id: i64, text: &str) -> Value {
    json!({
        "update_id": update_id,
        "message": {
            "message_id": update_id,
            "date": unix_now(),
            "from": test_user(chat_id),
            "chat": {"id": chat_id, "type": "private", "first_name": "Test", "last_name": "User", "username": "test_user"},
            "text": text,
        }
    })
}

/// A button press on a message the bot sent in a private chat; the query id is `cq<update_id>`.
pub fn callback_update(update_id: i64, chat_id: i64, data: &str) -> Value {
    json!({
        "update_id": update_id,
        "callback_query": {
            "id": format!("cq{update_id}"),
            "from": test_user(chat_id),
            "chat_instance": "-4315678901234567890",
            "message": {
                "message_id": 1,
                "date": unix_now(),
                "from": {"id": 1, "is_bot": true, "first_name": "Baton", "username": "baton_bot"},
                "chat": {"id": chat_id, "type": "private", "first_name": "Test"},
                "text": "Choose an option",
            },
            "data": data,
        }
    })
}

/// `GET /file/bot{token}/{file_path}`: a file's bytes, for the right token only.
async fn file(State(st): State<TelegramState>, uri: Uri) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Some((token, path)) = uri.path().strip_prefix("/file/bot").and_then(|rest| rest.split_once('/')) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if token != &*st.token {
        st.log.lock().unwrap().wrong_token += 1;
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let mut log = st.log.lock().unwrap();
    log.downloads.push(path.to_string());
    match log.files.iter().find(|f| f.1 == path) {
        Some((_, _, content_type, bytes)) => {
            ([(axum::http::header::CONTENT_TYPE, content_type.clone())], bytes.clone()).into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
