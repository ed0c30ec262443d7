//! weaveDNS on a weave-gossip channel: entries ride gossip (merged hop by
//! hop, only news relayed, full state on every new connection and
//! periodically); a peer leaving the topology drops its entries.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use weave_core::PeerName;
use weave_gossip::mesh::{Gossiper, Mesh};

use crate::dns::Dns;

/// The channel name weaveDNS uses.
pub const CHANNEL: &str = "dns";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The DNS state, shared between the mesh and the router / DNS server.
#[derive(Clone)]
pub struct DnsChannel(pub Arc<Mutex<Dns>>);

impl DnsChannel {
    fn dns(&self) -> std::sync::MutexGuard<'_, Dns> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Gossiper for DnsChannel {
    fn on_gossip(&mut self, now: Instant, src: PeerName, update: &[u8]) -> Result<Option<Vec<u8>>, BoxError> {
        Ok(self.dns().handle_gossip(now, src, update)?)
    }

    fn on_broadcast(&mut self, now: Instant, src: PeerName, data: &[u8]) -> Result<(), BoxError> {
        self.dns().handle_gossip(now, src, data)?;
        Ok(())
    }

    fn on_unicast(&mut self, now: Instant, src: PeerName, data: &[u8]) -> Result<(), BoxError> {
        self.dns().handle_gossip(now, src, data)?;
        Ok(())
    }

    fn full_state(&mut self, now: Instant) -> Vec<Vec<u8>> {
        self.dns().full_state(now)
    }

    fn on_peer_removed(&mut self, peer: PeerName) {
        self.dns().peer_gone(peer);
    }

    fn on_peer_added(&mut self, peer: PeerName) {
        self.dns().peer_back(peer);
    }
}

/// Gossip what the DNS changed locally. Returns how many deltas were sent.
pub fn pump(dns: &Mutex<Dns>, mesh: &mut Mesh) -> usize {
    let mut dns = dns.lock().unwrap_or_else(PoisonError::into_inner);
    let mut n = 0;
    while let Some(delta) = dns.poll_gossip() {
        n += 1;
        // Too large cannot happen for one delta; nothing else can fail.
        let _ = mesh.gossip(CHANNEL, delta);
    }
    n
}
