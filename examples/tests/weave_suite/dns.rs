//! Weave Net 2.8.1's weaveDNS integration tests (`test/2NN_*_test.sh` in
//! weaveworks/weave), ported to network-namespace hosts in the style of
//! `weave_suite.rs`: each keeps the original's steps and assertions, in
//! its order, with the original's number in its name.
//!
//! Translation:
//! * `start_container[_with_dns] $HOSTn [CIDR] --name=cN` is a namespace
//!   `cN` attached on host n with `-h cN.weave.local`: Weave's `dns_args`
//!   (config.sh) gives every named test container that hostname, and the
//!   namespace's own name carries the test's prefix. Both helpers make the
//!   container resolve through weaveDNS; here the router does that by
//!   writing `/etc/netns/<ns>/resolv.conf`, which `ip netns exec` mounts.
//!   A container started `--without-dns` (or anonymous, with the
//!   container ID as hostname, which Weave does not register) is attached
//!   with `--without-dns` where that matters.
//! * `exec_on ... getent hosts X` is `ip netns exec <ns> getent hosts X`;
//!   `dig` (not installed here) is [`dig`], a small DNS client run in the
//!   container's namespace against the nameserver of its resolv.conf,
//!   falling back to TCP on a truncated UDP reply as dig does.
//! * `rm_containers` / `docker kill` of an attached container is deleting
//!   its namespace (the kernel deletes its veth; the router notices);
//!   `docker start` of a proxy-run container is a new namespace attached
//!   again, as the proxy would.
//! * The originals' one-shot assertions retry for a few seconds: the
//!   routers here answer as soon as gossip arrives, with no `docker run`
//!   in between to give them time.
//! * Routers run with `--no-docker` (Docker plays no part) and are named
//!   `::n`. The upstream resolver is the host's, unreachable from the
//!   hosts' namespaces: nothing leaves them. 250 needs an upstream that
//!   answers, and gets a stub inside host 1.
//! * `end_suite`'s check that the machine has no defunct processes is not
//!   taken: `ps` sees the whole machine, shared with other tests.

use std::fmt::Debug;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weave_dataplane::netlink::Netns;

use crate::common::{eventually, ok, require_root, Hosts};

/// `weave launch` on host `i`, as the originals' `weave_on $HOSTi launch
/// ARGS`.
fn launch(h: &Hosts, i: usize, extra: &[&str]) {
    let name = format!("::{i}");
    ok(h.weave(i, &[&["launch", "--name", &name, "--no-docker"], extra].concat()));
}

/// `weave attach ARGS` on host `i`; the addresses it printed.
fn attach(h: &Hosts, i: usize, args: &[&str]) -> String {
    ok(h.weave(i, &[&["attach"], args].concat())).trim().to_owned()
}

/// `rm_containers` / `docker kill`: the namespace goes, and its veth with
/// it.
fn rm(h: &Hosts, c: &str) {
    ok(Command::new("ip").args(["netns", "del", &h.name(c)]).output().unwrap());
}

/// A namespace made again after [`rm`] (already in `h`'s list).
fn readd(h: &Hosts, c: &str) -> String {
    let full = h.name(c);
    ok(Command::new("ip").args(["netns", "add", &full]).output().unwrap());
    full
}

/// How long a name check retries: gossip and a deleted namespace's veth
/// going (which the kernel does in the background) can take a while on a
/// loaded CI machine.
const WAIT: u64 = 30;

