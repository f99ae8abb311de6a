//! Duplicates and reordering on the AWS path (moto): Telegram chats whose every update
//! reaches the channel-webhook function three times at once plus once late, after the chat's
//! next update; then every batch of the events queue is handed to three concurrent
//! conversation-worker invocations (as after an expired visibility timeout). Exactly one
//! answer per update, in each chat's order: the applying is guarded by the session version and
//! the seen ids, the sending by the drain lease. `BATON_SCALE_CONVERSATIONS=N` runs N chats
//! instead of 4 and `BATON_SCALE_EVENTS=M` M updates each instead of 5 (on demand: moto with
//! three workers per batch takes a fraction of a second per update).

mod common;

use baton_core::agent::{BrainConfig, TelegramConfig};
use baton_core::model::Secret;
use baton_lambda::{http_router, wire, Routes};
use baton_tests::scale::{self, Plan};
use baton_tests::telegram::FakeTelegram;
use common::{invoke_worker, queue_arn, receive, record, run_timers, settle, ApiRequest};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

const BOT_TOKEN: &str = "4242:lambda-dupes-bot";
const HOOK_SECRET: &str = "lambda-dupes-secret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_update_is_answered_once_in_order_through_the_lambda_handlers() {
    let tg = FakeTelegram::start(BOT_TOKEN).await;
    let api = tg.url();
    let hub = common::hub(move |a| {
        a.channels.telegram = Some(TelegramConfig {
            bot_token: Secret(BOT_TOKEN.into()),
            secret_token: Secret(HOOK_SECRET.into()),
            api_base: api,
            poll: false,
        });
        a.brain = BrainConfig::Faq { faq: scale::faq(), min_score: 1.0 };
    })
    .await;
    // The hub's functions talk to DynamoDB and SQS through a proxy that makes every request
    // atomic, as the real services are (see baton_tests::serialized).
    let proxy = baton_tests::serialized::start(&baton_tests::moto::endpoint()).await;
    let sdk = baton_aws::sdk_config().await;
    let dynamo = baton_aws::aws_sdk_dynamodb::Client::from_conf(
        baton_aws::aws_sdk_dynamodb::config::Builder::from(&sdk).endpoint_url(&proxy).build(),
    );
    let sqs = baton_aws::aws_sdk_sqs::Client::from_conf(
        baton_aws::aws_sdk_sqs::config::Builder::from(&sdk).endpoint_url(&proxy).build(),
    );
    let aws = wire(
        common::config(&hub.aws.config.table, &hub.queues),
        Arc::new(baton_runtime::clock::SystemClock),
        dynamo,
        sqs,
        Arc::new(baton_aws::SsmSecrets::new(baton_aws::aws_sdk_ssm::Client::from_conf(
            baton_aws::aws_sdk_ssm::config::Builder::from(&sdk).endpoint_url(&proxy).build(),
        ))),
    );
    let hub = common::Hub { channel_api: http_router(&aws, Routes::Channels), aws, ..hub };
    let from_env =
        |name: &str, default: usize| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let plan = Plan {
        conversations: from_env("BATON_SCALE_CONVERSATIONS", 4),
        events: from_env("BATON_SCALE_EVENTS", 5),
        copies: 3,
        concurrency: 20,
    };

    // lambda_http's adapter future is not Send: each invocation runs on a blocking thread.
    let (router, runtime) = (hub.channel_api.clone(), tokio::runtime::Handle::current());
    let delivered = scale::deliver_with(plan, move |update| {
        let (router, runtime) = (router.clone(), runtime.clone());
        async move {
            let invoke = move || {
                runtime.block_on(async {
                    let request = ApiRequest::new("POST", "/channels/telegram/shop")
                        .header("X-Telegram-Bot-Api-Secret-Token", HOOK_SECRET)
                        .json(&update);
                    request.send(&router).await.status == 200
                })
            };
            tokio::task::spawn_blocking(invoke).await.unwrap_or(false)
        }
    })
    .await;
    assert_eq!(delivered.refused, 0, "{delivered:?}");

    // Every batch goes to three workers at once; a record counts as failed only when it
    // failed in all three (any success deletes it, as the event source would). Wake-ups of a
    // worker that found another one running the effects come through the timer queue.
    let expected = plan.conversations * plan.events;
    let arn = queue_arn(&hub.sqs, &hub.queues.events).await;
    let (mut batches, mut records, mut wakes) = (0, 0, 0);
    let started = Instant::now();
    let mut quiet_since: Option<Instant> = None;
    loop {
        // moto with three workers per batch takes seconds per update: the limit grows with the plan.
        let limit = Duration::from_secs(120 + 6 * (plan.conversations * plan.events) as u64);
        assert!(started.elapsed() < limit, "the queues never drained");
        let messages = receive(&hub.sqs, &hub.queues.events).await;
        if !messages.is_empty() {
            quiet_since = None;
            let batch: Vec<_> = messages.iter().map(|m| record(m, &arn)).collect();
            let (a, b, c) = tokio::join!(
                invoke_worker(&hub.aws, batch.clone()),
                invoke_worker(&hub.aws, batch.clone()),
                invoke_worker(&hub.aws, batch)
            );
            let (b, c): (HashSet<_>, HashSet<_>) = (b.into_iter().collect(), c.into_iter().collect());
            let failed: Vec<String> = a.into_iter().filter(|id| b.contains(id) && c.contains(id)).collect();
            settle(&hub.sqs, &hub.queues.events, &messages, &failed).await;
            batches += 1;
            records += messages.len();
            continue;
        }
        let fired = run_timers(&hub).await;
        wakes += fired;
        if fired > 0 {
            quiet_since = None;
            continue;
        }
        // Done once every answer is in and nothing moved for three seconds (a doubled
        // answer or a delayed wake-up would show up by then).
        let since = *quiet_since.get_or_insert_with(Instant::now);
        if tg.sent_messages().len() >= expected && since.elapsed() > Duration::from_secs(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let verdict = scale::verdict(&tg.sent_messages(), plan);
    println!(
        "{delivered:?}; worker: {batches} batches, {records} records, each invoked 3 times at once; \
         {wakes} wake-ups\n{verdict:?}"
    );
    assert!(verdict.ok(), "{verdict:?}");
    assert!(records >= plan.conversations * plan.events, "every update was queued at least once");
}
