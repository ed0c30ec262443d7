//! IPAM over the tokio mesh driver, for embedders and the reference router
//! alike: a handle that runs each request inside the node, where the
//! [`IpamChannel`] lives, and waits for its durable answer.
//!
//! ```no_run
//! # async fn demo(store: weave_ipam::persist::Store, ipam: weave_ipam::Ipam,
//! #               cfg: weave_gossip::driver::DriverConfig) -> Result<(), Box<dyn std::error::Error>> {
//! use weave_gossip::driver::MeshBuilder;
//! use weave_ipam::channel::{IpamChannel, CHANNEL};
//! use weave_ipam::persist::StorePersist;
//! use weave_ipam::service::IpamService;
//!
//! let mesh = MeshBuilder::new(cfg)
//!     .persistent_channel(CHANNEL, Box::new(IpamChannel::new(ipam)), Box::new(StorePersist::new(store)))
//!     .start()
//!     .await?;
//! let ipam = IpamService::new(mesh);
//! let addr = ipam.allocate("container-1", None).await?;
//! # Ok(()) }
//! ```
//!
//! While saving fails nothing IPAM queued leaves, the node retries with a
//! growing pause and [`IpamService::save_error`] says why; a request whose
//! answer cannot be saved within [`SAVE_PATIENCE`] fails with
//! [`ServiceError::Unsaved`].

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use tokio::sync::oneshot;
use weave_gossip::driver::{MeshHandle, Stopped};

use crate::channel::{IpamChannel, Reply, CHANNEL};
use crate::ipam::{Ipam, IpamError, RequestId};

/// How long a request waits for its answer to be saved (or, pending, goes
/// on waiting while saving fails) before it is given up.
pub const SAVE_PATIENCE: Duration = Duration::from_secs(10);

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// IPAM refused it.
    #[error(transparent)]
    Ipam(#[from] IpamError),
    /// The state could not be saved: no address is given until it can.
    #[error("IPAM cannot save its state ({0}); no address is given until it can")]
    Unsaved(String),
    /// The mesh has stopped, or has no IPAM channel.
    #[error("IPAM has stopped")]
    Stopped,
}

impl From<Stopped> for ServiceError {
    fn from(_: Stopped) -> Self {
        Self::Stopped
    }
}

/// Allocate, claim and free over a running mesh that has an
/// [`IpamChannel`] registered under [`CHANNEL`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct IpamService {
    mesh: MeshHandle,
}

impl IpamService {
    /// A handle on the IPAM channel of `mesh`.
    pub fn new(mesh: MeshHandle) -> Self {
        Self { mesh }
    }

    /// Run `f` on the IPAM inside the node (status, rmpeer, leave, prime,
    /// ...); what it queues leaves once saved.
    pub async fn with<R: Send + 'static>(&self, f: impl FnOnce(&mut Ipam, Instant) -> R + Send + 'static) -> Result<R, ServiceError> {
        self.with_channel(move |c, now| f(c.ipam_mut(), now)).await
    }

    async fn with_channel<R: Send + 'static>(&self, f: impl FnOnce(&mut IpamChannel, Instant) -> R + Send + 'static) -> Result<R, ServiceError> {
        self.mesh.with_channel::<IpamChannel, R>(CHANNEL, f).await?.ok_or(ServiceError::Stopped)
    }

    /// Why IPAM cannot save its state, while it cannot.
    pub async fn save_error(&self) -> Option<String> {
        self.mesh.save_error(CHANNEL).await.ok().flatten()
    }

    /// Whether IPAM has handed its space to a peer after [`Ipam::leave`].
    pub async fn handed_off(&self) -> bool {
        self.with_channel(|c, _| c.handed_off()).await.unwrap_or(false)
    }

    /// An address in `subnet` (the default subnet if `None`) for `id`.
    pub async fn allocate(&self, id: &str, subnet: Option<Ipv4Net>) -> Result<Ipv4Net, ServiceError> {
        let id = id.to_owned();
        self.request(move |c, now, reply| c.allocate(now, &id, subnet, reply)).await
    }

    /// Exactly `addr` for `id`.
    pub async fn claim(&self, id: &str, addr: Ipv4Net) -> Result<Ipv4Net, ServiceError> {
        let id = id.to_owned();
        self.request(move |c, now, reply| c.claim(now, &id, addr, reply)).await
    }

    /// Free `addrs` held for `id`.
    pub async fn free(&self, id: &str, addrs: impl IntoIterator<Item = Ipv4Addr>) -> Result<(), ServiceError> {
        let (id, addrs): (String, Vec<Ipv4Addr>) = (id.to_owned(), addrs.into_iter().collect());
        self.with_channel(move |c, now| c.free(now, &id, addrs)).await
    }

    async fn request(&self, op: impl FnOnce(&mut IpamChannel, Instant, Reply) -> Option<RequestId> + Send + 'static) -> Result<Ipv4Net, ServiceError> {
        let (tx, mut rx) = oneshot::channel();
        let reply: Reply = Box::new(move |r| drop(tx.send(r)));
        let req = self.with_channel(move |c, now| op(c, now, reply)).await?;
        loop {
            tokio::select! {
                r = &mut rx => return match r {
                    Ok(r) => Ok(r?),
                    Err(_) => Err(ServiceError::Stopped),
                },
                () = tokio::time::sleep(SAVE_PATIENCE) => {
                    // Still waiting while saving fails: give up. An address
                    // granted meanwhile stays held for the id (saved once
                    // saving works), and asking again gives it.
                    let Some(e) = self.save_error().await else { continue };
                    if let Some(req) = req {
                        let _ = self.with_channel(move |c, _| c.cancel(req)).await;
                    }
                    return Err(ServiceError::Unsaved(e));
                }
            }
        }
    }
}
