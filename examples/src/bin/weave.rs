//! The `weave` command: the CLI and the router daemon in one binary.
//!
//! Every command but `router`/`launch`/`version` talks to the router of
//! this network namespace over its control socket
//! (`$WEAVE_STATE_DIR/weave.sock`). Exit status: 0 success, 1 error (one
//! line on stderr saying what to do), 2 usage.
// Doc comments here are the CLI's --help text (clap), not rustdoc: `[ip:]`
// and `host[:port]` are what users type, not links.
#![allow(rustdoc::broken_intra_doc_links)]

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use weave_core::PeerName;
use weave_examples::control::{self, pb, VERSION};
use weave_examples::router::{default_peer_name, Router, RouterConfig};
use weave_ipam::ipam::InitMode;

#[derive(Parser, Debug)]
#[command(name = "weave", version, about = "Weave overlay network: router and control", disable_version_flag = true)]
struct Cli {
    /// State directory (control socket, IPAM state, log).
    #[arg(long, env = "WEAVE_STATE_DIR", default_value = "/var/lib/weave", global = true)]
    state_dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start the router for this network namespace in the background.
    Launch(RouterArgs),
    /// Run the router in the foreground (SIGTERM stops it).
    Router(RouterArgs),
    /// Stop the router (containers keep their interfaces).
    Stop,
    /// Print the shell commands that point the Docker client at the
    /// router's Docker API proxy: `eval $(weave env)`.
    Env {
        /// Print the commands that undo it.
        #[arg(long)]
        restore: bool,
    },
    /// Print the Docker client argument for the proxy (`docker $(weave config) ...`).
    Config,

    /// Add direct targets.
    Connect {
        /// Replace the targets with these.
        #[arg(long)]
        replace: bool,
        /// host[:port]
        peers: Vec<String>,
    },
    /// Remove direct targets.
    Forget {
        /// host[:port]
        #[arg(required = true)]
        peers: Vec<String>,
    },
    /// Connect a container to the overlay: [ADDR...] CONTAINER.
    #[command(disable_help_flag = true)]
    Attach {
        /// Print help (-h is the DNS name, as in Weave).
        #[arg(long, action = clap::ArgAction::Help)]
        help: Option<bool>,
        /// Do not register a DNS name.
        #[arg(long)]
        without_dns: bool,
        /// DNS name.
        #[arg(short = 'h', long = "hostname")]
        hostname: Option<String>,
        /// Do not route 224.0.0.0/4 through the overlay.
        #[arg(long)]
        no_multicast_route: bool,
        /// Rewrite the container's /etc/hosts with its name and addresses.
        #[arg(long)]
        rewrite_hosts: bool,
        /// NAME:ADDR for the rewritten /etc/hosts (with --rewrite-hosts).
        #[arg(long = "add-host", value_name = "NAME:ADDR", value_parser = parse_add_host, requires = "rewrite_hosts")]
        add_hosts: Vec<String>,
        /// [ip:]CIDR, net:CIDR or net:default..., then the container.
        #[arg(required = true, num_args = 1..)]
        args: Vec<String>,
    },
    /// Remove a container's overlay addresses: [ADDR...] CONTAINER.
    Detach {
        /// Addresses, then the container.
        #[arg(required = true, num_args = 1..)]
        args: Vec<String>,
    },
    /// Give the host addresses on the bridge (from IPAM unless given).
    #[command(disable_help_flag = true)]
    Expose {
        /// Print help.
        #[arg(long, action = clap::ArgAction::Help)]
        help: Option<bool>,
        /// DNS name for the host's exposed addresses.
        #[arg(short = 'h', long = "hostname")]
        hostname: Option<String>,
        /// Do not masquerade.
        #[arg(long)]
        without_masquerade: bool,
        /// [ip:]CIDR, net:CIDR or net:default.
        addrs: Vec<String>,
    },
    /// Remove the host's overlay addresses.
    Hide {
        /// Addresses (all when none).
        addrs: Vec<String>,
    },
    /// Stop, hand IPAM space to a live peer, remove bridge, devices, rules
    /// and state.
    Reset {
        /// Do not wait for a peer to take the address space.
        #[arg(long)]
        force: bool,
    },
    /// Add DNS entries: [IP...] CONTAINER [-h FQDN], or IP... -h FQDN.
    #[command(name = "dns-add", disable_help_flag = true)]
    DnsAdd {
        /// Print help.
        #[arg(long, action = clap::ArgAction::Help)]
        help: Option<bool>,
        /// The name.
        #[arg(short = 'h', long = "hostname")]
        hostname: Option<String>,
        /// IPs, then the container (optional with -h).
        args: Vec<String>,
    },
    /// Remove DNS entries: [IP...] CONTAINER [-h FQDN], or IP... -h FQDN.
    #[command(name = "dns-remove", disable_help_flag = true)]
    DnsRemove {
        /// Print help.
        #[arg(long, action = clap::ArgAction::Help)]
        help: Option<bool>,
        /// The name.
        #[arg(short = 'h', long = "hostname")]
        hostname: Option<String>,
        /// IPs, then the container (optional with -h).
        args: Vec<String>,
    },
    /// Print the `docker run` arguments that make a container resolve
    /// through weaveDNS: `--dns=ADDR --dns-search=DOMAIN` (as Weave's
    /// `weave dns-args`).
    DnsArgs,
    /// The addresses weaveDNS answers for NAME.
    #[command(name = "dns-lookup")]
    DnsLookup {
        /// The name.
        name: String,
    },
    /// Reclaim the address space of dead peers (names or nicknames).
    Rmpeer {
        /// The dead peers.
        #[arg(required = true)]
        peers: Vec<String>,
    },
    /// Wait until IPAM is initialised.
    Prime,
    /// Attached containers: ID MAC CIDR...
    Ps {
        /// Only these.
        containers: Vec<String>,
    },
    /// Status (targets, connections, peers).
    Status {
        /// Section.
        #[arg(value_parser = ["targets", "connections", "peers", "ipam", "dns"])]
        section: Option<String>,
    },
    /// Full state as JSON, or through a Go template (`-f '{{.Router.Name}}'`).
    Report {
        /// `json`, or a Go text/template over the report (as Weave's).
        #[arg(short = 'f', long, default_value = "json")]
        format: String,
    },
    /// Print the version.
    Version,
    /// Run as the CNI plugin (as if invoked as weave-net, or weave-ipam
    /// with `ipam`): CNI_* in the environment, configuration on stdin.
    Cni {
        /// net (weave-net) or ipam (weave-ipam).
        #[arg(value_parser = ["net", "ipam"], default_value = "net")]
        which: String,
    },
}

