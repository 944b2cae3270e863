//! VHDX inspection: file identifier, the two CRC-protected headers, the region table, the
//! metadata items (size, block size, sector size, parent locator) and the BAT's first entries.

use zerocopy::byteorder::{LittleEndian, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, KnownLayout, Unaligned};

use super::source::{Source, parse_prefix, slice, utf16_name};
use super::{Detection, FileReference, Probe, ProbeError, ReferenceKind};
use crate::Format;

const FILE_ID: [u8; 8] = *b"vhdxfile";
const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const HEADER_OFFSETS: [u64; 2] = [64 * KIB, 128 * KIB];
const HEADER_LEN: u64 = 4 * KIB;
const REGION_TABLE_OFFSETS: [u64; 2] = [192 * KIB, 256 * KIB];
const REGION_TABLE_LEN: u64 = 64 * KIB;
/// The header section (file id, headers, region tables) is the first 1 MiB.
const HEADER_SECTION_END: u64 = MIB;
/// MS-VHDX: at most 2047 region table entries and 2047 metadata entries.
const MAX_TABLE_ENTRIES: u32 = 2047;
const METADATA_TABLE_LEN: u64 = 64 * KIB;
/// MS-VHDX: metadata items are at most 1 MiB.
const MAX_METADATA_ITEM: u32 = MIB as u32;
/// Block sizes 1 MiB ..= 256 MiB, powers of 2.
const MIN_BLOCK_SIZE: u32 = MIB as u32;
const MAX_BLOCK_SIZE: u32 = 256 * MIB as u32;
/// MS-VHDX: a virtual disk is at most 64 TiB.
const MAX_VIRTUAL_SIZE: u64 = 64 << 40;
const FILE_PARAMETERS_HAS_PARENT: u32 = 1 << 1;
const METADATA_FLAG_REQUIRED: u32 = 1 << 2;
const REGION_FLAG_REQUIRED: u32 = 1;
const BAT_STATE_MASK: u64 = 7;
const BAT_FULLY_PRESENT: u64 = 6;
const BAT_PARTIALLY_PRESENT: u64 = 7;
/// Parent locator values longer than this are not paths.
const MAX_LOCATOR_VALUE: u64 = 64 * KIB;

/// GUIDs in their on-disk (mixed-endian) byte order.
const BAT_GUID: [u8; 16] = guid(
    0x2DC2_7766,
    0xF623,
    0x4200,
    [0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08],
);
const METADATA_GUID: [u8; 16] = guid(
    0x8B7C_A206,
    0x4790,
    0x4B9A,
    [0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E],
);
const FILE_PARAMETERS_GUID: [u8; 16] = guid(
    0xCAA1_6737,
    0xFA36,
    0x4D43,
    [0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B],
);
const VIRTUAL_DISK_SIZE_GUID: [u8; 16] = guid(
    0x2FA5_4224,
    0xCD1B,
    0x4876,
    [0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8],
);
const PAGE83_GUID: [u8; 16] = guid(
    0xBECA_12AB,
    0xB2E6,
    0x4523,
    [0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46],
);
const LOGICAL_SECTOR_GUID: [u8; 16] = guid(
    0x8141_BF1D,
    0xA96F,
    0x4709,
    [0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F],
);
const PHYSICAL_SECTOR_GUID: [u8; 16] = guid(
    0xCDA3_48C7,
    0x445D,
    0x4471,
    [0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56],
);
const PARENT_LOCATOR_GUID: [u8; 16] = guid(
    0xA8D3_5F2D,
    0xB30B,
    0x454D,
    [0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C],
);
const KNOWN_METADATA: [[u8; 16]; 6] = [
    FILE_PARAMETERS_GUID,
    VIRTUAL_DISK_SIZE_GUID,
    PAGE83_GUID,
    LOGICAL_SECTOR_GUID,
    PHYSICAL_SECTOR_GUID,
    PARENT_LOCATOR_GUID,
];
/// Parent locator keys that name a file.
const PARENT_PATH_KEYS: [&str; 3] = ["relative_path", "volume_path", "absolute_win32_path"];

const fn guid(data1: u32, data2: u16, data3: u16, data4: [u8; 8]) -> [u8; 16] {
    let a = data1.to_le_bytes();
    let b = data2.to_le_bytes();
    let c = data3.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], data4[0], data4[1], data4[2], data4[3],
        data4[4], data4[5], data4[6], data4[7],
    ]
}

/// CRC-32C (Castagnoli) lookup table.
const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// CRC-32C of `bytes` with the 4-byte checksum field at offset 4 counted as zero.
fn crc32c_without_checksum(bytes: &[u8]) -> u32 {
    let crc = bytes
        .iter()
        .enumerate()
        .fold(0xFFFF_FFFFu32, |crc, (i, &b)| {
            let b = if (4..8).contains(&i) { 0 } else { b };
            CRC32C_TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8)
        });
    !crc
}

