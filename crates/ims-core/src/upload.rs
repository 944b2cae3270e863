//! Uploads: stream the body into a new blob while md5 and sha512 run on their own threads and
//! the head and tail are kept for format inspection; enforce the size cap, the project quota and
//! the declared size while streaming; publish the image only after its data is durable and
//! inspected. Any failure discards the blob and puts the image back to `queued` untouched.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use ims_blob::hash::StreamHasher;
use ims_blob::{BlobKey, BlobStore, BlobWriter};
use ims_diskfmt::probe::{InspectionWindow, probe};
use ims_domain::image::ImageData;
use ims_domain::{Caller, Image, ImageStatus, QuotaResource};

use crate::error::{ServiceError, ServiceResult};
use crate::images::ImageService;
use crate::quotas::ByteBudget;
use crate::stores::Store;

/// Heartbeats per stale period: a live upload refreshes its image's `updated_at` this many
/// times before the collector would consider it dead.
const HEARTBEATS_PER_STALE_PERIOD: u32 = 6;

/// Bytes gathered before a chunk is handed to the writer and hashers: fewer, larger hops.
const COALESCE_BYTES: usize = 1 << 20;

/// Why the stream stopped early; reported after the image is restored.
struct Abort(ServiceError);

/// Upload header carrying the MD5 the sender computed (Glance v1's name for it).
pub const EXPECTED_MD5_HEADER: &str = "x-image-meta-checksum";
/// Upload header carrying the SHA-512 the sender computed.
pub const EXPECTED_SHA512_HEADER: &str = "x-image-meta-os-hash-value";

/// Checksums the sender computed; an upload whose data does not hash to them is refused and
/// leaves nothing behind (a cross-region copy checks its data on arrival this way).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpectedHashes {
    /// Hex MD5 (Glance's `checksum`).
    pub md5: Option<String>,
    /// Hex SHA-512 (Glance's `os_hash_value`).
    pub sha512: Option<String>,
}

impl ExpectedHashes {
    /// Compares with what was computed; the error names the first that differs.
    fn check(&self, md5: &str, sha512: &str) -> ServiceResult<()> {
        for (name, expected, actual) in [("MD5", &self.md5, md5), ("SHA-512", &self.sha512, sha512)]
        {
            if let Some(expected) = expected
                && !expected.eq_ignore_ascii_case(actual)
            {
                return Err(ServiceError::invalid(format!(
                    "The data's {name} checksum is {actual}, not the expected {expected}."
                )));
            }
        }
        Ok(())
    }
}

