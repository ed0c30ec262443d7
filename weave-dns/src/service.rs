//! weaveDNS over the tokio mesh driver, for embedders and the reference
//! router alike.
//!
//! [`DnsService::new`] takes a [`Dns`] and, optionally, the file its own
//! names are kept in: they are read back first (before the mesh starts, so
//! no peer's full state can delete them as stale), and saved after every
//! local change, before the change can be gossiped. It returns the service
//! (add, remove, lookup), the [`DnsChannel`] to register on the mesh under
//! [`CHANNEL`] before it starts, and the [`DnsPump`] to run once it has.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use weave_gossip::driver::MeshHandle;

use crate::channel::{DnsChannel, CHANNEL};
use crate::dns::{Dns, DnsError};

/// Names, addresses and the gossip of them. Clones share one store.
#[derive(Clone)]
pub struct DnsService {
    dns: Arc<Mutex<Dns>>,
    poke: Arc<Notify>,
    file: Option<PathBuf>,
}

impl std::fmt::Debug for DnsService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsService").field("file", &self.file).finish_non_exhaustive()
    }
}

/// Gossips what [`DnsService`] changed and runs weaveDNS's timers: spawn
/// [`DnsPump::run`] once the mesh has started.
#[derive(Debug)]
pub struct DnsPump {
    dns: Arc<Mutex<Dns>>,
    poke: Arc<Notify>,
}

fn lock(dns: &Mutex<Dns>) -> MutexGuard<'_, Dns> {
    dns.lock().unwrap_or_else(PoisonError::into_inner)
}

impl DnsService {
    /// The service, the channel and the pump. With `file`, the names saved
    /// there by a previous run come back now (a missing or unreadable file
    /// is logged and skipped).
    pub fn new(mut dns: Dns, file: Option<PathBuf>) -> (Self, DnsChannel, DnsPump) {
        if let Some(f) = &file {
            match std::fs::read(f) {
                Ok(bytes) => match dns.restore_own(&bytes) {
                    Ok(n) => tracing::info!(names = n, "DNS names restored"),
                    Err(e) => tracing::warn!(error = %e, file = %f.display(), "saved DNS names unreadable; starting without them"),
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(error = %e, file = %f.display(), "cannot read the saved DNS names"),
            }
        }
        let dns = Arc::new(Mutex::new(dns));
        let poke = Arc::new(Notify::new());
        let pump = DnsPump { dns: dns.clone(), poke: poke.clone() };
        (Self { dns: dns.clone(), poke, file }, DnsChannel(dns), pump)
    }

    /// The store itself, for lookups and the DNS server
    /// ([`crate::server::serve`]).
    pub fn dns(&self) -> &Arc<Mutex<Dns>> {
        &self.dns
    }

    /// `name` → each of `addrs`, for `container`.
    pub fn add(&self, container: &str, name: &str, addrs: &[Ipv4Addr]) -> Result<(), DnsError> {
        let mut d = lock(&self.dns);
        let added = addrs.iter().try_for_each(|a| d.add(Instant::now(), name, *a, container));
        self.save(&d);
        drop(d);
        self.poke.notify_one();
        added
    }

    /// Remove `container`'s names (only `name`, only `addrs`, if given);
    /// returns how many.
    pub fn remove(&self, container: &str, name: Option<&str>, addrs: &[Ipv4Addr]) -> Result<usize, DnsError> {
        let mut d = lock(&self.dns);
        let mut n = 0;
        if addrs.is_empty() {
            n += d.remove(Instant::now(), container, name, None)?;
        }
        for a in addrs {
            n += d.remove(Instant::now(), container, name, Some(*a))?;
        }
        if n > 0 {
            self.save(&d);
        }
        drop(d);
        self.poke.notify_one();
        Ok(n)
    }

    /// Live addresses for `name`.
    pub fn lookup(&self, name: &str) -> Vec<Ipv4Addr> {
        lock(&self.dns).lookup(name)
    }

    /// Save our own names (under the store's lock, so nothing gossiped
    /// is newer than the file).
    fn save(&self, d: &Dns) {
        let Some(path) = &self.file else { return };
        if let Err(e) = weave_core::fs::write_atomically(path, &d.save_own(Instant::now())) {
            tracing::error!(error = %e, file = %path.display(), "cannot save the DNS names; they will not survive a restart");
        }
    }
}

impl DnsPump {
    /// Run until the mesh stops.
    pub async fn run(self, mesh: MeshHandle) {
        loop {
            let deltas = {
                let mut d = lock(&self.dns);
                let now = Instant::now();
                if d.poll_timeout() <= now {
                    d.handle_timeout(now);
                }
                std::iter::from_fn(|| d.poll_gossip()).collect::<Vec<_>>()
            };
            for delta in deltas {
                if mesh.gossip(CHANNEL, delta).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                () = self.poke.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }
}
