//! The sleeve's datagram format (sans-IO; fuzzed).
//!
//! Every datagram starts with a 16-byte header that is also the AEAD's
//! associated data when the connection is encrypted:
//!
//! ```text
//!  0      magic 0x57
//!  1      version (high 4 bits) | encrypted (bit 3) | kind (bits 0..3)
//!  2..8   sender's peer name
//!  8..16  counter, big-endian: the nonce, never reused under one key
//! ```
//!
//! The body follows, then a 16-byte tag when encrypted. A `Frames` body is
//! a run of records, packed while they fit in the path MTU:
//!
//! ```text
//!  0..6   origin peer (where the frame entered the overlay)
//!  6..12  destination peer (ignored for broadcasts)
//!  12     flags: broadcast (bit 0), already delivered to this hop by the
//!         fast path (bit 1), offload metadata follows (bit 2), a piece of
//!         a larger frame follows (bit 3)
//!  13..15 length of the frame bytes in this record, big-endian
//!  [10]   with bit 2: the virtio-net header (little-endian) the frame was
//!         read with, so a TSO super-frame or a frame with a partial
//!         checksum is written out as it came in
//!  [12]   with bit 3: frame id, offset and total length (u32 each,
//!         big-endian); the pieces of one frame travel in order
//!  ..     the Ethernet frame (or piece)
//! ```
//!
//! A heartbeat (and its ack) carries a sequence number, the datagram size it
//! was padded to (path-MTU probes) and what the sender offers: trust (skip
//! encryption) and its fast-path VXLAN endpoint. A heartbeat may also echo
//! the sequence number of the last heartbeat its sender heard from the
//! receiver (4 bytes after the body, with [`BEAT_ECHO`]): on a settled path
//! that echo is the acknowledgement, and no ack datagram is sent.

use weave_core::PeerName;

/// First byte of every datagram.
pub const MAGIC: u8 = 0x57;
/// Format version.
pub const VERSION: u8 = 1;
/// Header length (also the associated data).
pub const HEADER_LEN: usize = 16;
/// AEAD tag length.
pub const TAG_LEN: usize = 16;
/// Per-frame record header length.
pub const FRAME_HEADER_LEN: usize = 15;
/// Heartbeat body length before padding.
pub const BEAT_LEN: usize = 16;

/// Frame flag: a broadcast (or multicast, or unknown unicast) from the origin.
pub const FLAG_BROADCAST: u8 = 1;
/// Frame flag: this hop already got the frame over the fast path; relay it
/// to the hop's children but do not deliver it locally again.
pub const FLAG_NO_LOCAL: u8 = 2;

/// Frame flag: a virtio-net header follows the record header.
pub const FLAG_VNET: u8 = 4;
/// Frame flag: the record carries a piece of a larger frame.
pub const FLAG_PIECE: u8 = 8;
/// Length of the virtio-net header carried with [`FLAG_VNET`].
pub const VNET_LEN: usize = 10;
/// Length of the piece header carried with [`FLAG_PIECE`].
pub const PIECE_LEN: usize = 12;

/// Where a piece sits in its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// Frame id (per origin).
    pub id: u32,
    /// Offset of this piece.
    pub offset: u32,
    /// Length of the whole frame.
    pub total: u32,
}

/// Heartbeat flag: the sender trusts our address (`--trusted-subnets`).
pub const BEAT_TRUSTS_YOU: u8 = 1;
/// Heartbeat flag: the sender offers its fast path (mac and port follow).
pub const BEAT_FASTPATH: u8 = 2;
/// Heartbeat flag: the sender hears our fast-path heartbeats.
pub const BEAT_FASTPATH_HEARD: u8 = 4;
/// Heartbeat flag: an echo follows the body (see [`Beat::echo`]).
pub const BEAT_ECHO: u8 = 8;
/// Heartbeat flag: the sender takes the echo in our next heartbeat as the
/// acknowledgement of this one; answer it with no ack datagram.
pub const BEAT_ECHO_OK: u8 = 16;
/// Length of the echo that may follow a heartbeat's body.
pub const ECHO_LEN: usize = 4;

/// What a datagram carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Ethernet frames.
    Frames,
    /// A heartbeat (possibly padded as a path-MTU probe).
    Heartbeat,
    /// The answer to a heartbeat.
    HeartbeatAck,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Self::Frames => 0,
            Self::Heartbeat => 1,
            Self::HeartbeatAck => 2,
        }
    }
}