/// Addresses as Weave prints them after attach, detach, expose and hide:
/// bare (`10.32.0.1`), not CIDRs.
fn bare(cidrs: &[String]) -> String {
    cidrs.iter().map(|c| c.split('/').next().unwrap_or(c)).collect::<Vec<_>>().join(" ")
}

/// A `--log-level` as tracing's filter takes it: Weave's words (`warning`,
/// `fatal`, `panic`) mapped to tracing's levels.
fn log_filter(level: &str) -> &str {
    match level.to_ascii_lowercase().as_str() {
        "warning" => "warn",
        "fatal" | "panic" => "error",
        _ => level,
    }
}

/// Raise the soft limit on open files to the hard limit: a router holds a
/// socket per peer, per DNS and HTTP client, and idle clients by the
/// thousand must not starve it (the soft limit is often 1024).
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(error = %e, soft, "cannot raise the open-file limit");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit"),
    }
}

/// The password from `--password` (or `WEAVE_PASSWORD`), or from
/// `--password-file`, which must not be readable by group or others.
fn password_of(a: &RouterArgs) -> Result<Option<String>, Fail> {
    let Some(path) = &a.password_file else { return Ok(a.password.clone().filter(|p| !p.is_empty())) };
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| Fail(format!("cannot read the password file {}: {e}", path.display())))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Fail(format!("the password file {} is readable by others (mode {mode:o}): chmod 600 it", path.display())));
    }
    let text = std::fs::read_to_string(path).map_err(|e| Fail(format!("cannot read the password file {}: {e}", path.display())))?;
    let p = text.trim_end_matches(['\n', '\r']).to_owned();
    if p.is_empty() {
        return Err(Fail(format!("the password file {} is empty", path.display())));
    }
    Ok(Some(p))
}

/// `args` without `--password X` / `--password=X`, and the password.
/// glibc's allocator settings for the router. Two arenas: by default
/// glibc gives each thread that allocates an arena of its own, and memory
/// freed in one (after a burst: a mesh forming, a full topology) stays
/// there; with a router on every host, that is megabytes each. And a fixed
/// mmap threshold of 64 kB: glibc otherwise raises the threshold to the
/// size of each large block freed, so after a mesh forms its large
/// messages and buffers come from the heap and the pages stay with the
/// router (median RSS 50 MB at 200 routers, against ~30 MB of live data).
/// Blocks above 64 kB are mapped on their own, and a buffer that is never
/// written (most of the sleeve's, at rest) costs no memory. Settings the
/// caller made win.
fn router_tunables(inherited: Option<&str>) -> String {
    const OURS: [(&str, &str); 2] = [("glibc.malloc.arena_max", "2"), ("glibc.malloc.mmap_threshold", "65536")];
    let mut out: Vec<String> = inherited.filter(|t| !t.is_empty()).map(|t| vec![t.to_owned()]).unwrap_or_default();
    for (name, value) in OURS {
        if !inherited.is_some_and(|t| t.split(':').any(|kv| kv.split('=').next() == Some(name))) {
            out.push(format!("{name}={value}"));
        }
    }
    out.join(":")
}

fn without_password(args: impl Iterator<Item = String>) -> (Vec<String>, Option<String>) {
    let (mut out, mut password) = (Vec::new(), None);
    let mut args = args.peekable();
    while let Some(a) = args.next() {
        if a == "--password" {
            password = args.next();
        } else if let Some(p) = a.strip_prefix("--password=") {
            password = Some(p.to_owned());
        } else {
            out.push(a);
        }
    }
    (out, password)
}

