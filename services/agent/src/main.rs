//! ferry-agent: thin binary over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ferry_agent::{Connection, Progress, PublishRequest, PublishSummary};
use ferry_release::{ArtifactSpec, Name, parse_version};

#[derive(Parser)]
#[command(name = "ferry-agent", version, about = "Publishes a private cloud's deployed version to the Ferry registry")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Target {
    /// Registry URL: https://host:port, or http://host:port for local use.
    #[arg(long, env = "FERRY_REGISTRY_URL")]
    registry: String,
    /// Agent key issued by `ferry-registry admin issue-key TENANT --role agent`.
    #[arg(long, env = "FERRY_AGENT_TOKEN", hide_env_values = true)]
    token: String,
    /// PEM file of a private CA to trust for https:// registries.
    #[arg(long, env = "FERRY_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Tenant this private cloud belongs to.
    #[arg(long, env = "FERRY_TENANT")]
    tenant: String,
    /// App, e.g. crm.
    #[arg(long, env = "FERRY_APP")]
    app: String,
    /// Version (semantic versioning, e.g. 2.4.1).
    #[arg(long)]
    version: String,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Client versions that still work with this release, as a semver
    /// requirement (e.g. '>=2.4.0, <2.5.0'): they are told the update is not
    /// required. Without it every other version must update.
    #[arg(long, value_parser = parse_compatible)]
    compatible: Option<semver::VersionReq>,
}

#[derive(Subcommand)]
enum Command {
    /// Packs artifacts and publishes them as a release, sending only new bytes.
    Publish {
        #[command(flatten)]
        target: Target,
        /// An artifact: NAME[@PLATFORM,...]=PATH, where PATH is a file or a
        /// directory. Repeat for each artifact (e.g. mobile, web, api).
        #[arg(long = "artifact", required = true)]
        artifacts: Vec<String>,
        /// Also record the version as deployed in this private cloud.
        #[arg(long)]
        deploy: bool,
        /// Retries after network or registry failures, with back-off.
        #[arg(long, default_value_t = 5)]
        retries: u32,
    },
    /// Records a published version as deployed (an older one rolls back).
    Deploy {
        #[command(flatten)]
        target: Target,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = ferry_config::parse();
    ferry_telemetry::run_main("ferry-agent", "warn", Box::pin(run(cli.command))).await
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Publish { target, artifacts, deploy, retries } => {
            let artifacts = artifacts.iter().map(|a| ArtifactSpec::parse(a)).collect::<Result<Vec<_>, _>>()?;
            let (conn, tenant, app, version) = parse_target(&target)?;
            let compatible = target.compatible.clone();
            let req = PublishRequest { tenant, app, version, artifacts, deploy, retries, compatible };
            let progress = if target.json { Progress::hidden() } else { Progress::stderr() };
            let summary = ferry_agent::publish(&conn, &req, &progress).await?;
            if target.json {
                print_json(&summary)?;
            } else {
                print_summary(&summary);
            }
        }
        Command::Deploy { target } => {
            let (conn, tenant, app, version) = parse_target(&target)?;
            let summary = ferry_agent::deploy_with(&conn, &tenant, &app, &version, target.compatible.as_ref()).await?;
            if target.json {
                print_json(&summary)?;
            } else {
                let previous = summary.previous_version.as_deref().unwrap_or("none");
                print_line(&format!(
                    "deployed {}/{} {} (was {previous})",
                    summary.tenant, summary.app, summary.version
                ));
            }
        }
    }
    Ok(())
}

fn parse_compatible(value: &str) -> Result<semver::VersionReq, String> {
    semver::VersionReq::parse(value).map_err(|e| format!("not a semver requirement such as '>=2.4.0, <2.5.0': {e}"))
}

fn parse_target(t: &Target) -> anyhow::Result<(Connection, Name, Name, semver::Version)> {
    let conn = Connection { url: t.registry.clone(), token: t.token.clone(), ca_cert: t.ca_cert.clone() };
    Ok((conn, Name::parse("tenant", &t.tenant)?, Name::parse("app", &t.app)?, parse_version(&t.version)?))
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    print_line(&serde_json::to_string(value)?);
    Ok(())
}

#[allow(clippy::print_stdout)]
fn print_line(line: &str) {
    println!("{line}");
}

fn print_summary(s: &PublishSummary) {
    let state = match (s.created, s.deployed) {
        (true, true) => "published and deployed",
        (true, false) => "published",
        (false, true) => "already published; deployed",
        (false, false) => "already published; nothing changed",
    };
    let mut out = format!("{}/{} {}: {state} (manifest {})\n", s.tenant, s.app, s.version, &s.manifest_id[..16]);
    for a in &s.artifacts {
        let platforms = if a.platforms.is_empty() { String::new() } else { format!(" @{}", a.platforms.join(",")) };
        out.push_str(&format!("  {:<10} {:>9} {:>5} file(s) {}{platforms}\n", a.name, a.kind, a.files, human(a.bytes)));
    }
    let saved = if s.bytes_total > 0 { 100.0 * (1.0 - s.bytes_sent as f64 / s.bytes_total as f64) } else { 0.0 };
    out.push_str(&format!(
        "  total {}, sent {} ({saved:.1}% saved); chunks: {} total, {} sent, {} reused",
        human(s.bytes_total),
        human(s.bytes_sent),
        s.chunks_total,
        s.chunks_sent,
        s.chunks_reused
    ));
    print_line(&out);
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}
