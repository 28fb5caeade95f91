//! An unchanged republish of a release with many files, end to end: the
//! agent packs every file, the registry answers that nothing is missing,
//! and the commit finds the release already there. The anchor is `b3sum`
//! of the same files: any tool that must tell whether anything changed has
//! to read and hash them all.

use std::time::Instant;

use anyhow::Context;
use ferry_e2e::{Stack, publish_to};
use serde::{Deserialize, Serialize};

use crate::inputs;
use crate::procs;
use crate::report::{Section, Table, Target};
use crate::stats::{Timings, measure, measure_async};

const TARGET_SECONDS: f64 = 1.0;

#[derive(Serialize, Deserialize)]
pub(crate) struct Figures {
    files: usize,
    bytes: u64,
    runs: usize,
    ferry: Timings,
    b3sum: Timings,
    b3sum_version: String,
}

pub(crate) async fn run(quick: bool) -> anyhow::Result<Figures> {
    let (files, runs) = if quick { (300, 3) } else { (10_000, 5) };
    let tree = tokio::task::spawn_blocking(move || inputs::tree(files, 23)).await??;
    let bytes = inputs::warm(&tree)?;
    let stack = Stack::start().await;
    let token = stack.tenant("bench").await;
    let conn = stack.connection(&token);
    let first = publish_to(&conn, "bench", "1.0.0", &[("web", &tree)], true).await.context("first publish")?;
    anyhow::ensure!(first.created, "the first publish created nothing");

    let ferry = measure_async(runs, |_| async {
        let start = Instant::now();
        let again = publish_to(&conn, "bench", "1.0.0", &[("web", &tree)], true).await.context("republish")?;
        let elapsed = start.elapsed();
        anyhow::ensure!(
            !again.created && again.bytes_sent == 0,
            "an unchanged republish sent {} bytes",
            again.bytes_sent
        );
        Ok(elapsed)
    })
    .await?;
    let anchor_tree = tree.clone();
    let b3sum = tokio::task::spawn_blocking(move || {
        measure(runs, || procs::run(&mut super::b3sum_tree_command(&anchor_tree)?).map(drop))
    })
    .await??;
    Ok(Figures { files, bytes, runs, ferry, b3sum, b3sum_version: procs::version("b3sum", "--version") })
}

pub(crate) fn render(f: &Figures, quick: bool) -> Section {
    let mut s = Section::new("republish");
    s.tools.push(f.b3sum_version.clone());
    s.setup.push(format!(
        "a release whose one artifact is a directory of {} files ({} MiB), published and deployed once, then published again unchanged; {} runs, medians",
        crate::report::thousands(f.files as u64),
        f.bytes >> 20,
        f.runs
    ));
    s.setup.push("ferry: `ferry_agent::publish` end to end against the registry over gRPC (pack, prepare, commit), files in the page cache".into());
    s.commands.push(super::b3sum_tree_line("DIR"));
    let mut table = Table::new(&["contender", "median", "fastest", "slowest"]);
    for (who, t) in [("**ferry unchanged republish**", &f.ferry), ("anchor: `b3sum` of every file", &f.b3sum)] {
        table.row([vec![who.into()], t.cells().into()].concat());
    }
    s.tables.push(table);
    s.targets.push(Target::new(
        quick,
        &format!("unchanged republish of {} files", crate::report::thousands(f.files as u64)),
        &format!("< {TARGET_SECONDS} s"),
        format!("{:.3} s ({:.1}× b3sum's time)", f.ferry.median(), f.ferry.median() / f.b3sum.median()),
        f.ferry.median() < TARGET_SECONDS,
    ));
    s
}
