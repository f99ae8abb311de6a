//! The outbox inside the session item. A commit's effects are attributes of the session item
//! (`e#{seq}`, each a map of the effect and its attempts), written by the commit's one
//! conditional `UpdateItem`, and an effect is completed by removing its attribute: no
//! transaction, which would bill the session and every effect twice, and no item per effect.
//!
//! Every write to the session item is billed per started KB of the whole item, so an inline
//! effect is kept short: its deflated document (`d`), when it is due (`t`) and, once it has
//! failed, its attempts (`a`); the document carries the effect's id. Layout 2 wrote
//! `ob#{seq:020}` with `effect_id`, `doc`, `schema`, `attempts` and `next_attempt_at` (about
//! 75 bytes more per effect, enough to take most commits with an effect past 1 KB): such
//! entries are still read, deferred and completed.
//!
//! Effects that would make the session item large (many effects waiting behind a desk that
//! is down) go to outbox items of their own (`OUTBOX#{seq:020}#{id}`), written in one
//! transaction with the session as earlier builds wrote every effect: every write to the
//! session item is billed by its whole size, so it stays small. Sessions of earlier builds
//! may have such items too. Both kinds share one sequence (`version * 1000 + index`), so the
//! pending effects are the two lists merged in that order.
//!
//! The conversation's drain lease is on the same item ([`DrainLeases`] below), so the commit
//! that writes effects can take it too, and taking or giving it back answers with the outbox.

use crate::store::{
    conditional, decode_doc, decode_field_as, get_n, get_s, lock, n, remember, s, seen_key, DynamoStore, Item,
    LAST_EVENT,
};
use crate::table::{conv_pk, key_part, shard_of, OBX_DUE, OBX_SHARD, PK, SK};
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use baton_core::effect::{PendingEffect, EFFECT_SCHEMA};
use baton_core::model::{ConversationKey, Millis};
use baton_core::ports::{Completion, DrainLease, DrainLeases, OutboxItem, Store, StoreError};
use std::collections::HashMap;

/// Prefix of an inline effect's attribute on the session item.
pub(crate) const INLINE: &str = "e#";
/// Prefix of an inline effect of layout 2 (its sequence zero-padded to 20 digits).
const INLINE_V2: &str = "ob#";
/// The schema of a compact inline effect's document when the entry does not say (`v`).
const INLINE_EFFECT_SCHEMA: u32 = 1;
/// Prefix of an outbox item's sort key.
pub(crate) const ITEM: &str = "OUTBOX#";
/// Set on session items created by this layout: the conversation has no outbox items unless
/// `SPILLED` is set too. Sessions of earlier builds lack it, so their items are looked for.
pub(crate) const INLINE_ONLY: &str = "inline_outbox";
/// Set by a commit whose effects went to outbox items.
pub(crate) const SPILLED: &str = "outbox_spilled";
/// Inline effects the session item takes at most, by count and by bytes: past that a
/// commit's effects go to items of their own.
const MAX_INLINE: usize = 32;
const INLINE_BUDGET: usize = 4 * 1024;

pub(crate) fn inline_name(seq: u64) -> String {
    format!("{INLINE}{seq}")
}

pub(crate) fn item_sk(seq: u64, effect_id: &str) -> String {
    format!("{ITEM}{seq:020}#{}", key_part(effect_id))
}

/// The sequence number in a place (an inline attribute's name or an item's sort key).
fn seq_of(place: &str) -> Option<u64> {
    if let Some(digits) = place.strip_prefix(INLINE) {
        return digits.parse().ok();
    }
    let digits = place.strip_prefix(INLINE_V2).or_else(|| place.strip_prefix(ITEM))?;
    digits.get(..20)?.parse().ok()
}

pub(crate) fn is_inline(place: &str) -> bool {
    place.starts_with(INLINE) || place.starts_with(INLINE_V2)
}

