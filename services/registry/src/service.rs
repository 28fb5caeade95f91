//! The `ferry.registry.v1.Registry` gRPC service: prepare, upload, commit,
//! deploy. Protobuf types are converted and validated here, at the edge.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use ferry_auth::Caller;
use ferry_proto::registry::v1 as pb;
use ferry_release::{CHUNK_MAX, Hash, Manifest, ManifestId, Name, Version, Versioning};
use ferry_store::{Authenticated, Blobs, CommitOptions, KeyRole, Meta};
use futures::StreamExt;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, info};

use crate::error::RegistryError;
use crate::metrics::Metrics;

/// Chunks stored concurrently per upload stream.
pub(crate) const STORE_CONCURRENCY: usize = 8;
/// Files assembled concurrently per commit.
const ASSEMBLE_CONCURRENCY: usize = 4;

/// The largest upload message accepted (the agent sends about 1 MiB).
pub(crate) const MAX_UPLOAD_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// The most files a release may hold: every check answer lists them (about
/// 550 bytes each), so this bounds answers too.
pub const MAX_RELEASE_FILES: usize = 50_000;

/// Tunables; defaults are what README documents.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// Timeouts and limits of the gRPC listener.
    pub listener: ferry_net::Limits,
    /// Limits on lookups of agent and publisher keys that do not exist. Found keys are
    /// not cached (agent calls are few), so a revocation holds at once.
    pub auth: ferry_auth::MissLimits,
    /// How often garbage is collected (`None`: never, by this replica).
    pub gc_interval: Option<std::time::Duration>,
    /// What is younger than this is never collected; longer than any
    /// publish takes.
    pub gc_grace: std::time::Duration,
    /// Folding failure reports into alerts and delivering them (`None`:
    /// not on this replica).
    pub alerts: Option<ferry_alerts::AlertSettings>,
    /// Reports older than this are deleted (with garbage collection).
    pub report_retention: std::time::Duration,
    /// Binary patches: which to make on a deploy, and workers making them.
    pub patches: crate::patcher::PatchSettings,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        Self {
            listener: ferry_net::Limits::default(),
            auth: ferry_auth::MissLimits { found_ttl: None, ..ferry_auth::MissLimits::default() },
            gc_interval: Some(std::time::Duration::from_secs(3600)),
            gc_grace: std::time::Duration::from_secs(24 * 3600),
            alerts: Some(ferry_alerts::AlertSettings::default()),
            report_retention: std::time::Duration::from_secs(90 * 24 * 3600),
            patches: crate::patcher::PatchSettings::default(),
        }
    }
}

/// The registry's state: where metadata and bytes live.
#[derive(Clone)]
pub struct Registry {
    meta: Meta,
    blobs: Blobs,
    keys: ferry_auth::Keys,
    settings: RegistrySettings,
    metrics: std::sync::Arc<Metrics>,
    lifecycle: ferry_net::Lifecycle,
    /// Delta runs decoded at once (`delta.rs`).
    delta_permits: Arc<tokio::sync::Semaphore>,
}

/// A caller allowed to act for one tenant.
pub(crate) struct Actor {
    /// The tenant acted for, and the key.
    pub(crate) auth: Authenticated,
    /// Whose holdings count as the caller's: its own tenant's, or every
    /// tenant a publisher key publishes for (it knows all their content).
    scope: Vec<i64>,
    publisher: bool,
}

impl Actor {
    /// An operator of the registry acting for `tenant` (`admin import`):
    /// what it holds is the tenant's alone, as for the tenant's agent.
    pub(crate) fn operator(tenant_id: i64, tenant: Name, what: &str) -> Self {
        let auth = Authenticated { key_id: what.to_owned(), tenant_id, tenant, role: KeyRole::Agent };
        Self { scope: vec![tenant_id], publisher: false, auth }
    }
}

impl Registry {
    /// A registry with default settings (call inside a Tokio runtime).
    pub fn new(meta: Meta, blobs: Blobs) -> Self {
        Self::with_settings(meta, blobs, RegistrySettings::default())
    }

    pub fn with_settings(meta: Meta, blobs: Blobs, settings: RegistrySettings) -> Self {
        let keys = ferry_auth::Keys::new(meta.clone(), settings.auth);
        Self {
            meta,
            blobs,
            keys,
            settings,
            metrics: Default::default(),
            lifecycle: ferry_net::Lifecycle::new(),
            delta_permits: Arc::new(tokio::sync::Semaphore::new(crate::delta::DECODES_AT_ONCE)),
        }
    }

