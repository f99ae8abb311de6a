//! Zoho SalesIQ end to end on `baton serve`, against the fake SalesIQ + Zoho Accounts
//! server, with webhooks signed by an RSA key generated for the test (seed 002's flows):
//! 1. a visitor in SalesIQ is answered by the AI through the REST API, and the hub's own
//!    posts coming back as `conversation.operator.replied` are never taken for a human;
//! 2. a Telegram user is handed to a SalesIQ conversation opened as the visitor, with the
//!    history, and the operator's replies travel back until either side ends;
//! 3. a SalesIQ visitor is transferred to a department inside SalesIQ, and the hub stays
//!    silent until the conversation is completed.
//!
//! Plus: tampered, unsigned and replayed webhooks, a desk outage, a revoked refresh token.

mod common;

use baton_core::agent::{DeskConfig, TelegramConfig};
use baton_core::model::Secret;
use baton_core::{Channel, ConversationKey, State};
use baton_tests::salesiq::{
    completed, created, operator_replied, redelivered, visitor_replied, FakeZoho, Kind, WebhookSigner, DEPARTMENT_ID,
    OPERATOR_ID,
};
use baton_tests::telegram::{callback_update, text_update, FakeTelegram};
use common::{hub_with, Hub};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);
const BOT_TOKEN: &str = "7654321:AAE_salesiq-e2e";
const HOOK_SECRET: &str = "salesiq-e2e-hook";

struct Setup {
    hub: Hub,
    zoho: FakeZoho,
    signer: WebhookSigner,
    tg: FakeTelegram,
}

async fn setup() -> Setup {
    let zoho = FakeZoho::start().await;
    let signer = WebhookSigner::new();
    let tg = FakeTelegram::start(BOT_TOKEN).await;
    let mut cfg = zoho.config();
    cfg.webhook_public_keys = vec![signer.public_key_pem()];
    cfg.bot_operator_id = Some(OPERATOR_ID.into());
    let api = tg.url();
    let hub = hub_with(Arc::new(baton_runtime::clock::SystemClock), move |a| {
        a.salesiq = Some(cfg);
        a.desk = DeskConfig::Salesiq { department_id: DEPARTMENT_ID.into(), operator_id: None };
        a.channels.telegram = Some(TelegramConfig {
            bot_token: Secret(BOT_TOKEN.into()),
            secret_token: Secret(HOOK_SECRET.into()),
            api_base: api,
            poll: false,
        });
    })
    .await;
    Setup { hub, zoho, signer, tg }
}

impl Setup {
    async fn webhook(&self, body: &[u8]) -> reqwest::Response {
        let sig = self.signer.sign(body);
        self.webhook_with(body, Some(&sig)).await
    }

    async fn webhook_with(&self, body: &[u8], signature: Option<&str>) -> reqwest::Response {
        let mut req = reqwest::Client::new()
            .post(format!("{}/desks/salesiq/shop", self.hub.base))
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(s) = signature {
            req = req.header("X-Siqsignature", s);
        }
        req.send().await.unwrap()
    }

