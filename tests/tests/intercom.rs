//! The Intercom connector over real HTTP against the fake Intercom (`baton_tests::intercom`):
//! contact find-or-create with the e-mail map (search lags behind creation), the conversation
//! opened for a user of another channel, posts as the contact, the handoff inside a Messenger
//! conversation (note and assignment), close, idempotent retries, status mapping (429 with
//! `X-RateLimit-Reset`, 401, 5xx, 4xx), the probe, webhook parsing and signatures, and errors
//! that never show the access token.

use baton_connectors::intercom::{self, IntercomClient, IntercomDesk, WebhookEvent};
use baton_core::agent::Agent;
use baton_core::effect::HandoffRequest;
use baton_core::model::{Button, Channel, CloseReason, ConversationKey, Millis, OutMessage, Role, ServiceStatus, Turn};
use baton_core::ports::{Clock, DeliveryError, Desk};
use baton_tests::intercom::{self as fake, FakeIntercom, Kind};
use baton_tests::memkv::MemKv;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(5);
const TOKEN: &str = "dG9rOmZha2UtaW50ZXJjb20tdG9rZW4tOTk4MQ==";

/// A clock that stands still (at the wall-clock time it was made) until moved.
struct FixedClock(AtomicI64);

impl FixedClock {
    fn now_ish() -> Arc<FixedClock> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        Arc::new(FixedClock(AtomicI64::new(now)))
    }

    fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }
}

impl Clock for FixedClock {
    fn now(&self) -> Millis {
        Millis(self.0.load(Ordering::SeqCst))
    }
}

struct Setup {
    fake: FakeIntercom,
    kv: Arc<MemKv>,
    clock: Arc<FixedClock>,
}

impl Setup {
    async fn new() -> Setup {
        Setup { fake: FakeIntercom::start(TOKEN).await, kv: Arc::new(MemKv::default()), clock: FixedClock::now_ish() }
    }

    fn client(&self) -> IntercomClient {
        client_with(&self.kv, &self.clock)
    }

    fn desk(&self) -> IntercomDesk {
        IntercomDesk::new(self.client())
    }

    /// An agent with the Intercom desk assigning to `desk` (`{"team_id": ...}` etc.).
    fn agent(&self, desk: Value) -> Agent {
        let mut d = json!({"kind": "intercom"});
        d.as_object_mut().unwrap().extend(desk.as_object().unwrap().clone());
        serde_json::from_value(json!({
            "id": "shop",
            "desk": d,
            "intercom": serde_json::to_value(self.fake.config()).unwrap(),
        }))
        .unwrap()
    }

    fn team_agent(&self) -> Agent {
        self.agent(json!({"team_id": fake::TEAM_ID}))
    }
}

fn client_with(kv: &Arc<MemKv>, clock: &Arc<FixedClock>) -> IntercomClient {
    let timeout = Duration::from_secs(5);
    IntercomClient::new(
        baton_connectors::outbound::http_client(timeout, baton_connectors::outbound::Targets::Any),
        timeout,
        kv.clone(),
        clock.clone(),
    )
}

fn next_key() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("effect-{}", N.fetch_add(1, Ordering::SeqCst))
}

fn telegram(user: &str) -> ConversationKey {
    ConversationKey::new("shop", Channel::Telegram, user).unwrap()
}

fn request(email: &str) -> HandoffRequest {
    HandoffRequest {
        params: Default::default(),
        handoff_id: "h-1".into(),
        email: email.into(),
        history: vec![
            Turn { role: Role::User, text: "Hi, my parcel is late".into(), at: Millis(1) },
            Turn { role: Role::Bot, text: "Sorry to hear that. What is the order number?".into(), at: Millis(2) },
            Turn { role: Role::User, text: "A-1042".into(), at: Millis(3) },
        ],
        question: "Can a person check where it is?".into(),
        reason: "the user asked for a human".into(),
    }
}

