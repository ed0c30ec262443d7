//! Weave Net 2.8.1's IPAM integration tests (`test/3NN_*_test.sh` in
//! weaveworks/weave), ported to network-namespace hosts in the style of
//! `weave_suite.rs`: each keeps the original's steps and assertions, in
//! its order, with the original's number in its name.
//!
//! Translation: `weave_on $HOSTn CMD` is `weave CMD` in host n's namespace;
//! `start_container $HOSTn [CIDR] [--name=cN]` is a namespace attached by
//! host n's router (`weave attach [CIDR] NS`); `docker stop`/`docker rm`
//! of a container is deleting its namespace; `container_ip` reads `weave
//! ps`. The originals' `timeout N cat <( start_container ... )` waits for
//! the attach for N seconds but leaves it running when the time is up:
//! here the attach runs in the background ([`Bg`]) in the same way.
//! Routers are launched with `--no-docker`: no Docker container is
//! involved. Where an original gives a start that waits on consensus or a
//! rolling reset 10 s, the port gives it 20 s (and rmpeer's 5 s, 15 s):
//! CI runs many namespace tests at once on two cores. What each asserts
//! (it completes, without waiting for the 30 s periodic gossip) stands.

use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::common::{eventually, ok, require_root, Hosts};

/// `weave launch --no-docker ARGS` on host `i`.
fn launch(h: &Hosts, i: usize, args: &[&str]) {
    ok(h.weave(i, &[&["launch", "--no-docker"], args].concat()));
}

/// `start_container $HOSTi [CIDR...] --name=NAME`: namespace NAME attached
/// by host i's router, waiting for it as `start_container` does. Returns
/// the namespace's full name.
fn start(h: &mut Hosts, i: usize, name: &str, addrs: &[&str]) -> String {
    let ns = h.ns(name);
    let host = format!("{name}.weave.local");
    ok(h.weave(i, &[&["attach", "-h", &host], addrs, &[&ns]].concat()));
    ns
}

/// An attach (or any weave command) left running in the background, as
/// the originals' `timeout N cat <( CMD )` leaves CMD; killed (by its own
/// PID) if still running when the test ends.
struct Bg(Child);

