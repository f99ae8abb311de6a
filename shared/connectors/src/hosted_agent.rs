//! A hosted AI agent as the brain (Zendesk "AI agents - Advanced", seed 003 and PROTOCOLS.md
//! section 5): the hub plays the integration. It POSTs the user's messages to
//! `{base_url}/converse/chat` (headers `botid`, `Authorization: <key>`); a 200 is only an
//! acknowledgement, the answers arrive on the hub's webhooks:
//!
//! - converse webhook `{"botId", "channel": "chat", "data": {"platformConversationId",
//!   "eventType", ...}}` with `sendMessage` (`type` text or carousel, `text`, `buttons[{text,
//!   type}]`, `carouselCards[{title, description?, imageUrl?, buttons}]`, `messageId`),
//!   `escalate` (`escalateTo?`), `isTeamOnline` (`teamId?`; answered `{"isOnline": bool}` in
//!   the response) and the widget-escalation variants;
//! - actions webhook `{"botId", "platformConversationId", "name", "data": [{"key", "value":
//!   [v], "saveAs"?}]}`, answered `{"results": [{"key", "value", "sanitize"?}]}`.
//!
//! The platform conversation id is the hub's conversation key, so a webhook names the
//! conversation it belongs to. How the hosted agent authenticates its webhooks is not
//! documented; the hub's webhook URLs carry a per-agent secret path segment instead.

use crate::outbound::{quote, status_error, Poster};
use baton_core::agent::HostedAgentConfig;
use baton_core::model::Button;
use baton_core::ports::DeliveryError;
use serde_json::{json, Value};
use std::time::Duration;

/// What a converse webhook asks of the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostedEvent {
    /// Text for the user; carousels arrive flattened into text and buttons.
    Message { text: String, buttons: Vec<Button>, message_id: Option<String> },
    /// Hand the user to a human; `to` is the configured target, if any.
    Escalate { to: Option<String> },
    /// Answer in the response whether humans are available.
    IsTeamOnline { team_id: Option<String> },
    /// The widget-escalation variants and anything newer: acknowledged, nothing to do.
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConverseWebhook {
    pub bot_id: String,
    pub conversation_id: String,
    pub event: HostedEvent,
}

/// One action trigger: the action's name and its inputs (the first value of each key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionTrigger {
    pub bot_id: String,
    pub conversation_id: String,
    pub name: String,
    pub inputs: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadWebhook(pub String);

fn field<'a>(v: &'a Value, path: &str) -> Result<&'a str, BadWebhook> {
    v.pointer(path)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| BadWebhook(format!("{}: a non-empty string is required", path.trim_start_matches('/'))))
}

fn buttons_of(v: Option<&Value>) -> Vec<Button> {
    v.and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                // The contract sends a pressed button back as its text.
                .map(|t| Button { label: t.to_string(), value: t.to_string() })
                .collect()
        })
        .unwrap_or_default()
}

/// Parse a converse webhook body.
pub fn parse_converse_webhook(bytes: &[u8]) -> Result<ConverseWebhook, BadWebhook> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| BadWebhook(format!("body is not JSON: {e}")))?;
    let bot_id = field(&v, "/botId")?.to_string();
    let conversation_id = field(&v, "/data/platformConversationId")?.to_string();
    let data = &v["data"];
    let event = match field(&v, "/data/eventType")? {
        "sendMessage" => {
            let mut text = data.get("text").and_then(Value::as_str).unwrap_or_default().to_string();
            let mut buttons = buttons_of(data.get("buttons"));
            // A carousel becomes one line per card and the cards' buttons.
            for card in data.get("carouselCards").and_then(Value::as_array).into_iter().flatten() {
                let title = card.get("title").and_then(Value::as_str).unwrap_or_default();
                let line = match card.get("description").and_then(Value::as_str) {
                    Some(d) if !d.is_empty() => format!("• {title}: {d}"),
                    _ => format!("• {title}"),
                };
                text = if text.is_empty() { line } else { format!("{text}\n{line}") };
                buttons.extend(buttons_of(card.get("buttons")));
            }
            if text.trim().is_empty() && buttons.is_empty() {
                return Err(BadWebhook("data.text: a sendMessage needs text, buttons or cards".into()));
            }
            let message_id = data.get("messageId").and_then(Value::as_str).map(str::to_string);
            HostedEvent::Message { text, buttons, message_id }
        }
        "escalate" | "widgetEscalate" => {
            HostedEvent::Escalate { to: data.get("escalateTo").and_then(Value::as_str).map(str::to_string) }
        }
        "isTeamOnline" => {
            HostedEvent::IsTeamOnline { team_id: data.get("teamId").and_then(Value::as_str).map(str::to_string) }
        }
        other => HostedEvent::Other(quote(other)),
    };
    Ok(ConverseWebhook { bot_id, conversation_id, event })
}

/// Parse an actions webhook body.
pub fn parse_action_trigger(bytes: &[u8]) -> Result<ActionTrigger, BadWebhook> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| BadWebhook(format!("body is not JSON: {e}")))?;
    let mut inputs = Vec::new();
    for (i, item) in v.get("data").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let key = field(item, "/key").map_err(|_| BadWebhook(format!("data[{i}].key: a string is required")))?;
        let value = match item.get("value") {
            Some(Value::Array(values)) => values.first().cloned().unwrap_or(Value::Null),
            Some(other) => other.clone(),
            None => Value::Null,
        };
        let value = match value {
            Value::String(s) => s,
            Value::Null => String::new(),
            other => other.to_string(),
        };
        inputs.push((key.to_string(), value));
    }
    Ok(ActionTrigger {
        bot_id: field(&v, "/botId")?.to_string(),
        conversation_id: field(&v, "/platformConversationId")?.to_string(),
        name: field(&v, "/name")?.to_string(),
        inputs,
    })
}

