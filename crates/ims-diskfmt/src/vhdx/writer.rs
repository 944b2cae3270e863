//! VHDX writer in qemu's layout: header section (file id, two headers, two region tables),
//! a clean empty log at 1 MiB, the BAT, the metadata region, then payload blocks (appended in
//! ascending order for dynamic disks, preallocated in place for fixed ones). Unwritten blocks
//! stay holes in the file (NOT_PRESENT for dynamic disks), and so do the all-zero 4 KiB runs
//! inside a written block, as in qemu-img's output: a block with a few data bytes costs a few
//! KiB of disk, not its 8 MiB. GUIDs are derived from the size, block size and BAT, so the
//! output is deterministic.

use std::sync::Arc;

use zerocopy::IntoBytes;
use zerocopy::byteorder::{LittleEndian, U16, U32, U64};

use super::header::{
    BAT_FULLY_PRESENT, BAT_GUID, BAT_OFFSET_MASK, BAT_STATE_MASK, FILE_ID, FILE_PARAMETERS_GUID,
    FILE_PARAMETERS_LEAVE_ALLOCATED, HEADER_LEN, HEADER_OFFSETS, HEADER_SECTION_END,
    HEADER_SIGNATURE, HeaderRaw, LOGICAL_SECTOR_GUID, MAX_BLOCK_SIZE, MAX_VIRTUAL_SIZE,
    METADATA_FLAG_IS_VIRTUAL_DISK, METADATA_FLAG_REQUIRED, METADATA_GUID, METADATA_SIGNATURE,
    METADATA_TABLE_LEN, MIB, MIN_BLOCK_SIZE, MetadataEntryRaw, MetadataTableHeaderRaw, PAGE83_GUID,
    PHYSICAL_SECTOR_GUID, REGION_FLAG_REQUIRED, REGION_SIGNATURE, REGION_TABLE_LEN,
    REGION_TABLE_OFFSETS, RegionEntryRaw, TableHeaderRaw, VIRTUAL_DISK_SIZE_GUID,
    crc32c_without_checksum,
};
use super::parser::MetadataItems;
use crate::Format;
use crate::convert::is_zero;
use crate::disk::DiskError;
use crate::write::qemu_options::{OptionReader, finish_sink, write_at};
use crate::write::{BlockEncoder, CreateOptions, DiskWriter, Sink, derived_id};

const FORMAT: Format = Format::Vhdx;
const SECTOR: u64 = 512;
const LOG_OFFSET: u64 = HEADER_SECTION_END;
const DEFAULT_LOG_SIZE: u64 = MIB;
/// Logs above this are refused (qemu accepts up to 4 GiB; nothing needs more than a few MiB).
const MAX_LOG_SIZE: u64 = 256 * MIB;
const METADATA_REGION_LEN: u64 = MIB;
/// All-zero runs this long (and aligned) inside a payload block are left as file holes: the
/// filesystem's page size, the unit a hole can save.
const SPARSE_GRANULE: usize = 4096;
const CREATOR: &str = "ims";
/// The converter hands payload blocks over in pieces of at most this size: a VHDX block is
/// 8–64 MiB, and a batch per worker of whole blocks would put ~100 MiB in flight.
const PIECE: u64 = 2 * MIB;

/// qemu's default block size by disk size (vhdx.c).
fn default_block_size(size: u64) -> u64 {
    const GIB: u64 = 1 << 30;
    if size > 32 << 40 {
        64 * MIB
    } else if size > 100 * GIB {
        32 * MIB
    } else if size > GIB {
        16 * MIB
    } else {
        8 * MIB
    }
}

pub(crate) struct VhdxWriter {
    sink: Box<dyn Sink>,
    items: MetadataItems,
    log_size: u64,
    bat_offset: u64,
    metadata_offset: u64,
    payload_offset: u64,
    /// BAT entries (payload and sector bitmap slots).
    bat: Vec<u64>,
    next_free: u64,
}

