//! The SalesIQ REST calls and the `Desk` port for `desk.kind = "salesiq"`.
//!
//! Every call carries `Authorization: Zoho-oauthtoken <token>` (from [`ZohoAuth`]), JSON, and
//! the shared client's timeout. A 401 with a cached token drops it and retries once with a new
//! one. SalesIQ answers most errors with HTTP 200 and `{"error": {"code", "message"}}`, so such
//! a body is a failure too. 429 and 5xx are retried (honouring `Retry-After`), 401/403 are
//! credential failures, other 4xx are permanent and quote SalesIQ's message; no error ever
//! shows a token, the client secret or the refresh token.
//!
//! Paths and field names that the docs leave open are constants here (see the [`super`] docs).

use super::oauth::{Token, ZohoAuth};
use super::{base_url, quote, read_limited, segment, transport_error};
use crate::outbound::{redact_url, status_error, Reply};
use crate::records::CallRecords;
use crate::transcript::cut_chars;
use async_trait::async_trait;
use baton_core::agent::{Agent, DeskConfig, SalesiqConfig};
use baton_core::effect::HandoffRequest;
use baton_core::model::{Channel, CloseReason, ConversationKey, Millis, OutMessage, ServiceStatus};
use baton_core::ports::{Clock, DeliveryError, Desk, KeyValue};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// The `Authorization` scheme (Zoho also accepts `Bearer`).
pub const AUTH_SCHEME: &str = "Zoho-oauthtoken";
/// HTTP method of "Close a Chat" (the page does not say) [U].
pub const CLOSE_METHOD: Method = Method::PUT;
/// Key of the transfer note (the docs list `notes`, their example sends `note`) [U].
pub const TRANSFER_NOTE_FIELD: &str = "note";
/// Where the id of a posted message may sit inside the answer's `data` [U].
pub const MESSAGE_ID_PATHS: &[&[&str]] =
    &[&["id"], &["msgid"], &["message_id"], &["message", "id"], &["message", "msgid"]];
/// Longest `question` (transcript) sent when opening a visitor conversation, in characters [U].
pub const MAX_QUESTION_CHARS: usize = 4000;
/// Longest transfer note, in characters [U].
pub const MAX_NOTE_CHARS: usize = 1000;
/// How long the hub remembers the ids of its own posts (to recognise their echoes).
pub const OWN_MESSAGE_TTL_MS: i64 = 2 * 24 * 3600 * 1000;
/// How long a completed desk call is remembered by its idempotency key.
const DONE_TTL_MS: i64 = 2 * 24 * 3600 * 1000;
/// SalesIQ's authentication error codes in a 200 answer: 1002 "Invalid authorization header".
const AUTH_ERROR_CODES: &[i64] = &[1002];
/// SalesIQ's "Unknown authentication error" (an internal error on their side): retried.
const TRANSIENT_ERROR_CODES: &[i64] = &[1001];

pub fn operator_messages_path(screen: &str, conversation_id: &str) -> String {
    format!("/api/v2/{}/conversations/{}/messages", segment(screen), segment(conversation_id))
}
pub fn visitor_conversations_path(screen: &str) -> String {
    format!("/api/visitor/v1/{}/conversations", segment(screen))
}
pub fn visitor_messages_path(screen: &str, conversation_id: &str) -> String {
    format!("/api/visitor/v1/{}/conversations/{}/messages", segment(screen), segment(conversation_id))
}
pub fn transfer_path(screen: &str, conversation_id: &str) -> String {
    format!("/api/v2/{}/conversations/{}/transfer", segment(screen), segment(conversation_id))
}
pub fn close_path(screen: &str, conversation_id: &str) -> String {
    format!("/api/v2/{}/conversations/{}/close", segment(screen), segment(conversation_id))
}
pub fn department_path(screen: &str, department_id: &str) -> String {
    format!("/api/v2/{}/departments/{}", segment(screen), segment(department_id))
}
pub fn app_path(screen: &str, app_id: &str) -> String {
    format!("/api/v2/{}/apps/{}", segment(screen), segment(app_id))
}

