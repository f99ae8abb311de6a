//! The Agent API (seed 003's contract, the shape of Zendesk "AI agents - Advanced"): what an
//! integration sends to `POST /converse/chat` and what the hub pushes to its converse webhook.
//!
//! Inbound, headers `botid: <agent id>` and `Authorization: <token>` (raw, or `Bearer <token>`):
//! ```json
//! {"platformConversationId": "<the integration's id>",
//!  "eventType": "startSession" | "message" | "endSession" | "metadata",
//!  "text": "...", "cardIndex": 0,
//!  "metaData": {"key": "phone", "value": "+385...", "sanitize": true}}
//! ```
//! `metaData` is one object or a list of them (both forms are in use); values are strings.
//! It may come with any event type, and is required for `metadata`.
//!
//! Outbound, to the agent's `api.converse_url`, signed per Standard Webhooks, `webhook-id`
//! the same on every retry and equal to `messageId`:
//! ```json
//! {"botId": "<agent id>", "channel": "chat",
//!  "data": {"platformConversationId": "...", "eventType": "sendMessage", "messageId": "msg_...",
//!           "type": "text", "text": "...", "sender": "bot" | "human" | "system",
//!           "buttons": [{"text": "<label>", "type": "button", "value": "<send this back as text>"}]}}
//! ```
//! and, when the integration's own humans take the user, `"eventType": "escalate"` with
//! `"reason"`, the `"text"` to tell the user and `"escalateTo"` (the transfer target, for voice).

use crate::outbound::{status_error, Poster};
use crate::standard_webhooks::SigningSecret;
use baton_core::agent::Agent;
use baton_core::model::{OutMessage, Role, MAX_USER_ID_LEN};
use baton_core::ports::DeliveryError;
use serde_json::{json, Map, Value};
use std::time::Duration;

/// Longest user text accepted, in characters.
pub const MAX_TEXT_CHARS: usize = 4000;
/// Session parameters one request may set.
pub const MAX_META_ITEMS: usize = 50;
/// Longest parameter value, in characters.
pub const MAX_META_VALUE_CHARS: usize = 2000;

/// One parsed `/converse/chat` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConverseRequest {
    pub conversation_id: String,
    pub event: ConverseEvent,
    /// Session parameters sent along (`metaData`), applied before the event.
    pub meta: Vec<MetaItem>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConverseEvent {
    Start,
    /// A user message; a pressed button or carousel card arrives as its value in `text`.
    Message {
        text: String,
        card_index: Option<u32>,
    },
    End,
    /// Only parameters.
    Metadata,
}

impl ConverseEvent {
    pub fn name(&self) -> &'static str {
        match self {
            ConverseEvent::Start => "startSession",
            ConverseEvent::Message { .. } => "message",
            ConverseEvent::End => "endSession",
            ConverseEvent::Metadata => "metadata",
        }
    }
}

/// A session parameter; `sanitize` marks personal data, masked wherever humans see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaItem {
    pub key: String,
    pub value: String,
    pub sanitize: bool,
}

/// Why a request is refused (400); the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidRequest {
    pub field: String,
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> InvalidRequest {
    InvalidRequest { field: field.into(), message: message.into() }
}

