use std::time::Duration;

use ferry_proto::registry::v1::registry_server::RegistryServer;
use tokio::net::TcpListener;
use tonic::codec::CompressionEncoding;
use tonic::transport::{Identity, Server, ServerTlsConfig};

use crate::auth::AuthLayer;
use crate::service::Registry;

/// The largest gRPC message accepted: a manifest of up to 16 MiB plus
/// framing (upload messages are held to 4 MiB by the handler). Callers
/// without a valid key are refused before their message is read.
const MAX_MESSAGE_BYTES: usize = ferry_release::MAX_MANIFEST_BYTES + 1024 * 1024;

/// PEM certificate chain and private key for serving gRPC over TLS.
pub use ferry_net::Tls;

/// Serves the registry (and grpc.health.v1) on `listener` until `shutdown`
/// completes.
pub async fn serve(
    registry: Registry,
    listener: TcpListener,
    tls: Option<Tls>,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<RegistryServer<Registry>>().await;
    // Background work, stopped when serving ends.
    let mut background = vec![tokio::spawn(watch_dependencies(registry.clone(), health.clone()))];
    // Draining: probes and load balancers see NOT_SERVING while calls
    // are still answered.
    let draining = registry.lifecycle().clone();
    background.push(tokio::spawn(async move {
        draining.draining().await;
        set_status(&health, tonic_health::ServingStatus::NotServing).await;
    }));

    let limits = registry.settings().listener;
    if let Some(interval) = registry.settings().gc_interval {
        background.push(tokio::spawn(collect_garbage_every(registry.clone(), interval)));
    }
    if let Some(alerts) = registry.settings().alerts.clone() {
        background.push(ferry_alerts::run(registry.meta().clone(), alerts)?);
    }
    background.extend(crate::patcher::start(registry.clone(), registry.settings().patches));
    let auth = AuthLayer::new(registry.keys().clone());
    let service = RegistryServer::new(registry)
        .accept_compressed(CompressionEncoding::Zstd)
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Zstd)
        .max_decoding_message_size(MAX_MESSAGE_BYTES);

    // No server-initiated HTTP/2 pings: they would keep idle connections
    // open forever (ferry-net's TCP keepalive finds dead peers). An agent
    // pings while a call of its is in progress, which keeps that one alive.
    let mut builder = Server::builder()
        .concurrency_limit_per_connection(32)
        .max_concurrent_streams(limits.max_streams_per_connection)
        .http2_max_header_list_size(limits.max_header_bytes);
    if let Some(tls) = tls {
        builder = builder.tls_config(ServerTlsConfig::new().identity(Identity::from_pem(tls.cert_pem, tls.key_pem)))?;
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let server = builder
        .layer(ferry_net::MarkRequests)
        .layer(auth)
        .add_service(health_service)
        .add_service(service)
        .serve_with_incoming_shutdown(ferry_net::incoming(listener, limits), stopped(stop_rx.clone()));
    let signal = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    let ((), served) = tokio::join!(signal, ferry_net::with_grace(server, stopped(stop_rx), limits.shutdown_grace));
    for task in background {
        task.abort();
    }
    served?;
    Ok(())
}

/// Collects garbage (and deletes reports past their retention) every
/// `interval` (the first time after a random part of
/// it, so replicas started together do not all try at once; only one
/// collects at a time anyway).
async fn collect_garbage_every(registry: Registry, interval: Duration) {
    let jitter = u64::from(getrandom::u32().unwrap_or(0)) % interval.as_secs().max(1);
    tokio::time::sleep(Duration::from_secs(jitter)).await;
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        let grace = registry.settings().gc_grace;
        if let Err(e) = ferry_store::collect_garbage(registry.meta(), registry.blobs(), grace).await {
            tracing::warn!(error = %ferry_proto::error_chain(&e), "garbage collection failed; trying again next time");
        }
        let bases = registry.settings().patches.bases;
        if let Err(e) = ferry_store::collect_patches(registry.meta(), registry.blobs(), bases, grace).await {
            tracing::warn!(error = %ferry_proto::error_chain(&e), "collecting unused patches failed; trying again next time");
        }
        // Deleting old reports is idempotent: replicas need no turn-taking.
        match ferry_reports::delete_older_than(registry.meta(), registry.settings().report_retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(reports = n, "old reports deleted"),
            Err(e) => tracing::warn!(error = %ferry_proto::error_chain(&e), "deleting old reports failed"),
        }
    }
}

/// Reports NOT_SERVING through grpc.health.v1 while PostgreSQL or S3 does
/// not answer, so load balancers and Kubernetes probes route around it.
async fn watch_dependencies(registry: Registry, health: tonic_health::server::HealthReporter) {
    let mut ticker = tokio::time::interval(Duration::from_secs(10));
    let mut healthy = true;
    loop {
        ticker.tick().await;
        let check = async {
            registry.meta().ping().await?;
            registry.blobs().ping().await
        };
        match check.await {
            _ if !registry.lifecycle().is_ready() => return,
            Ok(()) if !healthy => {
                tracing::info!("dependencies are back; serving");
                set_status(&health, tonic_health::ServingStatus::Serving).await;
                healthy = true;
                // A drain that began meanwhile wins.
                if !registry.lifecycle().is_ready() {
                    set_status(&health, tonic_health::ServingStatus::NotServing).await;
                    return;
                }
            }
            Err(e) if healthy => {
                tracing::warn!(error = %ferry_proto::error_chain(&e), "a dependency is down; reporting not serving");
                set_status(&health, tonic_health::ServingStatus::NotServing).await;
                healthy = false;
            }
            _ => {}
        }
    }
}

/// Sets the registry service's status and the server's as a whole (""),
/// which is what Kubernetes' grpc probes and most balancers ask about.
async fn set_status(health: &tonic_health::server::HealthReporter, status: tonic_health::ServingStatus) {
    health.set_service_status("", status).await;
    match status {
        tonic_health::ServingStatus::Serving => health.set_serving::<RegistryServer<Registry>>().await,
        _ => health.set_not_serving::<RegistryServer<Registry>>().await,
    }
}
