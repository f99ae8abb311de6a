//! The generic webhook desk: any help-desk that implements the GPTBots-compatible
//! "human handoff" contract (`/conversation/establish`, `/chat`, `/conversation/close`), so
//! one adapter covers every desk that speaks it, and the desk's calls back to the hub
//! (human message, human close) are parsed here with errors that name the field.
//!
//! Outbound calls are JSON over HTTPS with optional Basic auth and optional Standard Webhooks
//! signatures; `webhook-id` is always the effect's idempotency key so desks can dedupe retries.

use crate::outbound::{now_ms, quote, redact_url, status_error, Poster, Reply};
use crate::standard_webhooks::SigningSecret;
use async_trait::async_trait;
use baton_core::agent::{Agent, DeskConfig};
use baton_core::effect::HandoffRequest;
use baton_core::model::{CloseReason, ConversationKey, Role, ServiceStatus};
use baton_core::ports::{DeliveryError, Desk};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// Per-request timeout unless the constructor is given another (Svix counts 15 s as the limit).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest human message text accepted from a desk.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Longest raw inbound request accepted (room for JSON escaping of a maximal body).
pub const MAX_INBOUND_BYTES: usize = 128 * 1024;
/// Longest `conversation_id` accepted from a desk.
pub const MAX_CONVERSATION_ID_BYTES: usize = 256;

pub const PATH_ESTABLISH: &str = "/conversation/establish";
pub const PATH_CHAT: &str = "/chat";
pub const PATH_CLOSE: &str = "/conversation/close";

/// Calls a webhook desk. One client (connection pool) for every agent.
#[derive(Debug, Clone)]
pub struct WebhookDesk {
    poster: Poster,
}

impl Default for WebhookDesk {
    fn default() -> Self {
        WebhookDesk::new(DEFAULT_TIMEOUT)
    }
}

impl WebhookDesk {
    /// A desk client with `timeout` per request. Redirects are not followed (a 3xx is a
    /// failure, as Standard Webhooks prescribes).
    pub fn new(timeout: Duration) -> Self {
        WebhookDesk { poster: Poster::new(timeout) }
    }

    /// Reuse an existing client; `timeout` is still applied to every request.
    pub fn from_client(client: reqwest::Client, timeout: Duration) -> Self {
        WebhookDesk { poster: Poster::from_client(client, timeout) }
    }

    async fn call(&self, target: &Target<'_>, path: &str, body: &Value, msg_id: &str) -> Result<(), DeliveryError> {
        let reply = self.send(target, path, body, msg_id).await?;
        classify(&reply)
    }

    /// Send one POST and return what came back; only transport failures are errors here.
    async fn send(&self, target: &Target<'_>, path: &str, body: &Value, msg_id: &str) -> Result<Reply, DeliveryError> {
        let url = format!("{}{}", target.base, path);
        let basic = target.username.map(|u| (u, target.password));
        self.poster.post_json(&url, body, msg_id, target.secret.as_ref(), basic).await
    }
}

/// The webhook desk settings of one agent, checked.
struct Target<'a> {
    /// Base URL without a trailing slash.
    base: &'a str,
    username: Option<&'a str>,
    password: Option<&'a str>,
    secret: Option<SigningSecret>,
}

impl<'a> Target<'a> {
    /// `Ok(None)` when the agent has no desk.
    fn of(agent: &'a Agent) -> Result<Option<Target<'a>>, DeliveryError> {
        let DeskConfig::Webhook { url, username, password, signing_secret } = &agent.desk else {
            return Ok(None);
        };
        let base = url.trim().trim_end_matches('/');
        match reqwest::Url::parse(base) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            _ => {
                return Err(DeliveryError::permanent(format!(
                    "agent {}: desk.url must be an http:// or https:// URL",
                    agent.id
                )))
            }
        }
        let secret = match signing_secret {
            Some(s) => Some(
                SigningSecret::parse(s.expose())
                    .map_err(|e| DeliveryError::permanent(format!("agent {}: desk.signing_secret: {e}", agent.id)))?,
            ),
            None => None,
        };
        Ok(Some(Target {
            base,
            username: username.as_deref(),
            password: password.as_ref().map(|p| p.expose()),
            secret,
        }))
    }

