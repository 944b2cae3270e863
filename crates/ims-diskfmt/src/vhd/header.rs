//! VHD on-disk layouts (big-endian): the 512-byte footer, the 1024-byte dynamic header and its
//! parent locators, plus the checksum and CHS geometry rules shared by the probe, reader and
//! writer (`formats.md` §7.1–7.3).

use zerocopy::byteorder::{BigEndian, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

pub(crate) const COOKIE: [u8; 8] = *b"conectix";
pub(crate) const DYNAMIC_COOKIE: [u8; 8] = *b"cxsparse";
pub(crate) const FOOTER_LEN: u64 = 512;
pub(crate) const DYNAMIC_HEADER_LEN: u64 = 1024;
pub(crate) const SECTOR: u64 = 512;
/// Offset of the footer checksum field (the checksum skips it).
pub(crate) const FOOTER_CHECKSUM_OFFSET: usize = 64;
/// Offset of the dynamic header checksum field.
pub(crate) const DYNAMIC_CHECKSUM_OFFSET: usize = 36;
pub(crate) const TYPE_FIXED: u32 = 2;
pub(crate) const TYPE_DYNAMIC: u32 = 3;
pub(crate) const TYPE_DIFFERENCING: u32 = 4;
/// Footer features: bit 1 is reserved and always set.
pub(crate) const FEATURES_RESERVED: u32 = 2;
pub(crate) const FORMAT_VERSION: u32 = 0x0001_0000;
/// `data_offset` of a fixed disk: there is no dynamic header.
pub(crate) const NO_DATA_OFFSET: u64 = u64::MAX;
/// A BAT entry of a block that is not allocated.
pub(crate) const UNALLOCATED: u32 = u32::MAX;
/// qemu's maximum CHS: such a footer's size comes from current_size.
pub(crate) const MAX_CHS: (u16, u8, u8) = (65535, 16, 255);
/// 65535 × 16 × 255 sectors: the largest CHS-addressable disk.
pub(crate) const MAX_CHS_SECTORS: u64 = 65535 * 16 * 255;

/// The 512-byte footer (big-endian).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone)]
#[repr(C)]
pub(crate) struct FooterRaw {
    pub cookie: [u8; 8],
    pub features: U32<BigEndian>,
    pub version: U32<BigEndian>,
    pub data_offset: U64<BigEndian>,
    pub timestamp: U32<BigEndian>,
    pub creator_app: [u8; 4],
    pub creator_version: U32<BigEndian>,
    pub creator_os: [u8; 4],
    pub original_size: U64<BigEndian>,
    pub current_size: U64<BigEndian>,
    pub cylinders: U16<BigEndian>,
    pub heads: u8,
    pub sectors_per_track: u8,
    pub disk_type: U32<BigEndian>,
    pub checksum: U32<BigEndian>,
    pub unique_id: [u8; 16],
    pub saved_state: u8,
    pub reserved: [u8; 427],
}

/// One of the eight parent locator entries of the dynamic header.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone)]
#[repr(C)]
pub(crate) struct LocatorRaw {
    pub platform_code: [u8; 4],
    pub data_space: U32<BigEndian>,
    pub data_length: U32<BigEndian>,
    pub reserved: U32<BigEndian>,
    pub data_offset: U64<BigEndian>,
}

/// The 1024-byte dynamic disk header (big-endian).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone)]
#[repr(C)]
pub(crate) struct DynamicHeaderRaw {
    pub cookie: [u8; 8],
    pub data_offset: U64<BigEndian>,
    pub table_offset: U64<BigEndian>,
    pub header_version: U32<BigEndian>,
    pub max_table_entries: U32<BigEndian>,
    pub block_size: U32<BigEndian>,
    pub checksum: U32<BigEndian>,
    pub parent_unique_id: [u8; 16],
    pub parent_timestamp: U32<BigEndian>,
    pub reserved: U32<BigEndian>,
    pub parent_unicode_name: [u8; 512],
    pub parent_locators: [LocatorRaw; 8],
    pub reserved2: [u8; 256],
}

/// `~(sum of the bytes)` with the 4-byte checksum field at `field` counted as zero.
pub(crate) fn ones_complement_sum(bytes: &[u8], field: usize) -> u32 {
    let all = bytes
        .iter()
        .fold(0u32, |sum, &b| sum.wrapping_add(u32::from(b)));
    let skipped = bytes
        .get(field..field + 4)
        .unwrap_or(&[])
        .iter()
        .fold(0u32, |sum, &b| sum.wrapping_add(u32::from(b)));
    !all.wrapping_sub(skipped)
}

/// qemu ≥ 10: C·H·S·512 for creators "vpc " and "qemu" unless CHS is the maximum; otherwise
/// current_size.
pub(crate) fn virtual_size(footer: &FooterRaw) -> u64 {
    let chs = (
        footer.cylinders.get(),
        footer.heads,
        footer.sectors_per_track,
    );
    let chs_creator = matches!(&footer.creator_app, b"vpc " | b"qemu");
    if chs_creator && chs != MAX_CHS {
        u64::from(chs.0) * u64::from(chs.1) * u64::from(chs.2) * SECTOR
    } else {
        footer.current_size.get()
    }
}

/// The VHD specification's CHS geometry for `total_sectors` (capped at the CHS maximum).
pub(crate) fn geometry(total_sectors: u64) -> (u16, u8, u8) {
    let total = total_sectors.min(MAX_CHS_SECTORS);
    let (spt, heads, cylinders_times_heads) = if total >= 65535 * 16 * 63 {
        (255u64, 16u64, total / 255)
    } else {
        let mut spt = 17u64;
        let mut cth = total / spt;
        let mut heads = cth.div_ceil(1024).max(4);
        if cth >= heads * 1024 || heads > 16 {
            spt = 31;
            heads = 16;
            cth = total / spt;
        }
        if cth >= heads * 1024 {
            spt = 63;
            heads = 16;
            cth = total / spt;
        }
        (spt, heads, cth)
    };
    // Every value fits: cylinders ≤ 65535 by construction of the caps above.
    let cylinders = (cylinders_times_heads / heads).min(65535);
    (cylinders as u16, heads as u8, spt as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn footer_and_dynamic_header_have_their_on_disk_sizes() {
        assert_eq!(size_of::<FooterRaw>() as u64, FOOTER_LEN);
        assert_eq!(size_of::<DynamicHeaderRaw>() as u64, DYNAMIC_HEADER_LEN);
        assert_eq!(size_of::<LocatorRaw>(), 24);
    }

    #[test]
    fn geometry_matches_the_vhd_specification() {
        // 64 MiB: 17 sectors/track, 8 heads, 963 cylinders (qemu then grows it to 964).
        assert_eq!(geometry(131_072), (963, 8, 17));
        assert_eq!(geometry(131_073), (963, 8, 17));
        // Above 65535·16·63 sectors: 255 sectors/track, 16 heads.
        assert_eq!(geometry(MAX_CHS_SECTORS + 5), (65535, 16, 255));
        // 1 GiB: 2097152 sectors -> 63 spt, 16 heads, 2080 cylinders.
        assert_eq!(geometry(2_097_152), (2080, 16, 63));
    }

    #[test]
    fn checksum_skips_its_own_field() {
        let mut bytes = [1u8; 512];
        bytes[64..68].copy_from_slice(&[9, 9, 9, 9]);
        assert_eq!(ones_complement_sum(&bytes, 64), !508u32);
    }
}
