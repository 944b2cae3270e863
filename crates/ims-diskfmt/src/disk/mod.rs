//! Random-access readers for every format: a [`Disk`] maps guest offsets to content.
//!
//! [`open`] takes the bytes of one image (a [`ReadAt`]) and the format the caller *declares*
//! (never guessed here: detection is [`crate::probe`]'s job) and returns a [`Disk`]. A reader
//! never opens another file: backing files, data files, extents and parents are refused with
//! [`DiskError::Reference`] (the caller sees them in `probe`'s report).
//!
//! Format readers live in one module each (`raw`, `qcow2`, ...). Each validates its metadata
//! before use and fails with a [`DiskError`] naming the structure and its offset; none returns
//! silent zeros for metadata that points outside the image (qemu does, `formats.md` §0.4).

mod error;
mod raw;

use std::sync::Arc;

pub use error::{DiskError, DiskErrorKind};

use crate::{Format, ReadAt};

/// A shareable image source: readers keep it for their lifetime and read it from many threads.
pub type SharedSource = Arc<dyn ReadAt + Send + Sync>;

/// What a run of the virtual disk holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExtentKind {
    /// Stored data (it may still happen to be zeros).
    Data,
    /// Known to read as zeros without reading anything (unallocated, zero flag, hole).
    Zero,
}

/// A run of the virtual disk with one [`ExtentKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub length: u64,
    pub kind: ExtentKind,
}

/// A virtual disk opened for reading. All methods take `&self` and are safe to call from
/// several threads at once: converters read clusters in parallel.
pub trait Disk: Send + Sync {
    /// The format this reader decodes.
    fn format(&self) -> Format;

    /// Size of the virtual disk in bytes.
    fn virtual_size(&self) -> u64;

    /// The unit of allocation (cluster, grain, block) in bytes; converters read in multiples of
    /// it. Formats without one report 64 KiB.
    fn granularity(&self) -> u64;

    /// The extent that starts at `offset` (< `virtual_size`) and is at most `max_len` bytes
    /// long (at least 1 byte when `max_len` > 0). Cheap: reads metadata only.
    fn extent(&self, offset: u64, max_len: u64) -> Result<Extent, DiskError>;

    /// Fills `buf` with the virtual content at `offset`. The range must lie inside the disk.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError>;
}

/// How to open an image.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Mimic qemu on corrupt images (metadata past the end reads as zeros). Off by default and
    /// never used by the server.
    pub lenient: bool,
}

/// Opens `source` as a `format` image.
pub fn open(
    source: SharedSource,
    format: Format,
    options: &OpenOptions,
) -> Result<Box<dyn Disk>, DiskError> {
    let _ = options;
    match format {
        Format::Raw | Format::Iso | Format::Gpt => Ok(Box::new(raw::RawDisk::new(source, format))),
        other => Err(DiskError::unsupported(format!(
            "reading {other} images is not implemented yet"
        ))),
    }
}

/// Checks that `offset..offset+len` lies inside a disk of `virtual_size` bytes.
pub(crate) fn check_range(virtual_size: u64, offset: u64, len: usize) -> Result<(), DiskError> {
    let end = offset.checked_add(len as u64);
    match end {
        Some(end) if end <= virtual_size => Ok(()),
        _ => Err(DiskError::OutOfRange {
            offset,
            length: len as u64,
            virtual_size,
        }),
    }
}
