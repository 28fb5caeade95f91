//! ferry-gateway: the access server apps talk to (S2-1). It authenticates a
//! client key, rate-limits (S2-4), compares the client's version with the
//! one deployed in its tenant's private cloud (S0-3) and answers with
//! presigned S3 URLs for the target release (S0-4, S2-5). It never carries
//! package bytes.

pub mod config;
mod core;
pub mod cors;
mod error;
mod grpc;
mod http;
mod launch;
mod limits;
mod metrics;
mod model;
mod server;
mod shared_limits;
mod tenants;
mod urls;
mod watch;

pub use crate::core::{Caller, CheckParams, Clock, DEVICE_FAILURE_TTL, Gateway, GatewayConfig};
pub use error::GatewayError;
pub use http::{openapi_json, router};
pub use launch::run_serve;
pub use limits::Rate;
pub use metrics::Metrics;
pub use model::{
    Action, ArtifactFile, CheckAnswer, CompressedOffer, DeletedFile, DeployNotice, ErrorBody, LastFailureBody,
    PatchOffer, ReportAccepted, ReportBody, VersionInfo, VersionList,
};
pub use server::{serve, serve_with_tls};
pub use shared_limits::SharedLimits;
pub use watch::{WatchItem, Watcher};
