//! The sleeve's core (sans-IO): MAC learning, forwarding along the mesh's
//! routes, packing frames into datagrams, sealing and opening them,
//! heartbeats that establish each peer's UDP path and probe its MTU, and the
//! fast-path handshake that rides on those heartbeats.
//!
//! The driver ([`crate::sleeve_driver`]) feeds it frames read from the TAP
//! device and datagrams read from the UDP socket, in batches, and carries out
//! what it asks: datagrams to send ([`TxQueue`]) and frames to deliver into
//! the local bridge. Time is passed in; nothing here blocks or allocates per
//! frame on the fast paths.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use weave_core::PeerName;
use weave_gossip::{routes::Routes, DataKeys};

use crate::crypto::{Opener, Sealer};
use crate::packet::{self, Mac, TooBig};
use crate::wire::{self, Beat, FrameRecord, Header, Kind, Piece, FLAG_BROADCAST, FLAG_NO_LOCAL, FRAME_HEADER_LEN, HEADER_LEN, PIECE_LEN, TAG_LEN, VNET_LEN};

/// Smallest datagram every IPv4 path carries (576 - IP - UDP headers).
pub const MIN_DATAGRAM: u16 = 548;

/// Sleeve settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SleeveConfig {
    /// Our peer name.
    pub ourself: PeerName,
    /// The UDP port peers listen on when we have not learnt theirs.
    pub port: u16,
    /// Largest UDP payload to try (underlay MTU - 28).
    pub max_datagram: u16,
    /// Heartbeat interval once a path is up and its MTU known (default
    /// 10 s, as Weave Net's sleeve: at rest each heartbeat is a wake-up on
    /// both ends, for every peer), with at most [`Self::flat_peers`] peers.
    pub heartbeat: Duration,
    /// With more peers than this (default 32), the slow interval is
    /// [`Self::heartbeat`] times ⌈peers ÷ this⌉, and the path timeout grows
    /// with it: an idle router sends about as many heartbeats a second
    /// whatever the size of the mesh. A peer with fewer peers, whose
    /// heartbeats come more often, asks for acks when our echoes are slow
    /// to come, as after any lost heartbeat.
    pub flat_peers: usize,
    /// The longest slow interval (default 60 s: UDP mappings in NATs and
    /// stateful firewalls commonly last two minutes or more once both ways
    /// have been seen).
    pub max_heartbeat: Duration,
    /// Heartbeat interval while establishing a path or probing its MTU;
    /// doubled for each round the peer leaves unanswered, up to half the
    /// slow interval (a busy or unreachable peer is not flooded).
    pub fast_heartbeat: Duration,
    /// A sleeve path is down after this long without an answered heartbeat
    /// (default 45 s, three rounds; Weave Net allows 60 s), or as many
    /// times longer as the slow interval is longer than [`Self::heartbeat`].
    pub path_timeout: Duration,
    /// The fast path to a peer is down after this long without its
    /// fast-path heartbeats (default 6 s).
    pub timeout: Duration,
    /// Learnt MAC addresses are forgotten after this long unseen.
    pub mac_expiry: Duration,
    /// `--trusted-subnets`: peers here may skip data encryption if they
    /// trust us too.
    pub trusted: Vec<IpNet>,
    /// Most MAC addresses learnt behind one port (our bridge, or one
    /// peer): a container or peer sending from endless addresses fills
    /// only its own share of the table (default 4096).
    pub mac_quota: usize,
    /// The clock slow heartbeat rounds start on: on every router whose
    /// clock agrees they start together, so a router's idle wake-ups for
    /// its peers' heartbeats coalesce into a few per round instead of one
    /// per peer. `None` (the default; the sleeve driver sets the system
    /// clock): rounds keep their own phase.
    pub round_clock: Option<weave_core::time::RoundClock>,
}

impl SleeveConfig {
    /// Defaults for a 1500-byte underlay.
    pub fn new(ourself: PeerName, port: u16) -> Self {
        Self {
            ourself,
            port,
            max_datagram: 1472,
            heartbeat: Duration::from_secs(10),
            flat_peers: 32,
            max_heartbeat: Duration::from_secs(60),
            fast_heartbeat: Duration::from_millis(100),
            path_timeout: Duration::from_secs(45),
            timeout: Duration::from_secs(6),
            mac_expiry: Duration::from_secs(600),
            trusted: Vec::new(),
            mac_quota: 4096,
            round_clock: None,
        }
    }
}

/// Where a MAC address lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MacLocation {
    /// Behind our own bridge.
    Local,
    /// Behind this peer's bridge.
    Peer(PeerName),
}

#[derive(Debug, Clone, Copy)]
struct MacEntry {
    at: MacLocation,
    seen: Instant,
}

/// Path-MTU search state for one peer (datagram sizes, UDP payload).
#[derive(Debug, Clone)]
struct Pmtu {
    /// Largest size to try.
    max: u16,
    /// Largest size acknowledged.
    ok: u16,
    /// Smallest size known to fail (max + 1 while none has).
    bad: u16,
    /// Size being probed.
    probe: u16,
    /// Rounds where the small heartbeat came back but the probe did not.
    misses: u8,
    probe_acked: bool,
    small_acked: bool,
    /// Heartbeat rounds since settling, and whether this round verifies.
    rounds: u8,
    verifying: bool,
}

/// Verify a settled path MTU at most every this many heartbeat rounds
/// (every 30 s at the default 10 s heartbeat), and only while frames go to
/// the peer: a full-size heartbeat costs bytes, and an idle path's size
/// matters only once traffic comes. A verification that fails is retried
/// at the fast heartbeat, so a path that shrank is found within a second of
/// the check.
const VERIFY_EVERY: u8 = 3;

impl Pmtu {
    fn new(max: u16) -> Self {
        let max = max.min(u16::MAX - 1);
        Self { max, ok: 0, bad: max + 1, probe: max, misses: 0, probe_acked: false, small_acked: false, rounds: 0, verifying: false }
    }

    fn settled(&self) -> bool {
        self.ok >= self.max || self.bad.saturating_sub(self.ok.max(MIN_DATAGRAM)) <= 16
    }

    /// The datagram size to use now: optimistic until a probe fails.
    fn effective(&self) -> u16 {
        if self.bad > self.max {
            self.max
        } else {
            self.ok.max(MIN_DATAGRAM)
        }
    }

