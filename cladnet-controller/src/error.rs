//! The controller's error type and its mapping to gRPC status codes and HTTP statuses.

use tonic::{Code, Status};

/// A controller operation failed. Each variant maps to one gRPC code and one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// A request field is invalid.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The field, by its API (JSON) name.
        field: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The named object does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What was looked up, e.g. `network "n1"`.
        what: String,
    },
    /// Creating something that exists.
    #[error("{what} already exists")]
    AlreadyExists {
        /// What.
        what: String,
    },
    /// The request is valid but the state does not allow it (CIDR exhausted, ...).
    #[error("{0}")]
    FailedPrecondition(String),
    /// An optimistic-concurrency check failed; re-read and retry.
    #[error("{0}")]
    Aborted(String),
    /// No or malformed credentials.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// Credentials valid but not for this call.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] cladnet_store::Error),
    /// A stored record could not be decoded (corruption or an incompatible schema).
    #[error("stored record {key} is unreadable: {reason}")]
    Corrupt {
        /// The store key.
        key: String,
        /// Why.
        reason: String,
    },
}

/// Shorthand for results of controller operations.
pub type Result<T, E = ControllerError> = std::result::Result<T, E>;

impl ControllerError {
    /// An invalid field.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// A missing object.
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::NotFound { what: what.into() }
    }

    /// The gRPC code of this error.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument { .. } => Code::InvalidArgument,
            Self::NotFound { .. } => Code::NotFound,
            Self::AlreadyExists { .. } => Code::AlreadyExists,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::Aborted(_) => Code::Aborted,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::Store(e) if e.is_retryable() => Code::Unavailable,
            Self::Store(_) | Self::Corrupt { .. } => Code::Internal,
        }
    }

    /// The HTTP status of this error.
    pub fn http_status(&self) -> u16 {
        match self.code() {
            Code::InvalidArgument => 400,
            Code::Unauthenticated => 401,
            Code::PermissionDenied => 403,
            Code::NotFound => 404,
            Code::AlreadyExists | Code::Aborted => 409,
            Code::FailedPrecondition => 412,
            Code::Unavailable => 503,
            _ => 500,
        }
    }
}

impl From<ControllerError> for Status {
    fn from(e: ControllerError) -> Self {
        Self::new(e.code(), e.to_string())
    }
}
