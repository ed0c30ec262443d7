//! The replicated name store: one entry per (hostname, origin peer,
//! container, address), written only by its origin, merged by version.
//!
//! * The origin adds an entry (version bumped) or deletes it by turning it
//!   into a tombstone (version bumped, deletion time recorded).
//! * Merge keeps, per key, the higher version; on a tie the later
//!   tombstone. That is a join, so replicas converge whatever the order.
//! * Tombstones are purged 30 minutes after deletion (long enough for every
//!   peer to have heard of them).
//! * Entries of a peer that left the topology are dropped.
//! * A peer told of a live entry "from itself" that it does not hold (it
//!   restarted and lost it: the container is gone) tombstones it, so stale
//!   records after container death (Weave #3652, #2193) do not linger.
//! * Gossip from a peer whose clock is more than [`MAX_CLOCK_SKEW`] away from
//!   ours is refused: tombstone times from it would be meaningless.
//!
//! Hostnames are stored lower-cased and fully qualified (trailing dot);
//! lookups are case-insensitive.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use weave_core::PeerName;

/// Tombstones are kept this long (seconds).
pub const TOMBSTONE_TTL: u64 = 30 * 60;
/// Largest accepted difference between a sender's clock and ours (seconds).
pub const MAX_CLOCK_SKEW: u64 = 5 * 60;
/// Longest hostname (RFC 1035).
pub const MAX_NAME_LEN: usize = 253;
/// Longest container id accepted.
pub const MAX_CONTAINER_LEN: usize = 256;

/// What identifies an entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// Lower-case, fully qualified.
    pub hostname: String,
    /// The peer that owns the entry.
    pub origin: PeerName,
    /// The container it names.
    pub container: String,
    /// The address.
    pub addr: Ipv4Addr,
}

/// The replicated part of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Value {
    /// Bumped by the origin on every change.
    pub version: u64,
    /// When it was deleted (unix seconds), or 0 while live.
    pub tombstone: u64,
}

impl Value {
    fn rank(self) -> (u64, u64) {
        (self.version, self.tombstone)
    }

    /// Whether the entry is deleted.
    pub fn is_tombstone(self) -> bool {
        self.tombstone != 0
    }
}

/// Why an entry or a batch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Not a valid DNS name.
    #[error("invalid hostname {0:?}")]
    InvalidName(String),
    /// A container id that is empty or too long.
    #[error("invalid container id")]
    InvalidContainer,
    /// The sender's clock is too far from ours.
    #[error("refusing DNS gossip from {peer}: its clock is {skew} s away from ours (limit {MAX_CLOCK_SKEW} s); fix the clocks")]
    ClockSkew {
        /// Who sent it.
        peer: PeerName,
        /// By how much.
        skew: u64,
    },
}

/// Lower-case and fully qualify `name` (relative names get `domain`).
pub fn normalize(name: &str, domain: &str) -> Result<String, StoreError> {
    let mut n = name.trim().to_ascii_lowercase();
    if n.is_empty() || n == "." {
        return Err(StoreError::InvalidName(name.to_owned()));
    }
    if !n.ends_with('.') {
        if n.contains('.') {
            n.push('.');
        } else {
            n = format!("{n}.{}", domain.trim_start_matches('.').to_ascii_lowercase());
            if !n.ends_with('.') {
                n.push('.');
            }
        }
    }
    let labels_ok =
        n[..n.len() - 1].split('.').all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    if n.len() > MAX_NAME_LEN + 1 || !labels_ok {
        return Err(StoreError::InvalidName(name.to_owned()));
    }
    Ok(n)
}

/// The store. See the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Store {
    ourself: PeerName,
    entries: BTreeMap<Key, Value>,
    /// Peers that left the topology: their entries are refused (a lagging
    /// peer's full state would bring them back) until they return.
    departed: BTreeSet<PeerName>,
    /// The peers in the topology, once the mesh has told us of any
    /// ([`Store::peer_back`]): entries whose origin is none of them, not
    /// us and not the sender itself are refused — a made-up origin would
    /// never leave the topology, so its entries would never be collected.
    known: Option<BTreeSet<PeerName>>,
}

