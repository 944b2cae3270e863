//! `/v2/metadefs` handlers: Glance's metadata definitions catalog (namespaces, their properties,
//! objects, tags and resource-type associations, and the resource types), rendered as Glance 33
//! renders them.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use ims_core::metadefs::{
    Association, MAX_LIST_LIMIT, MetadefObject, MetadefTag, Namespace, NamespaceQuery,
    NamespaceSortKey, NamespaceUpdate, NamespaceVisibility, NewAssociation, NewNamespace,
    NewObject, PropertyDef,
};
use ims_domain::{ErrorKind, SortDir};
use serde_json::{Map, Value, json};

use crate::SharedState;
use crate::body::read_json_object;
use crate::error::{ApiError, ApiResult};
use crate::json::glance_time;
use crate::middleware::Authed;

const NAMESPACE_SCHEMA: &str = "/v2/schemas/metadefs/namespace";
const NAMESPACES_SCHEMA: &str = "/v2/schemas/metadefs/namespaces";
const OBJECT_SCHEMA: &str = "/v2/schemas/metadefs/object";
/// Glance really renders this one without the leading slash.
const OBJECTS_SCHEMA: &str = "v2/schemas/metadefs/objects";
/// Fields a client may not send on namespaces and objects (Glance answers 403).
const READ_ONLY_FIELDS: [&str; 4] = ["self", "schema", "created_at", "updated_at"];

/// The routes below `/v2/metadefs`.
pub fn router() -> Router<SharedState> {
    Router::new()
        .route("/resource_types", get(list_resource_types))
        .route("/namespaces", get(list_namespaces).post(create_namespace))
        .route(
            "/namespaces/{ns}",
            get(show_namespace)
                .put(update_namespace)
                .delete(delete_namespace),
        )
        .route(
            "/namespaces/{ns}/resource_types",
            get(list_associations).post(associate),
        )
        .route(
            "/namespaces/{ns}/resource_types/{rt}",
            axum::routing::delete(dissociate),
        )
        .route(
            "/namespaces/{ns}/properties",
            get(list_properties)
                .post(create_property)
                .delete(delete_properties),
        )
        .route(
            "/namespaces/{ns}/properties/{name}",
            get(show_property)
                .put(update_property)
                .delete(delete_property),
        )
        .route(
            "/namespaces/{ns}/objects",
            get(list_objects).post(create_object).delete(delete_objects),
        )
        .route(
            "/namespaces/{ns}/objects/{name}",
            get(show_object).put(update_object).delete(delete_object),
        )
        .route(
            "/namespaces/{ns}/tags",
            get(list_tags).post(create_tags).delete(delete_tags),
        )
        .route(
            "/namespaces/{ns}/tags/{name}",
            get(show_tag)
                .post(create_tag)
                .put(update_tag)
                .delete(delete_tag),
        )
}

// Rendering.

fn namespace_href(name: &str) -> String {
    format!("/v2/metadefs/namespaces/{name}")
}

fn insert_opt(obj: &mut Map<String, Value>, key: &str, value: &Option<String>) {
    if let Some(v) = value {
        obj.insert(key.into(), Value::String(v.clone()));
    }
}

fn property_map(props: &BTreeMap<String, PropertyDef>) -> Value {
    Value::Object(
        props
            .iter()
            .map(|(k, v)| (k.clone(), Value::Object(v.0.clone())))
            .collect(),
    )
}

fn property_json(name: &str, def: &PropertyDef) -> Value {
    let mut obj = def.0.clone();
    obj.insert("name".into(), Value::String(name.into()));
    Value::Object(obj)
}

fn association_json(a: &Association) -> Value {
    let mut obj = Map::new();
    obj.insert("name".into(), Value::String(a.name.clone()));
    insert_opt(&mut obj, "prefix", &a.prefix);
    insert_opt(&mut obj, "properties_target", &a.properties_target);
    obj.insert("created_at".into(), glance_time(a.created_at).into());
    obj.insert("updated_at".into(), glance_time(a.updated_at).into());
    Value::Object(obj)
}

fn object_json(ns: &str, o: &MetadefObject) -> Value {
    let mut obj = Map::new();
    obj.insert("name".into(), Value::String(o.name.clone()));
    insert_opt(&mut obj, "description", &o.description);
    obj.insert("required".into(), json!(o.required));
    obj.insert("properties".into(), property_map(&o.properties));
    obj.insert("created_at".into(), glance_time(o.created_at).into());
    obj.insert("updated_at".into(), glance_time(o.updated_at).into());
    obj.insert(
        "self".into(),
        format!("{}/objects/{}", namespace_href(ns), o.name).into(),
    );
    obj.insert("schema".into(), OBJECT_SCHEMA.into());
    Value::Object(obj)
}

