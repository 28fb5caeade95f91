//! The release: what an agent publishes and what a registry stores.
//!
//! A release is a version of one app of one tenant plus a [`Manifest`]: the
//! artifacts (API description, mobile package, web bundle, ...) with their files
//! and each file's content-defined chunks, all named by BLAKE3 (S0-1, S3-1).
//!
//! This crate is pure: no I/O beyond reading the files it packs, no network,
//! no storage. Agents, the registry and the gateway share it so that all of
//! them agree on names, versions and the manifest's canonical bytes.

mod manifest;
mod name;
mod pack;
mod quote;
mod version;

pub use manifest::{
    ArtifactKind, ArtifactManifest, ChunkRef, FileEntry, Hash, MAX_MANIFEST_BYTES, Manifest, ManifestError, ManifestId,
    Owner, RelPath,
};
pub use name::{Name, NameError};
pub use pack::{ArtifactSpec, CHUNK_AVG, CHUNK_MAX, CHUNK_MIN, PackError, WalkedFile, pack, pack_file, walk};
pub use quote::Quoted;
pub use version::{Version, VersionError, Versioning, parse_version};
