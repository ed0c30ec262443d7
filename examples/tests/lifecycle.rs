//! What a router keeps and gives back across its own restarts and its
//! containers' deaths, on network-namespace hosts with the `weave`
//! command: DNS names of every kind (netns, `dns-add`, CNI, `expose -h`)
//! come back after `weave stop; weave launch`; a container whose namespace goes (a netns, a CNI pod) is
//! released at once, or at the next start if the router was down. Needs
//! root; in CI its absence is a failure.

use std::time::{Duration, Instant};

use serde_json::json;

mod common;
use common::{cni, ok, plugin_dir, require_root, Hosts};

fn launch(h: &Hosts, i: usize) {
    let (name, nick) = (format!("::{i}"), format!("h{i}"));
    let mut a = vec!["launch", "--name", &name, "--nickname", &nick, "--ipalloc-init", "consensus=2", "--no-docker"];
    if i == 2 {
        a.push("10.99.0.1");
    }
    ok(h.weave(i, &a));
}

/// Two hosts with their routers connected, and a namespace for a
/// container on each (not attached); None without root.
fn two_routers() -> Option<(Hosts, String, String)> {
    if !require_root() {
        return None;
    }
    let mut h = Hosts::new();
    let (c1, c2) = (h.ns("c1"), h.ns("c2"));
    launch(&h, 1);
    launch(&h, 2);
    Some((h, c1, c2))
}

fn lookup(h: &Hosts, i: usize, name: &str) -> String {
    ok(h.weave(i, &["dns-lookup", name])).trim().to_owned()
}

