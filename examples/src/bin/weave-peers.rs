//! An alternative CLI: lists peers and connections through the router's
//! gRPC control API, the way any other tool can drive the router.
//!
//! `weave-peers [--state-dir DIR]`

use weave_examples::control::{self, pb};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut dir = std::env::var("WEAVE_STATE_DIR").unwrap_or_else(|_| "/var/lib/weave".into());
    while let Some(a) = args.next() {
        match a.as_str() {
            "--state-dir" => dir = args.next().ok_or("--state-dir needs a value")?,
            other => return Err(format!("unknown argument {other}; usage: weave-peers [--state-dir DIR]").into()),
        }
    }
    let mut client = control::connect(&control::socket_path(dir.as_ref())).await?;
    let status = client.status(pb::StatusRequest { brief: false }).await?.into_inner();
    println!("PEER               NICKNAME   REACHABLE  CONNECTIONS");
    for p in &status.peers {
        let est = p.connections.iter().filter(|c| c.established).count();
        println!("{:<18} {:<10} {:<10} {est}", p.name, p.nickname, if p.reachable { "yes" } else { "no" });
    }
    println!();
    println!("ADDRESS                STATE        PATH    ENCRYPTED  PEER");
    for c in &status.connections {
        println!("{:<22} {:<12} {:<7} {:<10} {}", c.address, c.state, c.path, if c.encrypted { "yes" } else { "no" }, c.peer_nickname);
    }
    Ok(())
}
