//! IPAM on a weave-gossip channel: ring and consensus state ride gossip
//! (merged hop by hop, only news relayed), space and claim requests ride
//! routed unicast.
//!
//! Register [`IpamChannel`] on the mesh under [`CHANNEL`]; after every call
//! into the mesh or the IPAM, run [`pump`] to move what the IPAM wants sent
//! into the mesh and to tell it which peers are reachable.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use weave_core::PeerName;
use weave_gossip::mesh::{Gossiper, Mesh};

use crate::ipam::{Ipam, Output};

/// The channel name IPAM uses.
pub const CHANNEL: &str = "ipam";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the driver has saved: the only IPAM state others may hear of.
#[derive(Debug, Default)]
pub struct Durable {
    /// The [`Ipam::generation`] last saved.
    pub generation: u64,
    /// The gossip state as of that save ([`Ipam::full_state`]), served as
    /// the channel's anti-entropy.
    pub state: Option<Vec<u8>>,
}

/// The IPAM on a gossip channel, shared between the mesh (which delivers)
/// and the driver (which allocates, saves and sends).
#[derive(Clone)]
pub struct IpamChannel {
    ipam: Arc<Mutex<Ipam>>,
    durable: Option<Arc<Mutex<Durable>>>,
    wake: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for IpamChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpamChannel").field("persistent", &self.durable.is_some()).finish_non_exhaustive()
    }
}

impl IpamChannel {
    /// Without persistence: what a merge changed is relayed at once and
    /// anti-entropy carries the current state (simulations, tests).
    pub fn new(ipam: Arc<Mutex<Ipam>>) -> Self {
        Self { ipam, durable: None, wake: None }
    }

    /// With persistence: the channel only merges, and calls `wake` so the
    /// driver saves; what changed leaves through [`Ipam::poll_output`] once
    /// the driver has saved it, and anti-entropy carries the last saved
    /// state. Nothing a peer hears (a vote, a donation, a grant) can be
    /// lost by a crash.
    pub fn persistent(ipam: Arc<Mutex<Ipam>>, durable: Arc<Mutex<Durable>>, wake: Arc<dyn Fn() + Send + Sync>) -> Self {
        Self { ipam, durable: Some(durable), wake: Some(wake) }
    }

    fn ipam(&self) -> std::sync::MutexGuard<'_, Ipam> {
        // A panic elsewhere must not wedge address management.
        self.ipam.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wake(&self) {
        if let Some(w) = &self.wake {
            w();
        }
    }
}

impl Gossiper for IpamChannel {
    fn on_gossip(&mut self, now: Instant, src: PeerName, update: &[u8]) -> Result<Option<Vec<u8>>, BoxError> {
        let relay = self.ipam().handle_gossip(now, src, update)?;
        self.wake();
        // Persistent: the change leaves as an output, after the save.
        Ok(if self.durable.is_some() { None } else { relay })
    }

    fn on_broadcast(&mut self, now: Instant, src: PeerName, data: &[u8]) -> Result<(), BoxError> {
        self.ipam().handle_gossip(now, src, data)?;
        self.wake();
        Ok(())
    }

    fn on_unicast(&mut self, now: Instant, src: PeerName, data: &[u8]) -> Result<(), BoxError> {
        self.ipam().handle_unicast(now, src, data)?;
        self.wake();
        Ok(())
    }

    fn full_state(&mut self, _now: std::time::Instant) -> Vec<Vec<u8>> {
        match &self.durable {
            Some(d) => d.lock().unwrap_or_else(PoisonError::into_inner).state.clone().into_iter().collect(),
            None => vec![self.ipam().full_state()],
        }
    }
}

/// Move the IPAM's outgoing messages into the mesh and refresh its view of
/// which peers are reachable. Returns how many messages were handed over.
pub fn pump(ipam: &Mutex<Ipam>, mesh: &mut Mesh) -> usize {
    let mut ipam = ipam.lock().unwrap_or_else(PoisonError::into_inner);
    let me = mesh.name();
    let names: Vec<PeerName> = mesh.topology().records().map(|r| r.name).filter(|&p| p != me).collect();
    let routes = mesh.routes();
    ipam.set_reachable(names.into_iter().filter(|&p| routes.reachable(p)).collect());
    let mut n = 0;
    while let Some(o) = ipam.poll_output() {
        n += 1;
        let r = match o {
            Output::Gossip(b) => mesh.gossip(CHANNEL, b),
            Output::Unicast(p, b) => mesh.unicast(CHANNEL, p, b),
        };
        // Unroutable now: IPAM retries pending requests on its own.
        let _ = r;
    }
    n
}
