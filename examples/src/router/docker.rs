//! The Docker adapter: containers attached by the router (or the plugin)
//! followed through their lifecycle: restarted ones attached again,
//! dead ones released after a grace period, destroyed ones at once.

#[allow(unused_imports)]
use super::*;

/// What the Docker lifecycle worker of one container handles, in order.
#[derive(Debug, Clone, Copy)]
pub(super) enum DockerEvent {
    Life(crate::docker::Lifecycle),
    /// The grace period that began with the death at this epoch is over.
    GraceOver(u64),
}

/// The file in the state directory keeping how Docker containers were
/// attached (so a router restart does not forget `-h` or `--without-dns`).
pub const DOCKER_FILE: &str = "docker-attached.json";

/// How a Docker container was attached, to attach it again when it is
/// restarted.
#[derive(Debug, Clone)]
pub(super) struct Tracked {
    pub(super) specs: Vec<AddrSpec>,
    pub(super) dns: bool,
    pub(super) hostname: Option<String>,
    pub(super) multicast: bool,
    /// Bumped by every start and death: a release scheduled at a death
    /// goes ahead only if nothing happened since.
    pub(super) epoch: u64,
}

impl Router {
    /// Queue a lifecycle event for a container's worker: one worker per
    /// container handles its events in order, so a slow attach of one
    /// container never holds up another's.
    pub(super) fn docker_event(self: &Arc<Self>, id: String, ev: DockerEvent) {
        let mut queues = lock(&self.docker_queues);
        if let Some(tx) = queues.get(&id) {
            if tx.send(ev).is_ok() {
                return;
            }
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let _ = tx.send(ev);
        queues.insert(id.clone(), tx);
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(r) = me.upgrade() else { return };
                let Some(ev) = r.next_docker_event(&id, &mut rx) else { return };
                let busy = r.id_lock(&id);
                let _g = busy.lock().await;
                r.on_docker(ev, &id).await;
            }
        });
    }

    /// The next event for a container's worker; None retires the worker
    /// (atomically with senders, who hold the same lock).
    fn next_docker_event(&self, id: &str, rx: &mut tokio::sync::mpsc::UnboundedReceiver<DockerEvent>) -> Option<DockerEvent> {
        if let Ok(ev) = rx.try_recv() {
            return Some(ev);
        }
        let mut queues = lock(&self.docker_queues);
        match rx.try_recv() {
            Ok(ev) => Some(ev),
            Err(_) => {
                queues.remove(id);
                None
            }
        }
    }

    /// Act on one event of a Docker container (its lock held).
    async fn on_docker(self: &Arc<Self>, ev: DockerEvent, id: &str) {
        use crate::docker::Lifecycle;
        let short = crate::docker::display_id(id).to_owned();
        match ev {
            DockerEvent::Life(Lifecycle::Start) => {
                let tracked = lock(&self.tracked).get_mut(id).map(|t| t.epoch += 1).is_some();
                if tracked {
                    match tokio::time::timeout(Duration::from_secs(30), self.reattach(id)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::warn!(container = %short, error = %e, "cannot attach the restarted container again"),
                        Err(_) => tracing::warn!(container = %short, "attaching the restarted container again timed out (IPAM unreachable?)"),
                    }
                }
                self.plugin_names(id).await;
            }
            DockerEvent::Life(Lifecycle::Die) => {
                let epoch = lock(&self.tracked).get_mut(id).map(|t| {
                    t.epoch += 1;
                    t.epoch
                });
                if let Some(epoch) = epoch {
                    // Its interface went with its namespace; its addresses
                    // wait a little for a restart.
                    self.containers.lock().await.remove(id);
                    let (me, grace, id) = (Arc::downgrade(self), self.cfg.docker_grace, id.to_owned());
                    tokio::spawn(async move {
                        tokio::time::sleep(grace).await;
                        if let Some(r) = me.upgrade() {
                            r.docker_event(id, DockerEvent::GraceOver(epoch));
                        }
                    });
                } else if self.dns.is_some() {
                    let _ = self.dns_remove(id, None, &[]).await;
                }
            }
            DockerEvent::GraceOver(epoch) => {
                // Released only if nothing happened since that death.
                if lock(&self.tracked).get(id).is_some_and(|t| t.epoch == epoch) {
                    self.release(id).await;
                }
            }
            DockerEvent::Life(Lifecycle::Destroy) => {
                {
                    let mut tr = lock(&self.tracked);
                    if tr.remove(id).is_some() {
                        save_tracked(&self.cfg.state_dir, &tr);
                    }
                }
                self.release(id).await;
                lock(&self.id_locks).remove(id);
            }
        }
    }

    /// Attach a restarted Docker container as it was: the same addresses
    /// if it still holds them (or can claim them again), a new one if not.
    async fn reattach(&self, id: &str) -> Result<(), RouterError> {
        let Some(tr) = lock(&self.tracked).get(id).cloned() else { return Ok(()) };
        let t = self.resolve(id).await?;
        let cidrs = match self.attach_target(&t, &tr.specs, tr.multicast, "ethwe", false).await {
            Ok(c) => c,
            Err(RouterError::Ipam(e)) => {
                tracing::info!(container = crate::docker::display_id(id), error = %e, "its old addresses are taken: allocating a new one");
                // Whatever of the old ones it still holds goes back.
                self.free(id, self.owned_by(id).await.iter().map(Ipv4Net::addr)).await;
                self.attach_target(&t, &[AddrSpec::Default], tr.multicast, "ethwe", false).await?
            }
            Err(e) => return Err(e),
        };
        {
            let mut all = lock(&self.tracked);
            if let Some(e) = all.get_mut(id) {
                e.specs = cidrs.iter().map(|c| AddrSpec::Exact(*c)).collect();
            }
            save_tracked(&self.cfg.state_dir, &all);
        }
        if tr.dns {
            // Names for addresses it no longer has must not linger.
            if self.dns.is_some() {
                let _ = self.dns_remove(id, None, &[]).await;
            }
            self.register_dns(&t, &cidrs, tr.hostname.as_deref()).await?;
        }
        tracing::info!(container = %t.name, ?cidrs, "restarted container attached again");
        Ok(())
    }

    /// A container started on the plugin's networks gets its names.
    async fn plugin_names(&self, id: &str) {
        let nets = match &*lock(&self.plugin) {
            Some(p) => p.network_ids(),
            None => return,
        };
        let Ok(t) = self.resolve(id).await else { return };
        let Some(d) = &t.docker else { return };
        let cidrs: Vec<Ipv4Net> = d.networks.iter().filter(|(n, _)| nets.contains(*n)).map(|(_, c)| *c).collect();
        if cidrs.is_empty() {
            return;
        }
        if let Err(e) = self.register_dns(&t, &cidrs, None).await {
            tracing::warn!(container = %t.name, error = %e, "cannot register the plugin container's names");
        }
    }

    /// Bring Docker containers up to date after (re)connecting to Docker:
    /// those whose addresses IPAM holds, or that were attached before,
    /// are attached again if running (their `ethwe` may be new or gone),
    /// wait out the grace period if dead, and are released if removed.
    async fn reconcile_docker(self: &Arc<Self>) {
        let mut ids: std::collections::BTreeSet<String> = lock(&self.tracked).keys().cloned().collect();
        let owned = self.owned().await;
        for (k, cidrs) in owned.into_iter().filter(|(k, _)| crate::docker::is_container_id(k)) {
            // Held but not tracked: attached by an older router.
            lock(&self.tracked).entry(k.clone()).or_insert_with(|| Tracked {
                specs: cidrs.iter().map(|c| AddrSpec::Exact(*c)).collect(),
                dns: self.dns.is_some(),
                hostname: None,
                multicast: true,
                epoch: 0,
            });
            ids.insert(k);
        }
        for id in ids {
            use crate::docker::Lifecycle;
            let ev = match self.resolve(&id).await {
                Ok(Target { netns: Some(_), .. }) => Lifecycle::Start,
                Ok(_) => Lifecycle::Die,
                Err(RouterError::NotFound(_)) => Lifecycle::Destroy,
                Err(e) => {
                    tracing::warn!(container = crate::docker::display_id(&id), error = %e, "cannot reconcile");
                    continue;
                }
            };
            self.docker_event(id, DockerEvent::Life(ev));
        }
    }
}

