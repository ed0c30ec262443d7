//! The mesh on weave-core's simulation harness: a [`SimPeer`] is the
//! production [`Node`] (the same one the tokio driver runs), with
//! connections modelled as messages between simulated hosts and saves
//! going to a simulated disk. Embedders use it to test their own channels
//! (IPAM, DNS, ...) over lossy, partitioned, virtual-time networks.
//!
//! Addresses are `n<id>:6783`, where `<id>` is the [`NodeId`].

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use prost::Message;
use rand::RngCore;
use weave_core::rng::{seeded, SimRng};
use weave_core::sim::{NodeId, Outbox, SimNode};
use weave_core::{PeerName, PeerUid};

use crate::channel::Channel;
use crate::connmaker::{ConnMakerConfig, ConnectionMaker};
use crate::mesh::{AddConnectionError, ConnId, Mesh, MeshConfig, RemotePeer};
use crate::node::{Action, Node};
use crate::proto::Envelope;

/// How long a simulated dial waits for an answer.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// The simulated address of a node.
pub fn sim_address(id: NodeId) -> String {
    format!("n{id}:6783")
}

fn node_of(addr: &str) -> Option<NodeId> {
    addr.strip_prefix('n')?.split(':').next()?.parse().ok()
}

/// Who is dialing or answering.
#[derive(Debug, Clone)]
pub struct SimHello {
    name: PeerName,
    nickname: String,
    uid: PeerUid,
    address: String,
}

/// What simulated peers send each other.
#[derive(Debug, Clone)]
pub enum SimWire {
    /// Open a connection.
    Dial(u64, SimHello),
    /// Accept it.
    Accept(u64, SimHello),
    /// Refuse it.
    Refuse(u64, String, bool),
    /// A mesh message on a connection.
    Msg(u64, Envelope),
    /// Close a connection.
    Close(u64),
}

/// A mesh peer in the simulation: the production [`Node`] (mesh,
/// connection maker, channels, persistence point), with connections as
/// messages between simulated hosts and a simulated disk.
pub struct SimPeer {
    id: NodeId,
    node: Node,
    conns: HashMap<ConnId, NodeId>,
    dials: HashMap<u64, (String, Instant)>,
    rng: SimRng,
    /// What each persistent channel last saved.
    disk: BTreeMap<String, Vec<u8>>,
    /// While set, every save fails (a full or broken disk).
    disk_error: Option<String>,
}

