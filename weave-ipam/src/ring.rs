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
//! rather than two owners.
//!
//! Merge takes, per token, the entry with the higher version; at equal
//! versions an owner's own change beats a takeover, then the higher owner
//! name wins — the same answer on every peer, so merge is commutative,
//! associative and idempotent. Every incoming ring is validated, and so is
//! the merged result before it is committed.

use std::collections::BTreeMap;

use weave_core::PeerName;

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
    entries: Vec<Entry>,
}

impl Ring {
    /// An uninitialised ring over `[start, end)`.
    pub fn new(start: u32, end: u32) -> Self {
        assert!(start < end, "an empty range has no ring");
        Self { start, end, seeds: Vec::new(), entries: Vec::new() }
    }

    /// Rebuild a ring from its parts (decoding), validated.
    pub fn from_parts(start: u32, end: u32, seeds: Vec<PeerName>, entries: Vec<Entry>) -> Result<Self, RingError> {
        if start >= end {
            return Err(RingError::Invalid("empty range"));
        }
        let r = Self { start, end, seeds, entries };
        r.validate()?;
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
        !self.entries.is_empty()
    }

    /// The entries, by token.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The end of entry `i`'s range.
    fn entry_end(&self, i: usize) -> u32 {
        self.entries.get(i + 1).map_or(self.end, |e| e.token)
    }

