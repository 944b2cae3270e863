//! VHDX on-disk layouts (MS-VHDX, little-endian): file identifier, headers, region table,
//! metadata table and items, parent locator, log entries, and the GUIDs and CRC-32C rule
//! shared by the probe, reader and writer (`formats.md` §7.6).

use zerocopy::byteorder::{LittleEndian, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

pub(crate) const FILE_ID: [u8; 8] = *b"vhdxfile";
pub(crate) const KIB: u64 = 1 << 10;
pub(crate) const MIB: u64 = 1 << 20;
pub(crate) const HEADER_OFFSETS: [u64; 2] = [64 * KIB, 128 * KIB];
pub(crate) const HEADER_LEN: u64 = 4 * KIB;
pub(crate) const REGION_TABLE_OFFSETS: [u64; 2] = [192 * KIB, 256 * KIB];
pub(crate) const REGION_TABLE_LEN: u64 = 64 * KIB;
/// The header section (file id, headers, region tables) is the first 1 MiB.
pub(crate) const HEADER_SECTION_END: u64 = MIB;
/// MS-VHDX: at most 2047 region table entries and 2047 metadata entries.
pub(crate) const MAX_TABLE_ENTRIES: u32 = 2047;
pub(crate) const METADATA_TABLE_LEN: u64 = 64 * KIB;
/// MS-VHDX: metadata items are at most 1 MiB.
pub(crate) const MAX_METADATA_ITEM: u32 = MIB as u32;
/// Block sizes 1 MiB ..= 256 MiB, powers of 2.
pub(crate) const MIN_BLOCK_SIZE: u32 = MIB as u32;
pub(crate) const MAX_BLOCK_SIZE: u32 = 256 * MIB as u32;
/// MS-VHDX: a virtual disk is at most 64 TiB.
pub(crate) const MAX_VIRTUAL_SIZE: u64 = 64 << 40;
pub(crate) const FILE_PARAMETERS_LEAVE_ALLOCATED: u32 = 1;
pub(crate) const FILE_PARAMETERS_HAS_PARENT: u32 = 1 << 1;
pub(crate) const METADATA_FLAG_IS_VIRTUAL_DISK: u32 = 1 << 1;
pub(crate) const METADATA_FLAG_REQUIRED: u32 = 1 << 2;
pub(crate) const REGION_FLAG_REQUIRED: u32 = 1;
pub(crate) const BAT_STATE_MASK: u64 = 7;
/// Payload block states (`formats.md` §7.6); 5 is the v0.95 draft's UNMAPPED.
pub(crate) const BAT_NOT_PRESENT: u64 = 0;
pub(crate) const BAT_UNDEFINED: u64 = 1;
pub(crate) const BAT_ZERO: u64 = 2;
pub(crate) const BAT_UNMAPPED: u64 = 3;
pub(crate) const BAT_UNMAPPED_DRAFT: u64 = 5;
pub(crate) const BAT_FULLY_PRESENT: u64 = 6;
pub(crate) const BAT_PARTIALLY_PRESENT: u64 = 7;
/// BAT entry bits 20..63: file offset in MiB.
pub(crate) const BAT_OFFSET_MASK: u64 = !(MIB - 1);
pub(crate) const HEADER_SIGNATURE: [u8; 4] = *b"head";
pub(crate) const REGION_SIGNATURE: [u8; 4] = *b"regi";
pub(crate) const METADATA_SIGNATURE: [u8; 8] = *b"metadata";
pub(crate) const LOG_ENTRY_SIGNATURE: [u8; 4] = *b"loge";
pub(crate) const LOG_DATA_DESCRIPTOR: [u8; 4] = *b"desc";
pub(crate) const LOG_ZERO_DESCRIPTOR: [u8; 4] = *b"zero";
pub(crate) const LOG_DATA_SIGNATURE: [u8; 4] = *b"data";
/// Log entries, descriptors areas and data sectors are 4 KiB units.
pub(crate) const LOG_SECTOR: u64 = 4 * KIB;

/// GUIDs in their on-disk (mixed-endian) byte order.
pub(crate) const fn guid(data1: u32, data2: u16, data3: u16, data4: [u8; 8]) -> [u8; 16] {
    let a = data1.to_le_bytes();
    let b = data2.to_le_bytes();
    let c = data3.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], data4[0], data4[1], data4[2], data4[3],
        data4[4], data4[5], data4[6], data4[7],
    ]
}

pub(crate) const BAT_GUID: [u8; 16] = guid(
    0x2DC2_7766,
    0xF623,
    0x4200,
    [0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08],
);
pub(crate) const METADATA_GUID: [u8; 16] = guid(
    0x8B7C_A206,
    0x4790,
    0x4B9A,
    [0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E],
);
pub(crate) const FILE_PARAMETERS_GUID: [u8; 16] = guid(
    0xCAA1_6737,
    0xFA36,
    0x4D43,
    [0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B],
);
pub(crate) const VIRTUAL_DISK_SIZE_GUID: [u8; 16] = guid(
    0x2FA5_4224,
    0xCD1B,
    0x4876,
    [0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8],
);
pub(crate) const PAGE83_GUID: [u8; 16] = guid(
    0xBECA_12AB,
    0xB2E6,
    0x4523,
    [0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46],
);
pub(crate) const LOGICAL_SECTOR_GUID: [u8; 16] = guid(
    0x8141_BF1D,
    0xA96F,
    0x4709,
    [0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F],
);
pub(crate) const PHYSICAL_SECTOR_GUID: [u8; 16] = guid(
    0xCDA3_48C7,
    0x445D,
    0x4471,
    [0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56],
);
pub(crate) const PARENT_LOCATOR_GUID: [u8; 16] = guid(
    0xA8D3_5F2D,
    0xB30B,
    0x454D,
    [0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C],
);
pub(crate) const KNOWN_METADATA: [[u8; 16]; 6] = [
    FILE_PARAMETERS_GUID,
    VIRTUAL_DISK_SIZE_GUID,
    PAGE83_GUID,
    LOGICAL_SECTOR_GUID,
    PHYSICAL_SECTOR_GUID,
    PARENT_LOCATOR_GUID,
];

