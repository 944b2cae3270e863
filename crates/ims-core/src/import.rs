//! Interoperable image import: staging (`PUT /v2/images/{id}/stage`), the import call, and the
//! job that does the work. The call only checks, locks the image (`os_glance_import_task` names
//! the job) and submits an `ims-jobs` job; a worker — on any node — streams the data from the
//! staging area (`glance-direct`) or from a URL fetched under [`crate::fetch`]'s rules
//! (`web-download`) through the same inspection and publication path as an upload. Glance's tasks
//! (`/v2/tasks`, `/v2/images/{id}/tasks`) are views over these jobs.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use ims_blob::BlobKey;
use ims_domain::{Caller, ErrorKind, Image, ImageStatus};
use ims_jobs::runner::{JobContext, JobFailure, JobHandler};
use ims_jobs::{Job, JobFilter, JobStore, NewJob};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::config::{ImportConfig, ImportMethod};
use crate::error::{ServiceError, ServiceResult};
use crate::fetch::{UrlPolicy, open_url};
use crate::images::ImageService;

/// The job kind of an image import.
pub const IMPORT_JOB_KIND: &str = "glance.image_import";
/// Names the import job holding the image; a second import is refused while it runs.
pub const LOCK_PROPERTY: &str = "os_glance_import_task";
/// Stores an import is still writing to (comma list), as Glance reports it.
pub const IMPORTING_PROPERTY: &str = "os_glance_importing_to_stores";
/// Stores an import failed to write to (comma list).
pub const FAILED_PROPERTY: &str = "os_glance_failed_import";
/// Import jobs run once more after a crash; a failure the handler reports is final.
const IMPORT_MAX_ATTEMPTS: u32 = 3;

/// Where staged data of an image waits for its `glance-direct` import.
pub fn staging_key(image_id: uuid::Uuid) -> BlobKey {
    // A UUID's text is always a valid key segment.
    BlobKey::parse(&format!("staging/{image_id}")).unwrap_or_else(|_| BlobKey::for_image(image_id))
}

/// The image a staging key belongs to, if `key` is one.
pub fn staged_image(key: &str) -> Option<uuid::Uuid> {
    key.strip_prefix("staging/")
        .and_then(|id| uuid::Uuid::parse_str(id).ok())
}

/// What an import call asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportRequest {
    pub method: ImportMethod,
    /// The source URL (`web-download`).
    pub uri: Option<String>,
}

/// Staging and import, over the image service and the job store.
pub struct ImportService {
    images: Arc<ImageService>,
    jobs: Arc<dyn JobStore>,
    waker: ims_jobs::runner::Waker,
    config: ImportConfig,
}

impl ImportService {
    pub fn new(
        images: Arc<ImageService>,
        jobs: Arc<dyn JobStore>,
        waker: ims_jobs::runner::Waker,
        config: ImportConfig,
    ) -> ImportService {
        ImportService {
            images,
            jobs,
            waker,
            config,
        }
    }

