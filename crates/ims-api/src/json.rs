//! JSON shapes: images and members as Glance renders them, and JSON → service values.

use ims_core::patch::AttrValue;
use ims_domain::{Image, Member};
use serde_json::{Map, Value, json};
use time::format_description::well_known::Rfc3339;

/// Glance's timestamp form: whole seconds, `Z`.
pub fn glance_time(t: time::OffsetDateTime) -> String {
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_default()
}

pub fn image_json(image: &Image) -> Value {
    let data = image.data.as_ref();
    let mut obj = Map::new();
    for (k, v) in &image.properties {
        obj.insert(k.clone(), Value::String(v.clone()));
    }
    let id = image.id.to_string();
    let core = json!({
        "name": image.name,
        "disk_format": image.disk_format,
        "container_format": image.container_format,
        "visibility": image.visibility.as_str(),
        "size": data.map(|d| d.size),
        "virtual_size": data.and_then(|d| d.virtual_size),
        "status": image.status.as_str(),
        "checksum": data.map(|d| d.checksum.clone()),
        "protected": image.protected,
        "min_ram": image.min_ram,
        "min_disk": image.min_disk,
        "owner": image.owner,
        "os_hidden": image.os_hidden,
        "os_hash_algo": data.map(|d| d.os_hash_algo.clone()),
        "os_hash_value": data.map(|d| d.os_hash_value.clone()),
        "id": id,
        "created_at": glance_time(image.created_at),
        "updated_at": glance_time(image.updated_at),
        "tags": image.tags.iter().collect::<Vec<_>>(),
        "self": format!("/v2/images/{id}"),
        "file": format!("/v2/images/{id}/file"),
        "schema": "/v2/schemas/image",
    });
    if let Value::Object(core) = core {
        obj.extend(core);
    }
    Value::Object(obj)
}

pub fn member_json(member: &Member) -> Value {
    json!({
        "image_id": member.image_id.to_string(),
        "member_id": member.member_id,
        "status": member.status.as_str(),
        "created_at": glance_time(member.created_at),
        "updated_at": glance_time(member.updated_at),
        "schema": "/v2/schemas/member",
    })
}

pub fn attr_value(v: &Value) -> AttrValue {
    match v {
        Value::Null => AttrValue::Null,
        Value::Bool(b) => AttrValue::Bool(*b),
        Value::Number(n) => n
            .as_i64()
            .map(AttrValue::Int)
            .unwrap_or(AttrValue::Other("number")),
        Value::String(s) => AttrValue::Str(s.clone()),
        Value::Array(items) => AttrValue::List(items.iter().map(attr_value).collect()),
        Value::Object(_) => AttrValue::Other("object"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_json_has_every_core_key_and_flat_properties() {
        let mut img = Image::new(uuid::Uuid::nil(), Some("p".into()), ims_domain::now());
        img.properties.insert("foo".into(), "bar".into());
        let v = image_json(&img);
        for key in [
            "name",
            "disk_format",
            "container_format",
            "visibility",
            "size",
            "virtual_size",
            "status",
            "checksum",
            "protected",
            "min_ram",
            "min_disk",
            "owner",
            "os_hidden",
            "os_hash_algo",
            "os_hash_value",
            "id",
            "created_at",
            "updated_at",
            "tags",
            "self",
            "file",
            "schema",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["foo"], "bar");
        assert_eq!(v["status"], "queued");
        assert!(v["created_at"].as_str().unwrap().ends_with('Z'));
        assert!(!v["created_at"].as_str().unwrap().contains('.'));
    }
}
