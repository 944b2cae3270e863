//! VHD footer and dynamic header validation, shared by the probe and the reader: raw layouts in,
//! a checked model (or an [`Invalid`] naming the field) out.

use zerocopy::FromBytes;

use super::header::{
    COOKIE, DYNAMIC_CHECKSUM_OFFSET, DYNAMIC_COOKIE, DynamicHeaderRaw, FOOTER_CHECKSUM_OFFSET,
    FooterRaw, SECTOR, TYPE_DIFFERENCING, TYPE_DYNAMIC, TYPE_FIXED, ones_complement_sum,
    virtual_size,
};
use crate::Format;
use crate::disk::Invalid;

/// qemu: "Too many blocks" above INT_MAX / 4 BAT entries.
pub(crate) const MAX_TABLE_ENTRIES: u32 = (i32::MAX / 4) as u32;

/// What kind of VHD a footer describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DiskType {
    Fixed,
    Dynamic,
    Differencing,
}

impl DiskType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DiskType::Fixed => "fixed",
            DiskType::Dynamic => "dynamic",
            DiskType::Differencing => "differencing",
        }
    }
}

/// A footer whose cookie and checksum are valid.
pub(crate) struct Footer {
    pub raw: FooterRaw,
    pub disk_type: DiskType,
    /// The size qemu ≥ 10 presents (CHS or current_size, by creator).
    pub virtual_size: u64,
}

/// The dynamic header's layout facts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dynamic {
    pub table_offset: u64,
    pub entries: u32,
    pub block_size: u32,
    /// Sector bitmap in front of every block: one bit per sector, padded to 512 bytes.
    pub bitmap_len: u64,
}

fn invalid(structure: &'static str, offset: u64, reason: impl Into<String>) -> Invalid {
    Invalid::new(Format::Vhd, structure, offset, reason)
}

/// Validates the 512 footer bytes read at `offset`.
pub(crate) fn parse_footer(bytes: &[u8], offset: u64) -> Result<Footer, Invalid> {
    let raw = FooterRaw::read_from_prefix(bytes)
        .map(|(raw, _)| raw)
        .map_err(|_| invalid("footer", offset, "shorter than 512 bytes"))?;
    if raw.cookie != COOKIE {
        return Err(invalid("footer", offset, "cookie is not 'conectix'"));
    }
    let expected = ones_complement_sum(&bytes[..512], FOOTER_CHECKSUM_OFFSET);
    if raw.checksum.get() != expected {
        return Err(invalid(
            "footer",
            offset + FOOTER_CHECKSUM_OFFSET as u64,
            format!(
                "checksum {:#010x} does not match the computed {expected:#010x}",
                raw.checksum.get()
            ),
        ));
    }
    let disk_type = match raw.disk_type.get() {
        TYPE_FIXED => DiskType::Fixed,
        TYPE_DYNAMIC => DiskType::Dynamic,
        TYPE_DIFFERENCING => DiskType::Differencing,
        other => {
            return Err(invalid(
                "footer",
                offset + 60,
                format!("unknown disk type {other}"),
            ));
        }
    };
    let virtual_size = virtual_size(&raw);
    if virtual_size % SECTOR != 0 {
        return Err(invalid(
            "footer",
            offset + 48,
            format!("size {virtual_size} is not a multiple of 512"),
        ));
    }
    Ok(Footer {
        raw,
        disk_type,
        virtual_size,
    })
}

/// Validates the 1024 dynamic header bytes read at `offset` for a disk of `virtual_size`.
/// The header checksum is not verified: qemu ignores it (`formats.md` §7.2).
pub(crate) fn parse_dynamic(
    bytes: &[u8],
    offset: u64,
    virtual_size: u64,
) -> Result<(DynamicHeaderRaw, Dynamic), Invalid> {
    let raw = DynamicHeaderRaw::read_from_prefix(bytes)
        .map(|(raw, _)| raw)
        .map_err(|_| invalid("dynamic header", offset, "shorter than 1024 bytes"))?;
    if raw.cookie != DYNAMIC_COOKIE {
        return Err(invalid(
            "dynamic header",
            offset,
            "cookie is not 'cxsparse'",
        ));
    }
    let block_size = raw.block_size.get();
    if !block_size.is_power_of_two() || u64::from(block_size) < SECTOR {
        return Err(invalid(
            "dynamic header",
            offset + 32,
            format!("block size {block_size} is not a power of 2 of at least 512"),
        ));
    }
    let entries = raw.max_table_entries.get();
    if entries > MAX_TABLE_ENTRIES {
        return Err(invalid(
            "dynamic header",
            offset + 28,
            format!("{entries} BAT entries exceed {MAX_TABLE_ENTRIES}"),
        ));
    }
    if u64::from(entries) * u64::from(block_size) < virtual_size {
        return Err(invalid(
            "dynamic header",
            offset + 28,
            format!("{entries} blocks of {block_size} bytes cannot hold {virtual_size} bytes"),
        ));
    }
    let bitmap_len = (u64::from(block_size) / SECTOR)
        .div_ceil(8)
        .next_multiple_of(SECTOR);
    let dynamic = Dynamic {
        table_offset: raw.table_offset.get(),
        entries,
        block_size,
        bitmap_len,
    };
    Ok((raw, dynamic))
}

