//! LiveChat webhooks: the envelope `{webhook_id, secret_key, action, organization_id, payload,
//! additional_data}`, parsed into the few events the hub acts on, with a dedupe key that is the
//! same however often LiveChat delivers one event. The only authentication is the registered
//! `secret_key` in the body: parse, then [`verify_secret`] before anything is stored.

use super::{cut, CUSTOM_ID_PREFIX, MAX_TEXT_BYTES};
use crate::webhook_desk::{ParseError, MAX_INBOUND_BYTES};
use baton_core::agent::LivechatConfig;
use baton_core::model::MAX_USER_ID_LEN;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub const ACTION_INCOMING_EVENT: &str = "incoming_event";
pub const ACTION_INCOMING_CHAT: &str = "incoming_chat";
pub const ACTION_CHAT_DEACTIVATED: &str = "chat_deactivated";
/// Longest event or user id accepted.
const MAX_ID_BYTES: usize = 256;
/// Longest e-mail address accepted.
const MAX_EMAIL_BYTES: usize = 254;

/// Constant-time compare of the body's `secret_key` with `config.webhook_secret`. Both sides
/// are hashed first, so neither the content nor the length of the secret leaks through
/// timing. An empty configured secret accepts nothing.
pub fn verify_secret(config: &LivechatConfig, secret_key: Option<&str>) -> bool {
    let expected = config.webhook_secret.expose();
    let Some(given) = secret_key else { return false };
    if expected.is_empty() {
        return false;
    }
    let a = Sha256::digest(expected.as_bytes());
    let b = Sha256::digest(given.as_bytes());
    bool::from(a.ct_eq(&b))
}

#[derive(Debug, Clone, PartialEq)]
pub enum WebhookEvent {
    /// `incoming_event` of a message (a file becomes `[file: name] url`, a rich message or any
    /// other authored event a placeholder: never dropped). Events visible to agents only
    /// (private notes), system messages and forms are `Other`.
    Message {
        chat_id: String,
        thread_id: String,
        event_id: String,
        author_id: String,
        custom_id: Option<String>,
        text: String,
    },
    /// `incoming_chat`: a new chat (or thread) with its first customer messages (desk -> desk:
    /// the bot answers). Events the hub sent itself (its `custom_id` prefix) are left out of
    /// `first_text`, so a chat the hub started as the customer never reads as a new question.
    ChatStarted {
        chat_id: String,
        thread_id: String,
        customer_id: Option<String>,
        customer_email: Option<String>,
        first_text: Option<String>,
    },
    ChatDeactivated {
        chat_id: String,
    },
    /// Actions and events the hub accepts and ignores: the action (`incoming_event:<type>` for
    /// ignored events) and the chat, if any.
    Other {
        action: String,
        chat_id: Option<String>,
    },
}

impl WebhookEvent {
    /// The LiveChat chat the event is about.
    pub fn chat_id(&self) -> Option<&str> {
        match self {
            WebhookEvent::Message { chat_id, .. }
            | WebhookEvent::ChatStarted { chat_id, .. }
            | WebhookEvent::ChatDeactivated { chat_id } => Some(chat_id),
            WebhookEvent::Other { chat_id, .. } => chat_id.as_deref(),
        }
    }
}

/// `Debug` shows the secret key as `***`: a notification may be logged.
#[derive(Clone, PartialEq)]
pub struct Notification {
    /// The body's `secret_key`: check it with [`verify_secret`].
    pub secret_key: Option<String>,
    pub webhook_id: String,
    /// Unique per delivered event (action + chat + event or thread id), stable across
    /// LiveChat's retries.
    pub dedupe_key: String,
    pub event: WebhookEvent,
}

impl std::fmt::Debug for Notification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notification")
            .field("secret_key", &self.secret_key.as_ref().map(|_| "***"))
            .field("webhook_id", &self.webhook_id)
            .field("dedupe_key", &self.dedupe_key)
            .field("event", &self.event)
            .finish()
    }
}

