//! A client of Baton's widget API, as the widget page uses it.

use serde_json::{json, Value};
use std::time::Duration;

pub struct WidgetClient {
    pub base: String,
    pub agent: String,
    pub token: String,
    pub conversation_id: String,
    pub cursor: i64,
    pub http: reqwest::Client,
}

impl WidgetClient {
    /// Start a widget conversation, optionally with a preset e-mail (`?email=`).
    pub async fn start(base: &str, agent: &str, email: Option<&str>) -> WidgetClient {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
        let body = match email {
            Some(e) => json!({"email": e}),
            None => json!({}),
        };
        let r = http.post(format!("{base}/api/widget/{agent}/session")).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200, "session: {}", r.text().await.unwrap_or_default());
        let v: Value = r.json().await.unwrap();
        WidgetClient {
            base: base.to_string(),
            agent: agent.to_string(),
            token: v["token"].as_str().unwrap().to_string(),
            conversation_id: v["conversation_id"].as_str().unwrap().to_string(),
            cursor: 0,
            http,
        }
    }

    /// Send a message with a client id (the widget retries with the same id).
    pub async fn send_with_id(&self, text: &str, client_id: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/api/widget/{}/messages", self.base, self.agent))
            .bearer_auth(&self.token)
            .json(&json!({"text": text, "client_id": client_id}))
            .send()
            .await
            .unwrap()
    }

    pub async fn send(&self, text: &str) {
        let id = format!("c{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
        let r = self.send_with_id(text, &id).await;
        assert_eq!(r.status(), 202, "send: {}", r.text().await.unwrap_or_default());
    }

    pub async fn end(&self) {
        let r = self
            .http
            .post(format!("{}/api/widget/{}/end", self.base, self.agent))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }

    /// Messages after `cursor` (does not move the client's cursor).
    pub async fn messages_after(&self, cursor: i64) -> Vec<Value> {
        let r = self
            .http
            .get(format!("{}/api/widget/{}/messages?after={cursor}", self.base, self.agent))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        // Polling faster than the per-client limit is answered 429, as for a real widget:
        // nothing new this time.
        if r.status() == 429 {
            return Vec::new();
        }
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        v["messages"].as_array().cloned().unwrap_or_default()
    }

    /// Wait for the next message matching `pred` after the cursor; moves the cursor past it.
    pub async fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            for m in self.messages_after(self.cursor).await {
                self.cursor = m["seq"].as_i64().unwrap();
                if pred(&m) {
                    return m;
                }
            }
            if std::time::Instant::now() > deadline {
                panic!("timed out waiting for widget message: {what}");
            }
            // 10 polls a second stay under the hub's per-client rate limit.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every message so far.
    pub async fn all(&self) -> Vec<Value> {
        self.messages_after(0).await
    }
}
