//! The tokio driver: a TCP listener, one task per connection, and one task
//! that owns the sans-IO [`Node`] (mesh, connection maker, channels). It
//! moves bytes, runs saves on the blocking pool and sleeps until the next
//! deadline; every protocol decision is the node's. Embedders reach the
//! channels inside it with [`MeshHandle::with_channel`].
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use weave_gossip::driver::{MeshBuilder, DriverConfig};
//! use weave_gossip::mesh::MeshConfig;
//! use weave_core::{PeerName, PeerUid};
//!
//! let mut rng = weave_core::rng::from_os();
//! let mesh = MeshConfig::new(PeerName::random(&mut rng), "host1", PeerUid::random(&mut rng));
//! let handle = MeshBuilder::new(DriverConfig::new(mesh, "127.0.0.1:6783".parse().unwrap()))
//!     .start()
//!     .await?;
//! handle.connect(vec!["127.0.0.1:6790".into()], false).await.ok();
//! println!("{:?}", handle.status().await.map(|s| s.peers.len()));
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use weave_core::rng::from_os;
use weave_core::{PeerName, PeerUid};

use crate::channel::Channel;
use crate::connmaker::{ConnMakerConfig, InvalidTarget, TargetState, TargetStatus};
use crate::crypto::DataKeys;
use crate::link::{Established, Link, LinkConfig, LinkEvent, LocalFeatures, Role};
use crate::mesh::{AddConnectionError, ConnId, MeshConfig, MeshEvent, MeshStats, RemotePeer, SendError};
use crate::node::{Action, Node, Persist, SaveRequest};
use crate::proto::Envelope;
use crate::routes::Routes;
use crate::topology::PeerRecord;

/// See [`DriverConfig::handshake_timeout`].
pub const DIALED_HANDSHAKE_FACTOR: u32 = 3;
/// Messages queued towards one connection before it counts as stuck.
const CONN_QUEUE: usize = 1024;
/// Bytes queued towards one connection before it counts as stuck.
const CONN_QUEUE_BYTES: usize = 16 << 20;
/// Queued bytes past which the mesh holds a connection's topology updates
/// back (merging them) until the queue is down to [`BACKLOG_LOW`]; a round
/// the mesh cut short (at [`UPDATE_ROUND_BYTES`]) waits for the same.
const BACKLOG_HIGH: usize = 128 << 10;
/// See [`BACKLOG_HIGH`].
const BACKLOG_LOW: usize = 32 << 10;
/// [`MeshConfig::update_round_bytes`] under this driver.
const UPDATE_ROUND_BYTES: usize = 256 << 10;
/// Bytes of received messages waiting for the mesh task, all connections
/// together. A connection whose message would go past it stops reading
/// (TCP flow control pushes back on the sender) until the task catches
/// up: counted in messages alone, a mesh task behind under load held
/// thousands of large topology updates, hundreds of MB. At 16 MB the
/// routers of a 200-router mesh forming sat at the limit all along, with
/// two to three times that decoded: the task was behind, and a larger
/// buffer only made what it handled older.
const INBOUND_BYTES: usize = 4 << 20;
/// How often, at most, [`Driver::log_load`] logs.
const LOAD_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// How long a closing connection may take to flush what is queued.
const CLOSE_FLUSH: Duration = Duration::from_secs(5);
/// Bytes of unwritten output above which a connection stops taking messages.
/// Encoded (and sealed) output is per connection, unlike the queued
/// messages, which neighbours share: at 4 MB, 200 routers launching at
/// load 300 grew to 200-290 MB each with peers too slow to read. The
/// kernel's socket buffer holds far more than this; it only needs to keep
/// that buffer fed.
const OUTPUT_HIGH_WATER: usize = 64 << 10;
/// Inbound handshakes in progress at most: the accept loop waits for one
/// to end before accepting more.
const MAX_INBOUND_HANDSHAKES: usize = 64;
/// Inbound handshake failures remembered for status.
const FAILURES_KEPT: usize = 16;

/// Driver settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DriverConfig {
    /// The mesh core's settings.
    pub mesh: MeshConfig,
    /// The connection maker's settings.
    pub conn_maker: ConnMakerConfig,
    /// Handshake settings (password, versions, message bound).
    pub link: LinkConfig,
    /// Where to accept connections (port 0 picks one).
    pub listen: SocketAddr,
    /// Peers to connect to at start.
    pub initial_peers: Vec<String>,
    /// Limit on a dial (default 10 s).
    pub dial_timeout: Duration,
    /// Limit on a handshake we accepted (default 5 s). One we dialed gets
    /// [`DIALED_HANDSHAKE_FACTOR`] times as long: its clock starts when the
    /// peer's kernel takes the connection into its listen backlog, and a
    /// busy peer (one that 199 routers discovered at once) may take a
    /// while to accept it. Giving up there cost both sides a retry.
    pub handshake_timeout: Duration,
    /// Accepted connections allowed in a burst (default 200: a router
    /// joining a 100-peer mesh is dialed by all of them within seconds, and
    /// a refused dial backs off as if the peer were down).
    pub accept_burst: u32,
    /// Accepted connections per second sustained (default 50).
    pub accept_per_sec: f64,
}

impl DriverConfig {
    /// Defaults around a mesh config and a listen address.
    pub fn new(mesh: MeshConfig, listen: SocketAddr) -> Self {
        Self {
            mesh,
            conn_maker: ConnMakerConfig::default(),
            link: LinkConfig::default(),
            listen,
            initial_peers: Vec::new(),
            dial_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(5),
            accept_burst: 200,
            accept_per_sec: 50.0,
        }
    }
}

