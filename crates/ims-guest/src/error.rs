//! Errors of guest inspection: each variant names the structure that failed and where.

use std::io;

/// Why inspecting a disk (or one part of it) failed.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("reading {what} at byte {offset}: {source}")]
    Reading {
        what: &'static str,
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("{what} at byte {offset} runs past the end of its volume ({len} bytes)")]
    OutOfBounds {
        what: &'static str,
        offset: u64,
        len: u64,
    },
    #[error("invalid {what} at byte {offset}: {reason}")]
    Invalid {
        what: &'static str,
        offset: u64,
        reason: String,
    },
    #[error("{what} exceeds the limit of {limit}")]
    LimitExceeded { what: &'static str, limit: u64 },
    #[error("{format} images cannot be inspected: {reason}")]
    UnsupportedDiskFormat {
        format: &'static str,
        reason: String,
    },
    #[error("the {format} image refers to other files ({targets}): refusing to open them")]
    ReferencesOtherFiles {
        format: &'static str,
        targets: String,
    },
    #[error("the {format} image is encrypted: its contents cannot be inspected")]
    Encrypted { format: &'static str },
    #[error("opening the {format} image: {source}")]
    OpeningDisk {
        format: &'static str,
        #[source]
        source: ims_diskfmt::disk::DiskError,
    },
    #[error("probing the disk format: {0}")]
    Probing(String),
    #[error("opening {path}: {source}")]
    Opening {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{fs} filesystem: {message}")]
    Filesystem { fs: &'static str, message: String },
}

impl GuestError {
    pub(crate) fn invalid(what: &'static str, offset: u64, reason: impl Into<String>) -> Self {
        GuestError::Invalid {
            what,
            offset,
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = GuestError> = std::result::Result<T, E>;