    /// Methods offered, for `/v2/info/import`.
    pub fn methods(&self) -> Vec<&'static str> {
        self.config.methods.iter().map(|m| m.as_str()).collect()
    }

    pub fn jobs(&self) -> &Arc<dyn JobStore> {
        &self.jobs
    }

    /// The handler workers run import jobs with.
    pub fn handler(&self) -> Arc<dyn JobHandler> {
        Arc::new(ImportHandler {
            images: self.images.clone(),
            policy: UrlPolicy {
                allowed_schemes: self.config.allowed_schemes.clone(),
                allowed_ports: self.config.allowed_ports.clone(),
                exempt_targets: self.config.exempt_targets.clone(),
            },
        })
    }

    /// `PUT /v2/images/{id}/stage`: the image goes `queued` → `uploading` and the data is kept
    /// in the staging area until an import takes it. Any failure puts the image back.
    pub async fn stage<S, E>(
        &self,
        caller: &Caller,
        id: uuid::Uuid,
        body: S,
        declared_size: Option<u64>,
    ) -> ServiceResult<()>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        self.require_method(ImportMethod::GlanceDirect)?;
        let image = self.images.owned(caller, id, "stage_image").await?;
        if image.status != ImageStatus::Queued {
            return Err(ServiceError::conflict(format!(
                "Image {id} is {}; only a queued image can be staged.",
                image.status.as_str()
            )));
        }
        let image = self
            .images
            .mutate(id, |image| Ok(image.transition(ImageStatus::Uploading)?))
            .await?;
        let key = staging_key(id);
        let written = self
            .images
            .write_blob(id, &key, image.owner.as_deref(), body, declared_size)
            .await;
        if let Err(err) = written {
            self.images
                .restore_queued_from(id, ImageStatus::Uploading)
                .await;
            return Err(err);
        }
        Ok(())
    }

    fn require_method(&self, method: ImportMethod) -> ServiceResult<()> {
        if self.config.methods.contains(&method) {
            Ok(())
        } else {
            Err(ServiceError::invalid(format!(
                "Import method {} is not enabled.",
                method.as_str()
            )))
        }
    }

    /// `POST /v2/images/{id}/import`: checks, locks the image and submits the job. Returns the
    /// job (Glance answers 202 with no body).
    pub async fn import(
        &self,
        caller: &Caller,
        id: uuid::Uuid,
        request: ImportRequest,
        request_id: Option<String>,
    ) -> ServiceResult<Job> {
        self.require_method(request.method)?;
        let image = self.images.owned(caller, id, "import_image").await?;
        if image.container_format.is_none() || image.disk_format.is_none() {
            return Err(ServiceError::invalid(
                "'disk_format' and 'container_format' must be set before import.",
            ));
        }
        let needed = match request.method {
            ImportMethod::GlanceDirect => ImageStatus::Uploading,
            ImportMethod::WebDownload => ImageStatus::Queued,
        };
        if image.status != needed {
            return Err(ServiceError::conflict(format!(
                "Image status {} is not valid for import method {}; it must be {}.",
                image.status.as_str(),
                request.method.as_str(),
                needed.as_str()
            )));
        }
        let uri = match request.method {
            ImportMethod::WebDownload => {
                let uri = request.uri.clone().ok_or_else(|| {
                    ServiceError::invalid("web-download needs 'uri' in the method.")
                })?;
                // Refuse what the policy refuses now, with a 400; the worker checks again.
                crate::fetch::check_url(&self.handler_policy(), &uri)
                    .await
                    .map_err(|e| ServiceError::invalid(format!("URI refused: {e}")))?;
                Some(uri)
            }
            ImportMethod::GlanceDirect => None,
        };
        self.check_lock(&image).await?;

        let store = self.images.store_name().to_owned();
        let mut job = NewJob::new(
            IMPORT_JOB_KIND,
            image.owner.as_deref().unwrap_or(&caller.project_id),
            json!({
                "image_id": id.to_string(),
                "import_req": {"method": {"name": request.method.as_str(), "uri": uri}},
                "backend": [store.clone()],
            }),
        );
        job.image_id = Some(id);
        job.user_id = Some(caller.user_id.clone());
        job.request_id = request_id;
        job.max_attempts = IMPORT_MAX_ATTEMPTS;
        let job_id = job.id;
        let from = image.status;
        self.images
            .mutate(id, |image| {
                if image.status != from {
                    return Err(ServiceError::conflict(format!(
                        "Image {id} changed to {} during the import call.",
                        image.status.as_str()
                    )));
                }
                image.transition(ImageStatus::Importing)?;
                image
                    .properties
                    .insert(LOCK_PROPERTY.into(), job_id.to_string());
                image
                    .properties
                    .insert(IMPORTING_PROPERTY.into(), store.clone());
                image.properties.remove(FAILED_PROPERTY);
                Ok(())
            })
            .await?;
        let submitted = self.jobs.submit(job, OffsetDateTime::now_utc()).await;
        let job = match submitted {
            Ok(job) => job,
            Err(e) => {
                release(&self.images, id, from, None).await;
                return Err(ServiceError::internal("submitting the import job", &e));
            }
        };
        self.waker.wake();
        Ok(job)
    }

    /// 400 unless web-download is enabled and `uri` passes the URL policy now.
    pub async fn check_source(&self, uri: &str) -> ServiceResult<()> {
        self.require_method(ImportMethod::WebDownload)?;
        crate::fetch::check_url(&self.handler_policy(), uri)
            .await
            .map(|_| ())
            .map_err(|e| ServiceError::invalid(format!("URI refused: {e}")))
    }

    fn handler_policy(&self) -> UrlPolicy {
        UrlPolicy {
            allowed_schemes: self.config.allowed_schemes.clone(),
            allowed_ports: self.config.allowed_ports.clone(),
            exempt_targets: self.config.exempt_targets.clone(),
        }
    }

    /// 409 if another import holds the image (its job is not finished).
    async fn check_lock(&self, image: &Image) -> ServiceResult<()> {
        let Some(holder) = image.properties.get(LOCK_PROPERTY) else {
            return Ok(());
        };
        let Ok(job_id) = uuid::Uuid::parse_str(holder) else {
            return Ok(());
        };
        let job = self
            .jobs
            .get(job_id)
            .await
            .map_err(|e| ServiceError::internal("reading the import lock", &e))?;
        if job.is_some_and(|j| !j.status.is_finished()) {
            return Err(ServiceError::conflict(format!(
                "Image {} is locked by import task {job_id}.",
                image.id
            )));
        }
        Ok(())
    }

    /// `GET /v2/images/{id}/tasks`: the image's import jobs, newest first.
    pub async fn image_tasks(&self, caller: &Caller, id: uuid::Uuid) -> ServiceResult<Vec<Job>> {
        self.images.get(caller, id).await?;
        let filter = JobFilter {
            image_id: Some(id),
            kind: Some(IMPORT_JOB_KIND.into()),
            ..JobFilter::default()
        };
        self.jobs
            .list(&filter)
            .await
            .map_err(|e| ServiceError::internal("listing image tasks", &e))
    }

    /// `GET /v2/tasks`: the caller's project's jobs (every job for an admin), newest first.
    pub async fn list_tasks(&self, caller: &Caller) -> ServiceResult<Vec<Job>> {
        let filter = JobFilter {
            project: (!caller.is_admin()).then(|| caller.project_id.clone()),
            ..JobFilter::default()
        };
        self.jobs
            .list(&filter)
            .await
            .map_err(|e| ServiceError::internal("listing tasks", &e))
    }

    /// `GET /v2/tasks/{id}`: 404 unless the caller's project owns it (or the caller is admin).
    pub async fn get_task(&self, caller: &Caller, id: uuid::Uuid) -> ServiceResult<Job> {
        let job = self
            .jobs
            .get(id)
            .await
            .map_err(|e| ServiceError::internal("reading a task", &e))?;
        job.filter(|j| caller.is_admin() || j.project == caller.project_id)
            .ok_or_else(|| {
                ServiceError::not_found(format!("Task with the given id {id} not found"))
            })
    }
}