/// The names of an inline effect's attempts and of its next attempt's time, by its layout.
fn attempt_fields(place: &str) -> (&'static str, &'static str) {
    if place.starts_with(INLINE) {
        ("a", "t")
    } else {
        ("attempts", "next_attempt_at")
    }
}

/// A new effect's attributes: the map of an inline entry, or the body of an outbox item. It is
/// due at once: its first attempt follows the commit. It stays out of the `outbox_due` index
/// (entering and leaving it would bill two more writes): the worker that commits it runs it
/// next, and if that worker dies first SQS brings the event back. `defer_effect` and
/// `watch_pending` put it in.
pub(crate) fn effect_attrs(effect: &PendingEffect, at: Millis) -> Result<Item, StoreError> {
    let mut attrs = Item::new();
    attrs.insert("effect_id".into(), s(effect.id.as_str()));
    attrs.insert("doc".into(), crate::store::encode_deflated(effect)?);
    attrs.insert("schema".into(), n(EFFECT_SCHEMA));
    attrs.insert("attempts".into(), n(0));
    attrs.insert("next_attempt_at".into(), n(at.0));
    Ok(attrs)
}

/// A new effect's map on the session item (see the module's comment): due at once, like
/// [`effect_attrs`]'s.
pub(crate) fn inline_attrs(effect: &PendingEffect, at: Millis) -> Result<Item, StoreError> {
    let mut attrs = Item::new();
    attrs.insert("d".into(), crate::store::encode_deflated(effect)?);
    attrs.insert("t".into(), n(at.0));
    if EFFECT_SCHEMA != INLINE_EFFECT_SCHEMA {
        attrs.insert("v".into(), n(EFFECT_SCHEMA));
    }
    Ok(attrs)
}

/// DynamoDB's size of an attribute value (names and values in bytes; numbers about one byte
/// per two digits), close enough to keep the session item small.
fn value_size(v: &AttributeValue) -> usize {
    match v {
        AttributeValue::S(x) => x.len(),
        AttributeValue::N(x) => x.len() / 2 + 1,
        AttributeValue::B(x) => x.as_ref().len(),
        AttributeValue::M(m) => 3 + m.iter().map(|(k, v)| k.len() + value_size(v) + 1).sum::<usize>(),
        _ => 1,
    }
}

pub(crate) fn entry_size(name: &str, attrs: &Item) -> usize {
    name.len() + value_size(&AttributeValue::M(attrs.clone()))
}

/// How many inline effects a session item holds, and their bytes.
pub(crate) fn inline_load(item: &Item) -> (usize, usize) {
    item.iter()
        .filter(|(k, _)| is_inline(k))
        .fold((0, 0), |(count, bytes), (k, v)| (count + 1, bytes + k.len() + value_size(v)))
}

/// Whether effects of `count` and `bytes` fit inline next to `loaded` (`None`: unknown).
pub(crate) fn fits_inline(loaded: Option<(usize, usize)>, count: usize, bytes: usize) -> bool {
    loaded.is_some_and(|(c, b)| c + count <= MAX_INLINE && b + bytes <= INLINE_BUDGET)
}

pub(crate) fn may_have_items(session: Option<&Item>) -> bool {
    session.is_none_or(|item| !item.contains_key(INLINE_ONLY) || item.contains_key(SPILLED))
}

fn decode(place: &str, attrs: &Item) -> Result<OutboxItem, StoreError> {
    let what = format!("effect {place}");
    if !place.starts_with(INLINE) {
        let effect: PendingEffect = decode_doc(attrs, &what, EFFECT_SCHEMA)?;
        return Ok(OutboxItem {
            effect,
            attempts: get_n::<u64>(attrs, "attempts", &what)?.try_into().unwrap_or(u32::MAX),
            next_attempt_at: Millis(get_n(attrs, "next_attempt_at", &what)?),
        });
    }
    let schema = if attrs.contains_key("v") { get_n(attrs, "v", &what)? } else { INLINE_EFFECT_SCHEMA };
    let attempts: u64 = if attrs.contains_key("a") { get_n(attrs, "a", &what)? } else { 0 };
    Ok(OutboxItem {
        effect: decode_field_as(attrs, "d", &what, schema, EFFECT_SCHEMA)?,
        attempts: attempts.try_into().unwrap_or(u32::MAX),
        next_attempt_at: Millis(get_n(attrs, "t", &what)?),
    })
}

