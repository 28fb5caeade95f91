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

    /// The manifest recorded for `version` (any spelling of it: a dotted
    /// `2024.1.3` finds the `2024.01.3` bundled before), if any.
    pub(crate) fn by_version(
        &self,
        tenant: &Name,
        app: &Name,
        version: &ferry_release::Version,
    ) -> Result<Option<Manifest>, String> {
        self.find(tenant, app, |_, m| m.version == *version)
    }

    /// The manifest recorded with this id (hex), if any.
    pub(crate) fn by_id(&self, tenant: &Name, app: &Name, id: &str) -> Result<Option<Manifest>, String> {
        self.find(tenant, app, |bytes, _| hex::encode(blake3::hash(bytes).as_bytes()) == id)
    }

    /// The first recorded manifest of `tenant`/`app` that `matches`; a
    /// file that is not such a manifest (damaged, or another owner's) is
    /// skipped with a warning.
    fn find(
        &self,
        tenant: &Name,
        app: &Name,
        matches: impl Fn(&[u8], &Manifest) -> bool,
    ) -> Result<Option<Manifest>, String> {
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
            let manifest = match Manifest::decode(&bytes) {
                Ok(m) if m.owner.as_ref().is_some_and(|o| &o.tenant == tenant && &o.app == app) => m,
                Ok(_) => {
                    tracing::warn!(file = %path.display(), "not a manifest of {tenant}/{app}; skipped");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "damaged manifest skipped");
                    continue;
                }
            };
            if matches(&bytes, &manifest) {
                return Ok(Some(manifest));
            }
        }
        Ok(None)
    }

    /// Where manifests are kept, for messages.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_release::{ArtifactSpec, Owner};

    fn manifest(dir: &Path, tenant: &str, version: &str) -> Manifest {
        let file = dir.join("api.json");
        std::fs::write(&file, format!("{{\"v\":\"{version}\"}}")).unwrap();
        let spec = ArtifactSpec { name: Name::parse("artifact", "api").unwrap(), platforms: vec![], path: file };
        let mut m = ferry_release::pack(version.parse().unwrap(), &[spec], &|_| {}).unwrap();
        m.owner =
            Some(Owner { tenant: Name::parse("tenant", tenant).unwrap(), app: Name::parse("app", "crm").unwrap() });
        m
    }

    #[test]
    fn a_version_is_found_by_any_spelling_and_only_its_owners() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ManifestCache::new(&dir.path().join("state"));
        let (acme, crm) = (Name::parse("tenant", "acme").unwrap(), Name::parse("app", "crm").unwrap());
        let m = manifest(dir.path(), "acme", "2024.01.3");
        cache.save(&m).unwrap();
        let found = cache.by_version(&acme, &crm, &"2024.1.3".parse().unwrap()).unwrap().unwrap();
        assert_eq!(found, m);
        assert_eq!(cache.by_id(&acme, &crm, &m.id().to_string()).unwrap(), Some(m.clone()));
        assert_eq!(cache.by_version(&acme, &crm, &"2024.1.4".parse().unwrap()).unwrap(), None);
        // Another tenant's manifest, or a damaged file, in acme's directory
        // is never used.
        let app_dir = dir.path().join("state/manifests/acme/crm");
        std::fs::remove_file(app_dir.join("2024.01.3.manifest")).unwrap();
        std::fs::write(app_dir.join("2024.01.3.manifest"), manifest(dir.path(), "globex", "2024.01.3").encode())
            .unwrap();
        std::fs::write(app_dir.join("9.manifest"), b"damaged").unwrap();
        assert_eq!(cache.by_version(&acme, &crm, &"2024.1.3".parse().unwrap()).unwrap(), None);
    }
}
