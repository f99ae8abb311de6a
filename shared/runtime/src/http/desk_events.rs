//! What the webhooks of desks with their own messenger (SalesIQ, Intercom, LiveChat) have in
//! common: a notification is about either a conversation the hub opened for a user of
//! another channel (a desk link exists: relay the human's side to that user) or a user
//! writing in the desk's own messenger (the agent answers there, or a human took it over).

use super::{ApiError, AppState};
use axum::Json;
use baton_core::ports::DeskLink;
use baton_core::{Agent, Channel, ConversationKey, Event, EventKind};
use serde_json::json;

/// Whose conversation a desk notification is about.
pub(super) enum Target {
    /// Opened by the hub for a user of another channel.
    Relayed(DeskLink),
    /// A user of the desk's own messenger, answered by the agent.
    Own(ConversationKey),
    /// A messenger user the agent is configured not to answer.
    NotAnswered,
}

impl Target {
    pub(super) async fn of(
        st: &AppState,
        agent: &Agent,
        channel: Channel,
        answers_own_users: bool,
        conversation_id: &str,
    ) -> Result<Target, ApiError> {
        let link = st.ports.store.desk_link(&agent.id, conversation_id).await?;
        if let Some(link) = link.filter(|l| l.conversation.channel != channel) {
            return Ok(Target::Relayed(link));
        }
        if !answers_own_users {
            return Ok(Target::NotAnswered);
        }
        let key = ConversationKey::new(&agent.id, channel, conversation_id)
            .map_err(|e| ApiError::bad_request(format!("conversation id: {e}")))?;
        Ok(Target::Own(key))
    }
}

/// What happened, once the provider's own checks (signature, the hub's own posts) passed.
pub(super) enum Signal {
    UserWrote { text: String, email: Option<String> },
    HumanWrote { text: String },
    Completed,
}

/// Queue the event a signal means for its target, or say why there is none.
pub(super) async fn deliver(
    st: &AppState,
    event_id: String,
    target: Target,
    conversation_id: &str,
    signal: Signal,
) -> Result<Json<serde_json::Value>, ApiError> {
    let desk_conversation_id = conversation_id.to_string();
    let (key, kind) = match (target, signal) {
        (Target::NotAnswered, _) => return Ok(ignored(&event_id, "the agent does not answer this messenger's users")),
        // The hub's own posts as the user, coming back.
        (Target::Relayed(_), Signal::UserWrote { .. }) => {
            return Ok(ignored(&event_id, "the hub's own message as the user"));
        }
        (Target::Relayed(link), Signal::HumanWrote { text }) => {
            (link.conversation, EventKind::HumanMessage { desk_conversation_id, text })
        }
        (Target::Relayed(link), Signal::Completed) => {
            (link.conversation, EventKind::HumanClosed { desk_conversation_id })
        }
        (Target::Own(key), Signal::UserWrote { text, email }) => {
            (key, EventKind::UserMessage { text, email, language: None, reply: None, name: None })
        }
        (Target::Own(key), Signal::HumanWrote { text }) => {
            (key, EventKind::HumanMessage { desk_conversation_id, text })
        }
        (Target::Own(key), Signal::Completed) => (key, EventKind::HumanClosed { desk_conversation_id }),
    };
    st.ports.queue.enqueue(vec![Event::new(event_id, key, st.ports.clock.now(), kind)]).await?;
    Ok(Json(json!({"status": "accepted"})))
}

/// A notification accepted and deliberately not acted on (answered 200 so it is not retried).
pub(super) fn ignored(event_id: &str, why: &str) -> Json<serde_json::Value> {
    tracing::debug!(event = %event_id, why, "desk notification ignored");
    Json(json!({"status": "ignored", "reason": why}))
}
