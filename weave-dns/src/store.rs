//! The replicated name store: one entry per (hostname, origin peer,
//! container, address), written only by its origin, merged by version.
//!
//! * Every entry carries its origin's signature (see
//!   [`weave_gossip::identity`]); entries are accepted only from origins
//!   the topology lists, signed by the key it lists for them. No peer can
//!   register, change or delete a name in another's name, nor under a
//!   made-up origin.
//! * The origin adds an entry (version bumped) or deletes it by turning it
//!   into a tombstone (version bumped, deletion time recorded).
//! * Merge keeps, per key, the higher version; on a tie the later
//!   tombstone. That is a join, so replicas converge whatever the order.
//! * Tombstones are purged 30 minutes after deletion (long enough for every
//!   peer to have heard of them).
//! * Entries of a peer that left the topology are dropped (and refused until
//!   it is back). Entries of an origin the topology does not list yet are
//!   held, up to [`MAX_HELD`] of them until the next purge, and merged when
//!   it lists the origin: a restarted peer's full state often arrives
//!   before its topology record does, and would otherwise wait for the next
//!   anti-entropy round.
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
use weave_gossip::identity::{Identity, PeerKey, Signature};

use crate::wire;

/// Tombstones are kept this long (seconds).
pub const TOMBSTONE_TTL: u64 = 30 * 60;
/// Largest accepted difference between a sender's clock and ours (seconds).
pub const MAX_CLOCK_SKEW: u64 = 5 * 60;
/// Longest hostname (RFC 1035).
pub const MAX_NAME_LEN: usize = 253;
/// Longest container id accepted.
pub const MAX_CONTAINER_LEN: usize = 256;
/// Most entries held for origins the topology does not list yet.
pub const MAX_HELD: usize = 4096;

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

/// An entry with its origin's signature, as it travels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// What it names.
    pub key: Key,
    /// Its version and state.
    pub value: Value,
    /// The origin's signature of both.
    pub signature: Signature,
}

/// What an entry's signature is made for.
const ENTRY_DOMAIN: &str = "weave-rs dns entry v1";

impl Signed {
    /// `key` → `value`, signed by `identity` (the origin's).
    pub fn new(identity: &Identity, key: Key, value: Value) -> Self {
        let signature = identity.sign(ENTRY_DOMAIN, &wire::signed_bytes(&key, value));
        Self { key, value, signature }
    }

    /// Whether `origin_key` signed it.
    pub fn verify(&self, origin_key: &PeerKey) -> bool {
        origin_key.verify(ENTRY_DOMAIN, &wire::signed_bytes(&self.key, self.value), &self.signature)
    }
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
#[derive(Debug, Clone)]
pub struct Store {
    ourself: PeerName,
    identity: Identity,
    entries: BTreeMap<Key, (Value, Signature)>,
    /// The peers in the topology and their keys: entries of any other
    /// origin (one that left, or a made-up one) are refused — a made-up
    /// origin would never leave the topology, so its entries would never be
    /// collected — and every entry must be signed by its origin's key.
    keys: BTreeMap<PeerName, PeerKey>,
    /// Entries of origins not (yet) listed, unverified: merged if the
    /// origin joins with a key that signed them, dropped at the next purge.
    held: BTreeMap<Key, (Value, Signature)>,
    /// Newer entries refused for their origin or signature.
    refused: u64,
}

impl PartialEq for Store {
    fn eq(&self, other: &Self) -> bool {
        (self.ourself, &self.entries, &self.keys) == (other.ourself, &other.entries, &other.keys)
    }
}

impl Eq for Store {}

impl Store {
    /// An empty store for `ourself`, whose entries `identity` signs.
    pub fn new(identity: Identity, ourself: PeerName) -> Self {
        Self { ourself, identity, entries: BTreeMap::new(), keys: BTreeMap::new(), held: BTreeMap::new(), refused: 0 }
    }

    /// Newer entries refused so far: not signed by their origin's key, or
    /// of an origin the topology did not list in time (see [`MAX_HELD`]).
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Entries held for origins the topology does not list yet.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    fn sign(&self, key: Key, value: Value) -> Signed {
        Signed::new(&self.identity, key, value)
    }

