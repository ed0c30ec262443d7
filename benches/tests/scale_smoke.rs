//! The scale benchmark's smoke run: 20 real routers, each in a network
//! namespace, launched against host 1 with discovery on, must form a full
//! mesh. A regression in the mesh (floods, duplicate connections, churn)
//! shows here long before it shows at 200.

use std::time::Duration;

use weave_benches::scale::{run, weave_binary, ScaleConfig};

#[test]
fn twenty_routers_form_a_full_mesh() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    if !root {
        eprintln!("skipped: needs root (network namespaces)");
        return;
    }
    let weave = weave_binary().expect("the weave binary (weave-examples) is built with the workspace's tests");
    let cfg =
        ScaleConfig { n: 20, password: false, conn_limit: None, converge_timeout: Duration::from_secs(60), idle: Duration::from_secs(5), weave, hold: false };
    let row = run(&cfg).expect("the run completes");
    eprintln!("{row:?}");
    assert!(row.full_mesh.is_some(), "no full mesh within 60 s of the last launch: established per router {:?}", row.established);
    assert_eq!(row.established, (19, 19, 19));
}