    /// The same registry following `lifecycle` (shared with the other
    /// listeners of its process).
    pub fn with_lifecycle(self, lifecycle: ferry_net::Lifecycle) -> Self {
        Self { lifecycle, ..self }
    }

    /// Serving, draining or stopping: what readiness reports.
    pub fn lifecycle(&self) -> &ferry_net::Lifecycle {
        &self.lifecycle
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Whether this replica should take new work: not draining, and
    /// PostgreSQL and S3 answer (within 3 seconds); else why not.
    pub async fn readiness(&self) -> Result<(), String> {
        if !self.lifecycle.is_ready() {
            return Err("shutting down".into());
        }
        let check = async {
            self.meta.ping().await.map_err(|e| format!("postgresql: {e}"))?;
            self.blobs.ping().await.map_err(|e| format!("s3: {e}"))
        };
        tokio::time::timeout(std::time::Duration::from_secs(3), check)
            .await
            .map_err(|_| "postgresql or s3 did not answer within 3 s".to_owned())?
    }

    pub fn settings(&self) -> &RegistrySettings {
        &self.settings
    }

    pub(crate) fn keys(&self) -> &ferry_auth::Keys {
        &self.keys
    }

    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    pub fn blobs(&self) -> &Blobs {
        &self.blobs
    }

    pub(crate) fn delta_permits(&self) -> &tokio::sync::Semaphore {
        &self.delta_permits
    }

    /// Checks the caller (authenticated before its message was decoded, see
    /// `auth.rs`) may publish for `tenant`: an agent key of `tenant`, or a
    /// publisher key issued for it.
    async fn authorize(
        &self,
        extensions: &tonic::Extensions,
        metadata: &MetadataMap,
        tenant: &str,
    ) -> Result<Actor, RegistryError> {
        let tenant = parse_name("tenant", tenant)?;
        match self.caller(extensions, metadata).await? {
            Caller::Tenant(auth) if auth.role != KeyRole::Agent => Err(RegistryError::PermissionDenied(format!(
                "this is {} {} key; publishing needs an agent or publisher key",
                if auth.role == KeyRole::Client { "a" } else { "an" },
                auth.role
            ))),
            Caller::Tenant(auth) if auth.tenant != tenant => {
                Err(RegistryError::PermissionDenied(format!("this agent key is not valid for tenant {tenant}")))
            }
            Caller::Tenant(auth) => Ok(Actor { scope: vec![auth.tenant_id], publisher: false, auth }),
            Caller::Publisher(record) => {
                let Some(tenant_id) = record.tenant_id(&tenant) else {
                    return Err(RegistryError::PermissionDenied(format!(
                        "this publisher key is not valid for tenant {tenant}; it publishes for {}",
                        record.tenants.iter().map(|(_, n)| n.as_str()).collect::<Vec<_>>().join(", ")
                    )));
                };
                let auth = Authenticated { key_id: record.key_id.clone(), tenant_id, tenant, role: KeyRole::Publisher };
                Ok(Actor { scope: record.tenant_ids(), publisher: true, auth })
            }
        }
    }

    /// Who is calling: as the authentication layer found, or (for a service
    /// used without it) looked up now.
    async fn caller(&self, extensions: &tonic::Extensions, metadata: &MetadataMap) -> Result<Caller, RegistryError> {
        if let Some(caller) = extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        let header = metadata.get("authorization").and_then(|v| v.to_str().ok());
        self.keys.authenticate_caller(header, None).await.map_err(RegistryError::from)
    }

    async fn identity(
        &self,
        extensions: &tonic::Extensions,
        metadata: &MetadataMap,
    ) -> Result<pb::IdentityResponse, RegistryError> {
        Ok(match self.caller(extensions, metadata).await? {
            Caller::Tenant(auth) if auth.role != KeyRole::Agent => {
                return Err(RegistryError::PermissionDenied(format!(
                    "this is a {} key; the registry's API takes agent and publisher keys",
                    auth.role
                )));
            }
            Caller::Tenant(auth) => pb::IdentityResponse {
                role: auth.role.to_string(),
                key_id: auth.key_id,
                tenants: vec![auth.tenant.to_string()],
            },
            Caller::Publisher(record) => pb::IdentityResponse {
                role: KeyRole::Publisher.to_string(),
                key_id: record.key_id,
                tenants: record.tenants.into_iter().map(|(_, name)| name.to_string()).collect(),
            },
        })
    }

    pub(crate) async fn app_id(&self, auth: &Authenticated, app: &str) -> Result<i64, RegistryError> {
        Ok(self.app(auth, app).await?.id)
    }

    /// How a version is spelled among the app's releases (`1.0` of a
    /// dotted app is the published `1.0.0`), or as given when none is.
    pub(crate) async fn published_spelling(&self, app_id: i64, version: &Version) -> Result<String, RegistryError> {
        Ok(match self.meta.release_like(app_id, version).await? {
            Some((stored, _)) => stored,
            None => version.to_string(),
        })
    }

    /// The app (its id and version scheme), or NOT_FOUND naming how to
    /// create it.
    pub(crate) async fn app(&self, auth: &Authenticated, app: &str) -> Result<AppRef, RegistryError> {
        let name = parse_name("app", app)?;
        let found = self.meta.app(auth.tenant_id, &name).await?;
        let app = name;
        found.map(|(id, versioning)| AppRef { id, versioning, name: format!("{}/{app}", auth.tenant) }).ok_or_else(
            || {
                RegistryError::NotFound(format!(
                    "app {}/{app} does not exist; create it with `ferry-registry admin create-app {} {app}`",
                    auth.tenant, auth.tenant
                ))
            },
        )
    }

    pub(crate) async fn prepare(
        &self,
        actor: &Actor,
        req: pb::PrepareReleaseRequest,
    ) -> Result<pb::PrepareReleaseResponse, RegistryError> {
        let auth = &actor.auth;
        let app = self.app(auth, &req.app).await?;
        let app_id = app.id;
        let manifest =
            Manifest::decode(&req.manifest).map_err(|e| RegistryError::InvalidArgument(format!("manifest: {e}")))?;
        app.check(&manifest.version)?;
        let id = ManifestId(*blake3::hash(&req.manifest).as_bytes());
        check_owner(auth, &req.app, &manifest)?;
        let files = manifest.files().count();
        if files > MAX_RELEASE_FILES {
            return Err(RegistryError::InvalidArgument(format!(
                "manifest: the release has {files} files; at most {MAX_RELEASE_FILES} are accepted"
            )));
        }
        let version = manifest.version.to_string();
        if let Some(existing) = self.meta.release_like(app_id, &manifest.version).await? {
            ferry_store::ensure_same_release(&existing, &manifest.version, id)?;
            return Ok(pb::PrepareReleaseResponse {
                manifest_id: id.0.to_vec(),
                missing_chunks: vec![],
                already_published: true,
            });
        }
        self.meta.save_manifest(auth.tenant_id, &ferry_store::SavedManifest::of(&manifest, &req.manifest)).await?;
        let chunks: Vec<Hash> = manifest.unique_chunks().iter().map(|c| c.hash).collect();
        // A publisher's tenants' chunks are claimed for this one: sent once,
        // stored once. An agent learns only what its own tenant holds.
        let held = if actor.publisher {
            self.meta.claim_chunks(auth.tenant_id, &actor.scope, &chunks).await?
        } else {
            self.meta.tenant_chunks(auth.tenant_id, &chunks).await?
        };
        let reused: u64 =
            manifest.unique_chunks().iter().filter(|c| held.contains(&c.hash)).map(|c| u64::from(c.len)).sum();
        self.metrics.reused(reused);
        let missing: Vec<Vec<u8>> =
            chunks.iter().filter(|h| !held.contains(*h)).map(|h| h.as_bytes().to_vec()).collect();
        info!(%version, manifest = %id, chunks = chunks.len(), missing = missing.len(), "release prepared");
        Ok(pb::PrepareReleaseResponse { manifest_id: id.0.to_vec(), missing_chunks: missing, already_published: false })
    }

    /// Stores one verified chunk; returns whether the tenant gained it. A
    /// chunk whose bytes are already in an assembled file is only claimed
    /// (nothing is written); otherwise the PUT happens even when the chunk
    /// is known: it is idempotent, and it repairs an object lost from the
    /// bucket.
    pub(crate) async fn store_chunk(&self, tenant_id: i64, hash: Hash, data: Bytes) -> Result<bool, RegistryError> {
        if let Some(new) = self.meta.claim_placed_chunk(tenant_id, &hash).await? {
            return Ok(new);
        }
        let len = data.len() as u32;
        self.blobs.put_chunk(&hash, data).await?;
        Ok(self.meta.record_chunk(tenant_id, &hash, len).await?)
    }

    async fn upload(
        &self,
        extensions: &tonic::Extensions,
        metadata: &MetadataMap,
        mut stream: Streaming<pb::UploadChunksRequest>,
    ) -> Result<pb::UploadChunksResponse, RegistryError> {
        // A key is required even for an empty stream.
        self.caller(extensions, metadata).await?;
        let Some(first) = stream.message().await.map_err(stream_error)? else {
            return Ok(pb::UploadChunksResponse::default());
        };
        let auth = self.authorize(extensions, metadata, &first.tenant).await?.auth;
        let mut response = pb::UploadChunksResponse::default();
        // Spawned, so stores keep going while the next message is awaited
        // (no half-done transaction waits on a slow client), and detached:
        // if the client goes away and this call is dropped, the stores in
        // flight still finish (object and row), so what arrived is kept.
        let mut in_flight = futures::stream::FuturesUnordered::new();
        let received = async {
            let mut next = Some(first);
            while let Some(message) = next.take() {
                let size = prost::Message::encoded_len(&message);
                if size > MAX_UPLOAD_MESSAGE_BYTES {
                    return Err(RegistryError::InvalidArgument(format!(
                        "an upload message has {size} bytes; at most {MAX_UPLOAD_MESSAGE_BYTES} are accepted"
                    )));
                }
                for chunk in message.chunks {
                    let (hash, data) = verify_chunk(chunk)?;
                    let len = data.len() as u64;
                    self.metrics.received(len);
                    let this = self.clone();
                    in_flight.push(tokio::spawn(async move {
                        this.store_chunk(auth.tenant_id, hash, data).await.map(|new| vec![(new, len)])
                    }));
                    while in_flight.len() >= STORE_CONCURRENCY {
                        count(&mut response, joined(in_flight.next().await.expect("non-empty"))?);
                    }
                }
                if message.runs.len() > crate::delta::MAX_RUNS_PER_MESSAGE {
                    return Err(RegistryError::InvalidArgument(format!(
                        "delta run: {} runs in one message; at most {}",
                        message.runs.len(),
                        crate::delta::MAX_RUNS_PER_MESSAGE
                    )));
                }
                for run in message.runs {
                    let this = self.clone();
                    in_flight.push(tokio::spawn(async move {
                        let chunks = crate::delta::decode_run(&this, auth.tenant_id, run).await?;
                        this.metrics.received(chunks.iter().map(|(_, d)| d.len() as u64).sum());
                        let mut stored = Vec::with_capacity(chunks.len());
                        for (hash, data) in chunks {
                            let len = data.len() as u64;
                            stored.push((this.store_chunk(auth.tenant_id, hash, data).await?, len));
                        }
                        Ok(stored)
                    }));
                    while in_flight.len() >= STORE_CONCURRENCY {
                        count(&mut response, joined(in_flight.next().await.expect("non-empty"))?);
                    }
                }
                next = stream.message().await.map_err(stream_error)?;
            }
            Ok(())
        }
        .await;
        // Whatever happened (a bad chunk, a broken stream), every chunk
        // received before it is stored before the call ends, as the
        // protocol promises: a retry sends only what is still missing.
        let mut stored = Ok(());
        while let Some(done) = in_flight.next().await {
            match joined(done) {
                Ok(new) => count(&mut response, new),
                Err(e) => stored = stored.and(Err(e)),
            }
        }
        received?;
        stored?;
        info!(tenant = %auth.tenant, chunks = response.chunks_stored, bytes = response.bytes_stored, "chunks stored");
        Ok(response)
    }

    pub(crate) async fn commit(
        &self,
        actor: &Actor,
        req: pb::CommitReleaseRequest,
    ) -> Result<pb::CommitReleaseResponse, RegistryError> {
        let auth = &actor.auth;
        let app = self.app(auth, &req.app).await?;
        let app_id = app.id;
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
        // Manifests are stored per tenant, not per app: one prepared for
        // another app of the tenant must not become this app's release.
        check_owner(auth, &req.app, &manifest)?;
        // Refused before anything is assembled.
        app.check(&manifest.version)?;
        let compatible = app.compatible(&req.compatible)?;
        // In use: garbage collection leaves it (and its chunks) alone.
        self.meta.touch_manifest(auth.tenant_id, id).await?;
        let version = manifest.version.to_string();
        // Where this release's files go (S1-9), read once: the release
        // records the location its files were assembled at.
        let location = self.meta.tenant_location(auth.tenant_id).await?;
        // A location in the registry's own bucket without a prefix differs
        // only in the host its URLs name: its files are the registry's own
        // (and garbage collection sees them as such).
        let stored_at = location.as_ref().filter(|l| !(l.bucket == self.blobs.bucket() && l.prefix.is_empty()));
        match self.meta.release_like(app_id, &manifest.version).await? {
            // A retried commit: nothing to assemble.
            Some(existing) => ferry_store::ensure_same_release(&existing, &manifest.version, id)?,
            None => self.assemble(actor, &manifest, stored_at).await?,
        }
        let options = CommitOptions {
            deploy: req.deploy,
            compatible: compatible.as_deref(),
            location_id: location.as_ref().map(|l| l.id),
        };
        // Before the release (or its deploy) is visible: a client told of it
        // at once finds its patches and compressed files queued (and its
        // answer rechecked soon). Patches only for a deploy.
        self.plan_patches(auth.tenant_id, app_id, id, location.as_ref().map(|l| l.id), req.deploy).await;
        let outcome = self.meta.commit_release(auth.tenant_id, app_id, &manifest.version, id, options).await?;
        info!(%version, manifest = %id, created = outcome.created, deployed = outcome.deployed, "release committed");
        // Its chunks' bytes are in its files now: their own objects go
        // (anything missed here, garbage collection deletes).
        let chunks: Vec<Hash> = manifest.unique_chunks().iter().map(|c| c.hash).collect();
        match ferry_store::drop_placed_chunk_objects(&self.meta, &self.blobs, Some(&chunks)).await {
            Ok(dropped) => tracing::debug!(dropped, "chunk objects dropped: their bytes are in files"),
            Err(e) => {
                tracing::warn!(error = %ferry_proto::error_chain(&e), "dropping chunk objects failed; garbage collection will")
            }
        }
        Ok(pb::CommitReleaseResponse { version, created: outcome.created, deployed: outcome.deployed })
    }

    /// Makes sure every file of `manifest` is assembled in S3 (at the
    /// tenant's location, if it has one), after checking the tenant
    /// uploaded (or holds) every chunk.
    async fn assemble(
        &self,
        actor: &Actor,
        manifest: &Manifest,
        location: Option<&ferry_store::Location>,
    ) -> Result<(), RegistryError> {
        let auth = &actor.auth;
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
        let (stored, proved) = match location {
            Some(location) => self.meta.location_files(location.id, auth.tenant_id, &hashes).await?,
            // What one of a publisher's tenants proved, the publisher did.
            None if actor.publisher => {
                (self.meta.files_stored(&hashes).await?, self.meta.scope_files(&actor.scope, &hashes).await?)
            }
            None => (self.meta.files_stored(&hashes).await?, self.meta.tenant_files(auth.tenant_id, &hashes).await?),
        };
        let blobs = self.blobs.at(location);
        let location_id = location.map(|l| l.id);
        // Where each chunk's bytes are: in its own object, or in a file.
        let sources = Arc::new(self.meta.chunk_sources(&chunks).await?);
        // A publisher's files are all recorded for this tenant (those its
        // scope proved, without reading them again).
        let mut pending = files.into_iter().filter(|f| actor.publisher || !proved.contains(&f.hash)).cloned();
        // Spawned tasks, so assembling (hashing, S3 I/O) uses every core.
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            while tasks.len() < ASSEMBLE_CONCURRENCY {
                let Some(file) = pending.next() else { break };
                let (this, blobs, tenant_id) = (self.clone(), blobs.clone(), auth.tenant_id);
                // A file someone else assembled is only checked: this
                // tenant's chunks must rebuild it before its release may use
                // it, so a hash alone reveals or grants nothing.
                let (exists, proved) = (stored.contains(&file.hash), proved.contains(&file.hash));
                let sources = sources.clone();
                tasks.spawn(async move {
                    if !proved {
                        this.rebuild_file(&blobs, &file, exists, &sources).await?;
                    }
                    match location_id {
                        Some(location_id) => {
                            this.meta.record_location_file(location_id, tenant_id, &file.hash, file.size).await?
                        }
                        None => this.meta.record_file(tenant_id, &file.hash, file.size).await?,
                    }
                    // Written from checked chunks just now: where its chunks
                    // are in it (only in the registry's bucket, where later
                    // assemblies read them). A file that existed is not read
                    // here, so it places nothing.
                    if !proved && !exists && location_id.is_none() {
                        let mut offset = 0u64;
                        let places: Vec<(Hash, u64)> = file
                            .chunks
                            .iter()
                            .map(|c| {
                                let at = offset;
                                offset += u64::from(c.len);
                                (c.hash, at)
                            })
                            .collect();
                        this.meta.record_places(&file.hash, &places).await?;
                    }
                    Ok::<_, RegistryError>(())
                });
            }
            match tasks.join_next().await {
                Some(done) => joined(done)?,
                None => return Ok(()),
            }
        }
    }

