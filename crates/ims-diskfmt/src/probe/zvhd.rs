//! Huawei ZVHD and ZVHD2 inspection: the little-endian VHD-style footer in the 4 KiB header
//! and, for ZVHD2, the final footer in the last 4 KiB (formats.md §8.3, §8.4).

use super::source::Source;
use super::{Detection, Probe, ProbeError};
use crate::Format;
use crate::zvhd::header::{
    COMPRESS_METHODS, FooterRaw, HEADER_LEN, LEGACY_STREAM_VERSION, ZVHD_COOKIE, ZVHD2_COOKIE,
};
use crate::zvhd::parser::{parse_footer, parse_zvhd2_layout};

/// Reads and checksums the footer at `offset`.
fn footer(src: &Source, format: Format, offset: u64) -> Result<FooterRaw, ProbeError> {
    let bytes = src.read("zvhd footer", offset, 512)?;
    Ok(parse_footer(&bytes, format, offset)?)
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
    let layout = parse_zvhd2_layout(&last, at)?;
    found.subformat = Some(COMPRESS_METHODS[usize::from(layout.compress_method)].into());
    found.virtual_size = Some(last.curr_size.get());
    Ok(Some(found))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::probe;
    use crate::vhd::header::ones_complement_sum;
    use crate::zvhd::header::CHECKSUM_OFFSET;

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
            f[112..116].copy_from_slice(&(512u32 << 10).to_le_bytes()); // index_size
            f[116..120].copy_from_slice(&4096u32.to_le_bytes()); // bitmap_size
            f[120..124].copy_from_slice(&(512u32 << 10).to_le_bytes()); // index_seg_size
            f[124..128].copy_from_slice(&4096u32.to_le_bytes()); // bitmap_seg_size
            f[128..132].copy_from_slice(&1u32.to_le_bytes()); // index_seg_num
            f[132..136].copy_from_slice(&1u32.to_le_bytes()); // bitmap_seg_num
            f[136..140].copy_from_slice(&1u32.to_le_bytes()); // non_zero_blk_num
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
        // header, index segment (512 KiB), bitmap segment (4 KiB), final footer
        let body = HEADER_LEN as usize + (512 << 10) + 4096;
        b.resize(body, 0);
        b.extend(footer_bytes(ZVHD2_COOKIE, Some((4096, 4096 + (512 << 10)))));
        let found = probe(&b).unwrap();
        assert_eq!(found.format, Format::Zvhd2);
        assert_eq!(found.subformat.as_deref(), Some("zlib"));
        assert_eq!(found.virtual_size, Some(1 << 30));

        b.truncate(body);
        assert!(probe(&b).is_err());
    }

    #[test]
    fn bad_checksum_is_an_error() {
        let mut b = footer_bytes(ZVHD_COOKIE, None);
        b[100] = 1;
        assert_eq!(probe(&b).unwrap_err().format(), Some(Format::Zvhd));
    }
}
