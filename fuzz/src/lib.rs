//! Bodies of the fuzz targets, one per decoder. Each must never panic on
//! any input; decoders that have an encoder also round-trip (parse → emit →
//! re-parse → equal). `fuzz_targets/` wraps them for libFuzzer
//! (`cargo fuzz run envelope`); `tests/smoke.rs` runs them on random and
//! golden inputs in CI.

use std::sync::OnceLock;
use std::time::Instant;

use prost::Message;
use weave_core::{PeerName, PeerUid};
use weave_gossip::frame::{encode_frame, FrameDecoder};
use weave_gossip::link::{LinkConfig, LocalFeatures, Role};
use weave_gossip::mesh::{Mesh, MeshConfig, RemotePeer};
use weave_gossip::proto::Envelope;
use weave_gossip::{Link, Psk};

fn local() -> LocalFeatures {
    LocalFeatures { name: PeerName::from_u64(1).expect("small"), nickname: "fuzz".into(), uid: PeerUid::new(1).expect("non-zero"), listen_port: 6783 }
}

/// The frame decoder: frames come out in order and re-encode to the input.
pub fn frames(data: &[u8]) {
    let mut d = FrameDecoder::new(1 << 16);
    let split = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    d.push(&data[..split]);
    let mut frames = Vec::new();
    let mut push_rest = Some(&data[split..]);
    loop {
        match d.next_frame() {
            Ok(Some(f)) => frames.push(f.to_vec()),
            Ok(None) => match push_rest.take() {
                Some(rest) => d.push(rest),
                None => break,
            },
            Err(_) => return,
        }
    }
    let mut re = Vec::new();
    for f in &frames {
        encode_frame(f, &mut re);
    }
    assert_eq!(&data[..re.len()], &re[..], "frames re-encode to their input");
}

/// A responder's handshake fed arbitrary bytes (in two chunks).
pub fn handshake(data: &[u8], psk: Option<Psk>) {
    for role in [Role::Responder, Role::Initiator] {
        let mut cfg = LinkConfig::default();
        cfg.psk = psk.clone();
        let mut link = Link::new(role, cfg, &local(), &mut weave_core::rng::seeded(1));
        let mid = data.len() / 2;
        if link.handle_bytes(&data[..mid]).is_ok() {
            let _ = link.handle_bytes(&data[mid..]);
        }
        while link.poll_event().is_some() {}
        let _ = link.take_output();
    }
}

/// A cached key so the encrypted target does not run Argon2 per input.
pub fn fuzz_psk() -> Psk {
    static PSK: OnceLock<Psk> = OnceLock::new();
    PSK.get_or_init(|| Psk::from_password(b"fuzz")).clone()
}

/// Mesh messages: decode, and if they decode, re-encoding decodes to the same.
pub fn envelope(data: &[u8]) {
    if let Ok(env) = Envelope::decode(data) {
        let bytes = env.encode_to_vec();
        let again = Envelope::decode(&bytes[..]).expect("what we encode decodes");
        assert_eq!(env, again);
    }
}

/// A sequence of length-prefixed messages fed to a mesh with one connection:
/// every message is either handled or refused, never a panic.
pub fn mesh_messages(data: &[u8]) {
    let now = Instant::now();
    let mut mesh =
        Mesh::new(MeshConfig::new(PeerName::from_u64(1).expect("small"), "fuzz", PeerUid::new(1).expect("non-zero")), now, weave_core::rng::seeded(3));
    let remote = RemotePeer {
        name: PeerName::from_u64(2).expect("small"),
        nickname: "peer".into(),
        uid: PeerUid::new(2).expect("non-zero"),
        conn_id: 1,
        address: "127.0.0.1:6783".into(),
        outbound: false,
        version: weave_gossip::link::PROTOCOL_MAX,
    };
    mesh.add_connection(now, 7, remote).expect("first connection is accepted");
    let mut d = FrameDecoder::new(1 << 16);
    d.push(data);
    let mut t = now;
    while let Ok(Some(f)) = d.next_frame() {
        if let Ok(env) = Envelope::decode(&f[..]) {
            if mesh.handle_message(t, 7, env).is_err() {
                break;
            }
        }
        t += std::time::Duration::from_millis(50);
        mesh.handle_timeout(t);
        while mesh.poll_transmit().is_some() {}
        while mesh.poll_event().is_some() {}
    }
    let _ = mesh.routes().reachable_count();
}

