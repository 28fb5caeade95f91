//! An HTTP client for tests. reqwest is built without a default TLS
//! provider (ferry-client brings its own, on aws-lc), so its default
//! constructors would panic: tests use this one.

use std::sync::Arc;

/// A reqwest client with TLS on aws-lc, trusting Mozilla's roots.
pub fn http() -> reqwest::Client {
    http_builder().build().expect("an HTTP client")
}

/// [`http`]'s builder, for tests that need more settings.
pub fn http_builder() -> reqwest::ClientBuilder {
    let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("aws-lc supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder().use_preconfigured_tls(tls)
}
