//! Packing speed: a large file and a directory of many small files, each
//! next to `b3sum` hashing the same bytes (the anchor: hashing only, with
//! every core), from a warm page cache.

use serde::{Deserialize, Serialize};

use crate::inputs;
use crate::procs;
use crate::report::{Section, Table, Target, thousands};
use crate::stats::{Timings, measure};

/// Target for one large file (what an agent should sustain on a release
/// of mostly one big package).
const FILE_TARGET_GBPS: f64 = 1.5;
/// Target for a directory of small files, as a fraction of b3sum's speed:
/// per-file work (open, stat, one manifest entry) should not cost more than
/// the hashing floor does.
const TREE_TARGET_RATIO: f64 = 0.5;

#[derive(Serialize, Deserialize)]
pub(crate) struct Figures {
    runs: usize,
    file_bytes: u64,
    file_pack: Timings,
    file_reference: Timings,
    file_b3sum: Timings,
    tree_files: usize,
    tree_bytes: u64,
    tree_pack: Timings,
    tree_b3sum: Timings,
    b3sum_version: String,
}

pub(crate) async fn run(quick: bool) -> anyhow::Result<Figures> {
    tokio::task::spawn_blocking(move || run_blocking(quick)).await?
}

fn run_blocking(quick: bool) -> anyhow::Result<Figures> {
    let (file_size, tree_files, runs) = if quick { (64 << 20, 2_000, 3) } else { (1 << 30, 50_000, 5) };

    let file = inputs::random_file(file_size)?;
    inputs::warm(&file)?;
    let file_pack = measure(runs, || {
        let entry = ferry_release::pack_file(&file, &|_| {})?;
        anyhow::ensure!(entry.size == file_size, "packed {} bytes of {file_size}", entry.size);
        Ok(())
    })?;
    let file_reference = measure(runs, || {
        let data = std::fs::read(&file)?;
        std::hint::black_box(blake3::hash(&data));
        Ok(())
    })?;
    let file_b3sum = measure(runs, || procs::run(procs::command("b3sum")?.arg(&file)).map(drop))?;

    let tree = inputs::tree(tree_files, 11)?;
    let tree_bytes = inputs::warm(&tree)?;
    let spec = ferry_release::ArtifactSpec::parse(&format!("web={}", tree.display()))?;
    let version: ferry_release::Version = "1.0.0".parse()?;
    let tree_pack = measure(runs, || {
        let manifest = ferry_release::pack(version.clone(), std::slice::from_ref(&spec), &|_| {})?;
        let files: usize = manifest.artifacts.iter().map(|a| a.files.len()).sum();
        anyhow::ensure!(files == tree_files, "packed {files} files of {tree_files}");
        Ok(())
    })?;
    let tree_b3sum = measure(runs, || procs::run(&mut super::b3sum_tree_command(&tree)?).map(drop))?;

    Ok(Figures {
        runs,
        file_bytes: file_size,
        file_pack,
        file_reference,
        file_b3sum,
        tree_files,
        tree_bytes,
        tree_pack,
        tree_b3sum,
        b3sum_version: procs::version("b3sum", "--version"),
    })
}

/// "1 GiB", "64 MiB".
fn size_label(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

fn gbps(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / seconds / 1e9
}

pub(crate) fn render(f: &Figures, quick: bool) -> Section {
    let mut s = Section::new("pack");
    s.tools.push(f.b3sum_version.clone());
    s.setup.push(format!(
        "a {} file of pseudo-random bytes, and a directory of {} files ({} MiB, 100 per subdirectory, 100 B to 32 KiB each), both in the page cache",
        size_label(f.file_bytes),
        thousands(f.tree_files as u64),
        f.tree_bytes >> 20
    ));
    s.setup.push(format!("{} runs of each; medians, with the fastest and slowest run", f.runs));
    s.setup.push("ferry: `ferry_release::pack_file` / `pack` in-process (FastCDC cut points, BLAKE3 of every chunk and of every file)".into());
    s.commands.push("b3sum FILE".into());
    s.commands.push(super::b3sum_tree_line("DIR"));

    let mut table = Table::new(&["input", "contender", "median", "fastest", "slowest", "throughput (median)"]);
    let file_label = format!("{} file", size_label(f.file_bytes));
    for (who, t) in [
        ("**ferry `pack_file`**", &f.file_pack),
        ("anchor: `b3sum` (hash only, all cores, mmap)", &f.file_b3sum),
        ("reference: read + `blake3::hash`, one thread", &f.file_reference),
    ] {
        table.row(
            [
                vec![file_label.clone(), who.into()],
                t.cells().into(),
                vec![format!("{:.2} GB/s", gbps(f.file_bytes, t.median()))],
            ]
            .concat(),
        );
    }
    let tree_label = format!("{} files", thousands(f.tree_files as u64));
    for (who, t) in
        [("**ferry `pack` (directory)**", &f.tree_pack), ("anchor: `b3sum` via xargs, all cores", &f.tree_b3sum)]
    {
        table.row(
            [
                vec![tree_label.clone(), who.into()],
                t.cells().into(),
                vec![format!("{} files/s", thousands((f.tree_files as f64 / t.median()) as u64))],
            ]
            .concat(),
        );
    }
    s.tables.push(table);

    let file_speed = gbps(f.file_bytes, f.file_pack.median());
    let file_ratio = f.file_pack.median() / f.file_b3sum.median();
    s.targets.push(Target::new(
        quick,
        "large file",
        &format!("≥ {FILE_TARGET_GBPS} GB/s"),
        format!("{file_speed:.2} GB/s ({file_ratio:.1}× b3sum's time)"),
        file_speed >= FILE_TARGET_GBPS,
    ));
    let tree_ratio = f.tree_b3sum.median() / f.tree_pack.median();
    s.targets.push(Target::new(
        quick,
        "many small files",
        &format!("≥ {TREE_TARGET_RATIO}× b3sum's files/s"),
        format!("{tree_ratio:.2}× b3sum"),
        tree_ratio >= TREE_TARGET_RATIO,
    ));
    s
}
