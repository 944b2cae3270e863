//! Interoperable import and tasks: `PUT /v2/images/{id}/stage`, `POST /v2/images/{id}/import`,
//! `GET /v2/images/{id}/tasks`, `GET /v2/tasks[/{id}]` and `/v2/info/import`, rendered as Glance
//! renders them (tasks are views over `ims-jobs` jobs).

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use futures::TryStreamExt;
use ims_core::config::ImportMethod;
use ims_core::images::parse_image_id;
use ims_core::import::{ImportRequest, RemoteImage};
use ims_domain::ErrorKind;
use ims_jobs::{Job, JobStatus};
use serde_json::{Value, json};

use crate::SharedState;
use crate::body::{content_type, read_json_object};
use crate::error::{ApiError, ApiResult};
use crate::json::{attr_value, glance_time};
use crate::middleware::{Authed, RequestId};

/// `GET /v2/info/import`.
pub async fn info_import(State(state): State<SharedState>) -> Json<Value> {
    let methods = state.app.imports.methods();
    Json(json!({"import-methods": {
        "description": "Import methods available.",
        "type": "array",
        "value": methods,
    }}))
}

fn declared_size(headers: &HeaderMap) -> ApiResult<Option<u64>> {
    match headers.get("x-openstack-image-size") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Some)
            .ok_or_else(|| {
                ApiError::invalid("x-openstack-image-size must be a non-negative integer")
            }),
    }
}

/// `PUT /v2/images/{id}/stage`.
pub async fn stage(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<StatusCode> {
    let id = parse_image_id(&id)?;
    if content_type(&headers).as_deref() != Some("application/octet-stream") {
        return Err(ApiError::new(
            ErrorKind::UnsupportedMediaType,
            "Image data must be sent as application/octet-stream.",
        ));
    }
    let declared = declared_size(&headers)?;
    let stream = body.into_data_stream().map_err(|e| e.to_string());
    state
        .app
        .imports
        .stage(&caller, id, stream, declared)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v2/images/{id}/import`: 202 with no body once the import job is queued.
pub async fn import(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Extension(request_id): Extension<RequestId>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<StatusCode> {
    let id = parse_image_id(&id)?;
    let store_header = crate::images::store_header(&headers)?;
    let map = read_json_object(&headers, body, state.app.config.limits.max_json_body).await?;
    let request = parse_import(&Value::Object(map), store_header)?;
    state
        .app
        .imports
        .import(&caller, id, request, Some(request_id.0))
        .await?;
    Ok(StatusCode::ACCEPTED)
}

/// The import body: `{"method": {"name": …, "uri": …}, "stores": […], "all_stores": …,
/// "all_stores_must_succeed": …}`; `store_header` is `X-Image-Meta-Store`, which may stand for
/// `stores` but not join it or `all_stores`.
fn parse_import(body: &Value, store_header: Option<String>) -> ApiResult<ImportRequest> {
    let method = body
        .get("method")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::invalid("The import request needs a 'method' object."))?;
    let name = method
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid("The import method needs a 'name'."))?;
    let method_kind = ImportMethod::parse(name)
        .ok_or_else(|| ApiError::invalid(format!("Unknown import method name '{name}'.")))?;
    let uri = match method.get("uri") {
        None | Some(Value::Null) => None,
        Some(Value::String(uri)) => Some(uri.clone()),
        Some(_) => return Err(ApiError::invalid("'uri' must be a string.")),
    };
    let remote = match method_kind {
        ImportMethod::GlanceDownload => Some(parse_remote(method)?),
        _ => None,
    };
    let flag = |key: &str, default: bool| match body.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::invalid(format!("'{key}' must be a boolean."))),
    };
    let all_stores = flag("all_stores", false)?;
    let all_stores_must_succeed = flag("all_stores_must_succeed", true)?;
    let mut stores = match body.get("stores") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|s| s.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ApiError::invalid("'stores' must be a list of store ids."))?,
        Some(_) => return Err(ApiError::invalid("'stores' must be a list of store ids.")),
    };
    if let Some(store) = store_header {
        if !stores.is_empty() {
            return Err(ApiError::invalid(
                "The X-Image-Meta-Store header and 'stores' cannot both be given.",
            ));
        }
        stores.push(store);
    }
    if all_stores && !stores.is_empty() {
        return Err(ApiError::invalid(
            "'all_stores' cannot be combined with 'stores' or X-Image-Meta-Store.",
        ));
    }
    Ok(ImportRequest {
        uri,
        remote,
        stores,
        all_stores,
        all_stores_must_succeed,
        ..ImportRequest::new(method_kind)
    })
}

