//! IMS image operations: list (every IMS filter), update, the creating jobs (file, quick import,
//! data disk, ISO, whole image, register), copies and export.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use ims_core::bucketjobs::{
    BucketObject, ExportParams, ImportParams, check_exportable, export_format,
};
use ims_core::cloudimages::{
    ALL_ENTERPRISE_PROJECTS, DATA_DISK_GB, DEFAULT_ENTERPRISE_PROJECT, ENTERPRISE_PROJECT_PROPERTY,
    ImsImageSpec, KvTag, QUICK_IMPORT_DISK_GB, SYSTEM_DISK_GB, check_description, check_disk_gb,
    check_enterprise_project, check_name, enterprise_project, is_service_property,
};
use ims_core::cloudjobs::{ImsJob, ImsJobKind};
use ims_core::cross_region::CrossRegionRequest;
use ims_core::patch::{AttrValue, PatchDialect};
use ims_domain::flavor::{FlavorNeeds, flavor_needs};
use ims_domain::os_catalog::CatalogArch;
use ims_domain::query::{MAX_LIST_LIMIT, MemberStatusFilter, VisibilityFilter};
use ims_domain::{Caller, ErrorKind, ImageStatus, MemberStatus, Visibility};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    ImsCaller, ImsResult, error, image_info, invalid, job_created, parse_body, parse_image_id,
};
use crate::SharedState;
use crate::list::parse_list_query;

/// `list_images`' default page size (IMS: 500; Glance's is 25).
const IMS_DEFAULT_LIMIT: usize = 500;
/// File formats an imported file may have (`register_image`).
const IMPORT_FORMATS: &[&str] = &[
    "zvhd", "qcow2", "vhd", "raw", "vhdx", "qed", "vdi", "qcow", "zvhd2", "vmdk", "iso",
];

pub async fn list_images(
    State(state): State<SharedState>,
    ImsCaller(caller): ImsCaller,
    RawQuery(raw): RawQuery,
) -> ImsResult<Response> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.as_deref().unwrap_or(""))
        .map_err(|_| invalid("The query string is invalid."))?;
    let (images, next_marker) = list_page(&state, &caller, pairs).await?;
    let shown: Vec<Value> = images.iter().map(|i| image_info(&caller, i)).collect();
    let mut page_info = json!({});
    if let Some(marker) = next_marker {
        page_info["next_marker"] = marker.into();
    }
    Ok(Json(json!({"images": shown, "page_info": page_info})).into_response())
}

/// Most rows one CSV export holds.
const MAX_CSV_ROWS: usize = 10_000;
/// The console's image list columns (seed 003: 名称, 状态, 操作系统类型, 操作系统, 镜像类型,
/// 磁盘容量 (GB), 已加密, 创建时间), with the image id after the name.
const CSV_COLUMNS: &[&str] = &[
    "Name",
    "ID",
    "Status",
    "OS Type",
    "OS",
    "Image Type",
    "Disk Capacity (GB)",
    "Encrypted",
    "Created At",
];

/// `GET /v2/cloudimages/export.csv`: the image list as the console exports it (seed §4.2
/// "导出镜像列表信息"), every page, with `list_images`' filters (`__imagetype=gold` for the public
/// images, `private` for the project's own).
pub async fn export_csv(
    State(state): State<SharedState>,
    ImsCaller(caller): ImsCaller,
    RawQuery(raw): RawQuery,
) -> ImsResult<Response> {
    let mut pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.as_deref().unwrap_or(""))
        .map_err(|_| invalid("The query string is invalid."))?;
    pairs.retain(|(k, _)| k != "marker" && k != "limit");
    pairs.push(("limit".into(), MAX_LIST_LIMIT.to_string()));
    let mut out = csv_row(CSV_COLUMNS.iter().map(|c| c.to_string()));
    let mut rows = 0usize;
    let mut marker: Option<String> = None;
    loop {
        let mut query = pairs.clone();
        if let Some(m) = &marker {
            query.push(("marker".into(), m.clone()));
        }
        let (images, next) = list_page(&state, &caller, query).await?;
        for image in &images {
            if rows == MAX_CSV_ROWS {
                return Err(error(
                    ErrorKind::TooLarge,
                    format!("An export holds at most {MAX_CSV_ROWS} images; narrow the filters."),
                ));
            }
            out.push_str(&csv_row(console_row(image)));
            rows += 1;
        }
        match next {
            Some(next) => marker = Some(next),
            None => break,
        }
    }
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                axum::http::header::CONTENT_DISPOSITION,
                "attachment; filename=\"images.csv\"",
            ),
        ],
        out,
    )
        .into_response())
}