/// What the driver tells subscribers (e.g. a data plane).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum DriverEvent {
    /// A connection to a peer was established.
    Connected {
        /// The peer.
        peer: PeerName,
        /// Its socket address.
        address: SocketAddr,
        /// Whether we dialed.
        outbound: bool,
        /// Keys for data-plane encryption (when a password is set).
        data_keys: Option<DataKeys>,
    },
    /// A connection to a peer ended.
    Disconnected {
        /// The peer.
        peer: PeerName,
        /// Why.
        reason: String,
    },
    /// A peer became known.
    PeerAdded(PeerName),
    /// A peer left the topology.
    PeerRemoved(PeerName),
    /// Another live router uses our peer name.
    NameCollision(PeerUid),
    /// The topology changed: the routes now in force (a data plane follows
    /// these for unicast next hops and broadcast trees).
    Routes(Routes),
}

/// The mesh as a data plane needs it, always current: published on a watch
/// channel ([`MeshHandle::view`]), so a slow reader skips to the latest
/// state and never loses a connection (or its keys), unlike an event
/// stream that can lag.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct MeshView {
    /// The established connections, by peer.
    pub connections: BTreeMap<PeerName, ViewConnection>,
    /// The routes now in force.
    pub routes: Routes,
    /// Bumped whenever `routes` changes (Routes has no cheap equality).
    pub routes_epoch: u64,
}

/// One established connection, as the data plane needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ViewConnection {
    /// Which connection: a new one to the same peer (a reconnect) differs
    /// here even when nothing else does.
    pub conn: ConnId,
    /// The peer's socket address on this connection.
    pub remote: SocketAddr,
    /// Whether we dialed.
    pub outbound: bool,
    /// Keys for data-plane encryption (when a password is set).
    pub keys: Option<DataKeys>,
}

/// State of one connection in status, named as `weave status connections` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// Dialing or handshaking.
    Connecting,
    /// Up.
    Established,
    /// Failed; will be retried.
    Retrying,
    /// Failed; will not be retried.
    Failed,
}

impl ConnectionState {
    /// The word Weave uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Established => "established",
            Self::Retrying => "retrying",
            Self::Failed => "failed",
        }
    }
}

/// One line of `weave status connections`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectionStatus {
    /// Remote socket address (or target address when not connected).
    pub address: String,
    /// Whether we dialed.
    pub outbound: bool,
    /// Where it stands.
    pub state: ConnectionState,
    /// Why it failed, or other detail.
    pub info: String,
    /// The peer, once known.
    pub peer: Option<(PeerName, String)>,
    /// Whether control traffic is encrypted.
    pub encrypted: bool,
}

/// A snapshot of the router's mesh.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Status {
    /// Our name.
    pub name: PeerName,
    /// Our nickname.
    pub nickname: String,
    /// Our UID.
    pub uid: PeerUid,
    /// The address we accept connections on.
    pub listen: SocketAddr,
    /// Whether a password is set.
    pub encryption: bool,
    /// Whether discovery is on.
    pub discovery: bool,
    /// Every peer record (ours included); without connections in a brief
    /// snapshot ([`MeshHandle::status_brief`]).
    pub peers: Vec<PeerRecord>,
    /// Connections: established, in progress and failed.
    pub connections: Vec<ConnectionStatus>,
    /// Direct and discovered targets.
    pub targets: Vec<TargetStatus>,
    /// Peers reachable over established connections (ourselves excluded).
    pub reachable: usize,
    /// For each reachable peer, the neighbour traffic to it goes through.
    pub next_hops: BTreeMap<PeerName, PeerName>,
    /// Counters.
    pub stats: MeshStats,
}

/// The driver stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the mesh driver has stopped")]
pub struct Stopped;

type NodeFn = Box<dyn FnOnce(&mut Node, Instant) + Send>;

