//! What the gateway answers, shared by HTTP (JSON, described in OpenAPI)
//! and gRPC (converted in `grpc.rs`).

use std::sync::Arc;

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
    #[schema(value_type = Vec<ArtifactFile>)]
    pub artifacts: Arc<Vec<ArtifactFile>>,
    /// With `have`: files of directory artifacts to delete.
    #[schema(value_type = Vec<DeletedFile>)]
    pub deleted: Arc<Vec<DeletedFile>>,
    /// True when `have` was known and `artifacts` lists only changes.
    pub delta: bool,
    /// `artifacts`, `deleted` and `delta` already encoded as JSON members,
    /// shared by every answer with the same file list: the hot path then
    /// encodes only the four short fields in front.
    #[serde(skip)]
    pub(crate) listing_json: Option<Arc<str>>,
}

impl CheckAnswer {
    /// The JSON body: byte for byte what `serde_json::to_vec(self)` gives,
    /// without re-encoding a cached file list.
    pub fn to_json(&self) -> Vec<u8> {
        let Some(listing) = &self.listing_json else {
            return serde_json::to_vec(self).expect("answers serialise");
        };
        let mut out = Vec::with_capacity(listing.len() + 160);
        out.extend_from_slice(b"{\"action\":");
        serde_json::to_writer(&mut out, &self.action).expect("writing to a Vec");
        for (name, value) in [("current", &self.current), ("target", &self.target), ("manifest_id", &self.manifest_id)]
        {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
            serde_json::to_writer(&mut out, value).expect("writing to a Vec");
        }
        out.push(b',');
        out.extend_from_slice(listing.as_bytes());
        out.push(b'}');
        out
    }
}

/// Encodes the file-list members of an answer (see
/// [`CheckAnswer::listing_json`]).
pub(crate) fn listing_json(artifacts: &[ArtifactFile], deleted: &[DeletedFile], delta: bool) -> String {
    #[derive(Serialize)]
    struct Listing<'a> {
        artifacts: &'a [ArtifactFile],
        deleted: &'a [DeletedFile],
        delta: bool,
    }
    let object = serde_json::to_string(&Listing { artifacts, deleted, delta }).expect("answers serialise");
    object[1..object.len() - 1].to_owned()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_encoding_equals_serde() {
        let artifacts = vec![ArtifactFile {
            kind: "web".into(),
            path: "assets/\"odd\" name.js".into(),
            size: 42,
            blake3: "ab".repeat(32),
            url: "http://s3/files/x?X-Amz-Signature=1&a=<b>".into(),
            expires_at: "2026-11-22T10:15:00Z".into(),
        }];
        let deleted = vec![DeletedFile { kind: "web".into(), path: "gone.js".into() }];
        let mut answer = CheckAnswer {
            action: Action::Downgrade,
            current: "2.5.0-rc.1+build.\"7\"".into(),
            target: "2.4.1".into(),
            manifest_id: "cd".repeat(32),
            artifacts: Arc::new(artifacts.clone()),
            deleted: Arc::new(deleted.clone()),
            delta: true,
            listing_json: None,
        };
        let slow = answer.to_json();
        answer.listing_json = Some(listing_json(&artifacts, &deleted, true).into());
        assert_eq!(String::from_utf8(answer.to_json()).unwrap(), String::from_utf8(slow).unwrap());
    }
}
