//! The channel seam: a replicated data type (IPAM, weaveDNS, an embedder's
//! own) riding the mesh.
//!
//! A [`Channel`] is sans-IO like the mesh: it is handed what peers sent,
//! peer and route changes and time, and it queues what it wants sent
//! ([`Channel::poll_output`]). A channel whose state must survive a crash
//! counts its changes in [`Channel::generation`] and hands the node a
//! [`Channel::snapshot`] to save: nothing the channel queued (or relays)
//! at generation `g` leaves before `g` is saved, and the channel hears of
//! each save in [`Channel::on_saved`], where it may complete requests that
//! waited for it. A vote, a donation or a granted address can therefore
//! never be forgotten by a crash after a peer (or a caller) heard of it.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use weave_core::PeerName;

use crate::identity::PeerKey;
use crate::mesh::ConnId;
use crate::routes::Routes;

/// An error a channel returns for data it rejects.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a channel wants sent.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Output {
    /// A delta to every neighbour; each merges it and relays what is new.
    Gossip(Vec<u8>),
    /// Delivered once to every reachable peer along our broadcast tree.
    Broadcast(Vec<u8>),
    /// Routed hop by hop to one peer (dropped if it has no route).
    Unicast(PeerName, Vec<u8>),
}

/// A replicated data type riding the mesh. Only the first four methods are
/// required; the rest default to a channel with no timers, no outputs of
/// its own and nothing to persist.
pub trait Channel: std::any::Any + Send {
    /// Merge `update` (a delta or full state) from `src`; return the part
    /// that was new to us, to be relayed onward, or `None` if nothing was.
    fn on_gossip(&mut self, now: Instant, src: PeerName, update: &[u8]) -> Result<Option<Vec<u8>>, BoxError>;
    /// A broadcast from `src`, delivered once per peer on a stable topology.
    fn on_broadcast(&mut self, now: Instant, src: PeerName, data: &[u8]) -> Result<(), BoxError>;
    /// A message addressed to us by `src`.
    fn on_unicast(&mut self, now: Instant, src: PeerName, data: &[u8]) -> Result<(), BoxError>;
    /// Our full state for anti-entropy and for every new connection, as one
    /// or more messages (each within the message bound); empty if none. A
    /// persistent channel gives its last *saved* state here.
    fn full_state(&mut self, now: Instant) -> Vec<Vec<u8>>;
    /// What channel anti-entropy hashes to compare with a neighbour's
    /// digest: the same bytes wherever the state holds the same data. The
    /// default is [`Channel::full_state`]; a channel whose full state
    /// carries more (the sender's clock, say) gives its data alone.
    fn digest_state(&mut self, now: Instant) -> Vec<Vec<u8>> {
        self.full_state(now)
    }
    /// A peer left the topology: drop what only it owned, if anything.
    fn on_peer_removed(&mut self, _peer: PeerName) {}
    /// A peer joined (or rejoined) the topology, with the key its record
    /// is signed with: what a channel holds in that peer's name should be
    /// signed by it (see [`crate::identity`]).
    fn on_peer_added(&mut self, _peer: PeerName, _key: PeerKey) {}
    /// The routes changed (which peers are reachable, and through whom).
    fn on_routes(&mut self, _now: Instant, _routes: &Routes) {}
    /// The next message to send; called after every input.
    fn poll_output(&mut self) -> Option<Output> {
        None
    }
    /// When [`Channel::handle_timeout`] is next due.
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    /// A deadline given by [`Channel::poll_timeout`] passed.
    fn handle_timeout(&mut self, _now: Instant) {}
    /// Grows whenever state that must survive a crash changed; what the
    /// channel queues or relays at a generation waits until it is saved.
    /// Channels that persist nothing leave it at 0.
    fn generation(&self) -> u64 {
        0
    }
    /// The state to save, as of [`Channel::generation`].
    fn snapshot(&mut self) -> Vec<u8> {
        Vec::new()
    }
    /// Generation `generation` is saved (for a channel registered without
    /// persistence: reached). Called once per save, in order.
    fn on_saved(&mut self, _now: Instant, _generation: u64) {}
}

/// What waits for a save before it leaves.
#[derive(Debug)]
pub(crate) enum Held {
    /// An output of the channel's own.
    Output(Output),
    /// A merge's news, relayed to every neighbour but the one it came from.
    Relay { from: ConnId, data: Vec<u8> },
}

/// A registered channel and its persistence bookkeeping.
pub(crate) struct Slot {
    pub(crate) channel: Box<dyn Channel>,
    /// Whether the node saves it (otherwise every generation counts as
    /// saved as soon as it is reached).
    pub(crate) durable: bool,
    /// The generation last saved (or reached).
    pub(crate) saved: u64,
    /// Outputs and relays by the generation they wait for.
    pub(crate) held: VecDeque<(u64, Held)>,
}

impl Slot {
    pub(crate) fn new(channel: Box<dyn Channel>, durable: bool) -> Self {
        Self { channel, durable, saved: 0, held: VecDeque::new() }
    }

    /// Whether something at the channel's current generation must wait.
    pub(crate) fn unsaved(&self) -> bool {
        self.channel.generation() > self.saved
    }

    /// Take what may leave now: every held item whose generation is saved,
    /// in order, after noting that a non-durable channel has reached its
    /// generation.
    pub(crate) fn releasable(&mut self, now: Instant) -> Vec<Held> {
        if !self.durable && self.unsaved() {
            self.mark_saved(now, self.channel.generation());
        }
        let mut out = Vec::new();
        while self.held.front().is_some_and(|(g, _)| *g <= self.saved) {
            out.push(self.held.pop_front().expect("checked").1);
        }
        out
    }

    pub(crate) fn mark_saved(&mut self, now: Instant, generation: u64) {
        if generation > self.saved {
            self.saved = generation;
            self.channel.on_saved(now, generation);
        }
    }

    /// Queue `item`, produced at the channel's current generation.
    pub(crate) fn hold(&mut self, item: Held) {
        let g = self.channel.generation();
        self.held.push_back((g, item));
    }
}

/// The channels of one mesh, by name.
pub(crate) type Slots = BTreeMap<String, Slot>;
