//! The worker: apply one queued event to its conversation, then run the conversation's
//! pending effects. Same code for the embedded runtime and the Lambda worker.

use crate::Ports;
use baton_connectors::outbound::Targets;
use baton_core::agent::Policy;
use baton_core::ports::{
    BatchCommit, BrainRequest, Commit, CommitOutcome, Completion, Delivery, DeliveryError, DeskLink, DeskStatusRecord,
    EventWrites, OutboxItem, StoreError, TraceEntry, VersionedSession,
};
use baton_core::{
    step_with, Agent, ConversationKey, Effect, Event, EventKind, Facts, Millis, PendingEffect, Session, Step,
};
use std::collections::HashSet;

/// Optimistic-lock retries before giving the event back to the queue.
const MAX_CONFLICT_RETRIES: usize = 8;
/// Delivery attempts of one effect before it is dead-lettered: about 2 h with the backoff
/// below (2, 4, ... 32 s, then a minute apart).
pub const MAX_ATTEMPTS: u32 = 125;
/// Backoff ceiling between attempts. Short, so that the backlog of a desk or channel that
/// was down reaches it within about a minute of its return (with a 10-minute ceiling a
/// 5-minute desk outage took 4 more minutes to drain); a blocked conversation costs one
/// attempt a minute meanwhile.
const MAX_BACKOFF_MS: u64 = 60 * 1000;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] baton_core::ports::QueueError),
    #[error("session of {0} kept changing under us; the event will be retried")]
    Contended(String),
}

/// What happened to an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Processed {
    Applied { effects: usize },
    Ignored(String),
    Duplicate,
    UnknownAgent,
}

/// Apply one event: load, skip if seen, step, commit session + seen id + effects at once.
/// Effects are not run here; call [`drain_outbox`] afterwards.
pub async fn apply_event(ports: &Ports, event: &Event) -> Result<Processed, WorkerError> {
    apply_event_after(ports, event, After::default()).await.map(|a| a.processed)
}

/// What a caller that alone runs a conversation (the embedded dispatcher) brings from its
/// last commit of it to [`apply_event_after`].
#[derive(Debug, Default)]
pub struct After {
    /// Effects that ran since that commit, to complete with this one (see [`drain_items`]).
    pub done: Vec<Completion>,
    /// The session as that commit wrote it, used instead of reading it back, and without
    /// reading the event's seen id first: only for a store whose commit refuses an event it
    /// has seen (the embedded one). Should anyone else have written the session since, the
    /// commit's version check refuses the step, and the retry reads it.
    pub session: Option<VersionedSession>,
    /// Whether to return what the commit wrote ([`Applied::committed`], [`Applied::session`]):
    /// copies the caller has no use for are not made.
    pub keep: bool,
}

/// What [`apply_event_after`] did.
#[derive(Debug)]
pub struct Applied {
    pub processed: Processed,
    /// The effects its commit added to the outbox, in order (none unless it committed and
    /// [`After::keep`] asked for them).
    pub committed: Vec<PendingEffect>,
    /// The session as committed, for [`After::session`] (likewise).
    pub session: Option<VersionedSession>,
    /// The agent the event was applied with, for [`drain_items`].
    pub agent: Option<Agent>,
}

/// [`apply_event`], completing `after.done` first, written with the event's commit where the
/// store can. `Ok` means they are written; after an error they may or may not be.
pub async fn apply_event_after(ports: &Ports, event: &Event, after: After) -> Result<Applied, WorkerError> {
    let key = &event.conversation;
    let After { mut done, session: mut known, keep } = after;
    let nothing = |processed, agent| Applied { processed, committed: Vec::new(), session: None, agent };
    let Some(agent) = ports.store.get_agent(&key.agent).await? else {
        tracing::warn!(conversation = %key, event = %event.id, "event for an unknown agent dropped");
        ports.store.complete_effects(key, done).await?;
        return Ok(nothing(Processed::UnknownAgent, None));
    };
    for _ in 0..MAX_CONFLICT_RETRIES {
        let loaded = match known.take() {
            Some(session) => Some(session),
            None => {
                // The session first: what it says tells the store where the event's mark may be.
                let loaded = ports.store.load_session(key).await?;
                if ports.store.is_seen(key, &event.id).await? {
                    ports.store.complete_effects(key, done).await?;
                    return Ok(nothing(Processed::Duplicate, Some(agent)));
                }
                loaded
            }
        };
        let (session, version) = session_or_new(key, loaded);
        let now = ports.clock.now();
        let facts = facts_for(ports, &agent).await?;
        let Stepped { session: next, effects, processed, trace, timers } =
            step_event(ports, &agent, &facts, session, event, now).await;
        let keep_until = agent.policy.keep_until(now);
        let (committed, written) = if keep { (effects.clone(), Some(next.clone())) } else { (Vec::new(), None) };
        let commit =
            Commit { expected_version: version, session: next, event_id: event.id.clone(), effects, trace, keep_until };
        // Written whatever the outcome: a retry carries none.
        match ports.store.commit_after(std::mem::take(&mut done), commit).await? {
            CommitOutcome::Committed { version } => {
                schedule_timers(ports, key, version, timers).await;
                let session = written.map(|session| VersionedSession { session, version });
                return Ok(Applied { processed, committed, session, agent: Some(agent) });
            }
            CommitOutcome::AlreadySeen => return Ok(nothing(Processed::Duplicate, Some(agent))),
            CommitOutcome::VersionConflict => continue,
        }
    }
    Err(WorkerError::Contended(key.to_string()))
}

