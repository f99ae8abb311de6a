//! Ports: the small traits the runtime drives. Adapters live in other crates
//! (embedded SQLite, AWS, connectors, brains); the core only names them.

use crate::agent::Agent;
use crate::effect::{HandoffRequest, PendingEffect};
use crate::event::{BrainReply, Event};
use crate::model::{CloseReason, ConversationKey, Millis, OutMessage, ServiceStatus, Turn};
use crate::session::Session;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("stored record {key} cannot be read: {message}")]
    Corrupt { key: String, message: String },
}

/// A session with the version it was read at (0 = never stored).
#[derive(Debug, Clone, PartialEq)]
pub struct VersionedSession {
    pub session: Session,
    pub version: u64,
}

/// One line of a conversation's trace: what happened to an event or an effect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceEntry {
    pub at: Millis,
    /// `event`, `ignored` or `effect`.
    pub what: String,
    pub id: String,
    pub detail: String,
}

/// Everything one applied event changes, written in one atomic, conditional write.
#[derive(Debug, Clone)]
pub struct Commit {
    pub expected_version: u64,
    pub session: Session,
    pub event_id: String,
    pub effects: Vec<PendingEffect>,
    pub trace: TraceEntry,
    /// When the conversation's data may be deleted if nothing else happens (its agent's
    /// retention after this event).
    pub keep_until: Millis,
}

/// Events of one conversation stepped one after another on its session in memory, written
/// as one atomic, conditional write: one session write instead of one per event (a
/// conversation's backlog, [`Store::commits_batches`]).
#[derive(Debug, Clone)]
pub struct BatchCommit {
    pub expected_version: u64,
    /// The session after the last event.
    pub session: Session,
    /// In the order they were stepped.
    pub events: Vec<EventWrites>,
    pub keep_until: Millis,
}

/// What one event of a [`BatchCommit`] adds: its seen id, its effects and its trace line.
#[derive(Debug, Clone)]
pub struct EventWrites {
    pub event_id: String,
    pub effects: Vec<PendingEffect>,
    pub trace: TraceEntry,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    Committed {
        version: u64,
    },
    /// Someone else wrote the session since it was read: reload and step again.
    VersionConflict,
    /// The event was applied before: drop it.
    AlreadySeen,
}

/// A pending effect in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxItem {
    pub effect: PendingEffect,
    pub attempts: u32,
    pub next_attempt_at: Millis,
}

/// Which conversation a desk conversation belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeskLink {
    pub agent: String,
    pub desk_conversation_id: String,
    pub handoff_id: String,
    pub conversation: ConversationKey,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeskStatusRecord {
    pub status: ServiceStatus,
    pub detail: String,
    pub checked_at: Millis,
}

#[async_trait]
pub trait Store: Send + Sync {
    async fn get_agent(&self, id: &str) -> Result<Option<Agent>, StoreError>;
    async fn put_agent(&self, agent: &Agent) -> Result<(), StoreError>;
    async fn list_agents(&self) -> Result<Vec<Agent>, StoreError>;

    /// Store the SHA-256 hash of a new access token; the token itself is never stored.
    async fn add_token(&self, agent: &str, token_hash: &str, created_at: Millis) -> Result<(), StoreError>;
    /// Revoke every token of `agent` except `keep`.
    async fn revoke_tokens(&self, agent: &str, keep: Option<&str>) -> Result<u64, StoreError>;
    async fn token_hashes(&self, agent: &str) -> Result<Vec<String>, StoreError>;

