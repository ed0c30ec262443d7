//! The sleeve's driver: a TAP device on the bridge (with offloads: TSO
//! super-frames and partial checksums pass through whole) and a UDP socket
//! on the router port, served by a dedicated worker thread that moves frames
//! in batches — non-blocking TAP reads until empty, `recvmmsg` with UDP GRO,
//! UDP GSO or `sendmmsg` — and takes the core's lock once per batch.

use std::fs::File;
use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::netlink::Netns;
use crate::sleeve::{Delivery, Sleeve, TxQueue};
use crate::sys;
use crate::wire::VNET_LEN;

/// Frames read from the TAP device per batch.
const TAP_BATCH: usize = 64;
/// Receives per `recvmmsg` (each a datagram or a GRO train of them).
const UDP_BATCH: usize = 16;
/// Largest frame read from the TAP device (a TSO super-frame, its
/// virtio-net header and Ethernet header).
const FRAME_BUF: usize = 65536 + 1024;
/// Largest receive: a GRO train of datagrams.
const DGRAM_BUF: usize = 65536;

/// UDP socket buffers: room for bursts while a thread is busy writing
/// frames into the bridge.
const SOCKET_BUFFER: usize = 8 << 20;

/// I/O counters kept by the driver's threads.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct IoCounters {
    /// Frames read from the TAP device.
    pub tap_rx: AtomicU64,
    /// Frames written to the TAP device.
    pub tap_tx: AtomicU64,
    /// Datagrams received.
    pub udp_rx: AtomicU64,
    /// Datagrams sent.
    pub udp_tx: AtomicU64,
    /// TAP writes that failed.
    pub tap_errors: AtomicU64,
}

/// The sleeve core as its worker thread shares it. The worker sleeps until
/// its next timer or until a frame or datagram arrives; a change from
/// outside ([`SharedSleeve::lock`]) that brings its next timer forward (a
/// new peer to heartbeat at once) wakes it.
#[derive(Debug)]
pub struct SharedSleeve {
    sleeve: Mutex<Sleeve>,
    waker: sys::Waker,
}

/// A locked [`SharedSleeve`]; when it is dropped, the worker is woken if
/// the core's next timer came forward.
#[derive(Debug)]
pub struct SleeveGuard<'a> {
    guard: std::sync::MutexGuard<'a, Sleeve>,
    waker: &'a sys::Waker,
    timer: Option<Instant>,
}

impl std::ops::Deref for SleeveGuard<'_> {
    type Target = Sleeve;
    fn deref(&self) -> &Sleeve {
        &self.guard
    }
}

impl std::ops::DerefMut for SleeveGuard<'_> {
    fn deref_mut(&mut self) -> &mut Sleeve {
        &mut self.guard
    }
}

impl Drop for SleeveGuard<'_> {
    fn drop(&mut self) {
        // Reads (status, the fast path's checks) and changes that only
        // push timers back leave the worker asleep.
        if self.guard.poll_timeout().is_some_and(|t| self.timer.is_none_or(|was| t < was)) {
            self.waker.wake();
        }
    }
}

impl SharedSleeve {
    /// Lock the core (see [`SleeveGuard`]).
    pub fn lock(&self) -> SleeveGuard<'_> {
        let guard = lock(&self.sleeve);
        let timer = guard.poll_timeout();
        SleeveGuard { guard, waker: &self.waker, timer }
    }
}

/// A running sleeve: its threads, TAP and socket.
pub struct SleeveDriver {
    core: Arc<SharedSleeve>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    local: SocketAddr,
    counters: Arc<IoCounters>,
}

impl std::fmt::Debug for SleeveDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SleeveDriver").field("local", &self.local).finish_non_exhaustive()
    }
}

