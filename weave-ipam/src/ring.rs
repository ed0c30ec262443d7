//! The ring: a CRDT dividing an address range among peers.
//!
//! The range `[start, end)` is cut at *tokens*; the entry at a token says
//! which peer owns the addresses from it up to the next token. A ring is
//! identified by its range and its *seeds* (the peers that made the initial
//! division): rings of different identity refuse to merge.
//!
//! Only the owner changes its entries (to split off and donate space, or to
//! publish its free count), each change bumping the entry's version. The one
//! exception is `rmpeer`: a *takeover* gives a dead peer's entries to the
//! owner of the preceding range — a deterministic recipient, so `rmpeer` run
//! for the same peer on several hosts at once produces identical entries
//! rather than two owners (the heir itself makes the takeover; others ask it).
//!
//! Every entry carries the proof of who wrote it ([`crate::auth`]): the
//! chain of signed grants from the initial division to its owner, and its
//! writer's signature. Merge accepts an entry only with a valid proof, so a
//! peer can neither give itself space it does not own nor touch another's
//! entries. An entry is *superseded* where a grant of a later epoch covers
//! its token (space its owner gave away since, or that was taken over):
//! superseded entries are kept (merge stays a join) but own nothing. And an
//! entry owns no further than its last grant reaches, so removing a token
//! never extends anyone's space beyond what was granted.
//!
//! Merge takes, per token, the entry with the higher version; at equal
//! versions an owner's own change beats a takeover, then the higher owner
//! name wins — the same answer on every peer, so merge is commutative,
//! associative and idempotent. Every incoming ring is validated, and so is
//! the merged result before it is committed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use weave_core::PeerName;
use weave_gossip::identity::Identity;

use crate::auth::{Auth, Grant, GrantKind, KeyBook, ENTRY_DOMAIN, MAX_CHAIN};

/// Most entries a ring holds (superseded ones included).
pub const MAX_ENTRIES: usize = 1 << 16;

/// One cut of the ring.
///
/// Two counters order an entry's history: `epoch` counts changes of owner
/// (donation, takeover, reassertion), `version` counts the owner's routine
/// updates within an epoch (free counts, the part of a range it keeps). A
/// takeover therefore beats every routine update the dead peer made before
/// dying, even ones the taker had not seen; a donation by the owner ties
/// with — and, being the owner's own, beats — a takeover computed from a
/// view older than it, whatever routine updates follow either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// First address owned (as a u32).
    pub token: u32,
    /// The owner.
    pub peer: PeerName,
    /// Changes of owner.
    pub epoch: u32,
    /// Routine updates by the owner within the epoch.
    pub version: u32,
    /// Free addresses in this entry's range, as last published by the owner.
    pub free: u32,
    /// Set by an rmpeer takeover rather than by an owner: the peer it was
    /// taken from (which alone may reassert it, should it be alive).
    pub taken_from: Option<PeerName>,
}

impl Entry {
    /// The total order merge resolves conflicts with.
    fn rank(&self) -> (u32, bool, u32, PeerName, u32, Option<PeerName>) {
        (self.epoch, self.taken_from.is_none(), self.version, self.peer, self.free, self.taken_from)
    }

    /// What its writer signs, within ring `ring_id`.
    fn signed_bytes(&self, ring_id: &[u8]) -> Vec<u8> {
        let mut b = ring_id.to_vec();
        b.extend_from_slice(&self.token.to_be_bytes());
        b.extend_from_slice(&self.peer.as_u64().to_be_bytes());
        b.extend_from_slice(&self.epoch.to_be_bytes());
        b.extend_from_slice(&self.version.to_be_bytes());
        b.extend_from_slice(&self.free.to_be_bytes());
        b.extend_from_slice(&self.taken_from.map_or(0, PeerName::as_u64).to_be_bytes());
        b
    }
}

/// Why a ring was rejected. Nothing changed when one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RingError {
    /// The other ring covers a different range.
    #[error("ring range mismatch: ours is {ours}, the peer's is {theirs}")]
    RangeMismatch {
        /// Ours, as `start-end`.
        ours: String,
        /// Theirs.
        theirs: String,
    },
    /// The other ring was initialised independently (different seeds).
    #[error(
        "refusing to merge an independently initialised ring (seeds {theirs:?}, ours {ours:?}); remove the data of one side with `weave reset` and reconnect"
    )]
    DifferentRings {
        /// Our seeds.
        ours: Vec<PeerName>,
        /// Theirs.
        theirs: Vec<PeerName>,
    },
    /// The ring's structure is broken.
    #[error("invalid ring: {0}")]
    Invalid(&'static str),
}

