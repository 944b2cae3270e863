//! Every crash the fuzz targets found, as a named regression test (input bytes inline).

use std::sync::Arc;

use ims_guest::Volume;
use ims_guest::fs::{self, FsKind};

/// guest_filesystems crash-94c78623: a 1-byte "NTFS volume". The ntfs crate turned the short
/// boot-sector read into `unreachable!()`; now it is an error.
#[test]
fn ntfs_on_a_truncated_boot_sector_is_an_error() {
    let input: &[u8] = &[0x03, 0xf6];
    // The target's first byte picks the filesystem (3 = NTFS); the rest is the volume.
    let vol = Volume::whole(Arc::new(input[1..].to_vec()));
    assert!(fs::open(FsKind::Ntfs, &vol).is_err());
}

/// guest_inspect crash-e0bfe103: 16 bytes with "NTFS    " at offset 3 are detected as NTFS
/// and opened; the boot sector read runs past the end (same ntfs-crate panic).
#[test]
fn inspect_of_a_16_byte_ntfs_signature_does_not_panic() {
    let input: Vec<u8> = vec![
        0x76, 0x65, 0x72, 0x4e, 0x54, 0x46, 0x53, 0x20, 0x20, 0x20, 0x20, 0x23, 0x52, 0x07, 0x00,
        0x4a,
    ];
    let _ = ims_guest::inspect(Arc::new(input));
}

/// guest_filesystems crash-a353a80e (and crash-6d918425, the same bug), minimized to 2049
/// bytes: an ext4 superblock with `s_blocks_per_group` = 0. ext4-view 0.9.3 divided by it
/// (panic); `Ext4Fs::open` now refuses it with a clear error.
#[test]
fn ext4_with_zero_blocks_per_group_is_an_error() {
    let input: &[u8] =
        include_bytes!("fuzz-regressions/guest_filesystems-ext4-zero-blocks-per-group.bin");
    // The target's first byte picks the filesystem (0 = ext4); the rest is the volume.
    assert_eq!(input[0], 0);
    let vol = Volume::whole(Arc::new(input[1..].to_vec()));
    let error = fs::open(FsKind::Ext4, &vol).err().expect("must not open");
    assert!(
        error.to_string().contains("s_blocks_per_group is 0"),
        "{error}"
    );
}

/// guest_filesystems crash-e18350e8 (and crash-9c0e5181, the same bug), 2146 bytes: an ext4
/// superblock with the 64-bit feature and `s_desc_size` 19. ext4-view 0.9.3 sliced each group
/// descriptor short and unwrapped (panic in `block_group.rs`); `Ext4Fs::open` now refuses it.
#[test]
fn ext4_with_short_64bit_group_descriptors_is_an_error() {
    let input: &[u8] =
        include_bytes!("fuzz-regressions/guest_filesystems-ext4-short-64bit-descriptors.bin");
    assert_eq!(input[0], 0);
    let vol = Volume::whole(Arc::new(input[1..].to_vec()));
    let error = fs::open(FsKind::Ext4, &vol).err().expect("must not open");
    assert!(
        error
            .to_string()
            .contains("64-bit group descriptors of 19 bytes"),
        "{error}"
    );
}
