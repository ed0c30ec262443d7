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
use weave_gossip::{LinkConfig, Psk};
use weave_ipam::channel::CHANNEL as IPAM_CHANNEL;
use weave_ipam::ipam::{InitMode, Ipam, IpamConfig};
use weave_ipam::service::{IpamService, ServiceError};

/// Everything `weave launch` / `weave router` accept that the router uses.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// State directory (control socket, IPAM database).
    pub state_dir: PathBuf,
    /// Peer name.
    pub name: PeerName,
    /// Nickname.
    pub nickname: String,
    /// Mesh password.
    pub password: Option<String>,
    /// Router port (TCP and UDP; VXLAN on port + 1).
    pub port: u16,
    /// Bind address.
    pub host: IpAddr,
    /// Dial peers learnt through gossip.
    pub discovery: bool,
    /// Connection limit.
    pub conn_limit: usize,
    /// Initial targets.
    pub peers: Vec<String>,
    /// IPAM range (None: IPAM disabled).
    pub ipalloc_range: Option<Ipv4Net>,
    /// Subnet for `net:default`.
    pub ipalloc_default_subnet: Option<Ipv4Net>,
    /// IPAM initialisation.
    pub ipalloc_init: InitMode,
    /// Use the VXLAN fast path where possible.
    pub fastdp: bool,
    /// Overlay MTU.
    pub mtu: u32,
    /// Subnets whose peers may skip data encryption.
    pub trusted_subnets: Vec<IpNet>,
    /// Bridge name.
    pub bridge: String,
    /// weaveDNS (None: `--no-dns`).
    pub dns: Option<DnsSettings>,
    /// Use Docker (container names and IDs, lifecycle) when a daemon
    /// answers.
    pub docker: bool,
    /// How long a dead Docker container keeps its addresses and names: a
    /// quick restart gets them back.
    pub docker_grace: Duration,
    /// Serve the Docker network plugin (None: `--no-plugin`).
    pub plugin: Option<crate::plugin::PluginSettings>,
}

/// weaveDNS settings.
#[derive(Debug, Clone)]
pub struct DnsSettings {
    /// Domain (`weave.local.`).
    pub domain: String,
    /// Where the server listens; by default an address of this host's own
    /// (link-local, derived from the peer name, see [`dns_addr`]) that the
    /// router puts on the bridge, so containers reach their host's server
    /// over `ethwe` and no other host answers for it.
    pub listen: Option<SocketAddr>,
    /// TTL of answers.
    pub ttl: u32,
    /// Where other names are forwarded.
    pub upstreams: weave_dns::server::Upstreams,
}

/// The file in the state directory naming the router's peer (so `weave
/// reset` can clean up after a router that was killed).
pub const NAME_FILE: &str = "peer-name";

/// Remove the container `resolv.conf` files this router wrote (listed in
/// its state directory) that still point at `dns`. Returns those removed.
pub fn remove_resolv_confs(state_dir: &std::path::Path, dns: Ipv4Addr) -> Vec<String> {
    // Only the namespaces this router wrote for (listed in its state
    // directory): another router on this machine may share its name, and
    // so its DNS address.
    let list = state_dir.join(RESOLV_LIST);
    let names = std::fs::read_to_string(&list).unwrap_or_default();
    let ns_line = format!("nameserver {dns}");
    let mut out = Vec::new();
    for name in names.lines().map(str::trim).filter(|n| !n.is_empty()) {
        let text = std::fs::read_to_string(std::path::Path::new("/etc/netns").join(name).join("resolv.conf")).unwrap_or_default();
        if text.starts_with("# written by weave")
            && text.lines().any(|l| l.trim() == ns_line)
            && weave_dns::resolv::remove_netns_resolv_conf(std::path::Path::new("/etc/netns"), name).is_ok()
        {
            out.push(format!("/etc/netns/{name}/resolv.conf"));
        }
    }
    let _ = std::fs::remove_file(list);
    out
}

/// The file in the state directory listing the named namespaces whose
/// `/etc/netns/NAME/resolv.conf` this router wrote.
pub const RESOLV_LIST: &str = "resolv-confs";

fn note_resolv_conf(state_dir: &std::path::Path, netns: &str) {
    let list = state_dir.join(RESOLV_LIST);
    let have = std::fs::read_to_string(&list).unwrap_or_default();
    if have.lines().any(|l| l.trim() == netns) {
        return;
    }
    use std::io::Write;
    let appended = std::fs::OpenOptions::new().create(true).append(true).open(&list).and_then(|mut f| writeln!(f, "{netns}"));
    if let Err(e) = appended {
        tracing::warn!(error = %e, "cannot note the resolv.conf written (weave reset may leave it)");
    }
}

/// This host's weaveDNS address: 169.254.A.B, from the peer name.
pub fn dns_addr(name: PeerName) -> Ipv4Addr {
    let h = name.as_u64().wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
    Ipv4Addr::new(169, 254, 1 + (h % 254) as u8, 1 + ((h >> 8) % 254) as u8)
}

impl DnsSettings {
    /// The address the server listens on for router `name`.
    pub fn listen_for(&self, name: PeerName) -> SocketAddr {
        self.listen.unwrap_or_else(|| SocketAddr::new(IpAddr::V4(dns_addr(name)), 53))
    }
}

/// A container attached to the overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// Its id: the netns name, path or pid:N as given, or a Docker
    /// container's full ID.
    pub id: String,
    /// Its namespace.
    pub netns: Netns,
    /// Its `ethwe` MAC.
    pub mac: [u8; 6],
    /// Its overlay addresses.
    pub cidrs: Vec<Ipv4Net>,
    /// The interface inside (`ethwe`, or a CNI pod's `CNI_IFNAME`).
    pub ifname: String,
}

/// A router failure, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// Bad input (exit status 1 at the CLI).
    #[error("{0}")]
    Invalid(String),
    /// Not found.
    #[error("{0}")]
    NotFound(String),
    /// Plumbing.
    #[error(transparent)]
    Plumb(#[from] weave_dataplane::PlumbError),
    /// Data plane.
    #[error(transparent)]
    Dataplane(#[from] weave_dataplane::DataplaneError),
    /// IPAM.
    #[error("IPAM: {0}")]
    Ipam(#[from] weave_ipam::ipam::IpamError),
    /// What is there is not what was expected (CNI CHECK).
    #[error("{0}")]
    Mismatch(String),
    /// The mesh stopped.
    #[error("the router is stopping")]
    Stopped,
}

/// What an attach request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddrSpec {
    /// Exactly this address (`ip:CIDR` or a bare CIDR).
    Exact(Ipv4Net),
    /// Allocate inside this subnet (`net:CIDR`).
    Subnet(Ipv4Net),
    /// Allocate in the default subnet (`net:default`, or nothing).
    Default,
}

impl std::str::FromStr for AddrSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let parse = |c: &str| c.parse::<Ipv4Net>().map_err(|_| format!("invalid address {s:?}: expected [ip:]CIDR, net:CIDR or net:default"));
        if s == "net:default" {
            Ok(Self::Default)
        } else if let Some(c) = s.strip_prefix("net:") {
            Ok(Self::Subnet(parse(c)?.trunc()))
        } else {
            Ok(Self::Exact(parse(s.strip_prefix("ip:").unwrap_or(s))?))
        }
    }
}

impl std::fmt::Display for AddrSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact(n) => write!(f, "ip:{n}"),
            Self::Subnet(n) => write!(f, "net:{n}"),
            Self::Default => f.write_str("net:default"),
        }
    }
}

/// Resolve a CONTAINER argument to a namespace.
pub fn container_netns(spec: &str) -> Result<Netns, RouterError> {
    let ns = if let Some(pid) = spec.strip_prefix("pid:") {
        let pid: u32 = pid.parse().map_err(|_| RouterError::Invalid(format!("invalid pid in {spec:?}")))?;
        Netns::of_pid(pid)
    } else if spec.starts_with('/') {
        Netns::at(spec)
    } else if netlink::valid_ifname(spec) || (!spec.is_empty() && !spec.contains('/')) {
        Netns::named(spec)
    } else {
        return Err(RouterError::Invalid(format!("invalid container {spec:?}")));
    };
    match ns.path() {
        Some(p) if !p.exists() => Err(RouterError::NotFound(format!("container {spec} not found (no network namespace at {})", p.display()))),
        _ => Ok(ns),
    }
}

