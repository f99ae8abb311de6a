//! Small named settings of the server (for example the widget signing secret). Values may
//! be secrets: they are bound as parameters and never appear in errors or logs.

use crate::{sql, Db};
use baton_core::ports::StoreError;
use rusqlite::{params, OptionalExtension};

impl Db {
    pub async fn setting(&self, name: &str) -> Result<Option<String>, StoreError> {
        let name = name.to_string();
        self.lookup(move |c| {
            c.prepare_cached("SELECT value FROM settings WHERE name = ?1")
                .map_err(sql)?
                .query_row([&name], |r| r.get(0))
                .optional()
                .map_err(sql)
        })
        .await
    }

    pub async fn set_setting(&self, name: &str, value: &str) -> Result<(), StoreError> {
        let name = name.to_string();
        let value = value.to_string();
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO settings(name, value) VALUES (?1, ?2)
                 ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            )
            .map_err(sql)?
            .execute(params![name, value])
            .map_err(sql)?;
            Ok(())
        })
        .await
    }

    /// The stored value, or `make()` stored and returned when there is none. Concurrent
    /// callers (even in other processes) all get the one value that was stored first.
    pub async fn get_or_insert_setting(&self, name: &str, make: impl FnOnce() -> String) -> Result<String, StoreError> {
        if let Some(v) = self.setting(name).await? {
            return Ok(v);
        }
        let name = name.to_string();
        let value = make();
        self.write(move |c| {
            c.prepare_cached("INSERT OR IGNORE INTO settings(name, value) VALUES (?1, ?2)")
                .map_err(sql)?
                .execute(params![name, value])
                .map_err(sql)?;
            c.prepare_cached("SELECT value FROM settings WHERE name = ?1")
                .map_err(sql)?
                .query_row([&name], |r| r.get(0))
                .map_err(sql)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use crate::testutil::open_temp;

    #[tokio::test]
    async fn settings_round_trip_and_insert_once() {
        let (_d, db) = open_temp();
        assert_eq!(db.setting("x").await.unwrap(), None);
        db.set_setting("x", "1").await.unwrap();
        db.set_setting("x", "2").await.unwrap();
        assert_eq!(db.setting("x").await.unwrap().as_deref(), Some("2"));
        assert_eq!(db.get_or_insert_setting("x", || "new".into()).await.unwrap(), "2");
        let first = db.get_or_insert_setting("secret", || "s1".into()).await.unwrap();
        assert_eq!(first, "s1");
        let mut called = false;
        let again = db
            .get_or_insert_setting("secret", || {
                called = true;
                "s2".into()
            })
            .await
            .unwrap();
        assert_eq!(again, "s1");
        assert!(!called);
    }
}
