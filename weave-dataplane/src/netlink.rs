//! Bridge and container plumbing over rtnetlink, always inside the right
//! network namespace.
//!
//! A netlink socket belongs to the namespace it was created in, so
//! [`Netlink::connect`] creates its socket on a short-lived thread that has
//! entered the namespace; requests then run on the caller's tokio runtime.
//! Sysctls and TAP devices are handled the same way ([`Netns::run`]).

use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::path::PathBuf;

use futures_util::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState};
use netlink_packet_route::route::RouteType;
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder};

use crate::packet::Mac;

pub use crate::PlumbError;

fn err(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> PlumbError {
    let op = op.into();
    move |e| {
        let source = match &e {
            rtnetlink::Error::NetlinkError(m) => m.to_io(),
            other => io::Error::other(other.to_string()),
        };
        PlumbError { op, source }
    }
}

/// How often a dump the kernel interrupted is started again.
const DUMP_RETRIES: u32 = 5;

/// A dump the kernel interrupted because what it listed changed meanwhile
/// (`NLM_F_DUMP_INTR`, reported as EBUSY): list again.
fn interrupted(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc::EBUSY)
}

/// Run a dump (`start` makes the request), collecting with `each`; again,
/// up to [`DUMP_RETRIES`] times, if the kernel interrupted it.
async fn dump<M, T, S>(op: &str, mut start: impl FnMut() -> S, mut each: impl FnMut(M, &mut Vec<T>)) -> Result<Vec<T>, PlumbError>
where
    S: futures_util::TryStream<Ok = M, Error = rtnetlink::Error> + Unpin,
{
    let mut attempt = 0;
    loop {
        let mut out = Vec::new();
        let mut s = start();
        let listed: Result<(), rtnetlink::Error> = async {
            while let Some(m) = s.try_next().await? {
                each(m, &mut out);
            }
            Ok(())
        }
        .await;
        match listed {
            Ok(()) => return Ok(out),
            Err(e) if interrupted(&e) && attempt < DUMP_RETRIES => attempt += 1,
            Err(e) => return Err(err(op)(e)),
        }
    }
}

fn ioerr(op: impl Into<String>) -> impl FnOnce(io::Error) -> PlumbError {
    let op = op.into();
    move |source| PlumbError { op, source }
}

/// A network namespace, by path (or the caller's own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    path: Option<PathBuf>,
}

impl Netns {
    /// The namespace the process runs in.
    pub fn current() -> Self {
        Self { path: None }
    }

    /// A namespace named by `ip netns` (`/run/netns/NAME`).
    pub fn named(name: &str) -> Self {
        Self { path: Some(PathBuf::from("/run/netns").join(name)) }
    }

    /// A process's namespace (`/proc/PID/ns/net`).
    pub fn of_pid(pid: u32) -> Self {
        Self { path: Some(PathBuf::from(format!("/proc/{pid}/ns/net"))) }
    }

    /// A namespace file.
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self { path: Some(path.into()) }
    }

    /// The namespace file, if not the current namespace.
    pub fn path(&self) -> Option<&std::path::Path> {
        self.path.as_deref()
    }

    /// Open the namespace file (for moving links into it).
    pub fn open(&self) -> io::Result<File> {
        File::open(self.path.as_deref().unwrap_or_else(|| std::path::Path::new("/proc/self/ns/net")))
    }

    /// Run `f` on a fresh thread inside the namespace (sockets and devices
    /// created there stay there after the thread ends).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
        let ns = match &self.path {
            Some(_) => Some(self.open()?),
            None => None,
        };
        std::thread::Builder::new()
            .name("weave-netns".into())
            .spawn(move || {
                if let Some(ns) = ns {
                    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                }
                f()
            })?
            .join()
            .map_err(|_| io::Error::other("namespace thread panicked"))?
    }

    /// Write a sysctl under `/proc/sys/` in this namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let value = value.to_owned();
        self.run(move || std::fs::write(&path, value))
    }
}

/// A netlink connection into one namespace.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
    ns: Netns,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netlink").field("ns", &self.ns).finish_non_exhaustive()
    }
}