fn tag_json(t: &MetadefTag) -> Value {
    json!({
        "name": t.name,
        "created_at": glance_time(t.created_at),
        "updated_at": glance_time(t.updated_at),
    })
}

fn tag_names(tags: &[MetadefTag]) -> Value {
    Value::Array(tags.iter().map(|t| json!({"name": t.name})).collect())
}

/// How much of a namespace a response shows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Detail {
    /// The record only (update).
    Record,
    /// Plus its resource-type associations (list).
    Associations,
    /// Everything (create, show).
    Full,
}

fn namespace_json(ns: &Namespace, detail: Detail) -> Value {
    let mut obj = Map::new();
    obj.insert("namespace".into(), Value::String(ns.namespace.clone()));
    insert_opt(&mut obj, "display_name", &ns.display_name);
    insert_opt(&mut obj, "description", &ns.description);
    obj.insert("visibility".into(), ns.visibility.as_str().into());
    obj.insert("protected".into(), ns.protected.into());
    insert_opt(&mut obj, "owner", &ns.owner);
    obj.insert("created_at".into(), glance_time(ns.created_at).into());
    obj.insert("updated_at".into(), glance_time(ns.updated_at).into());
    let c = &ns.contents;
    if detail != Detail::Record && !c.resource_type_associations.is_empty() {
        let list = c.resource_type_associations.iter().map(association_json);
        obj.insert(
            "resource_type_associations".into(),
            Value::Array(list.collect()),
        );
    }
    if detail == Detail::Full {
        if !c.properties.is_empty() {
            obj.insert("properties".into(), property_map(&c.properties));
        }
        if !c.objects.is_empty() {
            let list = c.objects.iter().map(|o| object_json(&ns.namespace, o));
            obj.insert("objects".into(), Value::Array(list.collect()));
        }
        if !c.tags.is_empty() {
            obj.insert("tags".into(), tag_names(&c.tags));
        }
    }
    obj.insert("self".into(), namespace_href(&ns.namespace).into());
    obj.insert("schema".into(), NAMESPACE_SCHEMA.into());
    Value::Object(obj)
}

fn created(body: Value) -> Response {
    (StatusCode::CREATED, Json(body)).into_response()
}

// Parsing.

fn type_error(key: &str, expected: &str) -> ApiError {
    ApiError::invalid(format!("'{key}' must be {expected}"))
}

fn opt_string(map: &Map<String, Value>, key: &str) -> ApiResult<Option<String>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(type_error(key, "a string")),
    }
}

fn required_string(map: &Map<String, Value>, key: &str) -> ApiResult<String> {
    opt_string(map, key)?
        .ok_or_else(|| ApiError::invalid(format!("'{key}' is a required property")))
}

fn opt_bool(map: &Map<String, Value>, key: &str) -> ApiResult<Option<bool>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(type_error(key, "a boolean")),
    }
}

fn opt_visibility(map: &Map<String, Value>) -> ApiResult<Option<NamespaceVisibility>> {
    opt_string(map, "visibility")?
        .map(|v| {
            NamespaceVisibility::parse(&v).ok_or_else(|| {
                ApiError::invalid(format!("'{v}' is not one of ['public', 'private']"))
            })
        })
        .transpose()
}

fn as_object<'a>(value: &'a Value, what: &str) -> ApiResult<&'a Map<String, Value>> {
    value
        .as_object()
        .ok_or_else(|| type_error(what, "an object"))
}

fn array<'a>(map: &'a Map<String, Value>, key: &str) -> ApiResult<&'a [Value]> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(type_error(key, "an array")),
    }
}

fn reject_read_only(map: &Map<String, Value>) -> ApiResult<()> {
    match READ_ONLY_FIELDS.iter().find(|k| map.contains_key(**k)) {
        Some(key) => Err(ApiError::new(
            ErrorKind::Forbidden,
            format!("Attribute '{key}' is read-only."),
        )),
        None => Ok(()),
    }
}

fn parse_properties(map: &Map<String, Value>) -> ApiResult<BTreeMap<String, PropertyDef>> {
    let Some(value) = map.get("properties").filter(|v| !v.is_null()) else {
        return Ok(BTreeMap::new());
    };
    as_object(value, "properties")?
        .iter()
        .map(|(name, def)| {
            let def = as_object(def, name)?;
            Ok((name.clone(), PropertyDef::from_json(name, def)?))
        })
        .collect()
}

