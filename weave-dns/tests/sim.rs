//! weaveDNS over the real mesh in the simulator: 30 peers on lossy links,
//! random adds and deletes with mixed-case names, five peers cut off long
//! enough to be forgotten and then healed, and a peer that restarts with
//! its state lost (its stale entries must be deleted). Every peer must end
//! with the same live entries — exactly the ones their origins hold.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use rand::Rng;
use weave_core::sim::{LinkConfig, NodeId, Sim};
use weave_core::PeerName;
use weave_dns::channel::{DnsChannel, CHANNEL};
use weave_dns::{Dns, WallClock};
use weave_gossip::connmaker::ConnMakerConfig;
use weave_gossip::mesh::MeshConfig;
use weave_gossip::sim::SimPeer;

const T0: u64 = 1_800_000_000;

/// A peer with weaveDNS on its mesh.
fn host(id: NodeId, start: Instant, now: Instant, seed: u64) -> SimPeer {
    let mut peer = SimPeer::new(id, now, seed, quick);
    let name = PeerName::from_u64(id as u64 + 1).unwrap();
    let dns = Dns::new(peer.identity(), name, "weave.local.", WallClock::new(start, T0), now);
    peer.register_channel(CHANNEL, Box::new(DnsChannel::new(dns, now)));
    peer
}

fn dns(sim: &Sim<SimPeer>, id: NodeId) -> &Dns {
    sim.node(id).channel::<DnsChannel>(CHANNEL).unwrap().dns()
}

fn quick(m: &mut MeshConfig, c: &mut ConnMakerConfig) {
    m.heartbeat_interval = Duration::from_secs(1);
    m.read_timeout = Duration::from_secs(4);
    m.channel_gossip_interval = Duration::from_secs(3);
    c.discovery = false;
    c.backoff_max = Duration::from_secs(3);
}

type Live = BTreeSet<(String, Ipv4Addr, PeerName, String)>;

fn live(dns: &Dns) -> Live {
    dns.store().entries().filter(|(_, v)| !v.is_tombstone()).map(|(k, _)| (k.hostname.clone(), k.addr, k.origin, k.container.clone())).collect()
}

/// What every peer should see: each origin's own live entries.
fn truth(sim: &Sim<SimPeer>, n: usize) -> Live {
    (0..n)
        .flat_map(|id| {
            let me = PeerName::from_u64(id as u64 + 1).unwrap();
            live(dns(sim, id)).into_iter().filter(move |e| e.2 == me)
        })
        .collect()
}

#[test]
fn thirty_peers_converge_through_loss_partition_and_a_stateless_restart() {
    let seed = Sim::<SimPeer>::seed_from_env();
    let n = 30;
    let mut sim: Sim<SimPeer> = Sim::new(seed);
    sim.set_default_link(LinkConfig { loss: 0.02, ..LinkConfig::default() });
    let start = sim.start();
    for id in 0..n {
        sim.add_node(host(id, start, start, seed));
    }
    for id in 1..n {
        let a = sim.rng().random_range(0..id);
        let b = sim.rng().random_range(0..id);
        sim.with_node(id, |p, now, out| p.connect(now, &[a, b], out));
    }
    // The five cut off later also link to each other, so they stay a mesh.
    for id in 26..n {
        sim.with_node(id, |p, now, out| p.connect(now, &[25], out));
    }
    sim.run_for(Duration::from_secs(10));

    let names = ["Web", "db", "CACHE", "api", "Worker"];
    let step = |sim: &mut Sim<SimPeer>, ops: usize| {
        for _ in 0..ops {
            let id = sim.rng().random_range(0..n);
            let name = names[sim.rng().random_range(0..names.len())];
            let mixed: String =
                name.chars().map(|c| if rand::Rng::random_bool(sim.rng(), 0.5) { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() }).collect();
            let container = format!("c{}", sim.rng().random_range(0..8));
            let addr = Ipv4Addr::new(10, 32, id as u8, sim.rng().random_range(1..20));
            let delete = sim.rng().random_bool(0.3);
            sim.with_node(id, |p, now, out| {
                p.with_channel(now, CHANNEL, out, |d: &mut DnsChannel| {
                    if delete {
                        d.remove(now, &container, None, &[]).unwrap();
                    } else {
                        d.add(now, &container, &mixed, &[addr]).unwrap();
                        assert!(d.dns().lookup(&mixed.to_lowercase()).contains(&addr), "own entries resolve at once, any case");
                    }
                });
            });
            sim.run_for(Duration::from_millis(20));
        }
    };
    step(&mut sim, 150);

    // Cut five peers off long enough for both sides to forget each other.
    let cut: Vec<NodeId> = (25..n).collect();
    sim.partition(&cut);
    step(&mut sim, 100);
    sim.run_for(Duration::from_secs(15));
    let outsider = PeerName::from_u64(27).unwrap();
    assert!(live(dns(&sim, 0)).iter().all(|e| e.2 != outsider), "seed {seed}: entries of a peer that left the topology are dropped");
    sim.heal_all();
    step(&mut sim, 50);

    // A peer restarts with its state lost: others still hold its entries.
    let victim = 3;
    let before: usize = live(dns(&sim, 0)).iter().filter(|e| e.2 == PeerName::from_u64(victim as u64 + 1).unwrap()).count();
    let now = sim.now();
    sim.restart(victim, host(victim, start, now, seed.wrapping_add(9)));
    let targets: Vec<NodeId> = (0..n).filter(|&i| i != victim).take(2).collect();
    sim.with_node(victim, |p, now, out| p.connect(now, &targets, out));

    let done = sim.run_until_true(Duration::from_secs(120), Duration::from_millis(100), |sim| {
        let t = truth(sim, n);
        (0..n).all(|id| live(dns(sim, id)) == t)
    });
    assert!(done.is_some(), "seed {seed}: peers did not converge");
    let victim_name = PeerName::from_u64(victim as u64 + 1).unwrap();
    assert!(live(dns(&sim, 0)).iter().all(|e| e.2 != victim_name), "seed {seed}: the restarted peer's stale entries ({before} of them) were deleted");
    // Lookups agree everywhere, case-insensitively.
    for name in names {
        let answers: BTreeSet<Vec<Ipv4Addr>> = (0..n).map(|id| dns(&sim, id).lookup(&name.to_uppercase())).collect();
        assert_eq!(answers.len(), 1, "seed {seed}: {name}");
    }
}
