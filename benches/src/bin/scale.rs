//! Scale benchmark: N real routers, each in a network namespace of its own
//! on one underlay bridge, launched against host 1 with `--no-fastdp` and
//! discovery on. Prints one table: launch time, time to full mesh after the
//! last launch, established connections, memory, and the idle cost.
//!
//! `cargo build --release -p weave-examples -p weave-benches && target/release/scale [N...] [--password N] [--idle SECS] [--conn-limit L] [--hold]`
//!
//! Defaults: N = 25 50 100 200, and 100 with `--password`; 120 s idle (past
//! 32 peers heartbeat rounds lengthen, up to 60 s in the sleeve: a shorter
//! window may hold no round at all). With `--conn-limit` below N-1 there is
//! no full mesh: the time is until every router reaches every other peer.
//! `WEAVE_SCALE_LOGS=DIR` keeps each router's log there. `--hold` keeps the
//! mesh up after measuring, until interrupted, to profile a router in it.
//! `WEAVE_SCALE_ARGS` adds launch arguments to every router (split at
//! whitespace), e.g. `--log-level info,weave_gossip::driver=debug`, whose
//! "load" lines every 10 s tell what each router holds.

use std::time::Duration;

use weave_benches::scale::{run, stop_on_signals, weave_binary, ScaleConfig};

fn main() {
    let mut ns = Vec::new();
    let mut with_password = Vec::new();
    let mut idle = Duration::from_secs(120);
    let mut conn_limit = None;
    let mut hold = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |what: &str| args.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or_else(|| panic!("{what} takes a number"));
        match a.as_str() {
            "--password" => with_password.push(num("--password") as usize),
            "--idle" => idle = Duration::from_secs(num("--idle")),
            "--conn-limit" => conn_limit = Some(num("--conn-limit") as usize),
            "--hold" => hold = true,
            n => ns.push(n.parse::<usize>().unwrap_or_else(|_| panic!("not a number of routers: {n}"))),
        }
    }
    if ns.is_empty() && with_password.is_empty() {
        ns = vec![25, 50, 100, 200];
        with_password = vec![100];
    }
    stop_on_signals();
    let weave = weave_binary().expect("build the weave binary next to this one: cargo build --release -p weave-examples");
    let goal = match conn_limit {
        Some(l) => format!("every peer reached s (after last launch; conn-limit {l})"),
        None => "full mesh s (after last launch)".to_owned(),
    };
    println!("| N | password | launch s | {goal} | established min/med/max | RSS MB min/med/max | idle CPU % of a core, med/max | idle B/s med/max |");
    println!("|---|---|---|---|---|---|---|---|");
    let runs = ns.iter().map(|n| (*n, false)).chain(with_password.iter().map(|n| (*n, true)));
    for (n, password) in runs {
        let timeout = Duration::from_secs(60 + n as u64);
        let cfg = ScaleConfig { n, password, conn_limit, converge_timeout: timeout, idle, weave: weave.clone(), hold };
        match run(&cfg) {
            Ok(r) => println!(
                "| {} | {} | {:.1} | {} | {}/{}/{} | {:.0}/{:.0}/{:.0} | {:.2}/{:.2} | {:.0}/{:.0} |",
                r.n,
                if r.password { "yes" } else { "no" },
                r.launch.as_secs_f64(),
                r.full_mesh.map_or(format!("not within {} s", timeout.as_secs()), |d| format!("{:.1}", d.as_secs_f64())),
                r.established.0,
                r.established.1,
                r.established.2,
                r.rss_mb.0,
                r.rss_mb.1,
                r.rss_mb.2,
                r.idle_cpu_pct.0,
                r.idle_cpu_pct.1,
                r.idle_bytes_per_s.0,
                r.idle_bytes_per_s.1,
            ),
            Err(e) if e == "interrupted" => break,
            Err(e) => println!("| {n} | {} | failed: {e} |", if password { "yes" } else { "no" }),
        }
    }
}
