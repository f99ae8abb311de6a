//! `Store` on one DynamoDB table. `commit` is the transactional outbox: the session and its
//! effects are written by ONE conditional `UpdateItem` of the session item, which holds the
//! effects until they are done (see [`crate::outbox`]; effects too large for it go to items
//! of their own in one `TransactWriteItems` with the session), guarded by the session's
//! version and by the id of the event it last applied; the seen id and the trace line follow
//! (in one item, after the effects, where the worker asks for it: see
//! [`DynamoStore::with_marks_behind_effects`]).
//! It has the same outcomes as the SQLite store.

use crate::describe_sdk_error;
use crate::outbox::{
    effect_attrs, entry_size, fits_inline, inline_attrs, inline_load, inline_name, is_inline, item_sk, may_have_items,
    Claim, Loaded, LoadedSessions, Settlement, DRAIN_BY, DRAIN_UNTIL, INLINE_ONLY, RELEASED_BY, SPILLED,
};
use crate::table::{
    agent_pk, conv_pk, key_part, parse_conv_pk, shard_of, DUE_AT, DUE_GEN, DUE_INDEX, DUE_SHARD, EXPIRES_AT, OBX_DUE,
    OBX_SHARD, OUTBOX_INDEX, PK, SHARDS, SK, TIMER_DUE, TIMER_MSG,
};
use async_trait::async_trait;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{AttributeValue, Delete, KeysAndAttributes, Put, ReturnValue, TransactWriteItem, Update};
use aws_sdk_dynamodb::Client;
use baton_core::agent::{Agent, AGENT_SCHEMA};
use baton_core::event::telegram_update_of;
use baton_core::model::{ConversationKey, Millis};
use baton_core::ports::{
    Commit, CommitOutcome, ConversationData, DeskLink, DeskStatusRecord, DrainLease, OutboxItem, Store, StoreError,
    TraceEntry, VersionedSession,
};
use baton_core::session::SESSION_SCHEMA;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

pub(crate) type Item = HashMap<String, AttributeValue>;

/// How long seen event ids are kept at least: WhatsApp retries for up to 7 days.
pub const SEEN_RETENTION_SECS: i64 = 8 * 24 * 60 * 60;

/// Schema of the small JSON records without a core constant (desk status, user messages).
pub(crate) const RECORD_SCHEMA: u32 = 1;

/// The session item's attribute naming the event it last applied.
pub(crate) const LAST_EVENT: &str = "last_event";

/// Sort key prefix of a seen mark in its conversation's partition (`SEEN#{event id}`).
pub(crate) const SEEN: &str = "SEEN#";

/// The session item's highest Telegram update number among the events it applied, kept from
/// the session's first commit on (sessions of earlier layouts, and those begun by another
/// kind of event, have none; a commit that cannot tell removes it). An update numbered higher
/// was never applied here, so `is_seen` on a session just loaded needs no read for it. The
/// version condition of every commit keeps it exact. Nothing rests on Telegram's order: after
/// a week without updates it picks the next number at random, and a lower one reads the mark.
const TG_MAX: &str = "tg_max";

/// The session item's bound (ms) on seen marks of earlier builds: until then its events may
/// have been marked at the global `SEEN#{id}` key, which `is_seen` reads too. Set by the first
/// commit of layout 4 on an item of an earlier layout, removed by the first commit after it.
const LEGACY_MARKS_UNTIL: &str = "legacy_marks_until";

/// A transaction holds at most 100 items: the session and the effects when they go to items
/// of their own (kept at 98, as when the seen id was in it too).
const MAX_EFFECTS_PER_COMMIT: usize = 98;

/// Outbox sequence numbers are `version * 1000 + index`: commits of one conversation have
/// increasing versions, so the sort key keeps insertion order without a counter.
const OUTBOX_SEQ_PER_VERSION: u64 = 1000;

/// Page size of GSI queries.
const INDEX_PAGE: i32 = 100;
/// Rounds of candidates one sweep reads at most when earlier ones had only moved later.
const SWEEP_ROUNDS: usize = 4;

/// The DynamoDB store; share it in an `Arc` like the other ports. The trace lines of its
/// commits and effect results are kept in memory until [`DynamoStore::flush_trace`] (the
/// Lambda worker calls it after each event; reading, exporting or erasing a trace calls it
/// first): call it before a process that commits ends.
#[derive(Debug)]
pub struct DynamoStore {
    pub(crate) client: Client,
    pub(crate) table: String,
    /// Orders trace items written by this process within the same millisecond.
    trace_seq: AtomicU64,
    /// Random per store, so trace keys of two processes never collide.
    instance: u64,
    /// Agent configs and desk statuses read lately (see [`DynamoStore::with_config_cache`]).
    agents: Recent<Option<Agent>>,
    desk_statuses: Recent<Option<DeskStatusRecord>>,
    /// Sort keys of the outbox items `pending_effects` returned, by conversation and effect id:
    /// completing or deferring one of them then needs no query to find its key.
    outbox_keys: std::sync::Mutex<HashMap<(String, String), String>>,
    /// Trace lines of writes already made, waiting for [`DynamoStore::flush_trace`]: one item
    /// per conversation and flush instead of one per line.
    trace_lines: std::sync::Mutex<Vec<(String, TraceEntry, Millis)>>,
    /// Write seen marks at the flush, with the trace lines (see
    /// [`DynamoStore::with_marks_behind_effects`]).
    marks_behind: bool,
    /// Seen marks of committed events waiting for the flush, in commit order.
    pending_marks: std::sync::Mutex<Vec<PendingMark>>,
    /// Event ids `is_seen` lately found unseen: the worker asks right before it commits, so
    /// the commit need not read the mark again (the session's last event id guards the rest).
    unseen: std::sync::Mutex<std::collections::VecDeque<String>>,
    /// What each session item held when last loaded (its inline effects, its `due` index
    /// key), for the commit that follows.
    pub(crate) loaded: LoadedSessions,
    /// Claim the drain lease in commits that write inline effects, for this long (see
    /// [`DynamoStore::with_drain_lease`]).
    drain_lease: Option<std::time::Duration>,
    /// Drain leases this store's commits claimed, with the outbox as each commit left it, by
    /// conversation: the next drain of the conversation here starts from it (whichever task
    /// runs it: only a take hands a claim on, so none is left held with nobody to give it
    /// back). Nobody else runs or completes those effects while the claim holds the lease.
    pub(crate) claimed: std::sync::Mutex<HashMap<String, Claim>>,
    /// Holders of drain leases that also hold the earlier builds' lease (for outbox items).
    pub(crate) item_leases: std::sync::Mutex<HashSet<String>>,
    /// Numbers the drain leases this store takes.
    leases_taken: AtomicU64,
    /// Sessions whose last commit here armed a timer that a message on its way carries, with
    /// that commit's version (see [`TIMER_MSG`]), until the worker asks.
    carried: std::sync::Mutex<HashMap<String, u64>>,
    /// Drain leases given back at a seen mark, by conversation, until a write of the session
    /// item here takes them out (see [`crate::outbox::Settlement`]).
    pub(crate) settled: std::sync::Mutex<HashMap<String, Settlement>>,
    /// Drain leases taken here from a session item outside the `outbox_due` index, by
    /// conversation, until an effect is deferred or watched: their release may be recorded
    /// at the seen mark.
    pub(crate) unwatched: std::sync::Mutex<HashMap<String, String>>,
}

/// Carried timers remembered until asked for (one per commit a worker is making at once);
/// past that the memory starts over, and those timers get messages of their own.
const MAX_REMEMBERED_CARRIES: usize = 1_000;

/// Unseen event ids remembered (one per event a worker is applying at once).
const MAX_UNSEEN: usize = 64;

/// Version of a trace item's `doc` (a list of lines); items without `doc` hold one line.
const TRACE_SCHEMA: u32 = 1;

/// Most lines in one trace item (a few hundred bytes each, deflated; DynamoDB items hold 400 KB).
const MAX_LINES_PER_TRACE_ITEM: usize = 100;

/// Outbox keys remembered at most; past that the memory starts over (a miss costs one query).
const MAX_OUTBOX_KEYS: usize = 10_000;

/// Unclaimed drain claims kept at most (one per conversation whose drain failed after its
/// commit); past that the memory starts over, and those leases run out on their own.
const MAX_CLAIMS: usize = 10_000;

/// Values read less than `ttl` ago, by id. Agent configs and desk statuses are read two or
/// three times per event by every function instance, from one partition per agent: a few
/// seconds of reuse turns that into one read per instance and interval, which keeps a busy
/// agent's partition under DynamoDB's per-partition read limit at scale. `ttl` zero: nothing
/// is kept. Entries are per agent, so the map only grows with the number of agents.
#[derive(Debug, Default)]
struct Recent<T> {
    ttl: std::time::Duration,
    entries: std::sync::Mutex<HashMap<String, (std::time::Instant, T)>>,
}

impl<T: Clone> Recent<T> {
    fn get(&self, id: &str) -> Option<T> {
        if !self.keeps() {
            return None;
        }
        let entries = lock(&self.entries);
        entries.get(id).filter(|(at, _)| at.elapsed() < self.ttl).map(|(_, v)| v.clone())
    }

    /// Whether reads are kept at all (a TTL above zero).
    fn keeps(&self) -> bool {
        !self.ttl.is_zero()
    }

    fn keep(&self, id: &str, value: T) {
        if self.keeps() {
            let mut entries = lock(&self.entries);
            entries.insert(id.to_string(), (std::time::Instant::now(), value));
        }
    }
}

pub(crate) enum Tx {
    Done,
    /// Cancellation reason codes, one per transaction item, in order (`None` = fine).
    Cancelled(Vec<String>),
}

pub(crate) fn failed_with(codes: &[String], index: usize, code: &str) -> bool {
    codes.get(index).is_some_and(|c| c == code)
}

pub(crate) const CONDITION_FAILED: &str = "ConditionalCheckFailed";
const TRANSACTION_CONFLICT: &str = "TransactionConflict";

pub(crate) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(crate) fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub(crate) fn unavailable<E, R>(what: &str, e: &SdkError<E, R>) -> StoreError
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    StoreError::Unavailable(format!("dynamodb {what}: {}", describe_sdk_error(e)))
}

/// A conditional write's outcome: `Ok(true)` when written, `Ok(false)` when its condition
/// failed, an error otherwise.
pub(crate) fn conditional<O, E, R>(what: &str, result: Result<O, SdkError<E, R>>) -> Result<bool, StoreError>
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match result {
        Ok(_) => Ok(true),
        Err(e) if e.as_service_error().and_then(|s| s.code()) == Some("ConditionalCheckFailedException") => Ok(false),
        Err(e) => Err(unavailable(what, &e)),
    }
}

