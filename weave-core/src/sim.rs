//! A deterministic network simulation for sans-IO state machines.
//!
//! N nodes (anything implementing [`SimNode`]) exchange messages over links
//! with configurable latency, loss and reordering; links can be cut and
//! healed (partitions) and nodes crashed and replaced (restarts). Time is
//! virtual: [`Sim::step`] jumps straight to the next event, so a minute of
//! simulated gossip runs in milliseconds. Everything random comes from one
//! seeded generator, so a run is reproduced exactly by its seed — a failing
//! test should print [`Sim::seed`].
//!
//! Call order for a node, on every event: the harness calls
//! [`SimNode::handle_message`] or [`SimNode::handle_timeout`], collects what
//! the node put in the [`Outbox`], then asks [`SimNode::poll_timeout`] for the
//! node's next deadline.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::rng::{seeded, SimRng};

/// Index of a node in a [`Sim`].
pub type NodeId = usize;

/// A state machine the harness can drive.
pub trait SimNode {
    /// What nodes send each other.
    type Msg: Clone + fmt::Debug;

    /// A message from `from` arrived.
    fn handle_message(&mut self, now: Instant, from: NodeId, msg: Self::Msg, out: &mut Outbox<Self::Msg>);

    /// The deadline the node last gave through `poll_timeout` has passed.
    fn handle_timeout(&mut self, now: Instant, out: &mut Outbox<Self::Msg>);

    /// When the node next wants [`SimNode::handle_timeout`] called.
    fn poll_timeout(&self) -> Option<Instant>;

    /// Size of a message on the wire, for byte accounting (0 if unknown).
    fn message_len(_msg: &Self::Msg) -> usize {
        0
    }
}

/// Messages a node wants sent, collected by the harness after each call.
#[derive(Debug)]
pub struct Outbox<M> {
    sends: Vec<(NodeId, M)>,
}

impl<M> Default for Outbox<M> {
    fn default() -> Self {
        Self { sends: Vec::new() }
    }
}

impl<M> Outbox<M> {
    /// Queue `msg` for `to`.
    pub fn send(&mut self, to: NodeId, msg: M) {
        self.sends.push((to, msg));
    }

    /// Messages queued so far.
    pub fn len(&self) -> usize {
        self.sends.len()
    }

    /// Whether nothing was queued.
    pub fn is_empty(&self) -> bool {
        self.sends.is_empty()
    }

    /// Take the queued messages (for drivers other than [`Sim`]).
    pub fn drain(&mut self) -> std::vec::Drain<'_, (NodeId, M)> {
        self.sends.drain(..)
    }
}

/// How a link between two nodes behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkConfig {
    /// Smallest one-way delay.
    pub latency_min: Duration,
    /// Largest one-way delay; each message draws uniformly in between.
    pub latency_max: Duration,
    /// Probability that a message is dropped.
    pub loss: f64,
    /// Whether messages on this link may overtake each other. When false, a
    /// message is never delivered before one sent earlier on the same link
    /// (like a TCP stream).
    pub reorder: bool,
}

impl Default for LinkConfig {
    /// 1–5 ms, no loss, in order.
    fn default() -> Self {
        Self { latency_min: Duration::from_millis(1), latency_max: Duration::from_millis(5), loss: 0.0, reorder: false }
    }
}

/// Traffic counters of one node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Messages the node sent (including dropped ones).
    pub msgs_sent: u64,
    /// Bytes the node sent, as [`SimNode::message_len`] counts them.
    pub bytes_sent: u64,
    /// Messages delivered to the node.
    pub msgs_received: u64,
    /// Bytes delivered to the node.
    pub bytes_received: u64,
    /// Messages from this node lost to link loss, cuts or a down receiver.
    pub msgs_dropped: u64,
}

enum EventKind<M> {
    Deliver { from: NodeId, to: NodeId, msg: M, incarnation: u64 },
    Timer { node: NodeId, generation: u64 },
}

struct Event<M> {
    at: Instant,
    seq: u64,
    kind: EventKind<M>,
}

