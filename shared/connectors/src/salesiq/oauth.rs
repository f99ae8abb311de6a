//! Zoho Accounts access tokens for the SalesIQ REST API.
//!
//! One access token per agent (and OAuth client) lives in the `KeyValue` store, so every process
//! and every Lambda invocation shares it instead of refreshing on its own: Zoho limits how many
//! access tokens a refresh token may mint (the oldest are deleted, and bursts are refused with
//! "Access Denied"). The cached token is dropped ~5 minutes before it expires; one process at a
//! time refreshes it, holding a short lease taken with `put_if_absent`, while the others poll the
//! cache for a few seconds.
//!
//! A refresh that Zoho refuses (`invalid_code`, `invalid_client`, ... with HTTP 200, or any 4xx)
//! means the refresh token was revoked or does not belong to the client: that is recorded for
//! five minutes, so the accounts server is not asked again on every event, and reported as
//! `Unauthorized` with a message saying to re-authorize. The records are named after the agent
//! and a fingerprint of the client id and credentials: changing the credentials in the
//! configuration starts afresh at once (no stale token, no stale failure).

use super::{base_url, quote, read_limited, transport_error};
use crate::outbound::{redact_url, retry_after_ms};
use baton_core::agent::SalesiqConfig;
use baton_core::model::{Millis, Secret};
use baton_core::ports::{Clock, DeliveryError, KeyValue, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// Token endpoint on the accounts server.
pub const TOKEN_PATH: &str = "/oauth/v2/token";
/// A cached token is dropped this long before it expires (at most half its lifetime).
pub const REFRESH_MARGIN_MS: i64 = 5 * 60 * 1000;
/// How long one process may hold the refresh lease.
pub const LEASE_MS: i64 = 30_000;
/// How long a refused refresh token is not tried again.
pub const FAILURE_MS: i64 = 5 * 60 * 1000;
/// How long after Zoho's "Access Denied" (too many refreshes) we wait before the next refresh.
pub const THROTTLE_MS: i64 = 60_000;
/// A process without the lease polls the cache this often, this many times (~3 s).
const WAIT_STEP: Duration = Duration::from_millis(200);
const WAIT_POLLS: u32 = 15;
/// Lifetime assumed when the answer has none (Zoho's access tokens live one hour).
const DEFAULT_EXPIRES_IN_MS: i64 = 3_600_000;

/// Access tokens per agent; see the module docs.
pub struct ZohoAuth {
    http: reqwest::Client,
    timeout: Duration,
    kv: Arc<dyn KeyValue>,
    clock: Arc<dyn Clock>,
}

/// A token and whether this call obtained it by a refresh (a 401 for a fresh token is not
/// cured by refreshing again).
pub(crate) struct Token {
    pub secret: Secret,
    pub fresh: bool,
}

/// Names of the records of one agent's OAuth client: agent id plus a fingerprint of the client
/// id and its credentials, so a re-authorization (new refresh token, e.g. with more scopes) or a
/// changed secret never uses a token, a lease or a failure of the previous credentials.
struct Names {
    token: String,
    lease: String,
    failure: String,
}

impl Names {
    fn of(agent_id: &str, cfg: &SalesiqConfig) -> Names {
        let client = credentials_fingerprint(cfg);
        Names {
            token: format!("salesiq:token:{agent_id}:{client}"),
            lease: format!("salesiq:token-lease:{agent_id}:{client}"),
            failure: format!("salesiq:token-failure:{agent_id}:{client}"),
        }
    }
}

/// A fingerprint of everything a refresh depends on. Not reversible; 64 bits are plenty to
/// tell configurations apart.
fn credentials_fingerprint(cfg: &SalesiqConfig) -> String {
    let mut h = Sha256::new();
    for part in [
        cfg.accounts_server.trim().trim_end_matches('/'),
        cfg.client_id.trim(),
        cfg.client_secret.expose(),
        cfg.refresh_token.expose(),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())[..16].to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum FailureKind {
    /// The credentials were refused: `Unauthorized` until the record expires.
    Refused,
    /// Too many refreshes: `Retryable` until the record expires.
    Throttled,
}

#[derive(Debug, Serialize, Deserialize)]
struct FailureRecord {
    kind: FailureKind,
    message: String,
}

/// Why a refresh gave no token.
#[derive(Debug, PartialEq)]
enum Refusal {
    /// The refresh token or client was refused; the message says what to do.
    Refused(String),
    Throttled(String),
    Failed(DeliveryError),
}

fn kv_error(e: StoreError) -> DeliveryError {
    DeliveryError::retryable(format!("key-value store for SalesIQ access tokens: {e}"))
}

impl ZohoAuth {
    pub fn new(http: reqwest::Client, timeout: Duration, kv: Arc<dyn KeyValue>, clock: Arc<dyn Clock>) -> Self {
        ZohoAuth { http, timeout, kv, clock }
    }

    /// A valid access token for `agent_id`'s SalesIQ account: the shared cached one, or a new
    /// one from Zoho Accounts.
    pub async fn access_token(&self, agent_id: &str, cfg: &SalesiqConfig) -> Result<Secret, DeliveryError> {
        self.token(agent_id, cfg).await.map(|t| t.secret)
    }

    /// After the API answered 401 with a token from the cache: drop it so the next call refreshes.
    pub async fn invalidate(&self, agent_id: &str, cfg: &SalesiqConfig) {
        let names = Names::of(agent_id, cfg);
        if let Err(e) = self.kv.delete(&names.token).await {
            tracing::warn!(agent = agent_id, error = %e, "cannot drop the cached SalesIQ access token");
        }
    }

    /// SalesIQ refused a token that was just issued: refreshing again will not help (scopes,
    /// data centre or portal are wrong). Recorded like a refused refresh token, so the accounts
    /// server is not asked for a new token on every event.
    pub(crate) async fn reject_fresh_token(&self, agent_id: &str, cfg: &SalesiqConfig, message: &str) {
        let names = Names::of(agent_id, cfg);
        self.invalidate(agent_id, cfg).await;
        self.record_failure(&names, FailureKind::Refused, message, FAILURE_MS).await;
    }

    pub(crate) async fn token(&self, agent_id: &str, cfg: &SalesiqConfig) -> Result<Token, DeliveryError> {
        let names = Names::of(agent_id, cfg);
        let now = self.clock.now();
        if let Some(t) = self.kv.get(&names.token, now).await.map_err(kv_error)? {
            return Ok(Token { secret: Secret(t), fresh: false });
        }
        self.check_failure(&names, now).await?;
        let owner = format!("{:016x}", rand::random::<u64>());
        let leased =
            self.kv.put_if_absent(&names.lease, &owner, now, Millis(now.0 + LEASE_MS)).await.map_err(kv_error)?;
        if leased {
            let result = self.refresh_holding_lease(agent_id, cfg, &names).await;
            if let Err(e) = self.kv.delete(&names.lease).await {
                tracing::warn!(agent = agent_id, error = %e, "cannot release the SalesIQ token lease; it expires by itself");
            }
            return result;
        }
        // Another process is refreshing: wait for its token (or its failure).
        for _ in 0..WAIT_POLLS {
            tokio::time::sleep(WAIT_STEP).await;
            let now = self.clock.now();
            if let Some(t) = self.kv.get(&names.token, now).await.map_err(kv_error)? {
                return Ok(Token { secret: Secret(t), fresh: true });
            }
            self.check_failure(&names, now).await?;
        }
        Err(DeliveryError::Retryable {
            message: format!(
                "agent {agent_id}: another process is refreshing the SalesIQ access token and has not finished yet"
            ),
            retry_after_ms: Some(1000),
        })
    }

    /// The recorded failure of these credentials, as an error.
    async fn check_failure(&self, names: &Names, now: Millis) -> Result<(), DeliveryError> {
        let Some(raw) = self.kv.get(&names.failure, now).await.map_err(kv_error)? else {
            return Ok(());
        };
        let Ok(record) = serde_json::from_str::<FailureRecord>(&raw) else {
            return Ok(());
        };
        Err(match record.kind {
            FailureKind::Refused => DeliveryError::Unauthorized {
                message: format!("{} (not retried for {} minutes)", record.message, FAILURE_MS / 60_000),
            },
            FailureKind::Throttled => {
                DeliveryError::Retryable { message: record.message, retry_after_ms: Some(THROTTLE_MS as u64) }
            }
        })
    }

    async fn record_failure(&self, names: &Names, kind: FailureKind, message: &str, ttl: i64) {
        let record = FailureRecord { kind, message: message.to_string() };
        let value = serde_json::to_string(&record).unwrap_or_default();
        let expires = Millis(self.clock.now().0 + ttl);
        if let Err(e) = self.kv.put(&names.failure, &value, expires).await {
            tracing::warn!(error = %e, "cannot record the SalesIQ token failure");
        }
    }

    async fn refresh_holding_lease(
        &self,
        agent_id: &str,
        cfg: &SalesiqConfig,
        names: &Names,
    ) -> Result<Token, DeliveryError> {
        // A refresh may have finished between our cache miss and our lease.
        if let Some(t) = self.kv.get(&names.token, self.clock.now()).await.map_err(kv_error)? {
            return Ok(Token { secret: Secret(t), fresh: true });
        }
        match self.refresh(agent_id, cfg).await {
            Ok((token, expires_in_ms)) => {
                let now = self.clock.now();
                let margin = REFRESH_MARGIN_MS.min(expires_in_ms / 2);
                let expires = Millis(now.0 + expires_in_ms - margin);
                if let Err(e) = self.kv.put(&names.token, &token, expires).await {
                    tracing::warn!(agent = agent_id, error = %e, "cannot cache the SalesIQ access token");
                }
                tracing::info!(agent = agent_id, expires_in_ms, "refreshed the SalesIQ access token");
                Ok(Token { secret: Secret(token), fresh: true })
            }
            Err(Refusal::Refused(message)) => {
                tracing::warn!(agent = agent_id, %message, "Zoho Accounts refused the SalesIQ refresh token");
                self.record_failure(names, FailureKind::Refused, &message, FAILURE_MS).await;
                Err(DeliveryError::Unauthorized { message })
            }
            Err(Refusal::Throttled(message)) => {
                self.record_failure(names, FailureKind::Throttled, &message, THROTTLE_MS).await;
                Err(DeliveryError::Retryable { message, retry_after_ms: Some(THROTTLE_MS as u64) })
            }
            Err(Refusal::Failed(e)) => Err(e),
        }
    }

    /// One refresh call: the token and its lifetime in ms.
    async fn refresh(&self, agent_id: &str, cfg: &SalesiqConfig) -> Result<(String, i64), Refusal> {
        let base = base_url(&cfg.accounts_server, "salesiq.accounts_server", agent_id).map_err(Refusal::Failed)?;
        let url = format!("{base}{TOKEN_PATH}");
        let what = format!("POST {}", redact_url(&url));
        let form = [
            ("refresh_token", cfg.refresh_token.expose()),
            ("client_id", cfg.client_id.trim()),
            ("client_secret", cfg.client_secret.expose()),
            ("grant_type", "refresh_token"),
        ];
        let resp = self
            .http
            .post(&url)
            .timeout(self.timeout)
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| Refusal::Failed(transport_error(&what, self.timeout, e)))?;
        let status = resp.status().as_u16();
        let retry_after =
            resp.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_string);
        let body = read_limited(resp, super::MAX_RESPONSE_BYTES).await;
        classify_refresh(agent_id, &what, status, retry_after.as_deref(), &body)
    }
}

