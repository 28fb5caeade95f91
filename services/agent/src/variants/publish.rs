//! Publishing a variants file: one release per tenant, in one run, with one
//! progress display and one summary. Each tenant's artifacts are rendered
//! into a staging directory next to the file (unchanged files hard-linked
//! from the base, so a 40 MB base costs no copy per tenant), packed and
//! published as that tenant's own release: its manifest names its tenant and
//! app (S1-8). With a publisher key the registry answers what is missing
//! across all its tenants, so the base is sent once and each further tenant
//! sends only its differences.

use std::collections::HashSet;
use std::sync::Arc;

use ferry_proto::registry::v1 as pb;
use ferry_release::Name;
use serde::Serialize;
use tracing::info;

use super::{LinkMode, Problem, Variants};
use crate::client::Connection;
use crate::error::AgentError;
use crate::progress::Progress;
use crate::publish::{PublishRequest, PublishSummary, publish};

/// What to publish from a variants file.
#[derive(Debug)]
pub struct VariantsRequest {
    pub variants: Arc<Variants>,
    pub app: Name,
    pub version: ferry_release::Version,
    /// Only these tenants (each must be in the file); empty: every tenant.
    pub only: Vec<Name>,
    pub deploy: bool,
    pub retries: u32,
    pub compatible: Option<semver::VersionReq>,
}

/// What a variants publish did; `--json` prints exactly this.
#[derive(Debug, Clone, Serialize)]
pub struct VariantsSummary {
    pub app: String,
    pub version: String,
    /// One entry per tenant, in the file's order.
    pub tenants: Vec<TenantSummary>,
    /// Bytes of all tenants' artifact files.
    pub bytes_total: u64,
    /// Chunk bytes uploaded by this run, all tenants together.
    pub bytes_sent: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TenantSummary {
    /// The section of the variants file the tenant is in.
    pub variant: String,
    #[serde(flatten)]
    pub publish: PublishSummary,
}

/// Which tenants of `variants` a run publishes, in file order.
pub fn selected(variants: &Variants, only: &[Name]) -> Result<Vec<(Name, String)>, AgentError> {
    let all = variants.tenants();
    if let Some(unknown) = only.iter().find(|t| all.iter().all(|(name, _)| name != *t)) {
        return Err(AgentError::Variants(format!(
            "--only names tenant {unknown}, which no section of the variants file serves (it serves {})",
            all.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(all.into_iter().filter(|(name, _)| only.is_empty() || only.contains(name)).collect())
}

/// Renders, packs and publishes each selected tenant's release in turn. A
/// failure stops the run naming the tenant; running it again is safe
/// (tenants already published answer "already published").
pub async fn publish_variants(
    conn: &Connection,
    req: &VariantsRequest,
    progress: &Progress,
) -> Result<VariantsSummary, AgentError> {
    let tenants = selected(&req.variants, &req.only)?;
    let staging_parent = req.variants.dir();
    let mut summary = VariantsSummary {
        app: req.app.to_string(),
        version: req.version.to_string(),
        tenants: Vec::with_capacity(tenants.len()),
        bytes_total: 0,
        bytes_sent: 0,
    };
    let count = tenants.len();
    for (i, (tenant, variant)) in tenants.into_iter().enumerate() {
        progress.label(&format!("{tenant} ({}/{count})", i + 1));
        let failed = |e: AgentError| AgentError::Tenant { tenant: tenant.to_string(), source: Box::new(e) };
        // Next to the variants file, so unchanged files can be hard links
        // (same file system); removed when this tenant is done.
        let staging = tempfile::Builder::new()
            .prefix(".ferry-variant-")
            .tempdir_in(staging_parent)
            .map_err(|source| failed(AgentError::Io { path: staging_parent.to_owned(), source }))?;
        let out = staging.path().join("artifacts");
        let (variants, who) = (Arc::clone(&req.variants), tenant.clone());
        let specs = tokio::task::spawn_blocking(move || variants.render(&who, &out, LinkMode::HardLink))
            .await
            .expect("rendering task panicked")
            .map_err(|e| failed(AgentError::Variants(e.to_string())))?;
        let request = PublishRequest {
            tenant: tenant.clone(),
            app: req.app.clone(),
            version: req.version.clone(),
            artifacts: specs,
            deploy: req.deploy,
            retries: req.retries,
            compatible: req.compatible.clone(),
            state_dir: None,
        };
        let published = publish(conn, &request, progress).await.map_err(failed)?;
        info!(%tenant, variant, sent = published.bytes_sent, total = published.bytes_total, "variant published");
        summary.bytes_total += published.bytes_total;
        summary.bytes_sent += published.bytes_sent;
        summary.tenants.push(TenantSummary { variant, publish: published });
    }
    progress.label("");
    Ok(summary)
}

/// The tenants `variants` names that the registry does not let this key
/// publish for (unknown to it, or another's), each as a problem at the line
/// naming it. An agent key may publish for its own tenant only.
pub async fn check_tenants(conn: &Connection, variants: &Variants) -> Result<Vec<Problem>, AgentError> {
    let mut client = conn.connect().await?;
    let identity = client
        .identity(pb::IdentityRequest {})
        .await
        .map_err(|s| AgentError::rpc("asking the registry who this key is", s))?
        .into_inner();
    let allowed: HashSet<&str> = identity.tenants.iter().map(String::as_str).collect();
    Ok(variants
        .tenants()
        .into_iter()
        .filter(|(tenant, _)| !allowed.contains(tenant.as_str()))
        .map(|(tenant, variant)| {
            let message = format!(
                "variant {variant:?}: the registry does not know tenant \"{tenant}\", or this {} key may not \
                 publish for it (it may for: {})",
                identity.role,
                identity.tenants.join(", ")
            );
            variants.problem_at_tenant(&tenant, message)
        })
        .collect())
}