impl SleeveDriver {
    /// Open TAP device `tap` and bind `listen` inside `ns`, and start the
    /// threads. The caller adds the TAP device to the bridge.
    pub fn start(core: Sleeve, ns: &Netns, tap: &str, listen: SocketAddr) -> io::Result<Self> {
        let tap_name = tap.to_owned();
        let (tap, udp) = ns.run(move || {
            // A predecessor killed a moment ago may still hold the TAP or
            // the port while its last threads exit: wait for it a while.
            let end = std::time::Instant::now() + Duration::from_secs(10);
            let busy = |e: &io::Error| matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EADDRINUSE)) && std::time::Instant::now() < end;
            let tap = loop {
                match sys::open_tap(&tap_name, true) {
                    Err(e) if busy(&e) => std::thread::sleep(Duration::from_millis(50)),
                    r => break r?,
                }
            };
            let udp = loop {
                match UdpSocket::bind(listen) {
                    Err(e) if busy(&e) => std::thread::sleep(Duration::from_millis(50)),
                    r => break r?,
                }
            };
            sys::set_pmtu_probe(udp.as_raw_fd())?;
            sys::set_buffers(udp.as_raw_fd(), SOCKET_BUFFER);
            if !sys::enable_udp_gro(udp.as_raw_fd()) {
                tracing::info!("UDP GRO unavailable; receiving datagrams one by one");
            }
            udp.set_nonblocking(true)?;
            Ok((tap, udp))
        })?;
        let local = udp.local_addr()?;
        let tap = Arc::new(tap);
        let udp = Arc::new(udp);
        let core = Arc::new(SharedSleeve { sleeve: Mutex::new(core), waker: sys::Waker::new()? });
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(IoCounters::default());
        let mut threads = Vec::new();
        {
            let (core, stop, tap, udp, c) = (core.clone(), stop.clone(), tap.clone(), udp.clone(), counters.clone());
            threads.push(std::thread::Builder::new().name("sleeve".into()).spawn(move || worker(&core, &stop, &tap, &udp, &c))?);
        }
        Ok(Self { core, stop, threads, local, counters })
    }

    /// The core, for control (peers, routes) and status.
    pub fn core(&self) -> &Arc<SharedSleeve> {
        &self.core
    }

    /// The UDP address bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// I/O counters.
    pub fn counters(&self) -> &IoCounters {
        &self.counters
    }

    /// Ask the threads to stop, without waiting: what they see go from
    /// now on (the TAP device deleted by a reset) is expected.
    pub fn retire(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.core.waker.wake();
    }

    /// Stop the threads (closing the TAP device removes it).
    pub fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.core.waker.wake();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for SleeveDriver {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn lock(core: &Mutex<Sleeve>) -> std::sync::MutexGuard<'_, Sleeve> {
    // A panic in the core is a bug; keep carrying traffic with its state.
    core.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How long the worker keeps checking for work after it last moved frames
/// before it sleeps: replies that come back within this window (a ping's echo, a
/// TCP ACK) are picked up without a wake-up, which costs tens of
/// microseconds on a virtual machine.
const SPIN: Duration = Duration::from_micros(200);

/// The worker: one thread serving both the TAP device and the socket.
/// Frames a TAP write provokes (the answer of a local container) are often
/// queued before the write returns, and are read in the same pass.
fn worker(shared: &SharedSleeve, stop: &AtomicBool, tap: &File, udp: &UdpSocket, c: &IoCounters) {
    let core = &shared.sleeve;
    let mut frames: Vec<Vec<u8>> = (0..TAP_BATCH).map(|_| vec![0u8; FRAME_BUF]).collect();
    let mut lens = [0usize; TAP_BATCH];
    let mut batch = sys::RecvBatch::new(UDP_BATCH, DGRAM_BUF);
    let mut tx = TxQueue::default();
    // Datagrams below the standard size travel a path found to be smaller:
    // sent one by one, since a device or middlebox on the way may judge a
    // GSO send by its whole size before it is cut into segments.
    let gso_min = usize::from(lock(core).config().max_datagram);
    let mut inject = Vec::new();
    let mut deliveries: Vec<(usize, Delivery)> = Vec::new();
    let mut ranges: Vec<Delivery> = Vec::new();
    let mut spent: Vec<Vec<u8>> = Vec::new();
    let (tap_fd, udp_fd) = (tap.as_raw_fd(), udp.as_raw_fd());
    let mut last_work = Instant::now();
    // What the last wait said is ready (TAP, socket, waker); None: look at
    // both. A wake-up for one heartbeat then costs the wait and one read.
    let mut ready: Option<[bool; 3]> = None;
    // The last pass emptied both queues and nothing is flowing: wait
    // rather than look again (the wait is level-triggered, so nothing that
    // arrived meanwhile is missed).
    let mut drained = false;
    while !stop.load(Ordering::Relaxed) {
        let [want_tap, want_udp, _] = ready.take().unwrap_or([!drained; 3]);
        let n_tap = match if want_tap { read_frames(tap, &mut frames, &mut lens) } else { Ok(0) } {
            Ok(n) => n,
            Err(e) => {
                // The TAP device was deleted under us (reset, or by hand):
                // nothing more can be carried.
                if stop.load(Ordering::Relaxed) {
                    tracing::debug!(error = %e, "sleeve retired; its TAP device is gone");
                } else {
                    tracing::error!(error = %e, "the sleeve's TAP device is gone; sleeve stopped");
                }
                return;
            }
        };
        let n_udp = match if want_udp { batch.recv(udp_fd) } else { Ok(0) } {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => 0,
            Err(e) => {
                // ICMP errors from earlier sends surface here; keep going.
                tracing::debug!(error = %e, "UDP receive error");
                0
            }
        };
        let now = Instant::now();
        if n_tap == 0 && n_udp == 0 {
            let next_timer = lock(core).poll_timeout();
            if next_timer.is_none_or(|t| now < t) {
                if now.saturating_duration_since(last_work) < SPIN {
                    drained = false;
                    std::hint::spin_loop();
                    std::thread::yield_now();
                    continue;
                }
                // Asleep until a frame, a datagram, a change from outside
                // (the waker) or the next timer: nothing polls at rest.
                let ms = next_timer.map_or(-1, |t| i32::try_from(t.saturating_duration_since(now).as_millis() + 1).unwrap_or(i32::MAX));
                match sys::wait_any([tap_fd, udp_fd, shared.waker.fd()], ms) {
                    Ok(r) => {
                        if r[2] {
                            shared.waker.drain();
                        }
                        ready = Some(r);
                        drained = false;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "polling failed; sleeve stopped");
                        return;
                    }
                }
                continue;
            }
        }
        c.tap_rx.fetch_add(n_tap as u64, Ordering::Relaxed);
        c.udp_rx.fetch_add(n_udp as u64, Ordering::Relaxed);
        {
            let mut s = lock(core);
            for b in spent.drain(..) {
                s.recycle(b);
            }
            for i in 0..n_tap {
                let Some((hdr, frame)) = frames[i][..lens[i]].split_first_chunk::<VNET_LEN>() else { continue };
                // Only carry the header when it says something.
                let vnet = (hdr[0] != 0 || hdr[1] != 0).then_some(*hdr);
                s.handle_frame(now, vnet, frame, &mut tx, &mut inject);
            }
            for i in 0..n_udp {
                let Some(from) = batch.addrs[i] else { continue };
                let segments: Vec<std::ops::Range<usize>> = batch.datagrams(i).collect();
                for seg in segments {
                    ranges.clear();
                    let base = seg.start;
                    s.handle_datagram(now, from, &mut batch.bufs[i][seg], &mut tx, &mut ranges);
                    deliveries.extend(ranges.drain(..).map(|d| match d {
                        Delivery::Range { range, vnet } => (i, Delivery::Range { range: range.start + base..range.end + base, vnet }),
                        owned => (i, owned),
                    }));
                }
            }
            if s.poll_timeout().is_some_and(|t| t <= now) {
                s.handle_timeout(now, &mut tx);
            }
            s.flush(&mut tx);
        }
        if !tx.is_empty() {
            let sent = sys::send_batch(udp_fd, tx.iter(), gso_min);
            c.udp_tx.fetch_add(sent as u64, Ordering::Relaxed);
            tx.clear();
        }
        // Frames moved: more are likely within the spin window. Heartbeats
        // alone are not traffic, and an idle mesh must not spin on them.
        if n_tap > 0 || !deliveries.is_empty() || !inject.is_empty() {
            last_work = now;
        }
        // Short reads emptied the queues; with no frames flowing, the next
        // look is the wait itself.
        drained = n_tap < TAP_BATCH && n_udp < UDP_BATCH && now.saturating_duration_since(last_work) >= SPIN;
        for f in inject.drain(..) {
            write_frame(tap, None, &f, c);
        }
        for (i, d) in deliveries.drain(..) {
            match d {
                Delivery::Range { range, vnet } => write_frame(tap, vnet, &batch.bufs[i][range], c),
                Delivery::Owned { frame, vnet } => {
                    write_frame(tap, vnet, &frame, c);
                    spent.push(frame);
                }
            }
        }
    }
}