/// One image as a row of [`CSV_COLUMNS`].
fn console_row(image: &ims_domain::Image) -> Vec<String> {
    let prop = |k: &str| image.properties.get(k).cloned().unwrap_or_default();
    let image_type = if image.properties.contains_key("__backup_id") {
        "Full-ECS image"
    } else {
        match prop("virtual_env_type").as_str() {
            "Ironic" => "BMS system disk image",
            "DataImage" => "ECS data disk image",
            "IsoImage" => "ISO image",
            _ => "ECS system disk image",
        }
    };
    vec![
        image.name.clone().unwrap_or_default(),
        image.id.to_string(),
        image.status.as_str().to_string(),
        prop("__os_type"),
        prop("__os_version"),
        image_type.to_string(),
        image.min_disk.to_string(),
        if image.properties.contains_key("__system__cmkid") {
            "Yes"
        } else {
            "No"
        }
        .to_string(),
        crate::json::glance_time(image.created_at),
    ]
}

/// RFC 4180: a cell with a comma, quote or line break is quoted, quotes doubled; CRLF ends rows.
fn csv_row(cells: impl IntoIterator<Item = String>) -> String {
    let cells: Vec<String> = cells
        .into_iter()
        .map(|c| {
            if c.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", c.replace('"', "\"\""))
            } else {
                c
            }
        })
        .collect();
    format!("{}\r\n", cells.join(","))
}

