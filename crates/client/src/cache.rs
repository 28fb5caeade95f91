//! The cache directory an app loads its release from (S0-5):
//!
//! ```text
//! DIR/current                       the pointer: {"manifest_id", "version", "previous"}
//! DIR/releases/<manifest id>/       a complete, verified release:
//!     <artifact>/<path>             its files (web/index.html, mobile/crm.apk, ...)
//!     .ferry-release.json           what it holds: version, owner, files with size and BLAKE3
//! DIR/staging/<manifest id>/tree/   files downloaded and verified so far
//! DIR/staging/<manifest id>/parts/  partial downloads, resumed with HTTP Range
//! DIR/.ferry/device-id              this device's id, made on first use
//! DIR/.ferry/lock                   held by whoever changes the cache (one sync at a time)
//! DIR/.ferry/reports/<id>.json      reports the gateway has not accepted yet
//! ```
//!
//! Invariants, whatever point a crash (or a power cut) stops the client at:
//! a directory under `releases/` appears only by renaming a staging tree
//! whose every file was verified and synced to disk, with its record; and
//! `current` is only ever replaced whole (written aside, synced, renamed),
//! naming such a directory. So `current` always names a complete release,
//! or is absent. The release `current` replaced stays as `previous` (for
//! rollback); older ones are removed after a switch, by first renaming them
//! out of `releases/` (so a crash mid-removal never leaves a half-deleted
//! release that looks installed). Whoever changes the cache holds
//! `.ferry/lock` (an advisory file lock): two syncs never interleave.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The record written into each release directory.
pub const RECORD_FILE: &str = ".ferry-release.json";

/// What `current` says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Current {
    pub manifest_id: String,
    pub version: String,
    /// The release switched away from, kept for rollback.
    #[serde(default)]
    pub previous: Option<Box<Current>>,
}

/// What a release directory holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    pub manifest_id: String,
    pub version: String,
    pub tenant: String,
    pub app: String,
    pub files: Vec<FileRecord>,
}

/// One file of a release: `<kind>/<path>` under its directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub kind: String,
    pub path: String,
    pub size: u64,
    pub blake3: String,
}

impl FileRecord {
    /// Where the file lives below a release directory.
    pub fn relative(&self) -> PathBuf {
        Path::new(&self.kind).join(&self.path)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io { path: path.to_owned(), source }
}

/// A cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// Opens (creating if needed) the cache at `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, CacheError> {
        let dir = dir.into();
        for sub in ["releases", "staging", ".ferry/reports"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(io(&path))?;
        }
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory of a release (complete if it exists).
    pub fn release_dir(&self, manifest_id: &str) -> PathBuf {
        self.dir.join("releases").join(manifest_id)
    }

