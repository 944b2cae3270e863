//! `qemu-img check` for qcow2: counts every reference to every host cluster (header, L1/L2
//! tables of the active layer and of snapshots, data and compressed clusters, refcount
//! structures, snapshot table, bitmaps) and compares the counts with the stored refcounts.

use super::header::*;
use super::parser::Header;
use super::reader::Qcow2Disk;
use super::tables::read_table;
use crate::ReadAt;
use crate::disk::{CheckReport, DiskError};

/// Host clusters a check will count (two bytes each): 64 Mi clusters = 4 TiB at 64 KiB.
const MAX_CHECK_CLUSTERS: u64 = 64 << 20;
/// Problems listed one by one; the counters keep counting beyond this.
const MAX_MESSAGES: usize = 1000;
/// Bitmap directory entries have a 24-byte fixed part.
const BITMAP_ENTRY_FIXED: usize = 24;

struct Counter<'a> {
    header: &'a Header,
    refs: Vec<u16>,
    report: CheckReport,
}

impl Counter<'_> {
    fn problem(&mut self, corruption: bool, message: String) {
        if corruption {
            self.report.corruptions += 1;
        } else {
            self.report.leaks += 1;
        }
        if self.report.messages.len() < MAX_MESSAGES {
            self.report.messages.push(message);
        }
    }

    /// Counts one reference to every cluster `[offset, offset + length)` touches.
    fn reference(&mut self, what: &str, offset: u64, length: u64) {
        if length == 0 {
            return;
        }
        let cs = self.header.cluster_size;
        let first = offset / cs;
        let last = offset.saturating_add(length - 1) / cs;
        if last >= self.refs.len() as u64 {
            self.problem(
                true,
                format!("{what} at {offset:#x} ({length} bytes) lies past the end of the image"),
            );
            return;
        }
        for cluster in first..=last {
            let slot = &mut self.refs[cluster as usize];
            *slot = slot.saturating_add(1);
        }
    }

    /// Counts an L2 table and everything it maps; `active` also counts allocated clusters.
    fn walk_l2(&mut self, source: &dyn ReadAt, l2: u64, active: bool) -> Result<(), DiskError> {
        let h = self.header;
        if !l2.is_multiple_of(h.cluster_size) {
            self.problem(
                true,
                format!("L2 table offset {l2:#x} is not cluster aligned"),
            );
            return Ok(());
        }
        self.reference("L2 table", l2, h.cluster_size);
        if l2.saturating_add(h.cluster_size) > h.file_len {
            return Ok(());
        }
        let words = read_table(source, "L2 table", l2, h.cluster_size / 8, false)?;
        let stride = (h.l2_entry_bytes() / 8) as usize;
        for (index, entry) in words.chunks_exact(stride).enumerate() {
            let word = entry[0];
            let at = l2 + (index * stride * 8) as u64;
            if word & L2_COMPRESSED != 0 {
                let d = CompressedDescriptor::decode(word, h.cluster_bits);
                let sectors_start = d.offset & !511;
                let sectors_len = d.length + (d.offset & 511);
                self.reference("compressed cluster", sectors_start, sectors_len);
                if active {
                    self.report.allocated_clusters =
                        Some(self.report.allocated_clusters.unwrap_or(0) + 1);
                }
                continue;
            }
            let host = word & TABLE_OFFSET_MASK;
            if host == 0 {
                continue;
            }
            if !host.is_multiple_of(h.cluster_size) {
                self.problem(
                    true,
                    format!("L2 entry at {at:#x}: data offset {host:#x} is not cluster aligned"),
                );
                continue;
            }
            if h.extended_l2 {
                let bitmap = entry[1];
                if (bitmap >> 32) & bitmap & 0xffff_ffff != 0 {
                    self.problem(
                        true,
                        format!("L2 entry at {at:#x}: subclusters both allocated and zero"),
                    );
                }
            }
            self.reference("data cluster", host, h.cluster_size);
            if active {
                self.report.allocated_clusters =
                    Some(self.report.allocated_clusters.unwrap_or(0) + 1);
            }
        }
        Ok(())
    }

    fn walk_l1(
        &mut self,
        source: &dyn ReadAt,
        offset: u64,
        entries: u64,
        active: bool,
    ) -> Result<(), DiskError> {
        let h = self.header;
        self.reference("L1 table", offset, entries * 8);
        if offset.saturating_add(entries * 8) > h.file_len || entries * 8 > MAX_L1_BYTES {
            return Ok(());
        }
        for entry in read_table(source, "L1 table", offset, entries, false)? {
            let l2 = entry & TABLE_OFFSET_MASK;
            if l2 != 0 {
                self.walk_l2(source, l2, active)?;
            }
        }
        Ok(())
    }

    fn walk_bitmaps(&mut self, source: &dyn ReadAt) -> Result<(), DiskError> {
        let Some(ext) = self.header.bitmaps else {
            return Ok(());
        };
        let h = self.header;
        self.reference("bitmap directory", ext.directory_offset, ext.directory_size);
        let end = ext.directory_offset.saturating_add(ext.directory_size);
        if end > h.file_len || ext.directory_size > MAX_L1_BYTES {
            return Ok(());
        }
        let mut dir = vec![0u8; ext.directory_size as usize];
        super::read_exact(
            source,
            crate::Format::Qcow2,
            "bitmap directory",
            ext.directory_offset,
            &mut dir,
        )?;
        let mut at = 0usize;
        for _ in 0..ext.count {
            let Some(fixed) = dir.get(at..at + BITMAP_ENTRY_FIXED) else {
                self.problem(
                    true,
                    "bitmap directory entry runs past the directory".into(),
                );
                break;
            };
            let table_offset = u64::from_be_bytes(fixed[0..8].try_into().unwrap_or_default());
            let table_size = u32::from_be_bytes(fixed[8..12].try_into().unwrap_or_default());
            let name_size = u16::from_be_bytes(fixed[18..20].try_into().unwrap_or_default());
            let extra = u32::from_be_bytes(fixed[20..24].try_into().unwrap_or_default());
            let table_bytes = u64::from(table_size) * 8;
            self.reference("bitmap table", table_offset, table_bytes);
            if table_offset.saturating_add(table_bytes) <= h.file_len && table_bytes <= MAX_L1_BYTES
            {
                let table = read_table(
                    source,
                    "bitmap table",
                    table_offset,
                    u64::from(table_size),
                    false,
                )?;
                for entry in table {
                    let data = entry & TABLE_OFFSET_MASK;
                    if data != 0 {
                        self.reference("bitmap data", data, h.cluster_size);
                    }
                }
            }
            at =
                (at + BITMAP_ENTRY_FIXED + extra as usize + name_size as usize).next_multiple_of(8);
        }
        Ok(())
    }
}

