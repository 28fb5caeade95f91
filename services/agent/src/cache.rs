//! What the agent last published, kept in its state directory so that the
//! next publish can send the chunks the registry lacks as deltas against
//! the previous release's bytes (which the registry holds too).
//!
//! Layout under `STATE_DIR/cache/`: one directory per published release,
//! `TENANT.APP.MANIFEST-ID/` holding `manifest` (its encoding), `registry`
//! (the URL it was published to, for the record) and `files/HASH` (copies
//! of its files, as many as the budget allows), and a pointer file
//! `TENANT.APP` naming the current one. A new release is written beside, the pointer replaced
//! atomically, then the old directory removed: a crash leaves the old
//! cache or the new one, never a mix. Names cannot contain '.', so two
//! tenant/app pairs never share a name. Every byte read back is checked
//! against its hash; a damaged cache only costs the deltas.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use ferry_release::{Hash, Manifest, Name};
use tracing::{debug, warn};

/// How many bytes of files the cache keeps unless told otherwise.
pub const DEFAULT_CACHE_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// The release last published to a registry, as cached.
pub(crate) struct Previous {
    pub(crate) manifest: Manifest,
    dir: PathBuf,
}

impl Previous {
    /// The cached copy of the file with this hash, if kept.
    pub(crate) fn file(&self, hash: &Hash) -> Option<PathBuf> {
        let path = self.dir.join("files").join(hash.to_hex().as_str());
        path.is_file().then_some(path)
    }
}

fn pointer(state_dir: &Path, tenant: &Name, app: &Name) -> PathBuf {
    state_dir.join("cache").join(format!("{tenant}.{app}"))
}

/// The release last published for `tenant`/`app` to `registry`, if cached.
pub(crate) fn load(state_dir: &Path, registry: &str, tenant: &Name, app: &Name) -> Option<Previous> {
    let name = std::fs::read_to_string(pointer(state_dir, tenant, app)).ok()?;
    let name = name.trim();
    // Only a directory of this tenant and app, never a path elsewhere.
    let suffix = name.strip_prefix(&format!("{tenant}.{app}."))?;
    if suffix.len() != 16 || !suffix.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let dir = state_dir.join("cache").join(name);
    // Published elsewhere (another address of the same registry, or
    // another registry): still worth trying, since a registry that does
    // not hold the reference says so and the agent sends whole chunks.
    if std::fs::read_to_string(dir.join("registry")).ok()?.trim() != registry {
        debug!("the cached release was published through another address");
    }
    let bytes = std::fs::read(dir.join("manifest")).ok()?;
    match Manifest::decode(&bytes) {
        Ok(manifest) => Some(Previous { manifest, dir }),
        Err(e) => {
            warn!(dir = %dir.display(), error = %e, "cached manifest unreadable; publishing without deltas");
            None
        }
    }
}

/// Caches `manifest` (published to `registry`) as the release to send
/// deltas against, copying its files from `sources` while `budget` bytes
/// allow (a file that changed since packing is left out). Failures only
/// warn: the cache is an optimization.
pub(crate) fn store(
    state_dir: &Path,
    registry: &str,
    manifest: &Manifest,
    sources: &HashMap<Hash, PathBuf>,
    budget: u64,
) {
    if let Err(e) = try_store(state_dir, registry, manifest, sources, budget) {
        warn!(state_dir = %state_dir.display(), error = %e, "cannot cache the release; the next publish sends no deltas");
    }
}

fn try_store(
    state_dir: &Path,
    registry: &str,
    manifest: &Manifest,
    sources: &HashMap<Hash, PathBuf>,
    budget: u64,
) -> std::io::Result<()> {
    let owner = manifest.owner.as_ref().expect("published manifests name their owner");
    let root = state_dir.join("cache");
    std::fs::create_dir_all(&root)?;
    let id = manifest.id().to_string();
    let name = format!("{}.{}.{}", owner.tenant, owner.app, &id[..16]);
    let dir = root.join(&name);
    let tmp = tempfile::Builder::new().prefix(".new.").tempdir_in(&root)?;
    std::fs::create_dir(tmp.path().join("files"))?;
    let mut used = 0u64;
    let mut seen = std::collections::HashSet::new();
    for file in manifest.files() {
        if !seen.insert(file.hash) || used + file.size > budget {
            continue;
        }
        let Some(source) = sources.get(&file.hash) else { continue };
        if copy_checked(source, &tmp.path().join("files").join(file.hash.to_hex().as_str()), &file.hash)? {
            used += file.size;
        }
    }
    std::fs::write(tmp.path().join("manifest"), manifest.encode())?;
    std::fs::write(tmp.path().join("registry"), registry)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::rename(tmp.keep(), &dir)?;
    // The pointer moves last, atomically.
    let mut p = tempfile::NamedTempFile::new_in(&root)?;
    p.write_all(name.as_bytes())?;
    p.as_file().sync_all()?;
    p.persist(pointer(state_dir, &owner.tenant, &owner.app)).map_err(|e| e.error)?;
    // Whatever else this tenant and app left (an older release, one a crash
    // or a concurrent publish left unpointed) and unfinished copies go.
    let prefix = format!("{}.{}.", owner.tenant, owner.app);
    for entry in std::fs::read_dir(&root)?.flatten() {
        let entry_name = entry.file_name().to_string_lossy().into_owned();
        let stale = (entry_name.starts_with(&prefix) && entry_name != name) || entry_name.starts_with(".new.");
        if stale && entry.path().is_dir() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    debug!(bytes = used, "release cached for delta uploads");
    Ok(())
}

/// Copies `from` to `to`, hashing as it goes; keeps the copy only if it is
/// the file with hash `expected` (the source may have changed since it
/// was packed).
fn copy_checked(from: &Path, to: &Path, expected: &Hash) -> std::io::Result<bool> {
    let mut input = File::open(from)?;
    let mut output = File::create(to)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        output.write_all(&buf[..n])?;
    }
    if hasher.finalize() != *expected {
        drop(output);
        std::fs::remove_file(to)?;
        return Ok(false);
    }
    Ok(true)
}
