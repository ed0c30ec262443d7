//! Forwarding through the bridge on hosts whose firewall drops it.
//!
//! On a Docker host the `FORWARD` chain's policy is `drop`, and with
//! `br_netfilter` loaded (`net.bridge.bridge-nf-call-iptables = 1`) frames
//! bridged between two ports of `weave` pass that chain too: two containers
//! on one host, or a container and the sleeve's TAP, cannot talk. An accept
//! in a table of our own does not help (every base chain on the hook must
//! accept), so, as Weave Net does, the router puts its accepts into each
//! base chain on the forward hook whose policy is drop (iptables-nft's
//! `filter FORWARD`, ufw's, an administrator's), at the top:
//!
//! - `iifname BRIDGE oifname BRIDGE accept`: between containers, and between
//!   containers and the sleeve or fast path;
//! - `iifname BRIDGE oifname != BRIDGE accept`: containers out through the
//!   host (with `weave expose`'s masquerading);
//! - `oifname BRIDGE meta mark & MARK == MARK accept`: the replies.
//!
//! Those chains are usually iptables-nft's, and iptables-nft 1.8 cannot
//! read a native `ct state` match (one would make `iptables -S FORWARD`,
//! hence dockerd, fail on the whole chain); so the conntrack test lives in
//! a table of our own (`inet weave`, chain `forward`, just before the
//! filter priority), which marks replies headed into the bridge with
//! [`REPLY_MARK`], and the rule in the foreign chain only reads the mark.
//! Every rule here is one iptables-nft can list.
//!
//! Each rule carries the comment `weave-forward BRIDGE`, which is how
//! [`withdraw`] finds exactly ours. Rules are applied through the nftables
//! JSON API (the `nftables` crate driving `nft -j`); call these inside the
//! router's namespace (`Netns::run`). A firewall that starts after the
//! router (dockerd at boot) is caught by [`follow`], which applies them
//! again whenever the ruleset changes.

use std::borrow::Cow;
use std::io;

use ipnet::{IpNet, Ipv4Net};

use nftables::batch::Batch;
use nftables::expr::{BinaryOperation, Expression, Meta, MetaKey, NamedExpression, CT};
use nftables::schema::{Chain, NfCmd, NfListObject, NfObject, Rule, Table};
use nftables::stmt::{Mangle, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

/// The packet mark (one bit) our own chain sets on replies headed into the
/// bridge, for the accept in the host's forward chains to read.
pub const REPLY_MARK: u32 = 0x0004_0000;

/// Our own table (family `inet`) and its chain that marks replies.
const TABLE: &str = "weave";
const MARK_CHAIN: &str = "forward";

fn tag(bridge: &str) -> String {
    format!("weave-forward {bridge}")
}

/// nft's own words, when it has any.
pub(crate) fn nft_io(e: nftables::helper::NftablesError) -> io::Error {
    match e {
        nftables::helper::NftablesError::NftFailed { ref stderr, .. } if !stderr.trim().is_empty() => io::Error::other(format!("{e}: {}", stderr.trim())),
        e => io::Error::other(e.to_string()),
    }
}

/// Each change reads the ruleset, then writes it: two at once (the
/// follower and `weave expose`) would delete each other's handles.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The families whose forward hook sees bridged frames (br_netfilter).
const FAMILIES: [NfFamily; 3] = [NfFamily::IP, NfFamily::IP6, NfFamily::INet];

fn family_arg(f: NfFamily) -> &'static str {
    match f {
        NfFamily::IP => "ip",
        NfFamily::IP6 => "ip6",
        _ => "inet",
    }
}

/// Base chains on the forward hook, with whether their policy is drop.
fn forward_chains() -> io::Result<Vec<(Chain<'static>, bool)>> {
    let mut out = Vec::new();
    for family in FAMILIES {
        let listed = nftables::helper::get_current_ruleset_with_args(nftables::helper::DEFAULT_NFT, ["list", "chains", family_arg(family)]).map_err(nft_io)?;
        for o in listed.objects.into_owned() {
            if let NfObject::ListObject(NfListObject::Chain(c)) = o {
                if c.hook == Some(NfHook::Forward) && c.table != TABLE {
                    let drops = c.policy == Some(NfChainPolicy::Drop);
                    out.push((c, drops));
                }
            }
        }
    }
    Ok(out)
}