/// Parse and validate a `/converse/chat` body.
pub fn parse_converse(bytes: &[u8]) -> Result<ConverseRequest, InvalidRequest> {
    let body: Value = serde_json::from_slice(bytes).map_err(|e| invalid("body", format!("not valid JSON: {e}")))?;
    let Value::Object(body) = body else {
        return Err(invalid("body", "must be a JSON object"));
    };
    let conversation_id = match body.get("platformConversationId") {
        Some(Value::String(s)) if valid_conversation_id(s) => s.clone(),
        Some(Value::String(_)) => {
            return Err(invalid(
                "platformConversationId",
                format!("must be 1-{MAX_USER_ID_LEN} bytes without control characters"),
            ))
        }
        Some(_) => return Err(invalid("platformConversationId", "must be a string")),
        None => return Err(invalid("platformConversationId", "is required")),
    };
    let meta = match body.get("metaData") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => parse_meta(v)?,
    };
    let text = match body.get("text") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.trim().to_string()),
        Some(_) => return Err(invalid("text", "must be a string")),
    };
    let card_index = match body.get("cardIndex") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| invalid("cardIndex", "must be a non-negative integer"))?,
        ),
    };
    let event = match body.get("eventType") {
        Some(Value::String(t)) => match t.as_str() {
            "startSession" => ConverseEvent::Start,
            "endSession" => ConverseEvent::End,
            "metadata" if meta.is_empty() => return Err(invalid("metaData", "is required for eventType metadata")),
            "metadata" => ConverseEvent::Metadata,
            "message" => {
                let text = text.filter(|t| !t.is_empty()).ok_or_else(|| {
                    invalid("text", "is required for eventType message (a pressed button sends its value)")
                })?;
                if text.chars().count() > MAX_TEXT_CHARS {
                    return Err(invalid("text", format!("longer than {MAX_TEXT_CHARS} characters")));
                }
                ConverseEvent::Message { text, card_index }
            }
            other => {
                return Err(invalid(
                    "eventType",
                    format!("unknown {:?}; expected startSession, message, endSession or metadata", quote(other)),
                ))
            }
        },
        Some(_) => return Err(invalid("eventType", "must be a string")),
        None => return Err(invalid("eventType", "is required")),
    };
    Ok(ConverseRequest { conversation_id, event, meta })
}

fn quote(s: &str) -> String {
    s.chars().take(40).collect()
}

fn valid_conversation_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_USER_ID_LEN && !s.chars().any(char::is_control)
}

fn parse_meta(v: &Value) -> Result<Vec<MetaItem>, InvalidRequest> {
    let items: Vec<(String, &Value)> = match v {
        Value::Object(_) => vec![("metaData".to_string(), v)],
        Value::Array(list) => list.iter().enumerate().map(|(i, item)| (format!("metaData[{i}]"), item)).collect(),
        _ => return Err(invalid("metaData", "must be an object {key, value, sanitize} or a list of them")),
    };
    if items.len() > MAX_META_ITEMS {
        return Err(invalid("metaData", format!("at most {MAX_META_ITEMS} parameters per request")));
    }
    items.into_iter().map(|(path, item)| meta_item(&path, item)).collect()
}

fn meta_item(path: &str, item: &Value) -> Result<MetaItem, InvalidRequest> {
    let Value::Object(o) = item else {
        return Err(invalid(path, "must be an object {key, value, sanitize}"));
    };
    let key = match o.get("key") {
        Some(Value::String(k)) if valid_param_key(k) => k.clone(),
        Some(_) => return Err(invalid(format!("{path}.key"), "must be 1-64 characters of A-Z, a-z, 0-9, _ . -")),
        None => return Err(invalid(format!("{path}.key"), "is required")),
    };
    let value = match o.get("value") {
        Some(Value::String(v)) if v.chars().count() <= MAX_META_VALUE_CHARS => v.clone(),
        Some(Value::String(_)) => {
            return Err(invalid(format!("{path}.value"), format!("longer than {MAX_META_VALUE_CHARS} characters")))
        }
        Some(_) => return Err(invalid(format!("{path}.value"), "must be a string")),
        None => return Err(invalid(format!("{path}.value"), "is required (an empty string removes the parameter)")),
    };
    let sanitize = match o.get("sanitize") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid(format!("{path}.sanitize"), "must be true or false")),
    };
    Ok(MetaItem { key, value, sanitize })
}

