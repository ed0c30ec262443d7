//! The Docker network plugin: libnetwork's remote `NetworkDriver` and
//! `IpamDriver`, served by the router on `/run/docker/plugins/NAME.sock`,
//! so `docker run --net=weave` gives containers overlay addresses from
//! IPAM and names in weaveDNS.
//!
//! - Pools are subnets of the IP allocation range (the default subnet
//!   when none is asked for); addresses come from the router's IPAM.
//! - A network's gateway is the host's address on the bridge in that
//!   subnet (`weave expose`, masqueraded), so containers reach the host
//!   and, through it, the outside; it is hidden when the network goes.
//! - Join makes a veth pair: one end on the bridge, the other in
//!   dockerd's namespace for Docker to move into the container as
//!   `ethweN`. The multicast route is added when the network was created
//!   with `-o works.weave.multicast`.
//! - Errors go back as `{"Err": "..."}`, as libnetwork expects.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use ipnet::Ipv4Net;
use serde_json::{json, Value};
use weave_dataplane::netlink::{self, Netns};

use crate::router::{lock, AddrSpec, Router};

/// Where and under which name the plugin is served.
#[derive(Debug, Clone)]
pub struct PluginSettings {
    /// Driver name (`weave`): the socket is `DIR/NAME.sock`, and the
    /// router creates a Docker network of that name.
    pub name: String,
    /// Docker's plugin directory (`/run/docker/plugins`).
    pub dir: PathBuf,
    /// The namespace dockerd runs in (where Join's interface must be);
    /// None: found from dockerd's pid file at each Join, so a restarted
    /// dockerd is followed.
    pub docker_netns: Option<Netns>,
}

impl PluginSettings {
    /// The standard place for `name`.
    pub fn new(name: &str) -> Self {
        Self { name: name.to_owned(), dir: PathBuf::from("/run/docker/plugins"), docker_netns: None }
    }

    fn dockerd_netns(&self) -> Result<Netns, String> {
        match &self.docker_netns {
            Some(ns) => Ok(ns.clone()),
            None => crate::docker::daemon_pid().map(Netns::of_pid).ok_or_else(|| "cannot find dockerd (no /run/docker.pid)".to_owned()),
        }
    }

    /// The socket path.
    pub fn socket(&self) -> PathBuf {
        self.dir.join(format!("{}.sock", self.name))
    }
}

/// The prefix of the IPAM ids the plugin's container addresses are held
/// under: Docker asks for an address before it says for which container,
/// so each request gets an id of its own (IPAM allocation is idempotent
/// per id), and a release finds the address's owner.
pub const PLUGIN_ID: &str = "weave:plugin:";

/// A fresh IPAM id for an address the plugin holds.
pub(crate) fn fresh_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    // RandomState is randomly keyed: ids differ across runs too.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    format!("{PLUGIN_ID}{:016x}", h.finish())
}

#[derive(Debug, Clone, Default)]
struct Network {
    pool: Option<Ipv4Net>,
    gateway: Option<Ipv4Addr>,
    multicast: bool,
}

#[derive(Debug, Default)]
struct State {
    networks: BTreeMap<String, Network>,
    /// Gateway addresses the plugin exposed.
    gateways: BTreeSet<Ipv4Addr>,
    /// Of those, the ones Docker released: hidden once no network of the
    /// driver has them (Docker's DeleteNetwork and ReleaseAddress come in
    /// either order).
    released: BTreeSet<Ipv4Addr>,
}

/// Hide `gw` if Docker released it, the plugin exposed it, and no network
/// of the driver and no CNI pod in `pool` uses it any more.
async fn maybe_hide(router: &Router, state: &Mutex<State>, gw: Ipv4Addr, pool: Option<Ipv4Net>) -> Result<(), String> {
    {
        let st = lock(state);
        if !st.released.contains(&gw) || !st.gateways.contains(&gw) || st.networks.values().any(|n| n.gateway == Some(gw)) {
            return Ok(());
        }
    }
    if let Some(p) = pool {
        if router.cni_uses(p).await {
            return Ok(());
        }
    }
    {
        let mut st = lock(state);
        st.released.remove(&gw);
        st.gateways.remove(&gw);
    }
    router.hide(&[gw]).await.map(drop).map_err(|e| e.to_string())
}

