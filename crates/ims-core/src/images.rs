//! The image service: create, show, list, update, delete, (de)activate, tags, members and
//! downloads, with Glance's policy. Uploads live in [`crate::upload`].

use std::ops::Range;
use std::sync::Arc;

use futures::StreamExt;
use ims_blob::hash::StreamHasher;
use ims_blob::{BlobKey, BlobStream};
use ims_domain::image::{MAX_MEMBERS, MAX_TAGS, validate_tag};
use ims_domain::{
    Caller, ErrorKind, Image, ImageListQuery, ImageStatus, ListScope, Member, MemberStatus,
    Visibility, policy,
};
use ims_meta::{MetaError, MetaStore};

use crate::cache::CacheService;
use crate::config::{GcConfig, Limits};
use crate::error::{ServiceError, ServiceResult};
use crate::locations::LocationSettings;
use crate::patch::{self, AttrValue, PatchDialect, PatchOp};
use crate::stores::{Store, Stores};

/// Retries of an optimistic update that lost a race before giving up with 409.
const MAX_UPDATE_ATTEMPTS: usize = 8;

pub struct ImageService {
    pub(crate) meta: Arc<dyn MetaStore>,
    pub(crate) stores: Arc<Stores>,
    pub(crate) limits: Limits,
    pub(crate) gc: GcConfig,
    /// This node's image cache: downloads are served from it and fill it.
    pub(crate) cache: Option<Arc<CacheService>>,
    /// What the node does with image locations.
    pub(crate) locations: LocationSettings,
}

/// An image ready to stream: its record and the number of bytes it holds.
pub struct Download {
    pub image: Image,
    pub size: u64,
}

fn no_image(id: &str) -> ServiceError {
    ServiceError::not_found(format!("No image found with ID {id}"))
}

/// Parses an image id as it appears in a path; anything that is not a UUID cannot exist.
pub fn parse_image_id(id: &str) -> ServiceResult<uuid::Uuid> {
    uuid::Uuid::parse_str(id).map_err(|_| no_image(id))
}

impl ImageService {
    pub fn new(
        meta: Arc<dyn MetaStore>,
        stores: Arc<Stores>,
        limits: Limits,
        gc: GcConfig,
    ) -> Self {
        ImageService {
            meta,
            stores,
            limits,
            gc,
            cache: None,
            locations: LocationSettings::default(),
        }
    }

    /// Sets what the node does with image locations.
    pub fn with_locations(mut self, locations: LocationSettings) -> Self {
        self.locations = locations;
        self
    }

    /// The node's stores.
    pub fn stores(&self) -> &Arc<Stores> {
        &self.stores
    }

    /// What a project stores, for `/v2/info/usage`.
    pub async fn usage(&self, project_id: &str) -> ServiceResult<ims_meta::ProjectUsage> {
        Ok(self.meta.project_usage(project_id).await?)
    }

    /// The caller's membership of the image, when it matters for visibility.
    async fn membership(&self, caller: &Caller, image: &Image) -> ServiceResult<Option<Member>> {
        if image.visibility != Visibility::Shared
            || image.owner.as_deref() == Some(caller.project_id.as_str())
        {
            return Ok(None);
        }
        Ok(self.meta.get_member(image.id, &caller.project_id).await?)
    }

    /// The image if it exists, is not deleted and the caller may see it; else 404.
    async fn visible(
        &self,
        caller: &Caller,
        id: uuid::Uuid,
    ) -> ServiceResult<(Image, Option<Member>)> {
        let image = self
            .meta
            .get_image(id)
            .await?
            .filter(|i| i.status != ImageStatus::Deleted);
        let image = image.ok_or_else(|| no_image(&id.to_string()))?;
        let membership = self.membership(caller, &image).await?;
        policy::require_visible(caller, &image, membership.as_ref())?;
        Ok((image, membership))
    }