/// Retry `f` for up to `secs` seconds until `good` holds of its value;
/// fail with `what` and the last value.
fn until<T: Debug>(secs: u64, what: &str, mut f: impl FnMut() -> T, good: impl Fn(&T) -> bool) -> T {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        let v = f();
        if good(&v) {
            return v;
        }
        assert!(Instant::now() < end, "{what}: last {v:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `exec_on ... c getent hosts KEY`: exit code and output.
fn getent(h: &Hosts, c: &str, key: &str) -> (Option<i32>, String) {
    let o = Command::new("ip").args(["netns", "exec", &h.name(c), "getent", "hosts", key]).output().unwrap();
    (o.status.code(), String::from_utf8_lossy(&o.stdout).into_owned())
}

/// `tr -s ' '` over each line (getent pads the address column).
fn squeeze(s: &str) -> String {
    s.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect::<Vec<_>>().join("\n")
}

/// config.sh's `assert_dns_record`: `name` resolves in `c` (to one of
/// `ips`, if any are given; output at all otherwise), and each of `ips`
/// resolves back to `name` (compared in lower case).
fn assert_dns_record(h: &Hosts, c: &str, name: &str, ips: &[&str]) {
    until(
        WAIT,
        &format!("getent hosts {name} in {c} gives one of {ips:?}"),
        || getent(h, c, name),
        |(code, out)| {
            *code == Some(0)
                && if ips.is_empty() { !out.trim().is_empty() } else { out.lines().any(|l| l.split_whitespace().next().is_some_and(|a| ips.contains(&a))) }
        },
    );
    for ip in ips {
        let want = format!("{ip} {name}").to_lowercase();
        until(WAIT, &format!("getent hosts {ip} in {c} is {want:?}"), || squeeze(&getent(h, c, ip).1).to_lowercase(), |got| *got == want);
    }
}

/// config.sh's `assert_no_dns_record`: getent says "not found" (exit 2).
fn assert_no_dns_record(h: &Hosts, c: &str, name: &str) {
    until(WAIT, &format!("getent hosts {name} in {c} finds nothing (exit 2)"), || getent(h, c, name), |(code, _)| *code == Some(2));
}

/// config.sh's `assert_dns_a_record`: `getent hosts name | cut -f 1,2` is
/// exactly `ip exp_name` (`name` by default).
fn assert_dns_a_record(h: &Hosts, c: &str, name: &str, ip: &str, exp_name: Option<&str>) {
    let want = format!("{ip} {}", exp_name.unwrap_or(name));
    until(
        WAIT,
        &format!("getent hosts {name} in {c} is {want:?}"),
        || {
            let (_, out) = getent(h, c, name);
            squeeze(&out).lines().map(|l| l.split(' ').take(2).collect::<Vec<_>>().join(" ")).collect::<Vec<_>>().join("\n")
        },
        |got| *got == want,
    );
}

/// Docker's `--add-host NAME:IP` for a namespace: its `/etc/hosts`, which
/// `ip netns exec` mounts from `/etc/netns/<ns>/hosts` (`Hosts`' drop
/// removes the directory).
fn add_hosts(full_ns: &str, entries: &[(&str, &str)]) {
    let dir = std::path::Path::new("/etc/netns").join(full_ns);
    std::fs::create_dir_all(&dir).unwrap();
    let mut text = String::from("127.0.0.1\tlocalhost\n");
    for (name, ip) in entries {
        text.push_str(&format!("{ip}\t{name}\n"));
    }
    std::fs::write(dir.join("hosts"), text).unwrap();
}

// ---- A small DNS client: the originals' `dig`. ----

const A: u16 = 1;
const PTR: u16 = 12;
const MX: u16 = 15;
const NOERROR: u8 = 0;
const NXDOMAIN: u8 = 3;

#[derive(Debug)]
struct Rr {
    name: String,
    rtype: u16,
    a: Option<Ipv4Addr>,
    ptr: Option<String>,
}

#[derive(Debug)]
struct Reply {
    rcode: u8,
    tc: bool,
    answers: Vec<Rr>,
}

impl Reply {
    /// What `dig +short` prints, one line per answer.
    fn short(&self) -> Vec<String> {
        self.answers.iter().map(|r| r.a.map(|a| a.to_string()).or_else(|| r.ptr.clone()).unwrap_or_default()).collect()
    }
}

fn u16_at(m: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([m[i], m[i + 1]])
}

fn encode_query(id: u16, name: &str, qtype: u16, edns: Option<u16>) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend(id.to_be_bytes());
    m.extend(0x0100u16.to_be_bytes()); // RD
    m.extend(1u16.to_be_bytes());
    m.extend([0, 0, 0, 0]);
    m.extend(u16::from(edns.is_some()).to_be_bytes());
    for l in name.trim_end_matches('.').split('.').filter(|l| !l.is_empty()) {
        m.push(l.len() as u8);
        m.extend(l.as_bytes());
    }
    m.push(0);
    m.extend(qtype.to_be_bytes());
    m.extend(1u16.to_be_bytes());
    if let Some(size) = edns {
        m.push(0);
        m.extend(41u16.to_be_bytes());
        m.extend(size.to_be_bytes());
        m.extend([0, 0, 0, 0, 0, 0]);
    }
    m
}

/// A (possibly compressed) name at `pos`, and where the record goes on.
fn read_name(m: &[u8], mut pos: usize) -> (String, usize) {
    let (mut labels, mut end, mut hops) = (Vec::new(), None, 0);
    loop {
        let len = m[pos] as usize;
        if len & 0xc0 == 0xc0 {
            end.get_or_insert(pos + 2);
            pos = ((len & 0x3f) << 8) | m[pos + 1] as usize;
            hops += 1;
            assert!(hops < 64, "compression loop");
            continue;
        }
        if len == 0 {
            end.get_or_insert(pos + 1);
            break;
        }
        labels.push(String::from_utf8_lossy(&m[pos + 1..pos + 1 + len]).into_owned());
        pos += 1 + len;
    }
    (labels.join(".") + ".", end.expect("set"))
}

fn decode_reply(m: &[u8]) -> Reply {
    let flags = u16_at(m, 2);
    let (qd, an) = (u16_at(m, 4), u16_at(m, 6));
    let mut pos = 12;
    for _ in 0..qd {
        pos = read_name(m, pos).1 + 4;
    }
    let mut answers = Vec::new();
    for _ in 0..an {
        let (name, p) = read_name(m, pos);
        let (rtype, rdlen) = (u16_at(m, p), u16_at(m, p + 8) as usize);
        let rd = p + 10;
        let a = (rtype == A && rdlen == 4).then(|| Ipv4Addr::new(m[rd], m[rd + 1], m[rd + 2], m[rd + 3]));
        let ptr = (rtype == PTR).then(|| read_name(m, rd).0);
        answers.push(Rr { name, rtype, a, ptr });
        pos = rd + rdlen;
    }
    Reply { rcode: (flags & 0xf) as u8, tc: flags & 0x0200 != 0, answers }
}

/// The nameserver of the container's resolv.conf (written by the router).
fn nameserver(h: &Hosts, c: &str) -> SocketAddr {
    let path = std::path::Path::new("/etc/netns").join(h.name(c)).join("resolv.conf");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let ip = text.lines().find_map(|l| l.strip_prefix("nameserver ")).unwrap_or_else(|| panic!("no nameserver in {text}"));
    SocketAddr::new(ip.trim().parse().unwrap(), 53)
}

/// One exchange with `server` from inside `c`'s namespace.
fn exchange(h: &Hosts, c: &str, server: SocketAddr, query: Vec<u8>, tcp: bool) -> Vec<u8> {
    Netns::named(&h.name(c))
        .run(move || {
            use std::io::{Read, Write};
            let timeout = Some(Duration::from_secs(5));
            if tcp {
                let mut s = std::net::TcpStream::connect_timeout(&server, Duration::from_secs(5))?;
                s.set_read_timeout(timeout)?;
                s.write_all(&(query.len() as u16).to_be_bytes())?;
                s.write_all(&query)?;
                let mut len = [0; 2];
                s.read_exact(&mut len)?;
                let mut buf = vec![0; u16::from_be_bytes(len) as usize];
                s.read_exact(&mut buf)?;
                Ok(buf)
            } else {
                let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
                s.set_read_timeout(timeout)?;
                s.connect(server)?;
                s.send(&query)?;
                let mut buf = vec![0; 65536];
                let n = s.recv(&mut buf)?;
                buf.truncate(n);
                Ok(buf)
            }
        })
        .unwrap_or_else(|e| panic!("DNS query to {server} from {c}: {e}"))
}

/// `exec_on ... c dig [+tcp] [+bufsize=N] NAME QTYPE`: over UDP (no EDNS
/// unless a buffer size is given), again over TCP when the reply is
/// truncated, as dig does.
fn dig(h: &Hosts, c: &str, name: &str, qtype: u16, tcp: bool, bufsize: Option<u16>) -> Reply {
    let server = nameserver(h, c);
    let q = encode_query(0x5eed, name, qtype, bufsize);
    let r = decode_reply(&exchange(h, c, server, q.clone(), tcp));
    if r.tc && !tcp {
        decode_reply(&exchange(h, c, server, q, true))
    } else {
        r
    }
}

/// An upstream resolver inside host `i`'s namespace that says NXDOMAIN to
/// everything (the Internet's resolver does so for `.invalid`). Stops when
/// dropped.
struct NxUpstream {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NxUpstream {
    fn start(h: &Hosts, i: usize, addr: &str) -> Self {
        let a = addr.to_owned();
        let sock = Netns::named(&h.name(&format!("h{i}")))
            .run(move || {
                let s = std::net::UdpSocket::bind(a.as_str())?;
                s.set_read_timeout(Some(Duration::from_millis(200)))?;
                Ok(s)
            })
            .expect("stub upstream");
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !s2.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else { continue };
                let q = &buf[..n];
                if n < 12 {
                    continue;
                }
                let qend = read_name(q, 12).1 + 4;
                let mut r = q[..qend.min(n)].to_vec();
                let flags = 0x8000 | (u16_at(q, 2) & 0x0100) | 0x0080 | u16::from(NXDOMAIN);
                r[2..4].copy_from_slice(&flags.to_be_bytes());
                r[6..12].fill(0);
                let _ = sock.send_to(&r, from);
            }
        });
        Self { stop, thread: Some(thread) }
    }
}

