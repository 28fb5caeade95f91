//! `ferry-bench`: every Ferry benchmark next to its anchor, in one run.
//!
//!     scripts/bench            # release build, full inputs, rewrites BENCHMARKS.md
//!     scripts/bench --quick    # small inputs in seconds (scripts/test runs it)
//!
//! The orchestrator checks that every anchor tool is installed (a missing
//! one is an error, never a skip), fetches and verifies real inputs, runs
//! each benchmark as a child process of its own (`ferry-bench run NAME`, in
//! a process group of its own, so nothing it started can outlive it:
//! whatever is left when it ends is killed and reported as a failure),
//! collects the figures and rewrites the generated sections of
//! BENCHMARKS.md. Quick mode writes `target/bench/BENCHMARKS.quick.md`
//! instead and judges no targets: small inputs in a debug build say
//! nothing about speed, they only keep the harness from rotting.

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod benches;
mod inputs;
mod procs;
mod report;
mod stats;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use crate::benches::Bench;

#[derive(Parser)]
#[command(name = "ferry-bench", about = "Runs every Ferry benchmark next to its anchor and rewrites BENCHMARKS.md")]
struct Cli {
    /// Small inputs and short runs: checks the harness works, judges nothing.
    #[arg(long, global = true)]
    quick: bool,
    /// Run only these benchmarks (comma-separated: pack, transfer, upload,
    /// patches, storage, republish, variants, gateway, watch, dashboard); their sections alone are
    /// rewritten.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// The document whose generated sections are rewritten (default:
    /// BENCHMARKS.md, or target/bench/BENCHMARKS.quick.md with --quick).
    #[arg(long)]
    write: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Runs one benchmark and prints its figures as JSON (used by the
    /// orchestrator; each benchmark runs in a process of its own).
    #[command(hide = true)]
    Run {
        bench: String,
        /// Benchmark-specific parameter (the gateway's tenant count).
        #[arg(long)]
        param: Option<u64>,
    },
    /// A gateway process for the watch benchmark (stack from the environment).
    #[command(hide = true)]
    ServeGateway,
    /// Connections to a gateway for the watch benchmark.
    #[command(hide = true)]
    Watchers {
        #[arg(long)]
        url: String,
        #[arg(long)]
        count: u64,
        /// `idle` (keep-alive connections) or `watch`.
        #[arg(long)]
        mode: String,
    },
}

/// Where the benchmark inputs and outputs go: `target/bench` of the
/// workspace.
pub(crate) fn bench_dir() -> PathBuf {
    workspace_dir().join("target/bench")
}

/// The workspace root.
pub(crate) fn workspace_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    dir.canonicalize().unwrap_or(dir)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Run { bench, param }) => run_child(&bench, cli.quick, param),
        Some(Command::ServeGateway) => benches::watch::serve_gateway(),
        Some(Command::Watchers { url, count, mode }) => benches::watch::watchers(&url, count, &mode),
        None => orchestrate(cli.quick, &cli.only, cli.write),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Child mode: one benchmark, figures as one JSON line on stdout.
fn run_child(name: &str, quick: bool, param: Option<u64>) -> anyhow::Result<()> {
    let bench = Bench::parse(name)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let figures = rt.block_on(async {
        // Logs (RUST_LOG, default warn) go to stderr; stdout carries figures.
        let _telemetry = ferry_telemetry::init("ferry-bench", "warn")?;
        Box::pin(bench.run(quick, param)).await
    })?;
    println!("{}", serde_json::to_string(&figures)?);
    Ok(())
}

fn orchestrate(quick: bool, only: &[String], write: Option<PathBuf>) -> anyhow::Result<()> {
    let benches: Vec<Bench> = if only.is_empty() {
        Bench::ALL.to_vec()
    } else {
        only.iter().map(|n| Bench::parse(n)).collect::<anyhow::Result<_>>()?
    };
    // Every anchor first: a missing tool fails the run before anything is
    // measured, with the package that provides it.
    let mut missing = Vec::new();
    for bench in &benches {
        for tool in bench.tools() {
            if let Err(e) = procs::program(tool) {
                missing.push(format!("{e:#}"));
            }
        }
    }
    missing.sort();
    missing.dedup();
    if !missing.is_empty() {
        bail!("{} (scripts/install-deps installs them)", missing.join("; "));
    }
    std::fs::create_dir_all(bench_dir()).context("creating target/bench")?;
    let machine = report::Machine::probe(quick);
    eprintln!("==> {}", machine.line());

    let mut sections = Vec::new();
    for bench in &benches {
        let mut figures = Vec::new();
        for param in bench.params(quick) {
            eprintln!("==> {}{}", bench.name(), param.map(|p| format!(" ({p})")).unwrap_or_default());
            let started = std::time::Instant::now();
            let value = procs::run_bench_child(bench.name(), quick, param, bench.pinned())
                .with_context(|| format!("benchmark {}", bench.name()))?;
            eprintln!("    done in {:.1} s", started.elapsed().as_secs_f64());
            figures.push(value);
        }
        let section = bench.render(&figures, quick).with_context(|| format!("rendering {}", bench.name()))?;
        println!("{}", section.to_text());
        sections.push(section);
    }

    let path = match write {
        Some(path) => path,
        None if quick => bench_dir().join("BENCHMARKS.quick.md"),
        None => workspace_dir().join("BENCHMARKS.md"),
    };
    let template = std::fs::read_to_string(workspace_dir().join("BENCHMARKS.md")).context("reading BENCHMARKS.md")?;
    let doc = report::rewrite(&template, &machine, &sections)?;
    report::write_atomically(&path, &doc)?;
    eprintln!("==> wrote {}", path.display());
    let missed: Vec<String> = sections.iter().flat_map(|s| s.missed()).collect();
    if !missed.is_empty() {
        eprintln!("==> targets missed: {}", missed.join("; "));
    }
    Ok(())
}
