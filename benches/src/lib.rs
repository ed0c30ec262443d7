//! Benchmarks, as binaries that print their figures:
//!
//! * `ipam`: allocations per second from local space, and time to the first
//!   allocation in a 100-peer simulated cluster.
//!
//! Run with `cargo run --release -p weave-benches --bin <name>`.
