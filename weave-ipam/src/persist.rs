//! IPAM state on disk: one redb file in the state directory, rewritten in a
//! single transaction after every change (atomic: a crash leaves the old or
//! the new state, never a mix).
//!
//! A file written for another peer name or range is not used (the reason
//! is returned for the log). A file that cannot be read is renamed aside
//! (`<name>.corrupt-<unix seconds>`) and reported — never overwritten.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use ipnet::Ipv4Net;
use prost::Message;
use redb::{Database, TableDefinition};
use weave_core::PeerName;

use crate::wire::SnapshotMsg;

const TABLE: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("ipam");
const KEY: &str = "snapshot";

/// Why the store could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PersistError {
    /// The file was unreadable and has been moved aside.
    #[error("IPAM state file {path} is corrupt ({reason}); moved it to {moved_to} and starting without persisted IPAM state")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where it went.
        moved_to: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The database failed.
    #[error("IPAM state file {path}: {source}")]
    Db {
        /// The file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: Box<redb::Error>,
    },
    /// Moving a corrupt file aside failed: nothing is overwritten.
    #[error("IPAM state file {path} is corrupt and could not be moved aside: {source}")]
    MoveAside {
        /// The file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
}

/// What [`Store::load`] found.
#[derive(Debug)]
pub enum Loaded {
    /// No saved state.
    Empty,
    /// State for this peer and range.
    State(Box<SnapshotMsg>),
    /// Saved state that does not apply; the string says why (log it).
    Discarded(String),
}

/// The IPAM's file.
pub struct Store {
    path: PathBuf,
    db: Database,
}

impl Store {
    /// Open (or create) `path`. An unreadable file is moved aside and
    /// reported as [`PersistError::Corrupt`]; call again to start afresh.
    pub fn open(path: &Path) -> Result<Self, PersistError> {
        let db = match Database::create(path) {
            Ok(db) => db,
            // Only a file that is not a valid database is moved aside; a lock
            // held by another process, permissions or I/O errors leave it be.
            Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(reason))) => return Err(move_aside(path, reason)),
            Err(redb::DatabaseError::Storage(redb::StorageError::Io(e)))
                if matches!(e.kind(), std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof) =>
            {
                return Err(move_aside(path, e.to_string()));
            }
            Err(e) => return Err(PersistError::Db { path: path.to_owned(), source: Box::new(e.into()) }),
        };
        let store = Self { path: path.to_owned(), db };
        // A database that opens but whose snapshot cannot be read is corrupt too.
        if let Err(reason) = store.read_raw().and_then(|b| b.map(|b| SnapshotMsg::decode(&b[..]).map(drop).map_err(|e| e.to_string())).transpose()) {
            drop(store);
            return Err(move_aside(path, reason));
        }
        Ok(store)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn db_err(&self, e: impl Into<redb::Error>) -> PersistError {
        PersistError::Db { path: self.path.clone(), source: Box::new(e.into()) }
    }

    fn read_raw(&self) -> Result<Option<Vec<u8>>, String> {
        let r = self.db.begin_read().map_err(|e| e.to_string())?;
        let t = match r.open_table(TABLE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let v = t.get(KEY).map_err(|e| e.to_string())?;
        Ok(v.map(|g| g.value().to_vec()))
    }

    /// The saved state, if it was written for `peer` and `range`.
    pub fn load(&self, peer: PeerName, range: Ipv4Net) -> Result<Loaded, PersistError> {
        let Some(bytes) = self.read_raw().map_err(|e| self.db_err(redb::StorageError::Corrupted(e)))? else {
            return Ok(Loaded::Empty);
        };
        let snap = SnapshotMsg::decode(&bytes[..]).map_err(|e| self.db_err(redb::StorageError::Corrupted(e.to_string())))?;
        if snap.peer != peer.as_u64() {
            let was = PeerName::from_u64(snap.peer).map_or_else(|| snap.peer.to_string(), |p| p.to_string());
            return Ok(Loaded::Discarded(format!("persisted IPAM state belongs to peer {was}, we are {peer}: discarding it")));
        }
        if snap.range != range.trunc().to_string() {
            return Ok(Loaded::Discarded(format!("persisted IPAM state is for range {}, now {}: discarding it", snap.range, range.trunc())));
        }
        Ok(Loaded::State(Box::new(snap)))
    }

    /// Replace the saved state, atomically.
    pub fn save(&self, snap: &SnapshotMsg) -> Result<(), PersistError> {
        self.save_encoded(&snap.encode_to_vec())
    }

    /// Replace the saved state with an encoded [`SnapshotMsg`], atomically.
    pub fn save_encoded(&self, bytes: &[u8]) -> Result<(), PersistError> {
        let w = self.db.begin_write().map_err(|e| self.db_err(e))?;
        {
            let mut t = w.open_table(TABLE).map_err(|e| self.db_err(e))?;
            t.insert(KEY, bytes).map_err(|e| self.db_err(e))?;
        }
        w.commit().map_err(|e| self.db_err(e))
    }

    /// Forget everything (`weave reset`).
    pub fn clear(&self) -> Result<(), PersistError> {
        let w = self.db.begin_write().map_err(|e| self.db_err(e))?;
        match w.delete_table(TABLE) {
            Ok(_) => {}
            Err(e) => return Err(self.db_err(e)),
        }
        w.commit().map_err(|e| self.db_err(e))
    }
}

