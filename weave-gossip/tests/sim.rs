//! Deterministic multi-node simulations of the mesh. Each test prints its
//! seed; replay a failure with `WEAVE_SIM_SEED=<seed>`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::seq::IndexedRandom;
use rand::Rng;
use weave_core::sim::{LinkConfig, NodeId, Sim};
use weave_core::PeerName;
use weave_gossip::channel::Channel;
use weave_gossip::connmaker::ConnMakerConfig;
use weave_gossip::mesh::MeshConfig;
use weave_gossip::sim::SimPeer;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn name(id: NodeId) -> PeerName {
    PeerName::from_u64(id as u64 + 1).unwrap()
}

fn quick(m: &mut MeshConfig, c: &mut ConnMakerConfig) {
    m.heartbeat_interval = Duration::from_secs(1);
    m.read_timeout = Duration::from_secs(4);
    m.anti_entropy_interval = Duration::from_secs(2);
    m.channel_gossip_interval = Duration::from_secs(2);
    c.discovery = false;
    c.backoff_max = Duration::from_secs(4);
}

fn cluster(seed: u64, n: usize, configure: fn(&mut MeshConfig, &mut ConnMakerConfig)) -> Sim<SimPeer> {
    let mut sim = Sim::new(seed);
    let start = sim.start();
    for id in 0..n {
        sim.add_node(SimPeer::new(id, start, seed, configure));
    }
    sim
}

fn connect(sim: &mut Sim<SimPeer>, a: NodeId, targets: &[NodeId]) {
    sim.with_node(a, |p, now, out| p.connect(now, targets, out));
}

/// Every up node knows exactly the up nodes in `expect` (and routes to them).
fn all_know(sim: &mut Sim<SimPeer>, nodes: &[NodeId], expect: &[NodeId]) -> bool {
    let want: BTreeSet<PeerName> = expect.iter().map(|&i| name(i)).collect();
    nodes.iter().all(|&i| {
        let have: BTreeSet<PeerName> = sim.node(i).mesh().topology().records().map(|r| r.name).collect();
        have == want
    })
}

fn routes_complete(sim: &mut Sim<SimPeer>, nodes: &[NodeId]) -> bool {
    let mut ok = true;
    for &i in nodes {
        sim.with_node(i, |p, _, _| {
            let reach = p.mesh_mut().routes().reachable_count();
            ok &= reach == nodes.len() - 1;
        });
    }
    ok
}

fn wait(sim: &mut Sim<SimPeer>, limit: Duration, f: impl FnMut(&mut Sim<SimPeer>) -> bool) -> Option<Duration> {
    let mut f = f;
    let begin = sim.now();
    loop {
        if f(sim) {
            return Some(sim.now() - begin);
        }
        if sim.now() - begin >= limit {
            return None;
        }
        sim.run_for(Duration::from_millis(10));
    }
}

#[test]
fn a_chain_converges_and_routes_through_every_hop() {
    let seed = Sim::<SimPeer>::seed_from_env();
    let mut sim = cluster(seed, 6, quick);
    for i in 1..6 {
        connect(&mut sim, i, &[i - 1]);
    }
    let all: Vec<NodeId> = (0..6).collect();
    wait(&mut sim, Duration::from_secs(10), |s| all_know(s, &all, &all) && routes_complete(s, &all))
        .unwrap_or_else(|| panic!("seed {seed}: chain did not converge"));
    sim.with_node(0, |p, _, _| assert_eq!(p.mesh_mut().routes().next_hop(name(5)), Some(name(1))));
}

#[test]
fn lossy_random_cluster_converges() {
    let seed = Sim::<SimPeer>::seed_from_env();
    let mut sim = cluster(seed, 30, quick);
    sim.set_default_link(LinkConfig { loss: 0.05, ..LinkConfig::default() });
    for i in 1..30 {
        let a = sim.rng().random_range(0..i);
        let b = sim.rng().random_range(0..i);
        connect(&mut sim, i, &[a, b]);
    }
    let all: Vec<NodeId> = (0..30).collect();
    let one_topology = |s: &mut Sim<SimPeer>| {
        let digests: BTreeSet<_> = all.iter().map(|&i| s.node(i).mesh().topology().digest()).collect();
        digests.len() == 1
    };
    wait(&mut sim, Duration::from_secs(30), |s| all_know(s, &all, &all) && routes_complete(s, &all) && one_topology(s))
        .unwrap_or_else(|| panic!("seed {seed}: lossy cluster did not converge to one topology"));
}

