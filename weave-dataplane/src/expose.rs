//! `weave expose` / `weave hide`: a host address on the bridge, so the host
//! reaches containers in that subnet, with masquerading (nftables, table
//! `ip weave`) so containers reach the outside through the host and the
//! host's traffic into the subnet comes from an address containers answer.
//!
//! Rules carry a comment naming the subnet they were made for; hiding
//! deletes exactly those. [`reset`] removes the table, the bridge, the VXLAN
//! device and every container link the router made.
//!
//! Rules are applied through the nftables JSON API (the `nftables` crate
//! driving `nft -j`), inside the router's namespace.

use std::borrow::Cow;

use ipnet::IpNet;
use nftables::batch::Batch;
use nftables::expr::{Expression, NamedExpression, Payload, PayloadField, Prefix};
use nftables::schema::{NfListObject, NfObject, Rule, Table};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainType, NfFamily, NfHook};

use crate::netlink::{Netlink, Netns};
use crate::PlumbError;

/// The nftables table the router owns.
pub const TABLE: &str = "weave";
const CHAIN: &str = "postrouting";

fn nft_err(op: &str) -> impl FnOnce(nftables::helper::NftablesError) -> PlumbError + '_ {
    move |e| PlumbError { op: op.to_owned(), source: std::io::Error::other(e.to_string()) }
}

fn tag(subnet: IpNet) -> String {
    format!("weave-expose {subnet}")
}

pub(crate) fn field(protocol: &'static str, name: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(PayloadField { protocol: Cow::Borrowed(protocol), field: Cow::Borrowed(name) })))
}

pub(crate) fn prefix(net: IpNet) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(Expression::String(Cow::Owned(net.network().to_string()))),
        len: u32::from(net.prefix_len()),
    }))
}

fn rule(subnet: IpNet, src_in: bool) -> Rule<'static> {
    let (src_op, dst_op) = if src_in { (Operator::EQ, Operator::NEQ) } else { (Operator::NEQ, Operator::EQ) };
    Rule {
        family: NfFamily::IP,
        table: Cow::Borrowed(TABLE),
        chain: Cow::Borrowed(CHAIN),
        expr: Cow::Owned(vec![
            Statement::Match(Match { left: field("ip", "saddr"), right: prefix(subnet), op: src_op }),
            Statement::Match(Match { left: field("ip", "daddr"), right: prefix(subnet), op: dst_op }),
            Statement::Masquerade(None),
        ]),
        comment: Some(Cow::Owned(tag(subnet))),
        ..Rule::default()
    }
}

/// Rules in our table made for `subnet` (their handles).
fn rules_for(subnet: IpNet) -> Result<Vec<u32>, PlumbError> {
    // No table: no rules.
    let Ok(current) = nftables::helper::get_current_ruleset_with_args(nftables::helper::DEFAULT_NFT, ["list", "table", "ip", TABLE]) else {
        return Ok(Vec::new());
    };
    let want = tag(subnet);
    Ok(current
        .objects
        .iter()
        .filter_map(|o| match o {
            NfObject::ListObject(NfListObject::Rule(r)) if r.comment.as_deref() == Some(want.as_str()) => r.handle,
            _ => None,
        })
        .collect())
}

fn apply_masquerade(subnet: IpNet) -> Result<(), PlumbError> {
    if !rules_for(subnet)?.is_empty() {
        return Ok(());
    }
    let mut b = Batch::new();
    crate::firewall::add_base_chain(&mut b, NfFamily::IP, TABLE, CHAIN, NfChainType::NAT, NfHook::Postrouting, 100);
    b.add(NfListObject::Rule(rule(subnet, false)));
    b.add(NfListObject::Rule(rule(subnet, true)));
    nftables::helper::apply_ruleset(&b.to_nftables()).map_err(nft_err("add masquerade rules"))
}

fn remove_masquerade(subnet: IpNet) -> Result<(), PlumbError> {
    let handles = rules_for(subnet)?;
    if handles.is_empty() {
        return Ok(());
    }
    let mut b = Batch::new();
    for h in handles {
        b.delete(NfListObject::Rule(Rule {
            family: NfFamily::IP,
            table: Cow::Borrowed(TABLE),
            chain: Cow::Borrowed(CHAIN),
            handle: Some(h),
            ..Rule::default()
        }));
    }
    nftables::helper::apply_ruleset(&b.to_nftables()).map_err(nft_err("delete masquerade rules"))
}

