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
        if root_cert.is_some() {
            return Err(invalid("sslrootcert is set but sslmode is not require, verify-ca or verify-full"));
        }
        config.ssl_mode(SslMode::Disable);
    }
    let tls = connector(root_cert.as_ref())?;
    Ok((config, tls))
}

fn invalid(why: &str) -> StoreError {
    StoreError::Backend { what: "reading DATABASE_URL", source: why.to_owned().into() }
}

/// Removes `sslrootcert` (which tokio-postgres does not know) and turns
/// `sslmode=verify-ca|verify-full` into `require` (which verifies here);
/// everything else is left exactly as written.
fn take_tls_params(url: &str) -> (String, Option<PathBuf>) {
    let mut root_cert = None;
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else { return (url.to_owned(), None) };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("sslrootcert", path)) => root_cert = Some(PathBuf::from(percent_decode(path))),
                Some(("sslmode", "verify-ca" | "verify-full")) => kept.push("sslmode=require".to_owned()),
                _ => kept.push(pair.to_owned()),
            }
        }
        let cleaned = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
        return (cleaned, root_cert);
    }
    // key=value: values may be quoted ('...', with \' and \\ inside), so
    // the string is cut into whole settings and only the two are touched.
    let mut out = String::with_capacity(url.len());
    for (setting, key, value) in settings(url) {
        match (key, value.as_str()) {
            ("sslrootcert", path) => root_cert = Some(PathBuf::from(path)),
            ("sslmode", "verify-ca" | "verify-full") => out.push_str(" sslmode=require"),
            _ => {
                out.push(' ');
                out.push_str(setting);
            }
        }
    }
    (out.trim_start().to_owned(), root_cert)
}

/// The settings of a key=value connection string: each as written, its
/// key, and its value unquoted.
fn settings(s: &str) -> Vec<(&str, &str, String)> {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let start = i;
        while i < bytes.len() && bytes[i] != b'=' && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &s[start..i];
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < bytes.len() && bytes[i] == b'=' {
            i += 1;
        }
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = Vec::new();
        if i < bytes.len() && bytes[i] == b'\'' {
            i += 1;
            while i < bytes.len() && bytes[i] != b'\'' {
                if bytes[i] == b'\\' && i + 1 < bytes.len() {
                    i += 1;
                }
                value.push(bytes[i]);
                i += 1;
            }
            i += 1;
        } else {
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                if bytes[i] == b'\\' && i + 1 < bytes.len() {
                    i += 1;
                }
                value.push(bytes[i]);
                i += 1;
            }
        }
        if !key.is_empty() {
            out.push((&s[start..i.min(s.len())], key, String::from_utf8_lossy(&value).into_owned()));
        }
    }
    out
}

/// `%XX` escapes of a URL's query value, decoded byte by byte.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(hi * 16 + lo);
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
            // Quoted values stay exactly as written; no percent-decoding here.
            (
                "host=db password='a  b\\'c' sslrootcert='/ca dir/ca%20.pem' sslmode=verify-full",
                "host=db password='a  b\\'c' sslmode=require",
                Some("/ca dir/ca%20.pem"),
            ),
            ("postgres://u@db/x?sslrootcert=%e9%", "postgres://u@db/x", Some("\u{FFFD}%")),
            ("postgres://u@db/x?sslrootcert=%aé", "postgres://u@db/x", Some("%aé")),
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
        let lone = ferry_proto::error_chain(&parse("postgres://u@db/x?sslrootcert=/ca.pem").err().unwrap()).to_string();
        assert!(lone.contains("sslmode is not require"), "{lone}");
        let missing = parse("postgres://u@db/x?sslmode=require&sslrootcert=/nonexistent/ca.pem").err().unwrap();
        let shown = ferry_proto::error_chain(&missing).to_string();
        assert!(shown.contains("reading DATABASE_URL") && shown.contains("sslrootcert"), "{shown}");
    }
}
