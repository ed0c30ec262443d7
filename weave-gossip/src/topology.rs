//! The topology: one versioned record per peer, listing its connections.
//!
//! Merging is a join: for each peer keep the record with the highest
//! `(version, uid)`, so merge is commutative, associative and idempotent and
//! every peer that has seen the same records holds the same topology. Only a
//! peer writes its own record; if it is told of a record of itself at least as
//! new as its own (an older incarnation, or state it lost), it bumps its
//! version beyond it so its current record wins everywhere.
//!
//! Every record is signed by its peer's key, which it carries: a record in a
//! name whose key differs from the one pinned for that name (the key of the
//! record we hold) or whose signature does not verify is refused, so no peer
//! can rewrite another's record — nor raise its version to the ceiling and
//! so cut it off. A record of our own name counts only if our key signed it
//! (an older incarnation of ours, the key being kept across restarts).
//!
//! Peers named in connections but with no record yet are *placeholders*:
//! derived on demand, never stored, so they cannot make merge order matter.
//! Peers no longer reachable from us through the listed connections are
//! garbage-collected by [`Topology::gc`].

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use blake2::{Blake2s256, Digest};
use weave_core::{PeerName, PeerUid};

use crate::identity::{Identity, PeerKey, Signature, Verifier};
use crate::link::MAX_NICKNAME_LEN;
use crate::proto::{ConnectionEntry, PeerRecordMsg, RecordDeltaMsg, VersionEntry};

/// Number of buckets anti-entropy splits the name space into.
pub const BUCKETS: usize = 64;
/// Most connections a record may list.
pub const MAX_CONNECTIONS: usize = 10_000;
/// Longest address string accepted in a connection entry.
const MAX_ADDRESS_LEN: usize = 300;
/// Highest record version accepted: far above anything real, far enough
/// below `u64::MAX` that bumping past a received version cannot overflow.
pub const MAX_VERSION: u64 = 1 << 62;
/// What a peer record's signature is made for.
const RECORD_DOMAIN: &str = "weave-rs peer record v1";
/// Changes of each record kept to tell later versions as deltas.
const CHANGES_KEPT: usize = 8;

/// One connection of a peer, as its record lists it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionInfo {
    /// The peer at the other end.
    pub peer: PeerName,
    /// Its listen address (`ip:port`).
    pub address: String,
    /// Whether the record's owner dialed.
    pub outbound: bool,
    /// Whether the connection is established.
    pub established: bool,
}

impl ConnectionInfo {
    /// A received entry of `owner`'s record, checked.
    fn from_entry(owner: PeerName, c: ConnectionEntry) -> Result<Self, InvalidRecord> {
        let peer = PeerName::from_u64(c.name).ok_or(InvalidRecord("connection to a name wider than 48 bits"))?;
        if peer == owner {
            return Err(InvalidRecord("connection to itself"));
        }
        if c.address.len() > MAX_ADDRESS_LEN {
            return Err(InvalidRecord("address too long"));
        }
        Ok(Self { peer, address: c.address, outbound: c.outbound, established: c.established })
    }

    fn to_entry(&self) -> ConnectionEntry {
        ConnectionEntry { name: self.peer.as_u64(), address: self.address.clone(), outbound: self.outbound, established: self.established }
    }
}

/// A peer as the mesh knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRecord {
    /// Its name.
    pub name: PeerName,
    /// Its nickname.
    pub nickname: String,
    /// The UID of the incarnation that wrote this record.
    pub uid: PeerUid,
    /// Bumped by the owner on every change.
    pub version: u64,
    /// Its connections, sorted by peer.
    pub connections: Vec<ConnectionInfo>,
    /// The peer's public key.
    pub key: PeerKey,
    /// The peer's signature of the rest (see [`PeerRecord::verify`]).
    pub signature: Signature,
}

