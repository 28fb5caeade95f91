//! Binary patches (issue 13): the queue of patches to make, and the patches
//! made. Patches are global and content-addressed, like files: one from
//! file A to file B serves every tenant whose releases hold both, and is
//! offered only to a client that says it holds A (a release of its own
//! app) and moves to B (another), so it reveals nothing.
//!
//! A file stored compressed is a patch from the empty file
//! ([`empty_file`]): the same queue, the same check before it is offered,
//! the same table, one zstd frame any decoder reads. It is offered with
//! every URL of its file.

use std::collections::HashMap;
use std::time::Duration;

use ferry_release::{Hash, ManifestId};

use crate::error::StoreError;
use crate::meta::Meta;

/// A patch to make: from `base` to `target`, each file at its location
/// (`None`: the registry's bucket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchJob {
    pub id: i64,
    pub base: Hash,
    pub target: Hash,
    pub base_location_id: Option<i64>,
    pub target_location_id: Option<i64>,
    /// Attempts so far, this one included: also the lease's token.
    pub attempts: i32,
}

/// A patch to queue: from `base` to `target`, each at its location.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PatchPair {
    pub base: Hash,
    pub base_location_id: Option<i64>,
    pub target: Hash,
    pub target_location_id: Option<i64>,
}

/// A patch as offered: its object is `patches/<hash>` in the registry's
/// bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchRow {
    pub algorithm: String,
    pub hash: Hash,
    pub size: u64,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatchOutcome {
    /// Made, checked and stored: offered from now on.
    Made { algorithm: String, hash: Hash, size: u64 },
    /// Not worth offering (not clearly smaller than the file, or the files
    /// are too large to patch); never retried.
    Skipped(String),
    /// Failed this time; retried after `retry_in` unless attempts are spent.
    Failed { error: String, retry_in: Duration, give_up: bool },
}

/// The BLAKE3 of no bytes: the base of a compressed whole file, which is a
/// patch from the empty file.
pub fn empty_file() -> Hash {
    Hash::from_bytes(*blake3::hash(&[]).as_bytes())
}

fn hash_of(bytes: &[u8]) -> Result<Hash, StoreError> {
    <[u8; 32]>::try_from(bytes)
        .map(Hash::from_bytes)
        .map_err(|_| StoreError::Integrity("stored hash is not 32 bytes".into()))
}

impl Meta {
    /// Queues patches: each pair once, and again only after it failed for
    /// good (a later deploy retries it). Returns how many were queued.
    pub async fn enqueue_patches(&self, pairs: &[PatchPair]) -> Result<u64, StoreError> {
        if pairs.is_empty() {
            return Ok(0);
        }
        // One row per pair in a statement (ON CONFLICT may touch a row once).
        let mut seen = std::collections::HashSet::new();
        let pairs: Vec<PatchPair> = pairs.iter().filter(|p| seen.insert((p.base, p.target))).copied().collect();
        let client = self.client().await?;
        let mut added = 0;
        for batch in pairs.chunks(5_000) {
            let bases: Vec<&[u8]> = batch.iter().map(|p| p.base.as_bytes().as_slice()).collect();
            let targets: Vec<&[u8]> = batch.iter().map(|p| p.target.as_bytes().as_slice()).collect();
            let base_locations: Vec<Option<i64>> = batch.iter().map(|p| p.base_location_id).collect();
            let target_locations: Vec<Option<i64>> = batch.iter().map(|p| p.target_location_id).collect();
            added += client
                .execute(
                    "INSERT INTO patch_jobs (base_hash, target_hash, base_location_id, target_location_id) \
                     SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::bigint[], $4::bigint[]) \
                     ON CONFLICT (base_hash, target_hash) DO UPDATE SET state = 'pending', attempts = 0, \
                       not_before = now(), last_error = NULL, finished_at = NULL, \
                       base_location_id = EXCLUDED.base_location_id, \
                       target_location_id = EXCLUDED.target_location_id \
                     WHERE patch_jobs.state = 'failed'",
                    &[&bases, &targets, &base_locations, &target_locations],
                )
                .await?;
        }
        Ok(added)
    }

