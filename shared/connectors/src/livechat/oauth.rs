//! LiveChat tokens: the agent's access token (from `livechat.refresh_token`), customer tokens
//! through the agent-token grant, bot tokens, and the one-time authorization-code flow.
//!
//! All of them live in the `KeyValue` store, so every process and every Lambda invocation
//! shares them. The agent's access token is refreshed by one process at a time (a short lease
//! taken with `put_if_absent`; the others poll the cache for a few seconds) and dropped 10
//! minutes before it expires: LiveChat keeps at most 25 access tokens per client and user and
//! revokes the oldest. A refresh that the accounts server refuses (revoked refresh token, wrong
//! client secret) is remembered for five minutes and reported as `Unauthorized` with a message
//! saying to re-authorize, so the accounts server is not asked again on every event.
//!
//! Each end user (conversation key) is one LiveChat customer: the `entity_id` from the first
//! grant is kept (the first one written wins when two processes race) and later grants ask for
//! a token of that customer. Customer tokens are kept until ~10 minutes before they expire
//! (8 h). Record names carry the agent id and a fingerprint of the credentials, never ids or
//! secrets as such: new credentials start afresh at once.

use super::{api_error, base_url, detail, encode, hash, post_json, API_VERSION};
use crate::outbound::{read_limited, redact_url, retry_after_ms, transport_error, Reply, MAX_RESPONSE_BYTES};
use baton_core::agent::LivechatConfig;
use baton_core::model::{Millis, Secret};
use baton_core::ports::{Clock, DeliveryError, KeyValue, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// Token endpoint on the accounts server (refresh and code exchange).
pub const TOKEN_PATH: &str = "/v2/token";
/// The agent-token grant for customer tokens.
pub const CUSTOMER_TOKEN_PATH: &str = "/v2/customer/token";
/// A cached token is dropped this long before it expires (at most half its lifetime).
pub const REFRESH_MARGIN_MS: i64 = 10 * 60 * 1000;
/// How long one process may hold the refresh lease.
pub const LEASE_MS: i64 = 30_000;
/// How long refused credentials are not tried again.
pub const FAILURE_MS: i64 = 5 * 60 * 1000;
/// How long the `entity_id` of an end user (and the fact that a customer is the hub's own) is
/// kept after its last use.
pub const CUSTOMER_RECORD_MS: i64 = 400 * 24 * 3600 * 1000;
/// How long a rotated refresh token is kept after its last use.
const ROTATED_REFRESH_MS: i64 = 400 * 24 * 3600 * 1000;
/// A process without the lease polls the cache this often, this many times (~3 s).
const WAIT_STEP: Duration = Duration::from_millis(200);
const WAIT_POLLS: u32 = 15;
/// Lifetimes assumed when an answer has none: agent and customer tokens 8 h, bot tokens 24 h.
const DEFAULT_EXPIRES_IN_MS: i64 = 28_800_000;
const DEFAULT_BOT_EXPIRES_IN_MS: i64 = 24 * 3_600_000;
/// Timeout of the code exchange (the CLI's client may have none).
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(20);

/// Agent, customer and bot tokens; see the module docs.
pub struct LivechatAuth {
    http: reqwest::Client,
    timeout: Duration,
    kv: Arc<dyn KeyValue>,
    clock: Arc<dyn Clock>,
}

/// A token and whether this call obtained it just now (a rejected fresh token is not cured by
/// asking again).
pub(crate) struct Token {
    pub secret: Secret,
    pub fresh: bool,
}

fn kv_error(e: StoreError) -> DeliveryError {
    DeliveryError::retryable(format!("key-value store for LiveChat tokens: {e}"))
}

/// Names of the agent-token records: agent id plus a fingerprint of everything a refresh
/// depends on.
struct AgentNames {
    token: String,
    lease: String,
    failure: String,
    rotated: String,
}

impl AgentNames {
    fn of(agent_id: &str, cfg: &LivechatConfig) -> AgentNames {
        let fp = hash(
            &[
                cfg.accounts_base.trim().trim_end_matches('/'),
                cfg.client_id.trim(),
                cfg.client_secret.expose(),
                cfg.refresh_token.expose(),
            ],
            16,
        );
        AgentNames {
            token: format!("livechat:token:{agent_id}:{fp}"),
            lease: format!("livechat:token-lease:{agent_id}:{fp}"),
            failure: format!("livechat:token-failure:{agent_id}:{fp}"),
            rotated: format!("livechat:refresh:{agent_id}:{fp}"),
        }
    }
}

/// Fingerprint of the organization and client customers belong to.
fn org_fingerprint(cfg: &LivechatConfig) -> String {
    hash(&[cfg.organization_id.trim(), cfg.client_id.trim(), cfg.accounts_base.trim().trim_end_matches('/')], 16)
}

fn entity_name(agent_id: &str, cfg: &LivechatConfig, customer_key: &str) -> String {
    format!("livechat:customer:{agent_id}:{}:{}", org_fingerprint(cfg), hash(&[customer_key], 32))
}

fn customer_token_name(agent_id: &str, cfg: &LivechatConfig, entity_id: &str) -> String {
    format!("livechat:customer-token:{agent_id}:{}:{}", org_fingerprint(cfg), hash(&[entity_id], 32))
}

fn own_customer_name(agent_id: &str, entity_id: &str) -> String {
    format!("livechat:own-customer:{agent_id}:{}", hash(&[entity_id.trim()], 32))
}

/// The bot's id and secret, when configured.
pub(crate) fn bot_credentials(cfg: &LivechatConfig) -> Option<(&str, &Secret)> {
    let id = cfg.bot_agent_id.as_deref().map(str::trim).filter(|b| !b.is_empty())?;
    let secret = cfg.bot_secret.as_ref().filter(|s| !s.expose().is_empty())?;
    Some((id, secret))
}

struct BotNames {
    token: String,
    failure: String,
}

impl BotNames {
    fn of(agent_id: &str, cfg: &LivechatConfig, bot_id: &str, secret: &Secret) -> BotNames {
        let fp = hash(
            &[
                cfg.api_base.trim().trim_end_matches('/'),
                cfg.organization_id.trim(),
                cfg.client_id.trim(),
                bot_id,
                secret.expose(),
            ],
            16,
        );
        BotNames {
            token: format!("livechat:bot-token:{agent_id}:{fp}"),
            failure: format!("livechat:bot-failure:{agent_id}:{fp}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum FailureKind {
    Unauthorized,
    Permanent,
}

#[derive(Debug, Serialize, Deserialize)]
struct FailureRecord {
    kind: FailureKind,
    message: String,
}

/// A successful token answer: the token, its lifetime and the rest of the answer.
struct Granted {
    token: String,
    expires_in_ms: i64,
    json: Value,
}

impl LivechatAuth {
    pub fn new(http: reqwest::Client, timeout: Duration, kv: Arc<dyn KeyValue>, clock: Arc<dyn Clock>) -> Self {
        LivechatAuth { http, timeout, kv, clock }
    }

    fn now(&self) -> Millis {
        self.clock.now()
    }

    // ---------------------------------------------------------------------------------------
    // Agent access token

    /// A valid access token of the agent whose refresh token is configured: the shared cached
    /// one, or a new one from the accounts server.
    pub async fn agent_token(&self, agent_id: &str, cfg: &LivechatConfig) -> Result<Secret, DeliveryError> {
        self.agent(agent_id, cfg).await.map(|t| t.secret)
    }

    /// After the API answered `authentication` for a cached token: drop it.
    pub(crate) async fn invalidate_agent(&self, agent_id: &str, cfg: &LivechatConfig) {
        if let Err(e) = self.kv.delete(&AgentNames::of(agent_id, cfg).token).await {
            tracing::warn!(agent = agent_id, error = %e, "cannot drop the cached LiveChat access token");
        }
    }

    /// LiveChat refused a token that was just issued (missing scopes, wrong organization):
    /// refreshing again will not help; remembered like a refused refresh token.
    pub(crate) async fn reject_fresh_agent_token(&self, agent_id: &str, cfg: &LivechatConfig, message: &str) {
        let names = AgentNames::of(agent_id, cfg);
        self.invalidate_agent(agent_id, cfg).await;
        self.record_failure(&names.failure, FailureKind::Unauthorized, message).await;
    }

    pub(crate) async fn agent(&self, agent_id: &str, cfg: &LivechatConfig) -> Result<Token, DeliveryError> {
        let names = AgentNames::of(agent_id, cfg);
        let now = self.now();
        if let Some(t) = self.kv.get(&names.token, now).await.map_err(kv_error)? {
            return Ok(Token { secret: Secret(t), fresh: false });
        }
        self.check_failure(&names.failure, now).await?;
        let owner = format!("{:016x}", rand::random::<u64>());
        let leased =
            self.kv.put_if_absent(&names.lease, &owner, now, Millis(now.0 + LEASE_MS)).await.map_err(kv_error)?;
        if leased {
            let result = self.refresh_holding_lease(agent_id, cfg, &names).await;
            if let Err(e) = self.kv.delete(&names.lease).await {
                tracing::warn!(agent = agent_id, error = %e, "cannot release the LiveChat token lease; it expires by itself");
            }
            return result;
        }
        // Another process is refreshing: wait for its token (or its failure).
        for _ in 0..WAIT_POLLS {
            tokio::time::sleep(WAIT_STEP).await;
            let now = self.now();
            if let Some(t) = self.kv.get(&names.token, now).await.map_err(kv_error)? {
                return Ok(Token { secret: Secret(t), fresh: true });
            }
            self.check_failure(&names.failure, now).await?;
        }
        Err(DeliveryError::Retryable {
            message: format!(
                "agent {agent_id}: another process is refreshing the LiveChat access token and has not finished yet"
            ),
            retry_after_ms: Some(1000),
        })
    }

    async fn refresh_holding_lease(
        &self,
        agent_id: &str,
        cfg: &LivechatConfig,
        names: &AgentNames,
    ) -> Result<Token, DeliveryError> {
        // A refresh may have finished between our cache miss and our lease.
        if let Some(t) = self.kv.get(&names.token, self.now()).await.map_err(kv_error)? {
            return Ok(Token { secret: Secret(t), fresh: true });
        }
        let rotated = self.kv.get(&names.rotated, self.now()).await.map_err(kv_error)?;
        let refresh_token = rotated.clone().unwrap_or_else(|| cfg.refresh_token.expose().to_string());
        let base = base_url(&cfg.accounts_base, "livechat.accounts_base", agent_id)?;
        let url = format!("{base}{TOKEN_PATH}");
        let what = format!("POST {}", redact_url(&url));
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.as_str()),
            ("client_id", cfg.client_id.trim()),
            ("client_secret", cfg.client_secret.expose()),
        ];
        let resp = self
            .http
            .post(&url)
            .timeout(self.timeout)
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| transport_error(&what, self.timeout, e))?;
        let reply = reply_of(resp, &what).await;
        match classify_token(&reply, "access_token") {
            Ok(granted) => {
                let now = self.now();
                let expires = Millis(now.0 + granted.expires_in_ms - REFRESH_MARGIN_MS.min(granted.expires_in_ms / 2));
                if let Err(e) = self.kv.put(&names.token, &granted.token, expires).await {
                    tracing::warn!(agent = agent_id, error = %e, "cannot cache the LiveChat access token");
                }
                let returned = granted.json.get("refresh_token").and_then(Value::as_str).map(str::trim);
                if let Some(new) = returned.filter(|n| !n.is_empty() && *n != refresh_token) {
                    // Server-side apps' refresh tokens do not rotate; should one ever come back
                    // changed, keep it: the configured one may be dead from now on.
                    tracing::warn!(agent = agent_id, "LiveChat returned a new refresh token; it is kept in the store");
                    if let Err(e) = self.kv.put(&names.rotated, new, Millis(now.0 + ROTATED_REFRESH_MS)).await {
                        tracing::warn!(agent = agent_id, error = %e, "cannot keep the rotated LiveChat refresh token");
                    }
                } else if rotated.is_some() {
                    let _ = self.kv.put(&names.rotated, &refresh_token, Millis(now.0 + ROTATED_REFRESH_MS)).await;
                }
                tracing::info!(
                    agent = agent_id,
                    expires_in_ms = granted.expires_in_ms,
                    "refreshed the LiveChat access token"
                );
                Ok(Token { secret: Secret(granted.token), fresh: true })
            }
            Err(TokenFailure::Refused(detail)) => {
                let message = format!(
                    "{what} refused the LiveChat refresh token of agent {agent_id}{detail}. The refresh token was \
                     revoked or has expired, or livechat.client_id / client_secret / accounts_base do not belong to \
                     it: run `baton desks livechat authorize {agent_id}` again"
                );
                tracing::warn!(agent = agent_id, %message, "LiveChat refused the refresh token");
                self.record_failure(&names.failure, FailureKind::Unauthorized, &message).await;
                Err(DeliveryError::Unauthorized { message })
            }
            Err(TokenFailure::Failed(e)) => Err(e),
        }
    }

    /// The recorded failure under `name`, as an error.
    async fn check_failure(&self, name: &str, now: Millis) -> Result<(), DeliveryError> {
        let Some(raw) = self.kv.get(name, now).await.map_err(kv_error)? else {
            return Ok(());
        };
        let Ok(record) = serde_json::from_str::<FailureRecord>(&raw) else {
            return Ok(());
        };
        let message = format!("{} (not retried for {} minutes)", record.message, FAILURE_MS / 60_000);
        Err(match record.kind {
            FailureKind::Unauthorized => DeliveryError::Unauthorized { message },
            FailureKind::Permanent => DeliveryError::Permanent { message },
        })
    }

    async fn record_failure(&self, name: &str, kind: FailureKind, message: &str) {
        let value = serde_json::to_string(&FailureRecord { kind, message: message.to_string() }).unwrap_or_default();
        if let Err(e) = self.kv.put(name, &value, Millis(self.now().0 + FAILURE_MS)).await {
            tracing::warn!(error = %e, "cannot record the LiveChat token failure");
        }
    }

    // ---------------------------------------------------------------------------------------
    // Customer tokens

    /// A customer token for the end user `customer_key` (the conversation key) and the
    /// customer's `entity_id`: the same LiveChat customer every time.
    pub async fn customer_token(
        &self,
        agent_id: &str,
        cfg: &LivechatConfig,
        customer_key: &str,
    ) -> Result<(Secret, String), DeliveryError> {
        self.customer(agent_id, cfg, customer_key).await.map(|(t, e)| (t.secret, e))
    }

    pub(crate) async fn customer(
        &self,
        agent_id: &str,
        cfg: &LivechatConfig,
        customer_key: &str,
    ) -> Result<(Token, String), DeliveryError> {
        let entity_record = entity_name(agent_id, cfg, customer_key);
        let now = self.now();
        let mut known = self.kv.get(&entity_record, now).await.map_err(kv_error)?;
        if let Some(entity) = &known {
            if let Some(t) = self.kv.get(&customer_token_name(agent_id, cfg, entity), now).await.map_err(kv_error)? {
                return Ok((Token { secret: Secret(t), fresh: false }, entity.clone()));
            }
        }
        let (mut token, mut entity, mut expires_in_ms) = match self.grant(agent_id, cfg, known.as_deref()).await {
            // The end user's customer is gone (refused for that entity_id): start a new one.
            Err(DeliveryError::Permanent { message }) if known.is_some() => {
                tracing::warn!(agent = agent_id, %message, "LiveChat refused the end user's customer; creating a new one");
                if let Err(e) = self.kv.delete(&entity_record).await {
                    tracing::warn!(agent = agent_id, error = %e, "cannot drop the LiveChat customer of an end user");
                }
                known = None;
                self.grant(agent_id, cfg, None).await?
            }
            r => r?,
        };
        let keep_until = Millis(self.now().0 + CUSTOMER_RECORD_MS);
        match &known {
            Some(_) => {
                // Keep the end user's record alive while it is used.
                if let Err(e) = self.kv.put(&entity_record, &entity, keep_until).await {
                    tracing::warn!(agent = agent_id, error = %e, "cannot keep the LiveChat customer of an end user");
                }
            }
            None => {
                self.remember_own_customer(agent_id, &entity).await;
                let won =
                    self.kv.put_if_absent(&entity_record, &entity, self.now(), keep_until).await.map_err(kv_error)?;
                if !won {
                    // Another process created this end user's customer first: use that one.
                    if let Some(other) = self.kv.get(&entity_record, self.now()).await.map_err(kv_error)? {
                        if other != entity {
                            tracing::info!(agent = agent_id, "another process created the LiveChat customer first");
                            (token, entity, expires_in_ms) = self.grant(agent_id, cfg, Some(&other)).await?;
                        }
                    }
                }
            }
        }
        let expires = Millis(self.now().0 + expires_in_ms - REFRESH_MARGIN_MS.min(expires_in_ms / 2));
        if let Err(e) = self.kv.put(&customer_token_name(agent_id, cfg, &entity), &token, expires).await {
            tracing::warn!(agent = agent_id, error = %e, "cannot cache the LiveChat customer token");
        }
        Ok((Token { secret: Secret(token), fresh: true }, entity))
    }

    /// After the API answered `authentication` for a cached customer token: drop it.
    pub(crate) async fn invalidate_customer(&self, agent_id: &str, cfg: &LivechatConfig, entity_id: &str) {
        if let Err(e) = self.kv.delete(&customer_token_name(agent_id, cfg, entity_id)).await {
            tracing::warn!(agent = agent_id, error = %e, "cannot drop the cached LiveChat customer token");
        }
    }

    async fn remember_own_customer(&self, agent_id: &str, entity_id: &str) {
        let expires = Millis(self.now().0 + CUSTOMER_RECORD_MS);
        if let Err(e) = self.kv.put(&own_customer_name(agent_id, entity_id), "1", expires).await {
            tracing::warn!(agent = agent_id, error = %e, "cannot remember the hub's LiveChat customer");
        }
    }

    /// Whether `entity_id` is a customer the hub created (and acts as).
    pub(crate) async fn is_own_customer(&self, agent_id: &str, entity_id: &str) -> bool {
        match self.kv.get(&own_customer_name(agent_id, entity_id), self.now()).await {
            Ok(found) => found.is_some(),
            Err(e) => {
                tracing::warn!(agent = agent_id, error = %e, "cannot look up the hub's LiveChat customers");
                false
            }
        }
    }

    /// One agent-token grant (a 401 for a cached agent token renews it once): the customer
    /// token, its `entity_id` and lifetime.
    async fn grant(
        &self,
        agent_id: &str,
        cfg: &LivechatConfig,
        entity_id: Option<&str>,
    ) -> Result<(String, String, i64), DeliveryError> {
        let base = base_url(&cfg.accounts_base, "livechat.accounts_base", agent_id)?;
        let url = format!("{base}{CUSTOMER_TOKEN_PATH}");
        let what = format!("POST {}", redact_url(&url));
        let mut body =
            json!({"grant_type": "agent_token", "client_id": cfg.client_id.trim(), "response_type": "token"});
        if let Some(e) = entity_id {
            body["entity_id"] = json!(e);
        }
        let mut retried = false;
        loop {
            let agent_token = self.agent(agent_id, cfg).await?;
            let reply =
                post_json(&self.http, self.timeout, &url, &what, Some(&agent_token.secret), None, &body).await?;
            if reply.status == 401 {
                let d = api_error(&serde_json::from_slice(&reply.body).unwrap_or(Value::Null))
                    .map(|e| detail(&e))
                    .unwrap_or_default();
                if agent_token.fresh || retried {
                    let message = format!(
                        "{what} rejected the access token of agent {agent_id} (HTTP 401{d}): the authorizing LiveChat \
                         agent needs the customers:own scope (an administrator) and the app must be installed; \
                         fix it and run `baton desks livechat authorize {agent_id}` again"
                    );
                    self.reject_fresh_agent_token(agent_id, cfg, &message).await;
                    return Err(DeliveryError::Unauthorized { message });
                }
                tracing::info!(
                    agent = agent_id,
                    "the accounts server rejected the cached LiveChat access token; refreshing"
                );
                self.invalidate_agent(agent_id, cfg).await;
                retried = true;
                continue;
            }
            return match classify_token(&reply, "access_token") {
                Ok(granted) => {
                    let entity = granted
                        .json
                        .get("entity_id")
                        .and_then(Value::as_str)
                        .map(str::trim)
                        .filter(|e| !e.is_empty())
                        .map(str::to_string)
                        .or_else(|| entity_id.map(str::to_string))
                        .ok_or_else(|| {
                            DeliveryError::retryable(format!("{what} answered without the customer's entity_id"))
                        })?;
                    let org = granted.json.get("organization_id").and_then(Value::as_str).map(str::trim);
                    if let Some(org) = org.filter(|o| !o.is_empty() && *o != cfg.organization_id.trim()) {
                        tracing::warn!(
                            agent = agent_id,
                            organization = org,
                            "the LiveChat customer token belongs to another organization than livechat.organization_id"
                        );
                    }
                    Ok((granted.token, entity, granted.expires_in_ms))
                }
                Err(TokenFailure::Refused(d)) if reply.status == 403 => Err(DeliveryError::Unauthorized {
                    message: format!(
                        "{what} refused a customer token to agent {agent_id}{d}: the authorizing agent needs the \
                         customers:own scope"
                    ),
                }),
                Err(TokenFailure::Refused(d)) => {
                    Err(DeliveryError::permanent(format!("{what} refused a customer token to agent {agent_id}{d}")))
                }
                Err(TokenFailure::Failed(e)) => Err(e),
            };
        }
    }

    // ---------------------------------------------------------------------------------------
    // Bot tokens

    /// A token of the configured bot agent (`issue_bot_token`, valid 24 h), cached until ten
    /// minutes before it expires.
    pub async fn bot_token(&self, agent_id: &str, cfg: &LivechatConfig) -> Result<Secret, DeliveryError> {
        self.bot(agent_id, cfg).await.map(|t| t.secret)
    }

    pub(crate) async fn bot(&self, agent_id: &str, cfg: &LivechatConfig) -> Result<Token, DeliveryError> {
        let (bot_id, secret) = bot_credentials(cfg).ok_or_else(|| {
            DeliveryError::permanent(format!(
                "agent {agent_id}: livechat.bot_agent_id and livechat.bot_secret are needed to answer LiveChat chats"
            ))
        })?;
        let names = BotNames::of(agent_id, cfg, bot_id, secret);
        let now = self.now();
        if let Some(t) = self.kv.get(&names.token, now).await.map_err(kv_error)? {
            return Ok(Token { secret: Secret(t), fresh: false });
        }
        self.check_failure(&names.failure, now).await?;
        let base = base_url(&cfg.api_base, "livechat.api_base", agent_id)?;
        let url = format!("{base}/{API_VERSION}/configuration/action/issue_bot_token");
        let what = format!("POST {}", redact_url(&url));
        let body = json!({
            "bot_id": bot_id,
            "client_id": cfg.client_id.trim(),
            "bot_secret": secret.expose(),
            "organization_id": cfg.organization_id.trim(),
        });
        let mut retried = false;
        let mut region: Option<String> = None;
        loop {
            // The method needs no scope: without the agent's token (its refresh token revoked,
            // say) the bot still gets its own.
            let agent_token = match self.agent(agent_id, cfg).await {
                Ok(t) => Some(t),
                Err(e @ DeliveryError::Retryable { .. }) => return Err(e),
                Err(e) => {
                    tracing::info!(agent = agent_id, error = %e, "issuing the LiveChat bot token without the agent's token");
                    None
                }
            };
            let secret = agent_token.as_ref().map(|t| &t.secret);
            let reply = post_json(&self.http, self.timeout, &url, &what, secret, region.as_deref(), &body).await?;
            let fresh_agent = agent_token.as_ref().is_none_or(|t| t.fresh);
            let failure = match super::classify(&reply) {
                Ok(json) => {
                    let token = ["token", "access_token"]
                        .iter()
                        .find_map(|k| json.get(*k).and_then(Value::as_str))
                        .map(str::trim)
                        .filter(|t| !t.is_empty())
                        .ok_or_else(|| DeliveryError::retryable(format!("{what} answered without a token")))?;
                    let lifetime = expires_in_ms(&json, DEFAULT_BOT_EXPIRES_IN_MS);
                    let expires = Millis(self.now().0 + lifetime - REFRESH_MARGIN_MS.min(lifetime / 2));
                    if let Err(e) = self.kv.put(&names.token, token, expires).await {
                        tracing::warn!(agent = agent_id, error = %e, "cannot cache the LiveChat bot token");
                    }
                    tracing::info!(agent = agent_id, "issued a LiveChat bot token");
                    return Ok(Token { secret: Secret(token.to_string()), fresh: true });
                }
                Err(f) => f,
            };
            match failure {
                super::Failure::Misdirected(r) if region.is_none() => region = Some(r),
                super::Failure::Token(_) if !fresh_agent && !retried => {
                    self.invalidate_agent(agent_id, cfg).await;
                    retried = true;
                }
                super::Failure::Token(d) => {
                    let message = format!(
                        "{what} refused a token for bot {bot_id} of agent {agent_id}{d}: check livechat.bot_agent_id, \
                         livechat.bot_secret, client_id and organization_id"
                    );
                    self.record_failure(&names.failure, FailureKind::Unauthorized, &message).await;
                    return Err(DeliveryError::Unauthorized { message });
                }
                super::Failure::Misdirected(r) => {
                    return Err(DeliveryError::permanent(format!("{what}: wrong data centre even with X-Region {r}")));
                }
                super::Failure::Other(e) => {
                    let (kind, message) = match &e {
                        DeliveryError::Unauthorized { message } => (FailureKind::Unauthorized, message),
                        DeliveryError::Permanent { message } => (FailureKind::Permanent, message),
                        DeliveryError::Retryable { .. } => return Err(e),
                    };
                    let message = format!(
                        "{message} (bot {bot_id} of agent {agent_id}: check livechat.bot_agent_id and bot_secret)"
                    );
                    self.record_failure(&names.failure, kind, &message).await;
                    return Err(match kind {
                        FailureKind::Unauthorized => DeliveryError::Unauthorized { message },
                        FailureKind::Permanent => DeliveryError::Permanent { message },
                    });
                }
            }
        }
    }

    /// After the API answered `authentication` for a cached bot token: drop it.
    pub(crate) async fn invalidate_bot(&self, agent_id: &str, cfg: &LivechatConfig) {
        let Some((bot_id, secret)) = bot_credentials(cfg) else { return };
        if let Err(e) = self.kv.delete(&BotNames::of(agent_id, cfg, bot_id, secret).token).await {
            tracing::warn!(agent = agent_id, error = %e, "cannot drop the cached LiveChat bot token");
        }
    }

    /// LiveChat refused a bot token that was just issued: remembered for five minutes.
    pub(crate) async fn reject_fresh_bot_token(&self, agent_id: &str, cfg: &LivechatConfig, message: &str) {
        let Some((bot_id, secret)) = bot_credentials(cfg) else { return };
        let names = BotNames::of(agent_id, cfg, bot_id, secret);
        self.invalidate_bot(agent_id, cfg).await;
        self.record_failure(&names.failure, FailureKind::Unauthorized, message).await;
    }
}

/// The reply of an accounts call.
async fn reply_of(resp: reqwest::Response, what: &str) -> Reply {
    let status = resp.status().as_u16();
    let retry_after =
        resp.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_string);
    let body = read_limited(resp, MAX_RESPONSE_BYTES).await;
    tracing::debug!(%what, status, "LiveChat accounts answered");
    Reply { status, retry_after, body, what: what.to_string() }
}

