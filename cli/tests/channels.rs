//! Telegram and LINE end to end on `baton serve`: webhooks in (verified, deduplicated), the
//! bot's answers and a human's replies out through the fake providers, a handoff to the
//! webhook desk and back, long answers split, Telegram polling without a webhook.

mod common;

use baton_core::agent::{LineConfig, TelegramConfig};
use baton_core::model::Secret;
use baton_tests::line::{image_event, postback_event, sign, text_event, webhook_body, DeliveredBy, FakeLine};
use baton_tests::telegram::{callback_update, photo_update, text_update, FakeTelegram};
use common::{hub_with, Hub};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

const BOT_TOKEN: &str = "7654321:AAE_e2e-bot-token";
const HOOK_SECRET: &str = "hook-secret_e2e";
const LINE_SECRET: &str = "e2e-line-channel-secret";
const LINE_TOKEN: &str = "e2e-line-access-token";
const WAIT: Duration = Duration::from_secs(10);

fn system_clock() -> Arc<dyn baton_core::ports::Clock> {
    Arc::new(baton_runtime::clock::SystemClock)
}

async fn telegram_hub(tg: &FakeTelegram, poll: bool) -> Hub {
    let api = tg.url();
    hub_with(system_clock(), move |a| {
        a.channels.telegram = Some(TelegramConfig {
            bot_token: Secret(BOT_TOKEN.into()),
            secret_token: Secret(HOOK_SECRET.into()),
            api_base: api,
            poll,
        });
        a.brain = baton_core::agent::BrainConfig::Faq {
            faq: vec![
                baton_core::agent::FaqEntry {
                    question: "How long does shipping take?".into(),
                    answer: "Shipping takes 2-4 days.".into(),
                    keywords: vec![],
                },
                baton_core::agent::FaqEntry {
                    question: "Tell me the terms and conditions".into(),
                    answer: "Terms: ".to_string() + &"all goods are sold as described. ".repeat(160),
                    keywords: vec![],
                },
            ],
            min_score: 1.0,
        };
    })
    .await
}

async fn post_update(hub: &Hub, update: &Value, secret: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new().post(format!("{}/channels/telegram/shop", hub.base)).json(update);
    if let Some(s) = secret {
        req = req.header("X-Telegram-Bot-Api-Secret-Token", s);
    }
    req.send().await.unwrap()
}

fn text_of(m: &Value) -> &str {
    m["text"].as_str().unwrap_or_default()
}

