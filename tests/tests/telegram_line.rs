//! The Telegram and LINE connectors against the fake providers, over loopback HTTP: what the
//! fakes receive, how their refusals map to delivery errors, and the round trips (polling
//! with offsets, reply-token fallback, retry-key dedupe) the end-to-end tests rely on.

use baton_connectors::line::{self, LineClient};
use baton_connectors::outbound::http_client;
use baton_connectors::telegram::{self, InboundKind, TelegramClient};
use baton_core::agent::{LineConfig, TelegramConfig};
use baton_core::model::{Button, OutMessage, Role, Secret};
use baton_core::ports::DeliveryError;
use baton_tests::line::{postback_event, sign, text_event, webhook_body, DeliveredBy, FakeLine};
use baton_tests::telegram::{callback_update, text_update, FakeTelegram};
use serde_json::json;
use std::time::Duration;

const BOT_TOKEN: &str = "7654321:AAE_fake-bot-token";
const ACCESS_TOKEN: &str = "fake-line-access-token";
const CHANNEL_SECRET: &str = "0123456789abcdef0123456789abcdef";
const WAIT: Duration = Duration::from_secs(5);

fn telegram_config(api_base: &str, token: &str) -> TelegramConfig {
    TelegramConfig {
        bot_token: Secret(token.into()),
        secret_token: Secret("hook-secret_1".into()),
        api_base: api_base.into(),
        poll: true,
    }
}

fn line_config(api_base: &str, token: &str) -> LineConfig {
    LineConfig {
        channel_secret: Secret(CHANNEL_SECRET.into()),
        access_token: Secret(token.into()),
        api_base: api_base.into(),
    }
}

fn telegram_client() -> TelegramClient {
    TelegramClient::from_client(
        http_client(Duration::from_secs(5), baton_connectors::outbound::Targets::Any),
        Duration::from_secs(5),
    )
}

fn line_client() -> LineClient {
    LineClient::from_client(
        http_client(Duration::from_secs(5), baton_connectors::outbound::Targets::Any),
        Duration::from_secs(5),
    )
}

fn with_buttons(text: &str, buttons: &[(&str, &str)]) -> OutMessage {
    let mut m = OutMessage::new(Role::Bot, text);
    m.buttons = buttons.iter().map(|(l, v)| Button { label: l.to_string(), value: v.to_string() }).collect();
    m
}

#[tokio::test]
async fn telegram_send_shapes_and_errors() {
    let fake = FakeTelegram::start(BOT_TOKEN).await;
    let cfg = telegram_config(&fake.url(), BOT_TOKEN);
    let client = telegram_client();

    client
        .send(&cfg, "42", &with_buttons("Still there?", &[("Yes", "yes"), ("Talk to a human", "handoff")]))
        .await
        .unwrap();
    let sent = fake.wait_for_messages(1, WAIT).await;
    assert_eq!(
        sent[0],
        json!({"chat_id": 42, "text": "Still there?", "reply_markup": {"inline_keyboard": [
            [{"text": "Yes", "callback_data": "yes"}],
            [{"text": "Talk to a human", "callback_data": "handoff"}],
        ]}})
    );

    fake.fail_next(1, 429);
    let e = client.send(&cfg, "42", &OutMessage::new(Role::Human, "x")).await.unwrap_err();
    assert!(matches!(e, DeliveryError::Retryable { retry_after_ms: Some(1000), .. }), "{e:?}");
    fake.fail_next(1, 503);
    assert!(matches!(
        client.send(&cfg, "42", &OutMessage::new(Role::Human, "x")).await,
        Err(DeliveryError::Retryable { .. })
    ));
    fake.fail_next(1, 403);
    assert!(matches!(
        client.send(&cfg, "42", &OutMessage::new(Role::Human, "x")).await,
        Err(DeliveryError::Permanent { .. })
    ));
    client.send(&cfg, "42", &OutMessage::new(Role::Human, "after the failures")).await.unwrap();
    assert_eq!(fake.wait_for_messages(2, WAIT).await[1]["text"], "after the failures");
    assert_eq!(fake.calls("sendMessage").len(), 5);

    let wrong = telegram_config(&fake.url(), "1111:wrong-token-value");
    let e = client.send(&wrong, "42", &OutMessage::new(Role::Bot, "x")).await.unwrap_err();
    assert!(matches!(e, DeliveryError::Unauthorized { .. }), "{e:?}");
    assert!(!format!("{e} {e:?}").contains("wrong-token-value"), "{e}");
    assert_eq!(fake.wrong_token_calls(), 1);

    // Over-long callback data never reaches Telegram.
    let long = "x".repeat(65);
    let e = client.send(&cfg, "42", &with_buttons("x", &[("Long", &long)])).await.unwrap_err();
    assert!(matches!(e, DeliveryError::Permanent { .. }));
    assert_eq!(fake.calls("sendMessage").len(), 5);
}

