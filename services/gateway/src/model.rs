//! What the gateway answers, shared by HTTP (JSON, described in OpenAPI)
//! and gRPC (converted in `grpc.rs`).

use std::sync::Arc;

use bytes::Bytes;
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
    /// What a client running `current` does to run `target`.
    pub fn between(current: &ferry_release::Version, target: &ferry_release::Version) -> Self {
        match current.cmp_precedence(target) {
            std::cmp::Ordering::Equal => Action::None,
            std::cmp::Ordering::Less => Action::Upgrade,
            std::cmp::Ordering::Greater => Action::Downgrade,
        }
    }

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
    /// The tenant and app the target release belongs to: a client refuses
    /// an answer that does not name its own (S1-8).
    #[schema(example = "acme")]
    pub tenant: String,
    #[schema(example = "crm")]
    pub app: String,
    /// True when the client must update before it can be used (show a "you
    /// must update to continue" prompt): its version is not among those the
    /// target release declares compatible, or the release declares none.
    /// False when `action` is `none`, or when the update may wait.
    pub required: bool,
    /// This device's (`X-Ferry-Device`) latest failed or rolled-back
    /// upgrade of this app, until a later success report clears it: show it
    /// to the user at launch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<LastFailureBody>,
    /// Files to download; empty when `action` is `none`.
    #[schema(value_type = Vec<ArtifactFile>)]
    pub artifacts: Arc<Vec<ArtifactFile>>,
    /// With `have`: files of that release the target no longer has (removed
    /// from a directory, a renamed single file, or a dropped artifact).
    #[schema(value_type = Vec<DeletedFile>)]
    pub deleted: Arc<Vec<DeletedFile>>,
    /// True when `have` was known and `artifacts` lists only changes.
    pub delta: bool,
    /// `artifacts`, `deleted` and `delta` already encoded as JSON members,
    /// shared by every answer with the same file list: the hot path then
    /// encodes only the four short fields in front.
    #[serde(skip)]
    pub(crate) listing_json: Option<Bytes>,
}

impl CheckAnswer {
    /// The JSON body: byte for byte what `serde_json::to_vec(self)` gives,
    /// in parts, without re-encoding or copying a cached file list.
    pub fn to_json_parts(&self) -> Vec<Bytes> {
        let Some(listing) = &self.listing_json else {
            return vec![Bytes::from(serde_json::to_vec(self).expect("answers serialise"))];
        };
        let mut head = Vec::with_capacity(192);
        head.extend_from_slice(b"{\"action\":");
        serde_json::to_writer(&mut head, &self.action).expect("writing to a Vec");
        for (name, value) in [
            ("current", &self.current),
            ("target", &self.target),
            ("manifest_id", &self.manifest_id),
            ("tenant", &self.tenant),
            ("app", &self.app),
        ] {
            head.extend_from_slice(b",\"");
            head.extend_from_slice(name.as_bytes());
            head.extend_from_slice(b"\":");
            serde_json::to_writer(&mut head, value).expect("writing to a Vec");
        }
        head.extend_from_slice(if self.required { b",\"required\":true" } else { b",\"required\":false" });
        if let Some(failure) = &self.last_failure {
            head.extend_from_slice(b",\"last_failure\":");
            serde_json::to_writer(&mut head, failure).expect("writing to a Vec");
        }
        head.push(b',');
        vec![Bytes::from(head), listing.clone(), Bytes::from_static(b"}")]
    }

    /// The JSON body in one buffer.
    pub fn to_json(&self) -> Vec<u8> {
        self.to_json_parts().concat()
    }
}

/// Encodes the file-list members of an answer (see
/// [`CheckAnswer::listing_json`]).
pub(crate) fn listing_json(artifacts: &[ArtifactFile], deleted: &[DeletedFile], delta: bool) -> Bytes {
    #[derive(Serialize)]
    struct Listing<'a> {
        artifacts: &'a [ArtifactFile],
        deleted: &'a [DeletedFile],
        delta: bool,
    }
    let object = serde_json::to_vec(&Listing { artifacts, deleted, delta }).expect("answers serialise");
    // The members without the enclosing braces.
    let end = object.len() - 1;
    Bytes::from(object).slice(1..end)
}

