//! Timers as delayed messages on a standard SQS queue. SQS delays a message by at most
//! 900 s, so the timeout-check function calls [`SqsTimers::fire_or_rearm`] for each
//! message it receives: a timer that is still far away is sent again with the remaining
//! delay, a due one becomes a `TimerFired` event on the FIFO queue. Precision is about one
//! second; the EventBridge sweeper ([`crate::DynamoStore::sessions_due`]) catches timers
//! whose message was lost.

use crate::describe_sdk_error;
use crate::queue::MessageError;
use async_trait::async_trait;
use aws_sdk_sqs::Client;
use baton_core::event::{Event, EventKind};
use baton_core::model::{ConversationKey, Millis};
use baton_core::ports::{Clock, EventQueue, QueueError, StoreError, Timers};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Payload schema version of timer messages.
pub const TIMER_SCHEMA: u32 = 1;

/// The longest delay SQS accepts.
const MAX_DELAY_SECONDS: i64 = 900;

/// A timer closer than this fires now instead of being re-armed (SQS delays are whole
/// seconds, so waiting again would gain nothing).
const FIRE_WITHIN_MS: i64 = 1000;

fn timer_schema() -> u32 {
    TIMER_SCHEMA
}

/// The body of a timer message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerMessage {
    #[serde(default = "timer_schema")]
    pub schema: u32,
    pub conversation: ConversationKey,
    pub generation: u64,
    pub due: Millis,
    /// A wake-up for effects waiting for a retry, not the session's timer: it fires as
    /// `EventKind::Wake`. (A build that does not know the field reads it as a timer of
    /// generation 0, which the session ignores as stale.)
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wake: bool,
}

impl TimerMessage {
    /// Parse a received body; refuses newer schemas and invalid conversation keys.
    pub fn parse(body: &str) -> Result<TimerMessage, MessageError> {
        let msg: TimerMessage = serde_json::from_str(body).map_err(|e| MessageError::json(&e))?;
        if msg.schema > TIMER_SCHEMA {
            return Err(MessageError(format!(
                "timer schema {} is newer than this build reads ({TIMER_SCHEMA})",
                msg.schema
            )));
        }
        let c = &msg.conversation;
        ConversationKey::new(&c.agent, c.channel, &c.user)
            .map_err(|e| MessageError(format!("bad conversation: {e}")))?;
        Ok(msg)
    }
}

/// What [`SqsTimers::fire_or_rearm`] did with a timer message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimerOutcome {
    /// The session no longer has this timer armed (it was disarmed or replaced: each message
    /// a human sends arms a new one): dropped here instead of travelling to the worker as a
    /// `TimerFired` it would ignore.
    Stale,
    /// The timer was due: `TimerFired` was queued with this event id.
    Fired { event_id: String },
    /// The timer is further away than SQS can delay: sent again with this delay.
    Rearmed { delay_seconds: i32 },
    /// The session's timer moved later while this message was on its way, and the session
    /// counted on it to carry the timer (no message was sent for the new one): sent again
    /// for the timer the session now has, due in this many seconds.
    Carried { generation: u64, delay_seconds: i32 },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimerError {
    /// The message can never be processed: log it and let it go (or to the DLQ).
    #[error(transparent)]
    Malformed(#[from] MessageError),
    /// Sending failed: leave the message on the queue so SQS delivers it again.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// `DelaySeconds` for a timer due at `due`: the remaining time rounded up (never early),
/// between 0 and 900.
pub fn delay_seconds(due: Millis, now: Millis) -> i32 {
    let ms = due.0.saturating_sub(now.0);
    if ms <= 0 {
        return 0;
    }
    let secs = ms / 1000 + i64::from(ms % 1000 != 0);
    // Bounded by MAX_DELAY_SECONDS, so the cast cannot truncate.
    secs.min(MAX_DELAY_SECONDS) as i32
}

/// The timer a session has armed, as timeout-check reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredTimer {
    pub generation: u64,
    /// When it is due; `None` on items of earlier builds, which did not record it.
    pub due: Option<Millis>,
    /// The `due` of the newest timer message sent for the session: while that message is on
    /// its way, a timer armed no earlier sends none, and this message carries it.
    pub message_due: Option<Millis>,
}

/// Which timer a session has armed, for [`SqsTimers::fire_or_rearm`] to drop stale messages
/// and carry moved ones.
#[async_trait]
pub trait ArmedTimers: Send + Sync {
    /// The timer armed on `key`'s session; `None` when none is.
    async fn armed_timer(&self, key: &ConversationKey) -> Result<Option<StoredTimer>, StoreError>;
}

/// [`Timers`] on a standard SQS queue. Needs a clock to turn `due` into a delay.
#[derive(Clone)]
pub struct SqsTimers {
    client: Client,
    queue_url: String,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for SqsTimers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsTimers").field("queue_url", &self.queue_url).finish()
    }
}