/// The rules in `chain` made for `bridge`: (handle, comment).
fn ours(chain: &Chain<'_>, bridge: &str) -> io::Result<Vec<(u32, String)>> {
    let listed =
        nftables::helper::get_current_ruleset_with_args(nftables::helper::DEFAULT_NFT, ["list", "chain", family_arg(chain.family), &chain.table, &chain.name])
            .map_err(nft_io)?;
    let base = tag(bridge);
    Ok(listed
        .objects
        .iter()
        .filter_map(|o| match o {
            NfObject::ListObject(NfListObject::Rule(r)) => {
                let c = r.comment.as_deref()?;
                (c == base || c.strip_prefix(base.as_str()).is_some_and(|rest| rest.starts_with(' '))).then_some((r.handle?, c.to_owned()))
            }
            _ => None,
        })
        .collect())
}

/// The IPv4 subnets exposed on `bridge` (`weave expose`), from the
/// interface addresses of the calling thread's namespace.
fn exposed(bridge: &str) -> io::Result<Vec<Ipv4Net>> {
    let mut out = Vec::new();
    for a in nix::ifaddrs::getifaddrs().map_err(io::Error::from)? {
        if a.interface_name != bridge {
            continue;
        }
        let (Some(addr), Some(mask)) = (a.address.as_ref().and_then(|x| x.as_sockaddr_in()), a.netmask.as_ref().and_then(|x| x.as_sockaddr_in())) else {
            continue;
        };
        let Ok(net) = Ipv4Net::with_netmask(addr.ip(), mask.ip()) else { continue };
        if !net.addr().is_link_local() && !out.contains(&net.trunc()) {
            out.push(net.trunc());
        }
    }
    Ok(out)
}

fn ifname(key: MetaKey, op: Operator, bridge: &str) -> Statement<'static> {
    Statement::Match(Match { left: Expression::Named(NamedExpression::Meta(Meta { key })), right: Expression::String(Cow::Owned(bridge.to_owned())), op })
}

/// Our accepts, in the order they should stand in the chain: the three
/// for the bridge, then one per exposed subnet (`oifname BRIDGE ip daddr
/// SUBNET accept`, tagged `weave-forward BRIDGE SUBNET`: as Weave's
/// `WEAVE-EXPOSE`, the host forwards into what it exposes, e.g. to a
/// published port).
fn rules(chain: &Chain<'_>, bridge: &str, exposed: &[Ipv4Net]) -> Vec<Rule<'static>> {
    let rule = |expr: Vec<Statement<'static>>, comment: String| Rule {
        family: chain.family,
        table: Cow::Owned(chain.table.to_string()),
        chain: Cow::Owned(chain.name.to_string()),
        expr: Cow::Owned(expr),
        comment: Some(Cow::Owned(comment)),
        ..Rule::default()
    };
    let marked = Statement::Match(Match {
        left: Expression::BinaryOperation(Box::new(BinaryOperation::AND(mark(), Expression::Number(REPLY_MARK)))),
        right: Expression::Number(REPLY_MARK),
        op: Operator::EQ,
    });
    let mut out = vec![
        rule(vec![ifname(MetaKey::Iifname, Operator::EQ, bridge), ifname(MetaKey::Oifname, Operator::EQ, bridge), Statement::Accept(None)], tag(bridge)),
        rule(vec![ifname(MetaKey::Iifname, Operator::EQ, bridge), ifname(MetaKey::Oifname, Operator::NEQ, bridge), Statement::Accept(None)], tag(bridge)),
        rule(vec![ifname(MetaKey::Oifname, Operator::EQ, bridge), marked, Statement::Accept(None)], tag(bridge)),
    ];
    if chain.family != NfFamily::IP6 {
        for &net in exposed {
            let to = Statement::Match(Match { left: crate::expose::field("ip", "daddr"), right: crate::expose::prefix(IpNet::V4(net)), op: Operator::EQ });
            out.push(rule(vec![ifname(MetaKey::Oifname, Operator::EQ, bridge), to, Statement::Accept(None)], format!("{} {net}", tag(bridge))));
        }
    }
    out
}

