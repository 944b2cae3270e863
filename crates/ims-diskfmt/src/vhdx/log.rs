//! The VHDX metadata log (MS-VHDX 2.3): finding the active sequence of entries and turning it
//! into an in-memory overlay of the file, so a dirty image reads as it would after replay
//! without writing anything.

use zerocopy::FromBytes;

use super::header::{
    LOG_DATA_DESCRIPTOR, LOG_DATA_SIGNATURE, LOG_ENTRY_SIGNATURE, LOG_SECTOR, LOG_ZERO_DESCRIPTOR,
    LogDescriptorRaw, LogEntryHeaderRaw, crc32c_without_checksum,
};

/// Logs are read into memory whole: qemu and Hyper-V write 1 MiB logs; 16 MiB keeps the
/// worst-case scan (every 4 KiB position checked) bounded.
pub(crate) const MAX_LOG_BYTES: u64 = 16 << 20;
const ENTRY_HEADER_LEN: u64 = 64;
const DESCRIPTOR_LEN: u64 = 32;

/// One change a log entry makes to the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Patch {
    /// A whole 4 KiB sector.
    Data { offset: u64, bytes: Box<[u8]> },
    /// `length` bytes of zeros.
    Zero { offset: u64, length: u64 },
}

impl Patch {
    fn range(&self) -> (u64, u64) {
        match self {
            Patch::Data { offset, bytes } => (*offset, bytes.len() as u64),
            Patch::Zero { offset, length } => (*offset, *length),
        }
    }

    /// Applies this patch to `buf`, which holds the file bytes at `at`.
    pub(crate) fn apply(&self, at: u64, buf: &mut [u8]) {
        let (offset, length) = self.range();
        let start = offset.max(at);
        let end = offset
            .saturating_add(length)
            .min(at.saturating_add(buf.len() as u64));
        if start >= end {
            return;
        }
        let dst = &mut buf[(start - at) as usize..(end - at) as usize];
        match self {
            Patch::Data { bytes, .. } => {
                let from = (start - offset) as usize;
                dst.copy_from_slice(&bytes[from..from + dst.len()]);
            }
            Patch::Zero { .. } => dst.fill(0),
        }
    }
}

/// The replay result: patches in order and the file length the log requires.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    pub patches: Vec<Patch>,
    pub last_file_offset: u64,
}

struct Entry {
    position: u64,
    length: u64,
    tail: u64,
    sequence: u64,
    last_file_offset: u64,
    patches: Vec<Patch>,
}

/// `len` bytes of the circular log starting at `position`.
fn circular(log: &[u8], position: u64, len: u64) -> Vec<u8> {
    let n = log.len();
    (0..len as usize)
        .map(|i| log[(position as usize + i) % n])
        .collect()
}

/// Parses and fully validates the entry at `position`, or `None`.
fn entry_at(log: &[u8], position: u64, guid: &[u8; 16]) -> Option<Entry> {
    let n = log.len() as u64;
    let head = circular(log, position, ENTRY_HEADER_LEN);
    let header = LogEntryHeaderRaw::read_from_bytes(&head).ok()?;
    let length = u64::from(header.entry_length.get());
    let tail = u64::from(header.tail.get());
    if header.signature != LOG_ENTRY_SIGNATURE
        || &header.log_guid != guid
        || length == 0
        || length % LOG_SECTOR != 0
        || length > n
        || tail % LOG_SECTOR != 0
        || tail >= n
    {
        return None;
    }
    let sequence = header.sequence_number.get();
    let count = u64::from(header.descriptor_count.get());
    let descriptor_area =
        (ENTRY_HEADER_LEN + count.checked_mul(DESCRIPTOR_LEN)?).next_multiple_of(LOG_SECTOR);
    if descriptor_area > length {
        return None;
    }
    let bytes = circular(log, position, length);
    if crc32c_without_checksum(&bytes) != header.checksum.get() {
        return None;
    }
    let mut patches = Vec::with_capacity(count as usize);
    let mut data_sector = descriptor_area;
    for i in 0..count {
        let at = (ENTRY_HEADER_LEN + i * DESCRIPTOR_LEN) as usize;
        let d = LogDescriptorRaw::read_from_bytes(&bytes[at..at + DESCRIPTOR_LEN as usize]).ok()?;
        let offset = d.file_offset.get();
        if d.sequence_number.get() != sequence || offset % LOG_SECTOR != 0 {
            return None;
        }
        match d.signature {
            LOG_ZERO_DESCRIPTOR => {
                let length = u64::from_le_bytes(d.leading_or_length);
                if length % LOG_SECTOR != 0 {
                    return None;
                }
                patches.push(Patch::Zero { offset, length });
            }
            LOG_DATA_DESCRIPTOR => {
                let start = data_sector as usize;
                let sector = bytes.get(start..start + LOG_SECTOR as usize)?;
                let high = u32::from_le_bytes(sector[4..8].try_into().ok()?);
                let low = u32::from_le_bytes(sector[4092..4096].try_into().ok()?);
                if sector[..4] != LOG_DATA_SIGNATURE
                    || (u64::from(high) << 32 | u64::from(low)) != sequence
                {
                    return None;
                }
                let mut out = vec![0u8; LOG_SECTOR as usize];
                out[..8].copy_from_slice(&d.leading_or_length);
                out[8..4092].copy_from_slice(&sector[8..4092]);
                out[4092..].copy_from_slice(&d.trailing_bytes);
                patches.push(Patch::Data {
                    offset,
                    bytes: out.into_boxed_slice(),
                });
                data_sector += LOG_SECTOR;
            }
            _ => return None,
        }
    }
    if data_sector != length {
        return None;
    }
    Some(Entry {
        position,
        length,
        tail,
        sequence,
        last_file_offset: header.last_file_offset.get(),
        patches,
    })
}

