//! Channel webhooks: Telegram (`/channels/telegram/{agent}`), LINE (`/channels/line/{agent}`)
//! and WhatsApp (`/channels/whatsapp/{agent}`, with Meta's `GET` subscription handshake).
//! Each verifies the provider's secret on the raw body before
//! parsing, turns what it understood into events, enqueues them and answers at once; the
//! provider's own event id makes its retries harmless.

use super::{load_agent, ApiError, AppState, ClientAddr, RawBody};
use crate::channels::{line_event, telegram_event, whatsapp_event};
use crate::media::LinkBase;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use baton_connectors::{line, telegram, whatsapp};
use baton_core::Agent;
use serde_json::json;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/channels/telegram/{agent}", post(telegram_webhook))
        .route("/channels/line/{agent}", post(line_webhook))
        .route("/channels/whatsapp/{agent}", get(whatsapp_handshake).post(whatsapp_webhook))
}

/// The agent with its secret references resolved (the webhook secrets are needed here).
pub(super) async fn resolved_agent(st: &AppState, id: &str) -> Result<Agent, ApiError> {
    let agent = load_agent(st, id).await?;
    st.ports.secrets.resolve(&agent).await.map_err(|e| {
        tracing::error!(agent = %agent.id, error = %e, "secrets of an agent could not be resolved");
        ApiError::unavailable("the agent's secrets cannot be read; retry later")
    })
}

/// Links in this request's placeholders point at the hub's public URL or the host reached.
fn link_base<'a>(st: &'a AppState, headers: &HeaderMap) -> LinkBase<'a> {
    LinkBase { links: &st.media.links, base: st.media.links.base_for(headers), now: st.ports.clock.now() }
}

fn not_configured(channel: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "channel_not_configured", format!("this agent has no {channel} channel"))
}

/// Refuse a failed verification; repeated failures from one address are throttled.
pub(super) fn reject(st: &AppState, agent: &Agent, client: &str, what: &str) -> ApiError {
    super::refuse(st, agent, client, ApiError::unauthorized(what.to_string()))
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
    let links = link_base(&st, &headers);
    if let Some(event) = telegram_event(&agent.id, &update, links.now, &links) {
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
    let links = link_base(&st, &headers);
    let events: Vec<_> = events.iter().filter_map(|e| line_event(&agent.id, e, links.now, &links)).collect();
    if !events.is_empty() {
        st.ports.queue.enqueue(events).await?;
    }
    Ok(Json(json!({})))
}

#[derive(serde::Deserialize)]
struct Handshake {
    #[serde(rename = "hub.mode")]
    mode: Option<String>,
    #[serde(rename = "hub.verify_token")]
    verify_token: Option<String>,
    #[serde(rename = "hub.challenge")]
    challenge: Option<String>,
}

/// Meta's check when the callback URL is saved: echo `hub.challenge` as plain text when
/// `hub.verify_token` is the configured one.
async fn whatsapp_handshake(
    State(st): State<AppState>,
    Path(agent_id): Path<String>,
    ClientAddr(client): ClientAddr,
    Query(q): Query<Handshake>,
) -> Result<axum::response::Response, ApiError> {
    let agent = resolved_agent(&st, &agent_id).await?;
    let cfg = agent.channels.whatsapp.as_ref().ok_or_else(|| not_configured("WhatsApp"))?;
    if q.mode.as_deref() != Some("subscribe") {
        return Err(ApiError::bad_request("expected hub.mode=subscribe"));
    }
    match whatsapp::verify_subscription(cfg, q.mode.as_deref(), q.verify_token.as_deref(), q.challenge.as_deref()) {
        Some(challenge) => Ok(([(axum::http::header::CONTENT_TYPE, "text/plain")], challenge).into_response()),
        None if q.verify_token.is_some() && q.challenge.as_deref().is_some_and(|c| !c.is_empty()) => {
            // Meta's own example answers a wrong verify token with 403.
            let wrong = ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "hub.verify_token is not the configured verify token",
            );
            Err(super::refuse(&st, &agent, &client, wrong))
        }
        None => Err(ApiError::bad_request(
            "hub.verify_token and a hub.challenge of at most 1024 plain characters are required",
        )),
    }
}

async fn whatsapp_webhook(
    State(st): State<AppState>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
    ClientAddr(client): ClientAddr,
    RawBody(body): RawBody,
) -> Result<Json<serde_json::Value>, ApiError> {
    let agent = resolved_agent(&st, &agent_id).await?;
    let cfg = agent.channels.whatsapp.as_ref().ok_or_else(|| not_configured("WhatsApp"))?;
    let header = headers.get(whatsapp::SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
    if !whatsapp::verify_signature(cfg.app_secret.expose(), &body, header) {
        return Err(reject(&st, &agent, &client, "missing or wrong X-Hub-Signature-256"));
    }
    let hook =
        whatsapp::parse_webhook(&body, &cfg.phone_number_id).map_err(|e| ApiError::bad_request(e.to_string()))?;
    // A message Meta accepted and then could not deliver is only reported here.
    for failed in hook.statuses.iter().filter(|s| s.status == "failed") {
        st.ports.alerts.raise(format!(
            "agent {}: WhatsApp could not deliver message {} to {}: {}",
            agent.id,
            failed.message_id,
            failed.recipient,
            failed.error.as_deref().unwrap_or("no reason given")
        ));
    }
    let links = link_base(&st, &headers);
    let events: Vec<_> = hook.messages.iter().filter_map(|m| whatsapp_event(&agent.id, m, links.now, &links)).collect();
    if !events.is_empty() {
        st.ports.queue.enqueue(events).await?;
    }
    Ok(Json(json!({})))
}
