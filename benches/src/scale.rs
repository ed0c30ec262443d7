//! N real routers on one machine: each `weave launch`ed in a network
//! namespace of its own, all on one underlay bridge, all pointed at host 1,
//! discovery doing the rest. Measured: launch time, time to full mesh,
//! memory, and what the routers cost at rest.
//!
//! Needs root and the `weave` binary (the reference router's CLI). Every
//! namespace, state directory and router it makes is removed at the end,
//! and the kernel settings it raises (neighbour table, packet backlog) are
//! put back.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Set by Ctrl-C or SIGTERM: the run stops at its next step and removes
/// what it made (a killed run would leave routers and namespaces behind).
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Stop runs at their next step on Ctrl-C or SIGTERM, cleaning up.
pub fn stop_on_signals() {
    std::thread::spawn(|| {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        rt.block_on(async {
            let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else { return };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            eprintln!("interrupted: stopping the routers and removing the namespaces");
            INTERRUPTED.store(true, Ordering::Relaxed);
        });
    });
}

fn check_interrupted() -> Result<(), String> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

/// Sleep for `d`, or less if interrupted.
fn nap(d: Duration) -> Result<(), String> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check_interrupted()?;
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(200)));
    }
    check_interrupted()
}

/// What one run is asked to do.
#[derive(Debug, Clone)]
pub struct ScaleConfig {
    /// Number of routers.
    pub n: usize,
    /// Run the mesh with a password.
    pub password: bool,
    /// `--conn-limit` for every router (None: the router's default).
    pub conn_limit: Option<usize>,
    /// Give up waiting for the mesh after this long.
    pub converge_timeout: Duration,
    /// How long the idle cost is measured over (zero: not measured).
    pub idle: Duration,
    /// The `weave` binary.
    pub weave: PathBuf,
    /// Once measured, keep the mesh up until interrupted (to profile a
    /// router inside it); the row is printed to stderr first.
    pub hold: bool,
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct ScaleRow {
    /// Number of routers.
    pub n: usize,
    /// With a password.
    pub password: bool,
    /// From the first `weave launch` to the last one returning.
    pub launch: Duration,
    /// From the last launch until every router had a connection to every
    /// other, or under a connection limit below N-1, reached every other
    /// (None: not within the timeout).
    pub full_mesh: Option<Duration>,
    /// Established connections per router at the end of the wait: min,
    /// median, max.
    pub established: (usize, usize, usize),
    /// Resident memory per router, MB: min, median, max.
    pub rss_mb: (f64, f64, f64),
    /// CPU per router at rest, percent of one core: median and max.
    pub idle_cpu_pct: (f64, f64),
    /// Bytes per second each router sends at rest: median and max.
    pub idle_bytes_per_s: (f64, f64),
}

fn sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("{}: {e}", args[0]))?;
    if !out.status.success() {
        return Err(format!("{args:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Kernel settings a run raises, and puts back. One kernel holds every
/// simulated host's neighbours (at the default 1024 entries the underlay
/// itself drops) and queues every simulated host's received packets in one
/// per-CPU backlog (heartbeat rounds start together on every router, and
/// at the default 1000 packets a round of 100 routers overflows it).
const SYSCTLS: [(&str, u32); 4] = [
    ("/proc/sys/net/ipv4/neigh/default/gc_thresh1", 8192),
    ("/proc/sys/net/ipv4/neigh/default/gc_thresh2", 32768),
    ("/proc/sys/net/ipv4/neigh/default/gc_thresh3", 65536),
    ("/proc/sys/net/core/netdev_max_backlog", 65536),
];

/// Everything one run made, undone on drop.
struct Lab {
    prefix: String,
    dir: PathBuf,
    namespaces: Vec<String>,
    states: Vec<PathBuf>,
    /// Settings raised, with their old values.
    sysctls: Vec<(&'static str, String)>,
}

impl Lab {
    fn new(tag: &str) -> Result<Self, String> {
        let prefix = format!("wsc{}{tag}", std::process::id());
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let mut lab = Self { prefix, dir, namespaces: Vec::new(), states: Vec::new(), sysctls: Vec::new() };
        for (k, v) in SYSCTLS {
            let old = std::fs::read_to_string(k).map_err(|e| format!("{k}: {e}"))?;
            if old.trim().parse::<u32>().is_ok_and(|o| o < v) {
                std::fs::write(k, v.to_string()).map_err(|e| format!("raise {k}: {e}"))?;
                lab.sysctls.push((k, old));
            }
        }
        Ok(lab)
    }

    fn ns(&mut self, name: String) -> Result<String, String> {
        sh(&["ip", "netns", "add", &name])?;
        self.namespaces.push(name.clone());
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"])?;
        Ok(name)
    }

    fn underlay(&self) -> String {
        format!("{}u", self.prefix)
    }

    fn host(&self, i: usize) -> String {
        format!("{}h{i}", self.prefix)
    }

    fn state(&self, i: usize) -> PathBuf {
        self.dir.join(format!("h{i}"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Routers first: ours are those with a state directory under ours
        // (by pid file, or by command line for one killed or torn down
        // before it wrote its pid file).
        let mut pids: Vec<u32> = self.states.iter().filter_map(|s| router_pid(s)).collect();
        pids.extend(processes_mentioning(&self.dir));
        pids.sort_unstable();
        pids.dedup();
        for p in &pids {
            let _ = sh(&["kill", "-TERM", &p.to_string()]);
        }
        let end = Instant::now() + Duration::from_secs(15);
        while Instant::now() < end && pids.iter().any(|p| Path::new(&format!("/proc/{p}")).exists() && !zombie(*p)) {
            std::thread::sleep(Duration::from_millis(100));
        }
        for p in pids.iter().filter(|p| Path::new(&format!("/proc/{p}")).exists() && !zombie(**p)) {
            let _ = sh(&["kill", "-KILL", &p.to_string()]);
        }
        for ns in self.namespaces.drain(..).rev() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
        // WEAVE_SCALE_LOGS=DIR keeps each router's log (h1.log, ...) there.
        if let Some(keep) = std::env::var_os("WEAVE_SCALE_LOGS").map(PathBuf::from) {
            let _ = std::fs::create_dir_all(&keep);
            for (i, s) in self.states.iter().enumerate() {
                let _ = std::fs::copy(s.join("weave.log"), keep.join(format!("h{}.log", i + 1)));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        for (k, v) in self.sysctls.drain(..) {
            let _ = std::fs::write(k, v);
        }
    }
}

/// Processes whose command line names a path under `dir`.
fn processes_mentioning(dir: &Path) -> Vec<u32> {
    let (exact, under) = (dir.to_string_lossy().into_owned(), format!("{}/", dir.to_string_lossy()));
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).split('\0').any(|a| a == exact || a.starts_with(&under)))
        })
        .collect()
}

fn router_pid(state: &Path) -> Option<u32> {
    std::fs::read_to_string(state.join("weave.pid")).ok()?.trim().parse().ok()
}

fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z')).unwrap_or(true)
}

/// The underlay address of host `i` (1-based).
fn host_ip(i: usize) -> String {
    format!("10.200.{}.{}", i / 250, i % 250 + 1)
}

/// CPU ticks (user + system) a process has used.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = s.rsplit(')').next()?.split_whitespace().collect();
    // After the command: state is field 3, utime 14 and stime 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn rss_mb(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Bytes each host has sent onto the underlay, by port name.
fn underlay_tx(underlay: &str) -> Result<std::collections::BTreeMap<String, u64>, String> {
    let out = sh(&["ip", "-n", underlay, "-j", "-s", "link", "show"])?;
    let links: serde_json::Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
    Ok(links
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| {
            // What the host sends arrives on the underlay's end of its veth.
            let bytes = l["stats64"]["rx"]["bytes"].as_u64()?;
            Some((l["ifname"].as_str()?.to_owned(), bytes))
        })
        .collect())
}

fn min_med_max<T: Copy + PartialOrd>(mut v: Vec<T>) -> Option<(T, T, T)> {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    Some((*v.first()?, v[v.len() / 2], *v.last()?))
}

/// Each router's established connections and the peers it reaches, in
/// order, through the control sockets (0, 0 when a router does not answer
/// within 10 s).
async fn established(states: &[PathBuf]) -> Vec<(usize, usize)> {
    // Brief replies (no peer's links: a full one lists O(N²) of them), a
    // few at a time and each bounded: the polling must not load the
    // machine whose convergence it measures, nor take minutes when the
    // machine is saturated anyway.
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(8));
    let mut set = tokio::task::JoinSet::new();
    for (i, s) in states.iter().enumerate() {
        let socket = weave_core::control::socket_path(s);
        let limit = limit.clone();
        set.spawn(async move {
            let _permit = limit.acquire_owned().await.ok();
            let n = async {
                let mut c = weave_core::control::connect(&socket).await.ok()?;
                let st = c.status(weave_core::control::pb::StatusRequest { brief: true }).await.ok()?.into_inner();
                let conns = st.connections.iter().filter(|c| c.state == "established").count();
                let reach = st.peers.iter().filter(|p| p.reachable && p.name != st.name).count();
                Some((conns, reach))
            };
            (i, tokio::time::timeout(Duration::from_secs(10), n).await.ok().flatten().unwrap_or((0, 0)))
        });
    }
    let mut out = vec![(0, 0); states.len()];
    while let Some(Ok((i, n))) = set.join_next().await {
        out[i] = n;
    }
    out
}

/// Whether the router of `state` answers a ping within `limit`.
async fn answers_within(state: &Path, limit: Duration) -> bool {
    let socket = weave_core::control::socket_path(state);
    let end = Instant::now() + limit;
    while Instant::now() < end && !INTERRUPTED.load(Ordering::Relaxed) {
        if let Ok(mut c) = weave_core::control::connect(&socket).await {
            if c.ping(weave_core::control::pb::Empty {}).await.is_ok() {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}

/// Run once: make the hosts, launch the routers, wait for the mesh, and
/// measure.
pub fn run(cfg: &ScaleConfig) -> Result<ScaleRow, String> {
    let mut lab = Lab::new(if cfg.password { "p" } else { "" })?;
    let u = lab.ns(lab.underlay())?;
    sh(&["ip", "-n", &u, "link", "add", "br0", "type", "bridge"])?;
    sh(&["ip", "-n", &u, "link", "set", "br0", "up"])?;
    for i in 1..=cfg.n {
        check_interrupted()?;
        let h = lab.ns(lab.host(i))?;
        let port = format!("p{i}");
        sh(&["ip", "-n", &u, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &h])?;
        sh(&["ip", "-n", &u, "link", "set", &port, "master", "br0", "up"])?;
        sh(&["ip", "-n", &h, "addr", "add", &format!("{}/16", host_ip(i)), "dev", "eth0"])?;
        sh(&["ip", "-n", &h, "link", "set", "eth0", "up"])?;
    }

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let launched = Instant::now();
    for i in 1..=cfg.n {
        check_interrupted()?;
        let state = lab.state(i);
        lab.states.push(state.clone());
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", lab.host(i))).arg(&cfg.weave).arg("--state-dir").arg(&state);
        c.args(["launch", "--nickname", &format!("h{i}"), "--no-fastdp", "--no-docker", "--no-plugin", "--host", &host_ip(i)]);
        if let Some(l) = cfg.conn_limit {
            c.args(["--conn-limit", &l.to_string()]);
        }
        // WEAVE_SCALE_ARGS: more launch arguments for every router, split
        // at whitespace (e.g. `--log-level info,weave_gossip::driver=debug`
        // to log what each holds under load).
        c.args(std::env::var("WEAVE_SCALE_ARGS").unwrap_or_default().split_whitespace());
        if cfg.password {
            c.env("WEAVE_PASSWORD", "scale-benchmark");
        }
        if i > 1 {
            c.arg(host_ip(1));
        }
        let out = c.output().map_err(|e| format!("weave launch: {e}"))?;
        if !out.status.success() {
            // `weave launch` gives a router 30 s to answer; on a machine
            // saturated by the routers already up, a live one may need more.
            let slow = String::from_utf8_lossy(&out.stderr).contains("did not become ready");
            if !(slow && router_pid(&state).is_some() && rt.block_on(answers_within(&state, Duration::from_secs(180)))) {
                return Err(format!("launch of host {i}: {}", String::from_utf8_lossy(&out.stderr)));
            }
            eprintln!("host {i}: ready only after its launch gave up waiting");
        }
    }
    let launch = launched.elapsed();
    let last = Instant::now();

    // Under a connection limit below N-1 there is no full mesh: a router
    // is complete once it reaches every other peer (through routes).
    let limited = cfg.conn_limit.is_some_and(|l| l < cfg.n - 1);
    let complete = |(conns, reach): (usize, usize)| if limited { reach >= cfg.n - 1 } else { conns >= cfg.n - 1 };
    // A status reply lists every peer's connections (O(N²) for a full
    // mesh): poll only the routers not yet complete, and all of them once
    // more to confirm, so that the polling does not slow what it measures.
    let mut counts = vec![(0, 0); cfg.n];
    let full_mesh = loop {
        let pending: Vec<usize> = (0..cfg.n).filter(|&i| !complete(counts[i])).collect();
        let confirming = pending.is_empty();
        let polled: Vec<usize> = if confirming { (0..cfg.n).collect() } else { pending };
        let states: Vec<PathBuf> = polled.iter().map(|&i| lab.states[i].clone()).collect();
        let at = last.elapsed();
        for (i, c) in polled.into_iter().zip(rt.block_on(established(&states))) {
            counts[i] = c;
        }
        let done = counts.iter().filter(|c| complete(**c)).count();
        eprintln!(
            "{:>6.1} s after the last launch: {done}/{} routers complete, fewest connections {}, fewest peers reached {}",
            at.as_secs_f64(),
            cfg.n,
            counts.iter().map(|c| c.0).min().unwrap_or(0),
            counts.iter().map(|c| c.1).min().unwrap_or(0),
        );
        if confirming && done == cfg.n {
            break Some(at);
        }
        if last.elapsed() > cfg.converge_timeout {
            break None;
        }
        if !confirming {
            nap(Duration::from_secs(1))?;
        }
    };
    let established = min_med_max(counts.iter().map(|c| c.0).collect()).unwrap_or_default();

    let pids: Vec<u32> = lab.states.iter().filter_map(|s| router_pid(s)).collect();
    if pids.len() != cfg.n {
        return Err(format!("{} of {} routers left a pid", pids.len(), cfg.n));
    }
    let (mut idle_cpu_pct, mut idle_bytes_per_s) = ((0.0, 0.0), (0.0, 0.0));
    if !cfg.idle.is_zero() {
        // Let the last topology updates and anti-entropy rounds settle.
        nap(Duration::from_secs(5))?;
        let t0 = Instant::now();
        let cpu0: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p).unwrap_or(0)).collect();
        let tx0 = underlay_tx(&u)?;
        nap(cfg.idle)?;
        let secs = t0.elapsed().as_secs_f64();
        let cpu1: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p).unwrap_or(0)).collect();
        let tx1 = underlay_tx(&u)?;
        // Clock ticks are 1/100 s on Linux.
        let cpu: Vec<f64> = cpu0.iter().zip(&cpu1).map(|(a, b)| (b.saturating_sub(*a)) as f64 / 100.0 / secs * 100.0).collect();
        let bytes: Vec<f64> = tx1.iter().filter(|(k, _)| k.starts_with('p')).map(|(k, b)| b.saturating_sub(*tx0.get(k).unwrap_or(b)) as f64 / secs).collect();
        let c = min_med_max(cpu).unwrap_or_default();
        let b = min_med_max(bytes).unwrap_or_default();
        idle_cpu_pct = (c.1, c.2);
        idle_bytes_per_s = (b.1, b.2);
    }
    let rss = min_med_max(pids.iter().filter_map(|p| rss_mb(*p)).collect()).unwrap_or_default();
    let row = ScaleRow { n: cfg.n, password: cfg.password, launch, full_mesh, established, rss_mb: rss, idle_cpu_pct, idle_bytes_per_s };
    if cfg.hold {
        eprintln!("{row:?}");
        eprintln!("holding the mesh (router pids in {}/h*/weave.pid, hosts in /run/netns/{}); interrupt to tear down", lab.dir.display(), lab.host(1));
        loop {
            nap(Duration::from_secs(1))?;
        }
    }
    Ok(row)
}

/// The `weave` binary next to the running executable (or one level up,
/// from a test's `deps/`).
pub fn weave_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join("weave"), dir.parent()?.join("weave")].into_iter().find(|p| p.exists())
}
