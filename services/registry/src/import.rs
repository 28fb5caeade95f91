//! `ferry-registry admin import FILE`: publishes a transport bundle
//! (`ferry_bundle`) carried from a private cloud with no route to the
//! registry, as an operator of the registry, through the same steps an
//! agent's publish takes (prepare, store what the tenant lacks, commit),
//! with the same checks. The bundle is checked whole first; a chunk the
//! registry lacks that the bundle does not hold stops the import before
//! anything is committed; importing twice changes nothing.

use std::collections::HashSet;
use std::path::Path;

use ferry_bundle::Bundle;
use ferry_proto::registry::v1 as pb;
use ferry_release::{Hash, Name};
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::error::RegistryError;
use crate::service::{Actor, Registry, STORE_CONCURRENCY, verify_chunk};

/// What an import did.
#[derive(Debug, Clone, Serialize)]
pub struct ImportSummary {
    pub tenant: String,
    pub app: String,
    pub version: String,
    pub manifest_id: String,
    /// Chunks the registry lacked for the tenant, stored from the bundle.
    pub chunks_stored: u64,
    pub bytes_stored: u64,
    /// False when the release was already published.
    pub created: bool,
    pub deployed: bool,
}

/// Why an import was refused.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Bundle(#[from] ferry_bundle::BundleError),
    /// The registry refused (the message says why, as to an agent).
    #[error("{0}")]
    Registry(String),
    #[error(
        "{file}: the registry lacks {missing} chunk(s) of {tenant}'s release that the bundle does not hold{base}; \
         nothing was published: make a full bundle, or one since a release the registry has"
    )]
    Incomplete { file: String, tenant: String, missing: usize, base: String },
}

impl From<RegistryError> for ImportError {
    fn from(e: RegistryError) -> Self {
        Self::Registry(e.to_string())
    }
}

/// Imports the bundle at `path` into `registry`.
pub async fn import_bundle(registry: &Registry, path: &Path) -> Result<ImportSummary, ImportError> {
    let file = path.to_owned();
    let bundle = tokio::task::spawn_blocking(move || Bundle::open(&file)).await.expect("bundle check panicked")?;
    let h = bundle.header().clone();
    let tenant = Name::parse("tenant", &h.tenant).map_err(|e| RegistryError::InvalidArgument(e.to_string()))?;
    let tenant_id = registry.meta().tenant_id(&tenant).await.map_err(RegistryError::from)?;
    let actor = Actor::operator(tenant_id, tenant, "admin-import");
    let prepared = registry
        .prepare(
            &actor,
            pb::PrepareReleaseRequest {
                tenant: h.tenant.clone(),
                app: h.app.clone(),
                manifest: bundle.manifest_bytes().to_vec(),
            },
        )
        .await?;
    let missing: HashSet<Hash> = prepared
        .missing_chunks
        .iter()
        .filter_map(|h| <[u8; 32]>::try_from(h.as_slice()).ok().map(Hash::from_bytes))
        .collect();
    let absent = missing.iter().filter(|c| !bundle.contains(c)).count();
    if absent > 0 {
        return Err(ImportError::Incomplete {
            file: path.display().to_string(),
            tenant: h.tenant.clone(),
            missing: absent,
            base: h
                .base_manifest_id
                .as_ref()
                .map(|b| format!(" (it left out those of manifest {b})"))
                .unwrap_or_default(),
        });
    }
    let (mut chunks_stored, mut bytes_stored) = (0, 0);
    if !missing.is_empty() {
        // The bundle is read on a blocking thread, a few chunks ahead of
        // the stores.
        let (tx, mut rx) = mpsc::channel::<Result<(Hash, Vec<u8>), ferry_bundle::BundleError>>(STORE_CONCURRENCY);
        let chunks = bundle.chunks(move |c| missing.contains(c))?;
        let reader = tokio::task::spawn_blocking(move || {
            for chunk in chunks {
                if tx.blocking_send(chunk).is_err() {
                    return;
                }
            }
        });
        // Spawned, as the gRPC upload's stores are: they run while the next
        // chunk is read, and every store begun finishes (object and row)
        // whatever fails after it.
        let mut in_flight = futures::stream::FuturesUnordered::new();
        let mut failed: Option<ImportError> = None;
        while let Some(chunk) = rx.recv().await {
            let checked = chunk.map_err(ImportError::from).and_then(|(hash, data)| {
                verify_chunk(pb::Chunk { hash: hash.as_bytes().to_vec(), data }).map_err(ImportError::from)
            });
            let (hash, data) = match checked {
                Ok(chunk) => chunk,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            let len = data.len() as u64;
            let this = registry.clone();
            in_flight.push(tokio::spawn(async move { this.store_chunk(tenant_id, hash, data).await.map(|_| len) }));
            while in_flight.len() >= STORE_CONCURRENCY {
                match in_flight.next().await.expect("non-empty") {
                    Ok(Ok(len)) => (chunks_stored, bytes_stored) = (chunks_stored + 1, bytes_stored + len),
                    Ok(Err(e)) => failed = failed.or(Some(e.into())),
                    Err(e) => failed = failed.or(Some(ImportError::Registry(format!("a store failed: {e}")))),
                }
            }
            if failed.is_some() {
                break;
            }
        }
        drop(rx);
        while let Some(done) = in_flight.next().await {
            match done {
                Ok(Ok(len)) => (chunks_stored, bytes_stored) = (chunks_stored + 1, bytes_stored + len),
                Ok(Err(e)) => failed = failed.or(Some(e.into())),
                Err(e) => failed = failed.or(Some(ImportError::Registry(format!("a store failed: {e}")))),
            }
        }
        reader.await.expect("bundle reader panicked");
        if let Some(e) = failed {
            return Err(e);
        }
    }
    let committed = registry
        .commit(
            &actor,
            pb::CommitReleaseRequest {
                tenant: h.tenant.clone(),
                app: h.app.clone(),
                manifest_id: prepared.manifest_id.clone(),
                // Not again for a release already published: replaying an
                // old bundle must not roll the deployed version back.
                deploy: h.deploy && !prepared.already_published,
                compatible: h.compatible.clone().unwrap_or_default(),
            },
        )
        .await?;
    Ok(ImportSummary {
        tenant: h.tenant,
        app: h.app,
        version: committed.version,
        manifest_id: hex::encode(&prepared.manifest_id),
        chunks_stored,
        bytes_stored,
        created: committed.created,
        deployed: committed.deployed,
    })
}