    /// Every entry, tombstones included.
    pub fn entries(&self) -> impl Iterator<Item = (&Key, &Value)> {
        self.entries.iter().map(|(k, (v, _))| (k, v))
    }

    /// Every entry with its signature, as it is gossiped.
    pub fn signed_entries(&self) -> impl Iterator<Item = Signed> + '_ {
        self.entries.iter().map(|(k, (v, sig))| Signed { key: k.clone(), value: *v, signature: *sig })
    }

    /// Number of live entries.
    pub fn live(&self) -> usize {
        self.entries.values().filter(|(v, _)| !v.is_tombstone()).count()
    }

    /// Add (or revive) our entry; returns the changed entry to gossip, or
    /// `None` if it was already live.
    pub fn add(&mut self, hostname: &str, addr: Ipv4Addr, container: &str) -> Option<Signed> {
        let key = Key { hostname: hostname.to_owned(), origin: self.ourself, container: container.to_owned(), addr };
        let next = match self.entries.get(&key) {
            Some((v, _)) if !v.is_tombstone() => return None,
            Some((v, _)) => v.version.checked_add(1).filter(|&n| n <= wire::MAX_VERSION)?,
            None => 1,
        };
        Some(self.put(self.sign(key, Value { version: next, tombstone: 0 })))
    }

    fn put(&mut self, s: Signed) -> Signed {
        self.entries.insert(s.key.clone(), (s.value, s.signature));
        s
    }

    /// Our own live entries: what this peer must bring back after a
    /// restart ([`Store::restore`]).
    pub fn own_live(&self) -> Vec<Signed> {
        self.signed_entries().filter(|s| s.key.origin == self.ourself && !s.value.is_tombstone()).collect()
    }

    /// Put back our own live entries saved by a previous run, at their
    /// saved versions (signed again, with our key as it is now), so that
    /// peers still holding them see nothing new and a later delete outranks
    /// their copies. Entries of other origins and tombstones are ignored;
    /// where we already hold a key at an equal or higher rank, ours stands.
    /// Returns how many came back.
    pub fn restore(&mut self, saved: impl IntoIterator<Item = (Key, Value)>) -> usize {
        let mut n = 0;
        for (k, v) in saved {
            if k.origin != self.ourself || v.is_tombstone() || self.entries.get(&k).is_some_and(|(cur, _)| cur.rank() >= v.rank()) {
                continue;
            }
            self.put(self.sign(k, v));
            n += 1;
        }
        n
    }

    /// Delete our live entries matching the filters; returns them (as
    /// tombstones) to gossip.
    pub fn delete(&mut self, now_unix: u64, container: &str, hostname: Option<&str>, addr: Option<Ipv4Addr>) -> Vec<Signed> {
        let me = self.ourself;
        let doomed: Vec<(Key, Value)> = self
            .entries
            .iter()
            .filter(|(k, (v, _))| {
                k.origin == me && k.container == container && hostname.is_none_or(|h| k.hostname == h) && addr.is_none_or(|a| k.addr == a) && !v.is_tombstone()
            })
            .map(|(k, (v, _))| (k.clone(), *v))
            .collect();
        doomed.into_iter().map(|(k, v)| self.put(self.sign(k, Value { version: v.version.saturating_add(1), tombstone: now_unix.max(1) }))).collect()
    }

    /// Merge entries gossiped by `sender` whose clock read `sender_unix`.
    /// Returns what changed (to relay), including tombstones we issue for
    /// stale entries of our own.
    pub fn merge(&mut self, now_unix: u64, sender: PeerName, sender_unix: u64, batch: Vec<Signed>) -> Result<Vec<Signed>, StoreError> {
        let skew = now_unix.abs_diff(sender_unix);
        if skew > MAX_CLOCK_SKEW {
            return Err(StoreError::ClockSkew { peer: sender, skew });
        }
        let mut changed = Vec::new();
        for s in batch {
            changed.extend(self.merge_one(now_unix, s));
        }
        Ok(changed)
    }

