//! Wiring a data plane to a running mesh.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use weave_core::PeerName;
use weave_gossip::driver::{MeshHandle, MeshView, ViewConnection};

use crate::Dataplane;

/// Drive `dp` from `mesh` until the mesh stops: the data plane follows the
/// mesh's state ([`MeshView`]), not its events, so nothing is lost when it
/// falls behind. Connections that appear (or come back with new keys) are
/// brought up, those that are gone are taken down, routes are set when they
/// change, and a connection the data plane refused is tried again every
/// second. When the mesh stops, every peer is taken down.
pub fn follow_mesh(mesh: MeshHandle, dp: Arc<dyn Dataplane>) -> impl std::future::Future<Output = ()> + Send {
    let view = mesh.view();
    run(view, dp)
}

async fn run(mut view: tokio::sync::watch::Receiver<MeshView>, dp: Arc<dyn Dataplane>) {
    let mut applied: BTreeMap<PeerName, ViewConnection> = BTreeMap::new();
    let mut routes_epoch = None;
    loop {
        let v = view.borrow_and_update().clone();
        let retry = reconcile(dp.as_ref(), &v, &mut applied, &mut routes_epoch);
        tokio::select! {
            changed = view.changed() => if changed.is_err() {
                for peer in std::mem::take(&mut applied).into_keys() {
                    dp.connection_down(peer);
                }
                return;
            },
            () = tokio::time::sleep(Duration::from_secs(1)), if retry => {}
        }
    }
}

/// Bring `dp` to `view`; true if something must be tried again.
fn reconcile(dp: &dyn Dataplane, view: &MeshView, applied: &mut BTreeMap<PeerName, ViewConnection>, routes_epoch: &mut Option<u64>) -> bool {
    let gone: Vec<PeerName> = applied.keys().filter(|p| !view.connections.contains_key(p)).copied().collect();
    for peer in gone {
        applied.remove(&peer);
        dp.connection_down(peer);
    }
    if *routes_epoch != Some(view.routes_epoch) {
        dp.set_routes(&view.routes);
        *routes_epoch = Some(view.routes_epoch);
    }
    let mut retry = false;
    for (peer, c) in &view.connections {
        if applied.get(peer) == Some(c) {
            continue;
        }
        match dp.connection_up(*peer, c.remote, c.outbound, c.keys.as_ref()) {
            Ok(()) => {
                applied.insert(*peer, c.clone());
            }
            Err(e) => {
                tracing::warn!(%peer, error = %e, "data plane refused the connection; will retry");
                retry = true;
            }
        }
    }
    retry
}
