//! `ferry-registry serve`: from validated settings to listeners, and the
//! service's life from start to a drained stop (see `ferry_net::Lifecycle`).

use tracing::info;

use crate::config::ServeConfig;
use crate::service::Registry;

/// Runs the registry until SIGTERM or Ctrl-C (then drains and stops):
/// migrations first, then the gRPC listener, the ops listener and, when
/// configured, the dashboard.
pub async fn run_serve(config: ServeConfig) -> anyhow::Result<()> {
    let settings = config.settings()?;
    let tls = config.tls()?;
    let dashboard_settings = config.dashboard_settings()?;
    let meta = ferry_store::connect(&config.database.database_url, config.database.db_max_connections)?;
    meta.migrate().await?;
    let blobs =
        ferry_store::Blobs::from_env(&config.s3_bucket, config.s3_path_style).await.map_err(anyhow::Error::msg)?;
    if let Err(e) = blobs.ping().await {
        tracing::warn!(bucket = %config.s3_bucket, error = %ferry_proto::error_chain(&e), "s3 bucket is not reachable yet; serving anyway");
    }
    let listener = ferry_net::bind(config.listen, "FERRY_LISTEN").await?;
    let ops = ferry_net::bind(config.metrics_listen, "FERRY_METRICS_LISTEN").await?;
    info!(addr = %listener.local_addr()?, ops = %ops.local_addr()?, tls = tls.is_some(), bucket = %config.s3_bucket, "registry listening");
    let lifecycle = ferry_net::Lifecycle::new();
    let admin = match config.admin_listen {
        Some(addr) => {
            let live = ferry_dashboard::Live::listen(&config.database.database_url, meta.clone()).await?;
            let dashboard =
                ferry_dashboard::Dashboard::with_lifecycle(meta.clone(), live, dashboard_settings, lifecycle.clone());
            let admin = ferry_net::bind(addr, "FERRY_ADMIN_LISTEN").await?;
            info!(addr = %admin.local_addr()?, "dashboard listening");
            Some((dashboard, admin))
        }
        None => None,
    };
    let limits = settings.listener;
    let registry = Registry::with_settings(meta, blobs, settings).with_lifecycle(lifecycle.clone());
    tokio::spawn(lifecycle.clone().on_signals(config.listener.drain()));
    let ops = crate::serve_ops(registry.clone(), ops, limits, stopping(&lifecycle));
    let grpc = crate::serve(registry, listener, tls, stopping(&lifecycle));
    let dashboard = async {
        match admin {
            Some((dashboard, admin)) => crate::serve_dashboard(dashboard, admin, limits, stopping(&lifecycle)).await,
            None => Ok(()),
        }
    };
    // A listener that fails stops the others: the process exits and its
    // supervisor restarts it.
    let (ops, grpc, dashboard) = tokio::join!(
        stop_on_error(&lifecycle, ops),
        stop_on_error(&lifecycle, grpc),
        stop_on_error(&lifecycle, dashboard)
    );
    grpc?;
    dashboard?;
    ops?;
    info!("stopped");
    Ok(())
}

async fn stop_on_error<T, E>(
    lifecycle: &ferry_net::Lifecycle,
    served: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let result = served.await;
    if result.is_err() {
        lifecycle.stop();
    }
    result
}

fn stopping(lifecycle: &ferry_net::Lifecycle) -> impl Future<Output = ()> + Send + 'static {
    let lifecycle = lifecycle.clone();
    async move { lifecycle.stopping().await }
}
