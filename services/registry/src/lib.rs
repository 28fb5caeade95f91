//! ferry-registry: the public-cloud end of publishing (S0-2, S3-2…S3-4).
//!
//! `main.rs` only parses the command line; everything else is here so tests
//! drive the real server in-process on a port-0 listener.

pub mod admin;
mod auth;
pub mod config;
mod dashboard;
mod delta;
mod error;
pub mod import;
mod launch;
pub mod metrics;
mod ops;
pub mod patcher;
mod releases;
mod server;
mod service;

pub use dashboard::serve_dashboard;
pub use launch::run_serve;
pub use ops::{router as ops_router, serve_ops};
pub use server::{Tls, serve};
pub use service::{MAX_RELEASE_FILES, Registry, RegistrySettings};
