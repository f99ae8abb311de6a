//! Telegram Bot API: the webhook's secret-token check, parsing of updates (a webhook body or
//! one entry of a `getUpdates` result, with the same parser), and the calls the hub makes:
//! `sendMessage`, `answerCallbackQuery`, `setWebhook`, `deleteWebhook`, `getUpdates`, and
//! `getFile` with the download of a file a user sent (for the hub's media links).
//!
//! The bot token is part of every URL (`{api_base}/bot<token>/<method>`), so a URL is never
//! put into a message or a log line: errors name the method only, transport errors are
//! formatted `without_url`, and every error message is scrubbed of the token as a last guard.
//!
//! Wire facts checked before writing this (PROTOCOLS.md §6 and):
//! - [C] method parameters, from the Bot API text as generated into Telegex
//!   (`lib/telegex.ex`, "All methods in the Bot API"): `getUpdates` takes `offset` ("greater by
//!   one than the highest ... update_id"; an update is confirmed once `getUpdates` is called with
//!   a higher offset), `limit`, `timeout` (seconds) and `allowed_updates`; `setWebhook` takes `url`,
//!   `allowed_updates`, `drop_pending_updates` and `secret_token` (1-256 of `A-Z a-z 0-9 _ -`, sent
//!   back in `X-Telegram-Bot-Api-Secret-Token` on every webhook request); `deleteWebhook` takes
//!   only `drop_pending_updates`; `sendMessage` takes `chat_id` (integer or string), `text`
//!   ("1-4096 characters after entities parsing") and `reply_markup` (an `InlineKeyboardMarkup`).
//! - [C] files: `getFile(file_id)` answers a `File` with `file_path`, downloadable from
//!   `https://api.telegram.org/file/bot<token>/<file_path>` for at least an hour; bots can
//!   download files up to 20 MB; a photo arrives as an array of `PhotoSize`, smallest first
//!   (Bot API "getFile" and "PhotoSize", as copied into Telegex).
//! - [C] `InlineKeyboardButton.callback_data` is "1-64 bytes" (python-telegram-bot, grammY and
//!   docs.rs telegram-typings all copy the Bot API sentence); clients show a progress bar until
//!   `answerCallbackQuery(callback_query_id)` is called.
//! - [C] `ResponseParameters.retry_after`: "in case of exceeding flood control, the number of
//!   seconds left to wait before the request can be repeated" (hxtelegrambot, docs.rs crates).
//! - [S] an unknown token answers 401 `Unauthorized`, a malformed one 404 `Not Found`;
//!   a user who blocked the bot gives 403 `Forbidden: bot was blocked by the user`.
//!
//! Not confirmed:
//! - whether the 4096 limit counts UTF-16 code units (as entity offsets do) or characters; we
//!   check characters, as the core splits by characters.
//! - how long Telegram waits for the webhook's answer, and its retry schedule.
//! - the set of message content fields is taken from the Bot API `Message` object as of 2025;
//!   a message with none of them (a service message: pinned, joined, ...) is ignored.

use crate::media::{download, valid_media_id, Fetched, MAX_MEDIA_BYTES};
use crate::outbound::{quote, read_limited, transport_error};
use baton_core::agent::TelegramConfig;
use baton_core::model::OutMessage;
use baton_core::ports::DeliveryError;
use serde_json::{json, Map, Value};
use std::time::Duration;
use subtle::ConstantTimeEq;

/// The webhook header carrying the `secret_token` registered with `setWebhook`.
pub const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";
/// Longest `sendMessage` text, in characters.
pub const MAX_TEXT_CHARS: usize = 4096;
/// Longest `callback_data` of an inline keyboard button, in bytes.
pub const MAX_CALLBACK_DATA_BYTES: usize = 64;
/// Longest webhook body accepted (an update is a few KiB; this leaves room for quoted replies).
pub const MAX_UPDATE_BYTES: usize = 1024 * 1024;
/// The update types the hub asks for (webhook and long polling alike).
pub const ALLOWED_UPDATES: [&str; 2] = ["message", "callback_query"];
/// `getUpdates` waits this much longer than the long-poll timeout before giving up on the call.
const LONG_POLL_GRACE: Duration = Duration::from_secs(10);
/// Response bodies are read up to this size (up to 100 updates per `getUpdates`).
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Message fields that carry content we do not relay (files and locations are handled first).
const UNSUPPORTED_CONTENT: &[&str] = &["contact", "dice", "game", "giveaway", "invoice", "paid_media", "poll", "story"];

/// Constant-time check of the webhook's secret token header against `config.secret_token`.
/// An empty configured secret accepts nothing, so a missing setting cannot open the webhook.
pub fn verify_secret(config: &TelegramConfig, header: Option<&str>) -> bool {
    let expected = config.secret_token.expose().as_bytes();
    match header {
        Some(given) if !expected.is_empty() => given.as_bytes().ct_eq(expected).into(),
        _ => false,
    }
}

