//! Cross-region image copy (`copy_image_cross_region`): the image goes to a peer region — another
//! `ims` deployment named in `[region]` — as an `ims-jobs` job any node of this region may run.
//!
//! The call checks the seed's limits (table 5-4: active, unencrypted, not an ISO image, at most
//! `cross_region_copy_size_cap` bytes, one cross-region task per image at a time), takes the
//! image's copy lock and submits the job. The job talks to the peer's own API, signed with
//! SDK-HMAC-SHA256 by the trust credential configured for the peer (an access key of an account
//! there): it creates the target image with an id fixed at submission, streams the blob to it
//! (`UNSIGNED-PAYLOAD`, so nothing is buffered), and sends the MD5 and SHA-512 it expects, which
//! the peer checks as the data arrives. A resumed job finds the target by its id and carries on:
//! a queued target gets the data, an active one is only verified.
//!
//! The job's payload carries `job_type` and `entities` like every IMS job's (`cloudjobs.rs`), and
//! a failure saves its `error_kind`, so both job queries read it from the queue as they read the
//! others. Copies submitted by earlier versions also have an IMS record in the cloud-image store;
//! the job queries still read those (see `CloudImageService::job`), nothing writes them.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use ims_blob::BlobKey;
use ims_blob::s3conf::Secret;
use ims_domain::{Caller, ErrorKind, Image, ImageStatus};
use ims_jobs::runner::{JobContext, JobFailure, JobHandler, Waker};
use ims_jobs::{JobStore, NewJob};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::cloudimages::is_service_property;
use crate::config::{PeerRegion, RegionConfig};
use crate::error::{ServiceError, ServiceResult};
use crate::images::ImageService;
use crate::sdk_signature::{OutgoingRequest, UNSIGNED_PAYLOAD, sdk_date, sign_request};
use crate::upload::{EXPECTED_MD5_HEADER, EXPECTED_SHA512_HEADER};

/// The `ims-jobs` kind of a cross-region copy.
pub const CROSS_REGION_JOB_KIND: &str = "ims.cross_region_copy";
/// The IMS `job_type` the job queries report.
pub const CROSS_REGION_JOB_TYPE: &str = "imsCrossRegionCopyImageJob";
/// Names the copy job holding an image: a second cross-region copy of it is refused while that
/// job runs (seed table 5-4). The `os_glance` prefix is reserved in both API dialects, so no
/// client can set or clear it.
pub const COPY_LOCK_PROPERTY: &str = "os_glance_cross_region_copy_task";
/// Attempts of a copy: a peer that is down or a dropped connection is retried.
const COPY_MAX_ATTEMPTS: u32 = 5;
/// Connecting to a peer gives up after this long.
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A metadata call to a peer (create, show) gives up after this long; the data upload has no
/// overall limit (it may be 128 GB) but stops when the connection does.
const PEER_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest answer read from a peer's metadata calls; an image record is a few KiB.
const MAX_PEER_ANSWER_BYTES: usize = 1 << 20;
/// Sent (and signed) as `User-Agent` on calls to peers.
const USER_AGENT: &str = concat!("ims-cross-region/", env!("CARGO_PKG_VERSION"));

/// What `copy_image_cross_region` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrossRegionRequest {
    pub name: String,
    pub description: Option<String>,
    /// The destination region (a configured peer).
    pub region: String,
    /// The destination project, by name (the peer's configured project).
    pub project_name: String,
    /// The IMS agency; the configured trust credential stands for it here.
    pub agency_name: String,
}

/// What the job remembers from the call.
#[derive(Debug, Clone, serde::Serialize, Deserialize)]
struct CopyPayload {
    source_image_id: uuid::Uuid,
    /// Fixed at submission, so every attempt finds the image an earlier one created.
    target_image_id: uuid::Uuid,
    name: String,
    description: Option<String>,
    region: String,
}

/// A failure talking to a peer region.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("reading the secret key file {path} of peer region {peer}: {source}")]
    ReadingSecret {
        peer: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("peer region {peer} has an invalid endpoint {endpoint:?}")]
    InvalidEndpoint { peer: String, endpoint: String },
    #[error("signing a request to peer region {peer}: {source}")]
    Signing {
        peer: String,
        #[source]
        source: crate::sdk_signature::SignatureError,
    },
    #[error("{op} on peer region {peer} could not be sent: {source}")]
    Sending {
        op: &'static str,
        peer: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{op} on peer region {peer} answered {status}: {message}")]
    Refused {
        op: &'static str,
        peer: String,
        status: u16,
        message: String,
    },
    #[error("{op} on peer region {peer} gave an unreadable answer: {reason}")]
    BadAnswer {
        op: &'static str,
        peer: String,
        reason: String,
    },
}

