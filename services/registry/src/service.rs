//! The `ferry.registry.v1.Registry` gRPC service: prepare, upload, commit,
//! deploy. Protobuf types are converted and validated here, at the edge.

use std::collections::HashSet;
use std::pin::Pin;

use bytes::Bytes;
use ferry_proto::registry::v1 as pb;
use ferry_release::{CHUNK_MAX, Hash, Manifest, ManifestId, Name, parse_version};
use ferry_store::{ApiKey, Authenticated, Blobs, KeyRole, Meta};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, info};

use crate::error::RegistryError;

/// Chunks stored concurrently per upload stream.
const STORE_CONCURRENCY: usize = 8;
/// Files assembled concurrently per commit.
const ASSEMBLE_CONCURRENCY: usize = 4;

/// The registry's state: where metadata and bytes live.
#[derive(Clone)]
pub struct Registry {
    meta: Meta,
    blobs: Blobs,
}

impl Registry {
    pub fn new(meta: Meta, blobs: Blobs) -> Self {
        Self { meta, blobs }
    }

    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    pub fn blobs(&self) -> &Blobs {
        &self.blobs
    }

    /// Checks the bearer token is a live agent key of `tenant`.
    async fn authorize(&self, metadata: &MetadataMap, tenant: &str) -> Result<Authenticated, RegistryError> {
        let key = bearer_key(metadata)?;
        let tenant = parse_name("tenant", tenant)?;
        let auth = self
            .meta
            .authenticate(&key)
            .await?
            .ok_or_else(|| RegistryError::Unauthenticated("unknown or revoked api key".into()))?;
        if auth.role != KeyRole::Agent {
            return Err(RegistryError::PermissionDenied("this is a client key; publishing needs an agent key".into()));
        }
        if auth.tenant != tenant {
            return Err(RegistryError::PermissionDenied(format!("this agent key is not valid for tenant {tenant}")));
        }
        Ok(auth)
    }

    async fn app_id(&self, auth: &Authenticated, app: &str) -> Result<i64, RegistryError> {
        let app = parse_name("app", app)?;
        self.meta.app_id(auth.tenant_id, &app).await?.ok_or_else(|| {
            RegistryError::NotFound(format!(
                "app {}/{app} does not exist; create it with `ferry-registry admin create-app {} {app}`",
                auth.tenant, auth.tenant
            ))
        })
    }

    async fn prepare(
        &self,
        auth: &Authenticated,
        req: pb::PrepareReleaseRequest,
    ) -> Result<pb::PrepareReleaseResponse, RegistryError> {
        let app_id = self.app_id(auth, &req.app).await?;
        let manifest =
            Manifest::decode(&req.manifest).map_err(|e| RegistryError::InvalidArgument(format!("manifest: {e}")))?;
        let id = ManifestId(*blake3::hash(&req.manifest).as_bytes());
        let version = manifest.version.to_string();
        if let Some(existing) = self.meta.release_manifest(app_id, &version).await? {
            if existing != id {
                return Err(conflict(&version, auth, &req.app, existing));
            }
            return Ok(pb::PrepareReleaseResponse {
                manifest_id: id.0.to_vec(),
                missing_chunks: vec![],
                already_published: true,
            });
        }
        self.meta.save_manifest(auth.tenant_id, id, &req.manifest).await?;
        let chunks: Vec<Hash> = manifest.unique_chunks().iter().map(|c| c.hash).collect();
        let held = self.meta.tenant_chunks(auth.tenant_id, &chunks).await?;
        let missing: Vec<Vec<u8>> =
            chunks.iter().filter(|h| !held.contains(*h)).map(|h| h.as_bytes().to_vec()).collect();
        info!(%version, manifest = %id, chunks = chunks.len(), missing = missing.len(), "release prepared");
        Ok(pb::PrepareReleaseResponse { manifest_id: id.0.to_vec(), missing_chunks: missing, already_published: false })
    }

    /// Stores one verified chunk; returns whether the tenant gained it. The
    /// PUT happens even when the chunk is known: it is idempotent, and it
    /// repairs an object lost from the bucket.
    async fn store_chunk(&self, tenant_id: i64, hash: Hash, data: Bytes) -> Result<bool, RegistryError> {
        let len = data.len() as u32;
        self.blobs.put_chunk(&hash, data).await?;
        Ok(self.meta.record_chunk(tenant_id, &hash, len).await?)
    }

