//! The Agent API on a running `baton serve`, driven the way seed 003's contract describes:
//! `POST /converse/chat` with `botid` + `Authorization`, eventType startSession / message /
//! metadata / endSession, answers pushed to the integration's converse webhook (signed per
//! Standard Webhooks, checked from the spec by the fake integration), the synchronous mode,
//! escalation to the desk or to the caller, session expiry on a controlled clock.

mod common;

use baton_core::agent::{ApiConfig, ApiEscalation};
use baton_core::model::Secret;
use baton_core::{Channel, ConversationKey, Millis};
use baton_runtime::clock::ManualClock;
use baton_tests::integration::FakeIntegration;
use common::{Hub, SECRET};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// Thursday 2023-11-16 10:00 UTC.
const THURSDAY_10: i64 = 1_700_128_800_000;

struct Api {
    hub: Hub,
    integration: FakeIntegration,
    clock: Arc<ManualClock>,
}

async fn api_hub(edit: impl FnOnce(&mut ApiConfig)) -> Api {
    let integration = FakeIntegration::start(Some(SECRET)).await;
    let clock = Arc::new(ManualClock::new(Millis(THURSDAY_10)));
    let mut api = ApiConfig {
        converse_url: Some(integration.url()),
        signing_secret: Some(Secret(SECRET.into())),
        welcome: "Hi! Ask me about opening hours or shipping.".into(),
        ..Default::default()
    };
    edit(&mut api);
    let hub = common::hub_with(clock.clone(), move |a| {
        a.api = Some(api);
        a.policy.require_email = false;
    })
    .await;
    Api { hub, integration, clock }
}

impl Api {
    async fn converse(&self, body: Value) -> reqwest::Response {
        self.converse_with(body, &[]).await
    }

    async fn converse_with(&self, body: Value, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut req = reqwest::Client::new()
            .post(format!("{}/converse/chat", self.hub.base))
            .header("botid", "shop")
            .header("authorization", &self.hub.token)
            .json(&body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.unwrap()
    }

    async fn ok(&self, body: Value) {
        let resp = self.converse(body.clone()).await;
        assert_eq!(resp.status(), 200, "{body}: {}", resp.text().await.unwrap());
    }

    async fn session(&self, conversation: &str) -> Option<baton_core::Session> {
        let key = ConversationKey::new("shop", Channel::Api, conversation).unwrap();
        self.hub.running.ports.store.load_session(&key).await.unwrap().map(|v| v.session)
    }

    /// Wait until the conversation's session satisfies `f`.
    async fn wait_session(&self, conversation: &str, what: &str, f: impl Fn(&baton_core::Session) -> bool) {
        baton_tests::eventually(Duration::from_secs(10), what, || async {
            self.session(conversation).await.filter(|s| f(s)).map(|_| ())
        })
        .await
    }
}

fn message(conversation: &str, text: &str) -> Value {
    json!({"platformConversationId": conversation, "eventType": "message", "text": text})
}

fn start(conversation: &str) -> Value {
    json!({"platformConversationId": conversation, "eventType": "startSession"})
}

#[tokio::test]
async fn the_contract_refuses_what_it_must_with_the_right_status() {
    let api = api_hub(|_| {}).await;
    let url = format!("{}/converse/chat", api.hub.base);
    let client = reqwest::Client::new();
    let call = |bot: Option<&str>, auth: Option<&str>, body: Value| {
        let mut req = client.post(&url).json(&body);
        if let Some(b) = bot {
            req = req.header("botid", b);
        }
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send()
    };
    let error = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        (status, body["error"]["message"].as_str().unwrap_or_default().to_string())
    };
    let token = api.hub.token.clone();
    let ok_body = start("c-1");

