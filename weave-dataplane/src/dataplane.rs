//! The seam between the router and whatever carries frames: the
//! [`Dataplane`] trait, an in-memory implementation for tests
//! ([`MemDataplane`] on a [`MemNet`]), and a fault-injecting wrapper
//! ([`Faulty`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use rand::{Rng, SeedableRng};
use weave_core::PeerName;
use weave_gossip::{routes::Routes, DataKeys};

use crate::sleeve::{DropReason, PeerPath, Sleeve, SleeveConfig, TxQueue};

/// A data-plane operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// Netlink or device trouble.
    #[error(transparent)]
    Plumb(#[from] crate::PlumbError),
    /// Other I/O.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Injected by [`Faulty`].
    #[error("injected fault: {0}")]
    Injected(&'static str),
}

/// What carries frames between hosts. The router calls it as the mesh
/// changes; implementations decide how frames travel (sleeve, VXLAN, ...)
/// and report, per connection, which path is in use and why.
pub trait Dataplane: Send + Sync {
    /// Short name for status (`sleeve`, `fastdp`, `memory`).
    fn kind(&self) -> &'static str;
    /// A direct connection to `peer` was established; `remote` is its
    /// address as the mesh saw it, `keys` its per-connection data keys
    /// (with a password).
    fn connection_up(&self, peer: PeerName, remote: SocketAddr, outbound: bool, keys: Option<&DataKeys>) -> Result<(), DataplaneError>;
    /// The connection to `peer` ended.
    fn connection_down(&self, peer: PeerName);
    /// The mesh's routes changed.
    fn set_routes(&self, routes: &Routes);
    /// Each connection's path: which it is, whether it is up, and why.
    fn paths(&self) -> Vec<PeerPath>;
    /// Frames and datagrams dropped, by reason.
    fn drops(&self) -> Vec<(DropReason, u64)>;
    /// Times a connection fell back from a faster path, by reason.
    fn fallbacks(&self) -> Vec<(crate::FallbackReason, u64)> {
        Vec::new()
    }
    /// MAC addresses learnt behind other peers, with when they were last
    /// seen (for `weave report`).
    fn macs(&self) -> Vec<(crate::packet::Mac, PeerName, Instant)> {
        Vec::new()
    }
    /// Stop keeping kernel state in shape (e.g. recreating a deleted
    /// bridge) and carrying frames: the router is about to tear it down
    /// for good.
    fn retire(&self) {}
}

pub(crate) fn lock(core: &Mutex<Sleeve>) -> MutexGuard<'_, Sleeve> {
    core.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Connection bookkeeping shared by every sleeve-based data plane.
pub(crate) fn sleeve_connection_up(s: &mut Sleeve, peer: PeerName, remote: SocketAddr, outbound: bool, keys: Option<&DataKeys>) {
    let addr = if outbound { remote } else { s.guess_addr(remote) };
    s.add_peer(Instant::now(), peer, addr, keys);
}

/// A lossy, cuttable in-memory network of [`MemDataplane`]s.
#[derive(Debug)]
pub struct MemNet {
    inner: Mutex<MemNetInner>,
}

#[derive(Debug)]
struct MemNetInner {
    queues: HashMap<SocketAddr, VecDeque<(SocketAddr, Vec<u8>)>>,
    cut: HashSet<(SocketAddr, SocketAddr)>,
    loss: f64,
    mtu: Option<usize>,
    rng: rand::rngs::StdRng,
    /// Every datagram sent, for inspection (off unless enabled).
    capture: Option<Vec<Vec<u8>>>,
    /// With latency on, what was sent since the last [`MemNet::tick`].
    in_flight: Option<Vec<(SocketAddr, SocketAddr, Vec<u8>)>>,
}

impl MemNetInner {
    fn deliver(&mut self, from: SocketAddr, to: SocketAddr, data: Vec<u8>) {
        if let Some(q) = self.queues.get_mut(&to) {
            q.push_back((from, data));
        }
    }
}

impl MemNet {
    /// An empty network; `seed` drives loss.
    pub fn new(seed: u64) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(MemNetInner {
                queues: HashMap::new(),
                cut: HashSet::new(),
                loss: 0.0,
                mtu: None,
                rng: rand::rngs::StdRng::seed_from_u64(seed),
                capture: None,
                in_flight: None,
            }),
        })
    }

    fn inner(&self) -> MutexGuard<'_, MemNetInner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Drop this fraction of datagrams.
    pub fn set_loss(&self, loss: f64) {
        self.inner().loss = loss;
    }

    /// Silently drop datagrams longer than this (a path-MTU black hole).
    pub fn set_mtu(&self, mtu: Option<usize>) {
        self.inner().mtu = mtu;
    }

    /// Cut (or heal) both directions between two addresses.
    pub fn set_cut(&self, a: SocketAddr, b: SocketAddr, cut: bool) {
        let mut i = self.inner();
        for p in [(a, b), (b, a)] {
            if cut {
                i.cut.insert(p);
            } else {
                i.cut.remove(&p);
            }
        }
    }

    /// With `on`, a datagram arrives only at the next [`MemNet::tick`]
    /// (latency of one time step: two hosts that send at once both send
    /// before either hears the other); off, at once.
    pub fn set_latency(&self, on: bool) {
        let mut i = self.inner();
        if on {
            i.in_flight.get_or_insert_with(Vec::new);
        } else if let Some(held) = i.in_flight.take() {
            for (from, to, d) in held {
                i.deliver(from, to, d);
            }
        }
    }

    /// One time step passed: what was in flight arrives.
    pub fn tick(&self) {
        let mut i = self.inner();
        let held = i.in_flight.as_mut().map(std::mem::take).unwrap_or_default();
        for (from, to, d) in held {
            i.deliver(from, to, d);
        }
    }

    /// Start keeping a copy of every datagram (an underlay capture).
    pub fn capture(&self) {
        self.inner().capture = Some(Vec::new());
    }

    /// The datagrams captured so far.
    pub fn captured(&self) -> Vec<Vec<u8>> {
        self.inner().capture.clone().unwrap_or_default()
    }

    fn send(&self, from: SocketAddr, to: SocketAddr, data: &[u8]) {
        let mut i = self.inner();
        if let Some(c) = &mut i.capture {
            c.push(data.to_vec());
        }
        if i.cut.contains(&(from, to)) || data.is_empty() || i.mtu.is_some_and(|m| data.len() > m) {
            return;
        }
        let loss = i.loss;
        if loss > 0.0 && i.rng.random_bool(loss) {
            return;
        }
        match &mut i.in_flight {
            Some(f) => f.push((from, to, data.to_vec())),
            None => i.deliver(from, to, data.to_vec()),
        }
    }

    fn take(&self, at: SocketAddr) -> Vec<(SocketAddr, Vec<u8>)> {
        self.inner().queues.get_mut(&at).map(|q| q.drain(..).collect()).unwrap_or_default()
    }
}