/// The addresses Docker's endpoints hold on the networks of `driver`: what
/// the plugin gave out and Docker still uses. `Err` when Docker cannot say
/// (then nothing may be freed on its word).
pub async fn endpoint_addresses(docker: &crate::docker::Docker, driver: &str) -> Result<BTreeSet<Ipv4Net>, String> {
    let mut out = BTreeSet::new();
    for n in driver_networks(docker, driver).await? {
        let Some(id) = n.id else { continue };
        // The listing leaves out the endpoints; inspecting gives them.
        let full = docker
            .api()
            .inspect_network(&id, None::<bollard::query_parameters::InspectNetworkOptions>)
            .await
            .map_err(|e| format!("cannot inspect Docker network {id}: {e}"))?;
        for c in full.containers.unwrap_or_default().into_values() {
            if let Some(a) = c.ipv4_address.as_deref().and_then(|a| cidr(a).ok()) {
                out.insert(a);
            }
        }
    }
    Ok(out)
}

/// The Docker networks on `driver`.
async fn driver_networks(docker: &crate::docker::Docker, driver: &str) -> Result<Vec<bollard::models::Network>, String> {
    let opts =
        bollard::query_parameters::ListNetworksOptions { filters: Some(std::collections::HashMap::from([("driver".to_owned(), vec![driver.to_owned()])])) };
    let nets = docker.api().list_networks(Some(opts)).await.map_err(|e| format!("cannot list Docker networks: {e}"))?;
    Ok(nets.into_iter().filter(|n| n.driver.as_deref() == Some(driver)).collect())
}

/// A running plugin.
#[derive(Debug)]
pub struct Plugin {
    settings: PluginSettings,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

/// Record a network Docker already has on this driver (made before a
/// router restart), with its gateway as the plugin's.
fn learn(
    state: &Mutex<State>,
    id: Option<String>,
    ipam: Option<bollard::models::Ipam>,
    options: Option<std::collections::HashMap<String, String>>,
) -> Option<Network> {
    let first = ipam.and_then(|i| i.config).and_then(|c| c.into_iter().next()).unwrap_or_default();
    let gateway = first.gateway.and_then(|g| ip(&g).ok());
    let pool = first.subnet.and_then(|p| cidr(&p).ok());
    let multicast = options.is_some_and(|o| o.get("works.weave.multicast").is_some_and(|v| v != "false"));
    let n = Network { pool, gateway, multicast };
    let mut st = lock(state);
    st.networks.insert(id?, n.clone());
    if let Some(g) = gateway {
        st.gateways.insert(g);
    }
    Some(n)
}

impl Plugin {
    /// Serve the plugin socket (replacing a stale one, refusing to take
    /// over one another process answers on).
    pub async fn start(router: Weak<Router>, settings: PluginSettings) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let path = settings.socket();
        std::fs::create_dir_all(&settings.dir)?;
        if tokio::net::UnixStream::connect(&path).await.is_ok() {
            return Err(format!("another process serves the Docker plugin at {}; use --no-plugin or --plugin-name", path.display()).into());
        }
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path)?;
        // Docker (root) calls it; nobody else may.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (router, st) = (router.clone(), st.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(router.clone(), st.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), svc).await;
                });
            }
        });
        Ok(Self { settings, state, task })
    }

    /// Create the Docker network `NAME` on this driver unless it exists
    /// (Docker calls back into the plugin meanwhile), and learn the
    /// networks Docker already has on this driver (after a restart).
    pub async fn ensure_network(&self, docker: &crate::docker::Docker) -> Result<(), String> {
        let name = &self.settings.name;
        let mut have = false;
        for n in driver_networks(docker, name).await? {
            have |= n.name.as_deref() == Some(name.as_str());
            learn(&self.state, n.id, n.ipam, n.options);
        }
        if have {
            return Ok(());
        }
        let req = bollard::models::NetworkCreateRequest {
            name: name.clone(),
            driver: Some(name.clone()),
            attachable: Some(true),
            ipam: Some(bollard::models::Ipam { driver: Some(name.clone()), ..Default::default() }),
            // As Weave's default network: multicast routed over the overlay.
            options: Some(std::collections::HashMap::from([("works.weave.multicast".to_owned(), "true".to_owned())])),
            ..Default::default()
        };
        docker.api().create_network(req).await.map(|_| ()).map_err(|e| format!("cannot create the Docker network {name}: {e}"))
    }

    /// Remove the Docker network `NAME` (for `weave reset`).
    pub async fn remove_network(&self, docker: &crate::docker::Docker) -> Result<(), String> {
        match docker.api().remove_network(&self.settings.name).await {
            Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
            Err(e) => Err(format!("cannot remove the Docker network {}: {e}", self.settings.name)),
        }
    }

    /// IDs of the Docker networks on this driver.
    pub fn network_ids(&self) -> BTreeSet<String> {
        lock(&self.state).networks.keys().cloned().collect()
    }

    /// The socket path.
    pub fn socket(&self) -> PathBuf {
        self.settings.socket()
    }

    /// The driver (and network) name.
    pub fn name(&self) -> &str {
        &self.settings.name
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(self.settings.socket());
    }
}

