//! Bad input gets a clear JSON error with the right status, and nothing is stored.

mod common;

use baton_tests::widget::WidgetClient;
use serde_json::{json, Value};

async fn error_of(r: reqwest::Response) -> (u16, String, String) {
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    (status, v["error"]["code"].as_str().unwrap().to_string(), v["error"]["message"].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_json_with_the_right_status() {
    let hub = common::hub().await;
    let http = reqwest::Client::new();
    let w = WidgetClient::start(&hub.base, "shop", None).await;

    // Unknown agent.
    let r = http.post(format!("{}/api/widget/nobody/session", hub.base)).json(&json!({})).send().await.unwrap();
    assert_eq!(error_of(r).await.0, 404);

    // Missing and forged conversation tokens.
    let url = format!("{}/api/widget/shop/messages", hub.base);
    let r = http.post(&url).json(&json!({"text": "hi"})).send().await.unwrap();
    assert_eq!(error_of(r).await.0, 401);
    let forged = format!("{}x", w.token);
    let r = http.post(&url).bearer_auth(forged).json(&json!({"text": "hi"})).send().await.unwrap();
    assert_eq!(error_of(r).await.0, 401);

    // Malformed JSON names the problem.
    let r = http
        .post(&url)
        .bearer_auth(&w.token)
        .header("content-type", "application/json")
        .body("{\"txt\": 1}")
        .send()
        .await
        .unwrap();
    let (status, code, message) = error_of(r).await;
    assert_eq!((status, code.as_str()), (400, "invalid_json"));
    assert!(message.contains("txt") || message.contains("text"), "{message}");

    // Oversized body.
    let big = "x".repeat(70 * 1024);
    let r = http.post(&url).bearer_auth(&w.token).json(&json!({"text": big})).send().await.unwrap();
    assert_eq!(error_of(r).await.0, 413);

    // Desk routes: missing and wrong agent tokens are refused and nothing is stored.
    let desk_url = format!("{}/desks/webhook/shop/v1/human/message/receive", hub.base);
    let body = json!({"conversation_id": "ho_x", "timestamp": 1, "body": "hi"});
    let r = http.post(&desk_url).json(&body).send().await.unwrap();
    assert_eq!(error_of(r).await.0, 401);
    let r = http.post(&desk_url).bearer_auth("bat_wrong").json(&body).send().await.unwrap();
    assert_eq!(error_of(r).await.0, 401);
    // Right token, unknown conversation.
    let r = http.post(&desk_url).bearer_auth(&hub.token).json(&body).send().await.unwrap();
    assert_eq!(error_of(r).await.0, 404);
    // A probe is answered without acting.
    let r = http.post(&desk_url).bearer_auth(&hub.token).json(&json!({"istest": true})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Missing field.
    let r =
        http.post(&desk_url).bearer_auth(&hub.token).json(&json!({"conversation_id": "ho_x"})).send().await.unwrap();
    let (status, _, message) = error_of(r).await;
    assert_eq!(status, 400);
    assert!(message.contains("body"), "{message}");

    // Unknown route.
    let r = http.get(format!("{}/nope/nope", hub.base)).send().await.unwrap();
    assert_eq!(error_of(r).await.0, 404);

    // Nothing of the refused requests was queued or stored.
    let key = baton_core::ConversationKey::new("shop", baton_core::Channel::Widget, &w.conversation_id).unwrap();
    assert!(hub.running.ports.store.load_session(&key).await.unwrap().is_none());
    hub.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_agents_token_does_not_open_anothers_desk_routes() {
    let hub = common::hub().await;
    let mut other = common::shop_agent(&hub.desk.url());
    other.id = "other".into();
    hub.running.ports.store.put_agent(&other).await.unwrap();
    let r = reqwest::Client::new()
        .post(format!("{}/desks/webhook/other/v1/human/close", hub.base))
        .bearer_auth(&hub.token)
        .json(&json!({"conversation_id": "ho_x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // And a widget token of one agent is not valid for another.
    let w = WidgetClient::start(&hub.base, "shop", None).await;
    let r = reqwest::Client::new()
        .post(format!("{}/api/widget/other/messages", hub.base))
        .bearer_auth(&w.token)
        .json(&json!({"text": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    hub.running.stop().await;
}

/// Method, path, a header, body, the status expected.
type Case = (&'static str, String, Option<(&'static str, &'static str)>, String, u16);

/// Every route that takes input refuses it without its verification (the table in
/// SECURITY.md): 401 for a missing or wrong credential, 403 for a wrong WhatsApp verify token
/// or media link, and nothing reaches a session or the desk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_that_takes_input_refuses_it_unverified() {
    use baton_core::agent::{LineConfig, TelegramConfig, WhatsappConfig};
    use baton_core::model::Secret;
    let zoho = baton_tests::salesiq::FakeZoho::start().await;
    let intercom = baton_tests::intercom::FakeIntercom::start("ic-token-sec").await;
    let livechat = baton_tests::livechat::FakeLivechat::start().await;
    let mut salesiq = zoho.config();
    salesiq.webhook_public_keys = vec![baton_tests::salesiq::WebhookSigner::new().public_key_pem()];
    let (ic, lc) = (intercom.config(), livechat.config());
    let hub = common::hub_with(std::sync::Arc::new(baton_runtime::clock::SystemClock), move |a| {
        a.salesiq = Some(salesiq);
        a.intercom = Some(ic);
        a.livechat = Some(lc);
        a.channels.telegram = Some(TelegramConfig {
            bot_token: Secret("1:sec-bot".into()),
            secret_token: Secret("tg-secret".into()),
            api_base: "http://127.0.0.1:9".into(),
            poll: false,
        });
        a.channels.line = Some(LineConfig {
            channel_secret: Secret("line-secret".into()),
            access_token: Secret("line-token".into()),
            api_base: "http://127.0.0.1:9".into(),
        });
        a.channels.whatsapp = Some(WhatsappConfig {
            phone_number_id: "1065403".into(),
            access_token: Secret("wa-token".into()),
            app_secret: Secret("wa-app-secret".into()),
            verify_token: Secret("wa-verify".into()),
            api_base: "http://127.0.0.1:9".into(),
            api_version: "v21.0".into(),
            window_template: None,
        });
    })
    .await;
    let telegram = baton_tests::telegram::text_update(1, 42, "hi");
    let line =
        String::from_utf8(baton_tests::line::webhook_body(&[baton_tests::line::text_event("e1", "U1", "hi", None)]))
            .unwrap();
    let whatsapp = String::from_utf8(baton_tests::whatsapp::webhook_body(
        "1065403",
        &[baton_tests::whatsapp::text_message("wamid.s1", "16505550000", "hi")],
        &[],
    ))
    .unwrap();
    let cases: Vec<Case> = vec![
        ("POST", "/api/widget/shop/messages".into(), None, json!({"text": "hi"}).to_string(), 401),
        (
            "GET",
            "/api/widget/shop/messages?after=0".into(),
            Some(("authorization", "Bearer forged")),
            String::new(),
            401,
        ),
        ("POST", "/api/widget/shop/email".into(), None, json!({"email": "a@example.com"}).to_string(), 401),
        ("POST", "/api/widget/shop/end".into(), None, "{}".into(), 401),
        ("GET", "/api/widget/shop/stream".into(), None, String::new(), 401),
        (
            "POST",
            "/desks/webhook/shop/v1/human/message/receive".into(),
            None,
            json!({"conversation_id": "ho_1", "timestamp": 1, "body": "hi"}).to_string(),
            401,
        ),
        (
            "POST",
            "/desks/webhook/shop/v1/human/close".into(),
            Some(("authorization", "Bearer nope")),
            json!({"conversation_id": "ho_1", "timestamp": 1}).to_string(),
            401,
        ),
        ("GET", "/api/agents/shop/desk/status".into(), None, String::new(), 401),
        (
            "POST",
            "/desks/salesiq/shop".into(),
            Some(("x-siqsignature", "Zm9yZ2Vk")),
            String::from_utf8(baton_tests::salesiq::created("c-1", "hi", None)).unwrap(),
            401,
        ),
        (
            "POST",
            "/desks/intercom/shop".into(),
            Some(("x-hub-signature", "sha1=0000")),
            String::from_utf8(baton_tests::intercom::ping()).unwrap(),
            401,
        ),
        (
            "POST",
            "/desks/livechat/shop".into(),
            None,
            String::from_utf8(baton_tests::livechat::with_secret(
                &baton_tests::livechat::chat_deactivated("C1"),
                Some("guess"),
            ))
            .unwrap(),
            401,
        ),
        (
            "POST",
            "/channels/telegram/shop".into(),
            Some(("x-telegram-bot-api-secret-token", "guess")),
            telegram.to_string(),
            401,
        ),
        ("POST", "/channels/line/shop".into(), Some(("x-line-signature", "Zm9yZ2Vk")), line, 401),
        (
            "GET",
            "/channels/whatsapp/shop?hub.mode=subscribe&hub.verify_token=guess&hub.challenge=77".into(),
            None,
            String::new(),
            403,
        ),
        ("POST", "/channels/whatsapp/shop".into(), Some(("x-hub-signature-256", "sha256=00")), whatsapp, 401),
        ("GET", "/media/shop/whatsapp/1479537139650973?exp=9999999999&sig=00".into(), None, String::new(), 403),
        (
            "POST",
            "/converse/chat".into(),
            Some(("botid", "shop")),
            json!({"platformConversationId": "c-9", "eventType": "message", "text": "hi"}).to_string(),
            401,
        ),
        // An agent whose brain is not a hosted agent has no such webhook at all.
        (
            "POST",
            "/brains/hosted/shop/guessguessguessguessguess/converse".into(),
            None,
            json!({"botId": "b", "channel": "chat", "data": {"platformConversationId": "shop#api#c-9",
                "eventType": "escalate"}})
            .to_string(),
            404,
        ),
        // The console's operator API without a session, or with a forged one.
        ("GET", "/console/api/conversations".into(), None, String::new(), 401),
        (
            "POST",
            "/console/api/conversations/ho_1/reply".into(),
            Some(("cookie", "baton_console=9999999999999.00")),
            json!({"text": "hi"}).to_string(),
            401,
        ),
        ("POST", "/console/api/conversations/ho_1/end".into(), None, "{}".into(), 401),
        ("POST", "/console/login".into(), None, String::new(), 415),
    ];
    let http = reqwest::Client::new();
    for (method, path, header, body, want) in cases {
        let mut req = http.request(method.parse().unwrap(), format!("{}{path}", hub.base));
        if let Some((k, v)) = header {
            req = req.header(k, v);
        }
        if !body.is_empty() {
            req = req.header("content-type", "application/json").body(body);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), want, "{method} {path}");
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for (channel, user) in [
        (baton_core::Channel::Telegram, "42"),
        (baton_core::Channel::Line, "U1"),
        (baton_core::Channel::Whatsapp, "16505550000"),
        (baton_core::Channel::Salesiq, "c-1"),
        (baton_core::Channel::Api, "c-9"),
    ] {
        let key = baton_core::ConversationKey::new("shop", channel, user).unwrap();
        assert!(hub.running.ports.store.load_session(&key).await.unwrap().is_none(), "{key}");
    }
    assert!(hub.desk.requests().is_empty(), "nothing reached the desk");
    hub.running.stop().await;
}
