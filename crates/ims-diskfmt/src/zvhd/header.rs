//! Huawei ZVHD / ZVHD2 on-disk layouts (little-endian): the VHD-style footer kept in a 4 KiB
//! header (and, for ZVHD2, a final footer), the 48-byte record header framing every stored
//! block, and ZVHD2's index entries (`formats.md` §8.3–8.4).

use zerocopy::byteorder::{LittleEndian, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

pub(crate) const ZVHD_COOKIE: [u8; 8] = *b"stream\0\0";
pub(crate) const ZVHD2_COOKIE: [u8; 8] = *b"z2strm\0\0";
/// The footer struct lives in a 4 KiB header / trailer; its checksum covers 512 bytes.
pub(crate) const HEADER_LEN: u64 = 4096;
pub(crate) const CHECKSUMMED_LEN: usize = 512;
pub(crate) const CHECKSUM_OFFSET: usize = 64;
/// The driver reports orig_size rounded up to whole GiB.
pub(crate) const SIZE_GRANULE: u64 = 1 << 30;
/// ZVHD's block size, and ZVHD2's default.
pub(crate) const BLOCK_SIZE: u64 = 2 << 20;
/// The ZVHD2 reader accepts power-of-2 blocks of 1 ..= 32 MiB.
pub(crate) const MIN_BLOCK_SIZE: u32 = 1 << 20;
pub(crate) const MAX_BLOCK_SIZE: u32 = 32 << 20;
/// zvhd2_version 0: the legacy stream-only layout, no index or final footer.
pub(crate) const LEGACY_STREAM_VERSION: u8 = 0;
pub(crate) const ZVHD2_VERSION: u8 = 1;
pub(crate) const COMPRESS_ZLIB: u8 = 0;
pub(crate) const COMPRESS_ZSTD: u8 = 1;
pub(crate) const COMPRESS_METHODS: [&str; 2] = ["zlib", "zstd"];
pub(crate) const FEATURES: u32 = 2;
pub(crate) const VERSION: u32 = 0x0001_0000;
pub(crate) const CREATOR_APP: [u8; 4] = *b"tap\0";
/// 1.4: the "new" ZVHD format.
pub(crate) const CREATOR_VERSION: u32 = 0x0001_0004;
/// The driver writes disk type 4.
pub(crate) const DISK_TYPE: u32 = 4;

/// Records: a 48-byte header, the compressed payload, zero padding, "end\0" as the last 4 bytes,
/// 4 KiB aligned.
pub(crate) const RECORD_PREFIX: [u8; 12] = *b"hwstream bg\0";
pub(crate) const RECORD_HEADER_LEN: u64 = 48;
pub(crate) const RECORD_END: [u8; 4] = *b"end\0";
pub(crate) const RECORD_ALIGN: u64 = 4096;

/// ZVHD2 index: 512 KiB segments of 16-byte entries; bitmap: 4 KiB segments of 32768 bits.
pub(crate) const INDEX_SEG_SIZE: u32 = 512 << 10;
pub(crate) const INDEX_ENTRY_LEN: u64 = 16;
pub(crate) const BITMAP_SEG_SIZE: u32 = 4096;
pub(crate) const BLOCKS_PER_SEGMENT: u64 = 32768;

/// The footer (little-endian, host order in the Huawei driver), ZVHD2 fields included.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone)]
#[repr(C)]
pub(crate) struct FooterRaw {
    pub cookie: [u8; 8],
    pub features: U32<LittleEndian>,
    pub version: U32<LittleEndian>,
    pub data_offset: U64<LittleEndian>,
    pub timestamp: U32<LittleEndian>,
    pub creator_app: [u8; 4],
    pub creator_version: U32<LittleEndian>,
    pub creator_os: U32<LittleEndian>,
    pub orig_size: U64<LittleEndian>,
    pub curr_size: U64<LittleEndian>,
    pub geometry: U32<LittleEndian>,
    pub disk_type: U32<LittleEndian>,
    pub checksum: U32<LittleEndian>,
    pub uuid: [u8; 16],
    pub saved: u8,
    pub hidden: u8,
    pub align_64: u8,
    pub zvhd2_version: u8,
    pub block_size: U32<LittleEndian>,
    pub max_blk_num: U32<LittleEndian>,
    pub index_lba: U64<LittleEndian>,
    pub bitmap_lba: U64<LittleEndian>,
    pub index_size: U32<LittleEndian>,
    pub bitmap_size: U32<LittleEndian>,
    pub index_seg_size: U32<LittleEndian>,
    pub bitmap_seg_size: U32<LittleEndian>,
    pub index_seg_num: U32<LittleEndian>,
    pub bitmap_seg_num: U32<LittleEndian>,
    pub non_zero_blk_num: U32<LittleEndian>,
    pub index_contains_zero_blk: u8,
    pub compress_method: u8,
    pub reserved: [u8; 370],
}

/// The 48-byte header in front of every stored block.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone)]
#[repr(C)]
pub(crate) struct RecordHeaderRaw {
    pub prefix: [u8; 12],
    /// Compressed payload bytes.
    pub size: U32<LittleEndian>,
    /// Virtual block number.
    pub curr_blk: U32<LittleEndian>,
    /// ZVHD2 only, left 0 by the driver.
    pub compressed: u8,
    pub reserved: [u8; 3],
    pub orig_size: U32<LittleEndian>,
    pub reserved2: [u8; 20],
}

/// A ZVHD2 index entry.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone)]
#[repr(C)]
pub(crate) struct IndexEntryRaw {
    pub blk_offset: U64<LittleEndian>,
    pub blk_num: U32<LittleEndian>,
    pub blk_disk_size: U32<LittleEndian>,
}

/// Length of a record holding `payload` compressed bytes.
pub(crate) fn record_len(payload: u64) -> Option<u64> {
    Some(
        payload
            .checked_add(RECORD_HEADER_LEN + RECORD_END.len() as u64)?
            .next_multiple_of(RECORD_ALIGN),
    )
}

/// A complete record for block `block` carrying `payload`.
pub(crate) fn record(block: u32, payload: &[u8]) -> Vec<u8> {
    let header = RecordHeaderRaw {
        prefix: RECORD_PREFIX,
        size: U32::new(payload.len() as u32),
        curr_blk: U32::new(block),
        compressed: 0,
        reserved: [0; 3],
        orig_size: U32::new(0),
        reserved2: [0; 20],
    };
    let len = record_len(payload.len() as u64).unwrap_or(0) as usize;
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(payload);
    out.resize(len - RECORD_END.len(), 0);
    out.extend_from_slice(&RECORD_END);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_their_on_disk_sizes() {
        assert_eq!(size_of::<FooterRaw>(), CHECKSUMMED_LEN);
        assert_eq!(size_of::<RecordHeaderRaw>() as u64, RECORD_HEADER_LEN);
        assert_eq!(size_of::<IndexEntryRaw>() as u64, INDEX_ENTRY_LEN);
        assert_eq!(std::mem::offset_of!(FooterRaw, zvhd2_version), 87);
        assert_eq!(std::mem::offset_of!(FooterRaw, compress_method), 141);
    }

    #[test]
    fn records_are_4k_aligned_and_end_with_end() {
        let r = record(7, &[1, 2, 3]);
        assert_eq!(r.len(), 4096);
        assert_eq!(&r[..12], b"hwstream bg\0");
        assert_eq!(&r[12..20], &[3, 0, 0, 0, 7, 0, 0, 0]);
        assert_eq!(&r[48..51], &[1, 2, 3]);
        assert_eq!(&r[4092..], b"end\0");
        assert_eq!(record_len(4044), Some(4096));
        assert_eq!(record_len(4045), Some(8192));
    }
}