/// Parameter names: what the brain, actions and desks refer to them by.
pub fn valid_param_key(k: &str) -> bool {
    !k.is_empty() && k.len() <= 64 && k.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The `data` object of one converse event for `message` (also what the synchronous mode
/// returns, so both paths look the same to the integration).
pub fn event_data(conversation_id: &str, message: &OutMessage, message_id: &str) -> Value {
    let mut d = Map::new();
    d.insert("platformConversationId".into(), json!(conversation_id));
    d.insert("messageId".into(), json!(message_id));
    d.insert("text".into(), json!(message.text));
    match &message.escalation {
        Some(e) => {
            d.insert("eventType".into(), json!("escalate"));
            d.insert("reason".into(), json!(e.reason));
            if let Some(t) = &e.transfer_to {
                d.insert("escalateTo".into(), json!(t));
            }
        }
        None => {
            d.insert("eventType".into(), json!("sendMessage"));
            d.insert("type".into(), json!("text"));
            let sender = match message.from {
                Role::Bot => "bot",
                Role::Human => "human",
                Role::User | Role::System => "system",
            };
            d.insert("sender".into(), json!(sender));
            let buttons: Vec<Value> =
                message.buttons.iter().map(|b| json!({"text": b.label, "type": "button", "value": b.value})).collect();
            d.insert("buttons".into(), Value::Array(buttons));
        }
    }
    Value::Object(d)
}

/// The whole webhook body.
pub fn converse_body(agent: &str, conversation_id: &str, message: &OutMessage, message_id: &str) -> Value {
    json!({"botId": agent, "channel": "chat", "data": event_data(conversation_id, message, message_id)})
}

/// Pushes converse events to the integration's webhook.
#[derive(Debug, Clone)]
pub struct ConverseWebhook {
    poster: Poster,
}

impl ConverseWebhook {
    /// Share `client` (see [`crate::outbound::http_client`]).
    pub fn from_client(client: reqwest::Client, timeout: Duration) -> Self {
        ConverseWebhook { poster: Poster::from_client(client, timeout) }
    }

    /// POST one event; `message_id` is the idempotency key (the same on every retry).
    /// 2xx is delivered; 429/5xx and transport errors are retried; other statuses are final.
    pub async fn deliver(
        &self,
        agent: &Agent,
        url: &str,
        conversation_id: &str,
        message: &OutMessage,
        message_id: &str,
    ) -> Result<(), DeliveryError> {
        let body = converse_body(&agent.id, conversation_id, message, message_id);
        self.post(agent, url, &body, message_id).await.map(|_| ())
    }

    /// Ask `isTeamOnline`; the integration answers `{"isOnline": bool}` (anything else is
    /// an error, retried like a delivery).
    pub async fn team_online(
        &self,
        agent: &Agent,
        url: &str,
        conversation_id: &str,
        message_id: &str,
    ) -> Result<bool, DeliveryError> {
        let data = json!({"platformConversationId": conversation_id, "eventType": "isTeamOnline"});
        let body = json!({"botId": agent.id, "channel": "chat", "data": data});
        let reply = self.post(agent, url, &body, message_id).await?;
        serde_json::from_slice::<Value>(&reply)
            .ok()
            .and_then(|v| v.get("isOnline").and_then(Value::as_bool))
            .ok_or_else(|| {
                DeliveryError::retryable(format!(
                    "POST {}: the answer has no isOnline",
                    crate::outbound::redact_url(url)
                ))
            })
    }

    /// A signed POST; the body of a 2xx answer.
    async fn post(&self, agent: &Agent, url: &str, body: &Value, message_id: &str) -> Result<Vec<u8>, DeliveryError> {
        let secret = match agent.api.as_ref().and_then(|a| a.signing_secret.as_ref()) {
            Some(s) => Some(
                SigningSecret::parse(s.expose())
                    .map_err(|e| DeliveryError::permanent(format!("agent {}: api.signing_secret: {e}", agent.id)))?,
            ),
            None => None,
        };
        let reply = self.poster.post_json(url, body, message_id, secret.as_ref(), None).await?;
        if (200..300).contains(&reply.status) {
            Ok(reply.body)
        } else {
            Err(status_error(&reply, ""))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_core::model::{Button, Escalation};

    fn parse(v: Value) -> Result<ConverseRequest, InvalidRequest> {
        parse_converse(&serde_json::to_vec(&v).unwrap())
    }

    #[test]
    fn every_event_type_parses() {
        let r = parse(json!({"platformConversationId": "c1", "eventType": "startSession"})).unwrap();
        assert_eq!((r.conversation_id.as_str(), &r.event), ("c1", &ConverseEvent::Start));
        let r = parse(json!({"platformConversationId": "c1", "eventType": "message", "text": " hi ", "cardIndex": 2}))
            .unwrap();
        assert_eq!(r.event, ConverseEvent::Message { text: "hi".into(), card_index: Some(2) });
        let r = parse(json!({"platformConversationId": "c1", "eventType": "endSession"})).unwrap();
        assert_eq!(r.event, ConverseEvent::End);
        let r = parse(json!({"platformConversationId": "c1", "eventType": "metadata",
            "metaData": {"key": "phone", "value": "+385", "sanitize": true}}))
        .unwrap();
        assert_eq!(r.event, ConverseEvent::Metadata);
        assert_eq!(r.meta, vec![MetaItem { key: "phone".into(), value: "+385".into(), sanitize: true }]);
        // The list form, sent along with a start.
        let r = parse(json!({"platformConversationId": "c1", "eventType": "startSession",
            "metaData": [{"key": "a", "value": "1"}, {"key": "b", "value": ""}]}))
        .unwrap();
        assert_eq!(r.meta.len(), 2);
        assert!(!r.meta[0].sanitize);
    }

    #[test]
    fn errors_name_the_field() {
        let field = |v: Value| parse(v).unwrap_err().field;
        assert_eq!(field(json!([])), "body");
        assert_eq!(field(json!({"eventType": "message", "text": "x"})), "platformConversationId");
        assert_eq!(field(json!({"platformConversationId": 5, "eventType": "message"})), "platformConversationId");
        assert_eq!(field(json!({"platformConversationId": "a\nb", "eventType": "message"})), "platformConversationId");
        assert_eq!(field(json!({"platformConversationId": "c"})), "eventType");
        assert_eq!(field(json!({"platformConversationId": "c", "eventType": "typing"})), "eventType");
        assert_eq!(field(json!({"platformConversationId": "c", "eventType": "message"})), "text");
        assert_eq!(field(json!({"platformConversationId": "c", "eventType": "message", "text": "  "})), "text");
        assert_eq!(field(json!({"platformConversationId": "c", "eventType": "message", "text": 1})), "text");
        assert_eq!(
            field(json!({"platformConversationId": "c", "eventType": "message", "text": "x", "cardIndex": -1})),
            "cardIndex"
        );
        assert_eq!(field(json!({"platformConversationId": "c", "eventType": "metadata"})), "metaData");
        assert_eq!(
            field(
                json!({"platformConversationId": "c", "eventType": "metadata", "metaData": [{"key": "k", "value": 3}]})
            ),
            "metaData[0].value"
        );
        assert_eq!(
            field(
                json!({"platformConversationId": "c", "eventType": "metadata", "metaData": {"key": "a b", "value": "x"}})
            ),
            "metaData.key"
        );
        let too_long = "x".repeat(MAX_TEXT_CHARS + 1);
        assert_eq!(field(json!({"platformConversationId": "c", "eventType": "message", "text": too_long})), "text");
    }

    #[test]
    fn messages_and_escalations_have_the_contract_shape() {
        let mut m = OutMessage::new(Role::System, "End or keep waiting?");
        m.buttons.push(Button { label: "Keep waiting".into(), value: "/keep_waiting".into() });
        let body = converse_body("shop", "c1", &m, "msg_1");
        assert_eq!(
            body,
            json!({"botId": "shop", "channel": "chat", "data": {
                "platformConversationId": "c1", "eventType": "sendMessage", "messageId": "msg_1", "type": "text",
                "text": "End or keep waiting?", "sender": "system",
                "buttons": [{"text": "Keep waiting", "type": "button", "value": "/keep_waiting"}]}})
        );
        let e = OutMessage {
            escalation: Some(Escalation { reason: "billing".into(), transfer_to: Some("+4930".into()) }),
            ..OutMessage::new(Role::System, "Connecting you")
        };
        let data = event_data("c1", &e, "msg_2");
        assert_eq!(data["eventType"], "escalate");
        assert_eq!(data["escalateTo"], "+4930");
        assert_eq!(data["reason"], "billing");
        assert!(data.get("buttons").is_none());
    }
}
