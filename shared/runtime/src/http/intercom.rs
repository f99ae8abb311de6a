//! Intercom webhooks (`/desks/intercom/{agent}`): `X-Hub-Signature` (HMAC-SHA1 of the raw
//! body with the app's client secret) is verified before anything is parsed or stored; the
//! `HEAD` Intercom sends when a URL is saved and the `ping` topic are answered 200.
//! Notifications are deduplicated on their `notif_...` id. Only a teammate's comments are a
//! human's reply: notes, bot parts and the hub's own admin replies never are.

use super::channels::{reject, resolved_agent};
use super::desk_events::{deliver, ignored, Signal, Target};
use super::{ApiError, AppState, ClientAddr, RawBody};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use baton_connectors::intercom::{self, WebhookEvent};
use baton_core::Channel;

pub fn routes() -> Router<AppState> {
    Router::new().route("/desks/intercom/{agent}", post(notification).head(|| async { StatusCode::OK }))
}

async fn notification(
    State(st): State<AppState>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
    ClientAddr(client): ClientAddr,
    RawBody(body): RawBody,
) -> Result<Json<serde_json::Value>, ApiError> {
    let agent = resolved_agent(&st, &agent_id).await?;
    let Some(cfg) = agent.intercom.as_ref() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "desk_not_configured",
            "this agent has no Intercom workspace",
        ));
    };
    let header = headers.get(intercom::SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
    if !intercom::verify_signature(cfg.client_secret.expose(), &body, header) {
        return Err(reject(&st, &agent, &client, "missing or wrong X-Hub-Signature"));
    }
    let note = intercom::parse(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let id = format!("intercom:{}:{}", agent.id, note.id);
    let (conversation_id, signal) = match note.event {
        WebhookEvent::Ping => return Ok(ignored(&id, "ping")),
        WebhookEvent::Other { topic, why, .. } => return Ok(ignored(&id, &format!("{topic}: {why}"))),
        WebhookEvent::UserMessage { conversation_id, email, text, .. } => {
            (conversation_id, Signal::UserWrote { text, email })
        }
        WebhookEvent::AdminReply { conversation_id, admin_id, text, .. } => {
            if st.intercom.is_own_admin(&agent, &admin_id) {
                return Ok(ignored(&id, "the hub's own reply"));
            }
            (conversation_id, Signal::HumanWrote { text })
        }
        WebhookEvent::Closed { conversation_id } => (conversation_id, Signal::Completed),
    };
    let target = Target::of(&st, &agent, Channel::Intercom, cfg.answer_users, &conversation_id).await?;
    deliver(&st, id, target, &conversation_id, signal).await
}
