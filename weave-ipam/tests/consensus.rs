//! Seeded consensus simulations: many random models of 10 nodes over lossy,
//! reordering links, with random subsets asking for an allocation at random
//! times. Each must end with one ring everywhere it was decided — never two.

use std::collections::BTreeSet;
use std::time::Duration;

use rand::Rng;
use weave_ipam::InitMode;

use weave_ipam::sim::*;

fn model(seed: u64) -> (usize, usize) {
    let n = 10;
    let mut sim = cluster(seed, n, |_| InitMode::Consensus { quorum: n / 2 + 1 });
    let loss = sim.rng().random_range(0.0..0.3);
    lossy(&mut sim, loss);
    // Some nodes start asking at random moments.
    let askers: Vec<usize> = (0..n).filter(|_| rand::Rng::random_bool(sim.rng(), 0.4)).collect();
    for &a in &askers {
        let delay = Duration::from_millis(sim.rng().random_range(0..2000));
        sim.run_for(delay / askers.len().max(1) as u32);
        sim.with_node(a, |node, now, out| {
            node.ipam.allocate(now, &format!("c{a}"), None).unwrap();
            node.drain(out);
        });
    }
    sim.run_for(Duration::from_secs(60));
    let seeds: BTreeSet<Vec<_>> = sim.nodes().filter(|(_, nd)| nd.ipam.ring().is_initialised()).map(|(_, nd)| nd.ipam.ring().seeds().to_vec()).collect();
    assert!(seeds.len() <= 1, "seed {seed}: two rings {seeds:?}");
    for (_, nd) in sim.nodes() {
        assert!(nd.errors.is_empty(), "seed {seed}: {:?}", nd.errors);
    }
    assert_no_duplicates(&sim, "consensus");
    let decided = sim.nodes().filter(|(_, nd)| nd.ipam.ring().is_initialised()).count();
    (decided, askers.len())
}

#[test]
fn a_thousand_lossy_models_never_produce_two_rings() {
    let base: u64 = std::env::var("WEAVE_SIM_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let models: u64 = std::env::var("WEAVE_IPAM_MODELS").ok().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let mut all_decided = 0;
    let mut with_askers = 0;
    for seed in base..base + models {
        let (decided, askers) = model(seed);
        if askers > 0 {
            with_askers += 1;
            if decided == 10 {
                all_decided += 1;
            }
        }
    }
    eprintln!("{all_decided} of {with_askers} models with an allocation reached one ring on all 10 nodes");
    // Liveness: with a quorum of 6 of 10 and up to 30 % loss nearly every
    // model decides within a minute of virtual time.
    assert!(all_decided * 100 >= with_askers * 95, "{all_decided} of {with_askers}");
}
