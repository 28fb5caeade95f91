//! ferry-registry: thin binary over the library.

use clap::{Parser, Subcommand};
use ferry_registry::admin::{self, AdminCommand};
use ferry_registry::config::{DatabaseConfig, GcConfig, ServeConfig};
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
        Command::Serve(config) => {
            let settings = config.settings()?;
            let tls = config.tls()?;
            let meta = ferry_store::connect(&config.database.database_url, config.database.db_max_connections)?;
            meta.migrate().await?;
            let blobs = Blobs::from_env(&config.s3_bucket, config.s3_path_style).await.map_err(anyhow::Error::msg)?;
            if let Err(e) = blobs.ping().await {
                tracing::warn!(bucket = %config.s3_bucket, error = %ferry_proto::error_chain(&e), "s3 bucket is not reachable yet; serving anyway");
            }
            let dashboard_settings = config.dashboard_settings()?;
            let listener = tokio::net::TcpListener::bind(config.listen).await?;
            info!(addr = %listener.local_addr()?, tls = tls.is_some(), bucket = %config.s3_bucket, "registry listening");
            // One signal stops both listeners.
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                shutdown_signal().await;
                let _ = stop_tx.send(true);
            });
            let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
                let _ = rx.wait_for(|stop| *stop).await;
            };
            let admin = match config.admin_listen {
                Some(addr) => {
                    let live = ferry_dashboard::Live::listen(&config.database.database_url, meta.clone()).await?;
                    let dashboard = ferry_dashboard::Dashboard::new(meta.clone(), live, dashboard_settings);
                    let admin = tokio::net::TcpListener::bind(addr).await?;
                    info!(addr = %admin.local_addr()?, "dashboard listening");
                    Some((dashboard, admin))
                }
                None => None,
            };
            let limits = settings.listener;
            let registry =
                serve(Registry::with_settings(meta, blobs, settings), listener, tls, stopped(stop_rx.clone()));
            let dashboard = async {
                match admin {
                    Some((dashboard, admin)) => {
                        ferry_registry::serve_dashboard(dashboard, admin, limits, stopped(stop_rx.clone())).await
                    }
                    None => Ok(()),
                }
            };
            tokio::try_join!(registry, dashboard).map(|_| ())
        }
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

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
    info!("shutting down");
}
