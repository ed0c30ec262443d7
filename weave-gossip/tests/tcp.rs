//! Real TCP meshes on loopback (ephemeral ports, nothing leaves 127.0.0.1).

use std::future::Future;
use std::time::Duration;

use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weave_core::{PeerName, PeerUid};
use weave_gossip::connmaker::TargetState;
use weave_gossip::driver::{ConnectionState, DriverConfig, DriverEvent, MeshBuilder, MeshHandle, Status};
use weave_gossip::link::{LinkConfig, LinkEvent, LocalFeatures, Role};
use weave_gossip::mesh::MeshConfig;
use weave_gossip::{Link, Psk};

struct Opts {
    name: u64,
    uid: u64,
    password: Option<&'static str>,
    discovery: bool,
    versions: (u8, u8),
    conn_limit: usize,
    handshake_timeout: Duration,
}

fn opts(name: u64) -> Opts {
    Opts { name, uid: 1000 + name, password: None, discovery: false, versions: (1, 1), conn_limit: 200, handshake_timeout: Duration::from_secs(5) }
}

async fn start(o: Opts) -> MeshHandle {
    let mut m = MeshConfig::new(PeerName::from_u64(o.name).unwrap(), format!("host{}", o.name), PeerUid::new(o.uid).unwrap());
    m.heartbeat_interval = Duration::from_millis(300);
    m.read_timeout = Duration::from_secs(2);
    m.anti_entropy_interval = Duration::from_millis(500);
    let mut cfg = DriverConfig::new(m, "127.0.0.1:0".parse().unwrap());
    cfg.conn_maker.discovery = o.discovery;
    cfg.conn_maker.conn_limit = o.conn_limit;
    cfg.handshake_timeout = o.handshake_timeout;
    cfg.conn_maker.backoff_initial = Duration::from_millis(100);
    cfg.conn_maker.backoff_max = Duration::from_millis(500);
    (cfg.link.min_version, cfg.link.max_version) = o.versions;
    cfg.link.psk = o.password.map(|p| Psk::from_password(p.as_bytes()));
    MeshBuilder::new(cfg).start().await.expect("bind on loopback")
}

fn addr(h: &MeshHandle) -> String {
    h.local_addr().to_string()
}