/// Non-blocking reads from the TAP device until it is empty or the batch
/// is full. An error that will not go away (the device is gone) is returned.
fn read_frames(tap: &File, bufs: &mut [Vec<u8>], lens: &mut [usize]) -> io::Result<usize> {
    let mut n = 0;
    while n < bufs.len() {
        match (&*tap).read(&mut bufs[n]) {
            Ok(len) => {
                lens[n] = len;
                n += 1;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EBADFD | libc::ENODEV | libc::EBADF | libc::EIO)) => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "TAP read failed");
                break;
            }
        }
    }
    Ok(n)
}

fn write_frame(tap: &File, vnet: Option<[u8; VNET_LEN]>, f: &[u8], c: &IoCounters) {
    let hdr = vnet.unwrap_or([0; VNET_LEN]);
    // A TAP write takes the whole frame or fails; it is never partial.
    match (&*tap).write_vectored(&[IoSlice::new(&hdr), IoSlice::new(f)]) {
        Ok(n) if n == VNET_LEN + f.len() => {
            c.tap_tx.fetch_add(1, Ordering::Relaxed);
        }
        Ok(_) | Err(_) => {
            c.tap_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Name of the sleeve's TAP device on the bridge.
pub const TAP_NAME: &str = "vethwe-sleeve";

/// The sleeve as a [`crate::Dataplane`]: the bridge, a TAP port on it, and
/// the UDP socket on the router port. A watchdog recreates the bridge (and
/// puts every port back) if someone deletes it, and the host firewall is
/// kept letting frames through the bridge ([`crate::firewall::follow`]).
#[derive(Debug)]
pub struct SleeveDataplane {
    driver: SleeveDriver,
    watchdog: tokio::task::JoinHandle<()>,
    firewall: tokio::task::JoinHandle<()>,
}

impl Drop for SleeveDataplane {
    fn drop(&mut self) {
        self.watchdog.abort();
        self.firewall.abort();
    }
}

/// Put back what belongs on the bridge: the TAP and VXLAN devices
/// (isolated) and container links (`vethwe*`).
/// A bridge made here gets `mac` (the peer name, as Weave's).
pub async fn restore_bridge(nl: &crate::netlink::Netlink, bridge: &str, mtu: u32, mac: Option<[u8; 6]>) -> Result<(), crate::PlumbError> {
    let b = nl.ensure_bridge_with_mac(bridge, mtu, mac).await?;
    for (name, id) in nl.links().await? {
        if id.controller == Some(b.index) {
            continue;
        }
        let isolated = name == TAP_NAME || name == crate::fastpath::VXLAN_NAME;
        if isolated || name.starts_with("vethwe") {
            nl.enslave(id.index, b.index, mtu, isolated).await?;
        }
    }
    Ok(())
}

async fn watchdog(nl: crate::netlink::Netlink, bridge: String, mtu: u32, mac: Option<[u8; 6]>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        match nl.link(&bridge).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                tracing::warn!(%bridge, "bridge deleted; recreating it");
                if let Err(e) = restore_bridge(&nl, &bridge, mtu, mac).await {
                    tracing::error!(%bridge, error = %e, "cannot recreate the bridge");
                }
            }
            Err(e) => tracing::debug!(error = %e, "bridge check failed"),
        }
    }
}

