//! PostgreSQL over TLS, as `DATABASE_URL` says: libpq's `sslmode` and
//! `sslrootcert` work in both the URL and the `key=value` form.
//!
//! - `sslmode=require`, `verify-ca` or `verify-full`: TLS, and the server's
//!   certificate and host name are always verified (rustls has no
//!   unverified mode; so `require` means what libpq calls `verify-full`);
//!   refused if the server does not offer TLS.
//! - `sslrootcert=/path/ca.pem`: the CA certificates to verify against,
//!   instead of the system's roots.
//! - `sslmode=disable` or `prefer`, or no `sslmode`: no TLS (an unverified
//!   "maybe encrypted" connection protects little; ask for `require`).

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::StoreError;

/// A connection string's settings and the TLS connector they ask for.
pub(crate) fn parse(database_url: &str) -> Result<(tokio_postgres::Config, MakeRustlsConnect), StoreError> {
    let (cleaned, root_cert) = take_tls_params(database_url);
    let mut config = tokio_postgres::Config::from_str(&cleaned).map_err(|e| invalid(&e.to_string()))?;
    if config.get_ssl_mode() != SslMode::Require {
        config.ssl_mode(SslMode::Disable);
    }
    let tls = connector(root_cert.as_ref())?;
    Ok((config, tls))
}

fn invalid(why: &str) -> StoreError {
    StoreError::Backend { what: "reading DATABASE_URL", source: why.to_owned().into() }
}

/// Removes `sslrootcert` (which tokio-postgres does not know) and turns
/// `sslmode=verify-ca|verify-full` into `require` (which verifies here).
fn take_tls_params(url: &str) -> (String, Option<PathBuf>) {
    let mut root_cert = None;
    let mut keep = |pair: &str| -> Option<String> {
        let (key, value) = pair.split_once('=')?;
        match (key.trim(), value.trim()) {
            ("sslrootcert", path) => {
                root_cert = Some(PathBuf::from(percent_decode(path)));
                None
            }
            ("sslmode", "verify-ca" | "verify-full") => Some(format!("{key}=require")),
            _ => Some(pair.to_owned()),
        }
    };
    let cleaned = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            Some((base, query)) => {
                let pairs: Vec<String> = query
                    .split('&')
                    .filter_map(|p| keep(p).or_else(|| p.find('=').is_none().then(|| p.to_owned())))
                    .collect();
                if pairs.is_empty() { base.to_owned() } else { format!("{base}?{}", pairs.join("&")) }
            }
            None => url.to_owned(),
        }
    } else {
        url.split_whitespace()
            .filter_map(|p| keep(p).or_else(|| p.find('=').is_none().then(|| p.to_owned())))
            .collect::<Vec<_>>()
            .join(" ")
    };
    (cleaned, root_cert)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// rustls verifying against `root_cert`'s CAs, or the system's roots.
fn connector(root_cert: Option<&PathBuf>) -> Result<MakeRustlsConnect, StoreError> {
    let mut roots = rustls::RootCertStore::empty();
    match root_cert {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| invalid(&format!("sslrootcert: cannot read {}: {e}", path.display())))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| invalid(&format!("sslrootcert {}: not PEM: {e}", path.display())))?;
                roots.add(cert).map_err(|e| invalid(&format!("sslrootcert {}: {e}", path.display())))?;
            }
            if roots.is_empty() {
                return Err(invalid(&format!("sslrootcert {}: no certificate in the file", path.display())));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(&e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_tls_parameters_become_what_tokio_postgres_knows() {
        let cases = [
            (
                "postgres://u@db/x?sslmode=verify-full&sslrootcert=/etc/ca.pem",
                "postgres://u@db/x?sslmode=require",
                Some("/etc/ca.pem"),
            ),
            ("postgres://u@db/x?sslrootcert=%2Fca%20x.pem", "postgres://u@db/x", Some("/ca x.pem")),
            (
                "postgres://u@db/x?application_name=a&sslmode=disable",
                "postgres://u@db/x?application_name=a&sslmode=disable",
                None,
            ),
            ("host=db user=u sslmode=verify-ca sslrootcert=/ca.pem", "host=db user=u sslmode=require", Some("/ca.pem")),
            ("host=/run/pg user=u", "host=/run/pg user=u", None),
        ];
        for (url, cleaned, root) in cases {
            let (got, got_root) = take_tls_params(url);
            assert_eq!((got.as_str(), got_root), (cleaned, root.map(PathBuf::from)), "{url}");
        }
    }

    #[test]
    fn tls_is_used_only_when_required() {
        let mode = |url: &str| parse(url).unwrap().0.get_ssl_mode();
        assert_eq!(mode("postgres://u@db/x"), SslMode::Disable);
        assert_eq!(mode("postgres://u@db/x?sslmode=prefer"), SslMode::Disable);
        assert_eq!(mode("postgres://u@db/x?sslmode=verify-full"), SslMode::Require);
        let missing = parse("postgres://u@db/x?sslmode=require&sslrootcert=/nonexistent/ca.pem").err().unwrap();
        let shown = ferry_proto::error_chain(&missing).to_string();
        assert!(shown.contains("reading DATABASE_URL") && shown.contains("sslrootcert"), "{shown}");
    }
}
