//! Transport bundles on the agent's side (issue 14, seed 003): `bundle
//! create` packs a release into one file (`ferry_bundle`), on a machine
//! that cannot reach the registry; `bundle push` publishes such a file
//! from any machine that can.
//!
//! A bundle may leave out the chunks of an earlier release's manifest
//! (`--since-version`, `--base-manifest`), which this machine recorded when
//! it bundled that release; pushing it then needs the registry to hold
//! those chunks for the tenant, and a push that finds a chunk in neither
//! place stops before anything is committed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use ferry_bundle::{Bundle, BundleHeader, BundleWriter};
use ferry_proto::registry::v1 as pb;
use ferry_release::{ArtifactSpec, Hash, Manifest, Name, pack};
use serde::Serialize;
use tracing::{info, warn};

use crate::client::Connection;
use crate::error::AgentError;
use crate::manifests::ManifestCache;
use crate::progress::Progress;
use crate::publish::{Piece, backed_off, file_chunks, source_paths, upload, upload_plan};

/// Which earlier release's chunks a bundle leaves out.
#[derive(Debug, Clone)]
pub enum Base {
    /// The release of this version, as this machine bundled it.
    Version(ferry_release::Version),
    /// The manifest with this id (hex), as this machine bundled it.
    Manifest(String),
}

/// What to bundle.
#[derive(Debug, Clone)]
pub struct BundleRequest {
    pub tenant: Name,
    pub app: Name,
    pub version: ferry_release::Version,
    pub artifacts: Vec<ArtifactSpec>,
    /// The file to write (it must not exist).
    pub out: PathBuf,
    /// Deploy the release when it is published.
    pub deploy: bool,
    pub compatible: Option<semver::VersionReq>,
    pub base: Option<Base>,
    /// Where the manifests of earlier bundles are kept.
    pub state_dir: PathBuf,
}

/// What `bundle create` wrote; `--json` prints exactly this.
#[derive(Debug, Clone, Serialize)]
pub struct BundleSummary {
    pub file: String,
    pub tenant: String,
    pub app: String,
    pub version: String,
    pub manifest_id: String,
    pub base_manifest_id: Option<String>,
    /// Bytes of every file of the release.
    pub bytes_total: u64,
    pub chunks_total: u64,
    /// Chunks inside the bundle, their bytes, and the file's size.
    pub chunks_bundled: u64,
    pub chunk_bytes: u64,
    pub bundle_bytes: u64,
}

/// Packs the release and writes the bundle (blocking: run it on a
/// blocking thread). The bundle appears whole or not at all.
pub fn create_bundle(req: &BundleRequest, progress: &Progress) -> Result<BundleSummary, AgentError> {
    let cache = ManifestCache::new(&req.state_dir);
    let base = match &req.base {
        None => None,
        Some(base) => {
            let found = match base {
                Base::Version(v) => cache.by_version(&req.tenant, &req.app, v),
                Base::Manifest(id) => cache.by_id(&req.tenant, &req.app, id),
            }
            .map_err(AgentError::State)?;
            let what = match base {
                Base::Version(v) => format!("version {v}"),
                Base::Manifest(id) => format!("manifest {id}"),
            };
            Some(found.ok_or_else(|| {
                AgentError::State(format!(
                    "no manifest of {}/{} {what} under {}: only releases bundled on this machine with this \
                     --state-dir are known; make a full bundle instead",
                    req.tenant,
                    req.app,
                    cache.dir().display()
                ))
            })?)
        }
    };
    progress.start("packing", None);
    let mut manifest = pack(req.version.clone(), &req.artifacts, &|n| progress.advance(n))?;
    manifest.owner = Some(ferry_release::Owner { tenant: req.tenant.clone(), app: req.app.clone() });
    progress.finish();
    let manifest_bytes = manifest.encode();
    let manifest_id = manifest.id().to_string();
    let left_out: HashSet<Hash> =
        base.as_ref().map(|b| b.unique_chunks().iter().map(|c| c.hash).collect()).unwrap_or_default();
    let unique = manifest.unique_chunks();
    let wanted: HashSet<Hash> = unique.iter().map(|c| c.hash).filter(|h| !left_out.contains(h)).collect();
    let chunk_bytes: u64 = unique.iter().filter(|c| wanted.contains(&c.hash)).map(|c| u64::from(c.len)).sum();
    let header = BundleHeader {
        tenant: req.tenant.to_string(),
        app: req.app.to_string(),
        version: req.version.to_string(),
        manifest_id: manifest_id.clone(),
        deploy: req.deploy,
        compatible: req.compatible.as_ref().map(ToString::to_string),
        base_manifest_id: base.as_ref().map(|b| b.id().to_string()),
        chunks: wanted.len() as u64,
        chunk_bytes,
        created_by: concat!("ferry-agent ", env!("CARGO_PKG_VERSION")).to_owned(),
    };
    let out_err = |source: std::io::Error| AgentError::Io { path: req.out.clone(), source };
    let mut writer = BundleWriter::create(&req.out, &header, &manifest_bytes).map_err(out_err)?;
    progress.start("bundling", Some(chunk_bytes));
    let plan = upload_plan(&manifest, &source_paths(&manifest, &req.artifacts), &wanted);
    for chunk in file_chunks(plan) {
        let (hash, data) = chunk?;
        writer.add(&hash, &data).map_err(out_err)?;
        progress.advance(data.len() as u64);
    }
    let bundle_bytes = writer.finish().map_err(out_err)?;
    progress.finish();
    // Recorded once the bundle exists: a later bundle may leave out its
    // chunks. Without the record only --since-version of it fails.
    if let Err(e) = cache.save(&manifest) {
        warn!(error = %e, "the bundle is written, but later bundles cannot name it in --since-version");
    }
    info!(file = %req.out.display(), chunks = wanted.len(), bytes = bundle_bytes, "bundle written");
    Ok(BundleSummary {
        file: req.out.display().to_string(),
        tenant: req.tenant.to_string(),
        app: req.app.to_string(),
        version: req.version.to_string(),
        manifest_id,
        base_manifest_id: header.base_manifest_id,
        bytes_total: manifest.total_size(),
        chunks_total: unique.len() as u64,
        chunks_bundled: wanted.len() as u64,
        chunk_bytes,
        bundle_bytes,
    })
}

