//! Connections with deadlines: the first request must arrive in time, and
//! a quiet connection is closed.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::Limits;

/// What a connection shares with the requests it carries: whether the first
/// one has arrived.
#[derive(Debug, Default)]
struct ConnState {
    requested: AtomicBool,
}

/// A connection's identity as request handlers see it (a request
/// extension under tonic): its peer, and the handle [`MarkRequests`] uses.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote_addr: Option<SocketAddr>,
    pub local_addr: Option<SocketAddr>,
    state: Arc<ConnState>,
}

impl ConnInfo {
    /// Records that a whole request head arrived on this connection.
    pub fn mark_request(&self) {
        self.state.requested.store(true, Ordering::Relaxed);
    }
}

/// A TCP connection with a first-request deadline and an idle deadline; it
/// holds one of the listener's connection permits until dropped.
pub struct Guarded {
    io: TcpStream,
    info: ConnInfo,
    idle_timeout: std::time::Duration,
    idle: Pin<Box<Sleep>>,
    /// Until the first request: when it must have arrived.
    head: Option<Pin<Box<Sleep>>>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Guarded {
    pub fn new(io: TcpStream, limits: &Limits, permit: Option<OwnedSemaphorePermit>) -> Self {
        let info = ConnInfo {
            remote_addr: io.peer_addr().ok(),
            local_addr: io.local_addr().ok(),
            state: Arc::new(ConnState::default()),
        };
        let now = Instant::now();
        Self {
            io,
            info,
            idle_timeout: limits.idle_timeout,
            idle: Box::pin(tokio::time::sleep_until(now + limits.idle_timeout)),
            head: Some(Box::pin(tokio::time::sleep_until(now + limits.header_timeout))),
            _permit: permit,
        }
    }

    pub fn info(&self) -> &ConnInfo {
        &self.info
    }

    fn active(&mut self) {
        let deadline = Instant::now() + self.idle_timeout;
        self.idle.as_mut().reset(deadline);
    }

    /// Whether a deadline has passed (registering for wake-ups otherwise).
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        if let Some(head) = &mut self.head {
            if self.info.state.requested.load(Ordering::Relaxed) {
                self.head = None;
            } else if head.as_mut().poll(cx).is_ready() {
                return Some(io::Error::new(io::ErrorKind::TimedOut, "no complete request in time"));
            }
        }
        if self.idle.as_mut().poll(cx).is_ready() {
            return Some(io::Error::new(io::ErrorKind::TimedOut, "connection idle"));
        }
        None
    }
}

impl AsyncRead for Guarded {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.active();
                }
                // A peer trickling bytes keeps the idle deadline away, not
                // the first-request one.
                match self.expired(cx) {
                    Some(e) if self.head.is_some() => Poll::Ready(Err(e)),
                    _ => Poll::Ready(Ok(())),
                }
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written
            && n > 0
        {
            self.active();
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = written
            && n > 0
        {
            self.active();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Guarded {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

/// Accepted connections of `listener`, guarded by `limits`, at most
/// `limits.max_connections` open at once (the next is accepted when one
/// closes). Accept errors (such as running out of file descriptors) are
/// logged and retried after a short pause rather than ending the stream.
pub fn incoming(listener: TcpListener, limits: Limits) -> impl Stream<Item = io::Result<Guarded>> + Send + 'static {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    futures::stream::unfold((listener, permits), move |(listener, permits)| async move {
        let permit = permits.clone().acquire_owned().await.ok()?;
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    // Dead peers are found by TCP keepalive, not HTTP/2
                    // pings (which would keep idle connections open).
                    let keepalive = socket2::TcpKeepalive::new()
                        .with_time(std::time::Duration::from_secs(60))
                        .with_interval(std::time::Duration::from_secs(15));
                    let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
                    let conn = Guarded::new(stream, &limits, Some(permit));
                    return Some((Ok(conn), (listener, permits)));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    })
}

/// A tower layer for tonic servers fed by [`incoming`]: marks each
/// connection as having received a request (its first-request deadline no
/// longer applies).
#[derive(Debug, Clone, Copy, Default)]
pub struct MarkRequests;

impl<S> tower::Layer<S> for MarkRequests {
    type Service = MarkRequestsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MarkRequestsService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct MarkRequestsService<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for MarkRequestsService<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let extensions = req.extensions();
        if let Some(info) = extensions.get::<ConnInfo>() {
            info.mark_request();
        } else if let Some(tls) = extensions.get::<tonic::transport::server::TlsConnectInfo<ConnInfo>>() {
            tls.get_ref().mark_request();
        }
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn pair(limits: &Limits) -> (Guarded, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Guarded::new(server, limits, None), client)
    }

    fn limits() -> Limits {
        Limits { header_timeout: Duration::from_secs(5), idle_timeout: Duration::from_secs(20), ..Limits::default() }
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_request_the_header_deadline_ends_reads() {
        let (mut conn, mut client) = pair(&limits()).await;
        client.write_all(b"GE").await.unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(conn.read(&mut buf).await.unwrap(), 2);
        let started = Instant::now();
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_request_only_silence_ends_the_connection() {
        let (mut conn, mut client) = pair(&limits()).await;
        conn.info().mark_request();
        let mut buf = [0u8; 16];
        // Traffic every 15 s keeps it open past the header deadline and
        // well past one idle timeout.
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_secs(15)).await;
            client.write_all(b"x").await.unwrap();
            assert_eq!(conn.read(&mut buf).await.unwrap(), 1);
        }
        let quiet = Instant::now();
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(quiet.elapsed(), Duration::from_secs(20));
    }

    #[tokio::test(start_paused = true)]
    async fn writing_counts_as_activity() {
        let (mut conn, mut client) = pair(&limits()).await;
        conn.info().mark_request();
        tokio::time::sleep(Duration::from_secs(15)).await;
        conn.write_all(b"answer").await.unwrap();
        let mut got = [0u8; 6];
        client.read_exact(&mut got).await.unwrap();
        let wrote = Instant::now();
        let mut buf = [0u8; 16];
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(wrote.elapsed(), Duration::from_secs(20));
    }
}