/// A decoding failure: the datagram is dropped and counted under this reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than a header.
    #[error("datagram too short")]
    Short,
    /// Wrong magic byte.
    #[error("not a sleeve datagram")]
    Magic,
    /// Unknown version.
    #[error("unsupported sleeve version {0}")]
    Version(u8),
    /// Unknown kind.
    #[error("unknown datagram kind {0}")]
    Kind(u8),
    /// A frame record runs past the end.
    #[error("truncated frame record")]
    Truncated,
    /// A heartbeat body is too short.
    #[error("short heartbeat")]
    ShortBeat,
}

/// A parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// What follows.
    pub kind: Kind,
    /// Whether the body is sealed.
    pub encrypted: bool,
    /// Who sent it (this hop, not the frame's origin).
    pub sender: PeerName,
    /// The nonce.
    pub counter: u64,
}

impl Header {
    /// Encode into the first [`HEADER_LEN`] bytes of `out`.
    pub fn write(&self, out: &mut [u8]) {
        out[0] = MAGIC;
        out[1] = (VERSION << 4) | (u8::from(self.encrypted) << 3) | self.kind.code();
        out[2..8].copy_from_slice(&self.sender.octets());
        out[8..16].copy_from_slice(&self.counter.to_be_bytes());
    }

    /// Decode the first [`HEADER_LEN`] bytes of `buf`.
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        let h = buf.get(..HEADER_LEN).ok_or(WireError::Short)?;
        if h[0] != MAGIC {
            return Err(WireError::Magic);
        }
        let version = h[1] >> 4;
        if version != VERSION {
            return Err(WireError::Version(version));
        }
        let kind = match h[1] & 0x7 {
            0 => Kind::Frames,
            1 => Kind::Heartbeat,
            2 => Kind::HeartbeatAck,
            k => return Err(WireError::Kind(k)),
        };
        let mut name = [0u8; 6];
        name.copy_from_slice(&h[2..8]);
        let mut ctr = [0u8; 8];
        ctr.copy_from_slice(&h[8..16]);
        Ok(Self { kind, encrypted: h[1] & 0x8 != 0, sender: PeerName::from_octets(name), counter: u64::from_be_bytes(ctr) })
    }
}

/// One frame record in a `Frames` body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRecord<'a> {
    /// Where the frame entered the overlay.
    pub origin: PeerName,
    /// Its destination peer (meaningless for broadcasts).
    pub dst: PeerName,
    /// [`FLAG_BROADCAST`], [`FLAG_NO_LOCAL`] ([`FLAG_VNET`] and
    /// [`FLAG_PIECE`] follow from the fields below when writing).
    pub flags: u8,
    /// Offload metadata (virtio-net header).
    pub vnet: Option<[u8; VNET_LEN]>,
    /// Which piece of a larger frame this is.
    pub piece: Option<Piece>,
    /// The Ethernet frame (or piece).
    pub frame: &'a [u8],
}

impl FrameRecord<'_> {
    /// Whether it is a broadcast.
    pub fn is_broadcast(&self) -> bool {
        self.flags & FLAG_BROADCAST != 0
    }

    /// Record header length (with metadata).
    pub fn header_len(&self) -> usize {
        FRAME_HEADER_LEN + if self.vnet.is_some() { VNET_LEN } else { 0 } + if self.piece.is_some() { PIECE_LEN } else { 0 }
    }

    /// Encoded length.
    pub fn encoded_len(&self) -> usize {
        self.header_len() + self.frame.len()
    }

    /// Append the record to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.origin.octets());
        out.extend_from_slice(&self.dst.octets());
        let mut flags = self.flags & !(FLAG_VNET | FLAG_PIECE);
        if self.vnet.is_some() {
            flags |= FLAG_VNET;
        }
        if self.piece.is_some() {
            flags |= FLAG_PIECE;
        }
        out.push(flags);
        let len = u16::try_from(self.frame.len()).expect("records are shorter than 64 KiB");
        out.extend_from_slice(&len.to_be_bytes());
        if let Some(v) = &self.vnet {
            out.extend_from_slice(v);
        }
        if let Some(p) = &self.piece {
            out.extend_from_slice(&p.id.to_be_bytes());
            out.extend_from_slice(&p.offset.to_be_bytes());
            out.extend_from_slice(&p.total.to_be_bytes());
        }
        out.extend_from_slice(self.frame);
    }
}

/// Iterate the records of a `Frames` body; stops at the first malformed one.
pub fn frames(body: &[u8]) -> FrameIter<'_> {
    FrameIter { rest: body }
}

