//! The CNI plugins invoked exactly as a runtime does: the `weave` binary
//! under the names `weave-net` and `weave-ipam`, `CNI_*` in an otherwise
//! empty environment, the configuration on stdin, against real network
//! namespaces and two routers: ADD (traffic flows across hosts), ADD
//! again, CHECK, DEL twice, GC, VERSION, STATUS, and malformed input.
//! Needs root; in CI its absence is a failure.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

mod common;
use common::{cni, eventually, ok, plugin_dir, require_root, Hosts};

fn owned(h: &Hosts, id: &str) -> Option<Value> {
    let report: Value = serde_json::from_str(&ok(h.weave(1, &["report"]))).unwrap();
    report["IPAM"]["Owned"].get(id).cloned()
}

fn links(ns: &str) -> String {
    String::from_utf8_lossy(&Command::new("ip").args(["-n", ns, "-d", "-o", "link"]).output().unwrap().stdout).into_owned()
}

#[test]
fn cni_plugin_add_check_del_gc_version_status() {
    if !require_root() {
        return;
    }
    let mut h = Hosts::new();
    ok(h.weave(1, &["launch", "--name", "::1", "--nickname", "h1", "--ipalloc-init", "consensus=2"]));
    ok(h.weave(2, &["launch", "--name", "::2", "--nickname", "h2", "--ipalloc-init", "consensus=2", "10.99.0.1"]));
    ok(h.weave(1, &["prime"]));
    let dir = plugin_dir(&h);
    let conf = json!({ "cniVersion": "1.1.0", "name": "weave", "type": "weave-net", "stateDir": h.state(1) });

    // VERSION and STATUS.
    let (v, code) = cni(&dir, "weave-net", "VERSION", "", "", &json!({ "cniVersion": "1.1.0" }));
    assert_eq!(code, 0);
    assert!(v["supportedVersions"].as_array().unwrap().contains(&json!("1.1.0")), "{v}");
    let (v, code) = cni(&dir, "weave-net", "STATUS", "", "", &conf);
    assert_eq!((v.clone(), code), (Value::Null, 0), "STATUS with the router ready");

    // ADD: an interface with an overlay address, a default route through
    // the bridge, hairpin on; traffic to a container on the other host.
    let c1 = h.ns("c1");
    let ns1 = format!("/run/netns/{c1}");
    let (r, code) = cni(&dir, "weave-net", "ADD", "pod1", &ns1, &conf);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["cniVersion"], "1.1.0");
    let addr = r["ips"][0]["address"].as_str().unwrap().to_owned();
    let ip1 = addr.split('/').next().unwrap().to_owned();
    let gw = r["ips"][0]["gateway"].as_str().unwrap().to_owned();
    assert!(addr.ends_with("/12"), "{r}");
    assert_eq!(r["interfaces"][1]["sandbox"], ns1.as_str());
    assert_eq!(r["interfaces"][1]["name"], "eth0");
    assert_eq!(r["routes"][0], json!({ "dst": "0.0.0.0/0", "gw": gw }));
    assert!(r["dns"]["nameservers"][0].as_str().is_some_and(|n| n.starts_with("169.254.")), "{r}");
    let host_if = r["interfaces"][0]["name"].as_str().unwrap().to_owned();
    let l = links(&h.name("h1"));
    let port = l.lines().find(|x| x.contains(&format!(" {host_if}@"))).unwrap_or_else(|| panic!("{host_if} on host 1: {l}"));
    assert!(port.contains("hairpin on"), "{port}");
    assert!(links(&c1).contains("eth0"));
    let c2 = h.ns("c2");
    let a2 = ok(h.weave(2, &["attach", &c2])).trim().to_owned();
    let ip2 = a2.split('/').next().unwrap().to_owned();
    assert!(h.ping("c1", &ip2), "CNI container on host 1 -> container on host 2");
    assert!(h.ping("c2", &ip1), "and back");
    assert!(h.ping("c1", &gw), "the gateway is the host");
    // The pod's name is in weaveDNS, on the other host too.
    eventually(5, "pod1's name reaches host 2", || ok(h.weave(2, &["dns-lookup", "pod1"])).trim() == ip1);

    // ADD again: the same address (idempotent).
    let (again, code) = cni(&dir, "weave-net", "ADD", "pod1", &ns1, &conf);
    assert_eq!(code, 0);
    assert_eq!(again["ips"][0]["address"], addr.as_str());

    // CHECK with prevResult: fine; with an address it does not have: the
    // plugin's own error.
    let mut check = conf.clone();
    check["prevResult"] = r.clone();
    let (v, code) = cni(&dir, "weave-net", "CHECK", "pod1", &ns1, &check);
    assert_eq!((v, code), (Value::Null, 0));
    check["prevResult"]["ips"][0]["address"] = json!("10.32.99.99/12");
    let (v, code) = cni(&dir, "weave-net", "CHECK", "pod1", &ns1, &check);
    assert_eq!((v["code"].as_u64(), code), (Some(100), 1), "{v}");
    // The interface lost its address behind the router's back.
    ok(Command::new("ip").args(["-n", &c1, "addr", "del", &addr, "dev", "eth0"]).output().unwrap());
    check["prevResult"] = r.clone();
    let (v, code) = cni(&dir, "weave-net", "CHECK", "pod1", &ns1, &check);
    assert_eq!((v["code"].as_u64(), code), (Some(100), 1), "{v}");
    assert_eq!(cni(&dir, "weave-net", "ADD", "pod1", &ns1, &conf).1, 0, "ADD again repairs it");
    let (v, code) = cni(&dir, "weave-net", "CHECK", "pod1", &ns1, &check);
    assert_eq!((v, code), (Value::Null, 0));
    let mut nocheck = conf.clone();
    nocheck["prevResult"] = Value::Null;
    let (v, _) = cni(&dir, "weave-net", "CHECK", "pod1", &ns1, &nocheck);
    assert_eq!(v["code"], 7, "CHECK without prevResult: {v}");

    // weave-ipam: addresses only.
    let ipam_conf = json!({ "cniVersion": "1.0.0", "name": "weave", "type": "bridge", "ipam": { "type": "weave-ipam", "subnet": "10.32.200.0/24" }, "stateDir": h.state(1) });
    let (v, code) = cni(&dir, "weave-ipam", "ADD", "pod9", &ns1, &ipam_conf);
    assert_eq!(code, 0, "{v}");
    assert!(v["ips"][0]["address"].as_str().unwrap().starts_with("10.32.200."), "{v}");
    assert!(v.get("interfaces").is_none());
    assert!(owned(&h, "cni:weave/pod9/eth0").is_some());
    assert_eq!(cni(&dir, "weave-ipam", "DEL", "pod9", &ns1, &ipam_conf).1, 0);
    assert!(owned(&h, "cni:weave/pod9/eth0").is_none());
    assert!(links(&c1).contains("eth0"), "weave-ipam DEL leaves the interface (another plugin's) alone");

    // GC: a stale attachment (its runtime forgot it) is released; the
    // valid one is kept.
    let c3 = h.ns("c3");
    let ns3 = format!("/run/netns/{c3}");
    assert_eq!(cni(&dir, "weave-net", "ADD", "stale", &ns3, &conf).1, 0);
    assert!(owned(&h, "cni:weave/stale/eth0").is_some());
    // GC is per network: another network's GC leaves these alone, and a
    // GC without the list is refused rather than freeing everything.
    let mut other = conf.clone();
    other["name"] = json!("other");
    other["cni.dev/valid-attachments"] = json!([]);
    assert_eq!(cni(&dir, "weave-net", "GC", "", "", &other).1, 0);
    assert!(owned(&h, "cni:weave/stale/eth0").is_some(), "another network's GC");
    let (v, _) = cni(&dir, "weave-net", "GC", "", "", &conf);
    assert_eq!(v["code"], 7, "GC without cni.dev/valid-attachments: {v}");
    assert!(owned(&h, "cni:weave/stale/eth0").is_some());
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{ "containerID": "pod1", "ifname": "eth0" }]);
    let (v, code) = cni(&dir, "weave-net", "GC", "", "", &gc);
    assert_eq!((v, code), (Value::Null, 0));
    assert!(owned(&h, "cni:weave/stale/eth0").is_none(), "stale attachment released");
    assert!(!links(&c3).contains("eth0"), "and its interface removed");
    assert_eq!(owned(&h, "cni:weave/pod1/eth0").unwrap()[0], addr.as_str(), "valid attachment kept");

    // DEL, twice: both succeed; the interface and the address are gone.
    for _ in 0..2 {
        let (v, code) = cni(&dir, "weave-net", "DEL", "pod1", &ns1, &conf);
        assert_eq!((v, code), (Value::Null, 0));
    }
    assert!(!links(&c1).contains("eth0"));
    assert!(owned(&h, "cni:weave/pod1/eth0").is_none());
    eventually(5, "pod1's name goes", || ok(h.weave(2, &["dns-lookup", "pod1"])).trim().is_empty());
    // DEL of a namespace that is gone is fine too.
    assert_eq!(cni(&dir, "weave-net", "DEL", "pod1", "/run/netns/no-such-ns", &conf).1, 0);

    // Malformed configuration and environment: the spec's error JSON.
    let mut child = Command::new(dir.join("weave-net"))
        .env_clear()
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "x")
        .env("CNI_NETNS", &ns1)
        .env("CNI_IFNAME", "eth0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"{\"cniVersion\": ").unwrap();
    let out = child.wait_with_output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["code"].as_u64(), out.status.code()), (Some(6), Some(1)), "{v}");
    assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()));
    let (v, code) = cni(&dir, "weave-net", "ADD", "", &ns1, &conf);
    assert_eq!((v["code"].as_u64(), code), (Some(4), 1), "no CNI_CONTAINERID: {v}");
    let (v, _) = cni(&dir, "weave-net", "ADD", "pod2", &ns1, &json!({ "cniVersion": "0.1.0", "name": "weave", "type": "weave-net" }));
    assert_eq!(v["code"], 1, "unsupported version: {v}");
    let (v, _) = cni(&dir, "weave-net", "ADD", "pod2", "/run/netns/no-such-ns", &conf);
    assert_eq!(v["code"], 3, "unknown namespace: {v}");

    // `weave cni` is the same plugin.
    let out = Command::new(env!("CARGO_BIN_EXE_weave")).args(["cni"]).env_clear().env("CNI_COMMAND", "VERSION").stdin(Stdio::null()).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("supportedVersions"));

    for i in 1..=2 {
        ok(h.weave(i, &["reset"]));
    }
    // With no router: STATUS says the plugin is not available.
    let (v, code) = cni(&dir, "weave-net", "STATUS", "", "", &conf);
    assert_eq!((v["code"].as_u64(), code), (Some(50), 1), "{v}");
}