/// Where and how to run a data plane.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DataplaneConfig {
    /// The router's namespace.
    pub netns: Netns,
    /// The bridge (`weave`).
    pub bridge: String,
    /// Overlay MTU (`ethwe`, bridge ports).
    pub mtu: u32,
    /// UDP address for the sleeve (router port, all interfaces).
    pub listen: SocketAddr,
    /// Sleeve settings.
    pub sleeve: crate::SleeveConfig,
    /// A password is set: data between peers must be encrypted (the fast
    /// path then serves only peers in trusted subnets, if any).
    pub encrypted: bool,
}

impl DataplaneConfig {
    /// A data plane in `netns` on `bridge`, its sleeve on `listen`; MTU
    /// [`crate::DEFAULT_MTU`], unencrypted (set the fields to change that).
    pub fn new(netns: Netns, bridge: impl Into<String>, listen: SocketAddr, sleeve: crate::SleeveConfig) -> Self {
        Self { netns, bridge: bridge.into(), mtu: crate::DEFAULT_MTU, listen, sleeve, encrypted: false }
    }
}

impl SleeveDataplane {
    /// Ensure the bridge, start the sleeve and put its TAP on the bridge.
    pub async fn start(nl: &crate::netlink::Netlink, cfg: &DataplaneConfig) -> Result<Self, crate::DataplaneError> {
        // Weave's bridge MAC is the peer name; a name that is no unicast
        // MAC leaves the kernel to choose.
        let mac = Some(cfg.sleeve.ourself.octets()).filter(|m| m[0] & 1 == 0 && *m != [0; 6]);
        nl.ensure_bridge_with_mac(&cfg.bridge, cfg.mtu, mac).await?;
        let mut sleeve = cfg.sleeve.clone();
        sleeve.round_clock.get_or_insert_with(weave_core::time::RoundClock::system);
        let driver = SleeveDriver::start(Sleeve::new(sleeve), &cfg.netns, TAP_NAME, cfg.listen)?;
        restore_bridge(nl, &cfg.bridge, cfg.mtu, mac).await?;
        let watchdog = tokio::spawn(watchdog(nl.clone(), cfg.bridge.clone(), cfg.mtu, mac));
        let firewall = crate::firewall::follow(cfg.netns.clone(), cfg.bridge.clone(), cfg.listen.port())
            .map_err(|source| crate::PlumbError { op: "follow the host firewall".into(), source })?;
        Ok(Self { driver, watchdog, firewall })
    }

