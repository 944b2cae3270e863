//! Version discovery, health, schemas and the `/v2/info` documents.

use std::sync::LazyLock;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ims_domain::ErrorKind;
use serde_json::{Value, json};

use crate::SharedState;
use crate::error::{ApiError, ApiResult};
use crate::middleware::Authed;

/// API versions this server implements, newest first; the first is CURRENT. `2.14` (the cache
/// API) is advertised only by a node whose cache is enabled.
const VERSIONS: &[&str] = &[
    "2.17", "2.15", "2.14", "2.13", "2.12", "2.11", "2.10", "2.9", "2.8", "2.7", "2.6", "2.5",
    "2.4", "2.3", "2.2", "2.1", "2.0",
];

static SCHEMAS: LazyLock<Value> = LazyLock::new(|| {
    serde_json::from_str(include_str!("schemas/glance-schemas.json"))
        .expect("embedded schemas are JSON")
});

fn versions_doc(public_url: &str, cache_enabled: bool) -> Value {
    let values: Vec<Value> = VERSIONS
        .iter()
        .filter(|v| cache_enabled || **v != "2.14")
        .enumerate()
        .map(|(i, v)| {
            json!({
                "id": format!("v{v}"),
                "status": if i == 0 { "CURRENT" } else { "SUPPORTED" },
                "links": [{"rel": "self", "href": format!("{public_url}/v2/")}],
            })
        })
        .collect();
    json!({ "versions": values })
}

/// `GET /`: 300 Multiple Choices, as Glance answers.
pub async fn root(State(state): State<SharedState>) -> Response {
    (
        StatusCode::MULTIPLE_CHOICES,
        Json(versions_doc(&state.public_url, state.app.cache.is_some())),
    )
        .into_response()
}

/// `GET /versions`: the same document with 200 (glanceclient expects it).
pub async fn versions(State(state): State<SharedState>) -> Response {
    Json(versions_doc(&state.public_url, state.app.cache.is_some())).into_response()
}

/// Any path outside the known APIs: the versions document, as Glance's version negotiation does.
pub async fn unknown_version(State(state): State<SharedState>) -> Response {
    root(State(state)).await
}

pub async fn v2_not_found() -> ApiError {
    ApiError::new(ErrorKind::NotFound, "The resource could not be found.")
}

pub async fn healthcheck() -> &'static str {
    "OK"
}

fn schema_named(key: &str) -> ApiResult<Json<Value>> {
    SCHEMAS
        .get(key)
        .cloned()
        .map(Json)
        .ok_or_else(|| ApiError::new(ErrorKind::NotFound, format!("No schema named {key}")))
}

pub async fn schema(Path(name): Path<String>) -> ApiResult<Json<Value>> {
    match name.as_str() {
        "image" | "images" | "member" | "members" | "task" | "tasks" => schema_named(&name),
        _ => Err(ApiError::new(
            ErrorKind::NotFound,
            format!("No schema named {name}"),
        )),
    }
}

pub async fn metadef_schema(Path(name): Path<String>) -> ApiResult<Json<Value>> {
    match name.as_str() {
        "namespace" | "namespaces" | "resource_type" | "resource_types" | "property"
        | "properties" | "object" | "objects" | "tag" | "tags" => {
            schema_named(&format!("metadef_{name}"))
        }
        _ => Err(ApiError::new(
            ErrorKind::NotFound,
            format!("No schema named metadefs/{name}"),
        )),
    }
}

/// The stores as `/v2/info/stores` lists them, highest weight first; `detail` adds what admins
/// see (driver type and settings). 404 on a single-store node, as in Glance.
fn stores_doc(state: &SharedState, detail: bool) -> ApiResult<Value> {
    let stores = state.app.images.stores();
    if !stores.is_multi() {
        return Err(ApiError::new(
            ErrorKind::NotFound,
            "Multi backend is not supported at this site.",
        ));
    }
    let default_id = &stores.default_store().id;
    let list: Vec<Value> = stores
        .all()
        .iter()
        .map(|store| {
            let mut entry = serde_json::Map::new();
            entry.insert("id".into(), json!(store.id));
            entry.insert(
                "description".into(),
                json!(store.description.clone().unwrap_or_default()),
            );
            if &store.id == default_id {
                entry.insert("default".into(), json!("true"));
            }
            if store.read_only {
                entry.insert("read-only".into(), json!("true"));
            }
            entry.insert("weight".into(), json!(store.weight));
            if detail {
                entry.insert("type".into(), json!(store.driver));
                let properties: serde_json::Map<String, Value> = store
                    .properties
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), json!(v)))
                    .collect();
                entry.insert("properties".into(), Value::Object(properties));
            }
            Value::Object(entry)
        })
        .collect();
    let mut list = list;
    // Glance's read-only `http` store (`web:http`): listed, never written.
    if let Some(http) = stores.http() {
        let mut entry = serde_json::Map::new();
        entry.insert("id".into(), json!(http.id));
        entry.insert(
            "description".into(),
            json!(http.description.clone().unwrap_or_default()),
        );
        entry.insert("read-only".into(), json!("true"));
        entry.insert("weight".into(), json!(http.weight));
        if detail {
            entry.insert("type".into(), json!("http"));
            entry.insert("properties".into(), json!({}));
        }
        list.push(Value::Object(entry));
    }
    Ok(json!({ "stores": list }))
}

/// `GET /v2/info/stores`.
pub async fn info_stores(
    State(state): State<SharedState>,
    Authed(_caller): Authed,
) -> ApiResult<Json<Value>> {
    Ok(Json(stores_doc(&state, false)?))
}

/// `GET /v2/info/stores/detail` (admin; Glance's `stores_info_detail`).
pub async fn info_stores_detail(
    State(state): State<SharedState>,
    Authed(caller): Authed,
) -> ApiResult<Json<Value>> {
    if !caller.is_admin() {
        return Err(ApiError::new(
            ErrorKind::Forbidden,
            "You are not authorized to complete stores_info_detail action.",
        ));
    }
    Ok(Json(stores_doc(&state, true)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_schema_exists() {
        for name in ["image", "images", "member", "members", "task", "tasks"] {
            assert!(schema_named(name).is_ok(), "{name}");
        }
        for name in [
            "namespace",
            "namespaces",
            "resource_type",
            "resource_types",
            "property",
            "properties",
            "object",
            "objects",
            "tag",
            "tags",
        ] {
            assert!(schema_named(&format!("metadef_{name}")).is_ok(), "{name}");
        }
    }

    #[test]
    fn first_version_is_current() {
        let doc = versions_doc("http://h", false);
        assert_eq!(doc["versions"][0]["status"], "CURRENT");
        assert_eq!(doc["versions"][0]["links"][0]["href"], "http://h/v2/");
        let ids = |doc: &Value| -> Vec<String> {
            doc["versions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["id"].as_str().unwrap().to_string())
                .collect()
        };
        assert!(
            !ids(&doc).contains(&"v2.14".to_string()),
            "no cache, no cache API"
        );
        assert!(ids(&versions_doc("http://h", true)).contains(&"v2.14".to_string()));
    }
}