/// A conversation's outbox as read: the session item and its pending effects in order, each
/// with its place.
pub(crate) struct Outbox {
    pub session: Option<Item>,
    pub pending: Vec<(String, OutboxItem)>,
}

impl DynamoStore {
    /// The session item (strongly consistent, without a lease given back at its last event's
    /// seen mark: see [`Settlement`]) and, when it may have any, the outbox items.
    pub(crate) async fn read_outbox(&self, conv: &str) -> Result<Outbox, StoreError> {
        let mut session = self.get(conv, "SESSION").await?;
        if let Some(item) = session.as_mut() {
            self.settled_view(conv, item).await?;
        }
        self.outbox_of(conv, session).await
    }

    /// `item`, a session item as read, without the drain lease it shows and the effects that
    /// lease's drain completed, when the drain gave it back at the seen mark of the session's
    /// last event (see [`Settlement`]): from memory when this store knows, else from the mark
    /// (one strongly consistent read, made only while the item shows a lease).
    pub(crate) async fn settled_view(&self, conv: &str, item: &mut Item) -> Result<(), StoreError> {
        let Some(AttributeValue::S(holder)) = item.get(DRAIN_BY) else {
            // Whatever this store remembers was taken out by another's write.
            self.forget_settlement(conv);
            return Ok(());
        };
        let known = self.settlement(conv);
        let settlement = match known {
            Some(known) if known.holder == *holder => known,
            other => {
                if other.is_some() {
                    self.forget_settlement(conv);
                }
                let Some(AttributeValue::S(last)) = item.get(LAST_EVENT) else {
                    return Ok(());
                };
                // Committed here and not yet marked: a lease given back since would be known.
                if self.committed_unmarked(conv, last) {
                    return Ok(());
                }
                let Some(mark) = self.get(conv, &seen_key(last)).await? else {
                    return Ok(());
                };
                match Settlement::of_mark(&mark) {
                    Some(found) if found.holder == *holder => {
                        self.remember_settlement(conv, found.clone());
                        found
                    }
                    _ => return Ok(()),
                }
            }
        };
        item.remove(DRAIN_BY);
        item.remove(DRAIN_UNTIL);
        for place in &settlement.places {
            item.remove(place);
        }
        Ok(())
    }

    /// Remember that `settlement`'s lease was given back, for the next write of the session
    /// item here to take it out.
    pub(crate) fn remember_settlement(&self, conv: &str, settlement: Settlement) {
        remember(&self.settled, MAX_REMEMBERED, conv, settlement);
    }

    /// The settlement of `conv` this store knows, for a write of its session item.
    pub(crate) fn settlement(&self, conv: &str) -> Option<Settlement> {
        lock(&self.settled).get(conv).cloned()
    }

    /// Forget `conv`'s settlement once a write took it out (or was refused: the next load
    /// reads it again).
    pub(crate) fn forget_settlement(&self, conv: &str) {
        lock(&self.settled).remove(conv);
    }