/// One page of `list_images` for `pairs` (IMS filters applied): the images and the next marker.
async fn list_page(
    state: &SharedState,
    caller: &Caller,
    pairs: Vec<(String, String)>,
) -> ImsResult<(Vec<ims_domain::Image>, Option<String>)> {
    let mut image_type = None;
    let mut min_disk = None;
    let mut min_ram = None;
    let mut passed: Vec<(String, String)> = Vec::new();
    let mut has_limit = false;
    let mut has_visibility = false;
    let mut enterprise: Option<String> = None;
    let mut flavor: Option<FlavorNeeds> = None;
    for (key, value) in pairs {
        match key.as_str() {
            "__imagetype" => match value.as_str() {
                "gold" | "private" | "shared" | "market" => image_type = Some(value),
                _ => return Err(invalid("The imagetype is invalid.")),
            },
            "min_disk" => {
                min_disk = Some(
                    value
                        .parse::<i64>()
                        .map_err(|_| invalid("min_disk must be an integer"))?,
                )
            }
            "min_ram" => {
                min_ram = Some(
                    value
                        .parse::<i64>()
                        .map_err(|_| invalid("min_ram must be an integer"))?,
                )
            }
            "tag" => {
                // IMS matches key/value tags written "key.value" (stored "key=value").
                let tag = match value.split_once('.') {
                    Some((k, v)) => format!("{k}={v}"),
                    None => value,
                };
                passed.push((key, tag));
            }
            "enterprise_project_id" => {
                if value != ALL_ENTERPRISE_PROJECTS {
                    check_enterprise_project(&value)?;
                    enterprise = Some(value);
                }
            }
            "flavor_id" => {
                flavor = Some(
                    flavor_needs(&value)
                        .ok_or_else(|| invalid(format!("The flavor {value} does not exist.")))?,
                );
            }
            "visibility" => {
                has_visibility = true;
                passed.push((key, value));
            }
            "limit" => {
                has_limit = true;
                passed.push((key, value));
            }
            _ => passed.push((key, value)),
        }
    }
    let rebuilt = serde_urlencoded::to_string(&passed).unwrap_or_default();
    let mut query = parse_list_query(Some(&rebuilt))?;
    if !has_limit {
        query.limit = IMS_DEFAULT_LIMIT.min(MAX_LIST_LIMIT);
    }
    match image_type.as_deref() {
        Some("gold") => query.visibility = Some(VisibilityFilter::Only(Visibility::Public)),
        Some("private") => query
            .properties
            .push(("__imagetype".into(), "private".into())),
        Some("shared") => {
            query.visibility = Some(VisibilityFilter::Only(Visibility::Shared));
            if query.member_status == MemberStatusFilter::All {
                query.member_status = MemberStatusFilter::Only(MemberStatus::Accepted);
            }
        }
        Some("market") => query
            .properties
            .push(("__imagetype".into(), "market".into())),
        // `flavor_id` alone asks for the public images the flavor can boot.
        None if flavor.is_some() && !has_visibility => {
            query.visibility = Some(VisibilityFilter::Only(Visibility::Public))
        }
        _ => {}
    }
    // What the store can match exactly is filtered there; the rest below.
    if let Some(ep) = enterprise
        .as_ref()
        .filter(|ep| *ep != DEFAULT_ENTERPRISE_PROJECT)
    {
        query
            .properties
            .push((ENTERPRISE_PROJECT_PROPERTY.into(), ep.clone()));
    }
    if let Some(needs) = &flavor {
        if let Some(capability) = needs.capability {
            query.properties.push((capability.into(), "true".into()));
        }
        if needs.architecture == CatalogArch::Arm {
            query.properties.push(("architecture".into(), "arm".into()));
        }
    }
    let limit = query.limit;
    let images = state.app.images.list(caller, query).await?;
    let next_marker = (images.len() == limit)
        .then(|| images.last().map(|i| i.id.to_string()))
        .flatten();
    let owned = |i: &&ims_domain::Image| i.owner.as_deref() == Some(caller.project_id.as_str());
    let shown: Vec<ims_domain::Image> = images
        .iter()
        .filter(|i| match image_type.as_deref() {
            Some("private") => owned(i),
            Some("shared") => !owned(i),
            _ => true,
        })
        .filter(|i| min_disk.is_none_or(|d| i.min_disk == d))
        .filter(|i| min_ram.is_none_or(|r| i.min_ram == r))
        .filter(|i| {
            enterprise
                .as_deref()
                .is_none_or(|ep| enterprise_project(i) == ep)
        })
        .filter(|i| {
            flavor
                .as_ref()
                .is_none_or(|needs| needs.admits(|key| i.properties.get(key).cloned()))
        })
        .cloned()
        .collect();
    Ok((shown, next_marker))
}

pub async fn update_image(
    State(state): State<SharedState>,
    ImsCaller(caller): ImsCaller,
    Path(image_id): Path<String>,
    body: Bytes,
) -> ImsResult<Response> {
    let id = parse_image_id(&image_id)?;
    let doc: Value = parse_body(&body)?;
    let mut ops = crate::images::parse_patch(doc, PatchDialect::V2_1)?;
    for op in &mut ops {
        if is_service_property(&op.attr) {
            return Err(error(
                ErrorKind::Forbidden,
                format!("Attribute '{}' is maintained by the service.", op.attr),
            ));
        }
        // IMS names the description `description`; it is stored as `__description`.
        if op.attr == "description" {
            op.attr = "__description".into();
        }
        // `max_ram` travels as an int but is stored (and shown) as a string.
        if let Some(AttrValue::Int(n)) = &op.value
            && op.attr == "max_ram"
        {
            op.value = Some(AttrValue::Str(n.to_string()));
        }
    }
    let image = state.app.images.get(&caller, id).await?;
    if image.status != ImageStatus::Active {
        return Err(invalid("Only active images can be updated."));
    }
    let updated = state
        .app
        .images
        .update(&caller, id, &ops, PatchDialect::V2_1)
        .await?;
    Ok(Json(image_info(&caller, &updated)).into_response())
}

#[derive(Deserialize)]
struct TagKeyValue {
    key: String,
    value: String,
}