/// One update the hub acts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Inbound {
    pub update_id: i64,
    /// The chat to answer in (the user's id in a private chat).
    pub chat_id: String,
    pub kind: InboundKind,
    /// The user's `language_code` (IETF tag), when Telegram sends it.
    pub language: Option<String>,
    /// "First Last" when the user has a first name, else the `@username` without the `@`.
    pub user_name: Option<String>,
    /// Set for button presses: answer it with [`TelegramClient::answer_callback`].
    pub callback_query_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum InboundKind {
    Text(String),
    /// A pressed inline button: its `callback_query.data`.
    Button(String),
    /// A file: its content field (`photo`, `voice`, `document`, ...), the `file_id` that
    /// `getFile` turns into a download, the caption and, for documents, the file name.
    Media {
        kind: String,
        file_id: String,
        caption: Option<String>,
        file_name: Option<String>,
    },
    /// A shared location, or a venue with its title and address.
    Location {
        latitude: f64,
        longitude: f64,
        place: Option<String>,
    },
    /// A message we cannot relay, named by its content field (`contact`, `poll`, `dice`, ...);
    /// `game` or `callback_query` for button presses without data.
    Unsupported(String),
}

/// A placeholder for what is not text, so a human sees what arrived:
/// `[photo: caption]`, `[document "report.pdf"]`, `[location: 45.81, 15.98 Zagreb]`,
/// `[poll]`. The caller appends a link to a file when it can offer one.
pub fn describe(kind: &InboundKind) -> String {
    match kind {
        InboundKind::Text(text) | InboundKind::Button(text) => text.clone(),
        InboundKind::Media { kind, caption, file_name, .. } => {
            let mut out = format!("[{kind}");
            if let Some(name) = file_name {
                out.push_str(&format!(" \"{name}\""));
            }
            if let Some(caption) = caption {
                out.push_str(&format!(": {caption}"));
            }
            out.push(']');
            out
        }
        InboundKind::Location { latitude, longitude, place: Some(place) } => {
            format!("[location: {latitude}, {longitude} {place}]")
        }
        InboundKind::Location { latitude, longitude, place: None } => format!("[location: {latitude}, {longitude}]"),
        InboundKind::Unsupported(kind) => format!("[{kind}]"),
    }
}

/// Message fields that carry a file, in the order they are checked (`animation` first: such
/// messages also carry `document` for old clients).
const MEDIA_CONTENT: &[&str] = &["animation", "photo", "video", "video_note", "voice", "audio", "document", "sticker"];

/// The file of a message, if it carries one: a photo comes in several sizes, the largest last.
/// A file without a usable id is still reported, as unsupported.
fn media(message: &Map<String, Value>) -> Option<InboundKind> {
    let kind = MEDIA_CONTENT.iter().find(|k| message.contains_key(**k))?;
    let content = match message.get(*kind)? {
        Value::Array(sizes) => sizes.last().unwrap_or(&Value::Null),
        other => other,
    };
    let Some(file_id) = content.get("file_id").and_then(Value::as_str).filter(|id| !id.is_empty()) else {
        return Some(InboundKind::Unsupported((*kind).to_string()));
    };
    let file_id = file_id.to_string();
    let text =
        |v: Option<&Value>| v.and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty()).map(str::to_string);
    Some(InboundKind::Media {
        kind: (*kind).to_string(),
        file_id,
        caption: text(message.get("caption")),
        file_name: text(content.get("file_name")),
    })
}

/// A location or venue message (unsupported when its coordinates are unreadable).
fn location(message: &Map<String, Value>) -> Option<InboundKind> {
    let venue = message.get("venue");
    let at = venue.and_then(|v| v.get("location")).or_else(|| message.get("location"))?;
    let coordinate = |k: &str| at.get(k).and_then(Value::as_f64);
    let (Some(latitude), Some(longitude)) = (coordinate("latitude"), coordinate("longitude")) else {
        return Some(InboundKind::Unsupported("location".into()));
    };
    let place: Vec<&str> = ["title", "address"]
        .iter()
        .filter_map(|k| venue.and_then(|v| v.get(*k)).and_then(Value::as_str))
        .filter(|s| !s.trim().is_empty())
        .collect();
    Some(InboundKind::Location { latitude, longitude, place: (!place.is_empty()).then(|| place.join(", ")) })
}

/// Why an update is rejected; `Field` names the field (`message.chat.id: missing`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("update is larger than {MAX_UPDATE_BYTES} bytes")]
    TooLarge,
    #[error("update is not JSON: {0}")]
    NotJson(String),
    #[error("update must be a JSON object")]
    NotObject,
    #[error("{field}: {message}")]
    Field { field: &'static str, message: String },
}

fn field_error(field: &'static str, message: impl Into<String>) -> ParseError {
    ParseError::Field { field, message: message.into() }
}

/// Parse a webhook body. `Ok(None)` for update types we do not handle (`edited_message`,
/// `channel_post`, `my_chat_member`, ...) and for service messages; the caller still answers 200.
pub fn parse_update(body: &[u8]) -> Result<Option<Inbound>, ParseError> {
    if body.len() > MAX_UPDATE_BYTES {
        return Err(ParseError::TooLarge);
    }
    let update: Value = serde_json::from_slice(body).map_err(|e| ParseError::NotJson(e.to_string()))?;
    parse_update_value(&update)
}

fn parse_update_value(update: &Value) -> Result<Option<Inbound>, ParseError> {
    let Value::Object(update) = update else {
        return Err(ParseError::NotObject);
    };
    let update_id = required_i64(update.get("update_id"), "update_id")?;
    if let Some(message) = update.get("message") {
        return parse_message(update_id, message);
    }
    if let Some(query) = update.get("callback_query") {
        return parse_callback_query(update_id, query).map(Some);
    }
    Ok(None)
}

