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

/// The IPAM, shared between the mesh (which delivers) and the router
/// (which allocates).
#[derive(Clone)]
pub struct IpamChannel(pub Arc<Mutex<Ipam>>);

impl IpamChannel {
    fn ipam(&self) -> std::sync::MutexGuard<'_, Ipam> {
        // A panic elsewhere must not wedge address management.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Gossiper for IpamChannel {
    fn on_gossip(&mut self, now: Instant, src: PeerName, update: &[u8]) -> Result<Option<Vec<u8>>, BoxError> {
        Ok(self.ipam().handle_gossip(now, src, update)?)
    }

    fn on_broadcast(&mut self, now: Instant, src: PeerName, data: &[u8]) -> Result<(), BoxError> {
        self.ipam().handle_gossip(now, src, data)?;
        Ok(())
    }

    fn on_unicast(&mut self, now: Instant, src: PeerName, data: &[u8]) -> Result<(), BoxError> {
        Ok(self.ipam().handle_unicast(now, src, data)?)
    }

    fn full_state(&mut self, _now: std::time::Instant) -> Vec<Vec<u8>> {
        vec![self.ipam().full_state()]
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
