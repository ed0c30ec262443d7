//! One peer's IPAM: allocation from owned space, claims, frees, space
//! requests and donation, rmpeer, hand-off on leaving, and triggering the
//! initial division. Sans-IO.
//!
//! Call order: feed gossip and unicast messages of the IPAM channel to
//! [`Ipam::handle_gossip`] / [`Ipam::handle_unicast`], tell it which peers
//! are reachable ([`Ipam::set_reachable`]), call [`Ipam::handle_timeout`] at
//! [`Ipam::poll_timeout`]; after each call send what [`Ipam::poll_output`]
//! returns and report what [`Ipam::poll_completion`] returns to whoever
//! waits on a pending request.
//!
//! Safety rule: a peer hands out only addresses in space the ring says it
//! owns, and records each one before returning it. Since the ring never
//! lets two peers own one address once merged (see [`crate::ring`]), no
//! address is handed to two containers.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use weave_core::PeerName;
use weave_gossip::identity::{Identity, PeerKey};

use crate::auth::KeyBook;
use crate::paxos::Paxos;
use crate::ring::{Entry, Ring, RingError};
use crate::wire::{self, AllocMsg, Body, ClaimRefused, ClaimRequest, DecodeError, HandoffAck, KeyMsg, SnapshotMsg, SpaceRequest, StateMsg, TakeoverRequest};

/// How the initial division is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitMode {
    /// Paxos among the peers, needing `quorum` votes.
    Consensus {
        /// Votes needed: `N/2 + 1` for `--ipalloc-init consensus=N`.
        quorum: usize,
    },
    /// These peers divide the range, no vote needed.
    Seeds(Vec<PeerName>),
    /// Never vote; may ask the voters to hold an election.
    Observer,
}

/// IPAM settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct IpamConfig {
    /// Our key: the mesh's (the one our topology record carries), so
    /// peers accept what we sign.
    pub identity: Identity,
    /// Our name.
    pub ourself: PeerName,
    /// The allocation range (default 10.32.0.0/12).
    pub range: Ipv4Net,
    /// Subnet for `net:default` (default: the range).
    pub default_subnet: Ipv4Net,
    /// How the initial division is made.
    pub init: InitMode,
    /// Pending requests are retried this often (default 2 s).
    pub retry_interval: Duration,
}

impl IpamConfig {
    /// Defaults for `range`, signing with `identity` (the mesh's key).
    pub fn new(identity: Identity, ourself: PeerName, range: Ipv4Net, init: InitMode) -> Self {
        Self { identity, ourself, range, default_subnet: range, init, retry_interval: Duration::from_secs(2) }
    }
}

/// Identifies a pending request.
pub type RequestId = u64;

/// An operation that completed at once or is pending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done: the address, with the subnet's prefix.
    Done(Ipv4Net),
    /// Will complete later through [`Ipam::poll_completion`].
    Pending(RequestId),
}

/// A pending request finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// It got an address.
    Done(RequestId, Ipv4Net),
    /// It failed.
    Failed(RequestId, IpamError),
    /// A hand-off was acknowledged by the heir.
    HandedOff(PeerName),
}

/// Why an IPAM operation failed. Nothing changed when one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IpamError {
    /// The range cannot hold a ring.
    #[error("invalid allocation range {0}: need a prefix of /1 to /30")]
    InvalidRange(Ipv4Net),
    /// A subnet not inside the allocation range.
    #[error("subnet {subnet} is not inside the allocation range {range}")]
    SubnetOutsideRange {
        /// The subnet.
        subnet: Ipv4Net,
        /// The range.
        range: Ipv4Net,
    },
    /// The address is taken.
    #[error("address {addr} is already in use by {container}")]
    InUse {
        /// The address.
        addr: Ipv4Addr,
        /// Who has it.
        container: String,
    },
    /// Its owner refused to give the claimed address.
    #[error("claim of {addr} refused by its owner {owner}: {reason}")]
    ClaimRefused {
        /// The address.
        addr: Ipv4Addr,
        /// The owner.
        owner: PeerName,
        /// Why.
        reason: String,
    },
    /// The request was cancelled.
    #[error("request cancelled")]
    Cancelled,
    /// rmpeer of ourselves.
    #[error("cannot rmpeer ourselves; use `weave reset` to leave")]
    RmpeerSelf,
    /// rmpeer of a peer we can still reach.
    #[error("{0} is reachable, so not dead; rmpeer only peers that are gone for good")]
    RmpeerAlive(PeerName),
    /// rmpeer before the mesh has said who is reachable.
    #[error("cannot rmpeer before knowing which peers are reachable; try again once the router is connected")]
    RmpeerReachabilityUnknown,
    /// rmpeer while other owners are out of reach: they may hold a newer
    /// view of the dead peer's space (a donation it made before dying).
    #[error("cannot rmpeer while {0:?} are unreachable: name every dead peer in one rmpeer, or run it where the others are reachable")]
    RmpeerPartialView(Vec<PeerName>),
    /// A received ring was refused.
    #[error(transparent)]
    Ring(#[from] RingError),
    /// A received message could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Something to send on the IPAM channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Gossip our state to the mesh.
    Gossip(Vec<u8>),
    /// Send to one peer.
    Unicast(PeerName, Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Allocate { container: String, subnet: Ipv4Net },
    Claim { container: String, addr: u32, subnet: Ipv4Net },
}

#[derive(Debug, Clone)]
struct Pending {
    op: Op,
    asked: Option<PeerName>,
}

/// A request waiting for address space (for `weave report`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PendingRequest {
    /// The request.
    pub id: RequestId,
    /// Whose.
    pub container: String,
    /// The subnet asked in.
    pub subnet: Ipv4Net,
    /// The exact address, for a claim.
    pub addr: Option<Ipv4Addr>,
}

/// Status, with the strings `weave status ipam` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct IpamStatus {
    /// `idle`, `ready`, `awaiting consensus (...)`, ...
    pub status: String,
    /// The range.
    pub range: Ipv4Net,
    /// The default subnet.
    pub default_subnet: Ipv4Net,
    /// Addresses in the range.
    pub range_num_ips: u64,
    /// Addresses we have handed out.
    pub active_ips: usize,
    /// The ring.
    pub entries: Vec<Entry>,
    /// Addresses by container.
    pub owned: BTreeMap<String, Vec<Ipv4Net>>,
    /// Claims waiting.
    pub pending_claims: usize,
    /// Allocations waiting.
    pub pending_allocates: usize,
}

/// One peer's IPAM. See the module docs for the call order.
#[derive(Debug, Clone)]
pub struct Ipam {
    cfg: IpamConfig,
    ring: Ring,
    paxos: Paxos,
    /// Peers' keys, for checking ring entries and votes.
    book: KeyBook,
    election_requested: bool,
    wants_init: bool,
    used: BTreeMap<u32, (String, Ipv4Net)>,
    outside: BTreeMap<u32, (String, Ipv4Net)>,
    /// (container, address) for every address in `used` or `outside`.
    by_container: BTreeSet<(String, u32)>,
    pending: BTreeMap<RequestId, Pending>,
    next_id: RequestId,
    reachable: Option<BTreeSet<PeerName>>,
    handoff: Option<PeerName>,
    out: VecDeque<Output>,
    done: VecDeque<Completion>,
    next_retry: Option<Instant>,
    /// Our state changed: gossip it.
    dirty: bool,
    /// The ring changed: re-check held addresses, drop search hints.
    ring_changed: bool,
    /// Allocations changed: publish free counts (at most once per interval).
    free_dirty: bool,
    next_publish: Option<Instant>,
    /// Per subnet, an address below which nothing we own is free.
    hints: BTreeMap<Ipv4Net, u32>,
    /// We merged a ring from a peer (seed mode waits for one when peers
    /// are reachable, so a restart without state does not reuse space it
    /// gave away before).
    heard_ring: bool,
    /// Seed mode initialises on its own at this time if nothing was heard.
    seed_deadline: Option<Instant>,
    /// The highest ballot at the last retry: re-propose only if stuck.
    last_ballot: crate::paxos::Ballot,
    /// Bumped on every change worth persisting.
    generation: u64,
}

