//! The node: the one sans-IO composition of the [`Mesh`], the
//! [`ConnectionMaker`] and any number of [`Channel`]s, with the persistence
//! point between them. The tokio driver ([`crate::driver`]) and the
//! deterministic simulation ([`crate::sim`]) both drive this same type, so
//! there is one copy of the glue.
//!
//! A driver feeds it what happened — a connection established or failed, a
//! message, a connection closed, a save finished, a deadline passed — and
//! carries out what it asks for: [`Node::poll_transmit`] (a message on a
//! connection) and [`Node::poll_action`] (dial, close, save, or an event
//! to report). Nothing a persistent channel queued at generation `g` is
//! handed to [`Node::poll_transmit`] before the driver has reported `g`
//! saved with [`Node::handle_saved`]; while saving fails the node asks
//! again with a growing pause and [`Node::save_error`] says why.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::RngCore;
use weave_core::rng::seeded;
use weave_core::PeerName;

use crate::channel::Channel;
use crate::connmaker::{ConnMakerConfig, ConnectionMaker, InvalidTarget};
use crate::mesh::{AddConnectionError, ConnId, Mesh, MeshConfig, MeshEvent, RemotePeer, Transmit};
use crate::proto::Envelope;

/// The first pause after a failed save; it doubles up to [`MAX_SAVE_PAUSE`].
const FIRST_SAVE_PAUSE: Duration = Duration::from_millis(100);
/// The longest pause between attempts to save.
const MAX_SAVE_PAUSE: Duration = Duration::from_secs(5);

/// Where a persistent channel's snapshots go (a file, a database, memory
/// in tests). Called off the node, by its driver.
pub trait Persist: Send + 'static {
    /// Replace the saved state with `data` (generation `generation`);
    /// done only once it is durable.
    fn save(&mut self, generation: u64, data: &[u8]) -> Result<(), String>;
}

/// Snapshots written to one file, atomically (written aside, synced,
/// renamed, directory synced).
#[derive(Debug, Clone)]
pub struct FilePersist(pub PathBuf);

impl Persist for FilePersist {
    fn save(&mut self, _generation: u64, data: &[u8]) -> Result<(), String> {
        weave_core::fs::write_atomically(&self.0, data).map_err(|e| format!("{}: {e}", self.0.display()))
    }
}

/// A channel's state to save.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaveRequest {
    /// The channel.
    pub channel: String,
    /// The generation this is.
    pub generation: u64,
    /// What to save.
    pub data: Vec<u8>,
}

/// What the node asks its driver to do.
#[derive(Debug)]
#[non_exhaustive]
pub enum Action {
    /// Dial this target, then report [`Node::handle_established`] or
    /// [`Node::handle_dial_failed`].
    Dial(String),
    /// Close this connection (the node has already forgotten it).
    Close {
        /// Which.
        conn: ConnId,
        /// Why.
        reason: String,
    },
    /// Save this, then report [`Node::handle_saved`]. At most one save per
    /// channel is outstanding.
    Save(SaveRequest),
    /// Something to report: peers added or removed, a name collision, a
    /// topology change (see [`Node::routes_epoch`]).
    Event(MeshEvent),
}

struct NodeConn {
    peer: PeerName,
    /// The target we dialed (None when the peer dialed us).
    target: Option<String>,
}

#[derive(Default)]
struct SaveState {
    in_flight: Option<u64>,
    error: Option<String>,
    retry_at: Option<Instant>,
    pause: Option<Duration>,
}

/// Mesh, connection maker and channels, composed. See the module docs.
pub struct Node {
    mesh: Mesh,
    cm: ConnectionMaker,
    conns: BTreeMap<ConnId, NodeConn>,
    /// Targets whose dial met a peer we were already connected to.
    covered: HashMap<String, PeerName>,
    /// Dials and handshakes under way (they count toward the limit).
    in_progress: usize,
    dialing: usize,
    saves: BTreeMap<String, SaveState>,
    actions: VecDeque<Action>,
    routes_epoch: u64,
    /// Bumped whenever `covered` changes.
    covered_epoch: u64,
    /// The topology changed since discovery last looked at it.
    discovery_stale: bool,
    /// What the connection maker was last told was connected, as (mesh
    /// connections, covered, active count, targets) generations: while
    /// none changes, telling it again (copying every address) is skipped.
    told: Option<(u64, u64, usize, u64)>,
}

