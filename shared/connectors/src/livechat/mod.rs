//! LiveChat (livechat.com, the Text platform, API v3.6) in both handoff modes of seed 004:
//!
//! - **other channel -> LiveChat** (relay): the hub acts as a LiveChat *customer* for a user of
//!   another channel. It gets a customer token through the agent-token grant, starts a chat in
//!   the desk's group with a transcript, sends the user's next messages as events and ends the
//!   chat when the user ends or times out; the agents' messages come back as `incoming_event`
//!   webhooks.
//! - **LiveChat -> LiveChat** (transfer): a bot agent answers LiveChat chats (`incoming_chat`,
//!   `incoming_event`); on handoff the chat is transferred to the desk's group.
//!
//! Modules: [`webhook`] (secret check, parsing, dedupe keys), [`oauth`] (agent, customer and bot
//! tokens, the authorization-code flow), [`api`] (the Chat API calls and the `Desk` port).
//!
//! # Wire facts (research, with sources and confidence)
//!
//! Tags as in `PROTOCOLS.md`: **[C]** the vendor's own docs or code (`livechat/livechat-public-docs`,
//! paths under `src/pages/`, and LiveChat's SDKs), **[S]** secondary, **[U]** unconfirmed: the most
//! likely form, kept in one constant or one function so it is easy to change.
//!
//! 1. **Agent access token from the refresh token.** `POST {accounts}/v2/token` with the form
//!    `grant_type=refresh_token`, `refresh_token`, `client_id`, `client_secret` (mandatory for
//!    server-side apps) -> `{access_token, account_id, expires_in: 28800, organization_id,
//!    refresh_token, scope, token_type: "Bearer"}` [C] `authorization/agent-authorization/index.mdx`
//!    ("Using the refresh token"). **Rotation:** "Server-side apps – Client Secret is mandatory to
//!    exchange a code and to refresh a token; refresh tokens don't rotate" (PKCE section, same
//!    file) [C]. The answer still carries a `refresh_token`; should it ever differ from the one
//!    sent, it is kept in the `KeyValue` store and used from then on ([`oauth`]) [U: never
//!    observed]. "25 access tokens per client per user account; the oldest is revoked" [C]
//!    `authorization/authorizing-api-calls/index.mdx` (Token limitations): hence one shared,
//!    cached token per agent, refreshed by one process at a time.
//!    Errors: `invalid_grant` (refresh token expired/revoked), `unauthorized_client` ("refresh
//!    token not found", "invalid client secret"), `invalid_client` [C] (same file, Errors). The
//!    HTTP status and body shape of these answers are **[U]**: read from `{"error": "<code>",
//!    "error_description"}` (OAuth 2) or `{"error": {"type", "message"}}`; every 4xx except 429 is
//!    taken as a refused refresh token.
//! 2. **Authorization-code flow** (`baton desks livechat authorize`): open
//!    `https://accounts.livechat.com/?response_type=code&client_id=…&redirect_uri=…&state=…`; the
//!    redirect carries `code` and `state`; exchange at `POST {accounts}/v2/token` with
//!    `grant_type=authorization_code`, `code`, `client_id`, `client_secret`, `redirect_uri` ->
//!    `{access_token, refresh_token, expires_in, …}` [C] `authorization/agent-authorization/index.mdx`
//!    (Authorization code grant, Steps 2–4). The docs send a form; LiveChat's Go SDK example
//!    posts the same fields as JSON [C] `livechat/lc-sdk-go` `examples/echo/accounts-service.go`.
//!    We send the form.
//! 3. **Customer tokens (agent-token grant).** `POST {accounts}/v2/customer/token` with
//!    `Authorization: Bearer <agent access token>` (scope `customers:own`; PATs are not accepted)
//!    and the JSON body `{grant_type: "agent_token", client_id, response_type: "token",
//!    entity_id?}` -> `{access_token, client_id, entity_id, expires_in: 28800, token_type,
//!    organization_id}`. Without `entity_id` a new customer is created; with it, a new token for
//!    that customer [C] `authorization/customer-authorization/index.mdx` (Agent token grant). The
//!    `entity_id` is kept per conversation key, so one end user stays one LiveChat customer, and
//!    each token is used until ~10 minutes before it expires.
//! 4. **Bot tokens.** `POST {api}/v3.6/configuration/action/issue_bot_token` with `{bot_id,
//!    client_id, bot_secret, organization_id}`; valid 24 h, cannot be revoked; scopes
//!    `chats--access:rw agents-bot--my:rw customers:rw` [C]
//!    `management/configuration-api/index.mdx` (Issue Bot Token; "Required scopes: -", the sample
//!    still sends the agent's Bearer token, as we do while we have one; without it, e.g. after the
//!    refresh token was revoked, the call goes out without `Authorization`, as working
//!    third-party clients send it [S], so the bot keeps answering). The answer's field is **`token`** [S]
//!    (third-party clients read `data.token`; the docs' sample response is not in the repo): we
//!    read `token`, else `access_token`. "To call the API as a bot, you need to use the bot token"
//!    (v3.6; `X-Author-Id` is gone) [C] `messaging/agent-chat-api/v3.6/index.mdx`.
//! 5. **Data centres.** OAuth tokens start with `dal:` or `fra:`; with a `fra` token send
//!    `X-Region: fra`; a `misdirected_request` error names the right region in `error.data.region`
//!    [C] `messaging/agent-chat-api/index.mdx` (Data centers); the Go SDK splits the token at `:`
//!    for the region [C] (`accounts-service.go`). Every API call here sends `X-Region` for a
//!    non-`dal` prefix and retries once with the region a `misdirected_request` names.
//! 6. **Customer Chat API.** `POST {api}/v3.6/customer/action/<action>?organization_id=<org>`
//!    (the query parameter on every call), `Authorization: Bearer <customer token>` [C]
//!    `messaging/customer-chat-api/index.mdx` (Methods). `start_chat {chat?: {access?: {group_ids},
//!    properties?, thread?: {events?}}, active?, continuous?}` -> `{chat_id, thread_id,
//!    event_ids?}`; `continuous: true` "starts the chat as continuous (online group is not
//!    required)". `send_event {chat_id, event, attach_to_last_thread?}` -> `{event_id}`; on an
//!    inactive chat it fails unless `attach_to_last_thread` is true. `deactivate_chat {id}` -> `{}`
//!    (same file). That `access.group_ids` routes the chat to the group is **[U]** (the docs say
//!    "the chat access to set"). Message text is limited to 16 KB [C]
//!    (`messaging/agent-chat-api/data-structures`); longer text is cut.
//! 7. **Agent Chat API.** `POST {api}/v3.6/agent/action/<action>` [C]
//!    `messaging/agent-chat-api/v3.6/index.mdx`: `transfer_chat {id, target: {type: "group", ids},
//!    ignore_agents_availability?, ignore_requester_presence?}` (the chat must be active; with
//!    `ignore_agents_availability` the chat is queued instead of failing when nobody is free);
//!    `send_event {chat_id, event, attach_to_last_thread?}` (the author must be in the chat);
//!    `deactivate_chat {id, ignore_requester_presence?}`; `list_chats {limit}` (the probe).
//! 8. **Errors.** `{"error": {"type", "message", "data"?}}` with types `authentication` (invalid
//!    or expired token), `authorization`, `too_many_requests`, `internal`, `service_unavailable`,
//!    `request_timeout`, `chat_inactive`, `validation`, `misdirected_request`, … [C]
//!    `messaging/customer-chat-api/index.mdx` (Errors) and `src/constant/index.js` (ERRORS). Which
//!    HTTP status goes with each type is not documented **[U]**: both the status and the type are
//!    read ([`classify`]).
//! 9. **Webhooks.** Envelope `{webhook_id, secret_key, action, organization_id, payload,
//!    additional_data}`; the only authentication is the registered `secret_key` in the body [C]
//!    `management/webhooks/v3.6/index.mdx`; `license_id` instead of `organization_id` in older
//!    payloads [C] (`lc-sdk-go` `webhooks/testdata/*.json`). `incoming_event` payload `{chat_id,
//!    thread_id, event: {id, custom_id?, type, text, author_id, created_at, visibility}}` [C]
//!    (`lc-sdk-go` `incoming_event.json`; older payloads say `recipients` instead of
//!    `visibility`); `custom_id` is echoed back [C] (same sample). `incoming_chat` payload `{chat:
//!    {id, users: [{id, type: "customer"|"agent", email?}], thread: {id, events: […]}, access}}`
//!    [C] (`incoming_chat.json`, webhooks page); `chat_deactivated` payload `{chat_id, thread_id,
//!    user_id?}` [C]. File events carry `name` and `url` [C]
//!    (`messaging/agent-chat-api/v3.6/data-structures`). Delivery: answer 200 within ~10 s, up to
//!    3 retries within ~1 minute (`PROTOCOLS.md` §3.4, §10). Whether `webhook_id` names the
//!    registration or the delivery is **[U]**: the dedupe key leaves it out.
//! 10. **Agent ids.** LiveChat agents are identified by their login e-mail (`smith@example.com`),
//!     customers by a UUID, bots by 32 hex digits [C] (examples throughout the Agent Chat API and
//!     Configuration API pages). Telling an agent's message from the customer's by this shape
//!     ([`api::LivechatClient::is_agent`]) is **[U]** as a rule.
//!
//! Further **[U]** choices: `custom_id` values are `baton_` + 24 hex digits (the length limit of
//! `custom_id` is not documented); a relayed user message is sent with
//! `attach_to_last_thread: true` so a message racing the agent's close lands in the archive
//! instead of failing; a retried `open` after a crash between `start_chat` and its record may
//! start a second chat (LiveChat has no idempotency key; the same holds for SalesIQ); events with
//! `visibility: "agents"` (private notes), `system_message`/`system` and forms are parsed as
//! `Other`, never relayed to the user; a handoff inside a LiveChat chat first leaves a note for
//! the agents (`visibility: "agents"`) with the reason and question, then transfers with
//! `ignore_agents_availability` and `ignore_requester_presence` set.

