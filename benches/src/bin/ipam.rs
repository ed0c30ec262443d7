//! IPAM benchmark: how fast a peer allocates from space it owns, and how
//! long a 100-peer cluster takes from its first request to its first
//! address (consensus on the initial division included), in simulated time
//! over links with 1–20 ms latency.
//!
//! `cargo run --release -p weave-benches --bin ipam`

use std::time::{Duration, Instant};

use weave_core::sim::{LinkConfig, Sim};
use weave_core::PeerName;
use weave_ipam::sim::{cluster, Node};
use weave_ipam::{Completion, InitMode, Ipam, IpamConfig, Outcome};

fn local_allocations(n: usize) -> (f64, f64) {
    let me = PeerName::from_u64(1).expect("small");
    let mut ipam = Ipam::new(IpamConfig::new(
        weave_ipam::Identity::from_secret([me.as_u64() as u8; 32]),
        me,
        "10.32.0.0/12".parse().expect("valid"),
        InitMode::Seeds(vec![me]),
    ))
    .expect("valid");
    let now = Instant::now();
    ipam.prime(now);
    let names: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    let t = Instant::now();
    for c in &names {
        let r = ipam.allocate(now, c, None).expect("in range");
        assert!(matches!(r, Outcome::Done(_)));
    }
    let alloc_rate = n as f64 / t.elapsed().as_secs_f64();
    // Churn: free one, allocate another (reusing the lowest freed address).
    let t = Instant::now();
    for (i, c) in names.iter().enumerate() {
        ipam.free_all(now, c);
        ipam.allocate(now, &format!("d{i}"), None).expect("in range");
    }
    let churn_rate = n as f64 / t.elapsed().as_secs_f64();
    (alloc_rate, churn_rate)
}

fn first_allocation(peers: usize, seed: u64) -> (Duration, Duration) {
    let wall = Instant::now();
    let mut sim: Sim<Node> = cluster(seed, peers, |_| InitMode::Consensus { quorum: peers / 2 + 1 });
    sim.set_default_link(LinkConfig { latency_min: Duration::from_millis(1), latency_max: Duration::from_millis(20), loss: 0.0, reorder: true });
    let begin = sim.now();
    let r = sim.with_node(0, |n, now, out| {
        let r = n.ipam.allocate(now, "first", None).expect("in range");
        n.drain(out);
        r
    });
    assert!(matches!(r, Outcome::Pending(_)), "needs consensus first");
    let took = sim
        .run_until_true(Duration::from_secs(120), Duration::from_millis(5), |s| s.node(0).completions.iter().any(|c| matches!(c, Completion::Done(..))))
        .expect("the first allocation completes");
    let _ = begin;
    (took, wall.elapsed())
}

fn main() {
    let n = 200_000;
    let (alloc_rate, churn_rate) = local_allocations(n);
    println!("local space, {n} containers:");
    println!("  allocate            {alloc_rate:>12.0} allocations/s");
    println!("  free + allocate     {churn_rate:>12.0} pairs/s");
    println!();
    println!("{:>6} {:>28} {:>16}", "peers", "first allocation (sim time)", "wall time");
    for peers in [10, 100] {
        let (took, wall) = first_allocation(peers, 1);
        println!("{peers:>6} {:>25.1} ms {:>13.2} s", took.as_secs_f64() * 1e3, wall.as_secs_f64());
    }
}
