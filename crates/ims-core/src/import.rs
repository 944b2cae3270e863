//! Interoperable image import: staging (`PUT /v2/images/{id}/stage`), the import call, and the
//! job that does the work. The call only checks, locks the image (`os_glance_import_task` names
//! the job), chooses the target stores (`stores`, `all_stores`) and submits an `ims-jobs` job; a
//! worker — on any node — streams the data from the staging area (`glance-direct`) or from a URL
//! fetched under [`crate::fetch`]'s rules (`web-download`) through the same inspection and
//! publication path as an upload into the first target store, then copies it to the others
//! (`copy-image` does only the copying, for an active image; `glance-download` reads the data
//! and some properties of an image of this deployment's catalog endpoint in a region, as the
//! user who asked). Progress shows in
//! `os_glance_importing_to_stores` and `os_glance_failed_import`. Glance's tasks (`/v2/tasks`,
//! `/v2/images/{id}/tasks`) are views over these jobs.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use ims_blob::{BlobKey, BlobStream};
use ims_diskfmt::Format;
use ims_domain::{Caller, ErrorKind, Image, ImageStatus, QuotaResource};
use ims_jobs::runner::{JobContext, JobFailure, JobHandler};
use ims_jobs::{Job, JobFilter, JobStore, NewJob};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::config::{ConvertTarget, ImportConfig, ImportMethod};
use crate::conversion::ConversionService;
use crate::error::{ServiceError, ServiceResult};
use crate::fetch::{UrlPolicy, open_url, open_url_with_token};
use crate::identity::IdentityService;
use crate::images::ImageService;
use crate::stores::Store;

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
/// Lifetime of the token a `glance-download` job reads the source image with.
const REMOTE_TOKEN_TTL_SECS: u64 = 3600;
/// Largest image document accepted from a remote Glance.
const MAX_REMOTE_IMAGE_JSON: usize = 1 << 20;
/// Properties `glance-download` copies from the source image: these keys and every key with
/// these prefixes (Glance's `[glance_download_properties] extra_properties`).
const REMOTE_PROPERTY_PREFIXES: &[&str] =
    &["hw_", "trait:", "os_distro", "os_secure_boot", "os_type"];
/// Interfaces a catalog endpoint may be asked for by.
const CATALOG_INTERFACES: &[&str] = &["public", "internal", "admin"];

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

/// The source image of a `glance-download` import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteImage {
    pub image_id: uuid::Uuid,
    pub region: String,
    /// The catalog interface (`public`, `internal`, `admin`).
    pub interface: String,
}

/// Where this deployment's image API is, by region (the catalog every token carries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    pub region: String,
    pub public_url: String,
}

impl Catalog {
    /// The image endpoint for `region` and `interface`, if the catalog has one.
    fn image_endpoint(&self, region: &str, interface: &str) -> Option<&str> {
        (region == self.region && CATALOG_INTERFACES.contains(&interface))
            .then_some(self.public_url.as_str())
    }
}

/// What an import call asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportRequest {
    pub method: ImportMethod,
    /// The source URL (`web-download`).
    pub uri: Option<String>,
    /// The source image (`glance-download`).
    pub remote: Option<RemoteImage>,
    /// Stores named by `stores` or `X-Image-Meta-Store`; none = the default store.
    pub stores: Vec<String>,
    /// Every writable store (for `copy-image`: every one not holding the data yet).
    pub all_stores: bool,
    /// Whether one failed store fails the import (Glance's default, true) or is only recorded
    /// in `os_glance_failed_import`.
    pub all_stores_must_succeed: bool,
}

impl ImportRequest {
    /// A request for `method` into the default store.
    pub fn new(method: ImportMethod) -> ImportRequest {
        ImportRequest {
            method,
            uri: None,
            remote: None,
            stores: Vec::new(),
            all_stores: false,
            all_stores_must_succeed: true,
        }
    }
}

/// The `method` object of a job's `import_req`, as the import call named it.
fn method_json(method: ImportMethod, uri: Option<&str>, remote: Option<Value>) -> Value {
    let mut object = json!({"name": method.as_str(), "uri": uri});
    if let (Some(map), Some(Value::Object(remote))) = (object.as_object_mut(), remote) {
        map.extend(remote);
    }
    object
}

