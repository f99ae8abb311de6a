//! The Agent API route, `POST /converse/chat` (seed 003's contract; wire format in
//! [`baton_connectors::agent_api`]). Verified by the agent's access token; the event is
//! queued like any channel's, and the agent's answers go to the integration's converse
//! webhook. With `Prefer: wait=N` (or `?wait=N`, seconds) the answers produced within N
//! seconds also come back in the response, for callers that need them in the same request
//! (voice assistants).

use super::{load_agent, refuse, ApiError, AppState, ClientAddr, RawBody};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use baton_connectors::agent_api::{self, ConverseEvent, ConverseRequest};
use baton_core::ports::LoggedMessage;
use baton_core::{Channel, ConversationKey, Event, EventKind, Role, State as SessionState};
use serde::Deserialize;
use std::time::Duration;

/// Longest synchronous wait a caller may ask for (API Gateway ends requests at 30 s).
pub const MAX_WAIT_SECS: u64 = 25;
/// How often a synchronous wait looks at the conversation (besides live notifications).
const WAIT_POLL: Duration = Duration::from_millis(100);

pub fn routes() -> Router<AppState> {
    Router::new().route("/converse/chat", post(converse))
}

#[derive(Deserialize, Default)]
struct WaitQuery {
    #[serde(default)]
    wait: Option<String>,
}

async fn converse(
    State(st): State<AppState>,
    headers: HeaderMap,
    ClientAddr(client): ClientAddr,
    Query(q): Query<WaitQuery>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let bot = headers.get("botid").and_then(|v| v.to_str().ok()).map(str::trim).unwrap_or("");
    if bot.is_empty() {
        return Err(ApiError::bad_request("botid: the header with the agent id is required"));
    }
    if !st.limits.per_ip.allow(&client) {
        return Err(ApiError::rate_limited());
    }
    let agent = load_agent(&st, bot).await?;
    // The contract sends the raw token; `Bearer <token>` is accepted as well.
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| crate::auth::bearer(Some(v)).unwrap_or(v.trim()))
        .filter(|t| !t.is_empty());
    let Some(token) = presented else {
        return Err(refuse(&st, &agent, &client, ApiError::unauthorized("missing Authorization: <agent token>")));
    };
    if !crate::auth::token_matches(st.ports.store.as_ref(), &agent.id, token).await? {
        return Err(refuse(&st, &agent, &client, ApiError::unauthorized("the token is not valid for this agent")));
    }
    let wait = wait_secs(&headers, q.wait.as_deref())?;
    let req = agent_api::parse_converse(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let key = ConversationKey::new(&agent.id, Channel::Api, &req.conversation_id)
        .map_err(|e| ApiError::bad_request(format!("platformConversationId: {e}")))?;
    if !st.limits.per_conversation.allow(&key.to_string()) {
        return Err(ApiError::rate_limited());
    }
    let idempotency = idempotency_key(&headers)?;
    let before = match wait {
        Some(_) => last_seq(&st, &key).await?,
        None => 0,
    };
    let (events, main_id) = events_for(&req, &key, idempotency.as_deref(), st.ports.clock.now());
    st.ports.queue.enqueue(events).await?;
    tracing::info!(agent = %agent.id, conversation = %key, event = req.event.name(), "agent API event queued");
    let Some(secs) = wait else {
        // The contract's acknowledgement: 200 with an empty body; answers come by webhook.
        return Ok(StatusCode::OK.into_response());
    };
    let (messages, complete) = wait_for_answers(&st, &key, &main_id, before, Duration::from_secs(secs)).await?;
    let data: Vec<serde_json::Value> =
        messages.iter().map(|m| agent_api::event_data(&key.user, &m.message, &m.id)).collect();
    Ok(Json(serde_json::json!({"messages": data, "complete": complete})).into_response())
}

/// `Prefer: wait=N` (RFC 7240) or `?wait=N`: seconds, 1-25.
fn wait_secs(headers: &HeaderMap, query: Option<&str>) -> Result<Option<u64>, ApiError> {
    let from_header = headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.split([',', ';']).map(str::trim).find_map(|p| p.strip_prefix("wait=").map(str::to_string)));
    let Some(raw) = query.map(str::to_string).or(from_header) else {
        return Ok(None);
    };
    match raw.trim().parse::<u64>() {
        Ok(n) if (1..=MAX_WAIT_SECS).contains(&n) => Ok(Some(n)),
        _ => Err(ApiError::bad_request(format!("wait: must be a whole number of seconds from 1 to {MAX_WAIT_SECS}"))),
    }
}

