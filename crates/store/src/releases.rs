//! A release's life after publishing (issue 14): the list an operator
//! sees (published, deployed, withdrawn), the deploy history, and
//! withdrawing ("yanking") a release: it stays stored, is no longer
//! offered, and cannot be deployed; the deployed release cannot be yanked.

use std::time::SystemTime;

use crate::error::StoreError;
use crate::meta::Meta;

/// One release as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseInfo {
    pub version: String,
    pub manifest_id: ferry_release::ManifestId,
    pub published_at: SystemTime,
    pub deployed: bool,
    /// When and why it was withdrawn.
    pub yanked: Option<(SystemTime, String)>,
}

/// One move of an app's deployed pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployEvent {
    pub version: String,
    pub at: SystemTime,
}

/// How a yank ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum YankOutcome {
    Yanked,
    /// It was withdrawn before (the first reason stands).
    AlreadyYanked,
}

/// The longest reason kept.
pub const MAX_YANK_REASON: usize = 500;

impl Meta {
    /// Every release of the app, newest first.
    pub async fn release_list(&self, app_id: i64) -> Result<Vec<ReleaseInfo>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT r.version, r.manifest_id, r.created_at, r.id = a.deployed_release_id, r.yanked_at, \
                 r.yank_reason FROM releases r JOIN apps a ON a.id = r.app_id WHERE r.app_id = $1 ORDER BY r.id DESC",
                &[&app_id],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let manifest_id = ferry_release::ManifestId::from_slice(r.get(1))
                    .ok_or_else(|| StoreError::Integrity("stored manifest id is not 32 bytes".into()))?;
                let yanked = match (r.get::<_, Option<SystemTime>>(4), r.get::<_, Option<String>>(5)) {
                    (Some(at), Some(reason)) => Some((at, reason)),
                    _ => None,
                };
                Ok(ReleaseInfo {
                    version: r.get(0),
                    manifest_id,
                    published_at: r.get(2),
                    deployed: r.get::<_, Option<bool>>(3).unwrap_or(false),
                    yanked,
                })
            })
            .collect()
    }

    /// The app's latest `limit` deploys, newest first.
    pub async fn deploy_history(&self, app_id: i64, limit: i64) -> Result<Vec<DeployEvent>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT r.version, d.deployed_at FROM deployments d JOIN releases r ON r.id = d.release_id \
                 WHERE d.app_id = $1 ORDER BY d.id DESC LIMIT $2",
                &[&app_id, &limit],
            )
            .await?;
        Ok(rows.iter().map(|r| DeployEvent { version: r.get(0), at: r.get(1) }).collect())
    }

    /// Withdraws `version` of the app. Refused (a failed precondition naming the
    /// version) while it is the deployed one; a release yanked before stays
    /// as it was.
    pub async fn yank_release(&self, app_id: i64, version: &str, reason: &str) -> Result<YankOutcome, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // The app row first, as deploys take it: a deploy and a yank of the
        // same release never both succeed.
        let deployed: Option<i64> = tx
            .query_one("SELECT deployed_release_id FROM apps WHERE id = $1 FOR NO KEY UPDATE", &[&app_id])
            .await?
            .get(0);
        let row = tx
            .query_opt(
                "SELECT id, yanked_at IS NOT NULL FROM releases WHERE app_id = $1 AND version = $2",
                &[&app_id, &version],
            )
            .await?;
        let Some(row) = row else {
            return Err(StoreError::NotFound(format!("version {version} is not published")));
        };
        let (id, yanked): (i64, bool) = (row.get(0), row.get(1));
        if yanked {
            return Ok(YankOutcome::AlreadyYanked);
        }
        if deployed == Some(id) {
            return Err(StoreError::Precondition(format!(
                "version {version} is the deployed one; deploy another version before yanking it"
            )));
        }
        tx.execute("UPDATE releases SET yanked_at = now(), yank_reason = $2 WHERE id = $1", &[&id, &reason]).await?;
        tx.commit().await?;
        Ok(YankOutcome::Yanked)
    }
}