enum Cmd {
    Established {
        conn: ConnId,
        info: Box<Established>,
        socket: SocketAddr,
        target: Option<String>,
        link: LinkSide,
        /// `Err` closes the connection, after the message if one is given.
        reply: oneshot::Sender<Result<(), Option<Envelope>>>,
    },
    HandshakeFailed {
        socket: Option<SocketAddr>,
        target: Option<String>,
        reason: String,
        /// We refused the peer (wrong password, encryption or version
        /// mismatch, not Weave): someone tried to join and could not.
        refused: bool,
    },
    Message {
        conn: ConnId,
        msg: Envelope,
        /// Its share of [`INBOUND_BYTES`], given back once handled.
        _budget: tokio::sync::OwnedSemaphorePermit,
    },
    Closed {
        conn: ConnId,
        reason: String,
    },
    /// A backlogged connection's queue fell below [`BACKLOG_LOW`].
    Drained {
        conn: ConnId,
    },
    Connect {
        peers: Vec<String>,
        replace: bool,
        reply: oneshot::Sender<Result<(), InvalidTarget>>,
    },
    Forget {
        peers: Vec<String>,
        reply: oneshot::Sender<Result<(), InvalidTarget>>,
    },
    Status {
        brief: bool,
        reply: oneshot::Sender<Status>,
    },
    /// Run on the node (the reply travels inside the closure).
    Run(NodeFn),
    Saved {
        channel: String,
        generation: u64,
        persist: Box<dyn Persist>,
        result: Result<(), String>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// Builds and starts a mesh driver.
pub struct MeshBuilder {
    cfg: DriverConfig,
    channels: Vec<Registration>,
}

/// A channel to register at start, with its sink if it persists.
type Registration = (String, Box<dyn Channel>, Option<Box<dyn Persist>>);

impl MeshBuilder {
    /// A builder with no channels.
    pub fn new(cfg: DriverConfig) -> Self {
        Self { cfg, channels: Vec::new() }
    }

    /// Register a channel that persists nothing.
    pub fn channel(mut self, name: impl Into<String>, channel: Box<dyn Channel>) -> Self {
        self.channels.push((name.into(), channel, None));
        self
    }

    /// Register a channel whose state `persist` saves before anything it
    /// queued leaves (see [`crate::node`]). Saves run on tokio's blocking
    /// pool, one at a time per channel.
    pub fn persistent_channel(mut self, name: impl Into<String>, channel: Box<dyn Channel>, persist: Box<dyn Persist>) -> Self {
        self.channels.push((name.into(), channel, Some(persist)));
        self
    }

    /// Bind the listener and start the driver tasks.
    pub async fn start(self) -> io::Result<MeshHandle> {
        let cfg = self.cfg;
        let listener = TcpListener::bind(cfg.listen).await?;
        let listen = listener.local_addr()?;
        let now = Instant::now();
        let mut mesh_cfg = cfg.mesh.clone();
        mesh_cfg.round_clock.get_or_insert_with(weave_core::time::RoundClock::system);
        // Connection tasks say when a backlog drained (`Cmd::Drained`).
        mesh_cfg.update_round_bytes.get_or_insert(UPDATE_ROUND_BYTES);
        let mut node = Node::new(mesh_cfg, cfg.conn_maker.clone(), now, &mut from_os());
        let mut persisters = HashMap::new();
        for (name, channel, persist) in self.channels {
            match persist {
                Some(p) => {
                    node.register_persistent_channel(name.clone(), channel);
                    persisters.insert(name, Some(p));
                }
                None => node.register_channel(name, channel),
            }
        }
        node.connect(now, &cfg.initial_peers, false).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let (cmd_tx, cmd_rx) = mpsc::channel(4096);
        let (events, _) = broadcast::channel(256);
        let (view, view_rx) = watch::channel(MeshView::default());
        let local = LocalFeatures { name: cfg.mesh.name, nickname: cfg.mesh.nickname.clone(), uid: cfg.mesh.uid, listen_port: listen.port() };
        let shared = Arc::new(Shared {
            link: cfg.link.clone(),
            local,
            cmd: cmd_tx.downgrade(),
            inbound: AtomicUsize::new(0),
            handshake_ended: tokio::sync::Notify::new(),
            inbound_bytes: Arc::new(tokio::sync::Semaphore::new(INBOUND_BYTES)),
            next_conn: AtomicUsize::new(1),
            cfg: cfg.clone(),
        });
        let acceptor = tokio::spawn(accept_loop(listener, shared.clone()));
        let driver = Driver {
            node,
            links: HashMap::new(),
            links_epoch: 0,
            published_epoch: None,
            persisters,
            shared,
            events: events.clone(),
            view,
            failures: VecDeque::new(),
            listen,
            load_logged: None,
        };
        let task = tokio::spawn(driver.run(cmd_rx, acceptor));
        Ok(MeshHandle {
            cmd: cmd_tx.clone(),
            listen,
            events,
            view: view_rx,
            task: Arc::new(std::sync::Mutex::new(Some(task))),
            _stop_on_drop: Arc::new(StopOnDrop(cmd_tx)),
        })
    }
}

/// Controls a running mesh driver. Cheap to clone; the driver stops when
/// the last clone is dropped (or at [`MeshHandle::shutdown`]).
#[derive(Clone)]
pub struct MeshHandle {
    cmd: mpsc::Sender<Cmd>,
    listen: SocketAddr,
    events: broadcast::Sender<DriverEvent>,
    view: watch::Receiver<MeshView>,
    task: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
    _stop_on_drop: Arc<StopOnDrop>,
}

impl std::fmt::Debug for MeshHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshHandle").field("listen", &self.listen).finish_non_exhaustive()
    }
}

struct StopOnDrop(mpsc::Sender<Cmd>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let (reply, _) = oneshot::channel();
        let _ = self.0.try_send(Cmd::Shutdown { reply });
    }
}

impl MeshHandle {
    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.listen
    }

    /// Subscribe to connection and peer events. They can lag (a slow
    /// reader misses some); what must not be missed is in [`Self::view`].
    pub fn subscribe(&self) -> broadcast::Receiver<DriverEvent> {
        self.events.subscribe()
    }

    /// The current [`MeshView`], updated after every change; empty once the
    /// mesh has stopped.
    pub fn view(&self) -> watch::Receiver<MeshView> {
        self.view.clone()
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> Result<T, Stopped> {
        let (tx, rx) = oneshot::channel();
        self.cmd.send(make(tx)).await.map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }

    /// Add direct targets (`host[:port]`); `replace` drops the others.
    pub async fn connect(&self, peers: Vec<String>, replace: bool) -> Result<Result<(), InvalidTarget>, Stopped> {
        self.call(|reply| Cmd::Connect { peers, replace, reply }).await
    }

    /// Drop direct targets (and the connections made to them).
    pub async fn forget(&self, peers: Vec<String>) -> Result<Result<(), InvalidTarget>, Stopped> {
        self.call(|reply| Cmd::Forget { peers, reply }).await
    }

    /// A snapshot of the mesh.
    pub async fn status(&self) -> Result<Status, Stopped> {
        self.call(|reply| Cmd::Status { brief: false, reply }).await
    }

    /// A snapshot of the mesh with each peer's record but not its
    /// connections: what a full snapshot costs grows with the square of the
    /// mesh (every peer lists up to every other), this only with its size.
    /// For monitoring that needs counts, not the peers' links.
    pub async fn status_brief(&self) -> Result<Status, Stopped> {
        self.call(|reply| Cmd::Status { brief: true, reply }).await
    }

    /// Run `f` on the node, in the driver's task, and return its result.
    /// What `f` makes the node do (a channel's outputs, a dial) is carried
    /// out right after.
    pub async fn with_node<R: Send + 'static>(&self, f: impl FnOnce(&mut Node, Instant) -> R + Send + 'static) -> Result<R, Stopped> {
        self.call(|reply| {
            Cmd::Run(Box::new(move |node, now| {
                let _ = reply.send(f(node, now));
            }))
        })
        .await
    }

    /// Run `f` on channel `name` as its own type C (see
    /// [`Node::with_channel`]); `Ok(None)` if there is no such channel.
    pub async fn with_channel<C: Channel, R: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce(&mut C, Instant) -> R + Send + 'static,
    ) -> Result<Option<R>, Stopped> {
        let name = name.to_owned();
        self.with_node(move |node, now| node.with_channel(now, &name, |c| f(c, now))).await
    }

    /// Why channel `name` cannot save its state, while it cannot.
    pub async fn save_error(&self, channel: &str) -> Result<Option<String>, Stopped> {
        let channel = channel.to_owned();
        self.with_node(move |node, _| node.save_error(&channel).map(str::to_owned)).await
    }

    /// Every known peer's nickname (cheap beside [`Self::status`], which
    /// copies every peer's connections).
    pub async fn nicknames(&self) -> Result<Vec<(weave_core::PeerName, String)>, Stopped> {
        self.with_node(|node, _| node.mesh().topology().records().map(|r| (r.name, r.nickname.clone())).collect()).await
    }

    /// The routes now in force; later changes arrive in [`Self::view`].
    pub async fn routes(&self) -> Result<Routes, Stopped> {
        self.with_node(|node, _| node.mesh_mut().routes().clone()).await
    }

    /// Register (or replace) a channel that persists nothing.
    pub async fn register_channel(&self, name: impl Into<String>, channel: Box<dyn Channel>) -> Result<(), Stopped> {
        let name = name.into();
        self.with_node(move |node, _| node.register_channel(name, channel)).await
    }

    /// Gossip a delta on a channel.
    pub async fn gossip(&self, channel: &str, data: Vec<u8>) -> Result<Result<(), SendError>, Stopped> {
        let channel = channel.to_owned();
        self.with_node(move |node, _| node.mesh_mut().gossip(&channel, data)).await
    }

    /// Broadcast on a channel.
    pub async fn broadcast(&self, channel: &str, data: Vec<u8>) -> Result<Result<(), SendError>, Stopped> {
        let channel = channel.to_owned();
        self.with_node(move |node, _| node.mesh_mut().broadcast(&channel, data)).await
    }

    /// Send to one peer on a channel.
    pub async fn unicast(&self, channel: &str, dst: PeerName, data: Vec<u8>) -> Result<Result<(), SendError>, Stopped> {
        let channel = channel.to_owned();
        self.with_node(move |node, _| node.mesh_mut().unicast(&channel, dst, data)).await
    }

    /// Close every connection and stop. Idempotent.
    pub async fn shutdown(&self) {
        let _ = self.call(|reply| Cmd::Shutdown { reply }).await;
        let task = self.task.lock().expect("not poisoned").take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }
}

