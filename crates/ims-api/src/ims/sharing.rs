//! IMS sharing and tags: batch member jobs, member queries, key/value tags (single, batch,
//! per project) and the TMS-style "list resources by tags" query.

use std::collections::{BTreeMap, BTreeSet};

use axum::Json;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use ims_core::cloudimages::{KvTag, MAX_BATCH_IMAGES, MAX_SHARE_PROJECTS, kv_tags};
use ims_core::cloudjobs::{ImsJob, ImsJobKind};
use ims_domain::query::{MAX_LIST_LIMIT, MatchField};
use ims_domain::{Caller, Image, ImageListQuery, ListScope, Member, MemberStatus};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    ImsCaller, ImsResult, check_project, image_info, invalid, job_created, parse_body,
    parse_image_id,
};
use crate::SharedState;
use crate::json::glance_time;

/// TMS: at most 10 keys per tag filter, 10 values per key.
const MAX_FILTER_KEYS: usize = 10;
const MAX_FILTER_VALUES: usize = 10;
/// `list_image_by_tags`: default and largest page.
const DEFAULT_TAG_QUERY_LIMIT: usize = 10;
const MAX_TAG_QUERY_LIMIT: usize = 1000;
/// `list_tags`: default page size.
const DEFAULT_TAG_LIST_LIMIT: usize = 1000;

#[derive(Deserialize)]
struct MembersBody {
    images: Vec<String>,
    projects: Vec<String>,
}

#[derive(Deserialize)]
struct UpdateMembersBody {
    images: Vec<String>,
    project_id: String,
    status: String,
}

fn parse_images(images: &[String]) -> ImsResult<Vec<uuid::Uuid>> {
    if images.is_empty() || images.len() > MAX_BATCH_IMAGES {
        return Err(invalid(format!(
            "images must list 1 to {MAX_BATCH_IMAGES} image ids."
        )));
    }
    images.iter().map(|i| parse_image_id(i)).collect()
}

pub async fn batch_add_members(
    State(state): State<SharedState>,
    ImsCaller(caller): ImsCaller,
    body: Bytes,
) -> ImsResult<Response> {
    let body: MembersBody = parse_body(&body)?;
    let images = parse_images(&body.images)?;
    if body.projects.is_empty() || body.projects.len() > MAX_SHARE_PROJECTS {
        return Err(invalid(format!(
            "projects must list 1 to {MAX_SHARE_PROJECTS} project ids."
        )));
    }
    // Refusals known up front (not the owner, not active, encrypted, market) are immediate.
    for id in &images {
        let image = state.app.cloud_images.owned_image(&caller, *id).await?;
        ims_core::cloudimages::check_shareable(&image)?;
    }
    let job = ImsJob {
        kind: ImsJobKind::AddMembers,
        job_type: "imsAddImageMembersJob",
        entities: json!({}),
        params: json!({"images": id_strings(&images), "projects": body.projects}),
        image_id: None,
    };
    let job = state.app.cloud_images.submit_job(&caller, job).await?;
    Ok(job_created(job))
}

fn id_strings(images: &[uuid::Uuid]) -> Vec<String> {
    images.iter().map(uuid::Uuid::to_string).collect()
}

pub async fn batch_delete_members(
    State(state): State<SharedState>,
    ImsCaller(caller): ImsCaller,
    body: Bytes,
) -> ImsResult<Response> {
    let body: MembersBody = parse_body(&body)?;
    let images = parse_images(&body.images)?;
    for id in &images {
        state.app.cloud_images.owned_image(&caller, *id).await?;
    }
    let job = ImsJob {
        kind: ImsJobKind::DeleteMembers,
        job_type: "imsDelImageMembersJob",
        entities: json!({}),
        params: json!({"images": id_strings(&images), "projects": body.projects}),
        image_id: None,
    };
    let job = state.app.cloud_images.submit_job(&caller, job).await?;
    Ok(job_created(job))
}

