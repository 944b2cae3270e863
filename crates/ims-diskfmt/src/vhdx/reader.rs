//! VHDX reader: active header by CRC + sequence, log replayed into an in-memory overlay when a
//! valid sequence exists, region table, metadata items, and a BAT loaded once with every
//! present block checked against the file and the metadata regions. Adjacent blocks that are
//! adjacent in the file are read with one call.

use super::header::{
    BAT_FULLY_PRESENT, BAT_NOT_PRESENT, BAT_OFFSET_MASK, BAT_PARTIALLY_PRESENT, BAT_STATE_MASK,
    BAT_UNDEFINED, BAT_UNMAPPED, BAT_UNMAPPED_DRAFT, BAT_ZERO, FILE_ID, HEADER_LEN, HEADER_OFFSETS,
    HEADER_SECTION_END, METADATA_TABLE_LEN, MIB, REGION_TABLE_LEN, REGION_TABLE_OFFSETS,
};
use super::log::{MAX_LOG_BYTES, Patch, replay};
use super::parser::{
    MetadataItems, Region, Regions, active_header, parse_metadata, parse_region_table, valid_header,
};
use crate::Format;
use crate::disk::{
    CheckReport, Disk, DiskError, DiskInfo, Extent, ExtentKind, OpenOptions, SharedSource,
    check_range, read_exact_at,
};

const FORMAT: Format = Format::Vhdx;
/// The BAT is held in memory: 128 MiB = 16 Mi entries (16 TiB of 1 MiB blocks, 64 TiB of
/// 4 MiB blocks).
const MAX_BAT_BYTES: u64 = 128 << 20;

pub(crate) struct VhdxDisk {
    source: SharedSource,
    items: MetadataItems,
    regions: Regions,
    log: Region,
    /// File offset of every payload block that is FULLY_PRESENT.
    blocks: Vec<Option<u64>>,
    /// Replayed log changes, applied over every file read (empty for clean images).
    overlay: Vec<Patch>,
}

impl VhdxDisk {
    pub(crate) fn open(source: SharedSource, options: &OpenOptions) -> Result<VhdxDisk, DiskError> {
        let len = source.len();
        let mut id = [0u8; 8];
        read_exact_at(source.as_ref(), FORMAT, "file identifier", 0, &mut id)?;
        if id != FILE_ID {
            return Err(DiskError::corrupt(
                FORMAT,
                "file identifier",
                0,
                "signature is not 'vhdxfile'",
            ));
        }
        let mut headers = [None, None];
        for (slot, offset) in headers.iter_mut().zip(HEADER_OFFSETS) {
            let mut bytes = vec![0u8; HEADER_LEN as usize];
            read_exact_at(source.as_ref(), FORMAT, "header", offset, &mut bytes)?;
            *slot = valid_header(&bytes);
        }
        let [first, second] = headers;
        let (active, header) = active_header(first, second, HEADER_OFFSETS[0])?;
        let header_at = HEADER_OFFSETS[active];
        if header.log_version.get() != 0 {
            return Err(DiskError::unsupported(format!(
                "vhdx log version {}",
                header.log_version.get()
            )));
        }
        let log = Region {
            offset: header.log_offset.get(),
            length: u64::from(header.log_length.get()),
        };
        if log.length > 0
            && (log.offset % MIB != 0
                || log.length % MIB != 0
                || log.offset < HEADER_SECTION_END
                || log
                    .offset
                    .checked_add(log.length)
                    .is_none_or(|end| end > len))
        {
            return Err(DiskError::corrupt(
                FORMAT,
                "header",
                header_at + 64,
                format!(
                    "log at {} (+{}) is unaligned or outside the file",
                    log.offset, log.length
                ),
            ));
        }
        let mut disk = VhdxDisk {
            source,
            items: MetadataItems {
                block_size: 0,
                leave_blocks_allocated: false,
                has_parent: false,
                virtual_size: 0,
                logical_sector_size: 512,
                parent_paths: Vec::new(),
            },
            regions: Regions {
                bat: log,
                metadata: log,
            },
            log,
            blocks: Vec::new(),
            overlay: Vec::new(),
        };
        if header.log_guid != [0; 16] {
            disk.replay_log(&header.log_guid)?;
        }
        disk.regions = disk.region_table()?;
        let table = disk.read_meta(
            "metadata table",
            disk.regions.metadata.offset,
            METADATA_TABLE_LEN,
        )?;
        disk.items = parse_metadata(&table, disk.regions.metadata, |offset, length| {
            disk.read_meta("metadata item", offset, length)
        })?;
        if disk.items.has_parent {
            let paths = &disk.items.parent_paths;
            return Err(DiskError::Reference {
                format: FORMAT,
                target: if paths.is_empty() {
                    "differencing disk, parent locator without a path".into()
                } else {
                    format!("differencing disk, parent {}", paths.join(" / "))
                },
            });
        }
        disk.blocks = disk.load_bat(options)?;
        Ok(disk)
    }