    /// Takes the oldest job that is due, for `lease` (renew it with
    /// [`Meta::renew_patch_lease`] while working; once it ends another
    /// replica may take the job). A job already tried `max_attempts` times
    /// (its workers died, say) is given up instead.
    pub async fn take_patch_job(&self, lease: Duration, max_attempts: i32) -> Result<Option<PatchJob>, StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE patch_jobs SET state = 'failed', finished_at = now(), \
                 last_error = coalesce(last_error, 'its worker stopped before finishing, every attempt') \
                 WHERE state = 'pending' AND not_before <= now() AND attempts >= $1",
                &[&max_attempts],
            )
            .await?;
        let lease = lease.as_secs_f64();
        let row = client
            .query_opt(
                "UPDATE patch_jobs SET attempts = attempts + 1, \
                 not_before = now() + make_interval(secs => $1::float8) \
                 WHERE id = (SELECT id FROM patch_jobs WHERE state = 'pending' AND not_before <= now() \
                             ORDER BY not_before, id LIMIT 1 FOR UPDATE SKIP LOCKED) \
                 RETURNING id, base_hash, target_hash, base_location_id, target_location_id, attempts",
                &[&lease],
            )
            .await?;
        row.map(|r| {
            Ok(PatchJob {
                id: r.get(0),
                base: hash_of(r.get(1))?,
                target: hash_of(r.get(2))?,
                base_location_id: r.get(3),
                target_location_id: r.get(4),
                attempts: r.get(5),
            })
        })
        .transpose()
    }

    /// Extends the lease on `job` by `lease` from now; false when it is no
    /// longer this worker's (taken over after its lease ended, or finished).
    pub async fn renew_patch_lease(&self, job: &PatchJob, lease: Duration) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let n = client
            .execute(
                "UPDATE patch_jobs SET not_before = now() + make_interval(secs => $3::float8) \
                 WHERE id = $1 AND attempts = $2 AND state = 'pending'",
                &[&job.id, &job.attempts, &lease.as_secs_f64()],
            )
            .await?;
        Ok(n == 1)
    }

    /// Records how `job` ended; a made patch becomes offered in the same
    /// transaction (whoever holds the job: it was checked). The job's state
    /// changes only if its lease is still this worker's; returns whether
    /// it was.
    pub async fn finish_patch_job(&self, job: &PatchJob, outcome: &PatchOutcome) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let changed = match outcome {
            PatchOutcome::Made { algorithm, hash, size } => {
                let size = i64::try_from(*size).map_err(|_| StoreError::Integrity("patch size overflows".into()))?;
                tx.execute(
                    "INSERT INTO patches (base_hash, target_hash, algorithm, patch_hash, size) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                    &[
                        &job.base.as_bytes().as_slice(),
                        &job.target.as_bytes().as_slice(),
                        algorithm,
                        &hash.as_bytes().as_slice(),
                        &size,
                    ],
                )
                .await?;
                tx.execute(
                    "UPDATE patch_jobs SET state = 'done', finished_at = now(), last_error = NULL \
                     WHERE id = $1 AND state <> 'done'",
                    &[&job.id],
                )
                .await?;
                tx.commit().await?;
                return Ok(true);
            }
            PatchOutcome::Skipped(why) => {
                tx.execute(
                    "UPDATE patch_jobs SET state = 'skipped', finished_at = now(), last_error = $3 \
                     WHERE id = $1 AND attempts = $2 AND state = 'pending'",
                    &[&job.id, &job.attempts, why],
                )
                .await?
            }
            PatchOutcome::Failed { error, retry_in, give_up } => {
                let (state, retry) = (if *give_up { "failed" } else { "pending" }, retry_in.as_secs_f64());
                tx.execute(
                    "UPDATE patch_jobs SET state = $3, last_error = $4, \
                     not_before = now() + make_interval(secs => $5::float8), \
                     finished_at = CASE WHEN $3 = 'failed' THEN now() END \
                     WHERE id = $1 AND attempts = $2 AND state = 'pending'",
                    &[&job.id, &job.attempts, &state, error, &retry],
                )
                .await?
            }
        };
        tx.commit().await?;
        Ok(changed == 1)
    }

    /// The patches offered for these (base, target) pairs, and which pairs
    /// still have a patch being made (pending).
    pub async fn patches_for(
        &self,
        pairs: &[(Hash, Hash)],
    ) -> Result<(HashMap<(Hash, Hash), PatchRow>, usize), StoreError> {
        let mut found = HashMap::new();
        if pairs.is_empty() {
            return Ok((found, 0));
        }
        let client = self.client().await?;
        let bases: Vec<&[u8]> = pairs.iter().map(|(b, _)| b.as_bytes().as_slice()).collect();
        let targets: Vec<&[u8]> = pairs.iter().map(|(_, t)| t.as_bytes().as_slice()).collect();
        // Pending first: a job finishing between the two reads is then
        // counted as pending (the list is rebuilt soon), never missed.
        let pending: i64 = client
            .query_one(
                "SELECT count(*) FROM unnest($1::bytea[], $2::bytea[]) AS w(base_hash, target_hash) \
                 JOIN patch_jobs j USING (base_hash, target_hash) WHERE j.state = 'pending'",
                &[&bases, &targets],
            )
            .await?
            .get(0);
        let rows = client
            .query(
                "SELECT p.base_hash, p.target_hash, p.algorithm, p.patch_hash, p.size \
                 FROM unnest($1::bytea[], $2::bytea[]) AS w(base_hash, target_hash) \
                 JOIN patches p USING (base_hash, target_hash)",
                &[&bases, &targets],
            )
            .await?;
        for row in rows {
            let key = (hash_of(row.get(0))?, hash_of(row.get(1))?);
            let size = u64::try_from(row.get::<_, i64>(4)).unwrap_or_default();
            found.insert(key, PatchRow { algorithm: row.get(2), hash: hash_of(row.get(3))?, size });
        }
        Ok((found, pending as usize))
    }

    /// The releases of `app_id` clients are likely to move from (or back
    /// to) when `target` is deployed: the `count` most recently deployed
    /// and the `count` most recently published, `target` excepted; each as
    /// (tenant, manifest id, location), without repeats.
    pub async fn patch_bases(
        &self,
        app_id: i64,
        target: ManifestId,
        count: usize,
    ) -> Result<Vec<(i64, ManifestId, Option<i64>)>, StoreError> {
        let client = self.client().await?;
        let count = count as i64;
        let rows = client
            .query(
                "SELECT tenant_id, manifest_id, location_id FROM ( \
                   (SELECT r.tenant_id, r.manifest_id, r.location_id, 0 AS kind, max(d.id) AS seq \
                    FROM deployments d JOIN releases r ON r.id = d.release_id \
                    WHERE d.app_id = $1 AND r.manifest_id <> $2 GROUP BY r.id ORDER BY seq DESC LIMIT $3) \
                   UNION ALL \
                   (SELECT tenant_id, manifest_id, location_id, 1, id FROM releases \
                    WHERE app_id = $1 AND manifest_id <> $2 ORDER BY id DESC LIMIT $3)) b ORDER BY kind, seq DESC",
                &[&app_id, &target.0.as_slice(), &count],
            )
            .await?;
        let mut out: Vec<(i64, ManifestId, Option<i64>)> = Vec::new();
        for row in rows {
            let id = ManifestId::from_slice(row.get(1))
                .ok_or_else(|| StoreError::Integrity("stored manifest id is not 32 bytes".into()))?;
            if !out.iter().any(|(_, seen, _)| *seen == id) {
                out.push((row.get(0), id, row.get(2)));
            }
        }
        Ok(out)
    }

    /// The release of `app_id` with exactly this version, unless it was
    /// yanked (it will not be deployed, so nothing is made for it):
    /// (tenant, manifest id, location).
    pub async fn release_at(
        &self,
        app_id: i64,
        version: &str,
    ) -> Result<Option<(i64, ManifestId, Option<i64>)>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT tenant_id, manifest_id, location_id FROM releases \
                 WHERE app_id = $1 AND version = $2 AND yanked_at IS NULL",
                &[&app_id, &version],
            )
            .await?;
        row.map(|r| {
            let id = ManifestId::from_slice(r.get(1))
                .ok_or_else(|| StoreError::Integrity("stored manifest id is not 32 bytes".into()))?;
            Ok((r.get(0), id, r.get(2)))
        })
        .transpose()
    }

    /// A download location by id.
    pub async fn location(&self, id: i64) -> Result<Option<crate::Location>, StoreError> {
        let client = self.client().await?;
        let row =
            client.query_opt("SELECT id, bucket, prefix, public_endpoint FROM locations WHERE id = $1", &[&id]).await?;
        Ok(row.map(|r| crate::locations::location(&r, 0)))
    }

    /// Jobs by state (for metrics, the benchmark and tests).
    pub async fn patch_job_counts(&self) -> Result<HashMap<String, i64>, StoreError> {
        let client = self.client().await?;
        let rows = client.query("SELECT state, count(*) FROM patch_jobs GROUP BY state", &[]).await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

/// The advisory lock key that serialises patch collections ("ferry pgc").
const PATCH_GC_LOCK: i64 = 0x6665_7272_7970_6763;

/// What a patch collection freed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatchGcReport {
    /// False when another replica was collecting: nothing was done.
    pub ran: bool,
    /// Patches no longer offered (rows), and the objects and bytes freed.
    pub patches: u64,
    pub objects: u64,
    pub bytes: u64,
}