/// A link's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkId {
    /// Interface index.
    pub index: u32,
    /// MAC address.
    pub mac: Mac,
    /// MTU.
    pub mtu: u32,
    /// Kind (`bridge`, `veth`, `vxlan`, `tun`), if any.
    pub kind: Option<String>,
    /// The bridge it is a port of.
    pub controller: Option<u32>,
    /// Its alias (`ip link set ... alias`), if any.
    pub alias: Option<String>,
}

fn link_id(m: &LinkMessage) -> LinkId {
    let mut id = LinkId { index: m.header.index, mac: [0; 6], mtu: 0, kind: None, controller: None, alias: None };
    for a in &m.attributes {
        match a {
            LinkAttribute::Address(a) if a.len() == 6 => id.mac.copy_from_slice(a),
            LinkAttribute::Mtu(v) => id.mtu = *v,
            LinkAttribute::Controller(c) => id.controller = Some(*c),
            LinkAttribute::IfAlias(a) => id.alias = Some(a.clone()),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        id.kind = Some(match k {
                            InfoKind::Bridge => "bridge".into(),
                            InfoKind::Veth => "veth".into(),
                            InfoKind::Vxlan => "vxlan".into(),
                            InfoKind::Tun => "tun".into(),
                            other => format!("{other:?}").to_lowercase(),
                        });
                    }
                }
            }
            _ => {}
        }
    }
    id
}

