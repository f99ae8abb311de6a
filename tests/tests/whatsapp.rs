//! The WhatsApp connector against the fake Graph API, over loopback HTTP: the subscription
//! handshake, webhook signatures, parsing of the fake's webhook bodies, what the fake receives
//! for texts, buttons and templates, and how its refusals map to delivery errors.

use baton_connectors::outbound::http_client;
use baton_connectors::whatsapp::{
    self, describe, parse_webhook, verify_signature, verify_subscription, Inbound, InboundKind, Status, WhatsappClient,
};
use baton_core::agent::{WhatsappConfig, WhatsappTemplate};
use baton_core::model::{Button, OutMessage, Role, Secret};
use baton_core::ports::DeliveryError;
use baton_tests::whatsapp::{
    button_reply, failed_status, image_message, location_message, profile_name, sign, status_update, text_message,
    webhook_body, FakeWhatsapp,
};
use serde_json::{json, Value};
use std::time::Duration;

const ACCESS_TOKEN: &str = "EAAFakeWhatsappAccessToken123";
const APP_SECRET: &str = "f00dfeedf00dfeedf00dfeedf00dfeed";
const VERIFY_TOKEN: &str = "hub-verify-token";
const PHONE_ID: &str = "106540352242922";
const USER: &str = "385911234567";
const WAIT: Duration = Duration::from_secs(5);

fn config(api_base: &str, token: &str) -> WhatsappConfig {
    WhatsappConfig {
        phone_number_id: PHONE_ID.into(),
        access_token: Secret(token.into()),
        app_secret: Secret(APP_SECRET.into()),
        verify_token: Secret(VERIFY_TOKEN.into()),
        api_base: api_base.into(),
        api_version: "v21.0".into(),
        window_template: None,
    }
}

fn with_template(mut c: WhatsappConfig) -> WhatsappConfig {
    c.window_template = Some(WhatsappTemplate { name: "late_reply".into(), language: "en_US".into() });
    c
}

fn client() -> WhatsappClient {
    WhatsappClient::from_client(
        http_client(Duration::from_secs(5), baton_connectors::outbound::Targets::Any),
        Duration::from_secs(5),
    )
}

fn with_buttons(text: &str, buttons: &[(&str, &str)]) -> OutMessage {
    let mut m = OutMessage::new(Role::Bot, text);
    m.buttons = buttons.iter().map(|(l, v)| Button { label: l.to_string(), value: v.to_string() }).collect();
    m
}

fn assert_no_token(e: &DeliveryError) {
    let text = format!("{e} {e:?}");
    assert!(!text.contains(ACCESS_TOKEN) && !text.contains("EAAFake"), "token leaked: {text}");
}

#[test]
fn subscription_handshake() {
    let c = config("https://graph.facebook.com", ACCESS_TOKEN);
    assert_eq!(
        verify_subscription(&c, Some("subscribe"), Some(VERIFY_TOKEN), Some("1158201444")),
        Some("1158201444".to_string())
    );
    assert_eq!(verify_subscription(&c, Some("subscribe"), Some("wrong"), Some("1158201444")), None);
    assert_eq!(verify_subscription(&c, Some("subscribe"), Some(""), Some("1158201444")), None);
    assert_eq!(verify_subscription(&c, Some("subscribe"), None, Some("1158201444")), None);
    assert_eq!(verify_subscription(&c, Some("unsubscribe"), Some(VERIFY_TOKEN), Some("1158201444")), None);
    assert_eq!(verify_subscription(&c, None, Some(VERIFY_TOKEN), Some("1158201444")), None);
    assert_eq!(verify_subscription(&c, Some("subscribe"), Some(VERIFY_TOKEN), None), None);
}

