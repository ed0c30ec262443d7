//! Docker, through its API (bollard): container names and IDs resolved to
//! network namespaces, and container lifecycle events.
//!
//! The router uses this only when a Docker daemon answers; every other
//! CONTAINER form (named netns, path, `pid:N`) works without one.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use bollard::query_parameters::{EventsOptions, InspectContainerOptions};
use ipnet::Ipv4Net;
use tokio_stream::{Stream, StreamExt};

/// A Docker daemon connection.
#[derive(Debug, Clone)]
pub struct Docker {
    api: bollard::Docker,
}

/// What the router needs to know of a Docker container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerContainer {
    /// Full ID (64 hex digits).
    pub id: String,
    /// Name, without Docker's leading `/`.
    pub name: String,
    /// Its init process while running.
    pub pid: Option<u32>,
    /// The file Docker bind-mounts as its `/etc/resolv.conf`.
    pub resolv_conf: Option<PathBuf>,
    /// The file Docker bind-mounts as its `/etc/hosts`.
    pub hosts: Option<PathBuf>,
    /// Its hostname and domain name, as `HOST.DOMAIN` (Weave's fqdn).
    pub fqdn: String,
    /// Its addresses on each Docker network, by network ID.
    pub networks: HashMap<String, Ipv4Net>,
}

/// A container lifecycle event the router acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Started (also after a restart).
    Start,
    /// Its process ended; it may be restarted.
    Die,
    /// Removed.
    Destroy,
}

/// A Docker API failure.
#[derive(Debug, thiserror::Error)]
#[error("Docker: {0}")]
pub struct DockerError(#[from] bollard::errors::Error);

/// True for a full container ID.
pub fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// dockerd's process, from its pid file (`/run/docker.pid`).
pub fn daemon_pid() -> Option<u32> {
    ["/run/docker.pid", "/var/run/docker.pid"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok()?.trim().parse().ok())
        .filter(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
}

/// How `ps` and `status dns` show a container ID: Docker's 12 digits.
pub fn display_id(id: &str) -> &str {
    if is_container_id(id) {
        &id[..12]
    } else {
        id
    }
}

impl Docker {
    /// Connect to the daemon (`DOCKER_HOST` or `/var/run/docker.sock`) and
    /// agree on an API version; `None` when no daemon answers.
    pub async fn connect() -> Option<Self> {
        let api = bollard::Docker::connect_with_unix_defaults().ok()?;
        let api = tokio::time::timeout(std::time::Duration::from_secs(3), api.negotiate_version()).await.ok()?.ok()?;
        tokio::time::timeout(std::time::Duration::from_secs(3), api.ping()).await.ok()?.ok()?;
        Some(Self { api })
    }

    /// The API client, for what this module does not wrap.
    pub fn api(&self) -> &bollard::Docker {
        &self.api
    }

    /// Look up a container by name or (possibly short) ID; `None` if
    /// Docker does not know it.
    pub async fn inspect(&self, name_or_id: &str) -> Result<Option<DockerContainer>, DockerError> {
        match self.api.inspect_container(name_or_id, None::<InspectContainerOptions>).await {
            Ok(c) => {
                let state = c.state.unwrap_or_default();
                let running = state.running.unwrap_or(false);
                let pid = state.pid.filter(|p| running && *p > 0).and_then(|p| u32::try_from(p).ok());
                let mut networks = HashMap::new();
                for (_, ep) in c.network_settings.and_then(|n| n.networks).unwrap_or_default() {
                    let (Some(id), Some(ip), Some(len)) = (ep.network_id, ep.ip_address, ep.ip_prefix_len) else { continue };
                    let (Ok(ip), Ok(len)) = (ip.parse::<Ipv4Addr>(), u8::try_from(len)) else { continue };
                    if let Ok(net) = Ipv4Net::new(ip, len) {
                        networks.insert(id, net);
                    }
                }
                Ok(Some(DockerContainer {
                    id: c.id.unwrap_or_default(),
                    name: c.name.unwrap_or_default().trim_start_matches('/').to_owned(),
                    pid,
                    resolv_conf: c.resolv_conf_path.filter(|p| !p.is_empty()).map(PathBuf::from),
                    hosts: c.hosts_path.filter(|p| !p.is_empty()).map(PathBuf::from),
                    fqdn: c.config.map(|k| format!("{}.{}", k.hostname.unwrap_or_default(), k.domainname.unwrap_or_default())).unwrap_or_default(),
                    networks,
                }))
            }
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Container starts, deaths and removals since `since` (Docker
    /// replays those already past), as (event, container ID).
    pub fn lifecycle(&self, since: std::time::SystemTime) -> impl Stream<Item = Result<(Lifecycle, String), DockerError>> + use<> {
        let filters = HashMap::from([
            ("type".to_owned(), vec!["container".to_owned()]),
            ("event".to_owned(), vec!["start".to_owned(), "die".to_owned(), "destroy".to_owned()]),
        ]);
        let since = since.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs().to_string()).ok();
        let opts = EventsOptions { filters: Some(filters), since, ..Default::default() };
        self.api.events(Some(opts)).filter_map(|e| match e {
            Err(e) => Some(Err(DockerError(e))),
            Ok(m) => {
                let what = match m.action.as_deref()? {
                    "start" => Lifecycle::Start,
                    "die" => Lifecycle::Die,
                    "destroy" => Lifecycle::Destroy,
                    _ => return None,
                };
                Some(Ok((what, m.actor?.id?)))
            }
        })
    }
}

/// Point a Docker container's resolver at weaveDNS. Docker bind-mounts
/// the file, so it is rewritten in place (same inode), keeping the
/// container's other options and search domains after ours.
pub fn rewrite_resolv_conf(path: &std::path::Path, dns: Ipv4Addr, domain: &str) -> std::io::Result<()> {
    use std::io::{Seek, Write};
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let domain = domain.trim_matches('.');
    let mut out = format!("nameserver {dns}\nsearch {domain}");
    for l in old.lines() {
        if let Some(rest) = l.strip_prefix("search") {
            for d in rest.split_whitespace().filter(|d| d.trim_matches('.') != domain) {
                out.push(' ');
                out.push_str(d);
            }
        }
    }
    out.push('\n');
    for l in old.lines().filter(|l| l.starts_with("options")) {
        out.push_str(l);
        out.push('\n');
    }
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.set_len(0)?;
    f.rewind()?;
    f.write_all(out.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_shown_as_docker_does() {
        let id = "a7f436741025575c1c42664bbf8c0f924d3fac65aac2283132a59816c901eab3";
        assert!(is_container_id(id));
        assert_eq!(display_id(id), "a7f436741025");
        assert!(!is_container_id("a7f436741025"));
        assert_eq!(display_id("/run/netns/c1"), "/run/netns/c1");
    }

    #[test]
    fn resolv_conf_is_rewritten_in_place() {
        let dir = std::env::temp_dir().join(format!("wv-resolv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("resolv.conf");
        std::fs::write(&p, "nameserver 10.0.0.1\nsearch example.org weave.local\noptions ndots:2\n").unwrap();
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(&p).unwrap().ino();
        rewrite_resolv_conf(&p, "169.254.1.2".parse().unwrap(), "weave.local.").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "nameserver 169.254.1.2\nsearch weave.local example.org\noptions ndots:2\n");
        assert_eq!(std::fs::metadata(&p).unwrap().ino(), ino, "same file: Docker's bind mount still shows it");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
