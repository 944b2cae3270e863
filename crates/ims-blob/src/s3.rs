//! A [`BlobStore`] in an S3 bucket (Garage, Ceph RGW, MinIO, AWS) through `object_store`.
//!
//! Layout under the configured prefix: `blobs/<key>` holds committed blobs, `uploads/<id>` one
//! small marker per multipart upload in progress (its upload id and object path). A blob is
//! written as a multipart upload, which S3 makes visible only when it completes, so readers never
//! see partial data; a writer dropped before commit aborts its upload, and a process that died
//! mid-upload leaves a marker that [`S3BlobStore::sweep_incomplete`] finds and aborts.
//!
//! Memory per upload is bounded: the part being filled plus at most [`MAX_IN_FLIGHT_BYTES`] of
//! parts in flight.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, MultipartId, ObjectStore, PutPayload, PutPayloadMut};
use serde::Deserialize;
use tokio::task::JoinSet;

use crate::s3conf::S3Connection;
use crate::{BlobError, BlobInfo, BlobKey, BlobResult, BlobStore, BlobStream, BlobWriter};

/// Size of the first parts of an upload: big enough that request overhead is small next to the
/// transfer, small enough that the bytes buffered per upload stay modest. S3's minimum is 5 MiB.
pub const BASE_PART_SIZE: usize = 16 << 20;
/// The part size doubles after every this many parts, so that S3's limit of
/// [`MAX_PARTS`] parts still holds a blob far beyond the default 1 TiB image size cap.
const PARTS_PER_DOUBLING: usize = 1000;
/// Largest part size (256 MiB): reached after 4 doublings, i.e. past ~235 GiB of data.
pub const MAX_PART_SIZE: usize = 256 << 20;
/// S3's limit on the number of parts in one multipart upload.
pub const MAX_PARTS: usize = 10_000;
/// Bytes of finished parts being sent at once; when more would be in flight, `write` waits.
/// With the base part size this is four parts in parallel, enough to fill a fast link.
pub const MAX_IN_FLIGHT_BYTES: usize = 64 << 20;
/// An upload still running rewrites its marker this often (while data arrives)...
const MARKER_REFRESH: Duration = Duration::from_secs(30);
/// ...so a marker untouched for this long belongs to a writer that died or stalled. The sweep
/// never aborts younger uploads, whatever age it is asked for: another node's collector must not
/// abort an upload that is still running (a stalled client is cut off by the upload heartbeat
/// long before this matters).
pub const MARKER_STALE_AFTER: Duration = Duration::from_secs(120);

/// The size of part number `index` (0-based).
fn part_size(index: usize) -> usize {
    let doublings = (index / PARTS_PER_DOUBLING).min(4);
    (BASE_PART_SIZE << doublings).min(MAX_PART_SIZE)
}

/// The most bytes [`MAX_PARTS`] parts of the sizes [`part_size`] gives can hold (~1.7 TiB).
pub fn max_blob_size() -> u64 {
    (0..MAX_PARTS).map(|i| part_size(i) as u64).sum()
}

/// `[store] kind = "s3"`: image data in one bucket.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3StoreConfig {
    /// The bucket; it must exist. Env `IMS_STORE_S3_BUCKET`.
    pub bucket: String,
    /// Key prefix inside the bucket (e.g. `ims/`), so a bucket can be shared. Env
    /// `IMS_STORE_S3_PREFIX`.
    pub prefix: String,
    /// How to reach the service: `[store.connection]`. Env `IMS_STORE_S3_ENDPOINT`, `…_REGION`,
    /// `…_ACCESS_KEY_ID`, `…_SECRET_ACCESS_KEY` (or `…_SECRET_ACCESS_KEY_FILE`),
    /// `…_ALLOW_HTTP`, `…_UNSIGNED_PAYLOAD`.
    pub connection: S3Connection,
}

fn s3_err(op: &'static str, key: impl ToString) -> impl FnOnce(object_store::Error) -> BlobError {
    move |cause| BlobError::S3 {
        op,
        key: key.to_string(),
        cause,
    }
}

