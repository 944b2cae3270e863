//! The qcow2 on-disk header (big-endian), its feature bits and entry masks: the raw layout
//! shared by the probe, the reader and the writer.

use zerocopy::byteorder::{BigEndian, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

pub(crate) const MAGIC: [u8; 4] = *b"QFI\xfb";
/// qemu's cluster size range: 512 B ..= 2 MiB.
pub(crate) const MIN_CLUSTER_BITS: u32 = 9;
pub(crate) const MAX_CLUSTER_BITS: u32 = 21;
/// Extended L2 needs 32 subclusters of at least 512 bytes.
pub(crate) const MIN_CLUSTER_BITS_EXTENDED_L2: u32 = 14;
/// qemu refuses longer backing file names ("Backing file name too long").
pub(crate) const MAX_BACKING_NAME: u32 = 1023;
/// qemu: "Active L1 table too large" above 32 MiB.
pub(crate) const MAX_L1_BYTES: u64 = 32 << 20;
/// qemu limits the refcount table to 8 MiB.
pub(crate) const MAX_REFCOUNT_TABLE_BYTES: u64 = 8 << 20;
/// qemu's QCOW_MAX_SNAPSHOTS.
pub(crate) const MAX_SNAPSHOTS: u32 = 65536;
/// v2 header length; v3 headers are at least 104 bytes (qemu writes 112).
pub(crate) const V2_HEADER_LEN: u32 = 72;
pub(crate) const V3_MIN_HEADER_LEN: u32 = 104;
pub(crate) const V3_HEADER_LEN: u32 = 112;
/// refcount_order of v2 images (16-bit refcounts); v3 allows 0..=6.
pub(crate) const V2_REFCOUNT_ORDER: u32 = 4;
pub(crate) const MAX_REFCOUNT_ORDER: u32 = 6;

pub(crate) const INCOMPAT_DIRTY: u64 = 1 << 0;
pub(crate) const INCOMPAT_CORRUPT: u64 = 1 << 1;
pub(crate) const INCOMPAT_DATA_FILE: u64 = 1 << 2;
pub(crate) const INCOMPAT_COMPRESSION: u64 = 1 << 3;
pub(crate) const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;
pub(crate) const INCOMPAT_KNOWN: u64 = (1 << 5) - 1;
pub(crate) const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;

/// L1 and standard L2 entries: bits 9..55 hold the offset.
pub(crate) const TABLE_OFFSET_MASK: u64 = 0x00FF_FFFF_FFFF_FE00;
/// L1/L2 bit 63: the cluster's refcount is exactly 1.
pub(crate) const ENTRY_COPIED: u64 = 1 << 63;
/// L2 bit 62: a compressed cluster descriptor.
pub(crate) const L2_COMPRESSED: u64 = 1 << 62;
/// Standard L2 bit 0 (v3, not extended L2): the cluster reads as zeros.
pub(crate) const L2_ZERO: u64 = 1;
/// Extended L2: 32 subclusters per cluster.
pub(crate) const SUBCLUSTERS: u32 = 32;

pub(crate) const EXT_END: u32 = 0;
pub(crate) const EXT_BITMAPS: u32 = 0x2385_2875;
pub(crate) const EXT_DATA_FILE: u32 = 0x4441_5441;

/// The on-disk header (big-endian), v3 layout; v2 headers stop at byte 72 and the fields at or
/// beyond `header_length` are absent (zero).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Default)]
#[repr(C)]
pub(crate) struct HeaderRaw {
    pub magic: [u8; 4],
    pub version: U32<BigEndian>,
    pub backing_file_offset: U64<BigEndian>,
    pub backing_file_size: U32<BigEndian>,
    pub cluster_bits: U32<BigEndian>,
    pub size: U64<BigEndian>,
    pub crypt_method: U32<BigEndian>,
    pub l1_size: U32<BigEndian>,
    pub l1_table_offset: U64<BigEndian>,
    pub refcount_table_offset: U64<BigEndian>,
    pub refcount_table_clusters: U32<BigEndian>,
    pub nb_snapshots: U32<BigEndian>,
    pub snapshots_offset: U64<BigEndian>,
    pub incompatible_features: U64<BigEndian>,
    pub compatible_features: U64<BigEndian>,
    pub autoclear_features: U64<BigEndian>,
    pub refcount_order: U32<BigEndian>,
    pub header_length: U32<BigEndian>,
    pub compression_type: u8,
    pub padding: [u8; 7],
}

impl HeaderRaw {
    /// Decodes the first bytes of an image as a header of `version`, treating every field at
    /// or beyond the header's length as zero. `None` when `bytes` is shorter than the fixed
    /// part of that version's header.
    pub(crate) fn decode(bytes: &[u8]) -> Option<HeaderRaw> {
        let mut padded = [0u8; size_of::<HeaderRaw>()];
        let n = bytes.len().min(padded.len());
        padded[..n].copy_from_slice(&bytes[..n]);
        let mut raw = HeaderRaw::read_from_bytes(&padded).ok()?;
        let version = raw.version.get();
        let fixed = if version == 3 {
            V3_MIN_HEADER_LEN
        } else {
            V2_HEADER_LEN
        };
        if n < fixed as usize {
            return None;
        }
        if version == 3 {
            if raw.header_length.get() <= 104 {
                raw.compression_type = 0;
            }
        } else {
            padded[V2_HEADER_LEN as usize..].fill(0);
            raw = HeaderRaw::read_from_bytes(&padded).ok()?;
        }
        Some(raw)
    }
}

/// The fields of one compressed-cluster descriptor (`formats.md` §4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CompressedDescriptor {
    /// Host byte offset of the stream (not aligned).
    pub offset: u64,
    /// Bytes from `offset` to the end of the last sector the stream may use.
    pub length: u64,
}

