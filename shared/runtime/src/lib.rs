//! The imperative shell around the pure core: the worker (load -> skip seen -> step ->
//! commit with outbox -> run effects -> mark done), effect execution with retries, and the
//! HTTP ingress routes. Written once over the ports; `baton serve` drives it with the
//! embedded adapters and the Lambda functions with the AWS ones.

pub mod alerts;
pub mod auth;
pub mod channels;
pub mod clock;
pub mod desks;
pub mod fallbacks;
pub mod http;
pub mod media;
pub mod ratelimit;
pub mod widget;
pub mod worker;

use baton_core::ports::{Brain, ChannelSender, Clock, Desk, EventQueue, Fallback, KeyValue, Secrets, Store, Timers};
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
    /// The connectors' shared records (OAuth tokens, own message ids, offsets).
    pub kv: Arc<dyn KeyValue>,
    pub alerts: alerts::Alerts,
    /// Which hosts the agents' configured endpoints may be.
    pub targets: baton_connectors::outbound::Targets,
    /// Take a lease (this long, from these leases) before running a conversation's effects,
    /// where two processes may try at once; `None` where one process owns each conversation.
    pub drain_lease: Option<(std::time::Duration, Arc<dyn baton_core::ports::DrainLeases>)>,
}

/// The outbound connectors every deployment wires the same way: one HTTP client (one
/// connection pool and TLS configuration) for all of them.
pub struct Connectors {
    /// The one client (pool, TLS) every outbound call shares, brains included.
    pub http: baton_connectors::outbound::HttpClient,
    pub channels: Arc<channels::ChannelRouter>,
    /// Also used by ingress (to recognise the hub's own posts) and by Telegram polling.
    pub salesiq: baton_connectors::salesiq::api::SalesiqClient,
    pub telegram: baton_connectors::telegram::TelegramClient,
    pub intercom: baton_connectors::intercom::IntercomClient,
    pub livechat: baton_connectors::livechat::LivechatClient,
    /// Fetches the files behind media links.
    pub media: media::MediaFetcher,
    pub desk: Arc<desks::DeskRouter>,
    pub fallback: Arc<fallbacks::FallbackRouter>,
}

impl Connectors {
    pub fn new(
        timeout: std::time::Duration,
        targets: baton_connectors::outbound::Targets,
        kv: Arc<dyn KeyValue>,
        clock: Arc<dyn Clock>,
        log: Arc<dyn widget::MessageLog>,
        live: Arc<dyn widget::LivePush>,
    ) -> Connectors {
        use baton_connectors::{intercom, line, livechat, salesiq, telegram, ticket, webhook_desk, whatsapp};
        let http = baton_connectors::outbound::http_client(timeout, targets);
        let salesiq = salesiq::api::SalesiqClient::new(http.clone(), timeout, kv.clone(), clock.clone());
        let intercom = intercom::IntercomClient::new(http.clone(), timeout, kv.clone(), clock.clone());
        let livechat = livechat::LivechatClient::new(http.clone(), timeout, kv, clock.clone());
        let telegram = telegram::TelegramClient::from_client(http.clone(), timeout);
        let line = line::LineClient::from_client(http.clone(), timeout);
        let whatsapp = whatsapp::WhatsappClient::from_client(http.clone(), timeout);
        let whatsapp_for_fallback = whatsapp.clone();
        Connectors {
            http: http.clone(),
            media: media::MediaFetcher { telegram: telegram.clone(), line: line.clone(), whatsapp: whatsapp.clone() },
            salesiq: salesiq.clone(),
            telegram: telegram.clone(),
            intercom: intercom.clone(),
            livechat: livechat.clone(),
            channels: Arc::new(channels::ChannelRouter {
                log,
                live,
                clock,
                telegram,
                line,
                salesiq: salesiq.clone(),
                intercom: intercom.clone(),
                livechat: livechat.clone(),
                whatsapp,
                api: baton_connectors::agent_api::ConverseWebhook::from_client(http.clone(), timeout),
            }),
            desk: Arc::new(desks::DeskRouter {
                webhook: webhook_desk::WebhookDesk::from_client(http.clone(), timeout),
                salesiq: salesiq::api::SalesiqDesk::new(salesiq),
                intercom: intercom::IntercomDesk::new(intercom),
                livechat: livechat::LivechatDesk::new(livechat),
            }),
            fallback: Arc::new(fallbacks::FallbackRouter {
                ticket: ticket::TicketFallback::from_client(http.clone(), timeout),
                email: baton_connectors::email::EmailFallback::new(timeout),
                whatsapp: whatsapp_for_fallback,
            }),
        }
    }
}

/// Secrets written in the configuration itself (the embedded form). A reference to a secret
/// store cannot be resolved here and fails the call that needs it, naming the field.
pub struct PlainSecrets;

#[async_trait::async_trait]
impl Secrets for PlainSecrets {
    async fn resolve(&self, agent: &baton_core::Agent) -> Result<baton_core::Agent, baton_core::ports::DeliveryError> {
        self.resolve_owned(agent.clone()).await.map_err(|(_, e)| e)
    }

    async fn resolve_owned(
        &self,
        mut agent: baton_core::Agent,
    ) -> Result<baton_core::Agent, (baton_core::Agent, baton_core::ports::DeliveryError)> {
        let refused =
            agent.secrets_mut().into_iter().find(|(_, s)| baton_core::agent::is_ssm_reference(s)).map(|(f, _)| f);
        match refused {
            Some(field) => {
                let e = baton_core::ports::DeliveryError::permanent(format!(
                    "agent {}: {field} is an SSM reference, which only the AWS deployment resolves",
                    agent.id
                ));
                Err((agent, e))
            }
            None => Ok(agent),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_core::ports::DeliveryError;

    fn agent(signing_secret: &str) -> baton_core::Agent {
        let desk =
            serde_json::json!({"kind": "webhook", "url": "https://desk.example.com", "signing_secret": signing_secret});
        serde_json::from_value(serde_json::json!({"id": "demo", "desk": desk})).expect("agent")
    }

    /// Plain values pass as they are; an SSM reference is refused naming its field, and the
    /// caller gets its agent back.
    #[tokio::test]
    async fn plain_secrets_pass_and_ssm_references_are_refused() {
        let plain = agent("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        assert_eq!(PlainSecrets.resolve_owned(plain.clone()).await.expect("plain"), plain);
        assert_eq!(PlainSecrets.resolve(&plain).await.expect("plain"), plain);
        let referenced = agent("ssm:/baton/demo/desk");
        let (back, e) = PlainSecrets.resolve_owned(referenced.clone()).await.expect_err("refused");
        assert_eq!(back, referenced);
        assert!(matches!(&e, DeliveryError::Permanent { .. }), "{e:?}");
        assert!(e.to_string().contains("desk.signing_secret is an SSM reference"), "{e}");
        assert!(PlainSecrets.resolve(&referenced).await.is_err());
    }
}