#[tokio::test]
async fn telegram_webhook_registration_and_polling() {
    let fake = FakeTelegram::start(BOT_TOKEN).await;
    let cfg = telegram_config(&fake.url(), BOT_TOKEN);
    let client = telegram_client();

    client.set_webhook(&cfg, "https://hub.example.com/channels/telegram/demo").await.unwrap();
    assert_eq!(
        fake.webhook_registration(),
        Some(json!({
            "url": "https://hub.example.com/channels/telegram/demo",
            "secret_token": "hook-secret_1",
            "allowed_updates": ["message", "callback_query"],
        }))
    );
    // Telegram refuses getUpdates while a webhook is set.
    let e = client.get_updates(&cfg, None, 0).await.unwrap_err();
    assert!(matches!(e, DeliveryError::Permanent { ref message } if message.contains("409")), "{e:?}");
    client.delete_webhook(&cfg).await.unwrap();
    assert_eq!(fake.webhook_registration(), None);

    let empty = client.get_updates(&cfg, None, 0).await.unwrap();
    assert_eq!((empty.updates.len(), empty.next_offset), (0, None));

    fake.queue_update(text_update(100, 42, "hello"));
    fake.queue_update(json!({"update_id": 101, "message": {"text": "no chat"}}));
    fake.queue_update(callback_update(102, 42, "handoff"));
    let polled = client.get_updates(&cfg, None, 1).await.unwrap();
    assert_eq!(polled.next_offset, Some(103));
    assert_eq!(polled.updates.len(), 2);
    assert_eq!(polled.updates[0].kind, InboundKind::Text("hello".into()));
    assert_eq!(polled.updates[0].user_name.as_deref(), Some("Test User"));
    assert_eq!(polled.updates[1].kind, InboundKind::Button("handoff".into()));
    let query_id = polled.updates[1].callback_query_id.clone().unwrap();
    client.answer_callback(&cfg, &query_id).await.unwrap();
    assert_eq!(fake.calls("answerCallbackQuery")[0].body, json!({"callback_query_id": "cq102"}));

    // The offset confirms what was read; a long poll then waits for the next update.
    let queue_later = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        fake.queue_update(text_update(103, 42, "later"));
    };
    let (polled, ()) = tokio::join!(client.get_updates(&cfg, polled.next_offset, 2), queue_later);
    let polled = polled.unwrap();
    assert_eq!(polled.updates.len(), 1);
    assert_eq!(polled.updates[0].update_id, 103);
    assert_eq!(polled.next_offset, Some(104));
    let last = fake.calls("getUpdates").pop().unwrap();
    assert_eq!(last.body, json!({"offset": 103, "timeout": 2, "allowed_updates": ["message", "callback_query"]}));

    // The webhook path parses the same JSON.
    let update = telegram::parse_update(text_update(7, 9, "hi").to_string().as_bytes()).unwrap().unwrap();
    assert_eq!((update.chat_id.as_str(), update.language.as_deref()), ("9", Some("en")));
}