type Object = serde_json::Map<String, Value>;

fn field(field: &'static str, message: impl Into<String>) -> ParseError {
    ParseError::Field { field, message: message.into() }
}

/// A string or integer as a trimmed string; anything else is absent.
fn id_value(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) if n.is_u64() || n.is_i64() => Some(n.to_string()),
        _ => None,
    }
}

fn text_value(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty()).map(str::to_string)
}

/// A required id: present, bounded, without control characters.
fn id(v: Option<&Value>, name: &'static str, max: usize) -> Result<String, ParseError> {
    let id = id_value(v).ok_or_else(|| field(name, "missing (a string id is required)"))?;
    if id.len() > max {
        return Err(field(name, format!("must be at most {max} bytes")));
    }
    if id.chars().any(char::is_control) {
        return Err(field(name, "must not contain control characters"));
    }
    Ok(id)
}

fn object<'a>(v: Option<&'a Value>, name: &'static str) -> Result<&'a Object, ParseError> {
    match v {
        None | Some(Value::Null) => Err(field(name, "missing")),
        Some(Value::Object(o)) => Ok(o),
        Some(_) => Err(field(name, "must be an object")),
    }
}

/// Parse one webhook body. Errors name the field (`payload.chat_id: missing …`).
pub fn parse(body: &[u8]) -> Result<Notification, ParseError> {
    if body.len() > MAX_INBOUND_BYTES {
        return Err(ParseError::TooLarge);
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| ParseError::NotJson(e.to_string()))?;
    let Value::Object(map) = value else {
        return Err(ParseError::NotObject);
    };
    let secret_key = match map.get("secret_key") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(field("secret_key", "must be a string")),
    };
    let webhook_id = id_value(map.get("webhook_id")).unwrap_or_default();
    let action = match map.get("action") {
        None | Some(Value::Null) => return Err(field("action", "missing")),
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= 128 && !s.chars().any(char::is_control) => {
            s.trim().to_string()
        }
        Some(_) => return Err(field("action", "must be a non-empty action name")),
    };
    let payload = object(map.get("payload"), "payload");
    let (event, key_parts) = match action.as_str() {
        ACTION_INCOMING_EVENT => incoming_event(payload?)?,
        ACTION_INCOMING_CHAT => incoming_chat(payload?)?,
        ACTION_CHAT_DEACTIVATED => {
            let payload = payload?;
            let chat_id = id(payload.get("chat_id"), "payload.chat_id", MAX_USER_ID_LEN)?;
            let thread = id_value(payload.get("thread_id")).unwrap_or_default();
            (WebhookEvent::ChatDeactivated { chat_id: chat_id.clone() }, vec![chat_id, thread])
        }
        _ => {
            let payload = payload.ok();
            let chat_id = payload
                .and_then(|p| id_value(p.get("chat_id")).or_else(|| p.get("chat").and_then(|c| id_value(c.get("id")))))
                .filter(|c| c.len() <= MAX_USER_ID_LEN && !c.chars().any(char::is_control));
            // No documented id for every action: the payload itself tells deliveries apart.
            let digest = hex::encode(Sha256::digest(map.get("payload").unwrap_or(&Value::Null).to_string()));
            (
                WebhookEvent::Other { action: action.clone(), chat_id: chat_id.clone() },
                vec![chat_id.unwrap_or_default(), digest],
            )
        }
    };
    Ok(Notification { secret_key, webhook_id, dedupe_key: dedupe_key(&action, &key_parts), event })
}

/// `livechat-` and 40 hex digits of SHA-256 over `[action, ids…]` as JSON (the array keeps the
/// parts unambiguous); the webhook id and the secret stay out.
fn dedupe_key(action: &str, parts: &[String]) -> String {
    let canonical = json!([action, parts]).to_string();
    format!("livechat-{}", &hex::encode(Sha256::digest(canonical.as_bytes()))[..40])
}