/// A push notice (`GET /v1/watch`, event `deployed`): the app's deployed
/// version changed, or its `required` rule did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct DeployNotice {
    #[schema(example = "acme")]
    pub tenant: String,
    #[schema(example = "crm")]
    pub app: String,
    /// The deployed version.
    #[schema(example = "2.4.1")]
    pub version: String,
    /// Hex BLAKE3 id of its manifest.
    pub manifest_id: String,
    /// The client versions that may keep running without updating (a
    /// semver requirement); absent: every other version must update.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = ">=2.0.0")]
    pub compatible: Option<String>,
    /// With `version` in the request: what this client should do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    /// With `version` in the request: whether this client must update before
    /// it can be used (as in a check's answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
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
    /// With `have`: a binary patch from the file of that release at the
    /// same artifact and path (for a single-file artifact, its one file) to
    /// this one, when one is ready and clearly smaller. Apply it to that
    /// file, check the result's BLAKE3 against `blake3`, and on any failure
    /// download `url` instead (docs/clients.md, "Patches").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<PatchOffer>,
    /// For a text-like file (JSON, JS, CSS, source maps, ...): the same file
    /// compressed, when ready and clearly smaller. Download it instead of
    /// `url`, decompress, check the result's BLAKE3 against `blake3`, and on
    /// any failure download `url` (docs/clients.md, "Compressed files").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compressed: Option<CompressedOffer>,
}

/// A file stored compressed: fewer bytes to download for the same file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct CompressedOffer {
    /// `zstd`: one standard zstd frame holding the file (`zstd -d`; a
    /// decoder must allow a window log of 31 for files above 128 MiB).
    #[schema(example = "zstd")]
    pub encoding: String,
    /// Bytes of the compressed file.
    pub size: u64,
    /// Hex BLAKE3 of the compressed bytes (`blake3` above is the one of the
    /// file they decompress to).
    pub blake3: String,
    /// Presigned S3 GET URL of the compressed file.
    pub url: String,
    /// When `url` stops working (RFC 3339, UTC).
    #[schema(example = "2026-11-22T10:15:00Z")]
    pub expires_at: String,
}

/// A binary patch that turns a file the client holds into a file to
/// download.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct PatchOffer {
    /// `zstd-ref`: one zstd frame whose content is the new file, compressed
    /// with the base file as reference prefix (`zstd -d --patch-from=BASE
    /// --long=31`).
    #[schema(example = "zstd-ref")]
    pub algorithm: String,
    /// Hex BLAKE3 of the file the patch applies to (the client's copy).
    pub base_blake3: String,
    /// Bytes of the patch.
    pub size: u64,
    /// Hex BLAKE3 of the patch's bytes.
    pub blake3: String,
    /// Presigned S3 GET URL of the patch.
    pub url: String,
    /// When `url` stops working (RFC 3339, UTC).
    #[schema(example = "2026-11-22T10:15:00Z")]
    pub expires_at: String,
}

/// A device's latest failed upgrade, as answers show it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LastFailureBody {
    /// The version the device failed to run.
    #[schema(example = "2.4.1")]
    pub version: String,
    /// `failure` or `rolled_back`.
    #[schema(example = "failure")]
    pub result: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// When the report arrived (RFC 3339, UTC).
    pub at: String,
}

impl From<&ferry_reports::LastFailure> for LastFailureBody {
    fn from(f: &ferry_reports::LastFailure) -> Self {
        Self {
            version: f.version.clone(),
            result: f.outcome.as_str().to_owned(),
            error_code: f.error_code.clone(),
            error_message: f.error_message.clone(),
            at: rfc3339(f.at),
        }
    }
}

