//! The user-facing message log on DynamoDB, for channels whose users fetch their messages
//! (the web widget short-polls it on AWS). Same API as the embedded store's.
//!
//! Appending takes two writes: the conversation's `MSGSEQ` counter is incremented
//! (UpdateItem ADD), then one transaction writes the `IDEM#{key}` marker (must be new) and
//! the `MSG#{seq}` item. A crash or a duplicate between the two only leaves a gap in the
//! sequence numbers, which cursors tolerate. Appends of one conversation are serial (its
//! outbox runs in order), so sequence numbers become visible in order.

use crate::store::{
    decode_doc, encode, failed_with, get_n, key_of, n, s, ttl, unavailable, DynamoStore, Tx, CONDITION_FAILED,
    RECORD_SCHEMA,
};
use crate::table::{conv_pk, key_part, EXPIRES_AT};
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use baton_core::model::{ConversationKey, Millis, OutMessage};
use baton_core::ports::{LoggedMessage, StoreError};

fn idem_pk(idempotency_key: &str) -> String {
    format!("IDEM#{}", key_part(idempotency_key))
}

fn msg_sk(seq: i64) -> String {
    format!("MSG#{seq:020}")
}

impl DynamoStore {
    /// Append `message` unless `idempotency_key` was appended before. Returns the new
    /// message's sequence number, or `None` for a duplicate. Messages and idempotency
    /// markers expire at `keep_until` (the agent's retention), the counter with the last one.
    pub async fn append_user_message(
        &self,
        key: &ConversationKey,
        idempotency_key: &str,
        message: &OutMessage,
        at: Millis,
        keep_until: Millis,
    ) -> Result<Option<i64>, StoreError> {
        let conv = conv_pk(key);
        let idem = idem_pk(idempotency_key);
        // The usual duplicate (a re-run effect) is caught without burning a number.
        if self.get(&idem, "-").await?.is_some() {
            return Ok(None);
        }
        let counter = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_of(conv.as_str(), "MSGSEQ")))
            .update_expression("ADD #seq :one SET #exp = :exp")
            .expression_attribute_names("#seq", "seq")
            .expression_attribute_names("#exp", EXPIRES_AT)
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":exp", n(ttl(keep_until)))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await
            .map_err(|e| unavailable("next message number", &e))?;
        let seq: i64 = match counter.attributes.as_ref().and_then(|a| a.get("seq")) {
            Some(AttributeValue::N(v)) => v.parse().map_err(|_| StoreError::Corrupt {
                key: format!("{conv}/MSGSEQ"),
                message: "counter is out of range".into(),
            })?,
            _ => {
                return Err(StoreError::Corrupt {
                    key: format!("{conv}/MSGSEQ"),
                    message: "counter update returned no number".into(),
                })
            }
        };
        let expires = ttl(keep_until);
        let mut marker = key_of(idem.as_str(), "-");
        marker.insert("conversation".into(), s(key.to_string()));
        marker.insert("seq".into(), n(seq));
        marker.insert(EXPIRES_AT.into(), n(expires));
        let mut item = key_of(conv.as_str(), msg_sk(seq));
        item.insert("seq".into(), n(seq));
        item.insert("at".into(), n(at.0));
        item.insert("doc".into(), s(encode(message)?));
        item.insert("idem".into(), s(idempotency_key));
        item.insert("schema".into(), n(RECORD_SCHEMA));
        item.insert(EXPIRES_AT.into(), n(expires));
        match self.transact(vec![self.put_new(marker)?, self.put_new(item)?], "append message").await? {
            Tx::Done => Ok(Some(seq)),
            Tx::Cancelled(codes) if failed_with(&codes, 0, CONDITION_FAILED) => Ok(None),
            Tx::Cancelled(codes) => {
                Err(StoreError::Unavailable(format!("dynamodb append message cancelled: {codes:?}")))
            }
        }
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