/// Most queued events of one conversation [`apply_events_after`] steps together.
pub const MAX_BATCH: usize = 32;

/// [`apply_event_after`] for several queued events of one conversation, oldest first, on a
/// store that commits batches ([`Store::commits_batches`]): they are stepped one after
/// another on the session in memory and written as one commit, so a backlog costs one
/// session write, not one per event. The batch ends after an event with an effect whose
/// result steps the conversation on (a brain asked, a desk opened): the events after it
/// wait for that result, as they would one at a time. Returns how many of `events` it
/// committed, and what [`apply_event_after`] returns (the session and effects always kept).
///
/// `Ok(None)`: nothing committed, `after.done` written. The store refused the batch
/// (someone else wrote the session, or an event was applied before), the agent is gone, or
/// no event of `key` was given; the caller applies the first event alone, which sorts that
/// out.
///
/// [`Store::commits_batches`]: baton_core::ports::Store::commits_batches
pub async fn apply_events_after(
    ports: &Ports,
    key: &ConversationKey,
    events: &[Event],
    after: After,
) -> Result<Option<(usize, Applied)>, WorkerError> {
    let After { done, session: known, .. } = after;
    let agent = match events.first() {
        Some(first) if first.conversation == *key => ports.store.get_agent(&key.agent).await?,
        _ => None,
    };
    let Some(agent) = agent else {
        ports.store.complete_effects(key, done).await?;
        return Ok(None);
    };
    // Events the batch's store has seen are refused by its commit: no check here.
    let known = match known {
        Some(s) => Some(s),
        None => ports.store.load_session(key).await?,
    };
    let (mut session, version) = session_or_new(key, known);
    let now = ports.clock.now();
    let facts = facts_for(ports, &agent).await?;
    let mut writes = Vec::with_capacity(events.len());
    let (mut committed, mut timers) = (Vec::new(), Vec::new());
    for event in events.iter().take(MAX_BATCH).take_while(|e| e.conversation == *key) {
        let stepped = step_event(ports, &agent, &facts, session, event, now).await;
        session = stepped.session;
        timers.extend(stepped.timers);
        let waits = stepped.effects.iter().any(|e| steps_on(&e.effect));
        committed.extend(stepped.effects.iter().cloned());
        writes.push(EventWrites { event_id: event.id.clone(), effects: stepped.effects, trace: stepped.trace });
        if waits {
            break;
        }
    }
    let n = writes.len();
    let batch = BatchCommit {
        expected_version: version,
        session: session.clone(),
        events: writes,
        keep_until: agent.policy.keep_until(now),
    };
    match ports.store.commit_batch_after(done, batch).await? {
        CommitOutcome::Committed { version } => {
            schedule_timers(ports, key, version, timers).await;
            let effects = committed.len();
            let session = Some(VersionedSession { session, version });
            let applied = Applied { processed: Processed::Applied { effects }, committed, session, agent: Some(agent) };
            Ok(Some((n, applied)))
        }
        CommitOutcome::AlreadySeen | CommitOutcome::VersionConflict => Ok(None),
    }
}

/// The session as stored (and its version), or a new one (version 0).
fn session_or_new(key: &ConversationKey, stored: Option<VersionedSession>) -> (Session, u64) {
    match stored {
        Some(v) => (v.session, v.version),
        None => (Session::new(key.clone()), 0),
    }
}

/// What the state machine is told besides the event: the desk's last known status.
async fn facts_for(ports: &Ports, agent: &Agent) -> Result<Facts, StoreError> {
    Ok(Facts { desk_status: ports.store.desk_status(&agent.id).await?.map(|r| r.status) })
}

/// One event stepped on a session in memory: what its commit writes, and the timers to
/// schedule once it is written.
struct Stepped {
    session: Session,
    effects: Vec<PendingEffect>,
    processed: Processed,
    trace: TraceEntry,
    timers: Vec<(u64, Millis)>,
}

