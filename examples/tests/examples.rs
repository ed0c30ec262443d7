//! The examples run and do what they say.

use std::process::Command;

#[test]
fn mesh_crdt_example_converges_on_three_peers() {
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-crdt")).output().expect("run the example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(lines.iter().all(|l| l.contains("sees total 60 with 3 peers")), "{stdout}");
}