    /// Assembles `file` (or, when it `exists`, checks that the chunks
    /// rebuild it). A chunk object deleted meanwhile (another commit
    /// placed it in a file) makes it look its chunks up once more.
    async fn rebuild_file(
        &self,
        blobs: &ferry_store::Blobs,
        file: &ferry_release::FileEntry,
        exists: bool,
        sources: &HashMap<Hash, ferry_store::ChunkSource>,
    ) -> Result<(), RegistryError> {
        let first = match exists {
            true => blobs.verify_file(file, sources).await,
            false => blobs.assemble_file(file, sources).await,
        };
        if !matches!(first, Err(ferry_store::StoreError::NotFound(_))) {
            return Ok(first?);
        }
        let hashes: Vec<Hash> = file.chunks.iter().map(|c| c.hash).collect();
        let fresh = self.meta.chunk_sources(&hashes).await?;
        match exists {
            true => Ok(blobs.verify_file(file, &fresh).await?),
            false => Ok(blobs.assemble_file(file, &fresh).await?),
        }
    }

    /// Queues the compressed files of a release committed and, when it is
    /// being deployed, the patches clients need to move to it. A failure is
    /// logged, never the commit's or deploy's: clients then download whole
    /// files, as without patches.
    async fn plan_patches(
        &self,
        tenant_id: i64,
        app_id: i64,
        target: ManifestId,
        location_id: Option<i64>,
        deploying: bool,
    ) {
        let bases = if deploying { self.settings.patches.bases } else { 0 };
        match crate::patcher::plan(self, tenant_id, app_id, target, location_id, bases).await {
            Ok(queued) => info!(queued, "patches queued"),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "queueing patches failed; clients get whole files"),
        }
    }

    async fn deploy(&self, actor: &Actor, req: pb::DeployRequest) -> Result<pb::DeployResponse, RegistryError> {
        let auth = &actor.auth;
        let app = self.app(auth, &req.app).await?;
        let app_id = app.id;
        let version = self.published_spelling(app_id, &app.version(&req.version)?).await?;
        let compatible = app.compatible(&req.compatible)?;
        // Before the deploy is visible (see commit).
        if let Some((tenant_id, manifest, location_id)) = self.meta.release_at(app_id, &version).await? {
            self.plan_patches(tenant_id, app_id, manifest, location_id, true).await;
        }
        let outcome = self.meta.deploy(app_id, &version, compatible.as_deref()).await?;
        info!(%version, previous = ?outcome.previous, "deployed");
        Ok(pb::DeployResponse { version, previous_version: outcome.previous.unwrap_or_default() })
    }
}