/// Why a received record was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid peer record: {0}")]
pub struct InvalidRecord(&'static str);

impl PeerRecord {
    /// Validate and convert a wire record.
    pub fn from_msg(m: PeerRecordMsg) -> Result<Self, InvalidRecord> {
        let name = PeerName::from_u64(m.name).ok_or(InvalidRecord("name wider than 48 bits"))?;
        let uid = PeerUid::new(m.uid).ok_or(InvalidRecord("zero uid"))?;
        if m.version == 0 || m.version > MAX_VERSION {
            return Err(InvalidRecord("version out of range"));
        }
        if m.nickname.len() > MAX_NICKNAME_LEN {
            return Err(InvalidRecord("nickname too long"));
        }
        if m.connections.len() > MAX_CONNECTIONS {
            return Err(InvalidRecord("too many connections"));
        }
        let key = PeerKey::from_wire(&m.key).ok_or(InvalidRecord("no public key"))?;
        let signature = m.signature.as_slice().try_into().map_err(|_| InvalidRecord("no signature"))?;
        let mut connections = m.connections.into_iter().map(|c| ConnectionInfo::from_entry(name, c)).collect::<Result<Vec<_>, _>>()?;
        connections.sort();
        connections.dedup_by(|a, b| a.peer == b.peer);
        Ok(Self { name, nickname: m.nickname, uid, version: m.version, connections, key, signature })
    }

    /// The version `d` tells, rebuilt from this record, which must be its
    /// base (same peer, incarnation and version). The result still has to
    /// pass [`Topology::apply`]'s checks, its signature among them.
    pub fn patched(&self, d: RecordDeltaMsg) -> Result<Self, InvalidRecord> {
        if d.name != self.name.as_u64() || d.uid != self.uid.as_u64() || d.base != self.version {
            return Err(InvalidRecord("delta of another version"));
        }
        if d.version <= d.base || d.version > MAX_VERSION {
            return Err(InvalidRecord("version out of range"));
        }
        if d.removed.len() + d.upserted.len() > MAX_CONNECTIONS {
            return Err(InvalidRecord("too many connections"));
        }
        let signature = d.signature.as_slice().try_into().map_err(|_| InvalidRecord("no signature"))?;
        let mut upserted = d.upserted.into_iter().map(|c| ConnectionInfo::from_entry(self.name, c)).collect::<Result<Vec<_>, _>>()?;
        let touched: BTreeSet<u64> = d.removed.iter().copied().chain(upserted.iter().map(|c| c.peer.as_u64())).collect();
        let mut connections: Vec<ConnectionInfo> = self.connections.iter().filter(|c| !touched.contains(&c.peer.as_u64())).cloned().collect();
        connections.append(&mut upserted);
        if connections.len() > MAX_CONNECTIONS {
            return Err(InvalidRecord("too many connections"));
        }
        connections.sort();
        connections.dedup_by(|a, b| a.peer == b.peer);
        Ok(Self { connections, version: d.version, signature, ..self.clone_without_connections() })
    }

    fn clone_without_connections(&self) -> Self {
        Self {
            name: self.name,
            nickname: self.nickname.clone(),
            uid: self.uid,
            version: self.version,
            connections: Vec::new(),
            key: self.key,
            signature: self.signature,
        }
    }

    /// A record written and signed by `identity`'s owner.
    pub fn signed(identity: &Identity, name: PeerName, nickname: String, uid: PeerUid, version: u64, mut connections: Vec<ConnectionInfo>) -> Self {
        connections.sort();
        connections.dedup_by(|a, b| a.peer == b.peer);
        let mut r = Self { name, nickname, uid, version, connections, key: identity.public(), signature: [0; 64] };
        r.sign(identity);
        r
    }

    /// Sign (again, after a change) with `identity`, whose key it now carries.
    pub fn sign(&mut self, identity: &Identity) {
        self.key = identity.public();
        self.signature = identity.sign(RECORD_DOMAIN, &self.signed_bytes());
    }

    /// Whether the record's own key signed it. The signature covers the
    /// canonical wire form (connections sorted) without the signature.
    pub fn verify(&self) -> bool {
        self.key.verify(RECORD_DOMAIN, &self.signed_bytes(), &self.signature)
    }

    /// [`PeerRecord::verify`] with the record's key already decoded; false
    /// if `v` is not for the record's key.
    pub fn verify_with(&self, v: &Verifier) -> bool {
        v.key() == self.key && v.verify(RECORD_DOMAIN, &self.signed_bytes(), &self.signature)
    }

    /// The wire form without the signature, written straight from the
    /// record: byte for byte what encoding [`PeerRecord::to_msg`] with the
    /// signature cleared gives (fields in tag order, defaults left out),
    /// without copying every connection's address first. Every received
    /// record version is checked against this, so it runs for every peer's
    /// every change.
    fn signed_bytes(&self) -> Vec<u8> {
        use prost::encoding::{bool as pbool, bytes, encode_key, encode_varint, string, uint64, WireType};
        fn u64_field(tag: u32, v: u64, buf: &mut Vec<u8>) {
            if v != 0 {
                uint64::encode(tag, &v, buf);
            }
        }
        let entry_len = |c: &ConnectionInfo| {
            let name = c.peer.as_u64();
            (if name != 0 { uint64::encoded_len(1, &name) } else { 0 })
                + (if c.address.is_empty() { 0 } else { string::encoded_len(2, &c.address) })
                + if c.outbound { pbool::encoded_len(3, &true) } else { 0 }
                + if c.established { pbool::encoded_len(4, &true) } else { 0 }
        };
        let mut buf = Vec::with_capacity(64 + self.nickname.len() + self.connections.iter().map(|c| 16 + c.address.len()).sum::<usize>());
        u64_field(1, self.name.as_u64(), &mut buf);
        if !self.nickname.is_empty() {
            string::encode(2, &self.nickname, &mut buf);
        }
        u64_field(3, self.uid.as_u64(), &mut buf);
        u64_field(4, self.version, &mut buf);
        for c in &self.connections {
            encode_key(5, WireType::LengthDelimited, &mut buf);
            encode_varint(entry_len(c) as u64, &mut buf);
            u64_field(1, c.peer.as_u64(), &mut buf);
            if !c.address.is_empty() {
                string::encode(2, &c.address, &mut buf);
            }
            if c.outbound {
                pbool::encode(3, &true, &mut buf);
            }
            if c.established {
                pbool::encode(4, &true, &mut buf);
            }
        }
        bytes::encode(6, &self.key.to_bytes().to_vec(), &mut buf);
        buf
    }

    /// The wire form.
    pub fn to_msg(&self) -> PeerRecordMsg {
        PeerRecordMsg {
            name: self.name.as_u64(),
            nickname: self.nickname.clone(),
            uid: self.uid.as_u64(),
            version: self.version,
            connections: self.connections.iter().map(ConnectionInfo::to_entry).collect(),
            key: self.key.to_bytes().to_vec(),
            signature: self.signature.to_vec(),
        }
    }

    pub(crate) fn key(&self) -> (u64, PeerUid) {
        (self.version, self.uid)
    }
}

/// What [`Topology::apply`] changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Peers whose record was new or newer (to relay onward).
    pub changed: Vec<PeerName>,
    /// We saw a record of ourselves at least as new as ours and bumped our
    /// version beyond it: our record must be re-announced.
    pub ourself_bumped: bool,
    /// A record of our name from a UID we already bumped past came back
    /// newer: another live router uses our name. We stop bumping (that would
    /// never end) and report it.
    pub collision: Option<PeerUid>,
    /// Newer records refused: signed by a key other than the one pinned for
    /// the name, or not by their own key.
    pub refused: Vec<(PeerName, &'static str)>,
}

/// The bucket a peer name falls in.
pub fn bucket_of(name: PeerName) -> usize {
    (name.as_u64().wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize
}

fn record_hash(name: PeerName, uid: PeerUid, version: u64) -> u128 {
    let mut h = Blake2s256::new();
    h.update(name.as_u64().to_le_bytes());
    h.update(uid.as_u64().to_le_bytes());
    h.update(version.to_le_bytes());
    let out = h.finalize();
    u128::from_le_bytes(out[..16].try_into().expect("blake2s output is 32 bytes"))
}

/// Every peer record this peer holds, with ours among them.
#[derive(Debug, Clone)]
pub struct Topology {
    ourself: PeerName,
    identity: Identity,
    peers: BTreeMap<PeerName, PeerRecord>,
    /// Foreign UIDs of our name we bumped past, with the version we saw.
    bumped_past: BTreeMap<PeerUid, u64>,
    sum: u128,
    buckets: [u64; BUCKETS],
    /// The latest changes of each record, oldest first (see
    /// [`Topology::delta_since`]).
    changes: HashMap<PeerName, VecDeque<Change>>,
    /// The pinned key of each peer, decoded: every version of a record
    /// is checked against it.
    verifiers: HashMap<PeerName, Verifier>,
}

/// One record's change from one version to the next of the same
/// incarnation: the peers whose entries differ.
#[derive(Debug, Clone)]
struct Change {
    from: u64,
    to: u64,
    touched: Vec<PeerName>,
}

/// Take a record's hash out of the digests.
fn unaccount(sum: &mut u128, buckets: &mut [u64; BUCKETS], name: PeerName, h: u128) {
    *sum = sum.wrapping_sub(h);
    let b = &mut buckets[bucket_of(name)];
    *b = b.wrapping_sub(h as u64);
}

/// The peers whose entries differ between two sorted connection lists.
fn touched(old: &[ConnectionInfo], new: &[ConnectionInfo]) -> Vec<PeerName> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            (Some(a), Some(b)) if a.peer == b.peer => {
                if a != b {
                    out.push(a.peer);
                }
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a.peer < b.peer => {
                out.push(a.peer);
                i += 1;
            }
            (Some(a), None) => {
                out.push(a.peer);
                i += 1;
            }
            (_, Some(b)) => {
                out.push(b.peer);
                j += 1;
            }
            (None, None) => unreachable!("the loop condition"),
        }
    }
    out
}

