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
//!
//! Each entry is signed by its participant ([`Vote`]); merge keeps only
//! entries their participant signed, and once the peers reachable over the
//! mesh are known, only theirs count — so no peer can vote in another's
//! name, nor stuff the ballot with peers that are not there.

use std::collections::{BTreeMap, BTreeSet};

use weave_core::PeerName;
use weave_gossip::identity::{Identity, Signature};

use crate::auth::KeyBook;

/// What a participant's signature of its entry is made for.
const VOTE_DOMAIN: &str = "weave-rs ipam vote v1";

/// A participant's entry with its signature, as gossiped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vote {
    /// What it published.
    pub state: NodeState,
    /// Its key.
    pub key: crate::auth::KeyBytes,
    /// Its signature of `state` (see [`NodeState::signed_bytes`]).
    pub signature: Signature,
}

impl Vote {
    /// `state` as participant `node`'s entry, signed by `identity`.
    pub fn new(identity: &Identity, node: PeerName, state: NodeState) -> Self {
        let signature = identity.sign(VOTE_DOMAIN, &state.signed_bytes(node));
        Self { state, key: identity.public().to_bytes(), signature }
    }
}

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
    /// What participant `node` signs.
    pub fn signed_bytes(&self, node: PeerName) -> Vec<u8> {
        let mut b = Vec::new();
        for v in [node.as_u64(), self.promise.round, self.promise.proposer.as_u64()] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        if let Some((ballot, value)) = &self.accepted {
            for v in [ballot.round, ballot.proposer.as_u64(), value.len() as u64] {
                b.extend_from_slice(&v.to_be_bytes());
            }
            for p in value {
                b.extend_from_slice(&p.as_u64().to_be_bytes());
            }
        }
        b
    }

    fn rank(&self) -> (Ballot, Option<&(Ballot, Vec<PeerName>)>) {
        (self.promise, self.accepted.as_ref())
    }
}

/// The gossiped Paxos state of all participants, plus this node's role.
#[derive(Debug, Clone)]
pub struct Paxos {
    ourself: PeerName,
    identity: Identity,
    quorum: usize,
    observer: bool,
    nodes: BTreeMap<PeerName, NodeState>,
    /// Each entry's key and signature.
    signatures: BTreeMap<PeerName, (crate::auth::KeyBytes, Signature)>,
    /// The participants whose entries count, once known (the peers
    /// reachable over the mesh, and us).
    counted: Option<BTreeSet<PeerName>>,
}

impl PartialEq for Paxos {
    fn eq(&self, other: &Self) -> bool {
        (self.ourself, self.quorum, self.observer, &self.nodes) == (other.ourself, other.quorum, other.observer, &other.nodes)
    }
}

impl Eq for Paxos {}

impl Paxos {
    /// A participant (or an observer) needing `quorum` votes, signing its
    /// entry with `identity`.
    pub fn new(ourself: PeerName, identity: Identity, quorum: usize, observer: bool) -> Self {
        Self { ourself, identity, quorum: quorum.max(1), observer, nodes: BTreeMap::new(), signatures: BTreeMap::new(), counted: None }
    }

    /// Count only the entries of these peers (and ours) from now on.
    pub fn set_counted(&mut self, peers: BTreeSet<PeerName>) {
        self.counted = Some(peers);
    }

    fn counts(&self, n: PeerName) -> bool {
        n == self.ourself || self.counted.as_ref().is_none_or(|c| c.contains(&n))
    }

    /// Every entry with its signature, to gossip and save.
    pub fn votes(&self) -> BTreeMap<PeerName, Vote> {
        self.nodes.iter().filter_map(|(n, s)| self.signatures.get(n).map(|&(key, signature)| (*n, Vote { state: s.clone(), key, signature }))).collect()
    }