/// A CONTAINER argument, resolved.
#[derive(Debug, Clone)]
pub struct Target {
    /// What IPAM and DNS hold its addresses under: the netns as given, or
    /// the Docker container's full ID (so its name and ID are one).
    pub id: String,
    /// Its name (the default DNS name's first label).
    pub name: String,
    /// Its namespace; None for a Docker container that is not running.
    pub netns: Option<Netns>,
    /// The Docker container, if it is one.
    pub docker: Option<crate::docker::DockerContainer>,
}

/// What the Docker lifecycle worker of one container handles, in order.
#[derive(Debug, Clone, Copy)]
enum DockerEvent {
    Life(crate::docker::Lifecycle),
    /// The grace period that began with the death at this epoch is over.
    GraceOver(u64),
}

/// The file in the state directory keeping how Docker containers were
/// attached (so a router restart does not forget `-h` or `--without-dns`).
pub const DOCKER_FILE: &str = "docker-attached.json";
/// This router's own DNS names, kept across restarts.
pub const DNS_FILE: &str = "dns-names.pb";
/// Containers with a veth of ours that Docker does not follow (namespaces,
/// CNI pods): their namespace and interface, for the next start.
pub const ATTACHED_FILE: &str = "attached.json";

/// How a Docker container was attached, to attach it again when it is
/// restarted.
#[derive(Debug, Clone)]
struct Tracked {
    specs: Vec<AddrSpec>,
    dns: bool,
    hostname: Option<String>,
    multicast: bool,
    /// Bumped by every start and death: a release scheduled at a death
    /// goes ahead only if nothing happened since.
    epoch: u64,
}

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
        std::fs::write(cfg.state_dir.join(NAME_FILE), cfg.name.to_string())?;
        let netns = Netns::current();
        let nl = Netlink::connect(&netns).await?;
        let mut sleeve = SleeveConfig::new(cfg.name, cfg.port);
        sleeve.trusted = cfg.trusted_subnets.clone();
        let dcfg = DataplaneConfig {
            netns,
            bridge: cfg.bridge.clone(),
            mtu: cfg.mtu,
            listen: SocketAddr::new(cfg.host, cfg.port),
            sleeve,
            encrypted: cfg.password.is_some(),
        };
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
                let mut icfg = IpamConfig::new(cfg.name, range, cfg.ipalloc_init.clone());
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
        let mut dc = DriverConfig::new(MeshConfig::new(cfg.name, cfg.nickname.clone(), PeerUid::random(&mut rng)), SocketAddr::new(cfg.host, cfg.port));
        dc.conn_maker.discovery = cfg.discovery;
        dc.conn_maker.default_port = cfg.port;
        dc.conn_maker.conn_limit = cfg.conn_limit;
        // Channel anti-entropy every few seconds: IPAM and DNS state is
        // small, and it heals what topology churn made a channel refuse.
        dc.mesh.channel_gossip_interval = Duration::from_secs(5);
        dc.link = LinkConfig { psk: cfg.password.as_ref().map(|p| Psk::from_password(p.as_bytes())), ..LinkConfig::default() };
        let mut builder = MeshBuilder::new(dc);
        // IPAM speaks only of what is saved (weave_ipam::service). First,
        // anything in use here that it does not hold is claimed back.
        // What the kernel says is in use here (read once: reclaim and
        // adoption below both need it).
        let found = in_use(&nl, &cfg.bridge).await;
        if let Some((mut ipam, store)) = ipam {
            match &found {
                Ok(f) => reclaim(&mut ipam, f.clone()),
                Err(e) => return Err(e.to_string().into()),
            }
            let persist = Box::new(weave_ipam::persist::StorePersist::new(store));
            builder = builder.persistent_channel(IPAM_CHANNEL, Box::new(weave_ipam::channel::IpamChannel::new(ipam)), persist);
        }
        // weaveDNS: our names come back from the state directory before
        // the mesh starts, and are saved before any change is gossiped.
        let mut names = None;
        if let Some(d) = &cfg.dns {
            let dns = weave_dns::dns::Dns::new(cfg.name, &d.domain, weave_dns::dns::WallClock::system(), Instant::now());
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
            docker: if cfg.docker { crate::docker::Docker::connect().await } else { None },
            tracked: Mutex::new(load_tracked(&cfg.state_dir)),
            docker_queues: Mutex::new(BTreeMap::new()),
            id_locks: Mutex::new(BTreeMap::new()),
            links_watch: Mutex::new(None),
            plugin: Mutex::new(None),
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
                        Ok(DriverEvent::Routes(_)) => {
                            if let Ok(st) = m.status().await {
                                let mut n = lock(&nicks);
                                for p in st.peers {
                                    n.insert(p.name, p.nickname);
                                }
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
        *lock(&router.links_watch) = Some(tokio::spawn(follow_links(Arc::downgrade(&router), changes)));
        if let Some(d) = router.docker.clone() {
            tokio::spawn(follow_docker(Arc::downgrade(&router), d));
        }
        if let Some(settings) = &cfg.plugin {
            let p = Arc::new(crate::plugin::Plugin::start(Arc::downgrade(&router), settings.clone()).await?);
            match router.docker.clone() {
                // In the background: Docker asks IPAM for the gateway,
                // which may wait for consensus with peers not yet here.
                Some(d) => {
                    let p = p.clone();
                    tokio::spawn(async move {
                        match p.ensure_network(&d).await {
                            Ok(()) => tracing::info!(network = %p.name(), "Docker network ready"),
                            Err(e) => tracing::warn!(error = %e, "the Docker plugin runs without its network"),
                        }
                    });
                }
                None => tracing::warn!("no Docker daemon answers: the plugin is served, but no network was created"),
            }
            *lock(&router.plugin) = Some(p);
        }
        mesh.connect(cfg.peers.clone(), false).await.map_err(|_| "mesh stopped")?.map_err(|e| e.to_string())?;
        Ok(router)
    }

    /// At start: containers attached before (recorded in the state
    /// directory, or holding addresses under a namespace's name) whose veth
    /// is still on the bridge are listed again; those whose veth went while
    /// the router was down are released, and so are the names of
    /// namespaces that are gone.
    async fn adopt_existing(&self, found: Vec<(String, Ipv4Net)>) {
        /// A namespace's name, path or pid: not Docker's, CNI's or ours.
        fn netns_id(id: &str) -> bool {
            !crate::docker::is_container_id(id) && !id.starts_with("weave:") && !id.starts_with(CNI_PREFIX)
        }
        // id -> (namespace path if recorded, interface)
        let mut candidates: BTreeMap<String, (Option<String>, String)> = load_attached(&self.cfg.state_dir);
        for id in self.owned().await.into_keys().filter(|id| netns_id(id)) {
            candidates.entry(id).or_insert((None, "ethwe".into()));
        }
        // Containers IPAM learnt of only from their host ends (its state
        // was lost): reclaimed, and followed from now on.
        for (id, _) in found.into_iter().filter(|(id, _)| netns_id(id)) {
            candidates.entry(id).or_insert((None, "ethwe".into()));
        }
        let named: Vec<String> = match &self.dns {
            Some(d) => d.names().current().store().own_live().into_iter().map(|(k, _)| k.container).filter(|c| netns_id(c)).collect(),
            None => Vec::new(),
        };
        for id in named {
            if !candidates.contains_key(&id) && container_netns(&id).is_err() {
                self.release_gone(&id).await;
            }
        }
        let Ok(links) = self.nl.links().await else { return };
        let present: std::collections::BTreeSet<String> = links.into_iter().map(|(n, _)| n).collect();
        for (id, (path, ifname)) in candidates {
            if !present.contains(&netlink::host_ifname(&id)) {
                self.release_gone(&id).await;
                continue;
            }
            let ns = match path {
                Some(p) => Netns::at(p),
                None => match container_netns(&id) {
                    Ok(ns) => ns,
                    Err(_) => continue,
                },
            };
            let Ok(c) = Netlink::connect(&ns).await else { continue };
            let Ok(Some(link)) = c.link(&ifname).await else { continue };
            let mut cidrs = self.owned_by(&id).await;
            if cidrs.is_empty() {
                // Exact addresses without IPAM: what is on the interface.
                cidrs =
                    c.addresses(link.index).await.unwrap_or_default().into_iter().filter_map(|a| if let IpNet::V4(v) = a { Some(v) } else { None }).collect();
            }
            self.containers.lock().await.insert(id.clone(), Container { id, netns: ns, mac: link.mac, cidrs, ifname });
        }
        self.save_attached(&*self.containers.lock().await);
    }

    /// The configuration.
    pub fn config(&self) -> &RouterConfig {
        &self.cfg
    }

    /// The mesh.
    pub fn mesh(&self) -> &MeshHandle {
        &self.mesh
    }

    /// The file direct targets are kept in, for `--resume`.
    pub fn targets_file(state_dir: &std::path::Path) -> PathBuf {
        state_dir.join("targets")
    }

    fn save_targets(&self, targets: &std::collections::BTreeSet<String>) {
        let text: String = targets.iter().map(|t| format!("{t}\n")).collect();
        if let Err(e) = std::fs::write(Self::targets_file(&self.cfg.state_dir), text) {
            tracing::warn!(error = %e, "cannot save targets for --resume");
        }
    }

    /// `weave connect`: add direct targets (replace them with `replace`),
    /// remembered for `--resume`.
    pub async fn connect(&self, peers: Vec<String>, replace: bool) -> Result<(), RouterError> {
        match self.mesh.connect(peers.clone(), replace).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(RouterError::Invalid(e.to_string())),
            Err(_) => return Err(RouterError::Stopped),
        }
        let mut t = lock(&self.targets);
        if replace {
            t.clear();
        }
        t.extend(peers);
        self.save_targets(&t);
        Ok(())
    }

    /// `weave forget`: drop direct targets.
    pub async fn forget(&self, peers: Vec<String>) -> Result<(), RouterError> {
        match self.mesh.forget(peers.clone()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(RouterError::Invalid(e.to_string())),
            Err(_) => return Err(RouterError::Stopped),
        }
        let mut t = lock(&self.targets);
        for p in &peers {
            t.remove(p);
        }
        self.save_targets(&t);
        Ok(())
    }

    /// A peer's nickname, including peers no longer in the topology.
    pub fn nickname(&self, peer: PeerName) -> Option<String> {
        lock(&self.nicknames).get(&peer).cloned()
    }

    /// A peer by name or nickname, including peers no longer in the
    /// topology.
    pub fn peer_named(&self, want: &str) -> Option<PeerName> {
        let n = lock(&self.nicknames);
        want.parse::<PeerName>().ok().or_else(|| n.iter().find(|(_, nick)| nick.as_str() == want).map(|(p, _)| *p))
    }

    /// Connections that have ended since the router started.
    pub fn terminations(&self) -> u64 {
        self.terminations.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The data plane.
    pub fn dataplane(&self) -> &Arc<dyn Dataplane> {
        &self.dp
    }

    /// The netlink connection in the router's namespace.
    pub fn netlink(&self) -> &Netlink {
        &self.nl
    }

    /// The subnet `net:default` allocates in (None without IPAM).
    pub fn default_subnet(&self) -> Option<Ipv4Net> {
        self.cfg.ipalloc_range.map(|r| self.cfg.ipalloc_default_subnet.unwrap_or(r))
    }

    /// The Docker daemon, when one answered at start.
    pub fn docker(&self) -> Option<&crate::docker::Docker> {
        self.docker.as_ref()
    }

    /// Docker network plugin settings, when it is served.
    pub fn plugin_settings(&self) -> Option<crate::plugin::PluginSettings> {
        self.cfg.plugin.clone()
    }

    /// What IPAM holds, by container (empty without IPAM).
    pub async fn owned(&self) -> BTreeMap<String, Vec<Ipv4Net>> {
        match &self.ipam {
            Some(svc) => svc.with(|i, _| i.status().owned).await.unwrap_or_default(),
            None => BTreeMap::new(),
        }
    }

    /// Who IPAM holds `addr` for.
    pub async fn owner_of(&self, addr: Ipv4Addr) -> Option<String> {
        self.owned().await.into_iter().find(|(_, cidrs)| cidrs.iter().any(|c| c.addr() == addr)).map(|(id, _)| id)
    }

    /// Free addresses held for `id`.
    pub async fn free(&self, id: &str, addrs: impl IntoIterator<Item = Ipv4Addr>) {
        if let Some(svc) = &self.ipam {
            if let Err(e) = svc.free(id, addrs).await {
                tracing::warn!(container = id, error = %e, "cannot free addresses");
            }
        }
    }

    /// The IPAM, when enabled.
    pub fn ipam(&self) -> Option<&IpamService> {
        self.ipam.as_ref()
    }

    /// Allocate (or claim) an address for `id`, waiting for IPAM if it
    /// must (and until it is saved); integrations such as the Docker plugin
    /// plumb it themselves.
    pub async fn allocate(&self, id: &str, spec: &AddrSpec) -> Result<Ipv4Net, RouterError> {
        let Some(svc) = &self.ipam else {
            return match spec {
                AddrSpec::Exact(n) => Ok(*n),
                _ => Err(RouterError::Invalid("IPAM is disabled (--ipalloc-range=): give addresses as ip:CIDR".into())),
            };
        };
        let r = match spec {
            AddrSpec::Exact(n) => svc.claim(id, *n).await,
            AddrSpec::Subnet(s) => svc.allocate(id, Some(*s)).await,
            AddrSpec::Default => svc.allocate(id, None).await,
        };
        r.map_err(|e| match e {
            ServiceError::Ipam(e) => RouterError::Ipam(e),
            ServiceError::Stopped => RouterError::Stopped,
            e => RouterError::Invalid(e.to_string()),
        })
    }

    /// Why IPAM cannot save its state, while it cannot.
    pub async fn ipam_save_error(&self) -> Option<String> {
        self.ipam.as_ref()?.save_error().await
    }

    /// weaveDNS's names, when enabled.
    pub fn dns(&self) -> Option<&weave_dns::channel::Names> {
        self.dns.as_ref().map(weave_dns::service::DnsService::names)
    }

    /// The DNS name a container named `base` gets ([`Target::name`]):
    /// `-h FQDN`, or `base` in the domain.
    pub fn dns_name(&self, base: &str, hostname: Option<&str>) -> Option<String> {
        let d = self.cfg.dns.as_ref()?;
        Some(match hostname {
            Some(h) if !h.is_empty() => h.to_owned(),
            _ => format!("{base}.{}", d.domain.trim_start_matches('.')),
        })
    }

    /// Add DNS entries for `container` (after an attach, or `dns-add`).
    pub async fn dns_add(&self, container: &str, name: &str, addrs: &[Ipv4Addr]) -> Result<(), RouterError> {
        let Some(dns) = &self.dns else { return Err(RouterError::Invalid("weaveDNS is disabled (--no-dns)".into())) };
        dns.add(container, name, addrs).await.map_err(|e| RouterError::Invalid(e.to_string()))
    }

    /// Remove DNS entries of `container` (for `name`/`addrs` if given).
    pub async fn dns_remove(&self, container: &str, name: Option<&str>, addrs: &[Ipv4Addr]) -> Result<usize, RouterError> {
        let Some(dns) = &self.dns else { return Err(RouterError::Invalid("weaveDNS is disabled (--no-dns)".into())) };
        dns.remove(container, name, addrs).await.map_err(|e| RouterError::Invalid(e.to_string()))
    }

    /// Resolve a CONTAINER argument: `pid:N`, a netns path, a named netns,
    /// or (when Docker answers) a Docker container's name or ID.
    pub async fn resolve(&self, spec: &str) -> Result<Target, RouterError> {
        let base = |s: &str| s.rsplit('/').next().unwrap_or(s).trim_start_matches("pid:").to_owned();
        let named = !spec.is_empty() && !spec.contains('/') && !spec.starts_with("pid:");
        if !named || std::path::Path::new("/run/netns").join(spec).exists() || self.docker.is_none() {
            return Ok(Target { id: spec.to_owned(), name: base(spec), netns: Some(container_netns(spec)?), docker: None });
        }
        let d = self.docker.as_ref().expect("checked");
        match d.inspect(spec).await {
            Ok(Some(c)) => Ok(Target { id: c.id.clone(), name: c.name.clone(), netns: c.pid.map(Netns::of_pid), docker: Some(c) }),
            Ok(None) => Err(RouterError::NotFound(format!("container {spec} not found (neither a network namespace nor a Docker container)"))),
            Err(e) => Err(RouterError::Invalid(format!("cannot look up container {spec}: {e}"))),
        }
    }

    /// `weave attach` with DNS: the addresses, then a name for each and a
    /// resolver for the container (named namespaces get
    /// `/etc/netns/NAME/resolv.conf`, which `ip netns exec` mounts; Docker
    /// containers get theirs rewritten). A Docker container is attached
    /// again, with the same addresses, when it is restarted.
    pub async fn attach_with_dns(
        &self,
        container: &str,
        specs: &[AddrSpec],
        multicast_route: bool,
        dns: bool,
        hostname: Option<&str>,
    ) -> Result<Vec<Ipv4Net>, RouterError> {
        let t = self.resolve(container).await?;
        // A Docker container's lifecycle events wait until it is attached
        // and tracked; a sweep, until it is plumbed.
        let _busy = self.busy(&t.id).await;
        let cidrs = self.attach_target(&t, specs, multicast_route, "ethwe", false).await?;
        if t.docker.is_some() {
            let mut tr = lock(&self.tracked);
            let e = tr.entry(t.id.clone()).or_insert(Tracked {
                specs: Vec::new(),
                dns,
                hostname: hostname.map(str::to_owned),
                multicast: multicast_route,
                epoch: 0,
            });
            for c in &cidrs {
                let spec = AddrSpec::Exact(*c);
                if !e.specs.contains(&spec) {
                    e.specs.push(spec);
                }
            }
            e.dns = dns;
            e.hostname = hostname.map(str::to_owned);
            save_tracked(&self.cfg.state_dir, &tr);
        }
        if dns {
            self.register_dns(&t, &cidrs, hostname).await?;
        }
        Ok(cidrs)
    }

    /// Names for `cidrs` of an attached container, the route to this
    /// host's DNS server inside it and back, and its resolver.
    async fn register_dns(&self, t: &Target, cidrs: &[Ipv4Net], hostname: Option<&str>) -> Result<(), RouterError> {
        let (Some(name), Some(settings)) = (self.dns_name(&t.name, hostname), self.cfg.dns.as_ref()) else { return Ok(()) };
        let addrs: Vec<Ipv4Addr> = cidrs.iter().map(Ipv4Net::addr).collect();
        self.dns_add(&t.id, &name, &addrs).await?;
        let IpAddr::V4(dns_ip) = settings.listen_for(self.cfg.name).ip() else { return Ok(()) };
        if let Some(ns) = &t.netns {
            let c = Netlink::connect(ns).await?;
            if let Some(link) = c.link("ethwe").await? {
                c.add_route(link.index, Ipv4Net::new(dns_ip, 32).expect("/32")).await?;
            }
        }
        // And the way back: the server answers from the bridge.
        if let Some(b) = self.nl.link(&self.cfg.bridge).await? {
            for a in &addrs {
                self.nl.add_route(b.index, Ipv4Net::new(*a, 32).expect("/32")).await?;
            }
        }
        let written = match &t.docker {
            Some(d) => match &d.resolv_conf {
                Some(p) => crate::docker::rewrite_resolv_conf(p, dns_ip, &settings.domain),
                None => Ok(()),
            },
            None if !t.id.starts_with('/') && !t.id.starts_with("pid:") => {
                note_resolv_conf(&self.cfg.state_dir, &t.id);
                weave_dns::resolv::write_netns_resolv_conf(std::path::Path::new("/etc/netns"), &t.id, IpAddr::V4(dns_ip), &settings.domain).map(drop)
            }
            None => Ok(()),
        };
        written.map_err(|e| RouterError::Invalid(format!("cannot write the container's resolv.conf: {e}")))
    }

    /// Attach a resolved container as interface `ifname`: addresses (from
    /// IPAM unless exact) in its namespace. Returns the CIDRs configured.
    pub async fn attach_target(&self, t: &Target, specs: &[AddrSpec], multicast_route: bool, ifname: &str, hairpin: bool) -> Result<Vec<Ipv4Net>, RouterError> {
        let Some(ns) = t.netns.clone() else { return Err(RouterError::Invalid(format!("container {} is not running", t.name))) };
        let container = t.id.as_str();
        let specs: Vec<AddrSpec> = if specs.is_empty() { vec![AddrSpec::Default] } else { specs.to_vec() };
        let mut cidrs = Vec::new();
        for s in &specs {
            cidrs.push(self.allocate(container, s).await?);
        }
        let cfg = AttachConfig { bridge: self.cfg.bridge.clone(), ifname: ifname.into(), mtu: self.cfg.mtu, multicast_route, hairpin };
        let addrs: Vec<IpNet> = cidrs.iter().map(|c| IpNet::V4(*c)).collect();
        let attached = match netlink::attach(&self.nl, &ns, container, &addrs, &cfg).await {
            Ok(a) => a,
            Err(e) => {
                // Give back what we took for it.
                self.free(container, cidrs.iter().map(Ipv4Net::addr)).await;
                return Err(e.into());
            }
        };
        let mut cs = self.containers.lock().await;
        let entry = cs.entry(container.to_owned()).or_insert_with(|| Container {
            id: container.to_owned(),
            netns: ns.clone(),
            mac: attached.mac,
            cidrs: Vec::new(),
            ifname: ifname.to_owned(),
        });
        entry.mac = attached.mac;
        entry.netns = ns;
        for c in &cidrs {
            if !entry.cidrs.contains(c) {
                entry.cidrs.push(*c);
            }
        }
        let all = entry.cidrs.clone();
        self.save_attached(&cs);
        drop(cs);
        self.record_on_host_end(container, &all).await;
        Ok(cidrs)
    }

    /// `weave detach`: remove these addresses (all when empty); free them.
    pub async fn detach(&self, container: &str, addrs: &[Ipv4Net]) -> Result<Vec<Ipv4Net>, RouterError> {
        let t = self.resolve(container).await?;
        let _busy = self.busy(&t.id).await;
        let victims = self.detach_target(&t, "ethwe", addrs).await?;
        let mut tr = lock(&self.tracked);
        if let Some(e) = tr.get_mut(&t.id) {
            e.specs.retain(|s| !matches!(s, AddrSpec::Exact(n) if victims.contains(n)));
            if addrs.is_empty() || e.specs.is_empty() {
                tr.remove(&t.id);
            }
            save_tracked(&self.cfg.state_dir, &tr);
        }
        Ok(victims)
    }

    /// Detach a resolved container's interface `ifname`.
    pub async fn detach_target(&self, t: &Target, ifname: &str, addrs: &[Ipv4Net]) -> Result<Vec<Ipv4Net>, RouterError> {
        let container = t.id.as_str();
        let mut cs = self.containers.lock().await;
        let known = cs.get(container).map(|c| c.cidrs.clone()).unwrap_or_default();
        let owned = self.owned_by(container).await;
        let mut all = known;
        for o in owned {
            if !all.contains(&o) {
                all.push(o);
            }
        }
        let victims: Vec<Ipv4Net> =
            if addrs.is_empty() { all.clone() } else { all.iter().filter(|c| addrs.iter().any(|a| a.addr() == c.addr())).copied().collect() };
        if victims.is_empty() && !addrs.is_empty() {
            return Err(RouterError::NotFound(format!("{} does not have {}", t.name, addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "))));
        }
        if let Some(ns) = &t.netns {
            let v: Vec<IpNet> = victims.iter().map(|c| IpNet::V4(*c)).collect();
            netlink::detach(ns, ifname, if addrs.is_empty() { None } else { Some(&v) }).await?;
        }
        self.free(container, victims.iter().map(Ipv4Net::addr)).await;
        if self.dns.is_some() {
            let ips: Vec<Ipv4Addr> = victims.iter().map(Ipv4Net::addr).collect();
            let _ = self.dns_remove(container, None, &ips).await;
        }
        let mut gone = addrs.is_empty();
        if let Some(c) = cs.get_mut(container) {
            c.cidrs.retain(|x| !victims.contains(x));
            gone |= c.cidrs.is_empty();
            if !gone {
                self.record_on_host_end(container, &c.cidrs).await;
            }
        }
        if gone {
            cs.remove(container);
            self.save_attached(&cs);
            if t.docker.is_none() && t.netns.as_ref() == Some(&Netns::named(container)) {
                let _ = weave_dns::resolv::remove_netns_resolv_conf(std::path::Path::new("/etc/netns"), container);
            }
        }
        Ok(victims)
    }

    /// Attached containers (all, or those named).
    pub async fn ps(&self, only: &[String]) -> Vec<Container> {
        self.containers.lock().await.values().filter(|c| only.is_empty() || only.contains(&c.id)).cloned().collect()
    }

    /// The id IPAM holds exposed addresses under.
    pub const EXPOSE_ID: &'static str = "weave:expose";

    /// `weave expose`: host addresses on the bridge (from IPAM unless
    /// exact), masqueraded unless told otherwise. Idempotent: an exposed
    /// address in the requested subnet is returned again.
    pub async fn expose(&self, specs: &[AddrSpec], masquerade: bool) -> Result<Vec<Ipv4Net>, RouterError> {
        let specs: Vec<AddrSpec> = if specs.is_empty() { vec![AddrSpec::Default] } else { specs.to_vec() };
        let mut out = Vec::new();
        for s in &specs {
            let n = self.allocate(Self::EXPOSE_ID, s).await?;
            weave_dataplane::expose::expose(&self.nl, &self.cfg.bridge, IpNet::V4(n), masquerade).await?;
            out.push(n);
        }
        Ok(out)
    }

    /// Addresses exposed on the bridge, and the bridge's MAC.
    pub async fn exposed(&self) -> Result<(Vec<Ipv4Net>, [u8; 6]), RouterError> {
        let addrs = weave_dataplane::expose::exposed(&self.nl, &self.cfg.bridge).await?;
        let mac = self.nl.link(&self.cfg.bridge).await?.map(|l| l.mac).unwrap_or_default();
        Ok((addrs.into_iter().filter_map(|a| if let IpNet::V4(v) = a { Some(v) } else { None }).collect(), mac))
    }

    /// `weave hide`: remove these exposed addresses (all when empty).
    pub async fn hide(&self, addrs: &[Ipv4Addr]) -> Result<Vec<Ipv4Net>, RouterError> {
        let (exposed, _) = self.exposed().await?;
        let victims: Vec<Ipv4Net> = exposed.into_iter().filter(|n| addrs.is_empty() || addrs.contains(&n.addr())).collect();
        for n in &victims {
            weave_dataplane::expose::hide(&self.nl, &self.cfg.bridge, IpNet::V4(*n)).await?;
        }
        self.free(Self::EXPOSE_ID, victims.iter().map(Ipv4Net::addr)).await;
        if self.dns.is_some() && !victims.is_empty() {
            // The names `expose -h` gave these addresses.
            let _ = self.dns_remove(Self::EXPOSE_ID, None, &victims.iter().map(Ipv4Net::addr).collect::<Vec<_>>()).await;
        }
        Ok(victims)
    }

    /// `weave reset`: hand our address space to a live peer (waiting up to
    /// 10 s for it to take it, unless `force`), remove what the router made
    /// in this namespace and its persisted state, then stop.
    pub async fn reset(&self, force: bool) -> Result<(Vec<String>, Option<PeerName>), RouterError> {
        let mut heir = None;
        let mut removed_files = Vec::new();
        if let Some(svc) = &self.ipam {
            heir = svc.with(|i, now| i.leave(now)).await.ok().flatten();
            if heir.is_some() && !force {
                let end = Instant::now() + Duration::from_secs(10);
                while Instant::now() < end && !svc.handed_off().await {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        if let Some(settings) = &self.cfg.dns {
            if let IpAddr::V4(ip) = settings.listen_for(self.cfg.name).ip() {
                removed_files.extend(remove_resolv_confs(&self.cfg.state_dir, ip));
            }
        }
        let plugin = lock(&self.plugin).take();
        if let (Some(p), Some(d)) = (&plugin, &self.docker) {
            if let Err(e) = p.remove_network(d).await {
                tracing::warn!(error = %e, "Docker network left behind");
            }
        }
        if let Some(p) = plugin {
            removed_files.push(p.socket().display().to_string());
        }
        // Nothing may put the bridge back once it is gone, and the links
        // reset deletes are not containers dying.
        self.dp.retire();
        if let Some(w) = lock(&self.links_watch).take() {
            w.abort();
        }
        let mut removed = weave_dataplane::expose::reset(&self.nl, &self.cfg.bridge).await?;
        removed.append(&mut removed_files);
        for f in [
            self.cfg.state_dir.join("ipam.db"),
            Self::targets_file(&self.cfg.state_dir),
            self.cfg.state_dir.join(NAME_FILE),
            self.cfg.state_dir.join(DOCKER_FILE),
            self.cfg.state_dir.join(DNS_FILE),
            self.cfg.state_dir.join(ATTACHED_FILE),
        ] {
            if std::fs::remove_file(&f).is_ok() {
                removed.push(f.display().to_string());
            }
        }
        self.stop();
        Ok((removed, heir))
    }

    /// Ask the router to stop; [`Self::stopped`] returns once asked.
    pub fn stop(&self) {
        self.stopping.notify_waiters();
        self.stopping.notify_one();
    }

    /// Wait for [`Self::stop`].
    pub async fn stopped(&self) {
        self.stopping.notified().await;
    }

    /// Close the mesh (the data plane stops with the process) and stop
    /// serving the Docker plugin (its socket goes; its network stays for
    /// the next launch).
    pub async fn shutdown(&self) {
        drop(lock(&self.plugin).take());
        self.mesh.shutdown().await;
    }
}

impl Router {
    /// Give up everything held for a container: its addresses, names and
    /// entry.
    async fn release(&self, id: &str) {
        let owned = self.owned_by(id).await;
        self.free(id, owned.iter().map(Ipv4Net::addr)).await;
        if self.dns.is_some() {
            let _ = self.dns_remove(id, None, &[]).await;
        }
        let known = {
            let mut cs = self.containers.lock().await;
            let known = cs.remove(id).is_some();
            self.save_attached(&cs);
            known
        };
        if known || !owned.is_empty() {
            tracing::info!(container = crate::docker::display_id(id), released = owned.len(), "container gone: addresses and names released");
        }
    }

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

    /// Write on a container's host end, in the kernel, whose link it is
    /// and its addresses ([`HostEndRecord`]): if the state directory is
    /// lost, the next start claims them back from there.
    async fn record_on_host_end(&self, id: &str, cidrs: &[Ipv4Net]) {
        let record = HostEndRecord { id: id.to_owned(), cidrs: cidrs.to_vec() }.to_string();
        let written = match self.nl.link(&netlink::host_ifname(id)).await {
            Ok(Some(l)) => self.nl.set_alias(l.index, &record).await,
            Ok(None) => return,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            tracing::warn!(container = crate::docker::display_id(id), error = %e, "cannot record the attachment on its host end; it will not be reclaimed if the state is lost");
        }
    }

    /// Record the containers with a veth of ours that Docker does not
    /// follow (namespaces, CNI pods), for the next start.
    fn save_attached(&self, cs: &BTreeMap<String, Container>) {
        let m: serde_json::Map<String, serde_json::Value> = cs
            .values()
            .filter(|c| !crate::docker::is_container_id(&c.id))
            .filter_map(|c| Some((c.id.clone(), serde_json::json!({ "netns": c.netns.path()?.to_str()?, "ifname": c.ifname }))))
            .collect();
        let path = self.cfg.state_dir.join(ATTACHED_FILE);
        if let Err(e) = weave_core::fs::write_atomically(&path, serde_json::Value::Object(m).to_string().as_bytes()) {
            tracing::warn!(error = %e, file = %path.display(), "cannot save the attached containers");
        }
    }

    /// Release every container of ours whose veth is gone (the kernel
    /// deletes the pair with the container's namespace). Docker's are left
    /// to its events (a restart keeps the ID and the addresses).
    async fn sweep(&self) {
        let Ok(links) = self.nl.links().await else { return };
        let present: std::collections::BTreeSet<String> = links.into_iter().map(|(n, _)| n).collect();
        let dead: Vec<String> = self
            .containers
            .lock()
            .await
            .keys()
            .filter(|id| !crate::docker::is_container_id(id) && !present.contains(&netlink::host_ifname(id)))
            .cloned()
            .collect();
        for id in dead {
            let _busy = self.busy(&id).await;
            // Again under its lock: an attach may have just made it anew.
            let still = self.containers.lock().await.contains_key(&id);
            if still && matches!(self.nl.link(&netlink::host_ifname(&id)).await, Ok(None)) {
                self.release_gone(&id).await;
                self.forget_lock(&id);
            }
        }
    }

    /// A container that is no longer there: everything held for it goes,
    /// its resolv.conf under /etc/netns too.
    async fn release_gone(&self, id: &str) {
        self.release(id).await;
        if !id.contains('/') && !id.starts_with("pid:") && !id.starts_with("weave:") && !std::path::Path::new("/run/netns").join(id).exists() {
            let _ = weave_dns::resolv::remove_netns_resolv_conf(std::path::Path::new("/etc/netns"), id);
        }
    }

    /// Queue a lifecycle event for a container's worker: one worker per
    /// container handles its events in order, so a slow attach of one
    /// container never holds up another's.
    fn docker_event(self: &Arc<Self>, id: String, ev: DockerEvent) {
        let mut queues = lock(&self.docker_queues);
        if let Some(tx) = queues.get(&id) {
            if tx.send(ev).is_ok() {
                return;
            }
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let _ = tx.send(ev);
        queues.insert(id.clone(), tx);
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(r) = me.upgrade() else { return };
                let Some(ev) = r.next_docker_event(&id, &mut rx) else { return };
                let busy = r.id_lock(&id);
                let _g = busy.lock().await;
                r.on_docker(ev, &id).await;
            }
        });
    }

    /// The next event for a container's worker; None retires the worker
    /// (atomically with senders, who hold the same lock).
    fn next_docker_event(&self, id: &str, rx: &mut tokio::sync::mpsc::UnboundedReceiver<DockerEvent>) -> Option<DockerEvent> {
        if let Ok(ev) = rx.try_recv() {
            return Some(ev);
        }
        let mut queues = lock(&self.docker_queues);
        match rx.try_recv() {
            Ok(ev) => Some(ev),
            Err(_) => {
                queues.remove(id);
                None
            }
        }
    }

    /// Act on one event of a Docker container (its lock held).
    async fn on_docker(self: &Arc<Self>, ev: DockerEvent, id: &str) {
        use crate::docker::Lifecycle;
        let short = crate::docker::display_id(id).to_owned();
        match ev {
            DockerEvent::Life(Lifecycle::Start) => {
                let tracked = lock(&self.tracked).get_mut(id).map(|t| t.epoch += 1).is_some();
                if tracked {
                    match tokio::time::timeout(Duration::from_secs(30), self.reattach(id)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::warn!(container = %short, error = %e, "cannot attach the restarted container again"),
                        Err(_) => tracing::warn!(container = %short, "attaching the restarted container again timed out (IPAM unreachable?)"),
                    }
                }
                self.plugin_names(id).await;
            }
            DockerEvent::Life(Lifecycle::Die) => {
                let epoch = lock(&self.tracked).get_mut(id).map(|t| {
                    t.epoch += 1;
                    t.epoch
                });
                if let Some(epoch) = epoch {
                    // Its interface went with its namespace; its addresses
                    // wait a little for a restart.
                    self.containers.lock().await.remove(id);
                    let (me, grace, id) = (Arc::downgrade(self), self.cfg.docker_grace, id.to_owned());
                    tokio::spawn(async move {
                        tokio::time::sleep(grace).await;
                        if let Some(r) = me.upgrade() {
                            r.docker_event(id, DockerEvent::GraceOver(epoch));
                        }
                    });
                } else if self.dns.is_some() {
                    let _ = self.dns_remove(id, None, &[]).await;
                }
            }
            DockerEvent::GraceOver(epoch) => {
                // Released only if nothing happened since that death.
                if lock(&self.tracked).get(id).is_some_and(|t| t.epoch == epoch) {
                    self.release(id).await;
                }
            }
            DockerEvent::Life(Lifecycle::Destroy) => {
                {
                    let mut tr = lock(&self.tracked);
                    if tr.remove(id).is_some() {
                        save_tracked(&self.cfg.state_dir, &tr);
                    }
                }
                self.release(id).await;
                lock(&self.id_locks).remove(id);
            }
        }
    }

    /// Attach a restarted Docker container as it was: the same addresses
    /// if it still holds them (or can claim them again), a new one if not.
    async fn reattach(&self, id: &str) -> Result<(), RouterError> {
        let Some(tr) = lock(&self.tracked).get(id).cloned() else { return Ok(()) };
        let t = self.resolve(id).await?;
        let cidrs = match self.attach_target(&t, &tr.specs, tr.multicast, "ethwe", false).await {
            Ok(c) => c,
            Err(RouterError::Ipam(e)) => {
                tracing::info!(container = crate::docker::display_id(id), error = %e, "its old addresses are taken: allocating a new one");
                // Whatever of the old ones it still holds goes back.
                self.free(id, self.owned_by(id).await.iter().map(Ipv4Net::addr)).await;
                self.attach_target(&t, &[AddrSpec::Default], tr.multicast, "ethwe", false).await?
            }
            Err(e) => return Err(e),
        };
        {
            let mut all = lock(&self.tracked);
            if let Some(e) = all.get_mut(id) {
                e.specs = cidrs.iter().map(|c| AddrSpec::Exact(*c)).collect();
            }
            save_tracked(&self.cfg.state_dir, &all);
        }
        if tr.dns {
            // Names for addresses it no longer has must not linger.
            if self.dns.is_some() {
                let _ = self.dns_remove(id, None, &[]).await;
            }
            self.register_dns(&t, &cidrs, tr.hostname.as_deref()).await?;
        }
        tracing::info!(container = %t.name, ?cidrs, "restarted container attached again");
        Ok(())
    }

    /// A container started on the plugin's networks gets its names.
    async fn plugin_names(&self, id: &str) {
        let nets = match &*lock(&self.plugin) {
            Some(p) => p.network_ids(),
            None => return,
        };
        let Ok(t) = self.resolve(id).await else { return };
        let Some(d) = &t.docker else { return };
        let cidrs: Vec<Ipv4Net> = d.networks.iter().filter(|(n, _)| nets.contains(*n)).map(|(_, c)| *c).collect();
        if cidrs.is_empty() {
            return;
        }
        if let Err(e) = self.register_dns(&t, &cidrs, None).await {
            tracing::warn!(container = %t.name, error = %e, "cannot register the plugin container's names");
        }
    }

    /// Bring Docker containers up to date after (re)connecting to Docker:
    /// those whose addresses IPAM holds, or that were attached before,
    /// are attached again if running (their `ethwe` may be new or gone),
    /// wait out the grace period if dead, and are released if removed.
    async fn reconcile_docker(self: &Arc<Self>) {
        let mut ids: std::collections::BTreeSet<String> = lock(&self.tracked).keys().cloned().collect();
        let owned = self.owned().await;
        for (k, cidrs) in owned.into_iter().filter(|(k, _)| crate::docker::is_container_id(k)) {
            // Held but not tracked: attached by an older router.
            lock(&self.tracked).entry(k.clone()).or_insert_with(|| Tracked {
                specs: cidrs.iter().map(|c| AddrSpec::Exact(*c)).collect(),
                dns: self.dns.is_some(),
                hostname: None,
                multicast: true,
                epoch: 0,
            });
            ids.insert(k);
        }
        for id in ids {
            use crate::docker::Lifecycle;
            let ev = match self.resolve(&id).await {
                Ok(Target { netns: Some(_), .. }) => Lifecycle::Start,
                Ok(_) => Lifecycle::Die,
                Err(RouterError::NotFound(_)) => Lifecycle::Destroy,
                Err(e) => {
                    tracing::warn!(container = crate::docker::display_id(&id), error = %e, "cannot reconcile");
                    continue;
                }
            };
            self.docker_event(id, DockerEvent::Life(ev));
        }
    }
}

/// What the router writes on a container's host end (its alias): `weave/1
/// CIDR[,CIDR...] ID`. The kernel keeps it for as long as the link lives,
/// so it outlives a lost state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEndRecord {
    /// The IPAM id (container, `cni:...`).
    pub id: String,
    /// Its addresses.
    pub cidrs: Vec<Ipv4Net>,
}

impl std::fmt::Display for HostEndRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cidrs: Vec<String> = self.cidrs.iter().map(ToString::to_string).collect();
        write!(f, "weave/1 {} {}", cidrs.join(","), self.id)
    }
}

impl std::str::FromStr for HostEndRecord {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let rest = s.strip_prefix("weave/1 ").ok_or(())?;
        let (cidrs, id) = rest.split_once(' ').ok_or(())?;
        let cidrs = cidrs.split(',').map(|c| c.parse().map_err(drop)).collect::<Result<Vec<Ipv4Net>, ()>>()?;
        if id.is_empty() || cidrs.is_empty() {
            return Err(());
        }
        Ok(Self { id: id.to_owned(), cidrs })
    }
}

/// The addresses in use on this host as the kernel knows them: the records
/// on the bridge's container links, and the addresses exposed on it.
async fn in_use(nl: &Netlink, bridge: &str) -> Result<Vec<(String, Ipv4Net)>, weave_dataplane::PlumbError> {
    let mut out = Vec::new();
    if let Some(b) = nl.link(bridge).await? {
        for (_, port) in nl.ports(b.index).await? {
            if let Some(r) = port.alias.as_deref().and_then(|a| a.parse::<HostEndRecord>().ok()) {
                out.extend(r.cidrs.into_iter().map(|c| (r.id.clone(), c)));
            }
        }
    }
    for a in weave_dataplane::expose::exposed(nl, bridge).await? {
        if let IpNet::V4(v) = a {
            out.push((Router::EXPOSE_ID.to_owned(), v));
        }
    }
    Ok(out)
}

/// Before anything is allocated: claim back every address in use here
/// that IPAM does not hold (its state was lost, corrupt or discarded), so
/// none is given to another container. Claims wait, reserved, until the
/// ring is known.
fn reclaim(ipam: &mut Ipam, found: Vec<(String, Ipv4Net)>) {
    let owners: BTreeMap<Ipv4Addr, String> =
        ipam.status().owned.into_iter().flat_map(|(id, cidrs)| cidrs.into_iter().map(move |c| (c.addr(), id.clone()))).collect();
    let now = Instant::now();
    let mut n = 0;
    for (id, cidr) in found {
        match owners.get(&cidr.addr()) {
            Some(o) if *o == id => {}
            Some(o) => tracing::error!(addr = %cidr, container = %id, held_for = %o, "address in use here is held for another container"),
            None => match ipam.reserve(now, &id, cidr) {
                Ok(_) => n += 1,
                Err(e) => tracing::error!(addr = %cidr, container = %id, error = %e, "cannot reclaim an address in use here"),
            },
        }
    }
    if n > 0 {
        tracing::warn!(reclaimed = n, "IPAM did not hold addresses in use on this host (its state was lost?): claimed them back");
    }
}

/// Containers with a veth of ours, as [`Router::save_attached`] left
/// them: id -> (namespace path, interface).
fn load_attached(dir: &std::path::Path) -> BTreeMap<String, (Option<String>, String)> {
    let Ok(text) = std::fs::read_to_string(dir.join(ATTACHED_FILE)) else { return BTreeMap::new() };
    let Ok(serde_json::Value::Object(m)) = serde_json::from_str::<serde_json::Value>(&text) else {
        tracing::warn!(file = ATTACHED_FILE, "unreadable; containers that died while the router was down may keep their addresses");
        return BTreeMap::new();
    };
    m.into_iter()
        .map(|(id, v)| {
            let netns = v["netns"].as_str().map(str::to_owned);
            let ifname = v["ifname"].as_str().filter(|i| netlink::valid_ifname(i)).unwrap_or("ethwe").to_owned();
            (id, (netns, ifname))
        })
        .collect()
}

/// Docker containers as attached, from the state directory.
fn load_tracked(dir: &std::path::Path) -> BTreeMap<String, Tracked> {
    let Ok(text) = std::fs::read_to_string(dir.join(DOCKER_FILE)) else { return BTreeMap::new() };
    let Ok(serde_json::Value::Object(m)) = serde_json::from_str(&text) else {
        tracing::warn!(file = DOCKER_FILE, "unreadable; Docker containers will be attached again with defaults");
        return BTreeMap::new();
    };
    m.into_iter()
        .filter_map(|(id, v)| {
            let specs = v.get("specs")?.as_array()?.iter().filter_map(|s| s.as_str()?.parse().ok()).collect();
            let hostname = v.get("hostname").and_then(|h| h.as_str()).map(str::to_owned);
            Some((id, Tracked { specs, dns: v.get("dns")?.as_bool()?, hostname, multicast: v.get("multicast")?.as_bool()?, epoch: 0 }))
        })
        .collect()
}

fn save_tracked(dir: &std::path::Path, all: &BTreeMap<String, Tracked>) {
    let m: serde_json::Map<String, serde_json::Value> = all
        .iter()
        .map(|(id, t)| {
            let specs: Vec<String> = t.specs.iter().map(ToString::to_string).collect();
            (id.clone(), serde_json::json!({ "specs": specs, "dns": t.dns, "hostname": t.hostname, "multicast": t.multicast }))
        })
        .collect();
    let path = dir.join(DOCKER_FILE);
    if let Err(e) = weave_core::fs::write_atomically(&path, serde_json::Value::Object(m).to_string().as_bytes()) {
        tracing::warn!(error = %e, file = %path.display(), "cannot save the Docker attachments");
    }
}

/// The prefix of CNI attachments' ids: `cni:NETWORK/CONTAINERID/IFNAME`.
pub const CNI_PREFIX: &str = "cni:";

/// A CNI call: which attachment, and for ADD how.
#[derive(Debug, Clone, Copy)]
pub struct CniCall<'a> {
    /// The network configuration's `name`: GC works within it.
    pub network: &'a str,
    /// `CNI_CONTAINERID`.
    pub container_id: &'a str,
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
    /// `CNI_NETNS` (a path; may be empty for DEL).
    pub netns: &'a str,
    /// Allocate here (the default subnet if None).
    pub subnet: Option<Ipv4Net>,
    /// Hairpin mode on the bridge port.
    pub hairpin: bool,
    /// weave-ipam: addresses only; the interface is another plugin's.
    pub ipam_only: bool,
    /// A DNS name (the pod's).
    pub hostname: Option<&'a str>,
}