/// The source image of `glance-download`: `glance_image_id` (a UUID), `glance_region` and
/// `glance_service_interface` (default `public`).
fn parse_remote(method: &serde_json::Map<String, Value>) -> ApiResult<RemoteImage> {
    let text = |key: &str| match method.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::invalid(format!("'{key}' must be a string."))),
    };
    let id = text("glance_image_id")?
        .ok_or_else(|| ApiError::invalid("glance-download needs 'glance_image_id'."))?;
    let image_id = uuid::Uuid::parse_str(&id).map_err(|_| {
        ApiError::invalid(format!("Remote image id does not look like a UUID: {id}"))
    })?;
    let region = text("glance_region")?
        .ok_or_else(|| ApiError::invalid("glance-download needs 'glance_region'."))?;
    let interface = text("glance_service_interface")?.unwrap_or_else(|| "public".to_owned());
    Ok(RemoteImage {
        image_id,
        region,
        interface,
    })
}

fn task_status(status: JobStatus) -> &'static str {
    match status {
        JobStatus::Queued => "pending",
        JobStatus::Running => "processing",
        JobStatus::Succeeded => "success",
        JobStatus::Failed => "failure",
    }
}

/// A job as Glance's task document.
fn task_json(job: &Job) -> Value {
    json!({
        "id": job.id.to_string(),
        "type": if job.kind == ims_core::locations::LOCATION_JOB_KIND {
            "location_import"
        } else {
            "api_image_import"
        },
        "status": task_status(job.status),
        "owner": job.project,
        "input": job.payload,
        "result": job.result,
        "message": job.fail_reason.clone().unwrap_or_default(),
        "image_id": job.image_id.map(|i| i.to_string()),
        "request_id": job.request_id,
        "user_id": job.user_id,
        "expires_at": job.expires_at.map(glance_time),
        "created_at": glance_time(job.created_at),
        "updated_at": glance_time(job.updated_at),
        "self": format!("/v2/tasks/{}", job.id),
        "schema": "/v2/schemas/task",
    })
}

/// `GET /v2/images/{id}/tasks`.
pub async fn image_tasks(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = parse_image_id(&id)?;
    let jobs = state.app.imports.image_tasks(&caller, id).await?;
    let tasks: Vec<Value> = jobs.iter().map(task_json).collect();
    Ok(Json(json!({ "tasks": tasks })))
}

/// `GET /v2/tasks`.
pub async fn list_tasks(
    State(state): State<SharedState>,
    Authed(caller): Authed,
) -> ApiResult<Json<Value>> {
    let jobs = state.app.imports.list_tasks(&caller).await?;
    let tasks: Vec<Value> = jobs
        .iter()
        .map(|job| {
            // The list shows the summary Glance shows: no input, result or message.
            let mut task = task_json(job);
            if let Some(map) = task.as_object_mut() {
                for detail in ["input", "result", "message"] {
                    map.remove(detail);
                }
            }
            task
        })
        .collect();
    Ok(Json(
        json!({"tasks": tasks, "first": "/v2/tasks", "schema": "/v2/schemas/tasks"}),
    ))
}