impl PeerError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            PeerError::ReadingSecret { .. }
            | PeerError::InvalidEndpoint { .. }
            | PeerError::Signing { .. }
            | PeerError::BadAnswer { .. } => ErrorKind::Internal,
            PeerError::Sending { .. } => ErrorKind::Unavailable,
            PeerError::Refused { status, .. } => match status {
                401 => ErrorKind::Unauthorized,
                403 => ErrorKind::Forbidden,
                404 => ErrorKind::NotFound,
                409 => ErrorKind::Conflict,
                413 => ErrorKind::TooLarge,
                s if *s >= 500 => ErrorKind::Unavailable,
                _ => ErrorKind::InvalidInput,
            },
        }
    }

    /// Worth another attempt: the peer was unreachable or failed on its side.
    fn is_transient(&self) -> bool {
        self.kind() == ErrorKind::Unavailable
    }
}

/// A peer region's API, signed with its trust credential.
pub struct PeerClient {
    name: String,
    /// `scheme://host[:port]` (a path in the configured endpoint is dropped, as the SDK does).
    base: String,
    /// The `Host` header the signature covers.
    host: String,
    project_id: String,
    access_key: String,
    secret: Secret,
    http: reqwest::Client,
}

/// A body for a peer call.
enum PeerBody {
    None,
    Json(Vec<u8>),
    /// Image data, streamed and signed as `UNSIGNED-PAYLOAD`.
    Stream(reqwest::Body),
}

