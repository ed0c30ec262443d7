//! The fast path: the kernel's VXLAN device on the bridge carries frames
//! between hosts with no userspace hop, peer by peer, falling back to the
//! sleeve whenever a peer's VXLAN path fails and returning when it heals.
//!
//! - The VXLAN device (router port + 1) is an isolated bridge port, as is
//!   the sleeve's TAP: frames never pass between the two, so nothing loops
//!   and the sleeve only sees what the bridge sends it.
//! - Each host offers its bridge MAC in the sleeve's heartbeats. A
//!   fast-path heartbeat is a full-MTU frame of our own EtherType sent out
//!   of the VXLAN device to the peer's bridge MAC; the peer receives it on
//!   its bridge. A peer is *ready* when we hear its heartbeats and it says
//!   (in its sleeve heartbeats) that it hears ours: the path works both
//!   ways at full MTU.
//! - A ready peer gets an all-zero FDB entry (broadcasts and unknown
//!   unicast reach it by VXLAN; known unicast follows the device's
//!   learning). The sleeve then leaves that peer's frames to VXLAN and
//!   relays through it only what it must. On failure the entries go, the
//!   bridge forgets what it learnt on the VXLAN port, and the sleeve takes
//!   over; the reason is recorded and counted.
//! - With a password the sleeve carries the data, encrypted (this kernel has
//!   no IPsec for VXLAN).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weave_core::PeerName;
use weave_gossip::{routes::Routes, DataKeys};

use crate::netlink::{LinkId, Netlink};
use crate::packet::Mac;
use crate::sleeve_driver::{DataplaneConfig, SleeveDataplane, TAP_NAME};
use crate::sys::PacketSocket;
use crate::{Dataplane, DataplaneError, DropReason, PeerPath};

/// The VXLAN device's name.
pub const VXLAN_NAME: &str = "vxlan-weave";
/// VXLAN network identifier used by every router.
pub const VNI: u32 = 0x7765;
/// EtherType of fast-path heartbeats (IEEE local experimental).
pub const HEARTBEAT_ETHERTYPE: u16 = 0x88b5;
const TICK: Duration = Duration::from_millis(200);

#[derive(Debug, Clone)]
struct Programmed {
    ip: IpAddr,
    mac: Mac,
    active: bool,
}

/// Why and how often peers fell back to the sleeve.
#[derive(Debug, Default, Clone)]
#[non_exhaustive]
pub struct FastpathStats {
    /// Fallbacks by reason.
    pub fallbacks: BTreeMap<crate::FallbackReason, u64>,
    /// Times a peer moved (back) onto the fast path.
    pub activations: u64,
}

struct Shared {
    programmed: HashMap<PeerName, Programmed>,
    stats: FastpathStats,
}

/// The fast path with the sleeve as per-peer fallback.
pub struct FastDataplane {
    sleeve: SleeveDataplane,
    shared: Arc<Mutex<Shared>>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Wakes the control task at once (a peer went: its entries go now,
    /// not at the next tick).
    poke: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for FastDataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastDataplane").finish_non_exhaustive()
    }
}

impl Drop for FastDataplane {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

struct Control {
    nl: Netlink,
    core: Arc<crate::sleeve_driver::SharedSleeve>,
    shared: Arc<Mutex<Shared>>,
    bridge_name: String,
    vxlan: LinkId,
    tap: LinkId,
    port: u16,
    mtu: usize,
    tx: PacketSocket,
    rx: PacketSocket,
    bridge_index: u32,
    poke: Arc<tokio::sync::Notify>,
    /// The peers VXLAN is let in from, as last applied.
    allowed: Vec<IpAddr>,
}

impl FastDataplane {
    /// Start the sleeve, then the VXLAN device (router port + 1) and the
    /// control task that heartbeats and programs peers.
    pub async fn start(nl: &Netlink, cfg: &DataplaneConfig) -> Result<Self, DataplaneError> {
        let sleeve = SleeveDataplane::start(nl, cfg).await?;
        let shared = Arc::new(Mutex::new(Shared { programmed: HashMap::new(), stats: FastpathStats::default() }));
        if cfg.encrypted && cfg.sleeve.trusted.is_empty() {
            // Every peer must encrypt, and VXLAN cannot: no device at all,
            // so nothing on the underlay can inject into the bridge, and
            // no frame can leave in clear.
            nl.delete(VXLAN_NAME).await?;
            return Ok(Self { sleeve, shared, task: None, poke: Arc::default() });
        }
        let port = cfg.listen.port().checked_add(1).ok_or_else(|| std::io::Error::other("router port 65535 leaves no room for VXLAN"))?;
        let bridge = nl.link(&cfg.bridge).await?.ok_or_else(|| std::io::Error::other("bridge vanished"))?;
        let vxlan = nl.ensure_vxlan(VXLAN_NAME, VNI, port, cfg.mtu, bridge.index).await?;
        let tap = nl.link(TAP_NAME).await?.ok_or_else(|| std::io::Error::other("TAP device vanished"))?;
        let (vi, bi) = (vxlan.index, bridge.index);
        let (tx, rx) = cfg.netns.run(move || Ok((PacketSocket::open(vi, HEARTBEAT_ETHERTYPE)?, PacketSocket::open(bi, HEARTBEAT_ETHERTYPE)?)))?;
        let core = sleeve.driver().core().clone();
        core.lock().set_fastpath_offer(Some((bridge.mac, port)));
        // Until a peer is programmed, no VXLAN gets in.
        cfg.netns.run(move || crate::firewall::allow_vxlan_from(port, &[]))?;
        let poke = Arc::new(tokio::sync::Notify::new());
        let control = Control {
            nl: nl.clone(),
            core,
            shared: shared.clone(),
            bridge_name: cfg.bridge.clone(),
            vxlan,
            tap,
            port,
            mtu: cfg.mtu as usize,
            tx,
            rx,
            bridge_index: bridge.index,
            poke: poke.clone(),
            allowed: Vec::new(),
        };
        let task = tokio::spawn(control.run());
        Ok(Self { sleeve, shared, task: Some(task), poke })
    }

