//! One end user's data in the table: the export and the erasure behind `baton users`.
//! Everything of a conversation lives in its `CONV#{key}` partition (session, outbox, trace,
//! seen marks, messages, message counter, and a `LINK#` copy of each desk link), so both are
//! one query; the erasure keeps the seen marks, without the trace lines they carry, so that a
//! late copy of an event is still turned away;
//! the erasure also removes the desk links' lookup items and the messages' idempotency
//! markers, which live in partitions of their own.

use crate::store::{desk_pk, get_s, handoff_pk, key_of, link_from_item, unavailable, DynamoStore, Item, SEEN};
use crate::table::{conv_pk, key_part, SK};
use aws_sdk_dynamodb::types::{DeleteRequest, WriteRequest};
use baton_core::model::ConversationKey;
use baton_core::ports::{ConversationData, MessageLog, Store, StoreError};

/// BatchWriteItem takes at most 25 requests.
const BATCH: usize = 25;

impl DynamoStore {
    pub(crate) async fn export(&self, key: &ConversationKey) -> Result<ConversationData, StoreError> {
        let conv = conv_pk(key);
        let session = self.load_session(key).await?.map(|v| v.session);
        let messages = self.after(key, 0, usize::MAX).await?;
        let trace = self.trace(key).await?;
        let desk_links = self
            .query_prefix(&conv, "LINK#")
            .await?
            .iter()
            .map(|item| link_from_item(item, &conv))
            .collect::<Result<_, _>>()?;
        Ok(ConversationData { conversation: key.to_string(), session, messages, trace, desk_links })
    }

    pub(crate) async fn erase(&self, key: &ConversationKey) -> Result<u64, StoreError> {
        // Kept trace lines are written first, so none outlives the erase.
        self.flush_trace().await?;
        let conv = conv_pk(key);
        let items = self.query_partition(&conv, None).await?;
        let mut keys: Vec<Item> = Vec::new();
        let mut stripped = 0;
        for item in &items {
            let sk = get_s(item, SK, &conv)?;
            if sk.starts_with(SEEN) {
                if item.contains_key("doc") {
                    self.strip_mark(&conv, sk).await?;
                    stripped += 1;
                }
                continue;
            }
            if sk.starts_with("LINK#") {
                let link = link_from_item(item, &conv)?;
                // The lookups may have been taken over by a newer link of another conversation.
                let ours = link.conversation.to_string();
                for pk in [desk_pk(&link.agent, &link.desk_conversation_id), handoff_pk(&link.handoff_id)] {
                    let points_here = self
                        .get(&pk, "MAP")
                        .await?
                        .is_some_and(|i| get_s(&i, "conversation", &pk) == Ok(ours.as_str()));
                    if points_here {
                        keys.push(key_of(pk, "MAP"));
                    }
                }
            }
            // The idempotency markers earlier builds wrote beside each message.
            if sk.starts_with("MSG#") {
                if let Ok(idem) = get_s(item, "idem", &conv) {
                    keys.push(key_of(format!("IDEM#{}", key_part(idem)), "-"));
                }
            }
            keys.push(key_of(conv.as_str(), sk));
        }
        let count = keys.len() as u64 + stripped;
        for chunk in keys.chunks(BATCH) {
            self.delete_all(chunk).await?;
        }
        Ok(count)
    }

    /// A seen mark without the trace lines it carries.
    async fn strip_mark(&self, conv: &str, sk: &str) -> Result<(), StoreError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_of(conv, sk)))
            .update_expression("REMOVE #doc, #schema, #at")
            .expression_attribute_names("#doc", "doc")
            .expression_attribute_names("#schema", "schema")
            .expression_attribute_names("#at", "at")
            .send()
            .await
            .map_err(|e| unavailable("erase the trace lines of a seen mark", &e))?;
        Ok(())
    }

    /// Delete `keys` (at most 25), retrying what DynamoDB leaves unprocessed.
    async fn delete_all(&self, keys: &[Item]) -> Result<(), StoreError> {
        let mut requests: Vec<WriteRequest> = keys
            .iter()
            .map(|k| {
                let delete =
                    DeleteRequest::builder().set_key(Some(k.clone())).build().map_err(crate::store::build_err)?;
                Ok(WriteRequest::builder().delete_request(delete).build())
            })
            .collect::<Result<_, StoreError>>()?;
        for attempt in 0..8u32 {
            if requests.is_empty() {
                return Ok(());
            }
            if attempt > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(50 << attempt)).await;
            }
            let out = self
                .client()
                .batch_write_item()
                .request_items(self.table_name(), requests)
                .send()
                .await
                .map_err(|e| unavailable("erase conversation", &e))?;
            requests = out.unprocessed_items.and_then(|mut m| m.remove(self.table_name())).unwrap_or_default();
        }
        Err(StoreError::Unavailable("erase conversation: DynamoDB kept refusing some deletes; run it again".into()))
    }
}