fn parse_message(update_id: i64, message: &Value) -> Result<Option<Inbound>, ParseError> {
    let Value::Object(message) = message else {
        return Err(field_error("message", "must be an object"));
    };
    let chat_id = required_i64(message.get("chat").and_then(|c| c.get("id")), "message.chat.id")?;
    let kind = match message.get("text") {
        Some(Value::String(text)) => InboundKind::Text(text.clone()),
        Some(_) => return Err(field_error("message.text", "must be a string")),
        None => match media(message).or_else(|| location(message)) {
            Some(kind) => kind,
            None => match UNSUPPORTED_CONTENT.iter().find(|k| message.contains_key(**k)) {
                Some(kind) => InboundKind::Unsupported((*kind).to_string()),
                None => return Ok(None),
            },
        },
    };
    let from = message.get("from").and_then(Value::as_object);
    Ok(Some(Inbound {
        update_id,
        chat_id: chat_id.to_string(),
        kind,
        language: language(from),
        user_name: user_name(from),
        callback_query_id: None,
    }))
}

/// A button press. The chat is the one of the message carrying the keyboard; without it
/// (messages sent in inline mode) the pressing user's private chat.
fn parse_callback_query(update_id: i64, query: &Value) -> Result<Inbound, ParseError> {
    let Value::Object(query) = query else {
        return Err(field_error("callback_query", "must be an object"));
    };
    let id = match query.get("id") {
        Some(Value::String(id)) if !id.is_empty() => id.clone(),
        None | Some(Value::Null) => return Err(field_error("callback_query.id", "missing")),
        Some(_) => return Err(field_error("callback_query.id", "must be a non-empty string")),
    };
    let from = query.get("from").and_then(Value::as_object);
    let chat_id = match query.get("message").and_then(|m| m.get("chat")).and_then(|c| c.get("id")) {
        Some(chat_id) => required_i64(Some(chat_id), "callback_query.message.chat.id")?,
        None => required_i64(from.and_then(|f| f.get("id")), "callback_query.from.id")?,
    };
    let kind = match query.get("data") {
        Some(Value::String(data)) => InboundKind::Button(data.clone()),
        None | Some(Value::Null) if query.contains_key("game_short_name") => InboundKind::Unsupported("game".into()),
        None | Some(Value::Null) => InboundKind::Unsupported("callback_query".into()),
        Some(_) => return Err(field_error("callback_query.data", "must be a string")),
    };
    Ok(Inbound {
        update_id,
        chat_id: chat_id.to_string(),
        kind,
        language: language(from),
        user_name: user_name(from),
        callback_query_id: Some(id),
    })
}

fn required_i64(value: Option<&Value>, field: &'static str) -> Result<i64, ParseError> {
    match value {
        None | Some(Value::Null) => Err(field_error(field, "missing")),
        Some(v) => v.as_i64().ok_or_else(|| field_error(field, "must be an integer")),
    }
}

fn non_empty_str<'a>(user: Option<&'a Map<String, Value>>, key: &str) -> Option<&'a str> {
    user?.get(key)?.as_str().map(str::trim).filter(|s| !s.is_empty())
}

fn language(from: Option<&Map<String, Value>>) -> Option<String> {
    non_empty_str(from, "language_code").map(str::to_string)
}

fn user_name(from: Option<&Map<String, Value>>) -> Option<String> {
    match (non_empty_str(from, "first_name"), non_empty_str(from, "last_name")) {
        (Some(first), Some(last)) => Some(format!("{first} {last}")),
        (Some(first), None) => Some(first.to_string()),
        _ => non_empty_str(from, "username").map(str::to_string),
    }
}

/// What one `getUpdates` call returned.
#[derive(Debug, Clone, PartialEq)]
pub struct Polled {
    /// The updates the hub acts on, in Telegram's order.
    pub updates: Vec<Inbound>,
    /// Offset for the next getUpdates (last update_id + 1); `None` when nothing came back
    /// (keep the offset you have). Skipped and unparseable updates advance it too.
    pub next_offset: Option<i64>,
}

/// Calls the Bot API. One client (connection pool) for every bot.
#[derive(Debug, Clone)]
pub struct TelegramClient {
    client: reqwest::Client,
    timeout: Duration,
}

impl TelegramClient {
    /// Reuse an existing client (see [`crate::outbound::http_client`]); `timeout` is applied to
    /// every request except `getUpdates`, which waits for its long-poll timeout plus 10 s.
    pub fn from_client(client: reqwest::Client, timeout: Duration) -> Self {
        TelegramClient { client, timeout }
    }

    /// sendMessage with chat_id, text, and reply_markup inline_keyboard (one button per row,
    /// callback_data = button.value; callback_data > 64 bytes is a Permanent error). Text is at
    /// most 4096 chars (the core already splits); if longer, return Permanent.
    pub async fn send(
        &self,
        config: &TelegramConfig,
        chat_id: &str,
        message: &OutMessage,
    ) -> Result<(), DeliveryError> {
        let body = send_message_body(chat_id, message)?;
        self.call(config, "sendMessage", &body, self.timeout).await.map(drop)
    }

    /// Stop the button's progress indicator on the user's screen.
    pub async fn answer_callback(&self, config: &TelegramConfig, callback_query_id: &str) -> Result<(), DeliveryError> {
        let body = json!({ "callback_query_id": callback_query_id });
        self.call(config, "answerCallbackQuery", &body, self.timeout).await.map(drop)
    }