/// The result of a spawned task; a panic is an internal error.
fn joined<T>(result: Result<Result<T, RegistryError>, tokio::task::JoinError>) -> Result<T, RegistryError> {
    result.map_err(|e| RegistryError::Store(ferry_store::StoreError::Integrity(format!("task failed: {e}"))))?
}

fn count(response: &mut pb::UploadChunksResponse, stored: Vec<(bool, u64)>) {
    for (new, len) in stored {
        if new {
            response.chunks_stored += 1;
            response.bytes_stored += len;
        }
    }
}

pub(crate) fn verify_chunk(chunk: pb::Chunk) -> Result<(Hash, Bytes), RegistryError> {
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

/// An app as a call names it: its id and version scheme.
pub(crate) struct AppRef {
    pub(crate) id: i64,
    pub(crate) versioning: Versioning,
    /// `tenant/app`, for messages.
    name: String,
}

impl AppRef {
    /// Refuses a version the app's scheme does not accept.
    pub(crate) fn check(&self, version: &Version) -> Result<(), RegistryError> {
        version.conforms(self.versioning).map_err(|e| self.scheme_error(e))
    }

    /// Parses a version of this app.
    pub(crate) fn version(&self, text: &str) -> Result<Version, RegistryError> {
        Version::parse(self.versioning, text).map_err(|e| self.scheme_error(e))
    }

    fn scheme_error(&self, e: ferry_release::VersionError) -> RegistryError {
        RegistryError::InvalidArgument(format!(
            "{e}: app {} uses {} versioning ({})",
            self.name,
            self.versioning,
            self.versioning.example()
        ))
    }

    /// A release's compatible client versions: a semver requirement, so
    /// only for semver apps.
    pub(crate) fn compatible(&self, value: &str) -> Result<Option<String>, RegistryError> {
        let parsed = parse_compatible(value)?;
        if parsed.is_some() && self.versioning != Versioning::Semver {
            return Err(RegistryError::InvalidArgument(format!(
                "compatible: app {} uses {} versioning; compatible client versions are a semver requirement, for \
                 semver apps only (leave it out: every other version must update)",
                self.name, self.versioning
            )));
        }
        Ok(parsed)
    }
}

/// A release's compatible client versions: a semver requirement (`>=2.4.0,
/// <2.5.0`), stored in its canonical spelling; empty means not given.
fn parse_compatible(value: &str) -> Result<Option<String>, RegistryError> {
    if value.trim().is_empty() {
        return Ok(None);
    }
    if value.len() > 256 {
        return Err(RegistryError::InvalidArgument("compatible: longer than 256 bytes".into()));
    }
    let req = semver::VersionReq::parse(value).map_err(|e| {
        RegistryError::InvalidArgument(format!(
            "compatible: {} is not a semver requirement such as \">=2.4.0, <2.5.0\": {e}",
            ferry_release::Quoted(value)
        ))
    })?;
    Ok(Some(req.to_string()))
}

pub(crate) fn parse_name(what: &'static str, value: &str) -> Result<Name, RegistryError> {
    Name::parse(what, value).map_err(|e| RegistryError::InvalidArgument(e.to_string()))
}

type UploadResult = Result<Response<pb::UploadChunksResponse>, Status>;

/// A manifest naming an owner must name the publishing tenant and app
/// (S1-8): clients refuse a release that is not their own, so one published
/// under the wrong name would be refused by every device. Manifests of
/// format 1 (written by older agents) name none and are accepted.
fn check_owner(auth: &Authenticated, app: &str, manifest: &Manifest) -> Result<(), RegistryError> {
    match &manifest.owner {
        Some(owner) if owner.tenant != auth.tenant || owner.app.as_str() != app => {
            Err(RegistryError::InvalidArgument(format!(
                "manifest: it names {}/{} as its owner, but it is published as {}/{app}",
                owner.tenant, owner.app, auth.tenant
            )))
        }
        _ => Ok(()),
    }
}

/// Makes the agent's trace context (W3C, in the call's metadata) the
/// parent of the span serving the call.
fn adopt_parent(span: &tracing::Span, metadata: &MetadataMap) {
    ferry_telemetry::adopt_parent(span, |name| metadata.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned));
}