impl CniCall<'_> {
    /// The IPAM (and DNS) id of the attachment.
    pub fn id(&self) -> String {
        format!("{CNI_PREFIX}{}/{}/{}", self.network, self.container_id, self.ifname)
    }
}

/// What a CNI attachment has.
#[derive(Debug, Clone, Default)]
pub struct CniAttachment {
    /// Its addresses.
    pub cidrs: Vec<Ipv4Net>,
    /// The bridge's address in its subnet (its default route).
    pub gateway: Option<Ipv4Addr>,
    /// The host end of its veth.
    pub host_ifname: String,
    /// The host end's MAC.
    pub host_mac: Option<[u8; 6]>,
    /// The container interface's MAC, if it exists.
    pub mac: Option<[u8; 6]>,
}

impl Router {
    /// What IPAM holds for `id`.
    pub async fn owned_by(&self, id: &str) -> Vec<Ipv4Net> {
        self.owned().await.remove(id).unwrap_or_default()
    }

    /// The host's address on the bridge for `spec` (exactly that
    /// address, or one in exactly that subnet), exposed with masquerade
    /// if there is none yet: the gateway of CNI containers and of the
    /// Docker plugin's networks. Returns it and whether it was exposed
    /// just now.
    pub async fn gateway_for(&self, spec: AddrSpec) -> Result<(Ipv4Addr, bool), RouterError> {
        let (exposed, _) = self.exposed().await?;
        let present = exposed.iter().find(|a| match spec {
            AddrSpec::Exact(n) => a.addr() == n.addr(),
            AddrSpec::Subnet(s) => a.trunc() == s,
            AddrSpec::Default => false,
        });
        if let Some(a) = present {
            return Ok((a.addr(), false));
        }
        let e = self.expose(std::slice::from_ref(&spec), true).await?;
        e.first().map(|a| (a.addr(), true)).ok_or_else(|| RouterError::Invalid(format!("no gateway address for {spec}")))
    }