fn config(agent: &Agent) -> Result<&SalesiqConfig, DeliveryError> {
    agent.salesiq.as_ref().ok_or_else(|| {
        DeliveryError::permanent(format!(
            "agent {} has no [salesiq] section (SalesIQ account and OAuth client)",
            agent.id
        ))
    })
}

/// A short hash for record names (ids from outside may be long or contain separators).
fn short_hash(parts: &[&str]) -> String {
    crate::records::hash(parts, 32)
}

/// The SalesIQ REST client. Cheap to clone; one per process.
#[derive(Clone)]
pub struct SalesiqClient {
    http: reqwest::Client,
    timeout: Duration,
    auth: Arc<ZohoAuth>,
    kv: Arc<dyn KeyValue>,
    clock: Arc<dyn Clock>,
    records: CallRecords,
}

/// How a SalesIQ answer failed.
enum Failure {
    /// The token was not accepted (401, or an authentication error code in a 200).
    Token(String),
    Other(DeliveryError),
}

impl SalesiqClient {
    pub fn new(http: reqwest::Client, timeout: Duration, kv: Arc<dyn KeyValue>, clock: Arc<dyn Clock>) -> Self {
        let auth = Arc::new(ZohoAuth::new(http.clone(), timeout, kv.clone(), clock.clone()));
        let records = CallRecords::new("salesiq", "SalesIQ", kv.clone(), clock.clone());
        SalesiqClient { http, timeout, auth, kv, clock, records }
    }

    /// The access-token cache this client uses.
    pub fn auth(&self) -> &ZohoAuth {
        &self.auth
    }

    /// Post `text` into the conversation as the hub's operator (the AI's answer in flow 1).
    /// Remember the returned message id in the KeyValue store for 2 days (name from agent +
    /// message id) so its echo (`conversation.operator.replied`) is recognised. Buttons of
    /// OutMessage are not supported by this API: the button labels are listed as text lines.
    pub async fn post_as_operator(
        &self,
        agent: &Agent,
        conversation_id: &str,
        message: &OutMessage,
        idempotency_key: &str,
    ) -> Result<(), DeliveryError> {
        let cfg = config(agent)?;
        // A retry after a crash between the post and its completion must not post twice.
        if self.records.done(agent, "say", idempotency_key).await.is_some() {
            return Ok(());
        }
        let text = render(message);
        if text.trim().is_empty() {
            return Err(DeliveryError::permanent(format!("agent {}: empty message for SalesIQ", agent.id)));
        }
        let path = operator_messages_path(&cfg.screen_name, conversation_id);
        let answer = self.call(agent, Method::POST, &path, Some(&json!({ "text": text }))).await?;
        match message_id_in(&answer) {
            Some(id) => {
                let name = own_message_name(&agent.id, &id);
                let expires = Millis(self.clock.now().0 + OWN_MESSAGE_TTL_MS);
                if let Err(e) = self.kv.put(&name, "1", expires).await {
                    tracing::warn!(agent = %agent.id, error = %e, "cannot remember the id of the hub's SalesIQ message");
                }
            }
            None => tracing::debug!(
                agent = %agent.id,
                "SalesIQ answered without a message id; own messages are recognised by salesiq.bot_operator_id"
            ),
        }
        self.records.mark_done(agent, "say", idempotency_key, "1").await;
        Ok(())
    }

