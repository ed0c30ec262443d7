//! An embedder's view of the mesh: three peers on loopback gossip a
//! grow-only counter (a G-Counter CRDT) over their own channel, and each
//! prints the total once all increments have reached it.
//!
//! `cargo run -p weave-examples --bin mesh-crdt`

use std::collections::BTreeMap;
use std::error::Error;
use std::time::{Duration, Instant};

use weave_core::{PeerName, PeerUid};
use weave_gossip::channel::{Channel, Output};
use weave_gossip::driver::{DriverConfig, MeshBuilder, MeshHandle};
use weave_gossip::mesh::MeshConfig;

type BoxError = Box<dyn Error + Send + Sync>;

/// Per-peer counts; merge keeps the maximum per peer, total is the sum.
#[derive(Default)]
struct GCounter(BTreeMap<u64, u64>);

impl GCounter {
    fn encode(entries: impl IntoIterator<Item = (u64, u64)>) -> Vec<u8> {
        entries.into_iter().flat_map(|(k, v)| k.to_le_bytes().into_iter().chain(v.to_le_bytes())).collect()
    }

    /// Merge; returns the entries that grew (the delta to relay).
    fn merge(&mut self, data: &[u8]) -> Result<Vec<(u64, u64)>, BoxError> {
        if data.len() % 16 != 0 {
            return Err("counter state must be 16-byte entries".into());
        }
        let mut grew = Vec::new();
        for e in data.chunks(16) {
            let k = u64::from_le_bytes(e[..8].try_into()?);
            let v = u64::from_le_bytes(e[8..].try_into()?);
            let cur = self.0.entry(k).or_default();
            if v > *cur {
                *cur = v;
                grew.push((k, v));
            }
        }
        Ok(grew)
    }

    fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

/// The counter as a mesh channel: it lives inside the node, which hands
/// it what peers gossip and sends what it queues.
#[derive(Default)]
struct Counter {
    state: GCounter,
    out: Vec<Vec<u8>>,
}

impl Counter {
    /// Count one event of ours; the new value leaves as a delta.
    fn increment(&mut self, me: u64) {
        let v = self.state.0.entry(me).or_default();
        *v += 1;
        self.out.push(GCounter::encode([(me, *v)]));
    }
}

impl Channel for Counter {
    fn on_gossip(&mut self, _now: Instant, _src: PeerName, update: &[u8]) -> Result<Option<Vec<u8>>, BoxError> {
        let grew = self.state.merge(update)?;
        Ok((!grew.is_empty()).then(|| GCounter::encode(grew)))
    }
    fn on_broadcast(&mut self, _now: Instant, _src: PeerName, data: &[u8]) -> Result<(), BoxError> {
        self.state.merge(data).map(|_| ())
    }
    fn on_unicast(&mut self, _now: Instant, _src: PeerName, data: &[u8]) -> Result<(), BoxError> {
        self.state.merge(data).map(|_| ())
    }
    fn full_state(&mut self, _now: Instant) -> Vec<Vec<u8>> {
        vec![GCounter::encode(self.state.0.iter().map(|(k, v)| (*k, *v)))]
    }
    fn poll_output(&mut self) -> Option<Output> {
        self.out.pop().map(Output::Gossip)
    }
}

async fn peer(id: u64) -> Result<MeshHandle, Box<dyn Error>> {
    let name = PeerName::from_u64(id).ok_or("bad name")?;
    let uid = PeerUid::random(&mut weave_core::rng::from_os());
    let cfg = DriverConfig::new(MeshConfig::new(name, format!("peer{id}"), uid), "127.0.0.1:0".parse()?);
    Ok(MeshBuilder::new(cfg).channel("gcounter", Box::new(Counter::default())).start().await?)
}

async fn total(h: &MeshHandle) -> Result<u64, Box<dyn Error>> {
    Ok(h.with_channel("gcounter", |c: &mut Counter, _| c.state.total()).await?.ok_or("no counter channel")?)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut peers = Vec::new();
    for id in 1..=3 {
        peers.push(peer(id).await?);
    }
    // A chain: 2 dials 1, 3 dials 2; 1 and 3 hear each other through 2.
    for i in 1..3 {
        let target = peers[i - 1].local_addr().to_string();
        peers[i].connect(vec![target], false).await?.map_err(|e| e.to_string())?;
    }
    // Each peer counts (id × 10) events, gossiping each increment as a delta.
    for (i, handle) in peers.iter().enumerate() {
        let me = i as u64 + 1;
        for _ in 0..me * 10 {
            handle.with_channel("gcounter", move |c: &mut Counter, _| c.increment(me)).await?;
        }
    }
    let want = 10 + 20 + 30;
    for _ in 0..200 {
        // Converged: every count everywhere, and every peer known to all
        // (1 and 3 learn of each other from 2's next topology update,
        // which may come after the counts).
        let mut done = true;
        for h in &peers {
            done &= total(h).await? == want && h.status_brief().await?.peers.len() == peers.len();
        }
        if done {
            for h in &peers {
                let st = h.status().await?;
                println!("{} sees total {} with {} peers", st.name, total(h).await?, st.peers.len());
            }
            for h in &peers {
                h.shutdown().await;
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("counters did not converge to {want}").into())
}