#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct HeaderRaw {
    signature: [u8; 4],
    checksum: U32<LittleEndian>,
    sequence_number: U64<LittleEndian>,
    file_write_guid: [u8; 16],
    data_write_guid: [u8; 16],
    log_guid: [u8; 16],
    log_version: U16<LittleEndian>,
    version: U16<LittleEndian>,
    log_length: U32<LittleEndian>,
    log_offset: U64<LittleEndian>,
}

#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct TableHeaderRaw {
    signature: [u8; 4],
    checksum: U32<LittleEndian>,
    entry_count: U32<LittleEndian>,
    reserved: U32<LittleEndian>,
}

#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RegionEntryRaw {
    guid: [u8; 16],
    file_offset: U64<LittleEndian>,
    length: U32<LittleEndian>,
    flags: U32<LittleEndian>,
}

#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct MetadataTableHeaderRaw {
    signature: [u8; 8],
    reserved: U16<LittleEndian>,
    entry_count: U16<LittleEndian>,
    reserved2: [u8; 20],
}

#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct MetadataEntryRaw {
    item_id: [u8; 16],
    offset: U32<LittleEndian>,
    length: U32<LittleEndian>,
    flags: U32<LittleEndian>,
    reserved: U32<LittleEndian>,
}

#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct LocatorHeaderRaw {
    locator_type: [u8; 16],
    reserved: U16<LittleEndian>,
    key_value_count: U16<LittleEndian>,
}

#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct LocatorEntryRaw {
    key_offset: U32<LittleEndian>,
    value_offset: U32<LittleEndian>,
    key_length: U16<LittleEndian>,
    value_length: U16<LittleEndian>,
}

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
    let header = active_header(src)?;
    if header.log_guid != [0; 16] {
        found.fail(
            "log",
            "vhdx header names a log (LogGuid set): the log must be replayed before use",
        );
    }
    let regions = region_table(src)?;
    let (bat, metadata) = (regions.bat, regions.metadata);
    let items = metadata_items(src, metadata)?;
    found.virtual_size = Some(items.virtual_size);
    found.subformat = Some(
        if items.leave_blocks_allocated {
            "fixed"
        } else {
            "dynamic"
        }
        .into(),
    );
    check_bat(src, bat, &items)?;
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

/// The valid header (signature, CRC, version 1) with the larger sequence number.
fn active_header(src: &Source) -> Result<HeaderRaw, ProbeError> {
    let mut best: Option<HeaderRaw> = None;
    for offset in HEADER_OFFSETS {
        let bytes = src.read("vhdx header", offset, HEADER_LEN)?;
        let header: HeaderRaw = parse_prefix("vhdx header", offset, &bytes)?;
        let valid = &header.signature == b"head"
            && header.checksum.get() == crc32c_without_checksum(&bytes)
            && header.version.get() == 1;
        if valid
            && best
                .as_ref()
                .is_none_or(|b| header.sequence_number.get() > b.sequence_number.get())
        {
            best = Some(header);
        }
    }
    best.ok_or_else(|| {
        invalid(
            "header",
            HEADER_OFFSETS[0],
            "neither header has a valid signature, CRC-32C and version",
        )
    })
}

#[derive(Clone, Copy)]
struct Region {
    offset: u64,
    length: u64,
}

struct Regions {
    bat: Region,
    metadata: Region,
}

/// The first region table with a valid signature and CRC; BAT and metadata regions required.
fn region_table(src: &Source) -> Result<Regions, ProbeError> {
    let mut last_error = None;
    for offset in REGION_TABLE_OFFSETS {
        let bytes = src.read("vhdx region table", offset, REGION_TABLE_LEN)?;
        match parse_region_table(src, offset, &bytes) {
            Ok(regions) => return Ok(regions),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| invalid("region table", REGION_TABLE_OFFSETS[0], "missing")))
}

