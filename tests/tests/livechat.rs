//! The LiveChat connector over real HTTP against the fake LiveChat (`baton_tests::livechat`):
//! the agent token (refreshed once, shared through the `KeyValue` store under a lease), customer
//! tokens per end user, bot tokens, the `Desk` port in both modes (start a chat as the customer;
//! transfer a LiveChat chat), the bot's answers and the recognition of their echoes, status
//! mapping, idempotent retries, webhook parsing and the secret check, the code exchange, and
//! errors that never show a credential.

use baton_connectors::livechat::{self, LivechatAuth, LivechatClient, LivechatDesk, WebhookEvent};
use baton_core::agent::Agent;
use baton_core::effect::HandoffRequest;
use baton_core::model::{Button, Channel, CloseReason, ConversationKey, Millis, OutMessage, Role, ServiceStatus, Turn};
use baton_core::ports::{Clock, DeliveryError, Desk};
use baton_tests::livechat::{self as fake, FakeLivechat, Kind};
use baton_tests::memkv::MemKv;
use serde_json::json;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(5);
const HOUR_MS: i64 = 3_600_000;

/// A clock that stands still unless a test moves it.
struct FixedClock(AtomicI64);

impl FixedClock {
    fn new() -> Arc<FixedClock> {
        Arc::new(FixedClock(AtomicI64::new(1_750_000_000_000)))
    }
    fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for FixedClock {
    fn now(&self) -> Millis {
        Millis(self.0.load(Ordering::SeqCst))
    }
}

struct Setup {
    fake: FakeLivechat,
    kv: Arc<MemKv>,
    clock: Arc<FixedClock>,
    agent: Agent,
}

impl Setup {
    async fn new() -> Setup {
        let fake = FakeLivechat::start().await;
        let agent = agent(&fake);
        Setup { fake, kv: Arc::new(MemKv::default()), clock: FixedClock::new(), agent }
    }

    fn client(&self) -> LivechatClient {
        let timeout = Duration::from_secs(5);
        LivechatClient::new(
            baton_connectors::outbound::http_client(timeout, baton_connectors::outbound::Targets::Any),
            timeout,
            self.kv.clone(),
            self.clock.clone(),
        )
    }

    fn auth(&self) -> LivechatAuth {
        let timeout = Duration::from_secs(5);
        LivechatAuth::new(
            baton_connectors::outbound::http_client(timeout, baton_connectors::outbound::Targets::Any),
            timeout,
            self.kv.clone(),
            self.clock.clone(),
        )
    }

    fn desk(&self) -> LivechatDesk {
        LivechatDesk::new(self.client())
    }
}

fn agent(fake: &FakeLivechat) -> Agent {
    serde_json::from_value(json!({
        "id": "shop",
        "desk": {"kind": "livechat", "group_id": fake::GROUP_ID},
        "livechat": serde_json::to_value(fake.config()).unwrap(),
    }))
    .unwrap()
}

fn request() -> HandoffRequest {
    HandoffRequest {
        params: Default::default(),
        handoff_id: "h-1".into(),
        email: "ann@example.com".into(),
        history: vec![
            Turn { role: Role::User, text: "Hi, my parcel is late".into(), at: Millis(1) },
            Turn { role: Role::Bot, text: "Sorry to hear that. What is the order number?".into(), at: Millis(2) },
            Turn { role: Role::User, text: "A-1042".into(), at: Millis(3) },
        ],
        question: "Can a person check where it is?".into(),
        reason: "the user asked for a human".into(),
    }
}

fn telegram_key(user: &str) -> ConversationKey {
    ConversationKey::new("shop", Channel::Telegram, user).unwrap()
}

fn next_key() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("effect-{}", N.fetch_add(1, Ordering::Relaxed))
}

/// No credential of the fake may appear in `text`.
fn assert_no_secrets(text: &str) {
    for secret in
        [fake::CLIENT_SECRET, fake::REFRESH_TOKEN, fake::BOT_SECRET, fake::WEBHOOK_SECRET, fake::AUTH_CODE, "dal:"]
    {
        assert!(!text.contains(secret), "{secret:?} leaked into: {text}");
    }
}

// -------------------------------------------------------------------------------------------
// Tokens

