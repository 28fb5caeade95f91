//! Serving an HTTP service (an axum router) over guarded connections.

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::{ConnInfo, Limits, incoming};

/// Serves `service` (HTTP/1.1 and HTTP/2) on `listener` with `limits` until
/// `shutdown` completes; then stops accepting, lets requests in progress
/// finish for up to `limits.shutdown_grace`, and returns. Each request
/// carries its connection's [`ConnInfo`] as an extension.
pub async fn serve_http<S, B>(
    listener: TcpListener,
    limits: Limits,
    service: S,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    S: tower::Service<http::Request<Incoming>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve(listener, limits, None, service, shutdown).await
}

/// [`serve_http`] over TLS (`tls` from [`crate::Tls::server_config`]): the
/// handshake must complete within the header timeout.
pub async fn serve_https<S, B>(
    listener: TcpListener,
    limits: Limits,
    tls: Arc<rustls::ServerConfig>,
    service: S,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    S: tower::Service<http::Request<Incoming>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve(listener, limits, Some(tokio_rustls::TlsAcceptor::from(tls)), service, shutdown).await
}

async fn serve<S, B>(
    listener: TcpListener,
    limits: Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    service: S,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    S: tower::Service<http::Request<Incoming>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size((limits.max_header_bytes as usize).max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes)
        .max_concurrent_streams(limits.max_streams_per_connection);
    let graceful = GracefulShutdown::new();
    let mut connections = Box::pin(incoming(listener, limits));
    let mut shutdown = pin!(shutdown);
    loop {
        let conn = tokio::select! {
            conn = connections.next() => match conn {
                Some(Ok(conn)) => conn,
                Some(Err(e)) => { tracing::warn!(error = %e, "accept failed"); continue; }
                None => break,
            },
            () = &mut shutdown => break,
        };
        let info = conn.info().clone();
        let service = service.clone();
        let hyper_service = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
            info.mark_request();
            req.extensions_mut().insert::<ConnInfo>(info.clone());
            service.clone().oneshot(req)
        });
        let Some(acceptor) = tls.clone() else {
            let connection = builder.serve_connection(TokioIo::new(conn), hyper_service).into_owned();
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "http connection ended with an error");
                }
            });
            continue;
        };
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(limits.header_timeout, acceptor.accept(conn)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return tracing::debug!(error = %e, "tls handshake failed"),
                Err(_) => return tracing::debug!("tls handshake timed out"),
            };
            let connection = builder.serve_connection(TokioIo::new(stream), hyper_service).into_owned();
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(error = %e, "https connection ended with an error");
            }
        });
    }
    // Closes the listener: new connections are refused from here on.
    drop(connections);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!(grace_seconds = limits.shutdown_grace.as_secs(), "requests still open after the shutdown grace; closing them");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    async fn server(limits: Limits) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve_http(listener, limits, app, async {
            let _ = stopped.await;
        }));
        (addr, stop)
    }

    fn limits(header: u64, idle: u64) -> Limits {
        Limits {
            header_timeout: Duration::from_secs(header),
            idle_timeout: Duration::from_secs(idle),
            ..Limits::default()
        }
    }

    /// Reads until the server closes the connection; returns what it sent.
    async fn until_closed(socket: &mut TcpStream) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = socket.read_to_end(&mut out).await;
        out
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_closed_after_the_header_timeout() {
        let (addr, _stop) = server(limits(10, 120)).await;
        let mut socket = TcpStream::connect(addr).await.unwrap();
        let started = tokio::time::Instant::now();
        until_closed(&mut socket).await;
        let waited = started.elapsed();
        assert!(waited >= Duration::from_secs(10) && waited < Duration::from_secs(11), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn trickled_headers_do_not_keep_a_connection_open() {
        let (addr, _stop) = server(limits(10, 120)).await;
        let mut socket = TcpStream::connect(addr).await.unwrap();
        let started = tokio::time::Instant::now();
        // One byte every 3 s: never idle, never a whole request.
        let trickle = async {
            for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ".iter().cycle() {
                if socket.write_all(&[*byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), trickle).await.expect("the server hung up");
        assert!(started.elapsed() < Duration::from_secs(16), "{:?}", started.elapsed());
    }

    /// Over HTTP/1.1 the wait for the next request on a kept-alive
    /// connection counts as header time: an idle keep-alive connection is
    /// closed after the header timeout.
    #[tokio::test(start_paused = true)]
    async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
        let (addr, _stop) = server(limits(10, 120)).await;
        let mut socket = TcpStream::connect(addr).await.unwrap();
        socket.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut first = [0u8; 12];
        socket.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"HTTP/1.1 200");
        let answered = tokio::time::Instant::now();
        let rest = until_closed(&mut socket).await;
        assert!(String::from_utf8_lossy(&rest).ends_with("hello"));
        let waited = answered.elapsed();
        assert!(waited >= Duration::from_secs(9) && waited < Duration::from_secs(11), "{waited:?}");
    }

    #[tokio::test]
    async fn requests_are_answered_and_shutdown_is_graceful() {
        let (addr, stop) = server(limits(10, 120)).await;
        let body = ferry_testkit::http().get(format!("http://{addr}/")).send().await.unwrap().text().await.unwrap();
        assert_eq!(body, "hello");
        stop.send(()).unwrap();
        // Once stopped, new connections are refused.
        let refused = async {
            loop {
                if TcpStream::connect(addr).await.is_err() {
                    return;
                }
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), refused).await.expect("the listener closes");
    }
}