#[test]
fn partition_is_detected_collected_and_healed() {
    let seed = Sim::<SimPeer>::seed_from_env();
    let mut sim = cluster(seed, 8, quick);
    // Two rings of four, joined by links 0-4 and 2-6.
    for i in 0..4 {
        connect(&mut sim, i, &[(i + 1) % 4]);
        connect(&mut sim, 4 + i, &[4 + (i + 1) % 4]);
    }
    connect(&mut sim, 0, &[4]);
    connect(&mut sim, 2, &[6]);
    let all: Vec<NodeId> = (0..8).collect();
    wait(&mut sim, Duration::from_secs(10), |s| all_know(s, &all, &all)).expect("initial convergence");
    let left = [0, 1, 2, 3];
    let right = [4, 5, 6, 7];
    sim.partition(&left);
    let t = wait(&mut sim, Duration::from_secs(30), |s| all_know(s, &left, &left) && all_know(s, &right, &right))
        .unwrap_or_else(|| panic!("seed {seed}: the halves did not forget each other"));
    assert!(t >= Duration::from_secs(3), "detected by the read timeout, not before: {t:?}");
    sim.heal_all();
    wait(&mut sim, Duration::from_secs(30), |s| all_know(s, &all, &all) && routes_complete(s, &all)).unwrap_or_else(|| panic!("seed {seed}: did not heal"));
}

#[test]
fn a_peer_restarting_with_a_new_uid_supersedes_its_old_record() {
    let seed = Sim::<SimPeer>::seed_from_env();
    let mut sim = cluster(seed, 5, quick);
    for i in 1..5 {
        connect(&mut sim, i, &[0, i - 1]);
    }
    let all: Vec<NodeId> = (0..5).collect();
    wait(&mut sim, Duration::from_secs(10), |s| all_know(s, &all, &all)).expect("initial convergence");
    // Churn node 3's record so its old version is well above 1.
    for _ in 0..3 {
        sim.with_node(3, |p, now, out| p.forget(now, &[0], out));
        sim.run_for(Duration::from_millis(200));
        sim.with_node(3, |p, now, out| p.connect(now, &[0], out));
        sim.run_for(Duration::from_millis(500));
    }
    let old = sim.node(0).mesh().topology().get(name(3)).unwrap().clone();
    assert!(old.version > 3);
    sim.crash(3);
    sim.run_for(Duration::from_secs(1));
    let start = sim.now();
    sim.restart(3, SimPeer::new(3, start, seed.wrapping_add(1), quick));
    connect(&mut sim, 3, &[2]);
    let new_uid = sim.node(3).mesh().config().uid;
    assert_ne!(new_uid, old.uid);
    wait(&mut sim, Duration::from_secs(30), |s| {
        all.iter().all(|&i| s.node(i).mesh().topology().get(name(3)).is_some_and(|r| r.uid == new_uid && r.version > old.version)) && all_know(s, &all, &all)
    })
    .unwrap_or_else(|| panic!("seed {seed}: new incarnation did not win"));
}

#[test]
fn discovery_connects_peers_learnt_through_a_middle_peer() {
    fn with_discovery(m: &mut MeshConfig, c: &mut ConnMakerConfig) {
        quick(m, c);
        c.discovery = true;
    }
    let seed = Sim::<SimPeer>::seed_from_env();
    let mut sim = cluster(seed, 3, with_discovery);
    connect(&mut sim, 0, &[1]);
    connect(&mut sim, 2, &[1]);
    // Both may discover and dial each other at once: the duplicate
    // tie-break must settle on one connection that both ends hold.
    wait(&mut sim, Duration::from_secs(10), |s| {
        let (a, c) = (s.node(0).mesh(), s.node(2).mesh());
        a.connection_to(name(2)).is_some()
            && a.connection_to(name(2)) == c.connection_to(name(0))
            && a.connections().count() == 2
            && c.connections().count() == 2
    })
    .unwrap_or_else(|| panic!("seed {seed}: 0 and 2 never settled on one direct connection"));
}