impl SqsTimers {
    pub fn new(client: Client, queue_url: impl Into<String>, clock: Arc<dyn Clock>) -> SqsTimers {
        SqsTimers { client, queue_url: queue_url.into(), clock }
    }

    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    async fn send(&self, msg: &TimerMessage, now: Millis) -> Result<i32, QueueError> {
        let body = serde_json::to_string(msg).map_err(|e| QueueError(format!("cannot encode a timer: {e}")))?;
        let delay = delay_seconds(msg.due, now);
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .delay_seconds(delay)
            .send()
            .await
            .map_err(|e| QueueError(format!("sqs send timer: {}", describe_sdk_error(&e))))?;
        Ok(delay)
    }

    /// Wake the conversation at `due` (an `EventKind::Wake` event with the id
    /// `wake:{conversation}:{due}`), so effects deferred for a retry run again without a
    /// worker sleeping. Separate from the session's single timer, which it never replaces.
    pub async fn schedule_wake(&self, key: &ConversationKey, due: Millis) -> Result<(), StoreError> {
        let msg = TimerMessage { schema: TIMER_SCHEMA, conversation: key.clone(), generation: 0, due, wake: true };
        self.send(&msg, self.clock.now()).await.map(|_| ()).map_err(|e| StoreError::Unavailable(e.0))
    }

    /// Handle one received timer message at `now`: drop it if `armed` says the session no
    /// longer has its timer, re-arm it if it is more than a second away, else queue
    /// `TimerFired { generation }` with the id `timer:{conversation}:{generation}` (the
    /// embedded timers use the same id, so a timer fired twice is applied once), or `Wake`
    /// for a wake-up. A message the session counted on to carry a timer armed later (its
    /// `message_due` is this message's `due`) goes on as that timer. When `armed` cannot
    /// answer, the timer goes on (the worker ignores it if stale): a timer is never dropped
    /// on a failed read (a timer it carried fires through the sweeper).
    pub async fn fire_or_rearm(
        &self,
        body: &str,
        now: Millis,
        events: &dyn EventQueue,
        armed: Option<&dyn ArmedTimers>,
    ) -> Result<TimerOutcome, TimerError> {
        let mut msg = TimerMessage::parse(body)?;
        let mut carried = false;
        if let Some(armed) = armed.filter(|_| !msg.wake) {
            match armed.armed_timer(&msg.conversation).await {
                Ok(Some(timer)) if timer.generation == msg.generation => {}
                Ok(Some(StoredTimer { generation, due: Some(due), message_due: Some(carrier) }))
                    if carrier == msg.due =>
                {
                    (msg.generation, msg.due, carried) = (generation, due, true);
                }
                Ok(_) => return Ok(TimerOutcome::Stale),
                Err(e) => {
                    tracing::warn!(conversation = %msg.conversation, error = %e, "cannot tell if a timer is stale; it goes on")
                }
            }
        }
        if msg.due.0.saturating_sub(now.0) > FIRE_WITHIN_MS {
            let delay_seconds = self.send(&msg, now).await?;
            return Ok(match carried {
                true => TimerOutcome::Carried { generation: msg.generation, delay_seconds },
                false => TimerOutcome::Rearmed { delay_seconds },
            });
        }
        let conv = &msg.conversation;
        let (event_id, kind) = if msg.wake {
            // One id per due time: two wakes for the same moment are one.
            (format!("wake:{conv}:{}", msg.due.0), EventKind::Wake)
        } else {
            (format!("timer:{conv}:{}", msg.generation), EventKind::TimerFired { generation: msg.generation })
        };
        events.enqueue(vec![Event::new(event_id.clone(), conv.clone(), now, kind)]).await?;
        Ok(TimerOutcome::Fired { event_id })
    }
}