impl Topology {
    /// A topology holding only our own record (version 1, no connections),
    /// signed with `identity`.
    pub fn new(identity: Identity, name: PeerName, nickname: String, uid: PeerUid) -> Self {
        let ours = PeerRecord::signed(&identity, name, nickname, uid, 1, Vec::new());
        let mut t = Self {
            ourself: name,
            identity,
            peers: BTreeMap::new(),
            bumped_past: BTreeMap::new(),
            sum: 0,
            buckets: [0; BUCKETS],
            changes: HashMap::new(),
            verifiers: HashMap::new(),
        };
        t.insert(ours);
        t
    }

    /// The key our record is signed with.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The key pinned for `name`: the key of the record we hold.
    pub fn key_of(&self, name: PeerName) -> Option<PeerKey> {
        self.peers.get(&name).map(|r| r.key)
    }

    /// Our name.
    pub fn ourself(&self) -> PeerName {
        self.ourself
    }

    /// Our record.
    pub fn our_record(&self) -> &PeerRecord {
        &self.peers[&self.ourself]
    }

    /// A peer's record.
    pub fn get(&self, name: PeerName) -> Option<&PeerRecord> {
        self.peers.get(&name)
    }

    /// Every record, ours included, by name.
    pub fn records(&self) -> impl Iterator<Item = &PeerRecord> {
        self.peers.values()
    }

