//! IPAM as a weave-gossip [`Channel`]: ring and consensus state ride
//! gossip (merged hop by hop, only news relayed), space and claim requests
//! ride routed unicast.
//!
//! Register an [`IpamChannel`] on the node under [`CHANNEL`] — as a
//! persistent channel, with a [`crate::persist::StorePersist`], when its
//! state must survive a crash. The node then saves every generation before
//! anything IPAM queued leaves, and IPAM answers a request only once the
//! state that grants it is saved: an address is never handed out twice,
//! and a vote or a donation is never forgotten after a peer heard of it.
//! Requests are made inside the node ([`weave_gossip::Node::with_channel`],
//! or [`crate::service::IpamService`] over the tokio driver) with a
//! [`Reply`] that is called once the answer is durable.

use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::Instant;

use ipnet::Ipv4Net;
use prost::Message;
use weave_core::PeerName;
use weave_gossip::channel::{BoxError, Channel, Output as ChannelOutput};
use weave_gossip::routes::Routes;

use crate::ipam::{Completion, Ipam, IpamError, Outcome, Output, RequestId};

/// The channel name IPAM uses.
pub const CHANNEL: &str = "ipam";

/// Called with the answer to a request, once it is durable.
pub type Reply = Box<dyn FnOnce(Result<Ipv4Net, IpamError>) + Send>;

/// One peer's IPAM on the mesh.
pub struct IpamChannel {
    ipam: Ipam,
    /// The gossip state as of the last save: the only state others may hear
    /// of in anti-entropy.
    durable_state: Vec<u8>,
    /// Gossip states taken with snapshots, by generation, until saved.
    snapshots: VecDeque<(u64, Vec<u8>)>,
    /// The generation last saved.
    saved: u64,
    /// Pending requests and whom to tell.
    waiting: BTreeMap<RequestId, Reply>,
    /// Answers waiting for the generation that grants them to be saved.
    ready: VecDeque<(u64, Reply, Result<Ipv4Net, IpamError>)>,
    handed_off: bool,
}

impl std::fmt::Debug for IpamChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpamChannel").field("saved", &self.saved).field("waiting", &self.waiting.len()).finish_non_exhaustive()
    }
}

impl IpamChannel {
    /// IPAM as it is now (new, or restored from what was saved).
    pub fn new(ipam: Ipam) -> Self {
        let durable_state = ipam.full_state();
        let saved = ipam.generation();
        Self { ipam, durable_state, snapshots: VecDeque::new(), saved, waiting: BTreeMap::new(), ready: VecDeque::new(), handed_off: false }
    }

    /// The IPAM, to inspect.
    pub fn ipam(&self) -> &Ipam {
        &self.ipam
    }

    /// The IPAM, to call directly (free, reserve, rmpeer, leave, prime):
    /// what it queues leaves once saved, like everything else.
    pub fn ipam_mut(&mut self) -> &mut Ipam {
        &mut self.ipam
    }

    /// Whether IPAM handed its space to a peer after [`Ipam::leave`] and
    /// the peer acknowledged.
    pub fn handed_off(&self) -> bool {
        self.handed_off
    }

    /// An address in `subnet` (the default subnet if `None`) for `id`;
    /// `reply` hears the answer once it is saved. Returns the request id
    /// while the request waits (for consensus, or space from a peer).
    pub fn allocate(&mut self, now: Instant, id: &str, subnet: Option<Ipv4Net>, reply: Reply) -> Option<RequestId> {
        let r = self.ipam.allocate(now, id, subnet);
        self.request(r, reply)
    }

    /// Exactly `addr` for `id`; as [`IpamChannel::allocate`].
    pub fn claim(&mut self, now: Instant, id: &str, addr: Ipv4Net, reply: Reply) -> Option<RequestId> {
        let r = self.ipam.claim(now, id, addr);
        self.request(r, reply)
    }

    /// Free `addrs` held for `id`.
    pub fn free(&mut self, now: Instant, id: &str, addrs: impl IntoIterator<Item = Ipv4Addr>) {
        for a in addrs {
            self.ipam.free(now, id, a);
        }
    }

    /// Give up a pending request; its reply hears [`IpamError::Cancelled`].
    pub fn cancel(&mut self, req: RequestId) {
        self.ipam.cancel(req);
        if let Some(reply) = self.waiting.remove(&req) {
            reply(Err(IpamError::Cancelled));
        }
    }