impl Node {
    /// A node with no channels and no connections.
    pub fn new(mesh: MeshConfig, conn_maker: ConnMakerConfig, now: Instant, rng: &mut impl RngCore) -> Self {
        Self {
            mesh: Mesh::new(mesh, now, seeded(rng.next_u64())),
            cm: ConnectionMaker::new(conn_maker, seeded(rng.next_u64())),
            conns: BTreeMap::new(),
            covered: HashMap::new(),
            in_progress: 0,
            dialing: 0,
            covered_epoch: 0,
            discovery_stale: false,
            told: None,
            saves: BTreeMap::new(),
            actions: VecDeque::new(),
            routes_epoch: 0,
        }
    }

    /// Register (or replace) a channel that persists nothing.
    pub fn register_channel(&mut self, name: impl Into<String>, channel: Box<dyn Channel>) {
        let name = name.into();
        self.saves.remove(&name);
        self.mesh.register_channel(name, channel);
    }

    /// Register (or replace) a channel whose generations are saved (through
    /// [`Action::Save`]) before anything it queued leaves. Register it as
    /// restored from what was saved: its current generation is saved again
    /// first.
    pub fn register_persistent_channel(&mut self, name: impl Into<String>, channel: Box<dyn Channel>) {
        let name = name.into();
        self.saves.insert(name.clone(), SaveState::default());
        self.mesh.register_persistent_channel(name, channel);
    }

    /// The mesh, to inspect.
    pub fn mesh(&self) -> &Mesh {
        &self.mesh
    }

    /// The mesh, to call directly (send on a channel, read its routes);
    /// what it queues goes out with the next input the node handles.
    pub fn mesh_mut(&mut self) -> &mut Mesh {
        &mut self.mesh
    }

    /// The connection maker, to inspect.
    pub fn connection_maker(&self) -> &ConnectionMaker {
        &self.cm
    }

    /// Bumped whenever the routes change.
    pub fn routes_epoch(&self) -> u64 {
        self.routes_epoch
    }