impl Drop for NxUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How many peers host `i`'s router knows (itself included).
fn peer_count(h: &Hosts, i: usize) -> usize {
    ok(h.weave(i, &["report", "-f", "{{range .Router.Peers}}{{.Name}}{{\"\\n\"}}{{end}}"])).lines().filter(|l| !l.is_empty()).count()
}

/// 200_dns: resolve names on a single host; `weave expose -h` names;
/// `--add-host` entries still win. The `--add-host` arguments are Docker's
/// `run` flags there (Docker writes them in the container's /etc/hosts),
/// so here the test writes the namespace's /etc/hosts itself.
#[test]
fn t200_dns() {
    if !require_root() {
        return;
    }
    let mut h = Hosts::new();
    let (c1_ip, c2_ip, name) = ("10.2.0.78", "10.2.0.34", "seetwo.weave.local");
    let statics = [("static1.name", "10.9.9.9"), ("static2.name", "10.10.10.10")];

    launch(&h, 1, &[]);

    let c2 = h.ns("c2");
    add_hosts(&c2, &statics);
    attach(&h, 1, &[&format!("{c2_ip}/24"), "-h", name, &c2]);
    let c1 = h.ns("c1");
    add_hosts(&c1, &statics);
    attach(&h, 1, &[&format!("{c1_ip}/24"), "-h", "c1.weave.local", &c1]);

    assert_dns_record(&h, "c1", name, &[c2_ip]);

    // Check that 'weave expose -h' names are added to DNS
    ok(h.weave(1, &["expose"]));
    let expose = ok(h.weave(1, &["expose", "-h", "testexpose1.weave.local"])).trim().to_owned();
    ok(h.weave(1, &["expose", "-h", "testexpose2.weave.local"]));
    assert_dns_record(&h, "c1", "testexpose1.weave.local", &[&expose]);
    assert_dns_record(&h, "c1", "testexpose2.weave.local", &[]);

    // check we respect the --add-host arguments
    for c in ["c1", "c2"] {
        for (n, ip) in statics {
            assert_dns_a_record(&h, c, n, ip, None);
        }
    }
}