fn move_aside(path: &Path, reason: String) -> PersistError {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    // Never replace an earlier corrupt copy: find an unused name.
    let moved_to = (0..)
        .map(|n| {
            let mut p = path.as_os_str().to_owned();
            p.push(if n == 0 { format!(".corrupt-{secs}") } else { format!(".corrupt-{secs}-{n}") });
            PathBuf::from(p)
        })
        .find(|p| !p.exists())
        .expect("some suffix is free");
    match std::fs::rename(path, &moved_to) {
        Ok(()) => PersistError::Corrupt { path: path.to_owned(), moved_to, reason },
        Err(source) => PersistError::MoveAside { path: path.to_owned(), source },
    }
}

/// The node's sink for IPAM snapshots (register [`crate::channel::IpamChannel`]
/// as a persistent channel with it). After a failed save the file is opened
/// again on the next attempt: redb refuses writes after an I/O error.
pub struct StorePersist {
    path: PathBuf,
    store: Option<Store>,
}

impl std::fmt::Debug for StorePersist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorePersist").field("path", &self.path).field("open", &self.store.is_some()).finish()
    }
}

impl StorePersist {
    /// Save through `store`.
    pub fn new(store: Store) -> Self {
        Self { path: store.path().to_owned(), store: Some(store) }
    }
}

impl weave_gossip::node::Persist for StorePersist {
    fn save(&mut self, _generation: u64, data: &[u8]) -> Result<(), String> {
        if self.store.is_none() {
            self.store = Some(Store::open(&self.path).map_err(|e| format!("cannot open {}: {e}", self.path.display()))?);
        }
        let r = self.store.as_ref().expect("opened above").save_encoded(data).map_err(|e| e.to_string());
        if r.is_err() {
            self.store = None;
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{InitMode, Ipam, IpamConfig, Outcome};
    use std::time::Instant;

    fn p(n: u64) -> PeerName {
        PeerName::from_u64(n).unwrap()
    }

    fn range() -> Ipv4Net {
        "10.32.0.0/16".parse().unwrap()
    }

    fn ipam(peer: u64) -> Ipam {
        Ipam::new(IpamConfig::new(weave_gossip::Identity::from_secret([p(peer).as_u64() as u8; 32]), p(peer), range(), InitMode::Seeds(vec![p(1), p(2)])))
            .unwrap()
    }

    #[test]
    fn a_restart_keeps_ring_and_container_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipam.db");
        let now = Instant::now();
        let mut a = ipam(1);
        let Outcome::Done(addr) = a.allocate(now, "c1", None).unwrap() else { panic!("local space") };
        a.claim(now, "c2", "192.168.5.5/24".parse().unwrap()).unwrap();
        Store::open(&path).unwrap().save(&a.snapshot()).unwrap();

        let store = Store::open(&path).unwrap();
        let Loaded::State(snap) = store.load(p(1), range()).unwrap() else { panic!("state expected") };
        let mut b = Ipam::restore(
            IpamConfig::new(weave_gossip::Identity::from_secret([p(1).as_u64() as u8; 32]), p(1), range(), InitMode::Seeds(vec![p(1), p(2)])),
            &snap,
        )
        .unwrap();
        assert_eq!(b.ring(), a.ring());
        assert_eq!(b.allocations().collect::<Vec<_>>(), a.allocations().collect::<Vec<_>>());
        // Idempotent per container: the same address again, not a new one.
        assert_eq!(b.allocate(now, "c1", None).unwrap(), Outcome::Done(addr));
    }

    #[test]
    fn state_of_another_peer_or_range_is_discarded_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipam.db");
        let mut a = ipam(1);
        a.allocate(Instant::now(), "c1", None).unwrap();
        let store = Store::open(&path).unwrap();
        store.save(&a.snapshot()).unwrap();
        let Loaded::Discarded(why) = store.load(p(2), range()).unwrap() else { panic!() };
        assert!(why.contains("belongs to peer 00:00:00:00:00:01"), "{why}");
        let Loaded::Discarded(why) = store.load(p(1), "10.40.0.0/16".parse().unwrap()).unwrap() else { panic!() };
        assert!(why.contains("range 10.32.0.0/16"), "{why}");
    }

    #[test]
    fn a_corrupt_file_is_moved_aside_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipam.db");
        std::fs::write(&path, b"this is not a database, but somebody's precious data").unwrap();
        let err = Store::open(&path).err().expect("corrupt");
        let PersistError::Corrupt { moved_to, .. } = &err else { panic!("{err}") };
        assert!(err.to_string().contains("moved it to"), "{err}");
        assert_eq!(std::fs::read(moved_to).unwrap(), b"this is not a database, but somebody's precious data");
        let fresh = Store::open(&path).unwrap();
        assert!(matches!(fresh.load(p(1), range()).unwrap(), Loaded::Empty));
    }

    #[test]
    fn a_database_held_open_elsewhere_is_not_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipam.db");
        let first = Store::open(&path).unwrap();
        first.save(&ipam(1).snapshot()).unwrap();
        let err = Store::open(&path).err().expect("locked by the first");
        assert!(matches!(err, PersistError::Db { .. }), "{err}");
        assert!(path.exists(), "still there");
        drop(first);
        assert!(matches!(Store::open(&path).unwrap().load(p(1), range()).unwrap(), Loaded::State(_)));
    }

    #[test]
    fn clear_forgets_everything() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("ipam.db")).unwrap();
        store.save(&ipam(1).snapshot()).unwrap();
        store.clear().unwrap();
        assert!(matches!(store.load(p(1), range()).unwrap(), Loaded::Empty));
    }
}