/// See [`frames`].
#[derive(Debug)]
pub struct FrameIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for FrameIter<'a> {
    type Item = Result<FrameRecord<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let Some(h) = self.rest.get(..FRAME_HEADER_LEN) else {
            self.rest = &[];
            return Some(Err(WireError::Truncated));
        };
        let len = usize::from(u16::from_be_bytes([h[13], h[14]]));
        let flags = h[12];
        let mut at = FRAME_HEADER_LEN;
        let mut vnet = None;
        if flags & FLAG_VNET != 0 {
            let Some(v) = self.rest.get(at..at + VNET_LEN) else {
                self.rest = &[];
                return Some(Err(WireError::Truncated));
            };
            vnet = Some(<[u8; VNET_LEN]>::try_from(v).expect("sliced to length"));
            at += VNET_LEN;
        }
        let mut piece = None;
        if flags & FLAG_PIECE != 0 {
            let Some(p) = self.rest.get(at..at + PIECE_LEN) else {
                self.rest = &[];
                return Some(Err(WireError::Truncated));
            };
            let word = |i: usize| u32::from_be_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
            piece = Some(Piece { id: word(0), offset: word(4), total: word(8) });
            at += PIECE_LEN;
        }
        let Some(frame) = self.rest.get(at..at + len) else {
            self.rest = &[];
            return Some(Err(WireError::Truncated));
        };
        let mut o = [0u8; 6];
        o.copy_from_slice(&h[0..6]);
        let mut d = [0u8; 6];
        d.copy_from_slice(&h[6..12]);
        let rec = FrameRecord { origin: PeerName::from_octets(o), dst: PeerName::from_octets(d), flags, vnet, piece, frame };
        self.rest = &self.rest[at + len..];
        Some(Ok(rec))
    }
}

/// A heartbeat or its ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Beat {
    /// Sequence number (the ack echoes the heartbeat's).
    pub seq: u32,
    /// The datagram length the heartbeat was padded to; in an ack, the
    /// length that arrived.
    pub size: u16,
    /// `BEAT_*` flags ([`BEAT_ECHO`] follows `echo` when written).
    pub flags: u8,
    /// The sender's fast-path endpoint MAC (with [`BEAT_FASTPATH`]).
    pub fastpath_mac: [u8; 6],
    /// The sender's VXLAN UDP port (with [`BEAT_FASTPATH`]).
    pub fastpath_port: u16,
    /// The sequence number of the last heartbeat the sender heard from the
    /// receiver. Senders that predate it never set it, and receivers that
    /// predate it ignore it (it sits where probe padding would).
    pub echo: Option<u32>,
}

impl Beat {
    /// Append the body (without padding).
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.size.to_be_bytes());
        out.push(if self.echo.is_some() { self.flags | BEAT_ECHO } else { self.flags & !BEAT_ECHO });
        out.extend_from_slice(&self.fastpath_mac);
        out.extend_from_slice(&self.fastpath_port.to_be_bytes());
        out.push(0);
        if let Some(e) = self.echo {
            out.extend_from_slice(&e.to_be_bytes());
        }
    }

    /// Decode a body (padding ignored).
    pub fn parse(body: &[u8]) -> Result<Self, WireError> {
        let b = body.get(..BEAT_LEN).ok_or(WireError::ShortBeat)?;
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&b[7..13]);
        let flags = b[6];
        let echo = match body.get(BEAT_LEN..BEAT_LEN + ECHO_LEN) {
            _ if flags & BEAT_ECHO == 0 => None,
            Some(e) => Some(u32::from_be_bytes([e[0], e[1], e[2], e[3]])),
            None => return Err(WireError::ShortBeat),
        };
        Ok(Self {
            seq: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            size: u16::from_be_bytes([b[4], b[5]]),
            flags,
            fastpath_mac: mac,
            fastpath_port: u16::from_be_bytes([b[13], b[14]]),
            echo,
        })
    }
}

/// What a fast-path heartbeat's payload starts with (then the sender's name).
#[cfg(any(feature = "linux", feature = "internals"))]
pub const FASTPATH_MAGIC: &[u8; 4] = b"WVFP";

