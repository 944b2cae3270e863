//! The IMS (Huawei Cloud Image Management Service) operations over the same images the Glance
//! API serves: the `__*` properties the service maintains, jobs, batch sharing, key/value tags,
//! in-region copies that share data, quotas and the OS version list.
//!
//! Key/value tags are stored as the image's Glance tags in the form `key=value` (Glance tags of
//! the IMS dialect may not contain `=`, so the two kinds never collide); both APIs see them.
//!
//! Jobs are durable `ims-jobs` jobs run by workers ([`crate::cloudjobs`]); the bucket jobs
//! (import from and export to a user's bucket) are [`crate::bucketjobs`].

use std::collections::BTreeMap;
use std::sync::Arc;

use ims_blob::buckets::Buckets;
use ims_domain::os_catalog::{self, CatalogOsType};
use ims_domain::{Caller, ErrorKind, Image, ImageStatus, MemberStatus, Visibility};
use ims_jobs::JobStore;
use ims_jobs::runner::Waker;
use ims_meta::cloudimages::CloudImageStore;
use serde_json::{Value, json};

use crate::config::ImsConfig;
use crate::conversion::ConversionService;
use crate::error::{ServiceError, ServiceResult};
use crate::images::ImageService;

/// Seed table 5-3: an image may be shared with at most 128 projects.
pub const MAX_SHARE_PROJECTS: usize = 128;
/// Seed: whole-machine images may be shared with at most 10 projects.
pub const MAX_WHOLE_IMAGE_SHARE_PROJECTS: usize = 10;
/// Tags per image (TMS rule the SDK documents).
pub const MAX_TAGS_PER_IMAGE: usize = 10;
/// Longest tag key (TMS).
pub const MAX_TAG_KEY_LEN: usize = 36;
/// Longest tag value (TMS).
pub const MAX_TAG_VALUE_LEN: usize = 43;
/// Longest IMS image name (IMG.0002).
pub const MAX_NAME_LEN: usize = 128;
/// Longest IMS description (IMG.0004).
pub const MAX_DESCRIPTION_LEN: usize = 1024;
/// `min_disk` range for system-disk images from a file (seed table 5-1: 40–1024 GB).
pub const SYSTEM_DISK_GB: (i64, i64) = (40, 1024);
/// `min_disk` range for data-disk images (40–2048 GB).
pub const DATA_DISK_GB: (i64, i64) = (40, 2048);
/// `min_disk` range for quick import (1–1024 GB).
pub const QUICK_IMPORT_DISK_GB: (i64, i64) = (1, 1024);
/// Images in one batch member request.
pub const MAX_BATCH_IMAGES: usize = 100;

/// The property holding an image's enterprise project; absent means the default one.
pub const ENTERPRISE_PROJECT_PROPERTY: &str = "enterprise_project_id";
/// The default enterprise project's id.
pub const DEFAULT_ENTERPRISE_PROJECT: &str = "0";
/// The `enterprise_project_id` list filter that matches every enterprise project.
pub const ALL_ENTERPRISE_PROJECTS: &str = "all_granted_eps";

/// The property keys the service owns; `update_image` may not set them.
const SERVICE_PROPERTIES: &[&str] = &[
    "__imagetype",
    "__isregistered",
    "__os_type",
    "__os_bit",
    "__platform",
    "__image_size",
    "__originalimagename",
    "__root_origin",
    "__data_origin",
    "__image_source_type",
    "__system__cmkid",
    crate::guest::OS_PLACEHOLDERS_PROPERTY,
    ENTERPRISE_PROJECT_PROPERTY,
];

/// Job states as the job queries report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Init,
    Running,
    Success,
    Fail,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Init => "INIT",
            JobStatus::Running => "RUNNING",
            JobStatus::Success => "SUCCESS",
            JobStatus::Fail => "FAIL",
        }
    }
}

