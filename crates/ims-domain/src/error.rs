//! The small, stable error kinds every layer reports and the API maps to a status.

/// What went wrong, as callers branch on it. Stable: the API maps each to one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    NotFound,
    /// The thing existed but was deleted while the request ran.
    Gone,
    AlreadyExists,
    Conflict,
    InvalidInput,
    Unsupported,
    UnsupportedMediaType,
    Forbidden,
    Unauthorized,
    QuotaExceeded,
    TooLarge,
    Unavailable,
    Internal,
}

impl ErrorKind {
    /// Every kind, for tests that walk the mapping tables.
    pub const ALL: [ErrorKind; 13] = [
        ErrorKind::NotFound,
        ErrorKind::Gone,
        ErrorKind::AlreadyExists,
        ErrorKind::Conflict,
        ErrorKind::InvalidInput,
        ErrorKind::Unsupported,
        ErrorKind::UnsupportedMediaType,
        ErrorKind::Forbidden,
        ErrorKind::Unauthorized,
        ErrorKind::QuotaExceeded,
        ErrorKind::TooLarge,
        ErrorKind::Unavailable,
        ErrorKind::Internal,
    ];
}

/// A rule of the domain was broken; the message is safe to show to the caller.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct DomainError {
    pub kind: ErrorKind,
    pub message: String,
}

impl DomainError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        DomainError {
            kind,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Forbidden, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
}
