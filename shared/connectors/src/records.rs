//! The small records connectors keep in the `KeyValue` store: names hashed from outside ids,
//! and completed calls remembered by idempotency key, so an effect retried after a crash does
//! not repeat a side effect (a second conversation, a message sent twice).

use baton_core::ports::{Clock, KeyValue};
use baton_core::{Agent, Millis};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// How long a completed call is remembered: longer than any retry of its effect.
const DONE_TTL_MS: i64 = 2 * 24 * 3600 * 1000;

/// Hex SHA-256 over the parts (NUL-separated), cut to `len` digits: record names never hold
/// ids, e-mail addresses or secrets as such.
pub(crate) fn hash(parts: &[&str], len: usize) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    let mut out = hex::encode(h.finalize());
    out.truncate(len);
    out
}

/// Completed calls of one provider, under `{prefix}:done:{agent}:{hash of kind and key}`.
#[derive(Clone)]
pub(crate) struct CallRecords {
    prefix: &'static str,
    /// For log lines: "SalesIQ", "Intercom", ...
    provider: &'static str,
    kv: Arc<dyn KeyValue>,
    clock: Arc<dyn Clock>,
}

impl CallRecords {
    pub(crate) fn new(
        prefix: &'static str,
        provider: &'static str,
        kv: Arc<dyn KeyValue>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        CallRecords { prefix, provider, kv, clock }
    }

    fn name(&self, agent: &Agent, kind: &str, idempotency_key: &str) -> String {
        format!("{}:done:{}:{}", self.prefix, agent.id, hash(&[kind, idempotency_key], 32))
    }

    /// The value recorded under `kind` + `idempotency_key` by an earlier successful call.
    pub(crate) async fn done(&self, agent: &Agent, kind: &str, idempotency_key: &str) -> Option<String> {
        match self.kv.get(&self.name(agent, kind, idempotency_key), self.clock.now()).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(agent = %agent.id, error = %e, "cannot look up completed {} calls", self.provider);
                None
            }
        }
    }

    pub(crate) async fn mark_done(&self, agent: &Agent, kind: &str, idempotency_key: &str, value: &str) {
        let name = self.name(agent, kind, idempotency_key);
        if let Err(e) = self.kv.put(&name, value, Millis(self.clock.now().0 + DONE_TTL_MS)).await {
            tracing::warn!(agent = %agent.id, error = %e, "cannot record a completed {} call", self.provider);
        }
    }
}
