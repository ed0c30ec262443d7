//! The `weave` command end to end on network namespaces, as its users drive
//! it: launch on two hosts, attach containers (IPAM, net:CIDR, ip:CIDR),
//! cross-host ping, ps/status/report, bad input, stop, and a restart that
//! keeps container addresses. Needs root; in CI its absence is a failure.

use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::{http_get, ok, one_router, require_root, Hosts};

#[test]
fn launch_attach_ping_status_restart_stop() {
    if !require_root() {
        return;
    }
    let mut h = Hosts::new();
    let (c1, c2, c3) = (h.ns("c1"), h.ns("c2"), h.ns("c3"));
    // An allocation range over the host's own network is refused, saying why.
    let bad = h.weave(1, &["launch", "--ipalloc-range", "10.99.0.0/16"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("overlaps 10.99.0.1/24"), "{}", String::from_utf8_lossy(&bad.stderr));
    // Launch prints the peer name once the router is ready.
    assert_eq!(ok(h.weave(1, &["launch", "--name", "::1", "--nickname", "h1", "--ipalloc-init", "consensus=2"])).trim(), "00:00:00:00:00:01");
    assert_eq!(ok(h.weave(2, &["launch", "--name", "::2", "--nickname", "h2", "--ipalloc-init", "consensus=2", "10.99.0.1"])).trim(), "00:00:00:00:00:02");
    // A second launch is refused.
    let again = h.weave(1, &["launch"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already running"));

    // Addresses from IPAM (default and net:default), from a subnet, and exact.
    let c5 = h.ns("c5");
    // As Weave, attach prints bare addresses (`ps` shows the CIDRs).
    let a1 = ok(h.weave(1, &["attach", &c1])).trim().to_owned();
    assert!(a1.starts_with("10.3") && !a1.contains('/'), "{a1}");
    let a2 = ok(h.weave(2, &["attach", "net:default", &c2])).trim().to_owned();
    assert!(!a2.contains('/') && a2 != a1, "{a2}");
    assert_eq!(ok(h.weave(2, &["attach", "ip:10.32.9.9/24", &c3])).trim(), "10.32.9.9");
    let a5 = ok(h.weave(1, &["attach", "net:10.32.8.0/24", &c5])).trim().to_owned();
    assert!(a5.starts_with("10.32.8.") && !a5.contains('/'), "{a5}");
    let ip1 = a1.split('/').next().unwrap().to_owned();
    let ip2 = a2.split('/').next().unwrap().to_owned();
    let ip5 = a5.split('/').next().unwrap().to_owned();
    assert!(h.ping("c1", &ip2), "c1 -> c2 across hosts");
    assert!(h.ping("c2", &ip1), "c2 -> c1");
    // weaveDNS: containers are named after their namespace, resolvable
    // from other containers on other hosts.
    assert_eq!(ok(h.weave(1, &["dns-lookup", &c2])).trim(), ip2);
    let by_name = Command::new("ip").args(["netns", "exec", &c1, "ping", "-c", "1", "-W", "2", &c2]).output().unwrap();
    assert!(by_name.status.success(), "ping by name: {}{}", String::from_utf8_lossy(&by_name.stdout), String::from_utf8_lossy(&by_name.stderr));
    ok(h.weave(2, &["dns-add", "10.32.7.7", "-h", "web.weave.local"]));
    let end = Instant::now() + Duration::from_secs(5);
    while ok(h.weave(1, &["dns-lookup", "web"])).trim() != "10.32.7.7" {
        assert!(Instant::now() < end, "dns-add on host 2 reaches host 1");
        std::thread::sleep(Duration::from_millis(100));
    }
    let dns = ok(h.weave(1, &["status", "dns"]));
    // As Weave's: names in the domain are shown without it.
    let names: Vec<&str> = dns.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert!(names.contains(&c1.as_str()) && names.contains(&"web") && !dns.contains("weave.local"), "{dns}");
    ok(h.weave(2, &["dns-remove", "10.32.7.7", "-h", "web.weave.local"]));

    // Isolation: c3 (10.32.9.0/24) has no way to c5 (10.32.8.0/24).
    assert!(!Command::new("ip").args(["netns", "exec", &c3, "ping", "-c", "1", "-W", "1", &ip5]).output().unwrap().status.success());

    // ps, status, report.
    let ps = ok(h.weave(2, &["ps"]));
    assert!(ps.lines().any(|l| l.starts_with(&format!("{c2} ")) && l.ends_with(&format!("{a2}/12"))), "{ps}");
    assert!(ps.lines().any(|l| l.starts_with(&format!("{c3} ")) && l.ends_with("10.32.9.9/24")), "{ps}");
    let st = ok(h.weave(1, &["status"]));
    for want in [
        "        Service: router",
        "           Name: 00:00:00:00:00:01(h1)",
        "     Encryption: disabled",
        "    Connections: 1 (1 established)",
        "        Service: ipam",
        "         Status: ready",
        "          Range: 10.32.0.0/12",
    ] {
        assert!(st.contains(want), "{want:?} in\n{st}");
    }
    let conns = ok(h.weave(1, &["status", "connections"]));
    assert!(conns.contains("established") && conns.contains("00:00:00:00:00:02(h2)") && (conns.contains("fastdp") || conns.contains("sleeve")), "{conns}");
    let peers = ok(h.weave(2, &["status", "peers"]));
    assert!(peers.contains("00:00:00:00:00:01(h1)") && peers.contains("-> 10.99.0.1:6783"), "{peers}");
    let report: serde_json::Value = serde_json::from_str(&ok(h.weave(1, &["report"]))).unwrap();
    assert_eq!(report["Ready"], true);
    assert_eq!(report["Router"]["Name"], "00:00:00:00:00:01");
    // Weave's -f: a Go template over the report.
    assert_eq!(ok(h.weave(1, &["report", "-f", "{{.Router.Name}} {{len .Router.Peers}}"])).trim(), "00:00:00:00:00:01 2");
    assert_eq!(report["IPAM"]["Owned"][&c1][0], format!("{a1}/12").as_str());
    assert_eq!(report["Router"]["Connections"][0]["State"], "established");
    assert_eq!(report["IPAM"]["PendingAllocates"], serde_json::json!([]));
    assert_eq!(report["IPAM"]["PendingClaims"], serde_json::json!([]));
    assert!(report["IPAM"]["Entries"].as_array().is_some_and(|e| !e.is_empty() && e[0]["Size"].as_u64().is_some()), "{}", report["IPAM"]);
    assert!(report["Router"]["MACs"].as_array().is_some_and(|m| m.iter().any(|e| e["NickName"] == "h2")), "{}", report["Router"]);

    // An alternative CLI over the same gRPC API.
    let alt = Command::new("ip").args(["netns", "exec", &h.name("h1"), env!("CARGO_BIN_EXE_weave-peers"), "--state-dir"]).arg(h.state(1)).output().unwrap();
    let alt = ok(alt);
    assert!(alt.lines().any(|l| l.starts_with("00:00:00:00:00:02") && l.contains("h2") && l.contains("yes")), "{alt}");
    assert!(alt.lines().any(|l| l.contains("established") && l.ends_with("h2")), "{alt}");

    // Read-only HTTP: /status, /report, /metrics.
    let page = http_get(&h, 1, "/status");
    assert!(page.starts_with("HTTP/1.1 200") && page.contains("        Service: router"), "{page}");
    let page = http_get(&h, 1, "/report");
    assert!(page.contains("\"Ready\": true"), "{page}");
    let page = http_get(&h, 1, "/metrics");
    for m in [
        "weave_connections{",
        "weave_max_ips 1048576",
        "weave_ips{state=\"local-used\"}",
        "weave_dns_entries",
        "weave_ipam_pending_allocates 0",
        "weave_data_bytes_tx_total{",
        // Weave's label order and values: plain connections have an empty
        // encryption label, and the other encryption value of a (state,
        // type) that has connections is there at zero.
        "weave_connections{encryption=\"\",state=\"established\",type=",
        "weave_connections{encryption=\"yes\",state=\"established\",type=",
        "weave_ipam_unreachable_count 0",
    ] {
        assert!(page.contains(m), "{m} in\n{page}");
    }
    // And no (state, type) without a connection.
    for m in ["state=\"failed\"", "state=\"retrying\""] {
        assert!(!page.contains(m), "{m} in\n{page}");
    }
    assert!(http_get(&h, 1, "/nope").starts_with("HTTP/1.1 404"));
    // Weave's /status/<view> pages say what `weave status <view>` says.
    for view in ["connections", "targets", "peers", "dns", "ipam"] {
        // The mesh may change between the two looks (a connection being
        // retried): compare until two consecutive looks agree.
        let mut last = None;
        for _ in 0..10 {
            let page = http_get(&h, 1, &format!("/status/{view}"));
            let body = page.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
            // (Host 1 was launched with no targets.)
            assert!(page.starts_with("HTTP/1.1 200") && (view == "targets" || !body.is_empty()), "/status/{view}: {page}");
            let cli = ok(h.weave(1, &["status", view]));
            if body == cli {
                last = None;
                break;
            }
            last = Some((body, cli));
            std::thread::sleep(Duration::from_millis(300));
        }
        assert!(last.is_none(), "/status/{view} and weave status {view} differ: {last:?}");
    }
    assert!(http_get(&h, 1, "/status/nope").starts_with("HTTP/1.1 404"));

    // Bad input: usage errors exit 2, unknown containers exit 1.
    assert_eq!(h.weave(1, &["attach"]).status.code(), Some(2));
    assert_eq!(h.weave(1, &["frobnicate"]).status.code(), Some(2));
    let bad = h.weave(1, &["attach", "net:nonsense", &c1]);
    assert_eq!(bad.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&bad.stderr).lines().count(), 1);
    assert_eq!(h.weave(1, &["attach", "no-such-container"]).status.code(), Some(1));

    // Targets: connect and forget, remembered for --resume.
    ok(h.weave(1, &["connect", "10.99.0.2", "10.99.0.77"]));
    let t = ok(h.weave(1, &["status", "targets"]));
    assert!(t.contains("10.99.0.2") && t.contains("10.99.0.77") && !t.contains(":6783"), "as typed: {t}");
    ok(h.weave(1, &["forget", "10.99.0.77"]));
    assert!(!ok(h.weave(1, &["status", "targets"])).contains("10.99.0.77"));
    assert_eq!(h.weave(1, &["connect", "bad host name!"]).status.code(), Some(1));

    // Restart host 1's router (--resume: its targets come back): c1 keeps
    // its address and its traffic.
    ok(h.weave(1, &["stop"]));
    let down = h.weave(1, &["status"]);
    assert_eq!(down.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&down.stderr).contains("weave launch"), "says how to start one");
    ok(h.weave(1, &["launch", "--name", "::1", "--nickname", "h1", "--ipalloc-init", "consensus=2", "--resume"]));
    assert!(ok(h.weave(1, &["status", "targets"])).contains("10.99.0.2"), "targets resumed");
    let ps = ok(h.weave(1, &["ps"]));
    assert!(ps.contains(&a1), "c1 still listed with {a1}: {ps}");
    assert!(h.ping("c2", &ip1), "c2 -> c1 after the restart");
    // A new container does not get c1's address.
    let c4 = h.ns("c4");
    let a4 = ok(h.weave(1, &["attach", &c4])).trim().to_owned();
    assert_ne!(a4, a1);

    // Expose: host 1 reaches c2 on host 2 through the overlay.
    let e = ok(h.weave(1, &["expose"])).trim().to_owned();
    assert!(e.starts_with("10.3") && !e.contains('/'), "{e}");
    assert_eq!(ok(h.weave(1, &["expose"])).trim(), e, "idempotent");
    assert!(h.ping("h1", &ip2), "host 1 -> c2");
    let ps = ok(h.weave(1, &["ps"]));
    assert!(ps.lines().next().unwrap().starts_with("weave:expose ") && ps.contains(&e), "{ps}");
    assert_eq!(ok(h.weave(1, &["hide"])).trim(), e);
    assert!(!ok(h.weave(1, &["ps"])).contains("weave:expose"));

    // Detach frees; ethwe goes.
    assert_eq!(ok(h.weave(2, &["detach", &c3])).trim(), "10.32.9.9");
    let links = String::from_utf8_lossy(&Command::new("ip").args(["-n", &c3, "-o", "link"]).output().unwrap().stdout).into_owned();
    assert!(!links.contains("ethwe"), "{links}");
    assert!(!ok(h.weave(2, &["ps"])).contains(&c3));

    // Reset leaves nothing behind: no process, device, rule or state.
    for i in 1..=2 {
        ok(h.weave(i, &["reset"]));
        let ns = h.name(&format!("h{i}"));
        let links = String::from_utf8_lossy(&Command::new("ip").args(["-n", &ns, "-o", "link"]).output().unwrap().stdout).into_owned();
        assert!(!links.contains("weave") && !links.contains("vethwe") && !links.contains("vxlan"), "host {i}: {links}");
        let nft = Command::new("ip").args(["netns", "exec", &ns, "nft", "list", "table", "ip", "weave"]).output().unwrap();
        assert!(!nft.status.success(), "nftables table left on host {i}");
        let left: Vec<_> =
            std::fs::read_dir(h.state(i)).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|f| f != "weave.log").collect();
        // The identity key is the host's, as its name is: reset keeps it.
        assert_eq!(left, ["identity.key"], "state left on host {i}");
        assert_eq!(h.weave(i, &["status"]).status.code(), Some(1), "router gone on host {i}");
    }
    let links = String::from_utf8_lossy(&Command::new("ip").args(["-n", &c1, "-o", "link"]).output().unwrap().stdout).into_owned();
    assert!(!links.contains("ethwe"), "container links removed: {links}");
    for c in [&c1, &c2, &c4, &c5] {
        assert!(!std::path::Path::new(&format!("/etc/netns/{c}/resolv.conf")).exists(), "resolv.conf of {c} left");
    }
}

