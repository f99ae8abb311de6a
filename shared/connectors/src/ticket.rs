//! The ticket fallback: when no human can take a request (outside service hours, desk down,
//! no desk), POST it to the configured URL as a Standard Webhooks event (`webhook-id` stable
//! across retries, signed when a secret is set):
//!
//! ```json
//! {"type": "handoff.fallback", "timestamp": "<RFC 3339>", "data": {"agent", "conversation",
//!  "request_id", "email", "reason", "question", "history": [{"role", "text", "at"}]}}
//! ```
//! A 2xx answer opens the ticket; a JSON body `{"ticket_id": "..."}` is shown to the user.

use crate::outbound::{status_error, Poster};
use crate::standard_webhooks::SigningSecret;
use async_trait::async_trait;
use baton_core::agent::{Agent, FallbackConfig};
use baton_core::effect::HandoffRequest;
use baton_core::model::ConversationKey;
use baton_core::ports::{DeliveryError, Fallback};
use serde_json::{json, Value};
use std::time::Duration;

pub struct TicketFallback {
    poster: Poster,
}

impl TicketFallback {
    pub fn new(timeout: Duration) -> Self {
        TicketFallback { poster: Poster::new(timeout) }
    }

    /// Share `client` (see [`crate::outbound::http_client`]).
    pub fn from_client(client: reqwest::Client, timeout: Duration) -> Self {
        TicketFallback { poster: Poster::from_client(client, timeout) }
    }
}

pub fn ticket_body(agent: &Agent, key: &ConversationKey, request: &HandoffRequest, timestamp: &str) -> Value {
    json!({
        "type": "handoff.fallback",
        "timestamp": timestamp,
        "data": {
            "agent": agent.id,
            "conversation": key.to_string(),
            "request_id": request.handoff_id,
            "email": request.email,
            "reason": request.reason,
            "question": request.question,
            "history": request.history,
            "params": request.params,
        }
    })
}

#[async_trait]
impl Fallback for TicketFallback {
    async fn escalate(
        &self,
        agent: &Agent,
        key: &ConversationKey,
        request: &HandoffRequest,
        idempotency_key: &str,
    ) -> Result<String, DeliveryError> {
        let FallbackConfig::Ticket { url, signing_secret } = &agent.fallback else {
            return Err(DeliveryError::permanent(format!("agent {} has no fallback configured", agent.id)));
        };
        let secret =
            match signing_secret {
                Some(s) => Some(SigningSecret::parse(s.expose()).map_err(|e| {
                    DeliveryError::permanent(format!("agent {}: fallback.signing_secret: {e}", agent.id))
                })?),
                None => None,
            };
        let now = rfc3339(crate::outbound::now_ms());
        let body = ticket_body(agent, key, request, &now);
        let reply = self.poster.post_json(url, &body, idempotency_key, secret.as_ref(), None).await?;
        if !(200..300).contains(&reply.status) {
            return Err(status_error(&reply, ""));
        }
        let ticket = serde_json::from_slice::<Value>(&reply.body)
            .ok()
            .and_then(|v| v.get("ticket_id").and_then(|t| t.as_str().map(str::to_string)))
            .filter(|t| !t.is_empty() && t.len() <= 100);
        Ok(match ticket {
            Some(t) => format!("ticket {t}"),
            None => "ticket opened".to_string(),
        })
    }
}

/// RFC 3339 UTC from unix milliseconds.
fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map(|t| t.to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_from_millis() {
        assert_eq!(super::rfc3339(1_734_000_000_000), "2024-12-12T10:40:00Z");
    }
}
