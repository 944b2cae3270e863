//! Why a probe could not describe an image: each variant names the structure and its offset.

use std::io;

use crate::Format;

/// A probe failure. Variants name the failed operation and the on-disk structure involved.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The underlying [`crate::ReadAt`] failed.
    #[error("reading {structure} at offset {offset}")]
    Reading {
        structure: &'static str,
        offset: u64,
        #[source]
        source: io::Error,
    },
    /// A structure the header promises is not (entirely) in the image.
    #[error(
        "{structure} at offset {offset} (+{length} bytes) extends past the end of the image ({image_len} bytes)"
    )]
    Truncated {
        structure: &'static str,
        offset: u64,
        length: u64,
        image_len: u64,
    },
    /// A structure lies where the probe does not look (see `PREFIX_WINDOW` / `SUFFIX_WINDOW`).
    #[error(
        "{structure} at offset {offset} (+{length} bytes) lies outside the inspected windows (first {prefix} and last {suffix} bytes)"
    )]
    OutsideWindow {
        structure: &'static str,
        offset: u64,
        length: u64,
        prefix: u64,
        suffix: u64,
    },
    /// The format was recognised but a structure of it is malformed or unsupported.
    #[error("{format} {structure} at offset {offset}: {reason}")]
    Invalid {
        format: Format,
        structure: &'static str,
        offset: u64,
        reason: String,
    },
    /// The content matches several formats at once (a polyglot); refusing to pick one.
    #[error("image matches more than one format ({}): refusing ambiguous content", join(.formats))]
    Ambiguous { formats: Vec<Format> },
}

fn join(formats: &[Format]) -> String {
    formats
        .iter()
        .map(|f| f.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl ProbeError {
    pub(crate) fn invalid(
        format: Format,
        structure: &'static str,
        offset: u64,
        reason: impl Into<String>,
    ) -> ProbeError {
        ProbeError::Invalid {
            format,
            structure,
            offset,
            reason: reason.into(),
        }
    }

    /// The image ends before a structure its header describes.
    pub fn is_truncated(&self) -> bool {
        matches!(self, ProbeError::Truncated { .. })
    }

    /// The probe needed bytes outside the captured windows of an
    /// [`InspectionWindow`](super::InspectionWindow).
    pub fn is_outside_window(&self) -> bool {
        matches!(self, ProbeError::OutsideWindow { .. })
    }

    /// Several formats matched.
    pub fn is_ambiguous(&self) -> bool {
        matches!(self, ProbeError::Ambiguous { .. })
    }

    /// The format whose structure was malformed, when the error is about one format.
    pub fn format(&self) -> Option<Format> {
        match self {
            ProbeError::Invalid { format, .. } => Some(*format),
            _ => None,
        }
    }
}
