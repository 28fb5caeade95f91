//! Garbage collection: what publishes that never committed left behind.
//!
//! PrepareRelease stores a manifest and UploadChunks stores chunks before
//! anything is visible; a publish abandoned halfway leaves both, and a
//! commit that failed after assembling leaves files. A collection removes,
//! once they are older than the grace period (longer than any publish
//! takes; every prepare and commit touches its manifest):
//!
//! 1. manifests no release refers to;
//! 2. a tenant's claims on chunks (`tenant_chunks`) that none of its
//!    remaining manifests uses;
//! 3. chunks nobody claims any more, from S3 and then from `chunks`;
//! 4. assembled files no remaining manifest uses, from S3 and then from
//!    `files`, with the places of chunks in them (a chunk left without
//!    bytes goes too, with its claims); a file holding the only copy of a
//!    chunk a remaining manifest uses stays;
//! 5. objects no row needs (a registry died between writing and
//!    recording);
//! 6. objects of chunks whose bytes are in a file (places.rs), which a
//!    commit did not get to delete.
//!
//! Files assembled at a tenant's download location (`location_files`,
//! another bucket or a prefix other than `files/`) are not collected: they
//! are kept, even those of a commit that failed after assembling.
//!
//! S3 objects are deleted while their row is locked and before the row
//! goes: a crash in between leaves a row without an object only for a
//! chunk or file nobody uses (an upload puts the object again before it
//! records it). One collection runs at a time across all registry
//! replicas (a PostgreSQL advisory lock); a replica that finds it taken
//! skips its turn.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use ferry_release::{Hash, Manifest};

use crate::blobs::{chunk_key, file_key};
use crate::{Blobs, Meta, StoreError};

/// The advisory lock key that serialises collections ("ferry gc").
const GC_LOCK: i64 = 0x6665_7272_7967_6300;
/// Rows handled per statement.
const BATCH: usize = 1000;

/// What a collection freed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// False when another replica was collecting: nothing was done.
    pub ran: bool,
    pub manifests: u64,
    pub manifest_bytes: u64,
    /// Claims of tenants on chunks dropped.
    pub chunk_claims: u64,
    pub chunks: u64,
    pub chunk_bytes: u64,
    /// Objects of chunks whose bytes are in files, deleted.
    pub chunk_objects: u64,
    pub files: u64,
    pub file_bytes: u64,
}

impl std::fmt::Display for GcReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.ran {
            return f.write_str("another registry is collecting garbage; nothing done");
        }
        write!(
            f,
            "freed {} manifests ({} bytes), {} chunk claims, {} chunks ({} bytes), {} chunk objects whose bytes are in \
             files and {} files ({} bytes)",
            self.manifests,
            self.manifest_bytes,
            self.chunk_claims,
            self.chunks,
            self.chunk_bytes,
            self.chunk_objects,
            self.files,
            self.file_bytes
        )
    }
}

/// Collects what is unreferenced and older than `grace`.
pub async fn collect_garbage(meta: &Meta, blobs: &Blobs, grace: Duration) -> Result<GcReport, StoreError> {
    let mut client = meta.client().await?;
    let locked: bool = client.query_one("SELECT pg_try_advisory_lock($1)", &[&GC_LOCK]).await?.get(0);
    if !locked {
        return Ok(GcReport::default());
    }
    let result = collect(&mut client, blobs, grace).await;
    // The session lock goes with the connection too, should this fail.
    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&GC_LOCK]).await;
    result
}