    /// Established connections: peer and the target dialed, if we dialed.
    pub fn connections(&self) -> impl Iterator<Item = (ConnId, PeerName, Option<&str>)> + '_ {
        self.conns.iter().map(|(id, c)| (*id, c.peer, c.target.as_deref()))
    }

    /// Run `f` on channel `name` as its own type (`None` if there is no
    /// such channel, or it has another type), then send what it queued.
    pub fn with_channel<C: Channel, R>(&mut self, now: Instant, name: &str, f: impl FnOnce(&mut C) -> R) -> Option<R> {
        let r = f(self.mesh.channel_mut::<C>(name)?);
        self.mesh.flush_channels(now);
        self.pump(now);
        Some(r)
    }

    /// Why channel `name` cannot save its state, while it cannot.
    pub fn save_error(&self, channel: &str) -> Option<&str> {
        self.saves.get(channel)?.error.as_deref()
    }

    /// Dials and inbound handshakes the driver has under way that the
    /// node did not ask for (they count toward the connection limit).
    pub fn set_in_progress(&mut self, n: usize) {
        self.in_progress = n;
    }

    /// Add direct targets (`host[:port]`); `replace` drops the others.
    pub fn connect(&mut self, now: Instant, targets: &[String], replace: bool) -> Result<(), InvalidTarget> {
        self.cm.connect(now, targets, replace)?;
        self.pump(now);
        Ok(())
    }

    /// Drop direct targets, and end the connections made to them (or the
    /// ones a dial to them found already up, unless we dialed that peer
    /// through a target we keep): nothing is carried for a peer the
    /// operator asked to forget. A peer that still targets us connects
    /// again.
    pub fn forget(&mut self, now: Instant, targets: &[String]) -> Result<(), InvalidTarget> {
        self.cm.forget(targets)?;
        let forgotten: Vec<String> = targets.iter().filter_map(|t| self.cm.normalize(t).ok()).collect();
        let covered: Vec<PeerName> = forgotten.iter().filter_map(|t| self.covered.remove(t)).collect();
        self.covered_epoch += 1;
        let victims: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| match &c.target {
                Some(t) => forgotten.contains(t),
                None => covered.contains(&c.peer),
            })
            .map(|(id, _)| *id)
            .collect();
        for conn in victims {
            self.close(now, conn, "forgotten".into());
        }
        self.pump(now);
        Ok(())
    }

    /// A connection completed its handshake; `target` is what we dialed
    /// (None for an inbound connection). On `Err` the driver closes it.
    ///
    /// At the connection limit, an inbound connection from a peer we have
    /// no connection to gets in only if the routes do not reach it: then a
    /// link that can go without cutting anyone off makes room (see
    /// [`Mesh::link_to_give_up`]). Otherwise it is refused with
    /// [`AddConnectionError::AtLimit`]: send it [`Node::referral`] before
    /// closing, so that it tries peers with room instead of us.
    pub fn handle_established(&mut self, now: Instant, conn: ConnId, remote: RemotePeer, target: Option<String>) -> Result<(), AddConnectionError> {
        if target.is_some() {
            self.dialing = self.dialing.saturating_sub(1);
        }
        let limit = self.cm.config().conn_limit;
        if target.is_none() && self.conns.len() >= limit && self.mesh.connection_to(remote.name).is_none() {
            // Links we dialed because we were told to are not given up.
            let direct = self.cm.direct_targets();
            let conns = &self.conns;
            let keep = |c: ConnId| conns.get(&c).and_then(|n| n.target.as_ref()).is_some_and(|t| direct.contains(t));
            let Some(victim) = self.mesh.link_to_give_up(remote.name, keep) else {
                return Err(AddConnectionError::AtLimit(limit));
            };
            let reason = format!("made room for {}, which no route reaches", remote.name);
            tracing::info!(peer = %remote.name, "at the connection limit: {reason}");
            self.close(now, victim, reason);
        }
        let peer = remote.name;
        let result = self.mesh.add_connection(now, conn, remote);
        match (&result, &target) {
            (Ok(()), _) => {
                self.conns.insert(conn, NodeConn { peer, target });
            }
            // Another address of a peer we are connected to: covered for as
            // long as that connection lasts.
            (Err(AddConnectionError::Duplicate(_)), Some(t)) => {
                self.covered.insert(t.clone(), peer);
                self.covered_epoch += 1;
            }
            (Err(e), Some(t)) => self.cm.dial_failed(now, t, e.to_string(), e.is_permanent()),
            (Err(_), None) => {}
        }
        self.pump(now);
        result
    }

    /// What to send `joiner`, refused with [`AddConnectionError::AtLimit`],
    /// before closing: other peers' listen addresses, the least connected
    /// first.
    pub fn referral(&mut self, joiner: PeerName) -> Envelope {
        self.mesh.referral(joiner)
    }

    /// A dial we were asked for failed (at the TCP level or in the
    /// handshake).
    pub fn handle_dial_failed(&mut self, now: Instant, target: &str, reason: String, permanent: bool) {
        self.dialing = self.dialing.saturating_sub(1);
        self.cm.dial_failed(now, target, reason, permanent);
        self.pump(now);
    }

    /// A message arrived on `conn`. A protocol violation closes it (an
    /// [`Action::Close`]).
    pub fn handle_message(&mut self, now: Instant, conn: ConnId, msg: Envelope) {
        if let Err(e) = self.mesh.handle_message(now, conn, msg) {
            tracing::warn!(conn, error = %e, "closing connection after a protocol error");
            self.close(now, conn, e.to_string());
        }
        self.pump(now);
    }

    /// Whether what was sent on `conn` still waits to be written (see
    /// [`Mesh::set_backlogged`]): the I/O layer says so past a high-water
    /// mark of queued bytes and clears it once they drained.
    pub fn set_backlogged(&mut self, now: Instant, conn: ConnId, backlogged: bool) {
        self.mesh.set_backlogged(now, conn, backlogged);
        self.pump(now);
    }

    /// A connection ended (closed by the peer or by an I/O error).
    pub fn handle_closed(&mut self, now: Instant, conn: ConnId) {
        self.conns.remove(&conn);
        self.mesh.remove_connection(now, conn);
        self.pump(now);
    }

    /// A save asked for by [`Action::Save`] finished.
    pub fn handle_saved(&mut self, now: Instant, channel: &str, generation: u64, result: Result<(), String>) {
        let Some(s) = self.saves.get_mut(channel) else { return };
        if s.in_flight != Some(generation) {
            return;
        }
        s.in_flight = None;
        match result {
            Ok(()) => {
                if s.error.take().is_some() {
                    tracing::info!(channel, "state saved again; the channel speaks again");
                }
                s.pause = None;
                s.retry_at = None;
                self.mesh.channel_saved(now, channel, generation);
            }
            Err(e) => {
                if s.error.as_deref() != Some(e.as_str()) {
                    tracing::error!(channel, error = %e, "cannot save state: the channel holds its messages and answers until it can");
                }
                s.error = Some(e);
                let pause = s.pause.map_or(FIRST_SAVE_PAUSE, |p| (p * 2).min(MAX_SAVE_PAUSE));
                s.pause = Some(pause);
                s.retry_at = Some(now + pause);
            }
        }
        self.pump(now);
    }

    /// A deadline given by [`Node::poll_timeout`] passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.mesh.poll_timeout().is_some_and(|t| t <= now) {
            self.mesh.handle_timeout(now);
        }
        for s in self.saves.values_mut() {
            if s.retry_at.is_some_and(|t| t <= now) {
                s.retry_at = None;
            }
        }
        self.pump(now);
    }

    /// When [`Node::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let retries = self.saves.values().filter_map(|s| s.retry_at);
        [self.mesh.poll_timeout(), self.cm.poll_timeout()].into_iter().flatten().chain(retries).min()
    }

    /// The next message to send on a connection.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.mesh.poll_transmit()
    }

    /// The next thing to do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn close(&mut self, now: Instant, conn: ConnId, reason: String) {
        if self.conns.remove(&conn).is_some() {
            self.actions.push_back(Action::Close { conn, reason });
        }
        self.mesh.remove_connection(now, conn);
    }

    /// Act on what the mesh reported, keep the connection maker current,
    /// and ask for the saves that are due.
    fn pump(&mut self, now: Instant) {
        loop {
            let mut progressed = false;
            let mut topo_changed = false;
            while let Some(ev) = self.mesh.poll_event() {
                progressed = true;
                match ev {
                    MeshEvent::CloseConnection { conn, reason } => {
                        if self.conns.remove(&conn).is_some() {
                            self.actions.push_back(Action::Close { conn, reason: reason.to_string() });
                        }
                    }
                    MeshEvent::TopologyChanged => topo_changed = true,
                    MeshEvent::Referred { conn, peer, addresses } => {
                        tracing::info!(%peer, referred = addresses.len(), "peer at its connection limit referred us to others");
                        let target = self.conns.get(&conn).and_then(|c| c.target.clone());
                        self.cm.referred(now, target.as_deref(), &addresses);
                    }
                    ev => self.actions.push_back(Action::Event(ev)),
                }
            }
            if topo_changed {
                self.routes_epoch += 1;
                self.discovery_stale = true;
                self.actions.push_back(Action::Event(MeshEvent::TopologyChanged));
            }
            // At the limit nothing is dialed: the candidates (a walk over
            // every record) wait until a connection goes.
            let limit = self.cm.config().conn_limit;
            if self.discovery_stale && self.conns.len() < limit {
                self.discovery_stale = false;
                self.cm.set_discovered(now, self.mesh.discovery_candidates(limit));
            }
            let active = self.conns.len() + self.dialing + self.in_progress;
            let told = (self.mesh.conn_epoch(), self.covered_epoch, active, self.cm.generation());
            if self.told != Some(told) {
                let mut connected = self.mesh.connected_addresses();
                let peers: std::collections::HashSet<PeerName> = self.conns.values().map(|c| c.peer).collect();
                let before = self.covered.len();
                self.covered.retain(|_, peer| peers.contains(peer));
                if self.covered.len() != before {
                    self.covered_epoch += 1;
                }
                connected.extend(self.covered.keys().cloned());
                self.cm.set_connected(now, connected, active);
                self.told = Some((self.mesh.conn_epoch(), self.covered_epoch, active, self.cm.generation()));
            }
            while let Some(addr) = self.cm.poll_dial(now) {
                self.dialing += 1;
                self.actions.push_back(Action::Dial(addr));
            }
            if !progressed {
                break;
            }
        }
        let due: Vec<String> = self
            .mesh
            .unsaved_channels()
            .filter(|(name, _)| self.saves.get(*name).is_some_and(|s| s.in_flight.is_none() && s.retry_at.is_none()))
            .map(|(name, _)| name.to_owned())
            .collect();
        for channel in due {
            let Some((generation, data)) = self.mesh.channel_snapshot(&channel) else { continue };
            if let Some(s) = self.saves.get_mut(&channel) {
                s.in_flight = Some(generation);
            }
            self.actions.push_back(Action::Save(SaveRequest { channel, generation, data }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::{BoxError, Output};
    use crate::proto::Body;
    use weave_core::rng::seeded;
    use weave_core::PeerUid;

    /// A register whose every change must be saved: `set` queues the new
    /// value as gossip; merging a larger value relays it.
    #[derive(Default)]
    struct Register {
        value: u64,
        generation: u64,
        out: Vec<Vec<u8>>,
        saved: Vec<u64>,
    }

    impl Register {
        fn set(&mut self, v: u64) {
            self.value = v;
            self.generation += 1;
            self.out.push(v.to_le_bytes().to_vec());
        }
    }

    impl Channel for Register {
        fn on_gossip(&mut self, _: Instant, _: PeerName, update: &[u8]) -> Result<Option<Vec<u8>>, BoxError> {
            let v = u64::from_le_bytes(update.try_into()?);
            if v <= self.value {
                return Ok(None);
            }
            self.value = v;
            self.generation += 1;
            Ok(Some(update.to_vec()))
        }
        fn on_broadcast(&mut self, _: Instant, _: PeerName, _: &[u8]) -> Result<(), BoxError> {
            Ok(())
        }
        fn on_unicast(&mut self, _: Instant, _: PeerName, _: &[u8]) -> Result<(), BoxError> {
            Ok(())
        }
        fn full_state(&mut self, _: Instant) -> Vec<Vec<u8>> {
            Vec::new()
        }
        fn poll_output(&mut self) -> Option<Output> {
            self.out.pop().map(Output::Gossip)
        }
        fn generation(&self) -> u64 {
            self.generation
        }
        fn snapshot(&mut self) -> Vec<u8> {
            self.value.to_le_bytes().to_vec()
        }
        fn on_saved(&mut self, _: Instant, generation: u64) {
            self.saved.push(generation);
        }
    }

    fn name(n: u64) -> PeerName {
        PeerName::from_u64(n).unwrap()
    }

    /// A node with a persistent register and two connections (peers 2, 3).
    fn node(now: Instant) -> Node {
        let mut rng = seeded(7);
        let mut n = Node::new(MeshConfig::new(name(1), "one", PeerUid::random(&mut rng)), ConnMakerConfig::default(), now, &mut rng);
        n.register_persistent_channel("reg", Box::new(Register::default()));
        for (conn, peer) in [(10, 2), (11, 3)] {
            let remote = RemotePeer {
                name: name(peer),
                nickname: format!("p{peer}"),
                uid: PeerUid::random(&mut rng),
                conn_id: conn,
                address: String::new(),
                outbound: false,
                version: crate::link::PROTOCOL_MAX,
            };
            n.handle_established(now, conn, remote, None).unwrap();
        }
        drain(&mut n);
        n
    }

    /// The register's gossip sent, by connection.
    fn drain(n: &mut Node) -> Vec<(ConnId, Vec<u8>)> {
        let mut sent = Vec::new();
        while let Some(t) = n.poll_transmit() {
            if let Some(Body::Gossip(m)) = &t.msg.body {
                if m.channel == "reg" {
                    sent.push((t.conn, m.data.clone()));
                }
            }
        }
        sent
    }

    fn saves(n: &mut Node) -> Vec<SaveRequest> {
        std::iter::from_fn(|| n.poll_action()).filter_map(|a| if let Action::Save(s) = a { Some(s) } else { None }).collect()
    }

    #[test]
    fn nothing_a_persistent_channel_queued_leaves_before_it_is_saved() {
        let now = Instant::now();
        let mut n = node(now);
        n.with_channel(now, "reg", |r: &mut Register| r.set(5)).unwrap();
        assert!(drain(&mut n).is_empty(), "sent before saved");
        let s = saves(&mut n);
        assert_eq!(s, vec![SaveRequest { channel: "reg".into(), generation: 1, data: 5u64.to_le_bytes().to_vec() }]);
        // One save at a time: a second change waits for the first save.
        n.with_channel(now, "reg", |r: &mut Register| r.set(6)).unwrap();
        assert!(saves(&mut n).is_empty() && drain(&mut n).is_empty());
        n.handle_saved(now, "reg", 1, Ok(()));
        let sent = drain(&mut n);
        assert_eq!(sent.iter().map(|(_, d)| d.clone()).collect::<Vec<_>>(), vec![5u64.to_le_bytes().to_vec(); 2], "generation 1 only, to both");
        assert_eq!(saves(&mut n).iter().map(|s| s.generation).collect::<Vec<_>>(), vec![2]);
        n.handle_saved(now, "reg", 2, Ok(()));
        assert_eq!(drain(&mut n).len(), 2);
        assert_eq!(n.mesh().channel::<Register>("reg").unwrap().saved, vec![1, 2]);
    }

    #[test]
    fn a_merge_is_relayed_only_once_saved_and_never_back() {
        let now = Instant::now();
        let mut n = node(now);
        let msg = crate::proto::ChannelMsg { channel: "reg".into(), src: 2, dst: 0, data: 9u64.to_le_bytes().to_vec() };
        n.handle_message(now, 10, Body::Gossip(msg).into());
        assert!(drain(&mut n).is_empty(), "relayed before saved");
        let s = saves(&mut n);
        assert_eq!(s.len(), 1);
        n.handle_saved(now, "reg", s[0].generation, Ok(()));
        assert_eq!(drain(&mut n), vec![(11, 9u64.to_le_bytes().to_vec())], "to the other neighbour only");
    }

    #[test]
    fn a_failing_save_holds_everything_reports_why_and_retries_with_a_growing_pause() {
        let now = Instant::now();
        let mut n = node(now);
        n.with_channel(now, "reg", |r: &mut Register| r.set(1)).unwrap();
        let mut t = now;
        let mut pauses = Vec::new();
        let mut s = saves(&mut n);
        for _ in 0..4 {
            assert_eq!(s.len(), 1, "asked again");
            n.handle_saved(t, "reg", s[0].generation, Err("no space left on device".into()));
            assert_eq!(n.save_error("reg"), Some("no space left on device"));
            assert!(drain(&mut n).is_empty());
            // Time passes (heartbeats and all) until it asks again.
            let failed = t;
            loop {
                assert!(saves(&mut n).is_empty() || t > failed);
                t = n.poll_timeout().unwrap();
                n.handle_timeout(t);
                assert!(drain(&mut n).is_empty(), "nothing leaves while unsaved");
                s = saves(&mut n);
                if !s.is_empty() {
                    break;
                }
            }
            pauses.push(t - failed);
        }
        assert!(pauses.windows(2).all(|w| w[1] > w[0]), "{pauses:?}");
        n.handle_saved(t, "reg", s[0].generation, Ok(()));
        assert_eq!(n.save_error("reg"), None);
        assert_eq!(drain(&mut n).len(), 2, "sent once saved");
    }

    #[test]
    fn a_channel_without_persistence_sends_at_once() {
        let now = Instant::now();
        let mut n = node(now);
        n.register_channel("reg", Box::new(Register::default()));
        n.with_channel(now, "reg", |r: &mut Register| r.set(3)).unwrap();
        assert_eq!(drain(&mut n).len(), 2);
        assert!(saves(&mut n).is_empty());
        assert_eq!(n.mesh().channel::<Register>("reg").unwrap().saved, vec![1], "reached counts as saved");
    }
}
