//! IPAM over the real mesh in the simulator: a lossy chain of peers where
//! only neighbours connect, so ring updates travel by gossip relays and
//! space requests by routed unicast.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weave_core::sim::{LinkConfig, NodeId, Outbox, Sim, SimNode};
use weave_core::PeerName;
use weave_gossip::connmaker::ConnMakerConfig;
use weave_gossip::mesh::MeshConfig;
use weave_gossip::sim::{SimPeer, SimWire};
use weave_ipam::channel::{pump, IpamChannel, CHANNEL};
use weave_ipam::{InitMode, Ipam, IpamConfig, Outcome};

struct Host {
    peer: SimPeer,
    ipam: Arc<Mutex<Ipam>>,
}

impl Host {
    fn settle(&mut self, now: Instant, out: &mut Outbox<SimWire>) {
        pump(&self.ipam, self.peer.mesh_mut());
        self.peer.flush(now, out);
    }
}

impl SimNode for Host {
    type Msg = SimWire;
    fn handle_message(&mut self, now: Instant, from: NodeId, msg: SimWire, out: &mut Outbox<SimWire>) {
        self.peer.handle_message(now, from, msg, out);
        self.settle(now, out);
    }
    fn handle_timeout(&mut self, now: Instant, out: &mut Outbox<SimWire>) {
        let due = self.ipam.lock().unwrap().poll_timeout().is_some_and(|t| t <= now);
        if due {
            self.ipam.lock().unwrap().handle_timeout(now);
        }
        self.peer.handle_timeout(now, out);
        self.settle(now, out);
    }
    fn poll_timeout(&self) -> Option<Instant> {
        [self.peer.poll_timeout(), self.ipam.lock().unwrap().poll_timeout()].into_iter().flatten().min()
    }
    fn message_len(m: &SimWire) -> usize {
        SimPeer::message_len(m)
    }
}

fn quick(m: &mut MeshConfig, c: &mut ConnMakerConfig) {
    m.heartbeat_interval = Duration::from_secs(1);
    m.read_timeout = Duration::from_secs(5);
    m.channel_gossip_interval = Duration::from_secs(2);
    c.discovery = false;
}

#[test]
fn a_lossy_chain_reaches_consensus_and_allocates_without_duplicates() {
    let seed = Sim::<Host>::seed_from_env();
    let n = 6;
    let mut sim: Sim<Host> = Sim::new(seed);
    sim.set_default_link(LinkConfig { loss: 0.02, ..LinkConfig::default() });
    let start = sim.start();
    for id in 0..n {
        let mut peer = SimPeer::new(id, start, seed, quick);
        let name = PeerName::from_u64(id as u64 + 1).unwrap();
        let mut cfg = IpamConfig::new(name, "10.32.0.0/16".parse().unwrap(), InitMode::Consensus { quorum: n / 2 + 1 });
        cfg.retry_interval = Duration::from_millis(500);
        let ipam = Arc::new(Mutex::new(Ipam::new(cfg).unwrap()));
        peer.mesh_mut().register_channel(CHANNEL, Box::new(IpamChannel(ipam.clone())));
        sim.add_node(Host { peer, ipam });
    }
    for id in 1..n {
        sim.with_node(id, |h, now, out| h.peer.connect(now, &[id - 1], out));
    }
    sim.run_for(Duration::from_secs(5));
    // Both ends of the chain allocate, many times, in one small subnet so
    // space must be requested from peers several hops away.
    let subnet = "10.32.7.0/26".parse().unwrap();
    let mut pending = 0;
    for round in 0..30 {
        for id in [0, n - 1] {
            sim.with_node(id, |h, now, out| {
                let r = h.ipam.lock().unwrap().allocate(now, &format!("c{id}-{round}"), Some(subnet)).unwrap();
                if matches!(r, Outcome::Pending(_)) {
                    pending += 1;
                }
                h.settle(now, out);
            });
        }
        sim.run_for(Duration::from_millis(300));
    }
    sim.run_for(Duration::from_secs(30));
    let mut held: BTreeMap<std::net::Ipv4Addr, String> = BTreeMap::new();
    for (_, h) in sim.nodes() {
        for (a, c) in h.ipam.lock().unwrap().allocations() {
            assert!(held.insert(a.addr(), c.to_owned()).is_none(), "seed {seed}: {} held twice", a.addr());
        }
    }
    // The /26 has 62 usable addresses and 60 containers asked.
    assert_eq!(held.len(), 60, "seed {seed}: every allocation completed ({pending} had to wait)");
    let rings: std::collections::BTreeSet<String> =
        sim.nodes().map(|(_, h)| format!("{:?}", h.ipam.lock().unwrap().ring())).collect();
    assert_eq!(rings.len(), 1, "seed {seed}: one ring");
    assert!(pending > 0, "space had to travel over the mesh");
}