pub mod api;
pub mod oauth;
pub mod webhook;

pub use api::{LivechatClient, LivechatDesk};
pub use oauth::{authorize_url, exchange_code, LivechatAuth};
pub use webhook::{parse, verify_secret, Notification, WebhookEvent};

use crate::outbound::{quote, read_limited, retry_after_ms, status_error, transport_error, Reply, MAX_RESPONSE_BYTES};
use baton_core::model::Secret;
use baton_core::ports::DeliveryError;
use serde_json::Value;
use std::time::Duration;

/// The API version in every Chat and Configuration API path.
pub const API_VERSION: &str = "v3.6";
/// Prefix of every `custom_id` the hub sets, so echoes of its own events are recognised.
pub const CUSTOM_ID_PREFIX: &str = "baton_";
/// Longest message text LiveChat takes (16 KB).
pub const MAX_TEXT_BYTES: usize = 16 * 1024;

/// A configured base URL without its trailing `/`; only http(s) URLs are accepted.
pub(crate) fn base_url<'a>(value: &'a str, field: &str, agent: &str) -> Result<&'a str, DeliveryError> {
    let base = value.trim().trim_end_matches('/');
    match reqwest::Url::parse(base) {
        Ok(u) if u.scheme() == "http" || u.scheme() == "https" => Ok(base),
        _ => Err(DeliveryError::permanent(format!("agent {agent}: {field} must be an http:// or https:// URL"))),
    }
}

