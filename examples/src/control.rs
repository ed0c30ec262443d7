//! The control API (gRPC over the router's unix socket): the generated
//! client and server, the server's implementation on a [`Router`], and a
//! helper to connect a client to a socket path.

use std::path::Path;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::router::{AddrSpec, Router, RouterError};

pub use weave_core::control::{connect, pb, socket_path, ControlClient, ControlServer};

/// The crate version, as `weave version` prints it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The ring's entries in token order, each with how many addresses it
/// owns: from its token up to the next one (the last up to the range's
/// end).
pub fn sized_entries(s: &weave_ipam::ipam::IpamStatus) -> Vec<(weave_ipam::ring::Entry, u64)> {
    let end = u64::from(u32::from(s.range.network())) + s.range_num_ips;
    let mut sorted = s.entries.clone();
    sorted.sort_by_key(|e| e.token);
    let next: Vec<u64> = sorted.iter().skip(1).map(|e| u64::from(e.token)).chain([end]).collect();
    sorted
        .into_iter()
        .zip(next)
        .map(|(e, next)| {
            let size = next - u64::from(e.token);
            (e, size)
        })
        .collect()
}

fn to_status(e: RouterError) -> Status {
    match e {
        RouterError::Invalid(m) => Status::invalid_argument(m),
        RouterError::NotFound(m) => Status::not_found(m),
        RouterError::Mismatch(m) => Status::aborted(m),
        RouterError::Stopped => Status::unavailable("the router is stopping"),
        other => Status::internal(other.to_string()),
    }
}

/// The server side, on a running router.
#[derive(Debug, Clone)]
pub struct Service {
    router: Arc<Router>,
}

impl Service {
    /// Serve `router`.
    pub fn new(router: Arc<Router>) -> Self {
        Self { router }
    }
}

/// One part of a CNI attachment id: not empty, no `/`.
fn id_part(what: &str, v: &str) -> Result<(), Status> {
    if v.is_empty() || v.contains('/') {
        return Err(Status::invalid_argument(format!("invalid {what} {v:?}")));
    }
    Ok(())
}

/// A CNI request as the router takes it; names with `/` would blur the
/// attachment ids.
fn cni_call(r: &pb::CniRequest) -> Result<crate::router::CniCall<'_>, Status> {
    for (what, v) in [("network name", &r.network), ("CNI_CONTAINERID", &r.container_id), ("CNI_IFNAME", &r.ifname)] {
        id_part(what, v)?;
    }
    let subnet = if r.subnet.is_empty() {
        None
    } else {
        Some(r.subnet.parse::<ipnet::Ipv4Net>().map_err(|_| Status::invalid_argument(format!("invalid subnet {:?}", r.subnet)))?.trunc())
    };
    Ok(crate::router::CniCall {
        network: &r.network,
        container_id: &r.container_id,
        ifname: &r.ifname,
        netns: &r.netns,
        subnet,
        hairpin: r.hairpin,
        ipam_only: r.ipam_only,
        hostname: (!r.hostname.is_empty()).then_some(r.hostname.as_str()),
    })
}

impl Service {
    fn cni_reply(&self, a: &crate::router::CniAttachment) -> pb::CniReply {
        let dns = self.router.config().dns.as_ref();
        pb::CniReply {
            cidrs: a.cidrs.iter().map(ToString::to_string).collect(),
            gateway: a.gateway.map(|g| g.to_string()).unwrap_or_default(),
            host_ifname: a.host_ifname.clone(),
            host_mac: a.host_mac.as_ref().map(mac).unwrap_or_default(),
            mac: a.mac.as_ref().map(mac).unwrap_or_default(),
            nameserver: dns.map(|d| d.listen_for(self.router.config().name).ip().to_string()).unwrap_or_default(),
            domain: dns.map(|d| d.domain.trim_end_matches('.').to_owned()).unwrap_or_default(),
        }
    }
}

fn mac(m: &[u8; 6]) -> String {
    weave_dataplane::sleeve::fmt_mac(m)
}

pub(crate) async fn mesh_status(router: &Router) -> Result<weave_gossip::driver::Status, Status> {
    router.mesh().status().await.map_err(|_| Status::unavailable("the router is stopping"))
}

/// The mesh without the peers' connections (see
/// [`weave_gossip::driver::MeshHandle::status_brief`]).
pub(crate) async fn mesh_status_brief(router: &Router) -> Result<weave_gossip::driver::Status, Status> {
    router.mesh().status_brief().await.map_err(|_| Status::unavailable("the router is stopping"))
}

/// Everything `weave status` shows about the mesh, assembled from the mesh
/// and data plane; `brief` leaves out the peers' connections.
pub async fn status(router: &Router, brief: bool) -> Result<pb::StatusReply, Status> {
    let ms = if brief { mesh_status_brief(router).await? } else { mesh_status(router).await? };
    Ok(status_of(router, &ms))
}

