//! One mesh connection as a sans-IO state machine: the handshake (protocol
//! header and version negotiation, optional Noise key exchange with the
//! password as pre-shared key, features exchange), then sealed or plain
//! [`Envelope`] frames.
//!
//! Call order: create with [`Link::new`] (the protocol header is queued at
//! once), write out [`Link::take_output`] whenever it is non-empty, feed every
//! received byte to [`Link::handle_bytes`], then drain [`Link::poll_event`].
//! After `handle_bytes` returns an error, flush the output once more (it may
//! hold a refusal telling the peer why) and close the connection.

use std::collections::VecDeque;

use prost::Message;
use rand::RngCore;
use weave_core::{PeerName, PeerUid};

use crate::crypto::{DataKeys, OpenError, Psk, SessionCipher, NOISE_PARAMS};
use crate::frame::{encode_frame, FrameDecoder, FrameTooLong};
use crate::proto::{Envelope, Features};

/// Oldest protocol version this build speaks.
pub const PROTOCOL_MIN: u8 = 1;
/// Newest protocol version this build speaks.
pub const PROTOCOL_MAX: u8 = 4;
/// Default bound on one message after the handshake.
pub const MAX_MESSAGE_LEN: usize = 1 << 20;
/// Bound on a handshake frame.
const HANDSHAKE_FRAME_MAX: usize = 4096;
/// Longest nickname accepted.
pub const MAX_NICKNAME_LEN: usize = 255;

const MAGIC: &[u8; 8] = b"WEAVE-RS";
const HELLO_LEN: usize = 1 + 8 + 3;
const FLAG_ENCRYPTED: u8 = 1;

const T_HELLO: u8 = 1;
const T_NOISE: u8 = 2;
const T_REFUSE: u8 = 3;
const T_FEATURES: u8 = 4;

/// Which side opened the TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We dialed.
    Initiator,
    /// We accepted.
    Responder,
}

/// Settings shared by every connection of a router.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LinkConfig {
    /// Oldest protocol version we accept.
    pub min_version: u8,
    /// Newest protocol version we speak.
    pub max_version: u8,
    /// Key derived from the mesh password; `None` runs unencrypted.
    pub psk: Option<Psk>,
    /// Bound on one message after the handshake.
    pub max_message_len: usize,
}

impl Default for LinkConfig {
    /// Versions [`PROTOCOL_MIN`]..[`PROTOCOL_MAX`], no password, [`MAX_MESSAGE_LEN`].
    fn default() -> Self {
        Self { min_version: PROTOCOL_MIN, max_version: PROTOCOL_MAX, psk: None, max_message_len: MAX_MESSAGE_LEN }
    }
}

/// Who we are, as told to the peer.
#[derive(Debug, Clone)]
pub struct LocalFeatures {
    /// Our peer name.
    pub name: PeerName,
    /// Our nickname (at most [`MAX_NICKNAME_LEN`] bytes).
    pub nickname: String,
    /// Our UID for this start.
    pub uid: PeerUid,
    /// The TCP port we accept mesh connections on.
    pub listen_port: u16,
}

/// The result of a completed handshake.
#[derive(Debug, Clone)]
pub struct Established {
    /// The peer's name.
    pub name: PeerName,
    /// The peer's nickname.
    pub nickname: String,
    /// The peer's UID.
    pub uid: PeerUid,
    /// Identifier of this connection, chosen by the initiator (tie-breaks duplicates).
    pub conn_id: u64,
    /// The port the peer accepts connections on.
    pub listen_port: u16,
    /// The negotiated protocol version.
    pub version: u8,
    /// Whether control messages are encrypted.
    pub encrypted: bool,
    /// Keys for the data plane, when encrypted.
    pub data_keys: Option<DataKeys>,
}