    /// Whether an operator.replied notification is the hub's own post: sender id ==
    /// cfg.bot_operator_id, or the message id was remembered by post_as_operator.
    pub async fn is_own_message(&self, agent: &Agent, sender_id: Option<&str>, message_id: &str) -> bool {
        let bot = agent.salesiq.as_ref().and_then(|c| c.bot_operator_id.as_deref()).map(str::trim);
        if let (Some(bot), Some(sender)) = (bot.filter(|b| !b.is_empty()), sender_id) {
            if bot == sender.trim() {
                return true;
            }
        }
        match self.kv.get(&own_message_name(&agent.id, message_id), self.clock.now()).await {
            Ok(found) => found.is_some(),
            Err(e) => {
                tracing::warn!(agent = %agent.id, error = %e, "cannot look up the hub's SalesIQ message ids");
                false
            }
        }
    }

    /// One authenticated call; the answer's JSON (`Null` when it has none). A 401 with a
    /// cached token drops it and retries once.
    async fn call(
        &self,
        agent: &Agent,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, DeliveryError> {
        let cfg = config(agent)?;
        let base = base_url(&cfg.server, "salesiq.server", &agent.id)?;
        let url = format!("{base}{path}");
        let what = format!("{method} {}", redact_url(&url));
        let mut retried = false;
        loop {
            let token = self.auth.token(&agent.id, cfg).await?;
            let reply = self.send(&method, &url, &what, &token, body).await?;
            match classify(&reply) {
                Ok(v) => return Ok(v),
                Err(Failure::Other(e)) => return Err(e),
                Err(Failure::Token(detail)) if token.fresh => {
                    let message = format!(
                        "{what} rejected a newly issued access token of agent {}{detail}: check the OAuth client's \
                         scopes (SalesIQ.conversations.ALL, SalesIQ.departments.READ, SalesIQ.apps.READ), salesiq.server \
                         (data centre) and salesiq.screen_name, then re-authorize",
                        agent.id
                    );
                    self.auth.reject_fresh_token(&agent.id, cfg, &message).await;
                    return Err(DeliveryError::Unauthorized { message });
                }
                Err(Failure::Token(detail)) if retried => {
                    return Err(DeliveryError::Unauthorized {
                        message: format!("{what} rejected the access token of agent {} twice{detail}", agent.id),
                    });
                }
                Err(Failure::Token(_)) => {
                    tracing::info!(agent = %agent.id, %what, "SalesIQ rejected the cached access token; refreshing");
                    self.auth.invalidate(&agent.id, cfg).await;
                    retried = true;
                }
            }
        }
    }

    async fn send(
        &self,
        method: &Method,
        url: &str,
        what: &str,
        token: &Token,
        body: Option<&Value>,
    ) -> Result<Reply, DeliveryError> {
        let mut auth = reqwest::header::HeaderValue::from_str(&format!("{AUTH_SCHEME} {}", token.secret.expose()))
            .map_err(|_| DeliveryError::permanent(format!("{what}: the access token is not a valid header value")))?;
        auth.set_sensitive(true);
        let mut req = self
            .http
            .request(method.clone(), url)
            .timeout(self.timeout)
            .header(reqwest::header::AUTHORIZATION, auth)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|e| transport_error(what, self.timeout, e))?;
        let status = resp.status().as_u16();
        let retry_after =
            resp.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_string);
        let body = read_limited(resp, super::MAX_RESPONSE_BYTES).await;
        tracing::debug!(%what, status, "SalesIQ answered");
        Ok(Reply { status, retry_after, body, what: what.to_string() })
    }
}

fn own_message_name(agent_id: &str, message_id: &str) -> String {
    format!("salesiq:own:{agent_id}:{}", short_hash(&[message_id.trim()]))
}

fn opened_name(agent_id: &str, conversation_id: &str) -> String {
    format!("salesiq:opened:{agent_id}:{}", short_hash(&[conversation_id]))
}

/// Text plus the labels of buttons the text does not already list, one per line.
fn render(message: &OutMessage) -> String {
    let mut text = message.text.clone();
    for b in &message.buttons {
        if !b.label.trim().is_empty() && !message.text.contains(b.label.as_str()) {
            text.push_str("\n• ");
            text.push_str(b.label.trim());
        }
    }
    text
}

