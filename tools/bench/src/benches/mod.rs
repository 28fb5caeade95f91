//! The benchmarks. Each one measures a Ferry figure next to its anchor in
//! the same process, on the same inputs: `run` (in a child process)
//! produces the figures as JSON, `render` (in the orchestrator) turns them
//! into a BENCHMARKS.md section with the targets judged.

mod dashboard;
mod gateway;
mod pack;
mod patches;
mod republish;
mod storage;
mod transfer;
mod upload;
mod variants;
pub(crate) mod watch;

use anyhow::bail;

use crate::report::Section;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bench {
    Pack,
    Transfer,
    Upload,
    Republish,
    Gateway,
    Watch,
    Dashboard,
    Variants,
    Patches,
    Storage,
}

impl Bench {
    pub(crate) const ALL: [Bench; 10] = [
        Bench::Pack,
        Bench::Transfer,
        Bench::Patches,
        Bench::Storage,
        Bench::Upload,
        Bench::Republish,
        Bench::Variants,
        Bench::Gateway,
        Bench::Watch,
        Bench::Dashboard,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Bench::Pack => "pack",
            Bench::Transfer => "transfer",
            Bench::Upload => "upload",
            Bench::Republish => "republish",
            Bench::Gateway => "gateway",
            Bench::Watch => "watch",
            Bench::Dashboard => "dashboard",
            Bench::Variants => "variants",
            Bench::Patches => "patches",
            Bench::Storage => "storage",
        }
    }

    pub(crate) fn parse(name: &str) -> anyhow::Result<Self> {
        match Self::ALL.into_iter().find(|b| b.name() == name) {
            Some(b) => Ok(b),
            None => bail!("unknown benchmark `{name}` (one of: {})", Self::ALL.map(Bench::name).join(", ")),
        }
    }

    /// External programs the benchmark runs: all must be installed.
    pub(crate) fn tools(self) -> &'static [&'static str] {
        match self {
            Bench::Pack => &["b3sum", "sh", "find", "xargs"],
            Bench::Transfer => &["rsync", "zstd", "curl", "tar"],
            Bench::Upload => &[],
            Bench::Republish => &["b3sum", "sh", "find", "xargs"],
            Bench::Gateway => &["nginx", "wrk", "taskset"],
            Bench::Watch => &[],
            Bench::Dashboard => &[],
            Bench::Variants => &["curl", "tar"],
            Bench::Patches => &["zstd", "curl", "tar"],
            Bench::Storage => &["curl", "tar"],
        }
    }

    /// One child run per parameter (the gateway runs once per tenant count).
    pub(crate) fn params(self, quick: bool) -> Vec<Option<u64>> {
        match self {
            Bench::Gateway => gateway::tenant_counts(quick).into_iter().map(Some).collect(),
            _ => vec![None],
        }
    }

    /// Whether the child runs pinned to core 0 (the load generator takes
    /// core 1).
    pub(crate) fn pinned(self) -> bool {
        self == Bench::Gateway
    }

    pub(crate) async fn run(self, quick: bool, param: Option<u64>) -> anyhow::Result<serde_json::Value> {
        let value = match self {
            Bench::Pack => serde_json::to_value(Box::pin(pack::run(quick)).await?)?,
            Bench::Transfer => serde_json::to_value(Box::pin(transfer::run(quick)).await?)?,
            Bench::Upload => serde_json::to_value(Box::pin(upload::run(quick)).await?)?,
            Bench::Republish => serde_json::to_value(Box::pin(republish::run(quick)).await?)?,
            Bench::Watch => serde_json::to_value(Box::pin(watch::run(quick)).await?)?,
            Bench::Dashboard => serde_json::to_value(Box::pin(dashboard::run(quick)).await?)?,
            Bench::Variants => serde_json::to_value(Box::pin(variants::run(quick)).await?)?,
            Bench::Patches => serde_json::to_value(Box::pin(patches::run(quick)).await?)?,
            Bench::Storage => serde_json::to_value(Box::pin(storage::run(quick)).await?)?,
            Bench::Gateway => {
                let Some(tenants) = param else { bail!("the gateway benchmark needs --param TENANTS") };
                serde_json::to_value(Box::pin(gateway::run(quick, tenants)).await?)?
            }
        };
        Ok(value)
    }

    pub(crate) fn render(self, figures: &[serde_json::Value], quick: bool) -> anyhow::Result<Section> {
        let one = || -> anyhow::Result<serde_json::Value> {
            match figures {
                [one] => Ok(one.clone()),
                _ => bail!("expected one set of figures, got {}", figures.len()),
            }
        };
        match self {
            Bench::Pack => Ok(pack::render(&serde_json::from_value(one()?)?, quick)),
            Bench::Transfer => Ok(transfer::render(&serde_json::from_value(one()?)?, quick)),
            Bench::Upload => Ok(upload::render(&serde_json::from_value(one()?)?, quick)),
            Bench::Republish => Ok(republish::render(&serde_json::from_value(one()?)?, quick)),
            Bench::Watch => Ok(watch::render(&serde_json::from_value(one()?)?, quick)),
            Bench::Dashboard => Ok(dashboard::render(&serde_json::from_value(one()?)?, quick)),
            Bench::Variants => Ok(variants::render(&serde_json::from_value(one()?)?, quick)),
            Bench::Patches => Ok(patches::render(&serde_json::from_value(one()?)?, quick)),
            Bench::Storage => Ok(storage::render(&serde_json::from_value(one()?)?, quick)),
            Bench::Gateway => {
                let runs = figures.iter().map(|f| serde_json::from_value(f.clone())).collect::<Result<Vec<_>, _>>()?;
                gateway::render(&runs, quick)
            }
        }
    }
}

/// A `b3sum` of every file below `dir`, batched by xargs over all cores:
/// the floor for any tool that must read and hash every file.
pub(crate) fn b3sum_tree_command(dir: &std::path::Path) -> anyhow::Result<std::process::Command> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut cmd = crate::procs::command("sh")?;
    cmd.arg("-c")
        .arg(format!("find \"$1\" -type f -print0 | xargs -0 -P {cores} -n 1000 b3sum >/dev/null"))
        .arg("sh")
        .arg(dir);
    Ok(cmd)
}

/// The same command as a line for the report.
pub(crate) fn b3sum_tree_line(what: &str) -> String {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    format!("find {what} -type f -print0 | xargs -0 -P {cores} -n 1000 b3sum >/dev/null")
}
