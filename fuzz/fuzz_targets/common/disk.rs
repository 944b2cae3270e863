//! The body every `disk_*` fuzz target shares: open arbitrary bytes as one format, strict and
//! lenient, and drive every reader entry point; errors are fine, panics are not.

use std::sync::Arc;

use ims_diskfmt::Format;
use ims_diskfmt::disk::{Disk, OpenOptions, open};

/// Extents visited per input: fuzzed sizes reach 2^61 bytes of holes.
const MAX_EXTENTS: usize = 4096;
/// Bytes of virtual content read per input (keeps every run fast).
const MAX_READ: u64 = 8 << 20;
/// Largest single read.
const READ_CHUNK: u64 = 1 << 20;

pub fn exercise(data: &[u8], format: Format) {
    for lenient in [false, true] {
        if let Ok(disk) = open(Arc::new(data.to_vec()), format, &OpenOptions { lenient }) {
            let _ = (disk.info(), disk.check(), disk.granularity());
            read_extents(&*disk);
            // A backward, unaligned read (ZVHD restarts its stream).
            if disk.virtual_size() > 1000 {
                let _ = disk.read_at(1, &mut [0u8; 999]);
            }
        }
    }
}

/// Walks the extents from the start, reading each (data and zero alike) within the budget.
fn read_extents(disk: &dyn Disk) {
    let mut offset = 0;
    let mut budget = MAX_READ;
    let mut buf = Vec::new();
    for _ in 0..MAX_EXTENTS {
        if offset >= disk.virtual_size() || budget == 0 {
            break;
        }
        let Ok(extent) = disk.extent(offset, READ_CHUNK) else {
            break;
        };
        assert!(extent.length > 0 && extent.offset == offset && extent.length <= READ_CHUNK);
        let len = extent.length.min(budget);
        buf.resize(len as usize, 0);
        if disk.read_at(offset, &mut buf).is_err() {
            break;
        }
        budget -= len;
        offset += extent.length;
    }
}
