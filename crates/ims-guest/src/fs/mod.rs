//! Read-only filesystems: detection by magic, and the small path-based interface the OS
//! detectors read through (`GuestFs`).

pub mod btrfs;
pub mod ext4;
pub mod fat;
pub mod iso9660;
pub mod lzo;
pub mod ntfs;
pub(crate) mod resolve;
pub mod xfs;

use crate::error::Result;
use crate::volume::{Volume, be, le};

/// Largest file the detectors read whole (release files, registry hives are smaller; a
/// SOFTWARE hive of a real Windows is 50–100 MiB).
pub const MAX_FILE_BYTES: usize = 256 << 20;
/// Most entries listed from one directory.
pub const MAX_DIR_ENTRIES: usize = 100_000;

/// A filesystem type recognised by its superblock magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    Ext2,
    Ext3,
    Ext4,
    Xfs,
    Btrfs,
    Fat,
    Ntfs,
    Iso9660,
    Swap,
    /// An LVM2 physical volume (not a filesystem, but found where one could be).
    LvmPv,
}

impl FsKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FsKind::Ext2 => "ext2",
            FsKind::Ext3 => "ext3",
            FsKind::Ext4 => "ext4",
            FsKind::Xfs => "xfs",
            FsKind::Btrfs => "btrfs",
            FsKind::Fat => "vfat",
            FsKind::Ntfs => "ntfs",
            FsKind::Iso9660 => "iso9660",
            FsKind::Swap => "swap",
            FsKind::LvmPv => "LVM2_member",
        }
    }
}

/// Recognises the filesystem on `vol` by its magic numbers, reading at most the first 64 KiB
/// and the Btrfs superblock.
pub fn detect(vol: &Volume) -> Result<Option<FsKind>> {
    let head_len = vol.len().min(0x11000) as usize;
    let head = vol.read_vec(0, head_len, "filesystem superblock area")?;
    Ok(detect_bytes(&head))
}

/// [`detect`] over the first bytes of a volume (up to 0x11000 of them).
pub fn detect_bytes(head: &[u8]) -> Option<FsKind> {
    if head.get(0..4) == Some(b"XFSB") {
        return Some(FsKind::Xfs);
    }
    if head.get(3..11) == Some(b"NTFS    ") {
        return Some(FsKind::Ntfs);
    }
    if head.get(510..512) == Some(&[0x55, 0xaa])
        && (head.get(82..87) == Some(b"FAT32") || head.get(54..57) == Some(b"FAT"))
    {
        return Some(FsKind::Fat);
    }
    if (512..2048)
        .step_by(512)
        .any(|at| head.get(at..at + 8) == Some(b"LABELONE"))
    {
        return Some(FsKind::LvmPv);
    }
    if le::u16(head, 1024 + 56) == 0xef53 {
        let compat = le::u32(head, 1024 + 92);
        let incompat = le::u32(head, 1024 + 96);
        // extents | 64bit | flex_bg mark ext4; a journal without them is ext3.
        return Some(if incompat & (0x40 | 0x80 | 0x200) != 0 {
            FsKind::Ext4
        } else if compat & 0x4 != 0 {
            FsKind::Ext3
        } else {
            FsKind::Ext2
        });
    }
    if head.get(0x8001..0x8006) == Some(b"CD001") {
        return Some(FsKind::Iso9660);
    }
    if head.get(0x10040..0x10048) == Some(b"_BHRfS_M") {
        return Some(FsKind::Btrfs);
    }
    if head.get(4086..4096) == Some(b"SWAPSPACE2") {
        return Some(FsKind::Swap);
    }
    // Keep the big-endian helpers referenced for callers that parse after detection.
    let _ = be::u16;
    None
}

/// What the OS detectors need from a filesystem: read a file, list a directory. Paths are
/// absolute, `/`-separated; symlinks are followed inside the filesystem (an absolute target
/// is relative to this filesystem's root). `Ok(None)` means "does not exist".
pub trait GuestFs {
    fn kind(&self) -> FsKind;
    /// Reads at most `max` bytes from the start of the file at `path`.
    fn read_file(&self, path: &str, max: usize) -> Result<Option<Vec<u8>>>;
    /// Names in the directory at `path` (without `.` and `..`).
    fn list_dir(&self, path: &str) -> Result<Option<Vec<String>>>;
    /// Whether anything exists at `path`.
    fn exists(&self, path: &str) -> Result<bool>;
}

/// Opens the filesystem on `vol` for reading, when it is of a kind that can be read.
pub fn open(kind: FsKind, vol: &Volume) -> Result<Option<Box<dyn GuestFs>>> {
    Ok(match kind {
        FsKind::Ext2 | FsKind::Ext3 | FsKind::Ext4 => {
            Some(Box::new(ext4::Ext4Fs::open(vol.clone(), kind)?))
        }
        FsKind::Xfs => Some(Box::new(xfs::XfsFs::open(vol.clone())?)),
        FsKind::Fat => Some(Box::new(fat::FatFs::open(vol.clone())?)),
        FsKind::Ntfs => Some(Box::new(ntfs::NtfsFs::open(vol.clone())?)),
        FsKind::Iso9660 => Some(Box::new(iso9660::IsoFs::open(vol.clone())?)),
        FsKind::Btrfs => Some(Box::new(btrfs::BtrfsFs::open(vol.clone())?)),
        FsKind::Swap | FsKind::LvmPv => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_by_magic() {
        let mut b = vec![0u8; 0x11000];
        assert_eq!(detect_bytes(&b), None);
        b[1024 + 56] = 0x53;
        b[1024 + 57] = 0xef;
        assert_eq!(detect_bytes(&b), Some(FsKind::Ext2));
        b[1024 + 96] = 0x40;
        assert_eq!(detect_bytes(&b), Some(FsKind::Ext4));
        let mut x = vec![0u8; 512];
        x[..4].copy_from_slice(b"XFSB");
        assert_eq!(detect_bytes(&x), Some(FsKind::Xfs));
        let mut i = vec![0u8; 0x11000];
        i[0x8001..0x8006].copy_from_slice(b"CD001");
        assert_eq!(detect_bytes(&i), Some(FsKind::Iso9660));
        // Short input never panics.
        assert_eq!(detect_bytes(&[1, 2, 3]), None);
    }
}
