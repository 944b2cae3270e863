//! NTFS through the `ntfs` crate: case-insensitive path lookup and bounded file reads.

use std::io::{self, Read, Seek, SeekFrom};

use ntfs::indexes::NtfsFileNameIndex;
use ntfs::{Ntfs, NtfsError, NtfsFile};

use super::{FsKind, GuestFs, MAX_DIR_ENTRIES};
use crate::error::{GuestError, Result};
use crate::volume::Volume;

/// Deepest path walked (Windows paths the detectors read are under 10 levels).
pub const MAX_PATH_DEPTH: usize = 64;

/// `Read + Seek` over a [`Volume`], what the `ntfs` crate reads through.
///
/// It never returns a short read or an error: the `ntfs` crate (0.4) turns an I/O error met
/// inside one of its binrw-parsed structures into `unreachable!()`, i.e. a panic on any
/// truncated or hostile volume. Reads past the end (or failing) give zeros instead, and the
/// first such failure is kept in `failure` so every operation checks it afterwards.
struct Cursor {
    vol: Volume,
    pos: u64,
    failure: Option<GuestError>,
}

impl Read for Cursor {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        buf.fill(0);
        let left = self.vol.len().saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n < buf.len() && self.failure.is_none() {
            self.failure = Some(GuestError::OutOfBounds {
                what: "NTFS read",
                offset: self.pos,
                len: self.vol.len(),
            });
        }
        if let Err(e) = self.vol.read_exact_at(self.pos, &mut buf[..n], "NTFS data") {
            self.failure.get_or_insert(e);
        }
        self.pos = self.pos.saturating_add(buf.len() as u64);
        Ok(buf.len())
    }
}

impl Seek for Cursor {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.vol.len().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        Ok(self.pos)
    }
}

fn fs_error(e: NtfsError) -> GuestError {
    GuestError::Filesystem {
        fs: "ntfs",
        message: e.to_string(),
    }
}

/// Runs one operation of the `ntfs` crate: a read that fell outside the volume makes it fail
/// even if the crate carried on over the zeros, and a panic inside the crate (it has
/// `unreachable!`s reachable from disk data) becomes an error instead of taking the caller down.
fn guarded<T>(c: &mut Cursor, op: impl FnOnce(&mut Cursor) -> Result<T>) -> Result<T> {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op(&mut *c)))
        .unwrap_or_else(|_| {
            Err(GuestError::Filesystem {
                fs: "ntfs",
                message: "the ntfs parser panicked on this volume".into(),
            })
        });
    match c.failure.take() {
        Some(e) => Err(e),
        None => result,
    }
}

/// An NTFS volume opened read-only (with its $UpCase table, for case-insensitive lookup).
pub struct NtfsFs {
    vol: Volume,
    ntfs: Ntfs,
}

impl NtfsFs {
    pub fn open(vol: Volume) -> Result<NtfsFs> {
        let mut c = Cursor {
            vol: vol.clone(),
            pos: 0,
            failure: None,
        };
        let ntfs = guarded(&mut c, |c| {
            let mut ntfs = Ntfs::new(c).map_err(fs_error)?;
            ntfs.read_upcase_table(c).map_err(fs_error)?;
            Ok(ntfs)
        })?;
        Ok(NtfsFs { vol, ntfs })
    }

    fn cursor(&self) -> Cursor {
        Cursor {
            vol: self.vol.clone(),
            pos: 0,
            failure: None,
        }
    }

    fn walk<'n>(&'n self, c: &mut Cursor, path: &str) -> Result<Option<NtfsFile<'n>>> {
        let mut file = self.ntfs.root_directory(c).map_err(fs_error)?;
        let parts: Vec<&str> = path
            .split(['/', '\\'])
            .filter(|p| !p.is_empty() && *p != ".")
            .collect();
        if parts.len() > MAX_PATH_DEPTH {
            return Err(GuestError::LimitExceeded {
                what: "NTFS path depth",
                limit: MAX_PATH_DEPTH as u64,
            });
        }
        for part in parts {
            if !file.is_directory() {
                return Ok(None);
            }
            let index = file.directory_index(c).map_err(fs_error)?;
            let mut finder = index.finder();
            let Some(entry) = NtfsFileNameIndex::find(&mut finder, &self.ntfs, c, part) else {
                return Ok(None);
            };
            let next = entry
                .map_err(fs_error)?
                .to_file(&self.ntfs, c)
                .map_err(fs_error)?;
            file = next;
        }
        Ok(Some(file))
    }
}

impl GuestFs for NtfsFs {
    fn kind(&self) -> FsKind {
        FsKind::Ntfs
    }

    fn read_file(&self, path: &str, max: usize) -> Result<Option<Vec<u8>>> {
        guarded(&mut self.cursor(), |c| self.read_file_with(c, path, max))
    }

    fn list_dir(&self, path: &str) -> Result<Option<Vec<String>>> {
        guarded(&mut self.cursor(), |c| self.list_dir_with(c, path))
    }

    fn exists(&self, path: &str) -> Result<bool> {
        guarded(&mut self.cursor(), |c| Ok(self.walk(c, path)?.is_some()))
    }
}

impl NtfsFs {
    fn read_file_with(&self, c: &mut Cursor, path: &str, max: usize) -> Result<Option<Vec<u8>>> {
        let Some(file) = self.walk(c, path)? else {
            return Ok(None);
        };
        if file.is_directory() {
            return Ok(None);
        }
        let Some(item) = file.data(c, "") else {
            return Ok(Some(Vec::new()));
        };
        let item = item.map_err(fs_error)?;
        let attr = item.to_attribute().map_err(fs_error)?;
        let mut value = attr.value(c).map_err(fs_error)?;
        let len = usize::try_from(value.len()).unwrap_or(usize::MAX).min(max);
        let mut buf = vec![0u8; len];
        let mut done = 0;
        while done < len {
            let n = ntfs::NtfsReadSeek::read(&mut value, c, &mut buf[done..]).map_err(fs_error)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        buf.truncate(done);
        Ok(Some(buf))
    }

    fn list_dir_with(&self, c: &mut Cursor, path: &str) -> Result<Option<Vec<String>>> {
        let Some(file) = self.walk(c, path)? else {
            return Ok(None);
        };
        if !file.is_directory() {
            return Ok(None);
        }
        let index = file.directory_index(c).map_err(fs_error)?;
        let mut entries = index.entries();
        let mut names = Vec::new();
        while let Some(entry) = entries.next(c) {
            let entry = entry.map_err(fs_error)?;
            let Some(key) = entry.key() else { continue };
            let key = key.map_err(fs_error)?;
            // DOS 8.3 aliases duplicate the long names.
            if key.namespace() == ntfs::structured_values::NtfsFileNamespace::Dos {
                continue;
            }
            let name = key.name().to_string_lossy();
            if names.len() >= MAX_DIR_ENTRIES {
                return Err(GuestError::LimitExceeded {
                    what: "NTFS directory entries",
                    limit: MAX_DIR_ENTRIES as u64,
                });
            }
            names.push(name);
        }
        Ok(Some(names))
    }
}