pub struct CloudImageService {
    images: Arc<ImageService>,
    config: ImsConfig,
    jobs: Arc<dyn JobStore>,
    waker: Waker,
    /// Users' buckets, when configured; bucket jobs fail with [`object_storage_unavailable`]
    /// otherwise.
    buckets: Option<Arc<Buckets>>,
    conversion: Arc<ConversionService>,
    /// IMS job records of cross-region copies submitted before they moved onto the queue: read
    /// only, for those jobs' views.
    records: Arc<dyn CloudImageStore>,
}

/// A validated key/value tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvTag {
    pub key: String,
    pub value: String,
}

impl KvTag {
    /// Checks the TMS rules: key 1–36 characters, value 0–43, letters (any script), digits,
    /// `_`, `-` (values also `.`), no `=`.
    pub fn new(key: &str, value: &str) -> ServiceResult<KvTag> {
        let key_ok = |c: char| c.is_alphanumeric() || c == '_' || c == '-';
        if key.is_empty() || key.chars().count() > MAX_TAG_KEY_LEN || !key.chars().all(key_ok) {
            return Err(ServiceError::invalid(format!(
                "Tag key '{key}' is invalid: 1 to {MAX_TAG_KEY_LEN} letters, digits, '_' or '-'"
            )));
        }
        if value.chars().count() > MAX_TAG_VALUE_LEN
            || !value.chars().all(|c| key_ok(c) || c == '.')
        {
            return Err(ServiceError::invalid(format!(
                "Tag value '{value}' is invalid: up to {MAX_TAG_VALUE_LEN} letters, digits, '_', '-' or '.'"
            )));
        }
        Ok(KvTag {
            key: key.to_string(),
            value: value.to_string(),
        })
    }

    /// The legacy `"key.value"` form (split at the first `.`).
    pub fn parse_dotted(s: &str) -> ServiceResult<KvTag> {
        match s.split_once('.') {
            Some((k, v)) => KvTag::new(k, v),
            None => KvTag::new(s, ""),
        }
    }

    fn stored(&self) -> String {
        format!("{}={}", self.key, self.value)
    }
}

/// The key/value tags of an image (its Glance tags of the form `key=value`).
pub fn kv_tags(image: &Image) -> Vec<KvTag> {
    image
        .tags
        .iter()
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| KvTag {
            key: k.to_string(),
            value: v.to_string(),
        })
        .collect()
}

fn set_kv_tag(image: &mut Image, tag: &KvTag) -> ServiceResult<()> {
    let existing: Vec<String> = image
        .tags
        .iter()
        .filter(|t| t.split_once('=').is_some_and(|(k, _)| k == tag.key))
        .cloned()
        .collect();
    for old in &existing {
        image.tags.remove(old);
    }
    if existing.is_empty() && kv_tags(image).len() >= MAX_TAGS_PER_IMAGE {
        return Err(ServiceError::new(
            ErrorKind::QuotaExceeded,
            format!("An image may carry at most {MAX_TAGS_PER_IMAGE} tags"),
        ));
    }
    image.tags.insert(tag.stored());
    Ok(())
}

fn remove_kv_tag(image: &mut Image, key: &str) -> bool {
    let existing: Vec<String> = image
        .tags
        .iter()
        .filter(|t| t.split_once('=').is_some_and(|(k, _)| k == key))
        .cloned()
        .collect();
    for old in &existing {
        image.tags.remove(old);
    }
    !existing.is_empty()
}

/// `__imagetype` of `image` as `caller` sees it.
pub fn image_type(caller: &Caller, image: &Image) -> &'static str {
    if image.properties.get("__imagetype").map(String::as_str) == Some("market") {
        return "market";
    }
    if image.visibility == Visibility::Public {
        return "gold";
    }
    if image.owner.as_deref() == Some(caller.project_id.as_str()) {
        return "private";
    }
    "shared"
}

/// Validates an IMS image name (IMG.0002/IMG.0003 rules).
pub fn check_name(name: &str) -> ServiceResult<()> {
    if name.is_empty() || name.chars().count() > MAX_NAME_LEN {
        return Err(ServiceError::invalid(format!(
            "The image name must be 1 to {MAX_NAME_LEN} characters."
        )));
    }
    let ok = |c: char| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | ' ');
    if !name.chars().all(ok) || name.starts_with(' ') || name.ends_with(' ') {
        return Err(ServiceError::invalid("The image name format is invalid."));
    }
    Ok(())
}