fn parse_region_table(src: &Source, offset: u64, bytes: &[u8]) -> Result<Regions, ProbeError> {
    let header: TableHeaderRaw = parse_prefix("vhdx region table", offset, bytes)?;
    if &header.signature != b"regi" || header.checksum.get() != crc32c_without_checksum(bytes) {
        return Err(invalid("region table", offset, "bad signature or CRC-32C"));
    }
    let count = header.entry_count.get();
    if count > MAX_TABLE_ENTRIES {
        return Err(invalid(
            "region table",
            offset + 8,
            format!("{count} entries exceed {MAX_TABLE_ENTRIES}"),
        ));
    }
    let mut bat = None;
    let mut metadata = None;
    let mut seen: Vec<Region> = Vec::new();
    for i in 0..u64::from(count) {
        let at = 16 + i * 32;
        let entry: RegionEntryRaw = parse_prefix(
            "vhdx region table entry",
            offset + at,
            slice(bytes, at, 32).unwrap_or(&[]),
        )?;
        let region = Region {
            offset: entry.file_offset.get(),
            length: u64::from(entry.length.get()),
        };
        let end = region.offset.checked_add(region.length);
        if !region.offset.is_multiple_of(MIB)
            || !region.length.is_multiple_of(MIB)
            || region.length == 0
            || region.offset < HEADER_SECTION_END
            || end.is_none_or(|end| end > src.len())
        {
            return Err(invalid(
                "region table entry",
                offset + at,
                format!(
                    "region at {} (+{}) is unaligned, inside the header section or past the end",
                    region.offset, region.length
                ),
            ));
        }
        if seen.iter().any(|r| {
            region.offset < r.offset + r.length && r.offset < region.offset + region.length
        }) {
            return Err(invalid(
                "region table entry",
                offset + at,
                "regions overlap",
            ));
        }
        seen.push(region);
        match entry.guid {
            BAT_GUID => bat = Some(region),
            METADATA_GUID => metadata = Some(region),
            _ if entry.flags.get() & REGION_FLAG_REQUIRED != 0 => {
                return Err(invalid(
                    "region table entry",
                    offset + at,
                    "unknown required region",
                ));
            }
            _ => {}
        }
    }
    match (bat, metadata) {
        (Some(bat), Some(metadata)) => Ok(Regions { bat, metadata }),
        _ => Err(invalid(
            "region table",
            offset,
            "BAT or metadata region missing",
        )),
    }
}

struct MetadataItems {
    block_size: u32,
    leave_blocks_allocated: bool,
    has_parent: bool,
    virtual_size: u64,
    logical_sector_size: u32,
    parent_paths: Vec<String>,
}

fn metadata_items(src: &Source, region: Region) -> Result<MetadataItems, ProbeError> {
    let table = src.read("vhdx metadata table", region.offset, METADATA_TABLE_LEN)?;
    let header: MetadataTableHeaderRaw =
        parse_prefix("vhdx metadata table", region.offset, &table)?;
    if &header.signature != b"metadata" {
        return Err(invalid("metadata table", region.offset, "bad signature"));
    }
    let count = u32::from(header.entry_count.get());
    if count > MAX_TABLE_ENTRIES {
        return Err(invalid(
            "metadata table",
            region.offset + 10,
            format!("{count} entries exceed {MAX_TABLE_ENTRIES}"),
        ));
    }
    let mut items: Vec<([u8; 16], Vec<u8>, u64)> = Vec::new();
    for i in 0..u64::from(count) {
        let at = 32 + i * 32;
        let entry: MetadataEntryRaw = parse_prefix(
            "vhdx metadata entry",
            region.offset + at,
            slice(&table, at, 32).unwrap_or(&[]),
        )?;
        let known = KNOWN_METADATA.contains(&entry.item_id);
        if !known {
            if entry.flags.get() & METADATA_FLAG_REQUIRED != 0 {
                return Err(invalid(
                    "metadata entry",
                    region.offset + at,
                    "unknown required item",
                ));
            }
            continue;
        }
        let (item_offset, length) = (u64::from(entry.offset.get()), entry.length.get());
        if length > MAX_METADATA_ITEM
            || item_offset < METADATA_TABLE_LEN
            || item_offset + u64::from(length) > region.length
        {
            return Err(invalid(
                "metadata entry",
                region.offset + at,
                format!("item at {item_offset} (+{length}) lies outside the metadata region"),
            ));
        }
        let data = src.read(
            "vhdx metadata item",
            region.offset + item_offset,
            u64::from(length),
        )?;
        items.push((entry.item_id, data, region.offset + item_offset));
    }
    let find = |id: [u8; 16], name: &'static str, min_len: usize| {
        items
            .iter()
            .find(|(item, data, _)| *item == id && data.len() >= min_len)
            .map(|(_, data, at)| (data.as_slice(), *at))
            .ok_or_else(|| {
                invalid(
                    "metadata",
                    region.offset,
                    format!("required item {name} missing"),
                )
            })
    };
    let u32_at = |d: &[u8], o: usize| u32::from_le_bytes([d[o], d[o + 1], d[o + 2], d[o + 3]]);

    let (params, params_at) = find(FILE_PARAMETERS_GUID, "File Parameters", 8)?;
    let block_size = u32_at(params, 0);
    let flags = u32_at(params, 4);
    if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
        return Err(invalid(
            "File Parameters",
            params_at,
            format!("block size {block_size} is not a power of 2 in 1..=256 MiB"),
        ));
    }
    let (sector, sector_at) = find(LOGICAL_SECTOR_GUID, "Logical Sector Size", 4)?;
    let logical_sector_size = u32_at(sector, 0);
    if logical_sector_size != 512 && logical_sector_size != 4096 {
        return Err(invalid(
            "Logical Sector Size",
            sector_at,
            format!("{logical_sector_size} is not 512 or 4096"),
        ));
    }
    let (physical, physical_at) = find(PHYSICAL_SECTOR_GUID, "Physical Sector Size", 4)?;
    let physical_sector_size = u32_at(physical, 0);
    if physical_sector_size != 512 && physical_sector_size != 4096 {
        return Err(invalid(
            "Physical Sector Size",
            physical_at,
            format!("{physical_sector_size} is not 512 or 4096"),
        ));
    }
    let (size, size_at) = find(VIRTUAL_DISK_SIZE_GUID, "Virtual Disk Size", 8)?;
    let virtual_size = u64::from_le_bytes([
        size[0], size[1], size[2], size[3], size[4], size[5], size[6], size[7],
    ]);
    if virtual_size == 0
        || virtual_size > MAX_VIRTUAL_SIZE
        || virtual_size % u64::from(logical_sector_size) != 0
    {
        return Err(invalid(
            "Virtual Disk Size",
            size_at,
            format!("{virtual_size} is zero, above 64 TiB or not a multiple of the sector size"),
        ));
    }
    let has_parent = flags & FILE_PARAMETERS_HAS_PARENT != 0;
    let parent_paths = match items.iter().find(|(id, _, _)| *id == PARENT_LOCATOR_GUID) {
        Some((_, data, at)) if has_parent => parent_paths(data, *at)?,
        _ => Vec::new(),
    };
    Ok(MetadataItems {
        block_size,
        leave_blocks_allocated: flags & 1 != 0,
        has_parent,
        virtual_size,
        logical_sector_size,
        parent_paths,
    })
}

