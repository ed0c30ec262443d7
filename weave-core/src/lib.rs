//! Shared building blocks of the weave overlay SDK.
//!
//! * [`PeerName`], [`PeerUid`]: the identity of a router in the mesh.
//! * [`time`] and [`rng`]: the seams through which sans-IO cores get time and
//!   randomness. Cores never read a clock or an OS RNG themselves: time is an
//!   argument (`now`), randomness is an injected, seedable generator.
//! * [`fs::write_atomically`]: how state files are written.
//! * `control` (feature `control`): the router's gRPC control API, its
//!   generated types and a client over the control socket.
//! * `sim` (feature `testing`): a deterministic multi-node network simulation
//!   with a seeded event queue, per-link latency, loss, reordering and
//!   partitions, and virtual time.

#[cfg(feature = "control")]
pub mod control;
pub mod fs;
pub mod peer;
pub mod rng;
#[cfg(feature = "testing")]
pub mod sim;
pub mod time;

pub use peer::{PeerName, PeerNameParseError, PeerUid};
