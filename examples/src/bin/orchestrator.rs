//! A custom orchestrator wiring the crates directly, without the router:
//! a mesh, the sleeve data plane following it, and one container attached
//! with an address the orchestrator chose. Runs until SIGTERM or Ctrl-C.
//!
//! `orchestrator NAME LISTEN NETNS=CIDR [PEER...]`, e.g.
//! `orchestrator ::1 10.99.0.1:6783 c1=10.32.0.1/12 10.99.0.2`

use std::sync::Arc;

use weave_dataplane::netlink::{attach, AttachConfig, Netlink, Netns};
use weave_dataplane::sleeve_driver::{DataplaneConfig, SleeveDataplane};
use weave_dataplane::{follow_mesh, SleeveConfig};
use weave_gossip::driver::{DriverConfig, MeshBuilder};
use weave_gossip::mesh::MeshConfig;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [name, listen, container, peers @ ..] = args.as_slice() else {
        return Err("usage: orchestrator NAME LISTEN NETNS=CIDR [PEER...]".into());
    };
    let (name, listen): (weave_core::PeerName, std::net::SocketAddr) = (name.parse()?, listen.parse()?);
    let (netns, cidr) = container.split_once('=').ok_or("container must be NETNS=CIDR")?;

    // The data plane: bridge, TAP and UDP socket in this namespace.
    let nl = Netlink::connect(&Netns::current()).await?;
    let cfg = DataplaneConfig { netns: Netns::current(), bridge: "weave".into(), mtu: 1376, listen, sleeve: SleeveConfig::new(name, listen.port()), encrypted: false };
    let dp = Arc::new(SleeveDataplane::start(&nl, &cfg).await?);

    // The mesh, with the data plane following its connections and routes.
    let uid = weave_core::PeerUid::random(&mut weave_core::rng::from_os());
    let mesh = MeshBuilder::new(DriverConfig::new(MeshConfig::new(name, "orchestrator", uid), listen)).start().await?;
    tokio::spawn(follow_mesh(mesh.clone(), dp.clone()));
    mesh.connect(peers.to_vec(), false).await?.map_err(|e| e.to_string())?;

    // One container, with the address we chose for it.
    let ac = AttachConfig { bridge: "weave".into(), ifname: "ethwe".into(), mtu: 1376, multicast_route: true, hairpin: false };
    let a = attach(&nl, &Netns::named(netns), netns, &[cidr.parse()?], &ac).await?;
    println!("{netns} attached: {}", weave_dataplane::sleeve::fmt_mac(&a.mac));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! { _ = term.recv() => {}, _ = tokio::signal::ctrl_c() => {} }
    mesh.shutdown().await;
    Ok(())
}