async fn step_event(
    ports: &Ports,
    agent: &Agent,
    facts: &Facts,
    session: Session,
    event: &Event,
    now: Millis,
) -> Stepped {
    let key = &event.conversation;
    let before = session.state.name();
    let mut timers: Vec<(u64, Millis)> = Vec::new();
    match step_with(&session, event, now, agent, facts) {
        Ok(s) => {
            let names: Vec<&str> = s.effects.iter().map(Effect::name).collect();
            let mut detail = format!(
                "{}: {} -> {}; effects: [{}]",
                event.kind.name(),
                before,
                s.session.state.name(),
                names.join(", ")
            );
            // Ids keep each effect's place in its step, whatever is left out.
            let cancels = ports.timers.cancel_takes_effect();
            let with_session = ports.timers.armed_with_the_session();
            let mut pending = Vec::with_capacity(s.effects.len());
            let mut keep = |base: &str, i: usize, effect: Effect| match effect {
                Effect::CancelTimer if !cancels => {}
                Effect::ScheduleTimer { generation, due, .. } if with_session => timers.push((generation, due)),
                effect => pending.push(PendingEffect::for_event(base, i, effect)),
            };
            let session = match answer_in_step(ports, agent, facts, event, now, &s).await {
                Some(answered) => {
                    detail.push_str(&answered.detail);
                    for (i, effect) in s.effects.into_iter().enumerate() {
                        if i != answered.asked {
                            keep(&event.id, i, effect);
                        }
                    }
                    for (i, effect) in answered.step.effects.into_iter().enumerate() {
                        keep(&answered.event_id, i, effect);
                    }
                    answered.step.session
                }
                None => {
                    for (i, effect) in s.effects.into_iter().enumerate() {
                        keep(&event.id, i, effect);
                    }
                    s.session
                }
            };
            let n = pending.len();
            let trace = trace(now, "event", &event.id, detail);
            Stepped { session, effects: pending, processed: Processed::Applied { effects: n }, trace, timers }
        }
        Err(why) => {
            tracing::info!(conversation = %key, event = %event.id, kind = event.kind.name(), state = before, reason = %why, "event ignored");
            let detail = format!("{} in {}: {}", event.kind.name(), before, why);
            let trace = trace(now, "ignored", &event.id, detail);
            Stepped { session, effects: Vec::new(), processed: Processed::Ignored(why.to_string()), trace, timers }
        }
    }
}

/// Schedule the timers a commit of `version` armed in the session (see
/// `Timers::armed_with_the_session`), unless a timer message on its way carries them.
/// (Timers a step armed before its last are stale anyway.)
async fn schedule_timers(ports: &Ports, key: &ConversationKey, version: u64, mut timers: Vec<(u64, Millis)>) {
    if !timers.is_empty() && ports.store.timer_carried(key, version) {
        tracing::debug!(conversation = %key, "the timer rides on a message already on its way");
        timers.clear();
    }
    for (generation, due) in timers {
        if let Err(e) = ports.timers.schedule(key, generation, due).await {
            tracing::warn!(conversation = %key, error = %e, "a timer was not scheduled; the sweeper fires it when due");
        }
    }
}

/// A brain's answer given within the step that asked it.
struct AnsweredInStep {
    /// The index of the `AskBrain` effect it replaces.
    asked: usize,
    /// The id the answer's event has (the one it would have had as the effect's result).
    event_id: String,
    step: Step,
    detail: String,
}

/// A brain that answers without I/O (the FAQ brain: a lookup in the agent's own entries) is
/// asked within the step: its answer is applied as the next step before the commit, so a
/// question and its answer are one write, and no `AskBrain` effect is stored and run. Brains
/// that call out (an LLM, a hosted agent) stay effects: a network call never sits between a
/// step and its commit. `None` when the step asked no such brain, or the answer needs the
/// path of an effect's result (what the brain learned is applied first, or the answer was
/// ignored): the effect is then kept.
async fn answer_in_step(
    ports: &Ports,
    agent: &Agent,
    facts: &Facts,
    event: &Event,
    now: Millis,
    stepped: &Step,
) -> Option<AnsweredInStep> {
    let asked = stepped.effects.iter().position(|e| matches!(e, Effect::AskBrain { .. }))?;
    if !ports.brain.answers_locally(agent) {
        return None;
    }
    let Effect::AskBrain { question, history, context, language, params } = &stepped.effects[asked] else {
        return None;
    };
    let request = BrainRequest {
        conversation: event.conversation.clone(),
        question: question.clone(),
        history: history.clone(),
        context: context.clone(),
        language: language.clone(),
        params: params.clone(),
    };
    let answer = ports.brain.answer_with_params(agent, &request).await.ok()?;
    if !answer.params.is_empty() {
        return None;
    }
    let event_id = format!("fx:{}", PendingEffect::id_for(&event.id, asked));
    let reply =
        Event::new(event_id.clone(), event.conversation.clone(), now, EventKind::BrainReplied { reply: answer.reply });
    let step = step_with(&stepped.session, &reply, now, agent, facts).ok()?;
    let names: Vec<&str> = step.effects.iter().map(Effect::name).collect();
    let detail = format!(
        "; answered in the step: {} -> {}; effects: [{}]",
        stepped.session.state.name(),
        step.session.state.name(),
        names.join(", ")
    );
    Some(AnsweredInStep { asked, event_id, step, detail })
}