#[derive(Deserialize)]
struct CreateDataImage {
    name: String,
    volume_id: String,
}

#[derive(Deserialize, Default)]
struct CreateImageBody {
    name: Option<String>,
    description: Option<String>,
    instance_id: Option<String>,
    data_images: Option<Vec<CreateDataImage>>,
    volume_id: Option<String>,
    image_url: Option<String>,
    min_disk: Option<i64>,
    os_version: Option<String>,
    is_quick_import: Option<bool>,
    cmk_id: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    architecture: Option<String>,
    hw_firmware_type: Option<String>,
    max_ram: Option<i64>,
    min_ram: Option<i64>,
    tags: Option<Vec<String>>,
    image_tags: Option<Vec<TagKeyValue>>,
    os_type: Option<String>,
    enterprise_project_id: Option<String>,
}

impl CreateImageBody {
    /// The body's enterprise project, checked.
    fn enterprise_project(&self) -> ImsResult<Option<String>> {
        if let Some(ep) = &self.enterprise_project_id {
            check_enterprise_project(ep)?;
        }
        Ok(self.enterprise_project_id.clone())
    }
}

/// The tags of a create body: legacy `"key.value"` strings or `image_tags`, not both.
fn body_tags(
    tags: &Option<Vec<String>>,
    image_tags: &Option<Vec<TagKeyValue>>,
) -> ImsResult<Vec<KvTag>> {
    match (tags, image_tags) {
        (Some(_), Some(_)) => Err(invalid("Use either tags or image_tags, not both.")),
        (Some(t), None) => Ok(t
            .iter()
            .map(|s| KvTag::parse_dotted(s))
            .collect::<Result<_, _>>()?),
        (None, Some(t)) => Ok(t
            .iter()
            .map(|t| KvTag::new(&t.key, &t.value))
            .collect::<Result<_, _>>()?),
        (None, None) => Ok(Vec::new()),
    }
}

fn no_kms() -> super::ImsError {
    error(
        ErrorKind::Unsupported,
        "Encrypted images need KMS (cmk_id), and no KMS is configured for this deployment.",
    )
}

fn no_server(id: &str) -> super::ImsError {
    invalid(format!("The ECS {id} does not exist."))
}

fn virtual_env_type(kind: Option<&str>) -> ImsResult<&'static str> {
    Ok(match kind.unwrap_or("ECS") {
        "ECS" | "FusionCompute" => "FusionCompute",
        "BMS" | "Ironic" => "Ironic",
        "IsoImage" => "IsoImage",
        "DataImage" => "DataImage",
        other => return Err(invalid(format!("Image type {other} is invalid."))),
    })
}

/// How a creating call imports its file.
#[derive(Clone, Copy)]
struct ImportKind {
    job_type: &'static str,
    quick: bool,
    data_disk: bool,
}

/// Creates the queued image and submits the job that reads `image_url` into it.
async fn start_import(
    state: &SharedState,
    caller: &Caller,
    spec: ImsImageSpec,
    image_url: &str,
    how: ImportKind,
) -> ImsResult<Response> {
    let source = BucketObject::parse(image_url)?;
    let cloud = &state.app.cloud_images;
    let image = cloud.create_image(caller, &spec).await?;
    let params = ImportParams {
        source,
        quick: how.quick,
        data_disk: how.data_disk,
        owns_image: true,
    };
    let job = ImsJob {
        kind: ImsJobKind::ImportFromBucket,
        job_type: how.job_type,
        entities: json!({"image_id": image.id.to_string(), "image_name": spec.name}),
        params: params.to_json(),
        image_id: Some(image.id),
    };
    let job = cloud.submit_job(caller, job).await?;
    Ok(job_created(job))
}

