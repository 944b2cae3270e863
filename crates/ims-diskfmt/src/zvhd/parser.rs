//! ZVHD / ZVHD2 footer validation shared by the probe and the reader, including every sanity
//! check the ZVHD2 final footer needs before its index and bitmap are trusted.

use zerocopy::FromBytes;

use super::header::{
    BITMAP_SEG_SIZE, BLOCKS_PER_SEGMENT, CHECKSUM_OFFSET, CHECKSUMMED_LEN, COMPRESS_METHODS,
    FooterRaw, HEADER_LEN, INDEX_ENTRY_LEN, INDEX_SEG_SIZE, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE,
    SIZE_GRANULE,
};
use crate::Format;
use crate::disk::Invalid;
use crate::vhd::header::ones_complement_sum;

/// Virtual sizes above 64 TiB are refused (the Huawei service imports at most 1 TiB).
pub(crate) const MAX_VIRTUAL_SIZE: u64 = 64 << 40;

/// Validates the footer bytes read at `offset`: checksum and the orig/curr size relation.
pub(crate) fn parse_footer(
    bytes: &[u8],
    format: Format,
    offset: u64,
) -> Result<FooterRaw, Invalid> {
    let invalid = |at: u64, reason: String| Invalid::new(format, "footer", offset + at, reason);
    let footer = FooterRaw::read_from_prefix(bytes)
        .map(|(f, _)| f)
        .map_err(|_| invalid(0, "shorter than 512 bytes".into()))?;
    let expected = ones_complement_sum(&bytes[..CHECKSUMMED_LEN], CHECKSUM_OFFSET);
    if footer.checksum.get() != expected {
        return Err(invalid(
            CHECKSUM_OFFSET as u64,
            format!(
                "checksum {:#010x} does not match the computed {expected:#010x}",
                footer.checksum.get()
            ),
        ));
    }
    let (orig, curr) = (footer.orig_size.get(), footer.curr_size.get());
    if curr < orig || curr % SIZE_GRANULE != 0 || curr - orig >= SIZE_GRANULE {
        return Err(invalid(
            40,
            format!("curr_size {curr} is not orig_size {orig} rounded up to whole GiB"),
        ));
    }
    if curr > MAX_VIRTUAL_SIZE {
        return Err(invalid(
            48,
            format!("curr_size {curr} exceeds {MAX_VIRTUAL_SIZE}"),
        ));
    }
    Ok(footer)
}

/// The ZVHD2 layout the final footer describes, checked against a `file_len`-byte file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Zvhd2Layout {
    pub block_size: u32,
    pub blocks: u64,
    pub non_zero: u64,
    pub index_offset: u64,
    pub bitmap_offset: u64,
    pub bitmap_len: u64,
    pub compress_method: u8,
    /// Records lie in `HEADER_LEN..data_end`.
    pub data_end: u64,
}

/// Checks the final footer (at `offset` = file length − 4 KiB).
pub(crate) fn parse_zvhd2_layout(footer: &FooterRaw, offset: u64) -> Result<Zvhd2Layout, Invalid> {
    let invalid =
        |at: u64, reason: String| Invalid::new(Format::Zvhd2, "final footer", offset + at, reason);
    let block_size = footer.block_size.get();
    if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
        return Err(invalid(
            88,
            format!("block size {block_size} is not a power of 2 in 1..=32 MiB"),
        ));
    }
    let orig = footer.orig_size.get();
    let blocks = u64::from(footer.max_blk_num.get());
    let non_zero = u64::from(footer.non_zero_blk_num.get());
    if blocks != orig.div_ceil(u64::from(block_size)) || non_zero > blocks {
        return Err(invalid(
            92,
            format!("{blocks} blocks ({non_zero} stored) do not cover {orig} bytes"),
        ));
    }
    if footer.index_contains_zero_blk != 0 {
        return Err(invalid(
            140,
            "index_contains_zero_blk is set (an index over every block)".into(),
        ));
    }
    let compress_method = footer.compress_method;
    if usize::from(compress_method) >= COMPRESS_METHODS.len() {
        return Err(invalid(
            141,
            format!("unknown compress_method {compress_method}"),
        ));
    }
    let per_index_seg = u64::from(INDEX_SEG_SIZE) / INDEX_ENTRY_LEN;
    let index_segs = u64::from(footer.index_seg_num.get());
    let bitmap_segs = u64::from(footer.bitmap_seg_num.get());
    let index_len = u64::from(footer.index_size.get());
    let bitmap_len = u64::from(footer.bitmap_size.get());
    if footer.index_seg_size.get() != INDEX_SEG_SIZE
        || footer.bitmap_seg_size.get() != BITMAP_SEG_SIZE
        || index_segs != non_zero.div_ceil(per_index_seg)
        || bitmap_segs != blocks.div_ceil(BLOCKS_PER_SEGMENT)
        || index_len != index_segs * u64::from(INDEX_SEG_SIZE)
        || bitmap_len != bitmap_segs * u64::from(BITMAP_SEG_SIZE)
    {
        return Err(invalid(
            112,
            format!(
                "index ({index_segs} segments, {index_len} bytes) or bitmap ({bitmap_segs} \
                 segments, {bitmap_len} bytes) do not match {non_zero} of {blocks} blocks"
            ),
        ));
    }
    let index_offset = footer.index_lba.get();
    let bitmap_offset = footer.bitmap_lba.get();
    for (name, at, start, len) in [
        ("index", 96, index_offset, index_len),
        ("bitmap", 104, bitmap_offset, bitmap_len),
    ] {
        let fits = start >= HEADER_LEN && start.checked_add(len).is_some_and(|end| end <= offset);
        if !fits {
            return Err(invalid(
                at,
                format!("{name} at {start} (+{len}) lies outside the file"),
            ));
        }
    }
    let index_end = index_offset + index_len;
    let bitmap_end = bitmap_offset + bitmap_len;
    if index_offset < bitmap_end && bitmap_offset < index_end {
        return Err(invalid(96, "index and bitmap overlap".into()));
    }
    Ok(Zvhd2Layout {
        block_size,
        blocks,
        non_zero,
        index_offset,
        bitmap_offset,
        bitmap_len,
        compress_method,
        data_end: index_offset.min(bitmap_offset),
    })
}