/// `[start, end)` of a network; `None` if it ends at 2^32 (the last
/// address, 255.255.255.255, would be inside).
fn checked_bounds(net: Ipv4Net) -> Option<(u32, u32)> {
    let start = u32::from(net.network());
    let end = u64::from(start) + (1u64 << (32 - net.prefix_len()));
    Some((start, u32::try_from(end).ok()?))
}

/// Bounds of a network already checked by [`Ipam::new`] / `check_subnet`.
fn bounds(net: Ipv4Net) -> (u32, u32) {
    checked_bounds(net).expect("subnets are checked to end below 2^32")
}

impl Ipam {
    /// IPAM over `cfg.range`, not yet initialised.
    pub fn new(cfg: IpamConfig) -> Result<Self, IpamError> {
        let r = cfg.range.trunc();
        if r.prefix_len() == 0 || r.prefix_len() > 30 || checked_bounds(r).is_none() {
            return Err(IpamError::InvalidRange(cfg.range));
        }
        Self::check_subnet(&cfg, cfg.default_subnet)?;
        let (start, end) = bounds(r);
        let (quorum, observer) = match &cfg.init {
            InitMode::Consensus { quorum } => (*quorum, false),
            InitMode::Seeds(_) => (1, false),
            InitMode::Observer => (1, true),
        };
        Ok(Self {
            ring: Ring::new(start, end),
            paxos: Paxos::new(cfg.ourself, cfg.identity.clone(), quorum, observer),
            book: KeyBook::new(cfg.ourself, &cfg.identity),
            cfg,
            election_requested: false,
            wants_init: false,
            used: BTreeMap::new(),
            outside: BTreeMap::new(),
            by_container: BTreeSet::new(),
            pending: BTreeMap::new(),
            next_id: 1,
            reachable: None,
            handoff: None,
            out: VecDeque::new(),
            done: VecDeque::new(),
            next_retry: None,
            dirty: false,
            ring_changed: false,
            free_dirty: false,
            next_publish: None,
            hints: BTreeMap::new(),
            heard_ring: false,
            seed_deadline: None,
            last_ballot: crate::paxos::Ballot::default(),
            generation: 0,
        })
    }

    fn check_subnet(cfg: &IpamConfig, subnet: Ipv4Net) -> Result<(), IpamError> {
        let range = cfg.range.trunc();
        if !range.contains(&subnet.trunc()) || subnet.prefix_len() > 30 || checked_bounds(subnet.trunc()).is_none() {
            return Err(IpamError::SubnetOutsideRange { subnet, range });
        }
        Ok(())
    }

    /// Our name.
    pub fn name(&self) -> PeerName {
        self.cfg.ourself
    }