/// Validates an `enterprise_project_id` of a request body: `"0"` or a UUID.
pub fn check_enterprise_project(id: &str) -> ServiceResult<()> {
    if id == DEFAULT_ENTERPRISE_PROJECT || uuid::Uuid::parse_str(id).is_ok() {
        return Ok(());
    }
    Err(ServiceError::invalid(format!(
        "enterprise_project_id '{id}' is neither \"0\" nor a UUID."
    )))
}

/// The enterprise project of an image (`"0"` when it names none).
pub fn enterprise_project(image: &Image) -> &str {
    image
        .properties
        .get(ENTERPRISE_PROJECT_PROPERTY)
        .map(String::as_str)
        .unwrap_or(DEFAULT_ENTERPRISE_PROJECT)
}

/// Validates an IMS description (IMG.0004 rules).
pub fn check_description(description: &str) -> ServiceResult<()> {
    if description.chars().count() > MAX_DESCRIPTION_LEN {
        return Err(ServiceError::invalid(format!(
            "The description contains more than {MAX_DESCRIPTION_LEN} characters."
        )));
    }
    if description.contains(['\n', '\r', '<', '>']) {
        return Err(ServiceError::invalid(
            "The description may not contain line breaks, '<' or '>'.",
        ));
    }
    Ok(())
}

/// Checks `value` against an inclusive GB range.
pub fn check_disk_gb(field: &str, value: i64, (min, max): (i64, i64)) -> ServiceResult<()> {
    if !(min..=max).contains(&value) {
        return Err(ServiceError::invalid(format!(
            "{field} must be between {min} and {max} GB."
        )));
    }
    Ok(())
}

/// What an IMS-born image declares about itself.
#[derive(Debug, Clone, Default)]
pub struct ImsImageSpec {
    pub name: String,
    pub description: Option<String>,
    pub os_version: Option<String>,
    /// `FusionCompute` (ECS), `Ironic` (BMS), `DataImage`, `IsoImage`.
    pub virtual_env_type: String,
    pub architecture: Option<String>,
    pub hw_firmware_type: Option<String>,
    pub min_disk: i64,
    pub min_ram: i64,
    pub max_ram: Option<i64>,
    pub disk_format: String,
    pub tags: Vec<KvTag>,
    pub data_origin: Option<String>,
    pub original_image: Option<String>,
    /// The enterprise project (a UUID); `None` or `"0"` is the default project.
    pub enterprise_project_id: Option<String>,
}

/// What a declared `__os_version` stands for: the catalogue's entry, or `Other Linux(64 bit)` /
/// `Other Windows(..)` for a version outside the seed's lists (seed §7.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsFacts {
    pub os_version: String,
    pub platform: &'static str,
    pub os_type: &'static str,
    pub os_bit: u8,
    /// The end of support (§6) as `YYYY-MM-DD`, when the seed gives one.
    pub end_of_support: Option<String>,
}

pub fn os_facts(declared: Option<&str>) -> OsFacts {
    if let Some(entry) = declared.and_then(os_catalog::find_by_name) {
        let end_of_support = entry.end_of_life().map(|eol| match eol {
            os_catalog::EndOfLife::On(date) => date.to_string(),
            os_catalog::EndOfLife::Stopped => "stopped".to_string(),
        });
        return OsFacts {
            os_version: entry.name.clone(),
            platform: entry.platform,
            os_type: entry.os_type.as_str(),
            os_bit: entry.bits,
            end_of_support,
        };
    }
    let lower = declared.unwrap_or_default().to_ascii_lowercase();
    let os_type = if lower.contains("windows") {
        CatalogOsType::Windows
    } else {
        CatalogOsType::Linux
    };
    let bits = if lower.contains("32") { 32 } else { 64 };
    OsFacts {
        os_version: os_catalog::other_name(os_type, bits),
        platform: if os_type == CatalogOsType::Windows {
            "Windows"
        } else {
            "Other"
        },
        os_type: os_type.as_str(),
        os_bit: bits,
        end_of_support: None,
    }
}