impl VhdxWriter {
    pub(crate) fn create(
        sink: Box<dyn Sink>,
        virtual_size: u64,
        options: &CreateOptions,
    ) -> Result<VhdxWriter, DiskError> {
        let mut reader = OptionReader::new(FORMAT, &options.options);
        let fixed = reader.choice("subformat", &["dynamic", "fixed"], "dynamic")? == "fixed";
        let block_size = reader.size("block_size", 0)?;
        let log_size = reader.size("log_size", DEFAULT_LOG_SIZE)?;
        // Unwritten blocks read as zeros whether marked ZERO or NOT_PRESENT.
        reader.flag("block_state_zero", true)?;
        reader.finish()?;
        let size = virtual_size.next_multiple_of(SECTOR);
        if size == 0 || size > MAX_VIRTUAL_SIZE {
            return Err(DiskError::too_large(
                FORMAT,
                "virtual size",
                size,
                MAX_VIRTUAL_SIZE,
            ));
        }
        let block_size = if block_size == 0 {
            default_block_size(size)
        } else {
            block_size
        };
        if !block_size.is_power_of_two()
            || !(u64::from(MIN_BLOCK_SIZE)..=u64::from(MAX_BLOCK_SIZE)).contains(&block_size)
        {
            return Err(DiskError::unsupported(format!(
                "vhdx block_size {block_size}: must be a power of 2 from 1 MiB to 256 MiB"
            )));
        }
        if log_size < MIB || log_size % MIB != 0 || log_size > MAX_LOG_SIZE {
            return Err(DiskError::unsupported(format!(
                "vhdx log_size {log_size}: must be a multiple of 1 MiB from 1 MiB to 256 MiB"
            )));
        }
        let items = MetadataItems {
            block_size: block_size as u32,
            leave_blocks_allocated: fixed,
            has_parent: false,
            virtual_size: size,
            logical_sector_size: SECTOR as u32,
            parent_paths: Vec::new(),
        };
        let entries = items.bat_entries();
        let bat_offset = LOG_OFFSET + log_size;
        let metadata_offset = bat_offset + (entries * 8).next_multiple_of(MIB);
        let payload_offset = metadata_offset + METADATA_REGION_LEN;
        let mut bat = vec![0u64; entries as usize];
        if fixed {
            for block in 0..items.data_blocks() {
                bat[items.bat_index(block) as usize] =
                    (payload_offset + block * block_size) | BAT_FULLY_PRESENT;
            }
        }
        Ok(VhdxWriter {
            sink,
            next_free: payload_offset,
            items,
            log_size,
            bat_offset,
            metadata_offset,
            payload_offset,
            bat,
        })
    }

    fn write(&self, structure: &'static str, offset: u64, bytes: &[u8]) -> Result<(), DiskError> {
        write_at(self.sink.as_ref(), structure, offset, bytes)
    }

    fn guid(&self, what: &[u8]) -> [u8; 16] {
        derived_id(&[
            b"vhdx",
            what,
            &self.items.virtual_size.to_le_bytes(),
            &self.items.block_size.to_le_bytes(),
            self.bat.as_bytes(),
        ])
    }

