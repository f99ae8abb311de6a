//! Zoho SalesIQ webhooks (`/desks/salesiq/{agent}`): signed with `X-Siqsignature` (RSA,
//! SHA-256) and verified against the agent's public keys before anything is parsed or
//! stored. A `HEAD` (SalesIQ's check when the webhook is registered) is answered 200.
//!
//! One URL serves both roles of SalesIQ:
//! - a conversation the hub opened as the visitor for a user of another channel (a desk
//!   link exists): operator replies go to that user, completion ends the handoff, and the
//!   visitor messages are the hub's own posts coming back, so they are dropped;
//! - any other conversation is a visitor writing in SalesIQ itself (when the agent answers
//!   visitors): their messages go to the brain, the hub's own operator posts coming back
//!   are recognised and dropped, a human operator's reply marks the human's turn.

use super::channels::{reject, resolved_agent};
use super::{ApiError, AppState, ClientAddr, RawBody};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use baton_connectors::salesiq::{signature, webhook};
use baton_core::{Channel, ConversationKey, Event, EventKind};
use serde_json::json;
use sha2::Digest;

pub fn routes() -> Router<AppState> {
    Router::new().route("/desks/salesiq/{agent}", post(notification).head(|| async { StatusCode::OK }))
}

async fn notification(
    State(st): State<AppState>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
    ClientAddr(client): ClientAddr,
    RawBody(body): RawBody,
) -> Result<Json<serde_json::Value>, ApiError> {
    let agent = resolved_agent(&st, &agent_id).await?;
    let Some(cfg) = agent.salesiq.as_ref() else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "desk_not_configured", "this agent has no SalesIQ account"));
    };
    let header = headers.get(signature::SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
    if let Err(e) = signature::verify(&cfg.webhook_public_keys, &body, header) {
        return Err(reject(&st, &agent, &client, &format!("X-Siqsignature: {e}")));
    }
    let note = webhook::parse(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let id = format!("siq:{}:{}", agent.id, note.dedupe_key);
    let now = st.ports.clock.now();
    let ignored = |why: &str| {
        tracing::debug!(agent = %agent.id, event = %id, why, "SalesIQ notification ignored");
        Ok(Json(json!({"status": "ignored", "reason": why})))
    };
    let Some(conversation_id) = note.event.conversation_id().map(str::to_string) else {
        return ignored("no conversation");
    };
    let link = st.ports.store.desk_link(&agent.id, &conversation_id).await?;
    let relayed = link.as_ref().filter(|l| l.conversation.channel != Channel::Salesiq);
    let (key, kind) = match (relayed, note.event) {
        // A conversation the hub opened for a user of another channel.
        (Some(link), webhook::WebhookEvent::OperatorReplied { sender_id, message_id, text, .. }) => {
            if st.salesiq.is_own_message(&agent, sender_id.as_deref(), &message_id).await {
                return ignored("the hub's own message");
            }
            (link.conversation.clone(), EventKind::HumanMessage { desk_conversation_id: conversation_id, text })
        }
        (Some(link), webhook::WebhookEvent::Completed { .. }) => {
            (link.conversation.clone(), EventKind::HumanClosed { desk_conversation_id: conversation_id })
        }
        (Some(_), _) => return ignored("the hub's own visitor message or an event it does not use"),
        // A visitor writing in SalesIQ itself.
        (None, event) => {
            if !cfg.answer_visitors {
                return ignored("the agent does not answer SalesIQ visitors");
            }
            let key = ConversationKey::new(&agent.id, Channel::Salesiq, &conversation_id)
                .map_err(|e| ApiError::bad_request(format!("entity_id: {e}")))?;
            let kind = match event {
                webhook::WebhookEvent::Created { question: Some(q), visitor, .. } if !q.trim().is_empty() => {
                    remember_question(&st, &agent.id, &conversation_id, &q).await?;
                    EventKind::UserMessage { text: q, email: visitor.email, language: None, reply: None }
                }
                webhook::WebhookEvent::VisitorReplied { text, visitor, .. } => {
                    if is_the_question_again(&st, &agent.id, &conversation_id, &text).await? {
                        return ignored("the question of conversation.created, sent again as a visitor reply");
                    }
                    EventKind::UserMessage { text, email: visitor.email, language: None, reply: None }
                }
                webhook::WebhookEvent::OperatorReplied { sender_id, message_id, text, .. } => {
                    if st.salesiq.is_own_message(&agent, sender_id.as_deref(), &message_id).await {
                        return ignored("the hub's own message");
                    }
                    EventKind::HumanMessage { desk_conversation_id: conversation_id, text }
                }
                webhook::WebhookEvent::Completed { .. } => {
                    EventKind::HumanClosed { desk_conversation_id: conversation_id }
                }
                _ => return ignored("an event the hub does not use"),
            };
            (key, kind)
        }
    };
    st.ports.queue.enqueue(vec![Event::new(id, key, now, kind)]).await?;
    Ok(Json(json!({"status": "accepted"})))
}

/// How long the question of a new conversation is remembered against its echo.
const QUESTION_ECHO_MS: i64 = 120_000;

fn question_name(agent: &str, conversation_id: &str) -> String {
    format!("salesiq-question:{agent}:{conversation_id}")
}

fn digest(text: &str) -> String {
    hex::encode(sha2::Sha256::digest(text.trim().as_bytes()))
}

/// SalesIQ does not say whether the question of `conversation.created` also arrives as a
/// `conversation.visitor.replied`; remember it briefly so it is answered once either way.
async fn remember_question(st: &AppState, agent: &str, conversation_id: &str, question: &str) -> Result<(), ApiError> {
    let until = baton_core::Millis(st.ports.clock.now().0 + QUESTION_ECHO_MS);
    st.ports.kv.put(&question_name(agent, conversation_id), &digest(question), until).await?;
    Ok(())
}

/// True (once) when `text` is the remembered question of the conversation.
async fn is_the_question_again(
    st: &AppState,
    agent: &str,
    conversation_id: &str,
    text: &str,
) -> Result<bool, ApiError> {
    let name = question_name(agent, conversation_id);
    let Some(remembered) = st.ports.kv.get(&name, st.ports.clock.now()).await? else {
        return Ok(false);
    };
    if remembered != digest(text) {
        return Ok(false);
    }
    st.ports.kv.delete(&name).await?;
    Ok(true)
}