/// The ring. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ring {
    start: u32,
    end: u32,
    seeds: Vec<PeerName>,
    /// Every accepted entry by token, with its proof: the replicated state.
    stored: BTreeMap<u32, (Entry, Auth)>,
    /// The entries not superseded, by token (derived from `stored`).
    live: Vec<Entry>,
    /// Where each live entry's space ends: the next live token, or where
    /// its last grant ends if that is sooner.
    ends: Vec<u32>,
}

/// The initial division of `[start, end)` among `seeds` (sorted, unique).
fn division(start: u32, end: u32, seeds: &[PeerName]) -> Vec<(Entry, u32)> {
    let size = u64::from(end - start);
    let n = seeds.len() as u64;
    seeds
        .iter()
        .enumerate()
        .map(|(i, &peer)| {
            let token = start + (size * i as u64 / n) as u32;
            let stop = start + (size * (i as u64 + 1) / n) as u32;
            (Entry { token, peer, epoch: 1, version: 1, free: stop - token, taken_from: None }, stop)
        })
        .filter(|(e, _)| e.free > 0)
        .collect()
}

/// The bytes naming a ring in every signature made for it.
fn ring_id(start: u32, end: u32, seeds: &[PeerName]) -> Vec<u8> {
    let mut b = Vec::with_capacity(8 + 8 * seeds.len());
    b.extend_from_slice(&start.to_be_bytes());
    b.extend_from_slice(&end.to_be_bytes());
    for s in seeds {
        b.extend_from_slice(&s.as_u64().to_be_bytes());
    }
    b
}

/// Check `e`'s proof on its own. See [`crate::auth`].
fn verify(ring_id: &[u8], division: &[(Entry, u32)], e: &Entry, a: &Auth, book: &mut KeyBook) -> Result<(), &'static str> {
    let i = division.partition_point(|(d, _)| d.token <= e.token).checked_sub(1).ok_or("token before the range")?;
    let (seed_entry, _) = division[i];
    if a.chain.len() > MAX_CHAIN {
        return Err("chain too long");
    }
    let (mut owner, mut epoch, mut taken, mut last_signer) = (seed_entry.peer, 1u32, None, None);
    for g in a.chain.iter() {
        if Some(g.epoch) != epoch.checked_add(1) || !g.covers(e.token) {
            return Err("a grant out of sequence or not covering the token");
        }
        let signer = match g.kind {
            GrantKind::Donation => owner,
            GrantKind::Takeover { from } if from == owner => g.to,
            GrantKind::Reassert if taken == Some(g.to) => g.to,
            _ => return Err("a takeover or reassertion of space its signer may not take"),
        };
        if !book.verify(signer, &g.signer_key, crate::auth::GRANT_DOMAIN, &g.signed_bytes(ring_id), &g.signature) {
            return Err("a grant not signed by its grantor");
        }
        taken = match g.kind {
            GrantKind::Takeover { from } => Some(from),
            _ => None,
        };
        (owner, epoch, last_signer) = (g.to, g.epoch, Some(signer));
    }
    if e.peer != owner || e.epoch != epoch || e.taken_from.is_some_and(|t| Some(t) != taken) {
        return Err("owner, epoch or takeover not what the chain says");
    }
    match &a.signed {
        None if a.chain.is_empty() && *e == seed_entry => Ok(()),
        None => Err("unsigned"),
        Some((key, sig)) => {
            // A grant's first state is written by its grantor.
            let writer = match last_signer {
                Some(s) if e.version == 1 && a.chain.last().is_some_and(|g| g.epoch == e.epoch) => s,
                _ => e.peer,
            };
            if book.verify(writer, key, ENTRY_DOMAIN, &e.signed_bytes(ring_id), sig) {
                Ok(())
            } else {
                Err("not signed by its writer")
            }
        }
    }
}

impl Ring {
    /// An uninitialised ring over `[start, end)`.
    pub fn new(start: u32, end: u32) -> Self {
        assert!(start < end, "an empty range has no ring");
        Self { start, end, seeds: Vec::new(), stored: BTreeMap::new(), live: Vec::new(), ends: Vec::new() }
    }