/// A sleeve core on a [`MemNet`] instead of UDP, with an in-memory bridge:
/// frames go in with [`Self::send_frame`] and come out of
/// [`Self::take_delivered`]. Time is whatever the test passes.
pub struct MemDataplane {
    net: Arc<MemNet>,
    addr: SocketAddr,
    core: Mutex<Sleeve>,
    delivered: Mutex<Vec<Vec<u8>>>,
}

impl std::fmt::Debug for MemDataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemDataplane").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl MemDataplane {
    /// A host at `addr` on `net`.
    pub fn new(net: Arc<MemNet>, addr: SocketAddr, cfg: SleeveConfig) -> Self {
        net.inner().queues.entry(addr).or_default();
        Self { net, addr, core: Mutex::new(Sleeve::new(cfg)), delivered: Mutex::new(Vec::new()) }
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn send_all(&self, tx: &mut TxQueue) {
        for (to, d) in tx.iter() {
            self.net.send(self.addr, to, d);
        }
        tx.clear();
    }

    /// A frame from a local container.
    pub fn send_frame(&self, now: Instant, frame: &[u8]) {
        self.send_frame_vnet(now, None, frame);
    }

    /// Several frames read in one batch (packed together where they fit).
    pub fn send_frames(&self, now: Instant, frames: &[Vec<u8>]) {
        self.read_batch(now, frames.iter().map(|f| (None, f.as_slice())));
    }

    /// A frame with offload metadata (a TAP device's virtio-net header).
    pub fn send_frame_vnet(&self, now: Instant, vnet: Option<[u8; crate::wire::VNET_LEN]>, frame: &[u8]) {
        self.read_batch(now, std::iter::once((vnet, frame)));
    }

    /// One batch from the bridge, as the driver's worker handles it: every
    /// frame, one flush, then the sends.
    fn read_batch<'a>(&self, now: Instant, frames: impl Iterator<Item = (Option<[u8; crate::wire::VNET_LEN]>, &'a [u8])>) {
        let mut tx = TxQueue::default();
        let mut inject = Vec::new();
        {
            let mut s = lock(&self.core);
            for (vnet, f) in frames {
                s.handle_frame(now, vnet, f, &mut tx, &mut inject);
            }
            s.flush(&mut tx);
        }
        self.send_all(&mut tx);
        self.delivered.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(inject);
    }

    /// Receive what arrived and run timers; returns datagrams processed.
    pub fn poll(&self, now: Instant) -> usize {
        let mut tx = TxQueue::default();
        let mut ranges = Vec::new();
        let arrived = self.net.take(self.addr);
        let n = arrived.len();
        let mut out = Vec::new();
        {
            let mut s = lock(&self.core);
            for (from, mut d) in arrived {
                ranges.clear();
                s.handle_datagram(now, from, &mut d, &mut tx, &mut ranges);
                for r in ranges.drain(..) {
                    match r {
                        crate::sleeve::Delivery::Range { range, .. } => out.push(d[range].to_vec()),
                        crate::sleeve::Delivery::Owned { frame, .. } => out.push(frame),
                    }
                }
            }
            if s.poll_timeout().is_some_and(|t| t <= now) {
                s.handle_timeout(now, &mut tx);
            }
            s.flush(&mut tx);
        }
        self.send_all(&mut tx);
        self.delivered.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(out);
        n
    }

    /// Frames delivered to local containers since the last call.
    pub fn take_delivered(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.delivered.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// The core, for inspection.
    pub fn core(&self) -> MutexGuard<'_, Sleeve> {
        lock(&self.core)
    }
}

