//! `/v2/images` handlers: parse, call the image service, render Glance's answer.

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use ims_core::images::parse_image_id;
use ims_core::locations::{
    HASH_ALGOS, LocationPatch, LocationValue, MAX_LOCATION_URL, ValidationData,
};
use ims_core::patch::{PatchDialect, PatchKind, PatchOp};
use ims_core::upload::{EXPECTED_MD5_HEADER, EXPECTED_SHA512_HEADER, ExpectedHashes};
use ims_domain::ErrorKind;
use serde_json::{Value, json};

use crate::SharedState;
use crate::body::{content_type, read_json, read_json_object};
use crate::error::{ApiError, ApiResult};
use crate::json::{ImageBody, attr_value, glance_image_json};
use crate::list::{page_links, parse_list_query};
use crate::middleware::{Authed, RequestId};

const PATCH_V20: &str = "application/openstack-images-v2.0-json-patch";
const PATCH_V21: &str = "application/openstack-images-v2.1-json-patch";

pub async fn empty_id() -> ApiError {
    ApiError::new(ErrorKind::NotFound, "No image found with ID ''")
}

/// One page of `GET /v2/images`.
#[derive(serde::Serialize)]
pub struct ImageList<'a> {
    images: Vec<ImageBody<'a>>,
    first: String,
    schema: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

pub async fn list(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let query = parse_list_query(raw.as_deref())?;
    let limit = query.limit;
    let images = state.app.images.list(&caller, query).await?;
    let (first, next) = page_links(
        raw.as_deref(),
        images.len(),
        limit,
        images.last().map(|i| i.id),
    );
    let body = ImageList {
        images: images
            .iter()
            .map(|image| ImageBody {
                image,
                view: state.image_view(),
            })
            .collect(),
        first,
        schema: "/v2/schemas/images",
        next,
    };
    Ok(Json(body).into_response())
}

pub async fn create(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let map = read_json_object(&headers, body, state.app.config.limits.max_json_body).await?;
    let attrs: Vec<(String, _)> = map
        .iter()
        .map(|(k, v)| (k.clone(), attr_value(v)))
        .collect();
    let mut image = state.app.images.create(&caller, &attrs).await?;
    // Huawei's Glance dialect (`glance_create_image_metadata`): an image declaring
    // `__os_version` gets the IMS attributes that follow from it.
    if map.contains_key("__os_version") {
        image = state.app.cloud_images.complete_glance_image(&image).await?;
    }
    let location = format!("{}/v2/images/{}", state.public_url, image.id);
    let mut response = (
        StatusCode::CREATED,
        Json(glance_image_json(&image, state.image_view())),
    )
        .into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, v);
    }
    let methods = state.app.imports.methods().join(",");
    if let Ok(v) = HeaderValue::from_str(&methods) {
        headers.insert("openstack-image-import-methods", v);
    }
    let stores = state.app.images.stores();
    if stores.is_multi() {
        let ids: Vec<&str> = stores.writable().map(|s| s.id.as_str()).collect();
        if let Ok(v) = HeaderValue::from_str(&ids.join(",")) {
            headers.insert("openstack-image-store-ids", v);
        }
    }
    Ok(response)
}

pub async fn show(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let image = state.app.images.get(&caller, parse_image_id(&id)?).await?;
    Ok(Json(glance_image_json(&image, state.image_view())))
}

/// Unescapes a JSON pointer with exactly one segment (`/name`, `/a~1b`).
fn pointer_attr(path: &str) -> ApiResult<String> {
    let invalid = || ApiError::invalid(format!("Invalid JSON pointer for this resource: '{path}'"));
    let rest = path.strip_prefix('/').ok_or_else(invalid)?;
    if rest.is_empty() || rest.contains('/') {
        return Err(invalid());
    }
    if rest.replace("~0", "").replace("~1", "").contains('~') {
        return Err(invalid());
    }
    Ok(rest.replace("~1", "/").replace("~0", "~"))
}

fn schema_error(what: impl std::fmt::Display) -> ApiError {
    ApiError::invalid(format!(
        "Provided object does not match schema 'image': {what}"
    ))
}

