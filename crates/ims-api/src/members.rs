//! `/v2/images/{id}/members` handlers.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use ims_core::images::parse_image_id;
use ims_domain::MemberStatus;
use serde_json::{Value, json};

use crate::SharedState;
use crate::body::read_json_object;
use crate::error::{ApiError, ApiResult};
use crate::json::member_json;
use crate::middleware::Authed;

pub async fn list(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let members = state
        .app
        .images
        .list_members(&caller, parse_image_id(&id)?)
        .await?;
    Ok(Json(
        json!({"members": members.iter().map(member_json).collect::<Vec<_>>(), "schema": "/v2/schemas/members"}),
    ))
}

pub async fn create(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    let id = parse_image_id(&id)?;
    let map = read_json_object(&headers, body, state.app.config.limits.max_json_body).await?;
    let member_id = map
        .get("member")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid("Member to be added not specified"))?;
    let member = state.app.images.add_member(&caller, id, member_id).await?;
    Ok(Json(member_json(&member)))
}

pub async fn show(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path((id, member)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let member = state
        .app
        .images
        .get_member(&caller, parse_image_id(&id)?, &member)
        .await?;
    Ok(Json(member_json(&member)))
}

pub async fn update(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path((id, member)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    let id = parse_image_id(&id)?;
    let map = read_json_object(&headers, body, state.app.config.limits.max_json_body).await?;
    let status = map
        .get("status")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid("Status not specified"))?;
    let status = MemberStatus::parse(status)
        .ok_or_else(|| ApiError::invalid(format!("Invalid status: {status}")))?;
    let member = state
        .app
        .images
        .update_member(&caller, id, &member, status)
        .await?;
    Ok(Json(member_json(&member)))
}

pub async fn delete(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path((id, member)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    state
        .app
        .images
        .delete_member(&caller, parse_image_id(&id)?, &member)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
