//! A fake integration behind the Agent API: the converse webhook the hub pushes the agent's
//! messages and escalations to. Signatures are checked the way the Standard Webhooks spec
//! describes them (HMAC-SHA256 keyed with the base64-decoded secret after `whsec_`, over
//! `"{webhook-id}.{webhook-timestamp}.{body}"`, compared with each `v1,` entry, timestamp
//! within 5 minutes), written here from the spec rather than with the hub's own code.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The signature the spec prescribes for one delivery, `v1,<base64>`.
pub fn spec_signature(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> String {
    let key = B64.decode(secret.strip_prefix("whsec_").expect("whsec_ secret")).expect("base64 secret");
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&key).expect("any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
}

#[derive(Debug, Clone)]
pub struct Delivery {
    pub webhook_id: String,
    pub body: Value,
}

#[derive(Default)]
struct Log {
    deliveries: Vec<Delivery>,
    duplicates: usize,
    bad_signatures: usize,
    /// Answer these statuses, one per request, before accepting again.
    fail_with: Vec<u16>,
    /// The answer to `isTeamOnline`.
    team_online: bool,
}

#[derive(Clone)]
struct St {
    log: Arc<Mutex<Log>>,
    secret: Option<String>,
}

pub struct FakeIntegration {
    pub addr: SocketAddr,
    log: Arc<Mutex<Log>>,
}

impl FakeIntegration {
    /// Start on a free loopback port; with `secret`, unsigned or wrongly signed deliveries
    /// are refused with 401 and counted.
    pub async fn start(secret: Option<&str>) -> FakeIntegration {
        let log = Arc::new(Mutex::new(Log::default()));
        let app = Router::new()
            .fallback(post(handle))
            .with_state(St { log: log.clone(), secret: secret.map(str::to_string) });
        let addr = crate::serve_on_loopback(app).await;
        FakeIntegration { addr, log }
    }

    pub fn url(&self) -> String {
        format!("http://{}/converse", self.addr)
    }

    /// Accepted deliveries, each webhook-id once, in arrival order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.log.lock().unwrap().deliveries.clone()
    }

    /// The `data` objects of the accepted deliveries for one conversation.
    pub fn events_for(&self, conversation: &str) -> Vec<Value> {
        self.deliveries()
            .into_iter()
            .map(|d| d.body["data"].clone())
            .filter(|d| d["platformConversationId"] == conversation)
            .collect()
    }

    /// Wait until `n` events of `conversation` arrived, and return them.
    pub async fn wait_for(&self, conversation: &str, n: usize) -> Vec<Value> {
        crate::eventually(Duration::from_secs(10), &format!("{n} converse events for {conversation}"), || async {
            let events = self.events_for(conversation);
            (events.len() >= n).then_some(events)
        })
        .await
    }

    pub fn duplicates(&self) -> usize {
        self.log.lock().unwrap().duplicates
    }

    pub fn bad_signatures(&self) -> usize {
        self.log.lock().unwrap().bad_signatures
    }

    /// What `isTeamOnline` is answered.
    pub fn set_team_online(&self, online: bool) {
        self.log.lock().unwrap().team_online = online;
    }

    /// Answer the next requests with these statuses.
    pub fn fail_with(&self, statuses: &[u16]) {
        self.log.lock().unwrap().fail_with = statuses.to_vec();
    }
}

async fn handle(State(st): State<St>, headers: HeaderMap, body: Bytes) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (status, online) = accept(&st, &headers, &body);
    match online {
        Some(online) => (status, axum::Json(serde_json::json!({"isOnline": online}))).into_response(),
        None => status.into_response(),
    }
}

/// The status to answer, and for an accepted `isTeamOnline` the answer.
fn accept(st: &St, headers: &HeaderMap, body: &Bytes) -> (StatusCode, Option<bool>) {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let (id, ts, sigs) = (h("webhook-id"), h("webhook-timestamp"), h("webhook-signature"));
    if let Some(secret) = &st.secret {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        let fresh = ts.parse::<i64>().is_ok_and(|t| (now - t).abs() <= 300);
        let expected = spec_signature(secret, &id, &ts, body);
        if id.is_empty() || !fresh || !sigs.split(' ').any(|s| s == expected) {
            st.log.lock().unwrap().bad_signatures += 1;
            return (StatusCode::UNAUTHORIZED, None);
        }
    }
    let mut log = st.log.lock().unwrap();
    if !log.fail_with.is_empty() {
        let status = log.fail_with.remove(0);
        return (StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE), None);
    }
    let Ok(body) = serde_json::from_slice::<Value>(body) else {
        return (StatusCode::BAD_REQUEST, None);
    };
    let online = (body["data"]["eventType"] == "isTeamOnline").then_some(log.team_online);
    if log.deliveries.iter().any(|d| d.webhook_id == id) {
        log.duplicates += 1;
        return (StatusCode::OK, online);
    }
    log.deliveries.push(Delivery { webhook_id: id, body });
    (StatusCode::OK, online)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks / Svix documentation.
    #[test]
    fn spec_signature_matches_the_published_example() {
        let sig = spec_signature(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
