//! Shared setup of the end-to-end tests: an in-process `baton serve` on loopback with a
//! fake webhook desk, one agent, and its token.

#![allow(dead_code)]

use baton::serve::{start, Running, ServeOptions};
use baton_core::agent::{Agent, BrainConfig, DeskConfig, FaqEntry, Policy, WidgetConfig};
use baton_core::model::Secret;
use baton_core::ports::Clock;
use baton_tests::desk::FakeDesk;
use std::sync::Arc;

pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// The operator key of the test hubs' console.
pub const CONSOLE_KEY: &str = "op_test-operator-key-0123456789";

pub struct Hub {
    pub running: Running,
    pub desk: FakeDesk,
    pub token: String,
    pub base: String,
    pub _dir: tempfile::TempDir,
}

pub fn shop_agent(desk_url: &str) -> Agent {
    let faq = |q: &str, a: &str| FaqEntry { question: q.into(), answer: a.into(), keywords: vec![] };
    Agent {
        actions: Default::default(),
        api: None,
        id: "shop".into(),
        name: "Shop".into(),
        language: "en".into(),
        brain: BrainConfig::Faq {
            faq: vec![
                faq("What are your opening hours?", "We are open 9-17 on weekdays."),
                faq("How long does shipping take?", "Shipping takes 2-4 days."),
            ],
            min_score: 1.0,
        },
        desk: DeskConfig::Webhook {
            url: desk_url.to_string(),
            username: None,
            password: None,
            signing_secret: Some(Secret(SECRET.into())),
        },
        policy: Policy::default(),
        widget: WidgetConfig::default(),
        messages: Default::default(),
        hours: None,
        fallback: Default::default(),
        channels: Default::default(),
        salesiq: None,
        intercom: None,
        livechat: None,
    }
}

pub async fn hub_with(clock: Arc<dyn Clock>, edit: impl FnOnce(&mut Agent)) -> Hub {
    hub_with_probe(clock, true, edit).await
}

/// [`hub_with`], choosing whether the desk probe runs (a test that sets the desk status
/// itself turns it off, so a probe finishing late cannot overwrite it).
pub async fn hub_with_probe(clock: Arc<dyn Clock>, desk_probe: bool, edit: impl FnOnce(&mut Agent)) -> Hub {
    hub_on(clock, desk_probe, baton::serve::Targets::Any, edit).await
}

/// [`hub_with_probe`] on a hub whose outbound calls may reach `targets`.
pub async fn hub_on(
    clock: Arc<dyn Clock>,
    desk_probe: bool,
    targets: baton::serve::Targets,
    edit: impl FnOnce(&mut Agent),
) -> Hub {
    let desk = FakeDesk::start(Some(SECRET)).await;
    let dir = tempfile::tempdir().unwrap();
    let opts = ServeOptions {
        desk_probe,
        targets,
        console_key: Some(CONSOLE_KEY.into()),
        ..ServeOptions::loopback(dir.path().join("baton.sqlite"))
    };
    let running = start(opts, clock).await.unwrap();
    let mut agent = shop_agent(&desk.url());
    edit(&mut agent);
    running.ports.store.put_agent(&agent).await.unwrap();
    let token = baton_runtime::auth::generate_token();
    running
        .ports
        .store
        .add_token("shop", &baton_runtime::auth::hash_token(&token), baton_core::Millis(0))
        .await
        .unwrap();
    let base = format!("http://{}", running.addr);
    Hub { running, desk, token, base, _dir: dir }
}

pub async fn hub() -> Hub {
    hub_with(Arc::new(baton_runtime::clock::SystemClock), |_| {}).await
}

impl Hub {
    /// The desk answers as a human, through the hub's webhook-desk route.
    pub async fn desk_reply(&self, conversation_id: &str, text: &str, webhook_id: Option<&str>) -> reqwest::Response {
        let mut req = reqwest::Client::new()
            .post(format!("{}/desks/webhook/shop/v1/human/message/receive", self.base))
            .bearer_auth(&self.token)
            .json(
                &serde_json::json!({"conversation_id": conversation_id, "timestamp": 1700000000000i64, "body": text}),
            );
        if let Some(id) = webhook_id {
            req = req.header("webhook-id", id);
        }
        req.send().await.unwrap()
    }

    pub async fn desk_close(&self, conversation_id: &str) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("{}/desks/webhook/shop/v1/human/close", self.base))
            .bearer_auth(&self.token)
            .json(&serde_json::json!({"conversation_id": conversation_id, "timestamp": 1700000000000i64}))
            .send()
            .await
            .unwrap()
    }
}
