//! Per-connection datagram encryption: AES-256-GCM (ring; AES-NI and
//! carry-less multiply where the CPU has them) with the key the mesh
//! handshake exported for each direction, an explicit 64-bit counter as the
//! nonce (carried in the header, which is the associated data), and a
//! sliding replay window on receive.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

use crate::wire::TAG_LEN;

/// Why a sealed datagram was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Shorter than a tag.
    #[error("sealed body shorter than its tag")]
    Short,
    /// Authentication failed (wrong key, tampering).
    #[error("authentication failed")]
    Auth,
    /// The counter was seen before or is too old.
    #[error("replayed or too old")]
    Replay,
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

fn key(k: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, k).expect("a 32-byte key fits AES-256-GCM"))
}

/// The sending half: a key and the next counter.
pub struct Sealer {
    aead: LessSafeKey,
    next: u64,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").field("next", &self.next).finish_non_exhaustive()
    }
}

impl Sealer {
    /// A sealer for `key`, counting from 0.
    pub fn new(k: &[u8; 32]) -> Self {
        Self { aead: key(k), next: 0 }
    }

    /// Reserve the next counter (the caller writes it into the header).
    pub fn next_counter(&mut self) -> u64 {
        let c = self.next;
        // 2^64 datagrams will not be sent on one connection; stop rather
        // than wrap if they somehow were.
        self.next = self.next.checked_add(1).expect("datagram counter exhausted");
        c
    }

    /// Encrypt `body` in place under `counter` with `aad`, appending the tag.
    pub fn seal(&self, counter: u64, aad: &[u8], body: &mut Vec<u8>, from: usize) {
        let tag = self.aead.seal_in_place_separate_tag(nonce(counter), Aad::from(aad), &mut body[from..]).expect("AES-GCM seals any length we send");
        body.extend_from_slice(tag.as_ref());
    }
}

/// The receiving half: a key and the replay window.
pub struct Opener {
    aead: LessSafeKey,
    window: ReplayWindow,
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener").field("window", &self.window).finish_non_exhaustive()
    }
}

impl Opener {
    /// An opener for `key`.
    pub fn new(k: &[u8; 32]) -> Self {
        Self { aead: key(k), window: ReplayWindow::default() }
    }

    /// Authenticate and decrypt `sealed` (body then tag) in place; returns
    /// the plaintext length. The counter is recorded only once authentic.
    pub fn open(&mut self, counter: u64, aad: &[u8], sealed: &mut [u8]) -> Result<usize, OpenError> {
        let len = sealed.len().checked_sub(TAG_LEN).ok_or(OpenError::Short)?;
        if !self.window.check(counter) {
            return Err(OpenError::Replay);
        }
        self.aead.open_in_place(nonce(counter), Aad::from(aad), sealed).map_err(|_| OpenError::Auth)?;
        if !self.window.update(counter) {
            return Err(OpenError::Replay);
        }
        Ok(len)
    }
}

/// Bits in the replay window: counters this far behind the newest are
/// still accepted once (reordering across batches and threads).
pub const WINDOW_BITS: u64 = 4096;
const WORDS: usize = (WINDOW_BITS / 64) as usize;

/// A sliding window of seen counters (RFC 6479 style bitmap).
#[derive(Clone)]
pub struct ReplayWindow {
    /// Highest counter accepted plus one (0: none yet).
    top: u64,
    bits: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self { top: 0, bits: [0; WORDS] }
    }
}

impl std::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayWindow").field("top", &self.top).finish_non_exhaustive()
    }
}

impl ReplayWindow {
    fn slot(c: u64) -> (usize, u64) {
        let bit = c % WINDOW_BITS;
        ((bit / 64) as usize, 1u64 << (bit % 64))
    }

    /// Whether `c` would be accepted (not seen, not too old). The last
    /// counter value is never valid (no sealer reaches it).
    pub fn check(&self, c: u64) -> bool {
        if c == u64::MAX {
            return false;
        }
        if c >= self.top {
            return true;
        }
        if self.top - c > WINDOW_BITS - 64 {
            return false;
        }
        let (w, m) = Self::slot(c);
        self.bits[w] & m == 0
    }

