//! One peer's weaveDNS state on a gossip channel: the store plus the wall
//! clock mapping and the deltas to gossip. Sans-IO.
//!
//! Call order: call the operations; send every [`Dns::poll_gossip`] result
//! to the mesh as channel gossip; feed received gossip to
//! [`Dns::handle_gossip`] (it returns what to relay); call
//! [`Dns::handle_timeout`] at [`Dns::poll_timeout`] to purge tombstones.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use weave_core::PeerName;
use weave_gossip::identity::{Identity, PeerKey};

use crate::store::{normalize, Store, StoreError};
use crate::wire::{self, DecodeError};

/// Largest full-state message (well under the mesh's 1 MiB bound).
pub const STATE_CHUNK: usize = 256 * 1024;

/// How often tombstones are purged.
const PURGE_INTERVAL: Duration = Duration::from_secs(60);

/// Anything a DNS operation or message can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// A bad name or container.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A bad message.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Wall-clock seconds for tombstones and the skew check.
#[derive(Debug, Clone, Copy)]
pub enum WallClock {
    /// The system clock, read on every use (so NTP steps and suspends are
    /// followed).
    System,
    /// Simulated: `base` corresponds to `base_unix`, advancing with `now`.
    Fixed {
        /// The instant of `base_unix`.
        base: Instant,
        /// Seconds since the epoch at `base`.
        base_unix: u64,
    },
}

impl WallClock {
    /// A simulated clock: `base` corresponds to `base_unix`.
    pub fn new(base: Instant, base_unix: u64) -> Self {
        Self::Fixed { base, base_unix }
    }

    /// The real clock.
    pub fn system() -> Self {
        Self::System
    }

    /// Seconds since the epoch at `now`.
    pub fn unix(&self, now: Instant) -> u64 {
        match *self {
            Self::System => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            Self::Fixed { base, base_unix } => base_unix + now.saturating_duration_since(base).as_secs(),
        }
    }
}

/// One peer's weaveDNS.
#[derive(Debug, Clone)]
pub struct Dns {
    store: Store,
    domain: String,
    clock: WallClock,
    out: VecDeque<Vec<u8>>,
    next_purge: Instant,
}

impl Dns {
    /// DNS for `ourself`, answering for `domain` (e.g. `weave.local.`); our
    /// entries are signed by `identity` (the mesh's: the key our topology
    /// record carries).
    pub fn new(identity: Identity, ourself: PeerName, domain: &str, clock: WallClock, now: Instant) -> Self {
        let mut domain = domain.trim_start_matches('.').to_ascii_lowercase();
        if !domain.ends_with('.') {
            domain.push('.');
        }
        Self { store: Store::new(identity, ourself), domain, clock, out: VecDeque::new(), next_purge: now + PURGE_INTERVAL }
    }

    /// The domain, lower-case with a trailing dot.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The entries.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// `name` normalised (relative names get the domain).
    pub fn normalize(&self, name: &str) -> Result<String, DnsError> {
        Ok(normalize(name, &self.domain)?)
    }

    /// Register `name` → `addr` for `container`.
    pub fn add(&mut self, now: Instant, name: &str, addr: Ipv4Addr, container: &str) -> Result<(), DnsError> {
        let name = self.normalize(name)?;
        check_container(container)?;
        if let Some(e) = self.store.add(&name, addr, container) {
            self.out.push_back(wire::encode(self.clock.unix(now), &[e]));
        }
        Ok(())
    }

    /// Remove our entries for `container`, optionally only for one name or
    /// address; returns how many.
    pub fn remove(&mut self, now: Instant, container: &str, name: Option<&str>, addr: Option<Ipv4Addr>) -> Result<usize, DnsError> {
        let name = name.map(|n| self.normalize(n)).transpose()?;
        let gone = self.store.delete(self.clock.unix(now), container, name.as_deref(), addr);
        if !gone.is_empty() {
            self.out.push_back(wire::encode(self.clock.unix(now), &gone));
        }
        Ok(gone.len())
    }

    /// Our own live entries, encoded for a file: what a restarted router
    /// reads back with [`Dns::restore_own`]. Save it after every local
    /// change, before the change is gossiped, so a name that peers heard of
    /// survives a crash.
    pub fn save_own(&self, now: Instant) -> Vec<u8> {
        wire::encode(self.clock.unix(now), &self.store.own_live())
    }

    /// Bring back the entries [`Dns::save_own`] wrote in a previous run (at
    /// their saved versions; they reach peers with the next full state).
    /// Returns how many came back.
    pub fn restore_own(&mut self, bytes: &[u8]) -> Result<usize, DnsError> {
        let batch = wire::decode(bytes)?;
        if batch.skipped > 0 {
            tracing::warn!(skipped = batch.skipped, "ignored invalid entries in the saved DNS names");
        }
        Ok(self.store.restore(batch.entries.into_iter().map(|s| (s.key, s.value))))
    }

    /// Live addresses for `name` (case-insensitive; relative names get the domain).
    pub fn lookup(&self, name: &str) -> Vec<Ipv4Addr> {
        self.normalize(name).map(|n| self.store.lookup(&n)).unwrap_or_default()
    }

