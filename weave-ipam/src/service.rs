//! IPAM over the tokio mesh driver, for embedders and the reference router
//! alike: one copy of the glue.
//!
//! [`IpamService::new`] takes an [`Ipam`] (new or restored) and, optionally,
//! its [`Store`]; it returns the service (a cheap handle: allocate, claim,
//! free), the [`IpamChannel`] to register on the mesh before it starts, and
//! the [`IpamPump`] to run once it has. The pump runs IPAM's timers and,
//! each time its state changed, saves it, then (and only then) sends what
//! IPAM queued and completes what it finished: nothing a peer hears and no
//! address handed out can be lost by a crash. While saving fails nothing
//! leaves, [`IpamService::save_error`] says why, saving is retried with a
//! growing pause (the file opened again: redb refuses writes after an I/O
//! error), and IPAM speaks again once it works. An allocation answered at
//! once waits until it is saved; one that cannot be saved within
//! [`SAVE_PATIENCE`] fails with [`ServiceError::Unsaved`].

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use tokio::sync::{oneshot, watch, Notify};
use weave_gossip::driver::{MeshHandle, MeshView};

use crate::channel::{Durable, IpamChannel, CHANNEL};
use crate::ipam::{Completion, Ipam, IpamError, Outcome, Output, RequestId};
use crate::persist::{PersistError, Store};

/// How long an allocation waits for its state to be saved (or, pending,
/// goes on waiting while saving fails) before it is given up.
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
    /// The pump stopped (the mesh is gone).
    #[error("IPAM has stopped")]
    Stopped,
}

type Waiter = oneshot::Sender<Result<Ipv4Net, IpamError>>;

struct Inner {
    ipam: Arc<Mutex<Ipam>>,
    poke: Arc<Notify>,
    waiters: Mutex<BTreeMap<RequestId, Waiter>>,
    saved: watch::Receiver<u64>,
    save_error: Mutex<Option<String>>,
    handed_off: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not wedge address management.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Allocate, claim and free over a running mesh. Clones share one IPAM.
#[derive(Clone)]
pub struct IpamService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for IpamService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpamService").finish_non_exhaustive()
    }
}

/// Runs IPAM for an [`IpamService`]: spawn [`IpamPump::run`] once the mesh
/// has started.
pub struct IpamPump {
    inner: Arc<Inner>,
    store: Option<Store>,
    path: Option<PathBuf>,
    durable: Arc<Mutex<Durable>>,
    generation: watch::Sender<u64>,
}

impl std::fmt::Debug for IpamPump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpamPump").field("path", &self.path).finish_non_exhaustive()
    }
}

impl IpamService {
    /// The service, the channel to register on the mesh under
    /// [`CHANNEL`], and the pump. With a `store`, the state as it is now is
    /// saved first (it is what peers may hear of until the next save).
    pub fn new(ipam: Ipam, store: Option<Store>) -> Result<(Self, IpamChannel, IpamPump), PersistError> {
        let (generation_now, snap, state) = (ipam.generation(), ipam.snapshot(), ipam.full_state());
        if let Some(s) = &store {
            s.save(&snap)?;
        }
        let (generation, saved) = watch::channel(generation_now);
        let durable = Arc::new(Mutex::new(Durable { generation: generation_now, state: Some(state) }));
        let inner = Arc::new(Inner {
            ipam: Arc::new(Mutex::new(ipam)),
            poke: Arc::new(Notify::new()),
            waiters: Mutex::new(BTreeMap::new()),
            saved,
            save_error: Mutex::new(None),
            handed_off: AtomicBool::new(false),
        });
        let channel = match &store {
            Some(_) => {
                let poke = inner.poke.clone();
                IpamChannel::persistent(inner.ipam.clone(), durable.clone(), Arc::new(move || poke.notify_one()))
            }
            None => IpamChannel::new(inner.ipam.clone()),
        };
        let path = store.as_ref().map(|s| s.path().to_owned());
        let pump = IpamPump { inner: inner.clone(), store, path, durable, generation };
        Ok((Self { inner }, channel, pump))
    }