impl std::fmt::Display for PatchGcReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.ran {
            return f.write_str("another registry is collecting patches; nothing done");
        }
        write!(f, "freed {} unused patches ({} objects, {} bytes)", self.patches, self.objects, self.bytes)
    }
}

/// Deletes the patches no client is offered any more. A deploy makes
/// patches between the deployed release and its `bases` most recently
/// deployed and published releases (both ways); once an app deploys
/// another release, the patches between releases that are not the
/// deployed one and its bases serve nobody. A patch older than `grace` is
/// kept while, for some app, one of its files is in the deployed release
/// and the other in that release or one of its bases; compressed files
/// (patches from the empty file) serve every release and are kept. The
/// pair's job goes too, so a later deploy of those releases makes the
/// patch again. One collection at a time across replicas (an advisory
/// lock).
pub async fn collect_patches(
    meta: &Meta,
    blobs: &crate::Blobs,
    bases: usize,
    grace: Duration,
) -> Result<PatchGcReport, StoreError> {
    let mut client = meta.client().await?;
    let locked: bool = client.query_one("SELECT pg_try_advisory_lock($1)", &[&PATCH_GC_LOCK]).await?.get(0);
    if !locked {
        return Ok(PatchGcReport::default());
    }
    let result = collect_unused_patches(meta, &mut client, blobs, bases, grace).await;
    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&PATCH_GC_LOCK]).await;
    result
}

