//! IPAM messages on the gossip channel (protobuf via prost derive).

#![allow(missing_docs)] // fields mirror the documented Rust types

use prost::{Message, Oneof};
use weave_core::PeerName;

use crate::auth::{Auth, Grant, GrantKind};
use crate::paxos::{Ballot, NodeState, Vote};
use crate::ring::{Entry, Ring, RingError};

#[derive(Clone, PartialEq, Message)]
pub struct EntryMsg {
    #[prost(uint32, tag = "1")]
    pub token: u32,
    #[prost(uint64, tag = "2")]
    pub peer: u64,
    #[prost(uint32, tag = "3")]
    pub version: u32,
    #[prost(uint32, tag = "4")]
    pub free: u32,
    /// The peer a takeover took this entry from; 0 if none.
    #[prost(uint64, tag = "5")]
    pub taken_from: u64,
    #[prost(uint32, tag = "6")]
    pub epoch: u32,
    /// The grants from the initial division to this owner.
    #[prost(message, repeated, tag = "7")]
    pub chain: Vec<GrantMsg>,
    /// The writer's key; empty for an entry as the division made it.
    #[prost(bytes = "vec", tag = "8")]
    pub writer_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "9")]
    pub signature: Vec<u8>,
}

/// One change of owner (see [`crate::auth::Grant`]).
#[derive(Clone, PartialEq, Message)]
pub struct GrantMsg {
    #[prost(uint32, tag = "1")]
    pub epoch: u32,
    #[prost(uint64, tag = "2")]
    pub to: u64,
    #[prost(uint32, tag = "3")]
    pub lo: u32,
    #[prost(uint32, tag = "4")]
    pub hi: u32,
    /// 0 donation, 1 takeover (from `from`), 2 reassertion.
    #[prost(uint32, tag = "5")]
    pub kind: u32,
    #[prost(uint64, tag = "6")]
    pub from: u64,
    #[prost(bytes = "vec", tag = "7")]
    pub signer_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "8")]
    pub signature: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct RingMsg {
    #[prost(uint32, tag = "1")]
    pub start: u32,
    #[prost(uint32, tag = "2")]
    pub end: u32,
    #[prost(uint64, repeated, tag = "3")]
    pub seeds: Vec<u64>,
    #[prost(message, repeated, tag = "4")]
    pub entries: Vec<EntryMsg>,
}

#[derive(Clone, PartialEq, Message)]
pub struct PaxosMsg {
    #[prost(uint64, tag = "1")]
    pub node: u64,
    #[prost(uint64, tag = "2")]
    pub promise_round: u64,
    #[prost(uint64, tag = "3")]
    pub promise_proposer: u64,
    #[prost(bool, tag = "4")]
    pub has_accepted: bool,
    #[prost(uint64, tag = "5")]
    pub accepted_round: u64,
    #[prost(uint64, tag = "6")]
    pub accepted_proposer: u64,
    #[prost(uint64, repeated, tag = "7")]
    pub accepted_value: Vec<u64>,
    /// The participant's key and signature (see [`crate::paxos::Vote`]).
    #[prost(bytes = "vec", tag = "8")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "9")]
    pub signature: Vec<u8>,
}

/// The gossiped state: ring and consensus.
#[derive(Clone, PartialEq, Message)]
pub struct StateMsg {
    #[prost(message, optional, tag = "1")]
    pub ring: Option<RingMsg>,
    #[prost(message, repeated, tag = "2")]
    pub paxos: Vec<PaxosMsg>,
    /// An observer asks the voters to hold an election.
    #[prost(bool, tag = "3")]
    pub election_requested: bool,
}

/// Please donate space inside `[start, end)`.
#[derive(Clone, PartialEq, Message)]
pub struct SpaceRequest {
    #[prost(uint32, tag = "1")]
    pub start: u32,
    #[prost(uint32, tag = "2")]
    pub end: u32,
}

/// Please give us this one address (a claim of an address you own).
#[derive(Clone, PartialEq, Message)]
pub struct ClaimRequest {
    #[prost(uint32, tag = "1")]
    pub addr: u32,
}

/// The claim cannot be granted.
#[derive(Clone, PartialEq, Message)]
pub struct ClaimRefused {
    #[prost(uint32, tag = "1")]
    pub addr: u32,
    #[prost(string, tag = "2")]
    pub reason: String,
    /// Ask again later (e.g. we are no longer the owner: ask the new one).
    #[prost(bool, tag = "3")]
    pub retryable: bool,
}