    let (s, m) = error(call(None, Some(&token), ok_body.clone()).await.unwrap()).await;
    assert_eq!((s, m.contains("botid")), (400, true), "{m}");
    let (s, _) = error(call(Some("nobody"), Some(&token), ok_body.clone()).await.unwrap()).await;
    assert_eq!(s, 404);
    let (s, m) = error(call(Some("shop"), None, ok_body.clone()).await.unwrap()).await;
    assert_eq!((s, m.contains("Authorization")), (401, true), "{m}");
    let (s, _) = error(call(Some("shop"), Some("bat_wrong"), ok_body.clone()).await.unwrap()).await;
    assert_eq!(s, 401);
    // The raw token (the contract's form) and the Bearer form both pass.
    assert_eq!(call(Some("shop"), Some(&token), ok_body.clone()).await.unwrap().status(), 200);
    let bearer = format!("Bearer {token}");
    assert_eq!(call(Some("shop"), Some(&bearer), ok_body.clone()).await.unwrap().status(), 200);

    // A token of another agent opens nothing of this one.
    let mut other = common::shop_agent(&api.hub.desk.url());
    other.id = "other".into();
    api.hub.running.ports.store.put_agent(&other).await.unwrap();
    let other_token = baton_runtime::auth::generate_token();
    let hash = baton_runtime::auth::hash_token(&other_token);
    api.hub.running.ports.store.add_token("other", &hash, Millis(0)).await.unwrap();
    let (s, _) = error(call(Some("shop"), Some(&other_token), message("c-1", "hi")).await.unwrap()).await;
    assert_eq!(s, 401);

    // Validation errors name the field.
    for (body, field) in [
        (json!({"eventType": "message", "text": "x"}), "platformConversationId"),
        (json!({"platformConversationId": "c-1", "eventType": "typing"}), "eventType"),
        (json!({"platformConversationId": "c-1", "eventType": "message"}), "text"),
        (json!({"platformConversationId": "c-1", "eventType": "metadata"}), "metaData"),
        (
            json!({"platformConversationId": "c-1", "eventType": "metadata", "metaData": {"key": "k", "value": 1}}),
            "metaData.value",
        ),
    ] {
        let (s, m) = error(call(Some("shop"), Some(&token), body.clone()).await.unwrap()).await;
        assert_eq!(s, 400, "{body}");
        assert!(m.starts_with(field), "{body}: {m}");
    }
    let resp = client
        .post(&url)
        .header("botid", "shop")
        .header("authorization", &token)
        .header("prefer", "wait=99")
        .json(&ok_body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    // Repeated failures from one client are throttled.
    let mut statuses = Vec::new();
    for _ in 0..15 {
        statuses.push(call(Some("shop"), Some("bat_wrong"), ok_body.clone()).await.unwrap().status().as_u16());
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 401 || *s == 429), "{statuses:?}");
}

