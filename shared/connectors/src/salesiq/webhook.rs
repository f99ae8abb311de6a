//! SalesIQ webhook notifications (`conversation.*` data webhooks, also sent by Workflows):
//! parsed into the few events the hub acts on, with a dedupe key that is the same however often
//! SalesIQ delivers one notification. Verify the signature ([`super::signature::verify`]) on
//! the raw body before parsing.

use crate::webhook_desk::{ParseError, MAX_INBOUND_BYTES};
use baton_core::model::MAX_USER_ID_LEN;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Longest message text taken from a notification; longer text is cut (with `…`), not refused,
/// so a long visitor message still reaches the AI or the user.
pub const MAX_TEXT_BYTES: usize = 16 * 1024;
/// Longest message id accepted.
const MAX_MESSAGE_ID_BYTES: usize = 256;

pub const EVENT_CREATED: &str = "conversation.created";
pub const EVENT_VISITOR_REPLIED: &str = "conversation.visitor.replied";
pub const EVENT_OPERATOR_REPLIED: &str = "conversation.operator.replied";
pub const EVENT_COMPLETED: &str = "conversation.completed";

#[derive(Debug, Clone, PartialEq)]
pub enum WebhookEvent {
    /// A visitor started a chat; `question` is its first message.
    Created {
        conversation_id: String,
        question: Option<String>,
        visitor: Visitor,
    },
    VisitorReplied {
        conversation_id: String,
        message_id: String,
        text: String,
        visitor: Visitor,
    },
    /// An operator wrote: a human, or the hub itself (see `SalesiqClient::is_own_message`).
    OperatorReplied {
        conversation_id: String,
        message_id: String,
        sender_id: Option<String>,
        sender_type: Option<String>,
        text: String,
    },
    Completed {
        conversation_id: String,
    },
    /// Events we accept and ignore (rated, transfer.*, attender.updated, ...): the name.
    Other {
        event: String,
        conversation_id: Option<String>,
    },
}

