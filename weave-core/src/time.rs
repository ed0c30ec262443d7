//! The time seam. Sans-IO cores take `now: Instant` as an argument and tell
//! their driver when they next need to be woken (`poll_timeout`). Drivers read
//! the real clock; the simulation harness advances virtual time.

use std::time::Instant;

/// A source of the current time, for drivers that want to be testable.
pub trait Clock: Send + Sync {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// The real monotonic clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}