    async fn telegram(&self, update: Value) {
        let r = reqwest::Client::new()
            .post(format!("{}/channels/telegram/shop", self.hub.base))
            .header("X-Telegram-Bot-Api-Secret-Token", HOOK_SECRET)
            .json(&update)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    /// Operator posts into `conversation` (the AI's answers and notices), in order.
    fn posts_to(&self, conversation: &str) -> Vec<String> {
        self.zoho
            .requests_of(Kind::OperatorMessage)
            .into_iter()
            .filter(|r| r.status == 200 && r.conversation_id.as_deref() == Some(conversation))
            .map(|r| r.body["text"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    async fn state_of(&self, key: &ConversationKey) -> State {
        self.hub.running.ports.store.load_session(key).await.unwrap().expect("session").session.state
    }

    /// Let the worker finish whatever is queued (every event is applied within this).
    async fn settle(&self) {
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
}

fn text(m: &Value) -> &str {
    m["text"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn salesiq_visitors_get_ai_answers_and_a_transfer_inside_salesiq() {
    let s = setup().await;
    let conv = "40526000000123001";
    let key = ConversationKey::new("shop", Channel::Salesiq, conv).unwrap();

    // SalesIQ checks the URL with HEAD when the webhook is registered.
    let head = reqwest::Client::new().head(format!("{}/desks/salesiq/shop", s.hub.base)).send().await.unwrap();
    assert_eq!(head.status(), 200);

    // Unsigned, tampered and foreign-signed notifications are refused with 401 and stored nowhere.
    let body = created(conv, "What are your opening hours?", Some("tricia@zylker.com"));
    assert_eq!(s.webhook_with(&body, None).await.status(), 401);
    let mut tampered = body.clone();
    let at = tampered.len() - 3;
    tampered[at] ^= 1;
    let sig = s.signer.sign(&body);
    assert_eq!(s.webhook_with(&tampered, Some(&sig)).await.status(), 401);
    assert_eq!(s.webhook_with(&body, Some(&WebhookSigner::new().sign(&body))).await.status(), 401);
    assert!(s.hub.running.ports.store.load_session(&key).await.unwrap().is_none());

    // Flow 1: the question of a new conversation is answered in the conversation.
    assert_eq!(s.webhook(&body).await.status(), 200);
    // A redelivery (attempt 2) changes nothing, nor does the question sent again as a reply.
    assert_eq!(s.webhook(&redelivered(&body, 2)).await.status(), 200);
    assert_eq!(s.webhook(&visitor_replied(conv, "m-1", "What are your opening hours?")).await.status(), 200);
    let posts = s.zoho.wait_for(Kind::OperatorMessage, 1, WAIT).await;
    assert_eq!(posts[0].conversation_id.as_deref(), Some(conv));
    assert_eq!(posts[0].body["text"], "We are open 9-17 on weekdays.");
    assert!(posts[0].authorization.as_deref().is_some_and(|a| a.starts_with("Zoho-oauthtoken ")));

    // The hub's own post comes back as an operator reply: not a human, the bot keeps answering.
    let echo = operator_replied(conv, "msg-echo-1", OPERATOR_ID, "We are open 9-17 on weekdays.");
    assert_eq!(s.webhook(&echo).await.status(), 200);
    s.webhook(&visitor_replied(conv, "m-2", "How long does shipping take?")).await;
    s.zoho.wait_for(Kind::OperatorMessage, 2, WAIT).await;
    assert_eq!(s.posts_to(conv)[1], "Shipping takes 2-4 days.");
    // Asking the first question again later is a real message and is answered.
    s.webhook(&visitor_replied(conv, "m-2b", "What are your opening hours?")).await;
    s.zoho.wait_for(Kind::OperatorMessage, 3, WAIT).await;
    assert_eq!(s.posts_to(conv)[2], "We are open 9-17 on weekdays.");
    assert_eq!(s.state_of(&key).await, State::Bot);

    // Flow 3: a handoff is a transfer to the department inside SalesIQ.
    s.webhook(&visitor_replied(conv, "m-3", "I want to talk to a human")).await;
    let transfer = s.zoho.wait_for(Kind::Transfer, 1, WAIT).await;
    assert_eq!(transfer[0].conversation_id.as_deref(), Some(conv));
    assert_eq!(transfer[0].body["department_id"], DEPARTMENT_ID);
    assert_eq!(s.posts_to(conv).len(), 4, "one notice before the transfer: {:?}", s.posts_to(conv));

    // From now on the visitor and the operator talk in SalesIQ; the hub says nothing.
    s.webhook(&visitor_replied(conv, "m-4", "hello?")).await;
    s.webhook(&operator_replied(conv, "m-5", "40526000000777001", "Hi, Anna here. How can I help?")).await;
    s.webhook(&visitor_replied(conv, "m-6", "How long does shipping take?")).await;
    s.settle().await;
    assert!(matches!(s.state_of(&key).await, State::WithHuman { .. }));
    assert_eq!(s.posts_to(conv).len(), 4, "the hub stayed silent: {:?}", s.posts_to(conv));
    assert!(s.zoho.requests_of(Kind::VisitorMessage).is_empty(), "nothing relayed inside SalesIQ");

    // Completed: the bot has the conversation again.
    s.webhook(&completed(conv)).await;
    s.settle().await;
    assert_eq!(s.state_of(&key).await, State::Bot);
    assert_eq!(s.zoho.token_requests(), 1, "one access token served every call");
    s.hub.running.stop().await;
}

#[tokio::test]
async fn a_telegram_user_is_handed_to_a_salesiq_operator_and_back() {
    let s = setup().await;
    s.telegram(text_update(1, 42, "How long does shipping take?")).await;
    s.tg.wait_for_messages(1, WAIT).await;

    // Flow 2: the handoff opens a SalesIQ conversation as the visitor, with the history.
    s.telegram(text_update(2, 42, "I want to talk to a human")).await;
    let open = s.zoho.wait_for(Kind::OpenConversation, 1, WAIT).await;
    let question = open[0].body["question"].as_str().unwrap();
    assert!(question.contains("How long does shipping take?"), "{question}");
    assert!(question.contains("Shipping takes 2-4 days."), "{question}");
    assert!(question.contains("I want to talk to a human"), "{question}");
    assert_eq!(open[0].body["department_id"], DEPARTMENT_ID);
    assert_eq!(open[0].body["visitor"]["email"], "support@example.com");
    let sent = s.tg.wait_for_messages(2, WAIT).await;
    assert!(!text(&sent[1]).is_empty(), "the user is told to wait");

    // The user's next message is posted as the visitor; that tells us the conversation id.
    s.telegram(text_update(3, 42, "My order 1234 is late")).await;
    let posted = s.zoho.wait_for(Kind::VisitorMessage, 1, WAIT).await;
    assert_eq!(posted[0].body["text"], "My order 1234 is late");
    let conv = posted[0].conversation_id.clone().expect("conversation id in the path");

    // Our visitor post comes back as visitor.replied: it is not relayed anywhere.
    s.webhook(&visitor_replied(&conv, "v-1", "My order 1234 is late")).await;
    // The operator answers: the user gets "a human joined" and the reply, once.
    let reply = operator_replied(&conv, "o-1", "40526000000777001", "Hi, Anna here. Let me check.");
    assert_eq!(s.webhook(&reply).await.status(), 200);
    assert_eq!(s.webhook(&redelivered(&reply, 2)).await.status(), 200);
    let sent = s.tg.wait_for_messages(4, WAIT).await;
    assert_eq!(text(&sent[3]), "Hi, Anna here. Let me check.");
    s.settle().await;
    assert_eq!(s.tg.sent_messages().len(), 4, "no duplicates: {:?}", s.tg.sent_messages());
    assert_eq!(s.zoho.requests_of(Kind::VisitorMessage).len(), 1, "the echo was not relayed back");

    // The user ends with the button: the SalesIQ conversation is closed too.
    s.telegram(callback_update(4, 42, "/end")).await;
    s.zoho.wait_for(Kind::Close, 1, WAIT).await;
    assert!(s.zoho.is_closed(&conv));
    s.tg.wait_for_messages(5, WAIT).await;
    let key = ConversationKey::new("shop", Channel::Telegram, "42").unwrap();
    assert_eq!(s.state_of(&key).await, State::Bot);
    s.hub.running.stop().await;
}

#[tokio::test]
async fn a_salesiq_outage_loses_nothing_and_keeps_the_order() {
    let s = setup().await;
    s.telegram(text_update(1, 77, "human")).await;
    s.zoho.wait_for(Kind::OpenConversation, 1, WAIT).await;
    s.telegram(text_update(2, 77, "first")).await;
    let conv = s.zoho.wait_for(Kind::VisitorMessage, 1, WAIT).await[0].conversation_id.clone().unwrap();

    // SalesIQ answers 503 (Retry-After: 2) three times while the user writes three messages.
    s.zoho.fail_next(3, 503);
    for (i, t) in ["second", "third", "fourth"].iter().enumerate() {
        s.telegram(text_update(3 + i as i64, 77, t)).await;
    }
    let delivered = |zoho: &FakeZoho| -> Vec<String> {
        zoho.requests_of(Kind::VisitorMessage)
            .iter()
            .filter(|r| r.status == 200)
            .map(|r| r.body["text"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    while delivered(&s.zoho).len() < 4 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(delivered(&s.zoho), ["first", "second", "third", "fourth"]);
    let failed = s.zoho.requests_of(Kind::VisitorMessage).iter().filter(|r| r.status == 503).count();
    assert_eq!(failed, 3, "the outage was real");

    // The operator completes the conversation: the Telegram user is told, the bot is back.
    s.webhook(&completed(&conv)).await;
    let key = ConversationKey::new("shop", Channel::Telegram, "77").unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while s.state_of(&key).await != State::Bot {
        assert!(std::time::Instant::now() < deadline, "completion did not end the handoff");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.hub.running.stop().await;
}

#[tokio::test]
async fn a_revoked_refresh_token_raises_one_alert_instead_of_a_loop() {
    let s = setup().await;
    // Revoked, and whatever token the start-up probe may have cached is no longer accepted.
    s.zoho.revoke_refresh_token();
    s.zoho.expire_access_tokens();
    s.telegram(text_update(1, 5, "human")).await;
    // The user is not left waiting: they are told the team cannot be reached (the probe or
    // the handoff found out first), and an operator is alerted.
    s.tg.wait_for_messages(1, WAIT).await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let alerts = s.hub.running.ports.alerts.recent();
        if alerts.iter().any(|a| a.contains("shop")) {
            assert!(alerts.iter().all(|a| !a.contains(baton_tests::salesiq::REFRESH_TOKEN)));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no alert raised");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = s.hub.running.ports.store.desk_status("shop").await.unwrap().expect("status recorded");
    assert_eq!(status.status, baton_core::model::ServiceStatus::Unavailable);
    // More traffic does not hammer Zoho Accounts: the failed refresh is remembered.
    let refreshes = s.zoho.token_requests();
    s.telegram(text_update(2, 5, "human")).await;
    s.telegram(text_update(3, 6, "human")).await;
    s.settle().await;
    assert_eq!(s.zoho.token_requests(), refreshes, "no refresh loop");
    s.hub.running.stop().await;
}
