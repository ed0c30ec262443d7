//! `weave reset`, stop and shutdown.

#[allow(unused_imports)]
use super::*;

impl Router {
    /// `weave reset`: hand our address space to a live peer (waiting up to
    /// 10 s for it to take it, unless `force`), remove what the router made
    /// in this namespace and its persisted state, then stop.
    pub async fn reset(&self, force: bool) -> Result<(Vec<String>, Option<PeerName>), RouterError> {
        let mut heir = None;
        let mut removed_files = Vec::new();
        if let Some(svc) = &self.ipam {
            heir = svc.with(|i, now| i.leave(now)).await.ok().flatten();
            if heir.is_some() && !force {
                let end = Instant::now() + Duration::from_secs(10);
                while Instant::now() < end && !svc.handed_off().await {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        if let Some(settings) = &self.cfg.dns {
            if let IpAddr::V4(ip) = settings.listen_for(self.cfg.name).ip() {
                removed_files.extend(remove_resolv_confs(&self.cfg.state_dir, ip));
            }
        }
        let plugin = lock(&self.plugin).take();
        if let (Some(p), Some(d)) = (&plugin, &self.docker) {
            if let Err(e) = p.remove_network(d).await {
                tracing::warn!(error = %e, "Docker network left behind");
            }
        }
        if let Some(p) = plugin {
            removed_files.push(p.socket().display().to_string());
        }
        // Nothing may put the bridge back once it is gone, and the links
        // reset deletes are not containers dying.
        self.dp.retire();
        if let Some(w) = lock(&self.links_watch).take() {
            w.abort();
        }
        let mut removed = weave_dataplane::expose::reset(&self.nl, &self.cfg.bridge).await?;
        removed.append(&mut removed_files);
        for f in STATE_FILES.iter().map(|f| self.cfg.state_dir.join(f)) {
            if std::fs::remove_file(&f).is_ok() {
                removed.push(f.display().to_string());
            }
        }
        self.stop();
        Ok((removed, heir))
    }

    /// Ask the router to stop; [`Self::stopped`] returns once asked.
    pub fn stop(&self) {
        self.stopping.notify_waiters();
        self.stopping.notify_one();
    }

    /// Wait for [`Self::stop`].
    pub async fn stopped(&self) {
        self.stopping.notified().await;
    }

    /// Close the mesh (the data plane stops with the process) and stop
    /// serving the Docker plugin (its socket goes; its network stays for
    /// the next launch) and the Docker API proxy.
    pub async fn shutdown(&self) {
        drop(lock(&self.plugin).take());
        if let Some(p) = &self.cfg.proxy {
            let _ = std::fs::remove_file(&p.socket);
        }
        self.mesh.shutdown().await;
    }
}
