//! Intercom, LiveChat and WhatsApp end to end on `baton serve`, against fake providers that
//! follow the published wire formats (seed 004):
//! - Intercom Messenger users answered by the AI as a bot teammate, then assigned to a team
//!   (desk -> desk); a Telegram user handed to an Intercom conversation (other channel -> desk);
//! - LiveChat chats answered by a bot agent, then transferred to a group; a Telegram user
//!   handed to a LiveChat chat the hub starts as the customer;
//! - WhatsApp users answered, buttons, non-text messages, failed deliveries, and the 24-hour
//!   window (a late human reply goes out as a template, or the desk is told it was not sent).

mod common;

use baton_core::agent::{DeskConfig, TelegramConfig, WhatsappConfig, WhatsappTemplate};
use baton_core::model::Secret;
use baton_core::{Channel, ConversationKey, Millis, State};
use baton_runtime::clock::ManualClock;
use baton_tests::{intercom as ic, livechat as lc, telegram as tg, whatsapp as wa};
use common::{hub_with, Hub};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);
const BOT_TOKEN: &str = "7654321:AAE_messengers-e2e";
const HOOK_SECRET: &str = "messengers-e2e-hook";
const IC_TOKEN: &str = "dG9rOmZha2UtaW50ZXJjb20tdG9rZW4=";
const WA_TOKEN: &str = "EAAG-fake-whatsapp-access-token";
const WA_PHONE: &str = "106540352242922";
const WA_APP_SECRET: &str = "fake-meta-app-secret-9c1e";
const WA_VERIFY: &str = "fake-verify-token-77";

fn system_clock() -> Arc<dyn baton_core::ports::Clock> {
    Arc::new(baton_runtime::clock::SystemClock)
}

fn telegram_config(api: String) -> TelegramConfig {
    TelegramConfig {
        bot_token: Secret(BOT_TOKEN.into()),
        secret_token: Secret(HOOK_SECRET.into()),
        api_base: api,
        poll: false,
    }
}

async fn post(url: String, body: Vec<u8>, header: Option<(&str, String)>) -> reqwest::Response {
    let mut req = reqwest::Client::new().post(url).header("content-type", "application/json").body(body);
    if let Some((name, value)) = header {
        req = req.header(name, value);
    }
    req.send().await.unwrap()
}

