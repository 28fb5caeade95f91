//! The one table from error kind to gRPC code and HTTP status. Handlers never
//! pick a code themselves: their error types say which [`ErrorKind`] they
//! are, and [`to_status`] does the rest.

use http::StatusCode;
use tonic::Code;

/// What kind of failure an error is, from the caller's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed; the message names the field.
    InvalidArgument,
    /// No valid credential.
    Unauthenticated,
    /// A valid credential that may not do this.
    PermissionDenied,
    /// The thing asked about does not exist (or is not visible to the caller).
    NotFound,
    /// It exists already, differently (an immutable version).
    AlreadyExists,
    /// The request is valid but the state does not allow it yet.
    FailedPrecondition,
    /// Over a rate limit: retry later.
    ResourceExhausted,
    /// A dependency (database, object store) is down: retry later.
    Unavailable,
    /// A bug or an unexpected state. Details go to the log, not the caller.
    Internal,
}

impl ErrorKind {
    pub fn grpc_code(self) -> Code {
        match self {
            Self::InvalidArgument => Code::InvalidArgument,
            Self::Unauthenticated => Code::Unauthenticated,
            Self::PermissionDenied => Code::PermissionDenied,
            Self::NotFound => Code::NotFound,
            Self::AlreadyExists => Code::AlreadyExists,
            Self::FailedPrecondition => Code::FailedPrecondition,
            Self::ResourceExhausted => Code::ResourceExhausted,
            Self::Unavailable => Code::Unavailable,
            Self::Internal => Code::Internal,
        }
    }

    pub fn http_status(self) -> StatusCode {
        match self {
            Self::InvalidArgument => StatusCode::BAD_REQUEST,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::PermissionDenied => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::AlreadyExists => StatusCode::CONFLICT,
            Self::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
            Self::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An error a service can answer with.
pub trait ServiceError: std::error::Error {
    fn kind(&self) -> ErrorKind;
}

/// Turns a service error into a gRPC status. Internal errors are logged with
/// their details and answered with a generic message, so internals (SQL, S3
/// keys, stack of causes) never reach a caller.
pub fn to_status<E: ServiceError>(err: &E) -> tonic::Status {
    let kind = err.kind();
    match kind {
        ErrorKind::Internal => {
            tracing::error!(error = %DisplayChain(err), "internal error");
            tonic::Status::internal("internal error; see the server's log")
        }
        ErrorKind::Unavailable => {
            tracing::warn!(error = %DisplayChain(err), "dependency unavailable");
            tonic::Status::unavailable(format!("{err}; retry later"))
        }
        _ => tonic::Status::new(kind.grpc_code(), err.to_string()),
    }
}

/// Formats an error with its chain of sources, `a: b: c`, for logs: every
/// internal or unavailable error is logged this way, so the cause (the
/// SQL error, the refused connection) is never dropped.
pub fn error_chain(err: &dyn std::error::Error) -> impl std::fmt::Display + '_ {
    DisplayChain(err)
}

struct DisplayChain<'a>(&'a dyn std::error::Error);

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(err) = source {
            write!(f, ": {err}")?;
            source = err.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_maps_to_matching_grpc_and_http() {
        let kinds = [
            (ErrorKind::InvalidArgument, 400, Code::InvalidArgument),
            (ErrorKind::Unauthenticated, 401, Code::Unauthenticated),
            (ErrorKind::PermissionDenied, 403, Code::PermissionDenied),
            (ErrorKind::NotFound, 404, Code::NotFound),
            (ErrorKind::AlreadyExists, 409, Code::AlreadyExists),
            (ErrorKind::FailedPrecondition, 412, Code::FailedPrecondition),
            (ErrorKind::ResourceExhausted, 429, Code::ResourceExhausted),
            (ErrorKind::Unavailable, 503, Code::Unavailable),
            (ErrorKind::Internal, 500, Code::Internal),
        ];
        for (kind, http, grpc) in kinds {
            assert_eq!(kind.http_status().as_u16(), http, "{kind:?}");
            assert_eq!(kind.grpc_code(), grpc, "{kind:?}");
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("{message}")]
    struct Failure {
        kind: ErrorKind,
        message: &'static str,
        #[source]
        source: Option<std::io::Error>,
    }

    impl ServiceError for Failure {
        fn kind(&self) -> ErrorKind {
            self.kind
        }
    }

    #[test]
    fn internal_details_never_reach_the_caller() {
        let err = Failure {
            kind: ErrorKind::Internal,
            message: "query SELECT secret_hash FROM api_keys failed",
            source: Some(std::io::Error::other("connection to 10.0.0.7:5432 reset")),
        };
        let status = to_status(&err);
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("SELECT") && !status.message().contains("10.0.0.7"), "{status:?}");
    }

    #[test]
    fn other_kinds_carry_their_message() {
        let err = Failure { kind: ErrorKind::NotFound, message: "app acme/erp not found", source: None };
        let status = to_status(&err);
        assert_eq!((status.code(), status.message()), (Code::NotFound, "app acme/erp not found"));
        let err = Failure { kind: ErrorKind::Unavailable, message: "s3 is unavailable", source: None };
        assert_eq!(to_status(&err).message(), "s3 is unavailable; retry later");
    }
}