/// What `bundle push` did; `--json` prints exactly this.
#[derive(Debug, Clone, Serialize)]
pub struct PushSummary {
    pub tenant: String,
    pub app: String,
    pub version: String,
    pub manifest_id: String,
    /// Chunks the registry lacked, sent from the bundle.
    pub chunks_sent: u64,
    pub bytes_sent: u64,
    /// False when the release was already published (a second push).
    pub created: bool,
    pub deployed: bool,
}

/// Checks the bundle whole, then publishes it: prepare, send what the
/// registry lacks (from the bundle), commit (and deploy, if the bundle
/// says so). Pushing twice changes nothing.
pub async fn push_bundle(
    conn: &Connection,
    file: &Path,
    retries: u32,
    progress: &Progress,
) -> Result<PushSummary, AgentError> {
    let path = file.to_owned();
    let bundle = tokio::task::spawn_blocking(move || Bundle::open(&path)).await.expect("bundle check panicked")?;
    let bundle = std::sync::Arc::new(bundle);
    let mut attempt = 0;
    loop {
        match push_once(conn, &bundle, progress).await {
            Err(e) if backed_off(&mut attempt, retries, &e, "push").await => {}
            other => return other,
        }
    }
}

async fn push_once(
    conn: &Connection,
    bundle: &std::sync::Arc<Bundle>,
    progress: &Progress,
) -> Result<PushSummary, AgentError> {
    let header = bundle.header();
    let mut client = conn.connect().await?;
    let prepared = client
        .prepare_release(pb::PrepareReleaseRequest {
            tenant: header.tenant.clone(),
            app: header.app.clone(),
            manifest: bundle.manifest_bytes().to_vec(),
        })
        .await
        .map_err(|s| AgentError::rpc("prepare release", s))?
        .into_inner();
    let missing: HashSet<Hash> = prepared
        .missing_chunks
        .iter()
        .map(|h| <[u8; 32]>::try_from(h.as_slice()).map(Hash::from_bytes))
        .collect::<Result<_, _>>()
        .map_err(|_| AgentError::Protocol("chunk hash"))?;
    let absent = missing.iter().filter(|h| !bundle.contains(h)).count();
    if absent > 0 {
        return Err(AgentError::Incomplete { missing: absent, base: header.base_manifest_id.clone() });
    }
    let (mut chunks_sent, mut bytes_sent) = (0, 0);
    if !missing.is_empty() {
        let total = manifest_bytes_of(bundle.manifest(), &missing);
        progress.start("uploading", Some(total));
        let chunks = bundle.chunks(move |h| missing.contains(h))?;
        let source = Box::new(chunks.map(|c| c.map(|(h, d)| Piece::Chunk(h, d)).map_err(AgentError::from)));
        let sent = upload(&mut client, &header.tenant, source, progress).await?;
        (chunks_sent, bytes_sent) = (sent.chunks, sent.bytes);
        progress.finish();
    }
    let committed = client
        .commit_release(pb::CommitReleaseRequest {
            tenant: header.tenant.clone(),
            app: header.app.clone(),
            manifest_id: prepared.manifest_id.clone(),
            // A release already published is not deployed again: replaying
            // an old bundle must not roll the private cloud's version back.
            deploy: header.deploy && !prepared.already_published,
            compatible: header.compatible.clone().unwrap_or_default(),
        })
        .await
        .map_err(|s| AgentError::rpc("commit release", s))?
        .into_inner();
    Ok(PushSummary {
        tenant: header.tenant.clone(),
        app: header.app.clone(),
        version: committed.version,
        manifest_id: hex::encode(&prepared.manifest_id),
        chunks_sent,
        bytes_sent,
        created: committed.created,
        deployed: committed.deployed,
    })
}

fn manifest_bytes_of(manifest: &Manifest, chunks: &HashSet<Hash>) -> u64 {
    manifest.unique_chunks().iter().filter(|c| chunks.contains(&c.hash)).map(|c| u64::from(c.len)).sum()
}
