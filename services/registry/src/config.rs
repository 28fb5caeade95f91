//! The registry's configuration: command-line flags, each with an
//! environment variable, validated at start-up. S3 endpoint, region and
//! credentials come from the AWS SDK's own environment (`AWS_ENDPOINT_URL_S3`,
//! `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, profiles, ...).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::server::Tls;
use crate::service::RegistrySettings;

#[derive(Debug, Clone, Args)]
pub struct DatabaseConfig {
    /// PostgreSQL connection string (URL or key=value form).
    #[arg(long = "database-url", env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: ferry_store::DatabaseUrl,

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

    /// Plain-HTTP ops listener: `/healthz`, `/readyz`, `/metrics`.
    #[arg(long, env = "FERRY_METRICS_LISTEN", default_value = "0.0.0.0:9091")]
    pub metrics_listen: SocketAddr,

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

    #[command(flatten)]
    pub auth_misses: ferry_auth::MissArgs,

    /// Seconds between garbage collections (manifests, chunks and files of
    /// publishes that never committed); 0 turns them off on this replica.
    #[arg(long, env = "FERRY_GC_INTERVAL_SECONDS", default_value_t = 3600)]
    pub gc_interval_seconds: u64,

    /// Seconds an unreferenced manifest, chunk or file is kept before it
    /// may be collected; longer than any publish takes.
    #[arg(long, env = "FERRY_GC_GRACE_SECONDS", default_value_t = 86_400)]
    pub gc_grace_seconds: u64,

    /// SMTP relay for e-mail alerts: `smtp://[user[:password]@]host[:port]`
    /// (STARTTLS required; `?tls=none` only for a relay on this host) or
    /// `smtps://...`. Unset: alerts go by webhook only.
    #[arg(long, env = "FERRY_SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<ferry_config::Secret>,

    /// File holding the SMTP password (instead of the URL's).
    #[arg(long, env = "FERRY_SMTP_PASSWORD_FILE")]
    pub smtp_password_file: Option<PathBuf>,

    /// Sender of e-mail alerts, e.g. `Ferry <ferry@example.com>`.
    #[arg(long, env = "FERRY_ALERT_FROM")]
    pub alert_from: Option<String>,

    /// At most one digest of further failures per app version per this
    /// many seconds (the first failure after a quiet interval goes at once).
    #[arg(long, env = "FERRY_ALERT_DIGEST_SECONDS", default_value_t = 300)]
    pub alert_digest_seconds: u64,

    /// Days reports are kept.
    #[arg(long, env = "FERRY_REPORT_RETENTION_DAYS", default_value_t = 90)]
    pub report_retention_days: u64,

    /// Binary patches made at once by this replica (each holds both files
    /// in memory); 0: none on this replica.
    #[arg(long, env = "FERRY_PATCH_WORKERS", default_value_t = 1)]
    pub patch_workers: usize,

    /// On a deploy, patches are made from (and back to) this many recently
    /// deployed releases and this many recently published ones; 0: none.
    #[arg(long, env = "FERRY_PATCH_BASES", default_value_t = 3)]
    pub patch_bases: usize,

    /// Where the operator dashboard listens (HTTP; put TLS in front of it
    /// or reach it on localhost: its cookie is `Secure`). Unset: no
    /// dashboard.
    #[arg(long, env = "FERRY_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Hours a dashboard sign-in lasts.
    #[arg(long, env = "FERRY_ADMIN_SESSION_HOURS", default_value_t = 12)]
    pub admin_session_hours: u64,

    #[command(flatten)]
    pub listener: ferry_net::ListenerArgs,
}

impl ServeConfig {
    /// The dashboard's settings, validated (whether or not it is served).
    pub fn dashboard_settings(&self) -> anyhow::Result<ferry_dashboard::DashboardSettings> {
        if !(1..=720).contains(&self.admin_session_hours) {
            anyhow::bail!("FERRY_ADMIN_SESSION_HOURS must be between 1 and 720, got {}", self.admin_session_hours);
        }
        Ok(ferry_dashboard::DashboardSettings {
            session_lifetime: Duration::from_secs(self.admin_session_hours * 3600),
            ..Default::default()
        })
    }

    /// Reads the TLS files, naming the one that fails.
    pub fn tls(&self) -> anyhow::Result<Option<Tls>> {
        Tls::from_settings(self.tls_cert.as_deref(), self.tls_key.as_deref()).map_err(anyhow::Error::msg)
    }

