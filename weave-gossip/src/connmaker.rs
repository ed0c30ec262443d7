//! Whom to dial, and when. Sans-IO.
//!
//! Targets are direct (`weave connect`, launch arguments) or discovered
//! (listen addresses of peers learnt through gossip, when discovery is on).
//! A target already covered by a connection — ours or an inbound one from
//! that address — is not dialed. Failed dials back off exponentially, with
//! jitter, up to a cap; self-connections and name collisions are never
//! retried. Nothing is dialed while the connection limit is reached.
//!
//! A peer at its own limit refers us to others and closes
//! ([`ConnectionMaker::referred`]): it is dialed again only after a growing
//! pause, and the peers it named are dialed at once (when discovery is on)
//! until a connection brings a topology to discover peers from.
//!
//! Call order: [`ConnectionMaker::set_connected`] whenever the set of
//! connections changes, [`ConnectionMaker::set_discovered`] whenever the
//! topology does; then dial every address [`ConnectionMaker::poll_dial`]
//! returns and report the outcome with [`ConnectionMaker::dial_failed`] (or
//! via `set_connected` on success); wake at [`ConnectionMaker::poll_timeout`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rand::Rng;
use weave_core::rng::SimRng;

/// Connection-maker settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnMakerConfig {
    /// Port used when a target names none (default 6783).
    pub default_port: u16,
    /// Dial peers learnt through gossip (default on).
    pub discovery: bool,
    /// Most connections, inbound and outbound together (default 200).
    pub conn_limit: usize,
    /// First retry delay (default 1 s).
    pub backoff_initial: Duration,
    /// Retry delay cap (default 60 s).
    pub backoff_max: Duration,
    /// How long a discovered peer that should dial us first is given
    /// before we dial it (default 3 s; see [`ConnectionMaker::set_discovered`]).
    pub discovery_defer: Duration,
}

impl Default for ConnMakerConfig {
    fn default() -> Self {
        Self {
            default_port: 6783,
            discovery: true,
            conn_limit: 200,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            discovery_defer: Duration::from_secs(3),
        }
    }
}

/// A target that is not `host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid peer address {0:?}: expected host[:port]")]
pub struct InvalidTarget(pub String);

/// Where a target stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetState {
    /// Waiting to be dialed at the given time.
    Retrying(Instant),
    /// A dial is in progress.
    Connecting,
    /// A connection to it exists.
    Connected,
    /// Never retried (self-connection, name collision).
    Failed,
}

/// One target, for status.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TargetStatus {
    /// `host:port`.
    pub address: String,
    /// Named by the user rather than discovered.
    pub direct: bool,
    /// Where it stands.
    pub state: TargetState,
    /// Failed attempts since the last success.
    pub attempts: u32,
    /// The last failure.
    pub last_error: Option<String>,
}

#[derive(Debug)]
struct Target {
    direct: bool,
    discovered: bool,
    /// Named by a peer at its limit; kept until we have a connection.
    referred: bool,
    /// Referrals in a row from this target (not reset by the brief
    /// connection each one comes on).
    full: u32,
    state: TargetState,
    attempts: u32,
    last_error: Option<String>,
}

/// The connection maker. See the module docs for the call order.
pub struct ConnectionMaker {
    cfg: ConnMakerConfig,
    targets: BTreeMap<String, Target>,
    connected: BTreeSet<String>,
    active: usize,
    rng: SimRng,
    /// Bumped whenever the targets change (see [`Self::generation`]).
    generation: u64,
}

impl ConnectionMaker {
    /// A connection maker with no targets.
    pub fn new(cfg: ConnMakerConfig, rng: SimRng) -> Self {
        Self { cfg, targets: BTreeMap::new(), connected: BTreeSet::new(), active: 0, rng, generation: 0 }
    }

    /// Changes whenever targets are added, forgotten or discovered: a
    /// caller may skip [`Self::set_connected`] while neither this nor what
    /// it would pass changed.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The settings.
    pub fn config(&self) -> &ConnMakerConfig {
        &self.cfg
    }