async fn telegram(hub: &Hub, update: Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/channels/telegram/shop", hub.base))
        .header("X-Telegram-Bot-Api-Secret-Token", HOOK_SECRET)
        .json(&update)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

async fn state_of(hub: &Hub, key: &ConversationKey) -> State {
    hub.running.ports.store.load_session(key).await.unwrap().expect("session").session.state
}

/// Wait until the conversation is in a state `want` accepts.
async fn wait_state(hub: &Hub, key: &ConversationKey, want: impl Fn(&State) -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(s) = hub.running.ports.store.load_session(key).await.unwrap() {
            if want(&s.session.state) {
                return;
            }
        }
        assert!(std::time::Instant::now() < deadline, "the conversation did not reach the expected state");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

/// Let the worker finish whatever is queued.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(700)).await;
}

// ---------------------------------------------------------------- Intercom

struct Intercom {
    hub: Hub,
    fake: ic::FakeIntercom,
    tg: tg::FakeTelegram,
}

async fn intercom_setup() -> Intercom {
    let fake = ic::FakeIntercom::start(IC_TOKEN).await;
    let tg = tg::FakeTelegram::start(BOT_TOKEN).await;
    let (cfg, api) = (fake.config(), tg.url());
    let hub = hub_with(system_clock(), move |a| {
        a.intercom = Some(cfg);
        a.desk = DeskConfig::Intercom { team_id: Some(ic::TEAM_ID.into()), admin_id: None };
        a.channels.telegram = Some(telegram_config(api));
    })
    .await;
    Intercom { hub, fake, tg }
}

impl Intercom {
    async fn webhook(&self, body: Vec<u8>) -> reqwest::Response {
        let sig = ic::sign(ic::CLIENT_SECRET, &body);
        post(format!("{}/desks/intercom/shop", self.hub.base), body, Some(("X-Hub-Signature", sig))).await
    }

    /// The bot teammate's replies in `conversation`, in order.
    fn bot_replies(&self, conversation: &str) -> Vec<String> {
        self.fake
            .requests_of(ic::Kind::AdminReply)
            .into_iter()
            .filter(|r| r.status == 200 && r.conversation_id.as_deref() == Some(conversation))
            .map(|r| r.field("body").unwrap_or_default().to_string())
            .collect()
    }
}

#[tokio::test]
async fn intercom_messenger_users_get_ai_answers_then_a_team_takes_over() {
    let s = intercom_setup().await;
    let contact = s.fake.seed_contact("user", ic::USER_EMAIL);
    let conv = s.fake.messenger_conversation(&contact, "What are your opening hours?");
    let key = ConversationKey::new("shop", Channel::Intercom, &conv).unwrap();

    // Intercom checks the URL with HEAD and sends a signed ping when the webhook is saved.
    let head = reqwest::Client::new().head(format!("{}/desks/intercom/shop", s.hub.base)).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(s.webhook(ic::ping()).await.status(), 200);

    // Unsigned and wrongly signed notifications: 401, nothing stored.
    let body = ic::user_created(&conv, "m-1", &contact, ic::USER_EMAIL, "What are your opening hours?");
    let url = format!("{}/desks/intercom/shop", s.hub.base);
    assert_eq!(post(url.clone(), body.clone(), None).await.status(), 401);
    let forged = ic::sign("not-the-client-secret", &body);
    assert_eq!(post(url, body.clone(), Some(("X-Hub-Signature", forged))).await.status(), 401);
    assert!(s.hub.running.ports.store.load_session(&key).await.unwrap().is_none());

    // The question is answered as the bot teammate, once although Intercom delivers it twice.
    assert_eq!(s.webhook(body.clone()).await.status(), 200);
    assert_eq!(s.webhook(ic::redelivered(&body)).await.status(), 200);
    let replies = s.fake.wait_for(ic::Kind::AdminReply, 1, WAIT).await;
    assert_eq!(replies[0].field("admin_id"), Some(ic::BOT_ADMIN_ID));
    assert_eq!(replies[0].authorization.as_deref(), Some(format!("Bearer {IC_TOKEN}").as_str()));
    assert_eq!(replies[0].intercom_version.as_deref(), Some(ic::API_VERSION));
    assert!(s.bot_replies(&conv)[0].contains("We are open 9-17 on weekdays."), "{:?}", s.bot_replies(&conv));

    // Our own reply and Fin's come back as admin replies: neither is a human taking over.
    let answer = s.bot_replies(&conv)[0].clone();
    assert_eq!(s.webhook(ic::admin_replied(&conv, "p-1", ic::BOT_ADMIN_ID, &answer)).await.status(), 200);
    assert_eq!(s.webhook(ic::bot_replied(&conv, "p-2", ic::FIN_BOT_ID, "Fin here")).await.status(), 200);
    s.webhook(ic::user_replied(&conv, "p-3", &contact, "How long does shipping take?")).await;
    s.fake.wait_for(ic::Kind::AdminReply, 2, WAIT).await;
    assert!(s.bot_replies(&conv)[1].contains("Shipping takes 2-4 days."));
    assert_eq!(state_of(&s.hub, &key).await, State::Bot);

    // Handoff: a note for the team and an assignment to it, inside the same conversation.
    s.webhook(ic::user_replied(&conv, "p-4", &contact, "I want to talk to a human")).await;
    let assign = s.fake.wait_for(ic::Kind::Assign, 1, WAIT).await;
    assert_eq!(assign[0].conversation_id.as_deref(), Some(conv.as_str()));
    assert_eq!(assign[0].field("type"), Some("team"));
    assert_eq!(assign[0].field("assignee_id"), Some(ic::TEAM_ID));
    let notes = s.fake.requests_of(ic::Kind::Note);
    assert!(notes.iter().any(|n| n.field("body").is_some_and(|b| b.contains("human"))), "{notes:?}");
    assert!(s.fake.conversation(&conv).unwrap().team_assignee_id.as_deref() == Some(ic::TEAM_ID));
    let before = s.bot_replies(&conv).len();

    // A human teammate answers; notes and the user's messages stay between them. The hub is silent.
    s.webhook(ic::admin_replied(&conv, "p-5", ic::HUMAN_ADMIN_ID, "Hi, Patricia here.")).await;
    s.webhook(ic::admin_noted(&conv, "p-6", ic::HUMAN_ADMIN_ID, "VIP customer")).await;
    s.webhook(ic::user_replied(&conv, "p-7", &contact, "How long does shipping take?")).await;
    wait_state(&s.hub, &key, |st| matches!(st, State::WithHuman { .. })).await;
    settle().await;
    assert_eq!(s.bot_replies(&conv).len(), before, "the hub stayed silent: {:?}", s.bot_replies(&conv));
    assert!(s.fake.requests_of(ic::Kind::UserReply).is_empty(), "nothing relayed inside Intercom");

    // The teammate closes: the bot has the conversation again.
    s.webhook(ic::admin_closed(&conv, ic::HUMAN_ADMIN_ID)).await;
    wait_state(&s.hub, &key, |st| *st == State::Bot).await;
    s.hub.running.stop().await;
}

#[tokio::test]
async fn a_telegram_user_is_handed_to_an_intercom_team_and_back() {
    let s = intercom_setup().await;
    telegram(&s.hub, tg::text_update(1, 42, "How long does shipping take?")).await;
    s.tg.wait_for_messages(1, WAIT).await;

    // The handoff opens a conversation as the user's contact, with the history, for the team.
    telegram(&s.hub, tg::text_update(2, 42, "I want to talk to a human")).await;
    let created = s.fake.wait_for(ic::Kind::CreateConversation, 1, WAIT).await;
    let transcript = created[0].field("body").unwrap_or_default().to_string();
    assert!(transcript.contains("How long does shipping take?"), "{transcript}");
    assert!(transcript.contains("Shipping takes 2-4 days."), "{transcript}");
    let assign = s.fake.wait_for(ic::Kind::Assign, 1, WAIT).await;
    let conv = assign[0].conversation_id.clone().expect("conversation id");
    assert_eq!(assign[0].field("assignee_id"), Some(ic::TEAM_ID));
    s.tg.wait_for_messages(2, WAIT).await;

    // The user's next message is written as the contact; its echo is not relayed back.
    telegram(&s.hub, tg::text_update(3, 42, "My order 1234 is late")).await;
    let posted = s.fake.wait_for(ic::Kind::UserReply, 1, WAIT).await;
    assert_eq!(posted[0].conversation_id.as_deref(), Some(conv.as_str()));
    assert_eq!(posted[0].field("body"), Some("My order 1234 is late"));
    let contact = s.fake.conversation(&conv).unwrap().contact_id;
    assert_eq!(s.webhook(ic::user_replied(&conv, "u-1", &contact, "My order 1234 is late")).await.status(), 200);

    // Only a teammate's comment reaches Telegram: not a note, not a bot part, and once.
    s.webhook(ic::admin_noted(&conv, "n-1", ic::HUMAN_ADMIN_ID, "internal: check the warehouse")).await;
    s.webhook(ic::bot_replied(&conv, "b-1", ic::FIN_BOT_ID, "Fin suggestion")).await;
    let reply = ic::admin_replied(&conv, "a-1", ic::HUMAN_ADMIN_ID, "Hi, Patricia here. Let me check.");
    assert_eq!(s.webhook(reply.clone()).await.status(), 200);
    assert_eq!(s.webhook(ic::redelivered(&reply)).await.status(), 200);
    let sent = s.tg.wait_for_messages(4, WAIT).await;
    assert_eq!(sent[3]["text"], "Hi, Patricia here. Let me check.");
    settle().await;
    let texts: Vec<String> =
        s.tg.sent_messages().iter().map(|m| m["text"].as_str().unwrap_or("").to_string()).collect();
    assert_eq!(texts.len(), 4, "no note, bot part, echo or duplicate reached the user: {texts:?}");
    assert_eq!(s.fake.requests_of(ic::Kind::UserReply).len(), 1);

    // The teammate closes the conversation: the user is told and the bot is back.
    s.webhook(ic::admin_closed(&conv, ic::HUMAN_ADMIN_ID)).await;
    s.tg.wait_for_messages(5, WAIT).await;
    let key = ConversationKey::new("shop", Channel::Telegram, "42").unwrap();
    wait_state(&s.hub, &key, |st| *st == State::Bot).await;

    // A second handoff that the user ends closes the Intercom conversation as the bot teammate.
    telegram(&s.hub, tg::text_update(4, 42, "human")).await;
    s.fake.wait_for(ic::Kind::CreateConversation, 2, WAIT).await;
    telegram(&s.hub, tg::callback_update(5, 42, "/end")).await;
    let close = s.fake.wait_for(ic::Kind::Close, 1, WAIT).await;
    assert_eq!(close[0].field("admin_id"), Some(ic::BOT_ADMIN_ID));
    s.hub.running.stop().await;
}

// ---------------------------------------------------------------- LiveChat

struct Livechat {
    hub: Hub,
    fake: lc::FakeLivechat,
    tg: tg::FakeTelegram,
}

async fn livechat_setup() -> Livechat {
    let fake = lc::FakeLivechat::start().await;
    let tg = tg::FakeTelegram::start(BOT_TOKEN).await;
    let (cfg, api) = (fake.config(), tg.url());
    let hub = hub_with(system_clock(), move |a| {
        a.livechat = Some(cfg);
        a.desk = DeskConfig::Livechat { group_id: lc::GROUP_ID };
        a.channels.telegram = Some(telegram_config(api));
    })
    .await;
    Livechat { hub, fake, tg }
}

impl Livechat {
    async fn webhook(&self, body: Vec<u8>) -> reqwest::Response {
        post(format!("{}/desks/livechat/shop", self.hub.base), body, None).await
    }

    /// What the bot agent said in `chat`, in order.
    fn bot_said(&self, chat: &str) -> Vec<Value> {
        self.fake
            .requests_of(lc::Kind::AgentEvent)
            .into_iter()
            .filter(|r| r.status == 200 && r.body["chat_id"] == chat)
            .map(|r| r.body["event"].clone())
            .collect()
    }
}

const CUSTOMER: &str = "b7eff798-f8df-4364-8059-649c35c9ed0c";
const HUMAN_AGENT: &str = "anna@example.com";

#[tokio::test]
async fn livechat_chats_get_bot_answers_then_a_transfer_to_the_group() {
    let s = livechat_setup().await;
    let chat = "PJ0MRSHTDG";
    s.fake.add_chat(chat);
    let key = ConversationKey::new("shop", Channel::Livechat, chat).unwrap();

    // A wrong or missing secret_key: 401, nothing stored.
    let body = lc::incoming_chat(chat, CUSTOMER, Some("ann@example.com"), "What are your opening hours?");
    assert_eq!(s.webhook(lc::with_secret(&body, Some("guess"))).await.status(), 401);
    assert_eq!(s.webhook(lc::with_secret(&body, None)).await.status(), 401);
    assert!(s.hub.running.ports.store.load_session(&key).await.unwrap().is_none());

    // The first message is answered by the bot agent, once although LiveChat retries.
    assert_eq!(s.webhook(body.clone()).await.status(), 200);
    assert_eq!(s.webhook(body).await.status(), 200);
    s.fake.wait_for(lc::Kind::AgentEvent, 1, WAIT).await;
    let said = s.bot_said(chat);
    assert!(said[0]["text"].as_str().unwrap().contains("We are open 9-17 on weekdays."), "{said:?}");
    let custom_id = said[0]["custom_id"].as_str().expect("a custom_id to recognise the echo").to_string();
    assert!(s.fake.requests_of(lc::Kind::AgentEvent)[0].authorization.as_deref().unwrap().starts_with("Bearer "));

    // The bot's own message comes back: not a human.
    let echo = lc::incoming_event(chat, "E-1", lc::BOT_ID, said[0]["text"].as_str().unwrap(), Some(&custom_id));
    assert_eq!(s.webhook(echo).await.status(), 200);
    s.webhook(lc::incoming_event(chat, "E-2", CUSTOMER, "How long does shipping take?", None)).await;
    s.fake.wait_for(lc::Kind::AgentEvent, 2, WAIT).await;
    assert!(s.bot_said(chat)[1]["text"].as_str().unwrap().contains("Shipping takes 2-4 days."));
    assert_eq!(state_of(&s.hub, &key).await, State::Bot);

    // A file from the customer reaches the bot as a placeholder naming it (answered, not lost).
    let file = lc::incoming_file(chat, "E-3", CUSTOMER, "invoice.pdf", "https://cdn.livechat-files.com/invoice.pdf");
    assert_eq!(s.webhook(file).await.status(), 200);
    s.fake.wait_for(lc::Kind::AgentEvent, 3, WAIT).await;

    // Handoff: a transfer to the desk's group.
    s.webhook(lc::incoming_event(chat, "E-4", CUSTOMER, "I want to talk to a human", None)).await;
    let transfer = s.fake.wait_for(lc::Kind::Transfer, 1, WAIT).await;
    assert_eq!(transfer[0].body["id"], chat);
    assert_eq!(transfer[0].body["target"]["ids"][0], lc::GROUP_ID);
    let before = s.bot_said(chat).len();

    // An agent of the group answers; the customer writes; the hub stays silent.
    s.webhook(lc::incoming_event(chat, "E-5", HUMAN_AGENT, "Hi, Anna here.", None)).await;
    s.webhook(lc::incoming_event(chat, "E-6", CUSTOMER, "How long does shipping take?", None)).await;
    wait_state(&s.hub, &key, |st| matches!(st, State::WithHuman { .. })).await;
    settle().await;
    assert_eq!(s.bot_said(chat).len(), before, "the hub stayed silent: {:?}", s.bot_said(chat));

    // The chat ends: the bot has it again.
    s.webhook(lc::chat_deactivated(chat)).await;
    wait_state(&s.hub, &key, |st| *st == State::Bot).await;
    s.hub.running.stop().await;
}

#[tokio::test]
async fn a_telegram_user_is_handed_to_a_livechat_group_as_a_customer() {
    let s = livechat_setup().await;
    telegram(&s.hub, tg::text_update(1, 42, "How long does shipping take?")).await;
    s.tg.wait_for_messages(1, WAIT).await;

    // The handoff starts a chat in the group as a LiveChat customer, with the history.
    telegram(&s.hub, tg::text_update(2, 42, "I want to talk to a human")).await;
    let start = s.fake.wait_for(lc::Kind::StartChat, 1, WAIT).await;
    assert_eq!(start[0].body["chat"]["access"]["group_ids"][0], lc::GROUP_ID);
    let transcript = start[0].body.to_string();
    assert!(transcript.contains("Shipping takes 2-4 days."), "{transcript}");
    assert_eq!(s.fake.customers().len(), 1);
    let customer = s.fake.customers()[0].clone();
    s.tg.wait_for_messages(2, WAIT).await;

    // The user's next message is sent as the customer; its echo is not relayed back.
    telegram(&s.hub, tg::text_update(3, 42, "My order 1234 is late")).await;
    let sent = s.fake.wait_for(lc::Kind::CustomerEvent, 1, WAIT).await;
    let chat = sent[0].body["chat_id"].as_str().expect("chat id").to_string();
    assert_eq!(sent[0].body["event"]["text"], "My order 1234 is late");
    let custom_id = sent[0].body["event"]["custom_id"].as_str().map(str::to_string);
    let echo = lc::incoming_event(&chat, "E-1", &customer, "My order 1234 is late", custom_id.as_deref());
    assert_eq!(s.webhook(echo).await.status(), 200);

    // The agent's reply reaches Telegram, once although LiveChat retries it.
    let reply = lc::incoming_event(&chat, "E-2", HUMAN_AGENT, "Hi, Anna here. Let me check.", None);
    assert_eq!(s.webhook(reply.clone()).await.status(), 200);
    assert_eq!(s.webhook(reply).await.status(), 200);
    let sent = s.tg.wait_for_messages(4, WAIT).await;
    assert_eq!(sent[3]["text"], "Hi, Anna here. Let me check.");
    settle().await;
    assert_eq!(s.tg.sent_messages().len(), 4, "no echo or duplicate: {:?}", s.tg.sent_messages());
    assert_eq!(s.fake.requests_of(lc::Kind::CustomerEvent).len(), 1);

    // The user ends with the button: the chat is deactivated as the customer.
    telegram(&s.hub, tg::callback_update(4, 42, "/end")).await;
    s.fake.wait_for(lc::Kind::CustomerDeactivate, 1, WAIT).await;
    assert!(!s.fake.chat(&chat).unwrap().active);
    let key = ConversationKey::new("shop", Channel::Telegram, "42").unwrap();
    wait_state(&s.hub, &key, |st| *st == State::Bot).await;

    // A second handoff ended by the agents' side tells the user.
    telegram(&s.hub, tg::text_update(5, 42, "human")).await;
    s.fake.wait_for(lc::Kind::StartChat, 2, WAIT).await;
    let events_before = s.fake.requests_of(lc::Kind::CustomerEvent).len();
    telegram(&s.hub, tg::text_update(6, 42, "still there?")).await;
    let sent = s.fake.wait_for(lc::Kind::CustomerEvent, events_before + 1, WAIT).await;
    let chat2 = sent[events_before].body["chat_id"].as_str().unwrap().to_string();
    assert_eq!(sent[events_before].body["event"]["text"], "still there?");
    assert_ne!(chat2, chat, "a new chat for the new handoff: {:?}", s.fake.arrived());
    let told = s.tg.sent_messages().len();
    s.webhook(lc::chat_deactivated(&chat2)).await;
    wait_state(&s.hub, &key, |st| *st == State::Bot).await;
    s.tg.wait_for_messages(told + 1, WAIT).await;
    s.hub.running.stop().await;
}

// ---------------------------------------------------------------- WhatsApp

const WA_USER: &str = "16505551234";

fn whatsapp_config(api: String) -> WhatsappConfig {
    WhatsappConfig {
        phone_number_id: WA_PHONE.into(),
        access_token: Secret(WA_TOKEN.into()),
        app_secret: Secret(WA_APP_SECRET.into()),
        verify_token: Secret(WA_VERIFY.into()),
        api_base: api,
        api_version: "v21.0".into(),
        window_template: None,
    }
}

async fn whatsapp_hub(fake: &wa::FakeWhatsapp, clock: Arc<dyn baton_core::ports::Clock>) -> Hub {
    let api = fake.url();
    hub_with(clock, move |a| {
        a.channels.whatsapp = Some(whatsapp_config(api));
        a.policy.session_timeout_secs = 86_400;
        a.policy.wait_timeout_secs = 86_400;
    })
    .await
}

async fn whatsapp(hub: &Hub, messages: &[Value], statuses: &[Value]) -> reqwest::Response {
    let body = wa::webhook_body(WA_PHONE, messages, statuses);
    let sig = wa::sign(WA_APP_SECRET, &body);
    post(format!("{}/channels/whatsapp/shop", hub.base), body, Some(("X-Hub-Signature-256", sig))).await
}

fn wa_text(m: &Value) -> String {
    m["text"]["body"].as_str().or(m["interactive"]["body"]["text"].as_str()).unwrap_or_default().to_string()
}

#[tokio::test]
async fn whatsapp_users_get_answers_buttons_and_a_human_who_sees_their_photos() {
    let fake = wa::FakeWhatsapp::start(WA_TOKEN, WA_PHONE).await;
    let hub = whatsapp_hub(&fake, system_clock()).await;
    let url = format!("{}/channels/whatsapp/shop", hub.base);

    // Meta's subscription handshake: the challenge is echoed for the right verify token only.
    let handshake = |token: &str| {
        reqwest::Client::new()
            .get(&url)
            .query(&[("hub.mode", "subscribe"), ("hub.verify_token", token), ("hub.challenge", "1158201444")])
            .send()
    };
    let ok = handshake(WA_VERIFY).await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), "1158201444");
    assert_eq!(handshake("wrong").await.unwrap().status(), 403);

    // Unsigned or wrongly signed: 401, nothing stored.
    let body = wa::webhook_body(WA_PHONE, &[wa::text_message("wamid.1", WA_USER, "How long does shipping take?")], &[]);
    assert_eq!(post(url.clone(), body.clone(), None).await.status(), 401);
    let forged = wa::sign("not-the-app-secret", &body);
    assert_eq!(post(url.clone(), body.clone(), Some(("X-Hub-Signature-256", forged))).await.status(), 401);
    let key = ConversationKey::new("shop", Channel::Whatsapp, WA_USER).unwrap();
    assert!(hub.running.ports.store.load_session(&key).await.unwrap().is_none());

    // A question, delivered twice by Meta, answered once.
    let question = wa::text_message("wamid.1", WA_USER, "How long does shipping take?");
    assert_eq!(whatsapp(&hub, std::slice::from_ref(&question), &[]).await.status(), 200);
    assert_eq!(whatsapp(&hub, &[question], &[]).await.status(), 200);
    let sent = fake.wait_for_messages(1, WAIT).await;
    assert_eq!(sent[0]["to"], WA_USER);
    assert_eq!(wa_text(&sent[0]), "Shipping takes 2-4 days.");
    assert_eq!(fake.requests()[0].authorization.as_deref(), Some(format!("Bearer {WA_TOKEN}").as_str()));

    // Handoff: the waiting notice carries an interactive "end" button.
    whatsapp(&hub, &[wa::text_message("wamid.2", WA_USER, "I want to talk to a human")], &[]).await;
    let sent = fake.wait_for_messages(2, WAIT).await;
    assert_eq!(sent[1]["type"], "interactive");
    assert_eq!(sent[1]["interactive"]["action"]["buttons"][0]["reply"]["id"], "/end");
    let establish = hub.desk.first_to("/conversation/establish").await;
    let conversation_id = establish.body["conversation_id"].as_str().unwrap().to_string();

    // The human sees what the user sent that is not text.
    fake.put_media("1479537139650973", "image/jpeg", b"\xff\xd8broken-part.jpg");
    let photo = wa::image_message("wamid.3", WA_USER, "1479537139650973", Some("the broken part"));
    let place = wa::location_message("wamid.4", WA_USER, 45.8131, 15.9772, Some("Shop"), Some("Ilica 1, Zagreb"));
    assert_eq!(
        whatsapp(&hub, &[photo, place], &[wa::status_update("wamid.out1", WA_USER, "read")]).await.status(),
        200
    );
    let deadline = std::time::Instant::now() + WAIT;
    while hub.desk.count_to("/chat") < 2 {
        assert!(std::time::Instant::now() < deadline, "the placeholders did not reach the desk");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let chats: Vec<String> =
        hub.desk.requests_to("/chat").iter().map(|r| r.body["body"].as_str().unwrap_or("").to_string()).collect();
    let (placeholder, link) = chats[0].rsplit_once(" ").unwrap();
    assert_eq!(placeholder, "[image (media id 1479537139650973): the broken part]");
    assert_eq!(chats[1], "[location: 45.8131, 15.9772 Shop, Ilica 1, Zagreb]");

    // The link in the placeholder opens the photo through the hub (Meta's needs the token).
    assert!(link.starts_with(&format!("{}/media/shop/whatsapp/1479537139650973?", hub.base)), "{link}");
    let r = reqwest::get(link).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"\xff\xd8broken-part.jpg");
    // A changed link opens nothing.
    let forged = link.replace("1479537139650973?", "1479537139650974?");
    assert_eq!(reqwest::get(&forged).await.unwrap().status(), 403);
    let unsigned = link.split_once('?').unwrap().0;
    assert_eq!(reqwest::get(unsigned).await.unwrap().status(), 403);

    // The human's reply reaches WhatsApp; a failed delivery Meta reports later raises an alert.
    assert_eq!(hub.desk_reply(&conversation_id, "Hi, Anna here.", None).await.status(), 200);
    let sent = fake.wait_for_messages(4, WAIT).await;
    assert_eq!(wa_text(&sent[3]), "Hi, Anna here.");
    let failed = wa::failed_status("wamid.out2", WA_USER, 131026, "Message undeliverable");
    assert_eq!(whatsapp(&hub, &[], &[failed]).await.status(), 200);
    let alerts = hub.running.ports.alerts.recent();
    assert!(alerts.iter().any(|a| a.contains("wamid.out2") && a.contains("131026")), "{alerts:?}");

    // The user presses "End chat": the desk conversation is closed.
    whatsapp(&hub, &[wa::button_reply("wamid.5", WA_USER, "/end", "End chat")], &[]).await;
    let close = hub.desk.first_to("/conversation/close").await;
    assert_eq!(close.body["type"], "USER_CLOSED");
    wait_state(&hub, &key, |st| *st == State::Bot).await;
    hub.running.stop().await;
}

