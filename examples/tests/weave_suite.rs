//! Weave Net 2.8.1's own integration tests (`test/*_test.sh` in
//! weaveworks/weave), ported to network-namespace hosts: each keeps the
//! original's steps and assertions, in its order, with the original's
//! number in its name. Where a step cannot be taken here, the test says
//! which and why; where Weave's behaviour is a bug, the test asserts the
//! right one and says so. One test binary: connect/forget and targets
//! (150, 175) here, the rest by area in the modules below.
//!
//! Ported: every test of issue 15's list. Not ported, and why: 090 and 310
//! (Docker restarting the router's container: the router is a process
//! here; `docker restart` of an attached container is in
//! `examples/tests/docker.rs`), 101 (its Docker-network variant of 100),
//! 111 (encrypted fast path: Weave's uses IPsec ESP, which this kernel
//! lacks; here an encrypted mesh keeps the sleeve), 140 (`weave --local`,
//! not supported), 205, 225, 270 and 290 (DNS disabled, subdomains, the
//! proxy's name as hostname, upstream fallback: not in the list; the
//! behaviours are covered by `weave-dns` tests, `docker_host.rs` and 250's
//! stub upstream), the 6xx proxy tests (the Docker user's walkthrough in
//! `docker_host.rs` covers the proxy end to end) and the 8xx plugin, CNI
//! and Kubernetes tests (`docker.rs`, `cni.rs`; there is no weave-kube).
//!
//! Translation: `weave_on $HOSTn CMD` is `weave CMD` in host n's namespace
//! (`Hosts::weave`); `start_container $HOSTn IP/24 --name=cN` is a
//! namespace `cN` attached with that address; `$HOSTn` is host n's
//! underlay address, 10.99.0.n.

use std::process::Command;
use std::time::Duration;

mod common;
use common::{ok, require_root, Hosts};

/// 390, 500, 510, 700: peer names, the address grammar, status and report.
#[path = "weave_suite/cli.rs"]
mod cli;
/// 100-130, 190-195: cross-host traffic, fragmentation, encryption,
/// discovery, expose, sleeve-only, bridge re-creation, multicast routes.
#[path = "weave_suite/dataplane.rs"]
mod dataplane;
/// 200-295: weaveDNS.
#[path = "weave_suite/dns.rs"]
mod dns;
/// 300-380: IPAM.
#[path = "weave_suite/ipam.rs"]
mod ipam;

/// `weave report -f` over the targets, one per line, sorted (the
/// originals' `direct_peers`/`assert_targets`, with Weave's own template).
fn targets(h: &Hosts, i: usize) -> Vec<String> {
    let mut t: Vec<String> =
        ok(h.weave(i, &["report", "-f", "{{range .Router.Targets}}{{.}}{{\"\\n\"}}{{end}}"])).lines().filter(|l| !l.is_empty()).map(str::to_owned).collect();
    t.sort();
    t
}

/// One ping attempt from namespace `from` (the originals' `$PING`, one
/// `ping -c 1` with a few seconds' wait).
fn ping_once(h: &Hosts, from: &str, to: &str) -> bool {
    Command::new("ip").args(["netns", "exec", &h.name(from), "ping", "-c", "1", "-W", "3", to]).output().unwrap().status.success()
}

/// 150_connect_forget_2: connecting and forgetting routers after launch.
/// IPAM is off (`--ipalloc-range ""`): the original gives its containers
/// explicit addresses, and two routers launched without peers would each
/// found a ring of their own.
#[test]
fn t150_connect_forget() {
    if !require_root() {
        return;
    }
    let mut h = Hosts::new();
    let (c1, c2) = (h.ns("c1"), h.ns("c2"));
    for i in 1..=2 {
        ok(h.weave(i, &["launch", "--name", &format!("::{i}"), "--ipalloc-range", "", "--no-docker"]));
    }
    ok(h.weave(1, &["attach", "10.2.1.4/24", &c1]));
    ok(h.weave(2, &["attach", "10.2.1.7/24", &c2]));

    // Bogus hosts (no route to them from the host: nothing leaves it).
    ok(h.weave(2, &["connect", "10.2.2.1", "10.2.2.2"]));
    assert_eq!(targets(&h, 2), ["10.2.2.1", "10.2.2.2"]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(!ping_once(&h, "c1", "10.2.1.7"), "not connected yet");

    // Replace them with the real hosts (host 2 among them: it refuses to
    // dial itself, as Weave's does).
    ok(h.weave(2, &["connect", "--replace", "10.99.0.1", "10.99.0.2"]));
    assert_eq!(targets(&h, 2), ["10.99.0.1", "10.99.0.2"]);
    // (The original sleeps 2 s and pings once; a loaded machine may need
    // longer to connect, so this retries for up to 15 s.)
    assert!(h.ping("c1", "10.2.1.7"), "connected");

    // Forget everyone and disconnect.
    ok(h.weave(2, &["forget", "10.99.0.1", "10.99.0.2"]));
    ok(h.weave(1, &["stop"]));
    ok(h.weave(1, &["launch", "--name", "::1", "--ipalloc-range", "", "--no-docker"]));
    assert!(targets(&h, 2).is_empty());
    std::thread::sleep(Duration::from_secs(2));
    assert!(!ping_once(&h, "c1", "10.2.1.7"), "forgotten: nobody reconnects");
    for i in 1..=2 {
        ok(h.weave(i, &["reset"]));
    }
}

/// 175_target_peer_persistence_3: the peer list as modified at run time
/// survives a restart with `--resume`, and is replaced by a plain launch.
/// The original's `check_restart` (Docker restarting the router's
/// container with its saved targets) has no counterpart: the router is a
/// process here, and `--resume` (also what the systemd unit relies on
/// across restarts) is the same path. Host 3 is an address with no host.
#[test]
fn t175_target_peer_persistence() {
    if !require_root() {
        return;
    }
    let h = Hosts::new();
    let (h1, h2, h3) = ("10.99.0.1", "10.99.0.2", "10.99.0.3");
    let launch = |extra: &[&str]| ok(h.weave(1, &[&["launch", "--name", "::1", "--ipalloc-range", "", "--no-docker"], extra].concat()));

    launch(&[h1, h2]);
    ok(h.weave(1, &["forget", h1]));
    ok(h.weave(1, &["connect", h3]));
    assert_eq!(targets(&h, 1), [h2, h3]);

    ok(h.weave(1, &["stop"]));
    launch(&["--resume"]);
    assert_eq!(targets(&h, 1), [h2, h3], "the changed list after --resume");

    ok(h.weave(1, &["stop"]));
    launch(&[h1, h2]);
    assert_eq!(targets(&h, 1), [h1, h2], "a plain launch replaces it");
    ok(h.weave(1, &["stop"]));
    launch(&["--resume"]);
    assert_eq!(targets(&h, 1), [h1, h2], "and that is what is saved now");
    ok(h.weave(1, &["reset"]));
}
