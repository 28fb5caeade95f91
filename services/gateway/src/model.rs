//! What the gateway answers, shared by HTTP (JSON, described in OpenAPI)
//! and gRPC (converted in `grpc.rs`).

use serde::Serialize;
use utoipa::ToSchema;

/// What a client should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// The client runs the target version already.
    None,
    /// The target version is higher: download it.
    Upgrade,
    /// The target version is lower (S0-3): download it all the same.
    Downgrade,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::None => "none",
            Action::Upgrade => "upgrade",
            Action::Downgrade => "downgrade",
        }
    }
}

/// The answer to a version check.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CheckAnswer {
    pub action: Action,
    /// The version the client runs, as it sent it.
    #[schema(example = "2.3.0")]
    pub current: String,
    /// The version to run: the deployed one, or the one asked for with `want`.
    #[schema(example = "2.4.1")]
    pub target: String,
    /// Hex BLAKE3 id of the target release's manifest; send it back as
    /// `have` later to get only what changed.
    pub manifest_id: String,
    /// Files to download; empty when `action` is `none`.
    pub artifacts: Vec<ArtifactFile>,
    /// With `have`: files of directory artifacts to delete.
    pub deleted: Vec<DeletedFile>,
    /// True when `have` was known and `artifacts` lists only changes.
    pub delta: bool,
}

/// One file to download, straight from S3.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ArtifactFile {
    /// Artifact name: `mobile`, `web`, `api`, ...
    #[schema(example = "mobile")]
    pub kind: String,
    /// Path within the artifact (the file name for single-file artifacts).
    #[schema(example = "crm.apk")]
    pub path: String,
    pub size: u64,
    /// Hex BLAKE3 of the file: check it after downloading.
    pub blake3: String,
    /// Presigned S3 GET URL for exactly this file.
    pub url: String,
    /// When `url` stops working (RFC 3339, UTC).
    #[schema(example = "2026-11-22T10:15:00Z")]
    pub expires_at: String,
}

/// A file of a directory artifact that the target release no longer has.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeletedFile {
    pub kind: String,
    pub path: String,
}

/// The published versions of an app.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VersionList {
    /// The deployed version, if any.
    pub deployed: Option<String>,
    /// Newest first (semantic versioning order).
    pub versions: Vec<VersionInfo>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VersionInfo {
    pub version: String,
    pub manifest_id: String,
    /// RFC 3339, UTC.
    pub published_at: String,
    pub deployed: bool,
}

/// Every error answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    /// `invalid_parameter`, `unauthenticated`, `not_found`, `not_deployed`,
    /// `version_not_found`, `rate_limited`, `unavailable` or `internal`.
    #[schema(example = "rate_limited")]
    pub error: String,
    pub message: String,
    /// With `rate_limited`: seconds to wait (also in `Retry-After`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u64>,
}

/// RFC 3339 UTC with seconds, e.g. `2026-11-22T10:15:00Z`.
pub(crate) fn rfc3339(t: std::time::SystemTime) -> String {
    aws_smithy_types::DateTime::from(t)
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}