    /// The running driver.
    pub fn driver(&self) -> &SleeveDriver {
        &self.driver
    }
}

impl crate::Dataplane for SleeveDataplane {
    fn retire(&self) {
        self.watchdog.abort();
        self.firewall.abort();
        self.driver.retire();
    }

    fn kind(&self) -> &'static str {
        "sleeve"
    }

    fn connection_up(
        &self,
        peer: weave_core::PeerName,
        remote: SocketAddr,
        outbound: bool,
        keys: Option<&weave_gossip::DataKeys>,
    ) -> Result<(), crate::DataplaneError> {
        crate::dataplane::sleeve_connection_up(&mut self.driver.core().lock(), peer, remote, outbound, keys);
        Ok(())
    }

    fn connection_down(&self, peer: weave_core::PeerName) {
        self.driver.core().lock().remove_peer(peer);
    }

    fn set_routes(&self, routes: &weave_gossip::routes::Routes) {
        self.driver.core().lock().set_routes(routes.clone());
    }

    fn paths(&self) -> Vec<crate::PeerPath> {
        self.driver.core().lock().paths(Instant::now())
    }

    fn drops(&self) -> Vec<(crate::DropReason, u64)> {
        self.driver.core().lock().drops()
    }

    fn macs(&self) -> Vec<(crate::packet::Mac, weave_core::PeerName, Instant)> {
        self.driver.core().lock().remote_macs()
    }
}