/// `s` percent-encoded for a query string (unreserved characters stay).
pub(crate) use baton_core::net::encode_unreserved as encode;

pub(crate) use crate::records::hash;

/// The `custom_id` for an event the hub sends under `idempotency_key`.
pub fn custom_id(kind: &str, idempotency_key: &str) -> String {
    format!("{CUSTOM_ID_PREFIX}{}", hash(&[kind, idempotency_key], 24))
}

/// `s` cut to at most `max` bytes on a character boundary, with `…` when cut.
pub(crate) fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The data centre of an OAuth token (`fra` for `fra:…`) when it is not the default `dal`.
pub fn token_region(token: &str) -> Option<&str> {
    let (prefix, _) = token.split_once(':')?;
    let valid = (2..=8).contains(&prefix.len()) && prefix.bytes().all(|b| b.is_ascii_lowercase());
    (valid && prefix != "dal").then_some(prefix)
}

/// How a LiveChat API answer failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The token was not accepted (`authentication`, HTTP 401): a cached one may be renewed.
    Token(String),
    /// `misdirected_request`: the call belongs to this data centre.
    Misdirected(String),
    Other(DeliveryError),
}

/// `type`, `message` and `data.region` of a LiveChat error body.
pub(crate) struct ApiError {
    pub kind: Option<String>,
    pub message: Option<String>,
    pub region: Option<String>,
}

