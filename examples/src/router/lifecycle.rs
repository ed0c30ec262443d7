//! Containers that go: the sweep on link changes, release, adoption at
//! start, and the records on host ends that outlive a lost state directory.

#[allow(unused_imports)]
use super::*;

impl Router {
    /// At start: containers attached before (recorded in the state
    /// directory, or holding addresses under a namespace's name) whose veth
    /// is still on the bridge are listed again; those whose veth went while
    /// the router was down are released, and so are the names of
    /// namespaces that are gone.
    pub(super) async fn adopt_existing(&self, found: Vec<(String, Ipv4Net)>) {
        /// A namespace's name, path or pid: not Docker's, CNI's or ours.
        fn netns_id(id: &str) -> bool {
            !crate::docker::is_container_id(id) && !id.starts_with("weave:") && !id.starts_with(CNI_PREFIX)
        }
        let mut candidates: BTreeMap<String, Attached> = load_attached(&self.cfg.state_dir);
        for id in self.owned().await.into_keys().filter(|id| netns_id(id)) {
            candidates.entry(id).or_default();
        }
        // Containers IPAM learnt of only from their host ends (its state
        // was lost): reclaimed, and followed from now on.
        for (id, _) in found.into_iter().filter(|(id, _)| netns_id(id)) {
            candidates.entry(id).or_default();
        }
        let named: Vec<String> = match &self.dns {
            Some(d) => d.names().current().store().own_live().into_iter().map(|e| e.key.container).filter(|c| netns_id(c)).collect(),
            None => Vec::new(),
        };
        for id in named {
            if !candidates.contains_key(&id) && container_netns(&id).is_err() {
                self.release_gone(&id).await;
            }
        }
        let Ok(links) = self.nl.links().await else { return };
        let present: std::collections::BTreeSet<String> = links.into_iter().map(|(n, _)| n).collect();
        let mut unnamed = Vec::new();
        for (id, Attached { netns: path, ifname, dns, hostname }) in candidates {
            if !present.contains(&netlink::host_ifname(&id)) {
                self.release_gone(&id).await;
                continue;
            }
            let ns = match path {
                Some(p) => Netns::at(p),
                None => match container_netns(&id) {
                    Ok(ns) => ns,
                    Err(_) => continue,
                },
            };
            let Ok(c) = Netlink::connect(&ns).await else { continue };
            let Ok(Some(link)) = c.link(&ifname).await else { continue };
            let mut cidrs = self.owned_by(&id).await;
            if cidrs.is_empty() {
                // Exact addresses without IPAM: what is on the interface.
                cidrs =
                    c.addresses(link.index).await.unwrap_or_default().into_iter().filter_map(|a| if let IpNet::V4(v) = a { Some(v) } else { None }).collect();
            }
            if dns {
                unnamed.push((id.clone(), cidrs.clone(), hostname.clone()));
            }
            self.containers.lock().await.insert(id.clone(), Container { id, netns: ns, mac: link.mac, cidrs, ifname, dns, hostname });
        }
        self.save_attached(&*self.containers.lock().await);
        // Containers that asked for a name and have none (attached while
        // DNS was off) are named now, as Weave names running containers at
        // launch.
        let Some(d) = &self.dns else { return };
        let named: std::collections::BTreeSet<String> = d.names().current().store().own_live().into_iter().map(|e| e.key.container).collect();
        for (id, cidrs, hostname) in unnamed.into_iter().filter(|(id, ..)| !named.contains(id)) {
            let Ok(t) = self.resolve(&id).await else { continue };
            if let Err(e) = self.register_dns(&t, &cidrs, hostname.as_deref()).await {
                tracing::warn!(container = %id, error = %e, "cannot name an attached container");
            }
        }
    }

    /// Give up everything held for a container: its addresses, names and
    /// entry.
    pub(super) async fn release(&self, id: &str) {
        let owned = self.owned_by(id).await;
        self.free(id, owned.iter().map(Ipv4Net::addr)).await;
        if self.dns.is_some() {
            let _ = self.dns_remove(id, None, &[]).await;
        }
        let known = {
            let mut cs = self.containers.lock().await;
            let known = cs.remove(id).is_some();
            self.save_attached(&cs);
            known
        };
        if known || !owned.is_empty() {
            tracing::info!(container = crate::docker::display_id(id), released = owned.len(), "container gone: addresses and names released");
        }
    }

    /// Write on a container's host end, in the kernel, whose link it is
    /// and its addresses ([`HostEndRecord`]): if the state directory is
    /// lost, the next start claims them back from there.
    pub(super) async fn record_on_host_end(&self, id: &str, cidrs: &[Ipv4Net]) {
        let record = HostEndRecord { id: id.to_owned(), cidrs: cidrs.to_vec() }.to_string();
        let written = match self.nl.link(&netlink::host_ifname(id)).await {
            Ok(Some(l)) => self.nl.set_alias(l.index, &record).await,
            Ok(None) => return,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            tracing::warn!(container = crate::docker::display_id(id), error = %e, "cannot record the attachment on its host end; it will not be reclaimed if the state is lost");
        }
    }