#[tonic::async_trait]
impl pb::registry_server::Registry for Registry {
    async fn prepare_release(
        &self,
        request: Request<pb::PrepareReleaseRequest>,
    ) -> Result<Response<pb::PrepareReleaseResponse>, Status> {
        let started = Instant::now();
        let (metadata, extensions, req) = request.into_parts();
        let span = tracing::info_span!("prepare_release", tenant = %req.tenant, app = %req.app);
        adopt_parent(&span, &metadata);
        let result = async {
            let auth = self.authorize(&extensions, &metadata, &req.tenant).await?;
            Ok(Response::new(self.prepare(&auth, req).await?))
        }
        .instrument(span)
        .await
        .map_err(|e: RegistryError| e.into());
        self.metrics.call("prepare_release", started, &result);
        result
    }

    async fn upload_chunks(&self, request: Request<Streaming<pb::UploadChunksRequest>>) -> UploadResult {
        let started = Instant::now();
        let (metadata, extensions, stream) = request.into_parts();
        let span = tracing::info_span!("upload_chunks");
        adopt_parent(&span, &metadata);
        let fut: Pin<Box<dyn Future<Output = _> + Send + '_>> = Box::pin(self.upload(&extensions, &metadata, stream));
        let result = fut.instrument(span).await.map(Response::new).map_err(Into::into);
        self.metrics.call("upload_chunks", started, &result);
        result
    }

