//! The qcow version 1 on-disk header (48 bytes, big-endian) and its limits, shared by the
//! probe, the reader and the writer.

use zerocopy::byteorder::{BigEndian, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// qemu's accepted cluster_bits / l2_bits ranges for qcow v1.
pub(crate) const CLUSTER_BITS: std::ops::RangeInclusive<u8> = 9..=16;
pub(crate) const L2_BITS: std::ops::RangeInclusive<u8> = 6..=13;
/// qemu refuses longer backing file names.
pub(crate) const MAX_BACKING_NAME: u32 = 1023;
/// Same L1 bound as qcow2: tables above 32 MiB are refused.
pub(crate) const MAX_L1_BYTES: u64 = 32 << 20;
/// L2 bit 63: a compressed cluster.
pub(crate) const L2_COMPRESSED: u64 = 1 << 63;
/// What qemu-img writes: 4 KiB clusters, 512-entry L2 tables.
pub(crate) const DEFAULT_CLUSTER_BITS: u8 = 12;
pub(crate) const DEFAULT_L2_BITS: u8 = 9;

/// The 48-byte header (big-endian).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Default)]
#[repr(C)]
pub(crate) struct HeaderRaw {
    pub magic: [u8; 4],
    pub version: U32<BigEndian>,
    pub backing_file_offset: U64<BigEndian>,
    pub backing_file_size: U32<BigEndian>,
    pub mtime: U32<BigEndian>,
    pub size: U64<BigEndian>,
    pub cluster_bits: u8,
    pub l2_bits: u8,
    pub padding: U16<BigEndian>,
    pub crypt_method: U32<BigEndian>,
    pub l1_table_offset: U64<BigEndian>,
}

/// A compressed cluster's host byte range, from its L2 entry.
pub(crate) fn compressed_range(entry: u64, cluster_bits: u32) -> (u64, u64) {
    let shift = 63 - cluster_bits;
    let offset = entry & ((1u64 << shift) - 1);
    let length = (entry >> shift) & ((1u64 << cluster_bits) - 1);
    (offset, length)
}

/// The L2 entry of a compressed cluster of `length` (< cluster size) bytes at `offset`.
pub(crate) fn compressed_entry(offset: u64, length: u64, cluster_bits: u32) -> Option<u64> {
    let shift = 63 - cluster_bits;
    (offset >> shift == 0 && length >> cluster_bits == 0)
        .then_some(L2_COMPRESSED | (length << shift) | offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_48_bytes_and_compressed_entries_round_trip() {
        assert_eq!(size_of::<HeaderRaw>(), 48);
        // 4 KiB clusters: offset in bits 0..50, byte length in bits 51..62.
        let entry = compressed_entry(0x1234, 1000, 12).unwrap();
        assert_eq!(entry, (1 << 63) | (1000 << 51) | 0x1234);
        assert_eq!(compressed_range(entry, 12), (0x1234, 1000));
        assert!(compressed_entry(0x1234, 4096, 12).is_none());
    }
}
