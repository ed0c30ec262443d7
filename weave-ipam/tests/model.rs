//! A model of IPAM over several peers under random operations: allocate,
//! free, claim, gossip, partition, heal, router restart with and without
//! persisted state, rmpeer (also the same dead peer on two peers at once)
//! and reset. After every step no address belongs to two containers; after
//! healing everything, every ring is the same and every held address lies
//! in its holder's space.

use std::time::Duration;

use ipnet::Ipv4Net;
use proptest::prelude::*;
use weave_core::sim::Sim;
use weave_ipam::{InitMode, Ipam};

use weave_ipam::sim::*;

const N: usize = 5;

/// What the model exercised, to check it is not vacuous.
static STATS: [std::sync::atomic::AtomicUsize; 4] = [const { std::sync::atomic::AtomicUsize::new(0) }; 4];

fn count(i: usize, by: usize) {
    STATS[i].fetch_add(by, std::sync::atomic::Ordering::Relaxed);
}

#[derive(Debug, Clone)]
enum Op {
    Allocate(usize, u8, bool),
    Free(usize, u8),
    Claim(usize, u8, u16),
    Run(u16),
    Partition(u8),
    Heal,
    Crash(usize),
    Restart(usize, bool),
    Rmpeer(usize, usize),
    RmpeerOnTwo(usize, usize, usize),
    Reset(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let p = 0..N;
    prop_oneof![
        6 => (p.clone(), 0u8..12, any::<bool>()).prop_map(|(a, c, s)| Op::Allocate(a, c, s)),
        2 => (p.clone(), 0u8..12).prop_map(|(a, c)| Op::Free(a, c)),
        2 => (p.clone(), 0u8..12, 0u16..1024).prop_map(|(a, c, o)| Op::Claim(a, c, o)),
        5 => (1u16..3000).prop_map(Op::Run),
        1 => (1u8..31).prop_map(Op::Partition),
        1 => Just(Op::Heal),
        1 => p.clone().prop_map(Op::Crash),
        1 => (p.clone(), any::<bool>()).prop_map(|(a, k)| Op::Restart(a, k)),
        3 => (p.clone(), p.clone()).prop_map(|(a, d)| Op::Rmpeer(a, d)),
        3 => (p.clone(), p.clone(), p.clone()).prop_map(|(a, b, d)| Op::RmpeerOnTwo(a, b, d)),
        1 => p.prop_map(Op::Reset),
    ]
}

struct World {
    sim: Sim<Node>,
    /// Crashed routers whose containers still run (restart with state).
    saved: Vec<Option<Ipam>>,
    /// Declared dead (rmpeer) or reset: gone for good.
    gone: Vec<bool>,
}

impl World {
    fn new(seed: u64) -> Self {
        let seeds: Vec<_> = (0..N).map(name).collect();
        let mut sim = cluster(seed, N, |_| InitMode::Seeds(seeds.clone()));
        lossy(&mut sim, 0.05);
        Self { sim, saved: vec![None; N], gone: vec![false; N] }
    }

    fn up(&self, p: usize) -> bool {
        self.sim.is_up(p) && !self.gone[p]
    }

    fn set_reachability(&mut self, inside: Option<&[usize]>) {
        for p in 0..N {
            let same_side = |q: usize| inside.is_none_or(|s| s.contains(&p) == s.contains(&q));
            let reach = (0..N).filter(|&q| q != p && same_side(q)).map(name).collect();
            self.sim.with_node(p, |n, now, out| {
                n.ipam.set_reachable(now, reach);
                n.drain(out);
            });
        }
    }

    fn crash(&mut self, p: usize) {
        if self.up(p) {
            // What the router persisted, as it will read it back.
            let snap = self.sim.node(p).ipam.snapshot();
            let seeds = (0..N).map(name).collect();
            let restored = Ipam::restore(weave_ipam::IpamConfig::new(weave_ipam::sim::identity(p), name(p), range(), InitMode::Seeds(seeds)), &snap).unwrap();
            self.saved[p] = Some(restored);
            self.sim.crash(p);
        }
    }

