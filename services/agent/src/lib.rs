//! ferry-agent: packs the static resources of the version deployed in a
//! private cloud and publishes them to the registry, sending only the chunks
//! the registry lacks for this tenant (S0-1, S3-1, S3-2).
//!
//! `main.rs` parses the command line and renders; [`publish`] and
//! [`deploy`] are what tests drive.

pub mod bundle;
mod cache;
mod client;
mod delta;
mod error;
mod located;
mod manifests;
mod progress;
mod publish;
mod releases;
pub mod variants;
pub mod watch;

pub use cache::DEFAULT_CACHE_BYTES;
pub use client::{Connection, Proxy, RegistryClient};
pub use error::AgentError;
pub use manifests::DEFAULT_STATE_DIR;
pub use progress::Progress;
pub use publish::{ArtifactSummary, DeploySummary, PublishRequest, PublishSummary, deploy, deploy_with, publish};
pub use releases::{DeployLine, ReleaseLine, Releases, YankSummary, releases, yank};
pub use variants::{LinkMode, Problem, Variants, VariantsError};
