//! Routes computed from the topology.
//!
//! Only *symmetric established* connections carry traffic: A–B is an edge
//! when A's record lists B as established and B's lists A. Unicast goes to
//! the first hop of a shortest path (BFS). Broadcast from a source S follows
//! S's BFS tree: every peer computes the same tree (neighbours visited in
//! name order, first discovery wins), so on a stable topology each peer gets
//! a broadcast exactly once, and relays it to its own children in that tree.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use weave_core::PeerName;

use crate::topology::{PeerRecord, Topology};

/// Unicast next hops and (lazily) broadcast children.
///
/// Peers are numbered in name order; the graph walks use those numbers, so
/// a route calculation and a broadcast tree cost a few array reads per
/// edge (they run for every topology change while a large mesh forms).
/// The graph is shared, not copied, by clones (the data plane gets one
/// after every change; a full mesh of 200 has 40 000 link ends).
#[derive(Debug, Clone, Default)]
pub struct Routes {
    ourself: PeerName,
    /// Every peer with at least one symmetric link, in name order.
    names: Arc<[PeerName]>,
    /// Neighbours of `names[i]`, in name order.
    adjacency: Arc<[Vec<PeerName>]>,
    /// The same, as indices into `names`.
    adjacent: Arc<[Vec<u32>]>,
    next_hop: HashMap<PeerName, PeerName>,
    children: HashMap<PeerName, Vec<PeerName>>,
}