pub(crate) fn status_of(router: &Router, s: &weave_gossip::driver::Status) -> pb::StatusReply {
    let paths = router.dataplane().paths();
    // Every peer lists up to every other: look names up, don't search.
    let nicknames: std::collections::HashMap<weave_core::PeerName, (String, &str)> =
        s.peers.iter().map(|p| (p.name, (p.name.to_string(), p.nickname.as_str()))).collect();
    let named = |n: weave_core::PeerName| nicknames.get(&n).map_or_else(|| (n.to_string(), String::new()), |(s, k)| (s.clone(), (*k).to_owned()));
    let connections = s
        .connections
        .iter()
        .map(|c| {
            let path = c.peer.as_ref().and_then(|(n, _)| paths.iter().find(|p| p.peer == *n));
            pb::Connection {
                address: c.address.clone(),
                outbound: c.outbound,
                state: c.state.as_str().to_owned(),
                info: c.info.clone(),
                peer_name: c.peer.as_ref().map(|(n, _)| n.to_string()).unwrap_or_default(),
                peer_nickname: c.peer.as_ref().map(|(_, k)| k.clone()).unwrap_or_default(),
                // Encrypted only if its data is too: over a trusted subnet
                // the control traffic is sealed but the data is not.
                encrypted: c.encrypted && path.is_none_or(|p| p.encrypted),
                path: match path {
                    Some(p) if p.fastpath => "fastdp".into(),
                    _ => "sleeve".into(),
                },
                path_reason: path.and_then(|p| p.fastpath_reason).map(|r| r.as_str()).unwrap_or("").to_owned(),
                // The largest IP packet the connection's path carries: the
                // overlay MTU, or less when the sleeve found a smaller path.
                mtu: match path {
                    Some(p) if !p.fastpath => router.config().mtu.min(u32::try_from(p.ip_mtu()).unwrap_or(u32::MAX)),
                    _ => router.config().mtu,
                },
            }
        })
        .collect();
    let peers = s
        .peers
        .iter()
        .map(|p| pb::Peer {
            name: p.name.to_string(),
            nickname: p.nickname.clone(),
            uid: p.uid.as_u64(),
            version: p.version,
            reachable: p.name == s.name || s.next_hops.contains_key(&p.name),
            connections: p
                .connections
                .iter()
                .map(|c| {
                    let (name, nickname) = named(c.peer);
                    pb::PeerConnection { name, nickname, address: c.address.clone(), outbound: c.outbound, established: c.established }
                })
                .collect(),
        })
        .collect();
    pb::StatusReply {
        version: VERSION.into(),
        name: s.name.to_string(),
        nickname: s.nickname.clone(),
        port: u32::from(s.listen.port()),
        encryption: s.encryption,
        peer_discovery: s.discovery,
        targets: router.targets(),
        connections,
        peers,
        trusted_subnets: router.config().trusted_subnets.iter().map(ToString::to_string).collect(),
        dataplane: router.dataplane().kind().to_owned(),
    }
}

/// The `weave report` JSON.
pub async fn report(router: &Router) -> Result<serde_json::Value, Status> {
    Ok(status_and_report(router).await?.1)
}

