use ferry_proto::{ErrorKind, ServiceError};
use ferry_store::StoreError;
use thiserror::Error;

/// Everything a registry call can fail with; [`ServiceError::kind`] is the
/// only place that decides the status code.
#[derive(Debug, Error)]
pub(crate) enum RegistryError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// The caller's stream broke off; whatever arrived is kept.
    #[error("{0}")]
    Aborted(String),
    /// Too many made-up keys from this caller: retry later.
    #[error("{0}")]
    ResourceExhausted(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ServiceError for RegistryError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Self::Unauthenticated(_) => ErrorKind::Unauthenticated,
            Self::PermissionDenied(_) => ErrorKind::PermissionDenied,
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::FailedPrecondition(_) => ErrorKind::FailedPrecondition,
            Self::Aborted(_) => ErrorKind::Unavailable,
            Self::ResourceExhausted(_) => ErrorKind::ResourceExhausted,
            Self::Store(e) => e.kind(),
        }
    }
}

impl From<ferry_auth::AuthError> for RegistryError {
    fn from(e: ferry_auth::AuthError) -> Self {
        match e {
            ferry_auth::AuthError::Unauthenticated(why) => Self::Unauthenticated(why),
            e @ ferry_auth::AuthError::Throttled { .. } => Self::ResourceExhausted(e.to_string()),
            ferry_auth::AuthError::Store(e) => Self::Store(e),
        }
    }
}

impl From<RegistryError> for tonic::Status {
    fn from(e: RegistryError) -> Self {
        ferry_proto::to_status(&e)
    }
}
