//! A resolv.conf written for a named network namespace is what programs in
//! that namespace see (through `ip netns exec`'s bind mount). Needs root; in
//! CI its absence is a failure, not a skip.

use std::process::Command;

use weave_dns::resolv::{remove_netns_resolv_conf, write_netns_resolv_conf, ETC_NETNS};

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = remove_netns_resolv_conf(std::path::Path::new(ETC_NETNS), &self.0);
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn a_container_namespace_sees_weavedns_as_its_resolver() {
    if !is_root() {
        assert!(std::env::var_os("CI").is_none(), "netns tests need root and must run in CI: run .ci/run as root");
        eprintln!("skipped: needs root for network namespaces");
        return;
    }
    let ns = Netns(format!("wvdns{}", std::process::id()));
    assert!(Command::new("ip").args(["netns", "add", &ns.0]).status().unwrap().success());
    write_netns_resolv_conf(std::path::Path::new(ETC_NETNS), &ns.0, "10.32.0.1".parse().unwrap(), "weave.local.").unwrap();
    let out = Command::new("ip").args(["netns", "exec", &ns.0, "cat", "/etc/resolv.conf"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("nameserver 10.32.0.1") && text.contains("search weave.local"), "{text}");
    drop(ns);
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&list.stdout).contains(&format!("wvdns{}", std::process::id())));
}