    /// The IPAM itself, for status and direct calls (call [`Self::poke`]
    /// after changing it).
    pub fn ipam(&self) -> &Arc<Mutex<Ipam>> {
        &self.inner.ipam
    }

    /// Tell the pump IPAM has something to save or send.
    pub fn poke(&self) {
        self.inner.poke.notify_one();
    }

    /// Why IPAM cannot save its state, while it cannot.
    pub fn save_error(&self) -> Option<String> {
        lock(&self.inner.save_error).clone()
    }

    /// Whether IPAM has handed its space to a peer after [`Ipam::leave`].
    pub fn handed_off(&self) -> bool {
        self.inner.handed_off.load(Ordering::Relaxed)
    }

    /// An address in `subnet` (the default subnet if `None`) for `id`.
    pub async fn allocate(&self, id: &str, subnet: Option<Ipv4Net>) -> Result<Ipv4Net, ServiceError> {
        self.request(|i, now| i.allocate(now, id, subnet)).await
    }

    /// Exactly `addr` for `id`.
    pub async fn claim(&self, id: &str, addr: Ipv4Net) -> Result<Ipv4Net, ServiceError> {
        self.request(|i, now| i.claim(now, id, addr)).await
    }

    /// Free `addrs` held for `id`.
    pub fn free(&self, id: &str, addrs: impl IntoIterator<Item = Ipv4Addr>) {
        {
            let mut i = lock(&self.inner.ipam);
            for a in addrs {
                i.free(Instant::now(), id, a);
            }
        }
        self.poke();
    }

    async fn request(&self, op: impl FnOnce(&mut Ipam, Instant) -> Result<Outcome, IpamError>) -> Result<Ipv4Net, ServiceError> {
        let (outcome, need) = {
            let mut i = lock(&self.inner.ipam);
            let o = op(&mut i, Instant::now())?;
            // Waited for before IPAM is let go: its completion may already
            // be queued, and the pump must find someone to give it to.
            let waiting = match o {
                Outcome::Pending(req) => {
                    let (tx, rx) = oneshot::channel();
                    lock(&self.inner.waiters).insert(req, tx);
                    Some((req, rx))
                }
                Outcome::Done(_) => None,
            };
            (o, (i.generation(), waiting))
        };
        self.poke();
        match (outcome, need) {
            (Outcome::Done(n), (generation, _)) => {
                self.durable(generation).await?;
                Ok(n)
            }
            (Outcome::Pending(_), (_, Some((req, rx)))) => self.wait(req, rx).await,
            (Outcome::Pending(_), (_, None)) => Err(ServiceError::Stopped),
        }
    }

    /// Wait until the state of generation `need` is saved.
    async fn durable(&self, need: u64) -> Result<(), ServiceError> {
        let mut saved = self.inner.saved.clone();
        match tokio::time::timeout(SAVE_PATIENCE, async { saved.wait_for(|g| *g >= need).await.map(drop) }).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(ServiceError::Stopped),
            Err(_) => Err(ServiceError::Unsaved(self.save_error().unwrap_or_else(|| "too slow".into()))),
        }
    }

    /// Wait for a pending request (the pump completes it once saved).
    async fn wait(&self, req: RequestId, mut rx: oneshot::Receiver<Result<Ipv4Net, IpamError>>) -> Result<Ipv4Net, ServiceError> {
        loop {
            tokio::select! {
                r = &mut rx => return match r {
                    Ok(r) => Ok(r?),
                    Err(_) => Err(ServiceError::Stopped),
                },
                () = tokio::time::sleep(SAVE_PATIENCE) => {
                    // Still waiting while saving fails: give up. If it
                    // completed meanwhile, the address stays held for `id`
                    // (saved once saving works), and asking again gives it.
                    let Some(e) = self.save_error() else { continue };
                    lock(&self.inner.ipam).cancel(req);
                    lock(&self.inner.waiters).remove(&req);
                    return Err(ServiceError::Unsaved(e));
                }
            }
        }
    }
}