pub async fn batch_update_members(
    State(state): State<SharedState>,
    ImsCaller(caller): ImsCaller,
    body: Bytes,
) -> ImsResult<Response> {
    let body: UpdateMembersBody = parse_body(&body)?;
    let images = parse_images(&body.images)?;
    let status = match body.status.as_str() {
        "accepted" => MemberStatus::Accepted,
        "rejected" => MemberStatus::Rejected,
        other => return Err(invalid(format!("Member status {other} is invalid."))),
    };
    check_project(&caller, &body.project_id)?;
    let job = ImsJob {
        kind: ImsJobKind::UpdateMembers,
        job_type: "imsUpdateImageMembersJob",
        entities: json!({}),
        params: json!({
            "images": id_strings(&images),
            "project_id": body.project_id,
            "status": status.as_str(),
        }),
        image_id: None,
    };
    let job = state.app.cloud_images.submit_job(&caller, job).await?;
    Ok(job_created(job))
}

fn member_json(member: &Member) -> Value {
    json!({
        "status": member.status.as_str(),
        "created_at": glance_time(member.created_at),
        "updated_at": glance_time(member.updated_at),
        "image_id": member.image_id.to_string(),
        "member_id": member.member_id,
        "member_type": "project",
        "schema": "/v2/schemas/member",
    })
}

#[derive(Deserialize)]
pub struct MemberPage {
    limit: Option<usize>,
    marker: Option<String>,
}

pub async fn list_members(
    State(state): State<SharedState>,
    ImsCaller(caller): ImsCaller,
    Path((project_id, image_id)): Path<(String, String)>,
    Query(page): Query<MemberPage>,
) -> ImsResult<Response> {
    check_project(&caller, &project_id)?;
    let id = parse_image_id(&image_id)?;
    let members = state.app.images.list_members(&caller, id).await?;
    let limit = page
        .limit
        .unwrap_or(MAX_LIST_LIMIT)
        .clamp(1, MAX_LIST_LIMIT);
    let start = match &page.marker {
        Some(m) => members
            .iter()
            .position(|x| &x.member_id == m)
            .map(|p| p + 1)
            .ok_or_else(|| invalid(format!("Marker {m} could not be found.")))?,
        None => 0,
    };
    let shown: Vec<&Member> = members.iter().skip(start).take(limit).collect();
    let mut page_info = json!({ "current_count": shown.len() });
    if start + shown.len() < members.len()
        && let Some(last) = shown.last()
    {
        page_info["next_marker"] = last.member_id.clone().into();
    }
    Ok(Json(json!({
        "members": shown.iter().map(|m| member_json(m)).collect::<Vec<_>>(),
        "schema": "/v2/schemas/members",
        "page_info": page_info,
    }))
    .into_response())
}

pub async fn show_member(
    State(state): State<SharedState>,
    ImsCaller(caller): ImsCaller,
    Path((project_id, image_id, member_id)): Path<(String, String, String)>,
) -> ImsResult<Response> {
    check_project(&caller, &project_id)?;
    let id = parse_image_id(&image_id)?;
    let member = state.app.images.get_member(&caller, id, &member_id).await?;
    Ok(Json(member_json(&member)).into_response())
}

// Tags.

#[derive(Deserialize)]
struct TagBody {
    key: String,
    value: Option<String>,
}

impl TagBody {
    fn tag(&self) -> ImsResult<KvTag> {
        Ok(KvTag::new(&self.key, self.value.as_deref().unwrap_or(""))?)
    }
}

#[derive(Deserialize)]
struct AddTagBody {
    tag: TagBody,
}

#[derive(Deserialize)]
struct BatchTagsBody {
    action: String,
    tags: Vec<TagBody>,
}