struct Shared {
    link: LinkConfig,
    local: LocalFeatures,
    /// Weak, so that the driver stops once every handle is gone.
    cmd: mpsc::WeakSender<Cmd>,
    /// Accepted connections still in their handshake.
    inbound: AtomicUsize,
    /// Told when one of those ends (see [`MAX_INBOUND_HANDSHAKES`]).
    handshake_ended: tokio::sync::Notify,
    /// See [`INBOUND_BYTES`].
    inbound_bytes: Arc<tokio::sync::Semaphore>,
    next_conn: AtomicUsize,
    cfg: DriverConfig,
}

impl Shared {
    /// An accepted connection's handshake ended, either way: the accept
    /// loop may take another.
    fn inbound_handshake_ended(&self) {
        self.inbound.fetch_sub(1, Ordering::Relaxed);
        self.handshake_ended.notify_one();
    }

    async fn send(&self, cmd: Cmd) -> Result<(), Stopped> {
        let tx = self.cmd.upgrade().ok_or(Stopped)?;
        tx.send(cmd).await.map_err(|_| Stopped)
    }
}

/// The driver's end of a connection task.
struct LinkSide {
    tx: mpsc::Sender<Arc<Envelope>>,
    /// Bytes of messages queued and not yet taken by the task.
    queued: Arc<AtomicUsize>,
    /// Set (by the driver) past [`BACKLOG_HIGH`] queued bytes or when the
    /// mesh cut a round short, cleared (by the task, which then tells the
    /// driver) below [`BACKLOG_LOW`].
    backlogged: Arc<AtomicBool>,
    /// Bytes the task's buffers hold (input and output), as it last saw.
    held: Arc<AtomicUsize>,
    /// Dropped to tell the task to flush and close.
    _close: oneshot::Sender<()>,
}