pub(crate) fn api_error(json: &Value) -> Option<ApiError> {
    let text =
        |v: Option<&Value>| v.and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty()).map(str::to_string);
    match json.get("error")? {
        Value::Object(e) => Some(ApiError {
            kind: text(e.get("type")),
            message: text(e.get("message")),
            region: text(e.get("data").and_then(|d| d.get("region"))),
        }),
        Value::String(s) if !s.trim().is_empty() => Some(ApiError {
            kind: Some(s.trim().to_string()),
            message: text(json.get("error_description")).or_else(|| text(json.get("message"))),
            region: None,
        }),
        _ => None,
    }
}

/// `: type: message` for our error messages (LiveChat's words quoted, bounded).
pub(crate) fn detail(e: &ApiError) -> String {
    match (&e.kind, &e.message) {
        (Some(k), Some(m)) => format!(": {}: {}", quote(k), quote(m)),
        (Some(k), None) => format!(": {}", quote(k)),
        (None, Some(m)) => format!(": {}", quote(m)),
        (None, None) => String::new(),
    }
}

/// Map a Chat or Configuration API answer to the outcome of the call: 2xx without an error is
/// success; `too_many_requests`/429 and `internal`/`service_unavailable`/`request_timeout`/5xx
/// are retried (honouring `Retry-After`); `authentication`/401 is a token problem;
/// `authorization`/403 is `Unauthorized`; anything else is permanent and quotes LiveChat.
pub(crate) fn classify(reply: &Reply) -> Result<Value, Failure> {
    let json: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    let error = api_error(&json);
    let status = reply.status;
    let Some(error) = error else {
        return match status {
            200..=299 => Ok(json),
            401 => Err(Failure::Token(" (HTTP 401)".to_string())),
            _ => Err(Failure::Other(status_error(reply, ""))),
        };
    };
    let detail = detail(&error);
    let message = format!("{} answered HTTP {status}{detail}", reply.what);
    let retry_after_ms = retry_after_ms(reply.retry_after.as_deref());
    match error.kind.as_deref() {
        Some("too_many_requests") => Err(Failure::Other(DeliveryError::Retryable { message, retry_after_ms })),
        Some("misdirected_request") if error.region.as_deref().and_then(valid_region).is_some() => {
            Err(Failure::Misdirected(error.region.unwrap_or_default()))
        }
        Some("authentication") => Err(Failure::Token(format!(" (HTTP {status}{detail})"))),
        Some("authorization") => Err(Failure::Other(DeliveryError::Unauthorized { message })),
        Some("internal" | "service_unavailable" | "request_timeout") => {
            Err(Failure::Other(DeliveryError::Retryable { message, retry_after_ms }))
        }
        _ => match status {
            401 => Err(Failure::Token(format!(" (HTTP 401{detail})"))),
            403 => Err(Failure::Other(DeliveryError::Unauthorized { message })),
            429 | 500..=599 => Err(Failure::Other(DeliveryError::Retryable { message, retry_after_ms })),
            _ => Err(Failure::Other(DeliveryError::permanent(message))),
        },
    }
}

fn valid_region(r: &str) -> Option<&str> {
    ((2..=8).contains(&r.len()) && r.bytes().all(|b| b.is_ascii_lowercase())).then_some(r)
}

/// Whether a failed call reported LiveChat's `chat_inactive` (the chat is closed already).
pub(crate) fn is_chat_inactive(e: &DeliveryError) -> bool {
    matches!(e, DeliveryError::Permanent { message } if message.contains("chat_inactive"))
}

