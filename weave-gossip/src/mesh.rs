//! The mesh state machine: connections, topology propagation, routes,
//! gossip channels and heartbeats. Sans-IO.
//!
//! Call order: after a connection's handshake completes call
//! [`Mesh::add_connection`]; feed every message it receives to
//! [`Mesh::handle_message`] and its end to [`Mesh::remove_connection`]; call
//! [`Mesh::handle_timeout`] when [`Mesh::poll_timeout`] is due. After each
//! call drain [`Mesh::poll_transmit`] (send each message on its connection)
//! and [`Mesh::poll_event`] (a `CloseConnection` event must be obeyed).
//!
//! Propagation: a change travels as a delta — only the records that changed
//! — flooded to every neighbour, and each peer relays only what was new to
//! it. Anti-entropy sends one neighbour a 24-byte digest of everything held;
//! only when digests differ do the peers compare per-bucket digests, then the
//! versions in the differing buckets, then exchange just the records that
//! differ. Steady-state traffic per peer is therefore constant in N.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use rand::seq::IteratorRandom;
use rand::Rng;
use weave_core::rng::SimRng;
use weave_core::{PeerName, PeerUid};

use crate::channel::{BoxError, Channel, Held, Output, Slot, Slots};
use crate::identity::{Identity, PeerKey};
use crate::link::{Established, MAX_MESSAGE_LEN};
use crate::proto::{
    Body, ChannelDigest, ChannelDigests, ChannelMsg, Envelope, Heartbeat, Referral, TopologyBuckets, TopologyDigest, TopologyRequest, TopologyUpdate,
    TopologyVersions,
};
use crate::routes::Routes;
use crate::topology::{ConnectionInfo, InvalidRecord, PeerRecord, Topology, BUCKETS};

/// A connection handle, chosen by the driver.
pub type ConnId = u64;

/// Most records one update message may carry.
const MAX_RECORDS_PER_MESSAGE: usize = 10_000;

/// The longest heartbeat interval a neighbour may announce (15 minutes).
const MAX_PEER_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(900);

/// How long a connection may stay silent: [`MeshConfig::read_timeout`],
/// scaled by how much longer than ours the neighbour's heartbeat interval is.
fn read_timeout(cfg: &MeshConfig, peer_interval: Duration) -> Duration {
    weave_core::time::stretched_timeout(cfg.read_timeout, cfg.heartbeat_interval, peer_interval)
}

/// Mesh settings; [`MeshConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MeshConfig {
    /// Our name.
    pub name: PeerName,
    /// Our nickname.
    pub nickname: String,
    /// Our UID for this start.
    pub uid: PeerUid,
    /// Heartbeat on every connection this often (default 30 s, as Weave
    /// Net's mesh: at rest each heartbeat is a wake-up, one per peer) while
    /// we have at most [`Self::heartbeat_flat_peers`] connections.
    pub heartbeat_interval: Duration,
    /// With more connections than this (default 32), the heartbeat interval
    /// is [`Self::heartbeat_interval`] times ⌈connections ÷ this⌉, so an
    /// idle router sends at most this many heartbeats per interval whatever
    /// the size of the mesh. Each heartbeat tells its interval, and the
    /// receiver allows two of them (as [`Self::read_timeout`] allows two
    /// default ones): a large mesh notices a silently lost host later (a
    /// router that stops closes its connections at once).
    pub heartbeat_flat_peers: usize,
    /// The longest heartbeat interval (default 240 s).
    pub max_heartbeat_interval: Duration,
    /// The clock heartbeat rounds start on: peers whose clocks agree send
    /// theirs together, so an idle peer's wake-ups for them coalesce. `None`
    /// (the default; the tokio driver sets the system clock): rounds keep
    /// the phase of the first connection.
    pub round_clock: Option<weave_core::time::RoundClock>,
    /// Close a connection silent for this long (default 65 s: two
    /// heartbeats lost; Weave Net allows 60 s), or for as many times longer
    /// as the neighbour's announced heartbeat interval is longer than
    /// [`Self::heartbeat_interval`].
    pub read_timeout: Duration,
    /// Compare topology digests with one random neighbour this often,
    /// ±50 % jitter (default 5 s).
    pub anti_entropy_interval: Duration,
    /// Send each channel's full state to one random neighbour this often,
    /// ±50 % jitter (default 30 s).
    pub channel_gossip_interval: Duration,
    /// Route recalculation and garbage collection are coalesced over this
    /// window after a topology change (default 20 ms)...
    pub recalc_delay: Duration,
    /// ...and run at most once per this interval (default 200 ms), or per
    /// [`RECALC_GAP_PER_LINK`] for each link end of the last result if that
    /// is longer (0.5 s for a full mesh of 100): while a large mesh forms,
    /// records change hundreds of times a second, and every recalculation
    /// walks the whole graph. Messages meanwhile follow the routes as they
    /// stand.
    pub recalc_interval: Duration,
    /// Bound on one message (default [`MAX_MESSAGE_LEN`]).
    pub max_message_len: usize,
    /// Topology changes go to each neighbour at most once per this window,
    /// as the latest record of each peer that changed (default 50 ms): a
    /// record that changes many times while a mesh forms is sent once. The
    /// window grows by [`UPDATE_DELAY_PER_CONN`] for each connection we
    /// have (4 s for a full mesh of 200): while a large mesh forms, every
    /// join changes every peer's record, and each version sent costs every
    /// peer a signature check (about 50 µs: `target/release/gossip`
    /// measures it), so a router receives at most 1 / 20 ms of them a
    /// second, whatever N.
    pub update_delay: Duration,
    /// Our signing key (see [`crate::identity`]); `None` makes a new one from
    /// the mesh's RNG. A router keeps its key across restarts.
    pub identity: Option<Identity>,
    /// Bytes of records one update round may queue towards one neighbour
    /// (default `None`: no bound). Past it the rest waits, merged, and the
    /// connection counts as backlogged until the I/O layer says it drained
    /// ([`Mesh::set_backlogged`]); only an I/O layer that says so may set
    /// this. A new neighbour needs every record, and in a full mesh of 200
    /// forming, a router sent each of its new neighbours the whole
    /// topology at once (about 1.4 MB each): hundreds of MB queued.
    pub update_round_bytes: Option<usize>,
}

impl MeshConfig {
    /// Defaults for a peer.
    pub fn new(name: PeerName, nickname: impl Into<String>, uid: PeerUid) -> Self {
        Self {
            name,
            nickname: nickname.into(),
            uid,
            heartbeat_interval: Duration::from_secs(30),
            heartbeat_flat_peers: 32,
            max_heartbeat_interval: Duration::from_secs(240),
            round_clock: None,
            read_timeout: Duration::from_secs(65),
            anti_entropy_interval: Duration::from_secs(5),
            channel_gossip_interval: Duration::from_secs(30),
            recalc_delay: Duration::from_millis(20),
            recalc_interval: Duration::from_millis(200),
            max_message_len: MAX_MESSAGE_LEN,
            update_delay: Duration::from_millis(50),
            identity: None,
            update_round_bytes: None,
        }
    }
}

/// The least time between two route recalculations per link end of the
/// graph (see [`MeshConfig::recalc_interval`]): it keeps the share of time
/// spent recalculating flat as a mesh grows.
pub const RECALC_GAP_PER_LINK: Duration = Duration::from_micros(50);

/// The peer at the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemotePeer {
    /// Its name.
    pub name: PeerName,
    /// Its nickname.
    pub nickname: String,
    /// Its UID.
    pub uid: PeerUid,
    /// The connection id the initiator chose (tie-breaks duplicates).
    pub conn_id: u64,
    /// Its listen address (`ip:port`): the address we dialed, or its source
    /// IP with the listen port it announced.
    pub address: String,
    /// Whether we dialed.
    pub outbound: bool,
    /// The protocol version the connection speaks (record deltas from
    /// [`RECORD_DELTAS`] on).
    pub version: u8,
}

/// The protocol version from which peers send each other record changes
/// as deltas ([`crate::proto::RecordDeltaMsg`]).
pub const RECORD_DELTAS: u8 = 2;

/// The protocol version from which channel anti-entropy compares digests
/// ([`crate::proto::ChannelDigests`]) before sending any full state.
pub const CHANNEL_DIGESTS: u8 = 3;

/// The protocol version from which anti-entropy offers records instead of
/// pushing them: the side that finds itself newer sends the versions
/// (a [`TopologyVersions`] marked `offer`), and the other asks only for
/// those it has not already asked another neighbour for. A joiner that
/// links to N peers at once then gets each record about once, not N
/// times (in a 200-router mesh forming, the newest routers took in
/// 1.4 MB of topology from each of their ~170 new neighbours).
pub const RECORD_OFFERS: u8 = 4;

/// Bytes of records packed into one update message at most: the receiver
/// holds a message's whole frame until it is complete, one per neighbour
/// (half of [`MAX_MESSAGE_LEN`], the bound before, held 25 MB of buffers in
/// a router of a 200-router mesh forming), and a heartbeat waits behind it.
const UPDATE_MESSAGE_BYTES: usize = 64 << 10;

/// How long a record asked of one neighbour is not asked of another.
const REQUEST_PATIENCE: Duration = Duration::from_secs(10);
/// Most outstanding requests remembered (the rest are asked for anyway).
const MAX_REQUESTED: usize = 1 << 16;

/// Most channels one [`ChannelDigests`] may name.
const MAX_DIGESTED_CHANNELS: usize = 64;

/// A channel's full state, hashed (16 bytes of BLAKE2s): equal states give
/// equal digests, so at rest anti-entropy sends only these.
fn channel_sum(states: &[Vec<u8>]) -> Vec<u8> {
    use blake2::{Blake2s256, Digest};
    let mut h = Blake2s256::new();
    for s in states {
        h.update((s.len() as u64).to_le_bytes());
        h.update(s);
    }
    h.finalize()[..16].to_vec()
}

impl RemotePeer {
    /// From a completed handshake and the address it is reachable at.
    pub fn from_established(e: &Established, address: String, outbound: bool) -> Self {
        Self { name: e.name, nickname: e.nickname.clone(), uid: e.uid, conn_id: e.conn_id, address, outbound, version: e.version }
    }
}

/// Why [`Mesh::add_connection`] refused a connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddConnectionError {
    /// The connection leads back to this very router. Never retried.
    #[error("cannot connect to ourself")]
    SelfConnection,
    /// Another router uses our peer name. Never retried.
    #[error("peer name collision: {0} is our name too (its uid {1}, ours {2})")]
    NameCollision(PeerName, PeerUid, PeerUid),
    /// We already have a connection to this peer, and it wins the tie-break.
    #[error("duplicate connection to {0}")]
    Duplicate(PeerName),
    /// We are at our connection limit: the peer gets a referral
    /// ([`crate::node::Node::referral`]) instead.
    #[error("at the connection limit of {0}")]
    AtLimit(usize),
}

impl AddConnectionError {
    /// Whether dialing the same target again is pointless.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::SelfConnection | Self::NameCollision(..))
    }
}

/// Why the mesh wants a connection closed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// Nothing received for the read timeout.
    Timeout,
    /// Superseded by a duplicate connection that won the tie-break.
    Duplicate,
    /// The peer restarted (new UID) and reconnected.
    Replaced,
    /// The peer sent something invalid.
    Protocol(String),
    /// The peer is at its connection limit and referred us to others.
    Referred,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout => f.write_str("no message within the read timeout"),
            Self::Duplicate => f.write_str("duplicate connection"),
            Self::Replaced => f.write_str("peer restarted and reconnected"),
            Self::Protocol(e) => write!(f, "protocol error: {e}"),
            Self::Referred => f.write_str("the peer is at its connection limit and referred us to others"),
        }
    }
}

/// What the mesh reports to its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MeshEvent {
    /// Close this connection (the mesh has already forgotten it).
    CloseConnection {
        /// Which.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
    /// A peer became known.
    PeerAdded(PeerName),
    /// A peer became unreachable and was garbage-collected.
    PeerRemoved(PeerName),
    /// The topology changed (routes were recalculated).
    TopologyChanged,
    /// Another live router uses our peer name (it keeps outbidding our
    /// record). Give one of them another `--name`.
    NameCollision(PeerUid),
    /// A peer at its connection limit referred us to these listen
    /// addresses; a [`MeshEvent::CloseConnection`] for `conn` follows.
    Referred {
        /// The connection it came on.
        conn: ConnId,
        /// The peer.
        peer: PeerName,
        /// Whom to try instead (at most [`MAX_REFERRAL`]).
        addresses: Vec<String>,
    },
}

/// A message to send on a connection.
#[derive(Debug, Clone, PartialEq)]
pub struct Transmit {
    /// The connection.
    pub conn: ConnId,
    /// The message: one copy shared by every connection it goes to (a
    /// record update to 199 neighbours is built and held once).
    pub msg: Arc<Envelope>,
}