#[tokio::test]
async fn agent_token_is_refreshed_once_and_shared_through_the_store() {
    let s = Setup::new().await;
    let cfg = s.fake.config();
    let t1 = s.auth().agent_token("shop", &cfg).await.unwrap();
    let t2 = s.auth().agent_token("shop", &cfg).await.unwrap();
    assert_eq!(t1.expose(), t2.expose());
    assert_eq!(s.fake.refresh_requests(), 1);
    let refresh = &s.fake.wait_for(Kind::Refresh, 1, WAIT).await[0];
    assert_eq!(refresh.body["grant_type"], "refresh_token");
    assert_eq!(refresh.body["client_id"], fake::CLIENT_ID);
    assert_eq!(refresh.body["client_secret"], fake::CLIENT_SECRET);
    assert_eq!(refresh.body["refresh_token"], fake::REFRESH_TOKEN);
    assert_eq!(refresh.path, "/v2/token");
    // Ten minutes before the 8 h are up the cached token is gone: one more refresh.
    s.clock.advance(8 * HOUR_MS - 9 * 60_000);
    let t3 = s.auth().agent_token("shop", &cfg).await.unwrap();
    assert_ne!(t3.expose(), t1.expose());
    assert_eq!(s.fake.refresh_requests(), 2);
    assert!(!s.kv.dump().contains(fake::REFRESH_TOKEN) && !s.kv.dump().contains(fake::CLIENT_SECRET));
}

#[tokio::test]
async fn concurrent_first_calls_refresh_once_under_the_lease() {
    let s = Setup::new().await;
    s.fake.set_refresh_delay(Duration::from_millis(400));
    let cfg = Arc::new(s.fake.config());
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let (auth, cfg) = (s.auth(), cfg.clone());
            tokio::spawn(async move { auth.agent_token("shop", &cfg).await.map(|t| t.expose().to_string()) })
        })
        .collect();
    let mut tokens = Vec::new();
    for c in calls {
        tokens.push(c.await.unwrap().unwrap());
    }
    assert_eq!(s.fake.refresh_requests(), 1, "one refresh under the lease: {:?}", s.fake.arrived());
    assert!(tokens.iter().all(|t| *t == tokens[0]));
}

#[tokio::test]
async fn customer_tokens_keep_one_customer_per_end_user() {
    let s = Setup::new().await;
    let cfg = s.fake.config();
    let ann = telegram_key("42").to_string();
    let bob = telegram_key("43").to_string();
    let (t1, e1) = s.auth().customer_token("shop", &cfg, &ann).await.unwrap();
    let (t2, e2) = s.auth().customer_token("shop", &cfg, &ann).await.unwrap();
    assert_eq!((t1.expose(), &e1), (t2.expose(), &e2), "cached");
    let grants = s.fake.wait_for(Kind::CustomerToken, 1, WAIT).await;
    assert_eq!(
        grants[0].body,
        json!({"grant_type": "agent_token", "client_id": fake::CLIENT_ID, "response_type": "token"})
    );
    assert!(grants[0].authorization.as_deref().unwrap().starts_with("Bearer dal:agent-"));
    let (_, e3) = s.auth().customer_token("shop", &cfg, &bob).await.unwrap();
    assert_ne!(e3, e1, "another end user, another customer");
    assert_eq!(s.fake.customers(), vec![e1.clone(), e3.clone()]);
    // Shortly before the 8 h expiry: a new token for the same customer (entity_id sent).
    s.clock.advance(8 * HOUR_MS - 5 * 60_000);
    let (t4, e4) = s.auth().customer_token("shop", &cfg, &ann).await.unwrap();
    assert_eq!(e4, e1);
    assert_ne!(t4.expose(), t1.expose());
    let grants = s.fake.requests_of(Kind::CustomerToken);
    assert_eq!(grants.len(), 3);
    assert_eq!(grants[2].body["entity_id"], e1.as_str());
    assert_eq!(s.fake.customers().len(), 2, "no new customer");
    // The agent token expired in between and was refreshed on the way.
    assert_eq!(s.fake.refresh_requests(), 2);
}