    /// setWebhook with url, secret_token, allowed_updates ["message","callback_query"].
    pub async fn set_webhook(&self, config: &TelegramConfig, url: &str) -> Result<(), DeliveryError> {
        let secret = config.secret_token.expose();
        let valid_secret = (1..=256).contains(&secret.len())
            && secret.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid_secret {
            return Err(DeliveryError::permanent(
                "telegram.secret_token must be 1-256 characters of A-Z, a-z, 0-9, _ and -",
            ));
        }
        let body = json!({ "url": url, "secret_token": secret, "allowed_updates": ALLOWED_UPDATES });
        self.call(config, "setWebhook", &body, self.timeout).await.map(drop)
    }

    /// Remove the webhook (needed before `getUpdates` works); pending updates are kept.
    pub async fn delete_webhook(&self, config: &TelegramConfig) -> Result<(), DeliveryError> {
        self.call(config, "deleteWebhook", &json!({}), self.timeout).await.map(drop)
    }

    /// getUpdates long poll (offset, timeout seconds, allowed_updates); each update parsed with
    /// the same parser; unparseable updates are skipped with a warning but still advance the offset.
    pub async fn get_updates(
        &self,
        config: &TelegramConfig,
        offset: Option<i64>,
        timeout_secs: u32,
    ) -> Result<Polled, DeliveryError> {
        let mut body = json!({ "timeout": timeout_secs, "allowed_updates": ALLOWED_UPDATES });
        if let Some(offset) = offset {
            body["offset"] = json!(offset);
        }
        let request_timeout = Duration::from_secs(u64::from(timeout_secs)) + LONG_POLL_GRACE;
        match self.call(config, "getUpdates", &body, request_timeout).await? {
            Value::Array(updates) => Ok(collect_updates(&updates)),
            _ => Err(DeliveryError::permanent("Telegram getUpdates answered a result that is not an array")),
        }
    }

    /// Download a file a user sent: `getFile` for its path, then
    /// `{api_base}/file/bot{token}/{file_path}`. Telegram hands out files up to 20 MB; the hub
    /// passes on at most [`crate::media::MAX_MEDIA_BYTES`]. Errors never show the token.
    pub async fn fetch_file(&self, config: &TelegramConfig, file_id: &str) -> Result<Fetched, DeliveryError> {
        let token = config.bot_token.expose();
        if !valid_media_id(file_id) {
            return Err(DeliveryError::permanent("Telegram file id is not valid"));
        }
        let file = self.call(config, "getFile", &json!({ "file_id": file_id }), self.timeout).await?;
        if let Some(size) = file.get("file_size").and_then(Value::as_u64).filter(|n| *n > MAX_MEDIA_BYTES as u64) {
            return Err(crate::media::too_large("Telegram file", size));
        }
        let Some(path) = file.get("file_path").and_then(Value::as_str).filter(|p| !p.is_empty() && !p.contains(".."))
        else {
            return Err(DeliveryError::permanent("Telegram getFile answered without a file_path"));
        };
        // Checked like every method URL; files live under `/file/bot{token}/`.
        method_url(config, "getFile")?;
        let base = config.api_base.trim().trim_end_matches('/');
        let url = format!("{base}/file/bot{token}/{path}");
        download(self.client.get(url), "Telegram file download", self.timeout)
            .await
            .map_err(|e| without_token(e, token))
    }

    /// POST `body` to `method` and return Telegram's `result`; every error is scrubbed of the token.
    async fn call(
        &self,
        config: &TelegramConfig,
        method: &'static str,
        body: &Value,
        timeout: Duration,
    ) -> Result<Value, DeliveryError> {
        let token = config.bot_token.expose();
        self.call_unscrubbed(config, method, body, timeout).await.map_err(|e| without_token(e, token))
    }

    async fn call_unscrubbed(
        &self,
        config: &TelegramConfig,
        method: &'static str,
        body: &Value,
        timeout: Duration,
    ) -> Result<Value, DeliveryError> {
        let what = format!("Telegram {method}");
        let url = method_url(config, method)?;
        let resp = self
            .client
            .post(url)
            .timeout(timeout)
            .json(body)
            .send()
            .await
            .map_err(|e| transport_error(&what, timeout, e))?;
        let status = resp.status().as_u16();
        let retry_after =
            resp.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_string);
        let answer = read_limited(resp, MAX_RESPONSE_BYTES).await;
        tracing::debug!(%what, status, "answered");
        classify(&what, status, retry_after.as_deref(), &answer)
    }
}

/// `{api_base}/bot{token}/{method}`, after checking that the base is an HTTP(S) URL and the
/// token cannot change the URL's meaning (Bot API tokens are `<digits>:<A-Za-z0-9_->`).
fn method_url(config: &TelegramConfig, method: &str) -> Result<String, DeliveryError> {
    let base = config.api_base.trim().trim_end_matches('/');
    match reqwest::Url::parse(base) {
        Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
        _ => return Err(DeliveryError::permanent("telegram.api_base must be an http:// or https:// URL")),
    }
    let token = config.bot_token.expose();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b':' || b == b'_' || b == b'-') {
        return Err(DeliveryError::permanent(
            "telegram.bot_token must be a Bot API token (digits, ':', then letters, digits, _ and -)",
        ));
    }
    Ok(format!("{base}/bot{token}/{method}"))
}