/// Check an interface name the kernel will accept.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty() && name.len() < 16 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl Netlink {
    /// Connect inside `ns`; the connection runs on the current tokio runtime.
    pub async fn connect(ns: &Netns) -> Result<Self, PlumbError> {
        // The socket registers with the runtime's reactor as it is made.
        let rt = tokio::runtime::Handle::current();
        let (conn, handle, _) = ns
            .run(move || {
                let _guard = rt.enter();
                rtnetlink::new_connection()
            })
            .map_err(ioerr(format!("netlink socket in {:?}", ns.path)))?;
        tokio::spawn(conn);
        Ok(Self { handle, ns: ns.clone() })
    }

    /// The namespace this connection works in.
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// The raw rtnetlink handle, for what this module does not cover.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Look a link up by name.
    pub async fn link(&self, name: &str) -> Result<Option<LinkId>, PlumbError> {
        let mut s = self.handle.link().get().match_name(name.to_owned()).execute();
        match s.try_next().await {
            Ok(m) => Ok(m.as_ref().map(link_id)),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(err(format!("look up link {name}"))(e)),
        }
    }

    async fn need(&self, name: &str) -> Result<LinkId, PlumbError> {
        self.link(name).await?.ok_or_else(|| PlumbError { op: format!("link {name}"), source: io::Error::from_raw_os_error(libc::ENODEV) })
    }

    /// Every link in the namespace, by name.
    pub async fn links(&self) -> Result<Vec<(String, LinkId)>, PlumbError> {
        dump(
            "list links",
            || self.handle.link().get().execute(),
            |m, out| {
                let name = m.attributes.iter().find_map(|a| if let LinkAttribute::IfName(n) = a { Some(n.clone()) } else { None }).unwrap_or_default();
                out.push((name, link_id(&m)));
            },
        )
        .await
    }

    /// Every port of a bridge.
    pub async fn ports(&self, bridge: u32) -> Result<Vec<(String, LinkId)>, PlumbError> {
        Ok(self.links().await?.into_iter().filter(|(_, id)| id.controller == Some(bridge)).collect())
    }

    /// Create the bridge if missing (idempotent), set its MTU, bring it up.
    pub async fn ensure_bridge(&self, name: &str, mtu: u32) -> Result<LinkId, PlumbError> {
        self.ensure_bridge_with_mac(name, mtu, None).await
    }

    /// [`Self::ensure_bridge`], giving a bridge it creates the MAC `mac` (an
    /// existing bridge keeps its own): Weave gives its bridge the peer
    /// name, so that the name can be read back from it after a restart.
    pub async fn ensure_bridge_with_mac(&self, name: &str, mtu: u32, mac: Option<[u8; 6]>) -> Result<LinkId, PlumbError> {
        match self.link(name).await? {
            Some(id) if id.kind.as_deref() != Some("bridge") => {
                return Err(PlumbError {
                    op: format!("bridge {name}"),
                    source: io::Error::other(format!("{name} exists and is a {} device, not a bridge", id.kind.unwrap_or_default())),
                })
            }
            Some(_) => {}
            None => {
                // Forwarding starts at once (no STP delay); the MAC stays
                // fixed whatever ports join.
                let mut msg = LinkBridge::new(name).mtu(mtu).forward_delay(0);
                if let Some(mac) = mac {
                    msg = msg.address(mac.to_vec());
                }
                let msg = msg.build();
                match self.handle.link().add(msg).execute().await {
                    Ok(()) => {}
                    Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {}
                    Err(e) => return Err(err(format!("create bridge {name}"))(e)),
                }
            }
        }
        let id = self.need(name).await?;
        self.handle.link().set(LinkUnspec::new_with_index(id.index).mtu(mtu).up().build()).execute().await.map_err(err(format!("bring up bridge {name}")))?;
        self.need(name).await
    }

    /// Make `port` a port of `bridge` with `mtu`, up; `isolated` ports do
    /// not forward to each other (the sleeve's TAP and the VXLAN device).
    pub async fn enslave(&self, port: u32, bridge: u32, mtu: u32, isolated: bool) -> Result<(), PlumbError> {
        self.handle.link().set(LinkUnspec::new_with_index(port).controller(bridge).mtu(mtu).up().build()).execute().await.map_err(err("add port to bridge"))?;
        self.handle.link().set_port(LinkBridgePort::new(port).isolated(isolated).build()).execute().await.map_err(err("set bridge port flags"))?;
        Ok(())
    }

    /// Delete a link by name; false if it did not exist.
    pub async fn delete(&self, name: &str) -> Result<bool, PlumbError> {
        let Some(id) = self.link(name).await? else { return Ok(false) };
        match self.handle.link().del(id.index).execute().await {
            Ok(()) => Ok(true),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(false),
            Err(e) => Err(err(format!("delete {name}"))(e)),
        }
    }

    /// Create (or reuse) a VXLAN device on `port` with `vni`, learning on,
    /// as an isolated port of `bridge`.
    pub async fn ensure_vxlan(&self, name: &str, vni: u32, port: u16, mtu: u32, bridge: u32) -> Result<LinkId, PlumbError> {
        if let Some(id) = self.link(name).await? {
            if id.kind.as_deref() != Some("vxlan") {
                self.delete(name).await?;
            }
        }
        if self.link(name).await?.is_none() {
            let msg = LinkVxlan::new(name, vni).port(port).learning(true).build();
            self.handle.link().add(msg).execute().await.map_err(err(format!("create vxlan {name}")))?;
        }
        let id = self.need(name).await?;
        self.enslave(id.index, bridge, mtu, true).await?;
        self.need(name).await
    }

    async fn fdb_request(&self, ifindex: u32, mac: Mac, dst: IpAddr, add: bool) -> Result<(), PlumbError> {
        use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST};
        use netlink_packet_route::RouteNetlinkMessage;
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = ifindex;
        m.header.state = NeighbourState::Permanent;
        m.header.flags = NeighbourFlags::Own;
        m.header.kind = RouteType::Unspec;
        m.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        m.attributes.push(NeighbourAttribute::Destination(match dst {
            IpAddr::V4(v) => NeighbourAddress::Inet(v),
            IpAddr::V6(v) => NeighbourAddress::Inet6(v),
        }));
        let (payload, flags) = if add {
            // APPEND: several all-zero entries (one per peer) may coexist.
            (RouteNetlinkMessage::NewNeighbour(m), NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND)
        } else {
            (RouteNetlinkMessage::DelNeighbour(m), NLM_F_REQUEST | NLM_F_ACK)
        };
        let mut req = NetlinkMessage::from(payload);
        req.header.flags = flags;
        let op = format!("{} fdb {} dst {dst}", if add { "add" } else { "del" }, crate::sleeve::fmt_mac(&mac));
        let mut h = self.handle.clone();
        let mut resp = h.request(req).map_err(err(op.clone()))?;
        while let Some(msg) = futures_util::StreamExt::next(&mut resp).await {
            if let NetlinkPayload::Error(e) = msg.payload {
                let code = e.raw_code();
                if (add && code == -libc::EEXIST) || (!add && code == -libc::ENOENT) {
                    return Ok(());
                }
                return Err(PlumbError { op, source: e.to_io() });
            }
        }
        Ok(())
    }

    /// Add a VXLAN forwarding entry: frames for `mac` (all-zero: floods)
    /// go to `dst`. Idempotent.
    pub async fn fdb_add(&self, vxlan: u32, mac: Mac, dst: IpAddr) -> Result<(), PlumbError> {
        self.fdb_request(vxlan, mac, dst, true).await
    }

    /// Remove a VXLAN forwarding entry. Idempotent.
    pub async fn fdb_del(&self, vxlan: u32, mac: Mac, dst: IpAddr) -> Result<(), PlumbError> {
        self.fdb_request(vxlan, mac, dst, false).await
    }

    /// Remove every VXLAN forwarding entry pointing at `dst` (learnt ones
    /// included).
    pub async fn fdb_del_dst(&self, vxlan: u32, dst: IpAddr) -> Result<usize, PlumbError> {
        let mut req = self.handle.neighbours().get();
        req = req.set_address_family(AddressFamily::Bridge);
        let mut s = req.execute();
        let mut victims = Vec::new();
        while let Some(m) = s.try_next().await.map_err(err("list fdb"))? {
            if m.header.ifindex != vxlan {
                continue;
            }
            let mut mac = None;
            let mut to = None;
            for a in &m.attributes {
                match a {
                    NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => mac = Some(<Mac>::try_from(&l[..]).expect("6")),
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => to = Some(IpAddr::V4(*v)),
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(v)) => to = Some(IpAddr::V6(*v)),
                    // In a bridge FDB message (family AF_BRIDGE) the
                    // destination comes as raw bytes.
                    NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                        to = <[u8; 4]>::try_from(&b[..]).map(IpAddr::from).ok().or_else(|| <[u8; 16]>::try_from(&b[..]).map(IpAddr::from).ok());
                    }
                    _ => {}
                }
            }
            if let (Some(mac), Some(t)) = (mac, to) {
                if t == dst {
                    victims.push(mac);
                }
            }
        }
        for mac in &victims {
            self.fdb_del(vxlan, *mac, dst).await?;
        }
        Ok(victims.len())
    }

    /// Forget the MAC addresses the bridge learnt on `port`.
    pub async fn flush_port(&self, port: u32) -> Result<(), PlumbError> {
        self.handle.link().set_port(LinkBridgePort::new(port).fdb_flush().build()).execute().await.map_err(err("flush bridge port"))
    }

    /// Addresses on a link.
    pub async fn addresses(&self, index: u32) -> Result<Vec<IpNet>, PlumbError> {
        use netlink_packet_route::address::AddressAttribute;
        dump(
            "list addresses",
            || self.handle.address().get().set_link_index_filter(index).execute(),
            |m, out| {
                for a in &m.attributes {
                    if let AddressAttribute::Address(ip) = a {
                        if let Ok(n) = IpNet::new(*ip, m.header.prefix_len) {
                            out.push(n);
                        }
                    }
                }
            },
        )
        .await
    }

    /// Add an address (idempotent).
    pub async fn add_address(&self, index: u32, addr: IpNet) -> Result<(), PlumbError> {
        match self.handle.address().add(index, addr.addr(), addr.prefix_len()).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
            Err(e) => Err(err(format!("add address {addr}"))(e)),
        }
    }

    /// Remove an address (idempotent).
    pub async fn del_address(&self, index: u32, addr: IpNet) -> Result<(), PlumbError> {
        let mut s = self.handle.address().get().set_link_index_filter(index).set_address_filter(addr.addr()).execute();
        while let Some(m) = s.try_next().await.map_err(err("list addresses"))? {
            if m.header.prefix_len == addr.prefix_len() {
                match self.handle.address().del(m).execute().await {
                    Ok(()) => {}
                    Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EADDRNOTAVAIL => {}
                    Err(e) => return Err(err(format!("delete address {addr}"))(e)),
                }
            }
        }
        Ok(())
    }

    /// Route `dst` out of `index`, on link (idempotent): as Weave's
    /// `224.0.0.0/4 dev ethwe scope link`.
    pub async fn add_route(&self, index: u32, dst: ipnet::Ipv4Net) -> Result<(), PlumbError> {
        let msg = RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .destination_prefix(dst.network(), dst.prefix_len())
            .output_interface(index)
            .scope(netlink_packet_route::route::RouteScope::Link)
            .protocol(netlink_packet_route::route::RouteProtocol::Boot)
            .build();
        match self.handle.route().add(msg).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
            Err(e) => Err(err(format!("add route {dst}"))(e)),
        }
    }

    /// A default route through `gateway` on `index` (idempotent).
    pub async fn add_default_route(&self, index: u32, gateway: std::net::Ipv4Addr) -> Result<(), PlumbError> {
        let msg = RouteMessageBuilder::<std::net::Ipv4Addr>::new().output_interface(index).gateway(gateway).build();
        match self.handle.route().add(msg).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
            Err(e) => Err(err(format!("add default route via {gateway}"))(e)),
        }
    }

    /// Turn hairpin mode of bridge port `port` on or off (a frame may go
    /// back out of the port it came in by).
    pub async fn set_hairpin(&self, port: u32, on: bool) -> Result<(), PlumbError> {
        self.handle.link().set_port(LinkBridgePort::new(port).hairpin(on).build()).execute().await.map_err(err("set hairpin mode"))
    }

    /// Set a link's alias (at most 255 bytes: the kernel's `IFALIASZ`).
    pub async fn set_alias(&self, index: u32, alias: &str) -> Result<(), PlumbError> {
        if alias.len() > 255 {
            return Err(PlumbError { op: "set alias".into(), source: io::Error::new(io::ErrorKind::InvalidInput, "alias longer than 255 bytes") });
        }
        self.handle.link().set(LinkUnspec::new_with_index(index).alias(alias).build()).execute().await.map_err(err("set alias"))
    }

    /// Bring a link up.
    pub async fn up(&self, index: u32) -> Result<(), PlumbError> {
        self.handle.link().set(LinkUnspec::new_with_index(index).up().build()).execute().await.map_err(err("bring link up"))
    }
}

