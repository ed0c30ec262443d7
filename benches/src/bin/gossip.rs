//! What one router pays while a full mesh of N forms. Round by round a new
//! peer joins and links to every peer, so every peer's record gains a link
//! and each sends its new version to us, straight from its owner, as a
//! forming mesh does. A real [`Mesh`] (no I/O) takes the encoded messages,
//! one peer's record per window share, runs its timers and sends ours; the
//! table gives the CPU time per version received (decoding and the
//! signature check apart, for whole records), the CPU a router spends per
//! second at that rate, what it sends, and the heap the mesh holds at the
//! end (its live allocations, counted by an instrumented allocator: the
//! topology of the full mesh and the state of N - 1 connections; sockets,
//! buffers and the data plane are not in it). "record" is the first
//! protocol version (every version in full), "delta" the second (changes
//! only).
//!
//! `cargo build --release -p weave-benches --bin gossip && target/release/gossip [N...]`
//! (default N = 50 100 200).

use std::alloc::System;
use std::time::{Duration, Instant};

use prost::Message;
use weave_core::rng::seeded;
use weave_core::{PeerName, PeerUid};
use weave_gossip::identity::Identity;
use weave_gossip::mesh::{Mesh, MeshConfig, RemotePeer, UPDATE_DELAY_PER_CONN};
use weave_gossip::proto::{Body, Envelope, TopologyUpdate};
use weave_gossip::topology::{ConnectionInfo, PeerRecord, Topology};

#[global_allocator]
static GLOBAL: &stats_alloc::StatsAlloc<System> = &stats_alloc::INSTRUMENTED_SYSTEM;

/// Live heap: bytes and allocations.
fn live() -> (isize, isize) {
    let s = GLOBAL.stats();
    let bytes = s.bytes_allocated as isize - s.bytes_deallocated as isize + s.bytes_reallocated;
    (bytes, s.allocations as isize - s.deallocations as isize)
}

/// Versions of every peer's record fed in.
const ROUNDS: u64 = 20;

fn name(i: u64) -> PeerName {
    PeerName::from_u64(i).expect("small")
}

fn address(i: u64) -> String {
    format!("10.32.{}.{}:6783", i / 250, i % 250 + 1)
}

struct Row {
    n: u64,
    deltas: bool,
    per_version_us: f64,
    decode_us: f64,
    check_us: f64,
    bytes_per_version: usize,
    cpu_ms_per_s: f64,
    sent_kb_per_s: f64,
    /// The mesh's live heap at the end: bytes, allocations.
    heap: (isize, isize),
}

fn remote(p: u64, version: u8) -> RemotePeer {
    RemotePeer { name: name(p), nickname: format!("h{p}"), uid: PeerUid::new(p).expect("nonzero"), conn_id: p, address: address(p), outbound: true, version }
}