    /// Writes `settlement` to the session item: the lease given back and its drain's effects
    /// completed, unless another holder has the lease now.
    pub(crate) async fn release_settled(&self, conv: &str, settlement: &Settlement) -> Result<(), StoreError> {
        let release = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(crate::store::key_of(conv, "SESSION")))
            .condition_expression("#by = :by")
            .expression_attribute_names("#by", DRAIN_BY)
            .expression_attribute_names("#until", DRAIN_UNTIL)
            .expression_attribute_values(":by", s(settlement.holder.as_str()));
        let (release, places) = name_places(release, &settlement.places);
        let release = release.update_expression(format!("REMOVE #by, #until, {places}"));
        conditional("release the drain lease", release.send().await)?;
        self.forget_settlement(conv);
        Ok(())
    }

    /// The outbox of a session item as read (or as a write returned it), with the outbox
    /// items when it may have any.
    pub(crate) async fn outbox_of(&self, conv: &str, session: Option<Item>) -> Result<Outbox, StoreError> {
        let mut found: Vec<(u64, String, OutboxItem)> = Vec::new();
        if let Some(item) = &session {
            for (name, value) in item.iter().filter(|(k, _)| is_inline(k)) {
                let (Some(seq), AttributeValue::M(attrs)) = (seq_of(name), value) else {
                    return Err(StoreError::Corrupt { key: format!("{conv} {name}"), message: "not an effect".into() });
                };
                found.push((seq, name.clone(), decode(name, attrs)?));
            }
        }
        if may_have_items(session.as_ref()) {
            for item in self.query_prefix(conv, ITEM).await? {
                let sk = get_s(&item, SK, conv)?;
                let seq = seq_of(sk).ok_or_else(|| StoreError::Corrupt {
                    key: format!("{conv} {sk}"),
                    message: "no sequence".into(),
                })?;
                found.push((seq, sk.to_string(), decode(sk, &item)?));
            }
        }
        found.sort_by_key(|(seq, _, _)| *seq);
        let pending = found.into_iter().map(|(_, place, item)| (place, item)).collect();
        Ok(Outbox { session, pending })
    }

    /// Removes an inline effect; false when it was already gone. Leaving the session with no
    /// inline effect also takes it out of the `outbox_due` index, if it was in.
    pub(crate) async fn complete_inline(&self, conv: &str, name: &str) -> Result<bool, StoreError> {
        let removed = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(crate::store::key_of(conv, "SESSION")))
            .update_expression("REMOVE #e")
            .condition_expression("attribute_exists(#e)")
            .expression_attribute_names("#e", name)
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        let after = match removed {
            Ok(out) => out.attributes.unwrap_or_default(),
            Err(e) => return conditional("complete effect", Err::<(), _>(e)),
        };
        self.leave_due_index_if_done(conv, &after).await;
        Ok(true)
    }

    /// After an inline effect was removed: a session item (`after`, as the write returned
    /// it) left with no inline effect leaves the `outbox_due` index, if it was in.
    async fn leave_due_index_if_done(&self, conv: &str, after: &Item) {
        if after.contains_key(OBX_DUE) && inline_load(after).0 == 0 {
            self.leave_due_index(conv, after).await;
        }
    }

    /// Records a failed attempt of an inline effect and puts the session in the
    /// `outbox_due` index at the retry's time, unless it is in already: its time there is
    /// then no later than the head's (an effect that is not the head may be deferred past
    /// it), which is all the sweeper needs, as it reads the head back. False when the effect
    /// was gone.
    pub(crate) async fn defer_inline(
        &self,
        key: &ConversationKey,
        conv: &str,
        name: &str,
        attempts: u32,
        next_attempt_at: Millis,
    ) -> Result<bool, StoreError> {
        let (attempts_field, next_field) = attempt_fields(name);
        let updated = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(crate::store::key_of(conv, "SESSION")))
            .update_expression("SET #e.#a = :a, #e.#n = :n, #d = if_not_exists(#d, :n), #s = :s")
            .condition_expression("attribute_exists(#e)")
            .expression_attribute_names("#e", name)
            .expression_attribute_names("#a", attempts_field)
            .expression_attribute_names("#n", next_field)
            .expression_attribute_names("#d", OBX_DUE)
            .expression_attribute_names("#s", OBX_SHARD)
            .expression_attribute_values(":a", n(attempts))
            .expression_attribute_values(":n", n(next_attempt_at.0))
            .expression_attribute_values(":s", s(shard_of(key)))
            .send()
            .await;
        conditional("defer effect", updated)
    }

    /// Puts the session in the `outbox_due` index at `due`, unless it is in already.
    pub(crate) async fn watch_inline(&self, key: &ConversationKey, conv: &str, due: Millis) -> Result<(), StoreError> {
        let updated = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(crate::store::key_of(conv, "SESSION")))
            .update_expression("SET #d = :d, #s = :s")
            .condition_expression("attribute_exists(#pk) AND attribute_not_exists(#d)")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#d", OBX_DUE)
            .expression_attribute_names("#s", OBX_SHARD)
            .expression_attribute_values(":d", n(due.0))
            .expression_attribute_values(":s", s(shard_of(key)))
            .send()
            .await;
        // A failed condition: the session is gone or in the index already; either is fine.
        conditional("watch pending effects", updated)?;
        Ok(())
    }

    /// Takes a session item with no inline effect out of the `outbox_due` index, unless a
    /// commit (which may have added effects) came since `seen` was read. Best effort: one
    /// left in is read again by the next sweep and taken out then.
    pub(crate) async fn leave_due_index(&self, conv: &str, seen: &Item) {
        let Ok(version) = get_n::<u64>(seen, "version", conv) else {
            return;
        };
        let updated = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(crate::store::key_of(conv, "SESSION")))
            .update_expression("REMOVE #d, #s")
            .condition_expression("#v = :v")
            .expression_attribute_names("#d", OBX_DUE)
            .expression_attribute_names("#s", OBX_SHARD)
            .expression_attribute_names("#v", "version")
            .expression_attribute_values(":v", n(version))
            .send()
            .await;
        // A refused condition (a commit came since) is fine; an error is only logged.
        if let Err(e) = conditional("leave the outbox index", updated) {
            tracing::warn!(conversation = conv, error = %e, "session left in the outbox index");
        }
    }

    /// What `load_session` saw of a session item, for the commit that follows.
    pub(crate) fn remember_loaded(&self, conv: &str, version: u64, seen: Loaded) {
        remember(&self.loaded, MAX_REMEMBERED, conv, (version, seen));
    }

    /// The session item of `conv` at `version` as last loaded; a new session has no inline
    /// effect and no timer.
    pub(crate) fn loaded_at(&self, conv: &str, version: u64) -> Option<Loaded> {
        if version == 0 {
            return Some(Loaded::default());
        }
        lock(&self.loaded).get(conv).filter(|(v, _)| *v == version).map(|(_, seen)| *seen)
    }
}

