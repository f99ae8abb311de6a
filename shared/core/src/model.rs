//! Domain types shared by every crate: time, conversation keys, turns, messages.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Unix time in milliseconds. The core never reads a clock: callers pass `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct Millis(pub i64);

impl Millis {
    pub fn plus_secs(self, secs: u64) -> Millis {
        Millis(self.0.saturating_add((secs as i64).saturating_mul(1000)))
    }
}

/// Where an end user writes. Desks that are also channels (desk -> desk mode) appear here too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Widget,
    Api,
    Telegram,
    Line,
    Whatsapp,
    /// A visitor in Zoho SalesIQ's own chat; the user id is the SalesIQ conversation id.
    Salesiq,
    /// A user in Intercom Messenger; the user id is the Intercom conversation id.
    Intercom,
    /// A customer in a LiveChat chat; the user id is the LiveChat chat id.
    Livechat,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Widget => "widget",
            Channel::Api => "api",
            Channel::Telegram => "telegram",
            Channel::Line => "line",
            Channel::Whatsapp => "whatsapp",
            Channel::Salesiq => "salesiq",
            Channel::Intercom => "intercom",
            Channel::Livechat => "livechat",
        }
    }

    pub fn parse(s: &str) -> Option<Channel> {
        Some(match s {
            "widget" => Channel::Widget,
            "api" => Channel::Api,
            "telegram" => Channel::Telegram,
            "line" => Channel::Line,
            "whatsapp" => Channel::Whatsapp,
            "salesiq" => Channel::Salesiq,
            "intercom" => Channel::Intercom,
            "livechat" => Channel::Livechat,
            _ => return None,
        })
    }

    /// Channels whose users can be asked for an e-mail address in the chat itself.
    pub fn collects_email(self) -> bool {
        matches!(self, Channel::Widget)
    }

    /// Channels that render buttons; on the others the button labels are listed in the text.
    pub fn has_buttons(self) -> bool {
        matches!(self, Channel::Widget | Channel::Api | Channel::Telegram | Channel::Line | Channel::Whatsapp)
    }

    /// Longest text one message may carry on the channel, in UTF-16 code units (how LINE
    /// counts, and at least as strict as counting characters); longer text is sent as
    /// several messages.
    pub fn max_text_units(self) -> Option<usize> {
        match self {
            Channel::Telegram => Some(4096),
            Channel::Line => Some(5000),
            Channel::Whatsapp => Some(4096),
            Channel::Widget | Channel::Api | Channel::Salesiq | Channel::Intercom | Channel::Livechat => None,
        }
    }

    /// How long after the user's last message the channel lets us write freely (WhatsApp's
    /// 24-hour customer-service window); later only approved templates may be sent.
    pub fn reply_window_secs(self) -> Option<u64> {
        match self {
            Channel::Whatsapp => Some(24 * 60 * 60),
            _ => None,
        }
    }
}

/// Length of `text` in UTF-16 code units.
pub fn utf16_len(text: &str) -> usize {
    text.chars().map(char::len_utf16).sum()
}

/// Split `text` into pieces of at most `max` UTF-16 code units, preferring a break after a
/// newline, then after a space; a piece never splits a character.
pub fn split_text(text: &str, max: usize) -> Vec<String> {
    let max = max.max(2);
    let mut out = Vec::new();
    let mut rest = text;
    while utf16_len(rest) > max {
        // Byte offset just past the longest prefix within `max` units.
        let mut units = 0;
        let hard = rest
            .char_indices()
            .find(|(_, c)| {
                units += c.len_utf16();
                units > max
            })
            .map_or(rest.len(), |(i, _)| i);
        let window = &rest[..hard];
        let cut =
            window.rfind('\n').or_else(|| window.rfind(' ')).map(|i| i + 1).filter(|&i| i > hard / 2).unwrap_or(hard);
        out.push(rest[..cut].to_string());
        rest = &rest[cut..];
    }
    if !rest.is_empty() || out.is_empty() {
        out.push(rest.to_string());
    }
    out
}

/// Longest opaque user id accepted from a provider.
pub const MAX_USER_ID_LEN: usize = 200;

/// One end user on one channel with one agent. Rendered as `agent#channel#user`;
/// agent ids and channel names never contain `#`, so the form parses back unambiguously.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ConversationKey {
    pub agent: String,
    pub channel: Channel,
    pub user: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("agent id must be 1-64 characters of a-z, 0-9, '-' or '_'")]
    BadAgent,
    #[error("user id must be 1-{MAX_USER_ID_LEN} bytes without control characters")]
    BadUser,
    #[error("unknown channel")]
    BadChannel,
    #[error("conversation key must look like agent#channel#user")]
    Malformed,
}

