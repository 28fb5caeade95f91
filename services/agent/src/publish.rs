//! Publishing: pack, ask what is missing, send only that, commit.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use ferry_proto::registry::v1 as pb;
use ferry_release::{ArtifactKind, ArtifactSpec, Hash, Manifest, Name, pack};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{info, warn};

use crate::client::{Connection, RegistryClient};
use crate::error::AgentError;
use crate::progress::Progress;

/// Chunk bytes per upload message (the registry accepts up to 4 MiB).
const MESSAGE_BYTES: usize = 1024 * 1024;

/// What to publish.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    pub tenant: Name,
    pub app: Name,
    pub version: ferry_release::Version,
    pub artifacts: Vec<ArtifactSpec>,
    /// Also record the version as deployed.
    pub deploy: bool,
    /// Attempts after a retryable failure (network, registry or its storage
    /// down), with exponential back-off from one second.
    pub retries: u32,
    /// The client versions that still work with this release (they are not
    /// required to update).
    pub compatible: Option<semver::VersionReq>,
    /// Where the release last published is cached, to send what the
    /// registry lacks as deltas against it (`None`: no cache, whole chunks).
    pub state_dir: Option<PathBuf>,
}

/// What a publish did; `--json` prints exactly this.
#[derive(Debug, Clone, Serialize)]
pub struct PublishSummary {
    pub tenant: String,
    pub app: String,
    pub version: String,
    pub manifest_id: String,
    pub artifacts: Vec<ArtifactSummary>,
    /// Bytes of all artifact files.
    pub bytes_total: u64,
    /// Chunk bytes actually uploaded by this run.
    pub bytes_sent: u64,
    /// Distinct chunks in the release.
    pub chunks_total: u64,
    /// Chunks uploaded by this run.
    pub chunks_sent: u64,
    /// Chunks the registry already held for this tenant.
    pub chunks_reused: u64,
    /// Of the chunks sent, those sent as deltas against the release this
    /// agent published before.
    pub chunks_delta: u64,
    /// False when this exact release was already published.
    pub created: bool,
    pub deployed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ArtifactSummary {
    pub name: String,
    pub kind: &'static str,
    pub platforms: Vec<String>,
    pub files: usize,
    pub bytes: u64,
}

/// Packs and publishes a release (one trace: this span, and the
/// registry's spans for each call under it).
#[tracing::instrument(name = "publish", skip_all, fields(tenant = %req.tenant, app = %req.app, version = %req.version))]
pub async fn publish(
    conn: &Connection,
    req: &PublishRequest,
    progress: &Progress,
) -> Result<PublishSummary, AgentError> {
    progress.start("packing", None);
    let (version, specs) = (req.version.clone(), req.artifacts.clone());
    let bar = progress.clone();
    let mut manifest = tokio::task::spawn_blocking(move || pack(version, &specs, &|n| bar.advance(n)))
        .await
        .expect("packing task panicked")?;
    // The manifest names whose release it is (S1-8).
    manifest.owner = Some(ferry_release::Owner { tenant: req.tenant.clone(), app: req.app.clone() });
    progress.finish();
    let sources = source_paths(&manifest, &req.artifacts);
    info!(version = %manifest.version, bytes = manifest.total_size(), "packed");

    let mut previous = req
        .state_dir
        .as_deref()
        .and_then(|dir| crate::cache::load(dir, &conn.url, &req.tenant, &req.app))
        .map(std::sync::Arc::new);
    let mut attempt = 0;
    loop {
        match publish_once(conn, req, &manifest, &sources, progress, previous.clone()).await {
            // The registry refused a delta (it does not hold, or cannot
            // read, what the cache builds on): send whole chunks instead.
            Err(AgentError::Rpc { message, .. }) if previous.is_some() && message.starts_with("delta run:") => {
                warn!(%message, "the registry cannot take deltas against the cached release; sending whole chunks");
                previous = None;
            }
            Ok(summary) => {
                if let Some(dir) = req.state_dir.clone() {
                    let (url, manifest, sources) = (conn.url.clone(), manifest.clone(), sources.clone());
                    tokio::task::spawn_blocking(move || {
                        crate::cache::store(&dir, &url, &manifest, &sources, crate::cache::DEFAULT_CACHE_BYTES)
                    })
                    .await
                    .expect("caching panicked");
                }
                return Ok(summary);
            }
            Err(e) => {
                if !backed_off(&mut attempt, req.retries, &e, "publish").await {
                    return Err(e);
                }
            }
        }
    }
}

/// After a failure of `what`: whether to try again (the error is
/// retryable and attempts are left), having waited 2 s, 4 s … 32 s.
pub(crate) async fn backed_off(attempt: &mut u32, retries: u32, e: &AgentError, what: &str) -> bool {
    if !e.is_retryable() || *attempt >= retries {
        return false;
    }
    *attempt += 1;
    let backoff = Duration::from_secs(1 << (*attempt).min(5));
    warn!(attempt = *attempt, error = %e, "{what} failed; retrying in {}s", backoff.as_secs());
    tokio::time::sleep(backoff).await;
    true
}

async fn publish_once(
    conn: &Connection,
    req: &PublishRequest,
    manifest: &Manifest,
    sources: &HashMap<Hash, PathBuf>,
    progress: &Progress,
    previous: Option<std::sync::Arc<crate::cache::Previous>>,
) -> Result<PublishSummary, AgentError> {
    let mut client = conn.connect().await?;
    let prepared = client
        .prepare_release(pb::PrepareReleaseRequest {
            tenant: req.tenant.to_string(),
            app: req.app.to_string(),
            manifest: manifest.encode(),
        })
        .await
        .map_err(|s| AgentError::rpc("prepare release", s))?
        .into_inner();
    let mut missing = HashSet::new();
    for hash in &prepared.missing_chunks {
        let bytes: [u8; 32] = hash.as_slice().try_into().map_err(|_| AgentError::Protocol("chunk hash"))?;
        missing.insert(Hash::from_bytes(bytes));
    }
    let unique = manifest.unique_chunks();
    let (mut chunks_sent, mut bytes_sent, mut chunks_delta) = (0, 0, 0);
    if !missing.is_empty() {
        let plan = upload_plan(manifest, sources, &missing);
        let total = plan.iter().flat_map(|f| &f.chunks).map(|c| c.len as u64).sum();
        progress.start("uploading", Some(total));
        let source: ChunkSource = match previous {
            Some(previous) => {
                let counterparts = crate::delta::counterparts(manifest, &previous.manifest);
                crate::delta::pieces(plan, previous, counterparts)
            }
            None => Box::new(file_chunks(plan).map(|c| c.map(|(h, d)| Piece::Chunk(h, d)))),
        };
        let sent = upload(&mut client, req.tenant.as_str(), source, progress).await?;
        progress.finish();
        (chunks_sent, bytes_sent, chunks_delta) = (sent.chunks, sent.bytes, sent.delta_chunks);
    }
    let committed = client
        .commit_release(pb::CommitReleaseRequest {
            tenant: req.tenant.to_string(),
            app: req.app.to_string(),
            manifest_id: prepared.manifest_id.clone(),
            deploy: req.deploy,
            compatible: req.compatible.as_ref().map(ToString::to_string).unwrap_or_default(),
        })
        .await
        .map_err(|s| AgentError::rpc("commit release", s))?
        .into_inner();
    Ok(PublishSummary {
        tenant: req.tenant.to_string(),
        app: req.app.to_string(),
        version: committed.version,
        manifest_id: hex::encode(&prepared.manifest_id),
        artifacts: manifest
            .artifacts
            .iter()
            .map(|a| ArtifactSummary {
                name: a.name.to_string(),
                kind: match a.kind {
                    ArtifactKind::File => "file",
                    ArtifactKind::Directory => "directory",
                },
                platforms: a.platforms.iter().map(ToString::to_string).collect(),
                files: a.files.len(),
                bytes: a.size(),
            })
            .collect(),
        bytes_total: manifest.total_size(),
        bytes_sent,
        chunks_total: unique.len() as u64,
        chunks_sent,
        chunks_reused: unique.len() as u64 - missing.len() as u64,
        chunks_delta,
        created: committed.created,
        deployed: committed.deployed,
    })
}

/// Where each file's bytes are on disk, by file hash.
pub(crate) fn source_paths(manifest: &Manifest, specs: &[ArtifactSpec]) -> HashMap<Hash, PathBuf> {
    let roots: HashMap<&Name, &PathBuf> = specs.iter().map(|s| (&s.name, &s.path)).collect();
    let mut out = HashMap::new();
    for artifact in &manifest.artifacts {
        let root = roots[&artifact.name];
        for file in &artifact.files {
            let path = match artifact.kind {
                ArtifactKind::File => root.clone(),
                ArtifactKind::Directory => root.join(file.path.as_str()),
            };
            out.entry(file.hash).or_insert(path);
        }
    }
    out
}

/// A file holding chunks to send, and which.
pub(crate) struct PlannedFile {
    pub(crate) path: PathBuf,
    /// The file's hash (which release file it is).
    pub(crate) hash: Hash,
    pub(crate) chunks: Vec<PlannedChunk>,
}

pub(crate) struct PlannedChunk {
    pub(crate) offset: u64,
    pub(crate) len: u32,
    pub(crate) hash: Hash,
}

/// For each file holding missing chunks, the chunks to read from it; each
/// missing chunk appears once.
pub(crate) fn upload_plan(
    manifest: &Manifest,
    sources: &HashMap<Hash, PathBuf>,
    missing: &HashSet<Hash>,
) -> Vec<PlannedFile> {
    let mut planned = HashSet::new();
    let mut done_files = HashSet::new();
    let mut plan = Vec::new();
    for file in manifest.files() {
        if !done_files.insert(file.hash) {
            continue;
        }
        let mut offset = 0;
        let mut chunks = Vec::new();
        for chunk in &file.chunks {
            if missing.contains(&chunk.hash) && planned.insert(chunk.hash) {
                chunks.push(PlannedChunk { offset, len: chunk.len, hash: chunk.hash });
            }
            offset += u64::from(chunk.len);
        }
        if !chunks.is_empty() {
            plan.push(PlannedFile { path: sources[&file.hash].clone(), hash: file.hash, chunks });
        }
    }
    plan
}

/// What to send, read lazily on a blocking thread: chunks with their
/// hashes, or runs of chunks as deltas.
pub(crate) type ChunkSource = Box<dyn Iterator<Item = Result<Piece, AgentError>> + Send>;

/// One item of an upload.
pub(crate) enum Piece {
    Chunk(Hash, Vec<u8>),
    /// Chunks as one delta frame: `chunks` of `bytes` before encoding.
    Run {
        run: pb::DeltaRun,
        chunks: u64,
        bytes: u64,
    },
}

/// What an upload sent.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sent {
    pub(crate) chunks: u64,
    /// Chunk bytes, before any encoding.
    pub(crate) bytes: u64,
    /// Chunks sent inside delta runs.
    pub(crate) delta_chunks: u64,
}