pub async fn create_image(
    State(state): State<SharedState>,
    ImsCaller(caller): ImsCaller,
    body: Bytes,
) -> ImsResult<Response> {
    let body: CreateImageBody = parse_body(&body)?;
    let name = body
        .name
        .clone()
        .ok_or_else(|| invalid("name is required."))?;
    check_name(&name)?;
    if let Some(d) = &body.description {
        check_description(d)?;
    }
    if body.cmk_id.is_some() {
        return Err(no_kms());
    }
    if let Some(id) = &body.instance_id {
        return Err(no_server(id));
    }
    if let Some(id) = &body.volume_id {
        return Err(invalid(format!("The volume {id} does not exist.")));
    }
    if let Some(disks) = &body.data_images {
        let first = disks
            .first()
            .ok_or_else(|| invalid("data_images is empty."))?;
        return Err(invalid(format!(
            "The volume {} ({}) does not exist.",
            first.volume_id, first.name
        )));
    }
    let Some(image_url) = &body.image_url else {
        return Err(invalid(
            "One of instance_id, image_url, volume_id or data_images is required.",
        ));
    };
    let env = virtual_env_type(body.kind.as_deref())?;
    let min_disk = body
        .min_disk
        .ok_or_else(|| invalid("min_disk is required."))?;
    check_disk_gb("min_disk", min_disk, SYSTEM_DISK_GB)?;
    if body.is_quick_import == Some(true) && body.os_version.is_none() {
        return Err(invalid("os_version is required for a quick import."));
    }
    let spec = ImsImageSpec {
        name,
        description: body.description.clone(),
        os_version: body.os_version.clone(),
        virtual_env_type: env.into(),
        architecture: body.architecture.clone(),
        hw_firmware_type: body.hw_firmware_type.clone(),
        min_disk,
        min_ram: body.min_ram.unwrap_or(0),
        max_ram: body.max_ram,
        disk_format: if env == "IsoImage" { "iso" } else { "qcow2" }.into(),
        tags: body_tags(&body.tags, &body.image_tags)?,
        data_origin: Some(format!("file,{image_url}")),
        original_image: None,
        enterprise_project_id: body.enterprise_project()?,
    };
    let how = ImportKind {
        job_type: "imsImportImageJob",
        quick: false,
        data_disk: false,
    };
    start_import(&state, &caller, spec, image_url, how).await
}

pub async fn import_quick(
    State(state): State<SharedState>,
    ImsCaller(caller): ImsCaller,
    body: Bytes,
) -> ImsResult<Response> {
    let body: CreateImageBody = parse_body(&body)?;
    let name = body
        .name
        .clone()
        .ok_or_else(|| invalid("name is required."))?;
    check_name(&name)?;
    let os_version = body
        .os_version
        .clone()
        .ok_or_else(|| invalid("os_version is required."))?;
    let image_url = body
        .image_url
        .clone()
        .ok_or_else(|| invalid("image_url is required."))?;
    let min_disk = body
        .min_disk
        .ok_or_else(|| invalid("min_disk is required."))?;
    check_disk_gb("min_disk", min_disk, QUICK_IMPORT_DISK_GB)?;
    let env = virtual_env_type(body.kind.as_deref())?;
    let spec = ImsImageSpec {
        name,
        description: body.description.clone(),
        os_version: Some(os_version),
        virtual_env_type: env.into(),
        architecture: body.architecture.clone(),
        hw_firmware_type: body.hw_firmware_type.clone(),
        min_disk,
        min_ram: 0,
        max_ram: None,
        // RAW or ZVHD2 on the wire; recorded as raw until the import detects the format.
        disk_format: "raw".into(),
        tags: body_tags(&body.tags, &body.image_tags)?,
        data_origin: Some(format!("file,{image_url}")),
        original_image: None,
        enterprise_project_id: body.enterprise_project()?,
    };
    let _ = body.os_type;
    let how = ImportKind {
        job_type: "imsImportImageJob",
        quick: true,
        data_disk: false,
    };
    start_import(&state, &caller, spec, &image_url, how).await
}

