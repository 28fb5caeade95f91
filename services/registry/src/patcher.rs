//! Binary patches in the background (issue 13): which patches to make when a
//! release is deployed, and the workers that make them.
//!
//! When a release becomes the deployed one, clients will move to it from
//! the releases they run: the ones deployed before, and the most recently
//! published. For each such base release, every file of the new release
//! with a counterpart there (`ferry_patch::counterpart`) that differs gets a
//! patch from the base's file, and one back (a rollback is as legitimate as
//! an upgrade). The jobs go to a queue in PostgreSQL (`patch_jobs`), taken
//! under leases by any replica's workers, which renew them while they work:
//! a job whose worker died is taken again once its lease ends (a minute),
//! and given up after `max_attempts`; a worker whose lease was taken over
//! cannot change the job's state. A patch is offered (a `patches` row) only
//! after applying it to its base rebuilt the target's BLAKE3, and only when
//! it is clearly smaller than the file.
//!
//! Every committed release also gets its text-like files compressed
//! (`ferry_patch::compressible`): a compressed file is a patch from the
//! empty file, made, checked and offered the same way, to every client
//! downloading the file whole.

use std::time::Duration;

use bytes::Bytes;
use std::collections::HashSet;

use ferry_release::{ArtifactKind, Hash, Manifest, ManifestId};
use ferry_store::{PatchJob, PatchOutcome, PatchPair};
use tracing::{info, warn};

use crate::service::Registry;

/// What this replica does about patches.
#[derive(Debug, Clone, Copy)]
pub struct PatchSettings {
    /// Jobs worked on at once by this replica (0: none here).
    pub workers: usize,
    /// How many recently deployed, and how many recently published,
    /// releases each deploy makes patches from (and back to).
    pub bases: usize,
    /// How long a job stays this worker's without a renewal (renewed every
    /// third of it while the worker works).
    pub lease: Duration,
    /// How often an idle worker looks for work.
    pub poll: Duration,
    /// Attempts before a job is given up.
    pub max_attempts: i32,
}

impl Default for PatchSettings {
    fn default() -> Self {
        Self { workers: 1, bases: 3, lease: Duration::from_secs(60), poll: Duration::from_secs(2), max_attempts: 5 }
    }
}

/// Queues the compressed copies of `target`'s text-like files (just
/// committed in `app_id`, its files at `location_id`) and, with `bases`
/// above 0 (it is about to be deployed), the patches clients need to move
/// to it and back. Returns how many jobs were queued.
pub async fn plan(
    registry: &Registry,
    tenant_id: i64,
    app_id: i64,
    target: ManifestId,
    location_id: Option<i64>,
    bases: usize,
) -> anyhow::Result<u64> {
    let meta = registry.meta();
    let load = |tenant_id: i64, id: ManifestId| async move {
        let body =
            meta.load_manifest(tenant_id, id).await?.ok_or_else(|| anyhow::anyhow!("manifest {id} is missing"))?;
        Ok::<_, anyhow::Error>(Manifest::decode(&body)?)
    };
    let to = load(tenant_id, target).await?;
    // Its text-like files, compressed: patches from the empty file.
    let empty = ferry_store::empty_file();
    let mut pairs: Vec<PatchPair> = compressible_files(&to)
        .into_iter()
        .map(|file| PatchPair { base: empty, base_location_id: None, target: file, target_location_id: location_id })
        .collect();
    for (base_tenant, base, base_location) in meta.patch_bases(app_id, target, bases).await? {
        let from = load(base_tenant, base).await?;
        for (old, new) in pairs_between(&from, &to) {
            pairs.push(PatchPair {
                base: old,
                base_location_id: base_location,
                target: new,
                target_location_id: location_id,
            });
            pairs.push(PatchPair {
                base: new,
                base_location_id: location_id,
                target: old,
                target_location_id: base_location,
            });
        }
    }
    Ok(meta.enqueue_patches(&pairs).await?)
}

/// The files of `release` worth storing compressed: text-like
/// (`ferry_patch::compressible`), between `ferry_patch::MIN_FILE_BYTES` and
/// `ferry_patch::MAX_FILE_BYTES`.
fn compressible_files(release: &Manifest) -> Vec<Hash> {
    let mut seen = HashSet::new();
    release
        .files()
        .filter(|f| {
            (ferry_patch::MIN_FILE_BYTES..=ferry_patch::MAX_FILE_BYTES).contains(&f.size)
                && ferry_patch::compressible(f.path.as_str())
        })
        .filter(|f| seen.insert(f.hash))
        .map(|f| f.hash)
        .collect()
}

/// The (base file, target file) pairs worth a patch between two releases:
/// counterparts that differ, both between `ferry_patch::MIN_FILE_BYTES` and
/// `ferry_patch::MAX_FILE_BYTES`.
fn pairs_between(from: &Manifest, to: &Manifest) -> Vec<(Hash, Hash)> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let patchable = |size: u64| (ferry_patch::MIN_FILE_BYTES..=ferry_patch::MAX_FILE_BYTES).contains(&size);
    for artifact in &to.artifacts {
        let Some(before) = from.artifacts.iter().find(|a| a.name == artifact.name && a.kind == artifact.kind) else {
            continue;
        };
        let single = artifact.kind == ArtifactKind::File;
        for file in &artifact.files {
            let Some(old) = ferry_patch::counterpart(single, file.path.as_str(), &before.files, |f| f.path.as_str())
            else {
                continue;
            };
            if old.hash != file.hash
                && patchable(old.size)
                && patchable(file.size)
                && seen.insert((old.hash, file.hash))
            {
                out.push((old.hash, file.hash));
            }
        }
    }
    out
}

