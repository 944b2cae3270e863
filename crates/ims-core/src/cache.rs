//! The per-node image cache (Glance's `/v2/cache`, API 2.14): whole images kept on this node's
//! disk so that repeated downloads do not go back to the store, filled on download and by a
//! prefetcher for queued images, bounded in size (least recently used images leave first).
//!
//! Every node has its own cache directory; nodes share nothing but the metadata store. The data
//! lives in a [`LocalBlobStore`] (atomic: a cached image is visible only once whole), the queue
//! as empty files named by image id in `queue/`, so both survive a restart. Hit counts and access
//! times are kept in memory (a restart starts them at zero and at the file's modification time).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use ims_blob::local::LocalBlobStore;
use ims_blob::{BlobKey, BlobStore, BlobStream};
use ims_domain::{Caller, ImageStatus};
use ims_meta::MetaStore;
use time::OffsetDateTime;
use tokio::sync::Notify;

use crate::config::CacheConfig;
use crate::error::{ServiceError, ServiceResult};

/// Name of the queue directory under the cache directory.
const QUEUE_DIR: &str = "queue";

/// Errors of the cache's own disk work (the data itself goes through [`LocalBlobStore`]).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("creating cache directory {path}")]
    CreatingDirectory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing queue entry {path}")]
    WritingQueueEntry {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("removing queue entry {path}")]
    RemovingQueueEntry {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("listing queue directory {path}")]
    ListingQueue {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("opening the cache's data store")]
    OpeningStore(#[source] ims_blob::BlobError),
}

impl From<CacheError> for ServiceError {
    fn from(e: CacheError) -> Self {
        ServiceError::internal("image cache", &e)
    }
}

/// One cached image as `GET /v2/cache` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedImage {
    pub image_id: uuid::Uuid,
    pub size: u64,
    pub hits: u64,
    pub last_accessed: OffsetDateTime,
    pub last_modified: OffsetDateTime,
}

/// What the cache holds and what waits to be cached.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheListing {
    pub cached: Vec<CachedImage>,
    pub queued: Vec<uuid::Uuid>,
}

/// What `DELETE /v2/cache` clears (`x-image-cache-clear-target`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClearTarget {
    Cache,
    Queue,
    Both,
}

