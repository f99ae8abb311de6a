//! Provider connectors: one module per protocol, each verifying and parsing what a provider
//! sends us and building and sending what we send it. The core only sees the ports
//! (`Desk`, `ChannelSender`); everything wire-specific lives here so it can be tested over
//! real HTTP without the runtime.

/// The action framework's HTTP call (LLM tools, hosted agents' action triggers).
pub mod actions;
/// The Agent API (seed 003): `/converse/chat` requests and the converse webhook we push.
pub mod agent_api;
/// The e-mail fallback: SMTP, or `.eml` files for local use.
pub mod email;
/// The ERP preset: the REST middleware of docs/erp-openapi.yaml, with two-phase commits.
pub mod erp;
/// A hosted AI agent (Zendesk AI agents - Advanced) as the brain: its converse endpoint and webhooks.
pub mod hosted_agent;
/// Intercom: webhook signature and notifications, the REST API (bot replies, contacts, conversations) and the Intercom desk.
pub mod intercom;
/// LINE Messaging API: webhook signature and events, reply and push messages.
pub mod line;
/// LiveChat (Text platform v3.6): webhook secret and events, agent/customer/bot tokens, the Chat APIs and the LiveChat desk.
pub mod livechat;
/// Downloading files users sent, for the hub's media links.
pub mod media;
/// Standard Webhooks signing and verification, shared by every signed webhook we send or accept.
pub mod outbound;
/// Records the connectors keep in the KeyValue store: hashed names, completed calls.
pub(crate) mod records;
/// Zoho SalesIQ: webhook signature and events, Zoho OAuth tokens, the REST API and the SalesIQ desk.
pub mod salesiq;
pub mod standard_webhooks;
/// Telegram Bot API: webhook secret token, updates, sendMessage and long polling.
pub mod telegram;
pub mod ticket;
/// The transcript a desk gets when the hub opens a conversation for a user of another channel.
pub mod transcript;
/// The generic webhook desk (GPTBots-compatible establish / chat / close contract).
pub mod webhook_desk;
/// WhatsApp Cloud API: subscription handshake, webhook signature and events, sending messages and templates.
pub mod whatsapp;

pub use standard_webhooks::{generate_secret, SigningSecret, VerifyError, WebhookHeaders};
pub use webhook_desk::{
    dedupe_id, parse_human_close, parse_human_message, HumanClose, HumanMessage, Inbound, ParseError, WebhookDesk,
};

#[cfg(test)]
mod testutil;