/// The `__*` properties that follow from a spec.
pub fn service_properties(spec: &ImsImageSpec) -> BTreeMap<String, String> {
    let os = os_facts(spec.os_version.as_deref());
    let mut p = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        p.insert(k.to_string(), v);
    };
    put("__imagetype", "private".into());
    put("__isregistered", "true".into());
    put("__os_version", os.os_version.clone());
    put("__platform", os.platform.to_string());
    put("__os_type", os.os_type.to_string());
    put("__os_bit", os.os_bit.to_string());
    put("__image_source_type", "uds".into());
    put("__root_origin", "file".into());
    put("__lazyloading", "false".into());
    put("__support_kvm", "true".into());
    put("virtual_env_type", spec.virtual_env_type.clone());
    let arm = spec.architecture.as_deref() == Some("arm");
    put("__support_arm", arm.to_string());
    put("architecture", if arm { "arm" } else { "x86" }.into());
    // Arm forces UEFI; otherwise the declared mode, else BIOS.
    let firmware = if arm {
        "uefi".to_string()
    } else {
        spec.hw_firmware_type
            .clone()
            .unwrap_or_else(|| "bios".into())
    };
    put("hw_firmware_type", firmware);
    if let Some(d) = &spec.description {
        put("__description", d.clone());
    }
    if let Some(m) = spec.max_ram {
        put("max_ram", m.to_string());
    }
    if let Some(o) = &spec.data_origin {
        put("__data_origin", o.clone());
    }
    if let Some(o) = &spec.original_image {
        put("__originalimagename", o.clone());
    }
    if let Some(ep) = spec
        .enterprise_project_id
        .as_ref()
        .filter(|ep| ep.as_str() != DEFAULT_ENTERPRISE_PROJECT)
    {
        put(ENTERPRISE_PROJECT_PROPERTY, ep.clone());
    }
    if let Some(eol) = os.end_of_support {
        put("__os_end_of_support", eol);
    }
    // What the user did not state is a placeholder the guest hook replaces once data arrives.
    let mut placeholders = Vec::new();
    if spec.os_version.is_none() {
        placeholders.push("__os_version");
    }
    if spec.architecture.is_none() {
        placeholders.push("architecture");
    }
    if spec.hw_firmware_type.is_none() && !arm {
        placeholders.push("hw_firmware_type");
    }
    if let Some(v) = crate::guest::placeholders_value(&placeholders) {
        put(crate::guest::OS_PLACEHOLDERS_PROPERTY, v);
    }
    p
}

/// Whether a patch may change a property (the service owns the others).
pub fn is_service_property(key: &str) -> bool {
    SERVICE_PROPERTIES.contains(&key)
}

impl CloudImageService {
    /// Legacy IMS job records (cross-region copies of earlier versions), read only.
    pub(crate) fn records(&self) -> &Arc<dyn CloudImageStore> {
        &self.records
    }

    pub fn new(
        images: Arc<ImageService>,
        config: ImsConfig,
        jobs: Arc<dyn JobStore>,
        waker: Waker,
        buckets: Option<Arc<Buckets>>,
        conversion: Arc<ConversionService>,
        records: Arc<dyn CloudImageStore>,
    ) -> CloudImageService {
        CloudImageService {
            images,
            config,
            jobs,
            waker,
            buckets,
            conversion,
            records,
        }
    }

    pub fn images(&self) -> &Arc<ImageService> {
        &self.images
    }

    pub fn config(&self) -> &ImsConfig {
        &self.config
    }

    /// The queue IMS jobs live in.
    pub fn jobs(&self) -> &Arc<dyn JobStore> {
        &self.jobs
    }

    /// Tells this node's idle workers a job was submitted.
    pub(crate) fn wake_workers(&self) {
        self.waker.wake();
    }

    /// The users' buckets, or the IMS error that says none are configured (`action` is what
    /// the job would have done, e.g. "read bucket:object").
    pub fn buckets(&self, action: &str) -> ServiceResult<&Arc<Buckets>> {
        self.buckets
            .as_ref()
            .ok_or_else(|| object_storage_unavailable(action))
    }