fn trace(at: Millis, what: &str, id: &str, detail: String) -> TraceEntry {
    TraceEntry { at, what: what.into(), id: id.into(), detail }
}

/// Result of running a conversation's outbox.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Drained {
    pub done: usize,
    /// Earliest time a deferred effect is due again.
    pub next_due: Option<Millis>,
    /// Whether an effect's result was applied as the conversation's next step (its effects
    /// are then pending too).
    stepped: bool,
}

impl Drained {
    /// Whether every effect it was given completed (or has its completion returned unwritten)
    /// and no step added more: the conversation's outbox then holds nothing else.
    pub fn left_nothing(&self) -> bool {
        self.next_due.is_none() && !self.stepped
    }

    fn and(self, later: Drained) -> Drained {
        let next_due = match (self.next_due, later.next_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Drained { done: self.done + later.done, next_due, stepped: later.stepped }
    }
}

/// Which receiver an effect talks to. Effects to the same receiver run strictly in order:
/// when one must wait for a retry, the later ones to that receiver wait behind it.
fn receiver(effect: &Effect) -> &'static str {
    match effect {
        Effect::AskBrain { .. } => "brain",
        Effect::SendToUser { .. } | Effect::AskTeamOnline { .. } => "user",
        Effect::OpenDesk { .. } | Effect::PostToDesk { .. } | Effect::CloseDesk { .. } => "desk",
        Effect::Escalate { .. } => "fallback",
        Effect::ScheduleTimer { .. } | Effect::CancelTimer => "timer",
    }
}

/// How many times one drain takes the lease again for effects committed while it held it,
/// before it leaves the rest to a wake-up (a conversation busy enough to keep it going).
const MAX_DRAIN_ROUNDS: usize = 8;

/// Run the conversation's pending effects in order. Two processes must never run the same
/// conversation's effects at once (both would send): the embedded dispatcher runs one task per
/// conversation; where that cannot be promised (SQS redelivers a batch after its visibility
/// timeout while the first worker still runs it, or concurrent workers handle copies of one
/// event), `Ports::drain_lease` makes the drain take a lease first.
///
/// A process that finds the lease taken returns at once and queues nothing: the holder reads
/// the outbox again after releasing it and runs what was committed meanwhile (the commit came
/// before the failed take, which came before the release). Should the holder die instead, its
/// lease expires and the sweeper, told by [`Store::watch_pending`], finds the due effects
/// within a minute after.
pub async fn drain_outbox(ports: &Ports, key: &ConversationKey) -> Result<Drained, WorkerError> {
    let claimed = ports.drain_lease.as_ref().is_some_and(|(_, leases)| leases.claimed(key));
    // A claim from this process's commit says there are effects; the take reads them.
    let mut items = if claimed { Vec::new() } else { ports.store.pending_effects(key).await? };
    if items.is_empty() && !claimed {
        return Ok(Drained::default());
    }
    let Some((lease, leases)) = &ports.drain_lease else {
        return run_settled(ports, key, items, false, None).await.map(|s| s.drained);
    };
    let mut done = 0;
    for _ in 0..MAX_DRAIN_ROUNDS {
        let now = ports.clock.now();
        let until = Millis(now.0.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX)));
        // The effects as of the take: the previous holder may have run some of them meanwhile.
        let Some((held, under_lease)) = leases.take(key, now, until).await? else {
            ports.store.watch_pending(key).await?;
            return Ok(Drained { done, ..Drained::default() });
        };
        let mut result = run_settled(ports, key, under_lease, true, None).await;
        // The last effect's completion, when it was left for the release to write.
        let unwritten = result.as_mut().ok().and_then(|s| s.unwritten.take());
        let released = leases.release(key, &held, unwritten).await;
        let Settled { drained: round, seen, .. } = result?;
        items = released?;
        done += round.done;
        // Only effects this round never saw are new; the others wait for `round.next_due`.
        if items.iter().all(|i| seen.contains(&i.effect.id)) {
            return Ok(Drained { done, next_due: round.next_due, stepped: false });
        }
    }
    // Still more after all rounds: a wake-up comes back for them instead of holding this
    // worker, and the sweeper knows of them should the wake-up be lost.
    ports.store.watch_pending(key).await?;
    let earliest = items.iter().map(|i| i.next_attempt_at).min();
    Ok(Drained { done, next_due: earliest.map(|d| d.max(ports.clock.now())), stepped: false })
}

