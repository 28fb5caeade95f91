//! The registry's configuration: command-line flags, each with an
//! environment variable, validated at start-up. S3 endpoint, region and
//! credentials come from the AWS SDK's own environment (`AWS_ENDPOINT_URL_S3`,
//! `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, profiles, ...).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::server::Tls;

#[derive(Debug, Clone, Args)]
pub struct DatabaseConfig {
    /// PostgreSQL connection string (URL or key=value form).
    #[arg(long = "database-url", env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,

    /// Most PostgreSQL connections held open.
    #[arg(long, env = "FERRY_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: usize,
}

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    #[command(flatten)]
    pub database: DatabaseConfig,

    /// Address the gRPC server listens on.
    #[arg(long, env = "FERRY_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,

    /// Bucket holding chunks and assembled files.
    #[arg(long, env = "FERRY_S3_BUCKET")]
    pub s3_bucket: String,

    /// Path-style S3 addressing (`endpoint/bucket/key`), which every
    /// S3-compatible store understands; `false` for virtual-hosted style.
    #[arg(long, env = "FERRY_S3_PATH_STYLE", default_value_t = true, action = clap::ArgAction::Set)]
    pub s3_path_style: bool,

    /// PEM certificate chain to serve gRPC over TLS (with --tls-key).
    #[arg(long, env = "FERRY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "FERRY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl ServeConfig {
    /// Reads the TLS files, naming the one that fails.
    pub fn tls(&self) -> anyhow::Result<Option<Tls>> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let read = |p: &PathBuf, what| std::fs::read(p).with_context(|| format!("reading {what} {}", p.display()));
        Ok(Some(Tls { cert_pem: read(cert, "FERRY_TLS_CERT")?, key_pem: read(key, "FERRY_TLS_KEY")? }))
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.s3_bucket.trim().is_empty() {
            anyhow::bail!("FERRY_S3_BUCKET is empty");
        }
        if self.database.db_max_connections == 0 {
            anyhow::bail!("FERRY_DB_MAX_CONNECTIONS must be at least 1");
        }
        Ok(())
    }
}