/// What a session item held when loaded, beyond its document: how many inline effects in how
/// many bytes (the commit keeps the item small with it), its key in the `due` index, the
/// generation of its armed timer, the `due` of the last timer message sent for it, whether
/// its events may have seen marks of earlier builds, the highest Telegram update it applied,
/// and whether it was just loaded (not yet asked about by `is_seen`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Loaded {
    pub inline: (usize, usize),
    pub due_at: Option<i64>,
    pub timer: Option<u64>,
    pub timer_msg: Option<i64>,
    pub legacy_marks: crate::store::LegacyMarks,
    pub tg_max: Option<i64>,
    pub fresh: bool,
}

/// Conversations remembered at most in each of the loaded items, the settlements and the
/// unwatched leases; past that each memory starts over. A loaded item missed sends that
/// commit's effects to items of their own and writes its timer's index key; a settlement
/// missed is read from the mark; an unwatched lease missed (its drain failed before its
/// release, or memory started over) is released by a write of its own.
const MAX_REMEMBERED: usize = 10_000;

pub(crate) type LoadedSessions = std::sync::Mutex<HashMap<String, (u64, Loaded)>>;

/// The session item's drain lease: who holds it (a name new for every take) and until when
/// (ms). Both are set and removed together.
pub(crate) const DRAIN_BY: &str = "drain_by";
pub(crate) const DRAIN_UNTIL: &str = "drain_until";

