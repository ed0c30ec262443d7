//! Weave's Docker API proxy: `eval $(weave env)` points the Docker client
//! here, and plain `docker run` puts containers on the overlay.
//!
//! Every request goes to dockerd unchanged (streamed bodies, and hijacked
//! connections for attach and exec, included) except:
//! - **create**: weaveDNS becomes the container's resolver, with the domain
//!   as search path; the hostname is `NAME.<domain>` from `--name` unless
//!   `-h` was given (or as `--hostname-from-label`, `--hostname-match` and
//!   `--hostname-replacement` say); and the entrypoint first waits for
//!   `ethwe` (the router's own binary, mounted in with the host's loader, so
//!   that any image works).
//! - **start**: the container is attached before the client hears back:
//!   per `WEAVE_CIDR` (`net:default`, `net:CIDR`, `ip:CIDR`, several
//!   space-separated, or `none`), else in the default subnet (unless
//!   `--no-default-ipalloc`). Restarts are the router's Docker lifecycle
//!   (same addresses); removal releases addresses and names.
//! - **inspect** (with `--rewrite-inspect`): the weave address shows as the
//!   container's IP address.
//!
//! Containers on the host's network, another container's, or a network of
//! their own are left alone.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::{UnixListener, UnixStream};

use crate::router::{AddrSpec, Router};

/// Where, inside a container, the waiting entrypoint's files are mounted.
pub const WAIT_DIR: &str = "/w";
/// The argument that makes the `weave` binary wait for `ethwe`, then run
/// the rest of its arguments.
pub const WAIT_ARG: &str = "--weave-wait";

type Body = BoxBody<Bytes, hyper::Error>;

/// How the proxy is set up (`weave launch` flags).
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Where it listens (`DOCKER_HOST=unix://...`).
    pub socket: PathBuf,
    /// TCP addresses it also listens on (`-H tcp://ADDR:PORT`; none by
    /// default: whoever reaches it may use Docker, so only on a trusted
    /// network).
    pub tcp: Vec<std::net::SocketAddr>,
    /// dockerd's socket.
    pub docker: PathBuf,
    /// Show the weave address in `docker inspect`.
    pub rewrite_inspect: bool,
    /// Attach containers without `WEAVE_CIDR` in the default subnet.
    pub default_ipalloc: bool,
    /// Take the hostname from this label, when the container has it.
    pub hostname_from_label: Option<String>,
    /// Rewrite the name (or label) matching this...
    pub hostname_match: regex::Regex,
    /// ...into this (`$1` and so on).
    pub hostname_replacement: String,
    /// The waiting entrypoint: this binary, and the host's dynamic loader
    /// and libraries it needs (None: containers start without waiting).
    pub wait: Option<Waiter>,
    /// Route multicast through the overlay in its containers (Weave's
    /// launch `--no-multicast-route` turns it off).
    pub multicast_route: bool,
    /// Give its containers weaveDNS (hostname, resolver, name); Weave's
    /// launch `--without-dns` turns it off.
    pub dns: bool,
}

/// What is mounted into containers so that their entrypoint waits.
#[derive(Debug, Clone)]
pub struct Waiter {
    /// The `weave` binary.
    pub binary: PathBuf,
    /// The dynamic loader (absolute, symlinks resolved).
    pub loader: PathBuf,
    /// The directory holding the C library.
    pub libs: PathBuf,
}

impl Waiter {
    /// For the running binary, from the loader and libraries it uses now.
    pub fn for_current_exe() -> Option<Self> {
        let binary = std::env::current_exe().ok()?;
        let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
        let mapped = |part: &str| maps.lines().filter_map(|l| l.split_whitespace().nth(5)).find(|p| p.contains(part)).map(PathBuf::from);
        let loader = mapped("/ld-linux")?.canonicalize().ok()?;
        let libs = mapped("/libc.so")?.canonicalize().ok()?.parent()?.to_path_buf();
        Some(Self { binary, loader, libs })
    }

    /// The container's new entrypoint, before its own command.
    fn entrypoint(&self) -> Vec<String> {
        let loader = self.loader.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        vec![format!("{WAIT_DIR}/lib/{loader}"), "--library-path".into(), format!("{WAIT_DIR}/lib"), format!("{WAIT_DIR}/weave"), WAIT_ARG.into()]
    }

    fn binds(&self) -> Vec<String> {
        vec![format!("{}:{WAIT_DIR}/weave:ro", self.binary.display()), format!("{}:{WAIT_DIR}/lib:ro", self.libs.display())]
    }
}

