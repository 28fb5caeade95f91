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
