//! The attach transaction and its inverse: a container (or the host, for
//! expose) gets addresses from IPAM, an interface on the bridge and its
//! names; detach and hide walk back the same path.

#[allow(unused_imports)]
use super::*;

impl Router {
    /// Resolve a CONTAINER argument: `pid:N`, a netns path, a named netns,
    /// or (when Docker answers) a Docker container's name or ID.
    pub async fn resolve(&self, spec: &str) -> Result<Target, RouterError> {
        let base = |s: &str| s.rsplit('/').next().unwrap_or(s).trim_start_matches("pid:").to_owned();
        let named = !spec.is_empty() && !spec.contains('/') && !spec.starts_with("pid:");
        if !named || std::path::Path::new("/run/netns").join(spec).exists() || self.docker.is_none() {
            return Ok(Target { id: spec.to_owned(), name: base(spec), netns: Some(container_netns(spec)?), docker: None });
        }
        let d = self.docker.as_ref().expect("checked");
        match d.inspect(spec).await {
            Ok(Some(c)) => Ok(Target { id: c.id.clone(), name: c.name.clone(), netns: c.pid.map(Netns::of_pid), docker: Some(c) }),
            Ok(None) => Err(RouterError::NotFound(format!("container {spec} not found (neither a network namespace nor a Docker container)"))),
            Err(e) => Err(RouterError::Invalid(format!("cannot look up container {spec}: {e}"))),
        }
    }

    /// `weave attach` with DNS: the addresses, then a name for each and a
    /// resolver for the container (named namespaces get
    /// `/etc/netns/NAME/resolv.conf`, which `ip netns exec` mounts; Docker
    /// containers get theirs rewritten). A Docker container is attached
    /// again, with the same addresses, when it is restarted.
    pub async fn attach_with_dns(
        &self,
        container: &str,
        specs: &[AddrSpec],
        multicast_route: bool,
        dns: bool,
        hostname: Option<&str>,
    ) -> Result<Vec<Ipv4Net>, RouterError> {
        let t = self.resolve(container).await?;
        // A Docker container's lifecycle events wait until it is attached
        // and tracked; a sweep, until it is plumbed.
        let _busy = self.busy(&t.id).await;
        let cidrs = self.attach_target(&t, specs, multicast_route, "ethwe", false).await?;
        if t.docker.is_some() {
            let mut tr = lock(&self.tracked);
            let e = tr.entry(t.id.clone()).or_insert(Tracked {
                specs: Vec::new(),
                dns,
                hostname: hostname.map(str::to_owned),
                multicast: multicast_route,
                epoch: 0,
            });
            for c in &cidrs {
                let spec = AddrSpec::Exact(*c);
                if !e.specs.contains(&spec) {
                    e.specs.push(spec);
                }
            }
            e.dns = dns;
            e.hostname = hostname.map(str::to_owned);
            save_tracked(&self.cfg.state_dir, &tr);
        }
        {
            let mut cs = self.containers.lock().await;
            if let Some(c) = cs.get_mut(&t.id) {
                c.dns = dns;
                c.hostname = hostname.filter(|h| !h.is_empty()).map(str::to_owned);
                self.save_attached(&cs);
            }
        }
        if dns {
            self.register_dns(&t, &cidrs, hostname).await?;
        }
        Ok(cidrs)
    }

    /// `weave attach --rewrite-hosts [--add-host NAME:ADDR]...`: the
    /// container's `/etc/hosts` in Weave's layout, naming `cidrs` by its
    /// DNS name (`-h`, else its Docker hostname or `NAME.DOMAIN`). A Docker
    /// container's file is written in place (the container sees it), then
    /// replaced by a new file, as Weave does, so that Docker stops updating
    /// it; a named namespace gets `/etc/netns/NAME/hosts`.
    pub async fn rewrite_hosts(&self, container: &str, cidrs: &[Ipv4Net], hostname: Option<&str>, extra: &[String]) -> Result<(), RouterError> {
        let t = self.resolve(container).await?;
        let addrs: Vec<IpAddr> = cidrs.iter().map(|c| IpAddr::V4(c.addr())).collect();
        let named = |fqdn: String| hostname.filter(|h| !h.is_empty()).map(str::to_owned).unwrap_or(fqdn);
        let fail = |e: std::io::Error| RouterError::Invalid(format!("cannot write the container's hosts file: {e}"));
        match &t.docker {
            Some(d) => {
                let path = d.hosts.as_ref().ok_or_else(|| RouterError::Invalid(format!("Docker keeps no hosts file for {}", t.name)))?;
                let text = weave_dns::resolv::hosts_file(&named(d.fqdn.clone()), &addrs, extra);
                std::fs::write(path, &text).map_err(fail)?;
                std::fs::remove_file(path).map_err(fail)?;
                std::fs::write(path, &text).map_err(fail)
            }
            None if !t.id.starts_with('/') && !t.id.starts_with("pid:") => {
                let fqdn = named(self.dns_name(&t.name, None).unwrap_or_else(|| t.name.clone()));
                note_resolv_conf(&self.cfg.state_dir, &t.id);
                weave_dns::resolv::write_netns_hosts(std::path::Path::new("/etc/netns"), &t.id, &weave_dns::resolv::hosts_file(&fqdn, &addrs, extra))
                    .map(drop)
                    .map_err(fail)
            }
            None => Err(RouterError::Invalid("--rewrite-hosts needs a Docker container or a named network namespace".into())),
        }
    }