/// 60 peers that know only peer 0, each allowed 8 connections: the first
/// nine fill each other up at once. A joiner no route reaches still gets
/// in (a link that others cover makes room), and a peer already in the
/// mesh is referred elsewhere. Every peer comes to reach every other
/// through routes, and no peer goes far past its limit.
#[test]
fn joiners_that_know_only_a_full_peer_get_in_and_reach_everyone() {
    fn limited(m: &mut MeshConfig, c: &mut ConnMakerConfig) {
        quick(m, c);
        c.discovery = true;
        c.conn_limit = 8;
    }
    let seed = Sim::<SimPeer>::seed_from_env();
    let n = 60;
    let mut sim = cluster(seed, n, limited);
    for id in 1..n {
        connect(&mut sim, id, &[0]);
        sim.run_for(Duration::from_millis(100));
    }
    let all: Vec<NodeId> = (0..n).collect();
    let took = wait(&mut sim, Duration::from_secs(120), |s| routes_complete(s, &all));
    let Some(took) = took else {
        let mut lines = Vec::new();
        for &i in &all {
            let mut reach = 0;
            sim.with_node(i, |p, _, _| reach = p.mesh_mut().routes().reachable_count());
            let p = sim.node(i);
            let conns: Vec<String> = p.mesh().connections().map(|(_, r)| r.name.to_string()).collect();
            let targets: Vec<String> =
                p.connection_maker().targets().iter().map(|t| format!("{}:{:?}:{}", t.address, t.state, t.last_error.clone().unwrap_or_default())).collect();
            lines.push(format!("{i}: reach {reach} records {} conns {conns:?} targets {targets:?}", p.mesh().topology().len()));
        }
        panic!("seed {seed}: not every peer reaches every other under a limit of 8\n{}", lines.join("\n"));
    };
    eprintln!("seed {seed}: {n} peers with a limit of 8 reach one another {took:?} after the last join");
    sim.run_for(Duration::from_secs(30));
    assert!(routes_complete(&mut sim, &all), "seed {seed}: routes stay complete");
    let counts: Vec<usize> = all.iter().map(|&i| sim.node(i).mesh().connections().count()).collect();
    // Outbound dials already under way when inbound ones filled the
    // limit may go past it; inbound ones never do.
    assert!(counts.iter().all(|&c| (1..=10).contains(&c)), "seed {seed}: connections per peer {counts:?}");
}

/// A grow-only set of u64 as a gossip channel, logging what arrives.
#[derive(Default)]
struct GSet {
    items: BTreeSet<u64>,
    broadcasts: Vec<(PeerName, Vec<u8>)>,
    unicasts: Vec<(PeerName, Vec<u8>)>,
}

struct Shared(Arc<Mutex<GSet>>);