/// The dynamic header checksum qemu writes (and `check` reports when it differs).
pub(crate) fn dynamic_checksum(bytes: &[u8]) -> u32 {
    ones_complement_sum(bytes, DYNAMIC_CHECKSUM_OFFSET)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vhd::header::FOOTER_LEN;

    /// A hand-annotated footer: creator "vpc ", current size 64 MiB, CHS 964/8/17.
    fn footer() -> Vec<u8> {
        let mut f = vec![0u8; FOOTER_LEN as usize];
        f[0..8].copy_from_slice(b"conectix"); // cookie
        f[8..12].copy_from_slice(&[0, 0, 0, 2]); // features: reserved bit
        f[12..16].copy_from_slice(&[0, 1, 0, 0]); // version 1.0
        f[16..24].copy_from_slice(&[0, 0, 0, 0, 0, 0, 2, 0]); // data offset 512
        f[28..32].copy_from_slice(b"vpc "); // creator app
        f[40..48].copy_from_slice(&[0, 0, 0, 0, 4, 0, 0, 0]); // original size 64 MiB
        f[48..56].copy_from_slice(&[0, 0, 0, 0, 4, 0, 0, 0]); // current size 64 MiB
        f[56..60].copy_from_slice(&[0x03, 0xC4, 8, 17]); // C 964, H 8, S 17
        f[60..64].copy_from_slice(&[0, 0, 0, 3]); // dynamic
        let sum = ones_complement_sum(&f, FOOTER_CHECKSUM_OFFSET);
        f[64..68].copy_from_slice(&sum.to_be_bytes());
        f
    }

    #[test]
    fn creator_vpc_takes_its_size_from_chs() {
        let parsed = parse_footer(&footer(), 0).unwrap();
        assert_eq!(parsed.disk_type, DiskType::Dynamic);
        assert_eq!(parsed.virtual_size, 964 * 8 * 17 * 512);
        assert_eq!(parsed.raw.data_offset.get(), 512);
    }

    #[test]
    fn other_creators_take_current_size() {
        let mut f = footer();
        f[28..32].copy_from_slice(b"win ");
        let sum = ones_complement_sum(&f, FOOTER_CHECKSUM_OFFSET);
        f[64..68].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(parse_footer(&f, 0).unwrap().virtual_size, 64 << 20);
    }

    #[test]
    fn a_wrong_checksum_names_its_field() {
        let mut f = footer();
        f[100] = 1;
        let e = parse_footer(&f, 4096).err().unwrap();
        assert_eq!((e.structure, e.offset), ("footer", 4096 + 64));
    }

    #[test]
    fn dynamic_header_limits() {
        let mut h = vec![0u8; 1024];
        h[0..8].copy_from_slice(b"cxsparse");
        h[16..24].copy_from_slice(&1536u64.to_be_bytes()); // table offset
        h[28..32].copy_from_slice(&32u32.to_be_bytes()); // max table entries
        h[32..36].copy_from_slice(&(2u32 << 20).to_be_bytes()); // block size 2 MiB
        let (_, d) = parse_dynamic(&h, 512, 64 << 20).unwrap();
        assert_eq!((d.table_offset, d.entries, d.bitmap_len), (1536, 32, 512));
        assert!(parse_dynamic(&h, 512, (64 << 20) + 512).is_err());
        h[32..36].copy_from_slice(&(3u32 << 20).to_be_bytes());
        assert_eq!(parse_dynamic(&h, 512, 1).err().unwrap().offset, 544);
        h[32..36].copy_from_slice(&(2u32 << 20).to_be_bytes());
        h[28..32].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(parse_dynamic(&h, 512, 1).err().unwrap().offset, 540);
    }
}
