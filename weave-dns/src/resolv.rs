//! The resolver of a container attached by network-namespace name.
//!
//! `ip netns exec NAME ...` bind-mounts `/etc/netns/NAME/resolv.conf` over
//! `/etc/resolv.conf`, so writing that file makes `ip netns exec c1 ping c2`
//! resolve `c2` through weaveDNS (search domain `weave.local`). Written
//! atomically; removed on detach, with the directory if we left it empty.

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Where `ip netns` looks for per-namespace files.
pub const ETC_NETNS: &str = "/etc/netns";

fn check_name(netns: &str) -> io::Result<()> {
    let ok = !netns.is_empty() && netns != "." && netns != ".." && !netns.contains('/') && !netns.contains('\0');
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(io::ErrorKind::InvalidInput, format!("invalid network namespace name {netns:?}")))
    }
}

/// The file's content.
pub fn resolv_conf(nameserver: IpAddr, domain: &str) -> String {
    let search = domain.trim_end_matches('.');
    format!("# written by weave: names in {search} are answered by weaveDNS\nnameserver {nameserver}\nsearch {search}\noptions ndots:1\n")
}

/// Write `<etc_netns>/<netns>/resolv.conf`; returns its path.
pub fn write_netns_resolv_conf(etc_netns: &Path, netns: &str, nameserver: IpAddr, domain: &str) -> io::Result<PathBuf> {
    check_name(netns)?;
    let dir = etc_netns.join(netns);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("resolv.conf");
    let tmp = dir.join(".resolv.conf.weave-tmp");
    std::fs::write(&tmp, resolv_conf(nameserver, domain))?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Remove what [`write_netns_resolv_conf`] wrote (and the namespace's
/// directory if nothing else is in it). A missing file is not an error.
pub fn remove_netns_resolv_conf(etc_netns: &Path, netns: &str) -> io::Result<()> {
    check_name(netns)?;
    let dir = etc_netns.join(netns);
    match std::fs::remove_file(dir.join("resolv.conf")) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // Only if empty: other tools may keep files there.
    let _ = std::fs::remove_dir(&dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_atomically_and_removed_with_an_empty_directory() {
        let root = tempfile::tempdir().unwrap();
        let p = write_netns_resolv_conf(root.path(), "c1", "10.32.0.1".parse().unwrap(), "weave.local.").unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("nameserver 10.32.0.1\n") && text.contains("search weave.local\n"), "{text}");
        remove_netns_resolv_conf(root.path(), "c1").unwrap();
        assert!(!root.path().join("c1").exists());
        remove_netns_resolv_conf(root.path(), "c1").unwrap();
    }

    #[test]
    fn other_files_in_the_directory_are_kept() {
        let root = tempfile::tempdir().unwrap();
        write_netns_resolv_conf(root.path(), "c2", "10.32.0.1".parse().unwrap(), "weave.local.").unwrap();
        std::fs::write(root.path().join("c2/hosts"), "x").unwrap();
        remove_netns_resolv_conf(root.path(), "c2").unwrap();
        assert!(root.path().join("c2/hosts").exists());
    }

    #[test]
    fn names_that_escape_the_directory_are_refused() {
        let root = tempfile::tempdir().unwrap();
        for bad in ["", ".", "..", "a/b", "../etc"] {
            assert!(write_netns_resolv_conf(root.path(), bad, "10.32.0.1".parse().unwrap(), "weave.local.").is_err(), "{bad}");
        }
    }
}
