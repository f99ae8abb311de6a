//! The connectors' small shared records (`KeyValue`) on the one table: item `KV#{name}` / `-`
//! with `value` and `valid_until` (ms). `expires_at` (TTL) removes them a day after expiry.

use crate::store::{conditional, get_n, get_s, key_of, n, s, unavailable, DynamoStore};
use crate::table::{key_part, EXPIRES_AT};
use async_trait::async_trait;
use baton_core::model::Millis;
use baton_core::ports::{KeyValue, StoreError};

const VALUE: &str = "value";
const VALID_UNTIL: &str = "valid_until";

fn kv_pk(name: &str) -> String {
    format!("KV#{}", key_part(name))
}

impl DynamoStore {
    fn kv_item(&self, name: &str, value: &str, expires_at: Millis) -> crate::store::Item {
        let mut item = key_of(kv_pk(name), "-");
        item.insert(VALUE.into(), s(value));
        item.insert(VALID_UNTIL.into(), n(expires_at.0));
        item.insert(EXPIRES_AT.into(), n(expires_at.0.max(0) / 1000 + 86_400));
        item
    }
}

#[async_trait]
impl KeyValue for DynamoStore {
    async fn get(&self, name: &str, now: Millis) -> Result<Option<String>, StoreError> {
        let pk = kv_pk(name);
        let Some(item) = DynamoStore::get(self, &pk, "-").await? else { return Ok(None) };
        let valid_until: i64 = get_n(&item, VALID_UNTIL, &pk)?;
        if valid_until <= now.0 {
            return Ok(None);
        }
        Ok(Some(get_s(&item, VALUE, &pk)?.to_string()))
    }

    async fn put(&self, name: &str, value: &str, expires_at: Millis) -> Result<(), StoreError> {
        self.put_plain(self.kv_item(name, value, expires_at), "put").await
    }

    async fn put_if_absent(
        &self,
        name: &str,
        value: &str,
        now: Millis,
        expires_at: Millis,
    ) -> Result<bool, StoreError> {
        let result = self
            .client()
            .put_item()
            .table_name(self.table_name())
            .set_item(Some(self.kv_item(name, value, expires_at)))
            .condition_expression("attribute_not_exists(#v) OR #v <= :now")
            .expression_attribute_names("#v", VALID_UNTIL)
            .expression_attribute_values(":now", n(now.0))
            .send()
            .await;
        conditional("conditional put", result)
    }

    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        self.client()
            .delete_item()
            .table_name(self.table_name())
            .set_key(Some(key_of(kv_pk(name), "-")))
            .send()
            .await
            .map_err(|e| unavailable("delete", &e))?;
        Ok(())
    }
}