async fn eventually<F, Fut>(what: &str, mut f: F) -> Status
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<Status>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(s) = f().await {
            return s;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn knows(h: &MeshHandle, n: usize) -> Status {
    eventually(&format!("{n} peers reachable"), || async {
        let s = h.status().await.unwrap();
        (s.peers.len() == n && s.reachable == n - 1).then_some(s)
    })
    .await
}

/// A hand-driven peer "evil" (name 9) that has completed the handshake
/// with `h`, its output not yet flushed.
async fn raw_peer(h: &MeshHandle, seed: u64) -> (TcpStream, Link) {
    let me = LocalFeatures { name: PeerName::from_u64(9).unwrap(), nickname: "evil".into(), uid: PeerUid::new(9).unwrap(), listen_port: 1 };
    let mut raw = TcpStream::connect(h.local_addr()).await.unwrap();
    let mut link = Link::new(Role::Initiator, LinkConfig::default(), &me, &mut weave_core::rng::seeded(seed));
    let mut buf = vec![0u8; 4096];
    while !link.is_established() {
        raw.write_all(&link.take_output()).await.unwrap();
        let n = raw.read(&mut buf).await.unwrap();
        link.handle_bytes(&buf[..n]).unwrap();
    }
    (raw, link)
}

async fn connect(h: &MeshHandle, to: &MeshHandle) {
    h.connect(vec![addr(to)], false).await.unwrap().unwrap();
}

#[tokio::test]
async fn plain_peers_form_a_mesh_and_route_through_the_middle() {
    let (a, b, c) = (start(opts(1)).await, start(opts(2)).await, start(opts(3)).await);
    connect(&b, &a).await;
    connect(&c, &b).await;
    for h in [&a, &b, &c] {
        let s = knows(h, 3).await;
        assert!(!s.encryption);
    }
    let s = a.status().await.unwrap();
    assert_eq!(s.connections.iter().filter(|c| c.state == ConnectionState::Established).count(), 1);
    // A brief snapshot: the same peers and connections, no peer's links.
    let brief = a.status_brief().await.unwrap();
    assert_eq!(brief.connections.len(), s.connections.len());
    assert_eq!(brief.reachable, 2);
    let names = |st: &weave_gossip::driver::Status| st.peers.iter().map(|p| (p.name, p.version)).collect::<Vec<_>>();
    assert_eq!(names(&brief), names(&s));
    assert!(s.peers.iter().map(|p| p.connections.len()).sum::<usize>() >= 4, "b lists a and c, a and c list b");
    assert!(brief.peers.iter().all(|p| p.connections.is_empty()));
    for h in [a, b, c] {
        h.shutdown().await;
    }
}

#[tokio::test]
async fn encrypted_peers_connect_and_share_mirrored_data_keys() {
    let a = start(Opts { password: Some("s3cret"), ..opts(1) }).await;
    let b = start(Opts { password: Some("s3cret"), ..opts(2) }).await;
    let (mut ea, mut eb) = (a.subscribe(), b.subscribe());
    connect(&b, &a).await;
    knows(&a, 2).await;
    let s = knows(&b, 2).await;
    assert!(s.encryption);
    assert!(s.connections.iter().all(|c| c.encrypted));
    async fn keys(rx: &mut tokio::sync::broadcast::Receiver<DriverEvent>) -> weave_gossip::DataKeys {
        loop {
            if let DriverEvent::Connected { data_keys: Some(k), .. } = rx.recv().await.unwrap() {
                return k;
            }
        }
    }
    let (ka, kb) = (keys(&mut ea).await, keys(&mut eb).await);
    assert_eq!(ka.send, kb.recv);
    assert_eq!(ka.recv, kb.send);
    a.shutdown().await;
    b.shutdown().await;
}

async fn refused_with(dialer: &MeshHandle, listener: &MeshHandle, dialer_says: &str, listener_says: &str) {
    connect(dialer, listener).await;
    eventually("the dialer shows the refusal", || async {
        let s = dialer.status().await.unwrap();
        s.connections.iter().any(|c| c.state == ConnectionState::Retrying && c.info.contains(dialer_says)).then_some(s)
    })
    .await;
    eventually("the listener shows the refusal", || async {
        let s = listener.status().await.unwrap();
        s.connections.iter().any(|c| c.state == ConnectionState::Failed && c.info.contains(listener_says)).then_some(s)
    })
    .await;
    assert_eq!(dialer.status().await.unwrap().peers.len(), 1);
    assert_eq!(listener.status().await.unwrap().peers.len(), 1);
}

#[tokio::test]
async fn wrong_password_is_refused_with_a_reason_on_both_sides() {
    let a = start(Opts { password: Some("right"), ..opts(1) }).await;
    let b = start(Opts { password: Some("wrong"), ..opts(2) }).await;
    refused_with(&b, &a, "password differs", "password differs").await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn password_on_one_side_only_is_an_encryption_mismatch() {
    let a = start(Opts { password: Some("pw"), ..opts(1) }).await;
    let b = start(opts(2)).await;
    refused_with(&b, &a, "the peer has a password and we have none", "we have a password and the peer has none").await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn version_mismatch_is_refused_naming_both_ranges() {
    let a = start(opts(1)).await;
    let b = start(Opts { versions: (2, 3), ..opts(2) }).await;
    refused_with(&b, &a, "we speak 2..3, the peer speaks 1..1", "we speak 1..1, the peer speaks 2..3").await;
    a.shutdown().await;
    b.shutdown().await;
}

async fn permanently_failed(h: &MeshHandle, reason: &str) {
    let s = eventually("the target fails for good", || async {
        let s = h.status().await.unwrap();
        s.targets.iter().any(|t| t.state == TargetState::Failed).then_some(s)
    })
    .await;
    let t = s.targets.iter().find(|t| t.state == TargetState::Failed).unwrap();
    assert!(t.last_error.as_deref().unwrap_or("").contains(reason), "{t:?}");
    let attempts = t.attempts;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let s = h.status().await.unwrap();
    assert_eq!(s.targets[0].attempts, attempts, "never retried");
    assert!(s.connections.iter().any(|c| c.state == ConnectionState::Failed && c.info.contains(reason)));
}

#[tokio::test]
async fn a_name_collision_is_never_retried() {
    let a = start(opts(1)).await;
    let b = start(Opts { uid: 77, ..opts(1) }).await;
    connect(&b, &a).await;
    permanently_failed(&b, "peer name collision").await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn connecting_to_ourself_is_never_retried() {
    let a = start(opts(1)).await;
    connect(&a, &a).await;
    permanently_failed(&a, "cannot connect to ourself").await;
    a.shutdown().await;
}

#[tokio::test]
async fn discovery_connects_peers_learnt_through_a_middle_peer() {
    let a = start(Opts { discovery: true, ..opts(1) }).await;
    let b = start(Opts { discovery: true, ..opts(2) }).await;
    let c = start(Opts { discovery: true, ..opts(3) }).await;
    connect(&a, &b).await;
    connect(&c, &b).await;
    eventually("a and c connect directly", || async {
        let s = a.status().await.unwrap();
        let direct = s.connections.iter().filter(|c| c.state == ConnectionState::Established).count();
        (direct == 2).then_some(s)
    })
    .await;
    for h in [a, b, c] {
        h.shutdown().await;
    }
}

/// A seed allowed 2 connections and 5 joiners that know only the seed:
/// the seed refers the ones it has no room for to the peers it knows,
/// and every peer comes to reach every other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joiners_turned_away_at_the_limit_are_referred_and_all_reach_each_other() {
    let seed = start(Opts { discovery: true, conn_limit: 2, ..opts(1) }).await;
    let mut joiners = Vec::new();
    for i in 2..=6 {
        let j = start(Opts { discovery: true, conn_limit: 3, ..opts(i) }).await;
        connect(&j, &seed).await;
        // One at a time, so the seed is full for the later ones.
        knows(&j, i as usize).await;
        joiners.push(j);
    }
    for h in std::iter::once(&seed).chain(&joiners) {
        knows(h, 6).await;
    }
    let s = seed.status().await.unwrap();
    let up = s.connections.iter().filter(|c| c.state == ConnectionState::Established).count();
    assert!(up <= 2, "the seed keeps its limit: {:?}", s.connections);
    // A joiner the seed turned away says why, and retries it later.
    let turned_away = eventually("a joiner says it was referred", || async {
        for j in &joiners {
            let s = j.status().await.unwrap();
            if s.targets.iter().any(|t| t.address == addr(&seed) && t.last_error.as_deref().is_some_and(|e| e.contains("connection limit"))) {
                return Some(s);
            }
        }
        None
    })
    .await;
    assert!(turned_away.reachable == 5);
    for h in std::iter::once(seed).chain(joiners) {
        h.shutdown().await;
    }
}

/// A referral is only a list of addresses, bounded: a peer that sends a
/// longer one is cut off, and none of its addresses is dialed.
#[tokio::test]
async fn an_oversized_referral_closes_the_connection_and_adds_no_target() {
    let a = start(Opts { discovery: true, ..opts(1) }).await;
    let (mut raw, mut link) = raw_peer(&a, 3).await;
    let addresses = (0..1000).map(|i| format!("10.66.{}.{}:6783", i / 256, i % 256)).collect();
    let env: weave_gossip::proto::Envelope = weave_gossip::proto::Body::Referral(weave_gossip::proto::Referral { addresses }).into();
    link.send(&env).unwrap();
    raw.write_all(&link.take_output()).await.unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_millis(1000), raw.read_to_end(&mut sink)).await.expect("closed at once");
    let s = a.status().await.unwrap();
    assert!(s.targets.is_empty(), "{:?}", s.targets);
    assert!(s.connections.iter().all(|c| c.state != ConnectionState::Established));
    a.shutdown().await;
}

#[tokio::test]
async fn forget_and_replace_change_the_targets() {
    let a = start(opts(1)).await;
    let b = start(opts(2)).await;
    let c = start(opts(3)).await;
    connect(&a, &b).await;
    knows(&a, 2).await;
    a.forget(vec![addr(&b)]).await.unwrap().unwrap();
    assert!(a.status().await.unwrap().targets.is_empty());
    a.connect(vec![addr(&b)], false).await.unwrap().unwrap();
    a.connect(vec![addr(&c)], true).await.unwrap().unwrap();
    let targets: Vec<String> = a.status().await.unwrap().targets.into_iter().filter(|t| t.direct).map(|t| t.address).collect();
    assert_eq!(targets, vec![addr(&c)]);
    assert!(a.connect(vec!["not a host:port:x".into()], false).await.unwrap().is_err());
    for h in [a, b, c] {
        h.shutdown().await;
    }
}

#[tokio::test]
async fn dropping_every_handle_stops_the_router() {
    let a = start(opts(1)).await;
    let addr = a.local_addr();
    drop(a);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "still accepting after the last handle was dropped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn hostile_input_closes_only_that_connection() {
    let a = start(opts(1)).await;
    let b = start(opts(2)).await;
    connect(&b, &a).await;
    knows(&a, 2).await;

    // Garbage instead of a protocol header.
    let mut raw = TcpStream::connect(a.local_addr()).await.unwrap();
    raw.write_all(b"\x00\x00\x00\x10GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut sink)).await.expect("closed");

    // A huge announced frame length.
    let mut raw = TcpStream::connect(a.local_addr()).await.unwrap();
    raw.write_all(&[0xff, 0xff, 0xff, 0xff]).await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut sink)).await.expect("closed");

    // A correct handshake, then a message that is not protobuf.
    let (mut raw, mut link) = raw_peer(&a, 1).await;
    raw.write_all(&link.take_output()).await.unwrap();
    assert!(matches!(link.poll_event(), Some(LinkEvent::Established(_))));
    raw.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).await.unwrap();
    // Well inside the 2 s read timeout: closed for the bad message itself.
    let _ = tokio::time::timeout(Duration::from_millis(1000), raw.read_to_end(&mut sink)).await.expect("closed at once");

    // A valid record that lies (a connection to itself).
    let (mut raw, mut link) = raw_peer(&a, 2).await;
    let bad = weave_gossip::proto::PeerRecordMsg {
        name: 9,
        nickname: "evil".into(),
        uid: 9,
        version: 5,
        connections: vec![weave_gossip::proto::ConnectionEntry { name: 9, address: String::new(), outbound: true, established: true }],
        key: weave_gossip::Identity::from_secret([9; 32]).public().to_bytes().to_vec(),
        signature: vec![0; 64],
    };
    let env: weave_gossip::proto::Envelope =
        weave_gossip::proto::Body::Update(weave_gossip::proto::TopologyUpdate { records: vec![bad], deltas: Vec::new() }).into();
    assert!(env.encoded_len() > 0);
    link.send(&env).unwrap();
    raw.write_all(&link.take_output()).await.unwrap();
    let _ = tokio::time::timeout(Duration::from_millis(1000), raw.read_to_end(&mut sink)).await.expect("closed at once");

    // The real peer is unaffected, and the liar left no trace.
    let s = knows(&a, 2).await;
    assert!(s.peers.iter().all(|p| p.name.as_u64() != 9));
    assert!(s.connections.iter().any(|c| c.info.contains("not a weave-rs peer")));
    assert!(s.connections.iter().any(|c| c.info.contains("exceeds the limit")));
    for h in [a, b] {
        h.shutdown().await;
    }
}

