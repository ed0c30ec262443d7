//! One mesh peer, for trying the mesh across hosts (or network namespaces)
//! before the full router exists: it joins the mesh, runs for a while, then
//! prints what it sees — peers, connections with their state and reason, and
//! the next hop to every reachable peer.
//!
//! `mesh-node --listen 10.40.0.1:6783 --name ::1 --status-after 5 10.40.0.2`
//!
//! With `--dataplane sleeve` (or `fastdp`) it also carries frames: it
//! creates the `weave` bridge in its namespace, starts the data plane, and
//! attaches the containers named by `--attach NETNS=CIDR[,CIDR]`.

use std::collections::BTreeMap;
use std::error::Error;
use std::net::SocketAddr;
use std::time::Duration;

use std::sync::Arc;

use clap::Parser;
use weave_core::{PeerName, PeerUid};
use weave_dataplane::netlink::{AttachConfig, Netlink, Netns};
use weave_dataplane::sleeve_driver::{DataplaneConfig, SleeveDataplane};
use weave_dataplane::{follow_mesh, Dataplane, SleeveConfig};
use weave_gossip::driver::{DriverConfig, MeshBuilder, Status};
use weave_gossip::mesh::MeshConfig;
use weave_gossip::Psk;

#[derive(Parser, Debug)]
#[command(version, about = "Run one weave mesh peer, then print its view of the mesh")]
struct Args {
    /// Peer name (MAC form or short form like ::1); random if omitted.
    #[arg(long)]
    name: Option<PeerName>,
    /// Nickname shown next to the name.
    #[arg(long, default_value = "mesh-node")]
    nickname: String,
    /// Address to accept mesh connections on.
    #[arg(long, default_value = "0.0.0.0:6783")]
    listen: SocketAddr,
    /// Password: encrypts the mesh (also WEAVE_PASSWORD).
    #[arg(long, env = "WEAVE_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Do not dial peers learnt through gossip.
    #[arg(long)]
    no_discovery: bool,
    /// Print the status after this many seconds and exit.
    #[arg(long, default_value_t = 5.0)]
    status_after: f64,
    /// Keep running this many seconds after printing (so peers printing at
    /// the same moment still see this one).
    #[arg(long, default_value_t = 0.0)]
    linger: f64,
    /// Data plane: none, sleeve or fastdp.
    #[arg(long, default_value = "none")]
    dataplane: String,
    /// Bridge name.
    #[arg(long, default_value = "weave")]
    bridge: String,
    /// Overlay MTU.
    #[arg(long, default_value_t = 1376)]
    mtu: u32,
    /// Attach a container: network namespace name = address/prefix[,...].
    #[arg(long)]
    attach: Vec<String>,
    /// Subnets whose peers may skip data encryption (comma-separated).
    #[arg(long, value_delimiter = ',')]
    trusted_subnets: Vec<ipnet::IpNet>,
    /// Print the status every this many seconds after the first time.
    #[arg(long)]
    status_every: Option<f64>,
    /// Peers to connect to (`host[:port]`).
    peers: Vec<String>,
}

fn label(s: &Status, n: PeerName) -> String {
    let nick = s.peers.iter().find(|p| p.name == n).map(|p| p.nickname.as_str()).unwrap_or("");
    format!("{n}({nick})")
}

fn print_status(s: &Status) {
    println!("{:>12}: {}({})", "Name", s.name, s.nickname);
    println!("{:>12}: {}", "Encryption", if s.encryption { "enabled" } else { "disabled" });
    println!("{:>12}: {}", "Discovery", if s.discovery { "enabled" } else { "disabled" });
    println!("{:>12}: {} (reachable {})", "Peers", s.peers.len(), s.reachable);
    println!("Connections:");
    for c in &s.connections {
        let dir = if c.outbound { "->" } else { "<-" };
        let peer = c.peer.as_ref().map(|(n, nick)| format!("{n}({nick})")).unwrap_or_default();
        let enc = if c.encrypted { "encrypted" } else { "unencrypted" };
        let info = if c.info.is_empty() { String::new() } else { format!(" {}", c.info) };
        println!("  {dir} {:<21} {:<11} {enc:<11} {peer}{info}", c.address, c.state.as_str());
    }
    println!("Routes:");
    let hops: BTreeMap<_, _> = s.next_hops.iter().collect();
    for (dst, hop) in hops {
        let via = if dst == hop { "direct".to_owned() } else { format!("via {}", label(s, *hop)) };
        println!("  {} {via}", label(s, *dst));
    }
}