#[tokio::test]
async fn line_reply_falls_back_to_push_and_pushes_dedupe() {
    let fake = FakeLine::start(ACCESS_TOKEN).await;
    let cfg = line_config(&fake.url(), ACCESS_TOKEN);
    let client = line_client();

    let token = fake.issue_reply_token_for("U1");
    let first = with_buttons("How can I help?", &[("Talk to a human", "handoff")]);
    client.send(&cfg, "U1", &first, Some(&token), "msg_00000000000000000000000000000001").await.unwrap();
    // The token is spent: the next answer goes by push.
    client
        .send(&cfg, "U1", &OutMessage::new(Role::Bot, "second"), Some(&token), "msg_00000000000000000000000000000002")
        .await
        .unwrap();
    let delivered = fake.wait_for_messages(2, WAIT).await;
    assert_eq!((delivered[0].by, delivered[0].to.as_deref()), (DeliveredBy::Reply, Some("U1")));
    assert_eq!(
        delivered[0].message,
        json!({"type": "text", "text": "How can I help?", "quickReply": {"items": [
            {"type": "action", "action": {"type": "postback", "label": "Talk to a human", "data": "handoff", "displayText": "Talk to a human"}}
        ]}})
    );
    assert_eq!((delivered[1].by, delivered[1].to.as_deref()), (DeliveredBy::Push, Some("U1")));
    let key = delivered[1].retry_key.clone().unwrap();
    assert_eq!(key, line::retry_key("msg_00000000000000000000000000000002"));
    let statuses: Vec<(String, u16)> = fake.requests().iter().map(|r| (r.path.clone(), r.status)).collect();
    assert_eq!(
        statuses,
        [(line::PATH_REPLY.to_string(), 200), (line::PATH_REPLY.to_string(), 400), (line::PATH_PUSH.to_string(), 200)]
    );
    assert!(fake.requests().iter().all(|r| r.authorization.as_deref() == Some("Bearer fake-line-access-token")));

    // LINE accepted the push but the answer was lost: the retry gets 409, which is success.
    let third = OutMessage::new(Role::Human, "third");
    fake.fail_next_after_delivery(1, 500);
    let e = client.send(&cfg, "U1", &third, None, "msg_00000000000000000000000000000003").await.unwrap_err();
    assert!(matches!(e, DeliveryError::Retryable { .. }), "{e:?}");
    client.send(&cfg, "U1", &third, None, "msg_00000000000000000000000000000003").await.unwrap();
    let requests = fake.requests();
    assert_eq!(requests[requests.len() - 1].status, 409);
    assert_eq!(requests[requests.len() - 1].retry_key, requests[requests.len() - 2].retry_key);
    assert_eq!(fake.delivered().len(), 3);

    // A failure before acceptance is retried and delivered once.
    fake.fail_next(1, 503);
    assert!(client.send(&cfg, "U1", &OutMessage::new(Role::Human, "4"), None, "k4").await.is_err());
    client.send(&cfg, "U1", &OutMessage::new(Role::Human, "4"), None, "k4").await.unwrap();
    assert_eq!(fake.wait_for_messages(4, WAIT).await[3].message["text"], "4");
    assert_eq!(fake.delivered().len(), 4);
}

#[tokio::test]
async fn line_errors_map_without_secrets() {
    let fake = FakeLine::start(ACCESS_TOKEN).await;
    let client = line_client();
    let m = OutMessage::new(Role::Bot, "x");

    let wrong = line_config(&fake.url(), "not-the-access-token");
    let e = client.send(&wrong, "U1", &m, None, "k").await.unwrap_err();
    assert!(matches!(e, DeliveryError::Unauthorized { .. }), "{e:?}");
    assert!(!format!("{e} {e:?}").contains("not-the-access-token"));

    let cfg = line_config(&fake.url(), ACCESS_TOKEN);
    fake.fail_next(1, 429);
    assert!(matches!(client.send(&cfg, "U1", &m, None, "k").await, Err(DeliveryError::Retryable { .. })));
    fake.fail_next(1, 403);
    assert!(matches!(client.send(&cfg, "U1", &m, None, "k").await, Err(DeliveryError::Unauthorized { .. })));
    // An empty user id never reaches LINE.
    let e = client.send(&cfg, "", &m, None, "k").await.unwrap_err();
    assert!(matches!(e, DeliveryError::Permanent { .. }));
    assert!(fake.delivered().is_empty());
}

