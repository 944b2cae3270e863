//! Setting image attributes the way Glance's schema and JSON-patch semantics allow: which keys
//! are read-only or reserved, how values are typed, and what `add`/`replace`/`remove` mean in the
//! v2.0 and v2.1 patch dialects.

use std::collections::BTreeSet;

use ims_domain::image::{
    CONTAINER_FORMATS, DISK_FORMATS, MAX_PROPERTIES, MAX_STRING_LEN, MAX_TAGS, validate_tag,
};
use ims_domain::{Caller, Image, ImageStatus, Visibility, policy};

use crate::error::{ServiceError, ServiceResult};

/// A JSON value as the services need it; the HTTP layer converts from JSON.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Null,
    Bool(bool),
    Int(i64),
    Str(String),
    List(Vec<AttrValue>),
    /// Any other JSON value (float, object); carries the JSON type name for messages.
    Other(&'static str),
}

impl AttrValue {
    fn type_name(&self) -> &'static str {
        match self {
            AttrValue::Null => "null",
            AttrValue::Bool(_) => "boolean",
            AttrValue::Int(_) => "integer",
            AttrValue::Str(_) => "string",
            AttrValue::List(_) => "array",
            AttrValue::Other(t) => t,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    Add,
    Replace,
    Remove,
}

/// `application/openstack-images-v2.0-json-patch` (draft-4 style, used by tempest) or v2.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchDialect {
    V2_0,
    V2_1,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PatchOp {
    pub kind: PatchKind,
    /// The attribute (the pointer's single segment, unescaped).
    pub attr: String,
    pub value: Option<AttrValue>,
    /// Set for ops on `locations` (`/locations`, `/locations/<n|->`), which
    /// [`ImageService::update`](crate::images::ImageService::update) applies itself.
    pub location: Option<crate::locations::LocationPatch>,
}

/// Attributes the server owns.
const READ_ONLY: &[&str] = &[
    "created_at",
    "updated_at",
    "status",
    "checksum",
    "size",
    "virtual_size",
    "os_hash_algo",
    "os_hash_value",
    "direct_url",
    "self",
    "file",
    "schema",
    "stores",
    "locations",
];
/// Attributes no caller may set.
const RESERVED: &[&str] = &["location", "deleted", "deleted_at"];
/// Attributes of the image itself (not free-form properties).
const CORE: &[&str] = &[
    "id",
    "name",
    "visibility",
    "protected",
    "os_hidden",
    "owner",
    "container_format",
    "disk_format",
    "min_ram",
    "min_disk",
    "tags",
];

fn is_core(attr: &str) -> bool {
    CORE.contains(&attr) || READ_ONLY.contains(&attr)
}

fn check_writable(attr: &str) -> ServiceResult<()> {
    if READ_ONLY.contains(&attr) {
        return Err(ServiceError::forbidden(format!(
            "Attribute '{attr}' is read-only."
        )));
    }
    if RESERVED.contains(&attr) || attr.starts_with("os_glance") {
        return Err(ServiceError::forbidden(format!(
            "Attribute '{attr}' is reserved."
        )));
    }
    Ok(())
}

fn type_error(attr: &str, value: &AttrValue, want: &str) -> ServiceError {
    ServiceError::invalid(format!(
        "Provided object does not match schema 'image': {} is not of type '{want}' (attribute '{attr}', got {})",
        match value {
            AttrValue::Str(s) => format!("'{s}'"),
            other => other.type_name().to_string(),
        },
        value.type_name()
    ))
}

fn bounded_string(attr: &str, s: &str) -> ServiceResult<String> {
    if s.chars().count() > MAX_STRING_LEN {
        return Err(ServiceError::invalid(format!(
            "Provided object does not match schema 'image': '{attr}' is longer than {MAX_STRING_LEN} characters"
        )));
    }
    Ok(s.to_string())
}

fn opt_string(attr: &str, v: &AttrValue) -> ServiceResult<Option<String>> {
    match v {
        AttrValue::Null => Ok(None),
        AttrValue::Str(s) => bounded_string(attr, s).map(Some),
        other => Err(type_error(attr, other, "string")),
    }
}

fn boolean(attr: &str, v: &AttrValue) -> ServiceResult<bool> {
    match v {
        AttrValue::Bool(b) => Ok(*b),
        other => Err(type_error(attr, other, "boolean")),
    }
}

fn non_negative(attr: &str, v: &AttrValue) -> ServiceResult<i64> {
    match v {
        AttrValue::Int(i) if *i >= 0 => Ok(*i),
        AttrValue::Int(i) => Err(ServiceError::invalid(format!(
            "Provided object does not match schema 'image': {i} is less than the minimum of 0 (attribute '{attr}')"
        ))),
        other => Err(type_error(attr, other, "integer")),
    }
}

fn enum_value(attr: &str, v: &AttrValue, allowed: &[&str]) -> ServiceResult<Option<String>> {
    match opt_string(attr, v)? {
        Some(s) if !allowed.contains(&s.as_str()) => Err(ServiceError::invalid(format!(
            "Provided object does not match schema 'image': '{s}' is not one of {allowed:?} (attribute '{attr}')"
        ))),
        other => Ok(other),
    }
}

fn tag_set(v: &AttrValue) -> ServiceResult<BTreeSet<String>> {
    let AttrValue::List(items) = v else {
        return Err(type_error("tags", v, "array"));
    };
    let mut tags = BTreeSet::new();
    for item in items {
        let AttrValue::Str(tag) = item else {
            return Err(type_error("tags", item, "string"));
        };
        validate_tag(tag)?;
        tags.insert(tag.clone());
    }
    if tags.len() > MAX_TAGS {
        return Err(ServiceError::too_large(format!(
            "Maximum number of tags exceeded ({MAX_TAGS})"
        )));
    }
    Ok(tags)
}

/// Sets one attribute (core or free-form) after Glance's schema and policy checks.
pub fn set_attribute(
    image: &mut Image,
    caller: &Caller,
    attr: &str,
    value: &AttrValue,
) -> ServiceResult<()> {
    check_writable(attr)?;
    match attr {
        "id" => return Err(ServiceError::forbidden("Attribute 'id' is read-only.")),
        "name" => image.name = opt_string(attr, value)?,
        "visibility" => {
            let Some(v) = opt_string(attr, value)?
                .as_deref()
                .and_then(Visibility::parse)
            else {
                return Err(ServiceError::invalid(
                    "Provided object does not match schema 'image': visibility must be one of public, private, shared, community",
                ));
            };
            if v != image.visibility {
                policy::require_visibility_change(caller, v)?;
            }
            image.visibility = v;
        }
        "protected" => image.protected = boolean(attr, value)?,
        "os_hidden" => image.os_hidden = boolean(attr, value)?,
        "min_ram" => image.min_ram = non_negative(attr, value)?,
        "min_disk" => image.min_disk = non_negative(attr, value)?,
        "owner" => {
            let owner = opt_string(attr, value)?;
            if owner != image.owner && !caller.is_admin() {
                return Err(ServiceError::forbidden(
                    "Owner can't be updated by non admin.",
                ));
            }
            image.owner = owner;
        }
        "container_format" | "disk_format" => {
            let allowed = if attr == "disk_format" {
                DISK_FORMATS
            } else {
                CONTAINER_FORMATS
            };
            let new = enum_value(attr, value, allowed)?;
            let current = if attr == "disk_format" {
                &image.disk_format
            } else {
                &image.container_format
            };
            if new != *current
                && !matches!(image.status, ImageStatus::Queued | ImageStatus::Importing)
            {
                return Err(ServiceError::forbidden(format!(
                    "Attribute {attr} can be only replaced for a queued image."
                )));
            }
            if attr == "disk_format" {
                image.disk_format = new
            } else {
                image.container_format = new
            }
        }
        "tags" => image.tags = tag_set(value)?,
        _ => {
            if attr.is_empty() || attr.chars().count() > MAX_STRING_LEN {
                return Err(ServiceError::invalid(format!(
                    "Provided object does not match schema 'image': property names must be 1 to {MAX_STRING_LEN} characters"
                )));
            }
            let AttrValue::Str(s) = value else {
                return Err(type_error(attr, value, "string"));
            };
            let s = bounded_string(attr, s)?;
            if !image.properties.contains_key(attr) && image.properties.len() >= MAX_PROPERTIES {
                return Err(ServiceError::too_large(format!(
                    "Maximum number of properties exceeded ({MAX_PROPERTIES})"
                )));
            }
            image.properties.insert(attr.to_string(), s);
        }
    }
    Ok(())
}

/// Applies a PATCH document in order; any failing op fails the whole request.
pub fn apply_patch(
    image: &mut Image,
    caller: &Caller,
    ops: &[PatchOp],
    dialect: PatchDialect,
) -> ServiceResult<()> {
    for op in ops {
        let attr = op.attr.as_str();
        check_writable(attr)?;
        let exists = is_core(attr) || image.properties.contains_key(attr);
        match op.kind {
            PatchKind::Add | PatchKind::Replace => {
                let value = op.value.as_ref().ok_or_else(|| {
                    ServiceError::invalid(format!("Operation on '/{attr}' requires a value"))
                })?;
                if op.kind == PatchKind::Add && dialect == PatchDialect::V2_0 && exists {
                    return Err(ServiceError::conflict(format!(
                        "Property {attr} already present."
                    )));
                }
                if op.kind == PatchKind::Replace && !exists {
                    return Err(ServiceError::conflict(format!(
                        "Property {attr} does not exist."
                    )));
                }
                set_attribute(image, caller, attr, value)?;
            }
            PatchKind::Remove => {
                if is_core(attr) {
                    return Err(ServiceError::forbidden(format!(
                        "Property {attr} may not be removed."
                    )));
                }
                if image.properties.remove(attr).is_none() {
                    return Err(ServiceError::conflict(format!(
                        "Property {attr} does not exist."
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Builds a new image's attributes from a create request body (key order as given).
pub fn apply_create(
    image: &mut Image,
    caller: &Caller,
    attrs: &[(String, AttrValue)],
) -> ServiceResult<()> {
    for (attr, value) in attrs {
        match attr.as_str() {
            // Handled by the caller before the image exists.
            "id" | "owner" => continue,
            _ => set_attribute(image, caller, attr, value)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ims_domain::identity::effective_roles;
    use ims_domain::{ErrorKind, Role};

    fn member() -> Caller {
        Caller {
            user_id: "u".into(),
            project_id: "p1".into(),
            roles: effective_roles([Role::Member]),
        }
    }

    fn image() -> Image {
        Image::new(uuid::Uuid::new_v4(), Some("p1".into()), ims_domain::now())
    }

    fn op(kind: PatchKind, attr: &str, value: Option<AttrValue>) -> PatchOp {
        PatchOp {
            kind,
            attr: attr.into(),
            value,
            location: None,
        }
    }

    #[test]
    fn v20_add_of_existing_conflicts_v21_overwrites() {
        let mut img = image();
        let add_name = [op(PatchKind::Add, "name", Some(AttrValue::Str("x".into())))];
        let err = apply_patch(&mut img, &member(), &add_name, PatchDialect::V2_0).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Conflict);
        apply_patch(&mut img, &member(), &add_name, PatchDialect::V2_1).unwrap();
        assert_eq!(img.name.as_deref(), Some("x"));
    }

    #[test]
    fn replace_and_remove_of_missing_property_conflict() {
        let mut img = image();
        for kind in [PatchKind::Replace, PatchKind::Remove] {
            let value = (kind == PatchKind::Replace).then(|| AttrValue::Str("v".into()));
            let err = apply_patch(
                &mut img,
                &member(),
                &[op(kind, "foo", value)],
                PatchDialect::V2_1,
            )
            .unwrap_err();
            assert_eq!(err.kind, ErrorKind::Conflict);
        }
    }

    #[test]
    fn read_only_reserved_and_core_removal_are_forbidden() {
        let mut img = image();
        for (kind, attr) in [
            (PatchKind::Replace, "status"),
            (PatchKind::Add, "os_glance_foo"),
            (PatchKind::Add, "deleted"),
            (PatchKind::Remove, "name"),
        ] {
            let value = (kind != PatchKind::Remove).then(|| AttrValue::Str("v".into()));
            let err = apply_patch(
                &mut img,
                &member(),
                &[op(kind, attr, value)],
                PatchDialect::V2_1,
            )
            .unwrap_err();
            assert_eq!(err.kind, ErrorKind::Forbidden, "{attr}");
        }
    }

    #[test]
    fn schema_types_are_enforced() {
        let mut img = image();
        for (attr, value) in [
            ("min_ram", AttrValue::Int(-1)),
            ("protected", AttrValue::Str("yes".into())),
            ("disk_format", AttrValue::Str("wrong".into())),
            ("custom", AttrValue::Int(5)),
            ("name", AttrValue::Str("n".repeat(256))),
        ] {
            let err = set_attribute(&mut img, &member(), attr, &value).unwrap_err();
            assert_eq!(err.kind, ErrorKind::InvalidInput, "{attr}");
        }
    }

    #[test]
    fn non_admin_cannot_publicize_or_change_owner() {
        let mut img = image();
        let err = set_attribute(
            &mut img,
            &member(),
            "visibility",
            &AttrValue::Str("public".into()),
        )
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Forbidden);
        let err =
            set_attribute(&mut img, &member(), "owner", &AttrValue::Str("p2".into())).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Forbidden);
        set_attribute(&mut img, &member(), "owner", &AttrValue::Str("p1".into()))
            .expect("same owner is a no-op");
    }

    #[test]
    fn formats_frozen_after_queued() {
        let mut img = image();
        img.status = ImageStatus::Active;
        let err = set_attribute(
            &mut img,
            &member(),
            "disk_format",
            &AttrValue::Str("raw".into()),
        )
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Forbidden);
    }

    #[test]
    fn property_quota() {
        let mut img = image();
        for i in 0..MAX_PROPERTIES {
            set_attribute(
                &mut img,
                &member(),
                &format!("k{i}"),
                &AttrValue::Str("v".into()),
            )
            .unwrap();
        }
        let err = set_attribute(&mut img, &member(), "one-more", &AttrValue::Str("v".into()))
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::TooLarge);
    }
}
