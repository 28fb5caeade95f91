//! What a benchmark reports, and how it lands in BENCHMARKS.md.
//!
//! BENCHMARKS.md holds prose written by hand and, between
//! `<!-- ferry-bench:ID -->` and `<!-- /ferry-bench:ID -->`, sections this
//! tool regenerates. A section always carries the date, machine, build,
//! tool versions, exact commands, medians, ratios and targets it was
//! measured with, so no figure in the document is ever separated from its
//! anchor or its circumstances.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, bail};

use crate::procs;

/// The machine and build a run measured.
pub(crate) struct Machine {
    pub(crate) date: String,
    pub(crate) description: String,
    pub(crate) quick: bool,
}

impl Machine {
    pub(crate) fn probe(quick: bool) -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let mem_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            })
            .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
        let os = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_owned()))
            })
            .unwrap_or_else(|| "unknown OS".into());
        let rustc = procs::run(std::process::Command::new("rustc").arg("--version"))
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|_| "rustc unknown".into());
        let days =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() / 86_400);
        let date = utc_date(days as i64);
        let build = if cfg!(debug_assertions) { "debug build" } else { "release build" };
        Self { date, description: format!("{cpu}, {cores} cores, {mem_gib:.0} GiB, {os}, {rustc}, {build}"), quick }
    }

    pub(crate) fn line(&self) -> String {
        let mode = if self.quick { "scripts/bench --quick" } else { "scripts/bench" };
        format!("{} · {mode} · {}", self.date, self.description)
    }
}

/// A table of figures.
#[derive(Debug, Default)]
pub(crate) struct Table {
    pub(crate) header: Vec<String>,
    pub(crate) rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(header: &[&str]) -> Self {
        Self { header: header.iter().map(|h| (*h).to_owned()).collect(), rows: Vec::new() }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        assert_eq!(cells.len(), self.header.len(), "row width");
        self.rows.push(cells);
    }

    fn markdown(&self) -> String {
        let mut out = String::new();
        let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
        out.push_str(&line(&self.header));
        out.push_str(&line(&self.header.iter().map(|_| "---".to_owned()).collect::<Vec<_>>()));
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out
    }
}

/// A target and whether this run met it (`None`: not judged, quick mode).
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) what: String,
    pub(crate) target: String,
    pub(crate) measured: String,
    pub(crate) met: Option<bool>,
}

impl Target {
    pub(crate) fn new(quick: bool, what: &str, target: &str, measured: String, met: bool) -> Self {
        Self { what: what.into(), target: target.into(), measured, met: (!quick).then_some(met) }
    }
}

/// One generated section of BENCHMARKS.md.
#[derive(Debug)]
pub(crate) struct Section {
    pub(crate) id: &'static str,
    /// What was measured on what inputs, one line each.
    pub(crate) setup: Vec<String>,
    /// The exact commands of both sides, one per line.
    pub(crate) commands: Vec<String>,
    pub(crate) tools: Vec<String>,
    pub(crate) tables: Vec<Table>,
    pub(crate) targets: Vec<Target>,
}

impl Section {
    pub(crate) fn new(id: &'static str) -> Self {
        Self { id, setup: Vec::new(), commands: Vec::new(), tools: Vec::new(), tables: Vec::new(), targets: Vec::new() }
    }

    /// The targets this run missed, for the closing summary.
    pub(crate) fn missed(&self) -> Vec<String> {
        self.targets
            .iter()
            .filter(|t| t.met == Some(false))
            .map(|t| format!("{}: {} (target {})", t.what, t.measured, t.target))
            .collect()
    }

