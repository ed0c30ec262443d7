//! Wire messages of the mesh protocol (protobuf, via prost derive).
//!
//! After the handshake every frame is one [`Envelope`]. Field numbers are the
//! compatibility contract: add fields, never renumber.

#![allow(missing_docs)] // each message is documented; prost fields mirror them

use prost::{Message, Oneof};

/// What each side tells the other once the channel is secured.
#[derive(Clone, PartialEq, Message)]
pub struct Features {
    #[prost(uint64, tag = "1")]
    pub name: u64,
    #[prost(string, tag = "2")]
    pub nickname: String,
    #[prost(uint64, tag = "3")]
    pub uid: u64,
    /// Chosen at random by the initiator for each connection; the responder echoes 0.
    #[prost(uint64, tag = "4")]
    pub conn_id: u64,
    /// The TCP port the sender accepts connections on (for discovery).
    #[prost(uint32, tag = "5")]
    pub listen_port: u32,
}

/// One connection as listed in a peer record.
#[derive(Clone, PartialEq, Eq, Hash, Message)]
pub struct ConnectionEntry {
    #[prost(uint64, tag = "1")]
    pub name: u64,
    /// The remote's listen address (`ip:port`).
    #[prost(string, tag = "2")]
    pub address: String,
    #[prost(bool, tag = "3")]
    pub outbound: bool,
    #[prost(bool, tag = "4")]
    pub established: bool,
}

/// A versioned peer record.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct PeerRecordMsg {
    #[prost(uint64, tag = "1")]
    pub name: u64,
    #[prost(string, tag = "2")]
    pub nickname: String,
    #[prost(uint64, tag = "3")]
    pub uid: u64,
    #[prost(uint64, tag = "4")]
    pub version: u64,
    #[prost(message, repeated, tag = "5")]
    pub connections: Vec<ConnectionEntry>,
    /// The peer's public key (Ed25519, 32 bytes).
    #[prost(bytes = "vec", tag = "6")]
    pub key: Vec<u8>,
    /// The peer's signature of this record with `signature` left empty.
    #[prost(bytes = "vec", tag = "7")]
    pub signature: Vec<u8>,
}

/// Keep-alive; proves the connection is alive when nothing else flows.
#[derive(Clone, PartialEq, Message)]
pub struct Heartbeat {
    /// The sender's heartbeat interval, in milliseconds: its next heartbeat
    /// comes within this, so the receiver times the connection out only
    /// after two of them are missed. 0 (peers before this field): the
    /// receiver's own configured interval.
    #[prost(uint32, tag = "1")]
    pub interval_ms: u32,
}

/// A record version told as its change from an earlier version of the same
/// incarnation that the receiver is believed to hold (protocol version 2):
/// the connections removed and those added or changed. The nickname and key
/// are the base's. The signature is of the whole new record, so the receiver
/// rebuilds it and checks it as any other; one that holds a different
/// version asks for the record in full.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct RecordDeltaMsg {
    #[prost(uint64, tag = "1")]
    pub name: u64,
    #[prost(uint64, tag = "2")]
    pub uid: u64,
    /// The version this change starts from.
    #[prost(uint64, tag = "3")]
    pub base: u64,
    #[prost(uint64, tag = "4")]
    pub version: u64,
    /// Peers whose connection the new version no longer lists.
    #[prost(uint64, repeated, tag = "5")]
    pub removed: Vec<u64>,
    /// Connections the new version lists that the base did not, or lists differently.
    #[prost(message, repeated, tag = "6")]
    pub upserted: Vec<ConnectionEntry>,
    /// The owner's signature of the new record (see [`PeerRecordMsg::signature`]).
    #[prost(bytes = "vec", tag = "7")]
    pub signature: Vec<u8>,
}

/// Peer records the sender holds that may be new to the receiver.
#[derive(Clone, PartialEq, Message)]
pub struct TopologyUpdate {
    #[prost(message, repeated, tag = "1")]
    pub records: Vec<PeerRecordMsg>,
    /// Records told as changes (only to peers speaking protocol version 2).
    #[prost(message, repeated, tag = "2")]
    pub deltas: Vec<RecordDeltaMsg>,
}

/// Order-independent digest of every (name, uid, version) the sender holds.
#[derive(Clone, PartialEq, Message)]
pub struct TopologyDigest {
    #[prost(bytes = "vec", tag = "1")]
    pub sum: Vec<u8>,
    #[prost(uint64, tag = "2")]
    pub count: u64,
}

