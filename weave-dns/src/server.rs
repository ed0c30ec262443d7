//! The DNS server on one address: UDP on a path of its own (a query's
//! bytes to the sans-IO [`Responder`] and its reply's bytes back, nothing
//! in between), TCP through hickory-server's `ServerFuture` with our
//! [`RequestHandler`]; what is not ours is forwarded upstream.
//!
//! Upstreams come from configuration or from a resolv.conf that is re-read
//! whenever it changes. Each is tried in turn with a timeout; when all fail
//! the client gets SERVFAIL. The loop guard never forwards to the server's
//! own address (Weave #2161: a host whose resolv.conf points at weaveDNS).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use hickory_proto::op::{Header, Message, MessageType, ResponseCode};
use hickory_proto::serialize::binary::BinEncodable;
use hickory_proto::xfer::Protocol;
use hickory_server::authority::MessageResponseBuilder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::ServerFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

use crate::answer::{Answer, Decision, Responder};
use crate::channel::Names;

/// Where upstream resolvers come from.
#[derive(Debug, Clone)]
pub enum Upstreams {
    /// These (`--dns-upstream`).
    Fixed(Vec<SocketAddr>),
    /// The nameservers of this resolv.conf, re-read when it changes.
    ResolvConf(PathBuf),
}

/// Server settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Where to listen (UDP and TCP).
    pub listen: SocketAddr,
    /// Where to forward.
    pub upstreams: Upstreams,
    /// How long to wait for each upstream (default 2 s).
    pub upstream_timeout: Duration,
    /// TTL of our answers in seconds (`--dns-ttl`, default 1).
    pub ttl: u32,
}

impl ServerConfig {
    /// Defaults around a listen address and upstreams.
    pub fn new(listen: SocketAddr, upstreams: Upstreams) -> Self {
        Self { listen, upstreams, upstream_timeout: Duration::from_secs(2), ttl: 1 }
    }
}

/// Whether a server listening on `listen` would reach itself by forwarding
/// to `up`: the same address, or — listening on a wildcard — any address of
/// this host on the same port.
pub fn forwards_to_self(listen: SocketAddr, up: SocketAddr) -> bool {
    if up.port() != listen.port() {
        return false;
    }
    if up.ip() == listen.ip() {
        return true;
    }
    listen.ip().is_unspecified() && (up.ip().is_loopback() || std::net::UdpSocket::bind((up.ip(), 0)).is_ok())
}

/// The nameservers of a resolv.conf's text, port 53.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next()).flatten()
        })
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

struct UpstreamSource {
    source: Upstreams,
    cached: Vec<SocketAddr>,
    mtime: Option<SystemTime>,
}

impl UpstreamSource {
    /// Current upstreams, re-reading resolv.conf if it changed.
    fn current(&mut self) -> Vec<SocketAddr> {
        match &self.source {
            Upstreams::Fixed(v) => v.clone(),
            Upstreams::ResolvConf(path) => {
                let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
                if mtime != self.mtime || self.mtime.is_none() {
                    self.mtime = mtime;
                    self.cached = std::fs::read_to_string(path).map(|t| parse_resolv_conf(&t)).unwrap_or_default();
                }
                self.cached.clone()
            }
        }
    }
}

/// Forwarded queries in flight at most; beyond, SERVFAIL at once.
const MAX_FORWARDS: usize = 512;
/// Idle time after which a TCP client is dropped.
const TCP_EXCHANGE: Duration = Duration::from_secs(10);

struct Shared {
    names: Names,
    forwards: tokio::sync::Semaphore,
    responder: Responder,
    /// Shuffles answers; seeded once (not per query).
    rng: Mutex<weave_core::rng::SimRng>,
    upstreams: Mutex<UpstreamSource>,
    listen: SocketAddr,
    timeout: Duration,
}

impl Shared {
    /// A UDP query's answer, from its bytes.
    fn answer(&self, query: &[u8]) -> Answer {
        let dns = self.names.current();
        let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
        self.responder.answer(dns.store(), query, false, &mut *rng)
    }

    fn decide(&self, req: &Message, tcp: bool) -> Decision {
        let dns = self.names.current();
        let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
        self.responder.decide(dns.store(), req, tcp, &mut *rng)
    }

    /// Whether forwarding to `up` would reach this very server: the same
    /// address, or — when listening on a wildcard — any address of this
    /// host on our port.
    fn is_ourself(&self, up: SocketAddr) -> bool {
        forwards_to_self(self.listen, up)
    }