#[tokio::test]
async fn a_conversation_starts_converses_resumes_expires_and_restarts_under_the_same_id() {
    let api = api_hub(|_| {}).await;
    let conv = "voice-+385911234567";
    api.ok(start(conv)).await;
    let events = api.integration.wait_for(conv, 1).await;
    assert_eq!(events[0]["eventType"], "sendMessage");
    assert_eq!(events[0]["text"], "Hi! Ask me about opening hours or shipping.");
    assert_eq!(events[0]["sender"], "bot");

    // Parameters by metaData (both forms), one of them personal data.
    api.ok(json!({"platformConversationId": conv, "eventType": "metadata",
        "metaData": {"key": "phone", "value": "+385911234567", "sanitize": true}}))
        .await;
    api.ok(json!({"platformConversationId": conv, "eventType": "metadata",
        "metaData": [{"key": "customer_id", "value": "C-77"}]}))
        .await;
    api.ok(message(conv, "What are your opening hours?")).await;
    let events = api.integration.wait_for(conv, 2).await;
    assert_eq!(events[1]["text"], "We are open 9-17 on weekdays.");
    let s = api.session(conv).await.unwrap();
    assert_eq!(s.params.get("customer_id").map(String::as_str), Some("C-77"));
    assert!(s.sanitized.contains("phone"));

    // Within the window, a start resumes: no second welcome, the history stays.
    api.clock.advance_secs(3600);
    api.ok(start(conv)).await;
    api.ok(message(conv, "How long does shipping take?")).await;
    let events = api.integration.wait_for(conv, 3).await;
    assert_eq!(events[2]["text"], "Shipping takes 2-4 days.", "{events:?}");
    assert_eq!(api.session(conv).await.unwrap().history.len(), 5);

    // Two hours after the last message the session has expired: the next message starts a
    // new one (no old turns, no old parameters).
    api.clock.advance_secs(2 * 3600 + 1);
    api.ok(message(conv, "What are your opening hours?")).await;
    api.integration.wait_for(conv, 4).await;
    let s = api.session(conv).await.unwrap();
    assert_eq!(s.history.len(), 2, "{:?}", s.history);
    assert!(s.params.is_empty(), "{:?}", s.params);

    // endSession, then the same id starts over with a welcome.
    api.ok(json!({"platformConversationId": conv, "eventType": "endSession"})).await;
    api.wait_session(conv, "the ended session", |s| s.history.is_empty()).await;
    api.ok(start(conv)).await;
    let events = api.integration.wait_for(conv, 5).await;
    assert_eq!(events[4]["text"], "Hi! Ask me about opening hours or shipping.");

    // Every delivery was signed, once each.
    assert_eq!(api.integration.bad_signatures(), 0);
    assert_eq!(api.integration.duplicates(), 0);
    let ids: std::collections::HashSet<String> =
        api.integration.deliveries().into_iter().map(|d| d.webhook_id).collect();
    assert_eq!(ids.len(), 5);
    for d in api.integration.deliveries() {
        assert_eq!(d.body["botId"], "shop");
        assert_eq!(d.body["channel"], "chat");
        assert_eq!(d.body["data"]["messageId"].as_str(), Some(d.webhook_id.as_str()));
    }
}

#[tokio::test]
async fn the_synchronous_mode_returns_the_answer_in_the_response() {
    let api = api_hub(|_| {}).await;
    let resp = api.converse_with(message("sync-1", "How long does shipping take?"), &[("prefer", "wait=10")]).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["complete"], true, "{body}");
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "{body}");
    assert_eq!(messages[0]["text"], "Shipping takes 2-4 days.");
    // The same event also went to the webhook, under the same messageId.
    let pushed = api.integration.wait_for("sync-1", 1).await;
    assert_eq!(pushed[0]["messageId"], messages[0]["messageId"]);

    // A retried request with the same Idempotency-Key is applied once.
    let headers = [("prefer", "wait=10"), ("idempotency-key", "req-42")];
    let first: Value =
        api.converse_with(message("sync-1", "What are your opening hours?"), &headers).await.json().await.unwrap();
    assert_eq!(first["messages"][0]["text"], "We are open 9-17 on weekdays.", "{first}");
    let again = api.converse_with(message("sync-1", "What are your opening hours?"), &headers).await;
    assert_eq!(again.status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(api.session("sync-1").await.unwrap().history.len(), 4, "the retry added nothing");

    // Without an integration webhook the synchronous mode alone works.
    let quiet = api_hub(|c| c.converse_url = None).await;
    let body: Value = quiet.converse_with(start("s-2"), &[("prefer", "wait=5")]).await.json().await.unwrap();
    assert_eq!(body["messages"][0]["text"], "Hi! Ask me about opening hours or shipping.", "{body}");
    // A metadata call has no answer to wait for.
    let body: Value = quiet
        .converse_with(
            json!({"platformConversationId": "s-2", "eventType": "metadata", "metaData": {"key": "k", "value": "v"}}),
            &[("prefer", "wait=5")],
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body, json!({"messages": [], "complete": true}));
}