/// A protocol violation by a peer; the connection should be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A record failed validation.
    #[error(transparent)]
    InvalidRecord(#[from] InvalidRecord),
    /// A message was structurally wrong.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
}

/// An embedder's data rejected by its channel (logged and counted; the
/// connection stays up, since the peer may run another version).
#[derive(Debug, thiserror::Error)]
#[error("channel {channel}: {source}")]
pub struct ChannelError {
    /// The channel.
    pub channel: String,
    /// What the channel said.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// A channel send failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// No established path to the destination.
    #[error("no route to {0}")]
    NoRoute(PeerName),
    /// The payload exceeds the message bound.
    #[error("payload of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Counters for status and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MeshStats {
    /// Messages handled.
    pub msgs_in: u64,
    /// Messages queued for sending.
    pub msgs_out: u64,
    /// Unicasts dropped for lack of a route.
    pub dropped_no_route: u64,
    /// Channel data a channel rejected.
    pub channel_errors: u64,
    /// Channel messages for channels we do not know, relayed or dropped.
    pub unknown_channel: u64,
    /// Newer peer records refused: not signed by the key of their name.
    pub records_refused: u64,
    /// Full channel states sent because a neighbour's digest differed.
    pub channel_states_sent: u64,
}

/// Sizes of what a [`Mesh`] holds (see [`Mesh::load`]), for diagnosing
/// load: none of them should grow without bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MeshLoad {
    /// Peer records held.
    pub records: usize,
    /// Connections those records list, in all.
    pub record_connections: usize,
    /// Records waiting for the next update round, over all neighbours.
    pub pending: usize,
    /// Record versions we believe neighbours hold, over all neighbours.
    pub holds: usize,
    /// Neighbours whose updates wait for their queue to drain.
    pub backlogged: usize,
    /// Messages not yet taken by [`Mesh::poll_transmit`].
    pub transmits: usize,
}

struct Conn {
    remote: RemotePeer,
    last_rx: Instant,
    next_heartbeat: Instant,
    /// The neighbour's heartbeat interval, as its last heartbeat told.
    peer_interval: Duration,
    /// Peers whose records this neighbour gets at the next update.
    pending: BTreeSet<PeerName>,
    /// The version (and incarnation) of each peer's record this neighbour
    /// holds, as far as we know (it sent it, or we did): that one is not
    /// sent again, and a later version of the same incarnation goes to it
    /// as a delta from this one. Kept only if it speaks [`RECORD_DELTAS`].
    holds: HashMap<PeerName, (u64, PeerUid)>,
    /// What we sent has not been written yet (see
    /// [`Mesh::set_backlogged`]): updates wait in `pending`, where later
    /// versions of a record replace earlier ones.
    backlogged: bool,
}

impl Conn {
    fn deltas(&self) -> bool {
        self.remote.version >= RECORD_DELTAS
    }

    /// The neighbour holds `r`'s version at least.
    fn saw(&mut self, r: &PeerRecord) {
        if self.deltas() {
            let key = (r.version, r.uid);
            let v = self.holds.entry(r.name).or_insert(key);
            *v = (*v).max(key);
        }
    }
}

/// The mesh. See the module docs for the call order.
pub struct Mesh {
    cfg: MeshConfig,
    topo: Topology,
    routes: Routes,
    recalc_at: Option<Instant>,
    last_recalc: Option<Instant>,
    known: BTreeSet<PeerName>,
    conns: BTreeMap<ConnId, Conn>,
    /// Bumped whenever a connection is added or removed.
    conn_epoch: u64,
    by_peer: HashMap<PeerName, ConnId>,
    channels: Slots,
    transmits: VecDeque<Transmit>,
    events: VecDeque<MeshEvent>,
    rng: SimRng,
    next_anti_entropy: Instant,
    next_channel_gossip: Instant,
    /// A peer (re)joined the topology: a few neighbours get every channel's
    /// state again (channels may have dropped that peer's data while it was
    /// gone, and its deltas may have passed by meanwhile).
    channel_resync: bool,
    announce: bool,
    /// Set when our connections changed since our record last said what
    /// they are: when to bring it up to date.
    settle_at: Option<Instant>,
    /// When each peer's current record arrived, for the records that came
    /// in the last [`GC_GRACE`].
    arrived: HashMap<PeerName, Instant>,
    /// When the pending records go out.
    update_at: Option<Instant>,
    /// Records asked of a neighbour: the version offered, and when.
    requested: HashMap<PeerName, (u64, Instant)>,
    /// No connection's heartbeat or read timeout is due before this (it
    /// may be early, never late: a message moving a read timeout later
    /// leaves it), so that asking for the next deadline does not walk
    /// every connection.
    conn_deadline: Option<Instant>,
    stats: MeshStats,
}

impl Mesh {
    /// A mesh with no connections yet.
    pub fn new(cfg: MeshConfig, now: Instant, mut rng: SimRng) -> Self {
        let identity = cfg.identity.clone().unwrap_or_else(|| Identity::generate(&mut rng));
        let topo = Topology::new(identity, cfg.name, cfg.nickname.clone(), cfg.uid);
        let routes = Routes::calculate(&topo);
        let next_anti_entropy = now + jittered(&mut rng, cfg.anti_entropy_interval);
        let next_channel_gossip = now + jittered(&mut rng, cfg.channel_gossip_interval);
        Self {
            known: BTreeSet::from([cfg.name]),
            cfg,
            topo,
            routes,
            recalc_at: None,
            last_recalc: None,
            conns: BTreeMap::new(),
            conn_epoch: 0,
            by_peer: HashMap::new(),
            channels: BTreeMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            rng,
            next_anti_entropy,
            next_channel_gossip,
            channel_resync: false,
            announce: false,
            settle_at: None,
            arrived: HashMap::new(),
            update_at: None,
            conn_deadline: None,
            requested: HashMap::new(),
            stats: MeshStats::default(),
        }
    }

    /// Our signing key: channels sign what we own with it (see
    /// [`crate::identity`]).
    pub fn identity(&self) -> &Identity {
        self.topo.identity()
    }

    /// The key a peer's record is signed with (ours included), while the
    /// peer is in the topology.
    pub fn peer_key(&self, peer: PeerName) -> Option<PeerKey> {
        self.topo.key_of(peer)
    }

    /// Our name.
    pub fn name(&self) -> PeerName {
        self.cfg.name
    }

    /// The settings.
    pub fn config(&self) -> &MeshConfig {
        &self.cfg
    }

    /// The topology as we know it.
    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    /// Routes as of the last recalculation: a topology change shows here
    /// within [`MeshConfig::recalc_delay`], or [`MeshConfig::recalc_interval`]
    /// after the previous recalculation (a [`MeshEvent::TopologyChanged`]
    /// follows each).
    pub fn routes(&mut self) -> &mut Routes {
        &mut self.routes
    }

    /// Our connections.
    pub fn connections(&self) -> impl Iterator<Item = (ConnId, &RemotePeer)> {
        self.conns.iter().map(|(id, c)| (*id, &c.remote))
    }

    /// The connection to a peer, if any.
    pub fn connection_to(&self, peer: PeerName) -> Option<ConnId> {
        self.by_peer.get(&peer).copied()
    }

    /// Changes whenever a connection is added or removed.
    pub fn conn_epoch(&self) -> u64 {
        self.conn_epoch
    }

    /// Listen addresses of our connections (targets a connection covers).
    pub fn connected_addresses(&self) -> BTreeSet<String> {
        self.conns.values().map(|c| c.remote.address.clone()).collect()
    }

    /// Listen addresses of peers we know of but have no connection to: what
    /// discovery should dial, each with whether we should dial first. Of
    /// two peers that discover each other, the one with the higher name
    /// dials at once (its connection is the one both keep, see
    /// [`Mesh::add_connection`]); the other waits a while for it, so a
    /// forming mesh does not handshake every pair twice.
    ///
    /// Only established connections count, each address once, at most
    /// `max` of them (the connection limit), so a peer listing made-up
    /// connections cannot make the mesh dial a list of its choosing. Reachability is not required: while a mesh forms,
    /// routes lag the records, and a candidate that came and went would
    /// restart its dial delay each time.
    pub fn discovery_candidates(&self, max: usize) -> Vec<(String, bool)> {
        let me = self.cfg.name;
        let mut seen = std::collections::HashSet::new();
        let mut found: Vec<(usize, u64, &str, bool)> = self
            .listed_peers()
            .filter(|c| !self.by_peer.contains_key(&c.peer))
            .filter(|c| seen.insert(c.address.as_str()))
            .map(|c| (self.load_of(c.peer), spread(me, c.peer), c.address.as_str(), me > c.peer))
            .collect();
        // The least connected first (under a connection limit only the
        // first few are dialed): they are the likely ones to have room,
        // and links to them spread the load. Ties in an order of our own,
        // so that joiners do not all pick the same peers.
        if found.len() > max {
            found.select_nth_unstable(max);
            found.truncate(max);
        }
        found.sort_unstable();
        found.into_iter().map(|(_, _, a, eager)| (a.to_owned(), eager)).collect()
    }
    /// Other peers as established connections in the records list them,
    /// with a listen address (a peer may be listed many times).
    fn listed_peers(&self) -> impl Iterator<Item = &ConnectionInfo> {
        let me = self.cfg.name;
        self.topo.records().flat_map(|r| r.connections.iter()).filter(move |c| c.established && c.peer != me && !c.address.is_empty())
    }

    /// How many connections `peer`'s record lists (unknown: as many as can be).
    fn load_of(&self, peer: PeerName) -> usize {
        self.topo.get(peer).map_or(usize::MAX, |r| r.connections.len())
    }

    /// At our connection limit, a link we could give up for `joiner`: only
    /// if the routes do not reach the joiner (it is new, or cut off; a
    /// joiner already in the mesh is referred instead), never one that
    /// `keep` names or whose loss would cut its peer off from us; of the
    /// rest, the one to the most connected peer. A peer that knows only us
    /// thus always gets in, and a full group cannot shut newcomers out.
    pub fn link_to_give_up(&self, joiner: PeerName, keep: impl Fn(ConnId) -> bool) -> Option<ConnId> {
        if self.routes.reachable(joiner) {
            return None;
        }
        self.conns
            .iter()
            .filter(|(&id, c)| !keep(id) && self.routes.reachable_without_link_to(c.remote.name))
            .max_by_key(|(&id, c)| (self.load_of(c.remote.name), std::cmp::Reverse(id)))
            .map(|(&id, _)| id)
    }

    /// What to tell a peer we turn away at our connection limit: listen
    /// addresses of up to [`MAX_REFERRAL`] other peers, the least connected
    /// first, ties at random.
    pub fn referral(&mut self, joiner: PeerName) -> Envelope {
        let mut seen = BTreeSet::new();
        let mut found: Vec<(usize, u64, String)> =
            self.listed_peers().filter(|c| c.peer != joiner).filter(|c| seen.insert(c.peer)).map(|c| (self.load_of(c.peer), 0, c.address.clone())).collect();
        for f in &mut found {
            f.1 = self.rng.random();
        }
        found.sort_unstable();
        let addresses = found.into_iter().take(MAX_REFERRAL).map(|(_, _, a)| a).collect();
        Body::Referral(Referral { addresses }).into()
    }

    /// Counters.
    pub fn stats(&self) -> MeshStats {
        self.stats
    }

    /// What the mesh holds now that grows with the mesh or with load.
    pub fn load(&self) -> MeshLoad {
        let conns = self.conns.values();
        MeshLoad {
            records: self.topo.len(),
            record_connections: self.topo.records().map(|r| r.connections.len()).sum(),
            pending: conns.clone().map(|c| c.pending.len()).sum(),
            holds: conns.clone().map(|c| c.holds.len()).sum(),
            backlogged: conns.filter(|c| c.backlogged).count(),
            transmits: self.transmits.len(),
        }
    }

    /// Register (or replace) a gossip channel that persists nothing. Peers
    /// without it still relay its broadcasts and unicasts.
    pub fn register_channel(&mut self, name: impl Into<String>, channel: Box<dyn Channel>) {
        self.channels.insert(name.into(), Slot::new(channel, false));
    }

    /// Register (or replace) a channel whose state must be saved before
    /// anything it queued or relays leaves: whoever drives the mesh saves
    /// each generation [`Mesh::unsaved_channels`] lists and reports it with
    /// [`Mesh::channel_saved`] (the [`crate::node::Node`] does this).
    pub fn register_persistent_channel(&mut self, name: impl Into<String>, channel: Box<dyn Channel>) {
        self.channels.insert(name.into(), Slot::new(channel, true));
    }

    /// A registered channel, as its own type, to inspect.
    pub fn channel<C: Channel>(&self, name: &str) -> Option<&C> {
        let ch: &dyn Channel = self.channels.get(name)?.channel.as_ref();
        (ch as &dyn std::any::Any).downcast_ref::<C>()
    }

