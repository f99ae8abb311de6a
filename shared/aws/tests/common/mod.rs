//! Shared by the AWS integration tests: clients pointed at moto, a fresh table per test,
//! queues, a fixed clock and queue drains.
#![allow(dead_code)]

use aws_sdk_sqs::types::{Message, MessageSystemAttributeName};
use baton_aws::{create_event_queue, create_table, create_timer_queue, parse_event, DynamoStore};
use baton_core::event::Event;
use baton_core::model::Millis;
use baton_core::ports::Clock;
use baton_tests::moto;
use std::time::{SystemTime, UNIX_EPOCH};

pub async fn clients() -> (aws_sdk_dynamodb::Client, aws_sdk_sqs::Client) {
    moto::endpoint();
    baton_aws::clients_from_env().await
}

/// A store on its own new table.
pub async fn store() -> DynamoStore {
    let (dynamo, _) = clients().await;
    let table = moto::unique_name("baton");
    create_table(&dynamo, &table).await.expect("create table");
    DynamoStore::new(dynamo, table)
}

/// A new FIFO event queue and a new standard timer queue: (sqs, events url, timers url).
pub async fn queues() -> (aws_sdk_sqs::Client, String, String) {
    let (_, sqs) = clients().await;
    let events =
        create_event_queue(&sqs, &format!("{}.fifo", moto::unique_name("ev"))).await.expect("create fifo queue");
    let timers = create_timer_queue(&sqs, &moto::unique_name("tm")).await.expect("create timer queue");
    (sqs, events, timers)
}

pub struct FixedClock(pub Millis);

impl Clock for FixedClock {
    fn now(&self) -> Millis {
        self.0
    }
}

/// Wall-clock time: SQS (and moto) delay messages in real time.
pub fn wall_now() -> Millis {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
    Millis(d.as_millis() as i64)
}

/// Receive (and delete) every visible message, in receive order.
pub async fn receive_all(sqs: &aws_sdk_sqs::Client, url: &str) -> Vec<Message> {
    let mut out = Vec::new();
    loop {
        let got = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(0)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .expect("receive");
        let messages = got.messages.unwrap_or_default();
        if messages.is_empty() {
            return out;
        }
        for m in messages {
            sqs.delete_message()
                .queue_url(url)
                .receipt_handle(m.receipt_handle().expect("receipt handle"))
                .send()
                .await
                .expect("delete");
            out.push(m);
        }
    }
}

/// Every queued event of the FIFO queue, parsed.
pub async fn drain_events(sqs: &aws_sdk_sqs::Client, url: &str) -> Vec<Event> {
    receive_all(sqs, url).await.iter().map(|m| parse_event(m.body().expect("body")).expect("event")).collect()
}

pub async fn queue_attribute(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    name: aws_sdk_sqs::types::QueueAttributeName,
) -> String {
    let out =
        sqs.get_queue_attributes().queue_url(url).attribute_names(name.clone()).send().await.expect("queue attributes");
    out.attributes().and_then(|a| a.get(&name)).cloned().unwrap_or_default()
}
