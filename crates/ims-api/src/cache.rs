//! `/v2/cache` (Glance API 2.14): list, queue, delete and clear this node's image cache.
//! Without `[cache] enabled` the routes answer 404, as Glance does without its cache middleware.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use ims_core::cache::{CacheService, ClearTarget};
use ims_domain::ErrorKind;
use serde_json::{Value, json};

use crate::SharedState;
use crate::error::{ApiError, ApiResult};
use crate::middleware::Authed;

/// The header `DELETE /v2/cache` reads its target from.
const CLEAR_TARGET_HEADER: &str = "x-image-cache-clear-target";

fn service(state: &SharedState) -> ApiResult<&CacheService> {
    state.app.cache.as_deref().ok_or_else(|| {
        ApiError::new(
            ErrorKind::NotFound,
            "Image cache is not enabled on this node.",
        )
    })
}

/// Glance's cache timestamps are Unix seconds as floats.
fn unix(t: time::OffsetDateTime) -> f64 {
    t.unix_timestamp() as f64
}

pub async fn list(
    State(state): State<SharedState>,
    Authed(caller): Authed,
) -> ApiResult<Json<Value>> {
    let listing = service(&state)?.list(&caller).await?;
    let cached: Vec<Value> = listing
        .cached
        .iter()
        .map(|c| {
            json!({
                "image_id": c.image_id.to_string(),
                "hits": c.hits,
                "last_accessed": unix(c.last_accessed),
                "last_modified": unix(c.last_modified),
                "size": c.size,
            })
        })
        .collect();
    let queued: Vec<String> = listing.queued.iter().map(|id| id.to_string()).collect();
    Ok(Json(
        json!({"cached_images": cached, "queued_images": queued}),
    ))
}

pub async fn queue(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    service(&state)?.queue(&caller, &id).await?;
    Ok(StatusCode::ACCEPTED)
}

pub async fn delete(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    service(&state)?.delete(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn clear(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let service = service(&state)?;
    let target = match headers.get(CLEAR_TARGET_HEADER) {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| {
            ApiError::invalid(format!(
                "{CLEAR_TARGET_HEADER} must be 'cache', 'queue' or empty"
            ))
        })?),
    };
    let target = ClearTarget::parse(target)?;
    service.clear(&caller, target).await?;
    Ok(StatusCode::NO_CONTENT)
}