impl IpamPump {
    /// Run until the mesh stops.
    pub async fn run(mut self, mesh: MeshHandle) {
        let mut view = mesh.view();
        self.set_reachable(&view.borrow_and_update().clone());
        let mut saved = *self.generation.borrow();
        let (mut outputs, mut completions) = (Vec::new(), Vec::new());
        let mut pause = Duration::from_millis(100);
        loop {
            let now = Instant::now();
            let snapshot = {
                let mut i = lock(&self.inner.ipam);
                if i.poll_timeout().is_some_and(|t| t <= now) {
                    i.handle_timeout(now);
                }
                while let Some(o) = i.poll_output() {
                    outputs.push(o);
                }
                while let Some(c) = i.poll_completion() {
                    completions.push(c);
                }
                (i.generation() != saved).then(|| (i.generation(), i.snapshot(), i.full_state()))
            };
            if let Some((generation, snap, state)) = snapshot {
                match self.save(&snap) {
                    Ok(()) => {
                        saved = generation;
                        *lock(&self.durable) = Durable { generation, state: Some(state) };
                        self.generation.send_replace(generation);
                        if lock(&self.inner.save_error).take().is_some() {
                            tracing::info!("IPAM state saved again; IPAM speaks again");
                        }
                        pause = Duration::from_millis(100);
                    }
                    Err(e) => {
                        let before = lock(&self.inner.save_error).replace(e.clone());
                        if before.as_deref() != Some(e.as_str()) {
                            tracing::error!(error = %e, "cannot save IPAM state: IPAM holds its messages and answers until it can");
                        }
                        if view.has_changed().is_err() {
                            return self.stopped();
                        }
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
            }
            for o in outputs.drain(..) {
                // Unroutable now: IPAM retries pending requests on its own.
                let _ = match o {
                    Output::Gossip(b) => mesh.gossip(CHANNEL, b).await,
                    Output::Unicast(p, b) => mesh.unicast(CHANNEL, p, b).await,
                };
            }
            for c in completions.drain(..) {
                self.complete(c);
            }
            tokio::select! {
                () = self.inner.poke.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                changed = view.changed() => match changed {
                    Ok(()) => self.set_reachable(&view.borrow_and_update().clone()),
                    Err(_) => return self.stopped(),
                },
            }
        }
    }

    /// The mesh is gone: whoever waits is told (their senders dropped).
    fn stopped(&self) {
        lock(&self.inner.waiters).clear();
    }

    /// Save, opening the file again after a failure.
    fn save(&mut self, snap: &crate::wire::SnapshotMsg) -> Result<(), String> {
        let Some(path) = &self.path else { return Ok(()) };
        if self.store.is_none() {
            self.store = Store::open(path).inspect_err(|e| tracing::warn!(error = %e, "cannot open the IPAM state file")).ok();
        }
        let r = match &self.store {
            Some(s) => s.save(snap).map_err(|e| e.to_string()),
            None => Err(format!("cannot open {}", path.display())),
        };
        if r.is_err() {
            self.store = None;
        }
        r
    }

    fn complete(&self, c: Completion) {
        let (id, r) = match c {
            Completion::Done(id, n) => (id, Ok(n)),
            Completion::Failed(id, e) => (id, Err(e)),
            Completion::HandedOff(_) => {
                self.inner.handed_off.store(true, Ordering::Relaxed);
                return;
            }
        };
        match lock(&self.inner.waiters).remove(&id) {
            Some(w) => drop(w.send(r)),
            // Nobody waits: a claim made at start (a reclaim).
            None => match r {
                Ok(_) | Err(IpamError::Cancelled) => {}
                Err(e) => tracing::error!(error = %e, "an address in use on this host could not be claimed back"),
            },
        }
    }

    /// Tell IPAM which peers are reachable (those with a route).
    fn set_reachable(&self, view: &MeshView) {
        let mut i = lock(&self.inner.ipam);
        let me = i.name();
        let peers = view.routes.next_hops().map(|(dst, _)| dst).filter(|&p| p != me).collect();
        i.set_reachable(peers);
    }
}