/// Stored refcounts, read one refcount block at a time.
struct Refcounts<'a> {
    header: &'a Header,
    table: Vec<u64>,
    block: Option<(u64, Vec<u8>)>,
}

impl Refcounts<'_> {
    fn entries_per_block(&self) -> u64 {
        self.header.cluster_size * 8 >> self.header.refcount_order
    }

    fn get(&mut self, source: &dyn ReadAt, cluster: u64) -> Result<u64, DiskError> {
        let per_block = self.entries_per_block();
        let Some(&entry) = self.table.get((cluster / per_block) as usize) else {
            return Ok(0);
        };
        let block = entry & !511;
        if block == 0
            || !block.is_multiple_of(self.header.cluster_size)
            || block.saturating_add(self.header.cluster_size) > self.header.file_len
        {
            return Ok(0);
        }
        if self.block.as_ref().map(|b| b.0) != Some(block) {
            let mut bytes = vec![0u8; self.header.cluster_size as usize];
            super::read_exact(
                source,
                crate::Format::Qcow2,
                "refcount block",
                block,
                &mut bytes,
            )?;
            self.block = Some((block, bytes));
        }
        let bytes = &self.block.as_ref().map(|b| &b.1).ok_or_else(|| {
            DiskError::corrupt(crate::Format::Qcow2, "refcount block", block, "not loaded")
        })?;
        let index = cluster % per_block;
        let bits = 1u64 << self.header.refcount_order;
        Ok(if bits >= 8 {
            let width = (bits / 8) as usize;
            let start = index as usize * width;
            bytes[start..start + width]
                .iter()
                .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
        } else {
            let bit = index * bits;
            u64::from(bytes[(bit / 8) as usize] >> (bit % 8)) & ((1 << bits) - 1)
        })
    }
}