/// Run `items`, a conversation's pending effects (read from the outbox, or known to be all it
/// holds), as [`drain_outbox`] does without a lease, for a caller that alone runs the
/// conversation (the embedded dispatcher). The last effect's completion, when nothing stepped
/// on after it, is returned unwritten: the caller writes it with its next commit of the
/// conversation ([`apply_event_after`]), or alone when there is none. Between the two the
/// effect is still in the outbox: a crash there runs it again, as a crash between an effect
/// and its completion always could (its idempotency key lets the receiver see the repeat).
///
/// `agent`, when given, is the agent as the caller just read it (its secrets still
/// unresolved), for the first effects not to read it again.
pub async fn drain_items(
    ports: &Ports,
    key: &ConversationKey,
    items: Vec<OutboxItem>,
    agent: Option<Agent>,
) -> Result<(Drained, Option<Completion>), WorkerError> {
    let settled = run_settled(ports, key, items, true, agent).await?;
    Ok((settled.drained, settled.unwritten))
}

/// What [`run_settled`] ran: the result, the ids of every effect seen, and the completion of
/// the last effect when it was left unwritten for the lease's release.
struct Settled {
    drained: Drained,
    seen: HashSet<String>,
    unwritten: Option<Completion>,
}

/// Run `items`, then, while their results stepped the conversation on (a brain's answer, a
/// desk opened), the effects those steps committed, in the same drain (and under the same
/// lease). With `leave_last`, the completion of the drain's last effect is left to the caller,
/// which writes it with the lease's release.
async fn run_settled(
    ports: &Ports,
    key: &ConversationKey,
    items: Vec<OutboxItem>,
    leave_last: bool,
    agent: Option<Agent>,
) -> Result<Settled, WorkerError> {
    let mut seen: HashSet<String> = items.iter().map(|i| i.effect.id.clone()).collect();
    let (mut drained, mut unwritten) = run_items(ports, key, items, leave_last, agent).await?;
    for _ in 0..MAX_DRAIN_ROUNDS {
        if !drained.stepped {
            break;
        }
        let items = ports.store.pending_effects(key).await?;
        if items.iter().all(|i| seen.contains(&i.effect.id)) {
            break;
        }
        seen.extend(items.iter().map(|i| i.effect.id.clone()));
        let (more, last) = run_items(ports, key, items, leave_last, None).await?;
        drained = drained.and(more);
        unwritten = last;
    }
    Ok(Settled { drained, seen, unwritten })
}

/// Run `items` in order, completing or deferring each. With `leave_last`, a last effect that
/// ran in a round that stepped nothing on is returned instead of completed: nothing reads the
/// outbox between it and the caller's next write, which completes it.
async fn run_items(
    ports: &Ports,
    key: &ConversationKey,
    items: Vec<OutboxItem>,
    leave_last: bool,
    agent: Option<Agent>,
) -> Result<(Drained, Option<Completion>), WorkerError> {
    if items.is_empty() {
        return Ok((Drained::default(), None));
    }
    let agent = match agent {
        Some(a) => Some(a),
        None => ports.store.get_agent(&key.agent).await?,
    };
    let agent = match agent {
        // Secret references are resolved once per run, right before use.
        Some(a) => match ports.secrets.resolve_owned(a).await {
            Ok(resolved) => Some(resolved),
            Err((a, e @ DeliveryError::Retryable { .. })) => {
                tracing::warn!(agent = %a.id, error = %e, "secrets could not be resolved; effects wait");
                let wait = Drained { next_due: Some(Millis(ports.clock.now().0 + 30_000)), ..Drained::default() };
                return Ok((wait, None));
            }
            Err((a, e)) => {
                // Effects that need no secret still run; the others fail with their own error.
                ports.alerts.raise(format!("agent {}: {e}", a.id));
                Some(a)
            }
        },
        None => None,
    };
    let now = ports.clock.now();
    let keep_until = agent.as_ref().map_or_else(|| Policy::default().keep_until(now), |a| a.policy.keep_until(now));
    let mut blocked: HashSet<&'static str> = HashSet::new();
    // The desk link the last desk effect used (see [`desk_link`]).
    let mut last_link: Option<DeskLink> = None;
    let mut out = Drained::default();
    let last = items.len() - 1;
    for (i, item) in items.into_iter().enumerate() {
        let r = receiver(&item.effect.effect);
        if blocked.contains(r) {
            continue;
        }
        if item.next_attempt_at > now {
            blocked.insert(r);
            out.next_due = Some(out.next_due.map_or(item.next_attempt_at, |d| d.min(item.next_attempt_at)));
            continue;
        }
        let Some(agent) = agent.as_ref() else {
            let t = trace(now, "effect", &item.effect.id, "dropped: the agent no longer exists".into());
            ports.store.complete_effect(key, &item.effect.id, t, keep_until).await?;
            continue;
        };
        match run_effect(ports, agent, key, &item, &mut last_link).await {
            Ok(detail) => {
                let t = trace(now, "effect", &item.effect.id, format!("{}: {detail}", item.effect.effect.name()));
                out.done += 1;
                out.stepped |= steps_on(&item.effect.effect);
                if leave_last && i == last && !out.stepped {
                    let done = Completion { effect_id: item.effect.id, trace: t, keep_until };
                    return Ok((out, Some(done)));
                }
                ports.store.complete_effect(key, &item.effect.id, t, keep_until).await?;
            }
            Err(err) => {
                let attempts = item.attempts + 1;
                let name = item.effect.effect.name();
                let retry_after = match &err {
                    DeliveryError::Retryable { retry_after_ms, .. } if attempts < MAX_ATTEMPTS => {
                        Some(retry_after_ms.unwrap_or_else(|| backoff_ms(attempts, &item.effect.id)))
                    }
                    _ => None,
                };
                if let Some(delay) = retry_after {
                    let due = Millis(now.0 + delay as i64);
                    tracing::warn!(conversation = %key, effect = %item.effect.id, attempts, error = %err, "effect failed; retrying later");
                    let t = trace(now, "effect", &item.effect.id, format!("{name}: attempt {attempts} failed: {err}"));
                    ports.store.defer_effect(key, &item.effect.id, attempts, due, t, keep_until).await?;
                    blocked.insert(r);
                    out.next_due = Some(out.next_due.map_or(due, |d| d.min(due)));
                } else {
                    give_up(ports, agent, key, &item, &err).await?;
                    let t = trace(
                        now,
                        "effect",
                        &item.effect.id,
                        format!("{name}: dead-lettered after {attempts} attempt(s): {err}"),
                    );
                    ports.store.complete_effect(key, &item.effect.id, t, keep_until).await?;
                }
            }
        }
    }
    Ok((out, None))
}

