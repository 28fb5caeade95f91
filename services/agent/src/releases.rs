//! An app's releases as the registry keeps them (issue 14): what is
//! published, deployed and withdrawn, the deploy history, and withdrawing
//! ("yanking") a release.

use ferry_proto::registry::v1 as pb;
use ferry_release::Name;
use serde::Serialize;

use crate::client::Connection;
use crate::error::AgentError;

/// One release, as `ferry-agent releases` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ReleaseLine {
    pub version: String,
    pub manifest_id: String,
    pub published_at: String,
    pub deployed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub yanked_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub yank_reason: Option<String>,
}

/// One deploy of the history.
#[derive(Debug, Clone, Serialize)]
pub struct DeployLine {
    pub version: String,
    pub deployed_at: String,
}

/// An app's releases and deploys (newest first).
#[derive(Debug, Clone, Serialize)]
pub struct Releases {
    pub tenant: String,
    pub app: String,
    pub deployed_version: Option<String>,
    pub releases: Vec<ReleaseLine>,
    pub history: Vec<DeployLine>,
}

/// What a yank did.
#[derive(Debug, Clone, Serialize)]
pub struct YankSummary {
    pub tenant: String,
    pub app: String,
    pub version: String,
    pub already_yanked: bool,
}

/// The app's releases and latest deploys.
#[tracing::instrument(name = "releases", skip_all, fields(%tenant, %app))]
pub async fn releases(conn: &Connection, tenant: &Name, app: &Name) -> Result<Releases, AgentError> {
    let mut client = conn.connect().await?;
    let out = client
        .list_releases(pb::ListReleasesRequest { tenant: tenant.to_string(), app: app.to_string() })
        .await
        .map_err(|s| AgentError::rpc("list releases", s))?
        .into_inner();
    let some = |s: String| Some(s).filter(|s| !s.is_empty());
    Ok(Releases {
        tenant: tenant.to_string(),
        app: app.to_string(),
        deployed_version: some(out.deployed_version),
        releases: out
            .releases
            .into_iter()
            .map(|r| ReleaseLine {
                version: r.version,
                manifest_id: hex::encode(&r.manifest_id),
                published_at: r.published_at,
                deployed: r.deployed,
                yanked_at: some(r.yanked_at),
                yank_reason: some(r.yank_reason),
            })
            .collect(),
        history: out
            .history
            .into_iter()
            .map(|d| DeployLine { version: d.version, deployed_at: d.deployed_at })
            .collect(),
    })
}

/// Withdraws `version`: it stays stored but is no longer offered, and
/// cannot be deployed. Refused while it is the deployed one.
#[tracing::instrument(name = "yank", skip_all, fields(%tenant, %app, %version))]
pub async fn yank(
    conn: &Connection,
    tenant: &Name,
    app: &Name,
    version: &ferry_release::Version,
    reason: &str,
) -> Result<YankSummary, AgentError> {
    let mut client = conn.connect().await?;
    let out = client
        .yank_release(pb::YankReleaseRequest {
            tenant: tenant.to_string(),
            app: app.to_string(),
            version: version.to_string(),
            reason: reason.to_owned(),
        })
        .await
        .map_err(|s| AgentError::rpc("yank", s))?
        .into_inner();
    Ok(YankSummary {
        tenant: tenant.to_string(),
        app: app.to_string(),
        version: out.version,
        already_yanked: out.already_yanked,
    })
}