fn run(n: u64, deltas: bool) -> Row {
    let mut rng = seeded(n);
    let start = Instant::now();
    let me = name(1);
    let mut cfg = MeshConfig::new(me, "bench", PeerUid::new(1).expect("nonzero"));
    cfg.identity = Some(Identity::generate(&mut rng));
    let mut mesh = Mesh::new(cfg, start, seeded(n + 1));
    let version = if deltas { weave_gossip::link::PROTOCOL_MAX } else { 1 };
    // Peers up to `base` are linked with each other and us from the start;
    // round r brings in peer base + r, which links to every peer before it,
    // so every peer's record gains one link, its own included.
    let base = n - ROUNDS;
    let mut owners: Vec<(u64, Topology)> =
        (2..=n).map(|p| (p, Topology::new(Identity::generate(&mut rng), name(p), format!("h{p}"), PeerUid::new(p).expect("nonzero")))).collect();
    let lists = |p: u64, upto: u64| -> Vec<ConnectionInfo> {
        (1..=upto).filter(|&q| q != p).map(|q| ConnectionInfo { peer: name(q), address: address(q), outbound: q < p, established: true }).collect()
    };
    let mut rounds: Vec<Vec<(u64, Vec<u8>)>> = Vec::new();
    for upto in base..=n {
        let mut msgs = Vec::new();
        for (p, topo) in owners.iter_mut().filter(|(p, _)| *p <= upto) {
            assert!(topo.set_our_connections(lists(*p, upto)));
            let version = topo.our_record().version;
            let update = match topo.delta_since(name(*p), version - 1).filter(|_| deltas) {
                Some(d) => TopologyUpdate { records: Vec::new(), deltas: vec![d] },
                None => TopologyUpdate { records: vec![topo.our_record().to_msg()], deltas: Vec::new() },
            };
            msgs.push((*p, Envelope::from(Body::Update(update)).encode_to_vec()));
        }
        rounds.push(msgs);
    }
    // The starting mesh, in full.
    let mut now = start;
    for p in 2..=base {
        mesh.add_connection(now, p, remote(p, version)).expect("distinct peers");
    }
    for (p, bytes) in &rounds[0] {
        mesh.handle_message(now, *p, Envelope::decode(bytes.as_slice()).expect("encoded above")).expect("valid records");
    }
    now += Duration::from_secs(5);
    mesh.handle_timeout(now);
    while mesh.poll_transmit().is_some() {}
    while mesh.poll_event().is_some() {}
    let bytes_per_version = rounds[1].iter().map(|(_, b)| b.len()).sum::<usize>() / rounds[1].len();

    // The whole path, at the rate a forming mesh produces: each peer's
    // record once per its update window, and ours too.
    let window = UPDATE_DELAY_PER_CONN * u32::try_from(n - 1).expect("small");
    let t0 = Instant::now();
    let mut received = 0u64;
    let mut sent = 0usize;
    for (r, msgs) in rounds.iter().enumerate().skip(1) {
        let joiner = base + r as u64;
        mesh.add_connection(now, joiner, remote(joiner, version)).expect("a new peer");
        let gap = window / u32::try_from(msgs.len()).expect("small");
        for (p, bytes) in msgs {
            let env = Envelope::decode(bytes.as_slice()).expect("encoded above");
            mesh.handle_message(now, *p, env).expect("valid records");
            received += 1;
            now += gap;
            if mesh.poll_timeout().is_some_and(|t| t <= now) {
                mesh.handle_timeout(now);
            }
            while let Some(t) = mesh.poll_transmit() {
                sent += std::hint::black_box(t.msg.encode_to_vec()).len();
            }
            while mesh.poll_event().is_some() {}
        }
    }
    let total = t0.elapsed();
    assert_eq!(mesh.topology().get(name(n)).map(|r| r.connections.len()), Some(n as usize - 1), "every version was taken");
    let per_version_us = total.as_secs_f64() * 1e6 / received as f64;
    let simulated = window.as_secs_f64() * ROUNDS as f64;
    let sent_per_s = sent as f64 / simulated;

    // Its parts, on the same messages: decoding alone, and decoding with
    // the validity and signature check.
    let t1 = Instant::now();
    for msgs in &rounds[1..] {
        for (_, bytes) in msgs {
            std::hint::black_box(Envelope::decode(bytes.as_slice()).expect("encoded above"));
        }
    }
    let decode_us = t1.elapsed().as_secs_f64() * 1e6 / received as f64;
    let t2 = Instant::now();
    for msgs in &rounds[1..] {
        for (_, bytes) in msgs {
            let Some(Body::Update(u)) = Envelope::decode(bytes.as_slice()).expect("encoded above").body else { unreachable!() };
            for m in u.records {
                assert!(PeerRecord::from_msg(m).expect("valid").verify());
            }
            // A delta's check needs the version before it: part of the
            // whole path above, not measured apart.
        }
    }
    let check_us = if deltas { f64::NAN } else { t2.elapsed().as_secs_f64() * 1e6 / received as f64 - decode_us };
    let with_mesh = live();
    drop(mesh);
    let heap = (with_mesh.0 - live().0, with_mesh.1 - live().1);
    Row {
        n,
        deltas,
        per_version_us,
        decode_us,
        check_us,
        bytes_per_version,
        cpu_ms_per_s: total.as_secs_f64() * 1e3 / simulated,
        sent_kb_per_s: sent_per_s / 1e3,
        heap,
    }
}

fn main() {
    let ns: Vec<u64> = std::env::args().skip(1).map(|a| a.parse().expect("N is a number")).collect();
    let ns = if ns.is_empty() { vec![50, 100, 200] } else { ns };
    println!("| N | sent as | bytes per version | µs per version received | of which decode | of which check | CPU ms per s, one router (every peer's version once per window) | kB/s sent | mesh heap MB (allocations) |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for n in ns {
        for deltas in [false, true] {
            let r = run(n, deltas);
            println!(
                "| {} | {} | {} | {:.1} | {:.1} | {} | {:.1} | {:.0} | {:.2} ({}) |",
                r.n,
                if r.deltas { "delta" } else { "record" },
                r.bytes_per_version,
                r.per_version_us,
                r.decode_us,
                if r.check_us.is_nan() { "—".to_owned() } else { format!("{:.1}", r.check_us) },
                r.cpu_ms_per_s,
                r.sent_kb_per_s,
                r.heap.0 as f64 / 1e6,
                r.heap.1
            );
        }
    }
}
