use std::time::Duration;

use ferry_proto::registry::v1::registry_server::RegistryServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::codec::CompressionEncoding;
use tonic::transport::{Identity, Server, ServerTlsConfig};

use crate::service::{Registry, require_bearer};

/// The largest gRPC message accepted: a manifest of up to 16 MiB plus
/// framing. Chunk messages are far smaller; callers without a well-formed
/// key are refused before their message is read.
const MAX_MESSAGE_BYTES: usize = ferry_release::MAX_MANIFEST_BYTES + 1024 * 1024;

/// PEM certificate chain and private key for serving gRPC over TLS.
#[derive(Clone)]
pub struct Tls {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

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
    tokio::spawn(watch_dependencies(registry.clone(), health));

    let service = RegistryServer::new(registry)
        .accept_compressed(CompressionEncoding::Zstd)
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Zstd)
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let service = tonic::service::interceptor::InterceptedService::new(service, require_bearer);

    let mut builder = Server::builder()
        .concurrency_limit_per_connection(32)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    if let Some(tls) = tls {
        builder = builder.tls_config(ServerTlsConfig::new().identity(Identity::from_pem(tls.cert_pem, tls.key_pem)))?;
    }
    builder
        .add_service(health_service)
        .add_service(service)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
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
            Ok(()) if !healthy => {
                tracing::info!("dependencies are back; serving");
                health.set_serving::<RegistryServer<Registry>>().await;
                healthy = true;
            }
            Err(e) if healthy => {
                tracing::warn!(error = %e, "a dependency is down; reporting not serving");
                health.set_not_serving::<RegistryServer<Registry>>().await;
                healthy = false;
            }
            _ => {}
        }
    }
}