async fn handle(router: Weak<Router>, state: Arc<Mutex<State>>, req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().trim_start_matches('/').to_owned();
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let reply = |code: StatusCode, v: Value| {
        Response::builder()
            .status(code)
            .header("content-type", "application/vnd.docker.plugins.v1.2+json")
            .body(Full::new(Bytes::from(v.to_string())))
            .expect("valid response")
    };
    let req: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return Ok(reply(StatusCode::BAD_REQUEST, json!({ "Err": format!("malformed request to {path}: {e}") }))),
        }
    };
    let Some(router) = router.upgrade() else { return Ok(reply(StatusCode::SERVICE_UNAVAILABLE, json!({ "Err": "the weave router is stopping" }))) };
    Ok(match dispatch(&router, &state, &path, &req).await {
        Ok(v) => reply(StatusCode::OK, v),
        Err(e) => {
            tracing::warn!(call = %path, error = %e, "Docker plugin call failed");
            reply(StatusCode::INTERNAL_SERVER_ERROR, json!({ "Err": e }))
        }
    })
}

fn field<'a>(req: &'a Value, key: &str) -> &'a str {
    req.get(key).and_then(Value::as_str).unwrap_or("")
}

fn need<'a>(req: &'a Value, key: &str) -> Result<&'a str, String> {
    match field(req, key) {
        "" => Err(format!("missing {key}")),
        v => Ok(v),
    }
}

/// The bridge end of an endpoint's veth (derived: it survives restarts).
fn endpoint_ifname(endpoint: &str) -> String {
    netlink::host_ifname(&format!("docker:{endpoint}"))
}

fn cidr(s: &str) -> Result<Ipv4Net, String> {
    s.parse().map_err(|_| format!("invalid IPv4 CIDR {s:?}"))
}

/// The address part of "a.b.c.d/len" or "a.b.c.d".
fn ip(s: &str) -> Result<Ipv4Addr, String> {
    s.split('/').next().unwrap_or(s).parse().map_err(|_| format!("invalid IPv4 address {s:?}"))
}