#[test]
fn signatures() {
    let body = webhook_body(PHONE_ID, &[text_message("wamid.1", USER, "Hi")], &[]);
    let header = sign(APP_SECRET, &body);
    assert!(header.starts_with("sha256=") && header.len() == 7 + 64, "{header}");
    assert_eq!(whatsapp::SIGNATURE_HEADER, "x-hub-signature-256");
    assert!(verify_signature(APP_SECRET, &body, Some(&header)));
    // Tampered body, wrong secret, missing and malformed headers.
    let mut tampered = body.clone();
    let at = tampered.iter().position(|&b| b == b'H').unwrap();
    tampered[at] = b'J';
    assert!(!verify_signature(APP_SECRET, &tampered, Some(&header)));
    assert!(!verify_signature("another-app-secret", &body, Some(&header)));
    assert!(!verify_signature(APP_SECRET, &body, Some(&sign("another-app-secret", &body))));
    assert!(!verify_signature(APP_SECRET, &body, None));
    for malformed in [
        String::new(),
        "sha256=".into(),
        header.trim_start_matches("sha256=").to_string(),
        header.replacen("sha256=", "sha1=", 1),
        format!("{}g", &header[..header.len() - 1]),
        header[..header.len() - 2].to_string(),
        format!("{header}00"),
    ] {
        assert!(!verify_signature(APP_SECRET, &body, Some(&malformed)), "{malformed:?}");
    }
}

#[test]
fn every_builder_parses() {
    let messages = [
        text_message("wamid.t", USER, "Hello there"),
        button_reply("wamid.b", USER, "handoff", "Talk to a person"),
        image_message("wamid.i", USER, "1003383421387256", Some("my receipt")),
        image_message("wamid.j", "447700900123", "77", None),
        location_message("wamid.l", USER, 45.81, 15.98, Some("Zagreb"), Some("Trg bana Jelačića 1")),
        location_message("wamid.m", USER, -33.86, 151.2, None, None),
    ];
    let statuses = [
        status_update("wamid.out1", USER, "sent"),
        status_update("wamid.out1", USER, "read"),
        failed_status("wamid.out2", USER, 131047, "Re-engagement message"),
    ];
    let body = webhook_body(PHONE_ID, &messages, &statuses);
    let got = parse_webhook(&body, PHONE_ID).unwrap();
    let kinds: Vec<InboundKind> = got.messages.iter().map(|m| m.kind.clone()).collect();
    assert_eq!(
        kinds,
        vec![
            InboundKind::Text("Hello there".into()),
            InboundKind::Button("handoff".into()),
            InboundKind::Media {
                kind: "image".into(),
                id: "1003383421387256".into(),
                caption: Some("my receipt".into()),
                filename: None
            },
            InboundKind::Media { kind: "image".into(), id: "77".into(), caption: None, filename: None },
            InboundKind::Location {
                latitude: 45.81,
                longitude: 15.98,
                name: Some("Zagreb".into()),
                address: Some("Trg bana Jelačića 1".into())
            },
            InboundKind::Location { latitude: -33.86, longitude: 151.2, name: None, address: None },
        ]
    );
    let first: &Inbound = &got.messages[0];
    assert_eq!(first.message_id, "wamid.t");
    assert_eq!(first.from, USER);
    assert_eq!(first.name, Some(profile_name(USER)));
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    assert!((now_ms - first.timestamp).abs() < 60_000 && first.timestamp % 1000 == 0, "{}", first.timestamp);
    assert_eq!(got.messages[3].name, Some(profile_name("447700900123")));
    assert_eq!(
        got.statuses,
        vec![
            Status { message_id: "wamid.out1".into(), recipient: USER.into(), status: "sent".into(), error: None },
            Status { message_id: "wamid.out1".into(), recipient: USER.into(), status: "read".into(), error: None },
            Status {
                message_id: "wamid.out2".into(),
                recipient: USER.into(),
                status: "failed".into(),
                error: Some("131047 Re-engagement message (Re-engagement message.)".into()),
            },
        ]
    );
    // The placeholders the desk sees.
    let described: Vec<String> = kinds.iter().map(describe).collect();
    assert_eq!(
        described,
        [
            "Hello there",
            "[button: handoff]",
            "[image (media id 1003383421387256): my receipt]",
            "[image (media id 77)]",
            "[location: 45.81, 15.98 Zagreb, Trg bana Jelačića 1]",
            "[location: -33.86, 151.2]",
        ]
    );
}

