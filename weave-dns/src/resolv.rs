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

/// The first line of a hosts file [`hosts_file`] made.
pub const HOSTS_BEGIN: &str = "# created by Weave - BEGIN";

/// A container's `/etc/hosts` as `weave attach --rewrite-hosts` writes it,
/// in Weave's layout: its addresses under `fqdn` and its first label,
/// the `--add-host NAME:ADDR` entries (others are skipped), and the usual
/// localhost lines.
pub fn hosts_file(fqdn: &str, addrs: &[IpAddr], extra: &[String]) -> String {
    use std::fmt::Write;
    let fqdn = fqdn.trim_end_matches('.');
    let names = match fqdn.split_once('.') {
        Some((first, _)) => format!("{fqdn} {first}"),
        None => fqdn.to_owned(),
    };
    let mut out = format!("{HOSTS_BEGIN}\n# container hostname\n");
    for a in addrs {
        let _ = writeln!(out, "{:<15} {names}", a.to_string());
    }
    out.push_str("\n# static names added with --add-host\n");
    for (name, addr) in extra.iter().filter_map(|e| e.split_once(':')) {
        let _ = writeln!(out, "{addr:<15} {name}");
    }
    out.push_str(concat!(
        "\n# default localhost entries\n",
        "127.0.0.1       localhost\n",
        "::1             ip6-localhost ip6-loopback\n",
        "fe00::0         ip6-localnet\n",
        "ff00::0         ip6-mcastprefix\n",
        "ff02::1         ip6-allnodes\n",
        "ff02::2         ip6-allrouters\n",
        "# created by Weave - END\n",
    ));
    out
}

/// Write `content` to `path` through a temporary file beside it.
pub fn write_atomically(path: &Path, content: &str) -> io::Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.weave-tmp"));
    std::fs::write(&tmp, content)?;
    std::fs::rename(&tmp, path)
}

/// Write `<etc_netns>/<netns>/hosts` (which `ip netns exec` bind-mounts
/// over `/etc/hosts`); returns its path.
pub fn write_netns_hosts(etc_netns: &Path, netns: &str, content: &str) -> io::Result<PathBuf> {
    check_name(netns)?;
    let dir = etc_netns.join(netns);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("hosts");
    write_atomically(&path, content)?;
    Ok(path)
}

/// Remove what [`write_netns_resolv_conf`] and [`write_netns_hosts`] wrote
/// (a hosts file only if it is ours), and the namespace's directory if
/// nothing else is in it. A missing file is not an error.
pub fn remove_netns_resolv_conf(etc_netns: &Path, netns: &str) -> io::Result<()> {
    check_name(netns)?;
    let dir = etc_netns.join(netns);
    match std::fs::remove_file(dir.join("resolv.conf")) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let hosts = dir.join("hosts");
    if std::fs::read_to_string(&hosts).is_ok_and(|t| t.starts_with(HOSTS_BEGIN)) {
        std::fs::remove_file(&hosts)?;
    }
    // Only if empty: other tools may keep files there.
    let _ = std::fs::remove_dir(&dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_file_is_weaves_layout() {
        let t = hosts_file("c1.weave.local.", &["10.2.0.1".parse().unwrap()], &["static.name:10.9.9.9".into(), "junk".into()]);
        assert!(t.starts_with("# created by Weave - BEGIN\n# container hostname\n10.2.0.1        c1.weave.local c1\n"), "{t}");
        assert!(t.contains("\n# static names added with --add-host\n10.9.9.9        static.name\n"), "{t}");
        assert!(!t.contains("junk") && t.contains("127.0.0.1       localhost\n") && t.ends_with("# created by Weave - END\n"), "{t}");
        assert!(hosts_file("bare", &[], &[]).contains("# container hostname\n\n"), "no addresses, no lines");
    }

    #[test]
    fn hosts_removed_only_when_ours() {
        let root = tempfile::tempdir().unwrap();
        write_netns_hosts(root.path(), "c1", &hosts_file("c1.weave.local", &[], &[])).unwrap();
        remove_netns_resolv_conf(root.path(), "c1").unwrap();
        assert!(!root.path().join("c1").exists());
        std::fs::create_dir_all(root.path().join("c2")).unwrap();
        std::fs::write(root.path().join("c2/hosts"), "10.0.0.1 mine\n").unwrap();
        remove_netns_resolv_conf(root.path(), "c2").unwrap();
        assert!(root.path().join("c2/hosts").exists(), "someone else's hosts file stays");
    }

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
