//! A [`ReadAt`] over the head and tail of a stream, captured while the stream goes by.

use std::io;

use crate::ReadAt;

/// Bytes kept from the start of a stream. Everything the probe reads near the start fits:
/// * qcow2 cluster 0 (header, extensions, backing name): ≤ 2 MiB, qemu's largest cluster;
/// * the VMDK embedded descriptor, capped at 1 MiB like Glance and qemu;
/// * VHDX headers (64/128 KiB), region tables (192/256 KiB) and the metadata region where
///   Hyper-V (2 MiB) and qemu (after a BAT at 2 MiB: 3 MiB up to ~4 TiB disks) put it, 1 MiB long;
/// * VDI header and block map start, VHD dynamic header + BAT start, ISO 9660 descriptors at
///   32 KiB, ZVHD/ZVHD2 4 KiB headers.
///
/// 4 MiB per upload in flight bounds the memory the server spends on inspection.
pub const PREFIX_WINDOW: u64 = 4 << 20;

/// Bytes kept from the end of a stream: the largest trailer read is ZVHD2's 4 KiB final footer;
/// the VMDK streamOptimized footer (last 1536 bytes) and the VHD footer (last 512) fit inside.
pub const SUFFIX_WINDOW: u64 = 4 << 10;

/// The first [`PREFIX_WINDOW`] and last [`SUFFIX_WINDOW`] bytes of a stream of known length.
/// Reads elsewhere fail with an [`io::ErrorKind::InvalidInput`] error naming the windows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectionWindow {
    prefix: Vec<u8>,
    suffix: Vec<u8>,
    total_len: u64,
}

/// Builds an [`InspectionWindow`] from a stream pushed chunk by chunk, in bounded memory.
#[derive(Debug, Default)]
pub struct InspectionWindowBuilder {
    prefix: Vec<u8>,
    /// The most recent bytes after the prefix; trimmed to [`SUFFIX_WINDOW`] whenever it reaches
    /// twice that, so trimming is amortised.
    tail: Vec<u8>,
    total_len: u64,
}

impl InspectionWindow {
    /// Starts capturing a stream.
    pub fn builder() -> InspectionWindowBuilder {
        InspectionWindowBuilder::default()
    }

    /// Length of the whole stream.
    pub fn total_len(&self) -> u64 {
        self.total_len
    }

    fn suffix_start(&self) -> u64 {
        self.total_len - self.suffix.len() as u64
    }

    /// The byte at `offset`, if captured.
    fn captured(&self, offset: u64) -> Option<&[u8]> {
        if let Some(rest) = usize::try_from(offset)
            .ok()
            .and_then(|o| self.prefix.get(o..))
            .filter(|rest| !rest.is_empty())
        {
            return Some(rest);
        }
        let start = self.suffix_start();
        let index = usize::try_from(offset.checked_sub(start)?).ok()?;
        self.suffix.get(index..).filter(|rest| !rest.is_empty())
    }
}

impl ReadAt for InspectionWindow {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if offset >= self.total_len || buf.is_empty() {
            return Ok(0);
        }
        let mut filled = 0usize;
        while filled < buf.len() {
            let at = offset + filled as u64;
            if at >= self.total_len {
                break;
            }
            let Some(available) = self.captured(at) else {
                if filled > 0 {
                    break;
                }
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "offset {at} of a {}-byte stream was not captured (only the first {} and last {} bytes are kept)",
                        self.total_len,
                        self.prefix.len(),
                        self.suffix.len()
                    ),
                ));
            };
            let n = available.len().min(buf.len() - filled);
            buf[filled..filled + n].copy_from_slice(&available[..n]);
            filled += n;
        }
        Ok(filled)
    }

    fn len(&self) -> u64 {
        self.total_len
    }
}

impl InspectionWindowBuilder {
    /// Feeds the next chunk of the stream.
    pub fn push(&mut self, mut chunk: &[u8]) {
        self.total_len = self.total_len.saturating_add(chunk.len() as u64);
        let prefix_room = (PREFIX_WINDOW as usize).saturating_sub(self.prefix.len());
        let to_prefix = prefix_room.min(chunk.len());
        self.prefix.extend_from_slice(&chunk[..to_prefix]);
        chunk = &chunk[to_prefix..];
        if chunk.is_empty() {
            return;
        }
        let keep = SUFFIX_WINDOW as usize;
        if chunk.len() >= keep {
            self.tail.clear();
            self.tail.extend_from_slice(&chunk[chunk.len() - keep..]);
            return;
        }
        self.tail.extend_from_slice(chunk);
        if self.tail.len() >= 2 * keep {
            self.tail.drain(..self.tail.len() - keep);
        }
    }

    /// Bytes pushed so far.
    pub fn total_len(&self) -> u64 {
        self.total_len
    }

    /// Ends the stream.
    pub fn finish(mut self) -> InspectionWindow {
        let keep = SUFFIX_WINDOW as usize;
        if self.tail.len() > keep {
            self.tail.drain(..self.tail.len() - keep);
        }
        InspectionWindow {
            prefix: self.prefix,
            suffix: self.tail,
            total_len: self.total_len,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn capture(data: &[u8], chunk: usize) -> InspectionWindow {
        let mut builder = InspectionWindow::builder();
        for c in data.chunks(chunk) {
            builder.push(c);
        }
        builder.finish()
    }

    #[test]
    fn small_streams_are_captured_whole() {
        let data = stream(PREFIX_WINDOW as usize + 100);
        let window = capture(&data, 4097);
        let mut buf = vec![0u8; data.len()];
        assert_eq!(window.read_at(0, &mut buf).unwrap(), data.len());
        assert_eq!(buf, data);
    }

    #[test]
    fn large_streams_keep_head_and_tail_only() {
        let data = stream(PREFIX_WINDOW as usize * 2 + 12345);
        for chunk in [1000, 65536, SUFFIX_WINDOW as usize, data.len()] {
            let window = capture(&data, chunk);
            assert_eq!(window.len(), data.len() as u64);
            let mut head = [0u8; 16];
            window.read_at(PREFIX_WINDOW - 16, &mut head).unwrap();
            assert_eq!(
                head,
                data[PREFIX_WINDOW as usize - 16..PREFIX_WINDOW as usize]
            );
            let mut tail = vec![0u8; SUFFIX_WINDOW as usize];
            let at = data.len() - tail.len();
            window.read_at(at as u64, &mut tail).unwrap();
            assert_eq!(tail, &data[at..]);
            let err = window.read_at(PREFIX_WINDOW, &mut head).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
    }

    #[test]
    fn reads_past_the_end_return_nothing() {
        let window = capture(&stream(10), 3);
        let mut buf = [0u8; 4];
        assert_eq!(window.read_at(8, &mut buf).unwrap(), 2);
        assert_eq!(window.read_at(10, &mut buf).unwrap(), 0);
        assert_eq!(window.read_at(u64::MAX, &mut buf).unwrap(), 0);
    }
}
