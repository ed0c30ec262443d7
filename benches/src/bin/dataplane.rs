//! Data-plane benchmark: two simulated hosts (network namespaces on an
//! underlay veth), one container each, measured in one run over five paths:
//!
//! 1. native veth between the two containers (the ceiling);
//! 2. a hand-built kernel VXLAN overlay (bridge + vxlan + static FDB);
//! 3. the sleeve; 4. the encrypted sleeve; 5. the fast path
//!
//! — single-stream TCP throughput (iperf3) and round-trip time (ping), with
//! the ratios the targets are stated in. Needs root, iperf3 and ping, and
//! the `mesh-node` example built next to this binary:
//!
//! `cargo build --release -p weave-examples -p weave-benches && target/release/dataplane`
//!
//! Every namespace is created under a unique prefix and deleted at the end.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Cleanup {
    namespaces: Vec<String>,
    children: Vec<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.namespaces.drain(..).rev() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}

fn sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("{}: {e}", args[0]))?;
    if !out.status.success() {
        return Err(format!("{args:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Cleanup {
    fn ns(&mut self, name: String) -> Result<String, String> {
        sh(&["ip", "netns", "add", &name])?;
        self.namespaces.push(name.clone());
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"])?;
        Ok(name)
    }
}

struct Result_ {
    name: &'static str,
    gbps: f64,
    /// Pings 5 ms apart: every hop starts idle.
    rtt_ms: f64,
    /// Pings back to back: every hop is busy.
    warm_rtt_ms: f64,
}

fn avg_rtt(out: &str) -> Result<f64, String> {
    out.lines()
        .find(|l| l.contains("min/avg/max"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| v.trim().split('/').nth(1))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no rtt in {out}"))
}

fn in_ns(ns: &str, args: &[&str]) -> Vec<String> {
    let mut v = vec!["ip".to_owned(), "netns".into(), "exec".into(), ns.into()];
    v.extend(args.iter().map(|s| (*s).to_owned()));
    v
}

fn run_in(ns: &str, args: &[&str]) -> Result<String, String> {
    let v = in_ns(ns, args);
    let r: Vec<&str> = v.iter().map(String::as_str).collect();
    sh(&r)
}

fn wait_ping(ns: &str, dst: &str) -> Result<(), String> {
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        if run_in(ns, &["ping", "-c", "1", "-W", "1", dst]).is_ok() {
            return Ok(());
        }
    }
    Err(format!("{ns} cannot reach {dst}"))
}

/// Throughput (Gbit/s, receiver side) and mean RTT (ms) from `client` to
/// `server_addr` in `server`.
fn measure(name: &'static str, client: &str, server: &str, server_addr: &str, secs: u32) -> Result<Result_, String> {
    wait_ping(client, server_addr)?;
    let rtt_ms = avg_rtt(&run_in(client, &["ping", "-c", "200", "-i", "0.005", "-q", server_addr])?)?;
    let warm_rtt_ms = avg_rtt(&run_in(client, &["ping", "-c", "1000", "-i", "0", "-q", server_addr])?)?;
    let mut srv = Command::new("ip")
        .args(in_ns(server, &["iperf3", "-s", "-1"]).iter().skip(1))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_millis(300));
    let out = run_in(client, &["iperf3", "-c", server_addr, "-t", &secs.to_string(), "-J"]);
    let _ = srv.kill();
    let _ = srv.wait();
    let out = out?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| format!("iperf3 JSON: {e}"))?;
    let bps = v["end"]["sum_received"]["bits_per_second"].as_f64().ok_or("no sum_received in iperf3 output")?;
    Ok(Result_ { name, gbps: bps / 1e9, rtt_ms, warm_rtt_ms })
}

/// Two hosts joined by an underlay veth (10.99.0.1 and .2), each with a
/// container namespace.
fn hosts(c: &mut Cleanup, p: &str) -> Result<[String; 4], String> {
    let h1 = c.ns(format!("{p}h1"))?;
    let h2 = c.ns(format!("{p}h2"))?;
    let c1 = c.ns(format!("{p}c1"))?;
    let c2 = c.ns(format!("{p}c2"))?;
    sh(&["ip", "link", "add", "u1", "netns", &h1, "type", "veth", "peer", "name", "u2", "netns", &h2])?;
    sh(&["ip", "-n", &h1, "addr", "add", "10.99.0.1/24", "dev", "u1"])?;
    sh(&["ip", "-n", &h2, "addr", "add", "10.99.0.2/24", "dev", "u2"])?;
    sh(&["ip", "-n", &h1, "link", "set", "u1", "up"])?;
    sh(&["ip", "-n", &h2, "link", "set", "u2", "up"])?;
    Ok([h1, h2, c1, c2])
}

