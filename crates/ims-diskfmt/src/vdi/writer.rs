//! VDI writer in qemu's layout: header sector, block map at 0x200, data blocks of 1 MiB from
//! the next sector. Dynamic images append blocks in the order they arrive (ascending, so the
//! image stays in disk order); static images map block i to data block i and leave unwritten
//! blocks as holes. The block map is written page by page as blocks go by: memory stays
//! constant whatever the disk size.

use std::sync::Arc;

use zerocopy::{FromZeros, IntoBytes};

use super::header::{
    BLOCK_SIZE, HEADER_SIZE_1_1, HeaderRaw, QEMU_TEXT, SECTOR, SIGNATURE, TYPE_DYNAMIC,
    TYPE_STATIC, UNALLOCATED, VERSION_1_1,
};
use super::reader::MAX_BMAP_BYTES;
use crate::Format;
use crate::disk::DiskError;
use crate::write::{BlockEncoder, CreateOptions, DiskWriter, Sink};

/// Where qemu puts the block map: right after the header sector.
const BMAP_OFFSET: u64 = 0x200;
/// Block map entries written per sink call (4 KiB).
const BMAP_PAGE_ENTRIES: u64 = 1024;

const FORMAT: Format = Format::Vdi;

fn write_error(structure: &'static str, offset: u64) -> impl FnOnce(std::io::Error) -> DiskError {
    move |source| DiskError::Writing {
        structure,
        offset,
        source,
    }
}

