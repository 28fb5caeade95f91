//! `ferry-gateway serve`: from validated settings to listeners, and the
//! service's life from start to a drained stop (see `ferry_net::Lifecycle`).

use tracing::info;

use crate::config::ServeConfig;
use crate::core::Gateway;

/// Runs the gateway until SIGTERM or Ctrl-C, then drains and stops.
pub async fn run_serve(config: ServeConfig) -> anyhow::Result<()> {
    let tunables = config.gateway_config()?;
    let tls = config.tls()?;
    let meta = ferry_store::connect(&config.database_url, config.db_max_connections)?;
    let blobs = ferry_store::Blobs::from_env(&config.s3_bucket, config.s3_path_style)
        .await
        .map_err(anyhow::Error::msg)?
        .with_public_endpoint(config.s3_public_endpoint.clone());
    let changes = ferry_store::listen(&config.database_url)?;
    // Reports get connections of their own: ingestion never waits for (or
    // holds up) the connections checks read with.
    let reports_url = config.reports_database_url.as_ref().unwrap_or(&config.database_url);
    let reports = ferry_store::connect(reports_url, 4)?;
    let gateway = Gateway::build(meta, reports, blobs, tunables, std::sync::Arc::new(std::time::SystemTime::now));
    gateway.follow(changes);
    let http = ferry_net::bind(config.listen, "FERRY_LISTEN").await?;
    let grpc = ferry_net::bind(config.grpc_listen, "FERRY_GRPC_LISTEN").await?;
    info!(http = %http.local_addr()?, grpc = %grpc.local_addr()?, tls = tls.is_some(), bucket = %config.s3_bucket, "gateway listening");
    let lifecycle = gateway.lifecycle().clone();
    tokio::spawn(lifecycle.clone().on_signals(config.listener.drain()));
    crate::serve_with_tls(gateway, http, grpc, tls, async move { lifecycle.stopping().await }).await?;
    info!("stopped");
    Ok(())
}