    async fn load_session(&self, key: &ConversationKey) -> Result<Option<VersionedSession>, StoreError>;
    /// Whether `event_id`, an event of `key`, was applied.
    async fn is_seen(&self, key: &ConversationKey, event_id: &str) -> Result<bool, StoreError>;
    /// Session + seen id + effects in one conditional write; the trace line follows once it
    /// succeeded (a crash in between can lose the line, never state). A store that also
    /// holds the event queue (embedded) takes the event off it in the same write.
    async fn commit(&self, commit: Commit) -> Result<CommitOutcome, StoreError>;
    /// [`Store::commit`], after completing `done`: effects of the conversation that ran
    /// since its session was read (as [`Store::complete_effect`] would, so an effect already
    /// gone writes nothing). `Ok`, whatever the outcome, means the completions are written. A
    /// store may write both at once: one write per event instead of two.
    async fn commit_after(&self, done: Vec<Completion>, commit: Commit) -> Result<CommitOutcome, StoreError> {
        self.complete_effects(&commit.session.key, done).await?;
        self.commit(commit).await
    }
    /// Whether [`Store::commit_batch_after`] is available: only then are a conversation's
    /// queued events stepped together. False by default.
    fn commits_batches(&self) -> bool {
        false
    }
    /// [`Store::commit_after`] for several events at once: the session's version goes up by
    /// one, and every event is marked seen (and, where the store holds the queue, leaves
    /// it). Refused as a whole, writing nothing but the completions: `AlreadySeen` when any
    /// of the events was applied before, `VersionConflict` as for one event. Only called
    /// when [`Store::commits_batches`] says so.
    async fn commit_batch_after(
        &self,
        _done: Vec<Completion>,
        _batch: BatchCommit,
    ) -> Result<CommitOutcome, StoreError> {
        Err(StoreError::Unavailable("this store commits events one at a time".into()))
    }
    /// Whether the timer the commit of `version` armed is carried by a timer message still
    /// on its way (see [`Timers::armed_with_the_session`]), so none need be scheduled for it.
    /// Asked once, right after the commit; false by default.
    fn timer_carried(&self, _key: &ConversationKey, _version: u64) -> bool {
        false
    }

    /// Pending effects of one conversation, oldest first.
    async fn pending_effects(&self, key: &ConversationKey) -> Result<Vec<OutboxItem>, StoreError>;
    /// Remove a finished effect and trace its result (kept until `keep_until`, the agent's
    /// retention).
    async fn complete_effect(
        &self,
        key: &ConversationKey,
        effect_id: &str,
        trace: TraceEntry,
        keep_until: Millis,
    ) -> Result<(), StoreError>;
    /// [`Store::complete_effect`] for each of `done`, in order.
    async fn complete_effects(&self, key: &ConversationKey, done: Vec<Completion>) -> Result<(), StoreError> {
        for c in done {
            self.complete_effect(key, &c.effect_id, c.trace, c.keep_until).await?;
        }
        Ok(())
    }
    async fn defer_effect(
        &self,
        key: &ConversationKey,
        effect_id: &str,
        attempts: u32,
        next_attempt_at: Millis,
        trace: TraceEntry,
        keep_until: Millis,
    ) -> Result<(), StoreError>;
    /// Conversations whose outbox head is due at `now` (retries after a failure or a crash).
    /// A store may leave effects out of this until they are deferred or
    /// [`Store::watch_pending`] is called: the worker that commits them runs them at once,
    /// and a crash before that brings its event back.
    async fn conversations_with_due_effects(
        &self,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<ConversationKey>, StoreError>;
    /// Make every pending effect of the conversation visible to
    /// [`Store::conversations_with_due_effects`]: called by a worker that leaves its effects
    /// to another process running the conversation's outbox, in case that one dies.
    async fn watch_pending(&self, _key: &ConversationKey) -> Result<(), StoreError> {
        Ok(())
    }

    async fn put_desk_link(&self, link: &DeskLink, keep_until: Millis) -> Result<(), StoreError>;
    async fn desk_link(&self, agent: &str, desk_conversation_id: &str) -> Result<Option<DeskLink>, StoreError>;
    async fn desk_link_for_handoff(&self, handoff_id: &str) -> Result<Option<DeskLink>, StoreError>;

    async fn set_desk_status(&self, agent: &str, status: &DeskStatusRecord) -> Result<(), StoreError>;
    async fn desk_status(&self, agent: &str) -> Result<Option<DeskStatusRecord>, StoreError>;

    /// The conversation's trace, including every line of this store's own writes so far.
    async fn trace(&self, key: &ConversationKey) -> Result<Vec<TraceEntry>, StoreError>;

    /// Everything kept about one conversation (one end user on one channel of an agent).
    async fn export_conversation(&self, key: &ConversationKey) -> Result<ConversationData, StoreError>;
    /// Delete everything kept about one conversation: session, transcript, trace, pending
    /// effects and events, timer, desk links (and, in the embedded store, the local console's
    /// copy). Seen event ids stay (they hold no personal data and keep a replayed webhook
    /// from starting the conversation again). Returns how many records went.
    async fn erase_conversation(&self, key: &ConversationKey) -> Result<u64, StoreError>;
}

/// A conversation's data, for an export to its end user.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConversationData {
    pub conversation: String,
    pub session: Option<crate::Session>,
    /// The messages sent to the user (widget and Agent API conversations).
    pub messages: Vec<LoggedMessage>,
    pub trace: Vec<TraceEntry>,
    pub desk_links: Vec<DeskLink>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("queue unavailable: {0}")]