#[tokio::test]
async fn revoked_refresh_token_is_unauthorized_and_not_retried_within_the_window() {
    let s = Setup::new().await;
    s.fake.revoke_refresh_token();
    let desk = s.desk();
    let e = desk.open(&s.agent, &telegram_key("42"), &request(), &next_key()).await.unwrap_err();
    let DeliveryError::Unauthorized { message } = &e else { panic!("expected Unauthorized, got {e}") };
    assert!(message.contains("baton desks livechat authorize shop"), "{message}");
    assert!(message.contains("invalid_grant"), "{message}");
    assert_no_secrets(&e.to_string());
    assert_eq!(s.fake.refresh_requests(), 1);
    // Within five minutes nothing is asked again, by any process.
    for _ in 0..3 {
        let e = s.desk().open(&s.agent, &telegram_key("42"), &request(), &next_key()).await.unwrap_err();
        assert!(matches!(e, DeliveryError::Unauthorized { .. }), "{e}");
    }
    let (status, detail) = desk.probe(&s.agent).await;
    assert_eq!(status, ServiceStatus::Unavailable);
    assert!(detail.contains("authorize") && detail.contains("not retried"), "{detail}");
    assert_no_secrets(&detail);
    assert_eq!(s.fake.refresh_requests(), 1);
    assert!(s.fake.requests_of(Kind::StartChat).is_empty());
    // After the window it is tried once more.
    s.clock.advance(5 * 60_000 + 1);
    assert!(s.auth().agent_token("shop", &s.fake.config()).await.is_err());
    assert_eq!(s.fake.refresh_requests(), 2);
}

#[tokio::test]
async fn expired_tokens_are_renewed_once_and_the_call_succeeds() {
    let s = Setup::new().await;
    let desk = s.desk();
    let key = telegram_key("42");
    let chat = desk.open(&s.agent, &key, &request(), &next_key()).await.unwrap();
    s.fake.expire_tokens();
    desk.post(&s.agent, &chat, "still there?", &next_key()).await.unwrap();
    let posts = s.fake.requests_of(Kind::CustomerEvent);
    let seen: Vec<u16> = posts.iter().map(|p| p.status).collect();
    assert_eq!(seen, vec![401, 200], "{:?}", s.fake.arrived());
    assert_ne!(posts[0].authorization, posts[1].authorization);
    // The bot token too.
    s.client().send_as_bot(&s.agent, "CHAT9", &OutMessage::new(Role::Bot, "hi"), &next_key()).await.unwrap();
    s.fake.expire_tokens();
    s.client().send_as_bot(&s.agent, "CHAT9", &OutMessage::new(Role::Bot, "again"), &next_key()).await.unwrap();
    let statuses: Vec<u16> = s.fake.requests_of(Kind::AgentEvent).iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![200, 401, 200]);
}

#[tokio::test]
async fn a_newly_issued_token_that_is_rejected_is_unauthorized_without_a_loop() {
    let s = Setup::new().await;
    s.fake.reject_all_tokens();
    let e = s.client().send_as_bot(&s.agent, "C1", &OutMessage::new(Role::Bot, "x"), &next_key()).await.unwrap_err();
    assert!(matches!(&e, DeliveryError::Unauthorized { message } if message.contains("newly issued")), "{e}");
    assert_no_secrets(&e.to_string());
    assert_eq!(s.fake.requests_of(Kind::AgentEvent).len(), 1, "no second try with the same new token");
    // Within the failure window neither a new bot token nor the API is asked again.
    let e = s.client().send_as_bot(&s.agent, "C1", &OutMessage::new(Role::Bot, "y"), &next_key()).await.unwrap_err();
    assert!(matches!(e, DeliveryError::Unauthorized { .. }), "{e}");
    assert_eq!(s.fake.requests_of(Kind::IssueBotToken).len(), 1);
    assert_eq!(s.fake.requests_of(Kind::AgentEvent).len(), 1);
}

// -------------------------------------------------------------------------------------------
// other channel -> LiveChat

