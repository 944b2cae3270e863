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

impl Ext4Fs {
    pub fn open(vol: Volume, kind: FsKind) -> Result<Ext4Fs> {
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