    /// A registered channel, as its own type.
    pub fn channel_mut<C: Channel>(&mut self, name: &str) -> Option<&mut C> {
        let ch: &mut dyn Channel = self.channels.get_mut(name)?.channel.as_mut();
        (ch as &mut dyn std::any::Any).downcast_mut::<C>()
    }

    /// Persistent channels with changes not yet saved: name and generation.
    pub fn unsaved_channels(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.channels.iter().filter(|(_, s)| s.durable && s.unsaved()).map(|(n, s)| (n.as_str(), s.channel.generation()))
    }

    /// The state of channel `name` to save now, with its generation.
    pub fn channel_snapshot(&mut self, name: &str) -> Option<(u64, Vec<u8>)> {
        let s = self.channels.get_mut(name)?;
        Some((s.channel.generation(), s.channel.snapshot()))
    }

    /// Generation `generation` of channel `name` is saved: what waited for
    /// it leaves now.
    pub fn channel_saved(&mut self, now: Instant, name: &str, generation: u64) {
        if let Some(s) = self.channels.get_mut(name) {
            s.mark_saved(now, generation);
        }
        self.flush_channels(now);
    }

    /// Move what the channels queued into the mesh, holding back what
    /// waits for a save. Called by every input method; call it after
    /// changing a channel directly ([`Mesh::channel_mut`]).
    pub fn flush_channels(&mut self, now: Instant) {
        let names: Vec<String> = self.channels.keys().cloned().collect();
        for name in names {
            let Some(slot) = self.channels.get_mut(&name) else { continue };
            while let Some(o) = slot.channel.poll_output() {
                slot.hold(Held::Output(o));
            }
            for item in slot.releasable(now) {
                self.send_held(&name, item);
            }
        }
    }

    fn send_held(&mut self, channel: &str, item: Held) {
        let r = match item {
            Held::Output(Output::Gossip(d)) => self.gossip(channel, d),
            Held::Output(Output::Broadcast(d)) => self.broadcast(channel, d),
            // Unroutable now: a channel that needs it delivered retries.
            Held::Output(Output::Unicast(p, d)) => self.unicast(channel, p, d).or_else(|e| if matches!(e, SendError::NoRoute(_)) { Ok(()) } else { Err(e) }),
            Held::Relay { from, data } => {
                let me = self.cfg.name.as_u64();
                let others: Vec<ConnId> = self.conns.keys().copied().filter(|&c| c != from).collect();
                self.send_to(&others, Body::Gossip(ChannelMsg { channel: channel.to_owned(), src: me, dst: 0, data }));
                Ok(())
            }
        };
        if let Err(e) = r {
            self.channel_error(channel, Box::new(e));
        }
    }

    /// A connection completed its handshake.
    pub fn add_connection(&mut self, now: Instant, conn: ConnId, remote: RemotePeer) -> Result<(), AddConnectionError> {
        if remote.name == self.cfg.name {
            return Err(if remote.uid == self.cfg.uid {
                AddConnectionError::SelfConnection
            } else {
                AddConnectionError::NameCollision(remote.name, remote.uid, self.cfg.uid)
            });
        }
        // A peer we reach already, in this incarnation, shares our view
        // through the mesh: updates and periodic anti-entropy keep it. Only
        // the first link into a component (or to a restarted peer) needs
        // the digest exchange and every channel's full state; a joiner that
        // links to all N peers would otherwise ship O(N) to each of them
        // while the mesh still changes (the largest routers of a 200-router
        // run were the newest, at 180-240 MB).
        let in_sync = self.routes.reachable(remote.name) && self.topo.get(remote.name).is_some_and(|r| r.uid == remote.uid);
        if let Some(&old) = self.by_peer.get(&remote.name) {
            let existing = &self.conns[&old].remote;
            let reason = if existing.uid != remote.uid {
                CloseReason::Replaced
            } else if self.tie_break_key(existing) >= self.tie_break_key(&remote) {
                return Err(AddConnectionError::Duplicate(remote.name));
            } else {
                CloseReason::Duplicate
            };
            self.drop_conn(old);
            self.events.push_back(MeshEvent::CloseConnection { conn: old, reason });
        }
        self.by_peer.insert(remote.name, conn);
        let next_heartbeat = weave_core::time::next_round(self.cfg.round_clock.as_ref(), now, self.cfg.heartbeat_interval);
        let peer_interval = self.cfg.heartbeat_interval;
        self.conns
            .insert(conn, Conn { remote, last_rx: now, next_heartbeat, peer_interval, pending: BTreeSet::new(), holds: HashMap::new(), backlogged: false });
        self.conn_deadline = Some(self.conn_deadline.map_or(next_heartbeat, |t| t.min(next_heartbeat)));
        self.conn_epoch += 1;
        self.our_connections_changed(now);
        if !in_sync {
            let (sum, count) = self.topo.digest();
            self.send(conn, Body::Digest(TopologyDigest { sum: sum.to_le_bytes().to_vec(), count }));
            self.send_channel_states(now, conn);
        }
        self.flush(now);
        Ok(())
    }

    /// Every channel's full state, as gossip to one connection.
    fn send_channel_states(&mut self, now: Instant, conn: ConnId) {
        let names: Vec<String> = self.channels.keys().cloned().collect();
        for name in names {
            self.send_channel_state(now, conn, &name);
        }
    }

    /// Send `channel`'s full state to `conn`; the messages it took. None
    /// to a backlogged neighbour: states converge, and the next round of
    /// channel anti-entropy after it drained repairs what it missed, where
    /// each state queued behind the others (IPAM's grows with N) kept it
    /// backlogged, and filled its queue.
    fn send_channel_state(&mut self, now: Instant, conn: ConnId, channel: &str) -> usize {
        if self.is_backlogged(conn) {
            return 0;
        }
        let Some(slot) = self.channels.get_mut(channel) else { return 0 };
        let states = slot.channel.full_state(now);
        let (count, me) = (states.len(), self.cfg.name.as_u64());
        for data in states {
            self.send(conn, Body::Gossip(ChannelMsg { channel: channel.to_owned(), src: me, dst: 0, data }));
        }
        count
    }

    /// One round of channel anti-entropy with `conn`: digests to a peer
    /// that compares them, full states to an older one.
    fn channel_anti_entropy(&mut self, now: Instant, conn: ConnId) {
        if self.conns.get(&conn).is_none_or(|c| c.remote.version < CHANNEL_DIGESTS) {
            return self.send_channel_states(now, conn);
        }
        let channels: Vec<ChannelDigest> =
            self.channels.iter_mut().map(|(n, s)| ChannelDigest { channel: n.clone(), sum: channel_sum(&s.channel.digest_state(now)) }).collect();
        if !channels.is_empty() {
            self.send(conn, Body::ChannelDigests(ChannelDigests { channels, reply: false }));
        }
    }

    /// A neighbour's channel digests: our full state of each channel that
    /// differs, and (unless this is an answer) our digests of those.
    fn on_channel_digests(&mut self, now: Instant, conn: ConnId, d: ChannelDigests) -> Result<(), ProtocolError> {
        if d.channels.len() > MAX_DIGESTED_CHANNELS || d.channels.iter().any(|c| c.sum.len() > 64) {
            return Err(ProtocolError::Malformed("channel digests"));
        }
        let mut answer = Vec::new();
        for theirs in d.channels {
            let Some(slot) = self.channels.get_mut(&theirs.channel) else {
                if !d.reply {
                    answer.push(ChannelDigest { channel: theirs.channel, sum: Vec::new() });
                }
                continue;
            };
            let sum = channel_sum(&slot.channel.digest_state(now));
            if sum == theirs.sum {
                continue;
            }
            self.stats.channel_states_sent += self.send_channel_state(now, conn, &theirs.channel) as u64;
            if !d.reply {
                answer.push(ChannelDigest { channel: theirs.channel, sum });
            }
        }
        if !answer.is_empty() {
            self.send(conn, Body::ChannelDigests(ChannelDigests { channels: answer, reply: true }));
        }
        Ok(())
    }

    /// A connection ended (closed by either side, or by a `CloseConnection`
    /// event). Unknown ids are ignored.
    pub fn remove_connection(&mut self, now: Instant, conn: ConnId) {
        if self.drop_conn(conn) {
            self.our_connections_changed(now);
            self.flush(now);
        }
    }

