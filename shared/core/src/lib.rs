//! Baton's pure core: domain types, canonical events, the session state machine and the
//! handoff policy, plus the ports (traits) the adapters implement. No I/O, no clock.

pub mod agent;
pub mod effect;
pub mod email;
pub mod event;
pub mod hours;
pub mod messages;
pub mod model;
pub mod net;
pub mod phrases;
pub mod ports;
pub mod session;

pub use agent::Agent;
pub use effect::{Effect, HandoffRequest, PendingEffect, TimerKind};
pub use event::{BrainReply, Event, EventKind};
pub use model::{Channel, ConversationKey, Millis, OutMessage, Role, Turn};
pub use session::{step, step_with, Facts, Ignored, Session, State, Step};