#[test]
fn other_phone_numbers_are_skipped() {
    let ours = webhook_body(PHONE_ID, &[text_message("wamid.1", USER, "for us")], &[]);
    let theirs = webhook_body("999000999", &[text_message("wamid.2", USER, "not for us")], &[]);
    assert_eq!(parse_webhook(&theirs, PHONE_ID).unwrap(), whatsapp::Webhook::default());
    // One call can carry several entries; only ours are read.
    let mut both: Value = serde_json::from_slice(&theirs).unwrap();
    let our_entry = serde_json::from_slice::<Value>(&ours).unwrap()["entry"][0].clone();
    both["entry"].as_array_mut().unwrap().push(our_entry);
    let got = parse_webhook(both.to_string().as_bytes(), PHONE_ID).unwrap();
    assert_eq!(got.messages.len(), 1);
    assert_eq!(got.messages[0].kind, InboundKind::Text("for us".into()));
    // A body with nothing in it parses to nothing.
    assert_eq!(parse_webhook(&webhook_body(PHONE_ID, &[], &[]), PHONE_ID).unwrap(), whatsapp::Webhook::default());
}

#[tokio::test]
async fn text_send() {
    let fake = FakeWhatsapp::start(ACCESS_TOKEN, PHONE_ID).await;
    let c = config(&fake.url(), ACCESS_TOKEN);
    client().send(&c, USER, &OutMessage::new(Role::Human, "Hello from a person"), false).await.unwrap();
    let sent = fake.wait_for_messages(1, WAIT).await;
    assert_eq!(
        sent[0],
        json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": USER, "type": "text",
            "text": {"preview_url": false, "body": "Hello from a person"}})
    );
    let request = &fake.requests()[0];
    assert_eq!(request.path, format!("/v21.0/{PHONE_ID}/messages"));
    assert_eq!(request.authorization.as_deref(), Some(&format!("Bearer {ACCESS_TOKEN}")[..]));
    assert_eq!(request.answer["messages"][0]["id"], "wamid.1");
    assert_eq!(request.answer["contacts"][0], json!({"input": USER, "wa_id": USER}));
}

#[tokio::test]
async fn interactive_buttons() {
    let fake = FakeWhatsapp::start(ACCESS_TOKEN, PHONE_ID).await;
    let c = config(&fake.url(), ACCESS_TOKEN);
    let wa = client();
    let m = with_buttons(
        "Are you still there?",
        &[("Yes, I'm still here and waiting", "still_here"), ("End chat", "end_chat"), ("", "later")],
    );
    wa.send(&c, USER, &m, false).await.unwrap();
    let sent = fake.wait_for_messages(1, WAIT).await;
    assert_eq!(sent[0]["type"], "interactive");
    assert_eq!(
        sent[0]["interactive"],
        json!({"type": "button", "body": {"text": "Are you still there?"}, "action": {"buttons": [
            {"type": "reply", "reply": {"id": "still_here", "title": "Yes, I'm still here…"}},
            {"type": "reply", "reply": {"id": "end_chat", "title": "End chat"}},
            {"type": "reply", "reply": {"id": "later", "title": "later"}},
        ]}})
    );
    // More than three buttons: one text listing the labels.
    let many = with_buttons("Pick a topic", &[("Orders", "o"), ("Returns", "r"), ("Billing", "b"), ("Other", "x")]);
    wa.send(&c, USER, &many, false).await.unwrap();
    let sent = fake.wait_for_messages(2, WAIT).await;
    assert_eq!(sent[1]["type"], "text");
    assert_eq!(sent[1]["text"]["body"], "Pick a topic\n\n• Orders\n• Returns\n• Billing\n• Other");
    // A button value longer than an id may be is refused before anything is sent.
    let e = wa.send(&c, USER, &with_buttons("x", &[("a", &"v".repeat(257))]), false).await.unwrap_err();
    assert!(matches!(e, DeliveryError::Permanent { .. }), "{e:?}");
    assert_eq!(fake.requests().len(), 2);
}