impl ProxySettings {
    /// Defaults: listening on `socket`, dockerd at `DOCKER_HOST` (a unix
    /// socket) or `/var/run/docker.sock`, hostnames from container names.
    pub fn new(socket: PathBuf) -> Self {
        let docker = std::env::var("DOCKER_HOST")
            .ok()
            .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"));
        Self {
            socket,
            tcp: Vec::new(),
            docker,
            rewrite_inspect: false,
            default_ipalloc: true,
            hostname_from_label: None,
            hostname_match: regex::Regex::new("^(.*)$").expect("valid"),
            hostname_replacement: "$1".into(),
            wait: Waiter::for_current_exe(),
            multicast_route: true,
            dns: true,
        }
    }
}

/// The proxy's socket's name in the state directory.
pub const SOCKET_FILE: &str = "docker-proxy.sock";

/// The proxy's socket in a state directory.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_FILE)
}

/// `weave --weave-wait CMD ARGS...`, as a container's entrypoint: wait for
/// `ethwe`, then become CMD. Returns only on failure.
pub fn wait_then_exec(args: &[std::ffi::OsString]) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    while !Path::new("/sys/class/net/ethwe").exists() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let Some((cmd, rest)) = args.split_first() else { return std::io::Error::other("no command to run") };
    std::process::Command::new(cmd).args(rest).exec()
}

/// Serve the proxy until the router is gone.
pub async fn serve(router: Weak<Router>, s: Arc<ProxySettings>) -> std::io::Result<()> {
    let _ = std::fs::remove_file(&s.socket);
    let unix = UnixListener::bind(&s.socket)?;
    // Whoever may use this socket may use Docker: as dockerd's own.
    std::fs::set_permissions(&s.socket, std::os::unix::fs::PermissionsExt::from_mode(0o660))?;
    let mut tcp = Vec::new();
    for a in &s.tcp {
        tcp.push(tokio::net::TcpListener::bind(a).await?);
    }
    attach_running(&router, &s).await;
    let (r, s2) = (router.clone(), s.clone());
    tokio::spawn(async move {
        loop {
            if let Ok((stream, _)) = unix.accept().await {
                serve_connection(r.clone(), s2.clone(), stream);
            }
        }
    });
    for l in tcp {
        let (r, s2) = (router.clone(), s.clone());
        tokio::spawn(async move {
            loop {
                if let Ok((stream, _)) = l.accept().await {
                    serve_connection(r.clone(), s2.clone(), stream);
                }
            }
        });
    }
    Ok(())
}

fn serve_connection<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static>(router: Weak<Router>, s: Arc<ProxySettings>, stream: S) {
    tokio::spawn(async move {
        let svc = hyper::service::service_fn(move |req| handle(router.clone(), s.clone(), req));
        let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).with_upgrades().await;
    });
}

/// Containers already running when the proxy starts are attached as if
/// they had just been started through it.
async fn attach_running(router: &Weak<Router>, s: &ProxySettings) {
    let Ok(list) = docker_json(s, Method::GET, "/containers/json", None).await else { return };
    for c in list.as_array().into_iter().flatten() {
        let Some(id) = c["Id"].as_str() else { continue };
        if let Some(r) = router.upgrade() {
            if r.addresses_of(id).await.is_ok_and(|a| a.is_empty()) {
                attach_started(&r, s, id, true).await;
            }
        }
    }
}

fn boxed(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    let body = json!({ "message": message }).to_string();
    Response::builder().status(status).header("content-type", "application/json").body(boxed(body)).expect("valid response")
}

/// The API path without its version prefix (`/v1.47/containers/create`
/// is `/containers/create`).
fn unversioned(path: &str) -> &str {
    match path.strip_prefix("/v") {
        Some(rest) => match rest.find('/') {
            Some(i) if rest[..i].bytes().all(|b| b.is_ascii_digit() || b == b'.') => &rest[i..],
            _ => path,
        },
        None => path,
    }
}

async fn handle(router: Weak<Router>, s: Arc<ProxySettings>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = unversioned(req.uri().path()).to_owned();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let out = match (req.method().clone(), parts.as_slice()) {
        (Method::POST, ["containers", "create"]) => create(&router, &s, req).await,
        (Method::POST, ["containers", id, "start"]) => {
            let id = (*id).to_owned();
            let resp = forward(&s, req.map(|b| b.boxed())).await;
            if resp.as_ref().is_ok_and(|r| r.status().is_success()) {
                if let Some(r) = router.upgrade() {
                    attach_started(&r, &s, &id, false).await;
                }
            }
            resp
        }
        (Method::GET, ["containers", id, "json"]) if s.rewrite_inspect => {
            let id = (*id).to_owned();
            inspect(&router, &s, &id, req).await
        }
        _ => forward(&s, req.map(|b| b.boxed())).await,
    };
    Ok(out.unwrap_or_else(|e| error(StatusCode::BAD_GATEWAY, &format!("weave proxy: {e}"))))
}