    /// Every entry with the range it covers.
    pub fn ranges(&self) -> impl Iterator<Item = (Entry, u32, u32)> + '_ {
        (0..self.entries.len()).map(move |i| (self.entries[i], self.entries[i].token, self.entry_end(i)))
    }

    /// Ranges owned by `peer`.
    pub fn owned_by(&self, peer: PeerName) -> Vec<(u32, u32)> {
        self.ranges().filter(|(e, _, _)| e.peer == peer).map(|(_, a, b)| (a, b)).collect()
    }

    /// The owner of an address, once initialised.
    pub fn owner(&self, addr: u32) -> Option<PeerName> {
        if addr < self.start || addr >= self.end {
            return None;
        }
        let i = self.entries.partition_point(|e| e.token <= addr);
        i.checked_sub(1).map(|i| self.entries[i].peer)
    }

    /// Divide the range evenly among `seeds`. Every peer given the same
    /// seeds builds the identical ring, so their rings merge as one.
    pub fn initialise(&mut self, seeds: &[PeerName]) {
        assert!(!self.is_initialised(), "initialise once");
        let mut seeds = seeds.to_vec();
        seeds.sort();
        seeds.dedup();
        assert!(!seeds.is_empty(), "at least one seed");
        let size = self.size();
        let n = seeds.len() as u64;
        self.entries = seeds
            .iter()
            .enumerate()
            .map(|(i, &peer)| {
                let token = self.start + (size * i as u64 / n) as u32;
                let end = self.start + (size * (i as u64 + 1) / n) as u32;
                Entry { token, peer, epoch: 1, version: 1, free: end - token, taken_from: None }
            })
            .filter(|e| e.free > 0)
            .collect();
        self.seeds = seeds;
    }

    fn validate(&self) -> Result<(), RingError> {
        if self.entries.is_empty() {
            return if self.seeds.is_empty() { Ok(()) } else { Err(RingError::Invalid("seeds without entries")) };
        }
        if self.seeds.is_empty() {
            return Err(RingError::Invalid("entries without seeds"));
        }
        if !self.seeds.windows(2).all(|w| w[0] < w[1]) {
            return Err(RingError::Invalid("seeds not sorted and unique"));
        }
        if self.entries[0].token != self.start {
            return Err(RingError::Invalid("first token is not the start of the range"));
        }
        for i in 0..self.entries.len() {
            let e = &self.entries[i];
            let end = self.entry_end(i);
            if e.token >= end || end > self.end {
                return Err(RingError::Invalid("tokens not increasing within the range"));
            }
            if e.free > end - e.token {
                return Err(RingError::Invalid("free count larger than the entry"));
            }
        }
        Ok(())
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
    /// error nothing changed.
    pub fn merge(&mut self, other: &Self) -> Result<bool, RingError> {
        other.validate()?;
        self.check_identity(other)?;
        if !other.is_initialised() {
            return Ok(false);
        }
        let mut by_token: BTreeMap<u32, Entry> = self.entries.iter().map(|e| (e.token, *e)).collect();
        for e in &other.entries {
            by_token
                .entry(e.token)
                .and_modify(|cur| {
                    if e.rank() > cur.rank() {
                        *cur = *e;
                    }
                })
                .or_insert(*e);
        }
        let mut merged = Self { start: self.start, end: self.end, seeds: other.seeds.clone(), entries: by_token.into_values().collect() };
        // Free counts are advisory: a token new to one side shortens an
        // entry of the other, whose published count may now exceed it.
        for i in 0..merged.entries.len() {
            let len = merged.entry_end(i) - merged.entries[i].token;
            merged.entries[i].free = merged.entries[i].free.min(len);
        }
        merged.validate()?;
        let changed = merged != *self;
        *self = merged;
        Ok(changed)
    }

    /// Give `[from, to)` — inside one of `owner`'s entries — to `to_peer`.
    /// Only the owner calls this. Returns false if the range is not wholly
    /// inside one of `owner`'s entries.
    pub fn transfer(&mut self, owner: PeerName, from: u32, to: u32, to_peer: PeerName, free_moved: u32) -> bool {
        let Some(i) = self.entries.iter().rposition(|e| e.token <= from) else { return false };
        let (e, end) = (self.entries[i], self.entry_end(i));
        if e.peer != owner || to > end || from >= to {
            return false;
        }
        // What stays ours is a routine update; what changes owner starts a
        // new epoch.
        let keep = |token, free| Entry { token, peer: owner, epoch: e.epoch, version: e.version + 1, free, taken_from: None };
        let left_free = e.free.saturating_sub(free_moved);
        let mut new = Vec::new();
        if from > e.token {
            new.push(keep(e.token, left_free.min(from - e.token)));
        }
        new.push(Entry { token: from, peer: to_peer, epoch: e.epoch + 1, version: 1, free: free_moved.min(to - from), taken_from: None });
        if to < end {
            let rest = left_free.saturating_sub(from.saturating_sub(e.token));
            new.push(keep(to, rest.min(end - to)));
        }
        self.entries.splice(i..=i, new);
        debug_assert!(self.validate().is_ok());
        true
    }

    /// Publish `owner`'s free count for the entry starting at `token`.
    pub fn set_free(&mut self, owner: PeerName, token: u32, free: u32) -> bool {
        let Some(i) = self.entries.iter().position(|e| e.token == token) else { return false };
        let end = self.entry_end(i);
        let e = &mut self.entries[i];
        if e.peer != owner || e.free == free || free > end - token {
            return false;
        }
        e.free = free;
        e.version += 1;
        // Still space gained by a takeover: `taken_from` stays, so its
        // previous owner, should it turn out to be alive, may reassert it.
        true
    }

    /// `owner` reasserts an entry taken over from it while it was alive
    /// (rmpeer run on a live peer): a new epoch, its own again.
    pub fn reassert(&mut self, owner: PeerName, token: u32) -> bool {
        let Some(e) = self.entries.iter_mut().find(|e| e.token == token) else { return false };
        if e.taken_from != Some(owner) {
            return false;
        }
        *e = Entry { token, peer: owner, epoch: e.epoch + 1, version: 1, free: e.free, taken_from: None };
        true
    }

    /// rmpeer: give every entry of `dead` to the owner of the nearest
    /// preceding entry not owned by `dead` (wrapping), or to `fallback` if
    /// `dead` owns everything (callers pass a choice every runner makes
    /// alike). Returns the number of addresses moved.
    pub fn take_over(&mut self, dead: PeerName, fallback: PeerName) -> u64 {
        let n = self.entries.len();
        let mut moved = 0u64;
        let recipients: Vec<Option<PeerName>> = (0..n)
            .map(|i| {
                if self.entries[i].peer != dead {
                    return None;
                }
                let heir = (1..n).map(|k| self.entries[(i + n - k) % n].peer).find(|p| *p != dead);
                Some(heir.unwrap_or(fallback))
            })
            .collect();
        for (i, heir) in recipients.into_iter().enumerate() {
            if let Some(heir) = heir {
                moved += u64::from(self.entry_end(i) - self.entries[i].token);
                let e = &mut self.entries[i];
                *e = Entry { token: e.token, peer: heir, epoch: e.epoch + 1, version: 1, free: e.free, taken_from: Some(dead) };
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(n: u64) -> PeerName {
        PeerName::from_u64(n).unwrap()
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
        let e = a.merge(&b).unwrap_err();
        assert!(matches!(e, RingError::DifferentRings { .. }));
        assert!(e.to_string().contains("weave reset"));
        assert_eq!(a, before);
    }

    #[test]
    fn an_uninitialised_ring_adopts_the_other() {
        let mut a = Ring::new(1000, 2024);
        assert!(a.merge(&ring(&[1, 2])).unwrap());
        assert_eq!(a, ring(&[1, 2]));
    }

    #[test]
    fn transfer_splits_and_newer_versions_win() {
        let mut a = ring(&[1, 2]);
        let mut b = a.clone();
        assert!(a.transfer(p(1), 1100, 1200, p(2), 100));
        assert_eq!(a.owner(1150), Some(p(2)));
        assert_eq!(a.owner(1250), Some(p(1)));
        assert!(b.merge(&a).unwrap());
        assert_eq!(a, b);
        assert!(!a.transfer(p(2), 1300, 1310, p(1), 0), "only the owner gives space away");
    }

    #[test]
    fn concurrent_rmpeer_on_two_peers_agrees() {
        let base = ring(&[1, 2, 3]);
        let (mut a, mut b) = (base.clone(), base.clone());
        assert_eq!(a.take_over(p(2), p(1)), 341);
        assert_eq!(b.take_over(p(2), p(3)), 341);
        assert_eq!(a, b, "the heir is the owner of the preceding range, whoever runs rmpeer");
        assert_eq!(a.owner(1400), Some(p(1)));
    }

    fn merged_both_ways(a: &Ring, b: &Ring) -> Ring {
        let mut x = a.clone();
        x.merge(b).unwrap();
        let mut y = b.clone();
        y.merge(a).unwrap();
        assert_eq!(x, y);
        x
    }

    #[test]
    fn a_takeover_beats_updates_the_dead_peer_made_before_dying() {
        let base = ring(&[1, 2, 3]);
        let mut last_words = base.clone();
        for f in 0..5 {
            last_words.set_free(p(2), base.entries()[1].token, 300 - f);
        }
        let mut taken = base.clone();
        taken.take_over(p(2), p(1));
        assert_eq!(merged_both_ways(&last_words, &taken).owner(1400), Some(p(1)));
    }

    #[test]
    fn a_whole_entry_donation_beats_a_takeover_from_a_stale_view_even_after_free_counts() {
        let base = ring(&[1, 2, 3]);
        let (tok, end) = (base.entries()[1].token, base.entries()[2].token);
        let mut donated = base.clone();
        assert!(donated.transfer(p(2), tok, end, p(3), 0));
        let mut stale = base.clone();
        stale.take_over(p(2), p(1));
        assert_eq!(merged_both_ways(&donated, &stale).owner(1400), Some(p(3)));
        // The heir publishing free counts on the taken entry changes nothing.
        for f in 0..10 {
            stale.set_free(p(1), tok, 300 - f);
        }
        assert_eq!(merged_both_ways(&donated, &stale).owner(1400), Some(p(3)));
    }

    #[test]
    fn only_the_peer_an_entry_was_taken_from_may_reassert_it() {
        let mut r = ring(&[1, 2, 3]);
        let tok = r.entries()[1].token;
        r.take_over(p(2), p(1));
        assert!(!r.reassert(p(3), tok));
        assert!(r.reassert(p(2), tok));
        assert_eq!(r.owner(tok), Some(p(2)));
        assert!(!r.reassert(p(2), tok), "not a takeover any more");
    }

    #[test]
    fn invalid_rings_are_rejected() {
        let good = ring(&[1, 2]);
        let mut e = good.entries().to_vec();
        e[1].token = 999;
        assert!(Ring::from_parts(1000, 2024, good.seeds().to_vec(), e).is_err());
        let mut e = good.entries().to_vec();
        e[0].free = 5000;
        assert!(Ring::from_parts(1000, 2024, good.seeds().to_vec(), e).is_err());
        assert!(Ring::from_parts(1000, 2024, vec![], good.entries().to_vec()).is_err());
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
                        r.transfer(me, from, to, p(peer), 0);
                    }
                    1 => {
                        let mine = r.ranges().find(|(e, _, _)| e.peer == me).map(|(_, s, t)| (s, t));
                        if let Some((s, t)) = mine {
                            r.set_free(me, s, len.min(t - s));
                        }
                    }
                    _ => {
                        r.take_over(p(peer), me);
                    }
                }
                // Gossip now and then: merge a random other replica in.
                let other = replicas[(who + peer as usize) % 4].clone();
                replicas[who].merge(&other).unwrap();
            }
            let mut fwd = replicas[0].clone();
            for r in &replicas[1..] { fwd.merge(r).unwrap(); }
            let mut perm = replicas[order[0]].clone();
            for &i in &order[1..] { perm.merge(&replicas[i]).unwrap(); }
            prop_assert_eq!(&fwd, &perm);
            let again = fwd.clone();
            prop_assert!(!fwd.merge(&again).unwrap());
            fwd.validate().unwrap();
        }
    }
}