/// Lock a mutex over plain data; a panic elsewhere cannot leave that data half-written.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Remember `value` for conversation `conv` in one of this process's memos, which starts over
/// once it holds `max` entries: a memo only spares work, and what it forgets is read, sent,
/// written or waited for again (each bound's constant says which).
pub(crate) fn remember<V>(memo: &std::sync::Mutex<HashMap<String, V>>, max: usize, conv: &str, value: V) {
    let mut memo = lock(memo);
    if memo.len() >= max {
        memo.clear();
    }
    memo.insert(conv.to_string(), value);
}

pub(crate) fn build_err(e: aws_sdk_dynamodb::error::BuildError) -> StoreError {
    StoreError::Unavailable(format!("cannot build a DynamoDB request: {e}"))
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Unavailable(format!("cannot encode a record: {e}")))
}

pub(crate) fn get_s<'a>(item: &'a Item, name: &str, what: &str) -> Result<&'a str, StoreError> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Ok(v),
        _ => Err(StoreError::Corrupt {
            key: what.to_string(),
            message: format!("attribute {name} is missing or not a string"),
        }),
    }
}

pub(crate) fn get_n<T: FromStr>(item: &Item, name: &str, what: &str) -> Result<T, StoreError> {
    match item.get(name) {
        Some(AttributeValue::N(v)) => v.parse().map_err(|_| StoreError::Corrupt {
            key: what.to_string(),
            message: format!("attribute {name} is out of range"),
        }),
        _ => Err(StoreError::Corrupt {
            key: what.to_string(),
            message: format!("attribute {name} is missing or not a number"),
        }),
    }
}

/// Decode the `doc` attribute after checking its `schema`. The message keeps only the
/// error's class and position: serde's full message can quote the value (maybe a secret).
pub(crate) fn decode_doc<T: DeserializeOwned>(item: &Item, what: &str, known_schema: u32) -> Result<T, StoreError> {
    decode_doc_as(item, what, get_n(item, "schema", what)?, known_schema)
}

/// `decode_doc` with the document's schema given.
fn decode_doc_as<T: DeserializeOwned>(
    item: &Item,
    what: &str,
    schema: u32,
    known_schema: u32,
) -> Result<T, StoreError> {
    decode_field_as(item, "doc", what, schema, known_schema)
}

/// A document (JSON, or its raw deflate) in the attribute `field`, of the given schema.
pub(crate) fn decode_field_as<T: DeserializeOwned>(
    item: &Item,
    field: &str,
    what: &str,
    schema: u32,
    known_schema: u32,
) -> Result<T, StoreError> {
    if schema > known_schema {
        return Err(StoreError::Corrupt {
            key: what.to_string(),
            message: format!("written with schema {schema}; this build reads up to {known_schema}"),
        });
    }
    let corrupt = |message: String| StoreError::Corrupt { key: what.to_string(), message };
    let inflated;
    let json: &[u8] = match item.get(field) {
        Some(AttributeValue::S(json)) => json.as_bytes(),
        Some(AttributeValue::B(deflated)) => {
            inflated = miniz_oxide::inflate::decompress_to_vec_with_limit(deflated.as_ref(), MAX_INFLATED_DOC)
                .map_err(|e| corrupt(format!("attribute {field} does not inflate: {:?}", e.status)))?;
            &inflated
        }
        _ => return Err(corrupt(format!("attribute {field} is missing or not a string or binary"))),
    };
    serde_json::from_slice(json)
        .map_err(|e| corrupt(format!("{:?} error at line {} column {}", e.classify(), e.line(), e.column())))
}

/// Layout of the session items this build writes: the document's schema is in `doc_schema`,
/// and the item may hold inline effects. Earlier builds read `schema` as the document's and
/// replace the whole item when they commit, so they refuse this one rather than drop its
/// effects (a worker of the previous build still running during a deploy fails the event,
/// which comes back to the new build). Layout 3 writes inline effects in their compact form
/// (`outbox.rs`), which layout 2 would not see; it still reads layout 2's. Layout 4 marks its
/// events seen in the conversation's partition (`SEEN#{id}`), where layout 3 would not look.
/// Layout 5 may show a drain lease given back at a seen mark (`outbox::Settlement`), which
/// layout 4 would take for a live one and, once it ran out, run its effects again.
const SESSION_ITEM_SCHEMA: u32 = 5;
const DOC_SCHEMA: &str = "doc_schema";

fn decode_session(item: &Item, pk: &str) -> Result<baton_core::Session, StoreError> {
    if !item.contains_key(DOC_SCHEMA) {
        return decode_doc(item, pk, SESSION_SCHEMA);
    }
    let layout: u32 = get_n(item, "schema", pk)?;
    if layout > SESSION_ITEM_SCHEMA {
        return Err(StoreError::Corrupt {
            key: pk.to_string(),
            message: format!("session item layout {layout}; this build reads up to {SESSION_ITEM_SCHEMA}"),
        });
    }
    decode_doc_as(item, pk, get_n(item, DOC_SCHEMA, pk)?, SESSION_SCHEMA)
}

/// The most a deflated document may inflate to: ten times DynamoDB's 400 KB item limit.
const MAX_INFLATED_DOC: usize = 4 * 1024 * 1024;

/// A document as raw deflate of its JSON, in a binary attribute. For the session, written
/// on every event and billed per started KB: its JSON repeats the same keys turn after turn
/// and shrinks to a third or less. `decode_doc` reads both forms.
pub(crate) fn encode_deflated<T: Serialize>(value: &T) -> Result<AttributeValue, StoreError> {
    let json =
        serde_json::to_vec(value).map_err(|e| StoreError::Unavailable(format!("cannot encode a record: {e}")))?;
    Ok(AttributeValue::B(Blob::new(miniz_oxide::deflate::compress_to_vec(&json, 6))))
}

/// The TTL attribute's value for data kept until `keep_until` (unix seconds).
pub(crate) fn ttl(keep_until: Millis) -> i64 {
    keep_until.0.max(0) / 1000
}

/// Unix seconds of `at` plus `secs`, for TTL attributes.
pub(crate) fn expiry(at: Millis, secs: i64) -> i64 {
    (at.0.max(0) / 1000).saturating_add(secs)
}

fn names(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
    Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
}

