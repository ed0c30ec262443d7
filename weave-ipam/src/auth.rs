//! Write authority over the ring: who may have written an entry, and the
//! keys that prove it.
//!
//! Every change of owner is a signed [`Grant`]: a donation (and the hand-off
//! of `weave reset`) is signed by the owner giving the space away, a takeover
//! (`rmpeer`) and a reassertion by the peer taking the space. An entry
//! carries the *chain* of grants from the initial division (which every peer
//! computes from the seeds) to its current owner, and the signature of its
//! current state by its writer (the owner, or for a grant's first state the
//! grantor). A peer checks an entry on its own, without trusting whoever
//! relayed it: each grant must cover the entry's token, follow the previous
//! one by exactly one epoch and be signed by the owner it takes from (or, for
//! a takeover, name that owner). So no peer can give itself, or anyone,
//! space it does not own, nor change another's free count or version.
//!
//! Keys come from the topology (each peer's pinned key) and, for peers that
//! have left it, from the grants themselves: the key a grant names for a
//! signer the [`KeyBook`] does not know is adopted on first sight.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashSet};
use std::hash::BuildHasher;
use std::sync::Arc;

use weave_core::PeerName;
use weave_gossip::identity::{Identity, PeerKey, Signature};

/// Longest chain of grants accepted on one entry (owner changes of one
/// address); beyond it an entry cannot change owner again.
pub const MAX_CHAIN: usize = 256;
/// What a grant's signature is made for.
pub(crate) const GRANT_DOMAIN: &str = "weave-rs ipam grant v1";
/// What an entry's signature is made for.
pub(crate) const ENTRY_DOMAIN: &str = "weave-rs ipam entry v1";
/// Signatures remembered as checked (beyond it the memory starts over).
const VERIFIED_CACHE: usize = 100_000;

/// A public key as it travels (see [`PeerKey`]: decoded only when a
/// signature made with it is checked).
pub type KeyBytes = [u8; weave_gossip::identity::KEY_LEN];

/// How a grant moves space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GrantKind {
    /// The owner gives it away (signed by the owner).
    Donation,
    /// `rmpeer`: taken from `from`, presumed dead (signed by the taker).
    Takeover {
        /// The owner it was taken from.
        from: PeerName,
    },
    /// A live peer takes back what a takeover took from it (signed by it).
    Reassert,
}

/// One change of owner of `[lo, hi)`, at `epoch`, to `to`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Grant {
    /// The epoch it starts (the previous owner's plus one).
    pub epoch: u32,
    /// The new owner.
    pub to: PeerName,
    /// First address moved.
    pub lo: u32,
    /// One past the last.
    pub hi: u32,
    /// Donation, takeover or reassertion.
    pub kind: GrantKind,
    /// The signer's key.
    pub signer_key: KeyBytes,
    /// The signer's signature (see [`Grant::signed_bytes`]).
    pub signature: Signature,
}

impl Grant {
    /// A grant made and signed by `signer`.
    pub fn new(signer: &Identity, ring_id: &[u8], epoch: u32, to: PeerName, lo: u32, hi: u32, kind: GrantKind) -> Self {
        let mut g = Self { epoch, to, lo, hi, kind, signer_key: signer.public().to_bytes(), signature: [0; 64] };
        g.signature = signer.sign(GRANT_DOMAIN, &g.signed_bytes(ring_id));
        g
    }

    /// What the signature covers: the ring's identity and every field.
    pub fn signed_bytes(&self, ring_id: &[u8]) -> Vec<u8> {
        let mut b = ring_id.to_vec();
        b.extend_from_slice(&self.epoch.to_be_bytes());
        b.extend_from_slice(&self.to.as_u64().to_be_bytes());
        b.extend_from_slice(&self.lo.to_be_bytes());
        b.extend_from_slice(&self.hi.to_be_bytes());
        match self.kind {
            GrantKind::Donation => b.push(0),
            GrantKind::Takeover { from } => {
                b.push(1);
                b.extend_from_slice(&from.as_u64().to_be_bytes());
            }
            GrantKind::Reassert => b.push(2),
        }
        b
    }

    /// Whether `t` is inside the range it moves.
    pub fn covers(&self, t: u32) -> bool {
        self.lo <= t && t < self.hi
    }
}

/// The proof that an entry's state was written by someone entitled to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Auth {
    /// Owner changes from the initial division, oldest first.
    pub chain: Arc<Vec<Grant>>,
    /// The writer's key and signature of the entry's state; `None` for an
    /// entry exactly as the initial division made it.
    pub signed: Option<(KeyBytes, Signature)>,
}

impl Auth {
    /// The chain extended by `g`.
    pub fn extended(&self, g: Grant) -> Arc<Vec<Grant>> {
        let mut c = self.chain.as_ref().clone();
        c.push(g);
        Arc::new(c)
    }
}

/// Peers' keys, and which signatures were already checked.
#[derive(Debug, Clone)]
pub struct KeyBook {
    keys: BTreeMap<PeerName, PeerKey>,
    verified: HashSet<u64>,
    hasher: RandomState,
    /// Entries and votes refused for their authority so far.
    pub refused: u64,
}

impl Default for KeyBook {
    fn default() -> Self {
        Self { keys: BTreeMap::new(), verified: HashSet::new(), hasher: RandomState::new(), refused: 0 }
    }
}

impl KeyBook {
    /// A book knowing only `identity`'s owner.
    pub fn new(ourself: PeerName, identity: &Identity) -> Self {
        let mut b = Self::default();
        b.learn(ourself, identity.public());
        b
    }

    /// `peer`'s key as the topology pins it: it replaces any other (a peer
    /// forgotten by the mesh may come back with a new key).
    pub fn learn(&mut self, peer: PeerName, key: PeerKey) {
        self.keys.insert(peer, key);
    }

    /// The key known for `peer`.
    pub fn get(&self, peer: PeerName) -> Option<PeerKey> {
        self.keys.get(&peer).copied()
    }

    /// Every key known, for saving.
    pub fn keys(&self) -> &BTreeMap<PeerName, PeerKey> {
        &self.keys
    }

    /// Whether `sig` by `peer` over `msg` verifies, `claimed` being the key
    /// the message names: it must be the key known for `peer`, or, for a
    /// peer not known, becomes it.
    pub fn verify(&mut self, peer: PeerName, claimed: &KeyBytes, domain: &str, msg: &[u8], sig: &Signature) -> bool {
        if self.keys.get(&peer).is_some_and(|k| k.to_bytes() != *claimed) {
            return false;
        }
        let memo = self.hasher.hash_one((peer, claimed, domain, msg, sig));
        if self.verified.contains(&memo) {
            return true;
        }
        let key = PeerKey::from_wire(claimed).expect("32 bytes");
        if !key.verify(domain, msg, sig) {
            return false;
        }
        self.keys.entry(peer).or_insert(key);
        if self.verified.len() >= VERIFIED_CACHE {
            self.verified.clear();
        }
        self.verified.insert(memo);
        true
    }
}