impl LinkSide {
    /// Messages queued and not yet taken by the task.
    fn queued_messages(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

struct ConnEntry {
    link: LinkSide,
    peer: PeerName,
    socket: SocketAddr,
    encrypted: bool,
    outbound: bool,
    data_keys: Option<DataKeys>,
}

struct Driver {
    node: Node,
    links: HashMap<ConnId, ConnEntry>,
    /// Bumped when `links` changes; the view is rebuilt only then.
    links_epoch: u64,
    published_epoch: Option<u64>,
    /// Each persistent channel's sink; `None` while a save is under way.
    persisters: HashMap<String, Option<Box<dyn Persist>>>,
    shared: Arc<Shared>,
    events: broadcast::Sender<DriverEvent>,
    view: watch::Sender<MeshView>,
    failures: VecDeque<(String, String)>,
    listen: SocketAddr,
    /// When [`Driver::log_load`] last logged.
    load_logged: Option<Instant>,
}

impl Driver {
    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>, acceptor: JoinHandle<()>) {
        self.pump(Instant::now());
        'run: loop {
            let deadline = self.node.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    // Every handle is gone.
                    None => break,
                    Some(Cmd::Shutdown { reply }) => {
                        let _ = reply.send(());
                        break;
                    }
                    Some(cmd) => self.handle(cmd),
                },
                () = sleep => {
                    // What arrived before the deadline counts first: a
                    // neighbour's heartbeat waiting in our own queue (a
                    // router behind under load) must not time it out.
                    for _ in 0..rx.len() {
                        match rx.try_recv() {
                            Ok(Cmd::Shutdown { reply }) => {
                                let _ = reply.send(());
                                break 'run;
                            }
                            Ok(cmd) => {
                                self.handle(cmd);
                                self.pump(Instant::now());
                            }
                            Err(_) => break,
                        }
                    }
                    self.node.handle_timeout(Instant::now());
                }
            }
            self.pump(Instant::now());
            self.log_load(&rx);
        }
        acceptor.abort();
        // Dropping the entries tells every connection task to flush and close.
        self.links.clear();
        self.links_epoch += 1;
        self.publish_view();
    }

    /// At most every [`LOAD_LOG_INTERVAL`] while there is activity, at
    /// debug level: what the router holds that grows with load (to find
    /// which bound a router under pressure sits at).
    fn log_load(&mut self, rx: &mpsc::Receiver<Cmd>) {
        if !tracing::enabled!(tracing::Level::DEBUG) || self.load_logged.is_some_and(|t| t.elapsed() < LOAD_LOG_INTERVAL) {
            return;
        }
        self.load_logged = Some(Instant::now());
        let (mut queued, mut queued_max, mut queued_msgs, mut held, mut held_max) = (0, 0, 0, 0, 0);
        for e in self.links.values() {
            let q = e.link.queued.load(Ordering::Relaxed);
            let h = e.link.held.load(Ordering::Relaxed);
            (queued, queued_max, held, held_max) = (queued + q, queued_max.max(q), held + h, held_max.max(h));
            queued_msgs += e.link.queued_messages();
        }
        let inbound = INBOUND_BYTES - self.shared.inbound_bytes.available_permits();
        let m = self.node.mesh().load();
        tracing::debug!(
            links = self.links.len(),
            queued,
            queued_max,
            queued_msgs,
            held,
            held_max,
            inbound,
            commands = rx.len(),
            records = m.records,
            record_connections = m.record_connections,
            pending = m.pending,
            holds = m.holds,
            backlogged = m.backlogged,
            "load"
        );
    }

    fn handle(&mut self, cmd: Cmd) {
        let now = Instant::now();
        match cmd {
            Cmd::Established { conn, info, socket, target, link, reply } => {
                if target.is_none() {
                    self.shared.inbound_handshake_ended();
                }
                let address = match &target {
                    Some(t) => t.clone(),
                    // A peer that accepts no connections cannot be discovered.
                    None if info.listen_port == 0 => String::new(),
                    None => SocketAddr::new(socket.ip(), info.listen_port).to_string(),
                };
                let remote = RemotePeer::from_established(&info, address, target.is_some());
                let outbound = target.is_some();
                let result = self.node.handle_established(now, conn, remote, target);
                match &result {
                    Ok(()) => {
                        tracing::info!(peer = %info.name, nickname = %info.nickname, %socket, "connection established");
                        let keys = info.data_keys.clone();
                        self.links.insert(conn, ConnEntry { link, peer: info.name, socket, encrypted: info.encrypted, outbound, data_keys: keys.clone() });
                        self.links_epoch += 1;
                        // A connection this one replaced goes first, so
                        // subscribers see Disconnected before Connected.
                        self.pump(now);
                        let _ = self.events.send(DriverEvent::Connected { peer: info.name, address: socket, outbound, data_keys: keys });
                    }
                    Err(e @ AddConnectionError::AtLimit(_)) => {
                        tracing::info!(peer = %info.name, %socket, reason = %e, "connection refused with a referral");
                    }
                    Err(e) => {
                        tracing::info!(peer = %info.name, %socket, reason = %e, "connection refused");
                        if !outbound {
                            self.remember_failure(socket.to_string(), e.to_string());
                        }
                    }
                }
                let result = result.map_err(|e| matches!(e, AddConnectionError::AtLimit(_)).then(|| self.node.referral(info.name)));
                let _ = reply.send(result);
            }
            Cmd::HandshakeFailed { socket, target, reason, refused } => {
                if refused && target.is_none() {
                    tracing::warn!(?socket, %reason, "refused an incoming connection");
                } else {
                    tracing::info!(?socket, ?target, %reason, "connection failed");
                }
                match &target {
                    Some(t) => self.node.handle_dial_failed(now, t, reason, false),
                    None => {
                        self.shared.inbound_handshake_ended();
                        self.remember_failure(socket.map(|s| s.to_string()).unwrap_or_default(), reason);
                    }
                }
            }
            Cmd::Message { conn, msg, _budget } => self.node.handle_message(now, conn, msg),
            Cmd::Closed { conn, reason } => self.closed(now, conn, reason),
            Cmd::Drained { conn } => self.node.set_backlogged(now, conn, false),
            Cmd::Connect { peers, replace, reply } => {
                let _ = reply.send(self.node.connect(now, &peers, replace));
            }
            Cmd::Forget { peers, reply } => {
                let _ = reply.send(self.node.forget(now, &peers));
            }
            Cmd::Status { brief, reply } => {
                let _ = reply.send(self.status(brief));
            }
            Cmd::Run(f) => f(&mut self.node, now),
            Cmd::Saved { channel, generation, persist, result } => {
                self.persisters.insert(channel.clone(), Some(persist));
                self.node.handle_saved(now, &channel, generation, result);
            }
            Cmd::Shutdown { .. } => unreachable!("handled in run"),
        }
    }

    fn remember_failure(&mut self, address: String, reason: String) {
        if self.failures.len() == FAILURES_KEPT {
            self.failures.pop_front();
        }
        self.failures.push_back((address, reason));
    }

    /// A connection ended on our side of the node: tell subscribers.
    fn forget_link(&mut self, conn: ConnId, reason: &str) {
        if let Some(e) = self.links.remove(&conn) {
            self.links_epoch += 1;
            tracing::info!(peer = %e.peer, socket = %e.socket, %reason, "connection closed");
            let _ = self.events.send(DriverEvent::Disconnected { peer: e.peer, reason: reason.to_owned() });
        }
    }

    fn closed(&mut self, now: Instant, conn: ConnId, reason: String) {
        self.forget_link(conn, &reason);
        self.node.handle_closed(now, conn);
    }

    /// Carry out what the node asked for, until it asks for nothing more.
    fn pump(&mut self, now: Instant) {
        loop {
            self.node.set_in_progress(self.shared.inbound.load(Ordering::Relaxed));
            let (mut stuck, mut sent_to) = (Vec::new(), HashSet::new());
            while let Some(t) = self.node.poll_transmit() {
                if let Some(e) = self.links.get(&t.conn) {
                    let len = prost::Message::encoded_len(&*t.msg);
                    let queued = e.link.queued.fetch_add(len, Ordering::SeqCst) + len;
                    let sent = if queued > CONN_QUEUE_BYTES { Err(mpsc::error::TrySendError::Full(t.msg)) } else { e.link.tx.try_send(t.msg) };
                    match sent {
                        Ok(()) => {
                            sent_to.insert(t.conn);
                        }
                        Err(mpsc::error::TrySendError::Full(_)) => stuck.push(t.conn),
                        // The task has ended; its `Closed`, with its
                        // reason, is on the way.
                        Err(mpsc::error::TrySendError::Closed(_)) => {}
                    }
                }
            }
            let mut acted = !stuck.is_empty();
            // A queue past the high-water mark, or a round the mesh cut
            // short, waits for its task's `Drained`...
            for conn in sent_to {
                let Some(e) = self.links.get(&conn) else { continue };
                let full = e.link.queued.load(Ordering::SeqCst) > BACKLOG_HIGH || self.node.mesh().is_backlogged(conn);
                if full && !e.link.backlogged.swap(true, Ordering::SeqCst) {
                    // ...unless the task drained it meanwhile without
                    // seeing the flag (if it saw it, `Drained` follows).
                    let missed = e.link.queued.load(Ordering::SeqCst) < BACKLOG_LOW && e.link.backlogged.swap(false, Ordering::SeqCst);
                    self.node.set_backlogged(now, conn, !missed);
                    acted = true;
                }
            }
            for conn in stuck {
                let (msgs, bytes) = self.links.get(&conn).map_or((0, 0), |e| (e.link.queued_messages(), e.link.queued.load(Ordering::Relaxed)));
                self.closed(now, conn, format!("send queue full (peer too slow: {msgs} messages, {} kB queued)", bytes >> 10));
            }
            while let Some(a) = self.node.poll_action() {
                acted = true;
                self.act(a);
            }
            if !acted {
                break;
            }
        }
        self.publish_view();
    }

    fn act(&mut self, action: Action) {
        let out = match action {
            Action::Dial(addr) => {
                tokio::spawn(dial(addr, self.shared.clone()));
                return;
            }
            Action::Close { conn, reason } => {
                self.forget_link(conn, &reason);
                return;
            }
            Action::Save(req) => {
                self.save(req);
                return;
            }
            Action::Event(MeshEvent::TopologyChanged) => {
                let routes = self.node.mesh_mut().routes().clone();
                let epoch = self.node.routes_epoch();
                self.view.send_modify(|v| {
                    v.routes = routes.clone();
                    v.routes_epoch = epoch;
                });
                DriverEvent::Routes(routes)
            }
            Action::Event(MeshEvent::PeerAdded(p)) => DriverEvent::PeerAdded(p),
            Action::Event(MeshEvent::PeerRemoved(p)) => DriverEvent::PeerRemoved(p),
            Action::Event(MeshEvent::NameCollision(uid)) => DriverEvent::NameCollision(uid),
            Action::Event(_) => return,
        };
        let _ = self.events.send(out);
    }

    /// Save off the driver's task; the result comes back as a command.
    fn save(&mut self, req: SaveRequest) {
        let Some(persist) = self.persisters.get_mut(&req.channel).and_then(Option::take) else {
            // Not ours to save (registered without a sink): never durable.
            tracing::error!(channel = %req.channel, "a persistent channel has no sink");
            return;
        };
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let SaveRequest { channel, generation, data } = req;
            let done = tokio::task::spawn_blocking(move || {
                let mut persist = persist;
                let result = persist.save(generation, &data);
                (persist, result)
            })
            .await;
            match done {
                Ok((persist, result)) => {
                    let _ = shared.send(Cmd::Saved { channel, generation, persist, result }).await;
                }
                Err(e) => tracing::error!(%channel, error = %e, "a save panicked; the channel stays silent"),
            }
        });
    }

    /// Publish the connections, if they changed.
    fn publish_view(&mut self) {
        // Every pump calls this: build the view only when a link came or went.
        if self.published_epoch == Some(self.links_epoch) {
            return;
        }
        self.published_epoch = Some(self.links_epoch);
        let connections: BTreeMap<PeerName, ViewConnection> = self
            .links
            .iter()
            .map(|(id, e)| (e.peer, ViewConnection { conn: *id, remote: e.socket, outbound: e.outbound, keys: e.data_keys.clone() }))
            .collect();
        self.view.send_if_modified(|v| {
            if v.connections == connections {
                return false;
            }
            v.connections = connections;
            true
        });
    }

    fn status(&mut self, brief: bool) -> Status {
        let mesh = self.node.mesh();
        let cm = self.node.connection_maker();
        let cfg = mesh.config().clone();
        let mut connections: Vec<ConnectionStatus> = mesh
            .connections()
            .map(|(id, r)| {
                let entry = self.links.get(&id);
                ConnectionStatus {
                    address: entry.map(|e| e.socket.to_string()).unwrap_or_else(|| r.address.clone()),
                    outbound: r.outbound,
                    state: ConnectionState::Established,
                    info: String::new(),
                    peer: Some((r.name, r.nickname.clone())),
                    encrypted: entry.is_some_and(|e| e.encrypted),
                }
            })
            .collect();
        for t in cm.targets() {
            let state = match t.state {
                TargetState::Connected => continue,
                TargetState::Connecting => ConnectionState::Connecting,
                TargetState::Retrying(_) if t.attempts == 0 => ConnectionState::Connecting,
                TargetState::Retrying(_) => ConnectionState::Retrying,
                TargetState::Failed => ConnectionState::Failed,
            };
            connections.push(ConnectionStatus {
                address: t.address.clone(),
                outbound: true,
                state,
                info: t.last_error.clone().unwrap_or_default(),
                peer: None,
                encrypted: self.shared.link.psk.is_some(),
            });
        }
        for (address, reason) in &self.failures {
            connections.push(ConnectionStatus {
                address: address.clone(),
                outbound: false,
                state: ConnectionState::Failed,
                info: reason.clone(),
                peer: None,
                encrypted: self.shared.link.psk.is_some(),
            });
        }
        let peers = mesh
            .topology()
            .records()
            .map(|r| if brief { PeerRecord { connections: Vec::new(), nickname: r.nickname.clone(), ..*r } } else { r.clone() })
            .collect();
        let (targets, discovery, stats) = (cm.targets(), cm.config().discovery, mesh.stats());
        let routes = self.node.mesh_mut().routes();
        let reachable = routes.reachable_count();
        let next_hops = routes.next_hops().collect();
        Status {
            name: cfg.name,
            nickname: cfg.nickname,
            uid: cfg.uid,
            listen: self.listen,
            encryption: self.shared.link.psk.is_some(),
            discovery,
            peers,
            connections,
            targets,
            reachable,
            next_hops,
            stats,
        }
    }
}