/// An op on `/locations` (replace, depth 1) or `/locations/<n|->` (add and remove, depth 2),
/// with its value checked against the `locations` item schema; `None` for other paths.
fn location_op(
    kind: PatchKind,
    path: &str,
    value: Option<&Value>,
) -> ApiResult<Option<LocationPatch>> {
    let Some(rest) = path.strip_prefix("/locations") else {
        return Ok(None);
    };
    let position = match (rest.strip_prefix('/'), rest.is_empty()) {
        (None, true) => None,
        (Some(segment), _) if !segment.contains('/') => Some(segment.to_owned()),
        _ => return Ok(None),
    };
    let invalid = || ApiError::invalid(format!("Invalid JSON pointer for this resource: '{path}'"));
    let values = match (kind, &position) {
        (PatchKind::Replace, None) => {
            let Some(Value::Array(items)) = value else {
                return Err(schema_error("'locations' must be an array"));
            };
            items
                .iter()
                .map(location_value)
                .collect::<ApiResult<Vec<_>>>()?
        }
        (PatchKind::Add, Some(_)) => vec![location_value(value.unwrap_or(&Value::Null))?],
        (PatchKind::Remove, Some(_)) => Vec::new(),
        _ => return Err(invalid()),
    };
    Ok(Some(LocationPatch { position, values }))
}

/// One item of `locations`: `url` (≤ 255), `metadata` (an object), optional
/// `validation_data` (`checksum` of 32, `os_hash_algo` ≤ 64 and `os_hash_value` ≤ 128, the
/// last two required; nothing else).
fn location_value(value: &Value) -> ApiResult<LocationValue> {
    let Value::Object(obj) = value else {
        return Err(schema_error("a location must be an object"));
    };
    let url = match obj.get("url") {
        Some(Value::String(url)) if url.chars().count() <= MAX_LOCATION_URL => url.clone(),
        Some(Value::String(_)) => {
            return Err(schema_error(format!(
                "'url' is longer than {MAX_LOCATION_URL} characters"
            )));
        }
        _ => return Err(schema_error("'url' is a required string")),
    };
    let metadata = match obj.get("metadata") {
        Some(Value::Object(m)) => m.clone(),
        _ => return Err(schema_error("'metadata' is a required object")),
    };
    let validation = match obj.get("validation_data") {
        None => None,
        Some(Value::Object(v)) => {
            let text = |key: &str, min: usize, max: usize| -> ApiResult<Option<String>> {
                match v.get(key) {
                    None => Ok(None),
                    Some(Value::String(s)) if (min..=max).contains(&s.chars().count()) => {
                        Ok(Some(s.clone()))
                    }
                    Some(_) => Err(schema_error(format!(
                        "'{key}' must be a string of {min} to {max} characters"
                    ))),
                }
            };
            if let Some(key) = v
                .keys()
                .find(|k| !["checksum", "os_hash_algo", "os_hash_value"].contains(&k.as_str()))
            {
                return Err(schema_error(format!(
                    "Additional properties are not allowed ('{key}' was unexpected)"
                )));
            }
            let data = ValidationData {
                checksum: text("checksum", 32, 32)?,
                os_hash_algo: text("os_hash_algo", 0, 64)?,
                os_hash_value: text("os_hash_value", 0, 128)?,
            };
            if data.os_hash_algo.is_none() || data.os_hash_value.is_none() {
                return Err(schema_error(
                    "'os_hash_algo' and 'os_hash_value' are required properties",
                ));
            }
            Some(data)
        }
        Some(_) => return Err(schema_error("'validation_data' must be an object")),
    };
    Ok(LocationValue {
        url,
        metadata,
        validation,
    })
}