/// IPAM channel messages (gossip and unicast) fed to an initialised and an
/// uninitialised IPAM: each is handled or refused, never a panic; a ring
/// that decodes re-encodes to one that decodes equal.
pub fn ipam_messages(data: &[u8]) {
    use weave_ipam::{wire, InitMode, Ipam, IpamConfig};
    let me = PeerName::from_u64(1).expect("small");
    let src = PeerName::from_u64(2).expect("small");
    let cfg = |init| IpamConfig::new(weave_gossip::Identity::from_secret([me.as_u64() as u8; 32]), me, "10.32.0.0/12".parse().expect("valid"), init);
    let now = Instant::now();
    let mut fresh = Ipam::new(cfg(InitMode::Consensus { quorum: 2 })).expect("valid");
    let mut ready = Ipam::new(cfg(InitMode::Seeds(vec![me, src]))).expect("valid");
    ready.prime(now);
    for ipam in [&mut fresh, &mut ready] {
        let _ = ipam.handle_gossip(now, src, data);
        let _ = ipam.handle_unicast(now, src, data);
        let _ = ipam.allocate(now, "c", None);
        while ipam.poll_output().is_some() {}
    }
    if let Ok(wire::Body::State(s)) = wire::decode(data) {
        if let Some(r) = &s.ring {
            if let Ok(ring) = wire::ring_from_msg(r) {
                let again = wire::ring_from_msg(&wire::ring_to_msg(&ring)).expect("what we encode decodes");
                assert_eq!(ring, again);
            }
        }
    }
}

/// Any bytes as a DNS query (UDP and TCP) into the answer core, and as DNS
/// gossip into a peer: answered, forwarded or refused, never a panic.
pub fn dns_messages(data: &[u8]) {
    use weave_dns::answer::Responder;
    use weave_dns::{Dns, WallClock};
    let now = Instant::now();
    let mut dns =
        Dns::new(weave_gossip::Identity::from_secret([1; 32]), PeerName::from_u64(1).expect("small"), "weave.local.", WallClock::new(now, 1_800_000_000), now);
    dns.peer_back(now, PeerName::from_u64(2).expect("small"), weave_gossip::Identity::from_secret([2; 32]).public());
    let _ = dns.add(now, "web", std::net::Ipv4Addr::new(10, 32, 0, 1), "c1");
    let r = Responder::new("weave.local.", 1);
    for tcp in [false, true] {
        let _ = r.answer(dns.store(), data, tcp, &mut weave_core::rng::seeded(1));
    }
    let _ = dns.handle_gossip(now, PeerName::from_u64(2).expect("small"), data);
}

/// The sleeve's datagram decoder and everything behind it (records, pieces,
/// heartbeats, relaying, reassembly), on a sleeve that knows two peers:
/// one plain, one encrypted. For the encrypted peer the input is sealed
/// with the right key first (its first 8 bytes choose the counter), so the
/// fuzzer reaches past authentication; the raw input is also tried as-is.
/// The record iterator must re-encode what it accepts to the same bytes.
pub fn sleeve_datagrams(data: &[u8]) {
    use weave_dataplane::sleeve::{Sleeve, SleeveConfig, TxQueue};
    use weave_dataplane::wire::{self, Header, Kind};
    let me = PeerName::from_u64(1).expect("small");
    let plain = PeerName::from_u64(2).expect("small");
    let sealed = PeerName::from_u64(3).expect("small");
    let now = Instant::now();
    let mut s = Sleeve::new(SleeveConfig::new(me, 6783));
    let a: std::net::SocketAddr = "10.0.0.2:6783".parse().expect("addr");
    let b: std::net::SocketAddr = "10.0.0.3:6783".parse().expect("addr");
    let key = [7u8; 32];
    s.add_peer(now, plain, a, None);
    s.add_peer(now, sealed, b, Some(&weave_gossip::DataKeys { send: [9; 32], recv: key }));
    s.set_routes(weave_gossip::routes::Routes::from_links(me, &[(me, plain), (me, sealed), (plain, sealed)]));
    let mut tx = TxQueue::default();
    let mut out = Vec::new();
    let mut run = |s: &mut Sleeve, from, buf: &mut Vec<u8>| {
        s.handle_datagram(now, from, buf, &mut tx, &mut out);
        s.flush(&mut tx);
        tx.clear();
        out.clear();
    };
    // As received from the plain peer.
    run(&mut s, a, &mut data.to_vec());
    run(&mut s, b, &mut data.to_vec());
    // A plain header from peer 2 with the input as the body.
    let kind = match data.first().map(|k| k % 3) {
        Some(0) | None => Kind::Frames,
        Some(1) => Kind::Heartbeat,
        _ => Kind::HeartbeatAck,
    };
    let body = data.get(1..).unwrap_or(&[]);
    let mut buf = vec![0u8; wire::HEADER_LEN];
    Header { kind, encrypted: false, sender: plain, counter: 0 }.write(&mut buf);
    buf.extend_from_slice(body);
    run(&mut s, a, &mut buf);
    // The same body sealed for peer 3.
    let counter = body.get(..8).map_or(0, |c| u64::from_be_bytes(c.try_into().expect("8 bytes")));
    let mut buf = vec![0u8; wire::HEADER_LEN];
    Header { kind, encrypted: true, sender: sealed, counter }.write(&mut buf);
    let aad: [u8; wire::HEADER_LEN] = buf[..wire::HEADER_LEN].try_into().expect("header");
    buf.extend_from_slice(body);
    weave_dataplane::crypto::Sealer::new(&key).seal(counter, &aad, &mut buf, wire::HEADER_LEN);
    run(&mut s, b, &mut buf);
    let mut tx2 = TxQueue::default();
    s.handle_timeout(now + std::time::Duration::from_secs(2), &mut tx2);
    // Records that parse re-encode to the same bytes.
    let mut re = Vec::new();
    let mut consumed = 0;
    for rec in wire::frames(body) {
        let Ok(rec) = rec else { break };
        consumed += rec.encoded_len();
        rec.write(&mut re);
    }
    assert_eq!(&body[..consumed], &re[..], "records re-encode to their input");
}