/// Send a request to dockerd; a connection upgrade (attach, exec) is
/// spliced through once both sides have switched.
async fn forward(s: &ProxySettings, mut req: Request<Body>) -> Result<Response<Body>, String> {
    let upgrading = req.headers().contains_key(hyper::header::UPGRADE);
    let client_side = upgrading.then(|| hyper::upgrade::on(&mut req));
    let stream = UnixStream::connect(&s.docker).await.map_err(|e| format!("cannot reach dockerd at {}: {e}", s.docker.display()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn.with_upgrades());
    let mut resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_side) = client_side {
            let daemon_side = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                if let (Ok(c), Ok(d)) = (client_side.await, daemon_side.await) {
                    let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(c), &mut TokioIo::new(d)).await;
                }
            });
        }
    }
    Ok(resp.map(|b| b.boxed()))
}

/// A JSON request of the proxy's own to dockerd.
async fn docker_json(s: &ProxySettings, method: Method, path: &str, body: Option<Value>) -> Result<Value, String> {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "docker")
        .header("content-type", "application/json")
        .body(boxed(body.map(|b| b.to_string()).unwrap_or_default()))
        .map_err(|e| e.to_string())?;
    let resp = forward(s, req).await?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    if !status.is_success() {
        return Err(format!("dockerd answered {status}: {}", String::from_utf8_lossy(&bytes)));
    }
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

/// Whether a container on this network mode is ours to attach: Docker's
/// default bridge only (host, none, container: and other networks stay
/// as they are).
fn ours(network_mode: &str) -> bool {
    matches!(network_mode, "" | "default" | "bridge")
}

/// The `WEAVE_CIDR` of a container's environment, if set.
fn weave_cidr(env: &Value) -> Option<String> {
    env.as_array()?.iter().filter_map(Value::as_str).find_map(|e| e.strip_prefix("WEAVE_CIDR=").map(str::to_owned))
}

/// What `WEAVE_CIDR` asks for: `None` for `none`.
pub fn parse_weave_cidr(v: &str) -> Result<Option<Vec<AddrSpec>>, String> {
    if v.trim() == "none" {
        return Ok(None);
    }
    v.split_whitespace().map(str::parse).collect::<Result<Vec<_>, _>>().map(Some)
}

async fn create(router: &Weak<Router>, s: &ProxySettings, req: Request<Incoming>) -> Result<Response<Body>, String> {
    let (mut parts, body) = req.into_parts();
    let bytes = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    let mut v: Value = serde_json::from_slice(&bytes).map_err(|e| format!("container config: {e}"))?;
    let name = parts.uri.query().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("name="))).map(str::to_owned);
    let network = v["HostConfig"]["NetworkMode"].as_str().unwrap_or("").to_owned();
    if ours(&network) {
        let cidr = weave_cidr(&v["Config"]["Env"]).or_else(|| weave_cidr(&v["Env"]));
        if let Some(c) = &cidr {
            if let Err(e) = parse_weave_cidr(c) {
                return Ok(error(StatusCode::BAD_REQUEST, &format!("WEAVE_CIDR: {e}")));
            }
        }
        let image = v["Image"].as_str().unwrap_or("").to_owned();
        let image_config = match docker_json(s, Method::GET, &format!("/images/{image}/json"), None).await {
            Ok(i) => i["Config"].clone(),
            Err(_) => Value::Null,
        };
        let r = router.upgrade();
        let domain = r.as_ref().and_then(|r| r.config().dns.as_ref().map(|d| d.domain.trim_matches('.').to_owned()));
        let dns = r.as_ref().and_then(|r| r.dns_address());
        rewrite_create(&mut v, s, name.as_deref(), &image_config, domain.as_deref(), dns, cidr.as_deref() != Some("none"));
    }
    let body = v.to_string();
    parts.headers.remove(hyper::header::CONTENT_LENGTH);
    parts.headers.remove(hyper::header::TRANSFER_ENCODING);
    let req = Request::from_parts(parts, boxed(body));
    forward(s, req).await
}

