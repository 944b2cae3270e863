//! Fuzz target: each read-only filesystem (chosen by the first byte) opened on arbitrary bytes,
//! then the paths the OS detectors read and a few directory listings: no panic, bounded work.
#![no_main]

use std::sync::Arc;

use ims_guest::Volume;
use ims_guest::fs::{self, FsKind};
use libfuzzer_sys::fuzz_target;

const KINDS: [FsKind; 6] = [
    FsKind::Ext4,
    FsKind::Xfs,
    FsKind::Fat,
    FsKind::Ntfs,
    FsKind::Iso9660,
    // Last, so selector bytes 0-4 of the existing corpus keep their filesystem.
    FsKind::Btrfs,
];
const PATHS: [&str; 6] = [
    "/etc/os-release",
    "/usr/bin/bash",
    "/EFI/BOOT/BOOTX64.EFI",
    "/Windows/System32/config/SOFTWARE",
    "/a/../b/./c",
    "/",
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let kind = KINDS[usize::from(selector) % KINDS.len()];
    // Btrfs' superblock is at 64 KiB: the input starts there, so the fuzzer need not
    // produce (and mutate) 64 KiB of leading bytes first.
    let bytes = if kind == FsKind::Btrfs {
        let mut v = vec![0u8; fs::btrfs::SUPERBLOCK_OFFSET as usize];
        v.extend_from_slice(rest);
        v
    } else {
        rest.to_vec()
    };
    let vol = Volume::whole(Arc::new(bytes));
    let Ok(Some(gfs)) = fs::open(kind, &vol) else {
        return;
    };
    for p in PATHS {
        let _ = gfs.read_file(p, 1 << 16);
        let _ = gfs.list_dir(p);
        let _ = gfs.exists(p);
    }
    let _ = ims_guest::os::detect(&*gfs);
});
