//! The reference router, the `weave` CLI and examples for embedders.
//!
//! * `src/bin/mesh-crdt.rs`: three mesh peers on loopback gossiping a
//!   grow-only counter over a custom channel.

pub mod control;
pub mod router;
pub mod http;
pub mod docker;
pub mod plugin;
pub mod cni;
