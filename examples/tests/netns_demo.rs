//! The README's demo, run on real network namespaces: three hosts, h1-h3
//! cut by nftables, routers launched with the `weave` command, two
//! containers per host pinging each other by DNS name (h1 <-> h3 through
//! h2), status printed, and nothing left behind. Needs root; in CI its
//! absence is a failure, not a skip.

use std::process::Command;

mod common;
use common::require_root;

fn section<'a>(out: &'a str, what: &str) -> &'a str {
    let head = match what.split_once(' ') {
        Some((host, "connections")) => format!("== status connections of {host}"),
        _ => format!("== status of {what}"),
    };
    let start = out.find(&head).unwrap_or_else(|| panic!("no {head} in:\n{out}"));
    let rest = &out[start..];
    let end = rest[3..].find("\n== ").map_or(rest.len(), |e| e + 3);
    &rest[..end]
}

#[test]
fn demo_runs_containers_across_hosts_by_name_and_cleans_up() {
    if !require_root() {
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/demo.sh");
    let out = Command::new("bash").arg(script).env("WEAVE_DEMO_BIN", env!("CARGO_BIN_EXE_weave")).output().expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));

    // Containers reach each other by name across hosts, h1 <-> h3 through h2.
    for (who, dst) in [("c1", "c5"), ("c6", "c2"), ("c3", "c1"), ("c2", "c1")] {
        let at = stdout.find(&format!("== {who} pings {dst}")).unwrap_or_else(|| panic!("no ping {who} -> {dst}:\n{stdout}"));
        let rest = &stdout[at..];
        assert!(rest.contains(&format!("PING {dst}.weave.local")) && rest.contains("3 packets transmitted, 3 received"), "{who} -> {dst}:\n{rest}");
    }
    let h1 = section(&stdout, "h1");
    for want in [
        "     Encryption: enabled",
        "    Connections: 2 (1 established",
        "        Service: ipam",
        "         Status: ready",
        "        Service: dns",
        "        Entries: 6",
    ] {
        assert!(h1.contains(want), "{want:?} in {h1}");
    }
    let conns = section(&stdout, "h1 connections");
    assert!(conns.contains("established encrypted   sleeve 00:00:00:00:00:02(h2)"), "{conns}");
    let h2 = section(&stdout, "h2 connections");
    assert_eq!(h2.matches("established encrypted").count(), 2, "{h2}");

    // Everything it created is gone.
    let mut created: Vec<&str> = Vec::new();
    for prefix in ["== creating hosts ", "== creating containers "] {
        created.extend(stdout.lines().find_map(|l| l.strip_prefix(prefix)).expect("names printed").split_whitespace());
    }
    assert_eq!(created.len(), 10, "three hosts, the lan and six containers: {created:?}");
    let list = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    let list = String::from_utf8_lossy(&list.stdout);
    for ns in &created {
        assert!(!list.lines().any(|l| l.split_whitespace().next() == Some(*ns)), "{ns} left behind");
        assert!(!std::path::Path::new(&format!("/etc/netns/{ns}")).exists(), "/etc/netns/{ns} left behind");
    }
}