fn parse_object(map: &Map<String, Value>) -> ApiResult<NewObject> {
    reject_read_only(map)?;
    let required = array(map, "required")?
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| type_error("required", "an array of strings"))
        })
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(NewObject {
        name: required_string(map, "name")?,
        description: opt_string(map, "description")?,
        required,
        properties: parse_properties(map)?,
    })
}

fn parse_association(map: &Map<String, Value>) -> ApiResult<NewAssociation> {
    Ok(NewAssociation {
        name: required_string(map, "name")?,
        prefix: opt_string(map, "prefix")?,
        properties_target: opt_string(map, "properties_target")?,
    })
}

fn parse_tag_names(map: &Map<String, Value>) -> ApiResult<Vec<String>> {
    array(map, "tags")?
        .iter()
        .map(|t| required_string(as_object(t, "tags")?, "name"))
        .collect()
}

fn parse_new_namespace(map: &Map<String, Value>) -> ApiResult<NewNamespace> {
    reject_read_only(map)?;
    let associations = array(map, "resource_type_associations")?
        .iter()
        .map(|a| parse_association(as_object(a, "resource_type_associations")?))
        .collect::<ApiResult<Vec<_>>>()?;
    let objects = array(map, "objects")?
        .iter()
        .map(|o| parse_object(as_object(o, "objects")?))
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(NewNamespace {
        namespace: required_string(map, "namespace")?,
        display_name: opt_string(map, "display_name")?,
        description: opt_string(map, "description")?,
        visibility: opt_visibility(map)?,
        protected: opt_bool(map, "protected")?,
        owner: opt_string(map, "owner")?,
        associations,
        properties: parse_properties(map)?,
        objects,
        tags: parse_tag_names(map)?,
    })
}

fn parse_namespace_query(raw: &[(String, String)]) -> ApiResult<NamespaceQuery> {
    let mut query = NamespaceQuery::default();
    for (key, value) in raw {
        match key.as_str() {
            "limit" => {
                let limit: i64 = value
                    .parse()
                    .map_err(|_| ApiError::invalid("limit param must be an integer"))?;
                if limit < 0 {
                    return Err(ApiError::invalid("limit param must be positive"));
                }
                query.limit = usize::try_from(limit)
                    .unwrap_or(MAX_LIST_LIMIT)
                    .min(MAX_LIST_LIMIT);
            }
            "marker" => query.marker = Some(value.clone()),
            "sort_dir" => {
                query.sort_dir = SortDir::parse(value)
                    .ok_or_else(|| ApiError::invalid(format!("Invalid sort direction: {value}")))?;
            }
            "sort_key" => {
                query.sort_key = NamespaceSortKey::parse(value)
                    .ok_or_else(|| ApiError::invalid(format!("Invalid sort key: {value}")))?;
            }
            "visibility" if !value.is_empty() => {
                query.visibility = Some(NamespaceVisibility::parse(value).ok_or_else(|| {
                    ApiError::invalid(format!("Invalid visibility value: {value}"))
                })?);
            }
            "resource_types" => {
                query.resource_types = value.split(',').map(str::to_owned).collect();
            }
            _ => {}
        }
    }
    Ok(query)
}

fn encode(params: &[(String, String)]) -> String {
    serde_urlencoded::to_string(params).unwrap_or_default()
}

async fn body_object(
    state: &SharedState,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Map<String, Value>> {
    read_json_object(headers, body, state.app.config.limits.max_json_body).await
}

// Handlers: resource types.

async fn list_resource_types(
    State(state): State<SharedState>,
    Authed(caller): Authed,
) -> ApiResult<Json<Value>> {
    let types = state.app.metadefs.list_resource_types(&caller).await?;
    let list: Vec<Value> = types
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "created_at": glance_time(t.created_at),
                "updated_at": glance_time(t.updated_at),
            })
        })
        .collect();
    Ok(Json(json!({ "resource_types": list })))
}

async fn list_associations(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path(ns): Path<String>,
) -> ApiResult<Json<Value>> {
    let list = state.app.metadefs.list_associations(&caller, &ns).await?;
    let list: Vec<Value> = list.iter().map(association_json).collect();
    Ok(Json(json!({ "resource_type_associations": list })))
}

