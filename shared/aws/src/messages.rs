//! The user-facing message log on DynamoDB, for channels whose users fetch their messages
//! (the web widget, pushed to or polling on AWS). Same API as the embedded store's.
//!
//! Appending takes two plain writes: the conversation's `MSGSEQ` counter is incremented and
//! records the idempotency key of the append (an `UpdateItem` that fails when that key was
//! the last one), then the `MSG#{seq}` item is put. Appends of one conversation are serial
//! (its outbox runs in order, one drain at a time), and an effect is only ever run again
//! before the conversation's next one, so the last key is the only one a re-run can repeat:
//! the re-run finds its message, or writes it under the number it took if the run before
//! died between the two writes. Sequence numbers become visible in order; a number can be
//! left unused (cursors skip gaps).
//!
//! Earlier builds kept an `IDEM#{key}` marker per message, written with it in a transaction
//! (five write units a message instead of two); the first append after an upgrade checks the
//! marker of its key, so a re-run across the upgrade is still caught.

use crate::store::{decode_doc, encode, get_n, key_of, n, s, ttl, unavailable, DynamoStore, RECORD_SCHEMA};
use crate::table::{conv_pk, key_part, EXPIRES_AT};
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use baton_core::model::{ConversationKey, Millis, OutMessage};
use baton_core::ports::{LoggedMessage, StoreError};

/// The marker earlier builds wrote for each appended message.
fn idem_pk(idempotency_key: &str) -> String {
    format!("IDEM#{}", key_part(idempotency_key))
}

fn msg_sk(seq: i64) -> String {
    format!("MSG#{seq:020}")
}

/// The counter's attribute holding the key of the last append.
const LAST_KEY: &str = "last_idem";

impl DynamoStore {
    /// Append `message` unless `idempotency_key` was appended before. Returns the new
    /// message's sequence number, or `None` for a duplicate. Messages expire at `keep_until`
    /// (the agent's retention), the counter with the last one.
    pub async fn append_user_message(
        &self,
        key: &ConversationKey,
        idempotency_key: &str,
        message: &OutMessage,
        at: Millis,
        keep_until: Millis,
    ) -> Result<Option<i64>, StoreError> {
        let conv = conv_pk(key);
        let counter_key = format!("{conv}/MSGSEQ");
        let expires = ttl(keep_until);
        let taken = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_of(conv.as_str(), "MSGSEQ")))
            .update_expression("ADD #seq :one SET #exp = :exp, #last = :key")
            .condition_expression("attribute_not_exists(#last) OR #last <> :key")
            .expression_attribute_names("#seq", "seq")
            .expression_attribute_names("#exp", EXPIRES_AT)
            .expression_attribute_names("#last", LAST_KEY)
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":exp", n(expires))
            .expression_attribute_values(":key", s(idempotency_key))
            .return_values(ReturnValue::AllOld)
            .send()
            .await;
        let seq = match taken {
            Ok(out) => {
                let old = out.attributes.unwrap_or_default();
                let before: i64 = if old.contains_key("seq") { get_n(&old, "seq", &counter_key)? } else { 0 };
                // A counter of an earlier build: its appends left markers instead.
                if before > 0
                    && !old.contains_key(LAST_KEY)
                    && self.get(&idem_pk(idempotency_key), "-").await?.is_some()
                {
                    return Ok(None);
                }
                before.checked_add(1).ok_or_else(|| StoreError::Corrupt {
                    key: counter_key.clone(),
                    message: "counter is out of range".into(),
                })?
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_conditional_check_failed_exception()) => {
                // The last append had this key: this is a re-run of it.
                let counter = self.get(&conv, "MSGSEQ").await?.ok_or_else(|| StoreError::Corrupt {
                    key: counter_key.clone(),
                    message: "the counter vanished during an append".into(),
                })?;
                let seq: i64 = get_n(&counter, "seq", &counter_key)?;
                if self.get(&conv, &msg_sk(seq)).await?.is_some() {
                    return Ok(None);
                }
                seq
            }
            Err(e) => return Err(unavailable("next message number", &e)),
        };
        let mut item = key_of(conv.as_str(), msg_sk(seq));
        item.insert("seq".into(), n(seq));
        item.insert("at".into(), n(at.0));
        item.insert("doc".into(), s(encode(message)?));
        item.insert("idem".into(), s(idempotency_key));
        item.insert("schema".into(), n(RECORD_SCHEMA));
        item.insert(EXPIRES_AT.into(), n(expires));
        self.put_plain(item, "append message").await?;
        Ok(Some(seq))
    }

    /// Messages of `key` with a sequence number above `after_seq`, oldest first
    /// (strongly consistent, so a poll never skips a number that is about to appear).
    pub async fn user_messages_after(
        &self,
        key: &ConversationKey,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<(i64, Millis, OutMessage)>, StoreError> {
        let rows = self.logged_after(key, after_seq, limit).await?;
        Ok(rows.into_iter().map(|m| (m.seq, m.at, m.message)).collect())
    }

    async fn logged_after(
        &self,
        key: &ConversationKey,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<LoggedMessage>, StoreError> {
        if limit == 0 || after_seq == i64::MAX {
            return Ok(Vec::new());
        }
        let conv = conv_pk(key);
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#pk = :pk AND #sk BETWEEN :from AND :to")
            .expression_attribute_names("#pk", crate::table::PK)
            .expression_attribute_names("#sk", crate::table::SK)
            .expression_attribute_values(":pk", s(conv.as_str()))
            .expression_attribute_values(":from", s(msg_sk(after_seq.max(0) + 1)))
            .expression_attribute_values(":to", s(msg_sk(i64::MAX)))
            .consistent_read(true)
            .limit(i32::try_from(limit).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(|e| unavailable("query messages", &e))?;
        out.items()
            .iter()
            .map(|item| {
                let seq: i64 = get_n(item, "seq", &conv)?;
                let what = format!("user message {seq}");
                let id = match item.get("idem") {
                    Some(AttributeValue::S(v)) => v.clone(),
                    _ => String::new(), // written before ids were kept
                };
                let at = Millis(get_n(item, "at", &what)?);
                Ok(LoggedMessage { id, seq, at, message: decode_doc(item, &what, RECORD_SCHEMA)? })
            })
            .collect()
    }
}

#[async_trait::async_trait]
impl baton_core::ports::MessageLog for DynamoStore {
    async fn append(
        &self,
        key: &ConversationKey,
        idempotency_key: &str,
        message: &OutMessage,
        at: Millis,
        keep_until: Millis,
    ) -> Result<Option<i64>, StoreError> {
        self.append_user_message(key, idempotency_key, message, at, keep_until).await
    }

    async fn after(
        &self,
        key: &ConversationKey,
        cursor: i64,
        limit: usize,
    ) -> Result<Vec<baton_core::ports::LoggedMessage>, StoreError> {
        self.logged_after(key, cursor, limit).await
    }
}
