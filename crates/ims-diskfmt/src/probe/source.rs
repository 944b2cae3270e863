//! Bounded positional reads for the probe: only inside the inspection windows, never huge.

use std::io;

use zerocopy::FromBytes;

use super::error::ProbeError;
use super::window::{PREFIX_WINDOW, SUFFIX_WINDOW};
use crate::ReadAt;

/// Largest single structure the probe reads: a 2 MiB qcow2 cluster 0 (qemu's maximum cluster
/// size) holding the header, its extensions and the backing file name.
pub(crate) const MAX_STRUCTURE_READ: u64 = 2 << 20;

/// The probe's view of an image. Every read must fall inside the first [`PREFIX_WINDOW`] or the
/// last [`SUFFIX_WINDOW`] bytes, so probing a whole file and probing an
/// [`InspectionWindow`](super::InspectionWindow) captured while streaming give the same answer.
pub(crate) struct Source<'a> {
    inner: &'a dyn ReadAt,
    len: u64,
}

impl<'a> Source<'a> {
    pub(crate) fn new(inner: &'a dyn ReadAt) -> Source<'a> {
        Source {
            inner,
            len: inner.len(),
        }
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// End of the readable prefix: everything is readable when the windows cover the image.
    pub(crate) fn readable_prefix_end(&self) -> u64 {
        if self.len <= PREFIX_WINDOW + SUFFIX_WINDOW {
            self.len
        } else {
            PREFIX_WINDOW
        }
    }

    fn in_window(&self, offset: u64, end: u64) -> bool {
        end <= self.readable_prefix_end() || offset >= self.len.saturating_sub(SUFFIX_WINDOW)
    }

    /// Reads exactly `length` bytes at `offset`.
    pub(crate) fn read(
        &self,
        structure: &'static str,
        offset: u64,
        length: u64,
    ) -> Result<Vec<u8>, ProbeError> {
        let end = offset.checked_add(length).filter(|&end| end <= self.len);
        let Some(end) = end else {
            return Err(ProbeError::Truncated {
                structure,
                offset,
                length,
                image_len: self.len,
            });
        };
        if !self.in_window(offset, end) {
            return Err(ProbeError::OutsideWindow {
                structure,
                offset,
                length,
                prefix: PREFIX_WINDOW,
                suffix: SUFFIX_WINDOW,
            });
        }
        if length > MAX_STRUCTURE_READ {
            return Err(ProbeError::Reading {
                structure,
                offset,
                source: io::Error::other(format!(
                    "{length} bytes exceed the probe's read limit of {MAX_STRUCTURE_READ}"
                )),
            });
        }
        // `length` ≤ MAX_STRUCTURE_READ, so this cannot truncate.
        let mut buf = vec![0u8; length as usize];
        let mut filled = 0usize;
        while filled < buf.len() {
            let at = offset + filled as u64;
            match self.inner.read_at(at, &mut buf[filled..]) {
                Ok(0) => {
                    return Err(ProbeError::Reading {
                        structure,
                        offset,
                        source: io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("image ended at offset {at} before its reported length"),
                        ),
                    });
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(ProbeError::Reading {
                        structure,
                        offset,
                        source,
                    });
                }
            }
        }
        Ok(buf)
    }

    /// Like [`Source::read`], but `None` when the range is not inside the image: used to sniff
    /// magic numbers in images that may be too short to carry them.
    pub(crate) fn read_if_present(
        &self,
        structure: &'static str,
        offset: u64,
        length: u64,
    ) -> Result<Option<Vec<u8>>, ProbeError> {
        match offset.checked_add(length) {
            Some(end) if end <= self.len => self.read(structure, offset, length).map(Some),
            _ => Ok(None),
        }
    }

    /// Reads a fixed-layout structure.
    pub(crate) fn read_struct<T: FromBytes>(
        &self,
        structure: &'static str,
        offset: u64,
    ) -> Result<T, ProbeError> {
        let bytes = self.read(structure, offset, size_of::<T>() as u64)?;
        parse_prefix(structure, offset, &bytes)
    }
}

/// Parses a fixed-layout structure from the start of `bytes`.
pub(crate) fn parse_prefix<T: FromBytes>(
    structure: &'static str,
    offset: u64,
    bytes: &[u8],
) -> Result<T, ProbeError> {
    T::read_from_prefix(bytes)
        .map(|(value, _)| value)
        .map_err(|_| ProbeError::Truncated {
            structure,
            offset,
            length: size_of::<T>() as u64,
            image_len: bytes.len() as u64,
        })
}

/// `bytes[start..start + len]`, or `None` when out of range.
pub(crate) fn slice(bytes: &[u8], start: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(start).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    bytes.get(start..end)
}

/// Text of a name field: stops at the first NUL, invalid UTF-8 replaced.
pub(crate) fn lossy_name(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Text of a UTF-16 name field (`big_endian` selects the byte order): stops at the first NUL.
pub(crate) fn utf16_name(bytes: &[u8], big_endian: bool) -> String {
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| {
            if big_endian {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from_le_bytes([c[0], c[1]])
            }
        })
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_past_the_end_are_truncated_errors() {
        let data = vec![0u8; 100];
        let src = Source::new(&data);
        assert!(src.read("header", 90, 20).unwrap_err().is_truncated());
        assert!(src.read("header", u64::MAX, 2).unwrap_err().is_truncated());
        assert_eq!(src.read_if_present("magic", 99, 2).unwrap(), None);
        assert_eq!(src.read("header", 98, 2).unwrap(), vec![0, 0]);
    }

    #[test]
    fn reads_between_the_windows_are_refused() {
        struct Huge;
        impl ReadAt for Huge {
            fn read_at(&self, _: u64, buf: &mut [u8]) -> io::Result<usize> {
                buf.fill(7);
                Ok(buf.len())
            }
            fn len(&self) -> u64 {
                1 << 40
            }
        }
        let src = Source::new(&Huge);
        assert!(
            src.read("table", PREFIX_WINDOW, 8)
                .unwrap_err()
                .is_outside_window()
        );
        assert!(
            src.read("table", PREFIX_WINDOW - 4, 8)
                .unwrap_err()
                .is_outside_window()
        );
        assert_eq!(src.read("footer", (1 << 40) - 512, 512).unwrap().len(), 512);
        assert_eq!(src.read("header", 0, 512).unwrap().len(), 512);
    }

    #[test]
    fn utf16_names_stop_at_nul() {
        assert_eq!(utf16_name(&[0, b'a', 0, b'b', 0, 0, 0, b'c'], true), "ab");
        assert_eq!(utf16_name(&[b'a', 0, b'/', 0], false), "a/");
    }
}
