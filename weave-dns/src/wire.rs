//! DNS gossip messages (protobuf via prost derive).

#![allow(missing_docs)] // fields mirror the documented store types

use std::net::Ipv4Addr;

use prost::Message;
use weave_core::PeerName;

use crate::store::{normalize, Key, StoreError, Value, MAX_CONTAINER_LEN};

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

/// Encode entries.
pub fn encode(sender_unix: u64, entries: &[(Key, Value)]) -> Vec<u8> {
    GossipMsg {
        sender_unix,
        entries: entries
            .iter()
            .map(|(k, v)| EntryMsg {
                hostname: k.hostname.clone(),
                origin: k.origin.as_u64(),
                container: k.container.clone(),
                addr: u32::from(k.addr),
                version: v.version,
                tombstone: v.tombstone,
            })
            .collect(),
    }
    .encode_to_vec()
}

/// Decode and validate entries.
pub fn decode(bytes: &[u8]) -> Result<(u64, Vec<(Key, Value)>), DecodeError> {
    let m = GossipMsg::decode(bytes).map_err(|e| DecodeError::Protobuf(e.to_string()))?;
    let entries = m
        .entries
        .into_iter()
        .map(|e| {
            let origin = PeerName::from_u64(e.origin).ok_or(DecodeError::Field("origin"))?;
            if normalize(&e.hostname, "")? != e.hostname {
                return Err(StoreError::InvalidName(e.hostname).into());
            }
            if e.container.is_empty() || e.container.len() > MAX_CONTAINER_LEN {
                return Err(StoreError::InvalidContainer.into());
            }
            if e.version == 0 {
                return Err(DecodeError::Field("version"));
            }
            let key = Key { hostname: e.hostname, origin, container: e.container, addr: Ipv4Addr::from(e.addr) };
            Ok((key, Value { version: e.version, tombstone: e.tombstone }))
        })
        .collect::<Result<Vec<_>, DecodeError>>()?;
    Ok((m.sender_unix, entries))
}
