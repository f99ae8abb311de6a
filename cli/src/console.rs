//! The operator console: a small help-desk for trying every flow locally. It is a desk
//! like any other: the hub reaches it only through the webhook-desk contract
//! (`/console/desk/conversation/establish`, `/chat`, `/conversation/close`, signed per
//! Standard Webhooks), and it answers only through the hub's `/v1/human/...` routes with
//! the agent's token, over HTTP.

use crate::console_login::{self, OperatorLogin};
use crate::demo::ConsoleCredential;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use baton_connectors::standard_webhooks::{SigningSecret, WebhookHeaders};
use baton_core::ports::{Clock, Store};
use baton_embedded::{ConsoleStore, Db};
use baton_runtime::alerts::Alerts;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone)]
pub struct ConsoleState {
    store: ConsoleStore,
    db: Arc<Db>,
    hub_base: String,
    alerts: Alerts,
    clock: Arc<dyn Clock>,
    http: reqwest::Client,
}

impl ConsoleState {
    pub fn new(store: ConsoleStore, db: Arc<Db>, hub_base: String, alerts: Alerts, clock: Arc<dyn Clock>) -> Self {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_default();
        ConsoleState { store, db, hub_base, alerts, clock, http }
    }
}

/// The desk side (signed by the hub), the login, and the operator's page and API (behind
/// the login).
pub fn routes(state: ConsoleState, login: OperatorLogin, body_limit: usize) -> Router {
    let operator = Router::new()
        .route("/console", get(|| async { crate::assets::console_page() }))
        .route("/console/api/conversations", get(list))
        .route("/console/api/conversations/{id}", get(show))
        .route("/console/api/conversations/{id}/take", post(take))
        .route("/console/api/conversations/{id}/reply", post(reply))
        .route("/console/api/conversations/{id}/end", post(end))
        .route("/console/api/status", get(status))
        .route_layer(axum::middleware::from_fn_with_state(login.clone(), console_login::require_operator))
        .with_state(state.clone());
    let sign_in = Router::new()
        .route("/console/login", get(console_login::login_page).post(console_login::login))
        .route("/console/logout", post(console_login::logout))
        .with_state(login);
    Router::new()
        .route("/console/desk/conversation/establish", post(establish))
        .route("/console/desk/chat", post(chat))
        .route("/console/desk/conversation/close", post(close))
        .with_state(state)
        .merge(operator)
        .merge(sign_in)
        .layer(DefaultBodyLimit::max(body_limit))
}

/// Replies of the desk side follow the contract's `{code, message}`.
fn desk_reply(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"code": status.as_u16(), "message": message}))).into_response()
}

fn api_error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": {"code": code, "message": message.into()}}))).into_response()
}

/// A refused desk-side request, answered with [`desk_reply`].
struct DeskFail(StatusCode, String);

impl IntoResponse for DeskFail {
    fn into_response(self) -> Response {
        desk_reply(self.0, &self.1)
    }
}

/// A failed operator action, answered with [`api_error`].
struct ApiFail(StatusCode, &'static str, String);

impl IntoResponse for ApiFail {
    fn into_response(self) -> Response {
        api_error(self.0, self.1, self.2)
    }
}

async fn credential(st: &ConsoleState, agent: &str) -> Option<ConsoleCredential> {
    let raw = st.store.credential(agent).await.ok()??;
    serde_json::from_str(raw.expose()).ok()
}

/// Verify the hub's Standard Webhooks signature with the agent's secret.
async fn verify(st: &ConsoleState, agent: &str, headers: &HeaderMap, body: &[u8]) -> Result<(), DeskFail> {
    let unauthorized = |m: &str| DeskFail(StatusCode::UNAUTHORIZED, m.to_string());
    let cred = credential(st, agent).await.ok_or_else(|| unauthorized("this console does not serve that agent"))?;
    let secret = SigningSecret::parse(&cred.signing_secret).map_err(|_| unauthorized("console misconfigured"))?;
    let now = st.clock.now().0 / 1000;
    WebhookHeaders::from_header_map(headers)
        .and_then(|h| secret.verify(&h, body, now))
        .map_err(|e| unauthorized(&format!("webhook signature: {e}")))
}

fn parse(body: &[u8]) -> Result<Value, DeskFail> {
    serde_json::from_slice::<Value>(body)
        .map_err(|e| DeskFail(StatusCode::BAD_REQUEST, format!("request body is not JSON: {e}")))
}

fn is_probe(v: &Value) -> bool {
    v.get("istest").and_then(Value::as_bool) == Some(true)
}

fn str_field<'a>(v: &'a Value, name: &str) -> Result<&'a str, DeskFail> {
    v.get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| DeskFail(StatusCode::BAD_REQUEST, format!("{name}: missing or not a string")))
}

