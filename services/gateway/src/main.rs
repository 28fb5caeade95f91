//! ferry-gateway: thin binary over the library.

use clap::{Parser, Subcommand};
use ferry_gateway::config::ServeConfig;

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
        Command::Serve(config) => Box::pin(ferry_gateway::run_serve(*config)).await,
    }
}
