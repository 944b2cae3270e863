//! `Volume`: a bounded byte range of a disk (whole disk, partition, logical volume) read
//! positionally; every read is checked against the range.

use std::io;
use std::sync::Arc;

use ims_diskfmt::ReadAt;

use crate::error::{GuestError, Result};

/// A window `[start, start + len)` over a shared disk, or a concatenation of such windows
/// (an LVM logical volume with several linear segments).
#[derive(Clone)]
pub struct Volume {
    disk: Arc<dyn ReadAt + Send + Sync>,
    /// (offset inside this volume, offset on the disk, length) per extent, sorted, contiguous.
    extents: Arc<[Extent]>,
    len: u64,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Extent {
    pub logical: u64,
    pub physical: u64,
    pub len: u64,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume").field("len", &self.len).finish()
    }
}

impl Volume {
    /// The whole disk.
    pub fn whole(disk: Arc<dyn ReadAt + Send + Sync>) -> Volume {
        let len = disk.len();
        Volume {
            disk,
            extents: Arc::from(vec![Extent {
                logical: 0,
                physical: 0,
                len,
            }]),
            len,
        }
    }

    /// A sub-range of this volume; fails when it does not fit.
    pub fn slice(&self, start: u64, len: u64, what: &'static str) -> Result<Volume> {
        let end = start.checked_add(len).ok_or(GuestError::OutOfBounds {
            what,
            offset: start,
            len: self.len,
        })?;
        if end > self.len {
            return Err(GuestError::OutOfBounds {
                what,
                offset: start,
                len: self.len,
            });
        }
        let mut extents = Vec::new();
        for e in self.extents.iter() {
            let e_end = e.logical + e.len;
            let lo = start.max(e.logical);
            let hi = end.min(e_end);
            if lo < hi {
                extents.push(Extent {
                    logical: lo - start,
                    physical: e.physical + (lo - e.logical),
                    len: hi - lo,
                });
            }
        }
        Ok(Volume {
            disk: self.disk.clone(),
            extents: Arc::from(extents),
            len,
        })
    }

    /// A volume made of `(offset in this volume, length)` pieces laid end to end.
    pub(crate) fn concat(&self, pieces: &[(u64, u64)], what: &'static str) -> Result<Volume> {
        let mut extents = Vec::new();
        let mut logical = 0u64;
        for &(start, len) in pieces {
            let part = self.slice(start, len, what)?;
            for e in part.extents.iter() {
                extents.push(Extent {
                    logical: logical
                        .checked_add(e.logical)
                        .ok_or(GuestError::LimitExceeded {
                            what,
                            limit: u64::MAX,
                        })?,
                    physical: e.physical,
                    len: e.len,
                });
            }
            logical = logical.checked_add(len).ok_or(GuestError::LimitExceeded {
                what,
                limit: u64::MAX,
            })?;
        }
        Ok(Volume {
            disk: self.disk.clone(),
            extents: Arc::from(extents),
            len: logical,
        })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Fills `buf` from `offset`, or fails naming `what` when the range is outside the volume
    /// or the disk is short.
    pub fn read_exact_at(&self, offset: u64, buf: &mut [u8], what: &'static str) -> Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.len)
            .ok_or(GuestError::OutOfBounds {
                what,
                offset,
                len: self.len,
            })?;
        let mut pos = offset;
        let mut done = 0usize;
        while pos < end {
            let e = self
                .extents
                .iter()
                .find(|e| e.logical <= pos && pos < e.logical + e.len)
                .ok_or(GuestError::OutOfBounds {
                    what,
                    offset: pos,
                    len: self.len,
                })?;
            let in_extent = (e.logical + e.len - pos).min(end - pos) as usize;
            let physical = e.physical + (pos - e.logical);
            read_fully(
                &*self.disk,
                physical,
                &mut buf[done..done + in_extent],
                what,
            )?;
            done += in_extent;
            pos += in_extent as u64;
        }
        Ok(())
    }

    /// Reads `len` bytes at `offset` into a new buffer.
    pub fn read_vec(&self, offset: u64, len: usize, what: &'static str) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.read_exact_at(offset, &mut buf, what)?;
        Ok(buf)
    }
}

fn read_fully(disk: &dyn ReadAt, offset: u64, buf: &mut [u8], what: &'static str) -> Result<()> {
    let mut done = 0usize;
    while done < buf.len() {
        let at = offset + done as u64;
        match disk.read_at(at, &mut buf[done..]) {
            Ok(0) => {
                return Err(GuestError::Reading {
                    what,
                    offset: at,
                    source: io::Error::from(io::ErrorKind::UnexpectedEof),
                });
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(GuestError::Reading {
                    what,
                    offset: at,
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Little-endian field readers over a byte slice; out-of-range reads yield 0 so parsers
/// validate lengths once up front instead of at every field.
pub(crate) mod le {
    pub fn u16(b: &[u8], at: usize) -> u16 {
        b.get(at..at + 2)
            .map(|s| u16::from_le_bytes([s[0], s[1]]))
            .unwrap_or(0)
    }
    pub fn u32(b: &[u8], at: usize) -> u32 {
        b.get(at..at + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
            .unwrap_or(0)
    }
    pub fn u64(b: &[u8], at: usize) -> u64 {
        b.get(at..at + 8)
            .map(|s| u64::from_le_bytes(s.try_into().unwrap_or([0; 8])))
            .unwrap_or(0)
    }
}

/// Big-endian field readers (XFS, ISO 9660 both-endian fields), same convention as [`le`].
pub(crate) mod be {
    pub fn u16(b: &[u8], at: usize) -> u16 {
        b.get(at..at + 2)
            .map(|s| u16::from_be_bytes([s[0], s[1]]))
            .unwrap_or(0)
    }
    pub fn u32(b: &[u8], at: usize) -> u32 {
        b.get(at..at + 4)
            .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
            .unwrap_or(0)
    }
    pub fn u64(b: &[u8], at: usize) -> u64 {
        b.get(at..at + 8)
            .map(|s| u64::from_be_bytes(s.try_into().unwrap_or([0; 8])))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_and_concats_map_to_the_right_bytes() {
        let data: Vec<u8> = (0..=255u8).collect();
        let v = Volume::whole(Arc::new(data));
        let s = v.slice(10, 20, "t").unwrap();
        assert_eq!(s.read_vec(0, 3, "t").unwrap(), vec![10, 11, 12]);
        assert!(s.read_vec(18, 3, "t").is_err());
        let c = v.concat(&[(100, 2), (50, 2)], "t").unwrap();
        assert_eq!(c.read_vec(0, 4, "t").unwrap(), vec![100, 101, 50, 51]);
        assert!(v.slice(u64::MAX, 2, "t").is_err());
    }
}