#[tokio::test]
async fn open_starts_a_chat_as_the_customer_with_the_transcript() {
    let s = Setup::new().await;
    let desk = s.desk();
    let key = telegram_key("42");
    let idem = next_key();
    let chat_id = desk.open(&s.agent, &key, &request(), &idem).await.unwrap();
    let start = &s.fake.wait_for(Kind::StartChat, 1, WAIT).await[0];
    assert_eq!(start.status, 200);
    assert_eq!(start.query.as_deref(), Some(format!("organization_id={}", fake::ORGANIZATION_ID).as_str()));
    assert!(start.authorization.as_deref().unwrap().starts_with("Bearer dal:customer-"));
    assert_eq!(start.body["chat"]["access"]["group_ids"], json!([fake::GROUP_ID]));
    assert_eq!(start.body["continuous"], true);
    let event = &start.body["chat"]["thread"]["events"][0];
    assert_eq!(event["type"], "message");
    let text = event["text"].as_str().unwrap();
    for part in [
        "Reason: the user asked for a human",
        "User: Hi, my parcel is late",
        "Bot: Sorry to hear that.",
        "Question: Can a person check where it is?",
        "E-mail: ann@example.com",
        "Channel: telegram",
    ] {
        assert!(text.contains(part), "{part:?} missing in {text}");
    }
    assert!(event["custom_id"].as_str().unwrap().starts_with(livechat::CUSTOM_ID_PREFIX));
    let chat = s.fake.chat(&chat_id).unwrap();
    assert_eq!(chat.customer.as_deref(), Some(s.fake.customers()[0].as_str()));
    assert_eq!(chat.group_ids, vec![fake::GROUP_ID]);
    // The same effect again (a retry after a crash): no second chat.
    assert_eq!(desk.open(&s.agent, &key, &request(), &idem).await.unwrap(), chat_id);
    assert_eq!(s.fake.requests_of(Kind::StartChat).len(), 1);
    // A second handoff of the same user: same customer, new chat.
    let again = desk.open(&s.agent, &key, &request(), &next_key()).await.unwrap();
    assert_ne!(again, chat_id);
    assert_eq!(s.fake.customers().len(), 1);
    // The hub's customer and its echo are the hub's own.
    let client = s.client();
    let customer = s.fake.customers()[0].clone();
    assert!(client.is_own_event(&s.agent, &customer, None).await);
    assert!(!client.is_agent(&s.agent, &customer).await);
    assert!(client.is_agent(&s.agent, "smith@example.com").await);
    assert!(!client.is_own_event(&s.agent, "smith@example.com", None).await);
}

#[tokio::test]
async fn post_sends_the_users_message_as_the_customer_once() {
    let s = Setup::new().await;
    let desk = s.desk();
    let chat_id = desk.open(&s.agent, &telegram_key("42"), &request(), &next_key()).await.unwrap();
    let idem = next_key();
    desk.post(&s.agent, &chat_id, "It is order A-1042.", &idem).await.unwrap();
    desk.post(&s.agent, &chat_id, "It is order A-1042.", &idem).await.unwrap();
    let posts = s.fake.wait_for(Kind::CustomerEvent, 1, WAIT).await;
    assert_eq!(s.fake.requests_of(Kind::CustomerEvent).len(), 1, "idempotent");
    let p = &posts[0];
    assert_eq!(p.body["chat_id"], chat_id.as_str());
    assert_eq!(p.body["event"]["type"], "message");
    assert_eq!(p.body["event"]["text"], "It is order A-1042.");
    assert_eq!(p.body["attach_to_last_thread"], true);
    let custom_id = p.body["event"]["custom_id"].as_str().unwrap();
    assert!(custom_id.starts_with(livechat::CUSTOM_ID_PREFIX));
    assert_eq!(p.authorization, s.fake.requests_of(Kind::StartChat)[0].authorization, "the same customer token");
    assert!(p.query.as_deref().unwrap().contains("organization_id="));
    // Its echo is recognised by the custom id.
    assert!(s.client().is_own_event(&s.agent, "anyone", Some(custom_id)).await);
    // A chat the hub did not start cannot take posts.
    let e = desk.post(&s.agent, "UNKNOWN", "x", &next_key()).await.unwrap_err();
    assert!(matches!(e, DeliveryError::Permanent { .. }), "{e}");
}