impl ImageService {
    /// `PUT /v2/images/{id}/file`. `declared_size` is the client's `x-openstack-image-size`;
    /// `store` the store the client chose (`X-Image-Meta-Store`), else the default store.
    pub async fn upload<S, E>(
        &self,
        caller: &Caller,
        id: uuid::Uuid,
        body: S,
        declared_size: Option<u64>,
        store: Option<&str>,
    ) -> ServiceResult<Image>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        self.upload_verified(
            caller,
            id,
            body,
            declared_size,
            store,
            &ExpectedHashes::default(),
        )
        .await
    }

    /// [`ImageService::upload`] that also refuses data whose checksums are not `expected`.
    pub async fn upload_verified<S, E>(
        &self,
        caller: &Caller,
        id: uuid::Uuid,
        body: S,
        declared_size: Option<u64>,
        store: Option<&str>,
        expected: &ExpectedHashes,
    ) -> ServiceResult<Image>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let store = self.target_store(store)?;
        let owned = self.owned(caller, id, "upload_image").await?;
        let project = owned.owner.as_deref().unwrap_or(&caller.project_id);
        // Glance checks the stored total first, then (counting this upload) the uploads in
        // progress; the size is held to the limit again while the data streams.
        self.enforce_quota(project, QuotaResource::ImageSizeTotal, 0)
            .await?;
        let image = self
            .mutate(id, |image| {
                image.require_formats()?;
                image.transition(ImageStatus::Saving)?;
                Ok(())
            })
            .await?;
        if let Err(err) = self
            .enforce_quota(project, QuotaResource::ImageCountUploading, 0)
            .await
        {
            self.restore_queued(id).await;
            return Err(err);
        }
        let ingested = self
            .ingest(
                &image,
                body,
                declared_size,
                ImageStatus::Saving,
                store,
                expected,
            )
            .await;
        if ingested.is_err() {
            self.restore_queued(id).await;
        }
        ingested
    }

    /// The store a write goes to: the one named (it must exist and be writable; an unknown
    /// store is invalid input), else the default store.
    pub(crate) fn target_store(&self, id: Option<&str>) -> ServiceResult<&Store> {
        match id {
            None => Ok(self.stores.default_store()),
            Some(id) => self
                .stores
                .writable_store(id)
                .map_err(|e| ServiceError::invalid(e.message)),
        }
    }

    /// Streams `body` into a new blob of `image` in `store` (the image's status is `in_flight`:
    /// `saving` for an upload, `importing` for an import), inspects it and publishes the image
    /// `active`. On failure the blob is discarded and the image left as it is, for the caller to
    /// restore.
    pub(crate) async fn ingest<S, E>(
        &self,
        image: &Image,
        body: S,
        declared_size: Option<u64>,
        in_flight: ImageStatus,
        store: &Store,
        expected: &ExpectedHashes,
    ) -> ServiceResult<Image>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let id = image.id;
        let owner = image.owner.clone();
        let disk_format = image.disk_format.clone().unwrap_or_default();
        let bare = image.container_format.as_deref() == Some("bare");
        let key = BlobKey::for_image(id);
        let budget = match owner.as_deref() {
            Some(owner) => {
                self.byte_budget(owner, QuotaResource::ImageSizeTotal)
                    .await?
            }
            None => None,
        };
        let outcome = self
            .stream_into_blob(&store.blobs, id, &key, budget, body, declared_size)
            .await;
        let (size, hashes, window) = match outcome {
            Ok(parts) => parts,
            Err(Abort(err)) => return Err(err),
        };
        if let Err(err) = expected.check(&hashes.md5, &hashes.sha512) {
            discard(&store.blobs, &key).await;
            return Err(err);
        }
        let inspected = inspect_data(window, disk_format, bare, size).await;
        let virtual_size = match inspected {
            Ok(v) => v,
            Err(err) => {
                discard(&store.blobs, &key).await;
                return Err(err);
            }
        };

        // The data is durable and of the declared format: learn the OS inside (bounded; a
        // failure only means no properties are filled).
        let os_properties = match virtual_size {
            Some(_) if bare => {
                crate::guest::inspect_blob(store.blobs.clone(), key.clone(), size, id).await
            }
            _ => None,
        };

        let data = ImageData {
            blob_key: key.as_str().to_string(),
            stores: vec![store.id.clone()],
            size: size as i64,
            checksum: hashes.md5,
            os_hash_algo: "sha512".into(),
            os_hash_value: hashes.sha512,
            virtual_size: virtual_size.map(|v| v as i64),
        };
        let published = self
            .mutate(id, |image| {
                if image.status != in_flight {
                    return Err(ServiceError::new(
                        ims_domain::ErrorKind::Conflict,
                        format!(
                            "Image {id} changed to {} while its data was written",
                            image.status.as_str()
                        ),
                    ));
                }
                image.transition(ImageStatus::Active)?;
                image.data = Some(data.clone());
                crate::guest::apply_os_properties(&mut image.properties, os_properties.as_ref());
                Ok(())
            })
            .await;
        if published.is_err() {
            discard(&store.blobs, &key).await;
            if self
                .meta
                .get_image(id)
                .await
                .ok()
                .flatten()
                .is_none_or(|i| i.status == ImageStatus::Deleted)
            {
                return Err(ServiceError::new(
                    ims_domain::ErrorKind::Gone,
                    "Image was deleted during upload.",
                ));
            }
        }
        published
    }

    /// Streams `body` into a blob at `key` under the upload limits and the owner's
    /// `image_stage_total`, without inspecting it (the staging area of an import); returns its
    /// size. On error nothing is left behind.
    pub(crate) async fn write_blob<S, E>(
        &self,
        id: uuid::Uuid,
        key: &BlobKey,
        owner: Option<&str>,
        body: S,
        declared_size: Option<u64>,
    ) -> ServiceResult<u64>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let budget = match owner {
            Some(owner) => {
                self.byte_budget(owner, QuotaResource::ImageStageTotal)
                    .await?
            }
            None => None,
        };
        match self
            .stream_into_blob(self.stores.staging(), id, key, budget, body, declared_size)
            .await
        {
            Ok((size, _, _)) => Ok(size),
            Err(Abort(err)) => Err(err),
        }
    }

    /// Streams `body` into a fresh blob at `key` of `blobs`, held to `budget` (the project's
    /// size limit) if given. On error nothing is left behind (the writer is dropped).
    async fn stream_into_blob<S, E>(
        &self,
        blobs: &Arc<dyn BlobStore>,
        id: uuid::Uuid,
        key: &BlobKey,
        budget: Option<ByteBudget>,
        mut body: S,
        declared_size: Option<u64>,
    ) -> Result<(u64, ims_blob::hash::StreamHashes, InspectionWindow), Abort>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let cap = self.limits.image_size_cap;
        if let Some(declared) = declared_size {
            if declared > cap {
                return Err(Abort(ServiceError::too_large(format!(
                    "Image size {declared} exceeds the limit of {cap} bytes."
                ))));
            }
            if let Some(budget) = &budget {
                budget.check(declared).map_err(Abort)?;
            }
        }

        let mut writer: Box<dyn BlobWriter> =
            blobs.create(key).await.map_err(|e| Abort(e.into()))?;
        let hasher = StreamHasher::new();
        let mut window = InspectionWindow::builder();
        let mut total: u64 = 0;
        let mut pending = bytes::BytesMut::new();
        let mut last_beat = Instant::now();
        let heartbeat_every =
            Duration::from_secs(self.gc.upload_stale_after_secs) / HEARTBEATS_PER_STALE_PERIOD;

        loop {
            let next = body.next().await;
            let chunk = match next {
                Some(Ok(chunk)) => Some(chunk),
                Some(Err(e)) => {
                    return Err(Abort(ServiceError::invalid(format!(
                        "Error reading the request body: {e}"
                    ))));
                }
                None => None,
            };
            if let Some(chunk) = &chunk {
                total += chunk.len() as u64;
                if total > cap {
                    return Err(Abort(ServiceError::too_large(format!(
                        "Image exceeds the size limit of {cap} bytes."
                    ))));
                }
                if let Some(budget) = &budget {
                    budget.check(total).map_err(Abort)?;
                }
                if declared_size.is_some_and(|d| total > d) {
                    return Err(Abort(ServiceError::invalid(format!(
                        "The upload is larger than the declared size of {} bytes.",
                        declared_size.unwrap_or_default()
                    ))));
                }
                window.push(chunk);
                pending.extend_from_slice(chunk);
            }
            if pending.len() >= COALESCE_BYTES || (chunk.is_none() && !pending.is_empty()) {
                let block = pending.split().freeze();
                hasher.update(block.clone()).await;
                writer.write(block).await.map_err(|e| Abort(e.into()))?;
            }
            if chunk.is_none() {
                break;
            }
            if last_beat.elapsed() >= heartbeat_every {
                last_beat = Instant::now();
                self.heartbeat(id).await;
            }
        }
        if let Some(declared) = declared_size
            && total != declared
        {
            return Err(Abort(ServiceError::invalid(format!(
                "The upload ended after {total} bytes but {declared} were declared."
            ))));
        }
        let hashes = hasher.finish().await;
        writer.commit().await.map_err(|e| Abort(e.into()))?;
        Ok((total, hashes, window.finish()))
    }

    async fn heartbeat(&self, id: uuid::Uuid) {
        let beat = self
            .mutate(id, |image| {
                if image.status == ImageStatus::Saving {
                    Ok(())
                } else {
                    Err(ServiceError::conflict("not saving"))
                }
            })
            .await;
        if let Err(e) = beat {
            tracing::debug!(image_id = %id, error = %e, "upload heartbeat skipped");
        }
    }

    /// Puts a `saving` image back to `queued` with no data, as if the upload never happened.
    pub(crate) async fn restore_queued(&self, id: uuid::Uuid) {
        self.restore_queued_from(id, ImageStatus::Saving).await
    }

    /// Puts an image that is still `from` back to `queued` with no data.
    pub(crate) async fn restore_queued_from(&self, id: uuid::Uuid, from: ImageStatus) {
        let restored = self
            .mutate(id, |image| {
                if image.status != from {
                    return Ok(());
                }
                image.transition(ImageStatus::Queued)?;
                image.data = None;
                Ok(())
            })
            .await;
        if let Err(e) = restored {
            tracing::warn!(image_id = %id, error = %e, "restoring image to queued failed");
        }
    }
}