/// `POST /v2/tasks` (the legacy `import` task): validates the input, refuses a URL the import
/// policy refuses (400, as Glance does since bug 2152110), creates the image from
/// `image_properties` and runs a web-download import into it. 201 with the task.
pub async fn create_task(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let map = read_json_object(&headers, body, state.app.config.limits.max_json_body).await?;
    if map.get("type").and_then(Value::as_str) != Some("import") {
        return Err(ApiError::invalid("Task type must be 'import'."));
    }
    let input = map
        .get("input")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::invalid("Task input must be an object."))?;
    let uri = input
        .get("import_from")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid("Task input needs 'import_from'."))?;
    let properties = match input.get("image_properties") {
        None => serde_json::Map::new(),
        Some(Value::Object(p)) => p.clone(),
        Some(_) => return Err(ApiError::invalid("'image_properties' must be an object.")),
    };
    state.app.imports.check_source(uri).await?;
    let attrs: Vec<(String, _)> = properties
        .iter()
        .map(|(k, v)| (k.clone(), attr_value(v)))
        .collect();
    let image = state.app.images.create(&caller, &attrs).await?;
    let request = ImportRequest {
        uri: Some(uri.to_owned()),
        ..ImportRequest::new(ImportMethod::WebDownload)
    };
    let job = state
        .app
        .imports
        .import(&caller, image.id, request, Some(request_id.0))
        .await?
        .ok_or_else(|| ApiError::new(ErrorKind::Internal, "The import started no task."))?;
    Ok((StatusCode::CREATED, Json(task_json(&job))))
}

/// `GET /v2/tasks/{id}`.
pub async fn show_task(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = uuid::Uuid::parse_str(&id)
        .map_err(|_| ApiError::new(ErrorKind::NotFound, format!("Task {id} not found")))?;
    let job = state.app.imports.get_task(&caller, id).await?;
    Ok(Json(task_json(&job)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_bodies() {
        let ok = parse_import(&json!({"method": {"name": "glance-direct"}}), None).unwrap();
        assert_eq!(ok.method, ImportMethod::GlanceDirect);
        assert!(ok.stores.is_empty() && !ok.all_stores && ok.all_stores_must_succeed);
        let web = parse_import(
            &json!({"method": {"name": "web-download", "uri": "http://x/"}}),
            None,
        )
        .unwrap();
        assert_eq!(web.uri.as_deref(), Some("http://x/"));
        let copy = parse_import(
            &json!({"method": {"name": "copy-image"}, "all_stores": true,
                    "all_stores_must_succeed": false}),
            None,
        )
        .unwrap();
        assert!(copy.all_stores && !copy.all_stores_must_succeed);
        let header = parse_import(
            &json!({"method": {"name": "glance-direct"}}),
            Some("fs2".into()),
        )
        .unwrap();
        assert_eq!(header.stores, ["fs2"]);
        for bad in [
            json!({}),
            json!({"method": "glance-direct"}),
            json!({"method": {"name": "bogus"}}),
            json!({"method": {"name": "web-download", "uri": 5}}),
            json!({"method": {"name": "glance-direct"}, "all_stores": "yes"}),
            json!({"method": {"name": "glance-direct"}, "all_stores_must_succeed": 1}),
            json!({"method": {"name": "glance-direct"}, "stores": "fs"}),
            json!({"method": {"name": "glance-direct"}, "stores": [1]}),
            json!({"method": {"name": "glance-direct"}, "stores": ["a"], "all_stores": true}),
        ] {
            assert!(parse_import(&bad, None).is_err(), "{bad}");
        }
        let remote = parse_import(
            &json!({"method": {"name": "glance-download", "glance_region": "R",
                    "glance_image_id": "36d4b546-64a2-4bb9-bdd0-ba676aa48f2c"}}),
            None,
        )
        .unwrap()
        .remote
        .unwrap();
        assert_eq!(
            (remote.region.as_str(), remote.interface.as_str()),
            ("R", "public")
        );
        let bad_uuid = parse_import(
            &json!({"method": {"name": "glance-download", "glance_region": "R",
                    "glance_image_id": "foo"}}),
            None,
        )
        .unwrap_err();
        assert!(
            bad_uuid
                .message
                .contains("image id does not look like a UUID")
        );
        let no_region = json!({"method": {"name": "glance-download",
                               "glance_image_id": "36d4b546-64a2-4bb9-bdd0-ba676aa48f2c"}});
        assert!(parse_import(&no_region, None).is_err());
        let both = json!({"method": {"name": "glance-direct"}, "stores": ["a"]});
        assert!(parse_import(&both, Some("b".into())).is_err());
        let with_all = json!({"method": {"name": "glance-direct"}, "all_stores": true});
        assert!(parse_import(&with_all, Some("b".into())).is_err());
    }

    #[test]
    fn every_job_status_has_a_task_status() {
        let names: Vec<_> = JobStatus::ALL.into_iter().map(task_status).collect();
        assert_eq!(names, ["pending", "processing", "success", "failure"]);
    }
}