    /// Whether a CNI attachment has an address in `subnet` (so its
    /// gateway must stay).
    pub async fn cni_uses(&self, subnet: Ipv4Net) -> bool {
        self.owned().await.iter().any(|(id, cidrs)| id.starts_with(CNI_PREFIX) && cidrs.iter().any(|c| c.trunc() == subnet))
    }

    fn cni_netns(netns: &str) -> Result<Netns, RouterError> {
        if netns.is_empty() {
            return Err(RouterError::Invalid("CNI_NETNS is required".into()));
        }
        if !std::path::Path::new(netns).exists() {
            return Err(RouterError::NotFound(format!("network namespace {netns} does not exist")));
        }
        Ok(Netns::at(netns))
    }

    /// CNI ADD: `ifname` in the namespace at `netns`, an address from
    /// `subnet` (default subnet if None), a default route through the
    /// bridge's address in that subnet, hairpin mode as asked. With
    /// `ipam_only`, just the address (weave-ipam). Idempotent.
    pub async fn cni_add(&self, call: &CniCall<'_>) -> Result<CniAttachment, RouterError> {
        let id = call.id();
        let _busy = self.busy(&id).await;
        let spec = call.subnet.map_or(AddrSpec::Default, AddrSpec::Subnet);
        let ns = if call.ipam_only { None } else { Some(Self::cni_netns(call.netns)?) };
        let cidrs = match &ns {
            None => vec![self.allocate(&id, &spec).await?],
            Some(ns) => {
                let t = Target { id: id.clone(), name: call.container_id.to_owned(), netns: Some(ns.clone()), docker: None };
                self.attach_target(&t, &[spec], false, call.ifname, call.hairpin).await?
            }
        };
        if let (Some(h), Some(_)) = (call.hostname.filter(|h| !h.is_empty()), &self.dns) {
            let name = self.dns_name(h, None).unwrap_or_default();
            self.dns_add(&id, &name, &cidrs.iter().map(Ipv4Net::addr).collect::<Vec<_>>()).await?;
        }
        let Some(ns) = ns else { return Ok(CniAttachment { cidrs, ..CniAttachment::default() }) };
        let (gateway, _) = self.gateway_for(AddrSpec::Subnet(cidrs[0].trunc())).await?;
        let c = Netlink::connect(&ns).await?;
        let link = c.link(call.ifname).await?.ok_or_else(|| RouterError::NotFound(format!("{} vanished from {}", call.ifname, call.netns)))?;
        c.add_default_route(link.index, gateway).await?;
        let (host_ifname, host_mac) = self.host_end(&id).await?;
        Ok(CniAttachment { cidrs, gateway: Some(gateway), host_ifname, host_mac, mac: Some(link.mac) })
    }

