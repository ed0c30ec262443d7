//! The data plane: how frames get from a container on one host to a
//! container on another, as if they shared one switch.
//!
//! - [`Dataplane`]: the seam the router drives (connections up and down,
//!   routes); [`MemDataplane`] and [`Faulty`] for tests.
//! - [`sleeve`]: the userspace sleeve's sans-IO core (datagram format,
//!   per-connection AEAD with a replay window, path-MTU handling, MAC
//!   learning and forwarding along the mesh's routes). Its wire format,
//!   AEAD and frame parsing are internal (public with the `internals`
//!   feature, for fuzzing).
//! - With the `linux` feature: [`netlink`] (bridge, veth, VXLAN, FDB and
//!   address plumbing inside any namespace), [`expose`] (host access with
//!   masquerading, and reset), [`firewall`] (forwarding through the bridge
//!   on hosts whose firewall drops it, as Docker's does), [`sleeve_driver`] (TAP + UDP
//!   worker threads), [`fastpath`] (kernel VXLAN with per-peer fallback to
//!   the sleeve) and [`follow_mesh`] (wiring a data plane to the mesh).
// The sleeve's wire format, AEAD and frame parsing, and the system-call
// layer, are internals: public only with the `internals` feature (fuzz
// targets, tests), with no stability promise.
#[cfg(feature = "internals")]
pub mod crypto;
#[cfg(not(feature = "internals"))]
#[allow(unreachable_pub)]
mod crypto;
pub mod dataplane;
#[cfg(feature = "internals")]
pub mod packet;
#[cfg(not(feature = "internals"))]
#[allow(unreachable_pub)]
mod packet;
pub mod sleeve;
#[cfg(feature = "internals")]
pub mod wire;
#[cfg(not(feature = "internals"))]
#[allow(unreachable_pub)]
mod wire;

#[cfg(feature = "linux")]
pub mod expose;
#[cfg(feature = "linux")]
pub mod fastpath;
#[cfg(feature = "linux")]
pub mod firewall;
#[cfg(feature = "linux")]
mod glue;
#[cfg(feature = "linux")]
pub mod netlink;
#[cfg(feature = "linux")]
pub mod sleeve_driver;
#[cfg(all(feature = "linux", feature = "internals"))]
pub mod sys;
#[cfg(all(feature = "linux", not(feature = "internals")))]
#[allow(unreachable_pub, dead_code)]
mod sys;

pub use dataplane::{Dataplane, DataplaneError, Faults, Faulty, MemDataplane, MemNet};
#[cfg(feature = "linux")]
pub use glue::follow_mesh;
pub use packet::Mac;
pub use sleeve::{DropReason, FallbackReason, PeerPath, Sleeve, SleeveConfig};

/// The overlay MTU Weave uses by default: 1500 less the sleeve's and
/// VXLAN's overheads with room to spare.
pub const DEFAULT_MTU: u32 = 1376;

/// The overlay MTU when only the sleeve carries frames (as Weave with no
/// fast path): containers on one host exchange 64 KiB frames, and the
/// sleeve fits the rest to each path (ICMP "fragmentation needed" for DF
/// packets, IP fragments otherwise). Weave's is 65535, its sleeve captures
/// from a veth; the sleeve's TAP device here takes at most 65535 less its
/// Ethernet header, and every bridge port must take what the bridge does
/// (a larger frame would be dropped on the way to the sleeve, unanswered).
pub const SLEEVE_ONLY_MTU: u32 = 65521;

/// A plumbing failure: what was being done, and the kernel's answer.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {source}")]
pub struct PlumbError {
    /// The operation, e.g. `create bridge weave`.
    pub op: String,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}