    /// A round ended (a new heartbeat is due): judge the last probe. `busy`:
    /// frames went to the peer since the last verification.
    fn end_round(&mut self, busy: bool) {
        if self.settled() {
            // A settled size is verified now and then: a path can shrink
            // later (a new hop, a black hole). Three verifications in a row
            // in which the small heartbeat came back and the full-size one
            // did not start the search again, below the size that failed.
            self.rounds = self.rounds.saturating_add(1);
            if !self.verifying {
                if self.rounds >= VERIFY_EVERY && busy {
                    self.rounds = 0;
                    self.verifying = true;
                    self.probe = self.effective();
                    self.probe_acked = false;
                    self.small_acked = false;
                }
                return;
            }
            if self.probe_acked {
                self.misses = 0;
            } else if self.small_acked {
                self.misses += 1;
            }
            self.probe_acked = false;
            self.small_acked = false;
            // A miss is checked again at once; a success rests.
            self.verifying = self.misses > 0;
            if self.misses < 3 {
                return;
            }
            self.verifying = false;
            self.bad = self.effective();
            self.ok = 0;
            self.misses = 0;
        }
        if self.probe_acked {
            self.misses = 0;
        } else if self.small_acked {
            self.misses += 1;
            if self.misses >= 3 {
                self.bad = self.probe;
                self.misses = 0;
            }
        }
        self.probe = if self.bad > self.max { self.max } else { ((u32::from(self.ok.max(MIN_DATAGRAM)) + u32::from(self.bad)) / 2) as u16 };
        self.probe_acked = false;
        self.small_acked = false;
    }

    fn acked(&mut self, size: u16, probe_size: bool) {
        if probe_size {
            self.probe_acked = true;
            self.ok = self.ok.max(size);
            if self.ok >= self.bad {
                self.bad = self.ok + 1;
            }
        } else {
            self.small_acked = true;
        }
    }
}

/// Traffic counters for one peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerCounters {
    /// Frames sent to this peer (as the next hop).
    pub tx_frames: u64,
    /// Bytes of frames sent.
    pub tx_bytes: u64,
    /// Frames received from this peer.
    pub rx_frames: u64,
    /// Bytes of frames received.
    pub rx_bytes: u64,
}

struct Peer {
    /// Which `add_peer` made this state (datagrams opened under another
    /// are dropped, never sealed with the wrong key or counter).
    epoch: u64,
    /// The keys, to keep the crypto state when the same connection is
    /// announced twice (restarting a counter would reuse nonces).
    keys: Option<([u8; 32], [u8; 32])>,
    addr: SocketAddr,
    /// Learnt from a valid datagram (not just guessed).
    confirmed: bool,
    crypto: Option<(Sealer, Opener)>,
    /// The peer said it trusts our address.
    trusts_us: bool,
    next_beat: Instant,
    /// The last heartbeat was a slow one (may be sent early, in step).
    slow: bool,
    seq: u32,
    /// When heartbeats `seq`, `seq - 1`, ... went out: an echo of one is
    /// proof that the path worked at that time. Rounds can be as short as
    /// half an interval (sent early, in step), so the peer's next heartbeat
    /// may echo one a few rounds old.
    beat_sent: [Option<Instant>; 4],
    /// The last (unpadded) heartbeat sequence number heard from the peer,
    /// echoed in ours.
    heard_seq: Option<u32>,
    last_rx: Option<Instant>,
    last_ack: Option<Instant>,
    pmtu: Pmtu,
    fastpath_offer: Option<(Mac, u16)>,
    /// The peer hears our fast-path heartbeats.
    fastpath_heard_by_peer: bool,
    /// When we last heard the peer's fast-path heartbeat.
    fastpath_heard: Option<Instant>,
    counters: PeerCounters,
    /// Frames sent to the peer for a destination behind it (not flooded
    /// broadcasts or multicasts), and pieces of frames: what makes its path
    /// MTU worth verifying. A bridge's occasional broadcast (ARP, IPv6
    /// neighbour discovery) went to every peer and made each verify: a
    /// full-size datagram to every peer every 30 s, most of an idle
    /// router's traffic.
    unicast_tx: u64,
    /// `unicast_tx` when the path MTU was last verified.
    tx_at_verify: u64,
    /// The last fast interval used (backs off while unanswered).
    fast_gap: Duration,
    /// An ack or echo came since the last round.
    answered: bool,
}

impl Peer {
    /// What a heartbeat (or its ack) says about the peer: its fast-path
    /// offer, whether it hears our fast-path heartbeats, whether it trusts us.
    fn note_beat(&mut self, beat: &Beat) {
        self.fastpath_offer = (beat.flags & wire::BEAT_FASTPATH != 0).then_some((beat.fastpath_mac, beat.fastpath_port));
        self.fastpath_heard_by_peer = beat.flags & wire::BEAT_FASTPATH_HEARD != 0;
        self.trusts_us = beat.flags & wire::BEAT_TRUSTS_YOU != 0;
    }

    /// The peer heard our heartbeat `seq` (an ack, or an echo in its own
    /// heartbeat): the path worked when that heartbeat was sent.
    fn heard_us(&mut self, seq: u32) {
        let age = self.seq.wrapping_sub(seq) as usize;
        if let Some(at) = self.beat_sent.get(age).copied().flatten() {
            self.answered = true;
            self.last_ack = Some(self.last_ack.map_or(at, |t| t.max(at)));
            if seq == self.seq {
                self.pmtu.acked(0, false);
            }
        }
    }
}

/// Datagrams to send, in reusable buffers (cleared, not freed, between
/// batches).
#[derive(Debug, Default)]
pub struct TxQueue {
    bufs: Vec<Vec<u8>>,
    dsts: Vec<SocketAddr>,
    len: usize,
    /// Open (still filling) datagrams: (next hop, index, sealed?, peer epoch).
    open: Vec<(PeerName, usize, bool, u64)>,
}

impl TxQueue {
    /// Datagrams ready to send.
    pub fn iter(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        self.dsts[..self.len].iter().copied().zip(self.bufs[..self.len].iter().map(Vec::as_slice))
    }

    /// Number of datagrams queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether none are queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forget what was sent (keeps the buffers).
    pub fn clear(&mut self) {
        debug_assert!(self.open.is_empty(), "flush before clearing");
        self.len = 0;
    }

    fn push(&mut self, dst: SocketAddr) -> usize {
        if self.len == self.bufs.len() {
            self.bufs.push(Vec::with_capacity(2048));
            self.dsts.push(dst);
        }
        let i = self.len;
        self.bufs[i].clear();
        self.dsts[i] = dst;
        self.len += 1;
        i
    }
}

