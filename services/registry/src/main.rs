//! ferry-registry: thin binary over the library.

use clap::{Parser, Subcommand};
use ferry_registry::admin::{self, AdminCommand};
use ferry_registry::config::{DatabaseConfig, ServeConfig};
use ferry_registry::{Registry, serve};
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
    Serve(ServeConfig),
    /// Brings the database schema up to date and exits.
    Migrate(DatabaseConfig),
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
    let cli = Cli::parse();
    ferry_telemetry::run_main("ferry-registry", "info", Box::pin(run(cli.command))).await
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(config) => {
            config.validate()?;
            let tls = config.tls()?;
            let meta = ferry_store::connect(&config.database.database_url, config.database.db_max_connections)?;
            meta.migrate().await?;
            let blobs = Blobs::from_env(&config.s3_bucket, config.s3_path_style).await;
            if let Err(e) = blobs.ping().await {
                tracing::warn!(bucket = %config.s3_bucket, error = %e, "s3 bucket is not reachable yet; serving anyway");
            }
            let listener = tokio::net::TcpListener::bind(config.listen).await?;
            info!(addr = %listener.local_addr()?, tls = tls.is_some(), bucket = %config.s3_bucket, "registry listening");
            serve(Registry::new(meta, blobs), listener, tls, shutdown_signal()).await
        }
        Command::Migrate(database) => {
            let meta = ferry_store::connect(&database.database_url, 1)?;
            meta.migrate().await?;
            info!("database schema is up to date");
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

#[allow(clippy::print_stdout, clippy::print_stderr)]
fn report(out: admin::AdminOutput) {
    eprintln!("{}", out.message);
    if let Some(line) = out.stdout {
        println!("{line}");
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
    info!("shutting down");
}