impl CompressedDescriptor {
    /// Decodes an L2 entry with bit 62 set for an image with `cluster_bits`.
    pub(crate) fn decode(entry: u64, cluster_bits: u32) -> CompressedDescriptor {
        let offset_bits = 62 - (cluster_bits - 8);
        let offset = entry & ((1u64 << offset_bits) - 1);
        let extra_sectors = (entry >> offset_bits) & ((1u64 << (cluster_bits - 8)) - 1);
        let length = (extra_sectors + 1) * 512 - (offset & 511);
        CompressedDescriptor { offset, length }
    }

    /// The L2 entry for `length` bytes at `offset`; `None` when the offset does not fit the
    /// descriptor's offset field.
    pub(crate) fn encode(offset: u64, length: u64, cluster_bits: u32) -> Option<u64> {
        let offset_bits = 62 - (cluster_bits - 8);
        if offset >> offset_bits != 0 || length == 0 {
            return None;
        }
        let extra_sectors = ((offset + length - 1) >> 9) - (offset >> 9);
        if extra_sectors >> (cluster_bits - 8) != 0 {
            return None;
        }
        Some(L2_COMPRESSED | (extra_sectors << offset_bits) | offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_header_ignores_bytes_after_72() {
        let mut b = [0xffu8; 112];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..8].copy_from_slice(&2u32.to_be_bytes()); // version 2
        b[20..24].copy_from_slice(&16u32.to_be_bytes()); // cluster_bits
        let raw = HeaderRaw::decode(&b).unwrap();
        assert_eq!(raw.cluster_bits.get(), 16);
        assert_eq!(raw.incompatible_features.get(), 0);
        assert_eq!(raw.header_length.get(), 0);
        assert!(HeaderRaw::decode(&b[..71]).is_none());
    }

    #[test]
    fn v3_header_of_104_bytes_has_no_compression_type() {
        let mut b = [0u8; 112];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..8].copy_from_slice(&3u32.to_be_bytes());
        b[100..104].copy_from_slice(&104u32.to_be_bytes()); // header_length
        b[104] = 1; // would be zstd, but lies beyond header_length
        assert_eq!(HeaderRaw::decode(&b).unwrap().compression_type, 0);
        assert!(HeaderRaw::decode(&b[..100]).is_none());
    }

    #[test]
    fn compressed_descriptor_round_trips() {
        // 64 KiB clusters: offset in bits 0..53, extra sectors in bits 54..61.
        let entry = CompressedDescriptor::encode(0x5_0123, 1000, 16).unwrap();
        assert_eq!(entry, L2_COMPRESSED | (2 << 54) | 0x5_0123);
        let d = CompressedDescriptor::decode(entry, 16);
        assert_eq!(d.offset, 0x5_0123);
        // From 0x50123 to the end of sector 0x50200 + 511: 3 sectors minus 0x123.
        assert_eq!(d.length, 3 * 512 - 0x123);
        assert!(CompressedDescriptor::encode(1 << 60, 10, 16).is_none());
    }
}
