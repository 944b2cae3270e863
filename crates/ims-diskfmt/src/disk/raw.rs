//! raw (and ISO / GPT disks, which are raw content): the bytes are the disk, rounded up to
//! 512 bytes as qemu presents them, the tail reading as zeros.

use super::{Disk, DiskError, Extent, ExtentKind, SharedSource, check_range};
use crate::{Format, Run};

/// qemu presents raw images rounded up to whole sectors (`formats.md` §3).
const SECTOR: u64 = 512;

/// Granularity reported for raw content: large enough for efficient copies.
const RAW_GRANULARITY: u64 = 64 << 10;

pub(crate) struct RawDisk {
    source: SharedSource,
    format: Format,
    file_len: u64,
    virtual_size: u64,
}

impl RawDisk {
    pub(crate) fn new(source: SharedSource, format: Format) -> RawDisk {
        let file_len = source.len();
        let virtual_size = file_len.div_ceil(SECTOR) * SECTOR;
        RawDisk {
            source,
            format,
            file_len,
            virtual_size,
        }
    }
}

impl Disk for RawDisk {
    fn format(&self) -> Format {
        self.format
    }

    fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    fn granularity(&self) -> u64 {
        RAW_GRANULARITY
    }

    fn extent(&self, offset: u64, max_len: u64) -> Result<Extent, DiskError> {
        let length = max_len.min(self.virtual_size.saturating_sub(offset));
        let kind = if offset >= self.file_len {
            ExtentKind::Zero
        } else {
            ExtentKind::Data
        };
        let (kind, length) = match kind {
            // A sparse file's holes are zeros without reading them (qemu asks the same way).
            ExtentKind::Data => match self.source.run_at(offset) {
                Some(Run::Hole(end)) if end > offset => (
                    ExtentKind::Zero,
                    length.min(end.min(self.file_len) - offset),
                ),
                Some(Run::Data(end)) if end > offset => (
                    ExtentKind::Data,
                    length.min(end.min(self.file_len) - offset),
                ),
                _ => (ExtentKind::Data, length.min(self.file_len - offset)),
            },
            ExtentKind::Zero => (kind, length),
        };
        Ok(Extent {
            offset,
            length,
            kind,
        })
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        check_range(self.virtual_size, offset, buf.len())?;
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            if at >= self.file_len {
                buf[done..].fill(0);
                break;
            }
            let n = self
                .source
                .read_at(at, &mut buf[done..])
                .map_err(|source| DiskError::Reading {
                    structure: "raw data",
                    offset: at,
                    source,
                })?;
            if n == 0 {
                // The source shrank under us: the rest of the promised length is missing.
                return Err(DiskError::corrupt(
                    self.format,
                    "raw data",
                    at,
                    "source ended early",
                ));
            }
            done += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn raw_rounds_up_to_a_sector_and_reads_zero_tail() {
        let disk = RawDisk::new(Arc::new(vec![7u8; 3]), Format::Raw);
        assert_eq!(disk.virtual_size(), 512);
        let mut buf = [1u8; 8];
        disk.read_at(0, &mut buf).unwrap();
        assert_eq!(buf, [7, 7, 7, 0, 0, 0, 0, 0]);
        let extent = disk.extent(3, 1000).unwrap();
        assert_eq!((extent.length, extent.kind), (509, ExtentKind::Zero));
        assert!(disk.read_at(510, &mut buf).is_err());
    }

    #[test]
    fn a_sparse_files_holes_are_zero_extents_and_read_as_zeros() {
        use std::os::unix::fs::FileExt;
        const MIB: u64 = 1 << 20;
        let file = tempfile::tempfile().unwrap();
        file.write_all_at(&[0xAB; MIB as usize], 0).unwrap();
        file.write_all_at(&[0xCD; MIB as usize], 3 * MIB).unwrap();
        file.set_len(6 * MIB).unwrap();
        let disk = RawDisk::new(Arc::new(file), Format::Raw);
        let mut extents = Vec::new();
        let mut at = 0;
        while at < disk.virtual_size() {
            let extent = disk.extent(at, disk.virtual_size() - at).unwrap();
            extents.push((extent.offset, extent.length, extent.kind));
            at += extent.length;
        }
        // Every filesystem tests run on (ext4, xfs, btrfs, tmpfs) reports holes.
        assert_eq!(
            extents,
            [
                (0, MIB, ExtentKind::Data),
                (MIB, 2 * MIB, ExtentKind::Zero),
                (3 * MIB, MIB, ExtentKind::Data),
                (4 * MIB, 2 * MIB, ExtentKind::Zero),
            ]
        );
        // A query inside a run ends where the run ends; max_len still bounds it.
        let inside = disk.extent(MIB + 512, 100).unwrap();
        assert_eq!((inside.length, inside.kind), (100, ExtentKind::Zero));
        let mut buf = vec![1u8; 2 * MIB as usize];
        disk.read_at(2 * MIB, &mut buf).unwrap();
        assert!(buf[..MIB as usize].iter().all(|&b| b == 0));
        assert!(buf[MIB as usize..].iter().all(|&b| b == 0xCD));
    }
}