pub fn valid_agent_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl ConversationKey {
    pub fn new(agent: &str, channel: Channel, user: &str) -> Result<Self, KeyError> {
        if !valid_agent_id(agent) {
            return Err(KeyError::BadAgent);
        }
        if user.is_empty() || user.len() > MAX_USER_ID_LEN || user.chars().any(char::is_control) {
            return Err(KeyError::BadUser);
        }
        Ok(ConversationKey { agent: agent.to_string(), channel, user: user.to_string() })
    }

    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let mut parts = s.splitn(3, '#');
        let (Some(a), Some(c), Some(u)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(KeyError::Malformed);
        };
        let channel = Channel::parse(c).ok_or(KeyError::BadChannel)?;
        ConversationKey::new(a, channel, u)
    }
}

impl fmt::Display for ConversationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}#{}", self.agent, self.channel.as_str(), self.user)
    }
}

/// Who said a line of the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Bot,
    Human,
    System,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    pub role: Role,
    pub text: String,
    pub at: Millis,
}

/// A button offered to the user; `value` is what comes back when it is pressed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Button {
    pub label: String,
    pub value: String,
}

/// A message for the end user, whatever the channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutMessage {
    pub from: Role,
    pub text: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buttons: Vec<Button>,
    /// Set when the message hands the user to the caller's own humans (Agent API
    /// conversations whose escalations go to the integration); `text` is what to tell the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation: Option<Escalation>,
}

impl OutMessage {
    pub fn new(from: Role, text: impl Into<String>) -> Self {
        OutMessage { from, text: text.into(), buttons: Vec::new(), escalation: None }
    }
}

/// A request for the caller to take the user to a human (the Agent API's `escalate` event).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Escalation {
    pub reason: String,
    /// Where a voice front-end forwards the call (a phone number or queue), when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_to: Option<String>,
}

/// Why a desk conversation is closed from our side (the webhook-desk contract's `type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CloseReason {
    Timeout,
    UserClosed,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Timeout => "TIMEOUT",
            CloseReason::UserClosed => "USER_CLOSED",
        }
    }
}

/// Service status of a desk, as seed 004 defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceStatus {
    /// No credentials stored.
    NotConfigured,
    /// Credentials stored and verified by a probe.
    Available,
    /// Credentials wrong or invalid, or the desk does not answer.
    Unavailable,
}

/// A string that never shows itself in logs or errors.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trips_with_hash_in_user() {
        let k = ConversationKey::new("demo", Channel::Widget, "u#1#x").unwrap();
        assert_eq!(k.to_string(), "demo#widget#u#1#x");
        assert_eq!(ConversationKey::parse(&k.to_string()).unwrap(), k);
    }

    #[test]
    fn key_rejects_bad_parts() {
        assert_eq!(ConversationKey::new("Demo", Channel::Widget, "u"), Err(KeyError::BadAgent));
        assert_eq!(ConversationKey::new("demo", Channel::Widget, ""), Err(KeyError::BadUser));
        assert_eq!(ConversationKey::new("demo", Channel::Widget, "a\nb"), Err(KeyError::BadUser));
        assert_eq!(ConversationKey::parse("demo#fax#u"), Err(KeyError::BadChannel));
        assert_eq!(ConversationKey::parse("demo"), Err(KeyError::Malformed));
    }

    #[test]
    fn split_text_keeps_every_character_and_the_limit() {
        let text = "ab cd\nef ghij klmno".repeat(50) + "žžž中文😀😀 x😀";
        for max in [2, 3, 7, 64, 4096] {
            let parts = split_text(&text, max);
            assert_eq!(parts.concat(), text, "max {max}");
            assert!(parts.iter().all(|p| utf16_len(p) <= max && !p.is_empty()), "max {max}");
        }
        // Emoji count twice, as LINE and Telegram count them.
        assert_eq!(split_text("😀😀😀", 4), ["😀😀", "😀"]);
        assert_eq!(split_text("hello world", 8), ["hello ", "world"]);
        assert_eq!(split_text("", 8), [""]);
    }

    #[test]
    fn secret_debug_hides_value() {
        assert_eq!(format!("{:?}", Secret("hunter2".into())), "Secret(***)");
    }
}
