//! The CNI adapter: ADD, DEL, CHECK and GC for the plugin binary.

#[allow(unused_imports)]
use super::*;

/// The prefix of CNI attachments' ids: `cni:NETWORK/CONTAINERID/IFNAME`.
pub const CNI_PREFIX: &str = "cni:";

/// A CNI call: which attachment, and for ADD how.
#[derive(Debug, Clone, Copy)]
pub struct CniCall<'a> {
    /// The network configuration's `name`: GC works within it.
    pub network: &'a str,
    /// `CNI_CONTAINERID`.
    pub container_id: &'a str,
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
    /// `CNI_NETNS` (a path; may be empty for DEL).
    pub netns: &'a str,
    /// Allocate here (the default subnet if None).
    pub subnet: Option<Ipv4Net>,
    /// Hairpin mode on the bridge port.
    pub hairpin: bool,
    /// weave-ipam: addresses only; the interface is another plugin's.
    pub ipam_only: bool,
    /// A DNS name (the pod's).
    pub hostname: Option<&'a str>,
}

impl CniCall<'_> {
    /// The IPAM (and DNS) id of the attachment.
    pub fn id(&self) -> String {
        format!("{CNI_PREFIX}{}/{}/{}", self.network, self.container_id, self.ifname)
    }
}

/// What a CNI attachment has.
#[derive(Debug, Clone, Default)]
pub struct CniAttachment {
    /// Its addresses.
    pub cidrs: Vec<Ipv4Net>,
    /// The bridge's address in its subnet (its default route).
    pub gateway: Option<Ipv4Addr>,
    /// The host end of its veth.
    pub host_ifname: String,
    /// The host end's MAC.
    pub host_mac: Option<[u8; 6]>,
    /// The container interface's MAC, if it exists.
    pub mac: Option<[u8; 6]>,
}

impl Router {
    /// The host's address on the bridge for `spec` (exactly that
    /// address, or one in exactly that subnet), exposed with masquerade
    /// if there is none yet: the gateway of CNI containers and of the
    /// Docker plugin's networks. Returns it and whether it was exposed
    /// just now.
    pub async fn gateway_for(&self, spec: AddrSpec) -> Result<(Ipv4Addr, bool), RouterError> {
        let (exposed, _) = self.exposed().await?;
        let present = exposed.iter().find(|a| match spec {
            AddrSpec::Exact(n) => a.addr() == n.addr(),
            AddrSpec::Subnet(s) => a.trunc() == s,
            AddrSpec::Default => false,
        });
        if let Some(a) = present {
            return Ok((a.addr(), false));
        }
        let e = self.expose(std::slice::from_ref(&spec), true).await?;
        e.first().map(|a| (a.addr(), true)).ok_or_else(|| RouterError::Invalid(format!("no gateway address for {spec}")))
    }

    /// Whether a CNI attachment has an address in `subnet` (so its
    /// gateway must stay).
    pub async fn cni_uses(&self, subnet: Ipv4Net) -> bool {
        self.owned().await.iter().any(|(id, cidrs)| id.starts_with(CNI_PREFIX) && cidrs.iter().any(|c| c.trunc() == subnet))
    }

    fn cni_netns(netns: &str) -> Result<Netns, RouterError> {
        if netns.is_empty() {
            return Err(RouterError::Invalid("CNI_NETNS is required".into()));
        }
        if !std::path::Path::new(netns).exists() {
            return Err(RouterError::NotFound(format!("network namespace {netns} does not exist")));
        }
        Ok(Netns::at(netns))
    }

    /// CNI ADD: `ifname` in the namespace at `netns`, an address from
    /// `subnet` (default subnet if None), a default route through the
    /// bridge's address in that subnet, hairpin mode as asked. With
    /// `ipam_only`, just the address (weave-ipam). Idempotent.
    pub async fn cni_add(&self, call: &CniCall<'_>) -> Result<CniAttachment, RouterError> {
        let id = call.id();
        let _busy = self.busy(&id).await;
        let spec = call.subnet.map_or(AddrSpec::Default, AddrSpec::Subnet);
        let ns = if call.ipam_only { None } else { Some(Self::cni_netns(call.netns)?) };
        let cidrs = match &ns {
            None => vec![self.allocate(&id, &spec).await?],
            Some(ns) => {
                let t = Target { id: id.clone(), name: call.container_id.to_owned(), netns: Some(ns.clone()), docker: None };
                self.attach_target(&t, &[spec], false, call.ifname, call.hairpin).await?
            }
        };
        if let (Some(h), Some(_)) = (call.hostname.filter(|h| !h.is_empty()), &self.dns) {
            let name = self.dns_name(h, None).unwrap_or_default();
            self.dns_add(&id, &name, &cidrs.iter().map(Ipv4Net::addr).collect::<Vec<_>>()).await?;
        }
        let Some(ns) = ns else { return Ok(CniAttachment { cidrs, ..CniAttachment::default() }) };
        let (gateway, _) = self.gateway_for(AddrSpec::Subnet(cidrs[0].trunc())).await?;
        let c = Netlink::connect(&ns).await?;
        let link = c.link(call.ifname).await?.ok_or_else(|| RouterError::NotFound(format!("{} vanished from {}", call.ifname, call.netns)))?;
        c.add_default_route(link.index, gateway).await?;
        let (host_ifname, host_mac) = self.host_end(&id).await?;
        Ok(CniAttachment { cidrs, gateway: Some(gateway), host_ifname, host_mac, mac: Some(link.mac) })
    }

