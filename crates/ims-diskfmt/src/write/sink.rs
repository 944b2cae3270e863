//! Where writers put their bytes: positional writes, so metadata can be patched after data.

use std::io;
use std::sync::Mutex;

/// Positional, write-only access to the output image.
pub trait Sink: Send + Sync {
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&self, offset: u64, buf: &[u8]) -> io::Result<()>;

    /// Sets the output length (extending with a hole, or truncating).
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// Makes everything written durable.
    fn sync(&self) -> io::Result<()>;
}

impl Sink for std::fs::File {
    fn write_all_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self, buf, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        std::fs::File::set_len(self, len)
    }

    fn sync(&self) -> io::Result<()> {
        self.sync_all()
    }
}

/// An in-memory sink for tests and small images.
#[derive(Debug, Default)]
pub struct MemorySink {
    bytes: Mutex<Vec<u8>>,
}

impl MemorySink {
    pub fn new() -> MemorySink {
        MemorySink::default()
    }

    /// A copy of everything written so far.
    pub fn contents(&self) -> Vec<u8> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        // A panic while holding the lock leaves plain bytes behind: still usable.
        self.bytes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Sink for MemorySink {
    fn write_all_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let end = start
            .checked_add(buf.len())
            .ok_or_else(|| io::Error::other("write past the address space"))?;
        let mut bytes = self.lock();
        if bytes.len() < end {
            bytes.resize(end, 0);
        }
        bytes[start..end].copy_from_slice(buf);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(io::Error::other)?;
        self.lock().resize(len, 0);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
}
