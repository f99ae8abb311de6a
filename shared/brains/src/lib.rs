//! Brains: what answers the end user before a human takes over. Each one implements
//! [`baton_core::ports::Brain`], so the runtime does not care which one an agent uses;
//! [`Brains`] picks the one the agent's `brain.kind` names.
//!
//! - [`FaqBrain`] (`faq`): BM25 over the agent's FAQ entries, offline and deterministic, so a
//!   fresh install answers its common questions with no API key.
//! - [`LlmBrain`] (`llm`): any OpenAI-compatible chat-completions model, with the agent's
//!   knowledge as context, a `handoff` tool and token budgets.
//! - [`HostedBrain`] (`hosted`): a hosted AI agent speaking seed 003's contract (Zendesk AI
//!   agents - Advanced); its answers come back through the hub's webhooks.

pub mod faq;
pub mod hosted;
pub mod llm;

pub use faq::{FaqBrain, FaqIndex};
pub use hosted::HostedBrain;
pub use llm::LlmBrain;

use async_trait::async_trait;
use baton_core::agent::{Agent, BrainConfig};
use baton_core::event::BrainReply;
use baton_core::ports::{Brain, BrainAnswer, BrainRequest, Clock, DeliveryError, KeyValue};
use std::sync::Arc;

/// Every brain kind behind one port.
pub struct Brains {
    pub faq: FaqBrain,
    pub llm: LlmBrain,
    pub hosted: HostedBrain,
}

impl Brains {
    /// `http`: the shared outbound client; `kv`: where the LLM's token counters live.
    pub fn new(http: reqwest::Client, kv: Arc<dyn KeyValue>, clock: Arc<dyn Clock>) -> Self {
        Brains { faq: FaqBrain::new(), llm: LlmBrain::new(http.clone(), kv, clock), hosted: HostedBrain::new(http) }
    }
}

#[async_trait]
impl Brain for Brains {
    async fn answer(&self, agent: &Agent, request: &BrainRequest) -> Result<BrainReply, DeliveryError> {
        match &agent.brain {
            BrainConfig::Faq { .. } => self.faq.answer(agent, request).await,
            BrainConfig::Llm(_) => self.llm.answer(agent, request).await,
            BrainConfig::Hosted(_) => self.hosted.answer(agent, request).await,
        }
    }

    /// The FAQ brain is a lookup in the agent's own entries.
    fn answers_locally(&self, agent: &Agent) -> bool {
        matches!(agent.brain, BrainConfig::Faq { .. })
    }

    async fn answer_with_params(&self, agent: &Agent, request: &BrainRequest) -> Result<BrainAnswer, DeliveryError> {
        match &agent.brain {
            BrainConfig::Faq { .. } => self.faq.answer_with_params(agent, request).await,
            BrainConfig::Llm(_) => self.llm.answer_with_params(agent, request).await,
            BrainConfig::Hosted(_) => self.hosted.answer_with_params(agent, request).await,
        }
    }
}
