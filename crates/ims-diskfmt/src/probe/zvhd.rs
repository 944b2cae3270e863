//! Huawei ZVHD and ZVHD2 inspection: the little-endian VHD-style footer in the 4 KiB header
//! and, for ZVHD2, the final footer in the last 4 KiB (formats.md §8.3, §8.4).

use zerocopy::byteorder::{LittleEndian, U32, U64};
use zerocopy::{FromBytes, Immutable, KnownLayout, Unaligned};

use super::source::{Source, parse_prefix};
use super::vhd::ones_complement_sum;
use super::{Detection, Probe, ProbeError};
use crate::Format;

const ZVHD_COOKIE: [u8; 8] = *b"stream\0\0";
const ZVHD2_COOKIE: [u8; 8] = *b"z2strm\0\0";
/// The footer struct lives in a 4 KiB header / trailer; its checksum covers 512 bytes.
const HEADER_LEN: u64 = 4096;
const CHECKSUMMED_LEN: u64 = 512;
const CHECKSUM_OFFSET: usize = 64;
/// The driver rounds the reported size up to whole GiB.
const SIZE_GRANULE: u64 = 1 << 30;
/// The ZVHD2 reader accepts power-of-2 blocks of 1 ..= 32 MiB.
const MIN_BLOCK_SIZE: u32 = 1 << 20;
const MAX_BLOCK_SIZE: u32 = 32 << 20;
/// zvhd2_version 0: the legacy stream-only layout, no index or final footer.
const LEGACY_STREAM_VERSION: u8 = 0;
const COMPRESS_METHODS: [&str; 2] = ["zlib", "zstd"];

/// The footer (little-endian, host order in the Huawei driver), ZVHD2 fields included.
#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct FooterRaw {
    cookie: [u8; 8],
    features: U32<LittleEndian>,
    version: U32<LittleEndian>,
    data_offset: U64<LittleEndian>,
    timestamp: U32<LittleEndian>,
    creator_app: [u8; 4],
    creator_version: U32<LittleEndian>,
    creator_os: U32<LittleEndian>,
    orig_size: U64<LittleEndian>,
    curr_size: U64<LittleEndian>,
    geometry: U32<LittleEndian>,
    disk_type: U32<LittleEndian>,
    checksum: U32<LittleEndian>,
    uuid: [u8; 16],
    saved: u8,
    hidden: u8,
    align_64: u8,
    zvhd2_version: u8,
    block_size: U32<LittleEndian>,
    max_blk_num: U32<LittleEndian>,
    index_lba: U64<LittleEndian>,
    bitmap_lba: U64<LittleEndian>,
    index_size: U32<LittleEndian>,
    bitmap_size: U32<LittleEndian>,
    index_seg_size: U32<LittleEndian>,
    bitmap_seg_size: U32<LittleEndian>,
    index_seg_num: U32<LittleEndian>,
    bitmap_seg_num: U32<LittleEndian>,
    non_zero_blk_num: U32<LittleEndian>,
    index_contains_zero_blk: u8,
    compress_method: u8,
}

/// Reads and checksums the footer at `offset`.
fn footer(src: &Source, format: Format, offset: u64) -> Result<FooterRaw, ProbeError> {
    let bytes = src.read("zvhd footer", offset, CHECKSUMMED_LEN)?;
    let footer: FooterRaw = parse_prefix("zvhd footer", offset, &bytes)?;
    let expected = ones_complement_sum(&bytes, CHECKSUM_OFFSET);
    if footer.checksum.get() != expected {
        return Err(ProbeError::invalid(
            format,
            "footer",
            offset,
            format!(
                "checksum {:#010x} does not match the computed {expected:#010x}",
                footer.checksum.get()
            ),
        ));
    }
    let (orig, curr) = (footer.orig_size.get(), footer.curr_size.get());
    if curr < orig || curr % SIZE_GRANULE != 0 {
        return Err(ProbeError::invalid(
            format,
            "footer",
            offset + 40,
            format!("curr_size {curr} is not orig_size {orig} rounded up to whole GiB"),
        ));
    }
    Ok(footer)
}

fn has_cookie(src: &Source, cookie: [u8; 8]) -> Result<bool, ProbeError> {
    Ok(src
        .read_if_present("zvhd cookie", 0, 8)?
        .is_some_and(|c| c == cookie))
}

pub(crate) fn detect_zvhd(src: &Source) -> Detection {
    if !has_cookie(src, ZVHD_COOKIE)? {
        return Ok(None);
    }
    let header = footer(src, Format::Zvhd, 0)?;
    let mut found = Probe::new(Format::Zvhd);
    // The Huawei driver reports curr_size (orig_size rounded up to 1 GiB).
    found.virtual_size = Some(header.curr_size.get());
    Ok(Some(found))
}