#[tokio::test]
async fn close_says_why_then_deactivates_once() {
    let s = Setup::new().await;
    let desk = s.desk();
    let chat_id = desk.open(&s.agent, &telegram_key("42"), &request(), &next_key()).await.unwrap();
    let idem = next_key();
    desk.close(&s.agent, &chat_id, CloseReason::Timeout, &idem).await.unwrap();
    desk.close(&s.agent, &chat_id, CloseReason::Timeout, &idem).await.unwrap();
    let notes = s.fake.requests_of(Kind::CustomerEvent);
    assert_eq!(notes.len(), 1);
    assert!(notes[0].body["event"]["text"].as_str().unwrap().contains("did not reply in time"));
    let deactivations = s.fake.requests_of(Kind::CustomerDeactivate);
    assert_eq!(deactivations.len(), 1);
    assert_eq!(deactivations[0].body, json!({"id": chat_id}));
    assert!(!s.fake.chat(&chat_id).unwrap().active);
    // Closing a chat the agent closed already is fine.
    let other = desk.open(&s.agent, &telegram_key("43"), &request(), &next_key()).await.unwrap();
    s.fake.deactivate(&other);
    desk.close(&s.agent, &other, CloseReason::UserClosed, &next_key()).await.unwrap();
    let statuses: Vec<u16> = s.fake.requests_of(Kind::CustomerDeactivate).iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![200, 400]);
}

// -------------------------------------------------------------------------------------------
// LiveChat -> LiveChat

#[tokio::test]
async fn handoff_in_a_livechat_chat_transfers_it_to_the_group_as_the_bot() {
    let s = Setup::new().await;
    s.fake.add_chat("PJ0MRSHTDG");
    let desk = s.desk();
    let key = ConversationKey::new("shop", Channel::Livechat, "PJ0MRSHTDG").unwrap();
    let idem = next_key();
    assert_eq!(desk.open(&s.agent, &key, &request(), &idem).await.unwrap(), "PJ0MRSHTDG");
    assert_eq!(desk.open(&s.agent, &key, &request(), &idem).await.unwrap(), "PJ0MRSHTDG");
    let transfers = s.fake.requests_of(Kind::Transfer);
    assert_eq!(transfers.len(), 1, "idempotent");
    let t = &transfers[0];
    assert_eq!(t.path, "/v3.6/agent/action/transfer_chat");
    assert_eq!(t.body["id"], "PJ0MRSHTDG");
    assert_eq!(t.body["target"], json!({"type": "group", "ids": [fake::GROUP_ID]}));
    assert_eq!(t.body["ignore_agents_availability"], true);
    assert!(t.authorization.as_deref().unwrap().starts_with("Bearer dal:bot-"), "as the bot");
    let bot = s.fake.wait_for(Kind::IssueBotToken, 1, WAIT).await;
    assert_eq!(bot[0].body["bot_id"], fake::BOT_ID);
    assert_eq!(bot[0].body["organization_id"], fake::ORGANIZATION_ID);
    // A note for the agents went first, visible to agents only.
    let note = &s.fake.requests_of(Kind::AgentEvent)[0];
    assert_eq!(note.body["event"]["visibility"], "agents");
    assert!(note.body["event"]["text"].as_str().unwrap().contains("Can a person check where it is?"));
    let chat = s.fake.chat("PJ0MRSHTDG").unwrap();
    assert_eq!(chat.group_ids, vec![fake::GROUP_ID]);
    assert!(s.fake.requests_of(Kind::StartChat).is_empty() && s.fake.requests_of(Kind::CustomerToken).is_empty());
    // Closing from the hub's side ends the chat through the Agent Chat API.
    desk.close(&s.agent, "PJ0MRSHTDG", CloseReason::UserClosed, &next_key()).await.unwrap();
    assert_eq!(s.fake.requests_of(Kind::AgentDeactivate)[0].body["id"], "PJ0MRSHTDG");
    assert!(!s.fake.chat("PJ0MRSHTDG").unwrap().active);
}