/// Ends an import's hold on the image: clears the lock and importing properties and, when it
/// failed, puts the image back to `queued` (from `from`) and records the stores in
/// `os_glance_failed_import`.
async fn release(images: &ImageService, id: uuid::Uuid, from: ImageStatus, failed: Option<&str>) {
    let released = images
        .mutate(id, |image| {
            image.properties.remove(LOCK_PROPERTY);
            image.properties.remove(IMPORTING_PROPERTY);
            if let Some(stores) = failed {
                image
                    .properties
                    .insert(FAILED_PROPERTY.into(), stores.to_owned());
                if image.status == from {
                    image.transition(ImageStatus::Queued)?;
                    image.data = None;
                }
            }
            Ok(())
        })
        .await;
    if let Err(e) = released {
        tracing::warn!(image_id = %id, error = %e, "releasing the import lock");
    }
}

/// Runs import jobs.
struct ImportHandler {
    images: Arc<ImageService>,
    policy: UrlPolicy,
}

impl ImportHandler {
    /// Streams the source into the image. Errors are final for the job (as in Glance, a failed
    /// import leaves the image `queued` for another attempt by the user).
    async fn import(
        &self,
        image: &Image,
        method: ImportMethod,
        uri: Option<&str>,
    ) -> ServiceResult<Image> {
        match method {
            ImportMethod::GlanceDirect => {
                let key = staging_key(image.id);
                let stream = self.images.blobs.open(&key, None).await.map_err(|e| {
                    ServiceError::new(ErrorKind::NotFound, format!("No staged data: {e}"))
                })?;
                self.images
                    .ingest(image, stream, None, ImageStatus::Importing)
                    .await
            }
            ImportMethod::WebDownload => {
                let uri = uri.ok_or_else(|| ServiceError::invalid("no uri"))?;
                let response = open_url(&self.policy, uri)
                    .await
                    .map_err(|e| ServiceError::invalid(format!("fetching {uri}: {e}")))?;
                let stream = response.bytes_stream().boxed();
                self.images
                    .ingest(image, stream, None, ImageStatus::Importing)
                    .await
            }
        }
    }
}