fn incoming_event(payload: &Object) -> Result<(WebhookEvent, Vec<String>), ParseError> {
    let chat_id = id(payload.get("chat_id"), "payload.chat_id", MAX_USER_ID_LEN)?;
    let thread_id = id_value(payload.get("thread_id")).unwrap_or_default();
    let event = object(payload.get("event"), "payload.event")?;
    let event_id = id(event.get("id"), "payload.event.id", MAX_ID_BYTES)?;
    let kind = text_value(event.get("type")).ok_or_else(|| field("payload.event.type", "missing"))?;
    let key = vec![chat_id.clone(), event_id.clone()];
    let ignored = |what: &str| WebhookEvent::Other {
        action: format!("{ACTION_INCOMING_EVENT}:{}", cut(what, 64)),
        chat_id: Some(chat_id.clone()),
    };
    // Private notes between agents never reach the user.
    if is_agents_only(event) {
        return Ok((ignored("agents_only"), key));
    }
    if matches!(kind.as_str(), "system_message" | "system" | "form" | "filled_form") {
        return Ok((ignored(&kind), key));
    }
    let author_id = id(event.get("author_id"), "payload.event.author_id", MAX_ID_BYTES)?;
    let custom_id = text_value(event.get("custom_id")).map(|c| cut(&c, MAX_ID_BYTES));
    let text = event_text(&kind, event)?;
    let message = WebhookEvent::Message { chat_id: chat_id.clone(), thread_id, event_id, author_id, custom_id, text };
    Ok((message, key))
}

fn is_agents_only(event: &Object) -> bool {
    let visibility = event.get("visibility").or_else(|| event.get("recipients")).and_then(Value::as_str);
    visibility.is_some_and(|v| v.trim() == "agents")
}

/// The text of an authored event: a message's text, `[file: name] url` for a file, a
/// placeholder for a rich message or any other type.
fn event_text(kind: &str, event: &Object) -> Result<String, ParseError> {
    match kind {
        "message" => match event.get("text") {
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(cut(s.trim(), MAX_TEXT_BYTES)),
            Some(Value::String(_)) | None | Some(Value::Null) => Err(field("payload.event.text", "missing")),
            Some(_) => Err(field("payload.event.text", "must be a string")),
        },
        "file" => {
            let name = text_value(event.get("name")).map(|n| cut(&n, 200));
            let url = text_value(event.get("url")).map(|u| cut(&u, 2048));
            let mut out = match name {
                Some(n) => format!("[file: {n}]"),
                None => "[file]".to_string(),
            };
            if let Some(u) = url {
                out.push(' ');
                out.push_str(&u);
            }
            Ok(out)
        }
        "rich_message" => {
            let first = event.get("elements").and_then(Value::as_array).and_then(|e| e.first());
            let title = first.and_then(|e| text_value(e.get("title")));
            let buttons: Vec<String> = first
                .and_then(|e| e.get("buttons"))
                .and_then(Value::as_array)
                .map(|b| b.iter().filter_map(|b| text_value(b.get("text"))).collect())
                .unwrap_or_default();
            let mut out = match title {
                Some(t) => format!("[rich message: {}]", cut(&t, 500)),
                None => "[rich message]".to_string(),
            };
            if !buttons.is_empty() {
                out.push_str(&format!(" ({})", cut(&buttons.join(" | "), 500)));
            }
            Ok(out)
        }
        other => match text_value(event.get("text")) {
            Some(t) => Ok(cut(&t, MAX_TEXT_BYTES)),
            None => Ok(format!("[{} event]", cut(other, 64))),
        },
    }
}