    /// Names for `cidrs` of an attached container, the route to this
    /// host's DNS server inside it and back, and its resolver.
    pub(super) async fn register_dns(&self, t: &Target, cidrs: &[Ipv4Net], hostname: Option<&str>) -> Result<(), RouterError> {
        let (Some(name), Some(settings)) = (self.dns_name(&t.name, hostname), self.cfg.dns.as_ref()) else { return Ok(()) };
        let addrs: Vec<Ipv4Addr> = cidrs.iter().map(Ipv4Net::addr).collect();
        self.dns_add(&t.id, &name, &addrs).await?;
        let IpAddr::V4(dns_ip) = settings.listen_for(self.cfg.name).ip() else { return Ok(()) };
        if let Some(ns) = &t.netns {
            let c = Netlink::connect(ns).await?;
            if let Some(link) = c.link("ethwe").await? {
                c.add_route(link.index, Ipv4Net::new(dns_ip, 32).expect("/32")).await?;
            }
        }
        // And the way back: the server answers from the bridge.
        if let Some(b) = self.nl.link(&self.cfg.bridge).await? {
            for a in &addrs {
                self.nl.add_route(b.index, Ipv4Net::new(*a, 32).expect("/32")).await?;
            }
        }
        let written = match &t.docker {
            Some(d) => match &d.resolv_conf {
                Some(p) => crate::docker::rewrite_resolv_conf(p, dns_ip, &settings.domain),
                None => Ok(()),
            },
            None if !t.id.starts_with('/') && !t.id.starts_with("pid:") => {
                note_resolv_conf(&self.cfg.state_dir, &t.id);
                weave_dns::resolv::write_netns_resolv_conf(std::path::Path::new("/etc/netns"), &t.id, IpAddr::V4(dns_ip), &settings.domain).map(drop)
            }
            None => Ok(()),
        };
        written.map_err(|e| RouterError::Invalid(format!("cannot write the container's resolv.conf: {e}")))
    }

    /// Attach a resolved container as interface `ifname`: addresses (from
    /// IPAM unless exact) in its namespace. Returns the CIDRs configured.
    pub async fn attach_target(&self, t: &Target, specs: &[AddrSpec], multicast_route: bool, ifname: &str, hairpin: bool) -> Result<Vec<Ipv4Net>, RouterError> {
        let Some(ns) = t.netns.clone() else { return Err(RouterError::Invalid(format!("container {} is not running", t.name))) };
        let container = t.id.as_str();
        let specs: Vec<AddrSpec> = if specs.is_empty() { vec![AddrSpec::Default] } else { specs.to_vec() };
        let mut cidrs = Vec::new();
        for s in &specs {
            cidrs.push(self.allocate(container, s).await?);
        }
        let mut cfg = AttachConfig::new(self.cfg.bridge.clone(), ifname, self.cfg.mtu);
        cfg.multicast_route = multicast_route;
        cfg.hairpin = hairpin;
        let addrs: Vec<IpNet> = cidrs.iter().map(|c| IpNet::V4(*c)).collect();
        let attached = match netlink::attach(&self.nl, &ns, container, &addrs, &cfg).await {
            Ok(a) => a,
            Err(e) => {
                // Give back what we took for it.
                self.free(container, cidrs.iter().map(Ipv4Net::addr)).await;
                return Err(e.into());
            }
        };
        let mut cs = self.containers.lock().await;
        let entry = cs.entry(container.to_owned()).or_insert_with(|| Container {
            id: container.to_owned(),
            netns: ns.clone(),
            mac: attached.mac,
            cidrs: Vec::new(),
            ifname: ifname.to_owned(),
            dns: false,
            hostname: None,
        });
        entry.mac = attached.mac;
        entry.netns = ns;
        for c in &cidrs {
            if !entry.cidrs.contains(c) {
                entry.cidrs.push(*c);
            }
        }
        let all = entry.cidrs.clone();
        self.save_attached(&cs);
        drop(cs);
        self.record_on_host_end(container, &all).await;
        Ok(cidrs)
    }

