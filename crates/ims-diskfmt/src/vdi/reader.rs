//! Random-access reader for VDI 1.1 images, dynamic and static: the block map in memory,
//! reads of adjacent blocks coalesced. Differencing images name a parent → Reference.

use zerocopy::FromBytes;

use super::header::{
    DISCARDED, HeaderRaw, SECTOR, SIGNATURE, SIGNATURE_OFFSET, TYPE_STATIC, UNALLOCATED, uuid_text,
};
use crate::Format;
use crate::disk::{
    CheckReport, Disk, DiskError, DiskInfo, Extent, ExtentKind, OpenOptions, SharedSource,
    check_range, read_exact_at,
};

/// Largest block map held in memory: 64 MiB = 16 M blocks = a 16 TiB disk. qemu's limit
/// (0x3fffffff blocks, a 4 GiB map) is far beyond any real image.
pub(crate) const MAX_BMAP_BYTES: u64 = 64 << 20;
/// `check` lists at most this many problems (it still counts all of them).
const MAX_CHECK_MESSAGES: usize = 100;

const FORMAT: Format = Format::Vdi;

fn corrupt(structure: &'static str, offset: u64, reason: impl Into<String>) -> DiskError {
    DiskError::corrupt(FORMAT, structure, offset, reason)
}

/// An opened VDI image.
pub(crate) struct VdiDisk {
    source: SharedSource,
    file_len: u64,
    virtual_size: u64,
    block_size: u64,
    bmap_offset: u64,
    data_offset: u64,
    /// Block map: index of each virtual block's data block, or UNALLOCATED / DISCARDED.
    bmap: Vec<u32>,
    blocks_allocated: u32,
    is_static: bool,
    lenient: bool,
}

impl VdiDisk {
    pub(crate) fn open(source: SharedSource, options: &OpenOptions) -> Result<VdiDisk, DiskError> {
        let file_len = source.len();
        let mut sector = [0u8; SECTOR as usize];
        read_exact_at(&*source, FORMAT, "header", 0, &mut sector)?;
        let (header, _) = HeaderRaw::read_from_prefix(&sector[..])
            .map_err(|_| corrupt("header", 0, "too short"))?;
        if header.signature.get() != SIGNATURE {
            return Err(corrupt(
                "header",
                SIGNATURE_OFFSET,
                format!("signature {:#010x} is not a VDI's", header.signature.get()),
            ));
        }
        header.check(file_len).map_err(|p| {
            let structure = if p.field_offset == 0x154 {
                "block map"
            } else {
                "header"
            };
            corrupt(structure, p.field_offset, p.reason)
        })?;
        for uuid in [header.uuid_link, header.uuid_parent] {
            if uuid != [0; 16] {
                return Err(DiskError::Reference {
                    format: FORMAT,
                    target: format!("parent image {}", uuid_text(&uuid)),
                });
            }
        }
        let image_type = header.image_type.get();
        if image_type > TYPE_STATIC {
            return Err(DiskError::unsupported(format!(
                "VDI image type {image_type} (undo/differencing) without a parent UUID"
            )));
        }
        if header.block_extra.get() != 0 {
            return Err(DiskError::unsupported(
                "VDI blocks with extra per-block data (block_extra ≠ 0)",
            ));
        }
        let bmap_bytes = header.bmap_bytes();
        if bmap_bytes > MAX_BMAP_BYTES {
            return Err(DiskError::TooLarge {
                format: FORMAT,
                structure: "block map",
                value: bmap_bytes,
                limit: MAX_BMAP_BYTES,
            });
        }
        let bmap_offset = u64::from(header.offset_bmap.get());
        let mut raw = vec![0u8; bmap_bytes as usize];
        read_exact_at(&*source, FORMAT, "block map", bmap_offset, &mut raw)?;
        let bmap: Vec<u32> = raw
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let disk = VdiDisk {
            source,
            file_len,
            virtual_size: header.virtual_size(),
            block_size: u64::from(header.block_size.get()),
            bmap_offset,
            data_offset: u64::from(header.offset_data.get()),
            bmap,
            blocks_allocated: header.blocks_allocated.get(),
            is_static: image_type == TYPE_STATIC,
            lenient: options.lenient,
        };
        if !disk.lenient
            && let Some(problem) = disk.bmap_problems().into_iter().next()
        {
            return Err(corrupt("block map", problem.0, problem.1));
        }
        Ok(disk)
    }

