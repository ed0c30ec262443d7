//! What every namespace test shares.

use std::process::Command;

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

/// Whether the test can run: namespace tests need root. In CI (`CI` set)
/// running without root is a failure; elsewhere the test is skipped with a
/// message.
pub(crate) fn require_root() -> bool {
    if is_root() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "netns tests need root and must run in CI: run .ci/run as root");
    eprintln!("skipped: needs root for network namespaces");
    false
}
