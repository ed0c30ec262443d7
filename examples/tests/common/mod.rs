//! What every namespace test shares.

#![allow(dead_code)] // each test binary uses a part

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

/// Whether the test can run: namespace tests need root. In CI (`CI` set)
/// running without root is a failure; elsewhere the test is skipped with a
/// message.
pub(crate) fn require_root() -> bool {
    if is_root() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "netns tests need root and must run in CI: run .ci/run as root");
    eprintln!("skipped: needs root for network namespaces");
    false
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

pub(crate) struct Hosts {
    pub(crate) prefix: String,
    pub(crate) namespaces: Vec<String>,
    pub(crate) dir: PathBuf,
    /// How many hosts (`h1`..`hN`, underlay addresses 10.99.0.1..N).
    pub(crate) count: usize,
}

/// Whether process `pid` is gone (or a zombie nobody has reaped yet: the
/// router's parent, `weave launch`, exits at once).
pub(crate) fn process_gone(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "))
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for i in 1..=self.count {
            let pid = std::fs::read_to_string(self.state(i).join("weave.pid")).ok().map(|p| p.trim().to_owned());
            let _ = self.weave(i, &["stop"]);
            // A router that would not stop is killed, by its own PID, before
            // its namespace goes.
            if let Some(pid) = pid.filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !process_gone(p)) {
                let _ = Command::new("kill").args(["-9", &pid]).status();
            }
        }
        if std::thread::panicking() {
            for i in 1..=self.count {
                let log = self.state(i).join("weave.log");
                eprintln!("--- {}:\n{}", log.display(), std::fs::read_to_string(&log).unwrap_or_default());
            }
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
            // A stopped router leaves its containers' resolv.conf (as
            // Weave does); the test's namespaces are gone, so they go too.
            let _ = std::fs::remove_dir_all(std::path::Path::new("/etc/netns").join(ns));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) fn ok(out: Output) -> String {
    assert!(out.status.success(), "failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Hosts {
    /// Two hosts joined by a veth pair.
    pub(crate) fn new() -> Self {
        Self::with(2)
    }

    /// `count` hosts: two are joined by a veth pair; more hang off a bridge
    /// in a namespace of its own (`ul`). Host i's underlay interface is
    /// `ui` with 10.99.0.i/24.
    pub(crate) fn with(count: usize) -> Self {
        let prefix = format!("wvcli{}x{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir).unwrap();
        let mut h = Self { prefix, namespaces: Vec::new(), dir, count };
        let hosts: Vec<String> = (1..=count).map(|i| h.ns(&format!("h{i}"))).collect();
        let ip = |args: &[&str]| ok(Command::new("ip").args(args).output().unwrap());
        if count == 2 {
            ip(&["link", "add", "u1", "netns", &hosts[0], "type", "veth", "peer", "name", "u2", "netns", &hosts[1]]);
        } else {
            let ul = h.ns("ul");
            ip(&["-n", &ul, "link", "add", "name", "ulbr", "type", "bridge"]);
            ip(&["-n", &ul, "link", "set", "dev", "ulbr", "up"]);
            for (i, ns) in hosts.iter().enumerate() {
                let (dev, port) = (format!("u{}", i + 1), format!("p{}", i + 1));
                ip(&["link", "add", &dev, "netns", ns, "type", "veth", "peer", "name", &port, "netns", &ul]);
                ip(&["-n", &ul, "link", "set", &port, "master", "ulbr", "up"]);
            }
        }
        for (i, ns) in hosts.iter().enumerate() {
            let (dev, addr) = (format!("u{}", i + 1), format!("10.99.0.{}/24", i + 1));
            ip(&["-n", ns, "addr", "add", &addr, "dev", &dev]);
            ip(&["-n", ns, "link", "set", &dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        h
    }

    pub(crate) fn ns(&mut self, name: &str) -> String {
        let full = format!("{}-{name}", self.prefix);
        ok(Command::new("ip").args(["netns", "add", &full]).output().unwrap());
        self.namespaces.push(full.clone());
        full
    }

    pub(crate) fn name(&self, n: &str) -> String {
        format!("{}-{n}", self.prefix)
    }

    pub(crate) fn state(&self, i: usize) -> PathBuf {
        self.dir.join(format!("h{i}"))
    }

    pub(crate) fn weave(&self, i: usize, args: &[&str]) -> Output {
        self.weave_with(i, args, &[])
    }

    /// `weave` on host `i` with extra environment (e.g. `DOCKER_HOST`).
    pub(crate) fn weave_with(&self, i: usize, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.weave_command(i, args).envs(env.iter().copied()).output().expect("run weave")
    }

    /// The command `weave ARGS` on host `i`, to run as the caller likes
    /// (in the background, with a time limit).
    pub(crate) fn weave_command(&self, i: usize, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name(&format!("h{i}")), env!("CARGO_BIN_EXE_weave"), "--state-dir"])
            .arg(self.state(i))
            .args(args)
            .env_remove("WEAVE_PASSWORD");
        c
    }

    pub(crate) fn ping(&self, from: &str, to: &str) -> bool {
        pings(&["ip", "netns", "exec", &self.name(from)], to)
    }
}

/// GET `path` from the router's HTTP port inside host `i`'s namespace.
/// One host with a router that founds its own ring, and a namespace `c1`
/// for a container (not attached); None without root.
pub(crate) fn one_router() -> Option<(Hosts, String)> {
    if !require_root() {
        return None;
    }
    let mut h = Hosts::new();
    let c1 = h.ns("c1");
    ok(h.weave(1, &["launch", "--name", "::1", "--ipalloc-init", "consensus=1", "--no-docker"]));
    Some((h, c1))
}

pub(crate) fn http_get(h: &Hosts, i: usize, path: &str) -> String {
    http_get_at(h, i, "127.0.0.1:6784", path)
}

/// GET `path` from `addr` inside host `i`'s namespace.
pub(crate) fn http_get_at(h: &Hosts, i: usize, addr: &str, path: &str) -> String {
    let ns = weave_dataplane::netlink::Netns::named(&h.name(&format!("h{i}")));
    let (addr, path) = (addr.to_owned(), path.to_owned());
    ns.run(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr.as_str())?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: weave\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .expect("HTTP GET")
}

/// A root filesystem with the static busybox and the applets the tests
/// use, as a tar on stdout of the returned child: images are built from it
/// (`docker import`, `podman import`), as nothing can be pulled.
pub(crate) fn busybox_tar(dir: &std::path::Path) -> std::process::Child {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("busybox (Debian's busybox-static) is needed to build the test image; .ci/run installs it");
    let root = dir.join("bbroot");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    for applet in ["sh", "ping", "sleep", "ip", "nslookup", "cat", "wget", "httpd", "echo"] {
        let link = root.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link).unwrap();
        }
    }
    Command::new("tar").arg("-C").arg(&root).args(["-c", "."]).stdout(std::process::Stdio::piped()).spawn().unwrap()
}

/// Wait until `f` holds, up to `secs` seconds; fail saying `what` if not.
pub(crate) fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < end, "{what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whether `ping -c 1 to`, run through `prefix` (e.g. `ip netns exec NS`
/// or `docker exec NAME`), succeeds within 15 s.
pub(crate) fn pings(prefix: &[&str], to: &str) -> bool {
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end {
        if Command::new(prefix[0]).args(&prefix[1..]).args(["ping", "-c", "1", "-W", "1", to]).output().unwrap().status.success() {
            return true;
        }
        // A ping that fails at once (no route, no name yet) is not retried
        // in a tight loop: other tests share the cores.
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// The plugin binaries, as a runtime finds them in CNI_PATH.
pub(crate) fn plugin_dir(h: &Hosts) -> PathBuf {
    let dir = h.dir.join("cni-bin");
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["weave-net", "weave-ipam"] {
        let link = dir.join(name);
        if !link.exists() {
            std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_weave"), &link).unwrap();
        }
    }
    dir
}

/// Run `plugin` with `command` for (`container`, `netns`) and `config` on
/// stdin. Returns the parsed stdout (Null if empty) and the exit status.
pub(crate) fn cni(dir: &std::path::Path, plugin: &str, command: &str, container: &str, netns: &str, config: &serde_json::Value) -> (serde_json::Value, i32) {
    let mut cmd = Command::new(dir.join(plugin));
    cmd.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin").env("CNI_COMMAND", command).env("CNI_PATH", dir).env("CNI_IFNAME", "eth0");
    if !container.is_empty() {
        cmd.env("CNI_CONTAINERID", container);
    }
    if !netns.is_empty() {
        cmd.env("CNI_NETNS", netns);
    }
    if command == "ADD" {
        cmd.env("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAME={container}"));
    }
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(config.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let v = if text.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{plugin} {command} printed non-JSON ({e}): {text}"))
    };
    (v, out.status.code().unwrap_or(-1))
}