    /// The ring.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// Addresses in use, by address, with their container.
    pub fn allocations(&self) -> impl Iterator<Item = (Ipv4Net, &str)> + '_ {
        self.used.values().chain(self.outside.values()).map(|(c, a)| (*a, c.as_str()))
    }

    /// The peers the mesh can reach now (donors are chosen among them, and
    /// only their votes count). A change is acted on at once: a peer that
    /// became reachable may complete a quorum whose votes are already here,
    /// and no message may come to prompt it.
    pub fn set_reachable(&mut self, now: Instant, peers: BTreeSet<PeerName>) {
        if self.reachable.as_ref() == Some(&peers) {
            return;
        }
        self.paxos.set_counted(peers.clone());
        self.reachable = Some(peers);
        self.flush(now);
    }

    /// `peer`'s key as the topology pins it (what it signs must verify
    /// with it).
    pub fn learn_key(&mut self, peer: PeerName, key: PeerKey) {
        self.book.learn(peer, key);
    }

    /// Ring entries and votes refused so far for want of authority.
    pub fn refused(&self) -> u64 {
        self.book.refused
    }

    fn is_reachable(&self, p: PeerName) -> bool {
        self.reachable.as_ref().is_none_or(|r| r.contains(&p))
    }

    /// Start the initial division if it has not happened (`weave prime`).
    pub fn prime(&mut self, now: Instant) {
        self.ensure_init(now);
        self.flush(now);
    }

    /// Allocate the lowest free address of `subnet` (the default subnet if
    /// `None`) for `container`; idempotent per (container, subnet).
    pub fn allocate(&mut self, now: Instant, container: &str, subnet: Option<Ipv4Net>) -> Result<Outcome, IpamError> {
        let subnet = subnet.unwrap_or(self.cfg.default_subnet).trunc();
        Self::check_subnet(&self.cfg, subnet)?;
        let op = Op::Allocate { container: container.to_owned(), subnet };
        let r = self.start(now, op, true);
        self.flush(now);
        r
    }

    /// Claim `addr` (as `ip/prefix`) for `container`. Outside the range it
    /// is recorded locally only.
    pub fn claim(&mut self, now: Instant, container: &str, addr: Ipv4Net) -> Result<Outcome, IpamError> {
        self.claim_as(now, container, addr, true)
    }

    /// Claim an address found in use on this host at start (after state was
    /// lost): as [`Ipam::claim`], but it never starts the ring's
    /// initialisation itself. Until the ring is known the claim waits,
    /// reserved (nothing else is given that address, nor is it donated),
    /// and it completes first once the ring arrives.
    pub fn reserve(&mut self, now: Instant, container: &str, addr: Ipv4Net) -> Result<Outcome, IpamError> {
        self.claim_as(now, container, addr, false)
    }

    fn claim_as(&mut self, now: Instant, container: &str, addr: Ipv4Net, init: bool) -> Result<Outcome, IpamError> {
        let a = u32::from(addr.addr());
        let (start, end) = (self.ring.start(), self.ring.end());
        if a < start || a >= end {
            if let Some((c, _)) = self.outside.get(&a).filter(|(c, _)| c != container) {
                return Err(IpamError::InUse { addr: addr.addr(), container: c.clone() });
            }
            self.hold(a, container, addr);
            return Ok(Outcome::Done(addr));
        }
        let op = Op::Claim { container: container.to_owned(), addr: a, subnet: addr };
        let r = self.start(now, op, init);
        self.flush(now);
        r
    }

    fn start(&mut self, now: Instant, op: Op, init: bool) -> Result<Outcome, IpamError> {
        if init {
            self.ensure_init(now);
        }
        match self.attempt(&op)? {
            Some(addr) => Ok(Outcome::Done(addr)),
            None => {
                let id = self.next_id;
                self.next_id += 1;
                self.pending.insert(id, Pending { op, asked: None });
                self.ask_for_space(id);
                self.next_retry.get_or_insert(now + self.cfg.retry_interval);
                Ok(Outcome::Pending(id))
            }
        }
    }

    /// Try to complete `op` from what we own: `Ok(None)` to wait.
    fn attempt(&mut self, op: &Op) -> Result<Option<Ipv4Net>, IpamError> {
        if !self.ring.is_initialised() {
            return Ok(None);
        }
        match op {
            Op::Allocate { container, subnet } => {
                let (lo, hi) = bounds(*subnet);
                let mine = self.by_container.range((container.clone(), lo)..(container.clone(), hi)).next();
                if let Some((_, a)) = mine {
                    return Ok(Some(self.used[a].1));
                }
                let Some(addr) = self.lowest_free(*subnet) else { return Ok(None) };
                let net = Ipv4Net::new(Ipv4Addr::from(addr), subnet.prefix_len()).expect("prefix checked");
                self.hold(addr, container, net);
                self.hints.insert(*subnet, addr + 1);
                self.free_dirty = true;
                Ok(Some(net))
            }
            Op::Claim { container, addr, subnet } => {
                if let Some((c, net)) = self.used.get(addr) {
                    return if c == container { Ok(Some(*net)) } else { Err(IpamError::InUse { addr: Ipv4Addr::from(*addr), container: c.clone() }) };
                }
                if self.ring.owner(*addr) != Some(self.cfg.ourself) {
                    return Ok(None);
                }
                self.hold(*addr, container, *subnet);
                self.free_dirty = true;
                Ok(Some(*subnet))
            }
        }
    }

    fn usable(subnet: Ipv4Net) -> (u32, u32) {
        let (lo, hi) = bounds(subnet);
        // Skip the subnet's network and broadcast addresses.
        (lo + 1, hi - 1)
    }

    fn lowest_free(&self, subnet: Ipv4Net) -> Option<u32> {
        let (lo, hi) = Self::usable(subnet);
        let lo = lo.max(self.hints.get(&subnet).copied().unwrap_or(0));
        let reserved = self.pending_claims();
        for (a, b) in self.ring.owned_by(self.cfg.ourself) {
            let (s, e) = (a.max(lo), b.min(hi));
            if s >= e {
                continue;
            }
            let mut cand = s;
            for (&u, _) in self.used.range(s..e) {
                while cand < u && reserved.contains(&cand) {
                    cand += 1;
                }
                if u != cand {
                    break;
                }
                cand += 1;
            }
            while cand < e && reserved.contains(&cand) {
                cand += 1;
            }
            if cand < e && !self.used.contains_key(&cand) {
                return Some(cand);
            }
        }
        None
    }

    /// Addresses pending claims wait for: never allocated nor donated.
    fn pending_claims(&self) -> BTreeSet<u32> {
        self.pending
            .values()
            .filter_map(|p| match p.op {
                Op::Claim { addr, .. } => Some(addr),
                Op::Allocate { .. } => None,
            })
            .collect()
    }

    /// Free `addr` if `container` holds it.
    pub fn free(&mut self, now: Instant, container: &str, addr: Ipv4Addr) -> bool {
        let a = u32::from(addr);
        let freed = self.by_container.contains(&(container.to_owned(), a));
        if freed {
            self.release(a);
            self.freed(a);
            self.flush(now);
        }
        freed
    }

    /// Record `addr` as held by `container`.
    fn hold(&mut self, addr: u32, container: &str, net: Ipv4Net) {
        let map = if addr >= self.ring.start() && addr < self.ring.end() { &mut self.used } else { &mut self.outside };
        if let Some((old, _)) = map.insert(addr, (container.to_owned(), net)) {
            self.by_container.remove(&(old, addr));
        }
        self.by_container.insert((container.to_owned(), addr));
        self.generation += 1;
    }

    /// Forget who holds `addr`.
    fn release(&mut self, addr: u32) -> Option<(String, Ipv4Net)> {
        let held = self.used.remove(&addr).or_else(|| self.outside.remove(&addr))?;
        self.by_container.remove(&(held.0.clone(), addr));
        self.generation += 1;
        Some(held)
    }

    /// `a` became free: searches must look at it again.
    fn freed(&mut self, a: u32) {
        for (s, h) in &mut self.hints {
            if s.contains(&Ipv4Addr::from(a)) {
                *h = (*h).min(a);
            }
        }
        self.free_dirty = true;
    }

    /// Free everything `container` holds; returns what was freed.
    pub fn free_all(&mut self, now: Instant, container: &str) -> Vec<Ipv4Net> {
        let addrs: Vec<u32> = self.by_container.range((container.to_owned(), 0)..=(container.to_owned(), u32::MAX)).map(|(_, a)| *a).collect();
        let freed: Vec<Ipv4Net> = addrs.into_iter().filter_map(|a| self.release(a)).map(|(_, n)| n).collect();
        let ids: Vec<RequestId> = self.pending.iter().filter(|(_, p)| op_container(&p.op) == container).map(|(id, _)| *id).collect();
        for id in ids {
            self.cancel(id);
        }
        for a in &freed {
            self.freed(u32::from(a.addr()));
        }
        if !freed.is_empty() {
            self.flush(now);
        }
        freed
    }

    /// Cancel a pending request; it completes as failed.
    pub fn cancel(&mut self, id: RequestId) -> bool {
        if self.pending.remove(&id).is_some() {
            self.done.push_back(Completion::Failed(id, IpamError::Cancelled));
            true
        } else {
            false
        }
    }

    /// Reclaim the space of dead peers. Their ranges go to the owner of the
    /// preceding range (the same heir whoever runs this, so running it on
    /// several peers at once agrees). Refused while a named peer is
    /// reachable, or while another owner is unreachable (its view of the dead
    /// peers' space may be newer than ours). Returns the number of addresses
    /// that moved.
    pub fn rmpeer(&mut self, now: Instant, dead: &[PeerName]) -> Result<u64, IpamError> {
        let me = self.cfg.ourself;
        if dead.contains(&me) {
            return Err(IpamError::RmpeerSelf);
        }
        let Some(reachable) = self.reachable.clone() else {
            return Err(IpamError::RmpeerReachabilityUnknown);
        };
        if let Some(&alive) = dead.iter().find(|&&d| reachable.contains(&d)) {
            return Err(IpamError::RmpeerAlive(alive));
        }
        let unreachable: BTreeSet<PeerName> =
            self.ring.entries().iter().map(|e| e.peer).filter(|&p| p != me && !dead.contains(&p) && !self.is_reachable(p)).collect();
        if !unreachable.is_empty() {
            return Err(IpamError::RmpeerPartialView(unreachable.into_iter().collect()));
        }
        // If a dead peer owned everything, every runner must pick the same
        // heir: the lowest name among the peers it can reach, and itself.
        let fallback = reachable.iter().copied().chain([me]).min().unwrap_or(me);
        let mut moved = 0u64;
        for &d in dead {
            moved += self.ring.owned_by(d).iter().map(|(a, b)| u64::from(b - a)).sum::<u64>();
            // Each heir takes (and signs) its share; we ask the others.
            for heir in self.ring.heirs_of(d, fallback) {
                if heir == me {
                    if self.ring.take_over(&self.cfg.identity, me, d, fallback) > 0 {
                        self.dirty = true;
                        self.ring_changed = true;
                    }
                } else {
                    let ask = TakeoverRequest { dead: d.as_u64(), fallback: fallback.as_u64() };
                    self.out.push_back(Output::Unicast(heir, wire::encode(Body::Takeover(ask))));
                }
            }
        }
        self.flush(now);
        Ok(moved)
    }

    /// A peer ran rmpeer and we inherit some of `dead`'s space: take it, if
    /// `dead` is indeed out of our reach.
    fn take_over_for(&mut self, asker: PeerName, dead: PeerName, fallback: PeerName) {
        let me = self.cfg.ourself;
        if dead == me || self.reachable.as_ref().is_none_or(|r| r.contains(&dead)) {
            tracing::warn!(%asker, %dead, "refused to take over a peer we can reach (or before knowing whom we reach)");
            return;
        }
        if self.ring.take_over(&self.cfg.identity, me, dead, fallback) > 0 {
            self.dirty = true;
            self.ring_changed = true;
        }
    }

    /// Leave: hand all our space to a reachable peer and wait for it to
    /// acknowledge ([`Completion::HandedOff`]). Returns the heir, or `None`
    /// if there is nothing to hand over or nobody to take it.
    pub fn leave(&mut self, now: Instant) -> Option<PeerName> {
        let me = self.cfg.ourself;
        let heir = self
            .ring
            .entries()
            .iter()
            .map(|e| e.peer)
            .filter(|&p| p != me && self.is_reachable(p))
            .min()
            .or_else(|| self.reachable.as_ref().and_then(|r| r.iter().copied().find(|&p| p != me)))?;
        let mine = self.ring.owned_by(me);
        if mine.is_empty() {
            return None;
        }
        for (a, b) in mine {
            self.ring.transfer(&self.cfg.identity, me, a, b, heir, b - a);
        }
        for id in self.pending.keys().copied().collect::<Vec<_>>() {
            self.cancel(id);
        }
        self.used.clear();
        self.outside.clear();
        self.by_container.clear();
        self.ring_changed = true;
        self.handoff = Some(heir);
        let state = self.state_msg();
        self.out.push_back(Output::Unicast(heir, wire::encode(Body::Handoff(state))));
        self.dirty = true;
        self.flush(now);
        Some(heir)
    }

    /// Merge gossiped state; returns the state to relay if it taught us
    /// anything.
    pub fn handle_gossip(&mut self, now: Instant, _src: PeerName, bytes: &[u8]) -> Result<Option<Vec<u8>>, IpamError> {
        let Body::State(s) = wire::decode(bytes)? else {
            return Ok(None);
        };
        let changed = self.merge_state(&s)?;
        self.flush(now);
        Ok(changed.then(|| wire::encode(Body::State(self.state_msg()))))
    }

    fn merge_state(&mut self, s: &StateMsg) -> Result<bool, IpamError> {
        // Votes first: they say which seeds a ring may have.
        let paxos = wire::paxos_from_msg(&s.paxos)?;
        let mut changed = self.paxos.merge(&paxos, &mut self.book);
        if let Some(r) = &s.ring {
            let ring = wire::ring_from_msg(r)?;
            if self.ring.is_initialised() || self.seeds_plausible(ring.seeds()) {
                if self.ring.merge(&ring, &mut self.book)? {
                    changed = true;
                    self.ring_changed = true;
                }
                self.heard_ring = true;
            }
        }
        let voter = matches!(self.cfg.init, InitMode::Consensus { .. });
        if voter && s.election_requested && !self.ring.is_initialised() && !self.paxos.is_proposing() && self.paxos.propose() {
            changed = true;
        }
        if changed {
            self.dirty = true;
        }
        Ok(changed)
    }

    /// Whether a ring divided among `seeds` may be adopted (we have none
    /// yet): not if our own seeds, or a value the votes we hold chose, say
    /// otherwise.
    fn seeds_plausible(&mut self, seeds: &[PeerName]) -> bool {
        let known = match &self.cfg.init {
            InitMode::Seeds(s) => {
                let mut s = s.clone();
                s.sort();
                s.dedup();
                Some(s)
            }
            _ => self.paxos.chosen_by_all(),
        };
        if known.as_ref().is_some_and(|k| k != seeds) {
            self.book.refused += 1;
            tracing::warn!(theirs = ?seeds, ours = ?known, "refused a ring divided among other seeds than agreed");
            return false;
        }
        true
    }

    /// A message addressed to us.
    pub fn handle_unicast(&mut self, now: Instant, src: PeerName, bytes: &[u8]) -> Result<(), IpamError> {
        match wire::decode(bytes)? {
            Body::State(s) => {
                self.merge_state(&s)?;
            }
            Body::Handoff(s) => {
                self.merge_state(&s)?;
                self.out.push_back(Output::Unicast(src, wire::encode(Body::HandoffAck(HandoffAck {}))));
            }
            Body::HandoffAck(_) => {
                if self.handoff == Some(src) {
                    self.handoff = None;
                    self.done.push_back(Completion::HandedOff(src));
                }
            }
            Body::SpaceRequest(r) => self.donate(src, r.start, r.end),
            Body::Takeover(t) => {
                if let (Some(dead), Some(fallback)) = (PeerName::from_u64(t.dead), PeerName::from_u64(t.fallback)) {
                    self.take_over_for(src, dead, fallback);
                }
            }
            Body::ClaimRequest(c) => self.grant_claim(src, c.addr),
            Body::ClaimRefused(c) => {
                // Only the peer we asked can refuse; a retryable refusal
                // (it is no longer the owner) means ask again later.
                let ours: Vec<RequestId> = self
                    .pending
                    .iter()
                    .filter(|(_, p)| p.asked == Some(src) && matches!(p.op, Op::Claim { addr, .. } if addr == c.addr))
                    .map(|(id, _)| *id)
                    .collect();
                if c.retryable {
                    for id in &ours {
                        if let Some(p) = self.pending.get_mut(id) {
                            p.asked = None;
                        }
                    }
                }
                let failed = if c.retryable { Vec::new() } else { ours };
                for id in failed {
                    self.pending.remove(&id);
                    let addr = Ipv4Addr::from(c.addr);
                    let e = IpamError::ClaimRefused { addr, owner: src, reason: c.reason.chars().take(200).collect() };
                    self.done.push_back(Completion::Failed(id, e));
                }
            }
        }
        self.flush(now);
        Ok(())
    }

    /// Give `to` at most half of our free space inside `[start, end)`, as one
    /// block from the largest free run.
    fn donate(&mut self, to: PeerName, start: u32, end: u32) {
        if to == self.cfg.ourself || start >= end {
            return;
        }
        let me = self.cfg.ourself;
        let mut runs = Vec::new();
        let mut total = 0u64;
        let mut taken: BTreeSet<u32> = self.pending_claims();
        for (a, b) in self.ring.owned_by(me) {
            let (s, e) = (a.max(start), b.min(end));
            if s >= e {
                continue;
            }
            taken.extend(self.used.range(s..e).map(|(&u, _)| u));
            let mut cur = s;
            for &u in taken.range(s..e) {
                if u > cur {
                    runs.push((cur, u));
                }
                cur = u + 1;
            }
            if cur < e {
                runs.push((cur, e));
            }
        }
        for (s, e) in &runs {
            total += u64::from(e - s);
        }
        let give = (total / 2) as u32;
        let Some(&(s, e)) = runs.iter().max_by_key(|(s, e)| (e - s, std::cmp::Reverse(*s))) else { return };
        let n = give.min(e - s);
        if n == 0 {
            return;
        }
        if self.ring.transfer(&self.cfg.identity, me, e - n, e, to, n) {
            self.dirty = true;
            self.ring_changed = true;
            self.out.push_back(Output::Unicast(to, wire::encode(Body::State(self.state_msg()))));
        }
    }

    fn grant_claim(&mut self, to: PeerName, addr: u32) {
        let me = self.cfg.ourself;
        let refusal = if self.ring.owner(addr) != Some(me) {
            Some(("not the owner".to_owned(), true))
        } else if let Some((c, _)) = self.used.get(&addr) {
            Some((format!("in use by {c}"), false))
        } else if self.pending_claims().contains(&addr) {
            Some(("claimed here too".to_owned(), false))
        } else if self.ring.transfer(&self.cfg.identity, me, addr, addr + 1, to, 1) {
            self.dirty = true;
            self.ring_changed = true;
            None
        } else {
            Some(("cannot split the range".to_owned(), true))
        };
        // Our ring goes with the answer, so a stale requester learns who owns what.
        self.out.push_back(Output::Unicast(to, wire::encode(Body::State(self.state_msg()))));
        if let Some((reason, retryable)) = refusal {
            self.out.push_back(Output::Unicast(to, wire::encode(Body::ClaimRefused(ClaimRefused { addr, reason, retryable }))));
        }
    }

    fn ensure_init(&mut self, now: Instant) {
        if self.ring.is_initialised() {
            return;
        }
        self.wants_init = true;
        match &self.cfg.init {
            InitMode::Seeds(seeds) => {
                // With peers around, first hear their ring: after a restart
                // without state our seed share may long have been given away.
                let peers_around = self.reachable.as_ref().is_some_and(|r| !r.is_empty());
                if peers_around && !self.heard_ring && self.seed_deadline.is_none_or(|d| now < d) {
                    self.seed_deadline.get_or_insert(now + self.cfg.retry_interval);
                    self.next_retry.get_or_insert(now + self.cfg.retry_interval);
                    return;
                }
                let seeds = seeds.clone();
                self.ring.initialise(&seeds);
                self.dirty = true;
                self.ring_changed = true;
            }
            InitMode::Consensus { .. } => {
                if !self.paxos.is_proposing() && self.paxos.propose() {
                    self.dirty = true;
                }
                // Until the ring exists, a stalled election is proposed
                // again (gossip can be lost, or reach a peer that cannot
                // count it yet): without this, `weave prime` could wait
                // for ever.
                self.next_retry.get_or_insert(now + self.cfg.retry_interval);
            }
            InitMode::Observer => {
                if !self.election_requested {
                    self.election_requested = true;
                    self.dirty = true;
                }
            }
        }
    }

    /// Ask the best reachable donor for space for a pending request.
    fn ask_for_space(&mut self, id: RequestId) {
        if !self.ring.is_initialised() {
            return;
        }
        let Some(p) = self.pending.get(&id) else { return };
        let me = self.cfg.ourself;
        let (msg, donor) = match &p.op {
            Op::Allocate { subnet, .. } => {
                let (lo, hi) = Self::usable(*subnet);
                let mut free: BTreeMap<PeerName, u64> = BTreeMap::new();
                for (e, s, t) in self.ring.ranges() {
                    let (a, b) = (s.max(lo), t.min(hi));
                    if a < b && e.peer != me && self.is_reachable(e.peer) {
                        let share = u64::from(e.free) * u64::from(b - a) / u64::from(t - s);
                        *free.entry(e.peer).or_default() += share;
                    }
                }
                let donor = free.into_iter().filter(|(_, f)| *f > 1).max_by_key(|(p, f)| (*f, std::cmp::Reverse(*p))).map(|(p, _)| p);
                (Body::SpaceRequest(SpaceRequest { start: lo, end: hi }), donor)
            }
            Op::Claim { addr, .. } => {
                let owner = self.ring.owner(*addr).filter(|&o| o != me && self.is_reachable(o));
                (Body::ClaimRequest(ClaimRequest { addr: *addr }), owner)
            }
        };
        if let Some(d) = donor {
            self.out.push_back(Output::Unicast(d, wire::encode(msg)));
        }
        if let Some(p) = self.pending.get_mut(&id) {
            p.asked = donor;
        }
    }

    fn retry_pending(&mut self) {
        // Claims first: an address a claim waits for is not for allocation.
        let mut ids: Vec<RequestId> = self.pending.keys().copied().collect();
        ids.sort_by_key(|id| !matches!(self.pending[id].op, Op::Claim { .. }));
        for id in ids {
            let op = self.pending[&id].op.clone();
            match self.attempt(&op) {
                Ok(Some(addr)) => {
                    self.pending.remove(&id);
                    self.done.push_back(Completion::Done(id, addr));
                }
                Ok(None) => {}
                Err(e) => {
                    self.pending.remove(&id);
                    self.done.push_back(Completion::Failed(id, e));
                }
            }
        }
    }

    /// Retries: re-propose a stalled election, ask again for space.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_retry.is_some_and(|t| now >= t) {
            self.next_retry = None;
            if !self.ring.is_initialised() && self.wants_init {
                if let InitMode::Consensus { .. } = self.cfg.init {
                    // Re-propose only if no ballot progressed since last time
                    // (pre-empting a live election would stall it).
                    let highest = self.paxos.highest_ballot();
                    if highest == self.last_ballot && self.paxos.propose() {
                        self.dirty = true;
                    }
                    self.last_ballot = self.paxos.highest_ballot();
                } else {
                    self.ensure_init(now);
                    self.dirty = true;
                }
            }
            if let Some(heir) = self.handoff {
                // Resend until the heir acknowledges.
                self.out.push_back(Output::Unicast(heir, wire::encode(Body::Handoff(self.state_msg()))));
            }
            let ids: Vec<RequestId> = self.pending.keys().copied().collect();
            for id in ids {
                self.ask_for_space(id);
            }
            if !self.pending.is_empty() || (self.wants_init && !self.ring.is_initialised()) || self.handoff.is_some() {
                // Stagger retries by name so competing proposers drift apart.
                let stagger = self.cfg.retry_interval.mul_f64(1.0 + (self.cfg.ourself.as_u64() % 8) as f64 / 8.0);
                self.next_retry = Some(now + stagger);
            }
        }
        self.flush(now);
    }

    /// When [`Ipam::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.next_retry, self.next_publish].into_iter().flatten().min()
    }

    /// The next message to send.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The next completed request.
    pub fn poll_completion(&mut self) -> Option<Completion> {
        self.done.pop_front()
    }

    fn state_msg(&self) -> StateMsg {
        StateMsg {
            ring: self.ring.is_initialised().then(|| wire::ring_to_msg(&self.ring)),
            paxos: wire::paxos_to_msg(&self.paxos.votes()),
            election_requested: self.election_requested && !self.ring.is_initialised(),
        }
    }

    /// Changes so far worth persisting: save a [`Ipam::snapshot`] whenever
    /// this moved, *before* sending what [`Ipam::poll_output`] returns (a
    /// donation or a vote must not be forgotten by a crash after it left).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Everything to persist: ring, consensus state and allocations.
    pub fn snapshot(&self) -> SnapshotMsg {
        SnapshotMsg {
            peer: self.cfg.ourself.as_u64(),
            range: self.cfg.range.trunc().to_string(),
            state: Some(self.state_msg()),
            allocations: self
                .used
                .values()
                .chain(self.outside.values())
                .map(|(c, a)| AllocMsg { container: c.clone(), addr: u32::from(a.addr()), prefix: u32::from(a.prefix_len()) })
                .collect(),
            keys: self.book.keys().iter().map(|(p, k)| KeyMsg { peer: p.as_u64(), key: k.to_bytes().to_vec() }).collect(),
        }
    }

    /// IPAM resumed from a snapshot taken with the same peer name and range
    /// (the caller checks those; see [`crate::persist`]).
    pub fn restore(cfg: IpamConfig, snap: &SnapshotMsg) -> Result<Self, IpamError> {
        let mut ipam = Self::new(cfg)?;
        // The keys we knew (peers that have left the mesh included) check
        // what we saved, and what peers send of theirs.
        for k in &snap.keys {
            if let (Some(p), Some(key)) = (PeerName::from_u64(k.peer), PeerKey::from_bytes(&k.key)) {
                if p != ipam.cfg.ourself {
                    ipam.book.learn(p, key);
                }
            }
        }
        if let Some(state) = &snap.state {
            if let Some(r) = &state.ring {
                // Our own disk: taken as it is (proofs were checked when
                // each entry arrived).
                ipam.ring = wire::ring_from_msg(r)?;
                ipam.wants_init = true;
            }
            ipam.paxos.restore_own(&wire::paxos_from_msg(&state.paxos)?);
        }
        for a in &snap.allocations {
            let prefix = u8::try_from(a.prefix).ok().filter(|p| *p <= 32).ok_or(DecodeError::Protobuf("prefix".into()))?;
            let net = Ipv4Net::new(Ipv4Addr::from(a.addr), prefix).map_err(|e| DecodeError::Protobuf(e.to_string()))?;
            ipam.hold(a.addr, &a.container, net);
        }
        // Check the held addresses against the ring at the first chance.
        ipam.ring_changed = true;
        Ok(ipam)
    }

    /// Our full state, for periodic anti-entropy.
    pub fn full_state(&self) -> Vec<u8> {
        wire::encode(Body::State(self.state_msg()))
    }

    /// Settle consensus, protect our containers, complete what can be
    /// completed, publish free counts, and gossip if anything changed.
    fn flush(&mut self, now: Instant) {
        if !self.ring.is_initialised() && matches!(self.cfg.init, InitMode::Consensus { .. }) {
            if self.paxos.think() {
                self.dirty = true;
            }
            if let Some(seeds) = self.paxos.chosen() {
                self.ring.initialise(&seeds);
                self.dirty = true;
                self.ring_changed = true;
            }
        }
        if self.ring.is_initialised() {
            if std::mem::take(&mut self.ring_changed) {
                self.hints.clear();
                self.reassert_used();
                if let Some(heir) = self.handoff {
                    // Space that reached us after we left goes on to the heir.
                    let me = self.cfg.ourself;
                    for (a, b) in self.ring.owned_by(me) {
                        self.ring.transfer(&self.cfg.identity, me, a, b, heir, b - a);
                        self.dirty = true;
                    }
                }
            }
            self.retry_pending();
            if self.free_dirty {
                let due = *self.next_publish.get_or_insert(now + self.cfg.retry_interval);
                if now >= due {
                    self.publish_free();
                    self.free_dirty = false;
                    self.next_publish = None;
                }
            }
        }
        if !self.pending.is_empty() {
            self.next_retry.get_or_insert(now + self.cfg.retry_interval);
        }
        if std::mem::take(&mut self.dirty) {
            self.generation += 1;
            self.out.push_back(Output::Gossip(wire::encode(Body::State(self.state_msg()))));
        }
    }

    /// An rmpeer run against us while we were alive took entries holding our
    /// containers' addresses: take them back (the takeover loses).
    fn reassert_used(&mut self) {
        let me = self.cfg.ourself;
        let tokens: BTreeSet<u32> = self
            .used
            .keys()
            .filter(|&&a| self.ring.owner(a) != Some(me))
            .filter_map(|&a| self.ring.entries().iter().rev().find(|e| e.token <= a).filter(|e| e.taken_from == Some(me)).map(|e| e.token))
            .collect();
        for t in tokens {
            if self.ring.reassert(&self.cfg.identity, me, t) {
                self.dirty = true;
                self.free_dirty = true;
            }
        }
    }

    fn publish_free(&mut self) {
        let me = self.cfg.ourself;
        let ranges: Vec<(u32, u32)> = self.ring.owned_by(me);
        for (a, b) in ranges {
            let used = self.used.range(a..b).count() as u32;
            if self.ring.set_free(&self.cfg.identity, me, a, (b - a) - used) {
                self.dirty = true;
            }
        }
    }

    /// Requests waiting for space: claims first, then allocations.
    pub fn pending_requests(&self) -> (Vec<PendingRequest>, Vec<PendingRequest>) {
        let (mut claims, mut allocs) = (Vec::new(), Vec::new());
        for (id, p) in &self.pending {
            match &p.op {
                Op::Claim { container, addr, subnet } => {
                    claims.push(PendingRequest { id: *id, container: container.clone(), subnet: *subnet, addr: Some(Ipv4Addr::from(*addr)) })
                }
                Op::Allocate { container, subnet } => allocs.push(PendingRequest { id: *id, container: container.clone(), subnet: *subnet, addr: None }),
            }
        }
        (claims, allocs)
    }

    /// Status for `weave status ipam` and `weave report`.
    pub fn status(&self) -> IpamStatus {
        let pending_claims = self.pending.values().filter(|p| matches!(p.op, Op::Claim { .. })).count();
        let pending_allocates = self.pending.len() - pending_claims;
        let status = if !self.ring.is_initialised() {
            if !self.wants_init {
                "idle".to_owned()
            } else if matches!(self.cfg.init, InitMode::Consensus { .. }) {
                format!("awaiting consensus (quorum: {}, known: {})", self.paxos.quorum(), self.paxos.known())
            } else {
                "priming".to_owned()
            }
        } else if self.pending.is_empty() {
            "ready".to_owned()
        } else if self.pending.values().all(|p| p.asked.is_none()) && self.all_space_unreachable() {
            "all IP ranges owned by unreachable peers - use 'rmpeer' if they are dead".to_owned()
        } else {
            "waiting for IP(s) to become available".to_owned()
        };
        let mut owned: BTreeMap<String, Vec<Ipv4Net>> = BTreeMap::new();
        for (c, a) in self.used.values().chain(self.outside.values()) {
            owned.entry(c.clone()).or_default().push(*a);
        }
        IpamStatus {
            status,
            range: self.cfg.range.trunc(),
            default_subnet: self.cfg.default_subnet,
            range_num_ips: self.ring.size(),
            active_ips: self.used.len() + self.outside.len(),
            entries: self.ring.entries().to_vec(),
            owned,
            pending_claims,
            pending_allocates,
        }
    }

    fn all_space_unreachable(&self) -> bool {
        let me = self.cfg.ourself;
        self.ring.entries().iter().all(|e| e.peer == me || !self.is_reachable(e.peer))
    }
}