async fn associate(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path(ns): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let map = body_object(&state, &headers, body).await?;
    let input = parse_association(&map)?;
    let association = state.app.metadefs.associate(&caller, &ns, input).await?;
    Ok(created(association_json(&association)))
}

async fn dissociate(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path((ns, rt)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    state.app.metadefs.dissociate(&caller, &ns, &rt).await?;
    Ok(StatusCode::NO_CONTENT)
}

// Handlers: namespaces.

async fn list_namespaces(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    let params: Vec<(String, String)> = serde_urlencoded::from_str(raw.as_deref().unwrap_or(""))
        .map_err(|_| ApiError::invalid("Malformed query string"))?;
    let query = parse_namespace_query(&params)?;
    let page = state.app.metadefs.list_namespaces(&caller, &query).await?;
    let mut without_marker: Vec<(String, String)> =
        params.into_iter().filter(|(k, _)| k != "marker").collect();
    let mut first = "/v2/metadefs/namespaces".to_string();
    if !without_marker.is_empty() {
        first = format!("{first}?{}", encode(&without_marker));
    }
    let list: Vec<Value> = page
        .namespaces
        .iter()
        .map(|n| namespace_json(n, Detail::Associations))
        .collect();
    let mut body = json!({"namespaces": list, "first": first, "schema": NAMESPACES_SCHEMA});
    if let Some(marker) = page.next_marker {
        without_marker.push(("marker".into(), marker));
        body["next"] = format!("/v2/metadefs/namespaces?{}", encode(&without_marker)).into();
    }
    Ok(Json(body))
}

async fn create_namespace(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let map = body_object(&state, &headers, body).await?;
    let new = parse_new_namespace(&map)?;
    let ns = state.app.metadefs.create_namespace(&caller, new).await?;
    let mut response = created(namespace_json(&ns, Detail::Full));
    if let Ok(location) = namespace_href(&ns.namespace).parse() {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

async fn show_namespace(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path(ns): Path<String>,
) -> ApiResult<Json<Value>> {
    let ns = state.app.metadefs.get_namespace(&caller, &ns).await?;
    Ok(Json(namespace_json(&ns, Detail::Full)))
}

async fn update_namespace(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path(ns): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    let map = body_object(&state, &headers, body).await?;
    reject_read_only(&map)?;
    let update = NamespaceUpdate {
        namespace: required_string(&map, "namespace")?,
        display_name: opt_string(&map, "display_name")?,
        description: opt_string(&map, "description")?,
        visibility: opt_visibility(&map)?,
        protected: opt_bool(&map, "protected")?,
        owner: opt_string(&map, "owner")?,
    };
    let updated = state
        .app
        .metadefs
        .update_namespace(&caller, &ns, update)
        .await?;
    Ok(Json(namespace_json(&updated, Detail::Record)))
}

async fn delete_namespace(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path(ns): Path<String>,
) -> ApiResult<StatusCode> {
    state.app.metadefs.delete_namespace(&caller, &ns).await?;
    Ok(StatusCode::NO_CONTENT)
}

// Handlers: properties.

async fn list_properties(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path(ns): Path<String>,
) -> ApiResult<Json<Value>> {
    let props = state.app.metadefs.list_properties(&caller, &ns).await?;
    Ok(Json(json!({ "properties": property_map(&props) })))
}

async fn create_property(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path(ns): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let map = body_object(&state, &headers, body).await?;
    let name = required_string(&map, "name")?;
    let def = PropertyDef::from_json(&name, &map)?;
    let def = state
        .app
        .metadefs
        .create_property(&caller, &ns, &name, def)
        .await?;
    Ok(created(property_json(&name, &def)))
}

async fn show_property(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path((ns, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let def = state.app.metadefs.get_property(&caller, &ns, &name).await?;
    Ok(Json(property_json(&name, &def)))
}

async fn update_property(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    let map = body_object(&state, &headers, body).await?;
    let new_name = opt_string(&map, "name")?.unwrap_or_else(|| name.clone());
    let def = PropertyDef::from_json(&new_name, &map)?;
    let def = state
        .app
        .metadefs
        .update_property(&caller, &ns, &name, &new_name, def)
        .await?;
    Ok(Json(property_json(&new_name, &def)))
}

async fn delete_property(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path((ns, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    state
        .app
        .metadefs
        .delete_property(&caller, &ns, &name)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_properties(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path(ns): Path<String>,
) -> ApiResult<StatusCode> {
    state
        .app
        .metadefs
        .delete_all_properties(&caller, &ns)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

// Handlers: objects.

async fn list_objects(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path(ns): Path<String>,
) -> ApiResult<Json<Value>> {
    let objects = state.app.metadefs.list_objects(&caller, &ns).await?;
    let list: Vec<Value> = objects.iter().map(|o| object_json(&ns, o)).collect();
    Ok(Json(json!({"objects": list, "schema": OBJECTS_SCHEMA})))
}

async fn create_object(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path(ns): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let map = body_object(&state, &headers, body).await?;
    let input = parse_object(&map)?;
    let object = state
        .app
        .metadefs
        .create_object(&caller, &ns, input)
        .await?;
    Ok(created(object_json(&ns, &object)))
}

async fn show_object(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path((ns, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let object = state.app.metadefs.get_object(&caller, &ns, &name).await?;
    Ok(Json(object_json(&ns, &object)))
}

async fn update_object(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    let map = body_object(&state, &headers, body).await?;
    let input = parse_object(&map)?;
    let object = state
        .app
        .metadefs
        .update_object(&caller, &ns, &name, input)
        .await?;
    Ok(Json(object_json(&ns, &object)))
}

async fn delete_object(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path((ns, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    state
        .app
        .metadefs
        .delete_object(&caller, &ns, &name)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_objects(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path(ns): Path<String>,
) -> ApiResult<StatusCode> {
    state.app.metadefs.delete_all_objects(&caller, &ns).await?;
    Ok(StatusCode::NO_CONTENT)
}

// Handlers: tags.

async fn list_tags(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path(ns): Path<String>,
) -> ApiResult<Json<Value>> {
    let tags = state.app.metadefs.list_tags(&caller, &ns).await?;
    Ok(Json(json!({ "tags": tag_names(&tags) })))
}

/// `X-Openstack-Append: true` adds to the existing tags instead of replacing them.
fn wants_append(headers: &HeaderMap) -> bool {
    headers
        .get("x-openstack-append")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "t" | "true" | "on" | "y" | "yes"
            )
        })
}

async fn create_tags(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path(ns): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let append = wants_append(&headers);
    let map = body_object(&state, &headers, body).await?;
    let names = parse_tag_names(&map)?;
    let tags = state
        .app
        .metadefs
        .create_tags(&caller, &ns, names, append)
        .await?;
    Ok(created(json!({ "tags": tag_names(&tags) })))
}

async fn create_tag(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path((ns, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let tag = state.app.metadefs.create_tag(&caller, &ns, &name).await?;
    Ok(created(tag_json(&tag)))
}

async fn show_tag(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path((ns, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let tag = state.app.metadefs.get_tag(&caller, &ns, &name).await?;
    Ok(Json(tag_json(&tag)))
}

async fn update_tag(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    let map = body_object(&state, &headers, body).await?;
    reject_read_only(&map)?;
    let new_name = required_string(&map, "name")?;
    let tag = state
        .app
        .metadefs
        .rename_tag(&caller, &ns, &name, &new_name)
        .await?;
    Ok(Json(tag_json(&tag)))
}

async fn delete_tag(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path((ns, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    state.app.metadefs.delete_tag(&caller, &ns, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_tags(
    State(state): State<SharedState>,
    Authed(caller): Authed,
    Path(ns): Path<String>,
) -> ApiResult<StatusCode> {
    state.app.metadefs.delete_all_tags(&caller, &ns).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn namespace_query_parses_glance_parameters() {
        let q = parse_namespace_query(&params(&[
            ("limit", "5000"),
            ("sort_dir", "asc"),
            ("sort_key", "namespace"),
            ("visibility", "public"),
            ("resource_types", "OS::Glance::Image,OS::Nova::Flavor"),
        ]))
        .unwrap();
        assert_eq!(q.limit, MAX_LIST_LIMIT);
        assert_eq!(q.sort_dir, SortDir::Asc);
        assert_eq!(q.sort_key, NamespaceSortKey::Namespace);
        assert_eq!(q.visibility, Some(NamespaceVisibility::Public));
        assert_eq!(q.resource_types.len(), 2);
        for bad in [
            ("limit", "x"),
            ("limit", "-1"),
            ("sort_dir", "up"),
            ("visibility", "shared"),
        ] {
            assert!(parse_namespace_query(&params(&[bad])).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn read_only_fields_are_forbidden() {
        let map = json!({"namespace": "x", "created_at": "now"});
        let err = parse_new_namespace(map.as_object().unwrap()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Forbidden);
    }
}