#[derive(Deserialize)]
struct DeleteTagsBody {
    tags: Vec<TagBody>,
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

pub async fn add_image_tag(
    State(state): State<SharedState>,
    ImsCaller(caller): ImsCaller,
    Path((project_id, image_id)): Path<(String, String)>,
    body: Bytes,
) -> ImsResult<Response> {
    check_project(&caller, &project_id)?;
    let id = parse_image_id(&image_id)?;
    let body: AddTagBody = parse_body(&body)?;
    let tag = body.tag.tag()?;
    state.app.cloud_images.set_tags(&caller, id, &[tag]).await?;
    Ok(no_content())
}

pub async fn batch_tags(
    State(state): State<SharedState>,
    ImsCaller(caller): ImsCaller,
    Path((project_id, image_id)): Path<(String, String)>,
    body: Bytes,
) -> ImsResult<Response> {
    check_project(&caller, &project_id)?;
    let id = parse_image_id(&image_id)?;
    let body: BatchTagsBody = parse_body(&body)?;
    let tags: Vec<KvTag> = body
        .tags
        .iter()
        .map(TagBody::tag)
        .collect::<Result<_, _>>()?;
    let cloud = &state.app.cloud_images;
    match body.action.as_str() {
        "create" => cloud.set_tags(&caller, id, &tags).await?,
        "delete" => {
            let keys: Vec<String> = tags.into_iter().map(|t| t.key).collect();
            cloud.remove_tags(&caller, id, &keys, false).await?
        }
        other => {
            return Err(invalid(format!(
                "Action {other} is invalid: create or delete."
            )));
        }
    };
    Ok(no_content())
}

pub async fn batch_delete_tags(
    State(state): State<SharedState>,
    ImsCaller(caller): ImsCaller,
    Path((project_id, image_id)): Path<(String, String)>,
    body: Bytes,
) -> ImsResult<Response> {
    check_project(&caller, &project_id)?;
    let id = parse_image_id(&image_id)?;
    let body: DeleteTagsBody = parse_body(&body)?;
    let keys: Vec<String> = body.tags.into_iter().map(|t| t.key).collect();
    state
        .app
        .cloud_images
        .remove_tags(&caller, id, &keys, false)
        .await?;
    Ok(no_content())
}

pub async fn delete_image_tag(
    State(state): State<SharedState>,
    ImsCaller(caller): ImsCaller,
    Path((project_id, image_id, key)): Path<(String, String, String)>,
) -> ImsResult<Response> {
    check_project(&caller, &project_id)?;
    let id = parse_image_id(&image_id)?;
    state
        .app
        .cloud_images
        .remove_tags(&caller, id, &[key], true)
        .await?;
    Ok(no_content())
}

fn tags_json(tags: &[KvTag]) -> Vec<Value> {
    tags.iter()
        .map(|t| json!({"key": t.key, "value": t.value}))
        .collect()
}

pub async fn list_image_tags(
    State(state): State<SharedState>,
    ImsCaller(caller): ImsCaller,
    Path((project_id, image_id)): Path<(String, String)>,
) -> ImsResult<Response> {
    check_project(&caller, &project_id)?;
    let id = parse_image_id(&image_id)?;
    let tags = state.app.cloud_images.image_tags(&caller, id).await?;
    Ok(Json(json!({ "tags": tags_json(&tags) })).into_response())
}

/// Every image the caller's project owns (all pages).
async fn owned_images(state: &SharedState, caller: &Caller) -> ImsResult<Vec<Image>> {
    let mut out: Vec<Image> = Vec::new();
    loop {
        let mut query = ImageListQuery::new(ListScope::Project(caller.project_id.clone()));
        query
            .matches
            .push((MatchField::Owner, vec![caller.project_id.clone()]));
        query.limit = MAX_LIST_LIMIT;
        query.marker = out.last().map(|i| i.id);
        let page = state.app.images.list(caller, query).await?;
        let done = page.len() < MAX_LIST_LIMIT;
        out.extend(page);
        if done {
            return Ok(out);
        }
    }
}

pub async fn list_project_tags(
    State(state): State<SharedState>,
    ImsCaller(caller): ImsCaller,
    Path(project_id): Path<String>,
) -> ImsResult<Response> {
    check_project(&caller, &project_id)?;
    let mut by_key: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for image in owned_images(&state, &caller).await? {
        for tag in kv_tags(&image) {
            by_key.entry(tag.key).or_default().insert(tag.value);
        }
    }
    let tags: Vec<Value> = by_key
        .into_iter()
        .map(|(key, values)| json!({"key": key, "values": values}))
        .collect();
    Ok(Json(json!({ "tags": tags })).into_response())
}

#[derive(Deserialize)]
struct CreateOrUpdateTagsBody {
    image_id: String,
    tag: Option<String>,
    image_tag: Option<TagBody>,
}

pub async fn create_or_update_tags(
    State(state): State<SharedState>,
    ImsCaller(caller): ImsCaller,
    body: Bytes,
) -> ImsResult<Response> {
    let body: CreateOrUpdateTagsBody = parse_body(&body)?;
    let id = parse_image_id(&body.image_id)?;
    let tag = match (&body.tag, &body.image_tag) {
        (Some(_), Some(_)) => return Err(invalid("Use either tag or image_tag, not both.")),
        (Some(dotted), None) => KvTag::parse_dotted(dotted)?,
        (None, Some(t)) => t.tag()?,
        (None, None) => return Err(invalid("tag or image_tag is required.")),
    };
    state.app.cloud_images.set_tags(&caller, id, &[tag]).await?;
    Ok(no_content())
}

/// `GET /v1/cloudimages/tags`: the distinct tags (`key.value`) of the images the filters
/// select, paged by `limit` and `page` (from 1).
pub async fn list_tags(
    State(state): State<SharedState>,
    ImsCaller(caller): ImsCaller,
    RawQuery(raw): RawQuery,
) -> ImsResult<Response> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.as_deref().unwrap_or(""))
        .map_err(|_| invalid("The query string is invalid."))?;
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let parse_num = |k: &str, default: usize| -> ImsResult<usize> {
        get(k).map_or(Ok(default), |v| {
            v.parse()
                .map_err(|_| invalid(format!("{k} must be a positive integer.")))
        })
    };
    let limit = parse_num("limit", DEFAULT_TAG_LIST_LIMIT)?.clamp(1, MAX_LIST_LIMIT);
    let page = parse_num("page", 1)?.max(1);
    let images = owned_images(&state, &caller).await?;
    let property_filters = [
        "__platform",
        "__os_type",
        "virtual_env_type",
        "architecture",
    ];
    let selected = images.iter().filter(|i| {
        get("id").is_none_or(|v| i.id.to_string() == v)
            && get("name").is_none_or(|v| i.name.as_deref() == Some(v))
            && get("status").is_none_or(|v| i.status.as_str() == v)
            && get("min_disk").is_none_or(|v| i.min_disk.to_string() == v)
            && property_filters
                .iter()
                .all(|p| get(p).is_none_or(|v| i.properties.get(*p).map(String::as_str) == Some(v)))
    });
    let tags: BTreeSet<String> = selected
        .flat_map(kv_tags)
        .map(|t| format!("{}.{}", t.key, t.value))
        .collect();
    let start = (page - 1).saturating_mul(limit);
    let shown: Vec<&String> = tags.iter().skip(start).take(limit).collect();
    Ok(Json(json!({ "tags": shown })).into_response())
}

