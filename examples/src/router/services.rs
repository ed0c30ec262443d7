//! IPAM and weaveDNS as the router's adapters use them.

#[allow(unused_imports)]
use super::*;

impl Router {
    /// The id IPAM holds exposed addresses under.
    pub const EXPOSE_ID: &'static str = "weave:expose";

    /// The subnet `net:default` allocates in (None without IPAM).
    pub fn default_subnet(&self) -> Option<Ipv4Net> {
        self.cfg.ipalloc_range.map(|r| self.cfg.ipalloc_default_subnet.unwrap_or(r))
    }

    /// The Docker daemon, when one answered at start.
    pub fn docker(&self) -> Option<&crate::docker::Docker> {
        self.docker.as_ref()
    }

    /// Docker network plugin settings, when it is served.
    pub fn plugin_settings(&self) -> Option<crate::plugin::PluginSettings> {
        self.cfg.plugin.clone()
    }

    /// What IPAM holds, by container (empty without IPAM).
    pub async fn owned(&self) -> BTreeMap<String, Vec<Ipv4Net>> {
        match &self.ipam {
            Some(svc) => svc.with(|i, _| i.status().owned).await.unwrap_or_default(),
            None => BTreeMap::new(),
        }
    }

    /// Who IPAM holds `addr` for.
    pub async fn owner_of(&self, addr: Ipv4Addr) -> Option<String> {
        self.owned().await.into_iter().find(|(_, cidrs)| cidrs.iter().any(|c| c.addr() == addr)).map(|(id, _)| id)
    }

    /// Free addresses held for `id`.
    pub async fn free(&self, id: &str, addrs: impl IntoIterator<Item = Ipv4Addr>) {
        if let Some(svc) = &self.ipam {
            if let Err(e) = svc.free(id, addrs).await {
                tracing::warn!(container = id, error = %e, "cannot free addresses");
            }
        }
    }

    /// The IPAM, when enabled.
    pub fn ipam(&self) -> Option<&IpamService> {
        self.ipam.as_ref()
    }

    /// Allocate (or claim) an address for `id`, waiting for IPAM if it
    /// must (and until it is saved); integrations such as the Docker plugin
    /// plumb it themselves.
    pub async fn allocate(&self, id: &str, spec: &AddrSpec) -> Result<Ipv4Net, RouterError> {
        let Some(svc) = &self.ipam else {
            return match spec {
                AddrSpec::Exact(n) => Ok(*n),
                _ => Err(RouterError::Invalid("IPAM is disabled (--ipalloc-range=): give addresses as ip:CIDR".into())),
            };
        };
        let mut r = match spec {
            AddrSpec::Exact(n) => svc.claim(id, *n).await,
            AddrSpec::Subnet(s) => svc.allocate(id, Some(*s)).await,
            AddrSpec::Default => svc.allocate(id, None).await,
        };
        // The address may still be held for a namespace that was just
        // deleted: the link notification that releases it can come after
        // the next attach (Weave's 265 reuses an address at once).
        if let (AddrSpec::Exact(n), Err(ServiceError::Ipam(weave_ipam::IpamError::InUse { container, .. }))) = (spec, &r) {
            if container != id && self.namespace_gone(container) {
                let holder = container.clone();
                self.release_gone(&holder).await;
                r = svc.claim(id, *n).await;
            }
        }
        r.map_err(|e| match e {
            ServiceError::Ipam(e) => RouterError::Ipam(e),
            ServiceError::Stopped => RouterError::Stopped,
            e => RouterError::Invalid(e.to_string()),
        })
    }

    /// Whether `id` is a namespace of ours (not Docker's, CNI's or an
    /// internal holder) whose namespace no longer exists.
    fn namespace_gone(&self, id: &str) -> bool {
        if crate::docker::is_container_id(id) || id.starts_with("weave:") || id.starts_with(super::cni::CNI_PREFIX) {
            return false;
        }
        matches!(container_netns(id), Err(RouterError::NotFound(_)))
    }

    /// Why IPAM cannot save its state, while it cannot.
    pub async fn ipam_save_error(&self) -> Option<String> {
        self.ipam.as_ref()?.save_error().await
    }

    /// weaveDNS's names, when enabled.
    pub fn dns(&self) -> Option<&weave_dns::channel::Names> {
        self.dns.as_ref().map(weave_dns::service::DnsService::names)
    }

    /// Where this host's weaveDNS answers containers (None without DNS).
    pub fn dns_address(&self) -> Option<Ipv4Addr> {
        match self.cfg.dns.as_ref()?.listen_for(self.cfg.name).ip() {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        }
    }

    /// The DNS name a container named `base` gets ([`Target::name`]):
    /// `-h FQDN`, or `base` in the domain.
    pub fn dns_name(&self, base: &str, hostname: Option<&str>) -> Option<String> {
        let d = self.cfg.dns.as_ref()?;
        Some(match hostname {
            Some(h) if !h.is_empty() => h.to_owned(),
            _ => format!("{base}.{}", d.domain.trim_start_matches('.')),
        })
    }

    /// Add DNS entries for `container` (after an attach, or `dns-add`).
    pub async fn dns_add(&self, container: &str, name: &str, addrs: &[Ipv4Addr]) -> Result<(), RouterError> {
        let Some(dns) = &self.dns else { return Err(RouterError::Invalid("weaveDNS is disabled (--no-dns)".into())) };
        dns.add(container, name, addrs).await.map_err(|e| RouterError::Invalid(e.to_string()))
    }

    /// Remove DNS entries of `container` (for `name`/`addrs` if given).
    pub async fn dns_remove(&self, container: &str, name: Option<&str>, addrs: &[Ipv4Addr]) -> Result<usize, RouterError> {
        let Some(dns) = &self.dns else { return Err(RouterError::Invalid("weaveDNS is disabled (--no-dns)".into())) };
        dns.remove(container, name, addrs).await.map_err(|e| RouterError::Invalid(e.to_string()))
    }

    /// What IPAM holds for `id`.
    pub async fn owned_by(&self, id: &str) -> Vec<Ipv4Net> {
        self.owned().await.remove(id).unwrap_or_default()
    }
}