    fn apply(&mut self, op: &Op) {
        let subnet: Ipv4Net = "10.32.1.0/24".parse().unwrap();
        match *op {
            Op::Allocate(p, c, in_subnet) if self.up(p) => {
                self.sim.with_node(p, |n, now, out| {
                    let s = in_subnet.then_some(subnet);
                    n.ipam.allocate(now, &format!("c{c}"), s).unwrap();
                    n.drain(out);
                });
            }
            Op::Free(p, c) if self.up(p) => {
                self.sim.with_node(p, |n, now, out| {
                    n.ipam.free_all(now, &format!("c{c}"));
                    n.drain(out);
                });
            }
            Op::Claim(p, c, off) if self.up(p) => {
                let base = u32::from(range().network());
                let addr = Ipv4Net::new((base + u32::from(off)).into(), 22).unwrap();
                self.sim.with_node(p, |n, now, out| {
                    let _ = n.ipam.claim(now, &format!("c{c}"), addr);
                    n.drain(out);
                });
            }
            Op::Run(ms) => self.sim.run_for(Duration::from_millis(u64::from(ms))),
            Op::Partition(mask) => {
                let side: Vec<usize> = (0..N).filter(|i| mask & (1 << i) != 0).collect();
                self.sim.heal_all();
                self.sim.partition(&side);
                self.set_reachability(Some(&side));
            }
            Op::Heal => {
                self.sim.heal_all();
                self.set_reachability(None);
            }
            Op::Crash(p) => self.crash(p),
            Op::Restart(p, keep) if !self.gone[p] && !self.sim.is_up(p) => {
                let now = self.sim.now();
                let node = match (keep, self.saved[p].take()) {
                    (true, Some(mut ipam)) => {
                        let fresh = Node::new(p, N, now, range(), InitMode::Seeds(vec![]));
                        ipam.set_reachable(now, (0..N).filter(|&q| q != p).map(name).collect());
                        Node { ipam, ..fresh }
                    }
                    // State lost: the host rebooted and its containers are gone.
                    _ => Node::new(p, N, now, range(), InitMode::Seeds((0..N).map(name).collect())),
                };
                self.sim.restart(p, node);
            }
            Op::Rmpeer(a, dead) if a != dead && self.up(a) && !self.gone[dead] => {
                self.declare_dead(dead);
                self.rmpeer(&[a], dead);
            }
            Op::RmpeerOnTwo(a, b, dead) if a != b && a != dead && b != dead && self.up(a) && self.up(b) && !self.gone[dead] => {
                self.declare_dead(dead);
                self.rmpeer(&[a, b], dead);
            }
            Op::Reset(p) if self.up(p) => {
                self.sim.with_node(p, |n, now, out| {
                    n.ipam.free_all(now, "");
                    n.ipam.leave(now);
                    n.drain(out);
                });
                self.sim.run_for(Duration::from_millis(500));
                self.declare_dead(p);
            }
            _ => {}
        }
    }

    /// rmpeer `dead` on each of `runners`, back to back, as an operator does
    /// once the peer has been gone a while. Every router that is down is
    /// named too (as `weave rmpeer A B` would), and naming a peer asserts it
    /// is gone for good with its containers — rmpeer of a peer that comes
    /// back is the operator error Weave's contract excludes.
    fn rmpeer(&mut self, runners: &[usize], dead: usize) {
        self.sim.run_for(Duration::from_secs(5));
        let down: Vec<usize> = (0..N).filter(|&p| p == dead || !self.up(p)).collect();
        for &p in &down {
            self.declare_dead(p);
        }
        let down: Vec<_> = down.into_iter().map(name).collect();
        for &x in runners {
            if !self.up(x) {
                continue;
            }
            self.sim.with_node(x, |n, now, out| {
                match n.ipam.rmpeer(now, &down) {
                    Ok(moved) => count(0, usize::from(moved > 0)),
                    Err(weave_ipam::IpamError::RmpeerPartialView(_)) | Err(weave_ipam::IpamError::RmpeerAlive(_)) => {}
                    Err(e) => panic!("rmpeer: {e}"),
                }
                n.drain(out);
            });
        }
    }