#[derive(Deserialize)]
struct TagFilter {
    key: String,
    #[serde(default)]
    values: Vec<String>,
}

#[derive(Deserialize)]
struct MatchFilter {
    key: String,
    value: String,
}

#[derive(Deserialize)]
struct ByTagsBody {
    action: String,
    #[serde(default)]
    tags: Vec<TagFilter>,
    #[serde(default)]
    tags_any: Vec<TagFilter>,
    #[serde(default)]
    not_tags: Vec<TagFilter>,
    #[serde(default)]
    not_tags_any: Vec<TagFilter>,
    limit: Option<String>,
    offset: Option<String>,
    #[serde(default)]
    matches: Vec<MatchFilter>,
    #[serde(default)]
    without_any_tag: bool,
}

fn check_filters(filters: &[TagFilter]) -> ImsResult<()> {
    if filters.len() > MAX_FILTER_KEYS || filters.iter().any(|f| f.values.len() > MAX_FILTER_VALUES)
    {
        return Err(invalid(format!(
            "A tag filter takes at most {MAX_FILTER_KEYS} keys with {MAX_FILTER_VALUES} values each."
        )));
    }
    Ok(())
}

/// Whether the image's tags satisfy one filter entry (empty `values` = any value).
fn has(tags: &[KvTag], filter: &TagFilter) -> bool {
    tags.iter().any(|t| {
        t.key == filter.key && (filter.values.is_empty() || filter.values.contains(&t.value))
    })
}

