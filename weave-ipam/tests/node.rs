//! The production node in the simulator: IPAM and weaveDNS registered as
//! persistent channels on every peer's `Node` (the same composition the
//! tokio driver runs), over lossy links, through a partition, a failing
//! disk and crashes with restarts from what was saved.
//!
//! What must hold: no address is ever held twice; an allocation or a name
//! acknowledged to its caller survives a crash of its peer; while a peer
//! cannot save, it acknowledges nothing and resumes once it can; in the
//! end every peer resolves every live name the same way.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use prost::Message;
use weave_core::sim::{LinkConfig, NodeId, Sim};
use weave_core::PeerName;
use weave_dns::channel::DnsChannel;
use weave_dns::{Dns, WallClock};
use weave_gossip::connmaker::ConnMakerConfig;
use weave_gossip::mesh::MeshConfig;
use weave_gossip::sim::SimPeer;
use weave_ipam::channel::{IpamChannel, CHANNEL as IPAM};
use weave_ipam::wire::SnapshotMsg;
use weave_ipam::{InitMode, Ipam, IpamConfig};

const DNS: &str = weave_dns::channel::CHANNEL;
const N: usize = 7;
const T0: u64 = 1_800_000_000;

fn quick(m: &mut MeshConfig, c: &mut ConnMakerConfig) {
    m.heartbeat_interval = Duration::from_secs(1);
    m.read_timeout = Duration::from_secs(5);
    m.channel_gossip_interval = Duration::from_secs(2);
    c.discovery = false;
    c.backoff_max = Duration::from_secs(3);
}

fn name(id: NodeId) -> PeerName {
    PeerName::from_u64(id as u64 + 1).unwrap()
}

fn ipam_config(peer: &SimPeer, id: NodeId) -> IpamConfig {
    let mut cfg = IpamConfig::new(peer.identity(), name(id), "10.40.0.0/16".parse().unwrap(), InitMode::Consensus { quorum: N / 2 + 1 });
    cfg.retry_interval = Duration::from_millis(500);
    cfg
}

/// A peer with both channels, restored from `disk` (IPAM snapshot, DNS
/// names) when given: what a router does at start.
fn host(id: NodeId, start: Instant, now: Instant, seed: u64, disk: Option<(Vec<u8>, Vec<u8>)>) -> SimPeer {
    let mut peer = SimPeer::new(id, now, seed, quick);
    let mut dns = Dns::new(peer.identity(), name(id), "weave.local.", WallClock::new(start, T0), now);
    let ipam = match &disk {
        Some((ipam, names)) => {
            dns.restore_own(names).unwrap();
            Ipam::restore(ipam_config(&peer, id), &SnapshotMsg::decode(&ipam[..]).unwrap()).unwrap()
        }
        None => Ipam::new(ipam_config(&peer, id)).unwrap(),
    };
    peer.register_persistent_channel(IPAM, Box::new(IpamChannel::new(ipam)));
    peer.register_persistent_channel(DNS, Box::new(DnsChannel::new(dns, now)));
    peer
}

fn connect_all(sim: &mut Sim<SimPeer>, id: NodeId) {
    let targets: Vec<NodeId> = (0..N).filter(|&t| t != id).collect();
    sim.with_node(id, |p, now, out| p.connect(now, &targets, out));
}

/// What callers were told: container -> (peer, address) for allocations,
/// and names whose registration was acknowledged.
#[derive(Default)]
struct Acks {
    addrs: BTreeMap<String, (NodeId, Ipv4Net)>,
    names: BTreeMap<String, Ipv4Addr>,
}

/// Allocate for `container` on `id`; the reply records the address and
/// registers its name (acknowledged once saved).
fn allocate(sim: &mut Sim<SimPeer>, id: NodeId, container: &str, acks: &Arc<Mutex<Acks>>) {
    let (a, c) = (acks.clone(), container.to_owned());
    sim.with_node(id, |p, now, out| {
        p.with_channel(now, IPAM, out, |ch: &mut IpamChannel| {
            ch.allocate(
                now,
                &c.clone(),
                None,
                Box::new(move |r| {
                    if let Ok(n) = r {
                        a.lock().unwrap().addrs.insert(c, (id, n));
                    }
                }),
            )
        })
    });
}

/// Register names for the acknowledged addresses of `id` not yet named.
fn name_new(sim: &mut Sim<SimPeer>, id: NodeId, acks: &Arc<Mutex<Acks>>) {
    let todo: Vec<(String, Ipv4Addr)> = {
        let a = acks.lock().unwrap();
        a.addrs.iter().filter(|(c, (p, _))| *p == id && !a.names.contains_key(*c)).map(|(c, (_, n))| (c.clone(), n.addr())).collect()
    };
    for (c, addr) in todo {
        let a = acks.clone();
        sim.with_node(id, |p, now, out| {
            p.with_channel(now, DNS, out, |ch: &mut DnsChannel| {
                ch.add(now, &c, &c, &[addr]).unwrap();
                let c = c.clone();
                ch.when_saved(Box::new(move || {
                    a.lock().unwrap().names.insert(c, addr);
                }));
            })
        });
    }
}

/// Each of `peers` allocates `per_peer` times; then names what was answered.
fn round(sim: &mut Sim<SimPeer>, peers: &[NodeId], per_peer: usize, k: &mut usize, acks: &Arc<Mutex<Acks>>) {
    for _ in 0..per_peer {
        for &id in peers {
            *k += 1;
            allocate(sim, id, &format!("c{k}"), acks);
        }
        sim.run_for(Duration::from_millis(200));
    }
    sim.run_for(Duration::from_secs(3));
    for &id in peers {
        name_new(sim, id, acks);
    }
    sim.run_for(Duration::from_secs(1));
}

