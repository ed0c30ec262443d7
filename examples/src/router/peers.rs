//! Direct targets (kept for `--resume`) and the peers' nicknames.

#[allow(unused_imports)]
use super::*;

impl Router {
    /// The file direct targets are kept in, for `--resume`.
    pub fn targets_file(state_dir: &std::path::Path) -> PathBuf {
        state_dir.join("targets")
    }

    pub(super) fn save_targets(&self, targets: &std::collections::BTreeSet<String>) {
        let text: String = targets.iter().map(|t| format!("{t}\n")).collect();
        if let Err(e) = std::fs::write(Self::targets_file(&self.cfg.state_dir), text) {
            tracing::warn!(error = %e, "cannot save targets for --resume");
        }
    }

    /// The direct targets as the user gave them (`weave status targets`
    /// shows them so, as Weave does).
    pub fn targets(&self) -> Vec<String> {
        lock(&self.targets).iter().cloned().collect()
    }

    /// `weave connect`: add direct targets (replace them with `replace`),
    /// remembered for `--resume`.
    pub async fn connect(&self, peers: Vec<String>, replace: bool) -> Result<(), RouterError> {
        match self.mesh.connect(peers.clone(), replace).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(RouterError::Invalid(e.to_string())),
            Err(_) => return Err(RouterError::Stopped),
        }
        let mut t = lock(&self.targets);
        if replace {
            t.clear();
        }
        t.extend(peers);
        self.save_targets(&t);
        Ok(())
    }

    /// `weave forget`: drop direct targets.
    pub async fn forget(&self, peers: Vec<String>) -> Result<(), RouterError> {
        match self.mesh.forget(peers.clone()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(RouterError::Invalid(e.to_string())),
            Err(_) => return Err(RouterError::Stopped),
        }
        let mut t = lock(&self.targets);
        for p in &peers {
            t.remove(p);
        }
        self.save_targets(&t);
        Ok(())
    }

    /// A peer's nickname, including peers no longer in the topology.
    pub fn nickname(&self, peer: PeerName) -> Option<String> {
        lock(&self.nicknames).get(&peer).cloned()
    }

    /// A peer by name or nickname, including peers no longer in the
    /// topology.
    pub fn peer_named(&self, want: &str) -> Option<PeerName> {
        let n = lock(&self.nicknames);
        want.parse::<PeerName>().ok().or_else(|| n.iter().find(|(_, nick)| nick.as_str() == want).map(|(p, _)| *p))
    }

    /// Connections that have ended since the router started.
    pub fn terminations(&self) -> u64 {
        self.terminations.load(std::sync::atomic::Ordering::Relaxed)
    }
}