/// Why a token answer gave no token.
#[derive(Debug, PartialEq)]
enum TokenFailure {
    /// The grant was refused (`: error (description)` for the message).
    Refused(String),
    Failed(DeliveryError),
}

/// The meaning of an accounts answer: `field` (the token) from a 2xx; 429/5xx retried; any
/// other status a refusal that quotes the server's error.
fn classify_token(reply: &Reply, field: &str) -> Result<Granted, TokenFailure> {
    let json: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    let error = api_error(&json);
    let status = reply.status;
    let what = &reply.what;
    if matches!(status, 429 | 500..=599) || error.as_ref().and_then(|e| e.kind.as_deref()) == Some("too_many_requests")
    {
        let d = error.as_ref().map(detail).unwrap_or_default();
        return Err(TokenFailure::Failed(DeliveryError::Retryable {
            message: format!("{what} answered HTTP {status}{d}"),
            retry_after_ms: retry_after_ms(reply.retry_after.as_deref()),
        }));
    }
    if (200..300).contains(&status) && error.is_none() {
        let token = json.get(field).and_then(Value::as_str).map(str::trim).filter(|t| !t.is_empty());
        return match token {
            Some(t) => Ok(Granted {
                token: t.to_string(),
                expires_in_ms: expires_in_ms(&json, DEFAULT_EXPIRES_IN_MS),
                json: json.clone(),
            }),
            None => Err(TokenFailure::Failed(DeliveryError::retryable(format!(
                "{what} answered HTTP {status} without {field}"
            )))),
        };
    }
    let d = error.as_ref().map(detail).unwrap_or_default();
    Err(TokenFailure::Refused(format!(" (HTTP {status}{d})")))
}