    /// `host` or `host:port` or `[v6]:port` as `host:port`.
    pub fn normalize(&self, addr: &str) -> Result<String, InvalidTarget> {
        let bad = || InvalidTarget(addr.to_owned());
        let addr = addr.trim();
        if addr.is_empty() || addr.contains(char::is_whitespace) {
            return Err(bad());
        }
        if let Some(rest) = addr.strip_prefix('[') {
            let (host, tail) = rest.split_once(']').ok_or_else(bad)?;
            let port = match tail.strip_prefix(':') {
                Some(p) => p.parse::<u16>().map_err(|_| bad())?,
                None if tail.is_empty() => self.cfg.default_port,
                None => return Err(bad()),
            };
            return Ok(format!("[{host}]:{port}"));
        }
        match addr.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => Ok(format!("[{addr}]:{}", self.cfg.default_port)),
            Some((host, port)) if !host.is_empty() => {
                let port = port.parse::<u16>().map_err(|_| bad())?;
                Ok(format!("{host}:{port}"))
            }
            Some(_) => Err(bad()),
            None => Ok(format!("{addr}:{}", self.cfg.default_port)),
        }
    }

    /// Add direct targets; with `replace`, direct targets not listed are
    /// dropped first.
    pub fn connect(&mut self, now: Instant, addrs: &[String], replace: bool) -> Result<(), InvalidTarget> {
        self.generation += 1;
        let addrs = addrs.iter().map(|a| self.normalize(a)).collect::<Result<Vec<_>, _>>()?;
        if replace {
            for t in self.targets.values_mut() {
                t.direct = false;
            }
        }
        for a in addrs {
            let connected = self.connected.contains(&a);
            let t = self.targets.entry(a).or_insert_with(|| Target {
                direct: true,
                discovered: false,
                referred: false,
                full: 0,
                state: if connected { TargetState::Connected } else { TargetState::Retrying(now) },
                attempts: 0,
                last_error: None,
            });
            t.direct = true;
            if t.state == TargetState::Failed {
                // Asked again explicitly: try once more.
                t.state = TargetState::Retrying(now);
            }
        }
        self.prune();
        Ok(())
    }

    /// Drop direct targets (an existing connection stays up).
    pub fn forget(&mut self, addrs: &[String]) -> Result<(), InvalidTarget> {
        self.generation += 1;
        for a in addrs {
            let a = self.normalize(a)?;
            if let Some(t) = self.targets.get_mut(&a) {
                t.direct = false;
            }
        }
        self.prune();
        Ok(())
    }

    fn prune(&mut self) {
        self.targets.retain(|_, t| t.direct || t.discovered || t.referred);
    }

    /// The direct targets, for `--resume` and status.
    pub fn direct_targets(&self) -> Vec<String> {
        self.targets.iter().filter(|(_, t)| t.direct).map(|(a, _)| a.clone()).collect()
    }

    /// Replace the discovered targets (ignored when discovery is off). A
    /// new target is dialed at once if `eager`, else after
    /// [`ConnMakerConfig::discovery_defer`] (scaled by a random factor in
    /// [1, 2)), unless it connects to us meanwhile.
    pub fn set_discovered(&mut self, now: Instant, addrs: impl IntoIterator<Item = (String, bool)>) {
        self.generation += 1;
        if !self.cfg.discovery {
            return;
        }
        // Once the topology names peers, discovery takes over from
        // referrals.
        let mut addrs = addrs.into_iter().peekable();
        let referrals_done = addrs.peek().is_some();
        for t in self.targets.values_mut() {
            t.discovered = false;
            t.referred &= !referrals_done;
        }
        // No more discovered targets than connections we may hold.
        let mut room = self.cfg.conn_limit;
        for (a, eager) in addrs {
            let Ok(a) = self.normalize(&a) else { continue };
            if room == 0 {
                break;
            }
            room -= 1;
            let connected = self.connected.contains(&a);
            let due = if eager { now } else { now + self.cfg.discovery_defer.mul_f64(self.rng.random_range(1.0..2.0)) };
            self.targets
                .entry(a)
                .or_insert_with(|| Target {
                    direct: false,
                    discovered: true,
                    referred: false,
                    full: 0,
                    state: if connected { TargetState::Connected } else { TargetState::Retrying(due) },
                    attempts: 0,
                    last_error: None,
                })
                .discovered = true;
        }
        self.prune();
    }

    /// The listen addresses of all current connections, and how many
    /// connections there are (for the limit).
    pub fn set_connected(&mut self, now: Instant, addrs: BTreeSet<String>, active: usize) {
        self.active = active;
        for (a, t) in &mut self.targets {
            let is = addrs.contains(a);
            match (&t.state, is) {
                (TargetState::Failed, _) => {}
                (_, true) => {
                    t.state = TargetState::Connected;
                    t.attempts = 0;
                }
                (TargetState::Connected, false) => {
                    // It closed without a referral (that moves it out of
                    // Connected first): it had room.
                    t.full = 0;
                    t.state = TargetState::Retrying(now + backoff(self.cfg.backoff_initial, self.cfg.backoff_max, &mut self.rng, 0));
                }
                _ => {}
            }
        }
        self.connected = addrs;
    }

    /// The peer behind `from` (our dial, if it was one) is at its
    /// connection limit and named `addrs` instead. `from` waits longer with
    /// each referral in a row; with discovery on, each of `addrs` not yet a
    /// target is dialed at once, up to the connection limit, until the
    /// topology names peers to discover ([`Self::set_discovered`]).
    pub fn referred(&mut self, now: Instant, from: Option<&str>, addrs: &[String]) {
        self.generation += 1;
        if let Some(t) = from.and_then(|f| self.targets.get_mut(f)) {
            t.full = t.full.saturating_add(1);
            t.last_error = Some("at its connection limit; it referred us to other peers".into());
            // Up to five times the usual cap: a full peer rarely frees a
            // slot soon, and every retry costs it a handshake.
            let max = self.cfg.backoff_max.saturating_mul(5);
            t.state = TargetState::Retrying(now + backoff(self.cfg.backoff_initial, max, &mut self.rng, t.full));
        }
        if !self.cfg.discovery {
            return;
        }
        let mut room = self.cfg.conn_limit.saturating_sub(self.targets.values().filter(|t| t.referred).count());
        for a in addrs {
            let Ok(a) = self.normalize(a) else { continue };
            if room == 0 {
                break;
            }
            if let Some(t) = self.targets.get_mut(&a) {
                t.referred = true;
                continue;
            }
            room -= 1;
            let state = if self.connected.contains(&a) { TargetState::Connected } else { TargetState::Retrying(now) };
            self.targets.insert(a, Target { direct: false, discovered: false, referred: true, full: 0, state, attempts: 0, last_error: None });
        }
    }

    /// A dial (or its handshake) failed.
    pub fn dial_failed(&mut self, now: Instant, addr: &str, reason: String, permanent: bool) {
        let Some(t) = self.targets.get_mut(addr) else { return };
        t.attempts = t.attempts.saturating_add(1);
        t.last_error = Some(reason);
        t.state = if permanent {
            TargetState::Failed
        } else if self.connected.contains(addr) {
            TargetState::Connected
        } else {
            TargetState::Retrying(now + backoff(self.cfg.backoff_initial, self.cfg.backoff_max, &mut self.rng, t.attempts))
        };
    }

    /// The next target to dial now, marked as connecting.
    pub fn poll_dial(&mut self, now: Instant) -> Option<String> {
        if self.active >= self.cfg.conn_limit {
            return None;
        }
        let (a, t) = self.targets.iter_mut().find(|(_, t)| matches!(t.state, TargetState::Retrying(at) if at <= now))?;
        t.state = TargetState::Connecting;
        self.active += 1;
        Some(a.clone())
    }

    /// When a target next becomes due (never while the limit is reached:
    /// a closing connection is reported through `set_connected`).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.active >= self.cfg.conn_limit {
            return None;
        }
        self.targets
            .values()
            .filter_map(|t| match t.state {
                TargetState::Retrying(at) => Some(at),
                _ => None,
            })
            .min()
    }

    /// Every target.
    pub fn targets(&self) -> Vec<TargetStatus> {
        self.targets
            .iter()
            .map(|(a, t)| TargetStatus { address: a.clone(), direct: t.direct, state: t.state.clone(), attempts: t.attempts, last_error: t.last_error.clone() })
            .collect()
    }
}

