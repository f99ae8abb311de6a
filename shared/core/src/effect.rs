//! Effects: what `step` asks the shell to do. They are stored in the outbox together with
//! the new session state, executed, and marked done.

use crate::model::{CloseReason, Millis, OutMessage, Turn};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Payload schema version of outbox items.
pub const EFFECT_SCHEMA: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Effect {
    /// Ask the agent's brain; its answer comes back as `BrainReplied`/`BrainFailed`.
    AskBrain {
        question: String,
        history: Vec<Turn>,
        /// What the bot should know about the last human session.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        context: Option<String>,
        #[serde(default)]
        language: String,
        /// What is known about the user (session parameters, e-mail included).
        #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        params: std::collections::BTreeMap<String, String>,
    },
    SendToUser {
        message: OutMessage,
        /// The channel's reply token for the user's last message, while it is fresh.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_token: Option<String>,
        /// Sent after the channel's free-reply window closed (a template carries it).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        outside_window: bool,
    },
    /// Open a desk conversation; the result comes back as `DeskOpened`/`DeskOpenFailed`.
    OpenDesk {
        request: HandoffRequest,
    },
    /// Relay a user message into the open desk conversation of `handoff_id`.
    PostToDesk {
        handoff_id: String,
        text: String,
    },
    /// Close the desk conversation of `handoff_id` from our side.
    CloseDesk {
        handoff_id: String,
        reason: CloseReason,
    },
    /// Hand a request no human can take to the agent's fallback; the result comes back as
    /// `FallbackDone`.
    Escalate {
        request: HandoffRequest,
    },
    /// Arm the conversation's single timer; an older generation is thereby stale.
    /// Ask the caller of an Agent API conversation whether its humans are online; the
    /// answer comes back as `TeamOnline` with the request.
    AskTeamOnline {
        question: String,
        reason: String,
    },
    ScheduleTimer {
        generation: u64,
        due: Millis,
        kind: TimerKind,
    },
    CancelTimer,
}

impl Effect {
    pub fn name(&self) -> &'static str {
        match self {
            Effect::AskBrain { .. } => "ask_brain",
            Effect::SendToUser { .. } => "send_to_user",
            Effect::OpenDesk { .. } => "open_desk",
            Effect::PostToDesk { .. } => "post_to_desk",
            Effect::CloseDesk { .. } => "close_desk",
            Effect::Escalate { .. } => "escalate",
            Effect::AskTeamOnline { .. } => "ask_team_online",
            Effect::ScheduleTimer { .. } => "schedule_timer",
            Effect::CancelTimer => "cancel_timer",
        }
    }
}

/// Everything a desk needs to open a human conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandoffRequest {
    pub handoff_id: String,
    pub email: String,
    /// The last N messages before the current question, oldest first.
    pub history: Vec<Turn>,
    /// The current question.
    pub question: String,
    /// Why the handoff happened (shown to the human).
    pub reason: String,
    /// What is known about the user (session parameters), for the human.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub params: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimerKind {
    /// No human replied yet: ask the user to end or keep waiting.
    Wait,
    /// The user did not answer that question.
    WaitReply,
    /// The user did not reply to the human.
    Session,
}

/// An effect with its stable id. The id is derived from the event that produced it and
/// its position, so a re-run after a crash carries the same idempotency key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingEffect {
    pub id: String,
    pub effect: Effect,
}

impl PendingEffect {
    pub fn for_event(event_id: &str, index: usize, effect: Effect) -> Self {
        PendingEffect { id: Self::id_for(event_id, index), effect }
    }

    /// The id of the effect at `index` of the step that applied `event_id`.
    pub fn id_for(event_id: &str, index: usize) -> String {
        format!("{event_id}/{index}")
    }

    /// The idempotency key sent to receivers (`webhook-id`, `X-Line-Retry-Key`, ...).
    pub fn idempotency_key(&self) -> String {
        let digest = Sha256::digest(self.id.as_bytes());
        format!("msg_{}", &hex::encode(digest)[..32])
    }
}
