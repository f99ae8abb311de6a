//! Clocks. The system clock for real use; a manual clock for tests only.

use baton_core::ports::Clock;
use baton_core::Millis;

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Millis(d.as_millis() as i64)
    }
}

/// A clock that tests move by hand. Compiled only into test builds (feature `test-util`);
/// the `baton` binary never exposes it.
#[cfg(feature = "test-util")]
pub struct ManualClock(std::sync::atomic::AtomicI64);

#[cfg(feature = "test-util")]
impl ManualClock {
    pub fn new(start: Millis) -> Self {
        ManualClock(std::sync::atomic::AtomicI64::new(start.0))
    }
    pub fn advance_secs(&self, secs: i64) {
        self.0.fetch_add(secs * 1000, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(feature = "test-util")]
impl Clock for ManualClock {
    fn now(&self) -> Millis {
        Millis(self.0.load(std::sync::atomic::Ordering::SeqCst))
    }
}