    fn markdown(&self, machine: &Machine) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "Measured {}.", machine.line());
        if !self.tools.is_empty() {
            let _ = writeln!(out, "Anchors: {}.", self.tools.join(", "));
        }
        out.push('\n');
        for line in &self.setup {
            let _ = writeln!(out, "- {line}");
        }
        if !self.commands.is_empty() {
            out.push_str("\n```sh\n");
            for c in &self.commands {
                let _ = writeln!(out, "{c}");
            }
            out.push_str("```\n");
        }
        for table in &self.tables {
            out.push('\n');
            out.push_str(&table.markdown());
        }
        if !self.targets.is_empty() {
            let mut t = Table::new(&["target", "measured", "verdict"]);
            for target in &self.targets {
                let verdict = match target.met {
                    Some(true) => "**met**",
                    Some(false) => "**missed**",
                    None => "not judged (quick mode)",
                };
                t.row(vec![format!("{}: {}", target.what, target.target), target.measured.clone(), verdict.into()]);
            }
            out.push('\n');
            out.push_str(&t.markdown());
        }
        out
    }

    /// The section as printed on the console.
    pub(crate) fn to_text(&self) -> String {
        let mut out = format!("\n## {}\n", self.id);
        for table in &self.tables {
            out.push_str(&table.markdown());
            out.push('\n');
        }
        for t in &self.targets {
            let verdict = match t.met {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "not judged",
            };
            let _ = writeln!(out, "target {}: {} — measured {} — {verdict}", t.what, t.target, t.measured);
        }
        out
    }
}

/// `template` with every section in `sections` replaced by a fresh one.
/// A section without its markers in the template is an error: the
/// document and the tool must agree on what exists.
pub(crate) fn rewrite(template: &str, machine: &Machine, sections: &[Section]) -> anyhow::Result<String> {
    let mut doc = template.to_owned();
    for section in sections {
        let (begin, end) =
            (format!("<!-- ferry-bench:{} -->", section.id), format!("<!-- /ferry-bench:{} -->", section.id));
        let Some(start) = doc.find(&begin) else { bail!("BENCHMARKS.md has no `{begin}` marker") };
        let body_start = start + begin.len();
        let Some(len) = doc[body_start..].find(&end) else { bail!("BENCHMARKS.md has no `{end}` marker") };
        doc.replace_range(body_start..body_start + len, &format!("\n{}", section.markdown(machine)));
    }
    Ok(doc)
}

/// Writes `contents` to `path` through a temporary file and a rename, so a
/// reader never sees half a document.
pub(crate) fn write_atomically(path: &Path, contents: &str) -> anyhow::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("bench")));
    std::fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming onto {}", path.display()))
}

/// Bytes with thousands separators: 12345678 → "12,345,678".
pub(crate) fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The UTC calendar date `days` after 1970-01-01, as `YYYY-MM-DD` (the
/// civil-from-days algorithm of the proleptic Gregorian calendar).
fn utc_date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_from_days_since_the_epoch() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(59), "1970-03-01");
        assert_eq!(utc_date(11_016), "2000-02-29");
        assert_eq!(utc_date(20_415), "2025-11-23");
        assert_eq!(utc_date(20_780), "2026-11-23");
    }

    fn machine() -> Machine {
        Machine { date: "2026-01-01".into(), description: "test box".into(), quick: false }
    }

    #[test]
    fn rewrite_replaces_only_the_marked_section() {
        let template = "intro\n<!-- ferry-bench:pack -->\nold figures\n<!-- /ferry-bench:pack -->\nafter\n";
        let mut section = Section::new("pack");
        let mut table = Table::new(&["what", "GB/s"]);
        table.row(vec!["ferry".into(), "1.70".into()]);
        section.tables.push(table);
        section.targets.push(Target::new(false, "packing", "≥ 1.5 GB/s", "1.70 GB/s".into(), true));
        let doc = rewrite(template, &machine(), &[section]).unwrap();
        assert!(doc.starts_with("intro\n<!-- ferry-bench:pack -->\nMeasured 2026-01-01"), "{doc}");
        assert!(doc.contains("| ferry | 1.70 |"), "{doc}");
        assert!(doc.contains("| packing: ≥ 1.5 GB/s | 1.70 GB/s | **met** |"), "{doc}");
        assert!(!doc.contains("old figures"), "{doc}");
        assert!(doc.ends_with("<!-- /ferry-bench:pack -->\nafter\n"), "{doc}");
    }

    #[test]
    fn rewrite_refuses_a_template_without_the_markers() {
        let e = rewrite("no markers here", &machine(), &[Section::new("gateway")]).unwrap_err();
        assert!(e.to_string().contains("<!-- ferry-bench:gateway -->"), "{e}");
    }

    #[test]
    fn quick_targets_are_not_judged() {
        let t = Target::new(true, "x", "≥ 1", "0.5".into(), false);
        assert_eq!(t.met, None);
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(38_984_770), "38,984,770");
    }
}
