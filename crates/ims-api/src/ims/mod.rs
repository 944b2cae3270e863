//! The IMS API (Huawei Cloud Image Management Service, the dialect `huaweicloudsdkims` speaks):
//! `/v1/cloudimages…`, `/v2/cloudimages…`, `/v2.1/cloudimages…` and the `/v2/{project_id}/images…`
//! tag routes, over the same images the Glance routes serve. Errors use IMS's
//! `{"error":{"code","message"}}` body; callers authenticate with an AK/SK signature or a token.

mod images;
mod jobs;
mod sharing;

use axum::Router;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post, put};
use bytes::Bytes;
use ims_core::ServiceError;
use ims_domain::{Caller, ErrorKind, Image};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::SharedState;
use crate::error::ApiError;
use crate::json::{glance_time, image_json};
use crate::middleware::Authed;

/// An error on its way out in IMS's dialect.
pub struct ImsError(ApiError);

impl From<ServiceError> for ImsError {
    fn from(e: ServiceError) -> Self {
        ImsError(ApiError::from(e).ims())
    }
}

impl From<ApiError> for ImsError {
    fn from(e: ApiError) -> Self {
        ImsError(e.ims())
    }
}

impl IntoResponse for ImsError {
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}

pub type ImsResult<T> = Result<T, ImsError>;

fn invalid(message: impl Into<String>) -> ImsError {
    ImsError(ApiError::invalid(message).ims())
}

fn error(kind: ErrorKind, message: impl Into<String>) -> ImsError {
    ImsError(ApiError::new(kind, message).ims())
}

/// The caller of an IMS route: AK/SK signature or token; a failure is the gateway's 401.
/// `X-Project-Id`, when sent with a token, must name the token's project.
pub struct ImsCaller(pub Caller);

impl FromRequestParts<SharedState> for ImsCaller {
    type Rejection = ImsError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &SharedState,
    ) -> Result<Self, Self::Rejection> {
        let Authed(caller) = Authed::from_request_parts(parts, state)
            .await
            .map_err(|e| match e.kind {
                ErrorKind::Unauthorized => ImsError(e.gateway()),
                _ => ImsError(e.ims()),
            })?;
        if let Some(project) = parts
            .headers
            .get("x-project-id")
            .and_then(|v| v.to_str().ok())
            && project != caller.project_id
        {
            return Err(error(
                ErrorKind::Forbidden,
                "X-Project-Id does not name the project the credentials are scoped to.",
            ));
        }
        Ok(ImsCaller(caller))
    }
}

/// A `{project_id}` path segment must be the caller's project.
fn check_project(caller: &Caller, project_id: &str) -> ImsResult<()> {
    if project_id != caller.project_id {
        return Err(error(
            ErrorKind::Forbidden,
            format!("Project {project_id} is not the project of the credentials."),
        ));
    }
    Ok(())
}

/// Parses a JSON body into `T`; empty or malformed bodies are IMS 400s.
fn parse_body<T: DeserializeOwned>(body: &Bytes) -> ImsResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(invalid("The request body is empty."));
    }
    serde_json::from_slice(body)
        .map_err(|e| invalid(format!("The request message format is invalid: {e}")))
}

fn parse_image_id(id: &str) -> ImsResult<uuid::Uuid> {
    uuid::Uuid::parse_str(id).map_err(|_| {
        error(
            ErrorKind::NotFound,
            format!("The image {id} does not exist."),
        )
    })
}

fn job_created(job_id: String) -> Response {
    axum::Json(json!({ "job_id": job_id })).into_response()
}