/// Joins store ids as Glance's comma-list properties show them.
fn store_list(stores: &[String]) -> String {
    stores.join(",")
}

/// The ids of a comma-list property (empty entries dropped).
fn parse_store_list(value: Option<&String>) -> Vec<String> {
    value
        .map(|v| {
            v.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Staging and import, over the image service and the job store.
pub struct ImportService {
    images: Arc<ImageService>,
    identity: Arc<IdentityService>,
    jobs: Arc<dyn JobStore>,
    waker: ims_jobs::runner::Waker,
    config: ImportConfig,
    catalog: Catalog,
    conversion: Arc<ConversionService>,
}

impl ImportService {
    pub fn new(
        images: Arc<ImageService>,
        identity: Arc<IdentityService>,
        jobs: Arc<dyn JobStore>,
        waker: ims_jobs::runner::Waker,
        config: ImportConfig,
        catalog: Catalog,
        conversion: Arc<ConversionService>,
    ) -> ImportService {
        ImportService {
            images,
            identity,
            jobs,
            waker,
            config,
            catalog,
            conversion,
        }
    }

    /// Methods offered, for `/v2/info/import`: `copy-image` only with several stores (with
    /// one there is nowhere to copy to).
    pub fn methods(&self) -> Vec<&'static str> {
        self.config
            .methods
            .iter()
            .filter(|m| self.offers(**m))
            .map(|m| m.as_str())
            .collect()
    }

    fn offers(&self, method: ImportMethod) -> bool {
        self.config.methods.contains(&method)
            && (method != ImportMethod::CopyImage || self.images.stores().is_multi())
    }

    pub fn jobs(&self) -> &Arc<dyn JobStore> {
        &self.jobs
    }

    /// The handler workers run import jobs with.
    pub fn handler(&self) -> Arc<dyn JobHandler> {
        Arc::new(ImportHandler {
            images: self.images.clone(),
            identity: self.identity.clone(),
            policy: self.handler_policy(),
            catalog: self.catalog.clone(),
            convert_to: self.config.convert_to,
            conversion: self.conversion.clone(),
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
        let project = image.owner.as_deref().unwrap_or(&caller.project_id);
        self.images
            .enforce_quota(project, QuotaResource::ImageStageTotal, 0)
            .await?;
        let image = self
            .images
            .mutate(id, |image| Ok(image.transition(ImageStatus::Uploading)?))
            .await?;
        if let Err(err) = self
            .images
            .enforce_quota(project, QuotaResource::ImageCountUploading, 0)
            .await
        {
            self.images
                .restore_queued_from(id, ImageStatus::Uploading)
                .await;
            return Err(err);
        }
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
        if self.offers(method) {
            Ok(())
        } else {
            Err(ServiceError::invalid(format!(
                "Import method {} is not enabled.",
                method.as_str()
            )))
        }
    }

    /// `POST /v2/images/{id}/import`: checks, locks the image and submits the job. Returns the
    /// job (Glance answers 202 with no body), or `None` when `copy-image` to `all_stores` finds
    /// every store already holding the data (Glance then starts no task).
    pub async fn import(
        &self,
        caller: &Caller,
        id: uuid::Uuid,
        request: ImportRequest,
        request_id: Option<String>,
    ) -> ServiceResult<Option<Job>> {
        self.require_method(request.method)?;
        if !request.all_stores_must_succeed && !self.images.stores().is_multi() {
            return Err(ServiceError::invalid(
                "'all_stores_must_succeed' can only be false with multiple stores.",
            ));
        }
        let copy = request.method == ImportMethod::CopyImage;
        let image = if copy {
            let image = self.images.get(caller, id).await?;
            if !caller.is_admin() {
                return Err(ServiceError::forbidden(
                    "You are not authorized to complete copy_image action.",
                ));
            }
            image
        } else {
            self.images.owned(caller, id, "import_image").await?
        };
        self.images
            .enforce_quota(
                image.owner.as_deref().unwrap_or(&caller.project_id),
                QuotaResource::ImageSizeTotal,
                0,
            )
            .await?;
        if image.container_format.is_none() || image.disk_format.is_none() {
            return Err(ServiceError::conflict(
                "'disk_format' and 'container_format' must be set before import.",
            ));
        }
        let needed = match request.method {
            ImportMethod::GlanceDirect => ImageStatus::Uploading,
            ImportMethod::WebDownload | ImportMethod::GlanceDownload => ImageStatus::Queued,
            ImportMethod::CopyImage => ImageStatus::Active,
        };
        if image.status != needed {
            let message = if request.method == ImportMethod::GlanceDirect {
                "Image needs to be staged before 'glance-direct' method can be used".to_owned()
            } else {
                format!(
                    "Image status {} is not valid for import method {}; it must be {}.",
                    image.status.as_str(),
                    request.method.as_str(),
                    needed.as_str()
                )
            };
            return Err(ServiceError::conflict(message));
        }
        let targets = self.targets(&image, &request)?;
        if targets.is_empty() {
            return Ok(None);
        }
        let uri = match request.method {
            ImportMethod::WebDownload => {
                let uri = request.uri.clone().ok_or_else(|| {
                    ServiceError::invalid("web-download needs 'uri' in the method.")
                })?;
                // Refuse what the policy refuses now, with a 400; the worker checks again.
                crate::fetch::check_url(&self.handler_policy(), &uri)
                    .await
                    .map_err(|e| {
                        ServiceError::invalid(format!(
                            "URI for web-download does not pass filtering: {e}"
                        ))
                    })?;
                Some(uri)
            }
            ImportMethod::GlanceDirect | ImportMethod::CopyImage => None,
            ImportMethod::GlanceDownload => {
                if request.remote.is_none() {
                    return Err(ServiceError::invalid(
                        "glance-download needs 'glance_image_id' and 'glance_region'.",
                    ));
                }
                None
            }
        };
        let remote = request.remote.as_ref().map(|r| {
            json!({
                "glance_image_id": r.image_id.to_string(),
                "glance_region": r.region,
                "glance_service_interface": r.interface,
            })
        });
        self.check_lock(&image).await?;

        let mut job = NewJob::new(
            IMPORT_JOB_KIND,
            image.owner.as_deref().unwrap_or(&caller.project_id),
            json!({
                "image_id": id.to_string(),
                "import_req": {
                    "method": method_json(request.method, uri.as_deref(), remote),
                    "stores": request.stores,
                    "all_stores": request.all_stores,
                    "all_stores_must_succeed": request.all_stores_must_succeed,
                },
                "backend": targets,
                "caller_project": caller.project_id,
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
                if !copy {
                    image.transition(ImageStatus::Importing)?;
                }
                image
                    .properties
                    .insert(LOCK_PROPERTY.into(), job_id.to_string());
                image
                    .properties
                    .insert(IMPORTING_PROPERTY.into(), store_list(&targets));
                let mut failed = parse_store_list(image.properties.get(FAILED_PROPERTY));
                failed.retain(|s| !targets.contains(s));
                image
                    .properties
                    .insert(FAILED_PROPERTY.into(), store_list(&failed));
                Ok(())
            })
            .await?;
        let submitted = self.jobs.submit(job, OffsetDateTime::now_utc()).await;
        let job = match submitted {
            Ok(job) => job,
            Err(e) => {
                release(&self.images, id, (!copy).then_some(from)).await;
                return Err(ServiceError::internal("submitting the import job", &e));
            }
        };
        self.waker.wake();
        Ok(Some(job))
    }

    /// The stores an import writes to, in weight order. Unknown or read-only stores are 409;
    /// `copy-image` to a store already holding the data is 400, and with `all_stores` such
    /// stores are skipped.
    fn targets(&self, image: &Image, request: &ImportRequest) -> ServiceResult<Vec<String>> {
        let stores = self.images.stores();
        let copy = request.method == ImportMethod::CopyImage;
        let held = |id: &str| image.data.as_ref().is_some_and(|d| d.in_store(id));
        let mut targets: Vec<String> = if request.all_stores {
            stores
                .writable()
                .filter(|s| !(copy && held(&s.id)))
                .map(|s| s.id.clone())
                .collect()
        } else if request.stores.is_empty() {
            if copy {
                return Err(ServiceError::invalid(
                    "copy-image needs 'stores' or 'all_stores'.",
                ));
            }
            vec![stores.default_store().id.clone()]
        } else {
            let mut named = Vec::with_capacity(request.stores.len());
            for id in &request.stores {
                stores
                    .writable_store(id)
                    .map_err(|e| ServiceError::conflict(e.message))?;
                if copy && held(id) {
                    return Err(ServiceError::invalid(format!(
                        "Image {} already exists in store {id}.",
                        image.id
                    )));
                }
                if !named.contains(id) {
                    named.push(id.clone());
                }
            }
            named
        };
        stores.order(&mut targets);
        Ok(targets)
    }

    /// 400 unless web-download is enabled and `uri` passes the URL policy now.
    pub async fn check_source(&self, uri: &str) -> ServiceResult<()> {
        self.require_method(ImportMethod::WebDownload)?;
        crate::fetch::check_url(&self.handler_policy(), uri)
            .await
            .map(|_| ())
            .map_err(|e| {
                ServiceError::invalid(format!("URI for web-download does not pass filtering: {e}"))
            })
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
        check_import_lock(&self.jobs, image).await
    }

    /// `GET /v2/images/{id}/tasks`: the image's import and location-import jobs, newest first.
    pub async fn image_tasks(&self, caller: &Caller, id: uuid::Uuid) -> ServiceResult<Vec<Job>> {
        self.images.get(caller, id).await?;
        let filter = JobFilter {
            image_id: Some(id),
            ..JobFilter::default()
        };
        let mut jobs = self
            .jobs
            .list(&filter)
            .await
            .map_err(|e| ServiceError::internal("listing image tasks", &e))?;
        jobs.retain(|j| j.kind == IMPORT_JOB_KIND || j.kind == crate::locations::LOCATION_JOB_KIND);
        Ok(jobs)
    }

    /// `GET /v2/tasks`: the caller's project's jobs (every job for an admin), newest first.
    pub async fn list_tasks(&self, caller: &Caller) -> ServiceResult<Vec<Job>> {
        let filter = JobFilter {
            project: (!caller.is_admin()).then(|| caller.project_id.clone()),
            kind: Some(IMPORT_JOB_KIND.into()),
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
        job.filter(|j| j.kind == IMPORT_JOB_KIND)
            .filter(|j| caller.is_admin() || j.project == caller.project_id)
            .ok_or_else(|| {
                ServiceError::not_found(format!("Task with the given id {id} not found"))
            })
    }
}

/// 409 if a job (an import or a location import) holds the image and is not finished.
pub(crate) async fn check_import_lock(
    jobs: &Arc<dyn JobStore>,
    image: &Image,
) -> ServiceResult<()> {
    let Some(holder) = image.properties.get(LOCK_PROPERTY) else {
        return Ok(());
    };
    let Ok(job_id) = uuid::Uuid::parse_str(holder) else {
        return Ok(());
    };
    let job = jobs
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

/// Ends an import's hold on the image: clears the lock and the stores still listed as
/// importing. With `revert_from`, an image still in that status goes back to `queued` without
/// data (a failed import of new data).
async fn release(images: &ImageService, id: uuid::Uuid, revert_from: Option<ImageStatus>) {
    let released = images
        .mutate(id, |image| {
            image.properties.remove(LOCK_PROPERTY);
            image
                .properties
                .insert(IMPORTING_PROPERTY.into(), String::new());
            if let Some(from) = revert_from
                && image.status == from
            {
                image.transition(ImageStatus::Queued)?;
                image.data = None;
            }
            Ok(())
        })
        .await;
    if let Err(e) = released {
        tracing::warn!(image_id = %id, error = %e, "releasing the import lock");
    }
}

/// Records that the import is done with `store`: it leaves `os_glance_importing_to_stores` and,
/// if it failed, joins `os_glance_failed_import`.
async fn record_store(images: &ImageService, id: uuid::Uuid, store: &str, failed: bool) {
    let recorded = images
        .mutate(id, |image| {
            let mut importing = parse_store_list(image.properties.get(IMPORTING_PROPERTY));
            importing.retain(|s| s != store);
            image
                .properties
                .insert(IMPORTING_PROPERTY.into(), store_list(&importing));
            if failed {
                let mut failures = parse_store_list(image.properties.get(FAILED_PROPERTY));
                if !failures.iter().any(|s| s == store) {
                    failures.push(store.to_owned());
                }
                image
                    .properties
                    .insert(FAILED_PROPERTY.into(), store_list(&failures));
            }
            Ok(())
        })
        .await;
    if let Err(e) = recorded {
        tracing::warn!(image_id = %id, store, error = %e, "recording import progress");
    }
}

/// Runs import jobs.
struct ImportHandler {
    images: Arc<ImageService>,
    identity: Arc<IdentityService>,
    policy: UrlPolicy,
    catalog: Catalog,
    /// Glance's `image_conversion` step, when configured.
    convert_to: Option<ConvertTarget>,
    conversion: Arc<ConversionService>,
}

/// What an import job was asked to do, read back from its payload.
struct ImportJob {
    id: uuid::Uuid,
    method: ImportMethod,
    uri: Option<String>,
    remote: Option<RemoteImage>,
    /// Who asked: `glance-download` reads the source as this user on this project.
    user_id: Option<String>,
    project_id: Option<String>,
    targets: Vec<String>,
    must_succeed: bool,
}

impl ImportJob {
    fn parse(job: &Job) -> Result<ImportJob, JobFailure> {
        let payload = &job.payload;
        let id = job
            .image_id
            .ok_or_else(|| JobFailure::Fatal("import job names no image".into()))?;
        let request = &payload["import_req"];
        let method_name = request["method"]["name"].as_str().unwrap_or("");
        let method = ImportMethod::parse(method_name)
            .ok_or_else(|| JobFailure::Fatal(format!("unknown import method {method_name:?}")))?;
        let targets: Vec<String> = payload["backend"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if targets.is_empty() {
            return Err(JobFailure::Fatal("import job names no store".into()));
        }
        let m = &request["method"];
        let remote = match (
            m["glance_image_id"].as_str().map(uuid::Uuid::parse_str),
            m["glance_region"].as_str(),
        ) {
            (Some(Ok(image_id)), Some(region)) => Some(RemoteImage {
                image_id,
                region: region.to_owned(),
                interface: m["glance_service_interface"]
                    .as_str()
                    .unwrap_or("public")
                    .to_owned(),
            }),
            _ => None,
        };
        Ok(ImportJob {
            id,
            method,
            uri: m["uri"].as_str().map(str::to_owned),
            remote,
            user_id: job.user_id.clone(),
            project_id: payload["caller_project"].as_str().map(str::to_owned),
            targets,
            must_succeed: request["all_stores_must_succeed"].as_bool().unwrap_or(true),
        })
    }
}

impl ImportHandler {
    /// Streams the source into the image in `store` (converted first when `convert_to` is
    /// set) and publishes it.
    async fn ingest(&self, image: &Image, job: &ImportJob, store: &Store) -> ServiceResult<Image> {
        // glance-download takes the source's formats and properties before the data.
        let mut updated: Option<Image> = None;
        let stream: BlobStream = match job.method {
            ImportMethod::GlanceDownload => {
                let (image, stream) = self.glance_download(image, job).await?;
                updated = Some(image);
                stream
            }
            ImportMethod::GlanceDirect => {
                let key = staging_key(image.id);
                self.images
                    .stores()
                    .staging()
                    .open(&key, None)
                    .await
                    .map_err(|e| {
                        ServiceError::new(ErrorKind::NotFound, format!("No staged data: {e}"))
                    })?
            }
            ImportMethod::WebDownload => {
                let uri = job
                    .uri
                    .as_deref()
                    .ok_or_else(|| ServiceError::invalid("no uri"))?;
                let response = open_url(&self.policy, uri)
                    .await
                    .map_err(|e| ServiceError::invalid(format!("fetching {uri}: {e}")))?;
                response
                    .bytes_stream()
                    .map(|chunk| {
                        chunk.map_err(|e| ims_blob::BlobError::Config(format!("download: {e}")))
                    })
                    .boxed()
            }
            ImportMethod::CopyImage => {
                return Err(ServiceError::conflict(format!(
                    "Image {} has no data to copy.",
                    image.id
                )));
            }
        };
        let image = updated.as_ref().unwrap_or(image);
        match self.convert_to {
            None => {
                self.images
                    .ingest(
                        image,
                        stream,
                        None,
                        ImageStatus::Importing,
                        store,
                        &Default::default(),
                    )
                    .await
            }
            Some(target) => self.convert_and_ingest(image, stream, target, store).await,
        }
    }

    /// Reads the source image's record and data from the catalog's image endpoint as the user
    /// who asked; takes its formats and the properties Glance copies; returns the updated image and the data.
    async fn glance_download(
        &self,
        image: &Image,
        job: &ImportJob,
    ) -> ServiceResult<(Image, BlobStream)> {
        let remote = job
            .remote
            .as_ref()
            .ok_or_else(|| ServiceError::invalid("glance-download names no source image"))?;
        let endpoint = self
            .catalog
            .image_endpoint(&remote.region, &remote.interface)
            .ok_or_else(|| {
                ServiceError::invalid(format!(
                    "No image endpoint in region {:?} for interface {:?}.",
                    remote.region, remote.interface
                ))
            })?;
        let (user, project) = job
            .user_id
            .as_deref()
            .zip(job.project_id.as_deref())
            .ok_or_else(|| ServiceError::invalid("glance-download names no user"))?;
        let token = self
            .identity
            .issue_for(user, project, REMOTE_TOKEN_TTL_SECS)
            .await?;
        // The endpoint comes from this deployment's own catalog, not from the caller: it is
        // reachable although it may be a loopback or private address.
        let policy = self.catalog_policy(endpoint).await?;
        let source = format!("{endpoint}/v2/images/{}", remote.image_id);
        let fetch_error =
            |e: crate::fetch::FetchError| ServiceError::invalid(format!("reading {source}: {e}"));
        let response = open_url_with_token(&policy, &source, &token)
            .await
            .map_err(fetch_error)?;
        let record = read_limited_json(response, MAX_REMOTE_IMAGE_JSON)
            .await
            .map_err(|e| ServiceError::invalid(format!("reading {source}: {e}")))?;
        if record["status"] != "active" {
            return Err(ServiceError::conflict(format!(
                "The source image {} is not active.",
                remote.image_id
            )));
        }
        let image = self
            .images
            .mutate(image.id, |image| {
                take_remote_attributes(image, &record);
                Ok(())
            })
            .await?;
        let file = format!("{source}/file");
        let response = open_url_with_token(&policy, &file, &token)
            .await
            .map_err(fetch_error)?;
        let stream = response
            .bytes_stream()
            .map(|chunk| chunk.map_err(|e| ims_blob::BlobError::Config(format!("download: {e}"))))
            .boxed();
        Ok((image, stream))
    }

    /// The import URL policy plus the catalog endpoint's own address.
    async fn catalog_policy(&self, endpoint: &str) -> ServiceResult<UrlPolicy> {
        let url = url::Url::parse(endpoint)
            .map_err(|e| ServiceError::invalid(format!("catalog endpoint {endpoint}: {e}")))?;
        let port = url.port_or_known_default().unwrap_or(80);
        let host = url.host_str().unwrap_or_default().to_owned();
        let addrs = tokio::net::lookup_host((host.trim_matches(|c| c == '[' || c == ']'), port))
            .await
            .map_err(|e| ServiceError::invalid(format!("resolving {endpoint}: {e}")))?;
        let mut policy = self.policy.clone();
        policy.allowed_ports.push(port);
        policy.exempt_targets.extend(addrs);
        Ok(policy)
    }

    /// Glance's `image_conversion` import step: the data lands in a work file, must be the
    /// declared `disk_format` with no references to other files, and is converted to `target`
    /// (unless it already is); the image then carries `target` as its `disk_format` and the
    /// size, checksum and hash of the converted data.
    async fn convert_and_ingest(
        &self,
        image: &Image,
        stream: BlobStream,
        target: ConvertTarget,
        store: &Store,
    ) -> ServiceResult<Image> {
        let declared = image.disk_format.as_deref().unwrap_or_default();
        let declared_format = Format::parse(declared).ok_or_else(|| {
            ServiceError::invalid(format!(
                "Image disk_format {declared} cannot be converted to {}.",
                target.as_str()
            ))
        })?;
        let cap = self.images.limits.image_size_cap;
        let source = self
            .conversion
            .download(&format!("image {}", image.id), stream, cap)
            .await?;
        let found = self
            .conversion
            .inspect(&source, Some(declared_format))
            .await?;
        let target_format = target.format();
        if found.format == target_format {
            let stream = source.stream().await?;
            return self
                .images
                .ingest(
                    image,
                    stream,
                    None,
                    ImageStatus::Importing,
                    store,
                    &Default::default(),
                )
                .await;
        }
        let converted = self
            .conversion
            .convert(&source, found.format, target_format)
            .await?;
        drop(source);
        let id = image.id;
        let image = self
            .images
            .mutate(id, |img| {
                img.disk_format = Some(target.as_str().to_string());
                Ok(())
            })
            .await?;
        tracing::info!(image_id = %id, from = %found.format, to = target.as_str(), "converted on import");
        let stream = converted.file.stream().await?;
        let ingested = self
            .images
            .ingest(
                &image,
                stream,
                Some(converted.size),
                ImageStatus::Importing,
                store,
                &Default::default(),
            )
            .await;
        if ingested.is_err() {
            // The user's declaration stands for the next attempt.
            let declared = declared.to_string();
            let restored = self
                .images
                .mutate(id, |img| {
                    img.disk_format = Some(declared.clone());
                    Ok(())
                })
                .await;
            if let Err(e) = restored {
                tracing::warn!(image_id = %id, error = %e, "restoring the declared disk_format");
            }
        }
        ingested
    }

    /// Brings new data into the first target store (publishing the image) if the image has
    /// none yet. A failure here fails the whole import and puts the image back to `queued`.
    async fn ingest_first(&self, image: Image, job: &ImportJob) -> Result<Image, JobFailure> {
        if image.data.is_some() {
            return Ok(image);
        }
        let first = &job.targets[0];
        let ingested = match self.images.stores().writable_store(first) {
            Ok(store) => self.ingest(&image, job, store).await,
            Err(e) => Err(e),
        };
        match ingested {
            Ok(image) => {
                record_store(&self.images, job.id, first, false).await;
                Ok(image)
            }
            Err(err) => {
                for store in &job.targets {
                    record_store(&self.images, job.id, store, true).await;
                }
                release(&self.images, job.id, Some(ImageStatus::Importing)).await;
                self.discard_staging(job).await;
                Err(JobFailure::Fatal(err.to_string()))
            }
        }
    }
}

#[async_trait]
impl JobHandler for ImportHandler {
    async fn run(&self, ctx: &JobContext) -> Result<Value, JobFailure> {
        let job = ImportJob::parse(ctx.job())?;
        let id = job.id;
        let image = self
            .images
            .meta
            .get_image(id)
            .await
            .map_err(|e| JobFailure::Retry(format!("reading image {id}: {e}")))?
            .filter(|i| i.status != ImageStatus::Deleted)
            .ok_or_else(|| JobFailure::Fatal(format!("image {id} was deleted")))?;
        let job_id = ctx.job().id.to_string();
        if image.properties.get(LOCK_PROPERTY) != Some(&job_id) {
            return Err(JobFailure::Fatal(format!(
                "image {id} is {} and not held by this import",
                image.status.as_str()
            )));
        }
        let fresh = image.data.is_none();
        if fresh && image.status != ImageStatus::Importing {
            return Err(JobFailure::Fatal(format!(
                "image {id} is {} and has no data to import into",
                image.status.as_str()
            )));
        }
        self.check_quotas(&image, &job).await?;
        // An earlier attempt may have published the image or copied some stores already; the
        // stores the image holds are not written again.
        let mut image = self.ingest_first(image, &job).await?;
        let mut failed = Vec::new();
        for target in &job.targets {
            if image.data.as_ref().is_some_and(|d| d.in_store(target)) {
                continue;
            }
            let copied = match self.images.stores().writable_store(target) {
                Ok(store) => self.images.copy_to_store(&image, store).await,
                Err(e) => Err(e),
            };
            match copied {
                Ok(updated) => {
                    image = updated;
                    record_store(&self.images, id, target, false).await;
                }
                Err(e) => {
                    tracing::warn!(image_id = %id, store = %target, error = %e, "import to a store failed");
                    record_store(&self.images, id, target, true).await;
                    failed.push(format!("{target}: {e}"));
                }
            }
        }
        self.discard_staging(&job).await;
        let fails_import = !failed.is_empty() && job.must_succeed;
        if fails_import && job.method != ImportMethod::CopyImage {
            // All stores had to succeed: the image goes back to queued, its data everywhere.
            self.revert(&image).await;
        } else {
            release(&self.images, id, None).await;
        }
        if fails_import {
            return Err(JobFailure::Fatal(format!(
                "importing to stores failed: {}",
                failed.join("; ")
            )));
        }
        let stores = image.data.map(|d| d.stores).unwrap_or_default();
        Ok(json!({"image_id": id.to_string(), "stores": stores}))
    }
}

/// Takes the source image's formats and the properties Glance's `glance-download` copies.
fn take_remote_attributes(image: &mut Image, record: &Value) {
    for (key, slot) in [
        ("disk_format", &mut image.disk_format),
        ("container_format", &mut image.container_format),
    ] {
        if let Some(value) = record[key].as_str() {
            *slot = Some(value.to_owned());
        }
    }
    let Some(fields) = record.as_object() else {
        return;
    };
    for (key, value) in fields {
        if let Some(value) = value.as_str()
            && REMOTE_PROPERTY_PREFIXES.iter().any(|p| key.starts_with(p))
        {
            image.properties.insert(key.clone(), value.to_owned());
        }
    }
}

/// Reads a JSON body of at most `limit` bytes.
async fn read_limited_json(response: reqwest::Response, limit: usize) -> Result<Value, String> {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        if body.len() + chunk.len() > limit {
            return Err(format!("the image document is larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| e.to_string())
}

impl ImportHandler {
    /// Glance's checks when the import starts: `glance-direct` adds the staged data to
    /// `image_size_total`; the other methods use staging space (`image_stage_total`; this
    /// image's copy in progress already counts) and are uploads in progress
    /// (`image_count_uploading`, counting this one). Over a limit, the import ends as a failed
    /// task, the image as it was before (new data: `queued`, the staged data discarded).
    async fn check_quotas(&self, image: &Image, job: &ImportJob) -> Result<(), JobFailure> {
        let Some(project) = image.owner.as_deref() else {
            return Ok(());
        };
        if image.data.is_some() && job.method != ImportMethod::CopyImage {
            // A retry after the data was published: it counts already.
            return Ok(());
        }
        let checked = match job.method {
            ImportMethod::GlanceDirect => match self.images.staged_size(image.id).await {
                Ok(staged) => {
                    let delta = QuotaResource::ImageSizeTotal.units(staged.unwrap_or(0));
                    self.images
                        .enforce_quota(project, QuotaResource::ImageSizeTotal, delta)
                        .await
                }
                Err(e) => Err(e),
            },
            ImportMethod::WebDownload | ImportMethod::GlanceDownload | ImportMethod::CopyImage => {
                match self
                    .images
                    .enforce_quota(project, QuotaResource::ImageStageTotal, 0)
                    .await
                {
                    Ok(()) => {
                        self.images
                            .enforce_quota(project, QuotaResource::ImageCountUploading, 0)
                            .await
                    }
                    Err(e) => Err(e),
                }
            }
        };
        let Err(err) = checked else {
            return Ok(());
        };
        if err.kind != ErrorKind::QuotaExceeded {
            return Err(JobFailure::Retry(err.to_string()));
        }
        let revert = (job.method != ImportMethod::CopyImage).then_some(ImageStatus::Importing);
        release(&self.images, job.id, revert).await;
        self.discard_staging(job).await;
        Err(JobFailure::Fatal(err.to_string()))
    }

    async fn discard_staging(&self, job: &ImportJob) {
        if job.method != ImportMethod::GlanceDirect {
            return;
        }
        let staging = self.images.stores().staging();
        if let Err(e) = staging.delete(&staging_key(job.id)).await {
            tracing::warn!(image_id = %job.id, error = %e, "deleting staged data; the collector will retry");
        }
    }

    /// Puts a published image back to `queued` and deletes its data from every store.
    async fn revert(&self, image: &Image) {
        let id = image.id;
        let reverted = self
            .images
            .mutate(id, |image| {
                image.properties.remove(LOCK_PROPERTY);
                image
                    .properties
                    .insert(IMPORTING_PROPERTY.into(), String::new());
                image.status = ImageStatus::Queued;
                image.data = None;
                Ok(())
            })
            .await;
        if let Err(e) = reverted {
            tracing::warn!(image_id = %id, error = %e, "reverting a failed import");
            return;
        }
        if let Some(data) = &image.data
            && let Ok(key) = BlobKey::parse(&data.blob_key)
        {
            for store in data
                .stores
                .iter()
                .filter_map(|s| self.images.stores().get(s))
            {
                crate::upload::discard(&store.blobs, &key).await;
            }
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
