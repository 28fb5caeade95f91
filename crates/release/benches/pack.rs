//! Packing throughput on one large file, next to its anchor: `b3sum` (which
//! only hashes, with every core and mmap) on the same file in the same run.
//!
//!     cargo bench -p ferry-release --bench pack
//!
//! `FERRY_BENCH_FILE` picks the file; otherwise a 1 GiB file of pseudo-random
//! bytes is created under `target/bench/`. Each tool runs `FERRY_BENCH_RUNS`
//! times (default 5) on a warm page cache; the best and median are reported.

#![allow(clippy::print_stdout)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn main() {
    let path = std::env::var_os("FERRY_BENCH_FILE").map(PathBuf::from).unwrap_or_else(default_file);
    let size = std::fs::metadata(&path).expect("bench file").len();
    let runs: usize = std::env::var("FERRY_BENCH_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(5);
    println!("file: {} ({} MiB), {} runs each, {} cores", path.display(), size >> 20, runs, num_cores());
    std::fs::read(&path).expect("warm the page cache");

    let pack = measure(runs, || {
        let entry = ferry_release::pack_file(&path, &|_| {}).expect("pack");
        assert_eq!(entry.size, size);
    });
    report("ferry pack_file (FastCDC + BLAKE3 chunks + BLAKE3 file)", size, &pack);

    let single = measure(runs, || {
        let data = std::fs::read(&path).expect("read");
        std::hint::black_box(blake3::hash(&data));
    });
    report("read + blake3 one thread (reference)", size, &single);

    match Command::new("b3sum").arg("--version").output() {
        Ok(_) => {
            let b3sum = measure(runs, || {
                let out = Command::new("b3sum").arg(&path).output().expect("b3sum");
                assert!(out.status.success());
            });
            report("b3sum (anchor: hash only, all cores, mmap)", size, &b3sum);
            let ratio = median(&pack).as_secs_f64() / median(&b3sum).as_secs_f64();
            println!("pack / b3sum time ratio (median): {ratio:.2}");
        }
        Err(_) => println!("b3sum not installed (apt-get install b3sum): anchor skipped"),
    }
}

fn default_file() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    std::fs::create_dir_all(&dir).expect("bench dir");
    let path = dir.join("random-1GiB.bin");
    if std::fs::metadata(&path).map(|m| m.len()).ok() != Some(1 << 30) {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).expect("create bench file"));
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut block = vec![0u8; 1 << 20];
        for _ in 0..1024 {
            for b in block.chunks_exact_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.copy_from_slice(&x.to_le_bytes());
            }
            f.write_all(&block).expect("write bench file");
        }
        f.flush().expect("flush bench file");
    }
    path
}

fn measure(runs: usize, mut f: impl FnMut()) -> Vec<Duration> {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    times.sort();
    times
}

fn median(times: &[Duration]) -> Duration {
    times[times.len() / 2]
}

fn report(what: &str, size: u64, times: &[Duration]) {
    let gbps = |d: Duration| size as f64 / d.as_secs_f64() / 1e9;
    println!("{what:<58} best {:>6.2} GB/s  median {:>6.2} GB/s", gbps(times[0]), gbps(median(times)));
}

fn num_cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
