//! A hosted AI agent (seed 003's contract, as Zendesk AI agents - Advanced speaks it) as the
//! brain of a widget conversation on a running `baton serve`: the hub calls its converse
//! endpoint, and its webhooks come back: messages (text, buttons, carousel) to the user,
//! `isTeamOnline` answered from the desk and the hours, an action trigger answered through
//! the agent's action, `escalate` handing the user to the desk.

mod common;

use axum::routing::post;
use axum::{Json, Router};
use baton_core::agent::{ActionConfig, BrainConfig, HostedAgentConfig};
use baton_core::model::Secret;
use baton_tests::hosted::{FakeHostedAgent, BOT_ID};
use baton_tests::widget::WidgetClient;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const KEY: &str = "ua-test-key-5f1c";
const HOOK_SECRET: &str = "hk_0123456789abcdefABCDEF_xyz";

/// The customer's account endpoint behind the action `get_account`.
async fn account_endpoint() -> (String, Arc<Mutex<Vec<Value>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let app = Router::new().route(
        "/account",
        post(move |Json(body): Json<Value>| {
            let log = log.clone();
            async move {
                log.lock().unwrap().push(body);
                Json(json!({"customer": {"tier": "gold", "id": "C-9"}}))
            }
        }),
    );
    let addr = baton_tests::serve_on_loopback(app).await;
    (format!("http://{addr}/account"), seen)
}

async fn setup(key: &str) -> (common::Hub, FakeHostedAgent, Arc<Mutex<Vec<Value>>>) {
    let hosted = FakeHostedAgent::start(KEY).await;
    let (account_url, account_calls) = account_endpoint().await;
    let base_url = hosted.url();
    let key = key.to_string();
    let hub = common::hub_with(Arc::new(baton_runtime::clock::SystemClock), move |a| {
        a.brain = BrainConfig::Hosted(HostedAgentConfig {
            base_url,
            bot_id: BOT_ID.into(),
            api_key: Secret(key),
            webhook_secret: Secret(HOOK_SECRET.into()),
            timeout_secs: 5,
        });
        a.actions = vec![ActionConfig {
            name: "get_account".into(),
            description: "Look up the customer's account".into(),
            inputs: vec!["email".into()],
            url: account_url,
            signing_secret: None,
            outputs: [
                ("tier".to_string(), "/customer/tier".to_string()),
                ("customer_id".to_string(), "/customer/id".to_string()),
            ]
            .into(),
            timeout_secs: 5,
            retries: 1,
            sanitize: vec!["customer_id".into()],
            format: Default::default(),
        }];
    })
    .await;
    hosted.set_webhook_base(&format!("{}/brains/hosted/shop/{HOOK_SECRET}", hub.base));
    (hub, hosted, account_calls)
}

#[tokio::test]
async fn a_hosted_agent_answers_asks_acts_and_escalates_through_the_hub() {
    let (hub, hosted, account_calls) = setup(KEY).await;
    let mut w = WidgetClient::start(&hub.base, "shop", Some("ana@example.com")).await;

    // The first message starts a session there, with what is known (the e-mail), then asks.
    w.send("hello").await;
    let answer = w.wait_for("the echo", |m| m["text"] == "You said: hello").await;
    assert_eq!(answer["buttons"][0]["label"], "Thanks", "{answer}");
    let welcome = w.all().await.into_iter().any(|m| m["text"] == "Welcome from the hosted agent");
    assert!(welcome, "the hosted agent's welcome reaches the user");
    let kinds: Vec<String> = hosted.calls().iter().map(|c| c["eventType"].as_str().unwrap().to_string()).collect();
    assert_eq!(kinds, ["startSession", "metadata", "message"]);
    let conv = hosted.calls()[0]["platformConversationId"].as_str().unwrap().to_string();
    assert_eq!(conv, format!("shop#widget#{}", w.conversation_id));
    assert!(hosted.calls()[1]["metaData"].to_string().contains("ana@example.com"));

    // isTeamOnline is answered in the response: a desk is configured and no hours restrict it.
    w.send("is the team online?").await;
    w.wait_for("the team status", |m| m["text"] == "team online: true").await;

    // An action trigger runs the agent's action and answers with its outputs.
    w.send("what about my account").await;
    w.wait_for("the tier", |m| m["text"] == "Your tier is gold.").await;
    let call = account_calls.lock().unwrap()[0].clone();
    assert_eq!(call["action"], "get_account");
    assert_eq!(call["inputs"]["email"], "ana@example.com");

    // A carousel arrives as lines and buttons.
    w.send("menu").await;
    let menu = w.wait_for("the menu", |m| m["text"].as_str().is_some_and(|t| t.contains("• Flour: 1 kg"))).await;
    assert_eq!(menu["buttons"].as_array().map(Vec::len), Some(2), "{menu}");

    // escalate hands the user to the desk, with what the action learned.
    w.send("I need a human").await;
    let est = hub.desk.first_to("/conversation/establish").await;
    assert!(est.body["reason"].as_str().unwrap().contains("tier-2"), "{}", est.body);
    assert_eq!(est.body["params"]["tier"], "gold", "{}", est.body);
    assert_eq!(est.body["params"]["customer_id"], "[redacted]", "personal data stays masked: {}", est.body);
    let (_, _, answer) = hosted.webhook_answers().into_iter().find(|(what, _, _)| what == "get_account").unwrap();
    let results = answer["results"].as_array().unwrap().clone();
    assert!(results.contains(&json!({"key": "customer_id", "value": "C-9", "sanitize": true})), "{answer}");
    // While the human has the conversation, the user's messages go to the desk, not the agent.
    let calls_before = hosted.calls().len();
    w.send("are you there?").await;
    baton_tests::eventually(Duration::from_secs(10), "the relay to the desk", || async {
        (hub.desk.count_to("/chat") > 0).then_some(())
    })
    .await;
    assert_eq!(hosted.calls().len(), calls_before);
    assert!(hosted.webhook_answers().iter().all(|(_, status, _)| *status == 200), "{:?}", hosted.webhook_answers());
}

