//! weaveDNS: container names replicated over the mesh, answered by an
//! embedded DNS server.
//!
//! * [`store`]: the replicated entries (a CRDT written only by each entry's
//!   origin peer).
//! * [`dns`]: one peer's DNS state, sans-IO.
//! * [`wire`]: the gossip messages.
//! * [`channel`]: weaveDNS riding a weave-gossip channel.
//! * [`answer`]: the DNS answer core (hickory-proto messages, sans-IO).
//! * [`server`]: UDP and TCP serving, forwarding, resolv.conf, loop guard.
//! * [`resolv`]: the resolver file of a container attached by netns name.

pub mod answer;
#[cfg(feature = "tokio")]
#[allow(unsafe_code)]
mod batch;
pub mod channel;
pub mod dns;
pub mod resolv;
#[cfg(feature = "tokio")]
pub mod server;
#[cfg(feature = "tokio")]
pub mod service;
pub mod store;
pub mod wire;

pub use dns::{Dns, DnsError, WallClock};
pub use weave_gossip::identity::{Identity, PeerKey};