    pub fn conversion(&self) -> &Arc<ConversionService> {
        &self.conversion
    }

    /// Private images the project owns, for the quota (seed table 5-1).
    pub async fn private_image_count(&self, project_id: &str) -> ServiceResult<i64> {
        Ok(self.images.usage(project_id).await?.image_count_total)
    }

    /// Refuses a new image when the project is at its quota.
    pub async fn check_quota(&self, caller: &Caller) -> ServiceResult<()> {
        let used = self.private_image_count(&caller.project_id).await?;
        if used >= self.config.private_image_quota as i64 {
            return Err(ServiceError::new(
                ErrorKind::QuotaExceeded,
                format!(
                    "The image quota is exceeded: a project may own {} private images.",
                    self.config.private_image_quota
                ),
            ));
        }
        Ok(())
    }

    /// Creates a queued IMS image from a spec (the first step of every creating job).
    pub async fn create_image(&self, caller: &Caller, spec: &ImsImageSpec) -> ServiceResult<Image> {
        use crate::patch::AttrValue;
        self.check_quota(caller).await?;
        let attrs = vec![
            ("name".to_string(), AttrValue::Str(spec.name.clone())),
            (
                "disk_format".to_string(),
                AttrValue::Str(spec.disk_format.clone()),
            ),
            (
                "container_format".to_string(),
                AttrValue::Str("bare".into()),
            ),
            ("visibility".to_string(), AttrValue::Str("private".into())),
            ("min_disk".to_string(), AttrValue::Int(spec.min_disk)),
            ("min_ram".to_string(), AttrValue::Int(spec.min_ram)),
        ];
        let image = self.images.create(caller, &attrs).await?;
        let properties = service_properties(spec);
        let tags: Vec<String> = spec.tags.iter().map(KvTag::stored).collect();
        self.images
            .mutate(image.id, |img| {
                img.properties.extend(properties.clone());
                img.tags.extend(tags.iter().cloned());
                Ok(())
            })
            .await
    }

    /// Fills in the service-maintained properties of an image created through the Glance
    /// dialect with `__os_version` (Huawei's `glance_create_image_metadata`).
    pub async fn complete_glance_image(&self, image: &Image) -> ServiceResult<Image> {
        let spec = ImsImageSpec {
            os_version: image.properties.get("__os_version").cloned(),
            virtual_env_type: "FusionCompute".into(),
            ..Default::default()
        };
        let mut properties = service_properties(&spec);
        properties.remove("__root_origin");
        properties.remove(crate::guest::OS_PLACEHOLDERS_PROPERTY);
        self.images
            .mutate(image.id, |img| {
                // Architecture and boot mode the user did not give are placeholders until the
                // data is inspected (`__os_version` was given: that is what makes this call).
                let placeholders: Vec<&str> = ["architecture", "hw_firmware_type"]
                    .into_iter()
                    .filter(|k| !img.properties.contains_key(*k))
                    .collect();
                for (k, v) in &properties {
                    img.properties.entry(k.clone()).or_insert_with(|| v.clone());
                }
                if let Some(v) = crate::guest::placeholders_value(&placeholders) {
                    img.properties
                        .insert(crate::guest::OS_PLACEHOLDERS_PROPERTY.to_string(), v);
                }
                Ok(())
            })
            .await
    }

