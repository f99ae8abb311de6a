//! Per-agent provider secrets on AWS: the agent configuration in the table holds references
//! (`ssm:/baton/shop/desk-password`), resolved here from SSM Parameter Store (SecureString,
//! decrypted) right before use. Values are cached for five minutes, so a rotated secret is
//! picked up without a deploy; keep the old value valid at the provider for that long.

use crate::store::lock;
use async_trait::async_trait;
use aws_sdk_ssm::Client;
use baton_core::agent::{is_ssm_reference, Agent};
use baton_core::ports::{DeliveryError, Secrets};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const CACHE_FOR: Duration = Duration::from_secs(300);

pub struct SsmSecrets {
    client: Client,
    cache: Mutex<HashMap<String, (String, Instant)>>,
}

impl SsmSecrets {
    pub fn new(client: Client) -> Self {
        SsmSecrets { client, cache: Mutex::new(HashMap::new()) }
    }

    fn cached(&self, name: &str) -> Option<String> {
        let cache = lock(&self.cache);
        cache.get(name).filter(|(_, at)| at.elapsed() < CACHE_FOR).map(|(v, _)| v.clone())
    }

    async fn fetch(&self, name: &str) -> Result<String, DeliveryError> {
        if let Some(v) = self.cached(name) {
            return Ok(v);
        }
        let out = self.client.get_parameter().name(name).with_decryption(true).send().await.map_err(|e| {
            let detail = crate::describe_sdk_error(&e);
            if detail.starts_with("ParameterNotFound") {
                DeliveryError::permanent(format!("SSM parameter {name} does not exist"))
            } else {
                DeliveryError::retryable(format!("SSM parameter {name}: {detail}"))
            }
        })?;
        let value = out
            .parameter()
            .and_then(|p| p.value())
            .ok_or_else(|| DeliveryError::permanent(format!("SSM parameter {name} has no value")))?
            .to_string();
        lock(&self.cache).insert(name.to_string(), (value.clone(), Instant::now()));
        Ok(value)
    }
}

#[async_trait]
impl Secrets for SsmSecrets {
    async fn resolve(&self, agent: &Agent) -> Result<Agent, DeliveryError> {
        let mut a = agent.clone();
        for (_, secret) in a.secrets_mut() {
            if is_ssm_reference(secret) {
                let name = secret.expose().trim_start_matches("ssm:").to_string();
                secret.0 = self.fetch(&name).await?;
            }
        }
        Ok(a)
    }
}
