//! What containers, the host and outsiders may not do, on
//! network-namespace hosts with the `weave` command (issue: trust). Each
//! test plays the attacker. Needs root; in CI its absence is a failure.

use std::process::Command;

mod common;
use common::{eventually, ok, require_root, Hosts};

/// Run `script` with bash inside namespace `ns`; whether it succeeded.
fn bash_in(ns: &str, script: &str) -> bool {
    Command::new("ip").args(["netns", "exec", ns, "timeout", "3", "bash", "-c", script]).output().unwrap().status.success()
}

fn guard_table(h: &Hosts) -> String {
    let o = Command::new("ip").args(["netns", "exec", &h.name("h1"), "nft", "list", "table", "inet", "weave-guard"]).output().unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Packets the guard's rules for the router's ports dropped so far.
fn dropped_at_router_ports(h: &Hosts) -> u64 {
    guard_table(h)
        .lines()
        .filter(|l| l.contains("dport") && l.contains("drop"))
        .filter_map(|l| l.split("packets ").nth(1)?.split(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The host's address on the bridge that containers reach (weaveDNS's).
fn dns_address(h: &Hosts) -> String {
    let out = ok(Command::new("ip").args(["-n", &h.name("h1"), "-4", "-o", "addr", "show", "dev", "weave"]).output().unwrap());
    out.split_whitespace().skip_while(|w| *w != "inet").nth(1).expect("an address on the bridge").split('/').next().unwrap().to_owned()
}

#[test]
fn containers_never_reach_router_ports_and_the_host_reaches_only_what_it_exposes() {
    if !require_root() {
        return;
    }
    let mut h = Hosts::new();
    let c1 = h.ns("c1");
    ok(h.weave(1, &["launch", "--name", "::1", "--ipalloc-init", "consensus=1", "--no-docker"]));
    let a1 = ok(h.weave(1, &["attach", &c1])).trim().split('/').next().unwrap().to_owned();
    let dns = dns_address(&h);
    // The container reaches the host (weaveDNS answers on that address)...
    assert!(bash_in(&c1, &format!("ping -c 1 -W 1 {dns}")), "the container reaches the host's DNS address");
    // ...but not the router: no TCP to the control port or the HTTP port,
    // no datagram to the sleeve or the fast path.
    let before = dropped_at_router_ports(&h);
    for port in [6783, 6784] {
        assert!(!bash_in(&c1, &format!("echo hello > /dev/tcp/{dns}/{port}")), "a container opened TCP {port} on its host");
    }
    for port in [6783, 6784] {
        bash_in(&c1, &format!("echo hello > /dev/udp/{dns}/{port}"));
    }
    eventually(3, "the guard dropped the container's packets", || dropped_at_router_ports(&h) >= before + 4);

    // The host: no access before expose, access after, none after hide.
    let h1 = h.name("h1");
    let host_pings = || bash_in(&h1, &format!("ping -c 1 -W 1 {a1}"));
    assert!(!host_pings(), "the host reaches a container before expose");
    let exposed = ok(h.weave(1, &["expose"])).trim().split('/').next().unwrap().to_owned();
    assert!(host_pings(), "the host reaches the container after expose");
    // The exposed address is the router's host too: still no router ports.
    assert!(!bash_in(&c1, &format!("echo hello > /dev/tcp/{exposed}/6783")), "a container opened TCP 6783 through the exposed address");
    ok(h.weave(1, &["hide"]));
    assert!(!host_pings(), "the host reaches a container after hide");

    // Deleted by someone: the guard is back (the router follows the
    // ruleset), and still holds.
    ok(Command::new("ip").args(["netns", "exec", &h1, "nft", "delete", "table", "inet", "weave-guard"]).output().unwrap());
    eventually(5, "the guard comes back", || guard_table(&h).contains("dport"));
    assert!(!bash_in(&c1, &format!("echo hello > /dev/tcp/{dns}/6783")), "a container opened TCP 6783 after the guard was deleted");

    ok(h.weave(1, &["reset"]));
    assert!(guard_table(&h).is_empty(), "reset removes the guard");
}
