//! Moving messages from a dead-letter queue back to a queue, for `baton redrive`: the same
//! job as SQS's own message move task, for endpoints that lack it (moto, LocalStack) and
//! for moving a few messages at a time.

use crate::describe_sdk_error;
use aws_sdk_sqs::types::{Message, MessageSystemAttributeName};
use aws_sdk_sqs::Client;

/// How long received messages stay hidden in the dead-letter queue while they are moved.
/// A message whose move failed reappears after this at the latest.
const VISIBILITY_SECS: i32 = 60;

/// Long polling per receive: an empty short poll does not prove an SQS queue empty.
const WAIT_SECS: i32 = 1;

/// A redrive that stopped early. `moved` messages went through before the error; the
/// message that failed and those after it stay in the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("redrive stopped after moving {moved} message(s): {message}")]
pub struct RedriveError {
    pub moved: usize,
    pub message: String,
}

/// Move up to `max` messages from `from_url` (a dead-letter queue) to `to_url`, oldest
/// first, one at a time: receive, send to `to_url`, then delete from `from_url`. Returns
/// how many were moved.
///
/// Bodies and message attributes are kept. When `to_url` is a FIFO queue (its name ends in
/// `.fifo`), each message keeps its `MessageGroupId` and `MessageDeduplicationId`, so it
/// joins its conversation again and a redrive that is interrupted between send and delete
/// and run again does not queue it twice. SQS drops a message whose deduplication id was
/// sent in the last 5 minutes; messages reach Baton's dead-letter queues only after 5
/// receives of at least 6 minutes' visibility each, so that window has long passed.
pub async fn redrive(client: &Client, from_url: &str, to_url: &str, max: usize) -> Result<usize, RedriveError> {
    if from_url.trim_end_matches('/') == to_url.trim_end_matches('/') {
        return Err(RedriveError { moved: 0, message: "the source and destination are the same queue".into() });
    }
    let fifo = to_url.trim_end_matches('/').ends_with(".fifo");
    let mut moved = 0;
    while moved < max {
        let want = (max - moved).min(10) as i32;
        let out = client
            .receive_message()
            .queue_url(from_url)
            .max_number_of_messages(want)
            .wait_time_seconds(WAIT_SECS)
            .visibility_timeout(VISIBILITY_SECS)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| RedriveError {
                moved,
                message: format!("sqs receive from {from_url}: {}", describe_sdk_error(&e)),
            })?;
        let messages = out.messages.unwrap_or_default();
        if messages.is_empty() {
            break;
        }
        for (i, m) in messages.iter().enumerate() {
            if let Err(message) = move_one(client, from_url, to_url, fifo, m).await {
                // What is left (this message included) reappears at once, in its order.
                release(client, from_url, &messages[i..]).await;
                return Err(RedriveError { moved, message });
            }
            moved += 1;
        }
    }
    Ok(moved)
}

async fn move_one(client: &Client, from_url: &str, to_url: &str, fifo: bool, m: &Message) -> Result<(), String> {
    let id = m.message_id().unwrap_or("?");
    let body = m.body().ok_or_else(|| format!("message {id} has no body"))?;
    let receipt = m.receipt_handle().ok_or_else(|| format!("message {id} has no receipt handle"))?;
    let mut send = client
        .send_message()
        .queue_url(to_url)
        .message_body(body)
        .set_message_attributes(m.message_attributes().cloned());
    if fifo {
        let attr = |name: MessageSystemAttributeName| m.attributes().and_then(|a| a.get(&name)).cloned();
        let group = attr(MessageSystemAttributeName::MessageGroupId)
            .ok_or_else(|| format!("message {id} has no MessageGroupId, which the FIFO queue {to_url} needs"))?;
        send = send
            .message_group_id(group)
            .set_message_deduplication_id(attr(MessageSystemAttributeName::MessageDeduplicationId));
    }
    send.send().await.map_err(|e| format!("sqs send message {id} to {to_url}: {}", describe_sdk_error(&e)))?;
    client.delete_message().queue_url(from_url).receipt_handle(receipt).send().await.map_err(|e| {
        format!("message {id} was copied to {to_url} but not deleted from {from_url}: {}", describe_sdk_error(&e))
    })?;
    Ok(())
}

/// Best effort: make received but unmoved messages visible again.
async fn release(client: &Client, from_url: &str, messages: &[Message]) {
    for m in messages {
        if let Some(receipt) = m.receipt_handle() {
            if let Err(e) = client
                .change_message_visibility()
                .queue_url(from_url)
                .receipt_handle(receipt)
                .visibility_timeout(0)
                .send()
                .await
            {
                tracing::warn!(error = %describe_sdk_error(&e), "could not release a message; it reappears after its visibility timeout");
            }
        }
    }
}