    /// What `current` names, if anything; a pointer to a release that is
    /// not there (removed by hand) counts as none.
    pub fn current(&self) -> Result<Option<Current>, CacheError> {
        let path = self.dir.join("current");
        let current: Current = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| CacheError::Corrupt { path: path.clone(), reason: e.to_string() })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CacheError::Io { path, source: e }),
        };
        if !crate::api::is_hex_id(&current.manifest_id) {
            return Err(CacheError::Corrupt { path, reason: "manifest_id is not 64 hex digits".into() });
        }
        if !self.release_dir(&current.manifest_id).join(RECORD_FILE).exists() {
            tracing::warn!(manifest_id = %current.manifest_id, "`current` names a release that is not in the cache");
            return Ok(None);
        }
        Ok(Some(current))
    }

    /// The directory of the current release, to load the app from.
    pub fn current_dir(&self) -> Result<Option<PathBuf>, CacheError> {
        Ok(self.current()?.map(|c| self.release_dir(&c.manifest_id)))
    }

    /// The record of a release in the cache.
    pub fn record(&self, manifest_id: &str) -> Result<Option<ReleaseRecord>, CacheError> {
        if !crate::api::is_hex_id(manifest_id) {
            return Ok(None);
        }
        let path = self.release_dir(manifest_id).join(RECORD_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| CacheError::Corrupt { path, reason: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CacheError::Io { path, source: e }),
        }
    }

    /// Re-reads every file of a release and checks size and BLAKE3.
    pub fn verify(&self, manifest_id: &str) -> Result<(), CacheError> {
        let dir = self.release_dir(manifest_id);
        let record = self
            .record(manifest_id)?
            .ok_or_else(|| CacheError::Corrupt { path: dir.clone(), reason: "not in the cache".into() })?;
        for file in &record.files {
            let path = dir.join(file.relative());
            let (size, hash) = hash_file(&path)?;
            if size != file.size || hash != file.blake3 {
                return Err(CacheError::Corrupt {
                    path,
                    reason: format!(
                        "{size} bytes, BLAKE3 {hash}; the record says {} bytes, {}",
                        file.size, file.blake3
                    ),
                });
            }
        }
        Ok(())
    }

    /// The staging area of a release being downloaded.
    pub(crate) fn staging(&self, manifest_id: &str) -> (PathBuf, PathBuf) {
        let base = self.dir.join("staging").join(manifest_id);
        (base.join("tree"), base.join("parts"))
    }

    /// Waits until no other process or task changes this cache, and holds
    /// it until the guard is dropped. Syncs take it by themselves.
    pub fn lock(&self) -> Result<CacheLock, CacheError> {
        let path = self.dir.join(".ferry/lock");
        let file =
            std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io(&path))?;
        file.lock().map_err(io(&path))?;
        Ok(CacheLock { _file: file })
    }

    /// Whether every file a release's record names is there with its size
    /// (a cheap check before switching back to a release kept earlier).
    pub(crate) fn looks_complete(&self, record: &ReleaseRecord) -> bool {
        let dir = self.release_dir(&record.manifest_id);
        record.files.iter().all(|f| std::fs::metadata(dir.join(f.relative())).is_ok_and(|m| m.len() == f.size))
    }

    /// Removes a release (renamed out of `releases/` first).
    pub(crate) fn remove_release(&self, manifest_id: &str) -> Result<(), CacheError> {
        let dir = self.release_dir(manifest_id);
        if dir.exists() {
            let trash = self.dir.join("staging").join(format!("trash-{manifest_id}"));
            remove_dir_if_exists(&trash)?;
            std::fs::rename(&dir, &trash).map_err(io(&dir))?;
            sync_dir(&self.dir.join("releases"))?;
            remove_dir_if_exists(&trash)?;
        }
        Ok(())
    }

    /// Makes a fully staged release a release: writes its record, syncs,
    /// and renames the tree into `releases/`.
    pub(crate) fn install(&self, record: &ReleaseRecord) -> Result<PathBuf, CacheError> {
        let target = self.release_dir(&record.manifest_id);
        let (tree, _) = self.staging(&record.manifest_id);
        if !target.join(RECORD_FILE).exists() {
            std::fs::create_dir_all(&tree).map_err(io(&tree))?;
            let body = serde_json::to_vec_pretty(record).expect("records serialise");
            write_atomic(&tree.join(RECORD_FILE), &body)?;
            sync_tree(&tree)?;
            if target.exists() {
                // A directory without a record: never a complete release.
                std::fs::remove_dir_all(&target).map_err(io(&target))?;
            }
            std::fs::rename(&tree, &target).map_err(io(&target))?;
            sync_dir(&self.dir.join("releases"))?;
        }
        let staging = self.dir.join("staging").join(&record.manifest_id);
        remove_dir_if_exists(&staging)?;
        Ok(target)
    }

    /// Points `current` at an installed release; the one it named becomes
    /// `previous`. The caller holds the lock (syncs and rollbacks switch).
    pub(crate) fn switch(&self, manifest_id: &str, version: &str) -> Result<Current, CacheError> {
        let target = self.release_dir(manifest_id);
        if !target.join(RECORD_FILE).exists() {
            return Err(CacheError::Corrupt { path: target, reason: "not a complete release".into() });
        }
        let old = self.current()?;
        let previous = match old {
            Some(old) if old.manifest_id != manifest_id => Some(Box::new(Current { previous: None, ..old })),
            Some(old) => old.previous,
            None => None,
        };
        let current = Current { manifest_id: manifest_id.to_owned(), version: version.to_owned(), previous };
        write_atomic(&self.dir.join("current"), &serde_json::to_vec_pretty(&current).expect("pointers serialise"))?;
        Ok(current)
    }

    /// Switches back to the previous release (the current one becomes
    /// `previous`, so it can be switched to again) and remembers the
    /// release rolled back from: syncs hold it back (it did not work on this
    /// device) until the deployment moves on to another.
    pub fn rollback(&self) -> Result<Current, CacheError> {
        let _lock = self.lock()?;
        let path = self.dir.join("current");
        let current =
            self.current()?.ok_or_else(|| CacheError::Corrupt { path: path.clone(), reason: "no release".into() })?;
        let previous = current
            .previous
            .clone()
            .ok_or_else(|| CacheError::Corrupt { path, reason: "no previous release to roll back to".into() })?;
        write_atomic(&self.dir.join(".ferry/rolled-back"), current.manifest_id.as_bytes())?;
        self.switch(&previous.manifest_id, &previous.version)
    }

    /// Whether `manifest_id` is the release this device last rolled back
    /// from.
    pub fn rolled_back(&self, manifest_id: &str) -> bool {
        std::fs::read_to_string(self.dir.join(".ferry/rolled-back")).is_ok_and(|id| id.trim() == manifest_id)
    }

    /// Forgets a rollback: the release it left may be installed again.
    pub fn clear_rollback(&self) -> Result<(), CacheError> {
        let path = self.dir.join(".ferry/rolled-back");
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(CacheError::Io { path, source: e }),
            _ => Ok(()),
        }
    }

    /// Removes releases other than the current and previous ones, and
    /// staging areas other than `keep`'s.
    pub fn prune(&self, keep: Option<&str>) -> Result<(), CacheError> {
        let _lock = self.lock()?;
        self.prune_locked(keep)
    }

    /// [`Cache::prune`] for a caller holding the lock.
    pub(crate) fn prune_locked(&self, keep: Option<&str>) -> Result<(), CacheError> {
        let current = self.current()?;
        let mut kept: Vec<&str> = Vec::new();
        if let Some(c) = &current {
            kept.push(&c.manifest_id);
            if let Some(p) = &c.previous {
                kept.push(&p.manifest_id);
            }
        }
        let releases = self.dir.join("releases");
        for entry in std::fs::read_dir(&releases).map_err(io(&releases))? {
            let entry = entry.map_err(io(&releases))?;
            let name = entry.file_name();
            if !kept.iter().any(|k| name == **k) {
                self.remove_release(&name.to_string_lossy())?;
            }
        }
        let staging = self.dir.join("staging");
        for entry in std::fs::read_dir(&staging).map_err(io(&staging))? {
            let entry = entry.map_err(io(&staging))?;
            if keep.is_none_or(|k| entry.file_name() != k) {
                remove_dir_if_exists(&entry.path())?;
            }
        }
        Ok(())
    }

    /// This device's id: the one made on first use, kept in the cache.
    pub fn device_id(&self) -> Result<String, CacheError> {
        let path = self.dir.join(".ferry/device-id");
        match std::fs::read_to_string(&path) {
            Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(CacheError::Io { path, source: e }),
        }
        let id = crate::Report::new_id();
        write_atomic(&path, id.as_bytes())?;
        Ok(id)
    }

    /// Keeps a report until the gateway accepts it.
    pub(crate) fn save_report(&self, report: &crate::Report) -> Result<(), CacheError> {
        let path = self.dir.join(".ferry/reports").join(format!("{}.json", report.report_id));
        write_atomic(&path, &serde_json::to_vec(report).expect("reports serialise"))
    }

    pub(crate) fn pending_reports(&self) -> Result<Vec<crate::Report>, CacheError> {
        let dir = self.dir.join(".ferry/reports");
        let mut reports = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let path = entry.map_err(io(&dir))?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()) {
                Some(report) => reports.push(report),
                None => {
                    tracing::warn!(path = %path.display(), "dropping an unreadable pending report");
                    std::fs::remove_file(&path).map_err(io(&path))?;
                }
            }
        }
        Ok(reports)
    }

    pub(crate) fn forget_report(&self, report_id: &str) -> Result<(), CacheError> {
        let path = self.dir.join(".ferry/reports").join(format!("{report_id}.json"));
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(CacheError::Io { path, source: e }),
            _ => Ok(()),
        }
    }
}