/// Inspects the head and tail of image data (off the runtime) with the upload rules: a bare
/// disk must be its declared `disk_format`, any other container must not reference other
/// files. Returns the virtual size when the data is of the declared format.
pub(crate) async fn inspect_data(
    window: InspectionWindow,
    disk_format: String,
    bare: bool,
    size: u64,
) -> ServiceResult<Option<u64>> {
    tokio::task::spawn_blocking(move || {
        let probe = probe(&window).map_err(|e| {
            ServiceError::invalid(format!("Image data could not be inspected: {e}"))
        })?;
        // A bare disk must be what it claims; other containers (OVA, docker, …) are not
        // disk images themselves, but must still not smuggle references to other files.
        let verdict = if bare {
            probe.check_declared(&disk_format)
        } else {
            probe.check_safe(&disk_format)
        };
        verdict.map_err(|e| ServiceError::invalid(e.to_string()))?;
        let is_declared = probe.format.as_str() == disk_format || (bare && disk_format == "raw");
        Ok::<_, ServiceError>(is_declared.then(|| probe.virtual_size.unwrap_or(size)))
    })
    .await
    .map_err(|e| ServiceError::internal("inspecting upload", &e))?
}

/// Deletes a blob that will not be published; the collector retries if this fails.
pub(crate) async fn discard(blobs: &Arc<dyn BlobStore>, key: &BlobKey) {
    if let Err(e) = blobs.delete(key).await {
        tracing::warn!(blob = %key, error = %e, "discarding unpublished data failed; garbage collection will retry");
    }
}