/// `weave status` and `weave report` from one look at the mesh.
pub async fn status_and_report(router: &Router) -> Result<(pb::StatusReply, serde_json::Value), Status> {
    let s = mesh_status(router).await?;
    let st = status_of(router, &s);
    let mut v = serde_json::json!({
        "Ready": router.is_ready(),
        "Version": VERSION,
        // No version check is ever made (nothing calls out).
        "VersionCheck": {"Enabled": false, "Success": false, "NewVersion": "", "NextCheckAt": "0001-01-01T00:00:00Z"},
        "Router": {
            "Name": st.name, "NickName": st.nickname, "Port": st.port,
            "Encryption": st.encryption, "PeerDiscovery": st.peer_discovery,
            "Dataplane": st.dataplane,
            "Peers": st.peers.iter().map(|p| serde_json::json!({
                "Name": p.name, "NickName": p.nickname, "UID": p.uid, "Version": p.version,
                "Connections": p.connections.iter().map(|c| serde_json::json!({
                    "Name": c.name, "NickName": c.nickname, "Address": c.address, "Outbound": c.outbound, "Established": c.established,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "Connections": st.connections.iter().map(|c| serde_json::json!({
                "Address": c.address, "Outbound": c.outbound, "State": c.state, "Info": c.info,
                "Attrs": { "name": c.path, "encrypted": c.encrypted, "mtu": c.mtu },
            })).collect::<Vec<_>>(),
            "Targets": st.targets,
            "TrustedSubnets": st.trusted_subnets,
            "MACs": router.dataplane().macs().iter().map(|(m, p, seen)| {
                let nick = s.peers.iter().find(|r| r.name == *p).map(|r| r.nickname.clone()).unwrap_or_default();
                let age = std::time::Instant::now().saturating_duration_since(*seen).as_secs();
                serde_json::json!({ "Mac": mac(m), "Name": p.to_string(), "NickName": nick, "LastSeen": format!("{age}s ago") })
            }).collect::<Vec<_>>(),
        },
    });
    if let Some(ipam) = router.ipam() {
        let (i, (claims, allocs)) = ipam.with(|g, _| (g.status(), g.pending_requests())).await.map_err(|e| Status::unavailable(e.to_string()))?;
        let save_error = router.ipam_save_error().await;
        let entries: Vec<serde_json::Value> = sized_entries(&i)
            .iter()
            .map(|(e, size)| {
                let known = s.peers.iter().find(|p| p.name == e.peer);
                serde_json::json!({
                    "Token": std::net::Ipv4Addr::from(e.token).to_string(), "Size": size, "Peer": e.peer.to_string(),
                    "Nickname": known.map(|p| p.nickname.clone()).unwrap_or_default(), "IsKnownPeer": known.is_some(), "Version": e.version,
                })
            })
            .collect();
        v["IPAM"] = serde_json::json!({
            "Status": save_error.map_or(i.status, |e| format!("cannot save its state: {e}")), "Range": i.range.to_string(), "DefaultSubnet": i.default_subnet.to_string(),
            "RangeNumIPs": i.range_num_ips, "ActiveIPs": i.active_ips, "Entries": entries,
            "Owned": i.owned.iter().map(|(k, v)| (k.clone(), v.iter().map(ToString::to_string).collect::<Vec<_>>())).collect::<std::collections::BTreeMap<_, _>>(),
            "PendingClaims": claims.iter().map(|c| serde_json::json!({ "Ident": c.container, "Address": c.addr.map(|a| a.to_string()), "Subnet": c.subnet.to_string() })).collect::<Vec<_>>(),
            "PendingAllocates": allocs.iter().map(|c| serde_json::json!({ "Ident": c.container, "Subnet": c.subnet.to_string() })).collect::<Vec<_>>(),
        });
    }
    if let (Some(dns), Some(settings)) = (router.dns(), router.config().dns.as_ref()) {
        let d = dns.current();
        let upstream: Vec<String> = match &settings.upstreams {
            weave_dns::server::Upstreams::Fixed(v) => v.iter().map(ToString::to_string).collect(),
            weave_dns::server::Upstreams::ResolvConf(p) => {
                std::fs::read_to_string(p).map(|t| weave_dns::server::parse_resolv_conf(&t).iter().map(ToString::to_string).collect()).unwrap_or_default()
            }
        };
        v["DNS"] = serde_json::json!({
            "Domain": d.domain(), "Upstream": upstream, "Address": settings.listen_for(router.config().name).to_string(), "TTL": settings.ttl,
            "Entries": d.store().entries().map(|(k, val)| serde_json::json!({
                "Hostname": k.hostname, "Origin": k.origin.to_string(), "ContainerID": k.container,
                "Address": k.addr.to_string(), "Version": val.version, "Tombstone": val.tombstone,
            })).collect::<Vec<_>>(),
        });
    }
    Ok((st, v))
}

#[tonic::async_trait]
impl pb::control_server::Control for Service {
    async fn ping(&self, _: Request<pb::Empty>) -> Result<Response<pb::PingReply>, Status> {
        let c = self.router.config();
        Ok(Response::new(pb::PingReply { name: c.name.to_string(), nickname: c.nickname.clone(), version: VERSION.into() }))
    }

    async fn status(&self, r: Request<pb::StatusRequest>) -> Result<Response<pb::StatusReply>, Status> {
        Ok(Response::new(status(&self.router, r.into_inner().brief).await?))
    }

    async fn report(&self, _: Request<pb::Empty>) -> Result<Response<pb::ReportReply>, Status> {
        let v = report(&self.router).await?;
        Ok(Response::new(pb::ReportReply { json: serde_json::to_string_pretty(&v).unwrap_or_default() }))
    }

    async fn connect(&self, r: Request<pb::ConnectRequest>) -> Result<Response<pb::Empty>, Status> {
        let r = r.into_inner();
        self.router.connect(r.peers, r.replace).await.map_err(to_status)?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn forget(&self, r: Request<pb::ForgetRequest>) -> Result<Response<pb::Empty>, Status> {
        self.router.forget(r.into_inner().peers).await.map_err(to_status)?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn attach(&self, r: Request<pb::AttachRequest>) -> Result<Response<pb::AttachReply>, Status> {
        let r = r.into_inner();
        let specs = r.addrs.iter().map(|a| a.parse::<AddrSpec>()).collect::<Result<Vec<_>, _>>().map_err(Status::invalid_argument)?;
        let hostname = (!r.hostname.is_empty()).then_some(r.hostname.as_str());
        let cidrs = self.router.attach_with_dns(&r.container, &specs, !r.no_multicast_route, !r.without_dns, hostname).await.map_err(to_status)?;
        if r.rewrite_hosts {
            self.router.rewrite_hosts(&r.container, &cidrs, hostname, &r.add_hosts).await.map_err(to_status)?;
        }
        Ok(Response::new(pb::AttachReply { cidrs: cidrs.iter().map(ToString::to_string).collect() }))
    }

    async fn detach(&self, r: Request<pb::DetachRequest>) -> Result<Response<pb::DetachReply>, Status> {
        let mut r = r.into_inner();
        if r.addrs.is_empty() {
            // As Weave: no address means the default subnet's, so what was
            // given with ip: or net:CIDR stays.
            r.addrs.push("net:default".into());
        }
        let mut addrs = Vec::new();
        for a in &r.addrs {
            // A subnet (net:CIDR, net:default) means the container's
            // addresses in it.
            let subnet = match a.parse::<AddrSpec>() {
                Ok(AddrSpec::Exact(n)) => {
                    addrs.push(n);
                    continue;
                }
                Ok(AddrSpec::Subnet(s)) => s,
                Ok(AddrSpec::Default) => self.router.default_subnet().ok_or_else(|| Status::failed_precondition("IPAM is disabled: no default subnet"))?,
                Err(_) => {
                    let ip = a.parse::<std::net::Ipv4Addr>().map_err(|_| Status::invalid_argument(format!("invalid address {a:?}")))?;
                    addrs.push(ipnet::Ipv4Net::new(ip, 32).expect("/32"));
                    continue;
                }
            };
            let inside: Vec<ipnet::Ipv4Net> =
                self.router.addresses_of(&r.container).await.map_err(to_status)?.into_iter().filter(|c| subnet.contains(&c.addr())).collect();
            if inside.is_empty() {
                let what = if a == "net:default" { format!("the default subnet ({subnet})") } else { subnet.to_string() };
                return Err(Status::not_found(format!("{} has no address in {what}", r.container)));
            }
            addrs.extend(inside);
        }
        let cidrs = self.router.detach(&r.container, &addrs).await.map_err(to_status)?;
        Ok(Response::new(pb::DetachReply { cidrs: cidrs.iter().map(ToString::to_string).collect() }))
    }

    async fn ps(&self, r: Request<pb::PsRequest>) -> Result<Response<pb::PsReply>, Status> {
        let mut ids = Vec::new();
        for c in r.into_inner().containers {
            ids.push(self.router.resolve(&c).await.map_err(to_status)?.id);
        }
        let entries = self
            .router
            .ps(&ids)
            .await
            .into_iter()
            .map(|c| pb::PsEntry {
                id: crate::docker::display_id(&c.id).to_owned(),
                mac: mac(&c.mac),
                cidrs: c.cidrs.iter().map(ToString::to_string).collect(),
            })
            .collect();
        let (exposed, bmac) = self.router.exposed().await.map_err(to_status)?;
        Ok(Response::new(pb::PsReply { entries, expose_mac: mac(&bmac), exposed: exposed.iter().map(ToString::to_string).collect() }))
    }

    async fn stop(&self, _: Request<pb::Empty>) -> Result<Response<pb::Empty>, Status> {
        self.router.stop();
        Ok(Response::new(pb::Empty {}))
    }

    async fn expose(&self, r: Request<pb::ExposeRequest>) -> Result<Response<pb::ExposeReply>, Status> {
        let r = r.into_inner();
        let specs = r.addrs.iter().map(|a| a.parse::<AddrSpec>()).collect::<Result<Vec<_>, _>>().map_err(Status::invalid_argument)?;
        let cidrs = self.router.expose(&specs, !r.without_masquerade).await.map_err(to_status)?;
        if !r.hostname.is_empty() {
            // Named like a container, under the expose id: hide removes it,
            // and it survives restarts as every name does.
            let addrs: Vec<std::net::Ipv4Addr> = cidrs.iter().map(|c| c.addr()).collect();
            self.router.dns_add(Router::EXPOSE_ID, &r.hostname, &addrs).await.map_err(to_status)?;
        }
        Ok(Response::new(pb::ExposeReply { cidrs: cidrs.iter().map(ToString::to_string).collect() }))
    }

    async fn hide(&self, r: Request<pb::HideRequest>) -> Result<Response<pb::ExposeReply>, Status> {
        // No address means the default subnet's, as Weave; a subnet with
        // nothing exposed in it hides nothing.
        let mut requested = r.into_inner().addrs;
        if requested.is_empty() {
            requested.push("net:default".into());
        }
        let mut addrs = Vec::new();
        for a in requested {
            // A subnet means the host's addresses exposed in it.
            let subnet = match a.parse::<AddrSpec>() {
                Ok(AddrSpec::Subnet(s)) => Some(s),
                Ok(AddrSpec::Default) => Some(
                    self.router
                        .default_subnet()
                        .ok_or_else(|| Status::failed_precondition("IPAM is disabled: no default subnet; give the addresses to hide"))?,
                ),
                _ => None,
            };
            if let Some(subnet) = subnet {
                let (exposed, _) = self.router.exposed().await.map_err(to_status)?;
                addrs.extend(exposed.iter().filter(|e| subnet.contains(&e.addr())).map(ipnet::Ipv4Net::addr));
                continue;
            }
            let ip = a.strip_prefix("ip:").unwrap_or(&a);
            addrs.push(
                ip.split('/').next().unwrap_or(ip).parse::<std::net::Ipv4Addr>().map_err(|_| Status::invalid_argument(format!("invalid address {a:?}")))?,
            );
        }
        if addrs.is_empty() {
            return Ok(Response::new(pb::ExposeReply { cidrs: Vec::new() }));
        }
        let cidrs = self.router.hide(&addrs).await.map_err(to_status)?;
        Ok(Response::new(pb::ExposeReply { cidrs: cidrs.iter().map(ToString::to_string).collect() }))
    }

    async fn dns_add(&self, r: Request<pb::DnsRequest>) -> Result<Response<pb::Empty>, Status> {
        let mut r = r.into_inner();
        let ips = parse_ips(&r.ips)?;
        if r.container.is_empty() && r.hostname.is_empty() {
            return Err(Status::invalid_argument("dns-add needs a container or -h FQDN"));
        }
        let mut base = r.container.clone();
        if !r.container.is_empty() {
            let t = self.router.resolve(&r.container).await.map_err(to_status)?;
            (r.container, base) = (t.id, t.name);
        }
        let name = self.router.dns_name(&base, Some(&r.hostname)).ok_or_else(|| Status::failed_precondition("weaveDNS is disabled (--no-dns)"))?;
        let ips = if ips.is_empty() {
            // The container's own addresses.
            self.router.ps(std::slice::from_ref(&r.container)).await.into_iter().flat_map(|c| c.cidrs).map(|c| c.addr()).collect()
        } else {
            ips
        };
        if ips.is_empty() {
            return Err(Status::invalid_argument(format!("no addresses for {}: give IPs or attach it first", r.container)));
        }
        if r.container.is_empty() {
            // A name for addresses outside any container, as Weave does.
            r.container = EXTERN.into();
        }
        self.router.dns_add(&r.container, &name, &ips).await.map_err(to_status)?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn dns_remove(&self, r: Request<pb::DnsRequest>) -> Result<Response<pb::DnsRemoveReply>, Status> {
        let mut r = r.into_inner();
        if r.container.is_empty() {
            r.container = EXTERN.into();
        } else {
            r.container = self.router.resolve(&r.container).await.map_err(to_status)?.id;
        }
        let ips = parse_ips(&r.ips)?;
        let name = (!r.hostname.is_empty()).then_some(r.hostname.as_str());
        let n = self.router.dns_remove(&r.container, name, &ips).await.map_err(to_status)?;
        Ok(Response::new(pb::DnsRemoveReply { removed: u32::try_from(n).unwrap_or(u32::MAX) }))
    }

    async fn dns_lookup(&self, r: Request<pb::DnsLookupRequest>) -> Result<Response<pb::DnsLookupReply>, Status> {
        let dns = self.router.dns().ok_or_else(|| Status::failed_precondition("weaveDNS is disabled (--no-dns)"))?;
        let addrs = dns.lookup(&r.into_inner().name);
        Ok(Response::new(pb::DnsLookupReply { addrs: addrs.iter().map(ToString::to_string).collect() }))
    }

    async fn dns_entries(&self, _: Request<pb::Empty>) -> Result<Response<pb::DnsEntriesReply>, Status> {
        dns_entries(&self.router).map(Response::new)
    }

    async fn rmpeer(&self, r: Request<pb::RmpeerRequest>) -> Result<Response<pb::RmpeerReply>, Status> {
        let ipam = self.router.ipam().ok_or_else(|| Status::failed_precondition("IPAM is disabled (--ipalloc-range=)"))?;
        let st = mesh_status_brief(&self.router).await?;
        let mut dead = Vec::new();
        for want in r.into_inner().peers {
            let by_name = want.parse::<weave_core::PeerName>().ok();
            let found = st.peers.iter().find(|p| Some(p.name) == by_name || p.nickname == want).map(|p| p.name).or_else(|| self.router.peer_named(&want));
            dead.push(found.ok_or_else(|| Status::not_found(format!("unknown peer {want}")))?);
        }
        // Judge reachability as of now, not as of the last route event.
        let reachable = st.peers.iter().map(|p| p.name).filter(|p| *p != st.name && st.next_hops.contains_key(p)).collect();
        let n = ipam
            .with(move |i, now| {
                i.set_reachable(now, reachable);
                i.rmpeer(now, &dead)
            })
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        Ok(Response::new(pb::RmpeerReply { reclaimed: n }))
    }

    async fn prime(&self, _: Request<pb::Empty>) -> Result<Response<pb::Empty>, Status> {
        let ipam = self.router.ipam().ok_or_else(|| Status::failed_precondition("IPAM is disabled (--ipalloc-range=)"))?;
        ipam.with(|i, now| i.prime(now)).await.map_err(|e| Status::unavailable(e.to_string()))?;
        loop {
            let st = ipam.with(|i, _| i.status()).await.map_err(|e| Status::unavailable(e.to_string()))?;
            if st.status == "ready" || st.status == "idle" && !st.entries.is_empty() {
                return Ok(Response::new(pb::Empty {}));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    async fn cni_add(&self, r: Request<pb::CniRequest>) -> Result<Response<pb::CniReply>, Status> {
        let r = r.into_inner();
        let a = self.router.cni_add(&cni_call(&r)?).await.map_err(to_status)?;
        Ok(Response::new(self.cni_reply(&a)))
    }

    async fn cni_del(&self, r: Request<pb::CniRequest>) -> Result<Response<pb::Empty>, Status> {
        let r = r.into_inner();
        self.router.cni_del(&cni_call(&r)?).await.map_err(to_status)?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn cni_check(&self, r: Request<pb::CniRequest>) -> Result<Response<pb::CniReply>, Status> {
        let r = r.into_inner();
        let a = self.router.cni_check(&cni_call(&r)?).await.map_err(to_status)?;
        Ok(Response::new(self.cni_reply(&a)))
    }

    async fn cni_gc(&self, r: Request<pb::CniGcRequest>) -> Result<Response<pb::CniGcReply>, Status> {
        let r = r.into_inner();
        id_part("network name", &r.network)?;
        let valid = r.valid.into_iter().collect();
        let released = self.router.cni_gc(&r.network, &valid).await.map_err(to_status)?;
        Ok(Response::new(pb::CniGcReply { released }))
    }

    async fn ipam_status(&self, _: Request<pb::Empty>) -> Result<Response<pb::IpamStatusReply>, Status> {
        ipam_status(&self.router).await.map(Response::new)
    }

    async fn reset(&self, r: Request<pb::ResetRequest>) -> Result<Response<pb::ResetReply>, Status> {
        let (removed, heir) = self.router.reset(r.into_inner().force).await.map_err(to_status)?;
        Ok(Response::new(pb::ResetReply { removed, heir: heir.map(|h| h.to_string()).unwrap_or_default() }))
    }
}

/// Live weaveDNS entries, for `weave status dns`.
pub fn dns_entries(router: &Router) -> Result<pb::DnsEntriesReply, Status> {
    let dns = router.dns().ok_or_else(|| Status::failed_precondition("weaveDNS is disabled (--no-dns)"))?;
    let d = dns.current();
    let entries = d
        .store()
        .entries()
        .filter(|(_, v)| !v.is_tombstone())
        .map(|(k, _)| pb::DnsEntry {
            hostname: k.hostname.clone(),
            addr: k.addr.to_string(),
            container: crate::docker::display_id(&k.container).to_owned(),
            origin: k.origin.to_string(),
        })
        .collect();
    let address = router.config().dns.as_ref().map(|s| s.listen_for(router.config().name).to_string()).unwrap_or_default();
    Ok(pb::DnsEntriesReply { entries, domain: d.domain().to_owned(), address })
}

/// Each peer's share of the range, for `weave status ipam`.
pub async fn ipam_status(router: &Router) -> Result<pb::IpamStatusReply, Status> {
    let ipam = router.ipam().ok_or_else(|| Status::failed_precondition("IPAM is disabled (--ipalloc-range=)"))?;
    let ms = mesh_status_brief(router).await?;
    let s = ipam.with(|i, _| i.status()).await.map_err(|e| Status::unavailable(e.to_string()))?;
    let mut per: std::collections::BTreeMap<weave_core::PeerName, u64> = Default::default();
    for (e, size) in sized_entries(&s) {
        *per.entry(e.peer).or_default() += size;
    }
    let nick = |n: weave_core::PeerName| ms.peers.iter().find(|p| p.name == n).map(|p| p.nickname.clone()).or_else(|| router.nickname(n)).unwrap_or_default();
    let peers = per
        .into_iter()
        .map(|(p, ips)| pb::IpamPeer {
            name: p.to_string(),
            nickname: nick(p),
            ips,
            reachable: p == ms.name || ms.next_hops.contains_key(&p),
            active: if p == ms.name { s.active_ips as u64 } else { 0 },
            local: p == ms.name,
        })
        .collect::<Vec<_>>();
    // As Weave: this peer first, then the rest in name order.
    let mut peers = peers;
    peers.sort_by_key(|p| !p.local);
    Ok(pb::IpamStatusReply { peers, total: s.range_num_ips })
}

/// `weave status connections`: one line per connection.
pub fn render_connections(s: &pb::StatusReply) -> String {
    let mut out = String::new();
    for c in &s.connections {
        let dir = if c.outbound { "->" } else { "<-" };
        let enc = if c.encrypted { "encrypted" } else { "unencrypted" };
        let peer = if c.peer_name.is_empty() { String::new() } else { format!("{}({})", c.peer_name, c.peer_nickname) };
        let mut line = format!("{dir} {:<21} {:<11} {enc:<11} {:<6} {peer}", c.address, c.state, c.path);
        if c.state == "established" {
            line.push_str(&format!(" mtu={}", c.mtu));
            if c.path == "sleeve" && !c.path_reason.is_empty() {
                line.push_str(&format!(" fastdp=\"{}\"", c.path_reason));
            }
        }
        if !c.info.is_empty() {
            line.push_str(&format!(" {}", c.info));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `weave status targets`: as the user gave them.
pub fn render_targets(s: &pb::StatusReply) -> String {
    s.targets.iter().map(|t| format!("{t}\n")).collect()
}

/// `weave status peers`: each peer, then its connections (Weave's widths).
pub fn render_peers(s: &pb::StatusReply) -> String {
    let mut out = String::new();
    for p in &s.peers {
        out.push_str(&format!("{}({})\n", p.name, p.nickname));
        for c in &p.connections {
            let state = if c.established { "established" } else { "pending" };
            let dir = if c.outbound { "->" } else { "<-" };
            out.push_str(&format!("   {dir} {:<21} {:<37} {state}\n", c.address, format!("{}({})", c.name, c.nickname)));
        }
    }
    out
}

/// `weave status dns`: names in the domain without it, as Weave, in its
/// columns (12, 15, and the ID right-aligned in 12; a netns name longer
/// than a Docker short ID is shown whole rather than cut).
pub fn render_dns(r: &pb::DnsEntriesReply) -> String {
    let domain = format!(".{}", r.domain.trim_matches('.'));
    r.entries
        .iter()
        .map(|e| {
            let host = e.hostname.trim_end_matches('.');
            format!("{:<12} {:<15} {:>12} {}\n", host.strip_suffix(domain.as_str()).unwrap_or(host), e.addr, e.container, e.origin)
        })
        .collect()
}

/// `weave status ipam`: each peer's share of the range, this peer first
/// with its active count, unreachable ones marked, in Weave's columns.
pub fn render_ipam(r: &pb::IpamStatusReply) -> String {
    let mut out = String::new();
    for p in &r.peers {
        let pct = (p.ips as f64) * 100.0 / (r.total.max(1) as f64);
        let info = if p.local {
            format!("({} active)", p.active)
        } else if !p.reachable {
            "- unreachable!".to_owned()
        } else {
            String::new()
        };
        let line = format!("{:<37} {:>8} IPs ({pct:04.1}% of total) {info}", format!("{}({})", p.name, p.nickname), p.ips);
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `weave status SECTION` rendered in the router (for HTTP `/status/SECTION`);
/// `None` for an unknown section.
pub async fn render_section(router: &Router, section: &str) -> Option<Result<String, Status>> {
    Some(match section {
        "connections" => status(router, true).await.map(|s| render_connections(&s)),
        "targets" => status(router, true).await.map(|s| render_targets(&s)),
        "peers" => status(router, false).await.map(|s| render_peers(&s)),
        "dns" => dns_entries(router).map(|r| render_dns(&r)),
        "ipam" => ipam_status(router).await.map(|r| render_ipam(&r)),
        _ => return None,
    })
}

/// The container id of DNS entries added with `-h` and no container.
const EXTERN: &str = "weave:extern";

fn parse_ips(ips: &[String]) -> Result<Vec<std::net::Ipv4Addr>, Status> {
    ips.iter()
        .map(|a| {
            let a = a.strip_prefix("ip:").unwrap_or(a);
            a.split('/').next().unwrap_or(a).parse().map_err(|_| Status::invalid_argument(format!("invalid address {a:?}")))
        })
        .collect()
}

/// `weave report -f TEMPLATE`: the report through a Go text/template, as
/// Weave's (`{{.Router.Name}}`, `{{len .Router.Peers}}`, `{{range}}`, and
/// Weave's `json` function).
pub fn render_template(report: &serde_json::Value, template: &str) -> Result<String, String> {
    let mut t = gtmpl::Template::default();
    t.add_func("json", template_json);
    t.parse(template).map_err(|e| format!("invalid template: {e}"))?;
    t.render(&gtmpl::Context::from(to_template_value(report))).map_err(|e| format!("template failed: {e}"))
}

fn to_template_value(v: &serde_json::Value) -> gtmpl::Value {
    use serde_json::Value as J;
    match v {
        J::Null => gtmpl::Value::Nil,
        J::Bool(b) => gtmpl::Value::from(*b),
        J::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => gtmpl::Value::from(u),
            (None, Some(i)) => gtmpl::Value::from(i),
            _ => gtmpl::Value::from(n.as_f64().unwrap_or_default()),
        },
        J::String(s) => gtmpl::Value::from(s.clone()),
        J::Array(a) => gtmpl::Value::Array(a.iter().map(to_template_value).collect()),
        J::Object(o) => gtmpl::Value::Object(o.iter().map(|(k, v)| (k.clone(), to_template_value(v))).collect()),
    }
}

fn from_template_value(v: &gtmpl::Value) -> serde_json::Value {
    use gtmpl::Value as G;
    match v {
        G::Bool(b) => serde_json::Value::Bool(*b),
        G::String(s) => serde_json::Value::String(s.clone()),
        G::Number(n) => n
            .as_u64()
            .map(serde_json::Value::from)
            .or_else(|| n.as_i64().map(serde_json::Value::from))
            .unwrap_or_else(|| n.as_f64().map_or(serde_json::Value::Null, serde_json::Value::from)),
        G::Array(a) => serde_json::Value::Array(a.iter().map(from_template_value).collect()),
        G::Object(o) | G::Map(o) => serde_json::Value::Object(o.iter().map(|(k, v)| (k.clone(), from_template_value(v))).collect()),
        _ => serde_json::Value::Null,
    }
}

/// Weave's template function `json`: its argument as JSON.
fn template_json(args: &[gtmpl::Value]) -> Result<gtmpl::Value, gtmpl::FuncError> {
    let [v] = args else { return Err(gtmpl::FuncError::ExactlyXArgs("json".into(), 1)) };
    Ok(gtmpl::Value::from(from_template_value(v).to_string()))
}

/// `weave status` (and HTTP `/status`): Weave 2.8's layout, right-aligned keys.
pub fn render_status(s: &pb::StatusReply, report: &serde_json::Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    // An empty key is a blank line between services.
    let mut kv = |k: &str, v: &str| {
        let _ = if k.is_empty() { writeln!(out) } else { writeln!(out, "{k:>15}: {v}") };
    };
    // This router never calls out for a version check: Weave prints this
    // when its check is off.
    kv("Version", &format!("{} (version check update disabled)", s.version));
    kv("", "");
    kv("Service", "router");
    let (min, max) = (weave_gossip::link::PROTOCOL_MIN, weave_gossip::link::PROTOCOL_MAX);
    kv("Protocol", &if min == max { format!("weave {max}") } else { format!("weave {min}..{max}") });
    kv("Name", &format!("{}({})", s.name, s.nickname));
    kv("Encryption", if s.encryption { "enabled" } else { "disabled" });
    kv("PeerDiscovery", if s.peer_discovery { "enabled" } else { "disabled" });
    kv("Targets", &s.targets.len().to_string());
    // As Weave's template: a count, then the non-zero counts per state in
    // its order, in parentheses when there are any.
    let counted = |n: usize, counts: Vec<(usize, &str)>, wrap: &dyn Fn(String) -> String| {
        let parts: Vec<String> = counts.into_iter().filter(|(c, _)| *c > 0).map(|(c, st)| format!("{c} {st}")).collect();
        if parts.is_empty() {
            n.to_string()
        } else {
            format!("{n} {}", wrap(parts.join(", ")))
        }
    };
    let states = ["established", "pending", "retrying", "failed", "connecting"];
    let per_state = states.iter().map(|st| (s.connections.iter().filter(|c| c.state == *st).count(), *st)).collect();
    kv("Connections", &counted(s.connections.len(), per_state, &|p| format!("({p})")));
    // Every connection every peer reports, established or pending.
    let all = s.peers.iter().flat_map(|p| &p.connections);
    let est = all.clone().filter(|c| c.established).count();
    let pending = all.count() - est;
    kv("Peers", &counted(s.peers.len(), vec![(est, "established"), (pending, "pending")], &|p| format!("(with {p} connections)")));
    kv("TrustedSubnets", &if s.trusted_subnets.is_empty() { "none".to_owned() } else { s.trusted_subnets.join(", ") });
    if let Some(ipam) = report.get("IPAM") {
        kv("", "");
        kv("Service", "ipam");
        kv("Status", ipam["Status"].as_str().unwrap_or(""));
        kv("Range", ipam["Range"].as_str().unwrap_or(""));
        kv("DefaultSubnet", ipam["DefaultSubnet"].as_str().unwrap_or(""));
    }
    if let Some(dns) = report.get("DNS") {
        kv("", "");
        kv("Service", "dns");
        kv("Domain", dns["Domain"].as_str().unwrap_or(""));
        let up: Vec<&str> = dns["Upstream"].as_array().map(|a| a.iter().filter_map(|v| v.as_str()).collect()).unwrap_or_default();
        kv("Upstream", &if up.is_empty() { "none".to_owned() } else { up.join(", ") });
        kv("TTL", &dns["TTL"].to_string());
        let live = dns["Entries"].as_array().map_or(0, |a| a.iter().filter(|e| e["Tombstone"].as_u64() == Some(0)).count());
        kv("Entries", &live.to_string());
    }
    out
}

/// Serve the control API on `socket` (mode 0600) until `shutdown` resolves.
pub async fn serve(router: Arc<Router>, socket: &Path, shutdown: impl std::future::Future<Output = ()>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(socket);
    let listener = tokio::net::UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let r = tonic::transport::Server::builder()
        .add_service(ControlServer::new(Service::new(router)))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(std::io::Error::other);
    let _ = std::fs::remove_file(socket);
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn report_templates_render_as_weaves_do() {
        let r = serde_json::json!({"Router": {"Name": "aa:bb", "Peers": [{"Name": "x"}, {"Name": "y"}]}, "DNS": {"Domain": "weave.local."}});
        assert_eq!(super::render_template(&r, "{{.Router.Name}} {{len .Router.Peers}}").unwrap(), "aa:bb 2");
        assert_eq!(super::render_template(&r, "{{range .Router.Peers}}{{.Name}};{{end}}").unwrap(), "x;y;");
        assert_eq!(super::render_template(&r, "{{json .DNS}}").unwrap(), r#"{"Domain":"weave.local."}"#);
        assert!(super::render_template(&r, "{{.Router.Name").unwrap_err().contains("invalid template"));
    }
}