/// The path-like values of a parent locator item (UTF-16LE key/value pairs).
fn parent_paths(item: &[u8], at: u64) -> Result<Vec<String>, ProbeError> {
    let header: LocatorHeaderRaw = parse_prefix("vhdx parent locator", at, item)?;
    let mut paths = Vec::new();
    for i in 0..u64::from(header.key_value_count.get()) {
        let entry_at = 20 + i * 12;
        let Some(raw) = slice(item, entry_at, 12) else {
            return Err(invalid(
                "parent locator",
                at + entry_at,
                "entry lies outside the item",
            ));
        };
        let entry: LocatorEntryRaw = parse_prefix("vhdx parent locator entry", at + entry_at, raw)?;
        let key = slice(
            item,
            u64::from(entry.key_offset.get()),
            u64::from(entry.key_length.get()),
        );
        let value_len = u64::from(entry.value_length.get()).min(MAX_LOCATOR_VALUE);
        let value = slice(item, u64::from(entry.value_offset.get()), value_len);
        let (Some(key), Some(value)) = (key, value) else {
            return Err(invalid(
                "parent locator",
                at + entry_at,
                "key or value lies outside the item",
            ));
        };
        if PARENT_PATH_KEYS.contains(&utf16_name(key, false).as_str()) {
            paths.push(utf16_name(value, false));
        }
    }
    Ok(paths)
}

/// BAT entries inside the inspection prefix: present blocks must lie past the header section
/// and start inside the image (qemu returns header bytes as disk data otherwise).
fn check_bat(src: &Source, bat: Region, items: &MetadataItems) -> Result<(), ProbeError> {
    let block_size = u64::from(items.block_size);
    let chunk_ratio = ((1u64 << 23) * u64::from(items.logical_sector_size)) / block_size;
    let data_blocks = items.virtual_size.div_ceil(block_size);
    let entries = if items.has_parent {
        data_blocks.div_ceil(chunk_ratio) * (chunk_ratio + 1)
    } else {
        data_blocks + (data_blocks.saturating_sub(1)) / chunk_ratio
    };
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

    #[test]
    fn guids_use_the_mixed_endian_layout() {
        // 2DC27766-F623-4200-9D64-115E9BFD4A08 as stored on disk
        assert_eq!(
            BAT_GUID,
            [
                0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42, 0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd,
                0x4a, 0x08
            ]
        );
    }

    #[test]
    fn crc32c_matches_the_reference_vector() {
        // CRC-32C("123456789") = 0xE3069283 (RFC 3720 appendix B.4's check value).
        let reference = b"123456789".iter().fold(0xFFFF_FFFFu32, |crc, &b| {
            CRC32C_TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8)
        });
        assert_eq!(!reference, 0xE306_9283);
        // The checksum field (bytes 4..8) counts as zero.
        assert_eq!(
            crc32c_without_checksum(b"1234abcd9"),
            crc32c_without_checksum(b"1234\0\0\0\09")
        );
    }

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