/// The peer a fast-path heartbeat's payload names, if it is one.
#[cfg(any(feature = "linux", feature = "internals"))]
pub fn fastpath_heartbeat_origin(payload: &[u8]) -> Option<PeerName> {
    let name: [u8; 6] = payload.strip_prefix(FASTPATH_MAGIC)?.get(..6)?.try_into().ok()?;
    Some(PeerName::from_octets(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(v: u64) -> PeerName {
        PeerName::from_u64(v).unwrap()
    }

    #[test]
    fn header_round_trip_and_rejects() {
        let h = Header { kind: Kind::HeartbeatAck, encrypted: true, sender: n(0xabcdef), counter: u64::MAX - 3 };
        let mut b = [0u8; HEADER_LEN];
        h.write(&mut b);
        assert_eq!(Header::parse(&b), Ok(h));
        assert_eq!(Header::parse(&b[..15]), Err(WireError::Short));
        let mut bad = b;
        bad[0] = 0;
        assert_eq!(Header::parse(&bad), Err(WireError::Magic));
        let mut bad = b;
        bad[1] = (2 << 4) | 1;
        assert_eq!(Header::parse(&bad), Err(WireError::Version(2)));
        let mut bad = b;
        bad[1] = (VERSION << 4) | 7;
        assert_eq!(Header::parse(&bad), Err(WireError::Kind(7)));
    }

    #[test]
    fn frames_round_trip_and_truncation() {
        let mut body = Vec::new();
        let a = FrameRecord { origin: n(1), dst: n(2), flags: 0, vnet: None, piece: None, frame: &[1, 2, 3] };
        let b = FrameRecord { origin: n(3), dst: n(0), flags: FLAG_BROADCAST | FLAG_VNET, vnet: Some([1; VNET_LEN]), piece: None, frame: &[9; 60] };
        let c = FrameRecord {
            origin: n(3),
            dst: n(4),
            flags: FLAG_VNET | FLAG_PIECE,
            vnet: Some([2; VNET_LEN]),
            piece: Some(Piece { id: 9, offset: 1400, total: 65000 }),
            frame: &[7; 100],
        };
        a.write(&mut body);
        b.write(&mut body);
        c.write(&mut body);
        let got: Vec<_> = frames(&body).collect();
        assert_eq!(got, vec![Ok(a), Ok(b), Ok(c)]);
        for cut in 1..body.len() {
            let got: Vec<_> = frames(&body[..cut]).collect();
            if cut != a.encoded_len() && cut != a.encoded_len() + b.encoded_len() {
                assert_eq!(got.last(), Some(&Err(WireError::Truncated)), "cut at {cut}");
            }
        }
    }

    #[test]
    fn beat_round_trip() {
        let beat = Beat { seq: 7, size: 1400, flags: BEAT_FASTPATH | BEAT_TRUSTS_YOU, fastpath_mac: [2, 0, 0, 0, 0, 9], fastpath_port: 6784, echo: None };
        let mut out = Vec::new();
        beat.write(&mut out);
        assert_eq!(out.len(), BEAT_LEN);
        out.extend_from_slice(&[0; 100]);
        assert_eq!(Beat::parse(&out), Ok(beat));
        assert_eq!(Beat::parse(&out[..10]), Err(WireError::ShortBeat));
    }

    #[test]
    fn beat_echo_round_trip_and_padding_is_not_an_echo() {
        let beat = Beat { seq: 8, size: 0, flags: BEAT_ECHO_OK, fastpath_mac: [0; 6], fastpath_port: 0, echo: Some(0xdead_beef) };
        let mut out = Vec::new();
        beat.write(&mut out);
        assert_eq!(out.len(), BEAT_LEN + ECHO_LEN);
        assert_eq!(out[6], BEAT_ECHO_OK | BEAT_ECHO);
        let got = Beat::parse(&out).unwrap();
        assert_eq!(got.echo, Some(0xdead_beef));
        assert_eq!(got.flags & BEAT_ECHO_OK, BEAT_ECHO_OK);
        // The flag without the four bytes is a short heartbeat, not a guess.
        assert_eq!(Beat::parse(&out[..BEAT_LEN]), Err(WireError::ShortBeat));
        // Without the flag, what follows the body is padding.
        let mut padded = Vec::new();
        Beat { echo: None, ..beat }.write(&mut padded);
        padded.extend_from_slice(&[0xff; 40]);
        assert_eq!(Beat::parse(&padded).unwrap().echo, None);
        // A caller's stray BEAT_ECHO without an echo is not written.
        let mut stray = Vec::new();
        Beat { flags: BEAT_ECHO, echo: None, ..beat }.write(&mut stray);
        assert_eq!(Beat::parse(&stray).unwrap().echo, None);
    }
}
