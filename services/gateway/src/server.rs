use ferry_proto::gateway::v1::gateway_server::GatewayServer;
use tokio::net::TcpListener;

use crate::core::Gateway;

/// Serves HTTP on `http` and gRPC (with grpc.health.v1 and reflection) on
/// `grpc` until `shutdown` completes.
pub async fn serve(
    gateway: Gateway,
    http: TcpListener,
    grpc: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_with_tls(gateway, http, grpc, None, shutdown).await
}

/// [`serve`], over TLS on both listeners when `tls` is given (HTTPS with
/// HTTP/2 and HTTP/1.1; gRPC over TLS).
pub async fn serve_with_tls(
    gateway: Gateway,
    http: TcpListener,
    grpc: TcpListener,
    tls: Option<ferry_net::Tls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let https = tls.as_ref().map(ferry_net::Tls::server_config).transpose().map_err(anyhow::Error::msg)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let watches = gateway.clone();
    tokio::spawn(async move {
        shutdown.await;
        // Open watches never finish by themselves: end them, so their
        // clients reconnect to another replica at once.
        watches.close_watches();
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<GatewayServer<Gateway>>().await;
    // Draining: probes and load balancers see NOT_SERVING while calls are
    // still answered.
    let draining = gateway.lifecycle().clone();
    let health_task = tokio::spawn(async move {
        draining.draining().await;
        // Both the service and the server as a whole (""), which is what
        // Kubernetes' grpc probes and most balancers ask about.
        health.set_not_serving::<GatewayServer<Gateway>>().await;
        health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
    });
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ferry_proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let limits = gateway.config().listener;
    // No server-initiated HTTP/2 pings: they would keep idle connections
    // alive forever (ferry-net's TCP keepalive finds dead peers instead).
    let mut grpc_builder = tonic::transport::Server::builder();
    if let Some(tls) = &tls {
        let identity = tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem);
        grpc_builder = grpc_builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?;
    }
    let grpc_server = grpc_builder
        .layer(ferry_net::MarkRequests)
        .max_concurrent_streams(limits.max_streams_per_connection)
        .http2_max_header_list_size(limits.max_header_bytes)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(GatewayServer::new(gateway.clone()).max_decoding_message_size(crate::http::MAX_REQUEST_BYTES))
        .serve_with_incoming_shutdown(ferry_net::incoming(grpc, limits), stopped(stop_rx.clone()));
    // Bounded like the HTTP side: requests in progress get the grace, then
    // their connections close.
    let grpc_server = ferry_net::with_grace(grpc_server, stopped(stop_rx.clone()), limits.shutdown_grace);

    let (gateway_census, census_rx) = (gateway.clone(), stop_rx.clone());
    let router = crate::http::router(gateway);
    let http_server = async move {
        match https {
            Some(config) => ferry_net::serve_https(http, limits, config, router, stopped(stop_rx)).await,
            None => ferry_net::serve_http(http, limits, router, stopped(stop_rx)).await,
        }
    };

    // The device census is written until the listeners stop, then once
    // more after they have, so a clean shutdown loses none of it.
    let census = gateway_census.run_census(stopped(census_rx));
    let (grpc_result, http_result, ()) = tokio::join!(grpc_server, http_server, census);
    // Checks answered during the shutdown grace came after that flush.
    if let Err(e) = gateway_census.flush_census().await {
        tracing::warn!(error = %ferry_proto::error_chain(&e), "device census: the last flush failed");
    }
    health_task.abort();
    grpc_result?;
    http_result?;
    Ok(())
}
