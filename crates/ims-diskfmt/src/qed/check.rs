//! `qemu-img check` for QED: every table and data cluster referenced once, inside the file;
//! clusters after the header that nothing references are leaks.

use super::header::ZERO_CLUSTER;
use super::reader::QedDisk;
use crate::disk::{CheckReport, DiskError};

/// Problems listed one by one; the counters keep counting beyond this.
const MAX_MESSAGES: usize = 1000;
/// File clusters a check tracks (one bit each): 1 Gi clusters = 4 TiB at 4 KiB.
const MAX_CHECK_CLUSTERS: u64 = 1 << 30;

struct Used {
    bits: Vec<u64>,
    report: CheckReport,
}

impl Used {
    fn problem(&mut self, message: String) {
        self.report.corruptions += 1;
        if self.report.messages.len() < MAX_MESSAGES {
            self.report.messages.push(message);
        }
    }

    /// Marks `count` clusters from `cluster` used; false (and a corruption) if any already was.
    fn mark(&mut self, what: &str, cluster: u64, count: u64) -> bool {
        for c in cluster..cluster + count {
            let (word, bit) = ((c / 64) as usize, c % 64);
            if self.bits[word] & (1 << bit) != 0 {
                self.problem(format!("{what}: cluster {c} is referenced twice"));
                return false;
            }
            self.bits[word] |= 1 << bit;
        }
        true
    }
}

pub(super) fn check(disk: &QedDisk) -> Result<CheckReport, DiskError> {
    let cs = disk.cluster_size;
    let clusters = disk.file_clusters_end / cs;
    if clusters > MAX_CHECK_CLUSTERS {
        return Err(DiskError::TooLarge {
            format: crate::Format::Qed,
            structure: "image (clusters to check)",
            value: clusters,
            limit: MAX_CHECK_CLUSTERS,
        });
    }
    let mut used = Used {
        bits: vec![0; clusters.div_ceil(64) as usize],
        report: CheckReport {
            allocated_clusters: Some(0),
            total_clusters: Some(disk.virtual_size.div_ceil(cs)),
            ..CheckReport::default()
        },
    };
    used.mark("L1 table", disk.l1_offset / cs, disk.table_size);
    for (index, &l2) in disk.l1.iter().enumerate() {
        if l2 == 0 {
            continue;
        }
        if !disk.table_offset_valid(l2) {
            used.problem(format!("L1 entry {index}: invalid L2 table offset {l2:#x}"));
            continue;
        }
        if !used.mark("L2 table", l2 / cs, disk.table_size) {
            continue;
        }
        for (i, &data) in disk.read_table("L2 table", l2)?.iter().enumerate() {
            if data == 0 || data == ZERO_CLUSTER {
                continue;
            }
            if !disk.cluster_offset_valid(data) {
                used.problem(format!(
                    "L2 table at {l2:#x} entry {i}: invalid data cluster offset {data:#x}"
                ));
                continue;
            }
            if used.mark("data cluster", data / cs, 1) {
                used.report.allocated_clusters =
                    Some(used.report.allocated_clusters.unwrap_or(0) + 1);
            }
        }
    }
    let first = disk.header_bytes / cs;
    for c in first..clusters {
        if used.bits[(c / 64) as usize] & (1 << (c % 64)) == 0 {
            used.report.leaks += 1;
            if used.report.messages.len() < MAX_MESSAGES {
                used.report
                    .messages
                    .push(format!("Leaked cluster {c} ({:#x})", c * cs));
            }
        }
    }
    Ok(used.report)
}
