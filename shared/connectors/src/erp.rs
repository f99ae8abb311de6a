//! The ERP preset: a client for the REST middleware in front of a customer's ERP that the
//! order assistant of seeds 000/001 needs. The contract is ours and published as an OpenAPI
//! document (`docs/erp-openapi.yaml`), so a customer knows exactly what to expose:
//!
//! - `GET /contacts?phone=` identifies the caller;
//! - `GET /products?search=` finds products with prices;
//! - `POST /orders` prepares an order (first phase): it answers a `transaction_id` and the
//!   order as the ERP priced it, nothing is booked yet;
//! - `PATCH /orders/{id}` changes the lines or cancels (again answering a transaction);
//! - `POST /transactions/commit` books it (second phase), with an `Idempotency-Key`;
//! - `GET /transactions/{id}` says what became of a transaction.
//!
//! A commit whose answer is lost (timeout, 5xx) is resolved with `GET /transactions/{id}`
//! before anything is said: committed means done, still prepared means the commit is sent
//! again with the same key (the middleware must apply a key once), anything else failed.
//! Only a commit the ERP confirms is ever reported as done.

use crate::outbound::{quote, read_limited, transport_error, MAX_RESPONSE_BYTES};
use baton_core::agent::ErpConfig;
use baton_core::ports::DeliveryError;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

/// Attempts of a commit (with a status check between them) before its outcome is unknown.
pub const COMMIT_ATTEMPTS: usize = 3;

/// What became of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    /// The ERP booked it: the order id.
    Committed { order_id: String },
    /// The ERP refused it or the transaction expired / was aborted: nothing was booked.
    Failed { reason: String },
    /// No answer could settle it: nobody may say it succeeded.
    Unknown { reason: String },
}

#[derive(Debug, Clone)]
pub struct ErpClient {
    client: reqwest::Client,
    timeout: Duration,
}

fn base(cfg: &ErpConfig) -> Result<&str, DeliveryError> {
    let base = cfg.base_url.trim().trim_end_matches('/');
    match reqwest::Url::parse(base) {
        Ok(u) if u.scheme() == "http" || u.scheme() == "https" => Ok(base),
        _ => Err(DeliveryError::permanent("erp.base_url must be an http:// or https:// URL")),
    }
}

/// A path segment from an id the model passed on: only `A-Z a-z 0-9 _ - .`.
fn segment(id: &str) -> Result<&str, DeliveryError> {
    let id = id.trim();
    if id.is_empty()
        || id.len() > 128
        || !id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err(DeliveryError::permanent(format!("not a valid id: {}", quote(id))));
    }
    Ok(id)
}

impl ErpClient {
    pub fn from_client(client: reqwest::Client, timeout: Duration) -> Self {
        ErpClient { client, timeout }
    }