/// What [`attach`] set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// The container interface's MAC.
    pub mac: Mac,
    /// The host end's name.
    pub host_ifname: String,
    /// Addresses now on the interface.
    pub addresses: Vec<IpNet>,
}

/// Settings for [`attach`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AttachConfig {
    /// The bridge (in the host namespace).
    pub bridge: String,
    /// Interface name inside the container (`ethwe`).
    pub ifname: String,
    /// Overlay MTU.
    pub mtu: u32,
    /// Route 224.0.0.0/4 through the overlay.
    pub multicast_route: bool,
    /// Hairpin mode on the bridge port (CNI's `hairpinMode`).
    pub hairpin: bool,
}

impl AttachConfig {
    /// Attach to `bridge` as `ifname` with `mtu`; no multicast route, no
    /// hairpin (set the fields to change that).
    pub fn new(bridge: impl Into<String>, ifname: impl Into<String>, mtu: u32) -> Self {
        Self { bridge: bridge.into(), ifname: ifname.into(), mtu, multicast_route: false, hairpin: false }
    }
}

/// The host end's name for a container (stable, at most 15 bytes).
pub fn host_ifname(container: &str) -> String {
    // FNV-1a: stable across runs and versions.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("vethwe{:08x}", h as u32)
}

/// Make a veth pair with the end `host_name` a port of `bridge` (in
/// `host`'s namespace) and the other end, returned, moved into `target`
/// with a temporary name and not configured. Any earlier pair of that name
/// is replaced.
pub async fn plug(host: &Netlink, bridge: u32, host_name: &str, target: &Netns, mtu: u32, hairpin: bool) -> Result<String, PlumbError> {
    let tmp = format!("{}c", &host_name[..host_name.len().min(14)]);
    host.delete(host_name).await?;
    host.delete(&tmp).await?;
    host.handle.link().add(LinkVeth::new(host_name, &tmp).mtu(mtu).build()).execute().await.map_err(err(format!("create veth {host_name}")))?;
    let wired = async {
        let h = host.need(host_name).await?;
        host.enslave(h.index, bridge, mtu, false).await?;
        if hairpin {
            host.set_hairpin(h.index, true).await?;
        }
        let nsfile = target.open().map_err(ioerr("open the target namespace"))?;
        let t = host.need(&tmp).await?;
        use std::os::fd::AsRawFd;
        host.handle
            .link()
            .set(LinkUnspec::new_with_index(t.index).setns_by_fd(nsfile.as_raw_fd()).build())
            .execute()
            .await
            .map_err(err("move veth into the target namespace"))
    };
    if let Err(e) = wired.await {
        // Half-made: the pair goes (deleting one end deletes both).
        let _ = host.delete(host_name).await;
        return Err(e);
    }
    Ok(tmp)
}

