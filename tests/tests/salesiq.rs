//! The SalesIQ connector over real HTTP against the fake Zoho (`baton_tests::salesiq`): OAuth
//! refresh and its sharing through the `KeyValue` store, the operator post and the recognition
//! of its echo, the `Desk` port (visitor conversation, transfer, close, probe), status mapping,
//! and errors that never show a credential.

use baton_connectors::salesiq::{self, SalesiqClient, SalesiqDesk, WebhookEvent};
use baton_core::agent::Agent;
use baton_core::effect::HandoffRequest;
use baton_core::model::{Button, Channel, CloseReason, ConversationKey, Millis, OutMessage, Role, ServiceStatus, Turn};
use baton_core::ports::{Clock, DeliveryError, Desk};
use baton_tests::memkv::MemKv;
use baton_tests::salesiq::{self as fake, FakeZoho, Kind, WebhookSigner};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(5);

struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        Millis(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64)
    }
}

fn client(kv: &Arc<MemKv>) -> SalesiqClient {
    let timeout = Duration::from_secs(5);
    SalesiqClient::new(
        baton_connectors::outbound::http_client(timeout, baton_connectors::outbound::Targets::Any),
        timeout,
        kv.clone(),
        Arc::new(SystemClock),
    )
}

fn agent(fake: &FakeZoho) -> Agent {
    serde_json::from_value(json!({
        "id": "shop",
        "desk": {"kind": "salesiq", "department_id": fake::DEPARTMENT_ID},
        "salesiq": serde_json::to_value(fake.config()).unwrap(),
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

/// No credential of the fake may appear in `text`.
fn assert_no_secrets(text: &str) {
    for secret in [fake::CLIENT_SECRET, fake::REFRESH_TOKEN, "tok-"] {
        assert!(!text.contains(secret), "{secret:?} leaked into: {text}");
    }
}

#[tokio::test]
async fn token_is_refreshed_once_and_shared_through_the_store() {
    let fake = FakeZoho::start().await;
    let agent = agent(&fake);
    let kv = Arc::new(MemKv::default());
    let (a, b) = (client(&kv), client(&kv));
    a.post_as_operator(&agent, "c1", &OutMessage::new(Role::Bot, "first"), &next_key()).await.unwrap();
    b.post_as_operator(&agent, "c1", &OutMessage::new(Role::Bot, "second"), &next_key()).await.unwrap();
    assert_eq!(fake.token_requests(), 1);
    let token = &fake.wait_for(Kind::Token, 1, WAIT).await[0];
    assert_eq!(token.body["grant_type"], "refresh_token");
    assert_eq!(token.body["client_id"], fake::CLIENT_ID);
    let posts = fake.wait_for(Kind::OperatorMessage, 2, WAIT).await;
    for p in &posts {
        assert_eq!(p.authorization.as_deref(), Some("Zoho-oauthtoken tok-1"));
        assert_eq!(p.path, format!("/api/v2/{}/conversations/c1/messages", fake::SCREEN_NAME));
        assert_eq!(p.status, 200);
    }
    assert_eq!(posts[0].body, json!({"text": "first"}));
    assert_eq!(posts[1].body, json!({"text": "second"}));
    // A third client on the same store still needs no refresh.
    assert_eq!(
        client(&kv).auth().access_token("shop", agent.salesiq.as_ref().unwrap()).await.unwrap().expose(),
        "tok-1"
    );
    assert_eq!(fake.token_requests(), 1);
}

#[tokio::test]
async fn concurrent_first_calls_refresh_once() {
    let fake = FakeZoho::start().await;
    fake.set_refresh_delay(Duration::from_millis(400));
    let agent = Arc::new(agent(&fake));
    let kv = Arc::new(MemKv::default());
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let (c, agent) = (client(&kv), agent.clone());
            tokio::spawn(async move {
                c.post_as_operator(&agent, "c9", &OutMessage::new(Role::Bot, format!("answer {i}")), &next_key()).await
            })
        })
        .collect();
    for c in calls {
        c.await.unwrap().unwrap();
    }
    assert_eq!(fake.token_requests(), 1, "one refresh under the lease");
    let posts = fake.wait_for(Kind::OperatorMessage, 8, WAIT).await;
    assert!(posts.iter().all(|p| p.authorization.as_deref() == Some("Zoho-oauthtoken tok-1")));
}

#[tokio::test]
async fn rejected_cached_token_is_refreshed_once_and_the_call_succeeds() {
    let fake = FakeZoho::start().await;
    let agent = agent(&fake);
    let kv = Arc::new(MemKv::default());
    let c = client(&kv);
    c.post_as_operator(&agent, "c1", &OutMessage::new(Role::Bot, "one"), &next_key()).await.unwrap();
    fake.expire_access_tokens();
    c.post_as_operator(&agent, "c1", &OutMessage::new(Role::Bot, "two"), &next_key()).await.unwrap();
    assert_eq!(fake.token_requests(), 2);
    let posts = fake.requests_of(Kind::OperatorMessage);
    let seen: Vec<(u16, Option<&str>)> = posts.iter().map(|p| (p.status, p.authorization.as_deref())).collect();
    assert_eq!(
        seen,
        vec![
            (200, Some("Zoho-oauthtoken tok-1")),
            (401, Some("Zoho-oauthtoken tok-1")),
            (200, Some("Zoho-oauthtoken tok-2")),
        ]
    );
    // The new token is the shared one now.
    client(&kv).post_as_operator(&agent, "c1", &OutMessage::new(Role::Bot, "three"), &next_key()).await.unwrap();
    assert_eq!(fake.token_requests(), 2);
}

#[tokio::test]
async fn newly_issued_token_rejected_is_unauthorized_without_a_refresh_loop() {
    let fake = FakeZoho::start().await;
    fake.reject_all_tokens();
    let agent = agent(&fake);
    let kv = Arc::new(MemKv::default());
    let c = client(&kv);
    let e = c.post_as_operator(&agent, "c1", &OutMessage::new(Role::Bot, "one"), &next_key()).await.unwrap_err();
    assert!(matches!(&e, DeliveryError::Unauthorized { message } if message.contains("newly issued")), "{e}");
    assert_no_secrets(&e.to_string());
    assert_eq!(fake.token_requests(), 1);
    assert_eq!(fake.requests_of(Kind::OperatorMessage).len(), 1, "no second try with the same new token");
    // Within the failure window neither the accounts server nor SalesIQ is asked again.
    let e =
        client(&kv).post_as_operator(&agent, "c1", &OutMessage::new(Role::Bot, "two"), &next_key()).await.unwrap_err();
    assert!(matches!(e, DeliveryError::Unauthorized { .. }), "{e}");
    assert_eq!(fake.token_requests(), 1);
    assert_eq!(fake.requests_of(Kind::OperatorMessage).len(), 1);
}

#[tokio::test]
async fn revoked_refresh_token_is_unauthorized_and_not_retried_within_the_window() {
    let fake = FakeZoho::start().await;
    fake.revoke_refresh_token();
    let agent = agent(&fake);
    let kv = Arc::new(MemKv::default());
    let desk = SalesiqDesk::new(client(&kv));
    let e =
        desk.client().post_as_operator(&agent, "c1", &OutMessage::new(Role::Bot, "hi"), &next_key()).await.unwrap_err();
    let DeliveryError::Unauthorized { message } = &e else { panic!("expected Unauthorized, got {e}") };
    assert!(message.contains("invalid_code") && message.contains("re-authorize"), "{message}");
    assert_no_secrets(&e.to_string());
    assert_eq!(fake.token_requests(), 1);
    // Other calls, other clients, the probe: all answered from the record.
    let e = client(&kv)
        .post_as_operator(&agent, "c1", &OutMessage::new(Role::Bot, "again"), &next_key())
        .await
        .unwrap_err();
    assert!(matches!(e, DeliveryError::Unauthorized { .. }));
    let key = ConversationKey::new("shop", Channel::Telegram, "42").unwrap();
    let e = desk.open(&agent, &key, &request(), "open-1").await.unwrap_err();
    assert!(matches!(e, DeliveryError::Unauthorized { .. }));
    let (status, detail) = desk.probe(&agent).await;
    assert_eq!(status, ServiceStatus::Unavailable);
    assert!(detail.contains("re-authorize"), "{detail}");
    assert_no_secrets(&detail);
    assert_eq!(fake.token_requests(), 1, "the accounts server is not hit again within the failure window");
    assert!(fake.requests_of(Kind::OperatorMessage).is_empty() && fake.requests_of(Kind::OpenConversation).is_empty());

    // New credentials in the configuration are tried at once.
    let mut fixed = agent.clone();
    fixed.salesiq.as_mut().unwrap().refresh_token = baton_core::model::Secret("1000.another-refresh-token".into());
    let e =
        client(&kv).post_as_operator(&fixed, "c1", &OutMessage::new(Role::Bot, "x"), &next_key()).await.unwrap_err();
    assert!(matches!(e, DeliveryError::Unauthorized { .. }));
    assert_eq!(fake.token_requests(), 2);
}

#[tokio::test]
async fn own_messages_are_recognised() {
    let fake = FakeZoho::start().await;
    let mut agent = agent(&fake);
    let kv = Arc::new(MemKv::default());
    let c = client(&kv);
    let mut answer = OutMessage::new(Role::Bot, "We ship within two days.");
    answer.buttons = vec![Button { label: "Talk to a person".into(), value: "human".into() }];
    c.post_as_operator(&agent, "c5", &answer, &next_key()).await.unwrap();
    let post = &fake.wait_for(Kind::OperatorMessage, 1, WAIT).await[0];
    assert_eq!(post.body["text"], "We ship within two days.\n• Talk to a person");
    // The fake numbers ids; the first id went to nothing else here.
    let own = format!("msg-{}", 1);
    assert!(c.is_own_message(&agent, Some("someone"), &own).await);
    // Another process sharing the store knows it too.
    assert!(client(&kv).is_own_message(&agent, None, &own).await);
    assert!(!c.is_own_message(&agent, Some(fake::OPERATOR_ID), "msg-999").await);
    // A human's echo is not ours; with bot_operator_id the sender decides.
    let body = fake::operator_replied("c5", "msg-999", fake::OPERATOR_ID, "Hello, Patricia here");
    let n = salesiq::parse(&body).unwrap();
    let WebhookEvent::OperatorReplied { sender_id, message_id, .. } = n.event else { panic!("{:?}", n.event) };
    assert!(!c.is_own_message(&agent, sender_id.as_deref(), &message_id).await);
    agent.salesiq.as_mut().unwrap().bot_operator_id = Some(fake::OPERATOR_ID.into());
    assert!(c.is_own_message(&agent, sender_id.as_deref(), &message_id).await);
    // Without ids in SalesIQ's answers only bot_operator_id tells.
    fake.omit_message_ids();
    c.post_as_operator(&agent, "c5", &OutMessage::new(Role::Bot, "again"), &next_key()).await.unwrap();
    let unnamed = format!("msg-{}", fake.requests_of(Kind::OperatorMessage).len());
    agent.salesiq.as_mut().unwrap().bot_operator_id = None;
    assert!(!c.is_own_message(&agent, Some(fake::OPERATOR_ID), &unnamed).await);
}

#[tokio::test]
async fn desk_opens_a_visitor_conversation_posts_and_closes() {
    let fake = FakeZoho::start().await;
    let agent = agent(&fake);
    let kv = Arc::new(MemKv::default());
    let desk = SalesiqDesk::new(client(&kv));
    let key = ConversationKey::new("shop", Channel::Telegram, "tg-42").unwrap();
    let id = desk.open(&agent, &key, &request(), "open-1").await.unwrap();
    let open = &fake.wait_for(Kind::OpenConversation, 1, WAIT).await[0];
    assert_eq!(open.path, format!("/api/visitor/v1/{}/conversations", fake::SCREEN_NAME));
    assert_eq!(open.body["app_id"], fake::APP_ID);
    assert_eq!(open.body["department_id"], fake::DEPARTMENT_ID);
    assert_eq!(open.body["visitor"]["email"], "ann@example.com");
    assert_eq!(open.body["visitor"]["name"], "Telegram user");
    assert!(open.body["visitor"]["user_id"].as_str().unwrap().starts_with("baton-"));
    let question = open.body["question"].as_str().unwrap();
    for part in [
        "Reason: the user asked for a human",
        "User: Hi, my parcel is late",
        "Bot: Sorry to hear that. What is the order number?",
        "User: A-1042",
        "Question: Can a person check where it is?",
        "ann@example.com",
    ] {
        assert!(question.contains(part), "{part:?} missing in {question:?}");
    }
    // A retried open with the same idempotency key does not open a second chat.
    assert_eq!(desk.open(&agent, &key, &request(), "open-1").await.unwrap(), id);
    assert_eq!(fake.requests_of(Kind::OpenConversation).len(), 1);

    desk.post(&agent, &id, "It was sent to the wrong address", "post-1").await.unwrap();
    desk.post(&agent, &id, "It was sent to the wrong address", "post-1").await.unwrap();
    let posts = fake.wait_for(Kind::VisitorMessage, 1, WAIT).await;
    assert_eq!(posts[0].path, format!("/api/visitor/v1/{}/conversations/{id}/messages", fake::SCREEN_NAME));
    assert_eq!(posts[0].body, json!({"text": "It was sent to the wrong address"}));
    assert_eq!(fake.requests_of(Kind::VisitorMessage).len(), 1, "a retried post is not sent twice");

    desk.close(&agent, &id, CloseReason::UserClosed, "close-1").await.unwrap();
    let note = &fake.wait_for(Kind::VisitorMessage, 2, WAIT).await[1];
    assert_eq!(note.body["text"], "[The user ended the chat.]");
    let close = &fake.wait_for(Kind::Close, 1, WAIT).await[0];
    assert_eq!(close.method, "PUT");
    assert_eq!(close.conversation_id.as_deref(), Some(id.as_str()));
    assert!(fake.is_closed(&id));
    desk.close(&agent, &id, CloseReason::UserClosed, "close-1").await.unwrap();
    assert_eq!(fake.requests_of(Kind::Close).len(), 1);
    assert!(fake
        .requests()
        .iter()
        .filter(|r| r.kind != Kind::Token)
        .all(|r| r.authorization.as_deref() == Some("Zoho-oauthtoken tok-1")));
}

#[tokio::test]
async fn timeout_close_tells_the_human_why() {
    let fake = FakeZoho::start().await;
    let agent = agent(&fake);
    let desk = SalesiqDesk::new(client(&Arc::new(MemKv::default())));
    let key = ConversationKey::new("shop", Channel::Line, "U9").unwrap();
    let id = desk.open(&agent, &key, &request(), "open-9").await.unwrap();
    desk.close(&agent, &id, CloseReason::Timeout, "close-9").await.unwrap();
    let note = &fake.wait_for(Kind::VisitorMessage, 1, WAIT).await[0];
    assert!(note.body["text"].as_str().unwrap().contains("did not reply in time"));
    fake.wait_for(Kind::Close, 1, WAIT).await;
}

#[tokio::test]
async fn users_already_in_salesiq_are_transferred() {
    let fake = FakeZoho::start().await;
    let mut agent = agent(&fake);
    agent.desk =
        serde_json::from_value(json!({"kind": "salesiq", "department_id": "dep-2", "operator_id": "op-7"})).unwrap();
    let desk = SalesiqDesk::new(client(&Arc::new(MemKv::default())));
    let key = ConversationKey::new("shop", Channel::Salesiq, "40526000001808033").unwrap();
    let id = desk.open(&agent, &key, &request(), "open-t").await.unwrap();
    assert_eq!(id, "40526000001808033");
    let t = &fake.wait_for(Kind::Transfer, 1, WAIT).await[0];
    assert_eq!(t.method, "PUT");
    assert_eq!(t.path, format!("/api/v2/{}/conversations/40526000001808033/transfer", fake::SCREEN_NAME));
    assert_eq!(t.body["department_id"], "dep-2");
    assert_eq!(t.body["operator_id"], "op-7");
    let note = t.body["note"].as_str().unwrap();
    assert!(note.contains("the user asked for a human") && note.contains("Can a person check where it is?"), "{note}");
    assert!(fake.requests_of(Kind::OpenConversation).is_empty());
    // Transferred chats are the visitor's own: closing them sends no visitor note.
    desk.close(&agent, &id, CloseReason::UserClosed, "close-t").await.unwrap();
    assert!(fake.requests_of(Kind::VisitorMessage).is_empty());
    fake.wait_for(Kind::Close, 1, WAIT).await;
}

#[tokio::test]
async fn outages_are_retryable_and_other_errors_permanent() {
    let fake = FakeZoho::start().await;
    let mut agent = agent(&fake);
    let desk = SalesiqDesk::new(client(&Arc::new(MemKv::default())));
    let mut errors = Vec::new();

    fake.fail_next(1, 503);
    let e = desk.post(&agent, "c1", "hello", "p-1").await.unwrap_err();
    assert!(matches!(e, DeliveryError::Retryable { retry_after_ms: Some(2000), .. }), "{e}");
    errors.push(e.to_string());
    desk.post(&agent, "c1", "hello", "p-1").await.unwrap();

    fake.fail_next(1, 429);
    let e =
        desk.client().post_as_operator(&agent, "c1", &OutMessage::new(Role::Bot, "x"), &next_key()).await.unwrap_err();
    assert!(matches!(e, DeliveryError::Retryable { retry_after_ms: Some(2000), .. }), "{e}");
    errors.push(e.to_string());

    fake.fail_next(1, 403);
    let e = desk.post(&agent, "c1", "hello", "p-2").await.unwrap_err();
    assert!(matches!(e, DeliveryError::Unauthorized { .. }), "{e}");
    errors.push(e.to_string());

    // SalesIQ's errors in a 200 answer are failures that quote its message.
    agent.salesiq.as_mut().unwrap().screen_name = "wrong-portal".into();
    let e = desk.post(&agent, "c1", "hello", "p-3").await.unwrap_err();
    let DeliveryError::Permanent { message } = &e else { panic!("{e}") };
    assert!(message.contains("1005") && message.contains("Invalid portal or wrong screen name."), "{message}");
    errors.push(e.to_string());
    let (status, detail) = desk.probe(&agent).await;
    assert_eq!(status, ServiceStatus::Unavailable);
    errors.push(detail);

    // Nothing listens here: a transport failure is retryable.
    let mut down = agent.clone();
    down.salesiq.as_mut().unwrap().server = "http://127.0.0.1:9".into();
    let e = desk.post(&down, "c1", "hello", "p-4").await.unwrap_err();
    assert!(matches!(e, DeliveryError::Retryable { .. }), "{e}");
    errors.push(e.to_string());

    for e in &errors {
        assert_no_secrets(e);
    }
}

#[tokio::test]
async fn probe_reports_each_state() {
    let fake = FakeZoho::start().await;
    let agent = agent(&fake);
    let desk = SalesiqDesk::new(client(&Arc::new(MemKv::default())));
    let (status, detail) = desk.probe(&agent).await;
    assert_eq!(status, ServiceStatus::Available, "{detail}");
    assert_no_secrets(&detail);
    let lookup = &fake.wait_for(Kind::Lookup, 1, WAIT).await[0];
    assert_eq!(lookup.path, format!("/api/v2/{}/departments/{}", fake::SCREEN_NAME, fake::DEPARTMENT_ID));

    let bare: Agent = serde_json::from_value(json!({"id": "bare"})).unwrap();
    assert_eq!(desk.probe(&bare).await.0, ServiceStatus::NotConfigured);

    let mut wrong = agent.clone();
    wrong.salesiq.as_mut().unwrap().client_secret = baton_core::model::Secret("not-the-secret".into());
    let (status, detail) = desk.probe(&wrong).await;
    assert_eq!(status, ServiceStatus::Unavailable);
    assert!(detail.contains("invalid_client") && !detail.contains("not-the-secret"), "{detail}");

    fake.fail_next(1, 503);
    let (status, detail) = desk.probe(&agent).await;
    assert_eq!(status, ServiceStatus::Unavailable);
    assert!(detail.contains("503"), "{detail}");
}

#[tokio::test]
async fn signed_webhooks_from_the_fake_verify_and_parse() {
    let signer = WebhookSigner::new();
    let rotated = WebhookSigner::new();
    let keys = vec![rotated.public_key_pem(), signer.public_key_der_base64()];
    let body = fake::created("40526000001808033", "Do you ship to Croatia?", Some("tricia@zylker.com"));
    salesiq::verify(&keys, &body, Some(&signer.sign(&body))).unwrap();
    assert!(salesiq::verify(&keys, &body, Some(&signer.sign(b"other"))).is_err());
    let n = salesiq::parse(&body).unwrap();
    assert_eq!(
        n.event,
        WebhookEvent::Created {
            conversation_id: "40526000001808033".into(),
            question: Some("Do you ship to Croatia?".into()),
            visitor: salesiq::Visitor { email: Some("tricia@zylker.com".into()), name: Some("Tricia".into()) },
        }
    );
    let reply = fake::visitor_replied("40526000001808033", "m-1", "Thanks!");
    let again = fake::redelivered(&reply, 2);
    assert_eq!(salesiq::parse(&reply).unwrap().dedupe_key, salesiq::parse(&again).unwrap().dedupe_key);
    assert!(
        matches!(salesiq::parse(&reply).unwrap().event, WebhookEvent::VisitorReplied { ref text, .. } if text == "Thanks!")
    );
    assert_eq!(
        salesiq::parse(&fake::completed("40526000001808033")).unwrap().event,
        WebhookEvent::Completed { conversation_id: "40526000001808033".into() }
    );
}

/// A fresh idempotency key per call (each call here is a different message).
fn next_key() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!("msg_test{}", N.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

#[tokio::test]
async fn a_retried_operator_post_is_sent_once() {
    let fake = FakeZoho::start().await;
    let agent = agent(&fake);
    let kv = Arc::new(MemKv::default());
    let msg = OutMessage::new(Role::Bot, "only once");
    client(&kv).post_as_operator(&agent, "c1", &msg, "msg_retry").await.unwrap();
    // Another process retrying the same effect after a crash.
    client(&kv).post_as_operator(&agent, "c1", &msg, "msg_retry").await.unwrap();
    assert_eq!(fake.requests_of(Kind::OperatorMessage).len(), 1);
    client(&kv).post_as_operator(&agent, "c1", &msg, "msg_other").await.unwrap();
    assert_eq!(fake.requests_of(Kind::OperatorMessage).len(), 2);
}