/// 210_dns_cross_hosts_3 (`Hosts::with(3)`): resolve names across three
/// hosts, names shared by containers on every host, gossip of removals
/// (tombstones) through five kill/start rounds, several addresses for one
/// name, and IPAM addresses. `proxy_start_container $host --name=foo` (the proxy names
/// it `foo.weave.local` and attaches it from IPAM) is a namespace
/// `fooN` per host attached with `-h foo.weave.local`; `docker kill` is
/// deleting it, `docker start` a new one attached again (the proxy's
/// re-attach).
#[test]
fn t210_dns_cross_hosts() {
    if !require_root() {
        return;
    }
    let mut h = Hosts::with(3);
    let (c1_ip, c2_ip, c2a, c2b) = ("10.2.3.78", "10.2.3.34", "10.2.3.35", "10.2.3.36");
    let (name2, name4) = ("seetwo.weave.local", "seefour.weave.local");
    let hosts = ["10.99.0.1", "10.99.0.2", "10.99.0.3"];

    for i in 1..=3 {
        launch(&h, i, &[&["--ipalloc-range", "10.2.4.0/24"], &hosts[..]].concat());
    }
    // Allow topology updates to propagate (the original sleeps 2 s).
    eventually(20, "all three routers know each other", || (1..=3).all(|i| peer_count(&h, i) == 3));

    // Basic test
    let c2 = h.ns("c2");
    attach(&h, 2, &[&format!("{c2_ip}/24"), "-h", name2, &c2]);
    let c1 = h.ns("c1");
    attach(&h, 1, &[&format!("{c1_ip}/24"), "-h", "c1.weave.local", &c1]);

    assert_dns_record(&h, "c1", name2, &[c2_ip]);

    // 2 containers on each host, all with the same names
    let start = |h: &Hosts, i: usize, short: &str, name: &str| attach(h, i, &["-h", name, &h.name(short)]);
    let (mut foo_ips, mut bar_ips) = (Vec::new(), Vec::new());
    for i in 1..=3 {
        h.ns(&format!("foo{i}"));
        foo_ips.push(start(&h, i, &format!("foo{i}"), "foo.weave.local"));
        h.ns(&format!("bar{i}"));
        bar_ips.push(start(&h, i, &format!("bar{i}"), "bar.weave.local"));
    }

    let baz = h.ns("baz");
    attach(&h, 1, &["-h", "baz.weave.local", &baz]);
    let strs = |v: &[String]| v.iter().map(String::as_str).collect::<Vec<_>>().join(" ");
    assert_dns_record(&h, "baz", "foo.weave.local", &foo_ips.iter().map(String::as_str).collect::<Vec<_>>());
    assert_dns_record(&h, "baz", "bar.weave.local", &bar_ips.iter().map(String::as_str).collect::<Vec<_>>());

    // now stop and start the containers a bunch of times; this tests
    // gossip dns tombstone behaviour
    for round in 1..=5 {
        for i in 1..=3 {
            rm(&h, &format!("foo{i}"));
            rm(&h, &format!("bar{i}"));
        }

        assert_no_dns_record(&h, "baz", "foo.weave.local");
        assert_no_dns_record(&h, "baz", "bar.weave.local");

        foo_ips.clear();
        bar_ips.clear();
        for i in 1..=3 {
            readd(&h, &format!("foo{i}"));
            foo_ips.push(start(&h, i, &format!("foo{i}"), "foo.weave.local"));
            readd(&h, &format!("bar{i}"));
            bar_ips.push(start(&h, i, &format!("bar{i}"), "bar.weave.local"));
        }
        eprintln!("round {round}: foo {} bar {}", strs(&foo_ips), strs(&bar_ips));

        assert_dns_record(&h, "baz", "foo.weave.local", &foo_ips.iter().map(String::as_str).collect::<Vec<_>>());
        assert_dns_record(&h, "baz", "bar.weave.local", &bar_ips.iter().map(String::as_str).collect::<Vec<_>>());
    }

    // resolution for names mapped to multiple addresses
    ok(h.weave(2, &["dns-add", c2a, &c2, "-h", name2]));
    ok(h.weave(2, &["dns-add", c2b, &c2, "-h", name2]));
    assert_dns_record(&h, "c1", name2, &[c2_ip, c2a, c2b]);

    // resolution when containers addresses come from IPAM
    let c4 = h.ns("c4");
    let c4_ip = attach(&h, 2, &["-h", name4, &c4]);
    let c3 = h.ns("c3");
    attach(&h, 1, &["-h", "c3.weave.local", &c3]);
    assert_dns_record(&h, "c3", name4, &[&c4_ip]);
}

