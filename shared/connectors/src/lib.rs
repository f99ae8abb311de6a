//! Provider connectors: one module per protocol, each verifying and parsing what a provider
//! sends us and building and sending what we send it. The core only sees the ports
//! (`Desk`, `ChannelSender`); everything wire-specific lives here so it can be tested over
//! real HTTP without the runtime.

/// LINE Messaging API: webhook signature and events, reply and push messages.
pub mod line;
/// Standard Webhooks signing and verification, shared by every signed webhook we send or accept.
pub mod outbound;
/// Zoho SalesIQ: webhook signature and events, Zoho OAuth tokens, the REST API and the SalesIQ desk.
pub mod salesiq;
pub mod standard_webhooks;
/// Telegram Bot API: webhook secret token, updates, sendMessage and long polling.
pub mod telegram;
pub mod ticket;
/// The generic webhook desk (GPTBots-compatible establish / chat / close contract).
pub mod webhook_desk;

pub use standard_webhooks::{generate_secret, SigningSecret, VerifyError, WebhookHeaders};
pub use webhook_desk::{
    dedupe_id, parse_human_close, parse_human_message, HumanClose, HumanMessage, Inbound, ParseError, WebhookDesk,
};

#[cfg(test)]
mod testutil;