pub(crate) fn parse_patch(doc: Value, dialect: PatchDialect) -> ApiResult<Vec<PatchOp>> {
    let Value::Array(items) = doc else {
        return Err(ApiError::invalid(
            "Request body must be a JSON array of operation objects.",
        ));
    };
    items
        .into_iter()
        .map(|item| {
            let Value::Object(obj) = item else {
                return Err(ApiError::invalid("Operations must be JSON objects."));
            };
            let kind_of = |s: &str| match s {
                "add" => Some(PatchKind::Add),
                "replace" => Some(PatchKind::Replace),
                "remove" => Some(PatchKind::Remove),
                _ => None,
            };
            let (kind, path) = match dialect {
                PatchDialect::V2_1 => {
                    let op = obj.get("op").and_then(Value::as_str).ok_or_else(|| ApiError::invalid("Operation objects must contain 'op'."))?;
                    let kind = kind_of(op).ok_or_else(|| ApiError::invalid(format!("Invalid operation: '{op}'")))?;
                    let path = obj.get("path").and_then(Value::as_str).ok_or_else(|| ApiError::invalid("Operation objects must contain 'path'."))?;
                    (kind, path.to_string())
                }
                PatchDialect::V2_0 => {
                    let found: Vec<_> = ["add", "replace", "remove"].into_iter().filter(|k| obj.contains_key(*k)).collect();
                    let [op] = found.as_slice() else {
                        return Err(ApiError::invalid("Operation objects must contain exactly one of 'add', 'remove', or 'replace'."));
                    };
                    let path = obj[*op].as_str().ok_or_else(|| ApiError::invalid("The operation's path must be a string."))?;
                    (kind_of(op).expect("listed op"), path.to_string())
                }
            };
            let raw = obj.get("value");
            if kind != PatchKind::Remove && raw.is_none() {
                return Err(ApiError::invalid(format!("Operation '{path}' requires a member named 'value'.")));
            }
            if let Some(location) = location_op(kind, &path, raw)? {
                return Ok(PatchOp { kind, attr: "locations".into(), value: None, location: Some(location) });
            }
            Ok(PatchOp { kind, attr: pointer_attr(&path)?, value: raw.map(attr_value), location: None })
        })
        .collect()
}

pub async fn update(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    let dialect = match content_type(&headers).as_deref() {
        Some(PATCH_V21) => PatchDialect::V2_1,
        Some(PATCH_V20) => PatchDialect::V2_0,
        other => {
            return Err(ApiError::new(
                ErrorKind::UnsupportedMediaType,
                format!("Unsupported Content-Type {}", other.unwrap_or("(none)")),
            )
            .with_header(
                header::HeaderName::from_static("accept-patch"),
                format!("{PATCH_V20}, {PATCH_V21}"),
            ));
        }
    };
    let id = parse_image_id(&id)?;
    let doc = read_json(
        &headers,
        body,
        state.app.config.limits.max_json_body,
        &[PATCH_V20, PATCH_V21],
    )
    .await?;
    let ops = parse_patch(doc, dialect)?;
    let image = state.app.images.update(&caller, id, &ops, dialect).await?;
    Ok(Json(glance_image_json(&image, state.image_view())))
}

