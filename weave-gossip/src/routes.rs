//! Routes computed from the topology.
//!
//! Only *symmetric established* connections carry traffic: A–B is an edge
//! when A's record lists B as established and B's lists A. Unicast goes to
//! the first hop of a shortest path (BFS). Broadcast from a source S follows
//! S's BFS tree: every peer computes the same tree (neighbours visited in
//! name order, first discovery wins), so on a stable topology each peer gets
//! a broadcast exactly once, and relays it to its own children in that tree.

use std::collections::{BTreeMap, HashMap, VecDeque};

use weave_core::PeerName;

use crate::topology::Topology;

/// Unicast next hops and (lazily) broadcast children.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    ourself: PeerName,
    adjacency: BTreeMap<PeerName, Vec<PeerName>>,
    next_hop: HashMap<PeerName, PeerName>,
    children: HashMap<PeerName, Vec<PeerName>>,
}

impl Routes {
    /// Compute routes for `topo`.
    pub fn calculate(topo: &Topology) -> Self {
        let mut adjacency: BTreeMap<PeerName, Vec<PeerName>> = BTreeMap::new();
        for r in topo.records() {
            for c in r.connections.iter().filter(|c| c.established) {
                let back = topo.get(c.peer).is_some_and(|o| o.connections.iter().any(|oc| oc.peer == r.name && oc.established));
                if back {
                    adjacency.entry(r.name).or_default().push(c.peer);
                }
            }
        }
        Self::from_adjacency(topo.ourself(), adjacency)
    }

    /// Routes for `ourself` over undirected `links` (for embedders with
    /// their own membership, and tests).
    pub fn from_links(ourself: PeerName, links: &[(PeerName, PeerName)]) -> Self {
        let mut adjacency: BTreeMap<PeerName, Vec<PeerName>> = BTreeMap::new();
        for &(a, b) in links {
            adjacency.entry(a).or_default().push(b);
            adjacency.entry(b).or_default().push(a);
        }
        Self::from_adjacency(ourself, adjacency)
    }

    fn from_adjacency(ourself: PeerName, mut adjacency: BTreeMap<PeerName, Vec<PeerName>>) -> Self {
        for v in adjacency.values_mut() {
            v.sort();
            v.dedup();
        }
        let mut next_hop = HashMap::new();
        let mut queue = VecDeque::new();
        for &n in adjacency.get(&ourself).into_iter().flatten() {
            next_hop.insert(n, n);
            queue.push_back(n);
        }
        while let Some(p) = queue.pop_front() {
            let hop = next_hop[&p];
            for &n in adjacency.get(&p).into_iter().flatten() {
                if n != ourself && !next_hop.contains_key(&n) {
                    next_hop.insert(n, hop);
                    queue.push_back(n);
                }
            }
        }
        Self { ourself, adjacency, next_hop, children: HashMap::new() }
    }

    /// The neighbour to send a message for `dst` to.
    pub fn next_hop(&self, dst: PeerName) -> Option<PeerName> {
        self.next_hop.get(&dst).copied()
    }