#[derive(Args, Debug, Clone)]
struct RouterArgs {
    /// Peer name (MAC form); default: stable per host and namespace.
    #[arg(long)]
    name: Option<PeerName>,
    /// Nickname (default: hostname).
    #[arg(long)]
    nickname: Option<String>,
    /// Password: encrypts control and data traffic.
    #[arg(long, env = "WEAVE_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Read the password from this file (only its owner may read it).
    #[arg(long, conflicts_with = "password")]
    password_file: Option<PathBuf>,
    /// Subnets whose peers may skip data encryption.
    #[arg(long, value_delimiter = ',')]
    trusted_subnets: Vec<ipnet::IpNet>,
    /// Router port.
    #[arg(long, env = "WEAVE_PORT", default_value_t = 6783)]
    port: u16,
    /// Bind address.
    #[arg(long, default_value = "0.0.0.0")]
    host: IpAddr,
    /// Do not dial peers learnt through gossip.
    #[arg(long)]
    no_discovery: bool,
    /// Connection limit (0: none, as in Weave).
    #[arg(long, default_value_t = 200)]
    conn_limit: usize,
    /// IPAM range (empty: no IPAM).
    #[arg(long, default_value = "10.32.0.0/12")]
    ipalloc_range: String,
    /// Subnet for net:default.
    #[arg(long)]
    ipalloc_default_subnet: Option<ipnet::Ipv4Net>,
    /// consensus[=N] | seed=NAME,... | observer
    #[arg(long)]
    ipalloc_init: Option<String>,
    /// Use only the sleeve (a flag: it takes no value, so a peer after it
    /// stays a peer).
    /// WEAVE_NO_FASTDP set to anything but a false word (0, false, no,
    /// off, n, f) means the same.
    #[arg(long, env = "WEAVE_NO_FASTDP", value_parser = clap::builder::FalseyValueParser::new())]
    no_fastdp: bool,
    /// Overlay MTU [default: 1376; 65521 with --no-fastdp, as Weave's 65535
    /// but for the TAP device's limit: the sleeve answers what does not fit
    /// its path with "fragmentation needed", or fragments it].
    #[arg(long, env = "WEAVE_MTU")]
    mtu: Option<u32>,
    /// Log level: debug, info, warning (or warn), error.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Connect to the targets of the last run (kept in the state directory).
    #[arg(long)]
    resume: bool,
    /// No weaveDNS.
    #[arg(long)]
    no_dns: bool,
    /// DNS domain.
    #[arg(long, default_value = "weave.local.")]
    dns_domain: String,
    /// Where weaveDNS listens (the address goes on the bridge; default: a
    /// link-local address of this host's own, port 53).
    #[arg(long)]
    dns_listen_address: Option<std::net::SocketAddr>,
    /// TTL of weaveDNS answers.
    #[arg(long, default_value_t = 1)]
    dns_ttl: u32,
    /// Upstream resolvers (default: from --resolv-conf).
    #[arg(long, value_delimiter = ',')]
    dns_upstream: Vec<std::net::SocketAddr>,
    /// Read-only HTTP (/status, /report, /metrics); empty disables it.
    /// Weave's `--status-addr`, `WEAVE_STATUS_ADDR` and `WEAVE_HTTP_ADDR`
    /// say the same.
    #[arg(long, visible_alias = "status-addr", env = "WEAVE_STATUS_ADDR", default_value = "127.0.0.1:6784")]
    http_addr: String,
    /// Also serve /metrics here (default: off).
    #[arg(long, env = "WEAVE_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// resolv.conf to take upstream resolvers from.
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// Serve the Docker network plugin (default: when Docker answers and
    /// the router runs in the host's own network namespace, as dockerd);
    /// `--plugin=false` as `--no-plugin`.
    #[arg(long, conflicts_with = "no_plugin", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    plugin: Option<bool>,
    /// Do not serve the Docker network plugin.
    #[arg(long)]
    no_plugin: bool,
    /// The plugin's driver name, socket (/run/docker/plugins/NAME.sock)
    /// and Docker network.
    #[arg(long, default_value = "weave")]
    plugin_name: String,
    /// Do not use Docker even when a daemon answers.
    #[arg(long)]
    no_docker: bool,
    /// Seconds a dead Docker container keeps its addresses and names.
    #[arg(long, default_value_t = 10)]
    docker_grace: u64,
    /// Serve the Docker API proxy when Docker answers (`--proxy=false`: not).
    #[arg(long, num_args = 0..=1, require_equals = true, default_value = "true", default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    proxy: bool,
    /// Proxy: also listen here (`tcp://ADDR:PORT`; the unix socket in the
    /// state directory is always served). Anyone who reaches it may use
    /// Docker: a trusted network only.
    #[arg(short = 'H', value_name = "tcp://ADDR:PORT")]
    proxy_listen: Vec<String>,
    /// Proxy: show the weave address in `docker inspect`.
    #[arg(long)]
    rewrite_inspect: bool,
    /// Proxy: attach only containers given a WEAVE_CIDR.
    #[arg(long)]
    no_default_ipalloc: bool,
    /// Proxy: its containers do not route multicast through the overlay.
    #[arg(long)]
    no_multicast_route: bool,
    /// Proxy: its containers get no weaveDNS (hostname, resolver or name).
    #[arg(long)]
    without_dns: bool,
    /// Proxy: take the hostname from this container label.
    #[arg(long)]
    hostname_from_label: Option<String>,
    /// Proxy: the regular expression the name (or label) is matched with.
    #[arg(long, default_value = "^(.*)$")]
    hostname_match: String,
    /// Proxy: the hostname made from the match ($1, ...).
    #[arg(long, default_value = "$1")]
    hostname_replacement: String,
    /// Initial peers (host[:port]).
    peers: Vec<String>,
}

/// A one-line error and exit status 1.
struct Fail(String);

impl<E: std::fmt::Display> From<E> for Fail {
    fn from(e: E) -> Self {
        Self(e.to_string())
    }
}

