//! Ferry's wire contract: code generated from `proto/` plus the single table
//! that maps error kinds onto gRPC codes and HTTP statuses.
//!
//! Generated types stay at the edges: services convert them into domain types
//! (`ferry-release`) where they validate input, and never pass them inward.

mod error;

pub use error::{ErrorKind, ServiceError, error_chain, to_status};

pub mod registry {
    pub mod v1 {
        #![allow(unreachable_pub, clippy::all)]
        tonic::include_proto!("ferry.registry.v1");
    }
}

pub mod gateway {
    pub mod v1 {
        #![allow(unreachable_pub, clippy::all)]
        tonic::include_proto!("ferry.gateway.v1");
    }
}

/// Encoded `FileDescriptorSet` of every Ferry proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ferry_descriptor");
