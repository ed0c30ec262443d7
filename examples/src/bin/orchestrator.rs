//! A custom orchestrator wiring the crates directly, without the router:
//! a mesh, the sleeve data plane following it, IPAM and weaveDNS over the
//! tokio driver, and one container attached with an address from IPAM and
//! a name in weaveDNS, which it resolves through a DNS server on the host's
//! address on the bridge. Runs until SIGTERM or Ctrl-C.
//!
//! `orchestrator NAME LISTEN NETNS [PEER...]`, e.g.
//! `orchestrator ::1 10.99.0.1:6783 c1` then
//! `orchestrator ::2 10.99.0.2:6783 c2 10.99.0.1`, and `c1` pings
//! `c2.weave.local`. The first one (no peers) founds the address ring; the
//! others wait to hear it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use ipnet::IpNet;
use weave_dataplane::netlink::{attach, AttachConfig, Netlink, Netns};
use weave_dataplane::sleeve_driver::{DataplaneConfig, SleeveDataplane};
use weave_dataplane::{follow_mesh, SleeveConfig};
use weave_dns::channel::DnsChannel;
use weave_dns::service::DnsService;
use weave_gossip::driver::{DriverConfig, MeshBuilder};
use weave_gossip::mesh::MeshConfig;
use weave_ipam::channel::IpamChannel;
use weave_ipam::service::IpamService;
use weave_ipam::{InitMode, Ipam, IpamConfig};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [name, listen, netns, peers @ ..] = args.as_slice() else {
        return Err("usage: orchestrator NAME LISTEN NETNS [PEER...]".into());
    };
    let (name, listen): (weave_core::PeerName, SocketAddr) = (name.parse()?, listen.parse()?);

    // The data plane: bridge, TAP and UDP socket in this namespace.
    let nl = Netlink::connect(&Netns::current()).await?;
    let cfg = DataplaneConfig::new(Netns::current(), "weave", listen, SleeveConfig::new(name, listen.port()));
    let dp = Arc::new(SleeveDataplane::start(&nl, &cfg).await?);

    // IPAM (in memory here) and weaveDNS ride the mesh as channels,
    // inside the node; the services are handles on them.
    let init = if peers.is_empty() { InitMode::Consensus { quorum: 1 } } else { InitMode::Observer };
    // One key signs our topology record, our names and our address space
    // (kept in memory here; a router keeps it in its state directory).
    let identity = weave_dns::Identity::generate(&mut weave_core::rng::from_os());
    let ipam = IpamChannel::new(Ipam::new(IpamConfig::new(identity.clone(), name, "10.32.0.0/12".parse()?, init))?);
    let dns = DnsChannel::new(weave_dns::Dns::new(identity.clone(), name, "weave.local.", weave_dns::WallClock::system(), Instant::now()), Instant::now());
    let names = dns.names();
    let uid = weave_core::PeerUid::random(&mut weave_core::rng::from_os());
    let mut mesh_cfg = MeshConfig::new(name, "orchestrator", uid);
    mesh_cfg.identity = Some(identity);
    // As the router: channel anti-entropy every few seconds (IPAM and DNS
    // state is small), so what a channel refused while the topology was
    // still forming (a name from a peer whose key it did not know yet)
    // comes back within seconds rather than half a minute.
    mesh_cfg.channel_gossip_interval = std::time::Duration::from_secs(5);
    let mesh = MeshBuilder::new(DriverConfig::new(mesh_cfg, listen))
        .channel(weave_ipam::channel::CHANNEL, Box::new(ipam))
        .channel(weave_dns::channel::CHANNEL, Box::new(dns))
        .start()
        .await?;
    tokio::spawn(follow_mesh(mesh.clone(), dp.clone()));
    let (ipam, dns) = (IpamService::new(mesh.clone()), DnsService::new(mesh.clone(), names));
    mesh.connect(peers.to_vec(), false).await?.map_err(|e| e.to_string())?;

    // The host on the bridge, serving weaveDNS there.
    let host = ipam.allocate("weave:expose", None).await?;
    weave_dataplane::expose::expose(&nl, "weave", IpNet::V4(host), false).await?;
    let sc = weave_dns::server::ServerConfig::new(SocketAddr::new(IpAddr::V4(host.addr()), 53), weave_dns::server::Upstreams::Fixed(Vec::new()));
    let _server = weave_dns::server::serve(sc, dns.names().clone()).await?;

    // One container: an address from IPAM, a name, a resolver.
    let cidr = ipam.allocate(netns, None).await?;
    let mut ac = AttachConfig::new("weave", "ethwe", weave_dataplane::DEFAULT_MTU);
    ac.multicast_route = true;
    attach(&nl, &Netns::named(netns), netns, &[IpNet::V4(cidr)], &ac).await?;
    dns.add(netns, netns, &[cidr.addr()]).await?;
    weave_dns::resolv::write_netns_resolv_conf(std::path::Path::new("/etc/netns"), netns, IpAddr::V4(host.addr()), "weave.local.")?;
    println!("{netns} {cidr}");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! { _ = term.recv() => {}, _ = tokio::signal::ctrl_c() => {} }
    mesh.shutdown().await;
    Ok(())
}
