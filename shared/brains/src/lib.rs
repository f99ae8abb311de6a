//! Brains: what answers the end user before a human takes over. Each one implements
//! [`baton_core::ports::Brain`], so the runtime does not care which one an agent uses.
//!
//! Today there is the built-in [`FaqBrain`]: BM25 over the agent's FAQ entries, offline
//! and deterministic, so a fresh install answers its common questions with no API key.

pub mod faq;

pub use faq::{FaqBrain, FaqIndex};