impl Store {
    /// An empty store for `ourself`.
    pub fn new(ourself: PeerName) -> Self {
        Self { ourself, entries: BTreeMap::new(), departed: BTreeSet::new(), known: None }
    }

    /// Every entry, tombstones included.
    pub fn entries(&self) -> impl Iterator<Item = (&Key, &Value)> {
        self.entries.iter()
    }

    /// Number of live entries.
    pub fn live(&self) -> usize {
        self.entries.values().filter(|v| !v.is_tombstone()).count()
    }

    /// Add (or revive) our entry; returns the changed entry to gossip, or
    /// `None` if it was already live.
    pub fn add(&mut self, hostname: &str, addr: Ipv4Addr, container: &str) -> Option<(Key, Value)> {
        let key = Key { hostname: hostname.to_owned(), origin: self.ourself, container: container.to_owned(), addr };
        let next = match self.entries.get(&key) {
            Some(v) if !v.is_tombstone() => return None,
            Some(v) => v.version.checked_add(1)?,
            None => 1,
        };
        let v = Value { version: next, tombstone: 0 };
        self.entries.insert(key.clone(), v);
        Some((key, v))
    }

    /// Our own live entries: what this peer must bring back after a
    /// restart ([`Store::restore`]).
    pub fn own_live(&self) -> Vec<(Key, Value)> {
        self.entries.iter().filter(|(k, v)| k.origin == self.ourself && !v.is_tombstone()).map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Put back our own live entries saved by a previous run, at their
    /// saved versions, so that peers still holding them see nothing new and
    /// a later delete outranks their copies. Entries of other origins and
    /// tombstones are ignored; where we already hold a key at an equal or
    /// higher rank, ours stands. Returns how many came back.
    pub fn restore(&mut self, saved: impl IntoIterator<Item = (Key, Value)>) -> usize {
        let mut n = 0;
        for (k, v) in saved {
            if k.origin != self.ourself || v.is_tombstone() || self.entries.get(&k).is_some_and(|cur| cur.rank() >= v.rank()) {
                continue;
            }
            self.entries.insert(k, v);
            n += 1;
        }
        n
    }

    /// Delete our live entries matching the filters; returns them (as
    /// tombstones) to gossip.
    pub fn delete(&mut self, now_unix: u64, container: &str, hostname: Option<&str>, addr: Option<Ipv4Addr>) -> Vec<(Key, Value)> {
        let me = self.ourself;
        let mut changed = Vec::new();
        for (k, v) in &mut self.entries {
            let matches = k.origin == me && k.container == container && hostname.is_none_or(|h| k.hostname == h) && addr.is_none_or(|a| k.addr == a);
            if matches && !v.is_tombstone() {
                v.version = v.version.saturating_add(1);
                v.tombstone = now_unix.max(1);
                changed.push((k.clone(), *v));
            }
        }
        changed
    }

    /// Merge entries gossiped by `sender` whose clock read `sender_unix`.
    /// Returns what changed (to relay), including tombstones we issue for
    /// stale entries of our own.
    pub fn merge(&mut self, now_unix: u64, sender: PeerName, sender_unix: u64, batch: Vec<(Key, Value)>) -> Result<Vec<(Key, Value)>, StoreError> {
        let skew = now_unix.abs_diff(sender_unix);
        if skew > MAX_CLOCK_SKEW {
            return Err(StoreError::ClockSkew { peer: sender, skew });
        }
        let mut changed = Vec::new();
        for (k, v) in batch {
            if k.origin == self.ourself {
                // Only we write our entries; a newer copy is from a previous
                // life of ours. What we hold now is the truth: live entries
                // are re-asserted above it, anything else is deleted above
                // it (the container is gone), and an old tombstone is kept so
                // a later add goes past it.
                let ours = self.entries.get(&k).copied();
                if ours.is_some_and(|o| v.rank() <= o.rank()) {
                    continue;
                }
                let Some(next) = v.version.checked_add(1) else { continue };
                let value = match ours {
                    Some(o) if !o.is_tombstone() => Value { version: next, tombstone: 0 },
                    _ if v.is_tombstone() => v,
                    _ => Value { version: next, tombstone: now_unix.max(1) },
                };
                self.entries.insert(k.clone(), value);
                if value != v {
                    changed.push((k, value));
                }
                continue;
            }
            if k.origin != sender && self.known.as_ref().is_some_and(|known| !known.contains(&k.origin)) {
                continue;
            }
            if self.departed.contains(&k.origin) {
                // The origin itself speaking is proof it is back (the
                // topology may not have said so yet); anyone else relaying
                // its entries may be lagging.
                if k.origin != sender {
                    continue;
                }
                self.departed.remove(&k.origin);
            }
            if self.entries.get(&k).is_none_or(|cur| v.rank() > cur.rank()) {
                self.entries.insert(k.clone(), v);
                changed.push((k, v));
            }
        }
        Ok(changed)
    }

    /// Drop the entries of origins that are not peers (once the topology
    /// is known): a made-up origin never leaves the topology, so nothing
    /// else would collect them. Returns how many.
    pub fn drop_strangers(&mut self) -> usize {
        let Some(known) = &self.known else { return 0 };
        let before = self.entries.len();
        let me = self.ourself;
        self.entries.retain(|k, _| k.origin == me || known.contains(&k.origin));
        before - self.entries.len()
    }

    /// Drop tombstones older than [`TOMBSTONE_TTL`]; returns how many.
    pub fn purge(&mut self, now_unix: u64) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, v| !v.is_tombstone() || now_unix.saturating_sub(v.tombstone) < TOMBSTONE_TTL);
        before - self.entries.len()
    }

    /// A peer (re)joined the topology: accept its entries again.
    pub fn peer_back(&mut self, peer: PeerName) {
        self.departed.remove(&peer);
        self.known.get_or_insert_default().insert(peer);
    }

    /// Drop every entry of a peer that left the topology, and refuse its
    /// entries until it is back.
    pub fn peer_gone(&mut self, peer: PeerName) -> usize {
        if peer != self.ourself {
            self.departed.insert(peer);
            self.known.get_or_insert_default().remove(&peer);
        }
        let before = self.entries.len();
        self.entries.retain(|k, _| k.origin != peer);
        before - self.entries.len()
    }

    /// Live addresses for a (normalised) hostname.
    pub fn lookup(&self, hostname: &str) -> Vec<Ipv4Addr> {
        let set: BTreeSet<Ipv4Addr> =
            self.entries.range(range_of(hostname)).filter(|(k, v)| k.hostname == hostname && !v.is_tombstone()).map(|(k, _)| k.addr).collect();
        set.into_iter().collect()
    }

    /// Whether any entry (live) has this hostname.
    pub fn has_name(&self, hostname: &str) -> bool {
        !self.lookup(hostname).is_empty()
    }

    /// Live hostnames for an address (reverse lookup).
    pub fn reverse(&self, addr: Ipv4Addr) -> Vec<String> {
        let set: BTreeSet<&str> = self.entries.iter().filter(|(k, v)| k.addr == addr && !v.is_tombstone()).map(|(k, _)| k.hostname.as_str()).collect();
        set.into_iter().map(str::to_owned).collect()
    }
}

