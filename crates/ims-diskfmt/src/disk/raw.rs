//! raw (and ISO / GPT disks, which are raw content): the bytes are the disk, rounded up to
//! 512 bytes as qemu presents them, the tail reading as zeros.

use super::{Disk, DiskError, Extent, ExtentKind, SharedSource, check_range};
use crate::Format;

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
        let length = match kind {
            ExtentKind::Data => length.min(self.file_len - offset),
            ExtentKind::Zero => length,
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
}
