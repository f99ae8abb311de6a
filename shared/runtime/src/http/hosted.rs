//! Webhooks of a hosted AI agent used as the brain (wire format in
//! [`baton_connectors::hosted_agent`]): `POST /brains/hosted/{agent}/{secret}/converse` and
//! `.../actions`. The secret path segment is the agent's `brain.webhook_secret`, compared in
//! constant time (the contract documents no signature). Messages and escalations are queued
//! like any event; `isTeamOnline` and action triggers are answered in the response, since the
//! hosted agent waits for them.

use super::{load_agent, refuse, ApiError, AppState, ClientAddr, RawBody};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use baton_connectors::hosted_agent::{self, HostedEvent};
use baton_core::agent::{Agent, BrainConfig};
use baton_core::event::BrainReply;
use baton_core::{ConversationKey, Event, EventKind};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/brains/hosted/{agent}/{secret}/converse", post(converse))
        .route("/brains/hosted/{agent}/{secret}/actions", post(action))
}

/// The agent, when `secret` is its hosted agent's webhook secret.
async fn verify(st: &AppState, agent_id: &str, secret: &str, client: &str) -> Result<Agent, ApiError> {
    let agent = load_agent(st, agent_id).await?;
    if !matches!(agent.brain, BrainConfig::Hosted(_)) {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "this agent does not use a hosted agent"));
    }
    let agent = st.ports.secrets.resolve(&agent).await.map_err(|e| {
        tracing::error!(agent = %agent.id, error = %e, "secrets of a hosted agent could not be resolved");
        ApiError::unavailable("the agent's secrets are unavailable; retry later")
    })?;
    let BrainConfig::Hosted(cfg) = &agent.brain else { unreachable!("checked above") };
    let expected = cfg.webhook_secret.expose().as_bytes();
    let ok = expected.len() == secret.len() && bool::from(expected.ct_eq(secret.as_bytes()));
    if !ok {
        return Err(refuse(st, &agent, client, ApiError::unauthorized("the webhook URL is not valid for this agent")));
    }
    Ok(agent)
}

/// The hub conversation a webhook names; only this agent's.
fn conversation_of(agent: &Agent, id: &str) -> Result<ConversationKey, ApiError> {
    match ConversationKey::parse(id) {
        Ok(key) if key.agent == agent.id => Ok(key),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "conversation_not_found",
            "platformConversationId does not name a conversation of this agent",
        )),
    }
}

fn body_hash(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..12])
}

async fn converse(
    State(st): State<AppState>,
    Path((agent_id, secret)): Path<(String, String)>,
    ClientAddr(client): ClientAddr,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let agent = verify(&st, &agent_id, &secret, &client).await?;
    let hook = hosted_agent::parse_converse_webhook(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let key = conversation_of(&agent, &hook.conversation_id)?;
    let now = st.ports.clock.now();
    let (id, kind) = match hook.event {
        HostedEvent::Message { text, buttons, message_id } => {
            let id = format!("hosted:{key}:{}", message_id.unwrap_or_else(|| body_hash(&body)));
            (id, EventKind::BrainReplied { reply: BrainReply::Answer { text, buttons } })
        }
        HostedEvent::Escalate { to } => {
            let reason = match to {
                Some(t) => format!("the AI agent escalated (to {t})"),
                None => "the AI agent escalated".to_string(),
            };
            (format!("hosted:{key}:escalate:{}", body_hash(&body)), EventKind::HandoffRequested { reason })
        }
        HostedEvent::IsTeamOnline { .. } => {
            let desk_status = st.ports.store.desk_status(&agent.id).await?.map(|r| r.status);
            let online = agent.humans_available(now, desk_status);
            return Ok(Json(json!({"isOnline": online})).into_response());
        }
        HostedEvent::Other(kind) => {
            tracing::info!(agent = %agent.id, conversation = %key, kind, "hosted agent event without a use here");
            return Ok(StatusCode::OK.into_response());
        }
    };
    st.ports.queue.enqueue(vec![Event::new(id, key, now, kind)]).await?;
    Ok(StatusCode::OK.into_response())
}

async fn action(
    State(st): State<AppState>,
    Path((agent_id, secret)): Path<(String, String)>,
    ClientAddr(client): ClientAddr,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let agent = verify(&st, &agent_id, &secret, &client).await?;
    let trigger = hosted_agent::parse_action_trigger(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let key = conversation_of(&agent, &trigger.conversation_id)?;
    let Some(action) = agent.actions.iter().find(|a| a.name == trigger.name) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "action_not_found",
            format!("agent {} has no action {:?}", agent.id, trigger.name),
        ));
    };
    // Inputs the trigger does not carry come from the session's parameters.
    let known = st.ports.store.load_session(&key).await?.map(|v| v.session.params).unwrap_or_default();
    let mut inputs = serde_json::Map::new();
    for name in &action.inputs {
        let given = trigger.inputs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty());
        match given.or(known.get(name).map(String::as_str)) {
            Some(v) => inputs.insert(name.clone(), json!(v)),
            None => return Err(ApiError::bad_request(format!("data: the action's input {name:?} is missing"))),
        };
    }
    let result = baton_connectors::actions::call(&st.http, action, &key, serde_json::Value::Object(inputs))
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "action_failed", e))?;
    if !result.outputs.is_empty() {
        // The hub keeps what the action learned too (the desk gets it on handoff).
        let id = format!("hosted-action:{key}:{}", body_hash(&body));
        let mut sanitize = agent.sanitized_outputs(result.outputs.keys());
        sanitize.extend(result.sanitize.iter().cloned());
        let kind = EventKind::ParamsSet { params: result.outputs.clone(), sanitize };
        st.ports.queue.enqueue(vec![Event::new(id, key, st.ports.clock.now(), kind)]).await?;
    }
    let results: Vec<serde_json::Value> = result
        .outputs
        .iter()
        .map(|(k, v)| json!({"key": k, "value": v, "sanitize": action.sanitize.contains(k) || result.sanitize.contains(k)}))
        .collect();
    Ok(Json(json!({"results": results})).into_response())
}
