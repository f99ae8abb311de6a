//! The one table: item keys, attribute names and the table definition.
//!
//! | Item | pk / sk | Attributes |
//! |---|---|---|
//! | agent config | `AGENT#{id}` / `CONFIG` | `doc` (JSON), `schema` |
//! | agent index | `AGENTS` / `AGENT#{id}` | (lists agents without a scan) |
//! | access token | `AGENT#{id}` / `TOKEN#{sha256}` | `created_at`; never the token |
//! | token owner | `TOKEN#{sha256}` / `OWNER` | `agent` (one hash belongs to one agent) |
//! | desk status | `AGENT#{id}` / `DESKSTATUS` | `doc` |
//! | session | `CONV#{key}` / `SESSION` | `version`, `doc`, `schema` (the item's layout, 5; earlier builds wrote 1, the document's, then 2, 3 and 4), `doc_schema`, `last_event` (the id of the event it last applied), `legacy_marks_until` (ms; for 8 days after the first commit of layout 4 on an item of an earlier one, whose events' marks may be at the global key), `tg_max` (the highest Telegram update number it applied, from its first commit on), `expires_at` (the agent's retention after the last event); `due_gen`, `timer_due` while a timer is armed, `timer_msg` (the `due` of the last timer message sent), `due_shard`, `due_at` (the `due` index key: no later than the timer, and left behind when it is disarmed until the sweeper takes it out); pending effects inline as `e#{seq}` maps (`d` the deflated effect, `t` when it is due, `a` its attempts once one failed; layout 2's `ob#{seq:020}` maps of `effect_id`, `doc`, `schema`, `attempts`, `next_attempt_at` still read); `inline_outbox` on sessions created with this layout, `outbox_spilled` once effects went to outbox items; `obx_shard`, `obx_due` while an inline effect waits for a retry; `drain_by`, `drain_until` while a worker holds the conversation's drain lease, and after a drain that gave it back at its event's seen mark until the item's next write (which takes them out with the effects the mark names) |
//! | outbox effect | `CONV#{key}` / `OUTBOX#{seq:020}#{effect id}` | effects too large for the session item, and those of earlier builds: `effect_id`, `doc`, `schema`, `attempts`, `next_attempt_at`, `obx_shard`, `obx_due` |
//! | trace line | `CONV#{key}` / `TRACE#{at:020}#{n}` | `at`, `what`, `id`, `detail`, `expires_at` |
//! | seen event | `CONV#{key}` / `SEEN#{event id}` | `expires_at` (TTL: 8 days, or as long as its lines; 8 days past the conversation's retention when it records a release); the trace lines of the event's step and effects when the Lambda worker wrote it: `doc`, `schema`, `at` (the first line's); `rel_by`, `rel_done` when the event's drain gave its lease back here (the holder, and the places of the inline effects it completed) |
//! | seen event (earlier builds; read for 8 days after a session's upgrade, no longer written) | `SEEN#{event id}` / `-` | `expires_at` (TTL, 8 days) |
//! | desk link | `DESK#{agent}#{desk conversation}` / `MAP` and `HANDOFF#{id}` / `MAP`, a copy at `CONV#{key}` / `LINK#{handoff id}` (for erasure) | the link's four fields, `expires_at` |
//! | message counter | `CONV#{key}` / `MSGSEQ` | `seq`, `last_idem` (the last append's key), `expires_at` |
//! | user message | `CONV#{key}` / `MSG#{seq:020}` | `seq`, `at`, `doc`, `idem`, `expires_at` |
//! | message idempotency (earlier builds; read, no longer written) | `IDEM#{key}` / `-` | `expires_at` |
//! | widget WebSocket | `CONV#{key}` / `WS#{connection id}` | `expires_at` (API Gateway's two hours) |
//! | connector record (OAuth token, own message id; the drain lease of earlier builds, still taken for outbox items) | `KV#{name}` / `-` | `value`, `valid_until` (ms), `expires_at` |
//!
//! Two sparse GSIs, both KEYS_ONLY and sharded so no single partition takes every write:
//! `due` (`due_shard`, `due_at`) holds sessions with an armed timer (and, until the sweeper
//! comes by, some whose timer was disarmed or moved later), for the sweeper;
//! `outbox_due` (`obx_shard`, `obx_due`) holds sessions and outbox items with effects waiting
//! for a retry after a failure or crash. Candidates found there are read back from the table (strongly
//! consistent) before they count. TTL is on `expires_at` (unix seconds).
//!
//! [`create_table`] matches the `template.yaml` table in keys, indexes, billing and TTL;
//! point-in-time recovery and KMS encryption are left to the template (DynamoDB Local and
//! moto do not need them, and they cost money on a scratch table).