pub(super) fn check(disk: &Qcow2Disk) -> Result<CheckReport, DiskError> {
    let source = disk.source();
    let h = &disk.mapper.header;
    let clusters = h.file_len.div_ceil(h.cluster_size);
    if clusters > MAX_CHECK_CLUSTERS {
        return Err(DiskError::TooLarge {
            format: crate::Format::Qcow2,
            structure: "image (clusters to check)",
            value: clusters,
            limit: MAX_CHECK_CLUSTERS,
        });
    }
    let mut counter = Counter {
        header: h,
        refs: vec![0; clusters as usize],
        report: CheckReport {
            allocated_clusters: Some(0),
            total_clusters: Some(h.guest_clusters()),
            ..CheckReport::default()
        },
    };
    counter.reference("header", 0, h.cluster_size);
    counter.walk_l1(source, h.l1_offset, h.l1_table_entries, true)?;
    for snapshot in disk.snapshots() {
        counter.walk_l1(source, snapshot.l1_offset, snapshot.l1_size, false)?;
    }
    if h.nb_snapshots > 0 {
        counter.reference(
            "snapshot table",
            h.snapshots_offset,
            snapshot_table_bytes(disk),
        );
    }
    counter.walk_bitmaps(source)?;

    let (rt_start, rt_end) = h.refcount_table_range();
    counter.reference("refcount table", rt_start, rt_end - rt_start);
    let table = if rt_end <= h.file_len {
        read_table(
            source,
            "refcount table",
            rt_start,
            (rt_end - rt_start) / 8,
            false,
        )?
    } else {
        Vec::new()
    };
    for (index, &entry) in table.iter().enumerate() {
        let block = entry & !511;
        if block == 0 {
            continue;
        }
        if !block.is_multiple_of(h.cluster_size) {
            counter.problem(
                true,
                format!("refcount table entry {index}: block offset {block:#x} is unaligned"),
            );
            continue;
        }
        counter.reference("refcount block", block, h.cluster_size);
    }

    let mut stored = Refcounts {
        header: h,
        table,
        block: None,
    };
    let mut highest = None;
    for cluster in 0..clusters {
        let expected = u64::from(counter.refs[cluster as usize]);
        let found = stored.get(source, cluster)?;
        if expected > 0 || found > 0 {
            highest = Some(cluster);
        }
        if found != expected {
            let offset = cluster * h.cluster_size;
            let corruption = found < expected;
            let what = if corruption {
                "ERROR"
            } else {
                "Leaked cluster"
            };
            counter.problem(
                corruption,
                format!(
                    "{what}: cluster {cluster} ({offset:#x}) refcount={found} reference={expected}"
                ),
            );
        }
    }
    check_copied_flags(disk, &mut counter, &mut stored)?;
    let mut report = counter.report;
    report.image_end_offset = Some(highest.map_or(0, |c| (c + 1) * h.cluster_size));
    Ok(report)
}

/// Bytes of the snapshot table (entries are 8-byte aligned).
fn snapshot_table_bytes(disk: &Qcow2Disk) -> u64 {
    disk.snapshots().iter().map(|s| s.entry_bytes).sum()
}

/// qemu's OFLAG_COPIED rule: in the active tables, bit 63 is set exactly when the refcount
/// of the cluster it points at is 1.
fn check_copied_flags(
    disk: &Qcow2Disk,
    counter: &mut Counter<'_>,
    stored: &mut Refcounts<'_>,
) -> Result<(), DiskError> {
    let source = disk.source();
    let h = &disk.mapper.header;
    let clusters = counter.refs.len() as u64;
    for (index, &entry) in disk.mapper.l1.iter().enumerate() {
        let l2 = entry & TABLE_OFFSET_MASK;
        if l2 == 0
            || !l2.is_multiple_of(h.cluster_size)
            || l2 / h.cluster_size >= clusters
            || l2 + h.cluster_size > h.file_len
        {
            continue;
        }
        let refcount = stored.get(source, l2 / h.cluster_size)?;
        if (entry & ENTRY_COPIED != 0) != (refcount == 1) {
            counter.problem(
                true,
                format!("OFLAG_COPIED L2 cluster: L1 index {index} l1_entry={entry:#x} refcount={refcount}"),
            );
        }
        let words = read_table(source, "L2 table", l2, h.cluster_size / 8, false)?;
        let stride = (h.l2_entry_bytes() / 8) as usize;
        for (i, e) in words.chunks_exact(stride).enumerate() {
            let word = e[0];
            let host = word & TABLE_OFFSET_MASK;
            if word & L2_COMPRESSED != 0
                || host == 0
                || !host.is_multiple_of(h.cluster_size)
                || host / h.cluster_size >= clusters
            {
                continue;
            }
            let refcount = stored.get(source, host / h.cluster_size)?;
            if (word & ENTRY_COPIED != 0) != (refcount == 1) {
                counter.problem(
                    true,
                    format!(
                        "OFLAG_COPIED data cluster: l2_entry={word:#x} (L2 at {l2:#x}, index {i}) refcount={refcount}"
                    ),
                );
            }
        }
    }
    Ok(())
}
