//! A hostile peer on a real mesh (TCP on loopback, the production driver,
//! IPAM and weaveDNS channels) sends forged IPAM, consensus and DNS
//! messages in other peers' names: nothing another peer owns changes, no
//! address is handed out twice, and nobody is cut off.

use std::time::Duration;

use weave_core::{PeerName, PeerUid};
use weave_dns::channel::{DnsChannel, CHANNEL as DNS};
use weave_dns::store::{Key, Signed, Value};
use weave_dns::{Dns, WallClock};
use weave_gossip::driver::{DriverConfig, MeshBuilder, MeshHandle};
use weave_gossip::hostile::HostilePeer;
use weave_gossip::mesh::MeshConfig;
use weave_gossip::Identity;
use weave_ipam::auth::{Auth, Grant, GrantKind};
use weave_ipam::channel::{IpamChannel, CHANNEL as IPAM};
use weave_ipam::ring::{Entry, Ring};
use weave_ipam::wire::{self, Body, StateMsg};
use weave_ipam::{InitMode, Ipam, IpamConfig};

fn name(n: u64) -> PeerName {
    PeerName::from_u64(n).unwrap()
}

fn key(n: u64) -> Identity {
    Identity::from_secret([n as u8; 32])
}

async fn router(n: u64) -> MeshHandle {
    let mut m = MeshConfig::new(name(n), format!("r{n}"), PeerUid::new(100 + n).unwrap());
    m.identity = Some(key(n));
    m.heartbeat_interval = Duration::from_millis(300);
    m.channel_gossip_interval = Duration::from_millis(500);
    let mut cfg = IpamConfig::new(key(n), name(n), "10.32.0.0/24".parse().unwrap(), InitMode::Seeds(vec![name(1), name(2)]));
    cfg.retry_interval = Duration::from_millis(200);
    let now = std::time::Instant::now();
    let dns = Dns::new(key(n), name(n), "weave.local.", WallClock::system(), now);
    MeshBuilder::new(DriverConfig::new(m, "127.0.0.1:0".parse().unwrap()))
        .channel(IPAM, Box::new(IpamChannel::new(Ipam::new(cfg).unwrap())))
        .channel(DNS, Box::new(DnsChannel::new(dns, now)))
        .start()
        .await
        .unwrap()
}

async fn ring(h: &MeshHandle) -> Ring {
    h.with_channel(IPAM, |c: &mut IpamChannel, _| c.ipam().ring().clone()).await.unwrap().unwrap()
}

async fn allocate(h: &MeshHandle, container: &str) -> std::net::Ipv4Addr {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let container = container.to_owned();
    h.with_channel(IPAM, move |c: &mut IpamChannel, now| {
        c.allocate(now, &container, None, Box::new(move |r| drop(tx.send(r))));
    })
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(10), rx).await.expect("allocated in time").unwrap().unwrap().addr()
}

async fn lookup(h: &MeshHandle, host: &str) -> Vec<std::net::Ipv4Addr> {
    let host = host.to_owned();
    h.with_channel(DNS, move |c: &mut DnsChannel, _| c.dns().lookup(&host)).await.unwrap().unwrap()
}

