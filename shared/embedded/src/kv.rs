//! The connectors' small shared records (`KeyValue`): OAuth access tokens, ids of messages
//! the hub posted, polling offsets. Values may be secrets: bound as parameters, never logged.

use crate::{sql, Db};
use async_trait::async_trait;
use baton_core::model::Millis;
use baton_core::ports::{KeyValue, StoreError};
use rusqlite::{params, OptionalExtension};

#[async_trait]
impl KeyValue for Db {
    async fn get(&self, name: &str, now: Millis) -> Result<Option<String>, StoreError> {
        let name = name.to_string();
        self.lookup(move |c| {
            c.prepare_cached("SELECT value FROM kv WHERE name = ?1 AND expires_at > ?2")
                .map_err(sql)?
                .query_row(params![name, now.0], |r| r.get(0))
                .optional()
                .map_err(sql)
        })
        .await
    }

    async fn put(&self, name: &str, value: &str, expires_at: Millis) -> Result<(), StoreError> {
        let (name, value) = (name.to_string(), value.to_string());
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO kv(name, value, expires_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(name) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
            )
            .map_err(sql)?
            .execute(params![name, value, expires_at.0])
            .map_err(sql)?;
            Ok(())
        })
        .await
    }

    async fn put_if_absent(
        &self,
        name: &str,
        value: &str,
        now: Millis,
        expires_at: Millis,
    ) -> Result<bool, StoreError> {
        let (name, value) = (name.to_string(), value.to_string());
        // One statement: the single writer makes the check and the write atomic.
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "INSERT INTO kv(name, value, expires_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT(name) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at
                     WHERE kv.expires_at <= ?4",
                )
                .map_err(sql)?
                .execute(params![name, value, expires_at.0, now.0])
                .map_err(sql)?;
            Ok(n == 1)
        })
        .await
    }

    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_string();
        self.write(move |c| {
            c.prepare_cached("DELETE FROM kv WHERE name = ?1").map_err(sql)?.execute([name]).map_err(sql)?;
            Ok(())
        })
        .await
    }
}
