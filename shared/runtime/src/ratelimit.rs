//! Keyed token buckets for per-IP and per-conversation request limits.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

pub struct RateLimiter {
    capacity: f64,
    per_sec: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

/// Buckets are dropped once this many exist and they are full again, bounding memory.
const MAX_KEYS: usize = 100_000;

impl RateLimiter {
    /// `burst` requests at once, refilled at `per_sec`.
    pub fn new(burst: u32, per_sec: f64) -> Self {
        RateLimiter { capacity: burst as f64, per_sec, buckets: Mutex::new(HashMap::new()) }
    }

    /// Take one token for `key`; false when the bucket is empty.
    pub fn allow(&self, key: &str) -> bool {
        self.allow_at(key, Instant::now())
    }

    fn allow_at(&self, key: &str, now: Instant) -> bool {
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if b.len() >= MAX_KEYS {
            let (cap, rate) = (self.capacity, self.per_sec);
            b.retain(|_, (tokens, at)| *tokens + now.duration_since(*at).as_secs_f64() * rate < cap);
        }
        let (tokens, at) = b.entry(key.to_string()).or_insert((self.capacity, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.per_sec).min(self.capacity);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill() {
        let r = RateLimiter::new(3, 1.0);
        let t0 = Instant::now();
        assert!(r.allow_at("a", t0));
        assert!(r.allow_at("a", t0));
        assert!(r.allow_at("a", t0));
        assert!(!r.allow_at("a", t0));
        assert!(r.allow_at("b", t0), "keys are independent");
        assert!(r.allow_at("a", t0 + Duration::from_millis(1100)));
        assert!(!r.allow_at("a", t0 + Duration::from_millis(1200)));
    }
}
