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