    /// Number of records (ours included; placeholders not).
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Never true: our own record is always there.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Peers named in some connection that have no record yet.
    pub fn placeholders(&self) -> BTreeSet<PeerName> {
        self.peers.values().flat_map(|r| r.connections.iter().map(|c| c.peer)).filter(|p| !self.peers.contains_key(p)).collect()
    }

    /// Replace our connections; bumps our version if they changed.
    pub fn set_our_connections(&mut self, mut connections: Vec<ConnectionInfo>) -> bool {
        // As receivers read it (the signature covers this form).
        connections.sort();
        connections.dedup_by(|a, b| a.peer == b.peer);
        if self.our_record().connections == connections {
            return false;
        }
        let mut r = self.our_record().clone();
        r.connections = connections;
        r.version += 1;
        r.sign(&self.identity);
        self.insert(r);
        true
    }

    /// Merge received records. See the module docs for the rules.
    pub fn apply(&mut self, records: impl IntoIterator<Item = PeerRecord>) -> Applied {
        let mut out = Applied::default();
        // Only the newest record of each peer in a batch can win: check
        // (and verify the signature of) that one alone.
        let mut newest: BTreeMap<PeerName, PeerRecord> = BTreeMap::new();
        for r in records {
            match newest.get(&r.name) {
                Some(n) if n.key() >= r.key() => {}
                _ => {
                    newest.insert(r.name, r);
                }
            }
        }
        for r in newest.into_values() {
            if r.name == self.ourself {
                let ours = self.our_record().clone();
                if r.version >= ours.version && r != ours {
                    if r.key != ours.key || !r.verify() {
                        out.refused.push((r.name, "a record in our name not signed by our key"));
                        continue;
                    }
                    if r.uid != ours.uid {
                        if self.bumped_past.get(&r.uid).is_some_and(|&v| r.version > v) {
                            out.collision = Some(r.uid);
                            continue;
                        }
                        self.bumped_past.insert(r.uid, r.version);
                    }
                    let mut bumped = ours;
                    bumped.version = r.version.saturating_add(1);
                    bumped.sign(&self.identity);
                    self.insert(bumped);
                    out.ourself_bumped = true;
                }
                continue;
            }
            let held = self.peers.get(&r.name);
            if held.is_some_and(|e| r.key() <= e.key()) {
                continue;
            }
            if held.is_some_and(|e| e.key != r.key) {
                out.refused.push((r.name, "signed by a key other than the one pinned for its name"));
            } else if !self.verified(&r) {
                out.refused.push((r.name, "signature does not verify"));
            } else {
                out.changed.push(r.name);
                self.insert(r);
            }
        }
        out
    }

    /// Whether `r`'s signature verifies, decoding its key once per peer.
    fn verified(&mut self, r: &PeerRecord) -> bool {
        if let Some(v) = self.verifiers.get(&r.name).filter(|v| v.key() == r.key) {
            return r.verify_with(v);
        }
        let Some(v) = r.key.verifier() else { return false };
        let ok = r.verify_with(&v);
        if ok {
            self.verifiers.insert(r.name, v);
        }
        ok
    }

    fn insert(&mut self, r: PeerRecord) {
        let h = record_hash(r.name, r.uid, r.version);
        if let Some(old) = self.peers.get(&r.name) {
            let (sum, buckets) = (&mut self.sum, &mut self.buckets);
            unaccount(sum, buckets, old.name, record_hash(old.name, old.uid, old.version));
            // Log the change while it is small next to the record: a delta
            // is worth sending only then.
            let same = old.uid == r.uid && old.key == r.key && old.nickname == r.nickname && old.version < r.version;
            let t = if same { touched(&old.connections, &r.connections) } else { Vec::new() };
            if same && t.len() * 2 <= r.connections.len() {
                let log = self.changes.entry(r.name).or_default();
                if log.len() == CHANGES_KEPT {
                    log.pop_front();
                }
                log.push_back(Change { from: old.version, to: r.version, touched: t });
            } else {
                self.changes.remove(&r.name);
            }
        }
        self.sum = self.sum.wrapping_add(h);
        let b = &mut self.buckets[bucket_of(r.name)];
        *b = b.wrapping_add(h as u64);
        self.peers.insert(r.name, r);
    }

