//! VHD ("vpc") inspection: the big-endian footer, the dynamic header and its BAT, and the
//! parent fields of differencing disks.

use zerocopy::byteorder::{BigEndian, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, KnownLayout, Unaligned};

use super::source::{Source, lossy_name, parse_prefix, utf16_name};
use super::{Detection, FileReference, Probe, ProbeError, ReferenceKind};
use crate::Format;

const COOKIE: [u8; 8] = *b"conectix";
const DYNAMIC_COOKIE: [u8; 8] = *b"cxsparse";
const FOOTER_LEN: u64 = 512;
const SECTOR: u64 = 512;
const TYPE_FIXED: u32 = 2;
const TYPE_DYNAMIC: u32 = 3;
const TYPE_DIFFERENCING: u32 = 4;
pub(crate) const FIXED: &str = "fixed";
/// qemu: "Too many blocks" above INT_MAX / 4 BAT entries.
const MAX_TABLE_ENTRIES: u32 = (i32::MAX / 4) as u32;
/// qemu's maximum CHS: such a footer's size comes from current_size.
const MAX_CHS: (u16, u8, u8) = (65535, 16, 255);
/// Parent locator data longer than this is not a path.
const MAX_LOCATOR_BYTES: u32 = 4096;
const UNALLOCATED: u32 = u32::MAX;

/// The 512-byte footer (big-endian), up to the unique id and saved-state byte.
#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct FooterRaw {
    cookie: [u8; 8],
    features: U32<BigEndian>,
    version: U32<BigEndian>,
    data_offset: U64<BigEndian>,
    timestamp: U32<BigEndian>,
    creator_app: [u8; 4],
    creator_version: U32<BigEndian>,
    creator_os: [u8; 4],
    original_size: U64<BigEndian>,
    current_size: U64<BigEndian>,
    cylinders: U16<BigEndian>,
    heads: u8,
    sectors_per_track: u8,
    disk_type: U32<BigEndian>,
    checksum: U32<BigEndian>,
    unique_id: [u8; 16],
    saved_state: u8,
}

/// One of the eight parent locator entries of the dynamic header.
#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct LocatorRaw {
    platform_code: [u8; 4],
    data_space: U32<BigEndian>,
    data_length: U32<BigEndian>,
    reserved: U32<BigEndian>,
    data_offset: U64<BigEndian>,
}

/// The 1024-byte dynamic disk header (big-endian).
#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct DynamicHeaderRaw {
    cookie: [u8; 8],
    data_offset: U64<BigEndian>,
    table_offset: U64<BigEndian>,
    header_version: U32<BigEndian>,
    max_table_entries: U32<BigEndian>,
    block_size: U32<BigEndian>,
    checksum: U32<BigEndian>,
    parent_unique_id: [u8; 16],
    parent_timestamp: U32<BigEndian>,
    reserved: U32<BigEndian>,
    parent_unicode_name: [u8; 512],
    parent_locators: [LocatorRaw; 8],
}

fn invalid(structure: &'static str, offset: u64, reason: impl Into<String>) -> ProbeError {
    ProbeError::invalid(Format::Vhd, structure, offset, reason)
}

/// `~(sum of the bytes)` with the 4-byte checksum field at `field` counted as zero.
pub(crate) fn ones_complement_sum(bytes: &[u8], field: usize) -> u32 {
    let sum = bytes
        .iter()
        .enumerate()
        .filter(|(i, _)| !(field..field + 4).contains(i))
        .fold(0u32, |sum, (_, &b)| sum.wrapping_add(u32::from(b)));
    !sum
}

pub(crate) fn detect(src: &Source) -> Detection {
    let len = src.len();
    if len < FOOTER_LEN {
        return Ok(None);
    }
    // The footer at the end is authoritative; dynamic disks also keep a copy at offset 0.
    let end_offset = len - FOOTER_LEN;
    let at_end = src.read("vhd footer", end_offset, FOOTER_LEN)?;
    let at_start = src.read("vhd footer copy", 0, FOOTER_LEN)?;
    let (footer_offset, bytes) = if at_end[..8] == COOKIE {
        (end_offset, at_end)
    } else if at_start[..8] == COOKIE {
        (0, at_start)
    } else {
        return Ok(None);
    };
    let footer: FooterRaw = parse_prefix("vhd footer", footer_offset, &bytes)?;
    let expected = ones_complement_sum(&bytes, 64);
    if footer.checksum.get() != expected {
        return Err(invalid(
            "footer",
            footer_offset,
            format!(
                "checksum {:#010x} does not match the computed {expected:#010x}",
                footer.checksum.get()
            ),
        ));
    }
    let mut found = Probe::new(Format::Vhd);
    found.virtual_size = Some(virtual_size(&footer));
    match footer.disk_type.get() {
        TYPE_FIXED => {
            found.subformat = Some(FIXED.into());
            let size = footer.current_size.get();
            if footer_offset != end_offset || size > end_offset {
                return Err(invalid(
                    "footer",
                    footer_offset,
                    format!("fixed disk of {size} bytes does not fit in front of the footer"),
                ));
            }
        }
        kind @ (TYPE_DYNAMIC | TYPE_DIFFERENCING) => {
            let differencing = kind == TYPE_DIFFERENCING;
            found.subformat = Some(
                if differencing {
                    "differencing"
                } else {
                    "dynamic"
                }
                .into(),
            );
            dynamic(src, &footer, differencing, &mut found)?;
        }
        other => {
            return Err(invalid(
                "footer",
                footer_offset + 60,
                format!("unknown disk type {other}"),
            ));
        }
    }
    Ok(Some(found))
}