#[async_trait]
impl Timers for SqsTimers {
    async fn schedule(&self, key: &ConversationKey, generation: u64, due: Millis) -> Result<(), StoreError> {
        let msg = TimerMessage { schema: TIMER_SCHEMA, conversation: key.clone(), generation, due, wake: false };
        self.send(&msg, self.clock.now()).await.map(|_| ()).map_err(|e| StoreError::Unavailable(e.0))
    }

    /// A no-op: an SQS message cannot be taken back. The session knows its timer's
    /// generation, so a cancelled (or replaced) timer that fires later is ignored as stale.
    async fn cancel(&self, _key: &ConversationKey) -> Result<(), StoreError> {
        Ok(())
    }

    fn cancel_takes_effect(&self) -> bool {
        false
    }

    /// The session's `due_at` index is the durable record: the sweeper queues the timers of
    /// sessions past due every minute; the delayed message makes them fire on time.
    fn armed_with_the_session(&self) -> bool {
        true
    }
}

/// Create the standard timer queue and return its URL (tests and local use).
pub async fn create_timer_queue(client: &Client, name: &str) -> Result<String, QueueError> {
    let out = client
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .map_err(|e| QueueError(format!("sqs create queue: {}", describe_sdk_error(&e))))?;
    out.queue_url.ok_or_else(|| QueueError(format!("sqs create queue {name}: no URL returned")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_core::model::Channel;

    #[test]
    fn delay_is_rounded_up_and_capped() {
        assert_eq!(delay_seconds(Millis(1000), Millis(2000)), 0);
        assert_eq!(delay_seconds(Millis(2000), Millis(2000)), 0);
        assert_eq!(delay_seconds(Millis(2001), Millis(2000)), 1);
        assert_eq!(delay_seconds(Millis(62_000), Millis(2000)), 60);
        assert_eq!(delay_seconds(Millis(62_001), Millis(2000)), 61);
        assert_eq!(delay_seconds(Millis(3_600_000), Millis(0)), 900);
        assert_eq!(delay_seconds(Millis(i64::MAX), Millis(i64::MIN)), 900);
    }

    #[test]
    fn timer_message_round_trips_and_checks() {
        let msg = TimerMessage {
            schema: TIMER_SCHEMA,
            conversation: ConversationKey::new("demo", Channel::Line, "U1").unwrap(),
            generation: 3,
            due: Millis(5),
            wake: false,
        };
        let body = serde_json::to_string(&msg).unwrap();
        assert!(!body.contains("wake"), "{body}");
        assert_eq!(TimerMessage::parse(&body).unwrap(), msg);
        let wake = TimerMessage { wake: true, ..msg.clone() };
        assert_eq!(TimerMessage::parse(&serde_json::to_string(&wake).unwrap()).unwrap(), wake);
        assert!(TimerMessage::parse(&body.replace("\"schema\":1", "\"schema\":2")).is_err());
        assert!(TimerMessage::parse(&body.replace("\"user\":\"U1\"", "\"user\":\"\"")).is_err());
        assert!(TimerMessage::parse("nope").is_err());
    }
}