pub async fn create_data_image(
    State(state): State<SharedState>,
    ImsCaller(caller): ImsCaller,
    body: Bytes,
) -> ImsResult<Response> {
    let body: CreateImageBody = parse_body(&body)?;
    let name = body
        .name
        .clone()
        .ok_or_else(|| invalid("name is required."))?;
    check_name(&name)?;
    if body.cmk_id.is_some() {
        return Err(no_kms());
    }
    let image_url = body
        .image_url
        .clone()
        .ok_or_else(|| invalid("image_url is required."))?;
    let min_disk = body
        .min_disk
        .ok_or_else(|| invalid("min_disk is required."))?;
    check_disk_gb("min_disk", min_disk, DATA_DISK_GB)?;
    let windows = body.os_type.as_deref() == Some("Windows");
    let spec = ImsImageSpec {
        name,
        description: body.description.clone(),
        os_version: Some(
            if windows {
                "Other Windows(64 bit)"
            } else {
                "Other Linux(64 bit)"
            }
            .into(),
        ),
        virtual_env_type: "DataImage".into(),
        min_disk,
        disk_format: "qcow2".into(),
        tags: body_tags(&body.tags, &body.image_tags)?,
        data_origin: Some(format!("file,{image_url}")),
        enterprise_project_id: body.enterprise_project()?,
        ..Default::default()
    };
    let how = ImportKind {
        job_type: "imsImportDataImageJob",
        quick: false,
        data_disk: true,
    };
    start_import(&state, &caller, spec, &image_url, how).await
}

#[derive(Deserialize)]
struct WholeImageBody {
    name: Option<String>,
    instance_id: Option<String>,
    backup_id: Option<String>,
    whole_image_type: Option<String>,
    vault_id: Option<String>,
}

pub async fn create_whole_image(ImsCaller(_caller): ImsCaller, body: Bytes) -> ImsResult<Response> {
    let body: WholeImageBody = parse_body(&body)?;
    check_name(
        body.name
            .as_deref()
            .ok_or_else(|| invalid("name is required."))?,
    )?;
    if let Some(id) = &body.instance_id {
        return Err(no_server(id));
    }
    let backup = body
        .backup_id
        .as_deref()
        .ok_or_else(|| invalid("One of instance_id or backup_id is required."))?;
    if body.whole_image_type.as_deref() == Some("CBR") && body.vault_id.is_none() {
        return Err(invalid("vault_id is required for a CBR backup."));
    }
    Err(invalid(format!("The backup {backup} does not exist.")))
}

#[derive(Deserialize)]
struct RegisterBody {
    image_url: String,
}

pub async fn register_image(
    State(state): State<SharedState>,
    ImsCaller(caller): ImsCaller,
    Path(image_id): Path<String>,
    body: Bytes,
) -> ImsResult<Response> {
    let id = parse_image_id(&image_id)?;
    let body: RegisterBody = parse_body(&body)?;
    let source = BucketObject::parse(&body.image_url)?;
    let extension = source
        .object
        .rsplit('.')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    if source.object.contains('.') && !IMPORT_FORMATS.contains(&extension.as_str()) {
        return Err(invalid(format!(
            "The file format {extension} cannot be registered."
        )));
    }
    let cloud = &state.app.cloud_images;
    let image = cloud.owned_image(&caller, id).await?;
    if image.status != ImageStatus::Queued {
        return Err(invalid(
            "Only images waiting for their file (queued) can be registered.",
        ));
    }
    let name = image.name.clone().unwrap_or_default();
    let params = ImportParams {
        source,
        quick: false,
        data_disk: image.properties.get("virtual_env_type").map(String::as_str)
            == Some("DataImage"),
        owns_image: false,
    };
    let job = ImsJob {
        kind: ImsJobKind::ImportFromBucket,
        job_type: "imsNativeImportImageJob",
        entities: json!({"image_id": id.to_string(), "image_name": name}),
        params: params.to_json(),
        image_id: Some(id),
    };
    let job = cloud.submit_job(&caller, job).await?;
    Ok(job_created(job))
}

#[derive(Deserialize)]
struct CopyBody {
    name: String,
    description: Option<String>,
    cmk_id: Option<String>,
    enterprise_project_id: Option<String>,
}

