//! IPAM peers on weave-core's simulation harness (feature `testing`): a
//! full mesh where gossip reaches every peer directly, unicasts go to their
//! destination, and each peer sends its full state to one other peer every
//! second. For IPAM over the real mesh see `weave_gossip::sim` and
//! [`crate::channel`].
#![allow(missing_docs)] // test scaffolding: each item says what it is by name

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::{Completion, InitMode, Ipam, IpamConfig, Output};
use ipnet::Ipv4Net;
use weave_core::sim::{LinkConfig, NodeId, Outbox, Sim, SimNode};
use weave_core::PeerName;

pub fn name(id: NodeId) -> PeerName {
    PeerName::from_u64(id as u64 + 1).unwrap()
}

/// Node `id`'s key (kept across its restarts).
pub fn identity(id: NodeId) -> weave_gossip::Identity {
    let mut secret = [0x1d; 32];
    secret[..8].copy_from_slice(&(id as u64).to_le_bytes());
    weave_gossip::Identity::from_secret(secret)
}

pub fn id_of(n: PeerName) -> NodeId {
    n.as_u64() as usize - 1
}

#[derive(Debug, Clone)]
pub enum Msg {
    Gossip(Vec<u8>),
    Unicast(Vec<u8>),
}

pub struct Node {
    pub id: NodeId,
    pub n: usize,
    pub ipam: Ipam,
    pub completions: Vec<Completion>,
    pub next_anti_entropy: Instant,
    pub errors: Vec<String>,
    pub rr: usize,
}

impl Node {
    pub fn new(id: NodeId, n: usize, now: Instant, range: Ipv4Net, init: InitMode) -> Self {
        let mut cfg = IpamConfig::new(identity(id), name(id), range, init);
        cfg.retry_interval = Duration::from_millis(500);
        let mut ipam = Ipam::new(cfg).unwrap();
        ipam.set_reachable(now, (0..n).filter(|&i| i != id).map(name).collect());
        Self { id, n, ipam, completions: Vec::new(), next_anti_entropy: now + Duration::from_millis(200 + 37 * id as u64), errors: Vec::new(), rr: 0 }
    }

    pub fn drain(&mut self, out: &mut Outbox<Msg>) {
        while let Some(o) = self.ipam.poll_output() {
            match o {
                Output::Gossip(b) => {
                    for to in (0..self.n).filter(|&t| t != self.id) {
                        out.send(to, Msg::Gossip(b.clone()));
                    }
                }
                Output::Unicast(p, b) => out.send(id_of(p), Msg::Unicast(b)),
            }
        }
        while let Some(c) = self.ipam.poll_completion() {
            self.completions.push(c);
        }
    }
}

impl SimNode for Node {
    type Msg = Msg;

    fn handle_message(&mut self, now: Instant, from: NodeId, msg: Msg, out: &mut Outbox<Msg>) {
        let r = match msg {
            Msg::Gossip(b) => self.ipam.handle_gossip(now, name(from), &b).map(|_| ()),
            Msg::Unicast(b) => self.ipam.handle_unicast(now, name(from), &b),
        };
        if let Err(e) = r {
            self.errors.push(e.to_string());
        }
        self.drain(out);
    }

    fn handle_timeout(&mut self, now: Instant, out: &mut Outbox<Msg>) {
        if now >= self.next_anti_entropy {
            self.next_anti_entropy = now + Duration::from_secs(1);
            self.rr = self.rr % (self.n - 1) + 1;
            let to = (self.id + self.rr) % self.n;
            out.send(to, Msg::Gossip(self.ipam.full_state()));
        }
        if self.ipam.poll_timeout().is_some_and(|t| t <= now) {
            self.ipam.handle_timeout(now);
        }
        self.drain(out);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Some(self.ipam.poll_timeout().map_or(self.next_anti_entropy, |t| t.min(self.next_anti_entropy)))
    }

    fn message_len(m: &Msg) -> usize {
        match m {
            Msg::Gossip(b) | Msg::Unicast(b) => b.len(),
        }
    }
}

pub fn range() -> Ipv4Net {
    "10.32.0.0/22".parse().unwrap()
}

pub fn cluster(seed: u64, n: usize, init: impl Fn(NodeId) -> InitMode) -> Sim<Node> {
    let mut sim = Sim::new(seed);
    let start = sim.start();
    for id in 0..n {
        sim.add_node(Node::new(id, n, start, range(), init(id)));
    }
    sim
}

pub fn lossy(sim: &mut Sim<Node>, loss: f64) {
    sim.set_default_link(LinkConfig { loss, reorder: true, latency_max: Duration::from_millis(20), ..LinkConfig::default() });
}

/// Every address held by any container on an up node: address -> holders.
pub fn holders(sim: &Sim<Node>) -> BTreeMap<Ipv4Net, Vec<(NodeId, String)>> {
    let mut m: BTreeMap<Ipv4Net, Vec<(NodeId, String)>> = BTreeMap::new();
    for (id, node) in sim.nodes() {
        if !sim.is_up(id) {
            continue;
        }
        for (a, c) in node.ipam.allocations() {
            m.entry(Ipv4Net::from(a.addr())).or_default().push((id, c.to_owned()));
        }
    }
    m
}

/// No address held by two containers.
pub fn assert_no_duplicates(sim: &Sim<Node>, context: &str) {
    for (a, hs) in holders(sim) {
        assert!(hs.len() <= 1, "{context}: {a} held by {hs:?} (seed {})", sim.seed());
    }
}

/// No address owned by two up peers' rings in conflicting ways is not
/// checkable directly; instead: each held address is inside space its
/// holder's own ring says it owns.
pub fn assert_holders_own(sim: &Sim<Node>, context: &str) {
    for (id, node) in sim.nodes() {
        if !sim.is_up(id) || !node.ipam.ring().is_initialised() {
            continue;
        }
        for (a, c) in node.ipam.allocations() {
            let addr = u32::from(a.addr());
            if addr >= node.ipam.ring().start() && addr < node.ipam.ring().end() {
                assert_eq!(node.ipam.ring().owner(addr), Some(name(id)), "{context}: {c}'s {a} on {id} outside its space (seed {})", sim.seed());
            }
        }
    }
}

pub fn rings_agree(sim: &Sim<Node>, nodes: &[NodeId]) -> bool {
    let rings: BTreeSet<String> = nodes.iter().map(|&i| format!("{:?}", sim.node(i).ipam.ring())).collect();
    rings.len() <= 1
}