/// A report of how an upgrade went (`POST /v1/reports`). Unknown fields
/// are refused.
#[derive(Debug, Clone, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // the schema for the OpenAPI document; parsing uses ferry_reports::ReportInput
pub struct ReportBody {
    /// Chosen by the client, 1 to 64 of `A-Z a-z 0-9 . _ : -`; unique per
    /// tenant. Retrying with the same id changes nothing.
    #[schema(example = "3f2a9c10-7b1e-4c55-9d51-0a9c1b2e7f44")]
    report_id: String,
    /// The device's stable id, 1 to 128 visible ASCII characters.
    device_id: String,
    #[schema(example = "acme")]
    tenant: String,
    #[schema(example = "crm")]
    app: String,
    /// The version the device ran before.
    #[schema(example = "2.3.0")]
    from_version: String,
    /// The version it tried to run.
    #[schema(example = "2.4.1")]
    to_version: String,
    /// `success`, `failure` or `rolled_back`.
    #[schema(example = "failure")]
    result: String,
    /// A short machine-readable code, as `report_id`.
    #[schema(example = "E_DISK_FULL")]
    error_code: Option<String>,
    /// At most 1,000 characters; no control characters but newline and tab.
    error_message: Option<String>,
    /// How long the upgrade took (at most a week).
    duration_ms: Option<u64>,
    #[schema(example = "android")]
    platform: Option<String>,
}

/// A stored report.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReportAccepted {
    /// The report's id (the one sent).
    pub report_id: String,
    /// True when a report with this id was stored before (a retry).
    pub duplicate: bool,
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
    /// Newest first, in the app's version order (semver precedence,
    /// integer codes, or dotted numbers compared one by one).
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
    /// `invalid_parameter`, `invalid_field` (a report's), `unauthenticated`,
    /// `not_found`, `not_deployed`, `version_not_found`, `rate_limited`,
    /// `unavailable` or `internal`.
    #[schema(example = "rate_limited")]
    pub error: String,
    pub message: String,
    /// With `rate_limited`: seconds to wait (also in `Retry-After`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u64>,
}

pub(crate) use ferry_store::rfc3339;

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
            patch: Some(PatchOffer {
                algorithm: "zstd-ref".into(),
                base_blake3: "cd".repeat(32),
                size: 7,
                blake3: "ef".repeat(32),
                url: "http://s3/patches/y?X-Amz-Signature=2".into(),
                expires_at: "2026-11-22T10:15:00Z".into(),
            }),
            compressed: Some(CompressedOffer {
                encoding: "zstd".into(),
                size: 5,
                blake3: "12".repeat(32),
                url: "http://s3/patches/z?X-Amz-Signature=3".into(),
                expires_at: "2026-11-22T10:15:00Z".into(),
            }),
        }];
        let deleted = vec![DeletedFile { kind: "web".into(), path: "gone.js".into() }];
        let mut answer = CheckAnswer {
            action: Action::Downgrade,
            current: "2.5.0-rc.1+build.\"7\"".into(),
            target: "2.4.1".into(),
            manifest_id: "cd".repeat(32),
            tenant: "acme".into(),
            app: "crm\"x".into(),
            required: true,
            last_failure: Some(LastFailureBody {
                version: "2.4.1".into(),
                result: "failure".into(),
                error_code: Some("E_DISK".into()),
                error_message: Some("no \"space\"".into()),
                at: "2026-11-22T10:15:00Z".into(),
            }),
            artifacts: Arc::new(artifacts.clone()),
            deleted: Arc::new(deleted.clone()),
            delta: true,
            listing_json: None,
        };
        let slow = answer.to_json();
        answer.listing_json = Some(listing_json(&artifacts, &deleted, true));
        assert_eq!(String::from_utf8(answer.to_json()).unwrap(), String::from_utf8(slow).unwrap());
    }
}