    /// qemu's `vdi_check` walk: entries beyond the image's blocks and blocks mapped twice, as
    /// (offset of the entry, message).
    fn bmap_problems(&self) -> Vec<(u64, String)> {
        let blocks = self.bmap.len();
        let mut owner = vec![UNALLOCATED; blocks];
        let mut problems = Vec::new();
        for (block, &entry) in self.bmap.iter().enumerate() {
            if entry >= DISCARDED {
                continue;
            }
            let at = self.bmap_offset + block as u64 * 4;
            match owner.get_mut(entry as usize) {
                None => problems.push((at, format!("block index {block} too large, is {entry}"))),
                Some(first) if *first != UNALLOCATED => problems.push((
                    at,
                    format!("block index {entry} also used by {block} (first by {first})"),
                )),
                Some(first) => *first = block as u32,
            }
        }
        problems
    }

    fn allocated(&self) -> u64 {
        self.bmap.iter().filter(|&&e| e < DISCARDED).count() as u64
    }

    /// Reads `buf.len()` bytes of data block `entry` from `in_block`.
    fn read_block(
        &self,
        block: u64,
        entry: u32,
        in_block: u64,
        buf: &mut [u8],
    ) -> Result<(), DiskError> {
        let host = self.data_offset + u64::from(entry) * self.block_size + in_block;
        let end = host + buf.len() as u64;
        if end <= self.file_len {
            return read_exact_at(&*self.source, FORMAT, "data block", host, buf);
        }
        if !self.lenient {
            return Err(corrupt(
                "block map",
                self.bmap_offset + block * 4,
                format!(
                    "block {block} → data block {entry} at offset {host} (+{} bytes) extends \
                     past the end of the {}-byte image",
                    buf.len(),
                    self.file_len
                ),
            ));
        }
        // qemu reads past the end of the file as zeros.
        let available = self.file_len.saturating_sub(host).min(buf.len() as u64) as usize;
        buf[available..].fill(0);
        read_exact_at(
            &*self.source,
            FORMAT,
            "data block",
            host,
            &mut buf[..available],
        )
    }
}

impl Disk for VdiDisk {
    fn format(&self) -> Format {
        FORMAT
    }

    fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    fn granularity(&self) -> u64 {
        self.block_size
    }

    fn extent(&self, offset: u64, max_len: u64) -> Result<Extent, DiskError> {
        let end = offset.saturating_add(max_len).min(self.virtual_size);
        let kind_of = |block: u64| match self.bmap.get(block as usize) {
            Some(&e) if e < DISCARDED => ExtentKind::Data,
            _ => ExtentKind::Zero,
        };
        let kind = kind_of(offset / self.block_size);
        let mut pos = (offset / self.block_size + 1) * self.block_size;
        while pos < end && kind_of(pos / self.block_size) == kind {
            pos += self.block_size;
        }
        Ok(Extent {
            offset,
            length: pos.min(end) - offset,
            kind,
        })
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        check_range(self.virtual_size, offset, buf.len())?;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let block = pos / self.block_size;
            let in_block = pos % self.block_size;
            let entry = self.bmap[block as usize];
            let mut n = (self.block_size - in_block).min((buf.len() - done) as u64) as usize;
            if entry >= DISCARDED {
                buf[done..done + n].fill(0);
                done += n;
                continue;
            }
            // Coalesce following blocks whose data blocks follow this one.
            let mut next = block + 1;
            while done + n < buf.len()
                && entry
                    .checked_add((next - block) as u32)
                    .is_some_and(|want| self.bmap.get(next as usize) == Some(&want))
            {
                n += (self.block_size as usize).min(buf.len() - done - n);
                next += 1;
            }
            self.read_block(block, entry, in_block, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    fn info(&self) -> DiskInfo {
        DiskInfo {
            cluster_size: Some(self.block_size),
            subformat: Some(if self.is_static { "static" } else { "dynamic" }.to_owned()),
            ..DiskInfo::default()
        }
    }

    fn check(&self) -> Result<CheckReport, DiskError> {
        let mut report = CheckReport {
            total_clusters: Some(self.bmap.len() as u64),
            allocated_clusters: Some(self.allocated()),
            ..CheckReport::default()
        };
        let problems = self.bmap_problems();
        report.corruptions = problems.len() as u64;
        report.messages = problems
            .into_iter()
            .take(MAX_CHECK_MESSAGES)
            .map(|(_, message)| message)
            .collect();
        let in_range = self
            .bmap
            .iter()
            .filter(|&&e| e < DISCARDED && (e as usize) < self.bmap.len())
            .count() as u64;
        if in_range != u64::from(self.blocks_allocated) {
            report.corruptions += 1;
            report.messages.push(format!(
                "allocated blocks mismatch, is {in_range}, should be {}",
                self.blocks_allocated
            ));
        }
        Ok(report)
    }
}
