//! Binary patches in the background (issue 13): which patches to make when a
//! release is deployed, and the workers that make them.
//!
//! When a release becomes the deployed one, clients will move to it from
//! the releases they run: the ones deployed before, and the most recently
//! published. For each such base release, every file of the new release
//! with a counterpart there (`ferry_patch::counterpart`) that differs gets a
//! patch from the base's file, and one back (a rollback is as legitimate as
//! an upgrade). The jobs go to a queue in PostgreSQL (`patch_jobs`), taken
//! under leases by any replica's workers: a job whose worker died is taken
//! again once its lease ends. A patch is offered (a `patches` row) only
//! after applying it to its base rebuilt the target's BLAKE3, and only when
//! it is clearly smaller than the file.

use std::time::Duration;

use bytes::Bytes;
use ferry_release::{ArtifactKind, Hash, Manifest, ManifestId};
use ferry_store::{PatchJob, PatchOutcome};
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
    /// How long a job is this worker's before another may take it.
    pub lease: Duration,
    /// How often an idle worker looks for work.
    pub poll: Duration,
    /// Attempts before a job is given up.
    pub max_attempts: i32,
}

impl Default for PatchSettings {
    fn default() -> Self {
        Self { workers: 1, bases: 3, lease: Duration::from_secs(600), poll: Duration::from_secs(2), max_attempts: 5 }
    }
}

/// Queues the patches clients need to move to `target` (just deployed in
/// `app_id`) and back. Returns how many jobs were new.
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
    let mut pairs = Vec::new();
    for (base_tenant, base) in meta.patch_bases(app_id, target, bases).await? {
        let from = load(base_tenant, base).await?;
        for (old, new) in pairs_between(&from, &to) {
            pairs.push((old, new, location_id));
            pairs.push((new, old, location_id));
        }
    }
    Ok(meta.enqueue_patches(&pairs).await?)
}

/// The (base file, target file) pairs worth a patch between two releases:
/// counterparts that differ, both at least `ferry_patch::MIN_FILE_BYTES`.
fn pairs_between(from: &Manifest, to: &Manifest) -> Vec<(Hash, Hash)> {
    let mut out = Vec::new();
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
            let big_enough = old.size >= ferry_patch::MIN_FILE_BYTES && file.size >= ferry_patch::MIN_FILE_BYTES;
            if old.hash != file.hash && big_enough && !out.contains(&(old.hash, file.hash)) {
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

/// Takes one due job and works it; `false` when there was none.
pub async fn work_once(registry: &Registry, settings: &PatchSettings) -> anyhow::Result<bool> {
    let Some(job) = registry.meta().take_patch_job(settings.lease).await? else { return Ok(false) };
    let outcome = match make(registry, &job).await {
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
    registry.meta().finish_patch_job(&job, &outcome).await?;
    Ok(true)
}

/// Makes, checks and stores one patch.
async fn make(registry: &Registry, job: &PatchJob) -> anyhow::Result<PatchOutcome> {
    let location = match job.location_id {
        Some(id) => Some(registry.meta().location(id).await?.ok_or_else(|| anyhow::anyhow!("location {id} is gone"))?),
        None => None,
    };
    let blobs = registry.blobs().at(location.as_ref());
    let (base, target) = tokio::try_join!(blobs.get_file(&job.base), blobs.get_file(&job.target))?;
    let (target_hash, target_len) = (job.target, target.len() as u64);
    if blake3::hash(&base) != job.base || blake3::hash(&target) != target_hash {
        anyhow::bail!("a stored file does not hash to its name");
    }
    let patch = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, ferry_patch::PatchError> {
        let patch = ferry_patch::make(&base, &target)?;
        // Offered only once it is known to work: applied to its base, it
        // must rebuild exactly the target.
        ferry_patch::apply_to_vec(&base, &patch, &target_hash, target_len)?;
        Ok(patch)
    })
    .await?;
    let patch = match patch {
        Ok(patch) => patch,
        Err(ferry_patch::PatchError::TooLarge) => return Ok(PatchOutcome::Skipped("files too large to patch".into())),
        Err(e) => return Err(e.into()),
    };
    let size = patch.len() as u64;
    if !ferry_patch::worth_offering(size, target_len) {
        return Ok(PatchOutcome::Skipped(format!("a patch of {size} bytes is not clearly smaller than {target_len}")));
    }
    let hash = Hash::from_bytes(*blake3::hash(&patch).as_bytes());
    registry.blobs().put_patch(&hash, Bytes::from(patch)).await?;
    Ok(PatchOutcome::Made { algorithm: ferry_patch::ALGORITHM.into(), hash, size })
}
