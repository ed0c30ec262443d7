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
//!         fast path (bit 1)
//!  13..15 frame length, big-endian
//!  15..   the Ethernet frame
//! ```
//!
//! A heartbeat (and its ack) carries a sequence number, the datagram size it
//! was padded to (path-MTU probes) and what the sender offers: trust (skip
//! encryption) and its fast-path VXLAN endpoint.

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

/// Heartbeat flag: the sender trusts our address (`--trusted-subnets`).
pub const BEAT_TRUSTS_YOU: u8 = 1;
/// Heartbeat flag: the sender offers its fast path (mac and port follow).
pub const BEAT_FASTPATH: u8 = 2;
/// Heartbeat flag: the sender hears our fast-path heartbeats.
pub const BEAT_FASTPATH_HEARD: u8 = 4;

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
    /// [`FLAG_BROADCAST`], [`FLAG_NO_LOCAL`].
    pub flags: u8,
    /// The Ethernet frame.
    pub frame: &'a [u8],
}

impl FrameRecord<'_> {
    /// Whether it is a broadcast.
    pub fn is_broadcast(&self) -> bool {
        self.flags & FLAG_BROADCAST != 0
    }

    /// Encoded length.
    pub fn encoded_len(&self) -> usize {
        FRAME_HEADER_LEN + self.frame.len()
    }

    /// Append the record to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.origin.octets());
        out.extend_from_slice(&self.dst.octets());
        out.push(self.flags);
        let len = u16::try_from(self.frame.len()).expect("frames are shorter than 64 KiB");
        out.extend_from_slice(&len.to_be_bytes());
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
        let Some(frame) = self.rest.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len) else {
            self.rest = &[];
            return Some(Err(WireError::Truncated));
        };
        let mut o = [0u8; 6];
        o.copy_from_slice(&h[0..6]);
        let mut d = [0u8; 6];
        d.copy_from_slice(&h[6..12]);
        let rec = FrameRecord { origin: PeerName::from_octets(o), dst: PeerName::from_octets(d), flags: h[12], frame };
        self.rest = &self.rest[FRAME_HEADER_LEN + len..];
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
    /// `BEAT_*` flags.
    pub flags: u8,
    /// The sender's fast-path endpoint MAC (with [`BEAT_FASTPATH`]).
    pub fastpath_mac: [u8; 6],
    /// The sender's VXLAN UDP port (with [`BEAT_FASTPATH`]).
    pub fastpath_port: u16,
}

impl Beat {
    /// Append the body (without padding).
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.size.to_be_bytes());
        out.push(self.flags);
        out.extend_from_slice(&self.fastpath_mac);
        out.extend_from_slice(&self.fastpath_port.to_be_bytes());
        out.push(0);
    }

    /// Decode a body (padding ignored).
    pub fn parse(body: &[u8]) -> Result<Self, WireError> {
        let b = body.get(..BEAT_LEN).ok_or(WireError::ShortBeat)?;
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&b[7..13]);
        Ok(Self {
            seq: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            size: u16::from_be_bytes([b[4], b[5]]),
            flags: b[6],
            fastpath_mac: mac,
            fastpath_port: u16::from_be_bytes([b[13], b[14]]),
        })
    }
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
        let a = FrameRecord { origin: n(1), dst: n(2), flags: 0, frame: &[1, 2, 3] };
        let b = FrameRecord { origin: n(3), dst: n(0), flags: FLAG_BROADCAST, frame: &[9; 60] };
        a.write(&mut body);
        b.write(&mut body);
        let got: Vec<_> = frames(&body).collect();
        assert_eq!(got, vec![Ok(a), Ok(b)]);
        for cut in 1..body.len() {
            let got: Vec<_> = frames(&body[..cut]).collect();
            if cut != a.encoded_len() {
                assert_eq!(got.last(), Some(&Err(WireError::Truncated)), "cut at {cut}");
            }
        }
    }

    #[test]
    fn beat_round_trip() {
        let beat = Beat { seq: 7, size: 1400, flags: BEAT_FASTPATH | BEAT_TRUSTS_YOU, fastpath_mac: [2, 0, 0, 0, 0, 9], fastpath_port: 6784 };
        let mut out = Vec::new();
        beat.write(&mut out);
        assert_eq!(out.len(), BEAT_LEN);
        out.extend_from_slice(&[0; 100]);
        assert_eq!(Beat::parse(&out), Ok(beat));
        assert_eq!(Beat::parse(&out[..10]), Err(WireError::ShortBeat));
    }
}
