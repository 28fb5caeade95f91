use ferry_proto::{ErrorKind, ServiceError};
use ferry_store::StoreError;

/// An answer other than success. `code` is a stable machine-readable word
/// for clients (`not_found`, `rate_limited`, ...); `message` is for people.
#[derive(Debug, Clone)]
pub struct GatewayError {
    pub kind: ErrorKind,
    pub code: &'static str,
    pub message: String,
    /// With `rate_limited`: seconds to wait before retrying.
    pub retry_after: Option<u64>,
}

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for GatewayError {}

impl ServiceError for GatewayError {
    fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl GatewayError {
    fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        Self { kind, code, message: message.into(), retry_after: None }
    }

    /// A query parameter (or gRPC field) is missing or malformed.
    pub(crate) fn invalid(param: &str, why: impl std::fmt::Display) -> Self {
        Self::new(ErrorKind::InvalidArgument, "invalid_parameter", format!("parameter {param}: {why}"))
    }

    pub(crate) fn unauthenticated(why: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthenticated, "unauthenticated", why)
    }

    /// The one answer for "no such app", "not your tenant" and "no such
    /// tenant" alike (S1-4), so a key learns nothing about other tenants.
    pub(crate) fn app_not_found(tenant: &str, app: &str) -> Self {
        Self::new(ErrorKind::NotFound, "not_found", format!("app {tenant}/{app} not found"))
    }

    pub(crate) fn not_deployed(tenant: &str, app: &str) -> Self {
        Self::new(
            ErrorKind::NotFound,
            "not_deployed",
            format!("no version of {tenant}/{app} is deployed yet; ask again later"),
        )
    }

    pub(crate) fn version_not_published(tenant: &str, app: &str, version: &semver::Version) -> Self {
        Self::new(
            ErrorKind::NotFound,
            "version_not_found",
            format!("version {version} of {tenant}/{app} is not published"),
        )
    }

    pub(crate) fn rate_limited(scope: &str, retry_after: u64) -> Self {
        Self {
            kind: ErrorKind::ResourceExhausted,
            code: "rate_limited",
            message: format!("too many requests for this {scope}; retry later"),
            retry_after: Some(retry_after),
        }
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, "internal", message)
    }
}

impl GatewayError {
    fn from_store(e: &StoreError) -> Self {
        if let StoreError::Unavailable { .. } = e {
            tracing::warn!(error = %e, "dependency unavailable");
            return Self::new(ErrorKind::Unavailable, "unavailable", "release data is unavailable; retry later");
        }
        tracing::error!(error = %e, "store error");
        Self::internal("internal error; see the gateway's log")
    }
}

impl From<StoreError> for GatewayError {
    fn from(e: StoreError) -> Self {
        Self::from_store(&e)
    }
}

impl From<std::sync::Arc<StoreError>> for GatewayError {
    fn from(e: std::sync::Arc<StoreError>) -> Self {
        Self::from_store(&e)
    }
}