/// 215_stale_dns_3 (`Hosts::with(3)`): a name whose container died while
/// its router was down must not come back from a peer whose gossip was held up. Hosts in
/// a line (1 <- 2 <- 3), no discovery; host 3 drops what host 2 sends
/// while host 1's router is stopped, its container removed, and the
/// router launched again, now peering with host 3 directly.
#[test]
fn t215_stale_dns() {
    if !require_root() {
        return;
    }
    let mut h = Hosts::with(3);
    let iptables = |h: &Hosts, op: &str| {
        ok(Command::new("ip").args(["netns", "exec", &h.name("h3"), "iptables", op, "INPUT", "-s", "10.99.0.2", "-j", "DROP"]).output().unwrap());
    };

    launch(&h, 1, &["--no-discovery"]);
    launch(&h, 2, &["--no-discovery", "10.99.0.1"]);
    launch(&h, 3, &["--no-discovery", "10.99.0.2"]);

    // Allow topology updates to propagate (the original sleeps 2 s).
    eventually(20, "all three routers know each other", || (1..=3).all(|i| peer_count(&h, i) == 3));

    let c1 = h.ns("c1");
    let c1_ip = attach(&h, 1, &["-h", "c1.weave.local", &c1]);
    let c3 = h.ns("c3");
    attach(&h, 3, &["-h", "c3.weave.local", &c3]);

    assert_dns_record(&h, "c3", "c1.weave.local", &[&c1_ip]);

    // Stall the propagation of gossip, stop weave and kill the container
    iptables(&h, "-A");

    ok(h.weave(1, &["stop"]));
    rm(&h, "c1");

    launch(&h, 1, &["--no-discovery", "10.99.0.3"]);

    // Now re-enable gossip from host2 to host3
    iptables(&h, "-D");

    // allow some time for connections to reform and updates to propagate
    std::thread::sleep(Duration::from_secs(2));

    assert_no_dns_record(&h, "c3", "c1.weave.local");
    // The check above retries; the stale entry must not come back later
    // either (host 2's held-up gossip may arrive after a retransmit).
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(getent(&h, "c3", "c1.weave.local").0, Some(2), "c1.weave.local came back");
}

/// 220_dns_custom: resolve names in a custom domain, given with and
/// without a trailing dot. (config.sh's `dns_args` names c1
/// `c1.weave.local` whatever the domain, so c1 is attached with that.)
#[test]
fn t220_dns_custom() {
    if !require_root() {
        return;
    }
    let mut h = Hosts::new();
    let (c1_ip, c2_ip, domain) = ("10.2.56.34", "10.2.54.91", "foo.bar");
    let name = format!("seetwo.{domain}");

    // Check with a trailing dot on domain
    launch(&h, 1, &["--dns-domain", &format!("{domain}.")]);

    let c2 = h.ns("c2");
    attach(&h, 1, &[&format!("{c2_ip}/24"), "-h", &name, &c2]);
    let c1 = h.ns("c1");
    attach(&h, 1, &[&format!("{c1_ip}/24"), "-h", "c1.weave.local", &c1]);

    assert_dns_record(&h, "c1", &name, &[c2_ip]);

    rm(&h, "c1");
    rm(&h, "c2");
    ok(h.weave(1, &["stop"]));

    // Check without a trailing dot on domain
    launch(&h, 1, &["--dns-domain", domain]);

    readd(&h, "c2");
    attach(&h, 1, &[&format!("{c2_ip}/24"), "-h", &name, &c2]);
    readd(&h, "c1");
    attach(&h, 1, &[&format!("{c1_ip}/24"), "-h", "c1.weave.local", &c1]);

    assert_dns_record(&h, "c1", &name, &[c2_ip]);
}

