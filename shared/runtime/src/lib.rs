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

use baton_core::ports::{Brain, ChannelSender, Clock, Desk, EventQueue, Fallback, Store, Timers};
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
    pub alerts: alerts::Alerts,
}