    fn unaccount(&mut self, name: PeerName, h: u128) {
        unaccount(&mut self.sum, &mut self.buckets, name, h);
    }

    /// Remove every peer not reachable from us by following listed
    /// connections; returns the names removed.
    pub fn gc(&mut self) -> Vec<PeerName> {
        self.gc_sparing(|_| false).0
    }

    /// [`Topology::gc`], but keep the unreachable peers `spare` names:
    /// returns the names removed and those kept.
    pub fn gc_sparing(&mut self, spare: impl Fn(PeerName) -> bool) -> (Vec<PeerName>, Vec<PeerName>) {
        let mut seen = BTreeSet::from([self.ourself]);
        let mut queue = VecDeque::from([self.ourself]);
        while let Some(p) = queue.pop_front() {
            if let Some(r) = self.peers.get(&p) {
                for c in &r.connections {
                    if seen.insert(c.peer) {
                        queue.push_back(c.peer);
                    }
                }
            }
        }
        let (spared, dead): (Vec<PeerName>, Vec<PeerName>) = self.peers.keys().filter(|n| !seen.contains(n)).partition(|n| spare(**n));
        for n in &dead {
            self.changes.remove(n);
            self.verifiers.remove(n);
            let r = self.peers.remove(n).expect("listed above");
            self.unaccount(r.name, record_hash(r.name, r.uid, r.version));
        }
        (dead, spared)
    }

    /// Order-independent digest of all (name, uid, version), and the count.
    pub fn digest(&self) -> (u128, u64) {
        (self.sum, self.peers.len() as u64)
    }

    /// Per-bucket digests.
    pub fn bucket_digests(&self) -> &[u64; BUCKETS] {
        &self.buckets
    }

    /// `name`'s record told as its change since version `base` of the same
    /// incarnation, if the changes since are logged and few enough that
    /// the delta is the smaller message.
    pub fn delta_since(&self, name: PeerName, base: u64) -> Option<RecordDeltaMsg> {
        let r = self.peers.get(&name)?;
        let log = self.changes.get(&name)?;
        let start = log.iter().position(|c| c.from == base)?;
        let mut touched = BTreeSet::new();
        let mut at = base;
        for c in log.iter().skip(start) {
            if c.from != at {
                return None;
            }
            touched.extend(c.touched.iter().copied());
            at = c.to;
        }
        if at != r.version || touched.len() * 2 > r.connections.len() {
            return None;
        }
        let (mut removed, mut upserted) = (Vec::new(), Vec::new());
        for p in touched {
            match r.connections.binary_search_by(|c| c.peer.cmp(&p)) {
                Ok(i) => upserted.push(r.connections[i].to_entry()),
                Err(_) => removed.push(p.as_u64()),
            }
        }
        Some(RecordDeltaMsg { name: name.as_u64(), uid: r.uid.as_u64(), base, version: r.version, removed, upserted, signature: r.signature.to_vec() })
    }

    /// (name, uid, version) of every record in the given buckets.
    pub fn versions_in(&self, buckets: &BTreeSet<usize>) -> Vec<VersionEntry> {
        self.peers
            .values()
            .filter(|r| buckets.contains(&bucket_of(r.name)))
            .map(|r| VersionEntry { name: r.name.as_u64(), uid: r.uid.as_u64(), version: r.version })
            .collect()
    }

    /// Compare a peer's versions for some buckets with ours: returns the
    /// names where we are newer (or they lack the record), and the names
    /// where they are newer (or we lack it), with their version.
    pub fn compare(&self, buckets: &BTreeSet<usize>, theirs: &[VersionEntry]) -> (Vec<PeerName>, Vec<(PeerName, u64)>) {
        let mut their_keys = BTreeMap::new();
        for v in theirs {
            if let (Some(n), Some(u)) = (PeerName::from_u64(v.name), PeerUid::new(v.uid)) {
                if buckets.contains(&bucket_of(n)) {
                    their_keys.insert(n, (v.version, u));
                }
            }
        }
        let mut ours_newer = Vec::new();
        for r in self.peers.values().filter(|r| buckets.contains(&bucket_of(r.name))) {
            if their_keys.get(&r.name).is_none_or(|k| r.key() > *k) {
                ours_newer.push(r.name);
            }
        }
        let theirs_newer = their_keys.iter().filter(|(n, k)| self.is_news(**n, **k)).map(|(n, (version, _))| (*n, *version)).collect();
        (ours_newer, theirs_newer)
    }

