//! Telegram, WhatsApp, Zoho SalesIQ and LiveChat through the real Lambda handlers on moto:
//! the channel-webhook and desk-webhook functions resolve the agent's secrets from SSM
//! Parameter Store, verify the provider's signature, and queue; the worker answers through
//! the fake providers, with access tokens cached in the DynamoDB table.

mod common;

use baton_core::agent::{DeskConfig, TelegramConfig, WhatsappConfig};
use baton_core::model::Secret;
use baton_tests::salesiq::{created, operator_replied, FakeZoho, Kind, WebhookSigner, DEPARTMENT_ID, OPERATOR_ID};
use baton_tests::telegram::{text_update, FakeTelegram};
use common::{hub, run_worker, ApiRequest, SHIPPING};
use std::time::Duration;

const BOT_TOKEN: &str = "7654321:AAE_lambda-bot";
const HOOK_SECRET: &str = "lambda-hook-secret";

async fn put_parameter(name: &str, value: &str) {
    baton_tests::moto::endpoint();
    let ssm = baton_aws::ssm_client_from_env().await;
    ssm.put_parameter()
        .name(name)
        .value(value)
        .r#type(baton_aws::aws_sdk_ssm::types::ParameterType::SecureString)
        .overwrite(true)
        .send()
        .await
        .expect("put SSM parameter");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_telegram_update_is_verified_queued_and_answered() {
    telegram_update_round_trip(false).await;
}

/// The same webhook at channel-webhook's own function URL (template parameter
/// `FunctionUrls`): every path reaches the function, which serves only its own routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_telegram_update_through_the_function_url_is_verified_queued_and_answered() {
    telegram_update_round_trip(true).await;
}