/// Streams `chunks`.
pub(crate) async fn upload(
    client: &mut RegistryClient,
    tenant: &str,
    chunks: ChunkSource,
    progress: &Progress,
) -> Result<Sent, AgentError> {
    let (tx, rx) = mpsc::channel::<pb::UploadChunksRequest>(2);
    let tenant = tenant.to_owned();
    let bar = progress.clone();
    // Reading and hashing are blocking work: a thread of their own feeds the
    // stream through a small channel, so memory stays at a few messages.
    let reader = tokio::task::spawn_blocking(move || send_chunks(&tenant, chunks, &tx, &bar));
    let response = client.upload_chunks(ReceiverStream::new(rx)).await;
    let read = reader.await.expect("chunk reader panicked");
    let response = response.map_err(|s| AgentError::rpc("upload chunks", s))?;
    let sent = read?;
    let stored = response.into_inner();
    info!(
        chunks = sent.chunks,
        bytes = sent.bytes,
        delta = sent.delta_chunks,
        stored = stored.chunks_stored,
        "chunks uploaded"
    );
    Ok(sent)
}

/// The planned chunks, read from their files and checked against their
/// hashes (a file changed since packing is an error).
pub(crate) fn file_chunks(
    plan: Vec<PlannedFile>,
) -> impl Iterator<Item = Result<(Hash, Vec<u8>), AgentError>> + Send + 'static {
    plan.into_iter().flat_map(|PlannedFile { path, chunks: planned, .. }| {
        let mut file: Option<File> = None;
        planned.into_iter().map(move |chunk| {
            let io = |source| AgentError::Io { path: path.clone(), source };
            let file = match &mut file {
                Some(file) => file,
                None => file.insert(File::open(&path).map_err(io)?),
            };
            let mut data = vec![0u8; chunk.len as usize];
            file.seek(SeekFrom::Start(chunk.offset)).map_err(io)?;
            file.read_exact(&mut data).map_err(io)?;
            if blake3::hash(&data) != chunk.hash {
                return Err(AgentError::Changed { path: path.clone() });
            }
            Ok((chunk.hash, data))
        })
    })
}