fn mark() -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key: MetaKey::Mark }))
}

/// Our table and its marking chain (policy accept: it drops nothing), with
/// `oifname BRIDGE ct state established,related meta mark set mark | MARK`.
fn add_marking(bridge: &str, b: &mut Batch<'static>) {
    // Before the filter priority (0), where the host's chains stand.
    add_base_chain(b, NfFamily::INet, TABLE, MARK_CHAIN, NfChainType::Filter, NfHook::Forward, -10);
    b.add(NfListObject::Rule(Rule {
        family: NfFamily::INet,
        table: Cow::Borrowed(TABLE),
        chain: Cow::Borrowed(MARK_CHAIN),
        expr: Cow::Owned(vec![
            ifname(MetaKey::Oifname, Operator::EQ, bridge),
            Statement::Match(Match {
                left: Expression::Named(NamedExpression::CT(CT { key: Cow::Borrowed("state"), family: None, dir: None })),
                right: Expression::List(vec![Expression::String(Cow::Borrowed("established")), Expression::String(Cow::Borrowed("related"))]),
                op: Operator::IN,
            }),
            Statement::Mangle(Mangle {
                key: mark(),
                value: Expression::BinaryOperation(Box::new(BinaryOperation::OR(vec![mark(), Expression::Number(REPLY_MARK)]))),
            }),
        ]),
        comment: Some(Cow::Owned(tag(bridge))),
        ..Rule::default()
    }));
}

/// Whether our marking chain exists (with a rule for `bridge`).
fn marking_in_place(bridge: &str) -> bool {
    let chain = Chain { family: NfFamily::INet, table: Cow::Borrowed(TABLE), name: Cow::Borrowed(MARK_CHAIN), ..Chain::default() };
    ours(&chain, bridge).is_ok_and(|h| !h.is_empty())
}

fn delete(chain: &Chain<'_>, handles: impl IntoIterator<Item = u32>, b: &mut Batch<'static>) {
    for h in handles {
        b.delete(NfListObject::Rule(Rule {
            family: chain.family,
            table: Cow::Owned(chain.table.to_string()),
            chain: Cow::Owned(chain.name.to_string()),
            handle: Some(h),
            ..Rule::default()
        }));
    }
}

/// Let frames through `bridge` in every forward chain that drops by
/// default, and into the subnets exposed on it. Idempotent: a chain that
/// already has exactly our rules is left alone (a partial or outdated set
/// is replaced). Returns the chains changed, as `family table chain`.
pub fn allow(bridge: &str) -> io::Result<Vec<String>> {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let exposed = exposed(bridge)?;
    let mut changed = Vec::new();
    let mut b = Batch::new();
    let mut drop_chains = 0;
    for (chain, drops) in forward_chains()? {
        if !drops {
            continue;
        }
        drop_chains += 1;
        let have = ours(&chain, bridge)?;
        let want = rules(&chain, bridge, &exposed);
        let mut have_tags: Vec<&str> = have.iter().map(|(_, c)| c.as_str()).collect();
        let mut want_tags: Vec<&str> = want.iter().filter_map(|r| r.comment.as_deref()).collect();
        have_tags.sort_unstable();
        want_tags.sort_unstable();
        if have_tags == want_tags {
            continue;
        }
        delete(&chain, have.iter().map(|(h, _)| *h), &mut b);
        // Each insert goes to the top: the last one inserted stands first.
        for r in want.into_iter().rev() {
            b.add_cmd(NfCmd::Insert(NfListObject::Rule(r)));
        }
        changed.push(format!("{} {} {}", family_arg(chain.family), chain.table, chain.name));
    }
    // A host whose firewall drops nothing is left as it is.
    if drop_chains > 0 && !marking_in_place(bridge) {
        // Whatever is left of it goes first.
        let mut fresh = Batch::new();
        if inet_table_exists(TABLE) {
            fresh.delete(inet_table(TABLE));
        }
        add_marking(bridge, &mut fresh);
        fresh.add_all(b.to_nftables().objects.into_owned());
        b = fresh;
        changed.insert(0, format!("inet {TABLE} {MARK_CHAIN}"));
    }
    if !changed.is_empty() {
        nftables::helper::apply_ruleset(&b.to_nftables()).map_err(nft_io)?;
    }
    Ok(changed)
}

