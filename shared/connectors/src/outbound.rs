//! Outbound JSON POSTs shared by the connectors: one pooled client, a per-request timeout,
//! no redirects, Standard Webhooks signatures and Basic credentials when configured, bounded
//! response reading, and errors that never show credentials.

use crate::standard_webhooks::{SigningSecret, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP};
use baton_core::ports::DeliveryError;
use serde_json::Value;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Response bodies are read up to this size unless a connector needs more.
pub(crate) const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// What came back from one POST.
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: Vec<u8>,
    /// `POST scheme://host/path`, for messages.
    pub what: String,
}

#[derive(Debug, Clone)]
pub struct Poster {
    client: reqwest::Client,
    timeout: Duration,
}

/// The HTTP client type every connector (and brain) shares.
pub type HttpClient = reqwest::Client;

/// Which hosts outbound calls may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Targets {
    /// Only public addresses: names that resolve to loopback, private or link-local
    /// addresses are refused, so a configured URL cannot reach the hub's own network.
    PublicOnly,
    /// Any address, for a hub on one machine talking to desks and test servers beside it.
    Any,
}

/// The HTTP client every connector shares (one connection pool, one TLS configuration per
/// process): `timeout` per request, no redirects (a 3xx is a failure, as Standard Webhooks
/// prescribes). Panics only if the TLS backend cannot be initialised, like `reqwest::Client::new`.
pub fn http_client(timeout: Duration, targets: Targets) -> reqwest::Client {
    let builder = reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("baton/", env!("CARGO_PKG_VERSION")));
    let builder = match targets {
        Targets::PublicOnly => builder.dns_resolver(std::sync::Arc::new(PublicOnlyResolver)),
        Targets::Any => builder,
    };
    builder.build().expect("HTTP client with rustls can be built")
}

/// Resolves with the system resolver and keeps only public addresses. Checking the addresses
/// actually connected to (not the name) also stops a name that is re-pointed after a check.
/// IP literals never reach a resolver: `Agent::non_public_targets` covers those.
struct PublicOnlyResolver;

impl reqwest::dns::Resolve for PublicOnlyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<_> = found.into_iter().filter(|a| baton_core::net::is_public(a.ip())).collect();
            if public.is_empty() {
                return Err(Box::new(NonPublicTarget { host }) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A host that resolved only to addresses outbound calls may not reach.
#[derive(Debug)]
pub struct NonPublicTarget {
    pub host: String,
}

impl std::fmt::Display for NonPublicTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} resolves only to loopback, private or link-local addresses, which this hub does not call",
            self.host
        )
    }
}

impl std::error::Error for NonPublicTarget {}

fn refused_target(err: &reqwest::Error) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        if s.is::<NonPublicTarget>() {
            return true;
        }
        source = s.source();
    }
    false
}

impl Poster {
    pub fn new(timeout: Duration) -> Self {
        Poster { client: http_client(timeout, Targets::Any), timeout }
    }

    pub fn from_client(client: reqwest::Client, timeout: Duration) -> Self {
        Poster { client, timeout }
    }

    /// POST `body` as JSON with `webhook-id: msg_id` (signed when `secret` is given); only
    /// transport failures are errors here, every status is returned.
    pub async fn post_json(
        &self,
        url: &str,
        body: &Value,
        msg_id: &str,
        secret: Option<&SigningSecret>,
        basic: Option<(&str, Option<&str>)>,
    ) -> Result<Reply, DeliveryError> {
        self.send(url, body, |req, bytes| {
            let mut req = req.header(HEADER_ID, msg_id);
            if let Some(secret) = secret {
                let ts = now_ms() / 1000;
                req = req
                    .header(HEADER_TIMESTAMP, ts.to_string())
                    .header(HEADER_SIGNATURE, secret.sign(msg_id, ts, bytes));
            }
            if let Some((user, password)) = basic {
                req = req.basic_auth(user, password);
            }
            req
        })
        .await
    }

