//! The event queue on SQS FIFO: one message group per conversation keeps its order, the
//! deduplication id (the event id's hash) drops a provider's fast retries for 5 minutes;
//! the worker's seen ids catch later ones.

use crate::describe_sdk_error;
use async_trait::async_trait;
use aws_sdk_sqs::operation::send_message_batch::SendMessageBatchOutput;
use aws_sdk_sqs::types::{QueueAttributeName, SendMessageBatchRequestEntry};
use aws_sdk_sqs::Client;
use baton_core::event::{Event, EVENT_SCHEMA};
use baton_core::model::ConversationKey;
use baton_core::ports::{EventQueue, QueueError};
use sha2::{Digest, Sha256};

/// Entries per `SendMessageBatch` call (the SQS limit).
const MAX_BATCH: usize = 10;

/// Total body bytes per batch call; SQS rejects larger batches (256 KiB).
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// A queue message that cannot be turned back into what was sent. The message names the
/// problem's class and position only: serde's full text can quote user content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("queue message cannot be read: {0}")]
pub struct MessageError(pub String);

impl MessageError {
    pub(crate) fn json(e: &serde_json::Error) -> MessageError {
        MessageError(format!("{:?} error at line {} column {}", e.classify(), e.line(), e.column()))
    }
}

/// `MessageGroupId` of a conversation: hex SHA-256 of its key (64 characters). Group ids
/// are limited to 128 characters of a restricted alphabet; conversation keys can be
/// longer and contain anything.
pub fn group_id(key: &ConversationKey) -> String {
    let mut id = hex::encode(Sha256::digest(key.to_string().as_bytes()));
    id.truncate(64);
    id
}

/// `MessageDeduplicationId` of an event: hex SHA-256 of its id (64 characters).
pub fn dedup_id(event_id: &str) -> String {
    hex::encode(Sha256::digest(event_id.as_bytes()))
}

/// Parse a queued event body (for the worker's SQS consumer). Refuses events written by
/// a newer release, so they stay queued (and reach the DLQ) instead of being misread.
pub fn parse_event(body: &str) -> Result<Event, MessageError> {
    let event: Event = serde_json::from_str(body).map_err(|e| MessageError::json(&e))?;
    if event.schema > EVENT_SCHEMA {
        return Err(MessageError(format!(
            "event schema {} is newer than this build reads ({EVENT_SCHEMA})",
            event.schema
        )));
    }
    // serde does not validate the key's parts; a redriven or hand-made message might.
    ConversationKey::new(&event.conversation.agent, event.conversation.channel, &event.conversation.user)
        .map_err(|e| MessageError(format!("bad conversation: {e}")))?;
    Ok(event)
}

/// [`EventQueue`] on an SQS FIFO queue.
#[derive(Debug, Clone)]
pub struct SqsEventQueue {
    client: Client,
    queue_url: String,
}

impl SqsEventQueue {
    pub fn new(client: Client, queue_url: impl Into<String>) -> SqsEventQueue {
        SqsEventQueue { client, queue_url: queue_url.into() }
    }

    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    pub fn client(&self) -> &Client {
        &self.client
    }
}

fn queue_err<E, R>(what: &str, e: &aws_sdk_sqs::error::SdkError<E, R>) -> QueueError
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    QueueError(format!("sqs {what}: {}", describe_sdk_error(e)))
}

/// Split into batch calls of at most 10 entries and 256 KiB, keeping the order.
fn batches(bodies: &[(Event, String)]) -> Vec<&[(Event, String)]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, (_, body)) in bodies.iter().enumerate() {
        if i > start && (i - start == MAX_BATCH || bytes + body.len() > MAX_BATCH_BYTES) {
            out.push(&bodies[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += body.len();
    }
    if start < bodies.len() {
        out.push(&bodies[start..]);
    }
    out
}

/// A batch answer with failed entries fails the whole call: the caller (a webhook) then
/// answers non-2xx, the provider retries, and the entries that did go through are dropped
/// by their deduplication ids.
pub(crate) fn check_batch(out: &SendMessageBatchOutput) -> Result<(), QueueError> {
    let failed = out.failed();
    if failed.is_empty() {
        return Ok(());
    }
    let reasons: Vec<String> = failed.iter().map(|f| format!("entry {}: {}", f.id(), f.code())).collect();
    Err(QueueError(format!("sqs send batch: {} of the events were not queued ({})", failed.len(), reasons.join(", "))))
}

#[async_trait]
impl EventQueue for SqsEventQueue {
    /// Sends in order, in batches of up to 10; returns once SQS has stored every event.
    async fn enqueue(&self, events: Vec<Event>) -> Result<(), QueueError> {
        let bodies = events
            .into_iter()
            .map(|e| {
                let body =
                    serde_json::to_string(&e).map_err(|err| QueueError(format!("cannot encode an event: {err}")))?;
                Ok((e, body))
            })
            .collect::<Result<Vec<_>, QueueError>>()?;
        for batch in batches(&bodies) {
            let entries = batch
                .iter()
                .enumerate()
                .map(|(i, (event, body))| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(body.as_str())
                        .message_group_id(group_id(&event.conversation))
                        .message_deduplication_id(dedup_id(&event.id))
                        .build()
                        .map_err(|e| QueueError(format!("cannot build an SQS entry: {e}")))
                })
                .collect::<Result<Vec<_>, QueueError>>()?;
            let out = self
                .client
                .send_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| queue_err("send batch", &e))?;
            check_batch(&out)?;
        }
        Ok(())
    }
}