impl WebhookEvent {
    /// The SalesIQ conversation the event is about (`None` only for `Other` events of other
    /// entities).
    pub fn conversation_id(&self) -> Option<&str> {
        match self {
            WebhookEvent::Created { conversation_id, .. }
            | WebhookEvent::VisitorReplied { conversation_id, .. }
            | WebhookEvent::OperatorReplied { conversation_id, .. }
            | WebhookEvent::Completed { conversation_id } => Some(conversation_id),
            WebhookEvent::Other { conversation_id, .. } => conversation_id.as_deref(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Visitor {
    pub email: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub event: WebhookEvent,
    /// (event, entity_id, message id): the same notification delivered again, whatever
    /// `attempt` says, has the same key.
    pub dedupe_key: String,
}

type Object = serde_json::Map<String, Value>;

fn field(field: &'static str, message: impl Into<String>) -> ParseError {
    ParseError::Field { field, message: message.into() }
}

/// Parse one webhook body. Errors name the field (`entity.message.msgid: missing`).
pub fn parse(body: &[u8]) -> Result<Notification, ParseError> {
    if body.len() > MAX_INBOUND_BYTES {
        return Err(ParseError::TooLarge);
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| ParseError::NotJson(e.to_string()))?;
    let Value::Object(map) = value else {
        return Err(ParseError::NotObject);
    };
    let event = match map.get("event") {
        None | Some(Value::Null) => return Err(field("event", "missing")),
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= 128 && !s.chars().any(char::is_control) => {
            s.trim().to_string()
        }
        Some(_) => return Err(field("event", "must be a non-empty event name")),
    };
    let entity = match map.get("entity") {
        None | Some(Value::Null) => None,
        Some(Value::Object(o)) => Some(o),
        Some(_) => return Err(field("entity", "must be an object")),
    };
    let entity_id = id_value(map.get("entity_id")).or_else(|| entity.and_then(|e| id_value(e.get("id"))));
    let conversational = event.starts_with("conversation.")
        || map.get("entity_type").and_then(Value::as_str).is_some_and(|t| t == "conversation");

    let parsed = match event.as_str() {
        EVENT_CREATED => {
            let entity = entity.ok_or_else(|| field("entity", "missing"))?;
            let conversation_id = conversation_id(entity_id.as_deref())?;
            let question = entity
                .get("question")
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|q| !q.is_empty())
                .map(|q| cut(q, MAX_TEXT_BYTES));
            (WebhookEvent::Created { conversation_id, question, visitor: visitor(entity) }, None)
        }
        EVENT_VISITOR_REPLIED => {
            let entity = entity.ok_or_else(|| field("entity", "missing"))?;
            let conversation_id = conversation_id(entity_id.as_deref())?;
            let message = message(entity)?;
            let message_id = message_id(message)?;
            let text = message_text(message)?;
            let event = WebhookEvent::VisitorReplied {
                conversation_id,
                message_id: message_id.clone(),
                text,
                visitor: visitor(entity),
            };
            (event, Some(message_id))
        }
        EVENT_OPERATOR_REPLIED => {
            let entity = entity.ok_or_else(|| field("entity", "missing"))?;
            let conversation_id = conversation_id(entity_id.as_deref())?;
            let message = message(entity)?;
            let message_id = message_id(message)?;
            let text = message_text(message)?;
            let sender = message.get("sender").and_then(Value::as_object);
            let sender_id = sender.and_then(|s| id_value(s.get("id")));
            let sender_type = sender
                .and_then(|s| s.get("type"))
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            let event = WebhookEvent::OperatorReplied {
                conversation_id,
                message_id: message_id.clone(),
                sender_id,
                sender_type,
                text,
            };
            (event, Some(message_id))
        }
        EVENT_COMPLETED => (WebhookEvent::Completed { conversation_id: conversation_id(entity_id.as_deref())? }, None),
        _ => {
            let conversation_id =
                if conversational { entity_id.as_deref().and_then(|id| conversation_id(Some(id)).ok()) } else { None };
            (WebhookEvent::Other { event: event.clone(), conversation_id }, None)
        }
    };
    let (event_value, message_id) = parsed;
    Ok(Notification { dedupe_key: dedupe_key(&event, entity_id.as_deref(), message_id.as_deref()), event: event_value })
}

/// `salesiq-` and 40 hex digits of SHA-256 over `[event, entity_id, message_id]` as JSON (the
/// array keeps the parts unambiguous); `attempt`, `event_time` and the webhook id stay out.
fn dedupe_key(event: &str, entity_id: Option<&str>, message_id: Option<&str>) -> String {
    let canonical = json!([event, entity_id, message_id]).to_string();
    format!("salesiq-{}", &hex::encode(Sha256::digest(canonical.as_bytes()))[..40])
}

/// A string or integer id as a string; anything else is absent.
fn id_value(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) if n.is_u64() || n.is_i64() => Some(n.to_string()),
        _ => None,
    }
}

fn conversation_id(id: Option<&str>) -> Result<String, ParseError> {
    const F: &str = "entity_id";
    let id = id.ok_or_else(|| field(F, "missing (neither entity_id nor entity.id is a string or integer)"))?;
    if id.len() > MAX_USER_ID_LEN {
        return Err(field(F, format!("must be at most {MAX_USER_ID_LEN} bytes")));
    }
    if id.chars().any(char::is_control) {
        return Err(field(F, "must not contain control characters"));
    }
    Ok(id.to_string())
}

fn message(entity: &Object) -> Result<&Object, ParseError> {
    match entity.get("message") {
        None | Some(Value::Null) => Err(field("entity.message", "missing")),
        Some(Value::Object(m)) => Ok(m),
        Some(_) => Err(field("entity.message", "must be an object")),
    }
}

fn message_id(message: &Object) -> Result<String, ParseError> {
    const F: &str = "entity.message.msgid";
    let id = id_value(message.get("msgid"))
        .or_else(|| id_value(message.get("id")))
        .ok_or_else(|| field(F, "missing (a string or integer message id is required)"))?;
    if id.len() > MAX_MESSAGE_ID_BYTES || id.chars().any(char::is_control) {
        return Err(field(F, format!("must be at most {MAX_MESSAGE_ID_BYTES} bytes without control characters")));
    }
    Ok(id)
}

/// The text of a message; a message without text (a file, a card) becomes a placeholder such
/// as `[file: invoice.pdf]`, so nothing the visitor or operator sent is dropped silently.
fn message_text(message: &Object) -> Result<String, ParseError> {
    const F: &str = "entity.message.text";
    match message.get("text") {
        Some(Value::String(s)) if !s.trim().is_empty() => return Ok(cut(s.trim(), MAX_TEXT_BYTES)),
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(_) => return Err(field(F, "must be a string")),
    }
    if let Some(placeholder) = attachment_placeholder(message) {
        return Ok(placeholder);
    }
    match message.get("type").and_then(Value::as_str).map(str::trim) {
        Some(t) if !t.is_empty() && t != "text" => Ok(format!("[{} message]", cut(t, 64))),
        _ => Err(field(F, "missing (no text and no attachment)")),
    }
}

/// `[file: name]` (plus the comment, if any) when the message carries a file or attachment.
fn attachment_placeholder(message: &Object) -> Option<String> {
    let meta = message.get("meta").and_then(Value::as_object);
    let candidates = ["file", "attachment", "attachments", "files"];
    let found = candidates
        .iter()
        .find_map(|k| message.get(*k).filter(|v| !v.is_null()))
        .or_else(|| meta.and_then(|m| candidates.iter().find_map(|k| m.get(*k).filter(|v| !v.is_null()))))?;
    let first = match found {
        Value::Array(items) => items.first()?,
        other => other,
    };
    let name = match first {
        Value::Object(o) => ["name", "file_name", "fileName", "filename"]
            .iter()
            .find_map(|k| o.get(*k).and_then(Value::as_str))
            .map(str::trim)
            .filter(|n| !n.is_empty()),
        Value::String(s) if !s.trim().is_empty() => Some(s.trim()),
        _ => None,
    };
    let mut out = match name {
        Some(n) => format!("[file: {}]", cut(n, 200)),
        None => "[file]".to_string(),
    };
    if let Some(comment) = message.get("comment").and_then(Value::as_str).map(str::trim).filter(|c| !c.is_empty()) {
        out.push(' ');
        out.push_str(&cut(comment, MAX_TEXT_BYTES - out.len()));
    }
    Some(out)
}

fn visitor(entity: &Object) -> Visitor {
    let Some(v) = entity.get("visitor").and_then(Value::as_object) else {
        return Visitor::default();
    };
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty()).map(str::to_string);
    let email = text("email_id").or_else(|| text("email")).filter(|e| e.len() <= 254 && e.contains('@'));
    let name = text("name").or_else(|| match (text("first_name"), text("last_name")) {
        (Some(f), Some(l)) => Some(format!("{f} {l}")),
        (f, l) => f.or(l),
    });
    Visitor { email, name: name.map(|n| cut(&n, 200)) }
}