#[tokio::test]
async fn the_bot_answers_once_and_its_echo_is_its_own() {
    let s = Setup::new().await;
    let client = s.client();
    let mut m = OutMessage::new(Role::Bot, "Our hours are 9–17. Anything else?");
    m.buttons = vec![Button { label: "Talk to a person".into(), value: "human".into() }];
    let idem = next_key();
    client.send_as_bot(&s.agent, "PJ0MRSHTDG", &m, &idem).await.unwrap();
    client.send_as_bot(&s.agent, "PJ0MRSHTDG", &m, &idem).await.unwrap();
    let sent = s.fake.requests_of(Kind::AgentEvent);
    assert_eq!(sent.len(), 1, "idempotent");
    assert_eq!(sent[0].body["event"]["text"], "Our hours are 9–17. Anything else?\n• Talk to a person");
    assert_eq!(sent[0].body["event"]["visibility"], "all");
    let custom_id = sent[0].body["event"]["custom_id"].as_str().unwrap().to_string();
    // The echo comes back as an incoming_event by the bot with our custom id.
    let echo = fake::incoming_event("PJ0MRSHTDG", "K6_2", fake::BOT_ID, "Our hours …", Some(&custom_id));
    let n = livechat::parse(&echo).unwrap();
    let WebhookEvent::Message { author_id, custom_id: cid, .. } = n.event else { panic!() };
    assert!(client.is_own_event(&s.agent, &author_id, cid.as_deref()).await);
    assert!(client.is_own_event(&s.agent, fake::BOT_ID, None).await);
    assert!(client.is_agent(&s.agent, "smith@example.com").await);
    assert!(!client.is_agent(&s.agent, "b7eff798-f8df-4364-8059-649c35c9ed0c").await);
    // Without a bot configured, answering is a configuration error.
    let mut no_bot = s.agent.clone();
    no_bot.livechat.as_mut().unwrap().bot_secret = None;
    let e = client.send_as_bot(&no_bot, "PJ0MRSHTDG", &m, &next_key()).await.unwrap_err();
    assert!(matches!(e, DeliveryError::Permanent { ref message } if message.contains("bot_secret")), "{e}");
}

#[tokio::test]
async fn the_bot_keeps_answering_when_the_refresh_token_is_revoked() {
    let s = Setup::new().await;
    s.fake.revoke_refresh_token();
    s.client().send_as_bot(&s.agent, "C1", &OutMessage::new(Role::Bot, "hi"), &next_key()).await.unwrap();
    let issued = s.fake.requests_of(Kind::IssueBotToken);
    assert_eq!((issued[0].status, issued[0].authorization.as_deref()), (200, None));
    assert_eq!(s.fake.requests_of(Kind::AgentEvent)[0].status, 200);
}

#[tokio::test]
async fn a_wrong_bot_secret_is_reported_and_not_retried_within_the_window() {
    let s = Setup::new().await;
    let mut agent = s.agent.clone();
    agent.livechat.as_mut().unwrap().bot_secret = Some(baton_core::model::Secret("wrong-bot-secret".into()));
    let e = s.client().send_as_bot(&agent, "C1", &OutMessage::new(Role::Bot, "x"), &next_key()).await.unwrap_err();
    assert!(matches!(e, DeliveryError::Permanent { ref message } if message.contains("bot_secret")), "{e}");
    assert!(!e.to_string().contains("wrong-bot-secret"));
    let _ = s.client().send_as_bot(&agent, "C1", &OutMessage::new(Role::Bot, "x"), &next_key()).await.unwrap_err();
    assert_eq!(s.fake.requests_of(Kind::IssueBotToken).len(), 1);
    let (status, _) = s.desk().probe(&agent).await;
    assert_eq!(status, ServiceStatus::Unavailable);
}

// -------------------------------------------------------------------------------------------
// Status mapping, regions, probe

#[tokio::test]
async fn statuses_map_to_delivery_errors() {
    let s = Setup::new().await;
    let desk = s.desk();
    let chat_id = desk.open(&s.agent, &telegram_key("42"), &request(), &next_key()).await.unwrap();

    s.fake.fail_next(1, 429);
    let idem = next_key();
    let e = desk.post(&s.agent, &chat_id, "one", &idem).await.unwrap_err();
    assert!(matches!(e, DeliveryError::Retryable { retry_after_ms: Some(2000), .. }), "{e}");
    assert!(e.to_string().contains("too_many_requests"));
    // The retry of the same effect goes through, once.
    desk.post(&s.agent, &chat_id, "one", &idem).await.unwrap();

    s.fake.fail_next(1, 503);
    let e = desk.post(&s.agent, &chat_id, "two", &next_key()).await.unwrap_err();
    assert!(matches!(e, DeliveryError::Retryable { retry_after_ms: Some(2000), .. }), "{e}");

    s.fake.fail_next(1, 403);
    let e = desk.post(&s.agent, &chat_id, "three", &next_key()).await.unwrap_err();
    assert!(matches!(e, DeliveryError::Unauthorized { .. }), "{e}");

    s.fake.fail_next(1, 400);
    let e = desk.post(&s.agent, &chat_id, "four", &next_key()).await.unwrap_err();
    let DeliveryError::Permanent { message } = &e else { panic!("{e}") };
    assert!(message.contains("validation: Simulated validation failure"), "{message}");
    assert!(message.contains("/v3.6/customer/action/send_event") && !message.contains("organization_id"), "{message}");

    let statuses: Vec<u16> = s.fake.requests_of(Kind::CustomerEvent).iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![429, 200, 503, 403, 400]);
    for r in s.fake.requests() {
        assert_no_secrets(&format!("{:?}", r.path));
    }
}