/// Thursday 2026-11-19 10:00 UTC.
const THURSDAY_10: i64 = 1_795_082_400_000;

#[tokio::test]
async fn a_human_reply_after_the_whatsapp_window_is_sent_as_a_template_or_reported() {
    let fake = wa::FakeWhatsapp::start(WA_TOKEN, WA_PHONE).await;
    let clock = Arc::new(ManualClock::new(Millis(THURSDAY_10)));
    let hub = whatsapp_hub(&fake, clock.clone()).await;
    let key = ConversationKey::new("shop", Channel::Whatsapp, WA_USER).unwrap();

    whatsapp(&hub, &[wa::text_message("wamid.1", WA_USER, "I want to talk to a human")], &[]).await;
    let establish = hub.desk.first_to("/conversation/establish").await;
    let conversation_id = establish.body["conversation_id"].as_str().unwrap().to_string();
    fake.wait_for_messages(1, WAIT).await;
    clock.advance_secs(60);
    hub.desk_reply(&conversation_id, "Hi, Anna here.", None).await;
    fake.wait_for_messages(3, WAIT).await;

    // 23 hours later the window is still open.
    clock.advance_secs(23 * 3600);
    hub.desk_reply(&conversation_id, "Your parcel left the warehouse.", None).await;
    let sent = fake.wait_for_messages(4, WAIT).await;
    assert_eq!(sent[3]["type"], "interactive", "a free-form message with its End chat button");
    assert_eq!(wa_text(&sent[3]), "Your parcel left the warehouse.");

    // Past 24 hours since the user last wrote, with no template: Meta would refuse a free-form
    // message, so none is sent and the desk is told in the conversation.
    fake.close_window_for(WA_USER);
    clock.advance_secs(2 * 3600);
    hub.desk_reply(&conversation_id, "It arrives tomorrow.", None).await;
    let deadline = std::time::Instant::now() + WAIT;
    let note = loop {
        let found = hub
            .desk
            .requests_to("/chat")
            .into_iter()
            .find(|r| r.body["body"].as_str().is_some_and(|b| b.contains("It arrives tomorrow.")));
        if let Some(r) = found {
            break r.body["body"].as_str().unwrap().to_string();
        }
        assert!(std::time::Instant::now() < deadline, "the desk was not told");
        tokio::time::sleep(Duration::from_millis(30)).await;
    };
    assert!(note.starts_with("[Not delivered to the user"), "{note}");
    settle().await;
    assert_eq!(fake.sent().len(), 4, "nothing was sent outside the window: {:?}", fake.sent());

    // With an approved template configured, the late reply goes out as that template.
    let mut agent = hub.running.ports.store.get_agent("shop").await.unwrap().unwrap();
    agent.channels.whatsapp.as_mut().unwrap().window_template =
        Some(WhatsappTemplate { name: "late_reply".into(), language: "en_US".into() });
    hub.running.ports.store.put_agent(&agent).await.unwrap();
    hub.desk_reply(&conversation_id, "Sorry for the wait: it arrives tomorrow.", None).await;
    let sent = fake.wait_for_messages(5, WAIT).await;
    assert_eq!(sent[4]["type"], "template");
    assert_eq!(sent[4]["template"]["name"], "late_reply");
    assert_eq!(
        sent[4]["template"]["components"][0]["parameters"][0]["text"],
        "Sorry for the wait: it arrives tomorrow."
    );

    // The user writes again: the window reopens and replies are free-form again.
    fake.open_window_for(WA_USER);
    whatsapp(&hub, &[wa::text_message("wamid.2", WA_USER, "Thanks!")], &[]).await;
    hub.desk.first_to("/chat").await;
    let deadline = std::time::Instant::now() + WAIT;
    while !hub.desk.requests_to("/chat").iter().any(|r| r.body["body"] == "Thanks!") {
        assert!(std::time::Instant::now() < deadline, "the user's message did not reach the desk");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    hub.desk_reply(&conversation_id, "You're welcome!", None).await;
    let sent = fake.wait_for_messages(6, WAIT).await;
    assert_eq!(sent[5]["type"], "interactive");
    assert_eq!(wa_text(&sent[5]), "You're welcome!");
    assert!(matches!(state_of(&hub, &key).await, State::WithHuman { .. }));
    hub.running.stop().await;
}

/// A `Write` the test can read while the flow runs.
#[derive(Clone, Default)]
struct Shared(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn livechat_authorize_turns_the_approved_code_into_a_refresh_token() {
    let fake = lc::FakeLivechat::start().await;
    let mut cfg = fake.config();
    cfg.refresh_token = Secret(String::new());
    let out = Shared::default();
    let http = reqwest::Client::new();
    let mut writer = out.clone();
    let flow = baton::livechat_authorize::authorize(&cfg, 0, &mut writer, &http);
    let browser = async {
        // The person opens the printed URL; LiveChat redirects back with the code and state.
        let url = loop {
            let text = String::from_utf8_lossy(&out.0.lock().unwrap()).to_string();
            if let Some(line) = text.lines().find(|l| l.trim_start().starts_with("http")) {
                break reqwest::Url::parse(line.trim()).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let q: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["client_id"], lc::CLIENT_ID);
        let redirect = q["redirect_uri"].clone();
        assert!(redirect.starts_with("http://127.0.0.1:") && redirect.ends_with("/callback"), "{redirect}");
        // A redirect with another run's state is turned away; the right one completes the flow.
        let other = reqwest::get(format!("{redirect}?code={}&state=forged", lc::AUTH_CODE)).await.unwrap();
        assert!(other.text().await.unwrap().contains("not the authorization"));
        let done = reqwest::get(format!("{redirect}?code={}&state={}", lc::AUTH_CODE, q["state"])).await.unwrap();
        assert!(done.text().await.unwrap().contains("Done"));
    };
    let (token, ()) = tokio::join!(flow, browser);
    assert_eq!(token.unwrap().expose(), lc::REFRESH_TOKEN);
    assert_eq!(fake.requests_of(lc::Kind::CodeExchange).len(), 1);
}

/// An LLM brain with the ERP tools, pointed at the fakes.
fn order_brain(llm_url: String, erp_url: String) -> baton_core::agent::BrainConfig {
    baton_core::agent::BrainConfig::Llm(Box::new(baton_core::agent::LlmConfig {
        base_url: llm_url,
        model: "gpt-4o-mini".into(),
        api_key: Secret("sk-order-e2e".into()),
        system_prompt: "You take orders for Example Wholesale.".into(),
        handoff_description: baton_core::agent::default_handoff_description(),
        knowledge: vec![],
        max_tokens: 300,
        temperature: None,
        conversation_token_budget: 100_000,
        daily_token_budget: 1_000_000,
        timeout_secs: 5,
        erp: Some(baton_core::agent::ErpConfig {
            base_url: erp_url,
            api_key: Secret("erp-order-e2e".into()),
            extras: vec![],
        }),
    }))
}

#[tokio::test]
async fn a_whatsapp_caller_orders_through_the_llm_and_the_erp_with_a_two_phase_commit() {
    use baton_tests::erp::FakeErp;
    use baton_tests::openai::{FakeOpenai, Turn};
    let fake = wa::FakeWhatsapp::start(WA_TOKEN, WA_PHONE).await;
    let llm = FakeOpenai::start("sk-order-e2e").await;
    let erp = FakeErp::start("erp-order-e2e").await;
    let (wa_api, llm_url, erp_url) = (fake.url(), llm.url(), erp.url());
    let hub = hub_with(system_clock(), move |a| {
        a.channels.whatsapp = Some(whatsapp_config(wa_api));
        a.brain = order_brain(llm_url, erp_url);
    })
    .await;
    let user = "385911234567";

    // Identify by the WhatsApp number, search, prepare: the order is read back, nothing booked.
    llm.script([
        Turn::tool("identify_caller", serde_json::json!({})),
        Turn::tool("search_products", serde_json::json!({"query": "flour T550"})),
        Turn::tool(
            "prepare_order",
            serde_json::json!({"contact_id": "C-100", "lines": [{"sku": "FLR-T550", "quantity": 10}]}),
        ),
        Turn::text("Ana, that is 10 x Flour T550, 1 kg for 12.00 EUR. Shall I place the order?"),
    ]);
    whatsapp(&hub, &[wa::text_message("wamid.o1", user, "10 packs of flour T550 please")], &[]).await;
    let sent = fake.wait_for_messages(1, WAIT).await;
    assert_eq!(wa_text(&sent[0]), "Ana, that is 10 x Flour T550, 1 kg for 12.00 EUR. Shall I place the order?");
    let asked = erp.requests();
    assert_eq!(asked[0].query.as_deref(), Some("phone=%2B385911234567"), "the caller's own number");
    assert!(erp.committed_orders().is_empty(), "prepared, not booked");
    let prepared =
        llm.requests()[3].body["messages"].as_array().unwrap().last().unwrap()["content"].as_str().unwrap().to_string();
    assert!(
        prepared.contains("TX-5002") && prepared.contains("12.00"),
        "the model sees the prepared order: {prepared}"
    );

    // The user confirms; the commit's answer is lost, its status says booked: placed once.
    erp.lose_commit_answers(1);
    llm.script([
        Turn::tool("commit_order", serde_json::json!({"transaction_id": "TX-5002"})),
        Turn::text("Done: your order O-7001 is placed."),
    ]);
    whatsapp(&hub, &[wa::text_message("wamid.o2", user, "Yes, please place it")], &[]).await;
    let sent = fake.wait_for_messages(2, WAIT).await;
    assert_eq!(wa_text(&sent[1]), "Done: your order O-7001 is placed.");
    assert_eq!(erp.committed_orders(), ["O-7001"]);
    let commits = erp.requests().into_iter().filter(|r| r.path == "/transactions/commit").count();
    assert_eq!(commits, 1, "booked once");
    let result =
        llm.requests()[5].body["messages"].as_array().unwrap().last().unwrap()["content"].as_str().unwrap().to_string();
    assert!(result.contains("\"status\":\"committed\""), "{result}");
    // What the tools learned stayed with the session: the model is told who it speaks to.
    let system = llm.requests()[4].body["messages"][0]["content"].as_str().unwrap().to_string();
    assert!(system.contains("- contact_id: C-100") && system.contains("- phone: +385911234567"), "{system}");

    // A human takes over: the desk gets the number, the customer and the order just placed.
    whatsapp(&hub, &[wa::text_message("wamid.o3", user, "I want to talk to a human")], &[]).await;
    let establish = hub.desk.first_to("/conversation/establish").await;
    let params = &establish.body["params"];
    assert_eq!(params["phone"], "+385911234567");
    assert_eq!(params["contact_id"], "C-100");
    assert_eq!(params["customer_name"], "Ana Horvat");
    assert_eq!(params["last_order_id"], "O-7001");
    assert_eq!(params["name"], wa::profile_name(user), "the WhatsApp profile name");
    assert_eq!(establish.body["user_info"]["phone"], "+385911234567");
    hub.running.stop().await;
}

#[tokio::test]
async fn an_order_nobody_confirmed_is_handed_to_a_human_not_reported_as_placed() {
    use baton_tests::erp::FakeErp;
    use baton_tests::openai::{FakeOpenai, Turn};
    let llm = FakeOpenai::start("sk-order-e2e").await;
    let erp = FakeErp::start("erp-order-e2e").await;
    let (llm_url, erp_url) = (llm.url(), erp.url());
    let hub = hub_with(system_clock(), move |a| {
        a.brain = order_brain(llm_url, erp_url);
    })
    .await;
    llm.script([
        Turn::tool(
            "prepare_order",
            serde_json::json!({"contact_id": "C-100", "lines": [{"sku": "FLR-T850", "quantity": 1}]}),
        ),
        Turn::tool("commit_order", serde_json::json!({"transaction_id": "TX-5002"})),
        Turn::text("Your order is placed!"),
    ]);
    erp.fail_commits(baton_connectors::erp::COMMIT_ATTEMPTS);
    let w = baton_tests::widget::WidgetClient::start(&hub.base, "shop", Some("ana@horvat.example")).await;
    w.send("one flour T850, and place it right away").await;
    let est = hub.desk.first_to("/conversation/establish").await;
    assert!(
        est.body["reason"].as_str().unwrap().contains("did not confirm transaction TX-5002"),
        "{}",
        est.body["reason"]
    );
    settle().await;
    assert!(w.all().await.iter().all(|m| m["text"] != "Your order is placed!"), "never told it succeeded");
    assert!(erp.committed_orders().is_empty());
    hub.running.stop().await;
}
