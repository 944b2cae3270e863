//! VHDX inspection: file identifier, the two CRC-protected headers, the region table, the
//! metadata items (size, block size, sector size, parent locator) and the BAT's first entries.

use super::source::Source;
use super::{Detection, FileReference, Probe, ProbeError, ReferenceKind};
use crate::Format;
use crate::vhdx::header::{
    BAT_FULLY_PRESENT, BAT_PARTIALLY_PRESENT, BAT_STATE_MASK, FILE_ID, HEADER_LEN, HEADER_OFFSETS,
    HEADER_SECTION_END, METADATA_TABLE_LEN, REGION_TABLE_LEN, REGION_TABLE_OFFSETS,
};
use crate::vhdx::parser::{
    MetadataItems, Region, Regions, active_header, parse_metadata, parse_region_table, valid_header,
};

fn invalid(structure: &'static str, offset: u64, reason: impl Into<String>) -> ProbeError {
    ProbeError::invalid(Format::Vhdx, structure, offset, reason)
}

pub(crate) fn detect(src: &Source) -> Detection {
    let Some(id) = src.read_if_present("vhdx file identifier", 0, 8)? else {
        return Ok(None);
    };
    if id != FILE_ID {
        return Ok(None);
    }
    let mut found = Probe::new(Format::Vhdx);
    let mut headers = [None, None];
    for (slot, offset) in headers.iter_mut().zip(HEADER_OFFSETS) {
        *slot = valid_header(&src.read("vhdx header", offset, HEADER_LEN)?);
    }
    let [first, second] = headers;
    let (_, header) = active_header(first, second, HEADER_OFFSETS[0])?;
    if header.log_guid != [0; 16] {
        found.fail(
            "log",
            "vhdx header names a log (LogGuid set): the log must be replayed before use",
        );
    }
    let regions = region_table(src)?;
    let table = src.read(
        "vhdx metadata table",
        regions.metadata.offset,
        METADATA_TABLE_LEN,
    )?;
    let items = parse_metadata(&table, regions.metadata, |offset, length| {
        src.read("vhdx metadata item", offset, length)
    })?;
    found.virtual_size = Some(items.virtual_size);
    found.subformat = Some(
        if items.leave_blocks_allocated {
            "fixed"
        } else {
            "dynamic"
        }
        .into(),
    );
    check_bat(src, regions.bat, &items)?;
    if items.has_parent {
        let paths = items.parent_paths;
        if paths.is_empty() {
            found.references.push(FileReference::new(
                ReferenceKind::VhdxParent,
                "(parent locator without a path)",
            ));
        }
        for path in paths {
            found
                .references
                .push(FileReference::new(ReferenceKind::VhdxParent, path));
        }
    }
    Ok(Some(found))
}