    /// The guest hook of the IMS API's imports: once an imported image's data is durable
    /// (status `active`), call this to read the OS inside and fill `__os_type`, `__os_version`,
    /// `__os_bit`, `__platform`, `hw_firmware_type`, `architecture` and `__is_config_init`
    /// where the user gave no value (see [`crate::guest`]). Bounded in time and bytes; an
    /// inspection that finds nothing leaves the placeholders. Returns the keys set.
    pub async fn inspect_imported_image(
        &self,
        image_id: uuid::Uuid,
    ) -> ServiceResult<Vec<&'static str>> {
        self.images.inspect_guest(image_id).await
    }

    /// The image if the caller owns it (404 otherwise, like IMS).
    pub async fn owned_image(&self, caller: &Caller, id: uuid::Uuid) -> ServiceResult<Image> {
        self.images.owned(caller, id, "modify_image").await
    }

    /// `copy_image_in_region`: a new image `target_id` that shares the source's data (no byte is
    /// copied; the blob is reference-counted by the images that name it). Idempotent: the job
    /// fixes `target_id` before the first attempt, so a re-run after a crash finds the copy an
    /// earlier attempt created (finished, or still `queued` without its data) instead of making
    /// a second one.
    pub async fn copy_in_region(
        &self,
        caller: &Caller,
        source_id: uuid::Uuid,
        target_id: uuid::Uuid,
        name: &str,
        description: Option<&str>,
        enterprise_project_id: Option<&str>,
    ) -> ServiceResult<Image> {
        let earlier = self.images.meta.get_image(target_id).await?;
        if let Some(copy) = &earlier {
            if copy.status == ImageStatus::Deleted
                || copy.owner.as_deref() != Some(caller.project_id.as_str())
            {
                return Err(ServiceError::conflict(format!(
                    "Image {target_id} of this copy was deleted or belongs to another project."
                )));
            }
            if copy.status != ImageStatus::Queued {
                // An earlier attempt finished the copy and stopped before recording success.
                return Ok(copy.clone());
            }
        }
        let source = self.images.get(caller, source_id).await?;
        if source.status != ImageStatus::Active {
            return Err(ServiceError::invalid("Only active images can be copied."));
        }
        if source.properties.contains_key("__system__cmkid") {
            return Err(ServiceError::new(
                ErrorKind::Unsupported,
                "Encrypted images cannot be copied without KMS.",
            ));
        }
        if image_type(caller, &source) == "market" {
            return Err(ServiceError::forbidden("Market images cannot be copied."));
        }
        let copy = match earlier {
            Some(copy) => copy,
            None => {
                self.check_quota(caller).await?;
                self.create_copy_record(caller, &source, target_id, name)
                    .await?
            }
        };
        let mut properties = source.properties.clone();
        properties.insert("__imagetype".into(), "private".into());
        properties.insert("__originalimagename".into(), source.id.to_string());
        properties.insert("__data_origin".into(), format!("image,{}", source.id));
        match description {
            Some(d) => properties.insert("__description".into(), d.to_string()),
            None => properties.remove("__description"),
        };
        match enterprise_project_id.filter(|ep| *ep != DEFAULT_ENTERPRISE_PROJECT) {
            Some(ep) => properties.insert(ENTERPRISE_PROJECT_PROPERTY.into(), ep.to_string()),
            None => properties.remove(ENTERPRISE_PROJECT_PROPERTY),
        };
        let data = source.data.clone();
        self.images
            .mutate(copy.id, |img| {
                img.properties = properties.clone();
                img.data = data.clone();
                if img.data.is_some() {
                    img.transition(ImageStatus::Active)?;
                }
                Ok(())
            })
            .await
    }

    /// The `queued` record of an in-region copy, with the source's formats and requirements.
    async fn create_copy_record(
        &self,
        caller: &Caller,
        source: &Image,
        target_id: uuid::Uuid,
        name: &str,
    ) -> ServiceResult<Image> {
        use crate::patch::AttrValue;
        let attrs = vec![
            ("id".to_string(), AttrValue::Str(target_id.to_string())),
            ("name".to_string(), AttrValue::Str(name.to_string())),
            (
                "disk_format".to_string(),
                AttrValue::Str(source.disk_format.clone().unwrap_or_else(|| "raw".into())),
            ),
            (
                "container_format".to_string(),
                AttrValue::Str(
                    source
                        .container_format
                        .clone()
                        .unwrap_or_else(|| "bare".into()),
                ),
            ),
            ("visibility".to_string(), AttrValue::Str("private".into())),
            ("min_disk".to_string(), AttrValue::Int(source.min_disk)),
            ("min_ram".to_string(), AttrValue::Int(source.min_ram)),
        ];
        self.images.create(caller, &attrs).await
    }

    /// Applies an IMS member batch for one image; returns the per-project results.
    pub async fn add_members(
        &self,
        caller: &Caller,
        image_id: uuid::Uuid,
        projects: &[String],
    ) -> ServiceResult<Vec<Value>> {
        let image = self.owned_image(caller, image_id).await?;
        check_shareable(&image)?;
        let limit = if image.properties.contains_key("__backup_id") {
            MAX_WHOLE_IMAGE_SHARE_PROJECTS
        } else {
            MAX_SHARE_PROJECTS
        };
        if image.visibility == Visibility::Private {
            self.images
                .mutate(image_id, |img| {
                    img.visibility = Visibility::Shared;
                    Ok(())
                })
                .await?;
        }
        let existing = self.images.list_members(caller, image_id).await?;
        let new: Vec<&String> = projects
            .iter()
            .filter(|p| !existing.iter().any(|m| &m.member_id == *p))
            .collect();
        if existing.len() + new.len() > limit {
            return Err(ServiceError::new(
                ErrorKind::QuotaExceeded,
                format!("An image may be shared with at most {limit} projects."),
            ));
        }
        let mut results = Vec::new();
        for project in projects {
            if project == &caller.project_id {
                return Err(ServiceError::invalid(
                    "An image cannot be shared with its own project.",
                ));
            }
            if !new.contains(&project) {
                results.push(json!({"image_id": image_id.to_string(), "project_id": project, "status": "success"}));
                continue;
            }
            self.images.add_member(caller, image_id, project).await?;
            results.push(
                json!({"image_id": image_id.to_string(), "project_id": project, "status": "success"}),
            );
        }
        Ok(results)
    }

    pub async fn delete_members(
        &self,
        caller: &Caller,
        image_id: uuid::Uuid,
        projects: &[String],
    ) -> ServiceResult<Vec<Value>> {
        let mut results = Vec::new();
        for project in projects {
            self.images.delete_member(caller, image_id, project).await?;
            results.push(
                json!({"image_id": image_id.to_string(), "project_id": project, "status": "success"}),
            );
        }
        Ok(results)
    }

    /// The recipient accepts or rejects an image shared with its project.
    pub async fn answer_member(
        &self,
        caller: &Caller,
        image_id: uuid::Uuid,
        project_id: &str,
        status: MemberStatus,
    ) -> ServiceResult<Value> {
        if project_id != caller.project_id {
            return Err(ServiceError::forbidden(
                "Only the project an image is shared with may answer for it.",
            ));
        }
        self.images
            .update_member(caller, image_id, project_id, status)
            .await?;
        Ok(json!({"image_id": image_id.to_string(), "project_id": project_id, "status": "success"}))
    }

    // Tags.

    pub async fn set_tags(
        &self,
        caller: &Caller,
        image_id: uuid::Uuid,
        tags: &[KvTag],
    ) -> ServiceResult<Image> {
        self.owned_image(caller, image_id).await?;
        self.images
            .mutate(image_id, |img| {
                for tag in tags {
                    set_kv_tag(img, tag)?;
                }
                Ok(())
            })
            .await
    }

    /// Removes tags by key; `strict` makes a missing key a 404 (single delete).
    pub async fn remove_tags(
        &self,
        caller: &Caller,
        image_id: uuid::Uuid,
        keys: &[String],
        strict: bool,
    ) -> ServiceResult<Image> {
        self.owned_image(caller, image_id).await?;
        self.images
            .mutate(image_id, |img| {
                for key in keys {
                    if !remove_kv_tag(img, key) && strict {
                        return Err(ServiceError::not_found(format!("Tag {key} not found")));
                    }
                }
                Ok(())
            })
            .await
    }

    pub async fn image_tags(
        &self,
        caller: &Caller,
        image_id: uuid::Uuid,
    ) -> ServiceResult<Vec<KvTag>> {
        Ok(kv_tags(&self.images.get(caller, image_id).await?))
    }
}

