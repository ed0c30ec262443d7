//! Peer identity: an Ed25519 key pair per router, so that what a peer owns
//! in the replicated state (its topology record, its DNS entries, its votes
//! and its address ranges) can be changed only by that peer.
//!
//! A peer's public key travels in its topology record, which it signs. The
//! first key a router sees for a peer name is *pinned* for as long as that
//! peer stays in its topology: records, and channel data, in that name
//! signed by any other key are refused. The router keeps its key in its state
//! directory, so a restart keeps its identity; a peer that lost its key is
//! accepted again once the mesh has forgotten it (it left the topology).
//!
//! Every signature is made over a *domain* (what is being signed) and the
//! message, so a signature made for one purpose never verifies for another.

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use rand::RngCore;

/// Length of a signature in bytes.
pub const SIGNATURE_LEN: usize = 64;
/// Length of a public key in bytes.
pub const KEY_LEN: usize = 32;

/// A signature, as carried on the wire.
pub type Signature = [u8; SIGNATURE_LEN];

/// This router's signing key. Its `Debug` form shows only the public key.
#[derive(Clone)]
pub struct Identity {
    key: SigningKey,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("public", &self.public()).finish_non_exhaustive()
    }
}

impl Identity {
    /// A new key from `rng` (a seeded RNG gives a reproducible key, for
    /// simulations; routers use the operating system's).
    pub fn generate(rng: &mut impl RngCore) -> Self {
        let mut secret = [0u8; KEY_LEN];
        rng.fill_bytes(&mut secret);
        Self::from_secret(secret)
    }

    /// The key whose secret is `secret` (as [`Identity::secret`] gave it).
    pub fn from_secret(secret: [u8; KEY_LEN]) -> Self {
        Self { key: SigningKey::from_bytes(&secret) }
    }

    /// The secret, for storing (keep it readable by the router only).
    pub fn secret(&self) -> [u8; KEY_LEN] {
        self.key.to_bytes()
    }

    /// The public key peers verify with.
    pub fn public(&self) -> PeerKey {
        PeerKey(self.key.verifying_key().to_bytes())
    }

    /// Sign `msg` for `domain`.
    pub fn sign(&self, domain: &str, msg: &[u8]) -> Signature {
        self.key.sign(&framed(domain, msg)).to_bytes()
    }
}

/// A peer's public key, as its 32 wire bytes: decoding the curve point is
/// costly, so it happens when a signature is checked, not for every record
/// read off the wire (most are not new and are never checked).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerKey([u8; KEY_LEN]);

impl std::fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PeerKey(")?;
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

impl PeerKey {
    /// A key checked now; `None` if it is not 32 bytes, not a valid point,
    /// or weak (of small order: anyone could sign for it).
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let k = Self::from_wire(bytes)?;
        k.decode().map(|_| k)
    }

    /// A key of the right length, checked only when it verifies a
    /// signature ([`PeerKey::verify`] refuses invalid and weak keys).
    pub fn from_wire(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    fn decode(&self) -> Option<VerifyingKey> {
        VerifyingKey::from_bytes(&self.0).ok().filter(|k| !k.is_weak())
    }

    /// The wire form.
    pub fn to_bytes(&self) -> [u8; KEY_LEN] {
        self.0
    }

    /// Whether `sig` is this key's signature of `msg` for `domain`. Strict:
    /// malleated signatures, invalid and weak keys are refused.
    pub fn verify(&self, domain: &str, msg: &[u8], sig: &[u8]) -> bool {
        self.verifier().is_some_and(|v| v.verify(domain, msg, sig))
    }

    /// The key decoded once, for checking many signatures: decoding the
    /// point is about a third of checking one. `None` for an invalid or
    /// weak key.
    pub fn verifier(&self) -> Option<Verifier> {
        self.decode().map(|key| Verifier { wire: *self, key })
    }
}

/// A decoded [`PeerKey`] (see [`PeerKey::verifier`]).
#[derive(Clone, Debug)]
pub struct Verifier {
    wire: PeerKey,
    key: VerifyingKey,
}

impl Verifier {
    /// The key it checks for.
    pub fn key(&self) -> PeerKey {
        self.wire
    }

    /// [`PeerKey::verify`] without decoding the key again.
    pub fn verify(&self, domain: &str, msg: &[u8], sig: &[u8]) -> bool {
        let Ok(sig) = <&[u8; SIGNATURE_LEN]>::try_from(sig) else { return false };
        self.key.verify_strict(&framed(domain, msg), &ed25519_dalek::Signature::from_bytes(sig)).is_ok()
    }
}

/// What is actually signed: the domain's length and bytes, then the message.
fn framed(domain: &str, msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + domain.len() + msg.len());
    out.extend_from_slice(&(domain.len() as u16).to_be_bytes());
    out.extend_from_slice(domain.as_bytes());
    out.extend_from_slice(msg);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn signatures_verify_only_for_their_key_domain_and_message() {
        let mut rng = StdRng::seed_from_u64(1);
        let (a, b) = (Identity::generate(&mut rng), Identity::generate(&mut rng));
        let sig = a.sign("weave-rs test", b"hello");
        assert!(a.public().verify("weave-rs test", b"hello", &sig));
        assert!(!b.public().verify("weave-rs test", b"hello", &sig), "another key");
        assert!(!a.public().verify("weave-rs other", b"hello", &sig), "another domain");
        assert!(!a.public().verify("weave-rs test", b"hellO", &sig), "another message");
        assert!(!a.public().verify("weave-rs test", b"hello", &sig[..63]), "truncated");
        let mut flipped = sig;
        flipped[10] ^= 1;
        assert!(!a.public().verify("weave-rs test", b"hello", &flipped));
    }

    #[test]
    fn keys_round_trip_and_bad_keys_are_refused() {
        let id = Identity::generate(&mut StdRng::seed_from_u64(2));
        assert_eq!(Identity::from_secret(id.secret()).public(), id.public());
        assert_eq!(PeerKey::from_bytes(&id.public().to_bytes()), Some(id.public()));
        assert_eq!(PeerKey::from_bytes(&[0u8; 31]), None);
        // The identity point has small order: anyone could sign for it.
        let mut identity_point = [0u8; 32];
        identity_point[0] = 1;
        assert_eq!(PeerKey::from_bytes(&identity_point), None);
        let weak = PeerKey::from_wire(&identity_point).expect("32 bytes");
        assert!(!weak.verify("weave-rs test", b"", &[0; 64]), "a weak key verifies nothing");
        assert!(!format!("{id:?}").contains(&format!("{:?}", id.secret())), "Debug never shows the secret");
    }
}
