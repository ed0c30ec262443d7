//! The weave mesh.
//!
//! Routers on many hosts find each other, agree on the topology, route
//! through each other, and carry other subsystems' replicated data over
//! gossip channels — with no central store.
//!
//! The protocol logic is sans-IO: [`link::Link`] (one connection's
//! handshake and framing), [`mesh::Mesh`] (topology, routes, channels,
//! heartbeats) and [`connmaker::ConnectionMaker`] (whom to dial, when) take
//! `now` and bytes or messages as input and hand back what to send and when
//! to wake them. [`node::Node`] composes them with any number of
//! [`channel::Channel`]s (IPAM, weaveDNS, an embedder's own) and the
//! persistence point between them; the `tokio` feature's `driver` (a thin
//! TCP driver) and the `testing` feature's `sim` (weave-core's
//! deterministic simulation) both drive that one `Node`.

pub mod channel;
pub mod connmaker;
pub mod crypto;
#[cfg(feature = "tokio")]
pub mod driver;
pub mod frame;
#[cfg(all(feature = "testing", feature = "tokio"))]
pub mod hostile;
pub mod identity;
pub mod link;
pub mod mesh;
pub mod node;
pub mod proto;
pub mod routes;
#[cfg(feature = "testing")]
pub mod sim;
pub mod topology;

pub use channel::{Channel, Output};
pub use crypto::{DataKeys, Psk};
pub use identity::{Identity, PeerKey};
pub use link::{Established, Link, LinkConfig, LinkError, LocalFeatures, Role};
pub use mesh::{Mesh, MeshConfig, MeshEvent, MeshLoad};
pub use node::{Action, Node, Persist};