/// Neither the access token nor the client secret may appear in `text`.
fn assert_no_secrets(text: &str) {
    for secret in [TOKEN, fake::CLIENT_SECRET, "wrong-token-"] {
        assert!(!text.contains(secret), "{secret:?} leaked into: {text}");
    }
}

#[tokio::test]
async fn other_channel_handoff_opens_posts_and_closes() {
    let s = Setup::new().await;
    let agent = s.team_agent();
    let desk = s.desk();
    let key = telegram("4711");
    let id = desk.open(&agent, &key, &request("ann@example.com"), &next_key()).await.unwrap();

    let search = &s.fake.wait_for(Kind::SearchContacts, 1, WAIT).await[0];
    assert_eq!(search.body["query"], json!({"field": "email", "operator": "=", "value": "ann@example.com"}));
    let create = &s.fake.wait_for(Kind::CreateContact, 1, WAIT).await[0];
    assert_eq!(create.field("role"), Some("user"));
    assert_eq!(create.field("email"), Some("ann@example.com"));
    let external_id = create.field("external_id").unwrap();
    assert_eq!(external_id, intercom::contact_external_id(&key, "ann@example.com"));
    let contact_id = s.fake.contacts()[0].id.clone();

    let open = &s.fake.wait_for(Kind::CreateConversation, 1, WAIT).await[0];
    assert_eq!(open.body["from"], json!({"type": "user", "id": contact_id}));
    let body = open.field("body").unwrap();
    assert_eq!(
        body,
        "The AI assistant handed this conversation over to a human.\nReason: the user asked for a human\n\n\
         Earlier messages:\nUser: Hi, my parcel is late\nAssistant: Sorry to hear that. What is the order number?\n\
         User: A-1042\n\nQuestion: Can a person check where it is?\n\nE-mail: ann@example.com\nChannel: telegram"
    );
    let conversation = s.fake.conversation(&id).expect("the fake has the conversation");
    assert_eq!(conversation.contact_id, contact_id);
    assert_eq!(conversation.team_assignee_id.as_deref(), Some(fake::TEAM_ID));
    let assign = &s.fake.wait_for(Kind::Assign, 1, WAIT).await[0];
    assert_eq!(
        assign.body,
        json!({"message_type": "assignment", "type": "team", "admin_id": fake::BOT_ADMIN_ID, "assignee_id": fake::TEAM_ID})
    );

    // Every call carries the token, the pinned version and JSON.
    for r in s.fake.requests() {
        assert_eq!(r.authorization.as_deref(), Some(format!("Bearer {TOKEN}").as_str()), "{}", r.path);
        assert_eq!(r.intercom_version.as_deref(), Some(fake::API_VERSION));
        assert_eq!(r.accept.as_deref(), Some("application/json"));
        assert_eq!(r.content_type.as_deref(), Some("application/json"));
        assert_eq!(r.status, 200, "{} {}", r.method, r.path);
    }

    desk.post(&agent, &id, "It is order A-1042, sent on Monday.", &next_key()).await.unwrap();
    let post = &s.fake.wait_for(Kind::UserReply, 1, WAIT).await[0];
    assert_eq!(post.path, format!("/conversations/{id}/reply"));
    assert_eq!(
        post.body,
        json!({"message_type": "comment", "type": "user", "intercom_user_id": contact_id,
            "body": "It is order A-1042, sent on Monday."})
    );

    desk.close(&agent, &id, CloseReason::UserClosed, &next_key()).await.unwrap();
    let close = &s.fake.wait_for(Kind::Close, 1, WAIT).await[0];
    assert_eq!(close.path, format!("/conversations/{id}/parts"));
    assert_eq!(
        close.body,
        json!({"message_type": "close", "type": "admin", "admin_id": fake::BOT_ADMIN_ID, "body": "The user ended the chat."})
    );
    assert_eq!(s.fake.conversation(&id).unwrap().state, "closed");

    // A timeout says so.
    let other = desk.open(&agent, &telegram("4712"), &request("bob@example.com"), &next_key()).await.unwrap();
    desk.close(&agent, &other, CloseReason::Timeout, &next_key()).await.unwrap();
    assert_eq!(s.fake.wait_for(Kind::Close, 2, WAIT).await[1].field("body"), Some("The chat timed out."));
}