pub async fn delete(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state
        .app
        .images
        .delete(&caller, parse_image_id(&id)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn deactivate(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state
        .app
        .images
        .set_active(&caller, parse_image_id(&id)?, false)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn reactivate(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state
        .app
        .images
        .set_active(&caller, parse_image_id(&id)?, true)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn add_tag(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path((id, tag)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    state
        .app
        .images
        .add_tag(&caller, parse_image_id(&id)?, &tag)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn delete_tag(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path((id, tag)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    state
        .app
        .images
        .delete_tag(&caller, parse_image_id(&id)?, &tag)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn upload(
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
    let declared = match headers.get("x-openstack-image-size") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::invalid("x-openstack-image-size must be a non-negative integer")
                })?,
        ),
    };
    let store = store_header(&headers)?;
    // Checksums the sender computed (Glance v1's `x-image-meta-checksum`, and the SHA-512
    // `os_hash_value`): data that does not match is refused (a cross-region copy sends both).
    let header_text = |name: &str| -> ApiResult<Option<String>> {
        let Some(value) = headers.get(name) else {
            return Ok(None);
        };
        let text = value.to_str().unwrap_or("").trim();
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApiError::invalid(format!("{name} must be a hex digest")));
        }
        Ok(Some(text.to_string()))
    };
    let expected = ExpectedHashes {
        md5: header_text(EXPECTED_MD5_HEADER)?,
        sha512: header_text(EXPECTED_SHA512_HEADER)?,
    };
    let stream = body.into_data_stream();
    state
        .app
        .images
        .upload_verified(&caller, id, stream, declared, store.as_deref(), &expected)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The store a client chose with `X-Image-Meta-Store`, if any.
pub(crate) fn store_header(headers: &HeaderMap) -> ApiResult<Option<String>> {
    match headers.get("x-image-meta-store") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .map(|s| Some(s.trim().to_owned()))
            .ok_or_else(|| ApiError::invalid("X-Image-Meta-Store must be a store id")),
    }
}

/// `DELETE /v2/stores/{store}/{id}`: 204 once the store no longer holds the image's data.
pub async fn delete_from_store(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path((store, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    state
        .app
        .images
        .delete_from_store(&caller, &store, parse_image_id(&id)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A satisfiable `Range: bytes=…` against `size`, as an exclusive range; `Err` → 416.
fn parse_range(value: &str, size: u64) -> Result<std::ops::Range<u64>, ()> {
    let spec = value.trim().strip_prefix("bytes=").ok_or(())?;
    if spec.contains(',') {
        return Err(());
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (start, end_inclusive) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().map_err(|_| ())?;
            if n == 0 || size == 0 {
                return Err(());
            }
            (size.saturating_sub(n), size - 1)
        }
        (s, "") => (s.parse().map_err(|_| ())?, size.checked_sub(1).ok_or(())?),
        (s, e) => {
            let (s, e): (u64, u64) = (s.parse().map_err(|_| ())?, e.parse().map_err(|_| ())?);
            (s, e.min(size.saturating_sub(1)))
        }
    };
    if start >= size || start > end_inclusive {
        return Err(());
    }
    Ok(start..end_inclusive + 1)
}

pub async fn download(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let download = state
        .app
        .images
        .download(&caller, parse_image_id(&id)?)
        .await?;
    if download.image.size().is_none() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let checksum = match (&download.image.data, &download.image.location_data) {
        (Some(data), _) => Some(data.checksum.clone()),
        (None, Some(external)) => external.checksum.clone(),
        (None, None) => None,
    };
    let size = download.size;
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => None,
        Some(value) => Some(parse_range(value, size).map_err(|()| {
            let mut e = ApiError::invalid(format!(
                "Requested range {value} not satisfiable for {size} bytes"
            ))
            .with_header(header::CONTENT_RANGE, format!("bytes */{size}"));
            e.status = Some(StatusCode::RANGE_NOT_SATISFIABLE);
            e
        })?),
    };
    let stream = state.app.images.open_data(&download, range.clone()).await?;
    let body = Body::from_stream(stream.map_err(|e| std::io::Error::other(e.to_string())));
    let mut response = Response::new(body);
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    match range {
        Some(r) => {
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            let h = response.headers_mut();
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(r.end - r.start));
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {}-{}/{size}", r.start, r.end - 1))
            {
                h.insert(header::CONTENT_RANGE, v);
            }
        }
        None => {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
            if let Some(v) = checksum.and_then(|c| HeaderValue::from_str(&c).ok()) {
                h.insert("content-md5", v);
            }
        }
    }
    Ok(response)
}

/// `GET /v2/images/{id}/locations` (v2.17; admin): `[{"url", "metadata"}]`.
pub async fn list_locations(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let locations = state
        .app
        .locations
        .list(&caller, parse_image_id(&id)?)
        .await?;
    let shown: Vec<Value> = locations
        .into_iter()
        .map(|(url, metadata)| json!({"url": url, "metadata": metadata}))
        .collect();
    Ok(Json(Value::Array(shown)))
}

/// `POST /v2/images/{id}/locations` (v2.17) `{"url", "validation_data": {"os_hash_algo",
/// "os_hash_value"}}`: 202 once the `location_import` task is submitted.
pub async fn add_location(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Extension(request_id): Extension<RequestId>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<StatusCode> {
    let id = parse_image_id(&id)?;
    let map = read_json_object(&headers, body, state.app.config.limits.max_json_body).await?;
    let invalid = |what: &str| {
        ApiError::invalid(format!(
            "Provided object does not match schema 'add_location': {what}"
        ))
    };
    let url = match map.get("url") {
        Some(Value::String(url)) => url.clone(),
        _ => return Err(invalid("'url' is a required string")),
    };
    let validation = match map.get("validation_data") {
        None | Some(Value::Null) => ValidationData::default(),
        Some(Value::Object(v)) => {
            if let Some(key) = v
                .keys()
                .find(|k| !["os_hash_algo", "os_hash_value"].contains(&k.as_str()))
            {
                return Err(invalid(&format!(
                    "Additional properties are not allowed ('{key}' was unexpected)"
                )));
            }
            let text = |key: &str| -> ApiResult<Option<String>> {
                match v.get(key) {
                    None => Ok(None),
                    Some(Value::String(s)) if s.chars().count() <= 128 => Ok(Some(s.clone())),
                    Some(_) => Err(invalid(&format!("'{key}' must be a string"))),
                }
            };
            let data = ValidationData {
                checksum: None,
                os_hash_algo: text("os_hash_algo")?,
                os_hash_value: text("os_hash_value")?,
            };
            if let Some(algo) = &data.os_hash_algo
                && !HASH_ALGOS.contains(&algo.as_str())
            {
                return Err(invalid(&format!("'{algo}' is not one of {HASH_ALGOS:?}")));
            }
            if data.os_hash_algo.is_some() != data.os_hash_value.is_some() {
                return Err(invalid(
                    "'os_hash_algo' and 'os_hash_value' depend on each other",
                ));
            }
            data
        }
        Some(_) => return Err(invalid("'validation_data' must be an object")),
    };
    state
        .app
        .locations
        .add(&caller, id, &url, &validation, Some(request_id.0))
        .await?;
    Ok(StatusCode::ACCEPTED)
}

/// `GET /v2/info/usage`: each of Glance's four limits of the caller's project with its usage
/// (sizes in MiB), as Glance reports them with unified limits.
pub async fn usage(
    State(state): State<SharedState>,
    Authed(caller): Authed,
) -> ApiResult<Json<Value>> {
    let usage = state.app.images.quota_usage(&caller.project_id).await?;
    let entries: serde_json::Map<String, Value> = usage
        .iter()
        .map(|u| {
            (
                u.resource.as_str().to_owned(),
                json!({"limit": u.limit.to_signed(), "usage": u.usage}),
            )
        })
        .collect();
    Ok(Json(json!({ "usage": entries })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Ok(0..10));
        assert_eq!(parse_range("bytes=90-", 100), Ok(90..100));
        assert_eq!(parse_range("bytes=-10", 100), Ok(90..100));
        assert_eq!(parse_range("bytes=95-200", 100), Ok(95..100));
        for bad in [
            "bytes=100-",
            "bytes=5-1",
            "bytes=-0",
            "items=0-1",
            "bytes=0-1,3-4",
            "bytes=a-b",
        ] {
            assert_eq!(parse_range(bad, 100), Err(()), "{bad}");
        }
    }

    #[test]
    fn pointers() {
        assert_eq!(pointer_attr("/name").unwrap(), "name");
        assert_eq!(pointer_attr("/a~1b~0c").unwrap(), "a/b~c");
        for bad in ["name", "/", "/a/b", "/a~2"] {
            assert!(pointer_attr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn patch_dialects() {
        let v21 = json!([{"op": "replace", "path": "/name", "value": "x"}, {"op": "remove", "path": "/foo"}]);
        let ops = parse_patch(v21, PatchDialect::V2_1).unwrap();
        assert_eq!(ops[0].kind, PatchKind::Replace);
        assert_eq!(ops[1].kind, PatchKind::Remove);
        let v20 = json!([{"replace": "/name", "value": "x"}]);
        assert_eq!(
            parse_patch(v20, PatchDialect::V2_0).unwrap()[0].attr,
            "name"
        );
        for bad in [
            json!({}),
            json!([1]),
            json!([{"op": "move", "path": "/a"}]),
            json!([{"op": "add", "path": "/a"}]),
        ] {
            assert!(
                parse_patch(bad.clone(), PatchDialect::V2_1).is_err(),
                "{bad}"
            );
        }
    }
}