/// One JSON POST with a Bearer token (none for `issue_bot_token` without an agent token) and
/// `X-Region` when the token or a `misdirected_request` names another data centre; only
/// transport failures are errors here.
pub(crate) async fn post_json(
    http: &reqwest::Client,
    timeout: Duration,
    url: &str,
    what: &str,
    token: Option<&Secret>,
    region: Option<&str>,
    body: &Value,
) -> Result<Reply, DeliveryError> {
    let mut req = http.post(url).timeout(timeout).header(reqwest::header::ACCEPT, "application/json").json(body);
    if let Some(token) = token {
        let mut auth = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            .map_err(|_| DeliveryError::permanent(format!("{what}: the access token is not a valid header value")))?;
        auth.set_sensitive(true);
        req = req.header(reqwest::header::AUTHORIZATION, auth);
    }
    if let Some(region) = region.or_else(|| token.and_then(|t| token_region(t.expose()))) {
        req = req.header("X-Region", region);
    }
    let resp = req.send().await.map_err(|e| transport_error(what, timeout, e))?;
    let status = resp.status().as_u16();
    let retry_after =
        resp.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_string);
    let body = read_limited(resp, MAX_RESPONSE_BYTES).await;
    tracing::debug!(%what, status, "LiveChat answered");
    Ok(Reply { status, retry_after, body, what: what.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reply(status: u16, body: Value) -> Reply {
        Reply { status, retry_after: None, body: body.to_string().into_bytes(), what: "POST http://h/x".into() }
    }

    fn other(r: Result<Value, Failure>) -> DeliveryError {
        match r {
            Err(Failure::Other(e)) => e,
            r => panic!("expected another failure, got {r:?}"),
        }
    }

    #[test]
    fn answers_are_classified() {
        assert_eq!(classify(&reply(200, json!({"chat_id": "C1"}))).unwrap()["chat_id"], "C1");
        assert_eq!(classify(&reply(200, Value::Null)).unwrap(), Value::Null);
        let e = |t: &str| json!({"error": {"type": t, "message": "m"}});
        assert!(matches!(classify(&reply(401, e("authentication"))), Err(Failure::Token(_))));
        assert!(matches!(classify(&reply(400, e("authentication"))), Err(Failure::Token(_))));
        assert!(matches!(classify(&reply(401, json!({}))), Err(Failure::Token(_))));
        assert!(matches!(other(classify(&reply(403, e("authorization")))), DeliveryError::Unauthorized { .. }));
        assert!(matches!(other(classify(&reply(403, json!({})))), DeliveryError::Unauthorized { .. }));
        assert!(matches!(other(classify(&reply(400, e("too_many_requests")))), DeliveryError::Retryable { .. }));
        assert!(matches!(other(classify(&reply(400, e("service_unavailable")))), DeliveryError::Retryable { .. }));
        for s in [429, 500, 502, 503] {
            assert!(matches!(other(classify(&reply(s, json!({})))), DeliveryError::Retryable { .. }), "{s}");
        }
        let mut r = reply(429, e("too_many_requests"));
        r.retry_after = Some("3".into());
        assert!(matches!(other(classify(&r)), DeliveryError::Retryable { retry_after_ms: Some(3000), .. }));
        let m = json!({"error": {"type": "misdirected_request", "message": "Wrong region", "data": {"region": "fra"}}});
        assert!(matches!(classify(&reply(421, m)), Err(Failure::Misdirected(r)) if r == "fra"));
        let long = json!({"error": {"type": "validation", "message": "x".repeat(500)}});
        let DeliveryError::Permanent { message } = other(classify(&reply(400, long))) else { panic!() };
        assert!(message.starts_with("POST http://h/x answered HTTP 400: validation: xxx") && message.ends_with('…'));
        let inactive = other(classify(&reply(
            400,
            json!({"error": {"type": "chat_inactive", "message": "No active chat thread"}}),
        )));
        assert!(is_chat_inactive(&inactive));
    }

    #[test]
    fn regions_and_helpers() {
        assert_eq!(token_region("fra:abc"), Some("fra"));
        assert_eq!(token_region("dal:abc"), None);
        assert_eq!(token_region("abc"), None);
        assert_eq!(encode("a b/ü"), "a%20b%2F%C3%BC");
        assert!(custom_id("say", "k").starts_with(CUSTOM_ID_PREFIX));
        assert_eq!(custom_id("say", "k").len(), CUSTOM_ID_PREFIX.len() + 24);
        assert_ne!(custom_id("say", "k"), custom_id("post", "k"));
        let c = cut(&"é".repeat(100), 11);
        assert!(c.len() <= 11 && c.ends_with('…'));
        assert_eq!(base_url(" https://api.livechatinc.com/ ", "f", "a").unwrap(), "https://api.livechatinc.com");
        assert!(base_url("ftp://x", "f", "a").is_err());
    }
}