fn send_chunks(
    tenant: &str,
    chunks: ChunkSource,
    tx: &mpsc::Sender<pb::UploadChunksRequest>,
    progress: &Progress,
) -> Result<Sent, AgentError> {
    let empty = || pb::UploadChunksRequest { tenant: tenant.to_owned(), ..Default::default() };
    let mut message = empty();
    let mut message_bytes = 0;
    let mut sent = Sent::default();
    for piece in chunks {
        let (n, len) = match piece? {
            Piece::Chunk(hash, data) => {
                let len = data.len() as u64;
                message_bytes += data.len();
                message.chunks.push(pb::Chunk { hash: hash.as_bytes().to_vec(), data });
                (1, len)
            }
            Piece::Run { run, chunks, bytes } => {
                message_bytes += run.frame.len() + run.reference.len() * 32 + run.hashes.len() * 36;
                message.runs.push(run);
                if message.runs.len() >= crate::delta::RUNS_PER_MESSAGE {
                    message_bytes = MESSAGE_BYTES;
                }
                sent.delta_chunks += chunks;
                (chunks, bytes)
            }
        };
        if message_bytes >= MESSAGE_BYTES {
            let full = std::mem::replace(&mut message, empty());
            if tx.blocking_send(full).is_err() {
                return Ok(sent); // the call failed; its error is reported
            }
            message_bytes = 0;
        }
        sent.chunks += n;
        sent.bytes += len;
        progress.advance(len);
    }
    if !message.chunks.is_empty() || !message.runs.is_empty() {
        let _ = tx.blocking_send(message);
    }
    Ok(sent)
}