/// 230_dns_unqualified: unqualified names resolve through the search
/// domain; weaveDNS itself qualifies a single-label query ("broken
/// resolvers" that do not search). The proxy-run containers (`-e
/// WEAVE_CIDR=...`) are namespaces attached with those addresses; the
/// last container is anonymous. The final `getent hosts mysql` ran in an
/// Alpine container whose resolver sent the bare name; glibc's here
/// would search, so the query for `mysql.` is sent directly and the
/// answer read as getent prints it (`ADDRESS OWNER-NAME`).
#[test]
fn t230_dns_unqualified() {
    if !require_root() {
        return;
    }
    let mut h = Hosts::new();
    let (c1_ip, c2_ip, c3_ip, c4_ip) = ("10.2.0.78", "10.2.0.34", "10.2.0.57", "10.2.0.99");
    let name = "seeone.weave.local";

    launch(&h, 1, &[]);

    let c1 = h.ns("c1");
    attach(&h, 1, &[&format!("{c1_ip}/24"), "-h", name, &c1]);
    let c2 = h.ns("c2");
    attach(&h, 1, &[&format!("{c2_ip}/24"), "-h", "seetwo.weave.local", &c2]);
    let c3 = h.ns("c3");
    attach(&h, 1, &[&format!("{c3_ip}/24"), "-h", "c3.weave.local", &c3]);
    let anon = h.ns("anon");
    attach(&h, 1, &[&format!("{c4_ip}/24"), &anon]);

    assert_dns_a_record(&h, "c2", "seeone", c1_ip, Some(name));
    assert_dns_a_record(&h, "c3", "seeone", c1_ip, Some(name));
    assert_dns_a_record(&h, "anon", "seeone", c1_ip, Some(name));

    // check that unqualified names are automatically qualified for broken resolvers
    ok(h.weave(1, &["dns-add", c1_ip, &c1, "-h", "mysql.weave.local"]));
    let r = until(WAIT, "the query for mysql. is answered", || dig(&h, "c1", "mysql", A, false, None), |r| r.rcode == NOERROR && !r.answers.is_empty());
    let getent_like: Vec<String> =
        r.answers.iter().map(|a| format!("{} {}", a.a.map(|a| a.to_string()).unwrap_or_default(), a.name.trim_end_matches('.'))).collect();
    assert_eq!(getent_like, [format!("{c1_ip} mysql")]);
}

/// 240_dns_add_name: `weave dns-add` / `dns-remove` with and without a
/// container and IPs. c2 is started `--without-dns` and, having no
/// qualified hostname, has no name until `dns-add`.
#[test]
fn t240_dns_add_name() {
    if !require_root() {
        return;
    }
    let mut h = Hosts::new();
    let (c1_ip, c2_ip, c3_ip) = ("10.2.0.78", "10.2.0.34", "10.2.0.12");
    let (name1, name2, name3) = ("seeone.weave.local", "seetwo.weave.local", "seethree.weave.local");

    launch(&h, 1, &[]);

    let c2 = h.ns("c2");
    attach(&h, 1, &["--without-dns", &format!("{c2_ip}/24"), &c2]);
    let c1 = h.ns("c1");
    attach(&h, 1, &[&format!("{c1_ip}/24"), "-h", "c1.weave.local", &c1]);

    ok(h.weave(1, &["dns-add", c2_ip, &c2, "-h", name2]));

    assert_dns_record(&h, "c1", name2, &[c2_ip]);

    ok(h.weave(1, &["dns-add", c1_ip, &c1, "-h", name1]));
    ok(h.weave(1, &["dns-add", &c1, "-h", name3]));

    assert_dns_a_record(&h, "c1", name1, c1_ip, None);
    assert_dns_a_record(&h, "c1", name3, c1_ip, None);

    ok(h.weave(1, &["dns-remove", c1_ip, &c1, "-h", name1]));

    assert_no_dns_record(&h, "c1", name1);
    assert_dns_a_record(&h, "c1", name3, c1_ip, None);

    ok(h.weave(1, &["dns-remove", &c1, "-h", name3]));

    assert_no_dns_record(&h, "c1", name3);

    ok(h.weave(1, &["dns-add", c3_ip, "-h", name1]));
    assert_dns_record(&h, "c1", name1, &[c3_ip]);

    ok(h.weave(1, &["dns-remove", c3_ip, "-h", name1]));
    assert_no_dns_record(&h, "c1", name1);
}