impl<M> PartialEq for Event<M> {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl<M> Eq for Event<M> {}
impl<M> PartialOrd for Event<M> {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl<M> Ord for Event<M> {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

struct Slot<N> {
    node: N,
    up: bool,
    /// Bumped on restart so messages to the old incarnation are discarded.
    incarnation: u64,
    timer: Option<(Instant, u64)>,
    stats: NodeStats,
}

/// The simulation: nodes, links, a seeded event queue and virtual time.
pub struct Sim<N: SimNode> {
    seed: u64,
    rng: SimRng,
    start: Instant,
    now: Instant,
    seq: u64,
    timer_generation: u64,
    queue: BinaryHeap<Reverse<Event<N::Msg>>>,
    slots: Vec<Slot<N>>,
    default_link: LinkConfig,
    links: HashMap<(NodeId, NodeId), LinkConfig>,
    last_delivery: HashMap<(NodeId, NodeId), Instant>,
    cut: HashSet<(NodeId, NodeId)>,
}

impl<N: SimNode> Sim<N> {
    /// An empty simulation whose randomness comes from `seed`.
    pub fn new(seed: u64) -> Self {
        let start = Instant::now();
        Self {
            seed,
            rng: seeded(seed),
            start,
            now: start,
            seq: 0,
            timer_generation: 0,
            queue: BinaryHeap::new(),
            slots: Vec::new(),
            default_link: LinkConfig::default(),
            links: HashMap::new(),
            last_delivery: HashMap::new(),
            cut: HashSet::new(),
        }
    }

    /// The seed: `WEAVE_SIM_SEED` from the environment if set, else a random
    /// one. Printed, so a failing run can be replayed.
    pub fn seed_from_env() -> u64 {
        let seed = std::env::var("WEAVE_SIM_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| crate::rng::from_os().random());
        eprintln!("simulation seed: {seed} (replay with WEAVE_SIM_SEED={seed})");
        seed
    }

    /// The seed this run was made from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The current virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Virtual time since the simulation started.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// The instant the simulation started at (nodes are created relative to it).
    pub fn start(&self) -> Instant {
        self.start
    }

    /// The harness's generator, for tests that need seeded choices.
    pub fn rng(&mut self) -> &mut SimRng {
        &mut self.rng
    }

    /// Add a node; returns its id.
    pub fn add_node(&mut self, node: N) -> NodeId {
        let id = self.slots.len();
        self.slots.push(Slot { node, up: true, incarnation: 0, timer: None, stats: NodeStats::default() });
        self.reschedule(id);
        id
    }

    /// Number of nodes (up or down).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// A node, for inspection.
    pub fn node(&self, id: NodeId) -> &N {
        &self.slots[id].node
    }

    /// All nodes with their ids.
    pub fn nodes(&self) -> impl Iterator<Item = (NodeId, &N)> {
        self.slots.iter().enumerate().map(|(i, s)| (i, &s.node))
    }

    /// Whether a node is up.
    pub fn is_up(&self, id: NodeId) -> bool {
        self.slots[id].up
    }

    /// Call into a node from outside (an API call of the embedder); what it
    /// sends goes out at the current time.
    pub fn with_node<R>(&mut self, id: NodeId, f: impl FnOnce(&mut N, Instant, &mut Outbox<N::Msg>) -> R) -> R {
        let mut out = Outbox::default();
        let now = self.now;
        let r = f(&mut self.slots[id].node, now, &mut out);
        self.dispatch(id, out);
        self.reschedule(id);
        r
    }

    /// Counters of one node.
    pub fn stats(&self, id: NodeId) -> NodeStats {
        self.slots[id].stats
    }

    /// Reset every node's counters (e.g. after warm-up).
    pub fn reset_stats(&mut self) {
        for s in &mut self.slots {
            s.stats = NodeStats::default();
        }
    }

    /// The link used when no per-link config is set.
    pub fn set_default_link(&mut self, cfg: LinkConfig) {
        self.default_link = cfg;
    }

    /// Configure the link a→b (one direction).
    pub fn set_link(&mut self, a: NodeId, b: NodeId, cfg: LinkConfig) {
        self.links.insert((a, b), cfg);
    }

    /// Silently drop everything between a and b, both ways (like an
    /// nftables drop rule: nobody is told).
    pub fn cut(&mut self, a: NodeId, b: NodeId) {
        self.cut.insert((a, b));
        self.cut.insert((b, a));
    }

    /// Undo [`Sim::cut`].
    pub fn heal(&mut self, a: NodeId, b: NodeId) {
        self.cut.remove(&(a, b));
        self.cut.remove(&(b, a));
    }

    /// Cut every link between a node of `side` and a node outside it.
    pub fn partition(&mut self, side: &[NodeId]) {
        let inside: HashSet<_> = side.iter().copied().collect();
        for a in 0..self.slots.len() {
            for b in 0..self.slots.len() {
                if inside.contains(&a) != inside.contains(&b) {
                    self.cut.insert((a, b));
                }
            }
        }
    }

    /// Heal every cut.
    pub fn heal_all(&mut self) {
        self.cut.clear();
    }

    /// Stop a node: it receives nothing and its timers stop.
    pub fn crash(&mut self, id: NodeId) {
        let s = &mut self.slots[id];
        s.up = false;
        s.incarnation += 1;
        s.timer = None;
    }

    /// Replace a (crashed or running) node with a fresh state machine, e.g. a
    /// restart with or without persisted state.
    pub fn restart(&mut self, id: NodeId, node: N) {
        let s = &mut self.slots[id];
        s.node = node;
        s.up = true;
        s.incarnation += 1;
        s.timer = None;
        self.reschedule(id);
    }

    /// Process the next event; false when the queue is empty.
    pub fn step(&mut self) -> bool {
        let Some(Reverse(ev)) = self.queue.pop() else {
            return false;
        };
        debug_assert!(ev.at >= self.now);
        self.now = ev.at;
        match ev.kind {
            EventKind::Deliver { from, to, msg, incarnation } => {
                let slot = &mut self.slots[to];
                if !slot.up || slot.incarnation != incarnation {
                    self.slots[from].stats.msgs_dropped += 1;
                    return true;
                }
                slot.stats.msgs_received += 1;
                slot.stats.bytes_received += N::message_len(&msg) as u64;
                let mut out = Outbox::default();
                slot.node.handle_message(self.now, from, msg, &mut out);
                self.dispatch(to, out);
                self.reschedule(to);
            }
            EventKind::Timer { node, generation } => {
                let slot = &mut self.slots[node];
                if !slot.up || slot.timer.map(|t| t.1) != Some(generation) {
                    return true;
                }
                slot.timer = None;
                let mut out = Outbox::default();
                slot.node.handle_timeout(self.now, &mut out);
                self.dispatch(node, out);
                self.reschedule(node);
            }
        }
        true
    }

    /// Run until virtual time `deadline` (events at exactly `deadline` run).
    pub fn run_until(&mut self, deadline: Instant) {
        while let Some(Reverse(ev)) = self.queue.peek() {
            if ev.at > deadline {
                break;
            }
            self.step();
        }
        self.now = self.now.max(deadline);
    }

    /// Run for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let deadline = self.now + d;
        self.run_until(deadline);
    }

