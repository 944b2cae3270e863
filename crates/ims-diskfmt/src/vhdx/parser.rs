//! VHDX structure validation shared by the probe and the reader: headers, region table,
//! metadata table and items, parent locator, BAT geometry. Each function takes bytes already
//! read (or a reader callback for the metadata items) and returns a checked model or an
//! [`Invalid`] naming the structure and offset.

use zerocopy::FromBytes;

use super::header::{
    BAT_GUID, FILE_PARAMETERS_GUID, FILE_PARAMETERS_HAS_PARENT, FILE_PARAMETERS_LEAVE_ALLOCATED,
    HEADER_SECTION_END, HEADER_SIGNATURE, HeaderRaw, KNOWN_METADATA, LOGICAL_SECTOR_GUID,
    LocatorEntryRaw, LocatorHeaderRaw, MAX_BLOCK_SIZE, MAX_METADATA_ITEM, MAX_TABLE_ENTRIES,
    MAX_VIRTUAL_SIZE, METADATA_FLAG_REQUIRED, METADATA_GUID, METADATA_SIGNATURE,
    METADATA_TABLE_LEN, MIB, MIN_BLOCK_SIZE, MetadataEntryRaw, MetadataTableHeaderRaw,
    PARENT_LOCATOR_GUID, PHYSICAL_SECTOR_GUID, REGION_FLAG_REQUIRED, REGION_SIGNATURE,
    RegionEntryRaw, TableHeaderRaw, VIRTUAL_DISK_SIZE_GUID, crc32c_without_checksum,
};
use crate::Format;
use crate::disk::Invalid;
use crate::probe::source::utf16_name;

/// Parent locator values longer than this are not paths.
const MAX_LOCATOR_VALUE: usize = 64 << 10;
/// Parent locator keys that name a file.
const PARENT_PATH_KEYS: [&str; 3] = ["relative_path", "volume_path", "absolute_win32_path"];

pub(crate) fn invalid(structure: &'static str, offset: u64, reason: impl Into<String>) -> Invalid {
    Invalid::new(Format::Vhdx, structure, offset, reason)
}

fn parse<T: FromBytes>(bytes: &[u8], structure: &'static str, offset: u64) -> Result<T, Invalid> {
    T::read_from_prefix(bytes)
        .map(|(value, _)| value)
        .map_err(|_| invalid(structure, offset, "truncated"))
}

fn sub(bytes: &[u8], start: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(start).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    bytes.get(start..end)
}

/// The header in `bytes` if its signature, CRC-32C and version are valid.
pub(crate) fn valid_header(bytes: &[u8]) -> Option<HeaderRaw> {
    let header: HeaderRaw = parse(bytes, "header", 0).ok()?;
    (header.signature == HEADER_SIGNATURE
        && header.checksum.get() == crc32c_without_checksum(bytes)
        && header.version.get() == 1)
        .then_some(header)
}

/// The active header: the valid one with the larger sequence number (MS-VHDX 2.2.2.1).
pub(crate) fn active_header(
    first: Option<HeaderRaw>,
    second: Option<HeaderRaw>,
    offset: u64,
) -> Result<(usize, HeaderRaw), Invalid> {
    match (first, second) {
        (Some(a), Some(b)) if b.sequence_number.get() > a.sequence_number.get() => Ok((1, b)),
        (Some(a), _) => Ok((0, a)),
        (None, Some(b)) => Ok((1, b)),
        (None, None) => Err(invalid(
            "header",
            offset,
            "neither header has a valid signature, CRC-32C and version",
        )),
    }
}

/// A region of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Region {
    pub offset: u64,
    pub length: u64,
}

impl Region {
    pub(crate) fn end(&self) -> u64 {
        self.offset + self.length
    }

