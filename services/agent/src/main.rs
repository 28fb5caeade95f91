//! ferry-agent: thin binary over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use std::sync::Arc;

use ferry_agent::bundle::{Base, BundleRequest};
use ferry_agent::variants::{LinkMode, Variants, VariantsError, VariantsRequest, VariantsSummary};
use ferry_agent::{Connection, Progress, Proxy, PublishRequest, PublishSummary};
use ferry_release::{ArtifactSpec, Name, parse_version};

#[derive(Parser)]
#[command(name = "ferry-agent", version, about = "Publishes a private cloud's deployed version to the Ferry registry")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How to reach the registry (HTTPS_PROXY/NO_PROXY from the environment).
#[derive(Args)]
struct RegistryArgs {
    /// Registry URL: https://host:port, or http://host:port for local use.
    #[arg(long, env = "FERRY_REGISTRY_URL")]
    registry: String,
    /// Agent key issued by `ferry-registry admin issue-key TENANT --role
    /// agent`, or a publisher key (`--role publisher --tenants ...`).
    #[arg(long, env = "FERRY_AGENT_TOKEN", hide_env_values = true)]
    token: String,
    /// PEM file of a private CA to trust for https:// registries.
    #[arg(long, env = "FERRY_CA_CERT")]
    ca_cert: Option<PathBuf>,
}

impl RegistryArgs {
    fn connection(&self) -> Connection {
        Connection {
            url: self.registry.clone(),
            token: self.token.clone(),
            ca_cert: self.ca_cert.clone(),
            proxy: Proxy::from_env(),
        }
    }
}

