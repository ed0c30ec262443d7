//! Benchmarks, as binaries that print their figures:
//!
//! * `ipam`: allocations per second from local space, and time to the first
//!   allocation in a 100-peer simulated cluster.
//! * `dns`: queries per second for local names, weaveDNS against dnsmasq
//!   serving the same names from a hosts file, in the same run.
//! * `scale`: N real routers in network namespaces on one underlay: launch
//!   time, time to full mesh, memory and idle cost ([`scale`]).
//!
//! Run with `cargo run --release -p weave-benches --bin <name>`.

pub mod scale;
