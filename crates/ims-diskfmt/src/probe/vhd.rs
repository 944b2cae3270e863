//! VHD ("vpc") inspection: the big-endian footer, the dynamic header and its BAT, and the
//! parent fields of differencing disks.

use super::source::{Source, lossy_name, utf16_name};
use super::{Detection, FileReference, Probe, ProbeError, ReferenceKind};
use crate::Format;
use crate::vhd::header::{DynamicHeaderRaw, FOOTER_LEN, SECTOR, UNALLOCATED};
use crate::vhd::parser::{DiskType, Footer, parse_dynamic, parse_footer};

pub(crate) const FIXED: &str = "fixed";
/// Parent locator data longer than this is not a path.
const MAX_LOCATOR_BYTES: u32 = 4096;

fn invalid(structure: &'static str, offset: u64, reason: impl Into<String>) -> ProbeError {
    ProbeError::invalid(Format::Vhd, structure, offset, reason)
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
    let (footer_offset, bytes) = if at_end[..8] == crate::vhd::header::COOKIE {
        (end_offset, at_end)
    } else if at_start[..8] == crate::vhd::header::COOKIE {
        (0, at_start)
    } else {
        return Ok(None);
    };
    let footer = parse_footer(&bytes, footer_offset)?;
    let mut found = Probe::new(Format::Vhd);
    found.virtual_size = Some(footer.virtual_size);
    found.subformat = Some(footer.disk_type.as_str().into());
    match footer.disk_type {
        DiskType::Fixed => {
            let size = footer.virtual_size;
            if footer_offset != end_offset || size > end_offset {
                return Err(invalid(
                    "footer",
                    footer_offset,
                    format!("fixed disk of {size} bytes does not fit in front of the footer"),
                ));
            }
        }
        DiskType::Dynamic | DiskType::Differencing => {
            dynamic(src, &footer, &mut found)?;
        }
    }
    Ok(Some(found))
}

fn dynamic(src: &Source, footer: &Footer, found: &mut Probe) -> Result<(), ProbeError> {
    let offset = footer.raw.data_offset.get();
    let bytes = src.read("vhd dynamic header", offset, 1024)?;
    let (header, layout) = parse_dynamic(&bytes, offset, footer.virtual_size)?;
    check_bat(src, layout.table_offset, layout.entries, layout.block_size)?;
    if footer.disk_type == DiskType::Differencing {
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
    use crate::vhd::header::{TYPE_DIFFERENCING, TYPE_DYNAMIC, TYPE_FIXED, ones_complement_sum};

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