pub async fn copy_in_region(
    State(state): State<SharedState>,
    ImsCaller(caller): ImsCaller,
    Path(image_id): Path<String>,
    body: Bytes,
) -> ImsResult<Response> {
    let id = parse_image_id(&image_id)?;
    let body: CopyBody = parse_body(&body)?;
    check_name(&body.name)?;
    if let Some(d) = &body.description {
        check_description(d)?;
    }
    if body.cmk_id.is_some() {
        return Err(no_kms());
    }
    if let Some(ep) = &body.enterprise_project_id {
        check_enterprise_project(ep)?;
    }
    let cloud = state.app.cloud_images.clone();
    // Validate before the job so refusals are immediate 400s, as IMS does.
    let source = state.app.images.get(&caller, id).await?;
    if source.status != ImageStatus::Active {
        return Err(invalid("Only active images can be copied."));
    }
    cloud.check_quota(&caller).await?;
    // Fixed before the job runs, so a re-run after a crash finds the copy it made.
    let target = uuid::Uuid::new_v4();
    let job = ImsJob {
        kind: ImsJobKind::CopyInRegion,
        job_type: "imsCopyImageInRegionJob",
        entities: json!({"image_name": body.name, "image_id": target.to_string()}),
        params: json!({
            "source_id": id.to_string(),
            "target_id": target.to_string(),
            "name": body.name,
            "description": body.description,
            "enterprise_project_id": body.enterprise_project_id,
        }),
        image_id: None,
    };
    let job = cloud.submit_job(&caller, job).await?;
    Ok(job_created(job))
}

#[derive(Deserialize)]
struct CrossRegionBody {
    name: String,
    region: String,
    project_name: String,
    agency_name: String,
    description: Option<String>,
    vault_id: Option<String>,
}

pub async fn copy_cross_region(
    State(state): State<SharedState>,
    ImsCaller(caller): ImsCaller,
    Path(image_id): Path<String>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> ImsResult<Response> {
    let id = parse_image_id(&image_id)?;
    let body: CrossRegionBody = parse_body(&body)?;
    check_name(&body.name)?;
    if let Some(d) = &body.description {
        check_description(d)?;
    }
    if body.project_name.is_empty() || body.agency_name.is_empty() {
        return Err(invalid("project_name and agency_name are required."));
    }
    if let Some(vault) = &body.vault_id {
        return Err(invalid(format!(
            "The vault {vault} does not exist: whole images need a backup service."
        )));
    }
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let request = CrossRegionRequest {
        name: body.name,
        description: body.description,
        region: body.region,
        project_name: body.project_name,
        agency_name: body.agency_name,
    };
    let job = state
        .app
        .cross_region
        .submit(&caller, id, request, request_id)
        .await?;
    Ok(job_created(job))
}

#[derive(Deserialize)]
struct ExportBody {
    bucket_url: String,
    file_format: Option<String>,
    is_quick_export: Option<bool>,
}

pub async fn export_image(
    State(state): State<SharedState>,
    ImsCaller(caller): ImsCaller,
    Path(image_id): Path<String>,
    body: Bytes,
) -> ImsResult<Response> {
    let id = parse_image_id(&image_id)?;
    let body: ExportBody = parse_body(&body)?;
    let target = BucketObject::parse(&body.bucket_url)?;
    let format = match (body.is_quick_export, body.file_format.as_deref()) {
        (Some(true), Some(_)) => {
            return Err(invalid("A quick export cannot name a file_format."));
        }
        (Some(true), None) => None,
        (_, Some(f)) => Some(export_format(f)?),
        (_, None) => return Err(invalid("file_format is required.")),
    };
    let cloud = &state.app.cloud_images;
    let image = cloud.owned_image(&caller, id).await?;
    check_exportable(&image, format.is_none())?;
    let name = image.name.clone().unwrap_or_default();
    let params = ExportParams {
        image_id: id,
        target,
        format,
    };
    let job = ImsJob {
        kind: ImsJobKind::ExportToBucket,
        job_type: "imsNativeExportImageJob",
        entities: json!({"image_id": id.to_string(), "image_name": name}),
        params: params.to_json(),
        image_id: Some(id),
    };
    let job = cloud.submit_job(&caller, job).await?;
    Ok(job_created(job))
}
