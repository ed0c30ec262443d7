//! The time seam. Sans-IO cores take `now: Instant` as an argument and tell
//! their driver when they next need to be woken (`poll_timeout`). Drivers read
//! the real clock; the simulation harness advances virtual time.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

/// A wall clock for periodic rounds: an instant and the time since the
/// Unix epoch at that instant. Peers whose clocks agree start their rounds
/// at the same moments (multiples of the interval since the epoch), so an
/// idle peer's wake-ups for what its peers send each round coalesce into a
/// few, instead of one per peer at that peer's own phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundClock {
    at: Instant,
    since_epoch: Duration,
}

impl RoundClock {
    /// `since_epoch` is the wall-clock time at `at`.
    pub fn new(at: Instant, since_epoch: Duration) -> Self {
        Self { at, since_epoch }
    }

    /// The system clock, read now.
    pub fn system() -> Self {
        Self::new(Instant::now(), SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default())
    }

    /// When the round after `now` starts: the next multiple of `interval`
    /// at least half an interval away (a round woken just before its
    /// boundary is that boundary's round).
    pub fn next_round(&self, now: Instant, interval: Duration) -> Instant {
        let h = interval.as_nanos().max(1);
        let t = (self.since_epoch + now.saturating_duration_since(self.at)).as_nanos();
        let mut wait = h - t % h;
        if wait < h / 2 {
            wait += h;
        }
        now + Duration::from_nanos(u64::try_from(wait).unwrap_or(u64::MAX))
    }
}

/// `now + interval`, or the next round of `clock` if there is one.
pub fn next_round(clock: Option<&RoundClock>, now: Instant, interval: Duration) -> Instant {
    clock.map_or(now + interval, |c| c.next_round(now, interval))
}

/// A heartbeat interval with a budget: `base` for up to `flat` peers, and
/// `base` × ⌈peers ÷ flat⌉ beyond (at most `max`, never below `base`), so
/// that about `flat` heartbeats go per `base` whatever the number of peers.
pub fn budgeted_interval(base: Duration, peers: usize, flat: usize, max: Duration) -> Duration {
    let rounds = u32::try_from(peers.div_ceil(flat.max(1)).max(1)).unwrap_or(u32::MAX);
    base.saturating_mul(rounds).min(max.max(base))
}

/// `timeout`, stretched by as much as `interval` is longer than `base`.
pub fn stretched_timeout(timeout: Duration, base: Duration, interval: Duration) -> Duration {
    if interval <= base || base.is_zero() {
        timeout
    } else {
        timeout.mul_f64(interval.as_secs_f64() / base.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budgeted_interval_grows_in_whole_rounds_up_to_its_cap() {
        let (ten, min) = (Duration::from_secs(10), Duration::from_secs(60));
        let at = |peers| budgeted_interval(ten, peers, 32, min);
        assert_eq!([at(0), at(32), at(33), at(64), at(65), at(199), at(10_000)].map(|d| d.as_secs()), [10, 10, 20, 20, 30, 60, 60]);
        assert_eq!(budgeted_interval(ten, 100, 32, Duration::ZERO), ten, "never below the base");
        assert_eq!(stretched_timeout(Duration::from_secs(45), ten, Duration::from_secs(30)), Duration::from_secs(135));
        assert_eq!(stretched_timeout(Duration::from_secs(45), ten, Duration::from_secs(5)), Duration::from_secs(45));
    }

    #[test]
    fn rounds_fall_on_multiples_of_the_interval_at_least_half_an_interval_on() {
        let start = Instant::now();
        let c = RoundClock::new(start, Duration::from_millis(1_000_003_700));
        let ten = Duration::from_secs(10);
        // 3.7 s into a round: the next boundary is 6.3 s away.
        assert_eq!(c.next_round(start, ten) - start, Duration::from_millis(6_300));
        // 1 s before a boundary: that round is this one; the next is 11 s on.
        let late = start + Duration::from_millis(5_300);
        assert_eq!(c.next_round(late, ten) - late, Duration::from_millis(11_000));
        // On the boundary: a whole interval.
        let on = start + Duration::from_millis(6_300);
        assert_eq!(c.next_round(on, ten) - on, ten);
        // Another peer's clock, read at another moment, agrees.
        let other = RoundClock::new(start + Duration::from_millis(1_234), Duration::from_millis(1_000_004_934));
        assert_eq!(other.next_round(late, ten), c.next_round(late, ten));
        assert_eq!(next_round(None, late, ten), late + ten);
    }
}