fn held(sim: &Sim<SimPeer>, id: NodeId) -> Vec<(Ipv4Addr, String)> {
    sim.node(id).channel::<IpamChannel>(IPAM).unwrap().ipam().allocations().map(|(a, c)| (a.addr(), c.to_owned())).collect()
}

/// No address is held twice anywhere, and every acknowledged allocation
/// is held by its peer.
fn check_addresses(sim: &Sim<SimPeer>, acks: &Acks, seed: u64) {
    let mut owners: BTreeMap<Ipv4Addr, (NodeId, String)> = BTreeMap::new();
    for id in 0..N {
        for (a, c) in held(sim, id) {
            if let Some(prev) = owners.insert(a, (id, c.clone())) {
                panic!("seed {seed}: {a} held twice: by {prev:?} and by ({id}, {c})");
            }
        }
    }
    for (c, (id, n)) in &acks.addrs {
        assert_eq!(owners.get(&n.addr()), Some(&(*id, c.clone())), "seed {seed}: acknowledged {c} -> {n} on peer {id} is lost");
    }
}

fn disk(sim: &Sim<SimPeer>, id: NodeId) -> (Vec<u8>, Vec<u8>) {
    let p = sim.node(id);
    (p.saved(IPAM).expect("IPAM saved").to_vec(), p.saved(DNS).map(<[u8]>::to_vec).unwrap_or_default())
}

#[test]
fn ipam_and_dns_on_the_production_node_survive_loss_partition_full_disk_and_crashes() {
    let seed = Sim::<SimPeer>::seed_from_env();
    let mut sim: Sim<SimPeer> = Sim::new(seed);
    sim.set_default_link(LinkConfig { loss: 0.02, ..LinkConfig::default() });
    let start = sim.start();
    for id in 0..N {
        sim.add_node(host(id, start, start, seed, None));
    }
    for id in 0..N {
        connect_all(&mut sim, id);
    }
    sim.run_for(Duration::from_secs(5));
    let acks = Arc::new(Mutex::new(Acks::default()));
    let mut k = 0;
    let all: Vec<NodeId> = (0..N).collect();
    round(&mut sim, &all, 4, &mut k, &acks);
    assert!(acks.lock().unwrap().addrs.len() >= 4 * N - 2, "seed {seed}: most allocations answered: {}", acks.lock().unwrap().addrs.len());
    check_addresses(&sim, &acks.lock().unwrap(), seed);

    // A full disk on peer 1: it answers nothing it cannot save, says why,
    // and answers once it can.
    sim.with_node(1, |p, _, _| p.set_disk_error(Some("no space left on device".into())));
    let before = acks.lock().unwrap().addrs.len();
    allocate(&mut sim, 1, "while-full", &acks);
    sim.run_for(Duration::from_secs(5));
    assert_eq!(acks.lock().unwrap().addrs.len(), before, "seed {seed}: nothing is acknowledged while it cannot be saved");
    assert!(sim.node(1).node().save_error(IPAM).is_some_and(|e| e.contains("no space")), "seed {seed}: the save error is reported");
    sim.with_node(1, |p, _, _| p.set_disk_error(None));
    sim.run_for(Duration::from_secs(6));
    assert!(acks.lock().unwrap().addrs.contains_key("while-full"), "seed {seed}: answered once saving works again");
    assert!(sim.node(1).node().save_error(IPAM).is_none());

    // A partition: both sides go on allocating where they have space.
    sim.partition(&[0, 1, 2]);
    round(&mut sim, &all, 2, &mut k, &acks);
    sim.heal_all();
    sim.run_for(Duration::from_secs(10));
    check_addresses(&sim, &acks.lock().unwrap(), seed);

    // Crashes: two peers stop at once, right after acknowledging, and come
    // back from what they saved; the rest allocate meanwhile.
    for victim in [2, 5] {
        k += 1;
        allocate(&mut sim, victim, &format!("c{k}"), &acks);
        sim.run_for(Duration::from_millis(300));
        sim.crash(victim);
    }
    let others: Vec<NodeId> = (0..N).filter(|id| ![2, 5].contains(id)).collect();
    round(&mut sim, &others, 2, &mut k, &acks);
    for victim in [2, 5] {
        let saved = disk(&sim, victim);
        let now = sim.now();
        sim.restart(victim, host(victim, start, now, seed.wrapping_add(victim as u64), Some(saved)));
        connect_all(&mut sim, victim);
    }
    sim.run_for(Duration::from_secs(10));
    round(&mut sim, &all, 2, &mut k, &acks);
    sim.run_for(Duration::from_secs(20));
    check_addresses(&sim, &acks.lock().unwrap(), seed);

    // Every acknowledged name resolves on every peer, restarted ones too.
    let names = acks.lock().unwrap().names.clone();
    assert!(names.len() > 20, "seed {seed}: names were registered");
    let done = sim.run_until_true(Duration::from_secs(60), Duration::from_millis(200), |sim| {
        (0..N).all(|id| {
            let d = sim.node(id).channel::<DnsChannel>(DNS).unwrap().dns();
            names.iter().all(|(c, a)| d.lookup(c) == vec![*a])
        })
    });
    let missing: BTreeSet<&String> =
        names.keys().filter(|c| (0..N).any(|id| sim.node(id).channel::<DnsChannel>(DNS).unwrap().dns().lookup(c).is_empty())).collect();
    assert!(done.is_some(), "seed {seed}: names do not resolve everywhere: {missing:?}");
}