    fn replay_log(&mut self, guid: &[u8; 16]) -> Result<(), DiskError> {
        if self.log.length > MAX_LOG_BYTES {
            return Err(DiskError::too_large(
                FORMAT,
                "log",
                self.log.length,
                MAX_LOG_BYTES,
            ));
        }
        let mut log = vec![0u8; self.log.length as usize];
        read_exact_at(
            self.source.as_ref(),
            FORMAT,
            "log",
            self.log.offset,
            &mut log,
        )?;
        // No valid sequence (e.g. stale entries with another GUID): nothing to replay.
        if let Some(replay) = replay(&log, guid) {
            self.overlay = replay.patches;
        }
        Ok(())
    }

    /// The first region table with a valid signature and CRC.
    fn region_table(&self) -> Result<Regions, DiskError> {
        let mut first_error = None;
        for offset in REGION_TABLE_OFFSETS {
            let bytes = self.read_meta("region table", offset, REGION_TABLE_LEN)?;
            match parse_region_table(&bytes, offset, self.source.len()) {
                Ok(regions) => {
                    if self.log.length > 0
                        && (regions.bat.overlaps(self.log.offset, self.log.length)
                            || regions.metadata.overlaps(self.log.offset, self.log.length))
                    {
                        return Err(DiskError::corrupt(
                            FORMAT,
                            "region table",
                            offset,
                            "BAT or metadata region overlaps the log",
                        ));
                    }
                    return Ok(regions);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error
            .map(DiskError::from)
            .unwrap_or_else(|| DiskError::corrupt(FORMAT, "region table", 0, "missing")))
    }

    fn load_bat(&self, options: &OpenOptions) -> Result<Vec<Option<u64>>, DiskError> {
        let items = &self.items;
        let entries = items.bat_entries();
        let bat_len = entries.checked_mul(8).unwrap_or(u64::MAX);
        if bat_len > MAX_BAT_BYTES {
            return Err(DiskError::too_large(FORMAT, "BAT", bat_len, MAX_BAT_BYTES));
        }
        let bat = self.regions.bat;
        if bat_len > bat.length {
            return Err(DiskError::corrupt(
                FORMAT,
                "BAT region",
                bat.offset,
                format!("{} bytes cannot hold {entries} entries", bat.length),
            ));
        }
        let table = self.read_meta("BAT", bat.offset, bat_len)?;
        let block_size = u64::from(items.block_size);
        let len = self.source.len();
        let mut blocks = Vec::with_capacity(items.data_blocks() as usize);
        for block in 0..items.data_blocks() {
            let index = items.bat_index(block);
            let at = (index * 8) as usize;
            let entry = u64::from_le_bytes(table[at..at + 8].try_into().unwrap_or([0; 8]));
            let entry_at = bat.offset + index * 8;
            let corrupt = |reason: String| DiskError::corrupt(FORMAT, "BAT", entry_at, reason);
            match entry & BAT_STATE_MASK {
                BAT_NOT_PRESENT | BAT_UNDEFINED | BAT_ZERO | BAT_UNMAPPED | BAT_UNMAPPED_DRAFT => {
                    blocks.push(None)
                }
                BAT_FULLY_PRESENT => {
                    let offset = entry & BAT_OFFSET_MASK;
                    let needed = block_size.min(items.virtual_size - block * block_size);
                    let problem = if offset < HEADER_SECTION_END {
                        Some("inside the header section")
                    } else if [self.log, bat, self.regions.metadata]
                        .iter()
                        .any(|r| r.length > 0 && r.overlaps(offset, block_size))
                    {
                        Some("overlapping the log, BAT or metadata region")
                    } else if offset.checked_add(needed).is_none_or(|end| end > len) {
                        Some("past the end of the file")
                    } else {
                        None
                    };
                    match problem {
                        Some(what) if !options.lenient => {
                            return Err(corrupt(format!(
                                "block {block} points at file offset {offset}, {what}"
                            )));
                        }
                        _ => blocks.push(Some(offset)),
                    }
                }
                BAT_PARTIALLY_PRESENT => {
                    return Err(corrupt(format!(
                        "block {block} is PARTIALLY_PRESENT in a disk without a parent"
                    )));
                }
                state => {
                    return Err(corrupt(format!("block {block} has unknown state {state}")));
                }
            }
        }
        Ok(blocks)
    }

    /// Reads file bytes with the replayed log applied; bytes past the end read as zeros (only
    /// reachable in lenient mode or for log-extended files).
    fn read_file(
        &self,
        structure: &'static str,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), DiskError> {
        let len = self.source.len();
        let available = len.saturating_sub(offset).min(buf.len() as u64) as usize;
        let (data, tail) = buf.split_at_mut(available);
        read_exact_at(self.source.as_ref(), FORMAT, structure, offset, data)?;
        tail.fill(0);
        for patch in &self.overlay {
            patch.apply(offset, buf);
        }
        Ok(())
    }

    fn read_meta(
        &self,
        structure: &'static str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, DiskError> {
        if offset
            .checked_add(len)
            .is_none_or(|end| end > self.source.len())
        {
            return Err(DiskError::corrupt(
                FORMAT,
                structure,
                offset,
                format!("{len} bytes do not fit in the image"),
            ));
        }
        let mut buf = vec![0u8; len as usize];
        self.read_file(structure, offset, &mut buf)?;
        Ok(buf)
    }
}

impl Disk for VhdxDisk {
    fn format(&self) -> Format {
        FORMAT
    }

    fn virtual_size(&self) -> u64 {
        self.items.virtual_size
    }

    fn granularity(&self) -> u64 {
        u64::from(self.items.block_size)
    }

    fn extent(&self, offset: u64, max_len: u64) -> Result<Extent, DiskError> {
        let size = self.items.virtual_size;
        let length = max_len.min(size.saturating_sub(offset));
        let block_size = u64::from(self.items.block_size);
        let kind_of = |block: u64| match self.blocks.get(block as usize) {
            Some(Some(_)) => ExtentKind::Data,
            _ => ExtentKind::Zero,
        };
        let kind = kind_of(offset / block_size);
        let mut end = (offset / block_size + 1) * block_size;
        while end < offset + length && kind_of(end / block_size) == kind {
            end += block_size;
        }
        Ok(Extent {
            offset,
            length: (end - offset).min(length),
            kind,
        })
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        check_range(self.items.virtual_size, offset, buf.len())?;
        let block_size = u64::from(self.items.block_size);
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let block = at / block_size;
            let within = at % block_size;
            let mut n = ((block_size - within) as usize).min(buf.len() - done);
            match self.blocks.get(block as usize).copied().flatten() {
                Some(file_offset) => {
                    // Extend over following blocks stored right after this one.
                    let mut next = block + 1;
                    while done + n < buf.len()
                        && self.blocks.get(next as usize).copied().flatten()
                            == Some(file_offset + (next - block) * block_size)
                    {
                        n = (n + block_size as usize).min(buf.len() - done);
                        next += 1;
                    }
                    self.read_file(
                        "payload block",
                        file_offset + within,
                        &mut buf[done..done + n],
                    )?;
                }
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
        Ok(())
    }

    fn info(&self) -> DiskInfo {
        DiskInfo {
            cluster_size: Some(u64::from(self.items.block_size)),
            subformat: Some(
                if self.items.leave_blocks_allocated {
                    "fixed"
                } else {
                    "dynamic"
                }
                .into(),
            ),
            dirty: !self.overlay.is_empty(),
            ..DiskInfo::default()
        }
    }

    fn check(&self) -> Result<CheckReport, DiskError> {
        let mut report = CheckReport::default();
        let block_size = u64::from(self.items.block_size);
        let mut present: Vec<(u64, usize)> = self
            .blocks
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.map(|offset| (offset, i)))
            .collect();
        present.sort_unstable();
        for pair in present.windows(2) {
            if pair[0].0 + block_size > pair[1].0 {
                report.corruptions += 1;
                report.messages.push(format!(
                    "blocks {} and {} overlap at file offset {}",
                    pair[0].1, pair[1].1, pair[1].0
                ));
            }
        }
        let len = self.source.len();
        for &(offset, block) in &present {
            let metadata = [self.log, self.regions.bat, self.regions.metadata]
                .iter()
                .any(|r| r.length > 0 && r.overlaps(offset, block_size));
            if offset < HEADER_SECTION_END || metadata {
                report.corruptions += 1;
                report.messages.push(format!(
                    "block {block} at file offset {offset} overlaps the headers or metadata"
                ));
            } else if offset + block_size > len {
                report.corruptions += 1;
                report.messages.push(format!(
                    "block {block} at file offset {offset} ends past the end of the image"
                ));
            }
        }
        if !self.overlay.is_empty() {
            report
                .messages
                .push("the log holds changes not yet written back (replayed in memory)".into());
        }
        let metadata_end = [self.log, self.regions.bat, self.regions.metadata]
            .iter()
            .map(Region::end)
            .max()
            .unwrap_or(HEADER_SECTION_END);
        report.allocated_clusters = Some(present.len() as u64);
        report.total_clusters = Some(self.items.data_blocks());
        report.image_end_offset = Some(
            present
                .last()
                .map_or(metadata_end, |b| (b.0 + block_size).max(metadata_end)),
        );
        Ok(report)
    }
}