/// Per-bucket digests, sent when whole digests differ.
#[derive(Clone, PartialEq, Message)]
pub struct TopologyBuckets {
    #[prost(fixed64, repeated, tag = "1")]
    pub digests: Vec<u64>,
}

/// (name, uid, version) of one record.
#[derive(Clone, PartialEq, Message)]
pub struct VersionEntry {
    #[prost(uint64, tag = "1")]
    pub name: u64,
    #[prost(uint64, tag = "2")]
    pub uid: u64,
    #[prost(uint64, tag = "3")]
    pub version: u64,
}

/// Every record version the sender holds in the listed buckets; or, as an
/// offer, the versions it holds newer than the receiver's (who asks for
/// those it has not asked another neighbour for).
#[derive(Clone, PartialEq, Message)]
pub struct TopologyVersions {
    #[prost(uint32, repeated, tag = "1")]
    pub buckets: Vec<u32>,
    #[prost(message, repeated, tag = "2")]
    pub entries: Vec<VersionEntry>,
    /// An offer (from [`crate::mesh::RECORD_OFFERS`] on): answered only
    /// with a request, never with versions or records.
    #[prost(bool, tag = "3")]
    pub offer: bool,
}

/// Records the sender wants in full.
#[derive(Clone, PartialEq, Message)]
pub struct TopologyRequest {
    #[prost(uint64, repeated, tag = "1")]
    pub names: Vec<u64>,
}

/// Data of a gossip channel.
#[derive(Clone, PartialEq, Message)]
pub struct ChannelMsg {
    #[prost(string, tag = "1")]
    pub channel: String,
    /// Gossip: the peer that produced this delta. Broadcast / unicast: the source.
    #[prost(uint64, tag = "2")]
    pub src: u64,
    /// Unicast only: the destination.
    #[prost(uint64, tag = "3")]
    pub dst: u64,
    #[prost(bytes = "vec", tag = "4")]
    pub data: Vec<u8>,
}

/// Channel anti-entropy (protocol version 3): a digest of each channel's
/// full state. The receiver sends its full state of each channel whose
/// digest differs, and answers with its own digests of those (`reply`), so
/// the sender sends its state too; a channel the receiver does not hold is
/// answered with an empty digest, and the sender's state passes through it
/// as any gossip does. At rest nothing but the digests crosses.
#[derive(Clone, PartialEq, Message)]
pub struct ChannelDigests {
    #[prost(message, repeated, tag = "1")]
    pub channels: Vec<ChannelDigest>,
    /// An answer to digests that differed: not answered again.
    #[prost(bool, tag = "2")]
    pub reply: bool,
}

/// One channel's digest in [`ChannelDigests`].
#[derive(Clone, PartialEq, Message)]
pub struct ChannelDigest {
    #[prost(string, tag = "1")]
    pub channel: String,
    /// A hash of the channel's full state (empty: not held).
    #[prost(bytes = "vec", tag = "2")]
    pub sum: Vec<u8>,
}

/// Sent instead of anything else by a router at its connection limit,
/// which then closes the connection: listen addresses of other peers, the
/// least connected first, for the dialer to try instead.
#[derive(Clone, PartialEq, Message)]
pub struct Referral {
    #[prost(string, repeated, tag = "1")]
    pub addresses: Vec<String>,
}

/// The body of an [`Envelope`].
#[derive(Clone, PartialEq, Oneof)]
pub enum Body {
    #[prost(message, tag = "1")]
    Heartbeat(Heartbeat),
    #[prost(message, tag = "2")]
    Update(TopologyUpdate),
    #[prost(message, tag = "3")]
    Digest(TopologyDigest),
    #[prost(message, tag = "4")]
    Buckets(TopologyBuckets),
    #[prost(message, tag = "5")]
    Versions(TopologyVersions),
    #[prost(message, tag = "6")]
    Request(TopologyRequest),
    #[prost(message, tag = "7")]
    Gossip(ChannelMsg),
    #[prost(message, tag = "8")]
    Broadcast(ChannelMsg),
    #[prost(message, tag = "9")]
    Unicast(ChannelMsg),
    #[prost(message, tag = "10")]
    Referral(Referral),
    #[prost(message, tag = "11")]
    ChannelDigests(ChannelDigests),
}

/// One protocol message.
#[derive(Clone, PartialEq, Message)]
pub struct Envelope {
    #[prost(oneof = "Body", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11")]
    pub body: Option<Body>,
}

impl From<Body> for Envelope {
    fn from(b: Body) -> Self {
        Self { body: Some(b) }
    }
}