/// Holds a cache's lock (see [`Cache::lock`]) until dropped.
pub struct CacheLock {
    _file: std::fs::File,
}

/// Size and hex BLAKE3 of a file.
pub(crate) fn hash_file(path: &Path) -> Result<(u64, String), CacheError> {
    let mut hasher = blake3::Hasher::new();
    let file = std::fs::File::open(path).map_err(io(path))?;
    hasher.update_reader(file).map_err(io(path))?;
    Ok((hasher.count(), hasher.finalize().to_hex().to_string()))
}

/// Replaces `path` whole: written aside, synced, renamed, directory synced.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io(path))?;
    sync_dir(path.parent().expect("cache paths have a parent"))
}

/// Makes a directory's entries (renames, new files) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), CacheError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Syncs every directory below `root` (the files were synced as written).
fn sync_tree(root: &Path) -> Result<(), CacheError> {
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            if entry.file_type().map_err(io(&dir))?.is_dir() {
                dirs.push(entry.path());
            }
        }
        sync_dir(&dir)?;
    }
    Ok(())
}

fn remove_dir_if_exists(path: &Path) -> Result<(), CacheError> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(CacheError::Io { path: path.to_owned(), source: e }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn install(cache: &Cache, id: &str, version: &str, content: &[u8]) {
        let (tree, _) = cache.staging(id);
        std::fs::create_dir_all(tree.join("web")).unwrap();
        std::fs::write(tree.join("web/index.html"), content).unwrap();
        let record = ReleaseRecord {
            manifest_id: id.into(),
            version: version.into(),
            tenant: "acme".into(),
            app: "crm".into(),
            files: vec![FileRecord {
                kind: "web".into(),
                path: "index.html".into(),
                size: content.len() as u64,
                blake3: blake3::hash(content).to_hex().to_string(),
            }],
        };
        cache.install(&record).unwrap();
    }

    #[test]
    fn switching_keeps_one_previous_release_and_prune_removes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        assert_eq!(cache.current().unwrap(), None);
        let (a, b, c) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
        for (id, version) in [(&a, "1.0.0"), (&b, "2.0.0"), (&c, "3.0.0")] {
            install(&cache, id, version, version.as_bytes());
            cache.switch(id, version).unwrap();
            cache.prune(None).unwrap();
            cache.verify(id).unwrap();
        }
        let current = cache.current().unwrap().unwrap();
        assert_eq!((current.manifest_id.as_str(), current.version.as_str()), (c.as_str(), "3.0.0"));
        assert_eq!(current.previous.as_ref().unwrap().manifest_id, b);
        assert!(!cache.release_dir(&a).exists(), "the release before the previous one is removed");
        assert!(cache.release_dir(&b).exists());
        assert!(!cache.rolled_back(&c));
        let back = cache.rollback().unwrap();
        assert_eq!((back.manifest_id.as_str(), back.previous.unwrap().manifest_id.as_str()), (b.as_str(), c.as_str()));
        assert!(cache.rolled_back(&c) && !cache.rolled_back(&b));
        cache.clear_rollback().unwrap();
        assert!(!cache.rolled_back(&c));
    }

    #[test]
    fn a_pointer_to_a_missing_release_counts_as_none_and_corruption_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let id = "d".repeat(64);
        assert!(cache.switch(&id, "1.0.0").is_err(), "no switching to a release that is not installed");
        install(&cache, &id, "1.0.0", b"hello");
        cache.switch(&id, "1.0.0").unwrap();
        std::fs::write(cache.release_dir(&id).join("web/index.html"), b"hellO").unwrap();
        let err = cache.verify(&id).unwrap_err().to_string();
        assert!(err.contains("index.html") && err.contains("the record says"), "{err}");
        std::fs::remove_dir_all(cache.release_dir(&id)).unwrap();
        assert_eq!(cache.current().unwrap(), None);
        std::fs::write(dir.path().join("current"), b"{not json").unwrap();
        assert!(matches!(cache.current(), Err(CacheError::Corrupt { .. })));
    }

    #[test]
    fn the_device_id_is_made_once() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let id = cache.device_id().unwrap();
        assert_eq!(id.len(), 32);
        assert_eq!(Cache::open(dir.path()).unwrap().device_id().unwrap(), id);
    }
}
