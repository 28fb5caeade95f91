//! ferry-client: what an app does to run the version its private cloud
//! runs, as a library and a CLI of the same name. It is the reference for
//! app developers (`docs/clients.md` walks through the same flow).
//!
//! - [`Client::check`] asks the gateway which version to run;
//! - [`Client::sync`] checks, downloads what the cache lacks (resuming
//!   after cuts, reusing unchanged files), verifies size and BLAKE3,
//!   switches the cache's `current` pointer atomically and reports the
//!   outcome;
//! - [`Client::watch`] follows the gateway's push notices (Server-Sent
//!   Events), reconnecting with `Last-Event-ID`;
//! - [`Cache`] is the directory layout: `releases/<manifest id>/`, the
//!   `current` pointer, the previous release kept for rollback.

mod api;
mod cache;
mod download;
mod sync;
mod tls;
mod watch;

use std::time::Duration;

pub use api::{Action, Answer, ArtifactFile, DeletedFile, LastFailure, Outcome, Report, ReportAccepted};
pub use cache::{Cache, CacheError, CacheLock, Current, FileRecord, RECORD_FILE, ReleaseRecord};
pub use sync::{NOTHING_INSTALLED, Progress, Synced};
pub use watch::{Notice, Watch};

/// What a client needs to know: where the gateway is, its key, and which
/// tenant's app it is.
#[derive(Clone)]
pub struct Config {
    /// The gateway's base URL, e.g. `https://ferry.vendor.example`.
    pub gateway_url: String,
    /// A client key (`ferry-registry admin issue-key TENANT --role client`).
    pub key: String,
    pub tenant: String,
    pub app: String,
    /// Selects platform-tagged artifacts, e.g. `android`.
    pub platform: Option<String>,
    /// A stable id of this device (per-device rate limits, reports, and
    /// the device's last failure in answers).
    pub device_id: Option<String>,
    /// Files downloaded at once.
    pub parallel: usize,
    /// The longest a `Retry-After` is waited out before the call fails.
    pub max_retry_wait: Duration,
    /// Tries per file after a cut connection or a corrupt download.
    pub download_attempts: u32,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("gateway_url", &self.gateway_url)
            .field("key", &"<redacted>")
            .field("tenant", &self.tenant)
            .field("app", &self.app)
            .field("platform", &self.platform)
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// A configuration with the defaults for everything optional.
    pub fn new(gateway_url: impl Into<String>, key: impl Into<String>, tenant: &str, app: &str) -> Self {
        Self {
            gateway_url: gateway_url.into(),
            key: key.into(),
            tenant: tenant.to_owned(),
            app: app.to_owned(),
            platform: None,
            device_id: None,
            parallel: 4,
            max_retry_wait: Duration::from_secs(300),
            download_attempts: 5,
        }
    }
}

/// A client of one gateway, for one tenant's app. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    config: std::sync::Arc<Config>,
    http: reqwest::Client,
}

impl Client {
    /// Validates the configuration and builds the HTTP client (TLS with the
    /// system's root certificates, or Mozilla's when there are none).
    pub fn new(config: Config) -> Result<Self, Error> {
        let invalid = |what: String| Err(Error::Config(what));
        if !(config.gateway_url.starts_with("https://") || config.gateway_url.starts_with("http://")) {
            return invalid(format!("FERRY_GATEWAY_URL {:?} is not an http(s) URL", config.gateway_url));
        }
        if config.key.trim().is_empty() {
            return invalid("FERRY_CLIENT_KEY is empty".into());
        }
        ferry_release::Name::parse("tenant", &config.tenant).map_err(|e| Error::Config(e.to_string()))?;
        ferry_release::Name::parse("app", &config.app).map_err(|e| Error::Config(e.to_string()))?;
        if let Some(p) = &config.platform {
            ferry_release::Name::parse("platform", p).map_err(|e| Error::Config(e.to_string()))?;
        }
        if let Some(d) = &config.device_id
            && (d.is_empty() || d.len() > 128 || !d.bytes().all(|b| b.is_ascii_graphic()))
        {
            return invalid("the device id must be 1 to 128 visible ASCII characters".into());
        }
        if config.parallel == 0 || config.download_attempts == 0 {
            return invalid("parallel downloads and download attempts must be at least 1".into());
        }
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls::client_config())
            .connect_timeout(Duration::from_secs(15))
            // A stalled download or answer is given up after this long
            // without a byte (then resumed).
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!("ferry-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        Ok(Self { config: std::sync::Arc::new(config), http })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// This client, sending the device id kept in `cache` when the
    /// configuration names none.
    pub(crate) fn with_device_of(&self, cache: &Cache) -> Result<Client, Error> {
        if self.config.device_id.is_some() {
            return Ok(self.clone());
        }
        let mut config = (*self.config).clone();
        config.device_id = Some(cache.device_id()?);
        Ok(Client { config: std::sync::Arc::new(config), http: self.http.clone() })
    }
}

/// What can go wrong, each naming what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),
    #[error("cannot reach the gateway or the download server: {}", error_chain(.0))]
    Unreachable(#[source] reqwest::Error),
    #[error("the gateway refused the request ({status} {code}): {message}")]
    Gateway { status: u16, code: String, message: String, retry_after: Option<Duration> },
    #[error("the gateway's answer is malformed: {0}")]
    BadAnswer(String),
    #[error("refused a release of {got}: this client is {expected} (S1-8)")]
    Foreign { expected: String, got: String },
    #[error("download of {file} failed: {reason}")]
    Download { file: String, reason: String },
    /// The network failed mid-download; what arrived is kept and the next
    /// sync resumes it. Not an upgrade failure: not reported.
    #[error("download of {file} was interrupted (the next sync resumes it): {reason}")]
    Interrupted { file: String, reason: String },
    #[error("{file} is corrupt after {attempts} downloads: {reason}")]
    Corrupt { file: String, attempts: u32, reason: String },
    #[error(transparent)]
    Cache(#[from] CacheError),
}

impl Error {
    /// The code sent in a failure report.
    pub fn report_code(&self) -> &'static str {
        match self {
            Error::Config(_) => "E_CONFIG",
            Error::Unreachable(_) | Error::Gateway { .. } | Error::Interrupted { .. } => "E_NETWORK",
            Error::BadAnswer(_) => "E_BAD_ANSWER",
            Error::Foreign { .. } => "E_FOREIGN_RELEASE",
            Error::Download { .. } => "E_DOWNLOAD",
            Error::Corrupt { .. } => "E_VERIFY",
            Error::Cache(_) => "E_STORAGE",
        }
    }
}

/// An error and its causes, `: `-separated (reqwest hides the cause).
/// A failed download as one line, without its URL: a presigned URL is a
/// credential for as long as it lives, and these lines are logged.
fn transfer_error(e: reqwest::Error) -> String {
    error_chain(&e.without_url())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    /// A refused download's message (logged as it is retried) keeps the
    /// presigned URL's signature out.
    #[tokio::test]
    async fn download_errors_carry_no_url() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let url = format!("http://127.0.0.1:{port}/files/x?X-Amz-Signature=0123secret");
        let client = super::Client::new(super::Config::new(format!("http://127.0.0.1:{port}"), "k", "acme", "crm"))
            .expect("a client");
        let err = client.http.get(&url).send().await.unwrap_err();
        assert!(super::error_chain(&err).contains("0123secret"), "the URL is in reqwest's own message");
        let line = super::transfer_error(err);
        assert!(!line.contains("0123secret") && !line.contains("X-Amz"), "{line}");
    }
}
