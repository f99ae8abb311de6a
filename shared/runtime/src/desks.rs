//! The human side: one [`DeskRouter`] implements the `Desk` port for every desk kind, by
//! the agent's `desk` configuration.

use async_trait::async_trait;
use baton_connectors::intercom::IntercomDesk;
use baton_connectors::livechat::LivechatDesk;
use baton_connectors::salesiq::api::SalesiqDesk;
use baton_connectors::webhook_desk::WebhookDesk;
use baton_core::agent::DeskConfig;
use baton_core::effect::HandoffRequest;
use baton_core::model::{CloseReason, ServiceStatus};
use baton_core::ports::{DeliveryError, Desk};
use baton_core::{Agent, ConversationKey};

pub struct DeskRouter {
    pub webhook: WebhookDesk,
    pub salesiq: SalesiqDesk,
    pub intercom: IntercomDesk,
    pub livechat: LivechatDesk,
}

impl DeskRouter {
    fn desk_of(&self, agent: &Agent) -> Result<&dyn Desk, DeliveryError> {
        match agent.desk {
            DeskConfig::None => Err(DeliveryError::permanent(format!("agent {} has no desk configured", agent.id))),
            DeskConfig::Webhook { .. } => Ok(&self.webhook),
            DeskConfig::Salesiq { .. } => Ok(&self.salesiq),
            DeskConfig::Intercom { .. } => Ok(&self.intercom),
            DeskConfig::Livechat { .. } => Ok(&self.livechat),
        }
    }
}

#[async_trait]
impl Desk for DeskRouter {
    async fn open(
        &self,
        agent: &Agent,
        key: &ConversationKey,
        request: &HandoffRequest,
        idempotency_key: &str,
    ) -> Result<String, DeliveryError> {
        self.desk_of(agent)?.open(agent, key, request, idempotency_key).await
    }

    async fn post(
        &self,
        agent: &Agent,
        desk_conversation_id: &str,
        text: &str,
        idempotency_key: &str,
    ) -> Result<(), DeliveryError> {
        self.desk_of(agent)?.post(agent, desk_conversation_id, text, idempotency_key).await
    }

    async fn close(
        &self,
        agent: &Agent,
        desk_conversation_id: &str,
        reason: CloseReason,
        idempotency_key: &str,
    ) -> Result<(), DeliveryError> {
        self.desk_of(agent)?.close(agent, desk_conversation_id, reason, idempotency_key).await
    }

    fn id_chosen_by_hub(&self, agent: &Agent, request: &HandoffRequest) -> Option<String> {
        self.desk_of(agent).ok()?.id_chosen_by_hub(agent, request)
    }

    async fn probe(&self, agent: &Agent) -> (ServiceStatus, String) {
        match self.desk_of(agent) {
            Ok(desk) => desk.probe(agent).await,
            Err(_) => (ServiceStatus::NotConfigured, "no desk configured".into()),
        }
    }
}