fn selected_by(body: &ByTagsBody, image: &Image) -> bool {
    let tags = kv_tags(image);
    if body.without_any_tag {
        return tags.is_empty();
    }
    let all = |f: &[TagFilter]| f.iter().all(|x| has(&tags, x));
    let any = |f: &[TagFilter]| f.iter().any(|x| has(&tags, x));
    (body.tags.is_empty() || all(&body.tags))
        && (body.tags_any.is_empty() || any(&body.tags_any))
        && (body.not_tags.is_empty() || !all(&body.not_tags))
        && (body.not_tags_any.is_empty() || !any(&body.not_tags_any))
        && body.matches.iter().all(|m| {
            m.key == "resource_name" && image.name.as_deref().is_some_and(|n| n.contains(&m.value))
        })
}

pub async fn list_by_tags(
    State(state): State<SharedState>,
    ImsCaller(caller): ImsCaller,
    Path(project_id): Path<String>,
    body: Bytes,
) -> ImsResult<Response> {
    check_project(&caller, &project_id)?;
    let body: ByTagsBody = parse_body(&body)?;
    for filters in [
        &body.tags,
        &body.tags_any,
        &body.not_tags,
        &body.not_tags_any,
    ] {
        check_filters(filters)?;
    }
    let parse = |v: &Option<String>, name: &str, default: usize| -> ImsResult<usize> {
        v.as_deref().map_or(Ok(default), |s| {
            s.parse()
                .map_err(|_| invalid(format!("{name} must be a number in a string.")))
        })
    };
    let limit = parse(&body.limit, "limit", DEFAULT_TAG_QUERY_LIMIT)?;
    if limit == 0 || limit > MAX_TAG_QUERY_LIMIT {
        return Err(invalid(format!(
            "limit must be 1 to {MAX_TAG_QUERY_LIMIT}."
        )));
    }
    let offset = parse(&body.offset, "offset", 0)?;
    let images = owned_images(&state, &caller).await?;
    let matching: Vec<&Image> = images.iter().filter(|i| selected_by(&body, i)).collect();
    let total = matching.len();
    match body.action.as_str() {
        "count" => Ok(Json(json!({ "total_count": total })).into_response()),
        "filter" => {
            let resources: Vec<Value> = matching
                .iter()
                .skip(offset)
                .take(limit)
                .map(|i| {
                    json!({
                        "resource_id": i.id.to_string(),
                        "resource_name": i.name,
                        "resource_detail": {"status": i.status.as_str(), "image": image_info(&caller, i)},
                        "tags": tags_json(&kv_tags(i)),
                    })
                })
                .collect();
            Ok(Json(json!({"resources": resources, "total_count": total})).into_response())
        }
        other => Err(invalid(format!(
            "Action {other} is invalid: filter or count."
        ))),
    }
}