async fn establish(State(st): State<ConsoleState>, headers: HeaderMap, body: Bytes) -> Response {
    let v = match parse(&body) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    if is_probe(&v) {
        return desk_reply(StatusCode::OK, "success");
    }
    let (id, agent) = match (str_field(&v, "conversation_id"), str_field(&v, "bot_id")) {
        (Ok(i), Ok(a)) => (i.to_string(), a.to_string()),
        (Err(r), _) | (_, Err(r)) => return r.into_response(),
    };
    if let Err(r) = verify(&st, &agent, &headers, &body).await {
        return r.into_response();
    }
    let history: Vec<(String, String, baton_core::Millis)> = v
        .get("body")
        .and_then(Value::as_array)
        .map(|turns| {
            turns
                .iter()
                .filter_map(|t| {
                    let role = match t.get("message_type").and_then(Value::as_str)? {
                        "QUESTION" => "user",
                        _ => "bot",
                    };
                    Some((role.to_string(), t.get("text").and_then(Value::as_str)?.to_string(), baton_core::Millis(0)))
                })
                .collect()
        })
        .unwrap_or_default();
    let email = v.get("email").and_then(Value::as_str).unwrap_or("").to_string();
    let reason = v.get("reason").and_then(Value::as_str).unwrap_or("").to_string();
    // What the hub knows about the user travels with the user info, for the operator to see
    // (personal data arrives masked).
    let mut user_info = v.get("user_info").cloned().filter(Value::is_object).unwrap_or_else(|| json!({}));
    if let (Some(info), Some(params)) = (user_info.as_object_mut(), v.get("params").filter(|p| p.is_object())) {
        info.insert("params".into(), params.clone());
    }
    let user_info = user_info.to_string();
    let now = st.clock.now();
    match st.store.open_conversation(&id, &agent, &email, &user_info, &reason, history, now).await {
        Ok(_) => desk_reply(StatusCode::OK, "success"),
        Err(e) => desk_reply(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// The agent of a console conversation, after the signature check.
async fn verified_conversation(
    st: &ConsoleState,
    headers: &HeaderMap,
    body: &[u8],
    v: &Value,
) -> Result<String, DeskFail> {
    let id = str_field(v, "conversation_id")?.to_string();
    let conv = match st.store.get(&id).await {
        Ok(Some((c, _))) => c,
        Ok(None) => return Err(DeskFail(StatusCode::NOT_FOUND, "unknown conversation_id".into())),
        Err(e) => return Err(DeskFail(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    };
    verify(st, &conv.agent, headers, body).await?;
    Ok(id)
}

async fn chat(State(st): State<ConsoleState>, headers: HeaderMap, body: Bytes) -> Response {
    let v = match parse(&body) {
        Ok(v) if is_probe(&v) => return desk_reply(StatusCode::OK, "success"),
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let id = match verified_conversation(&st, &headers, &body, &v).await {
        Ok(id) => id,
        Err(r) => return r.into_response(),
    };
    let Some(text) = v.get("body").and_then(Value::as_str) else {
        return desk_reply(StatusCode::BAD_REQUEST, "body: missing or not a string");
    };
    // The hub retries with the same webhook-id; it is our dedupe key.
    let dedupe = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let dedupe = if dedupe.is_empty() { format!("{id}:{}", baton_runtime::auth::hash_token(text)) } else { dedupe };
    match st.store.add_message(&id, &dedupe, "user", text, st.clock.now()).await {
        Ok(_) => desk_reply(StatusCode::OK, "success"),
        Err(e) => desk_reply(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

async fn close(State(st): State<ConsoleState>, headers: HeaderMap, body: Bytes) -> Response {
    let v = match parse(&body) {
        Ok(v) if is_probe(&v) => return desk_reply(StatusCode::OK, "success"),
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let id = match verified_conversation(&st, &headers, &body, &v).await {
        Ok(id) => id,
        Err(r) => return r.into_response(),
    };
    let why = match v.get("type").and_then(Value::as_str) {
        Some("TIMEOUT") => "The conversation ended because nobody replied in time.",
        _ => "The visitor ended the conversation.",
    };
    let now = st.clock.now();
    let dedupe = format!("{id}:close");
    let r = async {
        st.store.add_message(&id, &dedupe, "system", why, now).await?;
        st.store.set_status(&id, "closed", None).await
    }
    .await;
    match r {
        Ok(_) => desk_reply(StatusCode::OK, "success"),
        Err(e) => desk_reply(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

async fn list(State(st): State<ConsoleState>) -> Response {
    match st.store.list(200).await {
        Ok(c) => Json(json!({"conversations": c})).into_response(),
        Err(e) => api_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()),
    }
}

async fn show(State(st): State<ConsoleState>, Path(id): Path<String>) -> Response {
    match st.store.get(&id).await {
        Ok(Some((c, m))) => Json(json!({"conversation": c, "messages": m})).into_response(),
        Ok(None) => api_error(StatusCode::NOT_FOUND, "not_found", "no such conversation"),
        Err(e) => api_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()),
    }
}

async fn take(State(st): State<ConsoleState>, Path(id): Path<String>) -> Response {
    match st.store.set_status(&id, "active", Some("operator")).await {
        Ok(_) => Json(json!({"ok": true})).into_response(),
        Err(e) => api_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()),
    }
}

#[derive(Deserialize)]
struct ReplyBody {
    text: String,
}

/// Call the hub as a desk would: `POST {hub}/desks/webhook/{agent}/v1/human/...`.
async fn call_hub(st: &ConsoleState, agent: &str, path: &str, body: Value) -> Result<(), ApiFail> {
    let no_token = || ApiFail(StatusCode::CONFLICT, "no_credential", "this console has no token for the agent".into());
    let cred = credential(st, agent).await.ok_or_else(no_token)?;
    let url = format!("{}/desks/webhook/{agent}/v1/human/{path}", st.hub_base);
    let msg_id = format!("msg_{}", &baton_runtime::auth::generate_token()[4..36]);
    let bad_gateway = |m: String| ApiFail(StatusCode::BAD_GATEWAY, "hub_error", m);
    // A lost answer is retried with the same webhook-id; the hub drops the copy.
    for attempt in 0..3u64 {
        let r = st.http.post(&url).bearer_auth(&cred.token).header("webhook-id", &msg_id).json(&body).send().await;
        match r {
            Ok(resp) if resp.status().is_success() => return Ok(()),
            Ok(resp) if resp.status().is_client_error() => {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                return Err(bad_gateway(format!("the hub refused the message ({status}): {text}")));
            }
            Ok(_) | Err(_) if attempt < 2 => tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await,
            Ok(resp) => return Err(bad_gateway(format!("the hub answered {}", resp.status()))),
            Err(e) => return Err(bad_gateway(format!("the hub is unreachable: {e}"))),
        }
    }
    Err(bad_gateway("the hub did not accept the message".into()))
}

async fn reply(State(st): State<ConsoleState>, Path(id): Path<String>, Json(req): Json<ReplyBody>) -> Response {
    let text = req.text.trim();
    if text.is_empty() {
        return api_error(StatusCode::BAD_REQUEST, "invalid_request", "text: must not be empty");
    }
    let conv = match st.store.get(&id).await {
        Ok(Some((c, _))) => c,
        Ok(None) => return api_error(StatusCode::NOT_FOUND, "not_found", "no such conversation"),
        Err(e) => return api_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()),
    };
    if conv.status == "closed" {
        return api_error(StatusCode::CONFLICT, "closed", "the conversation is closed");
    }
    let now = st.clock.now();
    let body = json!({"conversation_id": id, "timestamp": now.0, "body": text});
    if let Err(r) = call_hub(&st, &conv.agent, "message/receive", body).await {
        return r.into_response();
    }
    let dedupe = format!("{id}:human:{}", &baton_runtime::auth::generate_token()[4..20]);
    let stored = async {
        st.store.add_message(&id, &dedupe, "human", text, now).await?;
        if conv.status == "waiting" {
            st.store.set_status(&id, "active", Some("operator")).await?;
        }
        Ok::<_, baton_core::ports::StoreError>(())
    }
    .await;
    match stored {
        Ok(()) => Json(json!({"ok": true})).into_response(),
        Err(e) => api_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()),
    }
}

async fn end(State(st): State<ConsoleState>, Path(id): Path<String>) -> Response {
    let conv = match st.store.get(&id).await {
        Ok(Some((c, _))) => c,
        Ok(None) => return api_error(StatusCode::NOT_FOUND, "not_found", "no such conversation"),
        Err(e) => return api_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()),
    };
    if conv.status != "closed" {
        let body = json!({"conversation_id": id, "timestamp": st.clock.now().0});
        if let Err(r) = call_hub(&st, &conv.agent, "close", body).await {
            return r.into_response();
        }
        let now = st.clock.now();
        let r = async {
            st.store.add_message(&id, &format!("{id}:close"), "system", "You ended the conversation.", now).await?;
            st.store.set_status(&id, "closed", None).await
        }
        .await;
        if let Err(e) = r {
            return api_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string());
        }
    }
    Json(json!({"ok": true})).into_response()
}

async fn status(State(st): State<ConsoleState>) -> Response {
    let agents = match st.db.list_agents().await {
        Ok(a) => a,
        Err(e) => return api_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()),
    };
    let mut out = Vec::new();
    for a in agents {
        let rec = st.db.desk_status(&a.id).await.ok().flatten();
        let (status, detail) = match rec {
            Some(r) => (serde_json::to_value(r.status).unwrap_or(Value::Null), r.detail),
            None => (json!("not_configured"), "not checked yet".to_string()),
        };
        let now = st.clock.now();
        let hours = match a.hours.as_ref().map(|h| h.compile()) {
            Some(Ok(s)) => json!({
                "open_now": s.is_open(now),
                "next_opening": s.next_opening(now).map(|t| s.describe(t)),
            }),
            _ => json!({"open_now": true, "next_opening": null}),
        };
        out.push(json!({"id": a.id, "name": a.name, "desk_status": status, "detail": detail, "hours": hours}));
    }
    // Live tokio tasks: a count that keeps growing under steady traffic is a task leak.
    let tasks = tokio::runtime::Handle::current().metrics().num_alive_tasks();
    Json(json!({"agents": out, "alerts": st.alerts.recent(), "runtime": {"tasks": tasks}})).into_response()
}