    /// `weave detach`: remove these addresses (all when empty); free them.
    /// The CLI never sends an empty list (it means `net:default` there).
    pub async fn detach(&self, container: &str, addrs: &[Ipv4Net]) -> Result<Vec<Ipv4Net>, RouterError> {
        let t = self.resolve(container).await?;
        let _busy = self.busy(&t.id).await;
        let victims = self.detach_target(&t, "ethwe", addrs).await?;
        let mut tr = lock(&self.tracked);
        if let Some(e) = tr.get_mut(&t.id) {
            // What was detached is not attached again after a restart.
            let hit = |subnet: Option<Ipv4Net>| subnet.is_some_and(|s| victims.iter().any(|v| s.contains(&v.addr())));
            let default = self.default_subnet();
            e.specs.retain(|s| match s {
                AddrSpec::Exact(n) => !victims.contains(n),
                AddrSpec::Subnet(s) => !hit(Some(*s)),
                AddrSpec::Default => !hit(default),
            });
            if addrs.is_empty() || e.specs.is_empty() {
                tr.remove(&t.id);
            }
            save_tracked(&self.cfg.state_dir, &tr);
        }
        Ok(victims)
    }

    /// The addresses a container has: on its interface as we know it, and
    /// held for it by IPAM.
    pub async fn addresses_of(&self, container: &str) -> Result<Vec<Ipv4Net>, RouterError> {
        let t = self.resolve(container).await?;
        let known = self.containers.lock().await.get(&t.id).map(|c| c.cidrs.clone()).unwrap_or_default();
        Ok(self.with_owned(&t.id, known).await)
    }

    /// `known` and, after them, what IPAM holds for `id` that is not among them.
    async fn with_owned(&self, id: &str, mut known: Vec<Ipv4Net>) -> Vec<Ipv4Net> {
        for o in self.owned_by(id).await {
            if !known.contains(&o) {
                known.push(o);
            }
        }
        known
    }

