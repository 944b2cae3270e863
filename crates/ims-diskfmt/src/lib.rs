//! Virtual disk image formats: what a byte stream is, how big a disk it describes, and which
//! other files it would make a reader open.
//!
//! This crate is a leaf: synchronous, no serde, no HTTP, and it never opens a file it was not
//! handed. Everything reads through [`ReadAt`] (positional reads on `&self`, no shared cursor).
//! Two entry points: [`probe::probe`], the upload inspector (headers only, bounded windows),
//! and [`disk::open`], random-access readers of the virtual content.

pub mod convert;
pub mod disk;
pub mod probe;
mod qcow;
mod qcow2;
mod qed;
mod vdi;
mod vmdk;
pub mod write;

mod vhd;
mod vhdx;
mod zvhd;

use std::fmt;
use std::io;

/// Positional, read-only access to an image: the only way this crate touches data.
pub trait ReadAt {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read (0 at the end).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;

    /// Total length of the image in bytes.
    fn len(&self) -> u64;

    /// `true` when the image has no bytes at all.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// For sources that know their holes (sparse files): the run at `offset` is stored data
    /// (`Some(Run::Data(end))`) or a hole that reads as zeros (`Some(Run::Hole(end))`) up to
    /// `end` (> `offset`). `None` when the source cannot tell: everything counts as data.
    fn run_at(&self, offset: u64) -> Option<Run> {
        let _ = offset;
        None
    }
}

/// A stored-data run or a hole of a sparse source, with the offset where it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    Data(u64),
    Hole(u64),
}

impl ReadAt for std::fs::File {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(self, buf, offset)
    }

    fn len(&self) -> u64 {
        // A file whose metadata cannot be read is treated as empty; every read then fails
        // cleanly instead of the probe panicking.
        self.metadata().map(|m| m.len()).unwrap_or(0)
    }

    /// `lseek(SEEK_DATA / SEEK_HOLE)`, as qemu's raw driver asks. Moves the descriptor's
    /// cursor, which nothing here uses (reads are positional). Any error but "no data after
    /// `offset`" (a filesystem without hole support, a pipe) means "unknown".
    fn run_at(&self, offset: u64) -> Option<Run> {
        let len = ReadAt::len(self);
        if offset >= len {
            return None;
        }
        let data = match seek(self, offset, libc::SEEK_DATA) {
            Ok(data) => data,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => return Some(Run::Hole(len)),
            Err(_) => return None,
        };
        if data > offset {
            return Some(Run::Hole(data.min(len)));
        }
        let hole = seek(self, offset, libc::SEEK_HOLE).ok()?;
        (hole > offset).then_some(Run::Data(hole.min(len)))
    }
}

/// `lseek(fd, offset, whence)` returning the new offset.
fn seek(file: &std::fs::File, offset: u64, whence: libc::c_int) -> io::Result<u64> {
    use std::os::fd::AsRawFd;
    let offset = libc::off_t::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: the descriptor stays open for the call (`file` is borrowed); lseek reads no
    // memory of ours.
    let at = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    u64::try_from(at).map_err(|_| io::Error::last_os_error())
}

impl ReadAt for [u8] {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let Ok(start) = usize::try_from(offset) else {
            return Ok(0);
        };
        let Some(available) = self.get(start..) else {
            return Ok(0);
        };
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        Ok(n)
    }

    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
}

impl ReadAt for Vec<u8> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.as_slice().read_at(offset, buf)
    }

    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }
}

/// A disk image format, named as Glance and qemu name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Raw,
    Qcow2,
    /// qcow version 1.
    Qcow,
    Qed,
    Vmdk,
    /// Microsoft VHD (qemu calls it "vpc").
    Vhd,
    Vhdx,
    Vdi,
    /// ISO 9660 (or UDF) optical media image; qemu reads it as raw.
    Iso,
    /// Huawei ZVHD: one zlib stream over 2 MiB blocks.
    Zvhd,
    /// Huawei ZVHD2: independently compressed blocks with an index.
    Zvhd2,
    /// A LUKS container at offset 0.
    Luks,
    /// A raw disk carrying a GUID partition table (protective MBR + "EFI PART").
    Gpt,
}

impl Format {
    /// Every format, in detection order.
    pub const ALL: [Format; 13] = [
        Format::Raw,
        Format::Qcow2,
        Format::Qcow,
        Format::Qed,
        Format::Vmdk,
        Format::Vhd,
        Format::Vhdx,
        Format::Vdi,
        Format::Iso,
        Format::Zvhd,
        Format::Zvhd2,
        Format::Luks,
        Format::Gpt,
    ];

    /// The Glance `disk_format` / qemu-style name.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Qcow => "qcow",
            Format::Qed => "qed",
            Format::Vmdk => "vmdk",
            Format::Vhd => "vhd",
            Format::Vhdx => "vhdx",
            Format::Vdi => "vdi",
            Format::Iso => "iso",
            Format::Zvhd => "zvhd",
            Format::Zvhd2 => "zvhd2",
            Format::Luks => "luks",
            Format::Gpt => "gpt",
        }
    }

    /// Parses a name produced by [`Format::as_str`]; also accepts qemu's "vpc" for VHD.
    pub fn parse(name: &str) -> Option<Format> {
        if name == "vpc" {
            return Some(Format::Vhd);
        }
        Format::ALL.into_iter().find(|f| f.as_str() == name)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_names_round_trip() {
        for format in Format::ALL {
            assert_eq!(Format::parse(format.as_str()), Some(format));
        }
        assert_eq!(Format::parse("vpc"), Some(Format::Vhd));
        assert_eq!(Format::parse("ploop"), None);
    }

    #[test]
    fn slice_read_at_past_end_reads_nothing() {
        let data = vec![1u8, 2, 3];
        let mut buf = [0u8; 4];
        assert_eq!(data.read_at(1, &mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], &[2, 3]);
        assert_eq!(data.read_at(u64::MAX, &mut buf).unwrap(), 0);
    }
}
