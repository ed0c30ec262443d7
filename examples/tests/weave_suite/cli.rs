//! Weave Net 2.8.1's integration tests of the CLI (`test/*_test.sh` in
//! weaveworks/weave): peer-name derivation (390), the address grammar of
//! attach/detach/expose/hide (500, 510) and `weave status` / `weave
//! report -f` (700), ported to network-namespace hosts in the style of
//! `weave_suite.rs`: the original's steps and assertions in its order, with
//! its number in the test's name.
//!
//! Translation: `weave_on $HOSTn CMD` is `weave CMD` in host n's namespace
//! (`Hosts::weave`); `start_container $HOSTn [ADDR] --name=cN` is a
//! namespace attached with that address and, where the original's
//! hostname matters, `-h cN.weave.local` (a Docker container keeps its
//! hostname across attaches; a namespace has none, so every attach names
//! it again); `$HOSTn` is 10.99.0.n.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{eventually, ok, require_root, Hosts};

/// `weave report -f TEMPLATE` on host `i`, without the trailing newline
/// (the originals compare `$(...)`).
fn report(h: &Hosts, i: usize, template: &str) -> String {
    ok(h.weave(i, &["report", "-f", template])).trim_end_matches('\n').to_owned()
}

/// The originals' `weave_on $HOST status | grep -oP '(?<= KEY: ).*'`.
fn status_field(h: &Hosts, i: usize, key: &str) -> String {
    let pat = format!(" {key}: ");
    let out = ok(h.weave(i, &["status"]));
    out.lines().filter_map(|l| l.find(&pat).map(|p| l[p + pat.len()..].to_owned())).collect::<Vec<_>>().join("\n")
}