/// A drain lease a commit claimed, with the outbox as the commit left it, and whether the
/// session item is in the `outbox_due` index.
#[derive(Debug)]
pub(crate) struct Claim {
    pub lease: DrainLease,
    pub until: i64,
    pub pending: Vec<(String, OutboxItem)>,
    pub indexed: bool,
}

/// On a seen mark: the drain lease its event's drain gave back, and the inline effects that
/// drain completed, recorded there instead of on the session item (see
/// [`DrainLeases::release`] below).
pub(crate) const RELEASED_BY: &str = "rel_by";
pub(crate) const RELEASED_DONE: &str = "rel_done";

/// A drain lease given back at a seen mark, with the places of the effects its drain
/// completed. The session item keeps showing both until its next write, which takes them
/// out: whoever reads the item meanwhile sees through them ([`DynamoStore::settled_view`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settlement {
    pub holder: String,
    pub places: Vec<String>,
}

/// `update` with a name `#done{i}` for each of `places` (inline effects' attributes), and
/// those names joined for its `REMOVE` clause.
fn name_places(mut update: UpdateItemFluentBuilder, places: &[String]) -> (UpdateItemFluentBuilder, String) {
    let names: Vec<String> = (0..places.len()).map(|i| format!("#done{i}")).collect();
    for (name, place) in names.iter().zip(places) {
        update = update.expression_attribute_names(name, place);
    }
    (update, names.join(", "))
}

impl Settlement {
    /// The settlement a seen mark records, if any.
    pub(crate) fn of_mark(mark: &Item) -> Option<Settlement> {
        let (Some(AttributeValue::S(holder)), Some(AttributeValue::Ss(places))) =
            (mark.get(RELEASED_BY), mark.get(RELEASED_DONE))
        else {
            return None;
        };
        Some(Settlement { holder: holder.clone(), places: places.clone() })
    }

    /// Its attributes on a seen mark.
    pub(crate) fn mark_attrs(&self) -> [(String, AttributeValue); 2] {
        [
            (RELEASED_BY.to_string(), s(self.holder.as_str())),
            (RELEASED_DONE.to_string(), AttributeValue::Ss(self.places.clone())),
        ]
    }
}

/// How old a commit's claim may be for the drain to start from it as is (else the drain
/// takes the lease again, for its whole length).
const FRESH_CLAIM_MS: i64 = 5_000;