/// Split `data` into length-prefixed pieces (one length byte each).
fn pieces(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = data;
    std::iter::from_fn(move || {
        let (&n, tail) = rest.split_first()?;
        let n = usize::from(n).min(tail.len());
        let (piece, tail) = tail.split_at(n);
        rest = tail;
        Some(piece)
    })
}

/// A sequence of IPAM messages into one peer, alternating gossip and
/// unicast from two senders, with time passing and allocations between:
/// state built by earlier messages meets later ones. Never a panic, and
/// the ring stays valid (it re-encodes to itself).
pub fn ipam_sequences(data: &[u8]) {
    use weave_ipam::{wire, InitMode, Ipam, IpamConfig};
    let me = PeerName::from_u64(1).expect("small");
    let peers = [PeerName::from_u64(2).expect("small"), PeerName::from_u64(3).expect("small")];
    let cfg = IpamConfig::new(weave_gossip::Identity::from_secret([1; 32]), me, "10.32.0.0/24".parse().expect("valid"), InitMode::Seeds(vec![me, peers[0]]));
    let mut ipam = Ipam::new(cfg).expect("valid");
    let mut now = Instant::now();
    ipam.prime(now);
    for (i, msg) in pieces(data).enumerate() {
        let src = peers[i % 2];
        let _ = if i % 3 == 0 { ipam.handle_unicast(now, src, msg) } else { ipam.handle_gossip(now, src, msg).map(drop) };
        let _ = ipam.allocate(now, &format!("c{i}"), None);
        now += std::time::Duration::from_millis(300);
        ipam.handle_timeout(now);
        while ipam.poll_output().is_some() {}
        while ipam.poll_completion().is_some() {}
    }
    let ring = ipam.ring();
    assert_eq!(&wire::ring_from_msg(&wire::ring_to_msg(ring)).expect("our ring decodes"), ring);
}

/// What a router reads back from its state directory: an IPAM snapshot and
/// the saved DNS names. Refused or restored, never a panic.
pub fn persisted_state(data: &[u8]) {
    use weave_ipam::{wire::SnapshotMsg, InitMode, Ipam, IpamConfig};
    let me = PeerName::from_u64(1).expect("small");
    let id = weave_gossip::Identity::from_secret([1; 32]);
    if let Ok(snap) = SnapshotMsg::decode(data) {
        let cfg = IpamConfig::new(id.clone(), me, "10.32.0.0/12".parse().expect("valid"), InitMode::Consensus { quorum: 1 });
        if let Ok(mut ipam) = Ipam::restore(cfg, &snap) {
            let now = Instant::now();
            ipam.prime(now);
            let _ = ipam.allocate(now, "c", None);
            while ipam.poll_output().is_some() {}
        }
    }
    let now = Instant::now();
    let mut dns = weave_dns::Dns::new(id, me, "weave.local.", weave_dns::WallClock::new(now, 1_800_000_000), now);
    if dns.restore_own(data).is_ok() {
        let _ = dns.full_state(now);
    }
}

/// Bytes arriving on an established encrypted connection: refused (and the
/// connection closed), never a panic, never a message that was not sealed
/// with the session's keys.
pub fn session(data: &[u8]) {
    use weave_gossip::link::LinkEvent;
    let mut cfg = LinkConfig::default();
    cfg.psk = Some(fuzz_psk());
    let peer = LocalFeatures { name: PeerName::from_u64(2).expect("small"), ..local() };
    let mut rng = weave_core::rng::seeded(5);
    let (mut a, mut b) = (Link::new(Role::Initiator, cfg.clone(), &local(), &mut rng), Link::new(Role::Responder, cfg, &peer, &mut rng));
    for _ in 0..4 {
        let (oa, ob) = (a.take_output(), b.take_output());
        b.handle_bytes(&oa).expect("honest handshake");
        a.handle_bytes(&ob).expect("honest handshake");
    }
    assert!(a.is_established() && b.is_established());
    while b.poll_event().is_some() {}
    if b.handle_bytes(data).is_ok() {
        assert!(!std::iter::from_fn(|| b.poll_event()).any(|e| matches!(e, LinkEvent::Message(_))), "forged a sealed message");
    }
}

/// A fast-path heartbeat's payload: a peer name or nothing.
pub fn fastpath_heartbeat(data: &[u8]) {
    if let Some(p) = weave_dataplane::wire::fastpath_heartbeat_origin(data) {
        assert_eq!(&data[4..10], &p.octets());
    }
}

/// A CNI network configuration as `weave-net` and `weave-ipam` read it:
/// accepted or refused with a reason, never a panic.
pub fn cni_config(data: &[u8]) {
    use weave_examples::cni::{check_config, Kind};
    for kind in [Kind::Net, Kind::Ipam] {
        if let Err(e) = check_config(kind, data) {
            assert!(!e.is_empty());
        }
    }
}