pub struct QueueError(pub String);

/// Where ingress puts events. `enqueue` returns only once the events are durable;
/// an event id seen recently by the queue is accepted again without a second copy.
#[async_trait]
pub trait EventQueue: Send + Sync {
    async fn enqueue(&self, events: Vec<Event>) -> Result<(), QueueError>;
}

/// The conversation's single timer.
#[async_trait]
pub trait Timers: Send + Sync {
    async fn schedule(&self, key: &ConversationKey, generation: u64, due: Millis) -> Result<(), StoreError>;
    async fn cancel(&self, key: &ConversationKey) -> Result<(), StoreError>;
    /// Whether `cancel` does anything. Where it cannot (a delayed SQS message cannot be taken
    /// back; the session's timer generation makes the late one stale), the worker does not
    /// record `CancelTimer` effects at all: each would cost an outbox write and its delete.
    fn cancel_takes_effect(&self) -> bool {
        true
    }
    /// Whether a timer armed in the session is durable with the session's commit alone (a
    /// sweeper fires the timers of overdue sessions), so that `schedule` only adds precision.
    /// Then the worker schedules right after the commit instead of recording `ScheduleTimer`
    /// effects in the outbox (each would cost an outbox write and its delete); a schedule
    /// lost to a crash fires late, through the sweeper, never not at all.
    fn armed_with_the_session(&self) -> bool {
        false
    }
}

pub trait Clock: Send + Sync {
    fn now(&self) -> Millis;
}

#[derive(Debug, Clone, PartialEq)]
pub struct BrainRequest {
    /// Whose question (brains keep per-conversation budgets).
    pub conversation: ConversationKey,
    pub question: String,
    pub history: Vec<Turn>,
    pub context: Option<String>,
    pub language: String,
    /// What is known about the user (session parameters).
    pub params: std::collections::BTreeMap<String, String>,
}

/// A reply and the session parameters the brain learned on the way (its tools' results).
#[derive(Debug, Clone, PartialEq)]
pub struct BrainAnswer {
    pub reply: BrainReply,
    pub params: std::collections::BTreeMap<String, String>,
}

#[async_trait]
pub trait Brain: Send + Sync {
    async fn answer(&self, agent: &Agent, request: &BrainRequest) -> Result<BrainReply, DeliveryError>;

    /// The reply with what the brain learned; brains without tools learn nothing.
    async fn answer_with_params(&self, agent: &Agent, request: &BrainRequest) -> Result<BrainAnswer, DeliveryError> {
        Ok(BrainAnswer { reply: self.answer(agent, request).await?, params: Default::default() })
    }