async fn collect(
    client: &mut deadpool_postgres::Object,
    blobs: &Blobs,
    grace: Duration,
) -> Result<GcReport, StoreError> {
    let grace_seconds = grace.as_secs_f64();
    let mut report = GcReport { ran: true, ..GcReport::default() };

    // 1. Manifests no release uses, untouched for the grace period.
    let rows = client
        .query(
            "DELETE FROM manifests m WHERE m.touched_at < now() - make_interval(secs => $1) \
             AND NOT EXISTS (SELECT 1 FROM releases r WHERE r.tenant_id = m.tenant_id AND r.manifest_id = m.id) \
             RETURNING length(m.body)",
            &[&grace_seconds],
        )
        .await?;
    report.manifests = rows.len() as u64;
    report.manifest_bytes = rows.iter().map(|r| r.get::<_, i32>(0) as u64).sum();

    // What the remaining manifests use: chunks per tenant, files overall.
    let mut used_chunks: HashMap<i64, HashSet<Hash>> = HashMap::new();
    let mut used_files: HashSet<Hash> = HashSet::new();
    let rows = client.query("SELECT tenant_id, body FROM manifests", &[]).await?;
    for row in rows {
        let manifest = Manifest::decode(row.get(1))
            .map_err(|e| StoreError::Integrity(format!("a stored manifest does not decode: {e}")))?;
        let chunks = used_chunks.entry(row.get(0)).or_default();
        for file in manifest.files() {
            used_files.insert(file.hash);
            chunks.extend(file.chunks.iter().map(|c| c.hash));
        }
    }

    let used_anywhere: HashSet<Hash> = used_chunks.values().flatten().copied().collect();

    // 2. Claims on chunks no remaining manifest of the tenant uses.
    let rows = client
        .query(
            "SELECT tenant_id, hash FROM tenant_chunks WHERE created_at < now() - make_interval(secs => $1)",
            &[&grace_seconds],
        )
        .await?;
    let mut unused: HashMap<i64, Vec<Vec<u8>>> = HashMap::new();
    for row in rows {
        let tenant: i64 = row.get(0);
        let hash: &[u8] = row.get(1);
        let used = <[u8; 32]>::try_from(hash)
            .ok()
            .is_some_and(|h| used_chunks.get(&tenant).is_some_and(|set| set.contains(&Hash::from_bytes(h))));
        if !used {
            unused.entry(tenant).or_default().push(hash.to_vec());
        }
    }
    for (tenant, hashes) in unused {
        for batch in hashes.chunks(BATCH) {
            report.chunk_claims += client
                .execute("DELETE FROM tenant_chunks WHERE tenant_id = $1 AND hash = ANY($2)", &[&tenant, &batch])
                .await?;
        }
    }

    // 3. Chunks nobody claims. Candidates are locked, then checked again
    // with a fresh snapshot: a claim committed in between is seen, and no
    // new one can be made while the lock is held (claims reference the row).
    loop {
        let tx = client.transaction().await?;
        let candidates: Vec<Vec<u8>> = tx
            .query(
                "SELECT c.hash FROM chunks c WHERE c.created_at < now() - make_interval(secs => $1) \
                 AND NOT EXISTS (SELECT 1 FROM tenant_chunks t WHERE t.hash = c.hash) \
                 LIMIT $2 FOR UPDATE SKIP LOCKED",
                &[&grace_seconds, &(BATCH as i64)],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if candidates.is_empty() {
            break;
        }
        let rows = tx
            .query(
                "SELECT c.hash, c.size, c.in_object FROM chunks c WHERE c.hash = ANY($1) \
                 AND NOT EXISTS (SELECT 1 FROM tenant_chunks t WHERE t.hash = c.hash)",
                &[&candidates],
            )
            .await?;
        let mut hashes = Vec::with_capacity(rows.len());
        for row in &rows {
            // Bytes only in a file stay there (the file is collected on
            // its own); an object of its own goes.
            if row.get::<_, bool>(2) {
                blobs.delete(chunk_key(&stored_hash(row.get(0))?)).await?;
                report.chunk_bytes += row.get::<_, i32>(1) as u64;
            }
            hashes.push(row.get::<_, Vec<u8>>(0));
        }
        tx.execute("DELETE FROM chunk_places WHERE hash = ANY($1)", &[&hashes]).await?;
        report.chunks += tx.execute("DELETE FROM chunks WHERE hash = ANY($1)", &[&hashes]).await?;
        tx.commit().await?;
        if rows.len() < candidates.len() {
            // Some were claimed meanwhile; they stay. Stop rather than pick
            // the same candidates again.
            break;
        }
    }

    // 4. Assembled files no remaining manifest uses and no tenant proved
    // within the grace period (a commit in progress proves its files).
    let rows = client
        .query("SELECT hash FROM files WHERE created_at < now() - make_interval(secs => $1)", &[&grace_seconds])
        .await?;
    let unused: Vec<Vec<u8>> = rows
        .iter()
        .map(|r| r.get::<_, Vec<u8>>(0))
        .filter(|h| <[u8; 32]>::try_from(h.as_slice()).is_ok_and(|h| !used_files.contains(&Hash::from_bytes(h))))
        .collect();
    for batch in unused.chunks(BATCH) {
        let tx = client.transaction().await?;
        tx.execute("SELECT 1 FROM files WHERE hash = ANY($1) FOR UPDATE", &[&batch]).await?;
        let rows = tx
            .query(
                "SELECT f.hash, f.size FROM files f WHERE f.hash = ANY($1) AND NOT EXISTS \
                 (SELECT 1 FROM tenant_files t WHERE t.hash = f.hash AND t.created_at >= now() - make_interval(secs => $2))",
                &[&batch, &grace_seconds],
            )
            .await?;
        let candidates: Vec<Vec<u8>> = rows.iter().map(|r| r.get(0)).collect();
        // A file holding the only copy of a chunk a remaining manifest uses
        // (a publish in progress, say) stays until that manifest goes.
        let sole: HashSet<Vec<u8>> = tx
            .query(
                "SELECT p.file_hash, p.hash FROM chunk_places p JOIN chunks c ON c.hash = p.hash \
                 WHERE p.file_hash = ANY($1) AND NOT c.in_object \
                 AND NOT EXISTS (SELECT 1 FROM chunk_places q WHERE q.hash = p.hash AND NOT (q.file_hash = ANY($1)))",
                &[&candidates],
            )
            .await?
            .iter()
            .filter(|r| {
                <[u8; 32]>::try_from(r.get::<_, &[u8]>(1)).is_ok_and(|h| used_anywhere.contains(&Hash::from_bytes(h)))
            })
            .map(|r| r.get(0))
            .collect();
        let rows: Vec<_> = rows.into_iter().filter(|r| !sole.contains(r.get::<_, &[u8]>(0))).collect();
        let hashes: Vec<Vec<u8>> = rows.iter().map(|r| r.get(0)).collect();
        tx.execute("DELETE FROM tenant_files WHERE hash = ANY($1)", &[&hashes]).await?;
        // Chunks whose bytes were only in these files are gone with them,
        // and so are the claims on them (a later publish uploads them).
        // The chunks first (whatever their state), so that a commit
        // dropping their objects waits for this and then sees the places
        // gone.
        tx.execute(
            "SELECT 1 FROM chunks c WHERE c.hash IN (SELECT hash FROM chunk_places WHERE file_hash = ANY($1)) \
             ORDER BY c.hash FOR UPDATE",
            &[&hashes],
        )
        .await?;
        let placed: Vec<Vec<u8>> = tx
            .query("DELETE FROM chunk_places WHERE file_hash = ANY($1) RETURNING hash", &[&hashes])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let lost: Vec<Vec<u8>> = tx
            .query(
                "SELECT c.hash FROM chunks c WHERE c.hash = ANY($1) AND NOT c.in_object \
                 AND NOT EXISTS (SELECT 1 FROM chunk_places p WHERE p.hash = c.hash) FOR UPDATE",
                &[&placed],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        report.chunk_claims += tx.execute("DELETE FROM tenant_chunks WHERE hash = ANY($1)", &[&lost]).await?;
        report.chunks += tx.execute("DELETE FROM chunks WHERE hash = ANY($1)", &[&lost]).await?;
        for row in &rows {
            blobs.delete(file_key(&stored_hash(row.get(0))?)).await?;
            report.file_bytes += row.get::<_, i64>(1) as u64;
        }
        report.files += tx.execute("DELETE FROM files WHERE hash = ANY($1)", &[&hashes]).await?;
        tx.commit().await?;
    }
    // 5. Objects without a row: a registry that died between writing an
    // object and recording it. Old enough, nobody can be about to record
    // them.
    let cutoff = std::time::SystemTime::now() - grace;
    // (A chunk whose bytes are in a file needs no object: its row does not
    // count.)
    for (prefix, table) in [("chunks/", "chunks WHERE in_object AND"), ("files/", "files WHERE")] {
        let mut token = None;
        loop {
            let (page, next) = blobs.list_older_than(prefix, cutoff, token).await?;
            let hashes: Vec<Vec<u8>> =
                page.iter().filter_map(|(key, _)| hex::decode(key.strip_prefix(prefix)?).ok()).collect();
            let known: HashSet<Vec<u8>> = client
                .query(&format!("SELECT hash FROM {table} hash = ANY($1)"), &[&hashes])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            for (key, size) in page {
                let hash = hex::decode(key.strip_prefix(prefix).unwrap_or_default()).unwrap_or_default();
                if known.contains(&hash) {
                    continue;
                }
                blobs.delete(key).await?;
                if prefix == "chunks/" {
                    report.chunks += 1;
                    report.chunk_bytes += size;
                } else {
                    report.files += 1;
                    report.file_bytes += size;
                }
            }
            match next {
                Some(next) => token = Some(next),
                None => break,
            }
        }
    }

    // 6. Objects of chunks placed in files that a commit did not get to
    // delete (it failed, or its registry stopped).
    report.chunk_objects = crate::places::drop_placed_objects_with(client, blobs).await? as u64;

    tracing::info!(
        manifests = report.manifests,
        chunk_claims = report.chunk_claims,
        chunks = report.chunks,
        chunk_bytes = report.chunk_bytes,
        files = report.files,
        file_bytes = report.file_bytes,
        "garbage collected"
    );
    Ok(report)
}

fn stored_hash(bytes: &[u8]) -> Result<Hash, StoreError> {
    <[u8; 32]>::try_from(bytes)
        .map(Hash::from_bytes)
        .map_err(|_| StoreError::Integrity("a stored hash is not 32 bytes".into()))
}