    /// Whether what was sent on `conn` is still waiting to be written (the
    /// peer or its link is slow). While it is, topology updates for it are
    /// held back and merged: it then gets the latest version of each
    /// record once, instead of every version queued behind one another.
    /// Without this a neighbour slower than the mesh forming around it
    /// (200 routers on two cores) had megabytes of stale versions queued,
    /// its heartbeats stuck behind them, and lost the connection.
    pub fn set_backlogged(&mut self, now: Instant, conn: ConnId, backlogged: bool) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        let released = c.backlogged && !backlogged;
        c.backlogged = backlogged;
        if released {
            self.schedule_update(now);
        }
    }

    /// Whether updates for `conn` wait for its queue to drain (see
    /// [`Mesh::set_backlogged`] and [`MeshConfig::update_round_bytes`]).
    pub fn is_backlogged(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(|c| c.backlogged)
    }

    fn drop_conn(&mut self, conn: ConnId) -> bool {
        let Some(c) = self.conns.remove(&conn) else {
            return false;
        };
        self.conn_epoch += 1;
        if self.by_peer.get(&c.remote.name) == Some(&conn) {
            self.by_peer.remove(&c.remote.name);
        }
        true
    }

    /// Between two connections to one peer, both ends keep the one with the
    /// higher key: dialed by the higher name, then the lower connection id.
    fn tie_break_key(&self, r: &RemotePeer) -> (PeerName, std::cmp::Reverse<u64>) {
        let initiator = if r.outbound { self.cfg.name } else { r.name };
        (initiator, std::cmp::Reverse(r.conn_id))
    }

    /// Our connections changed: our record follows at the next timeout
    /// (see [`Mesh::settle_our_record`]). Not later: a settle delayed by
    /// 20 ms let peers collect a newcomer as unreachable, and one joiner in
    /// the simulation took 5 s to be known everywhere instead of 0.3 s.
    fn our_connections_changed(&mut self, now: Instant) {
        self.settle_at.get_or_insert(now);
    }

    /// Write our connections into our record (a new version, signed) if
    /// they differ from what it says: changes within one input (a
    /// connection replaced, several closed) cost one version, and one that
    /// leaves them as they were costs none. Each version goes to every
    /// peer, which checks its signature and recalculates routes. Returns
    /// whether our record changed (routes need recalculating).
    fn settle_our_record(&mut self, now: Instant) -> bool {
        if self.settle_at.take().is_none() {
            return false;
        }
        let conns = self
            .conns
            .values()
            .map(|c| ConnectionInfo { peer: c.remote.name, address: c.remote.address.clone(), outbound: c.remote.outbound, established: true })
            .collect();
        if !self.topo.set_our_connections(conns) {
            return false;
        }
        let me = self.cfg.name;
        for c in self.conns.values_mut() {
            c.pending.insert(me);
        }
        self.schedule_update(now);
        true
    }

    fn topology_changed(&mut self, now: Instant) {
        let gap = self.cfg.recalc_interval.max(RECALC_GAP_PER_LINK.saturating_mul(u32::try_from(self.routes.link_ends()).unwrap_or(u32::MAX)));
        let earliest = self.last_recalc.map_or(now, |t| t + gap);
        let at = (now + self.cfg.recalc_delay).max(earliest);
        // Sooner than a recalculation set for the end of a grace period.
        self.recalc_at = Some(self.recalc_at.map_or(at, |t| t.min(at)));
    }

    /// A message arrived on `conn`. An error means the peer broke the
    /// protocol: close the connection (the mesh state is unchanged by the
    /// offending message).
    pub fn handle_message(&mut self, now: Instant, conn: ConnId, msg: Envelope) -> Result<(), ProtocolError> {
        let Some(c) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        c.last_rx = now;
        self.stats.msgs_in += 1;
        let result = match msg.body {
            None => Err(ProtocolError::Malformed("empty message")),
            Some(Body::Heartbeat(h)) => {
                // Older peers do not tell theirs; a hostile one gains nothing
                // from a long one but a connection it could keep alive anyway.
                c.peer_interval = match h.interval_ms {
                    0 => self.cfg.heartbeat_interval,
                    ms => Duration::from_millis(u64::from(ms)).min(MAX_PEER_HEARTBEAT_INTERVAL),
                };
                Ok(())
            }
            Some(Body::Update(u)) => self.on_update(now, conn, u),
            Some(Body::Digest(d)) => {
                let (sum, count) = self.topo.digest();
                if d.sum != sum.to_le_bytes() || d.count != count {
                    let digests = self.topo.bucket_digests().to_vec();
                    self.send(conn, Body::Buckets(TopologyBuckets { digests }));
                }
                Ok(())
            }
            Some(Body::Buckets(b)) => {
                if b.digests.len() != BUCKETS {
                    return Err(ProtocolError::Malformed("bucket digest count"));
                }
                let ours = self.topo.bucket_digests();
                let differ: Vec<usize> = (0..BUCKETS).filter(|&i| ours[i] != b.digests[i]).collect();
                // One message per group of buckets, each under the entry limit.
                let mut group = BTreeSet::new();
                let mut entries = Vec::new();
                for i in differ {
                    let more = self.topo.versions_in(&BTreeSet::from([i]));
                    if !group.is_empty() && entries.len() + more.len() > MAX_RECORDS_PER_MESSAGE {
                        self.send_versions(conn, std::mem::take(&mut group), std::mem::take(&mut entries));
                    }
                    group.insert(i);
                    entries.extend(more);
                }
                if !group.is_empty() {
                    self.send_versions(conn, group, entries);
                }
                Ok(())
            }
            Some(Body::Versions(v)) => {
                if v.buckets.iter().any(|&b| b as usize >= BUCKETS) || v.entries.len() > MAX_RECORDS_PER_MESSAGE {
                    return Err(ProtocolError::Malformed("versions"));
                }
                if v.offer {
                    let newer: Vec<(PeerName, u64)> = v
                        .entries
                        .iter()
                        .filter_map(|e| Some((PeerName::from_u64(e.name)?, PeerUid::new(e.uid)?, e.version)))
                        .filter(|&(n, uid, version)| self.topo.is_news(n, (version, uid)))
                        .map(|(n, _, version)| (n, version))
                        .collect();
                    self.request(now, conn, newer);
                } else {
                    let buckets: BTreeSet<usize> = v.buckets.iter().map(|&b| b as usize).collect();
                    let (ours_newer, wanted) = self.topo.compare(&buckets, &v.entries);
                    if self.conns[&conn].remote.version >= RECORD_OFFERS {
                        self.offer(conn, &ours_newer);
                    } else {
                        self.queue_records(now, conn, ours_newer);
                    }
                    self.request(now, conn, wanted);
                }
                Ok(())
            }
            Some(Body::Request(r)) => {
                if r.names.len() > MAX_RECORDS_PER_MESSAGE {
                    return Err(ProtocolError::Malformed("request too long"));
                }
                // Each record once, however often it is asked for.
                let names: BTreeSet<PeerName> = r.names.iter().filter_map(|&n| PeerName::from_u64(n)).collect();
                self.queue_records(now, conn, names);
                Ok(())
            }
            Some(Body::Gossip(m)) => self.on_gossip(now, conn, m),
            Some(Body::ChannelDigests(d)) => self.on_channel_digests(now, conn, d),
            Some(Body::Broadcast(m)) => self.on_broadcast(now, conn, m),
            Some(Body::Unicast(m)) => self.on_unicast(now, conn, m),
            Some(Body::Referral(r)) => {
                if r.addresses.len() > MAX_REFERRAL || r.addresses.iter().any(|a| a.len() > MAX_ADDRESS_LEN) {
                    return Err(ProtocolError::Malformed("referral"));
                }
                let peer = self.conns[&conn].remote.name;
                self.events.push_back(MeshEvent::Referred { conn, peer, addresses: r.addresses });
                self.drop_conn(conn);
                self.events.push_back(MeshEvent::CloseConnection { conn, reason: CloseReason::Referred });
                self.our_connections_changed(now);
                Ok(())
            }
        };
        self.flush(now);
        self.flush_channels(now);
        result
    }

    fn send_versions(&mut self, conn: ConnId, group: BTreeSet<usize>, mut entries: Vec<crate::proto::VersionEntry>) {
        // A single bucket larger than the limit (not reachable below ~640k
        // peers) is truncated; the next anti-entropy round covers the rest.
        entries.truncate(MAX_RECORDS_PER_MESSAGE);
        let buckets = group.into_iter().map(|i| i as u32).collect();
        self.send(conn, Body::Versions(TopologyVersions { buckets, entries, offer: false }));
    }

    /// Tell the neighbour on `conn` which of `names` we hold newer than it.
    fn offer(&mut self, conn: ConnId, names: &[PeerName]) {
        let entries: Vec<crate::proto::VersionEntry> = names
            .iter()
            .filter_map(|n| self.topo.get(*n))
            .map(|r| crate::proto::VersionEntry { name: r.name.as_u64(), uid: r.uid.as_u64(), version: r.version })
            .collect();
        for chunk in entries.chunks(MAX_RECORDS_PER_MESSAGE) {
            self.send(conn, Body::Versions(TopologyVersions { buckets: Vec::new(), entries: chunk.to_vec(), offer: true }));
        }
    }

    /// Ask the neighbour on `conn` for the records `wanted` (with the
    /// version it has), but not those asked of any neighbour in the last
    /// [`REQUEST_PATIENCE`] at that version or newer.
    fn request(&mut self, now: Instant, conn: ConnId, wanted: impl IntoIterator<Item = (PeerName, u64)>) {
        let mut names = Vec::new();
        for (n, version) in wanted {
            if self.requested.get(&n).is_some_and(|&(v, at)| v >= version && now < at + REQUEST_PATIENCE) {
                continue;
            }
            if self.requested.len() < MAX_REQUESTED || self.requested.contains_key(&n) {
                self.requested.insert(n, (version, now));
            }
            names.push(n.as_u64());
        }
        for chunk in names.chunks(MAX_RECORDS_PER_MESSAGE) {
            self.send(conn, Body::Request(TopologyRequest { names: chunk.to_vec() }));
        }
    }

    fn on_update(&mut self, now: Instant, from: ConnId, u: TopologyUpdate) -> Result<(), ProtocolError> {
        if u.records.len() + u.deltas.len() > MAX_RECORDS_PER_MESSAGE {
            return Err(ProtocolError::Malformed("too many records"));
        }
        let mut records = u.records.into_iter().map(PeerRecord::from_msg).collect::<Result<Vec<_>, _>>()?;
        // A delta rebuilds its version from the one we hold. If we hold
        // another, ask for the record in full, unless ours is as new.
        let mut ask = Vec::new();
        for d in u.deltas {
            let name = PeerName::from_u64(d.name).ok_or(ProtocolError::Malformed("delta of a name wider than 48 bits"))?;
            let uid = PeerUid::new(d.uid).ok_or(ProtocolError::Malformed("delta with a zero uid"))?;
            match self.topo.get(name) {
                Some(held) if held.uid == uid && held.version == d.base => records.push(held.patched(d)?),
                Some(held) if (held.version, held.uid) >= (d.version, uid) => {}
                _ => ask.push(name.as_u64()),
            }
        }
        if let Some(c) = self.conns.get_mut(&from) {
            for r in &records {
                c.saw(r);
            }
            for n in &ask {
                c.holds.remove(&PeerName::from_u64(*n).expect("checked above"));
            }
        }
        if !ask.is_empty() {
            self.send(from, Body::Request(TopologyRequest { names: ask }));
        }
        let applied = self.topo.apply(records);
        for (name, why) in &applied.refused {
            self.stats.records_refused += 1;
            tracing::debug!(peer = %name, from = %self.conns.get(&from).map_or(String::from("?"), |c| c.remote.name.to_string()), "refused a peer record: {why}");
        }
        if applied.ourself_bumped {
            self.announce = true;
        }
        if let Some(uid) = applied.collision {
            tracing::error!(name = %self.cfg.name, %uid, "another live router uses our peer name");
            self.events.push_back(MeshEvent::NameCollision(uid));
        }
        if !applied.changed.is_empty() || applied.ourself_bumped {
            self.topology_changed(now);
        }
        // Passed on along each record's owner's broadcast tree (as the
        // routes stand; anti-entropy covers what a stale tree misses), or,
        // while the owner is not reachable, to every other neighbour the
        // record does not list: the owner sends each version of its record
        // to every peer it lists itself. (Relaying a joiner's first record
        // to every neighbour made each join cost N² records.)
        for name in applied.changed {
            self.arrived.insert(name, now);
            if let (Some(&(asked, _)), Some(r)) = (self.requested.get(&name), self.topo.get(name)) {
                if r.version >= asked {
                    self.requested.remove(&name);
                }
            }
            let to: Vec<ConnId> = if name != self.cfg.name && self.routes.reachable(name) {
                self.routes.broadcast_children(name).iter().filter_map(|p| self.by_peer.get(p).copied()).collect()
            } else if let Some(r) = self.topo.get(name).filter(|_| name != self.cfg.name) {
                let listed = |p: &PeerName| r.connections.binary_search_by(|c| c.peer.cmp(p)).is_ok();
                self.conns.iter().filter(|(_, c)| !listed(&c.remote.name)).map(|(&id, _)| id).collect()
            } else {
                self.conns.keys().copied().collect()
            };
            for c in to.into_iter().filter(|&c| c != from) {
                if let Some(conn) = self.conns.get_mut(&c) {
                    conn.pending.insert(name);
                }
            }
        }
        self.schedule_update(now);
        Ok(())
    }

    fn on_gossip(&mut self, now: Instant, from: ConnId, m: ChannelMsg) -> Result<(), ProtocolError> {
        let src = PeerName::from_u64(m.src).ok_or(ProtocolError::Malformed("gossip source"))?;
        let Some(slot) = self.channels.get_mut(&m.channel) else {
            // Not ours to merge: pass it on along the source's tree.
            self.stats.unknown_channel += 1;
            self.relay_along_tree(src, from, Body::Gossip(m));
            return Ok(());
        };
        match slot.channel.on_gossip(now, src, &m.data) {
            // Relayed once what the merge changed is saved.
            Ok(Some(data)) => slot.hold(Held::Relay { from, data }),
            Ok(None) => {}
            Err(source) => self.channel_error(&m.channel, source),
        }
        Ok(())
    }

    fn on_broadcast(&mut self, now: Instant, from: ConnId, m: ChannelMsg) -> Result<(), ProtocolError> {
        let src = PeerName::from_u64(m.src).ok_or(ProtocolError::Malformed("broadcast source"))?;
        if src == self.cfg.name {
            return Ok(());
        }
        self.deliver(&m.channel, |g| g.on_broadcast(now, src, &m.data));
        self.relay_along_tree(src, from, Body::Broadcast(m));
        Ok(())
    }

    /// Hand channel data to its channel, counting what cannot be delivered.
    fn deliver(&mut self, channel: &str, f: impl FnOnce(&mut dyn Channel) -> Result<(), BoxError>) {
        let result = match self.channels.get_mut(channel) {
            Some(s) => f(s.channel.as_mut()),
            None => {
                self.stats.unknown_channel += 1;
                return;
            }
        };
        if let Err(source) = result {
            self.channel_error(channel, source);
        }
    }

    fn on_unicast(&mut self, now: Instant, from: ConnId, m: ChannelMsg) -> Result<(), ProtocolError> {
        let src = PeerName::from_u64(m.src).ok_or(ProtocolError::Malformed("unicast source"))?;
        let dst = PeerName::from_u64(m.dst).ok_or(ProtocolError::Malformed("unicast destination"))?;
        if dst != self.cfg.name {
            self.forward(dst, Some(from), Body::Unicast(m));
            return Ok(());
        }
        self.deliver(&m.channel, |g| g.on_unicast(now, src, &m.data));
        Ok(())
    }

    fn channel_error(&mut self, channel: &str, source: BoxError) {
        self.stats.channel_errors += 1;
        let e = ChannelError { channel: channel.to_owned(), source };
        tracing::warn!(error = %e, "dropped channel data");
    }

    fn relay_along_tree(&mut self, src: PeerName, from: ConnId, body: Body) {
        let children: Vec<ConnId> = self.routes.broadcast_children(src).iter().filter_map(|p| self.by_peer.get(p).copied()).filter(|&c| c != from).collect();
        self.send_to(&children, body);
    }

    /// Send towards `dst`; never back where it came from (routes that
    /// disagree while the topology settles would bounce it back and forth).
    fn forward(&mut self, dst: PeerName, from: Option<ConnId>, body: Body) -> bool {
        match self.routes.next_hop(dst).and_then(|h| self.by_peer.get(&h).copied()) {
            Some(c) if Some(c) != from => {
                self.send(c, body);
                true
            }
            _ => {
                self.stats.dropped_no_route += 1;
                false
            }
        }
    }

    fn check_len(&self, data: &[u8]) -> Result<(), SendError> {
        let max = self.cfg.max_message_len.saturating_sub(512);
        if data.len() > max {
            return Err(SendError::TooLarge { len: data.len(), max });
        }
        Ok(())
    }

    /// Gossip a delta of `channel` to every neighbour; they merge it and
    /// relay what is new to them.
    pub fn gossip(&mut self, channel: &str, data: Vec<u8>) -> Result<(), SendError> {
        self.check_len(&data)?;
        let me = self.cfg.name.as_u64();
        let conns: Vec<ConnId> = self.conns.keys().copied().collect();
        for c in conns {
            let msg = ChannelMsg { channel: channel.to_owned(), src: me, dst: 0, data: data.clone() };
            self.send(c, Body::Gossip(msg));
        }
        Ok(())
    }

    /// Deliver `data` to every reachable peer once, along our broadcast tree.
    pub fn broadcast(&mut self, channel: &str, data: Vec<u8>) -> Result<(), SendError> {
        self.check_len(&data)?;
        let me = self.cfg.name;
        let msg = ChannelMsg { channel: channel.to_owned(), src: me.as_u64(), dst: 0, data };
        self.relay_along_tree(me, ConnId::MAX, Body::Broadcast(msg));
        Ok(())
    }

    /// Send `data` to `dst`, routed hop by hop.
    pub fn unicast(&mut self, channel: &str, dst: PeerName, data: Vec<u8>) -> Result<(), SendError> {
        self.check_len(&data)?;
        let msg = ChannelMsg { channel: channel.to_owned(), src: self.cfg.name.as_u64(), dst: dst.as_u64(), data };
        if self.forward(dst, None, Body::Unicast(msg)) {
            Ok(())
        } else {
            Err(SendError::NoRoute(dst))
        }
    }

    /// Our heartbeat interval with the connections we have now (see
    /// [`MeshConfig::heartbeat_flat_peers`]). A connection's next heartbeat
    /// is set when one goes, at the interval that heartbeat announced, so a
    /// neighbour never waits longer than it was told.
    pub fn heartbeat_interval(&self) -> Duration {
        weave_core::time::budgeted_interval(self.cfg.heartbeat_interval, self.conns.len(), self.cfg.heartbeat_flat_peers, self.cfg.max_heartbeat_interval)
    }

    /// Timers: heartbeats, read timeouts, coalesced recalculation,
    /// anti-entropy and channel gossip.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut dead = Vec::new();
        let mut beat = Vec::new();
        let any_due = self.conns.values().any(|c| now >= c.next_heartbeat);
        let interval = self.heartbeat_interval();
        // Heartbeats due within the next half interval go with those due
        // now: connections fall into step, and an idle router wakes once
        // per interval for all of them.
        let early = now + interval / 2;
        let mut deadline: Option<Instant> = None;
        for (&id, c) in &mut self.conns {
            let silent_until = c.last_rx + read_timeout(&self.cfg, c.peer_interval);
            if now >= silent_until {
                dead.push(id);
                continue;
            } else if any_due && early >= c.next_heartbeat {
                c.next_heartbeat = weave_core::time::next_round(self.cfg.round_clock.as_ref(), now, interval);
                beat.push(id);
            }
            let due = c.next_heartbeat.min(silent_until);
            deadline = Some(deadline.map_or(due, |t| t.min(due)));
        }
        self.conn_deadline = deadline;
        let interval_ms = u32::try_from(interval.as_millis()).unwrap_or(u32::MAX);
        for id in beat {
            self.send(id, Body::Heartbeat(Heartbeat { interval_ms }));
        }
        for id in dead {
            self.drop_conn(id);
            self.events.push_back(MeshEvent::CloseConnection { conn: id, reason: CloseReason::Timeout });
            self.our_connections_changed(now);
        }
        if self.settle_at.is_some_and(|t| now >= t) && self.settle_our_record(now) {
            self.topology_changed(now);
        }
        if self.recalc_at.is_some_and(|t| now >= t) {
            self.recalculate(now);
        }
        if self.update_at.is_some_and(|t| now >= t) {
            self.send_updates(now);
        }
        for s in self.channels.values_mut() {
            if s.channel.poll_timeout().is_some_and(|t| now >= t) {
                s.channel.handle_timeout(now);
            }
        }
        if std::mem::take(&mut self.channel_resync) {
            // Every router that learns of the peer does this, so each gets
            // a few full states, whatever the size of the mesh; sending to
            // every neighbour made each join cost N² full states (all of
            // IPAM's ring among them), which saturated large meshes while
            // they formed. Periodic channel gossip covers the rest.
            let conns = self.conns.keys().copied().choose_multiple(&mut self.rng, RESYNC_FANOUT);
            for c in conns {
                self.send_channel_states(now, c);
            }
        }
        if now >= self.next_anti_entropy {
            self.next_anti_entropy = now + jittered(&mut self.rng, self.cfg.anti_entropy_interval);
            self.requested.retain(|_, &mut (_, at)| now < at + REQUEST_PATIENCE);
            if let Some(&c) = self.conns.keys().choose(&mut self.rng) {
                let (sum, count) = self.topo.digest();
                self.send(c, Body::Digest(TopologyDigest { sum: sum.to_le_bytes().to_vec(), count }));
            }
        }
        if now >= self.next_channel_gossip {
            self.next_channel_gossip = now + jittered(&mut self.rng, self.cfg.channel_gossip_interval);
            if let Some(&c) = self.conns.keys().choose(&mut self.rng) {
                self.channel_anti_entropy(now, c);
            }
        }
        self.flush(now);
        self.flush_channels(now);
    }

    fn recalculate(&mut self, now: Instant) {
        self.recalc_at = None;
        self.settle_our_record(now);
        self.last_recalc = Some(now);
        // A record that just arrived may name a peer whose link to us is
        // still on its way in another record: collecting it now would
        // forget the peer until anti-entropy brings it back (seconds, in
        // a large mesh). Fresh records of unreachable peers get a grace
        // period, and a recalculation when it ends.
        self.arrived.retain(|_, t| now < *t + GC_GRACE);
        let (removed, spared) = self.topo.gc_sparing(|p| self.arrived.contains_key(&p));
        if let Some(t) = spared.iter().filter_map(|p| self.arrived.get(p)).min() {
            self.recalc_at = Some(*t + GC_GRACE);
        }
        self.routes = Routes::calculate(&self.topo);
        for s in self.channels.values_mut() {
            s.channel.on_routes(now, &self.routes);
        }
        // Spared peers are not known yet: nothing reaches them.
        let now_known: BTreeSet<PeerName> = self.topo.records().map(|r| r.name).filter(|p| !spared.contains(p) || self.known.contains(p)).collect();
        for &p in now_known.difference(&self.known) {
            self.channel_resync = true;
            self.events.push_back(MeshEvent::PeerAdded(p));
            let key = self.topo.key_of(p).expect("a known peer has a record");
            for s in self.channels.values_mut() {
                s.channel.on_peer_added(p, key);
            }
        }
        for &p in &removed {
            for c in self.conns.values_mut() {
                c.holds.remove(&p);
            }
            self.events.push_back(MeshEvent::PeerRemoved(p));
            for s in self.channels.values_mut() {
                s.channel.on_peer_removed(p);
            }
        }
        self.known = now_known;
        self.events.push_back(MeshEvent::TopologyChanged);
    }

    /// When [`Mesh::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.next_anti_entropy.min(self.next_channel_gossip);
        for r in [self.recalc_at, self.update_at, self.settle_at].into_iter().flatten() {
            t = t.min(r);
        }
        if let Some(c) = self.conn_deadline {
            t = t.min(c);
        }
        for s in self.channels.values() {
            if let Some(c) = s.channel.poll_timeout() {
                t = t.min(c);
            }
        }
        Some(t)
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<MeshEvent> {
        self.events.pop_front()
    }

    /// Our record changed: every neighbour gets it with the next update.
    fn flush(&mut self, now: Instant) {
        if std::mem::take(&mut self.announce) {
            let me = self.cfg.name;
            for c in self.conns.values_mut() {
                c.pending.insert(me);
            }
            self.schedule_update(now);
        }
    }

    fn schedule_update(&mut self, now: Instant) {
        if self.conns.values().any(|c| !c.backlogged && !c.pending.is_empty()) {
            let per_conn = UPDATE_DELAY_PER_CONN.saturating_mul(u32::try_from(self.conns.len()).unwrap_or(u32::MAX));
            self.update_at.get_or_insert(now + self.cfg.update_delay.max(per_conn));
        }
    }

    /// Send every neighbour the latest records of the peers pending for it.
    fn send_updates(&mut self, now: Instant) {
        self.update_at = None;
        if self.settle_our_record(now) {
            self.topology_changed(now);
        }
        // Neighbours due the same records from the same versions (in a
        // full mesh, all but the one each came from) share one copy of the
        // messages.
        let mut due: BTreeMap<Vec<(PeerName, Option<u64>)>, Vec<ConnId>> = BTreeMap::new();
        for (&id, c) in self.conns.iter_mut().filter(|(_, c)| !c.backlogged) {
            // Not what the neighbour already holds (it sent it to us); a
            // delta from what it holds of the same incarnation.
            let topo = &self.topo;
            let mut items: Vec<(PeerName, Option<u64>)> = std::mem::take(&mut c.pending)
                .into_iter()
                .filter_map(|n| {
                    let r = topo.get(n)?;
                    match c.holds.get(&n) {
                        Some(&held) if held >= (r.version, r.uid) => None,
                        Some(&(v, uid)) if uid == r.uid => Some((n, Some(v))),
                        _ => Some((n, None)),
                    }
                })
                .collect();
            if let Some(budget) = self.cfg.update_round_bytes {
                // The rest waits for the queue to drain (estimated sizes:
                // a full record by its connections, a delta as small).
                let mut spent = 0;
                let fits = items
                    .iter()
                    .take_while(|(n, base)| {
                        let first = spent == 0;
                        spent += match (base, topo.get(*n)) {
                            (None, Some(r)) => 64 + 32 * r.connections.len(),
                            _ => 64,
                        };
                        first || spent <= budget
                    })
                    .count();
                if fits < items.len() {
                    c.pending.extend(items.drain(fits..).map(|(n, _)| n));
                    c.backlogged = true;
                }
            }
            if !items.is_empty() {
                due.entry(items).or_default().push(id);
            }
        }
        for (items, conns) in due {
            for m in self.update_messages(&items) {
                self.send_to(&conns, Body::Update(m));
            }
            self.note_sent(&conns, items.iter().map(|(n, _)| *n));
        }
    }

    /// The neighbours on `conns` now hold the current records of `names`.
    fn note_sent(&mut self, conns: &[ConnId], names: impl Iterator<Item = PeerName> + Clone) {
        for c in conns {
            if let Some(conn) = self.conns.get_mut(c) {
                for n in names.clone() {
                    if let Some(r) = self.topo.get(n) {
                        conn.saw(r);
                    }
                }
            }
        }
    }

    fn send(&mut self, conn: ConnId, body: Body) {
        self.send_to(&[conn], body);
    }

    /// One message, built once, to each of `conns`.
    fn send_to(&mut self, conns: &[ConnId], body: Body) {
        let msg = Arc::new(Envelope::from(body));
        for &conn in conns {
            self.stats.msgs_out += 1;
            self.transmits.push_back(Transmit { conn, msg: msg.clone() });
        }
    }

    /// Records by name, each as a delta from the version given where the
    /// log allows, else in full, packed into messages under the size bound.
    fn update_messages(&self, items: &[(PeerName, Option<u64>)]) -> Vec<TopologyUpdate> {
        let budget = (self.cfg.max_message_len / 2).min(UPDATE_MESSAGE_BYTES);
        let mut out = Vec::new();
        let mut cur = TopologyUpdate::default();
        let mut size = 0;
        for &(name, base) in items {
            let Some(r) = self.topo.get(name) else { continue };
            let part = match base.filter(|&b| b < r.version).and_then(|b| self.topo.delta_since(name, b)) {
                Some(d) => Ok(d),
                None => Err(r.to_msg()),
            };
            let len = part.as_ref().map_or_else(Message::encoded_len, Message::encoded_len) + 8;
            if size > 0 && (size + len > budget || cur.records.len() + cur.deltas.len() >= MAX_RECORDS_PER_MESSAGE) {
                out.push(std::mem::take(&mut cur));
                size = 0;
            }
            size += len;
            match part {
                Ok(d) => cur.deltas.push(d),
                Err(m) => cur.records.push(m),
            }
        }
        if size > 0 {
            out.push(cur);
        }
        out
    }

    /// Records anti-entropy found missing, or asked for, go with the next
    /// update round, within its budget, as the latest versions then: sent
    /// at once, a router's whole topology went to every new neighbour on
    /// top of its update rounds (1.4 MB each in a mesh of 200 forming).
    /// They go in full: the neighbour does not hold what we believed it
    /// does (it may have collected a record we sent it).
    fn queue_records(&mut self, now: Instant, conn: ConnId, names: impl IntoIterator<Item = PeerName>) {
        if let Some(c) = self.conns.get_mut(&conn) {
            for n in names {
                c.holds.remove(&n);
                c.pending.insert(n);
            }
            self.schedule_update(now);
        }
    }
}

