//! The DNS server on loopback, queried over real UDP and TCP sockets with
//! messages built and parsed by hickory-proto; a stub upstream on loopback
//! for forwarding.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use weave_core::PeerName;
use weave_dns::answer::query;
use weave_dns::channel::Names;
use weave_dns::server::{serve, Server, ServerConfig, Upstreams};
use weave_dns::{Dns, WallClock};

fn dns_with(n: usize) -> Names {
    let now = Instant::now();
    let mut d = Dns::new(weave_gossip::Identity::from_secret([1; 32]), PeerName::from_u64(1).unwrap(), "weave.local.", WallClock::system(), now);
    for i in 0..n {
        d.add(now, "web", Ipv4Addr::new(10, 32, 0, i as u8 + 1), &format!("c{i}")).unwrap();
    }
    d.add(now, "db", Ipv4Addr::new(10, 40, 0, 9), "db").unwrap();
    Names::new(&d)
}

async fn start(upstreams: Upstreams, timeout: Duration) -> Server {
    let mut cfg = ServerConfig::new("127.0.0.1:0".parse().unwrap(), upstreams);
    cfg.upstream_timeout = timeout;
    serve(cfg, dns_with(50)).await.unwrap()
}

async fn udp(server: SocketAddr, q: &[u8]) -> Message {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.send_to(q, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let n = tokio::time::timeout(Duration::from_secs(5), s.recv(&mut buf)).await.expect("a reply").unwrap();
    Message::from_vec(&buf[..n]).unwrap()
}

async fn tcp(server: SocketAddr, q: &[u8]) -> Message {
    let mut s = TcpStream::connect(server).await.unwrap();
    s.write_all(&(q.len() as u16).to_be_bytes()).await.unwrap();
    s.write_all(q).await.unwrap();
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await.unwrap();
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

#[tokio::test]
async fn answers_over_udp_and_tcp_with_truncation() {
    let server = start(Upstreams::Fixed(vec![]), Duration::from_millis(200)).await;
    let addr = server.local_addr();
    let m = udp(addr, &query(1, "DB.weave.local.", RecordType::A, None)).await;
    assert_eq!(m.answers().len(), 1);
    let m = udp(addr, &query(2, "web.weave.local.", RecordType::A, None)).await;
    assert!(m.truncated() && m.answers().len() < 50);
    let m = udp(addr, &query(3, "web.weave.local.", RecordType::A, Some(700))).await;
    assert!(m.truncated() && m.answers().len() < 50);
    let m = tcp(addr, &query(4, "web.weave.local.", RecordType::A, None)).await;
    assert!(!m.truncated());
    assert_eq!(m.answers().len(), 50);
    let m = udp(addr, &query(5, "gone.weave.local.", RecordType::A, None)).await;
    assert_eq!(m.response_code(), ResponseCode::NXDomain);
}

/// A stub upstream: answers every A query with 192.0.2.7.
async fn stub_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, from) = s.recv_from(&mut buf).await.unwrap();
            let q = Message::from_vec(&buf[..n]).unwrap();
            let mut r = Message::new();
            r.set_id(q.id()).set_message_type(MessageType::Response);
            r.add_queries(q.queries().iter().cloned());
            let name = q.queries()[0].name().clone();
            r.add_answer(Record::from_rdata(name, 60, RData::A(A(Ipv4Addr::new(192, 0, 2, 7)))));
            s.send_to(&r.to_vec().unwrap(), from).await.unwrap();
        }
    });
    (addr, task)
}