fn op_container(op: &Op) -> &str {
    match op {
        Op::Allocate { container, .. } | Op::Claim { container, .. } => container,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: u64) -> PeerName {
        PeerName::from_u64(n).unwrap()
    }

    fn seeded(me: u64, seeds: &[u64]) -> Ipam {
        let seeds = seeds.iter().map(|&s| p(s)).collect();
        Ipam::new(IpamConfig::new(
            weave_gossip::Identity::from_secret([p(me).as_u64() as u8; 32]),
            p(me),
            "10.32.0.0/12".parse().unwrap(),
            InitMode::Seeds(seeds),
        ))
        .unwrap()
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn pending_requests_are_listed_until_they_complete() {
        let now = Instant::now();
        // Peer 2 of two seeds cannot divide the ring alone: requests wait.
        let mut b = seeded(2, &[1, 2]);
        b.set_reachable(now, [p(1)].into_iter().collect());
        let Outcome::Pending(a) = b.allocate(now, "web", None).unwrap() else { panic!("must wait for the ring") };
        let Outcome::Pending(c) = b.claim(now, "db", net("10.32.0.9/12")).unwrap() else { panic!("must wait for the ring") };
        let (claims, allocs) = b.pending_requests();
        assert_eq!(allocs.len(), 1);
        assert_eq!((allocs[0].id, allocs[0].container.as_str(), allocs[0].addr), (a, "web", None));
        assert_eq!(claims.len(), 1);
        assert_eq!((claims[0].id, claims[0].container.as_str(), claims[0].addr), (c, "db", Some("10.32.0.9".parse().unwrap())));
        b.cancel(a);
        b.cancel(c);
        assert_eq!(b.pending_requests(), (vec![], vec![]));
    }

    #[test]
    fn allocation_is_lowest_free_and_idempotent_per_container_and_subnet() {
        let now = Instant::now();
        let mut a = seeded(1, &[1]);
        assert_eq!(a.allocate(now, "c1", None).unwrap(), Outcome::Done(net("10.32.0.1/12")));
        assert_eq!(a.allocate(now, "c2", None).unwrap(), Outcome::Done(net("10.32.0.2/12")));
        assert_eq!(a.allocate(now, "c1", None).unwrap(), Outcome::Done(net("10.32.0.1/12")));
        assert_eq!(a.allocate(now, "c1", Some(net("10.33.4.0/24"))).unwrap(), Outcome::Done(net("10.33.4.1/24")));
        assert!(a.free(now, "c2", "10.32.0.2".parse().unwrap()));
        assert_eq!(a.allocate(now, "c3", None).unwrap(), Outcome::Done(net("10.32.0.2/12")), "freed address reused");
        assert_eq!(a.free_all(now, "c1").len(), 2);
    }

    #[test]
    fn subnets_outside_the_range_are_refused() {
        let mut a = seeded(1, &[1]);
        let e = a.allocate(Instant::now(), "c", Some(net("192.168.0.0/24"))).unwrap_err();
        assert_eq!(e.to_string(), "subnet 192.168.0.0/24 is not inside the allocation range 10.32.0.0/12");
    }

    #[test]
    fn claims_outside_the_range_are_local_and_conflicts_are_refused() {
        let now = Instant::now();
        let mut a = seeded(1, &[1]);
        assert_eq!(a.claim(now, "c1", net("192.168.1.5/24")).unwrap(), Outcome::Done(net("192.168.1.5/24")));
        assert!(matches!(a.claim(now, "c2", net("192.168.1.5/24")), Err(IpamError::InUse { .. })));
        assert_eq!(a.claim(now, "c1", net("10.32.0.9/12")).unwrap(), Outcome::Done(net("10.32.0.9/12")));
        let e = a.claim(now, "c2", net("10.32.0.9/12")).unwrap_err();
        assert_eq!(e.to_string(), "address 10.32.0.9 is already in use by c1");
    }

    #[test]
    fn status_says_what_ipam_is_waiting_for() {
        let now = Instant::now();
        let mut a = Ipam::new(IpamConfig::new(
            weave_gossip::Identity::from_secret([p(1).as_u64() as u8; 32]),
            p(1),
            net("10.32.0.0/12"),
            InitMode::Consensus { quorum: 2 },
        ))
        .unwrap();
        assert_eq!(a.status().status, "idle");
        assert!(matches!(a.allocate(now, "c", None).unwrap(), Outcome::Pending(_)));
        assert_eq!(a.status().status, "awaiting consensus (quorum: 2, known: 1)");
        assert_eq!(a.status().pending_allocates, 1);
        let mut b = seeded(1, &[2]);
        b.set_reachable(now, BTreeSet::new());
        assert!(matches!(b.allocate(now, "c", None).unwrap(), Outcome::Pending(_)));
        assert_eq!(b.status().status, "all IP ranges owned by unreachable peers - use 'rmpeer' if they are dead");
        let mut c = seeded(1, &[1]);
        c.allocate(now, "c", None).unwrap();
        assert_eq!(c.status().status, "ready");
        assert_eq!(c.status().active_ips, 1);
    }

    fn voter(me: u64) -> Ipam {
        let cfg = IpamConfig::new(weave_gossip::Identity::from_secret([me as u8; 32]), p(me), net("10.32.0.0/12"), InitMode::Consensus { quorum: 2 });
        Ipam::new(cfg).unwrap()
    }

    fn gossip_of(x: &mut Ipam) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| x.poll_output()).filter_map(|o| if let Output::Gossip(b) = o { Some(b) } else { None }).collect()
    }

    /// Deliver gossip between peers 1 and 2 until neither has more.
    fn exchange(now: Instant, a: &mut Ipam, b: &mut Ipam) {
        for _ in 0..20 {
            let (from_a, from_b) = (gossip_of(a), gossip_of(b));
            if from_a.is_empty() && from_b.is_empty() {
                return;
            }
            for m in from_a {
                b.handle_gossip(now, p(1), &m).unwrap();
            }
            for m in from_b {
                a.handle_gossip(now, p(2), &m).unwrap();
            }
        }
        panic!("gossip did not settle");
    }

    #[test]
    fn an_election_completes_when_a_voter_it_already_heard_becomes_reachable() {
        let now = Instant::now();
        let (mut a, mut b) = (voter(1), voter(2));
        // Peer 1 proposes before its routes reach peer 2; peer 2 promises.
        a.set_reachable(now, BTreeSet::new());
        b.set_reachable(now, BTreeSet::from([p(1)]));
        a.prime(now);
        exchange(now, &mut a, &mut b);
        assert_eq!(a.status().status, "awaiting consensus (quorum: 2, known: 2)", "peer 2's promise is held but does not count yet");
        // The routes change and no message follows: the promise counts now.
        a.set_reachable(now, BTreeSet::from([p(2)]));
        exchange(now, &mut a, &mut b);
        assert!(a.ring().is_initialised() && b.ring().is_initialised());
        assert_eq!(a.ring().seeds(), b.ring().seeds());
    }

    #[test]
    fn a_stalled_election_is_proposed_again_until_the_ring_exists() {
        let now = Instant::now();
        let (mut a, mut b) = (voter(1), voter(2));
        a.set_reachable(now, BTreeSet::from([p(2)]));
        b.set_reachable(now, BTreeSet::from([p(1)]));
        a.prime(now);
        assert!(!gossip_of(&mut a).is_empty(), "the proposal goes out");
        // ...and is lost. The retry proposes again.
        let due = a.poll_timeout().expect("a retry is due while the election is open");
        a.handle_timeout(due);
        exchange(due, &mut a, &mut b);
        assert!(a.ring().is_initialised() && b.ring().is_initialised());
    }

    #[test]
    fn a_donation_is_at_most_half_of_the_free_space_in_the_subnet() {
        let now = Instant::now();
        let mut a = seeded(1, &[1]);
        a.allocate(now, "c", Some(net("10.32.0.0/24"))).unwrap();
        while a.poll_output().is_some() {}
        let req =
            wire::encode(Body::SpaceRequest(SpaceRequest { start: u32::from(Ipv4Addr::new(10, 32, 0, 1)), end: u32::from(Ipv4Addr::new(10, 32, 0, 255)) }));
        a.handle_unicast(now, p(2), &req).unwrap();
        let given = a.ring().ownership_in(u32::from(Ipv4Addr::new(10, 32, 0, 0)), u32::from(Ipv4Addr::new(10, 32, 1, 0)));
        // 253 usable, 1 used: 252 free, so at most 126 move.
        assert_eq!(given.get(&p(2)).copied(), Some(126));
        assert!(std::iter::from_fn(|| a.poll_output()).any(|o| matches!(o, Output::Unicast(d, _) if d == p(2))));
    }

    #[test]
    fn an_independently_initialised_ring_is_refused_without_change() {
        let now = Instant::now();
        let mut a = seeded(1, &[1]);
        a.prime(now);
        let mut b = seeded(2, &[2]);
        b.prime(now);
        let before = a.ring().clone();
        let e = a.handle_gossip(now, p(2), &b.full_state()).unwrap_err();
        assert!(e.to_string().contains("independently initialised ring"), "{e}");
        assert_eq!(a.ring(), &before);
    }

    #[test]
    fn hostile_consensus_values_and_rounds_are_refused() {
        let now = Instant::now();
        let mut a = Ipam::new(IpamConfig::new(
            weave_gossip::Identity::from_secret([p(1).as_u64() as u8; 32]),
            p(1),
            net("10.32.0.0/12"),
            InitMode::Consensus { quorum: 1 },
        ))
        .unwrap();
        let bad_value = wire::PaxosMsg {
            node: 2,
            promise_round: 1,
            promise_proposer: 2,
            has_accepted: true,
            accepted_round: 1,
            accepted_proposer: 2,
            accepted_value: vec![],
            key: weave_gossip::Identity::from_secret([2; 32]).public().to_bytes().to_vec(),
            signature: vec![0; 64],
        };
        let huge_round = wire::PaxosMsg { node: 2, promise_round: u64::MAX, promise_proposer: 2, ..bad_value.clone() };
        for m in [bad_value, huge_round] {
            let msg = wire::encode(Body::State(StateMsg { ring: None, paxos: vec![m], election_requested: false }));
            assert!(a.handle_gossip(now, p(2), &msg).is_err());
        }
        assert!(!a.ring().is_initialised());
        a.prime(now);
        assert!(a.ring().is_initialised(), "still able to decide: quorum 1");
    }

    #[test]
    fn a_seed_peer_asked_for_an_election_does_not_build_a_ring_alone() {
        let now = Instant::now();
        let mut a = seeded(1, &[1, 2]);
        a.set_reachable(now, BTreeSet::from([p(2)]));
        let msg = wire::encode(Body::State(StateMsg { ring: None, paxos: vec![], election_requested: true }));
        a.handle_gossip(now, p(3), &msg).unwrap();
        assert!(!a.ring().is_initialised());
        assert!(a.paxos.nodes().is_empty(), "seed peers do not vote");
    }

    #[test]
    fn rmpeer_of_a_peer_owning_everything_picks_the_same_heir_on_every_runner() {
        let now = Instant::now();
        let mut q = seeded(2, &[1]);
        let mut r = seeded(3, &[1]);
        for x in [&mut q, &mut r] {
            x.prime(now);
            x.set_reachable(now, BTreeSet::from([p(2), p(3)]));
        }
        let size = q.ring().size();
        assert_eq!(q.rmpeer(now, &[p(1)]), Ok(size));
        assert_eq!(r.rmpeer(now, &[p(1)]), Ok(size), "what moves, to whom it falls");
        assert_eq!(q.ring().owner(q.ring().start()), Some(p(2)), "the heir takes it itself");
        assert_eq!(r.ring().owner(r.ring().start()), Some(p(1)), "another runner only asks the heir");
        let ask = std::iter::from_fn(|| r.poll_output()).find_map(|o| match o {
            Output::Unicast(to, b) if to == p(2) => Some(b),
            _ => None,
        });
        let before = q.ring().clone();
        q.handle_unicast(now, p(3), &ask.expect("asked the heir")).unwrap();
        assert_eq!(q.ring(), &before, "taking over again changes nothing");
        r.handle_gossip(now, p(2), &q.full_state()).unwrap();
        assert_eq!(q.ring(), r.ring());
    }

    #[test]
    fn an_heir_asked_to_take_over_a_peer_it_can_reach_refuses() {
        let now = Instant::now();
        let mut q = seeded(2, &[1, 2]);
        q.prime(now);
        q.set_reachable(now, BTreeSet::from([p(1), p(3)]));
        let ask = wire::encode(Body::Takeover(TakeoverRequest { dead: 1, fallback: 2 }));
        let before = q.ring().clone();
        q.handle_unicast(now, p(3), &ask).unwrap();
        assert_eq!(q.ring(), &before, "peer 1 is alive as far as we can tell");
    }

    #[test]
    fn an_allocation_never_takes_an_address_a_claim_waits_for() {
        let now = Instant::now();
        let mut a = seeded(1, &[1, 2]);
        a.prime(now);
        a.set_reachable(now, BTreeSet::from([p(2)]));
        // An allocation waits first, then a claim for what will be the
        // lowest address of the space peer 2 is about to donate.
        assert!(matches!(a.allocate(now, "other", Some(net("10.40.0.0/24"))).unwrap(), Outcome::Pending(_)));
        let claimed = net("10.40.0.128/24");
        assert!(matches!(a.claim(now, "static", claimed).unwrap(), Outcome::Pending(_)));
        let mut b = seeded(2, &[1, 2]);
        b.prime(now);
        let (lo, hi) = Ipam::usable(net("10.40.0.0/24"));
        b.handle_unicast(now, p(1), &wire::encode(Body::SpaceRequest(SpaceRequest { start: lo, end: hi }))).unwrap();
        let state = std::iter::from_fn(|| b.poll_output())
            .find_map(|o| match o {
                Output::Unicast(d, bytes) if d == p(1) => Some(bytes),
                _ => None,
            })
            .expect("the donation");
        a.handle_unicast(now, p(2), &state).unwrap();
        let held: BTreeMap<Ipv4Addr, String> = a.allocations().map(|(n, c)| (n.addr(), c.to_owned())).collect();
        assert_eq!(held.get(&claimed.addr()).map(String::as_str), Some("static"), "{held:?}");
        assert_eq!(held.get(&"10.40.0.129".parse().unwrap()).map(String::as_str), Some("other"), "{held:?}");
    }

    #[test]
    fn a_claim_refusal_from_a_peer_we_did_not_ask_is_ignored() {
        let now = Instant::now();
        let mut a = seeded(1, &[1, 2]);
        a.prime(now);
        a.set_reachable(now, BTreeSet::from([p(2), p(3)]));
        let Outcome::Pending(id) = a.claim(now, "c", net("10.40.0.1/12")).unwrap() else { panic!() };
        let refusal =
            |retryable| wire::encode(Body::ClaimRefused(ClaimRefused { addr: u32::from(Ipv4Addr::new(10, 40, 0, 1)), reason: "no".into(), retryable }));
        a.handle_unicast(now, p(3), &refusal(false)).unwrap();
        assert!(a.poll_completion().is_none(), "peer 3 was not asked");
        a.handle_unicast(now, p(2), &refusal(true)).unwrap();
        assert!(a.poll_completion().is_none(), "retryable: still pending");
        a.handle_timeout(now + Duration::from_secs(10));
        a.handle_unicast(now, p(2), &refusal(false)).unwrap();
        assert!(matches!(a.poll_completion(), Some(Completion::Failed(i, IpamError::ClaimRefused { .. })) if i == id));
    }

    #[test]
    fn rmpeer_refuses_ourselves_a_reachable_peer_and_a_partial_view() {
        let now = Instant::now();
        let mut a = seeded(1, &[1, 2, 3]);
        a.prime(now);
        assert_eq!(a.rmpeer(now, &[p(1)]), Err(IpamError::RmpeerSelf));
        a.set_reachable(now, BTreeSet::from([p(2)]));
        assert_eq!(a.rmpeer(now, &[p(2)]), Err(IpamError::RmpeerAlive(p(2))));
        a.set_reachable(now, BTreeSet::new());
        assert_eq!(a.rmpeer(now, &[p(2)]), Err(IpamError::RmpeerPartialView(vec![p(3)])));
        let moved = a.rmpeer(now, &[p(2), p(3)]).unwrap();
        assert_eq!(moved, a.ring().size() - a.ring().size() / 3);
    }
}