/// A frame from a datagram to write into the local bridge.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Bytes of the datagram buffer (decrypted in place).
    Range {
        /// Where.
        range: std::ops::Range<usize>,
        /// Offload metadata to write with it.
        vnet: Option<[u8; VNET_LEN]>,
    },
    /// A frame reassembled from pieces; hand the buffer back with
    /// [`Sleeve::recycle`] once written.
    Owned {
        /// The frame.
        frame: Vec<u8>,
        /// Offload metadata to write with it.
        vnet: Option<[u8; VNET_LEN]>,
    },
}

/// Why frames or datagrams were dropped (for `/metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Malformed datagram.
    Malformed,
    /// From a peer we have no connection with.
    UnknownPeer,
    /// Failed authentication.
    Auth,
    /// Replayed.
    Replay,
    /// Plaintext from a peer that must encrypt.
    Plaintext,
    /// Destination peer unreachable.
    Unreachable,
    /// Too big for the path and not fragmentable.
    TooBig,
    /// Runt frame.
    Runt,
    /// A frame's pieces arrived out of order or incomplete.
    Reassembly,
    /// A source address not learnt: the MAC table is full.
    MacTableFull,
    /// A source address not learnt: its port has its share of the table.
    MacQuota,
    /// A peer's virtio-net header the kernel must not be handed.
    BadVnet,
    /// Unauthenticated, from an address other than the peer's.
    WrongSource,
}

/// Why a peer's frames travel by the sleeve rather than the fast path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum FallbackReason {
    /// No connection to the peer.
    NotConnected,
    /// The connection is encrypted and the peer is not in a trusted
    /// subnet: VXLAN cannot encrypt.
    Encrypted,
    /// Our fast path is off (no VXLAN device).
    DisabledHere,
    /// The peer does not offer a fast path.
    NotOffered,
    /// No fast-path heartbeats from the peer lately.
    NoHeartbeats,
    /// The peer does not hear our fast-path heartbeats.
    NotHeardByPeer,
    /// Proven both ways; being switched over.
    Activating,
}

impl FallbackReason {
    /// What `weave status connections` and the metrics say.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotConnected => "not connected",
            Self::Encrypted => "encrypted: sleeve carries the data",
            Self::DisabledHere => "fast path disabled here",
            Self::NotOffered => "peer does not offer the fast path",
            Self::NoHeartbeats => "no fast-path heartbeats from peer",
            Self::NotHeardByPeer => "peer does not hear our fast-path heartbeats",
            Self::Activating => "activating",
        }
    }
}

impl std::fmt::Display for FallbackReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl DropReason {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnknownPeer => "unknown_peer",
            Self::Auth => "auth_failed",
            Self::Replay => "replay",
            Self::Plaintext => "plaintext_refused",
            Self::Unreachable => "unreachable",
            Self::TooBig => "too_big",
            Self::Runt => "runt",
            Self::Reassembly => "reassembly",
            Self::MacTableFull => "mac_table_full",
            Self::MacQuota => "mac_quota",
            Self::BadVnet => "bad_vnet",
            Self::WrongSource => "wrong_source",
        }
    }
}

/// A peer's sleeve state, for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPath {
    /// The peer.
    pub peer: PeerName,
    /// The UDP address in use.
    pub addr: SocketAddr,
    /// Heartbeats come back.
    pub established: bool,
    /// Data is encrypted on this hop.
    pub encrypted: bool,
    /// Largest datagram in use.
    pub pmtu: u16,
    /// The fast path is usable (both ends offer it, both hear each other).
    pub fastpath: bool,
    /// Why the fast path is not in use, if it is not.
    pub fastpath_reason: Option<FallbackReason>,
    /// Counters.
    pub counters: PeerCounters,
}

impl Sleeve {
    /// The configuration it runs with.
    pub fn config(&self) -> &SleeveConfig {
        &self.cfg
    }
}

impl PeerPath {
    /// The largest IP packet one datagram of this path carries whole: the
    /// path MTU less the sleeve's headers (and tag, when encrypted) and the
    /// Ethernet header.
    pub fn ip_mtu(&self) -> usize {
        let overhead = wire::HEADER_LEN + wire::FRAME_HEADER_LEN + if self.encrypted { wire::TAG_LEN } else { 0 } + crate::packet::ETH_HLEN;
        usize::from(self.pmtu).saturating_sub(overhead)
    }
}

/// The sleeve's core.
pub struct Sleeve {
    cfg: SleeveConfig,
    peers: HashMap<PeerName, Peer>,
    macs: HashMap<Mac, MacEntry>,
    /// Addresses learnt per port.
    mac_counts: HashMap<MacLocation, usize>,
    routes: Routes,
    fastpath_offer: Option<(Mac, u16)>,
    /// Peers the fast path currently carries frames to (programmed by the
    /// fast-path driver).
    fastpath_on: HashSet<PeerName>,
    drops: HashMap<DropReason, u64>,
    mac_moves: u64,
    next_expiry: Option<Instant>,
    children: Vec<PeerName>,
    next_piece_id: u32,
    next_epoch: u64,
    /// Frames arriving in pieces, by (origin, id).
    partial: HashMap<(PeerName, u32), Partial>,
    /// Spare reassembly buffers.
    pool: Vec<Vec<u8>>,
}

struct Partial {
    buf: Vec<u8>,
    total: usize,
    vnet: Option<[u8; VNET_LEN]>,
    started: Instant,
}

/// Largest frame accepted in pieces (a TSO super-frame is at most 64 KiB
/// plus headers).
pub const MAX_PIECED_FRAME: usize = 256 * 1024;
/// Most MAC addresses learnt at once.
pub const MAX_MACS: usize = 65536;
/// Frames being reassembled at once, per sleeve.
const MAX_PARTIAL: usize = 64;

impl std::fmt::Debug for Sleeve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sleeve").field("ourself", &self.cfg.ourself).field("peers", &self.peers.len()).finish_non_exhaustive()
    }
}

impl Sleeve {
    /// A sleeve with no peers.
    pub fn new(cfg: SleeveConfig) -> Self {
        Self {
            cfg,
            peers: HashMap::new(),
            macs: HashMap::new(),
            mac_counts: HashMap::new(),
            routes: Routes::default(),
            fastpath_offer: None,
            fastpath_on: HashSet::new(),
            drops: HashMap::new(),
            mac_moves: 0,
            next_expiry: None,
            children: Vec::new(),
            next_piece_id: 0,
            next_epoch: 1,
            partial: HashMap::new(),
            pool: Vec::new(),
        }
    }

    /// Our name.
    pub fn ourself(&self) -> PeerName {
        self.cfg.ourself
    }

