//! Cross-origin calls from browser apps (`FERRY_CORS_ORIGINS`).
//!
//! Client keys travel in the `Authorization` header (or, for `EventSource`,
//! which cannot set headers, as `access_token` on `/v1/watch`), never in
//! cookies: credentials mode stays off, so even `*` cannot let a foreign
//! page act with a user's ambient credentials.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// Which web origins may call the HTTP API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origins {
    /// No cross-origin calls (the default).
    None,
    /// Any origin (`*`).
    Any,
    /// Exactly these origins (`scheme://host[:port]`).
    List(Vec<HeaderValue>),
}

impl Origins {
    /// Parses `FERRY_CORS_ORIGINS`' comma-separated values.
    pub fn parse(values: &[String]) -> anyhow::Result<Self> {
        let values: Vec<&str> = values.iter().map(|v| v.trim()).filter(|v| !v.is_empty()).collect();
        if values.is_empty() {
            return Ok(Self::None);
        }
        if values.contains(&"*") {
            anyhow::ensure!(values.len() == 1, "FERRY_CORS_ORIGINS: `*` cannot be combined with origins");
            return Ok(Self::Any);
        }
        let origins = values
            .into_iter()
            .map(|v| {
                let (scheme, rest) = v.split_once("://").unwrap_or(("", ""));
                let valid = matches!(scheme, "http" | "https")
                    && !rest.is_empty()
                    && !rest.contains('/')
                    && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
                anyhow::ensure!(
                    valid,
                    "FERRY_CORS_ORIGINS: {v:?} is not an origin (scheme://host[:port], no path, e.g. https://app.example.com)"
                );
                Ok(HeaderValue::from_str(v)?)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self::List(origins))
    }

    /// The layer answering preflights and adding CORS headers, if any
    /// origin is allowed.
    pub(crate) fn layer(&self) -> Option<CorsLayer> {
        let allow = match self {
            Origins::None => return None,
            Origins::Any => AllowOrigin::any(),
            Origins::List(list) => AllowOrigin::list(list.clone()),
        };
        Some(
            CorsLayer::new()
                .allow_origin(allow)
                .allow_methods([Method::GET, Method::POST])
                .allow_headers([
                    header::AUTHORIZATION,
                    header::CONTENT_TYPE,
                    HeaderName::from_static("x-ferry-device"),
                    HeaderName::from_static("last-event-id"),
                ])
                .expose_headers([header::RETRY_AFTER])
                .max_age(Duration::from_secs(3600)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &[&str]) -> anyhow::Result<Origins> {
        Origins::parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn origins_are_validated() {
        assert_eq!(parse(&[]).unwrap(), Origins::None);
        assert_eq!(parse(&[""]).unwrap(), Origins::None);
        assert_eq!(parse(&["*"]).unwrap(), Origins::Any);
        assert_eq!(
            parse(&["https://crm.acme.example", " http://localhost:3000"]).unwrap(),
            Origins::List(vec![
                HeaderValue::from_static("https://crm.acme.example"),
                HeaderValue::from_static("http://localhost:3000")
            ])
        );
        for bad in ["crm.acme.example", "https://crm.acme.example/", "ftp://x", "https://", "https://a b"] {
            let err = parse(&[bad]).unwrap_err().to_string();
            assert!(err.contains("is not an origin"), "{bad}: {err}");
        }
        assert!(parse(&["*", "https://a.example"]).unwrap_err().to_string().contains("cannot be combined"));
    }
}
