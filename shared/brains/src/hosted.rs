//! A hosted AI agent as the brain (see [`baton_connectors::hosted_agent`]): the question goes
//! to its converse endpoint and the answer is [`BrainReply::Deferred`]; what the agent says
//! comes back through the hub's webhooks as separate events.

use async_trait::async_trait;
use baton_connectors::hosted_agent::{self, HostedAgentClient};
use baton_core::agent::{Agent, BrainConfig};
use baton_core::event::BrainReply;
use baton_core::ports::{Brain, BrainRequest, DeliveryError};

pub struct HostedBrain {
    client: HostedAgentClient,
}

impl HostedBrain {
    pub fn new(http: reqwest::Client) -> Self {
        HostedBrain { client: HostedAgentClient::from_client(http) }
    }
}

#[async_trait]
impl Brain for HostedBrain {
    async fn answer(&self, agent: &Agent, request: &BrainRequest) -> Result<BrainReply, DeliveryError> {
        let BrainConfig::Hosted(cfg) = &agent.brain else {
            return Err(DeliveryError::permanent(format!("agent {} does not use a hosted agent", agent.id)));
        };
        let conversation = request.conversation.to_string();
        // A new session of ours starts one there too, with what is known about the user.
        if request.history.is_empty() {
            self.client.converse(cfg, &hosted_agent::start_body(&conversation)).await?;
            if !request.params.is_empty() {
                self.client.converse(cfg, &hosted_agent::metadata_body(&conversation, &request.params)).await?;
            }
        }
        self.client.converse(cfg, &hosted_agent::message_body(&conversation, &request.question)).await?;
        Ok(BrainReply::Deferred)
    }
}
