//! VHD writer: qemu's layout (footer copy at 0, dynamic header at 512, BAT at 1536, blocks of
//! bitmap + data appended in ascending order, footer at the end) or a fixed disk (data, then
//! the footer). Sizes follow qemu: the disk grows to the next CHS-representable size unless
//! `force_size=on`. Output is deterministic: the unique id is derived from the size and the
//! allocation map, the timestamp is 0 (2000-01-01).

use std::sync::Arc;

use zerocopy::IntoBytes;
use zerocopy::byteorder::{BigEndian, U32, U64};

use super::header::{
    COOKIE, DYNAMIC_CHECKSUM_OFFSET, DYNAMIC_COOKIE, DynamicHeaderRaw, FEATURES_RESERVED,
    FOOTER_CHECKSUM_OFFSET, FOOTER_LEN, FORMAT_VERSION, FooterRaw, MAX_CHS, MAX_CHS_SECTORS,
    NO_DATA_OFFSET, SECTOR, TYPE_DYNAMIC, TYPE_FIXED, UNALLOCATED, geometry, ones_complement_sum,
};
use crate::Format;
use crate::disk::DiskError;
use crate::write::qemu_options::{OptionReader, finish_sink, write_at};
use crate::write::{BlockEncoder, CreateOptions, DiskWriter, Sink, derived_id};

const FORMAT: Format = Format::Vhd;
/// qemu's (and Hyper-V's) block size.
const BLOCK_SIZE: u64 = 2 << 20;
/// VHD's maximum disk size as qemu enforces it (2040 GiB).
const MAX_SIZE: u64 = 2040 << 30;
const DYNAMIC_HEADER_OFFSET: u64 = 512;
const BAT_OFFSET: u64 = 1536;
/// qemu writes creator version 5.3 and host OS "Wi2k".
const CREATOR_VERSION: u32 = 0x0005_0003;
const CREATOR_OS: [u8; 4] = *b"Wi2k";
/// The bitmap in front of each 2 MiB block: 4096 sectors → 512 bytes, all set.
const BITMAP: [u8; 512] = [0xFF; 512];

/// Size and geometry the footer records.
struct Sizing {
    size: u64,
    chs: (u16, u8, u8),
    creator: [u8; 4],
}

/// qemu's `calculate_rounded_image_size`: grow the sector count until CHS covers it, then use
/// C·H·S as the size — unless CHS hits its maximum, where the exact size stays.
fn sizing(requested: u64, force_size: bool) -> Result<Sizing, DiskError> {
    let size = requested.next_multiple_of(SECTOR);
    if size > MAX_SIZE {
        return Err(DiskError::too_large(FORMAT, "virtual size", size, MAX_SIZE));
    }
    if force_size {
        return Ok(Sizing {
            size,
            chs: MAX_CHS,
            creator: *b"qem2",
        });
    }
    let sectors = size / SECTOR;
    let mut chs = geometry(sectors);
    let mut extra = 0;
    while chs_sectors(chs) < sectors && chs_sectors(chs) < MAX_CHS_SECTORS {
        extra += 1;
        chs = geometry(sectors + extra);
    }
    let size = if chs == MAX_CHS || chs_sectors(chs) < sectors {
        size
    } else {
        chs_sectors(chs) * SECTOR
    };
    Ok(Sizing {
        size,
        chs,
        creator: *b"qemu",
    })
}

fn chs_sectors((c, h, s): (u16, u8, u8)) -> u64 {
    u64::from(c) * u64::from(h) * u64::from(s)
}

pub(crate) struct VhdWriter {
    sink: Box<dyn Sink>,
    sizing: Sizing,
    dynamic: bool,
    /// Dynamic: per block, the sector of its bitmap.
    bat: Vec<u32>,
    /// Dynamic: where the next block goes.
    next_free: u64,
}

impl VhdWriter {
    pub(crate) fn create(
        sink: Box<dyn Sink>,
        virtual_size: u64,
        options: &CreateOptions,
    ) -> Result<VhdWriter, DiskError> {
        let mut reader = OptionReader::new(FORMAT, &options.options);
        let dynamic = reader.choice("subformat", &["dynamic", "fixed"], "dynamic")? == "dynamic";
        let force_size = reader.flag("force_size", false)?;
        reader.finish()?;
        let sizing = sizing(virtual_size, force_size)?;
        let entries = sizing.size.div_ceil(BLOCK_SIZE);
        let bat_len = (entries * 4).next_multiple_of(SECTOR);
        Ok(VhdWriter {
            sink,
            dynamic,
            bat: if dynamic {
                vec![UNALLOCATED; entries as usize]
            } else {
                Vec::new()
            },
            next_free: BAT_OFFSET + bat_len,
            sizing,
        })
    }