    /// Fallback and activation counters.
    pub fn stats(&self) -> FastpathStats {
        self.shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner).stats.clone()
    }

    /// The sleeve underneath.
    pub fn sleeve(&self) -> &SleeveDataplane {
        &self.sleeve
    }
}

impl Control {
    async fn run(mut self) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.poke.notified() => {}
            }
            if let Err(e) = self.step().await {
                tracing::warn!(error = %e, "fast-path control step failed");
            }
        }
    }

    async fn step(&mut self) -> Result<(), crate::PlumbError> {
        let now = Instant::now();
        // Our bridge MAC can change as ports come and go: keep the offer
        // true. A recreated bridge has a new index: listen there.
        if let Some(b) = self.nl.link(&self.bridge_name).await? {
            self.core.lock().set_fastpath_offer(Some((b.mac, self.port)));
            if b.index != self.bridge_index {
                let idx = b.index;
                match self.nl.netns().run(move || PacketSocket::open(idx, HEARTBEAT_ETHERTYPE)) {
                    Ok(rx) => {
                        self.rx = rx;
                        self.bridge_index = idx;
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot listen for fast-path heartbeats on the new bridge"),
                }
            }
        }
        self.receive(now);
        let offers = self.core.lock().fastpath_offers();
        let mut seen = Vec::new();
        for (peer, addr, mac, port) in offers {
            seen.push(peer);
            // One peer's trouble must not hold the others back.
            if let Err(e) = self.step_peer(now, peer, addr.ip(), mac, port).await {
                tracing::warn!(%peer, error = %e, "fast-path programming failed");
            }
        }
        // Peers that went away (or stopped offering).
        let gone: Vec<PeerName> = self.shared().programmed.keys().filter(|p| !seen.contains(p)).copied().collect();
        for peer in gone {
            if let Err(e) = self.remove(peer).await {
                tracing::warn!(%peer, error = %e, "fast-path cleanup failed");
            }
        }
        self.guard_port().await;
        Ok(())
    }

    /// Let VXLAN in from exactly the programmed peers.
    async fn guard_port(&mut self) {
        let mut ips: Vec<IpAddr> = self.shared().programmed.values().map(|p| p.ip).collect();
        ips.sort();
        ips.dedup();
        if ips == self.allowed {
            return;
        }
        let (ns, port, want) = (self.nl.netns().clone(), self.port, ips.clone());
        match tokio::task::spawn_blocking(move || ns.run(move || crate::firewall::allow_vxlan_from(port, &want))).await {
            Ok(Ok(())) => self.allowed = ips,
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot limit VXLAN to the fast-path peers"),
            Err(e) => tracing::warn!(error = %e, "cannot limit VXLAN to the fast-path peers"),
        }
    }

    async fn step_peer(&mut self, now: Instant, peer: PeerName, ip: IpAddr, mac: Mac, port: u16) -> Result<(), crate::PlumbError> {
        self.program_heartbeat_entry(peer, ip, mac).await?;
        if port == self.port {
            let mut payload = vec![0u8; self.mtu];
            payload[..4].copy_from_slice(crate::wire::FASTPATH_MAGIC);
            payload[4..10].copy_from_slice(&self.core.lock().ourself().octets());
            if let Err(e) = self.tx.send_to(mac, &payload) {
                tracing::debug!(%peer, error = %e, "fast-path heartbeat not sent");
            }
        }
        let ready = self.core.lock().fastpath_ready(now, peer);
        let active = self.shared().programmed.get(&peer).is_some_and(|p| p.active);
        match (ready, active) {
            (Ok(_), false) => self.activate(peer).await,
            (Err(why), true) => self.deactivate(peer, why).await,
            _ => Ok(()),
        }
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn receive(&mut self, now: Instant) {
        let mut buf = vec![0u8; 65536];
        loop {
            match self.rx.recv_from(&mut buf) {
                Ok((n, _src)) => {
                    if let Some(peer) = crate::wire::fastpath_heartbeat_origin(&buf[..n]) {
                        self.core.lock().fastpath_heard(now, peer);
                    }
                }
                Err(_) => return,
            }
        }
    }

    /// The entry that steers heartbeats for `peer` (and only them) to it.
    async fn program_heartbeat_entry(&mut self, peer: PeerName, ip: IpAddr, mac: Mac) -> Result<(), crate::PlumbError> {
        let old = self.shared().programmed.get(&peer).cloned();
        if let Some(o) = &old {
            if o.ip == ip && o.mac == mac {
                return Ok(());
            }
            // Moved: start over.
            self.remove(peer).await?;
        }
        self.nl.fdb_add(self.vxlan.index, mac, ip).await?;
        self.shared().programmed.insert(peer, Programmed { ip, mac, active: false });
        Ok(())
    }

    async fn activate(&mut self, peer: PeerName) -> Result<(), crate::PlumbError> {
        let Some(p) = self.shared().programmed.get(&peer).cloned() else { return Ok(()) };
        // The sleeve stops carrying the peer's frames first, then VXLAN
        // starts: in between a frame may be lost, never delivered twice.
        self.core.lock().set_fastpath_active(peer, true);
        if let Err(e) = self.nl.fdb_add(self.vxlan.index, [0; 6], p.ip).await {
            self.core.lock().set_fastpath_active(peer, false);
            return Err(e);
        }
        // What the bridge learnt through the sleeve for this peer's
        // containers now belongs to VXLAN.
        self.nl.flush_port(self.tap.index).await?;
        let mut s = self.shared();
        if let Some(e) = s.programmed.get_mut(&peer) {
            e.active = true;
        }
        s.stats.activations += 1;
        tracing::info!(%peer, ip = %p.ip, "fast path up");
        Ok(())
    }

    async fn deactivate(&mut self, peer: PeerName, why: crate::FallbackReason) -> Result<(), crate::PlumbError> {
        let Some(p) = self.shared().programmed.get(&peer).cloned() else { return Ok(()) };
        // VXLAN stops first, then the sleeve takes over (no duplicates).
        let removed = self.nl.fdb_del(self.vxlan.index, [0; 6], p.ip).await;
        self.core.lock().set_fastpath_active(peer, false);
        removed?;
        // Forget learnt entries for the peer except the heartbeat's.
        self.nl.fdb_del_dst(self.vxlan.index, p.ip).await?;
        self.nl.fdb_add(self.vxlan.index, p.mac, p.ip).await?;
        self.nl.flush_port(self.vxlan.index).await?;
        let mut s = self.shared();
        if let Some(e) = s.programmed.get_mut(&peer) {
            e.active = false;
        }
        *s.stats.fallbacks.entry(why).or_default() += 1;
        tracing::warn!(%peer, reason = %why, "fast path down; sleeve carries this peer");
        Ok(())
    }

    async fn remove(&mut self, peer: PeerName) -> Result<(), crate::PlumbError> {
        let Some(p) = self.shared().programmed.remove(&peer) else { return Ok(()) };
        self.core.lock().set_fastpath_active(peer, false);
        self.nl.fdb_del_dst(self.vxlan.index, p.ip).await?;
        if p.active {
            self.nl.flush_port(self.vxlan.index).await?;
        }
        Ok(())
    }
}

impl Dataplane for FastDataplane {
    fn kind(&self) -> &'static str {
        "fastdp"
    }

    fn retire(&self) {
        self.sleeve.retire();
        if let Some(t) = &self.task {
            t.abort();
        }
    }

    fn connection_up(&self, peer: PeerName, remote: std::net::SocketAddr, outbound: bool, keys: Option<&DataKeys>) -> Result<(), DataplaneError> {
        self.sleeve.connection_up(peer, remote, outbound, keys)
    }

    fn connection_down(&self, peer: PeerName) {
        self.sleeve.connection_down(peer);
        self.poke.notify_one();
    }

    fn set_routes(&self, routes: &Routes) {
        self.sleeve.set_routes(routes);
    }

    fn paths(&self) -> Vec<PeerPath> {
        self.sleeve.paths()
    }

    fn drops(&self) -> Vec<(DropReason, u64)> {
        self.sleeve.drops()
    }

    fn fallbacks(&self) -> Vec<(crate::FallbackReason, u64)> {
        self.stats().fallbacks.into_iter().collect()
    }

    fn macs(&self) -> Vec<(crate::packet::Mac, PeerName, Instant)> {
        self.sleeve.macs()
    }
}