    fn require(agent: &'a Agent) -> Result<Target<'a>, DeliveryError> {
        Target::of(agent)?
            .ok_or_else(|| DeliveryError::permanent(format!("agent {} has no webhook desk configured", agent.id)))
    }
}

/// `{code, message}` of a desk answer, when it is a JSON object. `code` may be a number or a
/// numeric string; `msg` is accepted for `message` (GPTBots' Webhook V2 answers use it).
fn ack_fields(body: &[u8]) -> (Option<i64>, Option<String>) {
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else {
        return (None, None);
    };
    let code = match map.get("code") {
        Some(Value::Number(n)) => n.as_i64().or(Some(i64::MIN)),
        Some(Value::String(s)) => Some(s.trim().parse().unwrap_or(i64::MIN)),
        _ => None,
    };
    let message = map.get("message").or_else(|| map.get("msg")).and_then(Value::as_str).map(quote);
    (code, message)
}

/// Map a desk's answer to the outcome of the call.
///
/// 2xx succeeds unless the body is a JSON object whose `code` is neither 0 nor 200 (an empty
/// or non-JSON body, or one without `code`, is success). 401/403 are credential failures;
/// 429 and 5xx are worth retrying; every other status (408 and 425 included) is permanent.
fn classify(reply: &Reply) -> Result<(), DeliveryError> {
    let (code, message) = ack_fields(&reply.body);
    let detail = message.map(|m| format!(": {m}")).unwrap_or_default();
    let (what, status) = (&reply.what, reply.status);
    match status {
        200..=299 => match code {
            None | Some(0) | Some(200) => Ok(()),
            Some(i64::MIN) => {
                Err(DeliveryError::permanent(format!("{what} answered HTTP {status} with an invalid code{detail}")))
            }
            Some(code) => {
                Err(DeliveryError::permanent(format!("{what} answered HTTP {status} with code {code}{detail}")))
            }
        },
        _ => Err(status_error(reply, &detail)),
    }
}

fn message_type(role: Role) -> Option<&'static str> {
    match role {
        Role::User => Some("QUESTION"),
        Role::Bot | Role::Human => Some("ANSWER"),
        Role::System => None,
    }
}

/// The `/conversation/establish` body: the transcript (without system lines) plus the question.
pub fn establish_body(agent: &Agent, key: &ConversationKey, request: &HandoffRequest, timestamp_ms: i64) -> Value {
    let mut body: Vec<Value> = request
        .history
        .iter()
        .filter_map(|t| message_type(t.role).map(|ty| json!({"message_type": ty, "text": t.text})))
        .collect();
    body.push(json!({"message_type": "QUESTION", "text": request.question}));
    json!({
        "conversation_id": request.handoff_id,
        "timestamp": timestamp_ms,
        "email": request.email,
        "bot_id": agent.id,
        "body": body,
        "user_info": {
            "email": request.email,
            "user_id": key.user,
            "anonymous_id": null,
            "phone": request.params.get("phone").filter(|p| *p != baton_core::session::SANITIZED),
        },
        "reason": request.reason,
        "channel": key.channel.as_str(),
        "params": request.params,
    })
}

#[async_trait]
impl Desk for WebhookDesk {
    /// The contract lets the hub choose the desk conversation id: it is the handoff id.
    async fn open(
        &self,
        agent: &Agent,
        key: &ConversationKey,
        request: &HandoffRequest,
        idempotency_key: &str,
    ) -> Result<String, DeliveryError> {
        let target = Target::require(agent)?;
        let body = establish_body(agent, key, request, now_ms());
        self.call(&target, PATH_ESTABLISH, &body, idempotency_key).await?;
        Ok(request.handoff_id.clone())
    }

    fn id_chosen_by_hub(&self, _agent: &Agent, request: &HandoffRequest) -> Option<String> {
        Some(request.handoff_id.clone())
    }

    async fn post(
        &self,
        agent: &Agent,
        desk_conversation_id: &str,
        text: &str,
        idempotency_key: &str,
    ) -> Result<(), DeliveryError> {
        let target = Target::require(agent)?;
        let body = json!({
            "conversation_id": desk_conversation_id,
            "timestamp": now_ms(),
            "body": text,
        });
        self.call(&target, PATH_CHAT, &body, idempotency_key).await
    }