fn print_paths(dp: &dyn Dataplane) {
    println!("Data plane ({}):", dp.kind());
    for p in dp.paths() {
        let state = if p.established { "established" } else { "connecting" };
        let path = if p.fastpath { "fastdp".to_owned() } else { format!("sleeve ({})", p.fastpath_reason.map(|r| r.as_str()).unwrap_or("")) };
        let enc = if p.encrypted { "encrypted" } else { "unencrypted" };
        let c = p.counters;
        println!("  {} {} {state} {enc} pmtu={} {path} tx={}/{}B rx={}/{}B", p.peer, p.addr, p.pmtu, c.tx_frames, c.tx_bytes, c.rx_frames, c.rx_bytes);
    }
    for (r, n) in dp.drops() {
        println!("  dropped {} {n}", r.as_str());
    }
    for (r, n) in dp.fallbacks() {
        println!("  fell back to sleeve ({r}) {n}");
    }
}

async fn start_dataplane(args: &Args, name: PeerName) -> Result<Arc<dyn Dataplane>, Box<dyn Error>> {
    let netns = Netns::current();
    let nl = Netlink::connect(&netns).await?;
    let mut sleeve = SleeveConfig::new(name, args.listen.port());
    sleeve.trusted = args.trusted_subnets.clone();
    let mut cfg = DataplaneConfig::new(netns, args.bridge.clone(), SocketAddr::new(args.listen.ip(), args.listen.port()), sleeve);
    cfg.mtu = args.mtu;
    cfg.encrypted = args.password.is_some();
    let dp: Arc<dyn Dataplane> = match args.dataplane.as_str() {
        "sleeve" => Arc::new(SleeveDataplane::start(&nl, &cfg).await?),
        "fastdp" => Arc::new(weave_dataplane::fastpath::FastDataplane::start(&nl, &cfg).await?),
        other => return Err(format!("unknown data plane {other:?} (none, sleeve, fastdp)").into()),
    };
    let mut attach = AttachConfig::new(args.bridge.clone(), "ethwe", args.mtu);
    attach.multicast_route = true;
    for spec in &args.attach {
        let (ns, cidrs) = spec.split_once('=').ok_or_else(|| format!("--attach {spec}: expected NETNS=CIDR[,CIDR]"))?;
        let addrs = cidrs.split(',').map(str::parse).collect::<Result<Vec<ipnet::IpNet>, _>>().map_err(|e| format!("--attach {spec}: {e}"))?;
        let a = weave_dataplane::netlink::attach(&nl, &Netns::named(ns), ns, &addrs, &attach).await?;
        eprintln!("attached {ns}: {} {:?}", weave_dataplane::sleeve::fmt_mac(&a.mac), a.addresses);
    }
    Ok(dp)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("WEAVE_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    let mut rng = weave_core::rng::from_os();
    let name = args.name.unwrap_or_else(|| PeerName::random(&mut rng));
    let mut cfg = DriverConfig::new(MeshConfig::new(name, args.nickname.clone(), PeerUid::random(&mut rng)), args.listen);
    cfg.conn_maker.discovery = !args.no_discovery;
    cfg.conn_maker.default_port = args.listen.port();
    let peers = std::mem::take(&mut args.peers);
    cfg.dial_timeout = Duration::from_secs(2);
    cfg.link.psk = args.password.clone().map(|p| Psk::from_password(p.as_bytes()));
    let dp = if args.dataplane == "none" { None } else { Some(start_dataplane(&args, name).await?) };
    let mesh = MeshBuilder::new(cfg).start().await?;
    if let Some(dp) = &dp {
        tokio::spawn(follow_mesh(mesh.clone(), dp.clone()));
    }
    mesh.connect(peers, false).await?.map_err(|e| e.to_string())?;
    tokio::time::sleep(Duration::from_secs_f64(args.status_after.max(0.0))).await;
    loop {
        print_status(&mesh.status().await?);
        if let Some(dp) = &dp {
            print_paths(dp.as_ref());
        }
        let Some(every) = args.status_every else { break };
        use std::io::Write;
        let _ = std::io::stdout().flush();
        tokio::time::sleep(Duration::from_secs_f64(every.max(0.1))).await;
    }
    tokio::time::sleep(Duration::from_secs_f64(args.linger.max(0.0))).await;
    mesh.shutdown().await;
    Ok(())
}
