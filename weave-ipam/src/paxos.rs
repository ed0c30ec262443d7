//! Consensus on the initial division: single-decree Paxos whose messages
//! are gossiped state, as in Weave.
//!
//! Every participant publishes one entry: the highest ballot it promised and
//! the proposal it accepted. Entries only grow, so the map of entries is a
//! CRDT (merge keeps the greater entry per node) and rides the same gossip
//! as the ring. Reading the merged map, a node acts as acceptor (promise the
//! highest ballot seen; accept a proposal at or above its promise) and, when
//! it wants the ring initialised, as proposer (claim a fresh ballot; once a
//! quorum promised it, propose the value with the highest accepted ballot
//! among them, or else the set of peers that promised). A value is chosen
//! once a quorum accepted it at one ballot; every node that sees that
//! initialises the ring with the chosen peers as seeds.
//!
//! Observers never publish an entry: they neither vote nor propose.

use std::collections::{BTreeMap, BTreeSet};

use weave_core::PeerName;

/// A ballot: round, then proposer, so ballots of different proposers differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Ballot {
    /// The round.
    pub round: u64,
    /// Who proposes at it.
    pub proposer: PeerName,
}

/// What one participant has published.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeState {
    /// Highest ballot promised.
    pub promise: Ballot,
    /// Proposal accepted, with its ballot.
    pub accepted: Option<(Ballot, Vec<PeerName>)>,
}

impl NodeState {
    fn rank(&self) -> (Ballot, Option<&(Ballot, Vec<PeerName>)>) {
        (self.promise, self.accepted.as_ref())
    }
}

/// The gossiped Paxos state of all participants, plus this node's role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paxos {
    ourself: PeerName,
    quorum: usize,
    observer: bool,
    nodes: BTreeMap<PeerName, NodeState>,
}

impl Paxos {
    /// A participant (or an observer) needing `quorum` votes.
    pub fn new(ourself: PeerName, quorum: usize, observer: bool) -> Self {
        Self { ourself, quorum: quorum.max(1), observer, nodes: BTreeMap::new() }
    }

    /// Votes needed.
    pub fn quorum(&self) -> usize {
        self.quorum
    }

    /// Participants heard of.
    pub fn known(&self) -> usize {
        self.nodes.len()
    }

    /// Every published entry.
    pub fn nodes(&self) -> &BTreeMap<PeerName, NodeState> {
        &self.nodes
    }

    /// Merge received entries; true if anything changed. Our own entry is
    /// only ever written by us.
    pub fn merge(&mut self, other: &BTreeMap<PeerName, NodeState>) -> bool {
        let mut changed = false;
        for (&n, s) in other {
            if n == self.ourself && self.observer {
                continue;
            }
            // Our own entry is only written by us — but after a restart
            // without state, peers remember what we promised; adopt it so we
            // never promise or propose below it again.
            let cur = self.nodes.entry(n).or_default();
            if s.rank() > cur.rank() {
                *cur = s.clone();
                changed = true;
            }
        }
        changed
    }

    /// Resume from persisted state: everyone's entries as saved, ours
    /// included (an acceptor must not forget what it promised).
    pub fn restore_own(&mut self, saved: &BTreeMap<PeerName, NodeState>) {
        for (&n, s) in saved {
            let cur = self.nodes.entry(n).or_default();
            if s.rank() > cur.rank() {
                *cur = s.clone();
            }
        }
    }

    /// The chosen value, if a quorum accepted one proposal.
    pub fn chosen(&self) -> Option<Vec<PeerName>> {
        let mut votes: BTreeMap<&(Ballot, Vec<PeerName>), usize> = BTreeMap::new();
        for s in self.nodes.values() {
            if let Some(a) = &s.accepted {
                *votes.entry(a).or_default() += 1;
            }
        }
        votes.into_iter().find(|(a, n)| *n >= self.quorum && !a.1.is_empty()).map(|(a, _)| a.1.clone())
    }

    /// Start (or restart, after a stall) proposing with a fresh ballot.
    pub fn propose(&mut self) -> bool {
        if self.observer {
            return false;
        }
        let highest = self.nodes.values().map(|s| s.promise.round).max().unwrap_or(0);
        let Some(round) = highest.checked_add(1) else { return false };
        let me = self.nodes.entry(self.ourself).or_default();
        me.promise = Ballot { round, proposer: self.ourself };
        true
    }

