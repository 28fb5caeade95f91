//! The ops listener (`FERRY_METRICS_LISTEN`): `/healthz` (the process
//! answers), `/readyz` (it takes new work: not shutting down, PostgreSQL and
//! S3 answer) and `/metrics` (Prometheus), apart from the gRPC port agents
//! use, so probes and scrapers need no agent key and no TLS client.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

use crate::service::Registry;

/// The ops routes over `registry`.
pub fn router(registry: Registry) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(registry)
}

/// Serves the ops routes on `listener` until `shutdown` completes.
pub async fn serve_ops(
    registry: Registry,
    listener: TcpListener,
    limits: ferry_net::Limits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    ferry_net::serve_http(listener, limits, router(registry), shutdown).await
}

async fn ready(State(registry): State<Registry>) -> Response {
    match registry.readiness().await {
        Ok(()) => "ready".into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")).into_response(),
    }
}

async fn metrics(State(registry): State<Registry>) -> Response {
    let ready = registry.readiness().await.is_ok();
    let body = registry.metrics().render(ready);
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
}