/// Attach a container (its namespace `container`, identified by `id`) to
/// the bridge: a veth pair, `ethwe` inside with the overlay MTU, `addrs`,
/// the subnet routes (from the prefixes) and optionally multicast; ARP
/// settings so a reused address is picked up at once (gratuitous ARP when
/// it comes up, short reachable time). Attaching again adds addresses.
pub async fn attach(host: &Netlink, container: &Netns, id: &str, addrs: &[IpNet], cfg: &AttachConfig) -> Result<Attached, PlumbError> {
    if !valid_ifname(&cfg.ifname) {
        return Err(PlumbError { op: "attach".into(), source: io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name {:?}", cfg.ifname)) });
    }
    let bridge = host.link(&cfg.bridge).await?.ok_or_else(|| PlumbError {
        op: format!("attach {id}"),
        source: io::Error::other(format!("bridge {} does not exist (is the router running?)", cfg.bridge)),
    })?;
    let c = Netlink::connect(container).await?;
    let host_name = host_ifname(id);
    let existing = c.link(&cfg.ifname).await?;
    let fresh = existing.is_none();
    let link = match existing {
        Some(l) => l,
        None => {
            let tmp = plug(host, bridge.index, &host_name, container, cfg.mtu, cfg.hairpin).await?;
            let t = c.need(&tmp).await?;
            c.handle
                .link()
                .set(LinkUnspec::new_with_index(t.index).name(cfg.ifname.clone()).mtu(cfg.mtu).build())
                .execute()
                .await
                .map_err(err(format!("rename to {}", cfg.ifname)))?;
            let ifn = cfg.ifname.clone();
            // Gratuitous ARP when the interface comes up (covers every
            // address added before), and neighbour entries that are
            // re-checked quickly when an address moves.
            for (k, v) in [
                (format!("net/ipv4/conf/{ifn}/arp_notify"), "1"),
                (format!("net/ipv4/neigh/{ifn}/base_reachable_time_ms"), "5000"),
                (format!("net/ipv4/neigh/{ifn}/delay_first_probe_time"), "2"),
                (format!("net/ipv4/neigh/{ifn}/ucast_solicit"), "1"),
            ] {
                container.sysctl(&k, v).map_err(ioerr(format!("sysctl {k}")))?;
            }
            c.need(&cfg.ifname).await?
        }
    };
    let before = c.addresses(link.index).await?;
    for a in addrs {
        c.add_address(link.index, *a).await?;
    }
    c.up(link.index).await?;
    if let Some(lo) = c.link("lo").await? {
        c.up(lo.index).await?;
    }
    if cfg.multicast_route {
        c.add_route(link.index, "224.0.0.0/4".parse().expect("valid")).await?;
    }
    // Announce new addresses so neighbours holding an old MAC for a
    // reused address update at once. The kernel's own announcement
    // (arp_notify) can go out before the bridge port forwards, so repeat
    // it a few times over the next second.
    let new: Vec<IpNet> = if fresh { addrs.to_vec() } else { addrs.iter().filter(|a| !before.contains(a)).copied().collect() };
    announce(container, link.index, link.mac, &new).map_err(ioerr("gratuitous ARP"))?;
    if !new.is_empty() {
        let (ns, index, mac) = (container.clone(), link.index, link.mac);
        tokio::spawn(async move {
            for ms in [100, 300, 600] {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                let (ns, new) = (ns.clone(), new.clone());
                // The interface may be gone again: nothing to announce then.
                let _ = tokio::task::spawn_blocking(move || announce(&ns, index, mac, &new)).await;
            }
        });
    }
    Ok(Attached { mac: link.mac, host_ifname: host_name, addresses: c.addresses(link.index).await? })
}

/// Remove addresses from a container's interface; with `None`, or when no
/// address is left, remove the interface (both veth ends go).
pub async fn detach(container: &Netns, ifname: &str, addrs: Option<&[IpNet]>) -> Result<bool, PlumbError> {
    let c = Netlink::connect(container).await?;
    let Some(link) = c.link(ifname).await? else { return Ok(false) };
    if let Some(addrs) = addrs {
        for a in addrs {
            c.del_address(link.index, *a).await?;
        }
        if !c.addresses(link.index).await?.iter().all(|a| matches!(a, IpNet::V6(v) if v.addr().segments()[0] == 0xfe80)) {
            return Ok(true);
        }
    }
    c.delete(ifname).await?;
    Ok(true)
}

/// Send a gratuitous ARP for each IPv4 address, from inside `ns`.
pub fn announce(ns: &Netns, ifindex: u32, mac: Mac, addrs: &[IpNet]) -> io::Result<()> {
    let v4: Vec<std::net::Ipv4Addr> = addrs.iter().filter_map(|a| if let IpNet::V4(v) = a { Some(v.addr()) } else { None }).collect();
    if v4.is_empty() {
        return Ok(());
    }
    ns.run(move || {
        let s = crate::sys::PacketSocket::open(ifindex, 0x0806)?;
        for ip in v4 {
            let mut arp = Vec::with_capacity(28);
            arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]); // Ethernet/IPv4, request
            arp.extend_from_slice(&mac);
            arp.extend_from_slice(&ip.octets());
            arp.extend_from_slice(&[0; 6]);
            arp.extend_from_slice(&ip.octets());
            s.send_to([0xff; 6], &arp)?;
        }
        Ok(())
    })
}