/// Remove every rule [`allow`] made for `bridge`, from whichever forward
/// chain holds them. Returns the chains changed.
pub fn withdraw(bridge: &str) -> io::Result<Vec<String>> {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut changed = Vec::new();
    let mut b = Batch::new();
    for (chain, _) in forward_chains()? {
        let have = ours(&chain, bridge)?;
        if !have.is_empty() {
            delete(&chain, have.into_iter().map(|(h, _)| h), &mut b);
            changed.push(format!("{} {} {}", family_arg(chain.family), chain.table, chain.name));
        }
    }
    if inet_table_exists(TABLE) {
        b.delete(inet_table(TABLE));
        changed.push(format!("inet {TABLE}"));
    }
    if !changed.is_empty() {
        nftables::helper::apply_ruleset(&b.to_nftables()).map_err(nft_io)?;
    }
    Ok(changed)
}

/// One of our `inet` tables, as an object to add or delete.
fn inet_table(name: &'static str) -> NfListObject<'static> {
    NfListObject::Table(Table { family: NfFamily::INet, name: Cow::Borrowed(name), handle: None })
}

fn inet_table_exists(name: &str) -> bool {
    nftables::helper::get_current_ruleset_with_args(nftables::helper::DEFAULT_NFT, ["list", "table", "inet", name]).is_ok()
}

/// Add `table` (family `family`) and in it a base chain on `hook` at
/// `prio`: the shape every table of ours starts with.
pub(crate) fn add_base_chain(b: &mut Batch<'static>, family: NfFamily, table: &'static str, chain: &'static str, kind: NfChainType, hook: NfHook, prio: i32) {
    b.add(NfListObject::Table(Table { family, name: Cow::Borrowed(table), handle: None }));
    b.add(NfListObject::Chain(Chain {
        family,
        table: Cow::Borrowed(table),
        name: Cow::Borrowed(chain),
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        // Only the host's chains drop by default; ours never do.
        policy: (kind == NfChainType::Filter).then_some(NfChainPolicy::Accept),
        ..Chain::default()
    }));
}

/// Keep [`allow`]'s rules in place for as long as the returned task runs:
/// applied now, and again after every change to the ruleset (a firewall or
/// dockerd that starts, restarts or flushes after the router). Runs each
/// `nft` call inside `ns`.
pub fn follow(ns: crate::netlink::Netns, bridge: String, port: u16) -> io::Result<tokio::task::JoinHandle<()>> {
    let mut changes = crate::netlink::Changes::nftables(&ns)?;
    fn apply(ns: &crate::netlink::Netns, bridge: &str, port: u16) {
        let b = bridge.to_owned();
        match ns.run(move || allow(&b)) {
            Ok(changed) if !changed.is_empty() => tracing::info!(bridge, ?changed, "forwarding allowed through the bridge in the host firewall"),
            Ok(_) => {}
            Err(e) => tracing::warn!(bridge, error = %e, "cannot allow forwarding through the bridge in the host firewall"),
        }
        match ns.run(restore_vxlan) {
            Ok(true) => tracing::warn!("the VXLAN guard was removed: put back"),
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "cannot put back the VXLAN guard"),
        }
        let b = bridge.to_owned();
        match ns.run(move || guard(&b, port)) {
            Ok(true) => tracing::info!(bridge, port, "containers kept away from the router's ports, the host from unexposed containers"),
            Ok(false) => {}
            Err(e) => tracing::error!(bridge, error = %e, "cannot guard the router's ports from containers"),
        }
    }
    apply(&ns, &bridge, port);
    Ok(tokio::spawn(async move {
        loop {
            if let Err(e) = changes.next().await {
                tracing::warn!(error = %e, "ruleset notifications failed; no longer following the firewall");
                return;
            }
            let (ns, bridge) = (ns.clone(), bridge.clone());
            let _ = tokio::task::spawn_blocking(move || apply(&ns, &bridge, port)).await;
        }
    }))
}