    /// Rebuild a ring from its parts (decoding), validated for structure
    /// (proofs are checked when it is merged).
    pub fn from_parts(start: u32, end: u32, seeds: Vec<PeerName>, entries: Vec<(Entry, Auth)>) -> Result<Self, RingError> {
        if start >= end {
            return Err(RingError::Invalid("empty range"));
        }
        if entries.len() > MAX_ENTRIES {
            return Err(RingError::Invalid("too many entries"));
        }
        if !entries.windows(2).all(|w| w[0].0.token < w[1].0.token) {
            return Err(RingError::Invalid("tokens not increasing"));
        }
        let stored = entries.into_iter().map(|(e, a)| (e.token, (e, a))).collect();
        let mut r = Self { start, end, seeds, stored, live: Vec::new(), ends: Vec::new() };
        r.validate()?;
        r.refresh();
        Ok(r)
    }

    /// First address.
    pub fn start(&self) -> u32 {
        self.start
    }

    /// One past the last address.
    pub fn end(&self) -> u32 {
        self.end
    }

    /// Number of addresses in the range.
    pub fn size(&self) -> u64 {
        u64::from(self.end - self.start)
    }

    /// The seeds; empty while uninitialised.
    pub fn seeds(&self) -> &[PeerName] {
        &self.seeds
    }

    /// Whether the initial division has happened.
    pub fn is_initialised(&self) -> bool {
        !self.stored.is_empty()
    }

    /// The entries that own space, by token.
    pub fn entries(&self) -> &[Entry] {
        &self.live
    }

    /// Every entry held, superseded ones included, with its proof (what
    /// is gossiped and saved).
    pub fn stored(&self) -> impl Iterator<Item = (&Entry, &Auth)> {
        self.stored.values().map(|(e, a)| (e, a))
    }

    /// The bytes naming this ring (range and seeds) in every signature
    /// made for it.
    pub fn id(&self) -> Vec<u8> {
        ring_id(self.start, self.end, &self.seeds)
    }