    /// The largest frame (Ethernet header included) every established path
    /// carries without fragmenting: what the overlay MTU must fit in.
    pub fn max_frame(&self, encrypted: bool) -> usize {
        usize::from(self.cfg.max_datagram) - HEADER_LEN - FRAME_HEADER_LEN - if encrypted { TAG_LEN } else { 0 }
    }

    /// A direct connection came up: start heartbeating to `addr` (the
    /// peer's address; for inbound connections with our port as a guess,
    /// corrected when its heartbeats arrive). Replaces any earlier state,
    /// keys included.
    pub fn add_peer(&mut self, now: Instant, peer: PeerName, addr: SocketAddr, keys: Option<&DataKeys>) {
        let raw = keys.map(|k| (k.send, k.recv));
        self.fastpath_on.remove(&peer);
        if let Some(p) = self.peers.get_mut(&peer) {
            if p.keys == raw {
                // The same connection again: keep counters and replay
                // window (a fresh sealer would reuse nonces).
                p.addr = addr;
                return;
            }
        }
        let crypto = keys.map(|k| (Sealer::new(&k.send), Opener::new(&k.recv)));
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        let p = Peer {
            epoch,
            keys: raw,
            addr,
            confirmed: false,
            crypto,
            trusts_us: false,
            next_beat: now,
            slow: false,
            seq: 0,
            beat_sent: [None; 4],
            heard_seq: None,
            last_rx: None,
            last_ack: None,
            pmtu: Pmtu::new(self.cfg.max_datagram),
            fastpath_offer: None,
            fastpath_heard_by_peer: false,
            fastpath_heard: None,
            counters: PeerCounters::default(),
            unicast_tx: 0,
            tx_at_verify: 0,
            fast_gap: Duration::ZERO,
            answered: false,
        };
        self.peers.insert(peer, p);
    }

    /// The connection went away.
    pub fn remove_peer(&mut self, peer: PeerName) {
        self.peers.remove(&peer);
        self.fastpath_on.remove(&peer);
    }

    /// The peer's address as guessed for an inbound connection: its IP and
    /// our port.
    pub fn guess_addr(&self, remote: SocketAddr) -> SocketAddr {
        SocketAddr::new(remote.ip(), self.cfg.port)
    }

    /// New routes from the mesh.
    pub fn set_routes(&mut self, routes: Routes) {
        self.routes = routes;
    }

    /// Offer our fast path (VXLAN endpoint MAC and port) to peers, or stop.
    pub fn set_fastpath_offer(&mut self, offer: Option<(Mac, u16)>) {
        self.fastpath_offer = offer;
    }

    /// A fast-path heartbeat from `peer` arrived.
    pub fn fastpath_heard(&mut self, now: Instant, peer: PeerName) {
        let timeout = self.cfg.timeout;
        if let Some(p) = self.peers.get_mut(&peer) {
            let was = p.fastpath_heard.is_some_and(|t| now.saturating_duration_since(t) < timeout);
            p.fastpath_heard = Some(now);
            if !was {
                // Tell the peer at once (the heartbeat carries it), not at
                // the next slow round.
                p.next_beat = now;
            }
        }
    }

    /// Whether the fast path to `peer` is proven both ways; `Err` says why not.
    pub fn fastpath_ready(&self, now: Instant, peer: PeerName) -> Result<(Mac, u16), FallbackReason> {
        let p = self.peers.get(&peer).ok_or(FallbackReason::NotConnected)?;
        if p.crypto.is_some() && !self.plain_ok(p) {
            return Err(FallbackReason::Encrypted);
        }
        if self.fastpath_offer.is_none() {
            return Err(FallbackReason::DisabledHere);
        }
        let offer = p.fastpath_offer.ok_or(FallbackReason::NotOffered)?;
        let heard = p.fastpath_heard.is_some_and(|t| now.saturating_duration_since(t) < self.cfg.timeout);
        if !heard {
            return Err(FallbackReason::NoHeartbeats);
        }
        if !p.fastpath_heard_by_peer {
            return Err(FallbackReason::NotHeardByPeer);
        }
        Ok(offer)
    }

    /// The fast-path driver programmed (or removed) `peer`: broadcasts to it
    /// now travel by VXLAN, so the sleeve only relays through it.
    pub fn set_fastpath_active(&mut self, peer: PeerName, on: bool) {
        if on {
            self.fastpath_on.insert(peer);
        } else {
            self.fastpath_on.remove(&peer);
        }
    }

    /// Peers with a fast-path offer (for the fast-path driver to heartbeat).
    pub fn fastpath_offers(&self) -> Vec<(PeerName, SocketAddr, Mac, u16)> {
        self.peers.iter().filter_map(|(n, p)| p.fastpath_offer.map(|(m, port)| (*n, p.addr, m, port))).collect()
    }

    fn plain_ok(&self, p: &Peer) -> bool {
        p.trusts_us && self.trusts(p.addr.ip())
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.cfg.trusted.iter().any(|n| n.contains(&ip))
    }

    /// Status of every peer path.
    pub fn paths(&self, now: Instant) -> Vec<PeerPath> {
        let mut v: Vec<PeerPath> = self
            .peers
            .iter()
            .map(|(n, p)| {
                let fp = self.fastpath_ready(now, *n);
                PeerPath {
                    peer: *n,
                    addr: p.addr,
                    established: self.established(now, p),
                    encrypted: p.crypto.is_some() && !self.plain_ok(p),
                    pmtu: p.pmtu.effective(),
                    fastpath: fp.is_ok() && self.fastpath_on.contains(n),
                    fastpath_reason: match fp {
                        Err(why) => Some(why),
                        Ok(_) if !self.fastpath_on.contains(n) => Some(FallbackReason::Activating),
                        Ok(_) => None,
                    },
                    counters: p.counters,
                }
            })
            .collect();
        v.sort_by_key(|p| p.peer);
        v
    }

    /// Drop counters by reason.
    pub fn drops(&self) -> Vec<(DropReason, u64)> {
        let mut v: Vec<_> = self.drops.iter().map(|(r, c)| (*r, *c)).collect();
        v.sort();
        v
    }

    /// How many times a MAC address was seen moving between hosts.
    pub fn mac_moves(&self) -> u64 {
        self.mac_moves
    }

    /// Every MAC address learnt from peers: (MAC, peer, when last seen).
    pub fn remote_macs(&self) -> Vec<(Mac, PeerName, Instant)> {
        let mut v: Vec<_> = self.macs.iter().filter_map(|(m, e)| if let MacLocation::Peer(p) = e.at { Some((*m, p, e.seen)) } else { None }).collect();
        v.sort();
        v
    }