/// Exponential backoff from 1 s, doubled per attempt, capped, with deterministic jitter
/// (derived from the effect id so retries of many conversations spread out).
fn backoff_ms(attempts: u32, effect_id: &str) -> u64 {
    let base = 1000u64.saturating_mul(1u64 << attempts.min(20)).min(MAX_BACKOFF_MS);
    let jitter = effect_id.bytes().fold(0u64, |a, b| a.wrapping_mul(31).wrapping_add(b as u64)) % (base / 4 + 1);
    base - base / 8 + jitter
}

/// Run one effect; the `Ok` string describes the result for the trace.
async fn run_effect(
    ports: &Ports,
    agent: &Agent,
    key: &ConversationKey,
    item: &OutboxItem,
    last_link: &mut Option<DeskLink>,
) -> Result<String, DeliveryError> {
    let pending = &item.effect;
    let idem = pending.idempotency_key();
    let result_event_id = format!("fx:{}", pending.id);
    if let Some(why) = refused_endpoint(ports, agent, endpoint_fields(&pending.effect)) {
        return Err(DeliveryError::permanent(why));
    }
    match &pending.effect {
        Effect::AskBrain { question, history, context, language, params } => {
            let req = BrainRequest {
                conversation: key.clone(),
                question: question.clone(),
                history: history.clone(),
                context: context.clone(),
                language: language.clone(),
                params: params.clone(),
            };
            let answer = ports.brain.answer_with_params(agent, &req).await?;
            let reply = EventKind::BrainReplied { reply: answer.reply };
            if answer.params.is_empty() {
                step_on(ports, result_event(ports, result_event_id, key, reply)).await?;
            } else {
                // What the brain's tools learned is applied first, then the answer.
                let now = ports.clock.now();
                let learned = Event::new(
                    format!("{result_event_id}:params"),
                    key.clone(),
                    now,
                    EventKind::ParamsSet {
                        sanitize: agent.sanitized_outputs(answer.params.keys()),
                        params: answer.params,
                    },
                );
                step_on(ports, vec![learned, Event::new(result_event_id, key.clone(), now, reply)]).await?;
            }
            Ok("answered".into())
        }
        Effect::SendToUser { message, reply_token, outside_window } => {
            let delivery = Delivery {
                idempotency_key: &idem,
                reply_token: reply_token.as_deref(),
                outside_window: *outside_window,
            };
            ports.channels.send(agent, key, message, &delivery).await?;
            Ok("delivered".into())
        }
        Effect::OpenDesk { request } => {
            // The link it writes is read afresh.
            *last_link = None;
            let link = |desk_conversation_id: &str| DeskLink {
                agent: agent.id.clone(),
                desk_conversation_id: desk_conversation_id.to_string(),
                handoff_id: request.handoff_id.clone(),
                conversation: key.clone(),
            };
            let stored = |link: DeskLink| async move {
                let keep_until = agent.policy.keep_until(ports.clock.now());
                ports.store.put_desk_link(&link, keep_until).await.map_err(|e| DeliveryError::retryable(e.to_string()))
            };
            // A desk may answer the moment it hears of the conversation: link first when we can.
            let chosen = ports.desk.id_chosen_by_hub(agent, request);
            if let Some(id) = &chosen {
                stored(link(id)).await?;
            }
            let desk_id = match ports.desk.open(agent, key, request, &idem).await {
                Ok(id) => id,
                Err(DeliveryError::Unauthorized { message }) => {
                    mark_desk_unavailable(ports, agent, &message).await;
                    return Err(DeliveryError::Unauthorized { message });
                }
                Err(e) => return Err(e),
            };
            if chosen.as_deref() != Some(desk_id.as_str()) {
                stored(link(&desk_id)).await?;
            }
            let kind =
                EventKind::DeskOpened { handoff_id: request.handoff_id.clone(), desk_conversation_id: desk_id.clone() };
            step_on(ports, result_event(ports, result_event_id, key, kind)).await?;
            Ok(format!("desk conversation {desk_id}"))
        }
        Effect::PostToDesk { handoff_id, text } => {
            let Some(link) = desk_link(ports, handoff_id, last_link).await? else {
                return Ok("skipped: the desk conversation was never opened".into());
            };
            ports.desk.post(agent, &link.desk_conversation_id, text, &idem).await?;
            Ok("posted".into())
        }
        Effect::CloseDesk { handoff_id, reason } => {
            let Some(link) = desk_link(ports, handoff_id, last_link).await? else {
                return Ok("skipped: the desk conversation was never opened".into());
            };
            ports.desk.close(agent, &link.desk_conversation_id, *reason, &idem).await?;
            Ok(format!("closed ({})", reason.as_str()))
        }
        Effect::Escalate { request } => {
            let detail = ports.fallback.escalate(agent, key, request, &idem).await?;
            let done = EventKind::FallbackDone { detail: detail.clone() };
            step_on(ports, result_event(ports, result_event_id, key, done)).await?;
            Ok(format!("fallback: {detail}"))
        }
        Effect::AskTeamOnline { question, reason } => {
            let online = ports.channels.team_online(agent, key, &idem).await?;
            let kind = EventKind::TeamOnline { online, question: question.clone(), reason: reason.clone() };
            step_on(ports, result_event(ports, result_event_id, key, kind)).await?;
            Ok(format!("team online: {online}"))
        }
        Effect::ScheduleTimer { generation, due, kind } => {
            ports.timers.schedule(key, *generation, *due).await.map_err(|e| DeliveryError::retryable(e.to_string()))?;
            Ok(format!("{kind:?} timer {generation} due at {}", due.0))
        }
        Effect::CancelTimer => {
            ports.timers.cancel(key).await.map_err(|e| DeliveryError::retryable(e.to_string()))?;
            Ok("timer cancelled".into())
        }
    }
}

