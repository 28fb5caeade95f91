//! Real dependencies for tests and the local stack: a throwaway PostgreSQL
//! cluster (Debian's binaries), an S3 server that verifies SigV4 and
//! presigned URLs (s3s + s3s-fs, embedded), and a TCP relay that counts or
//! cuts traffic; headless Chromium for pages. Everything binds port 0 or a private Unix socket; nothing
//! waits by sleeping.

mod browser;
mod http;
mod otlp;
mod postgres;
mod proxy;
mod redis;
mod relay;
mod s3;
mod smtp;

pub use browser::Browser;
pub use http::{http, http_builder};
pub use otlp::{OtlpReceiver, ReceivedSpan};
pub use postgres::{Postgres, fresh_database};
pub use proxy::ConnectProxy;
pub use redis::RedisServer;
pub use relay::{Damage, Downstream, Faults, Relay, Target};
pub use s3::{RequestCounts, Requests, S3Server};
pub use smtp::{Mail, SmtpServer};

/// Kills every process of the process group `pgid` (SIGKILL). Written
/// `kill -KILL -PGID`: the one form both dash's and bash's `kill` accept
/// (dash refuses `--`).
pub fn kill_process_group(pgid: u32) {
    let _ = std::process::Command::new("sh")
        .args(["-c", &format!("kill -KILL -{pgid} 2>/dev/null")])
        .stdin(std::process::Stdio::null())
        .status();
}

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

#[cfg(test)]
mod tests {
    use std::os::unix::process::{CommandExt, ExitStatusExt};

    #[test]
    fn kills_a_whole_process_group() {
        // A shell with a child of its own: both are in the new group.
        let mut leader =
            std::process::Command::new("sh").args(["-c", "sleep 300 & wait"]).process_group(0).spawn().unwrap();
        let pgid = leader.id();
        super::kill_process_group(pgid);
        assert_eq!(leader.wait().unwrap().signal(), Some(9));
        // `kill -0 -PGID` fails once no process is left in the group (the
        // orphaned sleep is reaped by init, so poll briefly).
        let alive = || {
            std::process::Command::new("sh")
                .args(["-c", &format!("kill -0 -{pgid} 2>/dev/null")])
                .status()
                .unwrap()
                .success()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while alive() {
            assert!(std::time::Instant::now() < deadline, "a process of group {pgid} survived");
            std::thread::yield_now();
        }
    }
}
