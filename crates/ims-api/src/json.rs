//! JSON shapes: images and members as Glance renders them, and JSON → service values.

use ims_core::locations::{shown_locations, shown_stores};
use ims_core::patch::AttrValue;
use ims_domain::image::{ImageData, LocationData};
use ims_domain::{Image, Member};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Value, json};
use time::format_description::well_known::Rfc3339;

/// Glance's timestamp form: whole seconds, `Z`.
pub fn glance_time(t: time::OffsetDateTime) -> String {
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_default()
}

/// What an image view shows besides the core attributes (the node's configuration).
#[derive(Debug, Clone, Copy, Default)]
pub struct ImageView<'a> {
    /// Several stores: `stores`, the comma list of those holding the data.
    pub multi_store: bool,
    /// The read-only `http` store external locations belong to.
    pub http_store: Option<&'a str>,
    /// `show_multiple_locations`: `locations`, always (`[]` when none).
    pub locations: bool,
    /// `show_image_direct_url`: `direct_url`, the first location, when there is one.
    pub direct_url: bool,
}

/// An image as Glance renders it: free-form properties flattened next to the core attributes,
/// plus what the [`ImageView`] shows. Serialized straight from the record (no intermediate
/// `Value`): listings render 100s of these.
pub struct ImageBody<'a> {
    pub image: &'a Image,
    pub view: ImageView<'a>,
}

impl Serialize for ImageBody<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let image = self.image;
        let data = image.data.as_ref();
        let external = image.location_data.as_ref().filter(|_| data.is_none());
        let id = image.id.to_string();
        let mut map = serializer.serialize_map(Some(image.properties.len() + 26))?;
        for (k, v) in &image.properties {
            map.serialize_entry(k, v)?;
        }
        map.serialize_entry("name", &image.name)?;
        map.serialize_entry("disk_format", &image.disk_format)?;
        map.serialize_entry("container_format", &image.container_format)?;
        map.serialize_entry("visibility", image.visibility.as_str())?;
        map.serialize_entry("size", &image.size())?;
        map.serialize_entry(
            "virtual_size",
            &data
                .map(|d| d.virtual_size)
                .unwrap_or(external.and_then(|e| e.virtual_size)),
        )?;
        map.serialize_entry("status", image.status.as_str())?;
        let hash = |f: fn(&ImageData) -> &String, g: fn(&LocationData) -> &Option<String>| {
            data.map(f).or_else(|| external.and_then(|e| g(e).as_ref()))
        };
        map.serialize_entry("checksum", &hash(|d| &d.checksum, |e| &e.checksum))?;
        map.serialize_entry("protected", &image.protected)?;
        map.serialize_entry("min_ram", &image.min_ram)?;
        map.serialize_entry("min_disk", &image.min_disk)?;
        map.serialize_entry("owner", &image.owner)?;
        map.serialize_entry("os_hidden", &image.os_hidden)?;
        map.serialize_entry(
            "os_hash_algo",
            &hash(|d| &d.os_hash_algo, |e| &e.os_hash_algo),
        )?;
        map.serialize_entry(
            "os_hash_value",
            &hash(|d| &d.os_hash_value, |e| &e.os_hash_value),
        )?;
        map.serialize_entry("id", &id)?;
        map.serialize_entry("created_at", &glance_time(image.created_at))?;
        map.serialize_entry("updated_at", &glance_time(image.updated_at))?;
        map.serialize_entry("tags", &image.tags)?;
        map.serialize_entry("self", &format!("/v2/images/{id}"))?;
        map.serialize_entry("file", &format!("/v2/images/{id}/file"))?;
        map.serialize_entry("schema", "/v2/schemas/image")?;
        let view = self.view;
        if view.locations || view.direct_url {
            let locations = shown_locations(image, view.multi_store);
            if view.locations {
                let shown: Vec<Value> = locations
                    .iter()
                    .map(|(url, metadata)| json!({"url": url, "metadata": metadata}))
                    .collect();
                map.serialize_entry("locations", &shown)?;
            }
            if let Some((url, _)) = locations.first().filter(|_| view.direct_url) {
                map.serialize_entry("direct_url", url)?;
            }
        }
        if view.multi_store {
            let ids = shown_stores(image, view.http_store);
            if !ids.is_empty() {
                map.serialize_entry("stores", &ids.join(","))?;
            }
        }
        map.end()
    }
}

/// An image with `stores` (when `show_stores`) and neither `locations` nor `direct_url`.
pub fn image_json(image: &Image, show_stores: bool) -> Value {
    glance_image_json(
        image,
        ImageView {
            multi_store: show_stores,
            ..ImageView::default()
        },
    )
}

pub fn glance_image_json(image: &Image, view: ImageView<'_>) -> Value {
    serde_json::to_value(ImageBody { image, view }).expect("an image always serializes")
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
    fn stores_show_only_with_data_and_several_stores() {
        let mut img = Image::new(uuid::Uuid::nil(), None, ims_domain::now());
        assert!(
            image_json(&img, true).get("stores").is_none(),
            "no data, no stores"
        );
        img.data = Some(ims_domain::image::ImageData {
            blob_key: "k".into(),
            stores: vec!["fs".into(), "fs2".into()],
            size: 1,
            checksum: "c".into(),
            os_hash_algo: "sha512".into(),
            os_hash_value: "h".into(),
            virtual_size: None,
        });
        assert_eq!(image_json(&img, true)["stores"], "fs,fs2");
        assert!(
            image_json(&img, false).get("stores").is_none(),
            "single store"
        );
    }

    #[test]
    fn image_json_has_every_core_key_and_flat_properties() {
        let mut img = Image::new(uuid::Uuid::nil(), Some("p".into()), ims_domain::now());
        img.properties.insert("foo".into(), "bar".into());
        let v = image_json(&img, true);
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
