//! The action framework's call: POST `{"action", "conversation", "inputs"}` to the action's
//! URL (signed per Standard Webhooks when it has a secret; `webhook-id` the same for the same
//! conversation and inputs, so a retry is recognisable), retrying 429/5xx/timeouts a few
//! times within the action's timeout; the answer's `outputs` (JSON pointers) become session
//! parameters. Used by the LLM brain's tools and by hosted agents' action triggers.
//!
//! With `format = "contract"` the call is the actions webhook of seed 003's contract instead
//! (see [`baton_core::agent::ActionFormat`]), and every returned result is a parameter.

use crate::outbound::Poster;
use crate::standard_webhooks::SigningSecret;
use baton_core::agent::{ActionConfig, ActionFormat};
use baton_core::model::ConversationKey;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// A completed call: the endpoint's answer and the parameters its outputs name.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionResult {
    pub answer: Value,
    pub outputs: BTreeMap<String, String>,
    /// Outputs the answer itself marks as personal data (contract format).
    pub sanitize: std::collections::BTreeSet<String>,
}

/// Call `action` with `inputs` (an object); the error says why it gave no answer.
pub async fn call(
    http: &reqwest::Client,
    action: &ActionConfig,
    conversation: &ConversationKey,
    inputs: Value,
) -> Result<ActionResult, String> {
    let secret = match action.signing_secret.as_ref().map(|s| SigningSecret::parse(s.expose())) {
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => return Err(format!("action {} is misconfigured: {e}", action.name)),
        None => None,
    };
    let msg_id = format!("msg_{}", call_key(&action.name, conversation, &inputs));
    let body = match action.format {
        ActionFormat::Baton => {
            json!({"action": action.name, "conversation": conversation.to_string(), "inputs": inputs})
        }
        ActionFormat::Contract => contract_body(action, conversation, &inputs),
    };
    let timeout = Duration::from_secs(action.timeout_secs.clamp(1, 20));
    let poster = Poster::from_client(http.clone(), timeout);
    let mut last = String::new();
    for attempt in 0..=action.retries.min(3) {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
        }
        let reply = match poster.post_json(&action.url, &body, &msg_id, secret.as_ref(), None).await {
            Ok(r) => r,
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        if reply.status == 429 || reply.status >= 500 {
            last = format!("the action answered HTTP {}", reply.status);
            continue;
        }
        if !(200..300).contains(&reply.status) {
            return Err(format!("the action answered HTTP {}", reply.status));
        }
        let answer: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        let mut result = ActionResult { answer, outputs: BTreeMap::new(), sanitize: Default::default() };
        match action.format {
            ActionFormat::Baton => {
                for (param, pointer) in &action.outputs {
                    if let Some(v) = result.answer.pointer(pointer).and_then(as_param) {
                        result.outputs.insert(param.clone(), v);
                    }
                }
            }
            ActionFormat::Contract => {
                for r in result.answer.get("results").and_then(Value::as_array).into_iter().flatten() {
                    let (Some(key), Some(value)) =
                        (r.get("key").and_then(Value::as_str), r.get("value").and_then(as_param))
                    else {
                        continue;
                    };
                    if r.get("sanitize").and_then(Value::as_bool) == Some(true) {
                        result.sanitize.insert(key.to_string());
                    }
                    result.outputs.insert(key.to_string(), value);
                }
            }
        }
        return Ok(result);
    }
    Err(format!("the action did not answer: {last}"))
}

/// A JSON value as a session parameter: strings as they are, other values as JSON.
fn as_param(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// The contract's action trigger; an Agent API conversation is named by the integration's
/// own id, others by the hub's conversation key.
fn contract_body(action: &ActionConfig, conversation: &ConversationKey, inputs: &Value) -> Value {
    let id = match conversation.channel {
        baton_core::Channel::Api => conversation.user.clone(),
        _ => conversation.to_string(),
    };
    let data: Vec<Value> =
        inputs.as_object().into_iter().flatten().map(|(k, v)| json!({"key": k, "value": [v]})).collect();
    json!({"botId": conversation.agent, "platformConversationId": id, "name": action.name, "data": data})
}

/// Stable per action, conversation and inputs.
fn call_key(kind: &str, conversation: &ConversationKey, inputs: &Value) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    conversation.to_string().hash(&mut h);
    inputs.to_string().hash(&mut h);
    format!("{kind}-{:016x}", h.finish())
}