    fn header(&self, sequence: u64) -> Vec<u8> {
        let raw = HeaderRaw {
            signature: HEADER_SIGNATURE,
            checksum: U32::new(0),
            sequence_number: U64::new(sequence),
            file_write_guid: self.guid(b"file write"),
            data_write_guid: self.guid(b"data write"),
            log_guid: [0; 16],
            log_version: U16::new(0),
            version: U16::new(1),
            log_length: U32::new(self.log_size as u32),
            log_offset: U64::new(LOG_OFFSET),
        };
        let mut bytes = vec![0u8; HEADER_LEN as usize];
        bytes[..size_of::<HeaderRaw>()].copy_from_slice(raw.as_bytes());
        let crc = crc32c_without_checksum(&bytes);
        bytes[4..8].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    fn region_table(&self) -> Vec<u8> {
        let mut bytes = vec![0u8; REGION_TABLE_LEN as usize];
        let header = TableHeaderRaw {
            signature: REGION_SIGNATURE,
            checksum: U32::new(0),
            entry_count: U32::new(2),
            reserved: U32::new(0),
        };
        bytes[..16].copy_from_slice(header.as_bytes());
        let regions = [
            (
                BAT_GUID,
                self.bat_offset,
                self.metadata_offset - self.bat_offset,
            ),
            (METADATA_GUID, self.metadata_offset, METADATA_REGION_LEN),
        ];
        for (i, (guid, offset, length)) in regions.into_iter().enumerate() {
            let entry = RegionEntryRaw {
                guid,
                file_offset: U64::new(offset),
                length: U32::new(length as u32),
                flags: U32::new(REGION_FLAG_REQUIRED),
            };
            bytes[16 + i * 32..48 + i * 32].copy_from_slice(entry.as_bytes());
        }
        let crc = crc32c_without_checksum(&bytes);
        bytes[4..8].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    fn metadata(&self) -> Vec<u8> {
        let mut bytes = vec![0u8; METADATA_REGION_LEN as usize];
        let flags = if self.items.leave_blocks_allocated {
            FILE_PARAMETERS_LEAVE_ALLOCATED
        } else {
            0
        };
        let parameters = [self.items.block_size.to_le_bytes(), flags.to_le_bytes()].concat();
        let virtual_disk = METADATA_FLAG_IS_VIRTUAL_DISK | METADATA_FLAG_REQUIRED;
        let items: [([u8; 16], Vec<u8>, u32); 5] = [
            (FILE_PARAMETERS_GUID, parameters, METADATA_FLAG_REQUIRED),
            (
                VIRTUAL_DISK_SIZE_GUID,
                self.items.virtual_size.to_le_bytes().to_vec(),
                virtual_disk,
            ),
            (PAGE83_GUID, self.guid(b"page83").to_vec(), virtual_disk),
            (
                LOGICAL_SECTOR_GUID,
                (SECTOR as u32).to_le_bytes().to_vec(),
                virtual_disk,
            ),
            (
                PHYSICAL_SECTOR_GUID,
                4096u32.to_le_bytes().to_vec(),
                virtual_disk,
            ),
        ];
        let header = MetadataTableHeaderRaw {
            signature: METADATA_SIGNATURE,
            reserved: U16::new(0),
            entry_count: U16::<LittleEndian>::new(items.len() as u16),
            reserved2: [0; 20],
        };
        bytes[..32].copy_from_slice(header.as_bytes());
        let mut item_offset = METADATA_TABLE_LEN as usize;
        for (i, (guid, data, flags)) in items.iter().enumerate() {
            let entry = MetadataEntryRaw {
                item_id: *guid,
                offset: U32::new(item_offset as u32),
                length: U32::new(data.len() as u32),
                flags: U32::new(*flags),
                reserved: U32::new(0),
            };
            bytes[32 + i * 32..64 + i * 32].copy_from_slice(entry.as_bytes());
            bytes[item_offset..item_offset + data.len()].copy_from_slice(data);
            item_offset += data.len();
        }
        bytes
    }
}

impl DiskWriter for VhdxWriter {
    fn block_size(&self) -> u64 {
        u64::from(self.items.block_size).min(PIECE)
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
        let block_size = u64::from(self.items.block_size);
        let block = offset / block_size;
        if block >= self.items.data_blocks() {
            return Err(DiskError::unsupported(format!(
                "block at {offset} lies past the end of the disk"
            )));
        }
        let index = self.items.bat_index(block) as usize;
        let file_offset = if self.items.leave_blocks_allocated {
            self.payload_offset + block * block_size
        } else if self.bat[index] & BAT_STATE_MASK == BAT_FULLY_PRESENT {
            // A later piece of a block an earlier piece allocated (pieces come in order).
            self.bat[index] & BAT_OFFSET_MASK
        } else {
            let at = self.next_free;
            self.next_free += block_size;
            self.bat[index] = at | BAT_FULLY_PRESENT;
            at
        };
        // The sink is new and a payload block's bytes were never written before (fixed
        // disks' too: `finish` only sets the length), so unwritten bytes read back as zeros.
        let start = file_offset + offset % block_size;
        for (at, run) in nonzero_runs(data, SPARSE_GRANULE) {
            self.write("payload block", start + at as u64, run)?;
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<(), DiskError> {
        let end = if self.items.leave_blocks_allocated {
            self.payload_offset + self.items.data_blocks() * u64::from(self.items.block_size)
        } else {
            self.next_free
        };
        let mut id = vec![0u8; 8 + 512];
        id[..8].copy_from_slice(&FILE_ID);
        for (i, unit) in CREATOR.encode_utf16().enumerate() {
            id[8 + 2 * i..10 + 2 * i].copy_from_slice(&unit.to_le_bytes());
        }
        self.write("file identifier", 0, &id)?;
        let bat: Vec<u8> = self.bat.iter().flat_map(|e| e.to_le_bytes()).collect();
        self.write("BAT", self.bat_offset, &bat)?;
        self.write("metadata region", self.metadata_offset, &self.metadata())?;
        let table = self.region_table();
        for offset in REGION_TABLE_OFFSETS {
            self.write("region table", offset, &table)?;
        }
        for (sequence, offset) in HEADER_OFFSETS.into_iter().enumerate() {
            self.write("header", offset, &self.header(sequence as u64))?;
        }
        finish_sink(self.sink.as_ref(), end)
    }
}

/// The maximal runs of `data` made of `granule`-sized pieces that are not all zero, with their
/// offsets in `data`; the last piece may be shorter.
fn nonzero_runs(data: &[u8], granule: usize) -> Vec<(usize, &[u8])> {
    let mut runs = Vec::new();
    let mut start = None;
    for (i, piece) in data.chunks(granule).enumerate() {
        let at = i * granule;
        match (is_zero(piece), start) {
            (false, None) => start = Some(at),
            (true, Some(from)) => {
                runs.push((from, &data[from..at]));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(from) = start {
        runs.push((from, &data[from..]));
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::nonzero_runs;

    #[test]
    fn nonzero_runs_skip_zero_granules_and_merge_neighbours() {
        let mut data = vec![0u8; 10 * 8 + 3];
        data[9] = 1; // granule 1
        data[23] = 1; // granule 2, merges with 1
        data[56] = 1; // granule 7
        data[81] = 1; // the short last granule
        let runs: Vec<(usize, usize)> = nonzero_runs(&data, 8)
            .into_iter()
            .map(|(at, run)| (at, run.len()))
            .collect();
        assert_eq!(runs, [(8, 16), (56, 8), (80, 3)]);
        assert!(nonzero_runs(&[0u8; 100], 8).is_empty());
        assert_eq!(nonzero_runs(&[5u8; 20], 8).len(), 1);
    }
}