#[test]
fn every_kind_of_name_resolves_again_on_both_hosts_after_a_router_restart() {
    let Some((h, c1, c2)) = two_routers() else { return };
    ok(h.weave(1, &["prime"]));

    // On host 1: a namespace container (its default name, and an alias
    // with dns-add), a name for no container, and a CNI pod.
    let a1 = ok(h.weave(1, &["attach", &c1])).trim().split('/').next().unwrap().to_owned();
    ok(h.weave(1, &["dns-add", &c1, "-h", "alias.weave.local"]));
    ok(h.weave(1, &["dns-add", "10.40.1.1", "-h", "ext.weave.local"]));
    let dir = plugin_dir(&h);
    let conf = json!({ "cniVersion": "1.0.0", "name": "weave", "type": "weave-net", "stateDir": h.state(1) });
    let (added, code) = cni(&dir, "weave-net", "ADD", "pod1", &format!("/run/netns/{c2}"), &conf);
    assert_eq!(code, 0, "{added}");
    let pod = added["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_owned();
    let host = ok(h.weave(1, &["expose", "-h", "host1.weave.local"])).trim().split('/').next().unwrap().to_owned();
    let names = [(c1.clone(), a1.clone()), ("alias".into(), a1.clone()), ("ext".into(), "10.40.1.1".into()), ("pod1".into(), pod), ("host1".into(), host)];
    let all_resolve = |i: usize| names.iter().all(|(n, a)| lookup(&h, i, n) == *a);
    let end = Instant::now() + Duration::from_secs(10);
    while !all_resolve(2) {
        assert!(Instant::now() < end, "host 2 learns host 1's names");
        std::thread::sleep(Duration::from_millis(200));
    }

    ok(h.weave(1, &["stop"]));
    launch(&h, 1);
    // Within 5 s of the launch, on both hosts, and they stay.
    let end = Instant::now() + Duration::from_secs(5);
    while !(all_resolve(1) && all_resolve(2)) {
        let hr = &h;
        let missing: Vec<String> =
            (1..=2).flat_map(|i| names.iter().filter(move |(n, a)| lookup(hr, i, n) != *a).map(move |(n, _)| format!("{n} on host {i}"))).collect();
        assert!(Instant::now() < end, "names not back within 5 s: {missing:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // A full anti-entropy round later (5 s), nothing has been taken back.
    std::thread::sleep(Duration::from_secs(6));
    assert!(all_resolve(1) && all_resolve(2), "names stay after the peers' full state");

    // A name removed after the restart stays removed across another one.
    ok(h.weave(1, &["dns-remove", "10.40.1.1", "-h", "ext.weave.local"]));
    ok(h.weave(1, &["stop"]));
    launch(&h, 1);
    std::thread::sleep(Duration::from_secs(6));
    assert!(lookup(&h, 1, "ext").is_empty() && lookup(&h, 2, "ext").is_empty(), "a removed name does not come back");
    assert_eq!(lookup(&h, 2, &c1), a1);
    // hide takes expose -h's name away.
    ok(h.weave(1, &["hide"]));
    within(5.0, "the host's name goes with hide", || (!lookup(&h, 2, "host1").is_empty()).then(|| "host1 still resolves".to_owned()));
}

fn owned(h: &Hosts, i: usize, id: &str) -> bool {
    let report: serde_json::Value = serde_json::from_str(&ok(h.weave(i, &["report"]))).unwrap();
    report["IPAM"]["Owned"].get(id).is_some()
}

fn listed(h: &Hosts, i: usize, id: &str) -> bool {
    ok(h.weave(i, &["ps"])).lines().any(|l| l.split_whitespace().next() == Some(id))
}

fn del_netns(ns: &str) {
    ok(std::process::Command::new("ip").args(["netns", "del", ns]).output().unwrap());
}

/// Wait up to `secs` for `f`; fail with what is still wrong.
fn within(secs: f64, what: &str, mut f: impl FnMut() -> Option<String>) {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    loop {
        let Some(wrong) = f() else { return };
        assert!(Instant::now() < end, "{what} within {secs} s: {wrong}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_container_whose_namespace_goes_is_released_at_once_or_at_the_next_start() {
    if !require_root() {
        return;
    }
    let mut h = Hosts::new();
    let (c1, c2, c3, c4, c5) = (h.ns("c1"), h.ns("c2"), h.ns("c3"), h.ns("c4"), h.ns("c5"));
    launch(&h, 1);
    launch(&h, 2);
    ok(h.weave(1, &["prime"]));
    let a1 = ok(h.weave(1, &["attach", &c1])).trim().to_owned();
    let a2 = ok(h.weave(1, &["attach", &c2])).trim().to_owned();
    let dir = plugin_dir(&h);
    let conf = json!({ "cniVersion": "1.0.0", "name": "weave", "type": "weave-net", "stateDir": h.state(1) });
    let (added, code) = cni(&dir, "weave-net", "ADD", "pod1", &format!("/run/netns/{c3}"), &conf);
    assert_eq!(code, 0, "{added}");
    let pod_id = "cni:weave/pod1/eth0";
    let gone = |i: usize, id: &str, name: &str| -> Option<String> {
        let mut wrong = Vec::new();
        if owned(&h, 1, id) {
            wrong.push("address still allocated".to_owned());
        }
        if listed(&h, 1, id) {
            wrong.push("still in weave ps".to_owned());
        }
        if !lookup(&h, i, name).is_empty() {
            wrong.push(format!("{name} still resolves on host {i}"));
        }
        (!wrong.is_empty()).then(|| wrong.join(", "))
    };
    within(10.0, "host 2 knows the names", || (lookup(&h, 2, &c1).is_empty() || lookup(&h, 2, "pod1").is_empty()).then(|| "not yet".into()));

    // The namespace goes while the router runs: released within 2 s.
    assert!(owned(&h, 1, &c1) && listed(&h, 1, &c1));
    del_netns(&c1);
    within(2.0, "c1 released", || gone(1, &c1, &c1).or_else(|| gone(2, &c1, &c1)));
    assert!(listed(&h, 1, &c2) && owned(&h, 1, &c2), "c2 is untouched");
    // Its address is free: asking for it exactly works.
    assert_eq!(ok(h.weave(1, &["attach", &format!("ip:{a1}/12"), &c4])).trim(), a1);
    // A CNI pod's namespace going (the runtime never called DEL).
    assert!(owned(&h, 1, pod_id) && listed(&h, 1, pod_id), "the pod is attached: {}", ok(h.weave(1, &["ps"])));
    del_netns(&c3);
    within(2.0, "the pod released", || gone(1, pod_id, "pod1").or_else(|| gone(2, pod_id, "pod1")));

    // Gone while the router is down: released when it starts.
    assert!(lookup(&h, 2, &c2) == a2.split('/').next().unwrap(), "c2's name is known before");
    ok(h.weave(1, &["stop"]));
    del_netns(&c2);
    launch(&h, 1);
    within(5.0, "c2 released at the start", || gone(1, &c2, &c2).or_else(|| gone(2, &c2, &c2)));
    assert!(listed(&h, 1, &c4) && owned(&h, 1, &c4), "c4 is still attached after the restart");
    assert_eq!(ok(h.weave(1, &["attach", &format!("ip:{a2}/12"), &c5])).trim(), a2, "c2's address is free again");
}

/// The overlay addresses inside namespace `ns` (on `ethwe`).
fn addrs_in(ns: &str) -> Vec<String> {
    let out = std::process::Command::new("ip").args(["-n", ns, "-4", "-o", "addr", "show", "dev", "ethwe"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let words: Vec<&str> = text.split_whitespace().collect();
    words.windows(2).filter(|w| w[0] == "inet").map(|w| w[1].split('/').next().unwrap().to_owned()).collect()
}

#[test]
fn an_answered_address_survives_kill_dash_nine_thirty_times() {
    if !require_root() {
        return;
    }
    let mut h = Hosts::new();
    let single = ["launch", "--name", "::1", "--nickname", "h1", "--ipalloc-init", "consensus=1", "--no-docker", "--no-dns"];
    ok(h.weave(1, &single));
    let mut live: Vec<String> = Vec::new();
    for round in 0..30 {
        let ns = h.ns(&format!("k{round}"));
        // Answered, then killed at once: what was answered must be saved.
        ok(h.weave(1, &["attach", &ns]));
        let pid = std::fs::read_to_string(h.state(1).join("weave.pid")).unwrap();
        assert!(std::process::Command::new("kill").args(["-9", pid.trim()]).status().unwrap().success());
        live.push(ns);
        // Wait for the process to be gone before starting another.
        let proc_dir = std::path::PathBuf::from(format!("/proc/{}", pid.trim()));
        let end = Instant::now() + Duration::from_secs(10);
        while proc_dir.exists() && std::fs::read_to_string(proc_dir.join("stat")).is_ok_and(|s| !s.contains(") Z ")) {
            assert!(Instant::now() < end, "router {pid} did not die");
            std::thread::sleep(Duration::from_millis(20));
        }
        ok(h.weave(1, &single));
        let other = h.ns(&format!("n{round}"));
        ok(h.weave(1, &["attach", &other]));
        live.push(other);
        let mut held: Vec<String> = live.iter().flat_map(|ns| addrs_in(ns)).collect();
        let n = held.len();
        held.sort();
        held.dedup();
        assert_eq!(held.len(), n, "round {round}: an address is held twice: {:?}", live.iter().map(|ns| (ns, addrs_in(ns))).collect::<Vec<_>>());
        assert_eq!(n, live.len(), "every container has its one address");
    }
    ok(h.weave(1, &["reset"]));
}

/// A small tmpfs on `dir` (the disk a router's state lives on), unmounted
/// on drop.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &std::path::Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        ok(std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"]).arg(dir).output().unwrap());
        Self(dir.to_owned())
    }

    /// Fill it up: every further write fails with ENOSPC.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.0.join("fill")).unwrap();
        while f.write_all(&[0u8; 4096]).is_ok() {}
    }

    fn unfill(&self) {
        std::fs::remove_file(self.0.join("fill")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // The router's socket and pid file live here: stop it (by its
        // PID) before they go, or `Hosts` cannot.
        if let Ok(pid) = std::fs::read_to_string(self.0.join("weave.pid")) {
            let _ = std::process::Command::new("kill").arg(pid.trim()).status();
            std::thread::sleep(Duration::from_millis(500));
        }
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn while_ipam_cannot_save_it_gives_no_address_and_says_so() {
    if !require_root() {
        return;
    }
    let mut h = Hosts::new();
    let (c1, c2) = (h.ns("c1"), h.ns("c2"));
    let disk = SmallDisk::mount(&h.state(1));
    let single = ["launch", "--name", "::1", "--nickname", "h1", "--ipalloc-init", "consensus=1", "--no-docker", "--no-dns"];
    ok(h.weave(1, &single));
    let a1 = ok(h.weave(1, &["attach", &c1])).trim().to_owned();

    disk.fill();
    let refused = h.weave(1, &["attach", &c2]);
    assert_eq!(refused.status.code(), Some(1), "no address while the state cannot be saved: {}", String::from_utf8_lossy(&refused.stdout));
    let why = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(why.contains("cannot save its state") && why.contains("No space left"), "{why}");
    let status = ok(h.weave(1, &["status"]));
    assert!(status.contains("cannot save its state"), "weave status says so: {status}");

    // Space again: IPAM saves and answers again, and what it gave is kept
    // across a crash.
    disk.unfill();
    within(15.0, "IPAM ready again", || {
        let s = ok(h.weave(1, &["status"]));
        (!s.contains("Status: ready")).then_some(s)
    });
    let a2 = ok(h.weave(1, &["attach", &c2])).trim().to_owned();
    assert_ne!(a1, a2);
    let pid = std::fs::read_to_string(h.state(1).join("weave.pid")).unwrap();
    assert!(std::process::Command::new("kill").args(["-9", pid.trim()]).status().unwrap().success());
    ok(h.weave(1, &single));
    let report: serde_json::Value = serde_json::from_str(&ok(h.weave(1, &["report"]))).unwrap();
    assert_eq!(report["IPAM"]["Owned"][&c1][0], format!("{a1}/12").as_str());
    assert_eq!(report["IPAM"]["Owned"][&c2][0], format!("{a2}/12").as_str());
    ok(h.weave(1, &["reset"]));
}

#[test]
fn after_its_state_is_deleted_a_host_gives_no_address_in_use() {
    if !require_root() {
        return;
    }
    let mut h = Hosts::new();
    let spaces: Vec<String> = (1..=9).map(|i| h.ns(&format!("c{i}"))).collect();
    launch(&h, 1);
    launch(&h, 2);
    // In use on host 1: two namespaces, a CNI pod, an exposed address; on
    // host 2: one namespace.
    let mut used: Vec<String> = vec![ok(h.weave(1, &["attach", &spaces[0]])), ok(h.weave(1, &["attach", &spaces[1]]))];
    let dir = plugin_dir(&h);
    let conf = json!({ "cniVersion": "1.0.0", "name": "weave", "type": "weave-net", "stateDir": h.state(1) });
    let (added, code) = cni(&dir, "weave-net", "ADD", "pod1", &format!("/run/netns/{}", spaces[2]), &conf);
    assert_eq!(code, 0, "{added}");
    used.push(added["ips"][0]["address"].as_str().unwrap().to_owned());
    used.push(ok(h.weave(1, &["expose"])));
    used.push(ok(h.weave(2, &["attach", &spaces[3]])));
    let used: Vec<String> = used.iter().map(|c| c.trim().split('/').next().unwrap().to_owned()).collect();

    ok(h.weave(1, &["stop"]));
    std::fs::remove_dir_all(h.state(1)).unwrap();
    launch(&h, 1);
    for ns in &spaces[4..] {
        let a = ok(h.weave(1, &["attach", ns])).trim().split('/').next().unwrap().to_owned();
        assert!(!used.contains(&a), "{ns} got {a}, which is in use: {used:?}");
    }
    // IPAM holds what it found for whom it found it.
    let report: serde_json::Value = serde_json::from_str(&ok(h.weave(1, &["report"]))).unwrap();
    let owned = &report["IPAM"]["Owned"];
    assert_eq!(owned[&spaces[0]][0].as_str().map(|c| c.split('/').next().unwrap()), Some(used[0].as_str()), "{owned}");
    assert_eq!(owned["cni:weave/pod1/eth0"][0].as_str().map(|c| c.split('/').next().unwrap()), Some(used[2].as_str()), "{owned}");
    assert_eq!(owned["weave:expose"][0].as_str().map(|c| c.split('/').next().unwrap()), Some(used[3].as_str()), "{owned}");
}

#[test]
fn after_forget_of_the_only_connection_containers_no_longer_reach_each_other() {
    if !require_root() {
        return;
    }
    for extra in [None, Some("--no-fastdp")] {
        let mut h = Hosts::new();
        let (c1, c2) = (h.ns("c1"), h.ns("c2"));
        let launch_with = |i: usize, peer: Option<&str>| {
            let (name, nick) = (format!("::{i}"), format!("h{i}"));
            let mut a = vec!["launch", "--name", &name, "--nickname", &nick, "--ipalloc-init", "consensus=2", "--no-docker"];
            a.extend(extra);
            a.extend(peer);
            ok(h.weave(i, &a));
        };
        launch_with(1, None);
        launch_with(2, Some("10.99.0.1"));
        ok(h.weave(1, &["attach", &c1]));
        let a2 = ok(h.weave(2, &["attach", &c2])).trim().split('/').next().unwrap().to_owned();
        let path = if extra.is_none() { "fastdp" } else { "sleeve" };
        within(10.0, "the connection uses the expected path", || {
            let s = ok(h.weave(2, &["status", "connections"]));
            (!s.contains(&format!("established unencrypted {path}"))).then_some(s)
        });
        assert!(h.ping("c1", &a2), "{path}: c1 reaches c2 while connected");
        ok(h.weave(2, &["forget", "10.99.0.1"]));
        within(5.0, "the connection is gone on both sides", || {
            let (s1, s2) = (ok(h.weave(1, &["status", "connections"])), ok(h.weave(2, &["status", "connections"])));
            (s1.contains("established") || s2.contains("established")).then(|| format!("{s1}{s2}"))
        });
        let pings_once = || std::process::Command::new("ip").args(["netns", "exec", &c1, "ping", "-c", "1", "-W", "1", &a2]).output().unwrap().status.success();
        within(2.0, "traffic stops", || pings_once().then(|| format!("{path}: c1 still reaches c2")));
        for _ in 0..3 {
            assert!(!pings_once(), "{path}: c1 reaches c2 again with no connection between the routers");
        }
    }
}

#[test]
fn over_vxlan_only_connected_peers_reach_the_containers() {
    let Some((h, c1, c2)) = two_routers() else { return };
    let a1 = ok(h.weave(1, &["attach", &c1])).trim().split('/').next().unwrap().to_owned();
    ok(h.weave(2, &["attach", &c2]));
    within(10.0, "the fast path is up", || {
        let s = ok(h.weave(2, &["status", "connections"]));
        (!s.contains("established unencrypted fastdp")).then_some(s)
    });
    assert!(h.ping("c2", &a1), "connected peers talk over the fast path");
    // Someone deletes the guard: it comes back (the router follows the
    // ruleset), and the fast path still carries the peers' traffic.
    let h1 = h.name("h1");
    let guard_present =
        || std::process::Command::new("ip").args(["netns", "exec", &h1, "nft", "list", "table", "inet", "weave-fastdp"]).output().unwrap().status.success();
    assert!(std::process::Command::new("ip").args(["netns", "exec", &h1, "nft", "delete", "table", "inet", "weave-fastdp"]).status().unwrap().success());
    within(5.0, "the VXLAN guard is put back", || (!guard_present()).then(|| "still missing".to_owned()));
    assert!(h.ping("c2", &a1), "and traffic flows with it back");
    let pings_once =
        |from: &str| std::process::Command::new("ip").args(["netns", "exec", from, "ping", "-c", "1", "-W", "1", &a1]).output().unwrap().status.success();

    // Host 2's router stops: its kernel VXLAN device and entries stay, but
    // host 1 no longer lets VXLAN in from it.
    ok(h.weave(2, &["stop"]));
    within(3.0, "traffic from the stopped peer's containers stops", || pings_once(&c2).then(|| "c2 still reaches c1".to_owned()));
    for _ in 0..3 {
        assert!(!pings_once(&c2), "c2 reaches c1 again with host 2's router stopped");
    }

    // An outsider on the underlay with a VXLAN device of its own, the VNI
    // and port of the overlay, and an address in its range (host 2, its
    // weave devices gone).
    ok(h.weave(2, &["reset"]));
    let h2 = h.name("h2");
    let sh = |args: &[&str]| ok(std::process::Command::new("ip").args(["-n", &h2]).args(args).output().unwrap());
    sh(&["link", "add", "vx", "type", "vxlan", "id", "30565", "dstport", "6784", "remote", "10.99.0.1", "dev", "u2"]);
    sh(&["addr", "add", "10.47.255.1/12", "dev", "vx"]);
    sh(&["link", "set", "vx", "up"]);
    for _ in 0..3 {
        assert!(!pings_once(&h2), "an outsider reaches c1 through the VXLAN port");
    }
    let rules = String::from_utf8_lossy(
        &std::process::Command::new("ip").args(["netns", "exec", &h.name("h1"), "nft", "list", "table", "inet", "weave-fastdp"]).output().unwrap().stdout,
    )
    .into_owned();
    assert!(rules.contains("udp dport 6784") && rules.contains("drop"), "{rules}");
    ok(h.weave(1, &["reset"]));
    assert!(
        !std::process::Command::new("ip")
            .args(["netns", "exec", &h.name("h1"), "nft", "list", "table", "inet", "weave-fastdp"])
            .output()
            .unwrap()
            .status
            .success(),
        "reset removes the guard"
    );
}