fn decode(b: &[u8]) -> Result<Vec<u64>, Error> {
    if b.len() % 8 != 0 {
        return Err("length not a multiple of 8".into());
    }
    Ok(b.chunks(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect())
}

fn encode(v: impl IntoIterator<Item = u64>) -> Vec<u8> {
    v.into_iter().flat_map(u64::to_le_bytes).collect()
}

impl Channel for Shared {
    fn on_gossip(&mut self, _now: std::time::Instant, _src: PeerName, update: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let mut s = self.0.lock().unwrap();
        let new: Vec<u64> = decode(update)?.into_iter().filter(|i| s.items.insert(*i)).collect();
        Ok((!new.is_empty()).then(|| encode(new)))
    }
    fn on_broadcast(&mut self, _now: std::time::Instant, src: PeerName, data: &[u8]) -> Result<(), Error> {
        self.0.lock().unwrap().broadcasts.push((src, data.to_vec()));
        Ok(())
    }
    fn on_unicast(&mut self, _now: std::time::Instant, src: PeerName, data: &[u8]) -> Result<(), Error> {
        self.0.lock().unwrap().unicasts.push((src, data.to_vec()));
        Ok(())
    }
    fn full_state(&mut self, _now: std::time::Instant) -> Vec<Vec<u8>> {
        let s = self.0.lock().unwrap();
        if s.items.is_empty() {
            vec![]
        } else {
            vec![encode(s.items.iter().copied())]
        }
    }
}

fn with_channel(sim: &mut Sim<SimPeer>, nodes: &[NodeId]) -> BTreeMap<NodeId, Arc<Mutex<GSet>>> {
    nodes
        .iter()
        .map(|&i| {
            let st = Arc::new(Mutex::new(GSet::default()));
            let g = Shared(st.clone());
            sim.with_node(i, move |p, _, _| p.mesh_mut().register_channel("gset", Box::new(g)));
            (i, st)
        })
        .collect()
}

#[test]
fn channel_gossip_converges_under_loss_and_unknown_channels_are_relayed() {
    let seed = Sim::<SimPeer>::seed_from_env();
    let mut sim = cluster(seed, 12, quick);
    sim.set_default_link(LinkConfig { loss: 0.1, ..LinkConfig::default() });
    // A chain where node 5 does not know the channel: it must still relay.
    for i in 1..12 {
        connect(&mut sim, i, &[i - 1]);
    }
    let members: Vec<NodeId> = (0..12).filter(|&i| i != 5).collect();
    let states = with_channel(&mut sim, &members);
    let all: Vec<NodeId> = (0..12).collect();
    // Every lost dial or accept costs the 5 s dial timeout plus backoff on
    // one of eleven chain links: formation takes up to ~40 s at 10 % loss.
    wait(&mut sim, Duration::from_secs(120), |s| all_know(s, &all, &all) && routes_complete(s, &all))
        .unwrap_or_else(|| panic!("seed {seed}: mesh did not form"));
    for (k, &i) in members.iter().enumerate() {
        states[&i].lock().unwrap().items.insert(k as u64);
        sim.with_node(i, |p, now, out| {
            p.mesh_mut().gossip("gset", encode([k as u64])).unwrap();
            p.flush(now, out);
        });
    }
    let want: BTreeSet<u64> = (0..members.len() as u64).collect();
    wait(&mut sim, Duration::from_secs(60), |_| states.values().all(|s| s.lock().unwrap().items == want))
        .unwrap_or_else(|| panic!("seed {seed}: channel did not converge"));
}

#[test]
fn broadcast_reaches_every_member_exactly_once_and_unicast_is_routed() {
    let seed = Sim::<SimPeer>::seed_from_env();
    let mut sim = cluster(seed, 10, quick);
    for i in 1..10 {
        let a = (i * 7 + 3) % i;
        connect(&mut sim, i, &[i - 1, a]);
    }
    let all: Vec<NodeId> = (0..10).collect();
    let members: Vec<NodeId> = (0..10).filter(|&i| i != 4).collect();
    let states = with_channel(&mut sim, &members);
    wait(&mut sim, Duration::from_secs(20), |s| all_know(s, &all, &all) && routes_complete(s, &all)).expect("mesh");
    sim.run_for(Duration::from_secs(1));
    for src in [0, 9] {
        sim.with_node(src, |p, now, out| {
            p.mesh_mut().broadcast("gset", vec![src as u8]).unwrap();
            p.flush(now, out);
        });
    }
    sim.with_node(0, |p, now, out| {
        p.mesh_mut().unicast("gset", name(9), b"hi nine".to_vec()).unwrap();
        p.flush(now, out);
    });
    sim.run_for(Duration::from_secs(1));
    for &i in &members {
        let s = states[&i].lock().unwrap();
        let mut got: Vec<u8> = s.broadcasts.iter().map(|(_, d)| d[0]).collect();
        got.sort();
        let mut want: Vec<u8> = [0u8, 9].into_iter().filter(|&x| x as usize != i).collect();
        want.sort();
        assert_eq!(got, want, "seed {seed}: node {i} broadcasts");
    }
    assert_eq!(states[&9].lock().unwrap().unicasts, vec![(name(0), b"hi nine".to_vec())]);
}

/// One row of the scaling table.
struct ScaleRow {
    n: usize,
    join_time: Duration,
    join_bytes: u64,
    steady_max_bps: f64,
    steady_mean_bps: f64,
}

fn scale_run(seed: u64, n: usize) -> ScaleRow {
    fn cfg(_m: &mut MeshConfig, c: &mut ConnMakerConfig) {
        c.discovery = false;
    }
    let mut sim = cluster(seed, n + 1, cfg);
    sim.set_default_link(LinkConfig { latency_min: Duration::from_millis(1), latency_max: Duration::from_millis(20), loss: 0.01, reorder: false });
    // Random sparse topology: each node dials two random earlier nodes.
    for i in 1..n {
        let picks: Vec<NodeId> = (0..i).collect::<Vec<_>>().choose_multiple(sim.rng(), 2.min(i)).copied().collect();
        connect(&mut sim, i, &picks);
    }
    let members: Vec<NodeId> = (0..n).collect();
    let formed = |s: &mut Sim<SimPeer>| {
        let d = s.node(0).mesh().topology().digest();
        d.1 == n as u64 && members.iter().all(|&i| s.node(i).mesh().topology().digest() == d)
    };
    wait(&mut sim, Duration::from_secs(120), formed).unwrap_or_else(|| panic!("seed {seed}: {n}-node cluster did not form"));
    // Steady state: no changes, just heartbeats and anti-entropy.
    sim.run_for(Duration::from_secs(30));
    sim.reset_stats();
    let window = Duration::from_secs(60);
    sim.run_for(window);
    let bps: Vec<f64> = members.iter().map(|&i| sim.stats(i).bytes_sent as f64 / window.as_secs_f64()).collect();
    let steady_max_bps = bps.iter().cloned().fold(0.0, f64::max);
    let steady_mean_bps = bps.iter().sum::<f64>() / bps.len() as f64;
    // A new peer joins through three random members.
    sim.reset_stats();
    let picks: Vec<NodeId> = members.choose_multiple(sim.rng(), 3).copied().collect();
    connect(&mut sim, n, &picks);
    let newcomer = name(n);
    let join_time = wait(&mut sim, Duration::from_secs(30), |s| members.iter().all(|&i| s.node(i).mesh().topology().get(newcomer).is_some()))
        .unwrap_or_else(|| panic!("seed {seed}: newcomer not known everywhere at N={n}"));
    let join_bytes = (0..=n).map(|i| sim.stats(i).bytes_sent).sum();
    ScaleRow { n, join_time, join_bytes, steady_max_bps, steady_mean_bps }
}

fn print_table(rows: &[ScaleRow]) {
    println!("{:>6} {:>12} {:>14} {:>22} {:>22}", "N", "join (ms)", "join bytes", "max bytes/s/peer", "mean bytes/s/peer");
    for r in rows {
        println!("{:>6} {:>12.1} {:>14} {:>22.1} {:>22.1}", r.n, r.join_time.as_secs_f64() * 1e3, r.join_bytes, r.steady_max_bps, r.steady_mean_bps);
    }
}

fn check_scaling(rows: &[ScaleRow]) {
    for r in rows {
        assert!(r.join_time <= Duration::from_secs(3), "N={} join took {:?}", r.n, r.join_time);
    }
    // Steady-state cost per peer may grow no faster than log N.
    let base = &rows[0];
    for r in &rows[1..] {
        let allowed = base.steady_max_bps * (r.n as f64).ln() / (base.n as f64).ln();
        assert!(r.steady_max_bps <= allowed, "N={}: {:.1} B/s per peer exceeds log-N growth from N={} ({:.1} allowed)", r.n, r.steady_max_bps, base.n, allowed);
    }
}

#[test]
fn scaling_table_up_to_100_peers() {
    let seed = Sim::<SimPeer>::seed_from_env();
    let rows: Vec<ScaleRow> = [10, 100].into_iter().map(|n| scale_run(seed, n)).collect();
    print_table(&rows);
    check_scaling(&rows);
}

/// The full sweep, including 1000 peers: `WEAVE_SIM_LARGE=1 cargo test
/// --release -p weave-gossip --test sim scaling_table_up_to_1000 -- --nocapture`.
#[test]
fn scaling_table_up_to_1000_peers() {
    if std::env::var_os("WEAVE_SIM_LARGE").is_none() {
        eprintln!("skipped: set WEAVE_SIM_LARGE=1 (and use --release) for the 1000-peer sweep");
        return;
    }
    let seed = Sim::<SimPeer>::seed_from_env();
    let rows: Vec<ScaleRow> = [10, 100, 1000].into_iter().map(|n| scale_run(seed, n)).collect();
    print_table(&rows);
    check_scaling(&rows);
}