/// The first region table with a valid signature and CRC; BAT and metadata regions required.
fn region_table(src: &Source) -> Result<Regions, ProbeError> {
    let mut last_error = None;
    for offset in REGION_TABLE_OFFSETS {
        let bytes = src.read("vhdx region table", offset, REGION_TABLE_LEN)?;
        match parse_region_table(&bytes, offset, src.len()) {
            Ok(regions) => return Ok(regions),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error
        .map(ProbeError::from)
        .unwrap_or_else(|| invalid("region table", REGION_TABLE_OFFSETS[0], "missing")))
}

/// BAT entries inside the inspection prefix: present blocks must lie past the header section
/// and start inside the image (qemu returns header bytes as disk data otherwise).
fn check_bat(src: &Source, bat: Region, items: &MetadataItems) -> Result<(), ProbeError> {
    let chunk_ratio = items.chunk_ratio();
    let entries = items.bat_entries();
    if entries * 8 > bat.length {
        return Err(invalid(
            "BAT region",
            bat.offset,
            format!("{} bytes cannot hold {entries} entries", bat.length),
        ));
    }
    let readable = src
        .readable_prefix_end()
        .saturating_sub(bat.offset)
        .min(entries * 8)
        / 8
        * 8;
    if readable == 0 {
        return Ok(());
    }
    let table = src.read("vhdx BAT", bat.offset, readable)?;
    for (index, raw) in table.chunks_exact(8).enumerate() {
        let is_bitmap_entry = (index as u64 + 1).is_multiple_of(chunk_ratio + 1);
        let entry = u64::from_le_bytes([
            raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw[6], raw[7],
        ]);
        let state = entry & BAT_STATE_MASK;
        if is_bitmap_entry || !(state == BAT_FULLY_PRESENT || state == BAT_PARTIALLY_PRESENT) {
            continue;
        }
        let offset = (entry >> 20) << 20;
        if offset < HEADER_SECTION_END || offset >= src.len() {
            return Err(invalid(
                "BAT",
                bat.offset + index as u64 * 8,
                format!(
                    "entry {index} points at file offset {offset}, inside the header section or past the end"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::probe;
    use crate::vhdx::header::{
        BAT_GUID, FILE_PARAMETERS_GUID, KIB, LOGICAL_SECTOR_GUID, METADATA_GUID, MIB, PAGE83_GUID,
        PHYSICAL_SECTOR_GUID, VIRTUAL_DISK_SIZE_GUID, crc32c_without_checksum,
    };

    /// Builds a minimal dynamic VHDX: 1 MiB blocks, 4 MiB disk, BAT at 1 MiB, metadata at 2 MiB.
    pub(crate) fn image() -> Vec<u8> {
        let mut b = vec![0u8; 3 * MIB as usize];
        b[0..8].copy_from_slice(b"vhdxfile");
        for (seq, offset) in [(1u64, 64 * KIB), (2, 128 * KIB)] {
            let h = offset as usize;
            b[h..h + 4].copy_from_slice(b"head");
            b[h + 8..h + 16].copy_from_slice(&seq.to_le_bytes());
            b[h + 66..h + 68].copy_from_slice(&1u16.to_le_bytes()); // version
            let crc = crc32c_without_checksum(&b[h..h + HEADER_LEN as usize]);
            b[h + 4..h + 8].copy_from_slice(&crc.to_le_bytes());
        }
        for offset in REGION_TABLE_OFFSETS {
            let r = offset as usize;
            b[r..r + 4].copy_from_slice(b"regi");
            b[r + 8..r + 12].copy_from_slice(&2u32.to_le_bytes());
            for (i, (guid, at)) in [(BAT_GUID, MIB), (METADATA_GUID, 2 * MIB)]
                .into_iter()
                .enumerate()
            {
                let e = r + 16 + i * 32;
                b[e..e + 16].copy_from_slice(&guid);
                b[e + 16..e + 24].copy_from_slice(&at.to_le_bytes());
                b[e + 24..e + 28].copy_from_slice(&(MIB as u32).to_le_bytes());
                b[e + 28..e + 32].copy_from_slice(&1u32.to_le_bytes());
            }
            let crc = crc32c_without_checksum(&b[r..r + REGION_TABLE_LEN as usize]);
            b[r + 4..r + 8].copy_from_slice(&crc.to_le_bytes());
        }
        let m = 2 * MIB as usize;
        b[m..m + 8].copy_from_slice(b"metadata");
        b[m + 10..m + 12].copy_from_slice(&5u16.to_le_bytes());
        let items: [([u8; 16], Vec<u8>); 5] = [
            (
                FILE_PARAMETERS_GUID,
                [(MIB as u32).to_le_bytes(), 0u32.to_le_bytes()].concat(),
            ),
            (VIRTUAL_DISK_SIZE_GUID, (4 * MIB).to_le_bytes().to_vec()),
            (PAGE83_GUID, vec![0; 16]),
            (LOGICAL_SECTOR_GUID, 512u32.to_le_bytes().to_vec()),
            (PHYSICAL_SECTOR_GUID, 4096u32.to_le_bytes().to_vec()),
        ];
        for (i, (guid, data)) in items.iter().enumerate() {
            let e = m + 32 + i * 32;
            let item_offset = 64 * KIB as usize + i * 64;
            b[e..e + 16].copy_from_slice(guid);
            b[e + 16..e + 20].copy_from_slice(&(item_offset as u32).to_le_bytes());
            b[e + 20..e + 24].copy_from_slice(&(data.len() as u32).to_le_bytes());
            b[e + 24..e + 28].copy_from_slice(&4u32.to_le_bytes()); // IsRequired
            b[m + item_offset..m + item_offset + data.len()].copy_from_slice(data);
        }
        b
    }

    #[test]
    fn dynamic_vhdx() {
        let found = probe(&image()).unwrap();
        assert_eq!(found.format, Format::Vhdx);
        assert_eq!(found.virtual_size, Some(4 * MIB));
        assert_eq!(found.subformat.as_deref(), Some("dynamic"));
        assert_eq!(found.check_declared("vhdx"), Ok(()));
    }

    #[test]
    fn bad_crcs_and_bat_into_header_are_errors() {
        let mut b = image();
        b[64 * KIB as usize + 20] ^= 1;
        b[128 * KIB as usize + 20] ^= 1;
        assert!(probe(&b).is_err());

        let mut b = image();
        let bat = MIB as usize;
        b[bat..bat + 8].copy_from_slice(&BAT_FULLY_PRESENT.to_le_bytes()); // block 0 at offset 0
        assert!(probe(&b).is_err());
    }

    #[test]
    fn header_with_a_log_fails_the_log_check() {
        let mut b = image();
        let h = 128 * KIB as usize;
        b[h + 48] = 1; // log GUID
        let crc = crc32c_without_checksum(&{
            let mut copy = b[h..h + HEADER_LEN as usize].to_vec();
            copy[4..8].fill(0);
            copy
        });
        b[h + 4..h + 8].copy_from_slice(&crc.to_le_bytes());
        let found = probe(&b).unwrap();
        assert!(found.safety_failures[0].starts_with("log: "));
    }
}