/// The desk link of `handoff_id`, read unless `known` (the last one this drain read) is it:
/// the messages of a backlog relayed in one drain go to one desk conversation.
async fn desk_link<'a>(
    ports: &Ports,
    handoff_id: &str,
    known: &'a mut Option<DeskLink>,
) -> Result<Option<&'a DeskLink>, DeliveryError> {
    if known.as_ref().is_none_or(|l| l.handoff_id != handoff_id) {
        *known =
            ports.store.desk_link_for_handoff(handoff_id).await.map_err(|e| DeliveryError::retryable(e.to_string()))?;
    }
    Ok(known.as_ref())
}

/// Effects whose result is an event for the conversation (see [`step_on`]).
fn steps_on(effect: &Effect) -> bool {
    matches!(
        effect,
        Effect::AskBrain { .. } | Effect::OpenDesk { .. } | Effect::Escalate { .. } | Effect::AskTeamOnline { .. }
    )
}

/// Apply an effect's result as the conversation's next step, here, in the drain that ran
/// the effect: a brain's answer reaches the user without a trip through the queue (on AWS:
/// a queue message, a receive and a delete, a worker invocation and its drain lease saved).
/// The drain holds the conversation (one task per conversation, or the drain lease), and
/// each event's id makes a second application a duplicate, so an effect run again after a
/// crash steps nothing twice. When the store cannot take the step now, the events are
/// queued instead, as one write, and the queue's worker applies them.
async fn step_on(ports: &Ports, events: Vec<Event>) -> Result<(), DeliveryError> {
    for (i, event) in events.iter().enumerate() {
        // Boxed: a step inside a drain inside a step would otherwise nest both futures in the
        // caller's layout (the Lambda worker's, already near the compiler's query depth).
        if let Err(e) = Box::pin(apply_event(ports, event)).await {
            tracing::warn!(conversation = %event.conversation, event = %event.id, error = %e, "applying an effect's result failed; queueing it");
            let rest = events[i..].to_vec();
            return ports.queue.enqueue(rest).await.map_err(|e| DeliveryError::retryable(e.to_string()));
        }
    }
    Ok(())
}