fn native(p: &str, secs: u32) -> Result<Result_, String> {
    let mut c = Cleanup { namespaces: vec![], children: vec![] };
    let a = c.ns(format!("{p}n1"))?;
    let b = c.ns(format!("{p}n2"))?;
    sh(&["ip", "link", "add", "v1", "netns", &a, "type", "veth", "peer", "name", "v2", "netns", &b])?;
    sh(&["ip", "-n", &a, "addr", "add", "10.1.0.1/24", "dev", "v1"])?;
    sh(&["ip", "-n", &b, "addr", "add", "10.1.0.2/24", "dev", "v2"])?;
    sh(&["ip", "-n", &a, "link", "set", "v1", "up"])?;
    sh(&["ip", "-n", &b, "link", "set", "v2", "up"])?;
    measure("native veth", &a, &b, "10.1.0.2", secs)
}

fn hand_vxlan(p: &str, secs: u32, mtu: &str) -> Result<Result_, String> {
    let mut c = Cleanup { namespaces: vec![], children: vec![] };
    let [h1, h2, c1, c2] = hosts(&mut c, p)?;
    for (h, cn, me, peer, addr) in [(&h1, &c1, "10.99.0.1", "10.99.0.2", "10.32.0.1/12"), (&h2, &c2, "10.99.0.2", "10.99.0.1", "10.32.0.2/12")] {
        sh(&["ip", "-n", h, "link", "add", "br0", "type", "bridge"])?;
        sh(&["ip", "-n", h, "link", "add", "vx0", "type", "vxlan", "id", "42", "dstport", "4789", "local", me, "nolearning"])?;
        sh(&["ip", "-n", h, "link", "set", "vx0", "master", "br0", "mtu", mtu, "up"])?;
        sh(&["ip", "-n", h, "link", "set", "br0", "up"])?;
        sh(&["ip", "netns", "exec", h, "bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vx0", "dst", peer])?;
        sh(&["ip", "-n", h, "link", "add", "hv", "mtu", mtu, "type", "veth", "peer", "name", "ethwe", "netns", cn])?;
        sh(&["ip", "-n", h, "link", "set", "hv", "master", "br0", "up"])?;
        sh(&["ip", "-n", cn, "addr", "add", addr, "dev", "ethwe"])?;
        sh(&["ip", "-n", cn, "link", "set", "ethwe", "mtu", mtu, "up"])?;
    }
    measure("hand-built VXLAN", &c1, &c2, "10.32.0.2", secs)
}

