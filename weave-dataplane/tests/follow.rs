//! `follow_mesh` over real meshes on loopback: a data plane that falls far
//! behind while the mesh's event stream overflows still ends up with every
//! live connection and its keys, and none of the dead ones.
#![cfg(feature = "linux")]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use weave_core::{PeerName, PeerUid};
use weave_dataplane::{Dataplane, DataplaneError, DropReason, PeerPath};
use weave_gossip::driver::{DriverConfig, MeshBuilder, MeshHandle};
use weave_gossip::mesh::MeshConfig;
use weave_gossip::routes::Routes;
use weave_gossip::{DataKeys, Psk};

/// A data plane that records what it is told, and is stuck (every call
/// blocks) until the gate opens.
#[derive(Default)]
struct Stuck {
    open: AtomicBool,
    up: Mutex<BTreeMap<PeerName, Option<DataKeys>>>,
}

impl Stuck {
    fn wait(&self) {
        while !self.open.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Dataplane for Stuck {
    fn kind(&self) -> &'static str {
        "stuck"
    }

    fn connection_up(&self, peer: PeerName, _remote: SocketAddr, _outbound: bool, keys: Option<&DataKeys>) -> Result<(), DataplaneError> {
        self.wait();
        self.up.lock().unwrap().insert(peer, keys.cloned());
        Ok(())
    }

    fn connection_down(&self, peer: PeerName) {
        self.wait();
        self.up.lock().unwrap().remove(&peer);
    }

    fn set_routes(&self, _routes: &Routes) {
        self.wait();
    }

    fn paths(&self) -> Vec<PeerPath> {
        Vec::new()
    }

    fn drops(&self) -> Vec<(DropReason, u64)> {
        Vec::new()
    }
}

async fn start(name: u64) -> MeshHandle {
    let m = MeshConfig::new(PeerName::from_u64(name).unwrap(), format!("host{name}"), PeerUid::new(1000 + name).unwrap());
    let mut cfg = DriverConfig::new(m, "127.0.0.1:0".parse().unwrap());
    cfg.conn_maker.discovery = false;
    cfg.link.psk = Some(Psk::from_password(b"flood"));
    MeshBuilder::new(cfg).start().await.expect("bind on loopback")
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_plane_that_falls_behind_loses_no_connection_and_no_keys() {
    let a = start(1).await;
    let dp = Arc::new(Stuck::default());
    tokio::spawn(weave_dataplane::follow_mesh(a.clone(), dp.clone()));
    // A reader of the event stream that never reads: it will overflow.
    let mut lagging = a.subscribe();

    // B stays connected; 60 others come and go while the data plane is stuck.
    let b = start(2).await;
    b.connect(vec![a.local_addr().to_string()], false).await.unwrap().unwrap();
    // Two rounds: more connection events than the stream holds, however
    // much the mesh coalesces its topology changes.
    let va = a.view();
    for round in 0..2 {
        let mut others = Vec::new();
        for n in 0..60 {
            let o = start(100 + 100 * round + n).await;
            o.connect(vec![a.local_addr().to_string()], false).await.unwrap().unwrap();
            others.push(o);
        }
        until("A has all 61 connections", || va.borrow().connections.len() == 61).await;
        for o in others.drain(..) {
            o.shutdown().await;
        }
        until("A has only B left", || va.borrow().connections.len() == 1).await;
    }
    assert!(
        matches!(lagging.try_recv(), Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_))),
        "the event stream overflowed (an event-driven data plane would have lost connections)"
    );

    dp.open.store(true, Ordering::Relaxed);
    let b_name = PeerName::from_u64(2).unwrap();
    until("the data plane has B, and only B", || {
        let up = dp.up.lock().unwrap();
        up.len() == 1 && up.contains_key(&b_name)
    })
    .await;
    // With B's keys: what A sends B opens with, and the other way round.
    let ours = dp.up.lock().unwrap()[&b_name].clone().expect("encrypted: keys");
    let theirs = b.view().borrow().connections[&PeerName::from_u64(1).unwrap()].keys.clone().expect("keys on B's side");
    assert_eq!((ours.send, ours.recv), (theirs.recv, theirs.send));
}