#[tokio::test]
async fn a_handoff_goes_to_the_desk_with_masked_personal_data_and_the_human_answers_by_webhook() {
    let api = api_hub(|_| {}).await;
    let conv = "web-7";
    api.ok(json!({"platformConversationId": conv, "eventType": "startSession",
        "metaData": [{"key": "phone", "value": "+385911234567", "sanitize": true}, {"key": "plan", "value": "gold"}]}))
        .await;
    api.ok(message(conv, "I want to talk to a human")).await;
    let est = api.hub.desk.first_to("/conversation/establish").await;
    let text = est.body.to_string();
    assert!(!text.contains("+385911234567"), "personal data is masked for the desk: {text}");
    assert_eq!(est.body["params"]["plan"], "gold", "{text}");
    assert_eq!(est.body["params"]["phone"], "[redacted]", "{text}");
    let desk_conv = est.body["conversation_id"].as_str().unwrap().to_string();
    assert_eq!(api.hub.desk_reply(&desk_conv, "Hello, this is Anna.", None).await.status(), 200);
    let events = baton_tests::eventually(Duration::from_secs(10), "the human's reply", || async {
        let e = api.integration.events_for(conv);
        e.iter().any(|m| m["sender"] == "human").then_some(e)
    })
    .await;
    let human = events.iter().find(|m| m["sender"] == "human").unwrap();
    assert_eq!(human["text"], "Hello, this is Anna.");
    assert_eq!(human["buttons"][0]["type"], "button", "{human}");

    // endSession closes the desk conversation.
    api.ok(json!({"platformConversationId": conv, "eventType": "endSession"})).await;
    let close = api.hub.desk.first_to("/conversation/close").await;
    assert_eq!(close.body["type"], "USER_CLOSED", "{}", close.body);
}

#[tokio::test]
async fn an_escalation_to_the_caller_carries_the_transfer_target() {
    let api = api_hub(|c| {
        c.escalation = ApiEscalation::Caller { transfer_to: Some("+4930123456".into()), ask_team_online: false }
    })
    .await;
    let body: Value = api
        .converse_with(message("call-1", "I want to talk to a human"), &[("prefer", "wait=10")])
        .await
        .json()
        .await
        .unwrap();
    let escalation = body["messages"].as_array().unwrap().iter().find(|m| m["eventType"] == "escalate").cloned();
    let escalation = escalation.unwrap_or_else(|| panic!("no escalate event: {body}"));
    assert_eq!(escalation["escalateTo"], "+4930123456");
    assert_eq!(escalation["reason"], "the user asked for a human");
    let pushed = api.integration.wait_for("call-1", 1).await;
    assert_eq!(pushed[0]["eventType"], "escalate");
    assert_eq!(api.hub.desk.count_to("/conversation/establish"), 0, "the hub's desk is not involved");
}

#[tokio::test]
async fn failed_deliveries_are_retried_under_the_same_id_and_final_refusals_alert() {
    let api = api_hub(|_| {}).await;
    api.integration.fail_with(&[503, 502]);
    api.ok(start("r-1")).await;
    // Retries wait for their backoff on the hub's clock.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        api.clock.advance_secs(5);
        if !api.integration.events_for("r-1").is_empty() {
            break;
        }
    }
    let events = api.integration.wait_for("r-1", 1).await;
    assert_eq!(events.len(), 1);
    assert_eq!(api.integration.duplicates(), 0);

    // 410 Gone is final: the delivery is dead-lettered with an alert naming the conversation.
    api.integration.fail_with(&[410]);
    api.ok(message("r-1", "What are your opening hours?")).await;
    let alert = baton_tests::eventually(Duration::from_secs(10), "a dead-letter alert", || async {
        api.hub.running.ports.alerts.recent().into_iter().find(|a| a.contains("dead-lettered"))
    })
    .await;
    assert!(alert.contains("shop#api#r-1"), "{alert}");
    assert!(!alert.contains(SECRET));
}

