//! The README's demo, run on real network namespaces: three hosts, h1-h3
//! cut by nftables, an encrypted mesh that routes h1 -> h3 through h2, and
//! nothing left behind. Needs root; in CI its absence is a failure, not a skip.

use std::process::Command;

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

fn require_root() -> bool {
    if is_root() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "netns tests need root and must run in CI: run .ci/run as root");
    eprintln!("skipped: needs root for network namespaces");
    false
}

fn section<'a>(out: &'a str, host: &str) -> &'a str {
    let start = out.find(&format!("== status of {host}")).unwrap_or_else(|| panic!("no status of {host} in:\n{out}"));
    let rest = &out[start..];
    let end = rest[3..].find("\n== ").map_or(rest.len(), |e| e + 3);
    &rest[..end]
}

#[test]
fn demo_routes_h1_to_h3_through_h2_and_cleans_up() {
    if !require_root() {
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/demo.sh");
    let out = Command::new("bash")
        .arg(script)
        .env("WEAVE_DEMO_BIN", env!("CARGO_BIN_EXE_mesh-node"))
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));

    let h1 = section(&stdout, "h1");
    assert!(h1.contains("Encryption: enabled"), "{h1}");
    assert!(h1.contains("Peers: 3 (reachable 2)"), "{h1}");
    assert!(h1.contains("00:00:00:00:00:03(h3) via 00:00:00:00:00:02(h2)"), "{h1}");
    assert!(h1.contains("10.40.0.3:6783        retrying"), "the cut link is retried, with its reason: {h1}");
    let h3 = section(&stdout, "h3");
    assert!(h3.contains("00:00:00:00:00:01(h1) via 00:00:00:00:00:02(h2)"), "{h3}");
    let h2 = section(&stdout, "h2");
    assert!(h2.contains("00:00:00:00:00:01(h1) direct") && h2.contains("00:00:00:00:00:03(h3) direct"), "{h2}");

    // The hosts it created are gone.
    let created: Vec<&str> = stdout
        .lines()
        .find_map(|l| l.strip_prefix("== creating hosts "))
        .expect("host names printed")
        .split_whitespace()
        .filter(|w| w.starts_with("wvdemo"))
        .collect();
    assert_eq!(created.len(), 4, "three hosts and the lan: {created:?}");
    let containers: Vec<&str> = stdout
        .lines()
        .find_map(|l| l.strip_prefix("== creating containers "))
        .expect("container names printed")
        .split_whitespace()
        .collect();
    assert_eq!(containers.len(), 3, "{containers:?}");
    // Containers talk across hosts, c1 <-> c3 through h2.
    for (who, dst) in [("c1", "10.32.0.3"), ("c3", "10.32.0.1"), ("c1", "10.32.0.2")] {
        let at = stdout.find(&format!("== {who} pings {dst}")).unwrap_or_else(|| panic!("no ping {who} -> {dst}:\n{stdout}"));
        assert!(stdout[at..].contains("3 packets transmitted, 3 received"), "{who} -> {dst}:\n{}", &stdout[at..]);
    }
    assert!(h1.contains("Data plane (sleeve):") && h1.contains("established encrypted"), "{h1}");
    let created: Vec<&str> = created.into_iter().chain(containers).collect();
    let list = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    let list = String::from_utf8_lossy(&list.stdout);
    for ns in created {
        assert!(!list.lines().any(|l| l.split_whitespace().next() == Some(ns)), "{ns} left behind");
    }
}
