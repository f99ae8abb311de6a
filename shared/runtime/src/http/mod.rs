//! HTTP ingress shared by `baton serve` and the Lambda functions: verify, parse, enqueue,
//! answer. No route calls a brain or a desk; the worker does that after the queue.

pub mod agent_api;
pub mod channels;
pub mod desk;
mod desk_events;
pub mod hosted;
pub mod intercom;
pub mod livechat;
pub mod media;
pub mod salesiq;
pub mod widget;

use crate::ratelimit::RateLimiter;
use crate::widget::{MessageLog, Posted, TokenSigner};
use crate::Ports;
use axum::body::Bytes;
use axum::extract::{FromRef, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use baton_core::Agent;
use serde::de::DeserializeOwned;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::broadcast;

/// Default request body limit (bytes); configurable per deployment.
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub ports: Ports,
    pub log: Arc<dyn MessageLog>,
    pub live: broadcast::Sender<Posted>,
    pub signer: TokenSigner,
    pub limits: Arc<Limits>,
    pub body_limit: usize,
    /// Recognises the hub's own SalesIQ posts when they come back as webhooks.
    pub salesiq: baton_connectors::salesiq::api::SalesiqClient,
    /// Recognises the hub's own Intercom replies.
    pub intercom: baton_connectors::intercom::IntercomClient,
    /// Recognises the hub's own LiveChat messages and tells agents from customers.
    pub livechat: baton_connectors::livechat::LivechatClient,
    /// Signs the links in placeholders for files users send, and serves them.
    pub media: Arc<crate::media::MediaFiles>,
    /// The shared outbound client (action triggers of hosted agents are answered inline).
    pub http: baton_connectors::outbound::HttpClient,
}

/// Request rate limits of the public routes.
pub struct Limits {
    pub per_ip: RateLimiter,
    pub per_conversation: RateLimiter,
    /// Failed authentications per client address and agent.
    pub auth_failures: RateLimiter,
}

/// Rates (requests per second) and bursts of [`Limits`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimitConfig {
    pub per_ip_per_sec: f64,
    pub per_ip_burst: u32,
    pub per_conversation_per_sec: f64,
    pub per_conversation_burst: u32,
    /// Failed authentications allowed per client address and agent (refill rate and burst).
    pub auth_failures_per_sec: f64,
    pub auth_failures_burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            per_ip_per_sec: 20.0,
            per_ip_burst: 120,
            per_conversation_per_sec: 2.0,
            per_conversation_burst: 20,
            auth_failures_per_sec: 0.2,
            auth_failures_burst: 10,
        }
    }
}

impl Limits {
    pub fn new(c: RateLimitConfig) -> Self {
        Limits {
            per_ip: RateLimiter::new(c.per_ip_burst, c.per_ip_per_sec),
            per_conversation: RateLimiter::new(c.per_conversation_burst, c.per_conversation_per_sec),
            auth_failures: RateLimiter::new(c.auth_failures_burst, c.auth_failures_per_sec),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::new(RateLimitConfig::default())
    }
}

/// Which routes a process serves: `baton serve` serves all, each Lambda function its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routes {
    All,
    Widget,
    /// Desk webhooks: the webhook-desk contract, Zoho SalesIQ, Intercom and LiveChat.
    Desk,
    /// Channel webhooks: Telegram, LINE and WhatsApp, and the media links they hand out.
    Channels,
    /// The Agent API (`/converse/chat`) and the webhooks of hosted agents used as brains.
    AgentApi,
}

/// Every route of the hub that is not a local-only page.
pub fn router(state: AppState) -> Router {
    router_for(state, Routes::All)
}

pub fn router_for(state: AppState, routes: Routes) -> Router {
    let mut r = Router::new().route("/healthz", get(|| async { Json(serde_json::json!({"status": "ok"})) }));
    if matches!(routes, Routes::All | Routes::Widget) {
        r = r.merge(widget::routes());
    }
    if matches!(routes, Routes::All | Routes::Desk) {
        r = r.merge(desk::routes()).merge(salesiq::routes()).merge(intercom::routes()).merge(livechat::routes());
    }
    if matches!(routes, Routes::All | Routes::AgentApi) {
        r = r.merge(agent_api::routes()).merge(hosted::routes());
    }
    if matches!(routes, Routes::All | Routes::Channels) {
        r = r.merge(channels::routes()).merge(media::routes());
    }
    r.fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") }).with_state(state)
}

