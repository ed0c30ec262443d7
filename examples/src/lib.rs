//! The reference router, the `weave` CLI and examples for embedders.
//!
//! * `src/bin/mesh-crdt.rs`: three mesh peers on loopback gossiping a
//!   grow-only counter over a custom channel.

pub mod cni;
pub mod control;
pub mod docker;
pub mod http;
pub mod memory;
pub mod plugin;
pub mod proxy;
pub mod router;
