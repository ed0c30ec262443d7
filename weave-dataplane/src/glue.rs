//! Wiring a data plane to the mesh driver's events.

use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;
use weave_gossip::driver::{DriverEvent, MeshHandle};

use crate::Dataplane;

/// Follow `mesh`: connections up and down and route changes go to `dp`
/// until the mesh stops. Start it before connecting to any peer: a
/// connection's data keys are only ever handed out in its event. A failed `connection_up` is logged and retried
/// when routes next change (the peer stays on whatever path it had).
///
/// Events are subscribed to when this is called (not when the future is
/// first polled), so spawning it right before connecting loses nothing.
pub fn follow_mesh(mesh: MeshHandle, dp: Arc<dyn Dataplane>) -> impl std::future::Future<Output = ()> + Send {
    let events = mesh.subscribe();
    run(mesh, events, dp)
}

async fn run(mesh: MeshHandle, mut events: tokio::sync::broadcast::Receiver<DriverEvent>, dp: Arc<dyn Dataplane>) {
    // Subscribed first, then read current state, so nothing is missed.
    if let Ok(routes) = mesh.routes().await {
        dp.set_routes(&routes);
    }
    let mut pending = Vec::new();
    loop {
        match events.recv().await {
            Ok(DriverEvent::Connected { peer, address, outbound, data_keys }) => {
                if let Err(e) = dp.connection_up(peer, address, outbound, data_keys.as_ref()) {
                    tracing::warn!(%peer, error = %e, "data plane refused the connection; will retry");
                    pending.push((peer, address, outbound, data_keys));
                }
            }
            Ok(DriverEvent::Disconnected { peer, .. }) => {
                pending.retain(|p| p.0 != peer);
                dp.connection_down(peer);
            }
            Ok(DriverEvent::Routes(routes)) => {
                pending.retain(|(peer, address, outbound, keys)| dp.connection_up(*peer, *address, *outbound, keys.as_ref()).is_err());
                dp.set_routes(&routes);
            }
            Ok(_) => {}
            Err(RecvError::Lagged(n)) => {
                // Routes can be re-read; a missed connection's keys cannot
                // (the peer stays on its old path until it reconnects).
                tracing::error!(missed = n, "data plane fell behind the mesh's events; resyncing routes");
                if let Ok(routes) = mesh.routes().await {
                    dp.set_routes(&routes);
                }
            }
            Err(RecvError::Closed) => return,
        }
    }
}
