//! Key material: the password-derived pre-shared key, the Noise session
//! cipher for control messages, and the data-plane keys exported per
//! connection. All primitives come from vetted crates (snow, argon2, hkdf,
//! blake2); nothing here is home-made crypto.

use std::fmt;
use std::sync::Arc;

use blake2::Blake2s256;
use hkdf::SimpleHkdf;

/// The Noise pattern: both sides ephemeral, the password-derived key mixed in
/// before the first message. Forward secret; a wrong password fails the first
/// message's authentication.
pub(crate) const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";

/// Largest Noise transport message.
const NOISE_MAX: usize = 65535;
/// AEAD tag length.
const TAG: usize = 16;

/// A 32-byte key derived from the mesh password with Argon2id, so that a
/// captured handshake does not give a cheap offline guess per password.
#[derive(Clone)]
pub struct Psk(Arc<[u8; 32]>);

impl Psk {
    /// Derive the key from a password. Takes tens of milliseconds by design;
    /// do it once per router start.
    pub fn from_password(password: &[u8]) -> Self {
        use argon2::{Algorithm, Argon2, Params, Version};
        let params = Params::new(19 * 1024, 2, 1, Some(32)).expect("static argon2 parameters are valid");
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let mut key = [0u8; 32];
        argon.hash_password_into(password, b"weave-rs mesh pre-shared key v1", &mut key).expect("output length and salt are within argon2 limits");
        Self(Arc::new(key))
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Psk(..)")
    }
}

/// Per-connection keys for the data plane (sleeve UDP encryption), one per
/// direction, derived from the Noise session with their own label so they are
/// never the keys that protect the control channel.
#[derive(Clone, PartialEq, Eq)]
pub struct DataKeys {
    /// Key for what we send to this peer.
    pub send: [u8; 32],
    /// Key for what this peer sends us.
    pub recv: [u8; 32],
}

impl fmt::Debug for DataKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKeys(..)")
    }
}

impl DataKeys {
    pub(crate) fn derive(handshake_hash: &[u8], split: ([u8; 32], [u8; 32]), initiator: bool) -> Self {
        let mut ikm = [0u8; 64];
        ikm[..32].copy_from_slice(&split.0);
        ikm[32..].copy_from_slice(&split.1);
        let hk = SimpleHkdf::<Blake2s256>::new(Some(handshake_hash), &ikm);
        let mut i2r = [0u8; 32];
        let mut r2i = [0u8; 32];
        hk.expand(b"weave-rs data initiator->responder", &mut i2r).expect("32 bytes is a valid HKDF length");
        hk.expand(b"weave-rs data responder->initiator", &mut r2i).expect("32 bytes is a valid HKDF length");
        if initiator {
            Self { send: i2r, recv: r2i }
        } else {
            Self { send: r2i, recv: i2r }
        }
    }
}

/// A control message failed authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("message failed authentication (corrupted, replayed or forged)")]
pub struct OpenError;

/// AEAD for control messages with an implicit per-direction counter nonce
/// (Noise transport mode). Messages longer than a Noise message are sealed
/// in 64 KiB chunks, each with its own tag. Each chunk's plaintext starts
/// with a flag saying whether it is the last, so the boundaries between
/// messages are authenticated too: two frames cannot be spliced into one.
pub(crate) struct SessionCipher(snow::TransportState);

/// Plaintext bytes per chunk: a Noise message less the tag and the flag.
const CHUNK: usize = NOISE_MAX - TAG - 1;
const MORE: u8 = 0;
const LAST: u8 = 1;

impl SessionCipher {
    pub(crate) fn new(t: snow::TransportState) -> Self {
        Self(t)
    }

    pub(crate) fn sealed_len(plain: usize) -> usize {
        let chunks = plain.div_ceil(CHUNK).max(1);
        plain + chunks * (TAG + 1)
    }

    pub(crate) fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) {
        let n = plain.len().div_ceil(CHUNK).max(1);
        let mut buf = Vec::with_capacity(CHUNK + 1);
        for i in 0..n {
            let c = &plain[(i * CHUNK).min(plain.len())..((i + 1) * CHUNK).min(plain.len())];
            buf.clear();
            buf.push(if i + 1 == n { LAST } else { MORE });
            buf.extend_from_slice(c);
            let start = out.len();
            out.resize(start + buf.len() + TAG, 0);
            let w = self.0.write_message(&buf, &mut out[start..]).expect("chunk fits a Noise message and the nonce cannot wrap in 2^64 messages");
            out.truncate(start + w);
        }
    }

    pub(crate) fn open(&mut self, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.is_empty() {
            return Err(OpenError);
        }
        let mut plain = Vec::with_capacity(sealed.len());
        let mut chunks = sealed.chunks(NOISE_MAX).peekable();
        let mut buf = vec![0u8; NOISE_MAX];
        while let Some(c) = chunks.next() {
            if c.len() < TAG + 1 {
                return Err(OpenError);
            }
            let n = self.0.read_message(c, &mut buf).map_err(|_| OpenError)?;
            let want = if chunks.peek().is_some() { MORE } else { LAST };
            if n == 0 || buf[0] != want {
                return Err(OpenError);
            }
            plain.extend_from_slice(&buf[1..n]);
        }
        Ok(plain)
    }
}