/// Image data in an S3 bucket.
#[derive(Debug, Clone)]
pub struct S3BlobStore {
    client: Arc<AmazonS3>,
    bucket: String,
    /// `""` or a prefix ending in `/`.
    prefix: String,
    /// [`MARKER_STALE_AFTER`]; shorter in tests.
    marker_stale_after: Duration,
}

impl S3BlobStore {
    /// Connects and checks the bucket is reachable with the credentials given (one list
    /// request), so a misconfigured node fails at start rather than at the first upload.
    pub async fn connect(config: &S3StoreConfig) -> BlobResult<S3BlobStore> {
        if crate::buckets::validate_bucket(&config.bucket).is_err() {
            return Err(BlobError::Config(format!(
                "store bucket {:?} is not a valid S3 bucket name",
                config.bucket
            )));
        }
        let prefix = match config.prefix.trim_matches('/') {
            "" => String::new(),
            p => format!("{p}/"),
        };
        if !prefix.is_empty() && BlobKey::parse(prefix.trim_end_matches('/')).is_err() {
            return Err(BlobError::Config(format!(
                "store prefix {:?} must be '/'-separated segments of [A-Za-z0-9._-]",
                config.prefix
            )));
        }
        let store = S3BlobStore {
            client: config.connection.client(&config.bucket)?,
            bucket: config.bucket.clone(),
            prefix,
            marker_stale_after: MARKER_STALE_AFTER,
        };
        let probe = Path::from(format!("{}blobs", store.prefix));
        store
            .client
            .list_with_delimiter(Some(&probe))
            .await
            .map_err(s3_err("listing", format!("s3://{}/{probe}", store.bucket)))?;
        Ok(store)
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    fn blobs_prefix(&self) -> Path {
        Path::from(format!("{}blobs", self.prefix))
    }

    fn uploads_prefix(&self) -> Path {
        Path::from(format!("{}uploads", self.prefix))
    }

    fn path(&self, key: &BlobKey) -> Path {
        Path::from(format!("{}blobs/{}", self.prefix, key.as_str()))
    }

    fn key_of(&self, path: &Path) -> Option<BlobKey> {
        let rest = path
            .as_ref()
            .strip_prefix(self.blobs_prefix().as_ref())?
            .strip_prefix('/')?;
        BlobKey::parse(rest).ok()
    }

    /// Reads a marker and aborts its upload; an upload already completed or aborted is fine.
    async fn abort_marked(&self, marker: &Path) -> BlobResult<()> {
        let text = match self.client.get(marker).await {
            Ok(got) => got.bytes().await.map_err(s3_err("reading", marker))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(s3_err("reading", marker)(e)),
        };
        let text = String::from_utf8_lossy(&text);
        if let Some((upload_id, path)) = text.split_once('\n') {
            let path = Path::from(path);
            match self
                .client
                .abort_multipart(&path, &upload_id.to_string())
                .await
            {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(s3_err("aborting upload of", path)(e)),
            }
        } else {
            tracing::warn!(marker = %marker, "malformed upload marker removed");
        }
        delete_ignoring_missing(&self.client, marker).await
    }
}

async fn delete_ignoring_missing(client: &AmazonS3, path: &Path) -> BlobResult<()> {
    match client.delete(path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(s3_err("deleting", path)(e)),
    }
}

/// Streams `range` (checked against the object's size) or all of the object at `path`.
/// `not_found` builds the error for a missing object.
pub(crate) async fn open_object(
    client: &AmazonS3,
    path: &Path,
    range: Option<Range<u64>>,
    not_found: impl FnOnce() -> BlobError,
    range_error: impl FnOnce(u64) -> BlobError,
) -> BlobResult<BlobStream> {
    let options = match range {
        None => GetOptions::default(),
        Some(range) => {
            let size = match client.head(path).await {
                Ok(meta) => meta.size,
                Err(object_store::Error::NotFound { .. }) => return Err(not_found()),
                Err(e) => return Err(s3_err("reading size of", path)(e)),
            };
            if range.start > range.end || range.end > size {
                return Err(range_error(size));
            }
            if range.is_empty() {
                return Ok(futures::stream::empty().boxed());
            }
            GetOptions {
                range: Some(GetRange::Bounded(range)),
                ..GetOptions::default()
            }
        }
    };
    let got = match client.get_opts(path, options).await {
        Ok(got) => got,
        Err(object_store::Error::NotFound { .. }) => return Err(not_found()),
        Err(e) => return Err(s3_err("reading", path)(e)),
    };
    let name = path.to_string();
    Ok(got
        .into_stream()
        .map_err(move |cause| BlobError::S3 {
            op: "reading",
            key: name.clone(),
            cause,
        })
        .boxed())
}

/// The size of the object at `path`, or `None` if there is none.
pub(crate) async fn object_size(client: &AmazonS3, path: &Path) -> BlobResult<Option<u64>> {
    match client.head(path).await {
        Ok(meta) => Ok(Some(meta.size)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(s3_err("reading size of", path)(e)),
    }
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn create(&self, key: &BlobKey) -> BlobResult<Box<dyn BlobWriter>> {
        let marker = Path::from(format!("{}uploads/{}", self.prefix, uuid::Uuid::new_v4()));
        let writer =
            MultipartWriter::start(self.client.clone(), self.path(key), Some(marker)).await?;
        Ok(Box::new(writer))
    }

    async fn open(&self, key: &BlobKey, range: Option<Range<u64>>) -> BlobResult<BlobStream> {
        let (start, end) = range.as_ref().map_or((0, 0), |r| (r.start, r.end));
        open_object(
            &self.client,
            &self.path(key),
            range,
            || BlobError::NotFound(key.clone()),
            |size| BlobError::RangeNotSatisfiable {
                key: key.to_string(),
                start,
                end,
                size,
            },
        )
        .await
    }

    async fn size(&self, key: &BlobKey) -> BlobResult<Option<u64>> {
        object_size(&self.client, &self.path(key)).await
    }

    async fn delete(&self, key: &BlobKey) -> BlobResult<()> {
        delete_ignoring_missing(&self.client, &self.path(key)).await
    }

    async fn list(&self) -> BlobResult<Vec<BlobInfo>> {
        let prefix = self.blobs_prefix();
        let metas: Vec<_> = self
            .client
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(s3_err("listing", &prefix))?;
        Ok(metas
            .into_iter()
            .filter_map(|meta| {
                let Some(key) = self.key_of(&meta.location) else {
                    tracing::warn!(object = %meta.location, "object that is not a blob key ignored");
                    return None;
                };
                Some(BlobInfo {
                    key,
                    size: meta.size,
                    modified_unix: meta.last_modified.timestamp(),
                })
            })
            .collect())
    }

    async fn sweep_incomplete(&self, older_than: Duration) -> BlobResult<usize> {
        let prefix = self.uploads_prefix();
        let markers: Vec<_> = self
            .client
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(s3_err("listing", &prefix))?;
        let older_than = older_than.max(self.marker_stale_after);
        let now = SystemTime::now();
        let mut swept = 0;
        for marker in markers {
            let modified = SystemTime::from(marker.last_modified);
            if now.duration_since(modified).unwrap_or_default() < older_than {
                continue;
            }
            self.abort_marked(&marker.location).await?;
            swept += 1;
        }
        Ok(swept)
    }
}

/// One multipart upload: fills a part, sends full parts in the background (bounded by
/// [`MAX_IN_FLIGHT_BYTES`]), and completes on commit. Dropped unfinished, it aborts the upload.
pub(crate) struct MultipartWriter {
    client: Arc<AmazonS3>,
    path: Path,
    upload_id: MultipartId,
    /// Present for uploads into our own store (see the module docs); `None` for user buckets.
    marker: Option<Path>,
    marker_written: Instant,
    buffer: PutPayloadMut,
    parts: Vec<Option<PartId>>,
    in_flight: JoinSet<Result<(usize, PartId, usize), object_store::Error>>,
    in_flight_bytes: usize,
    size: u64,
    finished: bool,
}

fn marker_payload(upload_id: &str, path: &Path) -> PutPayload {
    PutPayload::from(format!("{upload_id}\n{path}"))
}

impl MultipartWriter {
    pub(crate) async fn start(
        client: Arc<AmazonS3>,
        path: Path,
        marker: Option<Path>,
    ) -> BlobResult<MultipartWriter> {
        let upload_id = client
            .create_multipart(&path)
            .await
            .map_err(s3_err("starting upload of", &path))?;
        let mut writer = MultipartWriter {
            client,
            path,
            upload_id,
            marker,
            marker_written: Instant::now(),
            buffer: PutPayloadMut::new(),
            parts: Vec::new(),
            in_flight: JoinSet::new(),
            in_flight_bytes: 0,
            size: 0,
            finished: false,
        };
        // On failure the writer drops here and aborts the upload it just started.
        writer.write_marker().await?;
        Ok(writer)
    }

    /// The S3 upload id, known from [`MultipartWriter::start`] on, before any part is sent.
    pub(crate) fn upload_id(&self) -> &str {
        &self.upload_id
    }

    async fn write_marker(&mut self) -> BlobResult<()> {
        if let Some(marker) = &self.marker {
            self.client
                .put(marker, marker_payload(&self.upload_id, &self.path))
                .await
                .map_err(s3_err("recording upload of", &self.path))?;
            self.marker_written = Instant::now();
        }
        Ok(())
    }

    /// Records one finished part.
    fn part_done(
        &mut self,
        joined: Result<Result<(usize, PartId, usize), object_store::Error>, tokio::task::JoinError>,
    ) -> BlobResult<()> {
        let (index, id, len) = joined
            .map_err(|e| s3_err("uploading a part of", &self.path)(e.into()))?
            .map_err(s3_err("uploading a part of", &self.path))?;
        self.in_flight_bytes -= len;
        self.parts[index] = Some(id);
        Ok(())
    }

    /// Sends the buffered part, first waiting until it fits in the in-flight budget.
    async fn send_part(&mut self) -> BlobResult<()> {
        let payload = std::mem::take(&mut self.buffer).freeze();
        let len = payload.content_length();
        while !self.in_flight.is_empty() && self.in_flight_bytes + len > MAX_IN_FLIGHT_BYTES {
            let joined = self.in_flight.join_next().await.expect("set is not empty");
            self.part_done(joined)?;
        }
        let index = self.parts.len();
        if index >= MAX_PARTS {
            return Err(BlobError::TooLarge {
                key: self.path.to_string(),
                limit: max_blob_size(),
            });
        }
        self.parts.push(None);
        self.in_flight_bytes += len;
        let (client, path, id) = (
            self.client.clone(),
            self.path.clone(),
            self.upload_id.clone(),
        );
        self.in_flight.spawn(async move {
            let part = client.put_part(&path, &id, index, payload).await?;
            Ok((index, part, len))
        });
        Ok(())
    }

    pub(crate) async fn write_chunk(&mut self, mut chunk: Bytes) -> BlobResult<()> {
        self.size =
            self.size
                .checked_add(chunk.len() as u64)
                .ok_or_else(|| BlobError::TooLarge {
                    key: self.path.to_string(),
                    limit: max_blob_size(),
                })?;
        while !chunk.is_empty() {
            let room = part_size(self.parts.len()) - self.buffer.content_length();
            if chunk.len() < room {
                self.buffer.push(chunk);
                break;
            }
            self.buffer.push(chunk.split_to(room));
            self.send_part().await?;
        }
        if self.marker.is_some() && self.marker_written.elapsed() >= MARKER_REFRESH {
            self.write_marker().await?;
        }
        Ok(())
    }

    /// Sends what is buffered, waits for every part and completes the upload.
    pub(crate) async fn finish(mut self) -> BlobResult<u64> {
        if self.size == 0 {
            return self.finish_empty().await;
        }
        if !self.buffer.is_empty() {
            self.send_part().await?;
        }
        while let Some(joined) = self.in_flight.join_next().await {
            self.part_done(joined)?;
        }
        let parts: Vec<PartId> = self.parts.iter_mut().filter_map(Option::take).collect();
        self.client
            .complete_multipart(&self.path, &self.upload_id, parts)
            .await
            .map_err(s3_err("completing upload of", &self.path))?;
        self.finished = true;
        if let Some(marker) = &self.marker {
            // The blob is committed; a leftover marker only costs the sweeper a no-op abort.
            if let Err(e) = delete_ignoring_missing(&self.client, marker).await {
                tracing::warn!(error = %e, "upload marker left behind");
            }
        }
        Ok(self.size)
    }
}

impl MultipartWriter {
    /// An empty blob: S3 refuses to complete an upload without parts and Garage refuses an
    /// empty part, so the upload is aborted and the object written with one (atomic) PUT.
    async fn finish_empty(mut self) -> BlobResult<u64> {
        self.client
            .abort_multipart(&self.path, &self.upload_id)
            .await
            .map_err(s3_err("aborting upload of", &self.path))?;
        self.finished = true;
        self.client
            .put(&self.path, PutPayload::new())
            .await
            .map_err(s3_err("writing", &self.path))?;
        if let Some(marker) = &self.marker {
            delete_ignoring_missing(&self.client, marker).await?;
        }
        Ok(0)
    }
}

impl Drop for MultipartWriter {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.in_flight.abort_all();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // no runtime to abort on: the sweeper will find the marker
        };
        let client = self.client.clone();
        let path = self.path.clone();
        let upload_id = self.upload_id.clone();
        let marker = self.marker.take();
        runtime.spawn(async move {
            if let Err(e) = client.abort_multipart(&path, &upload_id).await {
                tracing::warn!(error = %e, object = %path, "aborting a dropped upload failed");
                return; // keep the marker so the sweeper retries
            }
            if let Some(marker) = marker {
                let _ = delete_ignoring_missing(&client, &marker).await;
            }
        });
    }
}

