//! Operator alerts: raised when something needs a person (a dead-lettered effect, rejected
//! desk credentials). Logged at error level and kept (bounded) for the console banner.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

const KEEP: usize = 50;

#[derive(Clone, Default)]
pub struct Alerts(Arc<Mutex<VecDeque<String>>>);

impl Alerts {
    pub fn raise(&self, message: String) {
        tracing::error!(alert = %message, "alert");
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() == KEEP {
            q.pop_front();
        }
        q.push_back(message);
    }

    pub fn recent(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }
}
