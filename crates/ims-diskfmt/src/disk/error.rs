//! Why an image cannot be read: each variant names the structure and its offset.

use std::io;

use crate::Format;

/// A reader failure.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The underlying source failed.
    #[error("reading {structure} at offset {offset}")]
    Reading {
        structure: &'static str,
        offset: u64,
        #[source]
        source: io::Error,
    },
    /// The output sink failed while a writer stored a structure.
    #[error("writing {structure} at offset {offset}")]
    Writing {
        structure: &'static str,
        offset: u64,
        #[source]
        source: io::Error,
    },
    /// A structure is malformed, points outside the image, or breaks a documented invariant.
    #[error("{format} {structure} at offset {offset}: {reason}")]
    Corrupt {
        format: Format,
        structure: &'static str,
        offset: u64,
        reason: String,
    },
    /// A size or count exceeds one of this crate's named limits.
    #[error("{format} {structure}: {value} exceeds the limit of {limit}")]
    TooLarge {
        format: Format,
        structure: &'static str,
        value: u64,
        limit: u64,
    },
    /// The image needs another file (backing file, data file, extent, parent) to be read.
    #[error("{format} image references another file ({target}): refusing to open it")]
    Reference { format: Format, target: String },
    /// A valid feature this reader does not handle (encryption, an unknown incompatible bit).
    #[error("unsupported: {what}")]
    Unsupported { what: String },
    /// The caller asked for bytes outside the virtual disk.
    #[error("read of {length} bytes at offset {offset} is outside the {virtual_size}-byte disk")]
    OutOfRange {
        offset: u64,
        length: u64,
        virtual_size: u64,
    },
}

/// The small stable kind callers branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiskErrorKind {
    Io,
    Corrupt,
    TooLarge,
    Reference,
    Unsupported,
    OutOfRange,
}

impl DiskError {
    pub fn kind(&self) -> DiskErrorKind {
        match self {
            DiskError::Reading { .. } | DiskError::Writing { .. } => DiskErrorKind::Io,
            DiskError::Corrupt { .. } => DiskErrorKind::Corrupt,
            DiskError::TooLarge { .. } => DiskErrorKind::TooLarge,
            DiskError::Reference { .. } => DiskErrorKind::Reference,
            DiskError::Unsupported { .. } => DiskErrorKind::Unsupported,
            DiskError::OutOfRange { .. } => DiskErrorKind::OutOfRange,
        }
    }

    pub(crate) fn corrupt(
        format: Format,
        structure: &'static str,
        offset: u64,
        reason: impl Into<String>,
    ) -> DiskError {
        DiskError::Corrupt {
            format,
            structure,
            offset,
            reason: reason.into(),
        }
    }

    pub(crate) fn too_large(
        format: Format,
        structure: &'static str,
        value: u64,
        limit: u64,
    ) -> DiskError {
        DiskError::TooLarge {
            format,
            structure,
            value,
            limit,
        }
    }

    pub(crate) fn unsupported(what: impl Into<String>) -> DiskError {
        DiskError::Unsupported { what: what.into() }
    }
}

/// A structure that failed validation, before it is known whether a reader or the probe asked
/// (parsers shared by both return it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invalid {
    pub format: Format,
    pub structure: &'static str,
    pub offset: u64,
    pub reason: String,
}

impl Invalid {
    pub(crate) fn new(
        format: Format,
        structure: &'static str,
        offset: u64,
        reason: impl Into<String>,
    ) -> Invalid {
        Invalid {
            format,
            structure,
            offset,
            reason: reason.into(),
        }
    }
}

impl From<Invalid> for DiskError {
    fn from(e: Invalid) -> DiskError {
        DiskError::corrupt(e.format, e.structure, e.offset, e.reason)
    }
}

impl From<Invalid> for crate::probe::ProbeError {
    fn from(e: Invalid) -> crate::probe::ProbeError {
        crate::probe::ProbeError::invalid(e.format, e.structure, e.offset, e.reason)
    }
}