/// 245_dns_case_insensitive: names are looked up whatever their case,
/// forwards and in reverse (`in-addr.arpa` in either case); two
/// containers whose names differ only in case share the name.
#[test]
fn t245_dns_case_insensitive() {
    if !require_root() {
        return;
    }
    let mut h = Hosts::new();
    let (c1_ip, c2_ip, c3_ip) = ("10.2.0.78", "10.2.0.79", "10.2.0.80");

    launch(&h, 1, &[]);

    let test = h.ns("test");
    attach(&h, 1, &["-h", "test.weave.local", &test]);

    let seeone = h.ns("seeone");
    attach(&h, 1, &[&format!("{c1_ip}/24"), "-h", "seeone.weave.local", &seeone]);
    assert_dns_record(&h, "test", "seeone.weave.local", &[c1_ip]);
    assert_dns_record(&h, "test", "SeeOne.weave.local", &[c1_ip]);
    assert_dns_record(&h, "test", "SEEONE.weave.local", &[c1_ip]);

    // Test reverse DNS using explicit in-addr.arpa format, lower and upper case
    for q in ["78.0.2.10.in-addr.arpa", "78.0.2.10.IN-ADDR.ARPA"] {
        assert_eq!(dig(&h, "test", q, PTR, false, None).short(), ["seeone.weave.local."], "dig +short -t PTR {q}");
    }

    let upper = h.ns("SeEtWo");
    attach(&h, 1, &[&format!("{c2_ip}/24"), "-h", "SeEtWo.weave.local", &upper]);
    assert_dns_record(&h, "test", "seetwo.weave.local", &[c2_ip]);
    assert_dns_record(&h, "test", "SeeTwo.weave.local", &[c2_ip]);
    assert_dns_record(&h, "test", "SEETWO.weave.local", &[c2_ip]);

    let lower = h.ns("seetwo");
    attach(&h, 1, &[&format!("{c3_ip}/24"), "-h", "seetwo.weave.local", &lower]);
    assert_dns_record(&h, "test", "seetwo.weave.local", &[c2_ip, c3_ip]);
    assert_dns_record(&h, "test", "SeeTwo.weave.local", &[c2_ip, c3_ip]);
    assert_dns_record(&h, "test", "SEETWO.weave.local", &[c2_ip, c3_ip]);
    assert_eq!(dig(&h, "test", "seetwo.weave.local", A, false, None).short().len(), 2, "dig +short seetwo.weave.local A | wc -l");
}

/// 250_dns_negative: an unsupported type for a known name is NOERROR
/// (empty); an unknown name in the domain is NXDOMAIN; a name outside it
/// gets the upstream's answer, NXDOMAIN. Weave's test hosts ask a real
/// resolver; here the router's upstream is a stub in host 1 that says
/// NXDOMAIN, so nothing leaves the namespaces.
#[test]
fn t250_dns_negative() {
    if !require_root() {
        return;
    }
    let mut h = Hosts::new();
    let _upstream = NxUpstream::start(&h, 1, "10.99.0.1:5353");

    launch(&h, 1, &["--dns-upstream", "10.99.0.1:5353"]);
    let c1 = h.ns("c1");
    attach(&h, 1, &["-h", "c1.weave.local", &c1]);

    // unsupported query types, unknown names, and unknown domains
    let r = dig(&h, "c1", "c1.weave.local", MX, false, None);
    assert_eq!(r.rcode, NOERROR, "dig MX c1.weave.local: {r:?}");
    let r = dig(&h, "c1", "xx.weave.local", A, false, None);
    assert_eq!(r.rcode, NXDOMAIN, "dig A xx.weave.local: {r:?}");
    let r = dig(&h, "c1", "xx.invalid", A, false, None);
    assert_eq!(r.rcode, NXDOMAIN, "dig A xx.invalid: {r:?}");
}

/// 255_dns_restart: after `weave stop` and `weave launch`, the running
/// containers' names are there again (Weave repopulates weaveDNS from the
/// running containers at launch).
#[test]
fn t255_dns_restart() {
    if !require_root() {
        return;
    }
    let mut h = Hosts::new();
    let (c1_ip, c2_ip, name) = ("10.2.0.78", "10.2.0.34", "seetwo.weave.local");

    launch(&h, 1, &[]);

    let c2 = h.ns("c2");
    attach(&h, 1, &[&format!("{c2_ip}/24"), "-h", name, &c2]);
    let c1 = h.ns("c1");
    attach(&h, 1, &[&format!("{c1_ip}/24"), "-h", "c1.weave.local", &c1]);

    assert_dns_record(&h, "c1", name, &[c2_ip]);

    ok(h.weave(1, &["stop"]));
    launch(&h, 1, &[]);

    assert_dns_record(&h, "c1", name, &[c2_ip]);
}

/// 260_dns_removal: a container's names go when it dies, whether it was
/// started attached or attached after it started (`docker run` then
/// `weave attach`: here the namespace is made, then attached by name).
#[test]
fn t260_dns_removal() {
    if !require_root() {
        return;
    }
    let mut h = Hosts::new();
    let (c1_ip, c2_ip, name) = ("10.2.0.67", "10.2.0.43", "seetwo.weave.local");
    let check = |h: &Hosts| {
        assert_dns_record(h, "c1", name, &[c2_ip]);
        rm(h, "c2");
        assert_no_dns_record(h, "c1", name);
    };

    launch(&h, 1, &[]);
    let c1 = h.ns("c1");
    attach(&h, 1, &[&format!("{c1_ip}/24"), "-h", "c1.weave.local", &c1]);

    let c2 = h.ns("c2");
    attach(&h, 1, &[&format!("{c2_ip}/24"), "-h", name, &c2]);
    check(&h);

    readd(&h, "c2");
    attach(&h, 1, &[&format!("{c2_ip}/24"), "-h", name, &c2]);
    check(&h);
}

