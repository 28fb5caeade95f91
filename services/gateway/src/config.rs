//! The gateway's configuration: flags, each with an environment variable,
//! validated at start-up. Release data is read from PostgreSQL directly
//! (`DATABASE_URL`; a read-only role suffices); S3 settings come from the AWS
//! SDK's environment, as for the registry.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use crate::core::GatewayConfig;
use crate::limits::Rate;

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// PostgreSQL connection string (the registry's database).
    #[arg(long = "database-url", env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: ferry_store::DatabaseUrl,
    /// Most PostgreSQL connections held open.
    #[arg(long, env = "FERRY_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: usize,
    /// Where reports are written (a role that may INSERT into `reports` and
    /// write `device_failures` and `devices`, and read everything else); default
    /// DATABASE_URL. Reports use a pool of their own either way.
    #[arg(long = "reports-database-url", env = "FERRY_REPORTS_DATABASE_URL", hide_env_values = true)]
    pub reports_database_url: Option<ferry_store::DatabaseUrl>,
    /// HTTP listen address (apps, /healthz, /readyz, /metrics, /openapi.json).
    #[arg(long, env = "FERRY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// gRPC listen address (server-side clients, grpc.health.v1, reflection).
    #[arg(long, env = "FERRY_GRPC_LISTEN", default_value = "0.0.0.0:50052")]
    pub grpc_listen: SocketAddr,
    /// Bucket holding the assembled files (the registry's).
    #[arg(long, env = "FERRY_S3_BUCKET")]
    pub s3_bucket: String,
    /// Path-style S3 addressing; `false` for virtual-hosted style.
    #[arg(long, env = "FERRY_S3_PATH_STYLE", default_value_t = true, action = clap::ArgAction::Set)]
    pub s3_path_style: bool,
    /// Scheme and host put in presigned URLs when phones reach S3 (or a CDN
    /// in front of it that passes the Host header and query through) by
    /// another name than this gateway does, e.g. https://files.example.com.
    /// Default: the S3 endpoint the gateway uses. A tenant's own location
    /// (`ferry-registry admin set-location`) may name another.
    #[arg(long, env = "FERRY_S3_PUBLIC_ENDPOINT")]
    pub s3_public_endpoint: Option<String>,
    /// Lifetime of presigned URLs, in seconds (capped by the credentials').
    #[arg(long, env = "FERRY_URL_TTL_SECONDS", default_value_t = 900)]
    pub url_ttl_seconds: u64,
    /// Longest a revoked key may still work if its change notice is lost.
    #[arg(long, env = "FERRY_KEY_CACHE_SECONDS", default_value_t = 120)]
    pub key_cache_seconds: u64,
    /// Longest a publish or deploy may go unseen if its change notice is lost.
    #[arg(long, env = "FERRY_RELEASE_CACHE_SECONDS", default_value_t = 120)]
    pub release_cache_seconds: u64,
    /// Default requests per second per tenant (`admin set-limit` overrides).
    #[arg(long, env = "FERRY_TENANT_RATE", default_value_t = 1000.0)]
    pub tenant_rate: f64,
    /// Default burst per tenant.
    #[arg(long, env = "FERRY_TENANT_BURST", default_value_t = 2000)]
    pub tenant_burst: u32,
    /// Requests per second per device (`X-Ferry-Device`).
    #[arg(long, env = "FERRY_DEVICE_RATE", default_value_t = 1.0)]
    pub device_rate: f64,
    /// Burst per device.
    #[arg(long, env = "FERRY_DEVICE_BURST", default_value_t = 10)]
    pub device_burst: u32,
    #[command(flatten)]
    pub auth_misses: ferry_auth::MissArgs,
    /// Seconds between heartbeats on an open watch with nothing new (keep
    /// it below every proxy's read timeout on the way to the apps).
    #[arg(long, env = "FERRY_WATCH_HEARTBEAT_SECONDS", default_value_t = 15)]
    pub watch_heartbeat_seconds: u64,
    /// Watches open at once on this gateway (more get 503 with
    /// Retry-After); below FERRY_MAX_CONNECTIONS, so checks always find a
    /// connection.
    #[arg(long, env = "FERRY_MAX_WATCHES", default_value_t = 8_000)]
    pub max_watches: usize,
    /// Seconds between writes of which version each device runs (learnt
    /// from checks, gathered in memory; the dashboard's device counts lag
    /// by at most this much).
    #[arg(long, env = "FERRY_DEVICE_FLUSH_SECONDS", default_value_t = 15)]
    pub device_flush_seconds: u64,
    /// Web origins allowed to call the HTTP API from a browser (CORS), comma
    /// separated, e.g. `https://crm.acme.example`; `*` allows any. Empty:
    /// no cross-origin calls.
    #[arg(long, env = "FERRY_CORS_ORIGINS", default_value = "", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// PEM certificate chain to serve HTTPS and gRPC over TLS (with
    /// --tls-key); unset, plain HTTP (terminate TLS in front).
    #[arg(long, env = "FERRY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "FERRY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Redis or Valkey holding rate limits shared by every gateway replica
    /// (`redis://[user:password@]host:port[/db]` or `redis+unix:///path`;
    /// no TLS); unset, each replica limits on its own, so N
    /// replicas allow N times the limits.
    #[arg(long, env = "FERRY_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<ferry_config::Secret>,
    #[command(flatten)]
    pub listener: ferry_net::ListenerArgs,
}