    /// The highest ballot anyone promised: progress marker for retries.
    pub fn highest_ballot(&self) -> Ballot {
        self.nodes.values().map(|s| s.promise).max().unwrap_or_default()
    }

    /// Whether we are proposing at our current ballot.
    pub fn is_proposing(&self) -> bool {
        self.nodes.get(&self.ourself).is_some_and(|s| s.promise.proposer == self.ourself && s.promise.round > 0)
    }

    /// Act on what we know, as acceptor and (if proposing) proposer; true if
    /// our entry changed (so it must be gossiped).
    pub fn think(&mut self) -> bool {
        if self.observer {
            return false;
        }
        let before = self.nodes.get(&self.ourself).cloned();
        let highest_promise = self.nodes.values().map(|s| s.promise).max().unwrap_or_default();
        // Accept the highest proposal a proposer made at or above our promise.
        let proposal = self.nodes.iter().filter_map(|(&n, s)| s.accepted.as_ref().filter(|(b, _)| b.proposer == n).cloned()).max_by_key(|(b, _)| *b);
        let me = self.nodes.entry(self.ourself).or_default();
        if highest_promise > me.promise {
            me.promise = highest_promise;
        }
        if let Some((b, v)) = proposal {
            if b >= me.promise && me.accepted.as_ref().is_none_or(|(ab, _)| b > *ab) {
                me.promise = b;
                me.accepted = Some((b, v));
            }
        }
        // Proposer: phase 1 done once a quorum promised our ballot.
        let my = self.nodes[&self.ourself].promise;
        if my.proposer == self.ourself && my.round > 0 && self.nodes[&self.ourself].accepted.as_ref().is_none_or(|(b, _)| *b < my) {
            let promised: Vec<(&PeerName, &NodeState)> = self.nodes.iter().filter(|(_, s)| s.promise == my).collect();
            if promised.len() >= self.quorum {
                let value = promised.iter().filter_map(|(_, s)| s.accepted.as_ref()).max_by_key(|(b, _)| *b).map(|(_, v)| v.clone()).unwrap_or_else(|| {
                    let set: BTreeSet<PeerName> = promised.iter().map(|(n, _)| **n).collect();
                    set.into_iter().collect()
                });
                self.nodes.get_mut(&self.ourself).expect("inserted above").accepted = Some((my, value));
            }
        }
        self.nodes.get(&self.ourself) != before.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: u64) -> PeerName {
        PeerName::from_u64(n).unwrap()
    }

    /// Lossless all-to-all rounds until nothing changes.
    fn settle(nodes: &mut [Paxos]) {
        for _ in 0..50 {
            let mut changed = false;
            for i in 0..nodes.len() {
                changed |= nodes[i].think();
                let snapshot = nodes[i].nodes().clone();
                for (j, other) in nodes.iter_mut().enumerate() {
                    if j != i {
                        changed |= other.merge(&snapshot);
                    }
                }
            }
            if !changed {
                return;
            }
        }
    }

    #[test]
    fn one_proposer_gets_everyone_to_agree() {
        let mut nodes: Vec<Paxos> = (1..=3).map(|i| Paxos::new(p(i), 2, false)).collect();
        nodes[0].propose();
        settle(&mut nodes);
        let chosen = nodes[0].chosen().expect("decided");
        for n in &nodes {
            assert_eq!(n.chosen().as_ref(), Some(&chosen));
        }
        assert!(chosen.len() >= 2);
    }

    #[test]
    fn competing_proposers_still_choose_one_value() {
        let mut nodes: Vec<Paxos> = (1..=5).map(|i| Paxos::new(p(i), 3, false)).collect();
        for n in &mut nodes {
            n.propose();
        }
        settle(&mut nodes);
        let values: BTreeSet<_> = nodes.iter().filter_map(|n| n.chosen()).collect();
        assert_eq!(values.len(), 1, "{values:?}");
    }

    #[test]
    fn observers_never_vote() {
        let mut nodes = vec![Paxos::new(p(1), 2, false), Paxos::new(p(2), 2, true)];
        nodes[0].propose();
        nodes[1].propose();
        settle(&mut nodes);
        assert!(nodes[0].chosen().is_none(), "one voter cannot make a quorum of two");
        assert!(!nodes[1].nodes().contains_key(&p(2)));
    }
}