/// rmpeer: take over your share of `dead`'s space (see
/// [`crate::ring::Ring::heirs_of`]).
#[derive(Clone, PartialEq, Message)]
pub struct TakeoverRequest {
    #[prost(uint64, tag = "1")]
    pub dead: u64,
    /// The heir should the dead peer own everything.
    #[prost(uint64, tag = "2")]
    pub fallback: u64,
}

/// A peer's key, as we knew it (persisted).
#[derive(Clone, PartialEq, Message)]
pub struct KeyMsg {
    #[prost(uint64, tag = "1")]
    pub peer: u64,
    #[prost(bytes = "vec", tag = "2")]
    pub key: Vec<u8>,
}

/// We merged the ring you handed us.
#[derive(Clone, PartialEq, Message)]
pub struct HandoffAck {}

#[derive(Clone, PartialEq, Oneof)]
pub enum Body {
    #[prost(message, tag = "1")]
    State(StateMsg),
    #[prost(message, tag = "2")]
    SpaceRequest(SpaceRequest),
    #[prost(message, tag = "3")]
    ClaimRequest(ClaimRequest),
    #[prost(message, tag = "4")]
    ClaimRefused(ClaimRefused),
    #[prost(message, tag = "5")]
    HandoffAck(HandoffAck),
    /// A ring handed to us by a peer leaving (`weave reset`).
    #[prost(message, tag = "6")]
    Handoff(StateMsg),
    #[prost(message, tag = "7")]
    Takeover(TakeoverRequest),
}

/// One address held by a container (persisted).
#[derive(Clone, PartialEq, Message)]
pub struct AllocMsg {
    #[prost(string, tag = "1")]
    pub container: String,
    #[prost(uint32, tag = "2")]
    pub addr: u32,
    #[prost(uint32, tag = "3")]
    pub prefix: u32,
}

/// Everything a peer persists.
#[derive(Clone, PartialEq, Message)]
pub struct SnapshotMsg {
    #[prost(uint64, tag = "1")]
    pub peer: u64,
    #[prost(string, tag = "2")]
    pub range: String,
    #[prost(message, optional, tag = "3")]
    pub state: Option<StateMsg>,
    #[prost(message, repeated, tag = "4")]
    pub allocations: Vec<AllocMsg>,
    /// Peers' keys as we knew them.
    #[prost(message, repeated, tag = "5")]
    pub keys: Vec<KeyMsg>,
}

#[derive(Clone, PartialEq, Message)]
pub struct IpamMsg {
    #[prost(oneof = "Body", tags = "1, 2, 3, 4, 5, 6, 7")]
    pub body: Option<Body>,
}