    async fn host_end(&self, id: &str) -> Result<(String, Option<[u8; 6]>), RouterError> {
        let name = netlink::host_ifname(id);
        let mac = self.nl.link(&name).await?.map(|l| l.mac);
        Ok((name, mac))
    }

    /// CNI DEL: free what the attachment held and, unless `ipam_only`
    /// (the interface is another plugin's), remove its interface. Nothing
    /// there, or no namespace any more, is not an error.
    pub async fn cni_del(&self, call: &CniCall<'_>) -> Result<(), RouterError> {
        let id = call.id();
        let _busy = self.busy(&id).await;
        let netns = (!call.ipam_only && !call.netns.is_empty() && std::path::Path::new(call.netns).exists()).then(|| Netns::at(call.netns));
        let t = Target { id: id.clone(), name: call.container_id.to_owned(), netns, docker: None };
        if let Err(e) = self.detach_target(&t, call.ifname, &[]).await {
            // A namespace file that is no longer a namespace: free anyway.
            tracing::info!(attachment = %id, error = %e, "CNI DEL: the interface could not be reached; freeing its addresses");
            self.release(&id).await;
        }
        if !call.ipam_only {
            // Without the namespace the pair is gone already; with a stale
            // one left, its host end goes here.
            self.nl.delete(&netlink::host_ifname(&id)).await?;
        }
        self.forget_lock(&id);
        Ok(())
    }

