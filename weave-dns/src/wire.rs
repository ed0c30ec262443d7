//! DNS gossip messages (protobuf via prost derive).

#![allow(missing_docs)] // fields mirror the documented store types

use std::net::Ipv4Addr;

use prost::Message;
use weave_core::PeerName;

use crate::store::{normalize, Key, Signed, StoreError, Value, MAX_CONTAINER_LEN};

#[derive(Clone, PartialEq, Message)]
pub struct EntryMsg {
    #[prost(string, tag = "1")]
    pub hostname: String,
    #[prost(uint64, tag = "2")]
    pub origin: u64,
    #[prost(string, tag = "3")]
    pub container: String,
    #[prost(fixed32, tag = "4")]
    pub addr: u32,
    #[prost(uint64, tag = "5")]
    pub version: u64,
    #[prost(uint64, tag = "6")]
    pub tombstone: u64,
    /// The origin's signature of the other fields (see [`Signed::verify`]).
    #[prost(bytes = "vec", tag = "7")]
    pub signature: Vec<u8>,
}

/// A batch of entries with the sender's clock.
#[derive(Clone, PartialEq, Message)]
pub struct GossipMsg {
    #[prost(uint64, tag = "1")]
    pub sender_unix: u64,
    #[prost(message, repeated, tag = "2")]
    pub entries: Vec<EntryMsg>,
}

/// A batch that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Not protobuf of this shape.
    #[error("malformed DNS gossip: {0}")]
    Protobuf(String),
    /// A field out of range.
    #[error("malformed DNS gossip: {0}")]
    Field(&'static str),
    /// A bad entry.
    #[error(transparent)]
    Entry(#[from] StoreError),
}

fn entry_msg(k: &Key, v: Value, signature: Vec<u8>) -> EntryMsg {
    EntryMsg {
        hostname: k.hostname.clone(),
        origin: k.origin.as_u64(),
        container: k.container.clone(),
        addr: u32::from(k.addr),
        version: v.version,
        tombstone: v.tombstone,
        signature,
    }
}

/// What an entry's origin signs: the entry's wire form without signature.
pub(crate) fn signed_bytes(k: &Key, v: Value) -> Vec<u8> {
    entry_msg(k, v, Vec::new()).encode_to_vec()
}

/// Encode entries.
pub fn encode(sender_unix: u64, entries: &[Signed]) -> Vec<u8> {
    GossipMsg { sender_unix, entries: entries.iter().map(|s| entry_msg(&s.key, s.value, s.signature.to_vec())).collect() }.encode_to_vec()
}

/// Highest entry version accepted: far beyond real use, far enough below
/// `u64::MAX` that bumping past it cannot overflow.
pub const MAX_VERSION: u64 = 1 << 62;

/// A decoded gossip batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The sender's clock (unix seconds).
    pub sender_unix: u64,
    /// The valid entries (signatures not checked yet: the store does).
    pub entries: Vec<Signed>,
    /// How many entries failed validation and were skipped.
    pub skipped: usize,
}

/// Decode a batch. Entries that fail validation are skipped one by one (a
/// bad entry must not stop the rest, or a peer's whole state, replicating).
pub fn decode(bytes: &[u8]) -> Result<Batch, DecodeError> {
    let m = GossipMsg::decode(bytes).map_err(|e| DecodeError::Protobuf(e.to_string()))?;
    let sender_unix = m.sender_unix;
    let total = m.entries.len();
    let entries: Vec<Signed> = m
        .entries
        .into_iter()
        .filter_map(|e| {
            // A tombstone from the future (beyond any tolerated skew) would
            // never be purged.
            if e.tombstone > sender_unix.saturating_add(2 * crate::store::MAX_CLOCK_SKEW) {
                return None;
            }
            validate(e).ok()
        })
        .collect();
    let skipped = total - entries.len();
    Ok(Batch { sender_unix, entries, skipped })
}

fn validate(e: EntryMsg) -> Result<Signed, DecodeError> {
    let origin = PeerName::from_u64(e.origin).ok_or(DecodeError::Field("origin"))?;
    if normalize(&e.hostname, "")? != e.hostname {
        return Err(StoreError::InvalidName(e.hostname).into());
    }
    if e.container.is_empty() || e.container.len() > MAX_CONTAINER_LEN {
        return Err(StoreError::InvalidContainer.into());
    }
    if e.version == 0 || e.version > MAX_VERSION {
        return Err(DecodeError::Field("version"));
    }
    let signature = e.signature.as_slice().try_into().map_err(|_| DecodeError::Field("signature"))?;
    let key = Key { hostname: e.hostname, origin, container: e.container, addr: Ipv4Addr::from(e.addr) };
    Ok(Signed { key, value: Value { version: e.version, tombstone: e.tombstone }, signature })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(version: u64, tombstone: u64) -> EntryMsg {
        EntryMsg { hostname: "a.weave.local.".into(), origin: 2, container: "c".into(), addr: 1, version, tombstone, signature: vec![7; 64] }
    }

    #[test]
    fn bad_entries_are_skipped_one_by_one() {
        let now = 1_800_000_000;
        let m = GossipMsg {
            sender_unix: now,
            entries: vec![
                entry(1, 0),
                entry(u64::MAX, 0),
                entry(0, 0),
                entry(2, u64::MAX),
                EntryMsg { hostname: "Not Valid".into(), ..entry(3, 0) },
                entry(4, now),
                EntryMsg { signature: vec![7; 63], ..entry(5, 0) },
            ],
        };
        let b = decode(&m.encode_to_vec()).unwrap();
        assert_eq!(b.skipped, 5);
        assert_eq!(b.entries.iter().map(|s| s.value.version).collect::<Vec<_>>(), vec![1, 4]);
    }
}