/// The meaning of a Zoho Accounts answer to a refresh.
fn classify_refresh(
    agent_id: &str,
    what: &str,
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
) -> Result<(String, i64), Refusal> {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let text = |k: &str| json.as_ref().and_then(|j| j.get(k)).and_then(Value::as_str).map(str::trim);
    let error = text("error").filter(|e| !e.is_empty());
    let description = text("error_description").filter(|e| !e.is_empty());
    if matches!(status, 429 | 500..=599) {
        return Err(Refusal::Failed(DeliveryError::Retryable {
            message: format!("{what} answered HTTP {status}"),
            retry_after_ms: retry_after_ms(retry_after),
        }));
    }
    let throttled = error.is_some_and(|e| e.eq_ignore_ascii_case("access denied"))
        || description.is_some_and(|d| d.to_ascii_lowercase().contains("too many requests"));
    if throttled {
        return Err(Refusal::Throttled(format!(
            "{what}: Zoho Accounts refuses more token refreshes for now (too many requests); agent {agent_id} retries later"
        )));
    }
    if (200..300).contains(&status) && error.is_none() {
        let token = text("access_token").filter(|t| !t.is_empty());
        return match token {
            Some(t) => Ok((t.to_string(), expires_in_ms(json.as_ref()))),
            None => Err(Refusal::Failed(DeliveryError::retryable(format!(
                "{what} answered HTTP {status} without an access_token"
            )))),
        };
    }
    let detail = match (error, description) {
        (Some(e), Some(d)) => format!("error {:?} ({})", quote(e), quote(d)),
        (Some(e), None) => format!("error {:?}", quote(e)),
        (None, _) => format!("HTTP {status}"),
    };
    Err(Refusal::Refused(format!(
        "{what} refused the SalesIQ refresh token of agent {agent_id}: {detail}. The refresh token was revoked or \
         is wrong, or salesiq.client_id / client_secret / accounts_server do not belong to it: re-authorize the \
         Zoho OAuth client and store the new salesiq.refresh_token"
    )))
}

