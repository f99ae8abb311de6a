//! The smallest `KeyValue`: a map with expiries, for connector tests that need no store.

use async_trait::async_trait;
use baton_core::ports::{KeyValue, StoreError};
use baton_core::Millis;
use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Default)]
pub struct MemKv(Mutex<HashMap<String, (String, i64)>>);

#[async_trait]
impl KeyValue for MemKv {
    async fn get(&self, name: &str, now: Millis) -> Result<Option<String>, StoreError> {
        Ok(self.0.lock().unwrap().get(name).filter(|(_, exp)| *exp > now.0).map(|(v, _)| v.clone()))
    }
    async fn put(&self, name: &str, value: &str, expires_at: Millis) -> Result<(), StoreError> {
        self.0.lock().unwrap().insert(name.into(), (value.into(), expires_at.0));
        Ok(())
    }
    async fn put_if_absent(
        &self,
        name: &str,
        value: &str,
        now: Millis,
        expires_at: Millis,
    ) -> Result<bool, StoreError> {
        let mut map = self.0.lock().unwrap();
        if map.get(name).is_some_and(|(_, exp)| *exp > now.0) {
            return Ok(false);
        }
        map.insert(name.into(), (value.into(), expires_at.0));
        Ok(true)
    }
    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        self.0.lock().unwrap().remove(name);
        Ok(())
    }
}

impl MemKv {
    /// Everything stored, for checks that no secret was kept.
    pub fn dump(&self) -> String {
        format!("{:?}", self.0.lock().unwrap())
    }
}
