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

/// The shipped systemd unit is one systemd accepts, pointing at the weave
/// binary's `router` command (checked with `systemd-analyze verify`, the
/// binary path swapped for the one just built).
#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/weave.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/weave router $WEAVE_PEERS") && unit.contains("Restart=always"), "{unit}");
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "systemd-analyze is needed in CI");
        eprintln!("skipped: no systemd-analyze");
        return;
    }
    let dir = std::env::temp_dir().join(format!("weave-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("weave.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/weave", env!("CARGO_BIN_EXE_weave"))).unwrap();
    let out = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&path).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let errors = String::from_utf8_lossy(&out.stderr);
    // Only complaints about this unit count (the host's own units may warn).
    let ours: Vec<&str> = errors.lines().filter(|l| l.contains("weave.service")).collect();
    assert!(out.status.success() && ours.is_empty(), "{errors}");
}
