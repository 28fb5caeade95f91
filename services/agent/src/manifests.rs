//! The manifests this machine packed into bundles, kept in the state
//! directory (`manifests/TENANT/APP/VERSION.manifest`, each the canonical
//! encoding), so that a later bundle can leave out what an earlier one
//! carried (`--since-version`, `--base-manifest`) on a machine that cannot
//! ask the registry.

use std::io::Write;
use std::path::{Path, PathBuf};

use ferry_release::{Manifest, Name};

/// The state directory everything of the agent defaults to.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/ferry-agent";

/// Manifests under a state directory.
pub(crate) struct ManifestCache {
    dir: PathBuf,
}

impl ManifestCache {
    pub(crate) fn new(state_dir: &Path) -> Self {
        Self { dir: state_dir.join("manifests") }
    }

    fn app_dir(&self, tenant: &Name, app: &Name) -> PathBuf {
        self.dir.join(tenant.as_str()).join(app.as_str())
    }

    /// Records a manifest (atomically; an existing one is replaced).
    pub(crate) fn save(&self, manifest: &Manifest) -> Result<(), String> {
        let owner = manifest.owner.as_ref().expect("packed manifests name their owner");
        let dir = self.app_dir(&owner.tenant, &owner.app);
        let fail =
            |e: std::io::Error| format!("state directory {}: cannot record the manifest: {e}", self.dir.display());
        std::fs::create_dir_all(&dir).map_err(fail)?;
        let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(fail)?;
        tmp.write_all(&manifest.encode()).map_err(fail)?;
        tmp.as_file().sync_all().map_err(fail)?;
        tmp.persist(dir.join(format!("{}.manifest", manifest.version))).map_err(|e| fail(e.error))?;
        Ok(())
    }

    /// The manifest recorded for `version`, if any.
    pub(crate) fn by_version(
        &self,
        tenant: &Name,
        app: &Name,
        version: &ferry_release::Version,
    ) -> Result<Option<Manifest>, String> {
        let path = self.app_dir(tenant, app).join(format!("{version}.manifest"));
        match std::fs::read(&path) {
            Ok(bytes) => decode(&path, &bytes).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// The manifest recorded with this id (hex), if any.
    pub(crate) fn by_id(&self, tenant: &Name, app: &Name, id: &str) -> Result<Option<Manifest>, String> {
        let dir = self.app_dir(tenant, app);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
        };
        for entry in entries {
            let path = entry.map_err(|e| format!("cannot read {}: {e}", dir.display()))?.path();
            if path.extension().is_none_or(|e| e != "manifest") {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            if hex::encode(blake3::hash(&bytes).as_bytes()) == id {
                return decode(&path, &bytes).map(Some);
            }
        }
        Ok(None)
    }

    /// Where manifests are kept, for messages.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

fn decode(path: &Path, bytes: &[u8]) -> Result<Manifest, String> {
    Manifest::decode(bytes).map_err(|e| format!("{} is damaged ({e}); delete it", path.display()))
}