/// A string or integer at `path` inside `value`.
fn id_at(value: &Value, path: &[&str]) -> Option<String> {
    let v = path.iter().try_fold(value, |v, k| v.get(*k))?;
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) if n.is_u64() || n.is_i64() => Some(n.to_string()),
        _ => None,
    }
}

fn message_id_in(answer: &Value) -> Option<String> {
    let data = answer.get("data")?;
    MESSAGE_ID_PATHS.iter().find_map(|p| id_at(data, p))
}

/// `code` and `message` of a SalesIQ error body (`{"error": {...}}` or flat).
fn error_fields(json: &Value) -> Option<(Option<i64>, Option<String>)> {
    let error = json.get("error")?;
    let (code, message) = match error {
        Value::Object(o) => (
            o.get("code").and_then(|c| c.as_i64().or_else(|| c.as_str()?.trim().parse().ok())),
            o.get("message").and_then(Value::as_str).map(str::to_string),
        ),
        Value::String(s) => (None, Some(s.clone())),
        Value::Null => return None,
        _ => (None, None),
    };
    let message = message.or_else(|| json.get("message").and_then(Value::as_str).map(str::to_string));
    Some((code, message))
}

fn looks_like_token_problem(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("oauth") || m.contains("token") || m.contains("authorization header")
}

/// Map a SalesIQ answer to the outcome of the call.
fn classify(reply: &Reply) -> Result<Value, Failure> {
    let json: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    let error = error_fields(&json);
    let detail = error
        .as_ref()
        .map(|(code, message)| match (code, message) {
            (Some(c), Some(m)) => format!(": SalesIQ error {c}: {}", quote(m)),
            (Some(c), None) => format!(": SalesIQ error {c}"),
            (None, Some(m)) => format!(": {}", quote(m)),
            (None, None) => String::new(),
        })
        .unwrap_or_default();
    let (what, status) = (&reply.what, reply.status);
    match status {
        200..=299 => match error {
            None => Ok(json),
            Some((code, message)) => {
                if code.is_some_and(|c| AUTH_ERROR_CODES.contains(&c))
                    || message.as_deref().is_some_and(looks_like_token_problem)
                {
                    Err(Failure::Token(detail))
                } else if code.is_some_and(|c| TRANSIENT_ERROR_CODES.contains(&c)) {
                    Err(Failure::Other(DeliveryError::retryable(format!("{what} answered HTTP {status}{detail}"))))
                } else {
                    Err(Failure::Other(DeliveryError::permanent(format!("{what} answered HTTP {status}{detail}"))))
                }
            }
        },
        401 => Err(Failure::Token(format!(" (HTTP 401{detail})"))),
        _ => Err(Failure::Other(status_error(reply, &detail))),
    }
}

/// The Desk port for `DeskConfig::Salesiq`.
#[derive(Clone)]
pub struct SalesiqDesk {
    client: SalesiqClient,
}

impl SalesiqDesk {
    pub fn new(client: SalesiqClient) -> Self {
        SalesiqDesk { client }
    }

    pub fn client(&self) -> &SalesiqClient {
        &self.client
    }
}

fn desk_settings(agent: &Agent) -> Result<(&str, Option<&str>), DeliveryError> {
    match &agent.desk {
        DeskConfig::Salesiq { department_id, operator_id } => {
            Ok((department_id.as_str(), operator_id.as_deref().map(str::trim).filter(|o| !o.is_empty())))
        }
        _ => Err(DeliveryError::permanent(format!("agent {} does not use the SalesIQ desk (desk.kind)", agent.id))),
    }
}

/// A stable SalesIQ visitor id for one conversation key: `baton-` + 24 hex digits.
pub fn visitor_user_id(key: &ConversationKey) -> String {
    format!("baton-{}", &hex::encode(Sha256::digest(key.to_string().as_bytes()))[..24])
}

