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
use super::desk_events::{deliver, ignored, Signal, Target};
use super::{ApiError, AppState, ClientAddr, RawBody};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use baton_connectors::salesiq::signature;
use baton_connectors::salesiq::webhook::{self, WebhookEvent};
use baton_core::Channel;
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
    let Some(conversation_id) = note.event.conversation_id().map(str::to_string) else {
        return Ok(ignored(&id, "no conversation"));
    };
    let target = Target::of(&st, &agent, Channel::Salesiq, cfg.answer_visitors, &conversation_id).await?;
    let own = matches!(target, Target::Own(_));
    let signal = match note.event {
        WebhookEvent::Created { question: Some(q), visitor, .. } if own && !q.trim().is_empty() => {
            remember_question(&st, &agent.id, &conversation_id, &q).await?;
            Signal::UserWrote { text: q, email: visitor.email }
        }
        WebhookEvent::VisitorReplied { text, visitor, .. } => {
            if own && is_the_question_again(&st, &agent.id, &conversation_id, &text).await? {
                return Ok(ignored(&id, "the question of conversation.created, sent again as a visitor reply"));
            }
            Signal::UserWrote { text, email: visitor.email }
        }
        WebhookEvent::OperatorReplied { sender_id, message_id, text, .. } => {
            if st.salesiq.is_own_message(&agent, sender_id.as_deref(), &message_id).await {
                return Ok(ignored(&id, "the hub's own message"));
            }
            Signal::HumanWrote { text }
        }
        WebhookEvent::Completed { .. } => Signal::Completed,
        _ => return Ok(ignored(&id, "an event the hub does not use")),
    };
    deliver(&st, id, target, &conversation_id, signal).await
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
