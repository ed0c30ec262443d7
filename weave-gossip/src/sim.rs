//! The mesh on weave-core's simulation harness: a [`SimPeer`] is a real
//! [`Mesh`] plus [`ConnectionMaker`], with connections modelled as messages
//! between simulated hosts. Embedders use it to test their own gossip
//! channels (IPAM, DNS, ...) over lossy, partitioned, virtual-time networks.
//!
//! Addresses are `n<id>:6783`, where `<id>` is the [`NodeId`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use prost::Message;
use rand::RngCore;
use weave_core::rng::{seeded, SimRng};
use weave_core::sim::{NodeId, Outbox, SimNode};
use weave_core::{PeerName, PeerUid};

use crate::connmaker::{ConnMakerConfig, ConnectionMaker};
use crate::mesh::{ConnId, Mesh, MeshConfig, MeshEvent, RemotePeer};
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

/// An embedder's state machine riding the peer's mesh (IPAM, DNS, ...):
/// the simulation gives it time and a chance to send after every event.
pub trait SimApp {
    /// Move what the application wants sent into the mesh.
    fn pump(&mut self, now: Instant, mesh: &mut Mesh);
    /// When the application next needs [`SimApp::handle_timeout`].
    fn poll_timeout(&self) -> Option<Instant>;
    /// Its deadline passed.
    fn handle_timeout(&mut self, now: Instant);
}

/// A mesh peer in the simulation.
pub struct SimPeer {
    id: NodeId,
    mesh: Mesh,
    cm: ConnectionMaker,
    conns: HashMap<ConnId, NodeId>,
    dials: HashMap<u64, (String, Instant)>,
    rng: SimRng,
    app: Option<Box<dyn SimApp>>,
}