impl Routes {
    /// Compute routes for `topo`.
    pub fn calculate(topo: &Topology) -> Self {
        // Records come in name order and list their connections sorted by
        // peer, so the other direction of an edge is a binary search away
        // and every list below comes out sorted, with nothing to rebuild.
        let records: Vec<&PeerRecord> = topo.records().collect();
        let lists = |r: &PeerRecord, peer: PeerName| {
            debug_assert!(r.connections.is_sorted_by_key(|c| c.peer), "a record's connections are sorted by peer");
            r.connections.binary_search_by_key(&peer, |c| c.peer).is_ok_and(|i| r.connections[i].established)
        };
        let record_of = |peer: PeerName| records.binary_search_by_key(&peer, |r| r.name).ok().map(|i| records[i]);
        let mut names = Vec::new();
        let mut adjacency = Vec::new();
        for a in &records {
            let linked: Vec<PeerName> =
                a.connections.iter().filter(|c| c.established && record_of(c.peer).is_some_and(|b| lists(b, a.name))).map(|c| c.peer).collect();
            if !linked.is_empty() {
                names.push(a.name);
                adjacency.push(linked);
            }
        }
        Self::from_sorted(topo.ourself(), names, adjacency)
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

    /// `adjacency` is symmetric (both callers build it so: a link is in
    /// both its ends' lists), so its keys name every peer, in order.
    fn from_adjacency(ourself: PeerName, adjacency: BTreeMap<PeerName, Vec<PeerName>>) -> Self {
        let (names, lists): (Vec<PeerName>, Vec<Vec<PeerName>>) = adjacency
            .into_iter()
            .map(|(name, mut v)| {
                v.sort_unstable();
                v.dedup();
                (name, v)
            })
            .unzip();
        Self::from_sorted(ourself, names, lists)
    }

    /// `names` sorted, `adjacency[i]` the sorted neighbours of `names[i]`,
    /// symmetric (every neighbour is in `names`).
    fn from_sorted(ourself: PeerName, names: Vec<PeerName>, adjacency: Vec<Vec<PeerName>>) -> Self {
        let index = |p: &PeerName| names.binary_search(p).expect("a symmetric adjacency names every neighbour") as u32;
        let adjacent: Vec<Vec<u32>> = adjacency.iter().map(|v| v.iter().map(index).collect()).collect();
        let mut routes =
            Self { ourself, names: names.into(), adjacency: adjacency.into(), adjacent: adjacent.into(), next_hop: HashMap::new(), children: HashMap::new() };
        routes.next_hop = routes.first_hops();
        routes
    }

    /// Links between peers (each counted once per end): what a
    /// recalculation walks.
    pub fn link_ends(&self) -> usize {
        self.adjacent.iter().map(Vec::len).sum()
    }

    fn index_of(&self, p: PeerName) -> Option<u32> {
        self.names.binary_search(&p).ok().map(|i| i as u32)
    }

    /// Breadth-first from us: every reachable peer's first hop.
    fn first_hops(&self) -> HashMap<PeerName, PeerName> {
        let Some(me) = self.index_of(self.ourself) else { return HashMap::new() };
        const UNSEEN: u32 = u32::MAX;
        let mut hop = vec![UNSEEN; self.names.len()];
        hop[me as usize] = me;
        let mut queue = VecDeque::new();
        for &n in &self.adjacent[me as usize] {
            hop[n as usize] = n;
            queue.push_back(n);
        }
        while let Some(p) = queue.pop_front() {
            let h = hop[p as usize];
            for &n in &self.adjacent[p as usize] {
                if hop[n as usize] == UNSEEN {
                    hop[n as usize] = h;
                    queue.push_back(n);
                }
            }
        }
        hop.iter().enumerate().filter(|&(i, &h)| h != UNSEEN && i as u32 != me).map(|(i, &h)| (self.names[i], self.names[h as usize])).collect()
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
        self.neighbours_of(self.ourself)
    }

    /// `peer`'s neighbours over symmetric established connections.
    pub fn neighbours_of(&self, peer: PeerName) -> &[PeerName] {
        self.index_of(peer).map_or(&[], |i| self.adjacency[i as usize].as_slice())
    }

    /// Whether we would still reach `peer` without our own link to it.
    pub fn reachable_without_link_to(&self, peer: PeerName) -> bool {
        let (Some(from), Some(to)) = (self.index_of(self.ourself), self.index_of(peer)) else { return false };
        let mut seen = vec![false; self.adjacency.len()];
        seen[from as usize] = true;
        let mut queue = std::collections::VecDeque::from([from]);
        while let Some(i) = queue.pop_front() {
            for n in &self.adjacency[i as usize] {
                let Some(j) = self.index_of(*n) else { continue };
                if (i, j) == (from, to) || seen[j as usize] {
                    continue;
                }
                if j == to {
                    return true;
                }
                seen[j as usize] = true;
                queue.push_back(j);
            }
        }
        false
    }

    /// Our children in `src`'s broadcast tree: where to relay a broadcast
    /// that `src` originated. Empty if we are not in its tree.
    pub fn broadcast_children(&mut self, src: PeerName) -> &[PeerName] {
        let Some(s) = self.index_of(src) else {
            // Not a peer we route for: nothing to relay, nothing to cache
            // (a hostile peer could otherwise grow the cache without bound).
            return &[];
        };
        if !self.children.contains_key(&src) {
            let c = self.compute_children(s);
            self.children.insert(src, c);
        }
        &self.children[&src]
    }

    /// Our children in the breadth-first tree from `src` (neighbours
    /// visited in name order, first discovery wins). The walk stops as soon
    /// as our children are known: when we are taken from the queue, or
    /// earlier when every neighbour of ours has been discovered by others
    /// (in a full mesh, right after `src`'s own neighbours).
    fn compute_children(&self, src: u32) -> Vec<PeerName> {
        let Some(me) = self.index_of(self.ourself) else { return Vec::new() };
        let mut seen = vec![false; self.names.len()];
        let mut ours = vec![false; self.names.len()];
        let mut unseen_of_ours = 0usize;
        for &n in &self.adjacent[me as usize] {
            ours[n as usize] = true;
            unseen_of_ours += 1;
        }
        seen[src as usize] = true;
        if ours[src as usize] {
            unseen_of_ours -= 1;
        }
        let mut queue = VecDeque::from([src]);
        while let Some(p) = queue.pop_front() {
            if p == me {
                return self.adjacent[me as usize].iter().filter(|&&n| !seen[n as usize]).map(|&n| self.names[n as usize]).collect();
            }
            for &n in &self.adjacent[p as usize] {
                if !seen[n as usize] {
                    seen[n as usize] = true;
                    unseen_of_ours -= usize::from(ours[n as usize]);
                    queue.push_back(n);
                }
            }
            if unseen_of_ours == 0 {
                break;
            }
        }
        Vec::new()
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

    #[test]
    fn a_link_can_go_only_if_another_path_covers_it() {
        // 1-2-3-1 is a triangle; 4 hangs off 1 alone.
        let r = Routes::from_links(n(1), &[(1, 2), (2, 3), (3, 1), (1, 4)].map(|(a, b)| (n(a), n(b))));
        assert!(r.reachable_without_link_to(n(2)));
        assert!(r.reachable_without_link_to(n(3)));
        assert!(!r.reachable_without_link_to(n(4)), "4 is reached only over our link");
        assert!(!r.reachable_without_link_to(n(9)), "an unknown peer is not reached at all");
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

    /// Our children in `src`'s tree by a plain, complete breadth-first walk.
    fn children_by_full_walk(links: &[(PeerName, PeerName)], me: PeerName, src: PeerName) -> Vec<PeerName> {
        let mut adj: BTreeMap<PeerName, Vec<PeerName>> = BTreeMap::new();
        for &(a, b) in links {
            adj.entry(a).or_default().push(b);
            adj.entry(b).or_default().push(a);
        }
        adj.values_mut().for_each(|v| {
            v.sort();
            v.dedup();
        });
        let mut parent = BTreeMap::from([(src, src)]);
        let mut queue = VecDeque::from([src]);
        let mut ours = Vec::new();
        while let Some(p) = queue.pop_front() {
            for &n in adj.get(&p).into_iter().flatten() {
                if let std::collections::btree_map::Entry::Vacant(e) = parent.entry(n) {
                    e.insert(p);
                    queue.push_back(n);
                    if p == me {
                        ours.push(n);
                    }
                }
            }
        }
        ours
    }

    proptest::proptest! {
        #[test]
        fn routes_from_records_follow_only_links_both_ends_list(
            edges in proptest::collection::vec((1u64..10, 1u64..10), 0..30),
            oneway in proptest::collection::vec((1u64..10, 1u64..10), 0..6),
            me in 1u64..10,
        ) {
            let edges: Vec<(u64, u64)> = edges.into_iter().filter(|(a, b)| a != b).collect();
            // One-sided: listed by one end only (a pair listed both ways is a link).
            let mut one_sided: Vec<(u64, u64)> = Vec::new();
            for &(a, b) in &oneway {
                if a != b && !edges.iter().any(|e| *e == (a, b) || *e == (b, a)) && !one_sided.iter().any(|e| *e == (b, a) || *e == (a, b)) {
                    one_sided.push((a, b));
                }
            }
            let oneway = one_sided;
            let from_records = Routes::calculate(&topo(me, &edges, &oneway));
            let links: Vec<(PeerName, PeerName)> = edges.iter().map(|&(a, b)| (n(a), n(b))).collect();
            let expected = Routes::from_links(n(me), &links);
            for p in 1..10 {
                proptest::prop_assert_eq!(from_records.neighbours_of(n(p)), expected.neighbours_of(n(p)));
                proptest::prop_assert_eq!(from_records.next_hop(n(p)), expected.next_hop(n(p)));
            }
        }

        #[test]
        fn the_shortened_walk_finds_the_same_children(edges in proptest::collection::vec((1u64..12, 1u64..12), 0..40), me in 1u64..12, src in 1u64..12) {
            let links: Vec<(PeerName, PeerName)> = edges.iter().filter(|(a, b)| a != b).map(|&(a, b)| (n(a), n(b))).collect();
            let mut r = Routes::from_links(n(me), &links);
            let expected = if links.iter().any(|&(a, b)| a == n(src) || b == n(src)) { children_by_full_walk(&links, n(me), n(src)) } else { Vec::new() };
            proptest::prop_assert_eq!(r.broadcast_children(n(src)).to_vec(), expected);
        }
    }
}