    pub(crate) fn overlaps(&self, offset: u64, length: u64) -> bool {
        offset < self.end() && self.offset < offset.saturating_add(length)
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Regions {
    pub bat: Region,
    pub metadata: Region,
}

/// Parses the 64 KiB region table read at `offset` of a `file_len`-byte image.
pub(crate) fn parse_region_table(
    bytes: &[u8],
    offset: u64,
    file_len: u64,
) -> Result<Regions, Invalid> {
    let header: TableHeaderRaw = parse(bytes, "region table", offset)?;
    if header.signature != REGION_SIGNATURE
        || header.checksum.get() != crc32c_without_checksum(bytes)
    {
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
        let entry: RegionEntryRaw = parse(
            sub(bytes, at, 32).unwrap_or(&[]),
            "region table entry",
            offset + at,
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
            || end.is_none_or(|end| end > file_len)
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
        if seen
            .iter()
            .any(|r| r.overlaps(region.offset, region.length))
        {
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

/// The metadata facts a reader needs.
#[derive(Debug, Clone)]
pub(crate) struct MetadataItems {
    pub block_size: u32,
    pub leave_blocks_allocated: bool,
    pub has_parent: bool,
    pub virtual_size: u64,
    pub logical_sector_size: u32,
    pub parent_paths: Vec<String>,
}

impl MetadataItems {
    /// Payload blocks per sector bitmap block: 2^23 × logical sector size / block size.
    pub(crate) fn chunk_ratio(&self) -> u64 {
        ((1u64 << 23) * u64::from(self.logical_sector_size)) / u64::from(self.block_size)
    }

    pub(crate) fn data_blocks(&self) -> u64 {
        self.virtual_size.div_ceil(u64::from(self.block_size))
    }

    /// BAT entries (payload + interleaved sector bitmap entries).
    pub(crate) fn bat_entries(&self) -> u64 {
        let (blocks, ratio) = (self.data_blocks(), self.chunk_ratio());
        if self.has_parent {
            blocks.div_ceil(ratio) * (ratio + 1)
        } else {
            blocks + blocks.saturating_sub(1) / ratio
        }
    }

    /// BAT index of payload block `block`.
    pub(crate) fn bat_index(&self, block: u64) -> u64 {
        block + block / self.chunk_ratio()
    }
}

/// Parses the metadata table (`table`, the first 64 KiB of `region`) and its items, read
/// through `read_item(offset, length)`.
pub(crate) fn parse_metadata<E: From<Invalid>>(
    table: &[u8],
    region: Region,
    mut read_item: impl FnMut(u64, u64) -> Result<Vec<u8>, E>,
) -> Result<MetadataItems, E> {
    let header: MetadataTableHeaderRaw = parse(table, "metadata table", region.offset)?;
    if header.signature != METADATA_SIGNATURE {
        return Err(invalid("metadata table", region.offset, "bad signature").into());
    }
    let count = u32::from(header.entry_count.get());
    if count > MAX_TABLE_ENTRIES {
        return Err(invalid(
            "metadata table",
            region.offset + 10,
            format!("{count} entries exceed {MAX_TABLE_ENTRIES}"),
        )
        .into());
    }
    let mut items: Vec<([u8; 16], Vec<u8>, u64)> = Vec::new();
    for i in 0..u64::from(count) {
        let at = 32 + i * 32;
        let entry: MetadataEntryRaw = parse(
            sub(table, at, 32).unwrap_or(&[]),
            "metadata entry",
            region.offset + at,
        )?;
        if !KNOWN_METADATA.contains(&entry.item_id) {
            if entry.flags.get() & METADATA_FLAG_REQUIRED != 0 {
                return Err(invalid(
                    "metadata entry",
                    region.offset + at,
                    "unknown required item",
                )
                .into());
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
            )
            .into());
        }
        let data = read_item(region.offset + item_offset, u64::from(length))?;
        items.push((entry.item_id, data, region.offset + item_offset));
    }
    Ok(metadata_items(&items, region)?)
}

fn metadata_items(
    items: &[([u8; 16], Vec<u8>, u64)],
    region: Region,
) -> Result<MetadataItems, Invalid> {
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
        leave_blocks_allocated: flags & FILE_PARAMETERS_LEAVE_ALLOCATED != 0,
        has_parent,
        virtual_size,
        logical_sector_size,
        parent_paths,
    })
}

/// The path-like values of a parent locator item (UTF-16LE key/value pairs).
fn parent_paths(item: &[u8], at: u64) -> Result<Vec<String>, Invalid> {
    let header: LocatorHeaderRaw = parse(item, "parent locator", at)?;
    let mut paths = Vec::new();
    for i in 0..u64::from(header.key_value_count.get()) {
        let entry_at = 20 + i * 12;
        let Some(raw) = sub(item, entry_at, 12) else {
            return Err(invalid(
                "parent locator",
                at + entry_at,
                "entry lies outside the item",
            ));
        };
        let entry: LocatorEntryRaw = parse(raw, "parent locator entry", at + entry_at)?;
        let key = sub(
            item,
            u64::from(entry.key_offset.get()),
            u64::from(entry.key_length.get()),
        );
        let value_len = usize::from(entry.value_length.get()).min(MAX_LOCATOR_VALUE);
        let value = sub(item, u64::from(entry.value_offset.get()), value_len as u64);
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
