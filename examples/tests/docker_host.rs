//! The router on real Docker hosts: each simulated host is a network
//! namespace running its own dockerd (own config, data root, exec root and
//! socket), so Docker's own firewall is in place there: the `FORWARD`
//! policy is drop and bridged frames pass through it (br_netfilter).
//! Containers of every kind on the overlay, on one host and across two:
//! Docker containers with `weave attach`, podman containers through the
//! shipped CNI configuration (podman's CNI backend, chaining `portmap`),
//! and bare namespaces. Also the bare mechanism on a host whose firewall
//! drops forwarding without Docker. Needs root, dockerd and podman; in CI
//! their absence is a failure (`.ci/run` installs podman).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{eventually, ok, pings, require_root, Hosts};

const IMAGE: &str = "weave-test-busybox:1";

/// Whether `tool` runs; in CI it must.
fn require(tool: &str) -> bool {
    if Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success()) {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "{tool} is needed by the Docker-host tests, and they must run in CI (.ci/run installs it)");
    eprintln!("skipped: no {tool}");
    false
}

/// Run `cmd` inside namespace `ns` without remounting /sys
/// (`ip netns exec` would hide the cgroups dockerd and podman need).
fn in_ns(ns: &str, cmd: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{ns}")).arg(cmd);
    c
}

/// A dockerd of the host's own, in its namespace.
struct Dockerd {
    child: Child,
    dir: PathBuf,
    host: String,
}

impl Dockerd {
    fn start(ns: &str, dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let sock = dir.join("docker.sock");
        let host = format!("unix://{}", sock.display());
        let config = serde_json::json!({
            "data-root": dir.join("data"),
            "exec-root": dir.join("exec"),
            "pidfile": dir.join("docker.pid"),
            "hosts": [host],
            "storage-driver": "vfs",
        });
        std::fs::write(dir.join("daemon.json"), config.to_string()).unwrap();
        // As on a fresh host: forwarding off, so dockerd turns it on and
        // sets the FORWARD policy to drop, as it does on this machine.
        ok(Command::new("ip").args(["netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=0"]).output().unwrap());
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let child =
            in_ns(ns, "dockerd").arg("--config-file").arg(dir.join("daemon.json")).stdout(log.try_clone().unwrap()).stderr(log).spawn().expect("dockerd");
        let d = Self { child, dir: dir.to_owned(), host };
        let end = Instant::now() + Duration::from_secs(60);
        while !d.docker(&["info"]).status.success() {
            assert!(Instant::now() < end, "dockerd in {ns} did not answer: {}", std::fs::read_to_string(dir.join("dockerd.log")).unwrap_or_default());
            std::thread::sleep(Duration::from_millis(200));
        }
        let mut tar = common::busybox_tar(dir);
        let out = Command::new("docker").args(["-H", &d.host, "import", "-", IMAGE]).stdin(tar.stdout.take().unwrap()).output().unwrap();
        assert!(tar.wait().unwrap().success() && out.status.success(), "docker import: {}", String::from_utf8_lossy(&out.stderr));
        d
    }

    fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker").arg("-H").arg(&self.host).args(args).output().unwrap()
    }

    /// A container with no network of Docker's, for `weave attach`.
    fn run(&self, name: &str) {
        ok(self.docker(&["run", "-d", "--net", "none", "--name", name, IMAGE, "/bin/sleep", "600"]));
    }

    fn pings(&self, name: &str, to: &str) -> bool {
        pings(&["docker", "-H", &self.host, "exec", name], to)
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let ids = String::from_utf8_lossy(&self.docker(&["ps", "-aq"]).stdout).into_owned();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let _ = Command::new("docker").arg("-H").arg(&self.host).args(["rm", "-f"]).args(&ids).output();
        }
        // SIGTERM (dockerd stops its containerd and unmounts), then SIGKILL.
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let end = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- dockerd:\n{}", std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default());
        }
        // dockerd may leave its handle on its namespace mounted under the
        // exec root (seen after a SIGKILL): unmount it, so nothing of the
        // test stays mounted and the directory can go.
        let _ = Command::new("umount").arg("-l").arg(self.dir.join("exec/netns/default")).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// podman with its CNI backend on one host: the shipped