use crate::describe_sdk_error;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection, ProjectionType,
    ScalarAttributeType, TableStatus, TimeToLiveSpecification, TimeToLiveStatus,
};
use aws_sdk_dynamodb::Client;
use baton_core::model::ConversationKey;
use baton_core::ports::StoreError;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::time::Duration;

pub const PK: &str = "pk";
pub const SK: &str = "sk";
/// The table's TTL attribute (unix seconds).
pub const EXPIRES_AT: &str = "expires_at";

/// Sparse GSI of sessions with an armed timer.
pub const DUE_INDEX: &str = "due";
pub const DUE_SHARD: &str = "due_shard";
pub const DUE_AT: &str = "due_at";
/// The armed timer's generation, next to `due_at` on the session item, so the sweeper
/// reads it back without decoding the session.
pub const DUE_GEN: &str = "due_gen";
/// The armed timer's due time. `due_at`, the index's key, may be earlier, and stays when the
/// timer is disarmed (`due_gen` is then gone): commits only move it earlier, the sweeper
/// moves it later or takes it out. (Items of earlier builds lack `timer_due`: their
/// `due_at` is the timer's.)
pub const TIMER_DUE: &str = "timer_due";
/// The `due` of the newest message sent for the session's timer (it comes back then, or
/// sooner and is sent on). A timer armed no earlier than that while it is on its way sends
/// none: timeout-check sends that message on for the timer the session then has. Left in
/// place when the timer is disarmed or fires.
pub const TIMER_MSG: &str = "timer_msg";

/// Sparse GSI of outbox items by their next attempt.
pub const OUTBOX_INDEX: &str = "outbox_due";
pub const OBX_SHARD: &str = "obx_shard";
pub const OBX_DUE: &str = "obx_due";

/// Shards of both GSIs: enough to spread writes, few enough to query them all each sweep.
pub const SHARDS: u8 = 10;

/// Longest id used verbatim inside a key; longer ones are replaced by their hash so keys
/// stay within DynamoDB's limits (2048 bytes for pk, 1024 for sk).
const MAX_KEY_PART: usize = 512;

/// `id` as a key part: itself, or `sha256:{hex}` when it is too long for a key.
pub(crate) fn key_part(id: &str) -> Cow<'_, str> {
    if id.len() <= MAX_KEY_PART {
        Cow::Borrowed(id)
    } else {
        Cow::Owned(format!("sha256:{}", hex::encode(Sha256::digest(id.as_bytes()))))
    }
}

pub(crate) fn conv_pk(key: &ConversationKey) -> String {
    format!("CONV#{key}")
}

/// The conversation of a `CONV#...` partition key.
pub(crate) fn parse_conv_pk(pk: &str) -> Result<ConversationKey, StoreError> {
    let rest = pk
        .strip_prefix("CONV#")
        .ok_or_else(|| StoreError::Corrupt { key: pk.to_string(), message: "not a conversation key".into() })?;
    ConversationKey::parse(rest).map_err(|e| StoreError::Corrupt { key: pk.to_string(), message: e.to_string() })
}

pub(crate) fn agent_pk(agent: &str) -> String {
    format!("AGENT#{agent}")
}

/// The GSI shard of a conversation, stable across processes ("0".."9").
pub fn shard_of(key: &ConversationKey) -> String {
    let digest = Sha256::digest(key.to_string().as_bytes());
    (digest[0] % SHARDS).to_string()
}

fn build_err(e: aws_sdk_dynamodb::error::BuildError) -> StoreError {
    StoreError::Unavailable(format!("cannot build a DynamoDB request: {e}"))
}

