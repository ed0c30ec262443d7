//! The reference router: the mesh, the data plane and IPAM wired together
//! in one network namespace, driven through the control API.
//!
//! One router per namespace; its state lives in its state directory (IPAM
//! snapshot, control socket), so several routers run side by side on one
//! machine, one per simulated host.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net};
use tokio::sync::Notify;
use weave_core::{PeerName, PeerUid};
use weave_dataplane::netlink::{self, AttachConfig, Netlink, Netns};
use weave_dataplane::sleeve_driver::{DataplaneConfig, SleeveDataplane};
use weave_dataplane::{follow_mesh, Dataplane, SleeveConfig};
use weave_gossip::driver::{DriverConfig, DriverEvent, MeshBuilder, MeshHandle};
use weave_gossip::mesh::MeshConfig;
use weave_gossip::Psk;
use weave_ipam::channel::CHANNEL as IPAM_CHANNEL;
use weave_ipam::ipam::{InitMode, Ipam, IpamConfig};
use weave_ipam::service::{IpamService, ServiceError};

mod attach;
mod cni;
mod config;
mod docker;
mod lifecycle;
mod peers;
mod services;
mod stop;

pub use cni::{CniAttachment, CniCall, CNI_PREFIX};
pub use config::*;
pub use docker::DOCKER_FILE;
use docker::{follow_docker, load_tracked, save_tracked};
use docker::{DockerEvent, Tracked};
pub use lifecycle::HostEndRecord;
use lifecycle::{follow_links, in_use, reclaim};

/// This router's own DNS names, kept across restarts.
pub const DNS_FILE: &str = "dns-names.pb";
/// Our signing key, in the state directory (readable by the router only).
pub const IDENTITY_FILE: &str = "identity.key";
/// Exposed subnets and whether each is masqueraded, so a restarted router
/// puts back rules that went (Weave's 191).
pub const EXPOSED_FILE: &str = "exposed.json";
/// What `weave reset` removes from the state directory: the network's
/// state (ring, targets, names, attached containers).
///
/// The identity key is not among them: like the peer name the machine id
/// gives, it is the host's, so after `reset` and `launch` the host's
/// earlier grants (its reset hand-off among them) still verify and peers
/// that pinned its key accept it (Weave's 330, a rolling reset). Delete
/// it to make the host a new peer.
pub const STATE_FILES: &[&str] = &["ipam.db", "targets", NAME_FILE, DOCKER_FILE, DNS_FILE, ATTACHED_FILE, EXPOSED_FILE, crate::proxy::SOCKET_FILE];
/// Containers with a veth of ours that Docker does not follow (namespaces,
/// CNI pods): their namespace and interface, for the next start.
pub const ATTACHED_FILE: &str = "attached.json";

/// A running router.
pub struct Router {
    cfg: RouterConfig,
    mesh: MeshHandle,
    dp: Arc<dyn Dataplane>,
    nl: Netlink,
    ipam: Option<IpamService>,
    containers: tokio::sync::Mutex<BTreeMap<String, Container>>,
    stopping: Notify,
    dns: Option<weave_dns::service::DnsService>,
    _dns_server: Option<weave_dns::server::Server>,
    terminations: Arc<std::sync::atomic::AtomicU64>,
    targets: Mutex<std::collections::BTreeSet<String>>,
    /// Every peer's nickname ever seen: `rmpeer NICKNAME` must work after
    /// a dead peer has left the topology.
    nicknames: Arc<Mutex<BTreeMap<PeerName, String>>>,
    docker: Option<crate::docker::Docker>,
    tracked: Mutex<BTreeMap<String, Tracked>>,
    /// Per Docker container: the queue its lifecycle worker drains.
    docker_queues: Mutex<BTreeMap<String, tokio::sync::mpsc::UnboundedSender<DockerEvent>>>,
    /// Per container: held while it is attached, detached or its
    /// lifecycle is acted on, so those never interleave.
    id_locks: Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Follows link deletions: a container's namespace going takes its
    /// veth, and the container is released.
    links_watch: Mutex<Option<tokio::task::JoinHandle<()>>>,
    plugin: Mutex<Option<Arc<crate::plugin::Plugin>>>,
    /// Every part started (the plugin's Docker network is made in the
    /// background): Weave's `Ready`, `/status` answers 503 until then.
    ready: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").field("name", &self.cfg.name).finish_non_exhaustive()
    }
}

