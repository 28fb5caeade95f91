//! What an operator sees of an app's releases and how it withdraws one
//! (issue 14): `ListReleases` and `YankRelease`.

use ferry_proto::registry::v1 as pb;
use ferry_store::{MAX_YANK_REASON, YankOutcome, rfc3339};
use tracing::info;

use crate::error::RegistryError;
use crate::service::{Actor, Registry};

/// How many deploys `ListReleases` shows.
const HISTORY: i64 = 50;

pub(crate) async fn yank(
    registry: &Registry,
    actor: &Actor,
    req: pb::YankReleaseRequest,
) -> Result<pb::YankReleaseResponse, RegistryError> {
    let app = registry.app(&actor.auth, &req.app).await?;
    let app_id = app.id;
    let version = registry.published_spelling(app_id, &app.version(&req.version)?).await?;
    let reason = req.reason.trim();
    // Control and invisible formatting characters (bidi overrides,
    // zero-width) would make what operators read differ from what is kept.
    let invisible = |c: char| {
        c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
    };
    if reason.is_empty() || reason.chars().count() > MAX_YANK_REASON || reason.chars().any(invisible) {
        return Err(RegistryError::InvalidArgument(format!(
            "reason: say why in 1 to {MAX_YANK_REASON} characters, on one line"
        )));
    }
    let outcome = registry.meta().yank_release(app_id, &version, reason).await?;
    info!(%version, reason, ?outcome, "release yanked");
    Ok(pb::YankReleaseResponse { version, already_yanked: outcome == YankOutcome::AlreadyYanked })
}

pub(crate) async fn list(
    registry: &Registry,
    actor: &Actor,
    req: pb::ListReleasesRequest,
) -> Result<pb::ListReleasesResponse, RegistryError> {
    let app_id = registry.app_id(&actor.auth, &req.app).await?;
    let meta = registry.meta();
    let (releases, history) = tokio::try_join!(meta.release_list(app_id), meta.deploy_history(app_id, HISTORY))?;
    let deployed_version = releases.iter().find(|r| r.deployed).map(|r| r.version.clone()).unwrap_or_default();
    Ok(pb::ListReleasesResponse {
        releases: releases
            .into_iter()
            .map(|r| {
                let (yanked_at, yank_reason) = match r.yanked {
                    Some((at, reason)) => (rfc3339(at), reason),
                    None => (String::new(), String::new()),
                };
                pb::ReleaseEntry {
                    version: r.version,
                    manifest_id: r.manifest_id.0.to_vec(),
                    published_at: rfc3339(r.published_at),
                    deployed: r.deployed,
                    yanked_at,
                    yank_reason,
                }
            })
            .collect(),
        deployed_version,
        history: history
            .into_iter()
            .map(|d| pb::DeployEvent { version: d.version, deployed_at: rfc3339(d.at) })
            .collect(),
    })
}