#[tokio::test]
async fn lagging_search_never_creates_a_second_contact() {
    let s = Setup::new().await;
    s.fake.search_lags(true);
    let agent = s.agent(json!({}));
    let desk = s.desk();
    let first = desk.open(&agent, &telegram("1"), &request("ann@example.com"), &next_key()).await.unwrap();
    // The same e-mail from another conversation: the map answers, search is not even asked.
    let line = ConversationKey::new("shop", Channel::Line, "U77").unwrap();
    let second = desk.open(&agent, &line, &request("Ann@Example.com"), &next_key()).await.unwrap();
    assert_ne!(first, second);
    assert_eq!(s.fake.requests_of(Kind::SearchContacts).len(), 1);
    assert_eq!(s.fake.requests_of(Kind::CreateContact).len(), 1);
    assert!(s.fake.requests_of(Kind::Assign).is_empty(), "no assignee configured: the workspace's rules route it");

    // A process that lost the map: search still lags, the create is answered 409 with the id.
    let fresh = IntercomDesk::new(client_with(&Arc::new(MemKv::default()), &s.clock));
    let third = fresh.open(&agent, &line, &request("ann@example.com"), &next_key()).await.unwrap();
    let creates = s.fake.requests_of(Kind::CreateContact);
    assert_eq!(creates.iter().map(|r| r.status).collect::<Vec<_>>(), vec![200, 409]);
    assert_eq!(s.fake.contacts().len(), 1, "one contact for one e-mail address");
    let contact = &s.fake.contacts()[0].id;
    for id in [&first, &second, &third] {
        assert_eq!(&s.fake.conversation(id).unwrap().contact_id, contact);
    }
}

#[tokio::test]
async fn users_without_their_own_email_are_not_merged_into_one_contact() {
    let s = Setup::new().await;
    let agent = s.agent(json!({}));
    let default = agent.policy.default_email.clone();
    let desk = s.desk();
    let a = desk.open(&agent, &telegram("101"), &request(&default), &next_key()).await.unwrap();
    let b = desk.open(&agent, &telegram("102"), &request(&default), &next_key()).await.unwrap();
    let (ca, cb) = (s.fake.conversation(&a).unwrap().contact_id, s.fake.conversation(&b).unwrap().contact_id);
    assert_ne!(ca, cb, "two Telegram users are two contacts");
    let creates = s.fake.requests_of(Kind::CreateContact);
    assert!(creates.iter().all(|c| c.body.get("email").is_none()), "the agent's default address is not theirs");
    // The same user again is the same contact.
    let again = desk.open(&agent, &telegram("101"), &request(&default), &next_key()).await.unwrap();
    assert_eq!(s.fake.conversation(&again).unwrap().contact_id, ca);
}

#[tokio::test]
async fn existing_contacts_are_found_and_archived_ones_restored() {
    let s = Setup::new().await;
    let agent = s.agent(json!({}));
    let desk = s.desk();
    let lead = s.fake.seed_contact("lead", "lea@example.com");
    let id = desk.open(&agent, &telegram("1"), &request("lea@example.com"), &next_key()).await.unwrap();
    assert!(s.fake.requests_of(Kind::CreateContact).is_empty());
    let open = &s.fake.requests_of(Kind::CreateConversation)[0];
    assert_eq!(open.body["from"], json!({"type": "lead", "id": lead}));
    assert_eq!(s.fake.conversation(&id).unwrap().contact_id, lead);

    let user = s.fake.seed_contact("user", "uma@example.com");
    s.fake.archive_contact(&user);
    let id = desk.open(&agent, &telegram("2"), &request("uma@example.com"), &next_key()).await.unwrap();
    assert_eq!(s.fake.requests_of(Kind::CreateContact)[0].status, 409);
    assert_eq!(s.fake.wait_for(Kind::UnarchiveContact, 1, WAIT).await[0].path, format!("/contacts/{user}/unarchive"));
    assert_eq!(s.fake.conversation(&id).unwrap().contact_id, user);
}