    /// The host is gone with its containers; nobody restarts it.
    fn declare_dead(&mut self, p: usize) {
        if self.sim.is_up(p) {
            self.sim.crash(p);
        }
        self.saved[p] = None;
        self.gone[p] = true;
    }

    fn check(&self, ctx: &str) {
        let mut held = std::collections::BTreeMap::new();
        let live = (0..N).filter(|&p| self.up(p)).map(|p| (p, &self.sim.node(p).ipam));
        let saved = self.saved.iter().enumerate().filter_map(|(p, s)| s.as_ref().map(|i| (p, i)));
        for (p, ipam) in live.chain(saved) {
            for (a, c) in ipam.allocations() {
                if let Some(prev) = held.insert(a.addr(), (p, c.to_owned())) {
                    panic!("{ctx}: {} held by {prev:?} and {:?} (seed {})", a.addr(), (p, c), self.sim.seed());
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn no_address_is_ever_held_twice_and_rings_converge(seed in any::<u64>(), ops in proptest::collection::vec(op(), 1..60)) {
        let mut w = World::new(seed);
        for (i, op) in ops.iter().enumerate() {
            w.apply(op);
            w.check(&format!("after step {i} {op:?}"));
        }
        // Heal, bring back every router that may return, let gossip settle.
        w.apply(&Op::Heal);
        for p in 0..N {
            w.apply(&Op::Restart(p, true));
        }
        w.sim.set_default_link(weave_core::sim::LinkConfig::default());
        w.sim.run_for(Duration::from_secs(30));
        w.check("after healing");
        count(1, 1);
        count(2, (0..N).filter(|&p| w.up(p)).map(|p| w.sim.node(p).ipam.allocations().count()).sum());
        let live: Vec<usize> = (0..N).filter(|&p| w.up(p)).collect();
        prop_assert!(rings_agree(&w.sim, &live), "rings differ after healing (seed {seed})");
        assert_holders_own(&w.sim, "after healing");
        for &p in &live {
            prop_assert!(w.sim.node(p).errors.is_empty(), "{:?}", w.sim.node(p).errors);
        }
    }
}

/// Found by the model: a peer cut off from the others runs rmpeer for the
/// owner of an address it is waiting to claim, then claims it.
#[test]
fn rmpeer_from_a_partition_then_claim_keeps_one_owner() {
    let ops = [Op::Allocate(2, 0, false), Op::Partition(2), Op::Allocate(0, 0, false), Op::Run(6), Op::Claim(1, 0, 409), Op::Rmpeer(1, 2)];
    let mut w = World::new(1071120642456143793);
    for op in &ops {
        w.apply(op);
        w.check(&format!("{op:?}"));
    }
    w.apply(&Op::Heal);
    w.sim.run_for(Duration::from_secs(30));
    w.check("healed");
    let live: Vec<usize> = (0..N).filter(|&p| w.up(p)).collect();
    assert!(rings_agree(&w.sim, &live));
    assert_holders_own(&w.sim, "healed");
}

#[test]
fn the_model_exercises_allocation_and_rmpeer() {
    // A fixed seed: this checks that the generator and the model reach
    // rmpeer at all, which a random draw of 256 cases sometimes does not
    // (the property test above draws fresh cases every run).
    use proptest::test_runner::{RngAlgorithm, TestRng, TestRunner};
    let mut runner = TestRunner::new_with_rng(ProptestConfig::with_cases(256), TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let strategy = (any::<u64>(), proptest::collection::vec(op(), 1..60));
    runner
        .run(&strategy, |(seed, ops)| {
            let mut w = World::new(seed);
            for op in &ops {
                w.apply(op);
            }
            w.apply(&Op::Heal);
            w.sim.run_for(Duration::from_secs(10));
            count(1, 1);
            count(2, (0..N).filter(|&p| w.up(p)).map(|p| w.sim.node(p).ipam.allocations().count()).sum());
            Ok(())
        })
        .unwrap();
    let load = |i: usize| STATS[i].load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("cases {}, held at the end {}, rmpeers that moved space {}", load(1), load(2), load(0));
    assert!(load(2) > load(1), "most cases end with addresses held");
    assert!(load(0) > 0, "some rmpeers moved space");
}