    async fn call(
        &self,
        cfg: &ErpConfig,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> Result<Value, DeliveryError> {
        let what = format!("ERP {method} {}", path.split('?').next().unwrap_or(path));
        let mut request = self
            .client
            .request(method, format!("{}{path}", base(cfg)?))
            .timeout(self.timeout)
            .bearer_auth(cfg.api_key.expose())
            .header(reqwest::header::ACCEPT, "application/json");
        if !query.is_empty() {
            request = request.query(query);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        let resp = request.send().await.map_err(|e| transport_error(&what, self.timeout, e))?;
        let status = resp.status().as_u16();
        let bytes = read_limited(resp, MAX_RESPONSE_BYTES).await;
        let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok(json);
        }
        let code = json.pointer("/error/code").and_then(Value::as_str).unwrap_or_default();
        let message = json.pointer("/error/message").and_then(Value::as_str).unwrap_or_default();
        let message = format!("{what} answered HTTP {status}: {} {}", quote(code), quote(message));
        let key = cfg.api_key.expose();
        let message = if key.len() >= 6 { message.replace(key, "***") } else { message };
        Err(match status {
            401 | 403 => DeliveryError::Unauthorized { message },
            408 | 429 | 500..=599 => DeliveryError::retryable(message),
            _ => DeliveryError::permanent(message),
        })
    }

    /// `GET /contacts?phone=`: the contacts with this phone number (possibly none).
    pub async fn contacts_by_phone(&self, cfg: &ErpConfig, phone: &str) -> Result<Value, DeliveryError> {
        self.call(cfg, Method::GET, "/contacts", &[("phone", phone.trim())], None, None).await
    }

    /// `GET /products?search=&limit=`.
    pub async fn search_products(&self, cfg: &ErpConfig, query: &str, limit: u32) -> Result<Value, DeliveryError> {
        let limit = limit.clamp(1, 50).to_string();
        self.call(cfg, Method::GET, "/products", &[("search", query.trim()), ("limit", &limit)], None, None).await
    }

    /// `POST /orders`: prepare an order (nothing is booked until it is committed).
    pub async fn prepare_order(
        &self,
        cfg: &ErpConfig,
        order: &Value,
        idempotency_key: &str,
    ) -> Result<Value, DeliveryError> {
        self.call(cfg, Method::POST, "/orders", &[], Some(order), Some(idempotency_key)).await
    }

    /// `PATCH /orders/{id}`: new lines, or `{"status": "cancelled"}`; prepared like an order.
    pub async fn change_order(
        &self,
        cfg: &ErpConfig,
        order_id: &str,
        change: &Value,
        idempotency_key: &str,
    ) -> Result<Value, DeliveryError> {
        let path = format!("/orders/{}", segment(order_id)?);
        self.call(cfg, Method::PATCH, &path, &[], Some(change), Some(idempotency_key)).await
    }

    /// `GET /contacts/{id}/top-products?limit=`: what the customer orders most.
    pub async fn top_products(&self, cfg: &ErpConfig, contact_id: &str) -> Result<Value, DeliveryError> {
        let path = format!("/contacts/{}/top-products", segment(contact_id)?);
        self.call(cfg, Method::GET, &path, &[("limit", "5")], None, None).await
    }

    /// `POST /orders/{id}/reorder`: a past order prepared again (a new transaction).
    pub async fn reorder(
        &self,
        cfg: &ErpConfig,
        order_id: &str,
        idempotency_key: &str,
    ) -> Result<Value, DeliveryError> {
        let path = format!("/orders/{}/reorder", segment(order_id)?);
        self.call(cfg, Method::POST, &path, &[], Some(&json!({})), Some(idempotency_key)).await
    }

    /// `GET /orders/{id}`: the order with its status and delivery estimate.
    pub async fn order(&self, cfg: &ErpConfig, order_id: &str) -> Result<Value, DeliveryError> {
        let path = format!("/orders/{}", segment(order_id)?);
        self.call(cfg, Method::GET, &path, &[], None, None).await
    }

    /// `GET /contacts/{id}/complaints`.
    pub async fn complaints(&self, cfg: &ErpConfig, contact_id: &str) -> Result<Value, DeliveryError> {
        let path = format!("/contacts/{}/complaints", segment(contact_id)?);
        self.call(cfg, Method::GET, &path, &[], None, None).await
    }

    /// `GET /promotions`: current promotions.
    pub async fn promotions(&self, cfg: &ErpConfig) -> Result<Value, DeliveryError> {
        self.call(cfg, Method::GET, "/promotions", &[], None, None).await
    }

    /// `GET /transactions/{id}`.
    pub async fn transaction(&self, cfg: &ErpConfig, transaction_id: &str) -> Result<Value, DeliveryError> {
        let path = format!("/transactions/{}", segment(transaction_id)?);
        self.call(cfg, Method::GET, &path, &[], None, None).await
    }

    /// The second phase: commit with `Idempotency-Key: commit-{transaction_id}`, resolving a
    /// lost answer with the transaction's status (see the module docs).
    pub async fn commit(&self, cfg: &ErpConfig, transaction_id: &str) -> CommitOutcome {
        let id = match segment(transaction_id) {
            Ok(id) => id.to_string(),
            Err(e) => return CommitOutcome::Failed { reason: e.to_string() },
        };
        let key = format!("commit-{id}");
        let mut last = String::new();
        for _ in 0..COMMIT_ATTEMPTS {
            let body = json!({ "transaction_id": id });
            match self.call(cfg, Method::POST, "/transactions/commit", &[], Some(&body), Some(&key)).await {
                Ok(answer) => return outcome(&answer, &id),
                Err(DeliveryError::Permanent { message }) | Err(DeliveryError::Unauthorized { message }) => {
                    return CommitOutcome::Failed { reason: message }
                }
                Err(DeliveryError::Retryable { message, .. }) => last = message,
            }
            // The answer was lost or the ERP stumbled: what happened?
            match self.transaction(cfg, &id).await {
                Ok(status) => match status.get("status").and_then(Value::as_str) {
                    Some("committed") => return outcome(&status, &id),
                    Some("prepared") => continue,
                    Some(other) => return CommitOutcome::Failed { reason: format!("the transaction is {other}") },
                    None => last = "the transaction status is missing".into(),
                },
                Err(e) => last = e.to_string(),
            }
        }
        CommitOutcome::Unknown { reason: last }
    }
}

fn outcome(answer: &Value, transaction_id: &str) -> CommitOutcome {
    match answer.get("status").and_then(Value::as_str) {
        Some("committed") => CommitOutcome::Committed {
            order_id: answer.get("order_id").and_then(Value::as_str).unwrap_or(transaction_id).to_string(),
        },
        Some(other) => CommitOutcome::Failed { reason: format!("the ERP answered status {}", quote(other)) },
        None => CommitOutcome::Unknown { reason: "the ERP answered without a status".into() },
    }
}
