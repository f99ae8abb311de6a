//! Telegram and Zoho SalesIQ through the real Lambda handlers on moto: the channel-webhook
//! and desk-webhook functions resolve the agent's secrets from SSM Parameter Store, verify
//! the provider's signature, and queue; the worker answers through the fake providers, with
//! the SalesIQ access token cached in the DynamoDB table.

mod common;

use baton_core::agent::{DeskConfig, TelegramConfig};
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
        .header("X-Telegram-Bot-Api-Secret-Token", "wrong")
        .json(&update)
        .send(&hub.channel_api)
        .await;
    assert_eq!(bad.status, 401, "{bad:?}");
    for _ in 0..2 {
        let r = ApiRequest::new("POST", "/channels/telegram/shop")
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