    fn footer(&self) -> [u8; 512] {
        let mut raw = FooterRaw {
            cookie: COOKIE,
            features: U32::new(FEATURES_RESERVED),
            version: U32::new(FORMAT_VERSION),
            data_offset: U64::new(if self.dynamic {
                DYNAMIC_HEADER_OFFSET
            } else {
                NO_DATA_OFFSET
            }),
            timestamp: U32::new(0),
            creator_app: self.sizing.creator,
            creator_version: U32::new(CREATOR_VERSION),
            creator_os: CREATOR_OS,
            original_size: U64::new(self.sizing.size),
            current_size: U64::new(self.sizing.size),
            cylinders: self.sizing.chs.0.into(),
            heads: self.sizing.chs.1,
            sectors_per_track: self.sizing.chs.2,
            disk_type: U32::new(if self.dynamic {
                TYPE_DYNAMIC
            } else {
                TYPE_FIXED
            }),
            checksum: U32::new(0),
            unique_id: self.unique_id(),
            saved_state: 0,
            reserved: [0; 427],
        };
        let sum = ones_complement_sum(raw.as_bytes(), FOOTER_CHECKSUM_OFFSET);
        raw.checksum = U32::new(sum);
        let mut out = [0u8; 512];
        out.copy_from_slice(raw.as_bytes());
        out
    }

    /// Derived from the size, type and allocation map.
    fn unique_id(&self) -> [u8; 16] {
        derived_id(&[
            b"vhd",
            &self.sizing.size.to_be_bytes(),
            &[u8::from(self.dynamic)],
            self.bat.as_bytes(),
        ])
    }

    fn dynamic_header(&self) -> [u8; 1024] {
        let mut raw = DynamicHeaderRaw {
            cookie: DYNAMIC_COOKIE,
            data_offset: U64::new(NO_DATA_OFFSET),
            table_offset: U64::new(BAT_OFFSET),
            header_version: U32::new(FORMAT_VERSION),
            max_table_entries: U32::new(self.bat.len() as u32),
            block_size: U32::new(BLOCK_SIZE as u32),
            checksum: U32::new(0),
            parent_unique_id: [0; 16],
            parent_timestamp: U32::new(0),
            reserved: U32::new(0),
            parent_unicode_name: [0; 512],
            parent_locators: zerocopy::FromZeros::new_zeroed(),
            reserved2: [0; 256],
        };
        let sum = ones_complement_sum(raw.as_bytes(), DYNAMIC_CHECKSUM_OFFSET);
        raw.checksum = U32::<BigEndian>::new(sum);
        let mut out = [0u8; 1024];
        out.copy_from_slice(raw.as_bytes());
        out
    }

    fn write(&self, structure: &'static str, offset: u64, bytes: &[u8]) -> Result<(), DiskError> {
        write_at(self.sink.as_ref(), structure, offset, bytes)
    }
}

impl DiskWriter for VhdWriter {
    fn block_size(&self) -> u64 {
        BLOCK_SIZE
    }

    fn encoder(&self) -> Option<Arc<dyn BlockEncoder>> {
        None
    }

    fn write_block(
        &mut self,
        offset: u64,
        data: &[u8],
        _encoded: Option<Vec<u8>>,
    ) -> Result<(), DiskError> {
        if !self.dynamic {
            return self.write("fixed disk data", offset, data);
        }
        let index = (offset / BLOCK_SIZE) as usize;
        let slot = self.bat.get_mut(index).ok_or_else(|| {
            DiskError::unsupported(format!("block at {offset} lies past the end of the disk"))
        })?;
        let bitmap_at = self.next_free;
        *slot = u32::try_from(bitmap_at / SECTOR).map_err(|_| {
            DiskError::too_large(
                FORMAT,
                "block offset",
                bitmap_at,
                u64::from(u32::MAX) * SECTOR,
            )
        })?;
        self.next_free = bitmap_at + BITMAP.len() as u64 + BLOCK_SIZE;
        self.write("block bitmap", bitmap_at, &BITMAP)?;
        self.write("block data", bitmap_at + BITMAP.len() as u64, data)
    }

    fn finish(self: Box<Self>) -> Result<(), DiskError> {
        let footer = self.footer();
        let end = if self.dynamic {
            self.write("footer copy", 0, &footer)?;
            self.write(
                "dynamic header",
                DYNAMIC_HEADER_OFFSET,
                &self.dynamic_header(),
            )?;
            let mut bat: Vec<u8> = self.bat.iter().flat_map(|e| e.to_be_bytes()).collect();
            bat.resize(bat.len().next_multiple_of(SECTOR as usize), 0xFF);
            self.write("block allocation table", BAT_OFFSET, &bat)?;
            self.next_free
        } else {
            self.sizing.size
        };
        self.write("footer", end, &footer)?;
        finish_sink(self.sink.as_ref(), end + FOOTER_LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_grow_to_chs_like_qemu() {
        let s = sizing(64 << 20, false).unwrap();
        assert_eq!((s.size, s.chs), (67_125_248, (964, 8, 17)));
        // odd.raw rounded to 512: qemu's odd.vhd has 10 514 432 bytes.
        assert_eq!(sizing(10_487_808, false).unwrap().size, 10_514_432);
        let s = sizing(64 << 20, true).unwrap();
        assert_eq!((s.size, s.chs, &s.creator), (64 << 20, MAX_CHS, b"qem2"));
        assert!(sizing(MAX_SIZE + 512, false).is_err());
    }
}