/// Starts this replica's patch workers; they stop when `stopping` ends.
pub fn start(registry: Registry, settings: PatchSettings) -> Vec<tokio::task::JoinHandle<()>> {
    (0..settings.workers)
        .map(|_| {
            let registry = registry.clone();
            tokio::spawn(async move {
                loop {
                    match work_once(&registry, &settings).await {
                        Ok(true) => continue,
                        Ok(false) => {}
                        Err(e) => warn!(error = %format!("{e:#}"), "taking a patch job failed; trying again"),
                    }
                    tokio::time::sleep(settings.poll).await;
                }
            })
        })
        .collect()
}

/// Takes one due job and works it (renewing its lease meanwhile); `false`
/// when there was none.
pub async fn work_once(registry: &Registry, settings: &PatchSettings) -> anyhow::Result<bool> {
    let meta = registry.meta();
    let Some(job) = meta.take_patch_job(settings.lease, settings.max_attempts).await? else { return Ok(false) };
    let renewing = {
        let (meta, job, lease) = (meta.clone(), job.clone(), settings.lease);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(lease / 3);
            tick.tick().await;
            loop {
                tick.tick().await;
                match meta.renew_patch_lease(&job, lease).await {
                    Ok(true) => {}
                    Ok(false) => return warn!(job = job.id, "the patch job's lease was lost; another worker took it"),
                    Err(e) => {
                        warn!(job = job.id, error = %ferry_proto::error_chain(&e), "renewing a patch job's lease failed")
                    }
                }
            }
        })
    };
    let made = make(registry, &job).await;
    renewing.abort();
    let outcome = match made {
        Ok(outcome) => outcome,
        Err(e) => {
            let give_up = job.attempts >= settings.max_attempts;
            let retry_in = Duration::from_secs(30 << job.attempts.clamp(0, 6));
            PatchOutcome::Failed { error: format!("{e:#}"), retry_in, give_up }
        }
    };
    match &outcome {
        PatchOutcome::Made { size, .. } => {
            info!(base = %job.base, target = %job.target, size, "patch made")
        }
        PatchOutcome::Skipped(why) => info!(base = %job.base, target = %job.target, why, "no patch offered"),
        PatchOutcome::Failed { error, give_up, .. } => {
            warn!(base = %job.base, target = %job.target, error, give_up, "making a patch failed")
        }
    }
    if !meta.finish_patch_job(&job, &outcome).await? {
        warn!(job = job.id, "another worker holds the patch job now; its outcome stands");
    }
    Ok(true)
}

/// Makes, checks and stores one patch.
async fn make(registry: &Registry, job: &PatchJob) -> anyhow::Result<PatchOutcome> {
    let at = |location_id: Option<i64>| async move {
        let location = match location_id {
            Some(id) => {
                Some(registry.meta().location(id).await?.ok_or_else(|| anyhow::anyhow!("location {id} is gone"))?)
            }
            None => None,
        };
        Ok::<_, anyhow::Error>(registry.blobs().at(location.as_ref()))
    };
    // A compressed whole file is a patch from the empty file: no base to read.
    let compressing = job.base == ferry_store::empty_file();
    let (base, target) = if compressing {
        (Bytes::new(), at(job.target_location_id).await?.get_file(&job.target).await?)
    } else {
        let (base_at, target_at) = (at(job.base_location_id).await?, at(job.target_location_id).await?);
        tokio::try_join!(base_at.get_file(&job.base), target_at.get_file(&job.target))?
    };
    let (base_hash, target_hash, target_len) = (job.base, job.target, target.len() as u64);
    // CPU-bound (hashing, level 19, checking): off the async threads.
    let made = tokio::task::spawn_blocking(move || -> anyhow::Result<Result<Vec<u8>, ferry_patch::PatchError>> {
        if blake3::hash(&base) != base_hash || blake3::hash(&target) != target_hash {
            anyhow::bail!("a stored file does not hash to its name");
        }
        let patch = match ferry_patch::make(&base, &target) {
            Ok(patch) => patch,
            Err(e) => return Ok(Err(e)),
        };
        drop(target);
        // Offered only once it is known to work: applied to its base, it
        // must rebuild exactly the target (checked as it streams by).
        ferry_patch::apply(&base, patch.as_slice(), &mut std::io::sink(), &target_hash, target_len)?;
        Ok(Ok(patch))
    })
    .await??;
    let patch = match made {
        Ok(patch) => patch,
        Err(ferry_patch::PatchError::TooLarge) => return Ok(PatchOutcome::Skipped("files too large to patch".into())),
        Err(e) => return Err(e.into()),
    };
    let size = patch.len() as u64;
    if compressing && !ferry_patch::worth_compressing(size, target_len) {
        return Ok(PatchOutcome::Skipped(format!("{size} bytes compressed are not clearly fewer than {target_len}")));
    }
    if !compressing && !ferry_patch::worth_offering(size, target_len) {
        return Ok(PatchOutcome::Skipped(format!("a patch of {size} bytes is not clearly smaller than {target_len}")));
    }
    let hash = Hash::from_bytes(*blake3::hash(&patch).as_bytes());
    registry.blobs().put_patch(&hash, Bytes::from(patch)).await?;
    Ok(PatchOutcome::Made { algorithm: ferry_patch::ALGORITHM.into(), hash, size })
}