    /// Record `c`; false if it was not acceptable.
    pub fn update(&mut self, c: u64) -> bool {
        if !self.check(c) {
            return false;
        }
        if c >= self.top {
            if self.top == 0 {
                self.bits = [0; WORDS];
            } else {
                // Clear the words after the highest counter seen, up to and
                // including the new counter's (they hold bits from a lap ago).
                let old_word = (self.top - 1) / 64;
                let new_word = c / 64;
                let clear = (new_word - old_word).min(WORDS as u64);
                for i in 1..=clear {
                    let idx = ((old_word + i) % WORDS as u64) as usize;
                    self.bits[idx] = 0;
                }
            }
            self.top = c + 1;
        }
        let (w, m) = Self::slot(c);
        self.bits[w] |= m;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let key = [7u8; 32];
        let mut s = Sealer::new(&key);
        let mut o = Opener::new(&key);
        let aad = [1u8; 16];
        let c = s.next_counter();
        let mut buf = b"hello sleeve".to_vec();
        s.seal(c, &aad, &mut buf, 0);
        assert_ne!(&buf[..12], b"hello sleeve");
        let mut copy = buf.clone();
        assert_eq!(o.open(c, &aad, &mut copy), Ok(12));
        assert_eq!(&copy[..12], b"hello sleeve");
        // Replay refused.
        let mut again = buf.clone();
        assert_eq!(o.open(c, &aad, &mut again), Err(OpenError::Replay));
        // Tampering refused, and does not burn the counter.
        let c2 = s.next_counter();
        let mut b2 = b"x".to_vec();
        s.seal(c2, &aad, &mut b2, 0);
        let mut bad = b2.clone();
        bad[0] ^= 1;
        assert_eq!(o.open(c2, &aad, &mut bad), Err(OpenError::Auth));
        assert_eq!(o.open(c2, &[2u8; 16], &mut b2.clone()), Err(OpenError::Auth));
        assert_eq!(o.open(c2, &aad, &mut b2), Ok(1));
        // Wrong key.
        let mut other = Opener::new(&[8u8; 32]);
        let c3 = s.next_counter();
        let mut b3 = b"y".to_vec();
        s.seal(c3, &aad, &mut b3, 0);
        assert_eq!(other.open(c3, &aad, &mut b3), Err(OpenError::Auth));
        assert_eq!(other.open(c3, &aad, &mut [0u8; 3]), Err(OpenError::Short));
    }

    #[test]
    fn window_accepts_reordering_refuses_old_and_repeats() {
        let mut w = ReplayWindow::default();
        assert!(w.update(0));
        assert!(!w.update(0));
        assert!(w.update(10));
        assert!(w.update(5));
        assert!(!w.update(5));
        assert!(w.update(10_000));
        assert!(!w.update(10), "too old");
        assert!(w.update(10_000 - 100));
        assert!(w.update(u64::MAX - 1));
        assert!(!w.update(u64::MAX - 1));
        // Found by the fuzzer: the top counter must not overflow the window.
        assert!(!w.update(u64::MAX));
        assert!(!ReplayWindow::default().update(u64::MAX));
    }

    #[test]
    fn reordering_after_many_laps_is_accepted() {
        // Found in review: with the top at a multiple of 64, the new word
        // kept bits from 4096 counters earlier.
        let mut w = ReplayWindow::default();
        for c in 0..10_000 {
            assert!(w.update(c), "in order {c}");
        }
        assert!(w.update(10_001));
        assert!(w.update(10_000), "a swapped pair is fine");
        for c in (10_002..20_000).step_by(2) {
            assert!(w.update(c + 1));
            assert!(w.update(c), "swapped pair at {c}");
        }
    }

    proptest! {
        /// Dense, mostly in-order streams with local swaps: every counter
        /// is accepted exactly once.
        #[test]
        fn dense_reordered_streams_are_accepted(n in 100u64..20_000, swaps in proptest::collection::vec((0u64..20_000, 1u64..64), 0..200)) {
            let mut order: Vec<u64> = (0..n).collect();
            for (at, d) in swaps {
                let (a, b) = ((at % n) as usize, ((at + d) % n) as usize);
                order.swap(a, b.min(a + 63).min(n as usize - 1));
            }
            let mut w = ReplayWindow::default();
            let mut top = 0u64;
            for c in order {
                let in_window = c >= top || top - c <= WINDOW_BITS - 64;
                prop_assert_eq!(w.update(c), in_window, "counter {} (top {})", c, top);
                top = top.max(c + 1);
                prop_assert!(!w.update(c));
            }
        }

        /// Against a set model: a counter is accepted at most once, and
        /// always when new and within the window.
        #[test]
        fn window_matches_model(ops in proptest::collection::vec(0u64..20_000, 1..400)) {
            let mut w = ReplayWindow::default();
            let mut seen = std::collections::HashSet::new();
            let mut top = 0u64;
            for c in ops {
                let ok = w.update(c);
                let fresh = !seen.contains(&c);
                let in_window = c >= top || top - c <= WINDOW_BITS - 64;
                if ok {
                    prop_assert!(fresh, "counter {} accepted twice", c);
                    seen.insert(c);
                    top = top.max(c + 1);
                } else {
                    prop_assert!(!fresh || !in_window, "fresh in-window counter {} refused (top {})", c, top);
                }
            }
        }
    }
}