/// Deterministic UUID bytes (RFC 4122 version 8, "custom") from the image's defining values:
/// qemu picks random ones, a reproducible conversion must not. Stored as VDI stores UUIDs,
/// the first three fields little-endian.
fn derive_uuid(seed: &str) -> [u8; 16] {
    let mut state: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.bytes() {
        state = (state ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut next = || {
        // SplitMix64: spreads the FNV state over 128 bits.
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut uuid = [0u8; 16];
    uuid[..8].copy_from_slice(&next().to_be_bytes());
    uuid[8..].copy_from_slice(&next().to_be_bytes());
    uuid[6] = (uuid[6] & 0x0f) | 0x80;
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    uuid[0..4].reverse();
    uuid[4..6].reverse();
    uuid[6..8].reverse();
    uuid
}

/// Starts a VDI of `virtual_size` bytes (rounded up to a sector like qemu).
pub(crate) fn create(
    sink: Box<dyn Sink>,
    virtual_size: u64,
    options: &CreateOptions,
) -> Result<Box<dyn DiskWriter>, DiskError> {
    let mut is_static = false;
    let mut unknown = Vec::new();
    for (key, value) in &options.options {
        match (key.as_str(), value.as_str()) {
            ("static", "on" | "true" | "yes") => is_static = true,
            ("static", "off" | "false" | "no") => is_static = false,
            ("static", other) => {
                return Err(DiskError::unsupported(format!(
                    "vdi option static={other}: expected on or off"
                )));
            }
            _ => unknown.push(key.as_str()),
        }
    }
    if !unknown.is_empty() {
        return Err(DiskError::unsupported(format!(
            "vdi options {} (known: static)",
            unknown.join(", ")
        )));
    }
    if options.compress {
        return Err(DiskError::unsupported("vdi images cannot be compressed"));
    }
    let disk_size = virtual_size.div_ceil(u64::from(SECTOR)) * u64::from(SECTOR);
    let block_size = u64::from(BLOCK_SIZE);
    let blocks = disk_size.div_ceil(block_size);
    let bmap_bytes = (blocks * 4).next_multiple_of(u64::from(SECTOR));
    if bmap_bytes > MAX_BMAP_BYTES {
        return Err(DiskError::TooLarge {
            format: FORMAT,
            structure: "block map",
            value: bmap_bytes,
            limit: MAX_BMAP_BYTES,
        });
    }
    let data_offset = BMAP_OFFSET + bmap_bytes;
    let image_type = if is_static { TYPE_STATIC } else { TYPE_DYNAMIC };
    let mut header = HeaderRaw::new_zeroed();
    header.text[..QEMU_TEXT.len()].copy_from_slice(QEMU_TEXT);
    header.signature.set(SIGNATURE);
    header.version.set(VERSION_1_1);
    header.header_size.set(HEADER_SIZE_1_1);
    header.image_type.set(image_type);
    // Both bounded by MAX_BMAP_BYTES (64 MiB).
    header.offset_bmap.set(BMAP_OFFSET as u32);
    header.offset_data.set(data_offset as u32);
    header.sector_size.set(SECTOR);
    header.disk_size.set(disk_size);
    header.block_size.set(BLOCK_SIZE);
    header.blocks_in_image.set(blocks as u32);
    header.uuid_image = derive_uuid(&format!("image {disk_size} {image_type}"));
    header.uuid_last_snap = derive_uuid(&format!("snapshot {disk_size} {image_type}"));
    Ok(Box::new(VdiWriter {
        sink,
        header,
        blocks,
        is_static,
        data_offset,
        allocated: 0,
        page: Vec::with_capacity(BMAP_PAGE_ENTRIES as usize),
        page_start: 0,
    }))
}

struct VdiWriter {
    sink: Box<dyn Sink>,
    header: HeaderRaw,
    blocks: u64,
    is_static: bool,
    data_offset: u64,
    /// Data blocks used so far (dynamic images).
    allocated: u64,
    /// Block map entries from `page_start` on, not yet written.
    page: Vec<u32>,
    page_start: u64,
}

impl VdiWriter {
    fn entry_for(&self, block: u64) -> u32 {
        if self.is_static {
            block as u32
        } else {
            UNALLOCATED
        }
    }

    /// Writes the block map up to (not including) `block`, filling untouched entries.
    fn flush_map_to(&mut self, block: u64) -> Result<(), DiskError> {
        while self.page_start + (self.page.len() as u64) < block {
            let next = self.page_start + self.page.len() as u64;
            self.page.push(self.entry_for(next));
            if self.page.len() as u64 == BMAP_PAGE_ENTRIES {
                self.write_page()?;
            }
        }
        Ok(())
    }

    fn write_page(&mut self) -> Result<(), DiskError> {
        if self.page.is_empty() {
            return Ok(());
        }
        let at = BMAP_OFFSET + self.page_start * 4;
        let bytes: Vec<u8> = self.page.iter().flat_map(|e| e.to_le_bytes()).collect();
        self.sink
            .write_all_at(at, &bytes)
            .map_err(write_error("block map", at))?;
        self.page_start += self.page.len() as u64;
        self.page.clear();
        Ok(())
    }
}

impl DiskWriter for VdiWriter {
    fn block_size(&self) -> u64 {
        u64::from(BLOCK_SIZE)
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
        let block_size = u64::from(BLOCK_SIZE);
        let block = offset / block_size;
        let disk_size = self.header.disk_size.get();
        let next_unwritten = self.page_start + self.page.len() as u64;
        if offset % block_size != 0
            || data.len() as u64 > block_size
            || block < next_unwritten
            || offset
                .checked_add(data.len() as u64)
                .is_none_or(|end| end > disk_size)
        {
            return Err(DiskError::OutOfRange {
                offset,
                length: data.len() as u64,
                virtual_size: disk_size,
            });
        }
        self.flush_map_to(block)?;
        let index = if self.is_static {
            block
        } else {
            self.allocated
        };
        let at = self.data_offset + index * block_size;
        self.sink
            .write_all_at(at, data)
            .map_err(write_error("data block", at))?;
        self.allocated += 1;
        self.page.push(index as u32);
        if self.page.len() as u64 == BMAP_PAGE_ENTRIES {
            self.write_page()?;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<(), DiskError> {
        self.flush_map_to(self.blocks)?;
        self.write_page()?;
        let used = if self.is_static {
            self.blocks
        } else {
            self.allocated
        };
        self.header.blocks_allocated.set(used as u32);
        self.sink
            .write_all_at(0, self.header.as_bytes())
            .map_err(write_error("header", 0))?;
        let end = self.data_offset + used * u64::from(BLOCK_SIZE);
        self.sink
            .set_len(end)
            .map_err(write_error("image file", end))?;
        self.sink.sync().map_err(write_error("image file", 0))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::disk::{ExtentKind, OpenOptions, open};
    use crate::write::MemorySink;

    struct Shared(Arc<MemorySink>);

    impl Sink for Shared {
        fn write_all_at(&self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
            self.0.write_all_at(offset, buf)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.0.set_len(len)
        }
        fn sync(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Writes a disk of `size` bytes holding `blocks` (offset, data) and nothing else.
    fn write(size: u64, blocks: &[(u64, Vec<u8>)], is_static: bool) -> Vec<u8> {
        let sink = Arc::new(MemorySink::new());
        let mut options = BTreeMap::new();
        options.insert(
            "static".to_string(),
            if is_static { "on" } else { "off" }.into(),
        );
        let opts = CreateOptions {
            options,
            compress: false,
        };
        let mut writer = create(Box::new(Shared(sink.clone())), size, &opts).unwrap();
        for (offset, data) in blocks {
            writer.write_block(*offset, data, None).unwrap();
        }
        writer.finish().unwrap();
        sink.contents()
    }

    fn block_with(byte_at: usize, value: u8, len: usize) -> Vec<u8> {
        let mut block = vec![0u8; len];
        block[byte_at] = value;
        block
    }

    #[test]
    fn dynamic_round_trip_with_a_multi_page_block_map() {
        // 2100 blocks (the block map spans three pages), an odd size, data in three places.
        let size = 2100 * (1 << 20) - 1536;
        let last = 2099u64 << 20;
        let blocks = [
            (0, block_with(5, 1, 1 << 20)),
            (1500 << 20, block_with(0, 2, 1 << 20)),
            (
                last,
                block_with((size - last) as usize - 1, 3, (size - last) as usize),
            ),
        ];
        let image = write(size, &blocks, false);
        // header + 17 sectors of block map + three data blocks.
        assert_eq!(image.len() as u64, 0x200 + 8704 + 3 * (1 << 20));
        let reader = open(Arc::new(image.clone()), FORMAT, &OpenOptions::default()).unwrap();
        assert_eq!(reader.virtual_size(), size);
        for (offset, data) in &blocks {
            let mut back = vec![0u8; data.len()];
            reader.read_at(*offset, &mut back).unwrap();
            assert!(back == *data, "{offset}");
        }
        let check = reader.check().unwrap();
        assert_eq!(check.corruptions, 0, "{:?}", check.messages);
        assert_eq!(check.allocated_clusters, Some(3));
        let hole = reader.extent(1 << 20, 1 << 40).unwrap();
        assert_eq!((hole.kind, hole.length), (ExtentKind::Zero, 1499 << 20));
        assert!(write(size, &blocks, false) == image);
    }

    #[test]
    fn static_round_trip_leaves_holes() {
        let size = 5 << 20;
        let blocks = [(3 << 20, block_with(7, 9, 1 << 20))];
        let image = write(size, &blocks, true);
        assert_eq!(image.len() as u64, 0x400 + size);
        let reader = open(Arc::new(image), FORMAT, &OpenOptions::default()).unwrap();
        assert_eq!(reader.info().subformat.as_deref(), Some("static"));
        let mut back = vec![1u8; 5 << 20];
        reader.read_at(0, &mut back).unwrap();
        assert_eq!(back.iter().position(|&b| b != 0), Some((3 << 20) + 7));
        assert_eq!(reader.check().unwrap().corruptions, 0);
    }

    #[test]
    fn unknown_options_are_named() {
        let mut options = BTreeMap::new();
        options.insert("preallocation".to_string(), "full".to_string());
        let opts = CreateOptions {
            options,
            compress: false,
        };
        let err = create(Box::new(MemorySink::new()), 1 << 20, &opts)
            .err()
            .unwrap();
        assert!(err.to_string().contains("preallocation"), "{err}");
    }
}