    /// Merge gossip from `src`; returns what to relay.
    pub fn handle_gossip(&mut self, now: Instant, src: PeerName, bytes: &[u8]) -> Result<Option<Vec<u8>>, DnsError> {
        let batch = wire::decode(bytes)?;
        if batch.skipped > 0 {
            tracing::warn!(%src, skipped = batch.skipped, "ignored invalid DNS entries in gossip");
        }
        let unix = self.clock.unix(now);
        let changed = self.store.merge(unix, src, batch.sender_unix, batch.entries)?;
        Ok((!changed.is_empty()).then(|| wire::encode(unix, &changed)))
    }

    /// Every entry, for anti-entropy, in messages of at most
    /// [`STATE_CHUNK`] bytes each (a large store must not exceed the mesh's
    /// message bound and be dropped whole).
    pub fn full_state(&self, now: Instant) -> Vec<Vec<u8>> {
        let unix = self.clock.unix(now);
        let mut out = Vec::new();
        let mut batch = Vec::new();
        let mut size = 0;
        for e in self.store.signed_entries() {
            // Upper bound of one entry's encoding: fields, signature, tags
            // and lengths.
            let len = e.key.hostname.len() + e.key.container.len() + 48 + 66;
            if !batch.is_empty() && size + len > STATE_CHUNK {
                out.push(wire::encode(unix, &batch));
                batch.clear();
                size = 0;
            }
            size += len;
            batch.push(e);
        }
        if !batch.is_empty() || out.is_empty() {
            out.push(wire::encode(unix, &batch));
        }
        out
    }

    /// Every entry in one message with no clock reading: equal wherever
    /// the stores hold the same entries (what anti-entropy compares).
    pub fn entries_state(&self) -> Vec<u8> {
        wire::encode(0, &self.store.signed_entries().collect::<Vec<_>>())
    }

    /// A peer left the topology: drop its entries.
    pub fn peer_gone(&mut self, peer: PeerName) {
        self.store.peer_gone(peer);
    }

    /// A peer joined or rejoined the topology, its records signed by `key`:
    /// what arrived from it before the topology listed it is merged now,
    /// and relayed.
    pub fn peer_back(&mut self, now: Instant, peer: PeerName, key: PeerKey) {
        let unix = self.clock.unix(now);
        let changed = self.store.peer_back(unix, peer, key);
        if !changed.is_empty() {
            self.out.push_back(wire::encode(unix, &changed));
        }
    }

    /// The next delta to gossip.
    pub fn poll_gossip(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    /// Purge old tombstones.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now >= self.next_purge {
            self.store.purge(self.clock.unix(now));
            let strangers = self.store.drop_strangers();
            if strangers > 0 {
                tracing::warn!(entries = strangers, "dropped DNS entries of origins that are not peers");
            }
            self.next_purge = now + PURGE_INTERVAL;
        }
    }

    /// When to call [`Dns::handle_timeout`].
    pub fn poll_timeout(&self) -> Instant {
        self.next_purge
    }
}

fn check_container(c: &str) -> Result<(), StoreError> {
    if c.is_empty() || c.len() > crate::store::MAX_CONTAINER_LEN {
        return Err(StoreError::InvalidContainer);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: u8) -> PeerName {
        PeerName::from_u64(u64::from(n)).unwrap()
    }

    fn identity(n: u8) -> Identity {
        Identity::from_secret([n; 32])
    }

    /// Peers 1 (`a`) and 2 (`b`) on one clock, `b` knowing `a`'s key.
    fn pair(now: Instant) -> (Dns, Dns) {
        let clock = WallClock::new(now, 1_800_000_000);
        let a = Dns::new(identity(1), name(1), "weave.local.", clock, now);
        let mut b = Dns::new(identity(2), name(2), "weave.local.", clock, now);
        b.peer_back(now, name(1), identity(1).public());
        (a, b)
    }

    #[test]
    fn a_large_full_state_is_split_under_the_bound_and_loses_nothing() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        for i in 0..20_000u32 {
            let name = format!("container-with-a-fairly-long-name-{i}");
            a.add(now, &name, Ipv4Addr::from(0x0a20_0000 + i), &format!("{i:064}")).unwrap();
        }
        let chunks = a.full_state(now);
        assert!(chunks.len() > 1);
        assert!(chunks.iter().all(|c| c.len() <= STATE_CHUNK), "{:?}", chunks.iter().map(Vec::len).max());
        for c in &chunks {
            b.handle_gossip(now, name(1), c).unwrap();
        }
        assert_eq!(b.store().live(), 20_000);
    }

    #[test]
    fn the_state_anti_entropy_compares_is_the_same_wherever_the_entries_are() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        a.add(now, "web", Ipv4Addr::new(10, 32, 0, 1), &"a".repeat(64)).unwrap();
        let later = now + Duration::from_secs(7);
        for c in &a.full_state(now) {
            b.handle_gossip(later, name(1), c).unwrap();
        }
        // The full states carry each sender's clock; the compared ones not.
        assert_ne!(a.full_state(now), b.full_state(later));
        assert_eq!(a.entries_state(), b.entries_state());
        b.add(later, "db", Ipv4Addr::new(10, 32, 0, 2), &"b".repeat(64)).unwrap();
        assert_ne!(a.entries_state(), b.entries_state());
    }
}