fn result_event(ports: &Ports, id: String, key: &ConversationKey, kind: EventKind) -> Vec<Event> {
    vec![Event::new(id, key.clone(), ports.clock.now(), kind)]
}

async fn mark_desk_unavailable(ports: &Ports, agent: &Agent, message: &str) {
    let rec = DeskStatusRecord {
        status: baton_core::model::ServiceStatus::Unavailable,
        detail: message.to_string(),
        checked_at: ports.clock.now(),
    };
    if let Err(e) = ports.store.set_desk_status(&agent.id, &rec).await {
        tracing::warn!(agent = %agent.id, error = %e, "could not record desk status");
    }
    ports.alerts.raise(format!("agent {}: the desk rejected our credentials: {message}", agent.id));
}

/// Why the agent's endpoints under `fields` (prefixes of configuration paths) may not be
/// called here: one names a private address and this hub calls public addresses only.
/// Names are checked when resolved; an address written into the configuration is checked
/// here, whichever way the configuration reached the store.
pub fn refused_endpoint(ports: &Ports, agent: &Agent, fields: &[&str]) -> Option<String> {
    if ports.targets != Targets::PublicOnly {
        return None;
    }
    let private = agent.non_public_targets().into_iter().find(|p| fields.iter().any(|f| p.path.starts_with(f)))?;
    Some(format!("refused: {} {}; this hub calls public addresses only", private.path, private.message))
}

/// The configuration fields of the desk's endpoints.
pub const DESK_FIELDS: &[&str] = &["desk.", "salesiq.", "intercom.", "livechat."];

/// The configuration fields (by prefix) whose endpoints an effect may call.
fn endpoint_fields(effect: &Effect) -> &'static [&'static str] {
    match effect {
        Effect::AskBrain { .. } => &["brain.", "actions["],
        Effect::OpenDesk { .. } | Effect::PostToDesk { .. } | Effect::CloseDesk { .. } => DESK_FIELDS,
        Effect::Escalate { .. } => &["fallback.", "channels.whatsapp."],
        Effect::SendToUser { .. } | Effect::AskTeamOnline { .. } => {
            &["channels.", "api.", "salesiq.", "intercom.", "livechat."]
        }
        Effect::ScheduleTimer { .. } | Effect::CancelTimer => &[],
    }
}

/// An effect failed for good. Tell the conversation where the state machine must know
/// (so nobody waits forever), and raise an alert for the rest.
async fn give_up(
    ports: &Ports,
    agent: &Agent,
    key: &ConversationKey,
    item: &OutboxItem,
    err: &DeliveryError,
) -> Result<(), WorkerError> {
    let id = format!("fx:{}", item.effect.id);
    let follow_up = match &item.effect.effect {
        Effect::AskBrain { .. } => Some(EventKind::BrainFailed { error: err.to_string() }),
        Effect::OpenDesk { request } => {
            Some(EventKind::DeskOpenFailed { handoff_id: request.handoff_id.clone(), error: err.to_string() })
        }
        // A caller that cannot say has nobody online for the user.
        Effect::AskTeamOnline { question, reason } => {
            Some(EventKind::TeamOnline { online: false, question: question.clone(), reason: reason.clone() })
        }
        _ => None,
    };
    if let Some(kind) = follow_up {
        ports.queue.enqueue(vec![Event::new(id, key.clone(), ports.clock.now(), kind)]).await?;
    }
    match (&item.effect.effect, err) {
        // The user is handed over; someone must fix the key before the next user.
        (Effect::AskBrain { .. }, DeliveryError::Unauthorized { .. }) => ports
            .alerts
            .raise(format!("agent {}: the brain's endpoint rejected the agent's credentials: {err}", agent.id)),
        (Effect::AskBrain { .. }, _) => {}
        _ => ports.alerts.raise(format!(
            "agent {}: {} for conversation {key} was dead-lettered: {err}",
            agent.id,
            item.effect.effect.name()
        )),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let a = backoff_ms(1, "x");
        let b = backoff_ms(4, "x");
        assert!((1500..=2600).contains(&a), "{a}");
        assert!(b > a);
        assert!(backoff_ms(30, "x") <= MAX_BACKOFF_MS + MAX_BACKOFF_MS / 4);
    }

    /// The documented horizon: an effect is retried for about two hours before it is
    /// dead-lettered, whatever its id's jitter.
    #[test]
    fn effects_are_retried_for_about_two_hours() {
        for id in ["a", "effect-17", "fx:widget:u1:9"] {
            let total: u64 = (1..MAX_ATTEMPTS).map(|n| backoff_ms(n, id)).sum();
            let hours = total as f64 / 3_600_000.0;
            assert!((1.75..=2.25).contains(&hours), "{id}: {hours:.2} h");
        }
    }
}