async fn telegram_update_round_trip(function_url: bool) {
    let tg = FakeTelegram::start(BOT_TOKEN).await;
    let prefix = format!("/baton/{}", baton_tests::moto::unique_name("tg"));
    put_parameter(&format!("{prefix}/token"), BOT_TOKEN).await;
    put_parameter(&format!("{prefix}/secret"), HOOK_SECRET).await;
    let api = tg.url();
    let p = prefix.clone();
    let hub = hub(move |a| {
        a.channels.telegram = Some(TelegramConfig {
            bot_token: Secret(format!("ssm:{p}/token")),
            secret_token: Secret(format!("ssm:{p}/secret")),
            api_base: api,
            poll: false,
        });
    })
    .await;
    let update = text_update(1, 42, "How long does shipping take?");
    let bad = ApiRequest::new("POST", "/channels/telegram/shop")
        .through_function_url(function_url)
        .header("X-Telegram-Bot-Api-Secret-Token", "wrong")
        .json(&update)
        .send(&hub.channel_api)
        .await;
    assert_eq!(bad.status, 401, "{bad:?}");
    // Another function's route is not served here, whatever path reaches the function.
    let elsewhere = ApiRequest::new("POST", "/api/widget/shop/session")
        .through_function_url(function_url)
        .json(&serde_json::json!({}))
        .send(&hub.channel_api)
        .await;
    assert_eq!((elsewhere.status, &elsewhere.body["error"]["code"]), (404, &serde_json::json!("not_found")));
    for _ in 0..2 {
        let r = ApiRequest::new("POST", "/channels/telegram/shop")
            .through_function_url(function_url)
            .header("X-Telegram-Bot-Api-Secret-Token", HOOK_SECRET)
            .json(&update)
            .send(&hub.channel_api)
            .await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    run_worker(&hub).await;
    let sent = tg.wait_for_messages(1, Duration::from_secs(10)).await;
    assert_eq!(sent[0]["text"], SHIPPING);
    run_worker(&hub).await;
    assert_eq!(tg.sent_messages().len(), 1, "Telegram's retry was applied once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_salesiq_visitor_is_answered_with_a_token_cached_in_the_table() {
    let zoho = FakeZoho::start().await;
    let signer = WebhookSigner::new();
    let prefix = format!("/baton/{}", baton_tests::moto::unique_name("siq"));
    let mut cfg = zoho.config();
    put_parameter(&format!("{prefix}/client-secret"), cfg.client_secret.expose()).await;
    put_parameter(&format!("{prefix}/refresh-token"), cfg.refresh_token.expose()).await;
    cfg.client_secret = Secret(format!("ssm:{prefix}/client-secret"));
    cfg.refresh_token = Secret(format!("ssm:{prefix}/refresh-token"));
    cfg.webhook_public_keys = vec![signer.public_key_pem()];
    cfg.bot_operator_id = Some(OPERATOR_ID.into());
    let hub = hub(move |a| {
        a.salesiq = Some(cfg);
        a.desk = DeskConfig::Salesiq { department_id: DEPARTMENT_ID.into(), operator_id: None };
    })
    .await;

    let send = |body: Vec<u8>, signature: String| {
        let router = hub.desk_api.clone();
        async move {
            let mut req = ApiRequest::new("POST", "/desks/salesiq/shop").header("X-Siqsignature", &signature);
            req.body = Some(body);
            req = req.header("content-type", "application/json");
            req.send(&router).await
        }
    };
    let body = created("c-77", "How long does shipping take?", None);
    let r = send(body.clone(), signer.sign(b"something else")).await;
    assert_eq!(r.status, 401, "{r:?}");
    let r = send(body.clone(), signer.sign(&body)).await;
    assert_eq!(r.status, 200, "{r:?}");
    run_worker(&hub).await;
    let posts = zoho.wait_for(Kind::OperatorMessage, 1, Duration::from_secs(10)).await;
    assert_eq!(posts[0].body["text"], SHIPPING);

    // The hub's own post comes back: recognised, nothing queued for a human.
    let echo = operator_replied("c-77", "m-1", OPERATOR_ID, SHIPPING);
    let r = send(echo.clone(), signer.sign(&echo)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["status"], "ignored");

    // A second question reuses the access token cached in DynamoDB.
    let again = baton_tests::salesiq::visitor_replied("c-77", "m-2", "What are your opening hours?");
    send(again.clone(), signer.sign(&again)).await;
    run_worker(&hub).await;
    zoho.wait_for(Kind::OperatorMessage, 2, Duration::from_secs(10)).await;
    assert_eq!(zoho.token_requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whatsapp_message_is_verified_queued_and_answered() {
    use baton_core::ports::Store;
    use baton_tests::whatsapp::{image_message, sign, text_message, webhook_body, FakeWhatsapp};
    const PHONE: &str = "106540352242922";
    const TOKEN: &str = "EAAG-lambda-whatsapp-token";
    let fake = FakeWhatsapp::start(TOKEN, PHONE).await;
    let prefix = format!("/baton/{}", baton_tests::moto::unique_name("wa"));
    for (name, value) in [("token", TOKEN), ("app-secret", "lambda-app-secret"), ("verify", "lambda-verify")] {
        put_parameter(&format!("{prefix}/{name}"), value).await;
    }
    let (api, p) = (fake.url(), prefix.clone());
    let hub = hub(move |a| {
        a.channels.whatsapp = Some(WhatsappConfig {
            phone_number_id: PHONE.into(),
            access_token: Secret(format!("ssm:{p}/token")),
            app_secret: Secret(format!("ssm:{p}/app-secret")),
            verify_token: Secret(format!("ssm:{p}/verify")),
            api_base: api,
            api_version: "v21.0".into(),
            window_template: None,
        });
    })
    .await;

    let path = "/channels/whatsapp/shop?hub.mode=subscribe&hub.verify_token=lambda-verify&hub.challenge=ch-8431";
    let r = ApiRequest::new("GET", path).send(&hub.channel_api).await;
    assert_eq!((r.status, r.body.as_str()), (200, Some("ch-8431")), "{r:?}");
    let path = "/channels/whatsapp/shop?hub.mode=subscribe&hub.verify_token=guess&hub.challenge=ch-8431";
    assert_eq!(ApiRequest::new("GET", path).send(&hub.channel_api).await.status, 403);

    let body = webhook_body(PHONE, &[text_message("wamid.L1", "16505550000", "How long does shipping take?")], &[]);
    let send = |signature: String| {
        let router = hub.channel_api.clone();
        let body = body.clone();
        async move {
            let mut req = ApiRequest::new("POST", "/channels/whatsapp/shop").header("X-Hub-Signature-256", &signature);
            req.body = Some(body);
            req.header("content-type", "application/json").send(&router).await
        }
    };
    assert_eq!(send(sign("not-the-app-secret", &body)).await.status, 401);
    for _ in 0..2 {
        let r = send(sign("lambda-app-secret", &body)).await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    run_worker(&hub).await;
    let sent = fake.wait_for_messages(1, Duration::from_secs(10)).await;
    assert_eq!(sent[0]["text"]["body"], SHIPPING);
    run_worker(&hub).await;
    assert_eq!(fake.sent().len(), 1, "Meta's redelivery was applied once");

    // A photo: the placeholder links to the API's own host, and the link serves the file
    // through the function (a binary body, base64 on the wire to API Gateway).
    fake.put_media("7781", "image/gif", b"GIF89a-fake-photo");
    let photo = webhook_body(PHONE, &[image_message("wamid.L2", "16505550000", "7781", None)], &[]);
    let mut req = ApiRequest::new("POST", "/channels/whatsapp/shop")
        .header("X-Hub-Signature-256", &sign("lambda-app-secret", &photo));
    req.body = Some(photo);
    assert_eq!(req.header("content-type", "application/json").send(&hub.channel_api).await.status, 200);
    run_worker(&hub).await;
    let key = baton_core::ConversationKey::new("shop", baton_core::Channel::Whatsapp, "16505550000").unwrap();
    let session = hub.aws.store.load_session(&key).await.unwrap().expect("session").session;
    let placeholder =
        session.history.iter().map(|t| t.text.clone()).find(|t| t.starts_with("[image")).expect("the photo");
    let link = placeholder.rsplit_once(' ').unwrap().1;
    let path = link.strip_prefix("https://abc123.execute-api.us-east-1.amazonaws.com").expect("the API's host");
    let r = ApiRequest::new("GET", path).send(&hub.channel_api).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.headers["content-type"], "image/gif");
    assert_eq!(r.body, serde_json::json!("GIF89a-fake-photo"));
    let r = ApiRequest::new("GET", &path.replace("7781?", "7782?")).send(&hub.channel_api).await;
    assert_eq!(r.status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_livechat_chat_is_answered_by_the_bot_with_its_token_cached_in_the_table() {
    use baton_tests::livechat::{incoming_chat, incoming_event, with_secret, FakeLivechat, Kind as Lc, GROUP_ID};
    let fake = FakeLivechat::start().await;
    let prefix = format!("/baton/{}", baton_tests::moto::unique_name("lc"));
    let mut cfg = fake.config();
    put_parameter(&format!("{prefix}/webhook-secret"), cfg.webhook_secret.expose()).await;
    put_parameter(&format!("{prefix}/bot-secret"), cfg.bot_secret.as_ref().unwrap().expose()).await;
    cfg.webhook_secret = Secret(format!("ssm:{prefix}/webhook-secret"));
    cfg.bot_secret = Some(Secret(format!("ssm:{prefix}/bot-secret")));
    let hub = hub(move |a| {
        a.livechat = Some(cfg);
        a.desk = DeskConfig::Livechat { group_id: GROUP_ID };
    })
    .await;
    fake.add_chat("LAMBDA1");
    let send = |body: Vec<u8>| {
        let router = hub.desk_api.clone();
        async move {
            let mut req = ApiRequest::new("POST", "/desks/livechat/shop");
            req.body = Some(body);
            req.header("content-type", "application/json").send(&router).await
        }
    };
    let customer = "b7eff798-f8df-4364-8059-649c35c9ed0c";
    let body = incoming_chat("LAMBDA1", customer, None, "How long does shipping take?");
    assert_eq!(send(with_secret(&body, Some("guess"))).await.status, 401);
    assert_eq!(send(body).await.status, 200);
    run_worker(&hub).await;
    let said = fake.wait_for(Lc::AgentEvent, 1, Duration::from_secs(10)).await;
    assert_eq!(said[0].body["event"]["text"], SHIPPING);
    send(incoming_event("LAMBDA1", "E-2", customer, "Do you ship abroad to other countries?", None)).await;
    run_worker(&hub).await;
    fake.wait_for(Lc::AgentEvent, 2, Duration::from_secs(10)).await;
    assert_eq!(fake.requests_of(Lc::IssueBotToken).len(), 1, "the bot token was cached in the table");
}

/// The agent-api function: a converse call queued, the worker's answer pushed to the
/// integration (signed with a secret from SSM), and the synchronous mode reading the answer
/// from the DynamoDB message log under the same messageId.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_api_conversation_is_answered_by_webhook_and_synchronously() {
    use baton_lambda::{http_router, Routes};
    let integration = baton_tests::integration::FakeIntegration::start(Some(common::SECRET)).await;
    let parameter = format!("/baton/{}/api-secret", baton_tests::moto::unique_name("api"));
    put_parameter(&parameter, common::SECRET).await;
    let url = integration.url();
    let p = parameter.clone();
    let hub = hub(move |a| {
        a.api = Some(baton_core::agent::ApiConfig {
            converse_url: Some(url),
            signing_secret: Some(Secret(format!("ssm:{p}"))),
            ..Default::default()
        });
    })
    .await;
    let api = http_router(&hub.aws, Routes::AgentApi);
    let converse = |text: &str| {
        ApiRequest::new("POST", "/converse/chat")
            .header("botid", "shop")
            .header("authorization", &hub.token)
            .json(&serde_json::json!({"platformConversationId": "ivr-1", "eventType": "message", "text": text}))
    };
    let wrong = ApiRequest::new("POST", "/converse/chat").header("botid", "shop").header("authorization", "bat_x");
    assert_eq!(wrong.json(&serde_json::json!({})).send(&api).await.status, 401);

    let r = converse("How long does shipping take?").send(&api).await;
    assert_eq!((r.status, &r.body), (200, &serde_json::Value::Null), "{r:?}");
    run_worker(&hub).await;
    let pushed = integration.wait_for("ivr-1", 1).await;
    assert_eq!(pushed[0]["text"], SHIPPING);
    assert_eq!(integration.bad_signatures(), 0);

    // Synchronous: the function waits while the worker (another function) answers.
    let request = converse("How long does shipping take?").header("prefer", "wait=20");
    let worker = async {
        loop {
            run_worker(&hub).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let reply = tokio::select! {
        reply = request.send(&api) => reply,
        never = worker => never,
    };
    assert_eq!(reply.body["complete"], true, "{reply:?}");
    assert_eq!(reply.body["messages"][0]["text"], SHIPPING);
    let pushed = integration.wait_for("ivr-1", 2).await;
    assert_eq!(reply.body["messages"][0]["messageId"], pushed[1]["messageId"]);
}
