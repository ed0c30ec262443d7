//! Runs every fuzz target body on random inputs and on golden inputs built
//! from real protocol traffic, so the decoders are exercised in CI without a
//! fuzzing toolchain.

use proptest::prelude::*;
use weave_core::{PeerName, PeerUid};
use weave_gossip::frame::encode_frame;
use weave_gossip::link::{LinkConfig, LocalFeatures, Role};
use weave_gossip::proto::{Body, ChannelMsg, Envelope, TopologyDigest, TopologyUpdate};
use weave_gossip::Link;

fn golden_messages() -> Vec<u8> {
    let bodies = vec![
        Body::Update(TopologyUpdate {
            records: vec![weave_gossip::topology::PeerRecord::signed(
                &weave_gossip::Identity::from_secret([2; 32]),
                PeerName::from_u64(2).unwrap(),
                "peer".into(),
                PeerUid::new(2).unwrap(),
                3,
                vec![weave_gossip::topology::ConnectionInfo {
                    peer: PeerName::from_u64(1).unwrap(),
                    address: "127.0.0.1:6783".into(),
                    outbound: true,
                    established: true,
                }],
            )
            .to_msg()],
            deltas: Vec::new(),
        }),
        Body::Digest(TopologyDigest { sum: vec![1; 16], count: 2 }),
        Body::Gossip(ChannelMsg { channel: "x".into(), src: 2, dst: 0, data: vec![1, 2, 3] }),
        Body::Unicast(ChannelMsg { channel: "x".into(), src: 2, dst: 5, data: vec![] }),
    ];
    let mut out = Vec::new();
    for b in bodies {
        encode_frame(&prost::Message::encode_to_vec(&Envelope::from(b)), &mut out);
    }
    out
}

fn golden_hello() -> Vec<u8> {
    let me = LocalFeatures { name: PeerName::from_u64(9).unwrap(), nickname: "g".into(), uid: PeerUid::new(9).unwrap(), listen_port: 1 };
    Link::new(Role::Initiator, LinkConfig::default(), &me, &mut weave_core::rng::seeded(4)).take_output()
}