/// Create the table as production has it: pay per request, both sparse GSIs, TTL on
/// `expires_at`. Idempotent: an existing table is left as it is (and TTL enabled if it is
/// not). Waits until the table is active.
pub async fn create_table(client: &Client, name: &str) -> Result<(), StoreError> {
    let attr = |n: &str, t: ScalarAttributeType| {
        AttributeDefinition::builder().attribute_name(n).attribute_type(t).build().map_err(build_err)
    };
    let key =
        |n: &str, t: KeyType| KeySchemaElement::builder().attribute_name(n).key_type(t).build().map_err(build_err);
    let due = GlobalSecondaryIndex::builder()
        .index_name(DUE_INDEX)
        .key_schema(key(DUE_SHARD, KeyType::Hash)?)
        .key_schema(key(DUE_AT, KeyType::Range)?)
        .projection(Projection::builder().projection_type(ProjectionType::KeysOnly).build())
        .build()
        .map_err(build_err)?;
    let outbox = GlobalSecondaryIndex::builder()
        .index_name(OUTBOX_INDEX)
        .key_schema(key(OBX_SHARD, KeyType::Hash)?)
        .key_schema(key(OBX_DUE, KeyType::Range)?)
        .projection(Projection::builder().projection_type(ProjectionType::KeysOnly).build())
        .build()
        .map_err(build_err)?;
    let created = client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attr(PK, ScalarAttributeType::S)?)
        .attribute_definitions(attr(SK, ScalarAttributeType::S)?)
        .attribute_definitions(attr(DUE_SHARD, ScalarAttributeType::S)?)
        .attribute_definitions(attr(DUE_AT, ScalarAttributeType::N)?)
        .attribute_definitions(attr(OBX_SHARD, ScalarAttributeType::S)?)
        .attribute_definitions(attr(OBX_DUE, ScalarAttributeType::N)?)
        .key_schema(key(PK, KeyType::Hash)?)
        .key_schema(key(SK, KeyType::Range)?)
        .global_secondary_indexes(due)
        .global_secondary_indexes(outbox)
        .send()
        .await;
    match created {
        Ok(_) => {}
        Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_in_use_exception()) => {}
        Err(e) => {
            return Err(StoreError::Unavailable(format!("cannot create table {name}: {}", describe_sdk_error(&e))))
        }
    }
    wait_until_active(client, name).await?;
    enable_ttl(client, name).await
}

/// Poll until the table is ACTIVE (seconds on AWS, at once on moto).
async fn wait_until_active(client: &Client, name: &str) -> Result<(), StoreError> {
    for _ in 0..300 {
        let out = client.describe_table().table_name(name).send().await.map_err(|e| {
            StoreError::Unavailable(format!("cannot describe table {name}: {}", describe_sdk_error(&e)))
        })?;
        let status = out.table().and_then(|t| t.table_status());
        if status == Some(&TableStatus::Active) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(StoreError::Unavailable(format!("table {name} did not become active")))
}

/// Enable TTL on `expires_at` unless it already is (enabling twice is an error on AWS).
async fn enable_ttl(client: &Client, name: &str) -> Result<(), StoreError> {
    let current = client
        .describe_time_to_live()
        .table_name(name)
        .send()
        .await
        .map_err(|e| StoreError::Unavailable(format!("cannot read TTL of {name}: {}", describe_sdk_error(&e))))?;
    if let Some(d) = current.time_to_live_description() {
        if matches!(d.time_to_live_status(), Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)) {
            return Ok(());
        }
    }
    let spec =
        TimeToLiveSpecification::builder().attribute_name(EXPIRES_AT).enabled(true).build().map_err(build_err)?;
    client
        .update_time_to_live()
        .table_name(name)
        .time_to_live_specification(spec)
        .send()
        .await
        .map_err(|e| StoreError::Unavailable(format!("cannot enable TTL on {name}: {}", describe_sdk_error(&e))))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_core::model::Channel;

    #[test]
    fn long_ids_are_hashed_short_ones_kept() {
        assert_eq!(key_part("tg:42"), "tg:42");
        let long = "x".repeat(MAX_KEY_PART + 1);
        let part = key_part(&long);
        assert!(part.starts_with("sha256:") && part.len() == 7 + 64, "{part}");
    }

    #[test]
    fn conversation_keys_round_trip_and_shard() {
        let k = ConversationKey::new("demo", Channel::Widget, "u#1").unwrap();
        assert_eq!(parse_conv_pk(&conv_pk(&k)).unwrap(), k);
        assert!(parse_conv_pk("AGENT#demo").is_err());
        let s: u8 = shard_of(&k).parse().unwrap();
        assert!(s < SHARDS);
        assert_eq!(shard_of(&k), shard_of(&k.clone()));
    }
}