/// Our table keeping the bridge's containers and the host apart (family
/// `inet`).
const GUARD_TABLE: &str = "weave-guard";

/// Keep containers on `bridge` away from the router, and the host away from
/// containers it has not exposed (as Weave's `INPUT` drops for its ports
/// and its "no host access before expose"): nothing arriving from the
/// bridge reaches TCP or UDP `port` or `port + 1` (control, sleeve, fast
/// path, HTTP status) on any host address, nor a loopback address; and the
/// host starts nothing towards a container outside the subnets exposed on
/// the bridge (replies, ICMP errors and multicast still go), nor forwards
/// anything there from another interface (a container on Docker's own
/// bridge would otherwise reach every subnet through it). The table is
/// rebuilt, in one transaction, whenever it does not hold exactly this
/// (removed by someone, or the exposed subnets changed). Returns whether
/// it changed.
pub fn guard(bridge: &str, port: u16) -> io::Result<bool> {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let exposed = exposed(bridge)?;
    let signature = format!("weave-guard {bridge} {port} {}", exposed.iter().map(ToString::to_string).collect::<Vec<_>>().join(","));
    if guard_signature(GUARD_TABLE).as_deref() == Some(signature.as_str()) {
        return Ok(false);
    }
    let mut b = Batch::new();
    if inet_table_exists(GUARD_TABLE) {
        b.delete(inet_table(GUARD_TABLE));
    }
    add_base_chain(&mut b, NfFamily::INet, GUARD_TABLE, "input", NfChainType::Filter, NfHook::Input, -10);
    add_base_chain(&mut b, NfFamily::INet, GUARD_TABLE, "output", NfChainType::Filter, NfHook::Output, -10);
    add_base_chain(&mut b, NfFamily::INet, GUARD_TABLE, "forward", NfChainType::Filter, NfHook::Forward, -10);
    let rule = |chain: &'static str, expr: Vec<Statement<'static>>, comment: &str| {
        NfListObject::Rule(Rule {
            family: NfFamily::INet,
            table: Cow::Borrowed(GUARD_TABLE),
            chain: Cow::Borrowed(chain),
            expr: Cow::Owned(expr),
            comment: Some(Cow::Owned(comment.to_owned())),
            ..Rule::default()
        })
    };
    let port_set = || {
        Expression::Named(NamedExpression::Set(vec![
            nftables::expr::SetItem::Element(Expression::Number(u32::from(port))),
            nftables::expr::SetItem::Element(Expression::Number(u32::from(port) + 1)),
        ]))
    };
    let from_bridge = || ifname(MetaKey::Iifname, Operator::EQ, bridge);
    let to_bridge = || ifname(MetaKey::Oifname, Operator::EQ, bridge);
    // The first rule carries the signature the next call compares with.
    for (i, proto) in ["tcp", "udp"].into_iter().enumerate() {
        let dport = Statement::Match(Match { left: crate::expose::field(proto, "dport"), right: port_set(), op: Operator::EQ });
        let comment = if i == 0 { signature.clone() } else { format!("weave-guard {bridge}: router ports") };
        b.add(rule("input", vec![from_bridge(), dport, counter(), Statement::Drop(None)], &comment));
    }
    let loopback = Statement::Match(Match {
        left: crate::expose::field("ip", "daddr"),
        right: crate::expose::prefix("127.0.0.0/8".parse().expect("valid")),
        op: Operator::EQ,
    });
    b.add(rule("input", vec![from_bridge(), loopback, counter(), Statement::Drop(None)], &format!("weave-guard {bridge}: loopback")));
    let ct_state = Statement::Match(Match {
        left: Expression::Named(NamedExpression::CT(CT { key: Cow::Borrowed("state"), family: None, dir: None })),
        right: Expression::List(vec![Expression::String(Cow::Borrowed("established")), Expression::String(Cow::Borrowed("related"))]),
        op: Operator::IN,
    });
    // What the host sends into the bridge, and what it forwards there from
    // elsewhere (a container on Docker's own bridge, another network): only
    // replies, and what goes to exposed subnets (as Weave's `WEAVE-EXPOSE`
    // and the drop after it). Without the forward rules, a container of
    // another subnet reaches this one through its Docker interface.
    let mut open: Vec<IpNet> = exposed.iter().map(|n| IpNet::V4(*n)).collect();
    open.push("224.0.0.0/4".parse().expect("valid"));
    open.push("255.255.255.255/32".parse().expect("valid"));
    let from_elsewhere = || ifname(MetaKey::Iifname, Operator::NEQ, bridge);
    for (chain, only) in [("output", None), ("forward", Some(from_elsewhere))] {
        let head = |mut rest: Vec<Statement<'static>>| {
            let mut e = vec![to_bridge()];
            e.extend(only.map(|f| f()));
            e.append(&mut rest);
            e
        };
        b.add(rule(chain, head(vec![ct_state.clone(), Statement::Accept(None)]), &format!("weave-guard {bridge}: replies")));
        for &net in &open {
            let to = Statement::Match(Match { left: crate::expose::field("ip", "daddr"), right: crate::expose::prefix(net), op: Operator::EQ });
            b.add(rule(chain, head(vec![to, Statement::Accept(None)]), &format!("weave-guard {bridge}: {net}")));
        }
        let v4 = Statement::Match(Match {
            left: Expression::Named(NamedExpression::Meta(Meta { key: MetaKey::Nfproto })),
            right: Expression::String(Cow::Borrowed("ipv4")),
            op: Operator::EQ,
        });
        b.add(rule(chain, head(vec![v4, counter(), Statement::Drop(None)]), &format!("weave-guard {bridge}: not exposed")));
    }
    nftables::helper::apply_ruleset(&b.to_nftables()).map_err(nft_io)?;
    Ok(true)
}