#[tokio::test]
async fn a_remembered_contact_that_is_gone_is_looked_up_again() {
    let s = Setup::new().await;
    let agent = s.agent(json!({}));
    let desk = s.desk();
    desk.open(&agent, &telegram("1"), &request("ann@example.com"), &next_key()).await.unwrap();
    let gone = s.fake.contacts()[0].id.clone();
    s.fake.delete_contact(&gone);
    let id = desk.open(&agent, &telegram("2"), &request("ann@example.com"), &next_key()).await.unwrap();
    let statuses: Vec<u16> = s.fake.requests_of(Kind::CreateConversation).iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![200, 404, 200]);
    let now = s.fake.conversation(&id).unwrap().contact_id;
    assert_ne!(now, gone);
    assert_eq!(s.fake.contacts().len(), 1);
}

#[tokio::test]
async fn messenger_handoff_notes_and_assigns_inside_the_conversation() {
    let s = Setup::new().await;
    let contact = s.fake.seed_contact("user", "ann@example.com");
    let conv = s.fake.messenger_conversation(&contact, "Hi, where is my parcel?");
    // The bot teammate answered so far and holds the admin assignment.
    s.fake.set_admin_assignee(&conv, Some(fake::BOT_ADMIN_ID));
    let agent = s.team_agent();
    let key = ConversationKey::new("shop", Channel::Intercom, &conv).unwrap();
    let id = s.desk().open(&agent, &key, &request("ann@example.com"), &next_key()).await.unwrap();
    assert_eq!(id, conv);

    let note = &s.fake.wait_for(Kind::Note, 1, WAIT).await[0];
    assert_eq!(note.path, format!("/conversations/{conv}/reply"));
    assert_eq!(note.field("type"), Some("admin"));
    assert_eq!(note.field("admin_id"), Some(fake::BOT_ADMIN_ID));
    let text = note.field("body").unwrap();
    assert!(text.contains("the user asked for a human") && text.contains("Can a person check where it is?"), "{text}");

    let assigns = s.fake.wait_for(Kind::Assign, 2, WAIT).await;
    assert_eq!(
        assigns[0].body,
        json!({"message_type": "assignment", "type": "team", "admin_id": fake::BOT_ADMIN_ID, "assignee_id": fake::TEAM_ID})
    );
    assert!(assigns[0].body.get("body").is_none(), "an assignment body could reach the user");
    assert_eq!(assigns[1].field("type"), Some("admin"));
    assert_eq!(assigns[1].field("assignee_id"), Some("0"));
    let c = s.fake.conversation(&conv).unwrap();
    assert_eq!((c.team_assignee_id.as_deref(), c.admin_assignee_id.as_deref()), (Some(fake::TEAM_ID), None));
    assert!(
        s.fake.requests_of(Kind::CreateConversation).is_empty() && s.fake.requests_of(Kind::SearchContacts).is_empty()
    );

    // With a teammate configured the conversation goes to them.
    let conv2 = s.fake.messenger_conversation(&contact, "Hello?");
    let agent = s.agent(json!({"admin_id": fake::HUMAN_ADMIN_ID}));
    let key = ConversationKey::new("shop", Channel::Intercom, &conv2).unwrap();
    s.desk().open(&agent, &key, &request("ann@example.com"), &next_key()).await.unwrap();
    let assign = &s.fake.wait_for(Kind::Assign, 3, WAIT).await[2];
    assert_eq!(assign.field("type"), Some("admin"));
    assert_eq!(assign.field("assignee_id"), Some(fake::HUMAN_ADMIN_ID));
    assert_eq!(s.fake.conversation(&conv2).unwrap().admin_assignee_id.as_deref(), Some(fake::HUMAN_ADMIN_ID));
    assert_eq!(s.fake.requests_of(Kind::Assign).len(), 3);
}

