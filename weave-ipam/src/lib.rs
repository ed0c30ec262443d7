//! IPAM for the weave overlay: every container gets an address no other
//! container anywhere has, with no central allocator.
//!
//! * [`ring`]: the CRDT dividing the range among peers.
//! * [`paxos`]: consensus on the initial division, as gossiped state.
//! * [`ipam`]: one peer's allocator, claims, donation, rmpeer and hand-off.
//! * [`wire`]: the messages on the IPAM gossip channel.
//! * [`channel`]: IPAM riding a weave-gossip channel.
//! * [`persist`]: IPAM state on disk (redb).

pub mod auth;
pub mod channel;
pub mod ipam;
pub mod paxos;
pub mod persist;
pub mod ring;
#[cfg(feature = "tokio")]
pub mod service;
#[cfg(feature = "testing")]
pub mod sim;
pub mod wire;

pub use ipam::{Completion, InitMode, Ipam, IpamConfig, IpamError, IpamStatus, Outcome, Output};
pub use weave_gossip::identity::{Identity, PeerKey};
