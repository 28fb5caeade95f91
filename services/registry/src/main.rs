//! ferry-registry: thin binary over the library.

use clap::{Parser, Subcommand};
use ferry_registry::admin::{self, AdminCommand};
use ferry_registry::config::{DatabaseConfig, GcConfig, ServeConfig};
use ferry_store::Blobs;
use tracing::info;

#[derive(Parser)]
#[command(name = "ferry-registry", version, about = "Receives releases from ferry agents and keeps every version")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the gRPC server (runs pending database migrations first).
    Serve(Box<ServeConfig>),
    /// Brings the database schema up to date and exits.
    Migrate(DatabaseConfig),
    /// Collects garbage now (what publishes that never committed left
    /// behind) and prints what was freed; serve also does so periodically.
    Gc(GcConfig),
    /// Manages tenants, apps and keys.
    Admin {
        #[command(flatten)]
        database: DatabaseConfig,
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli: Cli = ferry_config::parse();
    ferry_telemetry::run_main("ferry-registry", "info", Box::pin(run(cli.command))).await
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(config) => Box::pin(ferry_registry::run_serve(*config)).await,
        Command::Migrate(database) => {
            let meta = ferry_store::connect(&database.database_url, 1)?;
            meta.migrate().await?;
            info!("database schema is up to date");
            Ok(())
        }
        Command::Gc(config) => {
            let meta = ferry_store::connect(&config.database.database_url, 2)?;
            meta.migrate().await?;
            let blobs = Blobs::from_env(&config.s3_bucket, config.s3_path_style).await.map_err(anyhow::Error::msg)?;
            let grace = std::time::Duration::from_secs(config.gc_grace_seconds);
            let report = ferry_store::collect_garbage(&meta, &blobs, grace).await?;
            report_line(&report.to_string());
            let patches = ferry_store::collect_patches(&meta, &blobs, config.patch_bases as usize, grace).await?;
            report_line(&patches.to_string());
            Ok(())
        }
        Command::Admin { database, command } => {
            let meta = ferry_store::connect(&database.database_url, 1)?;
            meta.migrate().await?;
            let out = admin::run(&meta, command).await?;
            report(out);
            Ok(())
        }
    }
}

#[allow(clippy::print_stdout)]
fn report_line(line: &str) {
    println!("{line}");
}

#[allow(clippy::print_stdout, clippy::print_stderr)]
fn report(out: admin::AdminOutput) {
    eprintln!("{}", out.message);
    if let Some(line) = out.stdout {
        println!("{line}");
    }
}