/// Why a connection failed. Every variant closes the connection; none is
/// retried differently except where the connection maker says so.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The first bytes were not our protocol header.
    #[error("not a weave-rs peer (bad protocol header)")]
    NotWeave,
    /// No protocol version in common.
    #[error("protocol version mismatch: we speak {ours_min}..{ours_max}, the peer speaks {theirs_min}..{theirs_max}")]
    VersionMismatch {
        /// Our oldest.
        ours_min: u8,
        /// Our newest.
        ours_max: u8,
        /// Their oldest.
        theirs_min: u8,
        /// Their newest.
        theirs_max: u8,
    },
    /// One side has a password and the other does not.
    #[error("encryption mismatch: {0}")]
    EncryptionMismatch(&'static str),
    /// The key exchange failed: the passwords differ.
    #[error("authentication failed: the peer's password differs from ours")]
    AuthenticationFailed,
    /// The peer refused the connection and said why (unauthenticated text).
    #[error("refused by peer: {0}")]
    Refused(String),
    /// A frame was over the limit.
    #[error(transparent)]
    FrameTooLong(#[from] FrameTooLong),
    /// A message could not be decoded.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// Which message.
        what: &'static str,
        /// The decoder's complaint.
        detail: String,
    },
    /// A message that has no place at this point of the handshake.
    #[error("unexpected {0}")]
    Unexpected(&'static str),
    /// A sealed message failed authentication.
    #[error(transparent)]
    Open(#[from] OpenError),
}

impl LinkError {
    /// This side refused the peer for what it is (not Weave, another
    /// protocol version, encryption or password): the peer is told why.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::NotWeave | Self::VersionMismatch { .. } | Self::EncryptionMismatch(_) | Self::AuthenticationFailed)
    }
}

/// A message too long to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("message of {len} bytes exceeds the limit of {max} bytes")]
pub struct MessageTooLong {
    /// Its length.
    pub len: usize,
    /// The limit.
    pub max: usize,
}

/// What a [`Link`] has to report.
#[derive(Debug)]
pub enum LinkEvent {
    /// The handshake completed.
    Established(Box<Established>),
    /// A message arrived.
    Message(Envelope),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitHello,
    AwaitNoise,
    AwaitFeatures,
    Open,
    Failed,
}

/// A connection's protocol state. See the module docs for the call order.
pub struct Link {
    cfg: LinkConfig,
    role: Role,
    local: Features,
    state: State,
    decoder: FrameDecoder,
    out: Vec<u8>,
    our_hello: [u8; HELLO_LEN],
    version: u8,
    noise: Option<snow::HandshakeState>,
    cipher: Option<SessionCipher>,
    data_keys: Option<DataKeys>,
    events: VecDeque<LinkEvent>,
}

impl Link {
    /// Start a connection; the protocol header is queued for sending.
    pub fn new(role: Role, cfg: LinkConfig, local: &LocalFeatures, rng: &mut impl RngCore) -> Self {
        let conn_id = match role {
            Role::Initiator => rng.next_u64() | 1,
            Role::Responder => 0,
        };
        let mut nickname = local.nickname.clone();
        truncate_utf8(&mut nickname, MAX_NICKNAME_LEN);
        let features = Features { name: local.name.as_u64(), nickname, uid: local.uid.as_u64(), conn_id, listen_port: u32::from(local.listen_port) };
        let mut our_hello = [0u8; HELLO_LEN];
        our_hello[0] = T_HELLO;
        our_hello[1..9].copy_from_slice(MAGIC);
        our_hello[9] = cfg.min_version;
        our_hello[10] = cfg.max_version;
        our_hello[11] = if cfg.psk.is_some() { FLAG_ENCRYPTED } else { 0 };
        let mut link = Self {
            cfg,
            role,
            local: features,
            state: State::AwaitHello,
            decoder: FrameDecoder::new(HANDSHAKE_FRAME_MAX),
            out: Vec::new(),
            our_hello,
            version: 0,
            noise: None,
            cipher: None,
            data_keys: None,
            events: VecDeque::new(),
        };
        encode_frame(&our_hello, &mut link.out);
        link
    }

    /// Whether the handshake is complete.
    pub fn is_established(&self) -> bool {
        self.state == State::Open
    }

    /// Bytes waiting to be written to the socket (taken).
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Bytes of memory the link's buffers hold (received, not yet a whole
    /// frame; and output not yet taken).
    pub fn buffer_capacity(&self) -> usize {
        self.decoder.capacity() + self.out.capacity()
    }

    /// Whether output is waiting.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<LinkEvent> {
        self.events.pop_front()
    }

    /// Feed received bytes. On error the link is dead: flush the output (a
    /// refusal may be queued) and close.
    pub fn handle_bytes(&mut self, data: &[u8]) -> Result<(), LinkError> {
        if self.state == State::Failed {
            return Err(LinkError::Unexpected("data after the connection failed"));
        }
        self.decoder.push(data);
        loop {
            let frame = match self.decoder.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                Err(e) => return self.fail(e.into()),
            };
            if let Err(e) = self.handle_frame(&frame) {
                return self.fail(e);
            }
        }
    }

    /// Queue a message. Only valid once established.
    pub fn send(&mut self, env: &Envelope) -> Result<(), MessageTooLong> {
        debug_assert_eq!(self.state, State::Open, "send before the handshake completed");
        let len = env.encoded_len();
        if len > self.cfg.max_message_len {
            return Err(MessageTooLong { len, max: self.cfg.max_message_len });
        }
        let plain = env.encode_to_vec();
        self.queue(&plain);
        Ok(())
    }

    fn queue(&mut self, plain: &[u8]) {
        match &mut self.cipher {
            Some(c) => {
                let mut sealed = Vec::with_capacity(SessionCipher::sealed_len(plain.len()));
                c.seal(plain, &mut sealed);
                encode_frame(&sealed, &mut self.out);
            }
            None => encode_frame(plain, &mut self.out),
        }
    }

    fn fail(&mut self, e: LinkError) -> Result<(), LinkError> {
        let tell_peer = e.is_refusal();
        if tell_peer && self.state != State::Open {
            let reason = match &e {
                // Phrase mismatches from the peer's point of view.
                LinkError::EncryptionMismatch(_) if self.cfg.psk.is_some() => "encryption mismatch: the peer has a password and we have none".to_owned(),
                LinkError::EncryptionMismatch(_) => "encryption mismatch: we have a password and the peer has none".to_owned(),
                other => other.to_string(),
            };
            let mut f = vec![T_REFUSE];
            f.extend_from_slice(reason.as_bytes());
            encode_frame(&f, &mut self.out);
        }
        self.state = State::Failed;
        Err(e)
    }

    fn handle_frame(&mut self, frame: &[u8]) -> Result<(), LinkError> {
        if self.state == State::Open {
            let bytes = self.open(frame)?;
            let env = Envelope::decode(&bytes[..]).map_err(|e| LinkError::Malformed { what: "message", detail: e.to_string() })?;
            self.events.push_back(LinkEvent::Message(env));
            return Ok(());
        }
        let (&tag, body) = frame.split_first().ok_or(LinkError::Unexpected("empty handshake frame"))?;
        match (tag, self.state) {
            (T_REFUSE, _) => {
                // Unauthenticated text from the peer: bounded, printable only.
                let text = String::from_utf8_lossy(&body[..body.len().min(512)]).chars().map(|c| if c.is_control() { '?' } else { c }).collect();
                Err(LinkError::Refused(text))
            }
            (T_HELLO, State::AwaitHello) => self.on_hello(frame),
            (T_NOISE, State::AwaitNoise) => self.on_noise(body),
            (T_FEATURES, State::AwaitFeatures) => self.on_features(body),
            (T_HELLO, _) if self.state == State::AwaitHello => Err(LinkError::NotWeave),
            (_, State::AwaitHello) => Err(LinkError::NotWeave),
            _ => Err(LinkError::Unexpected("handshake message out of order")),
        }
    }

    fn on_hello(&mut self, hello: &[u8]) -> Result<(), LinkError> {
        if hello.len() != HELLO_LEN || &hello[1..9] != MAGIC {
            return Err(LinkError::NotWeave);
        }
        let (theirs_min, theirs_max, flags) = (hello[9], hello[10], hello[11]);
        let lo = self.cfg.min_version.max(theirs_min);
        let hi = self.cfg.max_version.min(theirs_max);
        if lo > hi || theirs_min > theirs_max {
            return Err(LinkError::VersionMismatch { ours_min: self.cfg.min_version, ours_max: self.cfg.max_version, theirs_min, theirs_max });
        }
        self.version = hi;
        let theirs_encrypted = flags & FLAG_ENCRYPTED != 0;
        let Some(psk) = self.cfg.psk.clone() else {
            if theirs_encrypted {
                return Err(LinkError::EncryptionMismatch("the peer has a password and we have none"));
            }
            self.send_features();
            return Ok(());
        };
        if !theirs_encrypted {
            return Err(LinkError::EncryptionMismatch("we have a password and the peer has none"));
        }
        // Both hellos are the prologue: tampering with the version range or
        // flags in transit makes the key exchange fail.
        let mut prologue = Vec::with_capacity(2 * HELLO_LEN);
        match self.role {
            Role::Initiator => {
                prologue.extend_from_slice(&self.our_hello);
                prologue.extend_from_slice(hello);
            }
            Role::Responder => {
                prologue.extend_from_slice(hello);
                prologue.extend_from_slice(&self.our_hello);
            }
        }
        let builder = snow::Builder::new(NOISE_PARAMS.parse().expect("static Noise parameters parse"))
            .prologue(&prologue)
            .and_then(|b| b.psk(0, psk.bytes()))
            .expect("prologue and psk are accepted by a fresh builder");
        let mut hs = match self.role {
            Role::Initiator => builder.build_initiator(),
            Role::Responder => builder.build_responder(),
        }
        .expect("the default resolver supports the static Noise parameters");
        if self.role == Role::Initiator {
            let mut msg = vec![0u8; 128];
            let n = hs.write_message(&[], &mut msg).expect("first NN message fits 128 bytes");
            self.push_handshake_frame(T_NOISE, &msg[..n]);
        }
        self.noise = Some(hs);
        self.state = State::AwaitNoise;
        Ok(())
    }

    fn on_noise(&mut self, msg: &[u8]) -> Result<(), LinkError> {
        let mut hs = self.noise.take().ok_or(LinkError::Unexpected("key exchange message"))?;
        let mut payload = vec![0u8; msg.len()];
        if hs.read_message(msg, &mut payload).is_err() {
            return Err(LinkError::AuthenticationFailed);
        }
        if self.role == Role::Responder {
            let mut reply = vec![0u8; 128];
            let n = hs.write_message(&[], &mut reply).expect("second NN message fits 128 bytes");
            self.push_handshake_frame(T_NOISE, &reply[..n]);
        }
        if !hs.is_handshake_finished() {
            return Err(LinkError::Unexpected("key exchange did not finish in two messages"));
        }
        let split = hs.dangerously_get_raw_split();
        self.data_keys = Some(DataKeys::derive(hs.get_handshake_hash(), split, self.role == Role::Initiator));
        let transport = hs.into_transport_mode().expect("a finished handshake enters transport mode");
        self.cipher = Some(SessionCipher::new(transport));
        self.send_features();
        Ok(())
    }

    fn send_features(&mut self) {
        let mut f = vec![T_FEATURES];
        let plain = self.local.encode_to_vec();
        match &mut self.cipher {
            Some(c) => c.seal(&plain, &mut f),
            None => f.extend_from_slice(&plain),
        }
        encode_frame(&f, &mut self.out);
        self.state = State::AwaitFeatures;
    }

    /// The plaintext of a frame: opened if the link is encrypted.
    fn open<'a>(&mut self, frame: &'a [u8]) -> Result<std::borrow::Cow<'a, [u8]>, OpenError> {
        match &mut self.cipher {
            Some(c) => c.open(frame).map(std::borrow::Cow::Owned),
            None => Ok(std::borrow::Cow::Borrowed(frame)),
        }
    }

    fn on_features(&mut self, body: &[u8]) -> Result<(), LinkError> {
        let bytes = self.open(body)?;
        let f = Features::decode(&bytes[..]).map_err(|e| LinkError::Malformed { what: "features", detail: e.to_string() })?;
        let malformed = |detail: &str| LinkError::Malformed { what: "features", detail: detail.to_owned() };
        let name = PeerName::from_u64(f.name).ok_or_else(|| malformed("peer name wider than 48 bits"))?;
        let uid = PeerUid::new(f.uid).ok_or_else(|| malformed("zero uid"))?;
        if f.nickname.len() > MAX_NICKNAME_LEN {
            return Err(malformed("nickname longer than 255 bytes"));
        }
        let listen_port = u16::try_from(f.listen_port).map_err(|_| malformed("listen port above 65535"))?;
        let conn_id = match self.role {
            Role::Initiator => self.local.conn_id,
            Role::Responder if f.conn_id == 0 => return Err(malformed("initiator sent no connection id")),
            Role::Responder => f.conn_id,
        };
        self.state = State::Open;
        self.decoder.set_max(SessionCipher::sealed_len(self.cfg.max_message_len));
        self.events.push_back(LinkEvent::Established(Box::new(Established {
            name,
            nickname: f.nickname,
            uid,
            conn_id,
            listen_port,
            version: self.version,
            encrypted: self.cipher.is_some(),
            data_keys: self.data_keys.clone(),
        })));
        Ok(())
    }

    fn push_handshake_frame(&mut self, tag: u8, body: &[u8]) {
        let mut f = Vec::with_capacity(1 + body.len());
        f.push(tag);
        f.extend_from_slice(body);
        encode_frame(&f, &mut self.out);
    }
}

fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Body, Heartbeat};
    use weave_core::rng::seeded;

    fn local(n: u64) -> LocalFeatures {
        LocalFeatures { name: PeerName::from_u64(n).unwrap(), nickname: format!("host{n}"), uid: PeerUid::new(100 + n).unwrap(), listen_port: 6783 }
    }

    /// Shuttle bytes between two links until neither has output.
    fn pump(a: &mut Link, b: &mut Link) -> (Result<(), LinkError>, Result<(), LinkError>) {
        let (mut ra, mut rb) = (Ok(()), Ok(()));
        for _ in 0..10 {
            let (oa, ob) = (a.take_output(), b.take_output());
            if oa.is_empty() && ob.is_empty() {
                break;
            }
            if rb.is_ok() && !oa.is_empty() {
                rb = b.handle_bytes(&oa);
            }
            if ra.is_ok() && !ob.is_empty() {
                ra = a.handle_bytes(&ob);
            }
        }
        (ra, rb)
    }

    fn established(l: &mut Link) -> Established {
        match l.poll_event() {
            Some(LinkEvent::Established(e)) => *e,
            other => panic!("expected Established, got {other:?}"),
        }
    }

    fn pair(ca: LinkConfig, cb: LinkConfig) -> (Link, Link) {
        let mut rng = seeded(1);
        (Link::new(Role::Initiator, ca, &local(1), &mut rng), Link::new(Role::Responder, cb, &local(2), &mut rng))
    }

    fn with_password(pw: &str) -> LinkConfig {
        LinkConfig { psk: Some(Psk::from_password(pw.as_bytes())), ..LinkConfig::default() }
    }

    #[test]
    fn plain_handshake_exchanges_features_and_messages() {
        let (mut a, mut b) = pair(LinkConfig::default(), LinkConfig::default());
        let (ra, rb) = pump(&mut a, &mut b);
        ra.unwrap();
        rb.unwrap();
        let ea = established(&mut a);
        let eb = established(&mut b);
        assert_eq!(ea.name.to_string(), "00:00:00:00:00:02");
        assert_eq!(eb.nickname, "host1");
        assert_eq!(ea.conn_id, eb.conn_id);
        assert!(!ea.encrypted && ea.data_keys.is_none());
        a.send(&Body::Heartbeat(Heartbeat::default()).into()).unwrap();
        pump(&mut a, &mut b).1.unwrap();
        assert!(matches!(b.poll_event(), Some(LinkEvent::Message(_))));
    }

    #[test]
    fn encrypted_handshake_derives_mirrored_data_keys_and_hides_payloads() {
        let (mut a, mut b) = pair(with_password("s3cret"), with_password("s3cret"));
        let (ra, rb) = pump(&mut a, &mut b);
        ra.unwrap();
        rb.unwrap();
        let ea = established(&mut a);
        let eb = established(&mut b);
        assert!(ea.encrypted && eb.encrypted);
        let (ka, kb) = (ea.data_keys.unwrap(), eb.data_keys.unwrap());
        assert_eq!(ka.send, kb.recv);
        assert_eq!(ka.recv, kb.send);
        assert_ne!(ka.send, ka.recv);
        let secret = b"a very recognisable payload".to_vec();
        let env = Body::Gossip(crate::proto::ChannelMsg { channel: "c".into(), src: 1, dst: 0, data: secret.clone() });
        a.send(&env.into()).unwrap();
        let wire = a.take_output();
        assert!(!wire.windows(secret.len()).any(|w| w == &secret[..]), "plaintext visible on the wire");
        b.handle_bytes(&wire).unwrap();
        assert!(matches!(b.poll_event(), Some(LinkEvent::Message(_))));
    }

    #[test]
    fn large_messages_are_chunked_under_encryption() {
        let (mut a, mut b) = pair(with_password("pw"), with_password("pw"));
        let _ = pump(&mut a, &mut b);
        let _ = (established(&mut a), established(&mut b));
        let data = vec![7u8; 300_000];
        a.send(&Body::Gossip(crate::proto::ChannelMsg { channel: "c".into(), src: 1, dst: 0, data: data.clone() }).into()).unwrap();
        pump(&mut a, &mut b).1.unwrap();
        match b.poll_event() {
            Some(LinkEvent::Message(Envelope { body: Some(Body::Gossip(m)) })) => assert_eq!(m.data, data),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn wrong_password_is_refused_on_both_sides_with_a_reason() {
        let (mut a, mut b) = pair(with_password("right"), with_password("wrong"));
        let (ra, rb) = pump(&mut a, &mut b);
        assert_eq!(rb, Err(LinkError::AuthenticationFailed));
        let msg = ra.unwrap_err().to_string();
        assert!(msg.contains("password differs"), "{msg}");
    }

    #[test]
    fn one_side_without_password_is_an_encryption_mismatch() {
        let (mut a, mut b) = pair(with_password("pw"), LinkConfig::default());
        let (ra, rb) = pump(&mut a, &mut b);
        assert_eq!(ra.unwrap_err().to_string(), "encryption mismatch: we have a password and the peer has none");
        assert_eq!(rb.unwrap_err().to_string(), "encryption mismatch: the peer has a password and we have none");
    }

    #[test]
    fn version_mismatch_names_both_ranges() {
        let newer = LinkConfig { min_version: 5, max_version: 6, ..LinkConfig::default() };
        let (mut a, mut b) = pair(LinkConfig::default(), newer);
        let (ra, _) = pump(&mut a, &mut b);
        assert_eq!(ra.unwrap_err().to_string(), "protocol version mismatch: we speak 1..4, the peer speaks 5..6");
    }

    #[test]
    fn overlapping_ranges_pick_the_newest_common_version() {
        let a_cfg = LinkConfig { min_version: 1, max_version: 3, ..LinkConfig::default() };
        let b_cfg = LinkConfig { min_version: 2, max_version: 5, ..LinkConfig::default() };
        let (mut a, mut b) = pair(a_cfg, b_cfg);
        let _ = pump(&mut a, &mut b);
        assert_eq!(established(&mut a).version, 3);
        assert_eq!(established(&mut b).version, 3);
    }

    #[test]
    fn garbage_instead_of_header_is_not_weave() {
        let (_, mut b) = pair(LinkConfig::default(), LinkConfig::default());
        assert_eq!(b.handle_bytes(b"\x00\x00\x00\x03GET / HTTP/1.1\r\n"), Err(LinkError::NotWeave));
    }

    #[test]
    fn hostile_frame_length_is_refused() {
        let (_, mut b) = pair(LinkConfig::default(), LinkConfig::default());
        let err = b.handle_bytes(&[0xff, 0xff, 0xff, 0xff]).unwrap_err();
        assert!(matches!(err, LinkError::FrameTooLong(_)), "{err}");
    }

    fn established_encrypted_pair() -> (Link, Link) {
        let (mut a, mut b) = pair(with_password("pw"), with_password("pw"));
        let _ = pump(&mut a, &mut b);
        let _ = (established(&mut a), established(&mut b));
        (a, b)
    }

    #[test]
    fn an_empty_sealed_frame_is_not_accepted() {
        let (_, mut b) = established_encrypted_pair();
        assert_eq!(b.handle_bytes(&[0, 0, 0, 0]), Err(LinkError::Open(OpenError)));
    }

    #[test]
    fn two_sealed_frames_cannot_be_spliced_into_one() {
        let (mut a, mut b) = established_encrypted_pair();
        // Messages whose sealed form is exactly one full chunk each.
        let body = |fill: u8| {
            let mut data = vec![fill; 65_000];
            loop {
                let env: Envelope = Body::Gossip(crate::proto::ChannelMsg { channel: "c".into(), src: 1, dst: 0, data: data.clone() }).into();
                match env.encoded_len().cmp(&(65535 - 16 - 1)) {
                    std::cmp::Ordering::Equal => return env,
                    std::cmp::Ordering::Less => data.push(fill),
                    std::cmp::Ordering::Greater => {
                        data.pop();
                    }
                }
            }
        };
        a.send(&body(1)).unwrap();
        let first = a.take_output();
        a.send(&body(2)).unwrap();
        let second = a.take_output();
        let mut spliced = Vec::new();
        encode_frame(&[&first[4..], &second[4..]].concat(), &mut spliced);
        assert_eq!(b.handle_bytes(&spliced), Err(LinkError::Open(OpenError)));
    }

    #[test]
    fn tampered_sealed_message_fails_authentication() {
        let (mut a, mut b) = pair(with_password("pw"), with_password("pw"));
        let _ = pump(&mut a, &mut b);
        let _ = (established(&mut a), established(&mut b));
        a.send(&Body::Heartbeat(Heartbeat::default()).into()).unwrap();
        let mut wire = a.take_output();
        let last = wire.len() - 1;
        wire[last] ^= 1;
        assert_eq!(b.handle_bytes(&wire), Err(LinkError::Open(OpenError)));
    }
}