async fn collect_unused_patches(
    meta: &Meta,
    client: &mut deadpool_postgres::Object,
    blobs: &crate::Blobs,
    bases: usize,
    grace: Duration,
) -> Result<PatchGcReport, StoreError> {
    let mut report = PatchGcReport { ran: true, ..PatchGcReport::default() };
    // Per app: the deployed release's files, and those of it and its bases.
    let files_of = |tenant_id: i64, id: ManifestId| async move {
        let body = meta
            .load_manifest(tenant_id, id)
            .await?
            .ok_or_else(|| StoreError::Integrity(format!("the manifest {id} of a release is missing")))?;
        let manifest = ferry_release::Manifest::decode(&body)
            .map_err(|e| StoreError::Integrity(format!("a stored manifest does not decode: {e}")))?;
        Ok::<std::collections::HashSet<Hash>, StoreError>(manifest.files().map(|f| f.hash).collect())
    };
    let mut windows = Vec::new();
    let deployed = client
        .query(
            "SELECT a.id, r.tenant_id, r.manifest_id FROM apps a JOIN releases r ON r.id = a.deployed_release_id",
            &[],
        )
        .await?;
    for row in deployed {
        let id = ManifestId::from_slice(row.get(2))
            .ok_or_else(|| StoreError::Integrity("stored manifest id is not 32 bytes".into()))?;
        let current = files_of(row.get(1), id).await?;
        let mut window = current.clone();
        for (tenant_id, base, _) in meta.patch_bases(row.get(0), id, bases).await? {
            window.extend(files_of(tenant_id, base).await?);
        }
        windows.push((current, window));
    }
    let offered = |base: &Hash, target: &Hash| {
        windows.iter().any(|(current, window)| {
            (current.contains(target) && window.contains(base)) || (current.contains(base) && window.contains(target))
        })
    };
    let empty = empty_file();
    let rows = client
        .query(
            "SELECT base_hash, target_hash FROM patches \
             WHERE base_hash <> $1 AND created_at < now() - make_interval(secs => $2)",
            &[&empty.as_bytes().as_slice(), &grace.as_secs_f64()],
        )
        .await?;
    let mut unused = Vec::new();
    for row in rows {
        let (base, target) = (hash_of(row.get(0))?, hash_of(row.get(1))?);
        if !offered(&base, &target) {
            unused.push((base, target));
        }
    }
    for batch in unused.chunks(1000) {
        let bases: Vec<&[u8]> = batch.iter().map(|(b, _)| b.as_bytes().as_slice()).collect();
        let targets: Vec<&[u8]> = batch.iter().map(|(_, t)| t.as_bytes().as_slice()).collect();
        let tx = client.transaction().await?;
        let gone = tx
            .query(
                "DELETE FROM patches p USING unnest($1::bytea[], $2::bytea[]) AS u(b, t) \
                 WHERE p.base_hash = u.b AND p.target_hash = u.t RETURNING p.patch_hash, p.size",
                &[&bases, &targets],
            )
            .await?;
        tx.execute(
            "DELETE FROM patch_jobs j USING unnest($1::bytea[], $2::bytea[]) AS u(b, t) \
             WHERE j.base_hash = u.b AND j.target_hash = u.t",
            &[&bases, &targets],
        )
        .await?;
        report.patches += gone.len() as u64;
        // Patches are content-addressed: an object another row still
        // names stays.
        let hashes: Vec<&[u8]> = gone.iter().map(|r| r.get::<_, &[u8]>(0)).collect();
        let still: std::collections::HashSet<Vec<u8>> = tx
            .query("SELECT patch_hash FROM patches WHERE patch_hash = ANY($1)", &[&hashes])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut deleted = std::collections::HashSet::new();
        for row in &gone {
            let hash: &[u8] = row.get(0);
            if still.contains(hash) || !deleted.insert(hash.to_vec()) {
                continue;
            }
            blobs.delete(crate::blobs::patch_key(&hash_of(hash)?)).await?;
            report.objects += 1;
            report.bytes += row.get::<_, i64>(1).max(0) as u64;
        }
        tx.commit().await?;
    }
    if report.patches > 0 {
        tracing::info!(
            patches = report.patches,
            objects = report.objects,
            bytes = report.bytes,
            "unused patches collected"
        );
    }
    Ok(report)
}
