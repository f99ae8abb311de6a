//! Duplicates and reordering on `baton serve` (the short form of `baton-bench duplicates`):
//! many Telegram chats at once, every update delivered three times concurrently plus a late
//! copy after the chat's next update. Exactly one answer per update, in each chat's order.

mod common;

use baton_core::agent::{BrainConfig, TelegramConfig};
use baton_core::model::Secret;
use baton_tests::scale::{self, Plan};
use baton_tests::telegram::FakeTelegram;
use std::sync::Arc;
use std::time::Duration;

const BOT_TOKEN: &str = "4242:dupes-bot-token";
const HOOK_SECRET: &str = "dupes-hook-secret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_update_is_answered_once_in_order_despite_copies_and_late_retries() {
    let tg = FakeTelegram::start(BOT_TOKEN).await;
    let api = tg.url();
    let hub = common::hub_with(Arc::new(baton_runtime::clock::SystemClock), move |a| {
        a.channels.telegram = Some(TelegramConfig {
            bot_token: Secret(BOT_TOKEN.into()),
            secret_token: Secret(HOOK_SECRET.into()),
            api_base: api,
            poll: false,
        });
        a.brain = BrainConfig::Faq { faq: scale::faq(), min_score: 1.0 };
    })
    .await;
    let plan = Plan { conversations: 40, events: 10, copies: 3, concurrency: 40 };
    let delivered = scale::deliver(&format!("{}/channels/telegram/shop", hub.base), HOOK_SECRET, plan).await;
    assert_eq!(delivered.refused, 0, "{delivered:?}");
    let sent = tg.wait_for_messages(plan.conversations * plan.events, Duration::from_secs(60)).await;
    // Anything doubled would arrive shortly after the last expected answer.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let verdict = scale::verdict(&tg.sent_messages(), plan);
    println!("{delivered:?}\n{verdict:?}");
    assert!(verdict.ok(), "{verdict:?}");
    assert_eq!(sent.len(), plan.conversations * plan.events);
    hub.running.stop().await;
}