/// qemu ≥ 10: C·H·S·512 for creators "vpc " and "qemu" unless CHS is the maximum; otherwise
/// current_size.
fn virtual_size(footer: &FooterRaw) -> u64 {
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

fn dynamic(
    src: &Source,
    footer: &FooterRaw,
    differencing: bool,
    found: &mut Probe,
) -> Result<(), ProbeError> {
    let offset = footer.data_offset.get();
    let header: DynamicHeaderRaw = src.read_struct("vhd dynamic header", offset)?;
    if header.cookie != DYNAMIC_COOKIE {
        return Err(invalid(
            "dynamic header",
            offset,
            "cookie is not 'cxsparse'",
        ));
    }
    let block_size = header.block_size.get();
    if !block_size.is_power_of_two() || u64::from(block_size) < SECTOR {
        return Err(invalid(
            "dynamic header",
            offset + 32,
            format!("block size {block_size} is not a power of 2 of at least 512"),
        ));
    }
    let entries = header.max_table_entries.get();
    if entries > MAX_TABLE_ENTRIES {
        return Err(invalid(
            "dynamic header",
            offset + 28,
            format!("{entries} BAT entries exceed {MAX_TABLE_ENTRIES}"),
        ));
    }
    let size = footer.current_size.get();
    if u64::from(entries) * u64::from(block_size) < size {
        return Err(invalid(
            "dynamic header",
            offset + 28,
            format!("{entries} blocks of {block_size} bytes cannot hold {size} bytes"),
        ));
    }
    check_bat(src, header.table_offset.get(), entries, block_size)?;
    if differencing {
        parents(src, &header, found);
    }
    Ok(())
}

/// qemu's open-time BAT check: every allocated block (bitmap + data) must end inside the
/// image. Only the entries inside the inspection prefix are checked.
fn check_bat(
    src: &Source,
    table_offset: u64,
    entries: u32,
    block_size: u32,
) -> Result<(), ProbeError> {
    let bat_bytes = u64::from(entries) * 4;
    if table_offset
        .checked_add(bat_bytes)
        .is_none_or(|end| end > src.len())
    {
        return Err(ProbeError::Truncated {
            structure: "vhd block allocation table",
            offset: table_offset,
            length: bat_bytes,
            image_len: src.len(),
        });
    }
    let readable = src
        .readable_prefix_end()
        .saturating_sub(table_offset)
        .min(bat_bytes)
        / 4
        * 4;
    if readable == 0 {
        return Ok(());
    }
    let bat = src.read("vhd block allocation table", table_offset, readable)?;
    let bitmap_bytes = (u64::from(block_size) / SECTOR)
        .div_ceil(8)
        .next_multiple_of(SECTOR);
    for (index, entry) in bat.chunks_exact(4).enumerate() {
        let sector = u32::from_be_bytes([entry[0], entry[1], entry[2], entry[3]]);
        if sector == UNALLOCATED {
            continue;
        }
        let end = u64::from(sector) * SECTOR + bitmap_bytes + u64::from(block_size);
        if end > src.len() {
            return Err(invalid(
                "block allocation table",
                table_offset + index as u64 * 4,
                format!("block {index} at sector {sector} ends past the end of the image"),
            ));
        }
    }
    Ok(())
}

/// Differencing disks name their parent (UTF-16BE) and carry up to eight locators.
fn parents(src: &Source, header: &DynamicHeaderRaw, found: &mut Probe) {
    let name = utf16_name(&header.parent_unicode_name, true);
    if !name.is_empty() {
        found
            .references
            .push(FileReference::new(ReferenceKind::VhdParent, name));
    }
    for locator in &header.parent_locators {
        let length = locator.data_length.get();
        if locator.platform_code == [0; 4] || length == 0 || length > MAX_LOCATOR_BYTES {
            continue;
        }
        let data = src
            .read(
                "vhd parent locator",
                locator.data_offset.get(),
                u64::from(length),
            )
            .ok();
        let target = match (&locator.platform_code, data.as_deref()) {
            (b"W2ku" | b"W2ru", Some(data)) => utf16_name(data, false),
            (b"Mac " | b"MacX", Some(data)) => lossy_name(data),
            (code, _) => format!(
                "(locator {} at offset {})",
                String::from_utf8_lossy(code),
                locator.data_offset.get()
            ),
        };
        found
            .references
            .push(FileReference::new(ReferenceKind::VhdParent, target));
    }
    if found.references.is_empty() {
        found.references.push(FileReference::new(
            ReferenceKind::VhdParent,
            "(parent not named)",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::probe;

    /// A footer: creator "qemu", 1 MiB current size, CHS 16/4/32 (= 1 MiB), given type.
    fn footer(disk_type: u32, data_offset: u64) -> [u8; 512] {
        let mut f = [0u8; 512];
        f[0..8].copy_from_slice(b"conectix");
        f[8..12].copy_from_slice(&2u32.to_be_bytes()); // features
        f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes()); // version
        f[16..24].copy_from_slice(&data_offset.to_be_bytes());
        f[28..32].copy_from_slice(b"qemu"); // creator app
        f[40..48].copy_from_slice(&(1u64 << 20).to_be_bytes()); // original size
        f[48..56].copy_from_slice(&(1u64 << 20).to_be_bytes()); // current size
        f[56..58].copy_from_slice(&16u16.to_be_bytes()); // cylinders
        f[58] = 4; // heads
        f[59] = 32; // sectors per track
        f[60..64].copy_from_slice(&disk_type.to_be_bytes());
        let sum = ones_complement_sum(&f, 64);
        f[64..68].copy_from_slice(&sum.to_be_bytes());
        f
    }

    fn fixed() -> Vec<u8> {
        let mut b = vec![0u8; 1 << 20];
        b.extend_from_slice(&footer(TYPE_FIXED, u64::MAX));
        b
    }

    /// footer copy, dynamic header at 512 (BAT at 1536, 1 entry of 2 MiB blocks), footer.
    fn dynamic_image(disk_type: u32) -> Vec<u8> {
        let mut b = vec![0u8; 2048];
        b[..512].copy_from_slice(&footer(disk_type, 512));
        b[512..520].copy_from_slice(b"cxsparse");
        b[520..528].copy_from_slice(&u64::MAX.to_be_bytes()); // data offset
        b[528..536].copy_from_slice(&1536u64.to_be_bytes()); // table offset
        b[540..544].copy_from_slice(&1u32.to_be_bytes()); // max table entries
        b[544..548].copy_from_slice(&(2u32 << 20).to_be_bytes()); // block size
        b[1536..1540].copy_from_slice(&UNALLOCATED.to_be_bytes());
        b.extend_from_slice(&footer(disk_type, 512));
        b
    }

    #[test]
    fn fixed_disk_has_its_footer_at_the_end() {
        let found = probe(&fixed()).unwrap();
        assert_eq!(found.format, Format::Vhd);
        assert_eq!(found.subformat.as_deref(), Some("fixed"));
        assert_eq!(found.virtual_size, Some(1 << 20));
        assert!(found.check_declared("raw").is_err());
        assert_eq!(found.check_declared("vhd"), Ok(()));
    }

    #[test]
    fn dynamic_disk() {
        let found = probe(&dynamic_image(TYPE_DYNAMIC)).unwrap();
        assert_eq!(found.subformat.as_deref(), Some("dynamic"));
        assert_eq!(found.check_declared("vhd"), Ok(()));
    }

    #[test]
    fn differencing_disk_reports_its_parent() {
        let mut b = dynamic_image(TYPE_DIFFERENCING);
        let name: Vec<u8> = "..\\base.vhd"
            .encode_utf16()
            .flat_map(u16::to_be_bytes)
            .collect();
        b[512 + 64..512 + 64 + name.len()].copy_from_slice(&name);
        let found = probe(&b).unwrap();
        assert_eq!(found.references[0].target, "..\\base.vhd");
        assert!(found.check_declared("vhd").is_err());
    }

    #[test]
    fn corrupt_disks_are_errors() {
        let mut b = fixed();
        let last = b.len() - 1;
        b[last] ^= 1; // checksum no longer matches
        assert!(probe(&b).is_err());

        let mut b = dynamic_image(TYPE_DYNAMIC);
        b[1536..1540].copy_from_slice(&0x7fff_0000u32.to_be_bytes()); // block past the end
        assert!(probe(&b).is_err());

        let mut b = dynamic_image(TYPE_DYNAMIC);
        b[544..548].copy_from_slice(&(3u32 << 20).to_be_bytes());
        assert!(probe(&b).is_err());
    }
}