#[tokio::test]
async fn line_webhook_helpers_round_trip() {
    let events = [
        text_event("01HEVENT0000000000000000A1", "U1", "hello", Some("rt1")),
        postback_event("01HEVENT0000000000000000A2", "U1", "handoff", None),
    ];
    let body = webhook_body(&events);
    let signature = sign(CHANNEL_SECRET, &body);
    assert!(line::verify_signature(CHANNEL_SECRET, &body, Some(&signature)));
    let mut tampered = body.clone();
    tampered[10] ^= 1;
    assert!(!line::verify_signature(CHANNEL_SECRET, &tampered, Some(&signature)));
    let parsed = line::parse_webhook(&body).unwrap();
    assert_eq!(parsed.len(), 2);
    assert_eq!(parsed[0].kind, line::InboundKind::Text("hello".into()));
    assert_eq!(parsed[0].reply_token.as_deref(), Some("rt1"));
    assert_eq!(parsed[1].kind, line::InboundKind::Button("handoff".into()));
    assert!(!parsed[1].is_redelivery);
}

#[tokio::test]
async fn files_users_sent_are_fetched_with_the_bot_credentials() {
    let tg = FakeTelegram::start(BOT_TOKEN).await;
    tg.put_file("AgACAgIAAxkBAAIB", "photos/file_7.jpg", "image/jpeg", b"\xff\xd8jpeg");
    let c = telegram_config(&tg.url(), BOT_TOKEN);
    let got = telegram_client().fetch_file(&c, "AgACAgIAAxkBAAIB").await.unwrap();
    assert_eq!((got.content_type.as_deref(), got.bytes.as_slice()), (Some("image/jpeg"), &b"\xff\xd8jpeg"[..]));
    assert_eq!(tg.downloads(), ["photos/file_7.jpg"]);
    assert_eq!(tg.calls("getFile")[0].body, json!({"file_id": "AgACAgIAAxkBAAIB"}));
    // An unknown file is permanent; a wrong token is a credential failure that never shows it.
    let err = telegram_client().fetch_file(&c, "unknown").await.unwrap_err();
    assert!(matches!(err, DeliveryError::Permanent { .. }), "{err:?}");
    let wrong = telegram_config(&tg.url(), "1111:wrong-token");
    let err = telegram_client().fetch_file(&wrong, "AgACAgIAAxkBAAIB").await.unwrap_err();
    assert!(matches!(err, DeliveryError::Unauthorized { .. }), "{err:?}");
    assert!(!err.to_string().contains("wrong-token"), "{err}");
    // Ids that are not one path segment are refused before any call.
    assert!(telegram_client().fetch_file(&c, "../x").await.is_err());
    // Too large to pass on (the declared size is checked before downloading).
    tg.put_file("big", "documents/big.bin", "application/octet-stream", &vec![0u8; 4 * 1024 * 1024 + 1]);
    let err = telegram_client().fetch_file(&c, "big").await.unwrap_err();
    assert!(err.to_string().contains("more than"), "{err}");
    assert_eq!(tg.downloads().len(), 1);

    let line = FakeLine::start(ACCESS_TOKEN).await;
    line.put_content("325708", "image/png", b"\x89PNG");
    let c = line_config(&line.url(), ACCESS_TOKEN);
    let got = line_client().fetch_content(&c, "325708").await.unwrap();
    assert_eq!((got.content_type.as_deref(), got.bytes.as_slice()), (Some("image/png"), &b"\x89PNG"[..]));
    let err = line_client().fetch_content(&c, "999").await.unwrap_err();
    assert!(matches!(err, DeliveryError::Permanent { .. }), "{err:?}");
    let err = line_client().fetch_content(&line_config(&line.url(), "nope"), "325708").await.unwrap_err();
    assert!(matches!(err, DeliveryError::Unauthorized { .. }), "{err:?}");
}
