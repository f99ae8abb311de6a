//! The widget API: start or resume a conversation, send messages, set the e-mail, end a
//! human chat, and read replies by cursor or as a live stream (SSE).

use super::{load_agent, parse_json, ApiError, AppState, ClientAddr, RawBody};
use crate::widget::LoggedMessage;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use baton_core::{Agent, Channel, ConversationKey, Event, EventKind};
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::convert::Infallible;
use tokio_stream::wrappers::BroadcastStream;

/// Longest user message accepted from the widget, in characters.
pub const MAX_TEXT_CHARS: usize = 4000;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/widget/{agent}/session", post(session).options(preflight))
        .route("/api/widget/{agent}/messages", post(send).get(poll).options(preflight))
        .route("/api/widget/{agent}/email", post(set_email).options(preflight))
        .route("/api/widget/{agent}/end", post(end).options(preflight))
        .route("/api/widget/{agent}/stream", get(stream_replies))
}

/// Allowed origins per agent: a browser request from another origin is refused (403)
/// unless the agent lists it. Requests without Origin (same-origin GET, curl) pass.
fn check_origin(agent: &Agent, headers: &HeaderMap) -> Result<Option<HeaderValue>, ApiError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(None);
    };
    let allowed = &agent.widget.allowed_origins;
    let o = origin.to_str().unwrap_or("");
    if allowed.is_empty() || allowed.iter().any(|a| a == o || a == "*") {
        Ok(Some(origin.clone()))
    } else {
        Err(ApiError::new(StatusCode::FORBIDDEN, "origin_not_allowed", format!("origin {o:?} may not use this widget")))
    }
}

fn with_cors(mut resp: Response, origin: Option<HeaderValue>) -> Response {
    if let Some(o) = origin {
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    resp
}

async fn preflight(
    State(st): State<AppState>,
    Path(agent): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let agent = load_agent(&st, &agent).await?;
    let origin = check_origin(&agent, &headers)?;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("authorization, content-type"));
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    Ok(with_cors(resp, origin))
}

/// The widget conversation a bearer token opens, after origin and rate checks.
struct WidgetCall {
    key: ConversationKey,
    origin: Option<HeaderValue>,
}

async fn authorize(
    st: &AppState,
    agent_id: &str,
    headers: &HeaderMap,
    token: Option<&str>,
    client: &str,
) -> Result<WidgetCall, ApiError> {
    let agent = load_agent(st, agent_id).await?;
    let origin = check_origin(&agent, headers)?;
    if !st.limits.per_ip.allow(client) {
        return Err(ApiError::rate_limited());
    }
    let header_token = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let token = token.or_else(|| crate::auth::bearer(header_token)).ok_or_else(|| {
        ApiError::unauthorized("missing conversation token (Authorization: Bearer <token> from /session)")
    })?;
    let user = st
        .signer
        .verify(&agent.id, token)
        .ok_or_else(|| ApiError::unauthorized("the conversation token is not valid for this agent"))?;
    let key =
        ConversationKey::new(&agent.id, Channel::Widget, &user).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(WidgetCall { key, origin })
}

/// A widget opening a WebSocket to API Gateway (its `$connect`): the same checks as every
/// widget call (agent, allowed origin, rate limit, conversation token, here from the query
/// string: browsers send no headers of their own on a WebSocket). Returns its conversation.
pub async fn authorize_socket(
    st: &AppState,
    agent_id: &str,
    headers: &HeaderMap,
    token: Option<&str>,
    client: &str,
) -> Result<ConversationKey, ApiError> {
    let token = token.ok_or_else(|| ApiError::unauthorized("missing conversation token (?token= from /session)"))?;
    Ok(authorize(st, agent_id, headers, Some(token), client).await?.key)
}

async fn enqueue(st: &AppState, event: Event) -> Result<(), ApiError> {
    st.ports.queue.enqueue(vec![event]).await?;
    Ok(())
}

