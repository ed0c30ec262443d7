//! What a router is configured with and the types its API speaks.

#[allow(unused_imports)]
use super::*;

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
    /// Serve the Docker API proxy when Docker answers (None: `--proxy=false`).
    pub proxy: Option<crate::proxy::ProxySettings>,
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

pub(super) fn note_resolv_conf(state_dir: &std::path::Path, netns: &str) {
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
    /// It asked for a DNS name (`attach` without `--without-dns`): kept,
    /// so a router started later with DNS names it (as Weave does).
    pub dns: bool,
    /// The `-h` name it asked for, if any.
    pub hostname: Option<String>,
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
            // As Weave: a subnet is given by its network address, and has
            // room for at least one container besides its network and
            // broadcast addresses.
            let n = parse(c)?;
            if n.addr() != n.network() {
                return Err(format!("invalid subnet {s:?}: host bits are set (did you mean net:{}?)", n.trunc()));
            }
            if n.prefix_len() > 30 {
                return Err(format!("invalid subnet {s:?}: too small for containers (at most /30)"));
            }
            Ok(Self::Subnet(n))
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