/// Only active, unencrypted, non-market images may be shared (seed §4.2).
pub fn check_shareable(image: &Image) -> ServiceResult<()> {
    if image.status != ImageStatus::Active {
        return Err(ServiceError::invalid("Only active images can be shared."));
    }
    if image.properties.contains_key("__system__cmkid") {
        return Err(ServiceError::invalid("Encrypted images cannot be shared."));
    }
    if image.properties.get("__imagetype").map(String::as_str) == Some("market")
        || image.visibility == Visibility::Public
    {
        return Err(ServiceError::invalid(
            "Public and market images cannot be shared.",
        ));
    }
    Ok(())
}

/// Why a bucket import or export fails: this deployment has no object storage for user buckets.
/// `action` says what the job would have done, e.g. "read bucket:object".
pub fn object_storage_unavailable(action: &str) -> ServiceError {
    ServiceError::new(
        ErrorKind::Unavailable,
        format!("Object storage is not configured for this deployment: cannot {action}."),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> Image {
        Image::new(uuid::Uuid::nil(), Some("p1".into()), ims_domain::now())
    }

    #[test]
    fn tags_follow_the_tms_rules() {
        assert!(KvTag::new("env", "prod.1").is_ok());
        assert!(KvTag::new("键", "").is_ok());
        assert!(KvTag::new("", "x").is_err());
        assert!(KvTag::new("a=b", "x").is_err());
        assert!(KvTag::new(&"k".repeat(37), "x").is_err());
        assert!(KvTag::new("k", &"v".repeat(44)).is_err());
        assert_eq!(KvTag::parse_dotted("aaa.111").unwrap().value, "111");
    }

    #[test]
    fn at_most_ten_tags_and_keys_replace() {
        let mut img = image();
        img.tags.insert("plain".into());
        for i in 0..MAX_TAGS_PER_IMAGE {
            set_kv_tag(&mut img, &KvTag::new(&format!("k{i}"), "v").unwrap()).unwrap();
        }
        set_kv_tag(&mut img, &KvTag::new("k0", "new").unwrap()).unwrap();
        assert!(img.tags.contains("k0=new") && !img.tags.contains("k0=v"));
        let err = set_kv_tag(&mut img, &KvTag::new("k99", "v").unwrap()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::QuotaExceeded);
        assert_eq!(kv_tags(&img).len(), MAX_TAGS_PER_IMAGE);
        assert!(remove_kv_tag(&mut img, "k0"));
        assert!(!remove_kv_tag(&mut img, "k0"));
    }

    #[test]
    fn image_type_depends_on_the_viewer() {
        let mut img = image();
        let owner = Caller {
            user_id: "u".into(),
            project_id: "p1".into(),
            roles: Default::default(),
        };
        let other = Caller {
            project_id: "p2".into(),
            ..owner.clone()
        };
        assert_eq!(image_type(&owner, &img), "private");
        assert_eq!(image_type(&other, &img), "shared");
        img.visibility = Visibility::Public;
        assert_eq!(image_type(&other, &img), "gold");
    }

    #[test]
    fn properties_follow_the_os_version() {
        let spec = ImsImageSpec {
            name: "x".into(),
            os_version: Some("CentOS 7.6 64bit".into()),
            virtual_env_type: "FusionCompute".into(),
            architecture: Some("arm".into()),
            max_ram: Some(2048),
            ..Default::default()
        };
        let p = service_properties(&spec);
        assert_eq!(p["__platform"], "CentOS");
        assert_eq!(p["__os_bit"], "64");
        assert_eq!(p["hw_firmware_type"], "uefi");
        assert_eq!(p["max_ram"], "2048");
        assert_eq!(p["__os_end_of_support"], "2024-06-30");
        assert_eq!(
            os_facts(Some("TempleOS 5")).os_version,
            "Other Linux(64 bit)"
        );
        assert_eq!(os_facts(Some("Windows 95 32bit")).os_type, "Windows");
    }

    #[test]
    fn names_and_descriptions() {
        assert!(check_name("ims_test 1.0").is_ok());
        assert!(check_name(" lead").is_err());
        assert!(check_name(&"n".repeat(129)).is_err());
        assert!(check_description("a<b").is_err());
        assert!(check_disk_gb("min_disk", 39, SYSTEM_DISK_GB).is_err());
        assert!(check_disk_gb("min_disk", 2048, DATA_DISK_GB).is_ok());
    }
}