/// Finds the active sequence (the valid sequence with the highest sequence number whose head
/// entry's tail lies inside it) and returns what replaying it does; `None` when the log holds
/// no valid sequence for `guid` (nothing to replay).
pub(crate) fn replay(log: &[u8], guid: &[u8; 16]) -> Option<Replay> {
    let n = log.len() as u64;
    if n == 0 || n % LOG_SECTOR != 0 {
        return None;
    }
    let entries: Vec<Entry> = (0..n / LOG_SECTOR)
        .filter_map(|i| entry_at(log, i * LOG_SECTOR, guid))
        .collect();
    let find = |position: u64, sequence: u64| {
        entries
            .iter()
            .position(|e| e.position == position && e.sequence == sequence)
    };
    let mut best: Option<Vec<usize>> = None;
    for start in 0..entries.len() {
        let mut chain = vec![start];
        let mut current = start;
        while chain.len() < entries.len() {
            let e = &entries[current];
            match find((e.position + e.length) % n, e.sequence.wrapping_add(1)) {
                Some(next) if !chain.contains(&next) => {
                    chain.push(next);
                    current = next;
                }
                _ => break,
            }
        }
        // The head's tail names the oldest entry still needed; it must be in the chain.
        let head = &entries[current];
        let Some(tail_at) = chain.iter().position(|&i| entries[i].position == head.tail) else {
            continue;
        };
        let chain = chain[tail_at..].to_vec();
        let better = best
            .as_ref()
            .is_none_or(|b| entries[*b.last().unwrap_or(&0)].sequence < head.sequence);
        if better {
            best = Some(chain);
        }
    }
    let chain = best?;
    let mut replay = Replay::default();
    for i in chain {
        let entry = &entries[i];
        replay.last_file_offset = replay.last_file_offset.max(entry.last_file_offset);
        replay.patches.extend(entry.patches.iter().cloned());
    }
    Some(replay)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One log entry at position 0 writing `sector` at `file_offset` and zeroing 4 KiB at
    /// `zero_offset`.
    pub(crate) fn log_with_entry(
        guid: [u8; 16],
        sequence: u64,
        file_offset: u64,
        sector: &[u8; 4096],
        zero_offset: u64,
        log_len: usize,
    ) -> Vec<u8> {
        let mut log = vec![0u8; log_len];
        let mut e = vec![0u8; 8192];
        e[0..4].copy_from_slice(b"loge");
        e[8..12].copy_from_slice(&8192u32.to_le_bytes()); // entry length
        e[12..16].copy_from_slice(&0u32.to_le_bytes()); // tail: itself
        e[16..24].copy_from_slice(&sequence.to_le_bytes());
        e[24..28].copy_from_slice(&2u32.to_le_bytes()); // descriptors
        e[32..48].copy_from_slice(&guid);
        e[56..64].copy_from_slice(&(16u64 << 20).to_le_bytes()); // last file offset
        // data descriptor
        e[64..68].copy_from_slice(b"desc");
        e[68..72].copy_from_slice(&sector[4092..]);
        e[72..80].copy_from_slice(&sector[..8]);
        e[80..88].copy_from_slice(&file_offset.to_le_bytes());
        e[88..96].copy_from_slice(&sequence.to_le_bytes());
        // zero descriptor
        e[96..100].copy_from_slice(b"zero");
        e[104..112].copy_from_slice(&4096u64.to_le_bytes());
        e[112..120].copy_from_slice(&zero_offset.to_le_bytes());
        e[120..128].copy_from_slice(&sequence.to_le_bytes());
        // data sector
        e[4096..4100].copy_from_slice(b"data");
        e[4100..4104].copy_from_slice(&((sequence >> 32) as u32).to_le_bytes());
        e[4104..8188].copy_from_slice(&sector[8..4092]);
        e[8188..8192].copy_from_slice(&(sequence as u32).to_le_bytes());
        let crc = crc32c_without_checksum(&e);
        e[4..8].copy_from_slice(&crc.to_le_bytes());
        log[..8192].copy_from_slice(&e);
        log
    }

    #[test]
    fn a_valid_entry_replays_its_descriptors_in_order() {
        let guid = [7u8; 16];
        let sector: [u8; 4096] = std::array::from_fn(|i| i as u8);
        let log = log_with_entry(guid, 5, 2 << 20, &sector, 3 << 20, 1 << 20);
        let replay = replay(&log, &guid).unwrap();
        assert_eq!(replay.last_file_offset, 16 << 20);
        assert_eq!(replay.patches.len(), 2);
        let mut buf = vec![0xAAu8; 8192];
        replay.patches[0].apply((2 << 20) - 4096, &mut buf);
        assert_eq!(&buf[..4096], &[0xAA; 4096][..]);
        assert_eq!(&buf[4096..], &sector[..]);
        // Wrong GUID or a damaged byte: nothing to replay.
        assert!(super::replay(&log, &[8u8; 16]).is_none());
        let mut bad = log.clone();
        bad[5000] ^= 1;
        assert!(super::replay(&bad, &guid).is_none());
    }
}