    /// Where `mac` was learnt.
    pub fn lookup_mac(&self, mac: &Mac) -> Option<MacLocation> {
        self.macs.get(mac).map(|e| e.at)
    }

    fn established(&self, now: Instant, p: &Peer) -> bool {
        p.last_ack.is_some_and(|t| now.saturating_duration_since(t) < self.path_timeout())
    }

    fn drop(&mut self, r: DropReason) {
        *self.drops.entry(r).or_default() += 1;
    }

    fn learn(&mut self, now: Instant, mac: Mac, at: MacLocation) {
        if packet::is_group(&mac) {
            return;
        }
        let full = self.macs.len() >= MAX_MACS;
        let at_quota = self.mac_counts.get(&at).is_some_and(|&n| n >= self.cfg.mac_quota);
        match self.macs.get_mut(&mac) {
            Some(e) => {
                if e.at != at {
                    tracing::info!(mac = %fmt_mac(&mac), from = ?e.at, to = ?at, "MAC address moved");
                    self.mac_moves += 1;
                    *self.mac_counts.entry(e.at).or_default() -= 1;
                    *self.mac_counts.entry(at).or_default() += 1;
                    e.at = at;
                }
                e.seen = now;
            }
            // A full table (or port share) learns nothing new: unknown
            // addresses are flooded, which still delivers (a flood of
            // random source addresses cannot exhaust memory, nor push out
            // what other ports' addresses).
            None if full => self.drop(DropReason::MacTableFull),
            None if at_quota => self.drop(DropReason::MacQuota),
            None => {
                self.macs.insert(mac, MacEntry { at, seen: now });
                *self.mac_counts.entry(at).or_default() += 1;
            }
        }
    }

    /// A frame read from our bridge, with the virtio-net header it was
    /// read with when the TAP device has offloads on.
    pub fn handle_frame(&mut self, now: Instant, vnet: Option<[u8; VNET_LEN]>, frame: &[u8], tx: &mut TxQueue, inject: &mut Vec<Vec<u8>>) {
        let (Some(dst), Some(src)) = (packet::dst_mac(frame), packet::src_mac(frame)) else {
            self.drop(DropReason::Runt);
            return;
        };
        self.learn(now, src, MacLocation::Local);
        let ourself = self.cfg.ourself;
        if !packet::is_group(&dst) {
            match self.macs.get(&dst).map(|e| e.at) {
                // Carried even to a fast-path peer: the bridge sends a
                // known address here only when it learnt it through the
                // sleeve (the peer's frames still came that way), and
                // dropping it would stall that flow until the bridge
                // relearns. An unknown address is flooded to both ports,
                // so such a frame may arrive twice while tables settle.
                Some(MacLocation::Peer(p)) => {
                    let rec = FrameRecord { origin: ourself, dst: p, flags: 0, vnet, piece: None, frame };
                    self.forward_unicast(rec, tx, Some(inject));
                    return;
                }
                // The bridge floods frames for unknown addresses to us
                // too; a local one is not ours to carry.
                Some(MacLocation::Local) => return,
                None => {}
            }
        }
        let rec = FrameRecord { origin: ourself, dst: ourself, flags: FLAG_BROADCAST, vnet, piece: None, frame };
        self.forward_broadcast(rec, None, tx, Some(inject));
    }

    fn forward_unicast(&mut self, rec: FrameRecord<'_>, tx: &mut TxQueue, inject: Option<&mut Vec<Vec<u8>>>) {
        let Some(hop) = self.routes.next_hop(rec.dst).filter(|h| self.peers.contains_key(h)) else {
            self.drop(DropReason::Unreachable);
            return;
        };
        self.send_record(hop, rec, tx, inject);
    }

    /// Relay a broadcast to our children in its origin's tree, never back
    /// to the hop it came from (`sender`; none for our own frames).
    fn forward_broadcast(&mut self, rec: FrameRecord<'_>, sender: Option<PeerName>, tx: &mut TxQueue, mut inject: Option<&mut Vec<Vec<u8>>>) {
        let mut children = std::mem::take(&mut self.children);
        children.clear();
        children.extend_from_slice(self.routes.broadcast_children(rec.origin));
        for &c in &children {
            if !self.peers.contains_key(&c) || Some(c) == sender || c == rec.origin {
                continue;
            }
            let mut r = rec;
            r.flags = FLAG_BROADCAST;
            // Only the origin's own children can have had it by VXLAN.
            if rec.origin == self.cfg.ourself && self.fastpath_on.contains(&c) {
                // Skip it altogether when it has nobody to relay to.
                let ours = self.routes.neighbours();
                if self.routes.neighbours_of(c).iter().all(|n| *n == rec.origin || ours.contains(n)) {
                    continue;
                }
                r.flags |= FLAG_NO_LOCAL;
            }
            self.send_record(c, r, tx, inject.as_deref_mut());
        }
        self.children = children;
    }

    /// Append a record to the open datagram for `hop`, sealing and opening
    /// another when full. Frames too big for the hop's path: offloaded
    /// super-frames (and pieces of them) travel in pieces; others are
    /// answered with ICMP or fragmented, as a router would.
    fn send_record(&mut self, hop: PeerName, rec: FrameRecord<'_>, tx: &mut TxQueue, inject: Option<&mut Vec<Vec<u8>>>) {
        let max_dgram = usize::from(self.peers[&hop].pmtu.effective());
        let encrypted = {
            let p = &self.peers[&hop];
            p.crypto.is_some() && !self.plain_ok(p)
        };
        let overhead = HEADER_LEN + if encrypted { TAG_LEN } else { 0 };
        if rec.encoded_len() + overhead > max_dgram {
            let gso = rec.vnet.is_some_and(|v| v[1] != 0);
            if gso || rec.piece.is_some() {
                self.send_pieces(hop, rec, max_dgram - overhead, tx);
                return;
            }
            let owned: Vec<u8>;
            let mut frame = rec.frame;
            if let Some(v) = rec.vnet.filter(|v| v[0] & 1 != 0) {
                // A partial checksum must be complete before fragmenting.
                let mut o = frame.to_vec();
                packet::finish_checksum(&mut o, u16::from_le_bytes([v[6], v[7]]).into(), u16::from_le_bytes([v[8], v[9]]).into());
                owned = o;
                frame = &owned;
            }
            let max_frame = max_dgram - overhead - FRAME_HEADER_LEN;
            match packet::too_big(frame, max_frame) {
                TooBig::Icmp(icmp) => match inject {
                    Some(inj) if rec.origin == self.cfg.ourself => inj.push(icmp),
                    _ => self.drop(DropReason::TooBig),
                },
                TooBig::Fragments(frags) => {
                    for f in &frags {
                        let r = FrameRecord { frame: f, vnet: None, ..rec };
                        self.send_record(hop, r, tx, None);
                    }
                }
                TooBig::Drop => self.drop(DropReason::TooBig),
            }
            return;
        }
        let need = rec.encoded_len();
        let epoch = self.peers[&hop].epoch;
        let slot = tx.open.iter().position(|o| o.0 == hop);
        let idx = match slot {
            // Reuse only a datagram opened under the same keys and sealing
            // decision (trust can change mid-batch).
            Some(s)
                if tx.open[s].2 == encrypted
                    && tx.open[s].3 == epoch
                    && tx.bufs[tx.open[s].1].len() + need + if encrypted { TAG_LEN } else { 0 } <= max_dgram =>
            {
                tx.open[s].1
            }
            other => {
                if let Some(s) = other {
                    let (h, i, sealed, ep) = tx.open.swap_remove(s);
                    self.close(h, i, sealed, ep, tx);
                }
                let i = self.open_datagram(hop, Kind::Frames, encrypted, tx);
                tx.open.push((hop, i, encrypted, epoch));
                i
            }
        };
        rec.write(&mut tx.bufs[idx]);
        let p = self.peers.get_mut(&hop).expect("checked");
        if rec.piece.is_some() || rec.frame.first().is_some_and(|b| b & 1 == 0) {
            p.unicast_tx += 1;
        }
        p.counters.tx_frames += 1;
        p.counters.tx_bytes += rec.frame.len() as u64;
    }

