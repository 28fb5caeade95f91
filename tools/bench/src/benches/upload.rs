//! Upload throughput of new data: publishing a file the registry has never
//! seen (pack, send every chunk over gRPC, store the chunks, assemble the
//! file in S3, commit), next to a plain aws-sdk-s3 `PutObject` of the same
//! bytes to the same S3 server with the same client settings.
//!
//! Every run uses bytes of its own (a fresh seed), so nothing is ever
//! deduplicated; the two contenders alternate so that neither always runs
//! on a warmer machine.

use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_s3::primitives::ByteStream;
use ferry_e2e::{Stack, publish_to};
use serde::{Deserialize, Serialize};

use crate::inputs;
use crate::report::{Section, Table, Target};
use crate::stats::Timings;

const TARGET_RATIO: f64 = 0.8;

#[derive(Serialize, Deserialize)]
pub(crate) struct Figures {
    bytes: u64,
    runs: usize,
    ferry: Timings,
    put: Timings,
}

pub(crate) async fn run(quick: bool) -> anyhow::Result<Figures> {
    let (bytes, runs) = if quick { (16u64 << 20, 3) } else { (256u64 << 20, 5) };
    let stack = Stack::start().await;
    let token = stack.tenant("bench").await;
    let client = stack.blobs.client().clone();
    let bucket = stack.blobs.bucket().to_owned();
    let dir = tempfile::tempdir()?;
    let (mut ferry, mut put) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let file = dir.path().join(format!("new-{i}.bin"));
        inputs::write_noise(&file, bytes, 1_000 + i as u64)?;
        inputs::warm(&file)?;

        let publish = async {
            let start = Instant::now();
            let summary =
                publish_to(&stack.connection(&token), "bench", &format!("1.0.{i}"), &[("mobile", &file)], false)
                    .await
                    .context("publishing new data")?;
            anyhow::ensure!(summary.bytes_sent == bytes, "sent {} of {bytes} bytes: not all new", summary.bytes_sent);
            Ok::<Duration, anyhow::Error>(start.elapsed())
        };
        let plain_put = async {
            let start = Instant::now();
            client
                .put_object()
                .bucket(&bucket)
                .key(format!("anchor/{i}"))
                .body(ByteStream::from_path(&file).await?)
                .send()
                .await
                .context("plain PutObject")?;
            Ok::<Duration, anyhow::Error>(start.elapsed())
        };
        if i % 2 == 0 {
            ferry.push(publish.await?.as_secs_f64());
            put.push(plain_put.await?.as_secs_f64());
        } else {
            put.push(plain_put.await?.as_secs_f64());
            ferry.push(publish.await?.as_secs_f64());
        }
        std::fs::remove_file(&file)?;
    }
    Ok(Figures { bytes, runs, ferry: Timings { seconds: ferry }, put: Timings { seconds: put } })
}

pub(crate) fn render(f: &Figures, quick: bool) -> Section {
    let mut s = Section::new("upload");
    s.setup.push(format!(
        "{} MiB of new pseudo-random bytes per run (a fresh seed each run, so nothing is deduplicated), {} runs, the contenders alternating; medians",
        f.bytes >> 20,
        f.runs
    ));
    s.setup.push("S3: the embedded s3s server (SigV4 checked) on loopback, storing on the local disk; registry and agent in-process, gRPC over loopback TCP".into());
    s.setup.push("ferry: `ferry_agent::publish` of one file end to end (pack, upload every chunk, store chunks, assemble `files/<blake3>` in S3, commit)".into());
    s.setup
        .push("anchor: one aws-sdk-s3 `PutObject` of the same file, with the registry's own S3 client settings".into());
    let mut table = Table::new(&["contender", "median", "fastest", "slowest", "throughput (median)"]);
    let mbps = |t: &Timings| f.bytes as f64 / t.median() / 1e6;
    for (who, t) in [("**ferry publish (new data)**", &f.ferry), ("anchor: plain `PutObject`", &f.put)] {
        table.row([vec![who.into()], t.cells().into(), vec![format!("{:.0} MB/s", mbps(t))]].concat());
    }
    s.tables.push(table);
    let ratio = f.put.median() / f.ferry.median();
    s.targets.push(Target::new(
        quick,
        "new-data throughput",
        &format!("≥ {TARGET_RATIO}× plain PutObject"),
        format!("{ratio:.2}× ({:.0} vs {:.0} MB/s)", mbps(&f.ferry), mbps(&f.put)),
        ratio >= TARGET_RATIO,
    ));
    s
}