/// A token bucket: `burst` tokens, refilled at `rate` per second.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn take(&mut self, now: Instant, burst: f64, rate: f64) -> bool {
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * rate).min(burst);
        self.last = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// Accepted connections one source address may open in a burst, and per
/// second after: a flood from one address cannot use up the global budget
/// other peers need.
const PER_SOURCE_BURST: f64 = 16.0;
const PER_SOURCE_RATE: f64 = 2.0;
/// Source addresses whose buckets are remembered at most.
const SOURCES_KEPT: usize = 4096;

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let burst = f64::from(shared.cfg.accept_burst.max(1));
    let mut global = Bucket { tokens: burst, last: Instant::now() };
    let mut sources: HashMap<std::net::IpAddr, Bucket> = HashMap::new();
    loop {
        // Handshakes in progress have a budget of their own: half-open
        // connections must not crowd out established peers. At the budget
        // no more are accepted until one ends; the kernel's listen backlog
        // holds the dialers meanwhile (their handshakes wait, within their
        // timeout). Refusing them instead had each back off and retry:
        // when 199 routers discovered the last of a 200-router mesh at
        // once, its last links took minutes to come up.
        while shared.inbound.load(Ordering::Relaxed) >= MAX_INBOUND_HANDSHAKES {
            shared.handshake_ended.notified().await;
        }
        let (stream, socket) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors, most likely: wait, and go on.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let now = Instant::now();
        if sources.len() >= SOURCES_KEPT {
            // Forget sources whose buckets are full again.
            sources.retain(|_, b| now.duration_since(b.last).as_secs_f64() * PER_SOURCE_RATE < PER_SOURCE_BURST);
        }
        let source = sources.entry(socket.ip()).or_insert(Bucket { tokens: PER_SOURCE_BURST, last: now });
        if !source.take(now, PER_SOURCE_BURST, PER_SOURCE_RATE) {
            tracing::debug!(%socket, "refusing connection: too many from this address");
            continue;
        }
        if !global.take(now, burst, shared.cfg.accept_per_sec) {
            tracing::warn!(%socket, "refusing connection: accept rate limit");
            continue;
        }
        // At the connection limit the handshake still runs: the node then
        // refers the peer to others (see `Node::handle_established`).
        shared.inbound.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(run_connection(stream, socket, Role::Responder, None, shared.clone()));
    }
}

