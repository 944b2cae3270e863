//! ext2/3/4 through the `ext4-view` crate, reading through a [`Volume`].

use ext4_view::{Ext4, Ext4Error, Ext4Read};

use super::{FsKind, GuestFs, MAX_DIR_ENTRIES};
use crate::error::{GuestError, Result};
use crate::volume::Volume;

/// An ext2/3/4 filesystem opened read-only.
pub struct Ext4Fs {
    fs: Ext4,
    kind: FsKind,
}

struct VolumeReader(Volume);

impl Ext4Read for VolumeReader {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        self.0
            .read_exact_at(start_byte, dst, "ext4 block")
            .map_err(|e| Box::new(e) as _)
    }
}

fn fs_error(e: Ext4Error) -> GuestError {
    GuestError::Filesystem {
        fs: "ext4",
        message: e.to_string(),
    }
}

/// Where the superblock starts on the volume.
const SUPERBLOCK_OFFSET: u64 = 1024;
/// The superblock bytes [`check_superblock`] reads (up to and including `s_desc_size`).
const SUPERBLOCK_CHECKED_LEN: usize = 0x100;
/// `s_blocks_per_group` (u32 LE) within the superblock.
const BLOCKS_PER_GROUP_AT: usize = 0x20;
/// `s_feature_incompat` (u32 LE) within the superblock.
const FEATURE_INCOMPAT_AT: usize = 0x60;
/// `s_desc_size` (u16 LE) within the superblock: the group descriptor size on 64-bit ext4.
const DESC_SIZE_AT: usize = 0xfe;
/// INCOMPAT_64BIT: group descriptors are `s_desc_size` bytes, not 32.
const INCOMPAT_64BIT: u32 = 0x80;
/// The smallest 64-bit group descriptor (EXT4_MIN_DESC_SIZE_64BIT).
const MIN_DESC_SIZE_64BIT: u16 = 64;

/// Refuses the superblock fields ext4-view 0.9.3 trusts without checking (each found by the
/// `guest_filesystems` fuzz target, see `tests/fuzz_regressions.rs`): a zero
/// `s_blocks_per_group` (it divides by it) and a 64-bit `s_desc_size` below 64 (it reads the
/// descriptor checksum at byte 0x1e of a shorter slice).
fn check_superblock(vol: &Volume) -> Result<()> {
    let mut sb = [0u8; SUPERBLOCK_CHECKED_LEN];
    vol.read_exact_at(SUPERBLOCK_OFFSET, &mut sb, "ext4 superblock")?;
    let u32_at = |at: usize| u32::from_le_bytes([sb[at], sb[at + 1], sb[at + 2], sb[at + 3]]);
    let corrupt = |message: String| GuestError::Filesystem {
        fs: "ext4",
        message,
    };
    if u32_at(BLOCKS_PER_GROUP_AT) == 0 {
        return Err(corrupt("superblock: s_blocks_per_group is 0".to_owned()));
    }
    let desc_size = u16::from_le_bytes([sb[DESC_SIZE_AT], sb[DESC_SIZE_AT + 1]]);
    if u32_at(FEATURE_INCOMPAT_AT) & INCOMPAT_64BIT != 0 && desc_size < MIN_DESC_SIZE_64BIT {
        return Err(corrupt(format!(
            "superblock: 64-bit group descriptors of {desc_size} bytes (at least \
             {MIN_DESC_SIZE_64BIT})"
        )));
    }
    Ok(())
}

impl Ext4Fs {
    pub fn open(vol: Volume, kind: FsKind) -> Result<Ext4Fs> {
        check_superblock(&vol)?;
        let fs = Ext4::load(Box::new(VolumeReader(vol))).map_err(fs_error)?;
        Ok(Ext4Fs { fs, kind })
    }
}

/// Errors meaning "no such file here" rather than "the filesystem is broken".
fn is_absent(e: &Ext4Error) -> bool {
    matches!(
        e,
        Ext4Error::NotFound | Ext4Error::NotADirectory | Ext4Error::IsADirectory
    )
}

impl GuestFs for Ext4Fs {
    fn kind(&self) -> FsKind {
        self.kind
    }

    fn read_file(&self, path: &str, max: usize) -> Result<Option<Vec<u8>>> {
        let mut file = match self.fs.open(path) {
            Ok(f) => f,
            Err(e) if is_absent(&e) => return Ok(None),
            Err(e) => return Err(fs_error(e)),
        };
        let size = usize::try_from(file.metadata().len()).unwrap_or(usize::MAX);
        let mut buf = vec![0u8; size.min(max)];
        let mut done = 0;
        while done < buf.len() {
            let n = file.read_bytes(&mut buf[done..]).map_err(fs_error)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        buf.truncate(done);
        Ok(Some(buf))
    }

    fn list_dir(&self, path: &str) -> Result<Option<Vec<String>>> {
        let entries = match self.fs.read_dir(path) {
            Ok(d) => d,
            Err(e) if is_absent(&e) => return Ok(None),
            Err(e) => return Err(fs_error(e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(fs_error)?;
            let name = entry.file_name();
            let name = String::from_utf8_lossy(name.as_ref()).into_owned();
            if name == "." || name == ".." {
                continue;
            }
            if names.len() >= MAX_DIR_ENTRIES {
                return Err(GuestError::LimitExceeded {
                    what: "ext4 directory entries",
                    limit: MAX_DIR_ENTRIES as u64,
                });
            }
            names.push(name);
        }
        Ok(Some(names))
    }

    fn exists(&self, path: &str) -> Result<bool> {
        match self.fs.exists(path) {
            Ok(b) => Ok(b),
            Err(e) if is_absent(&e) => Ok(false),
            Err(e) => Err(fs_error(e)),
        }
    }
}