    /// Record the containers with a veth of ours that Docker does not
    /// follow (namespaces, CNI pods), for the next start.
    pub(super) fn save_attached(&self, cs: &BTreeMap<String, Container>) {
        let m: serde_json::Map<String, serde_json::Value> = cs
            .values()
            .filter(|c| !crate::docker::is_container_id(&c.id))
            .filter_map(|c| {
                let v = serde_json::json!({ "netns": c.netns.path()?.to_str()?, "ifname": c.ifname, "dns": c.dns, "hostname": c.hostname });
                Some((c.id.clone(), v))
            })
            .collect();
        let path = self.cfg.state_dir.join(ATTACHED_FILE);
        if let Err(e) = weave_core::fs::write_atomically(&path, serde_json::Value::Object(m).to_string().as_bytes()) {
            tracing::warn!(error = %e, file = %path.display(), "cannot save the attached containers");
        }
    }

    /// Release every container of ours whose veth is gone (the kernel
    /// deletes the pair with the container's namespace). Docker's are left
    /// to its events (a restart keeps the ID and the addresses).
    pub(super) async fn sweep(&self) {
        let Ok(links) = self.nl.links().await else { return };
        let present: std::collections::BTreeSet<String> = links.into_iter().map(|(n, _)| n).collect();
        let dead: Vec<String> = self
            .containers
            .lock()
            .await
            .keys()
            .filter(|id| !crate::docker::is_container_id(id) && !present.contains(&netlink::host_ifname(id)))
            .cloned()
            .collect();
        for id in dead {
            let _busy = self.busy(&id).await;
            // Again under its lock: an attach may have just made it anew.
            let still = self.containers.lock().await.contains_key(&id);
            if still && matches!(self.nl.link(&netlink::host_ifname(&id)).await, Ok(None)) {
                self.release_gone(&id).await;
                self.forget_lock(&id);
            }
        }
    }

    /// A container that is no longer there: everything held for it goes,
    /// its resolv.conf under /etc/netns too.
    pub(super) async fn release_gone(&self, id: &str) {
        self.release(id).await;
        if !id.contains('/') && !id.starts_with("pid:") && !id.starts_with("weave:") && !std::path::Path::new("/run/netns").join(id).exists() {
            let _ = weave_dns::resolv::remove_netns_resolv_conf(std::path::Path::new("/etc/netns"), id);
        }
    }
}

/// What the router writes on a container's host end (its alias): `weave/1
/// CIDR[,CIDR...] ID`. The kernel keeps it for as long as the link lives,
/// so it outlives a lost state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEndRecord {
    /// The IPAM id (container, `cni:...`).
    pub id: String,
    /// Its addresses.
    pub cidrs: Vec<Ipv4Net>,
}

impl std::fmt::Display for HostEndRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cidrs: Vec<String> = self.cidrs.iter().map(ToString::to_string).collect();
        write!(f, "weave/1 {} {}", cidrs.join(","), self.id)
    }
}

impl std::str::FromStr for HostEndRecord {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let rest = s.strip_prefix("weave/1 ").ok_or(())?;
        let (cidrs, id) = rest.split_once(' ').ok_or(())?;
        let cidrs = cidrs.split(',').map(|c| c.parse().map_err(drop)).collect::<Result<Vec<Ipv4Net>, ()>>()?;
        if id.is_empty() || cidrs.is_empty() {
            return Err(());
        }
        Ok(Self { id: id.to_owned(), cidrs })
    }
}

/// The addresses in use on this host as the kernel knows them: the records
/// on the bridge's container links, and the addresses exposed on it.
pub(super) async fn in_use(nl: &Netlink, bridge: &str) -> Result<Vec<(String, Ipv4Net)>, weave_dataplane::PlumbError> {
    let mut out = Vec::new();
    if let Some(b) = nl.link(bridge).await? {
        for (_, port) in nl.ports(b.index).await? {
            if let Some(r) = port.alias.as_deref().and_then(|a| a.parse::<HostEndRecord>().ok()) {
                out.extend(r.cidrs.into_iter().map(|c| (r.id.clone(), c)));
            }
        }
    }
    for a in weave_dataplane::expose::exposed(nl, bridge).await? {
        if let IpNet::V4(v) = a {
            out.push((Router::EXPOSE_ID.to_owned(), v));
        }
    }
    Ok(out)
}