/// Put `addr` (a host address with the subnet's prefix) on the bridge and,
/// unless `masquerade` is false, masquerade traffic leaving or entering the
/// subnet. Idempotent.
pub async fn expose(nl: &Netlink, bridge: &str, addr: IpNet, masquerade: bool) -> Result<(), PlumbError> {
    let b = nl.link(bridge).await?.ok_or_else(|| PlumbError {
        op: format!("expose {addr}"),
        source: std::io::Error::other(format!("bridge {bridge} does not exist (is the router running?)")),
    })?;
    nl.add_address(b.index, addr).await?;
    if masquerade {
        let subnet = addr.trunc();
        nl.netns()
            .run(move || apply_masquerade(subnet).map_err(|e| std::io::Error::other(e.to_string())))
            .map_err(|source| PlumbError { op: format!("masquerade {subnet}"), source })?;
    }
    forward_into_exposed(nl, bridge)
}

/// The host firewall's accepts follow what is exposed ([`crate::firewall`]).
fn forward_into_exposed(nl: &Netlink, bridge: &str) -> Result<(), PlumbError> {
    let b = bridge.to_owned();
    nl.netns().run(move || crate::firewall::allow(&b)).map(drop).map_err(|source| PlumbError { op: "allow forwarding into exposed subnets".into(), source })?;
    let b = bridge.to_owned();
    nl.netns()
        .run(move || crate::firewall::refresh_guard(&b))
        .map(drop)
        .map_err(|source| PlumbError { op: "let the host reach exposed subnets".into(), source })
}

/// Undo [`expose`]: the address and its rules go. Idempotent.
pub async fn hide(nl: &Netlink, bridge: &str, addr: IpNet) -> Result<(), PlumbError> {
    if let Some(b) = nl.link(bridge).await? {
        nl.del_address(b.index, addr).await?;
    }
    let subnet = addr.trunc();
    if exposed(nl, bridge).await?.iter().any(|a| a.trunc() == subnet) {
        // Another exposed address still needs the subnet's rules.
        return Ok(());
    }
    nl.netns()
        .run(move || remove_masquerade(subnet).map_err(|e| std::io::Error::other(e.to_string())))
        .map_err(|source| PlumbError { op: format!("unmasquerade {subnet}"), source })?;
    forward_into_exposed(nl, bridge)
}

/// Addresses exposed on the bridge (link-local ones, such as the kernel's
/// IPv6 address or a DNS server's, are not exposure).
pub async fn exposed(nl: &Netlink, bridge: &str) -> Result<Vec<IpNet>, PlumbError> {
    match nl.link(bridge).await? {
        Some(b) => Ok(nl
            .addresses(b.index)
            .await?
            .into_iter()
            .filter(|a| match a {
                IpNet::V6(v) => v.addr().segments()[0] & 0xffc0 != 0xfe80,
                IpNet::V4(v) => !v.addr().is_link_local(),
            })
            .collect()),
        None => Ok(Vec::new()),
    }
}

/// Remove everything the router made in this namespace: container links
/// on the bridge (their container ends go with them), the VXLAN device,
/// the bridge, the nftables table and the forwarding rules
/// ([`crate::firewall`]). Returns what was removed.
pub async fn reset(nl: &Netlink, bridge: &str) -> Result<Vec<String>, PlumbError> {
    let mut removed = Vec::new();
    if let Some(b) = nl.link(bridge).await? {
        for (name, _) in nl.ports(b.index).await? {
            if name.starts_with("vethwe") && nl.delete(&name).await? {
                removed.push(name);
            }
        }
    }
    for name in [crate::fastpath::VXLAN_NAME, bridge] {
        if nl.delete(name).await? {
            removed.push(name.to_owned());
        }
    }
    let ns: Netns = nl.netns().clone();
    let had_table = ns
        .run(|| {
            if nftables::helper::get_current_ruleset_with_args(nftables::helper::DEFAULT_NFT, ["list", "table", "ip", TABLE]).is_err() {
                return Ok(false);
            }
            let mut b = Batch::new();
            b.delete(NfListObject::Table(Table { family: NfFamily::IP, name: Cow::Borrowed(TABLE), handle: None }));
            nftables::helper::apply_ruleset(&b.to_nftables()).map_err(|e| std::io::Error::other(e.to_string()))?;
            Ok(true)
        })
        .map_err(|source| PlumbError { op: "delete nftables table".into(), source })?;
    if had_table {
        removed.push(format!("nftables table ip {TABLE}"));
    }
    let b = bridge.to_owned();
    let unfirewalled = ns.run(move || crate::firewall::withdraw(&b)).map_err(|source| PlumbError { op: "remove forwarding rules".into(), source })?;
    removed.extend(unfirewalled.into_iter().map(|c| format!("forwarding rules in {c}")));
    if ns.run(crate::firewall::withdraw_vxlan).map_err(|source| PlumbError { op: "remove the VXLAN guard".into(), source })? {
        removed.push("nftables table inet weave-fastdp".into());
    }
    if ns.run(crate::firewall::withdraw_guard).map_err(|source| PlumbError { op: "remove the router-port guard".into(), source })? {
        removed.push("nftables table inet weave-guard".into());
    }
    Ok(removed)
}