    async fn host_end(&self, id: &str) -> Result<(String, Option<[u8; 6]>), RouterError> {
        let name = netlink::host_ifname(id);
        let mac = self.nl.link(&name).await?.map(|l| l.mac);
        Ok((name, mac))
    }

    /// CNI DEL: free what the attachment held and, unless `ipam_only`
    /// (the interface is another plugin's), remove its interface. Nothing
    /// there, or no namespace any more, is not an error.
    pub async fn cni_del(&self, call: &CniCall<'_>) -> Result<(), RouterError> {
        let id = call.id();
        let _busy = self.busy(&id).await;
        let netns = (!call.ipam_only && !call.netns.is_empty() && std::path::Path::new(call.netns).exists()).then(|| Netns::at(call.netns));
        let t = Target { id: id.clone(), name: call.container_id.to_owned(), netns, docker: None };
        if let Err(e) = self.detach_target(&t, call.ifname, &[]).await {
            // A namespace file that is no longer a namespace: free anyway.
            tracing::info!(attachment = %id, error = %e, "CNI DEL: the interface could not be reached; freeing its addresses");
            self.release(&id).await;
        }
        if !call.ipam_only {
            // Without the namespace the pair is gone already; with a stale
            // one left, its host end goes here.
            self.nl.delete(&netlink::host_ifname(&id)).await?;
        }
        self.forget_lock(&id);
        Ok(())
    }

    /// CNI CHECK: the attachment's addresses, which must all be on its
    /// interface (unless `ipam_only`).
    pub async fn cni_check(&self, call: &CniCall<'_>) -> Result<CniAttachment, RouterError> {
        let id = call.id();
        let owned = self.owned_by(&id).await;
        if owned.is_empty() {
            return Err(RouterError::NotFound(format!("no addresses are held for {}/{}", call.container_id, call.ifname)));
        }
        if call.ipam_only {
            return Ok(CniAttachment { cidrs: owned, ..CniAttachment::default() });
        }
        let c = Netlink::connect(&Self::cni_netns(call.netns)?).await?;
        let link = c.link(call.ifname).await?.ok_or_else(|| RouterError::NotFound(format!("{} does not exist in {}", call.ifname, call.netns)))?;
        let on = c.addresses(link.index).await?;
        if let Some(missing) = owned.iter().find(|o| !on.contains(&IpNet::V4(**o))) {
            return Err(RouterError::Mismatch(format!("{missing} is not on {}", call.ifname)));
        }
        let (host_ifname, host_mac) = self.host_end(&id).await?;
        if host_mac.is_none() {
            return Err(RouterError::Mismatch(format!("the host end {host_ifname} of {} is missing", call.ifname)));
        }
        let gateway = self.exposed().await?.0.into_iter().find(|e| e.trunc() == owned[0].trunc()).map(|e| e.addr());
        Ok(CniAttachment { cidrs: owned, gateway, host_ifname, host_mac, mac: Some(link.mac) })
    }

    /// CNI GC for `network`: free what every attachment of it not in
    /// `valid` (as "CONTAINERID/IFNAME") holds. Returns those released.
    pub async fn cni_gc(&self, network: &str, valid: &std::collections::BTreeSet<String>) -> Result<Vec<String>, RouterError> {
        let prefix = format!("{CNI_PREFIX}{network}/");
        let stale: Vec<String> =
            self.owned().await.into_keys().filter_map(|k| k.strip_prefix(&prefix).map(str::to_owned)).filter(|k| !valid.contains(k)).collect();
        for a in &stale {
            let id = format!("{prefix}{a}");
            self.release(&id).await;
            self.nl.delete(&netlink::host_ifname(&id)).await?;
        }
        Ok(stale)
    }
}