/// A message that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Not protobuf of the right shape.
    #[error("malformed IPAM message: {0}")]
    Protobuf(String),
    /// A peer name wider than 48 bits.
    #[error("malformed IPAM message: bad peer name")]
    PeerName,
    /// A ring that fails validation.
    #[error(transparent)]
    Ring(#[from] RingError),
    /// A key or signature of the wrong shape.
    #[error("malformed IPAM message: bad {0}")]
    Crypto(&'static str),
}

fn name(v: u64) -> Result<PeerName, DecodeError> {
    PeerName::from_u64(v).ok_or(DecodeError::PeerName)
}

fn grant_to_msg(g: &Grant) -> GrantMsg {
    let (kind, from) = match g.kind {
        GrantKind::Donation => (0, 0),
        GrantKind::Takeover { from } => (1, from.as_u64()),
        GrantKind::Reassert => (2, 0),
    };
    GrantMsg { epoch: g.epoch, to: g.to.as_u64(), lo: g.lo, hi: g.hi, kind, from, signer_key: g.signer_key.to_vec(), signature: g.signature.to_vec() }
}

fn key(bytes: &[u8]) -> Result<crate::auth::KeyBytes, DecodeError> {
    bytes.try_into().map_err(|_| DecodeError::Crypto("key"))
}

fn signature(bytes: &[u8]) -> Result<[u8; 64], DecodeError> {
    bytes.try_into().map_err(|_| DecodeError::Crypto("signature"))
}

fn grant_from_msg(g: &GrantMsg) -> Result<Grant, DecodeError> {
    let kind = match g.kind {
        0 => GrantKind::Donation,
        1 => GrantKind::Takeover { from: name(g.from)? },
        2 => GrantKind::Reassert,
        _ => return Err(DecodeError::Crypto("grant kind")),
    };
    Ok(Grant { epoch: g.epoch, to: name(g.to)?, lo: g.lo, hi: g.hi, kind, signer_key: key(&g.signer_key)?, signature: signature(&g.signature)? })
}

/// Encode a ring: every entry it holds, with its proof.
pub fn ring_to_msg(r: &Ring) -> RingMsg {
    RingMsg {
        start: r.start(),
        end: r.end(),
        seeds: r.seeds().iter().map(|s| s.as_u64()).collect(),
        entries: r
            .stored()
            .map(|(e, a)| EntryMsg {
                token: e.token,
                peer: e.peer.as_u64(),
                version: e.version,
                free: e.free,
                taken_from: e.taken_from.map_or(0, |p| p.as_u64()),
                epoch: e.epoch,
                chain: a.chain.iter().map(grant_to_msg).collect(),
                writer_key: a.signed.map(|(k, _)| k.to_vec()).unwrap_or_default(),
                signature: a.signed.map(|(_, s)| s.to_vec()).unwrap_or_default(),
            })
            .collect(),
    }
}

/// Decode and validate a ring (proofs are checked when it is merged).
pub fn ring_from_msg(m: &RingMsg) -> Result<Ring, DecodeError> {
    let seeds = m.seeds.iter().map(|&s| name(s)).collect::<Result<Vec<_>, _>>()?;
    let entries = m
        .entries
        .iter()
        .map(|e| {
            let taken_from = if e.taken_from == 0 { None } else { Some(name(e.taken_from)?) };
            let entry = Entry { token: e.token, peer: name(e.peer)?, epoch: e.epoch, version: e.version, free: e.free, taken_from };
            if e.chain.len() > crate::auth::MAX_CHAIN {
                return Err(DecodeError::Crypto("chain length"));
            }
            let chain = e.chain.iter().map(grant_from_msg).collect::<Result<Vec<_>, _>>()?;
            let signed = if e.writer_key.is_empty() && e.signature.is_empty() { None } else { Some((key(&e.writer_key)?, signature(&e.signature)?)) };
            Ok((entry, Auth { chain: std::sync::Arc::new(chain), signed }))
        })
        .collect::<Result<Vec<_>, DecodeError>>()?;
    Ok(Ring::from_parts(m.start, m.end, seeds, entries)?)
}

/// Encode consensus state.
pub fn paxos_to_msg(votes: &std::collections::BTreeMap<PeerName, Vote>) -> Vec<PaxosMsg> {
    votes
        .iter()
        .map(|(n, v)| {
            let s = &v.state;
            let (has_accepted, ab, av) = match &s.accepted {
                Some((b, v)) => (true, *b, v.iter().map(|p| p.as_u64()).collect()),
                None => (false, Ballot::default(), Vec::new()),
            };
            PaxosMsg {
                node: n.as_u64(),
                promise_round: s.promise.round,
                promise_proposer: s.promise.proposer.as_u64(),
                has_accepted,
                accepted_round: ab.round,
                accepted_proposer: ab.proposer.as_u64(),
                accepted_value: av,
                key: v.key.to_vec(),
                signature: v.signature.to_vec(),
            }
        })
        .collect()
}

/// Highest Paxos round accepted from the network: far beyond any real
/// election, far enough below `u64::MAX` that a higher one always exists.
pub const MAX_ROUND: u64 = 1 << 32;

/// Decode consensus state. Values must be non-empty sets of peers, sorted;
/// rounds at most [`MAX_ROUND`].
pub fn paxos_from_msg(m: &[PaxosMsg]) -> Result<std::collections::BTreeMap<PeerName, Vote>, DecodeError> {
    m.iter()
        .map(|p| {
            if p.promise_round > MAX_ROUND || p.accepted_round > MAX_ROUND {
                return Err(DecodeError::Protobuf("consensus round out of range".into()));
            }
            let accepted = if p.has_accepted {
                let value = p.accepted_value.iter().map(|&v| name(v)).collect::<Result<Vec<_>, _>>()?;
                if value.is_empty() || !value.windows(2).all(|w| w[0] < w[1]) {
                    return Err(DecodeError::Protobuf("consensus value must be a sorted, non-empty set of peers".into()));
                }
                Some((Ballot { round: p.accepted_round, proposer: name(p.accepted_proposer)? }, value))
            } else {
                None
            };
            let state = NodeState { promise: Ballot { round: p.promise_round, proposer: name(p.promise_proposer)? }, accepted };
            Ok((name(p.node)?, Vote { state, key: key(&p.key)?, signature: signature(&p.signature)? }))
        })
        .collect()
}

/// Decode a message.
pub fn decode(bytes: &[u8]) -> Result<Body, DecodeError> {
    IpamMsg::decode(bytes).map_err(|e| DecodeError::Protobuf(e.to_string()))?.body.ok_or_else(|| DecodeError::Protobuf("empty message".into()))
}

/// Encode a message.
pub fn encode(body: Body) -> Vec<u8> {
    IpamMsg { body: Some(body) }.encode_to_vec()
}
