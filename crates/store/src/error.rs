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

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        // A closed connection or an I/O error means the database is not
        // there; anything else (constraint, syntax) is a real failure.
        let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
        if e.is_closed() || io {
            StoreError::Unavailable { what: "postgresql", source: Box::new(e) }
        } else {
            StoreError::Backend { what: "postgresql query", source: Box::new(e) }
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::Unavailable { what: "postgresql", source: Box::new(e) }
    }
}