/// The drain lease lives on the session item. A commit that writes inline effects claims it
/// in the same `UpdateItem` when nobody holds it (the worker that commits runs the effects
/// next), and the item it returns is the outbox the drain starts from: a drain right after
/// its own commit takes the lease without a write or a read. Taking it otherwise and giving
/// it back are one conditional `UpdateItem` each, answered with the item. Outbox items
/// (effects too large for the session item, and those of earlier builds, which took a lease
/// of their own) are run under that earlier lease too, so a worker of the previous build
/// still running during a deploy never runs them at the same time.
#[async_trait::async_trait]
impl DrainLeases for DynamoStore {
    async fn take(
        &self,
        key: &ConversationKey,
        now: Millis,
        until: Millis,
    ) -> Result<Option<(DrainLease, Vec<OutboxItem>)>, StoreError> {
        let conv = conv_pk(key);
        let claim = lock(&self.claimed).remove(&conv);
        let (lease, pending, indexed) = match claim {
            Some(c) if c.until >= until.0.saturating_sub(FRESH_CLAIM_MS) => (c.lease, c.pending, c.indexed),
            stale => {
                let lease = self.new_lease();
                // A claim too old to start from is still this drain's to take again.
                let mine = stale.map_or_else(|| lease.holder.clone(), |c| c.lease.holder);
                // A lease given back at a seen mark is free: taking it takes out its effects.
                let settled = self.settlement(&conv);
                let mut update = "SET #by = :by, #until = :until".to_string();
                let mut condition =
                    "attribute_exists(#pk) AND (attribute_not_exists(#by) OR #until < :now OR #by = :mine".to_string();
                let mut take = self
                    .client
                    .update_item()
                    .table_name(&self.table)
                    .set_key(Some(crate::store::key_of(conv.as_str(), "SESSION")))
                    .expression_attribute_names("#pk", PK)
                    .expression_attribute_names("#by", DRAIN_BY)
                    .expression_attribute_names("#until", DRAIN_UNTIL)
                    .expression_attribute_values(":by", s(lease.holder.as_str()))
                    .expression_attribute_values(":until", n(until.0))
                    .expression_attribute_values(":now", n(now.0))
                    .expression_attribute_values(":mine", s(mine))
                    .return_values(ReturnValue::AllNew);
                if let Some(settled) = &settled {
                    condition.push_str(" OR #by = :settled");
                    take = take.expression_attribute_values(":settled", s(settled.holder.as_str()));
                    let (named, places) = name_places(take, &settled.places);
                    take = named;
                    update.push_str(&format!(" REMOVE {places}"));
                }
                condition.push(')');
                let taken = take.update_expression(update).condition_expression(condition).send().await;
                match taken {
                    Ok(out) => {
                        if settled.is_some() {
                            self.forget_settlement(&conv);
                        }
                        let item = out.attributes;
                        let indexed = item.as_ref().is_none_or(|i| i.contains_key(OBX_DUE));
                        (lease, self.outbox_of(&conv, item).await?.pending, indexed)
                    }
                    Err(e) => {
                        conditional("take the drain lease", Err::<(), _>(e))?;
                        return Ok(None);
                    }
                }
            }
        };
        if !indexed {
            remember(&self.unwatched, MAX_REMEMBERED, &conv, lease.holder.clone());
        }
        if pending.iter().any(|(place, _)| !is_inline(place)) {
            let name = format!("drain:{key}");
            if !baton_core::ports::KeyValue::put_if_absent(self, &name, "draining", now, until).await? {
                self.release(key, &lease, None).await?;
                return Ok(None);
            }
            lock(&self.item_leases).insert(lease.holder.clone());
        }
        Ok(Some((lease, self.remember_places(&conv, pending))))
    }

    fn claimed(&self, key: &ConversationKey) -> bool {
        lock(&self.claimed).contains_key(&conv_pk(key))
    }