    async fn upload(
        &self,
        metadata: &MetadataMap,
        mut stream: Streaming<pb::UploadChunksRequest>,
    ) -> Result<pb::UploadChunksResponse, RegistryError> {
        let Some(first) = stream.message().await.map_err(stream_error)? else {
            return Ok(pb::UploadChunksResponse::default());
        };
        let auth = self.authorize(metadata, &first.tenant).await?;
        let mut response = pb::UploadChunksResponse::default();
        // Spawned, so stores keep going while the next message is awaited
        // (no half-done transaction waits on a slow client).
        let mut in_flight = tokio::task::JoinSet::new();
        let mut next = Some(first);
        while let Some(message) = next.take() {
            for chunk in message.chunks {
                let (hash, data) = verify_chunk(chunk)?;
                let len = data.len() as u64;
                let this = self.clone();
                in_flight
                    .spawn(async move { this.store_chunk(auth.tenant_id, hash, data).await.map(|new| (new, len)) });
                while in_flight.len() >= STORE_CONCURRENCY {
                    count(&mut response, joined(in_flight.join_next().await.expect("non-empty"))?);
                }
            }
            next = stream.message().await.map_err(stream_error)?;
        }
        while let Some(stored) = in_flight.join_next().await {
            count(&mut response, joined(stored)?);
        }
        info!(tenant = %auth.tenant, chunks = response.chunks_stored, bytes = response.bytes_stored, "chunks stored");
        Ok(response)
    }

    async fn commit(
        &self,
        auth: &Authenticated,
        req: pb::CommitReleaseRequest,
    ) -> Result<pb::CommitReleaseResponse, RegistryError> {
        let app_id = self.app_id(auth, &req.app).await?;
        let id = ManifestId::from_slice(&req.manifest_id)
            .ok_or_else(|| RegistryError::InvalidArgument("manifest_id must be 32 bytes".into()))?;
        let body = self.meta.load_manifest(auth.tenant_id, id).await?.ok_or_else(|| {
            RegistryError::NotFound(format!(
                "manifest {id} was not prepared for tenant {}; call PrepareRelease first",
                auth.tenant
            ))
        })?;
        let manifest = Manifest::decode(&body)
            .map_err(|e| RegistryError::Store(ferry_store::StoreError::Integrity(e.to_string())))?;
        let version = manifest.version.to_string();
        match self.meta.release_manifest(app_id, &version).await? {
            Some(existing) if existing == id => {} // a retried commit: nothing to assemble
            Some(existing) => return Err(conflict(&version, auth, &req.app, existing)),
            None => self.assemble(auth, &manifest).await?,
        }
        let outcome = self.meta.commit_release(auth.tenant_id, app_id, &version, id, req.deploy).await?;
        info!(%version, manifest = %id, created = outcome.created, deployed = outcome.deployed, "release committed");
        Ok(pb::CommitReleaseResponse { version, created: outcome.created, deployed: outcome.deployed })
    }

    /// Makes sure every file of `manifest` is assembled in S3, after checking
    /// the tenant uploaded (or holds) every chunk.
    async fn assemble(&self, auth: &Authenticated, manifest: &Manifest) -> Result<(), RegistryError> {
        let chunks: Vec<Hash> = manifest.unique_chunks().iter().map(|c| c.hash).collect();
        let held = self.meta.tenant_chunks(auth.tenant_id, &chunks).await?;
        let missing = chunks.iter().filter(|h| !held.contains(*h)).count();
        if missing > 0 {
            return Err(RegistryError::FailedPrecondition(format!(
                "{missing} of {} chunks are not uploaded yet; upload them before committing",
                chunks.len()
            )));
        }
        let mut seen = HashSet::new();
        let files: Vec<_> = manifest.files().filter(|f| seen.insert(f.hash)).collect();
        let hashes: Vec<Hash> = files.iter().map(|f| f.hash).collect();
        let proved = self.meta.tenant_files(auth.tenant_id, &hashes).await?;
        let stored = self.meta.files_stored(&hashes).await?;
        let mut pending = files.into_iter().filter(|f| !proved.contains(&f.hash)).cloned();
        // Spawned tasks, so assembling (hashing, S3 I/O) uses every core.
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            while tasks.len() < ASSEMBLE_CONCURRENCY {
                let Some(file) = pending.next() else { break };
                let (this, tenant_id) = (self.clone(), auth.tenant_id);
                // A file someone else assembled is only checked: this
                // tenant's chunks must rebuild it before its release may use
                // it, so a hash alone reveals or grants nothing.
                let exists = stored.contains(&file.hash);
                tasks.spawn(async move {
                    if exists {
                        this.blobs.verify_file(&file).await?;
                    } else {
                        this.blobs.assemble_file(&file).await?;
                    }
                    this.meta.record_file(tenant_id, &file.hash, file.size).await?;
                    Ok::<_, RegistryError>(())
                });
            }
            match tasks.join_next().await {
                Some(done) => joined(done)?,
                None => return Ok(()),
            }
        }
    }

    async fn deploy(&self, auth: &Authenticated, req: pb::DeployRequest) -> Result<pb::DeployResponse, RegistryError> {
        let app_id = self.app_id(auth, &req.app).await?;
        let version =
            parse_version(&req.version).map_err(|e| RegistryError::InvalidArgument(e.to_string()))?.to_string();
        let outcome = self.meta.deploy(app_id, &version).await?;
        info!(%version, previous = ?outcome.previous, "deployed");
        Ok(pb::DeployResponse { version, previous_version: outcome.previous.unwrap_or_default() })
    }
}