    /// CNI CHECK: the attachment's addresses, which must all be on its
    /// interface (unless `ipam_only`).
    pub async fn cni_check(&self, call: &CniCall<'_>) -> Result<CniAttachment, RouterError> {
        let id = call.id();
        let owned = self.owned_by(&id).await;
        if owned.is_empty() {
            return Err(RouterError::NotFound(format!("no addresses are held for {}/{}", call.container_id, call.ifname)));
        }
        if call.ipam_only {
            return Ok(CniAttachment { cidrs: owned, ..CniAttachment::default() });
        }
        let c = Netlink::connect(&Self::cni_netns(call.netns)?).await?;
        let link = c.link(call.ifname).await?.ok_or_else(|| RouterError::NotFound(format!("{} does not exist in {}", call.ifname, call.netns)))?;
        let on = c.addresses(link.index).await?;
        if let Some(missing) = owned.iter().find(|o| !on.contains(&IpNet::V4(**o))) {
            return Err(RouterError::Mismatch(format!("{missing} is not on {}", call.ifname)));
        }
        let (host_ifname, host_mac) = self.host_end(&id).await?;
        if host_mac.is_none() {
            return Err(RouterError::Mismatch(format!("the host end {host_ifname} of {} is missing", call.ifname)));
        }
        let gateway = self.exposed().await?.0.into_iter().find(|e| e.trunc() == owned[0].trunc()).map(|e| e.addr());
        Ok(CniAttachment { cidrs: owned, gateway, host_ifname, host_mac, mac: Some(link.mac) })
    }

