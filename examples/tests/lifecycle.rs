//! What a router keeps and gives back across its own restarts and its
//! containers' deaths, on network-namespace hosts with the `weave`
//! command: DNS names of every kind come back after `weave stop; weave
//! launch`. Needs root; in CI its absence is a failure.

use std::time::{Duration, Instant};

use serde_json::json;

mod common;
use common::{cni, ok, plugin_dir, require_root, Hosts};

fn launch(h: &Hosts, i: usize) {
    let (name, nick) = (format!("::{i}"), format!("h{i}"));
    let mut a = vec!["launch", "--name", &name, "--nickname", &nick, "--ipalloc-init", "consensus=2", "--no-docker"];
    if i == 2 {
        a.push("10.99.0.1");
    }
    ok(h.weave(i, &a));
}

fn lookup(h: &Hosts, i: usize, name: &str) -> String {
    ok(h.weave(i, &["dns-lookup", name])).trim().to_owned()
}

#[test]
fn every_kind_of_name_resolves_again_on_both_hosts_after_a_router_restart() {
    if !require_root() {
        return;
    }
    let mut h = Hosts::new();
    let (c1, c2) = (h.ns("c1"), h.ns("c2"));
    launch(&h, 1);
    launch(&h, 2);
    ok(h.weave(1, &["prime"]));

    // On host 1: a namespace container (its default name, and an alias
    // with dns-add), a name for no container, and a CNI pod.
    let a1 = ok(h.weave(1, &["attach", &c1])).trim().split('/').next().unwrap().to_owned();
    ok(h.weave(1, &["dns-add", &c1, "-h", "alias.weave.local"]));
    ok(h.weave(1, &["dns-add", "10.40.1.1", "-h", "ext.weave.local"]));
    let dir = plugin_dir(&h);
    let conf = json!({ "cniVersion": "1.0.0", "name": "weave", "type": "weave-net", "stateDir": h.state(1) });
    let (added, code) = cni(&dir, "weave-net", "ADD", "pod1", &format!("/run/netns/{c2}"), &conf);
    assert_eq!(code, 0, "{added}");
    let pod = added["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_owned();
    let names = [(c1.clone(), a1.clone()), ("alias".into(), a1.clone()), ("ext".into(), "10.40.1.1".into()), ("pod1".into(), pod)];
    let all_resolve = |i: usize| names.iter().all(|(n, a)| lookup(&h, i, n) == *a);
    let end = Instant::now() + Duration::from_secs(10);
    while !all_resolve(2) {
        assert!(Instant::now() < end, "host 2 learns host 1's names");
        std::thread::sleep(Duration::from_millis(200));
    }

    ok(h.weave(1, &["stop"]));
    launch(&h, 1);
    // Within 5 s of the launch, on both hosts, and they stay.
    let end = Instant::now() + Duration::from_secs(5);
    while !(all_resolve(1) && all_resolve(2)) {
        let hr = &h;
        let missing: Vec<String> = (1..=2).flat_map(|i| names.iter().filter(move |(n, a)| lookup(hr, i, n) != *a).map(move |(n, _)| format!("{n} on host {i}"))).collect();
        assert!(Instant::now() < end, "names not back within 5 s: {missing:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // A full anti-entropy round later (5 s), nothing has been taken back.
    std::thread::sleep(Duration::from_secs(6));
    assert!(all_resolve(1) && all_resolve(2), "names stay after the peers' full state");

    // A name removed after the restart stays removed across another one.
    ok(h.weave(1, &["dns-remove", "10.40.1.1", "-h", "ext.weave.local"]));
    ok(h.weave(1, &["stop"]));
    launch(&h, 1);
    std::thread::sleep(Duration::from_secs(6));
    assert!(lookup(&h, 1, "ext").is_empty() && lookup(&h, 2, "ext").is_empty(), "a removed name does not come back");
    assert_eq!(lookup(&h, 2, &c1), a1);
}