#[async_trait]
impl JobHandler for ImportHandler {
    async fn run(&self, ctx: &JobContext) -> Result<Value, JobFailure> {
        let job = ctx.job();
        let payload = &job.payload;
        let id = job
            .image_id
            .ok_or_else(|| JobFailure::Fatal("import job names no image".into()))?;
        let method_name = payload["import_req"]["method"]["name"]
            .as_str()
            .unwrap_or("");
        let method = ImportMethod::parse(method_name)
            .ok_or_else(|| JobFailure::Fatal(format!("unknown import method {method_name:?}")))?;
        let uri = payload["import_req"]["method"]["uri"].as_str();
        let store = self.images.store_name().to_owned();
        let image = self
            .images
            .meta
            .get_image(id)
            .await
            .map_err(|e| JobFailure::Retry(format!("reading image {id}: {e}")))?
            .filter(|i| i.status != ImageStatus::Deleted)
            .ok_or_else(|| JobFailure::Fatal(format!("image {id} was deleted")))?;
        let holds_lock = image.properties.get(LOCK_PROPERTY) == Some(&job.id.to_string());
        if image.status == ImageStatus::Active && image.data.is_some() {
            // An earlier attempt published the image and died before recording success.
            if holds_lock {
                release(&self.images, id, ImageStatus::Importing, None).await;
            }
            return Ok(json!({"image_id": id.to_string(), "stores": [store]}));
        }
        if image.status != ImageStatus::Importing || !holds_lock {
            return Err(JobFailure::Fatal(format!(
                "image {id} is {} and not held by this import",
                image.status.as_str()
            )));
        }
        match self.import(&image, method, uri).await {
            Ok(_) => {
                release(&self.images, id, ImageStatus::Importing, None).await;
                if method == ImportMethod::GlanceDirect {
                    self.discard_staging(id).await;
                }
                Ok(json!({"image_id": id.to_string(), "stores": [store]}))
            }
            Err(err) => {
                release(&self.images, id, ImageStatus::Importing, Some(&store)).await;
                if method == ImportMethod::GlanceDirect {
                    self.discard_staging(id).await;
                }
                Err(JobFailure::Fatal(err.to_string()))
            }
        }
    }
}

impl ImportHandler {
    async fn discard_staging(&self, id: uuid::Uuid) {
        if let Err(e) = self.images.blobs.delete(&staging_key(id)).await {
            tracing::warn!(image_id = %id, error = %e, "deleting staged data; the collector will retry");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_keys_round_trip() {
        let id = uuid::Uuid::new_v4();
        assert_eq!(staged_image(staging_key(id).as_str()), Some(id));
        assert_eq!(staged_image(&format!("images/{id}/x")), None);
    }
}