impl SimPeer {
    /// A peer for node `id`, named after it.
    pub fn new(id: NodeId, now: Instant, seed: u64, configure: impl FnOnce(&mut MeshConfig, &mut ConnMakerConfig)) -> Self {
        let mut rng = seeded(seed ^ (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let name = PeerName::from_u64(id as u64 + 1).expect("node ids are small");
        let uid = PeerUid::random(&mut rng);
        let mut mcfg = MeshConfig::new(name, format!("host{id}"), uid);
        // Each node keeps its key across restarts, as a router keeps it in
        // its state directory.
        let mut secret = [0x5e; 32];
        secret[..8].copy_from_slice(&(id as u64).to_le_bytes());
        mcfg.identity = Some(crate::Identity::from_secret(secret));
        let mut ccfg = ConnMakerConfig::default();
        configure(&mut mcfg, &mut ccfg);
        let node = Node::new(mcfg, ccfg, now, &mut rng);
        Self { id, node, conns: HashMap::new(), dials: HashMap::new(), rng, disk: BTreeMap::new(), disk_error: None }
    }

    /// Our signing key, for channels that sign what we own.
    pub fn identity(&self) -> crate::Identity {
        self.node.mesh().identity().clone()
    }

    /// The node.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The node, mutably (use [`weave_core::sim::Sim::with_node`] and then
    /// [`SimPeer::flush`] for calls that send).
    pub fn node_mut(&mut self) -> &mut Node {
        &mut self.node
    }

    /// The mesh, to inspect.
    pub fn mesh(&self) -> &Mesh {
        self.node.mesh()
    }

    /// The mesh, mutably (call [`SimPeer::flush`] after sending).
    pub fn mesh_mut(&mut self) -> &mut Mesh {
        self.node.mesh_mut()
    }

    /// The connection maker.
    pub fn connection_maker(&self) -> &ConnectionMaker {
        self.node.connection_maker()
    }

    /// Register a channel that persists nothing.
    pub fn register_channel(&mut self, name: &str, channel: Box<dyn Channel>) {
        self.node.register_channel(name, channel);
    }

    /// Register a channel saved to this peer's simulated disk (read it
    /// back with [`SimPeer::saved`] to build the channel after a restart).
    pub fn register_persistent_channel(&mut self, name: &str, channel: Box<dyn Channel>) {
        self.node.register_persistent_channel(name, channel);
    }

    /// Run `f` on channel `name` as its own type, then send what it queued.
    pub fn with_channel<C: Channel, R>(&mut self, now: Instant, name: &str, out: &mut Outbox<SimWire>, f: impl FnOnce(&mut C) -> R) -> Option<R> {
        let r = self.node.with_channel(now, name, f);
        self.flush(now, out);
        r
    }

    /// Channel `name` as its own type, to inspect.
    pub fn channel<C: Channel>(&self, name: &str) -> Option<&C> {
        self.node.mesh().channel(name)
    }

    /// What channel `name` last saved.
    pub fn saved(&self, name: &str) -> Option<&[u8]> {
        self.disk.get(name).map(Vec::as_slice)
    }

    /// Make every save fail (`Some(reason)`) or work again (`None`).
    pub fn set_disk_error(&mut self, error: Option<String>) {
        self.disk_error = error;
    }

    /// Add direct targets (node ids).
    pub fn connect(&mut self, now: Instant, targets: &[NodeId], out: &mut Outbox<SimWire>) {
        let addrs: Vec<String> = targets.iter().map(|&t| sim_address(t)).collect();
        self.node.connect(now, &addrs, false).expect("simulated addresses are valid");
        self.flush(now, out);
    }

    /// Forget direct targets (the node closes the connections made to them).
    pub fn forget(&mut self, now: Instant, targets: &[NodeId], out: &mut Outbox<SimWire>) {
        let addrs: Vec<String> = targets.iter().map(|&t| sim_address(t)).collect();
        self.node.forget(now, &addrs).expect("simulated addresses are valid");
        self.flush(now, out);
    }

    fn hello(&self) -> SimHello {
        let cfg = self.node.mesh().config();
        SimHello { name: cfg.name, nickname: cfg.nickname.clone(), uid: cfg.uid, address: sim_address(self.id) }
    }

    /// Carry out what the node asked for: messages, dials, closes, saves.
    pub fn flush(&mut self, now: Instant, out: &mut Outbox<SimWire>) {
        loop {
            self.node.set_in_progress(0);
            while let Some(t) = self.node.poll_transmit() {
                if let Some(&to) = self.conns.get(&t.conn) {
                    out.send(to, SimWire::Msg(t.conn, std::sync::Arc::unwrap_or_clone(t.msg)));
                }
            }
            let Some(action) = self.node.poll_action() else { break };
            match action {
                Action::Dial(addr) => match node_of(&addr) {
                    Some(to) => {
                        let conn = self.rng.next_u64() | 1;
                        self.dials.insert(conn, (addr, now + DIAL_TIMEOUT));
                        out.send(to, SimWire::Dial(conn, self.hello()));
                    }
                    None => self.node.handle_dial_failed(now, &addr, "not a simulated address".into(), true),
                },
                Action::Close { conn, .. } => {
                    if let Some(to) = self.conns.remove(&conn) {
                        out.send(to, SimWire::Close(conn));
                    }
                }
                Action::Save(req) => {
                    let result = match &self.disk_error {
                        Some(e) => Err(e.clone()),
                        None => {
                            self.disk.insert(req.channel.clone(), req.data);
                            Ok(())
                        }
                    };
                    self.node.handle_saved(now, &req.channel, req.generation, result);
                }
                _ => {}
            }
        }
    }
}

impl SimNode for SimPeer {
    type Msg = SimWire;

    fn handle_message(&mut self, now: Instant, from: NodeId, msg: SimWire, out: &mut Outbox<SimWire>) {
        match msg {
            SimWire::Dial(conn, h) => {
                let remote = RemotePeer {
                    name: h.name,
                    nickname: h.nickname,
                    uid: h.uid,
                    conn_id: conn,
                    address: h.address,
                    outbound: false,
                    version: crate::link::PROTOCOL_MAX,
                };
                match self.node.handle_established(now, conn, remote, None) {
                    Ok(()) => {
                        self.conns.insert(conn, from);
                        out.send(from, SimWire::Accept(conn, self.hello()));
                    }
                    // As over TCP: the handshake completes, the referral
                    // is the one message, then the connection closes.
                    Err(AddConnectionError::AtLimit(_)) => {
                        out.send(from, SimWire::Accept(conn, self.hello()));
                        out.send(from, SimWire::Msg(conn, self.node.referral(h.name)));
                        out.send(from, SimWire::Close(conn));
                    }
                    Err(e) => out.send(from, SimWire::Refuse(conn, e.to_string(), e.is_permanent())),
                }
            }
            SimWire::Accept(conn, h) => {
                let Some((addr, _)) = self.dials.remove(&conn) else {
                    out.send(from, SimWire::Close(conn));
                    return;
                };
                let remote = RemotePeer {
                    name: h.name,
                    nickname: h.nickname,
                    uid: h.uid,
                    conn_id: conn,
                    address: addr.clone(),
                    outbound: true,
                    version: crate::link::PROTOCOL_MAX,
                };
                match self.node.handle_established(now, conn, remote, Some(addr)) {
                    Ok(()) => {
                        self.conns.insert(conn, from);
                    }
                    Err(_) => out.send(from, SimWire::Close(conn)),
                }
            }
            SimWire::Refuse(conn, reason, permanent) => {
                if let Some((addr, _)) = self.dials.remove(&conn) {
                    self.node.handle_dial_failed(now, &addr, reason, permanent);
                }
            }
            SimWire::Msg(conn, env) => {
                if self.conns.contains_key(&conn) {
                    self.node.handle_message(now, conn, env);
                } else {
                    // Like a TCP reset: the sender holds a connection we do not.
                    out.send(from, SimWire::Close(conn));
                }
            }
            SimWire::Close(conn) => {
                if self.conns.remove(&conn).is_some() {
                    self.node.handle_closed(now, conn);
                }
            }
        }
        self.flush(now, out);
    }

    fn handle_timeout(&mut self, now: Instant, out: &mut Outbox<SimWire>) {
        let expired: Vec<u64> = self.dials.iter().filter(|(_, (_, t))| *t <= now).map(|(c, _)| *c).collect();
        for c in expired {
            let (addr, _) = self.dials.remove(&c).expect("listed above");
            self.node.handle_dial_failed(now, &addr, "dial timed out".into(), false);
        }
        if self.node.poll_timeout().is_some_and(|t| t <= now) {
            self.node.handle_timeout(now);
        }
        self.flush(now, out);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        [self.node.poll_timeout(), self.dials.values().map(|(_, t)| *t).min()].into_iter().flatten().min()
    }

    fn message_len(msg: &SimWire) -> usize {
        match msg {
            SimWire::Msg(_, env) => env.encoded_len() + 4,
            _ => 48,
        }
    }
}