impl SimPeer {
    /// A peer for node `id`, named after it unless `name` is given.
    pub fn new(id: NodeId, now: Instant, seed: u64, configure: impl FnOnce(&mut MeshConfig, &mut ConnMakerConfig)) -> Self {
        let mut rng = seeded(seed ^ (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let name = PeerName::from_u64(id as u64 + 1).expect("node ids are small");
        let uid = PeerUid::random(&mut rng);
        let mut mcfg = MeshConfig::new(name, format!("host{id}"), uid);
        let mut ccfg = ConnMakerConfig::default();
        configure(&mut mcfg, &mut ccfg);
        let mesh = Mesh::new(mcfg, now, seeded(rng.next_u64()));
        let cm = ConnectionMaker::new(ccfg, seeded(rng.next_u64()));
        Self { id, mesh, cm, conns: HashMap::new(), dials: HashMap::new(), rng, app: None }
    }

    /// Attach an application (after registering its channel on the mesh).
    pub fn set_app(&mut self, app: Box<dyn SimApp>) {
        self.app = Some(app);
    }

    /// The mesh, to inspect or to call (use [`weave_core::sim::Sim::with_node`]
    /// and then [`SimPeer::flush`] for calls that send).
    pub fn mesh(&self) -> &Mesh {
        &self.mesh
    }

    /// The mesh, mutably.
    pub fn mesh_mut(&mut self) -> &mut Mesh {
        &mut self.mesh
    }

    /// The connection maker.
    pub fn connection_maker(&self) -> &ConnectionMaker {
        &self.cm
    }

    /// Add direct targets (node ids).
    pub fn connect(&mut self, now: Instant, targets: &[NodeId], out: &mut Outbox<SimWire>) {
        let addrs: Vec<String> = targets.iter().map(|&t| sim_address(t)).collect();
        self.cm.connect(now, &addrs, false).expect("simulated addresses are valid");
        self.flush(now, out);
    }

    /// Forget direct targets and close connections to them.
    pub fn forget(&mut self, now: Instant, targets: &[NodeId], out: &mut Outbox<SimWire>) {
        let addrs: Vec<String> = targets.iter().map(|&t| sim_address(t)).collect();
        self.cm.forget(&addrs).expect("simulated addresses are valid");
        let close: Vec<ConnId> = self.conns.iter().filter(|(_, n)| targets.contains(n)).map(|(c, _)| *c).collect();
        for c in close {
            self.close(now, c, out);
        }
        self.flush(now, out);
    }

    fn hello(&self) -> SimHello {
        let cfg = self.mesh.config();
        SimHello { name: cfg.name, nickname: cfg.nickname.clone(), uid: cfg.uid, address: sim_address(self.id) }
    }

    fn close(&mut self, now: Instant, conn: ConnId, out: &mut Outbox<SimWire>) {
        if let Some(to) = self.conns.remove(&conn) {
            out.send(to, SimWire::Close(conn));
        }
        self.mesh.remove_connection(now, conn);
    }

    /// Move what the application, the mesh and the connection maker want
    /// done into the outbox.
    pub fn flush(&mut self, now: Instant, out: &mut Outbox<SimWire>) {
        if let Some(app) = &mut self.app {
            app.pump(now, &mut self.mesh);
        }
        loop {
            let mut progressed = false;
            while let Some(t) = self.mesh.poll_transmit() {
                if let Some(&to) = self.conns.get(&t.conn) {
                    out.send(to, SimWire::Msg(t.conn, t.msg));
                }
            }
            let mut topo_changed = false;
            while let Some(ev) = self.mesh.poll_event() {
                progressed = true;
                match ev {
                    MeshEvent::CloseConnection { conn, .. } => {
                        if let Some(to) = self.conns.remove(&conn) {
                            out.send(to, SimWire::Close(conn));
                        }
                    }
                    MeshEvent::TopologyChanged => topo_changed = true,
                    _ => {}
                }
            }
            if topo_changed {
                self.cm.set_discovered(now, self.mesh.discovery_candidates());
            }
            let active = self.conns.len() + self.dials.len();
            self.cm.set_connected(now, self.mesh.connected_addresses(), active);
            while let Some(addr) = self.cm.poll_dial(now) {
                let Some(to) = node_of(&addr) else { continue };
                let conn = self.rng.next_u64() | 1;
                self.dials.insert(conn, (addr, now + DIAL_TIMEOUT));
                out.send(to, SimWire::Dial(conn, self.hello()));
            }
            if !progressed {
                break;
            }
        }
    }
}

impl SimNode for SimPeer {
    type Msg = SimWire;

    fn handle_message(&mut self, now: Instant, from: NodeId, msg: SimWire, out: &mut Outbox<SimWire>) {
        match msg {
            SimWire::Dial(conn, h) => {
                let remote = RemotePeer { name: h.name, nickname: h.nickname, uid: h.uid, conn_id: conn, address: h.address, outbound: false };
                match self.mesh.add_connection(now, conn, remote) {
                    Ok(()) => {
                        self.conns.insert(conn, from);
                        out.send(from, SimWire::Accept(conn, self.hello()));
                    }
                    Err(e) => out.send(from, SimWire::Refuse(conn, e.to_string(), e.is_permanent())),
                }
            }
            SimWire::Accept(conn, h) => {
                let Some((addr, _)) = self.dials.remove(&conn) else {
                    out.send(from, SimWire::Close(conn));
                    return;
                };
                let remote = RemotePeer { name: h.name, nickname: h.nickname, uid: h.uid, conn_id: conn, address: addr.clone(), outbound: true };
                match self.mesh.add_connection(now, conn, remote) {
                    Ok(()) => {
                        self.conns.insert(conn, from);
                    }
                    Err(e) => {
                        out.send(from, SimWire::Close(conn));
                        self.cm.dial_failed(now, &addr, e.to_string(), e.is_permanent());
                    }
                }
            }
            SimWire::Refuse(conn, reason, permanent) => {
                if let Some((addr, _)) = self.dials.remove(&conn) {
                    self.cm.dial_failed(now, &addr, reason, permanent);
                }
            }
            SimWire::Msg(conn, env) => {
                if !self.conns.contains_key(&conn) {
                    // Like a TCP reset: the sender holds a connection we do not.
                    out.send(from, SimWire::Close(conn));
                } else if let Err(e) = self.mesh.handle_message(now, conn, env) {
                    tracing::warn!(%e, "closing simulated connection");
                    self.close(now, conn, out);
                }
            }
            SimWire::Close(conn) => {
                if self.conns.remove(&conn).is_some() {
                    self.mesh.remove_connection(now, conn);
                }
            }
        }
        self.flush(now, out);
    }

    fn handle_timeout(&mut self, now: Instant, out: &mut Outbox<SimWire>) {
        if let Some(app) = &mut self.app {
            if app.poll_timeout().is_some_and(|t| t <= now) {
                app.handle_timeout(now);
            }
        }
        let expired: Vec<u64> = self.dials.iter().filter(|(_, (_, t))| *t <= now).map(|(c, _)| *c).collect();
        for c in expired {
            let (addr, _) = self.dials.remove(&c).expect("listed above");
            self.cm.dial_failed(now, &addr, "dial timed out".into(), false);
        }
        if self.mesh.poll_timeout().is_some_and(|t| t <= now) {
            self.mesh.handle_timeout(now);
        }
        self.flush(now, out);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let app = self.app.as_ref().and_then(|a| a.poll_timeout());
        [self.mesh.poll_timeout(), self.cm.poll_timeout(), self.dials.values().map(|(_, t)| *t).min(), app].into_iter().flatten().min()
    }

    fn message_len(msg: &SimWire) -> usize {
        match msg {
            SimWire::Msg(_, env) => env.encoded_len() + 4,
            _ => 48,
        }
    }
}