/// The result of a spawned task; a panic is an internal error.
fn joined<T>(result: Result<Result<T, RegistryError>, tokio::task::JoinError>) -> Result<T, RegistryError> {
    result.map_err(|e| RegistryError::Store(ferry_store::StoreError::Integrity(format!("task failed: {e}"))))?
}

fn conflict(version: &str, auth: &Authenticated, app: &str, existing: ManifestId) -> RegistryError {
    RegistryError::Store(ferry_store::StoreError::Conflict(format!(
        "version {version} of {}/{app} is already published with different content (manifest {existing}); \
         versions are immutable, publish a new version instead",
        auth.tenant
    )))
}

fn count(response: &mut pb::UploadChunksResponse, (new, len): (bool, u64)) {
    if new {
        response.chunks_stored += 1;
        response.bytes_stored += len;
    }
}

fn verify_chunk(chunk: pb::Chunk) -> Result<(Hash, Bytes), RegistryError> {
    let claimed = <[u8; 32]>::try_from(chunk.hash.as_slice())
        .map(Hash::from_bytes)
        .map_err(|_| RegistryError::InvalidArgument("chunk hash must be 32 bytes".into()))?;
    if chunk.data.is_empty() || chunk.data.len() > CHUNK_MAX {
        return Err(RegistryError::InvalidArgument(format!(
            "chunk {claimed} has {} bytes; chunks have 1 to {CHUNK_MAX}",
            chunk.data.len()
        )));
    }
    let actual = blake3::hash(&chunk.data);
    if actual != claimed {
        return Err(RegistryError::InvalidArgument(format!(
            "chunk {claimed}: its bytes hash to {actual}; nothing of it was stored"
        )));
    }
    Ok((claimed, Bytes::from(chunk.data)))
}

fn stream_error(status: Status) -> RegistryError {
    RegistryError::Aborted(format!("upload stream broke: {}", status.message()))
}

pub(crate) fn parse_name(what: &'static str, value: &str) -> Result<Name, RegistryError> {
    Name::parse(what, value).map_err(|e| RegistryError::InvalidArgument(e.to_string()))
}

/// The API key in `authorization: Bearer <key>`.
fn bearer_key(metadata: &MetadataMap) -> Result<ApiKey, RegistryError> {
    let value = metadata
        .get("authorization")
        .ok_or_else(|| RegistryError::Unauthenticated("missing authorization metadata (Bearer <agent key>)".into()))?;
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| RegistryError::Unauthenticated("authorization must be `Bearer <agent key>`".into()))?;
    ApiKey::parse(token).map_err(|e| RegistryError::Unauthenticated(e.to_string()))
}

/// Refuses calls without a well-formed key before their (possibly large)
/// message is decoded; the key itself is checked in the handler.
pub(crate) fn require_bearer(req: Request<()>) -> Result<Request<()>, Status> {
    bearer_key(req.metadata()).map_err(Status::from)?;
    Ok(req)
}

type UploadResult = Result<Response<pb::UploadChunksResponse>, Status>;

#[tonic::async_trait]
impl pb::registry_server::Registry for Registry {
    async fn prepare_release(
        &self,
        request: Request<pb::PrepareReleaseRequest>,
    ) -> Result<Response<pb::PrepareReleaseResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        let span = tracing::info_span!("prepare_release", tenant = %req.tenant, app = %req.app);
        async {
            let auth = self.authorize(&metadata, &req.tenant).await?;
            Ok(Response::new(self.prepare(&auth, req).await?))
        }
        .instrument(span)
        .await
        .map_err(|e: RegistryError| e.into())
    }

    async fn upload_chunks(&self, request: Request<Streaming<pb::UploadChunksRequest>>) -> UploadResult {
        let (metadata, _, stream) = request.into_parts();
        let fut: Pin<Box<dyn Future<Output = _> + Send + '_>> = Box::pin(self.upload(&metadata, stream));
        fut.instrument(tracing::info_span!("upload_chunks")).await.map(Response::new).map_err(Into::into)
    }

    async fn commit_release(
        &self,
        request: Request<pb::CommitReleaseRequest>,
    ) -> Result<Response<pb::CommitReleaseResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        let span = tracing::info_span!("commit_release", tenant = %req.tenant, app = %req.app);
        async {
            let auth = self.authorize(&metadata, &req.tenant).await?;
            Ok(Response::new(self.commit(&auth, req).await?))
        }
        .instrument(span)
        .await
        .map_err(|e: RegistryError| e.into())
    }

    async fn deploy(&self, request: Request<pb::DeployRequest>) -> Result<Response<pb::DeployResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        let span = tracing::info_span!("deploy", tenant = %req.tenant, app = %req.app, version = %req.version);
        async {
            let auth = self.authorize(&metadata, &req.tenant).await?;
            Ok(Response::new(Registry::deploy(self, &auth, req).await?))
        }
        .instrument(span)
        .await
        .map_err(|e: RegistryError| e.into())
    }
}