/// How much the topology update window grows per connection (see
/// [`MeshConfig::update_delay`]).
pub const UPDATE_DELAY_PER_CONN: Duration = Duration::from_millis(20);

/// How long a record that just arrived is kept while the peer it is of is
/// unreachable (see [`Mesh::recalculate`]).
const GC_GRACE: Duration = Duration::from_secs(2);

/// Neighbours sent every channel's state when a peer (re)joins.
const RESYNC_FANOUT: usize = 3;
/// A per-pair order, the same every time we compute it, different for
/// every `me` (splitmix64 of the two names).
fn spread(me: PeerName, peer: PeerName) -> u64 {
    let mut z = (me.as_u64() ^ peer.as_u64().rotate_left(24)).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Most addresses in a referral.
pub const MAX_REFERRAL: usize = 32;
/// Longest address accepted in a referral (`[v6 with zone]:port`).
const MAX_ADDRESS_LEN: usize = 128;

/// `base` scaled by a random factor in [0.5, 1.5).
fn jittered(rng: &mut SimRng, base: Duration) -> Duration {
    base.mul_f64(rng.random_range(0.5..1.5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::PeerRecordMsg;
    use weave_core::rng::seeded;

    fn n(v: u64) -> PeerName {
        PeerName::from_u64(v).unwrap()
    }

    fn mesh(name: u64) -> Mesh {
        Mesh::new(MeshConfig::new(n(name), format!("p{name}"), PeerUid::new(name).unwrap()), Instant::now(), seeded(name))
    }

    fn remote(name: u64, conn_id: u64, outbound: bool) -> RemotePeer {
        RemotePeer {
            name: n(name),
            nickname: format!("p{name}"),
            uid: PeerUid::new(name).unwrap(),
            conn_id,
            address: format!("10.0.0.{name}:6783"),
            outbound,
            version: crate::link::PROTOCOL_MAX,
        }
    }

    fn drain(m: &mut Mesh) -> Vec<Transmit> {
        std::iter::from_fn(|| m.poll_transmit()).collect()
    }

    /// An established connection to `p`, as a record lists it.
    fn linked(p: u64) -> ConnectionInfo {
        ConnectionInfo { peer: n(p), address: String::new(), outbound: true, established: true }
    }

    /// Peer `k`'s record on the wire, signed with its test key.
    fn record_msg(k: u64, version: u64, conns: Vec<ConnectionInfo>) -> PeerRecordMsg {
        PeerRecord::signed(&Identity::from_secret([k as u8; 32]), n(k), format!("p{k}"), PeerUid::new(k).unwrap(), version, conns).to_msg()
    }

    /// Run `m`'s timers up to `until`.
    fn run_until(m: &mut Mesh, until: Instant) {
        while let Some(t) = m.poll_timeout().filter(|t| *t <= until) {
            m.handle_timeout(t);
        }
    }

    /// The updates among `ts`, by connection.
    fn updates(ts: &[Transmit]) -> BTreeMap<ConnId, Vec<TopologyUpdate>> {
        let mut out: BTreeMap<ConnId, Vec<TopologyUpdate>> = BTreeMap::new();
        for t in ts {
            if let Some(Body::Update(u)) = &t.msg.body {
                out.entry(t.conn).or_default().push(u.clone());
            }
        }
        out
    }

    /// A mesh linked to peers 2, 3 and 4 (connections 2, 3, 4) whose first
    /// updates have gone out.
    fn settled_with_peers_2_to_4() -> (Mesh, Instant) {
        let mut m = mesh(1);
        let start = Instant::now();
        for p in 2..=4 {
            m.add_connection(start, p, remote(p, p, true)).unwrap();
        }
        run_until(&mut m, start + Duration::from_secs(1));
        drain(&mut m);
        (m, start)
    }

    /// The connections that were sent peer `k`'s record in full.
    fn sent_record_of(m: &mut Mesh, k: u64) -> Vec<ConnId> {
        updates(&drain(m)).into_iter().filter(|(_, us)| us.iter().any(|u| u.records.iter().any(|r| r.name == k))).map(|(c, _)| c).collect()
    }

    fn versions(entries: &[(u64, u64)], buckets: Vec<u32>, offer: bool) -> Envelope {
        let entries = entries.iter().map(|&(k, version)| crate::proto::VersionEntry { name: k, uid: k, version }).collect();
        Envelope::from(Body::Versions(TopologyVersions { buckets, entries, offer }))
    }

    /// The names each connection was asked for, among `ts`.
    fn requests(ts: &[Transmit]) -> BTreeMap<ConnId, Vec<u64>> {
        let mut out: BTreeMap<ConnId, Vec<u64>> = BTreeMap::new();
        for t in ts {
            if let Some(Body::Request(r)) = &t.msg.body {
                out.entry(t.conn).or_default().extend(&r.names);
            }
        }
        out
    }

    #[test]
    fn records_offered_by_several_neighbours_are_asked_of_one_until_it_is_late() {
        let (mut m, start) = settled_with_peers_2_to_4();
        // Peers 2 and 3 both hold the records of peers 7 and 8 (a joiner
        // linking to everyone at once hears each offer from many).
        m.handle_message(start, 2, versions(&[(7, 4), (8, 2)], vec![], true)).unwrap();
        m.handle_message(start, 3, versions(&[(7, 4), (8, 3)], vec![], true)).unwrap();
        let asked = requests(&drain(&mut m));
        assert_eq!(asked, BTreeMap::from([(2, vec![7, 8]), (3, vec![8])]), "8 is asked again only because peer 3 offers a newer version");
        // Version 4 of peer 7 arrives from peer 2: offers of it or older
        // are not asked for, later ones are.
        let r7 = record_msg(7, 4, vec![linked(2)]);
        m.handle_message(start, 2, Envelope::from(Body::Update(TopologyUpdate { records: vec![r7], deltas: vec![] }))).unwrap();
        drain(&mut m);
        m.handle_message(start, 4, versions(&[(7, 4)], vec![], true)).unwrap();
        assert!(requests(&drain(&mut m)).is_empty(), "held already");
        // Peer 2 never answered for peer 8: past the patience, another is asked.
        let late = start + REQUEST_PATIENCE + Duration::from_millis(1);
        m.handle_message(late, 4, versions(&[(8, 3)], vec![], true)).unwrap();
        assert_eq!(requests(&drain(&mut m)), BTreeMap::from([(4, vec![8])]));
    }

    #[test]
    fn anti_entropy_offers_what_we_hold_newer_and_pushes_only_to_old_peers() {
        let mut m = mesh(1);
        let start = Instant::now();
        m.add_connection(start, 2, remote(2, 2, true)).unwrap();
        let mut old = remote(3, 3, true);
        old.version = CHANNEL_DIGESTS;
        m.add_connection(start, 3, old).unwrap();
        run_until(&mut m, start + Duration::from_secs(1));
        drain(&mut m);
        // Both neighbours list no record in any bucket: we hold ours newer.
        let all: Vec<u32> = (0..BUCKETS as u32).collect();
        let t = start + Duration::from_secs(2);
        m.handle_message(t, 2, versions(&[], all.clone(), false)).unwrap();
        m.handle_message(t, 3, versions(&[], all, false)).unwrap();
        let sent = drain(&mut m);
        let offers: Vec<&TopologyVersions> =
            sent.iter().filter(|t| t.conn == 2).filter_map(|t| if let Some(Body::Versions(v)) = &t.msg.body { Some(v) } else { None }).collect();
        let [o] = offers.as_slice() else { panic!("one offer to peer 2: {sent:?}") };
        assert!(o.offer && o.entries.iter().any(|e| e.name == 1));
        run_until(&mut m, t + Duration::from_secs(1));
        let pushed = sent_record_of(&mut m, 1);
        assert_eq!(pushed, vec![3], "only the peer without offers gets our record pushed");
    }

    #[test]
    fn our_next_version_goes_as_a_delta_to_each_neighbour_holding_the_last() {
        let mut m = mesh(1);
        let start = Instant::now();
        for p in 2..=11 {
            let mut r = remote(p, p, true);
            // Peer 11 speaks only the first protocol version.
            r.version = if p == 11 { 1 } else { crate::link::PROTOCOL_MAX };
            m.add_connection(start, p, r).unwrap();
        }
        run_until(&mut m, start + Duration::from_secs(1));
        let first = updates(&drain(&mut m));
        assert_eq!(first.len(), 10);
        assert!(first.values().flatten().all(|u| u.deltas.is_empty() && u.records.len() == 1), "new neighbours get the record in full");
        m.remove_connection(start + Duration::from_secs(2), 10);
        run_until(&mut m, start + Duration::from_secs(3));
        let next = updates(&drain(&mut m));
        assert_eq!(next.keys().copied().collect::<Vec<_>>(), (2..=11).filter(|&p| p != 10).collect::<Vec<_>>());
        for (conn, us) in &next {
            let [u] = us.as_slice() else { panic!("one update to {conn}") };
            if *conn == 11 {
                assert_eq!((u.records.len(), u.deltas.len()), (1, 0), "a version 1 peer gets records in full");
            } else {
                assert!(u.records.is_empty());
                let [d] = u.deltas.as_slice() else { panic!("one delta to {conn}") };
                assert_eq!((d.base, d.version, d.removed.as_slice(), d.upserted.len()), (2, 3, &[10][..], 0));
            }
        }
    }

    #[test]
    fn a_delta_from_a_version_we_do_not_hold_is_answered_with_a_request() {
        let mut m = mesh(1);
        let now = Instant::now();
        m.add_connection(now, 7, remote(2, 1, false)).unwrap();
        drain(&mut m);
        let mut owner = Topology::new(Identity::from_secret([2; 32]), n(2), "p2".into(), PeerUid::new(2).unwrap());
        let list = |ps: &[u64]| ps.iter().map(|&p| linked(p)).collect::<Vec<_>>();
        owner.set_our_connections(list(&[1, 3, 4, 5, 6, 7, 8, 9, 10, 11]));
        let held = owner.our_record().clone();
        m.handle_message(now, 7, Body::Update(TopologyUpdate { records: vec![held.to_msg()], deltas: Vec::new() }).into()).unwrap();
        owner.set_our_connections(list(&[1, 3, 4, 5, 6, 7, 8, 9, 10]));
        owner.set_our_connections(list(&[1, 3, 4, 5, 6, 7, 8, 9]));
        let skipped = owner.delta_since(n(2), held.version + 1).unwrap();
        m.handle_message(now, 7, Body::Update(TopologyUpdate { records: Vec::new(), deltas: vec![skipped] }).into()).unwrap();
        assert_eq!(m.topology().get(n(2)), Some(&held), "not applied to another version");
        let asked: Vec<_> = drain(&mut m)
            .into_iter()
            .filter_map(|t| match &t.msg.body {
                Some(Body::Request(r)) => Some((t.conn, r.names.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(asked, vec![(7, vec![2])]);
        // From the version we hold it applies.
        let d = owner.delta_since(n(2), held.version).unwrap();
        m.handle_message(now, 7, Body::Update(TopologyUpdate { records: Vec::new(), deltas: vec![d] }).into()).unwrap();
        assert_eq!(m.topology().get(n(2)), Some(owner.our_record()));
        assert!(drain(&mut m).iter().all(|t| !matches!(t.msg.body, Some(Body::Request(_)))));
    }

    #[test]
    fn a_delta_with_a_forged_change_is_refused_and_changes_nothing() {
        let mut m = mesh(1);
        let now = Instant::now();
        m.add_connection(now, 7, remote(2, 1, false)).unwrap();
        let mut owner = Topology::new(Identity::from_secret([3; 32]), n(3), "p3".into(), PeerUid::new(3).unwrap());
        owner.set_our_connections([2, 4, 5, 6, 8].iter().map(|&p| linked(p)).collect());
        let held = owner.our_record().clone();
        m.handle_message(now, 7, Body::Update(TopologyUpdate { records: vec![held.to_msg()], deltas: Vec::new() }).into()).unwrap();
        owner.set_our_connections([2, 4, 5, 6].iter().map(|&p| linked(p)).collect());
        // Peer 2 relays 3's change but slips in a link of its own making.
        let mut d = owner.delta_since(n(3), held.version).unwrap();
        d.upserted.push(crate::proto::ConnectionEntry { name: 9, address: "6.6.6.6:6783".into(), outbound: true, established: true });
        m.handle_message(now, 7, Body::Update(TopologyUpdate { records: Vec::new(), deltas: vec![d] }).into()).unwrap();
        assert_eq!(m.topology().get(n(3)), Some(&held));
        assert_eq!(m.stats().records_refused, 1);
    }

    #[test]
    fn a_record_of_an_unreachable_peer_is_relayed_only_to_neighbours_it_does_not_list() {
        let (mut m, start) = settled_with_peers_2_to_4();
        // Peer 5 joined with links to us, 2 and 3: it sends its record to
        // each of them itself, so only 4 needs it from us.
        let r5 = record_msg(5, 1, vec![linked(1), linked(2), linked(3)]);
        m.handle_message(start + Duration::from_secs(1), 2, Body::Update(TopologyUpdate { records: vec![r5], deltas: Vec::new() }).into()).unwrap();
        run_until(&mut m, start + Duration::from_secs(2));
        assert_eq!(sent_record_of(&mut m, 5), vec![4]);
    }

    #[test]
    fn a_backlogged_neighbour_gets_only_the_latest_version_once_it_drains() {
        let (mut m, start) = settled_with_peers_2_to_4();
        m.set_backlogged(start, 4, true);
        // Three versions of peer 5's record arrive from 2 while 4's queue
        // is full: 3 gets each, 4 none.
        // (Peer 5 is unreachable: its record is kept for a grace period.)
        for v in 1..=3 {
            let now = start + Duration::from_millis(1000 + 300 * v);
            let r5 = record_msg(5, v, vec![linked(1)]);
            m.handle_message(now, 2, Body::Update(TopologyUpdate { records: vec![r5], deltas: Vec::new() }).into()).unwrap();
            run_until(&mut m, now + Duration::from_millis(250));
            assert_eq!(updates(&drain(&mut m)).keys().copied().collect::<Vec<_>>(), vec![3], "version {v}");
        }
        // Drained: 4 gets the record once, at its last version.
        let now = start + Duration::from_secs(2);
        m.set_backlogged(now, 4, false);
        run_until(&mut m, now + Duration::from_millis(500));
        let sent = updates(&drain(&mut m));
        assert_eq!(sent.keys().copied().collect::<Vec<_>>(), vec![4]);
        let versions: Vec<u64> = sent[&4]
            .iter()
            .flat_map(|u| u.records.iter().map(|r| (r.name, r.version)).chain(u.deltas.iter().map(|d| (d.name, d.version))))
            .filter(|&(name, _)| name == 5)
            .map(|(_, v)| v)
            .collect();
        assert_eq!(versions, vec![3]);
        // Still backlogged when closed: nothing is left waiting for it.
        m.set_backlogged(now, 3, true);
        m.remove_connection(now + Duration::from_secs(2), 3);
        m.set_backlogged(now, 3, false);
        run_until(&mut m, now + Duration::from_secs(4));
        assert!(!updates(&drain(&mut m)).contains_key(&3));
    }

    #[test]
    fn an_update_round_past_its_budget_leaves_the_rest_until_the_queue_drains() {
        let start = Instant::now();
        let mut cfg = MeshConfig::new(n(1), "p1", PeerUid::new(1).unwrap());
        // Two records with one link each per round.
        cfg.update_round_bytes = Some(200);
        let mut m = Mesh::new(cfg, start, seeded(1));
        for p in 2..=3 {
            m.add_connection(start, p, remote(p, p, true)).unwrap();
        }
        run_until(&mut m, start + Duration::from_secs(1));
        drain(&mut m);
        let mut at = start + Duration::from_millis(1100);
        let records = (5..=9).map(|k| record_msg(k, 1, vec![linked(1)])).collect();
        m.handle_message(at, 2, Body::Update(TopologyUpdate { records, deltas: Vec::new() }).into()).unwrap();
        let mut got = Vec::new();
        for round in 0..3 {
            run_until(&mut m, at + Duration::from_millis(200));
            let names: Vec<u64> = updates(&drain(&mut m)).get(&3).into_iter().flatten().flat_map(|u| u.records.iter().map(|r| r.name)).collect();
            assert_eq!(names.len(), if round < 2 { 2 } else { 1 }, "round {round}: {names:?}");
            got.extend(names);
            assert_eq!(m.is_backlogged(3), round < 2);
            // Nothing more until the queue drains.
            run_until(&mut m, at + Duration::from_millis(400));
            assert!(updates(&drain(&mut m)).is_empty());
            at += Duration::from_millis(400);
            m.set_backlogged(at, 3, false);
        }
        got.sort_unstable();
        assert_eq!(got, vec![5, 6, 7, 8, 9]);
    }

    #[test]
    fn a_record_is_not_relayed_to_a_neighbour_that_sent_us_that_version() {
        let (mut m, start) = settled_with_peers_2_to_4();
        // Peer 5's record reaches us from 2, and, before our window ends,
        // the same version from 3.
        let r5 = record_msg(5, 1, vec![linked(1)]);
        let now = start + Duration::from_secs(1);
        m.handle_message(now, 2, Body::Update(TopologyUpdate { records: vec![r5.clone()], deltas: Vec::new() }).into()).unwrap();
        m.handle_message(now, 3, Body::Update(TopologyUpdate { records: vec![r5], deltas: Vec::new() }).into()).unwrap();
        run_until(&mut m, start + Duration::from_secs(2));
        assert_eq!(sent_record_of(&mut m, 5), vec![4]);
    }

    #[test]
    fn on_a_round_clock_heartbeats_go_at_its_boundaries_for_every_connection() {
        let start = Instant::now();
        let mut cfg = MeshConfig::new(n(1), "p1", PeerUid::new(1).unwrap());
        cfg.round_clock = Some(weave_core::time::RoundClock::new(start, Duration::from_millis(1_800_000_012_000)));
        let mut m = Mesh::new(cfg, start, seeded(1));
        // Connections come up 12 s and 23 s into a 30 s round.
        m.add_connection(start, 2, remote(2, 2, true)).unwrap();
        m.add_connection(start + Duration::from_secs(11), 3, remote(3, 3, true)).unwrap();
        drain(&mut m);
        let mut sent_at = Vec::new();
        let mut now = start;
        while now < start + Duration::from_secs(100) {
            now = m.poll_timeout().unwrap().max(now + Duration::from_millis(1));
            m.handle_timeout(now);
            for t in drain(&mut m) {
                if matches!(t.msg.body, Some(Body::Heartbeat(_))) {
                    sent_at.push((now - start, t.conn));
                }
            }
            for c in [2, 3] {
                m.handle_message(now, c, Body::Heartbeat(Heartbeat::default()).into()).unwrap();
            }
        }
        // Each first at the boundary at least half a round after it came up
        // (18 s and 48 s), then together on every boundary.
        let at = |s: u64| Duration::from_secs(s);
        assert_eq!(sent_at, vec![(at(18), 2), (at(48), 2), (at(48), 3), (at(78), 2), (at(78), 3)]);
    }

    /// Heartbeats each connection sends in the first `secs` seconds, with
    /// the interval each announced, while every neighbour keeps talking.
    fn heartbeats_over(m: &mut Mesh, conns: &[ConnId], start: Instant, secs: u64) -> BTreeMap<ConnId, Vec<(Duration, u32)>> {
        let mut sent: BTreeMap<ConnId, Vec<(Duration, u32)>> = BTreeMap::new();
        let mut now = start;
        while now < start + Duration::from_secs(secs) {
            now = m.poll_timeout().unwrap().max(now + Duration::from_millis(1));
            m.handle_timeout(now);
            for t in drain(m) {
                if let Some(Body::Heartbeat(h)) = &t.msg.body {
                    sent.entry(t.conn).or_default().push((now - start, h.interval_ms));
                }
            }
            for &c in conns {
                m.handle_message(now, c, Body::Heartbeat(Heartbeat::default()).into()).unwrap();
            }
        }
        sent
    }

    #[test]
    fn heartbeats_slow_down_past_the_flat_count_and_tell_their_interval() {
        for (peers, interval) in [(20u64, 30u64), (64, 60), (200, 210)] {
            let mut m = mesh(1);
            let start = Instant::now();
            let conns: Vec<ConnId> = (2..peers + 2).collect();
            for &c in &conns {
                m.add_connection(start, c, remote(c, c, true)).unwrap();
            }
            drain(&mut m);
            assert_eq!(m.heartbeat_interval(), Duration::from_secs(interval));
            let sent = heartbeats_over(&mut m, &conns, start, 900);
            assert_eq!(sent.len(), conns.len(), "{peers} peers: every connection has heartbeats");
            for (c, beats) in &sent {
                // The first within the default interval (the neighbour has
                // not been told ours yet), then one per announced interval.
                assert!(beats[0].0 <= Duration::from_secs(30), "{peers} peers, conn {c}: {beats:?}");
                for w in beats.windows(2) {
                    assert!(w[1].0 - w[0].0 <= Duration::from_millis(u64::from(w[0].1)), "{peers} peers, conn {c}: {beats:?}");
                }
                assert!(beats.iter().all(|b| b.1 == interval as u32 * 1000), "{peers} peers, conn {c}: {beats:?}");
            }
            // At most 32 heartbeats per 30 s, whatever the number of peers
            // (and the first round at the default interval).
            let total: usize = sent.values().map(Vec::len).sum();
            let bound = peers as usize + 32 * 900 / 30;
            assert!(total <= bound, "{peers} peers: {total} heartbeats in 900 s, bound {bound}");
        }
    }

    #[test]
    fn a_neighbour_is_timed_out_after_two_of_its_announced_intervals() {
        let mut m = mesh(1);
        let start = Instant::now();
        m.add_connection(start, 2, remote(2, 2, true)).unwrap();
        m.add_connection(start, 3, remote(3, 3, true)).unwrap();
        // 2 announces 120 s (four times the default), 3 nothing (an older
        // peer: the default 30 s).
        m.handle_message(start, 2, Body::Heartbeat(Heartbeat { interval_ms: 120_000 }).into()).unwrap();
        m.handle_message(start, 3, Body::Heartbeat(Heartbeat::default()).into()).unwrap();
        let closed = |m: &mut Mesh| -> Vec<ConnId> {
            std::iter::from_fn(|| m.poll_event())
                .filter_map(|e| match e {
                    MeshEvent::CloseConnection { conn, reason: CloseReason::Timeout } => Some(conn),
                    _ => None,
                })
                .collect()
        };
        run_until(&mut m, start + Duration::from_secs(66));
        assert_eq!(closed(&mut m), vec![3], "the default read timeout is 65 s");
        run_until(&mut m, start + Duration::from_secs(259));
        assert_eq!(closed(&mut m), Vec::<ConnId>::new(), "4 × 65 s not yet over");
        run_until(&mut m, start + Duration::from_secs(261));
        assert_eq!(closed(&mut m), vec![2]);
    }

    /// A grow-only set of numbers as a channel.
    #[derive(Default)]
    struct Numbers(BTreeSet<u64>);

    impl Numbers {
        fn encode(items: impl IntoIterator<Item = u64>) -> Vec<u8> {
            items.into_iter().flat_map(u64::to_le_bytes).collect()
        }
    }

    impl crate::channel::Channel for Numbers {
        fn on_gossip(&mut self, _: Instant, _: PeerName, update: &[u8]) -> Result<Option<Vec<u8>>, crate::channel::BoxError> {
            let new: Vec<u64> = update.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).filter(|v| self.0.insert(*v)).collect();
            Ok((!new.is_empty()).then(|| Self::encode(new)))
        }
        fn on_broadcast(&mut self, _: Instant, _: PeerName, _: &[u8]) -> Result<(), crate::channel::BoxError> {
            Ok(())
        }
        fn on_unicast(&mut self, _: Instant, _: PeerName, _: &[u8]) -> Result<(), crate::channel::BoxError> {
            Ok(())
        }
        fn full_state(&mut self, _: Instant) -> Vec<Vec<u8>> {
            if self.0.is_empty() {
                Vec::new()
            } else {
                vec![Self::encode(self.0.iter().copied())]
            }
        }
    }

    /// Deliver everything `a` (conn 10 to `b`) and `b` (conn 20 to `a`)
    /// send until both are quiet; the channel states and digests that
    /// crossed, as (from, kind).
    fn pump(a: &mut Mesh, b: &mut Mesh, now: Instant) -> Vec<(u64, &'static str)> {
        let mut crossed = Vec::new();
        loop {
            let mut moved = false;
            for (from, to, conn) in [(1u64, 0usize, 20), (2, 1, 10)] {
                let (src, dst) = if to == 0 { (&mut *a, &mut *b) } else { (&mut *b, &mut *a) };
                while let Some(t) = src.poll_transmit() {
                    moved = true;
                    match &t.msg.body {
                        Some(Body::Gossip(m)) if m.channel == "numbers" => crossed.push((from, "state")),
                        Some(Body::ChannelDigests(d)) => crossed.push((from, if d.reply { "reply" } else { "digests" })),
                        _ => {}
                    }
                    dst.handle_message(now, conn, (*t.msg).clone()).unwrap();
                }
            }
            if !moved {
                return crossed;
            }
        }
    }

    fn numbers(m: &Mesh) -> Vec<u64> {
        m.channel::<Numbers>("numbers").unwrap().0.iter().copied().collect()
    }

    #[test]
    fn a_backlogged_neighbour_gets_no_channel_state_until_it_drains() {
        let now = Instant::now();
        let mut m = mesh(1);
        m.register_channel("numbers", Box::new(Numbers([1, 2, 3].into())));
        m.add_connection(now, 7, remote(2, 7, true)).unwrap();
        drain(&mut m);
        let differing =
            || Body::ChannelDigests(ChannelDigests { channels: vec![ChannelDigest { channel: "numbers".into(), sum: vec![0; 16] }], reply: false }).into();
        let states = |m: &mut Mesh| drain(m).iter().filter(|t| matches!(&t.msg.body, Some(Body::Gossip(g)) if g.channel == "numbers")).count();
        m.set_backlogged(now, 7, true);
        m.handle_message(now, 7, differing()).unwrap();
        assert_eq!(states(&mut m), 0);
        m.set_backlogged(now, 7, false);
        m.handle_message(now, 7, differing()).unwrap();
        assert_eq!(states(&mut m), 1);
    }

    #[test]
    fn channel_anti_entropy_sends_full_states_only_where_digests_differ() {
        // b's heartbeats, which the test does not run b's timers for.
        let keep_alive = |a: &mut Mesh, t: Instant| a.handle_message(t, 10, Body::Heartbeat(Heartbeat { interval_ms: 0 }).into()).unwrap();
        for version in [crate::link::PROTOCOL_MAX, RECORD_DELTAS] {
            let now = Instant::now();
            let (mut a, mut b) = (mesh(1), mesh(2));
            for m in [&mut a, &mut b] {
                m.register_channel("numbers", Box::new(Numbers([1, 2, 3].into())));
            }
            a.add_connection(now, 10, RemotePeer { version, ..remote(2, 10, true) }).unwrap();
            b.add_connection(now, 20, RemotePeer { version, ..remote(1, 20, false) }).unwrap();
            pump(&mut a, &mut b, now);
            // Each learns of the other: full states to a few neighbours.
            let t0 = now + Duration::from_secs(1);
            a.handle_timeout(t0);
            b.handle_timeout(t0);
            pump(&mut a, &mut b, t0);
            // Records anti-entropy found missing go with an update round.
            let t0 = t0 + Duration::from_secs(1);
            a.handle_timeout(t0);
            b.handle_timeout(t0);
            pump(&mut a, &mut b, t0);

            // At rest, a round (every 15 to 45 s) sends only digests.
            let t1 = now + Duration::from_secs(46);
            keep_alive(&mut a, t1);
            a.handle_timeout(t1);
            let crossed = pump(&mut a, &mut b, t1);
            if version < CHANNEL_DIGESTS {
                assert_eq!(crossed, vec![(1, "state")], "an older peer gets the full state");
                continue;
            }
            assert_eq!(crossed, vec![(1, "digests")]);

            // Each holds a number the other lacks: one state each way.
            a.channel_mut::<Numbers>("numbers").unwrap().0.insert(4);
            b.channel_mut::<Numbers>("numbers").unwrap().0.insert(5);
            let t2 = t1 + Duration::from_secs(46);
            keep_alive(&mut a, t2);
            a.handle_timeout(t2);
            let crossed = pump(&mut a, &mut b, t2);
            assert_eq!(crossed, vec![(1, "digests"), (2, "state"), (2, "reply"), (1, "state")]);
            assert_eq!(numbers(&a), vec![1, 2, 3, 4, 5]);
            assert_eq!(numbers(&b), vec![1, 2, 3, 4, 5]);
            assert_eq!(a.stats().channel_states_sent + b.stats().channel_states_sent, 2);

            // Only the receiver lacks something: its state is not needed,
            // but it cannot know that; the answer stops there.
            a.channel_mut::<Numbers>("numbers").unwrap().0.insert(6);
            let t3 = t2 + Duration::from_secs(46);
            keep_alive(&mut a, t3);
            a.handle_timeout(t3);
            let crossed = pump(&mut a, &mut b, t3);
            assert_eq!(crossed, vec![(1, "digests"), (2, "state"), (2, "reply"), (1, "state")]);
            assert_eq!(numbers(&b), vec![1, 2, 3, 4, 5, 6]);

            // A neighbour without the channel answers with an empty digest,
            // and gets the state to pass on.
            let t4 = t3 + Duration::from_secs(46);
            b.channels.clear();
            keep_alive(&mut a, t4);
            a.handle_timeout(t4);
            assert_eq!(pump(&mut a, &mut b, t4), vec![(1, "digests"), (2, "reply"), (1, "state")]);

            // Digests naming too many channels close the connection.
            let many = (0..=MAX_DIGESTED_CHANNELS).map(|i| ChannelDigest { channel: format!("c{i}"), sum: Vec::new() }).collect();
            assert!(a.handle_message(t4, 10, Body::ChannelDigests(ChannelDigests { channels: many, reply: false }).into()).is_err());
        }
    }

    #[test]
    fn discovery_dials_only_established_connections_each_once() {
        let mut m = mesh(1);
        let now = Instant::now();
        m.add_connection(now, 7, remote(2, 1, false)).unwrap();
        let key = |k: u8| Identity::from_secret([k; 32]);
        let conn = |p: u64, established| ConnectionInfo { peer: n(p), address: format!("10.0.0.{p}:6783"), outbound: true, established };
        // Peer 2 lists 3 (which lists 2 back), a half-open link to 4, and
        // 5000 connections to one address (as many peers).
        let mut conns = vec![conn(1, true), conn(3, true), conn(4, false)];
        conns.extend((100..5100).map(|p| ConnectionInfo { address: "10.1.0.1:6783".into(), ..conn(p, true) }));
        let rec2 = PeerRecord::signed(&key(2), n(2), "p2".into(), PeerUid::new(2).unwrap(), 5, conns);
        let rec3 = PeerRecord::signed(&key(3), n(3), "p3".into(), PeerUid::new(3).unwrap(), 5, vec![conn(2, true)]);
        let rec4 = PeerRecord::signed(&key(4), n(4), "p4".into(), PeerUid::new(4).unwrap(), 5, vec![conn(2, false)]);
        m.handle_message(now, 7, Body::Update(TopologyUpdate { records: vec![rec2.to_msg(), rec3.to_msg(), rec4.to_msg()], deltas: Vec::new() }).into())
            .unwrap();
        m.handle_timeout(now + Duration::from_secs(1));
        assert_eq!(m.discovery_candidates(usize::MAX), vec![("10.0.0.3:6783".to_owned(), false), ("10.1.0.1:6783".to_owned(), false)]);
    }

    #[test]
    fn a_record_that_arrives_before_the_link_to_it_is_kept_for_a_grace_period() {
        let mut m = mesh(1);
        let start = Instant::now();
        m.add_connection(start, 7, remote(2, 1, false)).unwrap();
        let (conn, record) = (linked, record_msg);
        let update = |records| Body::Update(TopologyUpdate { records, deltas: Vec::new() }).into();
        // 3 joined through 2: its record (listing 2) comes before 2's new
        // one (listing 3), and before that 3 is unreachable from us.
        m.handle_message(start, 7, update(vec![record(2, 5, vec![conn(1)]), record(3, 1, vec![conn(2)])])).unwrap();
        let mut now = start;
        let mut run_until = |m: &mut Mesh, until: Instant| {
            while let Some(t) = m.poll_timeout().filter(|t| *t <= until) {
                now = t.max(now);
                m.handle_timeout(now);
            }
            now = until;
        };
        run_until(&mut m, start + Duration::from_millis(500));
        assert!(m.topology().get(n(3)).is_some(), "kept after a recalculation");
        assert!(!m.routes().reachable(n(3)));
        assert!(!std::iter::from_fn(|| m.poll_event()).any(|e| e == MeshEvent::PeerAdded(n(3))), "not known while unreachable");
        m.handle_message(start + Duration::from_millis(600), 7, update(vec![record(2, 6, vec![conn(1), conn(3)])])).unwrap();
        run_until(&mut m, start + Duration::from_secs(1));
        assert!(m.routes().reachable(n(3)));
        assert!(std::iter::from_fn(|| m.poll_event()).any(|e| e == MeshEvent::PeerAdded(n(3))));

        // A record of a peer that nothing ever links to goes once the
        // grace period is over, never having been known.
        m.handle_message(start + Duration::from_secs(2), 7, update(vec![record(4, 1, vec![conn(9)])])).unwrap();
        run_until(&mut m, start + Duration::from_secs(3));
        assert!(m.topology().get(n(4)).is_some());
        run_until(&mut m, start + Duration::from_secs(2) + GC_GRACE + Duration::from_secs(1));
        assert!(m.topology().get(n(4)).is_none(), "collected after the grace period");
        assert!(!std::iter::from_fn(|| m.poll_event()).any(|e| e == MeshEvent::PeerAdded(n(4))));
    }

    #[test]
    fn only_a_link_to_a_peer_not_already_reached_starts_a_digest_exchange() {
        let mut m = mesh(1);
        let now = Instant::now();
        let digests = |m: &mut Mesh, conn: ConnId| drain(m).iter().filter(|t| t.conn == conn && matches!(t.msg.body, Some(Body::Digest(_)))).count();
        m.add_connection(now, 7, remote(2, 1, false)).unwrap();
        assert_eq!(digests(&mut m, 7), 1, "a peer we did not reach");
        let records = vec![record_msg(2, 5, vec![linked(1), linked(3)]), record_msg(3, 5, vec![linked(2)])];
        m.handle_message(now, 7, Body::Update(TopologyUpdate { records, deltas: Vec::new() }).into()).unwrap();
        let now = now + Duration::from_secs(1);
        m.handle_timeout(now);
        assert!(m.routes().reachable(n(3)));
        m.add_connection(now, 8, remote(3, 2, false)).unwrap();
        assert_eq!(digests(&mut m, 8), 0, "3 is reached through 2, in the incarnation its record is of");
        // 3 restarted: a new incarnation has lost its state.
        let restarted = RemotePeer { uid: PeerUid::new(33).unwrap(), ..remote(3, 3, false) };
        m.add_connection(now, 9, restarted).unwrap();
        assert_eq!(digests(&mut m, 9), 1, "a restarted peer");
    }

    #[test]
    fn repeated_names_in_a_request_are_answered_once() {
        let mut m = mesh(1);
        let now = Instant::now();
        m.add_connection(now, 7, remote(2, 1, false)).unwrap();
        drain(&mut m);
        let names = vec![1u64; 5000];
        m.handle_message(now, 7, Body::Request(TopologyRequest { names }).into()).unwrap();
        // Answered with the next update round.
        run_until(&mut m, now + Duration::from_secs(1));
        let records: usize = drain(&mut m)
            .into_iter()
            .map(|t| match &t.msg.body {
                Some(Body::Update(u)) => u.records.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(records, 1);
    }

    #[test]
    fn a_unicast_is_never_sent_back_where_it_came_from() {
        let mut m = mesh(1);
        let now = Instant::now();
        m.add_connection(now, 7, remote(2, 1, false)).unwrap();
        // Peer 2's record says it reaches 3 only through us (a stale view):
        // our route to 3 would be via 2 if 2 claimed a link to 3.
        let key = |k: u8| Identity::from_secret([k; 32]);
        let conn = |p: u64, outbound| ConnectionInfo { peer: n(p), address: String::new(), outbound, established: true };
        let rec2 = PeerRecord::signed(&key(2), n(2), "p2".into(), PeerUid::new(2).unwrap(), 5, vec![conn(1, true), conn(3, true)]);
        let rec3 = PeerRecord::signed(&key(3), n(3), "p3".into(), PeerUid::new(3).unwrap(), 5, vec![conn(2, false)]);
        m.handle_message(now, 7, Body::Update(TopologyUpdate { records: vec![rec2.to_msg(), rec3.to_msg()], deltas: Vec::new() }).into()).unwrap();
        let now = m.poll_timeout().unwrap().max(now + m.config().recalc_interval);
        m.handle_timeout(now);
        assert_eq!(m.routes().next_hop(n(3)), Some(n(2)));
        drain(&mut m);
        let msg = ChannelMsg { channel: "x".into(), src: 2, dst: 3, data: vec![] };
        m.handle_message(now, 7, Body::Unicast(msg).into()).unwrap();
        assert!(drain(&mut m).is_empty(), "bounced back to the sender");
        assert_eq!(m.stats().dropped_no_route, 1);
    }

    #[test]
    fn both_ends_keep_the_same_connection_of_a_duplicate_pair() {
        let now = Instant::now();
        let (mut a, mut b) = (mesh(1), mesh(2));
        // Connection 10 dialed by 1, connection 20 dialed by 2, arriving in
        // opposite orders at the two ends.
        a.add_connection(now, 10, remote(2, 10, true)).unwrap();
        b.add_connection(now, 20, remote(1, 20, true)).unwrap();
        let ra = a.add_connection(now, 20, remote(2, 20, false));
        let rb = b.add_connection(now, 10, remote(1, 10, false));
        // Dialed by the higher name (2) wins: connection 20 on both ends.
        assert!(ra.is_ok(), "a replaces 10 with 20");
        assert_eq!(rb, Err(AddConnectionError::Duplicate(n(1))));
        assert_eq!(a.connection_to(n(2)), Some(20));
        assert_eq!(b.connection_to(n(1)), Some(20));
        assert!(std::iter::from_fn(|| a.poll_event()).any(|e| e == MeshEvent::CloseConnection { conn: 10, reason: CloseReason::Duplicate }));
    }
}