impl PeerClient {
    /// Reads the peer's secret key file and checks its endpoint.
    pub fn open(peer: &PeerRegion, http: reqwest::Client) -> Result<PeerClient, PeerError> {
        let secret = std::fs::read_to_string(&peer.secret_key_file).map_err(|source| {
            PeerError::ReadingSecret {
                peer: peer.name.clone(),
                path: peer.secret_key_file.display().to_string(),
                source,
            }
        })?;
        let invalid = || PeerError::InvalidEndpoint {
            peer: peer.name.clone(),
            endpoint: peer.endpoint.clone(),
        };
        let url = reqwest::Url::parse(&peer.endpoint).map_err(|_| invalid())?;
        let host = url.host_str().ok_or_else(invalid)?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid());
        }
        let host = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        Ok(PeerClient {
            name: peer.name.clone(),
            base: format!("{}://{host}", url.scheme()),
            host,
            project_id: peer.project_id.clone(),
            access_key: peer.access_key.clone(),
            secret: Secret::new(secret.trim()),
            http,
        })
    }

    async fn call(
        &self,
        op: &'static str,
        method: reqwest::Method,
        path: &str,
        body: PeerBody,
        extra: &[(&str, String)],
    ) -> Result<reqwest::Response, PeerError> {
        let content_type = match body {
            PeerBody::Stream(_) => "application/octet-stream",
            PeerBody::Json(_) => "application/json;charset=utf-8",
            PeerBody::None => "application/json",
        };
        let mut headers: Vec<(String, String)> = vec![
            ("content-type".into(), content_type.into()),
            ("host".into(), self.host.clone()),
            ("user-agent".into(), USER_AGENT.into()),
            ("x-project-id".into(), self.project_id.clone()),
            (
                "x-sdk-date".into(),
                sdk_date(time::OffsetDateTime::now_utc()),
            ),
        ];
        headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        if matches!(body, PeerBody::Stream(_)) {
            headers.push(("x-sdk-content-sha256".into(), UNSIGNED_PAYLOAD.into()));
        }
        let signed_body: Option<&[u8]> = match &body {
            PeerBody::Json(bytes) => Some(bytes),
            PeerBody::None => Some(&[]),
            PeerBody::Stream(_) => None,
        };
        let authorization = sign_request(
            &OutgoingRequest {
                method: method.as_str(),
                raw_path: path,
                raw_query: "",
                headers: &headers,
                body: signed_body,
            },
            &self.access_key,
            self.secret.expose().as_bytes(),
        )
        .map_err(|source| PeerError::Signing {
            peer: self.name.clone(),
            source,
        })?;
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("authorization", authorization);
        for (k, v) in headers.iter().filter(|(k, _)| k != "host") {
            request = request.header(k.as_str(), v.as_str());
        }
        request = match body {
            PeerBody::None => request,
            PeerBody::Json(bytes) => request.body(bytes).timeout(PEER_CALL_TIMEOUT),
            PeerBody::Stream(stream) => request.body(stream),
        };
        let response = request.send().await.map_err(|source| PeerError::Sending {
            op,
            peer: self.name.clone(),
            source,
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let text = read_bounded(response).await.unwrap_or_default();
        Err(PeerError::Refused {
            op,
            peer: self.name.clone(),
            status,
            message: peer_message(&text),
        })
    }

    async fn json(
        &self,
        op: &'static str,
        response: reqwest::Response,
    ) -> Result<Value, PeerError> {
        let bad = |reason: String| PeerError::BadAnswer {
            op,
            peer: self.name.clone(),
            reason,
        };
        let bytes = read_bounded(response).await.map_err(bad)?;
        serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))
    }

    /// The image on the peer, or `None` if it does not exist.
    pub async fn show_image(&self, id: uuid::Uuid) -> Result<Option<Value>, PeerError> {
        let op = "showing the target image";
        let path = format!("/v2/images/{id}");
        match self
            .call(op, reqwest::Method::GET, &path, PeerBody::None, &[])
            .await
        {
            Ok(response) => Ok(Some(self.json(op, response).await?)),
            Err(PeerError::Refused { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates an image on the peer (Glance's create, with the id given in `body`).
    pub async fn create_image(&self, body: &Value) -> Result<Value, PeerError> {
        let op = "creating the target image";
        let response = self
            .call(
                op,
                reqwest::Method::POST,
                "/v2/images",
                PeerBody::Json(body.to_string().into_bytes()),
                &[],
            )
            .await?;
        self.json(op, response).await
    }

    /// Streams `size` bytes of data into the peer image `id`; the peer checks them against
    /// `md5` and `sha512` as they arrive and refuses a mismatch.
    pub async fn upload(
        &self,
        id: uuid::Uuid,
        data: ims_blob::BlobStream,
        size: u64,
        md5: &str,
        sha512: &str,
    ) -> Result<(), PeerError> {
        let body = reqwest::Body::wrap_stream(data);
        self.call(
            "sending the image data",
            reqwest::Method::PUT,
            &format!("/v2/images/{id}/file"),
            PeerBody::Stream(body),
            &[
                ("x-openstack-image-size", size.to_string()),
                (EXPECTED_MD5_HEADER, md5.to_string()),
                (EXPECTED_SHA512_HEADER, sha512.to_string()),
            ],
        )
        .await
        .map(drop)
    }
}

/// Reads an answer body of at most [`MAX_PEER_ANSWER_BYTES`].
async fn read_bounded(response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        if out.len().saturating_add(chunk.len()) > MAX_PEER_ANSWER_BYTES {
            return Err(format!("answer longer than {MAX_PEER_ANSWER_BYTES} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The message of a peer's error body (either dialect), else the text itself, shortened.
fn peer_message(text: &[u8]) -> String {
    const MAX_MESSAGE_CHARS: usize = 300;
    let parsed: Option<Value> = serde_json::from_slice(text).ok();
    let found = parsed.as_ref().and_then(|v| {
        v.pointer("/error/message")
            .or_else(|| v.get("error_msg"))
            .or_else(|| v.get("message"))
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let text = found.unwrap_or_else(|| String::from_utf8_lossy(text).into_owned());
    text.chars().take(MAX_MESSAGE_CHARS).collect()
}

/// Cross-region copies: the call, and the handler workers run the jobs with.
pub struct CrossRegionService {
    images: Arc<ImageService>,
    jobs: Arc<dyn JobStore>,
    waker: Waker,
    region: RegionConfig,
    peers: Vec<Arc<PeerClient>>,
}

impl CrossRegionService {
    /// Opens a client per configured peer (reading their secret key files).
    pub fn new(
        images: Arc<ImageService>,
        jobs: Arc<dyn JobStore>,
        waker: Waker,
        region: RegionConfig,
    ) -> ServiceResult<CrossRegionService> {
        let http = reqwest::Client::builder()
            .connect_timeout(PEER_CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ServiceError::internal("building the peer-region HTTP client", &e))?;
        let mut peers = Vec::new();
        for peer in &region.peers {
            let client = PeerClient::open(peer, http.clone())
                .map_err(|e| ServiceError::internal("opening a peer region", &e))?;
            peers.push(Arc::new(client));
        }
        Ok(CrossRegionService {
            images,
            jobs,
            waker,
            region,
            peers,
        })
    }

    fn peer(&self, name: &str) -> Option<&Arc<PeerClient>> {
        self.peers.iter().find(|p| p.name == name)
    }

    /// `copy_image_cross_region`: checks the request and the seed's limits, locks the image and
    /// submits the job. Returns the IMS job id (32 hex digits).
    pub async fn submit(
        &self,
        caller: &Caller,
        source_id: uuid::Uuid,
        request: CrossRegionRequest,
        request_id: Option<String>,
    ) -> ServiceResult<String> {
        if request.region == self.region.name {
            return Err(ServiceError::invalid(format!(
                "Region {} is this region; use copy_image_in_region.",
                request.region
            )));
        }
        let Some(peer) = self.region.peer(&request.region) else {
            return Err(ServiceError::invalid(format!(
                "Region {} is not a peer region of this deployment.",
                request.region
            )));
        };
        if request.project_name != peer.project_name {
            return Err(ServiceError::invalid(format!(
                "Project {} is not the project this region copies to in region {}.",
                request.project_name, request.region
            )));
        }
        if request.agency_name.is_empty() {
            return Err(ServiceError::invalid("agency_name is required."));
        }
        let source = self.images.owned(caller, source_id, "modify_image").await?;
        self.check_copyable(&source)?;
        let job_id = uuid::Uuid::new_v4();
        self.lock(&source, job_id).await?;
        let payload = CopyPayload {
            source_image_id: source_id,
            target_image_id: uuid::Uuid::new_v4(),
            name: request.name.clone(),
            description: request.description.clone(),
            region: request.region.clone(),
        };
        let submitted = self.submit_job(caller, job_id, &payload, request_id).await;
        if let Err(e) = submitted {
            self.unlock(source_id, job_id).await;
            return Err(e);
        }
        self.waker.wake();
        Ok(job_id.simple().to_string())
    }

    async fn submit_job(
        &self,
        caller: &Caller,
        job_id: uuid::Uuid,
        payload: &CopyPayload,
        request_id: Option<String>,
    ) -> ServiceResult<()> {
        // The copy's parameters, plus what the job queries show (as every IMS job's payload).
        let mut body = serde_json::to_value(payload)
            .map_err(|e| ServiceError::internal("encoding the copy job", &e))?;
        if let Some(map) = body.as_object_mut() {
            map.insert("job_type".into(), CROSS_REGION_JOB_TYPE.into());
            map.insert("entities".into(), json!({"image_name": payload.name}));
        }
        let mut job = NewJob::new(CROSS_REGION_JOB_KIND, &caller.project_id, body);
        job.id = job_id;
        job.user_id = Some(caller.user_id.clone());
        job.image_id = Some(payload.source_image_id);
        job.request_id = request_id;
        job.max_attempts = COPY_MAX_ATTEMPTS;
        self.jobs
            .submit(job, time::OffsetDateTime::now_utc())
            .await
            .map_err(|e| ServiceError::internal("submitting the copy job", &e))?;
        Ok(())
    }

    /// Seed table 5-4 and §4.2: what may go to another region.
    fn check_copyable(&self, image: &Image) -> ServiceResult<()> {
        if image.status != ImageStatus::Active {
            return Err(ServiceError::invalid("Only active images can be copied."));
        }
        if image.properties.contains_key("__system__cmkid") {
            return Err(ServiceError::new(
                ErrorKind::Unsupported,
                "Encrypted images cannot be copied to another region.",
            ));
        }
        if image.properties.get("virtual_env_type").map(String::as_str) == Some("IsoImage") {
            return Err(ServiceError::new(
                ErrorKind::Unsupported,
                "ISO images cannot be copied.",
            ));
        }
        let size = image.data.as_ref().map(|d| d.size).unwrap_or(0);
        let cap = self.region.cross_region_copy_size_cap;
        if u64::try_from(size).unwrap_or(u64::MAX) > cap {
            return Err(ServiceError::too_large(format!(
                "Image {} holds {size} bytes; at most {cap} bytes can be copied to another region.",
                image.id
            )));
        }
        Ok(())
    }

    /// Takes the image's copy lock for `job_id`, unless an unfinished copy job holds it.
    async fn lock(&self, image: &Image, job_id: uuid::Uuid) -> ServiceResult<()> {
        let seen = image.properties.get(COPY_LOCK_PROPERTY).cloned();
        if let Some(holder) = seen.as_deref().and_then(|h| uuid::Uuid::parse_str(h).ok()) {
            let job = self
                .jobs
                .get(holder)
                .await
                .map_err(|e| ServiceError::internal("reading the copy lock", &e))?;
            if job.is_some_and(|j| !j.status.is_finished()) {
                return Err(in_progress(image.id, holder));
            }
        }
        let id = image.id;
        self.images
            .mutate(id, |img| {
                let now = img.properties.get(COPY_LOCK_PROPERTY);
                if now != seen.as_ref() {
                    // Another call took the lock since it was read.
                    let holder = now.and_then(|h| uuid::Uuid::parse_str(h).ok());
                    return Err(in_progress(id, holder.unwrap_or_default()));
                }
                img.properties
                    .insert(COPY_LOCK_PROPERTY.into(), job_id.to_string());
                Ok(())
            })
            .await
            .map(drop)
    }

    /// Releases the lock if `job_id` still holds it; a failure is logged (a finished job's lock
    /// is taken over by the next copy anyway).
    async fn unlock(&self, image_id: uuid::Uuid, job_id: uuid::Uuid) {
        let holder = job_id.to_string();
        let released = self
            .images
            .mutate(image_id, |img| {
                if img.properties.get(COPY_LOCK_PROPERTY) == Some(&holder) {
                    img.properties.remove(COPY_LOCK_PROPERTY);
                }
                Ok(())
            })
            .await;
        if let Err(e) = released {
            tracing::warn!(image_id = %image_id, job_id = %job_id, error = %e.message, "releasing the copy lock failed");
        }
    }

    /// The handler workers run copy jobs with.
    pub fn handler(self: &Arc<Self>) -> Arc<dyn JobHandler> {
        Arc::new(CopyHandler {
            service: self.clone(),
        })
    }

    /// One run of a copy job; resumable at every step.
    async fn copy(&self, payload: &CopyPayload) -> Result<Value, StepError> {
        let source = self
            .images
            .meta
            .get_image(payload.source_image_id)
            .await
            .map_err(|e| StepError::retry(format!("reading the source image: {e}")))?
            .filter(|i| i.status == ImageStatus::Active)
            .ok_or_else(|| {
                StepError::fatal(ErrorKind::NotFound, "The source image is no longer active.")
            })?;
        let data = source.data.clone().ok_or_else(|| {
            StepError::fatal(ErrorKind::NotFound, "The source image has no data.")
        })?;
        let peer = self.peer(&payload.region).ok_or_else(|| {
            StepError::fatal(
                ErrorKind::InvalidInput,
                format!("Region {} is no longer a peer region.", payload.region),
            )
        })?;
        let target = payload.target_image_id;
        let size = u64::try_from(data.size).unwrap_or(0);
        let shown = match peer.show_image(target).await? {
            Some(shown) => shown,
            None => {
                let body = target_body(&source, payload, &self.region.name);
                match peer.create_image(&body).await {
                    Ok(created) => created,
                    // An earlier attempt created it after our look: look again.
                    Err(PeerError::Refused { status: 409, .. }) => {
                        peer.show_image(target).await?.ok_or_else(|| {
                            StepError::fatal(
                                ErrorKind::Conflict,
                                format!("Image id {target} is taken in region {}.", payload.region),
                            )
                        })?
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        match shown.get("status").and_then(Value::as_str) {
            Some("active") => {}
            Some("queued") => {
                let key = BlobKey::parse(&data.blob_key).map_err(|e| {
                    StepError::fatal(ErrorKind::Internal, format!("source blob key: {e}"))
                })?;
                let stream = self
                    .images
                    .open_stores(&data.stores, &key, None)
                    .await
                    .map_err(|e| {
                        StepError::retry(format!("opening the source data: {}", e.message))
                    })?;
                peer.upload(target, stream, size, &data.checksum, &data.os_hash_value)
                    .await?;
            }
            // Data is arriving from an earlier attempt that may have died; the peer resets a
            // silent upload to `queued`, and the next attempt sends the data again.
            Some("saving" | "uploading" | "importing") => {
                return Err(StepError::retry(format!(
                    "image {target} in region {} is still receiving data",
                    payload.region
                )));
            }
            other => {
                return Err(StepError::fatal(
                    ErrorKind::Conflict,
                    format!(
                        "Image {target} in region {} is {}.",
                        payload.region,
                        other.unwrap_or("unknown")
                    ),
                ));
            }
        }
        // What the peer stored must be what was sent.
        let stored = peer.show_image(target).await?.ok_or_else(|| {
            StepError::fatal(ErrorKind::NotFound, "The target image disappeared.")
        })?;
        let same = stored.get("status").and_then(Value::as_str) == Some("active")
            && stored.get("size").and_then(Value::as_i64) == Some(data.size)
            && stored.get("checksum").and_then(Value::as_str) == Some(data.checksum.as_str())
            && stored.get("os_hash_value").and_then(Value::as_str)
                == Some(data.os_hash_value.as_str());
        if !same {
            return Err(StepError::fatal(
                ErrorKind::Internal,
                format!(
                    "Image {target} in region {} does not hold the source's data.",
                    payload.region
                ),
            ));
        }
        Ok(json!({"image_id": target.to_string(), "image_name": payload.name}))
    }
}

/// The target image's create body: the source's own attributes, the service's `__*` ones
/// recomputed by the peer, and where it came from.
fn target_body(source: &Image, payload: &CopyPayload, region: &str) -> Value {
    let mut body = serde_json::Map::new();
    for (key, value) in &source.properties {
        if !is_service_property(key)
            && !key.starts_with("os_glance")
            && key != "enterprise_project_id"
        {
            body.insert(key.clone(), value.clone().into());
        }
    }
    match &payload.description {
        Some(d) => body.insert("__description".into(), d.clone().into()),
        None => body.remove("__description"),
    };
    body.insert("__originalimagename".into(), source.id.to_string().into());
    body.insert(
        "__data_origin".into(),
        format!("image,{region},{}", source.id).into(),
    );
    body.insert("id".into(), payload.target_image_id.to_string().into());
    body.insert("name".into(), payload.name.clone().into());
    body.insert("visibility".into(), "private".into());
    body.insert(
        "disk_format".into(),
        source
            .disk_format
            .clone()
            .unwrap_or_else(|| "raw".into())
            .into(),
    );
    body.insert(
        "container_format".into(),
        source
            .container_format
            .clone()
            .unwrap_or_else(|| "bare".into())
            .into(),
    );
    body.insert("min_disk".into(), source.min_disk.into());
    body.insert("min_ram".into(), source.min_ram.into());
    Value::Object(body)
}

fn in_progress(image_id: uuid::Uuid, job: uuid::Uuid) -> ServiceError {
    ServiceError::conflict(format!(
        "Image {image_id} is being copied to another region by job {}; a new copy can start when it ends.",
        job.simple()
    ))
}

/// How a step of a copy failed: worth retrying, or final (with the kind the job reports).
#[derive(Debug)]
enum StepError {
    Retry(String),
    Fatal(ErrorKind, String),
}

impl StepError {
    fn retry(reason: impl Into<String>) -> StepError {
        StepError::Retry(reason.into())
    }

    fn fatal(kind: ErrorKind, reason: impl Into<String>) -> StepError {
        StepError::Fatal(kind, reason.into())
    }
}

impl From<PeerError> for StepError {
    fn from(e: PeerError) -> StepError {
        if e.is_transient() {
            StepError::Retry(e.to_string())
        } else {
            StepError::Fatal(e.kind(), e.to_string())
        }
    }
}

struct CopyHandler {
    service: Arc<CrossRegionService>,
}

#[async_trait]
impl JobHandler for CopyHandler {
    async fn run(&self, ctx: &JobContext) -> Result<Value, JobFailure> {
        let job = ctx.job();
        let payload: CopyPayload = serde_json::from_value(job.payload.clone())
            .map_err(|e| JobFailure::Fatal(format!("the job's payload is invalid: {e}")))?;
        let service = &self.service;
        let outcome = match service.copy(&payload).await {
            Ok(entities) => Ok(entities),
            // The last attempt's transient failure is final.
            Err(StepError::Retry(reason)) if job.attempts < job.max_attempts => {
                tracing::warn!(reason, "cross-region copy will be retried");
                return Err(JobFailure::Retry(reason));
            }
            Err(StepError::Retry(reason)) => Err((ErrorKind::Unavailable, reason)),
            Err(StepError::Fatal(kind, reason)) => Err((kind, reason)),
        };
        service.unlock(payload.source_image_id, job.id).await;
        match outcome {
            Ok(entities) => Ok(entities),
            Err((kind, reason)) => {
                tracing::warn!(reason, "cross-region copy failed");
                // The kind the job queries map to an IMS error code, as for every IMS job.
                ctx.save_state(json!({ "error_kind": format!("{kind:?}") }))
                    .await?;
                Err(JobFailure::Fatal(reason))
            }
        }
    }
}