/// Before anything is allocated: claim back every address in use here
/// that IPAM does not hold (its state was lost, corrupt or discarded), so
/// none is given to another container. Claims wait, reserved, until the
/// ring is known.
///
/// `plugin` is what Docker's endpoints on the plugin's networks hold, when
/// Docker could say: those are claimed back too, and what the plugin holds
/// that no endpoint uses any more (Docker released it while the router was
/// down) is freed.
pub(super) fn reclaim(ipam: &mut Ipam, mut found: Vec<(String, Ipv4Net)>, plugin: Option<&std::collections::BTreeSet<Ipv4Net>>) {
    let owned = ipam.status().owned;
    let owners: BTreeMap<Ipv4Addr, String> = owned.iter().flat_map(|(id, cidrs)| cidrs.iter().map(move |c| (c.addr(), id.clone()))).collect();
    let now = Instant::now();
    if let Some(endpoints) = plugin {
        let used: std::collections::BTreeSet<Ipv4Addr> = endpoints.iter().map(Ipv4Net::addr).collect();
        for (id, cidrs) in owned.iter().filter(|(id, _)| id.starts_with(crate::plugin::PLUGIN_ID)) {
            for c in cidrs.iter().filter(|c| !used.contains(&c.addr())) {
                ipam.free(now, id, c.addr());
                tracing::info!(addr = %c, "no Docker endpoint uses this plugin address any more: freed");
            }
        }
        found.extend(endpoints.iter().filter(|e| !owners.contains_key(&e.addr())).map(|e| (crate::plugin::fresh_id(), *e)));
    }
    let mut n = 0;
    for (id, cidr) in found {
        match owners.get(&cidr.addr()) {
            Some(o) if *o == id => {}
            Some(o) => tracing::error!(addr = %cidr, container = %id, held_for = %o, "address in use here is held for another container"),
            None => match ipam.reserve(now, &id, cidr) {
                Ok(_) => n += 1,
                Err(e) => tracing::error!(addr = %cidr, container = %id, error = %e, "cannot reclaim an address in use here"),
            },
        }
    }
    if n > 0 {
        tracing::warn!(reclaimed = n, "IPAM did not hold addresses in use on this host (its state was lost?): claimed them back");
    }
}

/// A container as the attached file records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Attached {
    /// Its namespace's path, if recorded.
    pub netns: Option<String>,
    /// The interface inside.
    pub ifname: String,
    /// It asked for a DNS name.
    pub dns: bool,
    /// The `-h` name it asked for.
    pub hostname: Option<String>,
}

impl Default for Attached {
    fn default() -> Self {
        Self { netns: None, ifname: "ethwe".into(), dns: false, hostname: None }
    }
}

/// Containers with a veth of ours, as [`Router::save_attached`] left
/// them, by id.
pub(super) fn load_attached(dir: &std::path::Path) -> BTreeMap<String, Attached> {
    let Ok(text) = std::fs::read_to_string(dir.join(ATTACHED_FILE)) else { return BTreeMap::new() };
    let Ok(serde_json::Value::Object(m)) = serde_json::from_str::<serde_json::Value>(&text) else {
        tracing::warn!(file = ATTACHED_FILE, "unreadable; containers that died while the router was down may keep their addresses");
        return BTreeMap::new();
    };
    m.into_iter()
        .map(|(id, v)| {
            let netns = v["netns"].as_str().map(str::to_owned);
            let ifname = v["ifname"].as_str().filter(|i| netlink::valid_ifname(i)).unwrap_or("ethwe").to_owned();
            let dns = v["dns"].as_bool().unwrap_or(false);
            let hostname = v["hostname"].as_str().filter(|h| !h.is_empty() && h.len() <= 253).map(str::to_owned);
            (id, Attached { netns, ifname, dns, hostname })
        })
        .collect()
}

/// Release containers whose veth goes, as links change.
pub(super) async fn follow_links(router: std::sync::Weak<Router>, mut changes: netlink::Changes) {
    loop {
        if let Err(e) = changes.next().await {
            tracing::error!(error = %e, "link notifications failed; dead containers are no longer released");
            return;
        }
        let Some(r) = router.upgrade() else { return };
        r.sweep().await;
    }
}

#[cfg(test)]
mod host_end_tests {
    use super::HostEndRecord;

    #[test]
    fn a_host_end_record_reads_back_and_garbage_is_refused() {
        let r = HostEndRecord { id: "cni:weave/0123abcd/eth0".into(), cidrs: vec!["10.32.0.1/12".parse().unwrap(), "10.2.2.7/24".parse().unwrap()] };
        let text = r.to_string();
        assert_eq!(text, "weave/1 10.32.0.1/12,10.2.2.7/24 cni:weave/0123abcd/eth0");
        assert_eq!(text.parse::<HostEndRecord>(), Ok(r));
        // An id with spaces (a path) is kept whole.
        assert_eq!("weave/1 10.32.0.1/12 /run/my ns".parse::<HostEndRecord>().unwrap().id, "/run/my ns");
        for bad in ["", "weave/1", "weave/1 10.32.0.1/12", "weave/1  c1", "weave/2 10.32.0.1/12 c1", "weave/1 10.32.0.300/12 c1", "someone else's alias"] {
            assert!(bad.parse::<HostEndRecord>().is_err(), "{bad:?}");
        }
    }
}