#[tokio::test]
async fn long_text_with_buttons_is_a_text_then_the_buttons() {
    let fake = FakeWhatsapp::start(ACCESS_TOKEN, PHONE_ID).await;
    let c = config(&fake.url(), ACCESS_TOKEN);
    let story = "Our opening hours changed. ".repeat(60);
    let question = "Would you like to talk to a person?";
    let text = format!("{}\n\n{question}", story.trim_end());
    client().send(&c, USER, &with_buttons(&text, &[("Yes", "yes"), ("No", "no")]), false).await.unwrap();
    let sent = fake.wait_for_messages(2, WAIT).await;
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0]["type"], "text");
    assert_eq!(sent[0]["text"]["body"], story.trim_end());
    assert_eq!(sent[1]["type"], "interactive");
    assert_eq!(sent[1]["interactive"]["body"]["text"], question);
    assert_eq!(sent[1]["interactive"]["action"]["buttons"][0]["reply"]["id"], "yes");
    // One long paragraph: the tail that fits an interactive body goes with the buttons.
    let paragraph = "word ".repeat(500);
    client().send(&c, USER, &with_buttons(&paragraph, &[("OK", "ok")]), false).await.unwrap();
    let sent = fake.wait_for_messages(4, WAIT).await;
    let (head, tail) =
        (sent[2]["text"]["body"].as_str().unwrap(), sent[3]["interactive"]["body"]["text"].as_str().unwrap());
    assert!(tail.chars().count() <= 1024, "{}", tail.len());
    assert_eq!(format!("{head} {tail}"), paragraph.trim_end());
}

#[tokio::test]
async fn template_outside_the_window() {
    let fake = FakeWhatsapp::start(ACCESS_TOKEN, PHONE_ID).await;
    let c = with_template(config(&fake.url(), ACCESS_TOKEN));
    let reply = "Hi Ana,\n\nyour refund was approved.\tIt takes     3-5 days.";
    client().send(&c, USER, &with_buttons(reply, &[("Thanks", "thanks")]), true).await.unwrap();
    let sent = fake.wait_for_messages(1, WAIT).await;
    assert_eq!(
        sent[0],
        json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": USER, "type": "template",
            "template": {"name": "late_reply", "language": {"code": "en_US"}, "components": [
                {"type": "body", "parameters": [
                    {"type": "text", "text": "Hi Ana, your refund was approved. It takes 3-5 days."}]}]}})
    );
    // Long replies are cut to the parameter limit, which the fake enforces like Meta.
    client().send(&c, USER, &OutMessage::new(Role::Human, "é".repeat(4000)), true).await.unwrap();
    let sent = fake.wait_for_messages(2, WAIT).await;
    let text = sent[1]["template"]["components"][0]["parameters"][0]["text"].as_str().unwrap();
    assert_eq!(text.chars().count(), 1024);
}

#[tokio::test]
async fn outside_the_window_without_a_template_is_permanent() {
    let fake = FakeWhatsapp::start(ACCESS_TOKEN, PHONE_ID).await;
    let c = config(&fake.url(), ACCESS_TOKEN);
    let e = client().send(&c, USER, &OutMessage::new(Role::Human, "late"), true).await.unwrap_err();
    assert_eq!(
        e,
        DeliveryError::permanent("WhatsApp message: outside the 24-hour window and no window_template configured")
    );
    assert!(fake.requests().is_empty(), "nothing may be sent");
}

