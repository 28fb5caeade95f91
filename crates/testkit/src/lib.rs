//! Real dependencies for tests and the local stack: a throwaway PostgreSQL
//! cluster (Debian's binaries), an S3 server that verifies SigV4 and
//! presigned URLs (s3s + s3s-fs, embedded), and a TCP relay that counts or
//! cuts traffic. Everything binds port 0 or a private Unix socket; nothing
//! waits by sleeping.

mod http;
mod postgres;
mod relay;
mod s3;
mod smtp;

pub use http::{http, http_builder};
pub use postgres::{Postgres, fresh_database};
pub use relay::{Damage, Downstream, Faults, Relay, Target};
pub use s3::S3Server;
pub use smtp::{Mail, SmtpServer};

/// A random lowercase hex string of `bytes * 2` characters, for names of
/// databases, buckets and directories.
pub fn random_suffix(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("operating system random source");
    hex::encode(buf)
}

/// Deterministic pseudo-random bytes (xorshift): incompressible like a real
/// package, and the same for the same seed.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