async fn dial(addr: String, shared: Arc<Shared>) {
    let result = tokio::time::timeout(shared.cfg.dial_timeout, TcpStream::connect(addr.as_str())).await;
    let stream = match result {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return report_failure(&shared, None, Some(addr), e.to_string(), false).await,
        Err(_) => return report_failure(&shared, None, Some(addr), "dial timed out".into(), false).await,
    };
    let socket = match stream.peer_addr() {
        Ok(s) => s,
        Err(e) => return report_failure(&shared, None, Some(addr), e.to_string(), false).await,
    };
    run_connection(stream, socket, Role::Initiator, Some(addr), shared).await;
}

/// A dial or handshake that failed; `refused` when we turned the peer
/// away for what it is.
async fn report_failure(shared: &Shared, socket: Option<SocketAddr>, target: Option<String>, reason: String, refused: bool) {
    let _ = shared.send(Cmd::HandshakeFailed { socket, target, reason, refused }).await;
}

async fn run_connection(stream: TcpStream, socket: SocketAddr, role: Role, target: Option<String>, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed) as ConnId;
    let (reader, mut writer) = stream.into_split();
    let mut link = Link::new(role, shared.link.clone(), &shared.local, &mut from_os());

    // Handshake, bounded in time.
    let handshake = async {
        loop {
            let out = link.take_output();
            if !out.is_empty() {
                writer.write_all(&out).await.map_err(|e| (e.to_string(), false))?;
            }
            if let Some(LinkEvent::Established(info)) = link.poll_event() {
                return Ok(info);
            }
            let read = loop {
                reader.readable().await.map_err(|e| (e.to_string(), false))?;
                match read_into(&reader, &mut link) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    r => break r,
                }
            };
            let handled = match read {
                Ok(None) => return Err(("connection closed by peer during handshake".to_owned(), false)),
                Ok(Some(handled)) => handled,
                Err(e) => return Err((e.to_string(), false)),
            };
            if let Err(e) = handled {
                // Tell the peer why, if the link queued a refusal.
                let out = link.take_output();
                let _ = writer.write_all(&out).await;
                return Err((e.to_string(), e.is_refusal()));
            }
        }
    };
    let limit = if target.is_some() { shared.cfg.handshake_timeout * DIALED_HANDSHAKE_FACTOR } else { shared.cfg.handshake_timeout };
    let info = match tokio::time::timeout(limit, handshake).await {
        Ok(Ok(info)) => info,
        Ok(Err((reason, refused))) => return report_failure(&shared, Some(socket), target, reason, refused).await,
        Err(_) => return report_failure(&shared, Some(socket), target, "handshake timed out".into(), false).await,
    };
    let (tx, mut rx) = mpsc::channel::<Arc<Envelope>>(CONN_QUEUE);
    let (close_tx, mut close_rx) = oneshot::channel::<()>();
    let queued = Arc::new(AtomicUsize::new(0));
    let backlogged = Arc::new(AtomicBool::new(false));
    let held = Arc::new(AtomicUsize::new(0));
    let side = LinkSide { tx, queued: queued.clone(), backlogged: backlogged.clone(), held: held.clone(), _close: close_tx };
    let (reply_tx, reply_rx) = oneshot::channel();
    let established = Cmd::Established { conn, info, socket, target, link: side, reply: reply_tx };
    if shared.send(established).await.is_err() {
        return;
    }
    match reply_rx.await {
        Ok(Ok(())) => {}
        Ok(Err(Some(parting))) => {
            // A referral: say it, and go (bounded, as any close).
            if link.send(&parting).is_ok() {
                let out = link.take_output();
                let flush = async {
                    writer.write_all(&out).await?;
                    writer.shutdown().await
                };
                let _ = tokio::time::timeout(CLOSE_FLUSH, flush).await;
            }
            return;
        }
        _ => return,
    }
    // Messages that arrived in the same read as the end of the handshake.
    if forward_messages(&mut link, conn, &shared).await.is_err() {
        return;
    }

    // Established: read, write and take messages without ever blocking one
    // on another (two peers writing large messages at once cannot deadlock).
    let mut out: Vec<u8> = Vec::new();
    let mut written = 0usize;
    let reason = loop {
        let pending = out.len() - written;
        held.store(out.capacity() + link.buffer_capacity(), Ordering::Relaxed);
        tokio::select! {
            r = reader.readable() => match r.and_then(|()| read_into(&reader, &mut link)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Ok(None) => break "connection closed by peer".to_owned(),
                Ok(Some(handled)) => {
                    if let Err(e) = handled {
                        tracing::warn!(%socket, error = %e, "closing connection");
                        break e.to_string();
                    }
                    if forward_messages(&mut link, conn, &shared).await.is_err() {
                        return;
                    }
                }
                Err(e) => break e.to_string(),
            },
            w = writer.write(&out[written..]), if pending > 0 => match w {
                Ok(n) => {
                    written += n;
                    if written == out.len() {
                        out.clear();
                        written = 0;
                        // A burst (a full topology) must not pin its
                        // buffer for the connection's lifetime: at rest a
                        // connection carries a heartbeat now and then, and
                        // a full mesh has one buffer per peer.
                        if out.capacity() > 4 * 1024 {
                            out = Vec::new();
                        }
                    }
                }
                Err(e) => break e.to_string(),
            },
            m = rx.recv(), if pending < OUTPUT_HIGH_WATER => match m {
                Some(msg) => {
                    // Drop what is written before adding more: a peer that
                    // reads steadily but never quite catches up would
                    // otherwise keep the buffer from ever emptying, and it
                    // grew with every message (hundreds of MB in a router
                    // of a 200-router mesh forming). At most half the
                    // buffer moves, so this costs O(1) per byte.
                    if written > 0 && written >= out.len() / 2 {
                        out.drain(..written);
                        written = 0;
                        if out.capacity() > 4 * OUTPUT_HIGH_WATER {
                            out.shrink_to(2 * OUTPUT_HIGH_WATER);
                        }
                    }
                    let len = prost::Message::encoded_len(&*msg);
                    let left = queued.fetch_sub(len, Ordering::SeqCst) - len;
                    // Below the low-water mark: the mesh may send again.
                    if left < BACKLOG_LOW && backlogged.swap(false, Ordering::SeqCst) && shared.send(Cmd::Drained { conn }).await.is_err() {
                        return;
                    }
                    if let Err(e) = link.send(&msg) {
                        tracing::warn!(%socket, error = %e, "dropping oversized message");
                    }
                    out.extend_from_slice(&link.take_output());
                }
                None => break "router stopping".to_owned(),
            },
            // The mesh closed this connection: flush what is queued, briefly
            // (a peer that stopped reading must not keep the task alive).
            _ = &mut close_rx => {
                while let Ok(msg) = rx.try_recv() {
                    if link.send(&msg).is_ok() {
                        out.extend_from_slice(&link.take_output());
                    }
                }
                let flush = async {
                    writer.write_all(&out[written..]).await?;
                    writer.shutdown().await
                };
                let _ = tokio::time::timeout(CLOSE_FLUSH, flush).await;
                return;
            }
        }
    };
    let _ = shared.send(Cmd::Closed { conn, reason }).await;
}