#[tokio::test]
async fn retries_with_the_same_key_send_once() {
    let s = Setup::new().await;
    let agent = s.team_agent();
    let desk = s.desk();
    let key = telegram("9");
    let open_key = next_key();
    let a = desk.open(&agent, &key, &request("ann@example.com"), &open_key).await.unwrap();
    let b = desk.open(&agent, &key, &request("ann@example.com"), &open_key).await.unwrap();
    assert_eq!(a, b);
    let post_key = next_key();
    desk.post(&agent, &a, "hello", &post_key).await.unwrap();
    desk.post(&agent, &a, "hello", &post_key).await.unwrap();
    let say_key = next_key();
    let message = OutMessage::new(Role::Bot, "Hi!");
    desk.client().reply_as_bot(&agent, &a, &message, &say_key).await.unwrap();
    desk.client().reply_as_bot(&agent, &a, &message, &say_key).await.unwrap();
    let close_key = next_key();
    desk.close(&agent, &a, CloseReason::Timeout, &close_key).await.unwrap();
    desk.close(&agent, &a, CloseReason::Timeout, &close_key).await.unwrap();
    for (kind, n) in [
        (Kind::SearchContacts, 1),
        (Kind::CreateContact, 1),
        (Kind::CreateConversation, 1),
        (Kind::Assign, 1),
        (Kind::UserReply, 1),
        (Kind::AdminReply, 1),
        (Kind::Close, 1),
    ] {
        assert_eq!(s.fake.requests_of(kind).len(), n, "{kind:?}");
    }
    // Completed calls are remembered for two days, not forever.
    s.clock.advance(Duration::from_secs(3 * 24 * 3600));
    desk.post(&agent, &a, "hello", &post_key).await.unwrap();
    assert_eq!(s.fake.requests_of(Kind::UserReply).len(), 2);
}

#[tokio::test]
async fn an_open_that_failed_halfway_resumes_without_a_second_conversation() {
    let s = Setup::new().await;
    let desk = s.desk();
    let key = telegram("5");
    let open_key = next_key();
    // The assignment is refused (an unknown team): the conversation exists already.
    let broken = s.agent(json!({"team_id": "404404"}));
    let e = desk.open(&broken, &key, &request("ann@example.com"), &open_key).await.unwrap_err();
    assert!(matches!(&e, DeliveryError::Permanent { message } if message.contains("Assignee not found")), "{e}");
    assert_no_secrets(&e.to_string());
    // Fixed configuration, same effect retried.
    let id = desk.open(&s.team_agent(), &key, &request("ann@example.com"), &open_key).await.unwrap();
    assert_eq!(s.fake.requests_of(Kind::CreateConversation).len(), 1);
    assert_eq!(s.fake.conversations().len(), 1);
    assert_eq!(s.fake.conversation(&id).unwrap().team_assignee_id.as_deref(), Some(fake::TEAM_ID));
}