#[tokio::test]
async fn transport_failures_are_retryable_and_hold_no_secrets() {
    let s = Setup::new().await;
    let mut agent = s.agent.clone();
    let cfg = agent.livechat.as_mut().unwrap();
    // Nothing listens on port 9 of loopback.
    cfg.accounts_base = "http://127.0.0.1:9".into();
    let e = s.desk().open(&agent, &telegram_key("42"), &request(), &next_key()).await.unwrap_err();
    assert!(matches!(e, DeliveryError::Retryable { .. }), "{e}");
    assert_no_secrets(&e.to_string());
}

#[tokio::test]
async fn a_misdirected_request_is_retried_in_the_named_region() {
    let s = Setup::new().await;
    s.fake.require_region(Some("fra"));
    s.client().send_as_bot(&s.agent, "C1", &OutMessage::new(Role::Bot, "hallo"), &next_key()).await.unwrap();
    let regions: Vec<(u16, Option<String>)> =
        s.fake.requests().iter().filter(|r| r.kind != Kind::Refresh).map(|r| (r.status, r.region.clone())).collect();
    // issue_bot_token, then send_event: each first refused, then accepted with X-Region: fra.
    assert_eq!(
        regions,
        vec![(421, None), (200, Some("fra".into())), (421, None), (200, Some("fra".into()))],
        "{:?}",
        s.fake.arrived()
    );
}

#[tokio::test]
async fn probe_reports_the_desk_status() {
    let s = Setup::new().await;
    let (status, detail) = s.desk().probe(&s.agent).await;
    assert_eq!(status, ServiceStatus::Available, "{detail}");
    assert!(detail.contains(fake::ORGANIZATION_ID), "{detail}");
    assert_eq!(s.fake.requests_of(Kind::ListChats).len(), 1);
    assert_eq!(s.fake.requests_of(Kind::IssueBotToken).len(), 1);
    let mut none = s.agent.clone();
    none.livechat = None;
    assert_eq!(s.desk().probe(&none).await.0, ServiceStatus::NotConfigured);
    s.fake.fail_next(1, 500);
    let (status, detail) = s.desk().probe(&s.agent).await;
    assert_eq!(status, ServiceStatus::Unavailable);
    assert_no_secrets(&detail);
}

// -------------------------------------------------------------------------------------------
// Webhooks