/// The changes to a create request for a container on the weave network.
fn rewrite_create(v: &mut Value, s: &ProxySettings, name: Option<&str>, image: &Value, domain: Option<&str>, dns: Option<std::net::Ipv4Addr>, wait: bool) {
    if !v["HostConfig"].is_object() {
        v["HostConfig"] = json!({});
    }
    if let Some(domain) = domain.filter(|_| s.dns) {
        let given = v["Config"]["Hostname"].as_str().or(v["Hostname"].as_str()).unwrap_or("").to_owned();
        let label = s.hostname_from_label.as_deref().and_then(|l| v["Labels"][l].as_str().map(str::to_owned));
        if given.is_empty() {
            if let Some(base) = label.or_else(|| name.map(str::to_owned)) {
                let host = s.hostname_match.replace(&base, s.hostname_replacement.as_str()).into_owned();
                if !host.is_empty() && host.len() <= 63 {
                    v["Hostname"] = json!(host);
                    v["Domainname"] = json!(domain);
                }
            }
        }
        if let Some(ip) = dns {
            let hc = &mut v["HostConfig"];
            if hc["Dns"].as_array().is_none_or(Vec::is_empty) {
                hc["Dns"] = json!([ip.to_string()]);
            }
            if hc["DnsSearch"].as_array().is_none_or(Vec::is_empty) {
                hc["DnsSearch"] = json!([domain]);
            }
        }
    }
    if let (Some(w), true) = (&s.wait, wait) {
        let strings = |x: &Value| x.as_array().map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect::<Vec<_>>());
        let entrypoint = strings(&v["Entrypoint"]).or_else(|| if v["Entrypoint"].is_null() { strings(&image["Entrypoint"]) } else { None });
        let cmd = strings(&v["Cmd"]).filter(|c| !c.is_empty()).or_else(|| strings(&image["Cmd"]));
        let mut all = w.entrypoint();
        all.extend(entrypoint.unwrap_or_default());
        all.extend(cmd.unwrap_or_default());
        v["Entrypoint"] = json!(all);
        v["Cmd"] = Value::Null;
        let hc = &mut v["HostConfig"];
        let mut binds: Vec<Value> = hc["Binds"].as_array().cloned().unwrap_or_default();
        binds.extend(w.binds().into_iter().map(Value::from));
        hc["Binds"] = json!(binds);
    }
}

/// Attach a container that just started (or was running when the proxy
/// started: then only one that asked for it, by `WEAVE_CIDR` or the
/// waiting entrypoint).
async fn attach_started(router: &Arc<Router>, s: &ProxySettings, id: &str, existing: bool) {
    let Ok(c) = docker_json(s, Method::GET, &format!("/containers/{id}/json"), None).await else { return };
    if !ours(c["HostConfig"]["NetworkMode"].as_str().unwrap_or("")) {
        return;
    }
    let cidr = weave_cidr(&c["Config"]["Env"]);
    let waits = c["Config"]["Entrypoint"].as_array().is_some_and(|e| e.iter().any(|x| x.as_str() == Some(WAIT_ARG)));
    if existing && cidr.is_none() && !waits {
        return;
    }
    let specs = match cidr.as_deref().map(parse_weave_cidr) {
        Some(Ok(Some(specs))) => specs,
        Some(Ok(None)) => return,
        Some(Err(e)) => {
            tracing::warn!(container = %id, error = %e, "WEAVE_CIDR not understood: not attached");
            return;
        }
        None if s.default_ipalloc => Vec::new(),
        None => return,
    };
    let domain = router.config().dns.as_ref().map(|d| d.domain.trim_matches('.').to_owned());
    let host = c["Config"]["Hostname"].as_str().unwrap_or("");
    let fqdn = match (c["Config"]["Domainname"].as_str(), &domain) {
        (Some(d), Some(ours)) if !host.is_empty() && d.trim_matches('.') == ours => Some(format!("{host}.{ours}.")),
        _ => None,
    };
    match router.attach_with_dns(id, &specs, s.multicast_route, s.dns, fqdn.as_deref()).await {
        Ok(addrs) => tracing::info!(container = %crate::docker::display_id(id), ?addrs, "attached through the proxy"),
        Err(e) => tracing::warn!(container = %crate::docker::display_id(id), error = %e, "attach through the proxy failed"),
    }
}