pub(crate) fn detect_zvhd2(src: &Source) -> Detection {
    if !has_cookie(src, ZVHD2_COOKIE)? {
        return Ok(None);
    }
    let invalid =
        |offset, reason: String| ProbeError::invalid(Format::Zvhd2, "footer", offset, reason);
    let header = footer(src, Format::Zvhd2, 0)?;
    let mut found = Probe::new(Format::Zvhd2);
    if header.zvhd2_version == LEGACY_STREAM_VERSION {
        found.virtual_size = Some(header.curr_size.get());
        found.subformat = Some("stream".into());
        return Ok(Some(found));
    }
    let len = src.len();
    if len < 2 * HEADER_LEN {
        return Err(invalid(
            0,
            "too short to hold a header and a final footer".into(),
        ));
    }
    let at = len - HEADER_LEN;
    if src.read("zvhd2 final footer cookie", at, 8)? != ZVHD2_COOKIE {
        return Err(invalid(at, "final footer (last 4 KiB) is missing".into()));
    }
    let last = footer(src, Format::Zvhd2, at)?;
    let block_size = last.block_size.get();
    if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
        return Err(invalid(
            at + 88,
            format!("block size {block_size} is not a power of 2 in 1..=32 MiB"),
        ));
    }
    let orig = last.orig_size.get();
    let blocks = u64::from(last.max_blk_num.get());
    if blocks != orig.div_ceil(u64::from(block_size))
        || u64::from(last.non_zero_blk_num.get()) > blocks
    {
        return Err(invalid(
            at + 92,
            format!("{blocks} blocks do not cover {orig} bytes"),
        ));
    }
    for (name, offset, size) in [
        ("index", last.index_lba.get(), last.index_size.get()),
        ("bitmap", last.bitmap_lba.get(), last.bitmap_size.get()),
    ] {
        let fits = offset >= HEADER_LEN
            && offset
                .checked_add(u64::from(size))
                .is_some_and(|end| end <= at);
        if !fits {
            return Err(invalid(
                at + 96,
                format!("{name} at {offset} (+{size}) lies outside the data area"),
            ));
        }
    }
    let method = COMPRESS_METHODS
        .get(usize::from(last.compress_method))
        .ok_or_else(|| {
            invalid(
                at + 141,
                format!("unknown compress_method {}", last.compress_method),
            )
        })?;
    found.subformat = Some((*method).into());
    found.virtual_size = Some(last.curr_size.get());
    Ok(Some(found))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::probe;

    /// A footer for a 64 MiB disk (curr_size 1 GiB), 2 MiB blocks.
    fn footer_bytes(cookie: [u8; 8], v2: Option<(u64, u64)>) -> Vec<u8> {
        let mut f = vec![0u8; HEADER_LEN as usize];
        f[0..8].copy_from_slice(&cookie);
        f[8..12].copy_from_slice(&2u32.to_le_bytes()); // features
        f[28..32].copy_from_slice(b"tap\0");
        f[40..48].copy_from_slice(&(64u64 << 20).to_le_bytes()); // orig_size
        f[48..56].copy_from_slice(&(1u64 << 30).to_le_bytes()); // curr_size
        f[60..64].copy_from_slice(&4u32.to_le_bytes()); // disk type
        if let Some((index, bitmap)) = v2 {
            f[87] = 1; // zvhd2_version
            f[88..92].copy_from_slice(&(2u32 << 20).to_le_bytes()); // block_size
            f[92..96].copy_from_slice(&32u32.to_le_bytes()); // max_blk_num
            f[96..104].copy_from_slice(&index.to_le_bytes()); // index_lba
            f[104..112].copy_from_slice(&bitmap.to_le_bytes()); // bitmap_lba
            f[112..116].copy_from_slice(&16u32.to_le_bytes()); // index_size
            f[116..120].copy_from_slice(&4096u32.to_le_bytes()); // bitmap_size
        }
        let sum = ones_complement_sum(&f[..512], CHECKSUM_OFFSET);
        f[64..68].copy_from_slice(&sum.to_le_bytes());
        f
    }

    #[test]
    fn zvhd_reports_the_rounded_size() {
        let mut b = footer_bytes(ZVHD_COOKIE, None);
        b.extend(footer_bytes(ZVHD_COOKIE, None));
        let found = probe(&b).unwrap();
        assert_eq!(found.format, Format::Zvhd);
        assert_eq!(found.virtual_size, Some(1 << 30));
        assert_eq!(found.check_declared("zvhd"), Ok(()));
        assert!(found.check_declared("vhd").is_err());
    }

    #[test]
    fn zvhd2_needs_its_final_footer() {
        let mut b = footer_bytes(ZVHD2_COOKIE, Some((0, 0)));
        b.resize(3 * HEADER_LEN as usize, 0);
        b.extend(footer_bytes(ZVHD2_COOKIE, Some((4096, 4096 + 16))));
        let found = probe(&b).unwrap();
        assert_eq!(found.format, Format::Zvhd2);
        assert_eq!(found.subformat.as_deref(), Some("zlib"));
        assert_eq!(found.virtual_size, Some(1 << 30));

        b.truncate(3 * HEADER_LEN as usize);
        assert!(probe(&b).is_err());
    }

    #[test]
    fn bad_checksum_is_an_error() {
        let mut b = footer_bytes(ZVHD_COOKIE, None);
        b[100] = 1;
        assert_eq!(probe(&b).unwrap_err().format(), Some(Format::Zvhd));
    }
}
