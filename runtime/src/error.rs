//! The one error type of `crust-runtime`.
//!
//! Each variant names the gRPC status the CRI layer answers with, so the mapping
//! there is a plain `match` and every message is written for the person who sent
//! the request.

/// What went wrong, sorted by who can fix it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object (id, name, image) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request itself is malformed or contradicts itself.
    #[error("{0}")]
    InvalidArgument(String),
    /// A name or id is already taken.
    #[error("{0}")]
    AlreadyExists(String),
    /// The object is not in a state that allows the operation.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The operation ran out of time.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The feature is not implemented yet.
    #[error("{0}")]
    Unimplemented(String),
    /// A dependency (a registry, the daemon during recovery) is unreachable for now.
    #[error("{0}")]
    Unavailable(String),
    /// A limit that protects the daemon is reached; retrying later may work.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The caller's credentials were refused.
    #[error("{0}")]
    PermissionDenied(String),
    /// The caller gave no credentials, or not enough of them.
    #[error("{0}")]
    Unauthenticated(String),
    /// Everything else: a bug or an unexpected failure of the host; the chain of causes says which.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// Result with the runtime's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::NotFound`] from anything printable.
    pub fn not_found(msg: impl Into<String>) -> Self {
        Error::NotFound(msg.into())
    }

    /// An [`Error::InvalidArgument`] from anything printable.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }

    /// An [`Error::Internal`] from a message.
    pub fn internal(msg: impl Into<String>) -> Self {
        Error::Internal(anyhow::anyhow!(msg.into()))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Internal(e.into())
    }
}