/// [`MultipartWriter`] as a [`BlobWriter`] of our own store.
#[async_trait]
impl BlobWriter for MultipartWriter {
    async fn write(&mut self, chunk: Bytes) -> BlobResult<()> {
        self.write_chunk(chunk).await
    }

    async fn commit(self: Box<Self>) -> BlobResult<u64> {
        (*self).finish().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_sizes_hold_more_than_the_default_size_cap() {
        assert_eq!(part_size(0), BASE_PART_SIZE);
        assert_eq!(part_size(PARTS_PER_DOUBLING), 2 * BASE_PART_SIZE);
        assert_eq!(part_size(MAX_PARTS - 1), MAX_PART_SIZE);
        assert!(max_blob_size() > 1 << 40);
        assert!(part_size(0) >= 5 << 20, "S3's minimum part size");
    }

    async fn test_store() -> Option<S3BlobStore> {
        let (connection, bucket) = crate::conformance::s3_test_server()?;
        let config = S3StoreConfig {
            bucket,
            // A fresh prefix per test, so runs and parallel tests never see each other's blobs.
            prefix: format!("test-{}", uuid::Uuid::new_v4()),
            connection,
        };
        let mut store = S3BlobStore::connect(&config).await.unwrap();
        store.marker_stale_after = Duration::ZERO;
        Some(store)
    }

    #[tokio::test]
    async fn conformance() {
        let Some(store) = test_store().await else {
            return;
        };
        crate::conformance::run_all(&store).await;
    }

    #[tokio::test]
    async fn multi_part_blob_round_trips_and_empty_blob_commits() {
        let Some(store) = test_store().await else {
            return;
        };
        // 2.5 parts, in odd-sized chunks that straddle part boundaries.
        let len = BASE_PART_SIZE * 5 / 2 + 7;
        let data: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
        let key = BlobKey::parse("images/mp/one").unwrap();
        let mut w = store.create(&key).await.unwrap();
        for chunk in data.chunks(1_000_003) {
            w.write(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        assert_eq!(w.commit().await.unwrap(), len as u64);
        assert_eq!(store.size(&key).await.unwrap(), Some(len as u64));
        let read: Vec<Bytes> = store
            .open(&key, None)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert!(read.concat() == data, "multi-part blob round-trips");
        let from = BASE_PART_SIZE as u64 - 3;
        let read: Vec<Bytes> = store
            .open(&key, Some(from..from + 10))
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(read.concat(), &data[from as usize..from as usize + 10]);

        let empty = BlobKey::parse("images/mp/empty").unwrap();
        let w = store.create(&empty).await.unwrap();
        assert_eq!(w.commit().await.unwrap(), 0);
        assert_eq!(store.size(&empty).await.unwrap(), Some(0));
        assert!(
            store
                .open(&empty, None)
                .await
                .unwrap()
                .try_collect::<Vec<_>>()
                .await
                .unwrap()
                .is_empty()
        );
        for k in [&key, &empty] {
            store.delete(k).await.unwrap();
        }
        assert_eq!(
            store.sweep_incomplete(Duration::ZERO).await.unwrap(),
            0,
            "no markers left"
        );
    }

    #[tokio::test]
    async fn sweep_never_aborts_a_live_upload() {
        let Some(mut store) = test_store().await else {
            return;
        };
        store.marker_stale_after = MARKER_STALE_AFTER;
        let key = BlobKey::parse("images/live/one").unwrap();
        let mut w = store.create(&key).await.unwrap();
        w.write(Bytes::from_static(b"in progress")).await.unwrap();
        assert_eq!(store.sweep_incomplete(Duration::ZERO).await.unwrap(), 0);
        assert_eq!(w.commit().await.unwrap(), 11);
        store.delete(&key).await.unwrap();
    }

    #[tokio::test]
    async fn sweep_aborts_uploads_of_dead_writers() {
        let Some(store) = test_store().await else {
            return;
        };
        let key = BlobKey::parse("images/sw/one").unwrap();
        let mut w = store.create(&key).await.unwrap();
        w.write(Bytes::from(vec![7u8; BASE_PART_SIZE + 1]))
            .await
            .unwrap();
        // A process that dies does not run Drop: forget the writer to leave its upload behind.
        std::mem::forget(w);
        assert_eq!(
            store
                .sweep_incomplete(Duration::from_secs(3600))
                .await
                .unwrap(),
            0,
            "a recent upload is left alone"
        );
        assert_eq!(store.sweep_incomplete(Duration::ZERO).await.unwrap(), 1);
        assert_eq!(store.sweep_incomplete(Duration::ZERO).await.unwrap(), 0);
        assert_eq!(store.size(&key).await.unwrap(), None);
    }

    #[tokio::test]
    async fn dropped_writer_aborts_its_upload() {
        let Some(store) = test_store().await else {
            return;
        };
        let key = BlobKey::parse("images/dr/one").unwrap();
        let mut w = store.create(&key).await.unwrap();
        w.write(Bytes::from_static(b"partial")).await.unwrap();
        drop(w);
        // The abort runs on a spawned task; give it a moment, then nothing is left to sweep.
        for _ in 0..50 {
            if store
                .sweep_incomplete(Duration::from_secs(3600))
                .await
                .unwrap()
                == 0
                && store
                    .client
                    .list(Some(&store.uploads_prefix()))
                    .next()
                    .await
                    .is_none()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            store
                .client
                .list(Some(&store.uploads_prefix()))
                .next()
                .await
                .is_none()
        );
        assert_eq!(store.size(&key).await.unwrap(), None);
    }
}