/// How the visitor is named in SalesIQ.
pub fn visitor_name(channel: Channel) -> &'static str {
    match channel {
        Channel::Widget => "Website visitor",
        Channel::Api => "API user",
        Channel::Telegram => "Telegram user",
        Channel::Line => "LINE user",
        Channel::Whatsapp => "WhatsApp user",
        Channel::Salesiq => "SalesIQ visitor",
        Channel::Intercom => "Intercom user",
        Channel::Livechat => "LiveChat customer",
    }
}

/// The first visitor message of a relayed handoff: reason, the earlier messages (as many of the
/// most recent ones as fit in [`MAX_QUESTION_CHARS`]), the question and the e-mail address.
pub fn transcript(key: &ConversationKey, request: &HandoffRequest) -> String {
    let style = crate::transcript::Style {
        intro: "",
        bot: "Bot",
        max_chars: MAX_QUESTION_CHARS,
        question_chars: 1500,
        line_chars: 500,
        no_email: "",
    };
    crate::transcript::transcript(key, request, &style)
}

/// The body of "Open Conversation" (visitor API v1).
pub fn open_body(cfg: &SalesiqConfig, department_id: &str, key: &ConversationKey, request: &HandoffRequest) -> Value {
    let mut visitor = json!({ "user_id": visitor_user_id(key), "name": visitor_name(key.channel) });
    if !request.email.trim().is_empty() {
        visitor["email"] = json!(request.email.trim());
    }
    json!({
        "app_id": cfg.app_id.trim(),
        "department_id": department_id.trim(),
        "question": transcript(key, request),
        "visitor": visitor,
    })
}

/// The body of "Transfer chat".
pub fn transfer_body(department_id: &str, operator_id: Option<&str>, request: &HandoffRequest) -> Value {
    let note = cut_chars(
        &format!(
            "Handed over by the AI assistant. Reason: {}\nQuestion: {}",
            request.reason.trim(),
            request.question.trim()
        ),
        MAX_NOTE_CHARS,
    );
    let mut body = json!({ "department_id": department_id.trim() });
    if let Some(op) = operator_id {
        body["operator_id"] = json!(op);
    }
    body[TRANSFER_NOTE_FIELD] = json!(note);
    body
}

/// The conversation id in an "Open Conversation" answer.
fn conversation_id_in(answer: &Value) -> Option<String> {
    let data = answer.get("data").unwrap_or(answer);
    [&["id"][..], &["conversation_id"], &["conversation", "id"]].iter().find_map(|p| id_at(data, p))
}

/// The visitor's last words when the hub ends a relayed chat.
pub fn close_note(reason: CloseReason) -> &'static str {
    match reason {
        CloseReason::UserClosed => "[The user ended the chat.]",
        CloseReason::Timeout => "[The chat ended: the user did not reply in time.]",
    }
}

#[async_trait]
impl Desk for SalesiqDesk {
    /// A user already in SalesIQ (`desk.hosts(channel)`: `key.user` is their conversation) is
    /// transferred to the department inside that conversation; anyone else gets a new visitor
    /// conversation whose first message is the transcript.
    async fn open(
        &self,
        agent: &Agent,
        key: &ConversationKey,
        request: &HandoffRequest,
        idempotency_key: &str,
    ) -> Result<String, DeliveryError> {
        let cfg = config(agent)?;
        let (department_id, operator_id) = desk_settings(agent)?;
        if let Some(id) = self.client.records.done(agent, "open", idempotency_key).await {
            return Ok(id);
        }
        let id = if agent.desk.hosts(key.channel) {
            let body = transfer_body(department_id, operator_id, request);
            self.client.call(agent, Method::PUT, &transfer_path(&cfg.screen_name, &key.user), Some(&body)).await?;
            key.user.clone()
        } else {
            let body = open_body(cfg, department_id, key, request);
            let answer = self
                .client
                .call(agent, Method::POST, &visitor_conversations_path(&cfg.screen_name), Some(&body))
                .await?;
            let id = conversation_id_in(&answer).ok_or_else(|| {
                DeliveryError::permanent(format!(
                    "POST {}: SalesIQ answered without a conversation id",
                    redact_url(&format!(
                        "{}{}",
                        cfg.server.trim_end_matches('/'),
                        visitor_conversations_path(&cfg.screen_name)
                    ))
                ))
            })?;
            let opened = opened_name(&agent.id, &id);
            if let Err(e) =
                self.client.kv.put(&opened, "visitor", Millis(self.client.clock.now().0 + DONE_TTL_MS * 7)).await
            {
                tracing::warn!(agent = %agent.id, error = %e, "cannot record the opened SalesIQ conversation");
            }
            id
        };
        self.client.records.mark_done(agent, "open", idempotency_key, &id).await;
        Ok(id)
    }

