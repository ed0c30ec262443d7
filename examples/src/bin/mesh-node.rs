//! One mesh peer, for trying the mesh across hosts (or network namespaces)
//! before the full router exists: it joins the mesh, runs for a while, then
//! prints what it sees — peers, connections with their state and reason, and
//! the next hop to every reachable peer.
//!
//! `mesh-node --listen 10.40.0.1:6783 --name ::1 --status-after 5 10.40.0.2`

use std::collections::BTreeMap;
use std::error::Error;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use weave_core::{PeerName, PeerUid};
use weave_gossip::driver::{DriverConfig, MeshBuilder, Status};
use weave_gossip::mesh::MeshConfig;
use weave_gossip::{LinkConfig, Psk};

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
    /// Peers to connect to (host[:port]).
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

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("WEAVE_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    let mut rng = weave_core::rng::from_os();
    let name = args.name.unwrap_or_else(|| PeerName::random(&mut rng));
    let mut cfg = DriverConfig::new(MeshConfig::new(name, args.nickname, PeerUid::random(&mut rng)), args.listen);
    cfg.conn_maker.discovery = !args.no_discovery;
    cfg.conn_maker.default_port = args.listen.port();
    cfg.initial_peers = args.peers;
    cfg.dial_timeout = Duration::from_secs(2);
    cfg.link = LinkConfig { psk: args.password.map(|p| Psk::from_password(p.as_bytes())), ..LinkConfig::default() };
    let mesh = MeshBuilder::new(cfg).start().await?;
    tokio::time::sleep(Duration::from_secs_f64(args.status_after.max(0.0))).await;
    print_status(&mesh.status().await?);
    tokio::time::sleep(Duration::from_secs_f64(args.linger.max(0.0))).await;
    mesh.shutdown().await;
    Ok(())
}
