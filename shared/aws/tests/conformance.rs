//! The shared conformance suite (`baton_tests::conformance`) against DynamoDB and SQS on
//! moto: the same checks the SQLite adapters pass.

mod common;

use baton_aws::{SqsEventQueue, SqsTimers};
use baton_tests::conformance::{self, Fixture};
use common::{drain_events, queues, receive_all, FixedClock};
use std::sync::Arc;

async fn fresh() -> Fixture {
    let store = common::store().await;
    Fixture::new(Arc::new(store), ())
}

baton_tests::store_conformance_tests!(fresh());

#[tokio::test]
async fn queue_keeps_order_and_drops_duplicates() {
    let (sqs, events, _) = queues().await;
    let queue = SqsEventQueue::new(sqs.clone(), events.clone());
    conformance::queue_keeps_order_and_drops_duplicates(&queue, || drain_events(&sqs, &events)).await;
}

#[tokio::test]
async fn due_timer_fires_once() {
    let (sqs, events, timer_url) = queues().await;
    let now = common::wall_now();
    let queue = SqsEventQueue::new(sqs.clone(), events.clone());
    let timers = SqsTimers::new(sqs.clone(), timer_url.clone(), Arc::new(FixedClock(now)));
    conformance::due_timer_fires_once(&timers, now, |now| {
        let (sqs, events, timer_url, timers, queue) = (&sqs, &events, &timer_url, &timers, &queue);
        async move {
            for m in receive_all(sqs, timer_url).await {
                timers.fire_or_rearm(m.body().expect("body"), now, queue, None).await.expect("fire");
            }
            drain_events(sqs, events).await
        }
    })
    .await;
}

#[tokio::test]
async fn key_value_expires_and_leases() {
    conformance::key_value_expires_and_leases(Arc::new(common::store().await)).await;
}

#[tokio::test]
async fn export_and_erase_one_conversation() {
    let store = common::store().await;
    conformance::export_and_erase_one_conversation(&store, &store).await;
}

/// The same suite on a store that caches agent configs and desk statuses and writes seen
/// marks at the flush, as the Lambda functions run it: its own writes are read back at once.
mod with_config_cache {
    use super::*;

    async fn fresh() -> Fixture {
        let store =
            common::store().await.with_config_cache(std::time::Duration::from_secs(60)).with_marks_behind_effects();
        Fixture::new(Arc::new(store), ())
    }

    baton_tests::store_conformance_tests!(fresh());
}