    /// Sign our entry after a change.
    fn sign_own(&mut self) {
        if let Some(s) = self.nodes.get(&self.ourself) {
            let v = Vote::new(&self.identity, self.ourself, s.clone());
            self.signatures.insert(self.ourself, (v.key, v.signature));
        }
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
    /// only ever written by us. Entries not signed by their participant
    /// (checked against `book`) are left out and counted in `book.refused`.
    pub fn merge(&mut self, other: &BTreeMap<PeerName, Vote>, book: &mut KeyBook) -> bool {
        let mut changed = false;
        for (&n, v) in other {
            if n == self.ourself && self.observer {
                continue;
            }
            // Our own entry is only written by us — but after a restart
            // without state, peers remember what we promised; adopt it so we
            // never promise or propose below it again.
            if self.nodes.get(&n).is_some_and(|cur| v.state.rank() <= cur.rank()) {
                continue;
            }
            if !book.verify(n, &v.key, VOTE_DOMAIN, &v.state.signed_bytes(n), &v.signature) {
                book.refused += 1;
                continue;
            }
            self.nodes.insert(n, v.state.clone());
            self.signatures.insert(n, (v.key, v.signature));
            changed = true;
        }
        changed
    }

    /// Resume from persisted state: everyone's entries as saved, ours
    /// included (an acceptor must not forget what it promised).
    pub fn restore_own(&mut self, saved: &BTreeMap<PeerName, Vote>) {
        for (&n, v) in saved {
            if self.nodes.get(&n).is_none_or(|cur| v.state.rank() > cur.rank()) {
                self.nodes.insert(n, v.state.clone());
                self.signatures.insert(n, (v.key, v.signature));
            }
        }
        self.sign_own();
    }

    /// The chosen value, if a quorum of the participants that count
    /// accepted one proposal.
    pub fn chosen(&self) -> Option<Vec<PeerName>> {
        self.tally(|n| self.counts(n))
    }

    /// The value chosen by the votes we hold, whoever cast them (what a
    /// ring we are handed must be divided among).
    pub fn chosen_by_all(&self) -> Option<Vec<PeerName>> {
        self.tally(|_| true)
    }

    fn tally(&self, counts: impl Fn(PeerName) -> bool) -> Option<Vec<PeerName>> {
        let mut votes: BTreeMap<&(Ballot, Vec<PeerName>), usize> = BTreeMap::new();
        for a in self.nodes.iter().filter(|(n, _)| counts(**n)).filter_map(|(_, s)| s.accepted.as_ref()) {
            *votes.entry(a).or_default() += 1;
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
        self.sign_own();
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
            let promised: Vec<(&PeerName, &NodeState)> = self.nodes.iter().filter(|(n, s)| s.promise == my && self.counts(**n)).collect();
            if promised.len() >= self.quorum {
                let value = promised.iter().filter_map(|(_, s)| s.accepted.as_ref()).max_by_key(|(b, _)| *b).map(|(_, v)| v.clone()).unwrap_or_else(|| {
                    let set: BTreeSet<PeerName> = promised.iter().map(|(n, _)| **n).collect();
                    set.into_iter().collect()
                });
                self.nodes.get_mut(&self.ourself).expect("inserted above").accepted = Some((my, value));
            }
        }
        let changed = self.nodes.get(&self.ourself) != before.as_ref();
        if changed {
            self.sign_own();
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: u64) -> PeerName {
        PeerName::from_u64(n).unwrap()
    }

    fn node(n: u64, quorum: usize, observer: bool) -> Paxos {
        Paxos::new(p(n), Identity::from_secret([n as u8; 32]), quorum, observer)
    }

    /// Lossless all-to-all rounds until nothing changes.
    fn settle(nodes: &mut [Paxos]) {
        let mut book = KeyBook::default();
        for _ in 0..50 {
            let mut changed = false;
            for i in 0..nodes.len() {
                changed |= nodes[i].think();
                let snapshot = nodes[i].votes();
                for (j, other) in nodes.iter_mut().enumerate() {
                    if j != i {
                        changed |= other.merge(&snapshot, &mut book);
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
        let mut nodes: Vec<Paxos> = (1..=3).map(|i| node(i, 2, false)).collect();
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
        let mut nodes: Vec<Paxos> = (1..=5).map(|i| node(i, 3, false)).collect();
        for n in &mut nodes {
            n.propose();
        }
        settle(&mut nodes);
        let values: BTreeSet<_> = nodes.iter().filter_map(|n| n.chosen()).collect();
        assert_eq!(values.len(), 1, "{values:?}");
    }

    #[test]
    fn observers_never_vote() {
        let mut nodes = vec![node(1, 2, false), node(2, 2, true)];
        nodes[0].propose();
        nodes[1].propose();
        settle(&mut nodes);
        assert!(nodes[0].chosen().is_none(), "one voter cannot make a quorum of two");
        assert!(!nodes[1].nodes().contains_key(&p(2)));
    }

    #[test]
    fn forged_and_absent_votes_do_not_count() {
        let mut a = node(1, 2, false);
        let mut book = KeyBook::default();
        book.learn(p(2), Identity::from_secret([2; 32]).public());
        // Peer 3 votes in 2's name: refused.
        let forged = NodeState { promise: Ballot { round: 5, proposer: p(3) }, accepted: Some((Ballot { round: 5, proposer: p(3) }, vec![p(3)])) };
        let liar = Identity::from_secret([3; 32]);
        let vote = Vote { signature: liar.sign(VOTE_DOMAIN, &forged.signed_bytes(p(2))), key: liar.public().to_bytes(), state: forged.clone() };
        assert!(!a.merge(&BTreeMap::from([(p(2), vote)]), &mut book));
        assert_eq!(book.refused, 1);
        // Peers 3 and 4 vote for themselves, signed, but the mesh does not
        // list them: not a quorum.
        a.set_counted(BTreeSet::from([p(2)]));
        let own = |n: u64| {
            let id = Identity::from_secret([n as u8; 32]);
            Vote { signature: id.sign(VOTE_DOMAIN, &forged.signed_bytes(p(n))), key: id.public().to_bytes(), state: forged.clone() }
        };
        assert!(a.merge(&BTreeMap::from([(p(3), own(3)), (p(4), own(4))]), &mut book));
        assert_eq!(a.chosen(), None, "two signed votes, from peers that are not there");
        a.set_counted(BTreeSet::from([p(2), p(3), p(4)]));
        assert_eq!(a.chosen(), Some(vec![p(3)]));
    }
}