#[tokio::test]
async fn every_webhook_builder_parses_and_the_secret_is_checked() {
    let s = Setup::new().await;
    let cfg = s.fake.config();

    let body = fake::incoming_event("PJ0MRSHTDG", "K600PKZON8_3", "smith@example.com", "Your order ships today.", None);
    let n = livechat::parse(&body).unwrap();
    assert!(livechat::verify_secret(&cfg, n.secret_key.as_deref()));
    assert_eq!(
        n.event,
        WebhookEvent::Message {
            chat_id: "PJ0MRSHTDG".into(),
            thread_id: "T-PJ0MRSHTDG".into(),
            event_id: "K600PKZON8_3".into(),
            author_id: "smith@example.com".into(),
            custom_id: None,
            text: "Your order ships today.".into(),
        }
    );
    // LiveChat's retry of the same event: same dedupe key.
    let again =
        fake::incoming_event("PJ0MRSHTDG", "K600PKZON8_3", "smith@example.com", "Your order ships today.", None);
    assert_eq!(livechat::parse(&again).unwrap().dedupe_key, n.dedupe_key);

    let file = fake::incoming_file(
        "PJ0MRSHTDG",
        "K600PKZON8_4",
        "smith@example.com",
        "label.pdf",
        "https://cdn.livechat-files.com/label.pdf",
    );
    let n = livechat::parse(&file).unwrap();
    assert!(
        matches!(n.event, WebhookEvent::Message { ref text, .. } if text == "[file: label.pdf] https://cdn.livechat-files.com/label.pdf")
    );

    let chat = fake::incoming_chat(
        "PJ0MRSHTDG",
        "b7eff798-f8df-4364-8059-649c35c9ed0c",
        Some("ann@example.com"),
        "Hello, is anyone there?",
    );
    let n = livechat::parse(&chat).unwrap();
    assert_eq!(
        n.event,
        WebhookEvent::ChatStarted {
            chat_id: "PJ0MRSHTDG".into(),
            thread_id: "T-PJ0MRSHTDG".into(),
            customer_id: Some("b7eff798-f8df-4364-8059-649c35c9ed0c".into()),
            customer_email: Some("ann@example.com".into()),
            first_text: Some("Hello, is anyone there?".into()),
        }
    );
    let n = livechat::parse(&fake::incoming_chat("C2", "b7eff798-f8df-4364-8059-649c35c9ed0d", None, "hi")).unwrap();
    assert!(matches!(n.event, WebhookEvent::ChatStarted { customer_email: None, .. }));

    let n = livechat::parse(&fake::chat_deactivated("PJ0MRSHTDG")).unwrap();
    assert_eq!(n.event, WebhookEvent::ChatDeactivated { chat_id: "PJ0MRSHTDG".into() });
    assert!(livechat::verify_secret(&cfg, n.secret_key.as_deref()));

    // Wrong or missing secret.
    let wrong = livechat::parse(&fake::with_secret(&body, Some("guess"))).unwrap();
    assert!(!livechat::verify_secret(&cfg, wrong.secret_key.as_deref()));
    let missing = livechat::parse(&fake::with_secret(&body, None)).unwrap();
    assert!(!livechat::verify_secret(&cfg, missing.secret_key.as_deref()));
    // Garbage never panics.
    for junk in [&b""[..], b"null", b"{\"action\":{}}", b"{\"action\":\"incoming_event\",\"payload\":{\"chat_id\":[]}}"]
    {
        assert!(livechat::parse(junk).is_err());
    }
}

// -------------------------------------------------------------------------------------------
// Authorization-code flow

#[tokio::test]
async fn the_code_is_exchanged_for_the_refresh_token() {
    let fake = FakeLivechat::start().await;
    let http =
        baton_connectors::outbound::http_client(Duration::from_secs(5), baton_connectors::outbound::Targets::Any);
    let redirect = "http://127.0.0.1:8788/callback";
    let url = livechat::authorize_url(fake::CLIENT_ID, &format!("{}/", fake.url()), redirect, "st4te");
    assert_eq!(
        url,
        format!(
            "{}/?response_type=code&client_id={}&redirect_uri=http%3A%2F%2F127.0.0.1%3A8788%2Fcallback&state=st4te",
            fake.url(),
            fake::CLIENT_ID
        )
    );
    let token =
        livechat::exchange_code(&http, &fake.url(), fake::CLIENT_ID, fake::CLIENT_SECRET, fake::AUTH_CODE, redirect)
            .await
            .unwrap();
    assert_eq!(token.expose(), fake::REFRESH_TOKEN);
    let ex = &fake.wait_for(Kind::CodeExchange, 1, WAIT).await[0];
    assert_eq!(ex.body["grant_type"], "authorization_code");
    assert_eq!(ex.body["code"], fake::AUTH_CODE);
    assert_eq!(ex.body["redirect_uri"], redirect);
    assert_eq!(ex.body["client_secret"], fake::CLIENT_SECRET);
    // A wrong code: a clear error without the code or the secret.
    let e =
        livechat::exchange_code(&http, &fake.url(), fake::CLIENT_ID, fake::CLIENT_SECRET, "dal:used-code", redirect)
            .await
            .unwrap_err();
    assert!(matches!(e, DeliveryError::Permanent { .. }), "{e}");
    assert!(e.to_string().contains("invalid_grant") && !e.to_string().contains("used-code"), "{e}");
    assert_no_secrets(&e.to_string());
    let e = livechat::exchange_code(&http, &fake.url(), fake::CLIENT_ID, "wrong-secret", fake::AUTH_CODE, redirect)
        .await
        .unwrap_err();
    assert!(!e.to_string().contains("wrong-secret"), "{e}");
}
