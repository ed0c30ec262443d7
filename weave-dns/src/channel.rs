//! weaveDNS as a weave-gossip [`Channel`]: entries ride gossip (merged hop
//! by hop, only news relayed, full state on every new connection and
//! periodically); a peer leaving the topology drops its entries.
//!
//! The channel owns the [`Dns`] state; add and remove run inside the node
//! ([`weave_gossip::Node::with_channel`], or
//! [`crate::service::DnsService`] over the tokio driver). Readers — the DNS
//! server, status — look names up in [`Names`], a copy the channel
//! publishes after every change, so a query never waits for the mesh.
//! Registered as a persistent channel, our own names are saved after every
//! local change before the change is gossiped: they come back after a
//! restart ([`Dns::restore_own`]).

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use weave_core::PeerName;
use weave_gossip::channel::{BoxError, Channel, Output};

use crate::dns::{Dns, DnsError};

/// The channel name weaveDNS uses.
pub const CHANNEL: &str = "dns";

/// The names as of the last change, for readers on other tasks. Cheap to
/// clone; every clone sees the latest copy.
#[derive(Clone, Debug)]
pub struct Names(Arc<RwLock<Arc<Dns>>>);

impl Names {
    /// A view of `dns` as it is now. A [`DnsChannel`] keeps its own view
    /// current; one made here stays as it is (tests, benchmarks).
    pub fn new(dns: &Dns) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(dns.clone()))))
    }

    /// The state as of the last change (lookups, reverse lookups, status).
    pub fn current(&self) -> Arc<Dns> {
        self.0.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Live addresses for `name`.
    pub fn lookup(&self, name: &str) -> Vec<std::net::Ipv4Addr> {
        self.current().lookup(name)
    }

    fn publish(&self, dns: &Dns) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(dns.clone());
    }
}

/// One peer's weaveDNS on the mesh.
pub struct DnsChannel {
    dns: Dns,
    names: Names,
    /// Grows with every local change (what must be saved).
    generation: u64,
    /// Whether readers' copy is out of date.
    stale: bool,
    /// The time of the latest input (entries are stamped with it).
    now: Instant,
    /// The generation last saved.
    saved: u64,
    /// Whom to tell once a generation is saved.
    waiters: std::collections::VecDeque<(u64, Saved)>,
}

/// Called once a local change is saved.
pub type Saved = Box<dyn FnOnce() + Send>;

impl std::fmt::Debug for DnsChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsChannel").field("generation", &self.generation).field("saved", &self.saved).finish_non_exhaustive()
    }
}

impl DnsChannel {
    /// weaveDNS as it is now (new, or with [`Dns::restore_own`] applied).
    pub fn new(dns: Dns, now: Instant) -> Self {
        let names = Names::new(&dns);
        Self { dns, names, generation: 0, stale: false, now, saved: 0, waiters: std::collections::VecDeque::new() }
    }

    /// Call `done` once every local change so far is saved (at once if it
    /// is).
    pub fn when_saved(&mut self, done: Saved) {
        if self.generation <= self.saved {
            done();
        } else {
            self.waiters.push_back((self.generation, done));
        }
    }

    /// The state, to inspect.
    pub fn dns(&self) -> &Dns {
        &self.dns
    }

    /// The readers' view (kept current by the channel).
    pub fn names(&self) -> Names {
        self.names.clone()
    }

    /// `name` → each of `addrs`, for `container`.
    pub fn add(&mut self, now: Instant, container: &str, name: &str, addrs: &[std::net::Ipv4Addr]) -> Result<(), DnsError> {
        self.now = now;
        let r = addrs.iter().try_for_each(|a| self.dns.add(now, name, *a, container));
        self.changed_locally();
        r
    }

    /// Remove `container`'s names (only `name`, only `addrs`, if given);
    /// returns how many.
    pub fn remove(&mut self, now: Instant, container: &str, name: Option<&str>, addrs: &[std::net::Ipv4Addr]) -> Result<usize, DnsError> {
        self.now = now;
        let mut n = 0;
        if addrs.is_empty() {
            n += self.dns.remove(now, container, name, None)?;
        }
        for a in addrs {
            n += self.dns.remove(now, container, name, Some(*a))?;
        }
        if n > 0 {
            self.changed_locally();
        }
        Ok(n)
    }

    fn changed_locally(&mut self) {
        self.generation += 1;
        self.stale = true;
    }
}

impl Channel for DnsChannel {
    fn on_gossip(&mut self, now: Instant, src: PeerName, update: &[u8]) -> Result<Option<Vec<u8>>, BoxError> {
        self.now = now;
        let relay = self.dns.handle_gossip(now, src, update)?;
        self.stale |= relay.is_some();
        Ok(relay)
    }

    fn on_broadcast(&mut self, now: Instant, src: PeerName, data: &[u8]) -> Result<(), BoxError> {
        self.on_gossip(now, src, data).map(drop)
    }

    fn on_unicast(&mut self, now: Instant, src: PeerName, data: &[u8]) -> Result<(), BoxError> {
        self.on_gossip(now, src, data).map(drop)
    }

    fn full_state(&mut self, now: Instant) -> Vec<Vec<u8>> {
        self.dns.full_state(now)
    }

    fn digest_state(&mut self, _now: Instant) -> Vec<Vec<u8>> {
        vec![self.dns.entries_state()]
    }

    fn on_peer_removed(&mut self, peer: PeerName) {
        self.dns.peer_gone(peer);
        self.stale = true;
    }

    fn on_peer_added(&mut self, peer: PeerName, key: weave_gossip::PeerKey) {
        self.dns.peer_back(self.now, peer, key);
        self.stale = true;
    }

    fn poll_output(&mut self) -> Option<Output> {
        if std::mem::take(&mut self.stale) {
            self.names.publish(&self.dns);
        }
        self.dns.poll_gossip().map(Output::Gossip)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Some(self.dns.poll_timeout())
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        self.dns.handle_timeout(now);
        self.stale = true;
    }

    fn generation(&self) -> u64 {
        self.generation
    }

    fn snapshot(&mut self) -> Vec<u8> {
        self.dns.save_own(self.now)
    }

    fn on_saved(&mut self, _now: Instant, generation: u64) {
        self.saved = self.saved.max(generation);
        while self.waiters.front().is_some_and(|(g, _)| *g <= self.saved) {
            let (_, done) = self.waiters.pop_front().expect("checked");
            done();
        }
    }
}