#[test]
fn password_kill_dash_nine_and_rmpeer() {
    if !require_root() {
        return;
    }
    let mut h = Hosts::new();
    let (c1, c2) = (h.ns("c1"), h.ns("c2"));
    ok(h.weave(1, &["launch", "--name", "::1", "--nickname", "h1", "--password", "s3cret", "--ipalloc-init", "consensus=2"]));
    ok(h.weave(2, &["launch", "--name", "::2", "--nickname", "h2", "--password", "s3cret", "--ipalloc-init", "consensus=2", "10.99.0.1"]));
    let a1 = ok(h.weave(1, &["attach", &c1])).trim().to_owned();
    let a2 = ok(h.weave(2, &["attach", &c2])).trim().to_owned();
    assert!(h.ping("c1", a2.split('/').next().unwrap()), "encrypted overlay carries traffic");
    let st = ok(h.weave(1, &["status"]));
    assert!(st.contains("     Encryption: enabled"), "{st}");
    let conns = ok(h.weave(1, &["status", "connections"]));
    assert!(conns.contains(" encrypted ") && conns.contains("sleeve"), "{conns}");
    ok(h.weave(1, &["prime"]));
    let ipam = ok(h.weave(1, &["status", "ipam"]));
    assert!(ipam.contains("00:00:00:00:00:01(h1)") && ipam.contains("00:00:00:00:00:02(h2)"), "{ipam}");

    // kill -9 host 2's router (by its PID).
    let pid: i32 = std::fs::read_to_string(h.state(2).join("weave.pid")).unwrap().trim().parse().unwrap();
    assert!(Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap().success());
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let ipam = ok(h.weave(1, &["status", "ipam"]));
        if ipam.lines().any(|l| l.contains("(h2)") && l.ends_with("- unreachable!")) {
            break;
        }
        assert!(Instant::now() < end, "h2 never became unreachable:\n{ipam}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = ok(h.weave(1, &["rmpeer", "h2"]));
    let n: u64 = out.split_whitespace().next().unwrap().parse().unwrap();
    assert!(n > 0, "{out}");
    let ipam = ok(h.weave(1, &["status", "ipam"]));
    // Weave's columns: the peer padded to 37, the count right-aligned in 8.
    assert!(ipam.lines().next().is_some_and(|l| l.starts_with(&format!("{:<37}  1048576 IPs (100.0% of total) (", "00:00:00:00:00:01(h1)"))), "{ipam}");
    // Allocation continues, without reusing c1's address.
    let c3 = h.ns("c3");
    let a3 = ok(h.weave(1, &["attach", &c3])).trim().to_owned();
    assert_ne!(a3, a1);
    // The killed router left its devices and c2's resolv.conf; reset
    // cleans them up.
    assert!(std::path::Path::new(&format!("/etc/netns/{c2}/resolv.conf")).exists());
    ok(h.weave(2, &["reset"]));
    assert!(!std::path::Path::new(&format!("/etc/netns/{c2}/resolv.conf")).exists(), "resolv.conf left by the killed router");
    let links = String::from_utf8_lossy(&Command::new("ip").args(["-n", &h.name("h2"), "-o", "link"]).output().unwrap().stdout).into_owned();
    assert!(!links.contains("weave"), "{links}");
}

#[test]
fn the_orchestrator_example_allocates_names_and_pings_by_name() {
    if !require_root() {
        return;
    }
    let mut h = Hosts::new();
    let (c1, c2) = (h.ns("c1"), h.ns("c2"));
    let spawn = |i: usize, container: &str, peers: &[&str]| {
        Command::new("ip")
            .args(["netns", "exec", &h.name(&format!("h{i}")), env!("CARGO_BIN_EXE_orchestrator"), &format!("::{i}"), &format!("10.99.0.{i}:6783"), container])
            .args(peers)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start orchestrator")
    };
    let mut o1 = spawn(1, &c1, &[]);
    let mut o2 = spawn(2, &c2, &["10.99.0.1"]);
    // Each prints its container and the address IPAM gave it.
    let first_line = |o: &mut std::process::Child| {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(o.stdout.take().unwrap()).read_line(&mut line).unwrap();
        line
    };
    let (l1, l2) = (first_line(&mut o1), first_line(&mut o2));
    let by_name = h.ping("c1", &format!("{c2}.weave.local"));
    let back = h.ping("c2", &format!("{c1}.weave.local"));
    for o in [&mut o1, &mut o2] {
        let _ = o.kill();
        let _ = o.wait();
    }
    let a1 = l1.split_whitespace().nth(1).unwrap_or_default().to_owned();
    let a2 = l2.split_whitespace().nth(1).unwrap_or_default().to_owned();
    let range: ipnet::Ipv4Net = "10.32.0.0/12".parse().unwrap();
    let in_range = |a: &str| a.parse::<ipnet::Ipv4Net>().is_ok_and(|n| range.contains(&n.addr()));
    assert!(in_range(&a1) && in_range(&a2) && a1 != a2, "addresses from IPAM: {l1:?} {l2:?}");
    assert!(by_name && back, "c1 and c2 ping each other by name through the orchestrators' overlay and weaveDNS");
}

#[test]
fn the_default_peer_name_is_stable_per_host_conn_limit_zero_is_no_limit_and_weave_no_fastdp_is_weaves() {
    if !require_root() {
        return;
    }
    let h = Hosts::new();
    // Without --name, the same name on every launch in this namespace, and
    // a different one in another.
    let n1 = ok(h.weave(1, &["launch", "--ipalloc-range", "", "--no-dns"])).trim().to_owned();
    ok(h.weave(1, &["stop"]));
    assert_eq!(ok(h.weave(1, &["launch", "--ipalloc-range", "", "--no-dns"])).trim(), n1);
    ok(h.weave(1, &["stop"]));
    // --conn-limit 0 means no limit, as in Weave (not "refuse all").
    ok(h.weave(1, &["launch", "--ipalloc-range", "", "--no-dns", "--conn-limit", "0"]));
    // WEAVE_NO_FASTDP=1, as Weave users set it (not only "true").
    let n2 = ok(h.weave_with(2, &["launch", "--ipalloc-range", "", "--no-dns", "10.99.0.1"], &[("WEAVE_NO_FASTDP", "1")])).trim().to_owned();
    assert_ne!(n1, n2);
    let end = Instant::now() + Duration::from_secs(10);
    while !ok(h.weave(1, &["status"])).contains("(1 established)") {
        assert!(Instant::now() < end, "host 2 connects to host 1 under --conn-limit 0: {}", ok(h.weave(1, &["status"])));
        std::thread::sleep(Duration::from_millis(200));
    }
    let conns = ok(h.weave(2, &["status", "connections"]));
    assert!(conns.contains(" sleeve ") && conns.contains("fast path disabled here"), "WEAVE_NO_FASTDP=1: sleeve only: {conns}");
    for i in 1..=2 {
        ok(h.weave(i, &["reset"]));
    }
}

/// Weave's address grammar (its test 500_weave_multi_cidr): a subnet is
/// given by its network address and is at most a /30; detach and hide take
/// `net:` subnets too, meaning the addresses in them.
#[test]
fn the_address_grammar_is_weaves() {
    let Some((h, c1)) = one_router() else { return };
    for bad in ["net:10.32.3.2/30", "net:10.32.3.0/31", "net:10.32.3.1/32"] {
        let started = Instant::now();
        let out = h.weave(1, &["attach", bad, &c1]);
        assert_eq!(out.status.code(), Some(1), "{bad} is refused");
        assert!(started.elapsed() < Duration::from_secs(5), "{bad} is refused at once, not after waiting");
    }
    let a = ok(h.weave(1, &["attach", "net:10.32.5.0/24", "net:10.32.6.0/24", &c1]));
    assert_eq!(a.split_whitespace().count(), 2, "{a}");
    // Weave's multicast route, and its status line for a lone peer.
    let routes = ok(Command::new("ip").args(["-n", &c1, "route"]).output().unwrap());
    assert!(routes.lines().any(|l| l.trim() == "224.0.0.0/4 dev ethwe scope link"), "{routes}");
    let st = ok(h.weave(1, &["status"]));
    assert!(st.lines().any(|l| l.trim() == "Peers: 1"), "{st}");
    // weave dns-args: what `docker run` needs to resolve through weaveDNS,
    // and that server answers there.
    let args = ok(h.weave(1, &["dns-args"]));
    let (dns, search) = args.trim().split_once(' ').unwrap_or_default();
    assert_eq!(search, "--dns-search=weave.local.", "{args}");
    let server = dns.strip_prefix("--dns=").expect("--dns=ADDR");
    let answer = ok(Command::new("ip").args(["netns", "exec", &c1, "busybox", "nslookup", &format!("{c1}.weave.local"), server]).output().unwrap());
    assert!(answer.contains(a.split_whitespace().next().unwrap().split('/').next().unwrap()), "{answer}");
    // Only the address in 10.32.5.0/24 goes.
    let gone = ok(h.weave(1, &["detach", "net:10.32.5.0/24", &c1]));
    assert!(gone.trim().starts_with("10.32.5."), "{gone}");
    let left = ok(h.weave(1, &["ps", &c1]));
    assert!(left.contains("10.32.6.") && !left.contains("10.32.5."), "{left}");
    assert_eq!(h.weave(1, &["detach", "net:10.32.5.0/24", &c1]).status.code(), Some(1), "nothing left in that subnet");
    // hide net:CIDR hides what is exposed in it.
    ok(h.weave(1, &["expose", "net:10.32.7.0/24"]));
    let e8 = ok(h.weave(1, &["expose", "net:10.32.8.0/24"]));
    let hidden = ok(h.weave(1, &["hide", "net:10.32.7.0/24"]));
    assert!(hidden.trim().starts_with("10.32.7."), "{hidden}");
    let still = ok(h.weave(1, &["hide"]));
    assert_eq!(still.trim(), e8.trim(), "the other exposed address stayed until now");
    ok(h.weave(1, &["reset"]));
}

/// Weave's spellings as a user types them: `--no-fastdp PEER` takes the
/// peer as a peer (the flag takes no value) and connects; `--log-level=warning`
/// keeps warnings and drops information.
#[test]
fn launch_no_fastdp_with_a_peer_connects_and_log_level_warning_logs_warnings() {
    if !require_root() {
        return;
    }
    let h = Hosts::new();
    ok(h.weave(1, &["launch", "--name", "::1", "--no-docker", "--log-level=warning", "--password", "right"]));
    // A peer with the wrong password: host 1 warns as it closes the connection.
    ok(h.weave(2, &["launch", "--name", "::2", "--no-docker", "--password", "wrong", "--no-fastdp", "10.99.0.1"]));
    let log1 = || std::fs::read_to_string(h.state(1).join("weave.log")).unwrap_or_default();
    common::eventually(15, "host 1 warns of the refused handshake", || log1().contains(" WARN "));
    assert!(!log1().contains(" INFO "), "--log-level=warning logs no information:\n{}", log1());
    ok(h.weave(2, &["stop"]));
    ok(h.weave(2, &["launch", "--name", "::2", "--no-docker", "--password", "right", "--no-fastdp", "10.99.0.1"]));
    common::eventually(15, "--no-fastdp 10.99.0.1 connects", || {
        ok(h.weave(2, &["status", "connections"])).lines().any(|l| l.contains("10.99.0.1:6783") && l.contains("established") && l.contains("sleeve"))
    });
    assert_eq!(ok(h.weave(2, &["status", "targets"])).trim(), "10.99.0.1", "the peer is a target, not the flag's value");
    for i in 1..=2 {
        ok(h.weave(i, &["reset"]));
    }
}
