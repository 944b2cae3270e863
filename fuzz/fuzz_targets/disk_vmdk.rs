//! Fuzz target: opening arbitrary bytes as a VMDK image and reading every extent, `info` and
//! `check` must never panic (errors are fine).
#![no_main]

use std::sync::Arc;

use ims_diskfmt::Format;
use ims_diskfmt::disk::{Disk, ExtentKind, OpenOptions, open};
use libfuzzer_sys::fuzz_target;

/// Extents visited per input: fuzzed sizes reach 2^61 bytes of holes.
const MAX_EXTENTS: usize = 4096;
/// Bytes of data extents read per input.
const MAX_READ: u64 = 8 << 20;

fn read_everything(disk: &dyn Disk) {
    let mut offset = 0;
    let mut budget = MAX_READ;
    let mut buf = Vec::new();
    for _ in 0..MAX_EXTENTS {
        if offset >= disk.virtual_size() {
            break;
        }
        let Ok(extent) = disk.extent(offset, 1 << 20) else {
            break;
        };
        assert!(extent.length > 0 && extent.offset == offset);
        if extent.kind == ExtentKind::Data {
            let len = extent.length.min(budget);
            buf.resize(len as usize, 0);
            if disk.read_at(offset, &mut buf).is_err() {
                break;
            }
            budget -= len;
            if budget == 0 {
                break;
            }
        }
        offset += extent.length;
    }
}

fuzz_target!(|data: &[u8]| {
    for lenient in [false, true] {
        let options = OpenOptions { lenient };
        if let Ok(disk) = open(Arc::new(data.to_vec()), Format::Vmdk, &options) {
            read_everything(&*disk);
            let _ = disk.info();
            let _ = disk.check();
        }
    }
});