/// `expires_in_sec`, else `expires_in` (seconds; values above a day are taken as ms, as some
/// older Zoho answers give them), at least one minute.
fn expires_in_ms(json: Option<&Value>) -> i64 {
    let num =
        |k: &str| json.and_then(|j| j.get(k)).and_then(|v| v.as_i64().or_else(|| v.as_str()?.trim().parse().ok()));
    let ms = match (num("expires_in_sec"), num("expires_in")) {
        (Some(s), _) if s > 0 => s.saturating_mul(1000),
        (_, Some(v)) if v > 86_400 => v,
        (_, Some(v)) if v > 0 => v.saturating_mul(1000),
        _ => DEFAULT_EXPIRES_IN_MS,
    };
    ms.max(60_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn classify(status: u16, body: Value) -> Result<(String, i64), Refusal> {
        classify_refresh(
            "shop",
            "POST https://accounts.zoho.com/oauth/v2/token",
            status,
            None,
            body.to_string().as_bytes(),
        )
    }

    #[test]
    fn success_and_lifetimes() {
        let ok = classify(200, json!({"access_token": "1000.abc", "expires_in": 3600, "token_type": "Bearer"}));
        assert_eq!(ok, Ok(("1000.abc".into(), 3_600_000)));
        assert_eq!(
            classify(200, json!({"access_token": "t", "expires_in": 3600000, "expires_in_sec": 3600})).unwrap().1,
            3_600_000
        );
        assert_eq!(classify(200, json!({"access_token": "t", "expires_in": 3600000})).unwrap().1, 3_600_000);
        assert_eq!(classify(200, json!({"access_token": "t"})).unwrap().1, DEFAULT_EXPIRES_IN_MS);
        assert_eq!(classify(200, json!({"access_token": "t", "expires_in": 5})).unwrap().1, 60_000);
        assert!(matches!(
            classify(200, json!({"token_type": "Bearer"})),
            Err(Refusal::Failed(DeliveryError::Retryable { .. }))
        ));
    }

    #[test]
    fn refused_tokens_say_what_to_do_without_secrets() {
        for (status, body) in [
            (200, json!({"error": "invalid_code"})),
            (200, json!({"error": "invalid_client"})),
            (400, json!({"error": "invalid_grant", "error_description": "bad"})),
            (401, json!({})),
        ] {
            let Err(Refusal::Refused(m)) = classify(status, body.clone()) else { panic!("{status} {body}") };
            assert!(m.contains("re-authorize") && m.contains("agent shop"), "{m}");
        }
        let Err(Refusal::Refused(m)) = classify(200, json!({"error": "invalid_code"})) else { panic!() };
        assert!(m.contains("\"invalid_code\""), "{m}");
    }

    #[test]
    fn throttling_and_outages_are_retried() {
        assert!(matches!(
            classify(
                200,
                json!({"error": "Access Denied", "error_description": "You have made too many requests continuously. Please try again after some time.", "status": "failure"})
            ),
            Err(Refusal::Throttled(_))
        ));
        assert!(matches!(classify(400, json!({"error_description": "too many requests"})), Err(Refusal::Throttled(_))));
        for s in [429, 500, 502, 503] {
            assert!(matches!(classify(s, json!({})), Err(Refusal::Failed(DeliveryError::Retryable { .. }))), "{s}");
        }
        let r = classify_refresh("a", "w", 503, Some("7"), b"");
        assert_eq!(
            r,
            Err(Refusal::Failed(DeliveryError::Retryable {
                message: "w answered HTTP 503".into(),
                retry_after_ms: Some(7000)
            }))
        );
    }

    #[test]
    fn names_and_fingerprints() {
        let cfg: SalesiqConfig = serde_json::from_value(json!({
            "screen_name": "zylker", "app_id": "1", "client_id": "1000.CLIENT",
            "client_secret": "s3cret", "refresh_token": "1000.refresh",
        }))
        .unwrap();
        let n = Names::of("shop", &cfg);
        assert!(n.token.starts_with("salesiq:token:shop:") && !n.token.contains("CLIENT"));
        assert!(!n.token.contains("s3cret") && !n.token.contains("refresh"));
        assert_ne!(n.token, Names::of("other", &cfg).token);
        let mut changed = cfg.clone();
        changed.refresh_token = Secret("1000.new".into());
        assert_ne!(Names::of("shop", &changed).token, n.token, "new credentials, new cache");
        let mut slash = cfg.clone();
        slash.accounts_server.push('/');
        assert_eq!(Names::of("shop", &slash).failure, n.failure);
    }
}
