//! Where a chunk's bytes are (issue 13: storage that does not double).
//!
//! An uploaded chunk is first its own object, `chunks/<hash>`, until a
//! commit assembles a file that holds it in the registry's bucket. The
//! chunk's position in that file is then recorded (`chunk_places`) and its
//! own object deleted ([`drop_placed_chunk_objects`]): the bytes are stored
//! once, in the file phones download. Later assemblies read placed chunks
//! from the files (consecutive chunks of one file in one ranged GET), and
//! an upload of a chunk already placed stores nothing (the tenant's claim
//! is recorded once its bytes were re-hashed, as before).
//!
//! The rule that holds: a `chunks` row has its bytes in its own object
//! (`in_object`) or in at least one place. Objects are deleted only after
//! the row says they are not needed (`in_object` false, in a committed
//! transaction), so a crash leaves at worst an object no row needs, which
//! garbage collection removes; places go only with their file, and a chunk
//! left with neither goes with its claims (gc.rs).

use std::collections::HashMap;

use ferry_release::Hash;
use futures::StreamExt;

use crate::Blobs;
use crate::error::StoreError;
use crate::meta::Meta;

/// Where to read a chunk from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkSource {
    /// Its own object, `chunks/<hash>`.
    Object,
    /// Inside the assembled file `files/<file>` of the registry's bucket,
    /// at `offset`.
    Place { file: Hash, offset: u64 },
}

/// Deletes at once this many chunk objects.
const DELETE_CONCURRENCY: usize = 16;

fn hash_of(bytes: &[u8]) -> Result<Hash, StoreError> {
    <[u8; 32]>::try_from(bytes)
        .map(Hash::from_bytes)
        .map_err(|_| StoreError::Integrity("stored hash is not 32 bytes".into()))
}

impl Meta {
    /// Where to read each of `hashes`: the newest place if it has one, else
    /// its object. Chunks the store does not know are absent.
    pub async fn chunk_sources(&self, hashes: &[Hash]) -> Result<HashMap<Hash, ChunkSource>, StoreError> {
        let client = self.client().await?;
        let mut out = HashMap::with_capacity(hashes.len());
        for batch in hashes.chunks(10_000) {
            let keys: Vec<&[u8]> = batch.iter().map(|h| h.as_bytes().as_slice()).collect();
            let rows = client
                .query(
                    "SELECT c.hash, p.file_hash, p.\"offset\" FROM chunks c LEFT JOIN LATERAL \
                     (SELECT file_hash, \"offset\" FROM chunk_places WHERE hash = c.hash ORDER BY seq DESC LIMIT 1) p \
                     ON true WHERE c.hash = ANY($1)",
                    &[&keys],
                )
                .await?;
            for row in rows {
                let source = match row.get::<_, Option<&[u8]>>(1) {
                    Some(file) => {
                        ChunkSource::Place { file: hash_of(file)?, offset: row.get::<_, i64>(2).max(0) as u64 }
                    }
                    None => ChunkSource::Object,
                };
                out.insert(hash_of(row.get(0))?, source);
            }
        }
        Ok(out)
    }

    /// Records where `file` (assembled in the registry's bucket, its bytes
    /// just read and checked) holds each of its chunks: `(chunk, offset)`.
    pub async fn record_places(&self, file: &Hash, chunks: &[(Hash, u64)]) -> Result<(), StoreError> {
        let client = self.client().await?;
        for batch in chunks.chunks(10_000) {
            let hashes: Vec<&[u8]> = batch.iter().map(|(h, _)| h.as_bytes().as_slice()).collect();
            let offsets: Vec<i64> = batch.iter().map(|(_, o)| *o as i64).collect();
            client
                .execute(
                    "INSERT INTO chunk_places (hash, file_hash, \"offset\") \
                     SELECT h, $1, o FROM unnest($2::bytea[], $3::bigint[]) AS u(h, o) \
                     JOIN chunks c ON c.hash = u.h ON CONFLICT DO NOTHING",
                    &[&file.as_bytes().as_slice(), &hashes, &offsets],
                )
                .await?;
        }
        Ok(())
    }