/// Wake-ups on kernel change notifications in a namespace: a netlink
/// socket subscribed to a multicast group, of which only the arrival is
/// used (nothing is parsed: the caller looks at the current state, which is
/// also right after the kernel dropped notifications for lack of buffer).
#[derive(Debug)]
pub struct Changes {
    fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
    buf: Vec<u8>,
}

impl Changes {
    /// Links appearing, changing or going (`RTMGRP_LINK`).
    pub fn links(ns: &Netns) -> io::Result<Self> {
        Self::subscribe(ns, nix::sys::socket::SockProtocol::NetlinkRoute, 1 << (libc::RTNLGRP_LINK - 1))
    }

    /// The nf_tables ruleset changing (`NFNLGRP_NFTABLES`).
    pub fn nftables(ns: &Netns) -> io::Result<Self> {
        /// `NFNLGRP_NFTABLES` in `linux/netfilter/nfnetlink.h`.
        const NFNLGRP_NFTABLES: u32 = 7;
        Self::subscribe(ns, nix::sys::socket::SockProtocol::NetlinkNetFilter, 1 << (NFNLGRP_NFTABLES - 1))
    }

    fn subscribe(ns: &Netns, protocol: nix::sys::socket::SockProtocol, groups: u32) -> io::Result<Self> {
        use nix::sys::socket::{bind, socket, AddressFamily, NetlinkAddr, SockFlag, SockType};
        let fd = ns.run(move || {
            let fd = socket(AddressFamily::Netlink, SockType::Raw, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, protocol)?;
            bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &NetlinkAddr::new(0, groups))?;
            Ok(fd)
        })?;
        Ok(Self { fd: crate::sys::async_fd(fd)?, buf: vec![0; 64 * 1024] })
    }

    /// Wait for the next change (or burst of changes: they are drained,
    /// and a short pause lets a burst settle before the caller looks).
    pub async fn next(&mut self) -> io::Result<()> {
        let mut ready = self.fd.readable().await?;
        let buf = &mut self.buf;
        let drained = ready.try_io(|fd| loop {
            match nix::sys::socket::recv(std::os::fd::AsRawFd::as_raw_fd(fd.get_ref()), buf, nix::sys::socket::MsgFlags::empty()) {
                // ENOBUFS: some were dropped; all we need is "it changed".
                Ok(_) | Err(nix::errno::Errno::ENOBUFS) => continue,
                Err(e) => return Err::<(), _>(io::Error::from(e)),
            }
        });
        // Drained means EAGAIN (readiness cleared); anything else is fatal.
        if let Ok(Err(e)) = drained {
            return Err(e);
        }
        drop(ready);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        Ok(())
    }
}
