//! The gRPC connection to the registry: `http://` for local use, `https://`
//! (rustls, system roots plus an optional private CA) across the internet.

use std::path::Path;
use std::time::Duration;

use ferry_proto::registry::v1::registry_client;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::error::{AgentError, chain};

/// Largest message exchanged: a manifest, or the list of chunks it lacks.
const MAX_MESSAGE_BYTES: usize = ferry_release::MAX_MANIFEST_BYTES + 1024 * 1024;

type Auth = Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send + Sync>;

/// The generated client with the agent's token attached to every call.
pub type RegistryClient = registry_client::RegistryClient<InterceptedService<Channel, Auth>>;

/// Where and how to reach the registry.
#[derive(Clone)]
pub struct Connection {
    /// `http://host:port` or `https://host:port`.
    pub url: String,
    /// Agent key (`ferry_agent_...`).
    pub token: String,
    /// PEM file of a private CA to trust for `https://`, besides the system's.
    pub ca_cert: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("url", &self.url).field("ca_cert", &self.ca_cert).finish_non_exhaustive()
    }
}

impl Connection {
    /// Connects (eagerly, so a registry that is down is reported as such).
    pub async fn connect(&self) -> Result<RegistryClient, AgentError> {
        let url_err = |reason: &str| AgentError::Url { url: self.url.clone(), reason: reason.to_owned() };
        let tls = if self.url.starts_with("https://") {
            true
        } else if self.url.starts_with("http://") {
            if !is_loopback(&self.url) {
                tracing::warn!(url = %self.url, "plain http: the agent token crosses the network unencrypted; use https://");
            }
            false
        } else {
            return Err(url_err("must start with http:// or https://"));
        };
        let mut endpoint = Endpoint::from_shared(self.url.clone())
            .map_err(|e| url_err(&e.to_string()))?
            .connect_timeout(Duration::from_secs(15))
            // Pings only while a call is in progress: they keep a long
            // commit's connection alive past the registry's idle timeout,
            // and let an idle connection close.
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(false);
        if tls {
            let mut config = ClientTlsConfig::new().with_native_roots();
            if let Some(path) = &self.ca_cert {
                config = config.ca_certificate(read_ca(path)?);
            }
            endpoint = endpoint.tls_config(config).map_err(|e| url_err(&chain(&e)))?;
        }
        let channel =
            endpoint.connect().await.map_err(|e| AgentError::Connect { url: self.url.clone(), reason: chain(&e) })?;
        let header: MetadataValue<_> =
            format!("Bearer {}", self.token.trim()).parse().map_err(|_| AgentError::Token)?;
        let auth: Auth = Box::new(move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", header.clone());
            // The calling span's trace context, so the registry's spans
            // join the agent's trace.
            for (name, value) in ferry_telemetry::trace_headers() {
                if let (Ok(name), Ok(value)) = (MetadataKey::from_bytes(name.as_bytes()), value.parse()) {
                    req.metadata_mut().insert(name, value);
                }
            }
            Ok(req)
        });
        Ok(registry_client::RegistryClient::with_interceptor(channel, auth)
            .send_compressed(CompressionEncoding::Zstd)
            .accept_compressed(CompressionEncoding::Zstd)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }
}

fn is_loopback(url: &str) -> bool {
    let host = url.trim_start_matches("http://").split(['/', ':']).next().unwrap_or("");
    host == "localhost" || host.starts_with("127.") || url.starts_with("http://[::1]")
}

fn read_ca(path: &Path) -> Result<Certificate, AgentError> {
    let pem = std::fs::read(path).map_err(|source| AgentError::CaCert { path: path.to_owned(), source })?;
    Ok(Certificate::from_pem(pem))
}