async fn until<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `r` as the wire carries it, with `edit` applied to its entries.
fn forged(r: &Ring, edit: impl FnOnce(&mut Vec<(Entry, Auth)>)) -> Vec<u8> {
    let mut entries: Vec<(Entry, Auth)> = r.stored().map(|(e, a)| (*e, a.clone())).collect();
    edit(&mut entries);
    entries.sort_by_key(|(e, _)| e.token);
    let ring = Ring::from_parts(r.start(), r.end(), r.seeds().to_vec(), entries).unwrap();
    wire::encode(Body::State(StateMsg { ring: Some(wire::ring_to_msg(&ring)), paxos: vec![], election_requested: false }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_ipam_consensus_and_dns_messages_change_nothing_another_peer_owns() {
    let (a, b) = (router(1).await, router(2).await);
    b.connect(vec![a.local_addr().to_string()], false).await.unwrap().unwrap();
    let b_addr = allocate(&b, "cb").await;
    b.with_channel(DNS, move |c: &mut DnsChannel, now| c.add(now, "cb", "web", &[b_addr]).unwrap()).await.unwrap();
    until("a hears b's name", || async { lookup(&a, "web").await == vec![b_addr] }).await;
    let before = ring(&a).await;
    let b_space = before.owned_by(name(2));
    assert!(!b_space.is_empty());

    let mut evil = HostilePeer::connect(a.local_addr(), name(9), None).await.unwrap();
    evil.announce(&[(name(1), a.local_addr().to_string())]).await.unwrap();
    let ring_id = before.id();
    let (lo, hi) = b_space[0];
    // 1. b's space "donated" to the hostile peer, signed with its own key
    //    (and once naming b's key).
    for claimed in [evil.identity.public(), key(2).public()] {
        let msg = forged(&before, |e| {
            let mut g = Grant::new(&evil.identity, &ring_id, 2, name(9), lo, hi, GrantKind::Donation);
            g.signer_key = claimed.to_bytes();
            let ent = Entry { token: lo, peer: name(9), epoch: 2, version: 1, free: hi - lo, taken_from: None };
            let i = e.iter().position(|(x, _)| x.token == lo).unwrap();
            e[i] = (ent, Auth { chain: std::sync::Arc::new(vec![g]), signed: None });
        });
        evil.gossip(IPAM, name(2), msg).await.unwrap();
    }
    // 2. b's entry with its free count and version raised, unsigned by b.
    evil.gossip(IPAM, name(2), forged(&before, |e| e.iter_mut().filter(|(x, _)| x.peer == name(2)).for_each(|(x, _)| x.version += 100))).await.unwrap();
    // 3. Votes in b's name for a ring of the hostile peer alone.
    let state = weave_ipam::paxos::NodeState {
        promise: weave_ipam::paxos::Ballot { round: 9, proposer: name(9) },
        accepted: Some((weave_ipam::paxos::Ballot { round: 9, proposer: name(9) }, vec![name(9)])),
    };
    let vote = weave_ipam::paxos::Vote::new(&evil.identity, name(2), state);
    let votes = wire::paxos_to_msg(&std::collections::BTreeMap::from([(name(2), vote)]));
    evil.gossip(IPAM, name(2), wire::encode(Body::State(StateMsg { ring: None, paxos: votes, election_requested: false }))).await.unwrap();
    // 4. DNS: b's name deleted and a name registered in b's name.
    let k = Key { hostname: "web.weave.local.".into(), origin: name(2), container: "cb".into(), addr: b_addr };
    let tomb = Signed::new(&evil.identity, k.clone(), Value { version: 1 << 40, tombstone: 1 });
    let hijack =
        Signed::new(&evil.identity, Key { hostname: "bank.weave.local.".into(), addr: "10.32.0.66".parse().unwrap(), ..k }, Value { version: 1, tombstone: 0 });
    let now_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    evil.gossip(DNS, name(2), weave_dns::wire::encode(now_unix, &[tomb, hijack])).await.unwrap();
    let _ = evil.receive(Duration::from_millis(500)).await;

    // Refused at a, and nothing of b's changed anywhere.
    let refused = a.with_channel(IPAM, |c: &mut IpamChannel, _| c.ipam().refused()).await.unwrap().unwrap();
    assert!(refused >= 4, "forged grants, the tampered entry and the vote counted: {refused}");
    for h in [&a, &b] {
        let r = ring(h).await;
        assert_eq!(r.owned_by(name(2)), b_space, "b's space is b's");
        assert!(r.owned_by(name(9)).is_empty(), "the hostile peer owns nothing");
        assert_eq!(lookup(h, "web").await, vec![b_addr]);
        assert!(lookup(h, "bank").await.is_empty());
    }
    // Nobody is cut off, and allocation goes on without duplicates.
    let mut seen = std::collections::BTreeSet::from([b_addr]);
    for i in 0..20 {
        let h = if i % 2 == 0 { &a } else { &b };
        assert!(seen.insert(allocate(h, &format!("c{i}")).await), "an address handed out twice");
    }
    drop(evil);
    a.shutdown().await;
    b.shutdown().await;
}