/// Counts what a drop rule drops (`nft list table inet weave-guard`).
fn counter() -> Statement<'static> {
    Statement::Counter(nftables::stmt::Counter::Anonymous(None))
}

/// The signature comment of our guard table, if it is there whole.
fn guard_signature(table: &str) -> Option<String> {
    let listed = nftables::helper::get_current_ruleset_with_args(nftables::helper::DEFAULT_NFT, ["list", "table", "inet", table]).ok()?;
    let mut rules = 0;
    let mut sig = None;
    for o in listed.objects.iter() {
        if let NfObject::ListObject(NfListObject::Rule(r)) = o {
            rules += 1;
            if let Some(c) = r.comment.as_deref().filter(|c| c.starts_with("weave-guard ") && !c.contains(':')) {
                sig = Some(c.to_owned());
            }
        }
    }
    // A table someone emptied or trimmed is rebuilt.
    (rules >= 5).then_some(sig).flatten()
}

/// Remove [`guard`]'s table (reset). Returns whether there was one.
pub fn withdraw_guard() -> io::Result<bool> {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    delete_inet_table(GUARD_TABLE)
}

/// Delete one of our `inet` tables, if it is there. Returns whether it was.
fn delete_inet_table(name: &'static str) -> io::Result<bool> {
    if !inet_table_exists(name) {
        return Ok(false);
    }
    let mut b = Batch::new();
    b.delete(inet_table(name));
    nftables::helper::apply_ruleset(&b.to_nftables()).map_err(nft_io)?;
    Ok(true)
}

/// Bring [`guard`]'s table up to date with what is exposed now, if there
/// is one (after `expose` and `hide`; the port is read from it).
pub fn refresh_guard(bridge: &str) -> io::Result<bool> {
    let Some(sig) = guard_signature(GUARD_TABLE) else { return Ok(false) };
    let mut words = sig.split(' ').skip(1);
    match (words.next(), words.next().and_then(|p| p.parse::<u16>().ok())) {
        (Some(b), Some(port)) if b == bridge => guard(bridge, port),
        _ => Ok(false),
    }
}