fn values(pairs: Vec<(&str, AttributeValue)>) -> Option<HashMap<String, AttributeValue>> {
    Some(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// An update expression built part by part, every name and value a placeholder.
#[derive(Default)]
struct Expr {
    sets: Vec<String>,
    removes: Vec<String>,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Expr {
    fn name(&mut self, attr: &str) -> String {
        let placeholder = format!("#a{}", self.names.len());
        self.names.insert(placeholder.clone(), attr.to_string());
        placeholder
    }

    fn value(&mut self, value: AttributeValue) -> String {
        let placeholder = format!(":a{}", self.values.len());
        self.values.insert(placeholder.clone(), value);
        placeholder
    }

    fn set(&mut self, attr: &str, value: AttributeValue) {
        let (name, value) = (self.name(attr), self.value(value));
        self.sets.push(format!("{name} = {value}"));
    }

    /// `attr = if_not_exists(attr, value)`: set unless it is set.
    fn set_if_absent(&mut self, attr: &str, value: AttributeValue) {
        let (name, value) = (self.name(attr), self.value(value));
        self.sets.push(format!("{name} = if_not_exists({name}, {value})"));
    }

    fn remove(&mut self, attr: &str) {
        let name = self.name(attr);
        self.removes.push(name);
    }

    /// A condition written with `#c{i}` for `attrs[i]` and `:c{i}` for `vals[i]`.
    fn condition(&mut self, expression: &str, attrs: &[&str], vals: Vec<AttributeValue>) -> String {
        for (i, attr) in attrs.iter().enumerate() {
            self.names.insert(format!("#c{i}"), attr.to_string());
        }
        for (i, value) in vals.into_iter().enumerate() {
            self.values.insert(format!(":c{i}"), value);
        }
        expression.to_string()
    }

    /// `condition AND attr = value`, with placeholders of their own.
    fn also(&mut self, condition: &str, attr: &str, value: AttributeValue) -> String {
        self.names.insert("#also".into(), attr.to_string());
        self.values.insert(":also".into(), value);
        format!("({condition}) AND #also = :also")
    }

    /// The update expression, its names and its values.
    fn build(self) -> (String, HashMap<String, String>, HashMap<String, AttributeValue>) {
        let mut expression = format!("SET {}", self.sets.join(", "));
        if !self.removes.is_empty() {
            expression.push_str(&format!(" REMOVE {}", self.removes.join(", ")));
        }
        (expression, self.names, self.values)
    }
}

pub(crate) fn key_of(pk: impl Into<String>, sk: impl Into<String>) -> Item {
    HashMap::from([(PK.to_string(), s(pk)), (SK.to_string(), s(sk))])
}

impl DynamoStore {
    /// A store on table `table` (created with [`crate::create_table`]).
    pub fn new(client: Client, table: impl Into<String>) -> DynamoStore {
        DynamoStore {
            client,
            table: table.into(),
            trace_seq: AtomicU64::new(0),
            instance: std::collections::hash_map::RandomState::new().hash_one(std::process::id()),
            agents: Recent::default(),
            desk_statuses: Recent::default(),
            outbox_keys: Default::default(),
            trace_lines: Default::default(),
            marks_behind: false,
            pending_marks: Default::default(),
            unseen: Default::default(),
            loaded: Default::default(),
            drain_lease: None,
            claimed: Default::default(),
            item_leases: Default::default(),
            leases_taken: AtomicU64::new(0),
            carried: Default::default(),
            settled: Default::default(),
            unwatched: Default::default(),
        }
    }

    /// Claim the conversation's drain lease (see [`baton_core::ports::DrainLeases`]) for
    /// `lease` in each commit that writes inline effects, when nobody holds it: the worker that
    /// commits runs them next. Only for a store whose commits are followed by a drain.
    pub fn with_drain_lease(mut self, lease: std::time::Duration) -> DynamoStore {
        self.drain_lease = Some(lease);
        self
    }

    /// Write each event's seen mark when the trace is flushed, in the same item as the trace
    /// lines of its step and its effects (one write instead of two), rather than right after
    /// its commit. Only for a process that flushes after every event (the Lambda worker): until
    /// the flush, the session's `last_event` is what tells a redelivered event, and a commit of
    /// the same conversation here first writes the marks still waiting (its own write moves
    /// `last_event` on). Events of one conversation come one at a time through their FIFO
    /// message group, so no other process commits to it before this one's event is done.
    pub fn with_marks_behind_effects(mut self) -> DynamoStore {
        self.marks_behind = true;
        self
    }

    /// A drain lease with a holder name of its own.
    pub(crate) fn new_lease(&self) -> DrainLease {
        let n = self.leases_taken.fetch_add(1, Ordering::Relaxed);
        DrainLease { holder: format!("{:016x}.{n}", self.instance) }
    }

    /// Remember where each pending effect lives (completing it then needs no read) and
    /// return the effects.
    pub(crate) fn remember_places(&self, conv: &str, pending: Vec<(String, OutboxItem)>) -> Vec<OutboxItem> {
        let mut known = self.outbox_keys();
        if known.len() + pending.len() > MAX_OUTBOX_KEYS {
            known.clear();
        }
        known.extend(pending.iter().map(|(place, item)| ((conv.to_string(), item.effect.id.clone()), place.clone())));
        pending.into_iter().map(|(_, item)| item).collect()
    }

    /// Serve agent configs and desk statuses read less than `ttl` ago from memory: a change
    /// made by another process (`baton agents apply`, a desk probe) is seen within `ttl`
    /// (and the second or so an eventually consistent read may lag: with a cache they are
    /// read that way, for half the read units); this store's own writes at once.
    pub fn with_config_cache(mut self, ttl: std::time::Duration) -> DynamoStore {
        self.agents.ttl = ttl;
        self.desk_statuses.ttl = ttl;
        self
    }

    pub fn table_name(&self) -> &str {
        &self.table
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) fn put(&self, item: Item) -> Result<TransactWriteItem, StoreError> {
        let put = Put::builder().table_name(&self.table).set_item(Some(item)).build().map_err(build_err)?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    /// Whether `event_id` of `key` carries the mark of an applied event: in the conversation's
    /// partition, waiting here for the flush, or (for sessions that may have them) at the
    /// global key earlier builds wrote.
    async fn has_seen_mark(&self, key: &ConversationKey, event_id: &str) -> Result<bool, StoreError> {
        let conv = conv_pk(key);
        if lock(&self.pending_marks).iter().any(|m| m.conv == conv && m.event_id == event_id) {
            return Ok(true);
        }
        if self.get(&conv, &seen_key(event_id)).await?.is_some() {
            return Ok(true);
        }
        if !self.may_have_legacy_marks(&conv) {
            return Ok(false);
        }
        Ok(self.get(&seen_key(event_id), "-").await?.is_some())
    }

    /// Whether `event_id` is a Telegram update numbered higher than any the session of `conv`
    /// applied, by the session as just loaded (once per load: the commit that follows is
    /// conditioned on that version, so a session changed since is loaded and asked again).
    fn newer_than_applied(&self, conv: &str, event_id: &str) -> bool {
        let Some(update) = telegram_update_of(event_id) else {
            return false;
        };
        let mut loaded = lock(&self.loaded);
        let Some((_, l)) = loaded.get_mut(conv) else {
            return false;
        };
        std::mem::take(&mut l.fresh) && l.tg_max.is_some_and(|max| update > max)
    }

    /// Whether events of `conv` may have been marked by an earlier build: unknown unless its
    /// session was loaded here. (A session begun by this build has no bound: earlier marks of
    /// its conversation would belong to a session that expired or was erased before, and are
    /// looked up for the first event only, whose session was not there to load.)
    fn may_have_legacy_marks(&self, conv: &str) -> bool {
        match lock(&self.loaded).get(conv).map(|(_, l)| l.legacy_marks) {
            Some(LegacyMarks::None) => false,
            Some(LegacyMarks::Until(until)) => until > wall_clock_ms(),
            Some(LegacyMarks::Unbounded) | None => true,
        }
    }

    /// Records that `event_id` was applied (by a commit here, or found applied before):
    /// now, or at the flush with the trace lines.
    async fn mark_seen(
        &self,
        key: &ConversationKey,
        event_id: &str,
        at: Millis,
        committed: bool,
    ) -> Result<(), StoreError> {
        let mark = PendingMark { conv: conv_pk(key), event_id: event_id.to_string(), at, committed, released: None };
        if self.marks_behind {
            lock(&self.pending_marks).push(mark);
            return Ok(());
        }
        self.put_mark(self.mark_item(&mark, None)?).await.map(|_| ())
    }

    /// Writes a seen mark unless the event's mark records a drain lease given back (a copy
    /// of the event found applied must not write over it): false when one was there.
    async fn put_mark(&self, item: Item) -> Result<bool, StoreError> {
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#r)")
            .expression_attribute_names("#r", RELEASED_BY)
            .send()
            .await;
        conditional("mark an event seen", put)
    }

    /// Whether this store committed `event_id` of `conv` and has not written its mark yet.
    pub(crate) fn committed_unmarked(&self, conv: &str, event_id: &str) -> bool {
        lock(&self.pending_marks).iter().any(|m| m.committed && m.conv == conv && m.event_id == event_id)
    }

    /// Records `settlement` (a drain lease given back, and the effects its drain completed)
    /// with the seen mark waiting here for `conv`'s last event, to be written at the flush:
    /// false when there is none to carry it.
    pub(crate) fn settle_at_mark(&self, conv: &str, settlement: Settlement, keep_until: Millis) -> bool {
        let mut marks = lock(&self.pending_marks);
        let Some(mark) = marks.iter_mut().rev().find(|m| m.conv == conv) else {
            return false;
        };
        if mark.released.is_some() {
            return false;
        }
        mark.released = Some((settlement.clone(), keep_until));
        drop(marks);
        self.remember_settlement(conv, settlement);
        true
    }

    /// A seen mark, kept 8 days (WhatsApp retries for up to 7), and longer when it carries
    /// trace lines that are kept longer. A mark that records a drain lease given back is kept
    /// 8 days past the conversation's retention: the session item shows the lease until its
    /// next write, which may come that late, and TTL may delete the two in either order.
    fn mark_item(&self, mark: &PendingMark, lines: Option<(&[TraceEntry], Millis)>) -> Result<Item, StoreError> {
        let mut item = key_of(mark.conv.as_str(), seen_key(&mark.event_id));
        let mut expires = expiry(mark.at, SEEN_RETENTION_SECS);
        if let Some((settlement, keep_until)) = &mark.released {
            item.extend(settlement.mark_attrs());
            expires = expires.max(ttl(*keep_until).saturating_add(SEEN_RETENTION_SECS));
        }
        if let Some((lines, keep_until)) = lines {
            item.insert("doc".into(), encode_deflated(&lines)?);
            item.insert("schema".into(), n(TRACE_SCHEMA));
            item.insert("at".into(), n(lines.first().map_or(mark.at.0, |l| l.at.0)));
            expires = expires.max(ttl(keep_until));
        }
        item.insert(EXPIRES_AT.into(), n(expires));
        Ok(item)
    }

    /// A plain (unconditional) PutItem; `what` names it in the error.
    pub(crate) async fn put_plain(&self, item: Item, what: &str) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| unavailable(what, &e))?;
        Ok(())
    }

    /// Strongly consistent GetItem.
    pub(crate) async fn get(&self, pk: &str, sk: &str) -> Result<Option<Item>, StoreError> {
        self.get_with(pk, sk, true).await
    }

    /// GetItem, strongly consistent or not (half the read units, and possibly a write of
    /// the last second or so missing).
    async fn get_with(&self, pk: &str, sk: &str, consistent: bool) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key_of(pk, sk)))
            .consistent_read(consistent)
            .send()
            .await
            .map_err(|e| unavailable("get", &e))?;
        Ok(out.item)
    }

    /// Every item of partition `pk` whose sort key starts with `prefix`, ascending,
    /// strongly consistent, all pages.
    pub(crate) async fn query_prefix(&self, pk: &str, prefix: &str) -> Result<Vec<Item>, StoreError> {
        self.query_partition(pk, Some(prefix)).await
    }

    /// Every item of partition `pk`, or those whose sort key starts with `prefix`.
    pub(crate) async fn query_partition(&self, pk: &str, prefix: Option<&str>) -> Result<Vec<Item>, StoreError> {
        let (condition, mut vals) = match prefix {
            Some(p) => ("#pk = :pk AND begins_with(#sk, :prefix)", vec![(":prefix", s(p))]),
            None => ("#pk = :pk", Vec::new()),
        };
        vals.push((":pk", s(pk)));
        let mut attr_names = vec![("#pk", PK)];
        if prefix.is_some() {
            attr_names.push(("#sk", SK));
        }
        self.client
            .query()
            .table_name(&self.table)
            .key_condition_expression(condition)
            .set_expression_attribute_names(names(&attr_names))
            .set_expression_attribute_values(values(vals))
            .consistent_read(true)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| unavailable("query", &e))
    }

    pub(crate) async fn transact(&self, items: Vec<TransactWriteItem>, what: &str) -> Result<Tx, StoreError> {
        match self.client.transact_write_items().set_transact_items(Some(items)).send().await {
            Ok(_) => Ok(Tx::Done),
            Err(e) => {
                if let Some(TransactWriteItemsError::TransactionCanceledException(c)) = e.as_service_error() {
                    let codes =
                        c.cancellation_reasons().iter().map(|r| r.code().unwrap_or("None").to_string()).collect();
                    return Ok(Tx::Cancelled(codes));
                }
                Err(unavailable(what, &e))
            }
        }
    }

    /// Trace lines of one conversation in one item (a deflated JSON list). Items sort by
    /// the first line's `at`, then by write order within this process; items of one
    /// conversation written by two processes in the same millisecond sort arbitrarily.
    fn trace_item(&self, conv: &str, lines: &[TraceEntry], keep_until: Millis) -> Result<Item, StoreError> {
        let seq = self.trace_seq.fetch_add(1, Ordering::Relaxed);
        let first = lines.first().map_or(0, |l| l.at.0.max(0));
        let sk = format!("TRACE#{first:020}#{seq:016x}{:016x}", self.instance);
        let mut item = key_of(conv, sk);
        item.insert("doc".into(), encode_deflated(&lines)?);
        item.insert("schema".into(), n(TRACE_SCHEMA));
        item.insert(EXPIRES_AT.into(), n(ttl(keep_until)));
        Ok(item)
    }

    /// Keep a trace line of a write just made until [`DynamoStore::flush_trace`]. Not in the
    /// write's transaction (which would bill both items twice) nor on its own (one item per
    /// line): a crash before the flush loses the line, never the write's state.
    pub(crate) fn keep_trace_line(&self, conv: &str, entry: &TraceEntry, keep_until: Millis) {
        lock(&self.trace_lines).push((conv.to_string(), entry.clone(), keep_until));
    }

    /// Write the seen marks and trace lines kept since the last flush (the Lambda worker calls
    /// this after each event's step and effects): per conversation, the first mark carries the
    /// lines, or, when there is no mark or the lines are kept for less than a mark, one trace
    /// item does. A trace line that fails is logged, not retried: the write it describes is
    /// done, and redelivering the event for a diagnostic line would be worse. A mark that
    /// fails is an error: the event must come back, find itself as its session's last, and be
    /// marked then.
    pub async fn flush_trace(&self) -> Result<(), StoreError> {
        self.flush(None).await
    }

    /// [`DynamoStore::flush_trace`] for one conversation, or for all.
    async fn flush(&self, only: Option<&str>) -> Result<(), StoreError> {
        let ours = |conv: &str| only.is_none_or(|o| o == conv);
        let lines = take_where(&self.trace_lines, |(c, _, _)| ours(c));
        let marks = take_where(&self.pending_marks, |m| ours(&m.conv));
        let mut by_conv: Vec<(String, Vec<TraceEntry>, Millis)> = Vec::new();
        for (conv, entry, keep_until) in lines {
            match by_conv.iter_mut().find(|(c, l, _)| *c == conv && l.len() < MAX_LINES_PER_TRACE_ITEM) {
                Some((_, l, keep)) => {
                    l.push(entry);
                    *keep = (*keep).max(keep_until);
                }
                None => by_conv.push((conv, vec![entry], keep_until)),
            }
        }
        let mut failed = None;
        for mark in &marks {
            let kept_as_long = |keep: Millis| ttl(keep) >= expiry(mark.at, SEEN_RETENTION_SECS);
            let carried = by_conv.iter().position(|(c, _, keep)| *c == mark.conv && kept_as_long(*keep));
            let lines = carried.map(|i| by_conv.remove(i));
            let item = self.mark_item(mark, lines.as_ref().map(|(_, l, keep)| (l.as_slice(), *keep)));
            let put = match item {
                Ok(item) => self.put_mark(item).await,
                Err(e) => Err(e),
            };
            match put {
                Ok(true) => {}
                Ok(false) => {
                    // Marked already, with a lease given back: its lines go to a trace item,
                    // and a release of this drain is written now.
                    by_conv.extend(lines);
                    if let Some((settlement, _)) = &mark.released {
                        if let Err(e) = self.release_settled(&mark.conv, settlement).await {
                            failed = Some(e);
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(conversation = mark.conv, event = mark.event_id, error = %e, "seen mark not written");
                    // Its lines go to a trace item of their own below.
                    by_conv.extend(lines);
                    failed = Some(e);
                }
            }
        }
        for (conv, lines, keep_until) in by_conv {
            let put = match self.trace_item(&conv, &lines, keep_until) {
                Ok(item) => self.put_plain(item, "put trace").await,
                Err(e) => Err(e),
            };
            if let Err(e) = put {
                tracing::warn!(conversation = conv, lines = lines.len(), error = %e, "trace lines were not written");
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Where a pending effect lives, by its effect id (`None` when it is gone): an inline
    /// attribute's name or an outbox item's sort key, remembered from `pending_effects`, else
    /// read. A remembered place whose effect is gone is harmless: the conditional write that
    /// uses it fails and writes nothing.
    async fn outbox_place(&self, conv: &str, effect_id: &str) -> Result<Option<String>, StoreError> {
        let known = self.outbox_keys().get(&(conv.to_string(), effect_id.to_string())).cloned();
        if known.is_some() {
            return Ok(known);
        }
        let outbox = self.read_outbox(conv).await?;
        Ok(outbox.pending.into_iter().find(|(_, item)| item.effect.id == effect_id).map(|(place, _)| place))
    }

    pub(crate) fn outbox_keys(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), String>> {
        lock(&self.outbox_keys)
    }

    /// Sessions whose armed timer is due at `now`, with the timer's generation, earliest
    /// first: the EventBridge sweeper turns them into `TimerFired` events, catching timers
    /// whose delayed SQS message was lost. Candidates come from the sparse, KEYS_ONLY `due`
    /// GSI (eventually consistent: a just-armed timer may show up one sweep later); each is
    /// read back from the table, so a timer disarmed or moved since is not reported. Sessions
    /// whose timer moved later are moved in the index (see [`TIMER_DUE`]) and, as they take
    /// none of `limit`, more candidates are read after them (a few rounds at most).
    pub async fn sessions_due(&self, now: Millis, limit: usize) -> Result<Vec<(ConversationKey, u64)>, StoreError> {
        let mut out = Vec::new();
        let mut reported = HashSet::new();
        for _ in 0..SWEEP_ROUNDS {
            let want = limit - out.len();
            let (due, moved, read) = self.sessions_due_round(now, want, &reported).await?;
            reported.extend(due.iter().map(|(key, _)| conv_pk(key)));
            out.extend(due);
            // Another round only when this one read as many as it could and moved some.
            if moved == 0 || read < want || out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// One round of `sessions_due`: the due sessions among the first `limit` candidates not
    /// `reported` already, how many candidates were moved later instead, and how many were
    /// read.
    async fn sessions_due_round(
        &self,
        now: Millis,
        limit: usize,
        reported: &HashSet<String>,
    ) -> Result<(Vec<(ConversationKey, u64)>, usize, usize), StoreError> {
        if limit == 0 {
            return Ok((Vec::new(), 0, 0));
        }
        let mut candidates: Vec<(i64, String)> = Vec::new();
        for shard in 0..SHARDS {
            let mut taken = 0;
            let mut start: Option<Item> = None;
            loop {
                let (items, next) = self.due_page(DUE_INDEX, (DUE_SHARD, DUE_AT), shard, now, start.take()).await?;
                for item in &items {
                    match (get_s(item, PK, "due index"), get_n::<i64>(item, DUE_AT, "due index")) {
                        (Ok(pk), _) if reported.contains(pk) => {}
                        (Ok(pk), Ok(due)) => {
                            candidates.push((due, pk.to_string()));
                            taken += 1;
                        }
                        // One unreadable item must not stop the sweeper for everyone.
                        (Err(e), _) | (_, Err(e)) => tracing::error!(error = %e, "skipping an unreadable due session"),
                    }
                }
                start = next;
                if taken >= limit || start.is_none() {
                    break;
                }
            }
        }
        candidates.sort();
        candidates.truncate(limit);
        let read = candidates.len();
        let keys = candidates.iter().map(|(_, pk)| key_of(pk.as_str(), "SESSION")).collect();
        let projection = ("#pk, #d, #t, #g", &[("#pk", PK), ("#d", DUE_AT), ("#t", TIMER_DUE), ("#g", DUE_GEN)][..]);
        let mut sessions = self.batch_get(keys, Some(projection), "due sessions").await?;
        let (mut out, mut moved) = (Vec::new(), 0);
        for (_, pk) in candidates {
            let Some(item) = sessions.remove(&pk) else {
                continue;
            };
            let Ok(indexed) = get_n::<i64>(&item, DUE_AT, &pk) else {
                continue;
            };
            // No timer any more: out of the index.
            let Ok(generation) = get_n::<u64>(&item, DUE_GEN, &pk) else {
                if indexed <= now.0 {
                    self.move_due_key(&pk, indexed, None).await;
                    moved += 1;
                }
                continue;
            };
            // Sessions of earlier builds have no `timer_due`: their index key is the timer's.
            let due = get_n::<i64>(&item, TIMER_DUE, &pk).unwrap_or(indexed);
            if due > now.0 {
                // Moved later since it entered the index: its key follows it now.
                if indexed <= now.0 {
                    self.move_due_key(&pk, indexed, Some((generation, due))).await;
                    moved += 1;
                }
                continue;
            }
            match parse_conv_pk(&pk) {
                Ok(key) => out.push((key, generation)),
                Err(e) => tracing::error!(error = %e, "skipping an unreadable due session"),
            }
        }
        Ok((out, moved, read))
    }

    /// Moves a session's `due` index key from `from` to its timer's due time (`timer`: the
    /// timer's generation and due), or takes it out of the index when it has no timer, unless
    /// a commit changed either since they were read. Best effort: one left behind is read
    /// again by the next sweep.
    async fn move_due_key(&self, pk: &str, from: i64, timer: Option<(u64, i64)>) {
        let update = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_of(pk, "SESSION")))
            .expression_attribute_names("#d", DUE_AT)
            .expression_attribute_names("#g", DUE_GEN)
            .expression_attribute_values(":from", n(from));
        let update = match timer {
            Some((generation, due)) => update
                .update_expression("SET #d = :due")
                .condition_expression("#d = :from AND #g = :g")
                .expression_attribute_values(":due", n(due))
                .expression_attribute_values(":g", n(generation)),
            None => update
                .update_expression("REMOVE #d, #s")
                .condition_expression("#d = :from AND attribute_not_exists(#g)")
                .expression_attribute_names("#s", DUE_SHARD),
        };
        if let Err(e) = conditional("move a due session", update.send().await) {
            tracing::warn!(conversation = pk, error = %e, "due session left at its earlier time");
        }
    }

    /// One page of a sparse due index (`due` or `outbox_due`): the items of `shard` whose due
    /// attribute is at most `now`, and where the next page starts.
    async fn due_page(
        &self,
        index: &str,
        (shard_attr, due_attr): (&str, &str),
        shard: u8,
        now: Millis,
        start: Option<Item>,
    ) -> Result<(Vec<Item>, Option<Item>), StoreError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(index)
            .key_condition_expression("#s = :s AND #d <= :now")
            .set_expression_attribute_names(names(&[("#s", shard_attr), ("#d", due_attr)]))
            .set_expression_attribute_values(values(vec![(":s", s(shard.to_string())), (":now", n(now.0))]))
            .limit(INDEX_PAGE)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| unavailable(&format!("query {index}"), &e))?;
        Ok((out.items.unwrap_or_default(), out.last_evaluated_key))
    }

    /// Strongly consistent BatchGetItem of `keys` (any number, each at most once), by pk;
    /// `projection` is an expression with its attribute names. Unprocessed keys (throttling)
    /// are asked for again a few times.
    async fn batch_get(
        &self,
        keys: Vec<Item>,
        projection: Option<(&str, &[(&str, &str)])>,
        what: &str,
    ) -> Result<HashMap<String, Item>, StoreError> {
        let mut out = HashMap::new();
        let mut keys = keys.into_iter().peekable();
        while keys.peek().is_some() {
            let mut chunk: Vec<Item> = keys.by_ref().take(100).collect();
            for _ in 0..10 {
                if chunk.is_empty() {
                    break;
                }
                let mut request =
                    KeysAndAttributes::builder().set_keys(Some(std::mem::take(&mut chunk))).consistent_read(true);
                if let Some((expression, attribute_names)) = projection {
                    request = request
                        .projection_expression(expression)
                        .set_expression_attribute_names(names(attribute_names));
                }
                let got = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, request.build().map_err(build_err)?)
                    .send()
                    .await
                    .map_err(|e| unavailable(what, &e))?;
                if let Some(items) = got.responses.and_then(|mut r| r.remove(&self.table)) {
                    for item in items {
                        let pk = get_s(&item, PK, what)?.to_string();
                        out.insert(pk, item);
                    }
                }
                chunk =
                    got.unprocessed_keys.and_then(|mut u| u.remove(&self.table)).map(|k| k.keys).unwrap_or_default();
            }
            if !chunk.is_empty() {
                return Err(StoreError::Unavailable(format!("dynamodb {what}: throttled, try again")));
            }
        }
        Ok(out)
    }
}

fn link_item(pk: String, link: &DeskLink) -> Item {
    let mut item = key_of(pk, "MAP");
    item.insert("agent".into(), s(link.agent.as_str()));
    item.insert("desk_conversation_id".into(), s(link.desk_conversation_id.as_str()));
    item.insert("handoff_id".into(), s(link.handoff_id.as_str()));
    item.insert("conversation".into(), s(link.conversation.to_string()));
    item
}

pub(crate) fn link_from_item(item: &Item, what: &str) -> Result<DeskLink, StoreError> {
    let conversation = get_s(item, "conversation", what)?;
    Ok(DeskLink {
        agent: get_s(item, "agent", what)?.to_string(),
        desk_conversation_id: get_s(item, "desk_conversation_id", what)?.to_string(),
        handoff_id: get_s(item, "handoff_id", what)?.to_string(),
        conversation: ConversationKey::parse(conversation)
            .map_err(|e| StoreError::Corrupt { key: what.to_string(), message: e.to_string() })?,
    })
}

/// A seen mark's key: its sort key in the conversation's partition, and the partition key
/// where builds before session layout 4 wrote them (sort key `-`).
pub(crate) fn seen_key(event_id: &str) -> String {
    format!("{SEEN}{}", key_part(event_id))
}

/// The entries of `kept` that `take` picks, in order; the others stay.
fn take_where<T>(kept: &std::sync::Mutex<Vec<T>>, take: impl Fn(&T) -> bool) -> Vec<T> {
    let mut kept = lock(kept);
    let (taken, left) = std::mem::take(&mut *kept).into_iter().partition(|entry| take(entry));
    *kept = left;
    taken
}

/// A seen mark waiting for the flush: whether its event was committed here (not found
/// applied already), and the drain lease given back with it, with the latest `keep_until` of
/// the effects its drain completed (the mark outlives that by 8 days).
#[derive(Debug, Clone)]
struct PendingMark {
    conv: String,
    event_id: String,
    at: Millis,
    committed: bool,
    released: Option<(Settlement, Millis)>,
}

/// Whether a session's events may have seen marks at the global key of earlier builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum LegacyMarks {
    #[default]
    None,
    /// Until then (ms).
    Until(i64),
    /// An item of an earlier layout: its next commit sets the bound.
    Unbounded,
}