#[tokio::test]
async fn its_webhooks_are_refused_without_the_secret_and_outside_the_agent() {
    let (hub, hosted, _) = setup(KEY).await;
    let send = |path: String, body: Value| async move {
        let r = reqwest::Client::new().post(path).json(&body).send().await.unwrap();
        r.status().as_u16()
    };
    let data = |conv: &str| json!({"botId": BOT_ID, "channel": "chat", "data": {"platformConversationId": conv, "eventType": "isTeamOnline"}});
    let base = &hub.base;
    assert_eq!(send(format!("{base}/brains/hosted/shop/{HOOK_SECRET}x/converse"), data("shop#widget#w1")).await, 401);
    assert_eq!(send(format!("{base}/brains/hosted/shop/short/actions"), data("shop#widget#w1")).await, 401);
    assert_eq!(send(format!("{base}/brains/hosted/nobody/{HOOK_SECRET}/converse"), data("x")).await, 404);
    // Another agent's conversation cannot be reached through this agent's URL.
    assert_eq!(hosted.call_webhook("converse", data("other#widget#w1")).await.0, 404);
    assert_eq!(hosted.call_webhook("converse", json!({"botId": BOT_ID})).await.0, 400);
    let (status, body) = hosted.call_webhook("converse", data("shop#widget#w1")).await;
    assert_eq!((status, body), (200, json!({"isOnline": true})));
    // An unknown action is a 404 naming it; a missing input a 400 naming it.
    let trigger =
        |name: &str| json!({"botId": BOT_ID, "platformConversationId": "shop#widget#w1", "name": name, "data": []});
    let (status, body) = hosted.call_webhook("actions", trigger("delete_everything")).await;
    assert_eq!(status, 404);
    assert!(body.to_string().contains("delete_everything"));
    let (status, body) = hosted.call_webhook("actions", trigger("get_account")).await;
    assert_eq!(status, 400);
    assert!(body.to_string().contains("email"), "{body}");

    // Without a desk nobody is online.
    let mut agent = hub.running.ports.store.get_agent("shop").await.unwrap().unwrap();
    agent.desk = baton_core::agent::DeskConfig::None;
    hub.running.ports.store.put_agent(&agent).await.unwrap();
    let (_, body) = hosted.call_webhook("converse", data("shop#widget#w1")).await;
    assert_eq!(body, json!({"isOnline": false}));
}

#[tokio::test]
async fn a_rejected_key_hands_the_user_over_and_alerts() {
    let (hub, _hosted, _) = setup("ua-wrong-key").await;
    let w = WidgetClient::start(&hub.base, "shop", Some("bo@example.com")).await;
    w.send("hello").await;
    let est = hub.desk.first_to("/conversation/establish").await;
    assert!(est.body["reason"].as_str().unwrap().contains("failed"), "{}", est.body);
    let alerts = hub.running.ports.alerts.recent();
    assert!(alerts.iter().any(|a| a.contains("rejected")), "{alerts:?}");
    assert!(alerts.iter().all(|a| !a.contains("ua-wrong-key")));
}