impl ClearTarget {
    /// Glance's header values; absent means both.
    pub fn parse(value: Option<&str>) -> ServiceResult<ClearTarget> {
        match value.map(str::trim) {
            None | Some("") => Ok(ClearTarget::Both),
            Some("cache") => Ok(ClearTarget::Cache),
            Some("queue") => Ok(ClearTarget::Queue),
            Some(other) => Err(ServiceError::invalid(format!(
                "If provided 'x-image-cache-clear-target' must be 'cache', 'queue' or empty string, not '{other}'."
            ))),
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    size: u64,
    hits: u64,
    last_accessed: OffsetDateTime,
    last_modified: OffsetDateTime,
}

#[derive(Default)]
struct Index {
    entries: BTreeMap<uuid::Uuid, Entry>,
    /// Images being written into the cache right now (one writer per image).
    filling: HashSet<uuid::Uuid>,
}

/// This node's image cache.
pub struct ImageCache {
    dir: PathBuf,
    data: LocalBlobStore,
    max_size: u64,
    index: Mutex<Index>,
    /// Wakes the prefetcher when an image is queued.
    queued: Notify,
}

fn cache_key(id: uuid::Uuid) -> BlobKey {
    BlobKey::parse(&id.to_string()).expect("a UUID is a valid blob key")
}

fn unix_time(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

impl ImageCache {
    /// Opens (creating if needed) the cache in `dir`, indexing what an earlier run left there.
    pub async fn open(dir: &Path, max_size: u64) -> Result<ImageCache, CacheError> {
        let queue = dir.join(QUEUE_DIR);
        std::fs::create_dir_all(&queue).map_err(|source| CacheError::CreatingDirectory {
            path: queue.clone(),
            source,
        })?;
        let data = LocalBlobStore::open(dir.join("data")).map_err(CacheError::OpeningStore)?;
        let mut index = Index::default();
        for blob in data.list().await.map_err(CacheError::OpeningStore)? {
            let Ok(id) = uuid::Uuid::parse_str(blob.key.as_str()) else {
                continue;
            };
            let modified = unix_time(blob.modified_unix);
            index.entries.insert(
                id,
                Entry {
                    size: blob.size,
                    hits: 0,
                    last_accessed: modified,
                    last_modified: modified,
                },
            );
        }
        Ok(ImageCache {
            dir: dir.to_path_buf(),
            data,
            max_size,
            index: Mutex::new(index),
            queued: Notify::new(),
        })
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn queue_path(&self, id: uuid::Uuid) -> PathBuf {
        self.dir.join(QUEUE_DIR).join(id.to_string())
    }

    pub fn max_size(&self) -> u64 {
        self.max_size
    }

    pub fn is_cached(&self, id: uuid::Uuid) -> bool {
        self.index().entries.contains_key(&id)
    }

    /// The cached image's bytes (or `range` of them), counting a hit; `None` on a miss.
    pub async fn read(
        &self,
        id: uuid::Uuid,
        range: Option<std::ops::Range<u64>>,
    ) -> Option<BlobStream> {
        if !self.is_cached(id) {
            return None;
        }
        match self.data.open(&cache_key(id), range).await {
            Ok(stream) => {
                if let Some(entry) = self.index().entries.get_mut(&id) {
                    entry.hits += 1;
                    entry.last_accessed = ims_domain::now();
                }
                Some(stream)
            }
            Err(e) => {
                tracing::warn!(image_id = %id, error = %e, "cached image unreadable; dropping it");
                self.index().entries.remove(&id);
                let _ = self.data.delete(&cache_key(id)).await;
                None
            }
        }
    }

    /// Writes `stream` (which must hold exactly `size` bytes) into the cache, unless the image
    /// is already cached, being cached, or larger than the whole cache. Evicts the least
    /// recently used images to stay within the size bound. Returns whether it cached the image.
    pub async fn fill(
        &self,
        id: uuid::Uuid,
        size: u64,
        mut stream: BlobStream,
    ) -> Result<bool, ims_blob::BlobError> {
        if size > self.max_size {
            tracing::info!(image_id = %id, size, max = self.max_size, "image larger than the cache; not cached");
            return Ok(false);
        }
        {
            let mut index = self.index();
            if index.entries.contains_key(&id) || !index.filling.insert(id) {
                return Ok(false);
            }
        }
        let result = async {
            let mut writer = self.data.create(&cache_key(id)).await?;
            let mut written: u64 = 0;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                written = written.saturating_add(chunk.len() as u64);
                if written > size {
                    return Ok(None);
                }
                writer.write(chunk).await?;
            }
            if written != size {
                return Ok(None);
            }
            writer.commit().await.map(Some)
        }
        .await;
        self.index().filling.remove(&id);
        match result? {
            Some(size) => {
                let now = ims_domain::now();
                self.index().entries.insert(
                    id,
                    Entry {
                        size,
                        hits: 0,
                        last_accessed: now,
                        last_modified: now,
                    },
                );
                self.evict(Some(id)).await;
                Ok(true)
            }
            None => {
                tracing::warn!(image_id = %id, size, "image data did not have its recorded size; not cached");
                Ok(false)
            }
        }
    }

    /// Removes least recently used images until the cache fits its bound, sparing `keep`.
    async fn evict(&self, keep: Option<uuid::Uuid>) {
        let victims = {
            let index = self.index();
            let mut total: u64 = index.entries.values().map(|e| e.size).sum();
            let mut by_age: Vec<_> = index
                .entries
                .iter()
                .filter(|(id, _)| Some(**id) != keep)
                .map(|(id, e)| (e.last_accessed, *id, e.size))
                .collect();
            by_age.sort();
            let mut victims = Vec::new();
            for (_, id, size) in by_age {
                if total <= self.max_size {
                    break;
                }
                total = total.saturating_sub(size);
                victims.push(id);
            }
            victims
        };
        for id in victims {
            tracing::info!(image_id = %id, "evicting image from the cache");
            self.remove_cached(id).await;
        }
    }

    async fn remove_cached(&self, id: uuid::Uuid) {
        self.index().entries.remove(&id);
        if let Err(e) = self.data.delete(&cache_key(id)).await {
            tracing::warn!(image_id = %id, error = %e, "removing cached image failed");
        }
    }

    /// Puts the image on the prefetch queue (a no-op if it is cached or queued already).
    pub fn queue(&self, id: uuid::Uuid) -> Result<(), CacheError> {
        if self.is_cached(id) {
            return Ok(());
        }
        let path = self.queue_path(id);
        std::fs::write(&path, b"")
            .map_err(|source| CacheError::WritingQueueEntry { path, source })?;
        self.queued.notify_one();
        Ok(())
    }

    fn unqueue(&self, id: uuid::Uuid) -> Result<(), CacheError> {
        let path = self.queue_path(id);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(CacheError::RemovingQueueEntry { path, source: e })
            }
            _ => Ok(()),
        }
    }

    /// The queued image ids, oldest first.
    pub fn queued(&self) -> Result<Vec<uuid::Uuid>, CacheError> {
        let dir = self.dir.join(QUEUE_DIR);
        let listing = |source| CacheError::ListingQueue {
            path: dir.clone(),
            source,
        };
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(listing)? {
            let entry = entry.map_err(listing)?;
            let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| uuid::Uuid::parse_str(n).ok())
            else {
                continue;
            };
            let modified = entry.metadata().and_then(|m| m.modified()).ok();
            found.push((modified, id));
        }
        found.sort();
        Ok(found.into_iter().map(|(_, id)| id).collect())
    }