/// Now, by this machine's clock (ms): only to tell whether a bound days long has passed.
fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub(crate) fn desk_pk(agent: &str, desk_conversation_id: &str) -> String {
    format!("DESK#{agent}#{}", key_part(desk_conversation_id))
}

pub(crate) fn handoff_pk(handoff_id: &str) -> String {
    format!("HANDOFF#{}", key_part(handoff_id))
}

/// `TOKEN#{hash}`: the token's sort key under its agent, and the owner item's partition.
fn token_key(hash: &str) -> String {
    format!("TOKEN#{}", key_part(hash))
}

#[async_trait]
impl Store for DynamoStore {
    async fn get_agent(&self, id: &str) -> Result<Option<Agent>, StoreError> {
        if let Some(agent) = self.agents.get(id) {
            return Ok(agent);
        }
        // A store that keeps configs for a while serves them that stale anyway: the read
        // need not be strongly consistent (half the read units).
        let agent = match self.get_with(&agent_pk(id), "CONFIG", !self.agents.keeps()).await? {
            Some(item) => Some(decode_doc(&item, &format!("agent {id}"), AGENT_SCHEMA)?),
            None => None,
        };
        self.agents.keep(id, agent.clone());
        Ok(agent)
    }

    /// Writes the config and its entry in the `AGENTS` index in one transaction.
    async fn put_agent(&self, agent: &Agent) -> Result<(), StoreError> {
        let mut config = key_of(agent_pk(&agent.id), "CONFIG");
        config.insert("doc".into(), s(encode(agent)?));
        config.insert("schema".into(), n(AGENT_SCHEMA));
        let mut index = key_of("AGENTS", agent_pk(&agent.id));
        index.insert("agent".into(), s(agent.id.as_str()));
        match self.transact(vec![self.put(config)?, self.put(index)?], "put agent").await? {
            Tx::Done => {
                self.agents.keep(&agent.id, Some(agent.clone()));
                Ok(())
            }
            Tx::Cancelled(codes) => Err(StoreError::Unavailable(format!("dynamodb put agent cancelled: {codes:?}"))),
        }
    }