    async fn close(
        &self,
        agent: &Agent,
        desk_conversation_id: &str,
        reason: CloseReason,
        idempotency_key: &str,
    ) -> Result<(), DeliveryError> {
        let target = Target::require(agent)?;
        let body = json!({
            "conversation_id": desk_conversation_id,
            "timestamp": now_ms(),
            "type": reason.as_str(),
        });
        self.call(&target, PATH_CLOSE, &body, idempotency_key).await
    }

    /// POST an `istest: true` body to each of the three endpoints (in parallel). Any 2xx counts
    /// as reachable with accepted credentials, whatever `code` says: desks answer probes
    /// without acting on them.
    async fn probe(&self, agent: &Agent) -> (ServiceStatus, String) {
        let target = match Target::of(agent) {
            Ok(Some(t)) => t,
            Ok(None) => return (ServiceStatus::NotConfigured, "no desk configured".into()),
            Err(e) => return (ServiceStatus::Unavailable, e.to_string()),
        };
        let now = now_ms();
        let id = "baton-probe";
        let establish = json!({
            "istest": true,
            "conversation_id": id,
            "timestamp": now,
            "email": "",
            "bot_id": agent.id,
            "body": [],
            "user_info": {"email": "", "user_id": id, "anonymous_id": null, "phone": null},
        });
        let chat = json!({"istest": true, "conversation_id": id, "timestamp": now, "body": ""});
        let close = json!({"istest": true, "conversation_id": id, "timestamp": now, "type": "USER_CLOSED"});
        let (id_establish, id_chat, id_close) =
            (format!("msg_probe_{now}_establish"), format!("msg_probe_{now}_chat"), format!("msg_probe_{now}_close"));
        let (a, b, c) = tokio::join!(
            self.send(&target, PATH_ESTABLISH, &establish, &id_establish),
            self.send(&target, PATH_CHAT, &chat, &id_chat),
            self.send(&target, PATH_CLOSE, &close, &id_close),
        );
        let results = [a, b, c];
        for reply in results.iter().flatten() {
            if reply.status == 401 || reply.status == 403 {
                return (
                    ServiceStatus::Unavailable,
                    format!("credentials rejected by {} (HTTP {})", reply.what, reply.status),
                );
            }
        }
        for r in results {
            match r {
                Ok(reply) if (200..300).contains(&reply.status) => {}
                Ok(reply) => {
                    return (ServiceStatus::Unavailable, format!("{} answered HTTP {}", reply.what, reply.status))
                }
                Err(e) => return (ServiceStatus::Unavailable, e.to_string()),
            }
        }
        (ServiceStatus::Available, format!("establish, chat and close answered 2xx at {}", redact_url(target.base)))
    }
}

// ---------------------------------------------------------------------------------------------
// Inbound: what the desk sends back to the hub.

/// A human's reply, to be relayed to the user of `conversation_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HumanMessage {
    pub conversation_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
    pub body: String,
}

/// The human ended the conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HumanClose {
    pub conversation_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
}

/// An inbound call: a health-check probe (`istest: true`, answer 200 and do nothing) or real traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound<T> {
    Probe,
    Real(T),
}

/// Why an inbound body is rejected; `Field` names the field (`body: must be a non-empty string`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("request body is larger than {MAX_INBOUND_BYTES} bytes")]
    TooLarge,
    #[error("request body is not JSON: {0}")]
    NotJson(String),
    #[error("request body must be a JSON object")]
    NotObject,
    #[error("{field}: {message}")]
    Field { field: &'static str, message: String },
}

fn field_error(field: &'static str, message: impl Into<String>) -> ParseError {
    ParseError::Field { field, message: message.into() }
}

type Object = serde_json::Map<String, Value>;

/// The JSON object, or `None` for a probe.
fn inbound_object(bytes: &[u8]) -> Result<Option<Object>, ParseError> {
    if bytes.len() > MAX_INBOUND_BYTES {
        return Err(ParseError::TooLarge);
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| ParseError::NotJson(e.to_string()))?;
    let Value::Object(map) = value else {
        return Err(ParseError::NotObject);
    };
    let probe = match map.get("istest") {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    };
    Ok(if probe { None } else { Some(map) })
}