    /// CNI GC for `network`: free what every attachment of it not in
    /// `valid` (as "CONTAINERID/IFNAME") holds. Returns those released.
    pub async fn cni_gc(&self, network: &str, valid: &std::collections::BTreeSet<String>) -> Result<Vec<String>, RouterError> {
        let prefix = format!("{CNI_PREFIX}{network}/");
        let stale: Vec<String> =
            self.owned().await.into_keys().filter_map(|k| k.strip_prefix(&prefix).map(str::to_owned)).filter(|k| !valid.contains(k)).collect();
        for a in &stale {
            let id = format!("{prefix}{a}");
            self.release(&id).await;
            self.nl.delete(&netlink::host_ifname(&id)).await?;
        }
        Ok(stale)
    }
}

/// Release containers whose veth goes, as links change.
async fn follow_links(router: std::sync::Weak<Router>, mut changes: netlink::Changes) {
    loop {
        if let Err(e) = changes.next().await {
            tracing::error!(error = %e, "link notifications failed; dead containers are no longer released");
            return;
        }
        let Some(r) = router.upgrade() else { return };
        r.sweep().await;
    }
}

/// Follow Docker's container events for as long as the router runs,
/// reconnecting if the stream breaks.
async fn follow_docker(router: std::sync::Weak<Router>, d: crate::docker::Docker) {
    use tokio_stream::StreamExt;
    loop {
        // What happened while there was no stream (or no router), then
        // the events from before the reconcile on: the stream opens only
        // when first polled, and Docker replays what came in between (a
        // second earlier, to be safe; handling an event twice is harmless).
        let since = std::time::SystemTime::now() - Duration::from_secs(1);
        {
            let Some(r) = router.upgrade() else { return };
            r.reconcile_docker().await;
        }
        let events = d.lifecycle(since);
        tokio::pin!(events);
        while let Some(ev) = events.next().await {
            let Some(r) = router.upgrade() else { return };
            match ev {
                Ok((what, id)) => r.docker_event(id, DockerEvent::Life(what)),
                Err(e) => {
                    tracing::warn!(error = %e, "Docker event stream broke; reconnecting");
                    break;
                }
            }
        }
        if router.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A peer name stable per host and namespace: from the machine id and the
/// namespace's inode, as Weave derives it from the machine id.
pub fn default_peer_name() -> PeerName {
    let machine = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
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

/// The address part of an IPv4 CIDR.
pub fn addr_of(n: &Ipv4Net) -> Ipv4Addr {
    n.addr()
}

#[cfg(test)]
mod host_end_tests {
    use super::HostEndRecord;

    #[test]
    fn a_host_end_record_reads_back_and_garbage_is_refused() {
        let r = HostEndRecord { id: "cni:weave/0123abcd/eth0".into(), cidrs: vec!["10.32.0.1/12".parse().unwrap(), "10.2.2.7/24".parse().unwrap()] };
        let text = r.to_string();
        assert_eq!(text, "weave/1 10.32.0.1/12,10.2.2.7/24 cni:weave/0123abcd/eth0");
        assert_eq!(text.parse::<HostEndRecord>(), Ok(r));
        // An id with spaces (a path) is kept whole.
        assert_eq!("weave/1 10.32.0.1/12 /run/my ns".parse::<HostEndRecord>().unwrap().id, "/run/my ns");
        for bad in ["", "weave/1", "weave/1 10.32.0.1/12", "weave/1  c1", "weave/2 10.32.0.1/12 c1", "weave/1 10.32.0.300/12 c1", "someone else's alias"] {
            assert!(bad.parse::<HostEndRecord>().is_err(), "{bad:?}");
        }
    }
}