/// An attacker on 127.0.0.2 opens connections as fast as it can and
/// leaves them half-open (no handshake). A peer on 127.0.0.1 still
/// connects within 5 s: the flood spends only its own address's budget,
/// and half-open handshakes do not count against established peers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_flood_from_one_address_does_not_keep_a_peer_out() {
    // A small limit, as on a host with few peers: half-open connections
    // counted against it would fill it.
    let (a, b) = (start(Opts { conn_limit: 20, ..opts(1) }).await, start(opts(2)).await);
    let target = a.local_addr();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let s = tokio::net::TcpSocket::new_v4().unwrap();
                s.bind("127.0.0.2:0".parse().unwrap()).unwrap();
                if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_millis(200), s.connect(target)).await {
                    held.push(c);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            held.len()
        })
    };
    // Let the flood use up what it can first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = tokio::time::Instant::now();
    connect(&b, &a).await;
    loop {
        let s = b.status().await.unwrap();
        if s.connections.iter().any(|c| c.state == ConnectionState::Established) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "the peer did not get in within 5 s of a flood: {:?}", s.connections);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let opened = flood.await.unwrap();
    assert!(opened > 100, "the flood opened {opened} connections");
}

/// At its budget of handshakes under way (64) a router stops accepting
/// until one ends, rather than refusing: a peer dialing meanwhile waits in
/// the listen backlog and gets in on its first attempt once the half-open
/// connections before it time out. (Refused, it failed and backed off: the
/// last routers of a 200-router mesh waited minutes for their links.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_handshake_budget_a_dialer_waits_instead_of_being_refused() {
    let a = start(Opts { handshake_timeout: Duration::from_secs(1), ..opts(1) }).await;
    let b = start(opts(2)).await;
    let target = a.local_addr();
    // 70 half-open connections, from five addresses (each may open 16 in
    // a burst).
    let mut held = Vec::new();
    for i in 0..70u32 {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(format!("127.0.0.{}:0", 2 + i / 14).parse().unwrap()).unwrap();
        held.push(s.connect(target).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    connect(&b, &a).await;
    knows(&b, 2).await;
    let s = b.status().await.unwrap();
    let t = s.targets.iter().find(|t| t.address == addr(&a)).expect("the target");
    assert_eq!(t.last_error, None, "the dial failed first: {t:?}");
    drop(held);
}

/// A hostile peer (a real handshake, then forged records) cannot rewrite
/// another peer's record — not its connections, not its version up to the
/// ceiling — nor ours, and cuts nobody off: the honest peers' later changes
/// still arrive.
#[cfg(feature = "testing")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_peer_cannot_rewrite_another_peers_record_or_cut_it_off() {
    use weave_gossip::hostile::HostilePeer;
    use weave_gossip::topology::{PeerRecord, MAX_VERSION};
    let (a, b) = (start(opts(1)).await, start(opts(2)).await);
    connect(&b, &a).await;
    let before = knows(&a, 2).await;
    let b_record = before.peers.iter().find(|p| p.name.as_u64() == 2).unwrap().clone();
    let a_record = before.peers.iter().find(|p| p.name.as_u64() == 1).unwrap().clone();

    let mut evil = HostilePeer::connect(a.local_addr(), PeerName::from_u64(9).unwrap(), None).await.unwrap();
    evil.announce(&[(PeerName::from_u64(1).unwrap(), addr(&a))]).await.unwrap();
    // b's record, emptied and at the version ceiling, signed with the hostile key.
    let mut forged_b = PeerRecord { version: MAX_VERSION, connections: Vec::new(), ..b_record.clone() };
    forged_b.sign(&evil.identity);
    // b's record under b's key, with content changed after signing.
    let tampered_b = PeerRecord { version: b_record.version + 1, connections: Vec::new(), ..b_record.clone() };
    // Our own record, at the ceiling, under the hostile key.
    let mut forged_a = PeerRecord { version: MAX_VERSION, ..a_record.clone() };
    forged_a.sign(&evil.identity);
    for r in [forged_b, tampered_b, forged_a] {
        evil.send_records(&[r]).await.unwrap();
    }
    let s = eventually("the forgeries refused", || async {
        let s = a.status().await.unwrap();
        (s.stats.records_refused >= 3 && s.peers.len() == 3).then_some(s)
    })
    .await;
    let b_now = s.peers.iter().find(|p| p.name.as_u64() == 2).unwrap();
    assert_eq!((b_now.version, &b_now.connections), (b_record.version, &b_record.connections), "b's record is untouched");
    assert!(s.peers.iter().find(|p| p.name.as_u64() == 1).unwrap().version < 100, "we did not bump towards the ceiling");
    assert_eq!(s.next_hops.get(&PeerName::from_u64(2).unwrap()), Some(&PeerName::from_u64(2).unwrap()));

    // b is not cut off: its next change reaches a.
    let c = start(opts(3)).await;
    connect(&c, &b).await;
    knows(&a, 4).await;
    let b_later = a.status().await.unwrap().peers.into_iter().find(|p| p.name.as_u64() == 2).unwrap();
    assert!(b_later.version > b_record.version && b_later.connections.len() == 2, "{b_later:?}");
    drop(evil);
    for h in [a, b, c] {
        h.shutdown().await;
    }
}
