//! Allocators under load: many random operations while messages are in
//! flight, and rmpeer run for one dead peer on two live peers at once.

use std::time::Duration;

use rand::Rng;
use weave_ipam::InitMode;

use weave_ipam::sim::*;

#[test]
fn five_allocators_ten_thousand_operations_zero_duplicates() {
    let seed = weave_core::sim::Sim::<Node>::seed_from_env();
    let mut sim = cluster(seed, 5, |_| InitMode::Consensus { quorum: 3 });
    lossy(&mut sim, 0.02);
    let subnets = ["10.32.0.0/24", "10.32.1.0/24", "10.32.2.0/23"];
    let mut allocated = 0usize;
    for i in 0..10_000 {
        let p = sim.rng().random_range(0..5);
        let c = format!("c{}", sim.rng().random_range(0..60));
        let action = sim.rng().random_range(0..10);
        let subnet = subnets[sim.rng().random_range(0..subnets.len())].parse().ok();
        let off: u32 = sim.rng().random_range(1..1023);
        sim.with_node(p, |n, now, out| {
            match action {
                0..=5 => {
                    if let Ok(weave_ipam::Outcome::Done(_)) = n.ipam.allocate(now, &c, subnet) {
                        allocated += 1;
                    }
                }
                6..=7 => {
                    n.ipam.free_all(now, &c);
                }
                _ => {
                    let base = u32::from(range().network());
                    let _ = n.ipam.claim(now, &c, ipnet::Ipv4Net::new((base + off).into(), 22).unwrap());
                }
            }
            n.drain(out);
        });
        // Let a little time pass: some messages land, others stay in flight.
        let ms = sim.rng().random_range(0..15);
        sim.run_for(Duration::from_millis(ms));
        if i % 10 == 0 {
            assert_no_duplicates(&sim, &format!("operation {i}"));
        }
    }
    sim.run_for(Duration::from_secs(20));
    assert_no_duplicates(&sim, "end");
    assert_holders_own(&sim, "end");
    assert!(rings_agree(&sim, &[0, 1, 2, 3, 4]), "seed {seed}");
    let completed: usize = (0..5).map(|p| sim.node(p).completions.len()).sum();
    eprintln!("{allocated} immediate allocations, {completed} completed later");
    assert!(allocated > 1000, "the allocators did allocate ({allocated})");
}

#[test]
fn concurrent_rmpeer_on_two_peers_never_duplicates() {
    for seed in 0..200u64 {
        let mut sim = cluster(seed, 5, |_| InitMode::Seeds((0..5).map(name).collect()));
        lossy(&mut sim, 0.02);
        for round in 0..40 {
            let p = sim.rng().random_range(0..5);
            sim.with_node(p, |n, now, out| {
                let _ = n.ipam.allocate(now, &format!("c{round}"), None);
                n.drain(out);
            });
            sim.run_for(Duration::from_millis(20));
        }
        let dead = sim.rng().random_range(0..5);
        sim.crash(dead);
        let others: Vec<usize> = (0..5).filter(|&p| p != dead).collect();
        for &p in &others {
            let reach = others.iter().filter(|&&q| q != p).map(|&q| name(q)).collect();
            sim.with_node(p, |n, now, out| {
                n.ipam.set_reachable(now, reach);
                n.drain(out);
            });
        }
        sim.run_for(Duration::from_secs(5));
        let (a, b) = (others[0], others[2]);
        let mut moved = Vec::new();
        for x in [a, b] {
            sim.with_node(x, |n, now, out| {
                moved.push(n.ipam.rmpeer(now, &[name(dead)]).unwrap());
                n.drain(out);
            });
        }
        assert_eq!(moved[0], moved[1], "seed {seed}: both runs see the same space");
        // Everyone keeps allocating while the two takeovers meet.
        for round in 0..40 {
            let p = others[sim.rng().random_range(0..others.len())];
            sim.with_node(p, |n, now, out| {
                let _ = n.ipam.allocate(now, &format!("d{round}"), None);
                n.drain(out);
            });
            sim.run_for(Duration::from_millis(10));
            assert_no_duplicates(&sim, &format!("seed {seed} after rmpeer, round {round}"));
        }
        sim.run_for(Duration::from_secs(10));
        assert_no_duplicates(&sim, &format!("seed {seed} end"));
        assert!(rings_agree(&sim, &others), "seed {seed}");
        assert_holders_own(&sim, &format!("seed {seed} end"));
        assert!(sim.node(a).ipam.ring().entries().iter().all(|e| e.peer != name(dead)), "seed {seed}: dead peer owns nothing");
    }
}