    async fn list_agents(&self) -> Result<Vec<Agent>, StoreError> {
        let ids = self
            .query_prefix("AGENTS", "AGENT#")
            .await?
            .iter()
            .map(|item| get_s(item, "agent", "agent index").map(str::to_string))
            .collect::<Result<Vec<_>, _>>()?;
        let keys = ids.iter().map(|id| key_of(agent_pk(id), "CONFIG")).collect();
        let mut configs = self.batch_get(keys, None, "batch get agents").await?;
        let mut out = Vec::with_capacity(ids.len());
        // The index is sorted by `AGENT#{id}`, i.e. by id, like the SQLite store.
        for id in &ids {
            if let Some(item) = configs.remove(&agent_pk(id)) {
                out.push(decode_doc(&item, &format!("agent {id}"), AGENT_SCHEMA)?);
            }
        }
        Ok(out)
    }

    /// The token item plus a `TOKEN#{hash}` owner item, so one hash can belong to only one
    /// agent; adding the same token again keeps its original `created_at`.
    async fn add_token(&self, agent: &str, token_hash: &str, created_at: Millis) -> Result<(), StoreError> {
        let owner = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key_of(token_key(token_hash), "OWNER")))
            .update_expression("SET #agent = :agent")
            .condition_expression("attribute_not_exists(#pk) OR #agent = :agent")
            .set_expression_attribute_names(names(&[("#pk", PK), ("#agent", "agent")]))
            .set_expression_attribute_values(values(vec![(":agent", s(agent))]))
            .build()
            .map_err(build_err)?;
        let token = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key_of(agent_pk(agent), token_key(token_hash))))
            .update_expression("SET #c = if_not_exists(#c, :c), #h = :h")
            .set_expression_attribute_names(names(&[("#c", "created_at"), ("#h", "hash")]))
            .set_expression_attribute_values(values(vec![(":c", n(created_at.0)), (":h", s(token_hash))]))
            .build()
            .map_err(build_err)?;
        let items = vec![
            TransactWriteItem::builder().update(owner).build(),
            TransactWriteItem::builder().update(token).build(),
        ];
        match self.transact(items, "add token").await? {
            Tx::Done => Ok(()),
            Tx::Cancelled(codes) if failed_with(&codes, 0, CONDITION_FAILED) => {
                Err(StoreError::Unavailable("this token is already registered to another agent".into()))
            }
            Tx::Cancelled(codes) => Err(StoreError::Unavailable(format!("dynamodb add token cancelled: {codes:?}"))),
        }
    }

    async fn revoke_tokens(&self, agent: &str, keep: Option<&str>) -> Result<u64, StoreError> {
        let pk = agent_pk(agent);
        let mut revoked = 0;
        for item in self.query_prefix(&pk, "TOKEN#").await? {
            let hash = get_s(&item, "hash", &pk)?;
            if Some(hash) == keep {
                continue;
            }
            let token = Delete::builder()
                .table_name(&self.table)
                .set_key(Some(key_of(pk.as_str(), get_s(&item, SK, &pk)?)))
                .condition_expression("attribute_exists(#pk)")
                .set_expression_attribute_names(names(&[("#pk", PK)]))
                .build()
                .map_err(build_err)?;
            let owner = Delete::builder()
                .table_name(&self.table)
                .set_key(Some(key_of(token_key(hash), "OWNER")))
                .build()
                .map_err(build_err)?;
            let items = vec![
                TransactWriteItem::builder().delete(token).build(),
                TransactWriteItem::builder().delete(owner).build(),
            ];
            match self.transact(items, "revoke token").await? {
                Tx::Done => revoked += 1,
                // Revoked concurrently: not ours to count.
                Tx::Cancelled(codes) if failed_with(&codes, 0, CONDITION_FAILED) => {}
                Tx::Cancelled(codes) => {
                    return Err(StoreError::Unavailable(format!("dynamodb revoke token cancelled: {codes:?}")))
                }
            }
        }
        Ok(revoked)
    }

    async fn token_hashes(&self, agent: &str) -> Result<Vec<String>, StoreError> {
        let pk = agent_pk(agent);
        let mut rows = self
            .query_prefix(&pk, "TOKEN#")
            .await?
            .iter()
            .map(|item| Ok((get_n::<i64>(item, "created_at", &pk)?, get_s(item, "hash", &pk)?.to_string())))
            .collect::<Result<Vec<_>, StoreError>>()?;
        rows.sort_by_key(|(at, _)| *at);
        Ok(rows.into_iter().map(|(_, h)| h).collect())
    }

    async fn load_session(&self, key: &ConversationKey) -> Result<Option<VersionedSession>, StoreError> {
        let pk = conv_pk(key);
        let Some(mut item) = self.get(&pk, "SESSION").await? else {
            return Ok(None);
        };
        // A lease given back at the last event's mark, and its effects, are as good as gone:
        // the commit that follows takes them out.
        self.settled_view(&pk, &mut item).await?;
        let version = get_n(&item, "version", &pk)?;
        let session = decode_session(&item, &pk)?;
        let due_at = get_n::<i64>(&item, DUE_AT, &pk).ok();
        let timer = get_n::<u64>(&item, DUE_GEN, &pk).ok();
        let timer_msg = get_n::<i64>(&item, TIMER_MSG, &pk).ok();
        let legacy_marks = match get_n::<i64>(&item, LEGACY_MARKS_UNTIL, &pk) {
            Ok(until) => LegacyMarks::Until(until),
            Err(_) if get_n::<u32>(&item, "schema", &pk).unwrap_or(0) < 4 || !item.contains_key(DOC_SCHEMA) => {
                LegacyMarks::Unbounded
            }
            Err(_) => LegacyMarks::None,
        };
        let tg_max = get_n::<i64>(&item, TG_MAX, &pk).ok();
        let inline = inline_load(&item);
        let loaded = Loaded { inline, due_at, timer, timer_msg, legacy_marks, tg_max, fresh: true };
        self.remember_loaded(&pk, version, loaded);
        Ok(Some(VersionedSession { version, session }))
    }

    async fn is_seen(&self, key: &ConversationKey, event_id: &str) -> Result<bool, StoreError> {
        let seen = !self.newer_than_applied(&conv_pk(key), event_id) && self.has_seen_mark(key, event_id).await?;
        if !seen {
            let mut unseen = lock(&self.unseen);
            if unseen.len() >= MAX_UNSEEN {
                unseen.pop_front();
            }
            unseen.push_back(event_id.to_string());
        }
        Ok(seen)
    }

    /// The session (version condition) and the effects in one `TransactWriteItems`, or one
    /// conditional `PutItem` when there are no effects (a transaction bills every item twice).
    /// The seen id is checked before and recorded after (right after, or at the flush): the
    /// session item keeps the id of the event it last applied, which covers the time in
    /// between (a worker that dies there leaves its event to come back as the session's last,
    /// and the mark is written then). A refused write wrote nothing.
    async fn commit(&self, commit: Commit) -> Result<CommitOutcome, StoreError> {
        let key = &commit.session.key;
        let conv = conv_pk(key);
        if commit.effects.len() > MAX_EFFECTS_PER_COMMIT {
            return Err(StoreError::Unavailable(format!(
                "{} effects do not fit in one DynamoDB transaction (at most {MAX_EFFECTS_PER_COMMIT})",
                commit.effects.len()
            )));
        }
        let mut ids = HashSet::new();
        if !commit.effects.iter().all(|e| ids.insert(e.id.as_str())) {
            return Err(StoreError::Unavailable("duplicate effect id in one commit".into()));
        }
        // The worker asked just before; a commit nobody asked about reads the mark here.
        let just_checked = {
            let mut unseen = lock(&self.unseen);
            let at = unseen.iter().position(|id| *id == commit.event_id);
            at.and_then(|i| unseen.remove(i)).is_some()
        };
        if !just_checked && self.has_seen_mark(key, &commit.event_id).await? {
            return Ok(CommitOutcome::AlreadySeen);
        }
        // This write moves `last_event` on: the marks waiting here for this conversation are
        // written first (with the lines so far), so none is left to `last_event` alone.
        if lock(&self.pending_marks).iter().any(|m| m.conv == conv) {
            self.flush(Some(&conv)).await?;
        }
        let expected = commit.expected_version;
        let version = expected
            .checked_add(1)
            .filter(|v| v.checked_mul(OUTBOX_SEQ_PER_VERSION).is_some())
            .ok_or_else(|| StoreError::Unavailable("session version overflow".into()))?;
        let at = commit.trace.at;
        let shard = shard_of(key);

        let seqs = (0..commit.effects.len() as u64).map(|i| version * OUTBOX_SEQ_PER_VERSION + i);
        let effects = commit
            .effects
            .iter()
            .zip(seqs)
            .map(|(effect, seq)| Ok((seq, effect, inline_attrs(effect, at)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let bytes = effects.iter().map(|(seq, _, attrs)| entry_size(&inline_name(*seq), attrs)).sum();
        let loaded = self.loaded_at(&conv, expected);
        let inline = effects.is_empty() || fits_inline(loaded.map(|l| l.inline), effects.len(), bytes);

        // One UpdateItem of the session item: it keeps the inline effects not yet completed.
        let mut update = Expr::default();
        update.set("version", n(version));
        update.set("doc", encode_deflated(&commit.session)?);
        update.set("schema", n(SESSION_ITEM_SCHEMA));
        update.set(DOC_SCHEMA, n(SESSION_SCHEMA));
        // In the document already; earlier builds kept a copy here, which nothing read.
        update.remove("updated_at");
        update.set(LAST_EVENT, s(commit.event_id.as_str()));
        // The agent's retention, counted from this event (TTL deletes an idle conversation).
        update.set(EXPIRES_AT, n(ttl(commit.keep_until)));
        // Sparse GSI of sessions with a timer, for the sweeper. Its key only moves earlier:
        // a timer disarmed (each user reply disarms the session timeout the human's message
        // armed) or moved later leaves it where it is, and the sweeper tidies it when it
        // comes (`sessions_due`). That bills an index write or two per timeout instead of
        // two per message. `due_gen` and `timer_due` say whether and when a timer is armed.
        // The key kept is the one loaded: the commit's condition checks that the sweeper did
        // not move it since (else the commit is refused and the worker loads the item again).
        let indexed = loaded.and_then(|l| l.due_at);
        let kept = commit.session.timer.and_then(|timer| indexed.filter(|at| *at <= timer.due.0));
        // A timer armed here (a generation the loaded item did not have) needs a message,
        // unless the last one sent is still on its way and comes back no later than the
        // timer is due: that one is then sent on for this timer (`TIMER_MSG`).
        let mut timer_msg = loaded.and_then(|l| l.timer_msg);
        let carried = match (commit.session.timer, loaded) {
            (Some(timer), Some(l)) if l.timer != Some(timer.generation) => {
                let on_its_way = l.timer_msg.is_some_and(|m| m > at.0 && m <= timer.due.0);
                if !on_its_way {
                    update.set(TIMER_MSG, n(timer.due.0));
                    timer_msg = Some(timer.due.0);
                }
                on_its_way
            }
            _ => false,
        };
        let due_at = match &commit.session.timer {
            Some(timer) => {
                if kept.is_none() {
                    update.set(DUE_AT, n(timer.due.0));
                }
                update.set(TIMER_DUE, n(timer.due.0));
                update.set(DUE_SHARD, s(shard.as_str()));
                update.set(DUE_GEN, n(timer.generation));
                Some(kept.unwrap_or(timer.due.0))
            }
            None => {
                [TIMER_DUE, DUE_GEN].into_iter().for_each(|a| update.remove(a));
                indexed
            }
        };
        if expected == 0 {
            update.set(INLINE_ONLY, AttributeValue::Bool(true));
        }
        // The highest Telegram update applied, from the session's first commit on.
        let mut tg_max = loaded.and_then(|l| l.tg_max);
        if let Some(number) = telegram_update_of(&commit.event_id) {
            match loaded {
                Some(l) if expected == 0 || l.tg_max.is_some() => {
                    let max = l.tg_max.map_or(number, |m| m.max(number));
                    if l.tg_max != Some(max) {
                        update.set(TG_MAX, n(max));
                    }
                    tg_max = Some(max);
                }
                // Begun without it: earlier updates were not counted.
                Some(_) => {}
                None => {
                    update.remove(TG_MAX);
                    tg_max = None;
                }
            }
        }
        // Marks of earlier builds are global and kept 8 days: looked up for 8 days more.
        let bound = at.0.saturating_add(SEEN_RETENTION_SECS * 1000);
        let legacy_marks = match loaded.map(|l| l.legacy_marks) {
            Some(LegacyMarks::Unbounded) => {
                update.set(LEGACY_MARKS_UNTIL, n(bound));
                LegacyMarks::Until(bound)
            }
            Some(LegacyMarks::Until(until)) if until <= at.0 => {
                update.remove(LEGACY_MARKS_UNTIL);
                LegacyMarks::None
            }
            Some(kept) => kept,
            // Not loaded here: an item of an earlier layout may be behind it.
            None => {
                update.set_if_absent(LEGACY_MARKS_UNTIL, n(bound));
                LegacyMarks::Until(bound)
            }
        };
        if !inline {
            update.set(SPILLED, AttributeValue::Bool(true));
        }
        // A lease given back at a seen mark, with its drain's effects, goes with this write
        // (the condition checks that nobody took the lease since).
        let settled = self.settlement(&conv).filter(|_| expected > 0);
        // The worker that commits runs the effects next: it takes the drain lease with them
        // when nobody holds it (both attributes are set and removed together).
        let claim = self.drain_lease.filter(|_| inline && !effects.is_empty()).map(|length| {
            let until = at.0.saturating_add(i64::try_from(length.as_millis()).unwrap_or(i64::MAX));
            let lease = self.new_lease();
            if settled.is_some() {
                update.set(DRAIN_BY, s(lease.holder.as_str()));
                update.set(DRAIN_UNTIL, n(until));
            } else {
                update.set_if_absent(DRAIN_BY, s(lease.holder.as_str()));
                update.set_if_absent(DRAIN_UNTIL, n(until));
            }
            (lease, until)
        });
        if let Some(settled) = &settled {
            if claim.is_none() {
                update.remove(DRAIN_BY);
                update.remove(DRAIN_UNTIL);
            }
            settled.places.iter().for_each(|place| update.remove(place));
        }
        let mut items = Vec::new();
        for (seq, effect, attrs) in effects {
            if inline {
                update.set(&inline_name(seq), AttributeValue::M(attrs));
            } else {
                let mut item = key_of(conv.as_str(), item_sk(seq, &effect.id));
                item.extend(effect_attrs(effect, at)?);
                items.push(self.put(item)?);
            }
        }
        let mut condition = match (expected, kept) {
            (0, _) => update.condition("attribute_not_exists(#c0)", &[PK], vec![]),
            (_, Some(kept)) => update.condition(
                "#c0 = :c0 AND (attribute_not_exists(#c1) OR #c1 <> :c1) AND #c2 = :c2",
                &["version", LAST_EVENT, DUE_AT],
                vec![n(expected), s(commit.event_id.as_str()), n(kept)],
            ),
            (_, None) => update.condition(
                "#c0 = :c0 AND (attribute_not_exists(#c1) OR #c1 <> :c1)",
                &["version", LAST_EVENT],
                vec![n(expected), s(commit.event_id.as_str())],
            ),
        };
        if let Some(settled) = &settled {
            condition = update.also(&condition, DRAIN_BY, s(settled.holder.as_str()));
        }
        let (expression, attr_names, attr_values) = update.build();
        let written = if items.is_empty() {
            let updated = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key_of(conv.as_str(), "SESSION")))
                .update_expression(expression)
                .condition_expression(condition)
                .set_expression_attribute_names(Some(attr_names))
                .set_expression_attribute_values(Some(attr_values))
                .set_return_values(claim.as_ref().map(|_| ReturnValue::AllNew))
                .send()
                .await;
            match updated {
                Ok(out) => {
                    // Claimed here (not held by another already): the drain starts from this
                    // outbox, unless it may have items of its own to query.
                    if let (Some((lease, until)), Some(item)) = (claim, out.attributes) {
                        if item.get(DRAIN_BY) == Some(&s(lease.holder.as_str())) && !may_have_items(Some(&item)) {
                            let indexed = item.contains_key(OBX_DUE);
                            let pending = self.outbox_of(&conv, Some(item)).await?.pending;
                            remember(&self.claimed, MAX_CLAIMS, &conv, Claim { lease, until, pending, indexed });
                        }
                    }
                    Tx::Done
                }
                Err(e) => {
                    // Any error but the refused condition is returned here.
                    conditional("commit", Err::<(), _>(e))?;
                    Tx::Cancelled(vec![CONDITION_FAILED.to_string()])
                }
            }
        } else {
            // Effects too many or too large for the session item: items of their own, in one
            // transaction with the session.
            let session_update = Update::builder()
                .table_name(&self.table)
                .set_key(Some(key_of(conv.as_str(), "SESSION")))
                .update_expression(expression)
                .condition_expression(condition)
                .set_expression_attribute_names(Some(attr_names))
                .set_expression_attribute_values(Some(attr_values))
                .build()
                .map_err(build_err)?;
            items.insert(0, TransactWriteItem::builder().update(session_update).build());
            self.transact(items, "commit").await?
        };
        if settled.is_some() {
            // Taken out, or refused: the retry loads the item and reads the mark again.
            self.forget_settlement(&conv);
        }
        match written {
            Tx::Done => {
                if let Some((count, before)) = loaded.map(|l| l.inline).filter(|_| inline) {
                    let inline = (count + commit.effects.len(), before + bytes);
                    let timer = commit.session.timer.map(|t| t.generation);
                    let loaded = Loaded { inline, due_at, timer, timer_msg, legacy_marks, tg_max, fresh: false };
                    self.remember_loaded(&conv, version, loaded);
                }
                if carried {
                    remember(&self.carried, MAX_REMEMBERED_CARRIES, &conv, version);
                }
                self.mark_seen(key, &commit.event_id, at, true).await?;
                // After the write, not in it (which would bill it twice): see `keep_trace_line`.
                self.keep_trace_line(&conv, &commit.trace, commit.keep_until);
                Ok(CommitOutcome::Committed { version })
            }
            // The session changed, or this event is the one it last applied.
            Tx::Cancelled(codes)
                if failed_with(&codes, 0, CONDITION_FAILED) || codes.iter().any(|c| c == TRANSACTION_CONFLICT) =>
            {
                let applied = match self.get(&conv, "SESSION").await? {
                    Some(item) => item.get(LAST_EVENT) == Some(&s(commit.event_id.as_str())),
                    None => false,
                };
                if applied {
                    // Its mark may be missing if the worker that applied it died first.
                    self.mark_seen(key, &commit.event_id, at, false).await?;
                    Ok(CommitOutcome::AlreadySeen)
                } else {
                    Ok(CommitOutcome::VersionConflict)
                }
            }
            Tx::Cancelled(codes) => Err(StoreError::Unavailable(format!("dynamodb commit cancelled: {codes:?}"))),
        }
    }

    fn timer_carried(&self, key: &ConversationKey, version: u64) -> bool {
        let conv = conv_pk(key);
        let mut memo = lock(&self.carried);
        match memo.get(&conv) {
            Some(v) if *v == version => memo.remove(&conv).is_some(),
            _ => false,
        }
    }

    async fn pending_effects(&self, key: &ConversationKey) -> Result<Vec<OutboxItem>, StoreError> {
        let conv = conv_pk(key);
        let pending = self.read_outbox(&conv).await?.pending;
        Ok(self.remember_places(&conv, pending))
    }

    /// Removes the effect (an inline attribute or an outbox item, with a conditional write),
    /// then appends `trace`. When the effect is already gone (completed by a concurrent run),
    /// nothing is written. Not one transaction: it would bill both writes twice, and the line
    /// is only a record of the removal (a crash between the two loses the line, never the
    /// effect's state).
    async fn complete_effect(
        &self,
        key: &ConversationKey,
        effect_id: &str,
        trace: TraceEntry,
        keep_until: Millis,
    ) -> Result<(), StoreError> {
        let conv = conv_pk(key);
        let Some(place) = self.outbox_place(&conv, effect_id).await? else {
            return Ok(());
        };
        let removed = if is_inline(&place) {
            self.complete_inline(&conv, &place).await
        } else {
            let deleted = self
                .client
                .delete_item()
                .table_name(&self.table)
                .set_key(Some(key_of(conv.as_str(), place)))
                .condition_expression("attribute_exists(#pk)")
                .set_expression_attribute_names(names(&[("#pk", PK)]))
                .send()
                .await;
            conditional("complete effect", deleted)
        };
        self.outbox_keys().remove(&(conv.clone(), effect_id.to_string()));
        if removed? {
            self.keep_trace_line(&conv, &trace, keep_until);
        }
        Ok(())
    }

    /// Records a failed attempt and when to retry (also in the `outbox_due` GSI), then
    /// appends `trace`, as `complete_effect` does; a missing effect writes nothing.
    async fn defer_effect(
        &self,
        key: &ConversationKey,
        effect_id: &str,
        attempts: u32,
        next_attempt_at: Millis,
        trace: TraceEntry,
        keep_until: Millis,
    ) -> Result<(), StoreError> {
        let conv = conv_pk(key);
        lock(&self.unwatched).remove(&conv);
        let Some(place) = self.outbox_place(&conv, effect_id).await? else {
            return Ok(());
        };
        let deferred = if is_inline(&place) {
            self.defer_inline(key, &conv, &place, attempts, next_attempt_at).await?
        } else {
            let updated = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key_of(conv.as_str(), place)))
                .update_expression("SET #a = :a, #n = :n, #d = :n, #s = :s")
                .condition_expression("attribute_exists(#pk)")
                .set_expression_attribute_names(names(&[
                    ("#pk", PK),
                    ("#a", "attempts"),
                    ("#n", "next_attempt_at"),
                    ("#d", OBX_DUE),
                    ("#s", OBX_SHARD),
                ]))
                .set_expression_attribute_values(values(vec![
                    (":a", n(attempts)),
                    (":n", n(next_attempt_at.0)),
                    (":s", s(shard_of(key).as_str())),
                ]))
                .send()
                .await;
            conditional("defer effect", updated)?
        };
        if deferred {
            self.keep_trace_line(&conv, &trace, keep_until);
        }
        Ok(())
    }

    /// Puts the pending effects not yet in the `outbox_due` GSI into it, due when they were
    /// due: the session item for its inline effects (at the first one's time), and each
    /// outbox item.
    async fn watch_pending(&self, key: &ConversationKey) -> Result<(), StoreError> {
        let conv = conv_pk(key);
        lock(&self.unwatched).remove(&conv);
        let shard = shard_of(key);
        let outbox = self.read_outbox(&conv).await?;
        if let Some((_, first)) = outbox.pending.iter().find(|(place, _)| is_inline(place)) {
            if !outbox.session.as_ref().is_some_and(|item| item.contains_key(OBX_DUE)) {
                self.watch_inline(key, &conv, first.next_attempt_at).await?;
            }
        }
        for (sk, item) in outbox.pending.iter().filter(|(place, _)| !is_inline(place)) {
            let updated = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key_of(conv.as_str(), sk)))
                .update_expression("SET #d = :d, #s = :s")
                .condition_expression("attribute_exists(#pk) AND attribute_not_exists(#d)")
                .set_expression_attribute_names(names(&[("#pk", PK), ("#d", OBX_DUE), ("#s", OBX_SHARD)]))
                .set_expression_attribute_values(values(vec![
                    (":d", n(item.next_attempt_at.0)),
                    (":s", s(shard.as_str())),
                ]))
                .send()
                .await;
            // A failed condition: gone (completed meanwhile) or already in; either is fine.
            conditional("watch pending effects", updated)?;
        }
        Ok(())
    }

    /// Candidates come from the `outbox_due` GSI (any session or outbox item due); only
    /// conversations whose outbox HEAD is due count, since a later effect must not run before
    /// an earlier one, so each candidate's outbox is read back. Earliest head first. A
    /// session left in the index with no effect is taken out.
    async fn conversations_with_due_effects(
        &self,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<ConversationKey>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut checked: HashSet<String> = HashSet::new();
        let mut found: Vec<(Millis, ConversationKey)> = Vec::new();
        for shard in 0..SHARDS {
            let mut taken = 0;
            let mut start: Option<Item> = None;
            loop {
                let (items, next) = self.due_page(OUTBOX_INDEX, (OBX_SHARD, OBX_DUE), shard, now, start.take()).await?;
                for item in &items {
                    let pk = get_s(item, PK, "outbox index")?;
                    if !checked.insert(pk.to_string()) {
                        continue;
                    }
                    let key = match parse_conv_pk(pk) {
                        Ok(k) => k,
                        Err(e) => {
                            tracing::error!(error = %e, "skipping an outbox item with an unreadable key");
                            continue;
                        }
                    };
                    let outbox = self.read_outbox(pk).await?;
                    match outbox.pending.first() {
                        Some((_, head)) if head.next_attempt_at <= now => {
                            found.push((head.next_attempt_at, key));
                            taken += 1;
                        }
                        Some(_) => {}
                        None => {
                            if let Some(session) = outbox.session.filter(|s| s.contains_key(OBX_DUE)) {
                                self.leave_due_index(pk, &session).await;
                            }
                        }
                    }
                }
                start = next;
                if taken >= limit || start.is_none() {
                    break;
                }
            }
        }
        found.sort();
        found.truncate(limit);
        Ok(found.into_iter().map(|(_, k)| k).collect())
    }

    /// Upsert both lookup items. Like the SQLite store's `INSERT OR REPLACE`, a link that
    /// reuses the desk conversation or the handoff id of another link replaces that link
    /// (its other lookup item is deleted in the same transaction).
    async fn put_desk_link(&self, link: &DeskLink, keep_until: Millis) -> Result<(), StoreError> {
        let by_desk = desk_pk(&link.agent, &link.desk_conversation_id);
        let by_handoff = handoff_pk(&link.handoff_id);
        let with_ttl = |mut item: Item| {
            item.insert(EXPIRES_AT.into(), n(ttl(keep_until)));
            item
        };
        // A third copy in the conversation's partition finds the others for an erasure.
        let mut own = link_item(conv_pk(&link.conversation), link);
        own.insert(SK.into(), s(format!("LINK#{}", key_part(&link.handoff_id))));
        // In this order: the conversation's copy first (an erasure finds the others through
        // it), the desk's lookup last (desk events find the conversation through it).
        let puts =
            [with_ttl(own), with_ttl(link_item(by_handoff.clone(), link)), with_ttl(link_item(by_desk.clone(), link))];
        let mut stale = Vec::new();
        if let Some(old) = self.get(&by_desk, "MAP").await? {
            let old = link_from_item(&old, &by_desk)?;
            if old.handoff_id != link.handoff_id {
                stale.push(key_of(handoff_pk(&old.handoff_id), "MAP"));
            }
        }
        if let Some(old) = self.get(&by_handoff, "MAP").await? {
            let old = link_from_item(&old, &by_handoff)?;
            if (old.agent.as_str(), old.desk_conversation_id.as_str())
                != (link.agent.as_str(), link.desk_conversation_id.as_str())
            {
                stale.push(key_of(desk_pk(&old.agent, &old.desk_conversation_id), "MAP"));
            }
        }
        if stale.is_empty() {
            // Plain puts (a transaction bills every item twice). A failure part way fails the
            // `OpenDesk` effect, which runs again, and writes them all, before any post to the
            // desk (effects to one receiver run in order).
            for item in puts {
                self.put_plain(item, "put desk link").await?;
            }
            return Ok(());
        }
        // Lookups of an earlier link go in the same write, so no desk conversation or
        // handoff ever leads to two.
        let mut items = puts.into_iter().map(|item| self.put(item)).collect::<Result<Vec<_>, _>>()?;
        for key in stale {
            let delete = Delete::builder().table_name(&self.table).set_key(Some(key)).build().map_err(build_err)?;
            items.push(TransactWriteItem::builder().delete(delete).build());
        }
        match self.transact(items, "put desk link").await? {
            Tx::Done => Ok(()),
            Tx::Cancelled(codes) => {
                Err(StoreError::Unavailable(format!("dynamodb put desk link cancelled: {codes:?}")))
            }
        }
    }

    async fn desk_link(&self, agent: &str, desk_conversation_id: &str) -> Result<Option<DeskLink>, StoreError> {
        let pk = desk_pk(agent, desk_conversation_id);
        self.get(&pk, "MAP").await?.map(|item| link_from_item(&item, &pk)).transpose()
    }

    async fn desk_link_for_handoff(&self, handoff_id: &str) -> Result<Option<DeskLink>, StoreError> {
        let pk = handoff_pk(handoff_id);
        self.get(&pk, "MAP").await?.map(|item| link_from_item(&item, &pk)).transpose()
    }

    async fn set_desk_status(&self, agent: &str, status: &DeskStatusRecord) -> Result<(), StoreError> {
        let mut item = key_of(agent_pk(agent), "DESKSTATUS");
        item.insert("doc".into(), s(encode(status)?));
        item.insert("schema".into(), n(RECORD_SCHEMA));
        self.put_plain(item, "put desk status").await?;
        self.desk_statuses.keep(agent, Some(status.clone()));
        Ok(())
    }

    async fn desk_status(&self, agent: &str) -> Result<Option<DeskStatusRecord>, StoreError> {
        if let Some(status) = self.desk_statuses.get(agent) {
            return Ok(status);
        }
        // Kept for a while like the config, so read the same way (see `get_agent`).
        let status = self
            .get_with(&agent_pk(agent), "DESKSTATUS", !self.desk_statuses.keeps())
            .await?
            .map(|item| decode_doc(&item, &format!("desk status {agent}"), RECORD_SCHEMA))
            .transpose()?;
        self.desk_statuses.keep(agent, status.clone());
        Ok(status)
    }

    /// Trace lines in `at` order of their items (write order within one process for equal
    /// times), with this store's kept lines written first. Items of earlier builds hold one
    /// line each as plain attributes.
    async fn trace(&self, key: &ConversationKey) -> Result<Vec<TraceEntry>, StoreError> {
        if let Err(e) = self.flush_trace().await {
            tracing::warn!(conversation = %key, error = %e, "kept seen marks were not written before the trace was read");
        }
        let conv = conv_pk(key);
        // Trace items sort by their first line's `at`; seen marks with lines are placed among
        // them by their own `at` (the sort is stable).
        let mut items: Vec<(i64, Vec<TraceEntry>)> = Vec::new();
        for item in self.query_prefix(&conv, "TRACE#").await? {
            let what = format!("trace {}", get_s(&item, SK, &conv)?);
            if item.contains_key("doc") {
                let lines: Vec<TraceEntry> = decode_doc(&item, &what, TRACE_SCHEMA)?;
                items.push((lines.first().map_or(0, |l| l.at.0), lines));
            } else {
                let at = get_n(&item, "at", &what)?;
                items.push((
                    at,
                    vec![TraceEntry {
                        at: Millis(at),
                        what: get_s(&item, "what", &what)?.to_string(),
                        id: get_s(&item, "id", &what)?.to_string(),
                        detail: get_s(&item, "detail", &what)?.to_string(),
                    }],
                ));
            }
        }
        for item in self.query_prefix(&conv, SEEN).await?.iter().filter(|i| i.contains_key("doc")) {
            let what = format!("seen mark {}", get_s(item, SK, &conv)?);
            items.push((get_n(item, "at", &what)?, decode_doc(item, &what, TRACE_SCHEMA)?));
        }
        items.sort_by_key(|(at, _)| *at);
        Ok(items.into_iter().flat_map(|(_, lines)| lines).collect())
    }

    async fn export_conversation(&self, key: &ConversationKey) -> Result<ConversationData, StoreError> {
        self.export(key).await
    }

    async fn erase_conversation(&self, key: &ConversationKey) -> Result<u64, StoreError> {
        self.erase(key).await
    }
}