fn button_values(m: &Value) -> Vec<String> {
    m["reply_markup"]["inline_keyboard"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|row| row.as_array().cloned().unwrap_or_default())
        .filter_map(|b| b["callback_data"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn a_telegram_user_gets_answers_a_human_and_can_end_with_a_button() {
    let tg = FakeTelegram::start(BOT_TOKEN).await;
    let hub = telegram_hub(&tg, false).await;

    // Unverified calls are refused and store nothing.
    let r = post_update(&hub, &text_update(1, 42, "How long does shipping take?"), None).await;
    assert_eq!(r.status(), 401);
    let r = post_update(&hub, &text_update(1, 42, "How long does shipping take?"), Some("wrong")).await;
    assert_eq!(r.status(), 401);

    let r = post_update(&hub, &text_update(1, 42, "How long does shipping take?"), Some(HOOK_SECRET)).await;
    assert_eq!(r.status(), 200);
    // Telegram retries the same update: accepted again, applied once.
    let r = post_update(&hub, &text_update(1, 42, "How long does shipping take?"), Some(HOOK_SECRET)).await;
    assert_eq!(r.status(), 200);
    let sent = tg.wait_for_messages(1, WAIT).await;
    assert_eq!(sent[0]["chat_id"].to_string().trim_matches('"'), "42");
    assert_eq!(text_of(&sent[0]), "Shipping takes 2-4 days.");

    // A long answer arrives in pieces within Telegram's limit, in order.
    post_update(&hub, &text_update(2, 42, "Tell me the terms and conditions"), Some(HOOK_SECRET)).await;
    let sent = tg.wait_for_messages(3, WAIT).await;
    assert!(sent[1..].iter().all(|m| text_of(m).chars().count() <= 4096));
    assert!(text_of(&sent[1]).starts_with("Terms: "));
    assert_eq!(sent.len(), 3, "the retried update was not answered twice: {sent:?}");

    // Handoff: the waiting notice carries an "end" button; the desk gets the history.
    post_update(&hub, &text_update(3, 42, "I want to talk to a human"), Some(HOOK_SECRET)).await;
    let sent = tg.wait_for_messages(4, WAIT).await;
    assert_eq!(button_values(&sent[3]), ["/end"]);
    let establish = hub.desk.first_to("/conversation/establish").await;
    let conversation_id = establish.body["conversation_id"].as_str().unwrap().to_string();
    assert_eq!(establish.body["email"], "support@example.com", "Telegram has no e-mail: the default is used");

    // The human's reply reaches Telegram with an "End chat" button.
    assert_eq!(hub.desk_reply(&conversation_id, "Hi, Anna here.", None).await.status(), 200);
    let sent = tg.wait_for_messages(6, WAIT).await;
    assert_eq!(text_of(&sent[5]), "Hi, Anna here.");
    assert_eq!(button_values(&sent[5]), ["/end"]);

    // The user's next message goes to the desk.
    post_update(&hub, &text_update(4, 42, "My order 1234 is late"), Some(HOOK_SECRET)).await;
    let chat = hub.desk.first_to("/chat").await;
    assert_eq!(chat.body["body"], "My order 1234 is late");

    // Pressing "End chat": the webhook answer stops the button's spinner, the desk is closed.
    let r = post_update(&hub, &callback_update(5, 42, "/end"), Some(HOOK_SECRET)).await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["method"], "answerCallbackQuery");
    let close = hub.desk.first_to("/conversation/close").await;
    assert_eq!(close.body["type"], "USER_CLOSED");
    let sent = tg.wait_for_messages(7, WAIT).await;
    assert!(!text_of(&sent[6]).is_empty());
    hub.running.stop().await;
}

#[tokio::test]
async fn a_telegram_outage_delays_answers_but_keeps_them_in_order() {
    let tg = FakeTelegram::start(BOT_TOKEN).await;
    let hub = telegram_hub(&tg, false).await;
    // Flood control (retry_after = 1 s) for the first two attempts.
    tg.fail_next(2, 429);
    for (i, text) in ["How long does shipping take?", "Tell me the terms and conditions"].iter().enumerate() {
        post_update(&hub, &text_update(10 + i as i64, 7, text), Some(HOOK_SECRET)).await;
    }
    let sent = tg.wait_for_messages(3, Duration::from_secs(20)).await;
    assert_eq!(text_of(&sent[0]), "Shipping takes 2-4 days.");
    assert!(text_of(&sent[1]).starts_with("Terms: "), "the second answer comes second");
    assert_eq!(sent.len(), 3);
    hub.running.stop().await;
}

#[tokio::test]
async fn without_a_public_url_serve_polls_telegram() {
    let tg = FakeTelegram::start(BOT_TOKEN).await;
    let hub = telegram_hub(&tg, true).await;
    tg.queue_update(text_update(100, 9, "How long does shipping take?"));
    // The agent was stored after serve started: its poller may only start at the next scan
    // of the agents (every 10 s).
    let sent = tg.wait_for_messages(1, Duration::from_secs(25)).await;
    assert_eq!(text_of(&sent[0]), "Shipping takes 2-4 days.");
    // The offset moves on: the update is confirmed and not fetched (or answered) again.
    tg.queue_update(text_update(101, 9, "human"));
    let sent = tg.wait_for_messages(2, WAIT).await;
    assert_eq!(button_values(&sent[1]), ["/end"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(tg.sent_messages().len(), 2);
    hub.running.stop().await;
}

async fn line_hub(line: &FakeLine) -> Hub {
    let api = line.url();
    hub_with(system_clock(), move |a| {
        a.channels.line = Some(LineConfig {
            channel_secret: Secret(LINE_SECRET.into()),
            access_token: Secret(LINE_TOKEN.into()),
            api_base: api,
        });
    })
    .await
}

async fn post_line(hub: &Hub, events: &[Value], signature: Option<String>) -> reqwest::Response {
    let body = webhook_body(events);
    let mut req = reqwest::Client::new()
        .post(format!("{}/channels/line/shop", hub.base))
        .header("content-type", "application/json")
        .body(body.clone());
    if let Some(s) = signature {
        req = req.header("X-Line-Signature", s);
    }
    req.send().await.unwrap()
}

async fn post_line_signed(hub: &Hub, events: &[Value]) -> reqwest::Response {
    let sig = sign(LINE_SECRET, &webhook_body(events));
    post_line(hub, events, Some(sig)).await
}

#[tokio::test]
async fn a_line_user_is_answered_by_reply_then_by_push_through_a_handoff() {
    let line = FakeLine::start(LINE_TOKEN).await;
    let hub = line_hub(&line).await;

    // The console's "Verify" button: an empty event list.
    assert_eq!(post_line_signed(&hub, &[]).await.status(), 200);
    // Forged, tampered or unsigned calls are refused.
    let ev = text_event("01HEV0000000000000000000001", "U1", "What are your opening hours?", None);
    assert_eq!(post_line(&hub, std::slice::from_ref(&ev), None).await.status(), 401);
    let forged = sign("other-secret", &webhook_body(std::slice::from_ref(&ev)));
    assert_eq!(post_line(&hub, &[ev], Some(forged)).await.status(), 401);

    // A fresh reply token answers the first message (free); LINE's redelivery is deduplicated.
    let token = line.issue_reply_token_for("U1");
    let ev = text_event("01HEV0000000000000000000002", "U1", "What are your opening hours?", Some(&token));
    assert_eq!(post_line_signed(&hub, std::slice::from_ref(&ev)).await.status(), 200);
    let mut redelivered = ev.clone();
    redelivered["deliveryContext"]["isRedelivery"] = json!(true);
    assert_eq!(post_line_signed(&hub, &[redelivered]).await.status(), 200);
    let got = line.wait_for_messages(1, WAIT).await;
    assert!(matches!(got[0].by, DeliveredBy::Reply));
    assert_eq!(got[0].message["text"], "We are open 9-17 on weekdays.");

    // Handoff: the waiting notice and the human's reply are pushed, with quick replies.
    let ev = text_event("01HEV0000000000000000000003", "U1", "human", None);
    post_line_signed(&hub, &[ev]).await;
    let got = line.wait_for_messages(2, WAIT).await;
    assert!(matches!(got[1].by, DeliveredBy::Push));
    assert_eq!(got[1].to.as_deref(), Some("U1"));
    assert!(got[1].retry_key.is_some());
    assert_eq!(got[1].message["quickReply"]["items"][0]["action"]["data"], "/end");
    let establish = hub.desk.first_to("/conversation/establish").await;
    let conversation_id = establish.body["conversation_id"].as_str().unwrap().to_string();
    hub.desk_reply(&conversation_id, "Hello from the desk", None).await;
    let got = line.wait_for_messages(4, WAIT).await;
    assert_eq!(got[3].message["text"], "Hello from the desk");

    // The quick-reply "end" button comes back as a postback and closes the desk conversation.
    let ev = postback_event("01HEV0000000000000000000004", "U1", "/end", Some(&line.issue_reply_token_for("U1")));
    post_line_signed(&hub, &[ev]).await;
    let close = hub.desk.first_to("/conversation/close").await;
    assert_eq!(close.body["type"], "USER_CLOSED");
    hub.running.stop().await;
}

#[tokio::test]
async fn set_webhook_registers_the_agents_url_and_secret() {
    let tg = FakeTelegram::start(BOT_TOKEN).await;
    let mut agent = common::shop_agent("http://127.0.0.1:9");
    agent.channels.telegram = Some(TelegramConfig {
        bot_token: Secret(BOT_TOKEN.into()),
        secret_token: Secret(HOOK_SECRET.into()),
        api_base: tg.url(),
        poll: false,
    });
    let mut out = Vec::new();
    baton::admin::telegram_webhook(&agent, Some("https://abc.execute-api.eu-central-1.amazonaws.com/"), &mut out)
        .await
        .unwrap();
    let reg = tg.webhook_registration().expect("registered");
    assert_eq!(reg["url"], "https://abc.execute-api.eu-central-1.amazonaws.com/channels/telegram/shop");
    assert_eq!(reg["secret_token"], HOOK_SECRET);
    assert_eq!(reg["allowed_updates"], json!(["message", "callback_query"]));
    let printed = String::from_utf8(out).unwrap();
    assert!(printed.contains("/channels/telegram/shop") && !printed.contains(BOT_TOKEN), "{printed}");

    // Telegram only calls HTTPS webhooks: refused before any call.
    let err = baton::admin::telegram_webhook(&agent, Some("http://127.0.0.1:8787"), &mut Vec::new()).await;
    assert!(err.unwrap_err().to_string().contains("https://"));

    baton::admin::telegram_webhook(&agent, None, &mut Vec::new()).await.unwrap();
    assert!(tg.webhook_registration().is_none());
}

/// The desk's `/chat` bodies, waiting until there are `n`.
async fn desk_chats(hub: &Hub, n: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let chats: Vec<String> =
            hub.desk.requests_to("/chat").iter().map(|r| r.body["body"].as_str().unwrap_or("").to_string()).collect();
        if chats.len() >= n {
            return chats;
        }
        assert!(std::time::Instant::now() < deadline, "only {chats:?} reached the desk");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

/// Follow the link at the end of a placeholder: the file's bytes and content type.
async fn open_link(placeholder: &str) -> (u16, String, Vec<u8>) {
    let link = placeholder.rsplit_once(' ').expect("a link after the placeholder").1;
    let r = reqwest::get(link).await.unwrap();
    let status = r.status().as_u16();
    let content_type = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    (status, content_type, r.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn photos_from_telegram_and_line_reach_the_human_as_links_through_the_hub() {
    let tg = FakeTelegram::start(BOT_TOKEN).await;
    tg.put_file("AgACAgIAAxkBAAIBZ", "photos/file_3.jpg", "image/jpeg", b"\xff\xd8parcel");
    let hub = telegram_hub(&tg, false).await;
    post_update(&hub, &text_update(1, 42, "I want to talk to a human"), Some(HOOK_SECRET)).await;
    hub.desk.first_to("/conversation/establish").await;
    post_update(&hub, &photo_update(2, 42, "AgACAgIAAxkBAAIBZ", "the damaged parcel"), Some(HOOK_SECRET)).await;
    let chats = desk_chats(&hub, 1).await;
    assert!(chats[0].starts_with("[photo: the damaged parcel] http://127.0.0.1:"), "{chats:?}");
    assert!(chats[0].contains("/media/shop/telegram/AgACAgIAAxkBAAIBZ?exp="), "{chats:?}");
    assert!(!chats[0].contains(BOT_TOKEN), "the bot token never reaches the desk");
    assert_eq!(open_link(&chats[0]).await, (200, "image/jpeg".into(), b"\xff\xd8parcel".to_vec()));
    assert_eq!(tg.downloads(), ["photos/file_3.jpg"], "the largest size was fetched");
    hub.running.stop().await;

    let line = FakeLine::start(LINE_TOKEN).await;
    line.put_content("325708", "image/png", b"\x89PNG-receipt");
    let hub = line_hub(&line).await;
    post_line_signed(&hub, &[text_event("ev-1", "U4af49806", "I want to talk to a human", None)]).await;
    hub.desk.first_to("/conversation/establish").await;
    post_line_signed(&hub, &[image_event("ev-2", "U4af49806", "325708", None)]).await;
    let chats = desk_chats(&hub, 1).await;
    assert!(chats[0].starts_with("[image] http://127.0.0.1:"), "{chats:?}");
    assert_eq!(open_link(&chats[0]).await, (200, "image/png".into(), b"\x89PNG-receipt".to_vec()));
    hub.running.stop().await;
}
