//! The gRPC connection to the registry: `http://` for local use, `https://`
//! (rustls, system roots plus an optional private CA) across the internet.

use std::path::Path;
use std::time::Duration;

use ferry_proto::registry::v1::registry_client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::proxy::matcher::{Intercept, Matcher};
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
    /// Which proxy, if any, the connection goes through.
    pub proxy: Proxy,
}

/// The HTTP proxy rules the connection follows: those of `HTTPS_PROXY`,
/// `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` (and their lowercase forms) as
/// curl reads them, or none. The registry is reached through an HTTP
/// `CONNECT` tunnel on the proxy, so TLS stays end to end.
#[derive(Clone, Default)]
pub struct Proxy(Option<std::sync::Arc<Matcher>>);

impl Proxy {
    /// No proxy.
    pub fn none() -> Self {
        Self(None)
    }

    /// The rules of the environment (`HTTPS_PROXY` for `https://`
    /// registries, `HTTP_PROXY` for `http://`, `NO_PROXY` exempting hosts).
    pub fn from_env() -> Self {
        Self(Some(std::sync::Arc::new(Matcher::from_env())))
    }

    /// Checks the proxy variables of the environment: the matcher ignores
    /// one it cannot parse, which would connect directly where the operator
    /// meant a proxy. The error names the variable, never its value (it may
    /// hold a password).
    pub fn check_env() -> Result<(), String> {
        check_proxy_vars(|name| std::env::var(name).ok())
    }

    /// Explicit rules, with the variables' syntax (tools and tests).
    pub fn from_values(https: &str, http: &str, no: &str) -> Self {
        Self(Some(std::sync::Arc::new(Matcher::builder().https(https).http(http).no(no).build())))
    }

    /// The proxy for `url` (`None`: connect directly).
    fn intercept(&self, url: &http::Uri) -> Option<Intercept> {
        self.0.as_ref()?.intercept(url)
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("url", &self.url)
            .field("ca_cert", &self.ca_cert)
            .field("proxy", &self.proxy.0.is_some())
            .finish_non_exhaustive()
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
        let connect_err = |e: tonic::transport::Error| AgentError::Connect { url: self.url.clone(), reason: chain(&e) };
        let channel = match self.proxy.intercept(endpoint.uri()) {
            None => endpoint.connect().await.map_err(connect_err)?,
            Some(proxy) => {
                let via = proxy.uri().clone();
                // Never the proxy's credentials in messages.
                let shown = format!(
                    "{}://{}",
                    via.scheme_str().unwrap_or("http"),
                    via.authority().map_or("", |a| a.as_str().rsplit('@').next().unwrap_or(""))
                );
                if via.scheme_str() != Some("http") {
                    return Err(AgentError::Proxy {
                        proxy: shown,
                        reason: "only http:// proxies are supported (the tunnel carries TLS to the registry)".into(),
                        permanent: true,
                    });
                }
                let mut tcp = HttpConnector::new();
                tcp.set_connect_timeout(Some(Duration::from_secs(15)));
                tcp.set_nodelay(true);
                let mut tunnel = Tunnel::new(via, tcp);
                if let Some(auth) = proxy.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                tracing::debug!(proxy = %shown, "connecting to the registry through a proxy");
                endpoint.connect_with_connector(tunnel).await.map_err(|e| {
                    let reason = chain(&e);
                    // 407: the credentials are wrong or missing.
                    let permanent = reason.contains("proxy authorization required");
                    AgentError::Proxy { proxy: shown, reason, permanent }
                })?
            }
        };
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

/// The first proxy variable set to something that is not a proxy URL
/// (`[scheme://][user:password@]host[:port]`, as curl takes it).
fn check_proxy_vars(lookup: impl Fn(&str) -> Option<String>) -> Result<(), String> {
    for name in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"] {
        let Some(value) = lookup(name).filter(|v| !v.trim().is_empty()) else { continue };
        let value = value.trim();
        let url = if value.contains("://") { value.to_owned() } else { format!("http://{value}") };
        let parsed = url.parse::<http::Uri>().ok().filter(|u| u.host().is_some_and(|h| !h.is_empty()));
        if parsed.is_none() {
            return Err(format!(
                "{name} is not a proxy URL such as http://[user:password@]proxy.example.com:3128 \
                 (a password with '@' or ':' must be percent-encoded)"
            ));
        }
    }
    Ok(())
}

fn is_loopback(url: &str) -> bool {
    let host = url.trim_start_matches("http://").split(['/', ':']).next().unwrap_or("");
    host == "localhost" || host.starts_with("127.") || url.starts_with("http://[::1]")
}

fn read_ca(path: &Path) -> Result<Certificate, AgentError> {
    let pem = std::fs::read(path).map_err(|source| AgentError::CaCert { path: path.to_owned(), source })?;
    Ok(Certificate::from_pem(pem))
}

#[cfg(test)]
mod tests {
    use super::check_proxy_vars;

    fn vars<'a>(set: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| set.iter().find(|(n, _)| *n == name).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn proxy_variables_that_are_not_urls_are_named() {
        for ok in [
            &[][..],
            &[("HTTPS_PROXY", "http://proxy:3128")],
            &[("http_proxy", "proxy.corp:8080")],
            &[("ALL_PROXY", "http://user:p%40ss@proxy:3128")],
        ] {
            assert_eq!(check_proxy_vars(vars(ok)), Ok(()), "{ok:?}");
        }
        let err = check_proxy_vars(vars(&[("HTTPS_PROXY", "http://user:p@ss word@proxy:3128")])).unwrap_err();
        assert!(err.starts_with("HTTPS_PROXY is not a proxy URL"), "{err}");
        assert!(!err.contains("p@ss"), "never the value: {err}");
        let err = check_proxy_vars(vars(&[("http_proxy", "http://")])).unwrap_err();
        assert!(err.starts_with("http_proxy"), "{err}");
    }
}