/// `s` cut to at most `max` bytes on a character boundary, with `…` when cut.
fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(event: &str, entity: Value, attempt: u32) -> Vec<u8> {
        json!({
            "entity_type": "conversation",
            "event": event,
            "org_id": "55778119",
            "entity_id": "40526000001808033",
            "app_id": "40526000000002040",
            "attempt": attempt,
            "version": "1",
            "event_time": 1700000000000i64 + attempt as i64,
            "webhook": {"id": "40526000000123001"},
            "entity": entity,
        })
        .to_string()
        .into_bytes()
    }

    fn visitor_json() -> Value {
        json!({"id": "30000000090034", "name": "Tricia", "email_id": "tricia@zylker.com", "channel": "website", "type": "lead"})
    }

    fn reply(sender_type: &str, text: Value) -> Value {
        json!({
            "id": "40526000001808033",
            "visitor_conversation_id": "ad433hjdid546f8n4b734j4omfhjsrwnet46fklf7",
            "message": {
                "msgid": "1700000000123",
                "text": text,
                "sender": {"id": "30102333033335", "name": "Patricia", "type": sender_type},
                "meta": {},
            },
            "visitor": visitor_json(),
        })
    }

    fn err(body: &[u8]) -> String {
        parse(body).expect_err("expected a parse error").to_string()
    }

    #[test]
    fn created() {
        let entity = json!({
            "id": "40526000001808033",
            "visitor_conversation_id": "ad433h",
            "question": " Hi, I need some assistance in buying a dining set. ",
            "department_id": "301050000004",
            "app_id": "30185567778889",
            "visitor": visitor_json(),
            "status": "Waiting",
        });
        let n = parse(&envelope(EVENT_CREATED, entity, 1)).unwrap();
        assert_eq!(
            n.event,
            WebhookEvent::Created {
                conversation_id: "40526000001808033".into(),
                question: Some("Hi, I need some assistance in buying a dining set.".into()),
                visitor: Visitor { email: Some("tricia@zylker.com".into()), name: Some("Tricia".into()) },
            }
        );
        assert!(n.dedupe_key.starts_with("salesiq-") && n.dedupe_key.len() == 48, "{}", n.dedupe_key);
        // No question, no visitor: still a conversation.
        let n = parse(&envelope(EVENT_CREATED, json!({"id": "1"}), 1)).unwrap();
        assert!(
            matches!(n.event, WebhookEvent::Created { question: None, ref visitor, .. } if *visitor == Visitor::default())
        );
    }

    #[test]
    fn visitor_replied_and_redelivery_share_the_key() {
        let first = parse(&envelope(EVENT_VISITOR_REPLIED, reply("visitor", json!("Where is my order?")), 1)).unwrap();
        assert_eq!(
            first.event,
            WebhookEvent::VisitorReplied {
                conversation_id: "40526000001808033".into(),
                message_id: "1700000000123".into(),
                text: "Where is my order?".into(),
                visitor: Visitor { email: Some("tricia@zylker.com".into()), name: Some("Tricia".into()) },
            }
        );
        let again = parse(&envelope(EVENT_VISITOR_REPLIED, reply("visitor", json!("Where is my order?")), 2)).unwrap();
        assert_eq!(again.dedupe_key, first.dedupe_key, "attempt and event_time do not change the key");
        // Another message in the same conversation, or another event, has another key.
        let mut other = reply("visitor", json!("x"));
        other["message"]["msgid"] = json!(1700000000124u64);
        let other = parse(&envelope(EVENT_VISITOR_REPLIED, other, 1)).unwrap();
        assert_ne!(other.dedupe_key, first.dedupe_key);
        assert!(
            matches!(other.event, WebhookEvent::VisitorReplied { ref message_id, .. } if message_id == "1700000000124")
        );
        let op = parse(&envelope(EVENT_OPERATOR_REPLIED, reply("operator", json!("Where is my order?")), 1)).unwrap();
        assert_ne!(op.dedupe_key, first.dedupe_key);
    }

    #[test]
    fn operator_replied() {
        let n =
            parse(&envelope(EVENT_OPERATOR_REPLIED, reply("operator", json!("Your order ships today.")), 1)).unwrap();
        assert_eq!(
            n.event,
            WebhookEvent::OperatorReplied {
                conversation_id: "40526000001808033".into(),
                message_id: "1700000000123".into(),
                sender_id: Some("30102333033335".into()),
                sender_type: Some("operator".into()),
                text: "Your order ships today.".into(),
            }
        );
        // Without a sender.
        let mut entity = reply("operator", json!("hi"));
        entity["message"].as_object_mut().unwrap().remove("sender");
        let n = parse(&envelope(EVENT_OPERATOR_REPLIED, entity, 1)).unwrap();
        assert!(matches!(n.event, WebhookEvent::OperatorReplied { sender_id: None, sender_type: None, .. }));
    }

    #[test]
    fn completed_and_others() {
        let entity = json!({"id": "40526000001808033", "ended_by": "visitor", "end_time": "1556866331929", "visitor": visitor_json()});
        let n = parse(&envelope(EVENT_COMPLETED, entity, 3)).unwrap();
        assert_eq!(n.event, WebhookEvent::Completed { conversation_id: "40526000001808033".into() });
        assert_eq!(n.event.conversation_id(), Some("40526000001808033"));
        let n = parse(&envelope("conversation.rated", json!({"rating": 4}), 1)).unwrap();
        assert_eq!(
            n.event,
            WebhookEvent::Other {
                event: "conversation.rated".into(),
                conversation_id: Some("40526000001808033".into())
            }
        );
        // A visitor event: its entity id is not a conversation.
        let body = json!({"entity_type": "visitor", "event": "visitor.updated", "entity_id": "300", "entity": {}});
        let n = parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(n.event, WebhookEvent::Other { event: "visitor.updated".into(), conversation_id: None });
        assert_eq!(n.event.conversation_id(), None);
        // Completed without entity_id falls back to entity.id.
        let n = parse(br#"{"event":"conversation.completed","entity":{"id":12345}}"#).unwrap();
        assert_eq!(n.event, WebhookEvent::Completed { conversation_id: "12345".into() });
    }

    #[test]
    fn attachments_become_placeholders() {
        let mut entity = reply("visitor", Value::Null);
        entity["message"]["file"] = json!({"name": "invoice.pdf", "size": 1200, "type": "application/pdf"});
        entity["message"]["comment"] = json!("see attached");
        let n = parse(&envelope(EVENT_VISITOR_REPLIED, entity, 1)).unwrap();
        assert!(
            matches!(n.event, WebhookEvent::VisitorReplied { ref text, .. } if text == "[file: invoice.pdf] see attached")
        );

        let mut entity = reply("operator", json!(""));
        entity["message"]["meta"] = json!({"attachments": [{"file_name": "photo.png"}]});
        let n = parse(&envelope(EVENT_OPERATOR_REPLIED, entity, 1)).unwrap();
        assert!(matches!(n.event, WebhookEvent::OperatorReplied { ref text, .. } if text == "[file: photo.png]"));

        let mut entity = reply("visitor", Value::Null);
        entity["message"]["type"] = json!("location");
        let n = parse(&envelope(EVENT_VISITOR_REPLIED, entity, 1)).unwrap();
        assert!(matches!(n.event, WebhookEvent::VisitorReplied { ref text, .. } if text == "[location message]"));
    }

    #[test]
    fn long_text_is_cut_not_refused() {
        let long = "é".repeat(MAX_TEXT_BYTES);
        let n = parse(&envelope(EVENT_VISITOR_REPLIED, reply("visitor", json!(long)), 1)).unwrap();
        let WebhookEvent::VisitorReplied { text, .. } = n.event else { panic!() };
        assert!(text.len() <= MAX_TEXT_BYTES && text.ends_with('…'));
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(err(br#"{"entity":{}}"#), "event: missing");
        assert_eq!(err(br#"{"event":7}"#), "event: must be a non-empty event name");
        assert_eq!(err(br#"{"event":"conversation.created","entity":[1]}"#), "entity: must be an object");
        assert_eq!(err(br#"{"event":"conversation.created"}"#), "entity: missing");
        assert!(err(br#"{"event":"conversation.created","entity":{"question":"q"}}"#).starts_with("entity_id: missing"));
        assert!(err(br#"{"event":"conversation.completed"}"#).starts_with("entity_id: missing"));
        let long_id = json!({"event": "conversation.completed", "entity_id": "9".repeat(201)});
        assert_eq!(err(long_id.to_string().as_bytes()), "entity_id: must be at most 200 bytes");

        let mut entity = reply("visitor", json!("x"));
        entity.as_object_mut().unwrap().remove("message");
        assert_eq!(err(&envelope(EVENT_VISITOR_REPLIED, entity, 1)), "entity.message: missing");
        let mut entity = reply("visitor", json!("x"));
        entity["message"].as_object_mut().unwrap().remove("msgid");
        assert!(err(&envelope(EVENT_VISITOR_REPLIED, entity, 1)).starts_with("entity.message.msgid: missing"));
        let entity = reply("operator", Value::Null);
        assert_eq!(
            err(&envelope(EVENT_OPERATOR_REPLIED, entity, 1)),
            "entity.message.text: missing (no text and no attachment)"
        );
        let entity = reply("visitor", json!(["x"]));
        assert_eq!(err(&envelope(EVENT_VISITOR_REPLIED, entity, 1)), "entity.message.text: must be a string");

        assert!(matches!(parse(b"{nope"), Err(ParseError::NotJson(_))));
        assert_eq!(parse(b"[1]"), Err(ParseError::NotObject));
        assert_eq!(parse(&vec![b' '; MAX_INBOUND_BYTES + 1]), Err(ParseError::TooLarge));
    }
}
