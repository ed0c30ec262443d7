//! IPAM over the real mesh in the simulator: a lossy chain of peers where
//! only neighbours connect, so ring updates travel by gossip relays and
//! space requests by routed unicast.

use std::collections::BTreeMap;
use std::time::Duration;

use weave_core::sim::{LinkConfig, Sim};
use weave_core::PeerName;
use weave_gossip::connmaker::ConnMakerConfig;
use weave_gossip::mesh::MeshConfig;
use weave_gossip::sim::SimPeer;
use weave_ipam::channel::{IpamChannel, CHANNEL};
use weave_ipam::{InitMode, Ipam, IpamConfig};

fn quick(m: &mut MeshConfig, c: &mut ConnMakerConfig) {
    m.heartbeat_interval = Duration::from_secs(1);
    m.read_timeout = Duration::from_secs(5);
    m.channel_gossip_interval = Duration::from_secs(2);
    c.discovery = false;
}

#[test]
fn a_lossy_chain_reaches_consensus_and_allocates_without_duplicates() {
    let seed = Sim::<SimPeer>::seed_from_env();
    let n = 6;
    let mut sim: Sim<SimPeer> = Sim::new(seed);
    sim.set_default_link(LinkConfig { loss: 0.02, ..LinkConfig::default() });
    let start = sim.start();
    for id in 0..n {
        let mut peer = SimPeer::new(id, start, seed, quick);
        let name = PeerName::from_u64(id as u64 + 1).unwrap();
        let mut cfg = IpamConfig::new(peer.identity(), name, "10.32.0.0/16".parse().unwrap(), InitMode::Consensus { quorum: n / 2 + 1 });
        cfg.retry_interval = Duration::from_millis(500);
        peer.register_channel(CHANNEL, Box::new(IpamChannel::new(Ipam::new(cfg).unwrap())));
        sim.add_node(peer);
    }
    for id in 1..n {
        sim.with_node(id, |p, now, out| p.connect(now, &[id - 1], out));
    }
    sim.run_for(Duration::from_secs(5));
    // Both ends of the chain allocate, many times, in one small subnet so
    // space must be requested from peers several hops away.
    let subnet = "10.32.7.0/26".parse().unwrap();
    let mut pending = 0;
    for round in 0..30 {
        for id in [0, n - 1] {
            sim.with_node(id, |p, now, out| {
                let waits = p.with_channel(now, CHANNEL, out, |c: &mut IpamChannel| {
                    c.allocate(now, &format!("c{id}-{round}"), Some(subnet), Box::new(|r| assert!(r.is_ok(), "{r:?}"))).is_some()
                });
                if waits == Some(true) {
                    pending += 1;
                }
            });
        }
        sim.run_for(Duration::from_millis(300));
    }
    sim.run_for(Duration::from_secs(30));
    let mut held: BTreeMap<std::net::Ipv4Addr, String> = BTreeMap::new();
    let ipams: Vec<&Ipam> = (0..n).map(|id| sim.node(id).channel::<IpamChannel>(CHANNEL).unwrap().ipam()).collect();
    for ipam in &ipams {
        for (a, c) in ipam.allocations() {
            assert!(held.insert(a.addr(), c.to_owned()).is_none(), "seed {seed}: {} held twice", a.addr());
        }
    }
    // The /26 has 62 usable addresses and 60 containers asked.
    assert_eq!(held.len(), 60, "seed {seed}: every allocation completed ({pending} had to wait)");
    let rings: std::collections::BTreeSet<String> = ipams.iter().map(|i| format!("{:?}", i.ring())).collect();
    assert_eq!(rings.len(), 1, "seed {seed}: one ring");
    assert!(pending > 0, "space had to travel over the mesh");
}