/// CRC-32C of `bytes` with the 4-byte checksum field at offset 4 counted as zero.
pub(crate) fn crc32c_without_checksum(bytes: &[u8]) -> u32 {
    if bytes.len() < 8 {
        return crc32c::crc32c(bytes);
    }
    let crc = crc32c::crc32c(&bytes[..4]);
    let crc = crc32c::crc32c_append(crc, &[0; 4]);
    crc32c::crc32c_append(crc, &bytes[8..])
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone)]
#[repr(C)]
pub(crate) struct HeaderRaw {
    pub signature: [u8; 4],
    pub checksum: U32<LittleEndian>,
    pub sequence_number: U64<LittleEndian>,
    pub file_write_guid: [u8; 16],
    pub data_write_guid: [u8; 16],
    pub log_guid: [u8; 16],
    pub log_version: U16<LittleEndian>,
    pub version: U16<LittleEndian>,
    pub log_length: U32<LittleEndian>,
    pub log_offset: U64<LittleEndian>,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone)]
#[repr(C)]
pub(crate) struct TableHeaderRaw {
    pub signature: [u8; 4],
    pub checksum: U32<LittleEndian>,
    pub entry_count: U32<LittleEndian>,
    pub reserved: U32<LittleEndian>,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone)]
#[repr(C)]
pub(crate) struct RegionEntryRaw {
    pub guid: [u8; 16],
    pub file_offset: U64<LittleEndian>,
    pub length: U32<LittleEndian>,
    pub flags: U32<LittleEndian>,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone)]
#[repr(C)]
pub(crate) struct MetadataTableHeaderRaw {
    pub signature: [u8; 8],
    pub reserved: U16<LittleEndian>,
    pub entry_count: U16<LittleEndian>,
    pub reserved2: [u8; 20],
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone)]
#[repr(C)]
pub(crate) struct MetadataEntryRaw {
    pub item_id: [u8; 16],
    pub offset: U32<LittleEndian>,
    pub length: U32<LittleEndian>,
    pub flags: U32<LittleEndian>,
    pub reserved: U32<LittleEndian>,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone)]
#[repr(C)]
pub(crate) struct LocatorHeaderRaw {
    pub locator_type: [u8; 16],
    pub reserved: U16<LittleEndian>,
    pub key_value_count: U16<LittleEndian>,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone)]
#[repr(C)]
pub(crate) struct LocatorEntryRaw {
    pub key_offset: U32<LittleEndian>,
    pub value_offset: U32<LittleEndian>,
    pub key_length: U16<LittleEndian>,
    pub value_length: U16<LittleEndian>,
}

/// The 64-byte header of a log entry.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone)]
#[repr(C)]
pub(crate) struct LogEntryHeaderRaw {
    pub signature: [u8; 4],
    pub checksum: U32<LittleEndian>,
    pub entry_length: U32<LittleEndian>,
    pub tail: U32<LittleEndian>,
    pub sequence_number: U64<LittleEndian>,
    pub descriptor_count: U32<LittleEndian>,
    pub reserved: U32<LittleEndian>,
    pub log_guid: [u8; 16],
    pub flushed_file_offset: U64<LittleEndian>,
    pub last_file_offset: U64<LittleEndian>,
}

/// A 32-byte log descriptor: "desc" (a 4 KiB data sector follows the descriptor area) or
/// "zero" (`leading_or_length` bytes of zeros).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone)]
#[repr(C)]
pub(crate) struct LogDescriptorRaw {
    pub signature: [u8; 4],
    /// "desc": the sector's last 4 bytes; "zero": reserved.
    pub trailing_bytes: [u8; 4],
    /// "desc": the sector's first 8 bytes; "zero": the length to zero.
    pub leading_or_length: [u8; 8],
    pub file_offset: U64<LittleEndian>,
    pub sequence_number: U64<LittleEndian>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_their_on_disk_sizes() {
        assert_eq!(size_of::<HeaderRaw>(), 80);
        assert_eq!(size_of::<RegionEntryRaw>(), 32);
        assert_eq!(size_of::<MetadataTableHeaderRaw>(), 32);
        assert_eq!(size_of::<MetadataEntryRaw>(), 32);
        assert_eq!(size_of::<LogEntryHeaderRaw>(), 64);
        assert_eq!(size_of::<LogDescriptorRaw>(), 32);
    }

    #[test]
    fn guids_are_mixed_endian() {
        // 2DC27766-F623-4200-9D64-115E9BFD4A08
        assert_eq!(
            BAT_GUID,
            [
                0x66, 0x77, 0xC2, 0x2D, 0x23, 0xF6, 0x00, 0x42, 0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD,
                0x4A, 0x08
            ]
        );
    }

    #[test]
    fn crc32c_skips_the_checksum_field() {
        // CRC-32C check value of "123456789" is 0xE3069283.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        let mut bytes = *b"head\xff\xff\xff\xff1234";
        let with = crc32c_without_checksum(&bytes);
        bytes[4..8].fill(0);
        assert_eq!(with, crc32c::crc32c(&bytes));
    }
}