#[derive(Args)]
struct Target {
    #[command(flatten)]
    registry: RegistryArgs,
    /// Tenant this private cloud belongs to (not with --variants: the file
    /// names the tenants).
    #[arg(long, env = "FERRY_TENANT")]
    tenant: Option<String>,
    /// App, e.g. crm (with --variants: default, the file's `app`).
    #[arg(long, env = "FERRY_APP")]
    app: Option<String>,
    /// Version, in the app's versioning (e.g. 2.4.1, 42 or 2024.01.3).
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

/// Where an app's releases are: for `status`, `releases` and `yank`.
#[derive(Args)]
struct AppTarget {
    #[command(flatten)]
    registry: RegistryArgs,
    /// Tenant this private cloud belongs to.
    #[arg(long, env = "FERRY_TENANT")]
    tenant: String,
    /// App, e.g. crm.
    #[arg(long, env = "FERRY_APP")]
    app: String,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Packs artifacts and publishes them as a release, sending only new bytes.
    Publish {
        #[command(flatten)]
        target: Target,
        /// An artifact: NAME[@PLATFORM,...]=PATH, where PATH is a file or a
        /// directory. Repeat for each artifact (e.g. mobile, web, api).
        #[arg(long = "artifact", required_unless_present = "variants", conflicts_with = "variants")]
        artifacts: Vec<String>,
        /// Publishes one release per tenant of this variants file
        /// (ferry.variants.toml, see docs/variants.md) instead of
        /// --artifact, in one run, with one summary.
        #[arg(long)]
        variants: Option<PathBuf>,
        /// With --variants: only these tenants, comma-separated.
        #[arg(long, value_delimiter = ',', requires = "variants")]
        only: Vec<String>,
        /// Also record the version as deployed in this private cloud.
        #[arg(long)]
        deploy: bool,
        /// Retries after network or registry failures, with back-off.
        #[arg(long, default_value_t = 5)]
        retries: u32,
        /// Where the release last published is cached, so that what the
        /// registry lacks goes as deltas against it (docs/agent.md); a
        /// directory that cannot be written only costs the deltas.
        #[arg(long, env = "FERRY_AGENT_STATE_DIR", default_value = ferry_agent::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Sends whole chunks: no cache is read or written.
        #[arg(long)]
        no_delta: bool,
    },
    /// Records a published version as deployed (an older one rolls back).
    Deploy {
        #[command(flatten)]
        target: Target,
    },
    /// Shows the deployed version, the deploy history and how many
    /// versions are published.
    Status {
        #[command(flatten)]
        target: AppTarget,
    },
    /// Lists the published versions, newest first (deployed and yanked
    /// ones marked).
    Releases {
        #[command(flatten)]
        target: AppTarget,
    },
    /// Withdraws a published version: it stays stored but is no longer
    /// offered to apps and cannot be deployed (not the deployed one).
    Yank {
        #[command(flatten)]
        target: AppTarget,
        /// The version to withdraw.
        #[arg(long)]
        version: String,
        /// Why (kept with the release, shown by `releases`).
        #[arg(long)]
        reason: String,
    },
    /// Runs until stopped: reads the version the private system runs (from
    /// an HTTP endpoint, a file or a command) and publishes and deploys
    /// each new one; serves /healthz, /status and /metrics on `listen`.
    Watch {
        /// The configuration file (see docs/agent.md).
        #[arg(long, env = "FERRY_AGENT_CONFIG", default_value = "/etc/ferry/agent.toml")]
        config: PathBuf,
        /// Checks the configuration, prints what it would watch, and exits.
        #[arg(long)]
        check: bool,
    },
    /// Transport bundles: a release in one file, for private clouds that
    /// cannot reach the registry (docs/agent.md).
    Bundle {
        #[command(subcommand)]
        command: BundleCommand,
    },
    /// Checks or renders a variants file (ferry.variants.toml).
    Variants {
        #[command(subcommand)]
        command: VariantsCommand,
    },
}

#[derive(Subcommand)]
enum BundleCommand {
    /// Packs a release into one file holding its manifest and chunks (no
    /// registry needed); `bundle push` or `ferry-registry admin import`
    /// publishes it.
    Create {
        /// Tenant this private cloud belongs to.
        #[arg(long, env = "FERRY_TENANT")]
        tenant: String,
        /// App, e.g. crm.
        #[arg(long, env = "FERRY_APP")]
        app: String,
        /// Version, in the app's versioning (e.g. 2.4.1, 42 or 2024.01.3).
        #[arg(long)]
        version: String,
        /// An artifact: NAME[@PLATFORM,...]=PATH, as for publish.
        #[arg(long = "artifact", required = true)]
        artifacts: Vec<String>,
        /// The bundle file to write (it must not exist).
        #[arg(long)]
        out: PathBuf,
        /// Leave out the chunks of this earlier version, bundled on this
        /// machine before (the registry must hold them).
        #[arg(long, conflicts_with = "base_manifest")]
        since_version: Option<String>,
        /// Leave out the chunks of this manifest (hex id), bundled on this
        /// machine before.
        #[arg(long)]
        base_manifest: Option<String>,
        /// Deploy the release when the bundle is published.
        #[arg(long)]
        deploy: bool,
        /// Client versions that still work with this release (as for publish).
        #[arg(long, value_parser = parse_compatible)]
        compatible: Option<semver::VersionReq>,
        /// Where the manifests of earlier bundles are kept.
        #[arg(long, env = "FERRY_AGENT_STATE_DIR", default_value = ferry_agent::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Print the result as one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Checks a bundle whole, then publishes it (and deploys it, if it was
    /// made with --deploy), sending only the chunks the registry lacks.
    Push {
        file: PathBuf,
        #[command(flatten)]
        registry: RegistryArgs,
        /// Retries after network or registry failures, with back-off.
        #[arg(long, default_value_t = 5)]
        retries: u32,
        /// Print the result as one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Checks a bundle whole and prints what it holds.
    Show {
        file: PathBuf,
        /// Print the header as one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum VariantsCommand {
    /// Checks a variants file: syntax, unknown keys, names, paths on disk,
    /// JSON pointers, tenants in two sections, and (given a registry and
    /// token) tenants the registry does not know. Prints every problem as
    /// FILE:LINE:COLUMN: what is wrong, and fails if there is any.
    Check {
        file: PathBuf,
        /// Also ask this registry which tenants the token may publish for.
        #[arg(long, env = "FERRY_REGISTRY_URL")]
        registry: Option<String>,
        #[arg(long, env = "FERRY_AGENT_TOKEN", hide_env_values = true)]
        token: Option<String>,
        #[arg(long, env = "FERRY_CA_CERT")]
        ca_cert: Option<PathBuf>,
        /// Checks the file alone, even when a registry and token are set.
        #[arg(long)]
        offline: bool,
    },
    /// Writes what one tenant would get into DIR (which must not exist or
    /// be empty), one entry per artifact, for review.
    Render {
        file: PathBuf,
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        out: PathBuf,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = ferry_config::parse();
    // A long-lived agent logs what it does; a one-shot command prints it.
    let level = if matches!(cli.command, Command::Watch { .. }) { "info" } else { "warn" };
    ferry_telemetry::run_main("ferry-agent", level, Box::pin(run(cli.command))).await
}

async fn run(command: Command) -> anyhow::Result<()> {
    Proxy::check_env().map_err(anyhow::Error::msg)?;
    match command {
        Command::Publish { target, variants: Some(file), only, deploy, retries, .. } => {
            publish_variants(&target, &file, &only, deploy, retries).await?;
        }
        Command::Publish { target, artifacts, deploy, retries, state_dir, no_delta, .. } => {
            let artifacts = artifacts.iter().map(|a| ArtifactSpec::parse(a)).collect::<Result<Vec<_>, _>>()?;
            let (conn, tenant, app, version) = parse_target(&target)?;
            let compatible = target.compatible.clone();
            let state_dir = (!no_delta).then_some(state_dir);
            let req = PublishRequest { tenant, app, version, artifacts, deploy, retries, compatible, state_dir };
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
        Command::Status { target } => {
            let (conn, tenant, app) = parse_app_target(&target)?;
            let r = ferry_agent::releases(&conn, &tenant, &app).await?;
            if target.json {
                #[derive(serde::Serialize)]
                struct Status<'a> {
                    tenant: &'a str,
                    app: &'a str,
                    deployed_version: Option<&'a str>,
                    history: &'a [ferry_agent::DeployLine],
                    published: Vec<&'a str>,
                }
                print_json(&Status {
                    tenant: &r.tenant,
                    app: &r.app,
                    deployed_version: r.deployed_version.as_deref(),
                    history: &r.history,
                    published: r
                        .releases
                        .iter()
                        .filter(|l| l.yanked_at.is_none())
                        .map(|l| l.version.as_str())
                        .collect(),
                })?;
            } else {
                let available = r.releases.iter().filter(|l| l.yanked_at.is_none()).count();
                print_line(&format!(
                    "{}/{}: deployed {}; {available} version(s) published, {} yanked",
                    r.tenant,
                    r.app,
                    r.deployed_version.as_deref().unwrap_or("nothing"),
                    r.releases.len() - available
                ));
                for d in &r.history {
                    print_line(&format!("  {}  deployed {}", d.deployed_at, d.version));
                }
            }
        }
        Command::Releases { target } => {
            let (conn, tenant, app) = parse_app_target(&target)?;
            let r = ferry_agent::releases(&conn, &tenant, &app).await?;
            if target.json {
                print_json(&r)?;
            } else {
                for l in &r.releases {
                    let state = match (&l.yanked_at, l.deployed) {
                        (Some(at), _) => format!("yanked {at}: {}", l.yank_reason.as_deref().unwrap_or("")),
                        (None, true) => "deployed".to_owned(),
                        (None, false) => String::new(),
                    };
                    print_line(&format!(
                        "{}  {}  {}  {state}",
                        l.version,
                        l.published_at,
                        l.manifest_id.get(..12).unwrap_or(&l.manifest_id)
                    ));
                }
            }
        }
        Command::Yank { target, version, reason } => {
            let (conn, tenant, app) = parse_app_target(&target)?;
            let summary = ferry_agent::yank(&conn, &tenant, &app, &parse_version(&version)?, &reason).await?;
            if target.json {
                print_json(&summary)?;
            } else if summary.already_yanked {
                print_line(&format!("{}/{} {} was already yanked", summary.tenant, summary.app, summary.version));
            } else {
                print_line(&format!("yanked {}/{} {}", summary.tenant, summary.app, summary.version));
            }
        }
        Command::Watch { config, check } => watch(&config, check).await?,
        Command::Bundle { command } => bundle(command).await?,
        Command::Variants { command: VariantsCommand::Check { file, registry, token, ca_cert, offline } } => {
            let variants = load_variants(&file)?;
            let mut problems = Vec::new();
            if let (false, Some(url), Some(token)) = (offline, registry, token) {
                let conn = Connection { url, token, ca_cert, proxy: Proxy::from_env() };
                problems = ferry_agent::variants::check_tenants(&conn, &variants).await?;
            }
            if !problems.is_empty() {
                anyhow::bail!("{}", VariantsError::from(problems));
            }
            let tenants = variants.tenants();
            let sections: std::collections::BTreeSet<&str> = tenants.iter().map(|(_, v)| v.as_str()).collect();
            print_line(&format!(
                "{}: ok: {} variant(s) for {} tenant(s): {}",
                file.display(),
                sections.len(),
                tenants.len(),
                tenants.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>().join(", ")
            ));
        }
        Command::Variants { command: VariantsCommand::Render { file, tenant, out } } => {
            let variants = load_variants(&file)?;
            let tenant = Name::parse("tenant", &tenant)?;
            let specs = variants.render(&tenant, &out, LinkMode::Copy)?;
            let mut lines = vec![format!("rendered tenant {tenant} of {} into {}", file.display(), out.display())];
            for spec in specs {
                let platforms = spec.platforms.iter().map(Name::as_str).collect::<Vec<_>>().join(",");
                let at = if platforms.is_empty() { String::new() } else { format!("@{platforms}") };
                lines.push(format!("  --artifact {}{at}={}", spec.name, spec.path.display()));
            }
            print_line(&lines.join("\n"));
        }
    }
    Ok(())
}

async fn watch(file: &std::path::Path, check: bool) -> anyhow::Result<()> {
    let config = ferry_agent::watch::load(file).map_err(|problems| {
        anyhow::anyhow!("{}", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))
    })?;
    if check {
        ferry_agent::watch::check(&config).map_err(anyhow::Error::msg)?;
        let artifacts: Vec<String> = config.artifacts.iter().map(|a| format!("{}={}", a.name, a.path)).collect();
        print_line(&format!(
            "{}: ok: {}/{}: version from {} every {} s; registry {}; artifacts {}; state in {}",
            file.display(),
            config.tenant,
            config.app,
            config.source,
            config.interval.as_secs(),
            config.connection.url,
            artifacts.join(", "),
            config.state_dir.display()
        ));
        return Ok(());
    }
    let listen = config.listen;
    let watcher = ferry_agent::watch::Watcher::new(config).map_err(anyhow::Error::msg)?;
    let lifecycle = ferry_net::Lifecycle::new();
    // Nothing balances load onto an agent: stop at the first signal.
    tokio::spawn(lifecycle.clone().on_signals(std::time::Duration::ZERO));
    let stopping = || {
        let lifecycle = lifecycle.clone();
        async move { lifecycle.stopping().await }
    };
    let ops = match listen {
        Some(addr) => {
            let listener = ferry_net::bind(addr, "listen").await?;
            let router = watcher.router();
            let stopping = stopping();
            Some(tokio::spawn(ferry_net::serve_http(listener, ferry_net::Limits::default(), router, stopping)))
        }
        None => None,
    };
    watcher.run(stopping()).await;
    if let Some(ops) = ops {
        ops.await??;
    }
    Ok(())
}

async fn bundle(command: BundleCommand) -> anyhow::Result<()> {
    match command {
        BundleCommand::Create {
            tenant,
            app,
            version,
            artifacts,
            out,
            since_version,
            base_manifest,
            deploy,
            compatible,
            state_dir,
            json,
        } => {
            let base = match (since_version, base_manifest) {
                (Some(v), _) => Some(Base::Version(parse_version(&v)?)),
                (None, Some(id)) if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    Some(Base::Manifest(id.to_ascii_lowercase()))
                }
                (None, Some(id)) => anyhow::bail!("--base-manifest {id:?}: expected a manifest id, 64 hex digits"),
                (None, None) => None,
            };
            let req = BundleRequest {
                tenant: Name::parse("tenant", &tenant)?,
                app: Name::parse("app", &app)?,
                version: parse_version(&version)?,
                artifacts: artifacts.iter().map(|a| ArtifactSpec::parse(a)).collect::<Result<Vec<_>, _>>()?,
                out,
                deploy,
                compatible,
                base,
                state_dir,
            };
            let progress = if json { Progress::hidden() } else { Progress::stderr() };
            let summary =
                tokio::task::spawn_blocking(move || ferry_agent::bundle::create_bundle(&req, &progress)).await??;
            if json {
                print_json(&summary)?;
            } else {
                let base =
                    summary.base_manifest_id.as_deref().map_or(String::new(), |b| format!(" (since {})", &b[..16]));
                print_line(&format!(
                    "wrote {}: {}/{} {}{base}: {} of {} chunks, {} of chunks in {}",
                    summary.file,
                    summary.tenant,
                    summary.app,
                    summary.version,
                    summary.chunks_bundled,
                    summary.chunks_total,
                    human(summary.chunk_bytes),
                    human(summary.bundle_bytes)
                ));
            }
        }
        BundleCommand::Push { file, registry, retries, json } => {
            let progress = if json { Progress::hidden() } else { Progress::stderr() };
            let s = ferry_agent::bundle::push_bundle(&registry.connection(), &file, retries, &progress).await?;
            if json {
                print_json(&s)?;
            } else {
                let state = outcome(s.created, s.deployed);
                print_line(&format!(
                    "{}/{} {}: {state}; sent {} chunk(s), {}",
                    s.tenant,
                    s.app,
                    s.version,
                    s.chunks_sent,
                    human(s.bytes_sent)
                ));
            }
        }
        BundleCommand::Show { file, json } => {
            let bundle = tokio::task::spawn_blocking(move || ferry_bundle::Bundle::open(&file)).await??;
            let h = bundle.header();
            if json {
                print_json(h)?;
            } else {
                print_line(&format!(
                    "ok: {}/{} {} (manifest {}){}{}: {} chunk(s), {}{}",
                    h.tenant,
                    h.app,
                    h.version,
                    &h.manifest_id[..16],
                    if h.deploy { ", to deploy" } else { "" },
                    h.base_manifest_id.as_deref().map_or(String::new(), |b| format!(", since manifest {}", &b[..16])),
                    h.chunks,
                    human(h.chunk_bytes),
                    format_args!("; made by {}", h.created_by)
                ));
            }
        }
    }
    Ok(())
}

/// A variants file, loaded and checked; its problems, one per line.
fn load_variants(file: &std::path::Path) -> anyhow::Result<Variants> {
    Variants::load(file).map_err(|e| anyhow::anyhow!("{e}"))
}

async fn publish_variants(
    target: &Target,
    file: &std::path::Path,
    only: &[String],
    deploy: bool,
    retries: u32,
) -> anyhow::Result<()> {
    if let Some(tenant) = &target.tenant {
        anyhow::bail!(
            "--tenant/FERRY_TENANT ({tenant}) is not used with --variants: the file names the tenants (see --only)"
        );
    }
    let variants = Arc::new(load_variants(file)?);
    let app = match (&target.app, variants.app()) {
        (Some(flag), Some(file_app)) if flag != file_app.as_str() => {
            anyhow::bail!("--app/FERRY_APP {flag} differs from app = \"{file_app}\" in {}", file.display())
        }
        (Some(flag), _) => Name::parse("app", flag)?,
        (None, Some(file_app)) => file_app.clone(),
        (None, None) => anyhow::bail!("name the app: --app, FERRY_APP, or app = \"...\" in {}", file.display()),
    };
    let req = VariantsRequest {
        variants,
        app,
        version: parse_version(&target.version)?,
        only: only.iter().map(|t| Name::parse("tenant", t.trim())).collect::<Result<_, _>>()?,
        deploy,
        retries,
        compatible: target.compatible.clone(),
    };
    let conn = target.registry.connection();
    let progress = if target.json { Progress::hidden() } else { Progress::stderr() };
    let summary = ferry_agent::variants::publish_variants(&conn, &req, &progress).await?;
    if target.json {
        print_json(&summary)
    } else {
        print_variants_summary(&summary);
        Ok(())
    }
}

fn print_variants_summary(s: &VariantsSummary) {
    let mut out = format!("{} {}: {} tenant(s)\n", s.app, s.version, s.tenants.len());
    for t in &s.tenants {
        let p = &t.publish;
        let state = match (p.created, p.deployed) {
            (true, true) => "published and deployed",
            (true, false) => "published",
            (false, true) => "already published; deployed",
            (false, false) => "already published",
        };
        out.push_str(&format!(
            "  {:<16} {:<12} {:>10} total {:>10} sent  {state}\n",
            p.tenant,
            t.variant,
            human(p.bytes_total),
            human(p.bytes_sent)
        ));
    }
    let saved = if s.bytes_total > 0 { 100.0 * (1.0 - s.bytes_sent as f64 / s.bytes_total as f64) } else { 0.0 };
    out.push_str(&format!("  all: {} total, {} sent ({saved:.1}% saved)", human(s.bytes_total), human(s.bytes_sent)));
    print_line(&out);
}

fn parse_compatible(value: &str) -> Result<semver::VersionReq, String> {
    semver::VersionReq::parse(value).map_err(|e| format!("not a semver requirement such as '>=2.4.0, <2.5.0': {e}"))
}

fn parse_target(t: &Target) -> anyhow::Result<(Connection, Name, Name, ferry_release::Version)> {
    let conn = t.registry.connection();
    let Some(tenant) = &t.tenant else { anyhow::bail!("name the tenant: --tenant or FERRY_TENANT") };
    let Some(app) = &t.app else { anyhow::bail!("name the app: --app or FERRY_APP") };
    Ok((conn, Name::parse("tenant", tenant)?, Name::parse("app", app)?, parse_version(&t.version)?))
}

fn parse_app_target(t: &AppTarget) -> anyhow::Result<(Connection, Name, Name)> {
    let conn = t.registry.connection();
    Ok((conn, Name::parse("tenant", &t.tenant)?, Name::parse("app", &t.app)?))
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    print_line(&serde_json::to_string(value)?);
    Ok(())
}

#[allow(clippy::print_stdout)]
fn print_line(line: &str) {
    println!("{line}");
}

/// What a publish or push did, in words.
fn outcome(created: bool, deployed: bool) -> &'static str {
    match (created, deployed) {
        (true, true) => "published and deployed",
        (true, false) => "published",
        (false, true) => "already published; deployed",
        (false, false) => "already published; nothing changed",
    }
}

fn print_summary(s: &PublishSummary) {
    let state = outcome(s.created, s.deployed);
    let mut out = format!("{}/{} {}: {state} (manifest {})\n", s.tenant, s.app, s.version, &s.manifest_id[..16]);
    for a in &s.artifacts {
        let platforms = if a.platforms.is_empty() { String::new() } else { format!(" @{}", a.platforms.join(",")) };
        out.push_str(&format!("  {:<10} {:>9} {:>5} file(s) {}{platforms}\n", a.name, a.kind, a.files, human(a.bytes)));
    }
    let saved = if s.bytes_total > 0 { 100.0 * (1.0 - s.bytes_sent as f64 / s.bytes_total as f64) } else { 0.0 };
    out.push_str(&format!(
        "  total {}, sent {} ({saved:.1}% saved); chunks: {} total, {} sent ({} as deltas), {} reused",
        human(s.bytes_total),
        human(s.bytes_sent),
        s.chunks_total,
        s.chunks_sent,
        s.chunks_delta,
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