    /// Run until `done` holds (checked every `check_every` of virtual time)
    /// or `limit` has passed; returns the virtual time it took, or `None`.
    pub fn run_until_true(&mut self, limit: Duration, check_every: Duration, mut done: impl FnMut(&Self) -> bool) -> Option<Duration> {
        let begin = self.now;
        loop {
            if done(self) {
                return Some(self.now - begin);
            }
            if self.now - begin >= limit {
                return None;
            }
            self.run_for(check_every);
        }
    }

    fn dispatch(&mut self, from: NodeId, mut out: Outbox<N::Msg>) {
        for (to, msg) in out.sends.drain(..) {
            let len = N::message_len(&msg) as u64;
            let unreachable = to >= self.slots.len() || self.cut.contains(&(from, to));
            let stats = &mut self.slots[from].stats;
            stats.msgs_sent += 1;
            stats.bytes_sent += len;
            if unreachable {
                stats.msgs_dropped += 1;
                continue;
            }
            let cfg = self.links.get(&(from, to)).copied().unwrap_or(self.default_link);
            if cfg.loss > 0.0 && self.rng.random_bool(cfg.loss.min(1.0)) {
                self.slots[from].stats.msgs_dropped += 1;
                continue;
            }
            let spread = cfg.latency_max.saturating_sub(cfg.latency_min);
            let jitter = if spread.is_zero() { Duration::ZERO } else { Duration::from_nanos(self.rng.random_range(0..=spread.as_nanos() as u64)) };
            let mut at = self.now + cfg.latency_min + jitter;
            if !cfg.reorder {
                let last = self.last_delivery.entry((from, to)).or_insert(at);
                at = at.max(*last);
                *last = at;
            }
            let incarnation = self.slots[to].incarnation;
            self.push(at, EventKind::Deliver { from, to, msg, incarnation });
        }
    }

    fn reschedule(&mut self, id: NodeId) {
        if !self.slots[id].up {
            return;
        }
        let want = self.slots[id].node.poll_timeout();
        match (want, self.slots[id].timer) {
            (Some(t), Some((cur, _))) if t == cur => {}
            (Some(t), _) => {
                self.timer_generation += 1;
                let generation = self.timer_generation;
                self.slots[id].timer = Some((t, generation));
                self.push(t.max(self.now), EventKind::Timer { node: id, generation });
            }
            (None, _) => self.slots[id].timer = None,
        }
    }