/// Our table guarding the VXLAN port (family `inet`).
const VXLAN_TABLE: &str = "weave-fastdp";

/// Let VXLAN (UDP `port`) in only from `peers`, the fast path's programmed
/// peers: the kernel's VXLAN device takes packets from any source and
/// learns from them, so without this anyone on the underlay could join the
/// overlay at layer 2, and a peer whose router stopped (its kernel state
/// left behind) would go on talking to our containers. Rebuilt whole in one
/// transaction on each call; with no peers, all of it is dropped.
pub fn allow_vxlan_from(port: u16, peers: &[std::net::IpAddr]) -> io::Result<()> {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    apply_vxlan_guard(port, peers)?;
    VXLAN_WANTED.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(this_netns(), (port, peers.to_vec()));
    Ok(())
}

/// What [`allow_vxlan_from`] last applied, per network namespace (by its
/// `/proc` identity): [`restore_vxlan`] puts it back if the table goes.
#[allow(clippy::type_complexity)]
static VXLAN_WANTED: std::sync::Mutex<std::collections::BTreeMap<String, (u16, Vec<std::net::IpAddr>)>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// The calling thread's network namespace, as `/proc` names it.
fn this_netns() -> String {
    std::fs::read_link("/proc/thread-self/ns/net").map(|p| p.display().to_string()).unwrap_or_default()
}

/// Put back the VXLAN guard of this namespace if someone removed it (as
/// Weave's rules heal themselves). Returns whether it did.
pub fn restore_vxlan() -> io::Result<bool> {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let wanted = VXLAN_WANTED.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&this_netns()).cloned();
    match wanted {
        Some((port, peers)) if !inet_table_exists(VXLAN_TABLE) => apply_vxlan_guard(port, &peers).map(|()| true),
        _ => Ok(false),
    }
}

fn apply_vxlan_guard(port: u16, peers: &[std::net::IpAddr]) -> io::Result<()> {
    let mut b = Batch::new();
    if inet_table_exists(VXLAN_TABLE) {
        b.delete(inet_table(VXLAN_TABLE));
    }
    add_base_chain(&mut b, NfFamily::INet, VXLAN_TABLE, "input", NfChainType::Filter, NfHook::Input, -10);
    let dport = Statement::Match(Match { left: crate::expose::field("udp", "dport"), right: Expression::Number(u32::from(port)), op: Operator::EQ });
    for (proto, nfproto) in [("ip", "ipv4"), ("ip6", "ipv6")] {
        let from: Vec<nftables::expr::SetItem<'static>> = peers
            .iter()
            .filter(|a| a.is_ipv4() == (proto == "ip"))
            .map(|a| nftables::expr::SetItem::Element(Expression::String(Cow::Owned(a.to_string()))))
            .collect();
        let who = if from.is_empty() {
            Statement::Match(Match {
                left: Expression::Named(NamedExpression::Meta(Meta { key: MetaKey::Nfproto })),
                right: Expression::String(Cow::Borrowed(nfproto)),
                op: Operator::EQ,
            })
        } else {
            Statement::Match(Match { left: crate::expose::field(proto, "saddr"), right: Expression::Named(NamedExpression::Set(from)), op: Operator::NEQ })
        };
        b.add(NfListObject::Rule(Rule {
            family: NfFamily::INet,
            table: Cow::Borrowed(VXLAN_TABLE),
            chain: Cow::Borrowed("input"),
            expr: Cow::Owned(vec![dport.clone(), who, Statement::Drop(None)]),
            comment: Some(Cow::Borrowed("weave: VXLAN only from fast-path peers")),
            ..Rule::default()
        }));
    }
    nftables::helper::apply_ruleset(&b.to_nftables()).map_err(nft_io)
}

/// Remove [`allow_vxlan_from`]'s table (reset). Returns whether there was one.
pub fn withdraw_vxlan() -> io::Result<bool> {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    VXLAN_WANTED.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&this_netns());
    delete_inet_table(VXLAN_TABLE)
}