/// Run as a CNI plugin: the result or error JSON on stdout.
fn cni_main(kind: weave_examples::cni::Kind) -> ExitCode {
    use std::io::{Read, Write};
    let mut stdin = Vec::new();
    // VERSION may come with no configuration at all.
    if std::env::var("CNI_COMMAND").as_deref() != Ok("VERSION") || !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        let _ = std::io::stdin().read_to_end(&mut stdin);
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            println!("{}", serde_json::json!({ "cniVersion": "1.1.0", "code": 5, "msg": format!("cannot start: {e}") }));
            return ExitCode::from(1);
        }
    };
    let (out, code) = rt.block_on(weave_examples::cni::run(kind, |k| std::env::var(k).ok(), &stdin));
    let _ = std::io::stdout().write_all(out.as_bytes());
    ExitCode::from(code)
}

fn main() -> ExitCode {
    // One binary: invoked as weave-net or weave-ipam it is the CNI plugin.
    let argv0 = std::env::args_os().next().map(PathBuf::from).and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned())).unwrap_or_default();
    if let Some(kind) = weave_examples::cni::Kind::from_name(&argv0).filter(|_| argv0.starts_with("weave-")) {
        return cni_main(kind);
    }
    // A container's entrypoint, put there by the Docker API proxy.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == weave_examples::proxy::WAIT_ARG) {
        let e = weave_examples::proxy::wait_then_exec(&args[2..]);
        eprintln!("weave: cannot run the container's command: {e}");
        return ExitCode::from(127);
    }
    let cli = Cli::parse();
    if let Cmd::Cni { which } = &cli.cmd {
        return cni_main(weave_examples::cni::Kind::from_name(which).unwrap_or(weave_examples::cni::Kind::Net));
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weave: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(m)) => {
            eprintln!("weave: {m}");
            ExitCode::from(1)
        }
    }
}

fn init_mode(spec: Option<&str>, peers: usize) -> Result<InitMode, Fail> {
    match spec {
        None | Some("consensus") => Ok(InitMode::Consensus { quorum: peers / 2 + 1 }),
        Some(s) if s.starts_with("consensus=") => {
            let n: usize = s["consensus=".len()..].parse().map_err(|_| Fail(format!("invalid --ipalloc-init {s}: consensus=N needs a number")))?;
            Ok(InitMode::Consensus { quorum: n / 2 + 1 })
        }
        Some(s) if s.starts_with("seed=") => {
            let names = s["seed=".len()..]
                .split(',')
                .map(str::parse)
                .collect::<Result<Vec<PeerName>, _>>()
                .map_err(|e| Fail(format!("invalid --ipalloc-init {s}: {e}")))?;
            Ok(InitMode::Seeds(names))
        }
        Some("observer") => Ok(InitMode::Observer),
        Some(s) => Err(Fail(format!("invalid --ipalloc-init {s}: use consensus[=N], seed=NAME,... or observer"))),
    }
}

/// `--add-host NAME:ADDR`: a host name and an IP address.
fn parse_add_host(v: &str) -> Result<String, String> {
    match v.split_once(':') {
        Some((name, addr)) if !name.is_empty() && !name.contains(char::is_whitespace) && addr.parse::<std::net::IpAddr>().is_ok() => Ok(v.to_owned()),
        _ => Err(format!("{v:?} is not NAME:ADDR (e.g. db.example:10.9.9.9)")),
    }
}