    /// Whether this agent's brain answers without I/O, in microseconds: the worker then asks
    /// it within the step instead of through an effect.
    fn answers_locally(&self, _agent: &Agent) -> bool {
        false
    }
}

/// Why an outbound call failed, and whether trying again can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    #[error("temporary failure: {message}")]
    Retryable { message: String, retry_after_ms: Option<u64> },
    #[error("credentials rejected: {message}")]
    Unauthorized { message: String },
    #[error("permanent failure: {message}")]
    Permanent { message: String },
}

impl DeliveryError {
    pub fn retryable(message: impl Into<String>) -> Self {
        DeliveryError::Retryable { message: message.into(), retry_after_ms: None }
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        DeliveryError::Permanent { message: message.into() }
    }
}

/// How one message reaches the user, beyond its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Delivery<'a> {
    /// Stable across retries (`webhook-id`, `X-Line-Retry-Key`, ...).
    pub idempotency_key: &'a str,
    /// The channel's token for answering the user's last message, while fresh.
    pub reply_token: Option<&'a str>,
    /// The channel's free-reply window has closed: only an approved template may carry it.
    pub outside_window: bool,
}

/// Sends a message to the end user on their channel.
#[async_trait]
pub trait ChannelSender: Send + Sync {
    async fn send(
        &self,
        agent: &Agent,
        key: &ConversationKey,
        message: &OutMessage,
        delivery: &Delivery<'_>,
    ) -> Result<(), DeliveryError>;

    /// Whether the caller's humans are online (Agent API conversations); other channels
    /// cannot be asked.
    async fn team_online(
        &self,
        agent: &Agent,
        key: &ConversationKey,
        _idempotency_key: &str,
    ) -> Result<bool, DeliveryError> {
        Err(DeliveryError::permanent(format!("conversation {key} of agent {} cannot be asked", agent.id)))
    }
}

/// The lease on running a conversation's effects, where two processes may try at once (SQS
/// hands a batch to a second worker while the first still runs it): one holder at a time.
/// Taking and giving it back both answer with the pending effects as they were then, so a
/// drain needs no read of its own under the lease.
#[async_trait]
pub trait DrainLeases: Send + Sync {
    /// Take the lease on `key` until `until`, unless another holder's runs past `now`: the
    /// lease and the pending effects, in order, when taken.
    async fn take(
        &self,
        key: &ConversationKey,
        now: Millis,
        until: Millis,
    ) -> Result<Option<(DrainLease, Vec<OutboxItem>)>, StoreError>;
    /// Give `lease` back if it is still held, completing `done` first (the last effect the
    /// holder ran, as `Store::complete_effect` would: one write for both where the store can,
    /// or none yet where the store records both with the event's seen mark); the pending
    /// effects as of then (none when another holder has the lease now: its own release reads
    /// them).
    async fn release(
        &self,
        key: &ConversationKey,
        lease: &DrainLease,
        done: Option<Completion>,
    ) -> Result<Vec<OutboxItem>, StoreError>;
    /// Whether this process's own commit just claimed the lease on `key` with effects in it,
    /// for the next take to start from: the drain then knows there is work without reading
    /// the outbox first.
    fn claimed(&self, _key: &ConversationKey) -> bool {
        false
    }
}

/// An effect that ran, with the trace line its completion records; given to
/// [`DrainLeases::release`] for the drain's last effect.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub effect_id: String,
    pub trace: TraceEntry,
    pub keep_until: Millis,
}

/// A drain lease as taken: its holder's name, new for every take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainLease {
    pub holder: String,
}

/// Small records the connectors share across processes and invocations (OAuth access
/// tokens, ids of messages the hub posted itself, polling offsets), each with an expiry.
#[async_trait]
pub trait KeyValue: Send + Sync {
    /// The value of `name` unless it expired before `now`.
    async fn get(&self, name: &str, now: Millis) -> Result<Option<String>, StoreError>;
    async fn put(&self, name: &str, value: &str, expires_at: Millis) -> Result<(), StoreError>;
    /// Write `name` only if it is absent or expired at `now`; true when this call wrote it.
    /// A lease: the one process that gets `true` does the work (e.g. an OAuth refresh).
    async fn put_if_absent(&self, name: &str, value: &str, now: Millis, expires_at: Millis)
        -> Result<bool, StoreError>;
    async fn delete(&self, name: &str) -> Result<(), StoreError>;
}

