//! weaveDNS over the tokio mesh driver, for embedders and the reference
//! router alike.
//!
//! Register a [`DnsChannel`] under [`CHANNEL`] — as a persistent channel
//! with a [`weave_gossip::node::FilePersist`] when names must survive a
//! restart (build it with [`DnsService::restore`] first) — and wrap the
//! running mesh in a [`DnsService`]: add and remove run inside the node,
//! lookups read the published [`Names`] without waiting for it.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use weave_gossip::driver::MeshHandle;

use crate::channel::{DnsChannel, Names, CHANNEL};
use crate::dns::{Dns, DnsError};

/// How long a change waits to be saved before it is reported unsaved.
pub const SAVE_PATIENCE: Duration = Duration::from_secs(10);

/// Why a change failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// weaveDNS refused it (a bad name or container id).
    #[error(transparent)]
    Dns(#[from] DnsError),
    /// The change could not be saved in time: it is not gossiped (and
    /// would not survive a restart) until it is.
    #[error("weaveDNS cannot save its names ({0})")]
    Unsaved(String),
    /// The mesh has stopped, or has no DNS channel.
    #[error("weaveDNS has stopped")]
    Stopped,
}

/// Names over a running mesh. Cheap to clone.
#[derive(Clone, Debug)]
pub struct DnsService {
    mesh: MeshHandle,
    names: Names,
}

impl DnsService {
    /// The channel for `dns`, with the names `file` holds from a previous
    /// run brought back first (before the mesh starts, so no peer's full
    /// state can delete them as stale). A missing file is a first start;
    /// an unreadable one is logged and skipped.
    pub fn restore(mut dns: Dns, file: &Path, now: Instant) -> DnsChannel {
        match std::fs::read(file) {
            Ok(bytes) => match dns.restore_own(&bytes) {
                Ok(n) => tracing::info!(names = n, "DNS names restored"),
                Err(e) => tracing::warn!(error = %e, file = %file.display(), "saved DNS names unreadable; starting without them"),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(error = %e, file = %file.display(), "cannot read the saved DNS names"),
        }
        DnsChannel::new(dns, now)
    }

    /// A handle on `mesh`'s DNS channel, whose readers' view is `names`
    /// ([`DnsChannel::names`], taken before the channel was registered).
    pub fn new(mesh: MeshHandle, names: Names) -> Self {
        Self { mesh, names }
    }

    /// The readers' view, for lookups and the DNS server
    /// ([`crate::server::serve`]).
    pub fn names(&self) -> &Names {
        &self.names
    }

    async fn with<R: Send + 'static>(&self, f: impl FnOnce(&mut DnsChannel, Instant) -> R + Send + 'static) -> Result<R, ServiceError> {
        self.mesh.with_channel::<DnsChannel, R>(CHANNEL, f).await.ok().flatten().ok_or(ServiceError::Stopped)
    }

    /// `name` → each of `addrs`, for `container`; returns once saved.
    pub async fn add(&self, container: &str, name: &str, addrs: &[Ipv4Addr]) -> Result<(), ServiceError> {
        let (container, name, addrs) = (container.to_owned(), name.to_owned(), addrs.to_vec());
        self.change(move |c, now| c.add(now, &container, &name, &addrs)).await
    }

    /// Remove `container`'s names (only `name`, only `addrs`, if given);
    /// returns how many, once saved.
    pub async fn remove(&self, container: &str, name: Option<&str>, addrs: &[Ipv4Addr]) -> Result<usize, ServiceError> {
        let (container, name, addrs) = (container.to_owned(), name.map(str::to_owned), addrs.to_vec());
        self.change(move |c, now| c.remove(now, &container, name.as_deref(), &addrs)).await
    }

    /// Make a local change inside the node and wait until it is saved.
    async fn change<R: Send + 'static>(&self, op: impl FnOnce(&mut DnsChannel, Instant) -> Result<R, DnsError> + Send + 'static) -> Result<R, ServiceError> {
        let (tx, rx) = oneshot::channel();
        let r = self
            .with(move |c, now| {
                let r = op(c, now);
                c.when_saved(Box::new(move || {
                    let _ = tx.send(());
                }));
                r
            })
            .await??;
        self.saved(rx).await?;
        Ok(r)
    }

    async fn saved(&self, rx: oneshot::Receiver<()>) -> Result<(), ServiceError> {
        match tokio::time::timeout(SAVE_PATIENCE, rx).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(ServiceError::Stopped),
            Err(_) => Err(ServiceError::Unsaved(self.save_error().await.unwrap_or_else(|| "too slow".into()))),
        }
    }

    /// Live addresses for `name`.
    pub fn lookup(&self, name: &str) -> Vec<Ipv4Addr> {
        self.names.lookup(name)
    }

    /// Why the names cannot be saved, while they cannot.
    pub async fn save_error(&self) -> Option<String> {
        self.mesh.save_error(CHANNEL).await.ok().flatten()
    }
}
