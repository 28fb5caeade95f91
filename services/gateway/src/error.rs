use ferry_proto::{ErrorKind, ServiceError};
use ferry_store::StoreError;

/// The longest reason an error message gives for a bad parameter.
const MAX_REASON_CHARS: usize = 200;

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
        // `why` may quote the input (a query parser's message does): keep
        // what is echoed back short.
        let why = why.to_string();
        let why = match why.char_indices().nth(MAX_REASON_CHARS) {
            Some((cut, _)) => format!("{}…", &why[..cut]),
            None => why,
        };
        Self::new(ErrorKind::InvalidArgument, "invalid_parameter", format!("parameter {param}: {why}"))
    }

    /// A field of a request body is missing or malformed (or the body is
    /// not the JSON expected).
    pub(crate) fn invalid_field(field: &str, why: impl std::fmt::Display) -> Self {
        let mut e = Self::invalid(field, why);
        e.code = "invalid_field";
        e.message = e.message.replacen("parameter ", "field ", 1);
        e
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

    pub(crate) fn version_not_published(tenant: &str, app: &str, version: &ferry_release::Version) -> Self {
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
    /// Dependencies are down (or cannot serve this right now): retry later.
    /// This gateway holds as many watches as it may: retry later (another
    /// replica may have room).
    pub(crate) fn watches_full(retry_after: u64) -> Self {
        Self {
            kind: ErrorKind::Unavailable,
            code: "unavailable",
            message: "this gateway holds as many watches as it may; retry later".into(),
            retry_after: Some(retry_after),
        }
    }

    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, "unavailable", message)
    }

    /// Storage errors take their kind from the one mapping in ferry-store;
    /// internal and unavailable ones are logged with their whole cause
    /// chain and answered with a generic message.
    fn from_store(e: &StoreError) -> Self {
        match e.kind() {
            ErrorKind::Unavailable => {
                tracing::warn!(error = %ferry_proto::error_chain(e), "dependency unavailable");
                Self::unavailable("release data is unavailable; retry later")
            }
            ErrorKind::Internal => {
                tracing::error!(error = %ferry_proto::error_chain(e), "internal error");
                Self::internal("internal error; see the gateway's log")
            }
            kind => Self::new(kind, code(kind), e.to_string()),
        }
    }
}

/// The machine-readable word for a kind, where no more precise one exists.
fn code(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidArgument => "invalid_parameter",
        ErrorKind::Unauthenticated => "unauthenticated",
        ErrorKind::PermissionDenied => "permission_denied",
        ErrorKind::NotFound => "not_found",
        ErrorKind::AlreadyExists => "already_exists",
        ErrorKind::FailedPrecondition => "failed_precondition",
        ErrorKind::ResourceExhausted => "rate_limited",
        ErrorKind::Unavailable => "unavailable",
        ErrorKind::Internal => "internal",
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