fn conversation_id(map: &Object) -> Result<String, ParseError> {
    const F: &str = "conversation_id";
    match map.get(F) {
        None | Some(Value::Null) => Err(field_error(F, "missing")),
        Some(Value::String(s)) if !s.trim().is_empty() => {
            if s.len() > MAX_CONVERSATION_ID_BYTES {
                Err(field_error(F, format!("must be at most {MAX_CONVERSATION_ID_BYTES} bytes")))
            } else if s.chars().any(char::is_control) {
                Err(field_error(F, "must not contain control characters"))
            } else {
                Ok(s.clone())
            }
        }
        Some(_) => Err(field_error(F, "must be a non-empty string")),
    }
}

fn timestamp(map: &Object) -> Result<Option<i64>, ParseError> {
    const F: &str = "timestamp";
    let invalid = || field_error(F, "must be a non-negative integer or a numeric string");
    let ts = match map.get(F) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i,
            (None, Some(f)) if f.fract() == 0.0 && f >= 0.0 && f < i64::MAX as f64 => f as i64,
            _ => return Err(invalid()),
        },
        Some(Value::String(s)) => s.trim().parse::<i64>().map_err(|_| invalid())?,
        Some(_) => return Err(invalid()),
    };
    if ts < 0 {
        return Err(invalid());
    }
    Ok(Some(ts))
}

fn message_body(map: &Object) -> Result<String, ParseError> {
    const F: &str = "body";
    match map.get(F) {
        None | Some(Value::Null) => Err(field_error(F, "missing")),
        Some(Value::String(s)) if !s.trim().is_empty() => {
            if s.len() > MAX_BODY_BYTES {
                Err(field_error(F, format!("must be at most {MAX_BODY_BYTES} bytes")))
            } else {
                Ok(s.clone())
            }
        }
        Some(_) => Err(field_error(F, "must be a non-empty string")),
    }
}

/// Parse a human-message call (`{conversation_id, timestamp, body}`).
pub fn parse_human_message(bytes: &[u8]) -> Result<Inbound<HumanMessage>, ParseError> {
    let Some(map) = inbound_object(bytes)? else {
        return Ok(Inbound::Probe);
    };
    Ok(Inbound::Real(HumanMessage {
        conversation_id: conversation_id(&map)?,
        timestamp: timestamp(&map)?,
        body: message_body(&map)?,
    }))
}

/// Parse a human-close call (`{conversation_id, timestamp}`).
pub fn parse_human_close(bytes: &[u8]) -> Result<Inbound<HumanClose>, ParseError> {
    let Some(map) = inbound_object(bytes)? else {
        return Ok(Inbound::Probe);
    };
    Ok(Inbound::Real(HumanClose { conversation_id: conversation_id(&map)?, timestamp: timestamp(&map)? }))
}