    /// Forward to each upstream in turn; SERVFAIL if none answers. For a
    /// client that came over TCP, a truncated UDP answer is asked again over
    /// TCP so the client gets all of it.
    async fn forward(&self, query: &[u8], tcp: bool) -> Option<Vec<u8>> {
        // Too many in flight (a flood, or a loop between servers): fail fast
        // instead of piling up sockets.
        let Ok(_permit) = self.forwards.try_acquire() else { return servfail(query) };
        let ups = self.upstreams.lock().unwrap_or_else(PoisonError::into_inner).current();
        for up in ups {
            if self.is_ourself(up) {
                tracing::warn!(%up, "not forwarding DNS to ourselves (loop guard); fix the upstream or resolv.conf");
                continue;
            }
            match tokio::time::timeout(self.timeout, ask_udp(up, query)).await {
                Ok(Ok(reply)) if tcp && reply[2] & 0x02 != 0 => match tokio::time::timeout(self.timeout, ask_tcp(up, query)).await {
                    Ok(Ok(full)) => return Some(full),
                    _ => return Some(reply),
                },
                Ok(Ok(reply)) => return Some(reply),
                Ok(Err(e)) => tracing::debug!(%up, error = %e, "upstream failed"),
                Err(_) => tracing::debug!(%up, "upstream timed out"),
            }
        }
        servfail(query)
    }
}

async fn ask_udp(up: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = if up.is_ipv4() { "0.0.0.0:0".parse().expect("valid") } else { "[::]:0".parse().expect("valid") };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(up).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = sock.recv(&mut buf).await?;
        // Only a response (QR set) with this query's id counts.
        if n >= 12 && query.len() >= 2 && buf[..2] == query[..2] && buf[2] & 0x80 != 0 {
            return Ok(buf[..n].to_vec());
        }
    }
}

async fn ask_tcp(up: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(up).await?;
    let len = u16::try_from(query.len()).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    s.write_all(&len.to_be_bytes()).await?;
    s.write_all(query).await?;
    let mut n = [0u8; 2];
    s.read_exact(&mut n).await?;
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(n))];
    s.read_exact(&mut reply).await?;
    if reply.len() < 12 || reply[..2] != query[..2] || reply[2] & 0x80 == 0 {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidData));
    }
    Ok(reply)
}

fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let req = Message::from_vec(query).ok()?;
    let mut m = Message::new();
    m.set_id(req.id())
        .set_message_type(MessageType::Response)
        .set_op_code(req.op_code())
        .set_recursion_desired(req.recursion_desired())
        .set_recursion_available(true)
        .set_response_code(ResponseCode::ServFail);
    m.add_queries(req.queries().iter().cloned());
    m.to_vec().ok()
}

/// The UDP path, in front of hickory-server (which serves TCP): the
/// queries waiting read in one batch, each parsed once and its reply
/// encoded once by the responder, the replies sent in one batch; forwarded
/// queries are answered by a task of their own.
async fn serve_udp(udp: Arc<UdpSocket>, shared: Arc<Shared>) {
    use std::os::fd::AsRawFd;
    let fd = udp.as_raw_fd();
    let mut queries = crate::batch::Queries::new();
    let mut replies: Vec<(Vec<u8>, SocketAddr)> = Vec::with_capacity(crate::batch::BATCH);
    loop {
        if let Err(e) = udp.readable().await {
            tracing::warn!(error = %e, "DNS socket failed");
            return;
        }
        let got = match udp.try_io(tokio::io::Interest::READABLE, || queries.recv(fd)) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            // An ICMP error for an earlier reply: nothing to do.
            Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "DNS receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        replies.clear();
        for i in 0..got {
            let (query, Some(client)) = queries.get(i) else { continue };
            match shared.answer(query) {
                Answer::Reply(reply) => replies.push((reply, client)),
                Answer::Forward => {
                    let (udp, shared, query) = (udp.clone(), shared.clone(), query.to_vec());
                    tokio::spawn(async move {
                        if let Some(reply) = shared.forward(&query, false).await {
                            let _ = udp.send_to(&reply, client).await;
                        }
                    });
                }
                Answer::Drop => {}
            }
        }
        let mut sent = 0;
        while sent < replies.len() {
            match udp.try_io(tokio::io::Interest::WRITABLE, || crate::batch::send(fd, &replies[sent..])) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if udp.writable().await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    // This reply cannot go (its client's address): the rest can.
                    tracing::debug!(client = %replies[sent].1, error = %e, "DNS reply not sent");
                    sent += 1;
                }
            }
        }
    }
}

