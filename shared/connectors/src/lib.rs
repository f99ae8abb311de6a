//! Provider connectors: one module per protocol, each verifying and parsing what a provider
//! sends us and building and sending what we send it. The core only sees the ports
//! (`Desk`, `ChannelSender`); everything wire-specific lives here so it can be tested over
//! real HTTP without the runtime.

/// Standard Webhooks signing and verification, shared by every signed webhook we send or accept.
pub mod outbound;
pub mod standard_webhooks;
pub mod ticket;
/// The generic webhook desk (GPTBots-compatible establish / chat / close contract).
pub mod webhook_desk;

pub use standard_webhooks::{generate_secret, SigningSecret, VerifyError, WebhookHeaders};
pub use webhook_desk::{
    dedupe_id, parse_human_close, parse_human_message, HumanClose, HumanMessage, Inbound, ParseError, WebhookDesk,
};