fn incoming_chat(payload: &Object) -> Result<(WebhookEvent, Vec<String>), ParseError> {
    let chat = object(payload.get("chat"), "payload.chat")?;
    let chat_id = id(chat.get("id"), "payload.chat.id", MAX_USER_ID_LEN)?;
    let thread = match chat.get("thread") {
        None | Some(Value::Null) => None,
        Some(Value::Object(t)) => Some(t),
        Some(_) => return Err(field("payload.chat.thread", "must be an object")),
    };
    let thread_id = thread.and_then(|t| id_value(t.get("id"))).unwrap_or_default();
    let users = chat.get("users").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let customer = users.iter().find(|u| u.get("type").and_then(Value::as_str) == Some("customer"));
    let customer_id = customer.and_then(|c| id_value(c.get("id"))).filter(|c| c.len() <= MAX_ID_BYTES);
    let events = thread.and_then(|t| t.get("events")).and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let email = customer
        .and_then(|c| text_value(c.get("email")))
        .or_else(|| events.iter().find_map(form_email))
        .filter(|e| e.len() <= MAX_EMAIL_BYTES && e.contains('@') && !e.chars().any(char::is_control));
    let texts: Vec<String> = events
        .iter()
        .filter_map(Value::as_object)
        .filter(|e| e.get("type").and_then(Value::as_str) == Some("message") && !is_agents_only(e))
        .filter(|e| !text_value(e.get("custom_id")).is_some_and(|c| c.starts_with(CUSTOM_ID_PREFIX)))
        .filter(|e| match (&customer_id, id_value(e.get("author_id"))) {
            (Some(c), Some(a)) => *c == a,
            (None, _) => true,
            (Some(_), None) => false,
        })
        .filter_map(|e| text_value(e.get("text")))
        .collect();
    let first_text = (!texts.is_empty()).then(|| cut(&texts.join("\n"), MAX_TEXT_BYTES));
    let key = vec![chat_id.clone(), thread_id.clone()];
    Ok((WebhookEvent::ChatStarted { chat_id, thread_id, customer_id, customer_email: email, first_text }, key))
}