/// An image as IMS's `ImageInfo` renders it for `caller`: the Glance body plus the service's
/// `__*` attributes, every `__*` value a string (the SDK types them `str`) except
/// `__system_support_market`.
pub fn image_info(caller: &Caller, image: &Image) -> Value {
    let mut body = image_json(image, false);
    let Some(map) = body.as_object_mut() else {
        return body;
    };
    let size = image.data.as_ref().map(|d| d.size).unwrap_or(0);
    let description = image.properties.get("__description").cloned();
    let put = |map: &mut Map<String, Value>, k: &str, v: Value| {
        map.insert(k.to_string(), v);
    };
    put(
        map,
        "__imagetype",
        ims_core::cloudimages::image_type(caller, image).into(),
    );
    put(map, "__image_size", size.to_string().into());
    put(map, "__system_support_market", false.into());
    put(
        map,
        "enterprise_project_id",
        ims_core::cloudimages::enterprise_project(image).into(),
    );
    put(map, "active_at", glance_time(image.updated_at).into());
    if !map.contains_key("__isregistered") {
        put(map, "__isregistered", "true".into());
    }
    if !map.contains_key("virtual_env_type") {
        put(map, "virtual_env_type", "FusionCompute".into());
    }
    if let Some(d) = description {
        put(map, "__description", d.into());
    }
    // Key/value tags are shown as "key=value" Glance tags; IMS shows them as "key.value".
    if let Some(Value::Array(tags)) = map.get_mut("tags") {
        for tag in tags.iter_mut() {
            if let Some(s) = tag.as_str()
                && let Some((k, v)) = s.split_once('=')
            {
                *tag = format!("{k}.{v}").into();
            }
        }
    }
    body
}

/// Routes under `/v1`.
pub fn v1_router() -> Router<SharedState> {
    Router::new()
        .route("/", get(crate::versions::root))
        .route(
            "/cloudimages/members",
            post(sharing::batch_add_members)
                .put(sharing::batch_update_members)
                .delete(sharing::batch_delete_members),
        )
        .route(
            "/cloudimages/tags",
            put(sharing::create_or_update_tags).get(sharing::list_tags),
        )
        .route("/cloudimages/os_version", get(jobs::list_os_versions))
        .route("/cloudimages/quota", get(jobs::show_quota))
        .route("/cloudimages/job/{job_id}", get(jobs::show_job_progress))
        .route(
            "/cloudimages/dataimages/action",
            post(images::create_data_image),
        )
        .route(
            "/cloudimages/wholeimages/action",
            post(images::create_whole_image),
        )
        .route("/cloudimages/{image_id}/copy", post(images::copy_in_region))
        .route(
            "/cloudimages/{image_id}/cross_region_copy",
            post(images::copy_cross_region),
        )
        .route("/cloudimages/{image_id}/file", post(images::export_image))
        .route(
            "/cloudimages/{image_id}/upload",
            put(images::register_image),
        )
        .route("/{project_id}/jobs/{job_id}", get(jobs::show_job))
        .route(
            "/{project_id}/cloudimages/{image_id}/members",
            get(sharing::list_members),
        )
        .route(
            "/{project_id}/cloudimages/{image_id}/members/{member_id}",
            get(sharing::show_member),
        )
        .route(
            "/{project_id}/cloudimages/{image_id}/tags/delete",
            axum::routing::delete(sharing::batch_delete_tags),
        )
        .fallback(not_found)
}

/// IMS routes that live under `/v2` next to Glance's.
pub fn v2_routes(router: Router<SharedState>) -> Router<SharedState> {
    router
        .route("/cloudimages", get(images::list_images))
        .route("/cloudimages/export.csv", get(images::export_csv))
        .route("/cloudimages/action", post(images::create_image))
        .route(
            "/cloudimages/quickimport/action",
            post(images::import_quick),
        )
        .route("/cloudimages/{image_id}", patch(images::update_image))
        .route("/{project_id}/images/tags", get(sharing::list_project_tags))
        .route(
            "/{project_id}/images/resource_instances/action",
            post(sharing::list_by_tags),
        )
        .route(
            "/{project_id}/images/{image_id}/tags",
            get(sharing::list_image_tags).post(sharing::add_image_tag),
        )
        .route(
            "/{project_id}/images/{image_id}/tags/action",
            post(sharing::batch_tags),
        )
        .route(
            "/{project_id}/images/{image_id}/tags/{key}",
            axum::routing::delete(sharing::delete_image_tag),
        )
}

/// Routes under `/v2.1` (the "safe mode" twins: same bodies and answers).
pub fn v21_router() -> Router<SharedState> {
    Router::new()
        .route("/", get(crate::versions::root))
        .route("/cloudimages/action", post(images::create_image))
        .route(
            "/cloudimages/quickimport/action",
            post(images::import_quick),
        )
        .route(
            "/cloudimages/dataimages/action",
            post(images::create_data_image),
        )
        .route("/cloudimages/{image_id}/copy", post(images::copy_in_region))
        .route("/cloudimages/{image_id}/file", post(images::export_image))
        .fallback(not_found)
}

async fn not_found() -> ImsError {
    error(ErrorKind::NotFound, "The resource could not be found.")
}