#[tokio::test]
async fn other_names_are_forwarded_and_a_silent_upstream_gives_servfail() {
    let (stub, _task) = stub_upstream().await;
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // The silent one first: it times out, then the stub answers.
    let server = start(Upstreams::Fixed(vec![silent.local_addr().unwrap(), stub]), Duration::from_millis(200)).await;
    let m = udp(server.local_addr(), &query(9, "example.com.", RecordType::A, None)).await;
    assert_eq!(m.id(), 9);
    assert!(matches!(m.answers()[0].data(), RData::A(a) if a.0 == Ipv4Addr::new(192, 0, 2, 7)));
    let only_silent = start(Upstreams::Fixed(vec![silent.local_addr().unwrap()]), Duration::from_millis(200)).await;
    let m = udp(only_silent.local_addr(), &query(10, "example.com.", RecordType::A, None)).await;
    assert_eq!(m.response_code(), ResponseCode::ServFail);
}

#[tokio::test]
async fn the_loop_guard_never_forwards_to_ourselves() {
    // Find a free port, then point the server's upstream at itself.
    let probe = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = probe.local_addr().unwrap();
    drop(probe);
    let mut cfg = ServerConfig::new(me, Upstreams::Fixed(vec![me]));
    cfg.upstream_timeout = Duration::from_secs(5);
    let server = serve(cfg, dns_with(1)).await.unwrap();
    let t = Instant::now();
    let m = udp(server.local_addr(), &query(11, "example.com.", RecordType::A, None)).await;
    assert_eq!(m.response_code(), ResponseCode::ServFail);
    assert!(t.elapsed() < Duration::from_secs(2), "answered at once, not after waiting on itself");
}

#[tokio::test]
async fn an_empty_resolv_conf_means_servfail_for_other_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resolv.conf");
    std::fs::write(&path, "# no nameserver\n").unwrap();
    let server = start(Upstreams::ResolvConf(path), Duration::from_millis(200)).await;
    let m = udp(server.local_addr(), &query(12, "example.com.", RecordType::A, None)).await;
    assert_eq!(m.response_code(), ResponseCode::ServFail);
    let m = udp(server.local_addr(), &query(13, "db.weave.local.", RecordType::A, None)).await;
    assert_eq!(m.answers().len(), 1, "local names still answered");
}

/// An upstream that truncates over UDP (TC, no answers) and answers fully
/// over TCP, on the same port.
async fn truncating_upstream() -> SocketAddr {
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = udp.local_addr().unwrap();
    let tcp = tokio::net::TcpListener::bind(addr).await.unwrap();
    let reply = |q: &Message, full: bool| {
        let mut r = Message::new();
        r.set_id(q.id()).set_message_type(MessageType::Response).set_truncated(!full);
        r.add_queries(q.queries().iter().cloned());
        if full {
            for i in 0..60u8 {
                r.add_answer(Record::from_rdata(q.queries()[0].name().clone(), 60, RData::A(A(Ipv4Addr::new(192, 0, 2, i)))));
            }
        }
        r.to_vec().unwrap()
    };
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, from) = udp.recv_from(&mut buf).await.unwrap();
            let q = Message::from_vec(&buf[..n]).unwrap();
            udp.send_to(&reply(&q, false), from).await.unwrap();
        }
    });
    tokio::spawn(async move {
        loop {
            let (mut s, _) = tcp.accept().await.unwrap();
            let mut len = [0u8; 2];
            s.read_exact(&mut len).await.unwrap();
            let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
            s.read_exact(&mut q).await.unwrap();
            let r = reply(&Message::from_vec(&q).unwrap(), true);
            s.write_all(&(r.len() as u16).to_be_bytes()).await.unwrap();
            s.write_all(&r).await.unwrap();
        }
    });
    addr
}

#[tokio::test]
async fn a_tcp_client_gets_the_whole_forwarded_answer() {
    let up = truncating_upstream().await;
    let server = start(Upstreams::Fixed(vec![up]), Duration::from_secs(2)).await;
    let m = udp(server.local_addr(), &query(20, "big.example.", RecordType::A, None)).await;
    assert!(m.truncated(), "a UDP client is told to retry over TCP");
    let m = tcp(server.local_addr(), &query(21, "big.example.", RecordType::A, None)).await;
    assert!(!m.truncated());
    assert_eq!(m.answers().len(), 60);
}
