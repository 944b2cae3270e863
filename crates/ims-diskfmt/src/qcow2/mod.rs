//! qcow2 (versions 2 and 3): header layout, validated model, mapping tables, reader, writer
//! and consistency check.
//!
//! `header` is the raw big-endian layout (also used by the upload probe), `parser` validates
//! it, `tables` maps guest clusters through L1/L2 with a bounded, sharded L2 cache, `reader`
//! implements [`crate::disk::Disk`], `check` walks refcounts like `qemu-img check`, and
//! `writer` streams an image in ascending cluster order.

mod check;
pub(crate) mod codec;
pub(crate) mod header;
mod parser;
mod reader;
pub(crate) mod tables;
mod writer;

pub(crate) use reader::Qcow2Disk;
pub(crate) use writer::create;

use crate::disk::DiskError;
use crate::{Format, ReadAt};

/// How compressed clusters are encoded (header byte 104).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    /// Raw deflate (qemu calls it "zlib").
    Zlib,
    /// One or more zstd frames, then garbage up to the sector boundary.
    Zstd,
}

impl Compression {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Compression::Zlib => "zlib",
            Compression::Zstd => "zstd",
        }
    }
}

/// Reads exactly `buf.len()` bytes at `offset`; a short read is corruption of `structure`.
pub(crate) fn read_exact(
    source: &dyn ReadAt,
    format: Format,
    structure: &'static str,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), DiskError> {
    let mut done = 0usize;
    while done < buf.len() {
        let at = offset + done as u64;
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
                format!("{} bytes missing at the end of the image", buf.len() - done),
            ));
        }
        done += n;
    }
    Ok(())
}

/// Reads up to `buf.len()` bytes at `offset`, zero-filling what lies past the end of the image;
/// returns how many bytes came from the image.
pub(crate) fn read_zero_padded(
    source: &dyn ReadAt,
    structure: &'static str,
    offset: u64,
    buf: &mut [u8],
) -> Result<usize, DiskError> {
    let mut done = 0usize;
    while done < buf.len() {
        let at = offset + done as u64;
        let n = source
            .read_at(at, &mut buf[done..])
            .map_err(|source| DiskError::Reading {
                structure,
                offset: at,
                source,
            })?;
        if n == 0 {
            buf[done..].fill(0);
            break;
        }
        done += n;
    }
    Ok(done)
}