fn router_config(state_dir: &Path, a: &RouterArgs) -> Result<RouterConfig, Fail> {
    let mut peers = a.peers.clone();
    if a.resume && !peers.is_empty() {
        return Err(Fail("--resume connects to the peers of the last run: give no peers with it".into()));
    }
    if a.resume {
        let saved = std::fs::read_to_string(Router::targets_file(state_dir)).unwrap_or_default();
        for t in saved.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if !peers.iter().any(|p| p == t) {
                peers.push(t.to_owned());
            }
        }
    }
    let range = if a.ipalloc_range.is_empty() {
        None
    } else {
        Some(a.ipalloc_range.parse().map_err(|_| Fail(format!("invalid --ipalloc-range {}", a.ipalloc_range)))?)
    };
    let nickname = a
        .nickname
        .clone()
        .unwrap_or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "weave".into()));
    // The plugin's interfaces are made for dockerd, in its namespace: by
    // default it is served only by a router running there too.
    let docker_sock =
        std::env::var("DOCKER_HOST").ok().and_then(|h| h.strip_prefix("unix://").map(PathBuf::from)).unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"));
    let same_ns = |a: &str, b: &str| matches!((std::fs::metadata(a), std::fs::metadata(b)), (Ok(x), Ok(y)) if { use std::os::unix::fs::MetadataExt; x.ino() == y.ino() && x.dev() == y.dev() });
    let dockerd_ns = weave_examples::docker::daemon_pid().map(|p| format!("/proc/{p}/ns/net"));
    let forced = a.plugin == Some(true);
    let plugin = !a.no_plugin
        && a.plugin != Some(false)
        && !a.no_docker
        && (forced || (docker_sock.exists() && dockerd_ns.is_some_and(|d| same_ns("/proc/self/ns/net", &d))));
    if forced && range.is_none() {
        return Err(Fail("--plugin needs IPAM: give an --ipalloc-range".into()));
    }
    if !weave_dataplane::netlink::valid_ifname(&a.plugin_name) {
        return Err(Fail(format!("invalid --plugin-name {:?}: use letters, digits, - and _ (at most 15)", a.plugin_name)));
    }
    let proxy = if a.proxy && !a.no_docker {
        let mut p = weave_examples::proxy::ProxySettings::new(weave_examples::proxy::socket_path(state_dir));
        for h in &a.proxy_listen {
            let addr = h.strip_prefix("tcp://").and_then(|x| x.parse().ok());
            p.tcp.push(addr.ok_or_else(|| Fail(format!("invalid -H {h}: use tcp://ADDR:PORT (the unix socket is always served in the state directory)")))?);
        }
        p.rewrite_inspect = a.rewrite_inspect;
        p.default_ipalloc = !a.no_default_ipalloc;
        p.multicast_route = !a.no_multicast_route;
        p.dns = !a.without_dns;
        p.hostname_from_label = a.hostname_from_label.clone();
        p.hostname_match = regex::Regex::new(&a.hostname_match).map_err(|e| Fail(format!("invalid --hostname-match: {e}")))?;
        p.hostname_replacement = a.hostname_replacement.clone();
        Some(p)
    } else {
        None
    };
    Ok(RouterConfig {
        proxy,
        docker: !a.no_docker,
        docker_grace: std::time::Duration::from_secs(a.docker_grace),
        plugin: (plugin && range.is_some()).then(|| weave_examples::plugin::PluginSettings::new(&a.plugin_name)),
        state_dir: state_dir.to_owned(),
        name: a.name.unwrap_or_else(default_peer_name),
        nickname,
        password: password_of(a)?,
        port: a.port,
        host: a.host,
        discovery: !a.no_discovery,
        conn_limit: if a.conn_limit == 0 { usize::MAX } else { a.conn_limit },
        peers: peers.clone(),
        ipalloc_range: range,
        ipalloc_default_subnet: a.ipalloc_default_subnet,
        ipalloc_init: init_mode(a.ipalloc_init.as_deref(), peers.len() + 1)?,
        fastdp: !a.no_fastdp,
        mtu: a.mtu.unwrap_or(if a.no_fastdp { weave_dataplane::SLEEVE_ONLY_MTU } else { weave_dataplane::DEFAULT_MTU }),
        trusted_subnets: a.trusted_subnets.clone(),
        bridge: "weave".into(),
        dns: (!a.no_dns).then(|| weave_examples::router::DnsSettings {
            domain: a.dns_domain.clone(),
            listen: a.dns_listen_address,
            ttl: a.dns_ttl,
            upstreams: if a.dns_upstream.is_empty() {
                weave_dns::server::Upstreams::ResolvConf(a.resolv_conf.clone())
            } else {
                weave_dns::server::Upstreams::Fixed(a.dns_upstream.clone())
            },
        }),
    })
}

async fn client(state_dir: &Path) -> Result<control::ControlClient<tonic::transport::Channel>, Fail> {
    let sock = control::socket_path(state_dir);
    control::connect(&sock).await.map_err(|_| Fail(format!("no router is running here ({} does not answer); start one with 'weave launch'", sock.display())))
}

/// The Docker API proxy's address (`unix://...`), if it answers.
async fn proxy_socket(state_dir: &Path) -> Result<String, Fail> {
    let sock = weave_examples::proxy::socket_path(state_dir);
    match tokio::net::UnixStream::connect(&sock).await {
        Ok(_) => Ok(format!("unix://{}", sock.display())),
        Err(_) => Err(Fail(format!(
            "the weave Docker API proxy is not running ({} does not answer); launch the router with Docker running, without --proxy=false",
            sock.display()
        ))),
    }
}

/// A client of a router that answers, if one runs here.
async fn running(state_dir: &Path) -> Option<control::ControlClient<tonic::transport::Channel>> {
    let mut c = control::connect(&control::socket_path(state_dir)).await.ok()?;
    c.ping(pb::Empty {}).await.ok()?;
    Some(c)
}

/// The running router's PID, from its state directory.
fn router_pid(state_dir: &Path) -> Option<u32> {
    std::fs::read_to_string(state_dir.join("weave.pid")).ok().and_then(|p| p.trim().parse().ok())
}

/// Wait (up to 20 s) until the router process `pid` is gone (a zombie
/// counts as gone), or without a PID until its socket is; false on timeout.
async fn wait_gone(state_dir: &Path, pid: Option<u32>) -> bool {
    let alive = || match pid {
        Some(p) => Path::new(&format!("/proc/{p}")).exists() && !std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| s.contains(") Z ")),
        None => control::socket_path(state_dir).exists(),
    };
    let end = Instant::now() + Duration::from_secs(20);
    while alive() {
        if Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

fn rpc_err(s: tonic::Status) -> Fail {
    Fail(s.message().to_owned())
}

fn need_root() -> Result<(), Fail> {
    if nix_is_root() {
        Ok(())
    } else {
        Err(Fail("needs root (CAP_NET_ADMIN) to manage network devices; run it as root".into()))
    }
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))).unwrap_or(false)
}

