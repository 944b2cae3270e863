//! [`ServiceError`]: a stable kind plus a message that is safe to show to the caller.

use ims_domain::{DomainError, ErrorKind};

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ServiceError {
    pub kind: ErrorKind,
    pub message: String,
}

pub type ServiceResult<T> = Result<T, ServiceError>;

impl ServiceError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ServiceError {
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
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthorized, message)
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::TooLarge, message)
    }
    /// An internal failure: logged in full here, reported to the caller without details.
    pub fn internal(context: &str, err: &dyn std::error::Error) -> Self {
        tracing::warn!(error = %err, context, "internal error");
        Self::new(
            ErrorKind::Internal,
            "The server could not complete the request.",
        )
    }
}

impl From<DomainError> for ServiceError {
    fn from(e: DomainError) -> Self {
        ServiceError {
            kind: e.kind,
            message: e.message,
        }
    }
}

impl From<ims_meta::MetaError> for ServiceError {
    fn from(e: ims_meta::MetaError) -> Self {
        match e.kind() {
            ErrorKind::Internal => ServiceError::internal("metadata store", &e),
            kind => ServiceError::new(kind, e.to_string()),
        }
    }
}

impl From<ims_blob::BlobError> for ServiceError {
    fn from(e: ims_blob::BlobError) -> Self {
        ServiceError::internal("blob store", &e)
    }
}