/// JSON error body `{"error":{"code","message"}}` with its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
    pub fn rate_limited() -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many requests; slow down")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

impl From<baton_core::ports::StoreError> for ApiError {
    fn from(e: baton_core::ports::StoreError) -> Self {
        tracing::error!(error = %e, "store error in a request");
        ApiError::unavailable("storage is unavailable; retry later")
    }
}

impl From<baton_core::ports::QueueError> for ApiError {
    fn from(e: baton_core::ports::QueueError) -> Self {
        tracing::error!(error = %e, "queue error in a request");
        ApiError::unavailable("the event could not be stored; retry later")
    }
}

/// The raw request body, limited to the configured size (413 beyond it). Signatures are
/// verified on these exact bytes before anything is parsed.
pub struct RawBody(pub Bytes);

impl<S> FromRequest<S> for RawBody
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = AppState::from_ref(state).body_limit;
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("request body exceeds {limit} bytes"),
            )
        };
        let declared = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        // A body somewhat over the limit is read and dropped before answering, so the
        // client sees the 413 instead of a reset connection; a huge one is refused at once.
        let read_cap = limit.max(DRAIN_CAP);
        if declared.is_some_and(|n| n > read_cap) {
            return Err(too_large());
        }
        match axum::body::to_bytes(req.into_body(), read_cap).await {
            Ok(b) if b.len() <= limit => Ok(RawBody(b)),
            _ => Err(too_large()),
        }
    }
}

/// Oversized bodies up to this size are drained before the 413 is sent.
const DRAIN_CAP: usize = 1024 * 1024;

/// Parse JSON with an error that names the problem (serde names the field and position).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", "request body is empty; expected JSON"));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", format!("request body: {e}")))
}

/// The client's address: the socket's peer (`baton serve`), or a [`SourceIp`] the adapter
/// put into the request (the API Gateway request context on Lambda), else "unknown".
pub struct ClientAddr(pub String);

/// The caller's IP as the platform in front of us saw it.
#[derive(Debug, Clone)]
pub struct SourceIp(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let ip = parts
            .extensions
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string())
            .or_else(|| parts.extensions.get::<SourceIp>().map(|s| s.0.clone()))
            .unwrap_or_else(|| "unknown".into());
        Ok(ClientAddr(ip))
    }
}

pub async fn load_agent(state: &AppState, id: &str) -> Result<Agent, ApiError> {
    if !baton_core::model::valid_agent_id(id) {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "agent_not_found", "no agent with that id"));
    }
    state
        .ports
        .store
        .get_agent(id)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "agent_not_found", format!("no agent {id:?}")))
}

/// Check `Authorization: Bearer <agent token>`. Repeated failures from one address are
/// throttled before any hash is compared.
pub async fn require_agent_token(
    state: &AppState,
    agent: &Agent,
    headers: &HeaderMap,
    client: &str,
) -> Result<(), ApiError> {
    let header = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let Some(token) = crate::auth::bearer(header) else {
        return Err(ApiError::unauthorized("missing Authorization: Bearer <agent token>"));
    };
    if crate::auth::token_matches(state.ports.store.as_ref(), &agent.id, token).await? {
        return Ok(());
    }
    Err(refuse(state, agent, client, ApiError::unauthorized("the token is not valid for this agent")))
}

/// A failed verification answered with `error`; repeated failures from one client address
/// for one agent are throttled (429) instead.
pub fn refuse(state: &AppState, agent: &Agent, client: &str, error: ApiError) -> ApiError {
    if !state.limits.auth_failures.allow(&format!("{client}|{}", agent.id)) {
        return ApiError::rate_limited();
    }
    error
}