    /// Whether `name`'s record at `key` (version, incarnation) would be
    /// new to us: we hold none, or an older one.
    pub(crate) fn is_news(&self, name: PeerName, key: (u64, PeerUid)) -> bool {
        self.peers.get(&name).is_none_or(|r| key > r.key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use prost::Message;

    proptest! {
        #[test]
        fn signed_bytes_are_the_encoded_message_without_its_signature(
            name in 1u64..(1 << 48),
            nickname in "[a-z]{0,12}",
            uid in 1u64..u64::MAX,
            version in 1u64..MAX_VERSION,
            conns in proptest::collection::vec((1u64..(1 << 48), "[0-9.:]{0,21}", any::<bool>(), any::<bool>()), 0..20),
        ) {
            let connections = conns.into_iter().map(|(p, address, outbound, established)| ConnectionInfo { peer: PeerName::from_u64(p).unwrap(), address, outbound, established }).collect();
            let r = PeerRecord::signed(&id(1), PeerName::from_u64(name).unwrap(), nickname, PeerUid::new(uid).unwrap(), version, connections);
            let mut m = r.to_msg();
            m.signature.clear();
            prop_assert_eq!(r.signed_bytes(), m.encode_to_vec());
            prop_assert!(r.verify());
        }
    }

    proptest! {
        /// Whatever the changes, a delta from any version still logged
        /// rebuilds the current record exactly, signature and all; and
        /// from a version not logged there is none.
        #[test]
        fn a_delta_from_a_logged_version_rebuilds_the_current_record(
            steps in proptest::collection::vec(proptest::collection::btree_map(2u64..40, (0u8..3, any::<bool>()), 0..30), 1..14),
        ) {
            let mut owner = topo(1, "one", 9);
            let mut history: Vec<PeerRecord> = vec![owner.our_record().clone()];
            for step in steps {
                let conns = step
                    .into_iter()
                    .map(|(p, (addr, outbound))| ConnectionInfo { peer: n(p), address: format!("10.0.{addr}.{p}:6783"), outbound, established: true })
                    .collect();
                if owner.set_our_connections(conns) {
                    history.push(owner.our_record().clone());
                }
            }
            let current = owner.our_record().clone();
            for base in &history[..history.len() - 1] {
                if let Some(d) = owner.delta_since(n(1), base.version) {
                    prop_assert!(d.removed.len() + d.upserted.len() <= current.connections.len() / 2);
                    let rebuilt = base.patched(d).unwrap();
                    prop_assert_eq!(&rebuilt, &current);
                    prop_assert!(rebuilt.verify());
                }
            }
            prop_assert!(owner.delta_since(n(1), current.version).is_none());
        }
    }

    #[test]
    fn a_delta_tells_only_the_changed_connections_and_needs_its_base() {
        let mut owner = topo(1, "one", 9);
        owner.set_our_connections(
            (2..12).map(|p| ConnectionInfo { peer: n(p), address: format!("10.0.0.{p}:6783"), outbound: true, established: true }).collect(),
        );
        let base = owner.our_record().clone();
        let mut conns = base.connections.clone();
        conns.retain(|c| c.peer != n(3));
        conns.push(ConnectionInfo { peer: n(20), address: "10.0.0.20:6783".into(), outbound: false, established: true });
        conns[0].address = "10.9.9.9:6783".into();
        owner.set_our_connections(conns);
        let d = owner.delta_since(n(1), base.version).unwrap();
        assert_eq!(d.removed, vec![3]);
        assert_eq!(d.upserted.iter().map(|c| c.name).collect::<Vec<_>>(), vec![2, 20]);
        assert_eq!(base.patched(d.clone()).unwrap(), *owner.our_record());
        // Against any other version it is refused, not misapplied.
        let mut other = base.clone();
        other.version += 1;
        assert!(other.patched(d).is_err());
        assert!(owner.delta_since(n(1), base.version - 1).is_none(), "the first version's change was too large to log");
    }

    #[test]
    fn a_forged_delta_does_not_verify() {
        let mut owner = topo(1, "one", 9);
        owner.set_our_connections((2..12).map(|p| ConnectionInfo { peer: n(p), address: String::new(), outbound: true, established: true }).collect());
        let base = owner.our_record().clone();
        owner.set_our_connections(base.connections[1..].to_vec());
        let mut d = owner.delta_since(n(1), base.version).unwrap();
        // A relay rewrites a connection's address, keeping the signature.
        d.upserted.push(ConnectionEntry { name: 5, address: "6.6.6.6:6783".into(), outbound: true, established: true });
        let mut t = topo(2, "two", 8);
        t.apply([base.clone()]);
        let out = t.apply([base.patched(d).unwrap()]);
        assert_eq!(out.refused, vec![(n(1), "signature does not verify")]);
        assert_eq!(t.get(n(1)), Some(&base));
    }

    fn n(v: u64) -> PeerName {
        PeerName::from_u64(v).unwrap()
    }

    /// The key of peer `name` in these tests.
    fn id(name: u64) -> Identity {
        Identity::from_secret([name as u8; 32])
    }

    fn topo(name: u64, nickname: &str, uid: u64) -> Topology {
        Topology::new(id(name), n(name), nickname.into(), PeerUid::new(uid).unwrap())
    }

    fn rec(name: u64, uid: u64, version: u64, conns: &[u64]) -> PeerRecord {
        let connections =
            conns.iter().map(|&c| ConnectionInfo { peer: n(c), address: format!("10.0.0.{c}:6783"), outbound: c > name, established: true }).collect();
        PeerRecord::signed(&id(name), n(name), format!("p{name}"), PeerUid::new(uid).unwrap(), version, connections)
    }

    fn state(t: &Topology) -> Vec<PeerRecord> {
        t.records().cloned().collect()
    }

    #[test]
    fn newer_version_wins_and_older_is_ignored() {
        let mut t = topo(1, "me", 9);
        assert_eq!(t.apply([rec(2, 5, 3, &[1])]).changed, vec![n(2)]);
        assert!(t.apply([rec(2, 5, 2, &[])]).changed.is_empty());
        assert_eq!(t.get(n(2)).unwrap().version, 3);
    }

    #[test]
    fn unknown_peers_in_connections_are_placeholders_until_their_record_arrives() {
        let mut t = topo(1, "me", 9);
        t.apply([rec(2, 5, 1, &[1, 3])]);
        assert_eq!(t.placeholders(), BTreeSet::from([n(3)]));
        t.apply([rec(3, 6, 1, &[2])]);
        assert!(t.placeholders().is_empty());
    }

    #[test]
    fn an_older_incarnation_of_ourselves_makes_us_bump_beyond_it() {
        let mut t = topo(1, "me", 9);
        let out = t.apply([rec(1, 4, 17, &[2])]);
        assert!(out.ourself_bumped);
        assert_eq!(t.our_record().version, 18);
        assert_eq!(t.our_record().uid, PeerUid::new(9).unwrap(), "we keep our own uid and connections");
        assert!(t.our_record().connections.is_empty());
    }

    #[test]
    fn a_live_router_with_our_name_is_reported_not_outbid_forever() {
        let mut t = topo(1, "me", 9);
        assert!(t.apply([rec(1, 4, 5, &[])]).ourself_bumped, "an old incarnation: bump once");
        assert_eq!(t.our_record().version, 6);
        let out = t.apply([rec(1, 4, 7, &[])]);
        assert_eq!(out.collision, Some(PeerUid::new(4).unwrap()), "it outbid us: a live collider");
        assert!(!out.ourself_bumped);
        assert_eq!(t.our_record().version, 6);
    }

    #[test]
    fn no_peer_can_write_another_peers_record_or_ours() {
        let mut t = topo(1, "me", 9);
        t.apply([rec(2, 5, 3, &[1])]);
        // Peer 3 forges peer 2's record at the version ceiling, with its own key.
        let mut forged = rec(2, 5, MAX_VERSION, &[]);
        forged.sign(&id(3));
        let out = t.apply([forged.clone()]);
        assert!(out.changed.is_empty() && out.refused.len() == 1, "{out:?}");
        assert_eq!(t.get(n(2)).unwrap().version, 3);
        // Nor by keeping 2's key and changing the content.
        let mut tampered = rec(2, 5, 4, &[]);
        tampered.version = MAX_VERSION;
        assert_eq!(t.apply([tampered]).refused.len(), 1);
        // A record of ours under another key is refused, not bumped past.
        let mut ours = rec(1, 4, MAX_VERSION, &[]);
        ours.sign(&id(3));
        let out = t.apply([ours]);
        assert!(!out.ourself_bumped && out.refused.len() == 1);
        assert_eq!(t.our_record().version, 1);
        // Through the wire form too: the signature covers every field.
        let mut m = rec(2, 5, 6, &[1]).to_msg();
        m.connections[0].address = "10.9.9.9:6783".into();
        assert_eq!(t.apply([PeerRecord::from_msg(m).unwrap()]).refused.len(), 1);
        assert!(t.apply([PeerRecord::from_msg(rec(2, 5, 6, &[1]).to_msg()).unwrap()]).changed == vec![n(2)]);
    }

    #[test]
    fn a_new_key_for_a_name_is_accepted_once_the_name_was_forgotten() {
        let mut t = topo(1, "me", 9);
        t.set_our_connections(rec(1, 9, 1, &[2]).connections);
        t.apply([rec(2, 5, 1, &[1])]);
        let mut rekeyed = rec(2, 6, 1, &[1]);
        rekeyed.sign(&id(7));
        assert_eq!(t.apply([rekeyed.clone()]).refused.len(), 1, "pinned while known");
        t.set_our_connections(Vec::new());
        assert_eq!(t.gc(), vec![n(2)]);
        assert_eq!(t.apply([rekeyed]).changed, vec![n(2)]);
        assert_eq!(t.key_of(n(2)), Some(id(7).public()));
    }

    #[test]
    fn versions_near_the_integer_limit_are_rejected() {
        let mut m = rec(2, 5, 1, &[]).to_msg();
        m.version = u64::MAX;
        assert!(PeerRecord::from_msg(m).is_err());
    }

    #[test]
    fn gc_removes_peers_no_longer_reachable() {
        let mut t = topo(1, "me", 9);
        t.set_our_connections(rec(1, 9, 1, &[2]).connections);
        t.apply([rec(2, 5, 1, &[1, 3]), rec(3, 6, 1, &[2])]);
        assert!(t.gc().is_empty());
        t.apply([rec(2, 5, 2, &[1])]);
        assert_eq!(t.gc(), vec![n(3)]);
        assert!(t.get(n(3)).is_none());
    }

    #[test]
    fn digests_match_exactly_when_versions_match() {
        let mut a = topo(1, "a", 9);
        let mut b = topo(2, "b", 8);
        let ra = a.our_record().clone();
        let rb = b.our_record().clone();
        a.apply([rb.clone()]);
        assert_ne!(a.digest(), b.digest());
        b.apply([ra]);
        assert_eq!(a.digest(), b.digest());
        let all: BTreeSet<usize> = (0..BUCKETS).collect();
        let (ours, theirs) = a.compare(&all, &b.versions_in(&all));
        assert!(ours.is_empty() && theirs.is_empty());
    }

    #[test]
    fn malformed_records_are_rejected() {
        let mut m = rec(2, 5, 1, &[3]).to_msg();
        m.connections[0].name = 2;
        assert!(PeerRecord::from_msg(m).is_err());
        let mut m = rec(2, 5, 1, &[]).to_msg();
        m.uid = 0;
        assert!(PeerRecord::from_msg(m).is_err());
        let mut m = rec(2, 5, 1, &[]).to_msg();
        m.name = u64::MAX;
        assert!(PeerRecord::from_msg(m).is_err());
    }

    /// A record whose content is a function of (name, uid, version), as in
    /// the protocol: an owner writes each version of its record once.
    fn arb_record() -> impl Strategy<Value = PeerRecord> {
        (2u64..7, 1u64..3, 1u64..6).prop_map(|(name, uid, v)| {
            let mix = name.wrapping_mul(31).wrapping_add(uid * 7).wrapping_add(v * 13);
            let conns: Vec<u64> = (1u64..8).filter(|&c| c != name && (mix >> (c % 5)) & 1 == 1).collect();
            rec(name, uid, v, &conns)
        })
    }

    proptest! {
        #[test]
        fn merge_is_commutative_idempotent_and_convergent(
            history in proptest::collection::vec(arb_record(), 0..30),
            seed in any::<u64>(),
        ) {
            // Two observers see the same records in different orders, one of
            // them with every record delivered twice.
            let mut a = topo(1, "a", 99);
            let mut b = a.clone();
            a.apply(history.clone());
            let mut shuffled = history.clone();
            shuffled.extend(history.iter().cloned());
            let mut rng = weave_core::rng::seeded(seed);
            use rand::seq::SliceRandom;
            shuffled.shuffle(&mut rng);
            b.apply(shuffled);
            prop_assert_eq!(state(&a), state(&b));
            prop_assert_eq!(a.digest(), b.digest());
            prop_assert_eq!(a.placeholders(), b.placeholders());
            // Merging one's state into the other changes nothing.
            let before = state(&a);
            prop_assert!(a.apply(state(&b)).changed.is_empty());
            prop_assert_eq!(before, state(&a));
        }

        #[test]
        fn merge_is_associative(
            x in proptest::collection::vec(arb_record(), 0..10),
            y in proptest::collection::vec(arb_record(), 0..10),
            z in proptest::collection::vec(arb_record(), 0..10),
        ) {
            let base = topo(1, "a", 99);
            let mut left = base.clone();
            let mut xy = base.clone();
            xy.apply(x.clone());
            xy.apply(y.clone());
            left.apply(state(&xy));
            left.apply(z.clone());
            let mut right = base.clone();
            let mut yz = base.clone();
            yz.apply(y);
            yz.apply(z);
            right.apply(x);
            right.apply(state(&yz));
            prop_assert_eq!(state(&left), state(&right));
        }
    }
}