    /// Detach a resolved container's interface `ifname`.
    pub async fn detach_target(&self, t: &Target, ifname: &str, addrs: &[Ipv4Net]) -> Result<Vec<Ipv4Net>, RouterError> {
        let container = t.id.as_str();
        let mut cs = self.containers.lock().await;
        let known = cs.get(container).map(|c| c.cidrs.clone()).unwrap_or_default();
        let all = self.with_owned(container, known).await;
        let victims: Vec<Ipv4Net> =
            if addrs.is_empty() { all.clone() } else { all.iter().filter(|c| addrs.iter().any(|a| a.addr() == c.addr())).copied().collect() };
        if victims.is_empty() && !addrs.is_empty() {
            return Err(RouterError::NotFound(format!("{} does not have {}", t.name, addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "))));
        }
        if let Some(ns) = &t.netns {
            let v: Vec<IpNet> = victims.iter().map(|c| IpNet::V4(*c)).collect();
            netlink::detach(ns, ifname, if addrs.is_empty() { None } else { Some(&v) }).await?;
        }
        self.free(container, victims.iter().map(Ipv4Net::addr)).await;
        if self.dns.is_some() {
            let ips: Vec<Ipv4Addr> = victims.iter().map(Ipv4Net::addr).collect();
            let _ = self.dns_remove(container, None, &ips).await;
        }
        let mut gone = addrs.is_empty();
        if let Some(c) = cs.get_mut(container) {
            c.cidrs.retain(|x| !victims.contains(x));
            gone |= c.cidrs.is_empty();
            if !gone {
                self.record_on_host_end(container, &c.cidrs).await;
            }
        }
        if gone {
            cs.remove(container);
            self.save_attached(&cs);
            if t.docker.is_none() && t.netns.as_ref() == Some(&Netns::named(container)) {
                let _ = weave_dns::resolv::remove_netns_resolv_conf(std::path::Path::new("/etc/netns"), container);
            }
        }
        Ok(victims)
    }

    /// Attached containers (all, or those named).
    pub async fn ps(&self, only: &[String]) -> Vec<Container> {
        self.containers.lock().await.values().filter(|c| only.is_empty() || only.contains(&c.id)).cloned().collect()
    }

    /// `weave expose`: host addresses on the bridge (from IPAM unless
    /// exact), masqueraded unless told otherwise. Idempotent: an exposed
    /// address in the requested subnet is returned again.
    pub async fn expose(&self, specs: &[AddrSpec], masquerade: bool) -> Result<Vec<Ipv4Net>, RouterError> {
        let specs: Vec<AddrSpec> = if specs.is_empty() { vec![AddrSpec::Default] } else { specs.to_vec() };
        let mut out = Vec::new();
        for s in &specs {
            let n = self.allocate(Self::EXPOSE_ID, s).await?;
            weave_dataplane::expose::expose(&self.nl, &self.cfg.bridge, IpNet::V4(n), masquerade).await?;
            out.push(n);
        }
        let mut saved = self.load_exposed();
        saved.extend(out.iter().map(|n| (*n, masquerade)));
        self.save_exposed(&saved);
        Ok(out)
    }

    /// The exposed addresses' masquerade choice, as saved.
    fn load_exposed(&self) -> BTreeMap<Ipv4Net, bool> {
        let text = std::fs::read_to_string(self.cfg.state_dir.join(EXPOSED_FILE)).unwrap_or_default();
        let m: BTreeMap<String, bool> = serde_json::from_str(&text).unwrap_or_default();
        m.into_iter().filter_map(|(k, v)| Some((k.parse().ok()?, v))).collect()
    }

    fn save_exposed(&self, m: &BTreeMap<Ipv4Net, bool>) {
        let m: BTreeMap<String, bool> = m.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let path = self.cfg.state_dir.join(EXPOSED_FILE);
        if let Err(e) = weave_core::fs::write_atomically(&path, serde_json::to_string(&m).unwrap_or_default().as_bytes()) {
            tracing::warn!(error = %e, file = %path.display(), "cannot save the exposed addresses");
        }
    }

    /// At start: the addresses still exposed on the bridge get their
    /// masquerading back if it went (a flush, or a rule deleted by hand),
    /// as they were exposed (masqueraded unless saved otherwise).
    pub(super) async fn restore_exposed(&self) {
        let Ok((exposed, _)) = self.exposed().await else { return };
        let saved = self.load_exposed();
        for n in exposed {
            if saved.get(&n).copied().unwrap_or(true) {
                if let Err(e) = weave_dataplane::expose::expose(&self.nl, &self.cfg.bridge, IpNet::V4(n), true).await {
                    tracing::warn!(addr = %n, error = %e, "cannot restore masquerading for an exposed address");
                }
            }
        }
    }

    /// Addresses exposed on the bridge, and the bridge's MAC.
    pub async fn exposed(&self) -> Result<(Vec<Ipv4Net>, [u8; 6]), RouterError> {
        let addrs = weave_dataplane::expose::exposed(&self.nl, &self.cfg.bridge).await?;
        let mac = self.nl.link(&self.cfg.bridge).await?.map(|l| l.mac).unwrap_or_default();
        Ok((addrs.into_iter().filter_map(|a| if let IpNet::V4(v) = a { Some(v) } else { None }).collect(), mac))
    }

    /// `weave hide`: remove these exposed addresses (all when empty).
    pub async fn hide(&self, addrs: &[Ipv4Addr]) -> Result<Vec<Ipv4Net>, RouterError> {
        let (exposed, _) = self.exposed().await?;
        let victims: Vec<Ipv4Net> = exposed.into_iter().filter(|n| addrs.is_empty() || addrs.contains(&n.addr())).collect();
        for n in &victims {
            weave_dataplane::expose::hide(&self.nl, &self.cfg.bridge, IpNet::V4(*n)).await?;
        }
        self.free(Self::EXPOSE_ID, victims.iter().map(Ipv4Net::addr)).await;
        let mut saved = self.load_exposed();
        saved.retain(|n, _| !victims.contains(n));
        self.save_exposed(&saved);
        if self.dns.is_some() && !victims.is_empty() {
            // The names `expose -h` gave these addresses.
            let _ = self.dns_remove(Self::EXPOSE_ID, None, &victims.iter().map(Ipv4Net::addr).collect::<Vec<_>>()).await;
        }
        Ok(victims)
    }
}