fn accepted(origin: Option<HeaderValue>, event_id: &str) -> Response {
    let body = Json(serde_json::json!({"accepted": true, "event_id": event_id}));
    with_cors((StatusCode::ACCEPTED, body).into_response(), origin)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SessionRequest {
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    token: Option<String>,
}

async fn session(
    State(st): State<AppState>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
    ClientAddr(client): ClientAddr,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let agent = load_agent(&st, &agent_id).await?;
    let origin = check_origin(&agent, &headers)?;
    if !st.limits.per_ip.allow(&client) {
        return Err(ApiError::rate_limited());
    }
    let req: SessionRequest =
        if body.iter().all(u8::is_ascii_whitespace) { SessionRequest::default() } else { parse_json(&body)? };
    if let Some(e) = req.email.as_deref().filter(|e| !e.is_empty()) {
        if !baton_core::email::is_valid(e) {
            return Err(ApiError::bad_request(format!("email: {e:?} is not an e-mail address")));
        }
    }
    // Resume the conversation of a valid token; otherwise start a new one.
    let (user, token) =
        match req.token.as_deref().and_then(|t| st.signer.verify(&agent.id, t).map(|u| (u, t.to_string()))) {
            Some(pair) => pair,
            None => st.signer.issue(&agent.id),
        };
    let key =
        ConversationKey::new(&agent.id, Channel::Widget, &user).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if let Some(email) = req.email.filter(|e| !e.is_empty()) {
        let id = format!("widget-email:{key}:{}", short_hash(&email));
        enqueue(&st, Event::new(id, key.clone(), st.ports.clock.now(), EventKind::UserSetEmail { email })).await?;
    }
    let _ = req.language; // the language travels with each message
    let title = if agent.name.is_empty() { agent.id.clone() } else { agent.name.clone() };
    let body = Json(serde_json::json!({"conversation_id": user, "token": token, "cursor": 0, "title": title}));
    Ok(with_cors(body.into_response(), origin))
}

fn short_hash(s: &str) -> String {
    hex::encode(&Sha256::digest(s.as_bytes())[..8])
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendRequest {
    text: String,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    language: Option<String>,
}

async fn send(
    State(st): State<AppState>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
    ClientAddr(client): ClientAddr,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let call = authorize(&st, &agent_id, &headers, None, &client).await?;
    if !st.limits.per_conversation.allow(&call.key.to_string()) {
        return Err(ApiError::rate_limited());
    }
    let req: SendRequest = parse_json(&body)?;
    let text = req.text.trim().to_string();
    if text.is_empty() {
        return Err(ApiError::bad_request("text: must not be empty"));
    }
    if text.chars().count() > MAX_TEXT_CHARS {
        return Err(ApiError::bad_request(format!("text: longer than {MAX_TEXT_CHARS} characters")));
    }
    // The widget retries with the same client id; the queue and the worker drop the copies.
    let client_id = match req.client_id {
        Some(c) if !c.is_empty() && c.len() <= 64 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') => c,
        Some(_) => return Err(ApiError::bad_request("client_id: 1-64 characters of a-z, A-Z, 0-9 or '-'")),
        None => crate::auth::generate_token()[4..36].to_string(),
    };
    let id = format!("widget:{}:{client_id}", call.key);
    let language = req.language.filter(|l| baton_core::messages::LANGUAGES.contains(&l.as_str()));
    let kind = EventKind::UserMessage { text, email: None, language, reply: None, name: None };
    enqueue(&st, Event::new(id.clone(), call.key, st.ports.clock.now(), kind)).await?;
    Ok(accepted(call.origin, &id))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmailRequest {
    email: String,
}

async fn set_email(
    State(st): State<AppState>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
    ClientAddr(client): ClientAddr,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let call = authorize(&st, &agent_id, &headers, None, &client).await?;
    let req: EmailRequest = parse_json(&body)?;
    if !baton_core::email::is_valid(&req.email) {
        return Err(ApiError::bad_request(format!("email: {:?} is not an e-mail address", req.email)));
    }
    let id = format!("widget-email:{}:{}", call.key, short_hash(&req.email));
    enqueue(&st, Event::new(id.clone(), call.key, st.ports.clock.now(), EventKind::UserSetEmail { email: req.email }))
        .await?;
    Ok(accepted(call.origin, &id))
}

async fn end(
    State(st): State<AppState>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
    ClientAddr(client): ClientAddr,
) -> Result<Response, ApiError> {
    let call = authorize(&st, &agent_id, &headers, None, &client).await?;
    let id = format!("widget-end:{}:{}", call.key, &crate::auth::generate_token()[4..36]);
    enqueue(&st, Event::new(id.clone(), call.key, st.ports.clock.now(), EventKind::UserEnded)).await?;
    Ok(accepted(call.origin, &id))
}

#[derive(Deserialize)]
struct Cursor {
    #[serde(default)]
    after: i64,
    #[serde(default)]
    token: Option<String>,
}

const PAGE: usize = 100;

async fn poll(
    State(st): State<AppState>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
    ClientAddr(client): ClientAddr,
    Query(q): Query<Cursor>,
) -> Result<Response, ApiError> {
    let call = authorize(&st, &agent_id, &headers, None, &client).await?;
    let messages = st.log.after(&call.key, q.after, PAGE).await?;
    let cursor = messages.last().map_or(q.after, |m| m.seq);
    let body = Json(serde_json::json!({"messages": messages, "cursor": cursor}));
    Ok(with_cors(body.into_response(), call.origin))
}

fn sse_event(m: &LoggedMessage) -> SseEvent {
    SseEvent::default()
        .event("message")
        .id(m.seq.to_string())
        .data(serde_json::to_string(m).unwrap_or_else(|_| "{}".into()))
}

/// Live replies. Subscribes before reading the backlog so nothing falls in between;
/// duplicates across the two are dropped by sequence number. A client that falls too far
/// behind is disconnected and resumes from its last event id.
async fn stream_replies(
    State(st): State<AppState>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
    ClientAddr(client): ClientAddr,
    Query(q): Query<Cursor>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let call = authorize(&st, &agent_id, &headers, q.token.as_deref(), &client).await?;
    let last_event_id = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i64>().ok());
    let after = q.after.max(last_event_id.unwrap_or(0));
    let live = BroadcastStream::new(st.live.subscribe());
    let backlog = st.log.after(&call.key, after, 1000).await?;
    let mut last = backlog.last().map_or(after, |m| m.seq);
    let conv = call.key.to_string();
    let first: Vec<Result<SseEvent, Infallible>> = backlog.iter().map(|m| Ok(sse_event(m))).collect();
    let rest = live.take_while(|r| std::future::ready(r.is_ok())).filter_map(move |r| {
        let out = match r {
            Ok(p) if p.conversation == conv && p.message.seq > last => {
                last = p.message.seq;
                Some(Ok(sse_event(&p.message)))
            }
            _ => None,
        };
        std::future::ready(out)
    });
    Ok(Sse::new(stream::iter(first).chain(rest)).keep_alive(KeepAlive::default()))
}