/// Delay before retry number `attempts`: doubling from the initial delay,
/// capped, scaled by a random factor in [0.5, 1.0].
fn backoff(initial: Duration, max: Duration, rng: &mut SimRng, attempts: u32) -> Duration {
    let exp = initial.saturating_mul(1u32 << attempts.min(20));
    exp.min(max).mul_f64(rng.random_range(0.5..=1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use weave_core::rng::seeded;

    fn cm(discovery: bool) -> ConnectionMaker {
        ConnectionMaker::new(ConnMakerConfig { discovery, ..ConnMakerConfig::default() }, seeded(5))
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn addresses_are_normalized_with_the_default_port() {
        let c = cm(true);
        assert_eq!(c.normalize("10.0.0.1").unwrap(), "10.0.0.1:6783");
        assert_eq!(c.normalize("host:99").unwrap(), "host:99");
        assert_eq!(c.normalize("[::1]:7").unwrap(), "[::1]:7");
        assert_eq!(c.normalize("::1").unwrap(), "[::1]:6783");
        for bad in ["", "a:b", ":5", "a b", "[::1]x", "h:70000"] {
            assert!(c.normalize(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn failed_dials_back_off_exponentially_up_to_the_cap() {
        let mut c = cm(true);
        let t0 = Instant::now();
        c.connect(t0, &s(&["a"]), false).unwrap();
        let mut now = t0;
        let mut delays = Vec::new();
        for _ in 0..10 {
            let a = c.poll_dial(now).expect("due");
            c.dial_failed(now, &a, "refused".into(), false);
            c.set_connected(now, BTreeSet::new(), 0);
            let next = c.poll_timeout().unwrap();
            delays.push(next - now);
            assert_eq!(c.poll_dial(now), None, "not before the backoff");
            now = next;
        }
        assert!(delays[1] > delays[0].mul_f64(0.9) || delays[1] >= Duration::from_secs(1));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(60)));
        assert!(delays[9] >= Duration::from_secs(30), "capped near 60 s: {:?}", delays[9]);
    }

    #[test]
    fn permanent_failures_are_never_retried() {
        let mut c = cm(true);
        let t0 = Instant::now();
        c.connect(t0, &s(&["a"]), false).unwrap();
        let a = c.poll_dial(t0).unwrap();
        c.dial_failed(t0, &a, "cannot connect to ourself".into(), true);
        assert_eq!(c.poll_timeout(), None);
        assert_eq!(c.targets()[0].state, TargetState::Failed);
    }

    #[test]
    fn targets_covered_by_a_connection_are_skipped() {
        let mut c = cm(true);
        let t0 = Instant::now();
        c.set_connected(t0, BTreeSet::from(["b:6783".to_string()]), 1);
        c.connect(t0, &s(&["b"]), false).unwrap();
        assert_eq!(c.poll_dial(t0), None);
    }

    #[test]
    fn conn_limit_stops_dialing() {
        let mut c = ConnectionMaker::new(ConnMakerConfig { conn_limit: 1, ..ConnMakerConfig::default() }, seeded(1));
        let t0 = Instant::now();
        c.connect(t0, &s(&["a", "b"]), false).unwrap();
        assert!(c.poll_dial(t0).is_some());
        assert_eq!(c.poll_dial(t0), None);
    }

    #[test]
    fn discovery_adds_targets_only_when_enabled_and_forget_drops_direct_ones() {
        let t0 = Instant::now();
        let mut off = cm(false);
        off.set_discovered(t0, [("x:1".to_owned(), true)]);
        assert!(off.targets().is_empty());
        let mut on = cm(true);
        on.set_discovered(t0, [("x:1".to_owned(), true)]);
        assert_eq!(on.targets().len(), 1);
        on.connect(t0, &s(&["y"]), false).unwrap();
        on.forget(&s(&["y"])).unwrap();
        assert_eq!(on.direct_targets(), Vec::<String>::new());
        on.connect(t0, &s(&["y", "z"]), false).unwrap();
        on.connect(t0, &s(&["w"]), true).unwrap();
        assert_eq!(on.direct_targets(), s(&["w:6783"]));
    }

    #[test]
    fn a_full_peer_is_retried_later_each_time_and_the_peers_it_names_at_once() {
        let t0 = Instant::now();
        let mut c = ConnectionMaker::new(ConnMakerConfig { conn_limit: 3, ..ConnMakerConfig::default() }, seeded(2));
        c.connect(t0, &["seed:1".to_owned()], false).unwrap();
        let mut waits = Vec::new();
        let mut now = t0;
        for round in 0..4 {
            // Connected for a moment, referred, closed.
            c.set_connected(now, BTreeSet::from(["seed:1".to_owned()]), 1);
            let named: Vec<String> = (0..5).map(|i| format!("p{i}:1")).collect();
            c.referred(now, Some("seed:1"), &named);
            c.set_connected(now, BTreeSet::new(), 0);
            let due = c.targets().into_iter().find(|t| t.address == "seed:1").map(|t| t.state).unwrap();
            let TargetState::Retrying(at) = due else { panic!("{due:?}") };
            waits.push(at - now);
            // The named peers, up to the limit, are due at once.
            let referred: Vec<String> = c.targets().into_iter().filter(|t| !t.direct).map(|t| t.address).collect();
            assert_eq!(referred.len(), 3, "round {round}: {referred:?}");
            now = at;
        }
        assert!(waits.windows(2).all(|w| w[1] > w[0]), "the pause grows: {waits:?}");
        // A connection that brings a topology hands over to discovery.
        c.set_discovered(now, [("q:1".to_owned(), true)]);
        let left: Vec<String> = c.targets().into_iter().map(|t| t.address).collect();
        assert_eq!(left, ["q:1", "seed:1"]);
        // Without discovery, a referral names no one to dial.
        let mut off = cm(false);
        off.referred(t0, None, &["p:1".to_owned()]);
        assert!(off.targets().is_empty());
    }

    #[test]
    fn discovered_targets_are_capped_at_the_connection_limit() {
        let t0 = Instant::now();
        let mut c = ConnectionMaker::new(ConnMakerConfig { discovery: true, conn_limit: 10, ..ConnMakerConfig::default() }, seeded(1));
        c.set_discovered(t0, (0..5000).map(|i| (format!("10.{}.{}.{}:6783", i >> 16, (i >> 8) & 255, i & 255), true)));
        assert_eq!(c.targets().len(), 10);
    }
}