    /// Merge one entry; returns what changed. An entry of an origin the
    /// topology does not list is held (see [`Store::peer_back`]).
    fn merge_one(&mut self, now_unix: u64, s: Signed) -> Option<Signed> {
        let (k, v) = (&s.key, s.value);
        let ours = self.entries.get(k).map(|(v, _)| *v);
        if ours.is_some_and(|o| v.rank() <= o.rank()) {
            return None;
        }
        let origin_key = if k.origin == self.ourself { Some(self.identity.public()) } else { self.keys.get(&k.origin).copied() };
        let Some(origin_key) = origin_key else {
            self.hold(s);
            return None;
        };
        if !s.verify(&origin_key) {
            self.refused += 1;
            return None;
        }
        if k.origin != self.ourself {
            return Some(self.put(s));
        }
        // Only we write our entries; a newer copy is from a previous
        // life of ours. What we hold now is the truth: live entries are
        // re-asserted above it, anything else is deleted above it (the
        // container is gone), and an old tombstone is kept so a later
        // add goes past it.
        let next = v.version.checked_add(1)?;
        let value = match ours {
            Some(o) if !o.is_tombstone() => Value { version: next, tombstone: 0 },
            _ if v.is_tombstone() => v,
            _ => Value { version: next, tombstone: now_unix.max(1) },
        };
        if value == v {
            self.put(s);
            None
        } else {
            let key = s.key;
            Some(self.put(self.sign(key, value)))
        }
    }

    /// Keep `s`, of an origin not listed yet, for when it is; of two
    /// copies the higher rank. Beyond [`MAX_HELD`] entries, refused.
    fn hold(&mut self, s: Signed) {
        let room = self.held.len() < MAX_HELD;
        match self.held.get_mut(&s.key) {
            Some((v, sig)) => {
                if s.value.rank() > v.rank() {
                    (*v, *sig) = (s.value, s.signature);
                }
            }
            None if room => {
                self.held.insert(s.key, (s.value, s.signature));
            }
            None => self.refused += 1,
        }
    }

    /// Drop the entries of origins that are not peers: nothing should hold
    /// any (they are refused on arrival and dropped when a peer leaves), so
    /// this is a safety net. Returns how many.
    pub fn drop_strangers(&mut self) -> usize {
        let before = self.entries.len();
        let (me, keys) = (self.ourself, &self.keys);
        self.entries.retain(|k, _| k.origin == me || keys.contains_key(&k.origin));
        before - self.entries.len()
    }

    /// Drop tombstones older than [`TOMBSTONE_TTL`], and what was held for
    /// origins that never joined (counted as refused); returns how many
    /// tombstones.
    pub fn purge(&mut self, now_unix: u64) -> usize {
        self.refused += self.held.len() as u64;
        self.held.clear();
        let before = self.entries.len();
        self.entries.retain(|_, (v, _)| !v.is_tombstone() || now_unix.saturating_sub(v.tombstone) < TOMBSTONE_TTL);
        before - self.entries.len()
    }

    /// A peer (re)joined the topology with `key`: accept its entries signed
    /// by that key, beginning with those held for it. Should its key have
    /// changed, what the old key signed goes. Returns what changed, to
    /// relay.
    pub fn peer_back(&mut self, now_unix: u64, peer: PeerName, key: PeerKey) -> Vec<Signed> {
        if peer == self.ourself {
            return Vec::new();
        }
        if self.keys.insert(peer, key).is_some_and(|old| old != key) {
            self.entries.retain(|k, _| k.origin != peer);
        }
        let mut waiting = Vec::new();
        self.held.retain(|k, (value, signature)| {
            let theirs = k.origin == peer;
            if theirs {
                waiting.push(Signed { key: k.clone(), value: *value, signature: *signature });
            }
            !theirs
        });
        waiting.into_iter().filter_map(|s| self.merge_one(now_unix, s)).collect()
    }

    /// Drop every entry of a peer that left the topology, and refuse its
    /// entries until it is back.
    pub fn peer_gone(&mut self, peer: PeerName) -> usize {
        if peer == self.ourself {
            return 0;
        }
        self.keys.remove(&peer);
        let before = self.entries.len();
        self.entries.retain(|k, _| k.origin != peer);
        before - self.entries.len()
    }