/// 265_dns_reverse: reverse lookups of an address reused by containers
/// named in alphabetical order, so that weaveDNS must skip the earlier
/// ones' tombstones to answer with the current name. Each container is
/// started right after the previous one is removed, as in the original
/// (whose address, outside IPAM's range, Weave's IPAM does not track).
#[test]
fn t265_dns_reverse() {
    if !require_root() {
        return;
    }
    let mut h = Hosts::new();
    let ip = "10.2.0.67";

    launch(&h, 1, &[]);
    let c1 = h.ns("c1");
    attach(&h, 1, &["-h", "c1.weave.local", &c1]);

    for name in ["acontainer", "bcontainer", "ccontainer"] {
        let c = h.ns(name);
        let fqdn = format!("{name}.weave.local");
        attach(&h, 1, &[&format!("{ip}/24"), "-h", &fqdn, &c]);
        assert_dns_record(&h, "c1", &fqdn, &[ip]);
        rm(&h, name);
    }
}

/// 280_with_or_without_dns: without weaveDNS (`launch --no-dns`) nothing
/// resolves a container's name, whether or not the container asked for
/// weaveDNS; with it, only a container that asked does. The originals'
/// `start_container_with_dns --without-dns` (no `--dns` from `weave
/// dns-args`) is `attach --without-dns` here, where the router writes no
/// resolv.conf for it. Each container is attached with Weave's
/// `--rewrite-hosts --add-host=static.name:10.9.9.9`, which puts the
/// static name in its /etc/hosts (here /etc/netns/<ns>/hosts), so that
/// resolves with DNS or without.
#[test]
fn t280_with_or_without_dns() {
    if !require_root() {
        return;
    }
    let mut h = Hosts::new();
    let (ip, target, target_ip, static_name, static_ip) = ("10.2.0.34", "seetwo.weave.local", "10.2.0.78", "static.name", "10.9.9.9");
    let add_host = format!("--add-host={static_name}:{static_ip}");
    let mut n = 0;
    let mut check_dns = |h: &mut Hosts, with_record: bool, without_dns: bool| {
        n += 1;
        let short = format!("x{n}");
        let container = h.ns(&short);
        let cidr = format!("{ip}/24");
        let mut args = vec![];
        if without_dns {
            args.push("--without-dns");
        }
        args.extend([cidr.as_str(), "--rewrite-hosts", &add_host, &container]);
        attach(h, 1, &args);
        if with_record {
            assert_dns_record(h, &short, target, &[]);
        } else {
            assert_no_dns_record(h, &short, target);
        }
        // --add-host adds to /etc/hosts so should work even when DNS is off.
        assert_dns_record(h, &short, static_name, &[static_ip]);
        rm(h, &short);
    };

    // Assert behaviour without weaveDNS running
    launch(&h, 1, &["--no-dns"]);

    let c2 = h.ns("c2");
    attach(&h, 1, &[&format!("{target_ip}/24"), "-h", target, &c2]);

    check_dns(&mut h, false, true);
    check_dns(&mut h, false, false);

    ok(h.weave(1, &["stop"]));

    // Assert behaviour with weaveDNS
    launch(&h, 1, &[]);

    check_dns(&mut h, false, true);
    check_dns(&mut h, true, false);
}

/// 295_dns_large_response: 50 addresses for one name come back whole over
/// UDP (dig retries over TCP when the reply is truncated), over TCP, and
/// with a 700-byte EDNS buffer either way.
#[test]
fn t295_dns_large_response() {
    if !require_root() {
        return;
    }
    let mut h = Hosts::new();
    let name = "seetwo.weave.local";
    let n = 50;

    launch(&h, 1, &[]);

    let c0 = h.ns("c0");
    attach(&h, 1, &["10.2.1.0/24", "-h", "c0.weave.local", &c0]);
    let ips: Vec<String> = (1..=n).map(|i| format!("10.2.1.{i}")).collect();
    let mut args: Vec<&str> = vec!["dns-add"];
    args.extend(ips.iter().map(String::as_str));
    args.extend([c0.as_str(), "-h", name]);
    ok(h.weave(1, &args));

    let check = |tcp: bool, bufsize: Option<u16>| {
        let r = dig(&h, "c0", name, A, tcp, bufsize);
        assert_eq!(
            r.answers.iter().filter(|a| a.rtype == A).count(),
            n,
            "dig +short{}{} {name} A: {r:?}",
            if tcp { " +tcp" } else { "" },
            bufsize.map(|b| format!(" +bufsize={b}")).unwrap_or_default()
        );
    };

    check(false, None);
    check(true, None);
    check(false, Some(700));
    check(true, Some(700));
}
