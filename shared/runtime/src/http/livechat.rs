//! LiveChat webhooks (`/desks/livechat/{agent}`): LiveChat puts the registered `secret_key`
//! in every body, so the body is parsed far enough to read it and compared in constant time
//! before anything is stored. Retries (up to 3 within a minute) are deduplicated on the
//! event. Messages the hub itself sent (as the customer it acts for, or as the bot agent)
//! come back too and are recognised.

use super::channels::{reject, resolved_agent};
use super::desk_events::{deliver, ignored, Signal, Target};
use super::{ApiError, AppState, ClientAddr, RawBody};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use baton_connectors::livechat::{self, WebhookEvent};
use baton_core::Channel;

pub fn routes() -> Router<AppState> {
    Router::new().route("/desks/livechat/{agent}", post(notification))
}

async fn notification(
    State(st): State<AppState>,
    Path(agent_id): Path<String>,
    ClientAddr(client): ClientAddr,
    RawBody(body): RawBody,
) -> Result<Json<serde_json::Value>, ApiError> {
    let agent = resolved_agent(&st, &agent_id).await?;
    let Some(cfg) = agent.livechat.as_ref() else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "desk_not_configured", "this agent has no LiveChat account"));
    };
    // The secret travels in the body: an unparseable body is refused like a wrong secret.
    let note = match livechat::parse(&body) {
        Ok(n) if livechat::verify_secret(cfg, n.secret_key.as_deref()) => n,
        Ok(_) => return Err(reject(&st, &agent, &client, "missing or wrong secret_key")),
        Err(e) => return Err(ApiError::bad_request(e.to_string())),
    };
    let id = format!("livechat:{}:{}", agent.id, note.dedupe_key);
    // Chats the bot agent answers (desk -> desk) exist only when a bot is configured.
    let answers = cfg.bot_agent_id.is_some();
    let (chat_id, signal) = match note.event {
        WebhookEvent::Message { chat_id, author_id, custom_id, text, .. } => {
            if st.livechat.is_own_event(&agent, &author_id, custom_id.as_deref()).await {
                return Ok(ignored(&id, "the hub's own message"));
            }
            let target = Target::of(&st, &agent, Channel::Livechat, answers, &chat_id).await?;
            // In a chat the hub opened, every other author is the desk's side; in a chat of
            // LiveChat's own, the customer is the one the hub does not know as an agent.
            let signal = match &target {
                Target::Relayed(_) => Signal::HumanWrote { text },
                _ if st.livechat.is_agent(&agent, &author_id).await => Signal::HumanWrote { text },
                _ => Signal::UserWrote { text, email: None },
            };
            return deliver(&st, id, target, &chat_id, signal).await;
        }
        WebhookEvent::ChatStarted { chat_id, customer_email, first_text: Some(text), .. } => {
            (chat_id, Signal::UserWrote { text, email: customer_email })
        }
        WebhookEvent::ChatDeactivated { chat_id } => (chat_id, Signal::Completed),
        WebhookEvent::ChatStarted { .. } => return Ok(ignored(&id, "a chat without a message yet")),
        WebhookEvent::Other { action, .. } => return Ok(ignored(&id, &action)),
    };
    let target = Target::of(&st, &agent, Channel::Livechat, answers, &chat_id).await?;
    deliver(&st, id, target, &chat_id, signal).await
}