    async fn commit_release(
        &self,
        request: Request<pb::CommitReleaseRequest>,
    ) -> Result<Response<pb::CommitReleaseResponse>, Status> {
        let started = Instant::now();
        let (metadata, extensions, req) = request.into_parts();
        let span = tracing::info_span!("commit_release", tenant = %req.tenant, app = %req.app);
        adopt_parent(&span, &metadata);
        let result = async {
            let auth = self.authorize(&extensions, &metadata, &req.tenant).await?;
            Ok(Response::new(self.commit(&auth, req).await?))
        }
        .instrument(span)
        .await
        .map_err(|e: RegistryError| e.into());
        self.metrics.call("commit_release", started, &result);
        result
    }

    async fn deploy(&self, request: Request<pb::DeployRequest>) -> Result<Response<pb::DeployResponse>, Status> {
        let started = Instant::now();
        let (metadata, extensions, req) = request.into_parts();
        let span = tracing::info_span!("deploy", tenant = %req.tenant, app = %req.app, version = %req.version);
        adopt_parent(&span, &metadata);
        let result = async {
            let auth = self.authorize(&extensions, &metadata, &req.tenant).await?;
            Ok(Response::new(Registry::deploy(self, &auth, req).await?))
        }
        .instrument(span)
        .await
        .map_err(|e: RegistryError| e.into());
        self.metrics.call("deploy", started, &result);
        result
    }