    pub fn listing(&self) -> Result<CacheListing, CacheError> {
        let cached = self
            .index()
            .entries
            .iter()
            .map(|(id, e)| CachedImage {
                image_id: *id,
                size: e.size,
                hits: e.hits,
                last_accessed: e.last_accessed,
                last_modified: e.last_modified,
            })
            .collect();
        Ok(CacheListing {
            cached,
            queued: self.queued()?,
        })
    }

    /// Removes the image from the cache and from the queue.
    pub async fn delete(&self, id: uuid::Uuid) -> Result<(), CacheError> {
        self.unqueue(id)?;
        if self.is_cached(id) {
            self.remove_cached(id).await;
        }
        Ok(())
    }

    /// Empties the cache, the queue or both; returns how many entries went.
    pub async fn clear(&self, target: ClearTarget) -> Result<usize, CacheError> {
        let mut removed = 0;
        if matches!(target, ClearTarget::Queue | ClearTarget::Both) {
            for id in self.queued()? {
                self.unqueue(id)?;
                removed += 1;
            }
        }
        if matches!(target, ClearTarget::Cache | ClearTarget::Both) {
            let ids: Vec<_> = self.index().entries.keys().copied().collect();
            for id in ids {
                self.remove_cached(id).await;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// The cache API's service: Glance's policy (`cache_*` are admin-only) and rules over
/// [`ImageCache`]. Filling it from the image stores is [`crate::images::ImageService`]'s part
/// (`prefetch_queued`, and every download that misses).
pub struct CacheService {
    cache: Arc<ImageCache>,
    meta: Arc<dyn MetaStore>,
    prefetch_interval: Duration,
}

fn require_admin(caller: &Caller, action: &str) -> ServiceResult<()> {
    if !caller.is_admin() {
        return Err(ServiceError::forbidden(format!(
            "You are not authorized to complete {action} action."
        )));
    }
    Ok(())
}

impl CacheService {
    pub fn new(
        cache: Arc<ImageCache>,
        meta: Arc<dyn MetaStore>,
        config: &CacheConfig,
    ) -> CacheService {
        CacheService {
            cache,
            meta,
            prefetch_interval: Duration::from_secs(config.prefetch_interval_secs.max(1)),
        }
    }

    pub fn cache(&self) -> &Arc<ImageCache> {
        &self.cache
    }

    pub async fn list(&self, caller: &Caller) -> ServiceResult<CacheListing> {
        require_admin(caller, "cache_list")?;
        Ok(self.cache.listing()?)
    }

    /// `PUT /v2/cache/{id}`: unknown image 404, an image without data (not active) 400.
    pub async fn queue(&self, caller: &Caller, id: &str) -> ServiceResult<()> {
        require_admin(caller, "cache_image")?;
        let not_found = || ServiceError::not_found(format!("Image {id} not found."));
        let id = uuid::Uuid::parse_str(id).map_err(|_| not_found())?;
        let image = self
            .meta
            .get_image(id)
            .await?
            .filter(|i| i.status != ImageStatus::Deleted)
            .ok_or_else(not_found)?;
        if image.status != ImageStatus::Active || image.data.is_none() {
            return Err(ServiceError::invalid(format!(
                "Only images with status active can be targeted for queueing; image {id} is {}.",
                image.status.as_str()
            )));
        }
        Ok(self.cache.queue(id)?)
    }

    pub async fn delete(&self, caller: &Caller, id: &str) -> ServiceResult<()> {
        require_admin(caller, "cache_delete")?;
        let id = uuid::Uuid::parse_str(id)
            .map_err(|_| ServiceError::not_found(format!("Image {id} not found.")))?;
        Ok(self.cache.delete(id).await?)
    }

    pub async fn clear(&self, caller: &Caller, target: ClearTarget) -> ServiceResult<usize> {
        require_admin(caller, "cache_delete")?;
        Ok(self.cache.clear(target).await?)
    }

    /// Drops a queue entry (its image was cached, is gone or has no data).
    pub fn unqueue(&self, id: uuid::Uuid) -> ServiceResult<()> {
        Ok(self.cache.unqueue(id)?)
    }

    /// Waits until an image is queued or the prefetch interval passed.
    pub async fn wait_for_queue(&self) {
        let _ = tokio::time::timeout(self.prefetch_interval, self.cache.queued.notified()).await;
    }

    /// Fills the cache in the background from `stream` (the image's `size` bytes), after a
    /// download missed it. The client is served from the store meanwhile.
    pub fn fill_in_background(self: &Arc<Self>, id: uuid::Uuid, size: u64, stream: BlobStream) {
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.cache.fill(id, size, stream).await {
                tracing::warn!(image_id = %id, error = %e, "caching downloaded image failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn stream_of(data: &'static [u8]) -> BlobStream {
        Box::pin(futures::stream::iter(vec![Ok(Bytes::from_static(data))]))
    }

    async fn read_all(mut s: BlobStream) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn fill_open_and_hits() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ImageCache::open(dir.path(), 1 << 20).await.unwrap();
        let id = uuid::Uuid::new_v4();
        assert!(cache.read(id, None).await.is_none());
        assert!(cache.fill(id, 5, stream_of(b"hello")).await.unwrap());
        assert!(
            !cache.fill(id, 5, stream_of(b"hello")).await.unwrap(),
            "already cached"
        );
        assert_eq!(
            read_all(cache.read(id, None).await.unwrap()).await,
            b"hello"
        );
        assert_eq!(
            read_all(cache.read(id, Some(1..3)).await.unwrap()).await,
            b"el"
        );
        let listing = cache.listing().unwrap();
        assert_eq!(listing.cached.len(), 1);
        assert_eq!(listing.cached[0].hits, 2);
        assert_eq!(listing.cached[0].size, 5);
    }

    #[tokio::test]
    async fn wrong_size_is_not_cached() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ImageCache::open(dir.path(), 1 << 20).await.unwrap();
        let id = uuid::Uuid::new_v4();
        assert!(!cache.fill(id, 4, stream_of(b"hello")).await.unwrap());
        assert!(!cache.fill(id, 6, stream_of(b"hello")).await.unwrap());
        assert!(!cache.is_cached(id));
        assert!(cache.listing().unwrap().cached.is_empty());
    }

    #[tokio::test]
    async fn size_bound_evicts_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ImageCache::open(dir.path(), 10).await.unwrap();
        let (a, b, c) = (
            uuid::Uuid::new_v4(),
            uuid::Uuid::new_v4(),
            uuid::Uuid::new_v4(),
        );
        assert!(cache.fill(a, 4, stream_of(b"aaaa")).await.unwrap());
        assert!(cache.fill(b, 4, stream_of(b"bbbb")).await.unwrap());
        // `a` is used again, so `b` is the least recently used when `c` arrives.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let _ = cache.read(a, None).await.unwrap();
        assert!(cache.fill(c, 4, stream_of(b"cccc")).await.unwrap());
        assert!(cache.is_cached(a) && cache.is_cached(c) && !cache.is_cached(b));
        // Larger than the whole cache: refused, nothing evicted.
        let big = uuid::Uuid::new_v4();
        assert!(
            !cache
                .fill(big, 11, stream_of(b"01234567890"))
                .await
                .unwrap()
        );
        assert!(cache.is_cached(a) && cache.is_cached(c));
    }

    #[tokio::test]
    async fn queue_clear_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ImageCache::open(dir.path(), 1 << 20).await.unwrap();
        let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        cache.queue(a).unwrap();
        cache.queue(b).unwrap();
        assert!(cache.fill(a, 2, stream_of(b"aa")).await.unwrap());
        let listing = cache.listing().unwrap();
        assert_eq!(listing.queued.len(), 2);
        assert_eq!(cache.clear(ClearTarget::Queue).await.unwrap(), 2);
        assert!(cache.listing().unwrap().queued.is_empty());
        assert!(cache.is_cached(a));
        cache.queue(b).unwrap();
        drop(cache);
        // A restart finds the cached image and the queue again.
        let cache = ImageCache::open(dir.path(), 1 << 20).await.unwrap();
        assert!(cache.is_cached(a));
        assert_eq!(cache.queued().unwrap(), vec![b]);
        cache.delete(b).await.unwrap();
        cache.delete(a).await.unwrap();
        assert_eq!(cache.listing().unwrap(), CacheListing::default());
    }

    #[test]
    fn clear_target_header() {
        assert_eq!(ClearTarget::parse(None).unwrap(), ClearTarget::Both);
        assert_eq!(ClearTarget::parse(Some("")).unwrap(), ClearTarget::Both);
        assert_eq!(
            ClearTarget::parse(Some("cache")).unwrap(),
            ClearTarget::Cache
        );
        assert_eq!(
            ClearTarget::parse(Some("queue")).unwrap(),
            ClearTarget::Queue
        );
        assert_eq!(
            ClearTarget::parse(Some("invalid")).unwrap_err().kind,
            ims_domain::ErrorKind::InvalidInput
        );
    }
}