/// `expires_in` (seconds) in ms, at least one minute; `default` without one.
fn expires_in_ms(json: &Value, default: i64) -> i64 {
    let secs = json.get("expires_in").and_then(|v| v.as_i64().or_else(|| v.as_str()?.trim().parse().ok()));
    match secs {
        Some(s) if s > 0 => s.saturating_mul(1000).max(60_000),
        _ => default,
    }
}

// -------------------------------------------------------------------------------------------
// Authorization-code flow

/// The URL to open for the one-time authorization (`response_type=code`): the person signs
/// in as the agent the hub acts as; LiveChat redirects to `redirect_uri` with `code` and
/// `state`.
pub fn authorize_url(cfg_client_id: &str, accounts_base: &str, redirect_uri: &str, state: &str) -> String {
    let base = accounts_base.trim().trim_end_matches('/');
    format!(
        "{base}/?response_type=code&client_id={}&redirect_uri={}&state={}",
        encode(cfg_client_id.trim()),
        encode(redirect_uri),
        encode(state)
    )
}

/// Exchange the authorization `code` for the agent's refresh token (`POST {accounts}/v2/token`,
/// `grant_type=authorization_code`). Errors never show the code or a secret.
pub async fn exchange_code(
    http: &reqwest::Client,
    accounts_base: &str,
    client_id: &str,
    client_secret: &str,
    code: &str,
    redirect_uri: &str,
) -> Result<Secret, DeliveryError> {
    let base = base_url(accounts_base, "livechat.accounts_base", "(authorize)")?;
    let url = format!("{base}{TOKEN_PATH}");
    let what = format!("POST {}", redact_url(&url));
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.trim()),
        ("client_id", client_id.trim()),
        ("client_secret", client_secret),
        ("redirect_uri", redirect_uri),
    ];
    let resp = http
        .post(&url)
        .timeout(EXCHANGE_TIMEOUT)
        .header(reqwest::header::ACCEPT, "application/json")
        .form(&form)
        .send()
        .await
        .map_err(|e| transport_error(&what, EXCHANGE_TIMEOUT, e))?;
    let reply = reply_of(resp, &what).await;
    match classify_token(&reply, "refresh_token") {
        Ok(granted) => Ok(Secret(granted.token)),
        Err(TokenFailure::Failed(e)) => Err(e),
        Err(TokenFailure::Refused(d)) => {
            let message = format!(
                "{what} refused the authorization code{d}: it is single-use and valid for a few minutes, and \
                 redirect_uri, client_id and client_secret must match the app's Authorization block"
            );
            Err(match reply.status {
                401 | 403 => DeliveryError::Unauthorized { message },
                _ => DeliveryError::permanent(message),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, body: Value) -> Reply {
        Reply { status, retry_after: None, body: body.to_string().into_bytes(), what: "POST https://a/v2/token".into() }
    }

    #[test]
    fn token_answers() {
        let ok = classify_token(
            &reply(200, json!({"access_token": "dal:abc", "expires_in": 28800, "refresh_token": "dal:r"})),
            "access_token",
        )
        .unwrap();
        assert_eq!(ok.token, "dal:abc");
        assert_eq!(ok.expires_in_ms, 28_800_000);
        assert_eq!(
            classify_token(&reply(200, json!({"access_token": "t"})), "access_token").unwrap().expires_in_ms,
            DEFAULT_EXPIRES_IN_MS
        );
        assert_eq!(
            classify_token(&reply(200, json!({"access_token": "t", "expires_in": 5})), "access_token")
                .unwrap()
                .expires_in_ms,
            60_000
        );
        assert!(matches!(
            classify_token(&reply(200, json!({})), "access_token"),
            Err(TokenFailure::Failed(DeliveryError::Retryable { .. }))
        ));
        for s in [429, 500, 503] {
            assert!(
                matches!(
                    classify_token(&reply(s, json!({})), "access_token"),
                    Err(TokenFailure::Failed(DeliveryError::Retryable { .. }))
                ),
                "{s}"
            );
        }
        let Err(TokenFailure::Refused(d)) = classify_token(
            &reply(400, json!({"error": "invalid_grant", "error_description": "refresh token expired"})),
            "access_token",
        ) else {
            panic!()
        };
        assert_eq!(d, " (HTTP 400: invalid_grant: refresh token expired)");
        let Err(TokenFailure::Refused(d)) = classify_token(
            &reply(401, json!({"error": {"type": "authentication", "message": "Invalid token"}})),
            "access_token",
        ) else {
            panic!()
        };
        assert_eq!(d, " (HTTP 401: authentication: Invalid token)");
        // An error object in a 200 is a refusal too.
        assert!(matches!(
            classify_token(&reply(200, json!({"error": "unauthorized_client"})), "access_token"),
            Err(TokenFailure::Refused(_))
        ));
    }

    #[test]
    fn authorize_urls() {
        let url =
            authorize_url(" 9cbf3a96 ", "https://accounts.livechat.com/", "http://127.0.0.1:8788/callback", "st@te");
        assert_eq!(
            url,
            "https://accounts.livechat.com/?response_type=code&client_id=9cbf3a96&redirect_uri=http%3A%2F%2F127.0.0.1%3A8788%2Fcallback&state=st%40te"
        );
    }

    fn cfg() -> LivechatConfig {
        serde_json::from_value(json!({
            "organization_id": "org-1", "client_id": "CLIENTID", "client_secret": "s3cret",
            "refresh_token": "dal:Rtok9", "webhook_secret": "w", "bot_agent_id": "bot1", "bot_secret": "bs3cret",
        }))
        .unwrap()
    }

    #[test]
    fn record_names_hold_no_secrets_and_follow_the_credentials() {
        let c = cfg();
        let n = AgentNames::of("shop", &c);
        for name in [&n.token, &n.lease, &n.failure, &n.rotated] {
            assert!(name.contains(":shop:"), "{name}");
            for secret in ["s3cret", "Rtok9", "CLIENTID"] {
                assert!(!name.contains(secret), "{name}");
            }
        }
        let mut changed = c.clone();
        changed.refresh_token = Secret("dal:new".into());
        assert_ne!(AgentNames::of("shop", &changed).token, n.token);
        let mut slash = c.clone();
        slash.accounts_base.push('/');
        assert_eq!(AgentNames::of("shop", &slash).token, n.token);
        let e = entity_name("shop", &c, "shop#telegram#42");
        assert!(!e.contains("telegram") && !e.contains("42"));
        assert_ne!(e, entity_name("shop", &c, "shop#telegram#43"));
        let b = BotNames::of("shop", &c, "bot1", &Secret("bs3cret".into()));
        assert!(!b.token.contains("bs3cret") && !b.token.contains("bot1"));
        assert!(bot_credentials(&c).is_some());
        let mut nobot = c.clone();
        nobot.bot_secret = None;
        assert!(bot_credentials(&nobot).is_none());
    }
}