    /// The user's next message, as the visitor. Meant for conversations the hub opened as the
    /// visitor: in a transferred SalesIQ chat the user writes there directly.
    async fn post(
        &self,
        agent: &Agent,
        desk_conversation_id: &str,
        text: &str,
        idempotency_key: &str,
    ) -> Result<(), DeliveryError> {
        let cfg = config(agent)?;
        if self.client.records.done(agent, "post", idempotency_key).await.is_some() {
            return Ok(());
        }
        let path = visitor_messages_path(&cfg.screen_name, desk_conversation_id);
        self.client.call(agent, Method::POST, &path, Some(&json!({ "text": text }))).await?;
        self.client.records.mark_done(agent, "post", idempotency_key, "1").await;
        Ok(())
    }

    /// Ends the chat with "Close a Chat". In a conversation the hub opened as the visitor, a
    /// last visitor message first tells the human why (the user ended it, or did not reply in
    /// time); when that message got through, a refused close (e.g. the human closed the chat
    /// at the same moment) is only logged.
    async fn close(
        &self,
        agent: &Agent,
        desk_conversation_id: &str,
        reason: CloseReason,
        idempotency_key: &str,
    ) -> Result<(), DeliveryError> {
        let cfg = config(agent)?;
        if self.client.records.done(agent, "close", idempotency_key).await.is_some() {
            return Ok(());
        }
        let opened_by_hub = matches!(
            self.client.kv.get(&opened_name(&agent.id, desk_conversation_id), self.client.clock.now()).await,
            Ok(Some(_))
        );
        let mut told = false;
        if opened_by_hub {
            let note_key = format!("{idempotency_key}:note");
            if self.client.records.done(agent, "close-note", &note_key).await.is_some() {
                told = true;
            } else {
                let path = visitor_messages_path(&cfg.screen_name, desk_conversation_id);
                match self.client.call(agent, Method::POST, &path, Some(&json!({ "text": close_note(reason) }))).await {
                    Ok(_) => {
                        told = true;
                        self.client.records.mark_done(agent, "close-note", &note_key, "1").await;
                    }
                    Err(e @ DeliveryError::Permanent { .. }) => {
                        tracing::warn!(agent = %agent.id, error = %e, "cannot post the closing note to SalesIQ");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let path = close_path(&cfg.screen_name, desk_conversation_id);
        match self.client.call(agent, CLOSE_METHOD, &path, None).await {
            Ok(_) => {}
            Err(e @ DeliveryError::Permanent { .. }) if told => {
                tracing::warn!(agent = %agent.id, error = %e, "SalesIQ did not close the chat; the closing note was posted");
            }
            Err(e) => return Err(e),
        }
        self.client.records.mark_done(agent, "close", idempotency_key, "1").await;
        Ok(())
    }

    /// A token from Zoho Accounts, then one cheap authenticated GET: the desk's department
    /// (or, without the SalesIQ desk, the brand app).
    async fn probe(&self, agent: &Agent) -> (ServiceStatus, String) {
        let Some(cfg) = agent.salesiq.as_ref() else {
            return (ServiceStatus::NotConfigured, "no [salesiq] section: SalesIQ is not configured".into());
        };
        match self.client.auth.access_token(&agent.id, cfg).await {
            Ok(_) => {}
            Err(DeliveryError::Unauthorized { message }) => return (ServiceStatus::Unavailable, message),
            Err(e) => return (ServiceStatus::Unavailable, e.to_string()),
        }
        let path = match &agent.desk {
            DeskConfig::Salesiq { department_id, .. } => department_path(&cfg.screen_name, department_id),
            _ => app_path(&cfg.screen_name, &cfg.app_id),
        };
        match self.client.call(agent, Method::GET, &path, None).await {
            Ok(_) => (
                ServiceStatus::Available,
                format!("SalesIQ portal {:?} answered at {}", cfg.screen_name, redact_url(cfg.server.trim())),
            ),
            Err(e) => (ServiceStatus::Unavailable, e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_core::model::{Button, Role, Turn};

    fn reply(status: u16, body: Value) -> Reply {
        Reply { status, retry_after: None, body: body.to_string().into_bytes(), what: "POST http://h/x".into() }
    }

    fn other(r: Result<Value, Failure>) -> DeliveryError {
        match r {
            Err(Failure::Other(e)) => e,
            Err(Failure::Token(d)) => panic!("token failure {d}"),
            Ok(v) => panic!("success {v}"),
        }
    }

    #[test]
    fn answers_are_classified() {
        assert!(matches!(classify(&reply(200, json!({"data": {"id": "1"}}))), Ok(v) if v["data"]["id"] == "1"));
        assert!(matches!(classify(&reply(204, Value::Null)), Ok(Value::Null)));
        // Errors in a 200.
        let e = other(classify(&reply(200, json!({"error": {"code": 1015, "message": "Conversation already ended"}}))));
        assert_eq!(
            e,
            DeliveryError::permanent(
                "POST http://h/x answered HTTP 200: SalesIQ error 1015: Conversation already ended"
            )
        );
        assert!(matches!(
            classify(&reply(200, json!({"error": {"code": 1002, "message": "Invalid authorization header."}}))),
            Err(Failure::Token(_))
        ));
        assert!(matches!(
            classify(&reply(200, json!({"error": {"code": 9, "message": "Invalid OAuth token"}}))),
            Err(Failure::Token(_))
        ));
        assert!(matches!(
            other(classify(&reply(200, json!({"error": {"code": 1001}})))),
            DeliveryError::Retryable { .. }
        ));
        // Statuses.
        assert!(matches!(classify(&reply(401, json!({}))), Err(Failure::Token(_))));
        assert!(matches!(other(classify(&reply(403, json!({})))), DeliveryError::Unauthorized { .. }));
        for s in [429, 500, 503] {
            assert!(matches!(other(classify(&reply(s, json!({})))), DeliveryError::Retryable { .. }), "{s}");
        }
        let mut r = reply(429, json!({}));
        r.retry_after = Some("3".into());
        assert!(matches!(other(classify(&r)), DeliveryError::Retryable { retry_after_ms: Some(3000), .. }));
        let e = other(classify(&reply(400, json!({"error": {"code": 1020, "message": "x".repeat(500)}}))));
        let DeliveryError::Permanent { message } = e else { panic!() };
        assert!(
            message.starts_with("POST http://h/x answered HTTP 400: SalesIQ error 1020: xxx") && message.ends_with('…')
        );
    }

    #[test]
    fn message_ids_are_found() {
        assert_eq!(message_id_in(&json!({"data": {"id": "m1"}})).as_deref(), Some("m1"));
        assert_eq!(message_id_in(&json!({"data": {"msgid": 17}})).as_deref(), Some("17"));
        assert_eq!(message_id_in(&json!({"data": {"message": {"msgid": "m3"}}})).as_deref(), Some("m3"));
        assert_eq!(message_id_in(&json!({"data": {}})), None);
        assert_eq!(message_id_in(&Value::Null), None);
    }

    #[test]
    fn buttons_become_lines() {
        let mut m = OutMessage::new(Role::System, "Still there? Choose: End");
        m.buttons = vec![
            Button { label: "End".into(), value: "end".into() },
            Button { label: "Keep waiting".into(), value: "wait".into() },
        ];
        assert_eq!(render(&m), "Still there? Choose: End\n• Keep waiting");
    }

    fn request(history: Vec<Turn>) -> HandoffRequest {
        HandoffRequest {
            params: Default::default(),
            handoff_id: "h1".into(),
            email: "ann@example.com".into(),
            history,
            question: "Where is my refund?".into(),
            reason: "user asked for a human".into(),
        }
    }

    #[test]
    fn transcripts_keep_the_newest_lines_within_the_limit() {
        let key = ConversationKey::new("shop", Channel::Telegram, "42").unwrap();
        let turns = vec![
            Turn { role: Role::User, text: "hello".into(), at: Millis(1) },
            Turn { role: Role::Bot, text: "Hi! How can I help?".into(), at: Millis(2) },
            Turn { role: Role::System, text: "internal".into(), at: Millis(3) },
        ];
        let t = transcript(&key, &request(turns));
        assert_eq!(
            t,
            "Reason: user asked for a human\n\nEarlier messages:\nUser: hello\nBot: Hi! How can I help?\n\n\
             Question: Where is my refund?\n\nE-mail: ann@example.com\nChannel: telegram"
        );
        let many: Vec<Turn> = (0..200)
            .map(|i| Turn { role: Role::User, text: format!("message {i} {}", "x".repeat(60)), at: Millis(i) })
            .collect();
        let t = transcript(&key, &request(many));
        assert!(t.chars().count() <= MAX_QUESTION_CHARS);
        assert!(t.contains("message 199") && !t.contains("message 0 ") && t.contains("Earlier messages:\n…\n"));
        assert!(t.ends_with("Channel: telegram"));
    }

    #[test]
    fn bodies() {
        let key = ConversationKey::new("shop", Channel::Line, "U1").unwrap();
        let cfg: SalesiqConfig = serde_json::from_value(json!({
            "screen_name": "zylker", "app_id": " 30185567778889 ", "client_id": "c",
            "client_secret": "s", "refresh_token": "r",
        }))
        .unwrap();
        let body = open_body(&cfg, "301050000004", &key, &request(vec![]));
        assert_eq!(body["app_id"], "30185567778889");
        assert_eq!(body["department_id"], "301050000004");
        assert_eq!(body["visitor"]["email"], "ann@example.com");
        assert_eq!(body["visitor"]["name"], "LINE user");
        let uid = body["visitor"]["user_id"].as_str().unwrap();
        assert!(uid.starts_with("baton-") && uid.len() == 30);
        assert_eq!(uid, visitor_user_id(&key));
        assert_ne!(uid, visitor_user_id(&ConversationKey::new("shop", Channel::Line, "U2").unwrap()));

        let t = transfer_body("d1", Some("op7"), &request(vec![]));
        assert_eq!(t["department_id"], "d1");
        assert_eq!(t["operator_id"], "op7");
        assert!(t[TRANSFER_NOTE_FIELD].as_str().unwrap().contains("Where is my refund?"));
        assert!(transfer_body("d1", None, &request(vec![])).get("operator_id").is_none());
    }

    #[test]
    fn paths_escape_their_segments() {
        assert_eq!(operator_messages_path("zylker", "123"), "/api/v2/zylker/conversations/123/messages");
        assert_eq!(visitor_messages_path("zylker", "a/b"), "/api/visitor/v1/zylker/conversations/a%2Fb/messages");
        assert_eq!(conversation_id_in(&json!({"data": {"id": 5}})).as_deref(), Some("5"));
        assert_eq!(conversation_id_in(&json!({"id": "c9"})).as_deref(), Some("c9"));
    }
}