/// The e-mail a customer typed into a (pre-chat) form, if any.
fn form_email(event: &Value) -> Option<String> {
    if event.get("type").and_then(Value::as_str) != Some("filled_form") {
        return None;
    }
    event
        .get("fields")?
        .as_array()?
        .iter()
        .filter(|f| f.get("type").and_then(Value::as_str) == Some("email"))
        .find_map(|f| text_value(f.get("answer")).or_else(|| text_value(f.get("value"))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_core::model::Secret;

    fn envelope(action: &str, payload: Value) -> Vec<u8> {
        json!({
            "webhook_id": "1188f559c4bae6c4b9a87a1b32d78202",
            "secret_key": "s3cret-key",
            "action": action,
            "organization_id": "390e44e6-f1e6-0368c-z6ddb-74g14508c2ex",
            "payload": payload,
            "additional_data": {},
        })
        .to_string()
        .into_bytes()
    }

    fn event(extra: Value) -> Value {
        let mut e = json!({
            "id": "PZ070E0W1B_3",
            "type": "message",
            "text": " Your order ships today. ",
            "author_id": "smith@example.com",
            "created_at": "2019-10-11T09:41:00.877000Z",
            "visibility": "all",
        });
        for (k, v) in extra.as_object().unwrap() {
            e[k] = v.clone();
        }
        json!({"chat_id": "PS0X0L086G", "thread_id": "PZ070E0W1B", "event": e})
    }

    fn err(body: &[u8]) -> String {
        parse(body).expect_err("expected a parse error").to_string()
    }

    fn cfg(secret: &str) -> LivechatConfig {
        serde_json::from_value(json!({
            "organization_id": "o", "client_id": "c", "client_secret": "s", "refresh_token": "r",
            "webhook_secret": secret,
        }))
        .unwrap()
    }

    #[test]
    fn secrets_are_compared() {
        assert!(verify_secret(&cfg("s3cret-key"), Some("s3cret-key")));
        assert!(!verify_secret(&cfg("s3cret-key"), Some("s3cret-kez")));
        assert!(!verify_secret(&cfg("s3cret-key"), Some("s3cret")));
        assert!(!verify_secret(&cfg("s3cret-key"), None));
        assert!(!verify_secret(&cfg(""), Some("")));
        let mut c = cfg("x");
        c.webhook_secret = Secret("other".into());
        assert!(!verify_secret(&c, Some("x")));
    }

    #[test]
    fn messages() {
        let n = parse(&envelope(ACTION_INCOMING_EVENT, event(json!({"custom_id": "1dnepb4z00t"})))).unwrap();
        assert_eq!(n.secret_key.as_deref(), Some("s3cret-key"));
        assert!(!format!("{n:?}").contains("s3cret-key"));
        assert_eq!(n.webhook_id, "1188f559c4bae6c4b9a87a1b32d78202");
        assert_eq!(
            n.event,
            WebhookEvent::Message {
                chat_id: "PS0X0L086G".into(),
                thread_id: "PZ070E0W1B".into(),
                event_id: "PZ070E0W1B_3".into(),
                author_id: "smith@example.com".into(),
                custom_id: Some("1dnepb4z00t".into()),
                text: "Your order ships today.".into(),
            }
        );
        assert!(n.dedupe_key.starts_with("livechat-") && n.dedupe_key.len() == 49, "{}", n.dedupe_key);
        // The same event delivered again (another webhook id) has the same key; another event not.
        let mut again: Value = serde_json::from_slice(&envelope(ACTION_INCOMING_EVENT, event(json!({})))).unwrap();
        again["webhook_id"] = json!("other");
        assert_eq!(parse(again.to_string().as_bytes()).unwrap().dedupe_key, n.dedupe_key);
        let other = parse(&envelope(ACTION_INCOMING_EVENT, event(json!({"id": "PZ070E0W1B_4"})))).unwrap();
        assert_ne!(other.dedupe_key, n.dedupe_key);
        // Older payloads: `recipients`, no custom id.
        let n = parse(&envelope(ACTION_INCOMING_EVENT, event(json!({"recipients": "all", "custom_id": ""})))).unwrap();
        assert!(matches!(n.event, WebhookEvent::Message { custom_id: None, .. }));
    }

    #[test]
    fn files_rich_messages_and_ignored_events() {
        let file = json!({"type": "file", "text": null, "name": "invoice.pdf", "url": "https://cdn.livechat-files.com/api/file/lc/att/1/invoice.pdf"});
        let n = parse(&envelope(ACTION_INCOMING_EVENT, event(file))).unwrap();
        assert!(matches!(n.event, WebhookEvent::Message { ref text, .. }
            if text == "[file: invoice.pdf] https://cdn.livechat-files.com/api/file/lc/att/1/invoice.pdf"));
        let rich = json!({"type": "rich_message", "template_id": "cards", "elements": [{"title": "Pick one", "buttons": [{"text": "Yes"}, {"text": "No"}]}]});
        let n = parse(&envelope(ACTION_INCOMING_EVENT, event(rich))).unwrap();
        assert!(
            matches!(n.event, WebhookEvent::Message { ref text, .. } if text == "[rich message: Pick one] (Yes | No)")
        );
        let custom = json!({"type": "custom", "text": null});
        let n = parse(&envelope(ACTION_INCOMING_EVENT, event(custom))).unwrap();
        assert!(matches!(n.event, WebhookEvent::Message { ref text, .. } if text == "[custom event]"));
        // A private note, a system message: ignored, with the chat.
        let n = parse(&envelope(ACTION_INCOMING_EVENT, event(json!({"visibility": "agents"})))).unwrap();
        assert_eq!(
            n.event,
            WebhookEvent::Other { action: "incoming_event:agents_only".into(), chat_id: Some("PS0X0L086G".into()) }
        );
        let sys = json!({"type": "system_message", "system_message_type": "routing.assigned", "author_id": null});
        let n = parse(&envelope(ACTION_INCOMING_EVENT, event(sys))).unwrap();
        assert!(matches!(n.event, WebhookEvent::Other { ref action, .. } if action == "incoming_event:system_message"));
    }

    #[test]
    fn long_text_is_cut() {
        let n = parse(&envelope(ACTION_INCOMING_EVENT, event(json!({"text": "é".repeat(MAX_TEXT_BYTES)})))).unwrap();
        let WebhookEvent::Message { text, .. } = n.event else { panic!() };
        assert!(text.len() <= MAX_TEXT_BYTES && text.ends_with('…'));
    }

    fn chat(events: Value) -> Value {
        json!({"chat": {
            "id": "PJ0MRSHTDG",
            "users": [
                {"id": "b7eff798-f8df-4364-8059-649c35c9ed0c", "type": "customer", "email": "ann@example.com", "present": true},
                {"id": "5c9871d5372c824cbf22d860a707a578", "type": "agent", "present": true},
            ],
            "thread": {"id": "K600PKZON8", "active": true, "events": events},
            "access": {"group_ids": [0]},
        }})
    }

    #[test]
    fn chats_started() {
        let events = json!([
            {"id": "K600PKZON8_1", "type": "filled_form", "author_id": "b7eff798-f8df-4364-8059-649c35c9ed0c", "fields": []},
            {"id": "K600PKZON8_2", "type": "message", "text": "Hello", "author_id": "b7eff798-f8df-4364-8059-649c35c9ed0c"},
            {"id": "K600PKZON8_3", "type": "message", "text": "Hi! How can I help?", "author_id": "5c9871d5372c824cbf22d860a707a578"},
            {"id": "K600PKZON8_4", "type": "message", "text": "Where is my order?", "author_id": "b7eff798-f8df-4364-8059-649c35c9ed0c"},
        ]);
        let n = parse(&envelope(ACTION_INCOMING_CHAT, chat(events))).unwrap();
        assert_eq!(
            n.event,
            WebhookEvent::ChatStarted {
                chat_id: "PJ0MRSHTDG".into(),
                thread_id: "K600PKZON8".into(),
                customer_id: Some("b7eff798-f8df-4364-8059-649c35c9ed0c".into()),
                customer_email: Some("ann@example.com".into()),
                first_text: Some("Hello\nWhere is my order?".into()),
            }
        );
        // A chat the hub started as the customer: its own transcript is not a question.
        let own = json!([{"id": "X_1", "type": "message", "text": "Reason: …", "custom_id": "baton_0123",
                          "author_id": "b7eff798-f8df-4364-8059-649c35c9ed0c"}]);
        let n = parse(&envelope(ACTION_INCOMING_CHAT, chat(own))).unwrap();
        assert!(matches!(n.event, WebhookEvent::ChatStarted { first_text: None, .. }));
        // E-mail from the pre-chat form when the user has none.
        let mut body = chat(json!([{"id": "F_1", "type": "filled_form", "fields": [
            {"type": "name", "label": "Name:", "answer": "Ann"},
            {"type": "email", "label": "E-mail:", "answer": "form@example.com"}]}]));
        body["chat"]["users"][0].as_object_mut().unwrap().remove("email");
        let n = parse(&envelope(ACTION_INCOMING_CHAT, body)).unwrap();
        assert!(matches!(n.event, WebhookEvent::ChatStarted { customer_email: Some(ref e), first_text: None, .. }
            if e == "form@example.com"));
        // No thread at all.
        let n = parse(&envelope(ACTION_INCOMING_CHAT, json!({"chat": {"id": "C2"}}))).unwrap();
        assert!(
            matches!(n.event, WebhookEvent::ChatStarted { ref thread_id, customer_id: None, .. } if thread_id.is_empty())
        );
    }

    #[test]
    fn deactivated_and_others() {
        let n = parse(&envelope(ACTION_CHAT_DEACTIVATED, json!({"chat_id": "PJ0MRSHTDG", "thread_id": "K600PKZON8"})))
            .unwrap();
        assert_eq!(n.event, WebhookEvent::ChatDeactivated { chat_id: "PJ0MRSHTDG".into() });
        assert_eq!(n.event.chat_id(), Some("PJ0MRSHTDG"));
        let t = json!({"chat_id": "PJ0MRSHTDG", "thread_id": "K600PKZON8", "reason": "manual", "transferred_to": {"group_ids": [19]}});
        let n = parse(&envelope("chat_transferred", t.clone())).unwrap();
        assert_eq!(
            n.event,
            WebhookEvent::Other { action: "chat_transferred".into(), chat_id: Some("PJ0MRSHTDG".into()) }
        );
        assert_eq!(parse(&envelope("chat_transferred", t)).unwrap().dedupe_key, n.dedupe_key);
        let n = parse(&envelope("agent_created", json!({"id": "smith@example.com"}))).unwrap();
        assert_eq!(n.event, WebhookEvent::Other { action: "agent_created".into(), chat_id: None });
        // Other actions without a payload are still accepted.
        let n = parse(br#"{"action":"something_new","secret_key":"k"}"#).unwrap();
        assert!(matches!(n.event, WebhookEvent::Other { chat_id: None, .. }));
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(err(br#"{"payload":{}}"#), "action: missing");
        assert_eq!(err(br#"{"action":7}"#), "action: must be a non-empty action name");
        assert_eq!(err(br#"{"action":"incoming_event","secret_key":5}"#), "secret_key: must be a string");
        assert_eq!(err(br#"{"action":"incoming_event"}"#), "payload: missing");
        assert_eq!(err(br#"{"action":"incoming_event","payload":[1]}"#), "payload: must be an object");
        assert!(err(br#"{"action":"incoming_event","payload":{"event":{}}}"#).starts_with("payload.chat_id: missing"));
        assert_eq!(err(br#"{"action":"incoming_event","payload":{"chat_id":"C"}}"#), "payload.event: missing");
        let mut e = event(json!({}));
        e["event"].as_object_mut().unwrap().remove("id");
        assert!(err(&envelope(ACTION_INCOMING_EVENT, e)).starts_with("payload.event.id: missing"));
        let mut e = event(json!({}));
        e["event"].as_object_mut().unwrap().remove("author_id");
        assert!(err(&envelope(ACTION_INCOMING_EVENT, e)).starts_with("payload.event.author_id: missing"));
        assert_eq!(err(&envelope(ACTION_INCOMING_EVENT, event(json!({"text": ""})))), "payload.event.text: missing");
        assert_eq!(
            err(&envelope(ACTION_INCOMING_EVENT, event(json!({"text": [1]})))),
            "payload.event.text: must be a string"
        );
        assert_eq!(err(&envelope(ACTION_INCOMING_EVENT, event(json!({"type": null})))), "payload.event.type: missing");
        let long = json!({"chat_id": "9".repeat(201), "thread_id": "T"});
        assert_eq!(err(&envelope(ACTION_CHAT_DEACTIVATED, long)), "payload.chat_id: must be at most 200 bytes");
        let ctl = json!({"chat_id": "a\nb"});
        assert_eq!(
            err(&envelope(ACTION_CHAT_DEACTIVATED, ctl)),
            "payload.chat_id: must not contain control characters"
        );
        assert_eq!(err(&envelope(ACTION_INCOMING_CHAT, json!({}))), "payload.chat: missing");
        assert!(err(&envelope(ACTION_INCOMING_CHAT, json!({"chat": {}}))).starts_with("payload.chat.id: missing"));
        assert!(matches!(parse(b"{nope"), Err(ParseError::NotJson(_))));
        assert_eq!(parse(b"[1]"), Err(ParseError::NotObject));
        assert_eq!(parse(&vec![b' '; MAX_INBOUND_BYTES + 1]), Err(ParseError::TooLarge));
    }
}
