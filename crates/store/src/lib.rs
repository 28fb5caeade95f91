//! Where releases live (S0-2, S3-3): metadata in PostgreSQL ([`Meta`]),
//! chunks and assembled files in S3 ([`Blobs`]).
//!
//! This crate knows storage layouts and queries; it does not know gRPC, HTTP,
//! or who is allowed to do what (services decide that).

mod blobs;
mod changes;
mod error;
mod gc;
mod keys;
mod locations;
mod meta;
pub mod metrics;
mod patches;
mod pg_tls;
mod places;
mod publishers;
mod releases;

pub use blobs::{Blobs, S3Settings, chunk_key, file_key, patch_key};
pub use changes::{Change, Notice, listen, listen_channel};
pub use error::StoreError;
pub use gc::{GcReport, collect_garbage};
pub use keys::{ApiKey, KeyRole, TokenError};
pub use locations::{Location, validate_endpoint, validate_location};
pub use meta::{
    AppReleases, Authenticated, CommitOptions, CommitOutcome, DatabaseUrl, DeployOutcome, KeyRecord, Meta, Principal,
    ReleaseRow, SavedManifest, connect, ensure_same_release,
};
pub use patches::{PatchGcReport, PatchJob, PatchOutcome, PatchPair, PatchRow, collect_patches, empty_file};
pub use places::{ChunkSource, drop_placed_chunk_objects};
pub use publishers::PublisherRecord;
pub use releases::{DeployEvent, MAX_YANK_REASON, ReleaseInfo, YankOutcome};

/// RFC 3339 UTC with seconds, e.g. `2026-11-22T10:15:00Z`: how every
/// answer, message and listing shows a time.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    aws_smithy_types::DateTime::from(t)
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}