/// A human help-desk.
#[async_trait]
pub trait Desk: Send + Sync {
    /// Open a desk conversation and return the desk's id for it.
    async fn open(
        &self,
        agent: &Agent,
        key: &ConversationKey,
        request: &HandoffRequest,
        idempotency_key: &str,
    ) -> Result<String, DeliveryError>;
    async fn post(
        &self,
        agent: &Agent,
        desk_conversation_id: &str,
        text: &str,
        idempotency_key: &str,
    ) -> Result<(), DeliveryError>;
    async fn close(
        &self,
        agent: &Agent,
        desk_conversation_id: &str,
        reason: CloseReason,
        idempotency_key: &str,
    ) -> Result<(), DeliveryError>;
    /// Check the desk's credentials without creating anything.
    async fn probe(&self, agent: &Agent) -> (ServiceStatus, String);
    /// The desk conversation id `open` will return, when the hub chooses it rather than the
    /// desk. The link is then stored before the desk hears of the conversation, so a reply
    /// that races the establish call's answer finds its conversation.
    fn id_chosen_by_hub(&self, _agent: &Agent, _request: &HandoffRequest) -> Option<String> {
        None
    }
}

/// Where requests go that no human can take (outside service hours, desk down, no desk).
#[async_trait]
pub trait Fallback: Send + Sync {
    /// Hand over the request; the answer says what happened, for the user ("ticket T-17").
    async fn escalate(
        &self,
        agent: &Agent,
        key: &ConversationKey,
        request: &HandoffRequest,
        idempotency_key: &str,
    ) -> Result<String, DeliveryError>;
}

/// Resolves secret references in an agent's configuration (e.g. `ssm:/baton/...`) right
/// before they are used, so stored configurations hold references, not values.
#[async_trait]
pub trait Secrets: Send + Sync {
    async fn resolve(&self, agent: &Agent) -> Result<Agent, DeliveryError>;
    /// [`Secrets::resolve`] of an agent the caller owns, which it gets back on failure: a
    /// resolver with nothing to replace hands it on without a copy.
    async fn resolve_owned(&self, agent: Agent) -> Result<Agent, (Agent, DeliveryError)> {
        match self.resolve(&agent).await {
            Ok(resolved) => Ok(resolved),
            Err(e) => Err((agent, e)),
        }
    }
}

/// Messages for users of polled channels (the widget), readable by cursor.
#[async_trait]
pub trait MessageLog: Send + Sync {
    /// Append unless `idempotency_key` was appended before; returns the new cursor.
    async fn append(
        &self,
        key: &ConversationKey,
        idempotency_key: &str,
        message: &OutMessage,
        at: Millis,
        keep_until: Millis,
    ) -> Result<Option<i64>, StoreError>;
    async fn after(&self, key: &ConversationKey, cursor: i64, limit: usize) -> Result<Vec<LoggedMessage>, StoreError>;
}

/// Where a message goes once it is in the [`MessageLog`]: to the widgets reading the
/// conversation live (streams in `baton serve`, WebSocket connections on AWS). Best effort:
/// the log is the record, and a widget that missed a push reads it from there.
#[async_trait]
pub trait LivePush: Send + Sync {
    async fn push(&self, key: &ConversationKey, message: &LoggedMessage);
}

/// A message of the log with its cursor position.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoggedMessage {
    /// The idempotency key it was appended with (the effect's): stable across re-runs.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub id: String,
    pub seq: i64,
    pub at: Millis,
    #[serde(flatten)]
    pub message: OutMessage,
}