    fn request(&mut self, r: Result<Outcome, IpamError>, reply: Reply) -> Option<RequestId> {
        match r {
            Err(e) => {
                reply(Err(e));
                None
            }
            Ok(Outcome::Done(n)) => {
                self.ready.push_back((self.ipam.generation(), reply, Ok(n)));
                self.answer_saved();
                None
            }
            Ok(Outcome::Pending(req)) => {
                self.waiting.insert(req, reply);
                Some(req)
            }
        }
    }

    /// Move IPAM's completions to the answers, each tagged with the
    /// generation that must be saved before it is given.
    fn take_completions(&mut self) {
        while let Some(c) = self.ipam.poll_completion() {
            let (id, r) = match c {
                Completion::Done(id, n) => (id, Ok(n)),
                Completion::Failed(id, e) => (id, Err(e)),
                Completion::HandedOff(_) => {
                    self.handed_off = true;
                    continue;
                }
            };
            match self.waiting.remove(&id) {
                Some(reply) => self.ready.push_back((self.ipam.generation(), reply, r)),
                // Nobody waits: a claim made at start (a reclaim).
                None => match r {
                    Ok(_) | Err(IpamError::Cancelled) => {}
                    Err(e) => tracing::error!(error = %e, "an address in use on this host could not be claimed back"),
                },
            }
        }
    }

    /// Give every answer whose generation is saved.
    fn answer_saved(&mut self) {
        while self.ready.front().is_some_and(|(g, _, _)| *g <= self.saved) {
            let (_, reply, r) = self.ready.pop_front().expect("checked");
            reply(r);
        }
    }
}

impl Channel for IpamChannel {
    fn on_gossip(&mut self, now: Instant, src: PeerName, update: &[u8]) -> Result<Option<Vec<u8>>, BoxError> {
        // What the merge changed leaves as IPAM's own gossip, once saved.
        self.ipam.handle_gossip(now, src, update)?;
        Ok(None)
    }

    fn on_broadcast(&mut self, now: Instant, src: PeerName, data: &[u8]) -> Result<(), BoxError> {
        self.ipam.handle_gossip(now, src, data)?;
        Ok(())
    }

    fn on_unicast(&mut self, now: Instant, src: PeerName, data: &[u8]) -> Result<(), BoxError> {
        self.ipam.handle_unicast(now, src, data)?;
        Ok(())
    }

    fn full_state(&mut self, _now: Instant) -> Vec<Vec<u8>> {
        vec![self.durable_state.clone()]
    }

    fn on_peer_added(&mut self, peer: PeerName, key: weave_gossip::PeerKey) {
        self.ipam.learn_key(peer, key);
    }

    fn on_routes(&mut self, now: Instant, routes: &Routes) {
        let me = self.ipam.name();
        self.ipam.set_reachable(now, routes.next_hops().map(|(dst, _)| dst).filter(|&p| p != me).collect());
    }

    fn poll_output(&mut self) -> Option<ChannelOutput> {
        self.take_completions();
        self.answer_saved();
        self.ipam.poll_output().map(|o| match o {
            Output::Gossip(b) => ChannelOutput::Gossip(b),
            Output::Unicast(p, b) => ChannelOutput::Unicast(p, b),
        })
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.ipam.poll_timeout()
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.ipam.handle_timeout(now);
    }

    fn generation(&self) -> u64 {
        self.ipam.generation()
    }

    fn snapshot(&mut self) -> Vec<u8> {
        self.snapshots.push_back((self.ipam.generation(), self.ipam.full_state()));
        self.ipam.snapshot().encode_to_vec()
    }

    fn on_saved(&mut self, _now: Instant, generation: u64) {
        self.saved = self.saved.max(generation);
        match self.snapshots.iter().rposition(|(g, _)| *g <= generation) {
            Some(i) => {
                self.durable_state = self.snapshots.drain(..=i).next_back().expect("in range").1;
            }
            // Registered without persistence: the generation reached is
            // the current one.
            None if generation == self.ipam.generation() => self.durable_state = self.ipam.full_state(),
            None => {}
        }
        self.take_completions();
        self.answer_saved();
    }
}