/// Each line's `tr -s ' ' | cut -d ' ' -f N` (1-based).
fn field(text: &str, n: usize) -> String {
    text.lines()
        .map(|l| {
            let squeezed: String = l.split(' ').filter(|w| !w.is_empty()).collect::<Vec<_>>().join(" ");
            // `tr -s` keeps one leading space: field 1 is then empty.
            let squeezed = if l.starts_with(' ') { format!(" {squeezed}") } else { squeezed };
            squeezed.split(' ').nth(n - 1).unwrap_or("").to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// 510's `check`: `timeout 10 cat <( weave_on $HOST1 CMD )`, which passes
/// when the command finishes within 10 s, whatever its exit status.
fn finishes_within(h: &Hosts, i: usize, args: &[&str], secs: u64) -> bool {
    let mut child = h.weave_command(i, args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("run weave");
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if child.try_wait().expect("wait").is_some() {
            return true;
        }
        if Instant::now() > end {
            // `ip netns exec` execs weave: this is the weave process.
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// 390's `get_peername`.
fn peer_name(h: &Hosts) -> String {
    report(h, 1, "{{.Router.Name}}")
}

/// Set what host 1's `weave` sees as `/etc/machine-id`: `ip netns exec`
/// bind-mounts `/etc/netns/NS/*` over `/etc`, so the machine's own file is
/// never touched (other tests run at the same time).
fn set_machine_id(h: &Hosts, id: &str) {
    let dir = std::path::Path::new("/etc/netns").join(h.name("h1"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("machine-id"), id).unwrap();
}

/// 390's `rot8`: `tr '[0-9a-f]' '[8-9a-f0-7]'`.
fn rot8(s: &str) -> String {
    const FROM: &str = "0123456789abcdef";
    const TO: &str = "89abcdef01234567";
    s.chars().map(|c| FROM.find(c).map_or(c, |i| TO.as_bytes()[i] as char)).collect()
}

/// 390_peer_name: the default peer name. A router keeps the name it had
/// while its bridge exists (Weave reads the bridge's MAC, which it set to
/// the peer name), and, with the bridge gone, while the persisted name is
/// the one the system id without a machine id gives; a reset (or a new
/// machine id with the bridge gone) gives a new name.
///
/// Translation: the machine id is host 1's own (see `set_machine_id`),
/// never the machine's. Weave's system id without a machine id is the
/// DMI/hypervisor UUID; here it is the one the namespace gives alone (the
/// default name hashes the machine id and the network namespace).
/// `remove_bridge` deletes the bridge and the fast path's device (Weave:
/// the bridge, `vethwe-datapath` and the ODP datapath).
#[test]
fn t390_peer_name() {
    if !require_root() {
        return;
    }
    let h = Hosts::new();
    let launch = || ok(h.weave(1, &["launch", "--no-docker"]));
    let remove_bridge = || {
        for dev in ["weave", "vxlan-weave"] {
            let _ = Command::new("ip").args(["-n", &h.name("h1"), "link", "del", dev]).output();
        }
        let left = Command::new("ip").args(["-n", &h.name("h1"), "link", "show", "weave"]).output().unwrap();
        assert!(!left.status.success(), "the bridge was removed");
    };
    let orig_machine_id = std::fs::read_to_string("/etc/machine-id").unwrap_or_default().trim().to_owned();
    assert!(!orig_machine_id.is_empty(), "Machine ID is blank!");

    // Blank machine-id to begin, so peername will work the same as pre-1.9.
    set_machine_id(&h, "");
    launch();
    ok(h.weave(1, &["prime"]));
    let peername1 = peer_name(&h);

    // Now put the machine ID back.
    set_machine_id(&h, &format!("{orig_machine_id}\n"));

    // Stop and restart; it should take the ID from the bridge.
    ok(h.weave(1, &["stop"]));
    launch();
    assert_eq!(peer_name(&h), peername1, "the name from the bridge's MAC");

    // Stop and remove the bridge, then restart; it should take the ID from
    // persistence.
    ok(h.weave(1, &["stop"]));
    remove_bridge();
    launch();
    assert_eq!(peer_name(&h), peername1, "the persisted name");

    // Now remove everything and restart: should get a different peer name.
    ok(h.weave(1, &["reset"]));
    launch();
    let peername3 = peer_name(&h);
    assert_ne!(peername3, peername1);

    // Change the machine ID.
    set_machine_id(&h, &format!("{}\n", rot8(&orig_machine_id)));

    // Remove bridge and restart; it should get a different ID.
    ok(h.weave(1, &["stop"]));
    remove_bridge();
    launch();
    assert_ne!(peer_name(&h), peername3);
    ok(h.weave(1, &["reset"]));
}

/// 500's `assert_container_cidrs`: `weave ps CID` is `CID MAC CIDRS`, or
/// nothing.
fn assert_container_cidrs(h: &Hosts, i: usize, cid: &str, cidrs: &[&str]) {
    let out = ok(h.weave(i, &["ps", cid]));
    if cidrs.is_empty() {
        assert_eq!(out.trim_end(), "", "weave ps {cid}");
    } else {
        let want = cidrs.join(" ");
        let hit = out.lines().any(|l| {
            let mut w = l.splitn(3, ' ');
            let (id, mac, rest) = (w.next().unwrap_or(""), w.next().unwrap_or(""), w.next().unwrap_or(""));
            id == cid && mac.len() == 17 && mac.chars().all(|c| c.is_ascii_hexdigit() || c == ':') && rest == want
        });
        assert!(hit, "weave ps {cid}: want `{cid} MAC {want}`, got {out:?}");
    }
}

/// 500's `assert_zone_records`: `weave dns-lookup FQDN` has one line per
/// address, and each is among them.
fn assert_zone_records(h: &Hosts, i: usize, fqdn: &str, cidrs: &[&str]) {
    // The original ignores the exit status (`|| true`).
    let out = h.weave(i, &["dns-lookup", fqdn]);
    let records = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(records.matches('\n').count(), cidrs.len(), "dns-lookup {fqdn}: {records:?}");
    for c in cidrs {
        let ip = c.split('/').next().unwrap();
        assert!(records.lines().any(|l| l.trim() == ip), "dns-lookup {fqdn}: {ip} missing from {records:?}");
    }
}

fn assert_ips_and_dns(h: &Hosts, i: usize, cid: &str, fqdn: &str, cidrs: &[&str]) {
    assert_container_cidrs(h, i, cid, cidrs);
    assert_zone_records(h, i, fqdn, cidrs);
}

/// 500's `assert_bridge_cidrs`: the IPv4 CIDRs on `dev`, in order. The
/// link-local address this project's weaveDNS listens on is left out: it
/// sits on the bridge by design (docs/COMPATIBILITY.md,
/// `--dns-listen-address`), where Weave's DNS uses docker0's address.
fn assert_bridge_cidrs(h: &Hosts, i: usize, dev: &str, cidrs: &[&str]) {
    let out = ok(Command::new("ip").args(["-n", &h.name(&format!("h{i}")), "-4", "addr", "show", "dev", dev]).output().unwrap());
    let got: Vec<&str> =
        out.lines().filter_map(|l| l.trim_start().strip_prefix("inet ")).filter_map(|l| l.split(' ').next()).filter(|c| !c.starts_with("169.254.")).collect();
    assert_eq!(got.join(" "), cidrs.join(" "), "addresses on {dev}");
}

/// 500_weave_multi_cidr: attach, detach, expose and hide with several
/// addresses at once, in all three flavours (`CIDR`, `ip:CIDR`,
/// `net:CIDR`), and the addresses coming back to IPAM.
///
/// Translation: the container is namespace `multicidr`, attached with
/// `-h multicidr.weave.local` each time (its Docker hostname in the
/// original). `start_container ... net:CIDR` failing is `attach` failing.
#[test]
fn t500_weave_multi_cidr() {
    if !require_root() {
        return;
    }
    let mut h = Hosts::new();
    let name = "multicidr.weave.local";
    let fqdn = "multicidr.weave.local.";
    let attach = |h: &Hosts, args: &[&str], cid: &str| ok(h.weave(1, &[&["attach", "-h", name], args, &[cid]].concat())).trim_end().to_owned();
    let detach = |h: &Hosts, args: &[&str], cid: &str| ok(h.weave(1, &[&["detach"], args, &[cid]].concat())).trim_end().to_owned();

    ok(h.weave(1, &["launch", "--ipalloc-range", "10.2.3.0/24", "--no-docker"]));

    // Run container with three cidrs.
    let cid = h.ns("multicidr");
    attach(&h, &["10.2.1.1/24", "ip:10.2.2.1/24", "net:10.2.3.0/24"], &cid);
    assert_ips_and_dns(&h, 1, &cid, fqdn, &["10.2.1.1/24", "10.2.2.1/24", "10.2.3.1/24"]);

    // Remove two of them.
    assert_eq!(detach(&h, &["ip:10.2.2.1/24", "net:10.2.3.0/24"], &cid), "10.2.2.1 10.2.3.1");
    assert_ips_and_dns(&h, 1, &cid, fqdn, &["10.2.1.1/24"]);
    // ...and the remaining one.
    assert_eq!(detach(&h, &["10.2.1.1/24"], &cid), "10.2.1.1");
    assert_ips_and_dns(&h, 1, &cid, fqdn, &[]);

    // Put one back.
    assert_eq!(attach(&h, &["10.2.1.1/24"], &cid), "10.2.1.1");
    assert_ips_and_dns(&h, 1, &cid, fqdn, &["10.2.1.1/24"]);
    // ...and the remaining two.
    assert_eq!(attach(&h, &["ip:10.2.2.1/24", "net:10.2.3.0/24"], &cid), "10.2.2.1 10.2.3.1");
    assert_ips_and_dns(&h, 1, &cid, fqdn, &["10.2.1.1/24", "10.2.2.1/24", "10.2.3.1/24"]);

    // Expose three cidrs.
    assert_eq!(ok(h.weave(1, &["expose", "10.2.1.2/24", "ip:10.2.2.2/24", "net:10.2.3.0/24"])).trim_end(), "10.2.1.2 10.2.2.2 10.2.3.2");
    assert_bridge_cidrs(&h, 1, "weave", &["10.2.1.2/24", "10.2.2.2/24", "10.2.3.2/24"]);

    // Hide two of them.
    assert_eq!(ok(h.weave(1, &["hide", "ip:10.2.2.2/24", "net:10.2.3.0/24"])).trim_end(), "10.2.2.2 10.2.3.2");
    assert_bridge_cidrs(&h, 1, "weave", &["10.2.1.2/24"]);
    // ...and the remaining one.
    assert_eq!(ok(h.weave(1, &["hide", "10.2.1.2/24"])).trim_end(), "10.2.1.2");
    assert_bridge_cidrs(&h, 1, "weave", &[]);

    // Now detach and run another container to check we have released IPs
    // in IPAM. With no address, Weave's detach takes `net:default` (here
    // 10.2.3.0/24, the whole range): the other two stay.
    assert_eq!(detach(&h, &[], &cid), "10.2.3.1", "detach with no address removes the default subnet's");
    let cid2 = h.ns("c2");
    ok(h.weave(1, &["attach", "net:10.2.3.0/24", &cid2]));
    assert_container_cidrs(&h, 1, &cid2, &["10.2.3.1/24"]);

    // Error conditions: host address not network, subnet too small.
    let c3 = h.ns("c3");
    assert!(!h.weave(1, &["attach", "net:10.2.3.2/30", &c3]).status.success(), "net: with a host address");
    let c4 = h.ns("c4");
    assert!(!h.weave(1, &["attach", "net:10.2.3.2/31", &c4]).status.success(), "net: with a /31");
    ok(h.weave(1, &["reset"]));
}

/// 510_detach_hide_no_ipalloc: detach and hide, with an address, a subnet
/// or nothing, do not wait for IPAM, which here never gets its quorum
/// (consensus of 2, one peer). Each must finish within 10 s; as in the
/// original (`cat <(...)`), its exit status is not looked at.
#[test]
fn t510_detach_hide_no_ipalloc() {
    if !require_root() {
        return;
    }
    let mut h = Hosts::new();
    let universe = "10.2.3.0/24";
    ok(h.weave(1, &["launch", "--ipalloc-range", universe, "--ipalloc-init", "consensus=2", "--no-docker"]));

    let c1 = h.ns("c1");
    ok(h.weave(1, &["attach", "10.2.1.1/24", &c1]));
    let check = |args: &[&str]| assert!(finishes_within(&h, 1, args, 10), "weave {} did not finish within 10 s", args.join(" "));
    check(&["detach", "10.2.1.1/24", &c1]);
    check(&["detach", "net:10.2.3.0/24", &c1]);
    check(&["detach", &c1]);

    ok(h.weave(1, &["expose", "10.2.1.2/24"]));
    check(&["hide", "10.2.1.2/24"]);
    check(&["hide", "net:10.2.3.0/24"]);
    check(&["hide"]);
    ok(h.weave(1, &["reset", "--force"]));
}

/// 700_status_and_report_2: `weave status` lines and the report fields
/// behind them, status views, and the version check.
///
/// Translation: `start_container $HOST1 --name test` is namespace `test`
/// attached with `-h test.weave.local`. The original's `assert "... | grep
/// -q 'mtu=1410'"` compares grep -q's (always empty) output with nothing,
/// so it never fails (and 1410 is Weave 1.x's MTU; a fast-path connection
/// shows the datapath MTU, 1376 by default): here the established
/// connection to host 2 must show `mtu=` with the overlay MTU, 1376.
///
/// Not taken: the second half (relaunch with `CHECKPOINT_DISABLE=""`, a
/// broken resolver, then a working one, and `VersionCheck.Success` /
/// `NewVersion` / "up to date; next check at" / "please upgrade!") needs
/// Weave's checkpoint service on the Internet, and test traffic stays in
/// the namespaces; this project has no version check at all (the router
/// never calls out), so only the "disabled" assertions are taken.
#[test]
fn t700_status_and_report() {
    if !require_root() {
        return;
    }
    let mut h = Hosts::new();
    let universe = "10.2.0.0/16";
    ok(h.weave(1, &["launch", "--ipalloc-range", universe, "--name", "8a:3e:3e:3e:3e:3e", "--nickname", "nicknamington", "--no-docker"]));
    ok(h.weave(2, &["launch", "--ipalloc-range", universe, "--no-docker"]));

    let check = |key: &str, template: &str, want: &str| {
        assert_eq!(status_field(&h, 1, key), want, "weave status: {key}");
        assert_eq!(report(&h, 1, template), want, "weave report -f '{template}'");
    };
    check("Name", "{{.Router.Name}}({{.Router.NickName}})", "8a:3e:3e:3e:3e:3e(nicknamington)");
    check("Peers", "{{len .Router.Peers}}", "1");
    check("DefaultSubnet", "{{.IPAM.DefaultSubnet}}", universe);
    check("Domain", "{{.DNS.Domain}}", "weave.local.");

    assert!(ok(h.weave(1, &["status", "peers"])).contains("nicknamington"), "status peers names the nickname");
    let test = h.ns("test");
    ok(h.weave(1, &["attach", "-h", "test.weave.local", &test]));
    assert_eq!(field(&ok(h.weave(1, &["status", "dns"])), 1), "test");
    assert!(ok(h.weave(1, &["report"])).contains("nicknamington"), "the report names the nickname");
    ok(h.weave(1, &["connect", "10.2.2.1"]));
    assert_eq!(ok(h.weave(1, &["status", "targets"])).trim_end(), "10.2.2.1");
    assert_eq!(field(&ok(h.weave(1, &["status", "connections"])), 2), "10.2.2.1:6783");
    ok(h.weave(1, &["connect", "10.99.0.2"]));
    // The original sleeps 1 s; the handshake and the fast path's
    // agreement may take a little longer.
    eventually(15, "an established connection to host 2 with mtu=1376", || {
        let out = ok(h.weave(1, &["status", "connections"]));
        out.lines().any(|l| l.contains("10.99.0.2:6783") && l.contains("established") && l.contains("mtu=1376"))
    });

    assert_eq!(report(&h, 1, "{{.VersionCheck.Enabled}}"), "false");
    assert!(ok(h.weave(1, &["status"])).contains("version check update disabled"), "weave status says the version check is disabled");
    for i in 1..=2 {
        ok(h.weave(i, &["reset", "--force"]));
    }
}
