//! Bytes an agent sends to publish version 2 of a release when the registry
//! holds version 1, next to `rsync --stats` "Total bytes sent" for the same
//! pair (the anchor), in the same run.
//!
//!     FERRY_BENCH_PAIRS="mobile=v1/app.bin:v2/app.bin;web=v1/web:v2/web" \
//!         cargo bench -p ferry-e2e --bench transfer
//!
//! `scripts/bench` fetches real release artifacts and sets the pairs. The
//! agent's bytes are counted twice: chunk payload (`bytes_sent` in its
//! summary) and everything it wrote to the TCP connection (manifest, gRPC and
//! HTTP/2 framing, zstd compression), measured by a relay in between.

#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::Command;

use ferry_e2e::{Stack, publish_to};
use ferry_testkit::Relay;

struct Pair {
    name: String,
    v1: PathBuf,
    v2: PathBuf,
}

fn pairs() -> Vec<Pair> {
    let spec = std::env::var("FERRY_BENCH_PAIRS").unwrap_or_default();
    spec.split(';')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (name, paths) = p.split_once('=').expect("NAME=V1:V2");
            let (v1, v2) = paths.split_once(':').expect("NAME=V1:V2");
            Pair { name: name.trim().into(), v1: v1.trim().into(), v2: v2.trim().into() }
        })
        .collect()
}

fn size(path: &Path) -> u64 {
    if path.is_dir() {
        std::fs::read_dir(path).unwrap().map(|e| size(&e.unwrap().path())).sum()
    } else {
        std::fs::metadata(path).unwrap().len()
    }
}

/// rsync's "Total bytes sent" for updating a copy of `v1` to `v2`.
fn rsync_sent(v1: &Path, v2: &Path, extra: &[&str]) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest");
    let status = Command::new("cp").arg("-a").arg(v1).arg(&dest).status().expect("cp");
    assert!(status.success());
    let (src, dst) = if v2.is_dir() {
        (format!("{}/", v2.display()), format!("{}/", dest.display()))
    } else {
        (v2.display().to_string(), dest.display().to_string())
    };
    // --checksum: files whose size and mtime match are still compared by
    // content (npm packages all carry the same mtime); --no-whole-file: use
    // the delta algorithm even though both ends are local.
    let out = Command::new("rsync")
        .args(["-r", "--checksum", "--no-whole-file", "--stats"])
        .args(extra)
        .arg(&src)
        .arg(&dst)
        .output()
        .expect("rsync (apt-get install rsync)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find(|l| l.starts_with("Total bytes sent:")).expect("rsync stats");
    line.trim_start_matches("Total bytes sent:").trim().replace(',', "").parse().unwrap()
}

#[tokio::main]
async fn main() {
    let pairs = pairs();
    if pairs.is_empty() {
        println!("FERRY_BENCH_PAIRS is empty: run scripts/bench, which fetches real artifacts");
        return;
    }
    let stack = Stack::start().await;
    let token = stack.tenant("bench").await;
    let v1: Vec<(&str, &Path)> = pairs.iter().map(|p| (p.name.as_str(), p.v1.as_path())).collect();
    let v2: Vec<(&str, &Path)> = pairs.iter().map(|p| (p.name.as_str(), p.v2.as_path())).collect();
    publish_to(&stack.connection(&token), "bench", "1.0.0", &v1, true).await.expect("publish v1");

    let relay = Relay::start(stack.addr, None).await.unwrap();
    let via_relay = ferry_agent::Connection { url: relay.url(), token, ca_cert: None };
    let summary = publish_to(&via_relay, "bench", "2.0.0", &v2, true).await.expect("publish v2");
    let wire = relay.bytes_sent();

    let total_v2: u64 = pairs.iter().map(|p| size(&p.v2)).sum();
    println!("{:<10} {:>12} {:>14} {:>14}", "artifact", "v2 bytes", "rsync sent", "rsync -z sent");
    let (mut rsync, mut rsync_z) = (0, 0);
    for p in &pairs {
        let (plain, z) = (rsync_sent(&p.v1, &p.v2, &[]), rsync_sent(&p.v1, &p.v2, &["-z"]));
        println!("{:<10} {:>12} {:>14} {:>14}", p.name, size(&p.v2), plain, z);
        rsync += plain;
        rsync_z += z;
    }
    println!("{:<10} {:>12} {:>14} {:>14}", "all", total_v2, rsync, rsync_z);
    println!();
    println!(
        "ferry chunk payload sent : {:>12} bytes ({} of {} chunks)",
        summary.bytes_sent, summary.chunks_sent, summary.chunks_total
    );
    println!("ferry bytes on the wire  : {:>12} bytes (manifest, framing, zstd)", wire);
    println!("rsync total bytes sent   : {:>12} bytes", rsync);
    println!("rsync -z total bytes sent: {:>12} bytes", rsync_z);
    println!("ferry wire / rsync       : {:>12.2}", wire as f64 / rsync as f64);
    println!("saved vs full upload     : {:>11.1}%", 100.0 * (1.0 - wire as f64 / total_v2 as f64));
}
