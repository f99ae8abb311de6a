//! Where a request goes when no human can take it: one [`FallbackRouter`] implements the
//! `Fallback` port for every kind, by the agent's `fallback` configuration.

use async_trait::async_trait;
use baton_connectors::email::EmailFallback;
use baton_connectors::ticket::TicketFallback;
use baton_connectors::transcript::cut_chars;
use baton_connectors::whatsapp::WhatsappClient;
use baton_core::agent::FallbackConfig;
use baton_core::effect::HandoffRequest;
use baton_core::ports::{DeliveryError, Fallback};
use baton_core::{Agent, ConversationKey};

pub struct FallbackRouter {
    pub ticket: TicketFallback,
    pub email: EmailFallback,
    pub whatsapp: WhatsappClient,
}

/// The template's body parameter for a sales representative: who, how to reach them, what.
pub fn whatsapp_summary(key: &ConversationKey, request: &HandoffRequest) -> String {
    let email = request.email.trim();
    format!(
        "{} user {} ({}) asks: {} Reason: {}",
        key.channel.as_str(),
        key.user,
        if email.is_empty() { "no e-mail" } else { email },
        cut_chars(request.question.trim(), 600),
        cut_chars(request.reason.trim(), 200)
    )
}

#[async_trait]
impl Fallback for FallbackRouter {
    async fn escalate(
        &self,
        agent: &Agent,
        key: &ConversationKey,
        request: &HandoffRequest,
        idempotency_key: &str,
    ) -> Result<String, DeliveryError> {
        match &agent.fallback {
            FallbackConfig::None => {
                Err(DeliveryError::permanent(format!("agent {} has no fallback configured", agent.id)))
            }
            FallbackConfig::Ticket { .. } => self.ticket.escalate(agent, key, request, idempotency_key).await,
            FallbackConfig::Email { .. } => self.email.escalate(agent, key, request, idempotency_key).await,
            FallbackConfig::Whatsapp { to, template } => {
                let Some(cfg) = agent.channels.whatsapp.as_ref() else {
                    return Err(DeliveryError::permanent(format!(
                        "agent {}: the WhatsApp fallback needs [channels.whatsapp]",
                        agent.id
                    )));
                };
                self.whatsapp.send_template(cfg, to, template, &whatsapp_summary(key, request)).await?;
                Ok("to our sales team on WhatsApp".into())
            }
        }
    }
}
