use thiserror::Error;

/// A storage failure. [`StoreError::Unavailable`] means "retry later";
/// the others are answers.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{what} is unavailable")]
    Unavailable {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The request is valid but the state forbids it now (yanking the
    /// deployed release, deploying a yanked one).
    #[error("{0}")]
    Precondition(String),
    /// What a caller sent does not add up (chunks that do not rebuild the
    /// file they claim to): the caller's fault.
    #[error("{0}")]
    Mismatch(String),
    /// Bytes read back do not hash to what they should: corruption in the
    /// store or a bug, never the caller's fault.
    #[error("integrity check failed: {0}")]
    Integrity(String),
    #[error("{what} failed")]
    Backend {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StoreError {
    /// What kind of failure this is for a caller: the one mapping from
    /// storage errors to status codes, shared by every service.
    pub fn kind(&self) -> ferry_proto::ErrorKind {
        use ferry_proto::ErrorKind;
        match self {
            StoreError::Unavailable { .. } => ErrorKind::Unavailable,
            StoreError::NotFound(_) => ErrorKind::NotFound,
            StoreError::Conflict(_) => ErrorKind::AlreadyExists,
            StoreError::Precondition(_) => ErrorKind::FailedPrecondition,
            StoreError::Mismatch(_) => ErrorKind::InvalidArgument,
            StoreError::Integrity(_) | StoreError::Backend { .. } => ErrorKind::Internal,
        }
    }
}

impl ferry_proto::ServiceError for StoreError {
    fn kind(&self) -> ferry_proto::ErrorKind {
        StoreError::kind(self)
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        // A closed connection or an I/O error means the database is not
        // there; so do the SQL states that say "try again": connection
        // (08), rollback such as deadlock or serialization (40), resources
        // (53), shutdown (57P01-03). Anything else is a real failure.
        let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
        let transient = e.code().is_some_and(|c| {
            let c = c.code();
            c.starts_with("08") || c.starts_with("40") || c.starts_with("53") || c.starts_with("57P0")
        });
        crate::metrics::failed("postgresql");
        if e.is_closed() || io || transient {
            StoreError::Unavailable { what: "postgresql", source: Box::new(e) }
        } else {
            StoreError::Backend { what: "postgresql query", source: Box::new(e) }
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        crate::metrics::failed("postgresql");
        StoreError::Unavailable { what: "postgresql", source: Box::new(e) }
    }
}