    async fn yank_release(
        &self,
        request: Request<pb::YankReleaseRequest>,
    ) -> Result<Response<pb::YankReleaseResponse>, Status> {
        let started = Instant::now();
        let (metadata, extensions, req) = request.into_parts();
        let span = tracing::info_span!("yank_release", tenant = %req.tenant, app = %req.app, version = %req.version);
        adopt_parent(&span, &metadata);
        let result = async {
            let actor = self.authorize(&extensions, &metadata, &req.tenant).await?;
            Ok(Response::new(crate::releases::yank(self, &actor, req).await?))
        }
        .instrument(span)
        .await
        .map_err(|e: RegistryError| e.into());
        self.metrics.call("yank_release", started, &result);
        result
    }

    async fn list_releases(
        &self,
        request: Request<pb::ListReleasesRequest>,
    ) -> Result<Response<pb::ListReleasesResponse>, Status> {
        let started = Instant::now();
        let (metadata, extensions, req) = request.into_parts();
        let span = tracing::info_span!("list_releases", tenant = %req.tenant, app = %req.app);
        adopt_parent(&span, &metadata);
        let result = async {
            let actor = self.authorize(&extensions, &metadata, &req.tenant).await?;
            Ok(Response::new(crate::releases::list(self, &actor, req).await?))
        }
        .instrument(span)
        .await
        .map_err(|e: RegistryError| e.into());
        self.metrics.call("list_releases", started, &result);
        result
    }

    async fn identity(&self, request: Request<pb::IdentityRequest>) -> Result<Response<pb::IdentityResponse>, Status> {
        let started = Instant::now();
        let (metadata, extensions, _) = request.into_parts();
        let span = tracing::info_span!("identity");
        adopt_parent(&span, &metadata);
        let result = Registry::identity(self, &extensions, &metadata)
            .instrument(span)
            .await
            .map(Response::new)
            .map_err(|e: RegistryError| e.into());
        self.metrics.call("identity", started, &result);
        result
    }
}
