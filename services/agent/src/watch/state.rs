//! What a watching agent remembers across restarts, in its state
//! directory: the last version it published and deployed, for which
//! registry, tenant and app. With it a restart does not pack again what is
//! already done; without it (a new machine, a wiped directory) the next
//! round asks the registry, which knows.
//!
//! The file is replaced atomically (written beside, synced, renamed), and
//! the directory is locked so that two agents cannot share it.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The last round that completed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Done {
    pub(crate) registry: String,
    pub(crate) tenant: String,
    pub(crate) app: String,
    pub(crate) version: String,
    pub(crate) manifest_id: String,
    /// When the registry was last seen deploying it (Unix seconds).
    #[serde(default)]
    pub(crate) checked_at_unix: u64,
}

/// The state directory, locked while the agent runs.
pub(crate) struct StateDir {
    file: PathBuf,
    /// Held for its lock.
    _lock: File,
}

impl StateDir {
    /// Opens (creating) `dir` and locks it for `tenant`/`app`; the error
    /// names the directory and why.
    pub(crate) fn open(dir: &Path, tenant: &str, app: &str) -> Result<Self, String> {
        let fail = |what: &str, e: std::io::Error| format!("state_dir {}: {what}: {e}", dir.display());
        std::fs::create_dir_all(dir).map_err(|e| fail("cannot create", e))?;
        // Names cannot contain '.': no two tenant/app pairs share a file.
        let name = format!("watch.{tenant}.{app}");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("{name}.lock")))
            .map_err(|e| fail("cannot write", e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(format!(
                    "state_dir {}: another agent is watching {tenant}/{app} with this directory",
                    dir.display()
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(fail("cannot lock", e)),
        }
        Ok(Self { file: dir.join(format!("{name}.json")), _lock: lock })
    }

    /// The last completed round, if one is recorded and readable (a
    /// damaged file is ignored: the registry is asked instead).
    pub(crate) fn load(&self) -> Option<Done> {
        let bytes = std::fs::read(&self.file).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(done) => Some(done),
            Err(e) => {
                tracing::warn!(file = %self.file.display(), error = %e, "state file unreadable; asking the registry instead");
                None
            }
        }
    }

    /// Records a completed round.
    pub(crate) fn save(&self, done: &Done) -> Result<(), String> {
        let fail = |e: std::io::Error| format!("cannot record the state in {}: {e}", self.file.display());
        let dir = self.file.parent().expect("a file in the state directory");
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(fail)?;
        tmp.write_all(&serde_json::to_vec_pretty(done).expect("serializable")).map_err(fail)?;
        tmp.as_file().sync_all().map_err(fail)?;
        tmp.persist(&self.file).map_err(|e| fail(e.error))?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(fail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_survives_a_restart_and_the_directory_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("s"), "acme", "crm").unwrap();
        assert_eq!(state.load(), None);
        let done = Done {
            registry: "http://r:1".into(),
            tenant: "acme".into(),
            app: "crm".into(),
            version: "1.0.0".into(),
            manifest_id: "ab".into(),
            checked_at_unix: 1,
        };
        state.save(&done).unwrap();
        let e = StateDir::open(&dir.path().join("s"), "acme", "crm").err().unwrap();
        assert!(e.contains("another agent is watching acme/crm"), "{e}");
        // Another app may share the directory, even one whose names join
        // to the same words.
        StateDir::open(&dir.path().join("s"), "acme", "erp").unwrap();
        let _a = StateDir::open(&dir.path().join("s"), "acme-eu", "crm").unwrap();
        let _b = StateDir::open(&dir.path().join("s"), "acme", "eu-crm").unwrap();
        drop(state);
        // Another test of this process may be forking a command right now:
        // its child holds a copy of the lock until it execs.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let state = loop {
            match StateDir::open(&dir.path().join("s"), "acme", "crm") {
                Ok(state) => break state,
                Err(e) if std::time::Instant::now() > deadline => panic!("{e}"),
                Err(_) => std::thread::yield_now(),
            }
        };
        assert_eq!(state.load(), Some(done));
        std::fs::write(dir.path().join("s/watch.acme.crm.json"), "{").unwrap();
        assert_eq!(state.load(), None);
    }
}