    /// The image if the caller may change it (admin or member of the owning project).
    pub(crate) async fn owned(
        &self,
        caller: &Caller,
        id: uuid::Uuid,
        action: &str,
    ) -> ServiceResult<Image> {
        let (image, membership) = self.visible(caller, id).await?;
        policy::require_owner_member(caller, &image, membership.as_ref(), action)?;
        Ok(image)
    }

    /// Reads, changes and writes an image, retrying when a concurrent writer got there first.
    /// `change` sees the freshest record each time and may refuse.
    pub(crate) async fn mutate(
        &self,
        id: uuid::Uuid,
        mut change: impl FnMut(&mut Image) -> ServiceResult<()>,
    ) -> ServiceResult<Image> {
        for _ in 0..MAX_UPDATE_ATTEMPTS {
            let mut image = self
                .meta
                .get_image(id)
                .await?
                .ok_or_else(|| no_image(&id.to_string()))?;
            if image.status == ImageStatus::Deleted {
                return Err(no_image(&id.to_string()));
            }
            change(&mut image)?;
            image.updated_at = ims_domain::now();
            match self.meta.update_image(&image).await {
                Ok(updated) => return Ok(updated),
                Err(MetaError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::conflict(
            "The image is being changed by another request; try again.",
        ))
    }

    pub async fn create(
        &self,
        caller: &Caller,
        attrs: &[(String, AttrValue)],
    ) -> ServiceResult<Image> {
        let get = |key: &str| attrs.iter().find(|(k, _)| k == key).map(|(_, v)| v);
        let owner = match get("owner") {
            None | Some(AttrValue::Null) => Some(caller.project_id.clone()),
            Some(AttrValue::Str(o)) => Some(o.clone()),
            Some(_) => {
                return Err(ServiceError::invalid(
                    "Provided object does not match schema 'image': owner must be a string",
                ));
            }
        };
        policy::require_create(caller, owner.as_deref())?;
        let id = match get("id") {
            None => uuid::Uuid::new_v4(),
            Some(AttrValue::Str(s)) => uuid::Uuid::parse_str(s).map_err(|_| {
                ServiceError::invalid(format!(
                    "Provided object does not match schema 'image': '{s}' is not a 'uuid'"
                ))
            })?,
            Some(_) => {
                return Err(ServiceError::invalid(
                    "Provided object does not match schema 'image': id must be a string",
                ));
            }
        };
        let mut image = Image::new(id, owner, ims_domain::now());
        patch::apply_create(&mut image, caller, attrs)?;
        let project = image.owner.as_deref().unwrap_or(&caller.project_id);
        self.enforce_quota(project, ims_domain::QuotaResource::ImageCountTotal, 1)
            .await?;
        self.meta.create_image(&image).await.map_err(|e| match e {
            MetaError::AlreadyExists(_) => ServiceError::new(
                ErrorKind::AlreadyExists,
                format!("An image with identifier {id} already exists"),
            ),
            e => e.into(),
        })?;
        Ok(image)
    }

    pub async fn get(&self, caller: &Caller, id: uuid::Uuid) -> ServiceResult<Image> {
        Ok(self.visible(caller, id).await?.0)
    }

    /// One page of images; the scope comes from the caller, everything else from `query`.
    pub async fn list(
        &self,
        caller: &Caller,
        mut query: ImageListQuery,
    ) -> ServiceResult<Vec<Image>> {
        if !caller.is_reader() {
            return Err(ServiceError::forbidden(
                "You are not authorized to complete get_images action.",
            ));
        }
        query.scope = if caller.is_admin() {
            ListScope::All
        } else {
            ListScope::Project(caller.project_id.clone())
        };
        match self.meta.list_images(&query).await {
            Err(MetaError::MarkerNotFound(id)) => Err(ServiceError::invalid(format!(
                "Marker {id} could not be found."
            ))),
            other => Ok(other?),
        }
    }

    pub async fn update(
        &self,
        caller: &Caller,
        id: uuid::Uuid,
        ops: &[PatchOp],
        dialect: PatchDialect,
    ) -> ServiceResult<Image> {
        let image = self.owned(caller, id, "modify_image").await?;
        // Location URLs are read (and inspected) before the update, which must not wait on
        // the network.
        let read = self.read_patch_locations(&image, ops).await?;
        let mut dropped = Vec::new();
        let updated = self
            .mutate(id, |image| {
                dropped.clear();
                for op in ops {
                    match &op.location {
                        Some(location) => self.apply_location_op(
                            image,
                            caller,
                            op.kind,
                            location,
                            &read,
                            &mut dropped,
                        )?,
                        None => {
                            patch::apply_patch(image, caller, std::slice::from_ref(op), dialect)?
                        }
                    }
                }
                Ok(())
            })
            .await?;
        if let Some(data) = &image.data {
            for store in &dropped {
                self.delete_unreferenced(id, store, &data.blob_key).await?;
            }
        }
        Ok(updated)
    }

    pub async fn delete(&self, caller: &Caller, id: uuid::Uuid) -> ServiceResult<()> {
        self.owned(caller, id, "delete_image").await?;
        let mut data = None;
        self.mutate(id, |image| {
            if image.protected {
                return Err(ServiceError::forbidden(format!(
                    "Image {id} is protected and cannot be deleted."
                )));
            }
            image.transition(ImageStatus::Deleted)?;
            image.deleted_at = Some(ims_domain::now());
            data = image.data.take();
            Ok(())
        })
        .await?;
        if let Some(cache) = &self.cache
            && let Err(e) = cache.cache().delete(id).await
        {
            tracing::warn!(image_id = %id, error = %e, "removing deleted image from the cache failed");
        }
        if let Some(data) = data {
            for store in &data.stores {
                self.delete_unreferenced(id, store, &data.blob_key).await?;
            }
        }
        Ok(())
    }

    /// Deletes `key` from `store` unless an image still names it there (in-region copies share
    /// their source's blob: it goes with the last image naming it). The record no longer
    /// references it; if this delete fails, the collector will.
    async fn delete_unreferenced(
        &self,
        id: uuid::Uuid,
        store: &str,
        key: &str,
    ) -> ServiceResult<()> {
        let Some(store) = self.stores.get(store).filter(|s| !s.read_only) else {
            return Ok(());
        };
        if self.meta.blob_reference_count(key, &store.id).await? > 0 {
            return Ok(());
        }
        if let Some(key) = BlobKey::parse(key).ok()
            && let Err(e) = store.blobs.delete(&key).await
        {
            tracing::warn!(image_id = %id, store = %store.id, error = %e, "deleting image data failed; garbage collection will retry");
        }
        Ok(())
    }

    /// `DELETE /v2/stores/{store}/{id}` (admin): the store no longer holds the image's data.
    /// Glance's rules: multi-store only (404), a store this node does not have is 409, the
    /// image must be active (409), hold data in the store (404) and somewhere else too — the
    /// last copy is 403 (delete the image instead).
    pub async fn delete_from_store(
        &self,
        caller: &Caller,
        store_id: &str,
        id: uuid::Uuid,
    ) -> ServiceResult<()> {
        if !self.stores.is_multi() {
            return Err(ServiceError::not_found(
                "Multi backend is not supported at this site.",
            ));
        }
        if self.stores.get(store_id).is_none() {
            return Err(ServiceError::conflict(format!(
                "The selected store {store_id} is not available on this node."
            )));
        }
        self.visible(caller, id).await?;
        if !caller.is_admin() {
            return Err(ServiceError::forbidden(
                "You are not authorized to complete delete_image_location action.",
            ));
        }
        let mut key = String::new();
        self.mutate(id, |image| {
            if image.status != ImageStatus::Active {
                return Err(ServiceError::conflict(
                    "It's not allowed to remove image data from store if image status is not 'active'",
                ));
            }
            let data = image
                .data
                .as_mut()
                .filter(|d| d.in_store(store_id))
                .ok_or_else(|| {
                    ServiceError::not_found(format!("Image {id} has no data in store {store_id}."))
                })?;
            if data.stores.len() == 1 {
                return Err(ServiceError::forbidden(
                    "Cannot delete image data from the only store containing it. Consider deleting the image instead.",
                ));
            }
            data.stores.retain(|s| s != store_id);
            key = data.blob_key.clone();
            Ok(())
        })
        .await?;
        self.delete_unreferenced(id, store_id, &key).await
    }

    /// Copies the data of `image` (which has data) into `target` under the same key, checking
    /// size and sha512 on the way, then records `target` among the image's stores. The copy is
    /// discarded if the image lost or changed its data meanwhile.
    pub(crate) async fn copy_to_store(
        &self,
        image: &Image,
        target: &Store,
    ) -> ServiceResult<Image> {
        let id = image.id;
        let data = image
            .data
            .as_ref()
            .ok_or_else(|| ServiceError::conflict(format!("Image {id} has no data to copy.")))?;
        let key = BlobKey::parse(&data.blob_key)
            .map_err(|e| ServiceError::internal("image blob key", &e))?;
        let mut source = self.open_stores(&data.stores, &key, None).await?;
        let mut writer = target.blobs.create(&key).await?;
        let hasher = StreamHasher::new();
        let mut copied: u64 = 0;
        while let Some(chunk) = source.next().await {
            let chunk = chunk?;
            copied += chunk.len() as u64;
            hasher.update(chunk.clone()).await;
            writer.write(chunk).await?;
        }
        let hashes = hasher.finish().await;
        if copied != data.size as u64 || hashes.sha512 != data.os_hash_value {
            return Err(ServiceError::new(
                ErrorKind::Internal,
                format!(
                    "The data of image {id} read back differently; not copied to {}.",
                    target.id
                ),
            ));
        }
        writer.commit().await?;
        let stores = self.stores.clone();
        let recorded = self
            .mutate(id, |image| {
                let current = image
                    .data
                    .as_mut()
                    .filter(|d| d.blob_key == key.as_str() && image.status == ImageStatus::Active)
                    .ok_or_else(|| {
                        ServiceError::conflict(format!(
                            "Image {id} changed while its data was copied."
                        ))
                    })?;
                if !current.in_store(&target.id) {
                    current.stores.push(target.id.clone());
                    stores.order(&mut current.stores);
                }
                Ok(())
            })
            .await;
        if recorded.is_err() {
            crate::upload::discard(&target.blobs, &key).await;
        }
        recorded
    }

    /// `deactivate` (active → deactivated) or `reactivate` (deactivated → active). Doing it
    /// twice is a no-op; any other status is 403, as in Glance.
    pub async fn set_active(
        &self,
        caller: &Caller,
        id: uuid::Uuid,
        active: bool,
    ) -> ServiceResult<()> {
        let action = if active { "reactivate" } else { "deactivate" };
        self.owned(caller, id, action).await?;
        self.mutate(id, |image| {
            let (from, to) = if active {
                (ImageStatus::Deactivated, ImageStatus::Active)
            } else {
                (ImageStatus::Active, ImageStatus::Deactivated)
            };
            match image.status {
                s if s == to => Ok(()),
                s if s == from => image.transition(to).map_err(Into::into),
                s => Err(ServiceError::forbidden(format!(
                    "Not allowed to {action} image in status '{}'",
                    s.as_str()
                ))),
            }
        })
        .await?;
        Ok(())
    }

    pub async fn add_tag(&self, caller: &Caller, id: uuid::Uuid, tag: &str) -> ServiceResult<()> {
        self.owned(caller, id, "modify_image").await?;
        validate_tag(tag)?;
        self.mutate(id, |image| {
            if !image.tags.contains(tag) && image.tags.len() >= MAX_TAGS {
                return Err(ServiceError::too_large(format!(
                    "Maximum number of tags exceeded ({MAX_TAGS})"
                )));
            }
            image.tags.insert(tag.to_string());
            Ok(())
        })
        .await?;
        Ok(())
    }

    pub async fn delete_tag(
        &self,
        caller: &Caller,
        id: uuid::Uuid,
        tag: &str,
    ) -> ServiceResult<()> {
        self.owned(caller, id, "modify_image").await?;
        self.mutate(id, |image| {
            if !image.tags.remove(tag) {
                return Err(ServiceError::not_found(format!("Tag {tag} not found")));
            }
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// Prepares a download: policy, status rules; `None` data means "no content" (204).
    pub async fn download(&self, caller: &Caller, id: uuid::Uuid) -> ServiceResult<Download> {
        let (image, membership) = self.visible(caller, id).await?;
        policy::require_download(caller, &image, membership.as_ref())?;
        if image.status == ImageStatus::Deactivated && !caller.is_admin() {
            return Err(ServiceError::forbidden(
                "The requested image has been deactivated. Image data download is forbidden.",
            ));
        }
        let size = image.size().map(|s| s as u64).unwrap_or(0);
        Ok(Download { image, size })
    }

    /// Streams the download's data (or a byte range of it). Call only when the image has data.
    pub async fn open_data(
        &self,
        download: &Download,
        range: Option<Range<u64>>,
    ) -> ServiceResult<BlobStream> {
        let Some(data) = download.image.data.as_ref() else {
            return self.open_external(&download.image, range).await;
        };
        let id = download.image.id;
        if let Some(cache) = &self.cache
            && download.image.status == ImageStatus::Active
        {
            if let Some(stream) = cache.cache().read(id, range.clone()).await {
                return Ok(stream);
            }
        }
        let key = BlobKey::parse(&data.blob_key)
            .map_err(|e| ServiceError::internal("image blob key", &e))?;
        if let Some(cache) = &self.cache
            && download.image.status == ImageStatus::Active
            && !cache.cache().is_cached(id)
        {
            // A second read of the blob fills this node's cache while the client is served.
            match self.open_stores(&data.stores, &key, None).await {
                Ok(stream) => cache.fill_in_background(id, download.size, stream),
                Err(e) => {
                    tracing::warn!(image_id = %id, error = %e, "cannot read image to cache it")
                }
            }
        }
        self.open_stores(&data.stores, &key, range).await
    }

    /// One pass of this node's cache prefetcher: caches every queued image from the stores. A
    /// queue entry whose image is gone or has no data is dropped; one whose fill failed stays
    /// for the next pass.
    pub async fn prefetch_queued(&self) {
        let Some(cache) = &self.cache else {
            return;
        };
        let queued = match cache.cache().queued() {
            Ok(q) => q,
            Err(e) => {
                tracing::warn!(error = %e, "listing the cache queue failed");
                return;
            }
        };
        for id in queued {
            if let Err(e) = self.prefetch_one(cache, id).await {
                tracing::warn!(image_id = %id, error = %e, "prefetching image into the cache failed");
            }
        }
    }

    async fn prefetch_one(&self, cache: &CacheService, id: uuid::Uuid) -> ServiceResult<()> {
        let image = self.meta.get_image(id).await?;
        let data = image
            .filter(|i| i.status == ImageStatus::Active)
            .and_then(|i| i.data);
        let Some(data) = data else {
            tracing::info!(image_id = %id, "queued image is no longer active; dropped from the queue");
            return cache.unqueue(id);
        };
        let key = BlobKey::parse(&data.blob_key)
            .map_err(|e| ServiceError::internal("image blob key", &e))?;
        let size = u64::try_from(data.size).unwrap_or(0);
        let stream = self.open_stores(&data.stores, &key, None).await?;
        cache.cache().fill(id, size, stream).await?;
        cache.unqueue(id)
    }

    /// Opens `key` from the first of `stores` that serves it, highest weight first; a store
    /// that fails is logged and the next one tried.
    pub(crate) async fn open_stores(
        &self,
        stores: &[String],
        key: &BlobKey,
        range: Option<Range<u64>>,
    ) -> ServiceResult<BlobStream> {
        let mut ordered = stores.to_vec();
        self.stores.order(&mut ordered);
        let mut last_error = None;
        for id in &ordered {
            let Some(store) = self.stores.get(id) else {
                continue;
            };
            match store.blobs.open(key, range.clone()).await {
                Ok(stream) => return Ok(stream),
                Err(e) => {
                    tracing::warn!(store = %id, blob = %key, error = %e, "reading image data failed; trying the next store");
                    last_error = Some(e);
                }
            }
        }
        Err(match last_error {
            Some(e) => e.into(),
            None => ServiceError::new(
                ErrorKind::Unavailable,
                "No store of this node holds the image data.",
            ),
        })
    }

    // Members.

    fn require_shared(image: &Image) -> ServiceResult<()> {
        if image.visibility != Visibility::Shared {
            return Err(ServiceError::forbidden(format!(
                "Only shared images have members. Image {} has visibility {}.",
                image.id,
                image.visibility.as_str()
            )));
        }
        Ok(())
    }

    pub async fn add_member(
        &self,
        caller: &Caller,
        id: uuid::Uuid,
        member_id: &str,
    ) -> ServiceResult<Member> {
        let image = self.owned(caller, id, "add_member").await?;
        Self::require_shared(&image)?;
        if member_id.is_empty() || member_id.chars().count() > ims_domain::image::MAX_STRING_LEN {
            return Err(ServiceError::invalid(
                "Member id must be 1 to 255 characters",
            ));
        }
        if self.meta.list_members(id).await?.len() >= MAX_MEMBERS {
            return Err(ServiceError::too_large(format!(
                "Maximum number of members exceeded ({MAX_MEMBERS})"
            )));
        }
        let now = ims_domain::now();
        let member = Member {
            image_id: id,
            member_id: member_id.to_string(),
            status: MemberStatus::Pending,
            created_at: now,
            updated_at: now,
        };
        self.meta.add_member(&member).await.map_err(|e| match e {
            MetaError::AlreadyExists(_) => {
                ServiceError::conflict(format!("Member {member_id} already exists for image {id}."))
            }
            e => e.into(),
        })?;
        Ok(member)
    }

    pub async fn list_members(
        &self,
        caller: &Caller,
        id: uuid::Uuid,
    ) -> ServiceResult<Vec<Member>> {
        let (image, _) = self.visible(caller, id).await?;
        Self::require_shared(&image)?;
        let members = self.meta.list_members(id).await?;
        Ok(members
            .into_iter()
            .filter(|m| policy::can_see_member(caller, &image, &m.member_id))
            .collect())
    }

    pub async fn get_member(
        &self,
        caller: &Caller,
        id: uuid::Uuid,
        member_id: &str,
    ) -> ServiceResult<Member> {
        let (image, _) = self.visible(caller, id).await?;
        Self::require_shared(&image)?;
        let not_found =
            || ServiceError::not_found(format!("Member {member_id} not found for image {id}."));
        if !policy::can_see_member(caller, &image, member_id) {
            return Err(not_found());
        }
        self.meta
            .get_member(id, member_id)
            .await?
            .ok_or_else(not_found)
    }

    pub async fn update_member(
        &self,
        caller: &Caller,
        id: uuid::Uuid,
        member_id: &str,
        status: MemberStatus,
    ) -> ServiceResult<Member> {
        let mut member = self.get_member(caller, id, member_id).await?;
        policy::require_member_answer(caller, member_id)?;
        member.status = status;
        member.updated_at = ims_domain::now();
        self.meta.update_member(&member).await?;
        Ok(member)
    }

    pub async fn delete_member(
        &self,
        caller: &Caller,
        id: uuid::Uuid,
        member_id: &str,
    ) -> ServiceResult<()> {
        let image = self.owned(caller, id, "delete_member").await?;
        Self::require_shared(&image)?;
        self.meta
            .delete_member(id, member_id)
            .await
            .map_err(|e| match e {
                MetaError::NotFound(_) => {
                    ServiceError::not_found(format!("Member {member_id} not found for image {id}."))
                }
                e => e.into(),
            })
    }
}