/// `docker inspect` showing the weave address (`--rewrite-inspect`).
async fn inspect(router: &Weak<Router>, s: &ProxySettings, id: &str, req: Request<Incoming>) -> Result<Response<Body>, String> {
    let resp = forward(s, req.map(|b| b.boxed())).await?;
    let Some(r) = router.upgrade() else { return Ok(resp) };
    if !resp.status().is_success() {
        return Ok(resp);
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    let Ok(mut v) = serde_json::from_slice::<Value>(&bytes) else { return Ok(Response::from_parts(parts, boxed(bytes))) };
    let full = v["Id"].as_str().unwrap_or(id).to_owned();
    if let Some(a) = r.addresses_of(&full).await.ok().and_then(|a| a.first().copied()) {
        v["NetworkSettings"]["IPAddress"] = json!(a.addr().to_string());
        v["NetworkSettings"]["IPPrefixLen"] = json!(a.prefix_len());
    }
    parts.headers.remove(hyper::header::CONTENT_LENGTH);
    Ok(Response::from_parts(parts, boxed(v.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ProxySettings {
        let mut s = ProxySettings::new(PathBuf::from("/nonexistent"));
        s.wait = Some(Waiter {
            binary: "/usr/bin/weave".into(),
            loader: "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2".into(),
            libs: "/usr/lib/x86_64-linux-gnu".into(),
        });
        s
    }

    #[test]
    fn versioned_paths_are_read_without_their_version() {
        assert_eq!(unversioned("/v1.47/containers/create"), "/containers/create");
        assert_eq!(unversioned("/containers/abc/start"), "/containers/abc/start");
        assert_eq!(unversioned("/volumes"), "/volumes");
    }

    #[test]
    fn weave_cidr_takes_weaves_forms() {
        assert_eq!(parse_weave_cidr("none"), Ok(None));
        assert_eq!(parse_weave_cidr("net:default").unwrap().unwrap(), vec![AddrSpec::Default]);
        let two = parse_weave_cidr("net:10.2.2.0/24 ip:10.3.0.7/16").unwrap().unwrap();
        assert_eq!(two, vec![AddrSpec::Subnet("10.2.2.0/24".parse().unwrap()), AddrSpec::Exact("10.3.0.7/16".parse().unwrap())]);
        assert!(parse_weave_cidr("net:10.2.2.1/24").is_err(), "host bits set");
        assert!(parse_weave_cidr("bogus").is_err());
    }

    #[test]
    fn create_gets_hostname_resolver_and_a_waiting_entrypoint() {
        let s = settings();
        let mut v = json!({ "Image": "img", "Cmd": ["ping", "c1"], "HostConfig": { "NetworkMode": "default", "Binds": ["/a:/a"] } });
        let image = json!({ "Entrypoint": null, "Cmd": ["sh"] });
        rewrite_create(&mut v, &s, Some("c2"), &image, Some("weave.local"), Some("169.254.3.4".parse().unwrap()), true);
        assert_eq!(v["Hostname"], "c2");
        assert_eq!(v["Domainname"], "weave.local");
        assert_eq!(v["HostConfig"]["Dns"], json!(["169.254.3.4"]));
        assert_eq!(v["HostConfig"]["DnsSearch"], json!(["weave.local"]));
        let ep: Vec<&str> = v["Entrypoint"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
        assert_eq!(ep, ["/w/lib/ld-linux-x86-64.so.2", "--library-path", "/w/lib", "/w/weave", WAIT_ARG, "ping", "c1"]);
        assert!(v["Cmd"].is_null());
        assert_eq!(v["HostConfig"]["Binds"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn the_image_command_runs_when_none_is_given_and_given_names_stay() {
        let s = settings();
        let mut v = json!({ "Image": "img", "Hostname": "mine", "HostConfig": { "Dns": ["8.8.8.8"] } });
        let image = json!({ "Entrypoint": ["/init"], "Cmd": ["serve"] });
        rewrite_create(&mut v, &s, Some("c2"), &image, Some("weave.local"), Some("169.254.3.4".parse().unwrap()), true);
        assert_eq!(v["Hostname"], "mine");
        assert!(v["Domainname"].is_null());
        assert_eq!(v["HostConfig"]["Dns"], json!(["8.8.8.8"]));
        let ep: Vec<&str> = v["Entrypoint"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
        assert_eq!(&ep[5..], ["/init", "serve"]);
    }

    #[test]
    fn hostnames_follow_match_and_replacement_and_none_does_not_wait() {
        let mut s = settings();
        s.hostname_match = regex::Regex::new("^app-(.*)$").unwrap();
        s.hostname_replacement = "$1".into();
        let mut v = json!({ "Image": "img", "Cmd": ["true"] });
        rewrite_create(&mut v, &s, Some("app-web"), &Value::Null, Some("weave.local"), None, false);
        assert_eq!(v["Hostname"], "web");
        assert_eq!(v["Cmd"], json!(["true"]), "WEAVE_CIDR=none: the command runs as given");
        assert!(v["Entrypoint"].is_null());
    }

    #[test]
    fn only_containers_on_dockers_default_network_are_ours() {
        assert!(ours("") && ours("default") && ours("bridge"));
        assert!(!ours("host") && !ours("none") && !ours("container:abc") && !ours("weave") && !ours("mynet"));
    }
}
