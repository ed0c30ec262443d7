//! Docker containers on the overlay, against the real dockerd: `weave
//! attach` by name and by ID, cross-host ping and DNS between a Docker
//! container on one simulated host and a netns container on the other,
//! release on `docker rm -f` and after the grace period, the same address
//! across `docker restart`, and the network plugin (`docker run
//! --net=NAME`). Needs root and a Docker daemon; in CI their absence is a
//! failure.

use std::process::Command;
use std::time::Duration;

mod common;
use common::{eventually, ok, require_root, Hosts};

const IMAGE: &str = "weave-test-busybox:1";

/// Whether Docker can be used; in CI it must be.
fn require_docker() -> bool {
    if !require_root() {
        return false;
    }
    let up = Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]).output().is_ok_and(|o| o.status.success());
    if !up {
        assert!(std::env::var_os("CI").is_none(), "the Docker tests need a running dockerd, and must run in CI");
        eprintln!("skipped: no Docker daemon");
        return false;
    }
    ensure_image();
    true
}

/// A busybox image made locally (nothing can be pulled): `docker import`
/// of a root with the static busybox and its applets.
fn ensure_image() {
    if Command::new("docker").args(["image", "inspect", IMAGE]).output().unwrap().status.success() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("wv-bbroot-{}", std::process::id()));
    let mut tar = common::busybox_tar(&dir);
    let out = Command::new("docker").args(["import", "-", IMAGE]).stdin(tar.stdout.take().unwrap()).output().unwrap();
    assert!(tar.wait().unwrap().success(), "tar of the image root");
    let _ = std::fs::remove_dir_all(&dir);
    // Another test may have imported it meanwhile: that is fine too.
    assert!(
        out.status.success() || Command::new("docker").args(["image", "inspect", IMAGE]).output().unwrap().status.success(),
        "docker import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Docker containers (and networks) made by a test, removed when it ends.
struct Containers {
    names: Vec<String>,
    networks: Vec<String>,
}

impl Containers {
    fn run(&mut self, name: &str, net: &str) -> String {
        let id =
            ok(Command::new("docker").args(["run", "-d", "--network", net, "--name", name, IMAGE, "/bin/sleep", "600"]).output().unwrap()).trim().to_owned();
        self.names.push(name.to_owned());
        id
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("docker").args(["rm", "-f", n]).output();
        }
        for n in &self.networks {
            let _ = Command::new("docker").args(["network", "rm", n]).output();
        }
    }
}

fn docker(args: &[&str]) -> String {
    ok(Command::new("docker").args(args).output().unwrap())
}

fn docker_ping(name: &str, to: &str) -> bool {
    common::pings(&["docker", "exec", name], to)
}

fn owned(h: &Hosts, i: usize, id: &str) -> Option<serde_json::Value> {
    let report: serde_json::Value = serde_json::from_str(&ok(h.weave(i, &["report"]))).unwrap();
    report["IPAM"]["Owned"].get(id).cloned()
}

/// Whether IPAM on host 1 holds `ip` for the Docker plugin.
fn plugin_owns(h: &Hosts, ip: &str) -> bool {
    let report: serde_json::Value = serde_json::from_str(&ok(h.weave(1, &["report"]))).unwrap();
    let owned = report["IPAM"]["Owned"].as_object().cloned().unwrap_or_default();
    owned
        .iter()
        .filter(|(k, _)| k.starts_with("weave:plugin:"))
        .any(|(_, v)| v.as_array().is_some_and(|a| a.iter().any(|c| c.as_str().unwrap_or("").starts_with(&format!("{ip}/")))))
}