/// Lock, ignoring poisoning (the data stays consistent per operation).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Router {
    /// Start everything: data plane, IPAM (restored from the state
    /// directory), mesh; then dial the initial peers.
    pub async fn start(cfg: RouterConfig) -> Result<Arc<Self>, Box<dyn std::error::Error + Send + Sync>> {
        std::fs::create_dir_all(&cfg.state_dir)?;
        // What the directory holds (our key, names, addresses) is the
        // router's alone.
        std::fs::set_permissions(&cfg.state_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        std::fs::write(cfg.state_dir.join(NAME_FILE), cfg.name.to_string())?;
        let identity = load_identity(&cfg.state_dir.join(IDENTITY_FILE))?;
        let netns = Netns::current();
        let nl = Netlink::connect(&netns).await?;
        let mut sleeve = SleeveConfig::new(cfg.name, cfg.port);
        sleeve.trusted = cfg.trusted_subnets.clone();
        let mut dcfg = DataplaneConfig::new(netns, cfg.bridge.clone(), SocketAddr::new(cfg.host, cfg.port), sleeve);
        dcfg.mtu = cfg.mtu;
        dcfg.encrypted = cfg.password.is_some();
        let dp: Arc<dyn Dataplane> = if cfg.fastdp {
            Arc::new(weave_dataplane::fastpath::FastDataplane::start(&nl, &dcfg).await?)
        } else {
            Arc::new(SleeveDataplane::start(&nl, &dcfg).await?)
        };

        if let Some(range) = cfg.ipalloc_range {
            // As Weave does: an allocation range over the host's own
            // networks would route the host's traffic into the overlay.
            for (name, link) in nl.links().await? {
                if name == cfg.bridge || name.starts_with("vethwe") || name == "lo" {
                    continue;
                }
                for a in nl.addresses(link.index).await? {
                    if let IpNet::V4(v) = a {
                        if range.contains(&v.network()) || v.contains(&range.network()) {
                            return Err(format!("the IP allocation range {range} overlaps {v} on {name}; choose another --ipalloc-range").into());
                        }
                    }
                }
            }
        }
        let ipam = match cfg.ipalloc_range {
            Some(range) => {
                let mut icfg = IpamConfig::new(identity.clone(), cfg.name, range, cfg.ipalloc_init.clone());
                if let Some(d) = cfg.ipalloc_default_subnet {
                    icfg.default_subnet = d;
                }
                let store = weave_ipam::persist::Store::open(&cfg.state_dir.join("ipam.db"))?;
                let ipam = match store.load(cfg.name, range)? {
                    weave_ipam::persist::Loaded::State(snap) => Ipam::restore(icfg, &snap)?,
                    weave_ipam::persist::Loaded::Discarded(why) => {
                        tracing::warn!(reason = %why, "saved IPAM state discarded");
                        Ipam::new(icfg)?
                    }
                    weave_ipam::persist::Loaded::Empty => Ipam::new(icfg)?,
                };
                Some((ipam, store))
            }
            None => None,
        };

        let mut rng = weave_core::rng::from_os();
        let mut mc = MeshConfig::new(cfg.name, cfg.nickname.clone(), PeerUid::random(&mut rng));
        mc.identity = Some(identity.clone());
        let mut dc = DriverConfig::new(mc, SocketAddr::new(cfg.host, cfg.port));
        dc.conn_maker.discovery = cfg.discovery;
        dc.conn_maker.default_port = cfg.port;
        dc.conn_maker.conn_limit = cfg.conn_limit;
        // Channel anti-entropy every few seconds: IPAM and DNS state is
        // small, and it heals what topology churn made a channel refuse.
        dc.mesh.channel_gossip_interval = Duration::from_secs(5);
        dc.link.psk = cfg.password.as_ref().map(|p| Psk::from_password(p.as_bytes()));
        let mut builder = MeshBuilder::new(dc);
        // IPAM speaks only of what is saved (weave_ipam::service). First,
        // anything in use here that it does not hold is claimed back.
        // What the kernel says is in use here (read once: reclaim and
        // adoption below both need it).
        let found = in_use(&nl, &cfg.bridge).await;
        let docker = if cfg.docker { crate::docker::Docker::connect().await } else { None };
        let endpoints = match (&cfg.plugin, &docker) {
            (Some(p), Some(d)) => crate::plugin::endpoint_addresses(d, &p.name)
                .await
                .inspect_err(|e| tracing::warn!(error = %e, "addresses of Docker's plugin endpoints unknown: none freed or claimed back"))
                .ok(),
            _ => None,
        };
        if let Some((mut ipam, store)) = ipam {
            match &found {
                Ok(f) => reclaim(&mut ipam, f.clone(), endpoints.as_ref()),
                Err(e) => return Err(e.to_string().into()),
            }
            let persist = Box::new(weave_ipam::persist::StorePersist::new(store));
            builder = builder.persistent_channel(IPAM_CHANNEL, Box::new(weave_ipam::channel::IpamChannel::new(ipam)), persist);
        }
        // weaveDNS: our names come back from the state directory before
        // the mesh starts, and are saved before any change is gossiped.
        let mut names = None;
        if let Some(d) = &cfg.dns {
            let dns = weave_dns::dns::Dns::new(identity.clone(), cfg.name, &d.domain, weave_dns::dns::WallClock::system(), Instant::now());
            let file = cfg.state_dir.join(DNS_FILE);
            let channel = weave_dns::service::DnsService::restore(dns, &file, Instant::now());
            names = Some(channel.names());
            builder = builder.persistent_channel(weave_dns::channel::CHANNEL, Box::new(channel), Box::new(weave_gossip::node::FilePersist(file)));
        }
        let dns_server = match (&cfg.dns, &names) {
            (Some(settings), Some(d)) => {
                // The listen address lives on the bridge (link-local).
                let listen = settings.listen_for(cfg.name);
                if let (IpAddr::V4(v4), Some(b)) = (listen.ip(), nl.link(&cfg.bridge).await?) {
                    if !v4.is_unspecified() && !v4.is_loopback() {
                        nl.add_address(b.index, IpNet::V4(Ipv4Net::new(v4, 32).expect("/32"))).await?;
                    }
                }
                let mut sc = weave_dns::server::ServerConfig::new(listen, settings.upstreams.clone());
                sc.ttl = settings.ttl;
                Some(weave_dns::server::serve(sc, d.clone()).await?)
            }
            _ => None,
        };
        let mesh = builder.start().await?;
        tokio::spawn(follow_mesh(mesh.clone(), dp.clone()));
        // After the mesh changes (a burst while a large mesh forms), give
        // the memory it freed back (see `crate::memory`).
        tokio::spawn(crate::memory::after_bursts(mesh.view(), Duration::from_secs(5), Duration::from_secs(60), || {
            crate::memory::release_free_heap();
        }));
        let ipam = cfg.ipalloc_range.map(|_| IpamService::new(mesh.clone()));
        let dns = names.map(|n| weave_dns::service::DnsService::new(mesh.clone(), n));

        let router = Arc::new(Self {
            cfg: cfg.clone(),
            mesh: mesh.clone(),
            dp,
            nl,
            ipam,
            containers: tokio::sync::Mutex::new(BTreeMap::new()),
            stopping: Notify::new(),
            dns,
            _dns_server: dns_server,
            terminations: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            targets: Mutex::new(cfg.peers.iter().cloned().collect()),
            nicknames: Arc::new(Mutex::new(BTreeMap::new())),
            docker,
            tracked: Mutex::new(load_tracked(&cfg.state_dir)),
            docker_queues: Mutex::new(BTreeMap::new()),
            id_locks: Mutex::new(BTreeMap::new()),
            links_watch: Mutex::new(None),
            plugin: Mutex::new(None),
            ready: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        });
        router.save_targets(&lock(&router.targets));
        {
            let mut events = mesh.subscribe();
            let count = router.terminations.clone();
            let (nicks, m) = (router.nicknames.clone(), mesh.clone());
            tokio::spawn(async move {
                loop {
                    match events.recv().await {
                        Ok(DriverEvent::Disconnected { .. }) => {
                            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        // A peer's nickname comes with its first record.
                        Ok(DriverEvent::PeerAdded(_)) => {
                            if let Ok(all) = m.nicknames().await {
                                lock(&nicks).extend(all);
                            }
                        }
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            });
        }
        // Subscribed before the sweep at start, so no death is missed.
        let changes = netlink::Changes::links(router.nl.netns())?;
        router.adopt_existing(found.unwrap_or_default()).await;
        router.restore_exposed().await;
        *lock(&router.links_watch) = Some(tokio::spawn(follow_links(Arc::downgrade(&router), changes)));
        if let Some(d) = router.docker.clone() {
            tokio::spawn(follow_docker(Arc::downgrade(&router), d));
        }
        let mut plugin_pending = false;
        if let Some(settings) = &cfg.plugin {
            let p = Arc::new(crate::plugin::Plugin::start(Arc::downgrade(&router), settings.clone()).await?);
            match router.docker.clone() {
                // In the background: Docker asks IPAM for the gateway,
                // which may wait for consensus with peers not yet here.
                Some(d) => {
                    let (p, ready) = (p.clone(), router.ready.clone());
                    plugin_pending = true;
                    tokio::spawn(async move {
                        match p.ensure_network(&d).await {
                            Ok(()) => tracing::info!(network = %p.name(), "Docker network ready"),
                            Err(e) => tracing::warn!(error = %e, "the Docker plugin runs without its network"),
                        }
                        ready.store(true, std::sync::atomic::Ordering::Release);
                    });
                }
                None => tracing::warn!("no Docker daemon answers: the plugin is served, but no network was created"),
            }
            *lock(&router.plugin) = Some(p);
        }
        if let (Some(settings), Some(_)) = (&cfg.proxy, &router.docker) {
            crate::proxy::serve(Arc::downgrade(&router), Arc::new(settings.clone())).await?;
            tracing::info!(socket = %settings.socket.display(), "Docker API proxy listening");
        }
        mesh.connect(cfg.peers.clone(), false).await.map_err(|_| "mesh stopped")?.map_err(|e| e.to_string())?;
        if !plugin_pending {
            router.ready.store(true, std::sync::atomic::Ordering::Release);
        }
        Ok(router)
    }

    /// Whether every part has started (Weave's `Ready`).
    pub fn is_ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The configuration.
    pub fn config(&self) -> &RouterConfig {
        &self.cfg
    }

    /// The mesh.
    pub fn mesh(&self) -> &MeshHandle {
        &self.mesh
    }
    /// The data plane.
    pub fn dataplane(&self) -> &Arc<dyn Dataplane> {
        &self.dp
    }

    /// The netlink connection in the router's namespace.
    pub fn netlink(&self) -> &Netlink {
        &self.nl
    }
}

impl Router {
    /// The lock serialising work on one container (attach, detach, its
    /// lifecycle).
    fn id_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.id_locks).entry(id.to_owned()).or_default().clone()
    }

    /// Drop a gone container's lock from the map, unless someone else
    /// holds or waits for it (the map's copy and the caller's guard are the
    /// only two references then).
    fn forget_lock(&self, id: &str) {
        let mut locks = lock(&self.id_locks);
        if locks.get(id).is_some_and(|l| Arc::strong_count(l) <= 2) {
            locks.remove(id);
        }
    }

    /// Hold a container's lock.
    async fn busy(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        self.id_lock(id).lock_owned().await
    }
}

/// A peer name stable per host and namespace: from the machine id and the
/// namespace's inode, as Weave derives it from the machine id.
pub fn default_peer_name() -> PeerName {
    peer_name_from_machine_id(&std::fs::read_to_string("/etc/machine-id").unwrap_or_default())
}

/// [`default_peer_name`] for this machine id (in this namespace).
pub fn peer_name_from_machine_id(machine: &str) -> PeerName {
    let ns = std::fs::read_link("/proc/self/ns/net").map(|p| p.display().to_string()).unwrap_or_default();
    // FNV-1a: the same name for the same host and namespace, whatever the
    // build.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in machine.trim().bytes().chain([0]).chain(ns.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Locally administered unicast, like Weave's.
    let v = (h & 0x0000_feff_ffff_ffff) | 0x0000_0200_0000_0000;
    PeerName::from_u64(v).expect("48 bits")
}

/// The peer name when `--name` is not given, as Weave derives it: the MAC
/// of an existing `bridge` (the router gives its bridge the peer name when
/// it makes it, so a host keeps its name across restarts and machine-id
/// changes); without a bridge, the name saved in `state_dir` if it is the
/// one derived from a blank machine id (Weave's rule for names made before
/// it used the machine id); else [`default_peer_name`]. After `weave reset`
/// (no bridge, no saved name) a host gets the name of its machine id.
pub async fn host_peer_name(state_dir: &std::path::Path, bridge: &str) -> PeerName {
    if let Ok(nl) = weave_dataplane::netlink::Netlink::connect(&Netns::current()).await {
        if let Ok(Some(link)) = nl.link(bridge).await {
            if link.kind.as_deref() == Some("bridge") && link.mac != [0; 6] {
                return PeerName::from_octets(link.mac);
            }
        }
    }
    let saved = std::fs::read_to_string(state_dir.join(NAME_FILE)).ok().and_then(|n| n.trim().parse::<PeerName>().ok());
    match saved {
        Some(n) if n == peer_name_from_machine_id("") => n,
        _ => default_peer_name(),
    }
}

/// The address part of an IPv4 CIDR.
pub fn addr_of(n: &Ipv4Net) -> Ipv4Addr {
    n.addr()
}

/// Our signing key from `path`, made (and saved, mode 0600) on first start.
/// An unreadable key is replaced, with a warning: peers accept the new key
/// once they have forgotten the old one.
fn load_identity(path: &std::path::Path) -> std::io::Result<weave_gossip::Identity> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    match std::fs::read(path) {
        Ok(bytes) => match <[u8; 32]>::try_from(bytes.as_slice()) {
            Ok(secret) => return Ok(weave_gossip::Identity::from_secret(secret)),
            Err(_) => tracing::warn!(path = %path.display(), len = bytes.len(), "the saved key is not 32 bytes: making a new one"),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let identity = weave_gossip::Identity::generate(&mut weave_core::rng::from_os());
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    f.write_all(&identity.secret())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(identity)
}