#[tokio::test]
async fn rate_limits_wait_for_the_reset_and_outages_are_retryable() {
    let s = Setup::new().await;
    let agent = s.team_agent();
    let c = s.client();
    let key = next_key();
    s.fake.fail_next(1, 429);
    let e = c.reply_as_bot(&agent, "123", &OutMessage::new(Role::Bot, "Hi"), &key).await.unwrap_err();
    match &e {
        DeliveryError::Retryable { message, retry_after_ms: Some(ms) } => {
            assert!((1000..=2000).contains(ms), "wait {ms} ms");
            assert!(message.contains("HTTP 429") && message.contains("rate_limit_exceeded"), "{message}");
        }
        other => panic!("expected a retryable error with a delay, got {other:?}"),
    }
    assert_no_secrets(&e.to_string());
    // Messenger conversation 123 does not exist in the fake: the retry is a permanent 404.
    let e = c.reply_as_bot(&agent, "123", &OutMessage::new(Role::Bot, "Hi"), &key).await.unwrap_err();
    assert!(
        matches!(&e, DeliveryError::Permanent { message } if message.contains("HTTP 404") && message.contains("Resource Not Found")),
        "{e}"
    );

    s.fake.fail_next(1, 503);
    let e = s.desk().open(&agent, &telegram("1"), &request("ann@example.com"), &next_key()).await.unwrap_err();
    assert!(matches!(e, DeliveryError::Retryable { .. }), "{e}");
    assert_no_secrets(&e.to_string());
}

#[tokio::test]
async fn wrong_token_is_unauthorized_and_never_shown() {
    let s = Setup::new().await;
    let mut agent = s.team_agent();
    agent.intercom.as_mut().unwrap().access_token.0 = "wrong-token-0123456789".into();
    let desk = s.desk();
    let e = desk.client().reply_as_bot(&agent, "1", &OutMessage::new(Role::Bot, "Hi"), &next_key()).await.unwrap_err();
    assert!(
        matches!(&e, DeliveryError::Unauthorized { message } if message.contains("HTTP 401") && message.contains("Access Token Invalid")),
        "{e}"
    );
    assert_no_secrets(&e.to_string());
    assert_no_secrets(&format!("{e:?}"));
    let e = desk.open(&agent, &telegram("1"), &request("ann@example.com"), &next_key()).await.unwrap_err();
    assert!(matches!(e, DeliveryError::Unauthorized { .. }), "{e}");
    let (status, detail) = desk.probe(&agent).await;
    assert_eq!(status, ServiceStatus::Unavailable);
    assert!(detail.contains("access token"), "{detail}");
    assert_no_secrets(&detail);

    // No server at all: a retryable transport error, still without the token.
    let mut down = s.team_agent();
    down.intercom.as_mut().unwrap().api_base = "http://127.0.0.1:9".into();
    let e = desk.post(&down, "1", "hi", &next_key()).await.unwrap_err();
    assert!(matches!(e, DeliveryError::Retryable { .. }), "{e}");
    assert_no_secrets(&e.to_string());
}

#[tokio::test]
async fn probe_reports_the_desk_status() {
    let s = Setup::new().await;
    let desk = s.desk();
    let (status, detail) = desk.probe(&s.team_agent()).await;
    assert_eq!(status, ServiceStatus::Available, "{detail}");
    assert!(detail.contains("Assistant"), "{detail}");
    assert_no_secrets(&detail);
    assert_eq!(s.fake.requests_of(Kind::Me).len(), 1);

    let mut wrong_bot = s.team_agent();
    wrong_bot.intercom.as_mut().unwrap().bot_admin_id = "123".into();
    let (status, detail) = desk.probe(&wrong_bot).await;
    assert_eq!(status, ServiceStatus::Unavailable);
    assert!(detail.contains("bot_admin_id"), "{detail}");

    let mut none = s.team_agent();
    none.intercom = None;
    assert_eq!(desk.probe(&none).await.0, ServiceStatus::NotConfigured);
}