/// What a deploy did.
#[derive(Debug, Clone, Serialize)]
pub struct DeploySummary {
    pub tenant: String,
    pub app: String,
    pub version: String,
    /// The version deployed before, if any.
    pub previous_version: Option<String>,
}

/// Records an already published version as the one deployed (S0-3).
pub async fn deploy(
    conn: &Connection,
    tenant: &Name,
    app: &Name,
    version: &ferry_release::Version,
) -> Result<DeploySummary, AgentError> {
    deploy_with(conn, tenant, app, version, None).await
}

/// [`deploy`], also setting the release's compatible client versions.
#[tracing::instrument(name = "deploy", skip_all, fields(%tenant, %app, %version))]
pub async fn deploy_with(
    conn: &Connection,
    tenant: &Name,
    app: &Name,
    version: &ferry_release::Version,
    compatible: Option<&semver::VersionReq>,
) -> Result<DeploySummary, AgentError> {
    let mut client = conn.connect().await?;
    let out = client
        .deploy(pb::DeployRequest {
            tenant: tenant.to_string(),
            app: app.to_string(),
            version: version.to_string(),
            compatible: compatible.map(ToString::to_string).unwrap_or_default(),
        })
        .await
        .map_err(|s| AgentError::rpc("deploy", s))?
        .into_inner();
    Ok(DeploySummary {
        tenant: tenant.to_string(),
        app: app.to_string(),
        version: out.version,
        previous_version: Some(out.previous_version).filter(|v| !v.is_empty()),
    })
}