fn send_message_body(chat_id: &str, message: &OutMessage) -> Result<Value, DeliveryError> {
    let chars = message.text.chars().count();
    if chars == 0 {
        return Err(DeliveryError::permanent("Telegram sendMessage: the text is empty"));
    }
    if chars > MAX_TEXT_CHARS {
        return Err(DeliveryError::permanent(format!(
            "Telegram sendMessage: the text has {chars} characters, more than {MAX_TEXT_CHARS}"
        )));
    }
    // Numeric ids go as integers, as the Bot API documents them; `@channel` names as strings.
    let chat_id = match chat_id.trim().parse::<i64>() {
        Ok(id) => json!(id),
        Err(_) => json!(chat_id),
    };
    let mut body = json!({ "chat_id": chat_id, "text": message.text });
    if !message.buttons.is_empty() {
        let mut rows = Vec::with_capacity(message.buttons.len());
        for (i, button) in message.buttons.iter().enumerate() {
            let data_len = button.value.len();
            if data_len == 0 || data_len > MAX_CALLBACK_DATA_BYTES {
                return Err(DeliveryError::permanent(format!(
                    "Telegram sendMessage: button {} value has {data_len} bytes; callback_data must be 1-{MAX_CALLBACK_DATA_BYTES}",
                    i + 1
                )));
            }
            let label = if button.label.trim().is_empty() { &button.value } else { &button.label };
            rows.push(json!([{ "text": label, "callback_data": button.value }]));
        }
        body["reply_markup"] = json!({ "inline_keyboard": rows });
    }
    Ok(body)
}

fn collect_updates(raw: &[Value]) -> Polled {
    let mut updates = Vec::with_capacity(raw.len());
    let mut last_id: Option<i64> = None;
    for update in raw {
        let update_id = update.get("update_id").and_then(Value::as_i64);
        if let Some(id) = update_id {
            last_id = Some(last_id.map_or(id, |last| last.max(id)));
        }
        match parse_update_value(update) {
            Ok(Some(inbound)) => updates.push(inbound),
            Ok(None) => {}
            Err(error) => tracing::warn!(?update_id, %error, "skipping a Telegram update that cannot be parsed"),
        }
    }
    Polled { updates, next_offset: last_id.map(|id| id.saturating_add(1)) }
}

/// Map Telegram's answer to `result` or an error. The answer's `error_code` is preferred
/// to the HTTP status when present (they agree in practice).
fn classify(what: &str, status: u16, retry_after: Option<&str>, body: &[u8]) -> Result<Value, DeliveryError> {
    let answer = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    if (200..300).contains(&status) && answer.get("ok") == Some(&Value::Bool(true)) {
        return Ok(answer.get("result").cloned().unwrap_or(Value::Null));
    }
    let code = answer
        .get("error_code")
        .and_then(Value::as_u64)
        .and_then(|c| u16::try_from(c).ok())
        .filter(|_| answer.get("ok") == Some(&Value::Bool(false)))
        .unwrap_or(status);
    let detail =
        answer.get("description").and_then(Value::as_str).map(|d| format!(": {}", quote(d))).unwrap_or_default();
    let message = format!("{what} answered HTTP {code}{detail}");
    Err(match code {
        200..=299 => DeliveryError::permanent(format!("{what} answered HTTP {status} without \"ok\": true{detail}")),
        429 => {
            let from_body = answer.get("parameters").and_then(|p| p.get("retry_after")).and_then(Value::as_u64);
            DeliveryError::Retryable {
                message,
                retry_after_ms: from_body
                    .map(|s| s.saturating_mul(1000))
                    .or_else(|| crate::outbound::retry_after_ms(retry_after)),
            }
        }
        500..=599 => DeliveryError::Retryable { message, retry_after_ms: crate::outbound::retry_after_ms(retry_after) },
        401 | 404 => DeliveryError::Unauthorized { message: format!("{message} (is the bot token right?)") },
        _ => DeliveryError::permanent(message),
    })
}