#[test]
fn golden_inputs_pass_every_target() {
    let msgs = golden_messages();
    weave_fuzz::mesh_messages(&msgs);
    weave_fuzz::frames(&msgs);
    let hello = golden_hello();
    weave_fuzz::handshake(&hello, None);
    weave_fuzz::handshake(&hello, Some(weave_fuzz::fuzz_psk()));
    // Every truncation and every single-byte corruption of real traffic.
    for i in 0..msgs.len() {
        weave_fuzz::mesh_messages(&msgs[..i]);
        let mut bad = msgs.clone();
        bad[i] ^= 0x5a;
        weave_fuzz::mesh_messages(&bad);
        weave_fuzz::frames(&bad);
    }
    for i in 0..hello.len() {
        let mut bad = hello.clone();
        bad[i] ^= 0xa5;
        weave_fuzz::handshake(&bad, None);
    }
    // A real IPAM state message, whole and with every byte corrupted.
    let me = PeerName::from_u64(2).unwrap();
    let mut ipam = weave_ipam::Ipam::new(weave_ipam::IpamConfig::new(
        weave_gossip::Identity::from_secret([2; 32]),
        me,
        "10.32.0.0/12".parse().unwrap(),
        weave_ipam::InitMode::Seeds(vec![PeerName::from_u64(1).unwrap(), me]),
    ))
    .unwrap();
    ipam.prime(std::time::Instant::now());
    for q in [
        weave_dns::answer::query(1, "web.weave.local.", hickory_proto::rr::RecordType::A, Some(700)),
        weave_dns::answer::query(2, "1.0.32.10.in-addr.arpa.", hickory_proto::rr::RecordType::PTR, None),
    ] {
        weave_fuzz::dns_messages(&q);
        for i in 0..q.len() {
            let mut bad = q.clone();
            bad[i] ^= 0x5a;
            weave_fuzz::dns_messages(&bad);
            weave_fuzz::dns_messages(&q[..i]);
        }
    }
    // Real sleeve traffic: two encoded records and a heartbeat body.
    let mut body = vec![0u8];
    let f = [0x02u8, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 8, 0, 0x45, 0, 0, 20];
    weave_dataplane::wire::FrameRecord {
        origin: PeerName::from_u64(2).unwrap(),
        dst: PeerName::from_u64(1).unwrap(),
        flags: 0,
        vnet: None,
        piece: None,
        frame: &f,
    }
    .write(&mut body);
    let piece = weave_dataplane::wire::Piece { id: 1, offset: 0, total: 40 };
    weave_dataplane::wire::FrameRecord {
        origin: PeerName::from_u64(3).unwrap(),
        dst: PeerName::from_u64(1).unwrap(),
        flags: 0,
        vnet: Some([1, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
        piece: Some(piece),
        frame: &f,
    }
    .write(&mut body);
    weave_fuzz::sleeve_datagrams(&body);
    for i in 0..body.len() {
        let mut bad = body.clone();
        bad[i] ^= 0x5a;
        weave_fuzz::sleeve_datagrams(&bad);
        weave_fuzz::sleeve_datagrams(&body[..i]);
    }
    let mut beat = vec![1u8];
    weave_dataplane::wire::Beat { seq: 1, size: 0, flags: 7, fastpath_mac: [2; 6], fastpath_port: 6784, echo: None }.write(&mut beat);
    weave_fuzz::sleeve_datagrams(&beat);
    // Found by libFuzzer: a sealed datagram with counter u64::MAX.
    weave_fuzz::sleeve_datagrams(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    let state = ipam.full_state();
    weave_fuzz::ipam_messages(&state);
    for i in 0..state.len() {
        let mut bad = state.clone();
        bad[i] ^= 0x5a;
        weave_fuzz::ipam_messages(&bad);
    }
    // The same state as a sequence (one length byte per message: only
    // what fits), and as a saved snapshot.
    let short: Vec<u8> = state.iter().copied().take(255).collect();
    weave_fuzz::ipam_sequences(&[[short.len() as u8].as_slice(), &short, &[short.len() as u8], &short].concat());
    let snap = prost::Message::encode_to_vec(&ipam.snapshot());
    weave_fuzz::persisted_state(&snap);
    for i in (0..snap.len()).step_by(7) {
        let mut bad = snap.clone();
        bad[i] ^= 0x5a;
        weave_fuzz::persisted_state(&bad);
    }
    weave_fuzz::fastpath_heartbeat(b"WVFP\x02\x00\x00\x00\x00\x01");
    weave_fuzz::cni_config(br#"{"cniVersion":"0.4.0","name":"weave","type":"weave-net","ipam":{"subnet":"10.32.0.0/24"},"hairpinMode":true}"#);
    weave_fuzz::cni_config(br#"{"cniVersion":"1.0.0","name":"a/b","type":"weave-net"}"#);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn random_inputs_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        weave_fuzz::frames(&data);
        weave_fuzz::envelope(&data);
        weave_fuzz::mesh_messages(&data);
        weave_fuzz::handshake(&data, None);
        weave_fuzz::ipam_messages(&data);
        weave_fuzz::dns_messages(&data);
        weave_fuzz::sleeve_datagrams(&data);
        weave_fuzz::ipam_sequences(&data);
        weave_fuzz::persisted_state(&data);
        weave_fuzz::session(&data);
        weave_fuzz::fastpath_heartbeat(&data);
        weave_fuzz::cni_config(&data);
    }

    #[test]
    fn random_handshakes_with_a_password_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut data = golden_hello();
        data.extend(tail);
        weave_fuzz::handshake(&data, Some(weave_fuzz::fuzz_psk()));
    }
}