#[tokio::test]
async fn bot_replies_list_buttons_and_are_recognised() {
    let s = Setup::new().await;
    let agent = s.team_agent();
    let contact = s.fake.seed_contact("user", "ann@example.com");
    let conv = s.fake.messenger_conversation(&contact, "Hi");
    let c = s.client();
    let mut m = OutMessage::new(Role::System, "Still there? Choose one:");
    m.buttons = vec![
        Button { label: "End".into(), value: "end".into() },
        Button { label: "Keep waiting".into(), value: "wait".into() },
    ];
    c.reply_as_bot(&agent, &conv, &m, &next_key()).await.unwrap();
    let reply = &s.fake.wait_for(Kind::AdminReply, 1, WAIT).await[0];
    assert_eq!(
        reply.body,
        json!({"message_type": "comment", "type": "admin", "admin_id": fake::BOT_ADMIN_ID,
            "body": "Still there? Choose one:\n• End\n• Keep waiting"})
    );
    assert!(c.is_own_admin(&agent, fake::BOT_ADMIN_ID));
    assert!(!c.is_own_admin(&agent, fake::HUMAN_ADMIN_ID));
    let e = c.reply_as_bot(&agent, &conv, &OutMessage::new(Role::Bot, "  "), &next_key()).await.unwrap_err();
    assert!(matches!(e, DeliveryError::Permanent { .. }));
}

#[tokio::test]
async fn post_without_a_remembered_contact_reads_the_conversation() {
    let s = Setup::new().await;
    let agent = s.team_agent();
    let contact = s.fake.seed_contact("user", "ann@example.com");
    let conv = s.fake.messenger_conversation(&contact, "Hi");
    s.desk().post(&agent, &conv, "still there", &next_key()).await.unwrap();
    assert_eq!(s.fake.wait_for(Kind::GetConversation, 1, WAIT).await[0].path, format!("/conversations/{conv}"));
    assert_eq!(s.fake.wait_for(Kind::UserReply, 1, WAIT).await[0].field("intercom_user_id"), Some(contact.as_str()));
    // The link is kept: the next post asks no more.
    s.desk().post(&agent, &conv, "hello?", &next_key()).await.unwrap();
    assert_eq!(s.fake.requests_of(Kind::GetConversation).len(), 1);
}

#[test]
fn every_notification_builder_parses() {
    let n = intercom::parse(&fake::user_replied("215", "p1", "c-9", "Where is <my> parcel & box?")).unwrap();
    assert!(n.id.starts_with("notif_"), "{}", n.id);
    assert_eq!(
        n.event,
        WebhookEvent::UserMessage {
            conversation_id: "215".into(),
            part_id: "p1".into(),
            contact_id: Some("c-9".into()),
            email: Some(fake::USER_EMAIL.into()),
            text: "Where is <my> parcel & box?".into(),
        }
    );
    let again = intercom::parse(&fake::redelivered(&fake::user_replied("215", "p1", "c-9", "x"))).unwrap();
    assert!(again.id.starts_with("notif_"));

    let created = intercom::parse(&fake::user_created("216", "m1", "c-9", "bob@example.com", "Hello there")).unwrap();
    assert_eq!(
        created.event,
        WebhookEvent::UserMessage {
            conversation_id: "216".into(),
            part_id: "m1".into(),
            contact_id: Some("c-9".into()),
            email: Some("bob@example.com".into()),
            text: "Hello there".into(),
        }
    );

    let reply = intercom::parse(&fake::admin_replied("215", "p2", fake::HUMAN_ADMIN_ID, "On it!")).unwrap();
    assert_eq!(
        reply.event,
        WebhookEvent::AdminReply {
            conversation_id: "215".into(),
            part_id: "p2".into(),
            admin_id: fake::HUMAN_ADMIN_ID.into(),
            text: "On it!".into(),
        }
    );
    let closed = intercom::parse(&fake::admin_closed("215", fake::HUMAN_ADMIN_ID)).unwrap();
    assert_eq!(closed.event, WebhookEvent::Closed { conversation_id: "215".into() });
    assert_eq!(intercom::parse(&fake::ping()).unwrap().event, WebhookEvent::Ping);

    for (body, topic) in [
        (fake::admin_noted("215", "p3", fake::HUMAN_ADMIN_ID, "internal"), "conversation.admin.noted"),
        (fake::bot_replied("215", "p4", fake::FIN_BOT_ID, "I am Fin"), "conversation.admin.replied"),
        (fake::admin_assigned("215", fake::HUMAN_ADMIN_ID, fake::HUMAN_ADMIN_ID), "conversation.admin.assigned"),
    ] {
        match intercom::parse(&body).unwrap().event {
            WebhookEvent::Other { topic: t, conversation_id, why } => {
                assert_eq!(t, topic);
                assert_eq!(conversation_id.as_deref(), Some("215"));
                assert!(!why.is_empty());
            }
            other => panic!("{topic} must be ignored, got {other:?}"),
        }
    }
}