    /// POST `body` as JSON with the given extra headers (credentials of APIs that are not
    /// Standard Webhooks receivers); only transport failures are errors here.
    pub async fn post_json_with_headers(
        &self,
        url: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> Result<Reply, DeliveryError> {
        self.send(url, body, |mut req, _| {
            for (name, value) in headers {
                req = req.header(*name, *value);
            }
            req
        })
        .await
    }

    async fn send(
        &self,
        url: &str,
        body: &Value,
        decorate: impl FnOnce(reqwest::RequestBuilder, &[u8]) -> reqwest::RequestBuilder,
    ) -> Result<Reply, DeliveryError> {
        // Parsed once: for the message and for the request (each parse was a few percent of
        // the hub's CPU under load).
        let parsed = reqwest::Url::parse(url);
        let what = format!("POST {}", parsed.as_ref().map_or_else(|_| "<invalid url>".into(), redact));
        let parsed = parsed.map_err(|e| DeliveryError::permanent(format!("{what}: request cannot be built: {e}")))?;
        let bytes = serde_json::to_vec(body).map_err(|e| DeliveryError::permanent(format!("{what}: {e}")))?;
        let req =
            self.client.post(parsed).timeout(self.timeout).header(reqwest::header::CONTENT_TYPE, "application/json");
        let req = decorate(req, &bytes);
        let resp = req.body(bytes).send().await.map_err(|e| transport_error(&what, self.timeout, e))?;
        let status = resp.status().as_u16();
        let retry_after =
            resp.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_string);
        let body = read_limited(resp, MAX_RESPONSE_BYTES).await;
        tracing::debug!(%what, status, "answered");
        Ok(Reply { status, retry_after, body, what })
    }
}

/// The usual meaning of a non-2xx status: 401/403 credentials, 429/5xx retry
/// (honouring `Retry-After`), anything else permanent.
pub fn status_error(reply: &Reply, detail: &str) -> DeliveryError {
    let message = format!("{} answered HTTP {}{detail}", reply.what, reply.status);
    match reply.status {
        401 | 403 => DeliveryError::Unauthorized { message },
        429 | 500..=599 => {
            DeliveryError::Retryable { message, retry_after_ms: retry_after_ms(reply.retry_after.as_deref()) }
        }
        _ => DeliveryError::permanent(message),
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// How much of a provider's error message is quoted in ours.
pub(crate) const MAX_QUOTED_CHARS: usize = 200;

/// `s` on one line, at most [`MAX_QUOTED_CHARS`] characters (a provider's message in ours).
pub(crate) fn quote(s: &str) -> String {
    let mut out: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).take(MAX_QUOTED_CHARS).collect();
    if s.chars().count() > MAX_QUOTED_CHARS {
        out.push('…');
    }
    out
}

/// `scheme://host[:port]/path` only: user info and query strings may hold credentials.
pub fn redact_url(url: &str) -> String {
    reqwest::Url::parse(url).map_or_else(|_| "<invalid url>".into(), |u| redact(&u))
}

fn redact(u: &reqwest::Url) -> String {
    let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
    format!("{}://{}{}{}", u.scheme(), u.host_str().unwrap_or(""), port, u.path())
}

/// A failure without an HTTP answer: timeouts and connection failures are worth retrying.
/// The URL is never part of the message (it may hold credentials, like Telegram's token).
pub(crate) fn transport_error(what: &str, timeout: Duration, err: reqwest::Error) -> DeliveryError {
    if err.is_timeout() {
        return DeliveryError::retryable(format!("{what}: no answer within {} ms", timeout.as_millis()));
    }
    if err.is_builder() {
        return DeliveryError::permanent(format!("{what}: request cannot be built: {}", error_chain(err)));
    }
    // Retrying cannot make the address public: the configuration must change.
    if refused_target(&err) {
        return DeliveryError::permanent(format!("{what}: refused: {}", error_chain(err)));
    }
    let kind = if err.is_connect() { "connection failed" } else { "request failed" };
    DeliveryError::retryable(format!("{what}: {kind}: {}", error_chain(err)))
}

/// The error and its sources, without the URL (it may carry user info).
fn error_chain(err: reqwest::Error) -> String {
    let err = err.without_url();
    let mut out = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// The response body, at most `max` bytes.
pub(crate) async fn read_limited(mut resp: reqwest::Response, max: usize) -> Vec<u8> {
    let mut buf = Vec::new();
    // A body that cannot be read after the status arrived is treated as empty.
    while let Ok(Some(chunk)) = resp.chunk().await {
        let room = max - buf.len();
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if buf.len() >= max {
            break;
        }
    }
    buf
}

/// `Retry-After` in seconds; the HTTP-date form is ignored.
pub fn retry_after_ms(value: Option<&str>) -> Option<u64> {
    value?.trim().parse::<u64>().ok().map(|s| s.saturating_mul(1000))
}