/// An optional `Idempotency-Key` header: a retried request with the same key is applied once.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match v.to_str().map(str::trim) {
        Ok(k) if !k.is_empty() && k.len() <= 128 && k.bytes().all(|b| b.is_ascii_graphic()) => Ok(Some(k.to_string())),
        _ => Err(ApiError::bad_request("Idempotency-Key: 1-128 printable ASCII characters")),
    }
}

/// The canonical events of one request (parameters first, in the same enqueue) and the id
/// of the last one, whose outcome a synchronous wait follows.
fn events_for(
    req: &ConverseRequest,
    key: &ConversationKey,
    idempotency: Option<&str>,
    now: baton_core::Millis,
) -> (Vec<Event>, String) {
    let base = match idempotency {
        Some(k) => format!("api:{key}:{k}"),
        None => format!("api:{key}:{}", &crate::auth::generate_token()[4..36]),
    };
    let mut events = Vec::new();
    if !req.meta.is_empty() {
        let params = req.meta.iter().map(|m| (m.key.clone(), m.value.clone())).collect();
        let sanitize = req.meta.iter().filter(|m| m.sanitize).map(|m| m.key.clone()).collect();
        let id = if matches!(req.event, ConverseEvent::Metadata) { base.clone() } else { format!("{base}:meta") };
        events.push(Event::new(id, key.clone(), now, EventKind::ParamsSet { params, sanitize }));
    }
    let kind = match &req.event {
        ConverseEvent::Start => Some(EventKind::SessionStarted),
        ConverseEvent::Message { text, .. } => {
            Some(EventKind::UserMessage { text: text.clone(), email: None, language: None, reply: None, name: None })
        }
        ConverseEvent::End => Some(EventKind::SessionEnded),
        ConverseEvent::Metadata => None,
    };
    if let Some(kind) = kind {
        events.push(Event::new(base.clone(), key.clone(), now, kind));
    }
    (events, base)
}

/// Where the conversation's log ends now.
async fn last_seq(st: &AppState, key: &ConversationKey) -> Result<i64, ApiError> {
    let mut cursor = 0;
    loop {
        let page = st.log.after(key, cursor, 1000).await?;
        match page.last() {
            Some(m) => cursor = m.seq,
            None => return Ok(cursor),
        }
        if page.len() < 1000 {
            return Ok(cursor);
        }
    }
}

/// Wait until the request's event is applied and its answers are out, or the deadline.
/// Answered means: the event is applied, nothing of the conversation is pending, and the
/// bot is not still thinking about the user's last message (a question without an answer,
/// whose reply event is on its way while the outbox is empty).
async fn wait_for_answers(
    st: &AppState,
    key: &ConversationKey,
    event_id: &str,
    after: i64,
    limit: Duration,
) -> Result<(Vec<LoggedMessage>, bool), ApiError> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut live = st.live.subscribe();
    let conversation = key.to_string();
    loop {
        // In this order: the event applied, then the session (so it is the session after
        // the event), then the outbox (so effects the session names are counted), then the log.
        if st.ports.store.is_seen(key, event_id).await? {
            let thinking = match st.ports.store.load_session(key).await? {
                Some(v) => {
                    matches!(v.session.state, SessionState::Bot)
                        && v.session.history.last().is_some_and(|t| t.role == Role::User)
                }
                None => false,
            };
            if st.ports.store.pending_effects(key).await?.is_empty() {
                let messages = st.log.after(key, after, 100).await?;
                if !(thinking && messages.is_empty()) {
                    return Ok((messages, true));
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok((st.log.after(key, after, 100).await?, false));
        }
        let nap = WAIT_POLL.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        // A message for this conversation ends the nap early (in `baton serve`).
        let _ = tokio::time::timeout(nap, async {
            while let Ok(p) = live.recv().await {
                if p.conversation == conversation {
                    break;
                }
            }
        })
        .await;
    }
}
