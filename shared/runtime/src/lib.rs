//! The imperative shell around the pure core: the worker (load -> skip seen -> step ->
//! commit with outbox -> run effects -> mark done), effect execution with retries, and the
//! HTTP ingress routes. Written once over the ports; `baton serve` drives it with the
//! embedded adapters and the Lambda functions with the AWS ones.

pub mod alerts;
pub mod auth;
pub mod clock;
pub mod http;
pub mod ratelimit;
pub mod widget;
pub mod worker;

use baton_core::ports::{Brain, ChannelSender, Clock, Desk, EventQueue, Fallback, Secrets, Store, Timers};
use std::sync::Arc;

/// Every port the worker and the ingress routes need, wired once per process.
#[derive(Clone)]
pub struct Ports {
    pub store: Arc<dyn Store>,
    pub queue: Arc<dyn EventQueue>,
    pub timers: Arc<dyn Timers>,
    pub clock: Arc<dyn Clock>,
    pub brain: Arc<dyn Brain>,
    pub channels: Arc<dyn ChannelSender>,
    pub desk: Arc<dyn Desk>,
    pub fallback: Arc<dyn Fallback>,
    pub secrets: Arc<dyn Secrets>,
    pub alerts: alerts::Alerts,
}

/// Secrets written in the configuration itself (the embedded form). A reference to a secret
/// store cannot be resolved here and fails the call that needs it, naming the field.
pub struct PlainSecrets;

#[async_trait::async_trait]
impl Secrets for PlainSecrets {
    async fn resolve(&self, agent: &baton_core::Agent) -> Result<baton_core::Agent, baton_core::ports::DeliveryError> {
        let mut a = agent.clone();
        for (field, s) in a.secrets_mut() {
            if baton_core::agent::is_ssm_reference(s) {
                return Err(baton_core::ports::DeliveryError::permanent(format!(
                    "agent {}: {field} is an SSM reference, which only the AWS deployment resolves",
                    agent.id
                )));
            }
        }
        Ok(a)
    }
}
