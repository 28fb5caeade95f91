//! TLS for services that terminate it themselves (`FERRY_TLS_CERT`,
//! `FERRY_TLS_KEY`): the PEM files, read once at start with errors naming
//! the setting, and the rustls configuration HTTP listeners use (HTTP/2 and
//! HTTP/1.1 by ALPN; aws-lc, like the rest of Ferry).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A PEM certificate chain and its private key.
#[derive(Clone)]
pub struct Tls {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("cert_pem_bytes", &self.cert_pem.len()).finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads `FERRY_TLS_CERT` and `FERRY_TLS_KEY` from these files and
    /// checks they make a usable configuration; the error names the one at
    /// fault.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, String> {
        let read =
            |p: &Path, what: &str| std::fs::read(p).map_err(|e| format!("{what}: cannot read {}: {e}", p.display()));
        let tls = Self { cert_pem: read(cert, "FERRY_TLS_CERT")?, key_pem: read(key, "FERRY_TLS_KEY")? };
        tls.server_config()?;
        Ok(tls)
    }

    /// The TLS of `FERRY_TLS_CERT` and `FERRY_TLS_KEY` when both are set
    /// (clap makes each require the other).
    pub fn from_settings(cert: Option<&Path>, key: Option<&Path>) -> Result<Option<Self>, String> {
        match (cert, key) {
            (Some(cert), Some(key)) => Self::from_files(cert, key).map(Some),
            (None, None) => Ok(None),
            _ => Err("FERRY_TLS_CERT and FERRY_TLS_KEY must be set together".into()),
        }
    }

    /// The server configuration for an HTTP listener.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("FERRY_TLS_CERT: not a PEM certificate chain: {e}"))?;
        if certs.is_empty() {
            return Err("FERRY_TLS_CERT: no certificate in the file".into());
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem)
            .map_err(|e| format!("FERRY_TLS_KEY: not a PEM private key: {e}"))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| format!("FERRY_TLS_CERT/FERRY_TLS_KEY: the key does not fit the certificate: {e}"))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_are_refused_naming_the_setting() {
        let dir = std::env::temp_dir().join(format!("ferry-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, "not a certificate").unwrap();
        std::fs::write(&key, "not a key").unwrap();
        let error = Tls::from_files(&cert, &key).unwrap_err();
        assert!(error.starts_with("FERRY_TLS_CERT:"), "{error}");
        let error = Tls::from_files(&dir.join("absent.pem"), &key).unwrap_err();
        assert!(error.starts_with("FERRY_TLS_CERT: cannot read"), "{error}");
        assert!(Tls::from_settings(Some(&cert), None).unwrap_err().contains("set together"));
        assert!(Tls::from_settings(None, None).unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
