//! The QED on-disk header (little-endian) and its limits, shared by the probe, the reader and
//! the writer (`docs/interop/qed_spec.rst`).

use zerocopy::byteorder::{LittleEndian, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

pub(crate) const MAGIC: [u8; 4] = *b"QED\0";
/// Spec limits: cluster size a power of 2 in 4 KiB ..= 64 MiB, table size 1 ..= 16 clusters.
pub(crate) const MIN_CLUSTER_SIZE: u32 = 4 << 10;
pub(crate) const MAX_CLUSTER_SIZE: u32 = 64 << 20;
pub(crate) const MAX_TABLE_SIZE: u32 = 16;
/// qemu's table offset check needs tables of at least two clusters (its "end offset" of a
/// one-cluster table equals the start and fails the overflow test), so it refuses size 1.
pub(crate) const MIN_TABLE_SIZE: u32 = 2;
/// Same bound on backing names as the other formats.
pub(crate) const MAX_BACKING_NAME: u32 = 1023;
pub(crate) const FEATURE_BACKING_FILE: u64 = 0x01;
pub(crate) const FEATURE_NEED_CHECK: u64 = 0x02;
pub(crate) const FEATURES_KNOWN: u64 = 0x07;
/// An L2 entry of 1: the cluster reads as zeros even over a backing file.
pub(crate) const ZERO_CLUSTER: u64 = 1;
/// What qemu-img writes by default.
pub(crate) const DEFAULT_CLUSTER_SIZE: u32 = 64 << 10;
pub(crate) const DEFAULT_TABLE_SIZE: u32 = 4;

/// The 64-byte header (little-endian).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Default)]
#[repr(C)]
pub(crate) struct HeaderRaw {
    pub magic: [u8; 4],
    pub cluster_size: U32<LittleEndian>,
    pub table_size: U32<LittleEndian>,
    pub header_size: U32<LittleEndian>,
    pub features: U64<LittleEndian>,
    pub compat_features: U64<LittleEndian>,
    pub autoclear_features: U64<LittleEndian>,
    pub l1_table_offset: U64<LittleEndian>,
    pub image_size: U64<LittleEndian>,
    pub backing_filename_offset: U32<LittleEndian>,
    pub backing_filename_size: U32<LittleEndian>,
}

/// The largest disk tables of `table_size` clusters of `cluster_size` bytes can map.
pub(crate) fn max_image_size(cluster_size: u64, table_size: u64) -> Option<u64> {
    let entries = table_size * cluster_size / 8;
    entries.checked_mul(entries)?.checked_mul(cluster_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_64_bytes_and_limits_hold() {
        assert_eq!(size_of::<HeaderRaw>(), 64);
        // 64 KiB clusters, 4-cluster tables: 32 Ki entries per table.
        assert_eq!(max_image_size(65536, 4), Some((32768u64 * 32768) << 16));
        assert_eq!(max_image_size(64 << 20, 16), None);
    }
}