/// `10-weave.conflist` pointed at that host's router, plugins from the
/// `weave` binary and Debian's `containernetworking-plugins`, storage of
/// its own.
struct Podman {
    ns: String,
    dir: PathBuf,
}

impl Podman {
    fn new(ns: &str, dir: &Path, state: &Path) -> Self {
        let (bin, net) = (dir.join("bin"), dir.join("net.d"));
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&net).unwrap();
        for name in ["weave-net", "weave-ipam"] {
            std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_weave"), bin.join(name)).unwrap();
        }
        let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/cni/10-weave.conflist")).unwrap();
        let mut conf: serde_json::Value = serde_json::from_str(&shipped).unwrap();
        conf["plugins"][0]["stateDir"] = state.display().to_string().into();
        std::fs::write(net.join("10-weave.conflist"), conf.to_string()).unwrap();
        let plugin_dirs = ["/usr/lib/cni", "/usr/libexec/cni", "/opt/cni/bin"];
        let containers_conf = format!(
            "[containers]\ndefault_ulimits = []\n[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\", {}]\nnetwork_config_dir = \"{}\"\n[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
            bin.display(),
            plugin_dirs.map(|d| format!("\"{d}\"")).join(", "),
            net.display()
        );
        std::fs::write(dir.join("containers.conf"), containers_conf).unwrap();
        let p = Self { ns: ns.to_owned(), dir: dir.to_owned() };
        let mut tar = common::busybox_tar(dir);
        let out = p.cmd().args(["import", "-", IMAGE]).stdin(tar.stdout.take().unwrap()).output().unwrap();
        assert!(tar.wait().unwrap().success() && out.status.success(), "podman import: {}", String::from_utf8_lossy(&out.stderr));
        p
    }

    fn cmd(&self) -> Command {
        let mut c = in_ns(&self.ns, "podman");
        c.env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .arg("--root")
            .arg(self.dir.join("storage"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            // Its own (podman's default is shared by every podman here,
            // and a reset of one would make another forget its containers).
            .arg("--tmpdir")
            .arg(self.dir.join("tmp"))
            .args(["--storage-driver", "vfs"])
            .stdin(Stdio::null());
        c
    }

    fn podman(&self, args: &[&str]) -> String {
        ok(self.cmd().args(args).output().unwrap())
    }

    /// A container on the weave network running `cmd`; its address.
    fn run(&self, name: &str, extra: &[&str], cmd: &[&str]) -> String {
        let mut a = vec!["run", "-d", "--name", name, "--network", "weave", "--cap-add", "NET_RAW"];
        a.extend_from_slice(extra);
        a.push(IMAGE);
        a.extend_from_slice(cmd);
        self.podman(&a);
        let addr = self.podman(&["exec", name, "ip", "-4", "-o", "addr", "show", "eth0"]);
        addr.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|c| c.split('/').next())
            .unwrap_or_else(|| panic!("no address on {name}: {addr}"))
            .to_owned()
    }

    fn pings(&self, name: &str, to: &str) -> bool {
        let end = Instant::now() + Duration::from_secs(15);
        while Instant::now() < end {
            if self.cmd().args(["exec", name, "ping", "-c", "1", "-W", "1", to]).output().unwrap().status.success() {
                return true;
            }
        }
        false
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let rm = self.cmd().args(["rm", "-a", "-f", "-t", "0"]).output();
        if !rm.as_ref().is_ok_and(|o| o.status.success()) {
            eprintln!("podman rm -a: {rm:?}");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ip_of(cidr: &str) -> String {
    cidr.trim().split('/').next().unwrap().to_owned()
}

/// Whether IPAM on host `i` holds `ip` for anyone.
fn allocated(h: &Hosts, i: usize, ip: &str) -> bool {
    let report: serde_json::Value = serde_json::from_str(&ok(h.weave(i, &["report"]))).unwrap();
    let owned = report["IPAM"]["Owned"].as_object().cloned().unwrap_or_default();
    owned.values().any(|v| v.as_array().is_some_and(|a| a.iter().any(|c| c.as_str().unwrap_or("").starts_with(&format!("{ip}/")))))
}

/// An HTTP GET from inside namespace `ns` (empty on any failure).
fn http_get(ns: &str, to: &str, path: &str) -> String {
    let (to, path) = (to.to_owned(), path.to_owned());
    weave_dataplane::netlink::Netns::named(ns)
        .run(move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect_timeout(&to.parse().unwrap(), Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            write!(s, "GET {path} HTTP/1.0\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })
        .unwrap_or_default()
}

fn nft(ns: &str, args: &[&str]) -> Output {
    Command::new("ip").args(["netns", "exec", ns, "nft"]).args(args).output().unwrap()
}

/// Our rules, as iptables-nft (hence dockerd) reads the chain: every one
/// must be listable, or `iptables` fails on the whole chain.
fn iptables_forward(ns: &str) -> String {
    ok(Command::new("ip").args(["netns", "exec", ns, "iptables", "-S", "FORWARD"]).output().unwrap())
}

#[test]
fn containers_talk_through_a_host_firewall_that_drops_forwarding() {
    if !require_root() || !require("iptables") {
        return;
    }
    let mut h = Hosts::new();
    let h1 = h.name("h1");
    // As iptables-nft (and so Docker) makes it: table ip filter, chain
    // FORWARD, policy drop. Bridged frames pass it: br_netfilter is on.
    ok(Command::new("ip").args(["netns", "exec", &h1, "iptables", "-P", "FORWARD", "DROP"]).output().unwrap());
    let bnf = std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables");
    let in_ns = ok(Command::new("ip").args(["netns", "exec", &h1, "sysctl", "-n", "net.bridge.bridge-nf-call-iptables"]).output().unwrap());
    assert_eq!(in_ns.trim(), "1", "br_netfilter must be on in the host for this test to mean anything ({bnf:?})");

    ok(h.weave(1, &["launch", "--name", "::1", "--nickname", "h1", "--ipalloc-range", "10.32.0.0/12"]));
    let (c1, c2) = (h.ns("c1"), h.ns("c2"));
    let a1 = ip_of(&ok(h.weave(1, &["attach", &c1])));
    let a2 = ip_of(&ok(h.weave(1, &["attach", &c2])));
    assert!(h.ping("c1", &a2) && h.ping("c2", &a1), "two containers on one host, FORWARD policy drop");
    let rules = iptables_forward(&h1);
    assert_eq!(rules.matches("weave-forward weave").count(), 3, "{rules}");
    assert!(rules.starts_with("-P FORWARD DROP"), "the host's policy is left as it was: {rules}");

    // A firewall reload (the chain flushed) is followed: the rules return.
    ok(Command::new("ip").args(["netns", "exec", &h1, "iptables", "-F", "FORWARD"]).output().unwrap());
    eventually(5, "the rules are put back after a flush", || iptables_forward(&h1).matches("weave-forward weave").count() == 3);
    assert!(h.ping("c1", &a2));

    // Exposed: containers reach the host's LAN through it (masqueraded,
    // replies let back in by mark), and the host forwards into the subnet.
    let host_addr = ip_of(&ok(h.weave(1, &["expose"])));
    ok(Command::new("ip").args(["-n", &c1, "route", "add", "default", "via", &host_addr]).output().unwrap());
    assert!(h.ping("c1", "10.99.0.2"), "a container reaches another host on the LAN through its exposed host");
    let rules = iptables_forward(&h1);
    assert!(rules.contains("-d 10.32.0.0/12 -o weave") && rules.contains("weave-forward weave 10.32.0.0/12"), "{rules}");
    ok(h.weave(1, &["hide"]));
    let rules = iptables_forward(&h1);
    assert!(!rules.contains("10.32.0.0/12") && rules.matches("weave-forward weave").count() == 3, "hide withdraws the subnet's accept: {rules}");

    // Reset leaves the host's firewall as it found it.
    ok(h.weave(1, &["reset"]));
    assert_eq!(iptables_forward(&h1).trim(), "-P FORWARD DROP");
    assert!(!nft(&h1, &["list", "table", "inet", "weave"]).status.success(), "table inet weave left behind");
}

#[test]
fn docker_hosts_with_forward_policy_drop_carry_docker_podman_and_netns_containers() {
    if !require_root() || !require("dockerd") || !require("podman") {
        return;
    }
    let mut h = Hosts::new();
    let c1 = h.ns("c1");
    let d: Vec<Dockerd> = (1..=2).map(|i| Dockerd::start(&h.name(&format!("h{i}")), &h.dir.join(format!("docker{i}")))).collect();
    for i in 1..=2 {
        let rules = ok(Command::new("ip").args(["netns", "exec", &h.name(&format!("h{i}")), "iptables", "-S", "FORWARD"]).output().unwrap());
        assert!(rules.starts_with("-P FORWARD DROP") && rules.contains("DOCKER-USER"), "dockerd made host {i} a Docker host: {rules}");
    }
    let weave = |i: usize, args: &[&str]| ok(h.weave_with(i, args, &[("DOCKER_HOST", &d[i - 1].host)]));
    weave(1, &["launch", "--name", "::1", "--nickname", "h1", "--ipalloc-init", "consensus=2", "--no-plugin"]);
    weave(2, &["launch", "--name", "::2", "--nickname", "h2", "--ipalloc-init", "consensus=2", "--no-plugin", "10.99.0.1"]);
    let attach = |i: usize, c: &str| ip_of(&weave(i, &["attach", c]));

    // Host 1: two Docker containers, a podman container, a namespace.
    let name = |n: &str| format!("{}-{n}", h.prefix);
    let (d1, d2, d3) = (name("d1"), name("d2"), name("d3"));
    d[0].run(&d1);
    d[0].run(&d2);
    let a1 = attach(1, &d1);
    let a2 = attach(1, &d2);
    let pod1 = Podman::new(&h.name("h1"), &h.dir.join("podman1"), &h.state(1));
    const SLEEP: &[&str] = &["/bin/sleep", "600"];
    let p1 = pod1.run(&name("p1"), &[], SLEEP);
    let ac1 = attach(1, &c1);
    assert!(d[0].pings(&d1, &a2) && d[0].pings(&d2, &a1), "two Docker containers on one Docker host");
    assert!(pod1.pings(&name("p1"), &a1) && d[0].pings(&d1, &p1), "a podman (CNI) container and a Docker container on one host");
    assert!(h.ping("c1", &p1) && pod1.pings(&name("p1"), &ac1), "a namespace and a podman container on one host");

    // Host 2: across hosts, both FORWARD policy drop.
    d[1].run(&d3);
    let a3 = attach(2, &d3);
    let pod2 = Podman::new(&h.name("h2"), &h.dir.join("podman2"), &h.state(2));
    let p2 =
        pod2.run(&name("p2"), &["-p", "8080:80"], &["/bin/sh", "-c", "mkdir -p /www && echo hello-weave > /www/index.html && exec httpd -f -p 80 -h /www"]);
    assert!(d[0].pings(&d1, &a3) && d[1].pings(&d3, &a1), "Docker containers across two Docker hosts");
    assert!(pod1.pings(&name("p1"), &p2) && pod2.pings(&name("p2"), &p1), "podman containers across two hosts");
    eventually(10, "host 2 learns d1's name", || ok(h.weave(2, &["dns-lookup", &d1])).trim() == a1);
    assert!(d[1].pings(&d3, &d1), "by name, through weaveDNS");

    // A published port (portmap) answers from the other host: the router
    // exposed the subnet for the pod's gateway, and forwards into it.
    let get = || http_get(&h.name("h1"), "10.99.0.2:8080", "/index.html");
    eventually(15, "the published port answers", || get().contains("hello-weave"));
    assert!(pod1.pings(&name("p1"), &p2), "and the pod still answers at {p2}");

    // podman rm frees the address (CNI DEL).
    assert!(allocated(&h, 1, &p1));
    pod1.podman(&["rm", "-f", "-t", "0", &name("p1")]);
    eventually(5, "p1's address freed on podman rm", || !allocated(&h, 1, &p1));

    for i in 1..=2 {
        ok(h.weave(i, &["reset"]));
        let rules = ok(Command::new("ip").args(["netns", "exec", &h.name(&format!("h{i}")), "iptables", "-S", "FORWARD"]).output().unwrap());
        assert!(!rules.contains("weave"), "reset leaves Docker's chain as it was: {rules}");
    }
}

/// The Docker user's walkthrough, through the router's Docker API proxy on
/// two real Docker hosts (each router in its dockerd's namespace, FORWARD
/// policy drop): `eval $(weave env)`, then plain `docker run`.
#[test]
fn docker_run_through_the_proxy_puts_containers_on_the_overlay_by_weave_cidr() {
    if !require_root() || !require("dockerd") {
        return;
    }
    let h = Hosts::new();
    let d: Vec<Dockerd> = (1..=2).map(|i| Dockerd::start(&h.name(&format!("h{i}")), &h.dir.join(format!("docker{i}")))).collect();
    let weave = |i: usize, args: &[&str]| ok(h.weave_with(i, args, &[("DOCKER_HOST", &d[i - 1].host)]));
    let range = ["--ipalloc-range", "10.2.0.0/16", "--ipalloc-default-subnet", "10.2.1.0/24", "--ipalloc-init", "consensus=2", "--no-plugin"];
    let launch1 = || weave(1, &[&["launch", "--name", "::1", "--nickname", "h1", "--rewrite-inspect", "-H", "tcp://10.99.0.1:12375"], &range[..]].concat());
    launch1();
    weave(2, &[&["launch", "--name", "::2", "--nickname", "h2"], &range[..], &["10.99.0.1"]].concat());

    // `weave env` / `weave config` / `weave env --restore`, as Weave prints them.
    let env = weave(1, &["env"]);
    let proxy = env.trim().strip_prefix("export DOCKER_HOST=").and_then(|r| r.split(' ').next()).expect("an export of DOCKER_HOST").to_owned();
    assert!(env.trim().ends_with(&format!("ORIG_DOCKER_HOST={}", d[0].host)), "the daemon before: {env}");
    assert_eq!(weave(1, &["config"]).trim(), format!("-H={proxy}"));
    let restore = h.weave_with(1, &["env", "--restore"], &[("DOCKER_HOST", &proxy), ("ORIG_DOCKER_HOST", &d[0].host)]);
    assert_eq!(ok(restore).trim(), format!("export DOCKER_HOST={}", d[0].host));
    let proxies: Vec<String> = (1..=2).map(|i| weave(i, &["env"]).trim()["export DOCKER_HOST=".len()..].split(' ').next().unwrap().to_owned()).collect();
    let docker = |i: usize, args: &[&str]| Command::new("docker").arg("-H").arg(&proxies[i - 1]).args(args).output().unwrap();
    let name = |n: &str| format!("{}-{n}", h.prefix);
    let ps = |i: usize, c: &str| weave(i, &["ps", c]).split_whitespace().nth(2).map(ip_of).unwrap_or_default();

    // A plain `docker run` on host 1, and one on host 2 that pings it by
    // name; non-detached, so its output comes over the hijacked attach.
    let (c1, c2) = (name("c1"), name("c2"));
    ok(docker(1, &["run", "-d", "--name", &c1, IMAGE, "/bin/sleep", "600"]));
    let a1 = ps(1, &c1);
    assert!(a1.starts_with("10.2.1."), "c1 attached in the default subnet at start: {a1:?}");
    let inspect = ok(docker(1, &["inspect", "-f", "{{.Config.Hostname}}.{{.Config.Domainname}} {{.NetworkSettings.IPAddress}}", &c1]));
    assert_eq!(inspect.trim(), format!("{c1}.weave.local {a1}"), "hostname from the name; --rewrite-inspect shows the weave address");
    // The proxy's TCP listener (-H tcp://...), from the other host.
    let over_tcp = in_ns(&h.name("h2"), "docker").args(["-H", "tcp://10.99.0.1:12375", "ps", "--format", "{{.Names}}"]).output().unwrap();
    assert!(ok(over_tcp).contains(&c1), "docker ps through the proxy's TCP listener");
    eventually(15, "host 2 learns c1's name", || ok(h.weave(2, &["dns-lookup", &c1])).trim() == a1);
    // A fresh path's first packet can be lost on a loaded machine (the
    // fast path and ARP still forming): up to three runs, each a new c2.
    let mut run = docker(2, &["run", "--name", &c2, IMAGE, "ping", "-c", "1", "-W", "5", &c1]);
    for _ in 0..2 {
        if run.status.success() {
            break;
        }
        ok(docker(2, &["rm", "-f", &c2]));
        run = docker(2, &["run", "--name", &c2, IMAGE, "ping", "-c", "1", "-W", "5", &c1]);
    }
    assert!(run.status.success(), "c2 pings c1 by name across hosts: {}{}", String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert!(String::from_utf8_lossy(&run.stdout).contains(&a1), "through the attach stream: {run:?}");
    assert!(ok(docker(2, &["logs", "-f", &c2])).contains("1 packets received"), "docker logs -f through the proxy");
    assert_eq!(ok(docker(1, &["exec", &c1, "cat", "/etc/hostname"])).trim(), c1, "docker exec through the proxy");
    // Both directions of a hijacked connection: stdin in, output back.
    let mut cat = Command::new("docker").args(["-H", &proxies[0], "exec", "-i", &c1, "cat"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(&mut cat.stdin.take().unwrap(), b"through stdin\n").unwrap();
    assert_eq!(String::from_utf8_lossy(&cat.wait_with_output().unwrap().stdout).trim(), "through stdin", "docker exec -i through the proxy");
    // A terminal (-t) through the hijacked connection, with `script`
    // giving the client its pty.
    let tty = Command::new("script").args(["-qec", &format!("docker -H {} exec -it {c1} echo tty-ok", proxies[0]), "/dev/null"]).output().unwrap();
    assert!(String::from_utf8_lossy(&tty.stdout).contains("tty-ok"), "docker exec -it through the proxy: {tty:?}");
    let c6 = name("c6");
    ok(docker(1, &["run", "-d", "--name", &c6, IMAGE, "sh", "-c", "sleep 3; echo attached-output"]));
    assert!(ok(docker(1, &["attach", "--no-stdin", &c6])).contains("attached-output"), "docker attach through the proxy");

    // WEAVE_CIDR=net:CIDR: an address in that subnet, and isolation from
    // the default subnet.
    let c3 = name("c3");
    ok(docker(1, &["run", "-d", "-e", "WEAVE_CIDR=net:10.2.2.0/24", "--name", &c3, IMAGE, "/bin/sleep", "600"]));
    let a3 = ps(1, &c3);
    assert!(a3.starts_with("10.2.2."), "c3 in 10.2.2.0/24: {a3:?}");
    assert!(!d[0].pings(&c3, &a1), "another subnet is isolated");

    // WEAVE_CIDR=none: no ethwe until `weave attach`.
    let c4 = name("c4");
    ok(docker(1, &["run", "-d", "-e", "WEAVE_CIDR=none", "--name", &c4, IMAGE, "/bin/sleep", "600"]));
    assert!(!ok(docker(1, &["exec", &c4, "ip", "link"])).contains("ethwe"), "WEAVE_CIDR=none: not attached");
    let a4 = ip_of(&weave(1, &["attach", &c4]));
    assert!(d[0].pings(&c4, &a1), "attached by hand ({a4}), it reaches c1");

    // A restart keeps the address; removal releases it and the name.
    ok(docker(1, &["restart", "-t", "0", &c1]));
    eventually(10, "c1 attached again after its restart", || ps(1, &c1) == a1);
    assert!(allocated(&h, 1, &a1));
    ok(docker(1, &["rm", "-f", &c1]));
    eventually(10, "c1's address and name released on docker rm", || !allocated(&h, 1, &a1) && ok(h.weave(1, &["dns-lookup", &c1])).trim().is_empty());

    // Containers on the host's network, or with a network of their own,
    // are left alone.
    let c5 = name("c5");
    ok(docker(1, &["run", "-d", "--net", "host", "--name", &c5, IMAGE, "/bin/sleep", "600"]));
    assert!(ps(1, &c5).is_empty(), "--net=host is not attached");

    // Containers that asked for the overlay while the router was down are
    // attached when the proxy starts.
    weave(1, &["stop"]);
    let c7 = name("c7");
    ok(d[0].docker(&["run", "-d", "-e", "WEAVE_CIDR=net:10.2.2.0/24", "--name", &c7, IMAGE, "/bin/sleep", "600"]));
    launch1();
    eventually(10, "c7 attached when the proxy started", || ps(1, &c7).starts_with("10.2.2."));
    for i in 1..=2 {
        ok(h.weave(i, &["reset"]));
    }
}