/// One call of the plugin protocol.
async fn dispatch(router: &Arc<Router>, state: &Mutex<State>, call: &str, req: &Value) -> Result<Value, String> {
    let err = |e: crate::router::RouterError| e.to_string();
    match call {
        "Plugin.Activate" => Ok(json!({ "Implements": ["NetworkDriver", "IpamDriver"] })),
        "NetworkDriver.GetCapabilities" => Ok(json!({ "Scope": "local", "ConnectivityScope": "global" })),
        "NetworkDriver.CreateNetwork" => {
            let id = need(req, "NetworkID")?;
            if req.get("IPv6Data").and_then(Value::as_array).is_some_and(|a| !a.is_empty()) {
                return Err("weave networks are IPv4 only".into());
            }
            let gateway = req.pointer("/IPv4Data/0/Gateway").and_then(Value::as_str).filter(|g| !g.is_empty()).map(ip).transpose()?;
            let pool = req.pointer("/IPv4Data/0/Pool").and_then(Value::as_str).map(cidr).transpose()?;
            let generic = req.pointer("/Options/com.docker.network.generic");
            let multicast = generic.and_then(|g| g.get("works.weave.multicast")).is_some_and(|v| v.as_str().is_none_or(|s| s != "false"));
            lock(state).networks.insert(id.to_owned(), Network { pool, gateway, multicast });
            Ok(json!({}))
        }
        "NetworkDriver.DeleteNetwork" => {
            let gone = lock(state).networks.remove(need(req, "NetworkID")?);
            if let Some(Network { gateway: Some(gw), pool, .. }) = gone {
                maybe_hide(router, state, gw, pool).await?;
            }
            Ok(json!({}))
        }
        "NetworkDriver.CreateEndpoint" => {
            need(req, "EndpointID")?;
            if !field(req.get("Interface").unwrap_or(&Value::Null), "AddressIPv6").is_empty() {
                return Err("weave networks are IPv4 only".into());
            }
            Ok(json!({}))
        }
        "NetworkDriver.EndpointOperInfo" => Ok(json!({ "Value": {} })),
        "NetworkDriver.DeleteEndpoint" => {
            let host = endpoint_ifname(need(req, "EndpointID")?);
            router.netlink().delete(&host).await.map_err(|e| e.to_string())?;
            Ok(json!({}))
        }
        "NetworkDriver.Join" => {
            let (net, ep) = (need(req, "NetworkID")?, need(req, "EndpointID")?);
            let known = lock(state).networks.get(net).cloned();
            let n = match known {
                Some(n) => n,
                // Created before this router started, and not learnt yet.
                None => {
                    let d = router.docker().ok_or_else(|| format!("unknown network {net} (and no Docker daemon to ask)"))?;
                    let i = d
                        .api()
                        .inspect_network(net, None::<bollard::query_parameters::InspectNetworkOptions>)
                        .await
                        .map_err(|e| format!("unknown network {net}: {e}"))?;
                    learn(state, i.id, i.ipam, i.options).ok_or_else(|| format!("unknown network {net}"))?
                }
            };
            let docker_ns = router.plugin_settings().ok_or("the plugin is not configured")?.dockerd_netns()?;
            let host = endpoint_ifname(ep);
            let bridge = router.netlink().link(&router.config().bridge).await.map_err(|e| e.to_string())?.ok_or("the weave bridge is missing")?;
            let peer = netlink::plug(router.netlink(), bridge.index, &host, &docker_ns, router.config().mtu, false).await.map_err(|e| e.to_string())?;
            let mut routes = Vec::new();
            if n.multicast {
                routes.push(json!({ "Destination": "224.0.0.0/4", "RouteType": 1 }));
            }
            Ok(json!({
                "InterfaceName": { "SrcName": peer, "DstPrefix": "ethwe" },
                "Gateway": n.gateway.map(|g| g.to_string()).unwrap_or_default(),
                "StaticRoutes": routes,
                "DisableGatewayService": true,
            }))
        }
        "NetworkDriver.Leave"
        | "NetworkDriver.DiscoverNew"
        | "NetworkDriver.DiscoverDelete"
        | "NetworkDriver.ProgramExternalConnectivity"
        | "NetworkDriver.RevokeExternalConnectivity" => Ok(json!({})),
        "IpamDriver.GetCapabilities" => Ok(json!({ "RequiresMACAddress": false })),
        "IpamDriver.GetDefaultAddressSpaces" => Ok(json!({ "LocalDefaultAddressSpace": "weavelocal", "GlobalDefaultAddressSpace": "weaveglobal" })),
        "IpamDriver.RequestPool" => {
            if req.get("V6").and_then(Value::as_bool).unwrap_or(false) {
                return Err("weave IPAM is IPv4 only".into());
            }
            let range = router.config().ipalloc_range.ok_or("IPAM is disabled in this router (--ipalloc-range=)")?;
            let pool = match field(req, "Pool") {
                "" => router.default_subnet().unwrap_or(range),
                p => cidr(p)?.trunc(),
            };
            if !range.contains(&pool.network()) || !range.contains(&pool.broadcast()) {
                return Err(format!("pool {pool} is outside the IP allocation range {range}"));
            }
            Ok(json!({ "PoolID": pool.to_string(), "Pool": pool.to_string(), "Data": {} }))
        }
        "IpamDriver.ReleasePool" => Ok(json!({})),
        "IpamDriver.RequestAddress" => {
            let pool = cidr(need(req, "PoolID")?)?;
            let wanted = field(req, "Address");
            let gateway = req.pointer("/Options/RequestAddressType").and_then(Value::as_str) == Some("com.docker.network.gateway");
            let spec = if wanted.is_empty() {
                AddrSpec::Subnet(pool)
            } else {
                AddrSpec::Exact(Ipv4Net::new(ip(wanted)?, pool.prefix_len()).map_err(|e| e.to_string())?)
            };
            let addr = if gateway {
                // The host's address in the pool; remembered as the
                // plugin's only if the plugin exposed it.
                let (a, fresh) = router.gateway_for(spec).await.map_err(err)?;
                if fresh {
                    lock(state).gateways.insert(a);
                }
                a
            } else {
                router.allocate(&fresh_id(), &spec).await.map_err(err)?.addr()
            };
            Ok(json!({ "Address": Ipv4Net::new(addr, pool.prefix_len()).map_err(|e| e.to_string())?.to_string(), "Data": {} }))
        }
        "IpamDriver.ReleaseAddress" => {
            let a = ip(need(req, "Address")?)?;
            let pool = cidr(field(req, "PoolID")).ok();
            let gateway = {
                let mut st = lock(state);
                st.gateways.contains(&a) && st.released.insert(a)
            };
            if gateway {
                maybe_hide(router, state, a, pool).await?;
            } else if let Some(owner) = router.owner_of(a).await.filter(|o| o.starts_with(PLUGIN_ID)) {
                router.free(&owner, [a]).await;
            }
            Ok(json!({}))
        }
        other => Err(format!("{other} is not implemented by the weave plugin")),
    }
}
