//! ferry-client: the reference client as a command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ferry_client::{Answer, Cache, Client, Config, Outcome, Report, Synced};

#[derive(Parser)]
#[command(
    name = "ferry-client",
    version,
    about = "Keeps a directory on the version a tenant's private cloud runs, as an app would"
)]
struct Cli {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Target {
    /// The gateway's base URL, e.g. https://ferry.vendor.example.
    #[arg(long, env = "FERRY_GATEWAY_URL", global = true)]
    gateway_url: Option<String>,
    /// A client key (`ferry-registry admin issue-key TENANT --role client`).
    #[arg(long = "key", env = "FERRY_CLIENT_KEY", hide_env_values = true, global = true)]
    key: Option<String>,
    #[arg(long, env = "FERRY_TENANT", global = true)]
    tenant: Option<String>,
    #[arg(long, env = "FERRY_APP", global = true)]
    app: Option<String>,
    /// Selects platform-tagged artifacts, e.g. android.
    #[arg(long, env = "FERRY_PLATFORM", global = true)]
    platform: Option<String>,
    /// This device's stable id (default: one made and kept in --dir).
    #[arg(long, env = "FERRY_DEVICE_ID", global = true)]
    device_id: Option<String>,
    /// Files downloaded at once.
    #[arg(long, default_value_t = 4, global = true)]
    parallel: usize,
}

#[derive(Subcommand)]
enum Command {
    /// Asks which version to run and prints the answer.
    Check {
        /// The version the app runs (default: the one current in --dir).
        #[arg(long)]
        version: Option<String>,
        /// A cache directory: its current release is sent as `have`.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Print the gateway's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Checks, downloads into DIR, verifies, switches and reports.
    Sync {
        #[arg(long)]
        dir: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Keeps DIR in sync: at start, on every push notice, and periodically
    /// with jitter, until interrupted.
    Watch {
        #[arg(long)]
        dir: PathBuf,
        /// Seconds between periodic checks (each randomly 0-20 % sooner).
        #[arg(long, default_value_t = 3600)]
        interval_seconds: u64,
    },
    /// Sends a report of how an upgrade went, by hand.
    Report {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        /// success, failure or rolled_back.
        #[arg(long, value_parser = parse_outcome)]
        result: Outcome,
        #[arg(long)]
        error_code: Option<String>,
        #[arg(long)]
        error_message: Option<String>,
        #[arg(long)]
        duration_ms: Option<u64>,
        /// Reuse an id to resend the same report (default: a new one).
        #[arg(long)]
        report_id: Option<String>,
        /// A cache directory, for the device id kept there.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Switches DIR back to the release before the current one, and holds
    /// the one rolled back from until another is deployed (then send a
    /// `rolled_back` report).
    Rollback {
        #[arg(long)]
        dir: PathBuf,
    },
}

fn parse_outcome(s: &str) -> Result<Outcome, String> {
    match s {
        "success" => Ok(Outcome::Success),
        "failure" => Ok(Outcome::Failure),
        "rolled_back" => Ok(Outcome::RolledBack),
        _ => Err(format!("{s:?}: expected success, failure or rolled_back")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = ferry_config::parse();
    ferry_telemetry::run_main("ferry-client", "info", Box::pin(run(cli))).await
}

fn client(target: &Target, cache: Option<&Cache>) -> anyhow::Result<Client> {
    let need = |value: &Option<String>, name: &str| {
        value.clone().ok_or_else(|| anyhow::anyhow!("{name} is not set (flag or environment variable)"))
    };
    let mut config = Config::new(
        need(&target.gateway_url, "FERRY_GATEWAY_URL")?,
        need(&target.key, "FERRY_CLIENT_KEY")?,
        &need(&target.tenant, "FERRY_TENANT")?,
        &need(&target.app, "FERRY_APP")?,
    );
    config.platform = target.platform.clone();
    config.parallel = target.parallel;
    config.device_id = match (&target.device_id, cache) {
        (Some(id), _) => Some(id.clone()),
        (None, Some(cache)) => Some(cache.device_id()?),
        (None, None) => None,
    };
    Ok(Client::new(config)?)
}

#[allow(clippy::print_stdout)]
async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Check { version, dir, json } => {
            let cache = dir.map(Cache::open).transpose()?;
            let client = client(&cli.target, cache.as_ref())?;
            let current = match &cache {
                Some(cache) => cache.current()?,
                None => None,
            };
            let version = match (version, &current) {
                (Some(v), _) => v,
                (None, Some(c)) => c.version.clone(),
                (None, None) => anyhow::bail!("say which version the app runs: --version, or --dir with a release"),
            };
            let answer = client.check(&version, current.as_ref().map(|c| c.manifest_id.as_str())).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
            } else {
                println!("{}", describe(&answer));
            }
        }
        Command::Sync { dir, json } => {
            let cache = Cache::open(dir)?;
            let client = client(&cli.target, Some(&cache))?;
            let synced = client.sync(&cache).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&synced)?);
            } else {
                println!("{}", describe_sync(&synced));
            }
        }
        Command::Watch { dir, interval_seconds } => {
            let cache = Cache::open(dir)?;
            let client = client(&cli.target, Some(&cache))?;
            watch(&client, &cache, Duration::from_secs(interval_seconds.max(1))).await?;
        }
        Command::Report { from, to, result, error_code, error_message, duration_ms, report_id, dir } => {
            let cache = dir.map(Cache::open).transpose()?;
            let client = client(&cli.target, cache.as_ref())?;
            let device_id = client
                .config()
                .device_id
                .clone()
                .ok_or_else(|| anyhow::anyhow!("a report needs --device-id or --dir"))?;
            let report = Report {
                report_id: report_id.unwrap_or_else(Report::new_id),
                device_id,
                tenant: client.config().tenant.clone(),
                app: client.config().app.clone(),
                from_version: from,
                to_version: to,
                result,
                error_code,
                error_message,
                duration_ms,
                platform: client.config().platform.clone(),
            };
            let accepted = client.report(&report).await?;
            let note = if accepted.duplicate { " (sent before: nothing changed)" } else { "" };
            println!("report {} accepted{note}", accepted.report_id);
        }
        Command::Rollback { dir } => {
            let current = Cache::open(dir)?.rollback()?;
            println!(
                "current: {} ({}); the release rolled back from is held back until another is deployed",
                current.version, current.manifest_id
            );
        }
    }
    Ok(())
}