#[cfg(test)]
mod handoff_tests {
    use super::*;

    #[test]
    fn leaving_hands_all_space_to_a_live_peer_and_waits_for_its_ack() {
        let now = Instant::now();
        let (p1, p2) = (PeerName::from_u64(1).unwrap(), PeerName::from_u64(2).unwrap());
        let cfg = |me: PeerName| {
            IpamConfig::new(weave_gossip::Identity::from_secret([me.as_u64() as u8; 32]), me, "10.32.0.0/16".parse().unwrap(), InitMode::Seeds(vec![p1, p2]))
        };
        let mut a = Ipam::new(cfg(p1)).unwrap();
        let mut b = Ipam::new(cfg(p2)).unwrap();
        a.prime(now);
        b.prime(now);
        a.set_reachable(now, BTreeSet::from([p2]));
        assert_eq!(a.leave(now), Some(p2));
        assert!(a.ring().owned_by(p1).is_empty(), "nothing left with the leaver");
        assert!(a.poll_completion().is_none(), "not done before the heir acknowledges");
        fn unicast_to(from: &mut Ipam, to: PeerName) -> Option<Vec<u8>> {
            std::iter::from_fn(|| from.poll_output()).find_map(|o| match o {
                Output::Unicast(d, bytes) if d == to => Some(bytes),
                _ => None,
            })
        }
        let handoff = unicast_to(&mut a, p2).expect("the ring is sent to the heir");
        b.handle_unicast(now, p1, &handoff).unwrap();
        let owned: u64 = b.ring().owned_by(p2).iter().map(|(s, e)| u64::from(e - s)).sum();
        assert_eq!(owned, b.ring().size(), "the heir owns everything");
        let ack = unicast_to(&mut b, p1).expect("the heir acknowledges");
        a.handle_unicast(now, p2, &ack).unwrap();
        assert_eq!(a.poll_completion(), Some(Completion::HandedOff(p2)));
    }
}