    async fn release(
        &self,
        key: &ConversationKey,
        lease: &DrainLease,
        done: Option<Completion>,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        let conv = conv_pk(key);
        // Taken outside the `outbox_due` index, with nothing deferred or watched since.
        let unwatched = lock(&self.unwatched).remove(&conv).is_some_and(|h| h == lease.holder);
        // An inline effect is completed in the release's own write; an outbox item first.
        let place = done.as_ref().and_then(|d| self.outbox_keys().get(&(conv.clone(), d.effect_id.clone())).cloned());
        let inline = match (done, place) {
            (Some(done), Some(place)) if is_inline(&place) => Some((place, done)),
            (Some(done), _) => {
                self.complete_effect(key, &done.effect_id, done.trace, done.keep_until).await?;
                None
            }
            (None, _) => None,
        };
        let item_lease = lock(&self.item_leases).remove(&lease.holder);
        if item_lease {
            baton_core::ports::KeyValue::delete(self, &format!("drain:{key}")).await?;
        }
        // The usual case: the drain ran every effect of its event's step, and the event's seen
        // mark is written next. The mark records the release and the completion, and the
        // session item keeps showing both until its next write takes them out (readers see
        // through them meanwhile: `settled_view`): one write per event fewer. A crash before
        // the mark runs the effect again, as a crash before a completion always could.
        if let Some((place, done)) = inline.as_ref().filter(|_| unwatched && !item_lease) {
            let settlement = Settlement { holder: lease.holder.clone(), places: vec![place.clone()] };
            if self.settle_at_mark(&conv, settlement, done.keep_until) {
                self.outbox_keys().remove(&(conv.clone(), done.effect_id.clone()));
                self.keep_trace_line(&conv, &done.trace, done.keep_until);
                return Ok(Vec::new());
            }
        }
        let (update, condition) = match &inline {
            Some(_) => ("REMOVE #by, #until, #e", "#by = :by AND attribute_exists(#e)"),
            None => ("REMOVE #by, #until", "#by = :by"),
        };
        let mut release = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(crate::store::key_of(conv.as_str(), "SESSION")))
            .update_expression(update)
            .condition_expression(condition)
            .expression_attribute_names("#by", DRAIN_BY)
            .expression_attribute_names("#until", DRAIN_UNTIL)
            .expression_attribute_values(":by", s(lease.holder.as_str()))
            .return_values(ReturnValue::AllNew);
        if let Some((place, _)) = &inline {
            release = release.expression_attribute_names("#e", place);
        }
        let after = match release.send().await {
            Ok(out) => out.attributes.unwrap_or_default(),
            Err(e) => {
                // Refused: another holder has the lease now (this one's ran out), or the effect
                // is gone. The effect is then completed on its own, as before the release.
                conditional("release the drain lease", Err::<(), _>(e))?;
                return match inline {
                    Some((_, done)) => {
                        self.complete_effect(key, &done.effect_id, done.trace, done.keep_until).await?;
                        self.release(key, lease, None).await
                    }
                    // The other holder's release reads what is left.
                    None => Ok(Vec::new()),
                };
            }
        };
        if let Some((_, done)) = inline {
            self.outbox_keys().remove(&(conv.clone(), done.effect_id));
            self.keep_trace_line(&conv, &done.trace, done.keep_until);
            self.leave_due_index_if_done(&conv, &after).await;
        }
        let outbox = self.outbox_of(&conv, Some(after)).await?;
        Ok(self.remember_places(&conv, outbox.pending))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_sort_by_their_sequence_whatever_their_kind() {
        assert_eq!(seq_of(&inline_name(12_003)), Some(12_003));
        assert_eq!(seq_of("ob#00000000000000012002"), Some(12_002));
        assert!(is_inline("ob#00000000000000012002"));
        assert_eq!(seq_of(&item_sk(12_001, "e1")), Some(12_001));
        assert_eq!(seq_of("TRACE#000"), None);
        assert!(is_inline(&inline_name(1)) && !is_inline(&item_sk(1, "x")));
    }

    #[test]
    fn effects_fit_inline_by_count_and_bytes_and_never_when_unknown() {
        assert!(fits_inline(Some((0, 0)), 1, 300));
        assert!(fits_inline(Some((31, 100)), 1, 300));
        assert!(!fits_inline(Some((32, 100)), 1, 300));
        assert!(!fits_inline(Some((1, 4000)), 1, 300));
        assert!(!fits_inline(None, 1, 10));
    }

    #[test]
    fn an_item_counts_its_inline_effects_only() {
        let effect = PendingEffect::for_event("e1", 0, baton_core::effect::Effect::CancelTimer);
        let attrs = inline_attrs(&effect, Millis(5)).unwrap();
        let mut item = Item::new();
        item.insert("doc".into(), s("x".repeat(500)));
        item.insert(inline_name(1000), AttributeValue::M(attrs.clone()));
        let (count, bytes) = inline_load(&item);
        assert_eq!(count, 1);
        assert_eq!(bytes, entry_size(&inline_name(1000), &attrs));
        assert!(bytes < 80, "{bytes}");
        // The layout-2 form of the same effect took about 75 bytes more.
        assert!(entry_size("ob#00000000000000001000", &effect_attrs(&effect, Millis(5)).unwrap()) > bytes + 60);
    }
}
