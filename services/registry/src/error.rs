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
            Self::Store(e) => match e {
                StoreError::Unavailable { .. } => ErrorKind::Unavailable,
                StoreError::NotFound(_) => ErrorKind::NotFound,
                StoreError::Conflict(_) => ErrorKind::AlreadyExists,
                StoreError::Mismatch(_) => ErrorKind::InvalidArgument,
                StoreError::Integrity(_) | StoreError::Backend { .. } => ErrorKind::Internal,
            },
        }
    }
}

impl From<RegistryError> for tonic::Status {
    fn from(e: RegistryError) -> Self {
        ferry_proto::to_status(&e)
    }
}