fn range_of(hostname: &str) -> std::ops::RangeInclusive<Key> {
    let lo = Key { hostname: hostname.to_owned(), origin: PeerName::default(), container: String::new(), addr: Ipv4Addr::UNSPECIFIED };
    let hi = Key {
        hostname: hostname.to_owned(),
        origin: PeerName::from_u64(PeerName::MAX).expect("max is valid"),
        container: "\u{10FFFF}".repeat(MAX_CONTAINER_LEN),
        addr: Ipv4Addr::BROADCAST,
    };
    lo..=hi
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(n: u64) -> PeerName {
        PeerName::from_u64(n).unwrap()
    }

    const T: u64 = 1_800_000_000;

    #[test]
    fn names_are_normalised_case_insensitively_with_the_domain() {
        assert_eq!(normalize("C2", "weave.local.").unwrap(), "c2.weave.local.");
        assert_eq!(normalize("Web.Example.COM", "weave.local.").unwrap(), "web.example.com.");
        assert_eq!(normalize("x.weave.local.", "weave.local.").unwrap(), "x.weave.local.");
        for bad in ["", ".", "a..b", "bad name", &"x".repeat(64)] {
            assert!(normalize(bad, "weave.local.").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn add_delete_and_lookup() {
        let mut s = Store::new(p(1));
        let a: Ipv4Addr = "10.32.0.1".parse().unwrap();
        let b: Ipv4Addr = "10.32.0.2".parse().unwrap();
        assert!(s.add("c.weave.local.", a, "ca").is_some());
        assert!(s.add("c.weave.local.", b, "cb").is_some());
        assert!(s.add("c.weave.local.", a, "ca").is_none(), "already live");
        assert_eq!(s.lookup("c.weave.local."), vec![a, b]);
        assert_eq!(s.reverse(a), vec!["c.weave.local.".to_string()]);
        let gone = s.delete(T, "ca", None, None);
        assert_eq!(gone.len(), 1);
        assert_eq!(s.lookup("c.weave.local."), vec![b]);
        assert_eq!(s.purge(T + TOMBSTONE_TTL - 1), 0);
        assert_eq!(s.purge(T + TOMBSTONE_TTL), 1);
    }

    #[test]
    fn entries_of_a_made_up_origin_are_refused_once_the_topology_is_known() {
        let mut s = Store::new(p(1));
        s.peer_back(p(2));
        s.peer_back(p(3));
        let entry = |origin: u64, name: &str| {
            (
                Key { hostname: format!("{name}.weave.local."), origin: p(origin), container: "c".into(), addr: "10.32.0.7".parse().unwrap() },
                Value { version: 1, tombstone: 0 },
            )
        };
        // Peer 2 relays its own entry and peer 3's: both are peers.
        let changed = s.merge(T, p(2), T, vec![entry(2, "two"), entry(3, "three"), entry(99, "forged")]).unwrap();
        assert_eq!(changed.len(), 2);
        assert!(s.lookup("forged.weave.local.").is_empty(), "an origin that is no peer is refused");
        assert!(!s.lookup("three.weave.local.").is_empty());
        // A new peer speaking for itself is heard before the topology
        // lists it...
        s.merge(T, p(4), T, vec![entry(4, "four")]).unwrap();
        assert!(!s.lookup("four.weave.local.").is_empty());
        // ...but a sender can name itself anything: an origin the topology
        // never lists is collected.
        s.merge(T, p(98), T, vec![entry(98, "liar")]).unwrap();
        s.peer_back(p(4));
        assert_eq!(s.drop_strangers(), 1);
        assert!(s.lookup("liar.weave.local.").is_empty() && !s.lookup("four.weave.local.").is_empty());
    }

    #[test]
    fn a_stale_entry_from_ourselves_is_tombstoned() {
        let mut s = Store::new(p(1));
        let k = Key { hostname: "old.weave.local.".into(), origin: p(1), container: "dead".into(), addr: "10.32.0.9".parse().unwrap() };
        let changed = s.merge(T, p(2), T, vec![(k.clone(), Value { version: 3, tombstone: 0 })]).unwrap();
        assert_eq!(changed, vec![(k, Value { version: 4, tombstone: T })]);
        assert!(s.lookup("old.weave.local.").is_empty());
    }

    #[test]
    fn after_a_router_restart_live_entries_are_reasserted_not_deleted() {
        let mut s = Store::new(p(1));
        let a: Ipv4Addr = "10.32.0.9".parse().unwrap();
        // The restarted router re-adds its running container at version 1.
        s.add("web.weave.local.", a, "c");
        let k = Key { hostname: "web.weave.local.".into(), origin: p(1), container: "c".into(), addr: a };
        let changed = s.merge(T, p(2), T, vec![(k.clone(), Value { version: 3, tombstone: 0 })]).unwrap();
        assert_eq!(changed, vec![(k.clone(), Value { version: 4, tombstone: 0 })]);
        assert_eq!(s.lookup("web.weave.local."), vec![a]);
        // A newer tombstone from a previous life is outbid too.
        let changed = s.merge(T, p(2), T, vec![(k.clone(), Value { version: 7, tombstone: T })]).unwrap();
        assert_eq!(changed, vec![(k, Value { version: 8, tombstone: 0 })]);
    }

    #[test]
    fn restored_names_keep_their_versions_and_a_later_delete_outranks_peers() {
        let a: Ipv4Addr = "10.32.0.9".parse().unwrap();
        let mut before = Store::new(p(1));
        before.add("web.weave.local.", a, "c");
        before.add("gone.weave.local.", a, "d");
        before.delete(T, "d", None, None);
        // A peer's copy of ours, and an entry of the peer's own.
        let k = Key { hostname: "web.weave.local.".into(), origin: p(1), container: "c".into(), addr: a };
        let theirs = Key { hostname: "x.weave.local.".into(), origin: p(2), container: "e".into(), addr: a };
        before.merge(T, p(2), T, vec![(theirs.clone(), Value { version: 1, tombstone: 0 })]).unwrap();
        let saved = before.own_live();
        assert_eq!(saved, vec![(k.clone(), Value { version: 1, tombstone: 0 })], "only our live entries are saved");

        let mut after = Store::new(p(1));
        // Anything not ours, or dead, is not restored.
        let mut file = saved.clone();
        file.push((theirs, Value { version: 1, tombstone: 0 }));
        file.push((Key { container: "z".into(), ..k.clone() }, Value { version: 2, tombstone: T }));
        assert_eq!(after.restore(file), 1);
        assert_eq!(after.lookup("web.weave.local."), vec![a]);
        // Peers holding version 1 hear nothing new from it.
        assert!(after.merge(T, p(2), T, vec![(k.clone(), Value { version: 1, tombstone: 0 })]).unwrap().is_empty());
        // Deleting it now outranks the peers' live copy at once.
        assert_eq!(after.delete(T, "c", None, None), vec![(k, Value { version: 2, tombstone: T })]);
        // Restoring again does not bring back what was deleted since.
        assert_eq!(after.restore(saved), 0);
        assert!(after.lookup("web.weave.local.").is_empty());
    }

    #[test]
    fn gossip_from_a_far_off_clock_is_refused() {
        let mut s = Store::new(p(1));
        let e = s.merge(T, p(2), T + 3600, vec![]).unwrap_err();
        assert!(e.to_string().contains("clock is 3600 s away"), "{e}");
    }

    #[test]
    fn entries_of_a_departed_peer_are_dropped() {
        let mut s = Store::new(p(1));
        let k = Key { hostname: "x.weave.local.".into(), origin: p(2), container: "c".into(), addr: "10.32.0.9".parse().unwrap() };
        s.merge(T, p(2), T, vec![(k, Value { version: 1, tombstone: 0 })]).unwrap();
        assert_eq!(s.peer_gone(p(2)), 1);
        assert!(s.lookup("x.weave.local.").is_empty());
        let k = Key { hostname: "x.weave.local.".into(), origin: p(2), container: "c".into(), addr: "10.32.0.9".parse().unwrap() };
        s.merge(T, p(3), T, vec![(k.clone(), Value { version: 1, tombstone: 0 })]).unwrap();
        assert!(s.lookup("x.weave.local.").is_empty(), "a lagging peer cannot bring them back");
        s.peer_back(p(2));
        s.merge(T, p(3), T, vec![(k, Value { version: 1, tombstone: 0 })]).unwrap();
        assert_eq!(s.lookup("x.weave.local.").len(), 1);
    }

    fn arb_entry() -> impl Strategy<Value = (Key, Value)> {
        (0u8..3, 2u64..4, 0u8..2, 0u8..2, 1u64..5, any::<bool>()).prop_map(|(h, o, c, a, v, t)| {
            (
                Key { hostname: format!("h{h}.weave.local."), origin: p(o), container: format!("c{c}"), addr: Ipv4Addr::new(10, 32, 0, a) },
                Value { version: v, tombstone: if t { T + v } else { 0 } },
            )
        })
    }

    proptest! {
        #[test]
        fn merge_converges_whatever_the_order(batch in proptest::collection::vec(arb_entry(), 0..40), seed in any::<u64>()) {
            let mut a = Store::new(p(1));
            a.merge(T, p(2), T, batch.clone()).unwrap();
            let mut shuffled = batch.clone();
            shuffled.extend(batch.iter().cloned());
            use rand::seq::SliceRandom;
            shuffled.shuffle(&mut weave_core::rng::seeded(seed));
            let mut b = Store::new(p(1));
            for chunk in shuffled.chunks(3) {
                b.merge(T, p(3), T, chunk.to_vec()).unwrap();
            }
            prop_assert_eq!(a, b);
        }
    }
}