    /// Every live entry with the range it owns, its free count capped by
    /// that range.
    pub fn ranges(&self) -> impl Iterator<Item = (Entry, u32, u32)> + '_ {
        self.live.iter().zip(&self.ends).map(|(e, &end)| (Entry { free: e.free.min(end - e.token), ..*e }, e.token, end))
    }

    /// Ranges owned by `peer`.
    pub fn owned_by(&self, peer: PeerName) -> Vec<(u32, u32)> {
        self.ranges().filter(|(e, _, _)| e.peer == peer).map(|(_, a, b)| (a, b)).collect()
    }

    /// The owner of an address, once initialised (`None` as well for space
    /// nobody may allocate from: beyond what its last grant reached).
    pub fn owner(&self, addr: u32) -> Option<PeerName> {
        if addr < self.start || addr >= self.end {
            return None;
        }
        let i = self.live.partition_point(|e| e.token <= addr).checked_sub(1)?;
        (addr < self.ends[i]).then_some(self.live[i].peer)
    }

    /// Divide the range evenly among `seeds`. Every peer given the same
    /// seeds builds the identical ring, so their rings merge as one.
    pub fn initialise(&mut self, seeds: &[PeerName]) {
        assert!(!self.is_initialised(), "initialise once");
        let mut seeds = seeds.to_vec();
        seeds.sort();
        seeds.dedup();
        assert!(!seeds.is_empty(), "at least one seed");
        self.stored = division(self.start, self.end, &seeds).into_iter().map(|(e, _)| (e.token, (e, Auth::default()))).collect();
        self.seeds = seeds;
        self.refresh();
    }

    fn validate(&self) -> Result<(), RingError> {
        if self.stored.is_empty() {
            return if self.seeds.is_empty() { Ok(()) } else { Err(RingError::Invalid("seeds without entries")) };
        }
        if self.seeds.is_empty() {
            return Err(RingError::Invalid("entries without seeds"));
        }
        if !self.seeds.windows(2).all(|w| w[0] < w[1]) {
            return Err(RingError::Invalid("seeds not sorted and unique"));
        }
        if self.stored.keys().next() != Some(&self.start) {
            return Err(RingError::Invalid("first token is not the start of the range"));
        }
        if self.stored.keys().next_back().is_some_and(|&t| t >= self.end) {
            return Err(RingError::Invalid("a token beyond the range"));
        }
        Ok(())
    }

    /// Recompute the live entries and their ends from what is stored.
    fn refresh(&mut self) {
        // Each grant once, by where it starts; swept along the tokens with
        // the latest epoch of the grants covering the current token on top.
        let mut grants: Vec<(u32, u32, u32)> = self.stored.values().flat_map(|(_, a)| a.chain.iter().map(|g| (g.lo, g.hi, g.epoch))).collect();
        grants.sort_unstable();
        grants.dedup();
        let mut next = grants.iter().peekable();
        let mut covering: std::collections::BinaryHeap<(u32, u32)> = std::collections::BinaryHeap::new();
        let division = division(self.start, self.end, &self.seeds);
        let mut live: Vec<(Entry, u32)> = Vec::with_capacity(self.stored.len());
        for (e, a) in self.stored.values() {
            while let Some(&(_, hi, epoch)) = next.next_if(|g| g.0 <= e.token) {
                covering.push((epoch, hi));
            }
            while covering.peek().is_some_and(|&(_, hi)| hi <= e.token) {
                covering.pop();
            }
            let superseded = e.token != self.start && covering.peek().is_some_and(|&(epoch, _)| epoch > e.epoch);
            if superseded {
                continue;
            }
            let reach = match a.chain.last() {
                Some(g) => g.hi,
                None => division.iter().rev().find(|(d, _)| d.token <= e.token).map_or(self.end, |(_, stop)| *stop),
            };
            live.push((*e, reach));
        }
        self.ends = (0..live.len()).map(|i| live.get(i + 1).map_or(self.end, |n| n.0.token).min(live[i].1)).collect();
        self.live = live.into_iter().map(|(e, _)| e).collect();
    }

    fn check_identity(&self, other: &Self) -> Result<(), RingError> {
        if (self.start, self.end) != (other.start, other.end) {
            return Err(RingError::RangeMismatch { ours: format!("{}-{}", self.start, self.end), theirs: format!("{}-{}", other.start, other.end) });
        }
        if self.is_initialised() && other.is_initialised() && self.seeds != other.seeds {
            return Err(RingError::DifferentRings { ours: self.seeds.clone(), theirs: other.seeds.clone() });
        }
        Ok(())
    }

    /// Merge `other` into this ring; `Ok(true)` if anything changed. On
    /// error nothing changed. Entries whose proof does not hold (checked
    /// against `book`) are left out and counted in `book.refused`.
    pub fn merge(&mut self, other: &Self, book: &mut KeyBook) -> Result<bool, RingError> {
        other.validate()?;
        self.check_identity(other)?;
        if !other.is_initialised() {
            return Ok(false);
        }
        let seeds = if self.is_initialised() { &self.seeds } else { &other.seeds };
        let (id, division) = (ring_id(self.start, self.end, seeds), division(self.start, self.end, seeds));
        let mut stored = self.stored.clone();
        for (t, (e, a)) in &other.stored {
            let newer = match stored.get(t) {
                None => stored.len() < MAX_ENTRIES,
                Some((cur, cur_auth)) => (e.rank(), auth_rank(a)) > (cur.rank(), auth_rank(cur_auth)),
            };
            if !newer {
                continue;
            }
            match verify(&id, &division, e, a, book) {
                Ok(()) => {
                    stored.insert(*t, (*e, a.clone()));
                }
                Err(why) => {
                    book.refused += 1;
                    tracing::debug!(token = t, owner = %e.peer, "refused a ring entry: {why}");
                }
            }
        }
        let mut merged = Self { start: self.start, end: self.end, seeds: seeds.clone(), stored, live: Vec::new(), ends: Vec::new() };
        merged.validate()?;
        merged.refresh();
        let changed = merged != *self;
        *self = merged;
        Ok(changed)
    }

    /// The live entry at or before `addr`, with its index.
    fn live_at(&self, addr: u32) -> Option<(usize, Entry, u32)> {
        let i = self.live.partition_point(|e| e.token <= addr).checked_sub(1)?;
        Some((i, self.live[i], self.ends[i]))
    }

    fn proof(&self, token: u32) -> Auth {
        self.stored.get(&token).map(|(_, a)| a.clone()).unwrap_or_default()
    }

    /// Store `e` with `chain`, signed by `writer`.
    fn put(&mut self, writer: &Identity, e: Entry, chain: Arc<Vec<Grant>>) {
        let sig = writer.sign(ENTRY_DOMAIN, &e.signed_bytes(&self.id()));
        self.stored.insert(e.token, (e, Auth { chain, signed: Some((writer.public().to_bytes(), sig)) }));
    }

    /// Give `[from, to)` — inside one of `owner`'s entries — to `to_peer`.
    /// Only the owner calls this, with its key. Returns false if the range
    /// is not wholly inside one of `owner`'s entries.
    pub fn transfer(&mut self, id: &Identity, owner: PeerName, from: u32, to: u32, to_peer: PeerName, free_moved: u32) -> bool {
        let Some((_, e, end)) = self.live_at(from) else { return false };
        let (Some(version), Some(epoch)) = (e.version.checked_add(1), e.epoch.checked_add(1)) else { return false };
        if e.peer != owner || to > end || from >= to || self.stored.len() + 2 > MAX_ENTRIES {
            return false;
        }
        let auth = self.proof(e.token);
        // What stays ours is a routine update; what changes owner starts a
        // new epoch.
        let keep = |token, free| Entry { token, peer: owner, epoch: e.epoch, version, free, taken_from: None };
        let left_free = e.free.min(end - e.token).saturating_sub(free_moved);
        if from > e.token {
            self.put(id, keep(e.token, left_free.min(from - e.token)), auth.chain.clone());
        }
        let grant = Grant::new(id, &self.id(), epoch, to_peer, from, to, GrantKind::Donation);
        let given = Entry { token: from, peer: to_peer, epoch, version: 1, free: free_moved.min(to - from), taken_from: None };
        self.put(id, given, auth.extended(grant));
        if to < end {
            let rest = left_free.saturating_sub(from.saturating_sub(e.token));
            self.put(id, keep(to, rest.min(end - to)), auth.chain.clone());
        }
        self.refresh();
        debug_assert!(self.validate().is_ok());
        true
    }

    /// Publish `owner`'s free count for the entry starting at `token`.
    pub fn set_free(&mut self, id: &Identity, owner: PeerName, token: u32, free: u32) -> bool {
        let Some((_, e, end)) = self.live_at(token) else { return false };
        let Some(version) = e.version.checked_add(1) else { return false };
        if e.token != token || e.peer != owner || e.free == free || free > end - token {
            return false;
        }
        // Still space gained by a takeover: `taken_from` stays, so its
        // previous owner, should it turn out to be alive, may reassert it.
        let chain = self.proof(token).chain;
        self.put(id, Entry { free, version, ..e }, chain);
        self.refresh();
        true
    }

    /// `owner` reasserts an entry taken over from it while it was alive
    /// (rmpeer run on a live peer): a new epoch, its own again.
    pub fn reassert(&mut self, id: &Identity, owner: PeerName, token: u32) -> bool {
        let Some((_, e, end)) = self.live_at(token) else { return false };
        let Some(epoch) = e.epoch.checked_add(1) else { return false };
        if e.token != token || e.taken_from != Some(owner) {
            return false;
        }
        let grant = Grant::new(id, &self.id(), epoch, owner, token, end, GrantKind::Reassert);
        let chain = self.proof(token).extended(grant);
        self.put(id, Entry { token, peer: owner, epoch, version: 1, free: e.free.min(end - token), taken_from: None }, chain);
        self.refresh();
        true
    }

    /// Who inherits each entry of `dead`: the owner of the nearest
    /// preceding entry not owned by `dead` (wrapping), or `fallback` if
    /// `dead` owns everything (callers pass a choice every runner makes
    /// alike). By live index.
    fn heirs(&self, dead: PeerName, fallback: PeerName) -> Vec<(usize, PeerName)> {
        let n = self.live.len();
        (0..n)
            .filter(|&i| self.live[i].peer == dead)
            .map(|i| (i, (1..n).map(|k| self.live[(i + n - k) % n].peer).find(|p| *p != dead).unwrap_or(fallback)))
            .collect()
    }

    /// The peers that inherit `dead`'s entries (see [`Ring::take_over`]).
    pub fn heirs_of(&self, dead: PeerName, fallback: PeerName) -> BTreeSet<PeerName> {
        self.heirs(dead, fallback).into_iter().map(|(_, h)| h).collect()
    }

    /// rmpeer, by heir `me` (with its key): take every entry of `dead` that
    /// falls to `me` (see [`Ring::heirs_of`]; the other heirs take theirs).
    /// Returns the number of addresses taken.
    pub fn take_over(&mut self, id: &Identity, me: PeerName, dead: PeerName, fallback: PeerName) -> u64 {
        let mut moved = 0u64;
        let ring_id = self.id();
        for (i, heir) in self.heirs(dead, fallback) {
            let (e, end) = (self.live[i], self.ends[i]);
            let Some(epoch) = e.epoch.checked_add(1) else { continue };
            if heir != me {
                continue;
            }
            moved += u64::from(end - e.token);
            let grant = Grant::new(id, &ring_id, epoch, me, e.token, end, GrantKind::Takeover { from: dead });
            let chain = self.proof(e.token).extended(grant);
            self.put(id, Entry { token: e.token, peer: me, epoch, version: 1, free: e.free.min(end - e.token), taken_from: Some(dead) }, chain);
        }
        self.refresh();
        moved
    }

    /// Addresses in `[a, b)` owned by each peer.
    pub fn ownership_in(&self, a: u32, b: u32) -> BTreeMap<PeerName, u64> {
        let mut out = BTreeMap::new();
        for (e, s, t) in self.ranges() {
            let (lo, hi) = (s.max(a), t.min(b));
            if lo < hi {
                *out.entry(e.peer).or_default() += u64::from(hi - lo);
            }
        }
        out
    }
}

