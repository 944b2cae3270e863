//! An in-memory [`BlobStore`] fake for service tests: same semantics, no disk.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};

use crate::{BlobError, BlobInfo, BlobKey, BlobResult, BlobStore, BlobStream, BlobWriter};

#[derive(Debug, Clone, Default)]
pub struct MemoryBlobStore {
    blobs: Arc<Mutex<BTreeMap<BlobKey, Bytes>>>,
}

impl MemoryBlobStore {
    pub fn new() -> Self {
        Self::default()
    }
}

struct MemoryWriter {
    key: BlobKey,
    buf: BytesMut,
    blobs: Arc<Mutex<BTreeMap<BlobKey, Bytes>>>,
}

#[async_trait]
impl BlobWriter for MemoryWriter {
    async fn write(&mut self, chunk: Bytes) -> BlobResult<()> {
        self.buf.extend_from_slice(&chunk);
        Ok(())
    }

    async fn commit(self: Box<Self>) -> BlobResult<u64> {
        let size = self.buf.len() as u64;
        self.blobs
            .lock()
            .unwrap()
            .insert(self.key, self.buf.freeze());
        Ok(size)
    }
}

#[async_trait]
impl BlobStore for MemoryBlobStore {
    async fn create(&self, key: &BlobKey) -> BlobResult<Box<dyn BlobWriter>> {
        Ok(Box::new(MemoryWriter {
            key: key.clone(),
            buf: BytesMut::new(),
            blobs: self.blobs.clone(),
        }))
    }

    async fn open(&self, key: &BlobKey, range: Option<Range<u64>>) -> BlobResult<BlobStream> {
        let data = self
            .blobs
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .ok_or_else(|| BlobError::NotFound(key.clone()))?;
        let size = data.len() as u64;
        let Range { start, end } = range.unwrap_or(0..size);
        if start > end || end > size {
            return Err(BlobError::RangeNotSatisfiable {
                key: key.to_string(),
                start,
                end,
                size,
            });
        }
        let slice = data.slice(start as usize..end as usize);
        Ok(Box::pin(futures::stream::iter(if slice.is_empty() {
            vec![]
        } else {
            vec![Ok(slice)]
        })))
    }

    async fn size(&self, key: &BlobKey) -> BlobResult<Option<u64>> {
        Ok(self.blobs.lock().unwrap().get(key).map(|b| b.len() as u64))
    }

    async fn delete(&self, key: &BlobKey) -> BlobResult<()> {
        self.blobs.lock().unwrap().remove(key);
        Ok(())
    }

    async fn sweep_incomplete(&self, _older_than: std::time::Duration) -> BlobResult<usize> {
        // Uncommitted writes live only in their writer; nothing outlives a process.
        Ok(0)
    }

    async fn list(&self) -> BlobResult<Vec<BlobInfo>> {
        Ok(self
            .blobs
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| BlobInfo {
                key: k.clone(),
                size: v.len() as u64,
                modified_unix: 0,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn conformance() {
        crate::conformance::run_all(&super::MemoryBlobStore::new()).await;
    }
}