/// Syncs at start, on every notice, and every `interval` (less up to 20 %),
/// until Ctrl-C or SIGTERM.
#[allow(clippy::print_stdout)]
async fn watch(client: &Client, cache: &Cache, interval: Duration) -> anyhow::Result<()> {
    let mut notices = client.watch(None, None);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut reason = "start";
    loop {
        match client.sync(cache).await {
            Ok(synced) => println!("{reason}: {}", describe_sync(&synced)),
            // Kept running: the next notice or period tries again.
            Err(e) => tracing::error!(error = %e, trigger = reason, "sync failed"),
        }
        let period = interval.mul_f64(1.0 - 0.2 * fastrand::f64());
        tokio::select! {
            notice = notices.next() => {
                let notice = notice?;
                tracing::info!(version = %notice.version, "push notice");
                reason = "notice";
            }
            () = tokio::time::sleep(period) => reason = "periodic",
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = term.recv() => return Ok(()),
        }
    }
}

fn describe(answer: &Answer) -> String {
    let mut out = match answer.action {
        ferry_client::Action::None => format!("up to date: {}", answer.target),
        action => {
            let bytes: u64 = answer.artifacts.iter().map(|a| a.size).sum();
            format!(
                "{} {} -> {}{}: {} files, {bytes} bytes{}",
                serde_json::to_value(action).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
                answer.current,
                answer.target,
                if answer.required { " (required)" } else { "" },
                answer.artifacts.len(),
                if answer.delta { " (changes only)" } else { "" },
            )
        }
    };
    if let Some(f) = &answer.last_failure {
        out.push_str(&format!("\nlast failure: {} of {} at {}", f.result, f.version, f.at));
        if let Some(m) = &f.error_message {
            out.push_str(&format!(": {m}"));
        }
    }
    out
}

fn describe_sync(s: &Synced) -> String {
    let mut out = if s.switched {
        format!(
            "switched to {}{}: {} files downloaded ({} bytes; {} by patch, {} compressed), {} reused{}",
            s.version,
            if s.required { " (required)" } else { "" },
            s.downloaded_files,
            s.downloaded_bytes,
            s.patched_files,
            s.compressed_files,
            s.reused_files,
            if s.reported { "" } else { "; the report is kept for the next sync" },
        )
    } else if s.held_back {
        format!("holding {}: the deployed release is the one this device rolled back from", s.version)
    } else {
        format!("up to date: {}", s.version)
    };
    if let Some(f) = &s.last_failure {
        out.push_str(&format!("\nlast failure: {} of {} at {}", f.result, f.version, f.at));
    }
    out
}