#[test]
fn redelivery_keeps_the_id() {
    let first = fake::admin_replied("215", "p2", fake::HUMAN_ADMIN_ID, "On it!");
    let second = fake::redelivered(&first);
    let (a, b) = (intercom::parse(&first).unwrap(), intercom::parse(&second).unwrap());
    assert_eq!(a, b);
    let v: Value = serde_json::from_slice(&second).unwrap();
    assert_eq!(v["delivery_attempts"], 2);
    // Another notification has another id.
    assert_ne!(intercom::parse(&fake::admin_replied("215", "p2", fake::HUMAN_ADMIN_ID, "On it!")).unwrap().id, a.id);
}

#[test]
fn html_bodies_become_text_and_plain_ones_stay() {
    let html = intercom::parse(&fake::user_replied_body("215", "p1", "c-9", "<p>Hi <b>there</b></p>")).unwrap();
    assert!(matches!(html.event, WebhookEvent::UserMessage { ref text, .. } if text == "Hi there"), "{:?}", html.event);
    let multi =
        fake::user_replied_body("215", "p1", "c-9", "<p>Line one</p><p>Line <i>two</i><br>three &amp; more</p>");
    assert!(
        matches!(intercom::parse(&multi).unwrap().event, WebhookEvent::UserMessage { ref text, .. } if text == "Line one\nLine two\nthree & more")
    );
    // API 2.15+: plain text, kept as written.
    let plain = intercom::parse(&fake::user_replied_body("215", "p1", "c-9", "is 3 < 4? <3 &amp;")).unwrap();
    assert!(matches!(plain.event, WebhookEvent::UserMessage { ref text, .. } if text == "is 3 < 4? <3 &amp;"));
}

#[test]
fn signatures_are_checked() {
    let body = fake::admin_replied("215", "p2", fake::HUMAN_ADMIN_ID, "On it!");
    let header = fake::sign(fake::CLIENT_SECRET, &body);
    assert!(header.starts_with("sha1=") && header.len() == 45);
    assert!(intercom::verify_signature(fake::CLIENT_SECRET, &body, Some(&header)));
    let mut tampered = body.clone();
    let at = tampered.len() / 2;
    tampered[at] ^= 0x01;
    assert!(!intercom::verify_signature(fake::CLIENT_SECRET, &tampered, Some(&header)));
    assert!(!intercom::verify_signature("another-secret", &body, Some(&header)));
    assert!(!intercom::verify_signature(fake::CLIENT_SECRET, &body, None));
    for malformed in ["", "sha1=", "sha1=xyz", &header[5..], &header.replace("sha1=", "sha256="), "sha1=00ff"] {
        assert!(!intercom::verify_signature(fake::CLIENT_SECRET, &body, Some(malformed)), "{malformed:?}");
    }
    // The same notification re-delivered is signed anew over its own bytes.
    let again = fake::redelivered(&body);
    assert!(!intercom::verify_signature(fake::CLIENT_SECRET, &again, Some(&header)));
    assert!(intercom::verify_signature(fake::CLIENT_SECRET, &again, Some(&fake::sign(fake::CLIENT_SECRET, &again))));
}
