//! Access keys over HTTP, in Huawei IAM's shape (`/identity/v3.0/OS-CREDENTIAL/credentials`):
//! a user creates, lists and deletes their own keys with a token; admins may name any user.
//! The secret is in the create answer only.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use ims_core::access_keys::AccessKey;
use ims_domain::{Caller, ErrorKind};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::SharedState;
use crate::error::{ApiError, ApiResult};
use crate::json::glance_time;
use crate::middleware::Authed;

fn key_json(key: &AccessKey) -> Value {
    json!({
        "access": key.access_key,
        "user_id": key.user_id,
        "description": key.description.clone().unwrap_or_default(),
        "create_time": glance_time(key.created_at),
        "status": "active",
    })
}

/// The user a request acts for: the caller, or (admins only) the named one.
fn acting_user(caller: &Caller, named: Option<&str>) -> ApiResult<String> {
    match named {
        Some(user) if user != caller.user_id && !caller.is_admin() => Err(ApiError::new(
            ErrorKind::Forbidden,
            "Only admins may manage another user's access keys.",
        )
        .keystone()),
        Some(user) => Ok(user.to_string()),
        None => Ok(caller.user_id.clone()),
    }
}

#[derive(Deserialize)]
struct CreateBody {
    credential: CreateCredential,
}

#[derive(Deserialize)]
struct CreateCredential {
    user_id: Option<String>,
    description: Option<String>,
}

pub async fn create(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    body: Bytes,
) -> ApiResult<Response> {
    let body: CreateBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("Malformed credential request: {e}")).keystone())?;
    let user = acting_user(&caller, body.credential.user_id.as_deref())?;
    let created = state
        .app
        .access_keys
        .create(&user, body.credential.description.as_deref())
        .await
        .map_err(|e| ApiError::from(e).keystone())?;
    let mut credential = key_json(&created.key);
    credential["secret"] = created.secret.into();
    Ok((
        StatusCode::CREATED,
        Json(json!({ "credential": credential })),
    )
        .into_response())
}

#[derive(Deserialize)]
pub struct ListQuery {
    user_id: Option<String>,
}

pub async fn list(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Query(query): Query<ListQuery>,
) -> ApiResult<Response> {
    let user = acting_user(&caller, query.user_id.as_deref())?;
    let keys = state
        .app
        .access_keys
        .list(&user)
        .await
        .map_err(|e| ApiError::from(e).keystone())?;
    let credentials: Vec<Value> = keys.iter().map(key_json).collect();
    Ok(Json(json!({ "credentials": credentials })).into_response())
}

pub async fn delete(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path(access_key): Path<String>,
) -> ApiResult<StatusCode> {
    let owner = (!caller.is_admin()).then_some(caller.user_id.as_str());
    state
        .app
        .access_keys
        .delete(owner, &access_key)
        .await
        .map_err(|e| ApiError::from(e).keystone())?;
    Ok(StatusCode::NO_CONTENT)
}