/// The event id of a human message: the desk's `webhook-id` when it sent one, else a hash
/// of the message. Without a header or timestamp, two identical texts in one conversation
/// share an id, so desks should send one of them.
pub fn dedupe_id(webhook_id_header: Option<&str>, msg: &HumanMessage) -> String {
    if let Some(id) = webhook_id_header.map(str::trim).filter(|s| !s.is_empty()) {
        return id.to_string();
    }
    // A JSON array keeps the three parts unambiguous.
    let canonical = json!([msg.conversation_id, msg.timestamp, msg.body]).to_string();
    hex::encode(Sha256::digest(canonical.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(r: Result<(), DeliveryError>) -> DeliveryError {
        r.expect_err("expected an error")
    }

    /// The classification of a reply with these parts.
    fn classify(status: u16, retry_after: Option<&str>, body: &[u8], what: &str) -> Result<(), DeliveryError> {
        let reply =
            Reply { status, retry_after: retry_after.map(str::to_string), body: body.to_vec(), what: what.into() };
        super::classify(&reply)
    }

    #[test]
    fn success_answers() {
        for body in [
            &br#"{"code":200,"message":"ok"}"#[..],
            br#"{"code":0}"#,
            br#"{"code":"200"}"#,
            br#"{"message":"no code"}"#,
            b"",
            b"OK",
            b"[1,2]",
        ] {
            assert_eq!(classify(200, None, body, "POST x"), Ok(()), "{body:?}");
        }
        assert_eq!(classify(204, None, b"", "POST x"), Ok(()));
    }

    #[test]
    fn failure_code_in_2xx_is_permanent_with_message() {
        let e = err(classify(200, None, br#"{"code":500,"message":"no agents online"}"#, "POST http://h/chat"));
        assert_eq!(e, DeliveryError::permanent("POST http://h/chat answered HTTP 200 with code 500: no agents online"));
        let e = err(classify(200, None, br#"{"code":"busy","msg":"later"}"#, "POST x"));
        assert!(matches!(e, DeliveryError::Permanent { ref message } if message.contains("invalid code: later")));
        let e = err(classify(200, None, br#"{"code":1.5}"#, "POST x"));
        assert!(matches!(e, DeliveryError::Permanent { .. }));
    }

    #[test]
    fn status_mapping() {
        assert!(matches!(err(classify(401, None, b"", "x")), DeliveryError::Unauthorized { .. }));
        assert!(matches!(err(classify(403, None, b"", "x")), DeliveryError::Unauthorized { .. }));
        for s in [429, 500, 502, 503, 504] {
            assert!(matches!(err(classify(s, None, b"", "x")), DeliveryError::Retryable { .. }), "{s}");
        }
        for s in [301, 302, 400, 404, 408, 410, 422, 425] {
            assert!(matches!(err(classify(s, None, b"", "x")), DeliveryError::Permanent { .. }), "{s}");
        }
        assert_eq!(
            err(classify(429, Some(" 7 "), b"", "x")),
            DeliveryError::Retryable { message: "x answered HTTP 429".into(), retry_after_ms: Some(7000) }
        );
        assert_eq!(
            err(classify(503, Some("Wed, 21 Oct 2015 07:28:00 GMT"), b"", "x")),
            DeliveryError::Retryable { message: "x answered HTTP 503".into(), retry_after_ms: None }
        );
    }

    #[test]
    fn quoted_messages_are_bounded_and_single_line() {
        let long = "a\nb".repeat(200);
        let body = json!({"code": 1, "message": long}).to_string();
        let DeliveryError::Permanent { message } = err(classify(200, None, body.as_bytes(), "x")) else { panic!() };
        assert!(!message.contains('\n'));
        assert!(message.chars().count() < 260, "{}", message.len());
        assert!(message.ends_with('…'));
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("https://user:pw@desk.example.com:8443/base/chat?token=abc"),
            "https://desk.example.com:8443/base/chat"
        );
        assert_eq!(redact_url("not a url"), "<invalid url>");
    }

    fn parse_msg(v: Value) -> Result<Inbound<HumanMessage>, ParseError> {
        parse_human_message(v.to_string().as_bytes())
    }

    fn field_msg(r: Result<Inbound<HumanMessage>, ParseError>) -> String {
        r.expect_err("expected a parse error").to_string()
    }

    #[test]
    fn human_message_parses() {
        assert_eq!(
            parse_msg(json!({"conversation_id": "h1", "timestamp": 1700000000000i64, "body": "Hello"})),
            Ok(Inbound::Real(HumanMessage {
                conversation_id: "h1".into(),
                timestamp: Some(1700000000000),
                body: "Hello".into()
            }))
        );
        assert_eq!(
            parse_msg(json!({"conversation_id": "h1", "timestamp": " 1700000000000 ", "body": "x"})),
            Ok(Inbound::Real(HumanMessage {
                conversation_id: "h1".into(),
                timestamp: Some(1700000000000),
                body: "x".into()
            }))
        );
        assert_eq!(
            parse_msg(json!({"conversation_id": "h1", "body": "x", "extra": 1})),
            Ok(Inbound::Real(HumanMessage { conversation_id: "h1".into(), timestamp: None, body: "x".into() }))
        );
        let exactly_max = "é".repeat(MAX_BODY_BYTES / 2);
        assert!(parse_msg(json!({"conversation_id": "h1", "body": exactly_max})).is_ok());
    }

    #[test]
    fn human_message_errors_name_the_field() {
        assert_eq!(field_msg(parse_msg(json!({"body": "x"}))), "conversation_id: missing");
        assert_eq!(
            field_msg(parse_msg(json!({"conversation_id": 5, "body": "x"}))),
            "conversation_id: must be a non-empty string"
        );
        assert_eq!(
            field_msg(parse_msg(json!({"conversation_id": " ", "body": "x"}))),
            "conversation_id: must be a non-empty string"
        );
        assert_eq!(
            field_msg(parse_msg(json!({"conversation_id": "a".repeat(257), "body": "x"}))),
            "conversation_id: must be at most 256 bytes"
        );
        assert_eq!(field_msg(parse_msg(json!({"conversation_id": "h"}))), "body: missing");
        for bad in [json!(""), json!("  \n"), json!(3), json!(["x"])] {
            assert_eq!(
                field_msg(parse_msg(json!({"conversation_id": "h", "body": bad}))),
                "body: must be a non-empty string"
            );
        }
        assert_eq!(
            field_msg(parse_msg(json!({"conversation_id": "h", "body": "x".repeat(MAX_BODY_BYTES + 1)}))),
            "body: must be at most 16384 bytes"
        );
        for bad in [json!("soon"), json!(-1), json!(1.5), json!(true), json!("")] {
            assert_eq!(
                field_msg(parse_msg(json!({"conversation_id": "h", "body": "x", "timestamp": bad}))),
                "timestamp: must be a non-negative integer or a numeric string"
            );
        }
        assert!(matches!(parse_human_message(b"{nope"), Err(ParseError::NotJson(_))));
        assert_eq!(parse_human_message(b"[1]"), Err(ParseError::NotObject));
        let huge = vec![b' '; MAX_INBOUND_BYTES + 1];
        assert_eq!(parse_human_message(&huge), Err(ParseError::TooLarge));
    }

    #[test]
    fn probes_are_recognised_before_validation() {
        assert_eq!(parse_msg(json!({"istest": true})), Ok(Inbound::Probe));
        assert_eq!(parse_human_close(br#"{"istest":"true","conversation_id":""}"#), Ok(Inbound::Probe));
        // istest false is real traffic and validated as such.
        assert_eq!(field_msg(parse_msg(json!({"istest": false, "body": "x"}))), "conversation_id: missing");
    }

    #[test]
    fn human_close_parses() {
        assert_eq!(
            parse_human_close(br#"{"conversation_id":"h1","timestamp":"42"}"#),
            Ok(Inbound::Real(HumanClose { conversation_id: "h1".into(), timestamp: Some(42) }))
        );
        assert_eq!(parse_human_close(br#"{"timestamp":42}"#).unwrap_err().to_string(), "conversation_id: missing");
        assert_eq!(
            parse_human_close(br#"{"conversation_id":"h1","timestamp":{}}"#).unwrap_err().to_string(),
            "timestamp: must be a non-negative integer or a numeric string"
        );
    }

    #[test]
    fn dedupe_prefers_the_header_and_hashes_otherwise() {
        let m = HumanMessage { conversation_id: "h1".into(), timestamp: Some(1), body: "hi".into() };
        assert_eq!(dedupe_id(Some(" msg_abc "), &m), "msg_abc");
        let hashed = dedupe_id(None, &m);
        assert_eq!(hashed, dedupe_id(Some(""), &m));
        assert_eq!(hashed.len(), 64);
        assert_eq!(hashed, hex::encode(Sha256::digest(br#"["h1",1,"hi"]"#)));
        let mut other = m.clone();
        other.timestamp = Some(2);
        assert_ne!(dedupe_id(None, &other), hashed);
        other.timestamp = None;
        assert_ne!(dedupe_id(None, &other), hashed);
        // Field boundaries matter.
        let a = HumanMessage { conversation_id: "h1,".into(), timestamp: None, body: "x".into() };
        let b = HumanMessage { conversation_id: "h1".into(), timestamp: None, body: ",x".into() };
        assert_ne!(dedupe_id(None, &a), dedupe_id(None, &b));
    }

    #[test]
    fn serde_round_trip() {
        let m = HumanMessage { conversation_id: "h1".into(), timestamp: None, body: "hi".into() };
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(text, r#"{"conversation_id":"h1","body":"hi"}"#);
        assert_eq!(serde_json::from_str::<HumanMessage>(&text).unwrap(), m);
    }
}
