//! What every Ferry listener shares: a connection that sends nothing, or
//! sends its first request too slowly, or goes quiet, is closed; only so
//! many connections are served at once; shutdown is graceful but bounded.
//!
//! - HTTP listeners ([`serve_http`]) run hyper with a per-request header
//!   read timeout (HTTP/1.1) and a header size limit, over [`Guarded`]
//!   connections.
//! - gRPC listeners keep tonic's server, fed by [`incoming`] (guarded
//!   connections, at most `max_connections` at once) and wrapped in
//!   [`MarkRequests`], which tells each connection when its first request
//!   arrived.
//!
//! Every connection must complete its first request's headers within
//! [`Limits::header_timeout`] and is closed after [`Limits::idle_timeout`]
//! without a byte either way (a call in progress keeps its connection alive
//! with HTTP/2 pings, which the agent sends).

mod guarded;
mod http;
mod lifecycle;
mod tls;

use std::time::Duration;

pub use guarded::{ConnInfo, Guarded, MarkRequests, incoming};
pub use http::{serve_http, serve_https};
pub use lifecycle::Lifecycle;
pub use tls::Tls;

/// Binds a listener for `setting` (e.g. `FERRY_LISTEN`); the error names
/// the setting and the address (one already in use, say).
pub async fn bind(addr: std::net::SocketAddr, setting: &str) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("{setting}: cannot listen on {addr}: {e}")))
}

/// Runs `server` (which begins its own graceful shutdown when `stopping`
/// completes) and, once `stopping` completes, gives it at most `grace` to
/// finish the requests in progress: then it is dropped with its
/// connections. For servers (tonic's) whose graceful shutdown waits without
/// bound.
pub async fn with_grace<T, E>(
    server: impl std::future::Future<Output = Result<T, E>>,
    stopping: impl std::future::Future<Output = ()>,
    grace: Duration,
) -> Result<Option<T>, E> {
    let mut server = std::pin::pin!(server);
    tokio::select! {
        result = &mut server => return result.map(Some),
        () = stopping => {}
    }
    match tokio::time::timeout(grace, server).await {
        Ok(result) => result.map(Some),
        Err(_) => {
            tracing::warn!(grace_seconds = grace.as_secs(), "calls still open after the shutdown grace; closing them");
            Ok(None)
        }
    }
}

/// Timeouts and limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The first request's headers must have arrived this long after the
    /// connection opened (and, over HTTP/1.1, every request's headers this
    /// long after they started).
    pub header_timeout: Duration,
    /// A connection that carries no byte in either direction for this long
    /// is closed.
    pub idle_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Largest request head: HTTP/1.1 headers, HTTP/2 header list.
    pub max_header_bytes: u32,
    /// Concurrent requests (HTTP/2 streams) per connection.
    pub max_streams_per_connection: u32,
    /// How long shutdown waits for requests in progress before closing
    /// their connections.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            max_connections: 10_000,
            max_header_bytes: 16 * 1024,
            max_streams_per_connection: 100,
            shutdown_grace: Duration::from_secs(25),
        }
    }
}

impl Limits {
    /// Checks the values make sense; the error names the setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.header_timeout.is_zero() {
            return Err("FERRY_HEADER_TIMEOUT_SECONDS must be at least 1".into());
        }
        if self.idle_timeout < self.header_timeout {
            return Err("FERRY_IDLE_TIMEOUT_SECONDS must be at least FERRY_HEADER_TIMEOUT_SECONDS".into());
        }
        if self.max_connections == 0 {
            return Err("FERRY_MAX_CONNECTIONS must be at least 1".into());
        }
        Ok(())
    }
}

/// The listener settings every service takes, as flags and environment
/// variables (flattened into each service's configuration).
#[derive(Debug, Clone, clap::Args)]
pub struct ListenerArgs {
    /// Seconds a new connection has to deliver its first request's headers
    /// (HTTP/1.1: every request's, and the wait between kept-alive requests).
    #[arg(long, env = "FERRY_HEADER_TIMEOUT_SECONDS", default_value_t = 10)]
    pub header_timeout_seconds: u64,
    /// Seconds without a byte either way after which a connection is closed.
    #[arg(long, env = "FERRY_IDLE_TIMEOUT_SECONDS", default_value_t = 120)]
    pub idle_timeout_seconds: u64,
    /// Connections served at once per listener; more wait in the backlog.
    #[arg(long, env = "FERRY_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Seconds between SIGTERM and closing the listeners, during which the
    /// service reports not ready but keeps serving (a second signal ends
    /// the drain at once).
    #[arg(long, env = "FERRY_DRAIN_SECONDS", default_value_t = 5)]
    pub drain_seconds: u64,
    /// Seconds requests and streams in progress get to finish once the
    /// listeners are closed; then their connections are closed.
    #[arg(long, env = "FERRY_SHUTDOWN_GRACE_SECONDS", default_value_t = 25)]
    pub shutdown_grace_seconds: u64,
}

impl ListenerArgs {
    /// The validated limits; the error names the setting.
    pub fn limits(&self) -> Result<Limits, String> {
        let limits = Limits {
            header_timeout: Duration::from_secs(self.header_timeout_seconds),
            idle_timeout: Duration::from_secs(self.idle_timeout_seconds),
            max_connections: self.max_connections,
            shutdown_grace: Duration::from_secs(self.shutdown_grace_seconds),
            ..Limits::default()
        };
        limits.validate()?;
        if self.drain_seconds > 3600 {
            return Err(format!("FERRY_DRAIN_SECONDS must be at most 3600, got {}", self.drain_seconds));
        }
        Ok(limits)
    }

    /// How long the service keeps serving, not ready, after SIGTERM.
    pub fn drain(&self) -> Duration {
        Duration::from_secs(self.drain_seconds)
    }
}
