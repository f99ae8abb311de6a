//! Canonical events: what every connector's webhook turns into, and what effects feed back.

use crate::model::{ConversationKey, Millis};
use serde::{Deserialize, Serialize};

/// Payload schema version of queued events (messages in flight survive a deploy).
pub const EVENT_SCHEMA: u32 = 1;

fn event_schema() -> u32 {
    EVENT_SCHEMA
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(default = "event_schema")]
    pub schema: u32,
    /// Dedupe id, unique across providers: `{source}:{provider id}`.
    pub id: String,
    pub conversation: ConversationKey,
    /// When the hub accepted the event.
    pub at: Millis,
    pub kind: EventKind,
}

impl Event {
    pub fn new(id: impl Into<String>, conversation: ConversationKey, at: Millis, kind: EventKind) -> Self {
        Event { schema: EVENT_SCHEMA, id: id.into(), conversation, at, kind }
    }
}

/// The id of the event of Telegram update `update_id` for `agent`.
pub fn telegram_event_id(agent: &str, update_id: i64) -> String {
    format!("tg:{agent}:{update_id}")
}

/// The update number of an id made by [`telegram_event_id`]. Telegram numbers a bot's updates
/// in increasing order, so a store can tell an update newer than every one it applied.
pub fn telegram_update_of(event_id: &str) -> Option<i64> {
    event_id.strip_prefix("tg:")?.rsplit_once(':')?.1.parse().ok()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// The end user wrote something (or pressed a button, whose value is the text).
    UserMessage {
        text: String,
        /// E-mail known to the channel (widget `setEmail`, `?email=`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        email: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        language: Option<String>,
        /// The user's display name as the channel knows it (Telegram, WhatsApp profile).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// A single-use token to answer this message cheaply (LINE's reply token).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply: Option<ReplyHandle>,
    },
    /// The channel learned the user's e-mail outside the chat.
    UserSetEmail { email: String },
    /// The user pressed "end" (button or command) in the channel.
    UserEnded,
    /// A rule or an API call asks for a human.
    HandoffRequested { reason: String },
    /// The brain answered an `AskBrain` effect.
    BrainReplied { reply: BrainReply },
    /// The brain failed for good (after its own retries).
    BrainFailed { error: String },
    /// The desk accepted the handoff and named its conversation.
    DeskOpened { handoff_id: String, desk_conversation_id: String },
    /// The desk refused the handoff for good.
    DeskOpenFailed { handoff_id: String, error: String },
    /// A human operator wrote in the desk conversation.
    HumanMessage { desk_conversation_id: String, text: String },
    /// The human operator ended the desk conversation.
    HumanClosed { desk_conversation_id: String },
    /// A timer armed by `ScheduleTimer` is due.
    TimerFired { generation: u64 },
    /// The fallback took the request; `detail` says how (e.g. "ticket T-17").
    FallbackDone { detail: String },
    /// Session parameters learned outside the chat (the brain's tools, actions, an API call):
    /// merged into the session; an empty value removes a parameter.
    ParamsSet {
        params: std::collections::BTreeMap<String, String>,
        /// Parameters whose values are personal data: masked wherever they are shown
        /// (desk transcripts, tickets, the console); the brain and actions see them.
        #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
        sanitize: std::collections::BTreeSet<String>,
    },
    /// The caller answered `AskTeamOnline` (a failed question counts as nobody online).
    TeamOnline { online: bool, question: String, reason: String },
    /// An Agent API client starts (or resumes) the conversation (`startSession`).
    SessionStarted,
    /// An Agent API client ends the conversation (`endSession`): any human session is
    /// closed and the next message starts a new session under the same id.
    SessionEnded,
    /// Changes nothing; the worker runs the conversation's pending effects after it. Used
    /// where effects wait for a retry and no other event would come (AWS: re-armed through
    /// the timer queue, and by the sweeper).
    Wake,
}

impl EventKind {
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::UserMessage { .. } => "user_message",
            EventKind::UserSetEmail { .. } => "user_set_email",
            EventKind::UserEnded => "user_ended",
            EventKind::HandoffRequested { .. } => "handoff_requested",
            EventKind::BrainReplied { .. } => "brain_replied",
            EventKind::BrainFailed { .. } => "brain_failed",
            EventKind::DeskOpened { .. } => "desk_opened",
            EventKind::DeskOpenFailed { .. } => "desk_open_failed",
            EventKind::HumanMessage { .. } => "human_message",
            EventKind::HumanClosed { .. } => "human_closed",
            EventKind::TimerFired { .. } => "timer_fired",
            EventKind::FallbackDone { .. } => "fallback_done",
            EventKind::ParamsSet { .. } => "params_set",
            EventKind::SessionStarted => "session_started",
            EventKind::TeamOnline { .. } => "team_online",
            EventKind::SessionEnded => "session_ended",
            EventKind::Wake => "wake",
        }
    }
}

/// A channel's single-use handle for answering one user message, valid until `valid_until`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyHandle {
    pub token: String,
    pub valid_until: Millis,
}

/// What a brain says to one question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BrainReply {
    Answer {
        text: String,
        /// Choices offered with the answer (a hosted agent's buttons).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        buttons: Vec<crate::model::Button>,
    },
    /// The brain answers later, through its own webhooks (a hosted agent): nothing to say now.
    Deferred,
    /// The brain does not know; `text` is its own way of saying so, if any.
    Unknown {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
    },
    /// The brain decided a human should take over.
    Handoff {
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telegram_update_numbers_read_back_from_their_ids_only() {
        assert_eq!(telegram_update_of(&telegram_event_id("shop", 42)), Some(42));
        assert_eq!(telegram_update_of(&telegram_event_id("a:b", 7)), Some(7));
        assert_eq!(telegram_update_of("wh:shop:42"), None);
        assert_eq!(telegram_update_of("tg:shop:x"), None);
        assert_eq!(telegram_update_of("fx:tg:shop:42/0"), None);
    }
}