/// Call the Docker plugin on its socket as Docker does.
fn plugin_call(sock: &str, call: &str, body: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    write!(s, "POST /{call} HTTP/1.0\r\nHost: plugin\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let (head, json) = reply.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "{reply}");
    serde_json::from_str(json).unwrap()
}

fn launch_pair(h: &Hosts, extra1: &[&str]) {
    let mut a = vec!["launch", "--name", "::1", "--nickname", "h1", "--ipalloc-init", "consensus=2", "--docker-grace", "3"];
    a.extend_from_slice(extra1);
    ok(h.weave(1, &a));
    ok(h.weave(2, &["launch", "--name", "::2", "--nickname", "h2", "--ipalloc-init", "consensus=2", "--no-plugin", "10.99.0.1"]));
}

#[test]
fn docker_containers_attach_by_name_and_id_and_follow_their_lifecycle() {
    if !require_docker() {
        return;
    }
    let mut h = Hosts::new();
    let mut dc = Containers { names: Vec::new(), networks: Vec::new() };
    launch_pair(&h, &["--no-plugin"]);
    let d1 = format!("{}-d1", h.prefix);
    let d2 = format!("{}-d2", h.prefix);
    let id1 = dc.run(&d1, "none");
    let id2 = dc.run(&d2, "none");

    // By name, and by (short) ID.
    let a1 = ok(h.weave(1, &["attach", &d1])).trim().to_owned();
    let a2 = ok(h.weave(1, &["attach", "-h", "web.weave.local", &id2[..12]])).trim().to_owned();
    assert!(!a1.contains('/') && !a2.contains('/') && a1 != a2, "bare addresses, as Weave prints: {a1} {a2}");
    let ip1 = a1.split('/').next().unwrap().to_owned();
    let ps = ok(h.weave(1, &["ps"]));
    assert!(ps.lines().any(|l| l.starts_with(&id1[..12]) && l.ends_with(&format!("{a1}/12"))), "{ps}");
    assert!(ps.lines().any(|l| l.starts_with(&id2[..12]) && l.ends_with(&format!("{a2}/12"))), "{ps}");
    assert_eq!(ok(h.weave(1, &["ps", &d1])).lines().count(), 1);
    assert_eq!(owned(&h, 1, &id1).unwrap()[0], format!("{a1}/12").as_str(), "IPAM holds it under the full ID");

    // Across hosts: the Docker container on host 1 and a netns container
    // on host 2, both ways, and by name.
    let c3 = h.ns("c3");
    let a3 = ok(h.weave(2, &["attach", &c3])).trim().to_owned();
    let ip3 = a3.split('/').next().unwrap().to_owned();
    assert!(docker_ping(&d1, &ip3), "docker container on host 1 -> netns container on host 2");
    assert!(h.ping("c3", &ip1), "netns container on host 2 -> docker container on host 1");
    eventually(5, "host 2 learns the Docker container's name", || ok(h.weave(2, &["dns-lookup", &d1])).trim() == ip1);
    let by_name = Command::new("ip").args(["netns", "exec", &c3, "ping", "-c", "1", "-W", "2", &d1]).output().unwrap();
    assert!(by_name.status.success(), "ping {d1} by name: {}", String::from_utf8_lossy(&by_name.stdout));
    assert!(docker_ping(&d1, &c3), "the Docker container resolves {c3} through weaveDNS");

    // A quick restart keeps the address; the container is attached again.
    docker(&["restart", "-t", "0", &d1]);
    eventually(10, "d1 attached again after its restart", || ok(h.weave(1, &["ps", &d1])).contains(&a1));
    assert!(h.ping("c3", &ip1), "the restarted container answers at its old address");
    assert!(docker_ping(&d1, &ip3));

    // The router restarts while a container restarts: it is attached
    // again, with its address and its -h name.
    let ip2 = a2.split('/').next().unwrap().to_owned();
    let d4 = format!("{}-d4", h.prefix);
    let id4 = dc.run(&d4, "none");
    ok(h.weave(1, &["attach", &d4]));
    ok(h.weave(1, &["stop"]));
    docker(&["restart", "-t", "0", &d2]);
    // Removed while the router is down: released when it is back.
    docker(&["rm", "-f", &d4]);
    ok(h.weave(1, &["launch", "--name", "::1", "--nickname", "h1", "--ipalloc-init", "consensus=2", "--docker-grace", "3", "--no-plugin"]));
    eventually(10, "d2 attached again after the router's restart", || ok(h.weave(1, &["ps", &d2])).contains(&a2));
    assert!(h.ping("c3", &ip2), "d2 answers at its old address");
    eventually(10, "d2 keeps its -h name", || ok(h.weave(1, &["dns-lookup", "web"])).trim() == ip2);
    assert!(ok(h.weave(1, &["dns-lookup", &d2])).trim().is_empty(), "and gets no default name");
    eventually(10, "d4, removed while the router was down, released", || owned(&h, 1, &id4).is_none());

    // docker rm -f releases at once; a container that stays dead is
    // released after the grace period (3 s here).
    docker(&["rm", "-f", &d1]);
    eventually(5, "d1's address released on rm -f", || owned(&h, 1, &id1).is_none());
    eventually(5, "d1's name gone", || ok(h.weave(2, &["dns-lookup", &d1])).trim().is_empty());
    docker(&["stop", "-t", "0", &d2]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(owned(&h, 1, &id2).is_some(), "kept during the grace period");
    eventually(10, "d2's address released after the grace period", || owned(&h, 1, &id2).is_none());
    // Started again later: attached again, with a new address if need be.
    docker(&["start", &d2]);
    eventually(10, "d2 attached again", || ok(h.weave(1, &["ps"])).contains(&id2[..12]));

    // Errors: unknown names are one-line errors, exit 1.
    let bad = h.weave(1, &["attach", "no-such-docker-container"]);
    assert_eq!(bad.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&bad.stderr).lines().count(), 1);
    docker(&["stop", "-t", "0", &d2]);
    let stopped = h.weave(1, &["attach", &d2]);
    assert_eq!(stopped.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&stopped.stderr).contains("not running"), "{}", String::from_utf8_lossy(&stopped.stderr));

    for i in 1..=2 {
        ok(h.weave(i, &["reset"]));
    }
}

