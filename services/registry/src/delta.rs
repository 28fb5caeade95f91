//! Delta uploads (issue 14): chunks an agent sends as one zstd frame
//! against chunks of an earlier release its tenant already holds
//! (`DeltaRun` in the proto). The reference is read the way assembly reads
//! chunks (from their objects or from ranges of the files holding them),
//! the frame is decoded to exactly the announced length, and every chunk
//! is checked against its hash before it is stored like any other.

use std::collections::HashMap;

use bytes::Bytes;
use ferry_proto::registry::v1 as pb;
use ferry_release::{CHUNK_MAX, ChunkRef, Hash};

use crate::error::RegistryError;
use crate::service::Registry;

/// At most this many chunks per run.
pub(crate) const MAX_RUN_CHUNKS: usize = 64;
/// At most this many bytes decoded per run.
pub(crate) const MAX_RUN_BYTES: usize = 4 * 1024 * 1024;
/// At most this many reference chunks per run…
pub(crate) const MAX_REFERENCE_CHUNKS: usize = 64;
/// …and bytes.
pub(crate) const MAX_REFERENCE_BYTES: u64 = 4 * 1024 * 1024;
/// At most this many runs per upload message.
pub(crate) const MAX_RUNS_PER_MESSAGE: usize = 16;
/// Runs decoded at once by this registry, whatever the number of streams:
/// each reads up to 4 MiB of reference and decodes up to 4 MiB.
pub(crate) const DECODES_AT_ONCE: usize = 4;

fn hash_of(bytes: &[u8], what: &str) -> Result<Hash, RegistryError> {
    <[u8; 32]>::try_from(bytes)
        .map(Hash::from_bytes)
        .map_err(|_| RegistryError::InvalidArgument(format!("delta run: {what} hashes must be 32 bytes")))
}

/// The run's chunks, decoded and checked, in order.
pub(crate) async fn decode_run(
    registry: &Registry,
    tenant_id: i64,
    run: pb::DeltaRun,
) -> Result<Vec<(Hash, Bytes)>, RegistryError> {
    let invalid = |why: String| RegistryError::InvalidArgument(format!("delta run: {why}"));
    if run.hashes.is_empty() || run.hashes.len() > MAX_RUN_CHUNKS || run.hashes.len() != run.lens.len() {
        return Err(invalid(format!(
            "1 to {MAX_RUN_CHUNKS} chunks, one length each (got {} hashes, {} lengths)",
            run.hashes.len(),
            run.lens.len()
        )));
    }
    if run.reference.is_empty() || run.reference.len() > MAX_REFERENCE_CHUNKS {
        return Err(invalid(format!("1 to {MAX_REFERENCE_CHUNKS} reference chunks (got {})", run.reference.len())));
    }
    let hashes = run.hashes.iter().map(|h| hash_of(h, "chunk")).collect::<Result<Vec<_>, _>>()?;
    if let Some(len) = run.lens.iter().find(|l| **l == 0 || **l as usize > CHUNK_MAX) {
        return Err(invalid(format!("a chunk has {len} bytes; chunks have 1 to {CHUNK_MAX}")));
    }
    let total: usize = run.lens.iter().map(|l| *l as usize).sum();
    if total > MAX_RUN_BYTES {
        return Err(invalid(format!("{total} bytes decoded; at most {MAX_RUN_BYTES}")));
    }
    let reference = run.reference.iter().map(|h| hash_of(h, "reference")).collect::<Result<Vec<_>, _>>()?;
    let distinct: std::collections::HashSet<&Hash> = reference.iter().collect();
    if distinct.len() != reference.len() {
        return Err(invalid("a reference chunk is named twice".into()));
    }
    // Bounded work for the whole registry, however many streams send runs.
    let _permit = registry.delta_permits().acquire().await.expect("the semaphore is never closed");
    let base = read_reference(registry, tenant_id, &reference).await?;
    let frame = run.frame;
    let data = tokio::task::spawn_blocking(move || ferry_patch::decode_exact(&base, &frame, total))
        .await
        .map_err(|e| RegistryError::Store(ferry_store::StoreError::Integrity(format!("delta decode failed: {e}"))))?
        .map_err(|e| invalid(format!("the frame does not decode to {total} bytes: {e}")))?;
    let data = Bytes::from(data);
    let mut out = Vec::with_capacity(hashes.len());
    let mut at = 0;
    for (hash, len) in hashes.into_iter().zip(run.lens) {
        let piece = data.slice(at..at + len as usize);
        at += len as usize;
        let actual = blake3::hash(&piece);
        if actual != hash {
            return Err(invalid(format!("chunk {hash}: its bytes hash to {actual}; nothing of it was stored")));
        }
        out.push((hash, piece));
    }
    Ok(out)
}

/// The reference chunks' bytes, concatenated; each must be held by the
/// tenant (what an agent may build on is what its tenant published).
async fn read_reference(registry: &Registry, tenant_id: i64, reference: &[Hash]) -> Result<Vec<u8>, RegistryError> {
    let meta = registry.meta();
    let lens = meta.held_chunk_lens(tenant_id, reference).await?;
    if let Some(missing) = reference.iter().find(|h| !lens.contains_key(*h)) {
        return Err(RegistryError::FailedPrecondition(format!(
            "delta run: reference chunk {missing} is not held by this tenant; send the run's chunks whole"
        )));
    }
    let chunks: Vec<ChunkRef> = reference.iter().map(|h| ChunkRef { hash: *h, len: lens[h] }).collect();
    let bytes: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
    if bytes > MAX_REFERENCE_BYTES {
        return Err(RegistryError::InvalidArgument(format!(
            "delta run: the reference has {bytes} bytes; at most {MAX_REFERENCE_BYTES}"
        )));
    }
    let sources: HashMap<Hash, ferry_store::ChunkSource> = meta.chunk_sources(reference).await?;
    let read = match registry.blobs().read_chunks(&chunks, &sources).await {
        // A chunk object deleted meanwhile (a commit placed it in a file):
        // look the chunks up once more.
        Err(ferry_store::StoreError::NotFound(_)) => {
            let fresh = meta.chunk_sources(reference).await?;
            registry.blobs().read_chunks(&chunks, &fresh).await
        }
        other => other,
    };
    match read {
        Ok(bytes) => Ok(bytes),
        // Lost or damaged bytes: the agent can always send whole chunks.
        Err(e @ (ferry_store::StoreError::NotFound(_) | ferry_store::StoreError::Integrity(_))) => {
            tracing::warn!(error = %e, "a delta reference cannot be read");
            Err(RegistryError::FailedPrecondition(
                "delta run: the reference cannot be read; send the run's chunks whole".into(),
            ))
        }
        Err(e) => Err(e.into()),
    }
}