thread_local! {
    /// What connections read into: one buffer per runtime thread, not one
    /// per connection (a router has one connection per peer in a full
    /// mesh, and 16 kB each was 3 MB at 200). The link copies out what it
    /// needs before the next read.
    static READ_BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 64 << 10]);
}

/// Read what the socket has (without waiting) and feed it to `link`:
/// `Ok(None)` at the end of the stream, else what the link made of it.
fn read_into(reader: &tokio::net::tcp::OwnedReadHalf, link: &mut Link) -> io::Result<Option<Result<(), crate::link::LinkError>>> {
    READ_BUF.with_borrow_mut(|buf| match reader.try_read(buf)? {
        0 => Ok(None),
        n => Ok(Some(link.handle_bytes(&buf[..n]))),
    })
}

/// Hand every message the link has decoded to the mesh task; `Err` when
/// the router is stopping.
async fn forward_messages(link: &mut Link, conn: ConnId, shared: &Shared) -> Result<(), Stopped> {
    while let Some(ev) = link.poll_event() {
        if let LinkEvent::Message(msg) = ev {
            let len = prost::Message::encoded_len(&msg).clamp(1, INBOUND_BYTES);
            let budget = shared.inbound_bytes.clone().acquire_many_owned(u32::try_from(len).unwrap_or(u32::MAX)).await.map_err(|_| Stopped)?;
            shared.send(Cmd::Message { conn, msg, _budget: budget }).await?;
        }
    }
    Ok(())
}