    /// Validates the settings (naming the one at fault) and turns them into
    /// the registry's tunables.
    pub fn settings(&self) -> anyhow::Result<RegistrySettings> {
        if self.s3_bucket.trim().is_empty() {
            anyhow::bail!("FERRY_S3_BUCKET is empty");
        }
        if self.database.db_max_connections == 0 {
            anyhow::bail!("FERRY_DB_MAX_CONNECTIONS must be at least 1");
        }
        if self.gc_grace_seconds < 60 {
            anyhow::bail!("FERRY_GC_GRACE_SECONDS must be at least 60 (longer than any publish takes)");
        }
        if self.alert_digest_seconds == 0 {
            anyhow::bail!("FERRY_ALERT_DIGEST_SECONDS must be at least 1");
        }
        // Each worker holds two files and zstd's tables in memory; each base
        // costs a job per changed file at every deploy.
        if self.patch_workers > 64 {
            anyhow::bail!("FERRY_PATCH_WORKERS must be at most 64, got {}", self.patch_workers);
        }
        if self.patch_bases > 50 {
            anyhow::bail!("FERRY_PATCH_BASES must be at most 50, got {}", self.patch_bases);
        }
        if self.report_retention_days == 0 {
            anyhow::bail!("FERRY_REPORT_RETENTION_DAYS must be at least 1");
        }
        let smtp = match &self.smtp_url {
            None if self.smtp_password_file.is_some() => {
                anyhow::bail!("FERRY_SMTP_PASSWORD_FILE is set but FERRY_SMTP_URL is not")
            }
            None => None,
            Some(url) => {
                let Some(from) = self.alert_from.clone() else {
                    anyhow::bail!("FERRY_ALERT_FROM is required with FERRY_SMTP_URL (the sender of e-mail alerts)");
                };
                let password = self
                    .smtp_password_file
                    .as_ref()
                    .map(|p| {
                        std::fs::read_to_string(p)
                            .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
                            .with_context(|| format!("reading FERRY_SMTP_PASSWORD_FILE {}", p.display()))
                    })
                    .transpose()?;
                Some(ferry_alerts::SmtpSettings { url: url.as_str().to_owned(), password, from })
            }
        };
        let alerts = ferry_alerts::AlertSettings {
            digest_interval: Duration::from_secs(self.alert_digest_seconds),
            smtp,
            ..ferry_alerts::AlertSettings::default()
        };
        // Fails now, naming the setting, rather than when the first alert
        // is sent.
        ferry_alerts::Delivery::new(alerts.smtp.as_ref(), alerts.max_attempts, alerts.first_backoff)?;
        Ok(RegistrySettings {
            alerts: Some(alerts),
            report_retention: Duration::from_secs(self.report_retention_days * 24 * 3600),
            gc_interval: (self.gc_interval_seconds > 0).then(|| Duration::from_secs(self.gc_interval_seconds)),
            gc_grace: Duration::from_secs(self.gc_grace_seconds),
            patches: crate::patcher::PatchSettings {
                workers: self.patch_workers,
                bases: self.patch_bases,
                ..crate::patcher::PatchSettings::default()
            },
            listener: self.listener.limits().map_err(anyhow::Error::msg)?,
            auth: {
                let defaults = RegistrySettings::default().auth;
                self.auth_misses.limits(defaults.found_ttl, defaults.missing_ttl).map_err(anyhow::Error::msg)?
            },
        })
    }
}

/// `ferry-registry gc`: one garbage collection now, its report printed.
#[derive(Debug, Clone, Args)]
pub struct GcConfig {
    #[command(flatten)]
    pub database: DatabaseConfig,

    /// Bucket holding chunks and assembled files.
    #[arg(long, env = "FERRY_S3_BUCKET")]
    pub s3_bucket: String,

    /// Path-style S3 addressing; `false` for virtual-hosted style.
    #[arg(long, env = "FERRY_S3_PATH_STYLE", default_value_t = true, action = clap::ArgAction::Set)]
    pub s3_path_style: bool,

    /// Seconds an unreferenced manifest, chunk, file or patch is kept.
    #[arg(long, env = "FERRY_GC_GRACE_SECONDS", default_value_t = 86_400)]
    pub gc_grace_seconds: u64,

    /// As `serve`'s: patches between a deployed release and this many
    /// bases are kept, the rest collected.
    #[arg(long, env = "FERRY_PATCH_BASES", default_value_t = 3, value_parser = clap::value_parser!(u64).range(0..=50))]
    pub patch_bases: u64,
}