/// Answers TCP requests hickory-server has parsed: through the sans-IO
/// responder, or forwarded upstream.
struct Handler(Arc<Shared>);

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler>(&self, request: &Request, mut response_handle: R) -> ResponseInfo {
        let mut fail = Header::response_from_request(request.header());
        fail.set_response_code(ResponseCode::ServFail);
        let Ok(query) = request.to_bytes() else { return fail.into() };
        let Ok(req) = Message::from_vec(&query) else { return fail.into() };
        let tcp = request.protocol() == Protocol::Tcp;
        let msg = match self.0.decide(&req, tcp) {
            Decision::Reply(m) => m,
            Decision::Drop => return fail.into(),
            Decision::Forward => {
                let Some(reply) = self.0.forward(&query, tcp).await else { return fail.into() };
                let Ok(m) = Message::from_vec(&reply) else { return fail.into() };
                m
            }
        };
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(edns) = msg.extensions() {
            builder.edns(edns.clone());
        }
        let response = builder.build(*msg.header(), msg.answers(), msg.name_servers(), &[], msg.additionals());
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "DNS reply not sent");
                fail.into()
            }
        }
    }
}

/// A running server; dropping it stops it.
pub struct Server {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Server {
    /// The bound address (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// UDP and TCP sockets on one port. With port 0 the port UDP was given
/// may be taken for TCP already: try another a few times.
async fn bind_both(listen: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    let mut tries = if listen.port() == 0 { 8 } else { 1 };
    loop {
        let udp = UdpSocket::bind(listen).await?;
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries > 1 => tries -= 1,
            Err(e) => return Err(e),
        }
    }
}

/// Start serving `names` on `cfg.listen` (port 0 picks one, the same for TCP).
pub async fn serve(cfg: ServerConfig, names: Names) -> std::io::Result<Server> {
    let (udp, tcp) = bind_both(cfg.listen).await?;
    let addr = udp.local_addr()?;
    let domain = names.current().domain().to_owned();
    let shared = Arc::new(Shared {
        names,
        responder: Responder::new(&domain, cfg.ttl),
        rng: Mutex::new(weave_core::rng::from_os()),
        forwards: tokio::sync::Semaphore::new(MAX_FORWARDS),
        upstreams: Mutex::new(UpstreamSource { source: cfg.upstreams, cached: Vec::new(), mtime: None }),
        listen: addr,
        timeout: cfg.upstream_timeout,
    });
    let udp = serve_udp(Arc::new(udp), shared.clone());
    let mut server = ServerFuture::new(Handler(shared));
    server.register_listener(tcp, TCP_EXCHANGE);
    let task = tokio::spawn(async move {
        tokio::select! {
            r = server.block_until_done() => if let Err(e) = r {
                tracing::warn!(error = %e, "DNS server stopped");
            },
            () = udp => {}
        }
    });
    Ok(Server { addr, task })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loop_guard_spots_only_ourselves() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(forwards_to_self(a("127.0.0.1:5353"), a("127.0.0.1:5353")));
        assert!(forwards_to_self(a("0.0.0.0:53"), a("127.0.0.1:53")));
        assert!(!forwards_to_self(a("0.0.0.0:53"), a("192.0.2.1:53")), "a remote resolver on port 53 is not us");
        assert!(!forwards_to_self(a("127.0.0.1:53"), a("127.0.0.53:53")), "systemd-resolved is not us");
        assert!(!forwards_to_self(a("127.0.0.1:5353"), a("127.0.0.1:53")));
    }

    #[test]
    fn resolv_conf_nameservers_are_parsed() {
        let text = "# comment\nsearch weave.local\nnameserver 10.0.0.2\nnameserver ::1\nnameserver bogus\noptions ndots:1\n";
        assert_eq!(parse_resolv_conf(text), vec!["10.0.0.2:53".parse().unwrap(), "[::1]:53".parse().unwrap()]);
    }

    #[test]
    fn a_changed_resolv_conf_is_re_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        std::fs::write(&path, "nameserver 10.0.0.1\n").unwrap();
        let mut src = UpstreamSource { source: Upstreams::ResolvConf(path.clone()), cached: Vec::new(), mtime: None };
        assert_eq!(src.current(), vec!["10.0.0.1:53".parse().unwrap()]);
        // A later modification time (set explicitly: coarse clocks).
        std::fs::write(&path, "nameserver 10.0.0.2\n").unwrap();
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(later).unwrap();
        assert_eq!(src.current(), vec!["10.0.0.2:53".parse().unwrap()]);
    }
}