#[tokio::test]
async fn closed_window_maps_131047_to_permanent() {
    let fake = FakeWhatsapp::start(ACCESS_TOKEN, PHONE_ID).await;
    let c = with_template(config(&fake.url(), ACCESS_TOKEN));
    let wa = client();
    fake.close_window_for(&format!("+{USER}"));
    for m in [OutMessage::new(Role::Human, "hi"), with_buttons("Still there?", &[("Yes", "y")])] {
        let e = wa.send(&c, USER, &m, false).await.unwrap_err();
        let DeliveryError::Permanent { message } = &e else { panic!("{e:?}") };
        assert!(message.contains("24-hour") && message.contains("131047"), "{message}");
        assert_no_token(&e);
    }
    let refused = fake.requests();
    assert_eq!((refused.len(), refused[0].status, refused[0].answer["error"]["code"].clone()), (2, 400, json!(131047)));
    // A template still reaches the user; another user is not affected.
    wa.send(&c, USER, &OutMessage::new(Role::Human, "hi"), true).await.unwrap();
    wa.send(&c, "447700900123", &OutMessage::new(Role::Human, "hi"), false).await.unwrap();
    fake.open_window_for(USER);
    wa.send(&c, USER, &OutMessage::new(Role::Human, "hi again"), false).await.unwrap();
    let sent = fake.wait_for_messages(3, WAIT).await;
    let types: Vec<&str> = sent.iter().map(|b| b["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["template", "text", "text"]);
    // The code alone decides, whichever request meets it.
    fake.fail_next(1, 131047);
    let e = wa.send(&c, USER, &OutMessage::new(Role::Human, "x"), false).await.unwrap_err();
    assert!(matches!(e, DeliveryError::Permanent { .. }), "{e:?}");
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retryable() {
    let fake = FakeWhatsapp::start(ACCESS_TOKEN, PHONE_ID).await;
    let c = config(&fake.url(), ACCESS_TOKEN);
    let wa = client();
    let m = OutMessage::new(Role::Bot, "x");
    for (failure, retry_after_ms) in
        [(429, None), (500, None), (503, None), (130429, None), (131056, Some(6_000)), (80007, None), (2, None)]
    {
        fake.fail_next(1, failure);
        let e = wa.send(&c, USER, &m, false).await.unwrap_err();
        assert!(
            matches!(&e, DeliveryError::Retryable { retry_after_ms: r, .. } if *r == retry_after_ms),
            "{failure}: {e:?}"
        );
        assert_no_token(&e);
    }
    // After the failures the next send goes through.
    wa.send(&c, USER, &m, false).await.unwrap();
    assert_eq!(fake.wait_for_messages(1, WAIT).await.len(), 1);
    // Nothing listening: a transport error, retryable too.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let e = wa.send(&config(&dead, ACCESS_TOKEN), USER, &m, false).await.unwrap_err();
    assert!(matches!(e, DeliveryError::Retryable { .. }), "{e:?}");
    assert_no_token(&e);
}

#[tokio::test]
async fn credentials_and_other_refusals() {
    let fake = FakeWhatsapp::start(ACCESS_TOKEN, PHONE_ID).await;
    let wa = client();
    let m = OutMessage::new(Role::Bot, "x");
    let mut errors = Vec::new();
    // Expired token (190), wrong token, and permission errors are Unauthorized.
    let c = config(&fake.url(), ACCESS_TOKEN);
    for failure in [190, 401, 403, 10] {
        fake.fail_next(1, failure);
        let e = wa.send(&c, USER, &m, false).await.unwrap_err();
        assert!(matches!(e, DeliveryError::Unauthorized { .. }), "{failure}: {e:?}");
        errors.push(e);
    }
    let wrong = config(&fake.url(), "EAAFakeWrongToken");
    let e = wa.send(&wrong, USER, &m, false).await.unwrap_err();
    assert!(matches!(e, DeliveryError::Unauthorized { .. }), "{e:?}");
    assert!(!format!("{e:?}").contains("EAAFakeWrongToken"));
    // Undeliverable, spam limits and invalid parameters are permanent, quoting Meta.
    for failure in [131026, 131048, 400] {
        fake.fail_next(1, failure);
        let e = wa.send(&c, USER, &m, false).await.unwrap_err();
        assert!(matches!(e, DeliveryError::Permanent { .. }), "{failure}: {e:?}");
        errors.push(e);
    }
    assert!(errors[4].to_string().contains("(#131026) Message undeliverable"), "{}", errors[4]);
    // Another phone number id than the fake's is refused like Meta refuses unknown objects.
    let mut other = config(&fake.url(), ACCESS_TOKEN);
    other.phone_number_id = "123".into();
    let e = wa.send(&other, USER, &m, false).await.unwrap_err();
    assert!(
        matches!(&e, DeliveryError::Permanent { message } if message.contains("Unsupported post request")),
        "{e:?}"
    );
    errors.push(e);
    for e in &errors {
        assert_no_token(e);
    }
    assert!(fake.sent().is_empty());
}

#[tokio::test]
async fn the_fake_refuses_what_meta_refuses() {
    let fake = FakeWhatsapp::start(ACCESS_TOKEN, PHONE_ID).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v21.0/{PHONE_ID}/messages", fake.url());
    let post = |body: Value| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let resp = http.post(url).bearer_auth(ACCESS_TOKEN).json(&body).send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let button = |id: &str, title: &str| json!({"type": "reply", "reply": {"id": id, "title": title}});
    let interactive = |buttons: Vec<Value>| {
        json!({"messaging_product": "whatsapp", "to": USER, "type": "interactive",
            "interactive": {"type": "button", "body": {"text": "b"}, "action": {"buttons": buttons}}})
    };
    let refused = [
        json!({"to": USER, "type": "text", "text": {"body": "x"}}),
        json!({"messaging_product": "whatsapp", "type": "text", "text": {"body": "x"}}),
        json!({"messaging_product": "whatsapp", "to": USER, "type": "text", "text": {"body": "x".repeat(4097)}}),
        json!({"messaging_product": "whatsapp", "to": USER, "type": "text"}),
        interactive(vec![]),
        interactive(vec![button("a", "A"), button("b", "B"), button("c", "C"), button("d", "D")]),
        interactive(vec![button("a", &"t".repeat(21))]),
        interactive(vec![button(&"i".repeat(257), "A")]),
        interactive(vec![button("a", "A"), button("b", "A")]),
        interactive(vec![button("a", "A"), button("a", "B")]),
        json!({"messaging_product": "whatsapp", "to": USER, "type": "template",
            "template": {"name": "t", "language": {"code": "en"}, "components": [
                {"type": "body", "parameters": [{"type": "text", "text": "two\nlines"}]}]}}),
    ];
    for body in refused {
        let (status, answer) = post(body.clone()).await;
        assert_eq!(status, 400, "{body} -> {answer}");
        assert!(answer["error"]["code"].is_u64() && answer["error"]["message"].is_string(), "{answer}");
    }
    let (status, answer) = post(interactive(vec![button("a", &"t".repeat(20))])).await;
    assert_eq!((status, answer["messages"][0]["id"].clone()), (200, json!("wamid.1")));
    assert!(fake.requests().iter().all(|r| r.at <= std::time::Instant::now()));
}

#[tokio::test]
#[should_panic(expected = "waiting for 1 accepted WhatsApp messages; 0 accepted")]
async fn waiting_for_messages_that_never_arrive_panics_with_what_came() {
    let fake = FakeWhatsapp::start(ACCESS_TOKEN, PHONE_ID).await;
    fake.fail_next(1, 503);
    let _ = client().send(&config(&fake.url(), ACCESS_TOKEN), USER, &OutMessage::new(Role::Bot, "x"), false).await;
    fake.wait_for_messages(1, Duration::from_millis(100)).await;
}

#[tokio::test]
async fn media_users_sent_are_looked_up_then_downloaded_with_the_token() {
    let fake = FakeWhatsapp::start(ACCESS_TOKEN, PHONE_ID).await;
    fake.put_media("1479537139650973", "audio/ogg; codecs=opus", b"OggS-voice");
    let c = config(&fake.url(), ACCESS_TOKEN);
    let got = client().fetch_media(&c, "1479537139650973").await.unwrap();
    assert_eq!(got.content_type.as_deref(), Some("audio/ogg; codecs=opus"));
    assert_eq!(got.bytes, b"OggS-voice");
    assert_eq!(fake.downloads(), ["1479537139650973"]);
    // Meta's "object does not exist" is permanent; a wrong token never shows in the error.
    let err = client().fetch_media(&c, "42").await.unwrap_err();
    assert!(matches!(err, DeliveryError::Permanent { .. }), "{err:?}");
    let err = client().fetch_media(&config(&fake.url(), "EAAWrongTokenValue"), "1479537139650973").await.unwrap_err();
    assert!(matches!(err, DeliveryError::Unauthorized { .. }), "{err:?}");
    assert!(!err.to_string().contains("EAAWrongTokenValue"), "{err}");
    // Too large to pass on: refused from the declared size, nothing downloaded.
    fake.put_media("7", "video/mp4", &vec![0u8; 4 * 1024 * 1024 + 1]);
    let err = client().fetch_media(&c, "7").await.unwrap_err();
    assert!(err.to_string().contains("more than"), "{err}");
    assert_eq!(fake.downloads().len(), 1);
}