/// Create the FIFO event queue (`name` must end in `.fifo`) and return its URL; an
/// existing queue with the same attributes is returned as is. For tests and local use:
/// production queues (with their DLQ) come from the template, with the same FIFO settings
/// (deduplication and throughput per message group, i.e. per conversation).
pub async fn create_event_queue(client: &Client, name: &str) -> Result<String, QueueError> {
    let out = client
        .create_queue()
        .queue_name(name)
        .attributes(QueueAttributeName::FifoQueue, "true")
        .attributes(QueueAttributeName::ContentBasedDeduplication, "false")
        .attributes(QueueAttributeName::DeduplicationScope, "messageGroup")
        .attributes(QueueAttributeName::FifoThroughputLimit, "perMessageGroupId")
        .send()
        .await
        .map_err(|e| queue_err("create queue", &e))?;
    out.queue_url.ok_or_else(|| QueueError(format!("sqs create queue {name}: no URL returned")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_sqs::types::BatchResultErrorEntry;
    use baton_core::event::EventKind;
    use baton_core::model::{Channel, Millis};

    fn ev(id: &str, text_len: usize) -> (Event, String) {
        let k = ConversationKey::new("demo", Channel::Widget, "u").unwrap();
        let e = Event::new(id, k, Millis(1), EventKind::HandoffRequested { reason: "x".into() });
        (e, "b".repeat(text_len))
    }

    #[test]
    fn ids_fit_sqs_limits() {
        let k = ConversationKey::new("demo", Channel::Widget, &"é".repeat(100)).unwrap();
        let g = group_id(&k);
        assert_eq!(g.len(), 64);
        assert!(g.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(dedup_id("tg:1").len(), 64);
        assert_ne!(dedup_id("tg:1"), dedup_id("tg:2"));
    }

    #[test]
    fn batches_respect_count_and_size() {
        let many: Vec<_> = (0..23).map(|i| ev(&i.to_string(), 10)).collect();
        let sizes: Vec<usize> = batches(&many).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [10, 10, 3]);
        let big: Vec<_> = (0..3).map(|i| ev(&i.to_string(), 100 * 1024)).collect();
        let sizes: Vec<usize> = batches(&big).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [2, 1]);
        assert!(batches(&[]).is_empty());
    }

    #[test]
    fn a_failed_entry_fails_the_batch() {
        let ok =
            SendMessageBatchOutput::builder().set_successful(Some(vec![])).set_failed(Some(vec![])).build().unwrap();
        assert_eq!(check_batch(&ok), Ok(()));
        let failed =
            BatchResultErrorEntry::builder().id("3").sender_fault(false).code("InternalError").build().unwrap();
        let bad = SendMessageBatchOutput::builder().set_successful(Some(vec![])).failed(failed).build().unwrap();
        let err = check_batch(&bad).unwrap_err();
        assert!(err.0.contains("entry 3: InternalError"), "{err}");
    }

    #[test]
    fn parse_event_checks_schema_and_key() {
        let (e, _) = ev("x", 0);
        let body = serde_json::to_string(&e).unwrap();
        assert_eq!(parse_event(&body).unwrap(), e);
        let newer = body.replace("\"schema\":1", "\"schema\":99");
        assert!(parse_event(&newer).unwrap_err().0.contains("newer"));
        let bad_agent = body.replace("\"agent\":\"demo\"", "\"agent\":\"Not Valid\"");
        assert!(parse_event(&bad_agent).is_err());
        let err = parse_event("{\"secret\": \"hunter2\"").unwrap_err();
        assert!(!err.0.contains("hunter2"), "{err}");
    }
}
