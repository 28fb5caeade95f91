//! The operator dashboard on the admin listener (`FERRY_ADMIN_LISTEN`),
//! apart from the gRPC port agents use and from the public gateway.

use std::time::Duration;

use ferry_dashboard::Dashboard;
use tokio::net::TcpListener;

/// Serves `dashboard` on `listener` until `shutdown`, removing expired
/// sessions every hour meanwhile (any replica may; deleting is idempotent).
pub async fn serve_dashboard(
    dashboard: Dashboard,
    listener: TcpListener,
    limits: ferry_net::Limits,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let purger = dashboard.clone();
    let purge = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(3600));
        loop {
            ticker.tick().await;
            if let Err(e) = purger.purge_sessions().await {
                tracing::warn!(error = %ferry_proto::error_chain(&e), "dashboard: purging expired sessions failed");
            }
        }
    });
    let served = ferry_net::serve_http(listener, limits, dashboard.router(), shutdown).await;
    purge.abort();
    Ok(served?)
}
