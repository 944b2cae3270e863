//! Garbage collection of what crashes leave behind: blobs no image references (a process died
//! between committing data and publishing the image) and `saving` images whose upload died.

use std::time::Duration;

use ims_blob::BlobStore;
use ims_domain::query::{MatchField, VisibilityFilter};
use ims_domain::{ImageListQuery, ImageStatus, ListScope};
use ims_meta::MetaStore;

use crate::error::ServiceResult;
use crate::images::ImageService;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GcReport {
    pub orphan_blobs_deleted: usize,
    pub abandoned_writes_removed: usize,
    pub stale_uploads_reset: usize,
}

/// Deletes blobs of `store` that no image references there and that are older than `min_age`.
/// Staged import data counts as referenced while its image is `uploading` or `importing`.
pub async fn delete_orphan_blobs(
    meta: &dyn MetaStore,
    store: &str,
    blobs: &dyn BlobStore,
    min_age: Duration,
) -> ServiceResult<usize> {
    let referenced: std::collections::HashSet<String> = meta
        .referenced_blob_keys_in(store)
        .await?
        .into_iter()
        .collect();
    let cutoff = time::OffsetDateTime::now_utc().unix_timestamp() - min_age.as_secs() as i64;
    let mut deleted = 0;
    for blob in blobs.list().await? {
        if blob.modified_unix <= cutoff
            && !referenced.contains(blob.key.as_str())
            && !staged_for_live_image(meta, blob.key.as_str()).await?
        {
            tracing::info!(store, blob = %blob.key, size = blob.size, "deleting orphaned blob");
            blobs.delete(&blob.key).await?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// Whether `key` is the staging area of an image still waiting for (or running) its import.
async fn staged_for_live_image(meta: &dyn MetaStore, key: &str) -> ServiceResult<bool> {
    let Some(id) = crate::import::staged_image(key) else {
        return Ok(false);
    };
    let image = meta.get_image(id).await?;
    Ok(image.is_some_and(|i| {
        matches!(
            i.status,
            ims_domain::ImageStatus::Uploading | ims_domain::ImageStatus::Importing
        )
    }))
}

impl ImageService {
    /// Resets `saving` images whose upload stopped sending heartbeats longer than `stale_after` ago.
    pub async fn reset_stale_uploads(&self, stale_after: Duration) -> ServiceResult<usize> {
        let mut query = ImageListQuery::new(ListScope::All);
        query.visibility = Some(VisibilityFilter::All);
        query.os_hidden = None;
        query.matches.push((
            MatchField::Status,
            vec![ImageStatus::Saving.as_str().to_string()],
        ));
        query.limit = ims_domain::query::MAX_LIST_LIMIT;
        let cutoff = ims_domain::now() - stale_after;
        let mut reset = 0;
        for image in self.meta.list_images(&query).await? {
            if image.updated_at < cutoff {
                tracing::info!(image_id = %image.id, "resetting upload that stopped to queued");
                self.restore_queued(image.id).await;
                reset += 1;
            }
        }
        Ok(reset)
    }

    /// One collection pass with the configured ages, over every writable store (read-only
    /// stores are never changed).
    pub async fn collect_garbage(&self) -> ServiceResult<GcReport> {
        let min_age = Duration::from_secs(self.gc.orphan_min_age_secs);
        let stale_after = Duration::from_secs(self.gc.upload_stale_after_secs);
        let mut report = GcReport {
            stale_uploads_reset: self.reset_stale_uploads(stale_after).await?,
            ..GcReport::default()
        };
        for store in self.stores.writable() {
            report.abandoned_writes_removed += store.blobs.sweep_incomplete(min_age).await?;
            report.orphan_blobs_deleted +=
                delete_orphan_blobs(self.meta.as_ref(), &store.id, store.blobs.as_ref(), min_age)
                    .await?;
        }
        Ok(report)
    }

    /// Time between collector runs.
    pub fn gc_interval(&self) -> Duration {
        Duration::from_secs(self.gc.interval_secs)
    }
}
