//! Channel webhooks: Telegram (`/channels/telegram/{agent}`) and LINE
//! (`/channels/line/{agent}`). Each verifies the provider's secret on the raw body before
//! parsing, turns what it understood into events, enqueues them and answers at once; the
//! provider's own event id makes its retries harmless.

use super::{load_agent, ApiError, AppState, ClientAddr, RawBody};
use crate::channels::{line_event, telegram_event};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use baton_connectors::{line, telegram};
use baton_core::Agent;
use serde_json::json;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/channels/telegram/{agent}", post(telegram_webhook))
        .route("/channels/line/{agent}", post(line_webhook))
}

/// The agent with its secret references resolved (the webhook secrets are needed here).
pub(super) async fn resolved_agent(st: &AppState, id: &str) -> Result<Agent, ApiError> {
    let agent = load_agent(st, id).await?;
    st.ports.secrets.resolve(&agent).await.map_err(|e| {
        tracing::error!(agent = %agent.id, error = %e, "secrets of an agent could not be resolved");
        ApiError::unavailable("the agent's secrets cannot be read; retry later")
    })
}

fn not_configured(channel: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "channel_not_configured", format!("this agent has no {channel} channel"))
}

/// Refuse a failed verification; repeated failures from one address are throttled.
pub(super) fn reject(st: &AppState, agent: &Agent, client: &str, what: &str) -> ApiError {
    if !st.limits.auth_failures.allow(&format!("{client}|{}", agent.id)) {
        return ApiError::rate_limited();
    }
    ApiError::unauthorized(what.to_string())
}

async fn telegram_webhook(
    State(st): State<AppState>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
    ClientAddr(client): ClientAddr,
    RawBody(body): RawBody,
) -> Result<Json<serde_json::Value>, ApiError> {
    let agent = resolved_agent(&st, &agent_id).await?;
    let cfg = agent.channels.telegram.as_ref().ok_or_else(|| not_configured("Telegram"))?;
    let header = headers.get(telegram::SECRET_HEADER).and_then(|v| v.to_str().ok());
    if !telegram::verify_secret(cfg, header) {
        return Err(reject(&st, &agent, &client, "missing or wrong X-Telegram-Bot-Api-Secret-Token"));
    }
    let update = telegram::parse_update(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let Some(update) = update else {
        return Ok(Json(json!({})));
    };
    if let Some(event) = telegram_event(&agent.id, &update, st.ports.clock.now()) {
        st.ports.queue.enqueue(vec![event]).await?;
    }
    // Telegram lets a webhook answer carry one Bot API call: stop the button's spinner.
    Ok(Json(match &update.callback_query_id {
        Some(id) => json!({"method": "answerCallbackQuery", "callback_query_id": id}),
        None => json!({}),
    }))
}

async fn line_webhook(
    State(st): State<AppState>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
    ClientAddr(client): ClientAddr,
    RawBody(body): RawBody,
) -> Result<Json<serde_json::Value>, ApiError> {
    let agent = resolved_agent(&st, &agent_id).await?;
    let cfg = agent.channels.line.as_ref().ok_or_else(|| not_configured("LINE"))?;
    let header = headers.get(line::SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
    if !line::verify_signature(cfg.channel_secret.expose(), &body, header) {
        return Err(reject(&st, &agent, &client, "missing or wrong X-Line-Signature"));
    }
    let events = line::parse_webhook(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let now = st.ports.clock.now();
    let events: Vec<_> = events.iter().filter_map(|e| line_event(&agent.id, e, now)).collect();
    if !events.is_empty() {
        st.ports.queue.enqueue(events).await?;
    }
    Ok(Json(json!({})))
}