    /// Live addresses for a (normalised) hostname.
    pub fn lookup(&self, hostname: &str) -> Vec<Ipv4Addr> {
        let set: BTreeSet<Ipv4Addr> =
            self.entries.range(range_of(hostname)).filter(|(k, (v, _))| k.hostname == hostname && !v.is_tombstone()).map(|(k, _)| k.addr).collect();
        set.into_iter().collect()
    }

    /// Whether any entry (live) has this hostname.
    pub fn has_name(&self, hostname: &str) -> bool {
        !self.lookup(hostname).is_empty()
    }

    /// Live hostnames for an address (reverse lookup).
    pub fn reverse(&self, addr: Ipv4Addr) -> Vec<String> {
        let set: BTreeSet<&str> = self.entries.iter().filter(|(k, (v, _))| k.addr == addr && !v.is_tombstone()).map(|(k, _)| k.hostname.as_str()).collect();
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

    /// Peer `n`'s key in these tests.
    fn id(n: u64) -> Identity {
        Identity::from_secret([n as u8; 32])
    }

    /// A store for peer 1 that knows peers 2 and 3.
    fn store() -> Store {
        let mut s = Store::new(id(1), p(1));
        s.peer_back(T, p(2), id(2).public());
        s.peer_back(T, p(3), id(3).public());
        s
    }

    /// `k` → `v`, signed by `k`'s origin.
    fn signed(k: &Key, version: u64, tombstone: u64) -> Signed {
        Signed::new(&id(k.origin.as_u64()), k.clone(), Value { version, tombstone })
    }

    fn kv(entries: Vec<Signed>) -> Vec<(Key, Value)> {
        entries.into_iter().map(|s| (s.key, s.value)).collect()
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
        let mut s = store();
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
    fn only_an_origin_the_topology_lists_may_write_its_entries() {
        let mut s = store();
        let key = |origin: u64, name: &str| Key {
            hostname: format!("{name}.weave.local."),
            origin: p(origin),
            container: "c".into(),
            addr: "10.32.0.7".parse().unwrap(),
        };
        // Peer 2 relays its own entry and peer 3's: both signed by their origin.
        let forged_origin = signed(&key(99, "madeup"), 1, 0);
        let mut in_3s_name = signed(&key(3, "hijack"), 1, 0);
        in_3s_name.signature = Signed::new(&id(2), in_3s_name.key.clone(), in_3s_name.value).signature;
        let batch = vec![signed(&key(2, "two"), 1, 0), signed(&key(3, "three"), 1, 0), forged_origin, in_3s_name];
        let changed = s.merge(T, p(2), T, batch).unwrap();
        assert_eq!(changed.len(), 2);
        assert_eq!((s.refused(), s.held()), (1, 1), "the forgery is refused, the stranger's entry held");
        assert!(s.lookup("madeup.weave.local.").is_empty(), "an origin that is no peer is refused");
        assert!(s.lookup("hijack.weave.local.").is_empty(), "peer 2 cannot write in 3's name");
        assert!(!s.lookup("three.weave.local.").is_empty());
        // Nor delete 3's entry, nor raise its version to the ceiling.
        let mut tomb = signed(&key(3, "three"), crate::wire::MAX_VERSION, T);
        tomb.signature = Signed::new(&id(2), tomb.key.clone(), tomb.value).signature;
        assert!(s.merge(T, p(2), T, vec![tomb]).unwrap().is_empty());
        assert!(!s.lookup("three.weave.local.").is_empty());
        // A new peer's entries wait for the topology to list it.
        assert!(s.merge(T, p(4), T, vec![signed(&key(4, "four"), 1, 0)]).unwrap().is_empty());
        assert!(s.lookup("four.weave.local.").is_empty());
        assert_eq!(s.peer_back(T, p(4), id(4).public()).len(), 1, "merged when it joins, to relay");
        assert!(!s.lookup("four.weave.local.").is_empty());
        assert!(s.merge(T, p(4), T, vec![signed(&key(4, "four"), 1, 0)]).unwrap().is_empty(), "already held");
        // Should it come back under a new key, what the old key signed goes.
        s.peer_back(T, p(4), id(44).public());
        assert!(s.lookup("four.weave.local.").is_empty());
        // The made-up origin never joined: the next purge drops its entry.
        s.purge(T);
        assert_eq!((s.refused(), s.held()), (3, 0));
    }

    #[test]
    fn what_waits_for_its_origin_is_checked_against_the_key_it_joins_with_and_bounded() {
        let mut s = store();
        let key = |origin: u64, i: usize| Key {
            hostname: format!("n{i}.weave.local."),
            origin: p(origin),
            container: "c".into(),
            addr: "10.32.0.7".parse().unwrap(),
        };
        // Peer 5 restarted: its full state (relayed by 2) arrives before
        // its topology record, with two copies of one entry.
        let good = signed(&key(5, 0), 3, 0);
        let older = signed(&key(5, 0), 2, 0);
        let mut forged = signed(&key(5, 1), 1, 0);
        forged.signature = Signed::new(&id(2), forged.key.clone(), forged.value).signature;
        assert!(s.merge(T, p(2), T, vec![good.clone(), older, forged]).unwrap().is_empty());
        assert_eq!(s.held(), 2);
        let changed = s.peer_back(T, p(5), id(5).public());
        assert_eq!(changed, vec![good], "the newer copy, verified; the forgery refused");
        assert_eq!((s.held(), s.refused()), (0, 1));
        assert!(s.lookup("n1.weave.local.").is_empty());
        // A flood of made-up origins is bounded, and counted as refused.
        let flood: Vec<Signed> = (0..MAX_HELD + 10).map(|i| signed(&key(1000 + i as u64, i), 1, 0)).collect();
        assert!(s.merge(T, p(2), T, flood).unwrap().is_empty());
        assert_eq!((s.held(), s.refused()), (MAX_HELD, 11));
        s.purge(T);
        assert_eq!((s.held(), s.refused()), (0, 11 + MAX_HELD as u64));
    }

    #[test]
    fn a_record_in_our_name_counts_only_if_our_key_signed_it() {
        let mut s = store();
        s.add("web.weave.local.", "10.32.0.9".parse().unwrap(), "c");
        let k = Key { hostname: "web.weave.local.".into(), origin: p(1), container: "c".into(), addr: "10.32.0.9".parse().unwrap() };
        let forged = Signed::new(&id(2), k.clone(), Value { version: crate::wire::MAX_VERSION, tombstone: T });
        assert!(s.merge(T, p(2), T, vec![forged]).unwrap().is_empty());
        assert_eq!(s.lookup("web.weave.local.").len(), 1);
        assert_eq!(s.entries().next().unwrap().1.version, 1, "nothing bumped towards the ceiling");
    }

    #[test]
    fn a_stale_entry_from_ourselves_is_tombstoned() {
        let mut s = store();
        let k = Key { hostname: "old.weave.local.".into(), origin: p(1), container: "dead".into(), addr: "10.32.0.9".parse().unwrap() };
        let changed = s.merge(T, p(2), T, vec![signed(&k, 3, 0)]).unwrap();
        assert_eq!(kv(changed), vec![(k, Value { version: 4, tombstone: T })]);
        assert!(s.lookup("old.weave.local.").is_empty());
    }

    #[test]
    fn after_a_router_restart_live_entries_are_reasserted_not_deleted() {
        let mut s = store();
        let a: Ipv4Addr = "10.32.0.9".parse().unwrap();
        // The restarted router re-adds its running container at version 1.
        s.add("web.weave.local.", a, "c");
        let k = Key { hostname: "web.weave.local.".into(), origin: p(1), container: "c".into(), addr: a };
        let changed = s.merge(T, p(2), T, vec![signed(&k, 3, 0)]).unwrap();
        assert_eq!(kv(changed), vec![(k.clone(), Value { version: 4, tombstone: 0 })]);
        assert_eq!(s.lookup("web.weave.local."), vec![a]);
        // A newer tombstone from a previous life is outbid too.
        let changed = s.merge(T, p(2), T, vec![signed(&k, 7, T)]).unwrap();
        assert_eq!(kv(changed), vec![(k, Value { version: 8, tombstone: 0 })]);
    }

    #[test]
    fn restored_names_keep_their_versions_and_a_later_delete_outranks_peers() {
        let a: Ipv4Addr = "10.32.0.9".parse().unwrap();
        let mut before = store();
        before.add("web.weave.local.", a, "c");
        before.add("gone.weave.local.", a, "d");
        before.delete(T, "d", None, None);
        // A peer's copy of ours, and an entry of the peer's own.
        let k = Key { hostname: "web.weave.local.".into(), origin: p(1), container: "c".into(), addr: a };
        let theirs = Key { hostname: "x.weave.local.".into(), origin: p(2), container: "e".into(), addr: a };
        before.merge(T, p(2), T, vec![signed(&theirs, 1, 0)]).unwrap();
        let saved = kv(before.own_live());
        assert_eq!(saved, vec![(k.clone(), Value { version: 1, tombstone: 0 })], "only our live entries are saved");

        let mut after = store();
        // Anything not ours, or dead, is not restored.
        let mut file = saved.clone();
        file.push((theirs, Value { version: 1, tombstone: 0 }));
        file.push((Key { container: "z".into(), ..k.clone() }, Value { version: 2, tombstone: T }));
        assert_eq!(after.restore(file), 1);
        assert_eq!(after.lookup("web.weave.local."), vec![a]);
        // Peers holding version 1 hear nothing new from it.
        assert!(after.merge(T, p(2), T, vec![signed(&k, 1, 0)]).unwrap().is_empty());
        // Deleting it now outranks the peers' live copy at once.
        assert_eq!(kv(after.delete(T, "c", None, None)), vec![(k, Value { version: 2, tombstone: T })]);
        // Restoring again does not bring back what was deleted since.
        assert_eq!(after.restore(saved), 0);
        assert!(after.lookup("web.weave.local.").is_empty());
    }

    #[test]
    fn gossip_from_a_far_off_clock_is_refused() {
        let mut s = store();
        let e = s.merge(T, p(2), T + 3600, vec![]).unwrap_err();
        assert!(e.to_string().contains("clock is 3600 s away"), "{e}");
    }

    #[test]
    fn entries_of_a_departed_peer_are_dropped() {
        let mut s = store();
        let k = Key { hostname: "x.weave.local.".into(), origin: p(2), container: "c".into(), addr: "10.32.0.9".parse().unwrap() };
        s.merge(T, p(2), T, vec![signed(&k, 1, 0)]).unwrap();
        assert_eq!(s.peer_gone(p(2)), 1);
        assert!(s.lookup("x.weave.local.").is_empty());
        let k = Key { hostname: "x.weave.local.".into(), origin: p(2), container: "c".into(), addr: "10.32.0.9".parse().unwrap() };
        s.merge(T, p(3), T, vec![signed(&k, 1, 0)]).unwrap();
        assert!(s.lookup("x.weave.local.").is_empty(), "a lagging peer cannot bring them back");
        s.peer_back(T, p(2), id(2).public());
        s.merge(T, p(3), T, vec![signed(&k, 1, 0)]).unwrap();
        assert_eq!(s.lookup("x.weave.local.").len(), 1);
    }

    fn arb_entry() -> impl Strategy<Value = Signed> {
        (0u8..3, 2u64..4, 0u8..2, 0u8..2, 1u64..5, any::<bool>()).prop_map(|(h, o, c, a, v, t)| {
            let k = Key { hostname: format!("h{h}.weave.local."), origin: p(o), container: format!("c{c}"), addr: Ipv4Addr::new(10, 32, 0, a) };
            signed(&k, v, if t { T + v } else { 0 })
        })
    }

    proptest! {
        #[test]
        fn merge_converges_whatever_the_order(batch in proptest::collection::vec(arb_entry(), 0..40), seed in any::<u64>()) {
            let mut a = store();
            a.merge(T, p(2), T, batch.clone()).unwrap();
            let mut shuffled = batch.clone();
            shuffled.extend(batch.iter().cloned());
            use rand::seq::SliceRandom;
            shuffled.shuffle(&mut weave_core::rng::seeded(seed));
            let mut b = store();
            for chunk in shuffled.chunks(3) {
                b.merge(T, p(3), T, chunk.to_vec()).unwrap();
            }
            prop_assert_eq!(a, b);
        }
    }
}