/// The same error with every occurrence of the token replaced.
fn without_token(err: DeliveryError, token: &str) -> DeliveryError {
    if token.is_empty() {
        return err;
    }
    let scrub = |m: String| if m.contains(token) { m.replace(token, "<bot token>") } else { m };
    match err {
        DeliveryError::Retryable { message, retry_after_ms } => {
            DeliveryError::Retryable { message: scrub(message), retry_after_ms }
        }
        DeliveryError::Unauthorized { message } => DeliveryError::Unauthorized { message: scrub(message) },
        DeliveryError::Permanent { message } => DeliveryError::Permanent { message: scrub(message) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_core::model::{Button, Role, Secret};

    const TOKEN: &str = "123456:AAH-secret_token-part";

    fn config(api_base: &str) -> TelegramConfig {
        TelegramConfig {
            bot_token: Secret(TOKEN.into()),
            secret_token: Secret("s3cret-Token_1".into()),
            api_base: api_base.into(),
            poll: false,
        }
    }

    fn parse(v: Value) -> Result<Option<Inbound>, ParseError> {
        parse_update(v.to_string().as_bytes())
    }

    fn user() -> Value {
        json!({"id": 42, "is_bot": false, "first_name": "Ada", "last_name": "Lovelace", "username": "ada", "language_code": "en-GB"})
    }

    #[test]
    fn secret_token_is_compared_exactly() {
        let c = config("https://api.telegram.org");
        assert!(verify_secret(&c, Some("s3cret-Token_1")));
        assert!(!verify_secret(&c, Some("s3cret-Token_2")));
        assert!(!verify_secret(&c, Some("s3cret-Token_")));
        assert!(!verify_secret(&c, Some("")));
        assert!(!verify_secret(&c, None));
        let mut empty = c.clone();
        empty.secret_token = Secret(String::new());
        assert!(!verify_secret(&empty, Some("")));
        assert!(!verify_secret(&empty, None));
    }

    #[test]
    fn text_message_parses() {
        let update = json!({
            "update_id": 10000,
            "message": {
                "message_id": 1365, "date": 1441645532, "from": user(),
                "chat": {"id": 42, "type": "private", "first_name": "Ada"},
                "text": "/start hello"
            }
        });
        assert_eq!(
            parse(update),
            Ok(Some(Inbound {
                update_id: 10000,
                chat_id: "42".into(),
                kind: InboundKind::Text("/start hello".into()),
                language: Some("en-GB".into()),
                user_name: Some("Ada Lovelace".into()),
                callback_query_id: None,
            }))
        );
    }

    #[test]
    fn callback_query_parses() {
        let update = json!({
            "update_id": 10001,
            "callback_query": {
                "id": "4382bfdwdsb323b2d9", "from": user(), "chat_instance": "-88",
                "message": {"message_id": 7, "date": 1, "chat": {"id": -1001234, "type": "supergroup"}, "text": "Pick one"},
                "data": "agent"
            }
        });
        let got = parse(update).unwrap().unwrap();
        assert_eq!(got.chat_id, "-1001234");
        assert_eq!(got.kind, InboundKind::Button("agent".into()));
        assert_eq!(got.callback_query_id.as_deref(), Some("4382bfdwdsb323b2d9"));
        // Without the message (inline mode) the user's own chat is used; no data is a game.
        let got = parse(json!({"update_id": 1, "callback_query": {"id": "q", "from": {"id": 7, "username": "bob"}, "game_short_name": "g"}}))
            .unwrap()
            .unwrap();
        assert_eq!((got.chat_id.as_str(), got.user_name.as_deref()), ("7", Some("bob")));
        assert_eq!(got.kind, InboundKind::Unsupported("game".into()));
    }

    #[test]
    fn other_content_is_unsupported_and_other_updates_are_ignored() {
        let photo = json!({"update_id": 5, "message": {"message_id": 1, "date": 1, "chat": {"id": 9, "type": "private"},
            "photo": [{"file_id": "a", "file_unique_id": "b", "width": 90, "height": 90}], "caption": "look"}});
        let photo = parse(photo).unwrap().unwrap().kind;
        assert_eq!(
            photo,
            InboundKind::Media {
                kind: "photo".into(),
                file_id: "a".into(),
                caption: Some("look".into()),
                file_name: None
            }
        );
        assert_eq!(describe(&photo), "[photo: look]");
        // Several sizes: the largest (last) is the one linked.
        let sizes = json!({"update_id": 5, "message": {"message_id": 1, "date": 1, "chat": {"id": 9},
            "photo": [{"file_id": "small"}, {"file_id": "large"}]}});
        assert!(
            matches!(parse(sizes).unwrap().unwrap().kind, InboundKind::Media { ref file_id, .. } if file_id == "large")
        );
        let gif = json!({"update_id": 5, "message": {"message_id": 1, "date": 1, "chat": {"id": 9},
            "animation": {"file_id": "a"}, "document": {"file_id": "a"}}});
        assert!(
            matches!(parse(gif).unwrap().unwrap().kind, InboundKind::Media { ref kind, .. } if kind == "animation")
        );
        let doc = json!({"update_id": 5, "message": {"message_id": 1, "date": 1, "chat": {"id": 9},
            "document": {"file_id": "d1", "file_name": "invoice.pdf", "mime_type": "application/pdf"}}});
        assert_eq!(describe(&parse(doc).unwrap().unwrap().kind), "[document \"invoice.pdf\"]");
        let venue = json!({"update_id": 5, "message": {"message_id": 1, "date": 1, "chat": {"id": 9},
            "location": {"latitude": 45.8131, "longitude": 15.9772},
            "venue": {"location": {"latitude": 45.8131, "longitude": 15.9772}, "title": "Shop", "address": "Ilica 1"}}});
        assert_eq!(describe(&parse(venue).unwrap().unwrap().kind), "[location: 45.8131, 15.9772 Shop, Ilica 1]");
        for kind in ["contact", "poll", "dice"] {
            let v = json!({"update_id": 5, "message": {"message_id": 1, "date": 1, "chat": {"id": 9}, kind: {}}});
            assert_eq!(parse(v).unwrap().unwrap().kind, InboundKind::Unsupported(kind.into()));
        }
        // A file without its id cannot be linked: still not dropped.
        let broken = json!({"update_id": 5, "message": {"message_id": 1, "date": 1, "chat": {"id": 9}, "voice": {}}});
        assert_eq!(parse(broken).unwrap().unwrap().kind, InboundKind::Unsupported("voice".into()));
        let edited =
            json!({"update_id": 6, "edited_message": {"message_id": 1, "date": 1, "chat": {"id": 9}, "text": "x"}});
        assert_eq!(parse(edited), Ok(None));
        assert_eq!(parse(json!({"update_id": 7, "my_chat_member": {}})), Ok(None));
        let joined =
            json!({"update_id": 8, "message": {"message_id": 1, "date": 1, "chat": {"id": 9}, "new_chat_members": []}});
        assert_eq!(parse(joined), Ok(None));
    }

    #[test]
    fn parse_errors_name_the_field() {
        let err = |v: Value| parse(v).unwrap_err().to_string();
        assert_eq!(err(json!({"message": {}})), "update_id: missing");
        assert_eq!(err(json!({"update_id": "1"})), "update_id: must be an integer");
        assert_eq!(err(json!({"update_id": 1, "message": {"text": "x"}})), "message.chat.id: missing");
        assert_eq!(
            err(json!({"update_id": 1, "message": {"chat": {"id": "x"}, "text": "x"}})),
            "message.chat.id: must be an integer"
        );
        assert_eq!(
            err(json!({"update_id": 1, "message": {"chat": {"id": 1}, "text": 5}})),
            "message.text: must be a string"
        );
        assert_eq!(err(json!({"update_id": 1, "message": []})), "message: must be an object");
        assert_eq!(err(json!({"update_id": 1, "callback_query": {"from": {"id": 1}}})), "callback_query.id: missing");
        assert_eq!(err(json!({"update_id": 1, "callback_query": {"id": "q"}})), "callback_query.from.id: missing");
        assert_eq!(
            err(json!({"update_id": 1, "callback_query": {"id": "q", "from": {"id": 1}, "data": 3}})),
            "callback_query.data: must be a string"
        );
        assert!(matches!(parse_update(b"{"), Err(ParseError::NotJson(_))));
        assert_eq!(parse_update(b"[]"), Err(ParseError::NotObject));
        assert_eq!(parse_update(&vec![b' '; MAX_UPDATE_BYTES + 1]), Err(ParseError::TooLarge));
    }

    #[test]
    fn polled_updates_advance_past_unparseable_ones() {
        let raw = vec![
            json!({"update_id": 20, "message": {"message_id": 1, "date": 1, "chat": {"id": 1}, "text": "a"}}),
            json!({"update_id": 21, "message": {"text": "no chat"}}),
            json!({"update_id": 22, "edited_message": {}}),
        ];
        let polled = collect_updates(&raw);
        assert_eq!(polled.updates.len(), 1);
        assert_eq!(polled.next_offset, Some(23));
        assert_eq!(collect_updates(&[]).next_offset, None);
    }

    #[test]
    fn send_body_has_one_button_per_row_and_checks_limits() {
        let mut m = OutMessage::new(Role::Bot, "Choose");
        m.buttons = vec![
            Button { label: "Talk to a human".into(), value: "handoff".into() },
            Button { label: "".into(), value: "other".into() },
        ];
        assert_eq!(
            send_message_body("42", &m).unwrap(),
            json!({"chat_id": 42, "text": "Choose", "reply_markup": {"inline_keyboard": [
                [{"text": "Talk to a human", "callback_data": "handoff"}],
                [{"text": "other", "callback_data": "other"}],
            ]}})
        );
        assert_eq!(send_message_body("@chan", &OutMessage::new(Role::Bot, "x")).unwrap()["chat_id"], json!("@chan"));
        m.buttons[1].value = "é".repeat(33);
        assert!(
            matches!(send_message_body("42", &m), Err(DeliveryError::Permanent { message }) if message.contains("66 bytes"))
        );
        m.buttons[1].value = "x".repeat(64);
        assert!(send_message_body("42", &m).is_ok());
        assert!(send_message_body("1", &OutMessage::new(Role::Bot, "ü".repeat(4096))).is_ok());
        for text in ["ü".repeat(4097), String::new()] {
            assert!(matches!(
                send_message_body("1", &OutMessage::new(Role::Bot, text)),
                Err(DeliveryError::Permanent { .. })
            ));
        }
    }

    #[test]
    fn error_mapping() {
        let classify = |status, retry_after, body: Value| {
            classify("Telegram sendMessage", status, retry_after, body.to_string().as_bytes())
        };
        assert_eq!(classify(200, None, json!({"ok": true, "result": {"message_id": 1}})), Ok(json!({"message_id": 1})));
        assert_eq!(
            classify(
                429,
                Some("7"),
                json!({"ok": false, "error_code": 429, "description": "Too Many Requests: retry after 3", "parameters": {"retry_after": 3}})
            ),
            Err(DeliveryError::Retryable {
                message: "Telegram sendMessage answered HTTP 429: Too Many Requests: retry after 3".into(),
                retry_after_ms: Some(3000)
            })
        );
        assert!(matches!(
            classify(429, Some("7"), json!({"ok": false})),
            Err(DeliveryError::Retryable { retry_after_ms: Some(7000), .. })
        ));
        for status in [500, 502, 503] {
            assert!(matches!(classify(status, None, json!({})), Err(DeliveryError::Retryable { .. })));
        }
        for (status, description) in [(401, "Unauthorized"), (404, "Not Found")] {
            let body = json!({"ok": false, "error_code": status, "description": description});
            assert!(matches!(classify(status, None, body), Err(DeliveryError::Unauthorized { .. })));
        }
        let blocked = json!({"ok": false, "error_code": 403, "description": "Forbidden: bot was blocked by the user"});
        assert_eq!(
            classify(403, None, blocked),
            Err(DeliveryError::permanent(
                "Telegram sendMessage answered HTTP 403: Forbidden: bot was blocked by the user"
            ))
        );
        assert!(matches!(
            classify(400, None, json!({"ok": false, "error_code": 400})),
            Err(DeliveryError::Permanent { .. })
        ));
        assert!(matches!(classify(200, None, json!({"ok": false})), Err(DeliveryError::Permanent { .. })));
        assert!(matches!(classify(200, None, json!("<html>")), Err(DeliveryError::Permanent { .. })));
        let long = json!({"ok": false, "error_code": 400, "description": "x\n".repeat(300)});
        let Err(DeliveryError::Permanent { message }) = classify(400, None, long) else { panic!() };
        assert!(!message.contains('\n') && message.ends_with('…') && message.chars().count() < 260);
    }

    #[test]
    fn bad_settings_are_permanent_and_never_echo_the_token() {
        let mut c = config("ftp://example.com");
        assert!(matches!(method_url(&c, "getMe"), Err(DeliveryError::Permanent { .. })));
        c.api_base = "https://api.telegram.org/".into();
        assert_eq!(method_url(&c, "getMe").unwrap(), format!("https://api.telegram.org/bot{TOKEN}/getMe"));
        c.bot_token = Secret("123:abc/../x?y".into());
        let err = method_url(&c, "getMe").unwrap_err();
        assert!(!err.to_string().contains("abc"), "{err}");
        let scrubbed = without_token(DeliveryError::retryable(format!("failed at /bot{TOKEN}/x")), TOKEN);
        assert_eq!(scrubbed, DeliveryError::retryable("failed at /bot<bot token>/x"));
    }

    /// One request as the scripted server saw it.
    use crate::testutil::scripted;

    fn client() -> TelegramClient {
        TelegramClient::from_client(
            crate::outbound::http_client(Duration::from_secs(5), crate::outbound::Targets::Any),
            Duration::from_secs(5),
        )
    }

    #[tokio::test]
    async fn calls_go_to_the_method_path_with_json_bodies() {
        let (base, seen) = scripted(vec![
            (200, json!({"ok": true, "result": {"message_id": 1}})),
            (200, json!({"ok": true, "result": true})),
            (200, json!({"ok": true, "result": true})),
            (200, json!({"ok": true, "result": true})),
            (
                200,
                json!({"ok": true, "result": [
                    {"update_id": 5, "message": {"message_id": 1, "date": 1, "chat": {"id": 3}, "text": "hi"}},
                    {"update_id": 6, "message": {"message_id": 2, "date": 1, "chat": {"id": 3}, "voice": {}}}
                ]}),
            ),
        ])
        .await;
        let c = config(&format!("{base}/"));
        let t = client();
        t.send(&c, "3", &OutMessage::new(Role::Human, "hello")).await.unwrap();
        t.answer_callback(&c, "q1").await.unwrap();
        t.set_webhook(&c, "https://hub.example.com/telegram/a1").await.unwrap();
        t.delete_webhook(&c).await.unwrap();
        let polled = t.get_updates(&c, Some(5), 0).await.unwrap();
        assert_eq!(polled.next_offset, Some(7));
        assert_eq!(polled.updates[1].kind, InboundKind::Unsupported("voice".into()));
        let seen = seen.lock().unwrap().clone();
        let paths: Vec<_> =
            seen.iter().map(|s| s.path.trim_start_matches(&format!("/bot{TOKEN}/")).to_string()).collect();
        assert_eq!(paths, ["sendMessage", "answerCallbackQuery", "setWebhook", "deleteWebhook", "getUpdates"]);
        assert_eq!(seen[0].body, json!({"chat_id": 3, "text": "hello"}));
        assert_eq!(seen[1].body, json!({"callback_query_id": "q1"}));
        assert_eq!(
            seen[2].body,
            json!({"url": "https://hub.example.com/telegram/a1", "secret_token": "s3cret-Token_1", "allowed_updates": ["message", "callback_query"]})
        );
        assert_eq!(seen[4].body, json!({"offset": 5, "timeout": 0, "allowed_updates": ["message", "callback_query"]}));
    }

    #[tokio::test]
    async fn http_errors_map_and_never_show_the_token() {
        let (base, _) = scripted(vec![
            (429, json!({"ok": false, "error_code": 429, "description": "Too Many Requests: retry after 1", "parameters": {"retry_after": 1}})),
            (401, json!({"ok": false, "error_code": 401, "description": "Unauthorized"})),
            (403, json!({"ok": false, "error_code": 403, "description": "Forbidden: bot was blocked by the user"})),
            (503, json!({"ok": false, "error_code": 503, "description": "Service Unavailable"})),
        ])
        .await;
        let c = config(&base);
        let t = client();
        let m = OutMessage::new(Role::Bot, "x");
        let errors = [
            t.send(&c, "1", &m).await.unwrap_err(),
            t.send(&c, "1", &m).await.unwrap_err(),
            t.send(&c, "1", &m).await.unwrap_err(),
            t.send(&c, "1", &m).await.unwrap_err(),
        ];
        assert!(matches!(errors[0], DeliveryError::Retryable { retry_after_ms: Some(1000), .. }), "{:?}", errors[0]);
        assert!(matches!(errors[1], DeliveryError::Unauthorized { .. }));
        assert!(matches!(errors[2], DeliveryError::Permanent { .. }));
        assert!(matches!(errors[3], DeliveryError::Retryable { .. }));
        // Nothing listens on the base of a closed server: a transport error, without the URL.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let transport = t.send(&config(&dead), "1", &m).await.unwrap_err();
        assert!(matches!(transport, DeliveryError::Retryable { .. }), "{transport:?}");
        for e in errors.iter().chain([&transport]) {
            let text = format!("{e} {e:?}");
            assert!(!text.contains(TOKEN) && !text.contains("AAH-secret"), "{text}");
        }
    }
}