    /// Split a record into pieces that each fit in `room` bytes of datagram
    /// body; a piece of a piece keeps the outer frame's id and offsets.
    fn send_pieces(&mut self, hop: PeerName, rec: FrameRecord<'_>, room: usize, tx: &mut TxQueue) {
        let (id, base, total) = match rec.piece {
            Some(p) => (p.id, p.offset, p.total),
            None => {
                // Our own frames use ids below 2^31; frames we relay and
                // must split get ids above, so they never collide with the
                // origin's own.
                let id = self.next_piece_id & 0x7fff_ffff | if rec.origin == self.cfg.ourself { 0 } else { 0x8000_0000 };
                self.next_piece_id = self.next_piece_id.wrapping_add(1);
                (id, 0, u32::try_from(rec.frame.len()).unwrap_or(u32::MAX))
            }
        };
        let hdr = FRAME_HEADER_LEN + if rec.vnet.is_some() { VNET_LEN } else { 0 } + PIECE_LEN;
        let Some(per) = room.checked_sub(hdr).filter(|p| *p >= 64) else {
            return self.drop(DropReason::TooBig);
        };
        for (i, chunk) in rec.frame.chunks(per).enumerate() {
            let Some(offset) = u32::try_from(i * per).ok().and_then(|o| base.checked_add(o)) else {
                return self.drop(DropReason::Malformed);
            };
            let piece = Piece { id, offset, total };
            let r = FrameRecord { piece: Some(piece), frame: chunk, ..rec };
            self.send_record(hop, r, tx, None);
        }
    }

    fn open_datagram(&mut self, hop: PeerName, kind: Kind, encrypted: bool, tx: &mut TxQueue) -> usize {
        let p = self.peers.get_mut(&hop).expect("caller checked");
        let counter = match (&mut p.crypto, encrypted) {
            (Some((s, _)), true) => s.next_counter(),
            _ => 0,
        };
        let i = tx.push(p.addr);
        let h = Header { kind, encrypted, sender: self.cfg.ourself, counter };
        let buf = &mut tx.bufs[i];
        buf.resize(HEADER_LEN, 0);
        h.write(buf);
        i
    }

    fn close(&mut self, hop: PeerName, i: usize, sealed: bool, epoch: u64, tx: &mut TxQueue) {
        let buf = &mut tx.bufs[i];
        let Some(p) = self.peers.get(&hop).filter(|p| p.epoch == epoch) else {
            // The peer went away (or came back with new keys) mid-batch:
            // send nothing (an empty datagram is skipped).
            buf.truncate(0);
            return;
        };
        if !sealed {
            return;
        }
        let counter = u64::from_be_bytes(buf[8..16].try_into().expect("header"));
        let mut aad = [0u8; HEADER_LEN];
        aad.copy_from_slice(&buf[..HEADER_LEN]);
        match p.crypto.as_ref() {
            Some((s, _)) => s.seal(counter, &aad, buf, HEADER_LEN),
            None => buf.truncate(0),
        }
    }

    /// Seal and finish every open datagram; call before sending `tx`.
    pub fn flush(&mut self, tx: &mut TxQueue) {
        while let Some((h, i, sealed, epoch)) = tx.open.pop() {
            self.close(h, i, sealed, epoch, tx);
        }
    }