impl Bg {
    /// Its exit status if it ends within `secs` seconds.
    fn finishes_within(&mut self, secs: u64) -> Option<ExitStatus> {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(s) = self.0.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `timeout SECS cat <( CMD )` succeeds: CMD ends, successfully, in time.
    fn succeeds_within(&mut self, secs: u64, what: &str) {
        match self.finishes_within(secs) {
            Some(s) if s.success() => {}
            Some(s) => {
                let mut err = String::new();
                if let Some(mut e) = self.0.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                panic!("{what}: failed ({s}): {err}")
            }
            None => panic!("{what}: still running after {secs} s"),
        }
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// `start_container $HOSTi [CIDR...] --name=NAME` in the background.
fn start_bg(h: &mut Hosts, i: usize, name: &str, addrs: &[&str]) -> Bg {
    let ns = h.ns(name);
    let host = format!("{name}.weave.local");
    let child = h
        .weave_command(i, &[&["attach", "-h", &host], addrs, &[&ns]].concat())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run weave attach");
    Bg(child)
}

/// `container_ip $HOSTi NAME`: the address `weave ps` shows for it.
fn container_ip(h: &Hosts, i: usize, ns: &str) -> String {
    let out = ok(h.weave(i, &["ps", ns]));
    let cidr = out.split_whitespace().nth(2).unwrap_or_else(|| panic!("no address for {ns} in weave ps: {out:?}"));
    cidr.split('/').next().unwrap().to_owned()
}

/// The originals' `$PING` (`ping -nq -W 2 -c 1`), once, from namespace
/// `from` (short name).
fn ping_once(h: &Hosts, from: &str, to: &str) -> bool {
    Command::new("ip").args(["netns", "exec", &h.name(from), "ping", "-nq", "-W", "2", "-c", "1", to]).output().unwrap().status.success()
}

/// Delete a container's namespace (`docker stop` / `docker rm -f`).
fn remove(ns: &str) {
    ok(Command::new("ip").args(["netns", "del", ns]).output().unwrap());
}

/// Whether host `i` has an established connection with `addr`.
fn established(h: &Hosts, i: usize, addr: &str) -> bool {
    let out = h.weave(i, &["status", "connections"]);
    String::from_utf8_lossy(&out.stdout).lines().any(|l| l.contains(addr) && l.contains("established"))
}

/// `weave_on $HOSTi status ipam`.
fn status_ipam(h: &Hosts, i: usize) -> String {
    ok(h.weave(i, &["status", "ipam"]))
}

/// 300_ip_reuse: re-using IP addresses (ARP cache updating). A new
/// container given a stopped one's address must be reachable at once by a
/// peer whose ARP cache still has the old MAC (Weave sends a gratuitous
/// ARP on attach). `$PING` is one attempt, as in the original. The
/// address is reused at once after `docker stop` (here: the namespace
/// deleted, whose veth the kernel removes a little later): Weave hands an
/// address held by a dead container to its new claimant
/// (`ipam/claim.go`), so the router must not refuse it as still in use.
#[test]
fn t300_ip_reuse() {
    if !require_root() {
        return;
    }
    let mut h = Hosts::new();
    let (c2ip, c3ip) = ("10.2.1.44", "10.2.1.45");
    launch(&h, 1, &[]);
    let check = |h: &Hosts, what: &str| assert!(ping_once(h, "c1", c2ip), "{what}: c1 pings {c2ip}");

    start(&mut h, 1, "c1", &["10.2.1.43/24"]);
    let c2 = start(&mut h, 1, "c2", &[&format!("{c2ip}/24")]);
    check(&h, "c2");

    remove(&c2);
    let c3 = start(&mut h, 1, "c3", &[&format!("{c2ip}/24")]);
    check(&h, "c3 with c2's address");

    remove(&c3);
    let c4 = start(&mut h, 1, "c4", &[&format!("{c3ip}/24")]);
    ok(h.weave(1, &["attach", &format!("{c2ip}/24"), &c4]));
    check(&h, "c4 given c2's address as its second");
}

/// 320_claim_2: claiming addresses. A container's address survives the
/// loss of both routers' IPAM data (Weave's `weavedb` volume: here
/// `ipam.db` in the state directory) and is claimed back from the peer
/// that now owns its space; a claim in the range blocks until the ring is
/// established, and one outside it does not. The original's
/// `proxy_start_container ... -e WEAVE_CIDR=C` is the proxy's attach of
/// that address: `weave attach C` (the claim is the router's).
#[test]
fn t320_claim() {
    if !require_root() {
        return;
    }
    let mut h = Hosts::new();
    let universe = "10.2.0.0/16";
    let (c1ip, c4ip) = ("10.2.128.1", "10.2.128.4");
    let delete_persistence = |h: &Hosts, i: usize| {
        let db = h.state(i).join("ipam.db");
        std::fs::remove_file(&db).unwrap_or_else(|e| panic!("{}: {e}", db.display()));
    };

    launch(&h, 1, &["--ipalloc-range", universe, "10.99.0.2"]);
    launch(&h, 2, &["--ipalloc-range", universe, "10.99.0.1"]);

    start(&mut h, 1, "c1", &[&format!("{c1ip}/12")]);
    start(&mut h, 2, "c2", &[]);
    assert!(h.ping("c2", c1ip), "c2 pings c1");

    ok(h.weave(1, &["stop"]));
    ok(h.weave(2, &["stop"]));

    // Delete persistence data so they form a blank ring.
    delete_persistence(&h, 1);
    delete_persistence(&h, 2);

    // Start hosts in reverse order so c1's address has to be claimed from host2.
    launch(&h, 2, &["--ipalloc-range", universe]);
    launch(&h, 1, &["--ipalloc-range", universe, "10.99.0.2"]);

    // Another container on host2: if it has not relinquished c1's address
    // it would give that out as the first available.
    let c3 = start(&mut h, 2, "c3", &[]);
    let c3ip = container_ip(&h, 2, &c3);
    assert_ne!(c3ip, c1ip, "c3 must not get c1's address");

    // (The original sleeps 1 s here; the ping retries instead.)
    assert!(h.ping("c1", &c3ip), "c1 pings c3");

    ok(h.weave(1, &["stop"]));
    ok(h.weave(2, &["stop"]));

    // Host1 claims from host2 while host2 is stopped: it must not hang.
    delete_persistence(&h, 1);
    launch(&h, 1, &["--ipalloc-range", universe, "10.99.0.2"]);

    // The start blocks: host1 cannot establish the ring with host2 down.
    let mut c4 = start_bg(&mut h, 1, "c4", &[&format!("{c4ip}/12")]);
    assert!(c4.finishes_within(5).is_none(), "attach of {c4ip} (in the range) must block while the ring cannot be established");

    // However, allocation for an external subnet does not block.
    let mut ext = start_bg(&mut h, 1, "cx", &["10.3.0.1/12"]);
    ext.succeeds_within(10, "attach of 10.3.0.1/12 (outside the range)");

    // Host2 back: host1 establishes the ring and c4 is attached.
    launch(&h, 2, &["--ipalloc-range", universe, "10.99.0.1"]);
    c4.succeeds_within(45, "c4 attached once host2 is back");
    assert_eq!(container_ip(&h, 1, &h.name("c4")), c4ip);
}

/// 330_reset_2: a rolling restart with reset. Each router, reset, gives
/// its space to the other; allocation still works afterwards.
#[test]
fn t330_reset() {
    if !require_root() {
        return;
    }
    let mut h = Hosts::new();
    launch(&h, 1, &[]);
    launch(&h, 2, &["10.99.0.1"]);

    start(&mut h, 1, "c1", &[]);
    start(&mut h, 2, "c2", &[]);

    // Reset the routers so they give their space away, and restart.
    ok(h.weave(1, &["reset"]));
    launch(&h, 1, &["10.99.0.2"]);
    ok(h.weave(2, &["reset"]));
    launch(&h, 2, &["10.99.0.1"]);

    // And start a container.
    start_bg(&mut h, 1, "c3", &[]).succeeds_within(20, "a container on host1 after the rolling reset");
    // Not in the original: nothing host 2 sent was refused. Host 1 keeps
    // its name and key across the reset, so the grant it signed before
    // still verifies (with a new key, every entry carrying it was refused
    // and the ring host 2 handed over was dropped).
    let log = std::fs::read_to_string(h.state(1).join("weave.log")).expect("host 1's log");
    assert!(!log.contains("dropped channel data"), "host 1 refused IPAM data:\n{log}");
}

/// 335_rmpeer_3: rmpeer reclaims the addresses of a lost peer, and the
/// third peer learns of it promptly. As in the original, the first router
/// is killed with SIGKILL (its process, by PID, from the state
/// directory's `weave.pid`).
#[test]
fn t335_rmpeer() {
    if !require_root() {
        return;
    }
    let mut h = Hosts::with(3);
    // Three peers, with all the space belonging to the first.
    launch(&h, 1, &[]);
    let peer1 = ok(h.weave(1, &["report", "-f", "{{.Router.Name}}"])).trim().to_owned();
    start(&mut h, 1, "a1", &[]);
    launch(&h, 2, &["10.99.0.1"]);
    ok(h.weave(2, &["prime"]));
    launch(&h, 3, &["10.99.0.1"]);
    ok(h.weave(3, &["prime"]));
    // Not in the original: hosts 2 and 3 are joined only through
    // discovery, which the original's kill (docker inspect, then ssh)
    // gives time to connect them. Here prime returns within milliseconds,
    // and with host1 killed first they never meet, so that the third would
    // never hear of the rmpeer.
    eventually(10, "host2 and host3 connected (discovery)", || established(&h, 2, "10.99.0.3") || established(&h, 3, "10.99.0.2"));

    // Nuke the first peer.
    let pid = std::fs::read_to_string(h.state(1).join("weave.pid")).expect("router 1's pid").trim().to_owned();
    ok(Command::new("kill").args(["-9", &pid]).output().unwrap());
    eventually(10, "router 1 gone", || crate::common::process_gone(&pid));

    // Transfer its space to the second. (The original allows 5 s for each
    // start; 15 s here leaves a loaded CI machine room and is still well
    // inside the 30 s periodic gossip, so "promptly" keeps its meaning.)
    // rmpeer refuses a peer it can still reach: until hosts 2 and 3 have
    // seen the killed router's connections close, it is retried (the
    // original's docker inspect and ssh take that long).
    eventually(15, "rmpeer of the killed router succeeds", || h.weave(2, &["rmpeer", &peer1]).status.success());
    start_bg(&mut h, 2, "a2", &[]).succeeds_within(15, "a container on host2 after rmpeer");

    // Communicated promptly to the third.
    start_bg(&mut h, 3, "a3", &[]).succeeds_within(15, "a container on host3 after rmpeer on host2");
}

/// 340_observers_cannot_vote_3: an observer does not count towards a
/// quorum; a second elector does.
#[test]
fn t340_observers_cannot_vote() {
    if !require_root() {
        return;
    }
    let mut h = Hosts::with(3);
    // A network without enough electors for consensus.
    launch(&h, 1, &["--ipalloc-init", "consensus=2"]);
    launch(&h, 2, &["--ipalloc-init", "observer", "10.99.0.1"]);

    // An allocation times out (the original: exit 124 from `timeout 2`).
    let mut first = start_bg(&mut h, 1, "a1", &[]);
    assert!(first.finishes_within(2).is_none(), "allocation must wait: an observer cannot vote");

    // Add another elector.
    launch(&h, 3, &["--ipalloc-init", "consensus=2", "10.99.0.2"]);

    // Allocation succeeds.
    start_bg(&mut h, 1, "a2", &[]).succeeds_within(20, "allocation with a second elector");
}

/// 350_observers_can_call_election_3: electors that have not yet agreed
/// stay idle; an allocation on an observer calls the election.
#[test]
fn t350_observers_can_call_election() {
    if !require_root() {
        return;
    }
    let mut h = Hosts::with(3);
    // Enough electors for consensus.
    launch(&h, 1, &["--ipalloc-init", "consensus=2"]);
    launch(&h, 2, &["--ipalloc-init", "consensus=2", "10.99.0.1"]);
    // Add an observer.
    launch(&h, 3, &["--ipalloc-init", "observer", "10.99.0.2"]);

    // Let the network settle; IPAM is idle (blank output: no consensus).
    std::thread::sleep(Duration::from_secs(5));
    for i in 1..=3 {
        assert_eq!(status_ipam(&h, i), "", "host{i}: IPAM idle");
    }

    // Allocation succeeds on the observer.
    start_bg(&mut h, 3, "a1", &[]).succeeds_within(20, "allocation on the observer");
}

/// 360_ipalloc_seed_mismatch_3: connecting peers of two different rings
/// must not bring a router down. The original connects 2 to 3 and starts a
/// container on 3 at once, relying on the connection being up by the time
/// Docker has started it ("so they will each have half the ring"); here
/// the test waits for that connection first, else host 3 (quorum 1) could
/// found a ring of its own. After `connect`, it waits for the connection
/// attempt (the original asserts at once, possibly before any).
#[test]
fn t360_ipalloc_seed_mismatch() {
    if !require_root() {
        return;
    }
    let mut h = Hosts::with(3);
    for i in 1..=3 {
        launch(&h, i, &["--no-discovery"]);
    }

    // Allocations to get the ring initialised on two hosts.
    start(&mut h, 1, "a1", &[]);
    start(&mut h, 2, "a2", &[]);

    // Connect 2 to 3 and allocate so they each have half the ring.
    ok(h.weave(2, &["connect", "10.99.0.3"]));
    eventually(10, "host2 connected to host3", || established(&h, 2, "10.99.0.3"));
    start(&mut h, 3, "a3", &[]);

    // More allocations on 1 to increase the version number.
    start(&mut h, 1, "a4", &[]);
    start(&mut h, 1, "a5", &[]);

    ok(h.weave(1, &["connect", "10.99.0.3"]));
    eventually(10, "host1 tried host3", || {
        String::from_utf8_lossy(&h.weave(1, &["status", "connections"]).stdout).lines().any(|l| l.contains("10.99.0.3") && !l.contains("connecting"))
    });
    std::thread::sleep(Duration::from_secs(2));

    // Weave on 3 is still running.
    ok(h.weave(3, &["status"]));
}

/// 362_ipalloc_range_change: a router relaunched with another range drops
/// the saved ring of the old one and allocates from the new.
#[test]
fn t362_ipalloc_range_change() {
    if !require_root() {
        return;
    }
    let mut h = Hosts::new();
    launch(&h, 1, &["--ipalloc-range", "10.2.0.0/16"]);
    ok(h.weave(1, &["prime"]));
    ok(h.weave(1, &["stop"]));
    launch(&h, 1, &["--ipalloc-range", "10.3.0.0/16"]);
    // Allocations proceed.
    start_bg(&mut h, 1, "a1", &[]).succeeds_within(10, "allocation in the new range");
}

/// 370_persist_ipam_2: IPAM state persists across restarts: a router
/// relaunched alone keeps its ring (and frees the address of a container
/// removed while it was down); the exposed address is kept. The original's
/// `docker restart weave` (the router's container restarted with its
/// launch arguments, "without going through the reclaim procedure" of the
/// script) is the same launch again here: the router is one process and
/// does its reclaim itself. As in the original, host1's router is down
/// before that step, and the commented-out step of the original is left
/// out.
#[test]
fn t370_persist_ipam() {
    if !require_root() {
        return;
    }
    let mut h = Hosts::new();
    launch(&h, 1, &["10.99.0.2"]);
    launch(&h, 2, &["10.99.0.1"]);

    let expose = ok(h.weave(1, &["expose"])).trim().to_owned();
    let c1 = start(&mut h, 1, "c1", &[]);
    let c1ip = container_ip(&h, 1, &c1);
    start(&mut h, 2, "c2", &[]);
    assert!(h.ping("c2", &c1ip), "c2 pings c1");
    let c3a = start(&mut h, 2, "c3a", &[]);
    let c3aip = container_ip(&h, 2, &c3a);

    ok(h.weave(1, &["stop"]));
    ok(h.weave(2, &["stop"]));

    // Remove one container while weave is down: its address is freed on launch.
    remove(&c3a);

    // Start just host2; if nothing persisted it would form its own ring.
    launch(&h, 2, &[]);
    let c3 = start(&mut h, 2, "c3", &[]);
    let c3ip = container_ip(&h, 2, &c3);
    assert_ne!(c3ip, c1ip, "c3 must not get c1's address");
    assert_eq!(c3ip, c3aip, "c3 gets the address freed by c3a");

    // Restart host1's router (its launch arguments again).
    launch(&h, 1, &["10.99.0.2"]);
    // The weave:expose address has not been lost.
    let c4 = start(&mut h, 1, "c4", &[]);
    let c4ip = container_ip(&h, 1, &c4);
    assert_ne!(c4ip, expose, "c4 must not get the exposed address");
}

/// 380_ipam_seed_2: `--ipalloc-init seed=` lets disconnected routers
/// allocate at once, and they interoperate once connected; a router
/// relaunched under another name does not keep the old name's IPAM data.
/// `$PING c2` resolves the name through weaveDNS: the namespaces are
/// attached with `-h cN.weave.local` and resolve through the
/// resolv.conf the router writes for them (search `weave.local`).
#[test]
fn t380_ipam_seed() {
    if !require_root() {
        return;
    }
    let mut h = Hosts::new();
    // Two disconnected routers.
    launch(&h, 1, &["--name", "::1", "--ipalloc-init", "seed=::1,::2"]);
    launch(&h, 2, &["--name", "::2", "--ipalloc-init", "seed=::1,::2"]);

    // Allocations proceed.
    start_bg(&mut h, 1, "c1", &[]).succeeds_within(10, "c1 on host1");
    start_bg(&mut h, 2, "c2", &[]).succeeds_within(10, "c2 on host2");

    // Connect the routers (the original then sleeps 2 s; pings retry).
    ok(h.weave(2, &["connect", "10.99.0.1"]));

    assert!(h.ping("c1", "c2"), "c1 pings c2 by name");
    assert!(h.ping("c2", "c1"), "c2 pings c1 by name");

    // Restart one router under another peer name.
    remove(&h.name("c2"));
    ok(h.weave(2, &["forget", "10.99.0.1"]));
    ok(h.weave(2, &["stop"]));
    launch(&h, 2, &["--name", "::3"]);
    // This host has not kept the previous IPAM data.
    assert_eq!(status_ipam(&h, 2), "", "host2 (::3) keeps no IPAM data of ::2");
}