/// Breaks ties between proofs of identical entries (the same on every peer).
fn auth_rank(a: &Auth) -> (usize, Option<[u8; 64]>) {
    (a.chain.len(), a.signed.map(|(_, s)| s))
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

    fn book() -> KeyBook {
        let mut b = KeyBook::default();
        for n in 1..10 {
            b.learn(p(n), id(n).public());
        }
        b
    }

    fn ring(seeds: &[u64]) -> Ring {
        let mut r = Ring::new(1000, 2024);
        r.initialise(&seeds.iter().map(|&s| p(s)).collect::<Vec<_>>());
        r
    }

    #[test]
    fn initialisation_divides_evenly_and_identically() {
        let a = ring(&[3, 1, 2]);
        let b = ring(&[1, 2, 3]);
        assert_eq!(a, b);
        let sizes: Vec<u32> = a.ranges().map(|(_, s, t)| t - s).collect();
        assert_eq!(sizes, vec![341, 341, 342]);
        assert_eq!(a.owner(1000), Some(p(1)));
        assert_eq!(a.owner(2023), Some(p(3)));
        assert_eq!(a.owner(2024), None);
    }

    #[test]
    fn independently_initialised_rings_refuse_to_merge_without_change() {
        let mut a = ring(&[1, 2]);
        let b = ring(&[3]);
        let before = a.clone();
        let e = a.merge(&b, &mut book()).unwrap_err();
        assert!(matches!(e, RingError::DifferentRings { .. }));
        assert!(e.to_string().contains("weave reset"));
        assert_eq!(a, before);
    }

    #[test]
    fn an_uninitialised_ring_adopts_the_other() {
        let mut a = Ring::new(1000, 2024);
        assert!(a.merge(&ring(&[1, 2]), &mut book()).unwrap());
        assert_eq!(a, ring(&[1, 2]));
    }

    #[test]
    fn transfer_splits_and_newer_versions_win() {
        let mut a = ring(&[1, 2]);
        let mut b = a.clone();
        assert!(a.transfer(&id(1), p(1), 1100, 1200, p(2), 100));
        assert_eq!(a.owner(1150), Some(p(2)));
        assert_eq!(a.owner(1250), Some(p(1)));
        assert!(b.merge(&a, &mut book()).unwrap());
        assert_eq!(a, b);
        assert!(!a.transfer(&id(2), p(2), 1300, 1310, p(1), 0), "only the owner gives space away");
    }

    #[test]
    fn rmpeer_gives_each_range_to_the_owner_of_the_preceding_one() {
        let base = ring(&[1, 2, 3]);
        assert_eq!(base.heirs_of(p(2), p(3)), BTreeSet::from([p(1)]), "whoever asks");
        let (mut a, mut b) = (base.clone(), base.clone());
        assert_eq!(a.take_over(&id(1), p(1), p(2), p(1)), 341);
        assert_eq!(b.take_over(&id(3), p(3), p(2), p(3)), 0, "not the heir: takes nothing");
        assert_eq!(a.owner(1400), Some(p(1)));
        // The heir taking over twice (asked by two runners) makes one entry.
        let mut again = base.clone();
        again.take_over(&id(1), p(1), p(2), p(1));
        assert_eq!(a, again);
    }

    fn merged_both_ways(a: &Ring, b: &Ring) -> Ring {
        let mut x = a.clone();
        x.merge(b, &mut book()).unwrap();
        let mut y = b.clone();
        y.merge(a, &mut book()).unwrap();
        assert_eq!(x, y);
        x
    }

    #[test]
    fn a_takeover_beats_updates_the_dead_peer_made_before_dying() {
        let base = ring(&[1, 2, 3]);
        let mut last_words = base.clone();
        for f in 0..5 {
            last_words.set_free(&id(2), p(2), base.entries()[1].token, 300 - f);
        }
        let mut taken = base.clone();
        taken.take_over(&id(1), p(1), p(2), p(1));
        assert_eq!(merged_both_ways(&last_words, &taken).owner(1400), Some(p(1)));
    }

    #[test]
    fn a_whole_entry_donation_beats_a_takeover_from_a_stale_view_even_after_free_counts() {
        let base = ring(&[1, 2, 3]);
        let (tok, end) = (base.entries()[1].token, base.entries()[2].token);
        let mut donated = base.clone();
        assert!(donated.transfer(&id(2), p(2), tok, end, p(3), 0));
        let mut stale = base.clone();
        stale.take_over(&id(1), p(1), p(2), p(1));
        assert_eq!(merged_both_ways(&donated, &stale).owner(1400), Some(p(3)));
        // The heir publishing free counts on the taken entry changes nothing.
        for f in 0..10 {
            stale.set_free(&id(1), p(1), tok, 300 - f);
        }
        assert_eq!(merged_both_ways(&donated, &stale).owner(1400), Some(p(3)));
    }

    #[test]
    fn only_the_peer_an_entry_was_taken_from_may_reassert_it() {
        let mut r = ring(&[1, 2, 3]);
        let tok = r.entries()[1].token;
        r.take_over(&id(1), p(1), p(2), p(1));
        assert!(!r.reassert(&id(3), p(3), tok));
        assert!(r.reassert(&id(2), p(2), tok));
        assert_eq!(r.owner(tok), Some(p(2)));
        assert!(!r.reassert(&id(2), p(2), tok), "not a takeover any more");
    }

    #[test]
    fn invalid_rings_are_rejected() {
        let good = ring(&[1, 2]);
        let parts = |r: &Ring| r.stored().map(|(e, a)| (*e, a.clone())).collect::<Vec<_>>();
        let mut e = parts(&good);
        e[1].0.token = 999;
        assert!(Ring::from_parts(1000, 2024, good.seeds().to_vec(), e).is_err());
        let mut e = parts(&good);
        e.swap(0, 1);
        assert!(Ring::from_parts(1000, 2024, good.seeds().to_vec(), e).is_err());
        assert!(Ring::from_parts(1000, 2024, vec![], parts(&good)).is_err());
    }

    /// A ring as `r` holds it, with `edit` applied to its stored entries.
    fn edited(r: &Ring, edit: impl FnOnce(&mut Vec<(Entry, Auth)>)) -> Ring {
        let mut e: Vec<(Entry, Auth)> = r.stored().map(|(e, a)| (*e, a.clone())).collect();
        edit(&mut e);
        e.sort_by_key(|(e, _)| e.token);
        Ring::from_parts(r.start(), r.end(), r.seeds().to_vec(), e).unwrap()
    }

    #[test]
    fn nobody_gives_away_space_it_does_not_own() {
        let base = ring(&[1, 2, 3]);
        let (tok2, end2) = (base.entries()[1].token, base.entries()[2].token);
        let mut victim = base.clone();
        let mut b = book();
        // Peer 3 writes a donation of peer 2's space to itself, in its own
        // name and with its own key; and a copy where it names 2's key.
        let forge = |key_of: u64| {
            edited(&base, |e| {
                let g = Grant::new(&id(3), &base.id(), 2, p(3), tok2, end2, GrantKind::Donation);
                let ent = Entry { token: tok2, peer: p(3), epoch: 2, version: 1, free: 0, taken_from: None };
                let mut g2 = g.clone();
                g2.signer_key = id(key_of).public().to_bytes();
                let sig = id(3).sign(ENTRY_DOMAIN, &ent.signed_bytes(&base.id()));
                e[1] = (ent, Auth { chain: Arc::new(vec![g2]), signed: Some((id(3).public().to_bytes(), sig)) });
            })
        };
        for key_of in [3, 2] {
            assert!(!victim.merge(&forge(key_of), &mut b).unwrap(), "refused");
        }
        assert_eq!(b.refused, 2);
        assert_eq!(victim.owner(tok2), Some(p(2)));
        // A routine update of 2's entry written by 3 (free count, version).
        let tampered = edited(&base, |e| {
            let ent = Entry { version: 9, free: 0, ..e[1].0 };
            let sig = id(3).sign(ENTRY_DOMAIN, &ent.signed_bytes(&base.id()));
            e[1] = (ent, Auth { chain: e[1].1.chain.clone(), signed: Some((id(3).public().to_bytes(), sig)) });
        });
        assert!(!victim.merge(&tampered, &mut b).unwrap());
        // The initial division claimed unsigned with a different owner.
        let pristine = edited(&base, |e| e[1].0.peer = p(3));
        assert!(!victim.merge(&pristine, &mut b).unwrap());
        assert_eq!(victim, base);
    }

    #[test]
    fn space_given_away_cannot_be_taken_back_with_an_older_proof() {
        let base = ring(&[1, 2]);
        let mut r = base.clone();
        // 1 gives [1100, 1300) to 2; then cuts a token inside it from its
        // old, unsplit entry (a routine update it is entitled to sign, but
        // of space it no longer owns).
        assert!(r.transfer(&id(1), p(1), 1100, 1300, p(2), 0));
        let sneaky = edited(&r, |e| {
            let ent = Entry { token: 1200, peer: p(1), epoch: 1, version: 7, free: 0, taken_from: None };
            let sig = id(1).sign(ENTRY_DOMAIN, &ent.signed_bytes(&base.id()));
            e.push((ent, Auth { chain: Arc::new(Vec::new()), signed: Some((id(1).public().to_bytes(), sig)) }));
        });
        let mut honest = r.clone();
        honest.merge(&sneaky, &mut book()).unwrap();
        assert_eq!(honest.owner(1250), Some(p(2)), "the later grant wins over the older proof");
        assert_eq!(honest.owned_by(p(2)).first(), Some(&(1100, 1300)));
    }

    /// Random histories: owners give space away, publish free counts, and
    /// peers run rmpeer, each on its own replica; merging the replicas in
    /// any order gives one ring.
    fn arb_ops() -> impl Strategy<Value = Vec<(usize, u8, u64, u32, u32)>> {
        proptest::collection::vec((0usize..4, 0u8..3, 1u64..5, 0u32..1024, 1u32..200), 0..25)
    }

    proptest! {
        #[test]
        fn merge_is_commutative_associative_and_idempotent(ops in arb_ops(), order in Just(()).prop_perturb(|_, mut rng| {
            let mut v: Vec<usize> = (0..4).collect();
            for i in (1..4).rev() { v.swap(i, (rng.next_u32() as usize) % (i + 1)); }
            v
        })) {
            let base = ring(&[1, 2, 3, 4]);
            let mut replicas = vec![base.clone(); 4];
            for (who, op, peer, at, len) in ops {
                let me = p(who as u64 + 1);
                let r = &mut replicas[who];
                match op {
                    0 => {
                        let from = 1000 + at.min(1023);
                        let to = (from + len).min(2024);
                        r.transfer(&id(who as u64 + 1), me, from, to, p(peer), 0);
                    }
                    1 => {
                        let mine = r.ranges().find(|(e, _, _)| e.peer == me).map(|(_, s, t)| (s, t));
                        if let Some((s, t)) = mine {
                            r.set_free(&id(who as u64 + 1), me, s, len.min(t - s));
                        }
                    }
                    _ => {
                        r.take_over(&id(who as u64 + 1), me, p(peer), me);
                    }
                }
                // Gossip now and then: merge a random other replica in.
                let other = replicas[(who + peer as usize) % 4].clone();
                replicas[who].merge(&other, &mut book()).unwrap();
            }
            let mut fwd = replicas[0].clone();
            for r in &replicas[1..] { fwd.merge(r, &mut book()).unwrap(); }
            let mut perm = replicas[order[0]].clone();
            for &i in &order[1..] { perm.merge(&replicas[i], &mut book()).unwrap(); }
            prop_assert_eq!(&fwd, &perm);
            let again = fwd.clone();
            prop_assert!(!fwd.merge(&again, &mut book()).unwrap());
            fwd.validate().unwrap();
        }
    }
}