/// Calls the hosted agent's converse endpoint.
#[derive(Debug, Clone)]
pub struct HostedAgentClient {
    http: reqwest::Client,
}

impl HostedAgentClient {
    pub fn from_client(http: reqwest::Client) -> Self {
        HostedAgentClient { http }
    }

    /// POST one event (`startSession`, `message`, `metadata`, `endSession`); 200 means the
    /// agent took it. 401 is a rejected key, 404 an unknown bot, other 4xx final, 429/5xx
    /// and transport errors worth retrying.
    pub async fn converse(&self, cfg: &HostedAgentConfig, body: &Value) -> Result<(), DeliveryError> {
        let url = format!("{}/converse/chat", cfg.base_url.trim_end_matches('/'));
        let timeout = Duration::from_secs(cfg.timeout_secs.clamp(1, 20));
        let poster = Poster::from_client(self.http.clone(), timeout);
        let headers = [("botid", cfg.bot_id.as_str()), ("authorization", cfg.api_key.expose())];
        let reply = poster.post_json_with_headers(&url, body, &headers).await?;
        match reply.status {
            200..=299 => Ok(()),
            404 => Err(DeliveryError::permanent(format!(
                "{}: the hosted agent {:?} was not found",
                reply.what, cfg.bot_id
            ))),
            _ => Err(status_error(&reply, "")),
        }
    }
}

/// The converse body of a user message.
pub fn message_body(conversation_id: &str, text: &str) -> Value {
    json!({"platformConversationId": conversation_id, "eventType": "message", "text": text})
}

/// The converse body of a session start, with the parameters known so far.
pub fn start_body(conversation_id: &str) -> Value {
    json!({"platformConversationId": conversation_id, "eventType": "startSession"})
}

/// A `metadata` body setting `params` (values are strings, as the contract requires).
pub fn metadata_body(conversation_id: &str, params: &std::collections::BTreeMap<String, String>) -> Value {
    let items: Vec<Value> = params.iter().map(|(k, v)| json!({"key": k, "value": v})).collect();
    json!({"platformConversationId": conversation_id, "eventType": "metadata", "metaData": items})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converse_webhooks_parse() {
        let w = parse_converse_webhook(
            br#"{"botId":"b1","channel":"chat","data":{"platformConversationId":"shop#telegram#42",
            "eventType":"sendMessage","type":"text","text":"Pick one","messageId":"m1","confidence":0.9,
            "buttons":[{"text":"Orders","type":"button"},{"text":"Docs","type":"link"}]}}"#,
        )
        .unwrap();
        assert_eq!(w.conversation_id, "shop#telegram#42");
        let HostedEvent::Message { text, buttons, message_id } = w.event else { panic!() };
        assert_eq!((text.as_str(), message_id.as_deref()), ("Pick one", Some("m1")));
        assert_eq!(buttons[0], Button { label: "Orders".into(), value: "Orders".into() });

        let w = parse_converse_webhook(
            br#"{"botId":"b1","channel":"chat","data":{"platformConversationId":"c","eventType":"sendMessage",
            "type":"carousel","text":"","carouselCards":[{"title":"Flour","description":"1 kg","buttons":[{"text":"Buy flour","type":"button"}]},{"title":"Salt","buttons":[]}]}}"#,
        )
        .unwrap();
        let HostedEvent::Message { text, buttons, .. } = w.event else { panic!() };
        assert_eq!(text, "• Flour: 1 kg\n• Salt");
        assert_eq!(buttons.len(), 1);

        let esc = br#"{"botId":"b1","channel":"chat","data":{"platformConversationId":"c","eventType":"escalate","escalateTo":"billing"}}"#;
        assert_eq!(parse_converse_webhook(esc).unwrap().event, HostedEvent::Escalate { to: Some("billing".into()) });
        let online =
            br#"{"botId":"b1","channel":"chat","data":{"platformConversationId":"c","eventType":"isTeamOnline"}}"#;
        assert_eq!(parse_converse_webhook(online).unwrap().event, HostedEvent::IsTeamOnline { team_id: None });
        let other = br#"{"botId":"b1","channel":"chat","data":{"platformConversationId":"c","eventType":"widgetMessage","text":"x"}}"#;
        assert_eq!(parse_converse_webhook(other).unwrap().event, HostedEvent::Other("widgetMessage".into()));
    }

    #[test]
    fn bad_webhooks_say_what_is_wrong() {
        let err = |b: &[u8]| parse_converse_webhook(b).unwrap_err().0;
        assert!(err(b"nope").contains("not JSON"));
        assert!(err(br#"{"data":{}}"#).starts_with("botId"));
        assert!(err(br#"{"botId":"b","data":{"eventType":"escalate"}}"#).starts_with("data/platformConversationId"));
        assert!(err(br#"{"botId":"b","data":{"platformConversationId":"c","eventType":"sendMessage"}}"#)
            .contains("needs text"));
    }

    #[test]
    fn action_triggers_parse() {
        let t = parse_action_trigger(
            br#"{"botId":"b1","platformConversationId":"c","name":"get_account",
            "data":[{"key":"email","value":["ana@example.com"]},{"key":"count","value":[3]},{"key":"none","value":[]}]}"#,
        )
        .unwrap();
        assert_eq!(t.name, "get_account");
        assert_eq!(
            t.inputs,
            vec![
                ("email".into(), "ana@example.com".into()),
                ("count".into(), "3".into()),
                ("none".into(), String::new())
            ]
        );
        assert!(parse_action_trigger(br#"{"botId":"b1","platformConversationId":"c"}"#)
            .unwrap_err()
            .0
            .starts_with("name"));
    }
}