impl Dataplane for MemDataplane {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn connection_up(&self, peer: PeerName, remote: SocketAddr, outbound: bool, keys: Option<&DataKeys>) -> Result<(), DataplaneError> {
        sleeve_connection_up(&mut lock(&self.core), peer, remote, outbound, keys);
        Ok(())
    }

    fn connection_down(&self, peer: PeerName) {
        lock(&self.core).remove_peer(peer);
    }

    fn set_routes(&self, routes: &Routes) {
        lock(&self.core).set_routes(routes.clone());
    }

    fn paths(&self) -> Vec<PeerPath> {
        lock(&self.core).paths(Instant::now())
    }

    fn drops(&self) -> Vec<(DropReason, u64)> {
        lock(&self.core).drops()
    }
}

/// Which calls [`Faulty`] fails.
#[derive(Debug, Default)]
pub struct Faults {
    /// Fail this many `connection_up` calls (then pass).
    pub fail_connection_up: AtomicU32,
    /// Ignore this many `set_routes` calls (stale routes).
    pub drop_routes: AtomicU32,
    /// Ignore this many `connection_down` calls.
    pub drop_connection_down: AtomicU32,
}

fn take_one(c: &AtomicU32) -> bool {
    c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1)).is_ok()
}

/// Wraps a data plane and fails or swallows calls as [`Faults`] says, to
/// test that what drives a data plane copes.
#[derive(Debug)]
pub struct Faulty<D> {
    inner: D,
    /// The faults to inject (adjust at any time).
    pub faults: Faults,
}

impl<D: Dataplane> Faulty<D> {
    /// Wrap `inner` with no faults armed.
    pub fn new(inner: D) -> Self {
        Self { inner, faults: Faults::default() }
    }

    /// The wrapped data plane.
    pub fn inner(&self) -> &D {
        &self.inner
    }
}

impl<D: Dataplane> Dataplane for Faulty<D> {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn connection_up(&self, peer: PeerName, remote: SocketAddr, outbound: bool, keys: Option<&DataKeys>) -> Result<(), DataplaneError> {
        if take_one(&self.faults.fail_connection_up) {
            return Err(DataplaneError::Injected("connection_up"));
        }
        self.inner.connection_up(peer, remote, outbound, keys)
    }

    fn connection_down(&self, peer: PeerName) {
        if !take_one(&self.faults.drop_connection_down) {
            self.inner.connection_down(peer);
        }
    }

    fn set_routes(&self, routes: &Routes) {
        if !take_one(&self.faults.drop_routes) {
            self.inner.set_routes(routes);
        }
    }

    fn paths(&self) -> Vec<PeerPath> {
        self.inner.paths()
    }

    fn drops(&self) -> Vec<(DropReason, u64)> {
        self.inner.drops()
    }

    fn fallbacks(&self) -> Vec<(crate::FallbackReason, u64)> {
        self.inner.fallbacks()
    }

    fn macs(&self) -> Vec<(crate::packet::Mac, PeerName, Instant)> {
        self.inner.macs()
    }
}
