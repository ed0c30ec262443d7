//! What containers, the host and outsiders may not do, on
//! network-namespace hosts with the `weave` command (issue: trust). Each
//! test plays the attacker. Needs root; in CI its absence is a failure.

use std::process::Command;

mod common;
use common::{eventually, http_get_at, ok, one_router, require_root, Hosts};

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
    let Some((h, c1)) = one_router() else { return };
    let a1 = ok(h.weave(1, &["attach", &c1])).trim().to_owned();
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

#[test]
fn the_password_stays_out_of_argv_trusted_subnets_say_unencrypted_and_metrics_serve_only_metrics() {
    if !require_root() {
        return;
    }
    let h = Hosts::new();
    let secret = "correct-horse-battery-staple";
    // Host 2 reads it from a file only its owner may read; one others may
    // read is refused.
    let file = h.state(2).with_extension("password");
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    let file_arg = file.display().to_string();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let refused = h.weave(2, &["launch", "--password-file", &file_arg, "--no-docker"]);
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("readable by others"), "{refused:?}");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    for i in [1, 2] {
        let name = format!("::{i}");
        let mut a = vec!["launch", "--name", &name, "--trusted-subnets", "10.99.0.0/24", "--no-docker", "--metrics-addr", "127.0.0.1:6782"];
        if i == 1 {
            a.extend(["--password", secret]);
        } else {
            a.extend(["--password-file", &file_arg, "10.99.0.1"]);
        }
        ok(h.weave(i, &a));
    }
    // No process the router runs shows the password in its arguments.
    let pid = std::fs::read_to_string(h.state(1).join("weave.pid")).unwrap();
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", pid.trim())).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains(secret), "the password is in the router's command line");
    assert!(!String::from_utf8_lossy(&cmdline).contains("--password"), "{}", String::from_utf8_lossy(&cmdline));

    // Over a trusted subnet the data is not encrypted, and status says so.
    // (Each end learns from the other's heartbeats that it trusts it.)
    eventually(15, "the trusted connection reports unencrypted", || {
        let conns = ok(h.weave(2, &["status", "connections"]));
        conns.contains("established unencrypted") && !conns.contains(" encrypted")
    });

    // The metrics address serves the metrics, not the report.
    assert!(http_get_at(&h, 1, "127.0.0.1:6782", "/metrics").contains("weave_connections"));
    for path in ["/report", "/status"] {
        assert!(http_get_at(&h, 1, "127.0.0.1:6782", path).starts_with("HTTP/1.1 404"), "{path} on the metrics address");
    }
    assert!(http_get_at(&h, 1, "127.0.0.1:6784", "/report").starts_with("HTTP/1.1 200"), "the status address still serves the report");
}

/// Open `n` TCP connections to `addr` from host 1's namespace and leave
/// them idle.
fn idle_connections(h: &Hosts, addr: &str, n: usize) -> Vec<std::net::TcpStream> {
    let ns = weave_dataplane::netlink::Netns::named(&h.name("h1"));
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    ns.run(move || Ok((0..n).filter_map(|_| std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(1)).ok()).collect::<Vec<_>>())).unwrap()
}

#[test]
fn a_thousand_idle_clients_of_dns_and_http_leave_the_router_serving() {
    if !require_root() {
        return;
    }
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let mut h = Hosts::new();
    let c1 = h.ns("c1");
    // The router starts with the usual soft limit of 1024 open files (as
    // under a login shell or systemd's default), whatever this machine's.
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, 1024.min(hard), hard).unwrap();
    ok(h.weave(1, &["launch", "--name", "::1", "--ipalloc-init", "consensus=1", "--no-docker"]));
    setrlimit(Resource::RLIMIT_NOFILE, hard.max(soft), hard).unwrap();
    ok(h.weave(1, &["attach", &c1]));
    let dns = dns_address(&h);

    let http = idle_connections(&h, "127.0.0.1:6784", 1000);
    let tcp_dns = idle_connections(&h, &format!("{dns}:53"), 1000);
    assert!(http.len() + tcp_dns.len() > 1900, "opened {} and {}", http.len(), tcp_dns.len());
    // Still serving: status over HTTP, the control socket, and names.
    assert!(http_get_at(&h, 1, "127.0.0.1:6784", "/status").starts_with("HTTP/1.1 200"), "HTTP status while 2000 clients idle");
    assert!(ok(h.weave(1, &["status"])).contains("Peers"));
    assert!(!ok(h.weave(1, &["dns-lookup", &c1])).trim().is_empty(), "the container's name resolves");
    drop((http, tcp_dns));
    // And after they are gone.
    assert!(http_get_at(&h, 1, "127.0.0.1:6784", "/status").starts_with("HTTP/1.1 200"));
}
