//! ferry-gateway: thin binary over the library.

use clap::{Parser, Subcommand};
use ferry_gateway::config::ServeConfig;
use ferry_gateway::{Gateway, serve};
use ferry_store::Blobs;
use tracing::info;

#[derive(Parser)]
#[command(name = "ferry-gateway", version, about = "Tells apps which version to run and where to download it")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serves HTTP and gRPC.
    Serve(Box<ServeConfig>),
    /// Prints the OpenAPI document of the HTTP API.
    Openapi,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli: Cli = ferry_config::parse();
    ferry_telemetry::run_main("ferry-gateway", "info", Box::pin(run(cli.command))).await
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Openapi => {
            #[allow(clippy::print_stdout)]
            {
                println!("{}", ferry_gateway::openapi_json());
            }
            Ok(())
        }
        Command::Serve(config) => {
            let tunables = config.gateway_config()?;
            let meta = ferry_store::connect(&config.database_url, config.db_max_connections)?;
            let blobs = Blobs::from_env(&config.s3_bucket, config.s3_path_style).await.map_err(anyhow::Error::msg)?;
            let changes = ferry_store::listen(&config.database_url)?;
            // Reports get connections of their own: ingestion never waits
            // for (or holds up) the connections checks read with.
            let reports_url = config.reports_database_url.as_ref().unwrap_or(&config.database_url);
            let reports = ferry_store::connect(reports_url, 4)?;
            let gateway =
                Gateway::build(meta, reports, blobs, tunables, std::sync::Arc::new(std::time::SystemTime::now));
            gateway.follow(changes);
            let http = tokio::net::TcpListener::bind(config.listen).await?;
            let grpc = tokio::net::TcpListener::bind(config.grpc_listen).await?;
            info!(http = %http.local_addr()?, grpc = %grpc.local_addr()?, bucket = %config.s3_bucket, "gateway listening");
            serve(gateway, http, grpc, shutdown_signal()).await
        }
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    info!("shutting down");
}