    /// Every reachable peer with the neighbour traffic to it goes through.
    pub fn next_hops(&self) -> impl Iterator<Item = (PeerName, PeerName)> + '_ {
        self.next_hop.iter().map(|(d, h)| (*d, *h))
    }

    /// Whether `dst` is reachable over established connections.
    pub fn reachable(&self, dst: PeerName) -> bool {
        dst == self.ourself || self.next_hop.contains_key(&dst)
    }

    /// Number of peers reachable (excluding ourselves).
    pub fn reachable_count(&self) -> usize {
        self.next_hop.len()
    }

    /// Our neighbours over symmetric established connections.
    pub fn neighbours(&self) -> &[PeerName] {
        self.adjacency.get(&self.ourself).map(Vec::as_slice).unwrap_or(&[])
    }

    /// `peer`'s neighbours over symmetric established connections.
    pub fn neighbours_of(&self, peer: PeerName) -> &[PeerName] {
        self.adjacency.get(&peer).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Our children in `src`'s broadcast tree: where to relay a broadcast
    /// that `src` originated. Empty if we are not in its tree.
    pub fn broadcast_children(&mut self, src: PeerName) -> &[PeerName] {
        if !self.adjacency.contains_key(&src) {
            // Not a peer we route for: nothing to relay, nothing to cache
            // (a hostile peer could otherwise grow the cache without bound).
            return &[];
        }
        if !self.children.contains_key(&src) {
            let c = self.compute_children(src);
            self.children.insert(src, c);
        }
        &self.children[&src]
    }

    fn compute_children(&self, src: PeerName) -> Vec<PeerName> {
        let mut parent: HashMap<PeerName, PeerName> = HashMap::new();
        let mut queue = VecDeque::from([src]);
        parent.insert(src, src);
        let mut ours = Vec::new();
        while let Some(p) = queue.pop_front() {
            for &n in self.adjacency.get(&p).into_iter().flatten() {
                if let std::collections::hash_map::Entry::Vacant(e) = parent.entry(n) {
                    e.insert(p);
                    queue.push_back(n);
                    if p == self.ourself {
                        ours.push(n);
                    }
                }
            }
        }
        ours
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{ConnectionInfo, PeerRecord};
    use weave_core::PeerUid;

    fn n(v: u64) -> PeerName {
        PeerName::from_u64(v).unwrap()
    }

    /// A topology as seen by `me`, from undirected edges; `oneway` edges are
    /// listed only by their first peer.
    fn topo(me: u64, edges: &[(u64, u64)], oneway: &[(u64, u64)]) -> Topology {
        let mut conns: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for &(a, b) in edges {
            conns.entry(a).or_default().push(b);
            conns.entry(b).or_default().push(a);
        }
        for &(a, b) in oneway {
            conns.entry(a).or_default().push(b);
            conns.entry(b).or_default();
        }
        let info =
            |v: &Vec<u64>| v.iter().map(|&c| ConnectionInfo { peer: n(c), address: String::new(), outbound: true, established: true }).collect::<Vec<_>>();
        let id = |k: u64| crate::Identity::from_secret([k as u8; 32]);
        let mut t = Topology::new(id(me), n(me), "me".into(), PeerUid::new(1).unwrap());
        t.set_our_connections(conns.get(&me).map(info).unwrap_or_default());
        t.apply(conns.iter().filter(|(k, _)| **k != me).map(|(k, v)| PeerRecord::signed(&id(*k), n(*k), String::new(), PeerUid::new(1).unwrap(), 1, info(v))));
        t
    }

    #[test]
    fn unicast_goes_via_the_first_hop_of_a_shortest_path() {
        let r = Routes::calculate(&topo(1, &[(1, 2), (2, 3), (3, 4), (1, 5), (5, 4)], &[]));
        assert_eq!(r.next_hop(n(3)), Some(n(2)));
        assert_eq!(r.next_hop(n(4)), Some(n(5)));
        assert_eq!(r.next_hop(n(9)), None);
    }

    #[test]
    fn one_sided_connections_carry_no_traffic() {
        let r = Routes::calculate(&topo(1, &[(1, 2)], &[(2, 3)]));
        assert_eq!(r.next_hop(n(3)), None);
        assert!(r.reachable(n(2)));
    }

    #[test]
    fn broadcasts_from_unknown_sources_are_not_relayed_or_cached() {
        let mut r = Routes::calculate(&topo(1, &[(1, 2), (2, 3)], &[]));
        for s in 100..200 {
            assert!(r.broadcast_children(n(s)).is_empty());
        }
        assert!(r.children.is_empty());
    }

    #[test]
    fn broadcast_trees_deliver_exactly_once() {
        // A ring with chords: many paths, so duplicates would show.
        let edges = [(1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 1), (1, 4), (2, 5), (3, 6)];
        for src in 1..=6u64 {
            let mut received = BTreeMap::from([(src, 1usize)]);
            let mut queue = VecDeque::from([src]);
            while let Some(p) = queue.pop_front() {
                let mut r = Routes::calculate(&topo(p, &edges, &[]));
                for &c in r.broadcast_children(n(src)) {
                    *received.entry(c.as_u64()).or_default() += 1;
                    queue.push_back(c.as_u64());
                }
            }
            assert_eq!(received.len(), 6, "every peer reached from {src}");
            assert!(received.values().all(|&k| k == 1), "exactly once from {src}: {received:?}");
        }
    }
}
