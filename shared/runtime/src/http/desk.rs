//! The hub's side of the webhook-desk contract: what a desk calls to send a human's reply
//! and to close a conversation (`/v1/human/message/receive`, `/v1/human/close`, under
//! `/desks/webhook/{agent}`), authenticated with `Authorization: Bearer <agent token>`.
//! Also the desk's service status for the agent.

use super::{load_agent, require_agent_token, ApiError, AppState, ClientAddr, RawBody};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use baton_connectors::webhook_desk::{self, Inbound};
use baton_core::{Event, EventKind};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/desks/webhook/{agent}/v1/human/message/receive", post(human_message))
        .route("/desks/webhook/{agent}/v1/human/close", post(human_close))
        .route("/api/agents/{agent}/desk/status", get(desk_status))
}

fn ok() -> Json<serde_json::Value> {
    Json(serde_json::json!({"code": 200, "message": "success"}))
}

fn parse_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", e.to_string())
}

async fn link_for(st: &AppState, agent: &str, conversation_id: &str) -> Result<baton_core::ports::DeskLink, ApiError> {
    st.ports.store.desk_link(agent, conversation_id).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "conversation_not_found",
            format!("no handoff with conversation_id {conversation_id:?}"),
        )
    })
}

async fn human_message(
    State(st): State<AppState>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
    ClientAddr(client): ClientAddr,
    RawBody(body): RawBody,
) -> Result<Json<serde_json::Value>, ApiError> {
    let agent = load_agent(&st, &agent_id).await?;
    require_agent_token(&st, &agent, &headers, &client).await?;
    let msg = match webhook_desk::parse_human_message(&body).map_err(parse_error)? {
        Inbound::Probe => return Ok(ok()),
        Inbound::Real(m) => m,
    };
    let link = link_for(&st, &agent.id, &msg.conversation_id).await?;
    let webhook_id = headers.get("webhook-id").and_then(|v| v.to_str().ok());
    let id = format!("desk:{}:{}", agent.id, webhook_desk::dedupe_id(webhook_id, &msg));
    let kind = EventKind::HumanMessage { desk_conversation_id: msg.conversation_id, text: msg.body };
    st.ports.queue.enqueue(vec![Event::new(id, link.conversation, st.ports.clock.now(), kind)]).await?;
    Ok(ok())
}

async fn human_close(
    State(st): State<AppState>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
    ClientAddr(client): ClientAddr,
    RawBody(body): RawBody,
) -> Result<Json<serde_json::Value>, ApiError> {
    let agent = load_agent(&st, &agent_id).await?;
    require_agent_token(&st, &agent, &headers, &client).await?;
    let msg = match webhook_desk::parse_human_close(&body).map_err(parse_error)? {
        Inbound::Probe => return Ok(ok()),
        Inbound::Real(m) => m,
    };
    let link = link_for(&st, &agent.id, &msg.conversation_id).await?;
    // One close per desk conversation: repeats are the same event.
    let id = format!("desk-close:{}:{}", agent.id, msg.conversation_id);
    let kind = EventKind::HumanClosed { desk_conversation_id: msg.conversation_id };
    st.ports.queue.enqueue(vec![Event::new(id, link.conversation, st.ports.clock.now(), kind)]).await?;
    Ok(ok())
}

async fn desk_status(
    State(st): State<AppState>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
    ClientAddr(client): ClientAddr,
) -> Result<Json<serde_json::Value>, ApiError> {
    let agent = load_agent(&st, &agent_id).await?;
    require_agent_token(&st, &agent, &headers, &client).await?;
    let rec = st.ports.store.desk_status(&agent.id).await?;
    let body = match rec {
        Some(r) => serde_json::json!({"status": r.status, "detail": r.detail, "checked_at": r.checked_at}),
        None => serde_json::json!({"status": "unknown", "detail": "not checked yet"}),
    };
    Ok(Json(body))
}
