//! The user-facing message log, for channels whose users fetch their messages (the web
//! widget polls or streams it). Delivering a `SendToUser` effect appends here; the effect's
//! idempotency key makes a re-run after a crash invisible to the user.

use crate::{decode, encode, limit_param, sql, Db};
use baton_core::model::{ConversationKey, Millis, OutMessage};
use baton_core::ports::LoggedMessage;
use baton_core::ports::StoreError;
use rusqlite::params;

impl Db {
    /// Append `message` unless `idempotency_key` was appended before. Returns the new
    /// message's sequence number, or `None` for a duplicate.
    pub async fn append_user_message(
        &self,
        key: &ConversationKey,
        idempotency_key: &str,
        message: &OutMessage,
        at: Millis,
    ) -> Result<Option<i64>, StoreError> {
        let conv = key.to_string();
        let idem = idempotency_key.to_string();
        let json = encode(message)?;
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "INSERT OR IGNORE INTO user_messages(conversation, idempotency_key, at, json)
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(sql)?
                .execute(params![conv, idem, at.0, json])
                .map_err(sql)?;
            Ok((n > 0).then(|| c.last_insert_rowid()))
        })
        .await
    }

    /// Messages of `key` with a sequence number above `after_seq`, oldest first.
    pub async fn user_messages_after(
        &self,
        key: &ConversationKey,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<(i64, Millis, OutMessage)>, StoreError> {
        let rows = self.logged_after(key, after_seq, limit).await?;
        Ok(rows.into_iter().map(|m| (m.seq, m.at, m.message)).collect())
    }

    pub(crate) async fn logged_after(
        &self,
        key: &ConversationKey,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<LoggedMessage>, StoreError> {
        let conv = key.to_string();
        let limit = limit_param(limit);
        self.lookup(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT seq, at, json, idempotency_key FROM user_messages
                     WHERE conversation = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                )
                .map_err(sql)?;
            let rows = stmt
                .query_map(params![conv, after_seq, limit], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?))
                })
                .map_err(sql)?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, at, json, id) = row.map_err(sql)?;
                let message = decode(&format!("user message {seq}"), &json)?;
                out.push(LoggedMessage { id, seq, at: Millis(at), message });
            }
            Ok(out)
        })
        .await
    }
}

#[async_trait::async_trait]
impl baton_core::ports::MessageLog for Db {
    async fn append(
        &self,
        key: &ConversationKey,
        idempotency_key: &str,
        message: &OutMessage,
        at: Millis,
        // The embedded store purges whole conversations after their retention.
        _keep_until: Millis,
    ) -> Result<Option<i64>, StoreError> {
        self.append_user_message(key, idempotency_key, message, at).await
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

#[cfg(test)]
mod tests {
    use crate::testutil::{key, open_temp};
    use baton_core::model::{Button, Millis, OutMessage, Role};

    #[tokio::test]
    async fn user_messages_dedupe_and_page() {
        let (_d, db) = open_temp();
        let (a, b) = (key("a"), key("b"));
        let mut hello = OutMessage::new(Role::Bot, "hello");
        hello.buttons.push(Button { label: "End".into(), value: "/end".into() });
        let s1 = db.append_user_message(&a, "k1", &hello, Millis(10)).await.unwrap().unwrap();
        let other = OutMessage::new(Role::Human, "for b");
        db.append_user_message(&b, "k2", &other, Millis(11)).await.unwrap().unwrap();
        // The re-run effect with the same key: not shown twice.
        assert_eq!(db.append_user_message(&a, "k1", &hello, Millis(12)).await.unwrap(), None);
        let second = OutMessage::new(Role::Human, "second");
        let s3 = db.append_user_message(&a, "k3", &second, Millis(13)).await.unwrap().unwrap();
        assert!(s3 > s1);

        let all = db.user_messages_after(&a, 0, 10).await.unwrap();
        assert_eq!(all, vec![(s1, Millis(10), hello.clone()), (s3, Millis(13), second.clone())]);
        assert_eq!(db.user_messages_after(&a, s1, 10).await.unwrap(), vec![(s3, Millis(13), second)]);
        assert_eq!(db.user_messages_after(&a, 0, 1).await.unwrap().len(), 1);
        assert!(db.user_messages_after(&a, s3, 10).await.unwrap().is_empty());
        assert_eq!(db.user_messages_after(&b, 0, 10).await.unwrap().len(), 1);
    }
}