    /// Records the tenant's claim on a chunk whose bytes are already in a
    /// file (nothing to store): `Some(whether the claim is new)`, or `None`
    /// when the chunk is not placed (store its bytes first).
    pub async fn claim_placed_chunk(&self, tenant_id: i64, hash: &Hash) -> Result<Option<bool>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "WITH placed AS (SELECT c.hash FROM chunks c WHERE c.hash = $2 \
                   AND EXISTS (SELECT 1 FROM chunk_places p WHERE p.hash = c.hash) FOR KEY SHARE), \
                 claimed AS (INSERT INTO tenant_chunks (tenant_id, hash) SELECT $1, hash FROM placed \
                   ON CONFLICT DO NOTHING RETURNING 1) \
                 SELECT (SELECT count(*) FROM placed), (SELECT count(*) FROM claimed)",
                &[&tenant_id, &hash.as_bytes().as_slice()],
            )
            .await?;
        let (placed, claimed): (i64, i64) = (row.get(0), row.get(1));
        Ok((placed > 0).then_some(claimed > 0))
    }

    /// Marks the objects of those of `hashes` (all chunks when `None`) that
    /// have a place as no longer needed, and returns them: the caller then
    /// deletes them. The places relied on are locked (`FOR KEY SHARE`): a
    /// collection deleting them meanwhile is waited for, and then they no
    /// longer count.
    async fn release_placed_objects(&self, hashes: Option<&[Hash]>) -> Result<Vec<Hash>, StoreError> {
        let client = self.client().await?;
        release_placed_objects(&client, hashes).await
    }

    /// Bytes held by chunk objects and by assembled files of the registry's
    /// bucket, as the tables say (tools and the benchmark).
    pub async fn stored_bytes(&self) -> Result<(u64, u64), StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT (SELECT COALESCE(sum(size), 0)::bigint FROM chunks WHERE in_object), \
                        (SELECT COALESCE(sum(size), 0)::bigint FROM files)",
                &[],
            )
            .await?;
        Ok((row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64))
    }
}

/// Deletes the objects of chunks (of `hashes`, or all) whose bytes are in
/// an assembled file: after a commit, for its chunks; in garbage
/// collection, for any left behind. Returns how many were deleted.
pub async fn drop_placed_chunk_objects(
    meta: &Meta,
    blobs: &Blobs,
    hashes: Option<&[Hash]>,
) -> Result<usize, StoreError> {
    let released = meta.release_placed_objects(hashes).await?;
    delete_objects(blobs, released).await
}

async fn release_placed_objects(
    client: &tokio_postgres::Client,
    hashes: Option<&[Hash]>,
) -> Result<Vec<Hash>, StoreError> {
    let rows = match hashes {
        Some(hashes) => {
            let keys: Vec<&[u8]> = hashes.iter().map(|h| h.as_bytes().as_slice()).collect();
            client
                .query(
                    "UPDATE chunks c SET in_object = false WHERE c.hash = ANY($1) AND c.in_object \
                         AND EXISTS (SELECT 1 FROM chunk_places p WHERE p.hash = c.hash FOR KEY SHARE) RETURNING c.hash",
                    &[&keys],
                )
                .await?
        }
        None => {
            client
                .query(
                    "UPDATE chunks c SET in_object = false WHERE c.in_object \
                         AND EXISTS (SELECT 1 FROM chunk_places p WHERE p.hash = c.hash FOR KEY SHARE) RETURNING c.hash",
                    &[],
                )
                .await?
        }
    };
    rows.iter().map(|r| hash_of(r.get(0))).collect()
}

/// What [`drop_placed_chunk_objects`] does for every chunk, on garbage
/// collection's connection.
pub(crate) async fn drop_placed_objects_with(
    client: &tokio_postgres::Client,
    blobs: &Blobs,
) -> Result<usize, StoreError> {
    let released = release_placed_objects(client, None).await?;
    delete_objects(blobs, released).await
}

async fn delete_objects(blobs: &Blobs, hashes: Vec<Hash>) -> Result<usize, StoreError> {
    let deleted = hashes.len();
    let results: Vec<Result<(), StoreError>> = futures::stream::iter(hashes)
        .map(|hash| async move { blobs.delete(crate::blobs::chunk_key(&hash)).await })
        .buffer_unordered(DELETE_CONCURRENCY)
        .collect()
        .await;
    // An object left behind (no row needs it) is collected later.
    results.into_iter().collect::<Result<Vec<()>, _>>()?;
    Ok(deleted)
}