/// The local console (the example agent's desk) shows what the hub knows about the user,
/// personal data masked.
#[tokio::test]
async fn the_console_shows_the_session_parameters_masked() {
    let dir = tempfile::tempdir().unwrap();
    let opts = baton::serve::ServeOptions {
        example_agent: true,
        ..baton::serve::ServeOptions::loopback(dir.path().join("baton.sqlite"))
    };
    let running = baton::serve::start(opts, Arc::new(baton_runtime::clock::SystemClock)).await.unwrap();
    let token = baton_runtime::auth::generate_token();
    running.ports.store.add_token("demo", &baton_runtime::auth::hash_token(&token), Millis(0)).await.unwrap();
    let base = format!("http://{}", running.addr);
    let http = reqwest::Client::new();
    let body = json!({"platformConversationId": "ivr-7", "eventType": "message", "text": "human",
        "metaData": [{"key": "phone", "value": "+385911234567", "sanitize": true}, {"key": "plan", "value": "gold"}]});
    let r = http
        .post(format!("{base}/converse/chat"))
        .header("botid", "demo")
        .header("authorization", &token)
        .header("prefer", "wait=10")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (key, created) = running.console_key.clone();
    assert!(created, "the first start creates the operator key");
    let cookie = baton_tests::console_cookie(&base, &key).await;
    let id = baton_tests::eventually(Duration::from_secs(10), "the console conversation", || async {
        let list: Value = http
            .get(format!("{base}/console/api/conversations"))
            .header("cookie", &cookie)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        list["conversations"].as_array()?.first()?["id"].as_str().map(str::to_string)
    })
    .await;
    let shown: Value = http
        .get(format!("{base}/console/api/conversations/{id}"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let params = &shown["conversation"]["user_info"]["params"];
    assert_eq!(params["plan"], "gold", "{shown}");
    assert_eq!(params["phone"], "[redacted]", "{shown}");
    assert!(!shown.to_string().contains("+385911234567"));
    running.stop().await;
}

#[tokio::test]
async fn the_integration_is_asked_whether_its_team_is_online_before_an_escalation() {
    let api = api_hub(|c| {
        c.escalation = ApiEscalation::Caller { transfer_to: Some("queue:billing".into()), ask_team_online: true }
    })
    .await;
    api.hub
        .running
        .ports
        .store
        .put_agent(&{
            let mut a = api.hub.running.ports.store.get_agent("shop").await.unwrap().unwrap();
            a.fallback = baton_core::agent::FallbackConfig::Ticket {
                url: format!("{}/tickets", api.hub.desk.url()),
                signing_secret: Some(Secret(SECRET.into())),
            };
            a
        })
        .await
        .unwrap();

    api.integration.set_team_online(true);
    let body: Value = api
        .converse_with(message("t-1", "I want to talk to a human"), &[("prefer", "wait=10")])
        .await
        .json()
        .await
        .unwrap();
    let events = api.integration.events_for("t-1");
    assert_eq!(events[0]["eventType"], "isTeamOnline", "{events:?}");
    assert_eq!(body["messages"][0]["eventType"], "escalate", "{body}");
    assert_eq!(body["messages"][0]["escalateTo"], "queue:billing");

    // Nobody online: the unavailable answer, and the request goes to the fallback.
    api.integration.set_team_online(false);
    let body: Value = api
        .converse_with(message("t-2", "I want to talk to a human"), &[("prefer", "wait=10")])
        .await
        .json()
        .await
        .unwrap();
    let kinds: Vec<&str> =
        body["messages"].as_array().unwrap().iter().map(|m| m["eventType"].as_str().unwrap()).collect();
    assert!(!kinds.contains(&"escalate"), "{body}");
    let ticket = api.hub.desk.first_to("/tickets").await;
    assert!(ticket.body["data"]["reason"].as_str().unwrap().contains("nobody is online"), "{}", ticket.body);
}