async fn run(cli: Cli) -> Result<(), Fail> {
    let state = cli.state_dir.clone();
    match cli.cmd {
        Cmd::Version => {
            println!("weave {VERSION}");
            Ok(())
        }
        Cmd::Cni { .. } => unreachable!("handled in main"),
        Cmd::Router(a) => {
            need_root()?;
            let mut cfg = router_config(&state, &a)?;
            if a.name.is_none() {
                cfg.name = weave_examples::router::host_peer_name(&state, &cfg.bridge).await;
            }
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_ansi(false)
                // A log that cannot be written (its disk is full) must not
                // take the router down: tracing-subscriber would report the
                // failure with eprintln!, which panics on the same stderr.
                .log_internal_errors(false)
                // hickory-server logs every query at info: keep it to warnings.
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_new(format!("{},hickory_server=warn", log_filter(&a.log_level)))
                        .map_err(|e| Fail(format!("invalid --log-level: {e}")))?,
                )
                .init();
            if running(&state).await.is_some() {
                return Err(Fail(format!("a router is already running with state in {}; 'weave stop' it first", state.display())));
            }
            let http: Option<std::net::SocketAddr> = {
                // Weave's older name for the status address, when nothing newer says otherwise.
                let from_env =
                    std::env::var("WEAVE_HTTP_ADDR").ok().filter(|_| std::env::var_os("WEAVE_STATUS_ADDR").is_none() && a.http_addr == "127.0.0.1:6784");
                let addr = from_env.unwrap_or_else(|| a.http_addr.clone());
                if addr.is_empty() {
                    None
                } else {
                    Some(addr.parse().map_err(|_| Fail(format!("invalid --http-addr {addr}")))?)
                }
            };
            raise_fd_limit();
            let router = Router::start(cfg).await.map_err(|e| Fail(format!("cannot start the router: {e}")))?;
            for (addr, only_metrics) in http.map(|a| (a, false)).into_iter().chain(a.metrics_addr.map(|a| (a, true))) {
                let r = router.clone();
                let listener = tokio::spawn(async move {
                    if let Err(e) = weave_examples::http::serve(r, addr, only_metrics).await {
                        tracing::error!(%addr, error = %e, "HTTP server stopped");
                    }
                });
                drop(listener);
            }
            std::fs::write(state.join("weave.pid"), std::process::id().to_string())?;
            let r2 = router.clone();
            let stop = async move {
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
                tokio::select! {
                    _ = r2.stopped() => {}
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            };
            control::serve(router.clone(), &control::socket_path(&state), stop).await?;
            router.shutdown().await;
            drop(router);
            let _ = std::fs::remove_file(state.join("weave.pid"));
            Ok(())
        }
        Cmd::Launch(a) => {
            need_root()?;
            router_config(&state, &a)?;
            if running(&state).await.is_some() {
                return Err(Fail("a router is already running in this network namespace; 'weave stop' it first".into()));
            }
            std::fs::create_dir_all(&state)?;
            let log = std::fs::OpenOptions::new().create(true).append(true).open(state.join("weave.log"))?;
            let exe = std::env::current_exe()?;
            let mut cmd = std::process::Command::new(exe);
            cmd.arg("--state-dir").arg(&state).arg("router");
            // The password goes by the environment, never in the daemon's
            // arguments (which any user can read in /proc).
            let (args, password) = without_password(std::env::args().skip_while(|x| x != "launch").skip(1));
            cmd.args(args);
            if let Some(p) = password.or_else(|| a.password.clone()) {
                cmd.env("WEAVE_PASSWORD", p);
            }
            cmd.env("GLIBC_TUNABLES", router_tunables(std::env::var("GLIBC_TUNABLES").ok().as_deref()));
            use std::os::unix::process::CommandExt;
            cmd.process_group(0).stdin(std::process::Stdio::null()).stdout(log.try_clone()?).stderr(log);
            let mut child = cmd.spawn()?;
            let end = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    // Its last words say why (e.g. an overlapping range).
                    let log = std::fs::read_to_string(state.join("weave.log")).unwrap_or_default();
                    let why = log.lines().rev().find(|l| l.starts_with("weave: ")).map(|l| l.trim_start_matches("weave: ").to_owned());
                    return Err(Fail(why.unwrap_or_else(|| format!("the router exited ({status}); see {}", state.join("weave.log").display()))));
                }
                if let Ok(mut c) = client(&state).await {
                    if let Ok(p) = c.ping(pb::Empty {}).await {
                        println!("{}", p.into_inner().name);
                        return Ok(());
                    }
                }
                if Instant::now() > end {
                    return Err(Fail(format!("the router did not become ready in 30 s; see {}", state.join("weave.log").display())));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Cmd::Stop => {
            let mut c = client(&state).await?;
            let pid = router_pid(&state);
            c.stop(pb::Empty {}).await.map_err(rpc_err)?;
            // Return once the process is gone (its ports are free again).
            if wait_gone(&state, pid).await {
                Ok(())
            } else {
                Err(Fail("the router did not stop within 20 s".into()))
            }
        }
        Cmd::Connect { replace, peers } => {
            client(&state).await?.connect(pb::ConnectRequest { peers, replace }).await.map_err(rpc_err)?;
            Ok(())
        }
        Cmd::Forget { peers } => {
            client(&state).await?.forget(pb::ForgetRequest { peers }).await.map_err(rpc_err)?;
            Ok(())
        }
        Cmd::Attach { without_dns, hostname, no_multicast_route, rewrite_hosts, add_hosts, mut args, .. } => {
            let container = args.pop().expect("required");
            let r = client(&state)
                .await?
                .attach(pb::AttachRequest {
                    container,
                    addrs: args,
                    without_dns,
                    hostname: hostname.unwrap_or_default(),
                    no_multicast_route,
                    rewrite_hosts,
                    add_hosts,
                })
                .await
                .map_err(rpc_err)?;
            println!("{}", bare(&r.into_inner().cidrs));
            Ok(())
        }
        Cmd::Detach { mut args } => {
            let container = args.pop().expect("required");
            let r = client(&state).await?.detach(pb::DetachRequest { container, addrs: args }).await.map_err(rpc_err)?;
            println!("{}", bare(&r.into_inner().cidrs));
            Ok(())
        }
        Cmd::DnsAdd { hostname, args, .. } | Cmd::DnsRemove { hostname, args, .. } if args.is_empty() && hostname.is_none() => {
            Err(Fail("give a container, or IPs with -h FQDN".into()))
        }
        Cmd::DnsAdd { hostname, mut args, .. } => {
            let container = split_container(&mut args, hostname.is_some());
            client(&state).await?.dns_add(pb::DnsRequest { container, ips: args, hostname: hostname.unwrap_or_default() }).await.map_err(rpc_err)?;
            Ok(())
        }
        Cmd::DnsRemove { hostname, mut args, .. } => {
            let container = split_container(&mut args, hostname.is_some());
            client(&state).await?.dns_remove(pb::DnsRequest { container, ips: args, hostname: hostname.unwrap_or_default() }).await.map_err(rpc_err)?;
            Ok(())
        }
        Cmd::Rmpeer { peers } => {
            let r = client(&state).await?.rmpeer(pb::RmpeerRequest { peers }).await.map_err(rpc_err)?;
            println!("{} IPs taken over", r.into_inner().reclaimed);
            Ok(())
        }
        Cmd::Prime => {
            client(&state).await?.prime(pb::Empty {}).await.map_err(rpc_err)?;
            Ok(())
        }
        Cmd::DnsArgs => {
            let r = client(&state).await?.dns_entries(pb::Empty {}).await.map_err(rpc_err)?.into_inner();
            let addr = r.address.parse::<std::net::SocketAddr>().map(|a| a.ip().to_string()).unwrap_or(r.address);
            println!("--dns={addr} --dns-search={}", r.domain);
            Ok(())
        }
        Cmd::DnsLookup { name } => {
            for a in client(&state).await?.dns_lookup(pb::DnsLookupRequest { name }).await.map_err(rpc_err)?.into_inner().addrs {
                println!("{a}");
            }
            Ok(())
        }
        Cmd::Ps { containers } => {
            let only = !containers.is_empty();
            let r = client(&state).await?.ps(pb::PsRequest { containers }).await.map_err(rpc_err)?.into_inner();
            if !only && !r.exposed.is_empty() {
                println!("weave:expose {} {}", r.expose_mac, r.exposed.join(" "));
            }
            for e in r.entries {
                println!("{} {} {}", e.id, e.mac, e.cidrs.join(" "));
            }
            Ok(())
        }
        Cmd::Expose { without_masquerade, addrs, hostname, .. } => {
            let r =
                client(&state).await?.expose(pb::ExposeRequest { addrs, without_masquerade, hostname: hostname.unwrap_or_default() }).await.map_err(rpc_err)?;
            println!("{}", bare(&r.into_inner().cidrs));
            Ok(())
        }
        Cmd::Hide { addrs } => {
            let r = client(&state).await?.hide(pb::HideRequest { addrs }).await.map_err(rpc_err)?;
            println!("{}", bare(&r.into_inner().cidrs));
            Ok(())
        }
        Cmd::Reset { force } => {
            need_root()?;
            match running(&state).await {
                Some(mut c) => {
                    let pid = router_pid(&state);
                    let r = c.reset(pb::ResetRequest { force }).await.map_err(rpc_err)?.into_inner();
                    if pid.is_some() {
                        wait_gone(&state, pid).await;
                    }
                    if !r.heir.is_empty() {
                        eprintln!("address space handed to {}", r.heir);
                    }
                }
                None => {
                    // No router: remove what a stopped or killed one left.
                    let nl = weave_dataplane::netlink::Netlink::connect(&weave_dataplane::netlink::Netns::current()).await?;
                    weave_dataplane::expose::reset(&nl, "weave").await?;
                    // Its containers' resolv.conf point at its DNS address,
                    // which follows from its name.
                    if let Some(name) =
                        std::fs::read_to_string(state.join(weave_examples::router::NAME_FILE)).ok().and_then(|n| n.trim().parse::<PeerName>().ok())
                    {
                        weave_examples::router::remove_resolv_confs(&state, weave_examples::router::dns_addr(name));
                    }
                    for f in weave_examples::router::STATE_FILES.iter().chain([&weave_examples::router::RESOLV_LIST]) {
                        let _ = std::fs::remove_file(state.join(f));
                    }
                }
            }
            for f in ["weave.pid", "weave.sock"] {
                let _ = std::fs::remove_file(state.join(f));
            }
            Ok(())
        }
        Cmd::Env { restore } => {
            if restore {
                // Back to the daemon the client used before `weave env`.
                match std::env::var("ORIG_DOCKER_HOST") {
                    Ok(orig) if !orig.is_empty() => println!("export DOCKER_HOST={orig}"),
                    _ => println!("unset DOCKER_HOST ORIG_DOCKER_HOST"),
                }
                return Ok(());
            }
            let sock = proxy_socket(&state).await?;
            // Run twice, it must not make the proxy its own original.
            let orig = std::env::var("ORIG_DOCKER_HOST").ok().filter(|_| std::env::var("DOCKER_HOST").is_ok_and(|h| h == sock));
            let orig = orig.unwrap_or_else(|| std::env::var("DOCKER_HOST").unwrap_or_default());
            println!("export DOCKER_HOST={sock} ORIG_DOCKER_HOST={orig}");
            Ok(())
        }
        Cmd::Config => {
            println!("-H={}", proxy_socket(&state).await?);
            Ok(())
        }
        Cmd::Report { format } => {
            let r = client(&state).await?.report(pb::Empty {}).await.map_err(rpc_err)?.into_inner();
            if format == "json" {
                println!("{}", r.json);
            } else {
                // Weave's -f: a Go template over the report.
                let report: serde_json::Value = serde_json::from_str(&r.json).map_err(|e| Fail(format!("the router's report is not JSON: {e}")))?;
                println!("{}", control::render_template(&report, &format).map_err(Fail)?);
            }
            Ok(())
        }
        Cmd::Status { section } => {
            let mut c = client(&state).await?;
            let s = c.status(pb::StatusRequest { brief: false }).await.map_err(rpc_err)?.into_inner();
            match section.as_deref() {
                None => {
                    let report: serde_json::Value = serde_json::from_str(&c.report(pb::Empty {}).await.map_err(rpc_err)?.into_inner().json).unwrap_or_default();
                    print!("{}", control::render_status(&s, &report));
                }
                Some("connections") => print!("{}", control::render_connections(&s)),
                Some("targets") => print!("{}", control::render_targets(&s)),
                Some("peers") => print!("{}", control::render_peers(&s)),
                Some("dns") => print!("{}", control::render_dns(&c.dns_entries(pb::Empty {}).await.map_err(rpc_err)?.into_inner())),
                Some("ipam") => print!("{}", control::render_ipam(&c.ipam_status(pb::Empty {}).await.map_err(rpc_err)?.into_inner())),
                Some(other) => return Err(Fail(format!("status {other}: not available yet"))),
            }
            Ok(())
        }
    }
}

/// The last argument is the container unless the arguments are all IPs
/// and a hostname was given.
fn split_container(args: &mut Vec<String>, have_hostname: bool) -> String {
    match args.last() {
        Some(last) if !(have_hostname && last.split('/').next().unwrap_or(last).parse::<std::net::Ipv4Addr>().is_ok()) => args.pop().unwrap_or_default(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_router_gets_two_malloc_arenas_and_a_fixed_mmap_threshold_unless_told_otherwise() {
        let ours = "glibc.malloc.arena_max=2:glibc.malloc.mmap_threshold=65536";
        assert_eq!(router_tunables(None), ours);
        assert_eq!(router_tunables(Some("")), ours);
        assert_eq!(router_tunables(Some("glibc.malloc.tcache_count=0")), format!("glibc.malloc.tcache_count=0:{ours}"));
        assert_eq!(router_tunables(Some("glibc.malloc.arena_max=8")), "glibc.malloc.arena_max=8:glibc.malloc.mmap_threshold=65536");
        assert_eq!(
            router_tunables(Some("glibc.malloc.mmap_threshold=1024:glibc.malloc.arena_max=4")),
            "glibc.malloc.mmap_threshold=1024:glibc.malloc.arena_max=4"
        );
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    fn launch(args: &[&str]) -> RouterArgs {
        let cli = Cli::try_parse_from(["weave", "launch"].iter().chain(args)).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        match cli.cmd {
            Cmd::Launch(a) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn weave_launch_arguments_read_as_weave_reads_them() {
        // A boolean flag never takes the next word as its value.
        let a = launch(&["--no-fastdp", "192.0.2.1"]);
        assert!(a.no_fastdp);
        assert_eq!(a.peers, ["192.0.2.1"]);
        let a = launch(&["--plugin", "192.0.2.1"]);
        assert_eq!((a.plugin, a.peers.as_slice()), (Some(true), ["192.0.2.1".to_owned()].as_slice()));
        assert_eq!(launch(&["--plugin=false"]).plugin, Some(false));
        assert_eq!(launch(&["--status-addr", "0.0.0.0:6784"]).http_addr, "0.0.0.0:6784");
        assert_eq!(log_filter("warning"), "warn");
        assert_eq!(log_filter("debug"), "debug");
        let dir = std::env::temp_dir();
        assert_eq!(router_config(&dir, &launch(&["--conn-limit", "0", "--no-docker"])).map(|c| c.conn_limit).ok(), Some(usize::MAX));
        assert!(router_config(&dir, &launch(&["--resume", "192.0.2.1", "--no-docker"])).is_err(), "--resume with peers is refused");
    }

    #[test]
    fn ipalloc_init_forms() {
        assert!(matches!(init_mode(None, 3), Ok(InitMode::Consensus { quorum: 2 })));
        assert!(matches!(init_mode(Some("consensus=5"), 1), Ok(InitMode::Consensus { quorum: 3 })));
        assert!(matches!(init_mode(Some("observer"), 1), Ok(InitMode::Observer)));
        assert!(matches!(init_mode(Some("seed=::1,::2"), 1), Ok(InitMode::Seeds(v)) if v.len() == 2));
        assert!(init_mode(Some("seed=nope"), 1).is_err());
        assert!(init_mode(Some("bogus"), 1).is_err());
    }
}