impl ServeConfig {
    /// The TLS files, read and checked; the error names the setting.
    pub fn tls(&self) -> anyhow::Result<Option<ferry_net::Tls>> {
        ferry_net::Tls::from_settings(self.tls_cert.as_deref(), self.tls_key.as_deref()).map_err(anyhow::Error::msg)
    }

    /// Validates and turns the settings into the gateway's tunables.
    pub fn gateway_config(&self) -> anyhow::Result<GatewayConfig> {
        if self.s3_bucket.trim().is_empty() {
            anyhow::bail!("FERRY_S3_BUCKET is empty");
        }
        if let Some(endpoint) = &self.s3_public_endpoint {
            ferry_store::validate_endpoint(endpoint).map_err(|e| anyhow::anyhow!("FERRY_S3_PUBLIC_ENDPOINT: {e}"))?;
        }
        if self.db_max_connections == 0 {
            anyhow::bail!("FERRY_DB_MAX_CONNECTIONS must be at least 1");
        }
        if !(60..=7 * 24 * 3600).contains(&self.url_ttl_seconds) {
            anyhow::bail!("FERRY_URL_TTL_SECONDS must be between 60 and 604800, got {}", self.url_ttl_seconds);
        }
        for (name, rate, burst) in [
            ("FERRY_TENANT_RATE/FERRY_TENANT_BURST", self.tenant_rate, self.tenant_burst),
            ("FERRY_DEVICE_RATE/FERRY_DEVICE_BURST", self.device_rate, self.device_burst),
        ] {
            if !(rate.is_finite() && rate > 0.0) || burst == 0 {
                anyhow::bail!("{name} must be a positive rate and a burst of at least 1");
            }
        }
        // Clients take a minute of silence for a dead connection.
        if !(1..=45).contains(&self.watch_heartbeat_seconds) {
            anyhow::bail!(
                "FERRY_WATCH_HEARTBEAT_SECONDS must be between 1 and 45, got {}",
                self.watch_heartbeat_seconds
            );
        }
        if !(1..=3600).contains(&self.device_flush_seconds) {
            anyhow::bail!("FERRY_DEVICE_FLUSH_SECONDS must be between 1 and 3600, got {}", self.device_flush_seconds);
        }
        let listener = self.listener.limits().map_err(anyhow::Error::msg)?;
        if Duration::from_secs(self.watch_heartbeat_seconds) >= listener.idle_timeout {
            anyhow::bail!("FERRY_WATCH_HEARTBEAT_SECONDS must be shorter than the idle timeout, or watches are closed");
        }
        if self.max_watches >= listener.max_connections {
            anyhow::bail!(
                "FERRY_MAX_WATCHES ({}) must be below FERRY_MAX_CONNECTIONS ({}), or watches can hold every connection",
                self.max_watches,
                listener.max_connections
            );
        }
        Ok(GatewayConfig {
            presign_lifetime: Duration::from_secs(self.url_ttl_seconds),
            key_cache_ttl: Duration::from_secs(self.key_cache_seconds.max(1)),
            release_cache_ttl: Duration::from_secs(self.release_cache_seconds.max(1)),
            tenant_rate: Rate { per_second: self.tenant_rate, burst: self.tenant_burst },
            device_rate: Rate { per_second: self.device_rate, burst: self.device_burst },
            auth: self
                .auth_misses
                .limits(
                    Some(Duration::from_secs(self.key_cache_seconds.max(1))),
                    Duration::from_secs(self.key_cache_seconds.max(1)),
                )
                .map_err(anyhow::Error::msg)?,
            listener,
            watch_heartbeat: Duration::from_secs(self.watch_heartbeat_seconds),
            max_watches: self.max_watches,
            device_flush: Duration::from_secs(self.device_flush_seconds),
            cors: crate::cors::Origins::parse(&self.cors_origins)?,
            shared_limits: self
                .redis_url
                .as_ref()
                .map(|url| crate::SharedLimits::new(url.as_str()).map(std::sync::Arc::new))
                .transpose()
                .map_err(anyhow::Error::msg)?,
        })
    }
}
