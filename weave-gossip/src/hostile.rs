//! A hostile peer for tests: it completes the real handshake (with the
//! password, when it has one) and then sends whatever the test hands it —
//! forged records, channel data in other peers' names, lies about its own
//! connections — over a real TCP connection to a router.
//!
//! It is a peer like any other as far as the handshake goes: everything it
//! sends after that is what a compromised router (or, in plain mode, anyone
//! who can reach port 6783) could send.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weave_core::{PeerName, PeerUid};

use crate::identity::Identity;
use crate::link::{Link, LinkConfig, LinkEvent, LocalFeatures, Role};
use crate::proto::{Body, ChannelMsg, Envelope, TopologyUpdate};
use crate::topology::{ConnectionInfo, PeerRecord};
use crate::Psk;

/// A connected hostile peer. See the module docs.
pub struct HostilePeer {
    stream: TcpStream,
    link: Link,
    buf: Vec<u8>,
    /// The name it connected as.
    pub name: PeerName,
    /// Its UID.
    pub uid: PeerUid,
    /// Its own key (it signs its own record with it, and forgeries too).
    pub identity: Identity,
    version: u64,
}

impl HostilePeer {
    /// Connect to `target` as `name`, with the mesh password if given.
    pub async fn connect(target: SocketAddr, name: PeerName, password: Option<&str>) -> std::io::Result<Self> {
        let mut rng = weave_core::rng::from_os();
        let uid = PeerUid::random(&mut rng);
        let cfg = LinkConfig { psk: password.map(|p| Psk::from_password(p.as_bytes())), ..LinkConfig::default() };
        let me = LocalFeatures { name, nickname: "hostile".into(), uid, listen_port: 1 };
        let link = Link::new(Role::Initiator, cfg, &me, &mut rng);
        let stream = TcpStream::connect(target).await?;
        let identity = Identity::generate(&mut rng);
        let mut peer = Self { stream, link, buf: vec![0; 64 * 1024], name, uid, identity, version: 0 };
        while !peer.link.is_established() {
            peer.flush().await?;
            let n = peer.stream.read(&mut peer.buf).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let data = peer.buf[..n].to_vec();
            peer.link.handle_bytes(&data).map_err(std::io::Error::other)?;
        }
        peer.flush().await?;
        Ok(peer)
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        let out = self.link.take_output();
        self.stream.write_all(&out).await
    }

    /// Send one message.
    pub async fn send(&mut self, body: Body) -> std::io::Result<()> {
        self.link.send(&Envelope::from(body)).map_err(std::io::Error::other)?;
        self.flush().await
    }

    /// Send peer records as they are (forged, tampered, or honest).
    pub async fn send_records(&mut self, records: &[PeerRecord]) -> std::io::Result<()> {
        self.send(Body::Update(TopologyUpdate { records: records.iter().map(PeerRecord::to_msg).collect(), deltas: Vec::new() })).await
    }

    /// Announce its own record, honestly signed, listing connections to
    /// `peers` (at `ip:port` addresses of its choosing).
    pub async fn announce(&mut self, peers: &[(PeerName, String)]) -> std::io::Result<()> {
        self.version += 1;
        let conns = peers.iter().map(|(p, a)| ConnectionInfo { peer: *p, address: a.clone(), outbound: true, established: true }).collect();
        let r = PeerRecord::signed(&self.identity, self.name, "hostile".into(), self.uid, self.version, conns);
        self.send_records(&[r]).await
    }

    /// Channel gossip claiming to come from `src`.
    pub async fn gossip(&mut self, channel: &str, src: PeerName, data: Vec<u8>) -> std::io::Result<()> {
        self.send(Body::Gossip(ChannelMsg { channel: channel.into(), src: src.as_u64(), dst: 0, data })).await
    }

    /// A channel broadcast claiming to come from `src`.
    pub async fn broadcast(&mut self, channel: &str, src: PeerName, data: Vec<u8>) -> std::io::Result<()> {
        self.send(Body::Broadcast(ChannelMsg { channel: channel.into(), src: src.as_u64(), dst: 0, data })).await
    }

    /// A channel unicast to `dst` claiming to come from `src`.
    pub async fn unicast(&mut self, channel: &str, src: PeerName, dst: PeerName, data: Vec<u8>) -> std::io::Result<()> {
        self.send(Body::Unicast(ChannelMsg { channel: channel.into(), src: src.as_u64(), dst: dst.as_u64(), data })).await
    }

    /// Messages the router sends within `wait` (a heartbeat goes out first,
    /// so the connection stays up); empty once the router closed it.
    pub async fn receive(&mut self, wait: Duration) -> std::io::Result<Vec<Envelope>> {
        self.send(Body::Heartbeat(crate::proto::Heartbeat::default())).await?;
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(read) = tokio::time::timeout_at(deadline, self.stream.read(&mut self.buf)).await {
            let n = read?;
            if n == 0 {
                break;
            }
            let data = self.buf[..n].to_vec();
            self.link.handle_bytes(&data).map_err(std::io::Error::other)?;
            while let Some(ev) = self.link.poll_event() {
                if let LinkEvent::Message(m) = ev {
                    got.push(m);
                }
            }
        }
        Ok(got)
    }
}