#[test]
fn docker_network_plugin_gives_containers_overlay_addresses_and_names() {
    if !require_docker() {
        return;
    }
    let mut h = Hosts::new();
    let mut dc = Containers { names: Vec::new(), networks: Vec::new() };
    // A driver name of the test's own, so tests and a real `weave` plugin
    // on this machine do not meet.
    let driver = format!("wvp{}", std::process::id());
    dc.networks.push(driver.clone());
    ok(h.weave(
        1,
        &["launch", "--name", "::1", "--nickname", "h1", "--ipalloc-init", "consensus=2", "--docker-grace", "3", "--plugin", "--plugin-name", &driver],
    ));
    // Alone, host 1 cannot make its network (Docker asks IPAM for the
    // gateway, which needs host 2 for consensus): as Weave, not ready, and
    // its status pages say 503 while showing the status all the same.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let page = common::http_get(&h, 1, "/status");
    assert!(page.starts_with("HTTP/1.1 503") && page.contains("Service: router"), "{page}");
    assert!(common::http_get(&h, 1, "/report").contains("\"Ready\": false"));
    ok(h.weave(2, &["launch", "--name", "::2", "--nickname", "h2", "--ipalloc-init", "consensus=2", "--no-plugin", "10.99.0.1"]));
    eventually(30, "host 1 ready once its network is made", || common::http_get(&h, 1, "/status").starts_with("HTTP/1.1 200"));
    let sock = format!("/run/docker/plugins/{driver}.sock");
    assert!(std::path::Path::new(&sock).exists());
    eventually(20, "the router creates its Docker network", || Command::new("docker").args(["network", "inspect", &driver]).output().unwrap().status.success());
    let net =
        docker(&["network", "inspect", "-f", "{{.Driver}} {{.IPAM.Driver}} {{(index .IPAM.Config 0).Subnet}} {{(index .IPAM.Config 0).Gateway}}", &driver]);
    let f: Vec<&str> = net.split_whitespace().collect();
    assert_eq!(&f[..3], &[driver.as_str(), driver.as_str(), "10.32.0.0/12"], "{net}");
    let gateway = f[3].to_owned();
    // The gateway is the host's address on the bridge.
    assert!(ok(h.weave(1, &["ps"])).lines().any(|l| l.starts_with("weave:expose") && l.contains(&gateway)), "gateway {gateway} exposed");

    let d1 = format!("{}-p1", h.prefix);
    let id1 = dc.run(&d1, &driver);
    let ip1 = docker(&["inspect", "-f", &format!("{{{{(index .NetworkSettings.Networks \"{driver}\").IPAddress}}}}"), &d1]).trim().to_owned();
    assert!(ip1.starts_with("10.3"), "an overlay address: {ip1}");
    assert!(plugin_owns(&h, &ip1), "IPAM holds {ip1} for the plugin");
    // A second container gets an address of its own.
    let d2 = format!("{}-p2", h.prefix);
    dc.run(&d2, &driver);
    let ip2 = docker(&["inspect", "-f", &format!("{{{{(index .NetworkSettings.Networks \"{driver}\").IPAddress}}}}"), &d2]).trim().to_owned();
    assert_ne!(ip1, ip2);
    assert!(docker_ping(&d2, &ip1), "two --net={driver} containers on one host");

    let c3 = h.ns("c3");
    let a3 = ok(h.weave(2, &["attach", &c3])).trim().to_owned();
    let ip3 = a3.split('/').next().unwrap().to_owned();
    assert!(docker_ping(&d1, &ip3), "--net={driver} container on host 1 -> netns container on host 2");
    assert!(h.ping("c3", &ip1));
    assert!(docker_ping(&d1, &gateway), "the host, through the gateway");
    eventually(10, "the plugin container's name reaches host 2", || ok(h.weave(2, &["dns-lookup", &d1])).trim() == ip1);

    // Errors come back in the plugin protocol's shape, and Docker shows
    // them: a pool outside the range.
    let bad = Command::new("docker")
        .args(["network", "create", "-d", &driver, "--ipam-driver", &driver, "--subnet", "192.168.77.0/24", &format!("{driver}-bad")])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("outside the IP allocation range"), "{}", String::from_utf8_lossy(&bad.stderr));
    // Another subnet of the range, with the multicast route.
    let mnet = format!("{driver}-m");
    dc.networks.insert(0, mnet.clone());
    docker(&["network", "create", "-d", &driver, "--ipam-driver", &driver, "--subnet", "10.32.64.0/24", "-o", "works.weave.multicast=true", &mnet]);
    let d3 = format!("{}-p3", h.prefix);
    dc.run(&d3, &mnet);
    let routes = docker(&["exec", &d3, "ip", "route"]);
    assert!(routes.contains("224.0.0.0/4") && routes.contains("10.32.64.0/24") && routes.contains("default via 10.32.64."), "{routes}");
    docker(&["rm", "-f", &d3]);
    assert!(ok(h.weave(1, &["ps"])).lines().any(|l| l.starts_with("weave:expose") && l.contains("10.32.64.")), "its gateway is exposed");
    docker(&["network", "rm", &mnet]);
    assert!(!ok(h.weave(1, &["ps"])).contains("10.32.64."), "and hidden when the network goes");

    // Restarts: a hold Docker's release never reached (asked for here on
    // the plugin socket, as Docker does, and never used) is freed at the
    // next start; the running containers keep theirs.
    let leaked = plugin_call(&sock, "IpamDriver.RequestAddress", r#"{"PoolID":"10.32.0.0/12"}"#);
    let leaked = leaked["Address"].as_str().unwrap().split('/').next().unwrap().to_owned();
    assert!(plugin_owns(&h, &leaked), "{leaked} held");
    ok(h.weave(1, &["stop"]));
    let relaunch = |h: &Hosts| {
        ok(h.weave(
            1,
            &["launch", "--name", "::1", "--nickname", "h1", "--ipalloc-init", "consensus=2", "--docker-grace", "3", "--plugin", "--plugin-name", &driver],
        ));
    };
    relaunch(&h);
    eventually(10, "the unused plugin address is freed", || !plugin_owns(&h, &leaked));
    assert!(plugin_owns(&h, &ip1) && plugin_owns(&h, &ip2), "running containers keep their addresses");
    // State lost: the addresses Docker's endpoints use are claimed back
    // before anything is allocated, so a new container gets another one.
    ok(h.weave(1, &["stop"]));
    std::fs::remove_file(h.state(1).join("ipam.db")).unwrap();
    relaunch(&h);
    eventually(20, "the plugin's addresses are claimed back", || plugin_owns(&h, &ip1) && plugin_owns(&h, &ip2));
    let d4 = format!("{}-p4", h.prefix);
    dc.run(&d4, &driver);
    let ip4 = docker(&["inspect", "-f", &format!("{{{{(index .NetworkSettings.Networks \"{driver}\").IPAddress}}}}"), &d4]).trim().to_owned();
    assert!(ip4 != ip1 && ip4 != ip2, "{ip4} is in use already");
    assert!(docker_ping(&d4, &ip1), "and the plugin serves again");
    docker(&["rm", "-f", &d4]);

    // Removal gives the address back.
    docker(&["rm", "-f", &d1]);
    assert!(!plugin_owns(&h, &ip1), "{ip1} released");
    assert!(plugin_owns(&h, &ip2), "{ip2} still held");
    let _ = id1;

    // Reset removes the network (once no container uses it) and the socket.
    docker(&["rm", "-f", &d2]);
    for i in 1..=2 {
        ok(h.weave(i, &["reset"]));
    }
    assert!(!Command::new("docker").args(["network", "inspect", &driver]).output().unwrap().status.success(), "network {driver} left behind");
    assert!(!std::path::Path::new(&sock).exists(), "plugin socket left behind");
}