#[async_trait::async_trait]
impl crate::timers::ArmedTimers for DynamoStore {
    /// The timer armed on `key`'s session (`due_gen`, `timer_due`, `timer_msg`), read
    /// strongly consistent: the commit that armed a timer came before its message was sent.
    async fn armed_timer(&self, key: &ConversationKey) -> Result<Option<crate::timers::StoredTimer>, StoreError> {
        let pk = conv_pk(key);
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key_of(pk.as_str(), "SESSION")))
            .projection_expression("#g, #t, #m")
            .expression_attribute_names("#g", DUE_GEN)
            .expression_attribute_names("#t", TIMER_DUE)
            .expression_attribute_names("#m", TIMER_MSG)
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("get the armed timer", &e))?;
        let Some(item) = out.item.filter(|item| item.contains_key(DUE_GEN)) else {
            return Ok(None);
        };
        let millis = |name: &str| get_n::<i64>(&item, name, &pk).ok().map(Millis);
        Ok(Some(crate::timers::StoredTimer {
            generation: get_n(&item, DUE_GEN, &pk)?,
            due: millis(TIMER_DUE),
            message_due: millis(TIMER_MSG),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_unix_seconds_plus_retention() {
        assert_eq!(expiry(Millis(10_999), 5), 15);
        assert_eq!(expiry(Millis(-1), 5), 5);
    }

    #[test]
    fn decode_refuses_newer_schema_and_hides_values() {
        let mut item = key_of("AGENT#demo", "CONFIG");
        item.insert("schema".into(), n(AGENT_SCHEMA + 1));
        item.insert("doc".into(), s("{}"));
        let err = decode_doc::<Agent>(&item, "agent demo", AGENT_SCHEMA).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
        item.insert("schema".into(), n(AGENT_SCHEMA));
        item.insert("doc".into(), s(r#"{"id": 5, "password": "hunter2"}"#));
        let err = decode_doc::<Agent>(&item, "agent demo", AGENT_SCHEMA).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    /// Sessions are written deflated; one written as a JSON string by an earlier build
    /// still reads, and a binary that does not inflate, or inflates past the limit, is corrupt.
    #[test]
    fn session_documents_are_deflated_and_both_forms_read() {
        let key = ConversationKey::new("demo", baton_core::Channel::Widget, "u1").unwrap();
        let mut session = baton_core::Session::new(key);
        for i in 0..40 {
            let text = format!("message number {i} about my order");
            session.history.push(baton_core::Turn { role: baton_core::Role::User, text, at: Millis(i) });
        }
        let json = encode(&session).unwrap();
        let mut item = key_of("CONV#demo", "SESSION");
        item.insert("schema".into(), n(SESSION_SCHEMA));
        item.insert("doc".into(), encode_deflated(&session).unwrap());
        let AttributeValue::B(deflated) = &item["doc"] else { panic!("not binary") };
        assert!(deflated.as_ref().len() * 3 < json.len(), "{} of {}", deflated.as_ref().len(), json.len());
        assert_eq!(decode_doc::<baton_core::Session>(&item, "session", SESSION_SCHEMA).unwrap(), session);

        item.insert("doc".into(), s(json));
        assert_eq!(decode_doc::<baton_core::Session>(&item, "session", SESSION_SCHEMA).unwrap(), session);

        item.insert("doc".into(), AttributeValue::B(Blob::new(b"not deflate".to_vec())));
        let err = decode_doc::<baton_core::Session>(&item, "session", SESSION_SCHEMA).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
        let bomb = miniz_oxide::deflate::compress_to_vec(&vec![b' '; MAX_INFLATED_DOC + 1], 6);
        item.insert("doc".into(), AttributeValue::B(Blob::new(bomb)));
        let err = decode_doc::<baton_core::Session>(&item, "session", SESSION_SCHEMA).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    }
}
