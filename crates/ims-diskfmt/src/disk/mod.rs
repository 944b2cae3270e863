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

pub(crate) use error::Invalid;
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

    /// Format details for `ims img info` (cluster size, subformat, qemu's format-specific keys).
    fn info(&self) -> DiskInfo {
        DiskInfo::default()
    }

    /// Walks every metadata structure and reports inconsistencies (`qemu-img check`).
    fn check(&self) -> Result<CheckReport, DiskError> {
        Err(DiskError::unsupported(format!(
            "{} images have no consistency check",
            self.format()
        )))
    }
}

/// What `info` shows beyond format and size.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskInfo {
    /// Cluster / grain / block size, where the format has one (qemu's `cluster-size`).
    pub cluster_size: Option<u64>,
    /// Variant: qcow2 `compat` ("0.10"/"1.1"), VMDK createType, VHD/VHDX "fixed"/"dynamic".
    pub subformat: Option<String>,
    /// The image is marked dirty / in use (qemu's `dirty-flag`).
    pub dirty: bool,
    /// The data is encrypted.
    pub encrypted: bool,
    /// qemu's `format-specific.data` keys and values, e.g. ("compression-type", "zlib"),
    /// ("refcount-bits", "16"), ("create-type", "streamOptimized"). Values are JSON literals'
    /// text: numbers and booleans unquoted, strings plain.
    pub details: Vec<(String, String)>,
    /// Internal snapshots (qcow2): (id, name, virtual size).
    pub snapshots: Vec<(String, String, u64)>,
}

/// The result of a consistency check, counted as `qemu-img check` counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Metadata errors that can lose data.
    pub corruptions: u64,
    /// Allocated but unreferenced space.
    pub leaks: u64,
    /// One line per problem found, naming the structure and offset.
    pub messages: Vec<String>,
    /// Allocated / total clusters where the format counts them.
    pub allocated_clusters: Option<u64>,
    pub total_clusters: Option<u64>,
    /// End of the used part of the image file.
    pub image_end_offset: Option<u64>,
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
    match format {
        Format::Raw | Format::Iso | Format::Gpt => Ok(Box::new(raw::RawDisk::new(source, format))),
        Format::Vmdk => Ok(Box::new(crate::vmdk::reader::VmdkDisk::open(
            source, options,
        )?)),
        Format::Vdi => Ok(Box::new(crate::vdi::reader::VdiDisk::open(
            source, options,
        )?)),
        Format::Qcow2 => Ok(Box::new(crate::qcow2::Qcow2Disk::open(source, options)?)),
        Format::Qcow => Ok(Box::new(crate::qcow::QcowDisk::open(source, options)?)),
        Format::Qed => Ok(Box::new(crate::qed::QedDisk::open(source, options)?)),
        Format::Vhd => Ok(Box::new(crate::vhd::reader::VhdDisk::open(
            source, options,
        )?)),
        Format::Vhdx => Ok(Box::new(crate::vhdx::reader::VhdxDisk::open(
            source, options,
        )?)),
        Format::Zvhd => Ok(Box::new(crate::zvhd::reader::ZvhdDisk::open(
            source, options,
        )?)),
        Format::Zvhd2 => Ok(Box::new(crate::zvhd::reader::Zvhd2Disk::open(
            source, options,
        )?)),
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

/// Fills `buf` from `source` at `offset`; an image that ends first is corrupt (`structure`
/// names what was being read).
pub(crate) fn read_exact_at(
    source: &dyn ReadAt,
    format: Format,
    structure: &'static str,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), DiskError> {
    let mut done = 0usize;
    while done < buf.len() {
        let at = offset
            .checked_add(done as u64)
            .ok_or_else(|| DiskError::corrupt(format, structure, offset, "offset overflows"))?;
        let n = source
            .read_at(at, &mut buf[done..])
            .map_err(|source| DiskError::Reading {
                structure,
                offset: at,
                source,
            })?;
        if n == 0 {
            return Err(DiskError::corrupt(
                format,
                structure,
                offset,
                format!("{} bytes needed, the image ends after {done}", buf.len()),
            ));
        }
        done += n;
    }
    Ok(())
}

/// [`read_exact_at`] into a new vector of `len` bytes (callers bound `len` first).
pub(crate) fn read_vec_at(
    source: &dyn ReadAt,
    format: Format,
    structure: &'static str,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>, DiskError> {
    let len = usize::try_from(len)
        .map_err(|_| DiskError::too_large(format, structure, len, usize::MAX as u64))?;
    let mut buf = vec![0u8; len];
    read_exact_at(source, format, structure, offset, &mut buf)?;
    Ok(buf)
}