/// Follow Docker's container events for as long as the router runs,
/// reconnecting if the stream breaks.
pub(super) async fn follow_docker(router: std::sync::Weak<Router>, d: crate::docker::Docker) {
    use tokio_stream::StreamExt;
    loop {
        // What happened while there was no stream (or no router), then
        // the events from before the reconcile on: the stream opens only
        // when first polled, and Docker replays what came in between (a
        // second earlier, to be safe; handling an event twice is harmless).
        let since = std::time::SystemTime::now() - Duration::from_secs(1);
        {
            let Some(r) = router.upgrade() else { return };
            r.reconcile_docker().await;
        }
        let events = d.lifecycle(since);
        tokio::pin!(events);
        while let Some(ev) = events.next().await {
            let Some(r) = router.upgrade() else { return };
            match ev {
                Ok((what, id)) => r.docker_event(id, DockerEvent::Life(what)),
                Err(e) => {
                    tracing::warn!(error = %e, "Docker event stream broke; reconnecting");
                    break;
                }
            }
        }
        if router.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Docker containers as attached, from the state directory.
pub(super) fn load_tracked(dir: &std::path::Path) -> BTreeMap<String, Tracked> {
    let Ok(text) = std::fs::read_to_string(dir.join(DOCKER_FILE)) else { return BTreeMap::new() };
    let Ok(serde_json::Value::Object(m)) = serde_json::from_str(&text) else {
        tracing::warn!(file = DOCKER_FILE, "unreadable; Docker containers will be attached again with defaults");
        return BTreeMap::new();
    };
    m.into_iter()
        .filter_map(|(id, v)| {
            let specs = v.get("specs")?.as_array()?.iter().filter_map(|s| s.as_str()?.parse().ok()).collect();
            let hostname = v.get("hostname").and_then(|h| h.as_str()).map(str::to_owned);
            Some((id, Tracked { specs, dns: v.get("dns")?.as_bool()?, hostname, multicast: v.get("multicast")?.as_bool()?, epoch: 0 }))
        })
        .collect()
}

pub(super) fn save_tracked(dir: &std::path::Path, all: &BTreeMap<String, Tracked>) {
    let m: serde_json::Map<String, serde_json::Value> = all
        .iter()
        .map(|(id, t)| {
            let specs: Vec<String> = t.specs.iter().map(ToString::to_string).collect();
            (id.clone(), serde_json::json!({ "specs": specs, "dns": t.dns, "hostname": t.hostname, "multicast": t.multicast }))
        })
        .collect();
    let path = dir.join(DOCKER_FILE);
    if let Err(e) = weave_core::fs::write_atomically(&path, serde_json::Value::Object(m).to_string().as_bytes()) {
        tracing::warn!(error = %e, file = %path.display(), "cannot save the Docker attachments");
    }
}