    fn push(&mut self, at: Instant, kind: EventKind<N::Msg>) {
        self.seq += 1;
        self.queue.push(Reverse(Event { at, seq: self.seq, kind }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Floods a counter: each node forwards a value it has not seen to all
    /// other nodes; a periodic timer re-announces.
    struct Flood {
        id: NodeId,
        n: usize,
        best: u64,
        next: Instant,
    }

    impl SimNode for Flood {
        type Msg = u64;
        fn handle_message(&mut self, _now: Instant, from: NodeId, msg: u64, out: &mut Outbox<u64>) {
            if msg < self.best {
                out.send(from, self.best);
            } else if msg > self.best {
                self.best = msg;
                for to in (0..self.n).filter(|&t| t != self.id) {
                    out.send(to, msg);
                }
            }
        }
        fn handle_timeout(&mut self, now: Instant, out: &mut Outbox<u64>) {
            self.next = now + Duration::from_millis(100);
            for to in (0..self.n).filter(|&t| t != self.id) {
                out.send(to, self.best);
            }
        }
        fn poll_timeout(&self) -> Option<Instant> {
            Some(self.next)
        }
        fn message_len(_: &u64) -> usize {
            8
        }
    }

    fn run(seed: u64) -> (Duration, Vec<NodeStats>) {
        let mut sim = Sim::new(seed);
        sim.set_default_link(LinkConfig { loss: 0.3, reorder: true, ..LinkConfig::default() });
        let start = sim.start();
        for id in 0..5 {
            sim.add_node(Flood { id, n: 5, best: 0, next: start + Duration::from_secs(1) });
        }
        sim.cut(0, 1);
        sim.with_node(0, |n, _, out| {
            n.best = 42;
            for to in 1..5 {
                out.send(to, 42);
            }
        });
        let t = sim.run_until_true(Duration::from_secs(30), Duration::from_millis(10), |s| s.nodes().all(|(_, n)| n.best == 42)).expect("flood converges");
        (t, (0..5).map(|i| sim.stats(i)).collect())
    }

    #[test]
    fn same_seed_same_run() {
        assert_eq!(run(3), run(3));
    }

    #[test]
    fn cut_links_drop_and_count() {
        let (_, stats) = run(11);
        assert!(stats[0].msgs_dropped >= 1, "the cut link 0-1 dropped what 0 sent to 1");
    }

    #[test]
    fn crashed_nodes_receive_nothing_and_restart_fresh() {
        let mut sim = Sim::new(1);
        let start = sim.start();
        for id in 0..3 {
            sim.add_node(Flood { id, n: 3, best: 0, next: start + Duration::from_secs(100) });
        }
        sim.crash(2);
        sim.with_node(0, |n, _, out| {
            n.best = 7;
            out.send(1, 7);
            out.send(2, 7);
        });
        sim.run_for(Duration::from_secs(1));
        assert_eq!(sim.node(1).best, 7);
        assert_eq!(sim.node(2).best, 0);
        sim.restart(2, Flood { id: 2, n: 3, best: 0, next: sim.now() + Duration::from_millis(1) });
        sim.run_for(Duration::from_secs(1));
        assert_eq!(sim.node(2).best, 7, "re-announcement reaches the restarted node");
    }

    #[test]
    fn in_order_links_never_reorder() {
        struct Rec(Vec<u64>);
        impl SimNode for Rec {
            type Msg = u64;
            fn handle_message(&mut self, _: Instant, _: NodeId, m: u64, _: &mut Outbox<u64>) {
                self.0.push(m);
            }
            fn handle_timeout(&mut self, _: Instant, _: &mut Outbox<u64>) {}
            fn poll_timeout(&self) -> Option<Instant> {
                None
            }
        }
        let mut sim = Sim::new(9);
        sim.set_default_link(LinkConfig { latency_max: Duration::from_millis(50), ..LinkConfig::default() });
        let a = sim.add_node(Rec(vec![]));
        let b = sim.add_node(Rec(vec![]));
        sim.with_node(a, |_, _, out| (0..100).for_each(|i| out.send(b, i)));
        sim.run_for(Duration::from_secs(1));
        assert_eq!(sim.node(b).0, (0..100).collect::<Vec<_>>());
    }
}
