//! The programs benchmarks run: finding them (a missing one is an error
//! naming its Debian package), running them, and making sure none outlives
//! the benchmark that started it.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

use anyhow::{Context, bail};

/// The Debian package providing each external program a benchmark runs.
const PACKAGES: &[(&str, &str)] = &[
    ("b3sum", "b3sum"),
    ("rsync", "rsync"),
    ("zstd", "zstd"),
    ("wrk", "wrk"),
    ("nginx", "nginx-light"),
    ("taskset", "util-linux"),
    ("curl", "curl"),
    ("tar", "tar"),
    ("find", "findutils"),
    ("xargs", "findutils"),
    ("sh", "dash"),
];

/// The full path of `name`, from `PATH` or the system directories a
/// non-root `PATH` may lack (nginx lives in /usr/sbin).
pub(crate) fn program(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    let package = PACKAGES.iter().find(|(p, _)| *p == name).map_or(name, |(_, pkg)| pkg);
    bail!("`{name}` is not installed (Debian package {package})")
}

/// A command for `name`, found with [`program`].
pub(crate) fn command(name: &str) -> anyhow::Result<Command> {
    Ok(Command::new(program(name)?))
}

/// Runs `cmd` to completion; fails with its stderr unless it succeeds.
pub(crate) fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out)
}

/// The first line a tool prints about its version, for the record.
pub(crate) fn version(name: &str, flag: &str) -> String {
    let Ok(mut cmd) = command(name) else { return format!("{name}: not installed") };
    match cmd.arg(flag).stdin(Stdio::null()).output() {
        // nginx prints its version on stderr.
        Ok(out) => {
            let text = if out.stdout.is_empty() { out.stderr } else { out.stdout };
            String::from_utf8_lossy(&text).lines().next().unwrap_or_default().trim().to_owned()
        }
        Err(e) => format!("{name}: {e}"),
    }
}

/// The resident memory of a process (`self`, or a pid), in MiB.
pub(crate) fn rss_mib(pid: &str) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .with_context(|| format!("no VmRSS in {path}"))?
        .parse()?;
    Ok(kib / 1024.0)
}

/// A long-running program (a server) that is stopped when this value is
/// dropped, even when the benchmark fails. The orchestrator's process-group
/// check is the backstop if this process dies without dropping it.
pub(crate) struct Guarded {
    child: Option<Child>,
    what: String,
}

impl Guarded {
    pub(crate) fn spawn(what: &str, cmd: &mut Command) -> anyhow::Result<Self> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        Ok(Self { child: Some(child), what: what.to_owned() })
    }

    /// Guards a child started elsewhere (with piped output to collect).
    pub(crate) fn from_child(what: &str, child: Child) -> Self {
        Self { child: Some(child), what: what.to_owned() }
    }

    /// Waits for the program to end by itself and returns its output.
    pub(crate) fn wait_with_output(mut self) -> anyhow::Result<Output> {
        let child = self.child.take().context("waited for twice")?;
        child.wait_with_output().with_context(|| format!("waiting for {}", self.what))
    }

    /// Fails if the program has already exited (it could not start).
    pub(crate) fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(child) = &mut self.child
            && let Some(status) = child.try_wait()?
        {
            bail!("{} exited early ({status})", self.what);
        }
        Ok(())
    }

    /// Stops the program and waits for it to be gone.
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `ferry-bench run NAME` as a child in a process group of its own
/// (pinned to core 0 when `pinned`) and returns the JSON it prints. Every
/// process still in that group when the child ends is killed, and its
/// existence fails the benchmark: a benchmark stops what it starts. Ctrl-C
/// stops the whole group too.
pub(crate) fn run_bench_child(
    name: &str,
    quick: bool,
    param: Option<u64>,
    pinned: bool,
) -> anyhow::Result<serde_json::Value> {
    let exe = std::env::current_exe().context("locating ferry-bench")?;
    let mut cmd = if pinned {
        let mut c = tokio::process::Command::new(program("taskset")?);
        c.args(["-c", "0"]).arg(exe);
        c
    } else {
        tokio::process::Command::new(exe)
    };
    cmd.arg("run").arg(name);
    if quick {
        cmd.arg("--quick");
    }
    if let Some(param) = param {
        cmd.arg("--param").arg(param.to_string());
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit()).process_group(0).kill_on_drop(true);

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let child = cmd.spawn().with_context(|| format!("starting the {name} benchmark"))?;
        let group = Group(child.id().context("child pid")?);
        let output = tokio::select! {
            out = child.wait_with_output() => out.context("waiting for the benchmark")?,
            _ = tokio::signal::ctrl_c() => {
                group.kill();
                bail!("interrupted");
            }
        };
        let strays = group.members();
        group.kill();
        if !output.status.success() {
            bail!("failed ({})", output.status);
        }
        if !strays.is_empty() {
            bail!("left processes running (killed now): {}", strays.join(", "));
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout.lines().last().context("the benchmark printed no figures")?;
        serde_json::from_str(line).with_context(|| format!("the benchmark printed no JSON figures: {line}"))
    })
}

/// A process group (its id is the leader's pid).
struct Group(u32);

impl Group {
    /// The processes still in the group, as "pid name".
    fn members(&self) -> Vec<String> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
            // "pid (comm) state ppid pgrp ...": comm may hold spaces.
            let Some((head, rest)) = stat.rsplit_once(')') else { continue };
            let mut fields = rest.split_whitespace();
            let state = fields.next();
            let pgrp = fields.nth(1).and_then(|p| p.parse::<u32>().ok());
            if pgrp == Some(self.0) && state != Some("Z") {
                let comm = head.split_once('(').map_or("?", |(_, c)| c);
                out.push(format!("{} {comm}", entry.file_name().to_string_lossy()));
            }
        }
        out
    }

    fn kill(&self) {
        ferry_testkit::kill_process_group(self.0);
    }
}
