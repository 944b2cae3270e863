//! Fuzz target: the vhd reader on arbitrary bytes must never panic, in strict and lenient
//! mode, through open, extent, read_at, info and check.
#![no_main]

use std::sync::Arc;

use ims_diskfmt::Format;
use ims_diskfmt::disk::{OpenOptions, open};
use libfuzzer_sys::fuzz_target;

/// Bytes of virtual content read per input (keeps every run fast).
const READ_LIMIT: u64 = 8 << 20;

fuzz_target!(|data: &[u8]| {
    for lenient in [false, true] {
        let Ok(disk) = open(Arc::new(data.to_vec()), Format::Vhd, &OpenOptions { lenient }) else {
            continue;
        };
        let _ = (disk.info(), disk.check(), disk.granularity());
        let size = disk.virtual_size().min(READ_LIMIT);
        let mut offset = 0;
        let mut buf = vec![0u8; 1 << 20];
        while offset < size {
            let Ok(extent) = disk.extent(offset, size - offset) else {
                break;
            };
            assert!(extent.length > 0 && extent.length <= size - offset);
            let n = extent.length.min(buf.len() as u64) as usize;
            let _ = disk.read_at(offset, &mut buf[..n]);
            offset += n as u64;
        }
        // A backward, unaligned read (ZVHD restarts its stream).
        if disk.virtual_size() > 1000 {
            let _ = disk.read_at(1, &mut buf[..999]);
        }
    }
});