fn weave(p: &str, secs: u32, name: &'static str, node: &PathBuf, extra: &[&str]) -> Result<Result_, String> {
    let mut c = Cleanup { namespaces: vec![], children: vec![] };
    let [h1, h2, c1, c2] = hosts(&mut c, p)?;
    for (i, h, cn, addr) in [(1, &h1, &c1, "10.32.0.1/12"), (2, &h2, &c2, "10.32.0.2/12")] {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", h]).arg(node);
        cmd.args(["--name", &format!("::{i}"), "--listen", &format!("10.99.0.{i}:6783"), "--no-discovery", "--status-after", "3600"]);
        cmd.arg("--attach").arg(format!("{cn}={addr}"));
        cmd.args(extra);
        if i == 2 {
            cmd.arg("10.99.0.1");
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        c.children.push(cmd.spawn().map_err(|e| format!("{}: {e}", node.display()))?);
        std::thread::sleep(Duration::from_millis(300));
    }
    if extra.contains(&"fastdp") {
        // Let both ends prove the VXLAN path before measuring it.
        wait_ping(&c1, "10.32.0.2")?;
        std::thread::sleep(Duration::from_secs(2));
    }
    measure(name, &c1, &c2, "10.32.0.2", secs)
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("dataplane bench: {e}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<(), String> {
    if sh(&["id", "-u"])?.trim() != "0" {
        return Err("needs root (network namespaces)".into());
    }
    for tool in ["iperf3", "ping"] {
        if Command::new(tool).arg("-v").output().is_err() {
            return Err(format!("needs {tool} (apt-get install -y iperf3 iputils-ping)"));
        }
    }
    let node = match std::env::var_os("WEAVE_MESH_NODE") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe().map_err(|e| e.to_string())?.with_file_name("mesh-node"),
    };
    if !node.exists() {
        return Err(format!("{} not found: cargo build --release -p weave-examples (or set WEAVE_MESH_NODE)", node.display()));
    }
    let secs: u32 = std::env::var("WEAVE_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(4);
    let rounds: usize = std::env::var("WEAVE_BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3).max(1);
    let p = format!("wvb{}", std::process::id());
    println!("two hosts, one container each; single TCP stream for {secs} s and 200 pings per path, {rounds} interleaved rounds (medians); overlay MTU 1376");
    type Run<'a> = Box<dyn Fn() -> Result<Result_, String> + 'a>;
    let runs: Vec<(&str, Run<'_>)> = vec![
        ("native", Box::new(|| native(&format!("{p}a"), secs))),
        ("vxlan", Box::new(|| hand_vxlan(&format!("{p}b"), secs, "1376"))),
        ("sleeve", Box::new(|| weave(&format!("{p}c"), secs, "sleeve", &node, &["--dataplane", "sleeve"]))),
        ("encrypted", Box::new(|| weave(&format!("{p}d"), secs, "encrypted sleeve", &node, &["--dataplane", "sleeve", "--password", "bench"]))),
        ("fastdp", Box::new(|| weave(&format!("{p}e"), secs, "fast path", &node, &["--dataplane", "fastdp"]))),
    ];
    let mut all: Vec<Vec<Result_>> = runs.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        for (i, (_, run)) in runs.iter().enumerate() {
            all[i].push(run()?);
            print!(".");
            let _ = std::io::stdout().flush();
        }
    }
    println!();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let results: Vec<Result_> = all
        .into_iter()
        .map(|rs| Result_ {
            name: rs[0].name,
            gbps: median(rs.iter().map(|r| r.gbps).collect()),
            rtt_ms: median(rs.iter().map(|r| r.rtt_ms).collect()),
            warm_rtt_ms: median(rs.iter().map(|r| r.warm_rtt_ms).collect()),
        })
        .collect();
    let native = &results[0];
    let vxlan = &results[1];
    println!("RTT: pings 5 ms apart (each hop starts idle); busy RTT: pings back to back");
    println!("{:<18} {:>8} {:>9} {:>8} {:>8} {:>8} {:>9} {:>9}", "path", "Gbit/s", "÷ native", "÷ VXLAN", "RTT ms", "+RTT", "busy RTT", "+busy");
    for r in &results {
        println!(
            "{:<18} {:>8.2} {:>9.3} {:>8.3} {:>8.3} {:>8.3} {:>9.3} {:>9.3}",
            r.name,
            r.gbps,
            r.gbps / native.gbps,
            r.gbps / vxlan.gbps,
            r.rtt_ms,
            r.rtt_ms - native.rtt_ms,
            r.warm_rtt_ms,
            r.warm_rtt_ms - native.warm_rtt_ms
        );
    }
    let check = |ok: bool| if ok { "met" } else { "NOT met" };
    let (sleeve, enc, fast) = (&results[2], &results[3], &results[4]);
    println!("targets:");
    println!("  sleeve ≥ 0.15 × native: {:.3} ({})", sleeve.gbps / native.gbps, check(sleeve.gbps / native.gbps >= 0.15));
    println!("  encrypted sleeve ≥ 0.10 × native: {:.3} ({})", enc.gbps / native.gbps, check(enc.gbps / native.gbps >= 0.10));
    println!(
        "  sleeve added RTT ≤ 0.1 ms: {:.3} ms idle ({}), {:.3} ms busy",
        sleeve.rtt_ms - native.rtt_ms,
        check(sleeve.rtt_ms - native.rtt_ms <= 0.1),
        sleeve.warm_rtt_ms - native.warm_rtt_ms
    );
    println!("  fast path ≥ 0.95 × hand-built VXLAN: {:.3} ({})", fast.gbps / vxlan.gbps, check(fast.gbps / vxlan.gbps >= 0.95));
    Ok(())
}