    /// A datagram from the UDP socket. Frames to deliver locally are
    /// returned as ranges of `data` (decrypted in place); relayed frames
    /// and heartbeat answers go into `tx`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &mut [u8], tx: &mut TxQueue, deliver: &mut Vec<Delivery>) {
        let Ok(h) = Header::parse(data) else {
            return self.drop(DropReason::Malformed);
        };
        let trusted_src = self.trusts(from.ip());
        let Some(p) = self.peers.get_mut(&h.sender) else {
            return self.drop(DropReason::UnknownPeer);
        };
        let (body_end, authenticated) = match (&mut p.crypto, h.encrypted) {
            (Some((_, o)), true) => {
                let (aad, rest) = data.split_at_mut(HEADER_LEN);
                match o.open(h.counter, aad, rest) {
                    Ok(n) => (HEADER_LEN + n, true),
                    Err(crate::crypto::OpenError::Replay) => return self.drop(DropReason::Replay),
                    Err(_) => return self.drop(DropReason::Auth),
                }
            }
            (None, false) => (data.len(), false),
            // Plain data from an encrypting peer only across trusted
            // subnets, and never heartbeats (they carry the trust itself).
            (Some(_), false) if h.kind == Kind::Frames && trusted_src && p.trusts_us => (data.len(), false),
            (Some(_), false) => return self.drop(DropReason::Plaintext),
            (None, true) => return self.drop(DropReason::Auth),
        };
        // Anyone can write a peer's name in a plain datagram: unless it is
        // authenticated, it must come from the peer's host (the address of
        // its mesh connection; the port may differ, as for an inbound
        // connection's guess). Only an authenticated datagram moves the
        // peer to another host (NAT rebinding).
        if !authenticated && from.ip().to_canonical() != p.addr.ip().to_canonical() {
            return self.drop(DropReason::WrongSource);
        }
        if p.addr != from {
            if p.confirmed {
                tracing::info!(peer = %h.sender, old = %p.addr, new = %from, "peer's UDP address changed");
            }
            p.addr = from;
        }
        p.confirmed = true;
        p.last_rx = Some(now);
        match h.kind {
            Kind::Heartbeat => {
                let Ok(beat) = Beat::parse(&data[HEADER_LEN..body_end]) else {
                    return self.drop(DropReason::Malformed);
                };
                p.note_beat(&beat);
                if let Some(echo) = beat.echo {
                    p.heard_us(echo);
                }
                // A probe is padded (its size is set); only the small
                // heartbeat is echoed, since the echo stands for "the
                // path works", not for a size.
                let probe = beat.size != 0;
                if !probe {
                    p.heard_seq = Some(beat.seq);
                }
                // On a settled path the sender takes the echo in our next
                // heartbeat for the ack: half the datagrams of an idle mesh.
                if probe || beat.flags & wire::BEAT_ECHO_OK == 0 {
                    let size = u16::try_from(data.len()).unwrap_or(u16::MAX);
                    let ack = Beat { seq: beat.seq, size, echo: None, ..self.our_beat(now, h.sender) };
                    self.send_beat(h.sender, Kind::HeartbeatAck, ack, 0, tx);
                }
            }
            Kind::HeartbeatAck => {
                let Ok(beat) = Beat::parse(&data[HEADER_LEN..body_end]) else {
                    return self.drop(DropReason::Malformed);
                };
                p.last_ack = Some(now);
                p.answered = true;
                p.note_beat(&beat);
                let probe = beat.size == p.pmtu.probe && beat.seq == p.seq;
                p.pmtu.acked(beat.size, probe);
            }
            Kind::Frames => {
                let sender = h.sender;
                let mut off = HEADER_LEN;
                for rec in wire::frames(&data[HEADER_LEN..body_end]) {
                    let Ok(rec) = rec else {
                        self.drop(DropReason::Malformed);
                        break;
                    };
                    let start = off + rec.header_len();
                    off = start + rec.frame.len();
                    self.receive_record(now, sender, rec, start..off, tx, deliver);
                }
            }
        }
    }

    fn receive_record(
        &mut self,
        now: Instant,
        sender: PeerName,
        rec: FrameRecord<'_>,
        range: std::ops::Range<usize>,
        tx: &mut TxQueue,
        deliver: &mut Vec<Delivery>,
    ) {
        if let Some(p) = self.peers.get_mut(&sender) {
            p.counters.rx_frames += 1;
            p.counters.rx_bytes += rec.frame.len() as u64;
        }
        let ourself = self.cfg.ourself;
        if rec.origin == ourself {
            // Our own frame came back: a routing loop while routes settle.
            return;
        }
        if let Some(p) = rec.piece {
            let end = u64::from(p.offset) + rec.frame.len() as u64;
            if end > u64::from(p.total) || p.total as usize > MAX_PIECED_FRAME {
                return self.drop(DropReason::Malformed);
            }
        }
        if rec.piece.is_none_or(|p| p.offset == 0) {
            let Some(src) = packet::src_mac(rec.frame) else {
                return self.drop(DropReason::Runt);
            };
            self.learn(now, src, MacLocation::Peer(rec.origin));
        }
        let mut local = if rec.is_broadcast() { rec.flags & FLAG_NO_LOCAL == 0 } else { rec.dst == ourself };
        // The peer chose this header; whole frames are checked here,
        // reassembled ones once complete.
        if local && rec.piece.is_none() && rec.vnet.is_some_and(|v| !packet::vnet_valid(&v, rec.frame)) {
            self.drop(DropReason::BadVnet);
            local = false;
        }
        if local {
            match rec.piece {
                None => deliver.push(Delivery::Range { range, vnet: rec.vnet }),
                Some(p) => self.reassemble(now, &rec, p, deliver),
            }
        }
        if rec.is_broadcast() {
            self.forward_broadcast(rec, Some(sender), tx, None);
        } else if rec.dst != ourself {
            if self.routes.next_hop(rec.dst) == Some(sender) {
                // Routes disagree for now: never bounce a frame back.
                return self.drop(DropReason::Unreachable);
            }
            self.forward_unicast(rec, tx, None);
        }
    }

    fn reassemble(&mut self, now: Instant, rec: &FrameRecord<'_>, p: Piece, deliver: &mut Vec<Delivery>) {
        let total = p.total as usize;
        if total > MAX_PIECED_FRAME {
            return self.drop(DropReason::Malformed);
        }
        let key = (rec.origin, p.id);
        if p.offset == 0 {
            if self.partial.len() >= MAX_PARTIAL {
                // Evict the oldest: its remaining pieces were lost.
                if let Some(k) = self.partial.iter().min_by_key(|(_, v)| v.started).map(|(k, _)| *k) {
                    let old = self.partial.remove(&k).expect("listed");
                    self.pool.push(old.buf);
                    self.drop(DropReason::Reassembly);
                }
            }
            let mut buf = self.pool.pop().unwrap_or_default();
            buf.clear();
            buf.reserve(total);
            if let Some(old) = self.partial.insert(key, Partial { buf, total, vnet: rec.vnet, started: now }) {
                self.pool.push(old.buf);
                self.drop(DropReason::Reassembly);
            }
        }
        let Some(part) = self.partial.get_mut(&key) else {
            // Its first piece was lost.
            return self.drop(DropReason::Reassembly);
        };
        if part.total != total || part.buf.len() != p.offset as usize || part.buf.len() + rec.frame.len() > total {
            let old = self.partial.remove(&key).expect("present");
            self.pool.push(old.buf);
            return self.drop(DropReason::Reassembly);
        }
        part.buf.extend_from_slice(rec.frame);
        if part.buf.len() == total {
            let done = self.partial.remove(&key).expect("present");
            if done.vnet.is_some_and(|v| !packet::vnet_valid(&v, &done.buf)) {
                self.pool.push(done.buf);
                return self.drop(DropReason::BadVnet);
            }
            deliver.push(Delivery::Owned { frame: done.buf, vnet: done.vnet });
        }
    }

    /// Return a delivered frame's buffer for reuse.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        if self.pool.len() < MAX_PARTIAL {
            self.pool.push(buf);
        }
    }

    fn our_beat(&self, now: Instant, peer: PeerName) -> Beat {
        let p = &self.peers[&peer];
        let mut flags = 0;
        if self.trusts(p.addr.ip()) {
            flags |= wire::BEAT_TRUSTS_YOU;
        }
        let (mut mac, mut port) = ([0u8; 6], 0);
        if let Some((m, pt)) = self.fastpath_offer {
            flags |= wire::BEAT_FASTPATH;
            mac = m;
            port = pt;
            if p.fastpath_heard.is_some_and(|t| now.saturating_duration_since(t) < self.cfg.timeout) {
                flags |= wire::BEAT_FASTPATH_HEARD;
            }
        }
        Beat { seq: p.seq, size: 0, flags, fastpath_mac: mac, fastpath_port: port, echo: p.heard_seq }
    }

    /// Send a heartbeat-kind datagram, padded to `pad_to` bytes.
    fn send_beat(&mut self, peer: PeerName, kind: Kind, beat: Beat, pad_to: usize, tx: &mut TxQueue) {
        let encrypted = self.peers[&peer].crypto.is_some();
        let epoch = self.peers[&peer].epoch;
        let i = self.open_datagram(peer, kind, encrypted, tx);
        let buf = &mut tx.bufs[i];
        beat.write(buf);
        let target = pad_to.saturating_sub(if encrypted { TAG_LEN } else { 0 });
        if buf.len() < target {
            buf.resize(target, 0);
        }
        self.close(peer, i, encrypted, epoch, tx);
    }

    /// The slow heartbeat interval with the peers we have now (see
    /// [`SleeveConfig::flat_peers`]).
    pub fn slow_heartbeat(&self) -> Duration {
        weave_core::time::budgeted_interval(self.cfg.heartbeat, self.peers.len(), self.cfg.flat_peers, self.cfg.max_heartbeat)
    }

    /// How long a path stays up without proof that the peer hears us:
    /// [`SleeveConfig::path_timeout`], scaled with the slow interval.
    fn path_timeout(&self) -> Duration {
        weave_core::time::stretched_timeout(self.cfg.path_timeout, self.cfg.heartbeat, self.slow_heartbeat())
    }

    /// When [`Self::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers.values().map(|p| p.next_beat).chain(self.next_expiry).min()
    }

    /// Send due heartbeats and probes; expire MAC addresses.
    pub fn handle_timeout(&mut self, now: Instant, tx: &mut TxQueue) {
        // Slow heartbeats due within the next half interval go now too: the
        // peers' rounds fall into step, and an idle router wakes once per
        // round for all of them rather than once per peer.
        if !self.peers.values().any(|p| p.next_beat <= now) {
            return self.expire(now);
        }
        let slow = self.slow_heartbeat();
        let path_timeout = self.path_timeout();
        let early = now + slow / 2;
        let due: Vec<PeerName> = self.peers.iter().filter(|(_, p)| p.next_beat <= now || (p.next_beat <= early && p.slow)).map(|(n, _)| *n).collect();
        for n in due {
            let (fast, probe) = {
                let est = {
                    let p = &self.peers[&n];
                    self.established(now, p)
                };
                let p = self.peers.get_mut(&n).expect("listed");
                let busy = p.unicast_tx != p.tx_at_verify;
                let was_verifying = p.pmtu.verifying;
                p.pmtu.end_round(busy);
                if p.pmtu.verifying && !was_verifying {
                    p.tx_at_verify = p.unicast_tx;
                }
                p.seq = p.seq.wrapping_add(1);
                p.beat_sent.rotate_right(1);
                p.beat_sent[0] = Some(now);
                let settled = p.pmtu.settled();
                // Searching, or re-checking a verification that failed.
                let rechecking = p.pmtu.verifying && p.pmtu.misses > 0;
                // The last proof that the peer hears us is getting old (an
                // echo or a heartbeat was lost): ask at the fast rate, for
                // acks, before the path would time out. At rest a proof is
                // one or two rounds old (on a round clock both ends send at
                // once, and the echo of a round's heartbeat often comes
                // with the next round), so that is never stale.
                let stale_after = (path_timeout / 2).max(slow * 5 / 2);
                let stale = p.last_ack.is_none_or(|t| now.saturating_duration_since(t) >= stale_after);
                (!est || !settled || rechecking || stale, (!settled || p.pmtu.verifying).then_some(p.pmtu.probe))
            };
            let mut beat = self.our_beat(now, n);
            // Settled and not probing: the peer's next heartbeat (due
            // within an interval) echoes this one, which is ack enough.
            // While establishing, searching, verifying or stale, acks come
            // at once.
            if !fast && probe.is_none() {
                beat.flags |= wire::BEAT_ECHO_OK;
            }
            self.send_beat(n, Kind::Heartbeat, beat, 0, tx);
            if let Some(size) = probe {
                let b = Beat { size, flags: beat.flags & !wire::BEAT_ECHO_OK, ..beat };
                self.send_beat(n, Kind::Heartbeat, b, usize::from(size), tx);
            }
            let p = self.peers.get_mut(&n).expect("listed");
            // Fast rounds stay fast while the peer answers (an MTU search);
            // unanswered, they back off: under load, or towards a peer that
            // is not there, 100 ms rounds to every peer would feed the load.
            let gap = if !fast {
                slow
            } else if p.answered {
                self.cfg.fast_heartbeat
            } else {
                (p.fast_gap * 2).clamp(self.cfg.fast_heartbeat, (self.cfg.heartbeat / 2).max(self.cfg.fast_heartbeat))
            };
            p.fast_gap = if fast { gap } else { Duration::ZERO };
            p.answered = false;
            p.next_beat = if fast { now + gap } else { weave_core::time::next_round(self.cfg.round_clock.as_ref(), now, gap) };
            p.slow = !fast;
        }
        self.expire(now);
    }

    /// Reassembly and MAC expiry.
    fn expire(&mut self, now: Instant) {
        let stale: Vec<_> = self.partial.iter().filter(|(_, p)| now.saturating_duration_since(p.started) > Duration::from_secs(1)).map(|(k, _)| *k).collect();
        for k in stale {
            let old = self.partial.remove(&k).expect("listed");
            self.pool.push(old.buf);
            self.drop(DropReason::Reassembly);
        }
        if self.next_expiry.is_none_or(|t| t <= now) {
            let expiry = self.cfg.mac_expiry;
            self.macs.retain(|_, e| now.saturating_duration_since(e.seen) < expiry);
            self.mac_counts.clear();
            for e in self.macs.values() {
                *self.mac_counts.entry(e.at).or_default() += 1;
            }
            self.next_expiry = Some(now + expiry / 10);
        }
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(m: &Mac) -> String {
    format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
}
